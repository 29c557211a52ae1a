//! The write-ahead log: every state change, framed and checksummed, made durable by one
//! group-commit writer thread.
//!
//! **Ordering.** Sequence numbers are reserved ([`Wal::reserve`]) *before* the
//! compare-and-swaps whose records they will number; a reservation always ends in a
//! submission (its unused numbers are gaps). A batch's answers wait until every number below
//! the reservation counter, read *after* the batch's observations, is durable. So a loser that
//! saw a winner's admit also waits for the winner's record: the winner reserved before it
//! swapped, and the loser saw the swap.
//!
//! **Group commit.** The writer takes everything submitted while it was syncing, writes the
//! contiguous run of sequence numbers it now has, and calls `fdatasync` once. Submissions
//! beyond [`QUEUE_MAX_BYTES`] wait for room: a full queue pushes back on callers.
//!
//! **Wake-ups.** Submitters wake the writer only while it sleeps with nothing to do; in
//! `batch` and `none` modes it first lingers (`LINGER`) so submissions gather without
//! waking it at all (but for a queue past `URGENT_BYTES`), in `always` mode for
//! `ALWAYS_LINGER` after a sync that left nothing queued.
//!
//! **Failure.** A failed write or `fdatasync` stops the process ([`Storage::fail_stop`]:
//! an abort on a real disk): after a failed fsync the kernel may have dropped the dirty
//! pages, so retrying could report lost data as durable. A full disk is found before: once
//! its prepared segments run out and no new one can be made, changes are refused before
//! they are made (`room.rs`).
//!
//! **Stepping.** A log started by the simulation (`sim`) has no threads: its writer and the
//! preparation of spare segments run only when the simulation steps them
//! ([`Wal::step_write`], [`Wal::step_sync`], [`Wal::step_spares`]), and a blocking wait
//! steps the writer itself. The code that runs is the same; only who calls it differs.

pub mod record;
mod room;
pub mod segment;
pub mod tail;
mod waiters;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::metrics::{AtomicHistogram, BATCH_EDGES, FSYNC_EDGES_US};
use crate::storage::{SharedStorage, StdStorage, Storage, StorageFile};
pub use record::{ConflictRecord, Record, OP_OFFLINE};
use room::{tighten_if_nearly_full, Room};
pub use room::{Claim, LogFull, RECORD_CLAIM_BYTES};
use waiters::{Until, Waiters};

/// Most bytes waiting for the writer before submitters are made to wait.
pub const QUEUE_MAX_BYTES: usize = 64 << 20;
/// Default fsync interval of `--sync batch`.
pub const BATCH_INTERVAL_DEFAULT_MS: u32 = 10;
/// How long the writer lets submissions gather before writing them, in `batch` and `none`
/// modes (whose answers do not wait for the log): one wake-up per linger instead of one per
/// submission. Measured on two shared cores, 64 connections with one check-in each: a node
/// with `--sync none` answered 27 k/s waking the writer for every submission, 37 k/s with
/// this.
const LINGER: Duration = Duration::from_millis(2);
/// How long the writer waits for submissions in `always` mode once a sync left nothing
/// queued, before it sleeps until woken: what comes meanwhile costs its submitter no
/// wake-up and the writer no extra switch, and waits at most this long for its sync. At 64
/// connections with one check-in each, 7 % more throughput (three rounds of three, 100 µs
/// against none; PERFORMANCE.md "The writer's linger in `always`").
const ALWAYS_LINGER: Duration = Duration::from_micros(100);
/// Queued bytes past which a submitter wakes the writer even while it lingers.
const URGENT_BYTES: usize = 1 << 20;

/// When records reach the disk, and when answers go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync` every group; answer only once durable (the default).
    Always,
    /// `fdatasync` every `interval_ms`; answer at once.
    Batch {
        /// Milliseconds between syncs.
        interval_ms: u32,
    },
    /// Never sync (the OS writes back when it likes); answer at once.
    None,
}

impl SyncMode {
    /// The name operators use: `always`, `batch`, `none`.
    pub fn name(&self) -> &'static str {
        match self {
            SyncMode::Always => "always",
            SyncMode::Batch { .. } => "batch",
            SyncMode::None => "none",
        }
    }

    /// Parses `always`, `batch` (default interval) or `none`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(SyncMode::Always),
            "batch" => Some(SyncMode::Batch {
                interval_ms: BATCH_INTERVAL_DEFAULT_MS,
            }),
            "none" => Some(SyncMode::None),
            _ => None,
        }
    }
}

/// Numbers `[first, first + count)` and the encoded records that used some of them.
#[derive(Debug)]
struct Submission {
    /// First reserved sequence number.
    first: u64,
    /// Numbers reserved.
    count: u64,
    /// Records encoded (numbers used).
    records: u64,
    /// Frames of the records, in sequence order.
    bytes: Vec<u8>,
    /// The last record's sequence number and checksum (for the next segment's link).
    last: Option<(u64, u64)>,
    /// Room claimed for the records, given back once they are written (`room.rs`).
    claim: u64,
}

/// Submissions waiting for the writer.
#[derive(Debug, Default)]
struct Queue {
    /// Not yet taken by the writer.
    subs: Vec<Submission>,
    /// Their total bytes.
    bytes: usize,
    /// Set when the log closes.
    closing: bool,
    /// The writer is asleep on `work` with nothing to do (submitters wake it only then, or
    /// when the queue passes [`URGENT_BYTES`]: a wake-up costs a system call and a context
    /// switch, and while the writer syncs or lingers there is no one to wake).
    writer_asleep: bool,
    /// Submitters asleep on `room`.
    waiting_for_room: usize,
    /// Someone needs what is written synced now, whatever the mode (a snapshot).
    sync_wanted: bool,
}

/// A submission as a simulation sees it: its first number and its frames.
type Submitted = (u64, Vec<u8>);

/// A writer stepped by hand (see the module's doc); `None` once the log is closed.
type ManualWriter = Mutex<Option<Writer>>;

/// State shared by submitters, waiters and the writer.
#[derive(Debug)]
struct Shared {
    /// Next sequence number to reserve.
    next_seq: AtomicU64,
    /// Every number below this may be answered: `local`, and while a synchronous standby is
    /// required, also acknowledged by it. Never goes back.
    durable: AtomicU64,
    /// Every number below this is durable on this machine (or, without `always`, written).
    local: AtomicU64,
    /// Woken as `local` reaches what each waits for (what a standby is sent).
    local_waiters: Waiters,
    /// Whether answers wait for a synchronous standby's acknowledgements as well.
    acks_required: AtomicBool,
    /// Every number below this was acknowledged by the synchronous standby (synced there).
    acked: AtomicU64,
    /// Every number below this is on disk with `fdatasync` done.
    synced: AtomicU64,
    /// Every number below this was submitted and written to the file (their changes were
    /// made in memory before submission): where a snapshot may start.
    written: AtomicU64,
    /// Woken as `durable` reaches what each waits for.
    waiters: Waiters,
    /// The writer's inbox.
    queue: Mutex<Queue>,
    /// Wakes the writer.
    work: Condvar,
    /// Wakes submitters waiting for room.
    room: Condvar,
    /// How syncs happen.
    mode: SyncMode,
    /// Group commits done (statistics).
    syncs: AtomicU64,
    /// Records written (statistics).
    records: AtomicU64,
    /// `fdatasync` latency in microseconds (statistics).
    sync_us: AtomicHistogram,
    /// Records each `fdatasync` made durable (statistics: the group-commit batch size).
    sync_records: AtomicHistogram,
    /// Room in the prepared segments, and whether changes must claim it (`room.rs`).
    space: Arc<Room>,
    /// A write or sync failed and the storage was told to stop the process: nothing more is
    /// written or made durable (only a simulated storage returns from that).
    dead: AtomicBool,
    /// The writer of a log stepped by hand, which a blocking wait steps itself (weak: the
    /// writer holds this state).
    manual: Option<Weak<ManualWriter>>,
    /// Every submission, in the order submitted, for a simulation's record of what was
    /// asked of the log (only a log stepped by hand keeps them).
    submitted: Option<Mutex<Vec<Submitted>>>,
}

impl Shared {
    /// Moves `durable` up to what may be answered now, and wakes those it covers.
    fn publish(&self) {
        let local = self.local.load(Ordering::Acquire);
        let answerable = match self.acks_required.load(Ordering::Acquire) {
            true => local.min(self.acked.load(Ordering::Acquire)),
            false => local,
        };
        let durable = self
            .durable
            .fetch_max(answerable, Ordering::AcqRel)
            .max(answerable);
        self.waiters.wake_through(durable);
        self.local_waiters.wake_through(local);
    }
}

/// Who runs the writer.
#[derive(Debug)]
enum Driver {
    /// A thread of its own, joined on close.
    Thread(Mutex<Option<JoinHandle<()>>>),
    /// Whoever steps the log (a simulation).
    Manual(Arc<ManualWriter>),
}

/// The write-ahead log of one data dir.
#[derive(Debug)]
pub struct Wal {
    /// Shared with the writer.
    shared: Arc<Shared>,
    /// The writer.
    driver: Driver,
    /// Where the log's files are.
    storage: SharedStorage,
    /// The log directory.
    dir: PathBuf,
    /// Its device and inode, as opened.
    dir_id: (u64, u64),
}

/// How a log is started (see [`Wal::start_with_runway`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StartOptions {
    /// When records are synced and answers go out.
    pub mode: SyncMode,
    /// A segment is closed past this size.
    pub segment_max_bytes: u64,
    /// Segments kept prepared ahead of need (0: one at a time, lazily).
    pub runway: u32,
    /// No threads: the writer and the spares run only when stepped.
    pub manual: bool,
    /// Zeros written per step of a spare's preparation.
    pub spare_step_bytes: usize,
}

/// What the newest segment's durability marks declare: a bit flipped below `synced` (by
/// marks that are themselves synced) or below `written` (by marks written, which only a
/// process crash keeps) is refused as corruption at the next start.
#[cfg(any(test, feature = "sim"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Declared {
    /// The segment records go into.
    pub segment: PathBuf,
    /// Declared synced by the marks written in it.
    pub written: u64,
    /// Declared synced by the marks synced in it.
    pub synced: u64,
    /// Its length: where its frames end.
    pub len: u64,
}

/// The writer stopped: a write or sync failed and [`Storage::fail_stop`] was called.
#[derive(Debug, Clone, Copy)]
struct Stopped;

/// The writer's own state.
#[derive(Debug)]
struct Writer {
    /// Shared with the log.
    shared: Arc<Shared>,
    /// Where the log's files are.
    storage: SharedStorage,
    /// Log directory.
    dir: PathBuf,
    /// The segment being appended to.
    file: Box<dyn StorageFile>,
    /// Its length: where the next record goes.
    file_len: u64,
    /// How far it is written with zeros ahead of records (at most `file_len` for a segment
    /// that was not prepared ahead): writes below this change no file metadata.
    file_zeroed: u64,
    /// Bytes of the segment synced.
    synced_len: u64,
    /// What the last durability mark written in the segment declares synced (at its start,
    /// the header, which needs none: it was synced with its link before any record).
    declared_len: u64,
    /// What the last mark that is itself synced declares (what a power cut cannot take
    /// back; a simulation picks the bits it flips below it).
    declared_synced_len: u64,
    /// A mark in the write being made, and what it declares: counted once written.
    unwritten_mark: Option<u64>,
    /// Where the last mark written in the segment ends (a mark is written where what it
    /// declares ends). A segment synced only past that mark needs no mark of it: marks
    /// declaring nothing but marks would follow every sync of numbers that wrote nothing.
    mark_end: u64,
    /// The log directory's device and inode: a segment switch checks that `dir` still
    /// names it (a data dir moved while open would have the switch rename another log's
    /// spare).
    dir_id: (u64, u64),
    /// The segment's first sequence number (its name), for the next segment's link.
    segment_first_seq: u64,
    /// Its last record's sequence number and checksum, for the next segment's link.
    segment_last_record: Option<(u64, u64)>,
    /// The next segment, prepared in the background (none in `none` mode, which never syncs).
    spares: Option<Spares>,
    /// A segment is closed once it passes this size.
    segment_max_bytes: u64,
    /// Submissions that arrived ahead of a gap.
    pending: BTreeMap<u64, Submission>,
    /// The queue's next vector of submissions, emptied with its capacity kept: swapped in
    /// as the writer takes the queue, so submitters never grow it under the lock again.
    spare_subs: Vec<Submission>,
    /// What one write carries, kept from write to write with its capacity.
    buf: Vec<u8>,
    /// The next sequence number to write.
    next: u64,
    /// Last fsync, for `batch` mode.
    last_sync: Instant,
    /// Records written since the last fsync.
    unsynced_records: u64,
    /// Room claimed by the submissions of the write under way, given back once written.
    claims_written: u64,
    /// Bytes files grew past their prepared zeros since the filesystem's room was last
    /// looked at ([`Writer::look_at_room`]).
    grown_unlooked: u64,
}

