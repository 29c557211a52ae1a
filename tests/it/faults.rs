//! Faults on a schedule: `stile loadtest --spawn-node` kills and pauses its node while gates
//! send, and every run's history is checked against one atomic ticket per ticket.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `stile loadtest --data DIR --json DIR/run.json --quiet ARGS` and returns its exit
/// code, its report, and its standard output and error.
fn loadtest(dir: &Path, args: &[&str]) -> (Option<i32>, Value, String) {
    let json = dir.join("run.json");
    // Before ARGS, which may end in `-- NODE ARGS`.
    let out = Command::new(env!("CARGO_BIN_EXE_stile"))
        .arg("loadtest")
        .arg("--data")
        .arg(dir)
        .arg("--json")
        .arg(&json)
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    (out.status.code(), report, text)
}

/// The history lines of kind `op`.
fn op_lines(history: &Path) -> Vec<Value> {
    std::fs::read_to_string(history)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["t"] == "op")
        .collect()
}

#[test]
fn twenty_kill_cycles_under_replay_traffic_keep_every_admit_and_admit_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.jsonl");
    // Each code at four gates at about the same moment, the node killed every 250 ms of
    // its life: at least 20 kills in 40 s even if each restart and reconnect took 1.7 s on a
    // busy machine (about 0.1 s on an idle one).
    let (code, report, text) = loadtest(
        dir.path(),
        &[
            "--scenario",
            "replay",
            "--spawn-node",
            "--kill-every",
            "250ms",
            "--duration",
            "40s",
            "--warmup",
            "0s",
            "--gates",
            "6",
            "--inflight",
            "8",
            "--rate",
            "1500",
            "--history",
            history.to_str().unwrap(),
            "--check-history",
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    let run = &report["runs"][0];
    let faults = run["faults"].as_u64().unwrap();
    assert!(faults >= 20, "{faults} kills: {text}");
    assert!(run["reconnects"].as_u64().unwrap() > 0, "{text}");
    assert_eq!(run["double_admits"], 0, "{text}");
    let h = &report["history"];
    assert_eq!(h["verdict"], "consistent", "{text}");
    assert!(h["operations"].as_u64().unwrap() > 10_000, "{h}");
    assert!(
        text.contains("consistent: ") && text.contains(" operations on "),
        "{text}"
    );

    // The resends are in the history: attempts given up on when a connection was lost,
    // each of whose scans was sent again on a new connection with the same scan id and
    // answered there.
    let ops = op_lines(&history);
    let mut answered: HashMap<(u64, u64), usize> = HashMap::new();
    let mut given_up = Vec::new();
    for o in &ops {
        let key = (o["gate"].as_u64().unwrap(), o["scan"].as_u64().unwrap());
        if o["out"] == "indeterminate" {
            given_up.push(key);
        } else {
            *answered.entry(key).or_default() += 1;
        }
    }
    assert!(!given_up.is_empty(), "no attempt was cut by a kill");
    let resent_and_answered = given_up.iter().filter(|k| answered.contains_key(k)).count();
    assert!(resent_and_answered > 0, "no resend was answered");
    assert!(answered.values().all(|n| *n == 1), "a scan answered twice");

    // `stile history check` says the same of the file.
    let out = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["history", "check"])
        .arg(&history)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The node stopped with the command, and its data stayed for the next run.
    assert!(dir.path().join("node/wal").is_dir());
    assert!(std::fs::read_to_string(dir.path().join("node.log"))
        .unwrap()
        .contains("stile node listening on"));
}

