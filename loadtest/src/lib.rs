//! stile's load tester: mints tickets before the clock starts, then drives a target with G
//! gates, each keeping up to N check-ins in flight, and reports throughput, latency
//! percentiles (HDR histograms, warm-up excluded) and every outcome.
//!
//! Targets: `inproc` (the engine in this process, with its own data dir and sync mode),
//! `quic://HOST:PORT` (a node, with gate certificates issued from `DATA/tls`),
//! `quic://A+B` (a shard's nodes, a primary and its standby in any order: see `nodes.rs`) and
//! `redis://HOST:PORT` (the baseline: Redis and a Lua check-in; `redis+tls://HOST:PORT` the
//! same over TLS 1.3 with the gates' certificates from `DATA/tls`).
//!
//! Against a shard every gate's link goes to the node believed to lead; a link answered
//! `not_leader`, or lost, fails over: the gate connects to the leader the answer names (else
//! the next node) and resends what is unanswered with the same scan ids, as it does when
//! faults strike a spawned node. The admin (mints, the node's own readings, its sync mode)
//! follows the leader too. The report names the target as written.
//!
//! Scenarios: `stadium` (each ticket once, spread over the gates), `rail` (single journeys
//! and day passes, entry and exit at different gates), `replay` (every code at several gates
//! at once: exactly one may be admitted), `forged` (bit-flipped and random codes: none may
//! be admitted), `mixed` (first scans with replays and forgeries among them) and `outage`
//! (gates of the `stile-gate` library in this process, their node cut off mid-run: see
//! [`outage`]).
//!
//! Closed loop (the default) keeps N requests in flight per gate; open loop (`rate`) sends
//! at a fixed rate and measures each request from the moment it was due, so a stall of the
//! target shows in the latency instead of slowing the sender (coordinated omission).
//!
//! Unless told how many, a run mints as many tickets as it will present (see [`size`]),
//! into a partition of their own ([`LOADTEST_PARTITION`] by default), and says how many it
//! left in a node and the `stile purge` that removes them.

mod echo;
mod faults;
pub mod history;
pub mod html;
mod leftovers;
mod link;
mod nodes;
pub mod outage;
pub mod output;
pub mod plan;
mod redis_target;
pub mod report;
pub mod spawn;
mod target;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stile_engine::SyncMode;
pub use stile_protocol::limits::LOADTEST_PARTITION;
use stile_protocol::OutcomeKind;
use tokio::sync::{mpsc, Notify, Semaphore};

pub use leftovers::clean_up_and_exit;
pub use nodes::TARGET_NODES_MAX;
use plan::{Item, Plan};
pub use redis_target::is_redis_target;
pub use report::{Report, RunReport};
pub use target::Target;
use target::{Answer, Rx, Tx, REQUEST_TIMEOUT};

/// Gates at most.
pub const GATES_MAX: u16 = 4096;
/// Check-ins in flight per gate at most.
pub const INFLIGHT_MAX: u32 = 4096;
/// Tickets minted for one run at most.
pub const TICKETS_MAX: u32 = 20_000_000;
/// Gates that present each code at once in `replay`.
pub const REPLAY_FANOUT: usize = 4;
// `Scenario::Replay`'s help says four.
const _: () = assert!(REPLAY_FANOUT == 4);
/// Highest open-loop rate, per second.
pub const RATE_MAX: f64 = 10_000_000.0;
/// Most requests one gate writes at once.
const SEND_BATCH_MAX: usize = 256;
/// A run that ends this much before its time is up ran out of tickets.
const RAN_OUT_SLACK: Duration = Duration::from_millis(20);
/// The open-loop pacer's shortest sleep: at high rates it wakes this often and deals out
/// everything due, instead of once per request.
const PACER_TICK: Duration = Duration::from_micros(50);
/// Its longest sleep, so that it notices the end and gates that went away.
const PACER_SLEEP_MAX: Duration = Duration::from_millis(10);
/// A run sized to its rate mints this much more than the rate presents, and
/// [`SIZED_TICKETS_MIN`] more still: gates that fall behind send late, not less.
const RATE_HEADROOM: f64 = 1.1;
/// A closed-loop run sized by a probe mints for this much more than the probe's rate: the
/// run itself, longer and warmed up, may go faster (twice as fast was seen on a shared
/// machine), and a run that runs out ends early.
const PROBE_HEADROOM: f64 = 2.0;
/// The probe of a closed-loop run: measured this long, as fast as answers come, after
/// [`PROBE_WARMUP`].
pub const PROBE_DURATION: Duration = Duration::from_secs(1);
/// The probe's warm-up.
pub const PROBE_WARMUP: Duration = Duration::from_millis(500);
/// Tickets the probe mints (it ends sooner if the target is faster than that).
pub const PROBE_TICKETS: u32 = 200_000;
/// Fewest tickets a sized run mints.
pub const SIZED_TICKETS_MIN: u32 = 1_000;
/// Tickets minted between two progress reports (and per call to the target).
const MINT_STEP: u32 = 65_536;

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The options make no sense.
    #[error("{0}")]
    Usage(String),
    /// Stopped (Ctrl-C, SIGTERM or SIGHUP) before the clock started: nothing was measured.
    #[error("interrupted before the clock started; nothing was measured")]
    Interrupted,
    /// The target could not be set up or reached.
    #[error("target {target}: {reason}")]
    Target {
        /// The target as given.
        target: String,
        /// What failed.
        reason: String,
    },
}

/// What traffic a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Each ticket presented once, spread over the gates.
    Stadium,
    /// Every code presented at four gates at once.
    Replay,
    /// Forged codes only: bit-flipped genuine ones and random ones.
    Forged,
    /// Rail: single journeys and day passes, entering and leaving at different gates.
    Rail,
    /// First scans, with replays of earlier tickets and forged copies among them.
    Mixed,
    /// Gates of the stile-gate library in this process (300 ms online timeout), the spawned
    /// node killed mid-run for --outage and started again; tickets presented at two gates
    /// during the outage; conflicts and uploads checked after (needs --spawn-node).
    Outage,
}

impl Scenario {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Stadium => "stadium",
            Scenario::Replay => "replay",
            Scenario::Forged => "forged",
            Scenario::Rail => "rail",
            Scenario::Mixed => "mixed",
            Scenario::Outage => "outage",
        }
    }
}

/// How the open-loop rate runs over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// The requested rate throughout.
    Flat,
    /// Gates opening before a match: from a tenth of the rate up to the full rate over the
    /// first 40 % of the run (warm-up included), the full rate for the next 20 %, then back
    /// down to a tenth.
    Peak,
}

impl Shape {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Flat => "flat",
            Shape::Peak => "peak",
        }
    }

    /// The peak curve's share of the full rate at `x` (0 to 1) of the run.
    pub fn peak_share(x: f64) -> f64 {
        let x = x.clamp(0.0, 1.0);
        let ramp = |d: f64| 0.1 + 0.9 * (d / 0.4).min(1.0);
        if x < 0.4 {
            ramp(x)
        } else if x <= 0.6 {
            1.0
        } else {
            ramp(1.0 - x)
        }
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// What traffic.
    pub scenario: Scenario,
    /// Where to: `inproc`, `quic://HOST:PORT`, a shard's nodes `quic://A+B`,
    /// `redis://HOST:PORT` or `redis+tls://HOST:PORT`.
    pub target: String,
    /// Connections (gates), each its own gate id 1..=G of provider 1.
    pub gates: u16,
    /// Check-ins in flight per gate.
    pub inflight: u32,
    /// Measured time (after warm-up); the run ends sooner if the tickets run out.
    pub duration: Duration,
    /// Time at the start whose answers are not counted.
    pub warmup: Duration,
    /// Open loop: requests per second in all, sent on schedule. `None`: closed loop.
    pub rate: Option<f64>,
    /// Open loop: flat at `rate`, or a peak up to `rate`.
    pub shape: Shape,
    /// Tickets minted before the clock starts; `None`: as many as the run will present,
    /// with headroom, from its rate or from a short probe ([`size`]).
    pub tickets: Option<u32>,
    /// The partition tickets are minted into, on a node or the engine in process:
    /// [`LOADTEST_PARTITION`] unless told otherwise, which holds nothing of an operator's
    /// and which `stile purge --partition 65535` empties.
    pub partition: u16,
    /// How this process's `stile` was started (its path as given), for the `stile purge`
    /// command the summary prints.
    pub program: String,
    /// Seed of every random choice.
    pub seed: u64,
    /// Data dir: the certificates in `DATA/tls` (quic, redis+tls), or the engine's data
    /// (inproc).
    pub data: PathBuf,
    /// The admin certificate and key a `quic://` target mints with, a `redis+tls://` one
    /// connects with (`None`: `DATA/tls/admin-admin.crt` and its key).
    pub admin: Option<(PathBuf, PathBuf)>,
    /// Sync mode of the inproc engine.
    pub sync: SyncMode,
    /// Log segments the inproc engine keeps prepared from the start, as a node does
    /// (`stile node --log-runway`); 0: one at a time, once the log holds a megabyte.
    pub log_runway: u32,
    /// Start a redis-server for a `redis://` target (AOF, `appendfsync always`; for
    /// `redis+tls://` on its TLS port, with the node's certificate) and stop it afterwards.
    pub spawn_redis: bool,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// Where every attempt is recorded (`--history`), shared by the command's runs.
    pub history: Option<Arc<history::HistoryLog>>,
    /// The node the command started (`--spawn-node`): the target, and what faults strike.
    pub node: Option<Arc<spawn::NodeProcess>>,
    /// Faults struck at `node` during the run; with any (or against a shard), gates
    /// reconnect and resend.
    pub faults: Faults,
    /// The `outage` scenario's cut and planted duplicates (other scenarios ignore it).
    pub outage: outage::Outage,
    /// Asked to stop early: the run ends as if its time were up and reports what it
    /// measured.
    pub stop: Stop,
}

