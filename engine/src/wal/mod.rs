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
//! **Failure.** A failed write or `fdatasync` aborts the process: after a failed fsync the
//! kernel may have dropped the dirty pages, so retrying could report lost data as durable.

pub mod record;
pub mod segment;
pub mod tail;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_listener::{Event, Listener};

use crate::metrics::{AtomicHistogram, BATCH_EDGES, FSYNC_EDGES_US};
pub use record::Record;

/// Most bytes waiting for the writer before submitters are made to wait.
pub const QUEUE_MAX_BYTES: usize = 64 << 20;
/// Default fsync interval of `--sync batch`.
pub const BATCH_INTERVAL_DEFAULT_MS: u32 = 10;

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
}

/// State shared by submitters, waiters and the writer.
#[derive(Debug)]
struct Shared {
    /// Next sequence number to reserve.
    next_seq: AtomicU64,
    /// Every number below this is durable (or, without `always`, written).
    durable: AtomicU64,
    /// Every number below this is on disk with `fdatasync` done.
    synced: AtomicU64,
    /// Every number below this was submitted and written to the file (their changes were
    /// made in memory before submission): where a snapshot may start.
    written: AtomicU64,
    /// Signalled whenever `durable` moves.
    durable_event: Event,
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
}

/// The write-ahead log of one data dir.
#[derive(Debug)]
pub struct Wal {
    /// Shared with the writer thread.
    shared: Arc<Shared>,
    /// The writer thread, joined on close.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The log directory.
    dir: PathBuf,
}

