//! The load tester, in short bounded runs: every scenario against the engine in process,
//! a real node on 127.0.0.1 and a spawned Redis; replay admits each ticket once, forged
//! admits nothing, rail tickets enter and leave, open loop keeps to its rate, `--compare`
//! prints ratios, and the JSON and HTML reports have their documented shape.

use std::time::Duration;

use stile_engine::SyncMode;
use stile_loadtest::{Config, RunReport, Scenario};

use crate::node::TestNode;

fn config(scenario: Scenario, target: &str, data: &std::path::Path) -> Config {
    Config {
        scenario,
        target: target.into(),
        gates: 8,
        inflight: 16,
        duration: Duration::from_secs(1),
        warmup: Duration::ZERO,
        rate: None,
        shape: stile_loadtest::Shape::Flat,
        tickets: Some(20_000),
        partition: stile_loadtest::LOADTEST_PARTITION,
        program: env!("CARGO_BIN_EXE_stile").into(),
        seed: 7,
        data: data.to_path_buf(),
        sync: SyncMode::Always,
        // Runs of a second: no runway of 256 MiB of zeros for each.
        log_runway: 0,
        spawn_redis: false,
        admin: None,
        progress: false,
        stop: Default::default(),
        history: None,
        node: None,
        faults: Default::default(),
        outage: Default::default(),
    }
}

const EVERY: [Scenario; 5] = [
    Scenario::Stadium,
    Scenario::Rail,
    Scenario::Replay,
    Scenario::Forged,
    Scenario::Mixed,
];

