//! The client against real etcd members (started by `stile_cluster::testing`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use stile_cluster::testing::{EtcdProcess, EtcdProcesses};
use stile_cluster::{
    cluster_status, Cmp, Compare, Etcd, EtcdError, MemberInfo, Role, ShardKeys, StatusTable, TxnOp,
    TxnResult, RESPONSE_BYTES_MAX,
};

/// Per-request timeout of the clients under test.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for etcd to expire a lease.
const EXPIRY_BOUND: Duration = Duration::from_secs(15);

fn client(cluster: &EtcdProcesses) -> Etcd {
    Etcd::new(&cluster.endpoints(), TIMEOUT).unwrap()
}

#[tokio::test]
async fn lease_put_get_keep_alive_then_revoke_removes_the_key() {
    let cluster = EtcdProcess::start(1);
    let etcd = client(&cluster);
    let lease = etcd.grant(10).await.unwrap();
    assert_eq!(lease.ttl_s, 10);
    let revision = etcd.put("/t/a", b"value", Some(lease.id)).await.unwrap();
    let kv = etcd.get("/t/a").await.unwrap().expect("the key just put");
    assert_eq!(
        (kv.key.as_str(), kv.value.as_slice()),
        ("/t/a", &b"value"[..])
    );
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.lease),
        (revision, revision, lease.id)
    );
    let left = etcd.keep_alive(lease.id).await.unwrap();
    assert!((1..=10).contains(&left), "{left}");
    assert_eq!(etcd.get("/t/absent").await.unwrap(), None);

    etcd.revoke(lease.id).await.unwrap();
    assert_eq!(etcd.get("/t/a").await.unwrap(), None);
    let gone = |r: Result<_, EtcdError>| matches!(r, Err(EtcdError::LeaseNotFound { lease: l }) if l == lease.id);
    assert!(gone(etcd.keep_alive(lease.id).await.map(|_| ())));
    assert!(gone(etcd.revoke(lease.id).await));
    assert!(gone(
        etcd.put("/t/a", b"v", Some(lease.id)).await.map(|_| ())
    ));
}

#[tokio::test]
async fn a_lease_left_to_expire_takes_its_key() {
    let cluster = EtcdProcess::start(1);
    let etcd = client(&cluster);
    let lease = etcd.grant(1).await.unwrap();
    assert!(
        (1..=2).contains(&lease.ttl_s),
        "etcd's minimum TTL here is 1 s: {lease:?}"
    );
    etcd.put("/t/expiring", b"v", Some(lease.id)).await.unwrap();
    assert!(etcd.get("/t/expiring").await.unwrap().is_some());
    let deadline = Instant::now() + EXPIRY_BOUND;
    while etcd.get("/t/expiring").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the key outlived its lease by {EXPIRY_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(
        etcd.keep_alive(lease.id).await,
        Err(EtcdError::LeaseNotFound { .. })
    ));
}

#[tokio::test]
async fn get_prefix_returns_the_prefix_in_key_order_and_delete_removes() {
    let cluster = EtcdProcess::start(1);
    let etcd = client(&cluster);
    for key in ["/p/b", "/p/a", "/p0", "/o", "/p"] {
        etcd.put(key, key.as_bytes(), None).await.unwrap();
    }
    let keys = |kvs: Vec<stile_cluster::Kv>| kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(
        keys(etcd.get_prefix("/p/").await.unwrap()),
        ["/p/a", "/p/b"]
    );
    etcd.delete("/p/a").await.unwrap();
    etcd.delete("/p/never").await.unwrap();
    assert_eq!(keys(etcd.get_prefix("/p/").await.unwrap()), ["/p/b"]);
    assert!(etcd.get_prefix("/q/").await.unwrap().is_empty());
    let value = vec![0u8, 255, 10, 13];
    etcd.put("/bin", &value, None).await.unwrap();
    assert_eq!(etcd.get("/bin").await.unwrap().unwrap().value, value);
}

/// The campaign of node `me`: take the leader key if nobody holds it and the sync standby
/// is `me`; either way read the leader key back.
async fn campaign(etcd: &Etcd, keys: &ShardKeys, me: &str, lease: i64) -> TxnResult {
    let leader = keys.leader();
    etcd.txn(
        &[
            Compare::CreateRevision(leader.clone(), Cmp::Equal, 0),
            Compare::Value(keys.sync_standby(), Cmp::Equal, me.as_bytes().to_vec()),
        ],
        &[
            TxnOp::Put {
                key: leader.clone(),
                value: me.as_bytes().to_vec(),
                lease: Some(lease),
            },
            TxnOp::Get {
                key: leader.clone(),
            },
        ],
        &[TxnOp::Get { key: leader }],
    )
    .await
    .unwrap()
}