/// Faults a run strikes at the node it spawned, from the moment its tickets are minted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// SIGKILL the node each time it has run this long, and start it again on its data.
    pub kill_every: Option<Duration>,
    /// SIGSTOP the node each time it has run this long …
    pub pause_every: Option<Duration>,
    /// … and SIGCONT it after this long.
    pub pause_for: Duration,
}

impl Faults {
    /// Whether any fault is asked for.
    pub fn any(&self) -> bool {
        self.kill_every.is_some() || self.pause_every.is_some()
    }

    /// Checks the faults fit a run of gates with `inflight` scans in flight each.
    pub fn validate(&self, inflight: u32) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Usage(m));
        if !self.any() {
            return Ok(());
        }
        resends_fit(inflight, "with faults")?;
        let zero = |d: Option<Duration>| d.is_some_and(|d| d.is_zero());
        if zero(self.kill_every) || zero(self.pause_every) {
            return bad("--kill-every and --pause-every must be above 0".into());
        }
        if self.pause_every.is_some() && self.pause_for.is_zero() {
            return bad("--pause-for must be above 0".into());
        }
        let day = Duration::from_secs(24 * 3600);
        let long = |d: Option<Duration>| d.is_some_and(|d| d > day);
        if long(self.kill_every) || long(self.pause_every) || self.pause_for > day {
            return bad("--kill-every, --pause-every and --pause-for are at most 24h".into());
        }
        Ok(())
    }
}

/// Checks that gates which resend what is unanswered (`why`: faults, a shard target) keep
/// few enough in flight: a resend finds its first answer in the node's memory of the gate's
/// last scans only while the gate has no more than that many in flight.
fn resends_fit(inflight: u32, why: &str) -> Result<(), LoadError> {
    let remembered = stile_engine::scans::SCANS_PER_GATE as u32;
    if inflight > remembered {
        return Err(LoadError::Usage(format!(
            "--inflight {inflight} {why}: gates resend what is unanswered when their link \
             fails, and a node remembers a gate's last {remembered} scans, so resends of more \
             in flight could be decided afresh; use at most {remembered}"
        )));
    }
    Ok(())
}

/// How long after a run's time is up its gates go on reconnecting to resend what is
/// unanswered (faults, or a shard target, only).
const RELINK_GRACE: Duration = Duration::from_secs(30);
/// Longest wait for one connection attempt of a gate that lost its own.
const RELINK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between a gate's connection attempts.
const RELINK_PAUSE: Duration = Duration::from_millis(50);
// Each attempt at a shard gets past one node that does not answer (see `nodes`).
const _: () = assert!(nodes::NODE_CONNECT_TIMEOUT.as_millis() < RELINK_TIMEOUT.as_millis());

/// A request to end runs early (Ctrl-C), shared by the runs and whoever asks.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    requested: AtomicBool,
    notify: Notify,
}

impl Stop {
    /// Asks every run sharing this to stop.
    pub fn request(&self) {
        self.0.requested.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    /// Whether a stop was asked for.
    pub fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::Acquire)
    }

    /// Returns once a stop is asked for.
    pub async fn requested(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_requested() {
                return;
            }
            notified.await;
        }
    }

    /// `work`, unless a stop is asked for first.
    async fn or_stop<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T, LoadError> {
        tokio::select! {
            v = work => Ok(v),
            () = self.requested() => Err(LoadError::Interrupted),
        }
    }
}

