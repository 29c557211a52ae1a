//! The e-ticket page and its live stream, the page for a ticket link that leads nowhere, the
//! service worker and static files, and the operator routes `/healthz` and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use super::tickets::{self, Access, TicketView};
use crate::live::{Change, PeerAddr};
use crate::page::{self, Missing, PageData};
use crate::problem::{Path, Problem};
use crate::App;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures_util::stream::{self, Stream};

/// How long `/healthz` waits for the node's answer.
const HEALTH_TIMEOUT_MS: u64 = 1_000;

/// The e-ticket page: QR, details and live state. A link that leads nowhere (no such
/// ticket, or not a whole code or page token) gets an HTML page saying so, with the same
/// status, unless the request accepts JSON (then the problem).
#[utoipa::path(get, path = "/t/{code}", params(("code" = String, Path, description = "a static ticket's code or a page token (`tk_…`)")),
    responses((status = 200, content_type = "text/html", body = String),
        (status = 400, content_type = "text/html", body = String, description = "not a whole code or page token: an HTML page (a problem for `Accept: application/json`)"),
        (status = 404, content_type = "text/html", body = String, description = "no such ticket: an HTML page (a problem for `Accept: application/json`)")))]
pub async fn ticket_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    code: Result<Path<String>, Problem>,
) -> Response {
    // A link that is not even text (`/t/%ff`) is a dead link too: the same page.
    let code = match code {
        Ok(Path(code)) => code,
        Err(p) => return missing_or_problem(&headers, p),
    };
    let t = match tickets::find_public(&app, &code).await {
        Ok(t) => t,
        Err(p) => return missing_or_problem(&headers, p),
    };
    let v = tickets::view(&app, &t, Access::Public).await;
    let seat = t.seat.clone().unwrap_or_else(|| "Free seating".into());
    let html = page::ticket_page(&PageData {
        id: tickets::page_id(&t),
        code: t.rotating.is_none().then_some(t.code.as_str()),
        event: &v.event,
        organiser: &v.provider_name,
        venue: &v.venue,
        starts_at: &v.starts_at,
        seat: &seat,
        holder: &v.holder,
        valid_from: v.valid_from.as_deref(),
        valid_until: v.valid_until.as_deref(),
        valid_for_s: t.event.view.valid_for_s,
        state: &v.state,
        used_at: v.used_at.as_deref(),
        gate: v.gate,
        gate_name: v.gate_name.as_deref(),
        transferred: v.transferred,
        rotating: v.rotating,
        step_s: v.step_s.unwrap_or(30),
        server_unix_ms: v.server_unix_ms,
    });
    ([(header::CACHE_CONTROL, "no-cache")], Html(html)).into_response()
}

/// Whether a request wants a problem as JSON: its `Accept` names a JSON type. Browsers
/// opening a link (and `curl`, with `*/*`) get HTML.
pub fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("json"))
}

/// The answer for a ticket link of a page or an image that failed: the HTML page for a link
/// that leads nowhere (400, 404) unless the request accepts JSON; any other problem as is.
pub fn missing_or_problem(headers: &HeaderMap, p: Problem) -> Response {
    let why = match p.status {
        400 => Missing::Malformed,
        404 => Missing::Unknown,
        _ => return p.into_response(),
    };
    if accepts_json(headers) {
        return p.into_response();
    }
    missing_response(why)
}

/// The HTML page for a link that leads nowhere, with its status.
pub fn missing_response(why: Missing) -> Response {
    let status = match why {
        Missing::Malformed => StatusCode::BAD_REQUEST,
        Missing::Unknown => StatusCode::NOT_FOUND,
    };
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Html(page::missing_page(why)),
    )
        .into_response()
}

fn ticket_event(v: &TicketView) -> SseEvent {
    SseEvent::default()
        .event("ticket")
        .data(serde_json::to_string(v).unwrap_or_default())
}

