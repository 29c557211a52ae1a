//! Staff check-in on the holder's own page: where there is no scanner, a steward types the
//! gate's number and PIN on the holder's phone and confirms; the gateway checks the PIN and
//! checks the ticket in at the node as that gate (`checkin_as`, as the HTTP check-in does).
//!
//! The PIN is compared, in constant time, with a salted hash. Wrong PINs are counted per
//! ticket and per gate: [`GatewayConfig::staff_pin_attempts_max`] of them within
//! [`GatewayConfig::staff_pin_lockout_ms`] lock staff check-in on that ticket, or at that
//! gate, for that long (429 with `Retry-After`), whichever PIN comes next; six digits then
//! take years to guess. A confirmation carries the page's random id: the scan id is derived
//! from the ticket, the gate and that id, so a resend of the same confirmation gets the
//! node's first answer, and a second confirmation is a second scan (`already_used`, naming
//! the first's time and gate).
//!
//! What this cannot prevent: the steward sees the page the holder's phone shows, which may
//! be a fake, and types the gate's PIN on a stranger's device. Scanners are the secure path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stile_protocol::outcome::OutcomeKind;
use utoipa::ToSchema;

use super::tickets::{self, Access, TicketView};
use crate::metrics::{OutcomeLabels, ReasonLabels};
use crate::problem::{Json, Path, Problem};
use crate::{App, GatewayConfig};

/// Longest PIN accepted, in digits (issued PINs have [`super::auth::PIN_DIGITS`]).
pub const PIN_INPUT_MAX_LEN: usize = 16;
/// Longest confirmation id accepted, in characters.
pub const CONFIRMATION_MAX_LEN: usize = 64;
/// Tickets and gates whose wrong PINs are remembered at most; past it, expired entries are
/// dropped, and if none expired every staff check-in is refused until some do.
pub const STRIKES_MAX: usize = 65_536;

/// Whose wrong PINs are counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum StrikeKey {
    /// A ticket, by its minted code.
    Ticket(String),
    /// A gate: (provider, gate).
    Gate(u16, u16),
}

/// Wrong PINs of one ticket or gate.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    /// Wrong PINs since `last` came less than a lockout period after the one before.
    count: u32,
    /// Attempts whose PIN is being compared now: counted as wrong until they are known, so
    /// that a burst of concurrent guesses gets no more tries than one after another.
    pending: u32,
    /// The latest wrong PIN; the count starts over one lockout period after it.
    last: Instant,
    /// Locked until then, if it reached the limit.
    locked_until: Option<Instant>,
}

/// Wrong PINs per ticket and per gate, and the locks they set.
#[derive(Debug)]
pub struct PinGuard {
    /// Strikes by ticket and by gate.
    strikes: Mutex<HashMap<StrikeKey, Strikes>>,
    /// Wrong PINs that lock.
    attempts_max: u32,
    /// How long a lock lasts, and how long wrong PINs are remembered.
    lockout: Duration,
}

/// Why an attempt is refused before its PIN is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locked {
    /// Too many wrong PINs for this ticket.
    Ticket(Duration),
    /// Too many wrong PINs at this gate.
    Gate(Duration),
    /// The guard remembers as many tickets and gates as it may: every attempt is refused
    /// (never let through uncounted) until old strikes expire.
    Full,
}

/// One attempt's claim on its ticket's and gate's remaining tries, taken before its PIN is
/// compared: [`Attempt::wrong`] counts it, [`Attempt::right`] or dropping it gives it back.
struct Attempt<'a> {
    guard: &'a PinGuard,
    keys: [StrikeKey; 2],
    open: bool,
}

/// A wrong PIN's result: tries left before a lock, or the lock (and whether this attempt
/// set it, for counting lockouts once).
type Struck = Result<u32, (Locked, bool)>;

impl PinGuard {
    /// A guard with the configured limits.
    pub fn new(config: &GatewayConfig) -> PinGuard {
        PinGuard {
            strikes: Mutex::new(HashMap::new()),
            attempts_max: config.staff_pin_attempts_max.max(1),
            lockout: Duration::from_millis(config.staff_pin_lockout_ms),
        }
    }