/// A write that holds only while the leader key is the incarnation of `epoch`.
async fn guarded_put(etcd: &Etcd, keys: &ShardKeys, epoch: i64) -> bool {
    let guard = [Compare::CreateRevision(keys.leader(), Cmp::Equal, epoch)];
    let put = [TxnOp::Put {
        key: keys.prefix().to_string() + "data",
        value: vec![1],
        lease: None,
    }];
    etcd.txn(&guard, &put, &[]).await.unwrap().succeeded
}

#[tokio::test]
async fn campaign_txn_elects_one_leader_and_the_epoch_guards_writes() {
    let cluster = EtcdProcess::start(1);
    let etcd = client(&cluster);
    let keys = ShardKeys::new("c1", "s1").unwrap();
    let (l1, l2) = (
        etcd.grant(30).await.unwrap().id,
        etcd.grant(30).await.unwrap().id,
    );
    etcd.put(&keys.sync_standby(), b"n1", None).await.unwrap();

    let won = campaign(&etcd, &keys, "n1", l1).await;
    assert!(won.succeeded);
    let held = &won.gets[0][0];
    assert_eq!((held.value.as_slice(), held.lease), (&b"n1"[..], l1));
    let epoch = held.create_revision;
    assert_eq!(epoch, won.revision, "the put is the txn's one revision");
    assert_eq!(
        etcd.get(&keys.leader())
            .await
            .unwrap()
            .unwrap()
            .create_revision,
        epoch
    );

    assert!(
        !campaign(&etcd, &keys, "n1", l1).await.succeeded,
        "the same txn again fails"
    );
    etcd.put(&keys.sync_standby(), b"n2", None).await.unwrap();
    let lost = campaign(&etcd, &keys, "n2", l2).await;
    assert!(
        !lost.succeeded,
        "n2 is the sync standby but n1 holds the leader key"
    );
    assert_eq!(
        lost.gets[0][0].value, b"n1",
        "the failure branch shows who holds it"
    );
    assert_eq!(lost.gets[0][0].create_revision, epoch);

    assert!(guarded_put(&etcd, &keys, epoch).await);
    etcd.delete(&keys.leader()).await.unwrap();
    let won = campaign(&etcd, &keys, "n2", l2).await;
    assert!(won.succeeded);
    let epoch2 = won.gets[0][0].create_revision;
    assert!(epoch2 > epoch);
    assert!(
        !guarded_put(&etcd, &keys, epoch).await,
        "the old epoch's writes are fenced off"
    );
    assert!(guarded_put(&etcd, &keys, epoch2).await);
}

#[tokio::test]
async fn every_compare_target_and_result_means_what_it_says() {
    let cluster = EtcdProcess::start(1);
    let etcd = client(&cluster);
    let lease = etcd.grant(30).await.unwrap().id;
    let rev = etcd.put("/k", b"v", Some(lease)).await.unwrap();
    let holds = |c: Compare| {
        let etcd = &etcd;
        async move { etcd.txn(&[c], &[], &[]).await.unwrap().succeeded }
    };
    let k = || "/k".to_string();
    assert!(holds(Compare::ModRevision(k(), Cmp::Equal, rev)).await);
    assert!(holds(Compare::ModRevision(k(), Cmp::Greater, rev - 1)).await);
    assert!(!holds(Compare::ModRevision(k(), Cmp::Greater, rev)).await);
    assert!(holds(Compare::ModRevision(k(), Cmp::Less, rev + 1)).await);
    assert!(holds(Compare::CreateRevision(k(), Cmp::NotEqual, 0)).await);
    assert!(holds(Compare::Value(k(), Cmp::Equal, b"v".to_vec())).await);
    assert!(holds(Compare::Value(k(), Cmp::NotEqual, b"w".to_vec())).await);
    assert!(holds(Compare::Value(k(), Cmp::Greater, b"u".to_vec())).await);
    assert!(holds(Compare::Lease(k(), Cmp::Equal, lease)).await);
    assert!(!holds(Compare::Lease(k(), Cmp::NotEqual, lease)).await);
    assert!(holds(Compare::CreateRevision("/absent".into(), Cmp::Equal, 0)).await);
    assert!(!holds(Compare::Value("/absent".into(), Cmp::Equal, Vec::new())).await);

    let r = etcd
        .txn(
            &[],
            &[
                TxnOp::Delete { key: k() },
                TxnOp::Get { key: k() },
                TxnOp::Get { key: "/x".into() },
            ],
            &[],
        )
        .await
        .unwrap();
    assert!(r.succeeded, "no comparison: the success branch runs");
    assert_eq!(r.gets, vec![vec![], vec![]]);
    assert_eq!(etcd.get("/k").await.unwrap(), None);
}

