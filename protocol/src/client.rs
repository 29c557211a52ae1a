//! The async client every gate, the gateway, the load tester and the CLI use.
//!
//! One QUIC connection, one long-lived bidirectional stream, many requests in flight at once
//! (responses come back by request id, in any order). A writer task takes every request
//! waiting in its queue and writes them in one go, so many frames share a packet; a reader
//! task matches responses to requests. At most `inflight_max` requests are outstanding: a
//! caller past that waits for a slot.
//!
//! When the connection drops, the client reconnects with exponential backoff and resends
//! every unanswered request that is safe to resend (gate scans carry their original scan id,
//! which the node answers with the original outcome; a repeated transfer is answered with the
//! successor the first one made); mint fails with [`ClientError::ConnectionLost`] instead,
//! since its outcome is unknown. A node that refuses the certificate ends the client: nothing
//! is retried.
//!
//! A shard's nodes: given several addresses ([`ClientConfig::nodes`]) the client connects to
//! the first that answers, and a node that answers `not_leader` (a standby, or a primary
//! that lost its lease) makes it move to the leader that answer names (else the next
//! address) and send the request there: a `not_leader` answer means nothing was done, so
//! even a mint is sent again.
//!
//! A gate checks a code's layout and provider before sending: a mistyped code is `forged`
//! and another provider's ticket `wrong_provider` without a round trip.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::code::CodeBytes;
use crate::frame::{
    close, split_frame, Conflict, Event, FrameError, MintSpec, NodeMetrics, NodeStats, OfflineScan,
    RawCode, ReplicaBatch, Request, Response, TicketInfo, MINT_FRAME_MAX,
};
use crate::outcome::Outcome;

pub use crate::frame::ALPN;
/// Requests in flight per client unless configured.
pub const INFLIGHT_DEFAULT: usize = 1024;
/// Batches a stream (a subscription's events, a replica follow's changes) buffers; a reader
/// further behind is dropped (its stream ends; ask again from the last position seen).
pub const SUBSCRIPTION_BACKLOG: usize = 1024;
/// Bytes of frames the writer gathers before one write.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// A connection that hears nothing from its node this long is dead: the client reconnects
/// and resends. Short, so that a gate whose node died (or restarted without a word, as after
/// SIGKILL, when no stateless reset reaches it) scans again within about a second; the
/// client's keep-alives keep a quiet connection alive meanwhile. QUIC stretches it to three
/// probe timeouts on a slow path, so a slow node is not taken for a dead one.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a quiet connection sends a keep-alive: several per [`IDLE_TIMEOUT`], so one
/// lost datagram does not end a live connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_millis(400);
/// The round-trip time assumed before one is measured (QUIC's default is 333 ms, made for
/// the Internet): gates and nodes share a site, and with it a handshake whose first packet
/// is lost, or that reaches a node still starting, is tried again within a fraction of a
/// second instead of one.
const INITIAL_RTT: Duration = Duration::from_millis(100);

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached.
    #[error("cannot reach node {node}: {reason}")]
    Connect {
        /// Address tried.
        node: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The node refused this client, or this client the node, for good (certificate
    /// unknown, revoked, for another name, or without a role); nothing is retried. The
    /// reason says which side refused.
    #[error("{0}")]
    Refused(String),
    /// The connection dropped before the answer came, and the request is not safe to
    /// resend (mint): whether it happened is unknown.
    #[error("connection lost before the answer; the request may or may not have happened")]
    ConnectionLost,
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// No answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The node answered with an error; nothing changed.
    #[error("{message} ({}, error {code})", crate::frame::error_code::name(*code))]
    Node {
        /// One of [`crate::frame::error_code`].
        code: u16,
        /// The node's explanation.
        message: String,
    },
    /// The node answered with a response of the wrong kind (a bug on one side).
    #[error("unexpected response to {0}")]
    Unexpected(&'static str),
    /// Certificates or keys could not be loaded.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// TLS material of a client: the deployment's CA and, normally, this client's certificate.
#[derive(Clone)]
pub struct ClientTls {
    /// The rustls config: roots, client certificate, ALPN.
    config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

fn tls_err(what: &str) -> impl Fn(String) -> ClientError + '_ {
    move |e| ClientError::Tls(format!("{what}: {e}"))
}

fn builder(
    ca_pem: &[u8],
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, ClientError>
{
    let mut roots = rustls::RootCertStore::empty();
    let mut found = false;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| tls_err("CA certificate")(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| tls_err("CA certificate")(e.to_string()))?;
        found = true;
    }
    if !found {
        return Err(ClientError::Tls("no CA certificate in the CA file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS versions")(e.to_string()))?
        .with_root_certificates(roots))
}

fn finish(mut config: rustls::ClientConfig) -> ClientTls {
    config.alpn_protocols = vec![ALPN.to_vec()];
    ClientTls {
        config: Arc::new(config),
    }
}

impl ClientTls {
    /// From PEM: the CA that signs the node's certificate, this client's certificate chain
    /// and its private key.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, ClientError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err("client certificate")(e.to_string()))?;
        if chain.is_empty() {
            return Err(ClientError::Tls(
                "no certificate in the certificate file".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| tls_err("client key")(e.to_string()))?;
        let config = builder(ca_pem)?
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_err("client certificate and key")(e.to_string()))?;
        Ok(finish(config))
    }

    /// From files (see [`Self::from_pem`]).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, ClientError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| ClientError::Tls(format!("{}: {e}", p.display())))
        };
        Self::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
    }

    /// The same roots and certificate for a TLS connection over TCP to a server that is no
    /// node (the load tester's Redis baseline authenticates as gates do): stile's ALPN is
    /// not offered.
    pub fn tcp_config(&self) -> Arc<rustls::ClientConfig> {
        let mut config = (*self.config).clone();
        config.alpn_protocols.clear();
        Arc::new(config)
    }

    /// Trusting the CA but presenting no certificate (a node refuses such clients; useful to
    /// test that it does).
    pub fn without_identity(ca_pem: &[u8]) -> Result<Self, ClientError> {
        Ok(finish(builder(ca_pem)?.with_no_client_auth()))
    }
}

/// How a client connects and behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The node's address.
    pub node: SocketAddr,
    /// The name the node's certificate must carry (a DNS name or an IP address).
    pub server_name: String,
    /// Certificates.
    pub tls: ClientTls,
    /// Most requests in flight at once.
    pub inflight_max: usize,
    /// The gate's provider (from its certificate): codes of other providers are answered
    /// `wrong_provider` locally. `None` for admins.
    pub provider: Option<u16>,
    /// Longest wait for one answer (reconnects included).
    pub request_timeout: Duration,
    /// Longest pause between reconnect attempts.
    pub backoff_max: Duration,
    /// Every node of the shard (`node` among them, tried first); empty: `node` alone.
    pub nodes: Vec<SocketAddr>,
    /// Whether a `not_leader` answer moves the client to the leader (the default), or is
    /// handed to the caller as [`ClientError::Node`] (tools that ask one node what it is).
    pub follow_leader: bool,
}

