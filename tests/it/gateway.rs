//! The HTTP gateway against a real node on 127.0.0.1: booking with idempotency, QR images
//! read back by a QR decoder, HTTP check-in, status, transfer, revoke, problem+json for bad
//! input, reminders from the outbox across a restart, linked devices and the ticket stream.
//! The holder's page, staff check-in on it and the node event stream's bookkeeping are in
//! `gateway/holder_page.rs`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stile_certs as certs;
use stile_gateway::{Gateway, GatewayConfig};
use stile_protocol::client::ClientTls;
use stile_protocol::{CodeBytes, OutcomeKind};

use crate::node::TestNode;

mod holder_page;

/// A node and a gateway in front of it.
pub struct Fixture {
    pub node: TestNode,
    pub gateway: Option<Gateway>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub api_token: String,
    pub http: reqwest::Client,
}

pub fn admin_tls(tls: &Path) -> ClientTls {
    let cert = tls.join(certs::admin_cert_name("admin"));
    ClientTls::from_files(
        &tls.join(certs::CA_CERT),
        &cert,
        &certs::key_path_for(&cert),
    )
    .unwrap()
}

pub fn gateway_config(node: &TestNode, dir: &Path) -> GatewayConfig {
    let mut c = GatewayConfig::new(
        dir.to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
        node.addr,
        admin_tls(&node.tls),
    );
    c.reminder_poll_ms = 100;
    // The test webhooks listen on loopback.
    c.webhook_private = true;
    c.reminder_backoff_base_ms = 200;
    c.checkin_burst = 5;
    c.checkin_budget_per_s = 1;
    c.checkin_cooldown_ms = 60_000;
    c
}

impl Fixture {
    pub async fn start() -> Fixture {
        // reqwest's rustls without a built-in provider: use ring, as the node does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let node = TestNode::start(|_| {}).await;
        let dir = tempfile::tempdir().unwrap();
        let gateway = Gateway::start(gateway_config(&node, dir.path()))
            .await
            .unwrap();
        let base = format!("http://{}", gateway.local_addr());
        let api_token = gateway.api_token().to_string();
        Fixture {
            node,
            gateway: Some(gateway),
            dir,
            base,
            api_token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub async fn restart_gateway(&mut self, tune: impl FnOnce(&mut GatewayConfig)) {
        if let Some(g) = self.gateway.take() {
            g.shutdown(Duration::from_secs(5)).await;
        }
        let mut config = gateway_config(&self.node, self.dir.path());
        tune(&mut config);
        let g = Gateway::start(config).await.unwrap();
        self.base = format!("http://{}", g.local_addr());
        assert_eq!(
            g.api_token(),
            self.api_token,
            "the API token survives a restart"
        );
        self.gateway = Some(g);
    }

    /// A GET of a public route (no token).
    pub async fn public(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// A GET of a public route asking for JSON (a problem, not the HTML page, for a ticket
    /// link that leads nowhere).
    pub async fn public_json(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
    }

    /// An authorised request to a management route.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.api_token)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .admin(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        json_of(res).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self.admin(reqwest::Method::GET, path).send().await.unwrap();
        json_of(res).await
    }

    /// An event of free seating that expires `expires_in_s` from now and reminds
    /// `lead_s` before that.
    pub async fn reminded_event(&self, expires_in_s: u64, lead_s: u64) -> i64 {
        let now = stile_gateway::now_s();
        self.event(json!({
            "capacity": 10,
            "valid_until": stile_gateway::rfc3339(now + expires_in_s),
            "reminder_lead_s": [lead_s],
        }))
        .await
    }

    /// Provider 1, a gate token for gate `gate`, and an event built from `extra`.
    pub async fn event(&self, extra: Value) -> i64 {
        let (s, _) = self
            .post("/v1/providers", json!({"id": 1, "name": "Arena"}))
            .await;
        assert!(s == 201 || s == 409, "{s}");
        let now = stile_gateway::now_s();
        let mut body = json!({
            "provider": 1, "name": "Cup Final", "venue": "Arena",
            "starts_at": stile_gateway::rfc3339(now + 3600),
            "valid_from": stile_gateway::rfc3339(now - 60),
            "valid_until": stile_gateway::rfc3339(now + 86_400),
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, ev) = self.post("/v1/events", body).await;
        assert_eq!(s, 201, "{ev}");
        ev["id"].as_i64().unwrap()
    }

    pub async fn gate_token(&self, gate: u16) -> String {
        let (s, g) = self
            .post(
                "/v1/providers/1/gates",
                json!({"gate": gate, "name": format!("Gate {gate}")}),
            )
            .await;
        assert_eq!(s, 201, "{g}");
        g["token"].as_str().unwrap().to_string()
    }

    pub async fn book(&self, key: &str, body: Value) -> reqwest::Response {
        self.admin(reqwest::Method::POST, "/v1/bookings")
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Books one free-seating ticket of `event` for `holder`; its code.
    pub async fn book_one(&self, key: &str, event: i64, holder: &str) -> String {
        let body =
            json!({"event": event, "payment_ref": "p", "tickets": [{"holder": {"name": holder}}]});
        let (s, b) = json_of(self.book(key, body).await).await;
        assert_eq!(s, 201, "{b}");
        b["tickets"][0]["code"].as_str().unwrap().to_string()
    }

    pub async fn checkin(&self, token: &str, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}/v1/checkin", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        json_of(res).await
    }

    pub async fn shutdown(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown(Duration::from_secs(5)).await;
        }
        if let Some(n) = self.node.node.take() {
            n.shutdown().await;
        }
    }
}

pub async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asserts a problem+json answer with this status and a detail for people.
async fn assert_problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status);
    let ct = res.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(ct, "application/problem+json");
    let (_, body) = json_of(res).await;
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().unwrap().len() > 10, "{body}");
    body
}

/// The code with its last symbol (part of the tag) changed.
/// The code with one tag symbol changed. The second-to-last symbol: the last one also
/// carries the text form's padding bits, so changing it may leave the bytes as they were.
pub fn flip_last(code: &str) -> String {
    let mut b = code.as_bytes().to_vec();
    let at = b.len() - 2;
    b[at] = if b[at] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).unwrap()
}

/// Decodes a PNG with an ordinary QR decoder.
fn decode_qr_png(png_bytes: &[u8]) -> Vec<String> {
    let decoder = png::Decoder::new(png_bytes);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let bits = info.bit_depth as usize;
    let line = info.line_size;
    let gray = |x: usize, y: usize| -> u8 {
        if bits == 8 {
            buf[y * line + x * channels]
        } else {
            // Sub-byte grayscale: `bits` per pixel, most significant first.
            let bit = x * bits;
            let byte = buf[y * line + bit / 8];
            let v = (byte >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
            (v as u32 * 255 / ((1 << bits) - 1)) as u8
        }
    };
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, gray);
    img.detect_grids()
        .into_iter()
        .map(|g| g.decode().unwrap().1)
        .collect()
}

