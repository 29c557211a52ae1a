//! Bookings: one or many tickets of an event, minted on the provider's node, protected by
//! an `Idempotency-Key` so that a retried request returns the same booking, never a second.
//!
//! The order of steps makes every crash safe: the key is claimed in the database, the codes
//! are minted on the node, then booking, tickets, reminders and the key's answer are
//! committed in one transaction. A crash before the commit leaves minted codes nobody has
//! seen (harmless) and a claim whose owner is gone, which the retry takes over.
//!
//! The database holds the rules, not this process's memory: the claim and the commit are
//! `IMMEDIATE` transactions, the commit stores the booking only while the key's claim is
//! still this request's (so one key makes one booking even if two processes raced for it),
//! and capacity, the seat map and one live ticket a seat are triggers and a unique index. A
//! broken rule answers 409. The per-event lock only saves mints that would then be refused.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stile_protocol::code::CodeBytes;
use utoipa::ToSchema;

use super::events::EventRow;
use crate::problem::{Json, Path, Problem};
use crate::store;
use crate::App;

/// Longest idempotency key, bytes.
pub const IDEMPOTENCY_KEY_MAX_BYTES: usize = 255;
/// Longest webhook URL, bytes.
pub const WEBHOOK_MAX_BYTES: usize = 2_000;

/// One lock per event, so seat checks and inserts of one event do not interleave.
pub type EventLocks = std::sync::Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>;

/// Who holds a ticket.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Holder {
    /// Name printed on the ticket.
    pub name: String,
    /// E-mail, for the box office.
    pub email: Option<String>,
    /// URL that gets reminders as a JSON `POST` (http or https).
    pub webhook: Option<String>,
}

/// One ticket of a booking request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    /// Seat label from the event's seat map (absent for free seating).
    pub seat: Option<String>,
    /// Who holds it.
    pub holder: Holder,
}

/// A booking to make.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BookingRequest {
    /// Event id.
    pub event: i64,
    /// The tickets, 1 to 100.
    pub tickets: Vec<TicketRequest>,
    /// Account whose linked devices get the tickets' events.
    pub account: Option<i64>,
    /// The payment this booking is for.
    pub payment_ref: String,
}

/// A ticket as a booking returns it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BookedTicket {
    /// The feature code.
    pub code: String,
    /// Seat (absent: free seating).
    pub seat: Option<String>,
    /// Holder's name.
    pub holder: String,
    /// The e-ticket page (a rotating ticket's: an unguessable link no QR shows; give it
    /// only to the holder).
    pub page: String,
    /// The ticket image as SVG (a rotating ticket's: by its page link).
    pub qr_svg: String,
    /// The ticket image as PNG (a rotating ticket's: by its page link).
    pub qr_png: String,
    /// The ticket was transferred to another holder: this code is void. (The new code is
    /// the new holder's and is not shown here.)
    #[serde(default)]
    pub transferred: bool,
}

/// A booking.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BookingView {
    /// Booking id.
    pub id: i64,
    /// Event id.
    pub event: i64,
    /// Account, if any.
    pub account: Option<i64>,
    /// Payment reference.
    pub payment_ref: String,
    /// When it was made, RFC 3339.
    pub created_at: String,
    /// Its tickets, in request order.
    pub tickets: Vec<BookedTicket>,
}

/// What claiming an idempotency key found.
enum Claim {
    /// The key is ours now; go on.
    Claimed,
    /// The key's booking is done: answer with it.
    Done(i64),
    /// Another request with this key is running.
    Busy,
    /// The key was used with another body.
    Mismatch,
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Err(Problem::bad_request(
            "a booking needs an `Idempotency-Key` header (a unique value per booking, such as \
             a UUID), so that retrying it cannot book twice",
        ));
    };
    let key = value.to_str().unwrap_or("").trim();
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_MAX_BYTES {
        return Err(Problem::bad_request(format!(
            "`Idempotency-Key` must be 1 to {IDEMPOTENCY_KEY_MAX_BYTES} printable characters"
        )));
    }
    Ok(key.to_string())
}

