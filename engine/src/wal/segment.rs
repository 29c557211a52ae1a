//! Log segments on disk: naming, the segment header, and the recovery scan.
//!
//! A segment is `wal/<first sequence number, 20 digits>.log`: an 8-byte magic `STILEWAL`, a
//! little-endian `u32` format version (3), the segment's [`Link`] to its predecessor (40
//! bytes), then frames back to back (see `record.rs`): records, and durability marks.
//! Version 2 segments (no marks; their link's checksum covers the link alone) and version 1
//! segments (no link; frames from byte 12) are still read, and never appended to again.
//! A segment may end in zeros: it was prepared ahead of need (see [`prepare_spare`]) and not
//! yet filled. A frame's length is never zero, so readers stop there.
//!
//! **Torn or corrupt.** Damage confined to what was never synced is what a power cut leaves:
//! recovery cuts it off and starts. Damage in what was synced is corruption: recovery
//! refuses, naming the file and offset. The writer makes the two distinguishable: the first
//! write after each sync starts with a mark saying how much of the segment is synced (and an
//! idle writer writes one on its own, a closed segment ends with one). Damage at offset `X`
//! of the newest segment is corruption when a good mark after it says that more than `X`
//! bytes were synced; otherwise it is a torn tail, however many good frames survive after
//! it (a power cut keeps any subset of the unsynced sectors). Segments before the newest
//! were synced whole before the next one began: any damage in them is corruption. Only
//! the last batch synced before a crash, if the mark after it was lost too, is declared by
//! nothing: a bit flipped there is taken for a torn write.
//!
//! **The chain.** Sequence numbers may have gaps (numbers reserved by scans that changed
//! nothing), so consecutive segments' names cannot prove that none is missing between them.
//! The link does: written (and synced) when a segment is switched to, before any record goes
//! into it, it names the previous segment's first number, its length and its last record's
//! number and checksum. Recovery checks every link against the segment before it, so a
//! deleted segment, or an older one cut short (even at a record boundary), refuses to start
//! instead of losing the records it held. Only the newest segment's tail may be cut as torn.

use std::io;
use std::path::{Path, PathBuf};

use super::record::{decode_frame, DecodeError, Frame, Record, FRAME_HEADER_LEN, MARK_FRAME_LEN};
use crate::storage::{Create, Storage, StorageFile};

/// Segment magic.
pub const SEGMENT_MAGIC: &[u8; 8] = b"STILEWAL";
/// Segment format version: 3, with a [`Link`] covering the magic and version too, and
/// durability marks among the frames.
pub const SEGMENT_VERSION: u32 = 3;
/// The version of segments with a link but no marks (still read).
pub const SEGMENT_VERSION_LINKED: u32 = 2;
/// The version of segments without a link (still read).
pub const SEGMENT_VERSION_UNLINKED: u32 = 1;
/// Bytes of magic and version.
const MAGIC_VERSION_LEN: u64 = 12;
/// Bytes of a [`Link`] as written.
pub const LINK_LEN: u64 = 40;
/// Bytes of segment header (magic, version, link): where a segment's frames start.
pub const SEGMENT_HEADER_LEN: u64 = MAGIC_VERSION_LEN + LINK_LEN;
/// Where the frames of a version 1 segment start.
const SEGMENT_HEADER_LEN_UNLINKED: u64 = MAGIC_VERSION_LEN;
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
        "log corrupted in {path} at byte offset {offset}: {reason}. This is damage, not a torn \
         write: restore the data dir from a backup, or move the log aside to investigate"
    )]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Byte offset of the bad record or header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A segment is missing, or one before the newest was cut short: records are lost.
    #[error(
        "log incomplete at {path}: {reason}. Acknowledged changes would be lost, so the node \
         refuses to start: put the missing segment back, or restore the data dir from a backup"
    )]
    Missing {
        /// The segment whose link (or position) shows the loss.
        path: PathBuf,
        /// What is missing.
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
    /// The last segment, what the log appends to (and the next segment's link names).
    pub tail: Option<Tail>,
    /// Bytes cut off the last segment's torn tail, up to its last byte that is not zero
    /// (0 if none): what a crash left half written.
    pub truncated_bytes: u64,
    /// Zeros cut off after them: space prepared ahead that no record had reached.
    pub unwritten_bytes: u64,
    /// Records replayed.
    pub records: u64,
}

