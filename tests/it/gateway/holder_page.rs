//! The holder's side of the gateway: events that already ended, transferred tickets named as
//! such, the page's organiser and gate names, the HTML page for links that lead nowhere,
//! staff check-in with a gate's PIN, and the node event stream's resubscriptions.

use serde_json::{json, Value};

use super::{assert_problem, json_of, Fixture};

/// An event whose validity has already ended is refused at creation, and a booking for one
/// that ended since is refused too: no ticket of it could open a gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_validity_ended_is_neither_created_booked_nor_transferred() {
    let f = Fixture::start().await;
    let now = stile_gateway::now_s();
    let (s, _) = f
        .post("/v1/providers", json!({"id": 1, "name": "Arena"}))
        .await;
    assert_eq!(s, 201);
    let ended = json!({
        "provider": 1, "name": "Yesterday", "venue": "Arena",
        "starts_at": stile_gateway::rfc3339(now - 7200),
        "valid_until": stile_gateway::rfc3339(now - 60),
    });
    let res = f
        .admin(reqwest::Method::POST, "/v1/events")
        .json(&ended)
        .send()
        .await
        .unwrap();
    let p = assert_problem(res, 422).await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("in the past") && detail.contains("valid_until"),
        "{p}"
    );

    // An event that was on sale and has ended since.
    let event = f.event(json!({"capacity": 10})).await;
    let sold = f.book_one("before", event, "Ada").await;
    let db = &f.gateway.as_ref().unwrap().app().db;
    db.call(move |c| -> Result<(), stile_gateway::db::DbError> {
        c.execute(
            "UPDATE events SET valid_until = ?1 WHERE id = ?2",
            [(now - 1) as i64, event],
        )?;
        Ok(())
    })
    .await
    .unwrap();
    let body =
        json!({"event": event, "payment_ref": "p", "tickets": [{"holder": {"name": "Bob"}}]});
    let p = assert_problem(f.book("after", body.clone()).await, 422).await;
    assert!(p["detail"].as_str().unwrap().contains("ended"), "{p}");
    // Nothing was sold, and the key is free for a retry.
    let (_, occ) = f.get(&format!("/v1/events/{event}/occupancy")).await;
    assert_eq!(occ["tickets"], 1, "{occ}");
    assert_problem(f.book("after", body).await, 422).await;
    // Nor is a ticket of it transferred: the new code would open no gate either.
    let res = f
        .admin(
            reqwest::Method::POST,
            &format!("/v1/tickets/{sold}/transfer"),
        )
        .json(&json!({"holder": {"name": "Bob"}}))
        .send()
        .await
        .unwrap();
    let p = assert_problem(res, 422).await;
    assert!(p["detail"].as_str().unwrap().contains("ended"), "{p}");
    f.shutdown().await;
}

/// A gate with a name, its HTTP token and its staff PIN.
async fn named_gate(f: &Fixture, gate: u16, name: &str) -> (String, String) {
    let (s, g) = f
        .post("/v1/providers/1/gates", json!({"gate": gate, "name": name}))
        .await;
    assert_eq!(s, 201, "{g}");
    let pin = g["pin"].as_str().unwrap().to_string();
    assert!(
        pin.len() == 6 && pin.bytes().all(|b| b.is_ascii_digit()),
        "a short numeric PIN: {g}"
    );
    (g["token"].as_str().unwrap().to_string(), pin)
}

