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

    /// Closes stdin and returns what the gate said on stderr.
    fn finish(self) -> String {
        drop(self.stdin);
        let out = self.child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
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

    let mut gate = GateProcess::start(data, addr, &state, &[]);
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
    let stderr = gate.finish();
    assert!(stderr.contains("stile gate: OFFLINE"), "{stderr}");
    assert!(stderr.contains("offline scans wait in"), "{stderr}");

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