/// The writer's own state.
struct Writer {
    /// Shared with the log.
    shared: Arc<Shared>,
    /// Log directory.
    dir: PathBuf,
    /// The segment being appended to.
    file: File,
    /// Its length.
    file_len: u64,
    /// A segment is closed once it passes this size.
    segment_max_bytes: u64,
    /// Submissions that arrived ahead of a gap.
    pending: BTreeMap<u64, Submission>,
    /// The next sequence number to write.
    next: u64,
    /// Last fsync, for `batch` mode.
    last_sync: Instant,
    /// Records written since the last fsync.
    unsynced_records: u64,
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
    /// and its good length) or starting a new segment.
    pub fn start(
        dir: &Path,
        next_seq: u64,
        tail: Option<(PathBuf, u64)>,
        mode: SyncMode,
        segment_max_bytes: u64,
    ) -> std::io::Result<Self> {
        assert!(
            segment_max_bytes > segment::SEGMENT_HEADER_LEN,
            "segments hold records"
        );
        std::fs::create_dir_all(dir)?;
        let (file, file_len) = match tail {
            Some((path, len)) if len < segment_max_bytes => {
                (std::fs::OpenOptions::new().append(true).open(path)?, len)
            }
            _ => (segment::create(dir, next_seq)?, segment::SEGMENT_HEADER_LEN),
        };
        let shared = Arc::new(Shared {
            next_seq: AtomicU64::new(next_seq),
            durable: AtomicU64::new(next_seq),
            synced: AtomicU64::new(next_seq),
            written: AtomicU64::new(next_seq),
            durable_event: Event::new(),
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            room: Condvar::new(),
            mode,
            syncs: AtomicU64::new(0),
            records: AtomicU64::new(0),
            sync_us: AtomicHistogram::new(FSYNC_EDGES_US),
            sync_records: AtomicHistogram::new(BATCH_EDGES),
        });
        let mut writer = Writer {
            shared: shared.clone(),
            dir: dir.to_path_buf(),
            file,
            file_len,
            segment_max_bytes,
            pending: BTreeMap::new(),
            next: next_seq,
            last_sync: Instant::now(),
            unsynced_records: 0,
        };
        let handle = std::thread::Builder::new()
            .name("stile-wal".into())
            .spawn(move || writer.run())?;
        Ok(Wal {
            shared,
            writer: Mutex::new(Some(handle)),
            dir: dir.to_path_buf(),
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

    /// Reserves `count` sequence numbers for records about to be made. Must be called before
    /// the state changes they will record; the reservation submits itself when dropped.
    pub fn reserve(&self, count: u64) -> Reservation<'_> {
        let first = self.shared.next_seq.fetch_add(count, Ordering::AcqRel);
        Reservation {
            wal: self,
            first,
            count,
            used: 0,
            bytes: Vec::new(),
        }
    }

    /// Every sequence number below this is durable.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Every sequence number below this is synced to disk (for snapshots: in every mode).
    pub fn synced_seq(&self) -> u64 {
        self.shared.synced.load(Ordering::Acquire)
    }

    /// Every number below this is written, and its change was made in memory first.
    pub fn written_seq(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
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

    /// Flushes everything reserved so far, syncs it whatever the mode, and stops the writer.
    pub fn close(&self) {
        {
            let mut q = self.shared.queue.lock().expect("wal queue poisoned");
            q.closing = true;
            self.shared.work.notify_one();
        }
        if let Some(h) = self.writer.lock().expect("wal writer poisoned").take() {
            h.join().expect("wal writer thread panicked");
        }
    }

    fn submit(&self, sub: Submission) {
        let mut q = self.shared.queue.lock().expect("wal queue poisoned");
        while q.bytes > QUEUE_MAX_BYTES && !sub.bytes.is_empty() {
            q = self.shared.room.wait(q).expect("wal queue poisoned");
        }
        q.bytes += sub.bytes.len();
        q.subs.push(sub);
        self.shared.work.notify_one();
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
    /// Numbers used so far.
    used: u64,
    /// Encoded records.
    bytes: Vec<u8>,
}

impl Reservation<'_> {
    /// Encodes `record` under the next reserved number.
    pub fn push(&mut self, record: &Record) {
        assert!(self.used < self.count, "more records than reserved numbers");
        record.encode(self.first + self.used, &mut self.bytes);
        self.used += 1;
    }

    /// Submits the records and returns what the answers must wait for: every number reserved
    /// by anyone up to now. Call it after the batch's last observation.
    pub fn submit(mut self) -> Durability {
        self.submit_inner()
    }

    fn submit_inner(&mut self) -> Durability {
        let bytes = std::mem::take(&mut self.bytes);
        let count = std::mem::take(&mut self.count);
        if count > 0 {
            self.wal.submit(Submission {
                first: self.first,
                count,
                records: self.used,
                bytes,
            });
        }
        let shared = &self.wal.shared;
        match shared.mode {
            SyncMode::Always => Durability {
                wait: Some((shared.clone(), shared.next_seq.load(Ordering::Acquire))),
            },
            SyncMode::Batch { .. } | SyncMode::None => Durability::READY,
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
        loop {
            if shared.durable.load(Ordering::Acquire) >= *seq {
                return;
            }
            let listener = shared.durable_event.listen();
            if shared.durable.load(Ordering::Acquire) >= *seq {
                return;
            }
            listener.await;
        }
    }
}

fn wait_blocking(shared: &Shared, seq: u64) {
    loop {
        if shared.durable.load(Ordering::Acquire) >= seq {
            return;
        }
        let listener = shared.durable_event.listen();
        if shared.durable.load(Ordering::Acquire) >= seq {
            return;
        }
        listener.wait();
    }
}

/// A write or sync failure: the process cannot keep its promises, so it stops.
fn fatal(what: &str, path: &Path, e: &std::io::Error) -> ! {
    eprintln!(
        "stile: fatal: {what} {}: {e}; stopping so no answer claims lost data is durable",
        path.display()
    );
    std::process::abort();
}

impl Writer {
    fn run(&mut self) {
        let batch_interval = match self.shared.mode {
            SyncMode::Batch { interval_ms } => Some(Duration::from_millis(u64::from(interval_ms))),
            _ => None,
        };
        loop {
            let (subs, closing) = {
                let mut q = self.shared.queue.lock().expect("wal queue poisoned");
                while q.subs.is_empty() && !q.closing {
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
                    if batch_interval.is_some() && self.synced_behind() {
                        break;
                    }
                }
                q.bytes = 0;
                self.shared.room.notify_all();
                (std::mem::take(&mut q.subs), q.closing)
            };
            for s in subs {
                self.pending.insert(s.first, s);
            }
            self.write_ready();
            let sync_now = match self.shared.mode {
                SyncMode::Always => true,
                SyncMode::Batch { .. } => {
                    closing || batch_interval.is_some_and(|d| self.last_sync.elapsed() >= d)
                }
                SyncMode::None => closing,
            };
            if sync_now && self.synced_behind() {
                self.sync();
            }
            if self.shared.mode != SyncMode::Always {
                self.shared.durable.store(self.next, Ordering::Release);
            }
            self.shared.durable_event.notify(usize::MAX);
            if closing && self.pending.is_empty() && self.all_submitted() {
                return;
            }
        }
    }

    fn synced_behind(&self) -> bool {
        self.shared.synced.load(Ordering::Acquire) < self.next
    }

    fn all_submitted(&self) -> bool {
        self.next >= self.shared.next_seq.load(Ordering::Acquire)
    }

    /// Writes the contiguous run of submissions starting at `next`.
    fn write_ready(&mut self) {
        let mut buf = Vec::new();
        let mut records = 0u64;
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.next {
                debug_assert!(*entry.key() > self.next, "numbers are reserved once");
                break;
            }
            let sub = entry.remove();
            if self.file_len + (buf.len() + sub.bytes.len()) as u64 > self.segment_max_bytes
                && self.file_len + buf.len() as u64 > segment::SEGMENT_HEADER_LEN
            {
                self.append(&buf);
                buf.clear();
                self.roll();
            }
            buf.extend_from_slice(&sub.bytes);
            records += sub.records;
            self.next = sub.first + sub.count;
        }
        self.append(&buf);
        self.unsynced_records += records;
        self.shared.records.fetch_add(records, Ordering::Relaxed);
        self.shared.written.store(self.next, Ordering::Release);
    }

    fn append(&mut self, buf: &[u8]) {
        if buf.is_empty() {
            return;
        }
        if let Err(e) = self.file.write_all(buf) {
            fatal("writing the log", &self.dir, &e);
        }
        self.file_len += buf.len() as u64;
    }

    fn sync(&mut self) {
        let started = Instant::now();
        if let Err(e) = self.file.sync_data() {
            fatal("fdatasync of the log", &self.dir, &e);
        }
        let us = started.elapsed().as_micros().max(1) as u64;
        self.shared.sync_us.record(us);
        if self.unsynced_records > 0 {
            self.shared.sync_records.record(self.unsynced_records);
            self.unsynced_records = 0;
        }
        self.last_sync = Instant::now();
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.shared.synced.store(self.next, Ordering::Release);
        if self.shared.mode == SyncMode::Always {
            self.shared.durable.store(self.next, Ordering::Release);
        }
    }

    /// Closes the current segment (synced) and starts the next one at `next`.
    fn roll(&mut self) {
        self.sync();
        match segment::create(&self.dir, self.next) {
            Ok(f) => {
                self.file = f;
                self.file_len = segment::SEGMENT_HEADER_LEN;
            }
            Err(e) => fatal("creating a log segment in", &self.dir, &e),
        }
    }
}
