//! What the runner and every target share: the answers a link hands back, why a link stops,
//! what a node reading holds, and the constants both sides rely on. A module of its own so
//! that targets and reports depend on it, not on one another.

use std::time::Duration;

use stile_protocol::histogram::Histogram;
use stile_protocol::Outcome;

/// The provider every load-test ticket and gate belongs to.
pub const PROVIDER: u16 = 1;
/// One answer: the request id it answers, and the outcome or why there is none.
pub(crate) type Answer = (u32, Result<Outcome, String>);

/// Why a link stopped working.
#[derive(Debug)]
pub(crate) struct LinkError(pub String);

/// Latency histograms and log counters of a node (or the engine in process) at one moment.
#[derive(Debug, Clone)]
pub struct NodeReading {
    /// Check-ins, from reading the request to writing the answer (a node only).
    pub checkin_us: Option<Histogram>,
    /// `fdatasync` of the log.
    pub fsync_us: Histogram,
    /// Syncs so far.
    pub syncs: u64,
    /// Records logged so far.
    pub records: u64,
    /// When it was read.
    pub at: std::time::Instant,
}

/// How long one request may go unanswered before the gate gives up on its link.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
