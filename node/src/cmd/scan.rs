//! Gate scans: check-in (batched), exit and undo, and an admin's `checkin_as`.

use bytes::BytesMut;
use stile_certs::Role;
use stile_engine::{CheckinRequest, Gate, GateOp, Presented};
use stile_protocol::frame::{encode_outcome, error_code, RawCode};
use stile_protocol::Outcome;

use crate::budget::Budget;
use crate::cmd::error;
use crate::metrics::outcome_op_index;
use crate::stream::{one_op, Out, Stream};

impl Stream {
    /// A gate's check-in: gathered into the batch, or answered at once if the gate is past
    /// its budget or the bytes are no code (which spends the budget like a bad tag).
    pub(crate) fn checkin(&mut self, id: u32, scan_id: u64, code: RawCode) {
        let Some((gate, budget)) = &self.gate else {
            return self.gates_only(id, "check-in");
        };
        let (gate, blocked) = (*gate, budget.blocked(self.now_ms));
        match code.code() {
            _ if blocked => self.early(id, &Outcome::RATE_LIMITED),
            Err(_) => {
                // Bytes that are no code spend the budget like a bad tag.
                let budget = budget.clone();
                let outcome = self.charge(&budget, Outcome::FORGED);
                self.early(id, &outcome);
            }
            Ok(code) => {
                self.batch.requests.push(CheckinRequest {
                    gate,
                    scan_id,
                    code,
                });
                self.batch.ids.push(id);
            }
        }
    }

    /// A gate's exit or undo, run at once (outside the batch).
    pub(crate) fn gate_scan(&mut self, id: u32, op: GateOp, scan_id: u64, code: RawCode) {
        let Some((gate, budget)) = &self.gate else {
            return self.gates_only(id, "exit and undo");
        };
        let (gate, budget) = (*gate, budget.clone());
        self.scan_one(id, op, gate, &budget, scan_id, code);
    }

    /// An admin's check-in on behalf of gate `gate` of `provider` (the gateway's HTTP
    /// check-in): spends that gate's budget, and is audited.
    pub(crate) fn checkin_as(
        &mut self,
        id: u32,
        gate: u16,
        provider: u16,
        scan_id: u64,
        code: RawCode,
    ) {
        let identity = self.identity.clone();
        let Role::Admin { name } = &identity.role else {
            return self.forbidden(id, "checkin_as");
        };
        if gate == 0 {
            return self.reply(
                id,
                &error(error_code::BAD_REQUEST, "gate ids are 1 to 65535"),
            );
        }
        let budget = self.shared.budget(provider, gate);
        let metrics = &self.shared.metrics;
        metrics.count_gate(metrics.gate_slot(gate), 1);
        let outcome = self.scan_one(
            id,
            GateOp::Entry,
            Gate::new(gate, provider),
            &budget,
            scan_id,
            code,
        );
        tracing::info!(
            target: "stile::audit",
            op = "checkin_as",
            admin = %name,
            gate,
            provider,
            scan_id,
            outcome = %outcome.kind,
        );
    }

    /// One gate operation outside the batch (exit, undo, `checkin_as`).
    fn scan_one(
        &mut self,
        id: u32,
        op: GateOp,
        gate: Gate,
        budget: &Budget,
        scan_id: u64,
        code: RawCode,
    ) -> Outcome {
        if budget.blocked(self.now_ms) {
            self.early(id, &Outcome::RATE_LIMITED);
            return Outcome::RATE_LIMITED;
        }
        let Ok(code) = code.code() else {
            self.charge(budget, Outcome::FORGED);
            self.early(id, &Outcome::FORGED);
            return Outcome::FORGED;
        };
        let (outcome, after) =
            self.shared
                .engine
                .scan_deferred(op, &gate, scan_id, &Presented::Code(code));
        let outcome = self.charge(budget, outcome);
        self.batch.outcome_tally[outcome_op_index(self.op)][outcome.kind as usize] += 1;
        let mut bytes = BytesMut::new();
        encode_outcome(id, &outcome, &mut bytes);
        self.send(Out {
            bytes,
            after,
            slots: 1,
            read_at: self.read_at,
            ops: one_op(self.op),
        });
        outcome
    }
}