impl Config {
    /// Checks the bounds, and that the node faults and the `outage` scenario strike is there.
    pub fn validate(&self) -> Result<(), LoadError> {
        self.validate_options()?;
        if self.faults.any() && self.node.is_none() {
            return Err(LoadError::Usage(
                "--kill-every and --pause-every strike the node the run starts: give \
                 --spawn-node"
                    .into(),
            ));
        }
        if self.scenario == Scenario::Outage && self.node.is_none() {
            return Err(LoadError::Usage(
                "the outage scenario cuts off the node the run starts (it kills it and starts \
                 it again): give --spawn-node"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Checks the bounds of the options alone, before a node is started.
    pub fn validate_options(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Usage(m));
        if self.gates == 0 || self.gates > GATES_MAX {
            return bad(format!("--gates must be 1 to {GATES_MAX}"));
        }
        if self.inflight == 0 || self.inflight > INFLIGHT_MAX {
            return bad(format!("--inflight must be 1 to {INFLIGHT_MAX}"));
        }
        if self.tickets.is_some_and(|n| n == 0 || n > TICKETS_MAX) {
            return bad(format!("--tickets must be 1 to {TICKETS_MAX}"));
        }
        if self.duration.is_zero() {
            return bad("--duration must be above 0".into());
        }
        if let Some(nodes) = nodes::parse(&self.target) {
            let nodes = nodes.map_err(LoadError::Usage)?;
            if nodes.len() > 1 {
                resends_fit(
                    self.inflight,
                    "against a shard (a quic:// target of several nodes)",
                )?;
            }
        }
        if self.partition == 0 && self.target.split(',').any(|t| t.starts_with("quic://")) {
            // Partition 0 is where bookings and `stile mint` put an operator's tickets: the
            // run's would mix with them, and the only way to remove them would drop those too.
            return bad(format!(
                "--partition 0 holds the node's real tickets (bookings, `stile mint`); a load \
                 test mints into a partition of its own: leave --partition at \
                 {LOADTEST_PARTITION}"
            ));
        }
        if let Some(r) = self.rate {
            if !(1.0..=RATE_MAX).contains(&r) {
                return bad(format!("--rate must be 1 to {RATE_MAX} per second"));
            }
        }
        if self.scenario == Scenario::Outage {
            outage::validate(self)?;
        }
        self.faults.validate(self.inflight)
    }
}

/// What a gate's sender and receiver share: the link's sending half and the requests in
/// flight.
struct GateShared {
    /// The gate's id.
    id: u16,
    /// The sending half. The sender holds it from taking ids until the batch is written,
    /// and a receiver reconnecting holds it while it swaps the link and resends: so every
    /// request in flight was written on the link the receiver reads, exactly once.
    tx: tokio::sync::Mutex<Tx>,
    /// In-flight requests by id.
    book: Mutex<Book>,
    /// Room for more requests in flight.
    room: Semaphore,
    /// The sender has sent all it will.
    sent_all: AtomicBool,
    /// Wakes the receiver when the sender is done.
    sent: Notify,
}

/// Requests in flight: a slot per id.
struct Book {
    /// Ids free for new requests.
    free: Vec<u32>,
    /// What each id in flight was sent for (`None`: free).
    slots: Vec<Option<Slot>>,
}

impl Book {
    /// Ids in flight and what for, sent (again) now.
    fn resend_all(&mut self, now: Instant) -> Vec<(u32, Item)> {
        let mut all = Vec::new();
        for (id, slot) in self.slots.iter_mut().enumerate() {
            if let Some(slot) = slot {
                slot.sent = now;
                all.push((id as u32, slot.item));
            }
        }
        all
    }
}

#[derive(Clone, Copy)]
struct Slot {
    /// When the request was due (open loop) or first sent (closed loop): its latency counts
    /// from here, resends included.
    due: Instant,
    /// When this attempt was written.
    sent: Instant,
    /// What was presented (its ticket, or [`NOT_GENUINE`]).
    item: Item,
}

/// What the whole run shares.
struct RunShared {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// Admits per ticket.
    admits: Vec<AtomicU32>,
    /// Admits allowed per ticket.
    allowed: Vec<u8>,
    /// Rail: scans of each ticket answered so far (empty in other scenarios), which
    /// [`Item::after`] waits for.
    steps: Vec<AtomicU8>,
    /// Rail: told whenever a gate's answers moved `steps`.
    stepped: Notify,
    /// Answers so far (for the progress bar).
    answered: AtomicU64,
    /// The gates' latencies: over the run, in the measured time, and second by second.
    latencies: LatencyBook,
    /// Ends the run early.
    stop: Stop,
    /// Every attempt, recorded (`--history`).
    history: Option<Arc<history::HistoryLog>>,
    /// Whether the target's answers name gates and entry counts (not Redis's).
    details: bool,
    /// Gates reconnect and resend when their link fails (the run strikes faults, or its
    /// target is a shard whose leader may change): the target to reconnect to.
    relink: Option<Arc<Target>>,
}

impl RunShared {
    /// Whether `item` may be sent: every earlier scan of its ticket is answered.
    fn turn_of(&self, item: &Item) -> bool {
        item.after == 0
            || self
                .steps
                .get(item.ticket as usize)
                .is_none_or(|s| s.load(Ordering::Acquire) >= item.after)
    }

    /// Waits until `item` may be sent, the run ends or it is stopped.
    async fn wait_for_turn(&self, item: &Item) {
        loop {
            let stepped = self.stepped.notified();
            tokio::pin!(stepped);
            stepped.as_mut().enable();
            if self.turn_of(item) || Instant::now() >= self.end || self.stop.is_requested() {
                return;
            }
            tokio::select! {
                () = stepped => {}
                () = self.stop.requested() => return,
                () = tokio::time::sleep_until(self.end.into()) => return,
            }
        }
    }
}

/// What one gate's receiver counted.
struct GateCounts {
    outcomes: [u64; 16],
    outcomes_all: [u64; 16],
    errors: u64,
    timeouts: u64,
    forged_admits: u64,
    /// The gate's link failed, or went silent with requests in flight; it stopped there.
    lost: bool,
    quic: Option<report::QuicView>,
    /// Times the gate connected again.
    reconnects: u64,
    /// Scans never answered in the end.
    indeterminate: u64,
    /// What the gate's earlier QUIC links carried, before it connected again.
    quic_before: Option<report::QuicView>,
}

/// How many tickets a run mints, and how that was decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    /// Tickets to mint for the measured run.
    pub tickets: u32,
    /// `given` (`--tickets`), `rate` (the open-loop rate over the run's time) or `probe`
    /// (the rate of a short closed-loop probe).
    pub by: &'static str,
    /// The probe's answers per second.
    pub probe_rate_per_s: Option<f64>,
    /// Tickets the probe minted (left in a node as the run's are).
    pub probe_tickets: u32,
    /// More were needed than [`TICKETS_MAX`]: the run may end early.
    pub capped: bool,
}

impl Sizing {
    /// `n` tickets, as given.
    pub fn given(n: u32) -> Sizing {
        Sizing {
            tickets: n,
            by: "given",
            probe_rate_per_s: None,
            probe_tickets: 0,
            capped: false,
        }
    }

    /// Enough tickets for `scans_per_s` over the run's warm-up and measured time, with
    /// `headroom`, at `per_ticket` presentations of each.
    fn for_rate(config: &Config, scans_per_s: f64, headroom: f64, by: &'static str) -> Sizing {
        let seconds = (config.warmup + config.duration).as_secs_f64();
        let per_ticket = plan::scans_per_ticket(config.scenario, config.gates);
        let needed = (scans_per_s * seconds * headroom / per_ticket).ceil();
        let needed = needed + f64::from(SIZED_TICKETS_MIN);
        Sizing {
            tickets: needed.min(f64::from(TICKETS_MAX)) as u32,
            by,
            probe_rate_per_s: None,
            probe_tickets: 0,
            capped: needed > f64::from(TICKETS_MAX),
        }
    }
}

/// How many tickets `config`'s run needs: `--tickets` if given; for an open loop, its rate
/// over the warm-up and the measured time (10 % more, and [`SIZED_TICKETS_MIN`] more); for a
/// closed loop, the answers per second of a [`PROBE_DURATION`] probe against the same target
/// (twice as many). At most [`TICKETS_MAX`].
pub async fn size(config: &Config) -> Result<Sizing, LoadError> {
    config.validate()?;
    if let Some(n) = config.tickets {
        return Ok(Sizing::given(n));
    }
    if config.scenario == Scenario::Outage {
        // Its gates keep a pace (a default one without --rate): no probe. The planted
        // duplicates come on top.
        let s = Sizing::for_rate(config, outage::rate_of(config), RATE_HEADROOM, "rate");
        let tickets = (u64::from(s.tickets) + u64::from(outage::duplicates_of(config)))
            .min(u64::from(TICKETS_MAX)) as u32;
        return Ok(Sizing { tickets, ..s });
    }
    if let Some(rate) = config.rate {
        return Ok(Sizing::for_rate(config, rate, RATE_HEADROOM, "rate"));
    }
    if config.progress {
        eprintln!(
            "stile loadtest: {}: sizing the run: a {:.0} s probe as fast as answers come",
            config.target,
            PROBE_DURATION.as_secs_f64()
        );
    }
    let probe = Config {
        tickets: Some(PROBE_TICKETS),
        duration: PROBE_DURATION,
        warmup: PROBE_WARMUP,
        progress: false,
        // A probe measures the target as it is, with nothing struck; its scans are
        // recorded in the history like any others.
        faults: Faults::default(),
        ..config.clone()
    };
    let report = run_sized(&probe, Sizing::given(PROBE_TICKETS)).await?;
    if report.errors + report.timeouts > 0 || report.gates_lost > 0 || report.requests == 0 {
        return Err(LoadError::Target {
            target: config.target.clone(),
            reason: format!(
                "the probe that sizes the run got {} answers, {} errors and {} timeouts; give \
                 --tickets to run without it",
                report.requests, report.errors, report.timeouts
            ),
        });
    }
    let rate = report.throughput_per_s;
    Ok(Sizing {
        probe_rate_per_s: Some(rate),
        probe_tickets: PROBE_TICKETS,
        ..Sizing::for_rate(config, rate, PROBE_HEADROOM, "probe")
    })
}

/// Runs one scenario against one target, its tickets sized first unless given ([`size`]).
pub async fn run(config: &Config) -> Result<RunReport, LoadError> {
    config.validate()?;
    let sizing = size(config).await?;
    run_sized(config, sizing).await
}

/// Runs one scenario against one target with `sizing.tickets` tickets.
pub async fn run_sized(config: &Config, sizing: Sizing) -> Result<RunReport, LoadError> {
    config.validate()?;
    if config.scenario == Scenario::Outage {
        return outage::run(config, sizing).await;
    }
    let Prepared {
        target,
        genuine,
        gates,
        allowed,
        sync,
        links,
        memory_per_gate,
    } = prepare(config, sizing.tickets).await?;
    if config.progress {
        // For logs and scripts: the clock starts now (a stop from here on is reported).
        eprintln!(
            "stile loadtest: {}: {} tickets ready; measuring for {:.1} s after a {:.1} s warm-up",
            config.target,
            genuine.len(),
            config.duration.as_secs_f64(),
            config.warmup.as_secs_f64()
        );
    }
    let progress = config.progress.then(|| progress_bar(config));
    // The target's own view of the measured time: a reading when the warm-up ends and
    // another at the end.
    let target = Arc::new(target);
    let first_reading = {
        let (target, warmup) = (target.clone(), config.warmup);
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            (target.reading().await, target.server_cpu_us().await)
        })
    };
    let cpu_start = cpu_time();
    let ticks_start = report::CpuTicks::read();
    let start = Instant::now();
    // The target's own view second by second, beside the client's timeline.
    let sampler = start_sampler(target.clone(), start, config);
    let shared = Arc::new(RunShared::new(
        config,
        start,
        genuine.len(),
        allowed,
        &target,
    ));
    // Faults from now on, the tickets minted.
    let striker = config
        .node
        .clone()
        .filter(|_| config.faults.any())
        .map(|node| faults::start(node, config.faults, shared.end, config.stop.clone()));
    // Open loop: one thread keeps the schedule and hands each gate its due times.
    let (pacer, dues) = start_pacer(config, &shared, gates.len())?;
    let (senders, receivers) = spawn_gates(config, gates, links, &shared, dues);
    let ticker = progress
        .clone()
        .map(|bar| start_ticker(bar, shared.clone()));
    let mut totals = Totals::default();
    for r in receivers {
        if let Ok(c) = r.await {
            totals.add(&c);
        }
    }
    let timeline = shared.latencies.finish(&mut totals);
    let struck = match striker {
        Some(s) => s.finish().await,
        None => faults::Struck::default(),
    };
    if let Some(e) = &struck.failed {
        return Err(LoadError::Target {
            target: config.target.clone(),
            reason: e.clone(),
        });
    }
    let Totals {
        mut hist,
        hist_all,
        mut counts,
        counts_all,
        errors,
        timeouts,
        forged_admits,
        gates_lost,
        quic,
        reconnects,
        indeterminate,
    } = totals;
    let elapsed = start.elapsed();
    let cut_short = config.stop.is_requested() && elapsed < config.warmup + config.duration;
    // Senders stop at the end of the time, so a run that ended sooner, neither stopped nor
    // left by its gates' links, ran out of tickets.
    let ran_out =
        !cut_short && gates_lost == 0 && elapsed + RAN_OUT_SLACK < config.warmup + config.duration;
    wind_down(senders, ticker, progress, pacer).await;
    // Tickets that ran out during the warm-up leave nothing measured: report the whole run.
    let warmed = !hist.is_empty();
    if !warmed && !cut_short {
        tracing::warn!(
            "the tickets ran out during the warm-up; figures include it (raise --tickets)"
        );
        hist = hist_all;
        counts = counts_all;
    }
    let measured = if warmed {
        elapsed.saturating_sub(config.warmup)
    } else {
        elapsed
    };
    let measured = measured.max(Duration::from_millis(1));
    let cpu = cpu_time().saturating_sub(cpu_start);
    let machine_load = ticks_start
        .zip(report::CpuTicks::read())
        .and_then(|(a, b)| report::MachineLoad::between(&a, &b));
    let outcomes = outcome_names(&counts);
    let requests: u64 = outcomes.values().sum();
    // The echo admits everything and decides nothing: there is nothing to count.
    let double_admits = match target.is_echo() {
        true => 0,
        false => shared.double_admits(),
    };
    let forged_admits = match target.is_echo() {
        true => 0,
        false => forged_admits,
    };
    let (first, cpu_first) = if warmed {
        first_reading.await.unwrap_or((None, None))
    } else {
        first_reading.abort();
        let _ = first_reading.await;
        (None, None)
    };
    // A node killed meanwhile started its counts again, and a shard's gates that moved may
    // have followed a new leader, whose counts are its own: no difference means anything.
    let same_node = struck.kills == 0 && !(target.is_shard() && reconnects > 0);
    let node = match (first, target.reading().await) {
        (Some(before), Some(after)) if same_node => {
            Some(report::NodeView::between(&before, &after))
        }
        _ => None,
    };
    // The target's CPU over the measured time, per request answered in it.
    let server_cpu_us_per_request = match (cpu_first, target.server_cpu_us().await) {
        (Some(a), Some(b)) if same_node && requests > 0 && b >= a => {
            Some((b - a) as f64 / requests as f64)
        }
        _ => None,
    };
    let sent_all: u64 = counts_all.iter().sum();
    let datagrams_per_request = quic
        .as_ref()
        .filter(|_| sent_all > 0)
        .map(|q| (q.datagrams_sent + q.datagrams_received) as f64 / sent_all as f64);
    let node_timeline = sampler.finish().await;
    let left_in_node = left_in_node(config, &sizing, genuine.len() as u64);
    Ok(RunReport {
        target: config.target.clone(),
        round: 1,
        slot: 0,
        sync,
        mode: if config.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        shape: config.rate.map(|_| config.shape.name().to_string()),
        gates: config.gates,
        inflight: config.inflight,
        requested_rate: config.rate,
        requests,
        throughput_per_s: requests as f64 / measured.as_secs_f64(),
        measured_s: measured.as_secs_f64(),
        warmup_excluded: warmed,
        tickets_ran_out: ran_out,
        latency_us: report::Latency::of(&hist),
        outcomes,
        errors,
        timeouts,
        double_admits,
        forged_admits,
        client_cpu_percent: 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
        server_cpu_us_per_request,
        datagrams_per_request,
        server_memory_per_gate_bytes: memory_per_gate,
        machine_load,
        percentiles: report::Percentiles::of(&hist),
        timeline: report::Second::series(&timeline, config.warmup, config.warmup + config.duration),
        node,
        quic,
        interrupted: cut_short,
        gates_lost,
        tickets: genuine.len() as u64,
        tickets_sized_by: sizing.by.to_string(),
        probe_rate_per_s: sizing.probe_rate_per_s,
        tickets_capped: sizing.capped,
        node_timeline,
        left_in_node,
        faults: struck.kills + struck.pauses,
        reconnects,
        indeterminate,
        outage: None,
    })
}

