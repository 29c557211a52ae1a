//! The obvious alternative, measured with the same gates and the same in-flight depth:
//! Redis holding one key per ticket and a Lua script that checks a ticket in (exists? set
//! it used if still valid; answer admitted, already_used or unknown). Redis cannot check a
//! code's signature, so a forged code is simply `unknown`. Rail tickets get the entry/exit
//! script a user would write for them (entries left, inside or not).
//!
//! Each gate is one TCP connection carrying up to N script calls back to back (Redis
//! answers a connection's commands in order), written and read by hand, so the client adds
//! as little as it can to Redis's own time.
//!
//! `redis+tls://HOST:PORT` is the same over TLS 1.3 with both sides authenticated by the
//! deployment's CA (`DATA/tls/ca.crt`), as a node's gates are: the server's certificate must
//! carry HOST, each gate presents its own certificate issued for the run, the admin
//! connection the admin's. It measures what authenticated, encrypted connections cost Redis.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use rand::RngCore;
use redis::aio::MultiplexedConnection;
use rustls::client::danger::ServerCertVerifier as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use stile_certs as certs;
use stile_protocol::{CodeBytes, Outcome, OutcomeKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::leftovers::{Server, TempTree};
use crate::link::{Answer, LinkError, LinkRx, LinkTx, NodeReading, TargetKind, PROVIDER};
use crate::plan::{Item, Kind};
use crate::{Config, LoadError};

/// A Redis target over TCP.
pub(crate) const SCHEME: &str = "redis://";
/// A Redis target over TLS 1.3, client certificates from the deployment's CA.
pub(crate) const TLS_SCHEME: &str = "redis+tls://";

/// The check-in a user would script: one round trip, atomic inside Redis.
const CHECKIN_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 'unknown' end
if v == 'valid' then
  redis.call('SET', KEYS[1], 'used:' .. ARGV[1])
  return 'admitted'
end
return 'already_used'
"#;
/// Entry and exit for rail tickets: the value is `LEFT:INSIDE`, entries left (`u`:
/// unlimited) and 1 while the holder is inside.
const ENTRY_EXIT_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 'unknown' end
local left, inside = string.match(v, '^(%w+):(%d)$')
if not left then
  if ARGV[2] == 'exit' then return 'not_inside' end
  if v == 'valid' then
    redis.call('SET', KEYS[1], 'used:' .. ARGV[1])
    return 'admitted'
  end
  return 'already_used'
end
if ARGV[2] == 'exit' then
  if inside ~= '1' then return 'not_inside' end
  redis.call('SET', KEYS[1], left .. ':0')
  return 'exited'
end
if inside == '1' or left == '0' then return 'already_used' end
if left ~= 'u' then left = tostring(tonumber(left) - 1) end
redis.call('SET', KEYS[1], left .. ':1')
return 'admitted'
"#;
/// The key that marks a database as a load test's, which a run may empty: one that holds
/// other keys and not this one is refused.
const MARK_KEY: &str = "stile-loadtest";
/// Keys written per pipeline while loading tickets.
const LOAD_CHUNK: usize = 10_000;
/// How long a spawned redis-server may take to accept connections.
const SPAWN_TIMEOUT_MS: u64 = 10_000;
/// How long a TLS handshake may take (a plain server on a `redis+tls://` port never ends
/// one).
const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// How long `redis-server` may take to say whether it knows TLS.
const TLS_PROBE_TIMEOUT_MS: u64 = 5_000;
/// Longest reply line accepted from Redis.
const REPLY_MAX: usize = 64 * 1024;
/// A spawned server's stdout and stderr, in its directory: what it said before exiting.
const SPAWN_LOG: &str = "redis.log";

/// Whether `target` names Redis, over TCP or TLS.
pub fn is_redis_target(target: &str) -> bool {
    target.starts_with(SCHEME) || target.starts_with(TLS_SCHEME)
}

/// A Redis target's `HOST:PORT` and whether it is TLS (`None`: not a Redis target).
fn parse_target(target: &str) -> Option<(&str, bool)> {
    let (rest, tls) = match target.strip_prefix(TLS_SCHEME) {
        Some(rest) => (rest, true),
        None => (target.strip_prefix(SCHEME)?, false),
    };
    Some((rest.trim_end_matches('/'), tls))
}

/// The host and port of `HOST:PORT` (`[V6]:PORT` too), the host without brackets.
fn host_port(rest: &str) -> Option<(&str, u16)> {
    let (host, port) = rest.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some((host, port.parse().ok()?))
}

/// Something a connection to Redis runs on: a TCP stream or a TLS stream over one.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for S {}

/// Redis: a connection for loading, and the scripts' digests.
pub struct Redis {
    /// The URL as given.
    pub url: String,
    /// The server's address.
    addr: SocketAddr,
    /// TLS (`redis+tls://`): the server's name, the CA, this run's gate certificates.
    tls: Option<Tls>,
    /// For loading tickets and reading the configuration.
    conn: MultiplexedConnection,
    /// SHA-1 of [`CHECKIN_LUA`].
    sha_checkin: String,
    /// SHA-1 of [`ENTRY_EXIT_LUA`].
    sha_entry_exit: String,
    /// Rail tickets were loaded: every call goes through the entry/exit script.
    rail: AtomicBool,
    /// `appendfsync …` as the server reports it.
    pub sync: String,
    /// The server, if this run started it.
    _spawned: Option<Server>,
}

/// What a `redis+tls://` target's connections need.
struct Tls {
    /// The name the server's certificate must carry: HOST as written, as for `quic://`.
    server_name: ServerName<'static>,
    /// The deployment's CA certificate file, the only root trusted.
    ca: PathBuf,
    /// The admin connection's configuration (the admin's certificate).
    admin: Arc<rustls::ClientConfig>,
    /// This run's gate certificates, issued fresh from the CA (removed on drop): never ones
    /// left in the data dir, which may name another provider or be revoked.
    gate_certs: TempTree,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("url", &self.url).finish()
    }
}

