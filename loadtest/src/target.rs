//! The targets a run drives: the engine in this process, a node (or a shard's nodes) over
//! QUIC, or Redis. Each gate gets a link split in two halves, a sender and a receiver, so
//! that requests go out while answers come back, the way a gate's connection carries them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use stile_certs as certs;
use stile_engine::{
    CheckinRequest, Durability, Engine, EngineConfig, EntryRule, Gate, GateOp, MintRequest, Policy,
    Presented, SystemClock, Validity, MINT_BATCH_MAX,
};
use stile_protocol::client::{
    bind_addr_for, connect_raw_on, raw_endpoint_on, Client, ClientConfig, ClientError, ClientTls,
};
use stile_protocol::frame::{error_code, split_frame, MintSpec, RawCode, Request, Response};
use stile_protocol::udp;
use stile_protocol::{CodeBytes, Outcome};
use tokio::sync::mpsc;

use crate::leftovers::TempTree;
pub(crate) use crate::link::{Answer, LinkError, LinkRx, LinkTx, TargetKind};
pub use crate::link::{NodeReading, PROVIDER, REQUEST_TIMEOUT};
use crate::nodes::{Leader, NodeName, NODE_CONNECT_TIMEOUT};
use crate::plan::{Item, Kind};
use crate::redis_target::{Redis, RedisRx, RedisTx};
use crate::report::QuicView;
use crate::{Config, LoadError};

/// A day pass's validity from its first scan, seconds.
pub(crate) const DAY_S: u32 = 24 * 3600;
/// Bytes asked of a QUIC stream per read.
const READ_CHUNK: usize = 1 << 20;
/// Bytes a gate's read buffer starts with; it grows with the gate's answers. A full
/// [`READ_CHUNK`] a gate from the start made thousands of gates zero gigabytes at once.
const READ_BUF_START: usize = 4 * 1024;
/// Gates a tester's UDP socket carries at most.
const GATES_PER_SOCKET: usize = 1024;

/// A target, shared by every gate.
#[derive(Clone)]
pub enum Target {
    /// The engine in this process.
    Inproc(Arc<Inproc>),
    /// A node, or a shard's nodes, over QUIC.
    Quic(Arc<Quic>),
    /// Redis with the check-in a user would script in Lua.
    Redis(Arc<Redis>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Inproc(_) => f.write_str("Target::Inproc"),
            Target::Quic(q) => write!(f, "Target::Quic({})", q.name),
            Target::Redis(r) => write!(f, "Target::Redis({})", r.url),
        }
    }
}

/// The engine in this process, on a fresh data dir removed afterwards.
#[derive(Debug)]
pub struct Inproc {
    /// The engine.
    engine: Engine,
    /// Sync mode name.
    sync: &'static str,
    /// The partition tickets are minted into.
    partition: u16,
    /// The data dir (deleted on drop, after the engine).
    _dir: TempTree,
}

/// A node, or a shard's nodes: an admin connection for minting (following the leader); the
/// gates connect on their own, each to the node believed to lead.
#[derive(Debug)]
pub struct Quic {
    /// The target as written, for errors.
    name: String,
    /// How to reach the nodes (the admin's certificate; every node of a shard in `nodes`).
    config: ClientConfig,
    /// Every node, with the name its certificate must carry.
    nodes: Vec<(SocketAddr, String)>,
    /// The node the gates' links go to.
    leader: Leader,
    /// The deployment's CA certificate.
    ca: PathBuf,
    /// This run's gate certificates, issued fresh from the CA (removed on drop): never ones
    /// left in the data dir, which may name another provider or be revoked.
    gate_certs: TempTree,
    /// The admin client.
    admin: Client,
    /// The partition tickets are minted into.
    partition: u16,
    /// A few UDP sockets for every gate's connection, as one machine simulating many
    /// gates: gate `g` on socket `g % len`.
    endpoints: Vec<quinn::Endpoint>,
    /// A `quic-echo://` target: the echo server this run started (stopped on drop).
    echo: Option<std::sync::Mutex<crate::leftovers::Server>>,
}

