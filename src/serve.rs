//! `stile up` and `stile node`: open the data dir (recovery), then serve QUIC until SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use stile_certs as certs;
use stile_engine::Clock;
use stile_engine::{Engine, EngineConfig, SyncMode, SystemClock};
use stile_node::{Node, NodeConfig};

/// `--sync`: when the log syncs and when answers go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncArg {
    /// fdatasync every group; answer only once durable.
    Always,
    /// fdatasync every 10 ms; answer at once.
    Batch,
    /// Never sync; answer at once.
    None,
}

impl From<SyncArg> for SyncMode {
    fn from(arg: SyncArg) -> Self {
        match arg {
            SyncArg::Always => SyncMode::Always,
            SyncArg::Batch => SyncMode::Batch {
                interval_ms: stile_engine::wal::BATCH_INTERVAL_DEFAULT_MS,
            },
            SyncArg::None => SyncMode::None,
        }
    }
}

/// How often the node snapshots: `off`, or a duration of at least a second (`30s`, `5m`).
#[derive(Debug, Clone, Copy)]
struct SnapshotEvery(Option<std::time::Duration>);

fn parse_snapshot_every(s: &str) -> Result<SnapshotEvery, String> {
    if s == "off" {
        return Ok(SnapshotEvery(None));
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (or off)"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("{s:?}: at least 1s (or off)"));
    }
    Ok(SnapshotEvery(Some(d)))
}

/// Default `--log-segment-kib`: the engine's segment size.
const SEGMENT_KIB_DEFAULT: u64 = stile_engine::wal::segment::SEGMENT_MAX_BYTES >> 10;

/// Options `stile up` and `stile node` share.
#[derive(Debug, Clone, Copy, clap::Args)]
struct NodeTuning {
    /// Forged or unknown codes a gate may present a second (bursts of twice that) before
    /// the node answers it rate_limited for a cooldown. Raise it for load tests of forged
    /// codes.
    #[arg(long, value_name = "PER_S", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    gate_budget: u32,
    /// How often the node snapshots its state (if the log moved), so that a restart replays
    /// less log and old segments are removed: a duration of at least 1s, or off.
    #[arg(long, value_name = "EVERY", default_value = "5m", value_parser = parse_snapshot_every)]
    snapshot_every: SnapshotEvery,
    /// Log segments (64 MiB each) kept written with zeros ahead of need, so that a burst of
    /// check-ins syncs records over zeros: no file growth, and no zeros written beside it.
    /// An idle node prepares them at the disk's speed, a busy one slowly; a stopped one keeps
    /// them for its next start. They are also what a node on a full disk still logs into
    /// before it refuses changes. 1 to 64.
    #[arg(long, value_name = "SEGMENTS", default_value_t = stile_engine::wal::RUNWAY_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=i64::from(stile_engine::wal::RUNWAY_MAX)))]
    log_runway: u32,
    /// Size of a log segment, KiB (default 65536: 64 MiB), and with it of each prepared
    /// one. Smaller segments keep a smaller runway on a small disk; each segment switch costs
    /// a few syncs. 64 to 1048576.
    #[arg(long, value_name = "KIB", default_value_t = SEGMENT_KIB_DEFAULT, value_parser = clap::value_parser!(u64).range(64..=1 << 20))]
    log_segment_kib: u64,
    /// Start even though the newest time in the log or snapshot is more than five minutes
    /// ahead of this machine's clock: only when you know the log's times came from a clock
    /// that was ahead (the node's time then starts at the clock's). Without it such a start
    /// is refused, since a clock that is behind would admit tickets again.
    #[arg(long)]
    accept_clock_behind_log: bool,
}

/// Arguments of `stile up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Data directory (made if new, with dev certificates under DATA/tls).
    #[arg(long, default_value = crate::DATA_DEFAULT)]
    data: PathBuf,
    /// QUIC address to listen on, for gates and the gateway (port 0: any free port).
    #[arg(long, visible_alias = "quic", default_value = crate::QUIC_DEFAULT)]
    listen: SocketAddr,
    /// When the log syncs: always (answer after fdatasync), batch (every 10 ms), none.
    #[arg(long, value_enum, default_value_t = SyncArg::Always)]
    sync: SyncArg,
    /// Address of the HTTP gateway (booking API, e-ticket pages).
    #[arg(long, default_value = crate::gateway_cmd::HTTP_DEFAULT)]
    http: SocketAddr,
    /// HTTPS for the gateway.
    #[command(flatten)]
    https: crate::gateway_cmd::GatewayOptions,
    /// Also create a sample event of provider 1, valid now, book three tickets and print
    /// their e-ticket page URLs.
    #[arg(long)]
    demo: bool,
    /// Serve the node's Prometheus metrics at http://ADDR/metrics (off unless given).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// How the node guards gates and keeps its data.
    #[command(flatten)]
    tuning: NodeTuning,
}

