//! Exit: for entry/exit policies, records that the holder left.

use stile_protocol::Outcome;

use crate::engine::{Engine, Gate, Presented};
use crate::ops::checkin::GateOp;

impl Engine {
    /// Records an exit: `exited` if the ticket was inside, `not_inside` otherwise (including
    /// tickets whose policy does not record exits). Validity is not checked: a day pass that
    /// ran out while its holder was inside still lets them out.
    pub fn exit(&self, gate: &Gate, scan_id: u64, ticket: &Presented<'_>) -> Outcome {
        self.scan(GateOp::Exit, gate, scan_id, ticket)
    }
}
