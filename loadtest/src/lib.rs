//! stile's load tester: mints tickets before the clock starts, then drives a target with G
//! gates, each keeping up to N check-ins in flight, and reports throughput, latency
//! percentiles (HDR histograms, warm-up excluded) and every outcome.
//!
//! Targets: `inproc` (the engine in this process, with its own data dir and sync mode) and
//! `quic://HOST:PORT` (a node, with gate certificates issued from `DATA/tls`).
//! Scenarios: `stadium` (each ticket once, spread over the gates), `replay` (every code at
//! several gates at once: exactly one may be admitted) and `forged` (bit-flipped and random
//! codes: none may be admitted).

mod redis_target;
pub mod report;
mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use stile_engine::SyncMode;
use stile_protocol::{CodeBytes, OutcomeKind};

pub use report::{Report, RunReport};
pub use target::Target;

/// Gates at most.
pub const GATES_MAX: u16 = 4096;
/// Check-ins in flight per gate at most.
pub const INFLIGHT_MAX: u32 = 4096;
/// Tickets minted for one run at most.
pub const TICKETS_MAX: u32 = 20_000_000;
/// Gates that present each code at once in `replay`.
pub const REPLAY_FANOUT: usize = 4;

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The options make no sense.
    #[error("{0}")]
    Usage(String),
    /// The target could not be set up or reached.
    #[error("target {target}: {reason}")]
    Target {
        /// The target as given.
        target: String,
        /// What failed.
        reason: String,
    },
}

/// What traffic a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Each ticket presented once, spread over the gates.
    Stadium,
    /// Every code presented at [`REPLAY_FANOUT`] gates at once.
    Replay,
    /// Forged codes only: bit-flipped genuine ones and random ones.
    Forged,
}

impl Scenario {
    /// Parses a scenario name.
    pub fn parse(s: &str) -> Result<Scenario, LoadError> {
        match s {
            "stadium" => Ok(Scenario::Stadium),
            "replay" => Ok(Scenario::Replay),
            "forged" => Ok(Scenario::Forged),
            other => Err(LoadError::Usage(format!(
                "unknown scenario {other:?}: use stadium, replay or forged (rail and mixed are \
                 not built yet)"
            ))),
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Stadium => "stadium",
            Scenario::Replay => "replay",
            Scenario::Forged => "forged",
        }
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// What traffic.
    pub scenario: Scenario,
    /// Where to (`inproc` or `quic://HOST:PORT`).
    pub target: String,
    /// Connections (gates), each its own gate id 1..=G of provider 1.
    pub gates: u16,
    /// Check-ins in flight per gate.
    pub inflight: u32,
    /// Measured time (after warm-up); the run ends sooner if the tickets run out.
    pub duration: Duration,
    /// Time at the start whose answers are not counted.
    pub warmup: Duration,
    /// Tickets minted before the clock starts.
    pub tickets: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Data dir: the certificates in `DATA/tls` (quic), or the engine's data (inproc).
    pub data: PathBuf,
    /// Sync mode of the inproc engine.
    pub sync: SyncMode,
    /// Start a redis-server for a `redis://` target (AOF, `appendfsync always`) and stop it
    /// afterwards.
    pub spawn_redis: bool,
}

impl Config {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Usage(m));
        if self.gates == 0 || self.gates > GATES_MAX {
            return bad(format!("--gates must be 1 to {GATES_MAX}"));
        }
        if self.inflight == 0 || self.inflight > INFLIGHT_MAX {
            return bad(format!("--inflight must be 1 to {INFLIGHT_MAX}"));
        }
        if self.tickets == 0 || self.tickets > TICKETS_MAX {
            return bad(format!("--tickets must be 1 to {TICKETS_MAX}"));
        }
        if self.duration.is_zero() {
            return bad("--duration must be above 0".into());
        }
        Ok(())
    }
}

/// One gate's queue of codes.
struct GateWork {
    /// Codes to present, in order, each with its ticket's index (`usize::MAX`: not a
    /// genuine ticket).
    codes: Vec<(CodeBytes, usize)>,
    /// Next index to take.
    next: AtomicUsize,
}

/// Counters shared by every worker.
#[derive(Default)]
struct Tally {
    /// Outcomes after warm-up, by kind.
    outcomes: [AtomicU64; 16],
    /// Outcomes of the whole run, warm-up included, by kind.
    outcomes_all: [AtomicU64; 16],
    /// Requests that failed without an answer.
    errors: AtomicU64,
    /// Requests that timed out.
    timeouts: AtomicU64,
}

