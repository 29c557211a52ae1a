//! stile's hot path: the key ring and tag checks, the lock-free index of state words, the
//! validity and entry rules, and the atomic check-in-and-void.
//!
//! Gate operations ([`Engine::checkin`], [`Engine::checkin_batch`], [`Engine::exit`],
//! [`Engine::undo`]) never fail: every answer is an [`Outcome`]. Operator operations (mint,
//! import, revoke, transfer, status, purge) return typed errors.

pub mod clock;
pub mod datadir;
mod engine;
pub mod error;
pub mod index;
pub mod keys;
pub mod metrics;
pub mod offline;
mod ops;
pub mod policy;
mod recovery;
pub mod scans;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod snapshot;
pub mod standby;
pub mod storage;
mod tables;
pub mod wal;
pub mod word;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    check_clock, Engine, EngineConfig, Gate, Presented, Recovered, CLOCK_BEHIND_LOG_MAX_S,
    ROTATION_STEP_DEFAULT_S,
};
pub use error::{MintError, OpenError, PurgeError, TicketError};
pub use keys::{KeyRing, KeyStatus};
pub use ops::checkin::{CheckinRequest, GateOp, PREFETCH_ROUND};
pub use ops::dump::{EngineDump, SlotDump};
pub use ops::import::{IMPORTED_CODE_MAX_LEN, IMPORT_BATCH_MAX};
pub use ops::mint::{MintRequest, MINT_BATCH_MAX};
pub use ops::offline::{DivergedAdmit, OfflineScan};
pub use ops::purge::{Purged, PURGE_STEP_SERIALS};
pub use ops::replica::ReplicaTicket;
pub use ops::status::TicketStatus;
pub use policy::{EntryRule, Policy, PolicyId, SlotPolicy, Validity};
pub use snapshot::{SnapshotError, SnapshotInfo};
pub use stile_protocol::{CodeBytes, CodeFormat, Outcome, OutcomeKind};
pub use wal::{Durability, SyncMode};
pub use word::{TicketState, Word};