/// Statistics of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalStats {
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Records written.
    pub records: u64,
    /// Median `fdatasync` latency, microseconds.
    pub sync_p50_us: u64,
    /// 99th percentile `fdatasync` latency, microseconds.
    pub sync_p99_us: u64,
}

impl Wal {
    /// Starts the log in `dir` at sequence `next_seq`, appending to `tail` (the last segment
    /// as a scan found it) or starting a new segment.
    pub fn start(
        dir: &Path,
        next_seq: u64,
        tail: Option<segment::Tail>,
        mode: SyncMode,
        segment_max_bytes: u64,
    ) -> std::io::Result<Self> {
        Self::start_with_runway(dir, next_seq, tail, mode, segment_max_bytes, 0)
    }

    /// [`Wal::start`], keeping `runway` segments prepared ahead of need from the start
    /// (`stile node`). With 0 (what [`Wal::start`] does) one segment is prepared at a time,
    /// and only once the current one holds [`SPARE_AFTER_BYTES`]: a small log never
    /// writes a segment's worth of zeros.
    pub fn start_with_runway(
        dir: &Path,
        next_seq: u64,
        tail: Option<segment::Tail>,
        mode: SyncMode,
        segment_max_bytes: u64,
        runway: u32,
    ) -> std::io::Result<Self> {
        let options = StartOptions {
            mode,
            segment_max_bytes,
            runway,
            manual: false,
            spare_step_bytes: segment::SPARE_STEP,
        };
        Self::start_on(Arc::new(StdStorage), dir, next_seq, tail, options)
    }

    /// [`Wal::start_with_runway`] on `storage`, as `options` say.
    pub(crate) fn start_on(
        storage: SharedStorage,
        dir: &Path,
        next_seq: u64,
        tail: Option<segment::Tail>,
        options: StartOptions,
    ) -> std::io::Result<Self> {
        let StartOptions {
            mode,
            segment_max_bytes,
            runway,
            manual,
            spare_step_bytes,
        } = options;
        assert!(
            segment_max_bytes > segment::SEGMENT_HEADER_LEN,
            "segments hold records"
        );
        let st: &dyn Storage = &*storage;
        // Private: its records hold every code's state and scan.
        st.ensure_dir(dir)?;
        // Whole spares a previous run left are the runway's start; the rest are removed. A
        // log without a runway (a command such as `stile keys` opening a node's data) leaves
        // them as they are for the node's next start, and numbers its own after them.
        let keep = match (mode, runway) {
            (SyncMode::None, _) => 0,
            (_, 0) => RUNWAY_MAX as usize,
            _ => runway.min(RUNWAY_MAX) as usize,
        };
        let kept = segment::keep_spares(st, dir, spare_len(segment_max_bytes), keep)?;
        let next_number = kept
            .iter()
            .map(|(n, ..)| n.saturating_add(1))
            .max()
            .unwrap_or(0);
        let ready: VecDeque<_> = match runway {
            0 => Default::default(),
            _ => kept.into_iter().map(|(_, path, f)| (path, f)).collect(),
        };
        // A log that prepares segments starts tight on a nearly full filesystem: the spares
        // it keeps are all the room it can count on (`room.rs`).
        let space = Arc::new(Room::new(
            dir,
            ready.len() as u64,
            segment_max_bytes - segment::SEGMENT_HEADER_LEN,
        ));
        let tight = mode != SyncMode::None
            && tighten_if_nearly_full(&space, st, dir, spare_len(segment_max_bytes));
        // Only a segment of this version is appended to (one of an older version, without
        // marks, is followed by a new segment linked to it).
        let append = tail
            .as_ref()
            .is_some_and(|t| t.len < segment_max_bytes && t.version == segment::SEGMENT_VERSION);
        // What the last segment holds may have outlived a crash in the page cache only (a
        // process killed before its sync): synced now, before a mark declares it or the
        // next segment's link names its length (a power cut would otherwise leave it
        // shorter than the link says, and the log would refuse to open; found by the
        // simulation).
        let last = match &tail {
            Some(t) => {
                let f = st.open(&t.path, append)?;
                f.sync_data()?;
                Some(f)
            }
            None => None,
        };
        let (file, file_len, segment) = match (tail, last) {
            (Some(t), Some(f)) if append => (f, t.len, t),
            (tail, _) => {
                let link = tail.as_ref().map_or(segment::Link::FIRST, |t| t.link());
                let f = segment::create(st, dir, next_seq, &link)?;
                let len = segment::SEGMENT_HEADER_LEN;
                let path = segment::segment_path(dir, next_seq);
                let t = segment::Tail {
                    path,
                    first_seq: next_seq,
                    len,
                    last_record: None,
                    version: segment::SEGMENT_VERSION,
                };
                (f, len, t)
            }
        };
        // The head names the segment records go into from now on.
        segment::write_head(st, dir, segment.first_seq)?;
        let dir_id = st.dir_id(dir)?;
        let manual_writer: Option<Arc<ManualWriter>> = manual.then(|| Arc::new(Mutex::new(None)));
        let shared = Arc::new(Shared {
            next_seq: AtomicU64::new(next_seq),
            durable: AtomicU64::new(next_seq),
            local: AtomicU64::new(next_seq),
            local_waiters: Waiters::default(),
            acks_required: AtomicBool::new(false),
            acked: AtomicU64::new(next_seq),
            synced: AtomicU64::new(next_seq),
            written: AtomicU64::new(next_seq),
            waiters: Waiters::default(),
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            room: Condvar::new(),
            mode,
            syncs: AtomicU64::new(0),
            records: AtomicU64::new(0),
            sync_us: AtomicHistogram::new(FSYNC_EDGES_US),
            sync_records: AtomicHistogram::new(BATCH_EDGES),
            space,
            dead: AtomicBool::new(false),
            manual: manual_writer.as_ref().map(Arc::downgrade),
            submitted: manual.then(Default::default),
        });
        let mut spares = (mode != SyncMode::None).then(|| {
            Spares::new(
                storage.clone(),
                dir,
                SpareSizes {
                    len: spare_len(segment_max_bytes),
                    step: spare_step_bytes,
                },
                runway,
                ready,
                next_number,
                shared.clone(),
                manual,
            )
        });
        if let Some(s) = spares.as_mut().filter(|_| runway > 0 || tight) {
            s.want();
        }
        let mut writer = Writer {
            shared: shared.clone(),
            storage: storage.clone(),
            dir: dir.to_path_buf(),
            file,
            file_len,
            file_zeroed: file_len,
            synced_len: file_len,
            // What a mark in the segment already says is not known here: the first write
            // says it again.
            declared_len: segment::SEGMENT_HEADER_LEN.min(file_len),
            declared_synced_len: segment::SEGMENT_HEADER_LEN.min(file_len),
            unwritten_mark: None,
            mark_end: 0,
            dir_id,
            segment_first_seq: segment.first_seq,
            segment_last_record: segment.last_record,
            spares,
            segment_max_bytes,
            pending: BTreeMap::new(),
            spare_subs: Vec::new(),
            buf: Vec::new(),
            next: next_seq,
            last_sync: Instant::now(),
            unsynced_records: 0,
            claims_written: 0,
            grown_unlooked: 0,
        };
        let driver = match manual_writer {
            Some(m) => {
                *m.lock().expect("wal writer poisoned") = Some(writer);
                Driver::Manual(m)
            }
            None => {
                let handle = std::thread::Builder::new()
                    .name("stile-wal".into())
                    .spawn(move || writer.run())?;
                Driver::Thread(Mutex::new(Some(handle)))
            }
        };
        Ok(Wal {
            shared,
            driver,
            storage,
            dir: dir.to_path_buf(),
            dir_id,
        })
    }

    /// The sync mode.
    pub fn mode(&self) -> SyncMode {
        self.shared.mode
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the log's files are.
    pub fn storage(&self) -> &SharedStorage {
        &self.storage
    }

    /// Whether [`Self::dir`] still names the directory the log was started in.
    pub fn dir_in_place(&self) -> bool {
        self.storage
            .dir_id(&self.dir)
            .is_ok_and(|id| id == self.dir_id)
    }

    /// Reserves `count` sequence numbers for records about to be made. Must be called before
    /// the state changes they will record; the reservation submits itself when dropped.
    pub fn reserve(&self, count: u64) -> Reservation<'_> {
        let first = self.shared.next_seq.fetch_add(count, Ordering::AcqRel);
        Reservation {
            wal: self,
            first,
            count,
            used: 0,
            pushed: 0,
            bytes: Vec::new(),
            last: None,
            claim: 0,
        }
    }

    /// Every sequence number below this is durable.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Every sequence number below this is durable on this machine (per the mode: synced,
    /// or written), whether or not a standby has acknowledged it: what may be sent to one.
    pub fn local_seq(&self) -> u64 {
        self.shared.local.load(Ordering::Acquire)
    }

    /// From now on (`true`) answers also wait for a synchronous standby's acknowledgements
    /// ([`Self::acknowledge`]), or (`false`) no longer do: those waiting go out once durable
    /// here. Changes submitted before the call may not wait: a caller naming a standby
    /// waits for it to acknowledge [`Self::reserved_seq`] read after this call.
    pub fn require_acks(&self, required: bool) {
        self.shared.acks_required.store(required, Ordering::Release);
        self.shared.publish();
    }

    /// Waits, asynchronously, until every number below `seq` is durable here
    /// ([`Self::local_seq`]), acknowledged or not.
    pub async fn until_local(&self, seq: u64) {
        waiters::Until {
            durable: &self.shared.local,
            waiters: &self.shared.local_waiters,
            seq,
        }
        .await
    }

    /// Whether answers wait for a standby's acknowledgements.
    pub fn acks_required(&self) -> bool {
        self.shared.acks_required.load(Ordering::Acquire)
    }

    /// The synchronous standby has synced every number below `seq`.
    pub fn acknowledge(&self, seq: u64) {
        self.shared.acked.fetch_max(seq, Ordering::AcqRel);
        self.shared.publish();
    }

    /// Every number below this was acknowledged by a standby.
    pub fn acked_seq(&self) -> u64 {
        self.shared.acked.load(Ordering::Acquire)
    }

    /// Every sequence number below this is synced to disk (for snapshots: in every mode).
    pub fn synced_seq(&self) -> u64 {
        self.shared.synced.load(Ordering::Acquire)
    }

