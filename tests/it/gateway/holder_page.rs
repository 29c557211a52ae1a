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
