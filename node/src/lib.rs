//! The QUIC node: the engine on the network.
//!
//! One task per connection, one per stream. A stream's reader parses frames as they arrive,
//! gathers the check-ins of each read into one [`Engine::checkin_batch`] call, and hands the
//! encoded answers to the stream's writer together with the [`stile_engine::Durability`] they wait
//! for; the writer sends them once that is reached, so group commit spans everything the
//! gates sent meanwhile. Requests in flight per stream are bounded: past the bound the reader
//! stops reading and QUIC flow control holds the client back.
//!
//! The peer's role comes from its certificate ([`stile_certs::Role`]), never from a request. A
//! frame that does not parse closes that connection with an error code; nothing else is
//! affected. Revoking a certificate (a new `crl.pem`) reloads the server config and closes
//! the certificate's live connections.
//!
//! With [`NodeConfig::metrics_listen`] set, the node also serves Prometheus text at
//! `GET /metrics` over plain HTTP ([`metrics`]): latency by op, outcomes, requests in
//! flight, connections, the log's fsync latency and group-commit sizes. The request path
//! counts with atomics only, once per batch of answers.

mod batch;
mod budget;
pub mod cluster;
mod cmd;
mod conn;
pub mod echo;
mod metrics;
mod replica;
pub mod replicate;
pub mod secret;
pub mod standby;
mod stream;
mod subscribe;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use stile_protocol::frame::close;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use metrics::GATE_LABELS_MAX;
pub use stile_certs::{CertError, Identity, Role};
use stile_protocol::udp;
pub use subscribe::SUBSCRIPTIONS_PER_STREAM_MAX;
pub use tls::STREAMS_PER_CONNECTION_MAX;

use stile_engine::Engine;

use crate::budget::Budget;

/// How a node serves.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Address to bind (port 0: any free port; see [`Node::local_addr`]).
    pub listen: SocketAddr,
    /// Directory with `ca.crt`, `crl.pem`, `node.crt`, `node.key`.
    pub tls_dir: PathBuf,
    /// Most connections at once; more are refused.
    pub connections_max: usize,
    /// A connection silent this long is closed; QUIC takes the shorter of this and the
    /// client's (stile's clients ask for 1 s and send keep-alives meanwhile).
    pub idle_timeout: Duration,
    /// Most requests in flight per stream (read, not yet answered).
    pub inflight_per_stream: usize,
    /// Forged or unknown codes a gate may send per second, sustained...
    pub budget_per_s: u32,
    /// ...and in a burst.
    pub budget_burst: u32,
    /// Past its budget, a gate's every scan is `rate_limited` this long.
    pub budget_cooldown: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// How often the node looks for a new CRL.
    pub crl_poll: Duration,
    /// How often a snapshot is taken if the log moved (`None`: never).
    pub snapshot_every: Option<Duration>,
    /// Where to serve Prometheus text at `GET /metrics` (`None`: nowhere; port 0: any free
    /// port, see [`Node::metrics_addr`]).
    pub metrics_listen: Option<SocketAddr>,
    /// Where the node's secret ([`secret::SECRET_FILE`]) is kept, so that gates learn of a
    /// restart at once (`None`: the engine's data dir, the one its log is in; an engine
    /// without a log draws a new secret at each start).
    pub secret_dir: Option<PathBuf>,
    /// The node's name in its cluster: its certificate is `node-NAME.crt` in `tls_dir`
    /// (`None`: `node.crt`).
    pub name: Option<String>,
    /// Whether it leads and its standbys (`None`: a node that leads alone).
    pub replication: Option<Arc<replicate::Replication>>,
}

