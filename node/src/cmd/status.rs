//! `status`: a ticket's state, for gates (their provider's tickets, spending their budget
//! on codes that are not genuine or not known) and admins.

use stile_engine::word::{from_epoch_s, TicketState};
use stile_engine::{Presented, TicketError, TicketStatus};
use stile_protocol::frame::{error_code, RawCode, Response, TicketInfo, TicketStateName};
use stile_protocol::{Outcome, OutcomeKind};

use crate::cmd::{code_or_error, error, rate_limited, ticket_error};
use crate::stream::Stream;

impl Stream {
    /// Answers `status`. What it read may be a change not yet durable: the answer waits for
    /// every change reserved so far, as a rejection waits for the admit it saw.
    pub(crate) fn status_request(&self, id: u32, code: RawCode) {
        let resp = self.status(code);
        let after = self.shared.engine.observed();
        self.reply_after(id, &resp, after);
    }

    /// A ticket's state. A gate asks of its provider's tickets only, and spends its budget
    /// on codes that are not genuine or not known exactly as its scans do (in the same
    /// order: the tag first, then the provider, then the ticket), so that status is no free
    /// oracle to try codes against; past the budget it is refused with `RATE_LIMITED`.
    pub(crate) fn status(&self, code: RawCode) -> Response {
        let budget = self
            .gate
            .as_ref()
            .map(|(gate, budget)| (gate.provider, budget));
        if let Some((_, budget)) = budget {
            if budget.blocked(self.now_ms) {
                return rate_limited();
            }
        }
        let charged = |e: (u16, String)| match budget {
            Some((_, budget))
                if self.charge(budget, Outcome::FORGED).kind == OutcomeKind::RateLimited =>
            {
                rate_limited()
            }
            _ => error(e.0, e.1),
        };
        let code = match code_or_error(code) {
            Ok(c) => c,
            Err(e) => return charged(e),
        };
        let found = self.shared.engine.status(&Presented::Code(code));
        let theirs = budget.is_some_and(|(provider, _)| provider != Some(code.provider()));
        match found {
            Err(TicketError::Forged) => charged(ticket_error(&TicketError::Forged)),
            // Genuine, of another provider (known or not): refused, as a scan is.
            _ if theirs => error(
                error_code::FORBIDDEN,
                "ticket of another provider than this gate's",
            ),
            Ok(st) => Response::Ticket(ticket_info(&st)),
            Err(e @ TicketError::Unknown) => charged(ticket_error(&e)),
            Err(e) => {
                let (c, m) = ticket_error(&e);
                error(c, m)
            }
        }
    }
}

/// What a holder is shown of a ticket in `state`, `expired` or not (the one mapping from
/// state words to the wire's state names).
pub(crate) fn wire_state(state: TicketState, expired: bool) -> TicketStateName {
    match state {
        TicketState::Used => TicketStateName::Used,
        TicketState::Revoked => TicketStateName::Revoked,
        TicketState::Valid if expired => TicketStateName::Expired,
        TicketState::Valid | TicketState::Unminted => TicketStateName::Valid,
    }
}

fn ticket_info(st: &TicketStatus) -> TicketInfo {
    TicketInfo {
        state: wire_state(st.word.state, st.expired),
        inside: st.word.inside,
        entries: st.word.entries,
        max_entries: st.policy.entry.max_entries,
        provider: st.policy.provider,
        partition: st.partition,
        serial: st.serial,
        gate: st.word.gate,
        format: st.policy.format,
        last_event_unix_s: from_epoch_s(st.word.time_e),
        first_scan_unix_s: st.first_scan_unix_s.unwrap_or(0),
        valid_from_unix_s: st.valid_from_unix_s.unwrap_or(0),
        valid_until_unix_s: st.valid_until_unix_s.unwrap_or(0),
    }
}
