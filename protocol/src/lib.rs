//! stile's wire: the feature code's layout and text form, check-in outcomes, the frame codec
//! (sans IO) and, with the `client` feature, the async QUIC client.
//!
//! This crate holds no keys: gates parse codes too (to check format and provider before a
//! round trip), but only the engine can sign or verify a tag with a ring key. Given one
//! ticket's key (which the engine derives and an admin may fetch), [`rotating::draw`] draws
//! that ticket's rotating codes: the one function the engine, the gateway and tests share.

// Unsafe code only where a socket option has no safe binding (`udp.rs`).
#![deny(unsafe_code)]

pub mod base32;
pub mod code;
pub mod fingerprint;
pub mod frame;
pub mod histogram;
pub mod limits;
pub mod outcome;
pub mod replication;
pub mod rotating;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
#[allow(unsafe_code)]
pub mod udp;

pub use code::{CodeBytes, CodeError, CodeFormat, CodeHeader, CodeText};
pub use fingerprint::fingerprint;
pub use frame::{
    Conflict, ConflictKind, OfflineScan, ReplicaBatch, ReplicaItem, ReplicaPolicy, ReplicaState,
    ScanRef,
};
pub use outcome::{Outcome, OutcomeKind};

/// Seconds between the Unix epoch and the engine epoch (2025-01-01T00:00:00Z). State words
/// store event times as seconds from here, in 31 bits (good until 2093).
pub const ENGINE_EPOCH_UNIX_S: u64 = 1_735_689_600;
