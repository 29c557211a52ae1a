//! The gateway's storage: one SQLite database (WAL journal, `synchronous = FULL`, so a
//! committed booking survives a power cut), its schema kept by numbered migrations.
//!
//! The rules of a sale (capacity, one live ticket a seat, one booking an idempotency key)
//! are the database's own (constraints, triggers, write transactions begun `IMMEDIATE`), so
//! they hold whichever process writes. The database and its `-wal` and `-shm` files are
//! 0600 whatever the umask: they hold every code, holder and rotating key.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, Transaction, TransactionBehavior};
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
    /// The database files could not be made or made private.
    #[error("database files: {0}")]
    Io(String),
    /// The blocking task running the query died.
    #[error("database task failed: {0}")]
    Task(String),
}

/// The schema, one migration a step; never edit a step that has shipped, add one.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("../migrations/001_init.sql")),
        M::up(include_str!("../migrations/002_database_rules.sql")),
        M::up(include_str!("../migrations/003_gate_names_and_pins.sql")),
        M::up(include_str!("../migrations/004_offline_rules.sql")),
    ])
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
    /// Opens (or makes) the database at `path` and migrates it to the current schema; the
    /// database files are made 0600.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        create_private(path).map_err(|e| DbError::Io(format!("making {}: {e}", path.display())))?;
        // Every failure names the file: "file is not a database" alone leaves the operator
        // guessing which.
        let named = |e: &dyn std::fmt::Display| DbError::Io(format!("{}: {e}", path.display()));
        let mut conn = Connection::open(path).map_err(|e| named(&e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
            .and_then(|()| conn.pragma_update(None, "foreign_keys", "ON"))
            .and_then(|()| conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS)))
            .map_err(|e| named(&e))?;
        migrations().to_latest(&mut conn).map_err(|e| named(&e))?;
        for file in db_files(path) {
            restrict(&file, 0o600)
                .map_err(|e| DbError::Io(format!("making {} private: {e}", file.display())))?;
        }
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

/// A write transaction that takes the database's write lock at its start, so that what it
/// reads stays true until it commits, whichever process writes beside it.
pub fn immediate(c: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    c.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// The database file and the journal files SQLite keeps beside it.
pub fn db_files(path: &Path) -> [std::path::PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    [path.to_path_buf(), with("-wal"), with("-shm")]
}

/// Makes the database file 0600 before SQLite first opens it (its journal files then take
/// the same mode).
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}

