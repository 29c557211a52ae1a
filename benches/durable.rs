//! Durable check-ins: the engine with its log, `--sync always` against `--sync none`.
//!
//! Ids: `durable/sync_always_4096_inflight`, `durable/sync_none_4096_inflight`. Two threads
//! (this machine's two cores) each keep 2048 check-ins in flight, in batches of 64: a batch
//! goes to `checkin_batch`, its durability token joins a queue, and the oldest token is
//! waited for whenever the window is full, as a node does with its connections. Every
//! check-in admits a fresh ticket (more are minted, untimed, as they run out). Throughput
//! counts check-ins. The data dir is under `target/` (a real disk, not tmpfs).
//!
//! Before the benches, a one-shot measurement: opening (recovering) a data dir of 10 million
//! tickets and 10 million logged check-ins.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::seq::SliceRandom;
use rand::{rngs::SmallRng, SeedableRng};
use stile_engine::{
    CheckinRequest, Durability, Engine, EngineConfig, Gate, MintRequest, OutcomeKind, Policy,
    SyncMode, SystemClock,
};
use stile_protocol::{CodeBytes, Outcome};

/// Tickets minted at a time for the throughput benches (each check-in uses a fresh one).
const MINT_CHUNK: u32 = 1_000_000;
/// Requests per `checkin_batch` call.
const BATCH: usize = 64;
/// Check-ins in flight over both threads.
const INFLIGHT: usize = 4096;
/// Worker threads.
const THREADS: usize = 2;
/// Check-ins per thread per timed round.
const ROUND_MAX: usize = 1 << 18;

fn bench_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-data")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

struct Setup {
    engine: Engine,
    policy: stile_engine::PolicyId,
    /// Fresh (never scanned) tickets.
    codes: Vec<CodeBytes>,
    scan_id: u64,
}

impl Setup {
    /// A fresh ticket, minting more (untimed) when they run out.
    fn fresh(&mut self) -> CodeBytes {
        if self.codes.is_empty() {
            let req = MintRequest {
                policy: self.policy,
                partition: 0,
                count: MINT_CHUNK,
            };
            self.codes = self.engine.mint(&req).expect("mint");
            self.codes
                .shuffle(&mut SmallRng::seed_from_u64(self.scan_id));
        }
        self.codes.pop().expect("just minted")
    }
}

fn setup(sync: SyncMode) -> Setup {
    let dir = bench_dir(sync.name());
    let engine = Engine::open(
        &dir,
        EngineConfig {
            sync,
            ..EngineConfig::default()
        },
        Arc::new(SystemClock),
    )
    .expect("open bench data dir");
    let policy = engine.add_policy(Policy::simple(1)).expect("policy");
    Setup {
        engine,
        policy,
        codes: Vec::new(),
        scan_id: 1,
    }
}

/// One thread's share: batches in flight, the oldest waited for when the window is full.
fn pipeline(engine: &Engine, reqs: &[CheckinRequest], window: usize) -> usize {
    let mut inflight: VecDeque<(Durability, usize)> = VecDeque::new();
    let mut in_window = 0;
    let mut admitted = 0;
    let mut out = [Outcome::FORGED; BATCH];
    for chunk in reqs.chunks(BATCH) {
        let out = &mut out[..chunk.len()];
        let d = engine.checkin_batch(chunk, out);
        admitted += out
            .iter()
            .filter(|o| o.kind == OutcomeKind::Admitted)
            .count();
        inflight.push_back((d, chunk.len()));
        in_window += chunk.len();
        while in_window > window {
            let (d, n) = inflight.pop_front().expect("window holds batches");
            d.wait();
            in_window -= n;
        }
    }
    for (d, _) in inflight {
        d.wait();
    }
    admitted
}

