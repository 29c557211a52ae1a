//! Operator metrics: a real node's `/metrics` moves by exactly what its gates were answered,
//! its label sets stay bounded, `stile stat` prints what an operator reads, and the Grafana
//! dashboard asks only for metrics a node or gateway exports.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stile_node::GATE_LABELS_MAX;
use stile_protocol::client::ClientError;
use stile_protocol::frame::op;
use stile_protocol::{CodeBytes, OutcomeKind};

use crate::node::{futures_join, spec, TestNode};
use crate::support::sigterm;

/// Samples of a Prometheus text page: `name{labels}` as written, to value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series and value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// Every sample name a page can hold, from its `# TYPE` lines (a family with no members
/// yet still declares its type).
fn exported_names(text: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("name and type");
        let suffixes: &[&str] = match kind {
            "histogram" => &["_bucket", "_sum", "_count"],
            "counter" => &["_total", "_created"],
            "info" => &["_info"],
            "summary" => &["", "_sum", "_count"],
            _ => &[""],
        };
        for s in suffixes {
            names.insert(format!("{name}{s}"));
        }
    }
    names
}

async fn scrape(url: &str) -> String {
    // reqwest's rustls takes the process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let res = reqwest::get(url).await.expect("metrics answer");
    assert_eq!(res.status(), 200);
    let kind = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    res.text().await.unwrap()
}

