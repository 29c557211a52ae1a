//! The turnstile's agent: a gate that keeps admitting when its node or the link is gone.
//!
//! Built so far: the [replica](replica) of the provider's tickets a gate decides from
//! offline (32 bytes a ticket, fingerprints instead of codes), the [offline rules](rules)
//! (the node's entry and exit rules for one replica entry), and the [journal](journal) every
//! offline decision is synced to before it is shown. The online path, loading the replica
//! from a node and uploading the journal come with the node's ops for them.

pub mod journal;
pub mod replica;
pub mod rules;

pub use journal::{Journal, JournalError, Record, Scan};
pub use replica::{fingerprint, Entry, Lookup, Policy, Replica, ReplicaError};
pub use rules::{decide, Decision, Op};
