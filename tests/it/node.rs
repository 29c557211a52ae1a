//! The QUIC node against real clients on 127.0.0.1: check-in round trips, retries, races
//! between gates, mutual TLS and revocation, bad frames, the forged-code budget, events.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stile_certs as certs;
use stile_engine::{Engine, EngineConfig, SyncMode, SystemClock, ROTATION_STEP_DEFAULT_S};
use stile_node::{Node, NodeConfig};
use stile_protocol::client::{connect_raw, Client, ClientConfig, ClientError, ClientTls};
use stile_protocol::frame::{close, error_code, EventKind, MintSpec, TicketStateName};
use stile_protocol::{CodeBytes, CodeFormat, OutcomeKind};

/// A node on a fresh data dir, with a CA, admin, and gates 1 and 2 of provider 1 and gate 3
/// of provider 2.
pub(crate) struct TestNode {
    /// First, so it is dropped (its tasks stopped) before its directory is removed: a node
    /// that saw its log vanish would stop the process.
    pub node: Option<Node>,
    pub dir: tempfile::TempDir,
    pub tls: PathBuf,
    pub addr: SocketAddr,
}

pub fn make_certs(tls: &Path) {
    certs::init(tls).unwrap();
    certs::issue_node(tls, &["127.0.0.1".into(), "localhost".into()]).unwrap();
    certs::issue_admin(tls, "admin").unwrap();
    certs::issue_gate(tls, 1, 1).unwrap();
    certs::issue_gate(tls, 2, 1).unwrap();
    certs::issue_gate(tls, 3, 2).unwrap();
}

impl TestNode {
    pub async fn start(tune: impl FnOnce(&mut NodeConfig)) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        make_certs(&tls);
        let config = EngineConfig {
            sync: SyncMode::Always,
            ..EngineConfig::default()
        };
        let engine = Engine::open(&dir.path().join("data"), config, Arc::new(SystemClock)).unwrap();
        let mut nc = NodeConfig::new("127.0.0.1:0".parse().unwrap(), tls.clone());
        nc.crl_poll = Duration::from_millis(50);
        tune(&mut nc);
        let node = Node::start(Arc::new(engine), nc).unwrap();
        let addr = node.local_addr();
        TestNode {
            dir,
            tls,
            addr,
            node: Some(node),
        }
    }

    /// A client config with the certificate `name` (`admin`, `gate-1`, …).
    pub fn config(&self, name: &str) -> ClientConfig {
        client_config(&self.tls, self.addr, name)
    }

    pub async fn client(&self, name: &str) -> Client {
        Client::connect(self.config(name)).await.unwrap()
    }
}

pub fn client_config(tls: &Path, addr: SocketAddr, name: &str) -> ClientConfig {
    let cert = tls.join(format!("{name}.crt"));
    let ctls = ClientTls::from_files(
        &tls.join(certs::CA_CERT),
        &cert,
        &certs::key_path_for(&cert),
    )
    .unwrap();
    let mut config = ClientConfig::new(addr, ctls);
    config.request_timeout = Duration::from_secs(20);
    config
}