/// Checks a holder's fields; a webhook naming a non-public address is refused unless
/// `webhook_private` (see [`crate::webhook`]).
pub fn validate_holder(h: &Holder, webhook_private: bool) -> Result<Holder, Problem> {
    let name = super::text_field("holder.name", &h.name)?;
    let email = h
        .email
        .as_deref()
        .map(|e| super::text_field("holder.email", e))
        .transpose()?;
    let webhook = match h.webhook.as_deref() {
        None => None,
        Some(url) => {
            let parsed = reqwest::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            let Some(parsed) = parsed.filter(|_| url.len() <= WEBHOOK_MAX_BYTES) else {
                return Err(Problem::unprocessable(format!(
                    "`holder.webhook` {url:?} is not an http or https URL"
                )));
            };
            if let Some(why) = crate::webhook::literal_refusal(&parsed, webhook_private) {
                return Err(Problem::unprocessable(format!("`holder.webhook`: {why}")));
            }
            Some(url.to_string())
        }
    };
    Ok(Holder {
        name,
        email,
        webhook,
    })
}

fn validate(req: &BookingRequest, webhook_private: bool) -> Result<BookingRequest, Problem> {
    if req.tickets.is_empty() || req.tickets.len() > crate::BOOKING_TICKETS_MAX {
        return Err(Problem::unprocessable(format!(
            "`tickets` must hold 1 to {} tickets",
            crate::BOOKING_TICKETS_MAX
        )));
    }
    let mut tickets = Vec::with_capacity(req.tickets.len());
    for t in &req.tickets {
        let seat = t
            .seat
            .as_deref()
            .map(|s| super::text_field("seat", s))
            .transpose()?;
        tickets.push(TicketRequest {
            seat,
            holder: validate_holder(&t.holder, webhook_private)?,
        });
    }
    let mut seats: Vec<&str> = tickets.iter().filter_map(|t| t.seat.as_deref()).collect();
    seats.sort();
    if seats.windows(2).any(|w| w[0] == w[1]) {
        return Err(Problem::unprocessable("the booking names a seat twice"));
    }
    Ok(BookingRequest {
        event: req.event,
        tickets,
        account: req.account,
        payment_ref: super::text_field("payment_ref", &req.payment_ref)?,
    })
}

/// Makes a booking.
#[utoipa::path(post, path = "/v1/bookings", request_body = BookingRequest,
    params(("Idempotency-Key" = String, Header, description = "unique per booking; a retry with the same key and body returns the same booking")),
    security(("api_token" = [])),
    responses((status = 201, body = BookingView), (status = 409, body = Problem),
        (status = 422, body = Problem, description = "a field is wrong, or the event's validity has ended"),
        (status = 503, body = Problem)))]
pub async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<BookingRequest>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let req = validate(&req, app.config.webhook_private)?;
    let hash: [u8; 32] = Sha256::digest(serde_json::to_vec(&req).unwrap_or_default()).into();
    let owner = app.instance.clone();
    let (k, o) = (key.clone(), owner.clone());
    let claim = app.db.call(move |c| claim(c, &k, &hash, &o)).await?;
    match claim {
        Claim::Done(id) => {
            let view = app.db.call(move |c| load(c, id)).await?;
            let mut res = (StatusCode::CREATED, Json(view)).into_response();
            res.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(res);
        }
        Claim::Busy => {
            return Err(Problem::conflict(
                "a request with this Idempotency-Key is still running; retry in a moment",
            )
            .retry_after(1))
        }
        Claim::Mismatch => {
            return Err(Problem::unprocessable(
                "this Idempotency-Key was used for a different booking; use a new key",
            ))
        }
        Claim::Claimed => {}
    }
    // In a task of its own: a client that hangs up cannot stop a booking half way (minted but
    // not stored, or its key left claimed).
    let booking = tokio::spawn(async move {
        let result = book(&app, &key, &owner, req).await;
        if result.is_err() {
            // Nothing was committed: free the key (if still ours) so the client can retry.
            let _ = app
                .db
                .call(move |c| -> Result<_, Problem> {
                    Ok(store::bookings::release_key(c, &key, &owner)?)
                })
                .await;
        }
        result
    });
    let view = booking.await.map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("booking failed: {e}"),
        )
    })??;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

fn claim(
    c: &mut rusqlite::Connection,
    key: &str,
    hash: &[u8; 32],
    owner: &str,
) -> Result<Claim, Problem> {
    let tx = crate::db::immediate(c)?;
    let claim = match store::bookings::key(&tx, key)? {
        Some(k) if k.request_hash != hash => Claim::Mismatch,
        Some(store::bookings::KeyRecord {
            booking: Some(id), ..
        }) => Claim::Done(id),
        Some(k) if k.owner == owner => Claim::Busy,
        Some(_) => {
            // Left by a gateway process that is gone: take it over.
            store::bookings::take_over_key(&tx, key, owner)?;
            Claim::Claimed
        }
        None => {
            store::bookings::insert_key(&tx, key, hash, owner)?;
            Claim::Claimed
        }
    };
    tx.commit()?;
    Ok(claim)
}