/// The sending half of a gate's connection.
pub(crate) struct RedisTx {
    /// The connection's writing half (TCP, or TLS over it).
    w: Box<dyn AsyncWrite + Send + Unpin>,
    buf: Vec<u8>,
    /// Ids of the calls written and not answered, oldest first.
    order: Arc<Mutex<VecDeque<u32>>>,
    gate: String,
    sha_checkin: String,
    sha_entry_exit: String,
    rail: bool,
}

/// The receiving half.
pub(crate) struct RedisRx {
    /// The connection's reading half.
    r: Box<dyn AsyncRead + Send + Unpin>,
    buf: BytesMut,
    order: Arc<Mutex<VecDeque<u32>>>,
}

/// What can be checked before any run: the URL; for TLS the CA and the admin's
/// certificate; for a spawned server that `redis-server` starts (and knows TLS, and the
/// node's certificate fits), and that its port is free.
pub(crate) fn precheck(config: &Config) -> Result<(), String> {
    let (rest, tls) = parse_target(&config.target).ok_or("not a Redis target")?;
    let (host, port) = host_port(rest).ok_or("not a host:port")?;
    if tls {
        crate::target::node_ca(config)?;
        crate::target::admin_identity(config)?;
    }
    if !config.spawn_redis {
        return Ok(());
    }
    redis_server_starts()?;
    if tls {
        spawn_tls(config, host)?;
        redis_knows_tls()?;
    }
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    port_is_free(addr)
}