/// What a segment says of the one before it, written when it is switched to.
///
/// Layout (little endian): the previous segment's first sequence number (its name), its
/// length in bytes, its last record's sequence number and that record's checksum, then
/// xxh3-64, seeded with this segment's own first sequence number, of the magic, the version
/// and those 32 bytes (version 2: of the 32 bytes alone, so that a version field flipped
/// from 3 to 2 fails the link instead of dropping the marks' rule). A log's first segment
/// names no predecessor: every field is `u64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The previous segment's first sequence number (`u64::MAX`: none).
    pub prev_first_seq: u64,
    /// The previous segment's length in bytes, header included.
    pub prev_len: u64,
    /// The sequence number of its last record.
    pub prev_last_seq: u64,
    /// That record's checksum (the frame's checksum field).
    pub prev_last_sum: u64,
}

impl Link {
    /// The link of a log's first segment.
    pub const FIRST: Link = Link {
        prev_first_seq: u64::MAX,
        prev_len: u64::MAX,
        prev_last_seq: u64::MAX,
        prev_last_sum: u64::MAX,
    };

    /// Whether this names no predecessor.
    pub fn is_first(&self) -> bool {
        *self == Link::FIRST
    }

    /// The link's bytes in the header of the segment (of this version) that starts at
    /// `first_seq`.
    pub fn encode(&self, first_seq: u64) -> [u8; LINK_LEN as usize] {
        self.encode_as(first_seq, SEGMENT_VERSION)
    }

    /// The link's bytes in a segment of format `version` (2 or 3).
    pub fn encode_as(&self, first_seq: u64, version: u32) -> [u8; LINK_LEN as usize] {
        let mut out = [0u8; LINK_LEN as usize];
        for (i, v) in [
            self.prev_first_seq,
            self.prev_len,
            self.prev_last_seq,
            self.prev_last_sum,
        ]
        .into_iter()
        .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let sum = link_sum(&out[..32], first_seq, version);
        out[32..].copy_from_slice(&sum.to_le_bytes());
        out
    }

    /// The link in `bytes` (a segment's header after magic and version), if its checksum
    /// holds for a segment of format `version` starting at `first_seq`.
    pub fn decode(bytes: &[u8], first_seq: u64, version: u32) -> Option<Link> {
        let bytes = bytes.get(..LINK_LEN as usize)?;
        let u = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let sum = link_sum(&bytes[..32], first_seq, version);
        (sum == u(4)).then(|| Link {
            prev_first_seq: u(0),
            prev_len: u(1),
            prev_last_seq: u(2),
            prev_last_sum: u(3),
        })
    }
}

/// The checksum of a link's 32 bytes of fields in a segment of format `version`.
fn link_sum(fields: &[u8], first_seq: u64, version: u32) -> u64 {
    if version == SEGMENT_VERSION_LINKED {
        return xxhash_rust::xxh3::xxh3_64_with_seed(fields, first_seq);
    }
    let mut covered = [0u8; (MAGIC_VERSION_LEN + 32) as usize];
    covered[..8].copy_from_slice(SEGMENT_MAGIC);
    covered[8..12].copy_from_slice(&version.to_le_bytes());
    covered[12..].copy_from_slice(fields);
    xxhash_rust::xxh3::xxh3_64_with_seed(&covered, first_seq)
}

/// What the next segment's link names: a segment's first number, length and last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The segment.
    pub path: PathBuf,
    /// Its first sequence number (its name).
    pub first_seq: u64,
    /// Its good length in bytes, header included.
    pub len: u64,
    /// Its last record's sequence number and checksum, if it holds any.
    pub last_record: Option<(u64, u64)>,
    /// Its format version (the log appends only to a segment of this version's).
    pub version: u32,
}

impl Tail {
    /// The link a segment switched to after this one carries.
    pub fn link(&self) -> Link {
        let (prev_last_seq, prev_last_sum) = self.last_record.unwrap_or((u64::MAX, u64::MAX));
        Link {
            prev_first_seq: self.first_seq,
            prev_len: self.len,
            prev_last_seq,
            prev_last_sum,
        }
    }
}

