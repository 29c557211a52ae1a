//! Loopback throughput of one node: check-ins per second over one QUIC connection with a
//! fixed number of requests in flight, for sync `none` and `always`.
//!
//! `cargo bench --bench node [-- --count N --inflight N]`. The driver writes frames itself
//! (no per-request task or channel), so the figure is the node's and the transport's, not
//! the convenience client's. Every code is distinct and genuine: each answer is an admit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use stile_certs as certs;
use stile_engine::{Engine, EngineConfig, Policy, SyncMode, SystemClock};
use stile_node::{Node, NodeConfig};
use stile_protocol::client::{connect_raw, ClientConfig, ClientTls};
use stile_protocol::frame::{split_frame, RawCode, Request, Response};
use stile_protocol::OutcomeKind;

mod support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let count = support::arg("--count", 2_000_000);
    let inflight = support::arg("--inflight", 1024);
    // `cargo bench` passes `--bench`; `cargo test --benches` would not: run a smoke size then.
    let count = if std::env::args().any(|a| a == "--bench") {
        count
    } else {
        20_000
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for sync in [SyncMode::None, SyncMode::Always] {
        let (rate, secs) = runtime.block_on(run(sync, count, inflight as usize));
        println!(
            "node/loopback_checkin sync={:<6} inflight={inflight}: {:>10.0} check-ins/s \
             ({count} in {secs:.2} s, one connection)",
            sync.name(),
            rate
        );
    }
}

async fn run(sync: SyncMode, count: u64, inflight: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    certs::init(&tls).expect("CA");
    certs::issue_node(&tls, &["127.0.0.1".into()]).expect("node cert");
    let gate = certs::issue_gate(&tls, 1, 1).expect("gate cert");
    let config = EngineConfig {
        sync,
        ..EngineConfig::default()
    };
    let engine =
        Engine::open(&dir.path().join("data"), config, Arc::new(SystemClock)).expect("engine");
    let policy = engine.add_policy(Policy::simple(1)).expect("policy");
    let codes = support::mint(&engine, policy, count as usize);
    let node = Node::start(
        Arc::new(engine),
        NodeConfig::new("127.0.0.1:0".parse().expect("addr"), tls.clone()),
    )
    .expect("node");
    let ctls = ClientTls::from_files(
        &tls.join(certs::CA_CERT),
        &gate,
        &certs::key_path_for(&gate),
    )
    .expect("client tls");
    let (_endpoint, _conn, mut send, mut recv) =
        connect_raw(&ClientConfig::new(node.local_addr(), ctls))
            .await
            .expect("connect");

    let room = Arc::new(tokio::sync::Semaphore::new(inflight));
    let admitted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let reader = {
        let (room, admitted) = (room.clone(), admitted.clone());
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(1 << 20);
            let mut answered = 0u64;
            while answered < count {
                match recv.read_chunk(1 << 20, true).await {
                    Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
                    _ => panic!("node stopped answering after {answered}"),
                }
                let mut n = 0;
                while let Some((len, body)) = split_frame(&buf).expect("good frames") {
                    if let Ok((_, Response::Outcome(o))) = Response::decode(body) {
                        if o.kind == OutcomeKind::Admitted {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    buf.advance(len);
                    n += 1;
                }
                answered += n;
                room.add_permits(n as usize);
            }
        })
    };
    let mut out = Vec::with_capacity(64 * 1024);
    let mut sent = 0usize;
    while sent < codes.len() {
        let n = room
            .available_permits()
            .clamp(1, 256)
            .min(codes.len() - sent);
        room.acquire_many(n as u32).await.expect("open").forget();
        out.clear();
        for (i, code) in codes[sent..sent + n].iter().enumerate() {
            let req = Request::Checkin {
                scan_id: (sent + i) as u64,
                code: RawCode::from(*code),
            };
            req.encode((sent + i) as u32, &mut out);
        }
        send.write_all(&out).await.expect("write");
        sent += n;
    }
    tokio::time::timeout(Duration::from_secs(600), reader)
        .await
        .expect("answers within 10 minutes")
        .expect("reader");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        admitted.load(Ordering::Relaxed),
        count,
        "every check-in admitted"
    );
    node.shutdown().await;
    (count as f64 / secs, secs)
}