/// The sending half of one gate's link, whichever the target.
pub(crate) enum Tx {
    /// Runs requests through the engine at once and hands the answers to the receiving
    /// half, which waits until they are durable.
    Inproc(InprocTx),
    /// Writes frames on the gate's stream.
    Quic(QuicTx),
    /// Writes script calls on the gate's connection.
    Redis(RedisTx),
}

/// The sending half of a gate's link to a node: frames on its stream.
pub(crate) struct QuicTx {
    /// The stream.
    send: quinn::SendStream,
    /// Frames being written.
    buf: Vec<u8>,
}

/// The receiving half of one gate's link, whichever the target.
pub(crate) enum Rx {
    /// Waits until the sender's answers are durable.
    Inproc(InprocRx),
    /// Reads answer frames.
    Quic(QuicRx),
    /// Reads script answers, in order.
    Redis(RedisRx),
}

/// The receiving half of a gate's link to a node: answer frames.
pub(crate) struct QuicRx {
    /// The stream.
    recv: quinn::RecvStream,
    /// Bytes read and not yet decoded.
    buf: BytesMut,
    /// Kept open while the link lives.
    conn: quinn::Connection,
    /// A shard's node: a `not_leader` answer fails the link (its request stays in flight,
    /// for the leader) instead of being an error answer.
    follow_leader: bool,
    /// The node answered `not_leader`: the leader it named ("" when it knows none).
    not_leader: Option<String>,
}

/// A batch run by the engine: its answers, and what they wait for.
type Ran = (Vec<Answer>, Vec<Durability>);

/// The sending side of an in-process gate: runs each batch as it is sent, as a node's
/// reader does.
pub(crate) struct InprocTx {
    target: Arc<Inproc>,
    gate: Gate,
    tx: mpsc::UnboundedSender<Ran>,
}

/// The receiving side: answers once durable.
pub(crate) struct InprocRx {
    rx: mpsc::UnboundedReceiver<Ran>,
    /// A batch run and not yet durable.
    pending: Option<Ran>,
}

/// A target URL of no known scheme.
fn unknown_scheme(target: &str) -> LoadError {
    LoadError::Usage(format!(
        "target {target:?}: use inproc, quic://HOST:PORT (a shard's nodes: \
         quic://HOST:PORT+HOST:PORT), quic-echo://IP:PORT (the transport alone), \
         redis://HOST:PORT or redis+tls://HOST:PORT"
    ))
}

/// The admin certificate and key a `quic://` target mints with (a `redis+tls://` one
/// connects with), checked to exist and to carry the admin role.
pub(crate) fn admin_identity(config: &Config) -> Result<(PathBuf, PathBuf), String> {
    let (cert, key) = match &config.admin {
        Some(pair) => pair.clone(),
        None => {
            let cert = config
                .data
                .join("tls")
                .join(certs::admin_cert_name("admin"));
            let key = certs::key_path_for(&cert);
            (cert, key)
        }
    };
    if !cert.exists() {
        return Err(format!(
            "no admin certificate {}: name one with --admin-cert (and --admin-key), \
             `stile certs issue-admin NAME` makes one",
            cert.display()
        ));
    }
    certs::admin_name_of_file(&cert)
        .map_err(|e| format!("minting needs an admin's certificate (--admin-cert): {e}"))?;
    Ok((cert, key))
}

/// `DATA/tls` and the CA certificate in it, which a `quic://` or `redis+tls://` target
/// needs.
pub(crate) fn node_ca(config: &Config) -> Result<(PathBuf, PathBuf), String> {
    let tls = config.data.join("tls");
    let ca = tls.join(certs::CA_CERT);
    if !ca.exists() {
        return Err(format!(
            "no CA in {}: point --data at the node's data dir (stile up makes one)",
            tls.display()
        ));
    }
    Ok((tls, ca))
}

