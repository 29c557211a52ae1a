//! The holder's side of the gateway: events that already ended, transferred tickets named as
//! such, the page's organiser and gate names, the HTML page for links that lead nowhere,
//! staff check-in with a gate's PIN, and the node event stream's resubscriptions.

use serde_json::json;

use super::{assert_problem, Fixture};

/// An event whose validity has already ended is refused at creation, and a booking for one
/// that ended since is refused too: no ticket of it could open a gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_validity_ended_is_neither_created_nor_booked() {
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
    f.book_one("before", event, "Ada").await;
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
    f.shutdown().await;
}

/// The value of one series in the gateway's `/metrics` (0 when it is not there yet).
async fn gateway_metric(f: &Fixture, series: &str) -> f64 {
    let text = f.public("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
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
        let text = f.http.get(&node_metrics).send().await.unwrap().text().await.unwrap();
        node_series(&text, "stile_node_subscriptions")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while subscriptions().await != 1.0 || gateway_metric(&f, "stile_gateway_node_up").await != 1.0
    {
        assert!(std::time::Instant::now() < deadline, "the gateway never followed the node");
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
            .admin(reqwest::Method::GET, &format!("/v1/events/{event}/attendance.csv"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if csv.lines().any(|l| l.starts_with(&sold) && l.contains(",revoked,")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation never reached the gateway: {csv}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(gateway_metric(&f, "stile_gateway_resubscribes_total").await, 1.0);
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
