//! Events: venue, time, seat map or free seating, and the validity rules the engine applies
//! to their tickets.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use stile_protocol::code::CodeFormat;
use stile_protocol::frame::MintSpec;
use utoipa::ToSchema;

use crate::problem::{Json, Path, Problem};
use crate::store::events as store;
use crate::App;

/// Most seats in a seat map.
pub const SEATS_MAX: usize = 100_000;
pub use stile_protocol::limits::{ENTRIES_MAX, UNDO_WINDOW_MAX_S};
/// Most reminder lead times per event.
pub const REMINDER_LEADS_MAX: usize = 4;

/// How tickets of an event may pass gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryPolicy {
    /// One entry; the ticket is void after it.
    Single,
    /// Up to `max_entries` entries (0: unlimited within validity).
    Multi,
    /// Entry and exit alternate (rail turnstiles); `max_entries` entries at most.
    EntryExit,
}

impl EntryPolicy {
    fn word(self) -> &'static str {
        match self {
            EntryPolicy::Single => "single",
            EntryPolicy::Multi => "multi",
            EntryPolicy::EntryExit => "entry_exit",
        }
    }

    fn from_word(w: &str) -> EntryPolicy {
        match w {
            "multi" => EntryPolicy::Multi,
            "entry_exit" => EntryPolicy::EntryExit,
            _ => EntryPolicy::Single,
        }
    }
}

/// An event to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// Provider that sells it.
    pub provider: u16,
    /// Name ("Cup Final").
    pub name: String,
    /// Venue.
    pub venue: String,
    /// Start, RFC 3339.
    pub starts_at: String,
    /// Seat map: every seat's label. Absent: free seating.
    pub seats: Option<Vec<String>>,
    /// Tickets at most, for free seating (absent: no limit).
    pub capacity: Option<u32>,
    /// Not valid before, RFC 3339.
    pub valid_from: Option<String>,
    /// Not valid after (the deadline), RFC 3339.
    pub valid_until: Option<String>,
    /// Valid this long from the first scan, seconds (a day pass: 86400).
    pub valid_for_s: Option<u32>,
    /// Entry policy (default single).
    pub entry: Option<EntryPolicy>,
    /// Entries allowed for `multi` and `entry_exit` (0: unlimited; default 0).
    pub max_entries: Option<u8>,
    /// How long the admitting gate may annul an admit, seconds (default 60).
    pub undo_window_s: Option<u32>,
    /// Rotating codes: the QR changes every time step, so a screenshot dies (default false).
    pub rotating: Option<bool>,
    /// Gates may never admit these tickets offline, when their node does not answer
    /// (default false: they may, per each gate's own settings).
    pub online_only: Option<bool>,
    /// With `rotating`: gates verify the codes offline too (their replicas then hold each
    /// ticket's rotation key: a stolen gate draws valid codes until re-keyed; default false).
    pub offline_rotating: Option<bool>,
    /// Send reminders this many seconds before the tickets expire (needs `valid_until`).
    pub reminder_lead_s: Option<Vec<u32>>,
}

/// An event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// Event id.
    pub id: i64,
    /// Provider that sells it.
    pub provider: u16,
    /// Name.
    pub name: String,
    /// Venue.
    pub venue: String,
    /// Start, RFC 3339.
    pub starts_at: String,
    /// Seats in the seat map (0: free seating).
    pub seats: u32,
    /// Tickets at most (free seating).
    pub capacity: Option<u32>,
    /// Not valid before.
    pub valid_from: Option<String>,
    /// Not valid after.
    pub valid_until: Option<String>,
    /// Valid this long from the first scan, seconds.
    pub valid_for_s: Option<u32>,
    /// Entry policy.
    pub entry: EntryPolicy,
    /// Entries allowed (0: unlimited).
    pub max_entries: u8,
    /// Undo window, seconds.
    pub undo_window_s: u32,
    /// Rotating codes.
    pub rotating: bool,
    /// Gates never admit these tickets offline.
    pub online_only: bool,
    /// Gates verify these rotating codes offline too.
    pub offline_rotating: bool,
    /// Reminder lead times, seconds.
    pub reminder_lead_s: Vec<u32>,
}

/// An event as stored, with the raw times the gateway computes with.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// As shown.
    pub view: EventView,
    /// Start, Unix seconds.
    pub starts_at_s: u64,
    /// Not before, Unix seconds (0: none).
    pub valid_from_s: u64,
    /// Not after, Unix seconds (0: none).
    pub valid_until_s: u64,
}

impl EventRow {
    /// The mint request for `count` tickets of this event.
    pub fn mint_spec(&self, count: u32) -> MintSpec {
        let v = &self.view;
        MintSpec {
            provider: v.provider,
            partition: 0,
            count,
            format: if v.rotating {
                CodeFormat::Rotating
            } else {
                CodeFormat::Static
            },
            max_entries: match v.entry {
                EntryPolicy::Single => 1,
                _ => v.max_entries,
            },
            records_exits: v.entry == EntryPolicy::EntryExit,
            undo_window_s: v.undo_window_s,
            not_before_unix_s: self.valid_from_s,
            not_after_unix_s: self.valid_until_s,
            duration_from_first_scan_s: v.valid_for_s.unwrap_or(0),
            offline_rotating: v.offline_rotating,
            online_only: v.online_only,
        }
    }