#[tokio::test]
async fn three_members_the_client_survives_a_kill_and_moves_off_a_dead_member() {
    let mut cluster = EtcdProcess::start(3);
    let etcd = client(&cluster);
    etcd.put("/f", b"0", None).await.unwrap();
    let used = cluster.index_of(etcd.current_endpoint()).unwrap();
    let other = (used + 1) % 3;
    cluster.kill(other);
    etcd.put("/f", b"1", None).await.unwrap();
    assert_eq!(etcd.get("/f").await.unwrap().unwrap().value, b"1");

    cluster.start(other);
    cluster.wait_healthy();
    let used = cluster.index_of(etcd.current_endpoint()).unwrap();
    cluster.kill(used);
    etcd.put("/f", b"2", None).await.unwrap();
    let now = cluster.index_of(etcd.current_endpoint()).unwrap();
    assert_ne!(now, used, "the client moved off the member it had used");
    assert!(cluster.members()[now].is_running());
    assert_eq!(etcd.get("/f").await.unwrap().unwrap().value, b"2");

    cluster.stop_all();
    for i in 0..3 {
        cluster.start(i);
    }
    cluster.wait_healthy();
    assert_eq!(
        etcd.get("/f").await.unwrap().unwrap().value,
        b"2",
        "the data outlived stop_all"
    );
}

fn member(name: &str, role: Role, durable_seq: u64, epoch: i64) -> Vec<u8> {
    let addr = format!("10.0.0.{}:4433", name.len());
    MemberInfo {
        name: name.into(),
        addr,
        role,
        durable_seq,
        acked_seq: durable_seq,
        epoch,
    }
    .to_json()
}

#[tokio::test]
async fn cluster_status_groups_two_shards_keys() {
    let cluster = EtcdProcess::start(1);
    let etcd = client(&cluster);
    let (a, b) = (
        ShardKeys::new("prod", "a").unwrap(),
        ShardKeys::new("prod", "b").unwrap(),
    );
    let other = ShardKeys::new("prod2", "a").unwrap();
    etcd.put(&b.leader(), b"nb1", None).await.unwrap();
    let epoch = etcd.put(&a.leader(), b"n1", None).await.unwrap();
    etcd.put(&a.sync_standby(), b"n2", None).await.unwrap();
    etcd.put(
        &a.member("n1").unwrap(),
        &member("n1", Role::Primary, 100, epoch),
        None,
    )
    .await
    .unwrap();
    etcd.put(
        &a.member("n2").unwrap(),
        &member("n2", Role::Standby, 96, epoch),
        None,
    )
    .await
    .unwrap();
    etcd.put(&other.leader(), b"elsewhere", None).await.unwrap();

    let status = cluster_status(&etcd, "prod").await.unwrap();
    assert_eq!(status.len(), 2, "{status:?}");
    let (sa, sb) = (&status[0], &status[1]);
    assert_eq!(
        (sa.shard.as_str(), sa.leader.as_deref(), sa.epoch),
        ("a", Some("n1"), Some(epoch))
    );
    assert_eq!(sa.sync_standby.as_deref(), Some("n2"));
    assert_eq!(sa.members.len(), 2);
    assert_eq!(sa.lag, vec![("n2".to_string(), 4)]);
    assert_eq!(
        (sb.shard.as_str(), sb.leader.as_deref()),
        ("b", Some("nb1"))
    );
    assert!(sb.members.is_empty() && sb.sync_standby.is_none());
    let table = StatusTable(&status).to_string();
    assert!(table.contains(&format!(
        "shard a: leader n1, epoch {epoch}, sync standby n2"
    )));
    assert!(table.contains("shard b: leader nb1"), "{table}");
    assert!(table
        .lines()
        .any(|l| l.contains("n2") && l.contains("standby") && l.ends_with(" 4")));
    assert!(cluster_status(&etcd, "nobody").await.unwrap().is_empty());
}