pub fn spec(provider: u16, count: u32) -> MintSpec {
    MintSpec::single_entry(provider, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkin_already_used_undo_and_retry_round_trip() {
    let n = TestNode::start(|_| {}).await;
    let admin = n.client("admin-admin").await;
    let gate = n.client("gate-1").await;
    let codes = admin.mint(spec(1, 3)).await.unwrap();
    assert_eq!(codes.len(), 3);
    let code = codes[0];

    let first = gate.checkin(&code, 100).await.unwrap();
    assert_eq!(first.kind, OutcomeKind::Admitted);
    assert_eq!(first.gate, 1);
    let again = gate.checkin(&code, 101).await.unwrap();
    assert_eq!(again.kind, OutcomeKind::AlreadyUsed);
    assert_eq!(again.gate, 1, "already_used names the admitting gate");
    // A retry of the first scan gets the first answer, not already_used.
    assert_eq!(gate.checkin(&code, 100).await.unwrap(), first);

    let undo = gate.undo(&code, 102).await.unwrap();
    assert_eq!(undo.kind, OutcomeKind::Undone);
    let st = admin.status(&code).await.unwrap();
    assert_eq!(st.state, TicketStateName::Valid);
    assert_eq!(
        gate.checkin(&code, 103).await.unwrap().kind,
        OutcomeKind::Admitted
    );
    let st = admin.status(&code).await.unwrap();
    assert_eq!(
        (st.state, st.gate, st.entries),
        (TicketStateName::Used, 1, 1)
    );

    // Pipelined: many check-ins in flight at once on the one stream.
    let rest = admin.mint(spec(1, 2000)).await.unwrap();
    let answers = futures_join(rest.iter().map(|c| {
        let gate = gate.clone();
        let c = *c;
        async move { gate.checkin(&c, gate.next_scan_id()).await.unwrap() }
    }))
    .await;
    assert!(answers.iter().all(|o| o.kind == OutcomeKind::Admitted));
    let stats = admin.stats().await.unwrap();
    assert!(stats.admitted >= 2002, "{stats:?}");
    assert_eq!(stats.tickets, 2003);
    n.node.unwrap().shutdown().await;
}

/// Runs futures concurrently on the runtime and collects their outputs in order.
pub async fn futures_join<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gates_racing_on_the_same_codes_admit_each_once() {
    let n = TestNode::start(|_| {}).await;
    let admin = n.client("admin-admin").await;
    let g1 = n.client("gate-1").await;
    let g2 = n.client("gate-2").await;
    let codes = admin.mint(spec(1, 500)).await.unwrap();
    let race = |gate: Client| {
        let codes = codes.clone();
        tokio::spawn(async move {
            let all = codes.iter().map(|c| {
                let gate = gate.clone();
                let c = *c;
                async move { gate.checkin(&c, gate.next_scan_id()).await.unwrap() }
            });
            futures_join(all).await
        })
    };
    let (a, b) = (race(g1), race(g2));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut wins = [0; 3];
    for (x, y) in a.iter().zip(&b) {
        let (winner, loser, loser_gate) = match (x.kind, y.kind) {
            (OutcomeKind::Admitted, OutcomeKind::AlreadyUsed) => (x, y, 2),
            (OutcomeKind::AlreadyUsed, OutcomeKind::Admitted) => (y, x, 1),
            other => panic!("not exactly one admit: {other:?}"),
        };
        assert_eq!(
            loser.gate, winner.gate,
            "gate {loser_gate} lost to the winner"
        );
        wins[winner.gate as usize] += 1;
    }
    assert_eq!(wins[1] + wins[2], 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_certificates_are_enforced() {
    let n = TestNode::start(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let admin = n.client("admin-admin").await;
    let p1 = admin.mint(spec(1, 2)).await.unwrap();
    let p2 = admin.mint(spec(2, 1)).await.unwrap();

    // No certificate at all.
    let ca = std::fs::read(n.tls.join(certs::CA_CERT)).unwrap();
    let bare = ClientConfig::new(n.addr, ClientTls::without_identity(&ca).unwrap());
    match Client::connect(bare).await {
        Err(ClientError::Refused(reason)) => assert!(reason.contains("certificate"), "{reason}"),
        other => panic!("a client without a certificate got {other:?}"),
    }

    // A certificate from another CA.
    let other = n.dir.path().join("other-ca");
    make_certs(&other);
    let mut foreign = client_config(&other, n.addr, "gate-1");
    foreign.tls = {
        let cert = other.join("gate-1.crt");
        ClientTls::from_pem(
            &ca,
            &std::fs::read(&cert).unwrap(),
            &std::fs::read(certs::key_path_for(&cert)).unwrap(),
        )
        .unwrap()
    };
    match Client::connect(foreign).await {
        Err(ClientError::Refused(reason)) => {
            assert!(reason.contains("CA"), "{reason}");
            assert!(reason.starts_with("node refused this client"), "{reason}");
        }
        other => panic!("a client of another CA got {other:?}"),
    }
    // A client that trusts another CA: the refusal is its own, and says where to look.
    let mut distrustful = client_config(&n.tls, n.addr, "gate-1");
    distrustful.tls = {
        let cert = n.tls.join("gate-1.crt");
        ClientTls::from_pem(
            &std::fs::read(other.join(certs::CA_CERT)).unwrap(),
            &std::fs::read(&cert).unwrap(),
            &std::fs::read(certs::key_path_for(&cert)).unwrap(),
        )
        .unwrap()
    };
    match Client::connect(distrustful).await {
        Err(ClientError::Refused(reason)) => {
            assert!(
                reason.starts_with("this client refused the node's certificate"),
                "{reason}"
            );
            assert!(reason.contains("--ca"), "{reason}");
        }
        other => panic!("a client trusting another CA got {other:?}"),
    }

    // A gate cannot mint, revoke, transfer, check in for others or subscribe.
    let gate = n.client("gate-1").await;
    match gate.mint(spec(1, 1)).await {
        Err(ClientError::Node { code, .. }) => assert_eq!(code, error_code::FORBIDDEN),
        other => panic!("gate minted: {other:?}"),
    }
    assert!(gate.revoke(&p1[0]).await.is_err());
    assert!(gate.transfer(&p1[0]).await.is_err());
    assert!(gate.checkin_as(2, 1, &p1[0], 1).await.is_err());
    assert!(gate
        .subscribe(0)
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
        .is_err());
    // Nor read the node's counts and latencies, which cover every provider's tickets.
    for answer in [
        gate.stats().await.map(|_| ()),
        gate.metrics(stile_protocol::frame::op::CHECKIN)
            .await
            .map(|_| ()),
    ] {
        match answer {
            Err(ClientError::Node { code, message }) => {
                assert_eq!(code, error_code::FORBIDDEN, "{message}");
                assert!(message.contains("admin role"), "{message}");
            }
            other => panic!("a gate read node-wide counts: {other:?}"),
        }
    }
    assert!(admin.stats().await.is_ok());
    // And an admin checks in only on behalf of a gate.
    assert!(admin.checkin(&p1[0], 1).await.is_err());

    // Provider 1's gate: provider 2's ticket is refused locally and by the node.
    let mut local = n.config("gate-1");
    local.provider = Some(1);
    let local = Client::connect(local).await.unwrap();
    assert_eq!(
        local.checkin(&p2[0], 1).await.unwrap().kind,
        OutcomeKind::WrongProvider
    );
    assert_eq!(
        gate.checkin(&p2[0], 2).await.unwrap().kind,
        OutcomeKind::WrongProvider
    );
    let g3 = n.client("gate-3").await;
    assert_eq!(
        g3.checkin(&p2[0], 3).await.unwrap().kind,
        OutcomeKind::Admitted
    );

    // Revoking gate 2 closes its live connection and refuses it from then on.
    let g2 = n.client("gate-2").await;
    assert_eq!(
        g2.checkin(&p1[1], 4).await.unwrap().kind,
        OutcomeKind::Admitted
    );
    certs::revoke(&n.tls, &n.tls.join("gate-2.crt")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match g2.ping().await {
            Err(ClientError::Refused(reason)) => {
                assert!(reason.contains("revoked"), "{reason}");
                break;
            }
            _ if Instant::now() > deadline => panic!("revoked gate still connected"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    match Client::connect(n.config("gate-2")).await {
        Err(ClientError::Refused(reason)) => assert!(reason.contains("revoked"), "{reason}"),
        other => panic!("a revoked gate got {other:?}"),
    }
    // Each refusal is flagged: the live connection closed, and the new one refused.
    let url = format!(
        "http://{}/metrics",
        n.node.as_ref().unwrap().metrics_addr().unwrap()
    );
    crate::metrics::scrape_until(&url, |s| {
        s.get("stile_node_revoked_certificates_refused_total")
            .is_some_and(|v| *v >= 2.0)
    })
    .await;
    // Everyone else is unaffected.
    assert!(gate.ping().await.is_ok());
    assert!(admin.ping().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    use rand::{Rng, SeedableRng};

    let n = TestNode::start(|_| {}).await;
    let admin = n.client("admin-admin").await;
    let good = n.client("gate-2").await;
    let codes = admin.mint(spec(1, 8)).await.unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let cases: Vec<(Vec<u8>, u32)> = vec![
        // Length prefix past the maximum: refused before any body arrives.
        (vec![0xff, 0xff, 0x7f], close::TOO_LARGE),
        (vec![0x80, 0x80, 0x80, 0x01], close::TOO_LARGE),
        // An op no one knows.
        (vec![5, 0x7e, 0, 0, 0, 0], close::UNKNOWN_OP),
        // A check-in with bytes after its code.
        (
            [vec![35u8, 1, 0, 0, 0, 0], vec![0; 30]].concat(),
            close::MALFORMED,
        ),
        // Random bytes, then an oversized length so something is certain to fail.
        (
            [
                (0..4000).map(|_| rng.gen()).collect::<Vec<u8>>(),
                vec![0xff; 4],
            ]
            .concat(),
            u32::MAX,
        ),
    ];
    for (i, (bytes, want)) in cases.into_iter().enumerate() {
        let (_endpoint, conn, mut send, _recv) = connect_raw(&n.config("gate-1")).await.unwrap();
        send.write_all(&bytes).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("node closes a connection that sent a bad frame");
        let quinn::ConnectionError::ApplicationClosed(c) = closed else {
            panic!("case {i}: closed by {closed:?}");
        };
        let code = c.error_code.into_inner() as u32;
        if want == u32::MAX {
            assert!(
                [close::TOO_LARGE, close::UNKNOWN_OP, close::MALFORMED].contains(&code),
                "case {i}: {code}"
            );
        } else {
            assert_eq!(code, want, "case {i}");
        }
        // The other connection kept working throughout.
        let o = good.checkin(&codes[i], good.next_scan_id()).await.unwrap();
        assert_eq!(o.kind, OutcomeKind::Admitted, "case {i}");
    }
}

/// A code with the right layout and a wrong tag.
fn forged(code: &CodeBytes, i: u32) -> CodeBytes {
    let mut bytes = code.as_bytes().to_vec();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&i.to_le_bytes());
    CodeBytes::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_flood_is_rate_limited_for_that_gate_only() {
    let n = TestNode::start(|c| {
        c.budget_per_s = 20;
        c.budget_burst = 40;
        c.budget_cooldown = Duration::from_secs(30);
    })
    .await;
    let admin = n.client("admin-admin").await;
    let flooder = n.client("gate-1").await;
    let honest = n.client("gate-2").await;
    let codes = admin.mint(spec(1, 50)).await.unwrap();
    let flood: Vec<_> = (0..1000).map(|i| forged(&codes[0], i)).collect();
    let answers = futures_join(flood.into_iter().map(|c| {
        let f = flooder.clone();
        async move { f.checkin(&c, f.next_scan_id()).await.unwrap().kind }
    }))
    .await;
    let limited = answers
        .iter()
        .filter(|k| **k == OutcomeKind::RateLimited)
        .count();
    let forged_n = answers
        .iter()
        .filter(|k| **k == OutcomeKind::Forged)
        .count();
    assert_eq!(limited + forged_n, 1000);
    assert!((40..200).contains(&forged_n), "forged {forged_n}");
    // The flooding gate is cut off, even for genuine codes, for the cooldown...
    assert_eq!(
        flooder.checkin(&codes[0], 1).await.unwrap().kind,
        OutcomeKind::RateLimited
    );
    // ...while another gate is served as usual.
    for c in &codes[1..] {
        assert_eq!(
            honest.checkin(c, honest.next_scan_id()).await.unwrap().kind,
            OutcomeKind::Admitted
        );
    }
    // So is the gate of another provider that has the same id.
    let theirs = admin.mint(spec(2, 1)).await.unwrap();
    let o = admin.checkin_as(1, 2, &theirs[0], 1).await.unwrap();
    assert_eq!((o.kind, o.gate), (OutcomeKind::Admitted, 1));
}

/// Looking up forged codes with `status` spends the gate's budget as scanning them does:
/// past it the look-ups are refused `RATE_LIMITED`, and the gate's scans are
/// `rate_limited`, for the cooldown; another gate is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_status_lookups_spend_the_gates_budget() {
    let n = TestNode::start(|c| {
        c.budget_per_s = 20;
        c.budget_burst = 40;
        c.budget_cooldown = Duration::from_secs(30);
    })
    .await;
    let admin = n.client("admin-admin").await;
    let prober = n.client("gate-1").await;
    let honest = n.client("gate-2").await;
    let codes = admin.mint(spec(1, 2)).await.unwrap();
    let probes: Vec<_> = (0..1000).map(|i| forged(&codes[0], i)).collect();
    let answers = futures_join(probes.into_iter().map(|c| {
        let p = prober.clone();
        async move {
            match p.status(&c).await {
                Err(ClientError::Node { code, .. }) => code,
                other => panic!("a forged code's status: {other:?}"),
            }
        }
    }))
    .await;
    let limited = answers
        .iter()
        .filter(|c| **c == error_code::RATE_LIMITED)
        .count();
    let forged_n = answers.iter().filter(|c| **c == error_code::FORGED).count();
    assert_eq!(limited + forged_n, 1000);
    assert!((40..200).contains(&forged_n), "forged {forged_n}");
    // The prober is cut off, for look-ups and scans of genuine codes too...
    match prober.status(&codes[0]).await {
        Err(ClientError::Node { code, .. }) => assert_eq!(code, error_code::RATE_LIMITED),
        other => panic!("a blocked gate looked a ticket up: {other:?}"),
    }
    assert_eq!(
        prober.checkin(&codes[0], 1).await.unwrap().kind,
        OutcomeKind::RateLimited
    );
    // ...while another gate is served as usual.
    assert_eq!(
        honest.status(&codes[0]).await.unwrap().state,
        TicketStateName::Valid
    );
    assert_eq!(
        honest.checkin(&codes[1], 1).await.unwrap().kind,
        OutcomeKind::Admitted
    );
}

/// A TLS verifier that refuses every server certificate with `0` as its reason: a client
/// that ends its handshake with a close reason of its choosing.
#[derive(Debug)]
struct RefuseWith(String);

impl rustls::client::danger::ServerCertVerifier for RefuseWith {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(self.0.clone()))
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(self.0.clone()))
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(self.0.clone()))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Nothing a peer sends starts a line of the node's log: a client (with no certificate at
/// all) that ends its handshake with a close reason holding a newline and a forged
/// `stile::audit` line is logged on one line, the newline escaped.
#[test]
fn a_peers_close_reason_cannot_forge_a_line_of_the_nodes_log() {
    use std::io::{BufRead, Read};
    let dir = tempfile::tempdir().unwrap();
    let (data, tls) = (dir.path().join("data"), dir.path().join("tls"));
    make_certs(&tls);
    let mut node = NodeProcess(
        std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
            .args(["node", "--listen", "127.0.0.1:0"])
            .arg("--data")
            .arg(&data)
            .arg("--tls")
            .arg(&tls)
            .env("STILE_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(node.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("stile node listening on quic://")
        .unwrap()
        .parse()
        .unwrap();
    let forged = "stile::audit: mint by admin root: 1000 code(s)";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RefuseWith(format!("no\n{forged}"))))
            .with_no_client_auth();
        tls.alpn_protocols = vec![stile_protocol::frame::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connecting = endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(crypto)),
                addr,
                "127.0.0.1",
            )
            .unwrap();
        assert!(connecting.await.is_err());
        endpoint.wait_idle().await;
    });
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(node.id() as i32, libc::SIGTERM) }, 0);
    let mut log = String::new();
    node.stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(node.wait().unwrap().success());
    let told: Vec<&str> = log.lines().filter(|l| l.contains(forged)).collect();
    assert!(!told.is_empty(), "the reason reached the log: {log}");
    for l in told {
        assert!(
            l.contains("handshake failed") && l.contains("remote=127.0.0.1:"),
            "a line of its own: {l:?}"
        );
    }
}

/// Signs a client certificate with the CA in `tls` whose subject alternative names are
/// `uris` (as `stile certs` never would), and returns a client config that presents it.
fn config_with_uris(n: &TestNode, uris: &[&str]) -> ClientConfig {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(n.tls.join(certs::CA_KEY)).unwrap())
            .unwrap();
    let ca = rcgen::CertificateParams::from_ca_cert_pem(
        &std::fs::read_to_string(n.tls.join(certs::CA_CERT)).unwrap(),
    )
    .unwrap()
    .self_signed(&ca_key)
    .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let tls = ClientTls::from_pem(
        &std::fs::read(n.tls.join(certs::CA_CERT)).unwrap(),
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )
    .unwrap();
    ClientConfig::new(n.addr, tls)
}