/// A staff check-in as the holder's page sends it.
async fn staff(f: &Fixture, id: &str, body: Value) -> reqwest::Response {
    f.http
        .post(format!("{}/t/{id}/checkin", f.base))
        .header("accept", "application/json")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The value of one series in the gateway's `/metrics` (0 when it is not there yet).
async fn gateway_metric(f: &Fixture, series: &str) -> f64 {
    let text = f.public("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The holder's page names the organiser, and once the ticket is used the time (as a UTC
/// instant the script draws in local time) and the gate by its name; the JSON view says the
/// same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_names_the_organiser_and_the_gate_that_admitted_the_ticket() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let (token, _) = named_gate(&f, 5, "North").await;
    let code = f.book_one("k", event, "Ada").await;
    let page = f.public(&format!("/t/{code}")).await.text().await.unwrap();
    assert!(
        page.contains("<dd id=\"detail-organiser\">Arena</dd>"),
        "{page}"
    );
    assert!(
        page.contains(r#"<link rel="icon" href="/favicon.svg" type="image/svg+xml">"#),
        "{page}"
    );
    let (s, o) = f.checkin(&token, json!({"code": code})).await;
    assert_eq!((s, o["outcome"].as_str()), (200, Some("admitted")), "{o}");

    let (_, v) = json_of(f.public(&format!("/v1/tickets/{code}")).await).await;
    assert_eq!(v["provider_name"], "Arena", "{v}");
    assert_eq!(
        (v["gate"].as_u64(), v["gate_name"].as_str()),
        (Some(5), Some("North")),
        "{v}"
    );
    let used_at = v["used_at"].as_str().unwrap().to_string();
    let page = f.public(&format!("/t/{code}")).await.text().await.unwrap();
    let time = format!(r#"<time datetime="{used_at}" title="{used_at}" data-local="seconds">"#);
    assert!(page.contains(&time), "{page}");
    assert!(page.contains("</time> at gate 5 (North)</p>"), "{page}");
    // The gate's name stays when its credentials are revoked.
    let res = f
        .admin(reqwest::Method::DELETE, "/v1/providers/1/gates/5")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let (_, v) = json_of(f.public(&format!("/v1/tickets/{code}")).await).await;
    assert_eq!(v["gate_name"], "North", "{v}");
    f.shutdown().await;
}

/// A link that leads nowhere (a code cut short, a code nobody sold, a mangled path) gets an
/// HTML page saying so, for the page and the images; with `Accept: application/json`, the
/// problem. The favicon is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_leads_nowhere_gets_an_html_page_unless_json_is_asked_for() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let code = f.book_one("k", event, "Ada").await;
    let unsold = super::flip_last(&code);
    let cut = &code[..20];
    for (path, status, heading) in [
        (format!("/t/{cut}"), 400, "This ticket link is incomplete"),
        (format!("/t/{unsold}"), 404, "Ticket not found"),
        ("/t/tk_0123".to_string(), 404, "Ticket not found"),
        // Not even text once decoded.
        (
            "/t/%ff%fe".to_string(),
            400,
            "This ticket link is incomplete",
        ),
        ("/t/".to_string(), 404, "Ticket not found"),
        (format!("/t/{code}/x"), 404, "Ticket not found"),
        (
            format!("/v1/tickets/{cut}/qr.png"),
            400,
            "This ticket link is incomplete",
        ),
        (
            format!("/v1/tickets/{unsold}/qr.svg"),
            404,
            "Ticket not found",
        ),
        (format!("/v1/tickets/{code}/qr.pn"), 404, "Ticket not found"),
    ] {
        let res = f
            .http
            .get(format!("{}{path}", f.base))
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{path}");
        assert_eq!(
            res.headers()["content-type"],
            "text/html; charset=utf-8",
            "{path}"
        );
        assert_eq!(
            res.headers()["content-security-policy"],
            "default-src 'self'; frame-ancestors 'none'; object-src 'none'",
            "{path}"
        );
        let html = res.text().await.unwrap();
        assert!(html.contains(&format!(">{heading}</h1>")), "{path}: {html}");
        assert!(html.contains("<main id=\"missing\""), "{path}");
        assert!(!html.contains(&code), "{path}: the page repeats no code");
        // Asked for JSON: the problem.
        let res = f
            .http
            .get(format!("{}{path}", f.base))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_problem(res, status).await;
    }
    // The API stays JSON whatever is accepted.
    let res = f
        .http
        .get(format!("{}/v1/tickets/{unsold}", f.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_problem(res, 404).await;
    for path in ["/favicon.svg", "/favicon.ico"] {
        let res = f.public(path).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["content-type"], "image/svg+xml", "{path}");
        assert!(res.text().await.unwrap().starts_with("<svg"), "{path}");
    }
    f.shutdown().await;
}

/// Staff check-in on the holder's page: a wrong PIN is refused and counted, a few lock the
/// ticket and the gate (429 with Retry-After), the right PIN checks the ticket in at the node
/// as that gate, a resend of the same confirmation gets the same answer, a second
/// confirmation is refused naming the first's time and gate, and a revoked or replaced PIN
/// opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_check_in_takes_the_gates_pin_and_locks_after_wrong_ones() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let (_, pin7) = named_gate(&f, 7, "North").await;
    let (_, pin8) = named_gate(&f, 8, "South").await;
    let wrong = |pin: &str| format!("{:06}", (pin.parse::<u32>().unwrap() + 1) % 1_000_000);
    let a = f.book_one("a", event, "Ada").await;
    let b = f.book_one("b", event, "Bob").await;

    // Bad input changes nothing and guesses no PIN.
    for body in [
        json!({"gate": 7, "pin": "12ab"}),
        json!({"gate": 0, "pin": pin7}),
        json!({"gate": 7, "pin": pin7, "confirmation": "no spaces"}),
        json!({"gate": 7, "pin": pin7, "colour": 1}),
    ] {
        assert_problem(staff(&f, &a, body.clone()).await, 422).await;
    }
    let unsold = super::flip_last(&a);
    assert_problem(
        staff(&f, &unsold, json!({"gate": 7, "pin": pin7})).await,
        404,
    )
    .await;
    // A gate without a PIN answers as a wrong PIN does, and counts as one (which gates
    // have PINs is not for anyone to list): tried with a ticket of its own.
    let c0 = f.book_one("c0", event, "Cyd").await;
    let p = assert_problem(staff(&f, &c0, json!({"gate": 9, "pin": pin7})).await, 403).await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("wrong PIN for gate 9"),
        "{p}"
    );

    // Wrong PINs: refused, counted; the fifth locks ticket A and gate 7.
    for left in (1..=4).rev() {
        let p = assert_problem(
            staff(&f, &a, json!({"gate": 7, "pin": wrong(&pin7)})).await,
            403,
        )
        .await;
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains("wrong PIN") && detail.contains(&format!("{left} more")),
            "{p}"
        );
    }
    let res = staff(&f, &a, json!({"gate": 7, "pin": wrong(&pin7)})).await;
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    assert_problem(res, 429).await;
    // Locked: even the right PIN, for ticket A at any gate and for any ticket at gate 7.
    let p = assert_problem(staff(&f, &a, json!({"gate": 8, "pin": pin8})).await, 429).await;
    assert!(p["detail"].as_str().unwrap().contains("this ticket"), "{p}");
    let p = assert_problem(staff(&f, &b, json!({"gate": 7, "pin": pin7})).await, 429).await;
    assert!(p["detail"].as_str().unwrap().contains("this gate"), "{p}");
    let (_, v) = json_of(f.public(&format!("/v1/tickets/{a}")).await).await;
    assert_eq!(v["state"], "valid", "nothing was checked in: {v}");

    // The right PIN at gate 8 admits ticket B, as gate 8, at the node.
    let first = json!({"gate": 8, "pin": pin8, "confirmation": "c-1"});
    let res = staff(&f, &b, first.clone()).await;
    let (s, admitted) = json_of(res).await;
    assert_eq!(s, 200, "{admitted}");
    assert_eq!(
        (admitted["outcome"].as_str(), admitted["admit"].as_bool()),
        (Some("admitted"), Some(true)),
        "{admitted}"
    );
    assert_eq!(admitted["gate_name"], "South", "{admitted}");
    assert_eq!(admitted["ticket"]["state"], "used", "{admitted}");
    assert_eq!(admitted["ticket"]["gate"], 8, "{admitted}");
    let at = admitted["at"].as_str().unwrap().to_string();
    // A resend of the same confirmation: the same answer, not `already_used`.
    let (s, again) = json_of(staff(&f, &b, first).await).await;
    assert_eq!(
        (s, again["outcome"].as_str()),
        (200, Some("admitted")),
        "{again}"
    );
    assert_eq!(again["at"], at.as_str(), "{again}");
    // A second confirmation: refused, naming the first's time and gate.
    let (s, second) = json_of(
        staff(
            &f,
            &b,
            json!({"gate": 8, "pin": pin8, "confirmation": "c-2"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(
        (second["outcome"].as_str(), second["admit"].as_bool()),
        (Some("already_used"), Some(false)),
        "{second}"
    );
    assert_eq!(second["at"], at.as_str(), "{second}");
    assert_eq!(
        (
            second["outcome_gate"].as_u64(),
            second["outcome_gate_name"].as_str()
        ),
        (Some(8), Some("South")),
        "{second}"
    );
    // A scanner at the gate sees the same ticket as used there.
    let (_, v) = json_of(f.public(&format!("/v1/tickets/{b}")).await).await;
    assert_eq!(
        (v["state"].as_str(), v["gate"].as_u64()),
        (Some("used"), Some(8)),
        "{v}"
    );

    // Counted: wrong PINs, the lock, the refusals while locked, and the node's answers.
    for (series, want) in [
        (
            "stile_gateway_staff_pin_refusals_total{reason=\"wrong_pin\"}",
            6.0,
        ),
        ("stile_gateway_staff_lockouts_total", 1.0),
        (
            "stile_gateway_staff_pin_refusals_total{reason=\"locked\"}",
            2.0,
        ),
        (
            "stile_gateway_staff_checkins_total{outcome=\"admitted\"}",
            2.0,
        ),
        (
            "stile_gateway_staff_checkins_total{outcome=\"already_used\"}",
            1.0,
        ),
    ] {
        assert_eq!(gateway_metric(&f, series).await, want, "{series}");
    }
    // Re-issued: the old PIN opens nothing, the new one does; revoked: nothing.
    let c = f.book_one("c", event, "Cy").await;
    let d = f.book_one("d", event, "Di").await;
    let (_, new8) = named_gate(&f, 8, "South").await;
    if new8 != pin8 {
        assert_problem(staff(&f, &c, json!({"gate": 8, "pin": pin8})).await, 403).await;
    }
    let (s, v) = json_of(staff(&f, &c, json!({"gate": 8, "pin": new8})).await).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("admitted")), "{v}");
    let res = f
        .admin(reqwest::Method::DELETE, "/v1/providers/1/gates/8")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let p = assert_problem(staff(&f, &d, json!({"gate": 8, "pin": new8})).await, 403).await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("wrong PIN for gate 8"),
        "{p}"
    );

    // A code a transfer voided is answered as transferred, not revoked.
    let (_, pin10) = named_gate(&f, 10, "East").await;
    let e = f.book_one("e", event, "Eve").await;
    let res = f
        .admin(reqwest::Method::POST, &format!("/v1/tickets/{e}/transfer"))
        .json(&json!({"holder": {"name": "Fay"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let (s, v) = json_of(staff(&f, &e, json!({"gate": 10, "pin": pin10})).await).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["outcome"], "transferred", "{v}");
    assert_eq!(v["admit"], false, "{v}");

    let (_, api) = json_of(f.public("/openapi.json").await).await;
    assert!(
        api["paths"]["/t/{code}/checkin"]["post"].is_object(),
        "{}",
        api["paths"]
    );
    f.shutdown().await;
}

/// A rotating ticket's page is reached by its page token; staff check-in there checks in
/// the code of the current time step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_check_in_of_a_rotating_ticket_by_its_page_link() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10, "rotating": true})).await;
    let (_, pin) = named_gate(&f, 3, "Bus door").await;
    let res = f
        .book(
            "k",
            json!({"event": event, "payment_ref": "p", "tickets": [{"holder": {"name": "Ada"}}]}),
        )
        .await;
    let (_, b) = json_of(res).await;
    let minted = b["tickets"][0]["code"].as_str().unwrap().to_string();
    let token = b["tickets"][0]["page"]
        .as_str()
        .unwrap()
        .trim_start_matches("/t/")
        .to_string();
    // The minted code opens no public route, staff check-in included.
    assert_problem(
        staff(&f, &minted, json!({"gate": 3, "pin": pin})).await,
        404,
    )
    .await;
    let (s, v) = json_of(staff(&f, &token, json!({"gate": 3, "pin": pin})).await).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("admitted")), "{v}");
    assert!(
        !v.to_string().contains(&minted),
        "the answer shows the minted code: {v}"
    );
    assert_eq!(v["ticket"]["state"], "used", "{v}");
    f.shutdown().await;
}

/// Regression: a gateway that read a node's event stream too slowly lost its subscription
/// (the client drops one that falls `SUBSCRIPTION_BACKLOG` batches behind), and reported the
/// node down and counted a failure though the node answered all along. It now counts a
/// resubscription, follows the stream again from its cursor, and misses no event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_fell_behind_resubscribes_without_reporting_the_node_down() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let node = crate::node::TestNode::start(|c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let node_metrics = format!(
        "http://{}/metrics",
        node.node.as_ref().unwrap().metrics_addr().unwrap()
    );
    let dir = tempfile::tempdir().unwrap();
    let gateway = stile_gateway::Gateway::start(super::gateway_config(&node, dir.path()))
        .await
        .unwrap();
    let f = Fixture {
        base: format!("http://{}", gateway.local_addr()),
        api_token: gateway.api_token().to_string(),
        gateway: Some(gateway),
        node,
        dir,
        http: reqwest::Client::new(),
    };
    let event = f.event(json!({"capacity": 10})).await;
    let sold = f.book_one("k", event, "Ada").await;
    let node_series = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(-1.0)
    };
    let subscriptions = || async {
        let text = f
            .http
            .get(&node_metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        node_series(&text, "stile_node_subscriptions")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while subscriptions().await != 1.0 || gateway_metric(&f, "stile_gateway_node_up").await != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway never followed the node"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Hold the gateway's database: the follower stops reading at its next batch.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let db = f.gateway.as_ref().unwrap().app().db.clone();
    let holder = tokio::spawn(async move {
        db.call(move |_| -> Result<(), stile_gateway::db::DbError> {
            let _ = held.recv();
            Ok(())
        })
        .await
    });
    // One event a revoke, each durable before the next: a batch each, until the client
    // has dropped the lagging subscription and told the node so.
    let admin = f.node.client("admin-admin").await;
    let mut revoked = 0;
    'lag: for _ in 0..16 {
        let codes = admin
            .mint(stile_protocol::frame::MintSpec::single_entry(1, 1024))
            .await
            .unwrap();
        for chunk in codes.chunks(64) {
            for code in chunk {
                admin.revoke(code).await.unwrap();
                revoked += 1;
            }
            if subscriptions().await == 0.0 {
                break 'lag;
            }
        }
    }
    assert_eq!(
        subscriptions().await,
        0.0,
        "{revoked} events never made the client drop the subscription"
    );
    // An event the dropped subscription never carried: it must come by the new one.
    let code = stile_protocol::CodeBytes::parse(&sold).unwrap();
    admin.revoke(&code).await.unwrap();
    release.send(()).unwrap();
    holder.await.unwrap().unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
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
        if csv
            .lines()
            .any(|l| l.starts_with(&sold) && l.contains(",revoked,"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation never reached the gateway: {csv}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        gateway_metric(&f, "stile_gateway_resubscribes_total").await,
        1.0
    );
    assert_eq!(
        gateway_metric(&f, "stile_gateway_node_stream_failures_total").await,
        0.0,
        "falling behind is not the node failing"
    );
    assert_eq!(gateway_metric(&f, "stile_gateway_node_up").await, 1.0);
    assert_eq!(subscriptions().await, 1.0, "followed again");
    drop(admin);
    f.shutdown().await;
}

/// A ticket whose partition was purged is void to whoever looks it up: the node says it
/// holds no such ticket, and the gateway does not fall back to the state it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_ticket_is_void_not_valid() {
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let code = f.book_one("p", event, "Ada").await;
    let admin = f.node.client("admin-admin").await;
    let (dropped, _) = admin.purge(0).await.unwrap();
    assert!(dropped >= 1, "{dropped}");
    let (s, v) = json_of(f.public(&format!("/v1/tickets/{code}")).await).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["stale"].as_bool()),
        (Some("void"), Some(false)),
        "{v}"
    );
    let page = f.public(&format!("/t/{code}")).await.text().await.unwrap();
    assert!(page.contains(r#"data-state="void""#), "{page}");
    admin.close().await;
    f.shutdown().await;
}
