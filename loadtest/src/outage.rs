//! The `outage` scenario: turnstiles that keep admitting while their node is gone, and a
//! node that learns afterwards what they did.
//!
//! G gates of the `stile-gate` library run in this process, each with its own certificate
//! and state directory (`DATA/gates/gate-N`, made afresh each run), deciding offline when
//! the node does not answer within [`ONLINE_TIMEOUT`]. The run's tickets are minted first;
//! the clock starts once every gate has loaded its replica. Each gate presents its share of
//! the tickets, one at a time, at a set pace. Mid-run the node the tester spawned is killed
//! (SIGKILL) and, after the outage, started again on the same port and data dir: meanwhile
//! the gates see no node and decide from their replicas. A quarter into the outage (after
//! some ordinary offline scans) each gate presents its planted duplicates before anything
//! else: tickets presented at two different gates during the outage, which both admit
//! (neither can know); they are done by three quarters in, well before the node is back.
//! When the node is back the gates
//! upload their journals; at the end each drains, and the tester asks the node (as an
//! admin) for its conflicts and for the state of every ticket admitted offline.
//!
//! What must hold: no gate admits a ticket twice; no ticket is admitted online twice; the
//! node's conflicts for this run's tickets are exactly the planted duplicates, each a
//! `double_entry`; every ticket admitted offline is `used` on the node; every planted
//! duplicate was admitted offline at both its gates; every journal was uploaded.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use stile_certs as certs;
use stile_gate::{Gate, GateConfig, Journal, Mode, Op, Record};
use stile_protocol::client::{Client, ClientConfig, ClientTls};
use stile_protocol::frame::{op, ConflictKind, MintSpec, TicketStateName};
use stile_protocol::{CodeBytes, OutcomeKind};
use tokio::sync::watch;

use crate::link::PROVIDER;
use crate::report::{self, Latency, OutageCheck, OutageReport, RunReport};
use crate::spawn::NodeProcess;
use crate::{Config, LoadError, Shape, Sizing, Stop};

/// How long a gate waits for the node before it decides offline.
pub const ONLINE_TIMEOUT: Duration = Duration::from_millis(300);
/// Longest wait of a gate's client for one answer, as `stile gate` has it: a scan still
/// awaited when the node comes back is sent again and answered late.
pub const GATE_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node is cut off unless told (`--outage`).
pub const OUTAGE_DEFAULT: Duration = Duration::from_secs(10);
/// The shortest outage: its middle half holds a planted duplicate's scan at each gate.
pub const OUTAGE_MIN: Duration = Duration::from_secs(2);
/// Planted duplicates unless told (`--duplicates`), when that many fit the outage.
pub const DUPLICATES_DEFAULT: u32 = 20;
/// Scans per second per gate unless `--rate` is given.
pub const RATE_PER_GATE_DEFAULT: f64 = 100.0;
/// Gates at most: each is a client of its own with a replica of the provider's tickets.
pub const GATES_MAX: u16 = 64;
/// Time one planted duplicate's offline scan is allowed (the online timeout, the journal's
/// sync and room for a busy machine): a gate's planted duplicates, after the scan it is in
/// when their time comes, must fit the outage's middle half at this pace.
const OFFLINE_SCAN_BUDGET: Duration = Duration::from_millis(400);
/// Longest wait for every gate to load its replica before the clock starts.
const REPLICA_WAIT: Duration = Duration::from_secs(120);
/// Longest wait at the end for a gate's journal to be uploaded.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a gate dropped at the end to be gone (its tasks let go of it), before
/// its journal is read.
const GATE_GONE_WAIT: Duration = Duration::from_secs(5);
/// Status requests in flight at once when checking the offline admits.
const STATUS_IN_FLIGHT: usize = 256;
/// How often the gates' journals are looked at while they are uploaded.
const POLL: Duration = Duration::from_millis(50);
/// The oldest replica a gate decides from (far more than any run).
const MAX_REPLICA_AGE: Duration = Duration::from_secs(3600);
/// Codes a failed check names at most.
const NAMED_MAX: usize = 5;

/// The `outage` scenario's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// How long the node is cut off, from the middle of the run.
    pub cut_for: Duration,
    /// Tickets presented at two gates during the outage; `None`: as many as fit, up to
    /// [`DUPLICATES_DEFAULT`].
    pub duplicates: Option<u32>,
}

impl Default for Outage {
    fn default() -> Self {
        Outage {
            cut_for: OUTAGE_DEFAULT,
            duplicates: None,
        }
    }
}

/// The scans per second of the whole run: `--rate`, or [`RATE_PER_GATE_DEFAULT`] a gate.
pub fn rate_of(config: &Config) -> f64 {
    config
        .rate
        .unwrap_or(RATE_PER_GATE_DEFAULT * f64::from(config.gates))
}

/// Planted duplicates that fit an outage of `cut_for` at `gates` gates: no gate presents
/// more than `ceil(2 D / G)` of them, each allowed [`OFFLINE_SCAN_BUDGET`], after the scan
/// it is in, within the outage's middle half.
fn duplicates_fitting(cut_for: Duration, gates: u16) -> u32 {
    let per_gate = ((cut_for / 2).as_millis() / OFFLINE_SCAN_BUDGET.as_millis()).saturating_sub(1);
    (per_gate * u128::from(gates) / 2).min(u128::from(u32::MAX)) as u32
}

/// The planted duplicates of `config`'s run.
pub fn duplicates_of(config: &Config) -> u32 {
    config.outage.duplicates.unwrap_or_else(|| {
        DUPLICATES_DEFAULT.min(duplicates_fitting(config.outage.cut_for, config.gates))
    })
}