fn check(scenario: Scenario, r: &RunReport, tickets: u64) {
    assert_eq!(r.errors + r.timeouts, 0, "{r:?}");
    assert_eq!(r.double_admits, 0, "a ticket was admitted twice: {r:?}");
    assert_eq!(r.forged_admits, 0, "a forged code was admitted: {r:?}");
    let admitted = r.outcomes.get("admitted").copied().unwrap_or(0);
    let count = |k: &str| r.outcomes.get(k).copied().unwrap_or(0);
    // Redis cannot check a signature: a forged code is just not there.
    let refused = count("forged") + count("unknown") + count("rate_limited");
    match scenario {
        Scenario::Stadium => assert!(admitted > 0 && admitted <= tickets, "{r:?}"),
        // Every code at 4 gates at once: one admit each, the rest already used.
        Scenario::Replay => {
            let used = r.outcomes.get("already_used").copied().unwrap_or(0);
            assert!(admitted > 0, "{r:?}");
            assert!(used >= admitted, "{r:?}");
        }
        Scenario::Forged => {
            assert_eq!(admitted, 0, "a forged code was admitted: {r:?}");
            assert_eq!(refused, r.requests, "{r:?}");
        }
        // Entries and exits, a day pass entering more than once: never more admits than
        // entries planned (double_admits above), and exits recorded.
        // Each scan of a ticket waits for the answer to its last, at whatever gate: no exit
        // before its entry (not_inside), no entry while inside (already_used).
        Scenario::Rail => {
            assert!(admitted > 0 && count("exited") > 0, "{r:?}");
            assert!(count("exited") <= admitted, "{r:?}");
            assert_eq!(count("not_inside") + count("already_used"), 0, "{r:?}");
        }
        // First scans admitted, replays refused, forgeries refused.
        Scenario::Mixed => {
            assert!(admitted > 0 && admitted <= tickets, "{r:?}");
            assert!(count("already_used") > 0 && refused > 0, "{r:?}");
        }
        // Needs a spawned node: tests/it/outage.rs.
        Scenario::Outage => unreachable!("not run here"),
    }
    assert!(r.requests > 0 && r.throughput_per_s > 0.0, "{r:?}");
    assert!(r.latency_us.p50 <= r.latency_us.p99 && r.latency_us.p99 <= r.latency_us.max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_in_process() {
    let dir = tempfile::tempdir().unwrap();
    for scenario in EVERY {
        let c = config(scenario, "inproc", dir.path());
        let r = stile_loadtest::run(&c).await.unwrap();
        assert_eq!(r.sync, "always");
        check(scenario, &r, u64::from(c.tickets.unwrap()));
        // The engine's own view: its log synced what was admitted (forged codes log nothing).
        let node = r.node.as_ref().expect("the engine's own view");
        assert!(
            node.checkin_latency_us.is_none(),
            "no node in between: {r:?}"
        );
        assert!(r.quic.is_none(), "no QUIC in between: {r:?}");
        if scenario != Scenario::Forged {
            assert!(node.syncs > 0 && node.fsync_us.is_some(), "{r:?}");
            assert!(node.records_per_sync.unwrap() >= 1.0, "{r:?}");
        }
    }
    // The engine's temporary data dirs are gone afterwards.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A deployment's admin certificate need not be `admin-admin`: `--admin-cert` names the one
/// to mint with; a gate's is refused before the run, with what to give instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_certificate_can_be_named_and_must_be_an_admins() {
    use stile_certs as certs;
    let n = TestNode::start(|_| {}).await;
    let target = format!("quic://{}", n.addr);
    let ops = certs::issue_admin(&n.tls, "ops").unwrap();
    let mut c = config(Scenario::Stadium, &target, n.dir.path());
    (c.gates, c.tickets) = (2, Some(500));
    c.admin = Some((ops.clone(), certs::key_path_for(&ops)));
    let r = stile_loadtest::run(&c).await.unwrap();
    assert_eq!(
        r.outcomes.get("admitted").copied(),
        Some(r.requests),
        "{r:?}"
    );
    let gate = n.tls.join("gate-1.crt");
    c.admin = Some((gate.clone(), certs::key_path_for(&gate)));
    let err = stile_loadtest::Target::precheck(&c)
        .unwrap_err()
        .to_string();
    assert!(err.contains("minting needs an admin's"), "{err}");
    c.admin = Some((n.tls.join("nobody.crt"), n.tls.join("nobody.key")));
    let err = stile_loadtest::Target::precheck(&c)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no admin certificate"), "{err}");
    n.node.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_against_a_node() {
    let n = TestNode::start(|c| c.budget_per_s = 1_000_000).await;
    let target = format!("quic://{}", n.addr);
    for scenario in EVERY {
        let mut c = config(scenario, &target, n.dir.path());
        c.gates = 4;
        c.tickets = Some(4_000);
        // Ends when the codes run out; the bound is for a slow machine.
        c.duration = Duration::from_secs(20);
        let r = stile_loadtest::run(&c).await.unwrap();
        assert_eq!(r.sync, "always", "as the node reports it through stats");
        check(scenario, &r, u64::from(c.tickets.unwrap()));
        // The node's own view of the same run, through its metrics.
        let node = r.node.as_ref().expect("the node's own view");
        let own = node
            .checkin_latency_us
            .expect("the node timed its check-ins");
        assert!(own.p50 <= own.p99 && own.p99 <= own.p999, "{r:?}");
        // What QUIC carried, both ways, and what it lost.
        let quic = r.quic.expect("a run over QUIC counts its datagrams");
        assert!(
            quic.datagrams_sent > 0 && quic.datagrams_received > 0,
            "{quic:?}"
        );
        assert!(quic.packets_lost <= quic.datagrams_sent, "{quic:?}");
        // What a request cost the node, and the wire.
        assert!(
            r.server_cpu_us_per_request.is_some_and(|us| us > 0.0),
            "{r:?}"
        );
        assert!(r.datagrams_per_request.is_some_and(|d| d > 0.0), "{r:?}");
        assert!(r.server_memory_per_gate_bytes.is_some(), "{r:?}");
        if scenario != Scenario::Forged {
            assert!(node.syncs > 0 && node.fsync_us.is_some(), "{r:?}");
            let busy = node.fsync_busy_percent.expect("time in syncs");
            assert!(busy > 0.0, "{r:?}");
            assert!(
                (0.0..=busy).contains(&node.slow_sync_percent.unwrap()),
                "{r:?}"
            );
        }
    }
    // The tester issued itself fresh gate certificates from the node's CA (the rail run
    // above would have seen wrong_provider at gate 3 had it taken the provider-2 certificate
    // the data dir holds), in a directory of its own, gone now; none were added to tls/.
    assert!(!n.tls.join("gate-4.crt").exists());
    let left: Vec<_> = std::fs::read_dir(n.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with(".stile-loadtest-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    n.node.unwrap().shutdown().await;
}

#[test]
fn command_line_json_has_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "loadtest",
            "--scenario",
            "replay",
            "--target",
            "inproc",
            "--duration",
            "30s",
        ])
        .args([
            "--warmup",
            "0s",
            "--gates",
            "4",
            "--inflight",
            "8",
            "--tickets",
            "5000",
        ])
        .arg("--data")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("double admits 0"), "{text}");
    // Minting is told on stderr, in plain lines when it is no terminal.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stile loadtest: inproc: minting tickets: 5000 of 5000 (100 %)\n"),
        "{err}"
    );
    assert!(!err.contains('\r'), "{err}");
    assert!(
        text.contains("  tickets: 5000 minted (as given)\n"),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // `--json -`: standard output is the JSON document alone, the summary on stderr.
    let piped = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["loadtest", "--scenario", "stadium", "--target", "inproc"])
        .args([
            "--duration",
            "1s",
            "--gates",
            "2",
            "--tickets",
            "1000",
            "--json",
            "-",
        ])
        .arg("--data")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(piped.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert_eq!(doc["runs"][0]["target"], "inproc");
    assert!(String::from_utf8_lossy(&piped.stderr).contains("requests in"));
    assert_eq!(v["scenario"], "replay");
    assert_eq!(v["seed"], 1);
    assert!(v["machine"]["cpus"].as_u64().unwrap() >= 1);
    let run = &v["runs"][0];
    for key in [
        "target",
        "sync",
        "mode",
        "gates",
        "inflight",
        "requested_rate",
        "requests",
        "throughput_per_s",
        "latency_us",
        "outcomes",
        "errors",
        "timeouts",
        "double_admits",
        "forged_admits",
        "client_cpu_percent",
        "percentiles",
        "timeline",
    ] {
        assert!(run.get(key).is_some(), "{key} missing: {run}");
    }
    for key in ["p50", "p99", "p999", "max"] {
        assert!(run["latency_us"][key].is_u64(), "{key}: {run}");
    }
    assert_eq!(
        (run["target"].as_str(), run["mode"].as_str()),
        (Some("inproc"), Some("closed"))
    );
    assert_eq!(run["outcomes"]["admitted"], 5000, "{run}");
    assert_eq!(
        (run["tickets"].as_u64(), run["tickets_sized_by"].as_str()),
        (Some(5000), Some("given")),
        "{run}"
    );
    // The engine in process leaves nothing behind: its data dir went with it.
    assert!(run.get("left_in_node").is_none(), "{run}");
    // 5,000 tickets do not last 30 s: the run ends early and says so.
    assert_eq!(run["tickets_ran_out"], true, "{run}");
    assert!(run["measured_s"].as_f64().unwrap() < 29.0, "{run}");
    assert!(text.contains("note: the tickets ran out "), "{text}");
    // The engine's own view: log syncs and their latency.
    assert!(run["node"]["syncs"].as_u64().unwrap() > 0, "{run}");
    for key in ["p50", "p99", "p999"] {
        assert!(run["node"]["fsync_us"][key].is_u64(), "{key}: {run}");
    }
    assert!(
        run["node"]["records_per_sync"].as_f64().unwrap() >= 1.0,
        "{run}"
    );
    // How much of the measured time the log spent syncing, and in slow syncs.
    let busy = run["node"]["fsync_busy_percent"].as_f64().unwrap();
    let slow = run["node"]["slow_sync_percent"].as_f64().unwrap();
    assert!(busy > 0.0 && (0.0..=busy).contains(&slow), "{run}");
    assert!(run["node"]["slow_syncs"].is_u64(), "{run}");
    assert!(text.contains("its own view: fsync p50 "), "{text}");
    assert!(text.contains(" % of the time, "), "{text}");
    // How busy the whole machine was: the tester itself ran, so above zero.
    if cfg!(target_os = "linux") {
        let load = &run["machine_load"];
        let busy = load["busy_percent"].as_f64().unwrap();
        assert!(busy > 0.0 && busy <= 100.0, "{run}");
        for key in ["iowait_percent", "steal_percent"] {
            let p = load[key].as_f64().unwrap();
            assert!((0.0..100.0).contains(&p), "{key}: {run}");
        }
        assert!(text.contains(", machine busy "), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_against_redis_with_the_lua_checkin() {
    let Some(port) = redis_port_if_installed() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for scenario in EVERY {
        let mut c = config(scenario, &format!("redis://127.0.0.1:{port}"), dir.path());
        c.spawn_redis = true;
        c.gates = 4;
        c.tickets = Some(4_000);
        // Ends when the codes run out; the bound is for a slow machine.
        c.duration = Duration::from_secs(20);
        let r = stile_loadtest::run(&c).await.unwrap();
        assert_eq!(r.sync, "appendfsync always", "{r:?}");
        check(scenario, &r, u64::from(c.tickets.unwrap()));
        assert!(r.node.is_none(), "Redis says nothing of itself: {r:?}");
        // But its CPU time, from INFO.
        assert!(
            r.server_cpu_us_per_request.is_some_and(|us| us > 0.0),
            "{r:?}"
        );
        assert!(r.datagrams_per_request.is_none(), "{r:?}");
        assert!(r.server_memory_per_gate_bytes.is_some(), "{r:?}");
    }
    // One invocation, both targets, the ratios printed.
    let redis = format!("redis://127.0.0.1:{port}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "loadtest",
            "--scenario",
            "stadium",
            "--spawn-redis",
            "--quiet",
        ])
        .args(["--compare", &format!("inproc,{redis}")])
        .args([
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--gates",
            "4",
            "--tickets",
            "4000",
        ])
        .arg("--data")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("inproc vs {redis}: throughput x")),
        "{text}"
    );
    assert!(text.contains("sync appendfsync always"), "{text}");
}

/// The second baseline: Redis over TLS 1.3 with client certificates from the deployment's
/// CA, as a node's gates authenticate. Every connection is TLS with the right certificate,
/// or the server (`--tls-auth-clients yes`) would not answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_against_redis_over_tls_with_gate_certificates() {
    let Some(port) = redis_port_if_installed() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    crate::node::make_certs(&dir.path().join("tls"));
    let target = format!("redis+tls://127.0.0.1:{port}");
    for scenario in EVERY {
        let mut c = config(scenario, &target, dir.path());
        c.spawn_redis = true;
        c.gates = 4;
        c.tickets = Some(4_000);
        // Ends when the codes run out; the bound is for a slow machine.
        c.duration = Duration::from_secs(20);
        let r = stile_loadtest::run(&c).await.unwrap();
        assert_eq!(r.target, target, "the target as written: {r:?}");
        assert_eq!(r.sync, "appendfsync always", "{r:?}");
        check(scenario, &r, u64::from(c.tickets.unwrap()));
        assert!(
            r.server_cpu_us_per_request.is_some_and(|us| us > 0.0),
            "{r:?}"
        );
    }
    // The run's gate certificates went with it.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".stile-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// One invocation: Redis over TCP and over TLS, each spawned on its own port, the ratios
/// printed.
#[test]
fn a_compare_of_redis_over_tcp_and_over_tls_prints_their_ratios() {
    let Some(plain) = redis_port_if_installed() else {
        return;
    };
    let tls = std::iter::repeat_with(redis_port_if_installed)
        .flatten()
        .find(|p| *p != plain)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    crate::node::make_certs(&dir.path().join("tls"));
    let (plain, tls) = (
        format!("redis://127.0.0.1:{plain}"),
        format!("redis+tls://127.0.0.1:{tls}"),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "loadtest",
            "--scenario",
            "stadium",
            "--spawn-redis",
            "--quiet",
        ])
        .args(["--compare", &format!("{plain},{tls}")])
        .args(["--duration", "1s", "--warmup", "0s", "--gates", "4"])
        .args(["--tickets", "4000"])
        .arg("--data")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("{plain} vs {tls}: throughput x")),
        "{text}"
    );
    assert_eq!(text.matches("sync appendfsync always").count(), 2, "{text}");
}