/// What `stile up` runs beside the node.
struct UpGateway {
    data: PathBuf,
    http: SocketAddr,
    https: crate::gateway_cmd::GatewayOptions,
    demo: bool,
}

/// Arguments of `stile node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Data directory.
    #[arg(long)]
    data: PathBuf,
    /// QUIC address to listen on, for gates and the gateway (port 0: any free port,
    /// printed at start).
    #[arg(long, visible_alias = "quic")]
    listen: SocketAddr,
    /// When the log syncs: always (answer after fdatasync), batch (every 10 ms), none.
    #[arg(long, value_enum, default_value_t = SyncArg::Always)]
    sync: SyncArg,
    /// Certificate directory (default: DATA/tls).
    #[arg(long)]
    tls: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free port, printed at
    /// start; off unless given).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// How the node guards gates and keeps its data.
    #[command(flatten)]
    tuning: NodeTuning,
    /// This node's name in its shard: it serves with, and follows a primary with, the
    /// certificate `node-NAME.crt` of its certificate directory (`stile certs issue-node
    /// --name NAME`).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Run as a standby of the primary at ADDR (needs --name): seed an empty data dir from
    /// its snapshot, then follow its log and answer gates `not_leader`.
    #[arg(long, value_name = "ADDR", requires = "name")]
    standby_of: Option<SocketAddr>,
    /// How long answers wait for a synchronous standby that does not acknowledge before
    /// this node answers without it.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = humantime::parse_duration)]
    standby_timeout: std::time::Duration,
    /// etcd endpoints (comma-separated): the node joins shard --shard of cluster --cluster,
    /// leading it or following its leader as etcd decides (needs --name).
    #[arg(long, value_name = "URL[,URL…]", requires_all = ["name", "cluster", "shard"], conflicts_with = "standby_of")]
    etcd: Option<String>,
    /// The cluster's name in etcd.
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// The shard this node belongs to.
    #[arg(long, value_name = "ID")]
    shard: Option<String>,
    /// Where gates and the shard's other nodes reach this node (default: --listen, which
    /// then needs a host and a port).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// The leader's lease in etcd: a leader that cannot renew it stops answering alone
    /// within it.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    lease: std::time::Duration,
}

/// How a node takes part in its shard.
pub(crate) struct Shard {
    /// Its name (`--name`), which picks its certificate.
    name: Option<String>,
    /// The primary it follows, as a standby.
    standby_of: Option<SocketAddr>,
    /// `--standby-timeout`.
    standby_timeout: std::time::Duration,
    /// `--etcd` and the rest: the shard on etcd.
    etcd: Option<EtcdShard>,
}

/// A shard on etcd, as the command line names it.
pub(crate) struct EtcdShard {
    /// Endpoints.
    endpoints: Vec<String>,
    /// Cluster name.
    cluster: String,
    /// Shard id.
    shard: String,
    /// Where this node is reached.
    advertise: String,
    /// The lease's time to live.
    lease: std::time::Duration,
}

/// Runs `stile up`.
pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("info");
    // Before anything is made: certificates dated by a wrong clock fail later, and
    // misleadingly.
    stile_engine::check_clock(SystemClock.now_unix_s())?;
    let tls = args.data.join("tls");
    let made = if tls.join(certs::CA_CERT).exists() {
        false
    } else {
        certs::make_dev(&tls)?;
        true
    };
    let data = args.data.display().to_string();
    let sync = SyncMode::from(args.sync);
    // Friendly text on stdout, logs on stderr, so neither breaks into the other's lines.
    let started = move |addr: SocketAddr| {
        crate::say!(
            "stile up: node on quic://{addr}, data in {data}, sync {}",
            sync.name()
        );
        if made {
            crate::say!(
                "  made a dev CA and certificates in {data}/tls: node (localhost, 127.0.0.1, \
                 ::1), admin, gate 1 of provider 1"
            );
        }
    };
    let gateway = UpGateway {
        data: args.data.clone(),
        http: args.http,
        https: args.https.clone(),
        demo: args.demo,
    };
    let listen = Listen {
        quic: args.listen,
        metrics: args.metrics,
        tuning: args.tuning,
    };
    let shard = Shard {
        name: None,
        standby_of: None,
        standby_timeout: std::time::Duration::from_millis(200),
        etcd: None,
    };
    run_node(&args.data, tls, listen, sync, started, Some(gateway), shard)
}

