//! Events and their seat maps (inside database calls). Plain values: the handlers check
//! requests and shape views.

use rusqlite::{params, Connection, OptionalExtension};

/// An event's row, as stored.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// Provider selling it.
    pub provider: u16,
    /// Its name.
    pub name: String,
    /// Its venue.
    pub venue: String,
    /// Start, Unix seconds.
    pub starts_at: i64,
    /// Most live tickets (`None`: no cap).
    pub capacity: Option<u32>,
    /// Validity start, Unix seconds.
    pub valid_from: Option<i64>,
    /// Validity end, Unix seconds.
    pub valid_until: Option<i64>,
    /// Validity from the first scan, seconds.
    pub valid_for_s: Option<u32>,
    /// Entry policy's word (`single`, `multi`, `entry_exit`).
    pub entry: String,
    /// Entries allowed (0: unlimited).
    pub max_entries: u8,
    /// Undo window, seconds.
    pub undo_window_s: u32,
    /// Rotating codes.
    pub rotating: bool,
    /// Gates never admit them offline.
    pub online_only: bool,
    /// Gates verify the rotating codes offline.
    pub offline_rotating: bool,
    /// Reminder lead times, seconds, as JSON.
    pub reminder_lead_s: String,
}

/// Adds an event and its seat map (inside a transaction); its id.
pub fn insert(tx: &Connection, e: &EventRecord, seats: &[String]) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO events (provider, name, venue, starts_at, capacity, valid_from,
             valid_until, valid_for_s, entry, max_entries, undo_window_s, rotating,
             reminder_lead_s, created_at, online_only, offline_rotating)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            e.provider,
            e.name,
            e.venue,
            e.starts_at,
            e.capacity,
            e.valid_from,
            e.valid_until,
            e.valid_for_s,
            e.entry,
            e.max_entries,
            e.undo_window_s,
            e.rotating,
            e.reminder_lead_s,
            crate::now_s() as i64,
            e.online_only,
            e.offline_rotating
        ],
    )?;
    let id = tx.last_insert_rowid();
    let mut stmt = tx.prepare("INSERT INTO seats (event, seat) VALUES (?1, ?2)")?;
    for seat in seats {
        stmt.execute(params![id, seat])?;
    }
    Ok(id)
}

/// Event `id` and the number of seats in its map, if it exists.
pub fn load(c: &Connection, id: i64) -> rusqlite::Result<Option<(EventRecord, u32)>> {
    c.query_row(
        "SELECT provider, name, venue, starts_at, capacity, valid_from, valid_until,
             valid_for_s, entry, max_entries, undo_window_s, rotating, reminder_lead_s,
             (SELECT count(*) FROM seats WHERE event = events.id), online_only, offline_rotating
         FROM events WHERE id = ?1",
        [id],
        |r| {
            let record = EventRecord {
                provider: r.get(0)?,
                name: r.get(1)?,
                venue: r.get(2)?,
                starts_at: r.get(3)?,
                capacity: r.get(4)?,
                valid_from: r.get(5)?,
                valid_until: r.get(6)?,
                valid_for_s: r.get(7)?,
                entry: r.get(8)?,
                max_entries: r.get(9)?,
                undo_window_s: r.get(10)?,
                rotating: r.get(11)?,
                reminder_lead_s: r.get(12)?,
                online_only: r.get(14)?,
                offline_rotating: r.get(15)?,
            };
            Ok((record, r.get(13)?))
        },
    )
    .optional()
}
