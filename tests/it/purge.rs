//! `purge`: a partition's tickets dropped for good. A purged code answers `unknown` to every
//! operation, other partitions keep theirs, serials go on after the purged ones, memory is
//! handed back; the purge survives reopening from the log (check-ins racing it included), a
//! snapshot, and a node's SIGKILL; a gate's certificate may not purge.

use std::path::Path;
use std::sync::Arc;

use stile_engine::{
    CheckinRequest, Engine, EngineConfig, Gate, ManualClock, MintRequest, OutcomeKind, Policy,
    PolicyId, Presented, PurgeError, SyncMode, TicketError,
};
use stile_protocol::client::{Client, ClientError};
use stile_protocol::frame::{error_code, MintSpec};
use stile_protocol::limits::LOADTEST_PARTITION;
use stile_protocol::CodeBytes;

use crate::node::{client_config, make_certs, spawn_node, spec};
use crate::support::{engine, T0};

const G1: Gate = Gate::new(1, 1);

fn req(scan_id: u64, code: CodeBytes) -> CheckinRequest {
    CheckinRequest {
        gate: G1,
        scan_id,
        code,
    }
}

fn mint_into(e: &Engine, policy: PolicyId, partition: u16, count: u32) -> Vec<CodeBytes> {
    e.mint(&MintRequest {
        policy,
        partition,
        count,
    })
    .unwrap()
}

#[test]
fn a_purged_code_answers_unknown_and_other_partitions_keep_theirs() {
    let (e, _) = engine();
    let policy = e.add_policy(Policy::simple(1)).unwrap();
    let kept = mint_into(&e, policy, 0, 10);
    // More than two chunks of slots (131,072 each), so that memory is handed back.
    let gone = mint_into(&e, policy, 1, 300_000);
    for (i, c) in gone.iter().take(5).enumerate() {
        assert_eq!(e.checkin(&req(i as u64, *c)).kind, OutcomeKind::Admitted);
    }
    e.revoke(&Presented::Code(gone[6])).unwrap();
    let successor = e.transfer(&Presented::Code(gone[7])).unwrap();
    e.import(policy, 1, &["EXT-1"]).unwrap();
    assert_eq!(e.checkin(&req(100, kept[0])).kind, OutcomeKind::Admitted);
    let (tickets, memory) = (e.minted_tickets(), e.index_memory_bytes());
    assert_eq!(tickets, 10 + 300_000 + 1 + 1);

    let purged = e.purge(1).unwrap();
    assert_eq!(purged.tickets, 300_002, "every ticket, whatever its state");
    assert_eq!((purged.below, purged.imported), (300_002, 1));
    assert_eq!(e.minted_tickets(), 10);
    assert!(
        e.index_memory_bytes() <= memory - 2 * stile_engine::index::CHUNK_BYTES,
        "{} of {memory} bytes kept",
        e.index_memory_bytes()
    );

    // Every operation on a purged code: unknown, a retried scan included.
    for (i, c) in [gone[0], gone[6], gone[9], successor]
        .into_iter()
        .enumerate()
    {
        let t = Presented::Code(c);
        assert_eq!(e.checkin(&req(0, c)).kind, OutcomeKind::Unknown, "{i}");
        assert_eq!(
            e.checkin(&req(500 + i as u64, c)).kind,
            OutcomeKind::Unknown
        );
        assert_eq!(e.exit(&G1, 600, &t).kind, OutcomeKind::Unknown);
        assert_eq!(e.undo(&G1, 601, &t).kind, OutcomeKind::Unknown);
        assert_eq!(e.status(&t).err(), Some(TicketError::Unknown));
        assert_eq!(e.revoke(&t).err(), Some(TicketError::Unknown));
        assert_eq!(e.transfer(&t).err(), Some(TicketError::Unknown));
    }
    assert!(
        e.presented("EXT-1").is_err(),
        "the imported code is forgotten"
    );
    // The other partition is as it was.
    assert_eq!(e.checkin(&req(101, kept[0])).kind, OutcomeKind::AlreadyUsed);
    assert_eq!(e.checkin(&req(102, kept[1])).kind, OutcomeKind::Admitted);
    // Serials go on: a new ticket never gets a purged code's serial.
    let fresh = mint_into(&e, policy, 1, 2);
    assert_eq!(fresh[0].header().serial, 300_002);
    assert_eq!(e.checkin(&req(103, fresh[0])).kind, OutcomeKind::Admitted);
    assert_eq!(e.checkin(&req(104, gone[1])).kind, OutcomeKind::Unknown);
    // Purging again drops only what came since.
    assert_eq!(e.purge(1).unwrap().tickets, 2);
    assert_eq!(e.purge(1).unwrap().tickets, 0);
    assert_eq!(e.purge(9).unwrap_err(), PurgeError::NotServed(9));
}

