//! A `stile node` whose data dir's filesystem fills up: it answers check-ins from its
//! prepared log segments, then refuses changes (`disk_full`) with the metric at 1 and a log
//! line naming its log directory, while status, forged codes and already used tickets are
//! answered as always; once space is freed it takes changes again by itself, and after a
//! SIGKILL every admit it acknowledged is still there.

use std::io::{BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stile_protocol::client::{Client, ClientError};
use stile_protocol::frame::{error_code, TicketStateName};
use stile_protocol::{CodeBytes, OutcomeKind};

use crate::metrics::{get, read_addresses, scrape_until};
use crate::node::{client_config, make_certs, spec, NodeProcess};
use crate::support::Tmpfs;

/// Log segments of 64 KiB (`--log-segment-kib`), so that a small tmpfs holds a runway.
const SEGMENT_KIB: u64 = 64;

/// `stile node` on `data` with a runway of two small segments and metrics; its QUIC and
/// metrics addresses. Its log (at info) goes to `log`.
fn start(data: &Path, tls: &Path, log: &Path) -> (NodeProcess, SocketAddr, String) {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut node = NodeProcess(
        Command::new(env!("CARGO_BIN_EXE_stile"))
            .args([
                "node",
                "--listen",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
            ])
            .args([
                "--sync",
                "always",
                "--log-runway",
                "2",
                "--snapshot-every",
                "off",
            ])
            .args(["--log-segment-kib", &SEGMENT_KIB.to_string()])
            .arg("--data")
            .arg(data)
            .arg("--tls")
            .arg(tls)
            .env("STILE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(node.stdout.take().unwrap());
    let found = read_addresses(
        &mut out,
        &[
            "stile node listening on quic://",
            "stile metrics listening on ",
        ],
    );
    (node, found[0].parse().unwrap(), found[1].clone())
}

/// The node's log so far.
fn log_text(log: &Path) -> String {
    let mut text = String::new();
    std::fs::File::open(log)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

async fn state(admin: &Client, code: &CodeBytes) -> TicketStateName {
    admin.status(code).await.unwrap().state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_full_disk_refuses_changes_answers_the_rest_and_resumes_by_itself() {
    let fs = Tmpfs::mount(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let (tls, log) = (dir.path().join("tls"), dir.path().join("node.log"));
    make_certs(&tls);
    let data = fs.path.join("data");
    let (mut node, addr, metrics) = start(&data, &tls, &log);
    let admin = Client::connect(client_config(&tls, addr, "admin-admin"))
        .await
        .unwrap();
    let gate = Client::connect(client_config(&tls, addr, "gate-1"))
        .await
        .unwrap();
    let codes = admin.mint(spec(1, 6000)).await.unwrap();
    let segment_room = (SEGMENT_KIB << 10) as f64 - 52.0;
    scrape_until(&metrics, |s| {
        get(s, "stile_node_wal_runway_bytes") >= 2.0 * segment_room
    })
    .await;

    // Nothing left on the filesystem but the runway: check-ins go on in it, then are
    // refused.
    let filler = fs.fill("filler");
    let mut admitted = Vec::new();
    let refused = loop {
        let i = admitted.len();
        assert!(i < codes.len(), "never refused: {i} check-ins admitted");
        let outcome = gate.checkin(&codes[i], i as u64).await.unwrap();
        match outcome.kind {
            OutcomeKind::Admitted => admitted.push(codes[i]),
            OutcomeKind::DiskFull => {
                assert!(outcome.message().contains("disk is full"), "{outcome}");
                break codes[i];
            }
            other => panic!("check-in {i}: {other}"),
        }
    };
    assert!(admitted.len() > 1000, "{} admitted", admitted.len());
    scrape_until(&metrics, |s| get(s, "stile_node_disk_full") == 1.0).await;
    let wal = data.join("wal");
    let said = log_text(&log);
    assert!(
        said.lines()
            .any(|l| l.contains("disk is full") && l.contains(wal.to_str().unwrap())),
        "no log line names {}:\n{said}",
        wal.display()
    );

    // What needs no record is answered; the refused ticket is unchanged.
    assert_eq!(state(&admin, &refused).await, TicketStateName::Valid);
    assert_eq!(state(&admin, &admitted[0]).await, TicketStateName::Used);
    let already = gate.checkin(&admitted[0], 1 << 40).await.unwrap();
    assert_eq!(already.kind, OutcomeKind::AlreadyUsed);
    let mut bytes = refused.as_bytes().to_vec();
    bytes[19] ^= 1;
    let forged = CodeBytes::from_slice(&bytes).unwrap();
    let answer = gate.checkin(&forged, 1 << 41).await.unwrap();
    assert_eq!(answer.kind, OutcomeKind::Forged);
    // Admin changes are refused with the error form.
    for result in [
        admin.mint(spec(1, 1)).await.map(|_| ()),
        admin.revoke(&refused).await.map(|_| ()),
        admin.transfer(&refused).await.map(|_| ()),
    ] {
        match result {
            Err(ClientError::Node { code, message }) => {
                assert_eq!(code, error_code::DISK_FULL, "{message}");
                assert!(message.contains("disk is full"), "{message}");
            }
            other => panic!("not refused: {other:?}"),
        }
    }
    assert_eq!(state(&admin, &refused).await, TicketStateName::Valid);

    // Space back: the same scan is admitted within a few seconds, nothing asked of anyone.
    std::fs::remove_file(&filler).unwrap();
    let scan_id = admitted.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let outcome = gate.checkin(&refused, scan_id).await.unwrap();
        match outcome.kind {
            OutcomeKind::Admitted => break,
            OutcomeKind::DiskFull => {}
            other => panic!("after space came back: {other}"),
        }
        assert!(Instant::now() < deadline, "still refused with space back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admitted.push(refused);
    scrape_until(&metrics, |s| get(s, "stile_node_disk_full") == 0.0).await;
    assert!(log_text(&log).contains("log space is back"));
    assert_eq!(
        gate.checkin(&codes[admitted.len()], 1 << 42)
            .await
            .unwrap()
            .kind,
        OutcomeKind::Admitted
    );
    admitted.push(codes[admitted.len()]);

    // Killed and restarted: every acknowledged admit is in the log.
    drop((admin, gate));
    node.kill().unwrap();
    node.wait().unwrap();
    let (_node, addr, _) = start(&data, &tls, &log);
    let admin = Client::connect(client_config(&tls, addr, "admin-admin"))
        .await
        .unwrap();
    for code in &admitted {
        assert_eq!(state(&admin, code).await, TicketStateName::Used);
    }
    assert_eq!(
        state(&admin, &codes[admitted.len()]).await,
        TicketStateName::Valid
    );
}
