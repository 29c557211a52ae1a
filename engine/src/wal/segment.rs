//! Log segments on disk: naming, the segment header, and the recovery scan.
//!
//! A segment is `wal/<first sequence number, 20 digits>.log`: an 8-byte magic `STILEWAL`, a
//! little-endian `u32` format version (1), then frames back to back (see `record.rs`).
//! A segment may end in zeros: it was prepared ahead of need (see [`prepare_spare`]) and not
//! yet filled. A frame's length is never zero, so readers stop there.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::record::Record;

/// Segment magic.
pub const SEGMENT_MAGIC: &[u8; 8] = b"STILEWAL";
/// Segment format version.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of segment header.
pub const SEGMENT_HEADER_LEN: u64 = 12;
/// A segment is closed and a new one started once it passes this size.
pub const SEGMENT_MAX_BYTES: u64 = 64 << 20;

/// The log is damaged somewhere other than its tail: the engine refuses to open.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Reading a segment failed.
    #[error("{path}: {source}")]
    Io {
        /// The segment.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A record that is not the last one is damaged, or a segment header is wrong.
    #[error(
        "log corrupted in {path} at byte offset {offset}: {reason}; records after it exist, so \
         this is not a torn write. Restore the data dir from a backup, or move the log aside \
         to investigate"
    )]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Byte offset of the bad record or header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// What a scan found.
#[derive(Debug)]
pub struct ScanEnd {
    /// The sequence number after the last good record (the next to hand out).
    pub next_seq: u64,
    /// Segments in order, with the length of their good prefix.
    pub segments: Vec<(PathBuf, u64)>,
    /// Bytes cut off the last segment's torn tail, up to its last byte that is not zero
    /// (0 if none): what a crash left half written.
    pub truncated_bytes: u64,
    /// Zeros cut off after them: space prepared ahead that no record had reached.
    pub unwritten_bytes: u64,
    /// Records replayed.
    pub records: u64,
}

/// The path of the segment whose first record has sequence `first_seq`.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

/// Removes segments that hold only records numbered below `seq` (never the last one).
/// Returns how many were removed.
pub fn remove_before(dir: &Path, seq: u64) -> io::Result<usize> {
    let segments = list(dir)?;
    let mut removed = 0;
    for pair in segments.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        if *next_first <= seq {
            fs::remove_file(path)?;
            removed += 1;
        }
    }
    if removed > 0 {
        File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}

/// Segments in `dir`, sorted by their first sequence number.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let path = e?.path();
                let first = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".log"))
                    .and_then(|n| n.parse::<u64>().ok());
                if let Some(first) = first {
                    out.push((first, path));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

/// Prepared segments are made under temporary names `next-segment-N.tmp` and renamed
/// `next-segment-ready-N.tmp` once whole and synced. Neither parses as a segment, so scans
/// and tails never see them (see [`prepare_spare`]).
const SPARE_PREFIX: &str = "next-segment";
/// The name's start for a whole spare, kept from one start of the log to the next.
const READY_PREFIX: &str = "next-segment-ready-";
/// Zeros written (and synced) per step while preparing a spare. Small steps keep the log's
/// own `fdatasync` from queueing behind a large flush: measured on the development disk
/// with a spare being written beside a log syncing 2 KiB at a time, 1 MiB steps put 9 to
/// 15 % of the log's sync time into syncs over 1.5 ms (1 to 1.4 % with no spare), 256 KiB
/// steps 0.7 to 4 %.
const SPARE_STEP: usize = 256 << 10;
/// Pause between steps while the log is busy, so preparing a spare never floods the disk
/// the log syncs to (at most about 25 MB/s: a 64 MiB segment in about 3 s).
pub const SPARE_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// The temporary path of the `n`th segment prepared in `dir`, while it is being written.
pub fn spare_path_numbered(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{SPARE_PREFIX}-{n}.tmp"))
}

/// The path of the `n`th segment prepared in `dir` once it is whole and synced.
pub fn ready_spare_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{READY_PREFIX}{n}.tmp"))
}

/// The number of a whole spare's name, if `name` is one.
fn ready_spare_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(READY_PREFIX)?.strip_suffix(".tmp")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `name` is a prepared segment's temporary name, whole or in the making (this
/// version's names, or the single `next-segment.tmp` of earlier ones).
pub fn is_spare_name(name: &str) -> bool {
    name.starts_with(SPARE_PREFIX) && name.ends_with(".tmp")
}

