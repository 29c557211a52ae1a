//! How much of a node's loopback throughput the transport alone allows: the same G
//! connections with N requests in flight each, closed loop, against
//!
//! - a bare QUIC echo server (quinn with the node's TLS and transport settings, echoing every
//!   byte of a 34-byte check-in frame back; no engine, no log): the floor of the transport;
//! - a node with `--sync none` and with `--sync always`, answering real check-ins.
//!
//! `cargo bench --bench transport [-- --gates G --inflight N --secs S]` (default 64 x 1, 5 s
//! each after 1 s of warm-up). Client and servers run in one process on separate runtimes, so
//! the three figures share every cost but the server's work and are comparable with each
//! other, not with the load tester's (two processes). `cargo test --benches` runs a smoke
//! size.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use stile_certs as certs;
use stile_engine::{Engine, EngineConfig, Policy, SyncMode, SystemClock};
use stile_node::{Node, NodeConfig};
use stile_protocol::client::{
    bind_addr_for, connect_raw_on, raw_endpoint_on, ClientConfig, ClientTls,
};
use stile_protocol::frame::{split_frame, RawCode, Request, ALPN};
use stile_protocol::udp;
use stile_protocol::CodeBytes;

mod support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Whether `--only NAME` (echo, none or always) lets this figure run (all do without it).
fn wanted(name: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--only") {
        Some(i) => args.get(i + 1).is_some_and(|v| v == name),
        None => true,
    }
}