/// A certificate for every gate of the run, issued from the CA in `tls_dir` into a
/// directory of its own (removed on drop): never ones left in the data dir, which may name
/// another provider or be revoked.
pub(crate) fn issue_gate_certs(config: &Config, tls_dir: &Path) -> Result<TempTree, String> {
    let dir = TempTree::new_in(&[&config.data, Path::new(".")], ".stile-loadtest-")
        .map_err(|e| format!("making a directory for gate certificates: {e}"))?;
    let issuer = certs::Issuer::open(tls_dir).map_err(|e| e.to_string())?;
    for g in 1..=config.gates {
        issuer
            .gate(dir.path(), g, PROVIDER)
            .map_err(|e| format!("issuing gate {g}: {e}"))?;
    }
    Ok(dir)
}

/// Each node's address (the first a lookup gives) and the name its certificate must carry.
async fn resolve(named: &[NodeName]) -> Result<Vec<(SocketAddr, String)>, String> {
    let mut nodes: Vec<(SocketAddr, String)> = Vec::with_capacity(named.len());
    for n in named {
        let addr = tokio::net::lookup_host(n.written.as_str())
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("{}: no address for this host:port", n.written))?;
        // One UDP socket carries every gate's connections: one address family.
        if nodes
            .first()
            .is_some_and(|(a, _)| a.is_ipv4() != addr.is_ipv4())
        {
            return Err(format!(
                "{} is {addr}: name every node of a shard by IPv4 or every one by IPv6",
                n.written
            ));
        }
        nodes.push((addr, n.host.clone()));
    }
    Ok(nodes)
}

impl Target {
    /// What can be checked before any run, so that a `--compare` does not fail at its last
    /// target after minutes of the others: the URL's scheme, the CA of a `quic://` or
    /// `redis+tls://` target, and for a spawned Redis that `redis-server` starts (with TLS:
    /// knows TLS, and the node's certificate fits) and its port is free.
    pub fn precheck(config: &Config) -> Result<(), LoadError> {
        let err = |reason: String| LoadError::Target {
            target: config.target.clone(),
            reason,
        };
        let t = config.target.as_str();
        if t == "inproc" {
            return Ok(());
        }
        if crate::redis_target::is_redis_target(t) {
            return crate::redis_target::precheck(config).map_err(err);
        }
        if t.starts_with("quic://") || t.starts_with(crate::echo::SCHEME) {
            node_ca(config).map_err(err)?;
            return admin_identity(config).map(drop).map_err(err);
        }
        Err(unknown_scheme(t))
    }