impl ClientConfig {
    /// Defaults for a node at `node` whose certificate names `node`'s IP address.
    pub fn new(node: SocketAddr, tls: ClientTls) -> Self {
        ClientConfig {
            node,
            server_name: node.ip().to_string(),
            tls,
            inflight_max: INFLIGHT_DEFAULT,
            provider: None,
            request_timeout: Duration::from_secs(10),
            backoff_max: Duration::from_secs(2),
            nodes: Vec::new(),
            follow_leader: true,
        }
    }
}

impl ClientConfig {
    /// Defaults for a shard whose nodes are at `nodes` (the first tried first), each
    /// certificate naming its node's IP address.
    pub fn for_nodes(nodes: &[SocketAddr], tls: ClientTls) -> Self {
        let mut config = ClientConfig::new(nodes[0], tls);
        config.nodes = nodes.to_vec();
        config
    }

    /// The addresses to try, in order.
    fn addresses(&self) -> Vec<SocketAddr> {
        let mut all = vec![self.node];
        all.extend(self.nodes.iter().filter(|a| **a != self.node));
        all
    }

    /// This configuration aimed at `addr` (its IP address as the name its certificate must
    /// carry, unless it is `node`).
    fn at(&self, addr: SocketAddr) -> ClientConfig {
        let mut c = self.clone();
        if addr != self.node {
            c.server_name = addr.ip().to_string();
        }
        c.node = addr;
        c
    }
}

/// Where an answer goes.
enum Reply {
    /// One response.
    Once(oneshot::Sender<Result<Response, ClientError>>),
    /// A stream of batches (subscribe, `replica_follow`), and the flag that says it was
    /// dropped for lagging.
    Stream(StreamTx, Arc<AtomicBool>),
}

/// Where a stream's batches go, by what its request streams.
enum StreamTx {
    /// Event batches (subscribe).
    Events(mpsc::Sender<Result<Vec<Event>, ClientError>>),
    /// Replica batches (`replica_follow`).
    Replica(mpsc::Sender<Result<ReplicaBatch, ClientError>>),
}

/// What became of a frame handed to a stream.
#[derive(Debug, PartialEq, Eq)]
enum Fed {
    /// Queued for the reader.
    Sent,
    /// Not a batch of this stream's kind: dropped.
    Ignored,
    /// The reader is [`SUBSCRIPTION_BACKLOG`] batches behind.
    Full,
    /// The reader is gone.
    Gone,
}

impl Fed {
    fn of<T>(sent: Result<(), mpsc::error::TrySendError<T>>) -> Fed {
        match sent {
            Ok(()) => Fed::Sent,
            Err(mpsc::error::TrySendError::Full(_)) => Fed::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Fed::Gone,
        }
    }
}

impl StreamTx {
    /// Hands `resp` to the reader if it is a batch of this stream, first moving `req`'s
    /// start past it, so that a resend after a reconnect resumes after the last batch
    /// received.
    fn feed(&self, req: &mut Request, resp: Response) -> Fed {
        match (self, resp) {
            (StreamTx::Events(tx), Response::Events(events)) => {
                if let (Some(last), Request::Subscribe { from_seq }) = (events.last(), req) {
                    *from_seq = last.seq.saturating_add(1);
                }
                Fed::of(tx.try_send(Ok(events)))
            }
            (StreamTx::Replica(tx), Response::Replica(batch)) => {
                if let Request::ReplicaFollow { from_seq } = req {
                    // A batch's position is where the replica goes on from.
                    *from_seq = batch.seq;
                }
                Fed::of(tx.try_send(Ok(batch)))
            }
            _ => Fed::Ignored,
        }
    }

    /// Whether the reader is gone.
    fn is_closed(&self) -> bool {
        match self {
            StreamTx::Events(tx) => tx.is_closed(),
            StreamTx::Replica(tx) => tx.is_closed(),
        }
    }

    /// Ends the stream with `e`, if the reader has room for it.
    fn fail(&self, e: &ClientError) {
        match self {
            StreamTx::Events(tx) => {
                let _ = tx.try_send(Err(e.clone()));
            }
            StreamTx::Replica(tx) => {
                let _ = tx.try_send(Err(e.clone()));
            }
        }
    }
}

/// A request waiting for its answer.
struct Pending {
    /// The request, to resend after a reconnect.
    req: Request,
    /// Where its answer goes.
    reply: Reply,
    /// The caller's in-flight slot (`None`: a request the client sends of itself).
    _permit: Option<OwnedSemaphorePermit>,
    /// Answered `not_leader`: not done, to be sent to the leader whatever its kind.
    moved: bool,
}

/// A request handed to the writer.
struct Command {
    /// The request.
    req: Request,
    /// Where its answer goes.
    reply: Reply,
    /// The caller's in-flight slot, held until the answer.
    permit: OwnedSemaphorePermit,
}

/// State the caller handles, the writer and the reader share.
struct Shared {
    /// Requests sent and not yet answered, by request id.
    pending: Mutex<HashMap<u32, Pending>>,
    /// The next request id to try.
    next_id: AtomicU64,
    /// Streams (subscriptions, replica follows) dropped here, their receiver gone or full,
    /// that the node still runs: the writer tells it to stop them (`unsubscribe`).
    dropped: Mutex<Vec<u32>>,
    /// Wakes the writer for them.
    wake: tokio::sync::Notify,
    /// The node answered `not_leader`: the leader it named ("" when it knows none). Its
    /// request stays pending, for the leader.
    redirect: Mutex<Option<String>>,
    /// Ends the connection after a `not_leader`.
    moved: tokio::sync::Notify,
    /// [`ClientConfig::follow_leader`].
    follow_leader: bool,
}