/// Checks the scenario's options (the spawned node is checked by [`Config::validate`]).
pub(crate) fn validate(config: &Config) -> Result<(), LoadError> {
    let bad = |m: String| Err(LoadError::Usage(m));
    let o = &config.outage;
    if config.gates < 2 || config.gates > GATES_MAX {
        return bad(format!(
            "--gates {}: the outage scenario runs 2 to {GATES_MAX} gates (a planted duplicate \
             is presented at two)",
            config.gates
        ));
    }
    if o.cut_for < OUTAGE_MIN {
        return bad(format!(
            "--outage must be at least {}",
            humantime::format_duration(OUTAGE_MIN)
        ));
    }
    if o.cut_for >= config.duration {
        return bad(format!(
            "--outage {} must be shorter than --duration {}: the node is cut off mid-run and \
             the gates go on once it is back (give --duration 30s, say)",
            humantime::format_duration(o.cut_for),
            humantime::format_duration(config.duration)
        ));
    }
    if let Some(d) = o.duplicates {
        let fit = duplicates_fitting(o.cut_for, config.gates);
        if d > fit {
            return bad(format!(
                "--duplicates {d}: each gate would present up to {} of them while the node is \
                 cut off, each allowed {} ms (offline after {} ms), more than the middle half of \
                 the {} outage holds; at most {fit} fit: give fewer, more --gates or a longer \
                 --outage",
                (2 * d).div_ceil(u32::from(config.gates)),
                OFFLINE_SCAN_BUDGET.as_millis(),
                ONLINE_TIMEOUT.as_millis(),
                humantime::format_duration(o.cut_for)
            ));
        }
    }
    if let Some(n) = config.tickets {
        if duplicates_of(config) >= n {
            return bad(format!(
                "--tickets {n}: the {} planted duplicates come out of the tickets; mint more",
                duplicates_of(config)
            ));
        }
    }
    if config.shape != Shape::Flat {
        return bad("--shape: the outage scenario's gates keep a flat pace".into());
    }
    if !config.warmup.is_zero() {
        return bad("the outage scenario has no warm-up: every scan counts".into());
    }
    if config.history.is_some() {
        return bad(
            "--history: the outage scenario's gates decide offline themselves, which a history \
             of the node's answers cannot hold; it checks what must hold itself"
                .into(),
        );
    }
    if config.faults.any() {
        return bad(
            "--kill-every and --pause-every: the outage scenario cuts the node off itself \
             (--outage)"
                .into(),
        );
    }
    Ok(())
}

/// Whether the gates can reach the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the outage.
    Before,
    /// The node is killed.
    Cut,
    /// Still killed, a quarter of the outage in: the planted duplicates' time.
    Plant,
    /// Started again (or never cut: the run was stopped first).
    Back,
}

/// One presentation of a ticket at a gate, and its answer.
#[derive(Debug, Clone, Copy)]
struct Presented {
    /// The ticket, by index in minting order.
    ticket: u32,
    /// The gate, from 1.
    gate: u16,
    /// A planted duplicate's presentation during the outage.
    planted: bool,
    /// The outcome (`None`: the gate refused to decide).
    kind: Option<OutcomeKind>,
    /// Answered online.
    online: bool,
    /// When it was due (its pace; a planted one when presented), from the start.
    due: Duration,
    /// From due to answered, microseconds.
    latency_us: u64,
    /// From presenting to answered, microseconds.
    took_us: u64,
}

/// What one gate did.
#[derive(Debug, Default)]
struct GateRun {
    /// Every presentation, in order.
    presented: Vec<Presented>,
    /// Its queue ended before the time was up.
    ran_out: bool,
}

/// When the node was cut off and back.
#[derive(Debug, Default)]
struct Cut {
    /// When it was killed (`None`: the run was stopped first).
    cut_at: Option<Instant>,
    /// When it listened again.
    back_at: Option<Instant>,
    /// The node did not start again: why.
    failed: Option<String>,
}

/// Runs the `outage` scenario with `sizing.tickets` tickets.
pub(crate) async fn run(config: &Config, sizing: Sizing) -> Result<RunReport, LoadError> {
    let (ready, plan) = prepare(config, &sizing).await?;
    let Measured { run: m, watcher } = measure(config, &ready, plan).await?;
    let after = reconcile(config, &ready, &m.presented, watcher).await?;
    let interrupted = config.stop.is_requested() && m.elapsed < config.duration;
    let answered_late = read_journals(ready.gates, &ready.gates_dir).await;
    let at = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(m.start).as_secs_f64());
    let outage = OutageReport {
        outage_s: config.outage.cut_for.as_secs_f64(),
        cut_at_s: at(m.cut.cut_at),
        back_at_s: at(m.cut.back_at),
        online_timeout_ms: ONLINE_TIMEOUT.as_millis() as u64,
        admits_online: count(&m.presented, |p| p.online && admitted(p)),
        admits_offline: count(&m.presented, |p| !p.online && admitted(p)),
        answered_late,
        uploads: after.found.uploads,
        conflicts: after.found.conflicts.len() as u64,
        planted_duplicates: planted_admitted_twice(&m.presented).len() as u64,
        planted_asked: u64::from(ready.planted_asked),
        // Uploaded between the last look that found scans left and the next one.
        reconciled_s: match (after.left.iter().all(|&n| n == 0), m.cut.back_at) {
            (true, Some(back)) => Some(
                after
                    .last_pending
                    .map_or(0.0, |t| t.saturating_duration_since(back).as_secs_f64()),
            ),
            _ => None,
        },
        online_us: latency(m.presented.iter().filter(|p| p.online).map(|p| p.took_us)),
        offline_us: latency(m.presented.iter().filter(|p| !p.online).map(|p| p.took_us)),
        gates_dir: ready.gates_dir.display().to_string(),
        checks: checks(
            &m.presented,
            &ready.codes,
            &after.found,
            &after.left,
            ready.planted_asked,
            interrupted,
        ),
    };
    Ok(run_report(RunParts {
        config,
        sizing: &sizing,
        sync: ready.sync,
        presented: &m.presented,
        elapsed: m.elapsed,
        ran_out: m.ran_out && !interrupted,
        interrupted,
        cpu: m.cpu,
        machine_load: m.machine_load,
        outage,
    }))
}

/// What a run sets up before its clock starts.
struct Ready {
    /// The node it cuts off.
    node: Arc<NodeProcess>,
    /// An admin client of it.
    admin: Client,
    /// Its sync mode.
    sync: String,
    /// The run's tickets, in minting order.
    codes: Vec<CodeBytes>,
    /// Their text, as a scanner reads it.
    texts: Arc<Vec<String>>,
    /// The planted duplicates asked for.
    planted_asked: u32,
    /// The gates, each with its replica loaded.
    gates: Vec<Arc<Gate>>,
    /// Where their state is.
    gates_dir: PathBuf,
}