    /// Whether the event's validity has ended: its tickets can open no gate any more.
    pub fn ended(&self, now_s: u64) -> bool {
        self.valid_until_s != 0 && self.valid_until_s <= now_s
    }

    /// The validity period in words, for people.
    pub fn validity_text(&self) -> String {
        let fmt = crate::human_time;
        let mut text = match (self.valid_from_s, self.valid_until_s) {
            (0, 0) => "any time".to_string(),
            (a, 0) => format!("from {}", fmt(a)),
            (0, b) => format!("until {}", fmt(b)),
            (a, b) => format!("{} to {}", fmt(a), fmt(b)),
        };
        if let Some(d) = self.view.valid_for_s {
            text.push_str(&format!(", {} from first entry", humanize_s(d)));
        }
        text
    }
}

fn humanize_s(s: u32) -> String {
    match s {
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3_600 == 0 => format!("{} h", s / 3_600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn time_field(name: &str, v: &Option<String>) -> Result<u64, Problem> {
    match v {
        None => Ok(0),
        Some(t) => crate::parse_rfc3339(t).ok_or_else(|| {
            Problem::unprocessable(format!(
                "`{name}` {t:?} is not an RFC 3339 time such as 2026-12-01T18:00:00Z"
            ))
        }),
    }
}

/// Creates an event.
#[utoipa::path(post, path = "/v1/events", request_body = EventRequest,
    security(("api_token" = [])),
    responses((status = 201, body = EventView), (status = 404, body = Problem),
        (status = 422, body = Problem, description = "a field is wrong, or `valid_until` has already passed")))]
pub async fn create(
    State(app): State<Arc<App>>,
    Json(req): Json<EventRequest>,
) -> Result<(StatusCode, Json<EventView>), Problem> {
    let valid = req.validate()?;
    let view = valid.view.clone();
    let id = app
        .db
        .call(move |c| -> Result<i64, Problem> {
            let tx = crate::db::immediate(c)?;
            let id = insert(&tx, &valid)?;
            tx.commit()?;
            Ok(id)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(EventView { id, ..view })))
}

/// An event request that passed every check, as it is stored.
#[derive(Debug)]
struct ValidEvent {
    /// What the event looks like (id 0 until stored).
    view: EventView,
    /// Start, Unix seconds.
    starts: u64,
    /// Validity start and end, Unix seconds (0: none).
    from: u64,
    /// Validity end, Unix seconds (0: none).
    until: u64,
    /// The seat map (empty: free seating).
    seats: Vec<String>,
}

impl EventRequest {
    /// Checks every field and their combinations; what is wrong is a 422 problem saying so.
    fn validate(&self) -> Result<ValidEvent, Problem> {
        let name = super::text_field("name", &self.name)?;
        let venue = super::text_field("venue", &self.venue)?;
        let starts = crate::parse_rfc3339(&self.starts_at).ok_or_else(|| {
            Problem::unprocessable(format!(
                "`starts_at` {:?} is not an RFC 3339 time such as 2026-12-01T18:00:00Z",
                self.starts_at
            ))
        })?;
        let from = time_field("valid_from", &self.valid_from)?;
        let until = time_field("valid_until", &self.valid_until)?;
        if from != 0 && until != 0 && until <= from {
            return Err(Problem::unprocessable(
                "`valid_until` must be after `valid_from`",
            ));
        }
        if until != 0 && until <= crate::now_s() {
            return Err(Problem::unprocessable(format!(
                "`valid_until` {} is in the past: the event's validity has already ended, so \
                 no ticket of it could open a gate; give a later `valid_until`",
                crate::rfc3339(until)
            )));
        }
        let seats = match &self.seats {
            None => Vec::new(),
            Some(s) if s.is_empty() => {
                return Err(Problem::unprocessable(
                    "`seats` is empty; leave it out for free seating",
                ))
            }
            Some(s) if s.len() > SEATS_MAX => {
                return Err(Problem::unprocessable(format!(
                    "more than {SEATS_MAX} seats"
                )))
            }
            Some(s) => s
                .iter()
                .map(|seat| super::text_field("seats[]", seat))
                .collect::<Result<_, _>>()?,
        };
        let mut unique = seats.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != seats.len() {
            return Err(Problem::unprocessable("`seats` names a seat twice"));
        }
        if self.capacity.is_some() && !seats.is_empty() {
            return Err(Problem::unprocessable(
                "give `seats` or `capacity`, not both",
            ));
        }
        // Said, not quietly read as something else: no event sells 0 tickets, and a validity
        // of 0 s from the first scan would be none at all.
        if self.capacity == Some(0) {
            return Err(Problem::unprocessable(
                "`capacity` must be at least 1 (leave it out for no limit)",
            ));
        }
        if self.valid_for_s == Some(0) {
            return Err(Problem::unprocessable(
                "`valid_for_s` must be at least 1 (leave it out for no validity from the first scan)",
            ));
        }
        let leads = self.reminder_lead_s.clone().unwrap_or_default();
        if leads.len() > REMINDER_LEADS_MAX || leads.contains(&0) {
            return Err(Problem::unprocessable(format!(
                "`reminder_lead_s` takes up to {REMINDER_LEADS_MAX} lead times, each above 0"
            )));
        }
        if !leads.is_empty() && until == 0 {
            return Err(Problem::unprocessable(
                "reminders are sent before tickets expire; set `valid_until`",
            ));
        }
        let entry = self.entry.unwrap_or(EntryPolicy::Single);
        if self.max_entries.is_some_and(|m| m > ENTRIES_MAX) {
            return Err(Problem::unprocessable(format!(
                "`max_entries` counts at most {ENTRIES_MAX} entries; use 0 for unlimited"
            )));
        }
        if self.undo_window_s.is_some_and(|u| u > UNDO_WINDOW_MAX_S) {
            return Err(Problem::unprocessable(format!(
                "`undo_window_s` is at most {UNDO_WINDOW_MAX_S} seconds"
            )));
        }
        let view = EventView {
            id: 0,
            provider: self.provider,
            name,
            venue,
            starts_at: crate::rfc3339(starts),
            seats: seats.len() as u32,
            capacity: self.capacity,
            valid_from: (from != 0).then(|| crate::rfc3339(from)),
            valid_until: (until != 0).then(|| crate::rfc3339(until)),
            valid_for_s: self.valid_for_s.filter(|d| *d != 0),
            entry,
            max_entries: self.max_entries.unwrap_or(0),
            undo_window_s: self.undo_window_s.unwrap_or(60),
            rotating: self.rotating.unwrap_or(false),
            online_only: self.online_only.unwrap_or(false),
            offline_rotating: self.offline_rotating.unwrap_or(false),
            reminder_lead_s: leads,
        };
        if view.offline_rotating && (!view.rotating || view.online_only) {
            return Err(Problem::unprocessable(
                "`offline_rotating` needs `rotating` and is the opposite of `online_only`",
            ));
        }
        Ok(ValidEvent {
            view,
            starts,
            from,
            until,
            seats,
        })
    }
}

/// Stores a checked event and its seats (inside a transaction); its id.
fn insert(tx: &rusqlite::Transaction<'_>, valid: &ValidEvent) -> Result<i64, Problem> {
    let v = &valid.view;
    if !crate::store::providers::exists(tx, v.provider)? {
        return Err(Problem::not_found(format!(
            "no provider {}; create it with POST /v1/providers",
            v.provider
        )));
    }
    let record = store::EventRecord {
        provider: v.provider,
        name: v.name.clone(),
        venue: v.venue.clone(),
        starts_at: valid.starts as i64,
        capacity: v.capacity,
        valid_from: (valid.from != 0).then_some(valid.from as i64),
        valid_until: (valid.until != 0).then_some(valid.until as i64),
        valid_for_s: v.valid_for_s,
        entry: v.entry.word().to_string(),
        max_entries: v.max_entries,
        undo_window_s: v.undo_window_s,
        rotating: v.rotating,
        online_only: v.online_only,
        offline_rotating: v.offline_rotating,
        reminder_lead_s: serde_json::to_string(&v.reminder_lead_s).unwrap_or_default(),
    };
    Ok(store::insert(tx, &record, &valid.seats)?)
}

/// Reads an event (inside a database call).
pub fn load(c: &rusqlite::Connection, id: i64) -> Result<EventRow, Problem> {
    let (e, seats) =
        store::load(c, id)?.ok_or_else(|| Problem::not_found(format!("no event {id}")))?;
    Ok(EventRow {
        view: EventView {
            id,
            provider: e.provider,
            name: e.name,
            venue: e.venue,
            starts_at: crate::rfc3339(e.starts_at as u64),
            seats,
            capacity: e.capacity,
            valid_from: e.valid_from.map(|t| crate::rfc3339(t as u64)),
            valid_until: e.valid_until.map(|t| crate::rfc3339(t as u64)),
            valid_for_s: e.valid_for_s,
            entry: EntryPolicy::from_word(&e.entry),
            max_entries: e.max_entries,
            undo_window_s: e.undo_window_s,
            rotating: e.rotating,
            online_only: e.online_only,
            offline_rotating: e.offline_rotating,
            reminder_lead_s: serde_json::from_str(&e.reminder_lead_s).unwrap_or_default(),
        },
        starts_at_s: e.starts_at as u64,
        valid_from_s: e.valid_from.unwrap_or(0) as u64,
        valid_until_s: e.valid_until.unwrap_or(0) as u64,
    })
}

/// Reads an event.
#[utoipa::path(get, path = "/v1/events/{id}", params(("id" = i64, Path, description = "event id")),
    security(("api_token" = [])),
    responses((status = 200, body = EventView), (status = 404, body = Problem)))]
pub async fn get(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
) -> Result<Json<EventView>, Problem> {
    let row = app.db.call(move |c| load(c, id)).await?;
    Ok(Json(row.view))
}