impl Shared {
    /// Registers `p` under a fresh request id.
    fn register(&self, p: Pending) -> u32 {
        let mut map = self.pending.lock().expect("client pending map poisoned");
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed) as u32;
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry(id) {
                v.insert(p);
                return id;
            }
        }
    }
}

/// A connection to one node. Cheap to clone; every clone shares the connection.
#[derive(Clone)]
pub struct Client {
    /// Requests to the writer.
    tx: mpsc::UnboundedSender<Command>,
    /// Why the client stopped for good, once it has.
    dead: Arc<std::sync::OnceLock<ClientError>>,
    /// In-flight slots (`inflight_max`).
    slots: Arc<Semaphore>,
    /// How it connects.
    config: Arc<ClientConfig>,
    /// The next scan id [`Client::next_scan_id`] hands out.
    scan_ids: Arc<AtomicU64>,
    /// The task that owns the connection, for [`Client::close`].
    driver: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("node", &self.config.node)
            .finish_non_exhaustive()
    }
}

/// How a connection ended.
enum Ended {
    /// Lost: reconnect.
    Lost(String),
    /// The node does not lead: go to the leader it named (or the next address); what it
    /// answered `not_leader` is pending still.
    Moved,
    /// Refused for good.
    Refused(String),
    /// Every handle dropped and nothing pending.
    Done,
}

