//! `stile loadtest`: a scenario against a node, the engine in process or Redis; or, with
//! `--compare`, against several of them one after another.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use stile_engine::SyncMode;
use stile_loadtest::report::{Ratio, RatioMedian};
use stile_loadtest::{Config, Report, Scenario, Shape};

/// Arguments of `stile loadtest`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Tickets: unless --tickets is given, a run mints as many as it will present: an open loop its \
rate over the warm-up and the measured time (10 % more); a closed loop the answers per second \
of a 1 s probe run first (twice as many). Against a node they go into --partition \
(65535 unless told otherwise, a partition of their own) and stay there after the run; the \
summary says how many and prints the `stile purge --partition 65535 --node ADDR` that removes \
them.

Faults: with --spawn-node the tester starts `stile node` itself (data in DATA/node, its output \
in DATA/node.log) and --kill-every / --pause-every strike it once the tickets are minted; gates \
then reconnect and resend what is unanswered with the same scan ids, and the report counts \
faults, reconnects and indeterminate scans. Check the promise with --check-history.

Shards: --target quic://A+B names a shard's nodes (a primary and its standby, in any order). \
Gates connect to the node believed to lead; one answered not_leader, or whose connection is \
lost, connects to the leader named (else the next node) and resends what is unanswered with \
the same scan ids, so --inflight is at most 256, as with faults. The admin follows the leader.

Outage (--scenario outage --spawn-node): G gates of the stile-gate library run in this process \
(state and certificates in DATA/gates/gate-N, made afresh each run; a gate decides offline when \
the node has not answered within 300 ms), each presenting its share of the tickets at --rate \
(default 100 a second a gate). Mid-run the node is killed and started again --outage later \
(default 10s); a quarter into the outage each gate presents its planted duplicates first, \
tickets also presented at another gate (--duplicates, default as many as fit up to 20). At the \
end the gates upload their journals and the report says admits online and offline, uploads and \
conflicts, and checks: no gate admits a ticket twice, no ticket is admitted online twice, the \
node's conflicts are the planted duplicates, every offline admit is used on the node. A failed \
check exits 2.

