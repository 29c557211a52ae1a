//! Reconciliation: scans a gate decided offline, uploaded in order once the node answers
//! again (see `crate::offline` for the upload marks and conflicts).

use std::sync::atomic::Ordering;

use stile_protocol::{CodeBytes, Outcome, OutcomeKind};

use crate::clock::Clock;
use crate::engine::{Engine, Gate, Located};
use crate::offline::{Conflict, ConflictKind, OfflineBook};
use crate::ops::checkin::GateOp;
use crate::tables::TicketLoc;
use crate::wal::record::ScanTrace;
use crate::wal::{ConflictRecord, Durability, Record, OP_OFFLINE};
use crate::word::{to_epoch_s, Op};

/// A scan decided elsewhere, as it is applied here.
struct Uploaded {
    /// The gate's provider.
    provider: u16,
    /// The gate's scan id.
    scan_id: u64,
    /// Entry or exit.
    op: Op,
    /// What the gate answered.
    decision: OutcomeKind,
    /// When, Unix seconds (clamped to now).
    at: u64,
}

/// An admit found in the log of a node that led on past a failover: records the new leader
/// never had, which gates may have been told of (after `cluster promote --force`). The
/// node rejoining as a standby hands them to the leader, which applies each as an offline
/// admit of its gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DivergedAdmit {
    /// Partition.
    pub partition: u16,
    /// Serial.
    pub serial: u32,
    /// The gate that scanned it.
    pub gate: u16,
    /// The gate's scan id.
    pub scan_id: u64,
    /// When it was admitted, Unix seconds.
    pub at_unix_s: u64,
}

/// One scan a gate decided offline, as uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineScan {
    /// The gate's scan id (rising through its journal).
    pub scan_id: u64,
    /// When the gate scanned it, by its clock corrected by the node's offset, Unix ms.
    pub scanned_at_unix_ms: u64,
    /// When the gate last heard from the node before it went offline, Unix seconds.
    pub last_online_unix_s: u64,
    /// Entry or exit.
    pub op: GateOp,
    /// What the gate answered.
    pub decision: OutcomeKind,
    /// The code.
    pub code: CodeBytes,
}

impl Engine {
    /// Applies one uploaded offline scan of `gate` (which must name its provider), in
    /// upload order; the answer may go out once the returned [`Durability`] is reached.
    ///
    /// A scan this gate uploaded before and that changed something was applied then: it is
    /// answered with its own decision and changes nothing. An offline admit is applied as an entry at the
    /// scan's time, clamped between the gate's last online contact and now (so it starts a
    /// duration pass then); where the ticket was already used, revoked or transferred the
    /// node records a conflict instead, and answers what it found. An offline exit is
    /// applied as an exit. A refusal changes nothing.
    pub fn checkin_offline(&self, gate: &Gate, scan: &OfflineScan) -> (Outcome, Durability) {
        let Some(provider) = gate.provider else {
            return (Outcome::WRONG_PROVIDER, Durability::READY);
        };
        let now = self.clock.now_unix_s();
        let lower = scan.last_online_unix_s.min(now);
        let at = (scan.scanned_at_unix_ms / 1000).clamp(lower, now);
        let op = match (scan.op, scan.decision) {
            (GateOp::Entry, OutcomeKind::Admitted) => Op::Entry,
            (GateOp::Exit, OutcomeKind::Exited) => Op::Exit,
            // A refusal changed nothing at the gate and changes nothing here (decided again
            // if uploaded again, with the same result).
            _ => return (Outcome::bare(scan.decision), Durability::READY),
        };
        // A rotating code is checked for the step it was scanned at (give or take one, as
        // online): a screenshot of an old step admitted offline is no genuine admit.
        let located = match self.locate_code(&scan.code, gate, Some(self.rotation_step(at))) {
            Ok(l) => l,
            Err(outcome) => return (outcome, Durability::READY),
        };
        let scan = Uploaded {
            provider,
            scan_id: scan.scan_id,
            op,
            decision: scan.decision,
            at,
        };
        self.apply_uploaded(&located, gate, &scan)
    }