impl NodeConfig {
    /// Defaults for a node on `listen` with certificates in `tls_dir`.
    pub fn new(listen: SocketAddr, tls_dir: PathBuf) -> Self {
        NodeConfig {
            listen,
            tls_dir,
            connections_max: 10_000,
            idle_timeout: Duration::from_secs(30),
            inflight_per_stream: 4096,
            budget_per_s: 50,
            budget_burst: 100,
            budget_cooldown: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            crl_poll: Duration::from_millis(250),
            snapshot_every: Some(Duration::from_secs(300)),
            metrics_listen: None,
            secret_dir: None,
            name: None,
            replication: None,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Certificates are missing or bad.
    #[error(transparent)]
    Tls(#[from] CertError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The node's secret could not be read or made.
    #[error("the node's secret: {0}")]
    Secret(std::io::Error),
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Gate budgets kept before idle ones are dropped.
const BUDGETS_MAX: usize = 1 << 16;

/// Counters a node keeps.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Open connections.
    pub connections: AtomicU64,
    /// Event subscriptions running.
    pub subscriptions: AtomicU64,
    /// Connections refused or closed because their certificate is revoked (at the
    /// handshake, after it, or live when the CRL changed): a stolen gate trying to upload.
    pub revoked_refused: AtomicU64,
}

/// State every connection task shares.
pub(crate) struct Shared {
    /// The engine every request runs on.
    pub engine: Arc<Engine>,
    /// How the node was started.
    pub config: NodeConfig,
    /// By provider and gate id (gates of different providers may share an id).
    pub budgets: DashMap<u32, Arc<Budget>>,
    /// Live connections: stable id to certificate serial and handle.
    pub live: Mutex<HashMap<usize, (Vec<u8>, quinn::Connection)>>,
    /// Serials the current CRL revokes.
    pub revoked: Mutex<std::collections::HashSet<Vec<u8>>>,
    /// Open connections and running subscriptions.
    pub counters: Counters,
    /// Latency by op, outcomes, in flight, scans by gate.
    pub metrics: metrics::NodeMetrics,
    /// When the node started (the budgets' clock counts from here).
    pub started: Instant,
    /// Turns true when the node begins to shut down.
    pub shutdown: watch::Receiver<bool>,
    /// What the kernel granted the UDP socket.
    pub udp_buffers: udp::Buffers,
    /// The socket's inode, to find its drops in `/proc/net/udp`.
    pub udp_inode: Option<u64>,
    /// Whether this node leads, its epoch and its standbys.
    pub replication: Arc<replicate::Replication>,
}

impl Shared {
    /// Milliseconds from the node's start to `at` (the budgets' clock).
    #[inline]
    pub(crate) fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    /// The budget of gate `gate` of provider `provider`.
    pub(crate) fn budget(&self, provider: u16, gate: u16) -> Arc<Budget> {
        let key = u32::from(provider) << 16 | u32::from(gate);
        if let Some(b) = self.budgets.get(&key) {
            return b.clone();
        }
        // Gates come from certificates, but `checkin_as` names any gate: past this many,
        // budgets of gates not blocked now are dropped (they start full again).
        if self.budgets.len() >= BUDGETS_MAX {
            let now = self.ms_at(Instant::now());
            self.budgets.retain(|_, b| b.blocked(now));
        }
        self.budgets
            .entry(key)
            .or_insert_with(|| {
                let per_s = NonZeroU32::new(self.config.budget_per_s.max(1)).expect("non-zero");
                let burst = NonZeroU32::new(self.config.budget_burst.max(1)).expect("non-zero");
                Arc::new(Budget::new(per_s, burst))
            })
            .clone()
    }
}

/// A running node.
pub struct Node {
    /// The QUIC endpoint it serves on.
    endpoint: quinn::Endpoint,
    /// State its tasks share.
    shared: Arc<Shared>,
    /// The node's metrics, as `/metrics` serves them.
    registry: Arc<prometheus_client::registry::Registry>,
    /// Where `/metrics` is served, if anywhere.
    metrics_addr: Option<SocketAddr>,
    /// Tells every task to stop.
    shutdown: watch::Sender<bool>,
    /// The accept loop, CRL watcher, snapshotter and metrics server.
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Binds and starts serving `engine` (already opened: recovery is done before a port is
    /// bound). Must run inside a tokio runtime.
    pub fn start(engine: Arc<Engine>, config: NodeConfig) -> Result<Node, NodeError> {
        let loaded = tls::load(&config.tls_dir, config.name.as_deref(), config.idle_timeout)?;
        let endpoint_config = endpoint_config(&engine, &config).map_err(NodeError::Secret)?;
        let bind_err = |source| NodeError::Bind {
            addr: config.listen,
            source,
        };
        let (socket, udp_buffers) = udp::bind(config.listen).map_err(bind_err)?;
        let udp_inode = udp::inode(&socket);
        match udp_buffers.shortfall() {
            Some(line) => tracing::warn!("{line}"),
            None => tracing::debug!("UDP buffers: {udp_buffers:?}"),
        }
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(loaded.config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                metrics::bind(addr).map_err(|source| NodeError::MetricsBind { addr, source })?,
            ),
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let replication = config.replication.clone().unwrap_or_else(|| {
            Arc::new(replicate::Replication::new(
                true,
                String::new(),
                Duration::from_millis(200),
            ))
        });
        let shared = Arc::new(Shared {
            engine,
            config,
            budgets: DashMap::new(),
            live: Mutex::new(HashMap::new()),
            revoked: Mutex::new(loaded.revoked),
            counters: Counters::default(),
            metrics: metrics::NodeMetrics::new(),
            started: Instant::now(),
            shutdown: shutdown_rx,
            udp_buffers,
            udp_inode,
            replication,
        });
        let registry = Arc::new(metrics::registry(shared.clone()));
        let mut tasks = JoinSet::new();
        let mut metrics_addr = None;
        if let Some(listener) = metrics_listener {
            metrics_addr = listener.local_addr().ok();
            tasks.spawn(metrics::serve(
                listener,
                registry.clone(),
                shared.shutdown.clone(),
            ));
        }
        tasks.spawn(accept_loop(endpoint.clone(), shared.clone()));
        tasks.spawn(replicate::watch_standby(shared.clone()));
        tasks.spawn(watch_crl(endpoint.clone(), shared.clone()));
        if let Some(every) = shared.config.snapshot_every {
            tasks.spawn(snapshots(shared.clone(), every));
        }
        Ok(Node {
            endpoint,
            shared,
            registry,
            metrics_addr,
            shutdown,
            tasks,
        })
    }

    /// The address `/metrics` is served on, if [`NodeConfig::metrics_listen`] was set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The Prometheus text `/metrics` serves (also without a metrics address).
    pub fn metrics_text(&self) -> String {
        metrics::encode_text(&self.registry)
    }

    /// Turns true when the node begins to shut down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.clone()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Reads the CRL again now (the node also polls it), applies it to new handshakes and
    /// closes live connections of revoked certificates.
    pub fn reload_tls(&self) -> Result<(), CertError> {
        reload(&self.endpoint, &self.shared)
    }

    /// Stops taking requests, answers everything in flight (each once durable), closes the
    /// connections, syncs the log and stops its writer.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.endpoint.set_server_config(None);
        let drain = self.shared.config.drain_timeout;
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(drain, all).await.is_err() {
            tracing::warn!(
                ?drain,
                "in-flight requests did not drain in time; closing anyway"
            );
            self.tasks.abort_all();
        }
        self.endpoint
            .close(close::SHUTTING_DOWN.into(), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        if let Some(wal) = self.shared.engine.wal() {
            let engine = self.shared.engine.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(w) = engine.wal() {
                    w.close();
                }
            })
            .await;
            tracing::info!(position = wal.durable_seq(), "log synced");
        }
    }
}

/// The endpoint's config: its stateless-reset key from the node's secret.
fn endpoint_config(engine: &Engine, config: &NodeConfig) -> std::io::Result<quinn::EndpointConfig> {
    let dir = config
        .secret_dir
        .as_deref()
        .or_else(|| engine.wal().and_then(|w| w.dir().parent()));
    match dir {
        Some(dir) => secret::endpoint_config(dir),
        None => Ok(secret::endpoint_config_from(&secret::random())),
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = shutdown.wait_for(|s| *s) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let live = shared.counters.connections.load(Ordering::Relaxed) as usize;
        if live >= shared.config.connections_max {
            tracing::warn!(
                "refusing a connection from {}: {live} connections open",
                incoming.remote_address()
            );
            incoming.refuse();
            continue;
        }
        conns.spawn(conn::serve(incoming, shared.clone()));
    }
    while conns.join_next().await.is_some() {}
}

fn reload(endpoint: &quinn::Endpoint, shared: &Shared) -> Result<(), CertError> {
    let loaded = tls::load(
        &shared.config.tls_dir,
        shared.config.name.as_deref(),
        shared.config.idle_timeout,
    )?;
    if !*shared.shutdown.borrow() {
        endpoint.set_server_config(Some(loaded.config));
    }
    let revoked = loaded.revoked;
    let live = shared.live.lock().expect("live connections poisoned");
    for (serial, conn) in live.values() {
        if revoked.contains(serial) {
            tracing::warn!(
                "closing connection from {}: certificate revoked",
                conn.remote_address()
            );
            shared
                .counters
                .revoked_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            conn.close(close::REVOKED.into(), b"certificate revoked");
        }
    }
    *shared.revoked.lock().expect("revoked set poisoned") = revoked;
    Ok(())
}

async fn watch_crl(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut stamp = tls::crl_stamp(&shared.config.tls_dir);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.config.crl_poll) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !shared.engine.data_dir_in_place() {
            // Every path the node would use (the CRL, the log's next segment, snapshots)
            // now leads into another directory, perhaps another node's.
            tracing::error!(
                "the data dir was moved or replaced, or its log deleted, while the node ran; \
                 stopping so that nothing is written into another directory or into deleted \
                 files"
            );
            std::process::abort();
        }
        let now = tls::crl_stamp(&shared.config.tls_dir);
        if now != stamp {
            match reload(&endpoint, &shared) {
                Ok(()) => {
                    tracing::info!("CRL reloaded");
                    stamp = now;
                }
                // A half-copied file by hand, say: keep the old config, try again next time.
                Err(e) => tracing::warn!(error = %e, "CRL not reloaded"),
            }
        }
    }
}

