//! HTTP check-in for scanners without QUIC. The gate's token decides the gate and provider;
//! the check-in goes to the provider's node with `checkin_as` and the engine's outcome comes
//! back. Forged and unknown codes spend the token's budget; past it, the gate gets
//! `rate_limited` for a cooldown, and other gates are unaffected.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use stile_protocol::code::CodeBytes;
use stile_protocol::outcome::{Outcome, OutcomeKind};
use utoipa::ToSchema;

use crate::metrics::OutcomeLabels;
use crate::problem::{Json, Problem};
use crate::{App, GatewayConfig};

/// Gates whose cooldown is remembered at most; older entries are dropped when full.
const COOLDOWNS_MAX: usize = 65_536;

/// Budgets of forged and unknown codes per gate.
#[derive(Debug)]
pub struct Budgets {
    /// Tokens per gate.
    limiter: DefaultKeyedRateLimiter<(u16, u16)>,
    /// Gates in cooldown, until when.
    cooldowns: Mutex<HashMap<(u16, u16), Instant>>,
    /// Length of a cooldown.
    cooldown: Duration,
}

impl Budgets {
    /// Budgets from the configuration.
    pub fn new(config: &GatewayConfig) -> Budgets {
        let per_s = NonZeroU32::new(config.checkin_budget_per_s.max(1)).expect("max(1)");
        let burst = NonZeroU32::new(config.checkin_burst.max(1)).expect("max(1)");
        Budgets {
            limiter: RateLimiter::keyed(Quota::per_second(per_s).allow_burst(burst)),
            cooldowns: Mutex::new(HashMap::new()),
            cooldown: Duration::from_millis(config.checkin_cooldown_ms),
        }
    }

    fn cooling(&self, gate: (u16, u16)) -> bool {
        let cooldowns = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        cooldowns
            .get(&gate)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// Spends one unit of `gate`'s budget; false (and a cooldown) when there is none left.
    fn spend(&self, gate: (u16, u16)) -> bool {
        if self.limiter.check_key(&gate).is_ok() {
            return true;
        }
        let mut cooldowns = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        if cooldowns.len() >= COOLDOWNS_MAX {
            let now = Instant::now();
            cooldowns.retain(|_, until| *until > now);
        }
        cooldowns.insert(gate, Instant::now() + self.cooldown);
        false
    }
}

/// A scan sent over HTTP.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckinRequest {
    /// The scanned code.
    pub code: String,
    /// The gate, if the scanner states it; must be the token's gate.
    pub gate: Option<u16>,
    /// The provider, if the scanner states it; must be the token's provider.
    pub provider: Option<u16>,
    /// The scanner's id for this scan; a retry with the same id gets the original answer.
    pub scan_id: Option<u64>,
}

/// The engine's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckinView {
    /// The code as sent.
    pub code: String,
    /// `admitted`, `already_used`, `not_yet_valid`, `expired`, `revoked`, `forged`,
    /// `unknown`, `wrong_provider` or `rate_limited`.
    pub outcome: String,
    /// Whether the gate opens.
    pub admit: bool,
    /// The gate that asked.
    pub gate: u16,
    /// The provider of that gate.
    pub provider: u16,
    /// The gate the outcome names (the earlier gate for `already_used`).
    pub outcome_gate: Option<u16>,
    /// Time the outcome names, RFC 3339 (earlier use, start or end of validity).
    pub at: Option<String>,
    /// Entries counted.
    pub entries: u8,
    /// The answer in words, for the gate's display.
    pub message: String,
    /// The scan id used.
    pub scan_id: u64,
}

fn view(code: &str, gate: (u16, u16), o: &Outcome, scan_id: u64) -> CheckinView {
    CheckinView {
        code: code.to_string(),
        outcome: o.kind.to_string(),
        admit: o.kind == OutcomeKind::Admitted,
        gate: gate.1,
        provider: gate.0,
        outcome_gate: (o.gate != 0).then_some(o.gate),
        at: (o.at_unix_s != 0).then(|| crate::rfc3339(o.at_unix_s)),
        entries: o.entries,
        message: o.message(),
        scan_id,
    }
}

