//! Shards on etcd: a primary and its synchronous standby, the leader key taken by the
//! standby when the primary dies, nothing acknowledged lost (real etcd, data on /dev/shm).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use stile_cluster::testing::EtcdProcess;
use stile_protocol::client::{Client, ClientError};
use stile_protocol::frame::error_code;
use stile_protocol::OutcomeKind;

use crate::node::{client_config, spec, NodeProcess};
use crate::standby::{all_used, load, metric_reaches, shard_certs, spawn, wait_for_admits};

/// A free loopback port (a cluster node advertises the address it listens on).
pub(crate) fn free_addr() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// `stile node` NAME of shard `s1` of cluster `c` on etcd at `etcd`.
pub(crate) fn spawn_member(
    data: &Path,
    tls: &Path,
    name: &str,
    etcd: &str,
    extra: &[&str],
) -> (NodeProcess, SocketAddr, Option<String>) {
    let addr = free_addr().to_string();
    let mut args = vec![
        "--name",
        name,
        "--etcd",
        etcd,
        "--cluster",
        "c",
        "--shard",
        "s1",
        "--lease",
        "2s",
        "--advertise",
        &addr,
        "--metrics",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--listen", &addr]);
    spawn(data, tls, &args)
}

/// Checks in `code` at `addr` as gate `gate` with scan id `scan`, waiting up to `wait`: this
/// node's own answer, not the leader's it would send the gate to.
async fn own_answer(
    tls: &Path,
    addr: SocketAddr,
    gate: &str,
    code: &stile_protocol::CodeBytes,
    scan: u64,
    wait: Duration,
) -> Result<stile_protocol::Outcome, ClientError> {
    let mut config = client_config(tls, addr, gate);
    config.request_timeout = wait;
    config.follow_leader = false;
    Client::connect(config).await?.checkin(code, scan).await
}

/// Checks in `code` at `addr` until the node admits rather than answering `not_leader` or
/// not at all (at most 60 s).
async fn admits_eventually(tls: &Path, addr: SocketAddr, code: &stile_protocol::CodeBytes) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match own_answer(tls, addr, "gate-2", code, 77, Duration::from_secs(2)).await {
            Ok(o) => {
                assert_eq!(o.kind, OutcomeKind::Admitted);
                return;
            }
            Err(ClientError::Node { code, .. }) => assert_eq!(code, error_code::NOT_LEADER),
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "the standby never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_when_the_primary_is_killed_and_holds_every_answered_admit() {
    let etcd = EtcdProcess::start(1);
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (mut n1, a1, m1) = spawn_member(&dir.path().join("n1"), &tls, "n1", &endpoints, &[]);
    let admin = Client::connect(client_config(&tls, a1, "admin-admin"))
        .await
        .unwrap();
    let codes = admin.mint(spec(1, 6000)).await.unwrap();
    drop(admin);
    let (_n2, a2, _) = spawn_member(&dir.path().join("n2"), &tls, "n2", &endpoints, &[]);
    metric_reaches(&m1.unwrap(), "stile_node_sync_standby 1").await;

    let mut config = client_config(&tls, a1, "gate-1");
    config.request_timeout = Duration::from_secs(2);
    let gate = Client::connect(config).await.unwrap();
    let (admitted, task) = load(gate, codes[1..].to_vec());
    wait_for_admits(&admitted, 1500).await;
    n1.kill().unwrap(); // SIGKILL
    n1.wait().unwrap();
    task.abort();
    let acked: Vec<usize> = admitted.lock().unwrap().iter().map(|i| i + 1).collect();

    // The standby takes the leader key once the primary's lease runs out, and admits.
    admits_eventually(&tls, a2, &codes[0]).await;
    all_used(&tls, a2, &codes, &acked).await;
    // A gate given both nodes, the dead one first, reaches the new leader.
    let mut both = client_config(&tls, a1, "gate-2");
    both.nodes = vec![a1, a2];
    let both = Client::connect(both).await.unwrap();
    let fresh = codes.len() - 1;
    assert!(!acked.contains(&fresh));
    let o = both.checkin(&codes[fresh], 1).await.unwrap();
    assert_eq!(o.kind, OutcomeKind::Admitted, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_paused_past_its_lease_answers_nothing_as_leader_once_resumed() {
    let etcd = EtcdProcess::start(1);
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (mut n1, a1, m1) = spawn_member(&dir.path().join("n1"), &tls, "n1", &endpoints, &[]);
    let admin = Client::connect(client_config(&tls, a1, "admin-admin"))
        .await
        .unwrap();
    let codes = admin.mint(spec(1, 10)).await.unwrap();
    drop(admin);
    let (_n2, a2, m2) = spawn_member(&dir.path().join("n2"), &tls, "n2", &endpoints, &[]);
    metric_reaches(&m1.unwrap(), "stile_node_sync_standby 1").await;
    let gate = Client::connect(client_config(&tls, a1, "gate-1"))
        .await
        .unwrap();
    assert_eq!(
        gate.checkin(&codes[1], 1).await.unwrap().kind,
        OutcomeKind::Admitted
    );

    // SAFETY: kill(2) with our own child's pid and a valid signal number.
    assert_eq!(unsafe { libc::kill(n1.id() as i32, libc::SIGSTOP) }, 0);
    admits_eventually(&tls, a2, &codes[0]).await;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(n1.id() as i32, libc::SIGCONT) }, 0);
    // Resumed, the old primary admits nothing: its answers need the standby, which leads
    // now, and it steps down once it sees so.
    let late = own_answer(&tls, a1, "gate-1", &codes[2], 2, Duration::from_secs(5)).await;
    assert!(
        !matches!(&late, Ok(o) if o.kind == OutcomeKind::Admitted),
        "the old primary admitted: {late:?}"
    );
    // No ticket admitted twice: the new leader refuses what the old one admitted.
    let check = Client::connect(client_config(&tls, a2, "gate-2"))
        .await
        .unwrap();
    assert_eq!(
        check.checkin(&codes[1], 9).await.unwrap().kind,
        OutcomeKind::AlreadyUsed
    );
    // The old primary starts again as a standby of the new leader (set aside and seeded
    // afresh if its log went past the leader's), and is named its synchronous standby.
    metric_reaches(&m2.unwrap(), "stile_node_sync_standby 1").await;
    assert!(n1.try_wait().unwrap().is_none(), "the old primary rejoined");
    let o = own_answer(&tls, a1, "gate-1", &codes[3], 3, Duration::from_secs(10)).await;
    assert!(
        matches!(&o, Err(ClientError::Node { code, message }) if *code == error_code::NOT_LEADER && *message == a2.to_string()),
        "{o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_a_name_already_in_the_shard_is_refused() {
    let etcd = EtcdProcess::start(1);
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (_n1, _, _) = spawn_member(&dir.path().join("n1"), &tls, "n1", &endpoints, &[]);
    // The same name (and certificate) on another data dir: it would acknowledge for the
    // first, and could take over without its changes.
    let addr = free_addr().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "node",
            "--name",
            "n1",
            "--etcd",
            &endpoints,
            "--cluster",
            "c",
            "--shard",
        ])
        .args(["s1", "--lease", "2s", "--listen", &addr, "--data"])
        .arg(dir.path().join("again"))
        .arg("--tls")
        .arg(&tls)
        .env("STILE_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another node named n1"), "{stderr}");
}