/// What a run against a node leaves in it: its tickets (and its probe's), in the run's
/// partition, and the command that removes them. `None` for the engine in process (its data
/// dir goes with the run) and for Redis (loading the next run's tickets empties it).
fn left_in_node(config: &Config, sizing: &Sizing, minted: u64) -> Option<report::LeftInNode> {
    Some(report::LeftInNode {
        partition: config.partition,
        tickets: minted + u64::from(sizing.probe_tickets),
        purge: purge_command(config)?,
    })
}

/// The `stile purge` that drops what runs of `config` minted in a node, as a shell reads it
/// (`None` for a target that is no node): the node, the data dir whose certificates the run
/// used, the admin certificate it named.
pub fn purge_command(config: &Config) -> Option<String> {
    // A shard's nodes as client commands take them: `A,B`.
    let node = config
        .target
        .strip_prefix("quic://")?
        .trim_end_matches('/')
        .replace('+', ",");
    if let Some(spawned) = &config.node {
        // The node stops with the command: its data dir is the tester's own.
        return Some(report::shell_words(&[
            "rm".into(),
            "-r".into(),
            spawned.data_dir().display().to_string(),
        ]));
    }
    let mut purge = vec![
        config.program.clone(),
        "purge".into(),
        "--partition".into(),
        config.partition.to_string(),
        "--node".into(),
        node,
        "--data".into(),
        config.data.display().to_string(),
    ];
    if let Some((cert, key)) = &config.admin {
        purge.extend([
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]);
    }
    if config.partition != LOADTEST_PARTITION {
        purge.push("--force".into());
    }
    Some(report::shell_words(&purge))
}

/// Longest wait at a run's end for the sampler's last reading.
const SAMPLER_LAST_READING: Duration = Duration::from_secs(3);

/// Reads the target's own view once a second from the start of a run, for its timeline.
struct Sampler {
    /// The readings so far: seconds from the start, and what the target said.
    readings: Arc<Mutex<Vec<(u64, link::NodeReading)>>>,
    /// The task that reads.
    task: tokio::task::JoinHandle<()>,
}

/// Starts reading `target` at `start` and each second after, until the run's time is up or
/// it is stopped.
fn start_sampler(target: Arc<Target>, start: Instant, config: &Config) -> Sampler {
    let readings = Arc::new(Mutex::new(Vec::new()));
    let seconds = (config.warmup + config.duration).as_secs_f64().ceil() as u64;
    let (stop, kept) = (config.stop.clone(), readings.clone());
    let task = tokio::spawn(async move {
        for k in 0..=seconds {
            let at = start + Duration::from_secs(k);
            tokio::select! {
                () = tokio::time::sleep_until(at.into()) => {}
                () = stop.requested() => return,
            }
            match target.reading().await {
                Some(r) => kept.lock().expect("not poisoned").push((k, r)),
                None => return,
            }
        }
    });
    Sampler { readings, task }
}

impl Sampler {
    /// Stops reading; the view of each second between two readings a second apart.
    async fn finish(mut self) -> Vec<report::NodeSecond> {
        // The last reading is due when the run's time is up, about when this is called: let
        // it come (a reading is one request), rather than racing it to an empty timeline.
        if tokio::time::timeout(SAMPLER_LAST_READING, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = self.task.await;
        }
        let readings = std::mem::take(&mut *self.readings.lock().expect("not poisoned"));
        readings
            .windows(2)
            .filter(|w| w[1].0 == w[0].0 + 1)
            .map(|w| report::NodeSecond::between(w[0].0, &w[0].1, &w[1].1))
            .collect()
    }
}

impl RunShared {
    /// A run's shared state, its clock started at `start`, for `tickets` tickets that each
    /// allow `allowed` admits.
    fn new(
        config: &Config,
        start: Instant,
        tickets: usize,
        allowed: Vec<u8>,
        target: &Arc<Target>,
    ) -> Self {
        RunShared {
            history: config.history.clone(),
            details: !matches!(**target, Target::Redis(_)),
            relink: (config.faults.any() || target.is_shard()).then(|| target.clone()),
            start,
            measure_from: start + config.warmup,
            end: start + config.warmup + config.duration,
            admits: (0..tickets).map(|_| AtomicU32::new(0)).collect(),
            allowed,
            steps: match config.scenario {
                Scenario::Rail => (0..tickets).map(|_| AtomicU8::new(0)).collect(),
                _ => Vec::new(),
            },
            stepped: Notify::new(),
            answered: AtomicU64::new(0),
            latencies: LatencyBook::default(),
            stop: config.stop.clone(),
        }
    }

