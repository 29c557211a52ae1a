//! A ticket: its state (from the node), its image (QR with the details printed under it),
//! revocation and transfer.
//!
//! Two kinds of access. Public routes (`GET /v1/tickets/{code}` without a token, the
//! images, the page and its stream) take a static ticket's code, or any ticket's page token
//! (`tk_…`, issued at booking, shown by no QR). They never resolve a rotating code (minted
//! or of a time step: a screenshot must lead nowhere), never show a rotating ticket's minted
//! code, and say of a transferred ticket only that it was transferred. Routes with the API
//! token see everything: the minted code, the successor and the holder's page link.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use stile_protocol::client::ClientError;
use stile_protocol::code::{CodeBytes, CodeFormat};
use stile_protocol::frame::error_code;
use utoipa::ToSchema;

use super::bookings::{Holder, NewTicket};
use crate::live::{state_word, Change};
use crate::problem::{Json, Path, Problem};
use crate::store;
use crate::App;

/// How long a node may take to say a ticket's state before the stored one is shown.
const STATUS_TIMEOUT_MS: u64 = 1_500;
/// What a page token starts with (never a code symbol, so the two cannot be confused).
pub const PAGE_TOKEN_PREFIX: &str = "tk_";
/// Random bytes of a page token.
const PAGE_TOKEN_BYTES: usize = 24;

/// A new holder's page token.
pub fn new_page_token() -> String {
    format!(
        "{PAGE_TOKEN_PREFIX}{}",
        super::auth::random_token(PAGE_TOKEN_BYTES)
    )
}

/// Who is asking, which decides what a ticket's view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone with the code or page link: no successor, no rotating ticket's minted code.
    Public,
    /// The API token: everything.
    Api,
}

/// A ticket as the gateway stores it.
#[derive(Debug, Clone)]
pub struct TicketRow {
    /// Code text as minted.
    pub code: String,
    /// Code bytes as minted.
    pub bytes: CodeBytes,
    /// Event.
    pub event: super::events::EventRow,
    /// Booking.
    pub booking: i64,
    /// Seat.
    pub seat: Option<String>,
    /// Holder's name.
    pub holder: String,
    /// Account.
    pub account: Option<i64>,
    /// Key and step of a rotating ticket.
    pub rotating: Option<([u8; 32], u32)>,
    /// The code that replaced it (transfer).
    pub successor: Option<String>,
    /// The code it replaced.
    pub predecessor: Option<String>,
    /// The holder's page token.
    pub page_token: String,
    /// State as the node's events last said.
    pub last_state: String,
    /// Gate of the last change.
    pub last_gate: Option<u16>,
    /// Time of the last change.
    pub last_at: Option<u64>,
}

/// A ticket's details and live state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TicketView {
    /// The feature code (as minted).
    pub code: String,
    /// `valid`, `used`, `revoked`, `transferred` (passed on to a new holder: this code is
    /// void, as `transferred: true` also says), `expired`, or `void` (the node holds no such
    /// ticket any more: its partition was purged).
    pub state: String,
    /// Event name.
    pub event: String,
    /// Event id.
    pub event_id: i64,
    /// The provider selling the event: the organiser, as the holder's page names it.
    pub provider_name: String,
    /// Venue.
    pub venue: String,
    /// Event start, RFC 3339.
    pub starts_at: String,
    /// Seat (absent: free seating).
    pub seat: Option<String>,
    /// Holder's name.
    pub holder: String,
    /// Not valid before, RFC 3339.
    pub valid_from: Option<String>,
    /// Not valid after, RFC 3339.
    pub valid_until: Option<String>,
    /// Validity in words.
    pub validity: String,
    /// When it was used (state `used`), RFC 3339.
    pub used_at: Option<String>,
    /// The gate that admitted it (state `used`).
    pub gate: Option<u16>,
    /// That gate's name, if it was given one (`POST /v1/providers/{id}/gates`).
    #[serde(default)]
    pub gate_name: Option<String>,
    /// Entries counted (multi-entry tickets).
    pub entries: u8,
    /// Inside now (entry/exit tickets).
    pub inside: bool,
    /// The code that replaced this one by a transfer (API token only; public views say
    /// only `transferred`).
    pub successor: Option<String>,
    /// The ticket was transferred: this code is void.
    #[serde(default)]
    pub transferred: bool,
    /// The code this one replaced.
    pub predecessor: Option<String>,
    /// The holder's page (API token only): give this link to the holder alone.
    #[serde(default)]
    pub page: Option<String>,
    /// Rotating code: the QR changes every `step_s` seconds.
    pub rotating: bool,
    /// Rotation step, seconds.
    pub step_s: Option<u32>,
    /// Gateway clock, RFC 3339.
    pub server_time: String,
    /// Gateway clock, Unix milliseconds.
    pub server_unix_ms: u64,
    /// True when the node did not answer and the state is the last one the gateway saw.
    pub stale: bool,
}

