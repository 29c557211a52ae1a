//! What the runner and every target share: the answers a link hands back, why a link stops,
//! what a node reading holds, and the constants both sides rely on. A module of its own so
//! that targets and reports depend on it, not on one another.

use std::time::Duration;

use stile_protocol::histogram::Histogram;
use stile_protocol::{CodeBytes, Outcome};

use crate::plan::{Item, Kind};
use crate::LoadError;

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

/// What every target does (the engine in process, a node, Redis): mint the run's tickets,
/// say how it syncs and what it measured itself, and open each gate's link.
pub(crate) trait TargetKind {
    /// The sending half of a gate's link.
    type Tx: LinkTx;
    /// The receiving half.
    type Rx: LinkRx;

    /// Mints `n` tickets of `kind`, valid any time, of [`PROVIDER`] (`first`: the run's
    /// first batch).
    async fn mint_kind(&self, kind: Kind, n: u32, first: bool)
        -> Result<Vec<CodeBytes>, LoadError>;

    /// Its sync mode, as it reports it.
    async fn sync_name(&self) -> String;

    /// What it says of itself now; the difference of two readings is its own view of a run.
    /// `None` where it says nothing.
    async fn reading(&self) -> Option<NodeReading>;

    /// CPU time the target has used so far, user and system, microseconds (`None`: it
    /// does not say).
    async fn server_cpu_us(&self) -> Option<u64>;

    /// The target's resident memory now, bytes (`None`: it does not say).
    async fn server_memory_bytes(&self) -> Option<u64>;

    /// Opens gate `gate`'s link.
    async fn link(&self, gate: u16, inflight: u32) -> Result<(Self::Tx, Self::Rx), LoadError>;
}

/// The sending half of one gate's link.
pub(crate) trait LinkTx {
    /// Sends `reqs` (request id, what to present).
    async fn send(&mut self, reqs: &[(u32, Item)]) -> Result<(), LinkError>;
}

/// The receiving half of one gate's link.
pub(crate) trait LinkRx {
    /// Waits for answers and appends at least one to `out`. Cancel-safe: an answer read is
    /// never lost when the future is dropped.
    async fn recv(&mut self, out: &mut Vec<Answer>) -> Result<(), LinkError>;
}