    /// Records `n` answers of gate `gate`, due at `due` and answered at `now`.
    fn record_latency(&self, gate: u16, now: Instant, due: Instant, n: u64) {
        let took_us = (now.saturating_duration_since(due).as_micros() as u64).max(1);
        let second = due.saturating_duration_since(self.start).as_secs() as usize;
        self.latencies
            .record(gate, second, due >= self.measure_from, took_us, n);
    }
}

/// Shards of the gates' latency histograms. Gates share them rather than keep their own:
/// three 140 KB histograms a gate made a 4,096-gate run zero 1.7 GB as its gates started,
/// which held the tester's CPUs past the links' idle timeout and lost every gate.
const LATENCY_SHARDS: usize = 16;

/// The gates' latencies, gate `g` in shard `g % LATENCY_SHARDS`, and the run's timeline.
struct LatencyBook {
    shards: Box<[Mutex<Latencies>]>,
    /// Per second of the run: answers and their latency.
    timeline: Mutex<Vec<hdrhistogram::Histogram<u64>>>,
}

/// Latencies of the gates of one shard.
struct Latencies {
    /// In the measured time.
    hist: hdrhistogram::Histogram<u64>,
    /// Over the whole run, warm-up included.
    hist_all: hdrhistogram::Histogram<u64>,
    /// The seconds still being answered, by second of the run.
    seconds: Vec<(usize, hdrhistogram::Histogram<u64>)>,
}

impl Default for LatencyBook {
    fn default() -> Self {
        LatencyBook {
            shards: (0..LATENCY_SHARDS)
                .map(|_| {
                    Mutex::new(Latencies {
                        hist: new_histogram(),
                        hist_all: new_histogram(),
                        seconds: Vec::with_capacity(2),
                    })
                })
                .collect(),
            timeline: Mutex::new(Vec::new()),
        }
    }
}

impl LatencyBook {
    /// Records `n` answers of gate `gate` that took `took_us`, due in second `second` of
    /// the run, `measured` if due after the warm-up.
    fn record(&self, gate: u16, second: usize, measured: bool, took_us: u64, n: u64) {
        let mut l = self.shards[usize::from(gate) % LATENCY_SHARDS]
            .lock()
            .expect("not poisoned");
        let _ = l.hist_all.record_n(took_us, n);
        if measured {
            let _ = l.hist.record_n(took_us, n);
        }
        let at = match l.seconds.iter().position(|(s, _)| *s == second) {
            Some(at) => at,
            None => {
                // Answers near a second's end still come in for it while the next one's
                // start: two seconds are kept open; a third sends the oldest to the timeline.
                if l.seconds.len() >= 2 {
                    let oldest = (0..l.seconds.len())
                        .min_by_key(|&i| l.seconds[i].0)
                        .expect("not empty");
                    let (s, mut h) = l.seconds.swap_remove(oldest);
                    self.to_timeline(s, &h);
                    h.reset();
                    l.seconds.push((second, h));
                } else {
                    l.seconds.push((second, new_histogram()));
                }
                l.seconds.len() - 1
            }
        };
        let _ = l.seconds[at].1.record_n(took_us, n);
    }

    /// Adds one second's latencies to the timeline.
    fn to_timeline(&self, second: usize, h: &hdrhistogram::Histogram<u64>) {
        if h.is_empty() {
            return;
        }
        let mut timeline = self.timeline.lock().expect("not poisoned");
        while timeline.len() <= second {
            timeline.push(new_histogram());
        }
        let _ = timeline[second].add(h);
    }

    /// Once every gate is done: the seconds still open go to the timeline, the latencies to
    /// `totals`; returns the timeline, second by second.
    fn finish(&self, totals: &mut Totals) -> Vec<hdrhistogram::Histogram<u64>> {
        for shard in self.shards.iter() {
            let mut l = shard.lock().expect("not poisoned");
            for (s, h) in std::mem::take(&mut l.seconds) {
                self.to_timeline(s, &h);
            }
            let _ = totals.hist.add(&l.hist);
            let _ = totals.hist_all.add(&l.hist_all);
        }
        std::mem::take(&mut *self.timeline.lock().expect("not poisoned"))
    }
}

/// Moves the progress bar along every 200 ms until aborted.
fn start_ticker(
    bar: indicatif::ProgressBar,
    shared: Arc<RunShared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            bar.set_position(shared.start.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "{} answers",
                shared.answered.load(Ordering::Relaxed)
            ));
        }
    })
}

/// Every answer is in. A sender may still wait for room or for its next due time; it holds
/// a link, and so the target (for `inproc`, the engine and its temporary data dir): stop it
/// and wait until it is gone, so that nothing of the run outlives `run`. Then the ticker,
/// the bar and the pacer.
async fn wind_down(
    senders: Vec<tokio::task::JoinHandle<()>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    progress: Option<indicatif::ProgressBar>,
    pacer: Option<std::thread::JoinHandle<()>>,
) {
    for s in &senders {
        s.abort();
    }
    for s in senders {
        let _ = s.await;
    }
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if let Some(p) = pacer {
        let _ = p.join();
    }
}

/// What a run sets up before its clock starts.
struct Prepared {
    /// The target, opened.
    target: Target,
    /// The tickets minted for the run.
    genuine: Vec<stile_protocol::CodeBytes>,
    /// Each gate's items, in order.
    gates: Vec<Vec<plan::Item>>,
    /// Admits each ticket allows.
    allowed: Vec<u8>,
    /// The target's sync mode, by name.
    sync: String,
    /// Each gate's link.
    links: Vec<(target::Tx, target::Rx)>,
    /// How much the target's memory grew per gate connected.
    memory_per_gate: Option<f64>,
}

/// Opens the target, mints the run's `tickets`, plans each gate's scans and opens the gates'
/// links. A stop meanwhile ends the run with nothing to report (dropping the target stops
/// a Redis it spawned).
async fn prepare(config: &Config, tickets: u32) -> Result<Prepared, LoadError> {
    let stop = &config.stop;
    let target = stop.or_stop(Target::open(config)).await??;
    let kinds = plan::tickets(config.scenario, tickets);
    let mut progress = MintProgress::new(config, tickets);
    let genuine = stop.or_stop(target.mint(&kinds, &mut progress)).await??;
    drop(progress);
    if let Some(h) = &config.history {
        h.tickets(&genuine, &kinds);
    }
    let Plan { gates, allowed } = plan::plan(config, &genuine);
    let sync = stop.or_stop(target.sync_name()).await?;
    let memory_before = target.server_memory_bytes().await;
    let mut links = Vec::with_capacity(gates.len());
    for g in 0..gates.len() {
        links.push(
            stop.or_stop(target.link(g as u16 + 1, config.inflight))
                .await??,
        );
    }
    let memory_per_gate = match (memory_before, target.server_memory_bytes().await) {
        (Some(a), Some(b)) if !links.is_empty() => {
            Some(b.saturating_sub(a) as f64 / links.len() as f64)
        }
        _ => None,
    };
    Ok(Prepared {
        target,
        genuine,
        gates,
        allowed,
        sync,
        links,
        memory_per_gate,
    })
}

/// In open loop, the pacer's thread and each gate's receiver of due times.
#[allow(clippy::type_complexity)]
fn start_pacer(
    config: &Config,
    shared: &RunShared,
    n_gates: usize,
) -> Result<
    (
        Option<std::thread::JoinHandle<()>>,
        Vec<Option<mpsc::UnboundedReceiver<Instant>>>,
    ),
    LoadError,
> {
    Ok(match config.rate {
        Some(rate) => {
            let (txs, rxs): (Vec<_>, Vec<_>) =
                (0..n_gates).map(|_| mpsc::unbounded_channel()).unzip();
            let (start, end, shape) = (shared.start, shared.end, config.shape);
            let stop = config.stop.clone();
            let pacer = std::thread::Builder::new()
                .name("stile-loadtest-pacer".into())
                .spawn(move || pace(rate, shape, start, end, txs, &stop))
                .map_err(|e| LoadError::Usage(format!("starting the pacer: {e}")))?;
            (Some(pacer), rxs.into_iter().map(Some).collect())
        }
        None => (None, Vec::new()),
    })
}

