//! What a node keeps of gates' offline scans: each gate's upload mark and the conflicts.
//!
//! A gate that decided offline uploads its journal. The node applies each scan once: it
//! keeps, per gate, the scan ids of the uploads that changed something (an admit, an exit,
//! a conflict), and a scan among them is not applied again, however often a cut upload is
//! resumed (the scan memory's 256 entries a gate would not cover an hour's journal). Exact
//! ids, not a highest mark: a scan refused for a full disk and uploaded again after a later
//! one, or two gates that were given the same certificate, would fall below a mark and be
//! lost. The ids are durable through the records the scans make (state records with
//! [`OP_OFFLINE`](crate::wal::OP_OFFLINE) in their trace, conflict records), which replay
//! reads them from, and through snapshots; an uploaded scan that changed nothing is simply
//! decided again, changing nothing again. At most [`UPLOADS_PER_GATE_MAX`] ids a gate are
//! kept, the lowest dropped first.
//!
//! A **conflict** is an offline admit that met a ticket already used, revoked or
//! transferred: both scans are kept (gate and time), for disputes.

use std::collections::{BTreeSet, HashMap};
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

/// Applied upload scan ids kept per gate; past it the lowest (oldest) are dropped, and such
/// a scan uploaded again would be applied again (a gate uploads in days, not seasons).
pub const UPLOADS_PER_GATE_MAX: usize = 1 << 20;

/// Applied upload scan ids by (provider, gate).
pub(crate) type Marks = HashMap<(u16, u16), BTreeSet<u64>>;

/// Upload marks and conflicts.
#[derive(Debug, Default)]
pub(crate) struct OfflineBook {
    /// Highest uploaded scan id applied, by (provider, gate). Held for the whole of one
    /// scan's application, so one gate's uploads apply one at a time, in order.
    pub(crate) marks: Mutex<Marks>,
    /// Conflicts, in the order they were recorded.
    conflicts: Mutex<Vec<ConflictRecord>>,
}

impl OfflineBook {
    /// Notes `scan_id` of a gate as applied (replay, or a scan applied).
    pub(crate) fn raise(marks: &mut Marks, provider: u16, gate: u16, scan_id: u64) {
        let ids = marks.entry((provider, gate)).or_default();
        ids.insert(scan_id);
        if ids.len() > UPLOADS_PER_GATE_MAX {
            ids.pop_first();
        }
    }

    /// Whether `scan_id` of `gate` of `provider` was applied.
    pub(crate) fn applied(marks: &Marks, provider: u16, gate: u16, scan_id: u64) -> bool {
        marks
            .get(&(provider, gate))
            .is_some_and(|ids| ids.contains(&scan_id))
    }

    /// Adds a conflict just applied (its scan noted under `marks`, held by the caller for
    /// the whole of the scan).
    pub(crate) fn record(&self, marks: &mut Marks, c: ConflictRecord) {
        Self::raise(marks, c.provider, c.second_gate, c.scan_id);
        self.conflicts.lock().expect("conflicts poisoned").push(c);
    }

    /// Adds a conflict read from the log, unless the snapshot below it holds it already
    /// (its gate's mark is at or past its scan: a snapshot reads marks and conflicts
    /// together).
    pub(crate) fn replay(&self, c: ConflictRecord) {
        let mut marks = self.marks.lock().expect("marks poisoned");
        if Self::applied(&marks, c.provider, c.second_gate, c.scan_id) {
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
        let mut marks: Vec<MarkRow> = held
            .iter()
            .flat_map(|(&(p, g), ids)| ids.iter().map(move |&id| (p, g, id)))
            .collect();
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