/// The node refuses, at the handshake, a certificate of its own CA that names two roles (a
/// gate and an admin: it was taken as whichever came first) or an admin whose name holds a
/// newline (which would forge a line of the audit log); a well-formed one still connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_with_two_roles_or_a_control_character_are_refused() {
    let n = TestNode::start(|_| {}).await;
    for uris in [
        &["urn:stile:gate:7:provider:1", "urn:stile:admin:ops"][..],
        &["urn:stile:admin:ops", "urn:stile:gate:7:provider:1"],
        &["urn:stile:admin:ops\nstile::audit: mint by admin root"],
    ] {
        match Client::connect(config_with_uris(&n, uris)).await {
            Err(ClientError::Refused(reason)) => {
                assert!(
                    reason.contains("no gate or admin role"),
                    "{uris:?}: {reason}"
                )
            }
            other => panic!("{uris:?} got {other:?}"),
        }
    }
    let ops = Client::connect(config_with_uris(&n, &["urn:stile:admin:ops"]))
        .await
        .unwrap();
    assert!(ops.stats().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_check_ins_and_transfers_as_events() {
    let n = TestNode::start(|_| {}).await;
    let admin = n.client("admin-admin").await;
    let gate = n.client("gate-1").await;
    let codes = admin.mint(spec(1, 2)).await.unwrap();
    let mut sub = admin.subscribe(0).await.unwrap();
    assert_eq!(
        gate.checkin(&codes[0], 1).await.unwrap().kind,
        OutcomeKind::Admitted
    );
    let successor = admin.transfer(&codes[1]).await.unwrap();
    let mut events = Vec::new();
    while events.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        events.extend(batch);
    }
    let serial = |c: &CodeBytes| c.header().serial;
    assert_eq!(events[0].kind, EventKind::State);
    assert_eq!(events[0].serial, serial(&codes[0]));
    assert_eq!(
        (events[0].state, events[0].gate),
        (TicketStateName::Used, 1)
    );
    assert_eq!(events[1].serial, serial(&codes[1]));
    assert_eq!(events[1].state, TicketStateName::Revoked);
    assert_eq!(events[2].kind, EventKind::TransferredIn);
    assert_eq!(events[2].serial, serial(&successor));
    assert!(events.windows(2).all(|w| w[0].seq <= w[1].seq));
    // checkin_as is answered like a gate's check-in and shows up as that gate's event.
    let o = admin.checkin_as(9, 1, &successor, 5).await.unwrap();
    assert_eq!((o.kind, o.gate), (OutcomeKind::Admitted, 9));
    let next = sub.next().await.unwrap().unwrap();
    assert_eq!((next[0].serial, next[0].gate), (serial(&successor), 9));
}

