//! Replication, the standby's side: a new data dir is seeded from the primary's ring and a
//! snapshot, then the standby follows the primary's log, applying and logging each batch
//! under the primary's numbers and acknowledging a batch only once it is synced here,
//! whatever this node's `--sync`. It refuses records of an epoch older than the newest it
//! has seen, and persists a newer epoch (`DATA/epoch`) before it acknowledges its records.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use stile_engine::standby::{ReplicateError, Seed, SeedError};
use stile_engine::wal::{Durability, Record, SyncMode};
use stile_engine::Engine;
use stile_protocol::client::{connect_raw, ClientConfig, ClientError};
use stile_protocol::frame::{Request, SNAPSHOT_WANTED, SUFFIX_OFFERED};
use stile_protocol::replication::{self, ReplFrame};
use tokio::sync::{mpsc, watch};

use crate::replicate::read_more;

/// The file in a data dir that holds the newest epoch its node has seen.
pub const EPOCH_FILE: &str = "epoch";

/// Why following the primary stopped.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    /// The primary could not be reached.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// The primary refused, with an error code and why.
    #[error("the primary refused: {message} ({})", stile_protocol::frame::error_code::name(*code))]
    Refused {
        /// Why, as a code (`trimmed`: this standby is too far behind and must be seeded
        /// again; `not_leader`: the message names the leader).
        code: u16,
        /// Why, for people.
        message: String,
    },
    /// The primary sent something this standby cannot take.
    #[error("replication stream: {0}")]
    Protocol(String),
    /// The connection went.
    #[error("the primary went away: {0}")]
    Gone(String),
    /// Seeding failed.
    #[error(transparent)]
    Seed(#[from] SeedError),
    /// A batch did not apply.
    #[error(transparent)]
    Apply(#[from] ReplicateError),
    /// This node was told to stop.
    #[error("shutting down")]
    Shutdown,
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The file in a data dir that lists each epoch this node's log holds and the log number it
/// started at (at most: a standby notes the first batch it got of it), one `EPOCH START` a
/// line: what a primary judges a returning node's log by.
pub const EPOCHS_FILE: &str = "epochs";

/// The epochs data dir `dir` holds, oldest first.
pub fn read_epochs(dir: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(dir.join(EPOCHS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (e, s) = l.split_once(' ')?;
            Some((e.parse().ok()?, s.trim().parse().ok()?))
        })
        .collect()
}

/// Notes that epoch `epoch` starts at log number `start` in `dir`, then persists `epoch`
/// as the newest seen (both synced before it returns).
pub fn begin_epoch(dir: &Path, epoch: u64, start: u64) -> Result<(), StandbyError> {
    let mut epochs = read_epochs(dir);
    if epochs.last().is_none_or(|&(e, _)| e < epoch) {
        epochs.push((epoch, start));
        let text: String = epochs.iter().map(|(e, s)| format!("{e} {s}\n")).collect();
        let path = dir.join(EPOCHS_FILE);
        replace_synced(&path, &path.with_extension("tmp"), text.as_bytes())?;
    }
    write_epoch(dir, epoch)
}

/// Whether a node whose log goes on at `from_seq`, written up to epoch `epoch`, holds
/// records this log does not: records at or past where the next epoch after `epoch` began
/// here (`epochs` as [`read_epochs`] gives them).
pub fn diverged(epochs: &[(u64, u64)], epoch: u64, from_seq: u64) -> Option<u64> {
    let (_, next_start) = *epochs.iter().find(|(e, _)| *e > epoch)?;
    (from_seq > next_start).then_some(next_start)
}

/// Checks data dir `dir`'s epoch files parse whole (absent is fine): a damaged one would
/// make this node judge its log against the wrong history, so it is refused at start.
pub fn check_epoch_files(dir: &Path) -> Result<(), String> {
    let read = |name: &str| match std::fs::read_to_string(dir.join(name)) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", dir.join(name).display())),
    };
    let damaged = |name: &str| {
        format!(
            "{} is damaged (it holds the epochs this node's log was written in, decimal \
             numbers): restore it, or move the data dir aside to seed it afresh",
            dir.join(name).display()
        )
    };
    let mut newest = 0u64;
    if let Some(text) = read(EPOCH_FILE)? {
        newest = text
            .trim()
            .parse::<u64>()
            .map_err(|_| damaged(EPOCH_FILE))?;
    }
    let mut last = 0u64;
    if let Some(text) = read(EPOCHS_FILE)? {
        for line in text.lines() {
            let parsed = line
                .split_once(' ')
                .and_then(|(e, s)| Some((e.parse::<u64>().ok()?, s.parse::<u64>().ok()?)));
            match parsed {
                Some((e, _)) if e > last => last = e,
                _ => return Err(damaged(EPOCHS_FILE)),
            }
        }
    }
    // `begin_epoch` lists an epoch before it notes it as the newest: a newest epoch the list
    // lacks means the list lost lines, and a leader judging returning nodes by it would take
    // a diverged log for one that follows on.
    if newest > last {
        return Err(format!(
            "{} lacks epoch {newest}, which {} names: {}",
            dir.join(EPOCHS_FILE).display(),
            dir.join(EPOCH_FILE).display(),
            damaged(EPOCHS_FILE)
        ));
    }
    Ok(())
}

/// The newest epoch data dir `dir` has seen (0: none): `DATA/epoch`, or the newest epoch
/// its log holds if that is newer (`DATA/epoch` lost, or a crash between the two writes of
/// [`begin_epoch`]). Taken for 0, a log's epoch would make the leader judge the whole log
/// diverged from its first epoch on: set aside, and every admit in it offered again.
pub fn read_epoch(dir: &Path) -> u64 {
    let noted = std::fs::read_to_string(dir.join(EPOCH_FILE))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let listed = read_epochs(dir).last().map_or(0, |&(e, _)| e);
    noted.max(listed)
}

/// Persists `epoch` as the newest data dir `dir` has seen (synced before it returns).
pub fn write_epoch(dir: &Path, epoch: u64) -> Result<(), StandbyError> {
    let path = dir.join(EPOCH_FILE);
    replace_synced(
        &path,
        &path.with_extension("tmp"),
        format!("{epoch}\n").as_bytes(),
    )
}

/// An I/O error at `path`.
fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StandbyError {
    let path = path.to_path_buf();
    move |source| StandbyError::Io { path, source }
}

/// Writes `bytes` as `path` through the synced file `tmp` and a synced rename: a crash
/// leaves the old file or the new one, never one cut short.
fn replace_synced(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), StandbyError> {
    stile_engine::datadir::write_private_synced(tmp, &[bytes]).map_err(io_at(tmp))?;
    stile_engine::datadir::rename_synced(tmp, path).map_err(io_at(path))
}

/// Syncs directory `dir`.
fn sync_dir(dir: &Path) -> Result<(), StandbyError> {
    stile_engine::storage::Storage::sync_dir(&stile_engine::storage::StdStorage, dir)
        .map_err(io_at(dir))
}

/// The refusal a leader sends a node whose log goes past its own history from log number
/// `at` on (`why` says how): the rejoining node reads `at` back with [`diverged_at`].
pub fn diverged_refusal(at: u64, why: &str) -> String {
    format!("diverged at {at}: {why}")
}

/// The log number a [`diverged_refusal`] names.
pub fn diverged_at(message: &str) -> Option<u64> {
    message
        .strip_prefix("diverged at ")?
        .split(':')
        .next()?
        .parse()
        .ok()
}

/// Where a rejoining node keeps what it set aside: `DATA/diverged/<unix ms>/`, holding its
/// old log and snapshots, its epoch files, and the records past the divergence point.
pub const DIVERGED_DIR: &str = "diverged";
/// In a set-aside dir: the records past the divergence point, a line each, for people.
pub const SUFFIX_TEXT: &str = "suffix.txt";
/// In a set-aside dir: the same records as log frames, offered to the leader.
pub const SUFFIX_FRAMES: &str = "suffix.frames";
/// In a set-aside dir once the leader has taken its records.
pub const SUFFIX_TAKEN: &str = "taken";

/// What [`set_aside`] kept.
#[derive(Debug, Clone)]
pub struct SetAside {
    /// The dir it went to.
    pub dir: PathBuf,
    /// Records past the divergence point.
    pub records: usize,
    /// Gate admits among them.
    pub admits: usize,
}

/// Moves data dir `dir`'s log, snapshots and epoch files into a new dir under
/// [`DIVERGED_DIR`], so that the node can be seeded afresh from its leader; the records
/// from log number `at` on (none: `None`) are written beside them, as text and as frames
/// to offer the leader. Call with the engine closed.
pub fn set_aside(dir: &Path, at: Option<u64>) -> Result<SetAside, StandbyError> {
    use stile_engine::datadir::WAL_DIR;
    let wal_dir = dir.join(WAL_DIR);
    let mut records = Vec::new();
    if let Some(at) = at {
        // A snapshot taken since may have dropped the first segments: read what is left.
        let first = stile_engine::wal::segment::list(&stile_engine::storage::StdStorage, &wal_dir)
            .map_err(io_at(&wal_dir))?
            .first()
            .map_or(at, |(first, _)| (*first).max(at));
        if first > at {
            tracing::warn!(
                from = at,
                kept_from = first,
                "the log no longer holds its first records past the divergence point (a \
                 snapshot dropped them): they are in the set-aside snapshots only"
            );
        }
        let mut tail = stile_engine::wal::tail::LogTail::new(&wal_dir, first);
        tail.read(u64::MAX, usize::MAX, &mut records)
            .map_err(|e| StandbyError::Protocol(format!("reading the diverged log: {e}")))?;
    }
    let admits = stile_engine::standby::admits_in(&records).len();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let aside = dir.join(DIVERGED_DIR).join(stamp.to_string());
    std::fs::create_dir_all(&aside).map_err(io_at(&aside))?;
    let mut text = String::new();
    let mut frames = Vec::new();
    for (seq, record) in &records {
        text.push_str(&format!("{seq} {record:?}\n"));
        record.encode(*seq, &mut frames);
    }
    // Through a temp file and a rename: a set-aside cut short by a crash never leaves a
    // suffix cut short under its name (the log is still in place then, and set aside again).
    let write = |name: &str, bytes: &[u8]| {
        replace_synced(&aside.join(name), &aside.join(format!("{name}.tmp")), bytes)
    };
    write(SUFFIX_TEXT, text.as_bytes())?;
    if records.is_empty() {
        write(SUFFIX_TAKEN, b"nothing to offer\n")?;
    } else {
        write(SUFFIX_FRAMES, &frames)?;
    }
    // The moves below are four renames: a crash between them would leave a log without its
    // snapshots (or the reverse). The mark, synced first, names where they go, and the next
    // start finishes them ([`finish_set_aside`]) before anything opens the data dir.
    let mark = dir.join(SETTING_ASIDE_MARK);
    let name = aside
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a decimal name");
    stile_engine::datadir::write_private_synced(&mark, &[name.as_bytes()]).map_err(io_at(&mark))?;
    sync_dir(dir)?;
    move_aside(dir, &aside)?;
    Ok(SetAside {
        dir: aside,
        records: records.len(),
        admits,
    })
}

/// Present while a set-aside moves a data dir's log, snapshots and epoch files: it holds the
/// name of the dir under [`DIVERGED_DIR`] they go to.
pub const SETTING_ASIDE_MARK: &str = ".setting-aside";

/// Moves what [`set_aside`] moves that is still in `dir` into `aside`, syncs, and removes
/// the mark.
fn move_aside(dir: &Path, aside: &Path) -> Result<(), StandbyError> {
    use stile_engine::datadir::{SNAPSHOTS_DIR, WAL_DIR};
    for name in [WAL_DIR, SNAPSHOTS_DIR, EPOCH_FILE, EPOCHS_FILE] {
        let from = dir.join(name);
        match std::fs::rename(&from, aside.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_at(&from)(e)),
            _ => {}
        }
    }
    for d in [aside, &dir.join(DIVERGED_DIR), dir] {
        sync_dir(d)?;
    }
    let mark = dir.join(SETTING_ASIDE_MARK);
    std::fs::remove_file(&mark).map_err(io_at(&mark))?;
    sync_dir(dir)
}