/// Parses a code from a URL or body: hyphens and spaces allowed, any case.
pub fn parse_code(text: &str) -> Result<CodeBytes, Problem> {
    let clean: String = text.chars().filter(|c| *c != '-' && *c != ' ').collect();
    CodeBytes::parse(&clean).map_err(|e| {
        Problem::bad_request(format!(
            "{text:?} is not a ticket code ({e}); check it for typos"
        ))
    })
}

/// How a ticket is looked up.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// By any form of its code (a rotating code of a step near now included).
    Code(CodeBytes),
    /// By the holder's page token.
    PageToken(String),
}

/// Reads a ticket by any form of its code (inside a database call).
pub fn load(c: &rusqlite::Connection, code: &CodeBytes) -> Result<TicketRow, Problem> {
    load_by(c, &Lookup::Code(*code))
}

/// Reads a ticket by its code or page token (inside a database call).
pub fn load_by(c: &rusqlite::Connection, by: &Lookup) -> Result<TicketRow, Problem> {
    let code = match by {
        Lookup::Code(code) => Some(code),
        Lookup::PageToken(_) => None,
    };
    let text = match by {
        Lookup::Code(code) => code.to_text().as_str().to_string(),
        Lookup::PageToken(token) => token.clone(),
    };
    let mut row = match &by {
        Lookup::Code(_) => store::tickets::by_code(c, &text)?,
        Lookup::PageToken(token) => store::tickets::by_page_token(c, token)?,
    };
    if let Some(code) = code.filter(|c| row.is_none() && c.format() == CodeFormat::Rotating) {
        // A rotating code of another time step: the same ticket.
        let h = code.header();
        row = store::tickets::rotating_by_number(c, (h.provider, h.partition, h.serial))?;
    }
    if let (Some(r), Some(code)) = (&row, code) {
        if r.code != text && !rotating_code_matches(code, &r.code, r.rotating.as_ref()) {
            // Same ticket number, but this code was not drawn with the ticket's key.
            row = None;
        }
    }
    let Some(r) = row else {
        return Err(Problem::not_found(match by {
            Lookup::Code(_) => format!("no ticket {text} was sold here"),
            Lookup::PageToken(_) => "no ticket has this page link".to_string(),
        }));
    };
    let bytes = CodeBytes::parse(&r.code)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(TicketRow {
        event: super::events::load(c, r.event)?,
        code: r.code,
        bytes,
        booking: r.booking,
        seat: r.seat,
        holder: r.holder,
        account: r.account,
        rotating: r.rotating,
        successor: r.successor,
        predecessor: r.predecessor,
        page_token: r.page_token.unwrap_or_default(),
        last_state: r.last_state,
        last_gate: r.last_gate,
        last_at: r.last_at.map(|t| t as u64),
    })
}

/// What URLs of the holder's page and images name: a rotating ticket's page token (its
/// codes are never a way in), a static ticket's code.
pub fn page_id(t: &TicketRow) -> &str {
    if t.rotating.is_some() {
        &t.page_token
    } else {
        &t.code
    }
}