/// Mints the tickets, plans them, opens the gates and waits for their replicas.
async fn prepare(
    config: &Config,
    sizing: &Sizing,
) -> Result<(Ready, crate::plan::OutagePlan), LoadError> {
    let node = config
        .node
        .clone()
        .ok_or_else(|| LoadError::Usage("the outage scenario needs --spawn-node".into()))?;
    let err = |reason: String| LoadError::Target {
        target: config.target.clone(),
        reason,
    };
    let stop = &config.stop;
    let (admin, ca) = admin_client(config, &node).await?;
    let sync = match admin.stats().await {
        Ok(s) => stile_protocol::frame::sync_mode::name(s.sync_mode).to_string(),
        Err(_) => "unknown".to_string(),
    };
    let n = sizing.tickets;
    let planted_asked = duplicates_of(config);
    if planted_asked >= n {
        return Err(LoadError::Usage(format!(
            "{n} tickets leave none beside the {planted_asked} planted duplicates"
        )));
    }
    let codes = stop.or_stop(mint(config, &admin, n)).await??;
    let texts = codes
        .iter()
        .map(|c| c.to_text().as_str().to_string())
        .collect();
    let plan = crate::plan::outage(n, config.gates, planted_asked);
    let gates_dir = config.data.join("gates");
    let gates = open_gates(config, &gates_dir, &ca, node.addr()).map_err(err)?;
    stop.or_stop(wait_for_replicas(config, &gates, n))
        .await?
        .map_err(err)?;
    let ready = Ready {
        node,
        admin,
        sync,
        codes,
        texts: Arc::new(texts),
        planted_asked,
        gates,
        gates_dir,
    };
    Ok((ready, plan))
}

/// What the measured time gave.
struct Run {
    /// The clock's start.
    start: Instant,
    /// Until every gate had stopped presenting.
    elapsed: Duration,
    /// Every presentation, gate after gate.
    presented: Vec<Presented>,
    /// A gate's queue ended before the time was up.
    ran_out: bool,
    /// When the node was cut off and back.
    cut: Cut,
    /// This process's CPU time over it.
    cpu: Duration,
    /// The machine's CPUs over it.
    machine_load: Option<report::MachineLoad>,
}

/// The measured time, and the task still watching the journals' upload.
struct Measured {
    /// What it gave.
    run: Run,
    /// Watches the journals until told (see [`watch_journals`]).
    watcher: Watcher,
}

/// The task that watches the journals, and how to end it.
struct Watcher {
    /// The task.
    task: tokio::task::JoinHandle<Option<Instant>>,
    /// Ends it.
    done: Arc<tokio::sync::Notify>,
}

/// Starts the clock: the gates present their queues, the node is cut off mid-run and
/// started again; returns once every gate has stopped and the node is back.
async fn measure(
    config: &Config,
    ready: &Ready,
    plan: crate::plan::OutagePlan,
) -> Result<Measured, LoadError> {
    let err = |reason: String| LoadError::Target {
        target: config.target.clone(),
        reason,
    };
    let cut_for = config.outage.cut_for;
    let cut_after = (config.duration - cut_for) / 2;
    if config.progress {
        eprintln!(
            "stile loadtest: {}: {} tickets ready, {} gates with their replicas; measuring for \
             {:.1} s, the node cut off at {:.1} s for {:.1} s",
            config.target,
            ready.codes.len(),
            ready.gates.len(),
            config.duration.as_secs_f64(),
            cut_after.as_secs_f64(),
            cut_for.as_secs_f64()
        );
    }
    let cpu_start = crate::cpu_time();
    let ticks_start = report::CpuTicks::read();
    let start = Instant::now();
    let (phase_tx, phase) = watch::channel(Phase::Before);
    let cutter = tokio::spawn(cut_off(
        ready.node.clone(),
        start + cut_after,
        cut_for,
        config.stop.clone(),
        phase_tx,
        config.progress.then(|| config.target.clone()),
        start,
    ));
    let done = Arc::new(tokio::sync::Notify::new());
    let watcher = Watcher {
        task: tokio::spawn(watch_journals(
            ready.gates.iter().map(Arc::downgrade).collect(),
            phase.clone(),
            done.clone(),
        )),
        done,
    };
    let pace = Pace {
        start,
        end: start + config.duration,
        gates: config.gates,
        rate: rate_of(config),
    };
    let mut runs = Vec::with_capacity(ready.gates.len());
    for (g, (queue, planted)) in plan.queues.into_iter().zip(plan.planted).enumerate() {
        runs.push(tokio::spawn(present_all(
            ready.gates[g].clone(),
            g,
            queue,
            planted,
            ready.texts.clone(),
            pace,
            phase.clone(),
            config.stop.clone(),
        )));
    }
    let (mut presented, mut ran_out) = (Vec::new(), false);
    for r in runs {
        let r = r
            .await
            .map_err(|e| err(format!("a gate's task failed: {e}")))?;
        ran_out |= r.ran_out;
        presented.extend(r.presented);
    }
    let elapsed = start.elapsed();
    let cut = cutter
        .await
        .map_err(|e| err(format!("cutting the node off failed: {e}")))?;
    if let Some(e) = &cut.failed {
        return Err(err(format!("the node did not start again: {e}")));
    }
    let run = Run {
        start,
        elapsed,
        presented,
        ran_out,
        cut,
        cpu: crate::cpu_time().saturating_sub(cpu_start),
        machine_load: ticks_start
            .zip(report::CpuTicks::read())
            .and_then(|(a, b)| report::MachineLoad::between(&a, &b)),
    };
    Ok(Measured { run, watcher })
}

/// What the node holds once the gates have drained.
struct After {
    /// Scans left in each gate's journal after the drain.
    left: Vec<usize>,
    /// The last time a journal was seen holding a scan the node had not taken.
    last_pending: Option<Instant>,
    /// What the node says.
    found: Found,
}

