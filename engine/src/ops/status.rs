//! Status: what an operator (or the e-ticket page) sees of one ticket.

use crate::clock::Clock;
use std::sync::atomic::Ordering;

use crate::engine::{Engine, Gate, Presented};
use crate::error::TicketError;
use crate::policy::{Policy, PolicyId};
use crate::word::{from_epoch_s, TicketState, Word};

/// One ticket's state and rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketStatus {
    /// Partition of the ticket.
    pub partition: u16,
    /// Serial in the partition.
    pub serial: u32,
    /// Id of its policy.
    pub policy_id: PolicyId,
    /// Its policy.
    pub policy: Policy,
    /// Its state word, decoded.
    pub word: Word,
    /// First scan, Unix seconds, once scanned.
    pub first_scan_unix_s: Option<u64>,
    /// Start of validity, Unix seconds, if bounded.
    pub valid_from_unix_s: Option<u64>,
    /// End of validity, Unix seconds, if bounded (for day passes: counted from the first scan,
    /// or from now if not yet scanned).
    pub valid_until_unix_s: Option<u64>,
    /// Whether validity has ended (a still-valid ticket past its window cannot be used).
    pub expired: bool,
}

impl TicketStatus {
    /// `valid`, `used`, `revoked` or `expired`: what a holder is shown.
    pub fn state_name(&self) -> &'static str {
        match self.word.state {
            TicketState::Revoked => "revoked",
            TicketState::Used => "used",
            TicketState::Valid if self.expired => "expired",
            TicketState::Valid | TicketState::Unminted => "valid",
        }
    }
}

impl Engine {
    /// The state of a ticket. Rotating codes of any step are accepted here.
    pub fn status(&self, ticket: &Presented<'_>) -> Result<TicketStatus, TicketError> {
        let now = self.clock.now_unix_s();
        let at = self
            .locate(ticket, &Gate::OPERATOR, None)
            .map_err(TicketError::from_lookup)?;
        let policy = *self
            .policy_of(&at, &Gate::OPERATOR)
            .map_err(TicketError::from_lookup)?;
        let word = Word::unpack(at.slot.word.load(Ordering::Acquire));
        let first = at.slot.first_scan_e.load(Ordering::Acquire);
        let first_scan_unix_s = (first != 0).then(|| from_epoch_s(first));
        let (from, until) = policy.validity.window(first_scan_unix_s.unwrap_or(now));
        Ok(TicketStatus {
            partition: at.loc.partition,
            serial: at.loc.serial,
            policy_id: at.slot.policy_id(),
            policy,
            word,
            first_scan_unix_s,
            valid_from_unix_s: from,
            valid_until_unix_s: until,
            expired: until.is_some_and(|u| now > u),
        })
    }
}
