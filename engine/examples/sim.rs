//! Runs the deterministic simulation (`stile_engine::sim`) over a range of seeds:
//! `cargo xtask sim --seeds N [--from S] [--jobs J]`, which runs this example in release
//! mode with the `sim` feature. Prints a summary; a failing seed prints itself and the
//! command that runs it again, and the exit status is 1.

use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use stile_engine::sim::{run_seed, SeedReport};

fn usage() -> ! {
    eprintln!("usage: sim --seeds N [--from S] [--jobs J]");
    exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut seeds, mut from, mut jobs) = (None, 0u64, None);
    while let Some(a) = args.next() {
        let mut value = || -> u64 {
            args.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--seeds" => seeds = Some(value()),
            "--from" => from = value(),
            "--jobs" => jobs = Some(value()),
            _ => usage(),
        }
    }
    let seeds = seeds.unwrap_or_else(|| usage());
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
        .clamp(1, 64);
    let started = Instant::now();
    let next = AtomicU64::new(from);
    let end = from.saturating_add(seeds);
    let failed = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let total = Mutex::new(SeedReport::default());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                let mut mine = SeedReport::default();
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    match run_seed(seed) {
                        Ok(r) => mine.add(&r),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            failures.lock().unwrap().push((seed, e));
                        }
                    }
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_multiple_of(10_000) {
                        eprintln!("sim: {n} seeds in {:.1} s", started.elapsed().as_secs_f64());
                    }
                }
                total.lock().unwrap().add(&mine);
            });
        }
    });
    let total = total.into_inner().unwrap();
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    let ran = done.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sim: seeds {from}..{} ({ran} run), steps {}, operations {}, acknowledged {}, faults \
         {}, bit flips {}, recoveries {}, refusals as required {}, disk operations {}, \
         violations {}, {secs:.1} s ({:.2} ms a seed, {jobs} jobs)",
        from + ran,
        total.steps,
        total.operations,
        total.acknowledged,
        total.faults,
        total.flips,
        total.recoveries,
        total.refusals,
        total.disk_ops,
        failures.len(),
        secs * 1000.0 * jobs as f64 / ran.max(1) as f64,
    );
    if let Some((seed, e)) = failures.first() {
        println!("seed {seed} failed: {e}; reproduce: cargo xtask sim --seeds 1 --from {seed}");
        exit(1);
    }
}