/// The ticket's view for `access`: the node's answer, or the stored state if the node is
/// away.
pub async fn view(app: &App, t: &TicketRow, access: Access) -> TicketView {
    let ev = &t.event;
    let now_ms = crate::now_ms();
    let api = access == Access::Api;
    let mut v = TicketView {
        code: if api {
            t.code.clone()
        } else {
            page_id(t).to_string()
        },
        state: t.last_state.clone(),
        event: ev.view.name.clone(),
        event_id: ev.view.id,
        provider_name: String::new(),
        venue: ev.view.venue.clone(),
        starts_at: ev.view.starts_at.clone(),
        seat: t.seat.clone(),
        holder: t.holder.clone(),
        valid_from: ev.view.valid_from.clone(),
        valid_until: ev.view.valid_until.clone(),
        validity: ev.validity_text(),
        used_at: None,
        gate: None,
        gate_name: None,
        entries: 0,
        inside: false,
        successor: t.successor.clone().filter(|_| api),
        transferred: t.successor.is_some(),
        predecessor: t.predecessor.clone(),
        page: api.then(|| format!("/t/{}", page_id(t))),
        rotating: t.rotating.is_some(),
        step_s: t.rotating.map(|(_, s)| s),
        server_time: crate::rfc3339(now_ms / 1000),
        server_unix_ms: now_ms,
        stale: true,
    };
    let status = async {
        let (_, client) = app
            .nodes
            .for_provider(t.bytes.provider())
            .await
            .map_err(|_| ())?;
        let timeout = std::time::Duration::from_millis(STATUS_TIMEOUT_MS);
        match tokio::time::timeout(timeout, client.status(&t.bytes)).await {
            Ok(Ok(info)) => Ok(Some(info)),
            // The node answered that it holds no such ticket (its partition was purged).
            Ok(Err(ClientError::Node { code, .. })) if code == error_code::NOT_FOUND => Ok(None),
            _ => Err(()),
        }
    };
    match status.await {
        Ok(None) => {
            v.stale = false;
            v.state = "void".into();
        }
        Ok(Some(info)) => {
            v.stale = false;
            v.state = state_word(info.state).to_string();
            v.entries = info.entries;
            v.inside = info.inside;
            if v.state == "used" || info.inside || info.entries > 0 {
                v.used_at =
                    (info.last_event_unix_s != 0).then(|| crate::rfc3339(info.last_event_unix_s));
                v.gate = (info.gate != 0).then_some(info.gate);
            }
        }
        Err(()) => {
            if v.state == "used" {
                v.used_at = t.last_at.map(crate::rfc3339);
                v.gate = t.last_gate;
            }
            if v.state == "valid" && ev.valid_until_s != 0 && crate::now_s() > ev.valid_until_s {
                v.state = "expired".into();
            }
        }
    }
    if t.successor.is_some() {
        // The node says `revoked`: to the holder, and to whoever looks it up, it was passed on.
        v.state = "transferred".into();
    }
    let (provider, gate) = (t.bytes.provider(), v.gate);
    let names = app
        .db
        .call(move |c| -> Result<_, crate::db::DbError> {
            let gate_name = match gate {
                Some(g) => store::providers::gate_name(c, provider, g)?,
                None => None,
            };
            Ok((store::providers::name(c, provider)?, gate_name))
        })
        .await;
    if let Ok((provider_name, gate_name)) = names {
        v.provider_name = provider_name.unwrap_or_default();
        v.gate_name = gate_name;
    }
    v
}

/// Steps either side of now in which a rotating code's step byte is looked for.
const ROTATING_LOOKUP_STEPS: u64 = 4;

/// Whether `code` is the ticket's rotating code for a step near now (its tag checked with
/// the ticket's key, in constant time).
fn rotating_code_matches(code: &CodeBytes, minted: &str, key: Option<&([u8; 32], u32)>) -> bool {
    use subtle::ConstantTimeEq;
    let (Some((key, step_s)), Some(low), Ok(minted)) =
        (key, code.step_low(), CodeBytes::parse(minted))
    else {
        return false;
    };
    let step_s = u64::from((*step_s).max(1));
    let now_step = crate::now_s() / step_s;
    let first = now_step.saturating_sub(ROTATING_LOOKUP_STEPS);
    (first..=now_step + ROTATING_LOOKUP_STEPS)
        .filter(|s| *s as u8 == low)
        .any(|s| {
            let drawn = crate::rotating::code_at(&minted, key, step_s as u32, s * step_s);
            bool::from(drawn.as_bytes().ct_eq(code.as_bytes()))
        })
}