Exit status: 0 the runs held; 1 requests went unanswered, gates lost their connection or a \
target failed; 2 a ticket was admitted twice, a forged code admitted, the history holds a \
violation or an outage check failed (and, from clap, bad arguments); 3 the history check was \
undecided; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP), the figures so far reported.")]
pub struct LoadtestArgs {
    /// stadium, rail, replay, forged, mixed or outage.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// inproc, quic://HOST:PORT, a shard's nodes quic://HOST:PORT+HOST:PORT (gates follow
    /// its leader), quic-echo://IP:PORT (the transport alone: a bare QUIC echo with the
    /// node's TLS, started there for the run; port 0 for a free one), redis://HOST:PORT, or
    /// redis+tls://HOST:PORT (Redis over TLS 1.3: its certificate must chain to
    /// DATA/tls/ca.crt and name HOST; each gate presents a certificate issued from that CA
    /// for the run, the admin connection --admin-cert). A Redis not spawned is emptied
    /// (FLUSHDB) before its tickets are loaded, so it must be empty or a load test's.
    #[arg(
        long,
        default_value = "quic://127.0.0.1:7443",
        conflicts_with = "compare"
    )]
    target: String,
    /// Run the same scenario against each of these targets, one after another, and print
    /// the first one's throughput and latency against each other's.
    #[arg(long, value_delimiter = ',')]
    compare: Vec<String>,
    /// With --compare: run the targets in turn this many times (A, B, A, B, …) and print
    /// each round's ratios and their medians. On a shared machine conditions drift from
    /// one run to the next; alternating lets the drift fall on both sides.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Open loop: this many check-ins per second in all, each measured from the moment it
    /// was due. Without it: closed loop, as fast as answers come (outage: 100 a second a
    /// gate).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: flat (the rate throughout) or peak (a tenth of the rate rising to all of
    /// it over the first 40 % of the run, held for 20 %, then falling back).
    #[arg(long, value_enum, default_value_t = Shape::Flat, requires = "rate")]
    shape: Shape,
    /// Measured time (5s, 1m); warm-up comes on top.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up whose answers are not counted.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Gates (connections), gate ids 1..G of provider 1 (1 to 4096).
    #[arg(long, default_value_t = 64)]
    gates: u32,
    /// Check-ins in flight per gate (1 to 4096).
    #[arg(long, default_value_t = INFLIGHT_DEFAULT)]
    inflight: u32,
    /// Tickets minted before the clock starts (1 to 20,000,000). Without it: as many as
    /// the run presents, from --rate, or from a 1 s probe in a closed loop.
    #[arg(long)]
    tickets: Option<u32>,
    /// Partition the tickets are minted into: 65535 holds nothing of an operator's (bookings
    /// and `stile mint` use 0), and `stile purge --partition 65535` empties it. A node
    /// serves 0 and 65535.
    #[arg(long, default_value_t = stile_loadtest::LOADTEST_PARTITION)]
    partition: u16,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Data dir: certificates in DATA/tls for quic and redis+tls targets; the in-process
    /// engine's log goes in a temporary directory inside it.
    #[arg(long, default_value = crate::DATA_DEFAULT)]
    data: PathBuf,
    /// The admin certificate a quic:// target mints with, a redis+tls:// one connects with
    /// (default DATA/tls/admin-admin.crt).
    #[arg(long, value_name = "FILE")]
    admin_cert: Option<PathBuf>,
    /// Its private key (default: beside it, .key).
    #[arg(long, value_name = "FILE", requires = "admin_cert")]
    admin_key: Option<PathBuf>,
    /// Sync mode of the in-process engine (--target inproc; a node's mode is its own).
    #[arg(long, value_enum, default_value_t = crate::serve::SyncArg::Always)]
    sync: crate::serve::SyncArg,
    /// Log segments (64 MiB each) the in-process engine keeps written with zeros ahead of
    /// need, as `stile node --log-runway` does; 0: one at a time, once the log holds 1 MiB.
    #[arg(long, value_name = "SEGMENTS", default_value_t = stile_engine::wal::RUNWAY_DEFAULT, value_parser = clap::value_parser!(u32).range(0..=i64::from(stile_engine::wal::RUNWAY_MAX)))]
    log_runway: u32,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an HTML report with SVG plots into this directory (DIR/index.html).
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress: neither the minting count nor the bar.
    #[arg(long)]
    quiet: bool,
    /// Start redis-server (from PATH) on the redis:// target's address, with appendonly yes and
    /// appendfsync always, in a temporary directory; stop it afterwards. For redis+tls://,
    /// on that port TLS only, with DATA/tls/node.crt and clients' certificates required.
    #[arg(long)]
    spawn_redis: bool,
    /// Record every attempt of every scan as JSON lines (docs/FORMAT.md §12), for `stile
    /// history check`.
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// Check the runs' history at the end against one atomic ticket per ticket (into
    /// --history FILE, or a file in the data dir kept only if the check fails).
    #[arg(long)]
    check_history: bool,
    /// Start the node to test: `stile node` on DATA/node with dev certificates in DATA/tls
    /// (made if none), on a free loopback port; node options after `--`. Stopped at the end.
    #[arg(long, conflicts_with_all = ["target", "compare", "spawn_redis"])]
    spawn_node: bool,
    /// SIGKILL the spawned node each time it has run this long, and start it again on the
    /// same data; gates reconnect and resend what is unanswered.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration, requires = "spawn_node")]
    kill_every: Option<Duration>,
    /// SIGSTOP the spawned node each time it has run this long (SIGCONT after --pause-for).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration, requires_all = ["spawn_node", "pause_for"])]
    pause_every: Option<Duration>,
    /// How long each pause lasts.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration, requires = "pause_every")]
    pause_for: Option<Duration>,
    /// Outage: how long the spawned node is cut off (killed, then started again), from the
    /// middle of the run [default: 10s].
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    outage: Option<Duration>,
    /// Outage: tickets presented at two gates while the node is cut off (the conflicts to
    /// expect) [default: as many as fit the outage, up to 20].
    #[arg(long, value_name = "N")]
    duplicates: Option<u32>,
    /// Options of the spawned node (`stile node`), after `--`.
    #[arg(last = true, value_name = "NODE ARGS", requires = "spawn_node")]
    node_args: Vec<String>,
}

