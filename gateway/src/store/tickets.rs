//! Tickets, their seats and their reminders (inside database calls). Plain values: the
//! handlers check codes against what is stored and shape views.

use rusqlite::{params, Connection, OptionalExtension};

/// A ticket's row on its way in.
#[derive(Debug, Clone)]
pub struct NewTicketRecord<'a> {
    /// Code text as minted.
    pub code: &'a str,
    /// Booking.
    pub booking: i64,
    /// Event.
    pub event: i64,
    /// Seat.
    pub seat: Option<&'a str>,
    /// Holder's name.
    pub holder_name: &'a str,
    /// Holder's e-mail.
    pub holder_email: Option<&'a str>,
    /// Holder's reminder URL.
    pub webhook: Option<&'a str>,
    /// Account.
    pub account: Option<i64>,
    /// Provider, partition and serial of the code.
    pub number: (u16, u16, u32),
    /// Key and step, seconds, of a rotating ticket.
    pub rotating: Option<([u8; 32], u32)>,
    /// The code it replaced (transfer).
    pub predecessor: Option<&'a str>,
    /// The holder's page token.
    pub page_token: &'a str,
}

/// Adds a ticket (inside a transaction).
pub fn insert(c: &Connection, t: &NewTicketRecord<'_>) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO tickets (code, booking, event, seat, holder_name, holder_email, webhook,
             account, provider, partition, serial, rotating, ticket_key, step_s, predecessor,
             created_at, page_token)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        params![
            t.code,
            t.booking,
            t.event,
            t.seat,
            t.holder_name,
            t.holder_email,
            t.webhook,
            t.account,
            t.number.0,
            t.number.1,
            t.number.2,
            t.rotating.is_some(),
            t.rotating.map(|(k, _)| k.to_vec()),
            t.rotating.map(|(_, s)| s),
            t.predecessor,
            crate::now_s() as i64,
            t.page_token
        ],
    )?;
    Ok(())
}

/// Queues a reminder of ticket `code` to `url`, due at `due` (Unix seconds); a second one
/// for the same lead time is ignored.
pub fn insert_reminder(
    c: &Connection,
    code: &str,
    lead_s: u32,
    url: &str,
    due: i64,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR IGNORE INTO outbox (code, lead_s, url, due_at, next_at) VALUES (?1, ?2, ?3, ?4, ?4)",
        params![code, lead_s, url, due],
    )?;
    Ok(())
}

/// Whether `seat` is in event `event`'s seat map.
pub fn seat_in_map(c: &Connection, event: i64, seat: &str) -> rusqlite::Result<bool> {
    Ok(c.query_row(
        "SELECT 1 FROM seats WHERE event = ?1 AND seat = ?2",
        params![event, seat],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// Whether a live ticket (not transferred away, not revoked) holds `seat` of `event`.
pub fn seat_sold(c: &Connection, event: i64, seat: &str) -> rusqlite::Result<bool> {
    Ok(c.query_row(
        "SELECT 1 FROM tickets WHERE event = ?1 AND seat = ?2 AND successor IS NULL
                 AND last_state != 'revoked'",
        params![event, seat],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// Live tickets of event `event` (as the triggers count them).
pub fn sold(c: &Connection, event: i64) -> rusqlite::Result<i64> {
    c.query_row("SELECT sold FROM events WHERE id = ?1", [event], |r| {
        r.get(0)
    })
}

/// A ticket's row, as stored.
#[derive(Debug, Clone)]
pub struct TicketRecord {
    /// Code text as minted.
    pub code: String,
    /// Event.
    pub event: i64,
    /// Booking.
    pub booking: i64,
    /// Seat.
    pub seat: Option<String>,
    /// Holder's name.
    pub holder: String,
    /// Account.
    pub account: Option<i64>,
    /// Key and step, seconds, of a rotating ticket.
    pub rotating: Option<([u8; 32], u32)>,
    /// The code that replaced it (transfer).
    pub successor: Option<String>,
    /// The code it replaced.
    pub predecessor: Option<String>,
    /// State as the node's events last said.
    pub last_state: String,
    /// Gate of the last change.
    pub last_gate: Option<u16>,
    /// Time of the last change, Unix seconds.
    pub last_at: Option<i64>,
    /// The holder's page token.
    pub page_token: Option<String>,
}

const SELECT: &str = "SELECT code, event, booking, seat, holder_name, account, ticket_key, step_s,
        successor, predecessor, last_state, last_gate, last_at, page_token
    FROM tickets";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<TicketRecord> {
    let key: Option<Vec<u8>> = r.get(6)?;
    let step: Option<u32> = r.get(7)?;
    Ok(TicketRecord {
        code: r.get(0)?,
        event: r.get(1)?,
        booking: r.get(2)?,
        seat: r.get(3)?,
        holder: r.get(4)?,
        account: r.get(5)?,
        rotating: key
            .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
            .zip(step),
        successor: r.get(8)?,
        predecessor: r.get(9)?,
        last_state: r.get(10)?,
        last_gate: r.get(11)?,
        last_at: r.get(12)?,
        page_token: r.get(13)?,
    })
}

/// The ticket minted as `code`.
pub fn by_code(c: &Connection, code: &str) -> rusqlite::Result<Option<TicketRecord>> {
    c.query_row(&format!("{SELECT} WHERE code = ?1"), [code], record)
        .optional()
}

/// The ticket whose holder's page token is `token`.
pub fn by_page_token(c: &Connection, token: &str) -> rusqlite::Result<Option<TicketRecord>> {
    c.query_row(&format!("{SELECT} WHERE page_token = ?1"), [token], record)
        .optional()
}

/// The rotating ticket numbered `provider`, `partition`, `serial`.
pub fn rotating_by_number(
    c: &Connection,
    (provider, partition, serial): (u16, u16, u32),
) -> rusqlite::Result<Option<TicketRecord>> {
    c.query_row(
        &format!(
            "{SELECT} WHERE provider = ?1 AND partition = ?2 AND serial = ?3 AND rotating = 1"
        ),
        params![provider, partition, serial],
        record,
    )
    .optional()
}

/// Records that ticket `code` was revoked.
pub fn set_revoked(c: &Connection, code: &str) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE tickets SET last_state = 'revoked' WHERE code = ?1",
        [code],
    )?;
    Ok(())
}

/// Records that ticket `code` was transferred to `successor` (inside a transaction);
/// false when it already was (a racing transfer committed first).
pub fn set_transferred(c: &Connection, code: &str, successor: &str) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "UPDATE tickets SET successor = ?2, last_state = 'revoked' \
         WHERE code = ?1 AND successor IS NULL",
        params![code, successor],
    )? == 1)
}