/// The whole spares a previous run of the log left in `dir` that are fit to use: at most
/// `keep` of them, lowest numbers first, each `len` bytes long and starting with a segment
/// header, opened for writing. Every other prepared segment there is removed: one a crash
/// cut short (still under its `next-segment-N.tmp` name), one of another length (the
/// segment size changed), one with a bad header, and those beyond `keep`.
pub fn keep_spares(dir: &Path, len: u64, keep: usize) -> io::Result<Vec<(u64, PathBuf, File)>> {
    let mut whole = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_spare_name(&name) {
            continue;
        }
        let path = entry.path();
        match ready_spare_number(&name) {
            Some(n) if keep > 0 && is_whole_spare(&path, len)? => whole.push((n, path)),
            _ => fs::remove_file(&path)?,
        }
    }
    whole.sort();
    let mut kept = Vec::new();
    for (n, path) in whole {
        if kept.len() < keep {
            let f = OpenOptions::new().write(true).open(&path)?;
            kept.push((n, path, f));
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(kept)
}

/// Bytes at the start, after the header, and at the end of a kept spare that must be zeros.
const SPARE_CHECKED: u64 = 4096;

/// Whether the file at `path` is `len` bytes long, starts with a segment header, and holds
/// zeros where it is looked at (its first and last [`SPARE_CHECKED`] bytes past the header).
/// A spare is renamed whole only after its zeros are synced, so this only catches a file
/// put there by other hands, which is never taken for a log's runway.
fn is_whole_spare(path: &Path, len: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path)?;
    if f.metadata()?.len() != len || len < SEGMENT_HEADER_LEN + SPARE_CHECKED {
        return Ok(false);
    }
    let mut head = vec![0u8; (SEGMENT_HEADER_LEN + SPARE_CHECKED) as usize];
    let mut tail = vec![0u8; SPARE_CHECKED as usize];
    if f.read_exact_at(&mut head, 0).is_err()
        || f.read_exact_at(&mut tail, len - SPARE_CHECKED).is_err()
    {
        return Ok(false);
    }
    let (header, zeros) = head.split_at(SEGMENT_HEADER_LEN as usize);
    Ok(header[..SEGMENT_MAGIC.len()] == *SEGMENT_MAGIC
        && header[SEGMENT_MAGIC.len()..] == SEGMENT_VERSION.to_le_bytes()
        && zeros.iter().chain(&tail).all(|&b| b == 0))
}

/// Prepares a segment ahead of need at `path`: a segment header followed by zeros up to
/// `len` bytes, *written* (not just allocated) and synced, a step at a time, then renamed
/// to `ready` (so a spare under that name is whole: one a crash cut short keeps `path`).
/// Records later written over those zeros change no file metadata, so the `fdatasync` that
/// makes them durable flushes data blocks only: no journal commit for a new size or newly
/// allocated blocks. After each step `pace()` waits as long as the log needs the disk
/// more. Returns `None`, having removed the file, when `stop` turns true between steps.
pub fn prepare_spare(
    path: &Path,
    ready: &Path,
    len: u64,
    stop: impl Fn() -> bool,
    mut pace: impl FnMut(),
) -> io::Result<Option<File>> {
    // A new name each time: never a file anyone else holds.
    let mut f = OpenOptions::new().create_new(true).write(true).open(path)?;
    f.write_all(SEGMENT_MAGIC)?;
    f.write_all(&SEGMENT_VERSION.to_le_bytes())?;
    let zeros = vec![0u8; SPARE_STEP];
    let mut at = SEGMENT_HEADER_LEN;
    while at < len {
        if stop() {
            drop(f);
            fs::remove_file(path)?;
            return Ok(None);
        }
        let n = (len - at).min(SPARE_STEP as u64) as usize;
        f.write_all(&zeros[..n])?;
        f.sync_data()?;
        at += n as u64;
        pace();
    }
    f.sync_all()?;
    // Its zeros are durable before the name says it is whole. The rename itself need not
    // be: lost in a crash, it leaves a spare under `path`, which the next start removes.
    fs::rename(path, ready)?;
    Ok(Some(f))
}

/// Makes the spare at `spare` the segment whose first record is `first_seq`, durably.
pub fn adopt_spare(dir: &Path, spare: &Path, first_seq: u64) -> io::Result<()> {
    fs::rename(spare, segment_path(dir, first_seq))?;
    File::open(dir)?.sync_all()
}