/// The ticket's live state as server-sent events: `event: ticket` with the JSON of
/// `GET /v1/tickets/{code}`, once on connect and again on every change.
#[utoipa::path(get, path = "/t/{code}/events", params(("code" = String, Path, description = "a static ticket's code or a page token (`tk_…`)")),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 404, body = Problem),
        (status = 429, body = Problem, description = "too many open streams (of this ticket, this client address, or in all)")))]
pub async fn ticket_events(
    State(app): State<Arc<App>>,
    peer: Option<axum::Extension<PeerAddr>>,
    Path(code): Path<String>,
) -> Result<Response, Problem> {
    let t = tickets::find_public(&app, &code).await?;
    let client = peer.map(|p| p.0 .0.ip());
    let gauge = crate::live::StreamGauge::open(&app, format!("t:{}", t.code), client)?;
    let stream = ticket_stream(app, t.code.as_str().into(), t.bytes, gauge);
    Ok(Sse::new(stream)
        .keep_alive(
            KeepAlive::new().interval(Duration::from_secs(super::accounts::SSE_KEEPALIVE_S)),
        )
        .into_response())
}

/// State of one ticket stream.
struct TicketStream {
    /// Shared state.
    app: Arc<App>,
    /// The ticket's minted code bytes, to re-read it.
    bytes: stile_protocol::code::CodeBytes,
    /// Wakes on changes of this ticket only.
    changes: crate::live::Watch,
    /// Ends the stream when the gateway stops.
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The first event (the state on connect) is not sent yet.
    first: bool,
    /// The stream's place in the stream counts.
    _gauge: crate::live::StreamGauge,
}

fn ticket_stream(
    app: Arc<App>,
    code: Arc<str>,
    bytes: stile_protocol::code::CodeBytes,
    gauge: crate::live::StreamGauge,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = TicketStream {
        changes: crate::live::Live::watch(&app, Change::Ticket(code)),
        shutdown: app.shutdown.clone(),
        _gauge: gauge,
        app,
        bytes,
        first: true,
    };
    stream::unfold(state, |mut s| async move {
        if !s.first {
            // Only this ticket's changes wake it; several since the last read make one read.
            tokio::select! {
                _ = s.changes.changed() => {}
                _ = crate::stopped(&mut s.shutdown) => return None,
            }
        }
        s.first = false;
        let bytes = s.bytes;
        let t = s
            .app
            .db
            .call(move |c| tickets::load(c, &bytes))
            .await
            .ok()?;
        let v = tickets::view(&s.app, &t, Access::Public).await;
        Some((Ok(ticket_event(&v)), s))
    })
}

/// The service worker (offline copy of e-ticket pages).
pub async fn service_worker() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::HeaderName::from_static("service-worker-allowed"),
                "/",
            ),
        ],
        page::SW_JS,
    )
        .into_response()
}

/// The page's script.
pub async fn ticket_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        page::TICKET_JS,
    )
        .into_response()
}

/// The icon of every page (an SVG, at `/favicon.svg` and where browsers look unasked).
pub async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        page::FAVICON_SVG,
    )
        .into_response()
}

/// The page's style sheet.
pub async fn ticket_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        page::TICKET_CSS,
    )
        .into_response()
}

/// Ready when the default node answers a ping.
#[utoipa::path(get, path = "/healthz",
    responses((status = 200, description = "ready: the node answers"), (status = 503, body = Problem)))]
pub async fn healthz(State(app): State<Arc<App>>) -> Result<Response, Problem> {
    let node = app.nodes.routes.default_shard();
    let ping = async {
        let client = app.nodes.client(node).await?;
        client.ping().await
    };
    match tokio::time::timeout(Duration::from_millis(HEALTH_TIMEOUT_MS), ping).await {
        Ok(Ok(rtt)) => Ok((
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready", "node": node.to_string(), "node_rtt_us": rtt.as_micros() as u64})),
        )
            .into_response()),
        Ok(Err(e)) => Err(Problem::unavailable(format!("not ready: node {node} does not answer: {e}"))),
        Err(_) => Err(Problem::unavailable(format!(
            "not ready: node {node} did not answer within {HEALTH_TIMEOUT_MS} ms"
        ))),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}