    /// Every number below this is written, and its change was made in memory first.
    pub fn written_seq(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    /// The next number a reservation gets: every change made so far was numbered below it.
    pub fn reserved_seq(&self) -> u64 {
        self.shared.next_seq.load(Ordering::Acquire)
    }

    /// Group commits and records so far.
    pub fn stats(&self) -> WalStats {
        let h = self.shared.sync_us.snapshot();
        WalStats {
            syncs: self.shared.syncs.load(Ordering::Relaxed),
            records: self.shared.records.load(Ordering::Relaxed),
            sync_p50_us: h.quantile(0.5).unwrap_or(0),
            sync_p99_us: h.quantile(0.99).unwrap_or(0),
        }
    }

    /// `fdatasync` latencies so far, microseconds.
    pub fn sync_latency_us(&self) -> &AtomicHistogram {
        &self.shared.sync_us
    }

    /// Records each `fdatasync` made durable (syncs that covered only unused numbers are not
    /// counted).
    pub fn sync_batch_records(&self) -> &AtomicHistogram {
        &self.shared.sync_records
    }

    /// What waits until every number below `seq` is durable.
    pub fn until(&self, seq: u64) -> Durability {
        Durability {
            wait: Some((self.shared.clone(), seq)),
        }
    }

    /// Blocks until every number below `seq` is durable.
    pub fn wait(&self, seq: u64) {
        wait_blocking(&self.shared, seq);
    }

    /// Blocks until every number below `seq` is synced to disk, whatever the mode: a `batch`
    /// or `none` log syncs for it at once. `false` if the log stopped first.
    pub fn sync_through(&self, seq: u64) -> bool {
        let synced = || self.shared.synced.load(Ordering::Acquire) >= seq;
        if let Some(manual) = &self.shared.manual {
            while !synced() && !self.is_dead() {
                let Some(m) = manual.upgrade() else {
                    break;
                };
                let mut writer = m.lock().expect("wal writer poisoned");
                let Some(w) = writer.as_mut() else {
                    break;
                };
                if matches!((w.step_write(), w.step_sync()), (Ok(false), Ok(false))) {
                    break;
                }
            }
            return synced();
        }
        if self.shared.mode == SyncMode::Always {
            self.wait(seq);
        }
        while !synced() && !self.is_dead() {
            {
                let mut q = self.shared.queue.lock().expect("wal queue poisoned");
                q.sync_wanted = true;
                self.shared.work.notify_one();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        synced()
    }

    /// Whether the log is still where it was opened: its directory at its path, and the
    /// newest segment its head names present. An operator who deletes `wal/` or the live
    /// segment leaves the writer appending to an unlinked file, every record it makes
    /// durable from then on lost at the next start; the node stops instead.
    pub fn in_place(&self) -> bool {
        self.dir_in_place()
            && match segment::read_head(&*self.storage, &self.dir) {
                Ok(Some(first)) => self
                    .storage
                    .exists(&segment::segment_path(&self.dir, first)),
                // A log of the unlinked format has no head until its first switch.
                Ok(None) => true,
                Err(_) => false,
            }
    }

    /// Whether a write or sync failed and the process was told to stop (only a simulated
    /// storage lets it go on to see this).
    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    /// Flushes everything reserved so far, syncs it whatever the mode, and stops the writer.
    pub fn close(&self) {
        {
            let mut q = self.shared.queue.lock().expect("wal queue poisoned");
            q.closing = true;
            self.shared.work.notify_one();
        }
        match &self.driver {
            Driver::Thread(handle) => {
                if let Some(h) = handle.lock().expect("wal writer poisoned").take() {
                    h.join().expect("wal writer thread panicked");
                }
            }
            Driver::Manual(m) => {
                let writer = m.lock().expect("wal writer poisoned").take();
                if let Some(mut w) = writer {
                    w.close_stepped();
                }
            }
        }
    }

    fn submit(&self, sub: Submission) {
        if let Some(log) = &self.shared.submitted {
            let mut log = log.lock().expect("submissions poisoned");
            log.push((sub.first, sub.bytes.clone()));
        }
        let mut q = self.shared.queue.lock().expect("wal queue poisoned");
        while q.bytes > QUEUE_MAX_BYTES && !sub.bytes.is_empty() {
            q.waiting_for_room += 1;
            q = self.shared.room.wait(q).expect("wal queue poisoned");
            q.waiting_for_room -= 1;
        }
        q.bytes += sub.bytes.len();
        q.subs.push(sub);
        if q.writer_asleep || q.bytes > URGENT_BYTES {
            self.shared.work.notify_one();
        }
    }

    #[cfg(any(test, feature = "sim"))]
    /// Runs `f` on the writer of a log stepped by hand; `None` for a threaded or closed log.
    fn with_manual<T>(&self, f: impl FnOnce(&mut Writer) -> T) -> Option<T> {
        match &self.driver {
            Driver::Manual(m) => m.lock().expect("wal writer poisoned").as_mut().map(f),
            Driver::Thread(_) => None,
        }
    }

    #[cfg(any(test, feature = "sim"))]
    /// A log stepped by hand: takes what was submitted and writes the contiguous run of it
    /// (moving to the next segment when one is full), without syncing. Whether anything was
    /// written.
    pub(crate) fn step_write(&self) -> bool {
        self.with_manual(|w| w.step_write().unwrap_or(false))
            .unwrap_or(false)
    }

    #[cfg(any(test, feature = "sim"))]
    /// A log stepped by hand: syncs what is written and not yet synced, and wakes those it
    /// made durable. Whether it synced.
    pub(crate) fn step_sync(&self) -> bool {
        self.with_manual(|w| w.step_sync().unwrap_or(false))
            .unwrap_or(false)
    }

    #[cfg(any(test, feature = "sim"))]
    /// A log stepped by hand: one step of preparing the next spare segment, if one is
    /// wanted. Whether it did anything.
    pub(crate) fn step_spares(&self) -> bool {
        self.with_manual(|w| w.spares.as_mut().is_some_and(Spares::step_manual))
            .unwrap_or(false)
    }

    #[cfg(any(test, feature = "sim"))]
    /// A log stepped by hand: its newest segment and what marks in it declare synced (see
    /// [`Declared`]).
    pub(crate) fn declared(&self) -> Option<Declared> {
        self.with_manual(|w| Declared {
            segment: segment::segment_path(&self.dir, w.segment_first_seq),
            written: w.declared_len,
            synced: w.declared_synced_len,
            len: w.file_len,
        })
    }

    #[cfg(any(test, feature = "sim"))]
    /// A log stepped by hand: the submissions made since the last call, in the order they
    /// were submitted (first number, frames).
    pub(crate) fn take_submitted(&self) -> Vec<Submitted> {
        self.shared
            .submitted
            .as_ref()
            .map(|s| std::mem::take(&mut *s.lock().expect("submissions poisoned")))
            .unwrap_or_default()
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Sequence numbers reserved for one batch of state changes; submits on drop.
#[derive(Debug)]
pub struct Reservation<'w> {
    /// The log.
    wal: &'w Wal,
    /// First reserved number.
    first: u64,
    /// Numbers reserved.
    count: u64,
    /// Numbers used so far (passed over or holding a record).
    used: u64,
    /// Records encoded.
    pushed: u64,
    /// Encoded records.
    bytes: Vec<u8>,
    /// The last one's sequence number and checksum.
    last: Option<(u64, u64)>,
    /// Room claimed for the records (`room.rs`).
    claim: u64,
}

impl Reservation<'_> {
    /// Encodes `record` under the next reserved number.
    pub fn push(&mut self, record: &Record) {
        assert!(self.used < self.count, "more records than reserved numbers");
        if self.bytes.capacity() == 0 {
            // Room for the rest of the reservation's records (a check-in's is 58 bytes) at
            // the first one, so encoding them does not grow the vector step by step; a
            // reservation that records nothing (every code refused) allocates nothing.
            let rest = (self.count - self.used).min(RESERVE_PRESIZE_RECORDS);
            self.bytes.reserve(rest as usize * 64);
        }
        let start = self.bytes.len();
        let seq = self.first + self.used;
        record.encode(seq, &mut self.bytes);
        self.last = Some((seq, record::frame_checksum(&self.bytes[start..])));
        self.used += 1;
        self.pushed += 1;
    }

    /// Encodes `record` under number `seq` of this reservation, leaving the numbers before it
    /// unused: a standby logs its primary's records under their own numbers.
    pub fn push_at(&mut self, seq: u64, record: &Record) {
        assert!(
            seq >= self.first + self.used && seq < self.first + self.count,
            "number {seq} outside what is left of the reservation"
        );
        self.used = seq - self.first;
        self.push(record);
    }

    /// The first number of this reservation.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Submits the records and returns what the answers must wait for: every number reserved
    /// by anyone up to now. Call it after the batch's last observation.
    pub fn submit(mut self) -> Durability {
        self.submit_inner()
    }

    fn submit_inner(&mut self) -> Durability {
        let bytes = std::mem::take(&mut self.bytes);
        let count = std::mem::take(&mut self.count);
        let claim = std::mem::take(&mut self.claim);
        if count > 0 {
            self.wal.submit(Submission {
                first: self.first,
                count,
                records: self.pushed,
                bytes,
                last: self.last,
                claim,
            });
        }
        let shared = &self.wal.shared;
        // With a synchronous standby every mode waits: for what this machine's mode makes of
        // the records, and for the standby's acknowledgement.
        match (shared.mode, shared.acks_required.load(Ordering::Acquire)) {
            (SyncMode::Always, _) | (_, true) => Durability {
                wait: Some((shared.clone(), shared.next_seq.load(Ordering::Acquire))),
            },
            (SyncMode::Batch { .. } | SyncMode::None, false) => Durability::READY,
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.count > 0 {
            let _ = self.submit_inner();
        }
    }
}

/// What an answer must wait for before it goes out. `wait` (blocking) or `wait_async`.
#[must_use = "answers may go out only once what they observed is durable"]
#[derive(Debug, Clone)]
pub struct Durability {
    /// The log and the number everything below which must be durable; `None`: ready now.
    wait: Option<(Arc<Shared>, u64)>,
}

impl Durability {
    /// Nothing to wait for.
    pub const READY: Durability = Durability { wait: None };

    /// Whether the answer may go out now.
    pub fn is_ready(&self) -> bool {
        match &self.wait {
            None => true,
            Some((shared, seq)) => shared.durable.load(Ordering::Acquire) >= *seq,
        }
    }

    /// Blocks until durable.
    pub fn wait(self) {
        if let Some((shared, seq)) = &self.wait {
            wait_blocking(shared, *seq);
        }
    }

    /// Waits until durable, asynchronously.
    pub async fn wait_async(self) {
        let Some((shared, seq)) = &self.wait else {
            return;
        };
        Until {
            durable: &shared.durable,
            waiters: &shared.waiters,
            seq: *seq,
        }
        .await;
    }
}

fn wait_blocking(shared: &Shared, seq: u64) {
    if let Some(manual) = &shared.manual {
        drive_until(shared, manual, seq);
        return;
    }
    waiters::wait_blocking(&shared.durable, &shared.waiters, seq);
}

/// A blocking wait on a log stepped by hand steps its writer until `seq` is durable, or the
/// log is dead or closed (whose caller is then as good as gone: a simulation drops what it
/// answers).
fn drive_until(shared: &Shared, manual: &Weak<ManualWriter>, seq: u64) {
    while shared.durable.load(Ordering::Acquire) < seq && !shared.dead.load(Ordering::Acquire) {
        let Some(m) = manual.upgrade() else {
            return;
        };
        let mut writer = m.lock().expect("wal writer poisoned");
        let Some(w) = writer.as_mut() else {
            return;
        };
        let wrote = w.step_write();
        let synced = w.step_sync();
        if matches!((wrote, synced), (Ok(false), Ok(false))) {
            // Single-threaded, a number below `seq` that is never submitted never will be.
            panic!("a wait on a log stepped by hand cannot progress: a reservation is held");
        }
    }
}

impl Writer {
    fn run(&mut self) {
        let batch_interval = match self.shared.mode {
            SyncMode::Batch { interval_ms } => Some(Duration::from_millis(u64::from(interval_ms))),
            _ => None,
        };
        let linger = match self.shared.mode {
            SyncMode::Always => Some(ALWAYS_LINGER),
            SyncMode::Batch { .. } => batch_interval.map(|d| d.min(LINGER)),
            SyncMode::None => Some(LINGER),
        };
        loop {
            let (subs, closing) = {
                let mut q = self.shared.queue.lock().expect("wal queue poisoned");
                if q.subs.is_empty() && !q.closing && self.mark_due() {
                    // Nothing to write, and the last sync is declared by nothing yet: a mark
                    // of its own (not synced), before sleeping, so that a bit flipped in
                    // the last batch is found even if no batch follows.
                    drop(q);
                    if self.write_mark().is_err() {
                        return;
                    }
                    continue;
                }
                if let Some(mut linger) = linger.filter(|_| q.subs.is_empty() && !q.closing) {
                    // Submissions gather without waking this thread (but for a full queue);
                    // only if none came does it sleep until the next one. A sync that is due
                    // does not wait for the linger.
                    if let Some(d) = batch_interval.filter(|_| self.synced_behind()) {
                        linger = linger.min(d.saturating_sub(self.last_sync.elapsed()));
                    }
                    q = self
                        .shared
                        .work
                        .wait_timeout(q, linger)
                        .expect("wal queue poisoned")
                        .0;
                }
                while q.subs.is_empty() && !q.closing && !q.sync_wanted {
                    q.writer_asleep = true;
                    q = match batch_interval {
                        Some(d) => {
                            self.shared
                                .work
                                .wait_timeout(q, d)
                                .expect("wal queue poisoned")
                                .0
                        }
                        None => self.shared.work.wait(q).expect("wal queue poisoned"),
                    };
                    q.writer_asleep = false;
                    if batch_interval.is_some() && self.synced_behind() {
                        break;
                    }
                }
                let subs = Self::take(&mut self.spare_subs, &self.shared.room, &mut q);
                (subs, q.closing || std::mem::take(&mut q.sync_wanted))
            };
            if self.turn(subs, closing, batch_interval).is_err() {
                return;
            }
            if closing && self.pending.is_empty() && self.all_submitted() && self.closing() {
                let _ = self.finish();
                return;
            }
        }
    }

    /// Takes the queue's submissions (the queue is locked by the caller), leaving it the
    /// emptied vector `spare` in their place.
    fn take(spare: &mut Vec<Submission>, room: &Condvar, q: &mut Queue) -> Vec<Submission> {
        q.bytes = 0;
        if q.waiting_for_room > 0 {
            room.notify_all();
        }
        let mut subs = std::mem::take(spare);
        std::mem::swap(&mut subs, &mut q.subs);
        subs
    }

    fn closing(&self) -> bool {
        self.shared
            .queue
            .lock()
            .expect("wal queue poisoned")
            .closing
    }

    /// One turn of the thread: writes `subs`, syncs if the mode says so now (or `closing`:
    /// the log is closing, or a sync is wanted), and tells the waiters.
    fn turn(
        &mut self,
        subs: Vec<Submission>,
        closing: bool,
        batch_interval: Option<Duration>,
    ) -> Result<(), Stopped> {
        self.write_ready(subs)?;
        let sync_now = match self.shared.mode {
            SyncMode::Always => true,
            SyncMode::Batch { .. } => {
                closing || batch_interval.is_some_and(|d| self.last_sync.elapsed() >= d)
            }
            SyncMode::None => closing,
        };
        if sync_now && self.synced_behind() {
            self.sync()?;
        }
        self.publish();
        Ok(())
    }

    /// Without `always`, what is written counts as durable here; wakes those it covers.
    fn publish(&self) {
        if self.shared.mode != SyncMode::Always {
            self.shared.local.store(self.next, Ordering::Release);
        }
        self.shared.publish();
    }

    /// Stepped by hand: takes the queue and writes the contiguous run. Whether anything was
    /// written.
    fn step_write(&mut self) -> Result<bool, Stopped> {
        if self.is_dead() {
            return Ok(false);
        }
        let subs = {
            let mut q = self.shared.queue.lock().expect("wal queue poisoned");
            Self::take(&mut self.spare_subs, &self.shared.room, &mut q)
        };
        let before = (self.next, self.file_len, self.segment_first_seq);
        // With nothing submitted this writes the mark that is due, if one is.
        self.write_ready(subs)?;
        self.publish();
        Ok((self.next, self.file_len, self.segment_first_seq) != before)
    }

    /// Stepped by hand: syncs what is written and not yet synced, whatever the mode.
    fn step_sync(&mut self) -> Result<bool, Stopped> {
        if self.is_dead() || !self.synced_behind() {
            return Ok(false);
        }
        self.sync()?;
        self.publish();
        Ok(true)
    }

    /// Stepped by hand, on close: writes and syncs what can be, then finishes.
    fn close_stepped(&mut self) {
        loop {
            match self.step_write() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(Stopped) => return,
            }
        }
        if self.step_sync().is_err() || self.is_dead() {
            return;
        }
        let _ = self.finish();
    }

    fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    /// A write or sync failed: the process stops ([`Storage::fail_stop`]); if the storage
    /// lets it go on (a simulation), the log is dead and the writer does nothing more.
    fn fatal(&self, what: &str, e: &std::io::Error) -> Stopped {
        self.storage.fail_stop(what, &self.dir, e);
        self.shared.dead.store(true, Ordering::Release);
        Stopped
    }

    fn synced_behind(&self) -> bool {
        self.shared.synced.load(Ordering::Acquire) < self.next
    }

    fn all_submitted(&self) -> bool {
        self.next >= self.shared.next_seq.load(Ordering::Acquire)
    }

    /// Writes the contiguous run of submissions starting at `next`, from `subs` (just taken
    /// from the queue) and those held back before; the rest are held back for a gap to fill.
    /// A mark goes first when the segment was synced past what its last mark declares.
    fn write_ready(&mut self, mut subs: Vec<Submission>) -> Result<(), Stopped> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if self.mark_due() {
            debug_assert_eq!(
                self.file_len, self.synced_len,
                "a mark goes where it declares"
            );
            record::encode_mark(self.next, self.synced_len, &mut buf);
            self.unwritten_mark = Some(self.synced_len);
        }
        let mut records = 0u64;
        // Submissions come nearly in order: sorted, most are written straight from the
        // batch, and only those behind a gap go through `pending`.
        subs.sort_unstable_by_key(|s| s.first);
        for sub in subs.drain(..) {
            if sub.first != self.next {
                debug_assert!(sub.first > self.next, "numbers are reserved once");
                self.pending.insert(sub.first, sub);
                continue;
            }
            self.put(&mut buf, &mut records, sub)?;
            while let Some(entry) = self.pending.first_entry() {
                if *entry.key() != self.next {
                    break;
                }
                let held = entry.remove();
                self.put(&mut buf, &mut records, held)?;
            }
        }
        self.append(&buf)?;
        self.release_written_claims();
        // A burst's vectors are not kept for ever.
        if subs.capacity() <= KEEP_SUBS_MAX {
            self.spare_subs = subs;
        }
        if buf.capacity() <= KEEP_BUF_MAX {
            self.buf = buf;
        }
        if let Some(spares) = &mut self.spares {
            let used = self.file_len.saturating_sub(segment::SEGMENT_HEADER_LEN);
            if used >= SPARE_AFTER_BYTES.min(self.segment_max_bytes / 2) {
                spares.want();
            }
        }
        self.unsynced_records += records;
        self.shared.records.fetch_add(records, Ordering::Relaxed);
        self.shared.written.store(self.next, Ordering::Release);
        Ok(())
    }

    /// Adds `sub`, the next in sequence, to the write in `buf`, first writing out `buf` and
    /// moving to the next segment if `sub` would not fit this one.
    fn put(
        &mut self,
        buf: &mut Vec<u8>,
        records: &mut u64,
        sub: Submission,
    ) -> Result<(), Stopped> {
        let end = self.file_len + (buf.len() + sub.bytes.len()) as u64;
        let holds_records = self.file_len + buf.len() as u64 > segment::SEGMENT_HEADER_LEN;
        // Past the zeros prepared ahead, every write would grow the file: move to the
        // prepared segment as soon as there is one, even before this one is full.
        let spare_ready =
            end > self.file_zeroed && self.spares.as_ref().is_some_and(|s| s.is_ready());
        if holds_records && (end > self.segment_max_bytes || spare_ready) {
            self.append(buf)?;
            buf.clear();
            self.roll()?;
        }
        if sub.last.is_some() {
            self.segment_last_record = sub.last;
        }
        self.claims_written += sub.claim;
        buf.extend_from_slice(&sub.bytes);
        *records += sub.records;
        self.next = sub.first + sub.count;
        Ok(())
    }

    fn append(&mut self, buf: &[u8]) -> Result<(), Stopped> {
        if buf.is_empty() {
            return Ok(());
        }
        self.count_write(buf.len() as u64);
        if let Err(e) = self.file.write_at(buf, self.file_len) {
            return Err(self.fatal("writing the log", &e));
        }
        self.file_len += buf.len() as u64;
        if let Some(declared) = self.unwritten_mark.take() {
            self.declared_len = declared;
            self.mark_end = declared + record::MARK_FRAME_LEN as u64;
        }
        Ok(())
    }

    /// Writes a mark declaring what is synced, alone (not synced itself).
    fn write_mark(&mut self) -> Result<(), Stopped> {
        debug_assert_eq!(
            self.file_len, self.synced_len,
            "a mark goes where it declares"
        );
        let mut mark = Vec::with_capacity(record::MARK_FRAME_LEN);
        record::encode_mark(self.next, self.synced_len, &mut mark);
        self.unwritten_mark = Some(self.synced_len);
        self.append(&mark)
    }

    /// Whether the segment was synced past what its last mark declares, and past that mark.
    fn mark_due(&self) -> bool {
        self.synced_len > self.declared_len && self.synced_len != self.mark_end
    }

    /// Syncs the segment's data (and length), no statistics: part of sealing it.
    fn sync_file(&mut self) -> Result<(), Stopped> {
        if let Err(e) = self.file.sync_data() {
            return Err(self.fatal("fdatasync of the log", &e));
        }
        self.synced_len = self.file_len;
        self.declared_synced_len = self.declared_len;
        Ok(())
    }

    /// Ends the segment for good: everything written synced, a mark declaring all of it,
    /// the zeros after it cut off, synced. A segment switched away from, or the last one at
    /// a clean close, is thus declared to its last byte.
    fn seal(&mut self) -> Result<(), Stopped> {
        if self.synced_len < self.file_len || self.synced_behind() {
            self.sync()?;
        }
        if self.mark_due() {
            self.write_mark()?;
        }
        let cut = self.cut_zeros()?;
        if cut || self.synced_len < self.file_len {
            self.sync_file()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Stopped> {
        let started = Instant::now();
        if let Err(e) = self.file.sync_data() {
            return Err(self.fatal("fdatasync of the log", &e));
        }
        let us = started.elapsed().as_micros().max(1) as u64;
        self.shared.sync_us.record(us);
        if self.unsynced_records > 0 {
            self.shared.sync_records.record(self.unsynced_records);
            self.unsynced_records = 0;
        }
        self.last_sync = Instant::now();
        self.synced_len = self.file_len;
        self.declared_synced_len = self.declared_len;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.shared.synced.store(self.next, Ordering::Release);
        if self.shared.mode == SyncMode::Always {
            self.shared.local.store(self.next, Ordering::Release);
            self.shared.publish();
        }
        Ok(())
    }

    /// Closes the current segment (sealed: synced, declared by a mark, ending where its
    /// frames do) and starts the next one at `next`: the prepared spare if there is one, else a new file.
    fn roll(&mut self) -> Result<(), Stopped> {
        self.seal()?;
        if self.storage.dir_id(&self.dir).ok() != Some(self.dir_id) {
            let e = std::io::Error::other("the directory was moved or replaced while in use");
            return Err(self.fatal("switching segments: the log directory", &e));
        }
        let link = segment::Link {
            prev_first_seq: self.segment_first_seq,
            prev_len: self.file_len,
            prev_last_seq: self.segment_last_record.map_or(u64::MAX, |r| r.0),
            prev_last_sum: self.segment_last_record.map_or(u64::MAX, |r| r.1),
        };
        let spare = self
            .spares
            .as_mut()
            .and_then(|s| Some((s.take()?, s.sizes.len)));
        let st = &*self.storage;
        let (file, zeroed) = match spare {
            Some(((path, f), len)) => {
                if let Err(e) = segment::adopt_spare(st, &self.dir, &path, &*f, self.next, &link) {
                    return Err(self.fatal("switching to the prepared log segment in", &e));
                }
                (f, len)
            }
            None => match segment::create(st, &self.dir, self.next, &link) {
                Ok(f) => (f, segment::SEGMENT_HEADER_LEN),
                Err(e) => return Err(self.fatal("creating a log segment in", &e)),
            },
        };
        self.file = file;
        self.file_len = segment::SEGMENT_HEADER_LEN;
        self.file_zeroed = zeroed;
        self.synced_len = segment::SEGMENT_HEADER_LEN;
        self.declared_len = segment::SEGMENT_HEADER_LEN;
        self.declared_synced_len = segment::SEGMENT_HEADER_LEN;
        self.mark_end = 0;
        self.segment_first_seq = self.next;
        self.segment_last_record = None;
        if let Err(e) = segment::write_head(&*self.storage, &self.dir, self.next) {
            return Err(self.fatal("recording the log's newest segment in", &e));
        }
        self.look_at_room();
        Ok(())
    }

    /// Drops the zeros after the last record, so a closed segment ends where its records do.
    /// Whether there were any.
    fn cut_zeros(&mut self) -> Result<bool, Stopped> {
        if self.file_zeroed <= self.file_len {
            return Ok(false);
        }
        self.count_cut();
        if let Err(e) = self.file.set_len(self.file_len) {
            return Err(self.fatal("truncating the log segment in", &e));
        }
        self.file_zeroed = self.file_len;
        Ok(true)
    }

    /// On close: the last segment is sealed (synced, declared to its end by a mark, no
    /// zeros after it); whole spares stay for the next start with a runway, and without one
    /// none is left.
    fn finish(&mut self) -> Result<(), Stopped> {
        self.seal()?;
        // Dropping the spares stops their thread (and, without a runway, removes the unused
        // ones).
        self.spares.take();
        Ok(())
    }
}

/// Largest submission vector the writer keeps for the queue's next one.
const KEEP_SUBS_MAX: usize = 1 << 16;
/// Largest write buffer the writer keeps for its next write.
const KEEP_BUF_MAX: usize = 8 << 20;

/// At its first record, a reservation makes room for this many records (more grow it).
const RESERVE_PRESIZE_RECORDS: u64 = 256;

/// Bytes written into the current segment before the next one is prepared (or half a
/// segment, if that is less).
const SPARE_AFTER_BYTES: u64 = 1 << 20;

/// Bytes of a prepared segment for segments of `segment_max_bytes`: room for the batch that
/// crosses the limit too.
fn spare_len(segment_max_bytes: u64) -> u64 {
    segment_max_bytes + segment_max_bytes.min(1 << 20)
}

/// Prepared segments a node keeps ready by default (`stile node --log-runway`): 256 MiB of
/// log a burst can write with no file growing and no zeros being written beside it.
pub const RUNWAY_DEFAULT: u32 = 4;
/// Most prepared segments a log keeps (`--log-runway` is checked against it).
pub const RUNWAY_MAX: u32 = 64;

/// Records the log may write between two looks of the preparing thread (a step, or a
/// pause) for the log to count as quiet, so the next step follows at once.
const QUIET_RECORDS: u64 = 8;
/// While the log is busy, spares are written (slowly) only when fewer than this many are
/// ready: a burst shorter than the runway has no zeros written beside it at all.
const RUNWAY_LOW: usize = 2;
/// The whole runway is kept only while the filesystem would keep this many more segments
/// free beside the next spare, so that it never takes the room the log and snapshots need;
/// with less, the log is tight and one spare at a time is kept (`room.rs`).
const FREE_SEGMENTS_KEPT: u64 = 4;
/// How long the preparing thread waits after a failure before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long it waits while the filesystem has no room for a spare, before looking again: a
/// log that refuses changes for lack of room takes them again within this of space coming
/// back.
const RETRY_FULL_AFTER: Duration = Duration::from_secs(1);

/// A prepared spare: its temporary (ready) path and the open file.
type ReadySpare = (PathBuf, Box<dyn StorageFile>);

/// What the writer and the preparing thread share.
#[derive(Debug, Default)]
struct SpareQueue {
    /// Prepared segments, oldest first, each under its own temporary name.
    ready: VecDeque<ReadySpare>,
    /// The writer wants spares: with a runway, from the start on; without one, from when
    /// its segment holds [`SPARE_AFTER_BYTES`] until it takes the spare.
    wanted: bool,
    /// The log is closing.
    closing: bool,
}

/// The queue and its signal.
#[derive(Debug)]
struct SpareSlot {
    queue: Mutex<SpareQueue>,
    changed: Condvar,
    /// The log's room, which each spare made adds to (`room.rs`).
    space: Arc<Room>,
}

impl SpareSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SpareQueue> {
        self.queue.lock().expect("spare queue poisoned")
    }
}

/// A spare's length and the zeros written per step of its preparation.
#[derive(Debug, Clone, Copy)]
struct SpareSizes {
    len: u64,
    step: usize,
}

/// Prepares the next segments on a thread of its own, so the writer never waits for one
/// (or, for a log stepped by hand, a step at a time when stepped). Dropping it stops the
/// thread; the unused spares are kept for the log's next start, or, without a runway,
/// removed.
#[derive(Debug)]
struct Spares {
    slot: Arc<SpareSlot>,
    thread: Option<JoinHandle<()>>,
    storage: SharedStorage,
    dir: PathBuf,
    sizes: SpareSizes,
    /// Prepared segments to keep ready (at least one).
    runway: usize,
    /// No runway: one spare at a time, asked for anew for each segment (and kept while the
    /// log is tight).
    lazy: bool,
    /// Whether this writer has asked since it last took a spare (saves the lock).
    asked: bool,
    /// The number the next spare's names take.
    next_number: u64,
    /// The log's state, whose records written tell a quiet log from a busy one.
    shared: Arc<Shared>,
    /// Stepped by hand: no thread, and the spare being made, if any.
    manual: Option<Option<segment::SpareWriter>>,
}

impl Spares {
    /// `ready`: whole spares a previous run left (paths and files), used first;
    /// `next_number`: the number the first spare made here takes.
    #[allow(clippy::too_many_arguments)]
    fn new(
        storage: SharedStorage,
        dir: &Path,
        sizes: SpareSizes,
        runway: u32,
        ready: VecDeque<ReadySpare>,
        next_number: u64,
        shared: Arc<Shared>,
        manual: bool,
    ) -> Self {
        Spares {
            slot: Arc::new(SpareSlot {
                queue: Mutex::new(SpareQueue {
                    ready,
                    ..SpareQueue::default()
                }),
                changed: Condvar::new(),
                space: shared.space.clone(),
            }),
            thread: None,
            storage,
            dir: dir.to_path_buf(),
            sizes,
            runway: runway.clamp(1, RUNWAY_MAX) as usize,
            lazy: runway == 0,
            asked: false,
            next_number,
            shared,
            manual: manual.then_some(None),
        }
    }

    /// Asks for spares, starting the thread the first time.
    fn want(&mut self) {
        if self.asked {
            return;
        }
        self.asked = true;
        {
            let mut q = self.slot.lock();
            q.wanted = true;
            self.slot.changed.notify_all();
        }
        if self.thread.is_none() && self.manual.is_none() {
            let (slot, storage, dir, sizes, runway) = (
                self.slot.clone(),
                self.storage.clone(),
                self.dir.clone(),
                self.sizes,
                self.runway,
            );
            let (first, keep) = (self.next_number, !self.lazy);
            let shared = self.shared.clone();
            let log_records = move || shared.records.load(Ordering::Relaxed);
            let run = move || {
                let place = SparePlace {
                    storage: &*storage,
                    dir: &dir,
                    sizes,
                };
                prepare_spares(&slot, &place, runway, first, keep, log_records)
            };
            match std::thread::Builder::new()
                .name("stile-wal-spare".into())
                .spawn(run)
            {
                Ok(h) => self.thread = Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the thread that prepares log segments");
                }
            }
        }
    }

    fn is_ready(&self) -> bool {
        !self.slot.lock().ready.is_empty()
    }

    /// The oldest ready spare, if there is one: its temporary path and file.
    fn take(&mut self) -> Option<ReadySpare> {
        let mut q = self.slot.lock();
        let spare = q.ready.pop_front()?;
        if self.lazy {
            q.wanted = false;
            self.asked = false;
        }
        self.slot.changed.notify_all();
        Some(spare)
    }

    #[cfg(any(test, feature = "sim"))]
    /// Stepped by hand: one step of making the next spare, if one is wanted (begin it, write
    /// a step of zeros, or finish and rename it). Whether it did anything. A failure removes
    /// the spare in the making; the next step begins another.
    fn step_manual(&mut self) -> bool {
        let Some(current) = self.manual.as_mut() else {
            return false;
        };
        let st = &*self.storage;
        let room = &*self.slot.space;
        // As the preparing thread: the runway while roomy, one spare while tight.
        let roomy = !tighten_if_nearly_full(room, st, &self.dir, self.sizes.len);
        let target = if roomy { self.runway } else { 1 };
        {
            let q = self.slot.lock();
            if q.closing || !(q.wanted || room.is_tight()) || q.ready.len() >= target {
                return false;
            }
        }
        let Some(mut spare) = current.take() else {
            if st.free_bytes(&self.dir).is_some_and(|f| f < self.sizes.len) {
                return false;
            }
            let n = self.next_number;
            self.next_number += 1;
            let (path, ready) = (
                segment::spare_path_numbered(&self.dir, n),
                segment::ready_spare_path(&self.dir, n),
            );
            match segment::SpareWriter::begin(st, &path, &ready, self.sizes.len, self.sizes.step) {
                Ok(w) => *current = Some(w),
                Err(_) => {
                    let _ = st.remove(&path);
                }
            }
            return true;
        };
        match spare.step() {
            Ok(false) => *current = Some(spare),
            Ok(true) => {
                let (path, ready) = (spare.path().to_path_buf(), spare.ready().to_path_buf());
                match spare.finish(st) {
                    Ok(f) => {
                        self.slot.lock().ready.push_back((ready, f));
                        room.spare_made(roomy);
                    }
                    Err(_) => {
                        let _ = st.remove(&path);
                    }
                }
            }
            Err(_) => {
                let _ = spare.abandon(st);
            }
        }
        true
    }

    /// Stops the thread and, without a runway, removes the unused spares; with one they
    /// stay, whole, for the log's next start.
    fn stop(&mut self) {
        let unused = {
            let mut q = self.slot.lock();
            q.closing = true;
            self.slot.changed.notify_all();
            std::mem::take(&mut q.ready)
        };
        if let Some(h) = self.thread.take() {
            if h.join().is_err() {
                tracing::warn!("the thread that prepares log segments panicked");
            }
        }
        if let Some(spare) = self.manual.as_mut().and_then(Option::take) {
            let _ = spare.abandon(&*self.storage);
        }
        for (path, file) in unused {
            drop(file);
            if !self.lazy {
                continue;
            }
            if let Err(e) = self.storage.remove(&path) {
                tracing::warn!(error = %e, "removing the unused prepared log segment");
            }
        }
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where spares are made, and how big.
struct SparePlace<'a> {
    storage: &'a dyn Storage,
    dir: &'a Path,
    sizes: SpareSizes,
}

/// The preparing thread: keeps `runway` spares ready while the writer wants them, until the
/// log closes. While the log is quiet it writes at the disk's speed; while it is busy
/// (more than [`QUIET_RECORDS`] records between two looks) it waits, or, with fewer than
/// [`RUNWAY_LOW`] spares left, goes on a step every [`segment::SPARE_PAUSE`]. With room for
/// [`FREE_SEGMENTS_KEPT`] more segments beside a spare it keeps the whole runway; with less,
/// the log turns tight (`room.rs`) and it keeps one spare, as long as one fits; with no
/// room for one, or when the filesystem says it is full, it looks again every
/// [`RETRY_FULL_AFTER`]. After another failure it tries again [`RETRY_AFTER`] later. A
/// tight log is kept a spare even without a runway, so that it never waits for one. Spares
/// are numbered from `first`; one finished as the log closes is kept if `keep`, else
/// removed.
fn prepare_spares(
    slot: &SpareSlot,
    place: &SparePlace<'_>,
    runway: usize,
    first: u64,
    keep: bool,
    log_records: impl Fn() -> u64,
) {
    let (storage, dir, len) = (place.storage, place.dir, place.sizes.len);
    let room = &*slot.space;
    let closing = || slot.lock().closing;
    // Waits `d` unless the log closes meanwhile; whether it is closing.
    let wait_closing = |d: Duration| {
        let q = slot.lock();
        let (q, _) = slot
            .changed
            .wait_timeout_while(q, d, |q| !q.closing)
            .expect("spare queue poisoned");
        q.closing
    };
    let mut seen = log_records();
    let mut made = first;
    // Spares to keep ready: the runway, or one on a nearly full filesystem.
    let mut target = runway;
    // Whether the last attempt found no room (said once, until a spare is made).
    let mut out_of_room = false;
    loop {
        {
            let mut q = slot.lock();
            while !q.closing && (!(q.wanted || room.is_tight()) || q.ready.len() >= target) {
                q = slot.changed.wait(q).expect("spare queue poisoned");
            }
            if q.closing {
                return;
            }
        }
        // After each step (and before the first): on at once while the log is quiet; while
        // it is busy, a step every SPARE_PAUSE if the runway is down to its last spare, else
        // none at all.
        let mut pace = || loop {
            let now = log_records();
            let busy = now.saturating_sub(seen) > QUIET_RECORDS;
            seen = now;
            if !busy || closing() {
                return;
            }
            let low = slot.lock().ready.len() < RUNWAY_LOW;
            std::thread::sleep(segment::SPARE_PAUSE);
            if low {
                return;
            }
        };
        // Before any pause: a log on a filling disk turns tight at once.
        let roomy = !tighten_if_nearly_full(room, storage, dir, len);
        target = if roomy { runway } else { 1 };
        pace();
        let free = storage.free_bytes(dir);
        if free.is_some_and(|f| f < len) {
            if !out_of_room {
                tracing::warn!(
                    path = %dir.display(),
                    free_bytes = free.unwrap_or(0),
                    "no room for another log segment: {} bytes of prepared log left; looking \
                     again every {} s",
                    room.credit(),
                    RETRY_FULL_AFTER.as_secs()
                );
                out_of_room = true;
            }
            if wait_closing(RETRY_FULL_AFTER) {
                return;
            }
            continue;
        }
        if slot.lock().ready.len() >= target {
            continue;
        }
        let path = segment::spare_path_numbered(dir, made);
        let ready = segment::ready_spare_path(dir, made);
        made += 1;
        let prepared = segment::prepare_spare(
            storage,
            &path,
            &ready,
            len,
            place.sizes.step,
            closing,
            &mut pace,
        );
        let mut q = slot.lock();
        match prepared {
            Ok(Some(f)) if !q.closing => {
                q.ready.push_back((ready, f));
                drop(q);
                out_of_room = false;
                room.spare_made(roomy);
            }
            Ok(whole) => {
                drop(q);
                if whole.is_some() && !keep {
                    let _ = storage.remove(&ready);
                }
                return;
            }
            Err(e) if room::out_of_space(&e) => {
                drop(q);
                let _ = storage.remove(&path);
                if room.tighten() || !out_of_room {
                    tracing::warn!(
                        path = %dir.display(),
                        error = %e,
                        "no room for another log segment: {} bytes of prepared log left, and \
                         changes will be refused once they are used; trying again every {} s",
                        room.credit(),
                        RETRY_FULL_AFTER.as_secs()
                    );
                }
                out_of_room = true;
                if wait_closing(RETRY_FULL_AFTER) {
                    return;
                }
            }
            Err(e) => {
                drop(q);
                tracing::warn!(
                    "preparing a log segment in {}: {e}; trying again in {} s, creating \
                     segments as they are needed meanwhile",
                    dir.display(),
                    RETRY_AFTER.as_secs()
                );
                let _ = storage.remove(&path);
                if wait_closing(RETRY_AFTER) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::record::FRAME_HEADER_LEN;
    use super::*;
    #[allow(unused_imports)]
    use crate::storage::StdStorage;
    use std::os::unix::fs::FileExt;

    /// A record of ticket `serial` (the tests of this module and of `tail.rs`).
    pub(crate) fn state(serial: u32) -> Record {
        Record::State {
            partition: 0,
            serial,
            word: u64::from(serial) << 8,
            first_scan_e: serial,
            scan: None,
        }
    }

    /// Where the frames of a segment's bytes end (after the header).
    fn frames_end(bytes: &[u8]) -> usize {
        let mut at = segment::SEGMENT_HEADER_LEN as usize;
        while let Ok((_, _, len)) = record::decode_frame(&bytes[at..]) {
            at += len;
        }
        at
    }

    /// Runs `f` on a thread of its own and fails if it does not return within `limit` (a lost
    /// wake-up would otherwise hang the test run).
    fn within(limit: Duration, f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        match rx.recv_timeout(limit) {
            Ok(()) => worker.join().unwrap(),
            Err(_) if worker.is_finished() => worker.join().unwrap(), // the panic, if any
            Err(_) => panic!("not done within {limit:?}: a wake-up was lost"),
        }
    }

    /// Submitters wake the writer only while it sleeps with nothing to do; racing that rule,
    /// from many threads, never strands a submission: every one becomes durable.
    #[test]
    fn racing_submitters_are_all_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(Wal::start(dir.path(), 0, None, SyncMode::Always, 64 << 20).unwrap());
        let w = wal.clone();
        within(Duration::from_secs(60), move || {
            std::thread::scope(|s| {
                for t in 0..16u32 {
                    let w = &w;
                    s.spawn(move || {
                        for i in 0..200 {
                            let mut r = w.reserve(1);
                            r.push(&state(t * 1000 + i));
                            let d = r.submit();
                            d.wait();
                        }
                    });
                }
            });
        });
        assert_eq!(wal.durable_seq(), 16 * 200);
        assert_eq!(wal.stats().records, 16 * 200);
    }

    /// Reservations submitted out of their order, some in writer takes of their own and one
    /// with a number left unused: nothing past a gap becomes durable, and the log holds every
    /// record in sequence order, each under its own number.
    #[test]
    fn submissions_out_of_order_are_written_in_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(Wal::start(dir.path(), 0, None, SyncMode::Always, 64 << 20).unwrap());
        let w = wal.clone();
        within(Duration::from_secs(60), move || {
            // Numbers: a 0, b 1..=2, c 3 (left unused), d 4, e 5..=7.
            let mut a = w.reserve(1);
            let mut b = w.reserve(2);
            let c = w.reserve(1);
            let mut d = w.reserve(1);
            let mut e = w.reserve(3);
            a.push(&state(10));
            b.push(&state(11));
            b.push(&state(12));
            d.push(&state(14));
            for serial in [15, 16, 17] {
                e.push(&state(serial));
            }
            // Past the gap at 0: held back, in one take and then in another.
            let after_e = e.submit();
            std::thread::sleep(Duration::from_millis(30));
            let after_d = d.submit();
            std::thread::sleep(Duration::from_millis(30));
            assert_eq!(w.durable_seq(), 0, "nothing is durable past the gap at 0");
            assert!(!after_e.is_ready() && !after_d.is_ready());
            // b, then a (in one take or two, as the writer wakes); c is still missing.
            drop(b);
            drop(a);
            let started = Instant::now();
            while w.durable_seq() < 3 {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "a and b durable"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(30));
            assert_eq!(w.durable_seq(), 3, "nothing is durable past the gap at 3");
            drop(c);
            after_e.wait();
            after_d.wait();
            assert_eq!(w.durable_seq(), 8);
        });
        wal.close();
        let mut seen = Vec::new();
        segment::scan(&StdStorage, dir.path(), 0, |seq, record| {
            let Record::State { serial, .. } = record else {
                return Err(format!("not a state record: {record:?}"));
            };
            seen.push((seq, serial));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                (0, 10),
                (1, 11),
                (2, 12),
                (4, 14),
                (5, 15),
                (6, 16),
                (7, 17)
            ]
        );
    }

    /// In `none` and `batch` modes the writer lingers instead of being woken for every
    /// submission: what is submitted is still written without any further submission (after
    /// the writer went to sleep too), a blocking waiter is released, and `batch` still syncs
    /// on its interval. Nothing is timed: a writer that missed a submission would leave
    /// `wait` blocked and the hang guard would fail the test.
    #[test]
    fn lingering_writers_write_without_another_submission() {
        for mode in [SyncMode::None, SyncMode::Batch { interval_ms: 5 }] {
            let dir = tempfile::tempdir().unwrap();
            let wal = Arc::new(Wal::start(dir.path(), 0, None, mode, 64 << 20).unwrap());
            let w = wal.clone();
            within(Duration::from_secs(60), move || {
                for round in 0..20u32 {
                    if round % 2 == 1 {
                        // Long enough for the writer to stop lingering and sleep.
                        std::thread::sleep(LINGER * 3);
                    }
                    let mut r = w.reserve(1);
                    r.push(&state(round));
                    assert!(r.submit().is_ready(), "{mode:?} answers at once");
                    w.wait(u64::from(round) + 1);
                    assert!(w.written_seq() > u64::from(round));
                }
                if matches!(mode, SyncMode::Batch { .. }) {
                    // No submission follows: only the interval can sync these.
                    while w.synced_seq() < 20 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            });
            wal.close();
            let mut seen = 0;
            segment::scan(&StdStorage, dir.path(), 0, |_, _| {
                seen += 1;
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, 20, "{mode:?}: every record is in the log after close");
        }
    }

    /// In `always` mode the writer lingers after a sync instead of sleeping at once, so a
    /// submission then does not wake it: each is still synced without a further submission,
    /// whether it came during the linger (submitted right after the previous answer) or
    /// after the writer went to sleep. Nothing is timed: a missed submission leaves `wait`
    /// blocked and the hang guard fails the test.
    #[test]
    fn the_always_writers_linger_misses_no_submission() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(Wal::start(dir.path(), 0, None, SyncMode::Always, 64 << 20).unwrap());
        let w = wal.clone();
        within(Duration::from_secs(60), move || {
            for round in 0..200u32 {
                if round % 50 == 49 {
                    std::thread::sleep(ALWAYS_LINGER * 20);
                }
                let mut r = w.reserve(1);
                r.push(&state(round));
                let pending = r.submit();
                pending.wait();
                assert!(
                    w.synced_seq() > u64::from(round),
                    "answered before its sync"
                );
            }
        });
        wal.close();
    }

    /// Segments prepared ahead are zeros past their records while live; closed segments end
    /// at their last record; a copy of the live log recovers every durable record with the
    /// zeros cut off; a closed log leaves neither zeros nor a spare behind.
    #[test]
    fn prepared_segments_hold_zeros_only_past_the_live_end() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 0, None, SyncMode::Always, 64 << 10).unwrap();
        let mut serial = 0u32;
        let started = Instant::now();
        let prepared_live = loop {
            let mut r = wal.reserve(50);
            for _ in 0..50 {
                r.push(&state(serial));
                serial += 1;
            }
            r.submit().wait();
            let segments = segment::list(&StdStorage, dir.path()).unwrap();
            let last = std::fs::read(&segments.last().unwrap().1).unwrap();
            if segments.len() >= 3 && frames_end(&last) < last.len() {
                break segments;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no prepared segment in use after {serial} records"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        for (_, path) in &prepared_live[..prepared_live.len() - 1] {
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(
                frames_end(&bytes),
                bytes.len(),
                "{} ends in its records",
                path.display()
            );
        }
        let last = std::fs::read(&prepared_live.last().unwrap().1).unwrap();
        let end = frames_end(&last);
        assert!(
            last[end..].iter().all(|&b| b == 0),
            "past the records: zeros"
        );
        assert!(last.len() - end > FRAME_HEADER_LEN, "room prepared ahead");

        // A copy taken now is what a crash would leave.
        let copy = tempfile::tempdir().unwrap();
        for (_, path) in segment::list(&StdStorage, dir.path()).unwrap() {
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
        }
        let head = segment::HEAD_FILE;
        std::fs::copy(dir.path().join(head), copy.path().join(head)).unwrap();
        let mut seen = Vec::new();
        let end = segment::scan(&StdStorage, copy.path(), 0, |seq, record| {
            seen.push((seq, record));
            Ok(())
        })
        .unwrap();
        assert_eq!(end.next_seq, u64::from(serial));
        assert_eq!(end.truncated_bytes, 0, "no record was torn");
        assert!(end.unwritten_bytes > 0, "the zeros were cut off");
        assert_eq!(seen.len(), serial as usize);
        for (i, (seq, record)) in seen.iter().enumerate() {
            assert_eq!((*seq, record), (i as u64, &state(i as u32)));
        }

        wal.close();
        for (_, path) in segment::list(&StdStorage, dir.path()).unwrap() {
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                frames_end(&bytes),
                bytes.len(),
                "{} ends in its records",
                path.display()
            );
        }
        assert_eq!(
            spares_in(dir.path()),
            Vec::<PathBuf>::new(),
            "no spare left"
        );
    }

    /// Fails unless `p` is named as a whole spare and holds a segment header and zeros up to
    /// `len` bytes.
    fn assert_is_whole_spare(p: &Path, len: u64) {
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("next-segment-ready-"), "{name}");
        let bytes = std::fs::read(p).unwrap();
        assert_eq!(bytes.len() as u64, len, "{name}");
        let (header, zeros) = bytes.split_at(segment::SEGMENT_HEADER_LEN as usize);
        assert_eq!(&header[..8], segment::SEGMENT_MAGIC, "{name}");
        assert!(zeros.iter().all(|&b| b == 0), "{name} holds only zeros");
    }

    /// Writes records of tickets `serial`, 50 at a time and each group durable, until
    /// `done()` (a minute at most).
    fn write_until(wal: &Wal, serial: &mut u32, done: impl Fn() -> bool) {
        let started = Instant::now();
        while !done() {
            let mut r = wal.reserve(50);
            for _ in 0..50 {
                r.push(&state(*serial));
                *serial += 1;
            }
            r.submit().wait();
            assert!(started.elapsed() < Duration::from_secs(60), "never done");
        }
    }

    /// Waits (a minute at most) until `dir` holds `n` whole spares and nothing in the making.
    fn wait_for_whole_spares(dir: &Path, n: usize) {
        let whole = |p: &PathBuf| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("next-segment-ready-")
        };
        let started = Instant::now();
        loop {
            let spares = spares_in(dir);
            if spares.len() == n && spares.iter().all(whole) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the runway never filled: {spares:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The prepared segments in `dir`, whole or in the making.
    fn spares_in(dir: &Path) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(segment::is_spare_name)
            })
            .collect();
        out.sort();
        out
    }

    /// Once wanted, an idle log keeps `runway` segments prepared, no more; a burst then
    /// rolls through them in order, and every record is in the log.
    #[test]
    fn an_idle_log_keeps_its_runway_of_prepared_segments() {
        let dir = tempfile::tempdir().unwrap();
        let seg = 64u64 << 10;
        let wal = Wal::start_with_runway(dir.path(), 0, None, SyncMode::Always, seg, 3).unwrap();
        let mut serial = 0u32;
        let mut write = |records: u32| {
            for _ in 0..records / 50 {
                let mut r = wal.reserve(50);
                for _ in 0..50 {
                    r.push(&state(serial));
                    serial += 1;
                }
                r.submit().wait();
            }
        };
        // Half a segment of records: the writer wants spares.
        write(1_000);
        wait_for_whole_spares(dir.path(), 3);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(spares_in(dir.path()).len(), 3, "no more than the runway");

        // A burst of five segments' worth.
        write(15_000);
        let segments = segment::list(&StdStorage, dir.path()).unwrap();
        assert!(segments.len() >= 5, "{segments:?}");
        // Quiet again: the runway fills up again, and stays after close for the next start.
        wait_for_whole_spares(dir.path(), 3);
        wal.close();
        let left = spares_in(dir.path());
        assert_eq!(left.len(), 3, "{left:?}");
        for p in &left {
            assert_is_whole_spare(p, spare_len(seg));
        }
        let mut seen = Vec::new();
        segment::scan(&StdStorage, dir.path(), 0, |seq, record| {
            seen.push((seq, record));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 16_000);
        for (i, (seq, record)) in seen.iter().enumerate() {
            assert_eq!((*seq, record), (i as u64, &state(i as u32)));
        }
    }

    /// Without a runway, each segment asks for its spare anew: none is prepared for a
    /// segment that has not yet held half its size.
    #[test]
    fn without_a_runway_a_spare_is_prepared_only_for_a_segment_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let seg = 64u64 << 10;
        let wal = Wal::start(dir.path(), 0, None, SyncMode::Always, seg).unwrap();
        let mut serial = 0u32;
        // Write until the log has moved into a prepared segment (zeros past its records).
        let in_prepared = || {
            let segments = segment::list(&StdStorage, dir.path()).unwrap();
            let last = std::fs::read(&segments.last().unwrap().1).unwrap();
            segments.len() >= 2 && frames_end(&last) < last.len()
        };
        write_until(&wal, &mut serial, in_prepared);
        // The new segment holds a record or two: no spare for it yet, however long it waits.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(spares_in(dir.path()), Vec::<PathBuf>::new());
        wal.close();
    }

    /// Dropping the spares (a writer that never started, or one that unwound) stops their
    /// thread: nothing is written after, and only whole spares stay.
    #[test]
    fn dropped_spares_stop_their_thread_and_keep_only_whole_ones() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Wal::start(dir.path(), 0, None, SyncMode::Always, 64 << 10)
            .unwrap()
            .shared
            .clone();
        let spares_dir = dir.path().join("spares");
        std::fs::create_dir(&spares_dir).unwrap();
        let sizes = SpareSizes {
            len: spare_len(64 << 10),
            step: segment::SPARE_STEP,
        };
        let mut spares = Spares::new(
            StdStorage::shared(),
            &spares_dir,
            sizes,
            2,
            VecDeque::new(),
            0,
            shared,
            false,
        );
        spares.want();
        let started = Instant::now();
        while spares_in(&spares_dir).len() < 2 || !spares.is_ready() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never prepared"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let slot = spares.slot.clone();
        drop(spares);
        assert!(slot.lock().closing);
        let left = spares_in(&spares_dir);
        assert!(!left.is_empty(), "the ready spare stays");
        for p in &left {
            assert_is_whole_spare(p, spare_len(64 << 10));
        }
        // Nothing made or changed after the drop.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(spares_in(&spares_dir), left);
    }

