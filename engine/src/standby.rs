//! A standby's engine: its primary's log records applied and logged under their own numbers,
//! so that the standby's log is the primary's, number for number, and it can take over with
//! every change the primary answered.
//!
//! The standby makes no change of its own: records come only from here, in the order of
//! their numbers, each applied to memory as recovery would (idempotent, per-ticket ordered)
//! after its number is reserved, so a snapshot the standby takes meanwhile starts where its
//! own log agrees with its memory.

use std::path::Path;
use std::sync::Mutex;

use crate::engine::Engine;
use crate::ops::offline::DivergedAdmit;
use crate::recovery::{self, Annulled};
use crate::wal::{Durability, Record, OP_OFFLINE};
use crate::word::Op;
use stile_protocol::OutcomeKind;

/// Why a batch of replicated records cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// The engine keeps no log (in memory): it cannot be a standby.
    #[error("this engine keeps no log")]
    NoLog,
    /// A batch starts before or after where this log is.
    #[error("replicated records from {got} do not follow this log, which goes on at {expected}")]
    Gap {
        /// The next number this log expects.
        expected: u64,
        /// The first number the batch covers.
        got: u64,
    },
    /// A record is out of order or outside the batch's span.
    #[error("replicated record {seq} is out of order or past the batch's end {upto}")]
    Order {
        /// Its number.
        seq: u64,
        /// Where the batch says it ends.
        upto: u64,
    },
    /// A record does not apply to this state (a standby of another primary, say).
    #[error("replicated record {seq} does not apply: {reason}")]
    Apply {
        /// Its number.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// What a standby keeps between batches: admits annulled by undos, as replay keeps them.
#[derive(Debug, Default)]
pub(crate) struct StandbyState {
    annulled: Mutex<Annulled>,
}

impl Engine {
    /// Applies the primary's records of numbers `[from, upto)`: `records` are those that
    /// hold a change, in order (the other numbers were reserved and never used). `from`
    /// must be where this log goes on ([`crate::wal::Wal::reserved_seq`]). Returns what
    /// waits for them to be durable here; acknowledge them to the primary only once synced
    /// ([`crate::wal::Wal::sync_through`]).
    pub fn apply_replicated(
        &self,
        from: u64,
        upto: u64,
        records: &[(u64, Record)],
    ) -> Result<Durability, ReplicateError> {
        let wal = self.wal.as_ref().ok_or(ReplicateError::NoLog)?;
        let expected = wal.reserved_seq();
        if from != expected {
            return Err(ReplicateError::Gap {
                expected,
                got: from,
            });
        }
        let mut next = from;
        for (seq, _) in records {
            if *seq < next || *seq >= upto {
                return Err(ReplicateError::Order { seq: *seq, upto });
            }
            next = seq + 1;
        }
        if upto <= from {
            return Ok(Durability::READY);
        }
        let mut log = wal.reserve(upto - from);
        debug_assert_eq!(log.first(), from, "a standby's log has one writer");
        let mut annulled = self
            .standby
            .annulled
            .lock()
            .expect("standby state poisoned");
        for (seq, record) in records {
            recovery::apply(&self.tables, &mut annulled, record.clone())
                .map_err(|reason| ReplicateError::Apply { seq: *seq, reason })?;
            log.push_at(*seq, record);
        }
        Ok(log.submit())
    }
}

/// The gate admits among `records` (a diverged log's suffix), in order: state changes a
/// gate's entry made, online or uploaded from its journal. Other changes (mints, revokes,
/// transfers, exits) are not replayed elsewhere; the caller keeps them for the operator.
pub fn admits_in(records: &[(u64, Record)]) -> Vec<DivergedAdmit> {
    records
        .iter()
        .filter_map(|(_, r)| match r {
            Record::State {
                partition,
                serial,
                scan: Some(trace),
                ..
            } if trace.gate != 0 && trace.op & !OP_OFFLINE == Op::Entry as u8 => {
                let answer = crate::scans::unpack(trace.answer);
                (answer.kind == OutcomeKind::Admitted).then_some(DivergedAdmit {
                    partition: *partition,
                    serial: *serial,
                    gate: trace.gate,
                    scan_id: trace.scan_id,
                    at_unix_s: answer.at_unix_s,
                })
            }
            _ => None,
        })
        .collect()
}

/// Why a data dir could not be made a copy of a primary's.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The data dir holds a log or snapshots already.
    #[error("data dir {0} holds tickets already: a standby is seeded only into an empty data dir")]
    NotEmpty(std::path::PathBuf),
    /// The data dir is marked as a seed cut short, but its log holds records: a seed
    /// leaves an empty log, so they are this node's own, and seeding again would delete them.
    #[error(
        "data dir {0} is marked as a seed cut short ({SEEDING_MARK}), but its log holds \
         records logged after a seed, which seeding again would delete: if the data dir is \
         whole, remove {0}/{SEEDING_MARK}; to seed it afresh, move the data dir aside first"
    )]
    NotASeed(std::path::PathBuf),
    /// The primary's key ring does not parse.
    #[error("the primary's key ring: {0}")]
    Ring(#[from] crate::keys::KeyError),
    /// The primary's snapshot does not check.
    #[error("the primary's snapshot: {0}")]
    Snapshot(String),
    /// Writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Marks a data dir being seeded: present from before the first file is written until the
/// last is in place, so that a seed cut short is started over rather than opened.
pub const SEEDING_MARK: &str = ".seeding";

/// Whether `dir` holds a seed that was cut short (see [`SEEDING_MARK`]).
pub fn unfinished_seed(dir: &Path) -> bool {
    dir.join(SEEDING_MARK).exists()
}

/// Whether data dir `dir`'s log holds a record (or cannot be read: then it is not known
/// to be empty). A seed cut short leaves none: it starts the log empty, last of all.
fn log_holds_records(dir: &Path) -> bool {
    let wal_dir = dir.join(crate::datadir::WAL_DIR);
    let first = match crate::wal::segment::list(&crate::storage::StdStorage, &wal_dir) {
        Ok(segments) => match segments.first() {
            Some((first, _)) => *first,
            None => return false,
        },
        Err(e) => return e.kind() != std::io::ErrorKind::NotFound,
    };
    let mut out = Vec::new();
    let read = crate::wal::tail::LogTail::new(&wal_dir, first).read(u64::MAX, 1, &mut out);
    read.is_err() || !out.is_empty()
}

/// A new standby's data dir being filled with its primary's key ring, a snapshot, and an
/// empty log from the snapshot's position on. Removing [`SEEDING_MARK`] is the commit;
/// before it the dir is seeded again from the start.
#[derive(Debug)]
pub struct Seed {
    /// The snapshot's temp file.
    tmp: std::path::PathBuf,
    /// Where it goes once whole.
    path: std::path::PathBuf,
    /// The data dir.
    dir: std::path::PathBuf,
    /// The open temp file.
    file: std::fs::File,
    /// The log position the snapshot starts at.
    start_seq: u64,
}

impl Seed {
    /// Starts seeding `dir`, which holds no log or snapshot, with the primary's ring
    /// (written now) and a snapshot at `start_seq` (written with [`Self::write`]).
    pub fn begin(dir: &Path, ring_text: &[u8], start_seq: u64) -> Result<Seed, SeedError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SeedError::Io { path, source }
        };
        crate::datadir::ensure(dir).map_err(io(dir))?;
        let mark = dir.join(SEEDING_MARK);
        if mark.exists() {
            if log_holds_records(dir) {
                return Err(SeedError::NotASeed(dir.to_path_buf()));
            }
            // An earlier seed was cut short: what it wrote is the primary's, not ours.
            for sub in [crate::datadir::WAL_DIR, crate::datadir::SNAPSHOTS_DIR] {
                let path = dir.join(sub);
                match std::fs::remove_dir_all(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io(&path)(e));
                    }
                    _ => {}
                }
            }
        } else if crate::datadir::has_state(dir).map_err(io(dir))? {
            return Err(SeedError::NotEmpty(dir.to_path_buf()));
        }
        crate::datadir::write_private_synced(&mark, &[b"seeding from a primary\n"])
            .map_err(io(&mark))?;
        crate::storage::Storage::sync_dir(&crate::storage::StdStorage, dir).map_err(io(dir))?;
        let text =
            std::str::from_utf8(ring_text).map_err(|_| crate::keys::KeyError::Malformed {
                path: "<primary's key ring>".into(),
                line: 0,
                reason: "not UTF-8".into(),
            })?;
        let keys_dir = dir.join(crate::datadir::KEYS_DIR);
        let ring = keys_dir.join(crate::datadir::RING_FILE);
        // Checked before it is written; a ring left by an unfinished seed (no state beside
        // it) is replaced: a standby never made keys of its own.
        crate::keys::KeyRing::parse(text, &ring)?;
        crate::datadir::ensure(&keys_dir).map_err(io(&keys_dir))?;
        let ring_tmp = ring.with_extension("tmp");
        crate::datadir::write_private_synced(&ring_tmp, &[ring_text]).map_err(io(&ring_tmp))?;
        crate::datadir::rename_synced(&ring_tmp, &ring).map_err(io(&ring))?;
        let snapshots = dir.join(crate::datadir::SNAPSHOTS_DIR);
        crate::datadir::ensure(&snapshots).map_err(io(&snapshots))?;
        let path = snapshots.join(format!("snap-{start_seq:020}.snap"));
        // Not named `.snap.tmp` inside `snapshots/` would count as state; a dot file does not
        // parse as a snapshot and is replaced by the next seed.
        let tmp = dir.join(".seed-snapshot.tmp");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        Ok(Seed {
            tmp,
            path,
            dir: dir.to_path_buf(),
            file,
            start_seq,
        })
    }

    /// Appends the next piece of the snapshot.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SeedError> {
        use std::io::Write;
        self.file.write_all(chunk).map_err(|source| SeedError::Io {
            path: self.tmp.clone(),
            source,
        })
    }

    /// Checks the snapshot whole (header, checksum, archive, its position) and puts it in
    /// place: from now on the data dir opens as the primary's state at the snapshot.
    pub fn finish(self) -> Result<u64, SeedError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SeedError::Io { path, source }
        };
        self.file.sync_all().map_err(io(&self.tmp))?;
        drop(self.file);
        let bytes = std::fs::read(&self.tmp).map_err(io(&self.tmp))?;
        let start = crate::snapshot::check_bytes(&bytes).map_err(SeedError::Snapshot)?;
        if start != self.start_seq {
            return Err(SeedError::Snapshot(format!(
                "it starts at {start}, not at {} as announced",
                self.start_seq
            )));
        }
        drop(bytes);
        crate::datadir::rename_synced(&self.tmp, &self.path).map_err(io(&self.path))?;
        // The log goes on at the snapshot's position, as the primary's does.
        let wal_dir = self.dir.join(crate::datadir::WAL_DIR);
        let wal = crate::wal::Wal::start(
            &wal_dir,
            start,
            None,
            crate::wal::SyncMode::Always,
            crate::wal::segment::SEGMENT_MAX_BYTES,
        )
        .map_err(io(&wal_dir))?;
        wal.close();
        drop(wal);
        let mark = self.dir.join(SEEDING_MARK);
        std::fs::remove_file(&mark).map_err(io(&mark))?;
        crate::storage::Storage::sync_dir(&crate::storage::StdStorage, &self.dir)
            .map_err(io(&self.dir))?;
        Ok(start)
    }
}
