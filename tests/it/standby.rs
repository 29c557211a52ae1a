//! A shard's synchronous standby (`stile node --standby-of`): seeded from its primary,
//! following its log, answering gates `not_leader`, holding every admit the primary
//! answered when the primary is killed, and released from when it stops acknowledging.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stile_certs as certs;
use stile_protocol::client::{Client, ClientError};
use stile_protocol::frame::error_code;
use stile_protocol::{CodeBytes, OutcomeKind};

use crate::node::{client_config, make_certs, spec, NodeProcess};

/// A `stile node` child with `extra` options; its QUIC address and, if it serves them, its
/// metrics URL.
pub(crate) fn spawn(
    data: &Path,
    tls: &Path,
    extra: &[&str],
) -> (NodeProcess, SocketAddr, Option<String>) {
    use std::io::BufRead;
    let mut child = NodeProcess(
        Command::new(env!("CARGO_BIN_EXE_stile"))
            .args(["node", "--sync", "always"])
            .args(match extra.contains(&"--listen") {
                true => &[][..],
                false => &["--listen", "127.0.0.1:0"][..],
            })
            .args(extra)
            .arg("--data")
            .arg(data)
            .arg("--tls")
            .arg(tls)
            .env("STILE_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut addr, mut metrics) = (None, None);
    let wants_metrics = extra.contains(&"--metrics");
    while addr.is_none() || (wants_metrics && metrics.is_none()) {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "node ended early");
        if let Some(a) = line.trim().strip_prefix("stile node listening on quic://") {
            addr = Some(a.parse().unwrap());
        }
        if let Some(m) = line.trim().strip_prefix("stile metrics listening on ") {
            metrics = Some(m.to_string());
        }
    }
    // Later lines go nowhere, and the node never blocks on them.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, addr.unwrap(), metrics)
}

/// Certificates for gates, the admin and nodes `n1` and `n2`.
pub(crate) fn shard_certs(tls: &Path) {
    make_certs(tls);
    for name in ["n1", "n2"] {
        certs::issue_node_named(tls, &["127.0.0.1".into()], Some(name)).unwrap();
    }
}

/// Waits (at most 60 s) until the node's metrics say `series value`.
pub(crate) async fn metric_reaches(url: &str, line: &str) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(url).await {
            let text = r.text().await.unwrap_or_default();
            if text.lines().any(|l| l == line) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never said {line}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks in `codes` through `gate` with 64 in flight until `enough` admits were answered
/// (or 20 s passed); returns the indexes of the answered admits (so far, while it runs).
pub(crate) fn load(
    gate: Client,
    codes: Vec<CodeBytes>,
) -> (Arc<Mutex<Vec<usize>>>, tokio::task::JoinHandle<()>) {
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let task = {
        let admitted = admitted.clone();
        tokio::spawn(async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(64));
            for (i, c) in codes.into_iter().enumerate() {
                let Ok(permit) = sem.clone().acquire_owned().await else {
                    return;
                };
                let (gate, admitted) = (gate.clone(), admitted.clone());
                tokio::spawn(async move {
                    if let Ok(o) = gate.checkin(&c, i as u64).await {
                        if o.kind == OutcomeKind::Admitted {
                            admitted.lock().unwrap().push(i);
                        }
                    }
                    drop(permit);
                });
            }
        })
    };
    (admitted, task)
}

