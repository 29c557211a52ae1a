//! The gateway's storage: one SQLite database (WAL journal, `synchronous = FULL`, so a
//! committed booking survives a power cut), its schema kept by numbered migrations.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// The schema could not be brought up to date.
    #[error("database migration: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// The blocking task running the query died.
    #[error("database task failed: {0}")]
    Task(String),
}

/// The schema, one migration a step; never edit a step that has shipped, add one.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(include_str!("../migrations/001_init.sql"))])
}

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Queries waiting for the connection at most; more wait without holding a blocking thread.
const WAITING_MAX: usize = 32;

/// The database, shared by every request; queries run on the blocking pool.
#[derive(Debug, Clone)]
pub struct Db {
    /// The one connection; SQLite serialises writers anyway.
    conn: Arc<Mutex<Connection>>,
    /// Bounds the blocking threads parked on the connection's mutex.
    waiting: Arc<tokio::sync::Semaphore>,
}

impl Db {
    /// Opens (or makes) the database at `path` and migrates it to the current schema.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
        migrations().to_latest(&mut conn)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            waiting: Arc::new(tokio::sync::Semaphore::new(WAITING_MAX)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let conn = self.conn.clone();
        let permit = self.waiting.clone().acquire_owned().await;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[test]
    fn reopening_keeps_rows_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        {
            let db = Db::open(&path).unwrap();
            let conn = db.conn.lock().unwrap();
            conn.execute(
                "INSERT INTO providers (id, name, created_at) VALUES (1, 'p', 0)",
                [],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let conn = db.conn.lock().unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM providers", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }
}
