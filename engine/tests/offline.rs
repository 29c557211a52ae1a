//! Reconciliation of offline scans and gates' replicas, through restarts and snapshots.

use std::path::Path;
use std::sync::Arc;

use stile_engine::offline::ConflictKind;
use stile_engine::{
    CodeBytes, Engine, EngineConfig, Gate, GateOp, ManualClock, MintRequest, OfflineScan,
    OutcomeKind, Policy, Presented,
};

const T0: u64 = 1_800_000_000;

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Engine {
    Engine::open(dir, EngineConfig::default(), clock.clone()).unwrap()
}

fn mint(e: &Engine, provider: u16, count: u32) -> Vec<CodeBytes> {
    let policy = e.add_policy(Policy::simple(provider)).unwrap();
    e.mint(&MintRequest {
        policy,
        partition: 0,
        count,
    })
    .unwrap()
}

fn admit(scan_id: u64, code: CodeBytes, at_unix_s: u64) -> OfflineScan {
    OfflineScan {
        scan_id,
        scanned_at_unix_ms: at_unix_s * 1000,
        last_online_unix_s: T0,
        op: GateOp::Entry,
        decision: OutcomeKind::Admitted,
        code,
    }
}

fn upload(e: &Engine, gate: &Gate, scan: &OfflineScan) -> OutcomeKind {
    let (o, d) = e.checkin_offline(gate, scan);
    d.wait();
    o.kind
}

/// The conflicts as (kind, first gate, second gate, second time).
fn conflicts(e: &Engine) -> Vec<(ConflictKind, u16, u16, u64)> {
    let (list, next) = e.conflicts(None, 0, 1000);
    assert_eq!(next, None);
    list.iter()
        .map(|(_, c, code)| {
            assert!(code.is_some(), "a conflict names its code");
            (c.kind, c.first.gate, c.second.gate, c.second.at_unix_s)
        })
        .collect()
}

#[test]
fn uploads_apply_once_and_record_each_kind_of_conflict_through_restarts_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), &clock);
    let codes = mint(&e, 1, 6);
    let (online, offline) = (Gate::new(1, 1), Gate::new(2, 1));
    // Before the upload: codes[1] used online, codes[2] revoked, codes[3] transferred.
    assert_eq!(
        e.checkin_presented(&online, 1, &Presented::Code(codes[1]))
            .kind,
        OutcomeKind::Admitted
    );
    e.revoke(&Presented::Code(codes[2])).unwrap();
    e.transfer(&Presented::Code(codes[3])).unwrap();
    clock.advance(600);
    let scans: Vec<OfflineScan> = (0..4)
        .map(|i| admit(10 + i as u64, codes[i], T0 + 60 + i as u64))
        .collect();
    let answers: Vec<_> = scans.iter().map(|s| upload(&e, &offline, s)).collect();
    assert_eq!(
        answers,
        [
            OutcomeKind::Admitted,
            OutcomeKind::AlreadyUsed,
            OutcomeKind::Revoked,
            OutcomeKind::Revoked
        ]
    );
    let want = vec![
        (ConflictKind::DoubleEntry, 1, 2, T0 + 61),
        (ConflictKind::AfterRevoke, 0, 2, T0 + 62),
        (ConflictKind::AfterTransfer, 0, 2, T0 + 63),
    ];
    assert_eq!(conflicts(&e), want);
    // The offline admit counts from its scan time: the ticket's first scan is then.
    let status = e.status(&Presented::Code(codes[0])).unwrap();
    assert_eq!(status.first_scan_unix_s, Some(T0 + 60));
    // A resumed upload applies nothing twice: no new conflict, no second admit.
    for s in &scans {
        upload(&e, &offline, s);
    }
    assert_eq!(conflicts(&e), want);
    // Another gate's offline admit of the ticket admitted offline above: a conflict.
    assert_eq!(
        upload(&e, &Gate::new(3, 1), &admit(1, codes[0], T0 + 100)),
        OutcomeKind::AlreadyUsed
    );
    assert_eq!(conflicts(&e).len(), 4);
    drop(e);

    // Replayed from the log: the same conflicts, and the marks hold.
    let e = open(dir.path(), &clock);
    assert_eq!(conflicts(&e).len(), 4);
    assert_eq!(conflicts(&e)[..3], want[..]);
    for s in &scans {
        upload(&e, &offline, s);
    }
    assert_eq!(conflicts(&e).len(), 4);
    // From a snapshot (and the log after it): the same again.
    e.snapshot().unwrap();
    upload(&e, &offline, &admit(20, codes[1], T0 + 200));
    assert_eq!(conflicts(&e).len(), 5);
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!(conflicts(&e).len(), 5);
    for s in scans.iter().chain([&admit(20, codes[1], T0 + 200)]) {
        upload(&e, &offline, s);
    }
    assert_eq!(conflicts(&e).len(), 5);
    let counts = e.conflict_counts();
    assert_eq!(
        counts,
        vec![
            ((1, ConflictKind::DoubleEntry), 3),
            ((1, ConflictKind::AfterRevoke), 1),
            ((1, ConflictKind::AfterTransfer), 1),
        ]
    );
    assert!(e.conflicts(Some(2), 0, 10).0.is_empty());
}