impl Client {
    /// Connects, proves the connection with a ping (a node verifies the client certificate
    /// after the handshake, so a refusal shows only then), and starts the background tasks.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let config = Arc::new(config);
        let endpoint = client_endpoint(&config)?;
        let conn = open_any(&endpoint, &config).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let dead = Arc::new(std::sync::OnceLock::new());
        let driver = tokio::spawn(drive(endpoint, conn, config.clone(), rx, dead.clone()));
        let client = Client {
            tx,
            dead,
            slots: Arc::new(Semaphore::new(config.inflight_max.max(1))),
            config,
            scan_ids: Arc::new(AtomicU64::new(nanos)),
            driver: Arc::new(Mutex::new(Some(driver))),
        };
        client.ping().await?;
        Ok(client)
    }

    /// Closes the connection once every answer is in, and waits (up to 2 s) until the node
    /// has been told. Call it on the last handle before the process exits: a connection
    /// dropped with the process is one the node learns of only by its idle timeout, and
    /// meanwhile waits on it when it shuts down. With other handles alive it waits for
    /// them to go.
    pub async fn close(self) {
        let driver = self.driver.lock().expect("driver poisoned").take();
        drop(self);
        if let Some(driver) = driver {
            let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
        }
    }

    /// A fresh scan id (unique per client: seeded from the clock, then counted up).
    pub fn next_scan_id(&self) -> u64 {
        self.scan_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// The configuration this client runs with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    async fn send(&self, req: Request, reply: Reply) -> Result<(), ClientError> {
        let closed = || self.dead.get().cloned().unwrap_or(ClientError::Closed);
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        self.tx
            .send(Command { req, reply, permit })
            .map_err(|_| closed())
    }

    /// Sends any request and waits for its answer (an error answer becomes
    /// [`ClientError::Node`]).
    pub async fn request(&self, req: Request) -> Result<Response, ClientError> {
        let (tx, rx) = oneshot::channel();
        let timeout = self.config.request_timeout;
        let answer = async {
            self.send(req, Reply::Once(tx)).await?;
            rx.await.map_err(|_| ClientError::Closed)?
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Response::Error { code, message })) => Err(ClientError::Node { code, message }),
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Sends `req` (after every request sent before it on this client, in that order) and
    /// returns its answer to wait for: how a caller keeps many requests in flight whose
    /// order matters (a gate's upload of its journal).
    pub async fn submit(&self, req: Request) -> Result<PendingAnswer, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.send(req, Reply::Once(tx)).await?;
        Ok(PendingAnswer {
            rx,
            timeout: self.config.request_timeout,
        })
    }

    async fn outcome(&self, req: Request, what: &'static str) -> Result<Outcome, ClientError> {
        match self.request(req).await? {
            Response::Outcome(o) => Ok(o),
            _ => Err(ClientError::Unexpected(what)),
        }
    }

    /// The local check a gate makes before a round trip.
    fn local_check(&self, code: &CodeBytes) -> Option<Outcome> {
        match self.config.provider {
            Some(p) if code.provider() != p => Some(Outcome::WRONG_PROVIDER),
            _ => None,
        }
    }

    /// Checks in `code` with `scan_id` (reuse the id to retry a scan whose answer was lost).
    pub async fn checkin(&self, code: &CodeBytes, scan_id: u64) -> Result<Outcome, ClientError> {
        if let Some(o) = self.local_check(code) {
            return Ok(o);
        }
        let code = RawCode::from(*code);
        self.outcome(Request::Checkin { scan_id, code }, "check-in")
            .await
    }

    /// Checks in a code given as text: text that is no code is `forged` without a round trip.
    pub async fn checkin_text(&self, text: &str, scan_id: u64) -> Result<Outcome, ClientError> {
        match CodeBytes::parse(text) {
            Ok(code) => self.checkin(&code, scan_id).await,
            Err(_) => Ok(Outcome::FORGED),
        }
    }

    /// Records an exit.
    pub async fn exit(&self, code: &CodeBytes, scan_id: u64) -> Result<Outcome, ClientError> {
        if let Some(o) = self.local_check(code) {
            return Ok(o);
        }
        let code = RawCode::from(*code);
        self.outcome(Request::Exit { scan_id, code }, "exit").await
    }

    /// Annuls this gate's last admit of `code`.
    pub async fn undo(&self, code: &CodeBytes, scan_id: u64) -> Result<Outcome, ClientError> {
        let code = RawCode::from(*code);
        self.outcome(Request::Undo { scan_id, code }, "undo").await
    }

    /// Checks in on behalf of gate `gate` of provider `provider` (admin).
    pub async fn checkin_as(
        &self,
        gate: u16,
        provider: u16,
        code: &CodeBytes,
        scan_id: u64,
    ) -> Result<Outcome, ClientError> {
        let req = Request::CheckinAs {
            gate,
            provider,
            scan_id,
            code: RawCode::from(*code),
        };
        self.outcome(req, "checkin_as").await
    }

    /// A ticket's state.
    pub async fn status(&self, code: &CodeBytes) -> Result<TicketInfo, ClientError> {
        let req = Request::Status {
            code: RawCode::from(*code),
        };
        match self.request(req).await? {
            Response::Ticket(t) => Ok(t),
            _ => Err(ClientError::Unexpected("status")),
        }
    }

    /// The per-ticket key of a rotating ticket and the node's time step in seconds (admin):
    /// enough to draw the ticket's code for any step (`docs/FORMAT.md` §1). The key is secret.
    pub async fn ticket_key(&self, code: &CodeBytes) -> Result<([u8; 32], u32), ClientError> {
        let req = Request::TicketKey {
            code: RawCode::from(*code),
        };
        match self.request(req).await? {
            Response::TicketKey { key, step_s } => Ok((key, step_s)),
            _ => Err(ClientError::Unexpected("ticket_key")),
        }
    }

    /// Revokes a ticket (admin).
    pub async fn revoke(&self, code: &CodeBytes) -> Result<Outcome, ClientError> {
        let req = Request::Revoke {
            code: RawCode::from(*code),
        };
        self.outcome(req, "revoke").await
    }

    /// Transfers a ticket: the old code is void, the returned one is the new holder's
    /// (admin). Asking again for a ticket already transferred answers the same new code, so
    /// a caller that lost the answer asks again.
    pub async fn transfer(&self, code: &CodeBytes) -> Result<CodeBytes, ClientError> {
        let req = Request::Transfer {
            code: RawCode::from(*code),
        };
        match self.request(req).await? {
            Response::Codes(c) if c.len() == 1 => Ok(c[0]),
            _ => Err(ClientError::Unexpected("transfer")),
        }
    }

    /// Mints `spec.count` tickets (admin), in requests of at most [`MINT_FRAME_MAX`] sent
    /// together; codes come back in order.
    pub async fn mint(&self, spec: MintSpec) -> Result<Vec<CodeBytes>, ClientError> {
        let timeout = self.config.request_timeout;
        let mut parts = Vec::new();
        let mut left = spec.count;
        while left > 0 {
            let count = left.min(MINT_FRAME_MAX);
            left -= count;
            let (tx, rx) = oneshot::channel();
            let sent = self.send(Request::Mint(MintSpec { count, ..spec }), Reply::Once(tx));
            tokio::time::timeout(timeout, sent)
                .await
                .map_err(|_| ClientError::Timeout(timeout))??;
            parts.push(rx);
        }
        let mut codes = Vec::with_capacity(spec.count as usize);
        // Each frame's answer within the request timeout of the one before: a node that is
        // gone fails the mint instead of holding its caller (and whatever it locked) forever.
        for rx in parts {
            let answer = tokio::time::timeout(timeout, rx)
                .await
                .map_err(|_| ClientError::Timeout(timeout))?;
            match answer.map_err(|_| ClientError::Closed)?? {
                Response::Codes(c) => codes.extend(c),
                Response::Error { code, message } => {
                    return Err(ClientError::Node { code, message })
                }
                _ => return Err(ClientError::Unexpected("mint")),
            }
        }
        Ok(codes)
    }

    /// Drops every ticket of `partition` for good (admin): how many tickets went, and the
    /// serial below which the partition is purged. Not resent after a lost connection (a
    /// resend would drop what was minted meanwhile): an error then, and the caller asks
    /// again if it means to.
    pub async fn purge(&self, partition: u16) -> Result<(u64, u64), ClientError> {
        match self.request(Request::Purge { partition }).await? {
            Response::Purged { tickets, below } => Ok((tickets, below)),
            _ => Err(ClientError::Unexpected("purge")),
        }
    }

    /// Round trip time of one ping.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = std::time::Instant::now();
        match self.request(Request::Ping).await? {
            Response::Pong => Ok(start.elapsed()),
            _ => Err(ClientError::Unexpected("ping")),
        }
    }

    /// The node's counters.
    pub async fn stats(&self) -> Result<NodeStats, ClientError> {
        match self.request(Request::Stats).await? {
            Response::Stats(s) => Ok(s),
            _ => Err(ClientError::Unexpected("stats")),
        }
    }

    /// The node's outcome counts, in-flight requests, and the latency histogram of request
    /// op `op` (`frame::op::CHECKIN`, say) and of its log's `fdatasync`. A node older than
    /// this request closes the connection with `unknown op`: [`ClientError::Refused`].
    pub async fn metrics(&self, op: u8) -> Result<NodeMetrics, ClientError> {
        match self.request(Request::Metrics { op }).await? {
            Response::Metrics(m) => Ok(m),
            _ => Err(ClientError::Unexpected("metrics")),
        }
    }

    /// Ticket events from log position `from_seq` on, then live (admin). The subscription
    /// survives reconnects, resuming after the last event received. One that falls
    /// [`SUBSCRIPTION_BACKLOG`] batches behind is dropped ([`Subscription::fell_behind`]).
    pub async fn subscribe(&self, from_seq: u64) -> Result<Subscription, ClientError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BACKLOG);
        let lagged = Arc::new(AtomicBool::new(false));
        self.send(
            Request::Subscribe { from_seq },
            Reply::Stream(StreamTx::Events(tx), lagged.clone()),
        )
        .await?;
        Ok(Subscription { rx, lagged })
    }

    /// A page of this gate's provider's tickets after `after` (`None`: from the first), for
    /// its offline replica (gate): at most `limit`, and at most what one frame holds. The
    /// batch's `next` is the `after` of the next page (`None`: this was the last); its
    /// `seq` is where to [`Client::replica_follow`] from once the last page is in.
    pub async fn replica_page(
        &self,
        after: Option<(u16, u32)>,
        limit: u32,
    ) -> Result<ReplicaBatch, ClientError> {
        match self.request(Request::ReplicaPage { after, limit }).await? {
            Response::Replica(batch) => Ok(batch),
            _ => Err(ClientError::Unexpected("replica_page")),
        }
    }

    /// The replica's changes from log position `from_seq` on, then live (gate). The stream
    /// survives reconnects, resuming after the last batch received. One that falls
    /// [`SUBSCRIPTION_BACKLOG`] batches behind is dropped ([`ReplicaStream::fell_behind`]); a
    /// position the node no longer keeps ends it with [`ClientError::Node`] (error
    /// `trimmed`: reload the replica page by page).
    pub async fn replica_follow(&self, from_seq: u64) -> Result<ReplicaStream, ClientError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BACKLOG);
        let lagged = Arc::new(AtomicBool::new(false));
        self.send(
            Request::ReplicaFollow { from_seq },
            Reply::Stream(StreamTx::Replica(tx), lagged.clone()),
        )
        .await?;
        Ok(ReplicaStream { rx, lagged })
    }

    /// Uploads a scan this gate decided offline (gate), and answers the node's outcome for
    /// it. Resent after a lost connection: the scan id makes the node count it once. Build
    /// the scan with [`OfflineScan::new`].
    pub async fn checkin_offline(&self, scan: &OfflineScan) -> Result<Outcome, ClientError> {
        self.outcome(Request::CheckinOffline(*scan), "checkin_offline")
            .await
    }

    /// A page of the node's conflict list from index `after` on (admin), only `provider`'s
    /// if given, and the index to ask from for the next page (`None`: no more).
    pub async fn conflicts(
        &self,
        provider: Option<u16>,
        after: u64,
    ) -> Result<(Vec<Conflict>, Option<u64>), ClientError> {
        match self.request(Request::Conflicts { provider, after }).await? {
            Response::Conflicts { items, next } => Ok((items, next)),
            _ => Err(ClientError::Unexpected("conflicts")),
        }
    }
}

