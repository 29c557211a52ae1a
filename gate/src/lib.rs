//! The turnstile's agent: a gate that keeps admitting when its node or the link is gone.
//!
//! [`Gate::scan`] asks the node, and decides offline when no answer comes in time: from the
//! [replica](replica) of the provider's tickets (32 bytes a ticket, fingerprints instead of
//! codes) with the [offline rules](rules) (the node's entry and exit rules for one replica
//! entry), each decision synced to the [journal](journal) before it is shown. In the
//! background, while the node answers, it keeps the replica current (loaded in pages, then
//! following the node's changes) and uploads the journal's offline scans in order.

mod gate;
pub mod journal;
pub mod replica;
pub mod rules;
mod sync;

pub use sync::load as load_replica;

pub use gate::{Answer, Gate, GateConfig, GateError, Mode, Status};
pub use journal::{Journal, JournalError, Record, Scan};
pub use replica::{fingerprint, Entry, Lookup, Policy, Replica, ReplicaError};
pub use rules::{decide, Decision, Op};
