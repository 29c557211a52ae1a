//! For the venue: live occupancy per event and gate, and the attendance export.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::events::EntryPolicy;
use crate::problem::{Json, Path, Problem};
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
            let live = "successor IS NULL AND last_state != 'revoked'";
            let tickets: u64 = c.query_row(
                &format!("SELECT count(*) FROM tickets WHERE event = ?1 AND {live}"),
                [id],
                |r| r.get(0),
            )?;
            let inside_sql = if ev.view.entry == EntryPolicy::EntryExit {
                format!("SELECT count(*) FROM tickets WHERE event = ?1 AND {live} AND inside = 1")
            } else {
                format!("SELECT count(*) FROM tickets WHERE event = ?1 AND {live} AND entries > 0")
            };
            let inside: u64 = c.query_row(&inside_sql, [id], |r| r.get(0))?;
            let mut gates = Vec::new();
            let (mut entries, mut exits) = (0, 0);
            {
                let mut stmt = c.prepare(
                    "SELECT gate, max(sum(kind = 'entry') - sum(kind = 'undo'), 0), sum(kind = 'exit')
                     FROM scans
                     WHERE event = ?1 AND kind IN ('entry', 'exit', 'undo') GROUP BY gate ORDER BY gate",
                )?;
                let rows = stmt.query_map([id], |r| {
                    Ok(GateCounts { gate: r.get(0)?, entries: r.get(1)?, exits: r.get(2)? })
                })?;
                for g in rows {
                    let g = g?;
                    entries += g.entries;
                    exits += g.exits;
                    gates.push(g);
                }
            }
            let since = (now / 60).saturating_sub(RATE_WINDOW_MIN) * 60;
            let mut stmt = c.prepare(
                "SELECT at / 60, count(*) FROM scans WHERE event = ?1 AND kind = 'entry' AND at >= ?2
                 GROUP BY at / 60 ORDER BY at / 60",
            )?;
            let per_minute = stmt
                .query_map(params![id, since as i64], |r| {
                    let m: i64 = r.get(0)?;
                    Ok(MinuteCount { minute: crate::rfc3339(m as u64 * 60), entries: r.get(1)? })
                })?
                .collect::<Result<Vec<_>, _>>()?;
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
            let mut stmt = c.prepare(
                "SELECT code, seat, holder_name, last_state, entries, inside, first_entry, last_at,
                     last_gate, successor, booking
                 FROM tickets WHERE event = ?1 ORDER BY rowid",
            )?;
            let mut rows = stmt.query([id])?;
            while let Some(r) = rows.next()? {
                let opt_time = |i: usize| -> rusqlite::Result<String> {
                    Ok(r.get::<_, Option<i64>>(i)?
                        .map(|t| crate::rfc3339(t as u64))
                        .unwrap_or_default())
                };
                let successor: Option<String> = r.get(9)?;
                let state: String = if successor.is_some() {
                    "transferred".into()
                } else {
                    r.get(3)?
                };
                let record = [
                    r.get::<_, String>(0)?,
                    cell(&r.get::<_, Option<String>>(1)?.unwrap_or_default()),
                    cell(&r.get::<_, String>(2)?),
                    state,
                    r.get::<_, i64>(4)?.to_string(),
                    r.get::<_, bool>(5)?.to_string(),
                    opt_time(6)?,
                    opt_time(7)?,
                    r.get::<_, Option<i64>>(8)?
                        .map(|g| g.to_string())
                        .unwrap_or_default(),
                    successor.unwrap_or_default(),
                    r.get::<_, i64>(10)?.to_string(),
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
