//! Queries shared by the handlers and the gateway's workers (the live follower, the
//! reminders): the database's side of accounts, so that neither workers nor the database
//! layer reach into a handler module. Handlers call these; more of their SQL moves here as
//! it is shared.

pub mod accounts;
pub mod providers;
