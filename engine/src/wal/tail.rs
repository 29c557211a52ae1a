//! Reading the log from a position while it grows: what `subscribe` streams.
//!
//! Only records below a limit the caller takes from the writer (everything below
//! [`super::Wal::durable_seq`] is whole in its file) are read. Bytes read by an earlier call
//! may be older than that (a frame caught while being written, zeros since filled), so a
//! frame that does not decode is read once more from the file before it counts as damage. Segments are read in order; a segment is left only once a later one exists
//! (the writer closes a segment before it starts the next). A segment prepared ahead ends
//! in zeros until records fill it: a zero frame length is where its written part ends for
//! now, and the tail reads from there again next time.

use std::io;
use std::path::{Path, PathBuf};

use super::record::{decode_frame, DecodeError, Frame, Record};
use super::segment::{frames_start, list, version_of};
use crate::storage::{SharedStorage, StdStorage, StorageFile};

/// Why a tail cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The records asked for were dropped after a snapshot.
    #[error("log position {asked} is no longer kept (the log now starts at {oldest})")]
    Trimmed {
        /// Position asked for.
        asked: u64,
        /// First position still in the log.
        oldest: u64,
    },
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A record below the limit does not decode.
    #[error("{path}: damaged record while tailing the log: {reason}")]
    Damaged {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Most bytes read from a segment at a time: a prepared segment is mostly zeros.
const READ_STEP_MAX: u64 = 1 << 20;
/// Bytes read at a time once the tail has caught up with the writer: a tail that polls
/// often reads little past the end of what is written.
const READ_STEP_MIN: u64 = 4 << 10;

/// An open segment being read.
#[derive(Debug)]
struct Open {
    first: u64,
    path: PathBuf,
    file: Box<dyn StorageFile>,
    /// Where the next read starts in the file.
    at: u64,
    /// A later segment was seen, so this one holds all it ever will.
    finished: bool,
}

/// A reader that follows the log from a position.
#[derive(Debug)]
pub struct LogTail {
    /// Where the log's files are.
    storage: SharedStorage,
    dir: PathBuf,
    /// Next position wanted.
    next_seq: u64,
    open: Option<Open>,
    /// Bytes read from the open segment; those from `pos` on are not yet decoded.
    buf: Vec<u8>,
    /// Bytes the next read asks for: doubles while reads come back full of records, back to
    /// [`READ_STEP_MIN`] at the end of what is written.
    step: u64,
    /// Where decoding resumes in `buf`. Decoded bytes are dropped only when more are read,
    /// all at once: dropping each record's bytes as it goes moves the rest of the buffer
    /// every time, which costs the square of a backlog.
    pos: usize,
}

impl LogTail {
    /// A tail of the log in `dir` starting at position `from_seq`.
    pub fn new(dir: &Path, from_seq: u64) -> Self {
        Self::on(std::sync::Arc::new(StdStorage), dir, from_seq)
    }

    /// A tail of the log in `dir` of `storage` starting at position `from_seq`.
    pub fn on(storage: SharedStorage, dir: &Path, from_seq: u64) -> Self {
        LogTail {
            storage,
            dir: dir.to_path_buf(),
            next_seq: from_seq,
            open: None,
            buf: Vec::new(),
            step: READ_STEP_MIN,
            pos: 0,
        }
    }

    /// The next position this tail will return.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends records numbered below `limit` (and at least the tail's position) to `out`,
    /// at most `max` of them, in order. `true` when it has caught up: every record below
    /// `limit` has been returned. The tail's position may then stay below `limit`, since
    /// numbers reserved and never used (a scan that changed nothing) are written nowhere;
    /// `false` when it stopped at `max`.
    pub fn read(
        &mut self,
        limit: u64,
        max: usize,
        out: &mut Vec<(u64, Record)>,
    ) -> Result<bool, TailError> {
        let start = out.len();
        // Whether the bytes at the decoding position were read again after a decode error.
        // Bytes read by an earlier call can be older than `limit`: a frame caught while it was
        // being written, or zeros since filled in.
        let mut reread = false;
        while out.len() - start < max && self.next_seq < limit {
            if self.open.is_none() && !self.open_segment()? {
                return Ok(true);
            }
            match decode_frame(&self.buf[self.pos..]) {
                Ok((frame, seq, len)) => {
                    reread = false;
                    if seq >= limit {
                        return Ok(true);
                    }
                    self.pos += len;
                    // Durability marks are for recovery; a tail skips them.
                    if let Frame::Record(record) = frame {
                        if seq >= self.next_seq {
                            self.next_seq = seq + 1;
                            out.push((seq, record));
                        }
                    }
                }
                Err(DecodeError::Incomplete) => {
                    if !self.fill()? {
                        if !self.end_of_segment()? {
                            return Ok(true);
                        }
                        reread = false;
                    }
                }
                Err(_) if !reread => {
                    self.unread_rest()?;
                    self.fill()?;
                    reread = true;
                }
                Err(DecodeError::BadLength(0)) => {
                    // The zeros of a prepared segment: nothing more is written here yet.
                    self.unread_rest()?;
                    if !self.end_of_segment()? {
                        return Ok(true);
                    }
                    reread = false;
                }
                Err(_) if self.frame_seq().is_some_and(|seq| seq >= limit) => {
                    // A record above the limit, still being written.
                    return Ok(true);
                }
                Err(e) => {
                    let path = self
                        .open
                        .as_ref()
                        .map(|o| o.path.clone())
                        .unwrap_or_default();
                    return Err(TailError::Damaged {
                        path,
                        reason: format!("{e:?}"),
                    });
                }
            }
        }
        Ok(self.next_seq >= limit)
    }

    fn segments(&self) -> Result<Vec<(u64, PathBuf)>, TailError> {
        list(&*self.storage, &self.dir).map_err(|source| TailError::Io {
            path: self.dir.clone(),
            source,
        })
    }

    /// Opens the segment holding `next_seq`; `false` if the log has none yet.
    fn open_segment(&mut self) -> Result<bool, TailError> {
        let segments = self.segments()?;
        let Some(i) = segments
            .iter()
            .rposition(|(first, _)| *first <= self.next_seq)
        else {
            return match segments.first() {
                Some((oldest, _)) => Err(TailError::Trimmed {
                    asked: self.next_seq,
                    oldest: *oldest,
                }),
                None => Ok(false),
            };
        };
        let (first, path) = segments[i].clone();
        self.open_path(first, path)?;
        Ok(true)
    }

    fn open_path(&mut self, first: u64, path: PathBuf) -> Result<(), TailError> {
        let io = |source| TailError::Io {
            path: path.clone(),
            source,
        };
        let file = self.storage.open(&path, false).map_err(io)?;
        let mut header = [0u8; 12];
        let mut got = 0;
        while got < header.len() {
            match file.read_at(&mut header[got..], got as u64).map_err(io)? {
                0 => break,
                n => got += n,
            }
        }
        let start =
            version_of(&header)
                .and_then(frames_start)
                .ok_or_else(|| TailError::Damaged {
                    path: path.clone(),
                    reason: "not a stile log segment (bad magic or version)".into(),
                })?;
        self.buf.clear();
        self.pos = 0;
        self.open = Some(Open {
            first,
            path,
            file,
            at: start,
            finished: false,
        });
        Ok(())
    }

    /// Reads more of the open segment (up to `step` bytes) beyond the buffer; `false` if
    /// there is nothing more.
    fn fill(&mut self) -> Result<bool, TailError> {
        let open = self.open.as_mut().expect("a segment is open");
        self.buf.drain(..self.pos);
        self.pos = 0;
        let before = self.buf.len();
        self.buf.resize(before + self.step as usize, 0);
        let mut got = 0;
        while got < self.step as usize {
            let n = open
                .file
                .read_at(&mut self.buf[before + got..], open.at)
                .map_err(|source| TailError::Io {
                    path: open.path.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            got += n;
            open.at += n as u64;
        }
        self.buf.truncate(before + got);
        let read = got as u64;
        if read == self.step {
            self.step = (self.step * 2).min(READ_STEP_MAX);
        }
        Ok(read > 0)
    }

    /// Forgets the bytes from the decoding position on and moves the file back to them, so
    /// they are read again once the writer has filled them.
    fn unread_rest(&mut self) -> Result<(), TailError> {
        let open = self.open.as_mut().expect("a segment is open");
        let back = (self.buf.len() - self.pos) as u64;
        open.at -= back;
        self.buf.truncate(self.pos);
        self.step = READ_STEP_MIN;
        Ok(())
    }

    /// The sequence number in the frame header at the decoding position, if it is whole.
    fn frame_seq(&self) -> Option<u64> {
        let header = self.buf.get(self.pos + 12..self.pos + 20)?;
        Some(u64::from_le_bytes(header.try_into().expect("8 bytes")))
    }

    /// At the end of what the open segment holds for now; `false` if there is nothing more
    /// to read anywhere yet. The writer cuts and syncs a segment before it starts the next,
    /// so once a later segment exists the open one is final, but bytes written just before
    /// it closed may not have been read: the first time a later segment is seen, the rest
    /// of the open one is read again, and only at its end after that does the tail move on.
    fn end_of_segment(&mut self) -> Result<bool, TailError> {
        let open = self.open.as_ref().expect("a segment is open");
        let current = open.first;
        let finished = open.finished;
        let next = self
            .segments()?
            .into_iter()
            .find(|(first, _)| *first > current);
        match next {
            Some((first, path)) if finished => {
                self.open_path(first, path)?;
                Ok(true)
            }
            Some(_) => {
                self.unread_rest()?;
                self.open.as_mut().expect("a segment is open").finished = true;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::storage::StdStorage;
    use crate::wal::tests::state;
    use crate::wal::{SyncMode, Wal};

    /// A backlog of many records over several segments comes back whole and in order, in
    /// small reads, with the records written meanwhile after it.
    #[test]
    fn reads_a_long_backlog_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 0, None, SyncMode::Always, 256 * 1024).unwrap();
        let write = |from: u32, n: u32| {
            for chunk in (from..from + n).collect::<Vec<_>>().chunks(500) {
                let mut r = wal.reserve(chunk.len() as u64);
                for s in chunk {
                    r.push(&state(*s));
                }
                r.submit().wait();
            }
        };
        write(0, 60_000);
        let mut tail = LogTail::new(dir.path(), 0);
        let mut out = Vec::new();
        let mut reads = 0;
        while out.len() < 60_000 {
            tail.read(wal.durable_seq(), 777, &mut out).unwrap();
            reads += 1;
            assert!(reads < 1000, "the tail stopped at {}", out.len());
        }
        write(60_000, 1_000);
        tail.read(wal.durable_seq(), usize::MAX, &mut out).unwrap();
        assert_eq!(out.len(), 61_000);
        for (i, (seq, record)) in out.iter().enumerate() {
            assert_eq!(*seq, i as u64);
            assert_eq!(*record, state(i as u32));
        }
        assert!(
            list(&StdStorage, dir.path()).unwrap().len() > 2,
            "the backlog spans segments"
        );
        wal.close();
    }

    /// Numbers reserved and never written (a scan that changed nothing) leave the tail's
    /// position below the durable limit for good: the read still says it has caught up, so
    /// a subscription waits for more rather than reading again at once; a read stopped at
    /// its most does not.
    #[test]
    fn a_gap_at_the_end_of_the_log_counts_as_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 0, None, SyncMode::Always, 64 * 1024).unwrap();
        let mut r = wal.reserve(6);
        for serial in 0..4 {
            r.push(&state(serial));
        }
        r.submit().wait();
        let limit = wal.durable_seq();
        assert_eq!(limit, 6, "the unused numbers are durable too");
        let mut tail = LogTail::new(dir.path(), 0);
        let mut out = Vec::new();
        assert!(
            !tail.read(limit, 3, &mut out).unwrap(),
            "stopped at its most"
        );
        assert!(tail.read(limit, 3, &mut out).unwrap());
        assert_eq!(out.len(), 4);
        assert_eq!(tail.next_seq(), 4, "numbers 4 and 5 are written nowhere");
        // Again, as a subscription would: nothing new, still caught up.
        assert!(tail.read(limit, 3, &mut out).unwrap());
        assert_eq!(out.len(), 4);
        // What comes after the gap is read as ever.
        let mut r = wal.reserve(1);
        r.push(&state(9));
        r.submit().wait();
        assert!(tail.read(wal.durable_seq(), 3, &mut out).unwrap());
        assert_eq!(out.last(), Some(&(6, state(9))));
        wal.close();
    }

    /// A tail reading while the writer fills prepared segments and rolls from one to the
    /// next misses nothing and repeats nothing.
    #[test]
    fn follows_the_writer_live_across_prepared_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 0, None, SyncMode::Always, 64 * 1024).unwrap();
        const N: u32 = 40_000;
        std::thread::scope(|s| {
            s.spawn(|| {
                for chunk in (0..N).collect::<Vec<_>>().chunks(40) {
                    let mut r = wal.reserve(chunk.len() as u64);
                    for serial in chunk {
                        r.push(&state(*serial));
                    }
                    r.submit().wait();
                }
            });
            let mut tail = LogTail::new(dir.path(), 0);
            let mut out = Vec::new();
            let started = std::time::Instant::now();
            while out.len() < N as usize {
                tail.read(wal.durable_seq(), 100, &mut out).unwrap();
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(60),
                    "the tail stopped at {}",
                    out.len()
                );
            }
            for (i, (seq, record)) in out.iter().enumerate() {
                assert_eq!((*seq, record), (i as u64, &state(i as u32)));
            }
        });
        let segments = list(&StdStorage, dir.path()).unwrap();
        assert!(segments.len() > 4, "the writer rolled: {}", segments.len());
        wal.close();
    }
}
