//! stile's HTTP gateway: booking, QR images, the live e-ticket page, transfers, reminders,
//! linked devices and an HTTP check-in for scanners without QUIC. It is off the hot path and
//! reaches nodes only through the protocol client, with an admin certificate.
//!
//! Architecture Invariant: the gateway never imports the engine; every ticket state it
//! shows comes from a node (a `status` answer or the node's `subscribe` stream).

pub mod api;
pub mod db;
pub mod live;
pub mod metrics;
pub mod nodes;
pub mod page;
pub mod problem;
pub mod qr;
pub mod reminders;
pub mod rotating;
mod serve;
pub mod store;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use stile_protocol::client::ClientTls;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::db::Db;
use crate::nodes::Nodes;

/// Largest request body, bytes.
pub const BODY_MAX_BYTES: usize = 64 * 1024;
/// Largest request head (request line and headers), bytes.
pub const HEAD_MAX_BYTES: usize = 16 * 1024;
/// Longest a client may take to send a request body (a slow sender holds a connection).
pub const BODY_TIMEOUT_MS: u64 = 10_000;
/// Most tickets in one booking.
pub const BOOKING_TICKETS_MAX: usize = 100;
/// Longest text field (names, venues, seats), characters.
pub const TEXT_MAX_CHARS: usize = 200;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The database could not be opened.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// Files could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Another gateway process already serves this directory's database.
    #[error(
        "another gateway is already using {0} (stile up or stile gateway on the same data \
         dir); stop it first, or give this one its own --data"
    )]
    Locked(PathBuf),
    /// The HTTPS certificate or key is unusable.
    #[error("HTTPS: {0}")]
    Tls(String),
    /// The default node's shard is not one (a node named twice, too many nodes).
    #[error("the default node's shard (--node): {0}")]
    Shard(#[from] nodes::ShardError),
}

/// Everything the gateway needs to start.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Directory of the gateway's database and API token (made if new).
    pub dir: PathBuf,
    /// Address to serve HTTP (or HTTPS) on; port 0 picks a free one.
    pub http: SocketAddr,
    /// HTTPS certificate chain and key (PEM); plain HTTP without.
    pub https: Option<(PathBuf, PathBuf)>,
    /// The node of providers without a route of their own.
    pub node: SocketAddr,
    /// Name the nodes' certificates carry.
    pub node_server_name: String,
    /// Every node of the default node's shard (`node` among them, or put first; empty:
    /// `node` alone): the gateway goes to whichever leads, and follows the shard's events
    /// with one cursor, kept by shard, since a shard's nodes number their logs alike.
    pub node_shard: Vec<SocketAddr>,
    /// The admin identity and the deployment's CA.
    pub node_tls: ClientTls,
    /// How often the reminder outbox is looked at.
    pub reminder_poll_ms: u64,
    /// First retry delay of a failed reminder; doubled on each failure.
    pub reminder_backoff_base_ms: u64,
    /// Longest delay between reminder retries.
    pub reminder_backoff_max_ms: u64,
    /// Attempts before a reminder is given up.
    pub reminder_attempts_max: u32,
    /// Forged or unknown codes a gate token may send per second over HTTP.
    pub checkin_budget_per_s: u32,
    /// Burst of forged or unknown codes allowed before the budget applies.
    pub checkin_burst: u32,
    /// How long a gate token that spent its budget gets `rate_limited`.
    pub checkin_cooldown_ms: u64,
    /// Wrong staff PINs for one ticket, or at one gate, that lock its staff check-in.
    pub staff_pin_attempts_max: u32,
    /// How long that lock lasts, and how long wrong PINs are counted.
    pub staff_pin_lockout_ms: u64,
    /// Reminder webhooks may reach loopback, private, link-local and reserved addresses
    /// (see [`webhook`]).
    pub webhook_private: bool,
}

