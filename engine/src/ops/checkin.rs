//! Check-in (entry): the hot path. Verify the tag, then admit-and-void in one CAS.

use stile_protocol::{CodeBytes, Outcome};

use crate::engine::{Engine, Gate, Located, Presented};
use crate::index::prefetch;
use crate::word::Op;

/// Requests handled per prefetch round of [`Engine::checkin_batch`]: every tag of a round is
/// verified (and its slot prefetched) before any slot is read.
pub const PREFETCH_ROUND: usize = 64;

/// One check-in as a node receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckinRequest {
    /// The gate asking (from its certificate).
    pub gate: Gate,
    /// The gate's scan id: a retry with the same id gets the original answer.
    pub scan_id: u64,
    /// The code's bytes as scanned.
    pub code: CodeBytes,
}

impl Engine {
    /// Checks in one code.
    pub fn checkin(&self, req: &CheckinRequest) -> Outcome {
        let mut out = [Outcome::FORGED];
        self.checkin_batch(std::slice::from_ref(req), &mut out);
        out[0]
    }

    /// Checks in many codes, writing `out[i]` for `reqs[i]`. In rounds of [`PREFETCH_ROUND`]:
    /// first every tag is verified and each genuine ticket's slot prefetched, then each slot
    /// gets its CAS, so memory latency hides behind the HMAC work. Allocates nothing.
    pub fn checkin_batch(&self, reqs: &[CheckinRequest], out: &mut [Outcome]) {
        assert_eq!(reqs.len(), out.len(), "one outcome per request");
        let now = self.clock.now_unix_s();
        let step = Some(self.rotation_step(now));
        for (reqs, out) in reqs
            .chunks(PREFETCH_ROUND)
            .zip(out.chunks_mut(PREFETCH_ROUND))
        {
            let mut found: [Option<Located<'_>>; PREFETCH_ROUND] = [None; PREFETCH_ROUND];
            for (i, req) in reqs.iter().enumerate() {
                match self.locate_code(&req.code, &req.gate, step) {
                    Ok(at) => {
                        prefetch(at.slot);
                        found[i] = Some(at);
                    }
                    Err(outcome) => out[i] = outcome,
                }
            }
            for (i, req) in reqs.iter().enumerate() {
                if let Some(at) = &found[i] {
                    out[i] = self
                        .run(at, Op::Entry, &req.gate, Some(req.scan_id), now)
                        .outcome;
                }
            }
        }
    }

    /// Checks in a ticket presented any way (a stile code, or an imported code).
    pub fn checkin_presented(&self, gate: &Gate, scan_id: u64, ticket: &Presented<'_>) -> Outcome {
        self.scan(Op::Entry, gate, Some(scan_id), ticket)
    }

    /// Checks in a ticket given as text: an imported code, or a stile code's text form.
    /// Text that is neither is `forged`.
    pub fn checkin_text(&self, gate: &Gate, scan_id: u64, text: &str) -> Outcome {
        match self.presented(text) {
            Ok(ticket) => self.checkin_presented(gate, scan_id, &ticket),
            Err(_) => Outcome::FORGED,
        }
    }

    /// Runs a gate operation on one presented ticket.
    pub(crate) fn scan(
        &self,
        op: Op,
        gate: &Gate,
        scan_id: Option<u64>,
        ticket: &Presented<'_>,
    ) -> Outcome {
        let now = self.clock.now_unix_s();
        match self.locate(ticket, gate, Some(self.rotation_step(now))) {
            Ok(at) => self.run(&at, op, gate, scan_id, now).outcome,
            Err(outcome) => outcome,
        }
    }
}
