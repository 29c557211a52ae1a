//! A log on a real filesystem that fills up: an engine on a small tmpfs logs into its
//! prepared segments until they are used up, then refuses every change before making it
//! (`disk_full`, the ticket unchanged) while it still answers what needs no record, and
//! takes changes again by itself once space is freed; every acknowledged admit survives a
//! reopening. Mounting needs root, as CI has: the test fails, never skips, without it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::Tmpfs;
use stile_engine::policy::{EntryRule, Policy, Validity};
use stile_engine::storage::StdStorage;
use stile_engine::wal::segment;
use stile_engine::{
    CheckinRequest, CodeBytes, CodeFormat, Engine, EngineConfig, Gate, ManualClock, MintError,
    MintRequest, OutcomeKind, Presented, SyncMode, TicketError, TicketState,
};

/// "Now" for the test's clock: 2027-01-15T08:00:00Z.
const T0: u64 = 1_800_000_000;
/// Log segments of 64 KiB, so that a few hundred kilobytes hold a runway.
const SEGMENT_BYTES: u64 = 64 << 10;
/// The tmpfs: room for the data dir, a runway of two spares, and little else.
const TMPFS_BYTES: u64 = 2 << 20;
const GATE: Gate = Gate::new(1, 1);

fn open(data: &Path) -> Engine {
    let config = EngineConfig {
        partitions: vec![0],
        sync: SyncMode::Always,
        segment_max_bytes: SEGMENT_BYTES,
        log_runway: 2,
        ..EngineConfig::default()
    };
    Engine::open(data, config, Arc::new(ManualClock::new(T0))).unwrap()
}

fn policy() -> Policy {
    Policy {
        provider: 1,
        format: CodeFormat::Static,
        validity: Validity::default(),
        entry: EntryRule::SINGLE,
        undo_window_s: 60,
        offline_rotating: false,
        online_only: false,
    }
}

fn checkin(e: &Engine, code: &CodeBytes, scan_id: u64) -> OutcomeKind {
    e.checkin(&CheckinRequest {
        gate: GATE,
        scan_id,
        code: *code,
    })
    .kind
}

fn state(e: &Engine, code: &CodeBytes) -> TicketState {
    e.status(&Presented::Code(*code)).unwrap().word.state
}

/// Polls `done` every 20 ms for at most `limit`.
fn within(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_disk_refuses_changes_before_making_them_and_takes_them_again_once_space_is_back() {
    let fs = Tmpfs::mount(TMPFS_BYTES);
    let data = fs.path.join("data");
    let e = open(&data);
    let id = e.add_policy(policy()).unwrap();
    let codes = e
        .mint(&MintRequest {
            policy: id,
            partition: 0,
            count: 5000,
        })
        .unwrap();
    let wal = e.wal().unwrap();
    let spare_room = SEGMENT_BYTES - segment::SEGMENT_HEADER_LEN;
    within(Duration::from_secs(10), "the runway prepared", || {
        wal.runway_bytes() >= 2 * spare_room
    });

    // Nothing left but the runway: check-ins go on in it, then are refused.
    let filler = fs.fill("filler");
    assert!(std::fs::metadata(&filler).unwrap().len() > 0);
    let mut admitted = Vec::new();
    let refused = loop {
        let i = admitted.len();
        assert!(i < codes.len(), "never refused: {i} check-ins admitted");
        match checkin(&e, &codes[i], i as u64) {
            OutcomeKind::Admitted => admitted.push(codes[i]),
            OutcomeKind::DiskFull => break codes[i],
            other => panic!("check-in {i}: {other}"),
        }
    };
    assert!(
        admitted.len() as u64 * 58 >= spare_room,
        "the runway took {} check-ins",
        admitted.len()
    );
    assert!(wal.disk_full());
    // Nothing changed: the refused ticket is still valid, and still refused.
    assert_eq!(state(&e, &refused), TicketState::Valid);
    let scan_id = admitted.len() as u64;
    assert_eq!(checkin(&e, &refused, scan_id), OutcomeKind::DiskFull);
    assert_eq!(state(&e, &refused), TicketState::Valid);
    // What needs no record is answered as always.
    assert_eq!(checkin(&e, &admitted[0], 1 << 40), OutcomeKind::AlreadyUsed);
    let last = admitted.len() - 1;
    assert_eq!(
        checkin(&e, &admitted[last], last as u64),
        OutcomeKind::Admitted,
        "a retry gets its remembered answer"
    );
    let mut bytes = codes.last().unwrap().as_bytes().to_vec();
    bytes[19] ^= 1;
    let forged = CodeBytes::from_slice(&bytes).unwrap();
    assert_eq!(checkin(&e, &forged, 1 << 41), OutcomeKind::Forged);
    // Every change is refused, and changes nothing.
    let refused_ticket = Presented::Code(refused);
    assert_eq!(e.revoke(&refused_ticket), Err(TicketError::DiskFull));
    assert_eq!(e.transfer(&refused_ticket), Err(TicketError::DiskFull));
    assert_eq!(state(&e, &refused), TicketState::Valid);
    let minted = e.minted_tickets();
    let mint = e.mint(&MintRequest {
        policy: id,
        partition: 0,
        count: 1,
    });
    assert_eq!(mint, Err(MintError::DiskFull));
    assert_eq!(e.minted_tickets(), minted);
    let undo = e.undo(&GATE, 1 << 42, &Presented::Code(*admitted.last().unwrap()));
    assert_eq!(undo.kind, OutcomeKind::DiskFull);
    assert_eq!(state(&e, admitted.last().unwrap()), TicketState::Used);

    // Space back: a spare is made within a second or two, and the same scan is admitted.
    std::fs::remove_file(&filler).unwrap();
    within(Duration::from_secs(10), "check-ins admitted again", || {
        checkin(&e, &refused, scan_id) == OutcomeKind::Admitted
    });
    admitted.push(refused);
    assert!(!wal.disk_full());

    // Every acknowledged admit is in the log.
    drop(e);
    let e = open(&data);
    for code in &admitted {
        assert_eq!(state(&e, code), TicketState::Used);
    }
    assert_eq!(state(&e, &codes[admitted.len()]), TicketState::Valid);
}

/// A segment switch on a filesystem with no room left still records the log's head: no new
/// copy fits, so its 16 bytes are written over the old ones, as a segment's link is.
#[test]
fn the_logs_head_is_rewritten_in_place_when_no_copy_of_it_fits() {
    let fs = Tmpfs::mount(256 << 10);
    segment::write_head(&StdStorage, &fs.path, 7).unwrap();
    fs.fill("filler");
    assert!(
        std::fs::write(fs.path.join("probe"), b"x").is_err(),
        "the filesystem is full"
    );
    segment::write_head(&StdStorage, &fs.path, 9).unwrap();
    assert_eq!(segment::read_head(&StdStorage, &fs.path).unwrap(), Some(9));
    assert!(!fs.path.join("head.tmp").exists());
}