    /// Claims one try of `ticket` and of `gate`, unless either is locked or has every try
    /// left claimed by attempts still being compared.
    fn begin(
        &self,
        ticket: StrikeKey,
        gate: StrikeKey,
        now: Instant,
    ) -> Result<Attempt<'_>, Locked> {
        let mut strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
        let lockout = self.lockout;
        if strikes.len() + 2 > STRIKES_MAX {
            strikes.retain(|_, s| s.pending > 0 || now.duration_since(s.last) < lockout);
            if strikes.len() + 2 > STRIKES_MAX {
                return Err(Locked::Full);
            }
        }
        for key in [&ticket, &gate] {
            let locked = |d| match key {
                StrikeKey::Ticket(_) => Locked::Ticket(d),
                StrikeKey::Gate(..) => Locked::Gate(d),
            };
            if let Some(s) = strikes.get(key) {
                let left = s
                    .locked_until
                    .and_then(|until| until.checked_duration_since(now))
                    .filter(|d| !d.is_zero());
                if let Some(d) = left {
                    return Err(locked(d));
                }
                let fresh = now.duration_since(s.last) >= lockout;
                let used = if fresh { 0 } else { s.count };
                if used + s.pending >= self.attempts_max {
                    // Every try left is being compared right now: wait for those answers.
                    return Err(locked(Duration::from_secs(1)));
                }
            }
        }
        for key in [&ticket, &gate] {
            let s = strikes.entry(key.clone()).or_insert(Strikes {
                count: 0,
                pending: 0,
                last: now,
                locked_until: None,
            });
            if s.pending == 0 && now.duration_since(s.last) >= lockout {
                *s = Strikes {
                    count: 0,
                    pending: 0,
                    last: now,
                    locked_until: None,
                };
            }
            s.pending += 1;
        }
        Ok(Attempt {
            guard: self,
            keys: [ticket, gate],
            open: true,
        })
    }

    /// Gives back `keys`' claimed tries; with `wrong`, counts them as wrong PINs.
    fn finish(&self, keys: &[StrikeKey; 2], wrong: bool, now: Instant) -> Struck {
        let mut strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
        let mut left_min = u32::MAX;
        let mut locked = None;
        for key in keys {
            let Some(s) = strikes.get_mut(key) else {
                continue;
            };
            s.pending = s.pending.saturating_sub(1);
            if !wrong {
                continue;
            }
            if now.duration_since(s.last) >= self.lockout {
                s.count = 0;
            }
            s.count += 1;
            s.last = now;
            if s.count >= self.attempts_max {
                let newly = s.locked_until.is_none_or(|u| u <= now);
                if newly {
                    s.locked_until = Some(now + self.lockout);
                }
                let d = s
                    .locked_until
                    .map_or(self.lockout, |u| u.duration_since(now));
                locked.get_or_insert((
                    match key {
                        StrikeKey::Ticket(_) => Locked::Ticket(d),
                        StrikeKey::Gate(..) => Locked::Gate(d),
                    },
                    newly,
                ));
            }
            left_min = left_min.min(self.attempts_max.saturating_sub(s.count));
        }
        match locked {
            Some(l) => Err(l),
            None => Ok(left_min),
        }
    }
}

impl Attempt<'_> {
    /// The PIN was wrong: counted against the ticket and the gate.
    fn wrong(mut self, now: Instant) -> Struck {
        self.open = false;
        self.guard.finish(&self.keys, true, now)
    }

    /// The PIN was right: the claimed tries are given back.
    fn right(mut self) {
        self.open = false;
        let _ = self.guard.finish(&self.keys, false, Instant::now());
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        // Ended before its PIN was known (an error, a client gone): nothing is counted.
        if self.open {
            let _ = self.guard.finish(&self.keys, false, Instant::now());
        }
    }
}

/// A staff check-in, as the holder's page sends it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffCheckinRequest {
    /// The gate the steward checks the ticket in at (of the ticket's provider).
    pub gate: u16,
    /// The gate's staff PIN (`pin` of `POST /v1/providers/{id}/gates`).
    #[schema(example = "042917")]
    pub pin: String,
    /// The page's random id for this confirmation (letters, digits, `-`, `_`; up to 64): a
    /// resend with the same id gets the first answer. Without one, every request is a scan
    /// of its own.
    pub confirmation: Option<String>,
}

/// The node's answer to a staff check-in, with the ticket as it is now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StaffCheckinView {
    /// `admitted`, `already_used`, `not_yet_valid`, `expired`, `revoked`, … (the engine's
    /// outcome), or `transferred` for a code a transfer voided.
    pub outcome: String,
    /// Whether the holder may pass.
    pub admit: bool,
    /// The gate that checked it in (the request's).
    pub gate: u16,
    /// That gate's name.
    pub gate_name: Option<String>,
    /// The gate the outcome names: the admitting gate, or the earlier one for `already_used`.
    pub outcome_gate: Option<u16>,
    /// That gate's name.
    pub outcome_gate_name: Option<String>,
    /// The time the outcome names, RFC 3339: the admit, the earlier use, the start or end of
    /// validity.
    pub at: Option<String>,
    /// The answer in words.
    pub message: String,
    /// The ticket after the check-in, as `GET /v1/tickets/{code}` shows it without a token.
    pub ticket: TicketView,
}

