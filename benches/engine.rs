//! Engine benchmarks: the check-in hot path against the HMAC floor.
//!
//! Ids: `engine/hmac_verify`, `engine/checkin_admit`, `engine/checkin_already_used`,
//! `engine/checkin_forged`, `engine/checkin_admit_2threads`. Every bench's throughput is in
//! check-ins (`Throughput::Elements`), so the figures compare per check-in.
//!
//! Check-ins go through `Engine::checkin_batch` in batches of 64, the way the node calls it,
//! on random tickets of a 10-million-ticket index. Timed rounds are followed by untimed
//! resets (undo by the admitting gate) and by an assertion on the outcome counts, so the
//! admit bench can never quietly measure `already_used`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::seq::SliceRandom;
use rand::{rngs::SmallRng, SeedableRng};
use stile_engine::{
    CheckinRequest, Engine, EngineConfig, Gate, KeyRing, MintRequest, OutcomeKind, Policy,
    Presented, SystemClock,
};
use stile_protocol::{CodeBytes, Outcome};

/// Tickets in the index (`STILE_BENCH_TICKETS` overrides, for experiments).
fn tickets() -> usize {
    std::env::var("STILE_BENCH_TICKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}
/// Requests per `checkin_batch` call.
const BATCH: usize = 64;
/// Check-ins per timed round (per thread) before the untimed reset.
const ROUND_MAX: usize = 1 << 19;

struct Bench {
    engine: Engine,
    codes: Vec<CodeBytes>,
    /// A random permutation of ticket indices; rounds walk it.
    order: Vec<u32>,
    /// Next position in `order`.
    cursor: usize,
    /// Next scan id (never reused, so no check-in is mistaken for a retry).
    scan_id: u64,
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn setup() -> Bench {
    let engine = Engine::in_memory(
        EngineConfig::default(),
        Arc::new(SystemClock),
        KeyRing::ephemeral(),
    )
    .expect("engine");
    let policy = engine.add_policy(Policy::simple(1)).expect("policy");
    // Touch the code vector first, so the RSS delta below is the index alone.
    let tickets = tickets();
    let mut codes = vec![CodeBytes::from_slice(&[1; 20]).expect("placeholder"); tickets];
    let rss_before = rss_bytes();
    let mut n = 0;
    while n < tickets {
        let count = (tickets - n).min(stile_engine::MINT_BATCH_MAX);
        let req = MintRequest {
            policy,
            partition: 0,
            count: count as u32,
        };
        engine
            .mint_each(&req, |c| {
                codes[n] = c;
                n += 1;
            })
            .expect("mint");
    }
    let rss_grown = rss_bytes().saturating_sub(rss_before);
    eprintln!(
        "index of {tickets} tickets: {} bytes accounted ({:.2} bytes/ticket), resident growth {} bytes ({:.2} bytes/ticket)",
        engine.index_memory_bytes(),
        engine.index_memory_bytes() as f64 / tickets as f64,
        rss_grown,
        rss_grown as f64 / tickets as f64,
    );
    let mut order: Vec<u32> = (0..tickets as u32).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(7));
    Bench {
        engine,
        codes,
        order,
        cursor: 0,
        scan_id: 1,
    }
}

impl Bench {
    /// Check-ins per timed round: never so many that a round meets a ticket twice.
    fn round_max(&self) -> usize {
        ROUND_MAX.min(self.order.len() / 2)
    }

    /// Requests for the next `n` random tickets, from `gate`.
    fn take(
        &mut self,
        n: usize,
        gate: Gate,
        mangle: impl Fn(CodeBytes) -> CodeBytes,
    ) -> Vec<CheckinRequest> {
        (0..n)
            .map(|_| {
                let i = self.order[self.cursor] as usize;
                self.cursor = (self.cursor + 1) % self.order.len();
                self.scan_id += 1;
                CheckinRequest {
                    gate,
                    scan_id: self.scan_id,
                    code: mangle(self.codes[i]),
                }
            })
            .collect()
    }

    /// Undoes the admits of `reqs` (untimed), so their tickets are valid again.
    fn reset(&mut self, reqs: &[CheckinRequest]) {
        for r in reqs {
            self.scan_id += 1;
            let o = self
                .engine
                .undo(&r.gate, self.scan_id, &Presented::Code(r.code));
            assert_eq!(o.kind, OutcomeKind::Undone);
        }
    }
}

/// Checks in `reqs` in batches of [`BATCH`] (answers in a small reused buffer, as a node
/// writes them out); returns the time taken and how many answers were `expect`.
fn timed_batches(
    engine: &Engine,
    reqs: &[CheckinRequest],
    expect: OutcomeKind,
) -> (Duration, usize) {
    let mut out = [Outcome::FORGED; BATCH];
    let mut hits = 0;
    let start = Instant::now();
    for r in reqs.chunks(BATCH) {
        let out = &mut out[..r.len()];
        engine.checkin_batch(r, out).wait();
        hits += out.iter().filter(|o| o.kind == expect).count();
    }
    (start.elapsed(), hits)
}

fn assert_hits(hits: usize, n: usize, kind: OutcomeKind) {
    assert_eq!(hits, n, "expected every outcome {kind}, got {hits} of {n}");
}

fn flip_tag_bit(code: CodeBytes) -> CodeBytes {
    let mut raw = [0u8; 20];
    raw.copy_from_slice(code.as_bytes());
    raw[19] ^= 0x10;
    CodeBytes::from_slice(&raw).expect("same length")
}

/// Times `iters` check-ins of fresh random tickets, one thread.
fn run_single(
    b: &mut Bench,
    iters: u64,
    mangle: fn(CodeBytes) -> CodeBytes,
    expect: OutcomeKind,
    reset: bool,
) -> Duration {
    let gate = Gate::new(1, 1);
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(b.round_max());
        let reqs = b.take(n, gate, mangle);
        let (elapsed, hits) = timed_batches(&b.engine, &reqs, expect);
        total += elapsed;
        assert_hits(hits, n, expect);
        if reset {
            b.reset(&reqs);
        }
        left -= n;
    }
    total
}

/// Times `iters` admits per thread on two threads (distinct tickets, distinct gates).
fn run_two_threads(b: &mut Bench, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(b.round_max() / 2);
        let reqs = [
            b.take(n, Gate::new(1, 1), |c| c),
            b.take(n, Gate::new(2, 1), |c| c),
        ];
        let barrier = Barrier::new(2);
        let engine = &b.engine;
        let elapsed = std::thread::scope(|s| {
            let helper = s.spawn(|| {
                barrier.wait();
                timed_batches(engine, &reqs[1], OutcomeKind::Admitted).1
            });
            barrier.wait();
            let start = Instant::now();
            let hits = timed_batches(engine, &reqs[0], OutcomeKind::Admitted).1;
            let other = helper.join().expect("helper thread");
            let elapsed = start.elapsed();
            assert_hits(hits, n, OutcomeKind::Admitted);
            assert_hits(other, n, OutcomeKind::Admitted);
            elapsed
        });
        total += elapsed;
        b.reset(&reqs[0]);
        b.reset(&reqs[1]);
        left -= n;
    }
    total
}