impl GatewayConfig {
    /// A configuration with the usual limits.
    pub fn new(dir: PathBuf, http: SocketAddr, node: SocketAddr, node_tls: ClientTls) -> Self {
        GatewayConfig {
            dir,
            http,
            https: None,
            node,
            node_server_name: node.ip().to_string(),
            node_shard: Vec::new(),
            node_tls,
            reminder_poll_ms: 500,
            reminder_backoff_base_ms: 1_000,
            reminder_backoff_max_ms: 300_000,
            reminder_attempts_max: 12,
            checkin_budget_per_s: 50,
            checkin_burst: 100,
            checkin_cooldown_ms: 1_000,
            staff_pin_attempts_max: 5,
            staff_pin_lockout_ms: 300_000,
            webhook_private: false,
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The configuration it started with.
    pub config: GatewayConfig,
    /// Storage.
    pub db: Db,
    /// Clients of the nodes, and the provider routes.
    pub nodes: Nodes,
    /// Fan-out of ticket and account changes to SSE streams.
    pub live: live::Live,
    /// Prometheus counters.
    pub metrics: metrics::Metrics,
    /// Budgets of HTTP check-in tokens.
    pub budgets: api::checkin::Budgets,
    /// Wrong staff PINs per ticket and gate, and the locks they set.
    pub pins: api::staff::PinGuard,
    /// SHA-256 of the API token that management routes need.
    pub api_token_hash: [u8; 32],
    /// Random name of this process, to tell its idempotency claims from a dead one's.
    pub instance: String,
    /// Serialises bookings per event, so seat checks and inserts do not race.
    pub booking_locks: api::bookings::EventLocks,
    /// Wakes the reminder sender when a reminder is scheduled.
    pub outbox_wake: tokio::sync::Notify,
    /// Flips to true when the gateway stops.
    pub shutdown: watch::Receiver<bool>,
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// The directory's exclusive lock: no second gateway serves the same database.
    _dir_lock: std::fs::File,
    /// Address it serves on.
    local_addr: SocketAddr,
    /// The API token of management routes.
    api_token: String,
    /// Stops the server and its workers.
    stop: watch::Sender<bool>,
    /// Server and workers.
    tasks: JoinSet<()>,
    /// Shared state (for tests and the process that embeds the gateway).
    app: Arc<App>,
}

/// Name of the API token file in the gateway's directory.
pub const API_TOKEN_FILE: &str = "api-token";
/// Name of the database file in the gateway's directory.
pub const DB_FILE: &str = "gateway.db";

impl Gateway {
    /// Opens the database, binds the HTTP port and starts the workers (node event
    /// streams, reminder sender).
    pub async fn start(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| GatewayError::Io {
            what: format!("making {}", config.dir.display()),
            source,
        })?;
        db::restrict(&config.dir, 0o700).map_err(|source| GatewayError::Io {
            what: format!("making {} private (0700)", config.dir.display()),
            source,
        })?;
        let dir_lock = lock_dir(&config.dir)?;
        let api_token = api::auth::load_or_make_token(&config.dir.join(API_TOKEN_FILE))?;
        let db = Db::open(&config.dir.join(DB_FILE))?;
        let nodes = Nodes::new(
            default_shard(&config)?,
            config.node_tls.clone(),
            config.node_server_name.clone(),
        );
        for (provider, shard) in api::providers::load_routes(&db).await? {
            nodes.routes.set_route(provider, Some(shard));
        }
        let (stop, shutdown) = watch::channel(false);
        let tls = match &config.https {
            Some((cert, key)) => Some(serve::tls_acceptor(cert, key)?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.http)
            .await
            .map_err(|source| GatewayError::Io {
                what: format!("binding {}", config.http),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| GatewayError::Io {
            what: "reading the bound address".into(),
            source,
        })?;
        let app = Arc::new(App {
            budgets: api::checkin::Budgets::new(&config),
            pins: api::staff::PinGuard::new(&config),
            config,
            db,
            nodes,
            live: live::Live::new(),
            metrics: metrics::Metrics::new(),
            api_token_hash: api::auth::hash_token(&api_token),
            instance: api::auth::random_token(8),
            booking_locks: Default::default(),
            outbox_wake: tokio::sync::Notify::new(),
            shutdown: shutdown.clone(),
        });
        let mut tasks = JoinSet::new();
        let router = api::router(app.clone());
        tasks.spawn(serve::serve(listener, tls, router, shutdown.clone()));
        for shard in app.nodes.routes.all() {
            live::ensure_following(&app, &shard);
        }
        tasks.spawn(reminders::run(app.clone()));
        // Taken now, not when the task first runs: a directory deleted before then must
        // still be seen as gone.
        let opened = dir_ids(&app.config.dir);
        tasks.spawn(watch_dir(app.config.dir.clone(), opened, shutdown.clone()));
        tracing::info!(addr = %local_addr, https = tls_on(&app), "gateway listening");
        Ok(Gateway {
            _dir_lock: dir_lock,
            local_addr,
            api_token,
            stop,
            tasks,
            app,
        })
    }

    /// Address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bearer token of management routes.
    pub fn api_token(&self) -> &str {
        &self.api_token
    }

    /// Shared state.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stops serving, lets in-flight requests finish (up to `drain`), stops the workers.
    pub async fn shutdown(mut self, drain: Duration) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(drain, all).await.is_err() {
            self.tasks.abort_all();
        }
    }
}

/// The default node's shard: `node_shard` with `node` first, or `node` alone.
fn default_shard(config: &GatewayConfig) -> Result<nodes::Shard, nodes::ShardError> {
    if config.node_shard.is_empty() {
        return Ok(nodes::Shard::one(config.node));
    }
    let mut addrs = vec![config.node];
    addrs.extend(config.node_shard.iter().filter(|a| **a != config.node));
    nodes::Shard::new(addrs)
}

/// How often the gateway checks that its directory and database are still where it opened
/// them.
const DIR_CHECK: Duration = Duration::from_secs(1);

/// The device and inode of the gateway's directory and of its database, where they exist.
type DirIds = (Option<(u64, u64)>, Option<(u64, u64)>);

fn dir_ids(dir: &std::path::Path) -> DirIds {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    (id(dir), id(&dir.join(DB_FILE)))
}

/// Stops the process when the gateway's directory or database is deleted, moved or
/// replaced while it runs: SQLite would go on committing bookings into unlinked files, all
/// lost at the next start, which would begin with an empty database.
async fn watch_dir(dir: std::path::PathBuf, opened: DirIds, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DIR_CHECK) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if dir_ids(&dir) != opened {
            tracing::error!(
                dir = %dir.display(),
                "the gateway's directory or database was deleted, moved or replaced while it \
                 ran; stopping so that no booking is committed into deleted files"
            );
            std::process::abort();
        }
    }
}

/// Takes an exclusive `flock` on the gateway directory itself (opened read-only), held for
/// the gateway's life. A lock file could be deleted by an operator who takes it for a stale
/// pid file; the directory cannot be deleted while it holds the database.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, GatewayError> {
    let file = std::fs::File::open(dir).map_err(|source| GatewayError::Io {
        what: format!("opening {} to lock it", dir.display()),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a descriptor this function owns; it touches no memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                return Err(GatewayError::Locked(dir.to_path_buf()));
            }
            return Err(GatewayError::Io {
                what: format!("locking {}", dir.display()),
                source: err,
            });
        }
    }
    Ok(file)
}

fn tls_on(app: &App) -> bool {
    app.config.https.is_some()
}

/// Unix seconds now.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 text of a Unix second.
pub fn rfc3339(unix_s: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_s as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_s.to_string())
}

/// Parses RFC 3339 into a Unix second.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

/// A Unix second for people: `2026-12-01 18:00 UTC`.
pub fn human_time(unix_s: u64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix_s as i64)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| unix_s.to_string())
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
