//! A standby's engine: seeded from its primary's ring and snapshot, then fed the primary's
//! log records under their own numbers; and the primary's answers held for the standby.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use stile_engine::standby::{ReplicateError, Seed};
use stile_engine::wal::tail::LogTail;
use stile_engine::wal::Record;
use stile_engine::{
    CheckinRequest, CodeBytes, Engine, EngineConfig, Gate, ManualClock, MintRequest, OutcomeKind,
    Policy, Presented,
};

const T0: u64 = 1_800_000_000;

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Engine {
    Engine::open(dir, EngineConfig::default(), clock.clone()).unwrap()
}

fn admit(e: &Engine, gate: u16, scan_id: u64, code: CodeBytes) -> OutcomeKind {
    e.checkin(&CheckinRequest {
        gate: Gate::new(gate, 1),
        scan_id,
        code,
    })
    .kind
}

/// The records of `primary`'s log from `from` on, as a primary sends them, and where they
/// end.
fn records_from(primary: &Engine, from: u64) -> (Vec<(u64, Record)>, u64) {
    let wal = primary.wal().unwrap();
    let limit = wal.local_seq();
    let mut tail = LogTail::new(wal.dir(), from);
    let mut out = Vec::new();
    assert!(tail.read(limit, usize::MAX, &mut out).unwrap());
    (out, limit)
}

/// Seeds `dir` from `primary`'s newest snapshot and ring; returns the snapshot's position.
fn seed(primary: &Engine, dir: &Path) -> u64 {
    let info = primary.snapshot().unwrap();
    let ring = primary.keys().to_text();
    let mut seed = Seed::begin(dir, ring.as_bytes(), info.start_seq).unwrap();
    let bytes = std::fs::read(&info.path).unwrap();
    for chunk in bytes.chunks(1000) {
        seed.write(chunk).unwrap();
    }
    assert_eq!(seed.finish().unwrap(), info.start_seq);
    info.start_seq
}

fn state(e: &Engine, code: &CodeBytes) -> String {
    format!("{:?}", e.status(&Presented::Code(*code)).unwrap())
}

