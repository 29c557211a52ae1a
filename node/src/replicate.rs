//! Replication, the primary's side. A standby (a peer with a node certificate) sends
//! `replicate` as the first frame of a stream; it gets the key ring, a snapshot if it holds
//! nothing, then the log as it becomes durable here, in batches of numbers, each with this
//! node's epoch. Its acknowledgements release the answers that wait for it once it is the
//! synchronous standby; one that stops acknowledging for `standby_timeout` is dropped, and
//! the answers go out without it.
//!
//! A standby is named synchronous in this order: answers start to wait for its
//! acknowledgements (`Wal::require_acks`), it acknowledges everything reserved at that
//! moment, and only then is it named (and, in a cluster, written to etcd by the caller's
//! hook), so a named standby holds every change answered from then on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use stile_engine::wal::tail::{LogTail, TailError};
use stile_engine::wal::{Record, Wal};
use stile_protocol::frame::{error_code, split_frame, Request, SNAPSHOT_WANTED, SUFFIX_OFFERED};
use stile_protocol::replication::{self, ReplFrame, RECORDS_BATCH_BYTES, SNAPSHOT_CHUNK};

use crate::conn::one_line;
use crate::Shared;

/// What a session's sender shares with its acknowledgement reader.
struct Progress {
    /// The standby's acknowledged position.
    acked: Arc<AtomicU64>,
    /// Batches sent and not yet acknowledged.
    sent: Sent,
}

/// Batches sent and not yet acknowledged, with when: what the standby's lag is measured by.
type Sent = Arc<Mutex<std::collections::VecDeque<(u64, Instant)>>>;

/// Send times kept per session at most (a standby that acknowledges nothing keeps the
/// oldest dropped).
const SENT_TIMES_MAX: usize = 4096;

/// How long a caught-up standby goes without a batch: its acknowledgement of an empty batch
/// tells the primary it is there.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Records a batch reads from the log at most.
const BATCH_RECORDS_MAX: usize = 16 * 1024;

/// This node's place in its shard, and its standbys.
#[derive(Debug)]
pub struct Replication {
    /// Whether this node leads: it answers gates and admins. A standby (and a primary that
    /// lost its lease) answers `not_leader`.
    leading: AtomicBool,
    /// The leader's address, for `not_leader` answers ("" when unknown).
    leader: Mutex<String>,
    /// The epoch records are sent with (0: a node without a cluster).
    epoch: AtomicU64,
    /// The synchronous standby, or the one being named.
    sync: Mutex<Option<SyncStandby>>,
    /// Standby sessions started so far (ids).
    sessions: AtomicU64,
    /// What the candidate must acknowledge before it is named: everything reserved when
    /// answers started to wait for it.
    target: AtomicU64,
    /// The candidate has acknowledged `target`.
    caught_up: AtomicBool,
    /// The epochs this node's log holds and where each began (see
    /// [`crate::standby::read_epochs`]).
    pub epochs: Mutex<Vec<(u64, u64)>>,
    /// The synchronous standby stopped acknowledging and a cluster must clear its name in
    /// etcd before answers go out without it (set by the watchdog, done by the controller).
    drop_wanted: AtomicBool,
    /// Microseconds from a batch's sending to the synchronous standby's acknowledgement of
    /// it: the standby's lag, as the answers waiting for it see it.
    pub ack_us: stile_engine::metrics::AtomicHistogram,
    /// How long answers wait for a synchronous standby that does not acknowledge.
    pub standby_timeout: Duration,
    /// Whether a caught-up standby is named synchronous by this node alone (no cluster);
    /// in a cluster the controller names it once etcd holds the name.
    pub name_alone: bool,
}

/// The synchronous standby, as this node knows it.
#[derive(Debug, Clone)]
pub struct SyncStandby {
    /// Its node name (from its certificate).
    pub name: String,
    /// Its session.
    session: u64,
    /// Named (`true`), or still catching up with the position it must reach.
    pub named: bool,
}