/// Starts each gate's sender and receiver on its link; their tasks, senders first.
#[allow(clippy::type_complexity)]
fn spawn_gates(
    config: &Config,
    gates: Vec<Vec<plan::Item>>,
    links: Vec<(target::Tx, target::Rx)>,
    shared: &Arc<RunShared>,
    mut dues: Vec<Option<mpsc::UnboundedReceiver<Instant>>>,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    Vec<tokio::task::JoinHandle<GateCounts>>,
) {
    let mut receivers = Vec::with_capacity(gates.len());
    let mut senders = Vec::with_capacity(gates.len());
    for (g, (items, (tx, rx))) in gates.into_iter().zip(links).enumerate() {
        let n = config.inflight;
        let gate = Arc::new(GateShared {
            id: g as u16 + 1,
            tx: tokio::sync::Mutex::new(tx),
            book: Mutex::new(Book {
                free: (0..n).rev().collect(),
                slots: vec![None; n as usize],
            }),
            room: Semaphore::new(n as usize),
            sent_all: AtomicBool::new(false),
            sent: Notify::new(),
        });
        let due = dues.get_mut(g).and_then(Option::take);
        senders.push(tokio::spawn(send_loop(
            items,
            gate.clone(),
            shared.clone(),
            due,
        )));
        receivers.push(tokio::spawn(receive_loop(
            rx,
            gate,
            shared.clone(),
            config.inflight,
        )));
    }
    (senders, receivers)
}

/// Every gate's counts, added up.
struct Totals {
    /// Latencies in the measured time.
    hist: hdrhistogram::Histogram<u64>,
    /// Latencies over the whole run, warm-up included.
    hist_all: hdrhistogram::Histogram<u64>,
    /// Outcomes in the measured time, by wire value.
    counts: [u64; 16],
    /// Outcomes over the whole run.
    counts_all: [u64; 16],
    /// Requests that failed.
    errors: u64,
    /// Requests that went unanswered.
    timeouts: u64,
    /// Forged codes admitted.
    forged_admits: u64,
    /// Gates whose link failed.
    gates_lost: u32,
    /// What the QUIC links counted.
    quic: Option<report::QuicView>,
    /// Times gates connected again.
    reconnects: u64,
    /// Scans never answered.
    indeterminate: u64,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            hist: new_histogram(),
            hist_all: new_histogram(),
            counts: [0; 16],
            counts_all: [0; 16],
            errors: 0,
            timeouts: 0,
            forged_admits: 0,
            gates_lost: 0,
            quic: None,
            reconnects: 0,
            indeterminate: 0,
        }
    }
}

impl Totals {
    /// Adds one gate's counts.
    fn add(&mut self, c: &GateCounts) {
        for k in 0..16 {
            self.counts[k] += c.outcomes[k];
            self.counts_all[k] += c.outcomes_all[k];
        }
        self.errors += c.errors;
        self.timeouts += c.timeouts;
        self.forged_admits += c.forged_admits;
        self.gates_lost += u32::from(c.lost);
        self.reconnects += c.reconnects;
        self.indeterminate += c.indeterminate;
        if let Some(q) = &c.quic {
            self.quic.get_or_insert_default().add(q);
        }
    }
}

/// Outcome counts by name, those counted at all.
fn outcome_names(counts: &[u64; 16]) -> BTreeMap<String, u64> {
    let mut outcomes = BTreeMap::new();
    for (k, n) in counts.iter().enumerate() {
        if *n > 0 {
            if let Some(kind) = OutcomeKind::from_u8(k as u8) {
                outcomes.insert(kind.to_string(), *n);
            }
        }
    }
    outcomes
}

impl RunShared {
    /// Admits past what each ticket allows, over all tickets.
    fn double_admits(&self) -> u64 {
        self.admits
            .iter()
            .zip(&self.allowed)
            .map(|(a, allowed)| {
                u64::from(
                    a.load(Ordering::Relaxed)
                        .saturating_sub(u32::from(*allowed)),
                )
            })
            .sum()
    }
}

/// Sends one gate's items: in closed loop as fast as room frees up, in open loop as the
/// pacer says they are due. Stops at the end of the run, when the items run out, or when
/// the link fails.
async fn send_loop(
    items: Vec<Item>,
    gate: Arc<GateShared>,
    run: Arc<RunShared>,
    mut due: Option<mpsc::UnboundedReceiver<Instant>>,
) {
    let mut next = 0;
    let cap = gate.book.lock().expect("not poisoned").slots.len();
    // A gate never has more than `cap` requests out: thousands of gates with one in flight
    // each need no room for a full batch.
    let mut batch: Vec<(u32, Item)> = Vec::with_capacity(SEND_BATCH_MAX.min(cap));
    let mut times: Vec<Instant> = Vec::with_capacity(SEND_BATCH_MAX.min(cap));
    while next < items.len() {
        times.clear();
        match &mut due {
            None => {
                if Instant::now() >= run.end || run.stop.is_requested() {
                    break;
                }
                let n = gate
                    .room
                    .available_permits()
                    .clamp(1, SEND_BATCH_MAX)
                    .min(items.len() - next);
                // Only as far as the scans whose earlier ones are answered.
                let n = items[next..next + n]
                    .iter()
                    .take_while(|i| run.turn_of(i))
                    .count();
                if n == 0 {
                    run.wait_for_turn(&items[next]).await;
                    continue;
                }
                times.resize(n, Instant::now());
            }
            Some(due) => {
                // A stop ends the sending at once, not after the times already dealt out
                // (a target that falls behind leaves many).
                let t = tokio::select! {
                    t = due.recv() => t,
                    () = run.stop.requested() => None,
                };
                let Some(t) = t else { break };
                times.push(t);
                let most = SEND_BATCH_MAX.min(cap).min(items.len() - next);
                while times.len() < most {
                    match due.try_recv() {
                        Ok(t) => times.push(t),
                        Err(_) => break,
                    }
                }
                // Late, measured from when they were due, if an earlier scan of their
                // ticket is still unanswered.
                for item in &items[next..next + times.len()] {
                    run.wait_for_turn(item).await;
                }
                if run.stop.is_requested() {
                    break;
                }
            }
        }
        match gate.room.acquire_many(times.len() as u32).await {
            Ok(p) => p.forget(),
            Err(_) => break, // the receiver gave up on the link
        }
        // Held from taking ids to the write: a receiver reconnecting meanwhile resends
        // these, or none of them (see `GateShared::tx`).
        let mut tx = gate.tx.lock().await;
        let now = Instant::now();
        if due.is_none() {
            // Closed loop: the clock starts when there is room.
            times.iter_mut().for_each(|t| *t = now);
        }
        batch.clear();
        {
            let mut book = gate.book.lock().expect("not poisoned");
            for (item, t) in items[next..].iter().zip(&times) {
                let id = book.free.pop().expect("a free id for every permit");
                book.slots[id as usize] = Some(Slot {
                    due: *t,
                    sent: now,
                    item: *item,
                });
                batch.push((id, *item));
            }
        }
        next += batch.len();
        if let Err(e) = tx.send(&batch).await {
            tracing::debug!(error = %e.0, "sending failed");
            if run.relink.is_none() {
                gate.room.close();
                break;
            }
            // The receiver finds the link lost, connects again and resends these.
        }
    }
    gate.sent_all.store(true, Ordering::Release);
    gate.sent.notify_one();
}