/// A `redis+tls://` target needs the deployment's CA: said before anything starts.
#[test]
fn redis_over_tls_without_a_ca_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let err = loadtest_failing(
        dir.path(),
        &["--spawn-redis", "--target", "redis+tls://127.0.0.1:1"],
    );
    assert!(err.contains("no CA in"), "{err}");
    assert!(err.contains("--data"), "{err}");
}

/// `stile loadtest --scenario stadium ARGS` for a second on data dir `data`, which must
/// fail (exit status 1): its standard error.
fn loadtest_failing(data: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "loadtest",
            "--scenario",
            "stadium",
            "--quiet",
            "--duration",
            "1s",
        ])
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

#[test]
fn a_compare_whose_later_target_fails_keeps_the_earlier_figures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["loadtest", "--scenario", "stadium", "--quiet"])
        .args(["--compare", &format!("inproc,redis://127.0.0.1:{port}")])
        .args(["--duration", "1s", "--gates", "4", "--tickets", "4000"])
        .arg("--data")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let (said, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{said}{err}");
    assert!(err.contains("connecting"), "{err}");
    assert!(said.contains("inproc  sync always"), "{said}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{v}");
    assert_eq!(runs[0]["target"], "inproc");
    assert!(runs[0]["requests"].as_u64().unwrap() > 0);
}

/// An echo server that cannot start says why, in the tester's error: not a guess.
#[test]
fn an_echo_server_that_cannot_start_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    crate::node::make_certs(&tls);
    std::fs::write(tls.join("node.key"), "not a key\n").unwrap();
    let fails_saying = |target: &str, says: &str| {
        let err = loadtest_failing(dir.path(), &["--target", target]);
        assert!(err.contains(says), "{err}");
    };
    fails_saying("quic-echo://127.0.0.1:0", "cannot read the node key");
    // The gates connect where it listens: an unspecified address is no place to connect to.
    fails_saying("quic-echo://0.0.0.0:0", "such as 127.0.0.1");
}

