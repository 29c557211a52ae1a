//! Recovery: replay the log into a fresh tables.
//!
//! Replay is idempotent and per-ticket ordered: a state record applies only if its word's
//! version is newer (modulo 256) than the slot's, and mints and imports publish only empty
//! slots. Records of one ticket that reached the log in the other order than their swaps
//! therefore still leave the later state. A purge zeroes its partition's slots below its
//! serial, and every record of a purged serial, before the purge or after it (a check-in
//! that read its ticket just before the purge zeroed it), is skipped.

use std::path::Path;
use std::sync::atomic::Ordering;

use crate::error::OpenError;
use crate::keys::KeyStatus;
use crate::policy::{PolicyId, SlotPolicy};
use crate::scans::ScanKey;
use crate::storage::Storage;
use crate::tables::{Tables, TicketLoc};
use crate::wal::record::ScanTrace;
use crate::wal::segment::{self, ScanEnd};
use crate::wal::{Record, OP_OFFLINE};
use crate::word::{Op, Word};
use std::collections::HashMap;

use stile_protocol::{Outcome, OutcomeKind};

/// Admits annulled by an undo, by gate, partition, serial and entry count, with the undo's
/// answer: a retry of such an admit is told so whichever of the two the log holds first.
pub(crate) type Annulled = HashMap<(u16, u16, u32, u8), Outcome>;

/// Replays every record from `from_seq` on; returns where the log ends.
pub(crate) fn replay(
    storage: &dyn Storage,
    tables: &Tables,
    wal_dir: &Path,
    from_seq: u64,
) -> Result<ScanEnd, OpenError> {
    let mut annulled = Annulled::new();
    segment::scan(storage, wal_dir, from_seq, |_, record| {
        apply(tables, &mut annulled, record)
    })
    .map_err(OpenError::from)
}

/// Applies `records` in order to `tables`, as replay does: the simulation's reference for
/// what a recovered state must be.
#[cfg(any(test, feature = "sim"))]
pub(crate) fn apply_all(
    tables: &Tables,
    records: impl IntoIterator<Item = Record>,
) -> Result<(), String> {
    let mut annulled = Annulled::new();
    for record in records {
        apply(tables, &mut annulled, record)?;
    }
    Ok(())
}

/// Whether `new` is a later version of the ticket than `old` (versions wrap at 256).
fn newer(new: u64, old: u64) -> bool {
    let (n, o) = (Word::unpack(new).version, Word::unpack(old).version);
    (n.wrapping_sub(o) as i8) > 0
}

pub(crate) fn apply(
    tables: &Tables,
    annulled: &mut Annulled,
    record: Record,
) -> Result<(), String> {
    match record {
        Record::Policy { id, policy } => tables.policies.restore(PolicyId(id), policy),
        Record::Mint { partition, first, count, policy, word } => {
            let part = tables.partition(partition).ok_or_else(|| not_served(partition))?;
            part.restore_reserved(first, count)?;
            for serial in first..first + count {
                publish_if_empty(tables, partition, serial, SlotPolicy(policy), word, 0)?;
            }
            Ok(())
        }
        Record::State { partition, serial, .. } if purged(tables, partition, serial)? => Ok(()),
        Record::State { partition, serial, word, first_scan_e, scan } => {
            set_state(tables, partition, serial, word, first_scan_e)?;
            if let Some(t) = scan {
                if t.op & OP_OFFLINE != 0 {
                    // An uploaded offline scan: it raises its gate's upload mark.
                    let provider = ticket_provider(tables, partition, serial)?;
                    tables.offline.replay_mark(provider, t.gate, t.scan_id);
                }
                let t = ScanTrace { op: t.op & !OP_OFFLINE, ..t };
                // The answer that scan got, for a retry that arrives after the restart.
                let op = Op::from_u8(t.op).ok_or_else(|| format!("unknown op {} in a scan trace", t.op))?;
                let key = ScanKey { gate: t.gate, scan_id: t.scan_id, partition, serial };
                let mut answer = crate::scans::unpack(t.answer);
                if op == Op::Entry && answer.kind == OutcomeKind::Admitted && !annulled.is_empty() {
                    if let Some(undo) = annulled.get(&(t.gate, partition, serial, answer.entries)) {
                        answer = *undo;
                    }
                }
                tables.scans.remember(&key, op, &answer);
                if op == Op::Undo && answer.kind == OutcomeKind::Undone {
                    // As the undo did when it ran: the annulled admit counted one more entry.
                    let entries = Word::unpack(word).entries.saturating_add(1);
                    tables.scans.annul_admit(t.gate, partition, serial, entries, &answer);
                    annulled.insert((t.gate, partition, serial, entries), answer);
                }
            }
            Ok(())
        }
        Record::Transfer { partition, old_serial, old_word, new_serial, policy, new_word, first_scan_e } => {
            let part = tables.partition(partition).ok_or_else(|| not_served(partition))?;
            part.restore_reserved(new_serial, 1)?;
            if !part.is_purged(old_serial) {
                set_state(tables, partition, old_serial, old_word, 0)?;
                tables
                    .successors
                    .lock()
                    .expect("successors poisoned")
                    .insert(TicketLoc { partition, serial: old_serial }, new_serial);
            }
            publish_if_empty(tables, partition, new_serial, SlotPolicy(policy), new_word, first_scan_e)
        }
        Record::Import { partition, first, policy, word, codes } => {
            let part = tables.partition(partition).ok_or_else(|| not_served(partition))?;
            part.restore_reserved(first, codes.len() as u32)?;
            for (i, code) in codes.into_iter().enumerate() {
                let serial = first + i as u32;
                if !part.is_purged(serial) {
                    publish_if_empty(tables, partition, serial, SlotPolicy(policy), word, 0)?;
                    tables.imported.insert(code.into_boxed_str(), TicketLoc { partition, serial });
                }
            }
            Ok(())
        }
        Record::Purge { partition, below } => {
            let part = tables.partition(partition).ok_or_else(|| not_served(partition))?;
            if below > part.serials_max() {
                return Err(format!("a purge of partition {partition} below serial {below}, past its serials"));
            }
            part.purge_below(below);
            tables.forget_purged(partition, below);
            Ok(())
        }
        Record::Conflict(c) => {
            if crate::offline::ConflictKind::from_u8(c.kind).is_none() {
                return Err(format!("a conflict of unknown kind {}", c.kind));
            }
            tables.offline.replay(c);
            Ok(())
        }
        Record::Key { id, status: _ } => match tables.keys.status_of(id) {
            KeyStatus::Absent => Err(format!(
                "the log names key {id}, which the key ring does not hold (is the ring file older than the log?)"
            )),
            _ => Ok(()),
        },
    }
}