/// What every run of one command shares: the history file and the node it started.
#[derive(Default)]
struct Shared {
    history: Option<std::sync::Arc<stile_loadtest::history::HistoryLog>>,
    /// The file is only for `--check-history` (no `--history`): removed if it holds.
    history_is_scratch: bool,
    node: Option<std::sync::Arc<stile_loadtest::spawn::NodeProcess>>,
}

/// Runs `stile loadtest`; exits 2 if a ticket was admitted twice or a forged code admitted.
pub fn run(args: LoadtestArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn");
    let scenario = args.scenario;
    // Everything that can be checked is, before a node is started or a history file
    // truncated for nothing; the spawned node's address is not known yet.
    let planned = if args.spawn_node {
        vec!["quic://127.0.0.1:0".to_string()]
    } else if args.compare.is_empty() {
        vec![args.target.clone()]
    } else {
        args.compare.clone()
    };
    check_options(&args, &planned)?;
    for target in &planned {
        let config = Config {
            // Checked on their own here: they need the node, not started yet.
            faults: stile_loadtest::Faults::default(),
            ..config_for(
                &args,
                target,
                &stile_loadtest::Stop::default(),
                &Shared::default(),
            )
        };
        config
            .validate_options()
            .with_context(|| format!("running {} against {target}", scenario.name()))?;
    }
    faults_of(&args).validate(args.inflight)?;
    stile_loadtest::output::check(args.json.as_deref(), args.report.as_deref())?;
    if let Some(h) = &args.history {
        stile_loadtest::output::check_history_path(h)?;
    }
    let shared = open_shared(&args)?;
    let targets = match &shared.node {
        Some(node) => vec![format!("quic://{}", node.addr())],
        None => planned,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stop = install_stop(&runtime)?;
    // Every target is checked before the first runs: a --compare must not fail at its last
    // target after minutes of the others.
    for target in &targets {
        let config = config_for(&args, target, &stop, &shared);
        config
            .validate()
            .and_then(|()| stile_loadtest::Target::precheck(&config))
            .with_context(|| format!("running {} against {target}", scenario.name()))?;
    }
    // Before the run: a mistyped path must not cost a long run its figures.
    stile_loadtest::output::check(args.json.as_deref(), args.report.as_deref())?;
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let Rounds {
        runs,
        skipped,
        mut failed,
    } = run_rounds(&args, &targets, &runtime, &stop, &shared)?;
    if runs.is_empty() {
        eprintln!("stile loadtest: nothing was measured; no report written");
        shared.drop_scratch_history();
        return Ok(ExitCode::from(if failed { 1 } else { INTERRUPTED }));
    }
    let interrupted = skipped || runs.iter().any(|r| r.interrupted);
    let ratios = Ratio::of(&runs);
    let history = check_history(&args, &shared)?;
    let report = Report {
        version: env!("CARGO_PKG_VERSION").into(),
        command: stile_loadtest::report::shell_words(&command_line()),
        date: started,
        scenario: scenario.name().into(),
        seed: args.seed,
        machine: stile_loadtest::report::Machine::this(),
        ratio_medians: RatioMedian::of(&ratios),
        ratios,
        runs,
        history,
    };
    write_outputs(&args, &report)?;
    let bad = verdict(&report, &mut failed);
    match report.history.as_ref().map(|h| h.verdict.as_str()) {
        Some("violation") => return Ok(ExitCode::from(2)),
        Some("undecided") if !bad => return Ok(ExitCode::from(3)),
        Some("unwritten") => failed = true,
        _ => {}
    }
    if bad {
        return Ok(ExitCode::from(2));
    }
    if failed {
        return Ok(ExitCode::FAILURE);
    }
    if interrupted {
        return Ok(ExitCode::from(INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}

impl Shared {
    /// Removes a scratch history (no `--history`) that no check will read.
    fn drop_scratch_history(&self) {
        if let Some(h) = self.history.as_ref().filter(|_| self.history_is_scratch) {
            let _ = std::fs::remove_file(h.path());
        }
    }
}

/// Opens the history file and starts the node, as the options ask.
fn open_shared(args: &LoadtestArgs) -> anyhow::Result<Shared> {
    let mut shared = Shared::default();
    // The node first: a node that does not start leaves no history file behind.
    if args.spawn_node {
        let spec = stile_loadtest::spawn::SpawnNode {
            program: std::env::current_exe().context("finding this program to start a node")?,
            data: args.data.clone(),
            args: args.node_args.clone(),
        };
        let node = stile_loadtest::spawn::NodeProcess::start(spec)
            .map_err(|e| anyhow::anyhow!("--spawn-node: {e}"))?;
        if !args.quiet {
            eprintln!(
                "stile loadtest: started a node on quic://{} (data {}, log {})",
                node.addr(),
                args.data.join("node").display(),
                node.log_path().display()
            );
        }
        shared.node = Some(std::sync::Arc::new(node));
    }
    let history = match (&args.history, args.check_history) {
        (Some(path), _) => Some(path.clone()),
        (None, true) => {
            std::fs::create_dir_all(&args.data)
                .with_context(|| format!("making {}", args.data.display()))?;
            shared.history_is_scratch = true;
            Some(
                args.data
                    .join(format!("loadtest-history-{}.jsonl", std::process::id())),
            )
        }
        (None, false) => None,
    };
    if let Some(path) = history {
        let log = stile_loadtest::history::HistoryLog::create(&path)
            .with_context(|| format!("cannot write the history {}", path.display()))?;
        shared.history = Some(log);
    }
    Ok(shared)
}

/// With `--check-history`: the runs' history, checked (a scratch file is removed if it
/// holds, and kept for a look if not).
fn check_history(
    args: &LoadtestArgs,
    shared: &Shared,
) -> anyhow::Result<Option<stile_loadtest::report::HistoryCheck>> {
    let Some(log) = &shared.history else {
        return Ok(None);
    };
    let path = log.path().to_path_buf();
    if let Err(e) = log.finish() {
        // The runs' figures still stand: the report is written, the history said broken.
        eprintln!(
            "stile loadtest: the history {} could not be written whole: {e}",
            path.display()
        );
        shared.drop_scratch_history();
        return Ok(Some(stile_loadtest::report::HistoryCheck {
            file: path.display().to_string(),
            verdict: "unwritten".into(),
            operations: 0,
            tickets: 0,
            indeterminate: 0,
            summary: format!("not written whole ({e}): not checked"),
        }));
    }
    if !args.check_history {
        return Ok(None);
    }
    if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
        // A pipe or a device cannot be read back.
        return Ok(Some(stile_loadtest::report::HistoryCheck {
            file: path.display().to_string(),
            verdict: "unchecked".into(),
            operations: 0,
            tickets: 0,
            indeterminate: 0,
            summary: "not a regular file: written, not read back, not checked".into(),
        }));
    }
    let file = std::fs::File::open(&path)
        .with_context(|| format!("cannot open the history {}", path.display()))?;
    let history = stile_history::parse(std::io::BufReader::new(file))
        .with_context(|| format!("history {}", path.display()))?;
    let checked = stile_history::check(&history, &stile_history::Options::default());
    let verdict = match checked.verdict {
        stile_history::Verdict::Consistent => "consistent",
        stile_history::Verdict::Violation { .. } => "violation",
        stile_history::Verdict::Undecided { .. } => "undecided",
    };
    let mut file = path.display().to_string();
    if shared.history_is_scratch && verdict == "consistent" {
        let _ = std::fs::remove_file(&path);
        file.push_str(" (removed: it held)");
    }
    Ok(Some(stile_loadtest::report::HistoryCheck {
        file,
        verdict: verdict.to_string(),
        operations: checked.ops as u64,
        tickets: checked.tickets as u64,
        indeterminate: checked.indeterminate as u64,
        summary: checked.to_string(),
    }))
}

/// Options that do not fit together, or fit no target given: said before anything runs.
fn check_options(args: &LoadtestArgs, targets: &[String]) -> anyhow::Result<()> {
    if !args.node_args.is_empty() && !args.spawn_node {
        anyhow::bail!(
            "options after `--` ({}) are for the node --spawn-node starts, and none is started",
            args.node_args.join(" ")
        );
    }
    check_outage_options(args)?;
    if args.rounds > 1 && args.compare.len() < 2 {
        anyhow::bail!(
            "--rounds {}: rounds alternate the targets of --compare; give --compare A,B",
            args.rounds
        );
    }
    if targets.iter().any(|t| t.trim().is_empty()) {
        anyhow::bail!("--compare: an empty target in {:?}", args.compare.join(","));
    }
    // Options for a kind of target that none of the targets is: said, not ignored (their
    // defaults are harmless).
    let inproc = targets.iter().any(|t| t == "inproc");
    for (given, flag) in [
        (args.sync != crate::serve::SyncArg::Always, "--sync"),
        (
            args.log_runway != stile_engine::wal::RUNWAY_DEFAULT,
            "--log-runway",
        ),
    ] {
        if given && !inproc {
            anyhow::bail!(
                "{flag} sets up the in-process engine (--target inproc); a node's log is set \
                 where it runs (`stile node {flag}`), and it reports its sync mode itself"
            );
        }
    }
    if (args.history.is_some() || args.check_history)
        && targets.iter().any(|t| t.starts_with("quic-echo://"))
    {
        anyhow::bail!(
            "a quic-echo:// target answers every scan `admitted` and decides nothing: its \
             history cannot be checked; leave it out of --history and --check-history runs"
        );
    }
    if args.spawn_redis && !targets.iter().any(|t| stile_loadtest::is_redis_target(t)) {
        // Harmless (scripts pass one set of options to every target), but said.
        eprintln!(
            "stile loadtest: --spawn-redis starts redis-server for a redis:// or redis+tls:// \
             target, and none is given: ignored"
        );
    }
    if targets.iter().any(|t| t == "inproc") {
        std::fs::create_dir_all(&args.data)
            .with_context(|| format!("making {}", args.data.display()))?;
    }
    Ok(())
}

/// The outage scenario's options, and the options it has no use for: said, not ignored.
fn check_outage_options(args: &LoadtestArgs) -> anyhow::Result<()> {
    if args.scenario != Scenario::Outage {
        if args.outage.is_some() || args.duplicates.is_some() {
            anyhow::bail!(
                "--outage and --duplicates set up the outage scenario (--scenario outage), not {}",
                args.scenario.name()
            );
        }
        return Ok(());
    }
    if !args.spawn_node {
        anyhow::bail!(
            "the outage scenario cuts off the node it tests by killing it and starting it again: \
             give --spawn-node (node options after --)"
        );
    }
    let unused = [
        (
            args.history.is_some() || args.check_history,
            "--history and --check-history",
        ),
        (
            args.kill_every.is_some() || args.pause_every.is_some(),
            "--kill-every and --pause-every",
        ),
        (args.inflight != INFLIGHT_DEFAULT, "--inflight"),
        (args.warmup != WARMUP_DEFAULT, "--warmup"),
    ];
    for (given, flag) in unused {
        if given {
            anyhow::bail!(
                "{flag}: not for the outage scenario, whose gates scan one code at a time from \
                 the start, decide offline themselves and check what must hold at the end; the \
                 node is cut off by --outage"
            );
        }
    }
    Ok(())
}

/// `--inflight`'s default.
const INFLIGHT_DEFAULT: u32 = 16;
/// `--warmup`'s default.
const WARMUP_DEFAULT: Duration = Duration::from_secs(1);

/// Ctrl-C, SIGTERM or SIGHUP: the run in progress ends as if its time were up and is
/// reported, the targets after it are not run, and a spawned Redis is stopped. A second one
/// quits at once.
fn install_stop(runtime: &tokio::runtime::Runtime) -> anyhow::Result<stile_loadtest::Stop> {
    let stop = stile_loadtest::Stop::default();
    let mut signals = runtime.block_on(async { crate::signals::Signals::install_with_hangup() })?;
    runtime.spawn({
        let stop = stop.clone();
        async move {
            signals.wait().await;
            stop.request();
            // Not eprintln!: after a hangup the terminal may be gone, and a failed write
            // must not end this task.
            let _ = writeln!(
                std::io::stderr(),
                "stile loadtest: stopping: the figures so far will be reported \
                 (interrupt again to quit at once)"
            );
            signals.wait().await;
            stile_loadtest::clean_up_and_exit(i32::from(INTERRUPTED));
        }
    });
    Ok(stop)
}

/// The run's configuration against `target`.
fn config_for(
    args: &LoadtestArgs,
    target: &str,
    stop: &stile_loadtest::Stop,
    shared: &Shared,
) -> Config {
    Config {
        scenario: args.scenario,
        target: target.to_owned(),
        // Beyond u16, still past the limit: the run's own check says what is allowed.
        gates: u16::try_from(args.gates).unwrap_or(u16::MAX),
        inflight: args.inflight,
        duration: args.duration,
        // The outage scenario counts every scan (a --warmup given is refused).
        warmup: match args.scenario {
            Scenario::Outage => Duration::ZERO,
            _ => args.warmup,
        },
        rate: args.rate,
        shape: args.shape,
        tickets: args.tickets,
        partition: args.partition,
        program: command_line()
            .into_iter()
            .next()
            .unwrap_or_else(|| "stile".into()),
        seed: args.seed,
        data: args.data.clone(),
        sync: SyncMode::from(args.sync),
        log_runway: args.log_runway,
        admin: args.admin_cert.clone().map(|cert| {
            let key = args
                .admin_key
                .clone()
                .unwrap_or_else(|| stile_certs::key_path_for(&cert));
            (cert, key)
        }),
        spawn_redis: args.spawn_redis && stile_loadtest::is_redis_target(target),
        progress: !args.quiet,
        stop: stop.clone(),
        history: shared.history.clone(),
        node: shared.node.clone(),
        faults: faults_of(args),
        outage: stile_loadtest::outage::Outage {
            cut_for: args
                .outage
                .unwrap_or(stile_loadtest::outage::OUTAGE_DEFAULT),
            duplicates: args.duplicates,
        },
    }
}

/// The faults the options ask for.
fn faults_of(args: &LoadtestArgs) -> stile_loadtest::Faults {
    stile_loadtest::Faults {
        kill_every: args.kill_every,
        pause_every: args.pause_every,
        pause_for: args.pause_for.unwrap_or_default(),
    }
}

/// What the rounds measured, and whether some were cut short or failed.
struct Rounds {
    /// Every run measured, in order.
    runs: Vec<stile_loadtest::RunReport>,
    /// A target was not run (interrupted).
    skipped: bool,
    /// A target failed (with --compare, the others still ran).
    failed: bool,
}

/// Runs every target, round after round (A, B, A, B, …).
fn run_rounds(
    args: &LoadtestArgs,
    targets: &[String],
    runtime: &tokio::runtime::Runtime,
    stop: &stile_loadtest::Stop,
    shared: &Shared,
) -> anyhow::Result<Rounds> {
    let scenario = args.scenario;
    let mut runs = Vec::with_capacity(targets.len() * args.rounds as usize);
    let (mut skipped, mut failed) = (false, false);
    // Each target's tickets are sized once (a closed loop's by a probe) and later rounds
    // mint as many again.
    let mut sized: Vec<Option<stile_loadtest::Sizing>> = vec![None; targets.len()];
    let rounds = (1..=args.rounds).flat_map(|round| {
        targets
            .iter()
            .enumerate()
            .map(move |(slot, t)| (round, slot, t))
    });
    for (round, slot, target) in rounds {
        if stop.is_requested() {
            skipped = true;
            if args.rounds == 1 {
                eprintln!("stile loadtest: interrupted: {target} not run");
                continue;
            }
            eprintln!("stile loadtest: interrupted: round {round} from {target} on not run");
            break;
        }
        if args.rounds > 1 && !args.quiet {
            eprintln!("stile loadtest: round {round} of {}: {target}", args.rounds);
        }
        let config = config_for(args, target, stop, shared);
        let known = sized[slot];
        let run = runtime.block_on(async {
            let sizing = match known {
                Some(s) => s,
                None => stile_loadtest::size(&config).await?,
            };
            sized[slot] = Some(stile_loadtest::Sizing {
                probe_tickets: 0,
                ..sizing
            });
            stile_loadtest::run_sized(&config, sizing).await
        });
        let run = match run {
            Err(stile_loadtest::LoadError::Interrupted) => {
                eprintln!("stile loadtest: interrupted before {target} was measured");
                if let Some(purge) = stile_loadtest::purge_command(&config) {
                    eprintln!(
                        "stile loadtest: tickets it minted stay in partition {}; remove them \
                         with: {purge}",
                        config.partition
                    );
                }
                skipped = true;
                continue;
            }
            other => other,
        };
        let run = run.with_context(|| {
            format!(
                "running {scenario} against {target}",
                scenario = scenario.name()
            )
        });
        match run {
            Ok(mut run) => {
                (run.round, run.slot) = (round, slot);
                runs.push(run);
            }
            // The runs before it keep their figures, and the targets after it still run.
            Err(e) if targets.len() > 1 => {
                eprintln!("stile: {e:#}");
                failed = true;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Rounds {
        runs,
        skipped,
        failed,
    })
}

/// The report as text (on standard output, or standard error when the JSON goes there),
/// as JSON and as HTML, where asked.
fn write_outputs(args: &LoadtestArgs, report: &Report) -> anyhow::Result<()> {
    // With the JSON on standard output, the text goes to stderr: stdout is one document.
    let json_on_stdout = args
        .json
        .as_deref()
        .is_some_and(stile_loadtest::output::is_stdout);
    if json_on_stdout {
        eprint!("{}", report.text());
    } else {
        print!("{}", report.text());
    }
    if let Some(path) = &args.json {
        stile_loadtest::output::write_json(report, path)?;
    }
    if let Some(dir) = &args.report {
        stile_loadtest::html::write(report, dir)?;
        let line = format!("report: {}", dir.join("index.html").display());
        if json_on_stdout {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    Ok(())
}

/// Says what went wrong in the runs: `true` if a ticket was admitted twice, a forged code
/// admitted or an outage check failed; sets `failed` if requests went unanswered.
fn verdict(report: &Report, failed: &mut bool) -> bool {
    let mut bad = false;
    for r in &report.runs {
        if r.double_admits > 0 || r.forged_admits > 0 {
            eprintln!(
                "stile loadtest: {}: {} double admits, {} forged codes admitted",
                r.target, r.double_admits, r.forged_admits
            );
            bad = true;
        }
        if let Some(o) = &r.outage {
            for c in o.failed() {
                eprintln!(
                    "stile loadtest: {}: check {} failed: {}",
                    r.target, c.name, c.detail
                );
                bad = true;
            }
        }
        // A run some of whose requests went unanswered does not measure what it claims to.
        if r.timeouts + r.errors > 0 || r.gates_lost > 0 {
            eprintln!(
                "stile loadtest: {}: {} requests timed out and {} failed; {} gates lost",
                r.target, r.timeouts, r.errors, r.gates_lost
            );
            *failed = true;
        }
    }
    bad
}

/// This process's command line, as it was started.
fn command_line() -> Vec<String> {
    std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// The exit status of a run cut short by Ctrl-C or SIGTERM (128 + SIGINT, as shells report
/// a command that SIGINT stopped).
const INTERRUPTED: u8 = 130;