/// Drains every gate's journal, ends the watcher, and asks the node what it holds of
/// `presented`.
async fn reconcile(
    config: &Config,
    ready: &Ready,
    presented: &[Presented],
    watcher: Watcher,
) -> Result<After, LoadError> {
    if config.progress {
        eprintln!(
            "stile loadtest: {}: the run's time is up; waiting for the gates' journals to be \
             uploaded (at most {} s)",
            config.target,
            DRAIN_TIMEOUT.as_secs()
        );
    }
    let left = drain(&ready.gates).await;
    watcher.done.notify_one();
    let last_pending = watcher.task.await.unwrap_or(None);
    let found = Found::ask(&ready.admin, &ready.codes, presented)
        .await
        .map_err(|reason| LoadError::Target {
            target: config.target.clone(),
            reason,
        })?;
    Ok(After {
        left,
        last_pending,
        found,
    })
}

/// An admin client of the spawned node (the run's admin certificate), and the CA.
async fn admin_client(config: &Config, node: &NodeProcess) -> Result<(Client, PathBuf), LoadError> {
    let err = |reason: String| LoadError::Target {
        target: config.target.clone(),
        reason,
    };
    let (_, ca) = crate::target::node_ca(config).map_err(err)?;
    let (cert, key) = crate::target::admin_identity(config).map_err(err)?;
    let tls = ClientTls::from_files(&ca, &cert, &key).map_err(|e| err(format!("admin: {e}")))?;
    let admin = config
        .stop
        .or_stop(Client::connect(ClientConfig::new(node.addr(), tls)))
        .await?
        .map_err(|e| err(format!("admin: {e}")))?;
    Ok((admin, ca))
}

/// Mints `n` single-entry tickets of the gates' provider, saying how it goes.
async fn mint(config: &Config, admin: &Client, n: u32) -> Result<Vec<CodeBytes>, LoadError> {
    let mut progress = crate::MintProgress::new(config, n);
    let mut codes = Vec::with_capacity(n as usize);
    let mut left = n;
    while left > 0 {
        let step = left.min(crate::MINT_STEP);
        let spec = MintSpec {
            partition: config.partition,
            ..MintSpec::single_entry(PROVIDER, step)
        };
        codes.extend(admin.mint(spec).await.map_err(|e| LoadError::Target {
            target: config.target.clone(),
            reason: format!("minting: {e}"),
        })?);
        left -= step;
        progress.add(u64::from(step));
    }
    Ok(codes)
}

/// Makes `dir` afresh and opens gates 1..=G in it, each with a certificate of its own issued
/// from the CA in `DATA/tls` and its state in `dir/gate-N`.
fn open_gates(
    config: &Config,
    dir: &Path,
    ca: &Path,
    node: std::net::SocketAddr,
) -> Result<Vec<Arc<Gate>>, String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing the last run's {}: {e}", dir.display())),
    }
    let issuer =
        certs::Issuer::open(&config.data.join("tls")).map_err(|e| format!("the CA: {e}"))?;
    let mut gates = Vec::with_capacity(usize::from(config.gates));
    for id in 1..=config.gates {
        let state = dir.join(format!("gate-{id}"));
        std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        let cert = issuer
            .gate(&state, id, PROVIDER)
            .map_err(|e| format!("issuing gate {id}'s certificate: {e}"))?;
        let tls = ClientTls::from_files(ca, &cert, &certs::key_path_for(&cert))
            .map_err(|e| format!("gate {id}: {e}"))?;
        let client = ClientConfig {
            provider: Some(PROVIDER),
            request_timeout: GATE_REQUEST_TIMEOUT,
            ..ClientConfig::new(node, tls)
        };
        let gate = Gate::open(GateConfig {
            client,
            gate: id,
            provider: PROVIDER,
            state_dir: state,
            online_timeout: ONLINE_TIMEOUT,
            offline_admits: true,
            max_replica_age: MAX_REPLICA_AGE,
        })
        .map_err(|e| format!("opening gate {id}: {e}"))?;
        gates.push(gate);
    }
    Ok(gates)
}