    /// Opens the target `config.target` names.
    pub async fn open(config: &Config) -> Result<Target, LoadError> {
        let err = |reason: String| LoadError::Target {
            target: config.target.clone(),
            reason,
        };
        if crate::redis_target::is_redis_target(&config.target) {
            return Ok(Target::Redis(Arc::new(Redis::open(config).await?)));
        }
        if config.target == "inproc" {
            // Beside the working directory, not in /tmp: /tmp may be memory, and fsync free.
            let dir = TempTree::new_in(&[&config.data, Path::new(".")], ".stile-loadtest-")
                .map_err(|e| err(format!("making a data dir: {e}")))?;
            let engine = Engine::open(
                dir.path(),
                EngineConfig {
                    sync: config.sync,
                    log_runway: config.log_runway,
                    ..EngineConfig::default()
                },
                Arc::new(SystemClock),
            )
            .map_err(|e| err(e.to_string()))?;
            return Ok(Target::Inproc(Arc::new(Inproc {
                engine,
                sync: config.sync.name(),
                partition: config.partition,
                _dir: dir,
            })));
        }
        let (named, echo) = match config.target.strip_prefix(crate::echo::SCHEME) {
            Some(listen) => {
                let (server, addr) = crate::echo::spawn(&config.data, listen).map_err(err)?;
                (crate::nodes::parse(&format!("quic://{addr}")), Some(server))
            }
            None => (crate::nodes::parse(&config.target), None),
        };
        let Some(named) = named else {
            return Err(unknown_scheme(&config.target));
        };
        let nodes = resolve(&named.map_err(LoadError::Usage)?)
            .await
            .map_err(err)?;
        let addrs: Vec<SocketAddr> = nodes.iter().map(|(a, _)| *a).collect();
        let (tls, ca) = node_ca(config).map_err(err)?;
        let (admin_cert, admin_key) = admin_identity(config).map_err(err)?;
        let ctls = ClientTls::from_files(&ca, &admin_cert, &admin_key)
            .map_err(|e| err(format!("admin certificate: {e}")))?;
        // The admin follows the leader: mints, readings and the sync mode come from it.
        let mut client = ClientConfig::new(addrs[0], ctls);
        client.server_name = nodes[0].1.clone();
        client.inflight_max = 1024;
        if addrs.len() > 1 {
            client.nodes = addrs.clone();
        }
        let admin = Client::connect(client.clone())
            .await
            .map_err(|e| err(format!("admin: {e}")))?;
        let gate_certs = issue_gate_certs(config, &tls).map_err(err)?;
        // Gates share a few sockets, each with room for bursts as the node has, so the
        // tester does not lose what it measures; each socket's endpoint reads on its own,
        // so thousands of gates are not read by one task.
        let mut endpoints = Vec::new();
        for _ in 0..usize::from(config.gates).div_ceil(GATES_PER_SOCKET) {
            let (socket, buffers) = udp::bind(bind_addr_for(addrs[0]))
                .map_err(|e| err(format!("binding a UDP socket: {e}")))?;
            if let Some(line) = buffers.shortfall() {
                if endpoints.is_empty() {
                    tracing::warn!("{line}");
                }
            }
            endpoints.push(raw_endpoint_on(socket, &client).map_err(|e| err(e.to_string()))?);
        }
        Ok(Target::Quic(Arc::new(Quic {
            name: config.target.clone(),
            config: client,
            leader: Leader::new(addrs),
            nodes,
            ca,
            gate_certs,
            admin,
            partition: config.partition,
            endpoints,
            echo: echo.map(std::sync::Mutex::new),
        })))
    }

    /// Mints the tickets `kinds` names (in that order), valid any time, of provider 1, a
    /// step at a time, telling `progress` after each.
    pub(crate) async fn mint(
        &self,
        kinds: &[(Kind, u32)],
        progress: &mut crate::MintProgress,
    ) -> Result<Vec<CodeBytes>, LoadError> {
        let total: u64 = kinds.iter().map(|&(_, n)| u64::from(n)).sum();
        let mut codes = Vec::with_capacity(total as usize);
        for &(kind, n) in kinds {
            let mut left = n;
            while left > 0 {
                let step = left.min(crate::MINT_STEP);
                let first = codes.is_empty();
                codes.extend(match self {
                    Target::Inproc(t) => t.mint_kind(kind, step, first).await?,
                    Target::Quic(q) => q.mint_kind(kind, step, first).await?,
                    Target::Redis(r) => r.mint_kind(kind, step, first).await?,
                });
                left -= step;
                progress.add(u64::from(step));
            }
        }
        Ok(codes)
    }

    /// The target's sync mode, as it reports it.
    pub async fn sync_name(&self) -> String {
        match self {
            Target::Inproc(t) => t.sync_name().await,
            Target::Quic(q) => q.sync_name().await,
            Target::Redis(r) => r.sync_name().await,
        }
    }