/// The gateway's transfer is two steps: the node voids the old code and mints the new one,
/// then the database stores the new one. A crash (or a lost answer) between them left the
/// old code void and the new one nowhere. The node now answers a repeated transfer with the
/// same successor, so asking the gateway again completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_the_node_made_but_the_gateway_never_stored_completes_on_retry() {
    let f = Fixture::start().await;
    let event = f.event(json!({"seats": ["B1", "B2"]})).await;
    let res = f
        .book(
            "key-x",
            json!({"event": event, "payment_ref": "p", "tickets": [
                {"seat": "B1", "holder": {"name": "Ada"}},
                {"seat": "B2", "holder": {"name": "Bob"}}]}),
        )
        .await;
    let (s, booking) = json_of(res).await;
    assert_eq!(s, 201, "{booking}");
    let old = booking["tickets"][0]["code"].as_str().unwrap().to_string();

    // The node's half of a transfer, as if the gateway then crashed before its commit.
    let admin = f.node.client("admin-admin").await;
    let made = admin
        .transfer(&stile_protocol::CodeBytes::parse(&old).unwrap())
        .await
        .unwrap();
    let (_, o) = f.get(&format!("/v1/tickets/{old}")).await;
    assert!(o["successor"].is_null(), "{o}");

    let (s, moved) = f
        .post(
            &format!("/v1/tickets/{old}/transfer"),
            json!({"holder": {"name": "Grace Hopper"}}),
        )
        .await;
    assert_eq!(s, 201, "{moved}");
    let new = moved["ticket"]["code"].as_str().unwrap().to_string();
    assert_eq!(new, made.to_text().as_str(), "the code the node made first");
    assert_eq!(moved["ticket"]["holder"], "Grace Hopper");
    let (_, o) = f.get(&format!("/v1/tickets/{old}")).await;
    assert_eq!(o["successor"], new.as_str(), "{o}");
    let (_, n) = f.get(&format!("/v1/tickets/{new}")).await;
    assert_eq!(n["state"], "valid", "{n}");
    // Done now: a further transfer is refused.
    let (s, _) = f
        .post(
            &format!("/v1/tickets/{old}/transfer"),
            json!({"holder": {"name": "X"}}),
        )
        .await;
    assert_eq!(s, 409);

    // Two requests for one ticket at once: the node answers both with one successor, and
    // exactly one of them stores it.
    let other = booking["tickets"][1]["code"].as_str().unwrap().to_string();
    let path = format!("/v1/tickets/{other}/transfer");
    let (a, b) = tokio::join!(
        f.post(&path, json!({"holder": {"name": "Carol"}})),
        f.post(&path, json!({"holder": {"name": "Dave"}})),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "{} {}", a.1, b.1);
    let won = if a.0 == 201 { &a.1 } else { &b.1 };
    let (_, o) = f.get(&format!("/v1/tickets/{other}")).await;
    assert_eq!(o["successor"], won["ticket"]["code"], "{o}");
    drop(admin);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_qr_checkin_status_transfer_round_trip() {
    let f = Fixture::start().await;
    let event = f.event(json!({"seats": ["A1", "A2", "A3", "A4"]})).await;
    let gate = f.gate_token(4).await;
    let body = json!({
        "event": event, "payment_ref": "pay_1",
        "tickets": [
            {"seat": "A1", "holder": {"name": "Ada Lovelace"}},
            {"seat": "A2", "holder": {"name": "Charles Babbage"}},
        ],
    });
    let res = f.book("key-1", body.clone()).await;
    assert_eq!(res.status(), 201);
    let (_, booking) = json_of(res).await;
    let tickets = booking["tickets"].as_array().unwrap().clone();
    assert_eq!(tickets.len(), 2);
    let code = tickets[0]["code"].as_str().unwrap().to_string();

    // An idempotent retry returns the same booking, not a second one.
    let res = f.book("key-1", body.clone()).await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    let (_, again) = json_of(res).await;
    assert_eq!(again, booking);
    // The same key with another body is refused.
    let mut other = body.clone();
    other["payment_ref"] = json!("pay_2");
    assert_problem(f.book("key-1", other).await, 422).await;

    // The PNG decodes to exactly the code.
    let png = f.public(&format!("/v1/tickets/{code}/qr.png")).await;
    assert_eq!(png.headers()["content-type"], "image/png");
    let decoded = decode_qr_png(&png.bytes().await.unwrap());
    assert_eq!(decoded, vec![code.clone()]);
    let svg = f
        .public(&format!("/v1/tickets/{code}/qr.svg"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        svg.contains("Ada Lovelace") && svg.contains("Seat A1"),
        "{svg}"
    );

    let (s, first) = f
        .checkin(&gate, json!({"code": code, "gate": 4, "provider": 1}))
        .await;
    assert_eq!(
        (s, first["outcome"].as_str()),
        (200, Some("admitted")),
        "{first}"
    );
    assert_eq!(first["gate"], 4);
    let (s, second) = f.checkin(&gate, json!({"code": code})).await;
    assert_eq!(
        (s, second["outcome"].as_str()),
        (200, Some("already_used")),
        "{second}"
    );
    assert_eq!(second["outcome_gate"], 4);

    let (s, status) = f.get(&format!("/v1/tickets/{code}")).await;
    assert_eq!(s, 200);
    assert_eq!(status["state"], "used");
    assert_eq!(status["gate"], 4);
    assert_eq!(status["seat"], "A1");
    assert_eq!(status["holder"], "Ada Lovelace");
    assert!(
        status["used_at"].is_string() && status["valid_until"].is_string(),
        "{status}"
    );

    // Transfer the unused second ticket: a new working code, the old one void.
    let old = tickets[1]["code"].as_str().unwrap().to_string();
    let (s, moved) = f
        .post(
            &format!("/v1/tickets/{old}/transfer"),
            json!({"holder": {"name": "Grace Hopper"}}),
        )
        .await;
    assert_eq!(s, 201, "{moved}");
    let new = moved["ticket"]["code"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(moved["ticket"]["holder"], "Grace Hopper");
    assert_eq!(moved["ticket"]["seat"], "A2");
    let (_, o) = f.checkin(&gate, json!({"code": old})).await;
    assert_eq!(o["outcome"], "revoked", "{o}");
    let (_, n) = f.checkin(&gate, json!({"code": new})).await;
    assert_eq!(n["outcome"], "admitted", "{n}");
    let (_, old_status) = f.get(&format!("/v1/tickets/{old}")).await;
    assert_eq!(old_status["state"], "transferred", "{old_status}");
    assert_eq!(old_status["transferred"], true, "{old_status}");
    assert_eq!(old_status["successor"], new.as_str());
    // The booking shows the original code as transferred, and not the new holder's code.
    let (s, b) = f.get(&format!("/v1/bookings/{}", booking["id"])).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["tickets"][1]["code"], old.as_str());
    assert_eq!(b["tickets"][1]["transferred"], true, "{b}");
    assert_eq!(b["tickets"][0]["transferred"], false, "{b}");
    assert!(!b.to_string().contains(&new), "{b}");
    // Asked again for the same holder (its answer lost, say): the same successor, 200.
    let (s, again) = f
        .post(
            &format!("/v1/tickets/{old}/transfer"),
            json!({"holder": {"name": "Grace Hopper"}}),
        )
        .await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["ticket"]["code"], new.as_str(), "{again}");
    assert_eq!(again["voided"], old.as_str(), "{again}");
    // For someone else, a transferred ticket cannot be transferred again.
    let (s, _) = f
        .post(
            &format!("/v1/tickets/{old}/transfer"),
            json!({"holder": {"name": "X"}}),
        )
        .await;
    assert_eq!(s, 409);

    // Revoke: the gate refuses it.
    let third = f
        .book("key-2", json!({"event": event, "payment_ref": "p", "tickets": [{"seat": "A3", "holder": {"name": "Alan"}}]}))
        .await;
    let (_, third) = json_of(third).await;
    let c3 = third["tickets"][0]["code"].as_str().unwrap().to_string();
    let (s, r) = f.post(&format!("/v1/tickets/{c3}/revoke"), json!({})).await;
    assert_eq!((s, r["state"].as_str()), (200, Some("revoked")), "{r}");
    let (_, o) = f.checkin(&gate, json!({"code": c3})).await;
    assert_eq!(o["outcome"], "revoked");

    // Occupancy and attendance follow the node's events.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, occ) = f.get(&format!("/v1/events/{event}/occupancy")).await;
        if occ["entries"] == 2 {
            assert_eq!(occ["gates"][0]["gate"], 4);
            assert_eq!(occ["inside"], 2, "{occ}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "occupancy never reached 2 entries: {occ}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let csv = f
        .admin(
            reqwest::Method::GET,
            &format!("/v1/events/{event}/attendance.csv"),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 4, "{csv}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&code) && l.contains(",used,")),
        "{csv}"
    );
    let moved = lines
        .iter()
        .find(|l| l.starts_with(&old) && l.contains(",transferred,"))
        .unwrap_or_else(|| panic!("{csv}"));
    // Never scanned: no gate, rather than a gate 0 that does not exist.
    let cells: Vec<&str> = moved.split(',').collect();
    assert_eq!(cells[cells.len() - 3], "", "last_gate of {moved}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_problem_json_and_changes_nothing() {
    let f = Fixture::start().await;
    let event = f.event(json!({"seats": ["B1", "B2"]})).await;
    let gate = f.gate_token(1).await;
    let ok = f
        .book("k0", json!({"event": event, "payment_ref": "p", "tickets": [{"seat": "B1", "holder": {"name": "A"}}]}))
        .await;
    assert_eq!(ok.status(), 201);
    let (_, ok) = json_of(ok).await;
    let code = ok["tickets"][0]["code"].as_str().unwrap().to_string();

    let url = |p: &str| format!("{}{p}", f.base);
    // Malformed JSON, wrong content type, unknown field, missing key, too large.
    let res = f
        .admin(reqwest::Method::POST, "/v1/bookings")
        .header("idempotency-key", "k1")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(res, 400).await;
    let res = f
        .admin(reqwest::Method::POST, "/v1/bookings")
        .header("idempotency-key", "k1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_problem(res, 415).await;
    let res = f
        .book(
            "k1",
            json!({"event": event, "payment_ref": "p", "tickets": [], "colour": 1}),
        )
        .await;
    assert_problem(res, 422).await;
    let res = f.admin(reqwest::Method::POST, "/v1/bookings")
        .json(&json!({"event": event, "payment_ref": "p", "tickets": [{"seat": "B2", "holder": {"name": "A"}}]}))
        .send().await.unwrap();
    assert_problem(res, 400).await;
    let big = "x".repeat(stile_gateway::BODY_MAX_BYTES + 1);
    let res = f
        .book(
            "k1",
            json!({"event": event, "payment_ref": big, "tickets": []}),
        )
        .await;
    assert_problem(res, 413).await;
    // Values that make no sense.
    for (key, body, status) in [
        (
            "k2",
            json!({"event": event, "payment_ref": "p", "tickets": [{"seat": "B1", "holder": {"name": "A"}}]}),
            409,
        ),
        (
            "k3",
            json!({"event": event, "payment_ref": "p", "tickets": [{"seat": "Z9", "holder": {"name": "A"}}]}),
            422,
        ),
        (
            "k4",
            json!({"event": event, "payment_ref": "p", "tickets": [{"holder": {"name": "A"}}]}),
            422,
        ),
        (
            "k5",
            json!({"event": event, "payment_ref": "p", "tickets": [{"seat": "B2", "holder": {"name": " "}}]}),
            422,
        ),
        (
            "k6",
            json!({"event": event, "payment_ref": "p", "tickets": [{"seat": "B2", "holder": {"name": "A", "webhook": "ftp://x"}}]}),
            422,
        ),
        (
            "k7",
            json!({"event": 999, "payment_ref": "p", "tickets": [{"seat": "B2", "holder": {"name": "A"}}]}),
            404,
        ),
        (
            "k8",
            json!({"event": event, "payment_ref": "p", "tickets": [{"seat": "B2", "holder": {"name": "A"}}, {"seat": "B2", "holder": {"name": "B"}}]}),
            422,
        ),
    ] {
        let res = f.book(key, body).await;
        assert_problem(res, status).await;
    }
    // Events that could sell nothing, or be valid for no time, are refused, not stored.
    for bad in [
        json!({"provider": 1, "name": "E", "venue": "V", "starts_at": "2030-01-01T00:00:00Z", "capacity": 0}),
        json!({"provider": 1, "name": "E", "venue": "V", "starts_at": "2030-01-01T00:00:00Z", "valid_for_s": 0}),
    ] {
        let res = f
            .admin(reqwest::Method::POST, "/v1/events")
            .json(&bad)
            .send()
            .await
            .unwrap();
        let p = assert_problem(res, 422).await;
        assert!(p["detail"].as_str().unwrap().contains("at least 1"), "{p}");
    }
    // Auth: no token, wrong token, a gate token on a management route.
    let res = f
        .http
        .get(url(&format!("/v1/events/{event}")))
        .send()
        .await
        .unwrap();
    assert_problem(res, 401).await;
    let res = f
        .http
        .get(url(&format!("/v1/events/{event}")))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_problem(res, 401).await;
    let res = f
        .http
        .get(url(&format!("/v1/events/{event}")))
        .bearer_auth(&gate)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401).await;
    // A request head over the bound is refused before any handler runs.
    let res = f
        .http
        .get(url("/healthz"))
        .header("x-filler", "a".repeat(4 * stile_gateway::HEAD_MAX_BYTES))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 431);
    // Unknown route, wrong method, bad code, unknown code.
    assert_problem(f.http.get(url("/v2/nothing")).send().await.unwrap(), 404).await;
    assert_problem(f.http.put(url("/v1/checkin")).send().await.unwrap(), 405).await;
    assert_problem(
        f.http
            .get(url("/v1/tickets/not-a-code!"))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    let unknown = flip_last(&code);
    assert_problem(
        f.http
            .get(url(&format!("/v1/tickets/{unknown}")))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    // HTTP check-in: a body that disagrees with the token is refused and checks nothing in.
    let res = f
        .http
        .post(url("/v1/checkin"))
        .bearer_auth(&gate)
        .json(&json!({"code": code, "gate": 2}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 403).await;
    let res = f
        .http
        .post(url("/v1/checkin"))
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 401).await;

    // Nothing changed: one booking's ticket, still valid; seat B2 still free.
    let (_, st) = f.get(&format!("/v1/tickets/{code}")).await;
    assert_eq!(st["state"], "valid");
    let (_, occ) = f.get(&format!("/v1/events/{event}/occupancy")).await;
    assert_eq!(occ["tickets"], 1, "{occ}");
    let res = f
        .book("k9", json!({"event": event, "payment_ref": "p", "tickets": [{"seat": "B2", "holder": {"name": "A"}}]}))
        .await;
    assert_eq!(res.status(), 201);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_codes_spend_the_gate_token_budget() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let flood = f.gate_token(1).await;
    let calm = f.gate_token(2).await;
    let code = f.book_one("k", event, "A").await;
    // Flip a symbol of the tag: forged.
    let forged = flip_last(&code);
    let mut limited = 0;
    for _ in 0..20 {
        let (s, o) = f.checkin(&flood, json!({"code": forged})).await;
        assert!(
            o["outcome"] == "forged" || (s == 429 && o["outcome"] == "rate_limited"),
            "{o}"
        );
        limited += usize::from(s == 429);
    }
    assert!(
        limited >= 10,
        "the budget (burst 5) held back only {limited} of 20"
    );
    // The flooding gate is cooling down even for a genuine code; the other gate is not.
    let (s, _) = f.checkin(&flood, json!({"code": code})).await;
    assert_eq!(s, 429);
    let res = f
        .http
        .post(format!("{}/v1/checkin", f.base))
        .bearer_auth(&flood)
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("retry-after"));
    let limited = assert_problem(res, 429).await;
    assert_eq!(
        limited["outcome"], "rate_limited",
        "the check-in fields ride along: {limited}"
    );
    let (s, o) = f.checkin(&calm, json!({"code": code})).await;
    assert_eq!((s, o["outcome"].as_str()), (200, Some("admitted")));
    f.shutdown().await;
}

/// A webhook receiver on 127.0.0.1 that fails the first `fail_first` requests.
async fn webhook_receiver(
    fail_first: usize,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    Arc<std::sync::Mutex<Vec<Value>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (s, b) = (seen.clone(), bodies.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let (s, b) = (s.clone(), b.clone());
            async move {
                let n = s.fetch_add(1, Ordering::SeqCst);
                if n < fail_first {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                b.lock().unwrap().push(body.0);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen, bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminder_is_delivered_once_across_a_gateway_restart() {
    let mut f = Fixture::start().await;
    let (hook, attempts, delivered) = webhook_receiver(1).await;
    // Expires in 8 s, reminded 5 s before: due about 3 s from now.
    let event = f.reminded_event(8, 5).await;
    let res = f
        .book(
            "k",
            json!({"event": event, "payment_ref": "p",
            "tickets": [{"holder": {"name": "Ada", "webhook": format!("http://{hook}/hook")}}]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let (_, b) = json_of(res).await;
    let code = b["tickets"][0]["code"].as_str().unwrap().to_string();
    // Stop the gateway before the reminder is due; a new process takes the outbox over.
    f.restart_gateway(|_| {}).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 0, "sent before it was due");
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no reminder within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first attempt failed (503) and was retried; give a duplicate time to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.restart_gateway(|_| {}).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let bodies = delivered.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "delivered once: {bodies:?}");
    assert_eq!(bodies[0]["code"], code.as_str());
    assert_eq!(bodies[0]["lead_s"], 5);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_reach_only_public_addresses_unless_allowed() {
    let mut f = Fixture::start().await;
    f.restart_gateway(|c| c.webhook_private = false).await;
    let (hook, attempts, _) = webhook_receiver(0).await;
    // Reminded 3 s before it expires in 4 s: due about a second from now.
    let event = f.reminded_event(4, 3).await;
    let booking = |webhook: String| {
        json!({"event": event, "payment_ref": "p",
            "tickets": [{"holder": {"name": "Ada", "webhook": webhook}}]})
    };
    // An address in the URL is refused at booking, and nothing is booked.
    let refused = f.book("a", booking(format!("http://{hook}/hook"))).await;
    let p = assert_problem(refused, 422).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("not public") && detail.contains("--webhook-private"),
        "{p}"
    );
    for url in [
        "http://[::1]/h",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/h",
    ] {
        assert_problem(f.book("a", booking(url.into())).await, 422).await;
    }
    // A name is resolved when the reminder is sent: one that points at loopback is booked
    // and never reached.
    let res = f
        .book(
            "b",
            booking(format!("http://localhost:{}/hook", hook.port())),
        )
        .await;
    assert_eq!(res.status(), 201);
    let failures = "stile_gateway_reminder_failures_total 1";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = f.public("/metrics").await.text().await.unwrap();
        if metrics.contains(failures) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no attempt within 20 s: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        0,
        "the loopback webhook was reached"
    );
    f.shutdown().await;
}

/// Reads server-sent events from `res` until `want` events named `name` arrived.
async fn read_sse(
    mut res: reqwest::Response,
    name: &str,
    want: usize,
    deadline: Instant,
) -> Vec<Value> {
    let mut buf = String::new();
    let mut found = Vec::new();
    while found.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, res.chunk())
            .await
            .unwrap_or_else(|_| panic!("no `{name}` event in time; got {buf}"))
            .unwrap()
            .expect("stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if event == name {
                found.push(serde_json::from_str(&data).unwrap());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_devices_both_receive_a_checkin_event() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let gate = f.gate_token(7).await;
    let (s, account) = f.post("/v1/accounts", json!({"name": "Ada"})).await;
    assert_eq!(s, 201);
    let id = account["id"].as_i64().unwrap();
    let mut streams = Vec::new();
    for name in ["phone", "watch"] {
        let (s, dev) = f
            .post(&format!("/v1/accounts/{id}/devices"), json!({"name": name}))
            .await;
        assert_eq!(s, 201, "{dev}");
        let res = f
            .http
            .get(format!("{}/v1/devices/events", f.base))
            .bearer_auth(dev["token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        streams.push(res);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut ready = Vec::new();
    for res in streams {
        // Read the `ready` event so the stream is live before the check-in.
        let mut res = res;
        let mut buf = String::new();
        while !buf.contains("event: ready") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), res.chunk())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
        ready.push(res);
    }
    let res = f
        .book("k", json!({"event": event, "account": id, "payment_ref": "p", "tickets": [{"holder": {"name": "Ada"}}]}))
        .await;
    let (_, b) = json_of(res).await;
    let code = b["tickets"][0]["code"].as_str().unwrap().to_string();
    let (_, o) = f.checkin(&gate, json!({"code": code})).await;
    assert_eq!(o["outcome"], "admitted");
    let mut handles = Vec::new();
    for res in ready {
        handles.push(tokio::spawn(async move {
            let issued = read_sse(res, "used", 1, deadline).await;
            issued[0].clone()
        }));
    }
    for h in handles {
        let used = h.await.unwrap();
        assert_eq!(used["code"], code.as_str());
        assert_eq!(used["gate"], 7);
    }
    // A wrong device token gets 401.
    let res = f.public("/v1/devices/events?token=nope").await;
    assert_problem(res, 401).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_stream_turns_used_without_polling() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let gate = f.gate_token(3).await;
    let code = f.book_one("k", event, "Ada").await;
    let page = f.public(&format!("/t/{code}")).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("data-state=\"valid\"") && html.contains("Ada"),
        "{html}"
    );
    let res = f.public(&format!("/t/{code}/events")).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let task = tokio::spawn(async move { read_sse(res, "ticket", 2, deadline).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, o) = f.checkin(&gate, json!({"code": code})).await;
    assert_eq!(o["outcome"], "admitted");
    let states = task.await.unwrap();
    assert_eq!(states[0]["state"], "valid");
    assert_eq!(states[1]["state"], "used");
    assert_eq!(states[1]["gate"], 3);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_metrics_openapi_and_https() {
    let mut f = Fixture::start().await;
    let (s, h) = json_of(f.public("/healthz").await).await;
    assert_eq!((s, h["status"].as_str()), (200, Some("ready")));
    let (s, api) = json_of(f.public("/openapi.json").await).await;
    assert_eq!(s, 200);
    for path in [
        "/v1/bookings",
        "/v1/tickets/{code}",
        "/v1/tickets/{code}/qr.png",
        "/v1/checkin",
        "/t/{code}",
    ] {
        assert!(
            api["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    // Made-up methods share one label, so they cannot grow the metrics without bound.
    for m in ["FOO1", "FOO2"] {
        let res = f
            .http
            .request(
                reqwest::Method::from_bytes(m.as_bytes()).unwrap(),
                format!("{}/healthz", f.base),
            )
            .send()
            .await
            .unwrap();
        assert_problem(res, 405).await;
    }
    let metrics = f.public("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            "stile_gateway_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("method=\"OTHER\",route=\"/healthz\",status=\"405\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("FOO1"));

    // HTTPS with a certificate for 127.0.0.1.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (
        f.dir.path().join("https.crt"),
        f.dir.path().join("https.key"),
    );
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    f.restart_gateway(|c| c.https = Some((cert_path.clone(), key_path.clone())))
        .await;
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .use_rustls_tls()
        .build()
        .unwrap();
    let addr = f.gateway.as_ref().unwrap().local_addr();
    let res = https
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Plain HTTP on the HTTPS port gets nothing useful.
    assert!(f
        .http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true));

    // Not ready once the node is gone.
    f.node.node.take().unwrap().shutdown().await;
    let res = https
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 503).await;
    f.shutdown().await;
}

/// A gate has one HTTP token: issuing another replaces it, and revoking it refuses the gate's
/// scans from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_token_is_replaced_by_the_next_and_revoked_for_good() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let first = f.gate_token(4).await;
    let second = f.gate_token(4).await;
    let other = f.gate_token(5).await;
    let code = f.book_one("k", event, "Ada").await;
    let (s, _) = f.checkin(&first, json!({"code": code})).await;
    assert_eq!(s, 401, "the replaced token is refused");
    let (s, o) = f.checkin(&second, json!({"code": code})).await;
    assert_eq!((s, o["outcome"].as_str()), (200, Some("admitted")), "{o}");
    let revoke = |gate: u16| {
        f.admin(
            reqwest::Method::DELETE,
            &format!("/v1/providers/1/gates/{gate}"),
        )
        .send()
    };
    assert_eq!(revoke(4).await.unwrap().status(), 204);
    let (s, _) = f.checkin(&second, json!({"code": code})).await;
    assert_eq!(s, 401, "the revoked token is refused");
    assert_problem(revoke(4).await.unwrap(), 404).await;
    // Another gate's token is untouched.
    let (s, o) = f.checkin(&other, json!({"code": code})).await;
    assert_eq!(
        (s, o["outcome"].as_str()),
        (200, Some("already_used")),
        "{o}"
    );
    f.shutdown().await;
}

/// HTTP check-in errors are problems too: a body over the limit (checked only once the token
/// is known), and a node that cannot answer, whose problem names the scan id the gateway
/// chose, so the scanner can ask again for the same scan's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_in_errors_are_problems_and_name_the_scan_id() {
    let mut f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let gate = f.gate_token(1).await;
    let code = f.book_one("k", event, "Ada").await;
    let post = |body: String, token: Option<&str>| {
        let req = f
            .http
            .post(format!("{}/v1/checkin", f.base))
            .header("content-type", "application/json")
            .body(body);
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    };
    let big = format!(
        "{{\"code\": \"{}\"}}",
        "x".repeat(stile_gateway::BODY_MAX_BYTES)
    );
    assert_problem(post(big.clone(), None).send().await.unwrap(), 401).await;
    assert_problem(post(big, Some(&gate)).send().await.unwrap(), 413).await;

    f.node.node.take().unwrap().shutdown().await;
    let body = json!({"code": code}).to_string();
    let res = post(body, Some(&gate)).send().await.unwrap();
    let problem = assert_problem(res, 503).await;
    assert!(problem["scan_id"].as_u64().is_some(), "{problem}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_ticket_image_is_drawn_for_the_current_step_and_admitted() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10, "rotating": true})).await;
    let gate = f.gate_token(9).await;
    let res = f
        .book(
            "k",
            json!({"event": event, "payment_ref": "p", "tickets": [{"holder": {"name": "Ada"}}]}),
        )
        .await;
    let (_, b) = json_of(res).await;
    let code = b["tickets"][0]["code"].as_str().unwrap().to_string();
    assert_eq!(code.len(), 34, "a rotating code is 34 symbols");
    let (_, t) = f.get(&format!("/v1/tickets/{code}")).await;
    assert_eq!(
        (t["rotating"].as_bool(), t["step_s"].as_u64()),
        (Some(true), Some(30)),
        "{t}"
    );
    // The image by the page link the booking gave (its codes open no public route).
    let res = f.public(b["tickets"][0]["qr_png"].as_str().unwrap()).await;
    assert_eq!(res.headers()["cache-control"], "no-store");
    let drawn = decode_qr_png(&res.bytes().await.unwrap());
    assert_eq!(drawn.len(), 1);
    assert_eq!(drawn[0].len(), 34);
    assert_eq!(drawn[0][..16], code[..16], "same ticket header (bytes 0-9)");
    // The code drawn by the gateway's clock opens the gate.
    let (_, o) = f.checkin(&gate, json!({"code": drawn[0]})).await;
    assert_eq!(o["outcome"], "admitted", "{o}");
    // Any step's code finds the ticket; a code with the ticket's number but a made-up tag
    // finds nothing (else the image route would draw a working code for a forger).
    let (s, t) = f.get(&format!("/v1/tickets/{}", drawn[0])).await;
    assert_eq!((s, t["code"].as_str()), (200, Some(code.as_str())));
    let forged = flip_last(&drawn[0]);
    let (s, _) = f.get(&format!("/v1/tickets/{forged}")).await;
    assert_eq!(
        s, 404,
        "a made-up tag finds nothing, even with the API token"
    );
    for path in [
        format!("/v1/tickets/{forged}"),
        format!("/v1/tickets/{forged}/qr.png"),
        format!("/t/{forged}"),
    ] {
        let res = f.public_json(&path).await;
        assert_problem(res, 404).await;
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_route_to_their_own_node() {
    use stile_engine::{Engine, EngineConfig, SystemClock};
    use stile_node::{Node, NodeConfig};
    let f = Fixture::start().await;
    // A second node of the same deployment (same CA and node certificate).
    let data_b = f.dir.path().join("node-b");
    let engine = Engine::open(&data_b, EngineConfig::default(), Arc::new(SystemClock)).unwrap();
    let node_b = Node::start(
        Arc::new(engine),
        NodeConfig::new("127.0.0.1:0".parse().unwrap(), f.node.tls.clone()),
    )
    .unwrap();
    let b = node_b.local_addr();
    let res = f
        .admin(reqwest::Method::PUT, "/v1/providers/2")
        .json(&json!({"name": "Rail", "node": b.to_string()}))
        .send()
        .await
        .unwrap();
    let (s, p) = json_of(res).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (p["node"].as_str(), p["routed"].as_bool()),
        (Some(b.to_string().as_str()), Some(true))
    );
    let now = stile_gateway::now_s();
    let (s, ev) = f
        .post(
            "/v1/events",
            json!({"provider": 2, "name": "Day pass", "venue": "Line 1",
            "starts_at": stile_gateway::rfc3339(now), "valid_for_s": 86_400,
            "entry": "entry_exit", "max_entries": 0}),
        )
        .await;
    assert_eq!(s, 201, "{ev}");
    let res = f
        .book("k", json!({"event": ev["id"], "payment_ref": "p", "tickets": [{"holder": {"name": "Ada"}}]}))
        .await;
    let (s, bk) = json_of(res).await;
    assert_eq!(s, 201, "{bk}");
    let code = bk["tickets"][0]["code"].as_str().unwrap().to_string();
    let bytes = stile_protocol::CodeBytes::parse(&code).unwrap();
    // Minted on node B, unknown on node A.
    let on_a = f.node.client("admin-admin").await.status(&bytes).await;
    assert!(on_a.is_err(), "{on_a:?}");
    let mut cfg = crate::node::client_config(&f.node.tls, b, "admin-admin");
    cfg.server_name = "127.0.0.1".into();
    let on_b = stile_protocol::client::Client::connect(cfg)
        .await
        .unwrap()
        .status(&bytes)
        .await;
    assert!(on_b.is_ok(), "{on_b:?}");
    // HTTP check-in with a provider-2 gate goes to node B, and B's events reach occupancy.
    let (s, g) = f
        .post(
            "/v1/providers/2/gates",
            json!({"gate": 1, "name": "Turnstile 1"}),
        )
        .await;
    assert_eq!(s, 201);
    let (_, o) = f
        .checkin(g["token"].as_str().unwrap(), json!({"code": code}))
        .await;
    assert_eq!(o["outcome"], "admitted", "{o}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, occ) = f.get(&format!("/v1/events/{}/occupancy", ev["id"])).await;
        if occ["inside"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node B's event never arrived: {occ}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, t) = f.get(&format!("/v1/tickets/{code}")).await;
    assert_eq!(
        (t["state"].as_str(), t["inside"].as_bool()),
        (Some("valid"), Some(true)),
        "{t}"
    );
    node_b.shutdown().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_bookings_sell_a_seat_once_and_a_key_books_once() {
    let f = Fixture::start().await;
    let event = f.event(json!({"seats": ["C1", "C2"]})).await;
    let seat = |s: &str| json!({"event": event, "payment_ref": "p", "tickets": [{"seat": s, "holder": {"name": "A"}}]});
    // Eight buyers, one seat, eight keys: exactly one wins, the others get 409.
    let book = |key: String, body: Value| {
        let req = f
            .admin(reqwest::Method::POST, "/v1/bookings")
            .header("idempotency-key", key)
            .json(&body);
        async move { json_of(req.send().await.unwrap()).await }
    };
    let answers: Vec<u16> =
        crate::node::futures_join((0..8).map(|i| book(format!("seat-{i}"), seat("C1"))))
            .await
            .into_iter()
            .map(|(s, _)| s)
            .collect();
    assert_eq!(
        answers.iter().filter(|s| **s == 201).count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|s| *s == 201 || *s == 409),
        "{answers:?}"
    );
    // Eight retries of one key at once: one booking; each answer is it or "still running".
    let answers =
        crate::node::futures_join((0..8).map(|_| book("same-key".into(), seat("C2")))).await;
    let ids: Vec<i64> = answers
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, b)| b["id"].as_i64().unwrap())
        .collect();
    assert!(!ids.is_empty(), "{answers:?}");
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "two bookings for one key: {ids:?}"
    );
    assert!(
        answers.iter().all(|(s, _)| *s == 201 || *s == 409),
        "{answers:?}"
    );
    let (_, occ) = f.get(&format!("/v1/events/{event}/occupancy")).await;
    assert_eq!(occ["tickets"], 2, "{occ}");
    f.shutdown().await;
}

/// A booking of `body` with `key` at the gateway at `base`; the status and body.
fn book_at(
    f: &Fixture,
    base: &str,
    key: &str,
    body: Value,
) -> impl std::future::Future<Output = (u16, Value)> + Send + 'static {
    let req = f
        .http
        .post(format!("{base}/v1/bookings"))
        .bearer_auth(&f.api_token)
        .header("idempotency-key", key)
        .json(&body);
    async move { json_of(req.send().await.unwrap()).await }
}

/// A second gateway process on the same database: refused on the same directory; and even
/// when an operator gets round that (a directory of symlinks to the same files), capacity,
/// seats and idempotency keys hold, because the database holds them, and every refusal is
/// a 409 problem, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_database_sell_capacity_once_and_a_key_books_once() {
    let f = Fixture::start().await;
    let second = Gateway::start(gateway_config(&f.node, f.dir.path())).await;
    match second {
        Err(stile_gateway::GatewayError::Locked(dir)) => assert_eq!(dir, f.dir.path()),
        other => panic!("a second gateway on the same directory started: {other:?}"),
    }
    let twin_dir = tempfile::tempdir().unwrap();
    for file in [stile_gateway::DB_FILE, stile_gateway::API_TOKEN_FILE] {
        std::os::unix::fs::symlink(f.dir.path().join(file), twin_dir.path().join(file)).unwrap();
    }
    let twin = Gateway::start(gateway_config(&f.node, twin_dir.path()))
        .await
        .unwrap();
    let bases = [f.base.clone(), format!("http://{}", twin.local_addr())];

    // 40 buyers over both gateways, 10 places: exactly 10 sold, every other answer 409.
    let capped = f.event(json!({"capacity": 10})).await;
    let body = json!({"event": capped, "payment_ref": "p", "tickets": [{"holder": {"name": "A"}}]});
    let answers = crate::node::futures_join(
        (0..40).map(|i| book_at(&f, &bases[i % 2], &format!("cap-{i}"), body.clone())),
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        10,
        "{answers:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{answers:?}"
    );
    let (_, occ) = f.get(&format!("/v1/events/{capped}/occupancy")).await;
    assert_eq!(occ["tickets"], 10, "{occ}");

    // One seat asked for at both gateways at once: one sale, and 409s.
    let seated = f.event(json!({"seats": ["C1", "C2"]})).await;
    let seat = |s: &str| json!({"event": seated, "payment_ref": "p", "tickets": [{"seat": s, "holder": {"name": "A"}}]});
    let answers = crate::node::futures_join(
        (0..8).map(|i| book_at(&f, &bases[i % 2], &format!("seat-{i}"), seat("C1"))),
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{answers:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{answers:?}"
    );

    // One key sent to both gateways at once: one booking.
    let answers = crate::node::futures_join(
        (0..8).map(|i| book_at(&f, &bases[i % 2], "same-key", seat("C2"))),
    )
    .await;
    let ids: Vec<i64> = answers
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, b)| b["id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "two bookings for one key: {answers:?}"
    );
    assert!(
        answers.iter().all(|(s, _)| *s == 201 || *s == 409),
        "{answers:?}"
    );
    let (s, again) = book_at(&f, &bases[1], "same-key", seat("C2")).await;
    assert_eq!(
        again["id"].as_i64(),
        ids.first().copied().or(again["id"].as_i64())
    );
    assert_eq!(s, 201, "{again}");
    let (_, occ) = f.get(&format!("/v1/events/{seated}/occupancy")).await;
    assert_eq!(occ["tickets"], 2, "C1 once and C2 once: {occ}");
    twin.shutdown(Duration::from_secs(5)).await;
    f.shutdown().await;
}

/// The gateway's directory is 0700 and its database files 0600 whatever the umask (they
/// hold every code, holder and rotating key), even when the directory was made before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let node = TestNode::start(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let gw_dir = dir.path().join("gateway");
    // SAFETY: umask(2) only sets the process's file mode mask; 022 is the usual value.
    unsafe { libc::umask(0o022) };
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&gw_dir)
        .unwrap();
    let g = Gateway::start(gateway_config(&node, &gw_dir))
        .await
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&gw_dir), 0o700);
    for suffix in ["", "-wal", "-shm"] {
        let file = gw_dir.join(format!("{}{suffix}", stile_gateway::DB_FILE));
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    assert_eq!(mode(&gw_dir.join(stile_gateway::API_TOKEN_FILE)), 0o600);
    g.shutdown(Duration::from_secs(5)).await;
    // Loosened by hand and started again: private again, the API token too.
    let token = gw_dir.join(stile_gateway::API_TOKEN_FILE);
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let g = Gateway::start(gateway_config(&node, &gw_dir))
        .await
        .unwrap();
    assert_eq!(mode(&token), 0o600, "the API token");
    g.shutdown(Duration::from_secs(5)).await;
    // A guessable token written by hand is refused, and says how to get a good one.
    std::fs::write(&token, "short\n").unwrap();
    let Err(err) = Gateway::start(gateway_config(&node, &gw_dir)).await else {
        panic!("a short API token was accepted");
    };
    assert!(err.to_string().contains("at least 32"), "{err}");
    // Stopped before its data dir goes: a node that finds its data dir gone aborts the
    // process (and with it every test running beside this one).
    node.node.unwrap().shutdown().await;
}

/// Reads server-sent events from `res` until one named `name`; every block read, as text.
async fn sse_text_until(res: &mut reqwest::Response, name: &str) -> String {
    let mut buf = String::new();
    let marker = format!("event: {name}");
    while !buf.contains(&marker) {
        let chunk = tokio::time::timeout(Duration::from_secs(15), res.chunk())
            .await
            .unwrap_or_else(|_| panic!("no `{name}` event; got {buf}"))
            .unwrap()
            .expect("stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    buf
}

/// A check-in wakes only the streams of its own ticket: an idle stream of another ticket is
/// not woken (counted by `stile_gateway_sse_wakeups_total`), and one client address cannot
/// open more than its share of streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_in_wakes_only_the_streams_of_its_ticket() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 200})).await;
    let gate = f.gate_token(3).await;
    let idle = f.book_one("a", event, "Idle").await;
    let mut busy = Vec::new();
    for i in 0..3 {
        busy.push(f.book_one(&format!("b{i}"), event, "Busy").await);
    }
    let watched = f.book_one("w", event, "Watched").await;
    let mut idle_streams = Vec::new();
    for _ in 0..4 {
        let mut s = f.public(&format!("/t/{idle}/events")).await;
        sse_text_until(&mut s, "ticket").await;
        idle_streams.push(s);
    }
    let mut watched_stream = f.public(&format!("/t/{watched}/events")).await;
    sse_text_until(&mut watched_stream, "ticket").await;
    for code in &busy {
        let (_, o) = f.checkin(&gate, json!({"code": code})).await;
        assert_eq!(o["outcome"], "admitted");
    }
    let (_, o) = f.checkin(&gate, json!({"code": watched})).await;
    assert_eq!(o["outcome"], "admitted");
    // The node's events come in order: the busy tickets' changes were published before this.
    let used = sse_text_until(&mut watched_stream, "ticket").await;
    assert!(used.contains("\"state\":\"used\""), "{used}");
    let metrics = f.public("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("stile_gateway_sse_wakeups_total 1\n"),
        "one wake-up (the watched stream's), none for the 4 idle streams: {metrics}"
    );
    // One client address holds at most its share of stream slots.
    let (s, many) = json_of(
        f.book(
            "m",
            json!({"event": event, "payment_ref": "p",
                "tickets": vec![json!({"holder": {"name": "M"}}); 64]}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{many}");
    let mut open = idle_streams.len() + 1;
    let mut refused = None;
    for t in many["tickets"].as_array().unwrap() {
        let res = f
            .public(&format!("/t/{}/events", t["code"].as_str().unwrap()))
            .await;
        if res.status() == 429 {
            refused = Some(res);
            break;
        }
        open += 1;
        idle_streams.push(res);
    }
    assert_eq!(open, stile_gateway::live::SSE_STREAMS_PER_CLIENT_MAX);
    let p = assert_problem(refused.expect("the cap was never reached"), 429).await;
    assert!(p["detail"].as_str().unwrap().contains("per client"), "{p}");
    drop(idle_streams);
    f.shutdown().await;
}

/// An unlinked device's token stops at once (its open stream ends, a new one is refused),
/// and the token never needs to be in a URL: a single-use stream ticket opens a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlinked_device_stops_at_once_and_tokens_stay_out_of_urls() {
    let f = Fixture::start().await;
    let (_, account) = f.post("/v1/accounts", json!({"name": "Ada"})).await;
    let id = account["id"].as_i64().unwrap();
    let (_, dev) = f
        .post(
            &format!("/v1/accounts/{id}/devices"),
            json!({"name": "phone"}),
        )
        .await;
    let token = dev["token"].as_str().unwrap().to_string();
    let stream_ticket = || {
        f.http
            .post(format!("{}/v1/devices/stream-tickets", f.base))
            .bearer_auth(&token)
            .send()
    };
    let (s, ticket) = json_of(stream_ticket().await.unwrap()).await;
    assert_eq!(s, 201, "{ticket}");
    let url = ticket["events"].as_str().unwrap().to_string();
    assert!(!url.contains(&token), "{url}");
    let mut by_ticket = f.public(&url).await;
    assert_eq!(by_ticket.status(), 200);
    sse_text_until(&mut by_ticket, "ready").await;
    assert_problem(f.public(&url).await, 401).await; // single use
    assert_problem(
        f.public(&format!("/v1/devices/events?token={token}")).await,
        401,
    )
    .await;

    let mut by_header = f
        .http
        .get(format!("{}/v1/devices/events", f.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    sse_text_until(&mut by_header, "ready").await;
    let unlink = format!("/v1/accounts/{id}/devices/{}", dev["id"]);
    let res = f
        .admin(reqwest::Method::DELETE, &unlink)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    for mut stream in [by_ticket, by_header] {
        loop {
            let chunk = tokio::time::timeout(Duration::from_secs(15), stream.chunk())
                .await
                .expect("the unlinked device's stream is still open");
            if chunk.unwrap().is_none() {
                break; // ended
            }
        }
    }
    let res = f
        .http
        .get(format!("{}/v1/devices/events", f.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401).await;
    assert_problem(stream_ticket().await.unwrap(), 401).await;
    assert_problem(
        f.admin(reqwest::Method::DELETE, &unlink)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let (_, api) = json_of(f.public("/openapi.json").await).await;
    for path in [
        "/v1/devices/stream-tickets",
        "/v1/accounts/{id}/devices/{device}",
    ] {
        assert!(
            api["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    f.shutdown().await;
}

/// After a transfer, the old code's public view, page, stream and the old account's events
/// say only that it was transferred: the new code would let the seller walk in first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_shows_the_new_code_only_with_the_api_token() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let (_, seller) = f.post("/v1/accounts", json!({"name": "Seller"})).await;
    let seller = seller["id"].as_i64().unwrap();
    let (_, dev) = f
        .post(
            &format!("/v1/accounts/{seller}/devices"),
            json!({"name": "phone"}),
        )
        .await;
    let res = f
        .book(
            "k",
            json!({"event": event, "account": seller, "payment_ref": "p",
            "tickets": [{"holder": {"name": "Seller"}}]}),
        )
        .await;
    let (_, b) = json_of(res).await;
    let old = b["tickets"][0]["code"].as_str().unwrap().to_string();
    let (s, moved) = f
        .post(
            &format!("/v1/tickets/{old}/transfer"),
            json!({"holder": {"name": "Buyer"}}),
        )
        .await;
    assert_eq!(s, 201, "{moved}");
    let new = moved["ticket"]["code"].as_str().unwrap().to_string();

    let (s, public) = json_of(f.public(&format!("/v1/tickets/{old}")).await).await;
    assert_eq!(s, 200);
    assert_eq!(
        (public["transferred"].as_bool(), public["state"].as_str()),
        (Some(true), Some("transferred"))
    );
    assert!(public["successor"].is_null(), "{public}");
    assert!(!public.to_string().contains(&new), "{public}");
    let page = f.public(&format!("/t/{old}")).await.text().await.unwrap();
    assert!(
        page.contains("data-state=\"transferred\"") && page.contains(">Transferred<"),
        "{page}"
    );
    assert!(
        !page.contains("Revoked"),
        "a transfer is headlined as one: {page}"
    );
    assert!(!page.contains(&new), "the page shows the new code");
    let mut stream = f.public(&format!("/t/{old}/events")).await;
    let first = sse_text_until(&mut stream, "ticket").await;
    assert!(
        !first.contains(&new),
        "the stream shows the new code: {first}"
    );
    assert!(
        first.contains("\"state\":\"transferred\"") && first.contains("\"transferred\":true"),
        "{first}"
    );
    let mut device = f
        .http
        .get(format!("{}/v1/devices/events?after=0", f.base))
        .bearer_auth(dev["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let events = sse_text_until(&mut device, "transferred").await;
    assert!(
        !events.contains(&new),
        "the old account's devices see the new code: {events}"
    );
    // With the API token: the successor.
    let (_, full) = f.get(&format!("/v1/tickets/{old}")).await;
    assert_eq!(full["successor"], new.as_str(), "{full}");
    f.shutdown().await;
}

/// A rotating ticket's codes (minted, or of any step, as a screenshot shows) open nothing on
/// public routes and its minted code is shown nowhere public; its page is reached by the
/// page link the booking returned with the API token, and that page still rotates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_code_from_a_screen_opens_no_page() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10, "rotating": true})).await;
    let res = f
        .book(
            "k",
            json!({"event": event, "payment_ref": "p", "tickets": [{"holder": {"name": "Ada"}}]}),
        )
        .await;
    let (s, b) = json_of(res).await;
    assert_eq!(s, 201, "{b}");
    let minted = b["tickets"][0]["code"].as_str().unwrap().to_string();
    let page = b["tickets"][0]["page"].as_str().unwrap().to_string();
    let png = b["tickets"][0]["qr_png"].as_str().unwrap().to_string();
    assert!(
        page.starts_with("/t/tk_") && !page.contains(&minted),
        "{page}"
    );
    assert!(!png.contains(&minted), "{png}");
    let res = f.public(&png).await;
    assert_eq!(res.status(), 200);
    let shown = decode_qr_png(&res.bytes().await.unwrap())[0].clone();
    assert_eq!(shown.len(), 34);
    for code in [&minted, &shown] {
        for path in [
            format!("/v1/tickets/{code}"),
            format!("/v1/tickets/{code}/qr.svg"),
            format!("/v1/tickets/{code}/qr.png"),
            format!("/t/{code}"),
            format!("/t/{code}/events"),
        ] {
            assert_problem(f.public_json(&path).await, 404).await;
        }
        // A browser opening the page or an image gets the page for an unknown link.
        for path in [format!("/t/{code}"), format!("/v1/tickets/{code}/qr.png")] {
            let res = f.public(&path).await;
            assert_eq!(res.status(), 404, "{path}");
            let html = res.text().await.unwrap();
            assert!(html.contains(">Ticket not found</h1>"), "{path}: {html}");
        }
    }
    let html = f.public(&page).await.text().await.unwrap();
    assert!(html.contains("data-state=\"valid\""), "{html}");
    assert!(!html.contains(&minted), "the page shows the minted code");
    let token = page.trim_start_matches("/t/");
    let (s, v) = json_of(f.public(&format!("/v1/tickets/{token}")).await).await;
    assert_eq!(s, 200, "{v}");
    assert!(!v.to_string().contains(&minted), "{v}");
    assert!(v["page"].is_null(), "{v}");
    // The API token still finds it by the code a gate scanned, and gives the page link.
    let (s, v) = f.get(&format!("/v1/tickets/{shown}")).await;
    assert_eq!((s, v["code"].as_str()), (200, Some(minted.as_str())), "{v}");
    assert_eq!(v["page"], page.as_str());
    f.shutdown().await;
}

/// The page, its assets and the QR image carry the security headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_images_carry_security_headers() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let code = f.book_one("k", event, "Ada").await;
    for path in [
        format!("/t/{code}"),
        format!("/v1/tickets/{code}/qr.svg"),
        format!("/v1/tickets/{code}/qr.png"),
        "/static/ticket.js".to_string(),
        "/sw.js".to_string(),
    ] {
        let res = f.public(&path).await;
        assert_eq!(res.status(), 200, "{path}");
        let h = res.headers();
        assert_eq!(
            h["content-security-policy"],
            "default-src 'self'; frame-ancestors 'none'; object-src 'none'",
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
    // Bidirectional controls in a name shown to people are refused.
    let res = f
        .book(
            "b",
            json!({"event": event, "payment_ref": "p",
            "tickets": [{"holder": {"name": "Ada\u{202E}gnp.exe"}}]}),
        )
        .await;
    let p = assert_problem(res, 422).await;
    assert!(
        p["detail"].as_str().unwrap().contains("bidirectional"),
        "{p}"
    );
    f.shutdown().await;
}

/// A ticket admitted at a gate online and then uploaded as another gate's offline admit is a
/// `double_entry` conflict: the event's conflicts route lists it with its holder and both
/// scans (JSON, and CSV for disputes), occupancy counts it, another event lists none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_admits_of_used_tickets_are_the_events_conflicts() {
    use stile_protocol::frame::OfflineScan;
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 5})).await;
    let other = f.event(json!({"capacity": 5})).await;
    let code = f.book_one("c1", event, "Ada").await;
    let calm = f.book_one("c2", other, "Bob").await;
    let token = f.gate_token(1).await;
    let (s, v) = f.checkin(&token, json!({"code": code})).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("admitted")), "{v}");
    // Gate 2 was offline: it admitted the same ticket, and uploads that now.
    let gate2 = f.node.client("gate-2").await;
    let bytes = CodeBytes::parse(&code).unwrap();
    let now_ms = stile_gateway::now_s() * 1000;
    let scan = OfflineScan::new(
        &bytes,
        1,
        now_ms,
        now_ms / 1000 - 60,
        false,
        OutcomeKind::Admitted,
    );
    let o = gate2.checkin_offline(&scan).await.unwrap();
    assert_eq!(o.kind, OutcomeKind::AlreadyUsed);
    // A fresh ticket of the other event admitted offline: no conflict.
    let calm_bytes = CodeBytes::parse(&calm).unwrap();
    let scan = OfflineScan::new(
        &calm_bytes,
        2,
        now_ms,
        now_ms / 1000 - 60,
        false,
        OutcomeKind::Admitted,
    );
    assert_eq!(
        gate2.checkin_offline(&scan).await.unwrap().kind,
        OutcomeKind::Admitted
    );

    let (s, v) = f.get(&format!("/v1/events/{event}/conflicts")).await;
    assert_eq!(s, 200, "{v}");
    let list = v["conflicts"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["code"], code.as_str());
    assert_eq!(list[0]["kind"], "double_entry");
    assert_eq!(list[0]["holder"], "Ada");
    assert_eq!(
        (
            list[0]["first"]["gate"].as_u64(),
            list[0]["second"]["gate"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let (_, v) = f.get(&format!("/v1/events/{other}/conflicts")).await;
    assert_eq!(v["conflicts"].as_array().unwrap().len(), 0, "{v}");
    let res = f
        .admin(
            reqwest::Method::GET,
            &format!("/v1/events/{event}/conflicts?format=csv"),
        )
        .send()
        .await
        .unwrap();
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = res.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[0].starts_with("code,kind,seat,holder,first_gate"),
        "{csv}"
    );
    assert!(
        lines[1].starts_with(&format!("{code},double_entry,,Ada,1,")),
        "{csv}"
    );
    let (_, occ) = f.get(&format!("/v1/events/{event}/occupancy")).await;
    assert_eq!(occ["conflicts"], 1, "{occ}");
    // Without the API token: refused.
    let res = f.public(&format!("/v1/events/{event}/conflicts")).await;
    assert_eq!(res.status(), 401);
    f.shutdown().await;
}

/// An event says how gates may decide its tickets when their node does not answer:
/// `online_only` and `offline_rotating` are kept and shown, contradictions refused; its
/// tickets' policy carries them to the gates' replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_their_offline_rules_to_the_tickets() {
    use stile_protocol::frame::ReplicaItem;
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 5, "online_only": true})).await;
    let (_, ev) = f.get(&format!("/v1/events/{event}")).await;
    assert_eq!(
        (
            ev["online_only"].as_bool(),
            ev["offline_rotating"].as_bool()
        ),
        (Some(true), Some(false)),
        "{ev}"
    );
    for bad in [
        json!({"offline_rotating": true}),
        json!({"rotating": true, "offline_rotating": true, "online_only": true}),
    ] {
        let now = stile_gateway::now_s();
        let mut body = json!({"provider": 1, "name": "x", "venue": "y",
            "starts_at": stile_gateway::rfc3339(now + 3600)});
        for (k, v) in bad.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, p) = f.post("/v1/events", body).await;
        assert_eq!(s, 422, "{p}");
    }
    let code = f.book_one("o1", event, "Ada").await;
    // The gate's replica names the ticket's policy as online only.
    let gate = f.node.client("gate-1").await;
    let page = gate.replica_page(None, 100).await.unwrap();
    let h = CodeBytes::parse(&code).unwrap().header();
    let policy = page
        .items
        .iter()
        .find_map(|i| match i {
            ReplicaItem::Ticket { policy, state, .. }
                if (state.partition, state.serial) == (h.partition, h.serial) =>
            {
                Some(*policy)
            }
            _ => None,
        })
        .unwrap();
    let online_only = page
        .items
        .iter()
        .any(|i| matches!(i, ReplicaItem::Policy(p) if p.id == policy && p.online_only));
    assert!(online_only, "{page:?}");
    f.shutdown().await;
}