/// Runs one scenario against one target.
pub async fn run(config: &Config) -> Result<RunReport, LoadError> {
    config.validate()?;
    let target = Target::open(config).await?;
    let genuine = target.mint(config.tickets).await?;
    let work = plan(config, &genuine);
    let sync = target.sync_name().await;
    let tally = Arc::new(Tally::default());
    let admits: Arc<Vec<AtomicU64>> =
        Arc::new((0..genuine.len()).map(|_| AtomicU64::new(0)).collect());
    let cpu_start = cpu_time();
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let mut tasks = Vec::new();
    for (g, codes) in work.into_iter().enumerate() {
        let gate = Arc::new(GateWork {
            codes,
            next: AtomicUsize::new(0),
        });
        for _ in 0..target.workers_per_gate(config.inflight) {
            let (target, gate, tally, admits) =
                (target.clone(), gate.clone(), tally.clone(), admits.clone());
            let gate_id = g as u16 + 1;
            let batch = target.batch_per_worker(config.inflight);
            tasks.push(tokio::spawn(async move {
                let mut hist = new_histogram();
                let mut hist_all = new_histogram();
                let mut codes = Vec::with_capacity(batch);
                let mut tickets = Vec::with_capacity(batch);
                // Counted here, added to the shared tally once at the end.
                let mut counts = [0u64; 16];
                let mut counts_all = [0u64; 16];
                loop {
                    if Instant::now() >= end {
                        break;
                    }
                    codes.clear();
                    tickets.clear();
                    let from = gate.next.fetch_add(batch, Ordering::Relaxed);
                    for (c, t) in gate.codes.iter().skip(from).take(batch) {
                        codes.push(*c);
                        tickets.push(*t);
                    }
                    if codes.is_empty() {
                        break;
                    }
                    let sent = Instant::now();
                    let answers = target.checkin(gate_id, &codes).await;
                    let took_us = (sent.elapsed().as_micros() as u64).max(1);
                    let counted = sent >= measure_from;
                    match answers {
                        Ok(outcomes) => {
                            for (t, o) in tickets.iter().zip(&outcomes) {
                                if o.kind == OutcomeKind::Admitted {
                                    if let Some(a) = admits.get(*t) {
                                        a.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                counts_all[o.kind as usize] += 1;
                                if counted {
                                    counts[o.kind as usize] += 1;
                                }
                            }
                            let n = outcomes.len() as u64;
                            let _ = hist_all.record_n(took_us, n);
                            if counted {
                                let _ = hist.record_n(took_us, n);
                            }
                        }
                        Err(target::CallError::Timeout) => {
                            tally
                                .timeouts
                                .fetch_add(codes.len() as u64, Ordering::Relaxed);
                        }
                        Err(target::CallError::Other(e)) => {
                            tracing::debug!(error = %e, "check-in failed");
                            tally
                                .errors
                                .fetch_add(codes.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
                for k in 0..counts.len() {
                    tally.outcomes[k].fetch_add(counts[k], Ordering::Relaxed);
                    tally.outcomes_all[k].fetch_add(counts_all[k], Ordering::Relaxed);
                }
                (hist, hist_all)
            }));
        }
    }
    let (mut hist, mut hist_all) = (new_histogram(), new_histogram());
    for t in tasks {
        if let Ok((h, a)) = t.await {
            let _ = hist.add(h);
            let _ = hist_all.add(a);
        }
    }
    let elapsed = start.elapsed();
    // Tickets that ran out during the warm-up leave nothing measured: report the whole run.
    let warmed = !hist.is_empty();
    if !warmed {
        tracing::warn!(
            "the tickets ran out during the warm-up; figures include it (raise --tickets)"
        );
        hist = hist_all;
    }
    let counts = if warmed {
        &tally.outcomes
    } else {
        &tally.outcomes_all
    };
    let measured = if warmed {
        elapsed.saturating_sub(config.warmup)
    } else {
        elapsed
    };
    let measured = measured.max(Duration::from_millis(1));
    let cpu = cpu_time().saturating_sub(cpu_start);
    target.close().await;
    let mut outcomes = BTreeMap::new();
    for (k, n) in counts.iter().enumerate() {
        let n = n.load(Ordering::Relaxed);
        if n > 0 {
            if let Some(kind) = OutcomeKind::from_u8(k as u8) {
                outcomes.insert(kind.to_string(), n);
            }
        }
    }
    let requests: u64 = outcomes.values().sum();
    let double_admits = admits
        .iter()
        .map(|a| a.load(Ordering::Relaxed).saturating_sub(1))
        .sum();
    Ok(RunReport {
        target: config.target.clone(),
        sync,
        mode: "closed".into(),
        gates: config.gates,
        inflight: config.inflight,
        requested_rate: None,
        requests,
        throughput_per_s: requests as f64 / measured.as_secs_f64(),
        measured_s: measured.as_secs_f64(),
        warmup_excluded: warmed,
        latency_us: report::Latency::of(&hist),
        outcomes,
        errors: tally.errors.load(Ordering::Relaxed),
        timeouts: tally.timeouts.load(Ordering::Relaxed),
        double_admits,
        client_cpu_percent: 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
    })
}

fn new_histogram() -> hdrhistogram::Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Each gate's codes for the scenario.
fn plan(config: &Config, genuine: &[CodeBytes]) -> Vec<Vec<(CodeBytes, usize)>> {
    let gates = config.gates as usize;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(config.seed);
    let mut work = vec![Vec::new(); gates];
    match config.scenario {
        Scenario::Stadium => {
            for (i, c) in genuine.iter().enumerate() {
                work[i % gates].push((*c, i));
            }
        }
        Scenario::Replay => {
            // Code i goes to gates i, i+1, …: the same position in each queue, so the copies
            // arrive at about the same moment.
            let fanout = REPLAY_FANOUT.min(gates);
            for (i, c) in genuine.iter().enumerate() {
                for k in 0..fanout {
                    work[(i + k) % gates].push((*c, i));
                }
            }
        }
        Scenario::Forged => {
            for (i, c) in genuine.iter().enumerate() {
                let mut bytes = c.as_bytes().to_vec();
                if i % 2 == 0 {
                    // One bit of the tag flipped.
                    let last = bytes.len() - 1;
                    bytes[last] ^= 1 << rng.gen_range(0..8);
                } else {
                    // Random tag.
                    let tag_at = bytes.len() - 10;
                    rng.fill(&mut bytes[tag_at..]);
                }
                if let Ok(f) = CodeBytes::from_slice(&bytes) {
                    work[i % gates].push((f, usize::MAX));
                }
            }
        }
    }
    work
}

/// CPU time of this process (user and system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