/// Writes `link` into the header of the segment `file` (starting at `first_seq`) and syncs
/// it, so that the link is durable before any record of the segment is.
pub fn write_link(file: &dyn StorageFile, first_seq: u64, link: &Link) -> io::Result<()> {
    file.write_at(&link.encode(first_seq), MAGIC_VERSION_LEN)?;
    file.sync_data()
}

/// Where the frames of a segment with format `version` start (`None`: not a version read).
pub fn frames_start(version: u32) -> Option<u64> {
    match version {
        SEGMENT_VERSION | SEGMENT_VERSION_LINKED => Some(SEGMENT_HEADER_LEN),
        SEGMENT_VERSION_UNLINKED => Some(SEGMENT_HEADER_LEN_UNLINKED),
        _ => None,
    }
}

/// The format version in a segment's first bytes, if they start with the magic.
pub fn version_of(header: &[u8]) -> Option<u32> {
    if header.len() < MAGIC_VERSION_LEN as usize || &header[..8] != SEGMENT_MAGIC {
        return None;
    }
    Some(u32::from_le_bytes(
        header[8..12].try_into().expect("4 bytes"),
    ))
}

/// The log's head: `wal/head`, naming the newest segment (its first sequence number, then
/// xxh3-64 of those 8 bytes; 16 bytes). Rewritten atomically each time a segment is made or
/// switched to, after the segment is durable and before any record goes into it, so that a
/// deleted newest segment (which no later link names) is found too.
pub const HEAD_FILE: &str = "head";

/// Records `first_seq` as the newest segment of the log in `dir`, durably. On a filesystem
/// with no room for the new copy (a segment switch on a full disk), the 16 bytes are
/// written over the old ones in place, as a segment's link is.
pub fn write_head(storage: &dyn Storage, dir: &Path, first_seq: u64) -> io::Result<()> {
    let mut bytes = first_seq.to_le_bytes().to_vec();
    bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&first_seq.to_le_bytes()).to_le_bytes());
    let tmp = dir.join("head.tmp");
    let head = dir.join(HEAD_FILE);
    match crate::storage::write_private_synced(storage, &tmp, &[&bytes]) {
        Ok(()) => crate::storage::rename_synced(storage, &tmp, &head),
        Err(e) if super::room::out_of_space(&e) && storage.exists(&head) => {
            let _ = storage.remove(&tmp);
            let f = storage.open(&head, true)?;
            f.write_at(&bytes, 0)?;
            f.sync_data()
        }
        Err(e) => Err(e),
    }
}

/// The newest segment `dir`'s head names (`None`: no head: a log written before heads, or
/// one whose first segment was made but given no record yet).
pub fn read_head(storage: &dyn Storage, dir: &Path) -> Result<Option<u64>, ScanError> {
    let path = dir.join(HEAD_FILE);
    let bytes = match storage.read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ScanError::Io { path, source }),
    };
    let first = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match first {
        Some(first)
            if bytes.len() == 16
                && bytes[8..] == xxhash_rust::xxh3::xxh3_64(&first.to_le_bytes()).to_le_bytes() =>
        {
            Ok(Some(first))
        }
        _ => Err(ScanError::Corrupt {
            path,
            offset: 0,
            reason: "the log's head (which names its newest segment) is damaged".into(),
        }),
    }
}

/// The path of the segment whose first record has sequence `first_seq`.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

/// Removes segments that hold only records numbered below `seq` (never the last one).
/// Returns how many were removed.
pub fn remove_before(storage: &dyn Storage, dir: &Path, seq: u64) -> io::Result<usize> {
    let segments = list(storage, dir)?;
    let mut removed = 0;
    for pair in segments.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        if *next_first <= seq {
            storage.remove(path)?;
            removed += 1;
        }
    }
    if removed > 0 {
        storage.sync_dir(dir)?;
    }
    Ok(removed)
}