/// What the text in a URL names: a page token or a code.
fn lookup_of(text: &str) -> Result<Lookup, Problem> {
    if text.starts_with(PAGE_TOKEN_PREFIX) {
        return Ok(Lookup::PageToken(text.to_string()));
    }
    Ok(Lookup::Code(parse_code(text)?))
}

/// Loads a ticket by the text in a URL, for a route with the API token: any code, a
/// rotating code of a step near now, or a page token.
pub async fn find(app: &App, code: &str) -> Result<TicketRow, Problem> {
    let by = lookup_of(code)?;
    app.db.call(move |c| load_by(c, &by)).await
}

/// Loads a ticket by the text in a URL, for a public route: a page token, or a static
/// ticket's code. A rotating code (minted or of any step) finds nothing here, whatever
/// ticket it belongs to: the same answer for all, so it says nothing about which exist.
pub async fn find_public(app: &App, text: &str) -> Result<TicketRow, Problem> {
    let refused = || {
        Problem::not_found(format!(
            "no ticket page for {text}: a rotating ticket is shown only at the page link its \
             booking gave the holder (a code from a screen opens nothing)"
        ))
    };
    let by = lookup_of(text)?;
    if let Lookup::Code(code) = &by {
        if code.format() == CodeFormat::Rotating {
            return Err(refused());
        }
    }
    let t = app.db.call(move |c| load_by(c, &by)).await?;
    if t.rotating.is_some() && !text.starts_with(PAGE_TOKEN_PREFIX) {
        return Err(refused());
    }
    Ok(t)
}

/// A ticket's details and live state. Without a token: by a static code or a page link,
/// with no successor and no rotating code; with the API token: by any code, everything.
#[utoipa::path(get, path = "/v1/tickets/{code}", params(("code" = String, Path, description = "a static ticket's code or a page token (`tk_…`); with the API token, any code")),
    responses((status = 200, body = TicketView), (status = 400, body = Problem),
        (status = 404, body = Problem)))]
pub async fn get(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    Path(code): Path<String>,
) -> Result<Response, Problem> {
    // Any other token (a gate's, a device's) gets the public view.
    let access = match super::auth::bearer(&headers) {
        Some(token) if super::auth::hash_token(token) == app.api_token_hash => Access::Api,
        _ => Access::Public,
    };
    let t = match access {
        Access::Api => find(&app, &code).await?,
        Access::Public => find_public(&app, &code).await?,
    };
    Ok(Json(view(&app, &t, access).await).into_response())
}

/// The code the QR shows now: the minted one, or a rotating ticket's code of this step.
pub fn code_now(t: &TicketRow) -> String {
    match t.rotating {
        Some(_) => code_now_bytes(t).to_text().as_str().to_string(),
        None => t.code.clone(),
    }
}

/// The bytes of the code the QR shows now (what a gate presenting this ticket would send).
pub fn code_now_bytes(t: &TicketRow) -> CodeBytes {
    match t.rotating {
        Some((key, step_s)) => crate::rotating::code_at(&t.bytes, &key, step_s, crate::now_s()),
        None => t.bytes,
    }
}

fn label_parts(t: &TicketRow) -> (String, String, String, String) {
    let ev = &t.event;
    (
        format!("{} · {}", ev.view.name, crate::human_time(ev.starts_at_s)),
        match &t.seat {
            Some(s) => format!("Seat {s}"),
            None => "Free seating".to_string(),
        },
        t.holder.clone(),
        ev.validity_text(),
    )
}

fn image_response(t: &TicketRow, content_type: &'static str, body: Vec<u8>) -> Response {
    let cache = if t.rotating.is_some() {
        "no-store"
    } else {
        "private, max-age=300"
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response()
}

fn qr_problem(e: crate::qr::QrError) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("drawing the QR code failed: {e}"),
    )
}