impl Replication {
    /// A node that leads on its own, or a standby (`leading` false) of `leader`.
    pub fn new(leading: bool, leader: String, standby_timeout: Duration) -> Self {
        Replication {
            leading: AtomicBool::new(leading),
            leader: Mutex::new(leader),
            epoch: AtomicU64::new(0),
            sync: Mutex::new(None),
            sessions: AtomicU64::new(0),
            target: AtomicU64::new(0),
            caught_up: AtomicBool::new(false),
            epochs: Mutex::new(Vec::new()),
            drop_wanted: AtomicBool::new(false),
            ack_us: stile_engine::metrics::AtomicHistogram::new(
                stile_engine::metrics::LATENCY_EDGES_US,
            ),
            standby_timeout,
            name_alone: true,
        }
    }

    /// Whether this node answers gates and admins.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// The leader's address as `not_leader` answers give it.
    pub fn leader(&self) -> String {
        self.leader.lock().expect("leader poisoned").clone()
    }

    /// Starts (`true`) or stops leading; `leader` is the address `not_leader` names.
    pub fn set_leading(&self, leading: bool, leader: String) {
        *self.leader.lock().expect("leader poisoned") = leader;
        self.leading.store(leading, Ordering::Release);
    }

    /// The epoch records are sent with.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Sets the epoch (a cluster's leader key's create revision).
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }

    /// The synchronous standby, if one is named or being named.
    pub fn sync_standby(&self) -> Option<SyncStandby> {
        self.sync.lock().expect("sync poisoned").clone()
    }

    /// Stops waiting for the synchronous standby: answers go out once durable here.
    pub fn drop_sync(&self, wal: &Wal) {
        let mut sync = self.sync.lock().expect("sync poisoned");
        if let Some(s) = sync.take() {
            tracing::warn!(standby = %s.name, "answering without the synchronous standby");
        }
        self.drop_wanted.store(false, Ordering::Release);
        wal.require_acks(false);
    }

    /// Whether the watchdog wants the synchronous standby dropped (a cluster clears its name
    /// in etcd first, then calls [`Self::drop_sync`]).
    pub fn drop_wanted(&self) -> bool {
        self.drop_wanted.load(Ordering::Acquire)
    }

    /// The candidate that has caught up and waits to be named (in a cluster, once etcd
    /// holds its name).
    pub fn ready_candidate(&self) -> Option<String> {
        let sync = self.sync.lock().expect("sync poisoned");
        sync.as_ref()
            .filter(|s| !s.named)
            .filter(|_| self.caught_up.load(Ordering::Acquire))
            .map(|s| s.name.clone())
    }

    /// Names the candidate `name` synchronous (etcd holds its name now).
    pub fn mark_named(&self, name: &str) {
        let mut sync = self.sync.lock().expect("sync poisoned");
        if let Some(s) = sync.as_mut().filter(|s| s.name == name) {
            s.named = true;
            tracing::info!(standby = %one_line(name), "synchronous standby named");
        }
    }
}

/// Serves a standby's stream until it or this node goes.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    name: String,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let who = one_line(&name);
    match session(&shared, &name, &mut send, recv).await {
        Ok(()) => tracing::info!(standby = %who, "standby session ended"),
        Err(Ended::Refused(code, message)) => {
            tracing::warn!(standby = %who, message = %one_line(&message), "standby refused");
            let mut out = BytesMut::new();
            ReplFrame::Refuse { code, message }.encode(&mut out);
            let _ = send.write_all(&out).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        }
        Err(Ended::Gone(why)) => {
            tracing::info!(standby = %who, why = %one_line(why), "standby gone")
        }
        Err(Ended::NotReplicate(id)) => {
            let mut out = BytesMut::new();
            stile_protocol::frame::Response::Error {
                code: error_code::FORBIDDEN,
                message: format!("a node certificate ({who}) may only replicate"),
            }
            .encode(id, &mut out);
            let _ = send.write_all(&out).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        }
    }
}

/// How a session ended early.
enum Ended {
    /// This node refuses the standby, with an error code and why.
    Refused(u16, String),
    /// The standby or the connection went.
    Gone(String),
    /// The peer asked something else than `replicate` (request id): answered as a request.
    NotReplicate(u32),
}

