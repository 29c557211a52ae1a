//! The node's operator metrics: what it counts on the request path (lock-free), the
//! Prometheus text it serves at `GET /metrics` when started with a metrics address, and the
//! `metrics` request's answer.
//!
//! Every label set is bounded: `op` by the request ops, `outcome` by the outcome kinds,
//! `gate` by [`GATE_LABELS_MAX`] (the first gates seen; the rest count as `other`), `mode`
//! by the sync modes. No label names a ticket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use stile_protocol::frame::{op, NodeMetrics as WireMetrics};
use stile_protocol::OutcomeKind;
use tokio::sync::{watch, Semaphore};

use stile_protocol::udp;

use crate::Shared;
use stile_engine::metrics::{AtomicHistogram, LATENCY_EDGES_US};

/// Request ops with a latency histogram: op byte − 1 is the index.
pub(crate) const OPS: usize = op::REQUEST_MAX as usize;
/// Outcome kinds counted: wire value is the index.
pub(crate) const OUTCOMES: usize = OutcomeKind::ALL.len();
/// Gates that get a `gate` label of their own; later gates count under `gate="other"`.
pub const GATE_LABELS_MAX: usize = 256;
/// Scrape connections served at once; more wait for the accept loop.
const SCRAPES_MAX: usize = 16;
/// How long a scraper may take to send its request head.
const SCRAPE_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one scrape connection may stay open (scrapers keep theirs alive; a new one is
/// cheap).
const SCRAPE_CONN_MAX_AGE: Duration = Duration::from_secs(120);
/// The content type of the text we serve (`prometheus-client` writes OpenMetrics).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The ops whose answers are outcomes, in the order of an [`OutcomeTally`].
pub(crate) const OUTCOME_OPS: [u8; 4] = [op::CHECKIN, op::EXIT, op::UNDO, op::CHECKIN_AS];

/// Outcomes decided, by op ([`outcome_op_index`]) and outcome (wire value).
pub(crate) type OutcomeTally = [[u32; OUTCOMES]; OUTCOME_OPS.len()];

/// An empty [`OutcomeTally`].
pub(crate) const NO_OUTCOMES: OutcomeTally = [[0; OUTCOMES]; OUTCOME_OPS.len()];

/// Index of request op `op` in an [`OutcomeTally`] (any op not answered with an outcome
/// counts as a check-in: there is none on the request path).
#[inline]
pub(crate) const fn outcome_op_index(op: u8) -> usize {
    match op {
        op::EXIT => 1,
        op::UNDO => 2,
        op::CHECKIN_AS => 3,
        _ => 0,
    }
}

/// Requests answered, by op: what one write carried out.
pub(crate) type OpTally = [u32; OPS];

/// Index of request op `op` in an [`OpTally`].
#[inline]
pub(crate) const fn op_index(op: u8) -> usize {
    debug_assert!(op >= 1 && op <= op::REQUEST_MAX);
    op as usize - 1
}

/// Counter shards. A thread adds to its own shard and a reading sums them all, so a
/// stream's reader and writer, or many streams on many threads, never take turns at one
/// cache line.
const SHARDS: usize = 8;

/// The shard of the calling thread (threads are dealt shards in turn as they first count).
#[inline]
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// One thread's share of the counters, on cache lines of its own.
#[repr(align(128))]
struct Shard {
    /// Latency by request op (index [`op_index`]).
    latency: Box<[AtomicHistogram]>,
    /// Answers to gate requests by op ([`outcome_op_index`]) and outcome (wire value).
    outcomes: [[AtomicU64; OUTCOMES]; OUTCOME_OPS.len()],
    /// Requests accepted (in flight until done).
    accepted: AtomicU64,
    /// Requests answered, or dropped because their peer went away.
    done: AtomicU64,
    /// Scans per gate slot (see [`GateSlots`]); the last one is `other`.
    gate_scans: Box<[AtomicU64]>,
}

impl Shard {
    fn new() -> Self {
        Shard {
            latency: (0..OPS)
                .map(|_| AtomicHistogram::new(LATENCY_EDGES_US))
                .collect(),
            outcomes: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            accepted: AtomicU64::new(0),
            done: AtomicU64::new(0),
            gate_scans: (0..=GATE_LABELS_MAX).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// What the request path counts. Lock-free and uncontended: every add goes to the calling
/// thread's shard, once per batch of answers, not once per request.
pub(crate) struct NodeMetrics {
    /// The counters, [`SHARDS`] times.
    shards: Box<[Shard]>,
    /// Which gates have a counter of their own.
    gates: GateSlots,
}

impl NodeMetrics {
    pub(crate) fn new() -> Self {
        NodeMetrics {
            shards: (0..SHARDS).map(|_| Shard::new()).collect(),
            gates: GateSlots::new(),
        }
    }

    #[inline]
    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    /// `n` requests accepted (they count as in flight until answered or dropped).
    #[inline]
    pub(crate) fn accepted(&self, n: u32) {
        if n > 0 {
            self.shard()
                .accepted
                .fetch_add(u64::from(n), Ordering::Relaxed);
        }
    }

    /// The answers to `ops` went out at `now`; their requests were read at `read_at`.
    #[inline]
    pub(crate) fn answered(&self, ops: &OpTally, read_at: Instant, now: Instant) {
        let us = now.saturating_duration_since(read_at).as_micros() as u64;
        let shard = self.shard();
        let mut total = 0;
        for (i, &n) in ops.iter().enumerate() {
            if n > 0 {
                shard.latency[i].record_n(us, u64::from(n));
                total += n;
            }
        }
        if total > 0 {
            shard.done.fetch_add(u64::from(total), Ordering::Relaxed);
        }
    }

    /// `n` accepted requests will never be answered (their peer went away): out of flight,
    /// and in no latency.
    #[inline]
    pub(crate) fn dropped(&self, n: u32) {
        if n > 0 {
            self.shard().done.fetch_add(u64::from(n), Ordering::Relaxed);
        }
    }

    /// Adds a read's outcome counts.
    #[inline]
    pub(crate) fn count_outcomes(&self, tally: &OutcomeTally) {
        let shard = self.shard();
        for (counters, of_op) in shard.outcomes.iter().zip(tally) {
            for (counter, &n) in counters.iter().zip(of_op) {
                if n > 0 {
                    counter.fetch_add(u64::from(n), Ordering::Relaxed);
                }
            }
        }
    }

    /// The counter slot of `gate` (resolve once per stream, then [`Self::count_gate`]).
    pub(crate) fn gate_slot(&self, gate: u16) -> usize {
        self.gates.slot(gate)
    }

    /// Adds `n` scans to a gate's slot.
    #[inline]
    pub(crate) fn count_gate(&self, slot: usize, n: u32) {
        if n > 0 {
            self.shard().gate_scans[slot].fetch_add(u64::from(n), Ordering::Relaxed);
        }
    }

    /// Answers by outcome so far, all ops together.
    pub(crate) fn outcome_counts(&self) -> [u64; OUTCOMES] {
        let by_op = self.outcome_counts_by_op();
        std::array::from_fn(|i| by_op.iter().map(|of_op| of_op[i]).sum())
    }

    /// Answers by op ([`outcome_op_index`]) and outcome so far.
    pub(crate) fn outcome_counts_by_op(&self) -> [[u64; OUTCOMES]; OUTCOME_OPS.len()] {
        std::array::from_fn(|o| {
            std::array::from_fn(|i| {
                self.shards
                    .iter()
                    .map(|s| s.outcomes[o][i].load(Ordering::Relaxed))
                    .sum()
            })
        })
    }

    /// Requests accepted and neither answered nor dropped.
    fn inflight(&self) -> u64 {
        // Done first: whatever it counts was accepted before, so the difference stays >= 0.
        let done: u64 = self
            .shards
            .iter()
            .map(|s| s.done.load(Ordering::Relaxed))
            .sum();
        let accepted: u64 = self
            .shards
            .iter()
            .map(|s| s.accepted.load(Ordering::Relaxed))
            .sum();
        accepted.saturating_sub(done)
    }

    /// The latency histogram of request op `code`, every shard summed.
    fn latency_of(&self, code: u8) -> impl Iterator<Item = &AtomicHistogram> + Clone {
        self.shards.iter().map(move |s| &s.latency[op_index(code)])
    }

    /// `(gate, scans)` of every labelled gate, then the `other` count.
    fn gate_scans(&self) -> (Vec<(u16, u64)>, u64) {
        let scans = |slot: usize| -> u64 {
            self.shards
                .iter()
                .map(|s| s.gate_scans[slot].load(Ordering::Relaxed))
                .sum()
        };
        let labelled = self
            .gates
            .labelled()
            .map(|(slot, gate)| (gate, scans(slot)))
            .collect();
        (labelled, scans(GATE_LABELS_MAX))
    }
}

/// Which gates have a scan counter of their own: the first [`GATE_LABELS_MAX`] gates seen
/// get one each, every later gate shares the `other` counter (slot `GATE_LABELS_MAX`). A
/// gate's slot is found with one atomic load.
struct GateSlots {
    /// Per gate id: 0 not seen yet, `1..=GATE_LABELS_MAX` its slot + 1, [`OTHER_MARK`] other.
    slot_of: Box<[AtomicU16]>,
    /// Per slot: gate id + 1 (0: the slot was lost to a race and stays empty).
    gate_of: Box<[AtomicU32]>,
    /// Slots handed out (may pass the bound; only the first ones are real).
    next: AtomicUsize,
}

/// `slot_of` value of a gate counted under `other`.
const OTHER_MARK: u16 = u16::MAX;

impl GateSlots {
    fn new() -> Self {
        GateSlots {
            slot_of: (0..=u16::MAX as usize).map(|_| AtomicU16::new(0)).collect(),
            gate_of: (0..GATE_LABELS_MAX).map(|_| AtomicU32::new(0)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    fn slot(&self, gate: u16) -> usize {
        let index = |mark: u16| {
            if mark == OTHER_MARK {
                GATE_LABELS_MAX
            } else {
                mark as usize - 1
            }
        };
        let cell = &self.slot_of[gate as usize];
        match cell.load(Ordering::Acquire) {
            0 => {}
            mark => return index(mark),
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mark = if n < GATE_LABELS_MAX {
            n as u16 + 1
        } else {
            OTHER_MARK
        };
        match cell.compare_exchange(0, mark, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                if n < GATE_LABELS_MAX {
                    self.gate_of[n].store(u32::from(gate) + 1, Ordering::Release);
                }
                index(mark)
            }
            // Another thread placed this gate first; slot `n` stays empty.
            Err(theirs) => index(theirs),
        }
    }

    /// `(slot, gate)` of every labelled gate.
    fn labelled(&self) -> impl Iterator<Item = (usize, u16)> + '_ {
        self.gate_of
            .iter()
            .enumerate()
            .filter_map(|(slot, g)| match g.load(Ordering::Acquire) {
                0 => None,
                g => Some((slot, (g - 1) as u16)),
            })
    }
}

/// The answer to a `metrics` request.
pub(super) fn wire_metrics(shared: &Shared, latency_op: u8) -> WireMetrics {
    let m = &shared.metrics;
    let known = (1..=op::REQUEST_MAX).contains(&latency_op) && latency_op != op::SUBSCRIBE;
    let wal = shared.engine.wal();
    WireMetrics {
        uptime_us: shared.started.elapsed().as_micros() as u64,
        inflight: m.inflight(),
        outcomes: m.outcome_counts().to_vec(),
        latency_op: if known { latency_op } else { 0 },
        latency_us: if known {
            AtomicHistogram::snapshot_of(m.latency_of(latency_op))
        } else {
            Default::default()
        },
        fsync_us: wal
            .map(|w| w.sync_latency_us().snapshot())
            .unwrap_or_default(),
        disk_full: Some(wal.is_some_and(|w| w.disk_full())),
        cpu_us: process_cpu_us(),
        rss_bytes: process_rss_bytes(),
    }
}

/// This process's resident memory, bytes (`/proc/self/statm`).
pub(crate) fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf(2) with a valid name only reads.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// CPU time this process has used, user and system, microseconds.
pub(crate) fn process_cpu_us() -> Option<u64> {
    // SAFETY: getrusage(2) fills the struct it is given; all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a pointer to a live rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Some(us(usage.ru_utime) + us(usage.ru_stime))
}

/// Writes every node metric at each scrape, read straight from the atomics.
struct NodeCollector {
    /// The node's state, read at each scrape.
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector").finish_non_exhaustive()
    }
}

/// Writes a histogram's Prometheus buckets.
fn encode_histogram(
    h: &stile_engine::metrics::Coarse,
    mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> std::fmt::Result {
    encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum,
        h.count,
        h.buckets(),
        None,
    )
}

/// Writes one unlabelled constant metric.
fn one(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let shared = &self.shared;
        let m = &shared.metrics;

        let mut h = e.encode_descriptor(
            "stile_node_request_duration_seconds",
            "Time from reading a request to writing its answer (durability wait included), by op",
            None,
            MetricType::Histogram,
        )?;
        for code in 1..=op::REQUEST_MAX {
            // Streams have no one latency.
            if code != op::SUBSCRIBE && code != op::REPLICA_FOLLOW {
                let labels = [("op", op::name(code))];
                let coarse = AtomicHistogram::coarse_of(m.latency_of(code), 1e6);
                encode_histogram(&coarse, h.encode_family(&labels)?)?;
            }
        }

        let mut c = e.encode_descriptor(
            "stile_node_outcomes",
            "Answers to gate requests (checkin, exit, undo, checkin_as) by op and outcome",
            None,
            MetricType::Counter,
        )?;
        for (code, counts) in OUTCOME_OPS.iter().zip(m.outcome_counts_by_op()) {
            let op_name = op::name(*code);
            for (kind, n) in OutcomeKind::ALL.iter().zip(counts) {
                let labels = [("op", op_name), ("outcome", kind.name())];
                ConstCounter::new(n).encode(c.encode_family(&labels)?)?;
            }
        }

        let mut c = e.encode_descriptor(
            "stile_node_gate_scans",
            "Gate requests answered, by gate (the first 256 gates seen; the rest as other)",
            None,
            MetricType::Counter,
        )?;
        let (gates, other) = m.gate_scans();
        for (gate, n) in gates {
            let gate = gate.to_string();
            ConstCounter::new(n).encode(c.encode_family(&[("gate", gate.as_str())])?)?;
        }
        ConstCounter::new(other).encode(c.encode_family(&[("gate", "other")])?)?;

        one(
            &mut e,
            "stile_node_requests_in_flight",
            "Requests read and not yet answered",
            &ConstGauge::new(m.inflight() as i64),
        )?;
        one(
            &mut e,
            "stile_node_connections",
            "Open QUIC connections",
            &ConstGauge::new(shared.counters.connections.load(Ordering::Relaxed) as i64),
        )?;
        one(
            &mut e,
            "stile_node_revoked_certificates_refused",
            "Connections refused or closed because their certificate is revoked (a gate whose \
             certificate was revoked cannot check in or upload its journal)",
            &ConstCounter::new(shared.counters.revoked_refused.load(Ordering::Relaxed)),
        )?;
        let repl = &shared.replication;
        one(
            &mut e,
            "stile_node_leading",
            "1 while this node leads its shard (answers gates), 0 as a standby",
            &ConstGauge::new(i64::from(repl.leading())),
        )?;
        one(
            &mut e,
            "stile_node_sync_standby",
            "1 while a synchronous standby is named (answers wait for its acknowledgement)",
            &ConstGauge::new(i64::from(repl.sync_standby().is_some_and(|s| s.named))),
        )?;
        if let Some(wal) = shared.engine.wal() {
            one(
                &mut e,
                "stile_node_log_position",
                "Every log number below this is durable on this node",
                &ConstGauge::new(wal.local_seq() as i64),
            )?;
            if wal.acks_required() {
                one(
                    &mut e,
                    "stile_node_standby_lag_records",
                    "Log numbers durable here that the synchronous standby has not acknowledged",
                    &ConstGauge::new(wal.local_seq().saturating_sub(wal.acked_seq()) as i64),
                )?;
            }
        }
        one(
            &mut e,
            "stile_node_subscriptions",
            "Event subscriptions running (each reads the log as it grows)",
            &ConstGauge::new(shared.counters.subscriptions.load(Ordering::Relaxed) as i64),
        )?;
        if let Some(drops) = shared.udp_inode.and_then(udp::receive_drops) {
            one(
                &mut e,
                "stile_node_udp_receive_drops",
                "Datagrams the kernel dropped because the node's UDP receive buffer was full; \
                 each is a request or acknowledgement QUIC must resend, late",
                &ConstCounter::new(drops),
            )?;
        }
        let mut g = e.encode_descriptor(
            "stile_node_udp_buffer_bytes",
            "Kernel buffer of the node's UDP socket, by direction (as SO_RCVBUF and SO_SNDBUF report)",
            None,
            MetricType::Gauge,
        )?;
        let b = shared.udp_buffers;
        for (direction, bytes) in [("receive", b.recv), ("send", b.send)] {
            ConstGauge::new(bytes as i64).encode(g.encode_family(&[("direction", direction)])?)?;
        }
        one(
            &mut e,
            "stile_node_tickets",
            "Tickets held: minted, less those purged",
            &ConstGauge::new(shared.engine.minted_tickets() as i64),
        )?;
        one(
            &mut e,
            "stile_node_index_bytes",
            "Bytes of memory the ticket index holds (a purge hands its tickets' back)",
            &ConstGauge::new(shared.engine.index_memory_bytes() as i64),
        )?;
        let mut c = e.encode_descriptor(
            "stile_node_conflicts",
            "Offline admits that gates uploaded and the node found already used (double_entry), \
             revoked (after_revoke) or transferred (after_transfer), by provider and kind",
            None,
            MetricType::Counter,
        )?;
        for ((provider, kind), n) in shared.engine.conflict_counts() {
            let provider = provider.to_string();
            let labels = [("provider", provider.as_str()), ("kind", kind.name())];
            ConstCounter::new(n).encode(c.encode_family(&labels)?)?;
        }
        let (steps_back, held_s) = shared.engine.clock_steps_back();
        one(
            &mut e,
            "stile_node_clock_steps_back",
            "Times the system clock stepped back while the node ran; the engine's time stood \
             still each time until the clock caught up",
            &ConstCounter::new(steps_back),
        )?;
        one(
            &mut e,
            "stile_node_clock_behind_seconds",
            "How far the system clock is behind the engine's time now (0: not held)",
            &ConstGauge::new(held_s as i64),
        )?;
        one(
            &mut e,
            "stile_node_uptime_seconds",
            "Seconds since the node started serving",
            &ConstGauge::new(shared.started.elapsed().as_secs_f64()),
        )?;

        let wal = shared.engine.wal();
        let mode = wal.map_or("no_log", |w| w.mode().name());
        let mut g = e.encode_descriptor(
            "stile_node_sync_mode",
            "1 for the node's sync mode (always: answer after fdatasync; batch; none; no_log)",
            None,
            MetricType::Gauge,
        )?;
        for name in ["always", "batch", "none", "no_log"] {
            ConstGauge::new(i64::from(name == mode)).encode(g.encode_family(&[("mode", name)])?)?;
        }
        let Some(wal) = wal else {
            return Ok(());
        };
        one(
            &mut e,
            "stile_node_disk_full",
            "1 while the node refuses changes (disk_full) because its log's disk is full: its \
             prepared log segments are used up and no new one can be made; 0 again once one is",
            &ConstGauge::new(i64::from(wal.disk_full())),
        )?;
        one(
            &mut e,
            "stile_node_wal_runway_bytes",
            "Bytes of records the log's prepared segments can still take before the log needs \
             new disk space",
            &ConstGauge::new(wal.runway_bytes().min(i64::MAX as u64) as i64),
        )?;
        let stats = wal.stats();
        one(
            &mut e,
            "stile_node_wal_records",
            "Log records written",
            &ConstCounter::new(stats.records),
        )?;
        one(
            &mut e,
            "stile_node_wal_durable_position",
            "Log position below which every record is durable",
            &ConstGauge::new(wal.durable_seq() as i64),
        )?;
        let h = e.encode_descriptor(
            "stile_node_wal_fsync_duration_seconds",
            "fdatasync latency of the log",
            None,
            MetricType::Histogram,
        )?;
        encode_histogram(&AtomicHistogram::coarse_of([wal.sync_latency_us()], 1e6), h)?;
        let h = e.encode_descriptor(
            "stile_node_standby_ack_duration_seconds",
            "From a batch's sending to its standby's acknowledgement (synced there): the \
             synchronous standby's lag",
            None,
            MetricType::Histogram,
        )?;
        encode_histogram(
            &AtomicHistogram::coarse_of([&shared.replication.ack_us], 1e6),
            h,
        )?;
        let h = e.encode_descriptor(
            "stile_node_wal_sync_batch_records",
            "Log records each fdatasync made durable (the group-commit batch)",
            None,
            MetricType::Histogram,
        )?;
        encode_histogram(
            &AtomicHistogram::coarse_of([wal.sync_batch_records()], 1.0),
            h,
        )
    }
}

/// The Prometheus text of every node metric.
pub(super) fn encode_text(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// A registry holding the node's collector.
pub(super) fn registry(shared: Arc<Shared>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(NodeCollector { shared }));
    r
}

/// Binds the metrics address (before any task starts, so a bad address fails the start).
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Serves `GET /metrics` (plain HTTP/1.1) until shutdown.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let room = Arc::new(Semaphore::new(SCRAPES_MAX));
    loop {
        let permit = tokio::select! {
            p = room.clone().acquire_owned() => p.expect("never closed"),
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = registry.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &registry)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(SCRAPE_HEAD_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                r = tokio::time::timeout(SCRAPE_CONN_MAX_AGE, conn) => {
                    if let Ok(Err(e)) = r {
                        tracing::debug!(%peer, error = %e, "metrics connection ended");
                    }
                }
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

type Body = http_body_util::Full<Bytes>;

fn answer(
    req: &hyper::Request<hyper::body::Incoming>,
    registry: &Registry,
) -> hyper::Response<Body> {
    use hyper::{header, Method, StatusCode};
    let reply = |status: StatusCode, kind: &'static str, body: String| {
        let mut r = hyper::Response::new(Body::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    reply(StatusCode::OK, CONTENT_TYPE, encode_text(registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_labels_stop_at_the_bound_and_the_rest_share_other() {
        let m = NodeMetrics::new();
        for gate in 1..=(GATE_LABELS_MAX as u16 + 50) {
            let slot = m.gate_slot(gate);
            m.count_gate(slot, 1);
            assert_eq!(m.gate_slot(gate), slot, "a gate keeps its slot");
        }
        let (labelled, other) = m.gate_scans();
        assert_eq!(labelled.len(), GATE_LABELS_MAX);
        assert!(labelled.iter().all(|&(_, n)| n == 1));
        assert_eq!(labelled[0].0, 1);
        assert_eq!(other, 50);
    }

    #[test]
    fn answered_requests_leave_flight_and_count_by_op_across_threads() {
        let m = std::sync::Arc::new(NodeMetrics::new());
        let mut ops = [0; OPS];
        ops[op_index(op::CHECKIN)] = 5;
        ops[op_index(op::STATUS)] = 1;
        m.accepted(6);
        assert_eq!(m.inflight(), 6);
        // Answered on another thread (another shard), as a stream's writer would.
        let t = Instant::now();
        let m2 = m.clone();
        std::thread::spawn(move || m2.answered(&ops, t, t + Duration::from_micros(300)))
            .join()
            .unwrap();
        assert_eq!(m.inflight(), 0);
        let h = AtomicHistogram::snapshot_of(m.latency_of(op::CHECKIN));
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum, 1500);
        let status = AtomicHistogram::snapshot_of(m.latency_of(op::STATUS));
        assert_eq!(status.count(), 1);
        m.accepted(2);
        m.dropped(2);
        assert_eq!(m.inflight(), 0);
    }
}
