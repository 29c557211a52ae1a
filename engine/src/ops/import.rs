//! Import: tickets minted by another system, known by their full string.

use crate::clock::Clock;
use std::sync::atomic::Ordering;

use dashmap::mapref::entry::Entry;
use stile_protocol::CodeFormat;

use crate::engine::Engine;
use crate::error::MintError;
use crate::policy::{PolicyError, PolicyId, SlotPolicy};
use crate::tables::TicketLoc;
use crate::wal::Record;
use crate::word::{to_epoch_s, Word};

/// Longest imported code, in bytes.
pub const IMPORTED_CODE_MAX_LEN: usize = 256;
/// Most codes one import call takes (one log record holds them all).
pub const IMPORT_BATCH_MAX: usize = 10_000;

impl Engine {
    /// Imports codes minted elsewhere under `policy` into `partition`; returns their serials.
    /// All or nothing: a bad or duplicate code refuses the whole batch.
    pub fn import(
        &self,
        policy: PolicyId,
        partition: u16,
        codes: &[&str],
    ) -> Result<Vec<u32>, MintError> {
        let p = *self
            .tables
            .policies
            .get(policy)
            .ok_or(PolicyError::NoSuchPolicy(policy.0))?;
        if p.format != CodeFormat::Static {
            return Err(MintError::ImportRotating(policy.0));
        }
        if codes.is_empty() || codes.len() > IMPORT_BATCH_MAX {
            return Err(MintError::BadCount {
                count: codes.len(),
                max: IMPORT_BATCH_MAX,
            });
        }
        let mut seen = std::collections::HashSet::with_capacity(codes.len());
        for (index, code) in codes.iter().enumerate() {
            check_imported(index, code)?;
            if !seen.insert(*code) || self.tables.imported.contains_key(*code) {
                return Err(MintError::DuplicateImportedCode {
                    index,
                    code: code.to_string(),
                });
            }
        }
        let part = self
            .partition(partition)
            .ok_or(MintError::NotOwned(partition))?;
        let count = codes.len() as u32;
        // Before anything is changed: the log's room for the record, which holds every code
        // (its fixed part and each code's length and bytes; twice that, as `room.rs` says).
        let record_bytes = 64 + codes.iter().map(|c| 2 + c.len() as u64).sum::<u64>();
        let claim = self
            .claim_room(2 * record_bytes)
            .map_err(|_| MintError::DiskFull)?;
        // Held until the record is logged: a purge waits for this batch, then drops it too.
        let _minting = self.tables.minting();
        let first = part
            .reserve(count)
            .ok_or(MintError::PartitionFull { partition, count })?;
        for (index, code) in codes.iter().enumerate() {
            let serial = first + index as u32;
            match self.tables.imported.entry((*code).into()) {
                Entry::Vacant(v) => {
                    v.insert(TicketLoc { partition, serial });
                }
                Entry::Occupied(_) => {
                    // Imported concurrently by another caller: undo this batch's entries.
                    for earlier in &codes[..index] {
                        self.tables.imported.remove(*earlier);
                    }
                    return Err(MintError::DuplicateImportedCode {
                        index,
                        code: code.to_string(),
                    });
                }
            }
        }
        let minted = Word::minted(to_epoch_s(self.clock.now_unix_s()));
        for serial in first..first + count {
            part.publish(serial, SlotPolicy::new(policy, 0), minted, 0);
        }
        self.log_one(claim, || Record::Import {
            partition,
            first,
            policy: policy.0,
            word: minted.pack(),
            codes: codes.iter().map(|c| c.to_string()).collect(),
        });
        debug_assert!(part
            .slot(first)
            .is_some_and(|s| s.word.load(Ordering::Relaxed) != 0));
        Ok((first..first + count).collect())
    }
}

fn check_imported(index: usize, code: &str) -> Result<(), MintError> {
    let reason = if code.is_empty() {
        "empty"
    } else if code.len() > IMPORTED_CODE_MAX_LEN {
        "longer than 256 bytes"
    } else if code.chars().any(char::is_control) {
        "holds control characters"
    } else {
        return Ok(());
    };
    Err(MintError::BadImportedCode { index, reason })
}
