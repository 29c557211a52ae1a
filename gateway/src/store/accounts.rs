//! Accounts' rows: their event log and their device limit.

use rusqlite::params;

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
