//! Bookings per second through the gateway's HTTP API: a node (`sync always`) and a gateway
//! in this process, CONNS clients each posting bookings of 4 tickets (free seating, one
//! event, with an Idempotency-Key each) for SECONDS. Every booking is durable before its
//! answer: the node fsyncs the mint, SQLite (WAL, synchronous = FULL) the booking.
//!
//! `cargo bench --bench bookings` (env: STILE_BENCH_SECONDS, default 10; STILE_BENCH_CONNS,
//! default 16; STILE_BENCH_CAPACITY=1 gives the event a capacity, which serialises its
//! bookings).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use stile_certs as certs;
use stile_engine::{Engine, EngineConfig, SyncMode, SystemClock};
use stile_gateway::{Gateway, GatewayConfig};
use stile_node::{Node, NodeConfig};
use stile_protocol::client::ClientTls;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; a filter that does not name us skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !"bookings".contains(&a))
    {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let seconds = env_u64("STILE_BENCH_SECONDS", 10);
    let conns = env_u64("STILE_BENCH_CONNS", 16);
    let capacity = env_u64("STILE_BENCH_CAPACITY", 0) != 0;
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    certs::init(&tls).unwrap();
    certs::issue_node(&tls, &["127.0.0.1".into()]).unwrap();
    certs::issue_admin(&tls, "admin").unwrap();
    let engine = Engine::open(
        &dir.path().join("data"),
        EngineConfig {
            sync: SyncMode::Always,
            ..EngineConfig::default()
        },
        Arc::new(SystemClock),
    )
    .unwrap();
    let node = Node::start(
        Arc::new(engine),
        NodeConfig::new("127.0.0.1:0".parse().unwrap(), tls.clone()),
    )
    .unwrap();
    let cert = tls.join(certs::admin_cert_name("admin"));
    let ctls = ClientTls::from_files(
        &tls.join(certs::CA_CERT),
        &cert,
        &certs::key_path_for(&cert),
    )
    .unwrap();
    let config = GatewayConfig::new(
        dir.path().join("gateway"),
        "127.0.0.1:0".parse().unwrap(),
        node.local_addr(),
        ctls,
    );
    let gateway = Gateway::start(config).await.unwrap();
    let base = format!("http://{}", gateway.local_addr());
    let token = gateway.api_token().to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conns as usize)
        .build()
        .unwrap();
    let post = |path: &str| http.post(format!("{base}{path}")).bearer_auth(&token);
    post("/v1/providers")
        .json(&json!({"id": 1, "name": "p"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let now = stile_gateway::now_s();
    let mut ev = json!({"provider": 1, "name": "Bench", "venue": "Arena", "starts_at": stile_gateway::rfc3339(now + 3600)});
    if capacity {
        ev["capacity"] = json!(100_000_000u64);
    }
    let ev: serde_json::Value = post("/v1/events")
        .json(&ev)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event = ev["id"].as_i64().unwrap();

    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let end = start + warmup + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (http, base, token, done, errors) = (
            http.clone(),
            base.clone(),
            token.clone(),
            done.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let tickets: Vec<_> = (0..4)
                .map(|i| json!({"holder": {"name": format!("Fan {i}")}}))
                .collect();
            let body = json!({"event": event, "payment_ref": "bench", "tickets": tickets});
            let mut i = 0u64;
            while Instant::now() < end {
                i += 1;
                let t0 = Instant::now();
                let res = http
                    .post(format!("{base}/v1/bookings"))
                    .bearer_auth(&token)
                    .header("idempotency-key", format!("bench-{c}-{i}"))
                    .json(&body)
                    .send()
                    .await;
                let ok = matches!(&res, Ok(r) if r.status() == 201);
                if let Ok(r) = res {
                    let _ = r.bytes().await;
                }
                if t0 >= start + warmup {
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                        hist.record(t0.elapsed().as_micros() as u64).unwrap();
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        hist.add(t.await.unwrap()).unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    let rate = n as f64 / seconds as f64;
    println!(
        "gateway/bookings: {conns} connections, 4 tickets each, durable, capacity {}: {rate:.0} bookings/s \
         ({:.0} tickets/s), p50 {:.2} ms, p99 {:.2} ms, errors {}",
        if capacity { "checked" } else { "none" },
        rate * 4.0,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        errors.load(Ordering::Relaxed)
    );
    gateway.shutdown(Duration::from_secs(5)).await;
    node.shutdown().await;
}