/// Segments in `dir`, sorted by their first sequence number.
pub fn list(storage: &dyn Storage, dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for (name, path) in crate::storage::list_paths(storage, dir)? {
        let first = name
            .strip_suffix(".log")
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            out.push((first, path));
        }
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
pub(crate) const SPARE_STEP: usize = 256 << 10;
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

/// A whole spare kept for the runway: its number, path and open file.
pub type KeptSpare = (u64, PathBuf, Box<dyn StorageFile>);

/// The whole spares a previous run of the log left in `dir` that are fit to use: at most
/// `keep` of them, lowest numbers first, each `len` bytes long and starting with a segment
/// header, opened for writing. Every other prepared segment there is removed: one a crash
/// cut short (still under its `next-segment-N.tmp` name), one of another length (the
/// segment size changed), one with a bad header, and those beyond `keep`.
pub fn keep_spares(
    storage: &dyn Storage,
    dir: &Path,
    len: u64,
    keep: usize,
) -> io::Result<Vec<KeptSpare>> {
    let mut whole = Vec::new();
    for name in storage.list(dir)? {
        if !is_spare_name(&name) {
            continue;
        }
        let path = dir.join(&name);
        match ready_spare_number(&name) {
            Some(n) if keep > 0 && is_whole_spare(storage, &path, len)? => whole.push((n, path)),
            _ => storage.remove(&path)?,
        }
    }
    whole.sort();
    let mut kept = Vec::new();
    for (n, path) in whole {
        if kept.len() < keep {
            let f = storage.open(&path, true)?;
            kept.push((n, path, f));
        } else {
            storage.remove(&path)?;
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
fn is_whole_spare(storage: &dyn Storage, path: &Path, len: u64) -> io::Result<bool> {
    let f = storage.open(path, false)?;
    if f.size()? != len || len < SEGMENT_HEADER_LEN + SPARE_CHECKED {
        return Ok(false);
    }
    let mut head = vec![0u8; (SEGMENT_HEADER_LEN + SPARE_CHECKED) as usize];
    let mut tail = vec![0u8; SPARE_CHECKED as usize];
    if !read_exact_at(&*f, &mut head, 0)? || !read_exact_at(&*f, &mut tail, len - SPARE_CHECKED)? {
        return Ok(false);
    }
    // The link is written when the spare is switched to: zeros until then.
    let (header, zeros) = head.split_at(MAGIC_VERSION_LEN as usize);
    Ok(version_of(header) == Some(SEGMENT_VERSION) && zeros.iter().chain(&tail).all(|&b| b == 0))
}

/// Prepares a segment ahead of need at `path`: a segment header followed by zeros up to
/// `len` bytes, *written* (not just allocated) and synced, a step at a time, then renamed
/// to `ready` (so a spare under that name is whole: one a crash cut short keeps `path`).
/// Records later written over those zeros change no file metadata, so the `fdatasync` that
/// makes them durable flushes data blocks only: no journal commit for a new size or newly
/// allocated blocks. After each step `pace()` waits as long as the log needs the disk
/// more. Returns `None`, having removed the file, when `stop` turns true between steps.
pub fn prepare_spare(
    storage: &dyn Storage,
    path: &Path,
    ready: &Path,
    len: u64,
    step: usize,
    stop: impl Fn() -> bool,
    mut pace: impl FnMut(),
) -> io::Result<Option<Box<dyn StorageFile>>> {
    let mut spare = SpareWriter::begin(storage, path, ready, len, step)?;
    loop {
        if stop() {
            spare.abandon(storage)?;
            return Ok(None);
        }
        if spare.step()? {
            break;
        }
        pace();
    }
    spare.finish(storage).map(Some)
}

/// A spare in the making, a step at a time (see [`prepare_spare`]): made with the segment's
/// magic and version, written with zeros and synced a step at a time, then synced whole and
/// renamed to its ready name. The log's preparing thread drives it; so does a simulation,
/// one step when its seed says.
#[derive(Debug)]
pub struct SpareWriter {
    /// The file, under its temporary name.
    file: Box<dyn StorageFile>,
    /// Its temporary name.
    path: PathBuf,
    /// The name it takes once whole.
    ready: PathBuf,
    /// Its length once whole.
    len: u64,
    /// Bytes written so far.
    at: u64,
    /// Zeros written per step.
    step: usize,
}

impl SpareWriter {
    /// Makes the file at `path` (a new name each time: never a file anyone else holds) with
    /// the segment header's magic and version; it is to be `len` bytes, `step` at a time.
    pub fn begin(
        storage: &dyn Storage,
        path: &Path,
        ready: &Path,
        len: u64,
        step: usize,
    ) -> io::Result<SpareWriter> {
        let file = storage.create(path, Create::New)?;
        let mut header = SEGMENT_MAGIC.to_vec();
        header.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
        file.write_at(&header, 0)?;
        // The link's room stays zeros until the spare is switched to.
        Ok(SpareWriter {
            file,
            path: path.to_path_buf(),
            ready: ready.to_path_buf(),
            len,
            at: MAGIC_VERSION_LEN,
            step: step.max(1),
        })
    }

    /// Writes and syncs the next step of zeros; `true` once every byte is written.
    pub fn step(&mut self) -> io::Result<bool> {
        if self.at < self.len {
            let n = (self.len - self.at).min(self.step as u64) as usize;
            self.file.write_at(&vec![0u8; n], self.at)?;
            self.file.sync_data()?;
            self.at += n as u64;
        }
        Ok(self.at >= self.len)
    }

    /// Syncs the whole spare and renames it to its ready name; the open file. Its zeros are
    /// durable before the name says it is whole. The rename itself need not be: lost in a
    /// crash, it leaves a spare under its temporary name, which the next start removes.
    pub fn finish(self, storage: &dyn Storage) -> io::Result<Box<dyn StorageFile>> {
        debug_assert!(self.at >= self.len, "a spare is renamed whole");
        self.file.sync_all()?;
        storage.rename(&self.path, &self.ready)?;
        Ok(self.file)
    }

    /// Removes the spare (the log closed before it was whole, or a step failed).
    pub fn abandon(self, storage: &dyn Storage) -> io::Result<()> {
        drop(self.file);
        storage.remove(&self.path)
    }

    /// Its temporary name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name it takes once whole.
    pub fn ready(&self) -> &Path {
        &self.ready
    }
}

/// Makes the spare at `spare` (open as `file`) the segment whose first record is
/// `first_seq`, durably, with `link` to the segment before it.
pub fn adopt_spare(
    storage: &dyn Storage,
    dir: &Path,
    spare: &Path,
    file: &dyn StorageFile,
    first_seq: u64,
    link: &Link,
) -> io::Result<()> {
    storage.rename(spare, &segment_path(dir, first_seq))?;
    storage.sync_dir(dir)?;
    // A crash before this sync leaves a newest segment with no link and no records, which
    // recovery removes.
    write_link(file, first_seq, link)
}

/// Creates a segment file with its header (and `link` to the segment before it) and fsyncs
/// it and the directory.
pub fn create(
    storage: &dyn Storage,
    dir: &Path,
    first_seq: u64,
    link: &Link,
) -> io::Result<Box<dyn StorageFile>> {
    let path = segment_path(dir, first_seq);
    let f = storage.create(&path, Create::New)?;
    let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
    header.extend_from_slice(SEGMENT_MAGIC);
    header.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header.extend_from_slice(&link.encode(first_seq));
    f.write_at(&header, 0)?;
    f.sync_all()?;
    storage.sync_dir(dir)?;
    Ok(f)
}

/// Reads exactly `buf.len()` bytes at `offset`; `false` if the file ends first.
fn read_exact_at(f: &dyn StorageFile, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        match f.read_at(&mut buf[at..], offset + at as u64)? {
            0 => return Ok(false),
            n => at += n,
        }
    }
    Ok(true)
}

/// Reads every segment, calling `apply` for each good record numbered `from_seq` or later,
/// in order (earlier ones are checked and skipped: a snapshot holds them). Every segment's
/// link must name the segment before it (see the module's doc): a missing or shortened
/// segment is [`ScanError::Missing`]. A damaged final record of the last segment (a torn
/// write) is cut off the file; any other damage is [`ScanError::Corrupt`], naming file and
/// offset.
pub fn scan(
    storage: &dyn Storage,
    dir: &Path,
    from_seq: u64,
    mut apply: impl FnMut(u64, Record) -> Result<(), String>,
) -> Result<ScanEnd, ScanError> {
    let segments = list(storage, dir).map_err(|source| ScanError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let head = read_head(storage, dir)?;
    let mut next_seq = 0;
    let mut good = Vec::new();
    let mut tail: Option<Tail> = None;
    // The segments after the head's, which may only be ones made but given no record yet.
    let mut past_head_with_records = None;
    // Segments of the linked format, and whether one holds records: such a log always has
    // a head once a record went in.
    let (mut linked_segments, mut linked_records) = (0, false);
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
        let mut bytes = storage.read(&path).map_err(io)?;
        let corrupt = |offset: usize, reason: String| ScanError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        let version = version_of(&bytes);
        let start = version.and_then(frames_start);
        let link = match version {
            Some(v @ (SEGMENT_VERSION | SEGMENT_VERSION_LINKED)) => {
                Link::decode(&bytes[MAGIC_VERSION_LEN as usize..], first, v)
            }
            _ => None,
        };
        let unlinked = version == Some(SEGMENT_VERSION_UNLINKED);
        let marked = version == Some(SEGMENT_VERSION);
        if link.is_none() && linked_as_another_version(&bytes, version, first) {
            // Read as its stated version it would be misread (a link taken for frames, or
            // marks for damage): the version field itself is what is damaged.
            return Err(corrupt(
                8,
                "the segment's format version is damaged (its link is that of another \
                 version)"
                    .into(),
            ));
        }
        // The head is written after the segment it names has its link synced: a segment it
        // names was born, whatever its header looks like now.
        if last && head != Some(first) && unborn(&bytes, version, start, link.is_some()) {
            // The newest segment, created or switched to, but its header or link never
            // reached the disk whole: a crash came before any record could go into it.
            // Start it again.
            truncated_bytes += bytes.len() as u64;
            storage.remove(&path).map_err(io)?;
            storage.sync_dir(dir).map_err(io)?;
            continue;
        }
        let Some(start) = start.filter(|s| bytes.len() >= *s as usize) else {
            return Err(corrupt(
                0,
                "not a stile log segment (bad magic or version)".into(),
            ));
        };
        if !unlinked {
            let Some(link) = link else {
                return Err(corrupt(
                    MAGIC_VERSION_LEN as usize,
                    "the segment's link to the segment before it is damaged".into(),
                ));
            };
            check_link(dir, &path, first, &link, tail.as_ref(), from_seq)?;
        } else if tail.is_none() && first > from_seq {
            return Err(ScanError::Missing {
                path: path.clone(),
                reason: format!(
                    "the log starts at record {first} but recovery needs it from record \
                     {from_seq}: the records between were dropped after a snapshot that is \
                     now missing or damaged"
                ),
            });
        }
        let mut last_record = None;
        let mut at = start as usize;
        while at < bytes.len() {
            let frame = match decode_frame(&bytes[at..]) {
                Ok((Frame::Mark { .. }, ..)) if !marked => Err(DecodeError::BadPayload(
                    "a mark in a segment of an older format",
                )),
                other => other,
            };
            match frame {
                Ok((frame, seq, len)) => {
                    if seq < next_seq.max(first) {
                        return Err(corrupt(
                            at,
                            format!("sequence {seq} after {}", next_seq.saturating_sub(1)),
                        ));
                    }
                    match frame {
                        Frame::Record(record) => {
                            if seq >= from_seq {
                                apply(seq, record).map_err(|reason| corrupt(at, reason))?;
                                records += 1;
                            }
                            let sum = super::record::frame_checksum(&bytes[at..]);
                            last_record = Some((seq, sum));
                            next_seq = seq + 1;
                        }
                        // The records after a mark carry its number or later ones.
                        Frame::Mark { .. } => next_seq = seq,
                    }
                    at += len;
                }
                Err(e) => {
                    let declared = marked.then(|| declared_past(&bytes, at)).flatten();
                    let torn = match marked {
                        true => declared.is_none(),
                        false => is_tail(&bytes[at..], next_seq),
                    };
                    if last && torn {
                        let written = bytes[at..]
                            .iter()
                            .rposition(|&b| b != 0)
                            .map_or(0, |i| i + 1);
                        truncated_bytes += written as u64;
                        unwritten_bytes += (bytes.len() - at - written) as u64;
                        let f = storage.open(&path, true).map_err(io)?;
                        f.set_len(at as u64).map_err(io)?;
                        f.sync_all().map_err(io)?;
                        bytes.truncate(at);
                        break;
                    }
                    return Err(corrupt(
                        at,
                        match declared {
                            Some((mark, synced_to)) => format!(
                                "{e:?} in bytes the mark at offset {mark} declares synced \
                                 (the first {synced_to})"
                            ),
                            None if last => format!("{e:?}, and good records follow it"),
                            None => format!(
                                "{e:?} in a segment before the newest (synced whole before the \
                                 next began)"
                            ),
                        },
                    ));
                }
            }
        }
        if head.is_some_and(|h| first > h) && last_record.is_some() {
            past_head_with_records.get_or_insert(path.clone());
        }
        if !unlinked {
            linked_segments += 1;
            linked_records |= last_record.is_some();
        }
        // Numbers below a segment's name were reserved before it was switched to: a later
        // segment's records all come after.
        next_seq = next_seq.max(first);
        good.push((path.clone(), bytes.len() as u64));
        tail = Some(Tail {
            path,
            first_seq: first,
            len: bytes.len() as u64,
            last_record,
            version: version.unwrap_or(SEGMENT_VERSION),
        });
    }
    if let Some(h) = head {
        if !good.iter().any(|(p, _)| *p == segment_path(dir, h)) {
            return Err(ScanError::Missing {
                path: segment_path(dir, h),
                reason: "the log's head names it as the newest segment, and it is missing: the \
                         records it held are gone"
                    .into(),
            });
        }
        if let Some(path) = past_head_with_records {
            return Err(ScanError::Corrupt {
                path: dir.join(HEAD_FILE),
                offset: 0,
                reason: format!(
                    "the log's head names segment {h} as the newest, but {} after it holds \
                     records: the head was replaced by an older copy",
                    path.display()
                ),
            });
        }
    }
    if head.is_none() && (linked_records || linked_segments > 1) {
        // The head is written when the first linked segment is made, before any record goes
        // into it: only a crash in between leaves one segment, empty, without it. Anything
        // more means the head was deleted, and with it perhaps the newest segments, which
        // nothing else names.
        return Err(ScanError::Missing {
            path: dir.join(HEAD_FILE),
            reason: "the log's head (which names its newest segment) is missing, and the log \
                     has segments that always come with one: newer segments may be gone with \
                     it, and the records they held"
                .into(),
        });
    }
    if tail.is_none() && from_seq > 0 {
        // A snapshot never removes the segment the log goes on in: a log with none left
        // after a snapshot was deleted, and every change since the snapshot with it.
        return Err(ScanError::Missing {
            path: dir.to_path_buf(),
            reason: format!(
                "the log holds no segment, but a snapshot says it went on from record \
                 {from_seq}: the changes made after that snapshot are gone"
            ),
        });
    }
    Ok(ScanEnd {
        next_seq: next_seq.max(from_seq),
        segments: good,
        tail,
        truncated_bytes,
        unwritten_bytes,
        records,
    })
}

/// Whether a segment whose stated `version` has no good link holds a good link of another
/// linked version: its version field was damaged.
fn linked_as_another_version(bytes: &[u8], version: Option<u32>, first: u64) -> bool {
    let Some(stated) = version else {
        return false;
    };
    let link = bytes.get(MAGIC_VERSION_LEN as usize..SEGMENT_HEADER_LEN as usize);
    [SEGMENT_VERSION, SEGMENT_VERSION_LINKED]
        .into_iter()
        .filter(|&v| v != stated)
        .any(|v| link.is_some_and(|l| Link::decode(l, first, v).is_some()))
}

/// Whether a segment's `bytes` (of format `version`, frames from `start`, with a good link
/// or not) show a segment that was made but never given a record: its header cut short
/// (but for a good magic, which the short header starts with), or this version's header
/// whole with its link missing and nothing after it. Said only of the newest segment.
fn unborn(bytes: &[u8], version: Option<u32>, start: Option<u64>, linked: bool) -> bool {
    if bytes.iter().all(|&b| b == 0) {
        // Its size reached the disk, its bytes did not.
        return true;
    }
    let magic_len = SEGMENT_MAGIC.len().min(bytes.len());
    if bytes[..magic_len] != SEGMENT_MAGIC[..magic_len] {
        return false;
    }
    match (version, start) {
        (_, Some(s)) if bytes.len() < s as usize => true,
        (None, _) => bytes.len() < MAGIC_VERSION_LEN as usize,
        (Some(SEGMENT_VERSION | SEGMENT_VERSION_LINKED), Some(s)) => {
            !linked && no_frame_after(&bytes[s as usize..])
        }
        _ => false,
    }
}

/// Checks that the link of the segment at `path` (starting at `first`) names `prev`, the
/// segment read before it; or, for the first segment read, that the segments it names as
/// missing held only records below `from_seq` (dropped after a snapshot).
fn check_link(
    dir: &Path,
    path: &Path,
    first: u64,
    link: &Link,
    prev: Option<&Tail>,
    from_seq: u64,
) -> Result<(), ScanError> {
    let missing = |reason: String| ScanError::Missing {
        path: path.to_path_buf(),
        reason,
    };
    let named = || {
        format!(
            "{} ({} bytes, last record {})",
            segment_path(dir, link.prev_first_seq).display(),
            link.prev_len,
            link.prev_last_seq
        )
    };
    match prev {
        Some(prev) if link.is_first() => Err(missing(format!(
            "it says it is the log's first segment, but {} comes before it",
            prev.path.display()
        ))),
        Some(prev) if prev.link() == *link => Ok(()),
        Some(prev) if prev.first_seq == link.prev_first_seq => {
            let (seq, _) = prev.last_record.unwrap_or((u64::MAX, 0));
            Err(missing(format!(
                "the segment before it, {}, should be {} bytes long and end with record {}, but \
                 is {} bytes long and ends with record {}: it was cut short or replaced, and \
                 the records it lost are gone",
                prev.path.display(),
                link.prev_len,
                link.prev_last_seq,
                prev.len,
                if seq == u64::MAX {
                    "none".to_string()
                } else {
                    seq.to_string()
                },
            )))
        }
        Some(_) => Err(missing(format!(
            "the segment before it, {}, is missing: the records it held are gone",
            named()
        ))),
        None if link.is_first() && first <= from_seq => Ok(()),
        None if !link.is_first() && link.prev_last_seq < from_seq => Ok(()),
        None if link.is_first() => Err(missing(format!(
            "the log starts at record {first} but recovery needs it from record {from_seq}: \
             the records between were dropped after a snapshot that is now missing or damaged"
        ))),
        None => Err(missing(format!(
            "the segment before it, {}, is missing, and no snapshot holds its records (recovery \
             starts at record {from_seq}): they were dropped after a snapshot that is now \
             missing or damaged, or the segment was deleted",
            named()
        ))),
    }
}

/// Whether no frame starts anywhere in `bytes` (zeros, or a bit flipped in zeros): what
/// follows the header of a segment made but never given a record.
fn no_frame_after(bytes: &[u8]) -> bool {
    (0..bytes.len()).all(|i| bytes[i] == 0 || decode_frame(&bytes[i..]).is_err())
}

/// A good durability mark after offset `at` of a segment's `bytes` that declares more than
/// `at` bytes synced: its offset and what it declares. A mark is never written before what
/// it declares, so one claiming more is not taken for one.
fn declared_past(bytes: &[u8], at: usize) -> Option<(usize, u64)> {
    let mut i = at + 1;
    while i + MARK_FRAME_LEN <= bytes.len() {
        // Cheap first: a mark's length field is 9 and its type byte 9.
        if bytes[i..i + 4] == [9, 0, 0, 0] && bytes[i + FRAME_HEADER_LEN] == 9 {
            if let Ok((Frame::Mark { synced_to }, ..)) = decode_frame(&bytes[i..]) {
                if synced_to > at as u64 && synced_to <= i as u64 {
                    return Some((i, synced_to));
                }
            }
        }
        i += 1;
    }
    None
}

/// How far past a damaged record the scan looks for a later good one (segments of format 1
/// and 2, which have no marks).
const TAIL_PROBE_BYTES: usize = 1 << 20;

/// Whether damage at the start of `rest` (in a segment of format 1 or 2) is a torn final
/// write rather than corruption: it is when everything from here is zeros, or when no good frame with a later sequence number
/// starts anywhere in the next [`TAIL_PROBE_BYTES`] (a torn write leaves nothing after it;
/// a damaged record in the middle has good records right behind it).
fn is_tail(rest: &[u8], next_seq: u64) -> bool {
    if rest.iter().all(|&b| b == 0) {
        return true;
    }
    let end = rest.len().min(TAIL_PROBE_BYTES);
    !(1..end).any(|i| matches!(Record::decode(&rest[i..]), Ok((_, seq, _)) if seq >= next_seq))
}