#[test]
fn pauses_longer_than_a_gates_patience_are_ridden_out_by_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    // Stopped for 1.5 s at a time, past the 1 s a gate waits before it takes its connection
    // for dead: gates reconnect while the node is stopped, and resend when it continues.
    let (code, report, text) = loadtest(
        dir.path(),
        &[
            "--scenario",
            "rail",
            "--spawn-node",
            "--pause-every",
            "500ms",
            "--pause-for",
            "1500ms",
            "--duration",
            "5s",
            "--warmup",
            "0s",
            "--gates",
            "4",
            "--inflight",
            "4",
            "--rate",
            "1000",
            "--check-history",
            "--",
            "--sync",
            "batch",
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    let run = &report["runs"][0];
    assert!(run["faults"].as_u64().unwrap() >= 2, "{text}");
    assert!(run["reconnects"].as_u64().unwrap() > 0, "{text}");
    // The node's options after `--` reached it.
    assert_eq!(run["sync"], "batch", "{text}");
    assert_eq!(report["history"]["verdict"], "consistent", "{text}");
    // Without --history the checked file was a scratch one, removed since it held.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("history"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_history_of_every_target_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut targets = vec![("inproc".to_string(), vec![])];
    if let Some(port) = crate::loadtest::redis_port_if_installed() {
        targets.push((format!("redis://127.0.0.1:{port}"), vec!["--spawn-redis"]));
    }
    for (target, extra) in &targets {
        for scenario in ["mixed", "rail"] {
            let history = dir.path().join("h.jsonl");
            let mut args = vec![
                "--scenario",
                scenario,
                "--target",
                target,
                // Ends when the tickets run out; the bound is for a slow machine.
                "--duration",
                "30s",
                "--warmup",
                "0s",
                "--gates",
                "4",
                "--tickets",
                "3000",
                "--history",
                history.to_str().unwrap(),
                "--check-history",
            ];
            args.extend(extra.iter().copied());
            let (code, report, text) = loadtest(dir.path(), &args);
            assert_eq!(code, Some(0), "{target} {scenario}: {text}");
            let h = &report["history"];
            assert_eq!(h["verdict"], "consistent", "{target} {scenario}: {text}");
            assert_eq!(h["tickets"], 3000, "{h}");
            let ops = op_lines(&history);
            assert!(ops.len() >= 3000, "{target} {scenario}: {}", ops.len());
            // Every line names its gate, scan id and times; a node or the engine names the
            // admitting gate, Redis's script does not.
            let admitted = ops.iter().find(|o| o["out"] == "admitted").unwrap();
            assert!(admitted["scan"].as_u64().unwrap() >= 1, "{admitted}");
            assert!(
                admitted["ret_ns"].as_u64() >= admitted["inv_ns"].as_u64(),
                "{admitted}"
            );
            assert_eq!(
                admitted.get("out_gate").is_some(),
                !target.starts_with("redis"),
                "{admitted}"
            );
        }
    }
}

#[test]
fn faults_need_a_node_of_the_runs_own() {
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("kept.jsonl");
    let kept_s = kept.to_str().unwrap();
    // clap's refusals exit 2, the run's own checks 1; none starts a node or truncates a
    // history.
    for (args, says, code) in [
        (vec!["--kill-every", "1s"], "--spawn-node", 2),
        (
            vec!["--spawn-node", "--target", "inproc"],
            "cannot be used with",
            2,
        ),
        (
            vec!["--spawn-node", "--kill-every", "1s", "--inflight", "1000"],
            "remembers a gate's last 256",
            1,
        ),
        (
            vec!["--spawn-node", "--pause-every", "1s"],
            "--pause-for",
            2,
        ),
        (vec!["--spawn-node", "--kill-every", "0s"], "above 0", 1),
        (
            vec!["--spawn-node", "--kill-every", "100000h"],
            "at most 24h",
            1,
        ),
        (
            vec!["--target", "inproc", "--", "--sync", "none"],
            "none is started",
            1,
        ),
        (
            vec!["--spawn-node", "--rate", "0", "--history", kept_s],
            "--rate must be",
            1,
        ),
        (vec!["--history", "-"], "name one", 1),
    ] {
        std::fs::write(&kept, "keep me\n").unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_stile"))
            .args(["loadtest", "--scenario", "stadium", "--quiet"])
            .arg("--data")
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !dir.path().join("node").exists(),
            "{args:?}: a node was started"
        );
        assert_eq!(
            std::fs::read_to_string(&kept).unwrap(),
            "keep me\n",
            "{args:?}"
        );
    }
}