/// A terminal's Ctrl-C reaches the whole foreground group: the echo server the tester
/// started is not in it, so the run ends at once as interrupted, with the server's CPU
/// time read, and then stops the server.
#[test]
fn a_ctrl_c_at_the_terminal_leaves_the_echo_server_to_the_tester() {
    let dir = tempfile::tempdir().unwrap();
    crate::node::make_certs(&dir.path().join("tls"));
    let json = dir.path().join("report.json");
    let data = dir.path().to_str().unwrap();
    let signalled = std::sync::Arc::new(std::sync::Mutex::new(None));
    let at = signalled.clone();
    let (code, out) = act_once_measuring(
        dir.path(),
        &[
            "--scenario",
            "stadium",
            "--target",
            "quic-echo://127.0.0.1:0",
            "--rate",
            "2000",
            "--gates",
            "4",
            "--inflight",
            "4",
            "--duration",
            "60s",
            "--warmup",
            "0s",
            "--data",
            data,
            "--json",
            json.to_str().unwrap(),
        ],
        move |pid| {
            *at.lock().unwrap() = Some(std::time::Instant::now());
            // SAFETY: kill takes a pid and a signal number; the group is the child's own.
            let sent = unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGINT) };
            assert_eq!(sent, 0);
        },
    );
    let took = signalled.lock().unwrap().unwrap().elapsed();
    assert_eq!(code, Some(130), "{out}");
    assert!(took < Duration::from_secs(8), "{took:?} to stop: {out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let run = &v["runs"][0];
    assert_eq!(run["interrupted"], true, "{run}");
    assert!(
        run["server_cpu_us_per_request"].as_f64().is_some(),
        "the echo server died with the tester's group: {run}"
    );
}

/// A Redis the tester did not start may hold someone's data: a run refuses to empty a
/// database holding keys that are not a load test's, and runs again on one it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_holding_other_data_is_not_emptied() {
    let Some(port) = redis_port_if_installed() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    /// Killed however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Killed(
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // One command, its reply's first line (a whole short reply).
    let call = |args: &[&str]| -> String {
        use std::io::{BufRead, Write};
        let mut last = None;
        for _ in 0..200 {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => {
                    last = Some(s);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(25)),
            }
        }
        let mut s = last.expect("redis-server did not start");
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req += &format!("${}\r\n{a}\r\n", a.len());
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut r = std::io::BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.starts_with('$') && line.trim() != "$-1" {
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        line.trim().to_string()
    };
    assert_eq!(call(&["SET", "precious", "data"]), "+OK");
    let mut c = config(
        Scenario::Stadium,
        &format!("redis://127.0.0.1:{port}"),
        dir.path(),
    );
    c.gates = 2;
    c.tickets = Some(1_000);
    let e = stile_loadtest::run(&c)
        .await
        .expect_err("emptied someone's Redis");
    assert!(e.to_string().contains("not a load test's"), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("redis-cli -h 127.0.0.1 -p {port} flushdb")),
        "{e}"
    );
    assert_eq!(call(&["GET", "precious"]), "data");
    // Emptied by its owner, it takes runs, one after another.
    assert_eq!(call(&["FLUSHDB"]), "+OK");
    for _ in 0..2 {
        let r = stile_loadtest::run(&c).await.unwrap();
        assert!(r.requests > 0, "{r:?}");
    }
}

/// `--spawn-redis` starts Redis where the run connects: a target on another loopback
/// address than 127.0.0.1 does not reach whatever listens there instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_redis_listens_where_the_run_connects() {
    let Some(port) = redis_port_if_installed() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(
        Scenario::Stadium,
        &format!("redis://127.0.0.2:{port}"),
        dir.path(),
    );
    c.spawn_redis = true;
    c.gates = 2;
    c.tickets = Some(1_000);
    c.duration = Duration::from_secs(20);
    // Something else on 127.0.0.1, the port the spawned server used to listen on.
    let other = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let r = stile_loadtest::run(&c).await.unwrap();
    assert_eq!(r.sync, "appendfsync always", "{r:?}");
    assert!(r.requests > 0, "{r:?}");
    drop(other);
}

/// A free loopback port for a spawned Redis; `None`: `redis-server` is missing and the test
/// skips (see [`crate::support::tool`]).
pub(crate) fn redis_port_if_installed() -> Option<u16> {
    crate::support::tool(&["redis-server"], "redis-server")?;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    Some(free.local_addr().unwrap().port())
}

/// Starts `stile loadtest ARGS` in `cwd`, waits (bounded) until its clock starts, sends it
/// SIGINT, and returns its exit code and stdout.
fn interrupt_once_measuring(cwd: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    act_once_measuring(cwd, args, |pid| {
        // SAFETY: kill takes a pid and a signal number; the child is ours and not reaped.
        let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        assert_eq!(sent, 0);
    })
}