    /// Applies an admit that a node's diverged log holds (see [`DivergedAdmit`]) as an
    /// offline admit of its gate: once (by the gate and scan id, as uploads are; a scan the
    /// gate sent again here since is answered from the scan memory and changes nothing),
    /// and as a conflict where this log has the ticket used, revoked or transferred.
    pub fn apply_diverged_admit(&self, admit: &DivergedAdmit) -> (Outcome, Durability) {
        let Some(slot) = self
            .partition(admit.partition)
            .and_then(|p| p.slot(admit.serial))
        else {
            return (Outcome::UNKNOWN, Durability::READY);
        };
        if slot.word.load(Ordering::Acquire) == 0 {
            return (Outcome::UNKNOWN, Durability::READY);
        }
        let Some(policy) = self.tables.policies.get(slot.policy_id()) else {
            return (Outcome::UNKNOWN, Durability::READY);
        };
        let located = Located {
            loc: TicketLoc {
                partition: admit.partition,
                serial: admit.serial,
            },
            slot,
            format: policy.format,
            code_provider: None,
        };
        let gate = Gate::new(admit.gate, policy.provider);
        let scan = Uploaded {
            provider: policy.provider,
            scan_id: admit.scan_id,
            op: Op::Entry,
            decision: OutcomeKind::Admitted,
            at: admit.at_unix_s.min(self.clock.now_unix_s()),
        };
        self.apply_uploaded(&located, &gate, &scan)
    }

    /// Applies one scan decided elsewhere to its located ticket, once.
    fn apply_uploaded(
        &self,
        located: &Located<'_>,
        gate: &Gate,
        scan: &Uploaded,
    ) -> (Outcome, Durability) {
        let (provider, op, at) = (scan.provider, scan.op, scan.at);
        let book: &OfflineBook = &self.tables.offline;
        // Held to the end: this gate's scans apply one at a time, each once.
        let mut marks = book.marks.lock().expect("marks poisoned");
        if OfflineBook::applied(&marks, provider, gate.id, scan.scan_id) {
            return (Outcome::bare(scan.decision), Durability::READY);
        }
        let at_e = to_epoch_s(at);
        let Ok(mut log) = self.reserve_room(1) else {
            // Not applied: the gate uploads it again once there is room.
            return (Outcome::DISK_FULL, self.observed());
        };
        let applied = self.run(located, op, gate, Some(scan.scan_id), at, None);
        let record = match applied.change {
            Some((_, new)) => Some(Record::State {
                partition: located.loc.partition,
                serial: located.loc.serial,
                word: new.pack(),
                first_scan_e: located.slot.first_scan_e.load(Ordering::Acquire),
                scan: Some(ScanTrace {
                    gate: gate.id,
                    scan_id: scan.scan_id,
                    op: op as u8 | OP_OFFLINE,
                    answer: crate::scans::pack(&applied.outcome),
                }),
            }),
            None if op == Op::Entry => self.conflict_of(located, &applied.outcome).map(|kind| {
                let c = ConflictRecord {
                    kind: kind as u8,
                    provider,
                    partition: located.loc.partition,
                    serial: located.loc.serial,
                    first_gate: applied.outcome.gate,
                    first_at_e: to_epoch_s(applied.outcome.at_unix_s),
                    second_gate: gate.id,
                    second_at_e: at_e,
                    scan_id: scan.scan_id,
                };
                book.record(&mut marks, c);
                Record::Conflict(c)
            }),
            None => None,
        };
        if record.is_some() {
            OfflineBook::raise(&mut marks, provider, gate.id, scan.scan_id);
        }
        let durability = match (record, log.as_mut()) {
            (Some(r), Some(l)) => {
                l.push(&r);
                log.expect("just used").submit()
            }
            // Nothing to log: the answer observed the state as it is.
            _ => self.observed(),
        };
        (applied.outcome, durability)
    }

    /// The conflict an offline admit refused with `outcome` makes, if any.
    fn conflict_of(
        &self,
        at: &crate::engine::Located<'_>,
        outcome: &Outcome,
    ) -> Option<ConflictKind> {
        match outcome.kind {
            OutcomeKind::AlreadyUsed => Some(ConflictKind::DoubleEntry),
            OutcomeKind::Revoked => {
                let successors = self.tables.successors.lock().expect("successors poisoned");
                Some(match successors.contains_key(&at.loc) {
                    true => ConflictKind::AfterTransfer,
                    false => ConflictKind::AfterRevoke,
                })
            }
            _ => None,
        }
    }

    /// Conflicts of `provider` (all: `None`) from list position `from`, at most `limit`,
    /// each with its position and the code of its ticket (`None` for a ticket purged since
    /// or one whose code cannot be drawn); and the position to go on from, if more.
    #[allow(clippy::type_complexity)]
    pub fn conflicts(
        &self,
        provider: Option<u16>,
        from: usize,
        limit: usize,
    ) -> (Vec<(usize, Conflict, Option<CodeBytes>)>, Option<usize>) {
        let (list, next) = self.tables.offline.list(provider, from, limit);
        let with_codes = list
            .into_iter()
            .map(|(i, c)| (i, c, self.code_of(c.partition, c.serial)))
            .collect();
        (with_codes, next)
    }

    /// Conflicts counted by (provider, kind), for metrics.
    pub fn conflict_counts(&self) -> Vec<((u16, ConflictKind), u64)> {
        self.tables.offline.counts()
    }
}
