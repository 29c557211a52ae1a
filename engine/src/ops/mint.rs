//! Mint: reserve serials, publish their slots, sign their codes.

use crate::clock::Clock;

use stile_protocol::{CodeBytes, CodeFormat, CodeHeader};

use crate::engine::{Engine, Gate, Presented};
use crate::error::{MintError, TicketError};
use crate::policy::{Policy, PolicyError, PolicyId, SlotPolicy};
use crate::wal::Record;
use crate::word::{to_epoch_s, Word};

/// Most tickets one mint call makes.
pub const MINT_BATCH_MAX: usize = 1_000_000;

/// A batch of tickets to mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintRequest {
    /// The tickets' policy (which names their provider and code format).
    pub policy: PolicyId,
    /// The partition to mint into (one this engine serves).
    pub partition: u16,
    /// How many, 1 to [`MINT_BATCH_MAX`].
    pub count: u32,
}

impl Engine {
    /// Mints a batch and returns its codes, in serial order. Rotating tickets get the code of
    /// the current time step (which also serves as the ticket's handle for operators).
    pub fn mint(&self, req: &MintRequest) -> Result<Vec<CodeBytes>, MintError> {
        let mut codes = Vec::with_capacity(req.count as usize);
        self.mint_each(req, |code| codes.push(code))?;
        Ok(codes)
    }

    /// Mints a batch, handing each code to `each` in serial order; returns the first serial.
    pub fn mint_each(
        &self,
        req: &MintRequest,
        mut each: impl FnMut(CodeBytes),
    ) -> Result<u32, MintError> {
        let policy = *self
            .tables
            .policies
            .get(req.policy)
            .ok_or(PolicyError::NoSuchPolicy(req.policy.0))?;
        if req.count == 0 || req.count as usize > MINT_BATCH_MAX {
            return Err(MintError::BadCount {
                count: req.count as usize,
                max: MINT_BATCH_MAX,
            });
        }
        let partition = self
            .partition(req.partition)
            .ok_or(MintError::NotOwned(req.partition))?;
        // Before anything is changed: the log's room.
        let claim = self
            .claim_room(crate::wal::RECORD_CLAIM_BYTES)
            .map_err(|_| MintError::DiskFull)?;
        // Held until the record is logged: a purge waits for this batch, then drops it too.
        let minting = self.tables.minting();
        let first = partition
            .reserve(req.count)
            .ok_or(MintError::PartitionFull {
                partition: req.partition,
                count: req.count,
            })?;
        let now = self.clock.now_unix_s();
        let step = self.rotation_step(now);
        let minted = Word::minted(to_epoch_s(now));
        // The key is chosen once, recorded with the tickets and used to sign them.
        let key = self.tables.keys.active_id();
        let slot_policy = SlotPolicy::new(req.policy, key);
        for serial in first..first + req.count {
            partition.publish(serial, slot_policy, minted, 0);
        }
        self.log_one(claim, || Record::Mint {
            partition: req.partition,
            first,
            count: req.count,
            policy: slot_policy.0,
            word: minted.pack(),
        });
        drop(minting);
        for serial in first..first + req.count {
            each(self.sign_new(&policy, req.partition, serial, step, key));
        }
        Ok(first)
    }

    /// The code a rotating ticket shows at `unix_s` (the e-ticket page draws it with the
    /// server's time). Static tickets return their one code.
    pub fn code_at(&self, ticket: &Presented<'_>, unix_s: u64) -> Result<CodeBytes, TicketError> {
        let Presented::Code(code) = ticket else {
            return Err(TicketError::Unknown);
        };
        self.locate_code(code, &Gate::OPERATOR, None)
            .map_err(TicketError::from_lookup)?;
        match code.format() {
            CodeFormat::Static => Ok(*code),
            CodeFormat::Rotating => self
                .tables
                .keys
                .sign_rotating_with(&code.header(), self.rotation_step(unix_s))
                .ok_or(TicketError::Forged),
        }
    }
}

impl Engine {
    /// Signs a ticket's code with key `key` (the one its slot records): its one static code,
    /// or its rotating code at `step`. A key that no longer verifies (0, not recorded, or
    /// one retired in the instant between a mint's choice and its signing) gives way to the
    /// active key.
    pub(crate) fn sign_new(
        &self,
        policy: &Policy,
        partition: u16,
        serial: u32,
        step: u64,
        key: u8,
    ) -> CodeBytes {
        let header = CodeHeader {
            format: policy.format,
            key_id: key,
            provider: policy.provider,
            partition,
            serial,
        };
        let with_key = match policy.format {
            CodeFormat::Static => self.tables.keys.sign_static_with(&header),
            CodeFormat::Rotating => self.tables.keys.sign_rotating_with(&header, step),
        };
        with_key.unwrap_or_else(|| match policy.format {
            CodeFormat::Static => self.tables.keys.sign_static(&header),
            CodeFormat::Rotating => self.tables.keys.sign_rotating(&header, step),
        })
    }
}
