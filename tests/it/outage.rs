//! The `outage` load-test scenario end to end: `stile loadtest --scenario outage
//! --spawn-node` runs gates of the stile-gate library in its process, kills its node mid-run
//! and starts it again, and checks what the node learned from the gates' journals.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `stile loadtest --data DIR --quiet ARGS` and returns its exit code and its standard
/// output and error.
fn loadtest(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stile"))
        .arg("loadtest")
        .arg("--data")
        .arg(dir)
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Four gates, the node cut off for 4 s of 8: tickets admitted online before and after,
/// offline during; six tickets presented at two gates during the outage. Every check holds:
/// the node's conflicts are exactly those six (one found missing before the gate uploaded
/// offline admits the node had refused late), every offline admit is used on the node, no
/// ticket admitted twice online or at one gate.
#[test]
fn an_outage_leaves_the_node_the_offline_admits_and_exactly_the_planted_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let (code, text) = loadtest(
        dir.path(),
        &[
            "--scenario",
            "outage",
            "--spawn-node",
            "--duration",
            "8s",
            "--outage",
            "4s",
            "--gates",
            "4",
            "--duplicates",
            "6",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["scenario"], "outage");
    let run = &report["runs"][0];
    let o = &run["outage"];
    let checks = o["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "no_gate_admits_twice",
            "no_online_double_admit",
            "conflicts_are_the_planted_duplicates",
            "offline_admits_on_node",
            "planted_duplicates_admitted_offline",
            "journals_uploaded",
        ],
        "{o}"
    );
    for c in checks {
        assert_eq!(c["passed"], true, "{c}\n{text}");
    }
    let n = |k: &str| o[k].as_u64().unwrap_or_else(|| panic!("{k}: {o}"));
    assert_eq!(n("planted_duplicates"), 6, "{o}");
    assert_eq!(n("conflicts"), n("planted_duplicates"), "{o}");
    assert!(n("admits_online") > 0, "{o}");
    assert!(n("admits_offline") > n("planted_duplicates"), "{o}");
    // At least each conflict's second admit went up as an upload.
    assert!(n("uploads") >= n("conflicts"), "{o}");
    assert!(o["cut_at_s"].as_f64().unwrap() < o["back_at_s"].as_f64().unwrap());
    assert!(o["reconciled_s"].is_number(), "{o}");
    assert_eq!(run["double_admits"], 0, "{run}");
    assert_eq!(
        run["outcomes"]["admitted"].as_u64().unwrap(),
        n("admits_online") + n("admits_offline")
    );
    // The text says the same, check by check.
    assert!(
        text.contains("check conflicts_are_the_planted_duplicates: ok: 6 conflicts"),
        "{text}"
    );
    // The gates' state stays for a look: a journal and a replica each.
    for g in 1..=4 {
        let state = dir.path().join(format!("gates/gate-{g}"));
        assert!(state.join("journal").is_file() && state.join("replica").is_file());
    }
}

/// What the scenario needs, and what it has no use for, is said before anything starts.
#[test]
fn the_outage_scenario_refuses_what_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    for (args, said) in [
        (&["--scenario", "outage"][..], "give --spawn-node"),
        (
            &["--scenario", "stadium", "--outage", "2s"][..],
            "--outage and --duplicates set up the outage scenario",
        ),
        (
            &[
                "--scenario",
                "outage",
                "--spawn-node",
                "--duration",
                "5s",
                "--outage",
                "5s",
            ][..],
            "must be shorter than --duration",
        ),
        (
            &[
                "--scenario",
                "outage",
                "--spawn-node",
                "--gates",
                "4",
                "--outage",
                "2s",
                "--duplicates",
                "5",
            ][..],
            "at most 2 fit",
        ),
        (
            &["--scenario", "outage", "--spawn-node", "--kill-every", "1s"][..],
            "not for the outage scenario",
        ),
    ] {
        let (code, text) = loadtest(dir.path(), args);
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(text.contains(said), "{args:?}: {text}");
    }
    // Nothing was started: no node, no gates.
    assert!(!dir.path().join("node").exists() && !dir.path().join("gates").exists());
}