/// Finishes a set-aside a crash cut short (see [`SETTING_ASIDE_MARK`]): call at start,
/// before the data dir is opened. `Ok(None)` when there was none.
pub fn finish_set_aside(dir: &Path) -> Result<Option<PathBuf>, StandbyError> {
    let mark = dir.join(SETTING_ASIDE_MARK);
    let name = match std::fs::read_to_string(&mark) {
        Ok(name) => name,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StandbyError::Io { path: mark, source }),
    };
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StandbyError::Protocol(format!(
            "{} is damaged (it names the dir under {DIVERGED_DIR}/ a set-aside was moving this \
             node's log to): finish the move by hand, then remove it",
            mark.display()
        )));
    }
    let aside = dir.join(DIVERGED_DIR).join(name);
    std::fs::create_dir_all(&aside).map_err(|source| StandbyError::Io {
        path: aside.clone(),
        source,
    })?;
    move_aside(dir, &aside)?;
    tracing::warn!(dir = %aside.display(), "finished setting this node's log aside (a crash had cut it short)");
    Ok(Some(aside))
}

/// Offers the leader every set-aside suffix it has not taken yet (see [`set_aside`]); its
/// gate admits are applied there as offline admits. Returns how many records were taken.
pub async fn offer_set_aside(dir: &Path, leader: &ClientConfig) -> Result<usize, StandbyError> {
    let parent = dir.join(DIVERGED_DIR);
    let mut pending: Vec<PathBuf> = match std::fs::read_dir(&parent) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join(SUFFIX_FRAMES).exists() && !p.join(SUFFIX_TAKEN).exists())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(StandbyError::Io {
                path: parent,
                source,
            })
        }
    };
    pending.sort();
    let mut taken = 0;
    for aside in pending {
        let path = aside.join(SUFFIX_FRAMES);
        let bytes = std::fs::read(&path).map_err(|source| StandbyError::Io {
            path: path.clone(),
            source,
        })?;
        let records = match read_suffix(&aside, &bytes) {
            Ok(records) => records,
            Err(why) => {
                // Damage is not mended by retrying, and must not hold back the other dirs.
                tracing::error!(
                    file = %path.display(),
                    why,
                    "a set-aside suffix is damaged: none of its records were offered to the \
                     leader; they are listed in suffix.txt beside it, for the operator"
                );
                continue;
            }
        };
        let mut link = Link::open(leader, SUFFIX_OFFERED, read_epoch(dir)).await?;
        let mut out = BytesMut::new();
        for batch in records.chunks(SUFFIX_BATCH) {
            let mut frames = Vec::new();
            for (seq, record) in batch {
                record.encode(*seq, &mut frames);
            }
            let upto = batch.last().map_or(0, |(s, _)| s + 1);
            ReplFrame::Records {
                epoch: 0,
                from: batch[0].0,
                upto,
                frames,
            }
            .encode(&mut out);
            link.send
                .write_all(&out)
                .await
                .map_err(|e| StandbyError::Gone(e.to_string()))?;
            out.clear();
            match link.next().await? {
                ReplFrame::Ack { seq } if seq == upto => {}
                _ => return Err(StandbyError::Protocol("expected the leader's ack".into())),
            }
        }
        let _ = link.send.finish();
        let done = aside.join(SUFFIX_TAKEN);
        stile_engine::datadir::write_private_synced(&done, &[b"taken by the leader\n"])
            .map_err(|source| StandbyError::Io { path: done, source })?;
        tracing::warn!(
            records = records.len(),
            admits = stile_engine::standby::admits_in(&records).len(),
            from = %aside.display(),
            "the leader took the changes this node's old log held past its own; gate admits \
             among them are applied there as offline admits (conflicts where they clash)"
        );
        taken += records.len();
    }
    Ok(taken)
}