fn engine_benches(c: &mut Criterion) {
    let mut b = setup();
    let mut g = c.benchmark_group("engine");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));

    g.throughput(Throughput::Elements(1));
    let code = b.codes[b.codes.len() / 2];
    g.bench_function("hmac_verify", |bench| {
        bench.iter(|| assert!(b.engine.keys().verify_static(black_box(&code))))
    });

    g.bench_function("checkin_admit", |bench| {
        bench.iter_custom(|iters| run_single(&mut b, iters, |c| c, OutcomeKind::Admitted, true))
    });

    g.bench_function("checkin_forged", |bench| {
        bench.iter_custom(|iters| {
            run_single(&mut b, iters, flip_tag_bit, OutcomeKind::Forged, false)
        })
    });

    g.throughput(Throughput::Elements(2));
    g.bench_function("checkin_admit_2threads", |bench| {
        bench.iter_custom(|iters| run_two_threads(&mut b, iters))
    });

    // Use every ticket once (untimed), then scan used tickets at random.
    let all: Vec<CheckinRequest> = b.take(b.order.len(), Gate::new(3, 1), |c| c);
    let hits = timed_batches(&b.engine, &all, OutcomeKind::Admitted).1;
    assert_hits(hits, all.len(), OutcomeKind::Admitted);
    drop(all);

    g.throughput(Throughput::Elements(1));
    g.bench_function("checkin_already_used", |bench| {
        bench.iter_custom(|iters| run_single(&mut b, iters, |c| c, OutcomeKind::AlreadyUsed, false))
    });
    g.finish();
}

criterion_group!(benches, engine_benches);
criterion_main!(benches);