/// Checks the ticket in at gate `gate` of its provider, with that gate's staff PIN. The
/// holder's page sends it; the answer is the node's outcome, whatever it is.
#[utoipa::path(post, path = "/t/{code}/checkin", request_body = StaffCheckinRequest,
    params(("code" = String, Path, description = "what the page's link names: a static ticket's code or a page token (`tk_…`)")),
    responses((status = 200, body = StaffCheckinView, description = "the node's outcome (admitted, or refused with when and where)"),
        (status = 403, body = Problem, description = "wrong PIN, or the gate has no PIN; counted"),
        (status = 429, body = Problem, description = "too many wrong PINs for this ticket or at this gate: locked, see Retry-After"),
        (status = 400, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem),
        (status = 503, body = Problem, description = "the node did not answer: nothing is known to have happened; resend the same confirmation")))]
pub async fn staff_checkin(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Json(req): Json<StaffCheckinRequest>,
) -> Result<Json<StaffCheckinView>, Problem> {
    check_request(&req)?;
    let t = tickets::find_public(&app, &id).await?;
    let provider = t.bytes.provider();
    let attempt = app
        .pins
        .begin(
            StrikeKey::Ticket(t.code.clone()),
            StrikeKey::Gate(provider, req.gate),
            Instant::now(),
        )
        .map_err(|locked| refuse(&app, "locked", locked_problem(&app, locked)))?;
    let gate = req.gate;
    let (pin, gate_name) = app
        .db
        .call(move |c| -> Result<_, Problem> {
            use crate::store::providers as store;
            Ok((
                store::gate_pin(c, provider, gate)?,
                store::gate_name(c, provider, gate)?,
            ))
        })
        .await?;
    // A gate without a PIN is answered as a wrong PIN, and counted: which gates have PINs
    // is not for anyone to list.
    let right = pin.is_some_and(|(salt, hash)| {
        super::auth::pin_matches(&salt, &hash, provider, gate, &req.pin)
    });
    if !right {
        let p = match attempt.wrong(Instant::now()) {
            Ok(left) => Problem::forbidden(format!(
                "wrong PIN for gate {gate} (or the gate has no staff PIN); {left} more wrong \
                 PIN{} and staff check-in locks for {} min",
                if left == 1 { "" } else { "s" },
                app.pins.lockout.as_secs().div_ceil(60)
            )),
            Err((locked, newly)) => {
                if newly {
                    app.metrics.staff_lockouts.inc();
                    tracing::warn!(provider, gate, "staff check-in locked after wrong PINs");
                }
                locked_problem(&app, locked)
            }
        };
        return Err(refuse(&app, "wrong_pin", p));
    }
    attempt.right();
    let (_, client) = app.nodes.for_provider(provider).await?;
    let scan_id = match &req.confirmation {
        Some(c) => scan_id_of(&t.code, gate, c),
        None => client.next_scan_id(),
    };
    let code = tickets::code_now_bytes(&t);
    let outcome = client
        .checkin_as(gate, provider, &code, scan_id)
        .await
        .map_err(|e| {
            let mut p = Problem::from(e);
            p.detail
                .push_str("; nothing is known to have happened: send the same confirmation again");
            p
        })?;
    // The engine says `revoked` of a code a transfer voided; the holder passed it on, nobody
    // cancelled it, and the page says so.
    let transferred = outcome.kind == OutcomeKind::Revoked && t.successor.is_some();
    let kind = if transferred {
        "transferred".to_string()
    } else {
        outcome.kind.to_string()
    };
    app.metrics
        .staff_checkins
        .get_or_create(&OutcomeLabels {
            outcome: kind.clone(),
        })
        .inc();
    tracing::info!(provider, gate, outcome = %kind, "staff check-in on the holder's page");
    let outcome_gate = (outcome.gate != 0).then_some(outcome.gate);
    let outcome_gate_name = match outcome_gate {
        Some(g) if g == gate => gate_name.clone(),
        Some(g) => app
            .db
            .call(move |c| -> Result<_, Problem> {
                Ok(crate::store::providers::gate_name(c, provider, g)?)
            })
            .await
            .unwrap_or(None),
        None => None,
    };
    Ok(Json(StaffCheckinView {
        admit: outcome.kind == OutcomeKind::Admitted,
        outcome: kind,
        gate,
        gate_name,
        outcome_gate,
        outcome_gate_name,
        at: (outcome.at_unix_s != 0).then(|| crate::rfc3339(outcome.at_unix_s)),
        message: if transferred {
            "transferred to another holder: this code is void".to_string()
        } else {
            outcome.message()
        },
        ticket: tickets::view(&app, &t, Access::Public).await,
    }))
}