/// A rotating ticket's code for time step `step`, drawn from its key alone as the gateway
/// does (`docs/FORMAT.md` §1): bytes 0–9 of any code of the ticket, the step's low byte, and
/// the first 10 bytes of HMAC-SHA256(key, bytes 0–10).
fn draw_rotating(code: &CodeBytes, key: &[u8; 32], step: u64) -> CodeBytes {
    stile_protocol::rotating::draw(&code.header(), key, step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_key_draws_admitted_rotating_codes_for_admins_only() {
    let n = TestNode::start(|_| {}).await;
    let admin = n.client("admin-admin").await;
    let gate = n.client("gate-1").await;
    let rotating = admin
        .mint(MintSpec {
            format: CodeFormat::Rotating,
            ..spec(1, 2)
        })
        .await
        .unwrap();
    let code = rotating[0];

    let (key, step_s) = admin.ticket_key(&code).await.unwrap();
    assert_eq!(step_s, ROTATION_STEP_DEFAULT_S);
    // The key redraws the minted code exactly, and its neighbour's key does not.
    let minted_step = u64::from(code.as_bytes()[10]);
    assert_eq!(draw_rotating(&code, &key, minted_step), code);
    let (other, _) = admin.ticket_key(&rotating[1]).await.unwrap();
    assert_ne!(other, key);
    // A code of any step asks for the same key.
    let far = draw_rotating(&code, &key, minted_step + 100);
    assert_eq!(admin.ticket_key(&far).await.unwrap(), (key, step_s));
    // Far from now, the drawn code is dead at the gate.
    assert_eq!(
        gate.checkin(&far, gate.next_scan_id()).await.unwrap().kind,
        OutcomeKind::Forged
    );

    // Drawn for the current step, as the gateway does, it admits.
    let unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let now = draw_rotating(&code, &key, unix_s / u64::from(step_s));
    assert_eq!(
        gate.checkin(&now, gate.next_scan_id()).await.unwrap().kind,
        OutcomeKind::Admitted
    );

    // A gate certificate is forbidden, even for its own provider's ticket.
    match gate.ticket_key(&code).await {
        Err(ClientError::Node { code, message }) => {
            assert_eq!(code, error_code::FORBIDDEN, "{message}");
            assert!(message.contains("admin role"), "{message}");
        }
        other => panic!("a gate got a ticket key: {other:?}"),
    }
    // A static code has no ticket key.
    let fixed = admin.mint(spec(1, 1)).await.unwrap()[0];
    match admin.ticket_key(&fixed).await {
        Err(ClientError::Node { code, message }) => {
            assert_eq!(code, error_code::BAD_REQUEST);
            assert_eq!(
                message,
                "ticket_key is for rotating codes; this code is static"
            );
        }
        other => panic!("a static code got a ticket key: {other:?}"),
    }
    // A rotating code with a bad tag is forged, as for status.
    match admin.ticket_key(&forged(&code, 1)).await {
        Err(ClientError::Node { code, .. }) => assert_eq!(code, error_code::FORGED),
        other => panic!("a forged code got a ticket key: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_requests_and_clients_reconnect() {
    let n = TestNode::start(|_| {}).await;
    let admin = n.client("admin-admin").await;
    let codes = admin.mint(spec(1, 300)).await.unwrap();
    let data = n.dir.path().join("data");
    let gate = n.client("gate-1").await;
    let scans: Vec<u64> = codes.iter().map(|_| gate.next_scan_id()).collect();
    let inflight = futures_join(codes.iter().zip(scans.clone()).map(|(c, s)| {
        let gate = gate.clone();
        let c = *c;
        async move { gate.checkin(&c, s).await }
    }));
    let node = n.node.unwrap();
    let (answers, restarted) = tokio::join!(inflight, async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        node.shutdown().await;
        // Same data dir, same port: the client reconnects and resends what was unanswered.
        // (The old socket is released once quinn's driver task sees the endpoint gone.)
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let engine =
                Engine::open(&data, EngineConfig::default(), Arc::new(SystemClock)).unwrap();
            let mut nc = NodeConfig::new(n.addr, n.tls.clone());
            nc.crl_poll = Duration::from_millis(50);
            match Node::start(Arc::new(engine), nc) {
                Ok(node) => break node,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    });
    for (i, a) in answers.into_iter().enumerate() {
        let o = a.unwrap();
        assert_eq!(o.kind, OutcomeKind::Admitted, "code {i}: {o:?}");
    }
    // And the admits survived the restart.
    for (c, s) in codes.iter().zip(scans).take(20) {
        let o = gate.checkin(c, s + 1_000_000).await.unwrap();
        assert_eq!(o.kind, OutcomeKind::AlreadyUsed);
    }
    restarted.shutdown().await;
}

/// A `stile node` child process, killed if the test ends (or fails) before it does.
pub(crate) struct NodeProcess(pub(crate) std::process::Child);

impl std::ops::Deref for NodeProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for NodeProcess {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A `stile node` process on a data dir, and the address it printed.
pub(crate) fn spawn_node(data: &Path, tls: &Path) -> (NodeProcess, SocketAddr) {
    spawn_node_with(data, tls, &[])
}

/// [`spawn_node`] with more options.
fn spawn_node_with(data: &Path, tls: &Path, extra: &[&str]) -> (NodeProcess, SocketAddr) {
    spawn_node_on(data, tls, "127.0.0.1:0".parse().unwrap(), extra)
}

/// [`spawn_node_with`] on the address `listen`.
pub(crate) fn spawn_node_on(
    data: &Path,
    tls: &Path,
    listen: SocketAddr,
    extra: &[&str],
) -> (NodeProcess, SocketAddr) {
    use std::io::BufRead;
    let sync: &[&str] = match extra.contains(&"--sync") {
        true => &[],
        false => &["--sync", "always"],
    };
    let mut child = NodeProcess(
        std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
            .args(["node", "--listen", &listen.to_string()])
            .args(sync)
            .args(extra)
            .arg("--data")
            .arg(data)
            .arg("--tls")
            .arg(tls)
            .env("STILE_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("stile node listening on quic://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admits_survive_sigkill_mid_load_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tls) = (dir.path().join("data"), dir.path().join("tls"));
    make_certs(&tls);
    let (mut child, addr) = spawn_node(&data, &tls);
    let admin = Client::connect(client_config(&tls, addr, "admin-admin"))
        .await
        .unwrap();
    let codes = admin.mint(spec(1, 20_000)).await.unwrap();
    drop(admin);

    // Check in codes with 64 in flight until the node is killed mid-load.
    let mut config = client_config(&tls, addr, "gate-1");
    config.request_timeout = Duration::from_secs(2);
    let gate = Client::connect(config).await.unwrap();
    let (admitted, load) = crate::standby::load(gate.clone(), codes.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while admitted.lock().unwrap().len() < 2000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    load.abort();
    drop(gate);
    let acked: Vec<usize> = admitted.lock().unwrap().clone();
    assert!(acked.len() >= 2000, "load ran: {} admits", acked.len());

    // Every admit a gate was told of is still spent after the restart.
    let (mut child, addr) = spawn_node(&data, &tls);
    let checker = Client::connect(client_config(&tls, addr, "gate-2"))
        .await
        .unwrap();
    for &i in &acked {
        let o = checker
            .checkin(&codes[i], 1_000_000 + i as u64)
            .await
            .unwrap();
        assert_eq!(o.kind, OutcomeKind::AlreadyUsed, "code {i} after SIGKILL");
        assert_eq!(o.gate, 1);
    }
    // Gate 1 retries its last acknowledged scans with their scan ids: the original answers
    // come back (scan memory is rebuilt from the log). Scan ids map to 256 slots per gate and
    // at most 64 were in flight, so the acked ids above `hi - 191` cannot have been evicted.
    let retrier = Client::connect(client_config(&tls, addr, "gate-1"))
        .await
        .unwrap();
    let hi = *acked.iter().max().unwrap();
    let recent: Vec<usize> = acked.iter().copied().filter(|&i| i + 191 > hi).collect();
    assert!(!recent.is_empty());
    for &i in &recent {
        let o = retrier.checkin(&codes[i], i as u64).await.unwrap();
        assert_eq!(
            (o.kind, o.gate),
            (OutcomeKind::Admitted, 1),
            "retry of scan {i}"
        );
    }
    drop(retrier);
    // A fresh admit, then SIGTERM: the node exits 0 and the admit is kept.
    let last = codes.len() - 1;
    let o = checker.checkin(&codes[last], 7).await.unwrap();
    assert_eq!(o.kind, OutcomeKind::Admitted);
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    drop(checker);
    let (mut child, addr) = spawn_node(&data, &tls);
    let checker = Client::connect(client_config(&tls, addr, "gate-2"))
        .await
        .unwrap();
    let o = checker.checkin(&codes[last], 8).await.unwrap();
    assert_eq!((o.kind, o.gate), (OutcomeKind::AlreadyUsed, 2));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A `stile check` of `texts` at `addr` with gate 1's certificate, running: the child, its
/// stdout's lines, and its stderr once it ends.
struct Check {
    /// The `stile check` process.
    child: std::process::Child,
    /// Its stdout, a line at a time.
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    /// All of its stderr, once it ends.
    stderr: std::thread::JoinHandle<String>,
}

impl Check {
    fn spawn(tls: &Path, addr: SocketAddr, extra: &[&str], texts: &[String]) -> Check {
        use std::io::{BufRead, Read};
        let gate = tls.join("gate-1.crt");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
            .args(["check", "--node", &addr.to_string()])
            .arg("--ca")
            .arg(tls.join(certs::CA_CERT))
            .arg("--cert")
            .arg(&gate)
            .arg("--key")
            .arg(certs::key_path_for(&gate))
            .args(extra)
            .args(texts)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Check {
            child,
            lines,
            stderr,
        }
    }

    /// Reads lines until `n` have been read in all (into `answered`).
    fn read_until(&mut self, answered: &mut Vec<String>, n: usize) {
        while answered.len() < n {
            answered.push(self.lines.next().expect("the check ended early").unwrap());
        }
    }

    /// Reads the rest of the lines into `answered`; the exit status and stderr.
    fn finish(mut self, answered: &mut Vec<String>) -> (std::process::ExitStatus, String) {
        for line in self.lines.by_ref() {
            answered.push(line.unwrap());
        }
        let status = self.child.wait().unwrap();
        (status, self.stderr.join().unwrap())
    }
}

/// A `stile node` on a fresh data dir with `count` codes of provider 1 minted: the node, its
/// address, the codes and their text.
pub(crate) fn node_with_codes(
    data: &Path,
    tls: &Path,
    count: usize,
) -> (NodeProcess, SocketAddr, Vec<CodeBytes>, Vec<String>) {
    make_certs(tls);
    let (node, addr) = spawn_node(data, tls);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let codes = rt.block_on(async {
        let admin = Client::connect(client_config(tls, addr, "admin-admin"))
            .await
            .unwrap();
        let codes = admin.mint(spec(1, count as u32)).await.unwrap();
        admin.close().await;
        codes
    });
    let texts = codes.iter().map(|c| c.to_text().as_str().into()).collect();
    (node, addr, codes, texts)
}

/// Asserts that each line names its code, in order, and `admitted`.
fn assert_all_admitted(lines: &[String], texts: &[String]) {
    for (line, text) in lines.iter().zip(texts) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields[..2], [text.as_str(), "admitted"], "{line}");
    }
}

/// A node killed with SIGKILL and started again at once, on the same address and data dir,
/// while `stile check` goes through 3,000 codes one by one: the check answers every code,
/// each `admitted` once (a scan the killed node made is answered as it was, from the log).
/// The restarted node answers the check's stale connection with a stateless reset the
/// client accepts (its key comes from the data dir), so the client reconnects at once and
/// resends. Before, the reset was signed with a new random key and ignored: the check waited
/// out its 30 s request timeout and ended with an error, having printed nothing.
#[test]
fn sigkill_and_restart_under_stile_check_answers_every_code() {
    const CODES: usize = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let (data, tls) = (dir.path().join("data"), dir.path().join("tls"));
    let (mut node, addr, codes, texts) = node_with_codes(&data, &tls, CODES);
    let started = Instant::now();
    let mut check = Check::spawn(&tls, addr, &[], &texts);
    let mut answered: Vec<String> = Vec::with_capacity(CODES);
    check.read_until(&mut answered, CODES / 3);
    assert!(
        check.child.try_wait().unwrap().is_none(),
        "the check still runs when the node is killed"
    );
    node.kill().unwrap(); // SIGKILL
    node.wait().unwrap();
    let killed_at = Instant::now();
    let before_kill = answered.len();
    let (mut node, again) = spawn_node_on(&data, &tls, addr, &[]);
    assert_eq!(again, addr);
    let (status, stderr) = check.finish(&mut answered);
    let (after_kill, total) = (killed_at.elapsed(), started.elapsed());
    println!(
        "kill -9 and restart under `stile check` of {CODES} codes: every code answered \
         {after_kill:?} after the kill ({total:?} in all; {before_kill} answered before it)"
    );
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(answered.len(), CODES, "{stderr}");
    assert_all_admitted(&answered, &texts);
    // The restarted node holds the admits: another gate finds the last code used by gate 1.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let other = Client::connect(client_config(&tls, addr, "gate-2"))
            .await
            .unwrap();
        let o = other.checkin(&codes[CODES - 1], 1).await.unwrap();
        assert_eq!((o.kind, o.gate), (OutcomeKind::AlreadyUsed, 1));
        other.close().await;
    });
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(node.id() as i32, libc::SIGTERM) }, 0);
    assert!(node.wait().unwrap().success());
}

/// A node killed and restarted without its secret (`DATA/node.secret` lost) cannot sign a
/// reset the client accepts: the client finds the connection dead by its idle timeout
/// instead (1 s), well within the check's `--timeout 10s`, and every code is answered. With
/// the client's former 30 s idle timeout the check ended "no answer within 10s". The node
/// makes a new secret.
#[test]
fn a_node_restarted_without_its_secret_is_found_by_the_idle_timeout() {
    const CODES: usize = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let (data, tls) = (dir.path().join("data"), dir.path().join("tls"));
    let (mut node, addr, _, texts) = node_with_codes(&data, &tls, CODES);
    let secret = data.join(stile_node::secret::SECRET_FILE);
    let old = std::fs::read(&secret).unwrap();
    let mut check = Check::spawn(&tls, addr, &["--timeout", "10s"], &texts);
    let mut answered = Vec::with_capacity(CODES);
    check.read_until(&mut answered, CODES / 3);
    node.kill().unwrap(); // SIGKILL
    node.wait().unwrap();
    std::fs::remove_file(&secret).unwrap();
    let (mut node, _) = spawn_node_on(&data, &tls, addr, &[]);
    let (status, stderr) = check.finish(&mut answered);
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(answered.len(), CODES, "{stderr}");
    assert_all_admitted(&answered, &texts);
    assert_ne!(std::fs::read(&secret).unwrap(), old, "a new secret");
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(node.id() as i32, libc::SIGTERM) }, 0);
    assert!(node.wait().unwrap().success());
}

/// A subscription and a gate ride out a node's SIGKILL and restart: the gate's next scan is
/// answered by the restarted node (the stale connection is reset and replaced), and the
/// subscription, resent from the position after the last event it saw, carries that scan's
/// event and no event twice.
#[test]
fn subscriptions_and_gates_resume_after_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tls) = (dir.path().join("data"), dir.path().join("tls"));
    let (mut node, addr, codes, _) = node_with_codes(&data, &tls, 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let (admin, gate, mut sub) = rt.block_on(async {
        let admin = Client::connect(client_config(&tls, addr, "admin-admin"))
            .await
            .unwrap();
        let gate = Client::connect(client_config(&tls, addr, "gate-1"))
            .await
            .unwrap();
        let sub = admin.subscribe(0).await.unwrap();
        (admin, gate, sub)
    });
    let serial = |c: &CodeBytes| c.header().serial;
    let first = rt.block_on(async {
        assert_eq!(
            gate.checkin(&codes[0], 1).await.unwrap().kind,
            OutcomeKind::Admitted
        );
        sub.next().await.unwrap().unwrap()
    });
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].serial, serial(&codes[0]));

    node.kill().unwrap(); // SIGKILL
    node.wait().unwrap();
    let (mut node, _) = spawn_node_on(&data, &tls, addr, &[]);
    let next = rt.block_on(async {
        assert_eq!(
            gate.checkin(&codes[1], 2).await.unwrap().kind,
            OutcomeKind::Admitted
        );
        sub.next().await.unwrap().unwrap()
    });
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(
        (next[0].serial, next[0].state, next[0].gate),
        (serial(&codes[1]), TicketStateName::Used, 1)
    );
    assert!(next[0].seq > first[0].seq);
    rt.block_on(async {
        drop(sub);
        gate.close().await;
        admin.close().await;
    });
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(node.id() as i32, libc::SIGTERM) }, 0);
    assert!(node.wait().unwrap().success());
}