fn event_lock(app: &App, event: i64) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = app.booking_locks.lock().unwrap_or_else(|p| p.into_inner());
    locks.entry(event).or_default().clone()
}

/// Checks that the event has not ended, then seats and capacity (inside a database call).
fn check_availability(
    c: &rusqlite::Connection,
    ev: &EventRow,
    req: &BookingRequest,
) -> Result<(), Problem> {
    if ev.ended(crate::now_s()) {
        return Err(Problem::unprocessable(format!(
            "event {} ({}) ended at {}: its tickets can open no gate any more, so none is sold",
            ev.view.id,
            ev.view.name,
            ev.view.valid_until.as_deref().unwrap_or("?")
        )));
    }
    let seated = ev.view.seats > 0;
    for t in &req.tickets {
        match (&t.seat, seated) {
            (None, true) => {
                return Err(Problem::unprocessable(
                    "this event is seated: give each ticket a `seat`",
                ))
            }
            (Some(_), false) => {
                return Err(Problem::unprocessable(
                    "this event has free seating: leave `seat` out",
                ))
            }
            (Some(seat), true) => {
                if !store::tickets::seat_in_map(c, ev.view.id, seat)? {
                    return Err(Problem::unprocessable(format!(
                        "seat {seat:?} is not in the seat map"
                    )));
                }
                if store::tickets::seat_sold(c, ev.view.id, seat)? {
                    return Err(Problem::conflict(format!("seat {seat:?} is sold")));
                }
            }
            (None, false) => {}
        }
    }
    if let Some(cap) = ev.view.capacity {
        let sold = store::tickets::sold(c, ev.view.id)?;
        if sold as u64 + req.tickets.len() as u64 > cap as u64 {
            return Err(Problem::conflict(format!(
                "only {} of {cap} tickets are left",
                (cap as i64 - sold).max(0)
            )));
        }
    }
    if let Some(account) = req.account {
        if !store::accounts::exists(c, account)? {
            return Err(Problem::unprocessable(format!("no account {account}")));
        }
    }
    Ok(())
}

/// A minted ticket on its way into the database.
#[derive(Debug)]
pub struct NewTicket {
    /// Code text.
    pub code: String,
    /// Code bytes.
    pub bytes: CodeBytes,
    /// Key of a rotating ticket and its step, seconds.
    pub rotating: Option<([u8; 32], u32)>,
}

async fn book(
    app: &Arc<App>,
    key: &str,
    owner: &str,
    req: BookingRequest,
) -> Result<BookingView, Problem> {
    let event = req.event;
    let ev = app.db.call(move |c| super::events::load(c, event)).await?;
    // Seats and capacity are checked then taken: one booking of the event at a time.
    let lock = (ev.view.seats > 0 || ev.view.capacity.is_some()).then(|| event_lock(app, event));
    let _guard = match &lock {
        Some(l) => Some(l.lock().await),
        None => None,
    };
    let r = req.clone();
    let ev = app
        .db
        .call(move |c| -> Result<EventRow, Problem> {
            let ev = super::events::load(c, event)?;
            check_availability(c, &ev, &r)?;
            Ok(ev)
        })
        .await?;
    let (_, client) = app.nodes.for_provider(ev.view.provider).await?;
    let codes = client.mint(ev.mint_spec(req.tickets.len() as u32)).await?;
    if codes.len() != req.tickets.len() {
        return Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "the node minted the wrong number of codes",
        ));
    }
    let mut minted = Vec::with_capacity(codes.len());
    for bytes in codes {
        let rotating = if ev.view.rotating {
            Some(crate::rotating::fetch_key(&client, &bytes).await?)
        } else {
            None
        };
        minted.push(NewTicket {
            code: bytes.to_text().as_str().to_string(),
            bytes,
            rotating,
        });
    }
    let (k, owner) = (key.to_string(), owner.to_string());
    let ev2 = ev.clone();
    let view = app
        .db
        .call(move |c| -> Result<BookingView, Problem> {
            let tx = crate::db::immediate(c)?;
            // The key's claim must still be this request's: another process that took it
            // over (or a booking already stored under it) wins, and this one stores nothing.
            if !store::bookings::key_is_owned(&tx, &k, &owner)? {
                return Err(Problem::conflict(
                    "another request with this Idempotency-Key booked first; retry to get its \
                     booking",
                )
                .retry_after(1));
            }
            let id = store::bookings::insert(&tx, event, req.account, &req.payment_ref)?;
            for (t, m) in req.tickets.iter().zip(&minted) {
                insert_ticket(
                    &tx,
                    id,
                    &ev2,
                    t.seat.as_deref(),
                    &t.holder,
                    req.account,
                    m,
                    None,
                )?;
            }
            let answered = store::bookings::answer_key(&tx, &k, &owner, id)?;
            assert!(answered, "the claim was checked in this transaction");
            let view = load(&tx, id)?;
            tx.commit()?;
            Ok(view)
        })
        .await?;
    app.metrics.bookings.inc();
    app.metrics.tickets_issued.inc_by(view.tickets.len() as u64);
    if let Some(a) = view.account {
        app.live.publish(crate::live::Change::Account(a));
    }
    app.outbox_wake.notify_one();
    Ok(view)
}