async fn session(
    shared: &Arc<Shared>,
    name: &str,
    send: &mut quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), Ended> {
    let (from_seq, standby_epoch, rest) = first_request(&mut recv).await?;
    let repl = &shared.replication;
    if !repl.leading() {
        return Err(Ended::Refused(error_code::NOT_LEADER, repl.leader()));
    }
    if standby_epoch > repl.epoch() {
        return Err(Ended::Refused(
            error_code::NOT_LEADER,
            format!("the standby has seen epoch {standby_epoch}, newer than this node's"),
        ));
    }
    let Some(wal) = shared.engine.wal() else {
        return Err(Ended::Refused(
            error_code::UNAVAILABLE,
            "this node keeps no log".into(),
        ));
    };
    if from_seq == SUFFIX_OFFERED {
        return take_suffix(shared, name, send, recv, rest).await;
    }
    if from_seq != SNAPSHOT_WANTED {
        let epochs = repl.epochs.lock().expect("epochs poisoned").clone();
        if let Some(at) = crate::standby::diverged(&epochs, standby_epoch, from_seq) {
            return Err(Ended::Refused(
                error_code::CONFLICT,
                crate::standby::diverged_refusal(
                    at,
                    &format!(
                        "the standby's log goes on at {from_seq} in epoch {standby_epoch}, \
                         past {at} where this primary's next epoch began: it holds changes \
                         this primary does not"
                    ),
                ),
            ));
        }
    }
    let id = repl.sessions.fetch_add(1, Ordering::Relaxed);
    let mut out = BytesMut::new();
    let next = if from_seq == SNAPSHOT_WANTED {
        send_snapshot(shared, send, &mut out).await?
    } else if from_seq > wal.local_seq() {
        return Err(Ended::Refused(
            error_code::CONFLICT,
            crate::standby::diverged_refusal(
                wal.local_seq(),
                &format!(
                    "the standby's log goes on at {from_seq}, past this primary's {}: it \
                     holds changes this primary does not",
                    wal.local_seq()
                ),
            ),
        ));
    } else {
        send_ring(shared, send, &mut out).await?;
        from_seq
    };
    tracing::info!(standby = %one_line(name), from = next, "standby following");
    let acked = Arc::new(AtomicU64::new(0));
    let sent: Sent = Arc::new(Mutex::new(std::collections::VecDeque::new()));
    let ack_reader = tokio::spawn(read_acks(
        shared.clone(),
        name.to_string(),
        recv,
        acked.clone(),
        id,
        sent.clone(),
    ));
    let progress = Progress {
        acked: acked.clone(),
        sent,
    };
    let result = stream_log(shared, name, id, send, &mut out, next, &progress).await;
    ack_reader.abort();
    let mut sync = repl.sync.lock().expect("sync poisoned");
    if sync.as_ref().is_some_and(|s| s.session == id && !s.named) {
        // A candidate that went before it was named: answers stop waiting for it now.
        *sync = None;
        wal.require_acks(false);
    }
    result
}

/// The `replicate` request that opens the stream.
async fn first_request(recv: &mut quinn::RecvStream) -> Result<(u64, u64, BytesMut), Ended> {
    let mut buf = BytesMut::with_capacity(64);
    loop {
        match split_frame(&buf) {
            Ok(Some((n, body))) => {
                return match Request::decode(body) {
                    Ok((_, Request::Replicate { from_seq, epoch })) => {
                        Ok((from_seq, epoch, buf.split_off(n)))
                    }
                    Ok((id, _)) => Err(Ended::NotReplicate(id)),
                    Err(e) => Err(Ended::Refused(error_code::BAD_REQUEST, e.to_string())),
                };
            }
            Ok(None) if buf.len() < 64 => {}
            Ok(None) => {
                return Err(Ended::Refused(
                    error_code::BAD_REQUEST,
                    "the stream did not start with a replicate request".into(),
                ))
            }
            Err(e) => return Err(Ended::Refused(error_code::BAD_REQUEST, e.to_string())),
        }
        if !read_more(recv, &mut buf).await {
            return Err(Ended::Gone("closed before asking".into()));
        }
    }
}

