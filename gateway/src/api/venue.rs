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
                as_of: crate::rfc3339(now),
            })
        })
        .await?;
    Ok(Json(occ))
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
