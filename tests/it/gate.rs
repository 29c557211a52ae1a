//! `stile gate`: online while the node answers, offline from the gate's replica when it is
//! killed, every offline decision in the journal.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use stile_gate::{fingerprint, Entry, Journal, Policy, Record, Replica};
use stile_protocol::{CodeBytes, OutcomeKind};

use crate::node::node_with_codes;

/// A replica of `codes` (single-entry tickets of provider 1, never scanned), current now.
fn write_replica(state: &Path, codes: &[CodeBytes]) {
    let mut r = Replica::new(1);
    r.synced_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let p = r
        .policy_index(Policy {
            max_entries: 1,
            ..Policy::default()
        })
        .unwrap();
    for c in codes {
        let h = c.header();
        r.upsert(Entry {
            fingerprint: fingerprint(c),
            serial: h.serial,
            partition: h.partition,
            policy: p,
            last_gate: 0,
            entries: 0,
            flags: 0,
            first_scan: 0,
            last_at: 0,
        });
    }
    std::fs::create_dir_all(state).unwrap();
    r.save(&Gate::replica_path(state)).unwrap();
}

use stile_gate::Gate;

/// A running `stile gate`: lines in, lines out.
struct GateProcess {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl GateProcess {
    fn start(data: &Path, addr: std::net::SocketAddr, state: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stile"))
            .arg("gate")
            .arg("--data")
            .arg(data)
            .args(["--node", &addr.to_string()])
            .arg("--state")
            .arg(state)
            .args(["--online-timeout", "300ms"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        GateProcess {
            child,
            stdin,
            stdout,
        }
    }

    /// Scans `code` and returns the gate's line, split at tabs.
    fn scan(&mut self, code: &str) -> Vec<String> {
        writeln!(self.stdin, "{code}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "no whole line: {line:?}");
        line.trim_end().split('\t').map(str::to_string).collect()
    }

    /// Closes stdin and returns what the gate said on stderr; it must exit 0.
    fn finish(self) -> String {
        let (code, stderr) = self.finish_with_status();
        assert_eq!(code, Some(0), "{stderr}");
        stderr
    }

    /// Closes stdin and returns the exit code and what the gate said on stderr.
    fn finish_with_status(self) -> (Option<i32>, String) {
        drop(self.stdin);
        let out = self.child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Scans a code of no ticket until the gate answers online.
    fn wait_online(&mut self, like: &CodeBytes) {
        let mut nothing = like.as_bytes().to_vec();
        nothing[9] = nothing[9].wrapping_add(50);
        let nothing = CodeBytes::from_slice(&nothing).unwrap().to_text();
        for _ in 0..200 {
            if self.scan(nothing.as_str())[3] == "online" {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the gate never went online");
    }
}

#[test]
fn a_gate_admits_online_then_offline_from_its_replica_when_the_node_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let tls = data.join("tls");
    let (mut node, addr, codes, texts) = node_with_codes(&data.join("node"), &tls, 6);
    let state = data.join("gate-state");
    write_replica(&state, &codes);

    let metrics_addr = free_port();
    let metrics_arg = metrics_addr.to_string();
    let mut gate = GateProcess::start(
        data,
        addr,
        &state,
        &["--drain-timeout", "1s", "--metrics", &metrics_arg],
    );
    // Until the gate has reached the node, its scans are decided offline: wait with a code
    // of no ticket.
    let mut nothing = codes[4].as_bytes().to_vec();
    nothing[9] = nothing[9].wrapping_add(50);
    let nothing = CodeBytes::from_slice(&nothing).unwrap().to_text();
    for _ in 0..100 {
        if gate.scan(nothing.as_str())[3] == "online" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = gate.scan(&texts[0]);
    assert_eq!(
        first[1..],
        ["admitted".to_string(), "entries 1".into(), "online".into()]
    );
    let online_code = first[0].clone();
    let again = gate.scan(&online_code);
    assert_eq!(
        (again[1].as_str(), again[3].as_str()),
        ("already_used", "online")
    );
    assert!(again[2].starts_with("by gate 1 at "), "{again:?}");

    node.kill().unwrap();
    node.wait().unwrap();

    // Offline: a fresh ticket admitted, once; the one admitted online refused, since the gate
    // learned of its own online admit; a forged copy and an unknown serial refused.
    let fresh = &texts[1];
    let got = gate.scan(fresh);
    assert_eq!(
        got[1..],
        ["admitted".to_string(), "entries 1".into(), "offline".into()]
    );
    let got = gate.scan(fresh);
    assert_eq!(got[1], "already_used", "{got:?}");
    assert!(got[2].starts_with("by gate 1 at "), "{got:?}");
    assert_eq!(got[3], "offline");
    let got = gate.scan(&online_code);
    assert_eq!(
        (got[1].as_str(), got[3].as_str()),
        ("already_used", "offline")
    );
    let mut forged = codes[2].as_bytes().to_vec();
    *forged.last_mut().unwrap() ^= 1;
    let forged = CodeBytes::from_slice(&forged).unwrap();
    let got = gate.scan(forged.to_text().as_str());
    assert_eq!((got[1].as_str(), got[3].as_str()), ("forged", "offline"));
    let mut unknown = codes[2].as_bytes().to_vec();
    unknown[9] = unknown[9].wrapping_add(100);
    let got = gate.scan(CodeBytes::from_slice(&unknown).unwrap().to_text().as_str());
    assert_eq!(got[1], "unknown", "{got:?}");
    // Not a code at all: forged, no network.
    assert_eq!(gate.scan("HELLO")[1], "forged");
    // The gate's metrics say it is offline, with one offline admit waiting for upload.
    let m = http_get(metrics_addr, "/metrics");
    for line in [
        "stile_gate_online 0",
        "stile_gate_answers_total{mode=\"offline\",outcome=\"admitted\"} 1",
        "stile_gate_answers_total{mode=\"online\",outcome=\"admitted\"} 1",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} in\n{m}");
    }
    let pending: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("stile_gate_pending_uploads "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(pending >= 5, "{m}");
    // The node stays dead: the journal cannot be uploaded, and the gate says so.
    let (code, stderr) = gate.finish_with_status();
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("stile gate: OFFLINE"), "{stderr}");
    assert!(
        stderr.contains("offline scans are not uploaded yet"),
        "{stderr}"
    );

    // Everything decided offline is in the journal, synced: a restarted gate reads it back.
    let journal = Journal::open(&state.join("journal")).unwrap();
    let decisions: Vec<OutcomeKind> = journal
        .scans()
        .iter()
        .filter_map(|r| match r {
            Record::Offline(s) => Some(s.decision),
            _ => None,
        })
        .collect();
    assert!(
        decisions.ends_with(&[
            OutcomeKind::Admitted,
            OutcomeKind::AlreadyUsed,
            OutcomeKind::AlreadyUsed,
            OutcomeKind::Forged,
            OutcomeKind::Unknown,
        ]),
        "{decisions:?}"
    );
    // Each offline scan kept its own scan id.
    let mut ids: Vec<u64> = journal
        .scans()
        .iter()
        .map(|r| match r {
            Record::Offline(s) | Record::LateOnline(s) => s.scan_id,
            Record::Uploaded { .. } => 0,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), journal.scans().len());
}

#[test]
fn a_gate_without_a_replica_or_allowed_offline_refuses_to_decide() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let tls = data.join("tls");
    let (mut node, addr, codes, texts) = node_with_codes(&data.join("node"), &tls, 2);
    node.kill().unwrap();
    node.wait().unwrap();
    // No replica: refused, with the reason, as JSON.
    let state = data.join("bare");
    let mut gate = GateProcess::start(data, addr, &state, &["--json"]);
    writeln!(gate.stdin, "{}", texts[0]).unwrap();
    let mut line = String::new();
    gate.stdout.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["outcome"], "refused", "{v}");
    assert_eq!(v["mode"], "offline", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("no replica"), "{v}");
    gate.finish();
    // Offline decisions turned off: refused even with a replica.
    let state = data.join("off");
    write_replica(&state, &codes);
    let mut gate = GateProcess::start(data, addr, &state, &["--no-offline"]);
    let got = gate.scan(&texts[0]);
    assert_eq!(got[1], "refused", "{got:?}");
    assert!(got[2].contains("offline decisions are off"), "{got:?}");
    gate.finish();
    // A replica older than allowed: refused, saying how old.
    let state = data.join("old");
    write_replica(&state, &codes);
    let mut r = Replica::load(&Gate::replica_path(&state)).unwrap().unwrap();
    r.synced_unix_s -= 7200;
    r.save(&Gate::replica_path(&state)).unwrap();
    let mut gate = GateProcess::start(data, addr, &state, &["--max-replica-age", "1h"]);
    let got = gate.scan(&texts[0]);
    assert_eq!(got[1], "refused", "{got:?}");
    assert!(got[2].contains("older than"), "{got:?}");
    gate.finish();
}

/// A loopback address with a port free a moment ago.
fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The body of a plain HTTP GET.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// `stile conflicts --json` against the node, one JSON value a conflict.
fn conflicts(data: &Path, addr: std::net::SocketAddr) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["conflicts", "--json", "--node", &addr.to_string()])
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until a gate has saved the replica it loaded from the node.
fn wait_replica(state: &Path, tickets: usize) {
    for _ in 0..200 {
        if let Ok(Some(r)) = Replica::load(&Gate::replica_path(state)) {
            if r.len() >= tickets {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no replica of {tickets} tickets in {}", state.display());
}

/// Two gates load their replicas from the node; the node is killed (SIGKILL) and both keep
/// deciding offline: every valid ticket admitted, a forged code and a ticket used before the
/// outage refused. Two tickets are presented at both gates (the planted duplicates); one gate
/// is killed (SIGKILL) in its offline period and started again. Once the node is back, both
/// upload their journals: every offline admit is on the node, once, and the conflicts are
/// exactly the two planted duplicates.
#[test]
fn after_an_outage_the_uploads_apply_once_and_the_conflicts_are_the_planted_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let tls = data.join("tls");
    let node_data = data.join("node");
    let (mut node, addr, codes, texts) = node_with_codes(&node_data, &tls, 8);
    let (state_a, state_b) = (data.join("gate-a"), data.join("gate-b"));
    let gate_b_cert = [
        "--cert",
        tls.join("gate-2.crt").to_str().unwrap(),
        "--key",
        tls.join("gate-2.key").to_str().unwrap(),
    ]
    .map(str::to_string);
    let b_args: Vec<&str> = gate_b_cert.iter().map(String::as_str).collect();
    let mut a = GateProcess::start(data, addr, &state_a, &[]);
    let mut b = GateProcess::start(data, addr, &state_b, &b_args);
    a.wait_online(&codes[0]);
    b.wait_online(&codes[0]);
    // Used before the outage, online at gate A.
    assert_eq!(a.scan(&texts[0])[1..], ["admitted", "entries 1", "online"]);
    wait_replica(&state_a, 8);
    wait_replica(&state_b, 8);
    // Gate B learns of A's admit through its replica's changes before the outage.
    std::thread::sleep(Duration::from_millis(500));
    node.kill().unwrap();
    node.wait().unwrap();

    // Offline at A: 1..=5 admitted; 0 refused (used before); a forged copy refused.
    for t in &texts[1..=5] {
        let got = a.scan(t);
        assert_eq!(got[1..], ["admitted", "entries 1", "offline"], "{got:?}");
    }
    assert_eq!(a.scan(&texts[0])[1], "already_used");
    let mut forged = codes[6].as_bytes().to_vec();
    *forged.last_mut().unwrap() ^= 1;
    let forged = CodeBytes::from_slice(&forged).unwrap().to_text();
    assert_eq!(a.scan(forged.as_str())[1..], ["forged", "", "offline"]);
    // Offline at B: 1 and 2 again (the planted duplicates: B cannot know), 6 fresh; 0 was
    // used before the outage and B's replica says so.
    for t in [&texts[1], &texts[2], &texts[6]] {
        let got = b.scan(t);
        assert_eq!(got[1..], ["admitted", "entries 1", "offline"], "{got:?}");
    }
    assert_eq!(b.scan(&texts[0])[1], "already_used");
    // B loses power mid-outage; its journal holds every offline admit.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let journal = Journal::open(&state_b.join("journal")).unwrap();
    let admits = journal
        .scans()
        .iter()
        .filter(|r| matches!(r, Record::Offline(s) if s.decision == OutcomeKind::Admitted))
        .count();
    assert_eq!(admits, 3);
    drop(journal);

    // The node comes back on the same address; B starts again; both hand over their scans.
    let (_node, again) = crate::node::spawn_node_on(&node_data, &tls, addr, &[]);
    assert_eq!(again, addr);
    // A copy of B's journal as it was before any upload, to upload it all again later.
    std::fs::copy(state_b.join("journal"), data.join("journal-b")).unwrap();
    let b = GateProcess::start(data, addr, &state_b, &b_args);
    a.finish();
    b.finish();
    for state in [&state_a, &state_b] {
        let j = Journal::open(&state.join("journal")).unwrap();
        assert_eq!(j.pending().len(), 0, "{} uploaded", state.display());
    }

    let found = conflicts(data, addr);
    let mut dup: Vec<(String, String)> = found
        .iter()
        .map(|c| {
            (
                c["code"].as_str().unwrap().into(),
                c["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    dup.sort();
    let mut want = vec![
        (texts[1].clone(), "double_entry".to_string()),
        (texts[2].clone(), "double_entry".to_string()),
    ];
    want.sort();
    assert_eq!(dup, want, "{found:?}");
    for c in &found {
        let gates = [c["first"]["gate"].as_u64(), c["second"]["gate"].as_u64()];
        assert!(gates.contains(&Some(1)) && gates.contains(&Some(2)), "{c}");
    }
    // Every offline admit is on the node: each of 1..=6 is used now.
    let out = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["status", "--node", &addr.to_string()])
        .arg("--data")
        .arg(data)
        .args(&texts[1..=6])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");
    for line in text.lines() {
        assert_eq!(line.split('\t').nth(1), Some("used"), "{line}");
    }
    // A journal uploaded again whole changes nothing: the node's upload marks hold.
    std::fs::copy(data.join("journal-b"), state_b.join("journal")).unwrap();
    assert_eq!(
        Journal::open(&state_b.join("journal"))
            .unwrap()
            .pending()
            .len(),
        4
    );
    let b = GateProcess::start(data, addr, &state_b, &b_args);
    b.finish();
    assert_eq!(conflicts(data, addr).len(), 2);
}

/// The replica and upload ops are a gate's, for its own provider only: an admin is refused
/// them, a gate of another provider gets none of the tickets and its uploads of them apply
/// nothing; an upload is recorded under the uploading gate's own id (from its certificate),
/// so no gate can upload scans as another. A follow streams mints with their fingerprints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_and_upload_ops_serve_a_gate_its_own_provider_only() {
    use stile_protocol::frame::{error_code, OfflineScan, ReplicaItem};
    let n = crate::node::TestNode::start(|_| {}).await;
    let admin = n.client("admin-admin").await;
    let own = n.client("gate-1").await;
    let other = n.client("gate-3").await; // provider 2
    let codes = admin.mint(crate::node::spec(1, 5)).await.unwrap();

    // An admin is no gate.
    let refused = admin.replica_page(None, 100).await.unwrap_err();
    assert!(
        matches!(refused, stile_protocol::client::ClientError::Node { code, .. } if code == error_code::FORBIDDEN),
        "{refused}"
    );
    let scan = |code: &CodeBytes, scan_id| {
        OfflineScan::new(code, scan_id, 1, 0, false, OutcomeKind::Admitted)
    };
    assert!(admin.checkin_offline(&scan(&codes[0], 1)).await.is_err());

    // Another provider's gate: no tickets, and its upload applies nothing.
    let page = other.replica_page(None, 100).await.unwrap();
    assert!(!page
        .items
        .iter()
        .any(|i| matches!(i, ReplicaItem::Ticket { .. })));
    let o = other.checkin_offline(&scan(&codes[0], 1)).await.unwrap();
    assert_eq!(o.kind, OutcomeKind::WrongProvider);
    assert_eq!(
        own.status(&codes[0]).await.unwrap().state,
        stile_protocol::frame::TicketStateName::Valid
    );

    // The provider's gate: every ticket, each with its code's fingerprint.
    let page = own.replica_page(None, 100).await.unwrap();
    let fingerprints: Vec<u64> = page
        .items
        .iter()
        .filter_map(|i| match i {
            ReplicaItem::Ticket { fingerprint, .. } => Some(*fingerprint),
            _ => None,
        })
        .collect();
    let want: Vec<u64> = codes.iter().map(fingerprint).collect();
    assert_eq!(fingerprints, want);
    // Its upload is recorded as its own: gate 1 on the ticket.
    let o = own.checkin_offline(&scan(&codes[0], 7)).await.unwrap();
    assert_eq!((o.kind, o.gate), (OutcomeKind::Admitted, 1));

    // Another gate's offline admit of that ticket is a conflict, which subscribers see.
    let mut events = admin.subscribe(0).await.unwrap();
    let gate2 = n.client("gate-2").await;
    let o = gate2.checkin_offline(&scan(&codes[0], 3)).await.unwrap();
    assert_eq!(o.kind, OutcomeKind::AlreadyUsed);
    let mut conflict = None;
    while conflict.is_none() {
        let batch = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        conflict = batch
            .into_iter()
            .find(|e| e.kind == stile_protocol::frame::EventKind::Conflict);
    }
    let conflict = conflict.unwrap();
    assert_eq!(
        (conflict.serial, conflict.gate),
        (codes[0].header().serial, 2)
    );
    let (listed, _) = admin.conflicts(Some(1), 0).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].code, codes[0]);

    // A follow from the page's position streams a later mint with its fingerprint.
    let mut follow = own.replica_follow(page.seq).await.unwrap();
    let later = admin.mint(crate::node::spec(1, 1)).await.unwrap();
    let mut seen = false;
    for _ in 0..20 {
        let batch = tokio::time::timeout(Duration::from_secs(5), follow.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if batch.items.iter().any(|i| {
            matches!(i, ReplicaItem::Ticket { fingerprint: f, .. } if *f == fingerprint(&later[0]))
        }) {
            seen = true;
            break;
        }
    }
    assert!(seen, "the mint came through the follow");
}

/// Rotating tickets minted with `offline_rotating` are verified offline from the rotation
/// keys in the replica (this step's code admitted once, a code of a long-gone step forged);
/// other rotating tickets are refused offline, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_codes_are_decided_offline_only_where_their_policy_allows() {
    use stile_gate::{GateConfig, Op};
    use stile_protocol::frame::MintSpec;
    let mut n = crate::node::TestNode::start(|_| {}).await;
    let admin = n.client("admin-admin").await;
    let rotating = |offline_rotating| MintSpec {
        format: stile_protocol::CodeFormat::Rotating,
        offline_rotating,
        ..crate::node::spec(1, 2)
    };
    let offline = admin.mint(rotating(true)).await.unwrap();
    let online_only = admin.mint(rotating(false)).await.unwrap();
    // An event whose operator allows no offline admits at all (static codes).
    let event_online_only = admin
        .mint(MintSpec {
            online_only: true,
            ..crate::node::spec(1, 1)
        })
        .await
        .unwrap();
    // The codes a holder's screen shows now, and one of an hour ago.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let draw = |code: &CodeBytes, key: &[u8; 32], step_s: u32, at: u64| {
        stile_protocol::rotating::draw(&code.header(), key, at / u64::from(step_s))
    };
    let mut shown = Vec::new();
    for c in offline.iter().chain(&online_only) {
        let (key, step_s) = admin.ticket_key(c).await.unwrap();
        shown.push((
            draw(c, &key, step_s, now),
            draw(c, &key, step_s, now - 3600),
        ));
    }
    let state = tempfile::tempdir().unwrap();
    let gate = Gate::open(GateConfig {
        client: n.config("gate-1"),
        gate: 1,
        provider: 1,
        state_dir: state.path().to_path_buf(),
        online_timeout: Duration::from_millis(300),
        offline_admits: true,
        max_replica_age: Duration::from_secs(3600),
    })
    .unwrap();
    for _ in 0..200 {
        if gate.status().replica_tickets == Some(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gate.status().replica_tickets, Some(5));
    n.node.take().unwrap().shutdown().await;

    let scan = |c: &CodeBytes| {
        let gate = gate.clone();
        let text = c.to_text().as_str().to_string();
        async move { gate.scan(&text, Op::Entry).await }
    };
    let a = scan(&shown[0].0).await;
    assert_eq!((a.name(), a.mode.name()), ("admitted", "offline"), "{a:?}");
    assert_eq!(scan(&shown[0].0).await.name(), "already_used");
    assert_eq!(
        scan(&shown[1].1).await.name(),
        "forged",
        "a code of an hour ago"
    );
    assert_eq!(scan(&shown[1].0).await.name(), "admitted");
    let refused = scan(&shown[2].0).await;
    assert_eq!(refused.name(), "refused", "{refused:?}");
    assert!(refused.reason.unwrap().contains("online only"));
    let refused = scan(&event_online_only[0]).await;
    assert_eq!(refused.name(), "refused", "{refused:?}");
    assert!(
        refused
            .reason
            .as_deref()
            .unwrap()
            .contains("event is checked online only"),
        "{refused:?}"
    );
}

/// A gate away while its node snapshots and drops the log below its replica's position is
/// told so when it follows again, and loads its replica afresh: it then holds every ticket
/// minted meanwhile, and the state the node holds now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_whose_position_was_dropped_reloads_its_replica() {
    use std::sync::Arc;
    use stile_engine::{CheckinRequest, Engine, EngineConfig, MintRequest, SyncMode, SystemClock};
    use stile_gate::GateConfig;
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    crate::node::make_certs(&tls);
    let engine = Arc::new(
        Engine::open(
            &dir.path().join("node"),
            EngineConfig {
                sync: SyncMode::Always,
                segment_max_bytes: 16 << 10,
                ..EngineConfig::default()
            },
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    let policy = engine.add_policy(stile_engine::Policy::simple(1)).unwrap();
    let mint = |count| {
        engine
            .mint(&MintRequest {
                policy,
                partition: 0,
                count,
            })
            .unwrap()
    };
    let first = mint(10);
    let node = stile_node::Node::start(
        engine.clone(),
        stile_node::NodeConfig::new("127.0.0.1:0".parse().unwrap(), tls.clone()),
    )
    .unwrap();
    let config = GateConfig {
        client: crate::node::client_config(&tls, node.local_addr(), "gate-1"),
        gate: 1,
        provider: 1,
        state_dir: dir.path().join("gate"),
        online_timeout: Duration::from_millis(300),
        offline_admits: true,
        max_replica_age: Duration::from_secs(3600),
    };
    let wait_for = |gate: Arc<Gate>, tickets: usize| async move {
        for _ in 0..200 {
            if gate.status().replica_tickets == Some(tickets) {
                return gate.status();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the replica never held {tickets} tickets: {:?}",
            gate.status()
        );
    };
    let gate = Gate::open(config.clone()).unwrap();
    let before = wait_for(gate.clone(), 10).await;
    // Saved to disk only every 30 s while following: the position saved is the load's.
    drop(gate);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Meanwhile: more tickets, thousands of check-ins across many small segments, and a
    // snapshot that drops the segments below it.
    let more = mint(3000);
    let reqs: Vec<CheckinRequest> = more
        .iter()
        .chain(&first[..1])
        .enumerate()
        .map(|(i, code)| CheckinRequest {
            gate: stile_engine::Gate::new(2, 1),
            scan_id: i as u64,
            code: *code,
        })
        .collect();
    let mut out = vec![stile_protocol::Outcome::FORGED; reqs.len()];
    engine.checkin_batch(&reqs, &mut out).wait();
    let snap = engine.snapshot().unwrap();
    assert!(
        snap.start_seq > before.replica_seq + 100,
        "{snap:?} {before:?}"
    );
    // The segment holding the replica's position is gone: following from it is refused.
    assert!(snap.segments_removed > 0, "{snap:?}");
    let probe = crate::node::client_config(&tls, node.local_addr(), "gate-1");
    let probe = stile_protocol::client::Client::connect(probe)
        .await
        .unwrap();
    let mut follow = probe.replica_follow(before.replica_seq).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), follow.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(refused, Err(stile_protocol::client::ClientError::Node { code, .. }) if code == stile_protocol::frame::error_code::TRIMMED),
        "{refused:?}"
    );

    let gate = Gate::open(config).unwrap();
    let after = wait_for(gate.clone(), 3010).await;
    assert!(after.replica_seq >= snap.start_seq, "{after:?}");
    // The reloaded replica knows the check-in made while the gate was away.
    node.shutdown().await;
    let a = gate
        .scan(first[0].to_text().as_str(), stile_gate::Op::Entry)
        .await;
    assert_eq!(
        (a.name(), a.mode.name()),
        ("already_used", "offline"),
        "{a:?}"
    );
}

/// Two gates on one state directory would reuse scan ids and interleave their journals:
/// the second is refused, naming the first; the directory is private.
#[test]
fn a_second_gate_on_the_same_state_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let tls = data.join("tls");
    crate::node::make_certs(&tls);
    let state = data.join("state");
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut first = GateProcess::start(data, addr, &state, &["--drain-timeout", "1s"]);
    // The first holds the directory once it answers a line.
    assert_eq!(first.scan("HELLO")[1], "forged");
    let second = GateProcess::start(data, addr, &state, &[]);
    let (code, stderr) = second.finish_with_status();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("in use by another stile gate"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let mode = std::fs::metadata(state.join("journal"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    first.finish();
}

/// A journal whose disk fills refuses the decision (the gate then refuses to decide), and
/// once space returns takes the next ones and opens again with every decision it
/// acknowledged. (A failed append is also cut back to the last whole record: a partial one
/// followed by a whole one would read as damage. This tmpfs refuses such a write whole, so
/// the cut itself is not exercised here.)
#[test]
fn a_journal_append_that_fills_the_disk_leaves_no_partial_record() {
    use crate::support::Tmpfs;
    let fs = Tmpfs::mount(64 << 10);
    let path = fs.path.join("journal");
    let mut journal = Journal::open(&path).unwrap();
    let code = CodeBytes::from_slice(&[1; 20]).unwrap();
    let scan = |n: u64| {
        Record::Offline(stile_gate::Scan {
            scan_id: n,
            scanned_at_unix_ms: 1_800_000_000_000 + n,
            last_online_unix_s: 1_800_000_000,
            op: stile_gate::Op::Entry,
            decision: OutcomeKind::Admitted,
            code,
        })
    };
    // A page of the journal is allocated before the disk fills: appends go on into it
    // until one straddles its end.
    for n in 0..3 {
        journal.append(scan(n)).unwrap();
    }
    let filler = fs.fill("filler");
    let mut acknowledged = 3;
    let mut refused = 0;
    for n in 3..10_000 {
        match journal.append(scan(n)) {
            Ok(()) => acknowledged += 1,
            Err(_) => {
                refused += 1;
                break;
            }
        }
    }
    assert_eq!(refused, 1, "the disk filled");
    std::fs::remove_file(filler).unwrap();
    journal.append(scan(20_000)).unwrap();
    drop(journal);
    let journal = Journal::open(&path).unwrap();
    assert_eq!(journal.scans().len(), acknowledged + 1);
}

/// A node that answers only after the gate gave up and kept the holder out (here: offline
/// decisions off) admitted a person who never went in: the gate undoes that admit, so the
/// holder's next scan passes instead of reading `already_used`.
#[test]
fn a_late_admit_the_gate_did_not_show_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let tls = data.join("tls");
    let (node, addr, codes, texts) = node_with_codes(&data.join("node"), &tls, 1);
    let state = data.join("state");
    let mut gate = GateProcess::start(data, addr, &state, &["--no-offline"]);
    gate.wait_online(&codes[0]);
    let pid = node.0.id() as libc::pid_t;
    // SAFETY: signals to the node process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let got = gate.scan(&texts[0]);
    assert_eq!(got[1], "refused", "{got:?}");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // The node admits the resent scan late; the gate undoes it.
    let mut status = String::new();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        let out = Command::new(env!("CARGO_BIN_EXE_stile"))
            .args(["status", "--node", &addr.to_string()])
            .arg("--data")
            .arg(data)
            .arg(&texts[0])
            .output()
            .unwrap();
        status = String::from_utf8(out.stdout).unwrap();
        if status.split('\t').nth(1) == Some("valid") && status.contains("entries 0/") {
            break;
        }
    }
    assert!(
        status.contains("\tvalid\t") && status.contains("entries 0/"),
        "{status}"
    );
    let again = gate.scan(&texts[0]);
    assert_eq!(again[1..], ["admitted", "entries 1", "online"], "{again:?}");
    gate.finish();
}

/// A gate killed soon after its upload, before it saved its replica again, restarts on the
/// replica it saved before its offline admit: the journal records since that save are
/// applied again, uploaded or not, so it still refuses whom it let in offline (found by an
/// attack: only scans not yet uploaded were applied again). And a state directory holding
/// one gate's journal not yet uploaded is refused to another gate's certificate.
#[test]
fn a_restarted_gate_applies_every_journal_record_since_its_replica_was_saved() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let tls = data.join("tls");
    let node_data = data.join("node");
    let (mut node, addr, codes, texts) = node_with_codes(&node_data, &tls, 4);
    let state = data.join("gate-state");
    let mut gate = GateProcess::start(data, addr, &state, &["--drain-timeout", "20s"]);
    gate.wait_online(&codes[0]);
    wait_replica(&state, 4);
    // The replica as saved before the offline admit.
    let before = std::fs::read(Gate::replica_path(&state)).unwrap();
    node.kill().unwrap();
    node.wait().unwrap();
    let got = gate.scan(&texts[1]);
    assert_eq!((got[1].as_str(), got[3].as_str()), ("admitted", "offline"));

    // The node back: the gate uploads its journal and ends.
    let (mut node, _) = crate::node::spawn_node_on(&node_data, &tls, addr, &[]);
    gate.finish();
    node.kill().unwrap();
    node.wait().unwrap();
    // As if the gate had been killed before it saved its replica after the upload.
    std::fs::write(Gate::replica_path(&state), &before).unwrap();

    // Another gate's certificate: refused while gate 1's scans wait; none wait now.
    let mut gate = GateProcess::start(data, addr, &state, &["--drain-timeout", "1s"]);
    let got = gate.scan(&texts[1]);
    assert_eq!(
        (got[1].as_str(), got[3].as_str()),
        ("already_used", "offline"),
        "{got:?}"
    );
    let got = gate.scan(&texts[2]);
    assert_eq!((got[1].as_str(), got[3].as_str()), ("admitted", "offline"));
    let (code, _) = gate.finish_with_status();
    assert_eq!(code, Some(3), "a scan is left to upload");
    let cert = tls.join("gate-2.crt");
    let key = tls.join("gate-2.key");
    let (code, stderr) = GateProcess::start(
        data,
        addr,
        &state,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    )
    .finish_with_status();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("not yet uploaded"), "{stderr}");
}
