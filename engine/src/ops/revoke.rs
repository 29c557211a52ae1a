//! Revoke: an operator voids a ticket for good.

use crate::clock::Clock;
use stile_protocol::{Outcome, OutcomeKind};

use crate::engine::{Engine, Gate, Presented};
use crate::error::TicketError;
use crate::word::Op;

impl Engine {
    /// Voids the ticket whatever its state. Revoking twice is not an error: the answer names
    /// the first revocation. Refused, changing nothing, while the log's disk is full.
    pub fn revoke(&self, ticket: &Presented<'_>) -> Result<Outcome, TicketError> {
        let now = self.clock.now_unix_s();
        let at = self
            .locate(ticket, &Gate::OPERATOR, None)
            .map_err(TicketError::from_lookup)?;
        let mut log = self.reserve_room(1).map_err(|_| TicketError::DiskFull)?;
        let outcome = self
            .run(&at, Op::Revoke, &Gate::OPERATOR, None, now, log.as_mut())
            .outcome;
        if let Some(log) = log {
            log.submit().wait();
        }
        match outcome.kind {
            OutcomeKind::Revoked => Ok(outcome),
            _ => Err(TicketError::from_lookup(outcome)),
        }
    }
}
