//! The gateway's SQL, one module per table family, called by the handlers and the workers
//! (the live follower, the reminders) inside database calls, so that neither reaches into
//! the other. Accounts, devices and stream tickets (`accounts.rs`) and providers and gate
//! tokens (`providers.rs`), events and seat maps (`events.rs`) and what the venue reads
//! (`venue.rs`) are here; the booking and ticket handlers still hold their own statements.

pub mod accounts;
pub mod events;
pub mod providers;
pub mod venue;