/// The ticket image as SVG: the QR code (alphanumeric, level M) with event, seat, holder
/// and validity printed under it. A link that leads nowhere gets the HTML page saying so
/// unless the request accepts JSON.
#[utoipa::path(get, path = "/v1/tickets/{code}/qr.svg", params(("code" = String, Path, description = "a static ticket's code or a page token (`tk_…`)")),
    responses((status = 200, content_type = "image/svg+xml", body = String),
        (status = 400, content_type = "text/html", body = String, description = "not a whole code or page token (a problem for `Accept: application/json`)"),
        (status = 404, content_type = "text/html", body = String, description = "no such ticket (a problem for `Accept: application/json`)")))]
pub async fn qr_svg(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    Path(code): Path<String>,
) -> Response {
    image(&app, &code, Image::Svg)
        .await
        .unwrap_or_else(|p| super::pages::missing_or_problem(&headers, p))
}

/// The ticket image as PNG (decodable by an ordinary QR reader to exactly the code). A link
/// that leads nowhere gets the HTML page saying so unless the request accepts JSON.
#[utoipa::path(get, path = "/v1/tickets/{code}/qr.png", params(("code" = String, Path, description = "a static ticket's code or a page token (`tk_…`)")),
    responses((status = 200, content_type = "image/png", body = Vec<u8>),
        (status = 400, content_type = "text/html", body = String, description = "not a whole code or page token (a problem for `Accept: application/json`)"),
        (status = 404, content_type = "text/html", body = String, description = "no such ticket (a problem for `Accept: application/json`)")))]
pub async fn qr_png(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    Path(code): Path<String>,
) -> Response {
    image(&app, &code, Image::Png)
        .await
        .unwrap_or_else(|p| super::pages::missing_or_problem(&headers, p))
}

/// Which image.
#[derive(Debug, Clone, Copy)]
enum Image {
    Svg,
    Png,
}

/// The ticket's image of the code it shows now, with its details printed under the QR.
async fn image(app: &App, code: &str, kind: Image) -> Result<Response, Problem> {
    let t = find_public(app, code).await?;
    let (event, seat, holder, validity) = label_parts(&t);
    let label = crate::qr::TicketLabel {
        event: &event,
        seat: &seat,
        holder: &holder,
        validity: &validity,
    };
    let now = code_now(&t);
    Ok(match kind {
        Image::Svg => {
            let svg = crate::qr::svg(&now, &label).map_err(qr_problem)?;
            image_response(&t, "image/svg+xml", svg.into_bytes())
        }
        Image::Png => image_response(
            &t,
            "image/png",
            crate::qr::png(&now, &label).map_err(qr_problem)?,
        ),
    })
}

/// Revokes a ticket: every gate refuses it from now on.
#[utoipa::path(post, path = "/v1/tickets/{code}/revoke", params(("code" = String, Path, description = "feature code")),
    security(("api_token" = [])),
    responses((status = 200, body = TicketView), (status = 404, body = Problem)))]
pub async fn revoke(
    State(app): State<Arc<App>>,
    Path(code): Path<String>,
) -> Result<Json<TicketView>, Problem> {
    let t = find(&app, &code).await?;
    let (_, client) = app.nodes.for_provider(t.bytes.provider()).await?;
    client.revoke(&t.bytes).await?;
    let (c2, account) = (t.code.clone(), t.account);
    app.db
        .call(move |c| -> Result<(), Problem> { Ok(store::tickets::set_revoked(c, &c2)?) })
        .await?;
    app.live.publish(Change::Ticket(t.code.as_str().into()));
    if let Some(a) = account {
        app.live.publish(Change::Account(a));
    }
    let t = find(&app, &code).await?;
    Ok(Json(view(&app, &t, Access::Api).await))
}

/// A transfer to a new holder.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The new holder.
    pub holder: Holder,
    /// The new holder's account (absent: none).
    pub account: Option<i64>,
}

/// The result of a transfer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferView {
    /// The old code, now void.
    pub voided: String,
    /// The new ticket.
    pub ticket: TicketView,
}