/// The answer to a request sent with [`Client::submit`].
#[derive(Debug)]
pub struct PendingAnswer {
    rx: oneshot::Receiver<Result<Response, ClientError>>,
    timeout: Duration,
}

impl PendingAnswer {
    /// Waits for it (an error answer becomes [`ClientError::Node`]).
    pub async fn wait(self) -> Result<Response, ClientError> {
        match tokio::time::timeout(self.timeout, self.rx).await {
            Ok(Ok(Ok(Response::Error { code, message }))) => {
                Err(ClientError::Node { code, message })
            }
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }
}

/// A stream of ticket events.
#[derive(Debug)]
pub struct Subscription {
    /// Event batches, or the error that ended the subscription.
    rx: mpsc::Receiver<Result<Vec<Event>, ClientError>>,
    /// Set when the client dropped the subscription because its reader fell
    /// [`SUBSCRIPTION_BACKLOG`] batches behind.
    lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// The next batch of events, in log order; `None` once the subscription ended (the
    /// client is gone, or [`Subscription::fell_behind`]).
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, ClientError>> {
        self.rx.recv().await
    }

    /// Whether the subscription ended because its reader fell behind (the node is fine):
    /// subscribe again from the position after the last event read.
    pub fn fell_behind(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }
}

/// A stream of replica changes (`replica_follow`).
#[derive(Debug)]
pub struct ReplicaStream {
    /// Replica batches, or the error that ended the stream.
    rx: mpsc::Receiver<Result<ReplicaBatch, ClientError>>,
    /// Set when the client dropped the stream because its reader fell
    /// [`SUBSCRIPTION_BACKLOG`] batches behind.
    lagged: Arc<AtomicBool>,
}

impl ReplicaStream {
    /// The next batch of changes, in log order; an error (the node's, such as `trimmed`)
    /// ends the stream; `None` once it ended (the client is gone, or
    /// [`ReplicaStream::fell_behind`]).
    pub async fn next(&mut self) -> Option<Result<ReplicaBatch, ClientError>> {
        self.rx.recv().await
    }

    /// Whether the stream ended because its reader fell behind (the node is fine): follow
    /// again from the last batch's `seq + 1`.
    pub fn fell_behind(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }
}

/// A bare connection and stream to a node, for tools that write frames themselves (tests
/// that feed a node bad bytes, benchmarks). Keep the endpoint alive while using them.
pub async fn connect_raw(
    config: &ClientConfig,
) -> Result<
    (
        quinn::Endpoint,
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
    ),
    ClientError,
> {
    let endpoint = client_endpoint(config)?;
    let (conn, send, recv) = open(&endpoint, config).await?;
    Ok((endpoint, conn, send, recv))
}

/// A connection and stream to a node on an endpoint shared with other connections, each
/// with its own certificate: one socket for many simulated gates (the load tester).
pub async fn connect_raw_on(
    endpoint: &quinn::Endpoint,
    config: &ClientConfig,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), ClientError> {
    open_with(endpoint, config, Some(quinn_config(config)?)).await
}

/// A client endpoint for [`connect_raw_on`], on `socket` (bound already, for instance with
/// larger kernel buffers than a plain bind gives).
pub fn raw_endpoint_on(
    socket: std::net::UdpSocket,
    config: &ClientConfig,
) -> Result<quinn::Endpoint, ClientError> {
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| ClientError::Connect {
        node: config.node,
        reason: format!("opening a QUIC endpoint: {e}"),
    })?;
    endpoint.set_default_client_config(quinn_config(config)?);
    Ok(endpoint)
}

/// The address a client binds to reach `node`: any local address of its family, any port.
pub fn bind_addr_for(node: SocketAddr) -> SocketAddr {
    if node.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    }
}

fn client_endpoint(config: &ClientConfig) -> Result<quinn::Endpoint, ClientError> {
    let bind = bind_addr_for(config.node);
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect {
        node: config.node,
        reason: format!("binding a UDP socket: {e}"),
    })?;
    endpoint.set_default_client_config(quinn_config(config)?);
    Ok(endpoint)
}

/// The QUIC settings and certificates of a connection.
fn quinn_config(config: &ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from((*config.tls.config).clone())
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut qc = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("1 s fits")));
    transport.initial_rtt(INITIAL_RTT);
    transport.stream_receive_window((4u32 << 20).into());
    transport.send_window(8 << 20);
    qc.transport_config(Arc::new(transport));
    Ok(qc)
}

