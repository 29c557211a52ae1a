//! The engine's tables: what check-ins read and change, what recovery rebuilds and what a
//! snapshot copies. Recovery and snapshots work on these alone, never on the engine around
//! them (which holds the clock, the log and the lock besides).

use dashmap::DashMap;
use xxhash_rust::xxh3::Xxh3Builder;

use crate::index::Partition;
use crate::keys::KeyRing;
use crate::policy::PolicyTable;
use crate::scans::ScanMemory;

/// Where an imported code's ticket lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TicketLoc {
    /// Partition id.
    pub partition: u16,
    /// Serial in the partition.
    pub serial: u32,
}

/// The engine's tables.
pub(crate) struct Tables {
    /// Keys that sign and verify codes.
    pub(crate) keys: KeyRing,
    /// Policies by id.
    pub(crate) policies: PolicyTable,
    /// The partitions served here, sorted by id (few: a binary search finds one).
    pub(crate) partitions: Box<[Partition]>,
    /// Taken shared by everything that hands out serials and publishes slots (mint, import,
    /// transfer) from its reservation of serials until its record is logged, and exclusively
    /// by a purge, so that a purge sees no ticket half made and every mint's record comes
    /// before the purge's in the log. Check-ins never take it.
    pub(crate) purging: std::sync::RwLock<()>,
    /// Imported codes: the full string (hashed with xxh3, compared in full) to its ticket.
    pub(crate) imported: DashMap<Box<str>, TicketLoc, Xxh3Builder>,
    /// Transferred tickets to their successors' serials (same partition). Held for the whole
    /// of a transfer, so transfers of one ticket are one at a time and a repeated transfer
    /// answers the code the first one made.
    pub(crate) successors: std::sync::Mutex<std::collections::HashMap<TicketLoc, u32>>,
    /// Recent state-changing scans per gate, for retries.
    pub(crate) scans: ScanMemory,
    /// Gates' upload marks and the conflicts their offline scans met.
    pub(crate) offline: crate::offline::OfflineBook,
    /// The newest time (engine-epoch seconds) a state restored from the snapshot or the
    /// log holds: where the engine's time starts (see `Engine::open`).
    pub(crate) newest_e: std::sync::atomic::AtomicU32,
}

impl Tables {
    /// Notes a time a restored state holds (a word's event time, a first scan).
    #[inline]
    pub(crate) fn saw_time(&self, e: u32) {
        use std::sync::atomic::Ordering::Relaxed;
        // A load first: a read-modify-write per replayed record cost 0.2 s per 10 M of
        // them, and times rarely move past the newest.
        if e > self.newest_e.load(Relaxed) {
            self.newest_e.fetch_max(e, Relaxed);
        }
    }

    /// Partition `id`, if served here.
    #[inline]
    pub(crate) fn partition(&self, id: u16) -> Option<&Partition> {
        self.partitions
            .binary_search_by_key(&id, Partition::id)
            .ok()
            .map(|i| &self.partitions[i])
    }

    /// Shared hold on serials and slots for a mint, import or transfer (see `purging`).
    pub(crate) fn minting(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        // The lock guards no data: a panic while it was held leaves nothing half changed.
        self.purging
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops what refers to partition `partition`'s serials below `end` outside the index:
    /// imported codes and transfers' successors. Returns the imported codes forgotten.
    pub(crate) fn forget_purged(&self, partition: u16, end: u64) -> usize {
        let below = |loc: &TicketLoc| loc.partition == partition && u64::from(loc.serial) < end;
        let before = self.imported.len();
        if before > 0 {
            self.imported.retain(|_, loc| !below(loc));
            self.imported.shrink_to_fit();
        }
        let mut successors = self.successors.lock().expect("successors poisoned");
        successors.retain(|loc, _| !below(loc));
        successors.shrink_to_fit();
        before - self.imported.len()
    }

    /// Every transfer's (partition, old serial, new serial), sorted.
    pub(crate) fn successors_list(&self) -> Vec<(u16, u32, u32)> {
        let mut all: Vec<_> = self
            .successors
            .lock()
            .expect("successors poisoned")
            .iter()
            .map(|(loc, new)| (loc.partition, loc.serial, *new))
            .collect();
        all.sort_unstable();
        all
    }
}