/// A node killed for good in the middle of `stile check`: the check prints the line of every
/// answer it got, then ends with status 1, naming the first code without an answer and its
/// scan id. Run again from there with that scan id once the node is back, it admits the
/// rest, the scan that was in flight at the kill included (answered as it was, if the node
/// made it).
#[test]
fn stile_check_prints_the_answers_it_got_before_an_error_and_how_to_retry() {
    const CODES: usize = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let (data, tls) = (dir.path().join("data"), dir.path().join("tls"));
    let (mut node, addr, _, texts) = node_with_codes(&data, &tls, CODES);
    let mut check = Check::spawn(&tls, addr, &["--timeout", "2s"], &texts);
    let mut answered = Vec::with_capacity(CODES);
    check.read_until(&mut answered, CODES / 3);
    node.kill().unwrap(); // SIGKILL, and no restart
    node.wait().unwrap();
    let (status, stderr) = check.finish(&mut answered);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let n = answered.len();
    assert!((CODES / 3..CODES).contains(&n), "{n} answers: {stderr}");
    assert_all_admitted(&answered, &texts);
    let said = format!(
        "{} of {CODES} code(s) got no answer, from {} on",
        CODES - n,
        texts[n]
    );
    assert!(stderr.contains(&said), "{stderr}");
    assert!(stderr.contains("no answer within 2s"), "{stderr}");
    let scan_id = stderr
        .split("--scan-id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no scan id to retry from: {stderr}"))
        .to_string();

    let (mut node, _) = spawn_node_on(&data, &tls, addr, &[]);
    let retry = Check::spawn(&tls, addr, &["--scan-id", &scan_id], &texts[n..]);
    let mut rest = Vec::new();
    let (status, stderr) = retry.finish(&mut rest);
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(rest.len(), CODES - n);
    assert_all_admitted(&rest, &texts[n..]);
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(node.id() as i32, libc::SIGTERM) }, 0);
    assert!(node.wait().unwrap().success());
}

