//! For the venue: live occupancy per event and gate, and the attendance export.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::events::EntryPolicy;
use crate::problem::{Json, Path, Problem};
use crate::store::venue as store;
use crate::App;

/// Minutes of the entries-per-minute series.
const RATE_WINDOW_MIN: u64 = 60;

/// One gate's counts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GateCounts {
    /// Gate id.
    pub gate: u16,
    /// Entries through it.
    pub entries: u64,
    /// Exits through it.
    pub exits: u64,
}

/// Entries in one minute.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MinuteCount {
    /// Start of the minute, RFC 3339.
    pub minute: String,
    /// Entries in it.
    pub entries: u64,
}

/// Who is inside an event, and how fast they come.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Occupancy {
    /// Event id.
    pub event: i64,
    /// Tickets sold and not void.
    pub tickets: u64,
    /// People inside now (entry/exit tickets: inside flag; others: admitted and not undone).
    pub inside: u64,
    /// Entries so far.
    pub entries: u64,
    /// Exits so far.
    pub exits: u64,
    /// Per gate.
    pub gates: Vec<GateCounts>,
    /// Entries per minute over the last hour (minutes with none left out).
    pub entries_per_minute: Vec<MinuteCount>,
    /// Conflicts the node found in gates' offline admits of this event's tickets (`null`
    /// when the node did not answer): see `/v1/events/{id}/conflicts`.
    pub conflicts: Option<u64>,
    /// Gateway clock, RFC 3339.
    pub as_of: String,
}

/// Live occupancy of an event, from the node's event stream.
#[utoipa::path(get, path = "/v1/events/{id}/occupancy", params(("id" = i64, Path, description = "event id")),
    security(("api_token" = [])),
    responses((status = 200, body = Occupancy), (status = 404, body = Problem)))]
pub async fn occupancy(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
) -> Result<Json<Occupancy>, Problem> {
    let now = crate::now_s();
    let conflicts = event_conflicts(&app, id).await.ok().map(|c| c.len() as u64);
    let occ = app
        .db
        .call(move |c| -> Result<Occupancy, Problem> {
            let ev = super::events::load(c, id)?;
            let entry_exit = ev.view.entry == EntryPolicy::EntryExit;
            let (tickets, inside) = store::live_and_inside(c, id, entry_exit)?;
            let gates: Vec<GateCounts> = store::gate_counts(c, id)?
                .into_iter()
                .map(|(gate, entries, exits)| GateCounts {
                    gate,
                    entries,
                    exits,
                })
                .collect();
            let entries = gates.iter().map(|g| g.entries).sum();
            let exits = gates.iter().map(|g| g.exits).sum();
            let since = (now / 60).saturating_sub(RATE_WINDOW_MIN) * 60;
            let per_minute = store::entries_per_minute(c, id, since)?
                .into_iter()
                .map(|(minute_s, entries)| MinuteCount {
                    minute: crate::rfc3339(minute_s),
                    entries,
                })
                .collect();
            Ok(Occupancy {
                event: id,
                tickets,
                inside,
                entries,
                exits,
                gates,
                entries_per_minute: per_minute,
                conflicts,
                as_of: crate::rfc3339(now),
            })
        })
        .await?;
    Ok(Json(occ))
}

/// Most conflicts one request reads from the node (pages of a few hundred each).
const CONFLICTS_READ_MAX: usize = 100_000;

/// One scan of a conflict.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConflictScan {
    /// Gate id (0: an operator, for a revoke or transfer).
    pub gate: u16,
    /// When, RFC 3339.
    pub at: String,
}

/// An offline admit that met a ticket already used, revoked or transferred.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConflictView {
    /// The ticket's code.
    pub code: String,
    /// `double_entry`, `after_revoke` or `after_transfer`.
    pub kind: String,
    /// Seat, if seated.
    pub seat: Option<String>,
    /// Holder's name.
    pub holder: String,
    /// The earlier use, revoke or transfer.
    pub first: ConflictScan,
    /// The gate's offline admit.
    pub second: ConflictScan,
}

/// An event's conflicts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Conflicts {
    /// Event id.
    pub event: i64,
    /// Oldest first.
    pub conflicts: Vec<ConflictView>,
}

/// How the conflicts are wanted.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ConflictsQuery {
    /// `csv` for a CSV file (also chosen by `Accept: text/csv`); JSON otherwise.
    pub format: Option<String>,
}