impl Redis {
    /// Section `section` of `INFO` (`None`: no answer).
    async fn info(&self, section: &str) -> Option<String> {
        let mut conn = self.conn.clone();
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut conn)
            .await
            .ok()
    }

    /// Connects (starting the server first with `--spawn-redis`) and loads the scripts.
    pub async fn open(config: &Config) -> Result<Redis, LoadError> {
        let err = |reason: String| LoadError::Target {
            target: config.target.clone(),
            reason,
        };
        let (rest, tls) = parse_target(&config.target).ok_or_else(|| err("not Redis".into()))?;
        let addr: SocketAddr = tokio::net::lookup_host(rest)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| err("not a host:port".into()))?;
        let tls = match tls {
            true => Some(Tls::open(config, rest).map_err(err)?),
            false => None,
        };
        let mut spawned = if config.spawn_redis {
            let with = match &tls {
                Some(t) => Some(spawn_tls(config, &t.host()).map_err(err)?),
                None => None,
            };
            Some(spawn(addr, with.as_ref()).map_err(err)?)
        } else {
            None
        };
        let deadline = Instant::now() + Duration::from_millis(SPAWN_TIMEOUT_MS);
        let conn = loop {
            // A server that exited (its port taken after all) must not be mistaken for
            // whatever answers on the port.
            if let Some(status) = spawned.as_mut().and_then(Server::exited) {
                return Err(err(exited_at_once(status, spawned.as_ref())));
            }
            match admin_connection(addr, tls.as_ref()).await {
                Ok(c) if spawned.is_none() => break c,
                Ok(c) => {
                    // Connected: to the server this run started, unless it died meanwhile.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    match spawned.as_mut().and_then(Server::exited) {
                        Some(status) => return Err(err(exited_at_once(status, spawned.as_ref()))),
                        None => break c,
                    }
                }
                Err(e) if spawned.is_some() && Instant::now() < deadline => {
                    tracing::debug!(error = %e, "waiting for redis-server");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(err(format!("connecting: {e}"))),
            }
        };
        let sync = sync_of(&conn).await;
        let load = |lua: &'static str| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(lua)
                    .query_async::<String>(&mut conn)
                    .await
            }
        };
        let sha_checkin = load(CHECKIN_LUA)
            .await
            .map_err(|e| err(format!("loading the script: {e}")))?;
        let sha_entry_exit = load(ENTRY_EXIT_LUA)
            .await
            .map_err(|e| err(format!("loading the script: {e}")))?;
        Ok(Redis {
            url: config.target.clone(),
            addr,
            tls,
            conn,
            sha_checkin,
            sha_entry_exit,
            rail: AtomicBool::new(false),
            sync,
            _spawned: spawned,
        })
    }

    /// Writes `n` valid tickets of `kind` (random codes: Redis has no keys to sign with),
    /// emptying the database first if `first`.
    pub async fn load(&self, kind: Kind, n: u32, first: bool) -> Result<Vec<CodeBytes>, LoadError> {
        let value = match kind {
            Kind::Single => "valid",
            Kind::Journey => "1:0",
            Kind::DayPass => "u:0",
        };
        if kind != Kind::Single {
            self.rail.store(true, Ordering::Relaxed);
        }
        let mut rng = rand::thread_rng();
        let mut codes = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let mut b = [0u8; 20];
            b[0] = 1; // static code
            b[2..4].copy_from_slice(&PROVIDER.to_be_bytes());
            rng.fill_bytes(&mut b[6..]);
            codes.push(CodeBytes::from_slice(&b).expect("20 bytes of format 1"));
        }
        let mut c = self.conn.clone();
        if first {
            self.empty(&mut c).await?;
        }
        for chunk in codes.chunks(LOAD_CHUNK) {
            let mut pipe = redis::pipe();
            for code in chunk {
                pipe.set(key(code), value).ignore();
            }
            let _: () = pipe.query_async(&mut c).await.map_err(|e| self.err(e))?;
        }
        Ok(codes)
    }

    /// Empties the database for a run's tickets, and marks it as a load test's with
    /// [`MARK_KEY`]: only a database that is empty or marked so, since a Redis that this run
    /// did not start may hold someone's data.
    async fn empty(&self, c: &mut MultiplexedConnection) -> Result<(), LoadError> {
        let marked: bool = redis::cmd("EXISTS")
            .arg(MARK_KEY)
            .query_async(c)
            .await
            .map_err(|e| self.err(e))?;
        let keys: u64 = redis::cmd("DBSIZE")
            .query_async(c)
            .await
            .map_err(|e| self.err(e))?;
        if keys > 0 && !marked {
            return Err(LoadError::Target {
                target: self.url.clone(),
                reason: format!(
                    "its database holds {keys} keys, not a load test's (no key {MARK_KEY}), \
                     and a run empties it (FLUSHDB) before loading its tickets: name an \
                     empty database, or use --spawn-redis (keys that earlier load tests \
                     left: `redis-cli -h {} -p {}{} flushdb` removes them)",
                    self.addr.ip(),
                    self.addr.port(),
                    match self.tls {
                        Some(_) => " --tls --cacert CA --cert CERT --key KEY",
                        None => "",
                    }
                ),
            });
        }
        let _: () = redis::cmd("FLUSHDB")
            .query_async(c)
            .await
            .map_err(|e| self.err(e))?;
        redis::cmd("SET")
            .arg(MARK_KEY)
            .arg("1")
            .query_async(c)
            .await
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: redis::RedisError) -> LoadError {
        LoadError::Target {
            target: self.url.clone(),
            reason: e.to_string(),
        }
    }

    /// Opens gate `gate`'s connection (with TLS, presenting the gate's certificate).
    async fn open_link(&self, gate: u16, inflight: u32) -> Result<(RedisTx, RedisRx), LoadError> {
        let err = |reason: String| LoadError::Target {
            target: self.url.clone(),
            reason: format!("gate {gate}: {reason}"),
        };
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| err(format!("connecting: {e}")))?;
        let _ = tcp.set_nodelay(true);
        type Halves = (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        );
        let (r, w): Halves = match &self.tls {
            // Owned halves of the socket itself: no lock between them.
            None => {
                let (r, w) = tcp.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(tls) => {
                let config = tls.gate(gate).map_err(err)?;
                let stream = handshake(tcp, &tls.server_name, config)
                    .await
                    .map_err(err)?;
                let (r, w) = tokio::io::split(stream);
                (Box::new(r), Box::new(w))
            }
        };
        let order = Arc::new(Mutex::new(VecDeque::with_capacity(inflight as usize)));
        Ok((
            RedisTx {
                w,
                buf: Vec::with_capacity(128 * inflight as usize),
                order: order.clone(),
                gate: gate.to_string(),
                sha_checkin: self.sha_checkin.clone(),
                sha_entry_exit: self.sha_entry_exit.clone(),
                rail: self.rail.load(Ordering::Relaxed),
            },
            RedisRx {
                r,
                buf: BytesMut::with_capacity(64 * 1024),
                order,
            },
        ))
    }
}