    /// What the target says of itself now (a node, or the engine in process): the
    /// difference of two readings is its own view of a run. `None` for Redis, or a node that
    /// does not answer.
    pub async fn reading(&self) -> Option<NodeReading> {
        match self {
            Target::Inproc(t) => t.reading().await,
            Target::Quic(q) => q.reading().await,
            Target::Redis(r) => r.reading().await,
        }
    }

    /// Whether the target is the bare echo (`quic-echo://`): its answers decide nothing.
    pub(crate) fn is_echo(&self) -> bool {
        matches!(self, Target::Quic(q) if q.echo.is_some())
    }

    /// Whether the target is a shard's nodes (`quic://A+B`): gates follow its leader, and
    /// reconnect and resend when it changes.
    pub(crate) fn is_shard(&self) -> bool {
        matches!(self, Target::Quic(q) if q.nodes.len() > 1)
    }

    /// A gate's link `rx` failed: the node it reached may not lead (it answered
    /// `not_leader`, or went): where the gates' next links go moves on (a shard only).
    pub(crate) fn lost(&self, rx: &Rx) {
        if let (Target::Quic(q), Rx::Quic(r)) = (self, rx) {
            let named = r.not_leader.as_deref().and_then(|m| m.parse().ok());
            q.leader.moved(r.conn.remote_address(), named);
        }
    }

    /// CPU time the target has used so far, microseconds (for `inproc`, this process's).
    pub async fn server_cpu_us(&self) -> Option<u64> {
        match self {
            Target::Inproc(t) => t.server_cpu_us().await,
            Target::Quic(q) => q.server_cpu_us().await,
            Target::Redis(r) => r.server_cpu_us().await,
        }
    }

    /// The target's resident memory now, bytes (for `inproc`, this process's).
    pub async fn server_memory_bytes(&self) -> Option<u64> {
        match self {
            Target::Inproc(t) => t.server_memory_bytes().await,
            Target::Quic(q) => q.server_memory_bytes().await,
            Target::Redis(r) => r.server_memory_bytes().await,
        }
    }

    /// Opens gate `gate`'s link (its own connection for quic and redis).
    pub(crate) async fn link(&self, gate: u16, inflight: u32) -> Result<(Tx, Rx), LoadError> {
        Ok(match self {
            Target::Inproc(t) => {
                let (tx, rx) = t.link(gate, inflight).await?;
                (Tx::Inproc(tx), Rx::Inproc(rx))
            }
            Target::Quic(q) => {
                let (tx, rx) = q.link(gate, inflight).await?;
                (Tx::Quic(tx), Rx::Quic(rx))
            }
            Target::Redis(r) => {
                let (tx, rx) = r.link(gate, inflight).await?;
                (Tx::Redis(tx), Rx::Redis(rx))
            }
        })
    }
}

impl TargetKind for Arc<Inproc> {
    type Tx = InprocTx;
    type Rx = InprocRx;

    async fn mint_kind(
        &self,
        kind: Kind,
        n: u32,
        _first: bool,
    ) -> Result<Vec<CodeBytes>, LoadError> {
        let err = |reason: String| LoadError::Target {
            target: "inproc".into(),
            reason,
        };
        let policy = self
            .engine
            .add_policy(policy_of(kind))
            .map_err(|e| err(e.to_string()))?;
        let mut codes = Vec::with_capacity(n as usize);
        let mut left = n;
        while left > 0 {
            let count = left.min(MINT_BATCH_MAX as u32);
            let req = MintRequest {
                policy,
                partition: self.partition,
                count,
            };
            codes.extend(self.engine.mint(&req).map_err(|e| err(e.to_string()))?);
            left -= count;
        }
        Ok(codes)
    }

    async fn sync_name(&self) -> String {
        self.sync.to_string()
    }

    async fn reading(&self) -> Option<NodeReading> {
        let wal = self.engine.wal()?;
        let stats = wal.stats();
        Some(NodeReading {
            checkin_us: None,
            fsync_us: wal.sync_latency_us().snapshot(),
            syncs: stats.syncs,
            records: stats.records,
            at: std::time::Instant::now(),
        })
    }

