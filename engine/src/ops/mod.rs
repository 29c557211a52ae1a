//! One file per operation, each in the same shape: find the ticket, apply, answer.

pub mod checkin;
pub mod dump;
pub mod exit;
pub mod import;
pub mod mint;
pub mod offline;
pub mod purge;
pub mod replica;
pub mod revoke;
pub mod status;
pub mod transfer;
pub mod undo;
