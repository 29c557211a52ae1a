//! The log: reopen gives back exactly the state before; torn tails are cut off; damage in
//! the middle refuses to open and says where.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use stile_engine::wal::record::{decode_frame, Frame, Record};
use stile_engine::{
    CheckinRequest, CodeFormat, Engine, EngineConfig, EntryRule, Gate, ManualClock, MintRequest,
    OutcomeKind, Policy, Presented, SyncMode, Validity,
};

use crate::support::T0;

const G1: Gate = Gate::new(1, 1);
const G2: Gate = Gate::new(2, 1);

fn open(
    dir: &Path,
    sync: SyncMode,
    clock: &Arc<ManualClock>,
) -> Result<Engine, stile_engine::OpenError> {
    crate::support::reopen(|| {
        Engine::open(
            dir,
            EngineConfig {
                sync,
                partitions: vec![0, 1],
                ..EngineConfig::default()
            },
            clock.clone(),
        )
    })
}

/// Every kind of record, through the public API.
fn workload(e: &Engine, clock: &ManualClock) {
    let simple = e.add_policy(Policy::simple(1)).unwrap();
    let pass = e
        .add_policy(Policy {
            validity: Validity {
                duration_from_first_scan_s: Some(86_400),
                ..Validity::ALWAYS
            },
            entry: EntryRule::pairs(0),
            ..Policy::simple(1)
        })
        .unwrap();
    let rotating = e
        .add_policy(Policy {
            format: CodeFormat::Rotating,
            ..Policy::simple(1)
        })
        .unwrap();
    let codes = e
        .mint(&MintRequest {
            policy: simple,
            partition: 0,
            count: 50,
        })
        .unwrap();
    let passes = e
        .mint(&MintRequest {
            policy: pass,
            partition: 1,
            count: 5,
        })
        .unwrap();
    let rot = e
        .mint(&MintRequest {
            policy: rotating,
            partition: 0,
            count: 2,
        })
        .unwrap();
    for (i, c) in codes.iter().enumerate().take(30) {
        let gate = if i % 2 == 0 { G1 } else { G2 };
        assert_eq!(
            e.checkin(&CheckinRequest {
                gate,
                scan_id: i as u64,
                code: *c
            })
            .kind,
            OutcomeKind::Admitted
        );
    }
    clock.advance(5);
    assert_eq!(
        e.undo(&G1, 100, &Presented::Code(codes[0])).kind,
        OutcomeKind::Undone
    );
    e.revoke(&Presented::Code(codes[40])).unwrap();
    let moved = e.transfer(&Presented::Code(codes[41])).unwrap();
    e.checkin(&CheckinRequest {
        gate: G2,
        scan_id: 101,
        code: moved,
    });
    for (i, p) in passes.iter().enumerate() {
        e.checkin(&CheckinRequest {
            gate: G1,
            scan_id: 200 + i as u64,
            code: *p,
        });
    }
    clock.advance(60);
    assert_eq!(
        e.exit(&G2, 300, &Presented::Code(passes[0])).kind,
        OutcomeKind::Exited
    );
    e.checkin(&CheckinRequest {
        gate: G1,
        scan_id: 301,
        code: rot[0],
    });
    e.import(simple, 1, &["EXT-1", "EXT-2", "EXT-3"]).unwrap();
    e.checkin_text(&G1, 302, "EXT-2");
    e.rotate_key().unwrap();
    e.mint(&MintRequest {
        policy: simple,
        partition: 0,
        count: 3,
    })
    .unwrap();
}

#[test]
fn reopen_restores_exactly_the_state_before_in_every_sync_mode() {
    for sync in [
        SyncMode::Always,
        SyncMode::Batch { interval_ms: 5 },
        SyncMode::None,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let before = {
            let e = open(dir.path(), sync, &clock).unwrap();
            workload(&e, &clock);
            e.dump()
        };
        assert!(before.slots.len() > 60 && before.imported.len() == 3 && before.keys.len() == 2);
        let after = open(dir.path(), sync, &clock).unwrap().dump();
        assert_eq!(before, after, "{sync:?}");
        // And once more, after reopening appended nothing new.
        assert_eq!(open(dir.path(), sync, &clock).unwrap().dump(), before);
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

/// Byte offsets and lengths of every record's frame of a segment (durability marks left
/// out).
fn frames(path: &Path) -> Vec<(usize, usize)> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = stile_engine::wal::segment::SEGMENT_HEADER_LEN as usize;
    let mut out = Vec::new();
    while at < bytes.len() {
        let (frame, _, len) = decode_frame(&bytes[at..]).unwrap();
        if matches!(frame, Frame::Record(_)) {
            out.push((at, len));
        }
        at += len;
    }
    out
}

/// What a crash leaves when the durability marks written after the last record (an idle
/// writer's, the seal of a clean close) never reached the disk: the segment ends with its
/// last record, which nothing declares synced.
fn lose_marks_after_the_last_record(path: &Path) {
    let (off, len) = *frames(path).last().unwrap();
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..off + len]).unwrap();
}

fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x5A;
    std::fs::write(path, bytes).unwrap();
}

/// Mints a ticket and admits `n` codes, one record each; returns the codes.
fn admits(dir: &Path, clock: &Arc<ManualClock>, n: usize) -> Vec<stile_protocol::CodeBytes> {
    let e = open(dir, SyncMode::Always, clock).unwrap();
    let codes = crate::support::mint(&e, Policy::simple(1), n as u32).1;
    for (i, c) in codes.iter().enumerate() {
        e.checkin(&CheckinRequest {
            gate: G1,
            scan_id: i as u64,
            code: *c,
        });
    }
    codes
}

/// A damaged last record that no durability mark after it declares synced is what a power
/// cut leaves of a write it tore: cut off, and the engine opens.
#[test]
fn flipped_bytes_in_the_tail_record_are_cut_off_and_the_engine_opens() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let codes = admits(dir.path(), &clock, 5);
    let seg = segments(dir.path()).pop().unwrap();
    lose_marks_after_the_last_record(&seg);
    let (off, len) = *frames(&seg).last().unwrap();
    flip(&seg, off + len - 3);
    let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
    // The torn record is cut off: the segment ends where it began, but for the durability
    // mark the reopened log's writer may already have appended there, declaring the cut
    // length synced (when a record, not a mark, precedes the cut).
    let bytes = std::fs::read(&seg).unwrap();
    assert!(bytes.len() >= off, "torn record cut off");
    let after = &bytes[off..];
    if !after.is_empty() {
        let (frame, _, n) = decode_frame(after).unwrap();
        assert!(
            matches!(frame, Frame::Mark { synced_to } if synced_to == off as u64)
                && n == after.len(),
            "torn record cut off: only a mark of the cut length may follow, found {frame:?}"
        );
    }
    // Counted as torn up to its last written byte; zeros prepared after it are not damage.
    let torn = e.recovered().truncated_bytes;
    assert!((1..=len as u64).contains(&torn), "{:?}", e.recovered());
    // The last admit was lost with its record; the others stand.
    assert_eq!(
        e.checkin(&CheckinRequest {
            gate: G2,
            scan_id: 9,
            code: codes[3]
        })
        .kind,
        OutcomeKind::AlreadyUsed
    );
    assert_eq!(
        e.checkin(&CheckinRequest {
            gate: G2,
            scan_id: 10,
            code: codes[4]
        })
        .kind,
        OutcomeKind::Admitted
    );
}

#[test]
fn a_cut_short_or_zero_filled_tail_is_cut_off() {
    for damage in ["cut", "zeros"] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let codes = admits(dir.path(), &clock, 3);
        let seg = segments(dir.path()).pop().unwrap();
        let (off, len) = *frames(&seg).last().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        match damage {
            "cut" => bytes.truncate(off + len / 2),
            _ => bytes.extend_from_slice(&[0u8; 4096]),
        }
        std::fs::write(&seg, bytes).unwrap();
        let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
        let last = e
            .checkin(&CheckinRequest {
                gate: G2,
                scan_id: 9,
                code: codes[2],
            })
            .kind;
        let want = if damage == "cut" {
            OutcomeKind::Admitted
        } else {
            OutcomeKind::AlreadyUsed
        };
        assert_eq!(last, want, "{damage}");
    }
}

#[test]
fn flipped_bytes_in_a_middle_record_refuse_to_open_and_name_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    admits(dir.path(), &clock, 6);
    let seg = segments(dir.path()).pop().unwrap();
    let frames = frames(&seg);
    let (off, len) = frames[frames.len() - 3];
    flip(&seg, off + len / 2);
    let before = std::fs::read(&seg).unwrap();
    let err = open(dir.path(), SyncMode::Always, &clock)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("byte offset {off}")), "{err}");
    assert!(
        err.contains(seg.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        before,
        "a refused log is left untouched"
    );
    // A damaged length field in the middle is refused too, not taken for a torn tail.
    let (off1, _) = frames[1];
    let mut bytes = before.clone();
    bytes[off1 + 1] ^= 0x01;
    bytes[off + len / 2] ^= 0x5A;
    std::fs::write(&seg, bytes).unwrap();
    let err = open(dir.path(), SyncMode::Always, &clock)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("byte offset {off1}")), "{err}");
}