/// The records of set-aside dir `aside`'s `suffix.frames` (`bytes`), checked whole: every
/// frame decodes and they are as many as the lines of `suffix.txt` beside them (a file cut
/// at a frame's end decodes too). Why not, for the operator.
fn read_suffix(aside: &Path, mut bytes: &[u8]) -> Result<Vec<(u64, Record)>, String> {
    let total = bytes.len();
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let (record, seq, len) = Record::decode(bytes).map_err(|e| {
            format!(
                "the frame at byte {} does not decode ({e:?})",
                total - bytes.len()
            )
        })?;
        records.push((seq, record));
        bytes = &bytes[len..];
    }
    let text = aside.join(SUFFIX_TEXT);
    let lines = match std::fs::read(&text) {
        Ok(t) => t.iter().filter(|&&b| b == b'\n').count(),
        // Only for people: without it the frames are taken as they are.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => records.len(),
        Err(e) => return Err(format!("{}: {e}", text.display())),
    };
    if lines != records.len() {
        return Err(format!(
            "it holds {} records, but {} lists {lines}",
            records.len(),
            text.display()
        ));
    }
    Ok(records)
}

/// Records a `Records` frame of a set-aside suffix carries at most.
const SUFFIX_BATCH: usize = 1024;

/// A replication stream to the primary.
struct Link {
    _endpoint: quinn::Endpoint,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl Link {
    async fn open(primary: &ClientConfig, from_seq: u64, epoch: u64) -> Result<Link, StandbyError> {
        let (endpoint, _conn, mut send, recv) = connect_raw(primary).await?;
        let mut out = BytesMut::new();
        Request::Replicate { from_seq, epoch }.encode(1, &mut out);
        send.write_all(&out)
            .await
            .map_err(|e| StandbyError::Gone(e.to_string()))?;
        Ok(Link {
            _endpoint: endpoint,
            send,
            recv,
            buf: BytesMut::with_capacity(1 << 20),
        })
    }

    /// The next frame from the primary.
    async fn next(&mut self) -> Result<ReplFrame, StandbyError> {
        next_frame(&mut self.recv, &mut self.buf).await
    }
}

/// The next frame from the primary on `recv` (`buf` holds what arrived and is not read).
async fn next_frame(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
) -> Result<ReplFrame, StandbyError> {
    loop {
        match replication::split(buf) {
            Ok(Some((n, body))) => {
                let frame =
                    ReplFrame::decode(body).map_err(|e| StandbyError::Protocol(e.to_string()))?;
                buf.advance(n);
                if let ReplFrame::Refuse { code, message } = frame {
                    return Err(StandbyError::Refused { code, message });
                }
                return Ok(frame);
            }
            Ok(None) => {}
            Err(e) => return Err(StandbyError::Protocol(e.to_string())),
        }
        if !read_more(recv, buf).await {
            return Err(StandbyError::Gone("the stream ended".into()));
        }
    }
}

/// Seeds data dir `dir`, which holds nothing yet, from the primary: its key ring and a
/// fresh snapshot. Returns the snapshot's log position.
pub async fn seed(dir: &Path, primary: &ClientConfig) -> Result<u64, StandbyError> {
    let mut link = Link::open(primary, SNAPSHOT_WANTED, read_epoch(dir)).await?;
    let ReplFrame::Ring(ring) = link.next().await? else {
        return Err(StandbyError::Protocol("expected the key ring first".into()));
    };
    let ReplFrame::SnapshotBegin {
        start_seq,
        len,
        epoch,
    } = link.next().await?
    else {
        return Err(StandbyError::Protocol("expected a snapshot".into()));
    };
    let mut seed = Seed::begin(dir, &ring, start_seq)?;
    let mut got = 0u64;
    while got < len {
        let ReplFrame::SnapshotChunk(chunk) = link.next().await? else {
            return Err(StandbyError::Protocol("snapshot cut short".into()));
        };
        got += chunk.len() as u64;
        if got > len {
            return Err(StandbyError::Protocol(
                "snapshot longer than announced".into(),
            ));
        }
        seed.write(&chunk)?;
    }
    let start = tokio::task::spawn_blocking(move || seed.finish())
        .await
        .map_err(|e| StandbyError::Protocol(e.to_string()))??;
    // The snapshot is the primary's state in its epoch: the history starts there.
    if epoch > 0 {
        begin_epoch(dir, epoch, start)?;
    }
    tracing::info!(
        start_seq = start,
        bytes = len,
        "seeded from the primary's snapshot"
    );
    Ok(start)
}

/// Follows the primary's log into `engine` (opened on `dir`) until the link fails, the
/// primary refuses, or `shutdown` turns true.
pub async fn follow(
    engine: Arc<Engine>,
    dir: &Path,
    primary: &ClientConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StandbyError> {
    let wal = engine.wal().ok_or(ReplicateError::NoLog)?;
    let mut epoch = read_epoch(dir);
    let Link {
        _endpoint,
        send,
        mut recv,
        mut buf,
    } = Link::open(primary, wal.reserved_seq(), epoch).await?;
    tracing::info!(primary = %primary.node, from = wal.reserved_seq(), "following the primary");
    // Batches to acknowledge, in order, each with what its sync here is.
    let (acks, pending) = mpsc::unbounded_channel::<(u64, Durability)>();
    let mut acker = tokio::spawn(acknowledge(engine.clone(), send, pending));
    loop {
        let frame = tokio::select! {
            f = next_frame(&mut recv, &mut buf) => f?,
            _ = shutdown.wait_for(|s| *s) => return Err(StandbyError::Shutdown),
            r = &mut acker => {
                return Err(match r {
                    Ok(e) => e,
                    Err(e) => StandbyError::Gone(e.to_string()),
                })
            }
        };
        match frame {
            ReplFrame::Ring(text) => {
                let text = String::from_utf8(text)
                    .map_err(|_| StandbyError::Protocol("the key ring is not UTF-8".into()))?;
                engine
                    .keys()
                    .adopt(&text)
                    .map_err(|e| StandbyError::Protocol(format!("the primary's key ring: {e}")))?;
            }
            ReplFrame::Records {
                epoch: theirs,
                from,
                upto,
                frames,
            } => {
                if theirs < epoch {
                    return Err(StandbyError::Protocol(format!(
                        "records of epoch {theirs}, older than epoch {epoch} this node has seen"
                    )));
                }
                if theirs > epoch {
                    // Persisted before any record of that epoch is acknowledged.
                    begin_epoch(dir, theirs, from)?;
                    epoch = theirs;
                }
                let records = decode_records(&frames)?;
                let durable = engine.apply_replicated(from, upto, &records)?;
                if acks.send((upto, durable)).is_err() {
                    return Err(StandbyError::Gone("acknowledgements stopped".into()));
                }
            }
            ReplFrame::SnapshotBegin { .. }
            | ReplFrame::SnapshotChunk(_)
            | ReplFrame::Ack { .. }
            | ReplFrame::Refuse { .. } => {
                return Err(StandbyError::Protocol(
                    "unexpected frame while following".into(),
                ))
            }
        }
    }
}

/// The records of a batch's log frames.
pub(crate) fn decode_records(mut frames: &[u8]) -> Result<Vec<(u64, Record)>, StandbyError> {
    let mut out = Vec::new();
    while !frames.is_empty() {
        let (record, seq, len) =
            Record::decode(frames).map_err(|e| StandbyError::Protocol(format!("{e:?}")))?;
        out.push((seq, record));
        frames = &frames[len..];
    }
    Ok(out)
}

/// Acknowledges each batch once it is synced here, in order.
async fn acknowledge(
    engine: Arc<Engine>,
    mut send: quinn::SendStream,
    mut pending: mpsc::UnboundedReceiver<(u64, Durability)>,
) -> StandbyError {
    let wal = engine.wal().expect("a standby keeps a log");
    let mut out = BytesMut::new();
    while let Some((upto, durable)) = pending.recv().await {
        // Gather every batch already queued: one acknowledgement covers them.
        let mut upto = upto;
        let mut wait = vec![durable];
        while let Ok((u, d)) = pending.try_recv() {
            upto = u;
            wait.push(d);
        }
        if wal.mode() == SyncMode::Always {
            for d in wait {
                d.wait_async().await;
            }
        } else {
            let e = engine.clone();
            let synced = tokio::task::spawn_blocking(move || {
                e.wal().expect("a standby keeps a log").sync_through(upto)
            })
            .await
            .unwrap_or(false);
            if !synced {
                return StandbyError::Gone("this node's log stopped".into());
            }
        }
        ReplFrame::Ack { seq: upto }.encode(&mut out);
        if let Err(e) = send.write_all(&out).await {
            return StandbyError::Gone(e.to_string());
        }
        out.clear();
    }
    StandbyError::Gone("the follower stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A returning node's log is judged by where the epoch after its own began here: past
    /// it, it holds records this log does not (a primary's unreplicated suffix).
    #[test]
    fn a_log_past_the_next_epochs_start_has_diverged() {
        let epochs = [(532, 0), (545, 621), (560, 900)];
        assert_eq!(diverged(&epochs, 532, 621), None, "ends where 545 began");
        assert_eq!(diverged(&epochs, 532, 622), Some(621));
        assert_eq!(diverged(&epochs, 545, 900), None);
        assert_eq!(diverged(&epochs, 545, 1000), Some(900));
        assert_eq!(diverged(&epochs, 560, 5000), None, "the current epoch");
        let dir = tempfile::tempdir().unwrap();
        begin_epoch(dir.path(), 7, 10).unwrap();
        begin_epoch(dir.path(), 7, 99).unwrap();
        begin_epoch(dir.path(), 9, 20).unwrap();
        assert_eq!(read_epochs(dir.path()), vec![(7, 10), (9, 20)]);
        assert_eq!(read_epoch(dir.path()), 9);
    }

    /// A lost `DATA/epoch` is read from the epochs the log holds, not as epoch 0: a standby
    /// judged in epoch 0 is found diverged from the leader's first epoch, and its whole log
    /// is set aside and its admits offered again (false double entries where the leader's
    /// scan memory has forgotten them; found by deleting the file on a healthy standby).
    #[test]
    fn a_lost_epoch_file_is_read_from_the_epoch_history() {
        let dir = tempfile::tempdir().unwrap();
        begin_epoch(dir.path(), 3, 0).unwrap();
        begin_epoch(dir.path(), 8, 300).unwrap();
        std::fs::remove_file(dir.path().join(EPOCH_FILE)).unwrap();
        assert_eq!(read_epoch(dir.path()), 8);
        assert_eq!(check_epoch_files(dir.path()), Ok(()));
        assert_eq!(
            diverged(&[(3, 0), (8, 300)], read_epoch(dir.path()), 302),
            None
        );
    }

    /// A set-aside cut short between its renames (a log moved, its snapshots not) is
    /// finished at the next start, from the mark naming where they go.
    #[test]
    fn a_set_aside_cut_short_is_finished_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(finish_set_aside(d).unwrap().is_none());
        let aside = d.join(DIVERGED_DIR).join("1700000000000");
        std::fs::create_dir_all(aside.join("wal")).unwrap();
        std::fs::write(aside.join("wal/0.log"), b"log").unwrap();
        std::fs::create_dir_all(d.join("snapshots")).unwrap();
        std::fs::write(d.join("snapshots/s"), b"snap").unwrap();
        std::fs::write(d.join(EPOCH_FILE), "9\n").unwrap();
        std::fs::write(d.join(SETTING_ASIDE_MARK), "1700000000000").unwrap();
        assert_eq!(finish_set_aside(d).unwrap(), Some(aside.clone()));
        assert!(aside.join("snapshots/s").exists() && aside.join("wal/0.log").exists());
        assert!(aside.join(EPOCH_FILE).exists());
        assert!(!d.join("snapshots").exists() && !d.join(EPOCH_FILE).exists());
        assert!(!d.join(SETTING_ASIDE_MARK).exists());
        // A mark that names no such dir safely is refused, and nothing moves.
        std::fs::create_dir_all(d.join("wal")).unwrap();
        std::fs::write(d.join(SETTING_ASIDE_MARK), "../../etc").unwrap();
        assert!(finish_set_aside(d)
            .unwrap_err()
            .to_string()
            .contains("damaged"));
        assert!(d.join("wal").exists());
    }

    /// Damaged epoch files are refused, not read as "no epoch"; a refusal names its point.
    #[test]
    fn damaged_epoch_files_are_refused_and_a_refusal_names_where_logs_part() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_epoch_files(dir.path()), Ok(()));
        begin_epoch(dir.path(), 7, 10).unwrap();
        begin_epoch(dir.path(), 9, 20).unwrap();
        assert_eq!(check_epoch_files(dir.path()), Ok(()));
        std::fs::write(dir.path().join(EPOCH_FILE), "9x\n").unwrap();
        assert!(check_epoch_files(dir.path())
            .unwrap_err()
            .contains("damaged"));
        std::fs::write(dir.path().join(EPOCH_FILE), "9\n").unwrap();
        std::fs::write(dir.path().join(EPOCHS_FILE), "9 20\n7 10\n").unwrap();
        assert!(check_epoch_files(dir.path()).is_err(), "out of order");
        std::fs::write(dir.path().join(EPOCHS_FILE), "7 10\n\0\0").unwrap();
        assert!(check_epoch_files(dir.path()).is_err());
        // Lines lost from the list (the newest epoch missing from it) are damage too.
        std::fs::write(dir.path().join(EPOCHS_FILE), "7 10\n").unwrap();
        assert!(check_epoch_files(dir.path())
            .unwrap_err()
            .contains("lacks epoch 9"));
        std::fs::remove_file(dir.path().join(EPOCHS_FILE)).unwrap();
        assert!(check_epoch_files(dir.path()).is_err(), "the list gone");
        let m = diverged_refusal(621, "the standby's log goes on at 700");
        assert_eq!(diverged_at(&m), Some(621));
        assert_eq!(diverged_at("the standby has seen epoch 9"), None);
    }

