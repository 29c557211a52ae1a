//! What the venue reads of an event: live occupancy from the mirrored ticket states and
//! scans, and the attendance rows (inside database calls). Plain values: the handlers shape
//! them into their views.

use rusqlite::{params, Connection};

/// A ticket that can still be used: not transferred, not revoked.
const LIVE: &str = "successor IS NULL AND last_state != 'revoked'";

/// Live tickets of event `event`, and those of them inside now (entry/exit policies: inside;
/// others: admitted at least once).
pub fn live_and_inside(
    c: &Connection,
    event: i64,
    entry_exit: bool,
) -> rusqlite::Result<(u64, u64)> {
    let tickets: u64 = c.query_row(
        &format!("SELECT count(*) FROM tickets WHERE event = ?1 AND {LIVE}"),
        [event],
        |r| r.get(0),
    )?;
    let inside = match entry_exit {
        true => format!("SELECT count(*) FROM tickets WHERE event = ?1 AND {LIVE} AND inside = 1"),
        false => {
            format!("SELECT count(*) FROM tickets WHERE event = ?1 AND {LIVE} AND entries > 0")
        }
    };
    let inside: u64 = c.query_row(&inside, [event], |r| r.get(0))?;
    Ok((tickets, inside))
}

/// Entries (less undos) and exits through each gate of event `event`: (gate, entries, exits),
/// by gate.
pub fn gate_counts(c: &Connection, event: i64) -> rusqlite::Result<Vec<(u16, u64, u64)>> {
    let mut stmt = c.prepare(
        "SELECT gate, max(sum(kind = 'entry') - sum(kind = 'undo'), 0), sum(kind = 'exit')
         FROM scans
         WHERE event = ?1 AND kind IN ('entry', 'exit', 'undo') GROUP BY gate ORDER BY gate",
    )?;
    let rows = stmt.query_map([event], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// Entries of event `event` per minute since Unix second `since`: (minute's first second,
/// entries), oldest first.
pub fn entries_per_minute(
    c: &Connection,
    event: i64,
    since: u64,
) -> rusqlite::Result<Vec<(u64, u64)>> {
    let mut stmt = c.prepare(
        "SELECT at / 60, count(*) FROM scans WHERE event = ?1 AND kind = 'entry' AND at >= ?2
         GROUP BY at / 60 ORDER BY at / 60",
    )?;
    let rows = stmt.query_map(params![event, since as i64], |r| {
        Ok((r.get::<_, i64>(0)? as u64 * 60, r.get(1)?))
    })?;
    rows.collect()
}

/// One ticket ever issued for an event, as the attendance export lists it.
#[derive(Debug)]
pub struct AttendanceRow {
    /// The code.
    pub code: String,
    /// Its seat, if seated.
    pub seat: Option<String>,
    /// The holder's name.
    pub holder: String,
    /// Its mirrored state.
    pub state: String,
    /// Entries counted.
    pub entries: i64,
    /// Inside now.
    pub inside: bool,
    /// First entry, Unix seconds.
    pub first_entry: Option<i64>,
    /// Last scan, Unix seconds.
    pub last_at: Option<i64>,
    /// Gate of the last scan.
    pub last_gate: Option<i64>,
    /// The code it was transferred to.
    pub successor: Option<String>,
    /// Its booking.
    pub booking: i64,
}

/// Every ticket ever issued for event `event`, in issue order.
pub fn attendance(c: &Connection, event: i64) -> rusqlite::Result<Vec<AttendanceRow>> {
    let mut stmt = c.prepare(
        "SELECT code, seat, holder_name, last_state, entries, inside, first_entry, last_at,
             last_gate, successor, booking
         FROM tickets WHERE event = ?1 ORDER BY rowid",
    )?;
    let rows = stmt.query_map([event], |r| {
        Ok(AttendanceRow {
            code: r.get(0)?,
            seat: r.get(1)?,
            holder: r.get(2)?,
            state: r.get(3)?,
            entries: r.get(4)?,
            inside: r.get(5)?,
            first_entry: r.get(6)?,
            last_at: r.get(7)?,
            last_gate: r.get(8)?,
            successor: r.get(9)?,
            booking: r.get(10)?,
        })
    })?;
    rows.collect()
}

/// A ticket's code, seat and holder.
pub type TicketNames = (String, Option<String>, String);

/// An event's tickets by (partition, serial).
pub fn tickets_by_place(
    c: &Connection,
    event: i64,
) -> rusqlite::Result<std::collections::HashMap<(u16, u32), TicketNames>> {
    let mut stmt = c.prepare_cached(
        "SELECT partition, serial, code, seat, holder_name FROM tickets WHERE event = ?1",
    )?;
    let rows = stmt.query_map(params![event], |r| {
        Ok((
            (r.get::<_, u16>(0)?, r.get::<_, u32>(1)?),
            (r.get(2)?, r.get(3)?, r.get(4)?),
        ))
    })?;
    rows.collect()
}