    async fn server_cpu_us(&self) -> Option<u64> {
        Some(crate::cpu_time().as_micros() as u64)
    }

    async fn server_memory_bytes(&self) -> Option<u64> {
        crate::report::own_rss_bytes()
    }

    async fn link(&self, gate: u16, _inflight: u32) -> Result<(InprocTx, InprocRx), LoadError> {
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((
            InprocTx {
                target: self.clone(),
                gate: Gate::new(gate, PROVIDER),
                tx,
            },
            InprocRx { rx, pending: None },
        ))
    }
}

impl TargetKind for Quic {
    type Tx = QuicTx;
    type Rx = QuicRx;

    async fn mint_kind(
        &self,
        kind: Kind,
        n: u32,
        _first: bool,
    ) -> Result<Vec<CodeBytes>, LoadError> {
        let p = policy_of(kind);
        let spec = MintSpec {
            partition: self.partition,
            max_entries: p.entry.max_entries,
            records_exits: p.entry.records_exits,
            duration_from_first_scan_s: p.validity.duration_from_first_scan_s.unwrap_or(0),
            ..MintSpec::single_entry(PROVIDER, n)
        };
        self.admin.mint(spec).await.map_err(|e| LoadError::Target {
            target: self.name.clone(),
            reason: format!("minting: {e}"),
        })
    }

    async fn sync_name(&self) -> String {
        if self.echo.is_some() {
            return "none (echo)".to_string();
        }
        match self.admin.stats().await {
            Ok(s) => stile_protocol::frame::sync_mode::name(s.sync_mode).to_string(),
            Err(_) => "unknown".to_string(),
        }
    }

    async fn reading(&self) -> Option<NodeReading> {
        // The echo keeps no log and times nothing.
        if self.echo.is_some() {
            return None;
        }
        let metrics = self
            .admin
            .metrics(stile_protocol::frame::op::CHECKIN)
            .await
            .ok()?;
        let stats = self.admin.stats().await.ok()?;
        Some(NodeReading {
            checkin_us: Some(metrics.latency_us),
            fsync_us: metrics.fsync_us,
            syncs: stats.wal_syncs,
            records: stats.wal_records,
            at: std::time::Instant::now(),
        })
    }

    async fn server_cpu_us(&self) -> Option<u64> {
        self.admin
            .metrics(stile_protocol::frame::op::CHECKIN)
            .await
            .ok()?
            .cpu_us
    }

    async fn server_memory_bytes(&self) -> Option<u64> {
        self.admin
            .metrics(stile_protocol::frame::op::CHECKIN)
            .await
            .ok()?
            .rss_bytes
    }

    /// To the node believed to lead; of a shard, to the next in turn while one does not
    /// answer, each node once.
    async fn link(&self, gate: u16, inflight: u32) -> Result<(QuicTx, QuicRx), LoadError> {
        let cert = self.gate_certs.path().join(certs::gate_cert_name(gate));
        let err = |reason: String| LoadError::Target {
            target: self.name.clone(),
            reason: format!("gate {gate}: {reason}"),
        };
        let ctls = ClientTls::from_files(&self.ca, &cert, &certs::key_path_for(&cert))
            .map_err(|e| err(e.to_string()))?;
        let mut last = None;
        for _ in 0..self.nodes.len() {
            let addr = self.leader.get();
            let config = ClientConfig {
                tls: ctls.clone(),
                ..self.config_at(addr)
            };
            let endpoint = &self.endpoints[usize::from(gate) % self.endpoints.len()];
            let connecting = connect_raw_on(endpoint, &config);
            let connected = match self.nodes.len() {
                1 => connecting.await,
                _ => tokio::time::timeout(NODE_CONNECT_TIMEOUT, connecting)
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClientError::Connect {
                            node: addr,
                            reason: format!("no answer within {NODE_CONNECT_TIMEOUT:?}"),
                        })
                    }),
            };
            match connected {
                Ok(c) => return Ok(self.halves(c, inflight)),
                Err(e @ ClientError::Refused(_)) => return Err(err(e.to_string())),
                Err(e) => {
                    self.leader.moved(addr, None);
                    last = Some(e);
                }
            }
        }
        Err(err(last.map(|e| e.to_string()).unwrap_or_default()))
    }
}

