//! Snapshots: taken while check-ins go on, recovered with the log after them, and safe to
//! crash in the middle of.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use stile_engine::snapshot::Stage;
use stile_engine::{
    CheckinRequest, Engine, EngineConfig, Gate, ManualClock, OutcomeKind, Policy, Presented,
    SyncMode,
};
use stile_protocol::CodeBytes;

use crate::support::T0;

fn config() -> EngineConfig {
    // Small segments, so snapshots have whole segments to remove.
    EngineConfig {
        segment_max_bytes: 16 << 10,
        sync: SyncMode::Always,
        ..EngineConfig::default()
    }
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Result<Engine, stile_engine::OpenError> {
    crate::support::reopen(|| Engine::open(dir, config(), clock.clone()))
}

fn mint(e: &Engine, n: u32) -> Vec<CodeBytes> {
    crate::support::mint(e, Policy::simple(1), n).1
}

fn admit_all(e: &Engine, gate: u16, codes: &[CodeBytes]) {
    let reqs: Vec<_> = codes
        .iter()
        .enumerate()
        .map(|(i, c)| CheckinRequest {
            gate: Gate::new(gate, 1),
            scan_id: i as u64,
            code: *c,
        })
        .collect();
    let mut out = vec![stile_protocol::Outcome::FORGED; reqs.len()];
    e.checkin_batch(&reqs, &mut out).wait();
}

fn count(dir: &Path, sub: &str) -> usize {
    std::fs::read_dir(dir.join(sub))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn snapshot_plus_later_log_recovers_the_same_state_and_trims_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let before = {
        let e = open(dir.path(), &clock).unwrap();
        let codes = mint(&e, 3000);
        admit_all(&e, 1, &codes[..1000]);
        let segments = count(dir.path(), "wal");
        let info = e.snapshot().unwrap();
        assert!(
            info.segments_removed > 0 && count(dir.path(), "wal") < segments,
            "{info:?}"
        );
        assert_eq!(info.tickets, 3000);
        let mode = std::fs::metadata(&info.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "snapshots hold keys");
        // Changes after the snapshot live only in the log.
        admit_all(&e, 2, &codes[1000..1500]);
        e.undo(&Gate::new(1, 1), 99, &Presented::Code(codes[0]));
        e.transfer(&Presented::Code(codes[2000])).unwrap();
        e.import(stile_engine::PolicyId(0), 0, &["EXT-9"]).unwrap();
        e.dump()
    };
    let e = open(dir.path(), &clock).unwrap();
    assert_eq!(e.dump(), before);
    assert!(
        e.recovered().records < 1000,
        "replayed only the log after the snapshot: {:?}",
        e.recovered()
    );
}

#[test]
fn snapshot_taken_while_checkins_race_recovers_to_the_final_state() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let before = {
        let e = open(dir.path(), &clock).unwrap();
        let codes = mint(&e, 20_000);
        std::thread::scope(|s| {
            for t in 0..2u16 {
                let (e, codes) = (&e, &codes);
                s.spawn(move || {
                    for chunk in codes.chunks(256).skip(t as usize).step_by(2) {
                        admit_all(e, t + 1, chunk);
                        for c in chunk.iter().take(16) {
                            e.undo(&Gate::new(t + 1, 1), 1_000_000, &Presented::Code(*c));
                        }
                    }
                });
            }
            let e = &e;
            s.spawn(move || {
                for _ in 0..5 {
                    e.snapshot().unwrap();
                }
            });
        });
        e.dump()
    };
    assert_eq!(open(dir.path(), &clock).unwrap().dump(), before);
}

#[test]
fn killed_between_temp_file_and_rename_recovers_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let before = {
        let e = open(dir.path(), &clock).unwrap();
        let codes = mint(&e, 2000);
        admit_all(&e, 1, &codes[..700]);
        e.snapshot_until(Stage::TempWritten).unwrap();
        admit_all(&e, 2, &codes[700..900]);
        e.dump()
    };
    assert_eq!(count(dir.path(), "snapshots"), 1, "only the temp file");
    let e = open(dir.path(), &clock).unwrap();
    assert_eq!(e.dump(), before);
    assert_eq!(
        count(dir.path(), "snapshots"),
        0,
        "the stray temp file is removed"
    );
}

