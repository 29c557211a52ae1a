//! Typed errors of the engine's operator-facing operations. Gate-facing operations never
//! fail: every answer is an [`stile_protocol::Outcome`].

use std::path::PathBuf;

use stile_protocol::{Outcome, OutcomeKind};

use crate::keys::KeyError;
use crate::policy::PolicyError;

/// Opening an engine failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data dir could not be created or read.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another process has the data dir open (a node, `stile up`, a `keys` command).
    #[error(
        "data dir {path} is in use by another process{}: stop it first, or give another --data",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        /// The directory.
        path: PathBuf,
        /// The holder's pid, if it wrote one.
        pid: Option<u32>,
    },
    /// The key ring could not be loaded or made.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The data dir holds a key ring but no log and no snapshot.
    #[error(
        "{path} is missing or empty, but the data dir holds a key ring: its log was deleted, and \
         starting afresh would mint the codes of tickets already used again. Restore the log \
         from a backup; only if this data dir never held tickets (a first start that stopped \
         before its log was made), remove its keys directory to start anew"
    )]
    LogMissing {
        /// The log's directory.
        path: PathBuf,
    },
    /// The clock is outside what the engine records, or behind the data dir's newest time.
    #[error("clock: {0}")]
    Clock(String),
    /// The configuration is unusable.
    #[error("bad engine configuration: {0}")]
    Config(String),
    /// The newest readable snapshot does not fit this node.
    #[error("snapshot {path}: {reason}")]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The log is damaged in its middle (a torn tail is cut off silently, not an error).
    #[error(transparent)]
    Log(#[from] crate::wal::segment::ScanError),
}

/// What an operator is told when a change is refused because the log's disk is full.
pub const DISK_FULL_MESSAGE: &str = "the node's disk is full: it makes no change it cannot log, \
     so nothing was changed; free space where it keeps its log (its own log names the \
     directory and the cause: a file-size limit, `ulimit -f`, must be raised instead), then \
     try again";

/// Minting or importing failed; nothing was minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// The policy id is unknown.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// This engine does not own the partition.
    #[error("partition {0} is not served by this node")]
    NotOwned(u16),
    /// The partition has no serials left.
    #[error("partition {partition} is full: {count} more tickets do not fit")]
    PartitionFull {
        /// The partition.
        partition: u16,
        /// Tickets asked for.
        count: u32,
    },
    /// Asked for zero tickets or more than one batch holds.
    #[error("a mint batch holds 1 to {max} tickets, asked for {count}")]
    BadCount {
        /// Tickets asked for.
        count: usize,
        /// The batch maximum.
        max: usize,
    },
    /// An imported code is empty, too long or holds control characters.
    #[error("imported code #{index} is unusable: {reason}")]
    BadImportedCode {
        /// Position in the batch.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An imported code is already known (or appears twice in the batch).
    #[error("imported code #{index} ({code:?}) already exists")]
    DuplicateImportedCode {
        /// Position in the batch.
        index: usize,
        /// The code.
        code: String,
    },
    /// Imported codes carry no signature, so they cannot rotate.
    #[error("imported codes need a static-code policy; policy {0} is rotating")]
    ImportRotating(u32),
    /// The log's disk is full (see [`crate::wal::LogFull`]).
    #[error("{DISK_FULL_MESSAGE}")]
    DiskFull,
}

/// An operator action on one ticket (status, revoke, transfer) failed; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// The code is not genuine.
    #[error("code has a bad signature, key or format (forged or mistyped)")]
    Forged,
    /// Genuine code, no such ticket here.
    #[error("no such ticket on this node")]
    Unknown,
    /// The ticket's state forbids the action.
    #[error("ticket cannot be transferred: {}", .0.message())]
    NotTransferable(Outcome),
    /// The partition has no serial left for the new ticket.
    #[error("partition {0} is full: no serial left for the transferred ticket")]
    PartitionFull(u16),
    /// The log's disk is full (see [`crate::wal::LogFull`]).
    #[error("{DISK_FULL_MESSAGE}")]
    DiskFull,
}

impl TicketError {
    /// The error for a failed look-up outcome (`forged`, `unknown`, …).
    pub(crate) fn from_lookup(o: Outcome) -> Self {
        match o.kind {
            OutcomeKind::Unknown => TicketError::Unknown,
            _ => TicketError::Forged,
        }
    }
}

/// A purge failed; nothing was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurgeError {
    /// This engine does not serve the partition.
    #[error(
        "partition {0} is not served by this node (a node serves partition 0 and the load \
         test's, 65535)"
    )]
    NotServed(u16),
    /// The log's disk is full (see [`crate::wal::LogFull`]): the purge stopped part way.
    #[error(
        "the node's disk is full: the purge stopped part way (every serial below {below} is \
         purged); free space where it keeps its log (its own log names the directory), then \
         purge again to finish"
    )]
    DiskFull {
        /// Every serial below this is purged.
        below: u64,
    },
}
