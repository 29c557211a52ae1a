//! A gate's replica: its provider's tickets with the fingerprints of their codes, read in
//! pages (see `stile_gate::replica` for what the gate keeps).

use std::sync::atomic::Ordering;

use stile_protocol::{fingerprint, CodeBytes, CodeFormat, CodeHeader};

use crate::engine::Engine;
use crate::index::Slot;
use crate::keys::KeyStatus;
use crate::policy::{Policy, PolicyId};
use crate::word::{from_epoch_s, Word};

/// Slots a page reads at most per ticket it may return, so a page of a provider with few
/// tickets among many is still bounded work.
const SLOTS_READ_PER_TICKET: usize = 8;

/// One ticket as a gate's replica holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaTicket {
    /// Partition.
    pub partition: u16,
    /// Serial.
    pub serial: u32,
    /// Fingerprint of its code (`stile_protocol::fingerprint`); 0 for a rotating ticket,
    /// whose code changes every step.
    pub fingerprint: u64,
    /// Its policy.
    pub policy: PolicyId,
    /// Its state.
    pub word: Word,
    /// First scan, Unix seconds (0: never scanned).
    pub first_scan_unix_s: u64,
    /// The ticket's rotation key, when its policy lets gates verify its rotating codes
    /// offline (`Policy::offline_rotating`).
    pub rotating_key: Option<[u8; 32]>,
}

impl Engine {
    /// Up to `limit` tickets of `provider` after place `after` (from the first when
    /// `None`), in (partition, serial) order, appended to `out`; the place to go on from,
    /// if there may be more.
    pub fn replica_page(
        &self,
        provider: u16,
        after: Option<(u16, u32)>,
        limit: usize,
        out: &mut Vec<ReplicaTicket>,
    ) -> Option<(u16, u32)> {
        let limit = limit.max(1);
        let mut budget = limit * SLOTS_READ_PER_TICKET;
        let mut taken = 0;
        // The place of the last slot read: where the next page goes on from.
        let mut last_read = None;
        for part in self.tables.partitions.iter() {
            let start = match after {
                Some((p, _)) if part.id() < p => continue,
                Some((p, s)) if part.id() == p => u64::from(s) + 1,
                _ => 0,
            };
            let end = part.minted_serials();
            for serial in start.max(part.purged_below())..end {
                if taken == limit || budget == 0 {
                    return last_read;
                }
                budget -= 1;
                let s = serial as u32;
                last_read = Some((part.id(), s));
                if let Some(t) = part
                    .slot(s)
                    .and_then(|slot| self.replica_of(provider, part.id(), s, slot))
                {
                    out.push(t);
                    taken += 1;
                }
            }
        }
        None
    }

    /// One ticket as a replica holds it (`None`: not minted, or of a provider other than
    /// `provider`).
    pub fn replica_ticket(
        &self,
        provider: u16,
        partition: u16,
        serial: u32,
    ) -> Option<ReplicaTicket> {
        let slot = self.partition(partition)?.slot(serial)?;
        self.replica_of(provider, partition, serial, slot)
    }

    /// A minted slot of `provider`'s as a replica holds it; its provider is checked before
    /// its code is drawn and hashed, which other providers' tickets need not cost.
    fn replica_of(
        &self,
        provider: u16,
        partition: u16,
        serial: u32,
        slot: &Slot,
    ) -> Option<ReplicaTicket> {
        let raw = slot.word.load(Ordering::Acquire);
        if raw == 0 {
            return None;
        }
        let policy_id = slot.policy_id();
        let policy = self.policy(policy_id).filter(|p| p.provider == provider)?;
        let fingerprint = match policy.format {
            CodeFormat::Static => self
                .static_code(policy, partition, serial, slot.key_id())
                .map_or(0, |c| fingerprint(&c)),
            CodeFormat::Rotating => 0,
        };
        let first = slot.first_scan_e.load(Ordering::Acquire);
        let rotating_key = match policy.offline_rotating {
            true => {
                self.tables
                    .keys
                    .ticket_key(self.rotating_key_id(slot.key_id()), partition, serial)
            }
            false => None,
        };
        Some(ReplicaTicket {
            rotating_key,
            partition,
            serial,
            fingerprint,
            policy: policy_id,
            word: Word::unpack(raw),
            first_scan_unix_s: if first == 0 { 0 } else { from_epoch_s(first) },
        })
    }

    /// The static code a ticket's holder has: signed with the key its slot records, or
    /// (key 0: minted before keys were recorded) the oldest key that still verifies.
    fn static_code(
        &self,
        policy: &Policy,
        partition: u16,
        serial: u32,
        key: u8,
    ) -> Option<CodeBytes> {
        let keys = &self.tables.keys;
        let key = match key {
            0 => keys
                .list()
                .into_iter()
                .find(|(_, s)| matches!(s, KeyStatus::Active | KeyStatus::VerifyOnly))
                .map(|(id, _)| id)?,
            k => k,
        };
        keys.sign_static_with(&CodeHeader {
            format: CodeFormat::Static,
            key_id: key,
            provider: policy.provider,
            partition,
            serial,
        })
    }

    /// The ring key a rotating ticket's codes are drawn with: the one its slot records, or
    /// (0: not recorded) the active one.
    fn rotating_key_id(&self, recorded: u8) -> u8 {
        match recorded {
            0 => self.tables.keys.active_id(),
            k => k,
        }
    }

    /// The code of a ticket, for listings: its static code, or a rotating ticket's code at
    /// this step (`None`: not minted, or its key no longer verifies).
    pub fn code_of(&self, partition: u16, serial: u32) -> Option<CodeBytes> {
        let slot = self.partition(partition)?.slot(serial)?;
        if slot.word.load(Ordering::Acquire) == 0 {
            return None;
        }
        let policy = self.policy(slot.policy_id())?;
        match policy.format {
            CodeFormat::Static => self.static_code(policy, partition, serial, slot.key_id()),
            CodeFormat::Rotating => {
                let key = self.rotating_key_id(slot.key_id());
                let header = CodeHeader {
                    format: CodeFormat::Rotating,
                    key_id: key,
                    provider: policy.provider,
                    partition,
                    serial,
                };
                let step = self.rotation_step(self.now_unix_s());
                self.tables.keys.sign_rotating_with(&header, step)
            }
        }
    }
}
