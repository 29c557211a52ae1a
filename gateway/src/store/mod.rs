//! The gateway's SQL, one module per table family, called by the handlers and the workers
//! (the live follower, the reminders) inside database calls, so that neither reaches into
//! the other. Accounts, devices and stream tickets (`accounts.rs`) and providers and gate
//! tokens (`providers.rs`), events and seat maps (`events.rs`) and what the venue reads
//! (`venue.rs`), bookings and idempotency keys (`bookings.rs`) and tickets, seats and
//! reminders (`tickets.rs`). The workers' own queues (the live follower's position, the
//! reminders' outbox delivery) stay with them.

pub mod accounts;
pub mod bookings;
pub mod events;
pub mod providers;
pub mod tickets;
pub mod venue;