#[test]
fn a_seeded_standby_holds_every_change_under_the_primarys_numbers_and_after_a_restart() {
    let (pdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = Arc::new(ManualClock::new(T0));
    let primary = open(pdir.path(), &clock);
    let policy = primary.add_policy(Policy::simple(1)).unwrap();
    let codes = primary
        .mint(&MintRequest {
            policy,
            partition: 0,
            count: 50,
        })
        .unwrap();
    for (i, code) in codes[..10].iter().enumerate() {
        assert_eq!(admit(&primary, 1, i as u64, *code), OutcomeKind::Admitted);
    }
    let start = seed(&primary, sdir.path());

    // After the snapshot: admits, a refused scan (a number used by nothing), a key rotation
    // (the standby takes the ring), a mint under the new key, a revoke.
    for (i, code) in codes[10..20].iter().enumerate() {
        assert_eq!(admit(&primary, 2, i as u64, *code), OutcomeKind::Admitted);
    }
    assert_eq!(admit(&primary, 2, 99, codes[10]), OutcomeKind::AlreadyUsed);
    primary.rotate_key().unwrap();
    let later = primary
        .mint(&MintRequest {
            policy,
            partition: 0,
            count: 5,
        })
        .unwrap();
    primary.revoke(&Presented::Code(codes[30])).unwrap();

    let standby = open(sdir.path(), &clock);
    assert_eq!(standby.wal().unwrap().reserved_seq(), start);
    let (records, upto) = records_from(&primary, start);
    assert!(records.iter().any(|(_, r)| matches!(r, Record::Key { .. })));
    // A batch that does not start where the standby's log goes on is refused whole.
    assert!(matches!(
        standby.apply_replicated(start + 1, upto, &records[1..]),
        Err(ReplicateError::Gap { .. })
    ));
    // The ring first, as a primary sends it before a batch with a key record.
    standby.keys().adopt(&primary.keys().to_text()).unwrap();
    let half = records.len() / 2;
    let mid = records[half].0;
    standby
        .apply_replicated(start, mid, &records[..half])
        .unwrap()
        .wait();
    standby
        .apply_replicated(mid, upto, &records[half..])
        .unwrap()
        .wait();
    assert_eq!(standby.wal().unwrap().reserved_seq(), upto);

    let check = |e: &Engine| {
        for code in codes.iter().chain(&later) {
            assert_eq!(state(e, code), state(&primary, code), "{code:?}");
        }
    };
    check(&standby);
    drop(standby);
    // Reopened from its own files: the same state, and its log goes on where the primary's does.
    let standby = open(sdir.path(), &clock);
    check(&standby);
    assert_eq!(standby.wal().unwrap().reserved_seq(), upto);
    // As the new leader it refuses what was admitted on the primary and admits the rest.
    assert_eq!(admit(&standby, 3, 1, codes[15]), OutcomeKind::AlreadyUsed);
    assert_eq!(admit(&standby, 3, 2, later[0]), OutcomeKind::Admitted);
    // A retry of a scan the primary answered gets that answer, not `already_used`.
    assert_eq!(admit(&standby, 2, 5, codes[15]), OutcomeKind::Admitted);
}

#[test]
fn seeding_refuses_a_data_dir_with_state_and_a_damaged_snapshot() {
    let (pdir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = Arc::new(ManualClock::new(T0));
    let primary = open(pdir.path(), &clock);
    primary.add_policy(Policy::simple(1)).unwrap();
    let info = primary.snapshot().unwrap();
    let ring = primary.keys().to_text();
    // The primary's own dir holds state.
    assert!(Seed::begin(pdir.path(), ring.as_bytes(), info.start_seq).is_err());
    let mut bytes = std::fs::read(&info.path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let mut seed = Seed::begin(other.path(), ring.as_bytes(), info.start_seq).unwrap();
    seed.write(&bytes).unwrap();
    assert!(seed.finish().is_err());
    // Nothing counts as state: seeding again starts over.
    let mut seed = Seed::begin(other.path(), ring.as_bytes(), info.start_seq).unwrap();
    seed.write(&std::fs::read(&info.path).unwrap()).unwrap();
    seed.finish().unwrap();
    drop(open(other.path(), &clock));
}

/// A `.seeding` mark in a data dir whose log holds records (put there by hand, or left by
/// anything but a seed) is refused, not taken as a seed cut short: seeding again would
/// delete the log, and a rejoining old primary's answered admits with it (found by
/// creating the mark in such a dir: the node reseeded and the admits were gone).
#[test]
fn a_seeding_mark_beside_a_log_with_records_is_refused_not_seeded_over() {
    let (pdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = Arc::new(ManualClock::new(T0));
    let primary = open(pdir.path(), &clock);
    let policy = primary.add_policy(Policy::simple(1)).unwrap();
    seed(&primary, sdir.path());
    // A seed cut short after its log was started is seeded again.
    std::fs::write(sdir.path().join(".seeding"), "").unwrap();
    let start = seed(&primary, sdir.path());
    let standby = open(sdir.path(), &clock);
    let mint = MintRequest {
        policy,
        partition: 0,
        count: 3,
    };
    primary.mint(&mint).unwrap();
    let (records, upto) = records_from(&primary, start);
    standby
        .apply_replicated(start, upto, &records)
        .unwrap()
        .wait();
    drop(standby);
    std::fs::write(sdir.path().join(".seeding"), "").unwrap();
    let ring = primary.keys().to_text();
    let err = Seed::begin(sdir.path(), ring.as_bytes(), upto).unwrap_err();
    assert!(err.to_string().contains("remove"), "{err}");
    assert!(sdir.path().join("wal").exists());
}

#[test]
fn with_a_standby_required_answers_wait_for_its_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let primary = Arc::new(open(dir.path(), &clock));
    let policy = primary.add_policy(Policy::simple(1)).unwrap();
    let codes = primary
        .mint(&MintRequest {
            policy,
            partition: 0,
            count: 2,
        })
        .unwrap();
    let wal = primary.wal().unwrap();
    wal.require_acks(true);
    let p = primary.clone();
    let first = codes[0];
    let answered = std::thread::spawn(move || admit(&p, 1, 1, first));
    // The change is durable here, and still not answered: nothing acknowledged it.
    let mut polls = 0;
    while wal.local_seq() < wal.reserved_seq() {
        std::thread::sleep(Duration::from_millis(1));
        polls += 1;
        assert!(polls < 10_000, "the log never synced");
    }
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            !answered.is_finished(),
            "answered before the standby acknowledged"
        );
    }
    assert!(wal.durable_seq() < wal.local_seq());
    wal.acknowledge(wal.local_seq());
    assert_eq!(answered.join().unwrap(), OutcomeKind::Admitted);
    // Released by no longer requiring acknowledgements, too.
    let p = primary.clone();
    let answered = std::thread::spawn(move || admit(&p, 1, 2, codes[1]));
    while wal.local_seq() < wal.reserved_seq() {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!answered.is_finished());
    wal.require_acks(false);
    assert_eq!(answered.join().unwrap(), OutcomeKind::Admitted);
}

/// A node that led on past a failover holds admits its successor never had: handed over,
/// each is applied once as an offline admit of its gate; one the successor admitted too is
/// a conflict, and one the gate sent the successor again (the same scan) is neither.
#[test]
fn a_diverged_logs_admits_apply_once_on_the_new_leader_with_conflicts_where_they_clash() {
    let (odir, ndir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = Arc::new(ManualClock::new(T0));
    let old = open(odir.path(), &clock);
    let policy = old.add_policy(Policy::simple(1)).unwrap();
    let codes = old
        .mint(&MintRequest {
            policy,
            partition: 0,
            count: 10,
        })
        .unwrap();
    let start = seed(&old, ndir.path());
    let new = open(ndir.path(), &clock);

    // The old leader, alone: three admits of gate 3 and an exit-less refusal.
    for (i, code) in codes[..3].iter().enumerate() {
        assert_eq!(admit(&old, 3, 10 + i as u64, *code), OutcomeKind::Admitted);
    }
    assert_eq!(admit(&old, 3, 20, codes[0]), OutcomeKind::AlreadyUsed);
    // The new leader: codes[1] admitted at another gate; codes[2]'s scan sent again by
    // gate 3 after the failover.
    assert_eq!(admit(&new, 5, 1, codes[1]), OutcomeKind::Admitted);
    assert_eq!(admit(&new, 3, 12, codes[2]), OutcomeKind::Admitted);

    let (suffix, _) = records_from(&old, start);
    let admits = stile_engine::standby::admits_in(&suffix);
    assert_eq!(admits.len(), 3, "{admits:?}");
    assert!(admits.iter().all(|a| a.gate == 3 && a.at_unix_s == T0));
    let kinds: Vec<_> = admits
        .iter()
        .map(|a| new.apply_diverged_admit(a).0.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            OutcomeKind::Admitted,
            OutcomeKind::AlreadyUsed,
            OutcomeKind::Admitted
        ]
    );
    let (conflicts, _) = new.conflicts(None, 0, 10);
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].2, Some(codes[1]));
    assert_eq!(conflicts[0].1.second.gate, 3);
    // Offered again (a rejoin cut short): nothing changes.
    for a in &admits {
        let _ = new.apply_diverged_admit(a);
    }
    assert_eq!(new.conflicts(None, 0, 10).0.len(), 1);
    assert_eq!(admit(&new, 7, 1, codes[0]), OutcomeKind::AlreadyUsed);
    assert_eq!(admit(&new, 7, 2, codes[3]), OutcomeKind::Admitted);
}