/// `appendfsync …` as the server reports it (`no aof`, or `unknown` if it does not say).
async fn sync_of(conn: &MultiplexedConnection) -> String {
    let get = |name: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async::<Vec<String>>(&mut conn)
                .await
                .unwrap_or_default()
        }
    };
    let aof = get("appendonly").await;
    let fsync = get("appendfsync").await;
    match (aof.get(1).map(String::as_str), fsync.get(1)) {
        (Some("yes"), Some(f)) => format!("appendfsync {f}"),
        (Some(_), _) => "no aof".to_string(),
        _ => "unknown".to_string(),
    }
}

/// The admin connection: the `redis` crate's multiplexed connection, on a stream this module
/// opens. Over TLS this is the same rustls configuration the gates use (TLS 1.3 only, the
/// deployment's CA the only root, a client certificate), with no TLS feature of the `redis`
/// crate: that one would bring a second crypto provider and a configuration of its own
/// (any TLS version, roots and client keys in its own types) to keep in step with ours.
async fn admin_connection(
    addr: SocketAddr,
    tls: Option<&Tls>,
) -> Result<MultiplexedConnection, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let stream: Box<dyn Stream> = match tls {
        None => Box::new(tcp),
        Some(tls) => Box::new(handshake(tcp, &tls.server_name, tls.admin.clone()).await?),
    };
    let info = redis::RedisConnectionInfo::default();
    let (conn, driver) = MultiplexedConnection::new(&info, stream)
        .await
        .map_err(|e| e.to_string())?;
    // The driver reads and writes the connection; it ends when every handle is dropped.
    tokio::spawn(driver);
    Ok(conn)
}

/// A TLS 1.3 handshake on `tcp`, bounded in time.
async fn handshake(
    tcp: TcpStream,
    server_name: &ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let connecting = tokio_rustls::TlsConnector::from(config).connect(server_name.clone(), tcp);
    match tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), connecting).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
        Err(_) => Err(format!(
            "TLS handshake: no answer within {HANDSHAKE_TIMEOUT_MS} ms (is this port TLS?)"
        )),
    }
}

impl Tls {
    /// The CA and the admin's certificate from the data dir (or `--admin-cert`), and a
    /// certificate for every gate of the run, issued from the CA into a directory of its own.
    fn open(config: &Config, rest: &str) -> Result<Tls, String> {
        let (host, _) = host_port(rest).ok_or("not a host:port")?;
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} cannot be a certificate's name: {e}"))?;
        let (tls_dir, ca) = crate::target::node_ca(config)?;
        let (admin_cert, admin_key) = crate::target::admin_identity(config)?;
        let admin = client_config(&ca, &admin_cert, &admin_key)
            .map_err(|e| format!("admin certificate: {e}"))?;
        let gate_certs = crate::target::issue_gate_certs(config, &tls_dir)?;
        Ok(Tls {
            server_name,
            ca,
            admin,
            gate_certs,
        })
    }

    /// The host the server's certificate must name.
    fn host(&self) -> String {
        self.server_name.to_str().into_owned()
    }

    /// Gate `gate`'s configuration: its certificate of this run.
    fn gate(&self, gate: u16) -> Result<Arc<rustls::ClientConfig>, String> {
        let cert = self.gate_certs.path().join(certs::gate_cert_name(gate));
        client_config(&self.ca, &cert, &certs::key_path_for(&cert))
    }
}