/// Waits until every gate holds a replica of at least `tickets` tickets (this run's were
/// minted before they loaded), at most [`REPLICA_WAIT`].
async fn wait_for_replicas(
    config: &Config,
    gates: &[Arc<Gate>],
    tickets: u32,
) -> Result<(), String> {
    let deadline = Instant::now() + REPLICA_WAIT;
    loop {
        let short: Vec<(usize, Option<usize>)> = gates
            .iter()
            .enumerate()
            .map(|(g, gate)| (g + 1, gate.status().replica_tickets))
            .filter(|(_, n)| n.is_none_or(|n| n < tickets as usize))
            .collect();
        let Some(&(g, has)) = short.first() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{} of {} gates had not loaded their replica within {} s (gate {g} holds {} of \
                 the run's {tickets} tickets); is the node answering? its log: {}",
                short.len(),
                gates.len(),
                REPLICA_WAIT.as_secs(),
                has.map_or("none".to_string(), |n| n.to_string()),
                config.data.join("node.log").display()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Kills the node at `at` and starts it again `cut_for` later (at once on a stop), telling
/// the gates through `phase`.
async fn cut_off(
    node: Arc<NodeProcess>,
    at: Instant,
    cut_for: Duration,
    stop: Stop,
    phase: watch::Sender<Phase>,
    progress: Option<String>,
    start: Instant,
) -> Cut {
    let mut cut = Cut::default();
    let since = |t: Instant| t.saturating_duration_since(start).as_secs_f64();
    tokio::select! {
        () = tokio::time::sleep_until(at.into()) => {}
        () = stop.requested() => {
            phase.send_replace(Phase::Back);
            return cut;
        }
    }
    let n = node.clone();
    let _ = tokio::task::spawn_blocking(move || n.kill()).await;
    let cut_at = Instant::now();
    cut.cut_at = Some(cut_at);
    phase.send_replace(Phase::Cut);
    if let Some(target) = &progress {
        eprintln!(
            "stile loadtest: {target}: node killed at {:.1} s; the gates decide offline",
            since(cut_at)
        );
    }
    for (until, next) in [(cut_for / 4, Some(Phase::Plant)), (cut_for, None)] {
        tokio::select! {
            () = tokio::time::sleep_until((cut_at + until).into()) => {}
            () = stop.requested() => break,
        }
        if let Some(next) = next {
            phase.send_replace(next);
        }
    }
    let n = node.clone();
    let started = tokio::task::spawn_blocking(move || n.start_again()).await;
    let back_at = Instant::now();
    cut.back_at = Some(back_at);
    phase.send_replace(Phase::Back);
    match started {
        Ok(Ok(())) => {
            if let Some(target) = &progress {
                eprintln!(
                    "stile loadtest: {target}: node listening again at {:.1} s; the gates \
                     upload their journals",
                    since(back_at)
                );
            }
        }
        Ok(Err(e)) => cut.failed = Some(e),
        Err(e) => cut.failed = Some(e.to_string()),
    }
    cut
}

/// Looks at the gates' journals every [`POLL`] from the node's return until `done`, so
/// that their upload can be timed: the last time one held a scan the node had not taken.
async fn watch_journals(
    gates: Vec<Weak<Gate>>,
    mut phase: watch::Receiver<Phase>,
    done: Arc<tokio::sync::Notify>,
) -> Option<Instant> {
    while *phase.borrow_and_update() != Phase::Back {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            () = done.notified() => return None,
        }
    }
    let mut last = None;
    loop {
        let pending = gates
            .iter()
            .filter_map(Weak::upgrade)
            .any(|g| g.status().pending > 0);
        if pending {
            last = Some(Instant::now());
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = done.notified() => return last,
        }
    }
}

/// The pace every gate keeps: its `k`-th ticket is due at `start + (k G + g) / rate`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// The clock's start.
    start: Instant,
    /// The run's time is up.
    end: Instant,
    /// Gates sharing the pace.
    gates: u16,
    /// Scans per second, all gates together.
    rate: f64,
}

impl Pace {
    /// When gate `g`'s (from 0) `k`-th ticket is due.
    fn due(&self, g: usize, k: usize) -> Instant {
        let i = k as f64 * f64::from(self.gates) + g as f64;
        self.start + Duration::from_secs_f64(i / self.rate)
    }
}

/// Presents gate `g`'s queue at its pace until the time is up, and its planted duplicates
/// first once their time in the outage comes.
#[allow(clippy::too_many_arguments)]
async fn present_all(
    gate: Arc<Gate>,
    g: usize,
    queue: Vec<u32>,
    planted: Vec<u32>,
    texts: Arc<Vec<String>>,
    pace: Pace,
    mut phase: watch::Receiver<Phase>,
    stop: Stop,
) -> GateRun {
    let mut run = GateRun::default();
    let id = g as u16 + 1;
    let (mut next, mut next_planted) = (0usize, 0usize);
    let mut phase_open = true;
    loop {
        let now = Instant::now();
        if now >= pace.end || stop.is_requested() {
            break;
        }
        let ph = *phase.borrow_and_update();
        if ph == Phase::Plant && next_planted < planted.len() {
            let t = planted[next_planted];
            next_planted += 1;
            let p = present(&gate, id, t, &texts, now, pace.start, true).await;
            run.presented.push(p);
            continue;
        }
        let waiting_to_plant =
            matches!(ph, Phase::Before | Phase::Cut) && next_planted < planted.len();
        let due = match queue.get(next) {
            Some(_) => pace.due(g, next),
            None if waiting_to_plant => pace.end,
            None => {
                run.ran_out = true;
                break;
            }
        };
        if due > now {
            tokio::select! {
                () = tokio::time::sleep_until(due.min(pace.end).into()) => {}
                changed = phase.changed(), if phase_open => phase_open = changed.is_ok(),
                () = stop.requested() => break,
            }
            continue;
        }
        let p = present(&gate, id, queue[next], &texts, due, pace.start, false).await;
        next += 1;
        run.presented.push(p);
    }
    run
}

/// Presents ticket `t` at `gate`, due at `due`.
async fn present(
    gate: &Arc<Gate>,
    id: u16,
    t: u32,
    texts: &[String],
    due: Instant,
    start: Instant,
    planted: bool,
) -> Presented {
    let at = Instant::now();
    let answer = gate.scan(&texts[t as usize], Op::Entry).await;
    let done = Instant::now();
    Presented {
        ticket: t,
        gate: id,
        planted,
        kind: answer.kind,
        online: answer.mode == Mode::Online,
        due: due.saturating_duration_since(start),
        latency_us: (done.saturating_duration_since(due).as_micros() as u64).max(1),
        took_us: (done.saturating_duration_since(at).as_micros() as u64).max(1),
    }
}

/// Drains every gate's journal at once; the scans each one has left.
async fn drain(gates: &[Arc<Gate>]) -> Vec<usize> {
    let tasks: Vec<_> = gates
        .iter()
        .map(|g| {
            let g = g.clone();
            tokio::spawn(async move { g.drain(DRAIN_TIMEOUT).await })
        })
        .collect();
    let mut left = Vec::with_capacity(tasks.len());
    for t in tasks {
        left.push(t.await.unwrap_or(usize::MAX));
    }
    left
}

/// What the node says once the gates have drained.
#[derive(Debug, Default)]
struct Found {
    /// `checkin_offline` requests it answered since it came back.
    uploads: u64,
    /// Its conflicts of this run's tickets: the ticket's index and the kind.
    conflicts: Vec<(u32, ConflictKind)>,
    /// Tickets admitted offline that it does not hold as used: index and state.
    not_used: Vec<(u32, String)>,
    /// Tickets admitted offline, each once.
    offline_admitted: usize,
}

impl Found {
    /// Asks the node through `admin`.
    async fn ask(
        admin: &Client,
        codes: &[CodeBytes],
        presented: &[Presented],
    ) -> Result<Found, String> {
        let uploads = admin
            .metrics(op::CHECKIN_OFFLINE)
            .await
            .map_err(|e| format!("reading the node's metrics: {e}"))?
            .latency_us
            .count();
        let index: HashMap<CodeBytes, u32> = codes
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, i as u32))
            .collect();
        let mut conflicts = Vec::new();
        let mut after = 0;
        loop {
            let (items, next) = admin
                .conflicts(Some(PROVIDER), after)
                .await
                .map_err(|e| format!("reading the node's conflicts: {e}"))?;
            for c in items {
                if let Some(&t) = index.get(&c.code) {
                    conflicts.push((t, c.kind));
                }
            }
            match next {
                Some(n) if n > after => after = n,
                _ => break,
            }
        }
        let mut offline: Vec<u32> = presented
            .iter()
            .filter(|p| !p.online && admitted(p))
            .map(|p| p.ticket)
            .collect();
        offline.sort_unstable();
        offline.dedup();
        let mut not_used = Vec::new();
        for chunk in offline.chunks(STATUS_IN_FLIGHT) {
            let mut asks = tokio::task::JoinSet::new();
            for &t in chunk {
                let (admin, code) = (admin.clone(), codes[t as usize]);
                asks.spawn(async move { (t, admin.status(&code).await) });
            }
            while let Some(done) = asks.join_next().await {
                let (t, status) = done.map_err(|e| format!("asking a ticket's state: {e}"))?;
                match status {
                    Ok(info) if info.state == TicketStateName::Used => {}
                    Ok(info) => not_used.push((t, info.state.name().to_string())),
                    Err(e) => not_used.push((t, format!("no answer ({e})"))),
                }
            }
        }
        not_used.sort_unstable();
        Ok(Found {
            uploads,
            conflicts,
            not_used,
            offline_admitted: offline.len(),
        })
    }
}