#[test]
fn records_of_one_ticket_logged_out_of_order_replay_to_the_later_state() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let (code, used, undone) = {
        let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
        let code = crate::support::mint(&e, Policy::simple(1), 1).1[0];
        e.checkin(&CheckinRequest {
            gate: G1,
            scan_id: 1,
            code,
        });
        let used = e.dump().slots[0].word;
        e.undo(&G1, 2, &Presented::Code(code));
        let undone = e.dump().slots[0].word;
        // Log the two states again, the later one first, as two racing threads might.
        let mut r = e.wal().unwrap().reserve(2);
        r.push(&Record::State {
            partition: 0,
            serial: 0,
            word: undone,
            first_scan_e: 0,
            scan: None,
        });
        r.push(&Record::State {
            partition: 0,
            serial: 0,
            word: used,
            first_scan_e: 0,
            scan: None,
        });
        r.submit().wait();
        (code, used, undone)
    };
    assert_ne!(used, undone);
    let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
    assert_eq!(
        e.dump().slots[0].word,
        undone,
        "version order wins over log order"
    );
    assert_eq!(
        e.checkin(&CheckinRequest {
            gate: G2,
            scan_id: 3,
            code
        })
        .kind,
        OutcomeKind::Admitted
    );
}

#[test]
fn a_log_naming_a_key_the_ring_lacks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let ring = dir.path().join("keys/ring");
    let old_ring = {
        let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
        let old = std::fs::read(&ring).unwrap();
        e.rotate_key().unwrap();
        old
    };
    std::fs::write(&ring, old_ring).unwrap();
    let err = open(dir.path(), SyncMode::Always, &clock)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ring file older than the log"), "{err}");
}

/// Polls a future to completion on this thread (enough for one `Durability::wait_async`).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn durability_is_awaitable_and_covers_what_the_batch_observed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
    let code = crate::support::mint(&e, Policy::simple(1), 1).1[0];
    let mut out = [stile_protocol::Outcome::FORGED];
    let admit = e.checkin_batch(
        &[CheckinRequest {
            gate: G1,
            scan_id: 1,
            code,
        }],
        &mut out,
    );
    assert_eq!(out[0].kind, OutcomeKind::Admitted);
    // A loser's token, taken after it saw the admit, covers the admit's record.
    let loser = e.checkin_batch(
        &[CheckinRequest {
            gate: G2,
            scan_id: 2,
            code,
        }],
        &mut out,
    );
    assert_eq!(out[0].kind, OutcomeKind::AlreadyUsed);
    block_on(loser.clone().wait_async());
    assert!(loser.is_ready() && admit.is_ready());
    let synced = e.wal().unwrap().durable_seq();
    assert!(
        synced >= 3,
        "policy, mint and admit records are durable: {synced}"
    );
}

#[test]
fn a_retried_scan_gets_its_original_answer_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
    let policy = e.add_policy(Policy::simple(1)).unwrap();
    let fresh = e
        .mint(&MintRequest {
            policy,
            partition: 0,
            count: 2,
        })
        .unwrap();
    let first = e.checkin(&CheckinRequest {
        gate: G1,
        scan_id: 41,
        code: fresh[0],
    });
    assert_eq!(first.kind, OutcomeKind::Admitted);
    let exit = e.exit(&G1, 42, &Presented::Code(fresh[1]));
    drop(e);

    // The answer to scan 41 was lost; the gate retries it against the reopened engine.
    let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
    let retry = CheckinRequest {
        gate: G1,
        scan_id: 41,
        code: fresh[0],
    };
    assert_eq!(
        e.checkin(&retry),
        first,
        "a retry is answered as the first try was"
    );
    let other = e.checkin(&CheckinRequest {
        scan_id: 43,
        ..retry
    });
    assert_eq!((other.kind, other.gate), (OutcomeKind::AlreadyUsed, 1));
    let from_g2 = e.checkin(&CheckinRequest { gate: G2, ..retry });
    assert_eq!(
        from_g2.kind,
        OutcomeKind::AlreadyUsed,
        "scan ids are per gate"
    );
    // A scan that changed nothing is decided afresh, as before the reopen.
    assert_eq!(e.exit(&G1, 42, &Presented::Code(fresh[1])), exit);
}