/// One connection attempt: handshake and the stream.
async fn open(
    endpoint: &quinn::Endpoint,
    config: &ClientConfig,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), ClientError> {
    open_with(endpoint, config, None).await
}

/// Connects to the first of the configuration's nodes that answers.
async fn open_any(
    endpoint: &quinn::Endpoint,
    config: &ClientConfig,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), ClientError> {
    let mut last = None;
    for addr in config.addresses() {
        match open(endpoint, &config.at(addr)).await {
            Ok(c) => return Ok(c),
            Err(e @ ClientError::Refused(_)) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one address"))
}

/// One connection attempt with the endpoint's default settings or `with`.
async fn open_with(
    endpoint: &quinn::Endpoint,
    config: &ClientConfig,
    with: Option<quinn::ClientConfig>,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), ClientError> {
    let err = |reason: String| ClientError::Connect {
        node: config.node,
        reason,
    };
    let connecting = match with {
        Some(qc) => endpoint.connect_with(qc, config.node, &config.server_name),
        None => endpoint.connect(config.node, &config.server_name),
    }
    .map_err(|e| err(e.to_string()))?;
    let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| err("no answer within 5 s (is a stile node running there?)".into()))?
        .map_err(|e| classify(&e).map_or_else(|| err(e.to_string()), ClientError::Refused))?;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| classify(&e).map_or_else(|| err(e.to_string()), ClientError::Refused))?;
    Ok((conn, send, recv))
}

/// `Some(reason)` if the connection error means the node will never take this client, or
/// this client the node; the reason says which side refused.
fn classify(e: &quinn::ConnectionError) -> Option<String> {
    let by_node = |why: String| format!("node refused this client: {why}");
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let code = c.error_code.into_inner();
            // An op the node does not know: resending it would fail the same way.
            matches!(
                code as u32,
                close::REVOKED | close::NO_ROLE | close::UNKNOWN_OP
            )
            .then(|| by_node(close::name(code as u32).to_string()))
        }
        // A TLS alert from the node: certificate unknown, revoked, missing.
        quinn::ConnectionError::ConnectionClosed(c) => {
            tls_alert(u64::from(c.error_code)).map(by_node)
        }
        // Raised here: this client did not accept the node's certificate.
        quinn::ConnectionError::TransportError(t) => tls_alert(u64::from(t.code)).map(|why| {
            format!(
                "this client refused the node's certificate: {why} (--ca names the CA it must \
                 chain to; --server-name, or the host of --node, a name it must carry)"
            )
        }),
        _ => None,
    }
}

/// The TLS alert in a QUIC crypto error code, if it is one that a retry cannot cure.
fn tls_alert(code: u64) -> Option<String> {
    if !(0x100..0x200).contains(&code) {
        return None;
    }
    let what = match code & 0xff {
        40 => "handshake failure",
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired",
        46 => "certificate unknown",
        48 => "unknown CA: the certificate is not from this deployment's CA",
        51 => "certificate signature does not verify: not from this deployment's CA",
        116 => "certificate required: this client presented none",
        120 => "no application protocol (not a stile/1 node?)",
        other => return Some(format!("TLS alert {other}")),
    };
    Some(format!("TLS: {what}"))
}

/// Owns the connection: runs the writer and reader, reconnects, resends.
async fn drive(
    endpoint: quinn::Endpoint,
    first: (quinn::Connection, quinn::SendStream, quinn::RecvStream),
    config: Arc<ClientConfig>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    dead: Arc<std::sync::OnceLock<ClientError>>,
) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        dropped: Mutex::new(Vec::new()),
        wake: tokio::sync::Notify::new(),
        redirect: Mutex::new(None),
        moved: tokio::sync::Notify::new(),
        follow_leader: config.follow_leader,
    });
    let addresses = config.addresses();
    // The address connected to, as an index into `addresses` (or the leader named).
    let mut at = first.0.remote_address();
    let mut conn = Some(first);
    let mut backoff = Duration::from_millis(20);
    loop {
        let (c, send, recv) = match conn.take() {
            Some(c) => c,
            None => match open(&endpoint, &config.at(at)).await {
                Ok(c) => {
                    backoff = Duration::from_millis(20);
                    c
                }
                Err(ClientError::Refused(reason)) => {
                    let e = dead.get_or_init(|| ClientError::Refused(reason));
                    fail_all(&shared, &mut rx, e).await;
                    return;
                }
                Err(e) => {
                    tracing::debug!("reconnect to {at} failed: {e}");
                    if rx.is_closed() && shared.pending.lock().expect("poisoned").is_empty() {
                        return;
                    }
                    at = next_address(&addresses, at);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(config.backoff_max);
                    continue;
                }
            },
        };
        let ended = run_connection(&shared, &c, send, recv, &mut rx).await;
        match ended {
            Ended::Done => {
                c.close(close::DONE.into(), b"done");
                endpoint.wait_idle().await;
                return;
            }
            Ended::Refused(reason) => {
                let e = dead.get_or_init(|| ClientError::Refused(reason));
                fail_all(&shared, &mut rx, e).await;
                return;
            }
            Ended::Moved => {
                let named = shared.redirect.lock().expect("poisoned").take();
                at = match named.and_then(|n| n.parse::<SocketAddr>().ok()) {
                    Some(leader) => leader,
                    None => {
                        // A node that knows no leader: the next one, after a pause.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(config.backoff_max);
                        next_address(&addresses, at)
                    }
                };
                tracing::debug!("not the leader; moving to {at}");
                c.close(close::DONE.into(), b"moving to the leader");
                // What the node may have done and not yet answered is not sent again.
                fail_unsafe(&shared, |p| !p.moved);
            }
            Ended::Lost(reason) => {
                tracing::debug!("connection to {at} lost: {reason}");
                at = next_address(&addresses, at);
                // Requests whose outcome a resend could duplicate fail now.
                fail_unsafe(&shared, |_| true);
            }
        }
    }
}

impl Reply {
    /// A reply whose receiver is gone.
    fn closed() -> Reply {
        Reply::Once(oneshot::channel().0)
    }