/// Refuses a request whose fields cannot be right (422); no PIN is guessed by it.
fn check_request(req: &StaffCheckinRequest) -> Result<(), Problem> {
    if req.gate == 0 {
        return Err(Problem::unprocessable(
            "`gate` is a gate number from 1 to 65535",
        ));
    }
    let pin_ok = !req.pin.is_empty()
        && req.pin.len() <= PIN_INPUT_MAX_LEN
        && req.pin.bytes().all(|b| b.is_ascii_digit());
    if !pin_ok {
        return Err(Problem::unprocessable(format!(
            "`pin` is the gate's PIN: 1 to {PIN_INPUT_MAX_LEN} digits"
        )));
    }
    if let Some(c) = &req.confirmation {
        let ok = !c.is_empty()
            && c.len() <= CONFIRMATION_MAX_LEN
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(Problem::unprocessable(format!(
                "`confirmation` is 1 to {CONFIRMATION_MAX_LEN} letters, digits, `-` or `_`"
            )));
        }
    }
    Ok(())
}

/// The scan id of confirmation `confirmation` of ticket `code` at `gate`: the same for a
/// resend, another for another confirmation (the node remembers answers by gate and scan id).
fn scan_id_of(code: &str, gate: u16, confirmation: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"stile staff check-in\0");
    h.update(code.as_bytes());
    h.update([0]);
    h.update(gate.to_be_bytes());
    h.update(confirmation.as_bytes());
    let digest = h.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"))
}

/// 429 for a lock, with how long it lasts.
fn locked_problem(app: &App, locked: Locked) -> Problem {
    let (what, left) = match locked {
        Locked::Ticket(d) => ("this ticket", d),
        Locked::Gate(d) => ("this gate", d),
        Locked::Full => ("every ticket and gate", app.pins.lockout),
    };
    let left_s = left.as_secs_f64().ceil().max(1.0) as u32;
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many wrong PINs: staff check-in of {what} is locked for {} min; use a \
             scanner meanwhile",
            left_s.div_ceil(60)
        ),
    )
    .retry_after(left_s)
}