async fn snapshots(shared: Arc<Shared>, every: Duration) {
    let mut shutdown = shared.shutdown.clone();
    let Some(wal) = shared.engine.wal() else {
        return;
    };
    let mut last = wal.written_seq();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let now = wal.written_seq();
        if now == last {
            continue;
        }
        let engine = shared.engine.clone();
        match in_background("stile-snapshot", move || engine.snapshot()).await {
            Ok(Ok(info)) => {
                last = now;
                tracing::info!(path = %info.path.display(), start_seq = info.start_seq, tickets = info.tickets, segments_removed = info.segments_removed, "snapshot taken");
            }
            Ok(Err(e)) => tracing::error!(error = %e, "snapshot failed"),
            Err(e) => tracing::error!(error = %e, "snapshot thread failed"),
        }
    }
}

/// Runs `f` on a thread of its own at the lowest CPU priority and waits for it. A snapshot
/// reads and archives the whole index, seconds of a core for tens of millions of tickets; at nice 19 it takes the CPU time that check-ins and the log leave over rather
/// than an equal share of it.
async fn in_background<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(e) = lowest_priority() {
                tracing::debug!("could not lower the priority of a background thread: {e}");
            }
            let _ = tx.send(f());
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("the thread stopped without an answer"))
}

/// Gives the calling thread the lowest CPU priority, nice 19 (on Linux a thread's own
/// nice value; elsewhere nothing).
fn lowest_priority() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id; no memory is passed.
        let done =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) == 0 };
        if !done {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's nice value.
    #[cfg(target_os = "linux")]
    fn nice() -> i32 {
        // SAFETY: a plain system call on the calling thread's own id.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    /// Background work runs on its own named thread at nice 19 and hands its result back;
    /// the caller keeps its priority.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn background_work_runs_at_the_lowest_priority() {
        let before = nice();
        let (name, theirs) = in_background("stile-test-bg", || {
            (std::thread::current().name().map(String::from), nice())
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("stile-test-bg"));
        assert_eq!(theirs, 19);
        assert_eq!(nice(), before);
    }
}