/// What one run measures.
struct Shape {
    gates: usize,
    inflight: usize,
    warmup: Duration,
    measure: Duration,
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let shape = Shape {
        gates: support::arg("--gates", 64) as usize,
        inflight: support::arg("--inflight", 1) as usize,
        warmup: Duration::from_secs(if bench { 1 } else { 0 }),
        measure: if bench {
            Duration::from_secs(support::arg("--secs", 5))
        } else {
            Duration::from_millis(300)
        },
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    certs::init(&tls).expect("CA");
    certs::issue_node(&tls, &["127.0.0.1".into()]).expect("node cert");
    let servers = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("server")
        .build()
        .expect("server runtime");
    let clients = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("client")
        .build()
        .expect("client runtime");
    let gate_certs: Vec<_> = (1..=shape.gates as u16)
        .map(|g| certs::issue_gate(&tls, g, 1).expect("gate cert"))
        .collect();
    let client_tls: Vec<ClientTls> = gate_certs
        .iter()
        .map(|c| {
            ClientTls::from_files(&tls.join(certs::CA_CERT), c, &certs::key_path_for(c))
                .expect("client tls")
        })
        .collect();

    let mut figures = Vec::new();
    if wanted("echo") {
        let (addr, stop) = servers.block_on(echo_server(&tls));
        let rate = clients.block_on(drive(addr, &client_tls, &shape, None));
        stop.store(true, Ordering::Relaxed);
        figures.push(("echo", rate));
    }
    for sync in [SyncMode::None, SyncMode::Always] {
        if !wanted(sync.name()) {
            continue;
        }
        let data = dir.path().join(format!("data-{}", sync.name()));
        let engine = Engine::open(
            &data,
            EngineConfig {
                sync,
                ..EngineConfig::default()
            },
            Arc::new(SystemClock),
        )
        .expect("engine");
        let policy = engine.add_policy(Policy::simple(1)).expect("policy");
        // Enough for 200 k/s over the whole run; a code is never presented twice.
        let want = (200_000.0 * (shape.warmup + shape.measure).as_secs_f64()) as usize + 1024;
        let codes = support::mint(&engine, policy, want);
        let node = servers
            .block_on(async {
                Node::start(
                    Arc::new(engine),
                    NodeConfig::new("127.0.0.1:0".parse().expect("addr"), tls.clone()),
                )
            })
            .expect("node");
        let rate = clients.block_on(drive(
            node.local_addr(),
            &client_tls,
            &shape,
            Some(Arc::new(codes)),
        ));
        servers.block_on(node.shutdown());
        figures.push((sync.name(), rate));
    }
    let echo = figures.iter().find(|f| f.0 == "echo").map(|f| f.1);
    for (name, rate) in &figures {
        let id = if *name == "echo" {
            "transport/echo".to_string()
        } else {
            format!("transport/checkin_sync_{name}")
        };
        let of_echo = echo.map_or(String::new(), |e| format!("  ({:.2} of echo)", rate / e));
        println!(
            "{id:<32} {} gates x {} in flight: {rate:>9.0} requests/s{of_echo}",
            shape.gates, shape.inflight,
        );
    }
}

/// A QUIC server with the node's TLS and transport settings that echoes every stream.
async fn echo_server(tls: &Path) -> (SocketAddr, Arc<AtomicBool>) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls.join(certs::CA_CERT)).expect("CA") {
        roots.add(c.expect("CA cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let chain = CertificateDer::pem_file_iter(tls.join(certs::NODE_CERT))
        .expect("node cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("node cert");
    let key = PrivateKeyDer::from_pem_file(tls.join(certs::NODE_KEY)).expect("node key");
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server TLS");
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).expect("QUIC TLS");
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // As the node sets them (node/src/tls.rs).
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(stile_node::STREAMS_PER_CONNECTION_MAX.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.stream_receive_window((4u32 << 20).into());
    transport.send_window(8 << 20);
    config.transport_config(Arc::new(transport));
    let (socket, _) = udp::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .expect("endpoint");
    let addr = endpoint.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            if stopped.load(Ordering::Relaxed) {
                break;
            }
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        while let Ok(Some(chunk)) = recv.read_chunk(1 << 16, true).await {
                            if send.write_all(&chunk.bytes).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        }
    });
    (addr, stop)
}

/// Drives `tls.len()` connections, `inflight` requests each, and returns the requests
/// answered per second after the warm-up. With `codes`, every request is a check-in of a
/// code not presented before; without, a check-in frame of a made-up code (for the echo).
async fn drive(
    addr: SocketAddr,
    tls: &[ClientTls],
    shape: &Shape,
    codes: Option<Arc<Vec<CodeBytes>>>,
) -> f64 {
    let (socket, _) = udp::bind(bind_addr_for(addr)).expect("client socket");
    let first = ClientConfig::new(addr, tls[0].clone());
    let endpoint = raw_endpoint_on(socket, &first).expect("endpoint");
    let mut links = Vec::with_capacity(tls.len());
    for t in tls {
        let config = ClientConfig::new(addr, t.clone());
        links.push(connect_raw_on(&endpoint, &config).await.expect("connect"));
    }
    let answered = Arc::new(AtomicU64::new(0));
    let next_code = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + shape.warmup + shape.measure;
    let mut gates = Vec::new();
    for (conn, mut send, mut recv) in links {
        let (answered, next_code, codes) = (answered.clone(), next_code.clone(), codes.clone());
        let inflight = shape.inflight;
        gates.push(tokio::spawn(async move {
            let _conn = conn;
            let frame = |out: &mut Vec<u8>, id: u32| {
                let code = match &codes {
                    Some(c) => {
                        let i = next_code.fetch_add(1, Ordering::Relaxed) as usize;
                        RawCode::from(*c.get(i).expect("enough codes minted"))
                    }
                    None => RawCode::new(&[1u8; 20]).expect("1 to 21 bytes"),
                };
                Request::Checkin {
                    scan_id: u64::from(id),
                    code,
                }
                .encode(id, out);
            };
            let mut out = Vec::with_capacity(64 * inflight);
            let mut id = 0u32;
            for _ in 0..inflight {
                frame(&mut out, id);
                id += 1;
            }
            send.write_all(&out).await.expect("write");
            let mut buf = BytesMut::with_capacity(1 << 16);
            while Instant::now() < end {
                match tokio::time::timeout(Duration::from_secs(10), recv.read_chunk(1 << 16, true))
                    .await
                {
                    Ok(Ok(Some(c))) => buf.extend_from_slice(&c.bytes),
                    other => panic!("the server stopped answering: {other:?}"),
                }
                out.clear();
                while let Some((len, _)) = split_frame(&buf).expect("good frames") {
                    buf.advance(len);
                    answered.fetch_add(1, Ordering::Relaxed);
                    frame(&mut out, id);
                    id = id.wrapping_add(1);
                }
                if !out.is_empty() {
                    send.write_all(&out).await.expect("write");
                }
            }
            let stats = _conn.stats();
            (stats.udp_tx.datagrams, stats.udp_rx.datagrams)
        }));
    }
    tokio::time::sleep_until((start + shape.warmup).into()).await;
    let before = answered.load(Ordering::Relaxed);
    let measured = Instant::now();
    let (mut sent, mut received) = (0, 0);
    for g in gates {
        let (s, r) = g.await.expect("gate task");
        sent += s;
        received += r;
    }
    let secs = measured.elapsed().as_secs_f64();
    let n = answered.load(Ordering::Relaxed) - before;
    let all = answered.load(Ordering::Relaxed).max(1) as f64;
    println!(
        "  datagrams per request: {:.2} sent, {:.2} received",
        sent as f64 / all,
        received as f64 / all
    );
    n as f64 / secs
}