impl Quic {
    /// The admin's configuration aimed at `addr`, with the name its certificate must carry
    /// (its IP address for a leader that is none of the target's nodes).
    fn config_at(&self, addr: SocketAddr) -> ClientConfig {
        let server_name = match self.nodes.iter().find(|(a, _)| *a == addr) {
            Some((_, host)) => host.clone(),
            None => addr.ip().to_string(),
        };
        ClientConfig {
            node: addr,
            server_name,
            nodes: Vec::new(),
            ..self.config.clone()
        }
    }

    /// A gate's link on a connection.
    fn halves(
        &self,
        (conn, send, recv): (quinn::Connection, quinn::SendStream, quinn::RecvStream),
        inflight: u32,
    ) -> (QuicTx, QuicRx) {
        (
            QuicTx {
                send,
                buf: Vec::with_capacity(64 * inflight as usize),
            },
            QuicRx {
                recv,
                buf: BytesMut::with_capacity(READ_BUF_START),
                conn,
                follow_leader: self.nodes.len() > 1,
                not_leader: None,
            },
        )
    }
}

/// The engine policy of a kind of ticket.
fn policy_of(kind: Kind) -> Policy {
    let simple = Policy::simple(PROVIDER);
    match kind {
        Kind::Single => simple,
        Kind::Journey => Policy {
            entry: EntryRule::pairs(1),
            ..simple
        },
        Kind::DayPass => Policy {
            entry: EntryRule::pairs(0),
            validity: Validity {
                duration_from_first_scan_s: Some(DAY_S),
                ..Validity::ALWAYS
            },
            ..simple
        },
    }
}

impl Tx {
    /// Sends `reqs` (request id, what to present).
    pub async fn send(&mut self, reqs: &[(u32, Item)]) -> Result<(), LinkError> {
        match self {
            Tx::Inproc(t) => t.send(reqs).await,
            Tx::Quic(q) => q.send(reqs).await,
            Tx::Redis(r) => r.send(reqs).await,
        }
    }
}

impl LinkTx for InprocTx {
    async fn send(&mut self, reqs: &[(u32, Item)]) -> Result<(), LinkError> {
        self.tx
            .send(self.run(reqs))
            .map_err(|_| LinkError("the receiving side stopped".into()))
    }
}

impl LinkTx for QuicTx {
    async fn send(&mut self, reqs: &[(u32, Item)]) -> Result<(), LinkError> {
        self.buf.clear();
        for (id, item) in reqs {
            let code = RawCode::from(item.code);
            let scan_id = item.scan_id;
            let req = if item.exit {
                Request::Exit { scan_id, code }
            } else {
                Request::Checkin { scan_id, code }
            };
            req.encode(*id, &mut self.buf);
        }
        self.send
            .write_all(&self.buf)
            .await
            .map_err(|e| LinkError(format!("writing: {e}")))
    }
}

impl Rx {
    /// What the link's QUIC connection carried so far (`None` for other targets).
    pub(crate) fn quic(&self) -> Option<QuicView> {
        match self {
            Rx::Quic(q) => {
                let stats = q.conn.stats();
                Some(QuicView {
                    datagrams_sent: stats.udp_tx.datagrams,
                    datagrams_received: stats.udp_rx.datagrams,
                    packets_lost: stats.path.lost_packets,
                })
            }
            _ => None,
        }
    }

