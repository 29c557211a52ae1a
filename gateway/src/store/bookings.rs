//! Bookings and their idempotency keys (inside database calls). Plain values: the handler
//! decides what a claim means and shapes the view.

use rusqlite::{params, Connection, OptionalExtension};

/// An idempotency key's row, if the key was seen.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// Hash of the request body it was first used with.
    pub request_hash: Vec<u8>,
    /// The booking it answered with, once committed.
    pub booking: Option<i64>,
    /// The gateway process that claimed it.
    pub owner: String,
}

/// Key `key`'s row.
pub fn key(c: &Connection, key: &str) -> rusqlite::Result<Option<KeyRecord>> {
    c.query_row(
        "SELECT request_hash, booking, owner FROM idempotency WHERE key = ?1",
        [key],
        |r| {
            Ok(KeyRecord {
                request_hash: r.get(0)?,
                booking: r.get(1)?,
                owner: r.get(2)?,
            })
        },
    )
    .optional()
}

/// Claims a key not seen before for `owner`.
pub fn insert_key(c: &Connection, key: &str, hash: &[u8; 32], owner: &str) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO idempotency (key, request_hash, owner, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![key, &hash[..], owner, crate::now_s() as i64],
    )?;
    Ok(())
}

/// Hands an unanswered key's claim to `owner` (its old owner is gone).
pub fn take_over_key(c: &Connection, key: &str, owner: &str) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE idempotency SET owner = ?2 WHERE key = ?1",
        params![key, owner],
    )?;
    Ok(())
}

/// Frees `owner`'s unanswered claim of `key`, so that a retry can claim it.
pub fn release_key(c: &Connection, key: &str, owner: &str) -> rusqlite::Result<()> {
    c.execute(
        "DELETE FROM idempotency WHERE key = ?1 AND booking IS NULL AND owner = ?2",
        params![key, owner],
    )?;
    Ok(())
}

/// Whether `owner` still holds an unanswered claim of `key`.
pub fn key_is_owned(c: &Connection, key: &str, owner: &str) -> rusqlite::Result<bool> {
    Ok(c.query_row(
        "SELECT 1 FROM idempotency WHERE key = ?1 AND owner = ?2 AND booking IS NULL",
        params![key, owner],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// Answers `owner`'s claim of `key` with `booking`; whether the claim was still `owner`'s.
pub fn answer_key(c: &Connection, key: &str, owner: &str, booking: i64) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "UPDATE idempotency SET booking = ?2 WHERE key = ?1 AND owner = ?3 AND booking IS NULL",
        params![key, booking, owner],
    )? == 1)
}

/// Adds a booking (inside a transaction); its id.
pub fn insert(
    c: &Connection,
    event: i64,
    account: Option<i64>,
    payment_ref: &str,
) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO bookings (event, account, payment_ref, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![event, account, payment_ref, crate::now_s() as i64],
    )?;
    Ok(c.last_insert_rowid())
}

/// A booking's row, as stored.
#[derive(Debug, Clone)]
pub struct BookingRecord {
    /// Event.
    pub event: i64,
    /// Account, if any.
    pub account: Option<i64>,
    /// Payment reference.
    pub payment_ref: String,
    /// When it was made, Unix seconds.
    pub created_at: i64,
}

/// One of a booking's tickets, as a booking shows it.
#[derive(Debug, Clone)]
pub struct BookedRecord {
    /// Code text as minted.
    pub code: String,
    /// Seat.
    pub seat: Option<String>,
    /// Holder's name.
    pub holder: String,
    /// Transferred away (its code is void).
    pub transferred: bool,
    /// Rotating codes.
    pub rotating: bool,
    /// The holder's page token.
    pub page_token: Option<String>,
}

/// Booking `id` and the tickets it was made with (not their transfer successors), in
/// request order.
pub fn load(
    c: &Connection,
    id: i64,
) -> rusqlite::Result<Option<(BookingRecord, Vec<BookedRecord>)>> {
    let head = c
        .query_row(
            "SELECT event, account, payment_ref, created_at FROM bookings WHERE id = ?1",
            [id],
            |r| {
                Ok(BookingRecord {
                    event: r.get(0)?,
                    account: r.get(1)?,
                    payment_ref: r.get(2)?,
                    created_at: r.get(3)?,
                })
            },
        )
        .optional()?;
    let Some(head) = head else {
        return Ok(None);
    };
    let mut stmt = c.prepare(
        "SELECT code, seat, holder_name, successor IS NOT NULL, rotating, page_token FROM tickets
         WHERE booking = ?1 AND predecessor IS NULL ORDER BY rowid",
    )?;
    let tickets = stmt
        .query_map([id], |r| {
            Ok(BookedRecord {
                code: r.get(0)?,
                seat: r.get(1)?,
                holder: r.get(2)?,
                transferred: r.get(3)?,
                rotating: r.get(4)?,
                page_token: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((head, tickets)))
}
