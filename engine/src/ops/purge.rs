//! Purge: drop every ticket of a partition for good (a load test's, say), durably, and hand
//! their memory back. The partition's serials go on from where they were, so a purged code
//! never names a ticket again: it answers `unknown`.

use crate::engine::Engine;
use crate::error::PurgeError;
use crate::index::CHUNK_BITS;
use crate::wal::{Durability, Record};

/// Most serials one purge record covers: the log waits behind a step's record while the
/// step's slots are zeroed, so a purge of millions of tickets goes in steps of eight chunks
/// (1,048,576 serials, 16 MiB of slots) and never holds the log for long.
pub const PURGE_STEP_SERIALS: u64 = 8 << CHUNK_BITS;

/// What a purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// The partition.
    pub partition: u16,
    /// Tickets dropped (minted slots that were not purged before), whatever their state.
    pub tickets: u64,
    /// Every serial below this is purged now; the partition's next ticket gets this one or
    /// a later one.
    pub below: u64,
    /// Imported codes forgotten with their tickets.
    pub imported: usize,
}

impl Engine {
    /// Drops every ticket of `partition` minted so far, of every provider, and answers once
    /// that is durable. Mints, imports and transfers wait meanwhile; check-ins go on, and a
    /// check-in of a purged ticket answers `unknown` (one that read the ticket just before
    /// its slot was zeroed may still be answered as it would have been, its change logged
    /// before the purge). While the log's disk is full it stops before the next step, with
    /// what it purged so far durable.
    pub fn purge(&self, partition: u16) -> Result<Purged, PurgeError> {
        let part = self
            .partition(partition)
            .ok_or(PurgeError::NotServed(partition))?;
        let exclusive = self
            .tables
            .purging
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // No mint is under way: every serial below `end` is published or a hole for good,
        // and its record is in the log before this purge's.
        let end = part.minted_serials();
        let mut from = part.purged_below();
        let mut tickets = 0;
        let mut durable = Durability::READY;
        while from < end {
            let step = (((from >> CHUNK_BITS) << CHUNK_BITS) + PURGE_STEP_SERIALS).min(end);
            // Reserved before the first slot is zeroed: a check-in that finds one zeroed
            // reads the reservation counter after, so its `unknown` waits for this record.
            let Ok(log) = self.reserve_room(1) else {
                self.tables.forget_purged(partition, from);
                drop(exclusive);
                durable.wait();
                return Err(PurgeError::DiskFull { below: from });
            };
            tickets += part.purge_below(step);
            if let Some(mut log) = log {
                log.push(&Record::Purge {
                    partition,
                    below: step,
                });
                durable = log.submit();
            }
            from = step;
        }
        let imported = self.tables.forget_purged(partition, end);
        drop(exclusive);
        durable.wait();
        Ok(Purged {
            partition,
            tickets,
            below: end.max(part.purged_below()),
            imported,
        })
    }
}
