//! A stream's batching: the check-ins of one read go to the engine in one call, and the
//! answers decided without it (a malformed code, a gate past its budget) go out with
//! theirs; outcomes are added to the node's counters once per batch.

use bytes::BytesMut;
use stile_engine::wal::Durability;
use stile_engine::CheckinRequest;
use stile_protocol::frame::encode_outcome;
use stile_protocol::Outcome;

use crate::metrics::{op_index, outcome_op_index, OpTally, OutcomeTally, NO_OUTCOMES, OPS};
use crate::stream::{Out, Stream};

/// Check-ins gathered into one engine call at most.
pub(crate) const BATCH_MAX: usize = 1024;

/// What one read of a stream gathered.
pub(crate) struct Batch {
    /// Check-ins for the engine.
    pub(crate) requests: Vec<CheckinRequest>,
    /// Their request ids, in the same order.
    pub(crate) ids: Vec<u32>,
    /// Their outcomes, once the engine ran them.
    pub(crate) outcomes: Vec<Outcome>,
    /// Answers decided without the engine (forged layout, rate limited), sent with the batch.
    pub(crate) early: BytesMut,
    /// How many answers `early` holds.
    pub(crate) early_slots: u32,
    /// The early answers' requests by op.
    pub(crate) early_ops: OpTally,
    /// Outcomes decided since the last flush, by wire value (added to the node's counters
    /// once per flush).
    pub(crate) outcome_tally: OutcomeTally,
}

impl Batch {
    /// An empty batch; it grows to what its stream's reads bring, up to [`BATCH_MAX`]
    /// check-ins (a gate with one scan in flight never needs room for more).
    pub(crate) fn new() -> Self {
        Batch {
            requests: Vec::new(),
            ids: Vec::new(),
            outcomes: Vec::new(),
            early: BytesMut::new(),
            early_slots: 0,
            early_ops: [0; OPS],
            outcome_tally: NO_OUTCOMES,
        }
    }

    /// Whether it holds as many check-ins as one engine call takes.
    pub(crate) fn is_full(&self) -> bool {
        self.requests.len() >= BATCH_MAX
    }
}

impl Stream {
    /// An outcome decided here, sent with the current batch.
    pub(crate) fn early(&mut self, id: u32, outcome: &Outcome) {
        let b = &mut self.batch;
        encode_outcome(id, outcome, &mut b.early);
        b.early_slots += 1;
        b.early_ops[op_index(self.op)] += 1;
        b.outcome_tally[outcome_op_index(self.op)][outcome.kind as usize] += 1;
    }

    /// Adds the outcomes decided since the last call to the node's counters (and this
    /// gate's scans).
    pub(crate) fn count(&mut self) {
        let tally = std::mem::replace(&mut self.batch.outcome_tally, NO_OUTCOMES);
        let metrics = &self.shared.metrics;
        metrics.count_outcomes(&tally);
        if let Some(slot) = self.gate_slot {
            metrics.count_gate(slot, tally.iter().flatten().sum());
        }
    }

    /// Runs the gathered check-ins through the engine and hands their answers to the writer.
    pub(crate) fn flush(&mut self) {
        if self.batch.requests.is_empty() && self.batch.early.is_empty() {
            self.count();
            return;
        }
        let mut bytes = std::mem::take(&mut self.batch.early);
        let mut slots = std::mem::take(&mut self.batch.early_slots);
        let mut ops = std::mem::replace(&mut self.batch.early_ops, [0; OPS]);
        let mut after = Durability::READY;
        if !self.batch.requests.is_empty() {
            let n = self.batch.requests.len();
            let b = &mut self.batch;
            b.outcomes.clear();
            b.outcomes.resize(n, Outcome::FORGED);
            after = self
                .shared
                .engine
                .checkin_batch(&b.requests, &mut b.outcomes);
            if let Some((_, budget)) = &self.gate {
                let budget = budget.clone();
                for i in 0..n {
                    self.batch.outcomes[i] = self.charge(&budget, self.batch.outcomes[i]);
                }
            }
            let b = &mut self.batch;
            for (id, outcome) in b.ids.iter().zip(&b.outcomes) {
                encode_outcome(*id, outcome, &mut bytes);
                b.outcome_tally[0][outcome.kind as usize] += 1;
            }
            slots += n as u32;
            ops[op_index(stile_protocol::frame::op::CHECKIN)] += n as u32;
            b.requests.clear();
            b.ids.clear();
        }
        self.count();
        self.send(Out {
            bytes,
            after,
            slots,
            read_at: self.read_at,
            ops,
        });
    }
}