pub(crate) async fn wait_for_admits(admitted: &Mutex<Vec<usize>>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while admitted.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "load stalled at {:?}",
            admitted.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The standby n2, stopped and started alone on its data dir `sdata`, holds every admit
/// in `acked` (`already_used`, by gate 1).
async fn holds_every_one(
    mut standby: NodeProcess,
    sdata: &Path,
    tls: &Path,
    codes: &[CodeBytes],
    acked: &[usize],
) {
    crate::support::sigterm(&standby);
    assert!(standby.wait().unwrap().success());
    let (_alone, addr, _) = spawn(sdata, tls, &["--name", "n2"]);
    all_used(tls, addr, codes, acked).await;
}

/// Every admit in `acked` reads `already_used` (by gate 1) on the node at `addr`.
pub(crate) async fn all_used(tls: &Path, addr: SocketAddr, codes: &[CodeBytes], acked: &[usize]) {
    let checker = Client::connect(client_config(tls, addr, "gate-2"))
        .await
        .unwrap();
    for &i in acked {
        let o = checker
            .checkin(&codes[i], 1_000_000 + i as u64)
            .await
            .unwrap();
        assert_eq!((o.kind, o.gate), (OutcomeKind::AlreadyUsed, 1), "code {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_holds_every_admit_its_primary_answered_when_the_primary_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (pdata, sdata) = (dir.path().join("p"), dir.path().join("s"));
    let (mut primary, paddr, metrics) =
        spawn(&pdata, &tls, &["--name", "n1", "--metrics", "127.0.0.1:0"]);
    let metrics = metrics.unwrap();
    let admin = Client::connect(client_config(&tls, paddr, "admin-admin"))
        .await
        .unwrap();
    let codes = admin.mint(spec(1, 6000)).await.unwrap();
    drop(admin);
    let (standby, saddr, _) = spawn(
        &sdata,
        &tls,
        &["--name", "n2", "--standby-of", &paddr.to_string()],
    );
    metric_reaches(&metrics, "stile_node_sync_standby 1").await;

    // The standby answers gates, and a node certificate nothing but replication.
    let mut asking = client_config(&tls, saddr, "gate-1");
    asking.follow_leader = false;
    let at_standby = Client::connect(asking).await.unwrap();
    match at_standby.checkin(&codes[0], 1).await {
        Err(ClientError::Node { code, message }) => {
            assert_eq!((code, message), (error_code::NOT_LEADER, paddr.to_string()))
        }
        other => panic!("a standby answered {other:?}"),
    }
    let as_node = async {
        let client = Client::connect(client_config(&tls, paddr, "node-n2")).await?;
        client.checkin(&codes[0], 1).await
    };
    match as_node.await {
        Err(ClientError::Node { code, .. }) => assert_eq!(code, error_code::FORBIDDEN),
        other => panic!("a node certificate checked in: {other:?}"),
    }

    let mut config = client_config(&tls, paddr, "gate-1");
    config.request_timeout = Duration::from_secs(2);
    let gate = Client::connect(config).await.unwrap();
    let (admitted, task) = load(gate, codes[1..].to_vec());
    wait_for_admits(&admitted, 1500).await;
    primary.kill().unwrap(); // SIGKILL
    primary.wait().unwrap();
    task.abort();
    let acked: Vec<usize> = admitted.lock().unwrap().iter().map(|i| i + 1).collect();

    holds_every_one(standby, &sdata, &tls, &codes, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_answers_alone_when_its_standby_dies_and_the_restarted_standby_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (pdata, sdata) = (dir.path().join("p"), dir.path().join("s"));
    let (mut primary, paddr, metrics) =
        spawn(&pdata, &tls, &["--name", "n1", "--metrics", "127.0.0.1:0"]);
    let metrics = metrics.unwrap();
    let admin = Client::connect(client_config(&tls, paddr, "admin-admin"))
        .await
        .unwrap();
    let codes = admin.mint(spec(1, 4000)).await.unwrap();
    let standby_args = ["--name", "n2", "--standby-of", &paddr.to_string()];
    let (mut standby, _, _) = spawn(&sdata, &tls, &standby_args);
    metric_reaches(&metrics, "stile_node_sync_standby 1").await;

    let mut config = client_config(&tls, paddr, "gate-1");
    config.request_timeout = Duration::from_secs(5);
    let gate = Client::connect(config).await.unwrap();
    let (admitted, task) = load(gate.clone(), codes[..2000].to_vec());
    wait_for_admits(&admitted, 300).await;
    standby.kill().unwrap();
    standby.wait().unwrap();
    // Answers stop waiting for it: the rest of the load is admitted by the primary alone.
    metric_reaches(&metrics, "stile_node_sync_standby 0").await;
    task.await.unwrap();
    wait_for_admits(&admitted, 2000).await;

    // Restarted, it catches up from its own log and is named again; later admits wait for it.
    let (standby, _, _) = spawn(&sdata, &tls, &standby_args);
    metric_reaches(&metrics, "stile_node_sync_standby 1").await;
    let (later, task) = load(gate, codes[2000..].to_vec());
    wait_for_admits(&later, 1000).await;
    primary.kill().unwrap();
    primary.wait().unwrap();
    task.abort();
    let mut acked: Vec<usize> = admitted.lock().unwrap().clone();
    acked.extend(later.lock().unwrap().iter().map(|i| i + 2000));
    holds_every_one(standby, &sdata, &tls, &codes, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_wait_for_the_synchronous_standby_until_it_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (pdata, sdata) = (dir.path().join("p"), dir.path().join("s"));
    let (_primary, paddr, metrics) = spawn(
        &pdata,
        &tls,
        &[
            "--name",
            "n1",
            "--metrics",
            "127.0.0.1:0",
            "--standby-timeout",
            "10m",
        ],
    );
    let metrics = metrics.unwrap();
    let admin = Client::connect(client_config(&tls, paddr, "admin-admin"))
        .await
        .unwrap();
    let codes = admin.mint(spec(1, 2)).await.unwrap();
    let (standby, _, _) = spawn(
        &sdata,
        &tls,
        &["--name", "n2", "--standby-of", &paddr.to_string()],
    );
    metric_reaches(&metrics, "stile_node_sync_standby 1").await;
    let gate = Client::connect(client_config(&tls, paddr, "gate-1"))
        .await
        .unwrap();
    assert_eq!(
        gate.checkin(&codes[0], 1).await.unwrap().kind,
        OutcomeKind::Admitted
    );
    // SAFETY: kill(2) with our own child's pid and a valid signal number.
    assert_eq!(unsafe { libc::kill(standby.id() as i32, libc::SIGSTOP) }, 0);
    let pending = {
        let (gate, code) = (gate.clone(), codes[1]);
        tokio::spawn(async move { gate.checkin(&code, 2).await })
    };
    // Durable on the primary, and not answered while the standby cannot acknowledge it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!pending.is_finished(), "answered without the standby");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(standby.id() as i32, libc::SIGCONT) }, 0);
    let o = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("answered once the standby acknowledged")
        .unwrap()
        .unwrap();
    assert_eq!(o.kind, OutcomeKind::Admitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_the_shards_nodes_is_sent_by_the_standby_to_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (pdata, sdata) = (dir.path().join("p"), dir.path().join("s"));
    let (_primary, paddr, _) = spawn(&pdata, &tls, &["--name", "n1"]);
    let (_standby, saddr, _) = spawn(
        &sdata,
        &tls,
        &["--name", "n2", "--standby-of", &paddr.to_string()],
    );
    // The standby first: its `not_leader` names the primary, where the request goes. Even a
    // mint, which is never sent twice: the standby did nothing with it.
    let mut admin = client_config(&tls, saddr, "admin-admin");
    admin.nodes = vec![saddr, paddr];
    let admin = Client::connect(admin).await.unwrap();
    let codes = admin.mint(spec(1, 3)).await.unwrap();
    assert_eq!(codes.len(), 3);
    let mut gate = client_config(&tls, saddr, "gate-1");
    gate.nodes = vec![saddr, paddr];
    let gate = Client::connect(gate).await.unwrap();
    assert_eq!(
        gate.checkin(&codes[0], 1).await.unwrap().kind,
        OutcomeKind::Admitted
    );
    assert_eq!(
        gate.checkin(&codes[0], 2).await.unwrap().kind,
        OutcomeKind::AlreadyUsed
    );
}

/// A UDP relay on loopback between a standby and its primary, which a test can cut (drop
/// every datagram) and mend.
struct Relay {
    addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let up = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        up.connect(to).await.unwrap();
        let addr = sock.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let cut = cut.clone();
            tokio::spawn(async move {
                let peer: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
                let back = {
                    let (sock, up, cut, peer) =
                        (sock.clone(), up.clone(), cut.clone(), peer.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok(n) = up.recv(&mut buf).await {
                            let to = *peer.lock().unwrap();
                            if let (Some(to), false) =
                                (to, cut.load(std::sync::atomic::Ordering::Relaxed))
                            {
                                let _ = sock.send_to(&buf[..n], to).await;
                            }
                        }
                    })
                };
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                    *peer.lock().unwrap() = Some(from);
                    if !cut.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = up.send(&buf[..n]).await;
                    }
                }
                back.abort();
            })
        };
        Relay { addr, cut, task }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_replication_link_leaves_the_primary_answering_alone_until_the_standby_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (pdata, sdata) = (dir.path().join("p"), dir.path().join("s"));
    let (mut primary, paddr, metrics) =
        spawn(&pdata, &tls, &["--name", "n1", "--metrics", "127.0.0.1:0"]);
    let metrics = metrics.unwrap();
    let relay = Relay::start(paddr).await;
    let admin = Client::connect(client_config(&tls, paddr, "admin-admin"))
        .await
        .unwrap();
    let codes = admin.mint(spec(1, 3000)).await.unwrap();
    let (standby, _, _) = spawn(
        &sdata,
        &tls,
        &["--name", "n2", "--standby-of", &relay.addr.to_string()],
    );
    metric_reaches(&metrics, "stile_node_sync_standby 1").await;
    let mut config = client_config(&tls, paddr, "gate-1");
    config.request_timeout = Duration::from_secs(5);
    let gate = Client::connect(config).await.unwrap();
    relay.set_cut(true);
    // Cut off, the standby acknowledges nothing: the primary drops it and answers alone.
    let (admitted, task) = load(gate.clone(), codes[..1000].to_vec());
    metric_reaches(&metrics, "stile_node_sync_standby 0").await;
    task.await.unwrap();
    wait_for_admits(&admitted, 1000).await;
    // Mended: the standby catches up and is named again; later admits wait for it, and a
    // failover loses none of them.
    relay.set_cut(false);
    metric_reaches(&metrics, "stile_node_sync_standby 1").await;
    let (later, task) = load(gate, codes[1000..].to_vec());
    wait_for_admits(&later, 1000).await;
    primary.kill().unwrap();
    primary.wait().unwrap();
    task.abort();
    let mut acked: Vec<usize> = admitted.lock().unwrap().clone();
    acked.extend(later.lock().unwrap().iter().map(|i| i + 1000));
    holds_every_one(standby, &sdata, &tls, &codes, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_given_the_shard_books_through_the_standby_at_its_primary() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (pdata, sdata) = (dir.path().join("p"), dir.path().join("s"));
    let (_primary, paddr, _) = spawn(&pdata, &tls, &["--name", "n1"]);
    let (_standby, saddr, _) = spawn(
        &sdata,
        &tls,
        &["--name", "n2", "--standby-of", &paddr.to_string()],
    );
    // The standby named first: the gateway's client is sent on to the primary.
    let mut config = stile_gateway::GatewayConfig::new(
        dir.path().join("gw"),
        "127.0.0.1:0".parse().unwrap(),
        saddr,
        crate::gateway::admin_tls(&tls),
    );
    config.node_shard = vec![saddr, paddr];
    let gateway = stile_gateway::Gateway::start(config).await.unwrap();
    let (base, token) = (
        format!("http://{}", gateway.local_addr()),
        gateway.api_token().to_string(),
    );
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let r = post(
        "/v1/providers",
        serde_json::json!({"id": 1, "name": "Arena"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let now = stile_gateway::now_s();
    let r = post(
        "/v1/events",
        serde_json::json!({
            "provider": 1, "name": "Cup Final", "venue": "Arena",
            "starts_at": stile_gateway::rfc3339(now + 3600),
            "valid_from": stile_gateway::rfc3339(now - 60),
            "valid_until": stile_gateway::rfc3339(now + 86_400),
        }),
    )
    .await
    .unwrap();
    let ev: serde_json::Value = r.json().await.unwrap();
    // A client retries a 503 with its idempotency key, as the API documents: the first try
    // may meet the gateway's client moving from the standby to the primary.
    let mut tries = 0;
    let booking = loop {
        let r = http
            .post(format!("{base}/v1/bookings"))
            .bearer_auth(&token)
            .header("idempotency-key", "k1")
            .json(&serde_json::json!({"event": ev["id"], "payment_ref": "p",
                "tickets": [{"holder": {"name": "Ada"}}]}))
            .send()
            .await
            .unwrap();
        tries += 1;
        if r.status() == 503 && tries < 5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        break r;
    };
    assert_eq!(booking.status(), 201, "after {tries} tries");
    let b: serde_json::Value = booking.json().await.unwrap();
    let code = stile_protocol::CodeBytes::parse(b["tickets"][0]["code"].as_str().unwrap()).unwrap();
    // Minted on the primary: a gate there admits it.
    let gate = Client::connect(client_config(&tls, paddr, "gate-1"))
        .await
        .unwrap();
    assert_eq!(
        gate.checkin(&code, 1).await.unwrap().kind,
        OutcomeKind::Admitted
    );
    gateway.shutdown(Duration::from_secs(5)).await;
}