    /// Whether the link failed because its node answered `not_leader` (a shard's only).
    pub(crate) fn not_leader(&self) -> bool {
        matches!(self, Rx::Quic(q) if q.not_leader.is_some())
    }

    /// Waits for answers and appends at least one to `out`. Cancel-safe: an answer read is
    /// never lost when the future is dropped.
    pub async fn recv(&mut self, out: &mut Vec<Answer>) -> Result<(), LinkError> {
        match self {
            Rx::Inproc(r) => r.recv(out).await,
            Rx::Quic(q) => q.recv(out).await,
            Rx::Redis(r) => r.recv(out).await,
        }
    }
}

impl LinkRx for QuicRx {
    /// A shard's node that answered `not_leader` fails the link once the answers read
    /// before are handed over: what it was asked stays in flight, for the leader.
    async fn recv(&mut self, out: &mut Vec<Answer>) -> Result<(), LinkError> {
        loop {
            while let Some((len, body)) = split_frame(&self.buf)
                .map_err(|e| LinkError(format!("bad frame: {e}")))?
                .filter(|_| self.not_leader.is_none())
            {
                match Response::decode(body) {
                    Ok((id, Response::Outcome(o))) => out.push((id, Ok(o))),
                    Ok((_, Response::Error { code, message }))
                        if self.follow_leader && code == error_code::NOT_LEADER =>
                    {
                        self.not_leader = Some(message);
                    }
                    Ok((id, Response::Error { code, message })) => {
                        out.push((id, Err(format!("error {code}: {message}"))))
                    }
                    Ok((id, _)) => out.push((id, Err("not an outcome".into()))),
                    Err(e) => return Err(LinkError(format!("bad answer: {e}"))),
                }
                self.buf.advance(len);
            }
            if !out.is_empty() {
                return Ok(());
            }
            if let Some(leader) = &self.not_leader {
                return Err(LinkError(format!("not the leader (it names {leader:?})")));
            }
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(c)) => self.buf.extend_from_slice(&c.bytes),
                Ok(None) => return Err(LinkError("the node finished the stream".into())),
                Err(e) => return Err(LinkError(format!("reading: {e}"))),
            }
        }
    }
}

impl LinkRx for InprocRx {
    async fn recv(&mut self, out: &mut Vec<Answer>) -> Result<(), LinkError> {
        if self.pending.is_none() {
            let Some(ran) = self.rx.recv().await else {
                return Err(LinkError("the sender stopped".into()));
            };
            self.pending = Some(ran);
        }
        if let Some((_, waits)) = &self.pending {
            for w in waits {
                w.clone().wait_async().await;
            }
        }
        if let Some((answers, _)) = self.pending.take() {
            out.extend(answers);
        }
        Ok(())
    }
}

impl InprocTx {
    /// Runs a batch: entries in one `checkin_batch`, exits one by one.
    fn run(&self, reqs: &[(u32, Item)]) -> Ran {
        let engine = &self.target.engine;
        let mut entries = Vec::with_capacity(reqs.len());
        let mut entry_ids = Vec::with_capacity(reqs.len());
        let mut answers = Vec::with_capacity(reqs.len());
        let mut waits = Vec::new();
        for (id, item) in reqs {
            let scan_id = item.scan_id;
            if item.exit {
                let (o, d) = engine.scan_deferred(
                    GateOp::Exit,
                    &self.gate,
                    scan_id,
                    &Presented::Code(item.code),
                );
                answers.push((*id, Ok(o)));
                waits.push(d);
            } else {
                entries.push(CheckinRequest {
                    gate: self.gate,
                    scan_id,
                    code: item.code,
                });
                entry_ids.push(*id);
            }
        }
        let mut outs = vec![Outcome::FORGED; entries.len()];
        waits.push(engine.checkin_batch(&entries, &mut outs));
        answers.extend(entry_ids.into_iter().zip(outs.into_iter().map(Ok)));
        (answers, waits)
    }
}