/// Runs `stile node`.
pub fn node(args: NodeArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("info");
    stile_engine::check_clock(SystemClock.now_unix_s())?;
    let tls = args.tls.unwrap_or_else(|| args.data.join("tls"));
    if !tls.join(certs::CA_CERT).exists() {
        anyhow::bail!(
            "no certificates in {}: run `stile certs init`, `stile certs issue-node --san NAME` \
             and issue gate and admin certificates first (or use `stile up`, which makes dev \
             certificates)",
            tls.display()
        );
    }
    if let Some(name) = &args.name {
        let cert = tls.join(certs::node_cert_name(name));
        if !cert.exists() {
            anyhow::bail!(
                "no certificate {} for node {name}: run `stile certs issue-node --san ADDR \
                 --name {name}`",
                cert.display()
            );
        }
    }
    let data = args.data.display().to_string();
    let sync = SyncMode::from(args.sync);
    let listen = Listen {
        quic: args.listen,
        metrics: args.metrics,
        tuning: args.tuning,
    };
    let etcd = match args.etcd {
        Some(endpoints) => {
            let advertise = match args.advertise {
                Some(a) => a,
                None if args.listen.port() != 0 && !args.listen.ip().is_unspecified() => {
                    args.listen.to_string()
                }
                None => anyhow::bail!(
                    "--etcd needs an address the shard's nodes and gates reach this node at: \
                     give --advertise HOST:PORT (or --listen with a host and a port)"
                ),
            };
            if args.lease < std::time::Duration::from_secs(1) {
                anyhow::bail!("--lease must be at least 1s");
            }
            Some(EtcdShard {
                endpoints: endpoints.split(',').map(|e| e.trim().to_string()).collect(),
                cluster: args.cluster.expect("clap requires it"),
                shard: args.shard.expect("clap requires it"),
                advertise,
                lease: args.lease,
            })
        }
        None => None,
    };
    let shard = Shard {
        name: args.name,
        standby_of: args.standby_of,
        standby_timeout: args.standby_timeout,
        etcd,
    };
    run_node(
        &args.data,
        tls,
        listen,
        sync,
        move |addr| {
            // Scripts and tests read the bound address from this line.
            crate::say!("stile node listening on quic://{addr}");
            crate::say!("  data in {data}, sync {}", sync.name());
        },
        None,
        shard,
    )
}

/// Where a node listens.
struct Listen {
    /// QUIC, for gates and the gateway.
    quic: SocketAddr,
    /// Plain HTTP for `GET /metrics`, if wanted.
    metrics: Option<SocketAddr>,
    /// Gate budget, snapshot interval and log runway.
    tuning: NodeTuning,
}

