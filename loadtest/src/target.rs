//! The targets a run drives: the engine in this process, or a node over QUIC.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stile_engine::node::certs;
use stile_engine::{
    CheckinRequest, Engine, EngineConfig, Gate, MintRequest, Policy, PolicyId, SystemClock,
    MINT_BATCH_MAX,
};
use stile_protocol::client::{Client, ClientConfig, ClientError, ClientTls};
use stile_protocol::frame::MintSpec;
use stile_protocol::{CodeBytes, Outcome};

use crate::redis_target::Redis;
use crate::{Config, LoadError};

/// How long one check-in may take over the network before it counts as a timeout.
const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// The provider every load-test ticket and gate belongs to.
pub const PROVIDER: u16 = 1;

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// No answer in time.
    Timeout,
    /// Anything else.
    Other(String),
}

/// A target, shared by every worker.
#[derive(Clone)]
pub enum Target {
    /// The engine in this process.
    Inproc(Arc<Inproc>),
    /// A node over QUIC.
    Quic(Arc<Quic>),
    /// Redis with the check-in a user would script in Lua.
    Redis(Arc<Redis>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Inproc(_) => f.write_str("Target::Inproc"),
            Target::Quic(q) => write!(f, "Target::Quic({})", q.addr),
            Target::Redis(r) => write!(f, "Target::Redis({})", r.url),
        }
    }
}

/// The engine in this process, on a fresh data dir removed afterwards.
#[derive(Debug)]
pub struct Inproc {
    /// The engine.
    engine: Engine,
    /// The policy of the minted tickets.
    policy: PolicyId,
    /// Sync mode name.
    sync: &'static str,
    /// Scan ids.
    scan_id: AtomicU64,
    /// The data dir (deleted on drop).
    _dir: tempfile::TempDir,
}

/// A node: one gate connection per gate, and an admin connection for minting.
#[derive(Debug)]
pub struct Quic {
    /// The node.
    addr: SocketAddr,
    /// Gate `i + 1`'s client.
    gates: Vec<Client>,
    /// The admin client.
    admin: Client,
}