/// Starts `stile loadtest ARGS` in `cwd`, waits (bounded) until its clock starts, gives it
/// a second and a half, calls `act` with its pid, and returns its exit code and stdout.
pub(crate) fn act_once_measuring(
    cwd: &std::path::Path,
    args: &[&str],
    act: impl FnOnce(u32),
) -> (Option<i32>, String) {
    use std::io::{BufRead, Read};
    use std::os::unix::process::CommandExt as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .arg("loadtest")
        .args(args)
        .current_dir(cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A group of its own, as a terminal's foreground job: `act` may signal the group.
        .process_group(0)
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            let _ = tx.send(line);
        }
    });
    let started = loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) if line.contains("measuring for") => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    if !started {
        let _ = child.kill();
        panic!("the run never started measuring");
    }
    std::thread::sleep(Duration::from_millis(1500));
    act(child.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 60 s after the act");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    reader.join().unwrap();
    (status.code(), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_goes_away_mid_run_fails_the_run_with_a_note() {
    let mut n = TestNode::start(|_| {}).await;
    let node = n.node.take().unwrap();
    let (dir, addr) = (n.dir.path().to_path_buf(), n.addr.to_string());
    let json = dir.join("down.json");
    let runtime = tokio::runtime::Handle::current();
    let (code, out) = tokio::task::spawn_blocking({
        let json = json.clone();
        move || {
            act_once_measuring(
                &dir,
                &[
                    "--scenario",
                    "stadium",
                    "--target",
                    &format!("quic://{addr}"),
                    "--rate",
                    "500",
                    "--gates",
                    "2",
                    "--duration",
                    "30s",
                    "--warmup",
                    "0s",
                    "--tickets",
                    "20000",
                    "--data",
                    dir.to_str().unwrap(),
                    "--json",
                    json.to_str().unwrap(),
                ],
                // The node goes away while requests are in flight.
                move |_| runtime.block_on(node.shutdown()),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("2 of 2 gates lost"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let run = &v["runs"][0];
    // Both gates stopped early, whether or not they had requests in flight then.
    assert_eq!(run["gates_lost"], 2, "{run}");
    assert!(run["requests"].as_u64().unwrap() > 0, "{run}");
}

#[test]
fn an_interrupted_run_reports_what_it_measured_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let html = dir.path().join("html");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // 2,000/s through 4 gates; and far more than one gate with one check-in in flight
    // answers (a few thousand a second), so that hundreds of thousands of requests fall due
    // and wait: a stop must not send them first.
    let (kept_up, behind) = (
        ["--rate", "2000", "--gates", "4"],
        ["--rate", "1000000", "--gates", "1"],
    );
    let mut cases = vec![
        ("inproc".to_string(), kept_up),
        ("inproc".to_string(), behind),
    ];
    let redis_port = redis_port_if_installed();
    if let Some(port) = redis_port {
        cases.push((format!("redis://127.0.0.1:{port}"), kept_up));
    }
    for (target, rate) in &cases {
        // Two minutes: stopped after a second and a half.
        let (code, out) = interrupt_once_measuring(
            dir.path(),
            &[
                &["--scenario", "stadium", "--spawn-redis", "--target", target],
                &rate[..],
                &[
                    "--inflight",
                    "1",
                    "--duration",
                    "120s",
                    "--warmup",
                    "0s",
                    "--tickets",
                    "400000",
                    "--data",
                    data.to_str().unwrap(),
                    "--json",
                    json.to_str().unwrap(),
                    "--report",
                    html.to_str().unwrap(),
                ],
            ]
            .concat(),
        );
        assert_eq!(code, Some(130), "{target}: {out}");
        let page = std::fs::read_to_string(html.join("index.html")).unwrap();
        assert!(page.contains("note: interrupted"), "{target}: {page:.2000}");
        assert!(out.contains("note: interrupted"), "{target}: {out}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let run = &v["runs"][0];
        assert_eq!(run["interrupted"], true, "{target}: {run}");
        let requests = run["requests"].as_u64().unwrap();
        let measured = run["measured_s"].as_f64().unwrap();
        assert!(requests > 0, "{target}: {run}");
        assert!(measured < 60.0, "{target}: stopped early: {run}");
        assert_eq!(run["double_admits"], 0, "{target}: {run}");
        // Nothing of the run is left: no temporary data dir, no Redis directory.
        for d in [dir.path(), data.as_path()] {
            let left = leftovers_in(d);
            assert!(
                left.is_empty(),
                "{target}: left in {}: {left:?}",
                d.display()
            );
        }
    }
    // The spawned Redis was stopped: nothing listens on its port any more.
    if let Some(port) = redis_port {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}

/// The `.stile-…` directories in `d`.
fn leftovers_in(d: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".stile-"))
        .collect()
}

#[test]
fn what_a_killed_run_leaves_the_next_run_removes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut targets = vec!["inproc".to_string()];
    let redis_port = redis_port_if_installed();
    if let Some(port) = redis_port {
        targets.push(format!("redis://127.0.0.1:{port}"));
    }
    let args = |target: &str, duration: &'static str| {
        let mut a = vec![
            "--scenario".to_string(),
            "stadium".into(),
            "--spawn-redis".into(),
            "--target".into(),
            target.to_string(),
        ];
        for x in [
            "--rate",
            "2000",
            "--gates",
            "2",
            "--duration",
            duration,
            "--warmup",
            "0s",
            "--tickets",
            "50000",
            "--data",
        ] {
            a.push(x.to_string());
        }
        a.push(data.to_str().unwrap().to_string());
        a
    };
    for target in &targets {
        let killed = args(target, "120s");
        let killed: Vec<&str> = killed.iter().map(String::as_str).collect();
        let (code, _) = act_once_measuring(dir.path(), &killed, |pid| {
            // SAFETY: kill takes a pid and a signal number; the child is ours and not reaped.
            assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
        });
        assert_eq!(code, None, "{target}: killed by a signal");
        let left: Vec<String> = [dir.path(), data.as_path()]
            .iter()
            .flat_map(|d| leftovers_in(d))
            .collect();
        assert_eq!(
            left.len(),
            1,
            "{target}: the killed run's directory: {left:?}"
        );

        let next = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
            .arg("loadtest")
            .args(args(target, "1s"))
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            next.status.success(),
            "{target}: {}{}",
            String::from_utf8_lossy(&next.stdout),
            String::from_utf8_lossy(&next.stderr)
        );
        for d in [dir.path(), data.as_path()] {
            let left = leftovers_in(d);
            assert!(
                left.is_empty(),
                "{target}: left in {}: {left:?}",
                d.display()
            );
        }
    }
    // The killed run's Redis went with it (parent-death signal), so the next one could
    // take the port.
    if let Some(port) = redis_port {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}

/// Without `--tickets`, an open loop mints its rate over the run and a tenth more (and
/// 1,000 more still), into partition 65535 of the node; the report says how many it left
/// there and the `stile purge` that removes them, which does. A closed loop is sized by a
/// probe, whose tickets are counted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_sized_to_their_rate_and_leave_their_tickets_where_purge_removes_them() {
    let n = TestNode::start(|_| {}).await;
    let target = format!("quic://{}", n.addr);
    let mut c = config(Scenario::Stadium, &target, n.dir.path());
    (c.tickets, c.rate, c.gates) = (None, Some(2_000.0), 4);
    let r = stile_loadtest::run(&c).await.unwrap();
    check(Scenario::Stadium, &r, 3_200);
    assert_eq!((r.tickets, r.tickets_sized_by.as_str()), (3_200, "rate"));
    assert!(!r.tickets_ran_out, "{r:?}");
    let left = r
        .left_in_node
        .clone()
        .expect("a node keeps the run's tickets");
    assert_eq!((left.partition, left.tickets), (65535, 3_200));
    assert_eq!(
        left.purge,
        format!(
            "{} purge --partition 65535 --node {} --data {}",
            env!("CARGO_BIN_EXE_stile"),
            n.addr,
            n.dir.path().display()
        )
    );
    let summary = stile_loadtest::Report {
        version: String::new(),
        command: String::new(),
        date: String::new(),
        scenario: "stadium".into(),
        seed: 1,
        machine: stile_loadtest::report::Machine::this(),
        runs: vec![r],
        ratios: Vec::new(),
        ratio_medians: Vec::new(),
        history: None,
    }
    .text();
    assert!(
        summary.contains(&format!(
            "  left in the node: 3200 load-test tickets in partition 65535, with any of earlier \
             runs; remove them with: {}\n",
            left.purge
        )),
        "{summary}"
    );
    // The node's own view, second by second.
    let admin = n.client("admin-admin").await;
    assert_eq!(admin.stats().await.unwrap().tickets, 3_200);
    // The command, as printed, removes them.
    let words: Vec<&str> = left.purge.split(' ').collect();
    let out = std::process::Command::new(words[0])
        .args(&words[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("purged partition 65535: 3200 tickets"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(admin.stats().await.unwrap().tickets, 0);
    drop(admin);
    n.node.unwrap().shutdown().await;

    // A closed loop: a probe's rate sizes it.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(Scenario::Replay, "inproc", dir.path());
    (c.tickets, c.duration, c.gates) = (None, Duration::from_millis(500), 4);
    let r = stile_loadtest::run(&c).await.unwrap();
    assert_eq!(r.tickets_sized_by, "probe", "{r:?}");
    let rate = r.probe_rate_per_s.expect("the probe's rate");
    // Twice the probe's answers over the run, four answers a ticket, and 1,000 more.
    let want = (rate * 0.5 * 2.0 / 4.0).ceil() as u64 + 1_000;
    assert!(rate > 0.0 && r.tickets.abs_diff(want) <= 1, "{rate} {r:?}");
    assert!(r.left_in_node.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_to_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(Scenario::Stadium, "inproc", dir.path());
    c.rate = Some(5_000.0);
    c.warmup = Duration::from_millis(200);
    let r = stile_loadtest::run(&c).await.unwrap();
    check(Scenario::Stadium, &r, u64::from(c.tickets.unwrap()));
    assert_eq!((r.mode.as_str(), r.requested_rate), ("open", Some(5_000.0)));
    // Due times are i / rate: a second holds at most 5,000 of them, whatever the machine.
    assert!(r.requests <= 5_001, "{r:?}");
    // 6,000 of its 20,000 tickets were due: the run lasted its time.
    assert!(!r.tickets_ran_out, "{r:?}");
    assert!(r.timeline.iter().any(|s| s.warmup) && r.timeline.iter().any(|s| !s.warmup));
}

#[test]
fn compare_prints_ratios_and_writes_an_html_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let html = dir.path().join("html");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "loadtest",
            "--scenario",
            "mixed",
            "--compare",
            "inproc,inproc",
        ])
        .args(["--duration", "1s", "--warmup", "0s", "--gates", "4"])
        .args([
            "--tickets",
            "20000",
            "--rate",
            "4000",
            "--shape",
            "peak",
            "--quiet",
        ])
        .arg("--data")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .arg("--report")
        .arg(&html)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("inproc vs inproc: throughput x"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 2);
    assert_eq!(v["runs"][1]["mode"], "open");
    assert_eq!(v["runs"][1]["requested_rate"], 4000.0);
    assert_eq!(v["runs"][1]["shape"], "peak");
    let ratio = &v["ratios"][0];
    assert_eq!(
        (ratio["target"].as_str(), ratio["baseline"].as_str()),
        (Some("inproc"), Some("inproc"))
    );
    assert!(ratio["throughput"].as_f64().unwrap() > 0.0, "{ratio}");
    // When, which stile, and the command line exactly as given, in the JSON and atop the page.
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let command = v["command"].as_str().unwrap();
    assert!(
        command.starts_with(env!("CARGO_BIN_EXE_stile"))
            && command.contains(" loadtest --scenario mixed --compare inproc,inproc ")
            && command.ends_with(&format!("--report {}", html.display())),
        "{command}"
    );
    assert!(v["date"].as_str().unwrap().ends_with('Z'), "{v}");
    let page = std::fs::read_to_string(html.join("index.html")).unwrap();
    assert!(page.contains(&format!("<pre class=\"command\">{command}</pre>")));
    assert!(page.contains(&format!("with stile {}", env!("CARGO_PKG_VERSION"))));
    // The engine's own view, second by second, beside the client's: its fsyncs.
    assert!(
        !v["runs"][0]["node_timeline"].as_array().unwrap().is_empty(),
        "{v}"
    );
    assert_eq!(page.matches("<svg").count(), 4, "four plots inline");
    for f in [
        "latency-percentiles.svg",
        "latency-over-time.svg",
        "node-latency-over-time.svg",
        "throughput-over-time.svg",
    ] {
        let svg = std::fs::read_to_string(html.join(f)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{f}: {svg:.200}"
        );
    }
}

/// `--rounds`: the targets run in turn, each run says its round, each round gets its
/// ratios, and the medians come last, in the text, the JSON and the HTML page.
#[test]
fn compare_in_rounds_alternates_the_targets_and_prints_medians() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let html = dir.path().join("html");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["loadtest", "--scenario", "stadium", "--rounds", "3"])
        .args(["--compare", "inproc,inproc", "--sync", "none"])
        .args(["--duration", "300ms", "--warmup", "0s", "--gates", "2"])
        .args(["--inflight", "4", "--tickets", "20000"])
        .arg("--data")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .arg("--report")
        .arg(&html)
        .output()
        .unwrap();
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{text}{err}");
    for round in 1..=3 {
        assert!(
            text.contains(&format!("round {round}: inproc vs inproc: throughput x")),
            "{text}"
        );
        assert!(
            err.contains(&format!("round {round} of 3: inproc")),
            "{err}"
        );
    }
    assert!(
        text.contains("median of 3 rounds: inproc vs inproc: throughput x"),
        "{text}"
    );
    // An engine that never synced has no view of its own to print.
    assert!(!text.contains("its own view"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rounds: Vec<u64> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, [1, 1, 2, 2, 3, 3]);
    let ratios: Vec<(u64, f64)> = v["ratios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["round"].as_u64().unwrap(),
                q["throughput"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ratios.iter().map(|q| q.0).collect::<Vec<_>>(), [1, 2, 3]);
    let m = &v["ratio_medians"][0];
    assert_eq!(m["rounds"], 3);
    let mut each: Vec<f64> = ratios.iter().map(|q| q.1).collect();
    each.sort_by(f64::total_cmp);
    assert_eq!(m["throughput"].as_f64().unwrap(), each[1], "{m}");
    assert_eq!(m["throughput_min"].as_f64().unwrap(), each[0], "{m}");
    assert_eq!(m["throughput_max"].as_f64().unwrap(), each[2], "{m}");
    let page = std::fs::read_to_string(html.join("index.html")).unwrap();
    assert!(page.contains("median of 3 rounds"), "{page:.400}");

    // A target that fails in every round: the other's runs keep their rounds, there is
    // nothing to set them against, and the exit status says a run failed.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "loadtest",
            "--scenario",
            "stadium",
            "--rounds",
            "2",
            "--quiet",
        ])
        .args(["--compare", "inproc,redis://127.0.0.1:1", "--sync", "none"])
        .args(["--duration", "300ms", "--warmup", "0s", "--gates", "2"])
        .args(["--inflight", "4", "--tickets", "20000"])
        .arg("--data")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.matches("stile: running stadium against redis://127.0.0.1:1")
            .count(),
        2,
        "{err}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs: Vec<(u64, &str)> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["round"].as_u64().unwrap(), r["target"].as_str().unwrap()))
        .collect();
    assert_eq!(runs, [(1, "inproc"), (2, "inproc")]);
    assert!(
        v.get("ratios").is_none() && v.get("ratio_medians").is_none(),
        "{v}"
    );

    // --rounds belongs to --compare, and takes 1 to 100.
    for (args, code) in [
        (&["--rounds", "2", "--target", "inproc"][..], 1),
        (&["--rounds", "2", "--compare", "inproc"][..], 1),
        (&["--rounds", "0", "--compare", "inproc,inproc"][..], 2),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
            .args(["loadtest", "--scenario", "stadium"])
            .args(args)
            .arg("--data")
            .arg(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains("--rounds"), "{args:?}: {err}");
    }
}

/// An interrupt in the first round ends the rounds there: what was measured is reported,
/// and no later run starts.
#[test]
fn an_interrupt_ends_the_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let (code, out) = interrupt_once_measuring(
        dir.path(),
        &[
            "--scenario",
            "stadium",
            "--compare",
            "inproc,inproc",
            "--rounds",
            "3",
            "--rate",
            "2000",
            "--gates",
            "4",
            "--duration",
            "120s",
            "--warmup",
            "0s",
            "--tickets",
            "400000",
            "--data",
            dir.path().to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(130), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{v}");
    assert_eq!(
        (runs[0]["round"].as_u64(), &runs[0]["interrupted"]),
        (Some(1), &serde_json::json!(true))
    );
    assert!(
        v.get("ratios").is_none() && v.get("ratio_medians").is_none(),
        "{v}"
    );
}

/// `--help` states the defaults as clap does, the partition of load-test tickets and how
/// they are removed, and the exit statuses.
#[test]
fn help_states_defaults_and_exit_statuses() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["loadtest", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "[default: quic://127.0.0.1:7443]",
        "[default: 5s]",
        "[default: 1s]",
        "[default: 64]",
        "[default: 16]",
        "[default: 65535]",
        "[default: always]",
        "[default: 4]",
        "[default: 1]",
        "[default: flat]",
        "stile purge --partition 65535",
        "Exit status: 0 ",
        "130 interrupted",
    ] {
        assert!(help.contains(want), "{want}: {help}");
    }
}

#[test]
fn bad_options_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let no_dir = dir.path().join("no-such-dir").join("r.json");
    let no_dir = no_dir.to_str().unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"x").unwrap();
    let under_file = plain.join("report");
    let under_file = under_file.to_str().unwrap();
    for (args, expect) in [
        (vec!["--scenario", "marathon"], "possible values: stadium"),
        (
            vec!["--scenario", "stadium", "--rate", "0"],
            "--rate must be",
        ),
        (
            vec!["--scenario", "stadium", "--rate", "9", "--shape", "wave"],
            "possible values: flat, peak",
        ),
        (
            vec!["--scenario", "stadium", "--gates", "0"],
            "--gates must be",
        ),
        (
            vec!["--scenario", "stadium", "--gates", "70000"],
            "--gates must be 1 to 4096",
        ),
        (
            vec!["--scenario", "stadium", "--target", "http://x"],
            "use inproc, quic://",
        ),
        // The node's real tickets are in partition 0: no load test mints among them.
        (
            vec![
                "--scenario",
                "stadium",
                "--target",
                "quic://127.0.0.1:9",
                "--partition",
                "0",
            ],
            "--partition 0 holds the node's real tickets",
        ),
        (
            vec!["--scenario", "stadium", "--compare", "inproc,,inproc"],
            "empty target",
        ),
        // A shard's nodes: each part an address, and few enough in flight to resend.
        (
            vec!["--scenario", "stadium", "--target", "quic://127.0.0.1:9+"],
            "node 2 of 2 is empty",
        ),
        (
            vec![
                "--scenario",
                "stadium",
                "--compare",
                "inproc,quic://127.0.0.1:9+nonsense",
            ],
            "\"nonsense\", is not HOST:PORT",
        ),
        (
            vec![
                "--scenario",
                "stadium",
                "--target",
                "quic://127.0.0.1:9+127.0.0.1:10",
                "--inflight",
                "300",
            ],
            "against a shard",
        ),
        // Options for a kind of target none of the targets is.
        (
            vec![
                "--scenario",
                "stadium",
                "--target",
                "quic://127.0.0.1:9",
                "--sync",
                "none",
            ],
            "--sync sets up the in-process engine",
        ),
        (
            vec![
                "--scenario",
                "stadium",
                "--target",
                "quic://127.0.0.1:9",
                "--log-runway",
                "0",
            ],
            "--log-runway sets up the in-process engine",
        ),
        // Every target is checked before the first runs.
        (
            vec![
                "--scenario",
                "stadium",
                "--compare",
                "inproc,quic://127.0.0.1:9",
            ],
            "no CA in",
        ),
        // Outputs are checked before the run, not after it.
        (
            vec![
                "--scenario",
                "stadium",
                "--target",
                "inproc",
                "--json",
                no_dir,
            ],
            "cannot write into",
        ),
        (
            vec![
                "--scenario",
                "stadium",
                "--target",
                "inproc",
                "--report",
                under_file,
            ],
            "cannot write into it",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
            .arg("loadtest")
            .args(&args)
            .args(["--quiet", "--duration", "1s"])
            .arg("--data")
            .arg(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // A name that is none of an option's values is a usage error (clap's exit code 2).
        let code = if expect.starts_with("possible values") {
            2
        } else {
            1
        };
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!said.contains("requests in"), "{args:?} ran: {said}");
    }
}

/// `stile up` on a fresh data dir with extra arguments; its QUIC address.
fn spawn_up(data: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["up", "--quic", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(extra)
        .arg("--data")
        .arg(data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(up.stdout.take().unwrap());
    let (addr, _) = crate::support::read_up_quic_address(&mut out);
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (up, addr)
}

/// Forged codes against a node: past the default budget of a gate they are answered
/// rate_limited; `--gate-budget` raises it so the load test sees the node's `forged`.
#[test]
fn gate_budget_decides_when_forged_codes_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut counts = Vec::new();
    for (name, extra) in [
        ("default", vec![]),
        ("raised", vec!["--gate-budget", "1000000"]),
    ] {
        let data = dir.path().join(name);
        let (mut up, addr) = spawn_up(&data, &extra);
        let json = dir.path().join(format!("{name}.json"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
            .args(["loadtest", "--scenario", "forged", "--quiet"])
            .args(["--target", &format!("quic://{addr}")])
            .args([
                "--gates",
                "2",
                "--tickets",
                "2000",
                "--duration",
                "20s",
                "--warmup",
                "0s",
            ])
            .arg("--data")
            .arg(&data)
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        let _ = up.kill();
        let _ = up.wait();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let o = &v["runs"][0]["outcomes"];
        counts.push((
            o["forged"].as_u64().unwrap_or(0),
            o["rate_limited"].as_u64().unwrap_or(0),
        ));
    }
    let ((_, limited_default), (forged_raised, limited_raised)) = (counts[0], counts[1]);
    assert!(limited_default > 0, "{counts:?}");
    assert_eq!((forged_raised, limited_raised), (2000, 0), "{counts:?}");
}

/// `quic-echo://` starts the bare echo with the node's TLS beside a node in one invocation:
/// what a request costs each, and the ratio, are reported; the echo's answers decide
/// nothing, so no outcome of it is checked, and its history cannot be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transports_floor_is_measured_beside_a_node() {
    let n = TestNode::start(|c| c.budget_per_s = 1_000_000).await;
    let json = n.dir.path().join("report.json");
    let node = format!("quic://{}", n.addr);
    let (dir, json) = (
        n.dir.path().to_path_buf(),
        json.to_str().unwrap().to_string(),
    );
    let run = move |extra: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
            .args(["loadtest", "--scenario", "replay", "--compare"])
            .arg(format!("quic-echo://127.0.0.1:0,{node}"))
            .args(["--duration", "2s", "--warmup", "0s", "--gates", "4"])
            .args(["--inflight", "2", "--tickets", "4000", "--quiet", "--data"])
            .arg(&dir)
            .args(extra)
            .output()
            .unwrap()
    };
    let again = run.clone();
    let out = tokio::task::spawn_blocking(move || run(vec!["--json".into(), json]))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(n.dir.path().join("report.json")).unwrap())
            .unwrap();
    let (echo, stile) = (&v["runs"][0], &v["runs"][1]);
    assert_eq!(echo["target"], "quic-echo://127.0.0.1:0");
    assert_eq!(echo["sync"], "none (echo)");
    assert_eq!(echo["double_admits"], 0, "{echo}");
    assert!(echo["requests"].as_u64().unwrap() > 0, "{echo}");
    for r in [echo, stile] {
        assert!(
            r["server_cpu_us_per_request"].as_f64().unwrap() > 0.0,
            "{r}"
        );
        assert!(r["datagrams_per_request"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["server_memory_per_gate_bytes"].as_f64().is_some(), "{r}");
    }
    assert!(text.contains("cost: server CPU"), "{text}");
    assert!(v["ratios"][0]["throughput"].as_f64().unwrap() > 0.0, "{v}");
    // The echo server went with the run.
    let left: Vec<_> = std::fs::read_dir(n.dir.path())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.starts_with(".stile-echo-").then_some(name)
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let refused = tokio::task::spawn_blocking(move || again(vec!["--check-history".into()]))
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("decides nothing"),
        "{refused:?}"
    );
    n.node.unwrap().shutdown().await;
}
