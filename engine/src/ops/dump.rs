//! Dump: the engine's whole state as plain values, for comparisons and snapshots.

use std::sync::atomic::Ordering;

use crate::engine::Engine;
use crate::keys::KeyStatus;
use crate::policy::Policy;

/// One minted ticket's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotDump {
    /// Partition.
    pub partition: u16,
    /// Serial.
    pub serial: u32,
    /// State word.
    pub word: u64,
    /// Policy id.
    pub policy: u32,
    /// First-scan time, engine-epoch seconds (0: none).
    pub first_scan_e: u32,
}

/// Everything the engine holds, as plain values in a stable order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineDump {
    /// Policies by id.
    pub policies: Vec<Policy>,
    /// Serials handed out per partition (`(partition, count)`).
    pub reserved: Vec<(u16, u64)>,
    /// Serials purged per partition (`(partition, below)`: every serial below it).
    pub purged: Vec<(u16, u64)>,
    /// Every minted slot, by partition and serial.
    pub slots: Vec<SlotDump>,
    /// Imported codes with their partition and serial, sorted by code.
    pub imported: Vec<(String, u16, u32)>,
    /// Transferred tickets: partition, old serial, successor's serial; sorted.
    pub successors: Vec<(u16, u32, u32)>,
    /// Key ids and statuses.
    pub keys: Vec<(u8, KeyStatus)>,
}

impl Engine {
    /// Reads the whole state. Check-ins may go on meanwhile: each slot is read atomically,
    /// the whole is not a single instant.
    pub fn dump(&self) -> EngineDump {
        let mut d = EngineDump {
            policies: (0..self.tables.policies.len())
                .filter_map(|i| {
                    self.tables
                        .policies
                        .get(crate::policy::PolicyId(i as u32))
                        .copied()
                })
                .collect(),
            keys: self.tables.keys.list(),
            ..EngineDump::default()
        };
        for part in self.tables.partitions.iter() {
            // The floor first: a purge raises the serials handed out before it.
            let purged = part.purged_below();
            let reserved = part.minted_serials();
            d.reserved.push((part.id(), reserved));
            d.purged.push((part.id(), purged));
            for serial in purged..reserved {
                let serial = serial as u32;
                let Some(slot) = part.slot(serial) else {
                    continue;
                };
                let word = slot.word.load(Ordering::Acquire);
                if word != 0 {
                    d.slots.push(SlotDump {
                        partition: part.id(),
                        serial,
                        word,
                        policy: slot.policy.load(Ordering::Relaxed),
                        first_scan_e: slot.first_scan_e.load(Ordering::Relaxed),
                    });
                }
            }
        }
        d.imported = self
            .tables
            .imported
            .iter()
            .map(|e| (e.key().to_string(), e.partition, e.serial))
            .collect();
        d.imported.sort();
        d.successors = self.tables.successors_list();
        d
    }
}
