//! Undo: the gate that admitted a ticket annuls that admit (the turnstile did not turn).

use stile_protocol::Outcome;

use crate::engine::{Engine, Gate, Presented};
use crate::ops::checkin::GateOp;

impl Engine {
    /// Annuls `gate`'s last admit of the ticket if it is still the ticket's last event and
    /// within the policy's undo window: `undone`, else `not_undoable`.
    pub fn undo(&self, gate: &Gate, scan_id: u64, ticket: &Presented<'_>) -> Outcome {
        self.scan(GateOp::Undo, gate, scan_id, ticket)
    }
}
