//! Recent scans per gate, so that a retry (same gate, same scan id) gets its original answer.
//!
//! Each gate that ever changed a ticket gets a table of [`SCANS_PER_GATE`] entries indexed by
//! `scan_id % SCANS_PER_GATE`. An entry holds the scan id, the ticket and op, and the answer
//! given, compared exactly (no hash: nothing can make one ticket's answer replay for
//! another). A gate numbering its scans in sequence is thus remembered for its last
//! [`SCANS_PER_GATE`] state-changing scans: minutes of traffic at a turnstile. Only answers
//! that changed state are remembered; a retry of anything else is decided afresh, which is
//! safe because the first try changed nothing.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use stile_protocol::{Outcome, OutcomeKind};

use crate::word::{from_epoch_s, to_epoch_s, Op};

/// Scans remembered per gate.
pub const SCANS_PER_GATE: usize = 256;
/// Gate ids are `u16`.
const GATES_MAX: usize = 1 << 16;

/// One remembered scan. Written `scan = 0`, `ticket`, `answer`, `scan`; read `scan`, `ticket`,
/// `answer`, then `scan` and `ticket` again, so a reader racing a writer sees a match only
/// when all three belong together.
#[derive(Debug, Default)]
struct Entry {
    /// The scan id plus one (0 = empty or being written).
    scan: AtomicU64,
    /// Op, partition and serial, packed by [`ticket_key`].
    ticket: AtomicU64,
    /// The packed answer.
    answer: AtomicU64,
}

/// One gate's remembered scans.
#[derive(Debug)]
struct GateScans {
    /// Entries by `scan_id % SCANS_PER_GATE`.
    entries: [Entry; SCANS_PER_GATE],
}

/// Remembered scans of every gate.
#[derive(Debug)]
pub struct ScanMemory {
    /// Tables by gate id, allocated on a gate's first state change.
    gates: Box<[AtomicPtr<GateScans>]>,
}

impl Default for ScanMemory {
    fn default() -> Self {
        ScanMemory {
            gates: (0..GATES_MAX)
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
        }
    }
}

/// Identifies one scan of one ticket by one gate.
#[derive(Debug, Clone, Copy)]
pub struct ScanKey {
    /// The gate.
    pub gate: u16,
    /// The gate's scan id.
    pub scan_id: u64,
    /// The ticket's partition.
    pub partition: u16,
    /// The ticket's serial.
    pub serial: u32,
}

impl ScanKey {
    fn entry_scan(&self) -> u64 {
        self.scan_id.wrapping_add(1).max(1)
    }
}

fn ticket_key(key: &ScanKey, op: Op) -> u64 {
    (op as u64) << 48 | u64::from(key.partition) << 32 | u64::from(key.serial)
}

pub(crate) fn pack(o: &Outcome) -> u64 {
    u64::from(o.kind as u8)
        | u64::from(o.entries) << 8
        | u64::from(o.gate) << 16
        | u64::from(to_epoch_s(o.at_unix_s)) << 32
}

pub(crate) fn unpack(v: u64) -> Outcome {
    Outcome {
        kind: OutcomeKind::from_u8(v as u8).unwrap_or(OutcomeKind::Admitted),
        entries: (v >> 8) as u8,
        gate: (v >> 16) as u16,
        at_unix_s: from_epoch_s((v >> 32) as u32),
    }
}

impl ScanMemory {
    fn table(&self, gate: u16) -> Option<&GateScans> {
        let p = self.gates[gate as usize].load(Ordering::Acquire);
        // SAFETY: non-null pointers come from `Box::into_raw` in `table_or_insert` and live
        // until `drop`.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    #[inline]
    fn table_or_insert(&self, gate: u16) -> &GateScans {
        match self.table(gate) {
            Some(t) => t,
            None => self.insert_table(gate),
        }
    }

    /// Allocates a gate's table on its first state change (kept out of line: the table is
    /// built on the stack before it is boxed).
    #[cold]
    #[inline(never)]
    fn insert_table(&self, gate: u16) -> &GateScans {
        let fresh = Box::into_raw(Box::new(GateScans {
            entries: std::array::from_fn(|_| Entry::default()),
        }));
        let slot = &self.gates[gate as usize];
        match slot.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: just installed; lives until `drop`.
            Ok(_) => unsafe { &*fresh },
            Err(existing) => {
                // SAFETY: `fresh` was never shared; `existing` is installed and lives on.
                unsafe {
                    drop(Box::from_raw(fresh));
                    &*existing
                }
            }
        }
    }

    /// The answer given to this exact scan before, if it changed state.
    #[inline]
    pub fn recall(&self, key: &ScanKey, op: Op) -> Option<Outcome> {
        let entry = &self.table(key.gate)?.entries[key.scan_id as usize % SCANS_PER_GATE];
        let (scan, ticket) = (key.entry_scan(), ticket_key(key, op));
        if entry.scan.load(Ordering::Acquire) != scan
            || entry.ticket.load(Ordering::Acquire) != ticket
        {
            return None;
        }
        let answer = entry.answer.load(Ordering::Acquire);
        // A writer may have replaced the entry meanwhile: it clears `scan` first and writes
        // `ticket` before `answer`, so an unchanged pair means `answer` is theirs.
        let still = entry.scan.load(Ordering::Acquire) == scan
            && entry.ticket.load(Ordering::Acquire) == ticket;
        still.then(|| unpack(answer))
    }