/// The provider of a minted ticket's policy.
fn ticket_provider(tables: &Tables, partition: u16, serial: u32) -> Result<u16, String> {
    tables
        .partition(partition)
        .and_then(|p| p.slot(serial))
        .and_then(|slot| tables.policies.get(slot.policy_id()))
        .map(|p| p.provider)
        .ok_or_else(|| {
            format!("an offline scan of ticket {partition}/{serial}, which was never minted")
        })
}

/// Whether `serial` of `partition` was purged (its records are skipped).
fn purged(tables: &Tables, partition: u16, serial: u32) -> Result<bool, String> {
    let part = tables
        .partition(partition)
        .ok_or_else(|| not_served(partition))?;
    Ok(part.is_purged(serial))
}

fn not_served(partition: u16) -> String {
    format!("the log holds tickets of partition {partition}, which this node is not configured to serve")
}

fn publish_if_empty(
    tables: &Tables,
    partition: u16,
    serial: u32,
    policy: SlotPolicy,
    word: u64,
    first_scan_e: u32,
) -> Result<(), String> {
    if tables.policies.get(policy.policy()).is_none() {
        return Err(format!(
            "ticket {partition}/{serial} names unknown policy {}",
            policy.policy().0
        ));
    }
    let part = tables
        .partition(partition)
        .ok_or_else(|| not_served(partition))?;
    if part.is_purged(serial) {
        return Ok(());
    }
    let slot = part
        .slot(serial)
        .ok_or_else(|| format!("serial {serial} has no slot"))?;
    let unpacked = Word::unpack(word);
    tables.saw_time(unpacked.time_e.max(first_scan_e));
    if slot.word.load(Ordering::Acquire) == 0 {
        part.publish(serial, policy, unpacked, first_scan_e);
    }
    Ok(())
}

fn set_state(
    tables: &Tables,
    partition: u16,
    serial: u32,
    word: u64,
    first_scan_e: u32,
) -> Result<(), String> {
    tables.saw_time(Word::unpack(word).time_e.max(first_scan_e));
    let part = tables
        .partition(partition)
        .ok_or_else(|| not_served(partition))?;
    let slot = part
        .slot(serial)
        .filter(|s| s.word.load(Ordering::Acquire) != 0)
        .ok_or_else(|| format!("state of ticket {partition}/{serial}, which was never minted"))?;
    if newer(word, slot.word.load(Ordering::Acquire)) {
        slot.word.store(word, Ordering::Release);
    }
    if first_scan_e != 0 && slot.first_scan_e.load(Ordering::Acquire) == 0 {
        slot.first_scan_e.store(first_scan_e, Ordering::Release);
    }
    Ok(())
}
