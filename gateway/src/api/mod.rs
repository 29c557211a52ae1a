//! The HTTP API: routes, the OpenAPI document generated from them, and the layers every
//! request passes (body limit, metrics, problem+json fallbacks).

pub mod accounts;
pub mod auth;
pub mod bookings;
pub mod checkin;
pub mod events;
pub mod pages;
pub mod providers;
pub mod staff;
pub mod tickets;
pub mod venue;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::metrics::{LatencyLabels, RouteLabels};
use crate::{problem, App};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "stile gateway",
        description = "Booking, QR images, the live e-ticket page, transfers, reminders, linked \
                       devices and HTTP check-in. Management routes need the API token \
                       (`Authorization: Bearer`, from the gateway's `api-token` file); HTTP \
                       check-in needs a gate token; staff check-in on the holder's page needs \
                       the gate's PIN; device streams need a device token (in the \
                       header, or traded for a single-use stream ticket). A rotating ticket's \
                       page and images are reached by its page link (`tk_…`) only. Every \
                       error is `application/problem+json` (RFC 9457), except that a link to \
                       the holder's page or its images that leads nowhere gets an HTML page \
                       unless the request accepts JSON."
    ),
    modifiers(&Security),
    components(schemas(problem::Problem))
)]
struct ApiDoc;

/// Declares the bearer-token schemes.
struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        for name in ["api_token", "gate_token", "device_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// Management routes (API token).
fn management() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(providers::create, providers::list))
        .routes(routes!(providers::put))
        .routes(routes!(providers::create_gate))
        .routes(routes!(providers::revoke_gate))
        .routes(routes!(events::create))
        .routes(routes!(events::get))
        .routes(routes!(bookings::create))
        .routes(routes!(bookings::get))
        .routes(routes!(tickets::revoke))
        .routes(routes!(tickets::transfer))
        .routes(routes!(accounts::create))
        .routes(routes!(accounts::link_device))
        .routes(routes!(accounts::unlink_device))
        .routes(routes!(venue::occupancy))
        .routes(routes!(venue::attendance))
        .routes(routes!(venue::conflicts))
}

/// Public routes (the code is the capability) and routes with their own tokens.
fn public() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::new()
        .routes(routes!(tickets::get))
        .routes(routes!(tickets::qr_svg))
        .routes(routes!(tickets::qr_png))
        .routes(routes!(checkin::checkin))
        .routes(routes!(accounts::device_events))
        .routes(routes!(accounts::stream_ticket))
        .routes(routes!(pages::ticket_page))
        .routes(routes!(pages::ticket_events))
        .routes(routes!(staff::staff_checkin))
        .routes(routes!(pages::healthz))
        .routes(routes!(pages::metrics))
}

/// The whole router.
pub fn router(app: Arc<App>) -> Router {
    let (mgmt, mgmt_api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(management())
        .split_for_parts();
    let mgmt = mgmt.route_layer(middleware::from_fn_with_state(
        app.clone(),
        auth::require_api_token,
    ));
    let (open, open_api) = public().split_for_parts();
    let mut api = mgmt_api;
    api.merge(open_api);
    let api_json: Arc<str> = api.to_pretty_json().unwrap_or_default().into();
    Router::new()
        .merge(mgmt)
        .merge(open)
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let body = api_json.clone();
                async move { ([("content-type", "application/json")], body.to_string()) }
            }),
        )
        .route("/sw.js", axum::routing::get(pages::service_worker))
        .route("/static/ticket.js", axum::routing::get(pages::ticket_js))
        .route("/static/ticket.css", axum::routing::get(pages::ticket_css))
        .route("/favicon.svg", axum::routing::get(pages::favicon))
        .route("/favicon.ico", axum::routing::get(pages::favicon))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(crate::BODY_MAX_BYTES))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            std::time::Duration::from_millis(crate::BODY_TIMEOUT_MS),
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .layer(middleware::from_fn(security_headers))
        .with_state(app)
}

/// The content security policy of every answer: the page's script, style, images and
/// stream come from this origin only; it may not be framed, and no plugin runs.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; object-src 'none'";