/// Reads one gate's answers until everything sent is answered, counting outcomes, admits
/// and latencies. When the link fails (or stays silent with requests in flight) the gate
/// stops there; in a run that strikes faults, or against a shard (whose node may answer
/// `not_leader`), it connects again and resends what is unanswered with the same scan ids
/// instead, until [`RELINK_GRACE`] past the run's end.
async fn receive_loop(
    mut rx: Rx,
    gate: Arc<GateShared>,
    run: Arc<RunShared>,
    cap: u32,
) -> GateCounts {
    let mut c = GateCounts {
        outcomes: [0; 16],
        outcomes_all: [0; 16],
        errors: 0,
        timeouts: 0,
        forged_admits: 0,
        lost: false,
        quic: None,
        reconnects: 0,
        indeterminate: 0,
        quic_before: None,
    };
    let mut history = run.history.as_ref().map(|h| h.gate(gate.id, run.details));
    let mut answers: Vec<Answer> = Vec::with_capacity(cap as usize);
    let in_flight = |g: &GateShared| cap as usize - g.book.lock().expect("not poisoned").free.len();
    // Links in a row answered `not_leader` with nothing else between: the shard is choosing
    // its leader, and the gate waits longer before each next link.
    let mut refused = 0u32;
    loop {
        let sent_all = gate.sent_all.load(Ordering::Acquire);
        if sent_all && in_flight(&gate) == 0 {
            break;
        }
        let read = async { tokio::time::timeout(REQUEST_TIMEOUT, rx.recv(&mut answers)).await };
        let got = if sent_all {
            read.await
        } else {
            tokio::select! {
                r = read => r,
                _ = gate.sent.notified() => continue,
            }
        };
        let failure = match got {
            Ok(Ok(())) => None,
            Ok(Err(ref e)) => Some(format!("link failed: {}", e.0)),
            Err(_) if in_flight(&gate) > 0 => Some("no answer in time".to_string()),
            Err(_) => continue,
        };
        if let Some(why) = failure {
            tracing::debug!(gate = gate.id, "{why}");
            refused = match rx.not_leader() {
                true => refused.saturating_add(1),
                false => 0,
            };
            let pause = nodes::failover_pause(refused);
            if run.relink.is_some()
                && relink(&mut rx, &gate, &run, &mut c, &mut history, pause).await
            {
                continue;
            }
            // Given up: what is in flight stays unanswered; the gate cannot send the rest.
            let now = Instant::now();
            let mut book = gate.book.lock().expect("not poisoned");
            let lost = book.slots.iter().flatten().count() as u64;
            if let Some(h) = &mut history {
                for slot in book.slots.iter().flatten() {
                    h.record(&slot.item, slot.sent, now, None);
                }
            }
            book.slots.iter_mut().for_each(|s| *s = None);
            match got {
                Ok(Err(_)) => c.errors += lost,
                _ => c.timeouts += lost,
            }
            c.indeterminate += lost;
            c.lost = true;
            break;
        }
        refused = 0;
        let now = Instant::now();
        let n = answers.len();
        let mut same_due: Option<(Instant, u64)> = None;
        let mut stepped = false;
        let mut freed = 0;
        {
            let mut book = gate.book.lock().expect("not poisoned");
            for (id, answer) in answers.drain(..) {
                // An id not in flight: a stray answer.
                let Some(slot) = book.slots.get_mut(id as usize).and_then(Option::take) else {
                    c.errors += 1;
                    continue;
                };
                book.free.push(id);
                freed += 1;
                if let Some(steps) = run.steps.get(slot.item.ticket as usize) {
                    // Answered, whatever the answer: the ticket's next scan may go.
                    steps.fetch_add(1, Ordering::Release);
                    stepped = true;
                }
                let counted = slot.due >= run.measure_from;
                if let Some(h) = &mut history {
                    h.record(&slot.item, slot.sent, now, answer.as_ref().ok());
                }
                let outcome = match answer {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::debug!(error = %e, "request failed");
                        c.errors += 1;
                        c.indeterminate += 1;
                        continue;
                    }
                };
                if outcome.kind == OutcomeKind::Admitted {
                    match run.admits.get(slot.item.ticket as usize) {
                        Some(a) => {
                            a.fetch_add(1, Ordering::Relaxed);
                        }
                        None => c.forged_admits += 1,
                    }
                }
                let k = outcome.kind as usize;
                c.outcomes_all[k] += 1;
                if counted {
                    c.outcomes[k] += 1;
                }
                // Answers to one batch share their due time: one histogram entry for all.
                match &mut same_due {
                    Some((due, n)) if *due == slot.due => *n += 1,
                    _ => {
                        if let Some((due, n)) = same_due.take() {
                            run.record_latency(gate.id, now, due, n);
                        }
                        same_due = Some((slot.due, 1));
                    }
                }
            }
            if let Some((due, n)) = same_due.take() {
                run.record_latency(gate.id, now, due, n);
            }
        }
        gate.room.add_permits(freed);
        run.answered.fetch_add(n as u64, Ordering::Relaxed);
        if stepped {
            run.stepped.notify_waiters();
        }
    }
    // Whatever is still in flight now will not be answered: let the sender go.
    gate.room.close();
    c.quic = match (rx.quic(), c.quic_before.take()) {
        (Some(mut last), Some(before)) => {
            last.add(&before);
            Some(last)
        }
        (last, before) => last.or(before),
    };
    c
}

/// After the gate's link failed: connects again (after `pause`; to a shard's leader, as far
/// as it is known), records its attempts in flight as unanswered and resends them on the
/// new link with their scan ids (holding the sending half, so the sender writes nothing
/// meanwhile). `false` once the run is stopped, or past [`RELINK_GRACE`] after its end,
/// without a link.
async fn relink(
    rx: &mut Rx,
    gate: &GateShared,
    run: &RunShared,
    c: &mut GateCounts,
    history: &mut Option<history::GateHistory>,
    pause: Duration,
) -> bool {
    let Some(target) = &run.relink else {
        return false;
    };
    debug_assert!(pause <= nodes::FAILOVER_PAUSE_MAX);
    target.lost(rx);
    let mut tx = gate.tx.lock().await;
    if !pause.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = run.stop.requested() => {}
        }
    }
    let cap = gate.book.lock().expect("not poisoned").slots.len() as u32;
    // A stop ends the run as if its time were up: what is in flight is still collected,
    // for the grace from the stop (a second Ctrl-C quits at once).
    let mut stopped_at = None;
    loop {
        let now = Instant::now();
        let end = match run.stop.is_requested() {
            true => *stopped_at.get_or_insert(now),
            false => run.end,
        };
        if now >= end + RELINK_GRACE {
            break;
        }
        let link = tokio::time::timeout(RELINK_TIMEOUT, target.link(gate.id, cap)).await;
        let Ok(Ok((new_tx, new_rx))) = link else {
            tokio::time::sleep(RELINK_PAUSE).await;
            continue;
        };
        // What the lost link carried still counts.
        if let Some(q) = rx.quic() {
            c.quic_before.get_or_insert_default().add(&q);
        }
        (*tx, *rx) = (new_tx, new_rx);
        c.reconnects += 1;
        let again = {
            let mut book = gate.book.lock().expect("not poisoned");
            // Each attempt's line goes out when it is given up on: here, as it is resent.
            let now = Instant::now();
            if let Some(h) = history {
                for slot in book.slots.iter().flatten() {
                    h.record(&slot.item, slot.sent, now, None);
                }
            }
            book.resend_all(now)
        };
        if again.is_empty() {
            return true;
        }
        match tx.send(&again).await {
            Ok(()) => return true,
            // Lost again at once: what was written is unanswered too.
            Err(e) => tracing::debug!(gate = gate.id, error = %e.0, "resending failed"),
        }
    }
    false
}

/// The open-loop schedule, request `i` at gate `i mod G`: flat, request `i` is due at
/// `start + i / rate`; peak, each request is due `1 / rate(t)` after the one before, with
/// `rate(t)` the [`Shape::Peak`] curve. Runs on its own thread until `end`, sleeping until
/// the next request is due (at least [`PACER_TICK`]): a pacer that woke on a fixed short tick
/// cost the tester most of a core at low rates, taken from the node it measures.
fn pace(
    rate: f64,
    shape: Shape,
    start: Instant,
    end: Instant,
    gates: Vec<mpsc::UnboundedSender<Instant>>,
    stop: &Stop,
) {
    pace_with(rate, shape, start, end, gates, |d| {
        if stop.is_requested() {
            return false;
        }
        std::thread::sleep(d);
        true
    })
}

/// [`pace`], sleeping with `sleep`, which says whether to go on (tests count the pacer's
/// wake-ups; a stop ends the schedule early).
fn pace_with(
    rate: f64,
    shape: Shape,
    start: Instant,
    end: Instant,
    gates: Vec<mpsc::UnboundedSender<Instant>>,
    mut sleep: impl FnMut(Duration) -> bool,
) {
    let nanos_per = 1e9 / rate;
    let span_ns = end.saturating_duration_since(start).as_nanos() as f64;
    // Nanoseconds from the start of the next request due, for the peak curve.
    let mut next_ns = 0.0f64;
    let mut i: u64 = 0;
    let mut open = gates.len();
    let mut alive = vec![true; gates.len()];
    loop {
        let now = Instant::now();
        let next_due = loop {
            let due_ns = match shape {
                Shape::Flat => i as f64 * nanos_per,
                Shape::Peak => next_ns,
            };
            let due = start + Duration::from_nanos(due_ns.round() as u64);
            if due > now || due >= end {
                break due.min(end);
            }
            let g = (i % gates.len() as u64) as usize;
            if alive[g] && gates[g].send(due).is_err() {
                alive[g] = false;
                open -= 1;
            }
            i += 1;
            next_ns += nanos_per / Shape::peak_share(next_ns / span_ns.max(1.0));
        };
        if open == 0 || now >= end {
            return;
        }
        let until_due = next_due.saturating_duration_since(Instant::now());
        if !sleep(until_due.clamp(PACER_TICK, PACER_SLEEP_MAX)) {
            return;
        }
    }
}

/// Says how minting goes, on stderr: one line redrawn in place on a terminal, a plain line
/// at most every second otherwise (a log or a CI job reads those), and the last count when
/// it is dropped (minting done, failed or stopped).
pub(crate) struct MintProgress {
    /// `stile loadtest: TARGET`.
    label: String,
    /// Tickets to mint.
    total: u64,
    /// Minted so far.
    done: u64,
    /// The count the last line showed.
    shown_done: u64,
    /// Stderr is a terminal: redraw one line.
    tty: bool,
    /// When the last line went out (`None`: none yet).
    shown_at: Option<Instant>,
    /// `--quiet` turns it off.
    enabled: bool,
}