/// Creates a segment file with its header and fsyncs it and the directory.
pub fn create(dir: &Path, first_seq: u64) -> io::Result<File> {
    let path = segment_path(dir, first_seq);
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
    header.extend_from_slice(SEGMENT_MAGIC);
    header.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
    f.write_all(&header)?;
    f.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(f)
}

/// Reads every segment, calling `apply` for each good record numbered `from_seq` or later,
/// in order (earlier ones are checked and skipped: a snapshot holds them). A damaged final record of the last segment (a torn write) is cut off the file; any
/// other damage is [`ScanError::Corrupt`], naming file and offset.
pub fn scan(
    dir: &Path,
    from_seq: u64,
    mut apply: impl FnMut(u64, Record) -> Result<(), String>,
) -> Result<ScanEnd, ScanError> {
    let segments = list(dir).map_err(|source| ScanError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if let Some((first, path)) = segments.first() {
        if *first > from_seq {
            return Err(ScanError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: format!(
                    "the log starts at record {first} but recovery needs it from record {from_seq}: \
                     the records between were dropped after a snapshot that is now missing or damaged"
                ),
            });
        }
    }
    let mut next_seq = 0;
    let mut good = Vec::new();
    let mut truncated_bytes = 0;
    let mut unwritten_bytes = 0;
    let mut records = 0;
    let count = segments.len();
    for (i, (first, path)) in segments.into_iter().enumerate() {
        let last = i + 1 == count;
        let io = |source| ScanError::Io {
            path: path.clone(),
            source,
        };
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io)?;
        let corrupt = |offset: usize, reason: String| ScanError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        if bytes.len() < SEGMENT_HEADER_LEN as usize && last {
            // Created but its header never reached the disk: start it again.
            truncated_bytes += bytes.len() as u64;
            fs::remove_file(&path).map_err(io)?;
            continue;
        }
        if &bytes[..8.min(bytes.len())] != SEGMENT_MAGIC
            || bytes.len() < SEGMENT_HEADER_LEN as usize
            || u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) != SEGMENT_VERSION
        {
            return Err(corrupt(
                0,
                "not a stile log segment (bad magic or version)".into(),
            ));
        }
        let mut at = SEGMENT_HEADER_LEN as usize;
        while at < bytes.len() {
            match Record::decode(&bytes[at..]) {
                Ok((record, seq, len)) => {
                    if seq < next_seq.max(first) {
                        return Err(corrupt(
                            at,
                            format!("sequence {seq} after {}", next_seq.saturating_sub(1)),
                        ));
                    }
                    if seq >= from_seq {
                        apply(seq, record).map_err(|reason| corrupt(at, reason))?;
                        records += 1;
                    }
                    next_seq = seq + 1;
                    at += len;
                }
                Err(e) => {
                    if last && is_tail(&bytes[at..], next_seq) {
                        let written = bytes[at..]
                            .iter()
                            .rposition(|&b| b != 0)
                            .map_or(0, |i| i + 1);
                        truncated_bytes += written as u64;
                        unwritten_bytes += (bytes.len() - at - written) as u64;
                        let f = OpenOptions::new().write(true).open(&path).map_err(io)?;
                        f.set_len(at as u64).map_err(io)?;
                        f.sync_all().map_err(io)?;
                        bytes.truncate(at);
                        break;
                    }
                    return Err(corrupt(at, format!("{e:?}")));
                }
            }
        }
        good.push((path, bytes.len() as u64));
    }
    Ok(ScanEnd {
        next_seq: next_seq.max(from_seq),
        segments: good,
        truncated_bytes,
        unwritten_bytes,
        records,
    })
}

/// How far past a damaged record the scan looks for a later good one.
const TAIL_PROBE_BYTES: usize = 1 << 20;

/// Whether damage at the start of `rest` is a torn final write rather than corruption: it is
/// when everything from here is zeros, or when no good frame with a later sequence number
/// starts anywhere in the next [`TAIL_PROBE_BYTES`] (a torn write leaves nothing after it;
/// a damaged record in the middle has good records right behind it).
fn is_tail(rest: &[u8], next_seq: u64) -> bool {
    if rest.iter().all(|&b| b == 0) {
        return true;
    }
    let end = rest.len().min(TAIL_PROBE_BYTES);
    !(1..end).any(|i| matches!(Record::decode(&rest[i..]), Ok((_, seq, _)) if seq >= next_seq))
}