/// Counts a refusal by reason and passes the problem on.
fn refuse(app: &App, reason: &'static str, p: Problem) -> Problem {
    app.metrics
        .staff_pin_refusals
        .get_or_create(&ReasonLabels {
            reason: reason.to_string(),
        })
        .inc();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(attempts_max: u32, lockout_ms: u64) -> PinGuard {
        PinGuard {
            strikes: Mutex::new(HashMap::new()),
            attempts_max,
            lockout: Duration::from_millis(lockout_ms),
        }
    }

    fn try_pin(
        g: &PinGuard,
        t: &StrikeKey,
        gate: &StrikeKey,
        now: Instant,
    ) -> Result<Struck, Locked> {
        Ok(g.begin(t.clone(), gate.clone(), now)?.wrong(now))
    }

    #[test]
    fn wrong_pins_lock_the_ticket_and_the_gate_for_the_lockout_only() {
        let g = guard(3, 60_000);
        let t = StrikeKey::Ticket("A".into());
        let other = StrikeKey::Ticket("B".into());
        let gate = StrikeKey::Gate(1, 7);
        let now = Instant::now();
        assert_eq!(try_pin(&g, &t, &gate, now), Ok(Ok(2)));
        assert_eq!(
            try_pin(&g, &other, &gate, now),
            Ok(Ok(1)),
            "the gate's count is lower"
        );
        assert_eq!(
            try_pin(&g, &other, &gate, now),
            Ok(Err((Locked::Gate(Duration::from_secs(60)), true)))
        );
        // Locked at that gate for every ticket; another gate still takes this ticket.
        let later = now + Duration::from_secs(59);
        assert_eq!(
            try_pin(&g, &t, &gate, later).unwrap_err(),
            Locked::Gate(Duration::from_secs(1))
        );
        // The ticket's own strikes lock it at any gate.
        assert_eq!(try_pin(&g, &t, &StrikeKey::Gate(1, 8), later), Ok(Ok(1)));
        assert_eq!(
            try_pin(&g, &t, &StrikeKey::Gate(1, 9), later),
            Ok(Err((Locked::Ticket(Duration::from_secs(60)), true)))
        );
        // Past the lockout the gate is open, and its count started over.
        let after = now + Duration::from_secs(61);
        assert_eq!(try_pin(&g, &other, &gate, after), Ok(Ok(2)));
    }

    /// Concurrent guesses claim tries before their PINs are compared: no more are compared
    /// than the limit, whatever their number, and a right PIN gives its try back.
    #[test]
    fn concurrent_guesses_get_no_more_tries_than_the_limit() {
        let g = guard(5, 60_000);
        let (t, gate) = (StrikeKey::Ticket("A".into()), StrikeKey::Gate(1, 7));
        let now = Instant::now();
        let claimed: Vec<_> = (0..100)
            .filter_map(|_| g.begin(t.clone(), gate.clone(), now).ok())
            .collect();
        assert_eq!(claimed.len(), 5, "tries claimed at once");
        let mut lockouts = 0;
        for (i, a) in claimed.into_iter().enumerate() {
            if i == 0 {
                a.right();
                continue;
            }
            if let Err((_, true)) = a.wrong(now) {
                lockouts += 1;
            }
        }
        assert_eq!(lockouts, 0, "4 wrong of 5");
        // One try is left (the right PIN gave its back): the fifth wrong PIN locks, once.
        let a = g.begin(t.clone(), gate.clone(), now).unwrap();
        assert!(matches!(a.wrong(now), Err((Locked::Ticket(_), true))));
        assert!(g.begin(t.clone(), gate.clone(), now).is_err());
        // An attempt dropped before its PIN was known counts nothing.
        let other = StrikeKey::Ticket("B".into());
        let g2 = guard(1, 60_000);
        drop(g2.begin(other.clone(), gate.clone(), now).unwrap());
        assert!(g2.begin(other, gate, now).is_ok());
    }

    /// A full table refuses every attempt rather than letting any through uncounted.
    #[test]
    fn a_full_table_refuses_rather_than_forgets() {
        let g = guard(5, 60_000);
        let now = Instant::now();
        {
            let mut strikes = g.strikes.lock().unwrap();
            for i in 0..STRIKES_MAX {
                strikes.insert(
                    StrikeKey::Ticket(i.to_string()),
                    Strikes {
                        count: 1,
                        pending: 0,
                        last: now,
                        locked_until: None,
                    },
                );
            }
        }
        let err = g
            .begin(StrikeKey::Ticket("new".into()), StrikeKey::Gate(1, 1), now)
            .err();
        assert_eq!(err, Some(Locked::Full));
        // Once old strikes expire there is room again.
        let later = now + Duration::from_secs(61);
        assert!(g
            .begin(
                StrikeKey::Ticket("new".into()),
                StrikeKey::Gate(1, 1),
                later
            )
            .is_ok());
    }

    #[test]
    fn a_resend_keeps_its_scan_id_and_another_confirmation_gets_another() {
        let a = scan_id_of("CODE", 3, "c1");
        assert_eq!(a, scan_id_of("CODE", 3, "c1"));
        assert_ne!(a, scan_id_of("CODE", 3, "c2"));
        assert_ne!(a, scan_id_of("CODE", 4, "c1"));
        assert_ne!(a, scan_id_of("CODF", 3, "c1"));
    }

    #[test]
    fn malformed_requests_are_refused_before_any_pin_is_tried() {
        let req = |gate, pin: &str, confirmation: Option<&str>| StaffCheckinRequest {
            gate,
            pin: pin.into(),
            confirmation: confirmation.map(Into::into),
        };
        assert!(check_request(&req(3, "042917", Some("ab-12_C"))).is_ok());
        for bad in [
            req(0, "1234", None),
            req(3, "", None),
            req(3, "12a4", None),
            req(3, &"1".repeat(PIN_INPUT_MAX_LEN + 1), None),
            req(3, "1234", Some("")),
            req(3, "1234", Some("a b")),
            req(3, "1234", Some(&"a".repeat(CONFIRMATION_MAX_LEN + 1))),
        ] {
            assert_eq!(check_request(&bad).unwrap_err().status, 422, "{bad:?}");
        }
    }
}