fn run(s: &mut Setup, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let per_thread = (left / THREADS).clamp(1, ROUND_MAX);
        let reqs: Vec<Vec<CheckinRequest>> = (0..THREADS)
            .map(|t| {
                (0..per_thread)
                    .map(|_| {
                        let code = s.fresh();
                        s.scan_id += 1;
                        CheckinRequest {
                            gate: Gate::new(t as u16 + 1, 1),
                            scan_id: s.scan_id,
                            code,
                        }
                    })
                    .collect()
            })
            .collect();
        let barrier = Barrier::new(THREADS);
        let engine = &s.engine;
        let (elapsed, admitted) = std::thread::scope(|sc| {
            let handles: Vec<_> = reqs[1..]
                .iter()
                .map(|r| {
                    let barrier = &barrier;
                    sc.spawn(move || {
                        barrier.wait();
                        pipeline(engine, r, INFLIGHT / THREADS)
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            let mut admitted = pipeline(engine, &reqs[0], INFLIGHT / THREADS);
            admitted += handles
                .into_iter()
                .map(|h| h.join().expect("worker"))
                .sum::<usize>();
            (start.elapsed(), admitted)
        });
        assert_eq!(
            admitted,
            per_thread * THREADS,
            "every check-in of a round admits"
        );
        total += elapsed;
        left = left.saturating_sub(per_thread * THREADS);
    }
    total
}

fn report(name: &str, engine: &Engine, before: stile_engine::wal::WalStats) {
    let after = engine.wal().expect("durable engine").stats();
    let syncs = after.syncs - before.syncs;
    let records = after.records - before.records;
    eprintln!(
        "{name}: {records} records, {syncs} fdatasync calls, {:.0} records per sync; fdatasync p50 {} us, p99 {} us (whole run)",
        records as f64 / syncs.max(1) as f64,
        after.sync_p50_us,
        after.sync_p99_us,
    );
}

/// Opens a data dir holding 10 million tickets and 10 million logged check-ins.
fn recovery_time() {
    const N: usize = 10_000_000;
    let dir = bench_dir("recovery");
    {
        let config = EngineConfig {
            sync: SyncMode::None,
            ..EngineConfig::default()
        };
        let engine = Engine::open(&dir, config, Arc::new(SystemClock)).expect("open");
        let policy = engine.add_policy(Policy::simple(1)).expect("policy");
        let mut reqs = Vec::with_capacity(N);
        let mut scan = 0u64;
        while reqs.len() < N {
            let count = (N - reqs.len()).min(stile_engine::MINT_BATCH_MAX) as u32;
            for code in engine
                .mint(&MintRequest {
                    policy,
                    partition: 0,
                    count,
                })
                .expect("mint")
            {
                scan += 1;
                reqs.push(CheckinRequest {
                    gate: Gate::new(1, 1),
                    scan_id: scan,
                    code,
                });
            }
        }
        let mut out = vec![Outcome::FORGED; BATCH];
        for chunk in reqs.chunks(BATCH) {
            engine.checkin_batch(chunk, &mut out[..chunk.len()]).wait();
        }
    }
    let start = Instant::now();
    let engine =
        Engine::open(&dir, EngineConfig::default(), Arc::new(SystemClock)).expect("recover");
    let took = start.elapsed();
    assert_eq!(engine.minted_tickets(), N as u64);
    eprintln!(
        "recovery: {:.2} s to open {N} tickets and {} log records",
        took.as_secs_f64(),
        engine.recovered().records
    );
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

fn durable_benches(c: &mut Criterion) {
    recovery_time();
    let mut g = c.benchmark_group("durable");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));
    for (id, sync) in [
        ("sync_always_4096_inflight", SyncMode::Always),
        ("sync_none_4096_inflight", SyncMode::None),
    ] {
        let mut s = setup(sync);
        let before = s.engine.wal().expect("durable").stats();
        g.bench_function(id, |b| b.iter_custom(|iters| run(&mut s, iters)));
        report(id, &s.engine, before);
    }
    g.finish();
}

criterion_group!(benches, durable_benches);
criterion_main!(benches);
