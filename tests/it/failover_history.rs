//! `stile loadtest` against a shard (`quic://PRIMARY+STANDBY`, real etcd): the primary is
//! SIGKILLed mid-run, the gates fail over to the standby that takes the leader key and
//! resend what was unanswered with its scan ids, and the checked history holds: no ticket
//! admitted twice, no acknowledged admit lost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use stile_cluster::testing::EtcdProcess;

use crate::failover::spawn_member;
use crate::loadtest::act_once_measuring;
use crate::standby::{metric_reaches, shard_certs};

/// The wall clock now, Unix ms (as history lines give it).
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loadtest_against_a_shard_follows_the_standby_when_the_primary_is_killed_and_its_history_holds(
) {
    let etcd = EtcdProcess::start(1);
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (n1, a1, m1) = spawn_member(&dir.path().join("n1"), &tls, "n1", &endpoints, &[]);
    let m1 = m1.unwrap();
    metric_reaches(&m1, "stile_node_leading 1").await;
    let (_n2, a2, m2) = spawn_member(&dir.path().join("n2"), &tls, "n2", &endpoints, &[]);
    metric_reaches(&m1, "stile_node_sync_standby 1").await;

    // The primary first: the gates start there and must move.
    let target = format!("quic://{a1}+{a2}");
    let (data, json, history) = (
        dir.path().to_path_buf(),
        dir.path().join("run.json"),
        dir.path().join("history.jsonl"),
    );
    let killed_at_ms = Arc::new(Mutex::new(None));
    let (code, out) = tokio::task::spawn_blocking({
        let (target, json, history) = (target.clone(), json.clone(), history.clone());
        let killed_at_ms = killed_at_ms.clone();
        move || {
            let mut n1 = n1;
            act_once_measuring(
                &data,
                &[
                    "--scenario",
                    "stadium",
                    "--target",
                    &target,
                    "--gates",
                    "4",
                    "--inflight",
                    "8",
                    "--rate",
                    "400",
                    "--duration",
                    "12s",
                    "--warmup",
                    "0s",
                    "--data",
                    data.to_str().unwrap(),
                    "--json",
                    json.to_str().unwrap(),
                    "--history",
                    history.to_str().unwrap(),
                    "--check-history",
                ],
                // About 4 s into the run (1.5 s of it waited already): SIGKILL the primary.
                move |_| {
                    std::thread::sleep(Duration::from_millis(2500));
                    *killed_at_ms.lock().unwrap() = Some(wall_ms());
                    n1.kill().unwrap();
                    n1.wait().unwrap();
                },
            )
        }
    })
    .await
    .unwrap();
    let killed_at_ms = killed_at_ms
        .lock()
        .unwrap()
        .expect("the primary was killed");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(code, Some(0), "{out}");
    let run = &report["runs"][0];
    assert_eq!(run["target"], target.as_str(), "named as written: {run}");
    assert!(out.contains(&target), "{out}");
    assert!(run["reconnects"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(run["double_admits"], 0, "{out}");
    assert_eq!(run["gates_lost"], 0, "{out}");
    let h = &report["history"];
    assert_eq!(h["verdict"], "consistent", "{h}: {out}");

    // Scans sent after the kill were admitted: by the standby, leading now (the primary
    // was dead by then).
    let ops: Vec<Value> = std::fs::read_to_string(&history)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["t"] == "op")
        .collect();
    let admitted_after = ops
        .iter()
        .filter(|o| o["out"] == "admitted" && o["wall_ms"].as_u64().unwrap() > killed_at_ms)
        .count();
    assert!(
        admitted_after > 50,
        "{admitted_after} admits sent after the kill: {out}"
    );
    metric_reaches(&m2.unwrap(), "stile_node_leading 1").await;
}