/// Scrapes until `done` holds (a request counts once its answer is written, which may be
/// just after the client has it), for at most 10 s.
pub(crate) async fn scrape_until(
    url: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(url).await;
        if done(&samples(&text)) {
            return text;
        }
        assert!(Instant::now() < deadline, "metrics never settled:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn get(s: &HashMap<String, f64>, series: &str) -> f64 {
    *s.get(series)
        .unwrap_or_else(|| panic!("no series {series} in {s:?}"))
}

/// A code with the right layout and a wrong tag.
fn forged(code: &CodeBytes) -> CodeBytes {
    let mut bytes = code.as_bytes().to_vec();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    CodeBytes::from_slice(&bytes).unwrap()
}

const CHECKIN_COUNT: &str = "stile_node_request_duration_seconds_count{op=\"checkin\"}";
const IN_FLIGHT: &str = "stile_node_requests_in_flight";

/// The series of check-ins answered `kind`.
fn outcome(kind: OutcomeKind) -> String {
    outcome_of("checkin", kind)
}

fn outcome_of(op: &str, kind: OutcomeKind) -> String {
    format!(
        "stile_node_outcomes_total{{op=\"{op}\",outcome=\"{}\"}}",
        kind.name()
    )
}

fn metrics_on_loopback(c: &mut stile_node::NodeConfig) {
    c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_metrics_move_by_exactly_what_the_gate_was_answered() {
    let n = TestNode::start(metrics_on_loopback).await;
    let node = n.node.as_ref().unwrap();
    let url = format!("http://{}/metrics", node.metrics_addr().unwrap());
    let admin = n.client("admin-admin").await;
    let gate = n.client("gate-1").await;
    let codes = admin.mint(spec(1, 3)).await.unwrap();
    let before = samples(&scrape(&url).await);

    for c in &codes {
        let o = gate.checkin(c, gate.next_scan_id()).await.unwrap();
        assert_eq!(o.kind, OutcomeKind::Admitted);
    }
    for c in &codes[..2] {
        let o = gate.checkin(c, gate.next_scan_id()).await.unwrap();
        assert_eq!(o.kind, OutcomeKind::AlreadyUsed);
    }
    let o = gate
        .checkin(&forged(&codes[2]), gate.next_scan_id())
        .await
        .unwrap();
    assert_eq!(o.kind, OutcomeKind::Forged);
    let exit = gate.exit(&codes[0], gate.next_scan_id()).await.unwrap();

    let moved = |s: &HashMap<String, f64>, series: &str| get(s, series) - get(&before, series);
    let text = scrape_until(&url, |s| {
        moved(s, CHECKIN_COUNT) >= 6.0
            && moved(s, "stile_node_request_duration_seconds_count{op=\"exit\"}") >= 1.0
            && get(s, IN_FLIGHT) == 0.0
    })
    .await;
    let after = samples(&text);
    let moved = |series: &str| moved(&after, series);
    assert_eq!(moved(&outcome(OutcomeKind::Admitted)), 3.0, "{text}");
    assert_eq!(moved(&outcome(OutcomeKind::AlreadyUsed)), 2.0, "{text}");
    assert_eq!(moved(&outcome(OutcomeKind::Forged)), 1.0, "{text}");
    assert_eq!(moved(&outcome(OutcomeKind::Unknown)), 0.0, "{text}");
    // The exit is counted under its own op, not as a check-in.
    assert_eq!(moved(&outcome_of("exit", exit.kind)), 1.0, "{text}");
    let exits: f64 = OutcomeKind::ALL
        .iter()
        .map(|k| moved(&outcome_of("exit", *k)))
        .sum();
    assert_eq!(exits, 1.0, "{text}");
    assert_eq!(moved(CHECKIN_COUNT), 6.0, "{text}");
    assert_eq!(
        moved("stile_node_request_duration_seconds_bucket{le=\"+Inf\",op=\"checkin\"}"),
        6.0
    );
    assert_eq!(moved("stile_node_gate_scans_total{gate=\"1\"}"), 7.0);
    assert_eq!(
        moved("stile_node_request_duration_seconds_count{op=\"exit\"}"),
        1.0
    );
    // Buckets are cumulative: each at least the one below it, the last one the count.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("stile_node_request_duration_seconds_bucket{"))
        .filter(|l| l.contains("op=\"checkin\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 16, "15 edges from 10 µs to 1 s, and +Inf");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert!(
        text.contains("stile_node_request_duration_seconds_bucket{le=\"0.00001\",op=\"checkin\"}")
    );

    // The log: the three admits were made durable by at least one fdatasync.
    assert!(moved("stile_node_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(moved("stile_node_wal_sync_batch_records_sum") >= 3.0);
    assert!(moved("stile_node_wal_records_total") >= 3.0);
    assert_eq!(get(&after, "stile_node_sync_mode{mode=\"always\"}"), 1.0);
    assert_eq!(get(&after, "stile_node_sync_mode{mode=\"none\"}"), 0.0);
    assert_eq!(get(&after, "stile_node_connections"), 2.0);
    assert_eq!(get(&after, "stile_node_tickets"), 3.0);
    // The socket's buffers, at least what a plain socket gets, and its kernel drops (none
    // at this load).
    let plain = socket2::Socket::from(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    let (recv, send) = (
        plain.recv_buffer_size().unwrap() as f64,
        plain.send_buffer_size().unwrap() as f64,
    );
    assert!(get(&after, "stile_node_udp_buffer_bytes{direction=\"receive\"}") >= recv);
    assert!(get(&after, "stile_node_udp_buffer_bytes{direction=\"send\"}") >= send);
    assert_eq!(get(&after, "stile_node_udp_receive_drops_total"), 0.0);

    // The `metrics` request and `stats` tell the same story.
    let m = admin.metrics(op::CHECKIN).await.unwrap();
    assert_eq!(m.latency_op, op::CHECKIN);
    assert_eq!(m.outcomes.len(), OutcomeKind::ALL.len());
    assert_eq!(m.outcomes[OutcomeKind::Admitted as usize], 3);
    assert_eq!(m.outcomes[OutcomeKind::AlreadyUsed as usize], 2);
    assert_eq!(m.outcomes[OutcomeKind::Forged as usize], 1);
    assert_eq!(m.latency_us.count(), get(&after, CHECKIN_COUNT) as u64);
    assert!(m.fsync_us.count() >= 1);
    assert_eq!(m.inflight, 0, "the metrics request does not count itself");
    assert_eq!(admin.metrics(op::SUBSCRIBE).await.unwrap().latency_op, 0);
    let stats = admin.stats().await.unwrap();
    assert_eq!(
        (stats.scans, stats.admitted),
        (7, 3),
        "six check-ins and an exit"
    );

    // Only GET and HEAD, only /metrics.
    let http = reqwest::Client::new();
    let other = http.get(url.replace("/metrics", "/")).send().await.unwrap();
    assert_eq!(other.status(), 404);
    let post = http.post(&url).send().await.unwrap();
    assert_eq!(post.status(), 405);
    n.node.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_labels_stay_bounded_however_many_gates_scan() {
    let n = TestNode::start(metrics_on_loopback).await;
    let url = format!(
        "http://{}/metrics",
        n.node.as_ref().unwrap().metrics_addr().unwrap()
    );
    let admin = n.client("admin-admin").await;
    let code = admin.mint(spec(1, 1)).await.unwrap()[0];
    let gates = GATE_LABELS_MAX as u16 + 40;
    // One scan from each of many gates, in order, so the first ones seen are 1, 2, ...
    for gate in 1..=gates {
        let o = admin.checkin_as(gate, 1, &code, 7).await.unwrap();
        let want = if gate == 1 {
            OutcomeKind::Admitted
        } else {
            OutcomeKind::AlreadyUsed
        };
        assert_eq!(o.kind, want, "gate {gate}");
    }
    let text = scrape_until(&url, |s| {
        get(
            s,
            "stile_node_request_duration_seconds_count{op=\"checkin_as\"}",
        ) >= f64::from(gates)
    })
    .await;
    let series = |prefix: &str| -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .collect::<Vec<_>>()
    };
    let gate_series = series("stile_node_gate_scans_total{");
    assert_eq!(gate_series.len(), GATE_LABELS_MAX + 1, "{gate_series:?}");
    let s = samples(&text);
    assert_eq!(get(&s, "stile_node_gate_scans_total{gate=\"other\"}"), 40.0);
    for gate in 1..=GATE_LABELS_MAX {
        let one = format!("stile_node_gate_scans_total{{gate=\"{gate}\"}}");
        assert_eq!(get(&s, &one), 1.0, "{one}");
    }
    // Outcomes, ops and sync modes are fixed sets too; nothing names a ticket.
    assert_eq!(
        series("stile_node_outcomes_total{").len(),
        4 * OutcomeKind::ALL.len(),
        "checkin, exit, undo, checkin_as by outcome"
    );
    let ops: HashSet<&str> = series("stile_node_request_duration_seconds_count{")
        .iter()
        .map(|l| l.split('"').nth(1).unwrap())
        .collect();
    assert_eq!(
        ops.len(),
        op::REQUEST_MAX as usize - 2,
        "every op but the streams, subscribe and replica_follow"
    );
    assert!(ops.contains("checkin_as") && !ops.contains("subscribe"));
    assert!(ops.contains("checkin_offline") && !ops.contains("replica_follow"));
    assert_eq!(series("stile_node_sync_mode{").len(), 4);
    assert!(!text.contains(code.to_text().as_str()));
    n.node.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_returns_to_zero_when_a_gate_stops_reading_its_answers() {
    use stile_protocol::client::connect_raw;
    use stile_protocol::frame::{RawCode, Request};
    let n = TestNode::start(metrics_on_loopback).await;
    let url = format!(
        "http://{}/metrics",
        n.node.as_ref().unwrap().metrics_addr().unwrap()
    );
    let admin = n.client("admin-admin").await;
    let mut codes = admin.mint(spec(1, 1000)).await.unwrap();
    codes.extend(admin.mint(spec(1, 1000)).await.unwrap());
    let (_endpoint, conn, mut send, mut recv) = connect_raw(&n.config("gate-1")).await.unwrap();
    let frames = |range: std::ops::Range<usize>| {
        let mut out = Vec::new();
        for i in range {
            let code = RawCode::from(codes[i]);
            Request::Checkin {
                scan_id: i as u64,
                code,
            }
            .encode(i as u32, &mut out);
        }
        out
    };
    // The gate stops reading its answers (STOP_SENDING): the node's writes fail, and every
    // request it took in, before and after, must still leave flight.
    send.write_all(&frames(0..1000)).await.unwrap();
    recv.stop(0u32.into()).unwrap();
    let admitted = outcome(OutcomeKind::Admitted);
    scrape_until(&url, |s| {
        get(s, &admitted) >= 1000.0 && get(s, IN_FLIGHT) == 0.0
    })
    .await;
    send.write_all(&frames(1000..2000)).await.unwrap();
    let text = scrape_until(&url, |s| {
        get(s, &admitted) >= 2000.0 && get(s, IN_FLIGHT) == 0.0
    })
    .await;
    assert!(get(&samples(&text), CHECKIN_COUNT) <= 2000.0);
    conn.close(0u32.into(), b"gone");
    // The node goes on serving.
    let gate = n.client("gate-2").await;
    let o = gate.checkin(&codes[0], gate.next_scan_id()).await.unwrap();
    assert_eq!(o.kind, OutcomeKind::AlreadyUsed);
    n.node.unwrap().shutdown().await;
}

/// Runs `stile stat` against a node whose certificates are in `dir/tls`.
fn stat(dir: &Path, node: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stile"))
        .arg("stat")
        .args(args)
        .arg("--data")
        .arg(dir)
        .args(["--node", node])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_once_prints_rates_latencies_outcomes_and_the_log() {
    let n = TestNode::start(|_| {}).await;
    let admin = n.client("admin-admin").await;
    let gate = n.client("gate-1").await;
    let codes = admin.mint(spec(1, 200)).await.unwrap();
    let answers = futures_join(codes.iter().map(|c| {
        let (gate, c) = (gate.clone(), *c);
        async move { gate.checkin(&c, gate.next_scan_id()).await.unwrap() }
    }))
    .await;
    assert!(answers.iter().all(|o| o.kind == OutcomeKind::Admitted));
    gate.checkin(&codes[0], 1).await.unwrap();
    gate.checkin(&forged(&codes[0]), 2).await.unwrap();

    let dir = n.dir.path().to_path_buf();
    let addr = n.addr.to_string();
    let (once, twice, json, bad_op) = tokio::task::spawn_blocking(move || {
        (
            stat(&dir, &addr, &["--once", "--interval", "200ms"]),
            stat(&dir, &addr, &["--count", "2", "--interval", "100ms"]),
            stat(
                &dir,
                &addr,
                &["--json", "--count", "2", "--interval", "100ms"],
            ),
            stat(&dir, &addr, &["--once", "--op", "subscribe"]),
        )
    })
    .await
    .unwrap();
    assert!(once.status.success(), "{once:?}");
    let text = String::from_utf8(once.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    let labels = [
        "node ",
        "check-ins ",
        "since start ",
        "outcomes ",
        "fsync ",
        "connections ",
    ];
    for (line, label) in lines.iter().zip(labels) {
        assert!(line.starts_with(label), "{line:?} starts with {label:?}");
    }
    assert!(lines[0].contains(&n.addr.to_string()) && lines[0].contains("sync always"));
    assert!(lines[1].contains("/s over 0."), "{text}");
    for p in ["p50 ", "p99 ", "p999 "] {
        assert!(lines[1].contains(p) && lines[2].contains(p), "{text}");
    }
    assert!(
        lines[2].starts_with("since start  202 check-ins   p50 "),
        "{text}"
    );
    assert!(!lines[2].contains(" - "), "every percentile known: {text}");
    assert!(lines[3].contains("admitted 200 ("), "{text}");
    assert!(lines[3].contains("already_used 1 ("), "{text}");
    assert!(lines[3].contains("forged 1 ("), "{text}");
    assert!(
        lines[4].contains("p50 ") && lines[4].contains("records/sync"),
        "{text}"
    );
    assert!(lines[5].contains("in flight 0"), "{text}");
    // No screen control when stdout is not a terminal.
    assert!(!text.contains('\x1b'));

    assert!(twice.status.success(), "{twice:?}");
    let text = String::from_utf8(twice.stdout).unwrap();
    let blocks: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(blocks.len(), 2, "two readings, a blank line apart: {text}");
    assert!(blocks.iter().all(|b| b.starts_with("node ")));

    // For scripts: a JSON object a line, the same figures.
    assert!(json.status.success(), "{json:?}");
    let text = String::from_utf8(json.stdout).unwrap();
    let readings: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(readings.len(), 2, "{text}");
    for r in &readings {
        assert_eq!(
            (r["sync"].as_str(), r["op"].as_str()),
            (Some("always"), Some("checkin"))
        );
        assert_eq!(r["total"], 202, "{r}");
        assert_eq!(r["outcomes"]["admitted"]["total"], 200, "{r}");
        assert_eq!(r["outcomes"]["forged"]["total"], 1, "{r}");
        assert!(
            r["latency_since_start_us"]["p99"].as_u64().unwrap() > 0,
            "{r}"
        );
        assert!(r["window_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(bad_op.status.code(), Some(2), "{bad_op:?}");
    let msg = String::from_utf8(bad_op.stderr).unwrap();
    assert!(msg.contains("not a request op"), "{msg}");
    n.node.unwrap().shutdown().await;
}

/// `stile stat` reads node-wide counts, which only an admin certificate may: with a gate's it
/// ends at once and says why, even with `--retry`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_with_a_gate_certificate_is_refused_with_the_reason() {
    let n = TestNode::start(|_| {}).await;
    let (dir, addr) = (n.dir.path().to_path_buf(), n.addr.to_string());
    let (cert, key) = (n.tls.join("gate-1.crt"), n.tls.join("gate-1.key"));
    let out = tokio::task::spawn_blocking(move || {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        stat(
            &dir,
            &addr,
            &["--retry", "--count", "1", "--cert", cert, "--key", key],
        )
    })
    .await
    .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs the admin role"), "{err}");
    n.node.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_with_retry_waits_out_a_restart() {
    use std::sync::Arc;
    use stile_engine::{Engine, EngineConfig, SystemClock};
    use stile_node::{Node, NodeConfig};

    let mut n = TestNode::start(|_| {}).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "stat",
            "--json",
            "--retry",
            "--count",
            "8",
            "--interval",
            "300ms",
        ])
        .arg("--data")
        .arg(n.dir.path())
        .args(["--node", &n.addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let v = serde_json::from_str(&line.unwrap()).unwrap();
            let _ = tx.send(v);
        }
    });
    // Lines until one whose `up` is `up`, bounded.
    let until_up = move |rx: std::sync::mpsc::Receiver<serde_json::Value>, up: bool| {
        tokio::task::spawn_blocking(move || {
            let mut seen = Vec::new();
            loop {
                let v = rx
                    .recv_timeout(Duration::from_secs(60))
                    .unwrap_or_else(|_| panic!("no reading with up = {up} after {seen:?}"));
                let found = v["up"] == up;
                seen.push(v);
                if found {
                    return (rx, seen);
                }
            }
        })
    };
    let (rx, first) = until_up(rx, true).await.unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0]["connections"].as_u64().is_some(), "{}", first[0]);

    // The node goes away: the view says so, and goes on.
    n.node.take().unwrap().shutdown().await;
    let (rx, down) = until_up(rx, false).await.unwrap();
    let gone = down.last().unwrap();
    assert_eq!(gone["node"], n.addr.to_string());
    assert!(
        gone["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{gone}"
    );
    assert!(gone["down_since"].as_str().is_some(), "{gone}");

    // A node on the same address again: readings resume.
    let engine = Engine::open(
        &n.dir.path().join("data-again"),
        EngineConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let again = Node::start(Arc::new(engine), NodeConfig::new(n.addr, n.tls.clone())).unwrap();
    let (_rx, back) = until_up(rx, true).await.unwrap();
    assert!(back.last().unwrap()["uptime_s"].as_f64().is_some());
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "stat still running");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    reader.join().unwrap();
    again.shutdown().await;
}

#[test]
fn stat_of_a_node_that_is_not_there_says_so() {
    let dir = tempfile::tempdir().unwrap();
    crate::node::make_certs(&dir.path().join("tls"));
    // A port nothing listens on.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = stat(dir.path(), &format!("127.0.0.1:{port}"), &["--once"]);
    assert_eq!(down.status.code(), Some(1));
    let msg = String::from_utf8(down.stderr).unwrap();
    assert!(
        msg.starts_with("stile: cannot reach node 127.0.0.1:"),
        "{msg}"
    );
    // Retrying is for a node that is away, not for what needs a person: a missing
    // certificate ends it at once.
    let empty = tempfile::tempdir().unwrap();
    let no_cert = stat(
        empty.path(),
        &format!("127.0.0.1:{port}"),
        &["--retry", "--json", "--count", "3", "--interval", "100ms"],
    );
    assert_eq!(no_cert.status.code(), Some(1));
    let msg = String::from_utf8(no_cert.stderr).unwrap();
    assert!(msg.contains("no certificate"), "{msg}");
    assert!(no_cert.stdout.is_empty(), "no retry notices");
    let bad = stat(dir.path(), "no-such-address", &["--once"]);
    assert_eq!(bad.status.code(), Some(1));
    let msg = String::from_utf8(bad.stderr).unwrap();
    assert!(
        msg.contains("--node no-such-address: not a host:port"),
        "{msg}"
    );
}

/// Reads a child's stdout until it has printed every line starting with one of `prefixes`;
/// returns the rest of each such line.
pub(crate) fn read_addresses(out: &mut impl BufRead, prefixes: &[&str]) -> Vec<String> {
    let mut found = vec![String::new(); prefixes.len()];
    let mut said = String::new();
    while found.iter().any(String::is_empty) {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "ended early: {said}");
        said.push_str(&line);
        for (i, p) in prefixes.iter().enumerate() {
            if let Some(rest) = line.trim().strip_prefix(p) {
                found[i] = rest.to_string();
            }
        }
    }
    found
}

/// The metric names a dashboard's strings mention (every `stile_…` token).
fn dashboard_metric_names(v: &serde_json::Value, out: &mut HashSet<String>) {
    match v {
        serde_json::Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(at) = rest.find("stile_") {
                let tail = &rest[at..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                out.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_metric_names(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| dashboard_metric_names(x, out)),
        _ => {}
    }
}

#[test]
fn stile_up_serves_node_metrics_and_the_dashboard_asks_only_for_exported_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("stile-data");
    let mut up = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["up", "--quic", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--metrics", "127.0.0.1:0", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(up.stdout.take().unwrap());
    let found = read_addresses(
        &mut out,
        &["stile metrics listening on ", "stile gateway listening on "],
    );
    let (node_url, gateway) = (found[0].clone(), found[1].clone());
    assert!(node_url.starts_with("http://127.0.0.1:") && node_url.ends_with("/metrics"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (node_text, gateway_text) = rt.block_on(async {
        let node = scrape(&node_url).await;
        let gw = reqwest::get(format!("{gateway}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (node, gw)
    });
    sigterm(&up);
    assert!(up.wait().unwrap().success());

    let mut exported = exported_names(&node_text);
    exported.extend(exported_names(&gateway_text));
    let json = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/grafana/stile-node.json"),
    )
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&json).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut exprs = 0;
    for p in panels {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        for t in p["targets"].as_array().into_iter().flatten() {
            assert!(
                t["expr"].as_str().is_some_and(|e| e.contains("stile_")),
                "{t}"
            );
            exprs += 1;
        }
    }
    assert!(exprs >= 20, "{exprs} queries");
    let mut used = HashSet::new();
    dashboard_metric_names(&dashboard, &mut used);
    let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard asks for {unknown:?}, which nothing exports"
    );
    // It shows what an operator needs: rates, percentiles, outcomes, in flight, the log (and
    // the time it spends syncing), connections, and the gateway.
    for needed in [
        "stile_node_request_duration_seconds_bucket",
        "stile_node_request_duration_seconds_count",
        "stile_node_outcomes_total",
        "stile_node_requests_in_flight",
        "stile_node_wal_sync_batch_records_bucket",
        "stile_node_wal_fsync_duration_seconds_bucket",
        "stile_node_wal_fsync_duration_seconds_sum",
        "stile_node_connections",
        "stile_node_sync_mode",
        "stile_gateway_http_request_duration_seconds_bucket",
        "stile_gateway_checkins_total",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
    for q in ["0.5", "0.99", "0.999"] {
        assert!(json.contains(&format!("histogram_quantile({q}, ")), "p{q}");
    }

    // `stile node` on the same data dir serves them too; a metrics address in use is a
    // clear error.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let refused = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            &busy_addr,
            "--data",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let msg = String::from_utf8(refused.stderr).unwrap();
    assert!(
        msg.contains(&format!("stile: cannot serve metrics on {busy_addr}")),
        "{msg}"
    );
    let mut node = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ])
        .arg("--data")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(node.stdout.take().unwrap());
    let found = read_addresses(
        &mut out,
        &[
            "stile node listening on quic://",
            "stile metrics listening on ",
        ],
    );
    let text = rt.block_on(scrape(&found[1]));
    let s = samples(&text);
    assert_eq!(get(&s, "stile_node_sync_mode{mode=\"always\"}"), 1.0);
    assert_eq!(
        get(&s, "stile_node_tickets"),
        0.0,
        "up without --demo mints none"
    );
    sigterm(&node);
    assert!(node.wait().unwrap().success());
}

/// A subscription the client drops (here: its receiver dropped; the same path as one that
/// falls too far behind) is stopped at the node at its next event, not left reading the log
/// for the life of the connection; and one stream runs at most
/// `SUBSCRIPTIONS_PER_STREAM_MAX` of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_the_client_drops_stop_at_the_node() {
    let n = TestNode::start(metrics_on_loopback).await;
    let url = format!(
        "http://{}/metrics",
        n.node.as_ref().unwrap().metrics_addr().unwrap()
    );
    const RUNNING: &str = "stile_node_subscriptions";
    let admin = n.client("admin-admin").await;
    let gate = n.client("gate-1").await;
    let codes = admin.mint(spec(1, 4)).await.unwrap();
    let mut kept = admin.subscribe(0).await.unwrap();
    let dropped = admin.subscribe(0).await.unwrap();
    scrape_until(&url, |s| get(s, RUNNING) == 2.0).await;
    drop(dropped);
    // Its next event finds no receiver: the client asks the node to stop it.
    assert_eq!(
        gate.checkin(&codes[0], 1).await.unwrap().kind,
        OutcomeKind::Admitted
    );
    scrape_until(&url, |s| get(s, RUNNING) == 1.0).await;
    // The other one goes on.
    let events = tokio::time::timeout(Duration::from_secs(10), kept.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(events[0].serial, codes[0].header().serial);

    // At most so many on one stream; the one over gets an error, the others run on.
    let max = stile_node::SUBSCRIPTIONS_PER_STREAM_MAX;
    let mut more = Vec::new();
    for _ in 1..max {
        more.push(admin.subscribe(0).await.unwrap());
    }
    let mut over = admin.subscribe(0).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), over.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&refused, Err(ClientError::Node { message, .. }) if message.contains("unsubscribe one first")),
        "{refused:?}"
    );
    scrape_until(&url, |s| get(s, RUNNING) == max as f64).await;
    n.node.unwrap().shutdown().await;
}