/// Takes the changes a rejoining node's old log held past this leader's history
/// ([`SUFFIX_OFFERED`]): the gate admits of each `Records` frame are applied as offline
/// admits of their gates (once each; conflicts where they clash), and the frame is
/// acknowledged once they are durable here.
async fn take_suffix(
    shared: &Arc<Shared>,
    name: &str,
    send: &mut quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut buf: BytesMut,
) -> Result<(), Ended> {
    let bad = |m: String| Ended::Refused(error_code::BAD_REQUEST, m);
    let (mut admits, mut admitted) = (0usize, 0usize);
    let mut out = BytesMut::new();
    loop {
        let frame = match replication::split(&buf) {
            Ok(Some((n, body))) => {
                let frame = ReplFrame::decode(body).map_err(|e| bad(e.to_string()))?;
                buf.advance(n);
                frame
            }
            Ok(None) => {
                if read_more(&mut recv, &mut buf).await {
                    continue;
                }
                break;
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let ReplFrame::Records { upto, frames, .. } = frame else {
            return Err(bad("a rejoining node offers only records".into()));
        };
        let records = crate::standby::decode_records(&frames).map_err(|e| bad(e.to_string()))?;
        let found = stile_engine::standby::admits_in(&records);
        if !shared.replication.leading() {
            return Err(Ended::Refused(
                error_code::NOT_LEADER,
                shared.replication.leader(),
            ));
        }
        let engine = shared.engine.clone();
        let applied = tokio::task::spawn_blocking(move || {
            found
                .iter()
                .map(|a| engine.apply_diverged_admit(a))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| Ended::Gone(e.to_string()))?;
        for (outcome, durable) in applied {
            if outcome.kind == stile_protocol::OutcomeKind::DiskFull {
                return Err(Ended::Refused(
                    error_code::UNAVAILABLE,
                    "the leader's disk is full; offer them again later".into(),
                ));
            }
            admits += 1;
            admitted += usize::from(outcome.kind == stile_protocol::OutcomeKind::Admitted);
            durable.wait_async().await;
        }
        ReplFrame::Ack { seq: upto }.encode(&mut out);
        write(send, &mut out).await?;
    }
    tracing::warn!(
        node = %one_line(name),
        admits,
        admitted,
        "took a rejoining node's admits past this leader's history as offline admits (the \
         rest are conflicts or were applied before)"
    );
    Ok(())
}

/// Appends what arrives next to `buf`; `false` once the stream ended.
pub(crate) async fn read_more(recv: &mut quinn::RecvStream, buf: &mut BytesMut) -> bool {
    match recv.read_chunk(64 * 1024, true).await {
        Ok(Some(chunk)) => {
            buf.extend_from_slice(&chunk.bytes);
            true
        }
        Ok(None) | Err(_) => false,
    }
}

async fn write(send: &mut quinn::SendStream, out: &mut BytesMut) -> Result<(), Ended> {
    let r = send.write_all(out).await;
    out.clear();
    r.map_err(|e| Ended::Gone(e.to_string()))
}

/// Sends this node's key ring.
async fn send_ring(
    shared: &Shared,
    send: &mut quinn::SendStream,
    out: &mut BytesMut,
) -> Result<(), Ended> {
    ReplFrame::Ring(shared.engine.keys().to_text().into_bytes()).encode(out);
    write(send, out).await
}

/// Takes a snapshot and sends it with the ring; returns where the log goes on after it.
async fn send_snapshot(
    shared: &Arc<Shared>,
    send: &mut quinn::SendStream,
    out: &mut BytesMut,
) -> Result<u64, Ended> {
    let engine = shared.engine.clone();
    let taken = tokio::task::spawn_blocking(move || {
        let info = engine.snapshot().map_err(|e| e.to_string())?;
        // Opened before anything else can remove it: a later snapshot may unlink the file,
        // and what is open stays readable.
        let file = std::fs::File::open(&info.path).map_err(|e| e.to_string())?;
        Ok::<_, String>((info.start_seq, file))
    })
    .await
    .map_err(|e| Ended::Gone(e.to_string()))?;
    let (start_seq, file) =
        taken.map_err(|e| Ended::Refused(error_code::UNAVAILABLE, format!("snapshot: {e}")))?;
    // The ring after the snapshot: it holds every key the snapshot's tickets name.
    send_ring(shared, send, out).await?;
    let len = file
        .metadata()
        .map_err(|e| Ended::Gone(e.to_string()))?
        .len();
    ReplFrame::SnapshotBegin {
        start_seq,
        len,
        epoch: shared.replication.epoch(),
    }
    .encode(out);
    write(send, out).await?;
    let file = Arc::new(file);
    let mut sent = 0u64;
    while sent < len {
        let f = file.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut chunk = vec![0u8; SNAPSHOT_CHUNK];
            let n = f.read_at(&mut chunk, sent)?;
            chunk.truncate(n);
            Ok::<_, std::io::Error>(chunk)
        })
        .await
        .map_err(|e| Ended::Gone(e.to_string()))?
        .map_err(|e| Ended::Refused(error_code::UNAVAILABLE, format!("snapshot: {e}")))?;
        if chunk.is_empty() {
            return Err(Ended::Refused(
                error_code::UNAVAILABLE,
                "snapshot shrank".into(),
            ));
        }
        sent += chunk.len() as u64;
        ReplFrame::SnapshotChunk(chunk).encode(out);
        write(send, out).await?;
    }
    tracing::info!(start_seq, bytes = len, "snapshot sent to a standby");
    Ok(start_seq)
}

/// Sends the log from `next` on as it becomes durable here, until the standby or this node
/// goes.
async fn stream_log(
    shared: &Arc<Shared>,
    name: &str,
    id: u64,
    send: &mut quinn::SendStream,
    out: &mut BytesMut,
    mut next: u64,
    progress: &Progress,
) -> Result<(), Ended> {
    let (acked, sent) = (&*progress.acked, &progress.sent);
    let engine = shared.engine.clone();
    let wal = engine.wal().expect("checked by the caller");
    let mut tail = Some(LogTail::on(wal.storage().clone(), wal.dir(), next));
    let mut shutdown = shared.shutdown.clone();
    let mut last_sent = Instant::now();
    loop {
        let limit = wal.local_seq();
        let mut t = tail.take().expect("the tail is put back");
        let (t, records, result) = tokio::task::spawn_blocking(move || {
            let mut records = Vec::new();
            let r = t.read(limit, BATCH_RECORDS_MAX, &mut records);
            (t, records, r)
        })
        .await
        .map_err(|e| Ended::Gone(e.to_string()))?;
        let caught_up = match result {
            Ok(c) => c,
            Err(e @ TailError::Trimmed { .. }) => {
                return Err(Ended::Refused(error_code::TRIMMED, e.to_string()))
            }
            Err(e) => return Err(Ended::Refused(error_code::UNAVAILABLE, e.to_string())),
        };
        let reached = if caught_up { limit } else { t.next_seq() };
        tail = Some(t);
        if reached > next || last_sent.elapsed() >= HEARTBEAT {
            send_records(shared, send, out, next, reached, &records).await?;
            if reached > next {
                let mut sent = sent.lock().expect("sent poisoned");
                if sent.len() >= SENT_TIMES_MAX {
                    sent.pop_front();
                }
                sent.push_back((reached, Instant::now()));
            }
            next = reached.max(next);
            last_sent = Instant::now();
        }
        maybe_name(shared, name, id, acked);
        if caught_up {
            tokio::select! {
                _ = wal.until_local(limit + 1) => {}
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            }
        }
    }
}

/// Sends the records of numbers `[from, upto)`, the ring first when one changes keys.
async fn send_records(
    shared: &Shared,
    send: &mut quinn::SendStream,
    out: &mut BytesMut,
    from: u64,
    upto: u64,
    records: &[(u64, Record)],
) -> Result<(), Ended> {
    if records.iter().any(|(_, r)| matches!(r, Record::Key { .. })) {
        // Written before the key's record was logged: the ring holds that key.
        send_ring(shared, send, out).await?;
    }
    let epoch = shared.replication.epoch();
    let mut frames = Vec::with_capacity(records.len() * 64);
    let mut start = from;
    for (seq, record) in records {
        if frames.len() >= RECORDS_BATCH_BYTES {
            ReplFrame::Records {
                epoch,
                from: start,
                upto: *seq,
                frames: std::mem::take(&mut frames),
            }
            .encode(out);
            write(send, out).await?;
            start = *seq;
        }
        record.encode(*seq, &mut frames);
    }
    ReplFrame::Records {
        epoch,
        from: start,
        upto,
        frames,
    }
    .encode(out);
    write(send, out).await
}

/// Reads the standby's acknowledgements; those of the synchronous standby (or the one
/// being named) release answers.
async fn read_acks(
    shared: Arc<Shared>,
    name: String,
    mut recv: quinn::RecvStream,
    acked: Arc<AtomicU64>,
    id: u64,
    sent: Sent,
) {
    let wal = shared.engine.wal().expect("a primary keeps a log");
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        loop {
            let (n, frame) = match replication::split(&buf) {
                Ok(Some((n, body))) => (n, ReplFrame::decode(body)),
                Ok(None) => break,
                Err(_) => return,
            };
            buf.advance(n);
            match frame {
                Ok(ReplFrame::Ack { seq }) => {
                    acked.fetch_max(seq, Ordering::AcqRel);
                    let now = Instant::now();
                    let mut sent = sent.lock().expect("sent poisoned");
                    while let Some(&(upto, at)) = sent.front().filter(|(upto, _)| *upto <= seq) {
                        let _ = upto;
                        sent.pop_front();
                        let us = now.saturating_duration_since(at).as_micros() as u64;
                        shared.replication.ack_us.record(us.max(1));
                    }
                    drop(sent);
                    let ours = shared
                        .replication
                        .sync
                        .lock()
                        .expect("sync poisoned")
                        .as_ref()
                        .is_some_and(|s| s.name == name);
                    if ours {
                        wal.acknowledge(seq);
                    }
                    // A candidate is named as soon as it has caught up.
                    maybe_name(&shared, &name, id, &acked);
                }
                _ => return,
            }
        }
        if !read_more(&mut recv, &mut buf).await {
            return;
        }
    }
}