/// The certificates of the CA file `ca`, as the only roots trusted.
fn roots_of(ca: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("{}: {e}", ca.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in it", ca.display()));
    }
    Ok(roots)
}

/// The gates' TLS configuration (TLS 1.3, the CA `ca` the only root) presenting `cert`
/// (PEM, with its key `key`), without the node's ALPN.
fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    stile_protocol::client::ClientTls::from_files(ca, cert, key)
        .map(|t| t.tcp_config())
        .map_err(|e| e.to_string())
}

impl TargetKind for Redis {
    type Tx = RedisTx;
    type Rx = RedisRx;

    async fn mint_kind(
        &self,
        kind: Kind,
        n: u32,
        first: bool,
    ) -> Result<Vec<CodeBytes>, LoadError> {
        self.load(kind, n, first).await
    }

    async fn sync_name(&self) -> String {
        self.sync.clone()
    }

    /// Redis says nothing of its own of a run.
    async fn reading(&self) -> Option<NodeReading> {
        None
    }

    /// Redis's own CPU time, from `INFO cpu` (`used_cpu_sys` + `used_cpu_user`, seconds).
    async fn server_cpu_us(&self) -> Option<u64> {
        cpu_us_of_info(&self.info("cpu").await?)
    }

    /// Redis's resident memory, from `INFO memory` (`used_memory_rss`).
    async fn server_memory_bytes(&self) -> Option<u64> {
        info_field(&self.info("memory").await?, "used_memory_rss")
    }

    async fn link(&self, gate: u16, inflight: u32) -> Result<(RedisTx, RedisRx), LoadError> {
        self.open_link(gate, inflight).await
    }
}

impl LinkTx for RedisTx {
    /// Writes one `EVALSHA` per request, all in one write.
    async fn send(&mut self, reqs: &[(u32, Item)]) -> Result<(), LinkError> {
        self.buf.clear();
        for (_, item) in reqs {
            let key = key(&item.code);
            if self.rail || item.exit {
                let op = if item.exit { "exit" } else { "entry" };
                command(
                    &mut self.buf,
                    &["EVALSHA", &self.sha_entry_exit, "1", &key, &self.gate, op],
                );
            } else {
                command(
                    &mut self.buf,
                    &["EVALSHA", &self.sha_checkin, "1", &key, &self.gate],
                );
            }
        }
        self.order
            .lock()
            .expect("not poisoned")
            .extend(reqs.iter().map(|(id, _)| *id));
        self.w
            .write_all(&self.buf)
            .await
            .map_err(|e| LinkError(format!("writing: {e}")))?;
        // TLS may hold the last records back when the socket was full; TCP has nothing to
        // flush.
        self.w
            .flush()
            .await
            .map_err(|e| LinkError(format!("writing: {e}")))
    }
}

impl LinkRx for RedisRx {
    /// Reads replies; the n-th answers the n-th call written. Cancel-safe.
    async fn recv(&mut self, out: &mut Vec<Answer>) -> Result<(), LinkError> {
        loop {
            while let Some((len, reply)) = parse_reply(&self.buf)? {
                let id = self
                    .order
                    .lock()
                    .expect("not poisoned")
                    .pop_front()
                    .ok_or_else(|| LinkError("a reply to no request".into()))?;
                out.push((id, reply));
                self.buf.advance(len);
            }
            if !out.is_empty() {
                return Ok(());
            }
            if self.buf.len() > REPLY_MAX {
                return Err(LinkError("a reply longer than 64 KiB".into()));
            }
            match self.r.read_buf(&mut self.buf).await {
                Ok(0) => return Err(LinkError("redis closed the connection".into())),
                Ok(_) => {}
                Err(e) => return Err(LinkError(format!("reading: {e}"))),
            }
        }
    }
}

/// Field `name` of an `INFO` answer (`name:value` lines), parsed.
fn info_field<T: std::str::FromStr>(info: &str, name: &str) -> Option<T> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))?
        .trim()
        .parse()
        .ok()
}

/// The CPU time an `INFO cpu` answer reports, microseconds.
fn cpu_us_of_info(info: &str) -> Option<u64> {
    let s = info_field::<f64>(info, "used_cpu_sys")? + info_field::<f64>(info, "used_cpu_user")?;
    Some((s * 1e6).round() as u64)
}