/// Drops the gates, waits until each is gone, and counts the scans their journals say the
/// node answered late (`None` if a journal cannot be read).
async fn read_journals(gates: Vec<Arc<Gate>>, dir: &Path) -> Option<u64> {
    let n = gates.len();
    let weak: Vec<Weak<Gate>> = gates.iter().map(Arc::downgrade).collect();
    drop(gates);
    let deadline = Instant::now() + GATE_GONE_WAIT;
    while weak.iter().any(|w| w.strong_count() > 0) {
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut late = 0;
    for id in 1..=n {
        let journal = Journal::open(&dir.join(format!("gate-{id}")).join("journal")).ok()?;
        late += journal
            .scans()
            .iter()
            .filter(|r| matches!(r, Record::LateOnline(_)))
            .count() as u64;
    }
    Some(late)
}

fn admitted(p: &Presented) -> bool {
    p.kind == Some(OutcomeKind::Admitted)
}

fn count(presented: &[Presented], f: impl Fn(&Presented) -> bool) -> u64 {
    presented.iter().filter(|p| f(p)).count() as u64
}

/// The planted duplicates admitted offline at two different gates.
fn planted_admitted_twice(presented: &[Presented]) -> HashSet<u32> {
    let mut gates: HashMap<u32, HashSet<u16>> = HashMap::new();
    for p in presented
        .iter()
        .filter(|p| p.planted && !p.online && admitted(p))
    {
        gates.entry(p.ticket).or_default().insert(p.gate);
    }
    gates
        .into_iter()
        .filter(|(_, g)| g.len() == 2)
        .map(|(t, _)| t)
        .collect()
}

/// Up to [`NAMED_MAX`] of `tickets`' codes, for a failed check's detail.
fn named(tickets: impl IntoIterator<Item = u32>, codes: &[CodeBytes]) -> String {
    let all: Vec<u32> = tickets.into_iter().collect();
    let mut shown: Vec<String> = all
        .iter()
        .take(NAMED_MAX)
        .map(|&t| codes[t as usize].to_text().as_str().to_string())
        .collect();
    if all.len() > NAMED_MAX {
        shown.push(format!("and {} more", all.len() - NAMED_MAX));
    }
    shown.join(", ")
}

/// Every check, in order.
fn checks(
    presented: &[Presented],
    codes: &[CodeBytes],
    found: &Found,
    left: &[usize],
    planted_asked: u32,
    interrupted: bool,
) -> Vec<OutageCheck> {
    let planted = planted_admitted_twice(presented);
    vec![
        no_gate_admits_twice(presented, codes),
        no_online_double_admit(presented, codes),
        conflicts_are_the_planted_duplicates(&planted, found, codes),
        offline_admits_on_node(found, codes),
        planted_duplicates_admitted_offline(&planted, planted_asked, interrupted, codes),
        journals_uploaded(left),
    ]
}

fn check(name: &str, passed: bool, detail: String) -> OutageCheck {
    OutageCheck {
        name: name.into(),
        passed,
        detail,
    }
}

/// The tickets counted more than once by `key` among the admits `admits` keeps.
fn admitted_twice<K: std::hash::Hash + Eq>(
    presented: &[Presented],
    admits: impl Fn(&Presented) -> bool,
    key: impl Fn(&Presented) -> K,
) -> (usize, Vec<u32>) {
    let mut seen: HashMap<K, (u32, u32)> = HashMap::new();
    for p in presented.iter().filter(|p| admitted(p) && admits(p)) {
        seen.entry(key(p)).or_insert((p.ticket, 0)).1 += 1;
    }
    let mut twice: Vec<u32> = seen
        .values()
        .filter(|(_, n)| *n > 1)
        .map(|(t, _)| *t)
        .collect();
    twice.sort_unstable();
    (seen.len(), twice)
}

/// (a) A gate admits a ticket once: its replica and journal know what it admitted.
fn no_gate_admits_twice(presented: &[Presented], codes: &[CodeBytes]) -> OutageCheck {
    let (pairs, twice) = admitted_twice(presented, |_| true, |p| (p.gate, p.ticket));
    let detail = match twice.is_empty() {
        true => format!("{pairs} admits, none twice at one gate"),
        false => format!(
            "admitted twice at one gate: {}",
            named(twice.clone(), codes)
        ),
    };
    check("no_gate_admits_twice", twice.is_empty(), detail)
}

/// (b) The node admits a ticket once.
fn no_online_double_admit(presented: &[Presented], codes: &[CodeBytes]) -> OutageCheck {
    let (tickets, twice) = admitted_twice(presented, |p| p.online, |p| p.ticket);
    let detail = match twice.is_empty() {
        true => format!("{tickets} tickets admitted online, each once"),
        false => format!("admitted online twice: {}", named(twice.clone(), codes)),
    };
    check("no_online_double_admit", twice.is_empty(), detail)
}

/// (c) The node's conflicts of the run's tickets are the planted duplicates, each a double
/// entry, once.
fn conflicts_are_the_planted_duplicates(
    planted: &HashSet<u32>,
    found: &Found,
    codes: &[CodeBytes],
) -> OutageCheck {
    let mut seen: HashMap<u32, u32> = HashMap::new();
    let mut wrong_kind = Vec::new();
    for &(t, kind) in &found.conflicts {
        *seen.entry(t).or_default() += 1;
        if kind != ConflictKind::DoubleEntry {
            wrong_kind.push(t);
        }
    }
    let sorted = |mut v: Vec<u32>| {
        v.sort_unstable();
        v
    };
    let missing = sorted(
        planted
            .iter()
            .filter(|t| !seen.contains_key(t))
            .copied()
            .collect(),
    );
    let extra = sorted(
        seen.keys()
            .filter(|t| !planted.contains(t))
            .copied()
            .collect(),
    );
    let repeated = sorted(
        seen.iter()
            .filter(|(_, n)| **n > 1)
            .map(|(t, _)| *t)
            .collect(),
    );
    let mut detail = format!(
        "{} conflicts for {} planted duplicates admitted offline twice",
        found.conflicts.len(),
        planted.len()
    );
    let mut exact = true;
    for (what, list) in [
        ("missing", missing),
        ("not planted", extra),
        ("recorded more than once", repeated),
        ("not double_entry", wrong_kind),
    ] {
        if !list.is_empty() {
            exact = false;
            detail.push_str(&format!("; {what}: {}", named(list, codes)));
        }
    }
    check("conflicts_are_the_planted_duplicates", exact, detail)
}

/// (d) Every offline admit reached the node.
fn offline_admits_on_node(found: &Found, codes: &[CodeBytes]) -> OutageCheck {
    let detail = match found.not_used.first() {
        None => format!(
            "all {} tickets admitted offline are used on the node",
            found.offline_admitted
        ),
        Some((_, state)) => format!(
            "{} of {} tickets admitted offline are not used on the node ({state}): {}",
            found.not_used.len(),
            found.offline_admitted,
            named(found.not_used.iter().map(|(t, _)| *t), codes)
        ),
    };
    check("offline_admits_on_node", found.not_used.is_empty(), detail)
}

/// (e) The duplicates were planted: else (c) would hold of fewer (not checked of a run
/// stopped early).
fn planted_duplicates_admitted_offline(
    planted: &HashSet<u32>,
    asked: u32,
    interrupted: bool,
    codes: &[CodeBytes],
) -> OutageCheck {
    let all = planted.len() == asked as usize;
    let n = planted.len();
    let detail = match (all, interrupted) {
        (true, _) => format!("{n} of {asked} admitted offline at both their gates"),
        (false, true) => format!(
            "not checked: the run was stopped with {n} of {asked} admitted offline at both \
             their gates"
        ),
        (false, false) => format!(
            "{n} of {asked} admitted offline at both their gates; not: {}",
            named((0..asked).filter(|t| !planted.contains(t)), codes)
        ),
    };
    check(
        "planted_duplicates_admitted_offline",
        all || interrupted,
        detail,
    )
}

/// (f) The journals were handed over.
fn journals_uploaded(left: &[usize]) -> OutageCheck {
    let stuck: usize = left.iter().map(|&n| n.min(1_000_000_000)).sum();
    let detail = match stuck {
        0 => format!(
            "every gate's journal uploaded within {} s",
            DRAIN_TIMEOUT.as_secs()
        ),
        _ => format!(
            "{stuck} offline scans left in {} gates' journals after {} s",
            left.iter().filter(|&&n| n > 0).count(),
            DRAIN_TIMEOUT.as_secs()
        ),
    };
    check("journals_uploaded", stuck == 0, detail)
}

/// Percentiles of `us` (`None` for none).
fn latency(us: impl Iterator<Item = u64>) -> Option<Latency> {
    let mut h = crate::new_histogram();
    for v in us {
        let _ = h.record(v);
    }
    (!h.is_empty()).then(|| Latency::of(&h))
}

/// What the run's report is made of.
struct RunParts<'a> {
    /// The run's settings.
    config: &'a Config,
    /// How many tickets, and why.
    sizing: &'a Sizing,
    /// The node's sync mode.
    sync: String,
    /// Every presentation.
    presented: &'a [Presented],
    /// From the clock's start until every gate had stopped presenting.
    elapsed: Duration,
    /// A gate's queue ended before the time was up.
    ran_out: bool,
    /// Stopped early (Ctrl-C).
    interrupted: bool,
    /// This process's CPU time over the run.
    cpu: Duration,
    /// The machine's CPUs over the run.
    machine_load: Option<report::MachineLoad>,
    /// The scenario's own findings.
    outage: OutageReport,
}

