//! The turnstile's agent: a gate that keeps admitting when its node or the link is gone.
//!
//! [`Gate::scan`] asks the node, and decides offline when no answer comes in time: from the
//! [replica](replica) of the provider's tickets (32 bytes a ticket, fingerprints instead of
//! codes) with the [offline rules](rules) (the node's entry and exit rules for one replica
//! entry), each decision synced to the [journal](journal) before it is shown. Not built yet:
//! loading the replica from a node and uploading the journal (they need node ops of their
//! own); a replica file is read from the state directory if one is there.

mod gate;
pub mod journal;
pub mod replica;
pub mod rules;

pub use gate::{Answer, Gate, GateConfig, GateError, Mode, Status};
pub use journal::{Journal, JournalError, Record, Scan};
pub use replica::{fingerprint, Entry, Lookup, Policy, Replica, ReplicaError};
pub use rules::{decide, Decision, Op};
