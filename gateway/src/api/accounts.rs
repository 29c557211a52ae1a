//! Accounts and their linked devices. Every event of an account's tickets (issued,
//! transferred, used, revoked, reminder) is stored, and each linked device receives them
//! over a server-sent-event stream that resumes after `Last-Event-ID`.
//!
//! Device tokens never travel in URLs: a stream is opened with `Authorization: Bearer`, or
//! (for `EventSource`, which cannot set headers) with a single-use stream ticket that lives
//! [`STREAM_TICKET_TTL_S`] and is obtained with the token in a header. Unlinking a device
//! stops its token at once and ends its open streams.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::live::{Change, PeerAddr};
use crate::problem::{Json, Path, Problem, Query};
use crate::App;

use crate::store::accounts::{self as store, StoredEvent};
pub use crate::store::accounts::{add_event, DEVICES_PER_ACCOUNT_MAX};
/// Keep-alive comment interval of SSE streams, seconds.
pub const SSE_KEEPALIVE_S: u64 = 15;
/// How long a stream ticket may wait to be used, seconds.
pub const STREAM_TICKET_TTL_S: u64 = 60;
/// What a stream ticket starts with.
const STREAM_TICKET_PREFIX: &str = "st_";
/// The answer to a device token in a URL.
const TOKEN_IN_URL_REFUSED: &str = "device tokens are not taken in URLs (they end up in logs \
     and histories): send `Authorization: Bearer`, or get a single-use `ticket` from \
     POST /v1/devices/stream-tickets";
/// The answer to a device stream opened without a token or ticket.
const STREAM_NEEDS_CREDENTIAL: &str = "a device stream needs the device token \
     (`Authorization: Bearer`) or a stream ticket (`?ticket=` from \
     POST /v1/devices/stream-tickets)";

/// An account to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountRequest {
    /// Name.
    pub name: String,
    /// E-mail.
    pub email: Option<String>,
}

/// An account.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    /// Account id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// E-mail.
    pub email: Option<String>,
}

/// A device to link.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    /// What the device is ("Ada's phone").
    pub name: String,
}

/// A linked device and its token, shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    /// Device id.
    pub id: i64,
    /// Account.
    pub account: i64,
    /// Name.
    pub name: String,
    /// Token for `GET /v1/devices/events` (`Authorization: Bearer`; for EventSource, trade
    /// it for a stream ticket at `POST /v1/devices/stream-tickets`); only its hash is stored,
    /// so keep it.
    pub token: String,
    /// Where its event stream is.
    pub events: String,
}

/// Creates an account.
#[utoipa::path(post, path = "/v1/accounts", request_body = AccountRequest, security(("api_token" = [])),
    responses((status = 201, body = AccountView), (status = 422, body = Problem)))]
pub async fn create(
    State(app): State<Arc<App>>,
    Json(req): Json<AccountRequest>,
) -> Result<(StatusCode, Json<AccountView>), Problem> {
    let name = super::text_field("name", &req.name)?;
    let email = req
        .email
        .as_deref()
        .map(|e| super::text_field("email", e))
        .transpose()?;
    let (n, e) = (name.clone(), email.clone());
    let id = app
        .db
        .call(move |c| -> Result<i64, Problem> { Ok(store::insert(c, &n, e.as_deref())?) })
        .await?;
    Ok((StatusCode::CREATED, Json(AccountView { id, name, email })))
}