fn open(dir: &Path, sync: SyncMode) -> Engine {
    crate::support::reopen(|| {
        Engine::open(
            dir,
            EngineConfig {
                sync,
                partitions: vec![0, 1],
                ..EngineConfig::default()
            },
            Arc::new(ManualClock::new(T0)),
        )
    })
    .unwrap()
}

/// A purge in the log is replayed after the records of the tickets it drops, and the records
/// of check-ins that raced it (one that read a ticket just before its slot was zeroed is
/// logged after the purge) leave nothing behind: the engine reopens to the state it had.
#[test]
fn a_purge_in_the_log_reopens_to_the_same_state_with_check_ins_racing_it() {
    for sync in [SyncMode::Always, SyncMode::None] {
        let dir = tempfile::tempdir().unwrap();
        let (before, gone, policy) = {
            let e = open(dir.path(), sync);
            let policy = e.add_policy(Policy::simple(1)).unwrap();
            let kept = mint_into(&e, policy, 0, 1_000);
            let gone = mint_into(&e, policy, 1, 200_000);
            let racing = std::sync::atomic::AtomicBool::new(true);
            std::thread::scope(|s| {
                for t in 0..2u64 {
                    let (e, gone, racing) = (&e, &gone, &racing);
                    s.spawn(move || {
                        // Bounded: each thread walks the codes once at most.
                        for (i, c) in gone.iter().enumerate().skip(t as usize).step_by(2) {
                            if !racing.load(std::sync::atomic::Ordering::Relaxed) {
                                break;
                            }
                            e.checkin(&req(t << 32 | i as u64, *c));
                        }
                    });
                }
                e.purge(1).unwrap();
                racing.store(false, std::sync::atomic::Ordering::Relaxed);
            });
            for (i, c) in kept.iter().take(10).enumerate() {
                assert_eq!(
                    e.checkin(&req(1 << 40 | i as u64, *c)).kind,
                    OutcomeKind::Admitted
                );
            }
            mint_into(&e, policy, 1, 3);
            (e.dump(), gone, policy)
        };
        assert_eq!(before.purged, [(0, 0), (1, 200_000)], "{sync:?}");
        assert_eq!(before.slots.len(), 1_003, "{sync:?}");
        let e = open(dir.path(), sync);
        assert_eq!(e.dump(), before, "{sync:?}");
        assert_eq!(e.checkin(&req(7, gone[5])).kind, OutcomeKind::Unknown);
        assert_eq!(mint_into(&e, policy, 1, 1)[0].header().serial, 200_003);
    }
}

/// Purge, snapshot, restart: the snapshot holds no purged ticket and the restart none
/// either; a snapshot from before the purge, with the purge in the log after it, the same.
#[test]
fn a_purge_holds_across_snapshots_and_restarts() {
    for snapshot_first in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (before, kept, gone) = {
            let e = open(dir.path(), SyncMode::Always);
            let policy = e.add_policy(Policy::simple(1)).unwrap();
            let kept = mint_into(&e, policy, 0, 50);
            let gone = mint_into(&e, policy, 1, 50);
            e.checkin(&req(1, kept[0]));
            e.checkin(&req(2, gone[0]));
            if snapshot_first {
                e.snapshot().unwrap();
            }
            e.purge(1).unwrap();
            let info = e.snapshot().unwrap();
            assert_eq!(info.tickets, 50, "snapshot first: {snapshot_first}");
            (e.dump(), kept, gone)
        };
        let e = open(dir.path(), SyncMode::Always);
        assert_eq!(e.recovered().records, 0, "all from the snapshot");
        assert_eq!(e.dump(), before);
        assert_eq!(e.checkin(&req(3, gone[0])).kind, OutcomeKind::Unknown);
        assert_eq!(e.checkin(&req(4, gone[1])).kind, OutcomeKind::Unknown);
        assert_eq!(e.checkin(&req(5, kept[0])).kind, OutcomeKind::AlreadyUsed);
        assert_eq!(e.checkin(&req(6, kept[1])).kind, OutcomeKind::Admitted);
    }
}