/// Regression: a ring whose secret differed from the one the snapshot holds (damaged, or
/// copied from another deployment with its own checksum) was accepted, and every ticket
/// then read as `forged`. The engine refuses to open, naming the ring file.
#[test]
fn a_ring_whose_secret_differs_from_the_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
        crate::support::mint(&e, Policy::simple(1), 3);
        e.snapshot().unwrap();
    }
    // Another deployment's ring, whole and with a good checksum.
    let other = tempfile::tempdir().unwrap();
    drop(open(other.path(), SyncMode::Always, &clock).unwrap());
    let ring = dir.path().join("keys/ring");
    std::fs::copy(other.path().join("keys/ring"), &ring).unwrap();
    let err = open(dir.path(), SyncMode::Always, &clock)
        .unwrap_err()
        .to_string();
    assert!(err.contains("another secret"), "{err}");
    assert!(err.contains(ring.to_str().unwrap()), "{err}");
}

/// Regression: gate 2 admitted T (scan 100) and undid it, gate 4 admitted T, and gate 2's
/// resend of scan 100 answered `admitted` again: two gates opened for one recorded entry.
/// The retry is told the admit was undone, before and after a reopen.
#[test]
fn a_retried_admit_that_was_undone_answers_undone_not_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let g2 = Gate::new(2, 1);
    let g4 = Gate::new(4, 1);
    let code = {
        let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
        let code = crate::support::mint(&e, Policy::simple(1), 1).1[0];
        let scan = |gate, scan_id| CheckinRequest {
            gate,
            scan_id,
            code,
        };
        assert_eq!(e.checkin(&scan(g2, 100)).kind, OutcomeKind::Admitted);
        assert_eq!(
            e.undo(&g2, 101, &Presented::Code(code)).kind,
            OutcomeKind::Undone
        );
        assert_eq!(e.checkin(&scan(g4, 7)).kind, OutcomeKind::Admitted);
        let retry = e.checkin(&scan(g2, 100));
        assert_eq!(
            (retry.kind, retry.gate),
            (OutcomeKind::Undone, 2),
            "{retry:?}"
        );
        // The undo's own retry still gets its answer.
        assert_eq!(
            e.undo(&g2, 101, &Presented::Code(code)).kind,
            OutcomeKind::Undone
        );
        code
    };
    let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
    let retry = e.checkin(&CheckinRequest {
        gate: g2,
        scan_id: 100,
        code,
    });
    assert_eq!(retry.kind, OutcomeKind::Undone, "after a reopen: {retry:?}");
    let again = e.checkin(&CheckinRequest {
        gate: g2,
        scan_id: 102,
        code,
    });
    assert_eq!((again.kind, again.gate), (OutcomeKind::AlreadyUsed, 4));
}

/// Regression: a clock before the engine's epoch clamped (a one-hour pass became valid for
/// years) and one past its last second expired passes at once. Opening refuses both.
#[test]
fn a_clock_outside_the_engines_times_refuses_to_open() {
    for bad in [
        stile_protocol::ENGINE_EPOCH_UNIX_S - 1,
        stile_protocol::ENGINE_EPOCH_UNIX_S + (1 << 31),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(bad));
        let err = open(dir.path(), SyncMode::Always, &clock)
            .unwrap_err()
            .to_string();
        assert!(err.contains("set the clock right"), "{err}");
        assert!(!dir.path().join("wal").exists(), "nothing written");
    }
}

/// Regression: a clock stepped forward a day and back let a 60 s pass, counted from its
/// first scan, admit again. The engine's time never goes back: it stands still.
#[test]
fn a_clock_stepped_forward_and_back_lets_no_expired_pass_in() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
    let pass = Policy {
        validity: Validity {
            duration_from_first_scan_s: Some(60),
            ..Validity::ALWAYS
        },
        entry: EntryRule::pairs(0),
        ..Policy::simple(1)
    };
    let code = crate::support::mint(&e, pass, 1).1[0];
    let scan = |scan_id| CheckinRequest {
        gate: G1,
        scan_id,
        code,
    };
    assert_eq!(e.checkin(&scan(1)).kind, OutcomeKind::Admitted);
    assert_eq!(
        e.exit(&G1, 2, &Presented::Code(code)).kind,
        OutcomeKind::Exited
    );
    clock.advance(86_400);
    assert_eq!(e.checkin(&scan(3)).kind, OutcomeKind::Expired);
    clock.set(T0 + 10);
    assert_eq!(
        e.checkin(&scan(4)).kind,
        OutcomeKind::Expired,
        "time stood still"
    );
    assert_eq!(e.clock_steps_back(), (1, 86_400 - 10));
}