/// Links a device to an account.
#[utoipa::path(post, path = "/v1/accounts/{id}/devices", request_body = DeviceRequest,
    params(("id" = i64, Path, description = "account id")), security(("api_token" = [])),
    responses((status = 201, body = DeviceView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn link_device(
    State(app): State<Arc<App>>,
    Path(account): Path<i64>,
    Json(req): Json<DeviceRequest>,
) -> Result<(StatusCode, Json<DeviceView>), Problem> {
    let name = super::text_field("name", &req.name)?;
    let token = super::auth::new_token();
    let hash = super::auth::hash_token(&token);
    let n = name.clone();
    let id = app
        .db
        .call(move |c| -> Result<i64, Problem> {
            if !store::exists(c, account)? {
                return Err(Problem::not_found(format!("no account {account}")));
            }
            if store::device_count(c, account)? >= DEVICES_PER_ACCOUNT_MAX {
                return Err(Problem::conflict(format!(
                    "account {account} has {DEVICES_PER_ACCOUNT_MAX} devices, the most it may link"
                )));
            }
            Ok(store::insert_device(c, account, &n, &hash)?)
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(DeviceView {
            id,
            account,
            name,
            token,
            events: "/v1/devices/events".into(),
        }),
    ))
}

/// Query of a device stream.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeviceQuery {
    /// Refused: device tokens are not taken in URLs (use the header or a stream ticket).
    pub token: Option<String>,
    /// A single-use stream ticket from `POST /v1/devices/stream-tickets`, for clients that
    /// cannot set headers (EventSource).
    pub ticket: Option<String>,
    /// Resume after this event id (like the `Last-Event-ID` header).
    pub after: Option<i64>,
}

/// A stream ticket: opens one device stream, once, within its lifetime.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamTicketView {
    /// The ticket (single use).
    pub ticket: String,
    /// Seconds it may wait to be used.
    pub expires_in_s: u64,
    /// The stream's URL with the ticket, for `new EventSource(...)`.
    pub events: String,
}

/// Trades the device token (in the header) for a single-use stream ticket, so that an
/// `EventSource` can open the device's stream without the token in its URL.
#[utoipa::path(post, path = "/v1/devices/stream-tickets", security(("device_token" = [])),
    responses((status = 201, body = StreamTicketView), (status = 401, body = Problem)))]
pub async fn stream_ticket(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Some(token) = super::auth::bearer(&headers) else {
        return Ok(super::auth::unauthorized(
            "a stream ticket needs the device token in `Authorization: Bearer`",
        ));
    };
    let hash = super::auth::hash_token(token);
    let ticket = format!("{STREAM_TICKET_PREFIX}{}", super::auth::new_token());
    let ticket_hash = super::auth::hash_token(&ticket);
    let expires_at = (crate::now_s() + STREAM_TICKET_TTL_S) as i64;
    let made = app
        .db
        .call(move |c| -> Result<bool, Problem> {
            let Some((device, _)) = store::device_of(c, &hash)? else {
                return Ok(false);
            };
            store::insert_stream_ticket(c, &ticket_hash, device, expires_at)?;
            Ok(true)
        })
        .await?;
    if !made {
        return Ok(super::auth::unauthorized("this device token is unknown"));
    }
    let view = StreamTicketView {
        events: format!("/v1/devices/events?ticket={ticket}"),
        ticket,
        expires_in_s: STREAM_TICKET_TTL_S,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Unlinks a device: its token stops working at once, and its open streams end.
#[utoipa::path(delete, path = "/v1/accounts/{id}/devices/{device}",
    params(("id" = i64, Path, description = "account id"), ("device" = i64, Path, description = "device id")),
    security(("api_token" = [])),
    responses((status = 204, description = "unlinked"), (status = 404, body = Problem)))]
pub async fn unlink_device(
    State(app): State<Arc<App>>,
    Path((account, device)): Path<(i64, i64)>,
) -> Result<StatusCode, Problem> {
    let gone = app
        .db
        .call(move |c| -> Result<bool, Problem> { Ok(store::delete_device(c, account, device)?) })
        .await?;
    if !gone {
        return Err(Problem::not_found(format!(
            "account {account} has no device {device}"
        )));
    }
    app.live.publish(Change::Device(device));
    Ok(StatusCode::NO_CONTENT)
}

/// The event stream of the device whose token is given: every event of its account's
/// tickets, as `event: KIND` with a JSON body and the event id.
#[utoipa::path(get, path = "/v1/devices/events", params(DeviceQuery), security(("device_token" = [])),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 401, body = Problem),
        (status = 429, body = Problem)))]