impl MintProgress {
    /// For `tickets` tickets of `config`'s run.
    fn new(config: &Config, tickets: u32) -> MintProgress {
        use std::io::IsTerminal;
        MintProgress {
            label: format!("stile loadtest: {}", config.target),
            total: u64::from(tickets),
            done: 0,
            shown_done: 0,
            tty: std::io::stderr().is_terminal(),
            shown_at: None,
            enabled: config.progress,
        }
    }

    /// `n` more minted.
    pub(crate) fn add(&mut self, n: u64) {
        self.done += n;
        let every = match self.tty {
            true => Duration::from_millis(100),
            false => Duration::from_secs(1),
        };
        if self.shown_at.is_none_or(|t| t.elapsed() >= every) {
            self.show();
        }
    }

    fn show(&mut self) {
        if !self.enabled {
            return;
        }
        self.shown_at = Some(Instant::now());
        self.shown_done = self.done;
        let line = format!(
            "{}: minting tickets: {} of {} ({:.0} %)",
            self.label,
            self.done,
            self.total,
            100.0 * self.done as f64 / self.total.max(1) as f64
        );
        let mut err = std::io::stderr().lock();
        // Not eprintln!: a closed terminal must not end the run.
        let _ = match self.tty {
            true => write!(err, "\r{line}\x1b[K"),
            false => writeln!(err, "{line}"),
        };
    }
}

impl Drop for MintProgress {
    fn drop(&mut self) {
        if self.shown_at.is_none() {
            return;
        }
        if self.shown_done != self.done {
            self.show();
        }
        if self.enabled && self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}

fn progress_bar(config: &Config) -> indicatif::ProgressBar {
    let total = (config.warmup + config.duration).as_millis() as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed}/{duration} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(config.target.clone());
    bar
}

fn new_histogram() -> hdrhistogram::Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// CPU time of this process (user and system).
fn cpu_time() -> Duration {
    // The process's CPU clock counts user and system time of all its threads.
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gates of one shard answering for three seconds out of order: every answer lands in
    /// the second it was due, in the run's histogram, and in the measured one if measured.
    #[test]
    fn shared_latency_shards_keep_each_answer_in_its_second() {
        let book = LatencyBook::default();
        // Gates 1 and 17 share a shard; gate 2 has its own.
        let answers: [(u16, usize, bool, u64, u64); 7] = [
            (1, 0, false, 100, 1),
            (17, 1, true, 200, 2),
            (1, 0, false, 150, 1),
            (17, 2, true, 300, 1),
            // Second 0 was sent to the timeline when second 2 opened: it must still add up.
            (1, 0, false, 120, 3),
            (2, 1, true, 250, 1),
            (17, 1, true, 210, 1),
        ];
        for (gate, second, measured, us, n) in answers {
            book.record(gate, second, measured, us, n);
        }
        let mut totals = Totals::default();
        let timeline = book.finish(&mut totals);
        let counts: Vec<u64> = timeline.iter().map(|h| h.len()).collect();
        assert_eq!(counts, [5, 4, 1]);
        assert_eq!(timeline[0].max(), timeline[0].highest_equivalent(150));
        assert_eq!(timeline[2].min(), timeline[2].lowest_equivalent(300));
        assert_eq!(totals.hist_all.len(), 10);
        assert_eq!(totals.hist.len(), 5, "only measured answers");
        assert_eq!(totals.hist.min(), totals.hist.lowest_equivalent(200));
        // Finished: no second is left open to be added twice.
        assert!(book.finish(&mut Totals::default()).is_empty());
    }

    /// Runs a pacer over `gates` gates' channels; the due times each gate was dealt.
    pub(super) fn paced(
        gates: usize,
        pacer: impl FnOnce(Vec<mpsc::UnboundedSender<Instant>>),
    ) -> Vec<Vec<Instant>> {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..gates).map(|_| mpsc::unbounded_channel()).unzip();
        pacer(txs);
        rxs.into_iter()
            .map(|mut rx| std::iter::from_fn(|| rx.try_recv().ok()).collect())
            .collect()
    }

    #[test]
    fn the_pacer_spaces_requests_evenly_and_deals_them_round_robin() {
        let start = Instant::now();
        let per_gate = paced(4, |txs| {
            pace(
                1000.0,
                Shape::Flat,
                start,
                start + Duration::from_millis(100),
                txs,
                &Stop::default(),
            )
        });
        let mut all = Vec::new();
        for (g, mine) in per_gate.into_iter().enumerate() {
            assert_eq!(mine.len(), 25, "gate {g}");
            for w in mine.windows(2) {
                assert_eq!(w[1] - w[0], Duration::from_millis(4), "gate {g}");
            }
            all.extend(mine);
        }
        all.sort();
        assert_eq!(all.len(), 100);
        assert_eq!(all[0], start);
        for w in all.windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_millis(1));
        }
    }

    #[test]
    fn the_pacer_sleeps_until_the_next_request_is_due() {
        // 200/s for 300 ms: 60 requests. A pacer on a fixed 50 µs tick would wake thousands
        // of times; one that sleeps until the next due time wakes about once per request,
        // plus once per longest sleep on the way to the end.
        let start = Instant::now();
        let span = Duration::from_millis(300);
        let mut sleeps = 0u32;
        let per_gate = paced(2, |txs| {
            pace_with(200.0, Shape::Flat, start, start + span, txs, |d| {
                sleeps += 1;
                assert!(d >= PACER_TICK && d <= PACER_SLEEP_MAX, "{d:?}");
                std::thread::sleep(d);
                true
            })
        });
        let sent: usize = per_gate.iter().map(Vec::len).sum();
        assert_eq!(sent, 60);
        let most = sent as u32 + (span.as_millis() / PACER_SLEEP_MAX.as_millis()) as u32 + 2;
        assert!(sleeps <= most, "{sleeps} sleeps for {sent} requests");
    }

    #[test]
    fn a_stop_ends_the_schedule_early() {
        // 1,000/s for 10 s; a stop asked for from another thread after 50 ms. Without it
        // the pacer would deal out all 10,000 requests; with it, it returns within a
        // longest sleep of the stop (a bound of half the schedule leaves room for a slow
        // machine).
        let start = Instant::now();
        let stop = Stop::default();
        let asker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                stop.request();
            })
        };
        let per_gate = paced(2, |txs| {
            pace(
                1000.0,
                Shape::Flat,
                start,
                start + Duration::from_secs(10),
                txs,
                &stop,
            )
        });
        asker.join().unwrap();
        let sent: usize = per_gate.iter().map(Vec::len).sum();
        assert!((1..5_000).contains(&sent), "{sent} requests dealt out");
    }

    #[test]
    fn the_pacer_deals_all_that_is_due_after_a_long_sleep() {
        let start = Instant::now();
        // Every sleep overshoots by 5 ms: requests pile up and go out together, still
        // stamped with the times they were due.
        let per_gate = paced(3, |txs| {
            pace_with(
                2000.0,
                Shape::Flat,
                start,
                start + Duration::from_millis(100),
                txs,
                |d| {
                    std::thread::sleep(d + Duration::from_millis(5));
                    true
                },
            )
        });
        let mut all: Vec<Instant> = per_gate.into_iter().flatten().collect();
        all.sort();
        assert_eq!(all.len(), 200);
        assert_eq!(all[0], start);
        for w in all.windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_micros(500));
        }
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn the_peak_rises_holds_and_falls() {
        assert!((Shape::peak_share(0.0) - 0.1).abs() < 1e-9);
        assert!((Shape::peak_share(0.2) - 0.55).abs() < 1e-9);
        assert_eq!(Shape::peak_share(0.5), 1.0);
        assert!((Shape::peak_share(1.0) - 0.1).abs() < 1e-9);
        assert!(Shape::peak_share(0.3) < Shape::peak_share(0.39));
        assert!(Shape::peak_share(0.9) < Shape::peak_share(0.7));
    }

    #[test]
    fn a_peaked_schedule_sends_fewer_at_the_edges_than_in_the_middle() {
        let start = Instant::now();
        let span = Duration::from_millis(200);
        let all: Vec<Duration> = super::tests::paced(2, |txs| {
            pace(
                10_000.0,
                Shape::Peak,
                start,
                start + span,
                txs,
                &Stop::default(),
            )
        })
        .into_iter()
        .flatten()
        .map(|t| t - start)
        .collect();
        let in_fifth = |k: u32| {
            all.iter()
                .filter(|d| **d >= span * k / 5 && **d < span * (k + 1) / 5)
                .count()
        };
        // A flat 10,000/s would send 400 in each fifth; the middle fifth is at full rate.
        assert!((390..=410).contains(&in_fifth(2)), "{}", in_fifth(2));
        assert!(
            in_fifth(0) < 250 && in_fifth(4) < 250,
            "{} {}",
            in_fifth(0),
            in_fifth(4)
        );
        assert!(all.len() < 2000 * 3 / 4, "{}", all.len());
    }
}