/// Adds the security headers to every answer (the page, its images and assets included):
/// the content security policy, `nosniff`, and no referrer (page URLs are capabilities).
async fn security_headers(req: Request, next: Next) -> Response {
    use axum::http::{header, HeaderValue};
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// Whether `c` reorders text as it is shown (bidirectional embeddings, overrides and
/// isolates, and the marks): a name holding one can display as something it is not.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
    )
}

/// A handler panicked (a bug): answer 500 as a problem instead of dropping the connection.
fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    use axum::response::IntoResponse;
    tracing::error!("a request handler panicked");
    problem::Problem::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "the gateway failed on this request; it was logged, nothing else is affected",
    )
    .into_response()
}

/// Counts every request by route template and status, and times it.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS") => m,
        _ => "OTHER", // any token is a method to hyper: keep the label set bounded
    }
    .to_string();
    let res = next.run(req).await;
    let labels = RouteLabels {
        method,
        route: route.clone(),
        status: res.status().as_u16(),
    };
    app.metrics.requests.get_or_create(&labels).inc();
    app.metrics
        .latency
        .get_or_create(&LatencyLabels { route })
        .observe(start.elapsed().as_secs_f64());
    res
}

/// Checks a text field: trimmed, not empty, at most [`crate::TEXT_MAX_CHARS`].
pub fn text_field(name: &str, value: &str) -> Result<String, problem::Problem> {
    let v = value.trim();
    if v.is_empty() {
        return Err(problem::Problem::unprocessable(format!(
            "`{name}` must not be empty"
        )));
    }
    if v.chars().count() > crate::TEXT_MAX_CHARS {
        return Err(problem::Problem::unprocessable(format!(
            "`{name}` is longer than {} characters",
            crate::TEXT_MAX_CHARS
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(problem::Problem::unprocessable(format!(
            "`{name}` contains control characters"
        )));
    }
    if v.chars().any(is_bidi_control) {
        return Err(problem::Problem::unprocessable(format!(
            "`{name}` contains bidirectional control characters (U+202A to U+202E, U+2066 to \
             U+2069, U+200E, U+200F, U+061C), which make text show as something it is not; \
             remove them"
        )));
    }
    if let Some(c) = v.chars().find(|&c| is_invisible(c)) {
        return Err(problem::Problem::unprocessable(format!(
            "`{name}` contains the invisible character U+{:04X} (a zero-width, joining, \
             separator or tag character), which makes two names look alike; remove it",
            c as u32
        )));
    }
    Ok(v.to_string())
}

/// Whether `c` shows as nothing (or as a line break) though it is part of the text: zero
/// width spaces and joiners, word joiners and invisible operators, the soft hyphen and
/// combining grapheme joiner, the byte order mark, line and paragraph
/// separators, Hangul fillers and tag characters. "A1" and "A\u{200B}1" would be two seats
/// that look the same.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200D}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: zero-width and other invisible characters passed, so "A1" and
    /// "A\u{200B}1" were two seats (or names) that look alike.
    #[test]
    fn text_fields_refuse_invisible_characters() {
        for bad in [
            "A\u{200B}1",
            "A\u{2028}B",
            "x\u{FEFF}y",
            "so\u{00AD}ft",
            "t\u{E0041}ag",
        ] {
            let p = text_field("seat", bad).unwrap_err();
            assert_eq!(p.status, 422);
            assert!(p.detail.contains("invisible"), "{}", p.detail);
        }
        // Letters of any script, and emoji with their variation selector, pass.
        assert_eq!(text_field("name", "Zoë Ångström").unwrap(), "Zoë Ångström");
        assert_eq!(
            text_field("name", "Ada \u{2764}\u{FE0F}").unwrap(),
            "Ada \u{2764}\u{FE0F}"
        );
    }

    #[test]
    fn text_fields_refuse_bidi_controls() {
        for bad in [
            "Ada\u{202E}gnp.exe",
            "\u{2066}Bob\u{2069}",
            "A\u{202A}B",
            "x\u{200F}",
        ] {
            let p = text_field("holder.name", bad).unwrap_err();
            assert_eq!(p.status, 422);
            assert!(p.detail.contains("bidirectional"), "{}", p.detail);
        }
        assert_eq!(text_field("seat", " Ünïcødé ✓ ").unwrap(), "Ünïcødé ✓");
    }
}
