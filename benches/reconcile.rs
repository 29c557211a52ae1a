//! A gate against a node on loopback: loading a replica of a million tickets, and
//! reconciling 100,000 offline scans (the gate's own upload, window and marks included).
//!
//! `cargo bench --bench reconcile [-- --tickets N --scans N]`. The node runs in process with
//! `--sync always` on a data dir in the working directory's `target/` (a disk, not `/tmp`,
//! which may be memory); the gate's state is beside it. Ids: `gate/replica_load_from_node`,
//! `gate/reconcile_offline_scans`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stile_certs as certs;
use stile_engine::{Engine, EngineConfig, Policy, SyncMode, SystemClock};
use stile_gate::{Gate, GateConfig, Journal, Op, Record, Scan};
use stile_node::{Node, NodeConfig};
use stile_protocol::client::{Client, ClientConfig, ClientTls};
use stile_protocol::OutcomeKind;

mod support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // `cargo bench` passes `--bench`; anything else runs a smoke size.
    let full = std::env::args().any(|a| a == "--bench");
    let tickets = if full {
        support::arg("--tickets", 1_000_000)
    } else {
        20_000
    };
    let scans = if full {
        support::arg("--scans", 100_000)
    } else {
        2_000
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(tickets as usize, scans as usize));
}

async fn run(tickets: usize, scans: usize) {
    std::fs::create_dir_all("target").expect("target dir");
    let dir = tempfile::tempdir_in("target").expect("temp dir");
    let tls = dir.path().join("tls");
    certs::make_dev(&tls).expect("certs");
    let config = EngineConfig {
        sync: SyncMode::Always,
        ..EngineConfig::default()
    };
    let engine =
        Engine::open(&dir.path().join("node"), config, Arc::new(SystemClock)).expect("engine");
    let policy = engine.add_policy(Policy::simple(1)).expect("policy");
    let codes = support::mint(&engine, policy, tickets);
    let node = Node::start(
        Arc::new(engine),
        NodeConfig::new("127.0.0.1:0".parse().expect("addr"), tls.clone()),
    )
    .expect("node");
    let cert = tls.join(certs::gate_cert_name(1));
    let ctls = ClientTls::from_files(
        &tls.join(certs::CA_CERT),
        &cert,
        &certs::key_path_for(&cert),
    )
    .expect("client tls");
    let client_config = ClientConfig::new(node.local_addr(), ctls);
    let client = Client::connect(client_config.clone())
        .await
        .expect("connect");

    let started = Instant::now();
    let replica = stile_gate::load_replica(&client, 1).await.expect("replica");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(replica.len(), tickets);
    println!(
        "gate/replica_load_from_node: {tickets} tickets in {secs:.2} s ({:.0} tickets/s), \
         {:.1} bytes a ticket in memory",
        tickets as f64 / secs,
        replica.memory_bytes() as f64 / replica.len() as f64
    );

    // A gate whose journal holds `scans` offline admits of distinct tickets, its replica
    // current (so it only follows), then started against the node: the time until the
    // node has applied every scan.
    let state = dir.path().join("gate");
    std::fs::create_dir_all(&state).expect("state dir");
    replica
        .save(&Gate::replica_path(&state))
        .expect("save replica");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    {
        // Written on the page cache and synced once: preparation, not measured.
        let path = state.join("journal");
        let mut journal = Journal::open(&path).expect("journal");
        for (i, code) in codes.iter().take(scans).enumerate() {
            journal
                .append_unsynced(Record::Offline(Scan {
                    scan_id: i as u64 + 1,
                    scanned_at_unix_ms: now_ms,
                    last_online_unix_s: now_ms / 1000 - 60,
                    op: Op::Entry,
                    decision: OutcomeKind::Admitted,
                    code: *code,
                }))
                .expect("append");
        }
        journal.sync().expect("sync");
    }
    let started = Instant::now();
    let gate = Gate::open(GateConfig {
        client: client_config,
        gate: 1,
        provider: 1,
        state_dir: state,
        online_timeout: Duration::from_millis(500),
        offline_admits: true,
        max_replica_age: Duration::from_secs(3600),
    })
    .expect("gate");
    let left = gate.drain(Duration::from_secs(600)).await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(left, 0, "every scan uploaded");
    println!(
        "gate/reconcile_offline_scans: {scans} offline admits applied in {secs:.2} s \
         ({:.0} scans/s, the gate's connect included)",
        scans as f64 / secs
    );
    client.close().await;
    node.shutdown().await;
}