/// `--snapshot-every` sets how often the node snapshots (once the log moved); a value under a
/// second, or not a duration, is refused with the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_snapshots_as_often_as_it_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tls) = (dir.path().join("data"), dir.path().join("tls"));
    make_certs(&tls);
    for bad in ["10ms", "soon"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stile"))
            .args(["node", "--listen", "127.0.0.1:0", "--snapshot-every", bad])
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("--snapshot-every") && err.contains("(or off)"),
            "{err}"
        );
    }
    let snapshots = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(data.join("snapshots"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    let (mut child, addr) = spawn_node_with(&data, &tls, &["--snapshot-every", "1s"]);
    let admin = Client::connect(client_config(&tls, addr, "admin-admin"))
        .await
        .unwrap();
    admin.mint(spec(1, 10)).await.unwrap();
    let started = std::time::Instant::now();
    while !snapshots()
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "snap"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no snapshot after {:?}: {:?}",
            started.elapsed(),
            snapshots()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(admin);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A node keeps its prepared log segments across a SIGKILL and a restart: the same files,
/// not written anew. A smaller `--log-runway` keeps fewer, and `--sync none` removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_restarts_with_its_prepared_log_segments() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (data, tls) = (dir.path().join("data"), dir.path().join("tls"));
    make_certs(&tls);
    // The whole spares in the log's directory, with their inodes, lowest number first.
    let spares = || -> Vec<(String, u64)> {
        let mut v: Vec<(u64, String, u64)> = std::fs::read_dir(data.join("wal"))
            .map(|d| d.map(|e| e.unwrap()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n = name
                    .strip_prefix("next-segment-ready-")?
                    .strip_suffix(".tmp")?
                    .parse()
                    .ok()?;
                Some((n, name, e.metadata().ok()?.ino()))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, name, ino)| (name, ino)).collect()
    };
    let two_spares = || async {
        let started = Instant::now();
        while spares().len() < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no runway: {:?}",
                spares()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (mut child, addr) = spawn_node_with(&data, &tls, &["--log-runway", "2"]);
    two_spares().await;
    let admin = Client::connect(client_config(&tls, addr, "admin-admin"))
        .await
        .unwrap();
    let codes = admin.mint(spec(1, 10)).await.unwrap();
    drop(admin);
    // The mint moved the log into a spare; its replacement is prepared at once.
    two_spares().await;
    let before = spares();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(spares(), before, "a crash leaves the runway as it was");

    let (mut child, addr) = spawn_node_with(&data, &tls, &["--log-runway", "2"]);
    assert_eq!(spares(), before, "the restart took them as they were");
    let gate = Client::connect(client_config(&tls, addr, "gate-1"))
        .await
        .unwrap();
    let o = gate.checkin(&codes[0], 1).await.unwrap();
    assert_eq!(o.kind, OutcomeKind::Admitted);
    drop(gate);
    // The first write moved the log into the oldest spare; the other is still there, and a
    // new one is prepared after it.
    two_spares().await;
    let now = spares();
    assert_eq!(now[0], before[1], "{now:?} after {before:?}");
    let segments: Vec<u64> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().ino())
        .collect();
    assert!(
        segments.contains(&before[0].1),
        "the oldest is a segment now"
    );
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
    assert_eq!(spares(), now, "a clean stop keeps them too");

    let (mut child, _) = spawn_node_with(&data, &tls, &["--log-runway", "1"]);
    assert_eq!(
        spares(),
        now[..1].to_vec(),
        "a smaller runway keeps the oldest"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, addr) = spawn_node_with(&data, &tls, &["--sync", "none"]);
    assert_eq!(spares(), Vec::new(), "--sync none keeps none");
    // And every check-in is still where it was.
    let gate = Client::connect(client_config(&tls, addr, "gate-2"))
        .await
        .unwrap();
    let o = gate.checkin(&codes[0], 2).await.unwrap();
    assert_eq!((o.kind, o.gate), (OutcomeKind::AlreadyUsed, 1));
    drop(gate);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Regression: a node whose data dir was moved went on by path: it reloaded the TLS files,
/// switched its log into and snapshotted over whatever was at the old path (another node's
/// data), and lost an admit. It now stops, writing nothing at the old path.
#[test]
fn a_node_whose_data_dir_is_moved_stops() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (data, tls) = (dir.path().join("data"), dir.path().join("tls"));
    make_certs(&tls);
    let (mut node, _) = spawn_node(&data, &tls);
    std::fs::rename(&data, dir.path().join("moved")).unwrap();
    let status = crate::support::exit_within_a_minute(&mut node, "the node");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    assert!(!data.exists(), "nothing was made at the old path");
}

/// Regression: with `wal/` or its live segment deleted, a node went on acknowledging changes
/// into an unlinked file, all lost at its next start. It stops instead.
#[test]
fn a_node_whose_log_is_deleted_stops() {
    use std::os::unix::process::ExitStatusExt;
    for victim in ["wal", "live segment"] {
        let dir = tempfile::tempdir().unwrap();
        let (data, tls) = (dir.path().join("data"), dir.path().join("tls"));
        make_certs(&tls);
        let (mut node, _) = spawn_node(&data, &tls);
        let wal = data.join("wal");
        if victim == "wal" {
            std::fs::remove_dir_all(&wal).unwrap();
        } else {
            for e in std::fs::read_dir(&wal).unwrap() {
                let path = e.unwrap().path();
                if path.extension().is_some_and(|x| x == "log") {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
        let status =
            crate::support::exit_within_a_minute(&mut node, &format!("{victim}: the node"));
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{victim}: {status:?}");
    }
}

/// Regression: a check-in sent while the node was down was held by the client and sent
/// once the node was back, after its caller had been told it failed (a timeout): the
/// ticket was voided at a gate that had sent the holder away. A request nobody waits for
/// any more is never sent.
#[test]
fn a_request_given_up_on_is_not_sent_when_the_node_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tls) = (dir.path().join("data"), dir.path().join("tls"));
    let (mut node, addr, codes, _) = node_with_codes(&data, &tls, 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (gate, minter) = rt.block_on(async {
        let connect = |name: &'static str| {
            let mut config = client_config(&tls, addr, name);
            config.request_timeout = std::time::Duration::from_millis(300);
            Client::connect(config)
        };
        (
            connect("gate-1").await.unwrap(),
            connect("admin-admin").await.unwrap(),
        )
    });
    node.kill().unwrap(); // SIGKILL
    node.wait().unwrap();
    rt.block_on(async {
        let e = gate.checkin(&codes[0], 7).await.unwrap_err();
        assert!(
            matches!(e, stile_protocol::client::ClientError::Timeout(_)),
            "{e}"
        );
        // A mint too gives up (the gateway holds a booking's lock while it waits).
        let e = minter.mint(spec(1, 3)).await.unwrap_err();
        assert!(
            matches!(e, stile_protocol::client::ClientError::Timeout(_)),
            "{e}"
        );
    });
    let (mut node, again) = spawn_node_on(&data, &tls, addr, &[]);
    assert_eq!(again, addr);
    rt.block_on(async {
        // The client is back on the node: a later check-in is answered.
        let mut answered = None;
        for _ in 0..100 {
            match gate.checkin(&codes[1], 8).await {
                Ok(o) => {
                    answered = Some(o);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        assert_eq!(answered.map(|o| o.kind), Some(OutcomeKind::Admitted));
        let admin = Client::connect(client_config(&tls, addr, "admin-admin"))
            .await
            .unwrap();
        let info = admin.status(&codes[0]).await.unwrap();
        assert_eq!(
            info.state,
            stile_protocol::frame::TicketStateName::Valid,
            "{info:?}"
        );
        admin.close().await;
        gate.close().await;
        minter.close().await;
    });
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    assert_eq!(unsafe { libc::kill(node.id() as i32, libc::SIGTERM) }, 0);
    assert!(node.wait().unwrap().success());
}

/// A peer that sends requests and never reads the answers makes the node hold what it sent,
/// unread: at most one stream's window for the whole connection, however many streams it
/// opens. (Four streams of 4 MiB each, a connection's 16 MiB, made every connection a gate
/// opened cost the node that much more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_reads_holds_at_most_one_window_of_requests() {
    let n = TestNode::start(|c| c.inflight_per_stream = 16).await;
    let tls = ClientTls::from_files(
        &n.tls.join(certs::CA_CERT),
        &n.tls.join(certs::gate_cert_name(1)),
        &certs::key_path_for(&n.tls.join(certs::gate_cert_name(1))),
    )
    .unwrap();
    let mut rustls = (*tls.tcp_config()).clone();
    rustls.alpn_protocols = vec![stile_protocol::frame::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Room for the node's answers to a few requests only: it stops answering, then reading.
    transport.stream_receive_window(1024u32.into());
    transport.receive_window(1024u32.into());
    transport.send_window(64 << 20);
    config.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, n.addr, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    let mut pings = Vec::new();
    for id in 0..1_000_000u32 {
        stile_protocol::frame::Request::Ping.encode(id, &mut pings);
    }
    let pings = Arc::new(pings);
    let mut streams = Vec::new();
    for _ in 0..stile_node::STREAMS_PER_CONNECTION_MAX {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let pings = pings.clone();
        streams.push(tokio::spawn(async move {
            let mut sent = 0;
            // Until the node grants no more room for a second and a half.
            while sent < pings.len() {
                let write = send.write(&pings[sent..]);
                match tokio::time::timeout(Duration::from_millis(1500), write).await {
                    Ok(Ok(k)) => sent += k,
                    _ => break,
                }
            }
            (sent, send, recv)
        }));
    }
    let mut total = 0;
    let mut kept = Vec::new();
    for s in streams {
        let (sent, send, recv) = s.await.unwrap();
        total += sent;
        kept.push((send, recv));
    }
    assert!(
        total <= 5 << 20,
        "the node took {} KiB it had not read from one connection",
        total >> 10
    );
    conn.close(0u32.into(), b"done");
    drop(kept);
    n.node.unwrap().shutdown().await;
}
