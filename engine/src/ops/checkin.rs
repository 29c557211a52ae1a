//! Check-in (entry): the hot path. Verify the tag, then admit-and-void in one CAS.

use stile_protocol::{CodeBytes, Outcome};

use crate::engine::{Engine, Gate, Located, Presented};
use crate::index::prefetch;
use crate::wal::Durability;
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

/// What a gate asks of one ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOp {
    /// Check in.
    Entry,
    /// Check out.
    Exit,
    /// Annul this gate's last admit.
    Undo,
}

impl GateOp {
    fn op(self) -> Op {
        match self {
            GateOp::Entry => Op::Entry,
            GateOp::Exit => Op::Exit,
            GateOp::Undo => Op::Undo,
        }
    }
}

impl Engine {
    /// Checks in one code; returns once the answer may go out (durable).
    pub fn checkin(&self, req: &CheckinRequest) -> Outcome {
        let mut out = [Outcome::FORGED];
        self.checkin_batch(std::slice::from_ref(req), &mut out)
            .wait();
        out[0]
    }

    /// Checks in many codes, writing `out[i]` for `reqs[i]`; the answers may go out once the
    /// returned [`Durability`] is reached (everything they observed is on disk). In rounds of
    /// [`PREFETCH_ROUND`]: first every tag is verified and each genuine ticket's slot
    /// prefetched, then log numbers are reserved for the round and each slot gets its CAS, so
    /// memory latency hides behind the HMAC work. Allocates nothing per request. When the
    /// log's disk is full, a round's admits are answered `disk_full` without a CAS, and its
    /// refusals as always.
    pub fn checkin_batch(&self, reqs: &[CheckinRequest], out: &mut [Outcome]) -> Durability {
        assert_eq!(reqs.len(), out.len(), "one outcome per request");
        // Rotating codes are drawn by the wall clock (the gateway's): their step is read from
        // the system clock, not from the engine's time, which a clock stepped back holds.
        let (now, wall) = self.clock.now_and_wall_unix_s();
        let step = Some(self.rotation_step(wall));
        let mut durability = Durability::READY;
        for (reqs, out) in reqs
            .chunks(PREFETCH_ROUND)
            .zip(out.chunks_mut(PREFETCH_ROUND))
        {
            let mut found: [Option<Located<'_>>; PREFETCH_ROUND] = [None; PREFETCH_ROUND];
            let mut located = 0;
            for (i, req) in reqs.iter().enumerate() {
                match self.locate_code(&req.code, &req.gate, step) {
                    Ok(at) => {
                        prefetch(at.slot);
                        found[i] = Some(at);
                        located += 1;
                    }
                    Err(outcome) => out[i] = outcome,
                }
            }
            if located == 0 {
                continue;
            }
            let Ok(mut log) = self.reserve_room(located) else {
                for (i, req) in reqs.iter().enumerate() {
                    if let Some(at) = &found[i] {
                        out[i] =
                            self.run_without_room(at, Op::Entry, &req.gate, Some(req.scan_id), now);
                    }
                }
                durability = self.observed();
                continue;
            };
            for (i, req) in reqs.iter().enumerate() {
                if let Some(at) = &found[i] {
                    let applied = self.run(
                        at,
                        Op::Entry,
                        &req.gate,
                        Some(req.scan_id),
                        now,
                        log.as_mut(),
                    );
                    out[i] = applied.outcome;
                }
            }
            if let Some(log) = log {
                durability = log.submit();
            }
        }
        durability
    }

    /// Runs a gate operation on a ticket presented any way; the answer may go out once the
    /// returned [`Durability`] is reached.
    pub fn scan_deferred(
        &self,
        op: GateOp,
        gate: &Gate,
        scan_id: u64,
        ticket: &Presented<'_>,
    ) -> (Outcome, Durability) {
        let (now, wall) = self.clock.now_and_wall_unix_s();
        let step = self.rotation_step(wall);
        let at = match self.locate(ticket, gate, Some(step)) {
            Ok(at) => at,
            Err(outcome) => return (outcome, Durability::READY),
        };
        let Ok(mut log) = self.reserve_room(1) else {
            let outcome = self.run_without_room(&at, op.op(), gate, Some(scan_id), now);
            return (outcome, self.observed());
        };
        let outcome = self
            .run(&at, op.op(), gate, Some(scan_id), now, log.as_mut())
            .outcome;
        (outcome, log.map_or(Durability::READY, |l| l.submit()))
    }

    /// [`Self::scan_deferred`], returning once durable.
    pub(crate) fn scan(
        &self,
        op: GateOp,
        gate: &Gate,
        scan_id: u64,
        ticket: &Presented<'_>,
    ) -> Outcome {
        let (outcome, durability) = self.scan_deferred(op, gate, scan_id, ticket);
        durability.wait();
        outcome
    }

    /// Checks in a ticket presented any way (a stile code, or an imported code).
    pub fn checkin_presented(&self, gate: &Gate, scan_id: u64, ticket: &Presented<'_>) -> Outcome {
        self.scan(GateOp::Entry, gate, scan_id, ticket)
    }

    /// Checks in a ticket given as text: an imported code, or a stile code's text form.
    /// Text that is neither is `forged`.
    pub fn checkin_text(&self, gate: &Gate, scan_id: u64, text: &str) -> Outcome {
        match self.presented(text) {
            Ok(ticket) => self.checkin_presented(gate, scan_id, &ticket),
            Err(_) => Outcome::FORGED,
        }
    }
}