/// The node's conflicts of the event's tickets (by provider, then by the event's places).
async fn event_conflicts(app: &Arc<App>, id: i64) -> Result<Vec<ConflictView>, Problem> {
    let (provider, places) = app
        .db
        .call(move |c| -> Result<_, Problem> {
            let ev = super::events::load(c, id)?;
            Ok((ev.view.provider, store::tickets_by_place(c, id)?))
        })
        .await?;
    let (_, client) = app.nodes.for_provider(provider).await?;
    let mut out = Vec::new();
    let mut after = 0;
    let mut read = 0;
    loop {
        let (items, next) = client.conflicts(Some(provider), after).await?;
        read += items.len();
        for c in items {
            let h = c.code.header();
            let Some((code, seat, holder)) = places.get(&(h.partition, h.serial)) else {
                continue;
            };
            let scan = |s: &stile_protocol::frame::ScanRef| ConflictScan {
                gate: s.gate,
                at: crate::rfc3339(s.at_unix_s),
            };
            out.push(ConflictView {
                code: code.clone(),
                kind: c.kind.name().into(),
                seat: seat.clone(),
                holder: holder.clone(),
                first: scan(&c.first),
                second: scan(&c.second),
            });
        }
        match next {
            Some(n) if n > after && read < CONFLICTS_READ_MAX => after = n,
            _ => break,
        }
    }
    Ok(out)
}

/// Conflicts of an event's tickets, for disputes: each offline admit a gate uploaded that
/// met a ticket already used, revoked or transferred, with both scans. JSON, or CSV with
/// `?format=csv` or `Accept: text/csv`.
#[utoipa::path(get, path = "/v1/events/{id}/conflicts",
    params(("id" = i64, Path, description = "event id"), ConflictsQuery),
    security(("api_token" = [])),
    responses((status = 200, body = Conflicts), (status = 200, content_type = "text/csv", body = String),
        (status = 404, body = Problem), (status = 502, body = Problem)))]
pub async fn conflicts(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
    axum::extract::Query(q): axum::extract::Query<ConflictsQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Problem> {
    let list = event_conflicts(&app, id).await?;
    let accept_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    if q.format.as_deref() != Some("csv") && !accept_csv {
        return Ok(Json(Conflicts {
            event: id,
            conflicts: list,
        })
        .into_response());
    }
    let csv_err =
        |e: csv::Error| Problem::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record([
        "code",
        "kind",
        "seat",
        "holder",
        "first_gate",
        "first_at",
        "second_gate",
        "second_at",
    ])
    .map_err(csv_err)?;
    for c in list {
        out.write_record([
            c.code,
            c.kind,
            cell(&c.seat.unwrap_or_default()),
            cell(&c.holder),
            c.first.gate.to_string(),
            c.first.at,
            c.second.gate.to_string(),
            c.second.at,
        ])
        .map_err(csv_err)?;
    }
    let body = out
        .into_inner()
        .map_err(|e| Problem::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"event-{id}-conflicts.csv\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// A cell safe to open in a spreadsheet: text that starts like a formula gets a quote.
fn cell(text: &str) -> String {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_string(),
    }
}

/// Attendance of an event as CSV: one row per ticket ever issued for it.
#[utoipa::path(get, path = "/v1/events/{id}/attendance.csv", params(("id" = i64, Path, description = "event id")),
    security(("api_token" = [])),
    responses((status = 200, content_type = "text/csv", body = String), (status = 404, body = Problem)))]
pub async fn attendance(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
) -> Result<Response, Problem> {
    let body = app
        .db
        .call(move |c| -> Result<Vec<u8>, Problem> {
            super::events::load(c, id)?;
            let mut out = csv::Writer::from_writer(Vec::new());
            let csv_err = |e: csv::Error| {
                Problem::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            };
            out.write_record([
                "code",
                "seat",
                "holder",
                "state",
                "entries",
                "inside",
                "first_entry",
                "last_scan",
                "last_gate",
                "successor",
                "booking",
            ])
            .map_err(csv_err)?;
            for r in store::attendance(c, id)? {
                let time = |t: Option<i64>| t.map(|t| crate::rfc3339(t as u64)).unwrap_or_default();
                let state = match r.successor {
                    Some(_) => "transferred".to_string(),
                    None => r.state,
                };
                let record = [
                    r.code,
                    cell(&r.seat.unwrap_or_default()),
                    cell(&r.holder),
                    state,
                    r.entries.to_string(),
                    r.inside.to_string(),
                    time(r.first_entry),
                    time(r.last_at),
                    // Gate 0 is no gate: a revocation or transfer records none.
                    r.last_gate
                        .filter(|g| *g != 0)
                        .map(|g| g.to_string())
                        .unwrap_or_default(),
                    r.successor.unwrap_or_default(),
                    r.booking.to_string(),
                ];
                out.write_record(&record).map_err(csv_err)?;
            }
            out.into_inner().map_err(|e| {
                Problem::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            })
        })
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"event-{id}-attendance.csv\""),
            ),
        ],
        body,
    )
        .into_response())
}
