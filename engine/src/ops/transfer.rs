//! Transfer: void the old code and mint a new one for the new holder, atomically. A ticket
//! transferred already answers its successor's code again, so a caller whose answer was lost
//! (a dropped connection, a crash before the code was stored) asks again and loses nothing.

use crate::clock::Clock;
use stile_protocol::{CodeBytes, OutcomeKind};

use crate::engine::{Engine, Gate, Presented};
use crate::error::TicketError;
use crate::policy::SlotPolicy;
use crate::wal::Record;
use crate::word::{to_epoch_s, Op, TicketState, Word};

impl Engine {
    /// Voids the presented ticket and mints its successor (same policy and partition; entries
    /// already counted and the first-scan time carry over, so a transfer never refreshes a
    /// ticket). A ticket transferred before answers the code of the successor that transfer
    /// made (signed afresh: a rotating code for the current step). Refused when the ticket is
    /// spent, inside, revoked or not genuine, or the log's disk is full; then nothing changes.
    pub fn transfer(&self, ticket: &Presented<'_>) -> Result<CodeBytes, TicketError> {
        let now = self.clock.now_unix_s();
        let at = self
            .locate(ticket, &Gate::OPERATOR, None)
            .map_err(TicketError::from_lookup)?;
        let policy = *self
            .policy_of(&at, &Gate::OPERATOR)
            .map_err(TicketError::from_lookup)?;
        let partition = self
            .partition(at.loc.partition)
            .expect("located tickets have partitions");
        // A purge waits for this transfer (taken before the successors, as a purge does).
        let _minting = self.tables.minting();
        // Held to the end: a second transfer of this ticket waits, then finds the successor.
        let mut successors = self.tables.successors.lock().expect("successors poisoned");
        if let Some(&serial) = successors.get(&at.loc) {
            let key = partition.slot(serial).map_or(0, |s| s.key_id());
            let step = self.rotation_step(now);
            return Ok(self.sign_new(&policy, at.loc.partition, serial, step, key));
        }
        // The log's room and the new serial first: once the old ticket is void, nothing can
        // fail.
        let log = self.reserve_room(1).map_err(|_| TicketError::DiskFull)?;
        let serial = partition
            .reserve(1)
            .ok_or(TicketError::PartitionFull(at.loc.partition))?;
        let applied = self.run(&at, Op::Transfer, &Gate::OPERATOR, None, now, None);
        let Some((old, voided)) = applied.change else {
            // The reserved serial stays unminted: a hole that reads as `unknown`.
            return Err(match applied.outcome.kind {
                OutcomeKind::AlreadyUsed | OutcomeKind::Revoked => {
                    TicketError::NotTransferable(applied.outcome)
                }
                _ => TicketError::from_lookup(applied.outcome),
            });
        };
        let first_scan = at
            .slot
            .first_scan_e
            .load(std::sync::atomic::Ordering::Acquire);
        let successor = Word {
            state: TicketState::Valid,
            inside: false,
            entries: old.entries,
            version: 1,
            gate: 0,
            time_e: to_epoch_s(now),
        };
        let key = self.tables.keys.active_id();
        let slot_policy = SlotPolicy::new(at.slot.policy_id(), key);
        partition.publish(serial, slot_policy, successor, first_scan);
        successors.insert(at.loc, serial);
        if let Some(mut log) = log {
            log.push(&Record::Transfer {
                partition: at.loc.partition,
                old_serial: at.loc.serial,
                old_word: voided.pack(),
                new_serial: serial,
                policy: slot_policy.0,
                new_word: successor.pack(),
                first_scan_e: first_scan,
            });
            log.submit().wait();
        }
        Ok(self.sign_new(
            &policy,
            at.loc.partition,
            serial,
            self.rotation_step(now),
            key,
        ))
    }
}