/// Inserts a ticket with its reminders and its account's `issued` event (inside a
/// transaction).
#[allow(clippy::too_many_arguments)]
pub fn insert_ticket(
    tx: &rusqlite::Transaction<'_>,
    booking: i64,
    ev: &EventRow,
    seat: Option<&str>,
    holder: &Holder,
    account: Option<i64>,
    t: &NewTicket,
    predecessor: Option<&str>,
) -> Result<(), Problem> {
    let h = t.bytes.header();
    let now = crate::now_s() as i64;
    let page_token = super::tickets::new_page_token();
    store::tickets::insert(
        tx,
        &store::tickets::NewTicketRecord {
            code: &t.code,
            booking,
            event: ev.view.id,
            seat,
            holder_name: &holder.name,
            holder_email: holder.email.as_deref(),
            webhook: holder.webhook.as_deref(),
            account,
            number: (h.provider, h.partition, h.serial),
            rotating: t.rotating,
            predecessor,
            page_token: &page_token,
        },
    )?;
    let page_id = if t.rotating.is_some() {
        page_token.as_str()
    } else {
        t.code.as_str()
    };
    if let Some(url) = holder
        .webhook
        .as_ref()
        .filter(|_| ev.valid_until_s as i64 > now)
    {
        for lead in &ev.view.reminder_lead_s {
            let due = (ev.valid_until_s as i64 - *lead as i64).max(now);
            store::tickets::insert_reminder(tx, &t.code, *lead, url, due)?;
        }
    }
    if let Some(account) = account {
        let kind = if predecessor.is_some() {
            "transferred"
        } else {
            "issued"
        };
        let body = serde_json::json!({
            "code": t.code, "kind": kind, "event": ev.view.id, "event_name": ev.view.name,
            "seat": seat, "holder": holder.name, "predecessor": predecessor,
            "page": format!("/t/{page_id}"),
        });
        super::accounts::add_event(tx, account, &t.code, kind, &body)?;
    }
    Ok(())
}

/// Reads a booking with its tickets (inside a database call).
pub fn load(c: &rusqlite::Connection, id: i64) -> Result<BookingView, Problem> {
    let Some((head, tickets)) = store::bookings::load(c, id)? else {
        return Err(Problem::not_found(format!("no booking {id}")));
    };
    let tickets = tickets
        .into_iter()
        .map(|t| {
            // A rotating ticket's page and images are reached by its page link only.
            let id = match (t.rotating, t.page_token) {
                (true, Some(token)) => token,
                _ => t.code.clone(),
            };
            BookedTicket {
                page: format!("/t/{id}"),
                qr_svg: format!("/v1/tickets/{id}/qr.svg"),
                qr_png: format!("/v1/tickets/{id}/qr.png"),
                code: t.code,
                seat: t.seat,
                holder: t.holder,
                transferred: t.transferred,
            }
        })
        .collect();
    Ok(BookingView {
        id,
        event: head.event,
        account: head.account,
        payment_ref: head.payment_ref,
        created_at: crate::rfc3339(head.created_at as u64),
        tickets,
    })
}

/// Reads a booking.
#[utoipa::path(get, path = "/v1/bookings/{id}", params(("id" = i64, Path, description = "booking id")),
    security(("api_token" = [])),
    responses((status = 200, body = BookingView), (status = 404, body = Problem)))]
pub async fn get(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
) -> Result<Json<BookingView>, Problem> {
    Ok(Json(app.db.call(move |c| load(c, id)).await?))
}