/// Names a caught-up standby synchronous when none is (see the module's doc): first it
/// becomes the candidate and answers wait for it, then, once it has acknowledged everything
/// reserved at that moment, it is named.
fn maybe_name(shared: &Shared, name: &str, id: u64, acked: &AtomicU64) {
    let repl = &shared.replication;
    let wal = shared.engine.wal().expect("a primary keeps a log");
    let mut sync = repl.sync.lock().expect("sync poisoned");
    if let Some(s) = sync.as_mut().filter(|s| s.name == name && s.session < id) {
        // The same standby on a new connection: its log is the one that acknowledged.
        s.session = id;
    }
    if sync.is_none() && acked.load(Ordering::Acquire) >= wal.local_seq() {
        wal.require_acks(true);
        *sync = Some(SyncStandby {
            name: name.to_string(),
            session: id,
            named: false,
        });
        repl.target.store(wal.reserved_seq(), Ordering::Release);
        repl.caught_up.store(false, Ordering::Release);
        // What it acknowledged before it was the candidate counts too.
        wal.acknowledge(acked.load(Ordering::Acquire));
    }
    if let Some(s) = sync.as_mut().filter(|s| s.session == id && !s.named) {
        if acked.load(Ordering::Acquire) >= repl.target.load(Ordering::Acquire) {
            repl.caught_up.store(true, Ordering::Release);
            if repl.name_alone {
                s.named = true;
                tracing::info!(standby = %one_line(name), "synchronous standby named");
            }
        }
    }
}