/// The run's report, as the other scenarios give theirs, with the outage's own findings.
fn run_report(p: RunParts<'_>) -> RunReport {
    let config = p.config;
    let mut hist = crate::new_histogram();
    let mut per_second: Vec<hdrhistogram::Histogram<u64>> = Vec::new();
    let mut outcomes: std::collections::BTreeMap<String, u64> = Default::default();
    for x in p.presented {
        let _ = hist.record(x.latency_us);
        let s = x.due.as_secs() as usize;
        while per_second.len() <= s {
            per_second.push(crate::new_histogram());
        }
        let _ = per_second[s].record(x.latency_us);
        let name = x.kind.map_or("refused", |k| k.name());
        *outcomes.entry(name.to_string()).or_default() += 1;
    }
    let requests = p.presented.len() as u64;
    let measured = p.elapsed.max(Duration::from_millis(1));
    // A planted duplicate may be admitted at both its gates; any ticket more is a double
    // admit.
    let mut admits: HashMap<u32, (u64, bool)> = HashMap::new();
    for x in p.presented.iter().filter(|x| admitted(x)) {
        let e = admits.entry(x.ticket).or_default();
        e.0 += 1;
        e.1 |= x.planted;
    }
    let double_admits = admits
        .values()
        .map(|&(n, planted)| n.saturating_sub(if planted { 2 } else { 1 }))
        .sum();
    RunReport {
        target: config.target.clone(),
        round: 1,
        slot: 0,
        sync: p.sync,
        mode: "open".into(),
        shape: Some(Shape::Flat.name().into()),
        gates: config.gates,
        inflight: 1,
        requested_rate: Some(rate_of(config)),
        requests,
        throughput_per_s: requests as f64 / measured.as_secs_f64(),
        measured_s: measured.as_secs_f64(),
        warmup_excluded: false,
        tickets_ran_out: p.ran_out,
        latency_us: Latency::of(&hist),
        outcomes,
        errors: 0,
        timeouts: 0,
        double_admits,
        forged_admits: 0,
        client_cpu_percent: 100.0 * p.cpu.as_secs_f64() / p.elapsed.as_secs_f64().max(1e-9),
        server_cpu_us_per_request: None,
        datagrams_per_request: None,
        server_memory_per_gate_bytes: None,
        machine_load: p.machine_load,
        percentiles: report::Percentiles::of(&hist),
        timeline: report::Second::series(&per_second, Duration::ZERO, config.duration),
        node: None,
        quic: None,
        interrupted: p.interrupted,
        gates_lost: 0,
        tickets: u64::from(p.sizing.tickets),
        tickets_sized_by: p.sizing.by.to_string(),
        probe_rate_per_s: None,
        tickets_capped: p.sizing.capped,
        node_timeline: Vec::new(),
        left_in_node: crate::left_in_node(config, p.sizing, u64::from(p.sizing.tickets)),
        faults: u64::from(p.outage.cut_at_s.is_some()),
        reconnects: 0,
        indeterminate: 0,
        outage: Some(p.outage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(n: u32) -> Vec<CodeBytes> {
        (0..n)
            .map(|i| {
                let mut b = [0u8; 20];
                b[0] = 1;
                b[6..10].copy_from_slice(&i.to_be_bytes());
                CodeBytes::from_slice(&b).expect("format 1")
            })
            .collect()
    }

    fn scan(ticket: u32, gate: u16, planted: bool, online: bool) -> Presented {
        Presented {
            ticket,
            gate,
            planted,
            kind: Some(OutcomeKind::Admitted),
            online,
            due: Duration::ZERO,
            latency_us: 1,
            took_us: 1,
        }
    }

    /// Ticket 0 planted at gates 1 and 2 (both offline), 1 and 2 online, 3 offline.
    fn presented() -> Vec<Presented> {
        vec![
            scan(0, 1, true, false),
            scan(0, 2, true, false),
            scan(1, 1, false, true),
            scan(2, 2, false, true),
            scan(3, 2, false, false),
        ]
    }

    fn found() -> Found {
        Found {
            uploads: 2,
            conflicts: vec![(0, ConflictKind::DoubleEntry)],
            not_used: Vec::new(),
            offline_admitted: 2,
        }
    }

    fn failed(checks: &[OutageCheck]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect()
    }

    #[test]
    fn every_check_holds_of_a_run_that_went_right() {
        let checks = checks(&presented(), &codes(4), &found(), &[0, 0], 1, false);
        assert_eq!(checks.len(), 6);
        assert_eq!(failed(&checks), Vec::<&str>::new(), "{checks:?}");
    }

    /// Each thing that must hold, broken on its own, fails its own check and names the code.
    #[test]
    fn each_check_fails_when_what_it_guards_is_broken() {
        let codes = codes(4);
        let text = |t: usize| codes[t].to_text().as_str().to_string();
        // The planted duplicate's conflict missing, one for a ticket not planted, one of
        // another kind, or one recorded twice.
        for conflicts in [
            vec![],
            vec![
                (0, ConflictKind::DoubleEntry),
                (3, ConflictKind::DoubleEntry),
            ],
            vec![(0, ConflictKind::AfterRevoke)],
            vec![
                (0, ConflictKind::DoubleEntry),
                (0, ConflictKind::DoubleEntry),
            ],
        ] {
            let f = Found {
                conflicts,
                ..found()
            };
            let c = checks(&presented(), &codes, &f, &[0, 0], 1, false);
            assert_eq!(
                failed(&c),
                ["conflicts_are_the_planted_duplicates"],
                "{c:?}"
            );
        }
        // An offline admit the node does not hold as used.
        let f = Found {
            not_used: vec![(3, "valid".into())],
            ..found()
        };
        let c = checks(&presented(), &codes, &f, &[0, 0], 1, false);
        assert_eq!(failed(&c), ["offline_admits_on_node"]);
        assert!(
            c[3].detail.contains(&text(3)) && c[3].detail.contains("valid"),
            "{c:?}"
        );
        // Ticket 1 admitted online again at another gate, and again at its own.
        let mut p = presented();
        p.push(scan(1, 2, false, true));
        let c = checks(&p, &codes, &found(), &[0, 0], 1, false);
        assert_eq!(failed(&c), ["no_online_double_admit"]);
        assert!(c[1].detail.contains(&text(1)), "{c:?}");
        p.push(scan(1, 1, false, false));
        let c = checks(&p, &codes, &found(), &[0, 0], 1, false);
        assert_eq!(
            failed(&c),
            ["no_gate_admits_twice", "no_online_double_admit"]
        );
        // A planted duplicate answered online at one of its gates: not planted after all,
        // so its conflict is unexpected and the planting short.
        let mut p = presented();
        p[1].online = true;
        let c = checks(&p, &codes, &found(), &[0, 0], 1, false);
        assert_eq!(
            failed(&c),
            [
                "conflicts_are_the_planted_duplicates",
                "planted_duplicates_admitted_offline"
            ]
        );
        // A journal left with scans.
        let c = checks(&presented(), &codes, &found(), &[0, 3], 1, false);
        assert_eq!(failed(&c), ["journals_uploaded"]);
        assert!(
            c[5].detail.starts_with("3 offline scans left in 1 gates"),
            "{c:?}"
        );
    }
}
