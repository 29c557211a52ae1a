//! Accounts and their linked devices. Every event of an account's tickets (issued,
//! transferred, used, revoked, reminder) is stored, and each linked device receives them
//! over a server-sent-event stream that resumes after `Last-Event-ID`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;

use crate::live::Change;
use crate::problem::{Json, Path, Problem, Query};
use crate::App;

/// Devices one account may link.
pub const DEVICES_PER_ACCOUNT_MAX: i64 = 32;
/// Events read from the database per query.
const EVENTS_PAGE: i64 = 256;
/// Keep-alive comment interval of SSE streams, seconds.
pub const SSE_KEEPALIVE_S: u64 = 15;

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
    /// Token for `GET /v1/devices/events` (bearer, or `?token=` for EventSource); only its
    /// hash is stored, so keep it.
    pub token: String,
    /// Where its event stream is.
    pub events: String,
}

/// Stores an account event (inside a transaction); the caller publishes the change after
/// commit.
pub fn add_event(
    c: &rusqlite::Connection,
    account: i64,
    code: &str,
    kind: &str,
    body: &serde_json::Value,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO account_events (account, code, kind, body, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![account, code, kind, body.to_string(), crate::now_s() as i64],
    )?;
    Ok(())
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
        .call(move |c| -> Result<i64, Problem> {
            c.execute(
                "INSERT INTO accounts (name, email, created_at) VALUES (?1, ?2, ?3)",
                params![n, e, crate::now_s() as i64],
            )?;
            Ok(c.last_insert_rowid())
        })
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
            let known: Option<i64> = c
                .query_row("SELECT 1 FROM accounts WHERE id = ?1", [account], |r| r.get(0))
                .optional()?;
            if known.is_none() {
                return Err(Problem::not_found(format!("no account {account}")));
            }
            let n_devices: i64 =
                c.query_row("SELECT count(*) FROM devices WHERE account = ?1", [account], |r| r.get(0))?;
            if n_devices >= DEVICES_PER_ACCOUNT_MAX {
                return Err(Problem::conflict(format!(
                    "account {account} has {DEVICES_PER_ACCOUNT_MAX} devices, the most it may link"
                )));
            }
            c.execute(
                "INSERT INTO devices (account, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![account, n, &hash[..], crate::now_s() as i64],
            )?;
            Ok(c.last_insert_rowid())
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
    /// The device token, for clients that cannot set headers (EventSource).
    pub token: Option<String>,
    /// Resume after this event id (like the `Last-Event-ID` header).
    pub after: Option<i64>,
}

/// One stored account event.
struct StoredEvent {
    id: i64,
    kind: String,
    body: String,
}

fn events_after(
    c: &rusqlite::Connection,
    account: i64,
    after: i64,
) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut stmt = c.prepare(
        "SELECT id, kind, body FROM account_events WHERE account = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![account, after, EVENTS_PAGE], |r| {
        Ok(StoredEvent {
            id: r.get(0)?,
            kind: r.get(1)?,
            body: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// The event stream of the device whose token is given: every event of its account's
/// tickets, as `event: KIND` with a JSON body and the event id.
#[utoipa::path(get, path = "/v1/devices/events", params(DeviceQuery), security(("device_token" = [])),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 401, body = Problem)))]
pub async fn device_events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<DeviceQuery>,
) -> Result<Response, Problem> {
    let Some(token) = super::auth::bearer(&headers)
        .map(str::to_string)
        .or(q.token)
    else {
        return Ok(super::auth::unauthorized(
            "a device stream needs the device token (`Authorization: Bearer` or `?token=`)",
        ));
    };
    let hash = super::auth::hash_token(&token);
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or(q.after);
    let found = app
        .db
        .call(move |c| -> Result<Option<(i64, i64)>, Problem> {
            let account: Option<i64> = c
                .query_row(
                    "SELECT account FROM devices WHERE token_hash = ?1",
                    [&hash[..]],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(account) = account else {
                return Ok(None);
            };
            let after = match last_id {
                Some(id) => id,
                None => c.query_row(
                    "SELECT coalesce(max(id), 0) FROM account_events WHERE account = ?1",
                    [account],
                    |r| r.get(0),
                )?,
            };
            Ok(Some((account, after)))
        })
        .await?;
    let Some((account, after)) = found else {
        return Ok(super::auth::unauthorized("this device token is unknown"));
    };
    let gauge = crate::live::StreamGauge::open(&app, format!("a:{account}"))?;
    let stream = account_stream(app, account, after, gauge);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(SSE_KEEPALIVE_S)))
        .into_response())
}

/// State of one device stream.
struct DeviceStream {
    app: Arc<App>,
    account: i64,
    after: i64,
    pending: std::collections::VecDeque<StoredEvent>,
    changes: tokio::sync::broadcast::Receiver<Change>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    started: bool,
    _gauge: crate::live::StreamGauge,
}

fn account_stream(
    app: Arc<App>,
    account: i64,
    after: i64,
    gauge: crate::live::StreamGauge,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = DeviceStream {
        changes: app.live.subscribe(),
        shutdown: app.shutdown.clone(),
        _gauge: gauge,
        app,
        account,
        after,
        pending: Default::default(),
        started: false,
    };
    stream::unfold(state, |mut s| async move {
        if !s.started {
            s.started = true;
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
                .call(move |c| -> Result<_, Problem> { Ok(events_after(c, account, after)?) })
                .await
            {
                Ok(rows) if !rows.is_empty() => {
                    s.pending.extend(rows);
                    continue;
                }
                Ok(_) => {}
                Err(_) => return None,
            }
            loop {
                tokio::select! {
                    r = s.changes.recv() => match r {
                        Ok(Change::Account(a)) if a == s.account => break,
                        Ok(_) => continue,
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return None,
                    },
                    _ = crate::stopped(&mut s.shutdown) => return None,
                }
            }
        }
    })
}