    /// Whether nobody waits for the answer any more: the caller gave up (its timeout ran
    /// out) or dropped the request. Such a request is never sent again: the caller was told
    /// it failed, and a check-in done after that would void a ticket whose holder was sent
    /// away.
    fn abandoned(&self) -> bool {
        match self {
            Reply::Once(tx) => tx.is_closed(),
            Reply::Stream(tx, _) => tx.is_closed(),
        }
    }

    fn fail(self, e: &ClientError) {
        match self {
            Reply::Once(tx) => {
                let _ = tx.send(Err(e.clone()));
            }
            Reply::Stream(tx, _) => tx.fail(e),
        }
    }
}

/// Fails everything pending and everything sent from now on with `e`.
async fn fail_all(shared: &Shared, rx: &mut mpsc::UnboundedReceiver<Command>, e: &ClientError) {
    let drained: Vec<Pending> = shared
        .pending
        .lock()
        .expect("client pending map poisoned")
        .drain()
        .map(|(_, p)| p)
        .collect();
    for p in drained {
        p.reply.fail(e);
    }
    rx.close();
    while let Some(cmd) = rx.recv().await {
        cmd.reply.fail(e);
    }
}

async fn run_connection(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    rx: &mut mpsc::UnboundedReceiver<Command>,
) -> Ended {
    // Resend what the last connection left unanswered, in id order.
    let mut buf = BytesMut::with_capacity(WRITE_BATCH_BYTES);
    {
        let mut map = shared.pending.lock().expect("client pending map poisoned");
        map.retain(|_, p| !p.reply.abandoned());
        let mut ids: Vec<&u32> = map.keys().collect();
        ids.sort_unstable();
        for id in ids {
            map[id].req.encode(*id, &mut buf);
        }
    }
    let reader = tokio::spawn(read_loop(shared.clone(), recv));
    let writer = async move {
        if !buf.is_empty() {
            send.write_all(&buf).await.map_err(|e| e.to_string())?;
        }
        loop {
            buf.clear();
            let mut next = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => Some(cmd),
                    None => return Ok::<quinn::SendStream, String>(send),
                },
                () = shared.wake.notified() => None,
            };
            let dropped = std::mem::take(&mut *shared.dropped.lock().expect("poisoned"));
            for subscription in dropped {
                let req = Request::Unsubscribe { id: subscription };
                let id = shared.register(Pending {
                    req,
                    reply: Reply::closed(),
                    _permit: None,
                    moved: false,
                });
                req.encode(id, &mut buf);
            }
            while let Some(cmd) = next.take() {
                // Queued while the node was unreachable and given up on since: not sent.
                if !cmd.reply.abandoned() {
                    let req = cmd.req;
                    let id = shared.register(Pending {
                        req,
                        reply: cmd.reply,
                        _permit: Some(cmd.permit),
                        moved: false,
                    });
                    req.encode(id, &mut buf);
                }
                if buf.len() < WRITE_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if !buf.is_empty() {
                send.write_all(&buf).await.map_err(|e| e.to_string())?;
            }
        }
    };
    let reader_done = async {
        // Cancelling the writer future is safe: a command is registered before any await.
        tokio::select! {
            r = writer => match r {
                // Every handle is gone: wait for the last answers, then finish.
                Ok(mut send) => loop {
                    if shared.pending.lock().expect("poisoned").is_empty() {
                        let _ = send.finish();
                        return Ended::Done;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                        e = conn.closed() => return ended_by(&e),
                    }
                },
                Err(_) => ended_by(&conn.closed().await),
            },
            e = conn.closed() => ended_by(&e),
            () = shared.moved.notified() => Ended::Moved,
        }
    };
    let ended = reader_done.await;
    reader.abort();
    ended
}

/// Fails the pending requests a resend could duplicate (mint, purge) among those `which`
/// picks, with [`ClientError::ConnectionLost`]; the rest stay, to be sent again.
fn fail_unsafe(shared: &Shared, which: impl Fn(&Pending) -> bool) {
    let mut map = shared.pending.lock().expect("client pending map poisoned");
    map.retain(|_, p| {
        if p.req.is_retry_safe() || !which(p) {
            p.moved = false;
            return true;
        }
        if let Reply::Once(tx) = std::mem::replace(&mut p.reply, Reply::closed()) {
            let _ = tx.send(Err(ClientError::ConnectionLost));
        }
        false
    });
}

/// The address after `at` in `addresses` (the first if `at` is not among them).
fn next_address(addresses: &[SocketAddr], at: SocketAddr) -> SocketAddr {
    match addresses.iter().position(|a| *a == at) {
        Some(i) => addresses[(i + 1) % addresses.len()],
        None => addresses[0],
    }
}

fn ended_by(e: &quinn::ConnectionError) -> Ended {
    match classify(e) {
        Some(reason) => Ended::Refused(reason),
        None => Ended::Lost(e.to_string()),
    }
}

async fn read_loop(shared: Arc<Shared>, mut recv: quinn::RecvStream) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) | Err(_) => return,
        }
        loop {
            let (n, id, resp) = match split_frame(&buf) {
                Ok(Some((n, body))) => match Response::decode(body) {
                    Ok((id, resp)) => (n, id, resp),
                    Err(e) => return bad_frame(&e),
                },
                Ok(None) => break,
                Err(e) => return bad_frame(&e),
            };
            buf.advance(n);
            deliver(&shared, id, resp);
        }
    }
}

fn bad_frame(e: &FrameError) {
    tracing::warn!(error = %e, "node sent a bad frame; dropping the connection");
}

