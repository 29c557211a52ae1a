//! Gate benchmarks: an offline decision, and the journal write that precedes its answer.
//!
//! Ids: `gate/offline_lookup_and_rules` (find a scanned code among a million tickets by
//! place, check its fingerprint, apply the entry rules: no write), `gate/journal_append`
//! (one offline decision appended and synced with `fdatasync`, in a file beside the working
//! directory, not `/tmp`, which may be memory), `gate/replica_load_1m` (a saved replica of a
//! million tickets read back and checked). Throughput is per decision (or per replica).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use stile_gate::{decide, fingerprint, Entry, Journal, Lookup, Op, Policy, Record, Replica, Scan};
use stile_protocol::{CodeBytes, OutcomeKind};

const TICKETS: u32 = 1_000_000;
const NOW: u64 = 1_800_000_000;

fn code(serial: u32) -> CodeBytes {
    let mut b = [0u8; 20];
    b[0] = 1;
    b[2..4].copy_from_slice(&1u16.to_be_bytes());
    b[6..10].copy_from_slice(&serial.to_be_bytes());
    b[10..14].copy_from_slice(&serial.wrapping_mul(2_654_435_761).to_le_bytes());
    CodeBytes::from_slice(&b).expect("format 1")
}

fn replica() -> (Replica, Vec<CodeBytes>) {
    let mut r = Replica::new(1);
    let p = r
        .policy_index(Policy {
            max_entries: 1,
            ..Policy::default()
        })
        .expect("room");
    let codes: Vec<CodeBytes> = (0..TICKETS).map(code).collect();
    r.extend_unsorted(codes.iter().map(|c| Entry {
        fingerprint: fingerprint(c),
        serial: c.header().serial,
        partition: 0,
        policy: p,
        last_gate: 0,
        entries: 0,
        flags: 0,
        first_scan: 0,
        last_at: 0,
    }));
    r.finish_load();
    (r, codes)
}

fn offline(c: &mut Criterion) {
    let (r, codes) = replica();
    println!(
        "replica of {} tickets: {} bytes in memory, {:.1} bytes a ticket",
        r.len(),
        r.memory_bytes(),
        r.memory_bytes() as f64 / r.len() as f64
    );
    let mut rng = SmallRng::seed_from_u64(7);
    let mut g = c.benchmark_group("gate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("offline_lookup_and_rules", |b| {
        b.iter(|| {
            let code = &codes[rng.gen_range(0..codes.len())];
            let Lookup::Found(i) = r.lookup(black_box(code)) else {
                panic!("a replica ticket is found");
            };
            let e = r.entry(i);
            let policy = r.policy(e.policy).expect("its policy");
            let (d, _) = decide(e, policy, Op::Entry, 3, NOW);
            assert_eq!(d.kind, OutcomeKind::Admitted);
            black_box(d)
        })
    });
    let dir = tempfile::tempdir_in(".").expect("a directory beside the working one");
    let mut journal = Journal::open(&dir.path().join("journal")).expect("a journal");
    let mut scan_id = 0u64;
    g.bench_function("journal_append", |b| {
        b.iter(|| {
            scan_id += 1;
            journal
                .append(Record::Offline(Scan {
                    scan_id,
                    scanned_at_unix_ms: NOW * 1000,
                    last_online_unix_s: NOW - 60,
                    op: Op::Entry,
                    decision: OutcomeKind::Admitted,
                    code: codes[(scan_id % u64::from(TICKETS)) as usize],
                }))
                .expect("appended");
        })
    });
    sync_p99(dir.path(), &codes);
    let path = dir.path().join("replica");
    r.save(&path).expect("saved");
    g.sample_size(10);
    g.bench_function("replica_load_1m", |b| {
        b.iter(|| black_box(Replica::load(&path).expect("read").expect("there")))
    });
    g.finish();
}

/// The p99 of a decision's journal write beside the p99 of a bare `fdatasync` of as many
/// bytes on the same file system, alternating, in one run: what the journal adds to the
/// disk's own cost.
fn sync_p99(dir: &std::path::Path, codes: &[CodeBytes]) {
    use std::io::Write;
    const ROUNDS: u64 = 2_000;
    let mut journal = Journal::open(&dir.join("p99-journal")).expect("a journal");
    let mut bare = std::fs::File::create(dir.join("p99-bare")).expect("a file");
    let mut j = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    let mut f = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for n in 0..ROUNDS {
        let t = std::time::Instant::now();
        journal
            .append(Record::Offline(Scan {
                scan_id: n,
                scanned_at_unix_ms: NOW * 1000,
                last_online_unix_s: NOW - 60,
                op: Op::Entry,
                decision: OutcomeKind::Admitted,
                code: codes[n as usize],
            }))
            .expect("appended");
        let _ = j.record(t.elapsed().as_micros() as u64);
        let t = std::time::Instant::now();
        bare.write_all(&[0u8; 48]).expect("written");
        bare.sync_data().expect("synced");
        let _ = f.record(t.elapsed().as_micros() as u64);
    }
    println!(
        "gate journal append p50 {} us p99 {} us; bare fdatasync p50 {} us p99 {} us \
         ({ROUNDS} each, alternating)",
        j.value_at_quantile(0.5),
        j.value_at_quantile(0.99),
        f.value_at_quantile(0.5),
        f.value_at_quantile(0.99)
    );
}

criterion_group!(benches, offline);
criterion_main!(benches);