#[test]
fn scan_times_are_clamped_and_other_providers_and_refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), &clock);
    let codes = mint(&e, 1, 3);
    clock.advance(100);
    let gate = Gate::new(4, 1);
    // A time before the last online contact is clamped up to it; one in the future, to now.
    let mut early = admit(1, codes[0], T0 - 5000);
    early.last_online_unix_s = T0 + 10;
    upload(&e, &gate, &early);
    let status = e.status(&Presented::Code(codes[0])).unwrap();
    assert_eq!(status.first_scan_unix_s, Some(T0 + 10));
    upload(&e, &gate, &admit(2, codes[1], T0 + 9999));
    let status = e.status(&Presented::Code(codes[1])).unwrap();
    assert_eq!(status.first_scan_unix_s, Some(T0 + 100));
    // A gate of another provider: refused, nothing applied.
    assert_eq!(
        upload(&e, &Gate::new(5, 2), &admit(1, codes[2], T0)),
        OutcomeKind::WrongProvider
    );
    // A refusal the gate gave offline changes nothing.
    let mut refused = admit(3, codes[2], T0);
    refused.decision = OutcomeKind::AlreadyUsed;
    assert_eq!(upload(&e, &gate, &refused), OutcomeKind::AlreadyUsed);
    let status = e.status(&Presented::Code(codes[2])).unwrap();
    assert_eq!(status.first_scan_unix_s, None);
    assert!(conflicts(&e).is_empty());
}

#[test]
fn replica_pages_carry_every_ticket_of_the_provider_with_its_codes_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), &clock);
    let mut mine = mint(&e, 1, 50);
    mint(&e, 2, 30);
    // Codes signed before a key rotation keep their key: their fingerprints too.
    e.rotate_key().unwrap();
    mine.extend(mint(&e, 1, 20));
    let transferred = e.transfer(&Presented::Code(mine[0])).unwrap();
    mine.push(transferred);
    drop(e);
    // After a restart (the keys come back from the log and the slots).
    let e = open(dir.path(), &clock);
    let mut got = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let next = e.replica_page(1, after, 7, &mut got);
        pages += 1;
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
        assert!(pages < 100, "pages end");
    }
    assert_eq!(got.len(), mine.len());
    for code in &mine {
        let h = code.header();
        let t = got
            .iter()
            .find(|t| (t.partition, t.serial) == (h.partition, h.serial))
            .expect("every ticket of the provider is in the replica");
        assert_eq!(t.fingerprint, stile_protocol::fingerprint(code));
    }
    assert!(e.replica_ticket(2, 0, mine[1].header().serial).is_none());
}

#[test]
fn rotation_keys_reach_replicas_only_for_policies_that_allow_offline_rotating_codes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), &clock);
    let rotating = |offline_rotating| Policy {
        format: stile_engine::CodeFormat::Rotating,
        offline_rotating,
        ..Policy::simple(1)
    };
    // Static codes are verified offline by fingerprint: the flag makes no sense there.
    assert!(e
        .add_policy(Policy {
            offline_rotating: true,
            ..Policy::simple(1)
        })
        .is_err());
    for (allowed, count) in [(true, 3), (false, 2)] {
        let policy = e.add_policy(rotating(allowed)).unwrap();
        e.mint(&MintRequest {
            policy,
            partition: 0,
            count,
        })
        .unwrap();
    }
    let keys_of = |e: &Engine| {
        let mut got = Vec::new();
        assert_eq!(e.replica_page(1, None, 100, &mut got), None);
        got.iter()
            .map(|t| t.rotating_key.is_some())
            .collect::<Vec<bool>>()
    };
    assert_eq!(keys_of(&e), [true, true, true, false, false]);
    // Through a restart from the log, then from a snapshot.
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!(keys_of(&e), [true, true, true, false, false]);
    e.snapshot().unwrap();
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!(keys_of(&e), [true, true, true, false, false]);
    let mut got = Vec::new();
    e.replica_page(1, None, 1, &mut got);
    assert_eq!(
        got[0].rotating_key,
        e.keys().ticket_key(e.keys().active_id(), 0, got[0].serial)
    );
}

/// Uploads are applied by exact scan id, not below a highest mark: a scan uploaded after
/// a later one (a retry after a full disk, or a second gate given the same certificate,
/// whose scan ids interleave with the first's) is applied all the same, once.
#[test]
fn an_upload_below_a_later_scan_id_is_still_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), &clock);
    let codes = mint(&e, 1, 4);
    let gate = Gate::new(5, 1);
    clock.advance(600);
    // Gate "B" (same id) uploads first: scan 20 admits codes[0], scan 30 a refusal.
    assert_eq!(
        upload(&e, &gate, &admit(20, codes[0], T0 + 20)),
        OutcomeKind::Admitted
    );
    let refused = OfflineScan {
        decision: OutcomeKind::AlreadyUsed,
        ..admit(30, codes[3], T0 + 30)
    };
    assert_eq!(upload(&e, &gate, &refused), OutcomeKind::AlreadyUsed);
    // Gate "A" then uploads scans 10 and 15: both applied, and its admit of codes[0] (also
    // admitted by B) is the double entry it is.
    assert_eq!(
        upload(&e, &gate, &admit(10, codes[1], T0 + 10)),
        OutcomeKind::Admitted
    );
    assert_eq!(
        upload(&e, &gate, &admit(15, codes[0], T0 + 15)),
        OutcomeKind::AlreadyUsed
    );
    assert_eq!(
        conflicts(&e),
        vec![(ConflictKind::DoubleEntry, 5, 5, T0 + 15)]
    );
    // Resumed uploads of all of them apply nothing again, before and after a restart.
    let again = |e: &Engine| {
        for s in [
            admit(20, codes[0], T0 + 20),
            admit(10, codes[1], T0 + 10),
            admit(15, codes[0], T0 + 15),
        ] {
            upload(e, &gate, &s);
        }
        assert_eq!(conflicts(e).len(), 1);
        let s = e.status(&Presented::Code(codes[1])).unwrap();
        assert_eq!(s.word.entries, 1, "admitted once");
    };
    again(&e);
    drop(e);
    let e = open(dir.path(), &clock);
    again(&e);
    e.snapshot().unwrap();
    drop(e);
    let e = open(dir.path(), &clock);
    again(&e);
}