fn deliver(shared: &Shared, id: u32, resp: Response) {
    let mut map = shared.pending.lock().expect("client pending map poisoned");
    let Some(p) = map.get_mut(&id) else {
        return;
    };
    if let (
        true,
        Response::Error {
            code: crate::frame::error_code::NOT_LEADER,
            message,
        },
    ) = (shared.follow_leader, &resp)
    {
        // Nothing was done: the request stays, for the leader.
        p.moved = true;
        *shared.redirect.lock().expect("poisoned") = Some(message.clone());
        shared.moved.notify_one();
        return;
    }
    match (&p.reply, resp) {
        (Reply::Stream(..), Response::Error { code, message }) => {
            if let Some(p) = map.remove(&id) {
                p.reply.fail(&ClientError::Node { code, message });
            }
        }
        (Reply::Stream(tx, lagged), resp) => match tx.feed(&mut p.req, resp) {
            Fed::Sent | Fed::Ignored => {}
            fed @ (Fed::Full | Fed::Gone) => {
                // Slow or gone reader: drop the stream rather than block everyone, and have
                // the node stop it too. A slow one learns why once it has read what it was
                // sent.
                if fed == Fed::Full {
                    lagged.store(true, Ordering::Release);
                }
                map.remove(&id);
                shared.dropped.lock().expect("poisoned").push(id);
                shared.wake.notify_one();
            }
        },
        (Reply::Once(_), resp) => {
            if let Some(Pending {
                reply: Reply::Once(tx),
                ..
            }) = map.remove(&id)
            {
                let _ = tx.send(Ok(resp));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{error_code, EventKind, ReplicaItem, TicketStateName};

    fn shared() -> Shared {
        Shared {
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            dropped: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            redirect: Mutex::new(None),
            moved: tokio::sync::Notify::new(),
            follow_leader: true,
        }
    }

    /// Registers a stream of `req` whose batches go to `tx`: its id and lag flag.
    fn stream(shared: &Shared, req: Request, tx: StreamTx) -> (u32, Arc<AtomicBool>) {
        let lagged = Arc::new(AtomicBool::new(false));
        let reply = Reply::Stream(tx, lagged.clone());
        let id = shared.register(Pending {
            req,
            reply,
            _permit: None,
            moved: false,
        });
        (id, lagged)
    }

    /// The request pending under `id`, as a reconnect would resend it.
    fn pending(shared: &Shared, id: u32) -> Option<Request> {
        shared.pending.lock().unwrap().get(&id).map(|p| p.req)
    }

    fn batch(seq: u64) -> ReplicaBatch {
        ReplicaBatch {
            seq,
            now_unix_s: 1_750_000_000,
            next: None,
            items: vec![ReplicaItem::KeyRetired(1)],
        }
    }

    fn event(seq: u64) -> Event {
        Event {
            seq,
            kind: EventKind::State,
            partition: 0,
            serial: 1,
            state: TicketStateName::Used,
            inside: false,
            entries: 1,
            gate: 2,
            at_unix_s: 1_750_000_000,
        }
    }

    #[test]
    fn replica_batches_reach_their_stream_and_move_its_resend_position() {
        let shared = shared();
        let (tx, mut rx) = mpsc::channel(4);
        let follow = Request::ReplicaFollow { from_seq: 10 };
        let (id, _) = stream(&shared, follow, StreamTx::Replica(tx));
        deliver(&shared, id, Response::Replica(batch(41)));
        assert_eq!(rx.try_recv().unwrap(), Ok(batch(41)));
        let resumes = Request::ReplicaFollow { from_seq: 41 };
        assert_eq!(pending(&shared, id), Some(resumes));
        // Another kind of batch is no frame of this stream: dropped, position kept.
        deliver(&shared, id, Response::Events(vec![event(99)]));
        assert!(rx.try_recv().is_err());
        assert_eq!(pending(&shared, id), Some(resumes));
    }

    #[test]
    fn a_node_error_ends_a_replica_stream() {
        let shared = shared();
        let (tx, rx) = mpsc::channel(4);
        let follow = Request::ReplicaFollow { from_seq: 1 };
        let (id, lagged) = stream(&shared, follow, StreamTx::Replica(tx));
        let message = "log position 1 is no longer kept".to_string();
        let code = error_code::TRIMMED;
        deliver(&shared, id, Response::Error { code, message });
        let mut replica = ReplicaStream { rx, lagged };
        let Some(Err(ClientError::Node { code, .. })) = replica.rx.try_recv().ok() else {
            panic!("no node error");
        };
        assert_eq!(code, error_code::TRIMMED);
        assert_eq!(pending(&shared, id), None, "an ended stream is not resent");
        assert!(!replica.fell_behind());
        assert!(
            shared.dropped.lock().unwrap().is_empty(),
            "the node ended it"
        );
    }

    #[test]
    fn a_replica_stream_that_falls_behind_is_dropped_and_stopped_at_the_node() {
        let shared = shared();
        let (tx, rx) = mpsc::channel(1);
        let follow = Request::ReplicaFollow { from_seq: 1 };
        let (id, lagged) = stream(&shared, follow, StreamTx::Replica(tx));
        deliver(&shared, id, Response::Replica(batch(5)));
        deliver(&shared, id, Response::Replica(batch(6)));
        let replica = ReplicaStream { rx, lagged };
        assert!(replica.fell_behind());
        assert_eq!(pending(&shared, id), None);
        assert_eq!(*shared.dropped.lock().unwrap(), [id]);
    }

    #[test]
    fn a_replica_stream_whose_reader_is_gone_is_stopped_but_did_not_fall_behind() {
        let shared = shared();
        let (tx, rx) = mpsc::channel(4);
        let follow = Request::ReplicaFollow { from_seq: 1 };
        let (id, lagged) = stream(&shared, follow, StreamTx::Replica(tx));
        drop(rx);
        deliver(&shared, id, Response::Replica(batch(5)));
        assert!(!lagged.load(Ordering::Acquire));
        assert_eq!(*shared.dropped.lock().unwrap(), [id]);
    }

    #[test]
    fn subscriptions_still_resume_after_their_last_event_and_ignore_replica_batches() {
        let shared = shared();
        let (tx, mut rx) = mpsc::channel(4);
        let subscribe = Request::Subscribe { from_seq: 1 };
        let (id, _) = stream(&shared, subscribe, StreamTx::Events(tx));
        deliver(&shared, id, Response::Events(vec![event(3), event(7)]));
        assert_eq!(rx.try_recv().unwrap(), Ok(vec![event(3), event(7)]));
        assert_eq!(
            pending(&shared, id),
            Some(Request::Subscribe { from_seq: 8 })
        );
        // An empty batch leaves the position as it was.
        deliver(&shared, id, Response::Events(vec![]));
        assert_eq!(rx.try_recv().unwrap(), Ok(vec![]));
        deliver(&shared, id, Response::Replica(batch(100)));
        assert!(rx.try_recv().is_err());
        assert_eq!(
            pending(&shared, id),
            Some(Request::Subscribe { from_seq: 8 })
        );
    }
}