/// A log whose newest time is hours ahead of the clock refuses to open (judged by that
/// clock, tickets would be admitted again), unless the operator says the log is wrong;
/// within a few minutes the engine's time starts at the log's.
#[test]
fn a_log_ahead_of_the_clock_refuses_unless_the_operator_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0 + 7_200));
    let code = {
        let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
        let code = crate::support::mint(&e, Policy::simple(1), 1).1[0];
        let admitted = e.checkin(&CheckinRequest {
            gate: G1,
            scan_id: 1,
            code,
        });
        assert_eq!(admitted.kind, OutcomeKind::Admitted);
        code
    };
    clock.set(T0);
    let err = open(dir.path(), SyncMode::Always, &clock)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--accept-clock-behind-log"), "{err}");
    let accepted = Engine::open(
        dir.path(),
        EngineConfig {
            partitions: vec![0, 1],
            accept_clock_behind_log: true,
            ..EngineConfig::default()
        },
        clock.clone(),
    )
    .unwrap();
    assert_eq!(
        accepted.now_unix_s(),
        T0,
        "the clock's time, as the operator said"
    );
    let again = accepted.checkin(&CheckinRequest {
        gate: G1,
        scan_id: 2,
        code,
    });
    assert_eq!(again.kind, OutcomeKind::AlreadyUsed);
    drop(accepted);
    // A clock a minute behind the log: opens, and time starts at the log's.
    clock.set(T0 + 7_200 - 60);
    let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
    assert_eq!(e.now_unix_s(), T0 + 7_200);
}

/// Regression: with every log segment deleted and no snapshot, the node started empty
/// beside its old key ring and minted the used tickets' codes again. A ring without a log
/// refuses to open.
#[test]
fn a_ring_without_its_log_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
        let code = crate::support::mint(&e, Policy::simple(1), 1).1[0];
        e.checkin(&CheckinRequest {
            gate: G1,
            scan_id: 1,
            code,
        });
    }
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    let err = open(dir.path(), SyncMode::Always, &clock)
        .unwrap_err()
        .to_string();
    assert!(err.contains("its log was deleted"), "{err}");
    std::fs::create_dir(dir.path().join("wal")).unwrap();
    let err = open(dir.path(), SyncMode::Always, &clock)
        .unwrap_err()
        .to_string();
    assert!(err.contains("its log was deleted"), "{err}");
}

/// Regression: the remembered scans were not in snapshots, so after a snapshot and a
/// restart a retried admit that had been undone answered `admitted` again (and a retried
/// admit of a multi-entry ticket spent a second entry). They are part of the snapshot now.
#[test]
fn retries_keep_their_answers_across_a_snapshot_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let g2 = Gate::new(2, 1);
    let twice = Policy {
        entry: EntryRule::multi(2),
        ..Policy::simple(1)
    };
    let (undone, multi) = {
        let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
        let codes = crate::support::mint(&e, twice, 2).1;
        let scan = |gate, scan_id, code| CheckinRequest {
            gate,
            scan_id,
            code,
        };
        assert_eq!(
            e.checkin(&scan(G1, 100, codes[0])).kind,
            OutcomeKind::Admitted
        );
        assert_eq!(
            e.undo(&G1, 101, &Presented::Code(codes[0])).kind,
            OutcomeKind::Undone
        );
        assert_eq!(
            e.checkin(&scan(g2, 5, codes[0])).kind,
            OutcomeKind::Admitted
        );
        let first = e.checkin(&scan(G1, 102, codes[1]));
        assert_eq!((first.kind, first.entries), (OutcomeKind::Admitted, 1));
        e.snapshot().unwrap();
        (codes[0], codes[1])
    };
    let e = open(dir.path(), SyncMode::Always, &clock).unwrap();
    let retry = e.checkin(&CheckinRequest {
        gate: G1,
        scan_id: 100,
        code: undone,
    });
    assert_eq!(retry.kind, OutcomeKind::Undone, "{retry:?}");
    let retry = e.checkin(&CheckinRequest {
        gate: G1,
        scan_id: 102,
        code: multi,
    });
    assert_eq!(
        (retry.kind, retry.entries),
        (OutcomeKind::Admitted, 1),
        "no second entry"
    );
    assert_eq!(e.status(&Presented::Code(multi)).unwrap().word.entries, 1);
}