    /// A log's whole spares are the next start's runway, used as they are (the same files,
    /// not written again); a spare a crash cut short, one of another length, one with a bad
    /// header and those past the runway are removed.
    #[test]
    fn whole_spares_outlive_a_restart_and_the_rest_are_removed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let seg = 64u64 << 10;
        let len = spare_len(seg);
        let wal = Wal::start_with_runway(dir.path(), 0, None, SyncMode::Always, seg, 3).unwrap();
        let mut serial = 0u32;
        let write = |wal: &Wal, serial: &mut u32, records: u32| {
            for _ in 0..records / 50 {
                let mut r = wal.reserve(50);
                for _ in 0..50 {
                    r.push(&state(*serial));
                    *serial += 1;
                }
                r.submit().wait();
            }
        };
        write(&wal, &mut serial, 500);
        wait_for_whole_spares(dir.path(), 3);
        wal.close();
        let kept = spares_in(dir.path());
        assert_eq!(kept.len(), 3, "{kept:?}");
        for p in &kept {
            assert_is_whole_spare(p, len);
        }
        let inodes: Vec<u64> = kept
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().ino())
            .collect();

        // What a crash and other versions leave beside them.
        let header = [
            &segment::SEGMENT_MAGIC[..],
            &segment::SEGMENT_VERSION.to_le_bytes(),
        ]
        .concat();
        let junk = |name: &str, bytes: &[u8], size: u64| {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.write_all_at(bytes, 0).unwrap();
            f.set_len(size).unwrap();
        };
        junk("next-segment-40.tmp", &header, len); // cut short by a crash: not renamed
        junk("next-segment-ready-41.tmp", &header, len - 1); // another segment size
        junk("next-segment-ready-42.tmp", b"NOTAWAL!\x01\0\0\0", len); // bad header
        junk("next-segment.tmp", &header, len); // an earlier version's

        let end = segment::scan(&StdStorage, dir.path(), 0, |_, _| Ok(())).unwrap();
        assert_eq!(end.next_seq, u64::from(serial));
        let tail = end.tail.clone();
        let wal = Wal::start_with_runway(dir.path(), end.next_seq, tail, SyncMode::Always, seg, 2)
            .unwrap();
        // The two lowest kept, as they were; everything else gone.
        let now = spares_in(dir.path());
        assert_eq!(now, kept[..2].to_vec());
        let now_inodes: Vec<u64> = now
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().ino())
            .collect();
        assert_eq!(now_inodes, inodes[..2].to_vec());

        // A burst rolls into them first.
        write(&wal, &mut serial, 3_000);
        wal.close();
        let segment_inodes: Vec<u64> = segment::list(&StdStorage, dir.path())
            .unwrap()
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().ino())
            .collect();
        for ino in &inodes[..2] {
            assert!(
                segment_inodes.contains(ino),
                "kept spare {ino} became a segment: {segment_inodes:?}"
            );
        }
        let mut seen = 0u32;
        segment::scan(&StdStorage, dir.path(), 0, |seq, record| {
            assert_eq!((seq, &record), (u64::from(seen), &state(seen)));
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, serial);
    }

    /// A log without a runway (a command opening a stopped node's data) leaves the node's
    /// whole spares as they are, using none and removing only its own; a log with `--sync
    /// none` removes them.
    #[test]
    fn a_log_without_a_runway_leaves_a_nodes_spares_alone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let seg = 64u64 << 10;
        let len = spare_len(seg);
        let header = [
            &segment::SEGMENT_MAGIC[..],
            &segment::SEGMENT_VERSION.to_le_bytes(),
        ]
        .concat();
        let mut kept = Vec::new();
        for n in [3, 5] {
            let path = segment::ready_spare_path(dir.path(), n);
            let f = std::fs::File::create(&path).unwrap();
            f.write_all_at(&header, 0).unwrap();
            f.set_len(len).unwrap();
            kept.push((path.clone(), std::fs::metadata(&path).unwrap().ino()));
        }
        let same = || {
            kept.iter().all(|(p, ino)| {
                std::fs::metadata(p).is_ok_and(|m| m.ino() == *ino) && {
                    assert_is_whole_spare(p, len);
                    true
                }
            })
        };

        // Two segments' worth: the lazy log prepares a spare of its own and rolls into it.
        let wal = Wal::start(dir.path(), 0, None, SyncMode::Always, seg).unwrap();
        let mut serial = 0u32;
        write_until(&wal, &mut serial, || {
            segment::list(&StdStorage, dir.path()).unwrap().len() >= 3
        });
        assert!(same(), "the node's spares are untouched while it runs");
        wal.close();
        assert!(same(), "and after it closes");
        let left: Vec<PathBuf> = spares_in(dir.path());
        assert_eq!(
            left,
            kept.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
            "its own spare is removed, theirs kept"
        );
        let segments = segment::list(&StdStorage, dir.path()).unwrap();
        for (_, p) in &segments {
            let ino = std::fs::metadata(p).unwrap().ino();
            assert!(kept.iter().all(|(_, k)| *k != ino), "no kept spare used");
        }

        let end = segment::scan(&StdStorage, dir.path(), 0, |_, _| Ok(())).unwrap();
        assert_eq!(end.next_seq, u64::from(serial));
        let tail = end.tail.clone();
        Wal::start(dir.path(), end.next_seq, tail, SyncMode::None, seg)
            .unwrap()
            .close();
        assert_eq!(spares_in(dir.path()), Vec::<PathBuf>::new());
    }

    /// A spare being prepared when the log closes is removed, and a leftover from a crash is
    /// removed at start.
    #[test]
    fn no_spare_outlives_its_log() {
        let dir = tempfile::tempdir().unwrap();
        // This version's names, and the one name of earlier versions.
        for name in ["next-segment-7.tmp", "next-segment.tmp"] {
            std::fs::write(dir.path().join(name), b"left by a crash").unwrap();
        }
        let wal = Wal::start(dir.path(), 0, None, SyncMode::Always, 256 << 20).unwrap();
        assert_eq!(spares_in(dir.path()), Vec::<PathBuf>::new());
        let mut serial = 0u32;
        while serial < 40_000 {
            let mut r = wal.reserve(1000);
            for _ in 0..1000 {
                r.push(&state(serial));
                serial += 1;
            }
            r.submit().wait();
        }
        wal.close();
        assert_eq!(spares_in(dir.path()), Vec::<PathBuf>::new());
        assert_eq!(segment::list(&StdStorage, dir.path()).unwrap().len(), 1);
    }

    /// A log of `n` records over several small segments, closed; returns its segments.
    fn linked_log(dir: &Path, n: u32) -> Vec<(u64, PathBuf)> {
        let wal = Wal::start(dir, 0, None, SyncMode::Always, 8 << 10).unwrap();
        write_range(&wal, 0, n);
        wal.close();
        let segments = segment::list(&StdStorage, dir).unwrap();
        assert!(segments.len() >= 3, "{segments:?}");
        segments
    }

    /// Writes records of tickets `from..to`, 50 at a time, each group durable.
    fn write_range(wal: &Wal, from: u32, to: u32) {
        for chunk in (from..to).collect::<Vec<_>>().chunks(50) {
            let mut r = wal.reserve(chunk.len() as u64);
            for &serial in chunk {
                r.push(&state(serial));
            }
            r.submit().wait();
        }
    }

    fn scan_all(dir: &Path) -> Result<segment::ScanEnd, segment::ScanError> {
        segment::scan(&StdStorage, dir, 0, |_, _| Ok(()))
    }

    /// Regression: the log's directory was 0755 and its segments 0644 under the usual umask,
    /// so any local user could read every code's scans.
    #[test]
    fn the_log_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let wal = Wal::start_with_runway(&wal_dir, 0, None, SyncMode::Always, 8 << 10, 1).unwrap();
        write_range(&wal, 0, 500);
        wait_for_whole_spares(&wal_dir, 1);
        wal.close();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&wal_dir), 0o700);
        let files: Vec<PathBuf> = std::fs::read_dir(&wal_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(files.len() >= 3, "{files:?}");
        for f in files {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }

    /// Regression: a deleted middle segment was skipped and its records silently lost. Its
    /// successor's link names it, so the scan refuses and says which one is missing.
    #[test]
    fn a_missing_middle_segment_refuses_the_log_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let segments = linked_log(dir.path(), 1_000);
        assert_eq!(scan_all(dir.path()).unwrap().records, 1_000);
        let gone = &segments[1].1;
        std::fs::remove_file(gone).unwrap();
        let err = scan_all(dir.path()).unwrap_err();
        assert!(matches!(err, segment::ScanError::Missing { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(gone.file_name().unwrap().to_str().unwrap()),
            "{text}"
        );
        assert!(text.contains("is missing"), "{text}");
    }

    /// Regression: deleting the newest segment lost its records silently (no later link
    /// names it). The log's head names it, so the scan refuses.
    #[test]
    fn a_missing_newest_segment_is_found_by_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let segments = linked_log(dir.path(), 1_000);
        let head = std::fs::read(dir.path().join(segment::HEAD_FILE)).unwrap();
        let (_, newest) = segments.last().unwrap();
        let bytes = std::fs::read(newest).unwrap();
        std::fs::remove_file(newest).unwrap();
        let err = scan_all(dir.path()).unwrap_err();
        assert!(matches!(err, segment::ScanError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("newest segment"), "{err}");
        // An older head beside a newer segment with records: the head was replaced.
        std::fs::write(newest, &bytes).unwrap();
        let older = segments[segments.len() - 2].0;
        segment::write_head(&StdStorage, dir.path(), older).unwrap();
        let err = scan_all(dir.path()).unwrap_err();
        assert!(err.to_string().contains("older copy"), "{err}");
        std::fs::write(dir.path().join(segment::HEAD_FILE), &head).unwrap();
        assert_eq!(scan_all(dir.path()).unwrap().records, 1_000);
        // A damaged head is named.
        std::fs::write(dir.path().join(segment::HEAD_FILE), [0u8; 16]).unwrap();
        let err = scan_all(dir.path()).unwrap_err();
        assert!(err.to_string().contains("head"), "{err}");
    }

    /// Regression: the head and the newest segment deleted together looked like a log
    /// written before heads, and recovery went on without the newest segment's records
    /// (then minted their serials again). A missing head is damage, but for the one case a
    /// crash leaves: the first segment made, given no record, and no head yet.
    #[test]
    fn a_missing_head_refuses_the_log_but_after_a_crash_at_the_first_segment() {
        let dir = tempfile::tempdir().unwrap();
        let segments = linked_log(dir.path(), 1_000);
        std::fs::remove_file(dir.path().join(segment::HEAD_FILE)).unwrap();
        let err = scan_all(dir.path()).unwrap_err();
        assert!(matches!(err, segment::ScanError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("head"), "{err}");
        std::fs::remove_file(&segments.last().unwrap().1).unwrap();
        let err = scan_all(dir.path()).unwrap_err();
        assert!(err.to_string().contains("head"), "{err}");

        // A new log whose first segment is made but holds nothing, without its head.
        let fresh = tempfile::tempdir().unwrap();
        let wal = Wal::start(fresh.path(), 0, None, SyncMode::Always, 64 << 10).unwrap();
        wal.close();
        std::fs::remove_file(fresh.path().join(segment::HEAD_FILE)).unwrap();
        assert_eq!(scan_all(fresh.path()).unwrap().records, 0);
    }

    /// Regression: an older segment cut exactly at a record boundary looked whole. Its
    /// successor's link records its length and last record, so the cut is found.
    #[test]
    fn an_older_segment_cut_at_a_record_boundary_refuses_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let segments = linked_log(dir.path(), 1_000);
        let victim = &segments[1].1;
        let bytes = std::fs::read(victim).unwrap();
        // Cut its last record off, exactly at the frame boundary before it.
        let mut at = segment::SEGMENT_HEADER_LEN as usize;
        let mut boundaries = vec![at];
        while let Ok((_, _, len)) = record::decode_frame(&bytes[at..]) {
            at += len;
            boundaries.push(at);
        }
        // Before its seal, the mark that ends a closed segment, and its last record.
        let cut = boundaries[boundaries.len() - 3];
        std::fs::write(victim, &bytes[..cut]).unwrap();
        let err = scan_all(dir.path()).unwrap_err();
        assert!(matches!(err, segment::ScanError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("cut short"), "{err}");

        // The newest segment's tail is still the one place a cut is taken as torn (here
        // into its last record, the seal after it gone: nothing declares the record synced).
        std::fs::write(victim, &bytes).unwrap();
        let newest = &segments.last().unwrap().1;
        let bytes = std::fs::read(newest).unwrap();
        let (last, len, _) = *frames_of(&bytes).iter().rfind(|f| f.2.is_none()).unwrap();
        std::fs::write(newest, &bytes[..last + len - 7]).unwrap();
        let end = scan_all(dir.path()).unwrap();
        assert_eq!(end.records, 999);
        assert!(end.truncated_bytes > 0);
    }

    /// A segment switched to whose link never reached the disk (a crash between the rename
    /// and the link's sync) holds no record: it is removed and the log goes on linked.
    #[test]
    fn a_newest_segment_without_its_link_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let segments = linked_log(dir.path(), 500);
        let (last_first, _) = *segments.last().unwrap();
        // What the crash leaves: header, zeros where the link goes, zeros after.
        let first = last_first + 10_000;
        let path = segment::segment_path(dir.path(), first);
        let mut bytes = segment::SEGMENT_MAGIC.to_vec();
        bytes.extend_from_slice(&segment::SEGMENT_VERSION.to_le_bytes());
        bytes.resize(4096, 0);
        std::fs::write(&path, &bytes).unwrap();
        let end = scan_all(dir.path()).unwrap();
        assert!(!path.exists(), "removed");
        assert_eq!(end.records, 500);
        // So is one whose header was cut inside its link, and one of zeros only.
        for bytes in [&bytes[..30], &[0u8; 52][..]] {
            std::fs::write(&path, bytes).unwrap();
            let end = scan_all(dir.path()).unwrap();
            assert!(!path.exists(), "removed");
            assert_eq!(end.records, 500);
        }
        // But a newest segment with records and a damaged link is corruption, not a tear.
        let (_, newest) = segment::list(&StdStorage, dir.path())
            .unwrap()
            .pop()
            .unwrap();
        let good = std::fs::read(&newest).unwrap();
        let mut bad = good.clone();
        bad[20] ^= 1;
        std::fs::write(&newest, &bad).unwrap();
        assert!(matches!(
            scan_all(dir.path()),
            Err(segment::ScanError::Corrupt { .. })
        ));
        std::fs::write(&newest, &good).unwrap();
        let end = scan_all(dir.path()).unwrap();
        let wal = Wal::start(
            dir.path(),
            end.next_seq,
            end.tail,
            SyncMode::Always,
            8 << 10,
        )
        .unwrap();
        write_range(&wal, 500, 1_500);
        wal.close();
        let end = scan_all(dir.path()).unwrap();
        assert_eq!(end.records, 1_500);
    }

    /// Segments written before links existed (version 1) are read; the log goes on in
    /// linked segments after them.
    #[test]
    fn unlinked_segments_of_the_first_format_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = segment::SEGMENT_MAGIC.to_vec();
        bytes.extend_from_slice(&segment::SEGMENT_VERSION_UNLINKED.to_le_bytes());
        for i in 0..100 {
            state(i).encode(u64::from(i), &mut bytes);
        }
        std::fs::write(segment::segment_path(dir.path(), 0), &bytes).unwrap();
        let end = scan_all(dir.path()).unwrap();
        assert_eq!((end.records, end.next_seq), (100, 100));
        let wal = Wal::start(
            dir.path(),
            end.next_seq,
            end.tail,
            SyncMode::Always,
            8 << 10,
        )
        .unwrap();
        write_range(&wal, 100, 600);
        wal.close();
        let segments = segment::list(&StdStorage, dir.path()).unwrap();
        assert!(segments.len() >= 2);
        let mut seen = 0u32;
        segment::scan(&StdStorage, dir.path(), 0, |seq, record| {
            assert_eq!((seq, &record), (u64::from(seen), &state(seen)));
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 600);
        // The first linked segment names the unlinked one: removing it is found.
        std::fs::remove_file(&segments[0].1).unwrap();
        assert!(matches!(
            scan_all(dir.path()),
            Err(segment::ScanError::Missing { .. })
        ));
    }

    /// Every frame of a segment's bytes after the header: offset, length, and whether it is
    /// a durability mark (with what it declares).
    fn frames_of(bytes: &[u8]) -> Vec<(usize, usize, Option<u64>)> {
        let mut at = segment::SEGMENT_HEADER_LEN as usize;
        let mut out = Vec::new();
        while let Ok((frame, _, len)) = record::decode_frame(&bytes[at..]) {
            let mark = match frame {
                record::Frame::Mark { synced_to } => Some(synced_to),
                record::Frame::Record(_) => None,
            };
            out.push((at, len, mark));
            at += len;
        }
        out
    }

    /// A one-segment log of three groups of 50 records, each synced before the next; the
    /// segment's path, and the offset where the third group's records start.
    fn three_groups(dir: &Path) -> (PathBuf, usize) {
        let wal = Wal::start(dir, 0, None, SyncMode::Always, 64 << 20).unwrap();
        write_range(&wal, 0, 100);
        let third = wal.written_seq();
        write_range(&wal, 100, 150);
        wal.close();
        let (_, path) = segment::list(&StdStorage, dir).unwrap().pop().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut at = segment::SEGMENT_HEADER_LEN as usize;
        loop {
            let (frame, seq, len) = record::decode_frame(&bytes[at..]).unwrap();
            if matches!(frame, record::Frame::Record(_)) && seq >= third {
                return (path, at);
            }
            at += len;
        }
    }

    /// What a power cut can leave of the last group written but not synced: its first
    /// sectors never written (a hole of zeros, the group's mark included) while a later
    /// frame of it survives. That was refused as corruption (a good frame after the
    /// damage), so a real power cut could leave a log that would not open. No mark after
    /// the hole declares it synced: it is a torn tail, cut there.
    #[test]
    fn a_hole_in_the_unsynced_tail_before_a_surviving_frame_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (path, third) = three_groups(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let frames = frames_of(&bytes);
        // The third group unsynced: none of the marks after its start (the seal, an idle
        // mark) reached the disk; its records did, but for a hole at its start.
        let last_record_end = frames
            .iter()
            .filter(|f| f.2.is_none())
            .map(|f| f.0 + f.1)
            .max()
            .unwrap();
        let (last, _, _) = *frames.iter().rfind(|f| f.2.is_none()).unwrap();
        let mut torn = bytes[..last_record_end].to_vec();
        torn[third..third + 700].fill(0);
        assert!(last > third + 700);
        assert!(
            record::decode_frame(&torn[last..]).is_ok(),
            "a frame after the hole survives"
        );
        std::fs::write(&path, &torn).unwrap();
        let end = scan_all(dir.path()).unwrap();
        assert_eq!(end.records, 100, "cut at the hole");
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, third);
        // The log goes on from there.
        let wal = Wal::start(
            dir.path(),
            end.next_seq,
            end.tail,
            SyncMode::Always,
            64 << 20,
        )
        .unwrap();
        write_range(&wal, 100, 120);
        wal.close();
        assert_eq!(scan_all(dir.path()).unwrap().records, 120);
    }

    /// A bit flipped in a record a later mark declares synced is corruption, refused with
    /// the file and the record's offset, and the file is left as it is; the same bit in
    /// the last group, with nothing after it declaring it, is a torn write.
    #[test]
    fn a_flipped_bit_in_a_record_declared_synced_refuses_with_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (path, third) = three_groups(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let frames = frames_of(&bytes);
        let (victim, len, _) = frames[20];
        assert!(frames
            .iter()
            .any(|f| f.0 > victim && f.2 > Some(victim as u64)));
        let mut bad = bytes.clone();
        bad[victim + len - 3] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let err = scan_all(dir.path()).unwrap_err();
        let segment::ScanError::Corrupt {
            path: p, offset, ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!((p, *offset), (&path, victim as u64), "{err}");
        assert!(
            err.to_string().contains(&format!("byte offset {victim}")),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bad,
            "a refused log is left untouched"
        );

        // Declared by the seal alone, the last record is refused too; without the seal (a
        // crash before it), the same flip reads as a torn write and is cut.
        let (last, last_len, _) = *frames.iter().rfind(|f| f.2.is_none()).unwrap();
        let mut bad = bytes.clone();
        bad[last + 25] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            scan_all(dir.path()),
            Err(segment::ScanError::Corrupt { offset, .. }) if offset == last as u64
        ));
        std::fs::write(&path, &bad[..last + last_len]).unwrap();
        assert!(third < last);
        assert_eq!(scan_all(dir.path()).unwrap().records, 149);
    }

    /// A log of format 2 (links, no marks) is read as it was, its damage judged by the rule
    /// of that format, and is not appended to: the log goes on in a segment of this format
    /// linked to it.
    #[test]
    fn segments_of_format_2_are_read_and_followed_by_one_of_format_3() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = segment::SEGMENT_MAGIC.to_vec();
        bytes.extend_from_slice(&segment::SEGMENT_VERSION_LINKED.to_le_bytes());
        bytes.extend_from_slice(&segment::Link::FIRST.encode_as(0, 2));
        for i in 0..100 {
            state(i).encode(u64::from(i), &mut bytes);
        }
        let path = segment::segment_path(dir.path(), 0);
        std::fs::write(&path, &bytes).unwrap();
        segment::write_head(&StdStorage, dir.path(), 0).unwrap();
        let end = scan_all(dir.path()).unwrap();
        assert_eq!((end.records, end.next_seq), (100, 100));
        assert_eq!(end.tail.as_ref().unwrap().version, 2);
        let wal = Wal::start(
            dir.path(),
            end.next_seq,
            end.tail,
            SyncMode::Always,
            64 << 20,
        )
        .unwrap();
        write_range(&wal, 100, 200);
        wal.close();
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "not appended to");
        let segments = segment::list(&StdStorage, dir.path()).unwrap();
        assert_eq!(segments.len(), 2);
        let newer = std::fs::read(&segments[1].1).unwrap();
        assert_eq!(segment::version_of(&newer), Some(segment::SEGMENT_VERSION));
        assert_eq!(scan_all(dir.path()).unwrap().records, 200);
        // A version field flipped from 3 to 2 or 1 no longer matches the segment's link:
        // refused at the version, not read by an older format's rules.
        for to in [2u8, 1] {
            let mut bad = newer.clone();
            bad[8] = to;
            std::fs::write(&segments[1].1, &bad).unwrap();
            let err = scan_all(dir.path()).unwrap_err();
            assert!(
                matches!(err, segment::ScanError::Corrupt { offset: 8, .. }),
                "{to}: {err}"
            );
        }
    }
}
