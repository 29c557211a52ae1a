//! Reading the log from a position while it grows: what `subscribe` streams.
//!
//! Only records below a limit the caller takes from the writer (everything below
//! [`super::Wal::durable_seq`] is whole in its file) are read, so a tail never sees a frame
//! being written. Segments are read in order; a segment is left only once a later one exists
//! (the writer closes a segment before it starts the next).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::record::{DecodeError, Record};
use super::segment::{list, SEGMENT_HEADER_LEN};

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

/// An open segment being read.
#[derive(Debug)]
struct Open {
    first: u64,
    path: PathBuf,
    file: File,
}

/// A reader that follows the log from a position.
#[derive(Debug)]
pub struct LogTail {
    dir: PathBuf,
    /// Next position wanted.
    next_seq: u64,
    open: Option<Open>,
    /// Bytes read from the open segment; those from `pos` on are not yet decoded.
    buf: Vec<u8>,
    /// Where decoding resumes in `buf`. Decoded bytes are dropped only when more are read,
    /// all at once: dropping each record's bytes as it goes moves the rest of the buffer
    /// every time, which costs the square of a backlog.
    pos: usize,
}

impl LogTail {
    /// A tail of the log in `dir` starting at position `from_seq`.
    pub fn new(dir: &Path, from_seq: u64) -> Self {
        LogTail {
            dir: dir.to_path_buf(),
            next_seq: from_seq,
            open: None,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// The next position this tail will return.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends records numbered below `limit` (and at least the tail's position) to `out`,
    /// at most `max` of them, in order.
    pub fn read(
        &mut self,
        limit: u64,
        max: usize,
        out: &mut Vec<(u64, Record)>,
    ) -> Result<(), TailError> {
        let start = out.len();
        while out.len() - start < max && self.next_seq < limit {
            if self.open.is_none() && !self.open_segment()? {
                return Ok(());
            }
            match Record::decode(&self.buf[self.pos..]) {
                Ok((record, seq, len)) => {
                    if seq >= limit {
                        return Ok(());
                    }
                    self.pos += len;
                    if seq >= self.next_seq {
                        self.next_seq = seq + 1;
                        out.push((seq, record));
                    }
                }
                Err(DecodeError::Incomplete) => {
                    if !self.fill()? && !self.advance_segment()? {
                        return Ok(());
                    }
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
        Ok(())
    }

    fn segments(&self) -> Result<Vec<(u64, PathBuf)>, TailError> {
        list(&self.dir).map_err(|source| TailError::Io {
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
        let mut file = File::open(&path).map_err(io)?;
        file.seek(SeekFrom::Start(SEGMENT_HEADER_LEN)).map_err(io)?;
        self.buf.clear();
        self.pos = 0;
        self.open = Some(Open { first, path, file });
        Ok(())
    }

    /// Reads what the open segment has beyond the buffer; `false` if nothing.
    fn fill(&mut self) -> Result<bool, TailError> {
        let open = self.open.as_mut().expect("a segment is open");
        self.buf.drain(..self.pos);
        self.pos = 0;
        let before = self.buf.len();
        open.file
            .read_to_end(&mut self.buf)
            .map_err(|source| TailError::Io {
                path: open.path.clone(),
                source,
            })?;
        Ok(self.buf.len() > before)
    }

    /// Moves to the segment after the open one if there is one; `false` otherwise.
    fn advance_segment(&mut self) -> Result<bool, TailError> {
        let current = self.open.as_ref().expect("a segment is open").first;
        let next = self
            .segments()?
            .into_iter()
            .find(|(first, _)| *first > current);
        match next {
            Some((first, path)) => {
                self.open_path(first, path)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{SyncMode, Wal};

    fn state(serial: u32) -> Record {
        Record::State {
            partition: 0,
            serial,
            word: u64::from(serial) << 8,
            first_scan_e: serial,
            scan: None,
        }
    }

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
            list(dir.path()).unwrap().len() > 2,
            "the backlog spans segments"
        );
        wal.close();
    }
}