#[test]
fn killed_after_rename_before_log_trim_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let before = {
        let e = open(dir.path(), &clock).unwrap();
        let codes = mint(&e, 2000);
        admit_all(&e, 1, &codes[..700]);
        e.snapshot_until(Stage::Renamed).unwrap();
        admit_all(&e, 2, &codes[700..900]);
        e.dump()
    };
    assert_eq!(open(dir.path(), &clock).unwrap().dump(), before);
}

#[test]
fn a_damaged_snapshot_falls_back_only_while_the_log_covers_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let (before, snap) = {
        let e = open(dir.path(), &clock).unwrap();
        let codes = mint(&e, 2000);
        admit_all(&e, 1, &codes[..700]);
        let info = e.snapshot_until(Stage::Renamed).unwrap();
        (e.dump(), info.path)
    };
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&snap, &bytes).unwrap();
    // The log still reaches back to the start: recover from it alone.
    assert_eq!(open(dir.path(), &clock).unwrap().dump(), before);
    // Once the log is trimmed behind a snapshot, losing that snapshot is an error, not a
    // silent loss.
    let snap = {
        let e = open(dir.path(), &clock).unwrap();
        e.snapshot().unwrap().path
    };
    std::fs::write(&snap, b"garbage").unwrap();
    let err = open(dir.path(), &clock).unwrap_err().to_string();
    assert!(err.contains("dropped after a snapshot"), "{err}");
}

#[test]
fn checkin_after_recovery_from_snapshot_still_refuses_second_entry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let codes = {
        let e = open(dir.path(), &clock).unwrap();
        let codes = mint(&e, 10);
        admit_all(&e, 3, &codes[..5]);
        e.snapshot().unwrap();
        codes
    };
    let e = open(dir.path(), &clock).unwrap();
    let o = e.checkin(&CheckinRequest {
        gate: Gate::new(4, 1),
        scan_id: 1,
        code: codes[2],
    });
    assert_eq!((o.kind, o.gate), (OutcomeKind::AlreadyUsed, 3));
    assert_eq!(
        e.checkin(&CheckinRequest {
            gate: Gate::new(4, 1),
            scan_id: 2,
            code: codes[7]
        })
        .kind,
        OutcomeKind::Admitted
    );
}

/// Scan memory is part of a snapshot: a gate that retries a scan after the node restarted
/// from a snapshot (the log behind it trimmed) gets the answer it lost, `admitted`, never
/// `already_used` naming its own admit.
#[test]
fn a_retry_after_a_restart_from_a_snapshot_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let codes = {
        let e = open(dir.path(), &clock).unwrap();
        let codes = mint(&e, 3000);
        // Enough records that the snapshot removes whole segments behind it.
        admit_all(&e, 3, &codes);
        e.snapshot().unwrap();
        codes
    };
    assert!(count(dir.path(), "snapshots") >= 1);
    let e = open(dir.path(), &clock).unwrap();
    // A gate's last SCANS_PER_GATE scans are remembered.
    let remembered = codes.len() - stile_engine::scans::SCANS_PER_GATE..codes.len();
    for (i, code) in codes.iter().enumerate().skip(remembered.start).step_by(51) {
        let retry = e.checkin(&CheckinRequest {
            gate: Gate::new(3, 1),
            scan_id: i as u64,
            code: *code,
        });
        assert_eq!(retry.kind, OutcomeKind::Admitted, "scan {i}: {retry:?}");
        let other = e.checkin(&CheckinRequest {
            gate: Gate::new(4, 1),
            scan_id: i as u64,
            code: *code,
        });
        assert_eq!(
            (other.kind, other.gate),
            (OutcomeKind::AlreadyUsed, 3),
            "scan {i}"
        );
    }
}

/// A snapshot never removes the segment the log goes on in, so a log with no segment left
/// beside a snapshot was deleted: opening refuses instead of starting from the snapshot
/// and losing every change made after it.
#[test]
fn a_deleted_log_beside_a_snapshot_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let e = open(dir.path(), &clock).unwrap();
        let codes = mint(&e, 100);
        admit_all(&e, 1, &codes[..10]);
        e.snapshot().unwrap();
        admit_all(&e, 1, &codes[10..20]);
    }
    for entry in std::fs::read_dir(dir.path().join("wal")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let err = open(dir.path(), &clock).unwrap_err().to_string();
    assert!(err.contains("holds no segment"), "{err}");
}