/// Checks a code in on behalf of the token's gate.
#[utoipa::path(post, path = "/v1/checkin", request_body = CheckinRequest,
    security(("gate_token" = [])),
    responses((status = 200, body = CheckinView, description = "the engine's outcome, whatever it is"),
        (status = 429, body = Problem, description = "rate_limited: too many forged or unknown codes; the check-in fields are extension members"),
        (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn checkin(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, Problem> {
    let Some(token) = super::auth::bearer(&headers) else {
        return Ok(super::auth::unauthorized(
            "HTTP check-in needs `Authorization: Bearer TOKEN` with the gate's token \
             (POST /v1/providers/{id}/gates issues one)",
        ));
    };
    let hash = super::auth::hash_token(token);
    let gate = app
        .db
        .call(move |c| -> Result<Option<(u16, u16)>, Problem> {
            Ok(crate::store::providers::gate_of_token(c, &hash)?)
        })
        .await?;
    let Some(gate) = gate else {
        return Ok(super::auth::unauthorized("this gate token is unknown"));
    };
    // The body is looked at only once the token is known: strangers learn nothing from it.
    let body = body.map_err(|r| {
        let status = r.status();
        match status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            true => Problem::new(
                status,
                format!("the body is larger than {} bytes", crate::BODY_MAX_BYTES),
            ),
            false => Problem::new(status, format!("reading the body: {}", r.body_text())),
        }
    })?;
    let req: CheckinRequest = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(format!(
            "the body must be JSON like {{\"code\": \"…\"}} (optional gate, provider, scan_id): {e}"
        ))
    })?;
    if req.provider.is_some_and(|p| p != gate.0) || req.gate.is_some_and(|g| g != gate.1) {
        return Err(Problem::forbidden(format!(
            "this token is gate {} of provider {}; the body says otherwise, so nothing was checked in",
            gate.1, gate.0
        )));
    }
    let (provider, client) = (gate.0, app.nodes.for_provider(gate.0).await?.1);
    let scan_id = req.scan_id.unwrap_or_else(|| client.next_scan_id());
    let outcome = if app.budgets.cooling(gate) {
        Outcome::RATE_LIMITED
    } else {
        let clean: String = req
            .code
            .chars()
            .filter(|c| *c != '-' && *c != ' ')
            .collect();
        match CodeBytes::parse(&clean) {
            Err(_) => Outcome::FORGED,
            Ok(code) if code.provider() != provider => Outcome::WRONG_PROVIDER,
            Ok(code) => client
                .checkin_as(gate.1, provider, &code, scan_id)
                .await
                .map_err(|e| {
                    // The node may have admitted it before the answer was lost: the scanner
                    // needs the scan id to ask again and get that answer, not `already_used`.
                    let mut p = Problem::from(e);
                    let mut extra = serde_json::Map::new();
                    extra.insert("scan_id".into(), scan_id.into());
                    p.extra = Some(extra);
                    p.detail.push_str(&format!(
                        "; retry with \"scan_id\": {scan_id} to get this scan's answer"
                    ));
                    p
                })?,
        }
    };
    let outcome = match outcome.kind {
        OutcomeKind::Forged | OutcomeKind::Unknown if !app.budgets.spend(gate) => {
            tracing::warn!(
                provider,
                gate = gate.1,
                "HTTP check-in budget spent; cooling down"
            );
            outcome
        }
        _ => outcome,
    };
    app.metrics
        .checkins
        .get_or_create(&OutcomeLabels {
            outcome: outcome.kind.to_string(),
        })
        .inc();
    let answer = view(&req.code, gate, &outcome, scan_id);
    if outcome.kind == OutcomeKind::RateLimited {
        // A problem, with the check-in's fields as extension members for the scanner.
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "this gate sent too many forged or unknown codes; every scan is refused for a moment",
        )
        .retry_after(app.config.checkin_cooldown_ms.div_ceil(1000).max(1) as u32);
        p.extra = serde_json::to_value(&answer)
            .ok()
            .and_then(|v| v.as_object().cloned());
        return Err(p);
    }
    Ok((StatusCode::OK, Json(answer)).into_response())
}
