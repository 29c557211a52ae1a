//! The gate's journal: every scan it decided offline, and every online answer that arrived
//! after the gate had already answered offline, each written and synced (`fdatasync`)
//! before the gate shows its answer, so a gate that loses power forgets no one it let
//! through. Upload marks record how far the node has applied it.
//!
//! A record is framed: `u16` body length, `u64` xxh3 of the body, the body (little endian).
//! Each record is synced before the next is written, so only the last one can be torn by a
//! power cut: a damaged last record is cut off, and damage followed by a whole record is
//! corruption, refused with its offset.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use stile_protocol::{CodeBytes, OutcomeKind};

use crate::rules::Op;

/// Bytes of a frame's header: body length and checksum.
const FRAME_HEADER: usize = 2 + 8;
/// Longest body (a scan with the longest code).
const BODY_MAX: usize = 1 + 8 + 8 + 8 + 1 + 1 + 1 + stile_protocol::code::MAX_LEN;

/// A scan as the journal keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// The gate's scan id (the same one it sent online, if it did).
    pub scan_id: u64,
    /// When it was scanned, by the gate's clock corrected by its last known offset, Unix ms.
    pub scanned_at_unix_ms: u64,
    /// When the gate last heard from the node before this scan, Unix seconds (0: never):
    /// the node clamps the scan's time to no earlier than this.
    pub last_online_unix_s: u64,
    /// Entry or exit.
    pub op: Op,
    /// What the gate answered (offline), or the node answered (late online).
    pub decision: OutcomeKind,
    /// The code.
    pub code: CodeBytes,
}

/// One journal record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A scan the gate decided itself.
    Offline(Scan),
    /// The node's answer to a scan the gate had already decided offline (an admit or exit
    /// the node applied: the upload must not apply it again; a refusal: the offline
    /// decision is uploaded all the same, so an offline admit it contradicts is a conflict).
    LateOnline(Scan),
    /// The node has applied the first `count` scans of the journal.
    Uploaded {
        /// Scans applied, counted from the journal's start.
        count: u64,
    },
}

const KIND_OFFLINE: u8 = 1;
const KIND_LATE_ONLINE: u8 = 2;
const KIND_UPLOADED: u8 = 3;

/// Why a journal cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The journal.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A record before the last is damaged: not a torn write.
    #[error(
        "journal {path} is damaged at byte offset {offset}: a record before the last does not \
         read back; its scans may not have been uploaded. Move it aside to investigate"
    )]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
    },
}

impl Record {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        match self {
            Record::Offline(s) | Record::LateOnline(s) => {
                out.push(match self {
                    Record::Offline(_) => KIND_OFFLINE,
                    _ => KIND_LATE_ONLINE,
                });
                out.extend_from_slice(&s.scan_id.to_le_bytes());
                out.extend_from_slice(&s.scanned_at_unix_ms.to_le_bytes());
                out.extend_from_slice(&s.last_online_unix_s.to_le_bytes());
                out.push(match s.op {
                    Op::Entry => 0,
                    Op::Exit => 1,
                });
                out.push(s.decision as u8);
                let code = s.code.as_bytes();
                out.push(code.len() as u8);
                out.extend_from_slice(code);
            }
            Record::Uploaded { count } => {
                out.push(KIND_UPLOADED);
                out.extend_from_slice(&count.to_le_bytes());
            }
        }
        let body_len = out.len() - start - FRAME_HEADER;
        let sum = xxhash_rust::xxh3::xxh3_64(&out[start + FRAME_HEADER..]);
        out[start..start + 2].copy_from_slice(&(body_len as u16).to_le_bytes());
        out[start + 2..start + FRAME_HEADER].copy_from_slice(&sum.to_le_bytes());
    }

    fn decode(body: &[u8]) -> Option<Record> {
        let (&kind, rest) = body.split_first()?;
        let u64_at = |i: usize| Some(u64::from_le_bytes(rest.get(i..i + 8)?.try_into().ok()?));
        match kind {
            KIND_UPLOADED if rest.len() == 8 => Some(Record::Uploaded { count: u64_at(0)? }),
            KIND_OFFLINE | KIND_LATE_ONLINE => {
                let op = match *rest.get(24)? {
                    0 => Op::Entry,
                    1 => Op::Exit,
                    _ => return None,
                };
                let decision = OutcomeKind::from_u8(*rest.get(25)?)?;
                let len = usize::from(*rest.get(26)?);
                let code = CodeBytes::from_slice(rest.get(27..27 + len)?).ok()?;
                if rest.len() != 27 + len {
                    return None;
                }
                let s = Scan {
                    scan_id: u64_at(0)?,
                    scanned_at_unix_ms: u64_at(8)?,
                    last_online_unix_s: u64_at(16)?,
                    op,
                    decision,
                    code,
                };
                Some(if kind == KIND_OFFLINE {
                    Record::Offline(s)
                } else {
                    Record::LateOnline(s)
                })
            }
            _ => None,
        }
    }
}

/// The journal, open for appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Every scan in it, in order.
    scans: Vec<Record>,
    /// Scans the node has applied (a prefix of `scans`).
    uploaded: u64,
    /// A frame being built.
    buf: Vec<u8>,
}