    /// Remembers the answer to a scan that changed state.
    #[inline]
    pub fn remember(&self, key: &ScanKey, op: Op, answer: &Outcome) {
        let entry = &self.table_or_insert(key.gate).entries[key.scan_id as usize % SCANS_PER_GATE];
        entry.scan.store(0, Ordering::Release);
        entry.ticket.store(ticket_key(key, op), Ordering::Release);
        entry.answer.store(pack(answer), Ordering::Release);
        entry.scan.store(key.entry_scan(), Ordering::Release);
    }
}

impl ScanMemory {
    /// Rewrites the answer remembered for `gate`'s admit of a ticket that an undo annulled
    /// (the admit that counted its `entries`th entry) to `answer`, the undo's: a retry of
    /// that admit must not open a gate again for an entry that no longer stands, and is
    /// told what happened to it. A gate's scans are looked through (an undo is rare).
    pub fn annul_admit(
        &self,
        gate: u16,
        partition: u16,
        serial: u32,
        entries: u8,
        answer: &Outcome,
    ) {
        let Some(table) = self.table(gate) else {
            return;
        };
        let key = ScanKey {
            gate,
            scan_id: 0,
            partition,
            serial,
        };
        let ticket = ticket_key(&key, Op::Entry);
        for entry in &table.entries {
            let scan = entry.scan.load(Ordering::Acquire);
            if scan == 0 || entry.ticket.load(Ordering::Acquire) != ticket {
                continue;
            }
            let old = unpack(entry.answer.load(Ordering::Acquire));
            if old.kind != OutcomeKind::Admitted || old.entries != entries {
                continue;
            }
            // The same order as `remember`: a reader sees the old answer or the new one.
            entry.scan.store(0, Ordering::Release);
            entry.answer.store(pack(answer), Ordering::Release);
            entry.scan.store(scan, Ordering::Release);
        }
    }
}

/// One remembered scan as a snapshot keeps it: gate, entry index, scan id plus one, op and
/// ticket packed, answer packed.
pub type ScanRow = (u16, u8, u64, u64, u64);

impl ScanMemory {
    /// Every remembered scan, for a snapshot (entries being written meanwhile are left out
    /// or read whole: the log after the snapshot's position has them anyway).
    pub(crate) fn export(&self) -> Vec<ScanRow> {
        let mut rows = Vec::new();
        for gate in 0..GATES_MAX {
            let Some(table) = self.table(gate as u16) else {
                continue;
            };
            for (i, entry) in table.entries.iter().enumerate() {
                let scan = entry.scan.load(Ordering::Acquire);
                if scan == 0 {
                    continue;
                }
                let ticket = entry.ticket.load(Ordering::Acquire);
                let answer = entry.answer.load(Ordering::Acquire);
                if entry.scan.load(Ordering::Acquire) == scan
                    && entry.ticket.load(Ordering::Acquire) == ticket
                {
                    rows.push((gate as u16, i as u8, scan, ticket, answer));
                }
            }
        }
        rows
    }

    /// Puts back a scan a snapshot kept (before any replay or scan).
    pub(crate) fn restore(
        &self,
        (gate, slot, scan, ticket, answer): ScanRow,
    ) -> Result<(), String> {
        const _: () = assert!(SCANS_PER_GATE == 256, "an entry index is a byte");
        let slot = usize::from(slot);
        if scan == 0 || Op::from_u8((ticket >> 48) as u8).is_none() {
            return Err(format!("a remembered scan of gate {gate} is damaged"));
        }
        let entry = &self.table_or_insert(gate).entries[slot];
        entry.scan.store(0, Ordering::Release);
        entry.ticket.store(ticket, Ordering::Release);
        entry.answer.store(answer, Ordering::Release);
        entry.scan.store(scan, Ordering::Release);
        Ok(())
    }
}

impl Drop for ScanMemory {
    fn drop(&mut self) {
        for g in self.gates.iter() {
            let p = g.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: installed from `Box::into_raw`, and `&mut self` means it is unshared.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stile_protocol::ENGINE_EPOCH_UNIX_S;

    #[test]
    fn recalls_exact_scan_only() {
        let m = ScanMemory::default();
        let k = ScanKey {
            gate: 7,
            scan_id: 1000,
            partition: 0,
            serial: 5,
        };
        let admitted = Outcome {
            kind: OutcomeKind::Admitted,
            gate: 7,
            entries: 1,
            at_unix_s: ENGINE_EPOCH_UNIX_S + 99,
        };
        assert_eq!(m.recall(&k, Op::Entry), None);
        m.remember(&k, Op::Entry, &admitted);
        assert_eq!(m.recall(&k, Op::Entry), Some(admitted));
        assert_eq!(m.recall(&k, Op::Exit), None);
        assert_eq!(m.recall(&ScanKey { serial: 6, ..k }, Op::Entry), None);
        assert_eq!(m.recall(&ScanKey { gate: 8, ..k }, Op::Entry), None);
        // A later scan landing in the same entry evicts it.
        m.remember(
            &ScanKey {
                scan_id: 1000 + SCANS_PER_GATE as u64,
                ..k
            },
            Op::Entry,
            &admitted,
        );
        assert_eq!(m.recall(&k, Op::Entry), None);
    }
}