/// One RESP command.
fn command(out: &mut Vec<u8>, args: &[&str]) {
    use std::io::Write;
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n{a}\r\n", a.len());
    }
}

/// The first complete reply in `buf`: its length and the outcome it names.
/// A reply parsed: its length in bytes, and the outcome it names or the error it carries.
type Reply = (usize, Result<Outcome, String>);

fn parse_reply(buf: &[u8]) -> Result<Option<Reply>, LinkError> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[1..eol]);
    let (len, text) = match buf.first() {
        Some(b'+') | Some(b'-') | Some(b':') => (eol + 2, line.to_string()),
        Some(b'$') => {
            let n: usize = line
                .parse()
                .map_err(|_| LinkError(format!("bad bulk length {line:?}")))?;
            let end = eol + 2 + n + 2;
            if buf.len() < end {
                return Ok(None);
            }
            (
                end,
                String::from_utf8_lossy(&buf[eol + 2..eol + 2 + n]).to_string(),
            )
        }
        _ => return Err(LinkError(format!("unexpected reply {line:?}"))),
    };
    let answer = if buf[0] == b'-' {
        Err(text)
    } else {
        match text.as_str() {
            "admitted" => Ok(Outcome::bare(OutcomeKind::Admitted)),
            "already_used" => Ok(Outcome::bare(OutcomeKind::AlreadyUsed)),
            "exited" => Ok(Outcome::bare(OutcomeKind::Exited)),
            "not_inside" => Ok(Outcome::bare(OutcomeKind::NotInside)),
            "unknown" => Ok(Outcome::bare(OutcomeKind::Unknown)),
            other => Err(format!("unexpected answer {other:?}")),
        }
    };
    Ok(Some((len, answer)))
}

fn key(code: &CodeBytes) -> String {
    format!("t:{}", code.to_text().as_str())
}

/// `redis-server` starts (`--version`).
fn redis_server_starts() -> Result<(), String> {
    match Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("redis-server --version failed ({s})")),
        Err(e) => Err(format!(
            "starting redis-server (is it on PATH? apt-get install redis-server): {e}"
        )),
    }
}

/// Whether `redis-server` was built with TLS: given no port to listen on it exits at once,
/// having read `--tls-port`, which a build without TLS refuses as a bad directive. A probe
/// that says neither (it runs on, or cannot be read) is left for the spawn to tell.
fn redis_knows_tls() -> Result<(), String> {
    let mut child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", "0", "--save", ""])
        .args(["--appendonly", "no", "--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting redis-server: {e}"))?;
    let deadline = Instant::now() + Duration::from_millis(TLS_PROBE_TIMEOUT_MS);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Ok(out) = child.wait_with_output() else {
        return Ok(());
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match said.contains("Bad directive") && said.contains("tls-port") {
        true => Err(NO_TLS.to_string()),
        false => Ok(()),
    }
}

/// What a `redis-server` without TLS is told.
const NO_TLS: &str = "this redis-server was built without TLS (it refuses --tls-port): \
                      install one built with BUILD_TLS=yes (Debian's and Ubuntu's are), or \
                      use a redis:// target";

/// A server already on `addr` would answer in place of the one this run starts.
fn port_is_free(addr: SocketAddr) -> Result<(), String> {
    let port = addr.port();
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Err(format!(
            "--spawn-redis starts Redis on this machine, and {} is not one of its addresses \
             ({e}): name 127.0.0.1 in the URL",
            addr.ip()
        )),
        Err(e) => Err(format!(
            "--spawn-redis: port {port} is taken ({e}): stop what listens there, or name \
             another port in the URL"
        )),
    }
}

/// A spawned server's TLS: the node's certificate and key and the CA, absolute (the server
/// works in a directory of its own).
#[derive(Debug)]
struct SpawnTls {
    /// `DATA/tls/node.crt`.
    cert: PathBuf,
    /// `DATA/tls/node.key`.
    key: PathBuf,
    /// `DATA/tls/ca.crt`, which the clients' certificates must chain to.
    ca: PathBuf,
}

