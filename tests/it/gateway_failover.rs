//! The gateway in front of a shard (a primary and its synchronous standby on etcd): routes
//! that name a shard, bookings and check-ins that follow the leader through a failover, and
//! an event cursor kept by shard, so that neither the failover nor a restart that names the
//! shard's nodes in another order reads the log again from 0.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stile_cluster::testing::EtcdProcess;

use crate::failover::spawn_member;
use crate::gateway::{json_of, Fixture};
use crate::node::NodeProcess;
use crate::standby::{metric_reaches, shard_certs};

/// Longest a request may be retried while the shard changes leader.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// A `stile gateway` child serving the data dir `data` (certificates in `data/tls`).
struct GatewayProcess {
    child: NodeProcess,
    base: String,
    token: String,
    http: reqwest::Client,
}

impl GatewayProcess {
    /// Starts `stile gateway --node NODES` on a free port.
    fn spawn(data: &Path, nodes: &str) -> GatewayProcess {
        let mut child = NodeProcess(
            Command::new(env!("CARGO_BIN_EXE_stile"))
                .args([
                    "gateway",
                    "--http",
                    "127.0.0.1:0",
                    "--node",
                    nodes,
                    "--data",
                ])
                .arg(data)
                .env("STILE_LOG", "warn")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let base = loop {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "gateway ended early");
            if let Some(b) = line.trim().strip_prefix("stile gateway listening on ") {
                break b.to_string();
            }
        };
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let token = std::fs::read_to_string(data.join("gateway").join("api-token")).unwrap();
        GatewayProcess {
            child,
            base,
            token: token.trim().to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// A request with `bearer`, and its status and JSON body.
    async fn send(&self, path: &str, bearer: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .json(&body);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        json_of(req.send().await.unwrap()).await
    }

    /// A management `POST`.
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(path, &self.token, body, None).await
    }

    /// A management `GET`.
    async fn get(&self, path: &str) -> Value {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let (s, v) = json_of(res).await;
        assert_eq!(s, 200, "{path}: {v}");
        v
    }

    /// Books `holders` tickets of `event` under `key`, retrying a 503 with the same key as
    /// clients do; the tickets' codes.
    async fn book(&self, key: &str, event: &Value, holders: usize) -> Vec<String> {
        let tickets: Vec<Value> = (0..holders)
            .map(|i| json!({"holder": {"name": format!("Holder {i}")}}))
            .collect();
        let body = json!({"event": event, "payment_ref": key, "tickets": tickets});
        let deadline = Instant::now() + RETRY_FOR;
        let booking = loop {
            let (s, b) = self
                .send("/v1/bookings", &self.token, body.clone(), Some(key))
                .await;
            if s == 503 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            assert!(s == 200 || s == 201, "booking {key}: {s} {b}");
            break b;
        };
        let codes = booking["tickets"].as_array().unwrap();
        codes
            .iter()
            .map(|t| t["code"].as_str().unwrap().to_string())
            .collect()
    }

    /// Checks `code` in with gate token `gate`, retrying a 503 with the scan id it names (so
    /// that a scan the node answered before the answer was lost gets that answer); the
    /// outcome word.
    async fn checkin(&self, gate: &str, code: &str) -> String {
        let deadline = Instant::now() + RETRY_FOR;
        let mut body = json!({"code": code});
        loop {
            let (s, o) = self.send("/v1/checkin", gate, body.clone(), None).await;
            if s == 503 && Instant::now() < deadline {
                body["scan_id"] = o["scan_id"].clone();
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            assert_eq!(s, 200, "check-in of {code}: {o}");
            return o["outcome"].as_str().unwrap().to_string();
        }
    }

    /// Waits (at most a minute) until the gateway has recorded `entries` entries of `event`
    /// from the shard's event stream.
    async fn entries_reach(&self, event: &Value, entries: u64) {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let occ = self.get(&format!("/v1/events/{event}/occupancy")).await;
            if occ["entries"] == entries {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "entries never reached {entries}: {occ}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ticket events the gateway has read from nodes since it started.
    async fn events_read(&self) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("stile_gateway_node_events_total ")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Stops it with SIGTERM; it must exit cleanly.
    fn stop(mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0);
        assert!(self.child.wait().unwrap().success());
    }
}

/// Makes provider `id` (routed to `node` if given) with one event and one HTTP gate: the
/// event's id and the gate's token.
async fn provider_with_gate(gw: &GatewayProcess, id: u16, node: Option<String>) -> (Value, String) {
    let mut provider = json!({"id": id, "name": format!("Provider {id}")});
    if let Some(node) = node {
        provider["node"] = node.into();
    }
    let (s, p) = gw.post("/v1/providers", provider).await;
    assert_eq!(s, 201, "{p}");
    let now = stile_gateway::now_s();
    let (s, ev) = gw
        .post(
            "/v1/events",
            json!({
                "provider": id, "name": "Cup Final", "venue": "Arena",
                "starts_at": stile_gateway::rfc3339(now + 3600),
                "valid_from": stile_gateway::rfc3339(now - 60),
                "valid_until": stile_gateway::rfc3339(now + 86_400),
            }),
        )
        .await;
    assert_eq!(s, 201, "{ev}");
    let (s, g) = gw
        .post(
            &format!("/v1/providers/{id}/gates"),
            json!({"gate": 1, "name": "North 1"}),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    (ev["id"].clone(), g["token"].as_str().unwrap().to_string())
}

/// Regression: the gateway's event cursor was kept by one node's address, so a route that
/// named the shard's nodes in another order read the log again from 0. Keyed by shard, it
/// goes on from where it was, through a failover and a restart alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_given_the_shard_books_and_checks_in_through_a_failover_without_replaying_events()
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let etcd = EtcdProcess::start(1);
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (mut n1, a1, m1) = spawn_member(&dir.path().join("n1"), &tls, "n1", &endpoints, &[]);
    let (_n2, a2, _) = spawn_member(&dir.path().join("n2"), &tls, "n2", &endpoints, &[]);
    metric_reaches(&m1.unwrap(), "stile_node_sync_standby 1").await;

    let gw = GatewayProcess::spawn(dir.path(), &format!("{a1},{a2}"));
    // Provider 1 on the default shard; provider 2 routed to the same shard, its nodes in the
    // other order: one shard, one client, one follower.
    let (ev1, gate1) = provider_with_gate(&gw, 1, None).await;
    let (ev2, gate2) = provider_with_gate(&gw, 2, Some(format!("{a2}, {a1}"))).await;
    let routed = gw.get("/v1/providers").await;
    assert_eq!(routed[1]["node"], format!("{a2},{a1}"), "{routed}");
    let codes = gw.book("before", &ev1, 30).await;
    for code in &codes[..20] {
        assert_eq!(gw.checkin(&gate1, code).await, "admitted");
    }
    gw.entries_reach(&ev1, 20).await;
    let before = gw.events_read().await;
    assert!(before >= 20, "{before} events read");

    n1.kill().unwrap(); // SIGKILL
    n1.wait().unwrap();
    // Once n2 leads, the gateway's clients reach it: a check-in of the default shard's
    // provider, and a booking and check-in of the routed one.
    assert_eq!(gw.checkin(&gate1, &codes[20]).await, "admitted");
    assert_eq!(gw.checkin(&gate1, &codes[0]).await, "already_used");
    let after = gw.book("after", &ev2, 1).await;
    assert_eq!(gw.checkin(&gate2, &after[0]).await, "admitted");
    gw.entries_reach(&ev1, 21).await;
    gw.entries_reach(&ev2, 1).await;
    // The follower went on from its cursor on the new leader: it read the few new events,
    // not the whole log again.
    let read = gw.events_read().await - before;
    assert!(
        (1..before).contains(&read),
        "{read} events read after the failover, {before} before"
    );
    gw.stop();

    // Restarted with the shard's nodes the other way round (n1 still dead): the same shard,
    // and the same cursor.
    let gw = GatewayProcess::spawn(dir.path(), &format!("{a2},{a1}"));
    assert_eq!(gw.checkin(&gate1, &codes[21]).await, "admitted");
    gw.entries_reach(&ev1, 22).await;
    let read = gw.events_read().await;
    assert!(
        (1..before).contains(&read),
        "{read} events read after the restart; {before} were in the log before the failover"
    );
    gw.stop();
}

/// A provider's route may name a shard's nodes; it is shown as given (canonical form) and
/// kept across a restart, and a route that names no shard is refused with 400 saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_names_a_shard_and_bad_routes_are_refused() {
    let mut f = Fixture::start().await;
    let put = |f: &Fixture, id: u16, node: &str| {
        f.admin(reqwest::Method::PUT, &format!("/v1/providers/{id}"))
            .json(&json!({"name": "Rail", "node": node}))
            .send()
    };
    let (s, p) = json_of(put(&f, 2, " 127.0.0.1:7002 ,127.0.0.1:7001").await.unwrap()).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (p["node"].as_str(), p["routed"].as_bool()),
        (Some("127.0.0.1:7002,127.0.0.1:7001"), Some(true)),
        "{p}"
    );
    let bad = [
        ("", "empty part"),
        ("127.0.0.1:7001,", "empty part"),
        ("127.0.0.1:7001,,127.0.0.1:7002", "empty part"),
        ("node-a:7443", "not an address"),
        ("127.0.0.1:7001,127.0.0.1", "not an address"),
        ("127.0.0.1:7001,127.0.0.1:7001", "twice"),
        (
            "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4",
            "at most 3",
        ),
    ];
    for (node, says) in bad {
        let (s, p) = json_of(put(&f, 2, node).await.unwrap()).await;
        assert_eq!(s, 400, "{node:?}: {p}");
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{node:?}: {detail}");
    }
    // Nothing refused was stored: a provider made with a bad route does not exist, and the
    // route set first is still there, across a restart too.
    let res = f
        .admin(reqwest::Method::POST, "/v1/providers")
        .json(&json!({"id": 3, "name": "Bus", "node": "127.0.0.1:7001;127.0.0.1:7002"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    f.restart_gateway(|_| {}).await;
    let (s, list) = f.get("/v1/providers").await;
    assert_eq!(s, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["node"], "127.0.0.1:7002,127.0.0.1:7001");
    // No route: the default node again.
    let res = f
        .admin(reqwest::Method::PUT, "/v1/providers/2")
        .json(&json!({"name": "Rail"}))
        .send()
        .await
        .unwrap();
    let (_, p) = json_of(res).await;
    assert_eq!(
        (p["node"].as_str(), p["routed"].as_bool()),
        (Some(f.node.addr.to_string().as_str()), Some(false)),
        "{p}"
    );
    f.shutdown().await;
}