/// Admits `codes` one after another at `addr` (each must be admitted) for `how_long`;
/// returns how many.
async fn admits_throughout(
    tls: &Path,
    addr: SocketAddr,
    codes: &[stile_protocol::CodeBytes],
    how_long: Duration,
) -> usize {
    let gate = Client::connect(client_config(tls, addr, "gate-1"))
        .await
        .unwrap();
    let end = Instant::now() + how_long;
    let mut n = 0;
    while Instant::now() < end && n < codes.len() {
        let o = gate.checkin(&codes[n], n as u64).await.unwrap();
        assert_eq!(o.kind, OutcomeKind::Admitted, "code {n}: {o:?}");
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_with_its_standby_answers_through_an_etcd_outage_and_one_member_of_three_lost() {
    let mut etcd = EtcdProcess::start(3);
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (_n1, a1, m1) = spawn_member(&dir.path().join("n1"), &tls, "n1", &endpoints, &[]);
    let m1 = m1.unwrap();
    let admin = Client::connect(client_config(&tls, a1, "admin-admin"))
        .await
        .unwrap();
    let codes = admin.mint(spec(1, 2000)).await.unwrap();
    drop(admin);
    let (_n2, _, _) = spawn_member(&dir.path().join("n2"), &tls, "n2", &endpoints, &[]);
    metric_reaches(&m1, "stile_node_sync_standby 1").await;

    // One member of three killed: nothing changes, for three leases and more.
    etcd.kill(0);
    let n = admits_throughout(&tls, a1, &codes[..1000], Duration::from_secs(7)).await;
    assert!(n > 50, "{n} admits");
    metric_reaches(&m1, "stile_node_leading 1").await;

    // etcd gone altogether: the primary whose standby acknowledges answers on, well past
    // its lease (nothing is answered without the node that could take over).
    etcd.stop_all();
    let more = admits_throughout(&tls, a1, &codes[1000..], Duration::from_secs(7)).await;
    assert!(more > 50, "{more} admits");
    metric_reaches(&m1, "stile_node_leading 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_one_takes_over_a_shard_without_a_synchronous_standby_until_an_operator_forces_it() {
    let etcd = EtcdProcess::start(1);
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    let (mut n1, a1, m1) = spawn_member(&dir.path().join("n1"), &tls, "n1", &endpoints, &[]);
    let m1 = m1.unwrap();
    let admin = Client::connect(client_config(&tls, a1, "admin-admin"))
        .await
        .unwrap();
    let codes = admin.mint(spec(1, 10)).await.unwrap();
    drop(admin);
    let (mut n2, _, _) = spawn_member(&dir.path().join("n2"), &tls, "n2", &endpoints, &[]);
    metric_reaches(&m1, "stile_node_sync_standby 1").await;
    // The standby goes: the primary clears its name and answers alone.
    n2.kill().unwrap();
    n2.wait().unwrap();
    let gate = Client::connect(client_config(&tls, a1, "gate-1"))
        .await
        .unwrap();
    assert_eq!(
        gate.checkin(&codes[1], 1).await.unwrap().kind,
        OutcomeKind::Admitted
    );
    assert_eq!(
        gate.checkin(&codes[4], 2).await.unwrap().kind,
        OutcomeKind::Admitted
    );
    metric_reaches(&m1, "stile_node_sync_standby 0").await;
    n1.kill().unwrap();
    n1.wait().unwrap();
    let (_n2, a2, _) = spawn_member(&dir.path().join("n2"), &tls, "n2", &endpoints, &[]);
    // The standby may lack the admit answered alone: it does not take over by itself.
    let mut asking = client_config(&tls, a2, "gate-2");
    asking.follow_leader = false;
    asking.request_timeout = Duration::from_secs(2);
    let standby = Client::connect(asking).await.unwrap();
    for _ in 0..20 {
        match standby.checkin(&codes[0], 5).await {
            Err(ClientError::Node { code, .. }) => assert_eq!(code, error_code::NOT_LEADER),
            other => panic!("took over without being named: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The operator forces it, accepting the loss.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "cluster",
            "promote",
            "--force",
            "--etcd",
            &endpoints,
            "--cluster",
            "c",
        ])
        .args(["--shard", "s1", "--name", "n2", "--lease", "2s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARNING"));
    admits_eventually(&tls, a2, &codes[0]).await;
    let check = Client::connect(client_config(&tls, a2, "gate-2"))
        .await
        .unwrap();
    assert_eq!(
        check.checkin(&codes[2], 2).await.unwrap().kind,
        OutcomeKind::Admitted,
        "a ticket the old primary never saw"
    );

    // The old primary, started again on its data, rejoins as a standby of the new leader:
    // its log goes past the leader's history, so it is set aside and the node seeded
    // afresh; what it admitted alone is applied on the leader as offline admits of its
    // gate (codes[1]), and a ticket admitted on both makes a conflict (codes[4]).
    assert_eq!(
        check.checkin(&codes[4], 4).await.unwrap().kind,
        OutcomeKind::Admitted,
        "the forced leader lacks the old primary's admit"
    );
    let (mut again, a1, _) = spawn_member(&dir.path().join("n1"), &tls, "n1", &endpoints, &[]);
    let aside = dir.path().join("n1/diverged");
    let deadline = Instant::now() + Duration::from_secs(60);
    let taken = loop {
        let found: Vec<_> = std::fs::read_dir(&aside)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        if let Some(t) = found.iter().find(|p| p.join("taken").exists()) {
            assert_eq!(found.len(), 1, "{found:?}");
            break t.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the old primary's changes were never taken"
        );
        assert!(
            again.try_wait().unwrap().is_none(),
            "the old primary stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = std::fs::read_to_string(taken.join("suffix.txt")).unwrap();
    assert_eq!(text.matches("State").count(), 2, "{text}");
    let o = check.checkin(&codes[1], 10).await.unwrap();
    assert_eq!(o.kind, OutcomeKind::AlreadyUsed, "{o:?}");
    assert_eq!(o.gate, 1, "admitted at gate 1 on the old primary: {o:?}");
    let admin = Client::connect(client_config(&tls, a2, "admin-admin"))
        .await
        .unwrap();
    let (conflicts, _) = admin.conflicts(None, 0).await.unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].code, codes[4]);
    assert_eq!(conflicts[0].second.gate, 1, "{conflicts:?}");
    // It runs on as a standby: the leader's, not its own answers.
    let o = own_answer(&tls, a1, "gate-1", &codes[3], 3, Duration::from_secs(10)).await;
    assert!(
        matches!(&o, Err(ClientError::Node { code, .. }) if *code == error_code::NOT_LEADER),
        "{o:?}"
    );
    assert!(
        again.try_wait().unwrap().is_none(),
        "it runs on as a standby"
    );
}

/// `stile cluster promote --force` with the given shard and name, against `endpoints`.
fn promote(endpoints: &str, shard: &str, name: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["cluster", "promote", "--force", "--etcd", endpoints])
        .args([
            "--cluster",
            "c",
            "--shard",
            shard,
            "--name",
            name,
            "--lease",
            "1s",
        ])
        .output()
        .unwrap()
}

/// A mistyped name (or shard) once revoked the leader's lease and named a node that does
/// not exist, leaving no node that may take over; and a promote whose wait saw the
/// synchronous standby take over overwrote the name that leader had written, so that a
/// node lacking changes could later take over from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_names_only_a_registered_node_and_only_while_no_one_leads() {
    use stile_cluster::{Etcd, ShardKeys};
    let etcd = EtcdProcess::start(1);
    let endpoints = etcd.endpoints().join(",");
    let client = Etcd::new(&etcd.endpoints(), Duration::from_secs(2)).unwrap();
    let keys = ShardKeys::new("c", "s1").unwrap();
    let lease = client.grant(30).await.unwrap();
    client
        .put(&keys.leader(), b"n1", Some(lease.id))
        .await
        .unwrap();
    client.put(&keys.sync_standby(), b"", None).await.unwrap();
    client
        .put(&keys.member("n2").unwrap(), b"{}", None)
        .await
        .unwrap();

    for (shard, name) in [("s1", "n9"), ("s9", "n2")] {
        let out = promote(&endpoints, shard, name);
        assert!(!out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("no node named {name}")), "{err}");
    }
    assert!(
        client.keep_alive(lease.id).await.is_ok(),
        "the lease lives on"
    );
    let out = promote(&endpoints, "s1", "n1");
    assert!(!out.status.success(), "the leader itself: {out:?}");
    assert!(client
        .get("/stile/c/shards/s9/sync_standby")
        .await
        .unwrap()
        .is_none());

    // The leader key taken again while promote waits: nothing is named.
    let taker = {
        let (client, key) = (
            Etcd::new(&etcd.endpoints(), Duration::from_secs(2)).unwrap(),
            keys.leader(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            client.put(&key, b"n3", None).await.unwrap();
        })
    };
    let out = tokio::task::spawn_blocking(move || promote(&endpoints, "s1", "n2"))
        .await
        .unwrap();
    taker.await.unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("n3 took over"));
    let sync = client.get(&keys.sync_standby()).await.unwrap().unwrap();
    assert_eq!(sync.value, b"", "the name stays the leader's");
}

/// A node started while etcd cannot be reached (as one that steps down for losing etcd
/// starts again at once to rejoin) once exited at its first registration; it waits for etcd
/// and joins its shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_etcd_is_down_joins_once_it_is_back() {
    let mut etcd = EtcdProcess::start(1);
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    shard_certs(&tls);
    etcd.kill(0);
    let node = {
        let (data, tls) = (dir.path().join("n1"), tls.clone());
        tokio::task::spawn_blocking(move || spawn_member(&data, &tls, "n1", &endpoints, &[]))
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.start(0);
    let (_n1, a1, _) = node.await.unwrap();
    let admin = Client::connect(client_config(&tls, a1, "admin-admin"))
        .await
        .unwrap();
    let codes = admin.mint(spec(1, 1)).await.unwrap();
    admits_eventually(&tls, a1, &codes[0]).await;
}