/// The files a spawned TLS server needs, checked: the node's certificate chains to the CA
/// and carries `host`, the name the clients verify.
fn spawn_tls(config: &Config, host: &str) -> Result<SpawnTls, String> {
    let (tls_dir, ca) = crate::target::node_ca(config)?;
    let absolute = |p: PathBuf| {
        std::fs::canonicalize(&p).map_err(|e| {
            format!(
                "--spawn-redis with TLS serves the node's certificate and key from {}: {}: {e}",
                tls_dir.display(),
                p.display()
            )
        })
    };
    let cert = absolute(tls_dir.join(certs::NODE_CERT))?;
    let key = absolute(tls_dir.join(certs::NODE_KEY))?;
    let ca = absolute(ca)?;
    node_cert_fits(&cert, &ca, host)?;
    Ok(SpawnTls { cert, key, ca })
}

/// Whether the certificate `cert` chains to the CA `ca`, is valid now and names `host`.
fn node_cert_fits(cert: &Path, ca: &Path, host: &str) -> Result<(), String> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} cannot be a certificate's name: {e}"))?;
    let leaf =
        CertificateDer::from_pem_file(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots_of(ca)?),
        provider,
    )
    .build()
    .map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
        .map(drop)
        .map_err(|e| {
            format!(
                "{} is not a certificate for {host} ({e}): name in the URL a host it \
                 carries, or issue one for {host} (`stile certs issue-node --san {host}`, \
                 node.crt and node.key moved aside first)",
                cert.display()
            )
        })
}

/// Why a spawned server stopped at once, with the last lines it said.
fn exited_at_once(status: std::process::ExitStatus, server: Option<&Server>) -> String {
    let said = server
        .and_then(Server::dir)
        .and_then(|d| std::fs::read_to_string(d.join(SPAWN_LOG)).ok())
        .unwrap_or_default();
    why_exited(&status.to_string(), &said)
}

/// What to say of a server that exited with `status` after saying `said` (its log).
fn why_exited(status: &str, said: &str) -> String {
    /// Lines of its log repeated.
    const TAIL_LINES: usize = 3;
    let mut out = format!("redis-server exited at once ({status})");
    if said.contains("Bad directive") && said.contains("tls-") {
        out += &format!(": {NO_TLS}");
    }
    let lines: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    if !tail.is_empty() {
        out += &format!("; it said: {}", tail.join(" / "));
    }
    out
}