/// `stile purge` against a node: the count on stdout, the purged codes `unknown` (and still
/// so after SIGKILL and a restart), the other partition's tickets as they were, the node's
/// ticket count down; a gate's certificate is refused, and so is partition 0 without
/// `--force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stile_purge_drops_a_partition_durably_and_only_for_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tls) = (dir.path().join("data"), dir.path().join("tls"));
    make_certs(&tls);
    let (mut node, addr) = spawn_node(&data, &tls);
    let admin = Client::connect(client_config(&tls, addr, "admin-admin"))
        .await
        .unwrap();
    let kept = admin.mint(spec(1, 20)).await.unwrap();
    let gone = admin
        .mint(MintSpec {
            partition: LOADTEST_PARTITION,
            ..spec(1, 3_000)
        })
        .await
        .unwrap();
    let gate = Client::connect(client_config(&tls, addr, "gate-1"))
        .await
        .unwrap();
    for (i, c) in [kept[0], gone[0]].iter().enumerate() {
        assert_eq!(
            gate.checkin(c, i as u64).await.unwrap().kind,
            OutcomeKind::Admitted
        );
    }
    assert_eq!(admin.stats().await.unwrap().tickets, 3_020);

    // A gate may not purge: refused, nothing dropped.
    let err = match gate.purge(LOADTEST_PARTITION).await {
        Err(ClientError::Node { code, message }) => (code, message),
        other => panic!("a gate purged: {other:?}"),
    };
    assert_eq!(err.0, error_code::FORBIDDEN, "{err:?}");
    let purge = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
            .arg("purge")
            .args(extra)
            .arg("--node")
            .arg(addr.to_string())
            .arg("--data")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let gate_cert = tls.join("gate-1.crt");
    let out = purge(&[
        "--partition",
        "65535",
        "--cert",
        gate_cert.to_str().unwrap(),
        "--key",
        tls.join("gate-1.key").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("purge needs the admin role"), "{err}");
    let out = purge(&["--partition", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("add --force"), "{err}");
    // A partition the node does not serve: said, and the node goes on.
    let out = purge(&["--partition", "7", "--force"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("partition 7 is not served by this node"),
        "{err}"
    );
    assert_eq!(admin.stats().await.unwrap().tickets, 3_020);

    // The admin's purge: the count, then unknown.
    let out = purge(&["--partition", "65535"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.trim(),
        "purged partition 65535: 3000 tickets dropped; new tickets there get serials from \
         3000 on"
    );
    assert_eq!(
        gate.checkin(&gone[0], 10).await.unwrap().kind,
        OutcomeKind::Unknown
    );
    assert_eq!(
        gate.checkin(&gone[1], 11).await.unwrap().kind,
        OutcomeKind::Unknown
    );
    assert_eq!(admin.stats().await.unwrap().tickets, 20);
    drop((admin, gate));

    // SIGKILL, restart: still gone; partition 0 as it was.
    node.kill().unwrap();
    node.wait().unwrap();
    let (mut node, addr) = spawn_node(&data, &tls);
    let gate = Client::connect(client_config(&tls, addr, "gate-2"))
        .await
        .unwrap();
    for (i, c) in gone.iter().step_by(500).enumerate() {
        let o = gate.checkin(c, 100 + i as u64).await.unwrap();
        assert_eq!(
            o.kind,
            OutcomeKind::Unknown,
            "purged code {i} after SIGKILL"
        );
    }
    let o = gate.checkin(&kept[0], 200).await.unwrap();
    assert_eq!((o.kind, o.gate), (OutcomeKind::AlreadyUsed, 1));
    let o = gate.checkin(&kept[1], 201).await.unwrap();
    assert_eq!(o.kind, OutcomeKind::Admitted);
    let admin = Client::connect(client_config(&tls, addr, "admin-admin"))
        .await
        .unwrap();
    assert_eq!(admin.stats().await.unwrap().tickets, 20);
    let next = admin
        .mint(MintSpec {
            partition: LOADTEST_PARTITION,
            ..spec(1, 1)
        })
        .await
        .unwrap();
    assert_eq!(
        next[0].header().serial,
        3_000,
        "serials go on after a restart"
    );
    drop((admin, gate));
    node.kill().unwrap();
    node.wait().unwrap();
}

/// `stile purge --help` says what a purge takes (every provider's tickets of the
/// partition), that it is durable, what a purged code answers, and the exit statuses; the
/// partition has no default.
#[test]
fn purge_help_says_what_it_drops_and_its_exit_statuses() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["purge", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--partition <PARTITION>",
        "of every provider",
        "answers `unknown`",
        "--force",
        "[default: 127.0.0.1:7443]",
        "Exit status: 0 purged",
    ] {
        assert!(help.contains(want), "{want}: {help}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .arg("purge")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "the partition must be named");
}