/// A loopback port with nothing listening (it was free a moment ago).
fn dead_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn nothing_listening_is_a_clear_connection_error_within_the_timeout() {
    let endpoint = dead_endpoint();
    let etcd = Etcd::new(std::slice::from_ref(&endpoint), TIMEOUT).unwrap();
    let start = Instant::now();
    let e = etcd.get("/k").await.unwrap_err();
    assert!(start.elapsed() < TIMEOUT, "refused at once, not timed out");
    assert!(matches!(e, EtcdError::Unreachable { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&endpoint) && text.contains("is etcd running"),
        "{text}"
    );

    let three = Etcd::new(
        &[dead_endpoint(), dead_endpoint(), dead_endpoint()],
        TIMEOUT,
    )
    .unwrap();
    match three.put("/k", b"v", None).await {
        Err(EtcdError::Unavailable(errors)) => assert_eq!(errors.len(), 3),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_endpoint_that_never_answers_times_out() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap(); // accepts in the kernel, never answers
    let endpoint = silent.local_addr().unwrap().to_string();
    let etcd = Etcd::new(&[endpoint], Duration::from_millis(300)).unwrap();
    let e = etcd.get("/k").await.unwrap_err();
    assert!(
        matches!(
            e,
            EtcdError::Timeout {
                timeout_ms: 300,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_transient());
}

/// A one-shot HTTP server on loopback that answers every request with `answer`.
fn fake_server(answer: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head and the (small) body, so closing does not reset the connection.
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_string)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
            }
            let _ = stream.write_all(&answer);
        }
    });
    addr
}

fn http_answer(status: &str, body: &[u8], length: bool) -> Vec<u8> {
    let mut a = format!("HTTP/1.1 {status}\r\nConnection: close\r\n").into_bytes();
    if length {
        a.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    a.extend_from_slice(b"\r\n");
    a.extend_from_slice(body);
    a
}

#[tokio::test]
async fn a_5xx_moves_to_the_next_endpoint_and_an_etcd_refusal_does_not() {
    let cluster = EtcdProcess::start(1);
    let real = cluster.endpoints()[0].clone();
    let broken = fake_server(http_answer("502 Bad Gateway", b"proxy down", true));
    let etcd = Etcd::new(&[broken.to_string(), real.clone()], TIMEOUT).unwrap();
    etcd.put("/k", b"v", None).await.unwrap();
    assert_eq!(etcd.current_endpoint(), real);

    let refusal = br#"{"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3}"#;
    let refusing = fake_server(http_answer("400 Bad Request", refusal, true));
    let etcd = Etcd::new(&[refusing.to_string(), real], TIMEOUT).unwrap();
    match etcd.get("/k").await {
        Err(EtcdError::Server {
            code: 3, message, ..
        }) => assert!(message.contains("not provided")),
        other => panic!("an etcd refusal is final: {other:?}"),
    }
}

#[tokio::test]
async fn an_answer_over_the_bound_is_refused_unread() {
    let body = vec![b' '; RESPONSE_BYTES_MAX + 1];
    for length in [true, false] {
        let big = fake_server(http_answer("200 OK", &body, length));
        let etcd = Etcd::new(&[big.to_string()], TIMEOUT).unwrap();
        let e = etcd.get("/k").await.unwrap_err();
        assert!(
            matches!(e, EtcdError::ResponseTooLarge { .. }),
            "length {length}: {e:?}"
        );
    }
}

#[tokio::test]
async fn garbage_names_and_arguments_are_refused_before_anything_is_sent() {
    for (cluster, shard) in [("a/b", "s"), ("c", "../x"), ("", "s"), ("c", "s p")] {
        let e = ShardKeys::new(cluster, shard).unwrap_err().to_string();
        assert!(e.contains("use 1 to 64 characters"), "{e}");
    }
    assert!(ShardKeys::new("c", "s").unwrap().member("n/1").is_err());
    let etcd = Etcd::new(&[dead_endpoint()], TIMEOUT).unwrap();
    assert!(matches!(
        cluster_status(&etcd, "a/b").await,
        Err(EtcdError::Name(_))
    ));
    assert!(matches!(
        etcd.grant(0).await,
        Err(EtcdError::BadArgument(_))
    ));
    assert!(matches!(etcd.get("").await, Err(EtcdError::BadArgument(_))));
    let https = Etcd::new(&["https://127.0.0.1:2379".to_string()], TIMEOUT).unwrap_err();
    assert!(
        https.to_string().contains("https is not supported"),
        "{https}"
    );
}