/// How often the standby watchdog looks.
const WATCH_EVERY: Duration = Duration::from_millis(20);

/// Drops the synchronous standby once the oldest change it has not acknowledged has waited
/// `standby_timeout`: answers then go out without it (a cluster's controller clears
/// `sync_standby` in etcd first; see `ARCHITECTURE.md`).
pub(crate) async fn watch_standby(shared: Arc<Shared>) {
    let Some(wal) = shared.engine.wal() else {
        return;
    };
    let repl = &shared.replication;
    let mut shutdown = shared.shutdown.clone();
    // Since when the standby has been behind this node's log, and at which position.
    let mut behind: Option<(Instant, u64)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !wal.acks_required() {
            behind = None;
            continue;
        }
        let (acked, local) = (wal.acked_seq(), wal.local_seq());
        behind = match behind {
            _ if acked >= local => None,
            // Acknowledged past where it was behind: count again from now.
            Some((_, at)) if acked >= at => Some((Instant::now(), local)),
            Some(b) => Some(b),
            None => Some((Instant::now(), local)),
        };
        if behind.is_some_and(|(since, _)| since.elapsed() >= repl.standby_timeout) {
            if repl.name_alone {
                repl.drop_sync(wal);
                behind = None;
            } else {
                // A cluster clears the name in etcd first: until then no answer goes out
                // without the one node that could take over.
                repl.drop_wanted.store(true, Ordering::Release);
            }
        }
    }
}