/// Sets `path`'s permission bits to `mode` (if it exists), whatever the umask made them.
pub fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    /// An event of `capacity` (or a seat map of `seats`) with one booking, in a new database.
    fn sale(path: &Path, capacity: Option<i64>, seats: &[&str]) {
        let db = Db::open(path).unwrap();
        let c = db.conn.lock().unwrap();
        c.execute_batch(
            "INSERT INTO providers (id, name, created_at) VALUES (1, 'p', 0);
             INSERT INTO events (id, provider, name, venue, starts_at, entry, max_entries,
                 undo_window_s, rotating, reminder_lead_s, created_at)
             VALUES (1, 1, 'e', 'v', 0, 'single', 1, 60, 0, '[]', 0);
             INSERT INTO bookings (id, event, payment_ref, created_at) VALUES (1, 1, 'p', 0);",
        )
        .unwrap();
        c.execute("UPDATE events SET capacity = ?1", [capacity])
            .unwrap();
        for seat in seats {
            c.execute("INSERT INTO seats (event, seat) VALUES (1, ?1)", [seat])
                .unwrap();
        }
    }

    /// Inserts ticket `serial` (seat `seat`) in its own immediate transaction; the answer's
    /// status as the API would give it.
    fn sell(db: &Db, serial: u32, seat: Option<&str>) -> u16 {
        let mut c = db.conn.lock().unwrap();
        let result = immediate(&mut c).and_then(|tx| {
            tx.execute(
                "INSERT INTO tickets (code, booking, event, seat, holder_name, provider,
                     partition, serial, rotating, created_at, page_token)
                 VALUES (?1, 1, 1, ?2, 'h', 1, 0, ?3, 0, 0, ?1)",
                rusqlite::params![format!("C{serial}"), seat, serial],
            )?;
            tx.commit()
        });
        match result {
            Ok(()) => 201,
            Err(e) => crate::problem::Problem::from(e).status,
        }
    }

    /// Two connections (as two gateway processes would have) racing for one event: the
    /// database's own rules sell the capacity once and a seat once, and each refusal is a
    /// 409, not a 500.
    #[test]
    fn two_connections_racing_sell_capacity_and_seats_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        sale(&path, Some(10), &[]);
        let handles: Vec<Db> = (0..2).map(|_| Db::open(&path).unwrap()).collect();
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..40u32)
                .map(|i| {
                    let db = &handles[i as usize % 2];
                    scope.spawn(move || sell(db, i, None))
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            10,
            "{statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 409),
            "{statuses:?}"
        );
        // A revoked ticket frees its place; a transfer's new ticket takes its predecessor's.
        let sold = |db: &Db| -> i64 {
            let c = db.conn.lock().unwrap();
            c.query_row("SELECT sold FROM events WHERE id = 1", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(sold(&handles[0]), 10);
        {
            let c = handles[0].conn.lock().unwrap();
            let first: String = c
                .query_row("SELECT min(code) FROM tickets", [], |r| r.get(0))
                .unwrap();
            c.execute(
                "UPDATE tickets SET last_state = 'revoked' WHERE code = ?1",
                [&first],
            )
            .unwrap();
        }
        assert_eq!(sold(&handles[0]), 9);
        assert_eq!(sell(&handles[1], 100, None), 201);
        assert_eq!(sell(&handles[1], 101, None), 409);
        {
            let mut c = handles[0].conn.lock().unwrap();
            let tx = immediate(&mut c).unwrap();
            tx.execute("UPDATE tickets SET successor = 'N' WHERE code = 'C100'", [])
                .unwrap();
            tx.execute(
                "INSERT INTO tickets (code, booking, event, holder_name, provider, partition,
                     serial, rotating, created_at, page_token, predecessor)
                 VALUES ('N', 1, 1, 'h', 1, 0, 500, 0, 0, 'tk_n', 'C100')",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        assert_eq!(sold(&handles[0]), 10, "a transfer sells nothing more");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        sale(&path, None, &["A1"]);
        let (a, b) = (Db::open(&path).unwrap(), Db::open(&path).unwrap());
        assert_eq!(sell(&a, 1, Some("A1")), 201);
        assert_eq!(sell(&b, 2, Some("A1")), 409, "the seat is sold once");
        assert_eq!(
            sell(&b, 3, Some("Z9")),
            409,
            "a seat outside the map is refused"
        );
    }

    /// A database of schema 1 with a transfer and a seat sold, brought to the latest:
    /// the old holder's event no longer names the new code, and the sold count is right.
    #[test]
    fn migrating_scrubs_successors_from_old_events_and_counts_sold_tickets() {
        let mut c = Connection::open_in_memory().unwrap();
        migrations().to_version(&mut c, 1).unwrap();
        c.execute_batch(
            "INSERT INTO providers (id, name, created_at) VALUES (1, 'p', 0);
             INSERT INTO events (id, provider, name, venue, starts_at, capacity, entry,
                 max_entries, undo_window_s, rotating, reminder_lead_s, created_at)
             VALUES (1, 1, 'e', 'v', 0, 5, 'single', 1, 60, 0, '[]', 0);
             INSERT INTO bookings (id, event, payment_ref, created_at) VALUES (1, 1, 'p', 0);
             INSERT INTO accounts (id, name, created_at) VALUES (1, 'a', 0);
             INSERT INTO tickets (code, booking, event, holder_name, provider, partition,
                 serial, rotating, successor, last_state, created_at)
             VALUES ('OLD', 1, 1, 'h', 1, 0, 1, 0, 'NEW', 'revoked', 0),
                    ('NEW', 1, 1, 'h', 1, 0, 2, 0, NULL, 'valid', 0);
             INSERT INTO account_events (account, code, kind, body, at)
             VALUES (1, 'OLD', 'transferred',
                 '{\"code\":\"OLD\",\"kind\":\"transferred\",\"successor\":\"NEW\"}', 0);",
        )
        .unwrap();
        migrations().to_latest(&mut c).unwrap();
        let body: String = c
            .query_row("SELECT body FROM account_events", [], |r| r.get(0))
            .unwrap();
        assert!(!body.contains("NEW"), "{body}");
        let sold: i64 = c
            .query_row("SELECT sold FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sold, 1);
        let tokens: i64 = c
            .query_row(
                "SELECT count(DISTINCT page_token) FROM tickets WHERE page_token LIKE 'tk_%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tokens, 2, "every ticket got its own page token");
    }

    #[test]
    fn the_device_limit_of_the_schema_is_the_api_s() {
        let sql = include_str!("../migrations/002_database_rules.sql");
        let limit = crate::store::accounts::DEVICES_PER_ACCOUNT_MAX;
        assert!(sql.contains(&format!("NEW.account) >= {limit}")), "{sql}");
    }

    #[cfg(unix)]
    #[test]
    fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        let _db = Db::open(&path).unwrap();
        for file in db_files(&path) {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
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
