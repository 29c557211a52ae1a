//! Limits both sides of the wire rely on: a node enforces them, and a gateway or client
//! checks them first so that a request it sends is never refused for them.

/// Most entries a ticket's state counts (the state word's entry field is six bits); a
/// policy allows at most this many, or 0 for unlimited.
pub const ENTRIES_MAX: u8 = 63;
/// Longest undo window a policy may set, seconds: one hour.
pub const UNDO_WINDOW_MAX_S: u32 = 3600;
/// The partition `stile loadtest` mints its tickets into, so that `stile purge --partition
/// 65535` removes them and nothing of an operator's (whose tickets are minted into partition
/// 0 unless told otherwise). A node serves partitions 0 and this one.
pub const LOADTEST_PARTITION: u16 = u16::MAX;