/// Starts redis-server on `addr`, where the run's clients connect, with the AOF synced on
/// every write; with `tls`, on that port TLS only, every client to present a certificate
/// from the CA.
fn spawn(addr: SocketAddr, tls: Option<&SpawnTls>) -> Result<Server, String> {
    port_is_free(addr)?;
    let port = addr.port();
    let dir = TempTree::new_in(&[Path::new(".")], ".stile-redis-")
        .map_err(|e| format!("making a directory for redis-server: {e}"))?;
    let log = std::fs::File::create(dir.path().join(SPAWN_LOG))
        .map_err(|e| format!("making redis-server's log: {e}"))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("making redis-server's log: {e}"))?;
    let mut command = Command::new("redis-server");
    match tls {
        None => command.args(["--port", &port.to_string()]),
        Some(t) => command
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&t.cert)
            .arg("--tls-key-file")
            .arg(&t.key)
            .arg("--tls-ca-cert-file")
            .arg(&t.ca)
            .args(["--tls-auth-clients", "yes"]),
    };
    command
        .arg("--bind")
        .arg(addr.ip().to_string())
        .args(["--save", ""])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(log)
        .stderr(log_err)
        // A group of its own: a terminal's Ctrl-C reaches the tester, which ends the run
        // and then stops this server, instead of the server dying under the run.
        .process_group(0);
    let parent = std::process::id();
    let owner = dir.owner_fd();
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl,
    // getppid and fcntl, which are async-signal-safe. The server is killed when the thread that
    // started it ends, so a tester killed outright leaves no server behind: that is the
    // thread that awaits the run (`block_on`, or a runtime's worker), which outlives the
    // run (never start one from `spawn_blocking`, whose idle threads end).
    unsafe {
        command.pre_exec(move || {
            use rustix::process::{getppid, set_parent_process_death_signal, Signal};
            set_parent_process_death_signal(Some(Signal::KILL))?;
            // The tester may have died before the line above. (No allocation here: another
            // thread may have held the allocator's lock at the fork.)
            if getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent) {
                return Err(std::io::Error::from(rustix::io::Errno::SRCH));
            }
            // The server keeps its directory's owner lock too (the descriptor survives the
            // exec), so the directory counts as in use until both processes are gone.
            if let Some(fd) = owner {
                // SAFETY: `fd` is the directory owner's descriptor, open in this child.
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| {
        format!("starting redis-server (is it on PATH? apt-get install redis-server): {e}")
    })?;
    Ok(Server::new(child, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        let buf = b"$8\r\nadmitted\r\n$12\r\nalready_used\r\n-ERR boom\r\n$4\r\nexi";
        let (a, o) = parse_reply(buf).expect("ok").expect("whole");
        assert_eq!(a, 14);
        assert_eq!(o.expect("outcome").kind, OutcomeKind::Admitted);
        let (b, o) = parse_reply(&buf[a..]).expect("ok").expect("whole");
        assert_eq!(o.expect("outcome").kind, OutcomeKind::AlreadyUsed);
        let (c, o) = parse_reply(&buf[a + b..]).expect("ok").expect("whole");
        assert_eq!(o, Err("ERR boom".to_string()));
        assert!(parse_reply(&buf[a + b + c..]).expect("ok").is_none());
        assert!(parse_reply(b"?what\r\n").is_err());
    }

    #[test]
    fn cpu_time_is_read_from_info() {
        let info = "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:0.500001\r\n\
                    used_cpu_sys_children:9.0\r\n";
        assert_eq!(cpu_us_of_info(info), Some(1_750_001));
        assert_eq!(cpu_us_of_info("# CPU\r\n"), None);
    }

    #[test]
    fn redis_targets_parse_with_and_without_tls() {
        assert_eq!(
            parse_target("redis://127.0.0.1:6390/"),
            Some(("127.0.0.1:6390", false))
        );
        assert_eq!(
            parse_target("redis+tls://localhost:6391"),
            Some(("localhost:6391", true))
        );
        assert_eq!(parse_target("rediss://h:1"), None);
        assert!(is_redis_target("redis+tls://h:1") && !is_redis_target("quic://h:1"));
        assert_eq!(host_port("[::1]:7"), Some(("::1", 7)));
        assert_eq!(host_port("localhost"), None);
        assert_eq!(host_port(":7"), None);
    }

    /// A spawned TLS server's certificate must carry the name the clients verify: caught
    /// before the server starts, with what to do.
    #[test]
    fn a_node_certificate_for_another_host_is_refused_before_spawning() {
        let dir = tempfile::tempdir().expect("temp dir");
        certs::init(dir.path()).expect("CA");
        certs::issue_node(dir.path(), &["10.9.8.7".into(), "node.example".into()])
            .expect("node certificate");
        let (cert, ca) = (
            dir.path().join(certs::NODE_CERT),
            dir.path().join(certs::CA_CERT),
        );
        assert_eq!(node_cert_fits(&cert, &ca, "10.9.8.7"), Ok(()));
        assert_eq!(node_cert_fits(&cert, &ca, "node.example"), Ok(()));
        let e = node_cert_fits(&cert, &ca, "127.0.0.1").expect_err("not for 127.0.0.1");
        assert!(e.contains("is not a certificate for 127.0.0.1"), "{e}");
        assert!(e.contains("stile certs issue-node --san 127.0.0.1"), "{e}");
        // Nor is one of another CA.
        let other = tempfile::tempdir().expect("temp dir");
        certs::init(other.path()).expect("CA");
        let e = node_cert_fits(&cert, &other.path().join(certs::CA_CERT), "10.9.8.7")
            .expect_err("another CA");
        assert!(e.contains("is not a certificate for 10.9.8.7"), "{e}");
    }

    #[test]
    fn a_redis_server_without_tls_is_named_as_such() {
        let said = "\n*** FATAL CONFIG FILE ERROR (Redis 7.0.15) ***\nReading the configuration \
                    file, at line 2\n>>> 'tls-port \"6390\"'\nBad directive or wrong number of \
                    arguments\n";
        let why = why_exited("exit status: 1", said);
        assert!(why.contains("built without TLS"), "{why}");
        assert!(
            why.ends_with(
                "it said: Reading the configuration file, at line 2 / >>> \
             'tls-port \"6390\"' / Bad directive or wrong number of arguments"
            ),
            "{why}"
        );
        let why = why_exited("exit status: 1", "# Failed to configure TLS\n");
        assert!(
            !why.contains("without TLS") && why.contains("Failed to configure"),
            "{why}"
        );
    }

    #[test]
    fn commands_are_resp_arrays() {
        let mut out = Vec::new();
        command(&mut out, &["EVALSHA", "ab", "1", "t:X"]);
        assert_eq!(
            out,
            b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$3\r\nt:X\r\n"
        );
    }
}