    /// A set-aside suffix is offered only whole: a frame cut short or flipped, or a file
    /// cut at a frame's end (it decodes, but `suffix.txt` lists more), is refused with
    /// where; found by damaging `suffix.frames` before its offer.
    #[test]
    fn a_damaged_set_aside_suffix_is_refused_saying_why() {
        let aside = tempfile::tempdir().unwrap();
        let (mut frames, mut text) = (Vec::new(), String::new());
        for serial in 0..4u32 {
            let r = Record::Mint {
                partition: 0,
                first: serial,
                count: 1,
                policy: 0,
                word: 1,
            };
            r.encode(10 + u64::from(serial), &mut frames);
            text.push_str(&format!("{} {r:?}\n", 10 + serial));
        }
        std::fs::write(aside.path().join(SUFFIX_TEXT), &text).unwrap();
        assert_eq!(read_suffix(aside.path(), &frames).unwrap().len(), 4);
        let cut = &frames[..frames.len() - 3];
        assert!(read_suffix(aside.path(), cut)
            .unwrap_err()
            .contains("does not decode"));
        let mut flipped = frames.clone();
        flipped[frames.len() / 2] ^= 0x10;
        assert!(read_suffix(aside.path(), &flipped)
            .unwrap_err()
            .contains("at byte"));
        let whole_frames = &frames[..frames.len() / 2];
        assert!(read_suffix(aside.path(), whole_frames)
            .unwrap_err()
            .contains("lists 4"));
        assert!(read_suffix(aside.path(), &[])
            .unwrap_err()
            .contains("holds 0 records"));
    }
}