impl Journal {
    /// Opens the journal at `path` (made if missing), reading what it holds; a torn last
    /// record is cut off.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let io_err = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let mut scans = Vec::new();
        let mut uploaded = 0;
        let mut at = 0usize;
        while at < bytes.len() {
            match frame_at(&bytes[at..]) {
                Some((len, record)) => {
                    match record {
                        Record::Uploaded { count } => uploaded = count,
                        r => scans.push(r),
                    }
                    at += len;
                }
                None => {
                    // Torn only if nothing whole follows: a later whole frame was written
                    // after this one was synced.
                    let later_whole =
                        (at + 1..bytes.len()).any(|i| frame_at(&bytes[i..]).is_some());
                    if later_whole {
                        return Err(JournalError::Corrupt {
                            path: path.to_path_buf(),
                            offset: at as u64,
                        });
                    }
                    file.set_len(at as u64).map_err(io_err)?;
                    file.sync_data().map_err(io_err)?;
                    break;
                }
            }
        }
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            uploaded: uploaded.min(scans.len() as u64),
            scans,
            buf: Vec::with_capacity(FRAME_HEADER + BODY_MAX),
        })
    }

    /// Appends `record` and syncs it: when this returns `Ok`, it survives a power cut. When
    /// it fails (a full disk), the journal is cut back to its last whole record, so a later
    /// append does not follow a partial one (which the next open would take for damage).
    pub fn append(&mut self, record: Record) -> io::Result<()> {
        self.buf.clear();
        record.encode(&mut self.buf);
        let before = self.file.metadata()?.len();
        if let Err(e) = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data())
        {
            // Best effort: if even this fails, the next open finds a torn last record.
            let _ = self
                .file
                .set_len(before)
                .and_then(|()| self.file.sync_data());
            return Err(e);
        }
        match record {
            Record::Uploaded { count } => self.uploaded = count.min(self.scans.len() as u64),
            r => self.scans.push(r),
        }
        Ok(())
    }

    /// Appends `record` without syncing it (for tools that fill a journal, then
    /// [`Journal::sync`] once); a gate's own decisions use [`Journal::append`].
    pub fn append_unsynced(&mut self, record: Record) -> io::Result<()> {
        self.buf.clear();
        record.encode(&mut self.buf);
        self.file.write_all(&self.buf)?;
        match record {
            Record::Uploaded { count } => self.uploaded = count.min(self.scans.len() as u64),
            r => self.scans.push(r),
        }
        Ok(())
    }

    /// Syncs what was appended.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Every scan recorded, in order.
    pub fn scans(&self) -> &[Record] {
        &self.scans
    }

    /// The scans the node has not applied yet, in order.
    pub fn pending(&self) -> &[Record] {
        &self.scans[self.uploaded as usize..]
    }

    /// How many scans the node has applied.
    pub fn uploaded(&self) -> u64 {
        self.uploaded
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The frame at the start of `b`: its length and record, if whole and sound.
fn frame_at(b: &[u8]) -> Option<(usize, Record)> {
    let len = usize::from(u16::from_le_bytes(b.get(..2)?.try_into().ok()?));
    if len == 0 || len > BODY_MAX {
        return None;
    }
    let sum = u64::from_le_bytes(b.get(2..FRAME_HEADER)?.try_into().ok()?);
    let body = b.get(FRAME_HEADER..FRAME_HEADER + len)?;
    if xxhash_rust::xxh3::xxh3_64(body) != sum {
        return None;
    }
    Some((FRAME_HEADER + len, Record::decode(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(n: u64) -> Scan {
        let mut b = [0u8; 20];
        b[0] = 1;
        b[6..10].copy_from_slice(&(n as u32).to_be_bytes());
        Scan {
            scan_id: n,
            scanned_at_unix_ms: 1_800_000_000_000 + n,
            last_online_unix_s: 1_800_000_000 - n,
            op: if n.is_multiple_of(2) {
                Op::Entry
            } else {
                Op::Exit
            },
            decision: OutcomeKind::Admitted,
            code: CodeBytes::from_slice(&b).unwrap(),
        }
    }

    #[test]
    fn records_survive_a_reopen_and_uploads_move_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut j = Journal::open(&path).unwrap();
        for n in 0..5 {
            j.append(Record::Offline(scan(n))).unwrap();
        }
        j.append(Record::LateOnline(scan(5))).unwrap();
        j.append(Record::Uploaded { count: 3 }).unwrap();
        assert_eq!(j.pending().len(), 3);
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.scans().len(), 6);
        assert_eq!(j.uploaded(), 3);
        assert_eq!(j.pending()[0], Record::Offline(scan(3)));
        assert_eq!(j.pending()[2], Record::LateOnline(scan(5)));
    }

    #[test]
    fn a_torn_last_record_is_cut_and_damage_before_a_whole_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut j = Journal::open(&path).unwrap();
        for n in 0..4 {
            j.append(Record::Offline(scan(n))).unwrap();
        }
        drop(j);
        let whole = std::fs::read(&path).unwrap();
        let frame = whole.len() / 4;
        // A power cut in the middle of the last record.
        std::fs::write(&path, &whole[..whole.len() - 7]).unwrap();
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.scans().len(), 3);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            3 * frame as u64,
            "the torn bytes are cut, so the next record follows whole ones"
        );
        j.append(Record::Offline(scan(9))).unwrap();
        drop(j);
        assert_eq!(Journal::open(&path).unwrap().scans().len(), 4);
        // A flipped bit in the second record, with whole records after it.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[frame + 12] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        match Journal::open(&path) {
            Err(JournalError::Corrupt { offset, .. }) => assert_eq!(offset, frame as u64),
            other => panic!("expected corruption, got {other:?}"),
        }
    }
}