impl Target {
    /// Opens the target `config.target` names.
    pub async fn open(config: &Config) -> Result<Target, LoadError> {
        let err = |reason: String| LoadError::Target {
            target: config.target.clone(),
            reason,
        };
        if config.target.starts_with("redis://") {
            return Ok(Target::Redis(Arc::new(Redis::open(config).await?)));
        }
        if config.target == "inproc" {
            // Beside the working directory, not in /tmp: /tmp may be memory, and fsync free.
            let dir = tempfile::Builder::new()
                .prefix(".stile-loadtest-")
                .tempdir_in(&config.data)
                .or_else(|_| {
                    tempfile::Builder::new()
                        .prefix(".stile-loadtest-")
                        .tempdir_in(".")
                })
                .map_err(|e| err(format!("making a data dir: {e}")))?;
            let engine = Engine::open(
                dir.path(),
                EngineConfig {
                    sync: config.sync,
                    ..EngineConfig::default()
                },
                Arc::new(SystemClock),
            )
            .map_err(|e| err(e.to_string()))?;
            let policy = engine
                .add_policy(Policy::simple(PROVIDER))
                .map_err(|e| err(e.to_string()))?;
            return Ok(Target::Inproc(Arc::new(Inproc {
                engine,
                policy,
                sync: config.sync.name(),
                scan_id: AtomicU64::new(1),
                _dir: dir,
            })));
        }
        let Some(rest) = config.target.strip_prefix("quic://") else {
            return Err(LoadError::Usage(format!(
                "target {:?}: use inproc, quic://HOST:PORT or redis://HOST:PORT",
                config.target
            )));
        };
        let addr: SocketAddr = tokio::net::lookup_host(rest)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| err("not a host:port".into()))?;
        let host = rest
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']))
            .unwrap_or(rest);
        let tls = config.data.join("tls");
        let ca = tls.join(certs::CA_CERT);
        if !ca.exists() {
            return Err(err(format!(
                "no CA in {}: point --data at the node's data dir (stile up makes one)",
                tls.display()
            )));
        }
        let connect = |cert: std::path::PathBuf, inflight: u32| {
            let ca = ca.clone();
            let host = host.to_string();
            async move {
                let ctls = ClientTls::from_files(&ca, &cert, &certs::key_path_for(&cert))?;
                let mut c = ClientConfig::new(addr, ctls);
                c.server_name = host;
                c.inflight_max = inflight as usize;
                c.request_timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
                Client::connect(c).await
            }
        };
        let admin_cert = tls.join(certs::admin_cert_name("admin"));
        let admin = connect(admin_cert, 1024)
            .await
            .map_err(|e| err(format!("admin: {e}")))?;
        let mut gates = Vec::with_capacity(config.gates as usize);
        for g in 1..=config.gates {
            let cert = tls.join(certs::gate_cert_name(g));
            if !cert.exists() {
                certs::issue_gate(&tls, g, PROVIDER)
                    .map_err(|e| err(format!("issuing gate {g}: {e}")))?;
            }
            gates.push(
                connect(cert, config.inflight)
                    .await
                    .map_err(|e| err(format!("gate {g}: {e}")))?,
            );
        }
        Ok(Target::Quic(Arc::new(Quic { addr, gates, admin })))
    }

    /// Mints `n` single-entry tickets of provider 1, valid any time.
    pub async fn mint(&self, n: u32) -> Result<Vec<CodeBytes>, LoadError> {
        match self {
            Target::Inproc(t) => {
                let mut codes = Vec::with_capacity(n as usize);
                while codes.len() < n as usize {
                    let count = (n - codes.len() as u32).min(MINT_BATCH_MAX as u32);
                    let req = MintRequest {
                        policy: t.policy,
                        partition: 0,
                        count,
                    };
                    codes.extend(t.engine.mint(&req).map_err(|e| LoadError::Target {
                        target: "inproc".into(),
                        reason: e.to_string(),
                    })?);
                }
                Ok(codes)
            }
            Target::Quic(q) => {
                let spec = MintSpec::single_entry(PROVIDER, n);
                q.admin.mint(spec).await.map_err(|e| LoadError::Target {
                    target: format!("quic://{}", q.addr),
                    reason: format!("minting: {e}"),
                })
            }
            Target::Redis(r) => r.load(n).await,
        }
    }

    /// The target's sync mode, as it reports it.
    pub async fn sync_name(&self) -> String {
        match self {
            Target::Inproc(t) => t.sync.to_string(),
            Target::Quic(q) => match q.admin.stats().await {
                Ok(s) => stile_protocol::frame::sync_mode::name(s.sync_mode).to_string(),
                Err(_) => "unknown".to_string(),
            },
            Target::Redis(r) => r.sync.clone(),
        }
    }

    /// Concurrent workers per gate: in process one worker sends its N as one batch; over
    /// QUIC, N workers each keep one request in flight on the gate's connection.
    pub fn workers_per_gate(&self, inflight: u32) -> u32 {
        match self {
            Target::Inproc(_) => 1,
            Target::Quic(_) | Target::Redis(_) => inflight,
        }
    }

    /// Codes per call of one worker.
    pub fn batch_per_worker(&self, inflight: u32) -> usize {
        match self {
            Target::Inproc(_) => inflight as usize,
            Target::Quic(_) | Target::Redis(_) => 1,
        }
    }

    /// Checks `codes` in at gate `gate`.
    pub async fn checkin(&self, gate: u16, codes: &[CodeBytes]) -> Result<Vec<Outcome>, CallError> {
        match self {
            Target::Inproc(t) => {
                let reqs: Vec<CheckinRequest> = codes
                    .iter()
                    .map(|code| CheckinRequest {
                        gate: Gate::new(gate, PROVIDER),
                        scan_id: t.scan_id.fetch_add(1, Ordering::Relaxed),
                        code: *code,
                    })
                    .collect();
                let mut out = vec![Outcome::FORGED; reqs.len()];
                t.engine.checkin_batch(&reqs, &mut out).wait_async().await;
                Ok(out)
            }
            Target::Quic(q) => {
                let client = &q.gates[gate as usize - 1];
                let mut out = Vec::with_capacity(codes.len());
                for code in codes {
                    match client.checkin(code, client.next_scan_id()).await {
                        Ok(o) => out.push(o),
                        Err(ClientError::Timeout(_)) => return Err(CallError::Timeout),
                        Err(e) => return Err(CallError::Other(e.to_string())),
                    }
                }
                Ok(out)
            }
            Target::Redis(r) => r.checkin(gate, codes).await,
        }
    }

    /// Ends the run.
    pub async fn close(&self) {}
}
