//! Providers (with their routes to nodes), their gates' names, and the gates' credentials:
//! the HTTP check-in token and the staff PIN (inside database calls).

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

/// What a gate is given: its token's hash and its staff PIN's salt and hash.
#[derive(Debug, Clone, Copy)]
pub struct GateCredentials<'a> {
    /// SHA-256 of the HTTP check-in token.
    pub token_hash: &'a [u8; 32],
    /// The PIN's random salt.
    pub pin_salt: &'a [u8; 16],
    /// The PIN's salted hash.
    pub pin_hash: &'a [u8; 32],
}

/// Gives gate `gate` of `provider` its name and new credentials, replacing its previous
/// ones (inside a transaction).
pub fn replace_gate_token(
    tx: &Connection,
    provider: u16,
    gate: u16,
    name: &str,
    credentials: &GateCredentials<'_>,
) -> rusqlite::Result<()> {
    delete_gate_token(tx, provider, gate)?;
    tx.execute(
        "INSERT INTO gate_tokens (token_hash, provider, gate, name, created_at, pin_salt,
             pin_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            &credentials.token_hash[..],
            provider,
            gate,
            name,
            crate::now_s() as i64,
            &credentials.pin_salt[..],
            &credentials.pin_hash[..]
        ],
    )?;
    tx.execute(
        "INSERT INTO gates (provider, gate, name) VALUES (?1, ?2, ?3)
         ON CONFLICT (provider, gate) DO UPDATE SET name = excluded.name",
        params![provider, gate, name],
    )?;
    Ok(())
}

/// Gate `gate` of `provider`'s staff PIN, as salt and hash, if it has a live one.
pub fn gate_pin(
    c: &Connection,
    provider: u16,
    gate: u16,
) -> rusqlite::Result<Option<([u8; 16], [u8; 32])>> {
    /// A PIN's salt and hash as stored (NULL for gates issued before PINs).
    type StoredPin = (Option<Vec<u8>>, Option<Vec<u8>>);
    let row: Option<StoredPin> = c
        .query_row(
            "SELECT pin_salt, pin_hash FROM gate_tokens WHERE provider = ?1 AND gate = ?2",
            params![provider, gate],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.and_then(|(salt, hash)| {
        let salt = <[u8; 16]>::try_from(salt?.as_slice()).ok()?;
        let hash = <[u8; 32]>::try_from(hash?.as_slice()).ok()?;
        Some((salt, hash))
    }))
}

/// The name of gate `gate` of `provider`, if it was ever given one.
pub fn gate_name(c: &Connection, provider: u16, gate: u16) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT name FROM gates WHERE provider = ?1 AND gate = ?2",
        params![provider, gate],
        |r| r.get(0),
    )
    .optional()
}

/// The name of provider `id`, if it exists.
pub fn name(c: &Connection, id: u16) -> rusqlite::Result<Option<String>> {
    c.query_row("SELECT name FROM providers WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .optional()
}

/// Removes gate `gate`'s token and PIN (its name stays); whether it had them.
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