/// Transfers a ticket: the old code is void and a new one is issued to the new holder.
#[utoipa::path(post, path = "/v1/tickets/{code}/transfer", request_body = TransferRequest,
    params(("code" = String, Path, description = "feature code")), security(("api_token" = [])),
    responses((status = 201, body = TransferView),
        (status = 200, body = TransferView, description = "transferred before to the same holder and account: the same successor"),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn transfer(
    State(app): State<Arc<App>>,
    Path(code): Path<String>,
    Json(req): Json<TransferRequest>,
) -> Result<(StatusCode, Json<TransferView>), Problem> {
    // In a task of its own: a client that hangs up cannot stop a transfer between the node
    // (old code void, new code minted) and the database (new code stored).
    tokio::spawn(transfer_inner(app, code, req))
        .await
        .map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("transfer failed: {e}"),
            )
        })?
}

async fn transfer_inner(
    app: Arc<App>,
    code: String,
    req: TransferRequest,
) -> Result<(StatusCode, Json<TransferView>), Problem> {
    let holder = super::bookings::validate_holder(&req.holder, app.config.webhook_private)?;
    let t = find(&app, &code).await?;
    if let Some(s) = &t.successor {
        // Asked again for the same holder (an answer lost on the way): the same result, as
        // the node gives. For someone else: a conflict.
        let done = find(&app, s).await?;
        if done.holder == holder.name && done.account == req.account {
            return Ok((
                StatusCode::OK,
                Json(TransferView {
                    voided: t.code.clone(),
                    ticket: view(&app, &done, Access::Api).await,
                }),
            ));
        }
        return Err(Problem::conflict(format!(
            "ticket {} was already transferred to {s}, for another holder",
            t.code
        )));
    }
    if t.event.ended(crate::now_s()) {
        // The new code could open no gate: refuse rather than mint a ticket already void.
        return Err(Problem::unprocessable(format!(
            "event {} ({}) has ended: its tickets can open no gate any more, so none is \
             transferred",
            t.event.view.id, t.event.view.name
        )));
    }
    if let Some(a) = req.account {
        let known = app
            .db
            .call(move |c| -> Result<bool, Problem> { Ok(store::accounts::exists(c, a)?) })
            .await?;
        if !known {
            return Err(Problem::unprocessable(format!("no account {a}")));
        }
    }
    let (_, client) = app.nodes.for_provider(t.bytes.provider()).await?;
    // The node answers a ticket it transferred before with that successor's code: a transfer
    // whose answer was lost, or whose commit below never happened (a crash), completes now.
    let bytes = client.transfer(&t.bytes).await.map_err(|e| match e {
        stile_protocol::client::ClientError::Node { message, .. } => {
            Problem::conflict(format!("the node refused the transfer: {message}"))
        }
        other => Problem::from(other),
    })?;
    let rotating = match t.rotating {
        Some(_) => Some(crate::rotating::fetch_key(&client, &bytes).await?),
        None => None,
    };
    let new = NewTicket {
        code: bytes.to_text().as_str().to_string(),
        bytes,
        rotating,
    };
    let new_code = new.code.clone();
    let (old, old_account, account) = (t.clone(), t.account, req.account);
    app.db
        .call(move |c| -> Result<(), Problem> {
            let tx = crate::db::immediate(c)?;
            if !store::tickets::set_transferred(&tx, &old.code, &new.code)? {
                // A racing request for the same ticket committed first (the node answered
                // both with the one successor).
                return Err(Problem::conflict(format!(
                    "ticket {} was already transferred",
                    old.code
                )));
            }
            super::bookings::insert_ticket(
                &tx,
                old.booking,
                &old.event,
                old.seat.as_deref(),
                &holder,
                account,
                &new,
                Some(&old.code),
            )?;
            if let Some(a) = old_account.filter(|a| Some(*a) != account) {
                // The old holder learns that it was transferred, never the new code.
                let body = serde_json::json!({"code": old.code, "kind": "transferred"});
                super::accounts::add_event(&tx, a, &old.code, "transferred", &body)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    app.metrics.tickets_issued.inc();
    app.live.publish(Change::Ticket(t.code.as_str().into()));
    for a in [old_account, account].into_iter().flatten() {
        app.live.publish(Change::Account(a));
    }
    app.outbox_wake.notify_one();
    let new_row = find(&app, &new_code).await?;
    Ok((
        StatusCode::CREATED,
        Json(TransferView {
            voided: t.code.clone(),
            ticket: view(&app, &new_row, Access::Api).await,
        }),
    ))
}
