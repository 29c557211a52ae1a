//! Providers (with their routes to nodes) and their gates' HTTP check-in tokens (inside
//! database calls).

use rusqlite::{params, Connection, OptionalExtension};

/// Every provider's stored route, as written (the caller parses it).
pub fn routes(c: &Connection) -> rusqlite::Result<Vec<(u16, String)>> {
    let mut stmt = c.prepare("SELECT id, node FROM providers WHERE node IS NOT NULL")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, u16>(0)?, r.get::<_, String>(1)?)))?;
    rows.collect()
}

/// Adds provider `id` unless it exists; whether it was added.
pub fn insert(c: &Connection, id: u16, name: &str, node: Option<String>) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "INSERT OR IGNORE INTO providers (id, name, node, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![id, name, node, crate::now_s() as i64],
    )? > 0)
}

/// Adds provider `id`, or replaces its name and route.
pub fn upsert(c: &Connection, id: u16, name: &str, node: Option<String>) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO providers (id, name, node, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, node = excluded.node",
        params![id, name, node, crate::now_s() as i64],
    )?;
    Ok(())
}

/// Every provider's id and name, by id.
pub fn list(c: &Connection) -> rusqlite::Result<Vec<(u16, String)>> {
    let mut stmt = c.prepare("SELECT id, name FROM providers ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Whether provider `id` exists.
pub fn exists(c: &Connection, id: u16) -> rusqlite::Result<bool> {
    Ok(
        c.query_row("SELECT 1 FROM providers WHERE id = ?1", [id], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .is_some(),
    )
}

/// Gives gate `gate` of `provider` the token whose hash is `token_hash`, replacing its
/// previous one (inside a transaction).
pub fn replace_gate_token(
    tx: &Connection,
    provider: u16,
    gate: u16,
    name: &str,
    token_hash: &[u8; 32],
) -> rusqlite::Result<()> {
    delete_gate_token(tx, provider, gate)?;
    tx.execute(
        "INSERT INTO gate_tokens (token_hash, provider, gate, name, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![&token_hash[..], provider, gate, name, crate::now_s() as i64],
    )?;
    Ok(())
}

/// Removes gate `gate`'s token; whether it had one.
pub fn delete_gate_token(c: &Connection, provider: u16, gate: u16) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "DELETE FROM gate_tokens WHERE provider = ?1 AND gate = ?2",
        params![provider, gate],
    )? > 0)
}

/// The gate (provider, gate id) whose HTTP check-in token hashes to `token_hash`.
pub fn gate_of_token(
    c: &Connection,
    token_hash: &[u8; 32],
) -> rusqlite::Result<Option<(u16, u16)>> {
    c.query_row(
        "SELECT provider, gate FROM gate_tokens WHERE token_hash = ?1",
        [&token_hash[..]],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}