fn run_node(
    data: &Path,
    tls: PathBuf,
    listen: Listen,
    sync: SyncMode,
    started: impl FnOnce(SocketAddr),
    gateway: Option<UpGateway>,
    shard: Shard,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stile-node")
        .build()
        .context("starting the async runtime")?;
    let peer = match &shard.name {
        Some(name) => {
            let cert = tls.join(certs::node_cert_name(name));
            let client_tls = stile_protocol::client::ClientTls::from_files(
                &tls.join(certs::CA_CERT),
                &cert,
                &certs::key_path_for(&cert),
            )?;
            let peer: Peer = Arc::new(move |addr| {
                stile_protocol::client::ClientConfig::new(addr, client_tls.clone())
            });
            Some(peer)
        }
        None => None,
    };
    if shard.name.is_some() {
        stile_node::standby::finish_set_aside(data)
            .with_context(|| format!("finishing the set-aside of {}", data.display()))?;
        stile_node::standby::check_epoch_files(data).map_err(anyhow::Error::msg)?;
    }
    let primary = match (&shard.standby_of, &peer) {
        (Some(addr), Some(peer)) => {
            let config = peer(*addr);
            runtime.block_on(seed_if_new(data, &config))?;
            Some(config)
        }
        _ => None,
    };
    // On etcd: the lease, this node's place in its shard, a seed from the leader if new.
    let cluster = match (&shard.etcd, &shard.name, &peer) {
        (Some(e), Some(name), Some(peer)) => {
            let etcd = stile_cluster::Etcd::new(&e.endpoints, std::time::Duration::from_secs(2))?;
            let cfg = stile_node::cluster::ClusterConfig {
                etcd: Arc::new(etcd),
                keys: stile_cluster::ShardKeys::new(&e.cluster, &e.shard)?,
                name: name.clone(),
                advertise: e.advertise.clone(),
                lease_ttl: e.lease,
                data: data.to_path_buf(),
                peer: peer.clone(),
            };
            let (held, place) = runtime.block_on(async {
                let mut held = cfg.register_waiting("standby", 0).await?;
                let place = cfg.place(&mut held, 0).await?;
                if let stile_node::cluster::Place::Standby { addr, .. } = &place {
                    seed_if_new(data, &peer(*addr)).await?;
                    tokio::spawn(offer_set_aside(data.to_path_buf(), peer(*addr)));
                }
                anyhow::Ok((held, place))
            })?;
            Some((cfg, held, place))
        }
        _ => None,
    };
    let config = EngineConfig {
        sync,
        log_runway: listen.tuning.log_runway,
        segment_max_bytes: listen.tuning.log_segment_kib << 10,
        accept_clock_behind_log: listen.tuning.accept_clock_behind_log,
        ..EngineConfig::default()
    };
    crate::signals::ignore_file_size_limit();
    let engine = Engine::open(data, config, Arc::new(SystemClock))
        .with_context(|| format!("opening data dir {}", data.display()))?;
    let recovered = engine.recovered();
    tracing::info!(
        "recovered {} tickets: {} log records replayed, {} torn bytes cut ({} bytes of log \
         space prepared ahead and never written, released)",
        engine.minted_tickets(),
        recovered.records,
        recovered.truncated_bytes,
        recovered.unwritten_bytes
    );
    let engine = Arc::new(engine);
    let data_dir = data.to_path_buf();
    let data = data.to_path_buf();
    let ran = runtime.block_on(async move {
        // Before anything is announced: a SIGTERM right after the address lines must stop
        // the node cleanly, not kill it.
        let mut signals = crate::signals::Signals::install()?;
        let mut config = NodeConfig::new(listen.quic, tls);
        config.metrics_listen = listen.metrics;
        config.budget_per_s = listen.tuning.gate_budget;
        config.budget_burst = listen.tuning.gate_budget.saturating_mul(2);
        config.snapshot_every = listen.tuning.snapshot_every.0;
        config.name = shard.name.clone();
        let leading = match &cluster {
            Some((_, _, place)) => matches!(place, stile_node::cluster::Place::Leader { .. }),
            None => primary.is_none(),
        };
        let mut replication = stile_node::replicate::Replication::new(
            leading,
            shard.standby_of.map(|a| a.to_string()).unwrap_or_default(),
            shard.standby_timeout,
        );
        // In a cluster the synchronous standby is named in etcd first.
        replication.name_alone = cluster.is_none();
        let replication = Arc::new(replication);
        config.replication = Some(replication.clone());
        let node = Node::start(engine.clone(), config)?;
        started(node.local_addr());
        let follower = match (primary, cluster) {
            (Some(primary), _) => Some(tokio::spawn(follow_primary(
                engine,
                data,
                primary,
                node.shutdown_signal(),
            ))),
            (None, Some((cfg, held, place))) => {
                let shutdown = node.shutdown_signal();
                Some(tokio::spawn(async move {
                    anyhow::Error::from(
                        stile_node::cluster::run(cfg, engine, replication, held, place, shutdown)
                            .await,
                    )
                }))
            }
            (None, None) => None,
        };
        if let Some(addr) = node.metrics_addr() {
            // Scripts and tests read the metrics address from this line.
            crate::say!("stile metrics listening on http://{addr}/metrics");
        }
        let gateway = match gateway {
            Some(up) => Some(start_gateway(up, node.local_addr()).await?),
            None => None,
        };
        match follower {
            Some(mut f) => tokio::select! {
                _ = signals.wait() => {}
                r = &mut f => {
                    // The standby cannot go on (too far behind, another deployment's
                    // primary): it stops rather than serve a state it cannot keep.
                    node.shutdown().await;
                    return Err(match r {
                        Ok(e) => e,
                        Err(e) => anyhow::anyhow!("the follower failed: {e}"),
                    });
                }
            },
            None => signals.wait().await,
        }
        tracing::info!("shutting down: answering in-flight requests, syncing the log");
        if let Some(g) = gateway {
            g.shutdown(std::time::Duration::from_secs(5)).await;
        }
        node.shutdown().await;
        Ok::<_, anyhow::Error>(())
    });
    // Every task goes with the runtime, and the engine with them: the log is closed.
    drop(runtime);
    match ran {
        Err(e) => match e.downcast_ref::<stile_node::cluster::ClusterError>() {
            Some(stile_node::cluster::ClusterError::Rejoin {
                reseed,
                diverged_at,
                why,
            }) => Err(rejoin(&data_dir, *reseed, *diverged_at, why)),
            _ => Err(e),
        },
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// Sets this node's data aside if it must be seeded afresh, then starts this program again
/// with the same arguments (the same process), so that it joins its shard as a standby of
/// the leader. Returns only if that cannot be done.
fn rejoin(data: &Path, reseed: bool, diverged_at: Option<u64>, why: &str) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    tracing::warn!(reason = why, "rejoining the shard as a standby");
    if reseed {
        match stile_node::standby::set_aside(data, diverged_at) {
            Ok(aside) => tracing::warn!(
                dir = %aside.dir.display(),
                records = aside.records,
                admits = aside.admits,
                "set this node's log aside to be seeded afresh from the leader; the records \
                 past the leader's history are kept there and offered to the leader"
            ),
            Err(e) => {
                return anyhow::anyhow!(e).context(format!(
                    "setting {} aside to rejoin the shard",
                    data.display()
                ))
            }
        }
    }
    // Rejoins in quick succession mean something else is wrong: stop rather than loop.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (count, last) = std::env::var(REJOINED_ENV)
        .ok()
        .and_then(|v| {
            let (c, t) = v.split_once(':')?;
            Some((c.parse::<u32>().ok()?, t.parse::<u64>().ok()?))
        })
        .unwrap_or((0, 0));
    let count = if now.saturating_sub(last) < 60 {
        count + 1
    } else {
        1
    };
    if count > REJOINS_MAX {
        return anyhow::anyhow!(
            "{why}; this node rejoined its shard {REJOINS_MAX} times within a minute each, so \
             it stops: see the earlier errors"
        );
    }
    let err = std::process::Command::new("/proc/self/exe")
        .args(std::env::args_os().skip(1))
        .env(REJOINED_ENV, format!("{count}:{now}"))
        .exec();
    anyhow::anyhow!(err).context("starting this node again to rejoin its shard")
}

/// Counts a node's rejoins in quick succession across its restarts (`COUNT:UNIX_S`).
const REJOINED_ENV: &str = "STILE_REJOINED";
/// Rejoins, each within a minute of the last, after which a node stops.
const REJOINS_MAX: u32 = 3;

/// How this node reaches a peer as a client, given its address.
type Peer = Arc<dyn Fn(SocketAddr) -> stile_protocol::client::ClientConfig + Send + Sync>;

/// Seeds data dir `data` from the primary when it holds nothing (or a seed cut short),
/// retrying while the primary cannot be reached.
async fn seed_if_new(
    data: &Path,
    primary: &stile_protocol::client::ClientConfig,
) -> anyhow::Result<()> {
    use stile_engine::standby::unfinished_seed;
    let has_state = stile_engine::datadir::has_state(data).unwrap_or(false);
    if has_state && !unfinished_seed(data) {
        return Ok(());
    }
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match stile_node::standby::seed(data, primary).await {
            Ok(_) => return Ok(()),
            Err(e @ stile_node::standby::StandbyError::Seed(_)) => {
                return Err(anyhow::anyhow!(e).context(format!("seeding {}", data.display())))
            }
            Err(e) => {
                tracing::warn!(primary = %primary.node, error = %e, "cannot seed from the primary yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

/// Offers the leader what this node set aside when it last rejoined (see
/// `stile_node::standby::set_aside`), retrying for a while if the leader cannot take it
/// yet; what is left is offered at the next start.
async fn offer_set_aside(data: PathBuf, leader: stile_protocol::client::ClientConfig) {
    let mut pause = std::time::Duration::from_millis(200);
    for _ in 0..20 {
        match stile_node::standby::offer_set_aside(&data, &leader).await {
            Ok(_) => return,
            Err(e) => tracing::warn!(leader = %leader.node, error = %e,
                "cannot offer the leader this node's set-aside changes yet; retrying"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(10));
    }
}

/// Follows the primary until this node stops; returns only for what retrying cannot mend.
async fn follow_primary(
    engine: Arc<Engine>,
    data: PathBuf,
    primary: stile_protocol::client::ClientConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Error {
    use stile_node::standby::StandbyError;
    use stile_protocol::frame::error_code;
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        let started = std::time::Instant::now();
        match stile_node::standby::follow(engine.clone(), &data, &primary, shutdown.clone()).await {
            Ok(()) | Err(StandbyError::Shutdown) => {
                return anyhow::anyhow!("shutting down");
            }
            Err(
                e @ StandbyError::Refused {
                    code: error_code::TRIMMED | error_code::CONFLICT,
                    ..
                },
            )
            | Err(e @ (StandbyError::Apply(_) | StandbyError::Io { .. })) => {
                return anyhow::anyhow!(e).context(format!(
                    "this standby cannot follow its primary: move {} aside and start it \
                     again to seed it afresh",
                    data.display()
                ));
            }
            Err(e) => {
                tracing::warn!(primary = %primary.node, error = %e, "lost the primary; retrying");
                if started.elapsed() > std::time::Duration::from_secs(5) {
                    pause = std::time::Duration::from_millis(100);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

/// Starts the gateway of `stile up`, runs `--demo`, prints the URLs.
async fn start_gateway(up: UpGateway, node: SocketAddr) -> anyhow::Result<stile_gateway::Gateway> {
    use crate::gateway_cmd;
    let (gateway, config) = gateway_cmd::start_for_up(&up.data, up.http, &up.https, node).await?;
    let base = gateway_cmd::base_url(&config, gateway.local_addr());
    // Scripts and tests read the gateway's address from this line.
    crate::say!("stile gateway listening on {base}");
    crate::say!("  API {base}/openapi.json, metrics {base}/metrics");
    crate::say!(
        "  API token (Authorization: Bearer) in {}",
        config.dir.join(stile_gateway::API_TOKEN_FILE).display()
    );
    if up.demo {
        let gateway_cmd::Demo { pages, gate } =
            gateway_cmd::demo(&base, gateway.api_token(), up.https.tls_cert.is_some()).await?;
        crate::say!("demo: an event of provider 1, valid now; e-ticket pages:");
        for p in &pages {
            crate::say!("{p}");
        }
        match (pages.first(), gate) {
            (Some(first), Some((gate_token, gate_pin))) => {
                let code = first.rsplit('/').next().unwrap_or_default();
                crate::say!("check one in over HTTP (gate 1) and watch its page turn to used:");
                crate::say!(
                    "  curl -s -X POST {base}/v1/checkin -H 'Authorization: Bearer {gate_token}' \\"
                );
                crate::say!(
                    "    -H 'Content-Type: application/json' -d '{{\"code\": \"{code}\"}}'"
                );
                crate::say!(
                    "or on the page itself: Staff check-in, gate 1, PIN {gate_pin} (staff only)"
                );
            }
            _ => crate::say!(
                "gate 1's HTTP token and staff PIN are the ones the first --demo on this data \
                 dir printed (POST /v1/providers/1/gates replaces them)"
            ),
        }
    }
    let (stile, conn) = (
        crate::invoked_as(),
        format!(
            "--data {} --node {}",
            crate::shell_word(&up.data.display().to_string()),
            crate::shell_word(&node.to_string())
        ),
    );
    crate::say!("next, in another terminal (in this directory):");
    crate::say!("  {stile} mint {conn} --count 3    # prints three codes");
    crate::say!("  {stile} check {conn} CODE        # admitted, then already_used");
    crate::say!("stop with Ctrl-C (in-flight requests are answered, the log is synced)");
    Ok(gateway)
}
