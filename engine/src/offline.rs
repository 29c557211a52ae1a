//! What a node keeps of gates' offline scans: each gate's upload mark and the conflicts.
//!
//! A gate that decided offline uploads its journal in order, scan ids rising. The node
//! applies each scan once: the **upload mark** of a gate is the highest scan id of its
//! uploads applied, and a scan at or below it is not applied again, however often a cut
//! upload is resumed (the scan memory's 256 entries a gate would not cover an hour's
//! journal). Marks are durable through the records the scans make (state records with
//! [`OP_OFFLINE`](crate::wal::OP_OFFLINE) in their trace, conflict records), which replay
//! raises the marks from, and through snapshots; an uploaded scan that changed nothing and
//! was lost in a crash is simply applied again, changing nothing again.
//!
//! A **conflict** is an offline admit that met a ticket already used, revoked or
//! transferred: both scans are kept (gate and time), for disputes.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::wal::ConflictRecord;
use crate::word::from_epoch_s;

/// What an offline admit met (the wire's kinds, whose bytes the log and snapshots keep).
pub use stile_protocol::frame::ConflictKind;

/// One scan of a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanAt {
    /// The gate (0: an operator).
    pub gate: u16,
    /// Unix seconds.
    pub at_unix_s: u64,
}

/// A conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    /// What the offline admit met.
    pub kind: ConflictKind,
    /// The ticket's provider.
    pub provider: u16,
    /// Partition.
    pub partition: u16,
    /// Serial.
    pub serial: u32,
    /// The earlier event: the use, revoke or transfer.
    pub first: ScanAt,
    /// The offline admit.
    pub second: ScanAt,
}

impl Conflict {
    /// From its record (`None`: an unknown kind).
    pub(crate) fn from_record(r: &ConflictRecord) -> Option<Conflict> {
        Some(Conflict {
            kind: ConflictKind::from_u8(r.kind)?,
            provider: r.provider,
            partition: r.partition,
            serial: r.serial,
            first: ScanAt {
                gate: r.first_gate,
                at_unix_s: from_epoch_s(r.first_at_e),
            },
            second: ScanAt {
                gate: r.second_gate,
                at_unix_s: from_epoch_s(r.second_at_e),
            },
        })
    }
}

/// A conflict as a snapshot keeps it: the record's fields but the scan id.
pub(crate) type ConflictRow = (u8, u16, u16, u32, u16, u32, u16, u32);

/// A gate's upload mark as a snapshot keeps it: provider, gate, mark.
pub(crate) type MarkRow = (u16, u16, u64);

/// Upload marks and conflicts.
#[derive(Debug, Default)]
pub(crate) struct OfflineBook {
    /// Highest uploaded scan id applied, by (provider, gate). Held for the whole of one
    /// scan's application, so one gate's uploads apply one at a time, in order.
    pub(crate) marks: Mutex<HashMap<(u16, u16), u64>>,
    /// Conflicts, in the order they were recorded.
    conflicts: Mutex<Vec<ConflictRecord>>,
}

impl OfflineBook {
    /// Raises a gate's mark to `scan_id` (replay, or a scan applied).
    pub(crate) fn raise(
        marks: &mut HashMap<(u16, u16), u64>,
        provider: u16,
        gate: u16,
        scan_id: u64,
    ) {
        let mark = marks.entry((provider, gate)).or_insert(0);
        *mark = (*mark).max(scan_id);
    }

    /// Adds a conflict just applied (its gate's mark raised under `marks`, held by the
    /// caller for the whole of the scan).
    pub(crate) fn record(&self, marks: &mut HashMap<(u16, u16), u64>, c: ConflictRecord) {
        Self::raise(marks, c.provider, c.second_gate, c.scan_id);
        self.conflicts.lock().expect("conflicts poisoned").push(c);
    }

    /// Adds a conflict read from the log, unless the snapshot below it holds it already
    /// (its gate's mark is at or past its scan: a snapshot reads marks and conflicts
    /// together).
    pub(crate) fn replay(&self, c: ConflictRecord) {
        let mut marks = self.marks.lock().expect("marks poisoned");
        if marks
            .get(&(c.provider, c.second_gate))
            .is_some_and(|&m| m >= c.scan_id)
        {
            return;
        }
        self.record(&mut marks, c);
    }

    /// Raises a gate's mark for a scan read from the log.
    pub(crate) fn replay_mark(&self, provider: u16, gate: u16, scan_id: u64) {
        let mut marks = self.marks.lock().expect("marks poisoned");
        Self::raise(&mut marks, provider, gate, scan_id);
    }

    /// Conflicts of `provider` (all: `None`) from list position `from`, at most `limit`, with
    /// their positions; and the position to go on from, if there are more.
    pub(crate) fn list(
        &self,
        provider: Option<u16>,
        from: usize,
        limit: usize,
    ) -> (Vec<(usize, Conflict)>, Option<usize>) {
        let all = self.conflicts.lock().expect("conflicts poisoned");
        let mut out = Vec::new();
        for (i, c) in all.iter().enumerate().skip(from) {
            if provider.is_some_and(|p| p != c.provider) {
                continue;
            }
            if out.len() == limit {
                return (out, Some(i));
            }
            if let Some(conflict) = Conflict::from_record(c) {
                out.push((i, conflict));
            }
        }
        (out, None)
    }

    /// Conflicts counted by (provider, kind).
    pub(crate) fn counts(&self) -> Vec<((u16, ConflictKind), u64)> {
        let mut counts: HashMap<(u16, ConflictKind), u64> = HashMap::new();
        for c in self.conflicts.lock().expect("conflicts poisoned").iter() {
            if let Some(kind) = ConflictKind::from_u8(c.kind) {
                *counts.entry((c.provider, kind)).or_default() += 1;
            }
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_unstable();
        counts
    }

    /// Marks and conflicts, for a snapshot.
    pub(crate) fn export(&self) -> (Vec<MarkRow>, Vec<ConflictRow>) {
        // Both under the marks' lock, which every conflict is recorded under: a conflict
        // is kept if and only if its gate's mark covers it (see `replay`).
        let held = self.marks.lock().expect("marks poisoned");
        let mut marks: Vec<MarkRow> = held.iter().map(|(&(p, g), &m)| (p, g, m)).collect();
        marks.sort_unstable();
        let conflicts = self
            .conflicts
            .lock()
            .expect("conflicts poisoned")
            .iter()
            .map(|c| {
                (
                    c.kind,
                    c.provider,
                    c.partition,
                    c.serial,
                    c.first_gate,
                    c.first_at_e,
                    c.second_gate,
                    c.second_at_e,
                )
            })
            .collect();
        (marks, conflicts)
    }

    /// Puts back what a snapshot kept.
    pub(crate) fn restore(&self, marks: &[MarkRow], conflicts: &[ConflictRow]) {
        let mut m = self.marks.lock().expect("marks poisoned");
        for &(p, g, mark) in marks {
            Self::raise(&mut m, p, g, mark);
        }
        let mut c = self.conflicts.lock().expect("conflicts poisoned");
        for &(kind, provider, partition, serial, fg, fe, sg, se) in conflicts {
            c.push(ConflictRecord {
                kind,
                provider,
                partition,
                serial,
                first_gate: fg,
                first_at_e: fe,
                second_gate: sg,
                second_at_e: se,
                scan_id: 0,
            });
        }
    }
}
