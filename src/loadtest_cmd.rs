//! `stile loadtest`: a scenario against a node or the engine in process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use stile_engine::SyncMode;
use stile_loadtest::{Config, Report, Scenario};

/// Arguments of `stile loadtest`.
#[derive(Debug, clap::Args)]
pub struct LoadtestArgs {
    /// stadium, replay or forged.
    #[arg(long)]
    scenario: String,
    /// inproc, quic://HOST:PORT or redis://HOST:PORT.
    #[arg(long, default_value = "quic://127.0.0.1:7443")]
    target: String,
    /// Measured time (5s, 1m); warm-up comes on top.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up whose answers are not counted.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Gates (connections), gate ids 1..G of provider 1.
    #[arg(long, default_value_t = 64)]
    gates: u16,
    /// Check-ins in flight per gate.
    #[arg(long, default_value_t = 16)]
    inflight: u32,
    /// Tickets minted before the clock starts.
    #[arg(long, default_value_t = 1_000_000)]
    tickets: u32,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Data dir: certificates in DATA/tls for quic targets; the in-process engine's log goes
    /// in a temporary directory inside it.
    #[arg(long, default_value = crate::DATA_DEFAULT)]
    data: PathBuf,
    /// Sync mode of the in-process engine.
    #[arg(long, default_value = "always")]
    sync: String,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Start redis-server (from PATH) on the redis:// target's port, with appendonly yes and
    /// appendfsync always, in a temporary directory; stop it afterwards.
    #[arg(long)]
    spawn_redis: bool,
}

/// Runs `stile loadtest`; exits 2 if a ticket was admitted twice or a forged code admitted.
pub fn run(args: LoadtestArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn");
    let sync = SyncMode::parse(&args.sync)
        .with_context(|| format!("--sync {}: use always, batch or none", args.sync))?;
    let scenario = Scenario::parse(&args.scenario)?;
    if args.target == "inproc" {
        std::fs::create_dir_all(&args.data)
            .with_context(|| format!("making {}", args.data.display()))?;
    }
    let config = Config {
        scenario,
        target: args.target.clone(),
        gates: args.gates,
        inflight: args.inflight,
        duration: args.duration,
        warmup: args.warmup,
        tickets: args.tickets,
        seed: args.seed,
        data: args.data.clone(),
        sync,
        spawn_redis: args.spawn_redis,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let run = runtime.block_on(stile_loadtest::run(&config))?;
    let report = Report {
        scenario: scenario.name().into(),
        seed: args.seed,
        machine: stile_loadtest::report::Machine::this(),
        runs: vec![run],
    };
    print!("{}", report.text());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let r = &report.runs[0];
    let forged_admits = if scenario == Scenario::Forged {
        r.outcomes.get("admitted").copied().unwrap_or(0)
    } else {
        0
    };
    if r.double_admits > 0 || forged_admits > 0 {
        eprintln!(
            "stile loadtest: {} double admits, {} forged codes admitted",
            r.double_admits, forged_admits
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}