pub async fn device_events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<PeerAddr>>,
    Query(q): Query<DeviceQuery>,
) -> Result<Response, Problem> {
    /// How the stream is opened.
    enum Credential {
        /// The device token's hash.
        Token([u8; 32]),
        /// A stream ticket's hash.
        Ticket([u8; 32]),
    }
    let credential = match (super::auth::bearer(&headers), &q.ticket) {
        (Some(token), _) => Credential::Token(super::auth::hash_token(token)),
        (None, Some(ticket)) => Credential::Ticket(super::auth::hash_token(ticket)),
        (None, None) if q.token.is_some() => {
            return Ok(super::auth::unauthorized(TOKEN_IN_URL_REFUSED))
        }
        (None, None) => return Ok(super::auth::unauthorized(STREAM_NEEDS_CREDENTIAL)),
    };
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or(q.after);
    let found = app
        .db
        .call(move |c| -> Result<Option<(i64, i64, i64)>, Problem> {
            let found = match credential {
                Credential::Token(hash) => store::device_of(c, &hash)?,
                // Single use: the ticket is gone once read, and only if not expired.
                Credential::Ticket(hash) => store::redeem_stream_ticket(c, &hash)?,
            };
            let Some((device, account)) = found else {
                return Ok(None);
            };
            let after = match last_id {
                Some(id) => id,
                None => store::newest_event(c, account)?,
            };
            Ok(Some((device, account, after)))
        })
        .await?;
    let Some((device, account, after)) = found else {
        return Ok(super::auth::unauthorized(
            "this device token or stream ticket is unknown, used or expired (an unlinked \
             device's token stops working)",
        ));
    };
    let client = peer.map(|p| p.0 .0.ip());
    let gauge = crate::live::StreamGauge::open(&app, format!("a:{account}"), client)?;
    let stream = account_stream(app, device, account, after, gauge);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(SSE_KEEPALIVE_S)))
        .into_response())
}

/// State of one device stream.
struct DeviceStream {
    /// Shared state.
    app: Arc<App>,
    /// The device it was opened for.
    device: i64,
    /// The account whose events it carries.
    account: i64,
    /// The last event id sent.
    after: i64,
    /// Events read and not sent yet.
    pending: std::collections::VecDeque<StoredEvent>,
    /// Wakes on the account's new events only.
    changes: crate::live::Watch,
    /// Wakes when the device is unlinked: the stream ends.
    unlinked: crate::live::Watch,
    /// Ends the stream when the gateway stops.
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The `ready` event was sent.
    started: bool,
    /// The stream's place in the stream counts.
    _gauge: crate::live::StreamGauge,
}

fn account_stream(
    app: Arc<App>,
    device: i64,
    account: i64,
    after: i64,
    gauge: crate::live::StreamGauge,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = DeviceStream {
        changes: crate::live::Live::watch(&app, Change::Account(account)),
        unlinked: crate::live::Live::watch(&app, Change::Device(device)),
        shutdown: app.shutdown.clone(),
        _gauge: gauge,
        app,
        device,
        account,
        after,
        pending: Default::default(),
        started: false,
    };
    stream::unfold(state, |mut s| async move {
        if !s.started {
            s.started = true;
            // Unlinked between the token's check and the watch: end now (later unlinks
            // wake `unlinked`).
            let device = s.device;
            let linked = s
                .app
                .db
                .call(move |c| -> Result<bool, Problem> { Ok(store::device_linked(c, device)?) })
                .await;
            if !matches!(linked, Ok(true)) {
                return None;
            }
            let hello = SseEvent::default()
                .event("ready")
                .data(serde_json::json!({"account": s.account, "after": s.after}).to_string());
            return Some((Ok(hello), s));
        }
        loop {
            if let Some(e) = s.pending.pop_front() {
                s.after = e.id;
                let ev = SseEvent::default()
                    .id(e.id.to_string())
                    .event(e.kind)
                    .data(e.body);
                return Some((Ok(ev), s));
            }
            let (account, after) = (s.account, s.after);
            match s
                .app
                .db
                .call(move |c| -> Result<_, Problem> {
                    Ok(store::events_after(c, account, after)?)
                })
                .await
            {
                Ok(rows) if !rows.is_empty() => {
                    s.pending.extend(rows);
                    continue;
                }
                Ok(_) => {}
                Err(_) => return None,
            }
            tokio::select! {
                _ = s.changes.changed() => {}
                _ = s.unlinked.changed() => return None,
                _ = crate::stopped(&mut s.shutdown) => return None,
            }
        }
    })
}
