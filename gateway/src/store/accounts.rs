//! Accounts, their linked devices, their event log and devices' stream tickets: every
//! statement the account routes and the workers run on them (inside database calls).

use rusqlite::{params, Connection, OptionalExtension};

/// Devices one account may link (a trigger holds the database to it too).
pub const DEVICES_PER_ACCOUNT_MAX: i64 = 32;

/// Stores an account event (inside a transaction); the caller publishes the change after
/// commit.
pub fn add_event(
    c: &rusqlite::Connection,
    account: i64,
    code: &str,
    kind: &str,
    body: &serde_json::Value,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO account_events (account, code, kind, body, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![account, code, kind, body.to_string(), crate::now_s() as i64],
    )?;
    Ok(())
}

/// Events read from the database per query.
pub const EVENTS_PAGE: i64 = 256;

/// One stored account event.
#[derive(Debug)]
pub struct StoredEvent {
    /// Its id (the SSE event id).
    pub id: i64,
    /// Its kind (the SSE event name).
    pub kind: String,
    /// Its JSON body.
    pub body: String,
}

/// Adds an account; its id.
pub fn insert(c: &Connection, name: &str, email: Option<&str>) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO accounts (name, email, created_at) VALUES (?1, ?2, ?3)",
        params![name, email, crate::now_s() as i64],
    )?;
    Ok(c.last_insert_rowid())
}

/// Whether account `id` exists.
pub fn exists(c: &Connection, id: i64) -> rusqlite::Result<bool> {
    Ok(
        c.query_row("SELECT 1 FROM accounts WHERE id = ?1", [id], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .is_some(),
    )
}

/// Devices account `id` links.
pub fn device_count(c: &Connection, id: i64) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT count(*) FROM devices WHERE account = ?1",
        [id],
        |r| r.get(0),
    )
}

/// Links a device with the token whose hash is `token_hash`; its id.
pub fn insert_device(
    c: &Connection,
    account: i64,
    name: &str,
    token_hash: &[u8; 32],
) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO devices (account, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![account, name, &token_hash[..], crate::now_s() as i64],
    )?;
    Ok(c.last_insert_rowid())
}

/// The device (id, account) whose token hash is `hash`.
pub fn device_of(c: &Connection, hash: &[u8; 32]) -> rusqlite::Result<Option<(i64, i64)>> {
    c.query_row(
        "SELECT id, account FROM devices WHERE token_hash = ?1",
        [&hash[..]],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Whether device `id` is linked.
pub fn device_linked(c: &Connection, id: i64) -> rusqlite::Result<bool> {
    Ok(
        c.query_row("SELECT 1 FROM devices WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

/// Unlinks device `device` of `account`; whether there was one.
pub fn delete_device(c: &Connection, account: i64, device: i64) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "DELETE FROM devices WHERE id = ?1 AND account = ?2",
        params![device, account],
    )? > 0)
}

/// Stores a stream ticket of `device` (by its hash) until `expires_at`, dropping expired
/// ones.
pub fn insert_stream_ticket(
    c: &Connection,
    ticket_hash: &[u8; 32],
    device: i64,
    expires_at: i64,
) -> rusqlite::Result<()> {
    c.execute(
        "DELETE FROM stream_tickets WHERE expires_at < ?1",
        [crate::now_s() as i64],
    )?;
    c.execute(
        "INSERT INTO stream_tickets (ticket_hash, device, expires_at) VALUES (?1, ?2, ?3)",
        params![&ticket_hash[..], device, expires_at],
    )?;
    Ok(())
}

/// Redeems a stream ticket (single use: gone once read): its device and that device's
/// account, if the ticket exists, has not expired and its device is still linked.
pub fn redeem_stream_ticket(
    c: &Connection,
    ticket_hash: &[u8; 32],
) -> rusqlite::Result<Option<(i64, i64)>> {
    let device = c
        .query_row(
            "DELETE FROM stream_tickets WHERE ticket_hash = ?1 RETURNING device, expires_at",
            [&ticket_hash[..]],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()?
        .filter(|(_, expires_at)| *expires_at >= crate::now_s() as i64)
        .map(|(device, _)| device);
    let Some(device) = device else {
        return Ok(None);
    };
    let account = c
        .query_row("SELECT account FROM devices WHERE id = ?1", [device], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?;
    Ok(account.map(|a| (device, a)))
}

/// The newest event id of `account` (0: none).
pub fn newest_event(c: &Connection, account: i64) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT coalesce(max(id), 0) FROM account_events WHERE account = ?1",
        [account],
        |r| r.get(0),
    )
}

/// Up to [`EVENTS_PAGE`] events of `account` after event `after`, oldest first.
pub fn events_after(
    c: &Connection,
    account: i64,
    after: i64,
) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut stmt = c.prepare(
        "SELECT id, kind, body FROM account_events WHERE account = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![account, after, EVENTS_PAGE], |r| {
        Ok(StoredEvent {
            id: r.get(0)?,
            kind: r.get(1)?,
            body: r.get(2)?,
        })
    })?;
    rows.collect()
}
