//! [`Gate`]: online when the node answers in time, offline from the replica when it does
//! not, and every offline decision synced to the journal before it is shown.
//!
//! **Online.** Each scan goes to the node with a scan id the gate chooses (ids are reserved
//! in blocks in `STATE/scan-ids` before use, so no id repeats across restarts). The request
//! runs as a task of its own: when no answer comes within the online timeout the gate
//! decides offline under the same scan id, and an answer that arrives later is journaled as
//! `LateOnline`, so that scan is never applied twice.
//!
//! **Offline.** Only when the operator allows it, from a replica no older than the allowed
//! age: lookup by place and fingerprint (absent: `unknown`; another code at that place:
//! `forged`), validity by this machine's clock corrected by the node's last known offset,
//! state = the replica's plus this gate's own offline scans.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stile_protocol::client::{Client, ClientConfig, ClientError};
use stile_protocol::{CodeBytes, Outcome, OutcomeKind};

use crate::journal::{Journal, JournalError, Record, Scan};
use crate::replica::{to_replica_s, Lookup, Replica, ReplicaError, INSIDE, REVOKED};
use crate::rules::{decide, Op};

/// How far behind the replica's last sync (the node's clock) this machine's corrected clock
/// may be before the gate stops trusting it to tell the replica's age.
const CLOCK_BEHIND_MAX_S: u64 = 60;
/// Scan ids reserved at a time in `STATE/scan-ids`.
const SCAN_ID_BLOCK: u64 = 1 << 16;
/// Pause between attempts to reach a node that does not answer.
const CONNECT_RETRY: Duration = Duration::from_millis(500);

/// How a gate runs.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// How to reach the node (with the gate's certificate).
    pub client: ClientConfig,
    /// This gate's id (from its certificate).
    pub gate: u16,
    /// Its provider (from its certificate).
    pub provider: u16,
    /// Where the replica, the journal and the scan ids live.
    pub state_dir: PathBuf,
    /// How long a scan waits for the node before the gate decides offline.
    pub online_timeout: Duration,
    /// Whether the gate may admit offline at all.
    pub offline_admits: bool,
    /// The oldest replica it may decide from.
    pub max_replica_age: Duration,
}

/// Whether an answer came from the node or from the gate itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The node answered in time.
    Online,
    /// The gate decided from its replica (or refused to).
    Offline,
}

impl Mode {
    /// `online` or `offline`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Online => "online",
            Mode::Offline => "offline",
        }
    }
}

/// A gate's answer to one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The outcome; `None`: the gate could not decide (offline and not allowed to, no
    /// replica, or the journal failed) — do not let the person through.
    pub kind: Option<OutcomeKind>,
    /// The gate the answer names (0: none).
    pub gate: u16,
    /// Unix seconds of the event named (0: none).
    pub at_unix_s: u64,
    /// Entries counted after the answer.
    pub entries: u8,
    /// Online or offline.
    pub mode: Mode,
    /// Why the gate refused to decide, for staff.
    pub reason: Option<String>,
}

impl Answer {
    /// The outcome's name, or `refused`.
    pub fn name(&self) -> &'static str {
        self.kind.map_or("refused", |k| k.name())
    }

    fn online(o: &Outcome) -> Answer {
        Answer {
            kind: Some(o.kind),
            gate: o.gate,
            at_unix_s: o.at_unix_s,
            entries: o.entries,
            mode: Mode::Online,
            reason: None,
        }
    }

    fn refused(reason: String) -> Answer {
        Answer {
            kind: None,
            gate: 0,
            at_unix_s: 0,
            entries: 0,
            mode: Mode::Offline,
            reason: Some(reason),
        }
    }

    fn offline(kind: OutcomeKind) -> Answer {
        Answer {
            kind: Some(kind),
            gate: 0,
            at_unix_s: 0,
            entries: 0,
            mode: Mode::Offline,
            reason: None,
        }
    }
}

/// What a gate shows of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The node answered the last scan in time.
    pub online: bool,
    /// Tickets in the replica (`None`: no replica).
    pub replica_tickets: Option<usize>,
    /// The node's log position the replica is at.
    pub replica_seq: u64,
    /// How old the replica is, seconds (by the corrected clock).
    pub replica_age_s: Option<u64>,
    /// Scans in the journal the node has not applied.
    pub pending: usize,
    /// The node's clock minus this machine's, seconds, from the last online answer.
    pub clock_offset_s: i64,
    /// Why the node refuses this gate for good (a revoked certificate), if it does.
    pub refused: Option<String>,
}

/// Why a gate cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The state directory.
    #[error("state directory {path}: {source}")]
    State {
        /// The directory or file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The journal.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The replica.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The state directory holds another gate's journal, not yet uploaded.
    #[error("{0}")]
    Owner(String),
    /// Another gate process uses the state directory.
    #[error(
        "state directory {path} is in use by another stile gate{}: two gates on one journal \
         would reuse scan ids and interleave their decisions; give each gate its own --state",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        /// The directory.
        path: PathBuf,
        /// The holder's pid, if it wrote one.
        pid: Option<u32>,
    },
}

/// Takes the state directory for this process: made private (0700: its journal holds
/// codes, its replica may hold rotation keys) and locked with an exclusive `flock` on the
/// directory itself (held while the returned handle lives; the kernel drops it when the
/// process ends), the holder's pid in `STATE/lock` for a second opener's error.
fn take_state_dir(dir: &Path) -> Result<std::fs::File, GateError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let state_err = |source| GateError::State {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(state_err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(state_err)?;
    let handle = std::fs::File::open(dir).map_err(state_err)?;
    match handle.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(dir.join("lock"))
                .ok()
                .and_then(|t| t.trim().parse().ok());
            return Err(GateError::InUse {
                path: dir.to_path_buf(),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(state_err(e)),
    }
    let mut pid = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("lock"))
        .map_err(state_err)?;
    writeln!(pid, "{}", std::process::id()).map_err(state_err)?;
    Ok(handle)
}

/// Scan ids handed out from a block reserved on disk.
#[derive(Debug)]
struct ScanIds {
    path: PathBuf,
    next: u64,
    end: u64,
}

impl ScanIds {
    /// Opens the reserved ids at `path`, going on above the block recorded there, above
    /// `floor` (the highest id in the journal) and above this machine's clock in
    /// nanoseconds: a gate whose state directory is new or was wiped (a replaced machine, a
    /// second directory for one certificate) still never repeats an id its node has seen,
    /// which would have the node replay an old answer or skip the upload as applied.
    fn open(path: &Path, floor: u64) -> Result<ScanIds, GateError> {
        let recorded = match std::fs::read_to_string(path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| GateError::State {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!("not a scan id: {e}")),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(source) => {
                return Err(GateError::State {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let clock_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64);
        let start = recorded.max(floor.saturating_add(1)).max(clock_ns);
        if start > u64::MAX - 2 * SCAN_ID_BLOCK {
            return Err(GateError::State {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!("scan ids exhausted at {start}")),
            });
        }
        let mut ids = ScanIds {
            path: path.to_path_buf(),
            next: start,
            end: start,
        };
        ids.reserve().map_err(|source| GateError::State {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ids)
    }

    /// Writes the end of a new block before any id of it is used.
    fn reserve(&mut self) -> std::io::Result<()> {
        let end = self
            .next
            .checked_add(SCAN_ID_BLOCK)
            .ok_or_else(|| std::io::Error::other("scan ids exhausted"))?;
        let tmp = self.path.with_extension("new");
        std::fs::write(&tmp, format!("{end}\n"))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.end = end;
        Ok(())
    }

    fn next(&mut self) -> std::io::Result<u64> {
        if self.next >= self.end {
            self.reserve()?;
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}

/// A turnstile's agent.
#[derive(Debug)]
pub struct Gate {
    config: GateConfig,
    client: Mutex<Option<Client>>,
    replica: Mutex<Option<Replica>>,
    journal: Mutex<Journal>,
    scan_ids: Mutex<ScanIds>,
    /// The node's clock minus ours, seconds.
    offset_s: AtomicI64,
    /// The last scan was answered online.
    online: AtomicBool,
    /// Unix seconds of the last online answer (0: none yet).
    last_online_unix_s: AtomicU64,
    /// Wakes the upload loop.
    upload_wake: Arc<tokio::sync::Notify>,
    /// Answers given, by mode (online, offline) and outcome (the last: refused).
    answers: [[AtomicU64; OUTCOME_SLOTS]; 2],
    /// The state directory, locked for this process.
    _state_lock: std::fs::File,
    /// The replica changed since it was last saved.
    dirty: AtomicBool,
    /// Why the node refuses this gate for good, once it has.
    refused: Mutex<Option<String>>,
    /// When the gate opened: the first scans wait for the first connection.
    opened: std::time::Instant,
}

/// Outcome kinds, and one more for `refused`.
const OUTCOME_SLOTS: usize = OutcomeKind::ALL.len() + 1;

/// This machine's clock, Unix ms.
fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Gate {
    /// The replica's file in a state directory.
    pub fn replica_path(state_dir: &Path) -> PathBuf {
        state_dir.join("replica")
    }

    /// Opens the state directory (made if missing): the journal, the replica if there is
    /// one, the scan ids; then starts reaching for the node in the background.
    pub fn open(config: GateConfig) -> Result<Arc<Gate>, GateError> {
        let dir = &config.state_dir;
        let state_lock = take_state_dir(dir)?;
        let journal = Journal::open(&dir.join("journal"))?;
        // A damaged replica is loaded afresh from the node: it holds nothing the node lacks.
        let mut replica = match Replica::load(&Gate::replica_path(dir)) {
            Ok(Some(r)) if r.provider != config.provider => {
                tracing::warn!(
                    "the replica in {} is of provider {}, not this gate's {}: loading the \
                     replica afresh from the node",
                    dir.display(),
                    r.provider,
                    config.provider
                );
                None
            }
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e}: loading the replica afresh from the node");
                None
            }
        };
        check_owner(dir, &config, journal.pending().len())?;
        // The decisions made after the replica was saved are not in it: applied again,
        // uploaded or not, so a restarted gate still refuses whom it let through.
        if let Some(r) = replica.as_mut() {
            let since = match r.journal_pos {
                Some(pos) => &journal.scans()[(pos as usize).min(journal.scans().len())..],
                // Saved before the replica kept its position: what is not yet uploaded.
                None => journal.pending(),
            };
            crate::sync::reapply(r, since, config.gate);
        }
        let offset_s = replica.as_ref().map_or(0, |r| r.clock_offset_s);
        let floor = journal
            .scans()
            .iter()
            .filter_map(|r| match r {
                Record::Offline(s) | Record::LateOnline(s) => Some(s.scan_id),
                Record::Uploaded { .. } => None,
            })
            .max()
            .unwrap_or(0);
        let scan_ids = ScanIds::open(&dir.join("scan-ids"), floor)?;
        let gate = Arc::new(Gate {
            config,
            client: Mutex::new(None),
            replica: Mutex::new(replica),
            journal: Mutex::new(journal),
            scan_ids: Mutex::new(scan_ids),
            offset_s: AtomicI64::new(offset_s),
            online: AtomicBool::new(false),
            last_online_unix_s: AtomicU64::new(0),
            upload_wake: Arc::new(tokio::sync::Notify::new()),
            answers: Default::default(),
            _state_lock: state_lock,
            dirty: AtomicBool::new(false),
            refused: Mutex::new(None),
            opened: std::time::Instant::now(),
        });
        tokio::spawn(connect_loop(Arc::downgrade(&gate)));
        crate::sync::spawn_all(&gate);
        Ok(gate)
    }

    /// Answers one scanned code (text as the scanner gives it).
    pub async fn scan(self: &Arc<Self>, text: &str, op: Op) -> Answer {
        let answer = self.scan_inner(text, op).await;
        let mode = match answer.mode {
            Mode::Online => 0,
            Mode::Offline => 1,
        };
        let slot = answer.kind.map_or(OUTCOME_SLOTS - 1, |k| {
            OutcomeKind::ALL
                .iter()
                .position(|x| *x == k)
                .unwrap_or(OUTCOME_SLOTS - 1)
        });
        self.answers[mode][slot].fetch_add(1, Ordering::Relaxed);
        answer
    }

    /// The gate's state as OpenMetrics text (`stile gate --metrics`): whether it is online,
    /// its replica's size, position and age, the node's clock offset, the scans waiting for
    /// upload, and the answers given by mode and outcome. Written out directly: a dozen
    /// series with fixed label values need no registry.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write;
        let s = self.status();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "stile_gate_online",
            "1 while the node answers in time",
            i64::from(s.online),
        );
        gauge(
            "stile_gate_replica_tickets",
            "Tickets in the replica (-1: no replica)",
            s.replica_tickets.map_or(-1, |n| n as i64),
        );
        gauge(
            "stile_gate_replica_position",
            "The node's log position the replica is at",
            s.replica_seq as i64,
        );
        gauge(
            "stile_gate_replica_age_seconds",
            "Seconds since the replica was last known current (-1: no replica)",
            s.replica_age_s.map_or(-1, |a| a as i64),
        );
        gauge(
            "stile_gate_clock_offset_seconds",
            "The node's clock minus this machine's, from the last online answer",
            s.clock_offset_s,
        );
        gauge(
            "stile_gate_pending_uploads",
            "Scans in the journal the node has not applied",
            s.pending as i64,
        );
        let name = "stile_gate_answers";
        let _ = writeln!(
            out,
            "# HELP {name} Answers given, by mode and outcome\n# TYPE {name} counter"
        );
        for (mode, row) in ["online", "offline"].iter().zip(&self.answers) {
            for (i, n) in row.iter().enumerate() {
                let outcome = OutcomeKind::ALL.get(i).map_or("refused", |k| k.name());
                let n = n.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_total{{mode=\"{mode}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        out.push_str("# EOF\n");
        out
    }

    async fn scan_inner(self: &Arc<Self>, text: &str, op: Op) -> Answer {
        let Ok(code) = CodeBytes::parse(text) else {
            let mut a = Answer::offline(OutcomeKind::Forged);
            a.mode = self.mode();
            return a;
        };
        if code.provider() != self.config.provider {
            let mut a = Answer::offline(OutcomeKind::WrongProvider);
            a.mode = self.mode();
            return a;
        }
        let scan_id = match self.scan_ids.lock().expect("not poisoned").next() {
            Ok(id) => id,
            Err(e) => return Answer::refused(format!("cannot reserve scan ids: {e}")),
        };
        let mut client = self.client();
        // Just started: the first connection may still be on its way; a scan waits for it
        // (as long as it would wait for an answer) rather than go offline untried.
        while client.is_none() && self.opened.elapsed() < self.config.online_timeout {
            tokio::time::sleep(Duration::from_millis(10)).await;
            client = self.client();
        }
        if let Some(client) = client {
            let mut ask = tokio::spawn(async move {
                match op {
                    Op::Entry => client.checkin(&code, scan_id).await,
                    Op::Exit => client.exit(&code, scan_id).await,
                }
            });
            match tokio::time::timeout(self.config.online_timeout, &mut ask).await {
                Ok(Ok(Ok(o))) => {
                    self.heard_from_node(&o);
                    self.learn(&code, &o);
                    return Answer::online(&o);
                }
                Ok(Ok(Err(e))) => {
                    tracing::debug!(error = %e, "online scan failed");
                    self.lost_node(&e);
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    // Still on its way: if the node answers after all, that answer is the
                    // scan's, and the journal says so.
                    tokio::spawn(late_answer(Arc::downgrade(self), ask, code, scan_id, op));
                }
            }
        }
        self.online.store(false, Ordering::Relaxed);
        self.decide_offline(&code, scan_id, op)
    }

    /// Decides from the replica and journals the decision before answering.
    fn decide_offline(&self, code: &CodeBytes, scan_id: u64, op: Op) -> Answer {
        if !self.config.offline_admits {
            return Answer::refused("offline decisions are off for this gate".into());
        }
        let now_ms = self.corrected_now_ms();
        let now_s = now_ms / 1000;
        let mut replica = self.replica.lock().expect("not poisoned");
        let Some(r) = replica.as_mut() else {
            return Answer::refused("no replica of the tickets yet: cannot decide offline".into());
        };
        if now_s + CLOCK_BEHIND_MAX_S < r.synced_unix_s {
            // A clock that stopped or was set back would make any replica look fresh.
            return Answer::refused(format!(
                "this machine's clock is {} behind the replica's last sync: cannot judge \
                 its age, cannot decide offline",
                human(r.synced_unix_s - now_s)
            ));
        }
        let age = now_s.saturating_sub(r.synced_unix_s);
        if age > self.config.max_replica_age.as_secs() {
            return Answer::refused(format!(
                "the replica is {} old, older than the {} allowed: cannot decide offline",
                human(age),
                human(self.config.max_replica_age.as_secs())
            ));
        }
        let (answer, changed) =
            match r.lookup_at(code, now_s) {
                Lookup::OnlineOnly => return Answer::refused(
                    "this ticket's rotating codes are checked online only: cannot decide offline"
                        .into(),
                ),
                Lookup::Unknown => (Answer::offline(OutcomeKind::Unknown), None),
                Lookup::Forged => (Answer::offline(OutcomeKind::Forged), None),
                Lookup::Found(i) => {
                    let e = *r.entry(i);
                    let Some(policy) = r.policy(e.policy).copied() else {
                        return Answer::refused("the replica names no policy for it".into());
                    };
                    if policy.online_only {
                        return Answer::refused(
                            "this ticket's event is checked online only: cannot decide \
                             offline"
                                .into(),
                        );
                    }
                    let (d, next) = decide(&e, &policy, op, self.config.gate, now_s);
                    let a = Answer {
                        kind: Some(d.kind),
                        gate: d.gate,
                        at_unix_s: d.at_unix_s,
                        entries: d.entries,
                        mode: Mode::Offline,
                        reason: None,
                    };
                    (a, (next != e).then_some((i, next)))
                }
            };
        let kind = answer.kind.expect("an offline decision");
        let record = Record::Offline(Scan {
            scan_id,
            scanned_at_unix_ms: now_ms,
            // After a restart the gate has heard nothing yet: the replica's last sync is
            // then the latest time the node is known to have been there.
            last_online_unix_s: self
                .last_online_unix_s
                .load(Ordering::Relaxed)
                .max(r.synced_unix_s),
            op,
            decision: kind,
            code: *code,
        });
        if let Err(e) = self.journal.lock().expect("not poisoned").append(record) {
            return Answer::refused(format!("cannot write the journal: {e}"));
        }
        if let Some((i, next)) = changed {
            *r.entry_mut(i) = next;
            self.touched();
        }
        answer
    }

    /// What the gate shows of itself.
    pub fn status(&self) -> Status {
        let replica = self.replica.lock().expect("not poisoned");
        let now_s = self.corrected_now_ms() / 1000;
        Status {
            online: self.online.load(Ordering::Relaxed),
            replica_tickets: replica.as_ref().map(Replica::len),
            replica_seq: replica.as_ref().map_or(0, |r| r.seq),
            replica_age_s: replica
                .as_ref()
                .map(|r| now_s.saturating_sub(r.synced_unix_s)),
            pending: self.journal.lock().expect("not poisoned").pending().len(),
            clock_offset_s: self.offset_s.load(Ordering::Relaxed),
            refused: self.refused.lock().expect("not poisoned").clone(),
        }
    }

    /// Waits until the node has applied every scan of the journal, or `timeout` passes;
    /// returns how many are left.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.journal.lock().expect("not poisoned").pending().len();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            self.upload_wake.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn client(&self) -> Option<Client> {
        self.client.lock().expect("not poisoned").clone()
    }

    pub(crate) fn provider(&self) -> u16 {
        self.config.provider
    }

    /// The log position the replica is at, if there is one.
    pub(crate) fn replica_seq(&self) -> Option<u64> {
        self.replica
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map(|r| r.seq)
    }

    /// Puts a freshly loaded replica in place (with this gate's offline decisions not yet
    /// uploaded applied to it again) and saves it.
    pub(crate) fn install_replica(&self, mut r: Replica) {
        {
            // In the order decisions take them: no decision falls between the two.
            let mut replica = self.replica.lock().expect("not poisoned");
            let journal = self.journal.lock().expect("not poisoned");
            crate::sync::reapply(&mut r, journal.pending(), self.config.gate);
            *replica = Some(r);
        }
        self.save_replica();
    }

    /// Applies a batch of the node's changes.
    pub(crate) fn apply_batch(
        &self,
        batch: &stile_protocol::frame::ReplicaBatch,
    ) -> Result<(), ReplicaError> {
        let mut replica = self.replica.lock().expect("not poisoned");
        let Some(r) = replica.as_mut() else {
            return Ok(());
        };
        for item in &batch.items {
            r.apply(item)?;
        }
        r.seq = batch.seq;
        r.synced_unix_s = batch.now_unix_s;
        self.touched();
        Ok(())
    }

    /// Writes the replica to the state directory if it changed since it was last saved
    /// (the gate does so every few seconds, and `stile gate` at its end).
    pub fn save(&self) {
        if self.dirty.swap(false, Ordering::AcqRel) {
            self.save_replica();
        }
    }

    /// Notes that the replica changed.
    pub(crate) fn touched(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Writes the replica to the state directory (a copy is taken under the lock, and
    /// written outside it).
    pub(crate) fn save_replica(&self) {
        self.dirty.store(false, Ordering::Release);
        let copy = {
            // Under both locks, in the order decisions take them: the journal's length is
            // what the copy reflects.
            let replica = self.replica.lock().expect("not poisoned");
            let journal = self.journal.lock().expect("not poisoned");
            replica.clone().map(|mut r| {
                r.journal_pos = Some(journal.scans().len() as u64);
                r.clock_offset_s = self.offset_s.load(Ordering::Relaxed);
                r
            })
        };
        if let Some(r) = copy {
            if let Err(e) = r.save(&Gate::replica_path(&self.config.state_dir)) {
                tracing::warn!("cannot save the replica: {e}");
            }
        }
    }

    pub(crate) fn upload_wake(&self) -> Arc<tokio::sync::Notify> {
        self.upload_wake.clone()
    }

    /// What to upload: the journal's position, its scans from there, and the scan ids the
    /// node applied online after all (answered late `admitted` or `exited`; a late refusal
    /// of an offline admit is uploaded still, and the node records the conflict). `None`
    /// when nothing waits: an idle gate reads nothing of its journal.
    pub(crate) fn upload_work(&self) -> Option<(u64, Vec<Record>, std::collections::HashSet<u64>)> {
        let journal = self.journal.lock().expect("not poisoned");
        if journal.pending().is_empty() {
            return None;
        }
        let late = crate::sync::applied_late(journal.scans());
        Some((journal.uploaded(), journal.pending().to_vec(), late))
    }

    /// Notes in the journal that the node has applied its first `count` scans.
    pub(crate) fn mark_uploaded(&self, count: u64) {
        let mut journal = self.journal.lock().expect("not poisoned");
        if count > journal.uploaded() {
            if let Err(e) = journal.append(Record::Uploaded { count }) {
                tracing::warn!("cannot write the journal's upload mark: {e}");
            }
        }
    }

    /// The journal's scans not yet applied by the node.
    pub fn pending(&self) -> Vec<Record> {
        self.journal
            .lock()
            .expect("not poisoned")
            .pending()
            .to_vec()
    }

    fn mode(&self) -> Mode {
        match self.online.load(Ordering::Relaxed) {
            true => Mode::Online,
            false => Mode::Offline,
        }
    }

    /// This machine's clock corrected by the node's last known offset, Unix ms.
    fn corrected_now_ms(&self) -> u64 {
        let offset_ms = self.offset_s.load(Ordering::Relaxed) * 1000;
        now_unix_ms().saturating_add_signed(offset_ms)
    }

    /// An answer from the node: online, and its clock's offset when the answer carries the
    /// node's now.
    fn heard_from_node(&self, o: &Outcome) {
        self.online.store(true, Ordering::Relaxed);
        let now_s = now_unix_ms() / 1000;
        self.last_online_unix_s.store(now_s, Ordering::Relaxed);
        if matches!(o.kind, OutcomeKind::Admitted | OutcomeKind::Exited) && o.at_unix_s != 0 {
            self.offset_s
                .store(o.at_unix_s as i64 - now_s as i64, Ordering::Relaxed);
        }
    }

    /// Brings the replica's entry of `code` up to what the node just answered, so that an
    /// offline decision later knows of this gate's online scans too.
    fn learn(&self, code: &CodeBytes, o: &Outcome) {
        let mut replica = self.replica.lock().expect("not poisoned");
        let Some(r) = replica.as_mut() else { return };
        let Lookup::Found(i) = r.lookup_at(code, self.corrected_now_ms() / 1000) else {
            return;
        };
        let policy = r.entry(i).policy;
        let exits = r.policy(policy).is_some_and(|p| p.exits);
        let max = r.policy(policy).map_or(0, |p| p.max_entries);
        let e = r.entry_mut(i);
        let at = to_replica_s(o.at_unix_s);
        match o.kind {
            OutcomeKind::Admitted => {
                e.entries = o.entries;
                e.flags |= INSIDE;
                if e.first_scan == 0 {
                    e.first_scan = at;
                }
            }
            OutcomeKind::Exited => e.flags &= !INSIDE,
            OutcomeKind::AlreadyUsed => {
                e.entries = e.entries.max(o.entries);
                // Refused though entries are left: the holder is inside.
                if exits && (max == 0 || e.entries < max) {
                    e.flags |= INSIDE;
                }
            }
            OutcomeKind::Revoked => e.flags |= REVOKED,
            OutcomeKind::Undone => {
                e.entries = o.entries;
                e.flags &= !INSIDE;
            }
            _ => return,
        }
        e.last_gate = o.gate;
        e.last_at = at;
        self.touched();
    }

    fn lost_node(&self, e: &ClientError) {
        if let ClientError::Refused(reason) = e {
            // Refused for good (revoked certificate): no use asking again.
            tracing::error!("the node refuses this gate: {e}");
            *self.refused.lock().expect("not poisoned") = Some(reason.clone());
        }
        self.online.store(false, Ordering::Relaxed);
    }
}

/// Seconds as staff read them (`1h 2m 3s`).
fn human(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// The file in a state directory naming the gate whose journal it holds.
const OWNER_FILE: &str = "owner";

/// Refuses a state directory whose journal holds scans another gate has yet to upload (they
/// would go up under this gate's name and be refused or misfiled); notes this gate as its
/// owner otherwise.
fn check_owner(dir: &Path, config: &GateConfig, pending: usize) -> Result<(), GateError> {
    let path = dir.join(OWNER_FILE);
    let me = format!("gate {} provider {}\n", config.gate, config.provider);
    let theirs = std::fs::read_to_string(&path).ok();
    if let Some(theirs) = theirs.as_deref().filter(|t| *t != me) {
        if pending > 0 {
            return Err(GateError::Owner(format!(
                "state directory {} holds {pending} scans of {} not yet uploaded; start that \
                 gate's certificate on it to upload them, or move the directory aside for \
                 this gate",
                dir.display(),
                theirs.trim()
            )));
        }
    }
    if theirs.as_deref() != Some(me.as_str()) {
        write_owner(&path, me.as_bytes()).map_err(|source| GateError::State {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Writes the owner file whole (a temporary file, synced, renamed over it; mode 0600).
fn write_owner(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// Waits for a scan's online answer that came too late and journals it.
async fn late_answer(
    gate: std::sync::Weak<Gate>,
    ask: tokio::task::JoinHandle<Result<Outcome, ClientError>>,
    code: CodeBytes,
    scan_id: u64,
    op: Op,
) {
    let Ok(Ok(o)) = ask.await else { return };
    let Some(gate) = gate.upgrade() else { return };
    gate.heard_from_node(&o);
    gate.learn(&code, &o);
    let record = Record::LateOnline(Scan {
        scan_id,
        scanned_at_unix_ms: now_unix_ms(),
        last_online_unix_s: now_unix_ms() / 1000,
        op,
        decision: o.kind,
        code,
    });
    let shown_admitted = {
        let journal = gate.journal.lock().expect("not poisoned");
        journal.scans().iter().any(|r| {
            matches!(r, Record::Offline(s) if s.scan_id == scan_id && s.decision == OutcomeKind::Admitted)
        })
    };
    let appended = gate.journal.lock().expect("not poisoned").append(record);
    if let Err(e) = appended {
        tracing::error!("cannot journal a late online answer (scan {scan_id}): {e}");
    }
    if o.kind == OutcomeKind::Admitted && op == Op::Entry && !shown_admitted {
        // The node admitted a scan whose holder the gate kept out (it refused, or decided
        // offline that the ticket could not pass): undone, so the holder's next scan
        // passes rather than reading `already_used` for an entry that never happened.
        let Some(client) = gate.client() else { return };
        let undo_id = match gate.scan_ids.lock().expect("not poisoned").next() {
            Ok(id) => id,
            Err(e) => {
                tracing::error!("cannot undo a late admit the gate did not show: {e}");
                return;
            }
        };
        match client.undo(&code, undo_id).await {
            Ok(u) if u.kind == OutcomeKind::Undone => {
                tracing::info!("undid a late admit the gate did not show (scan {scan_id})");
                gate.learn(&code, &u);
            }
            Ok(u) => tracing::warn!(
                "a late admit the gate did not show (scan {scan_id}) could not be undone: {}",
                u.kind
            ),
            Err(e) => tracing::warn!(
                "a late admit the gate did not show (scan {scan_id}) could not be undone: {e}"
            ),
        }
    }
}

/// Keeps a client to the node: tries until one connects (the client then reconnects by
/// itself), as long as the gate lives.
async fn connect_loop(gate: std::sync::Weak<Gate>) {
    let mut warned = false;
    loop {
        let Some(g) = gate.upgrade() else { return };
        let config = g.config.client.clone();
        drop(g);
        match Client::connect(config).await {
            Ok(client) => {
                if let Some(g) = gate.upgrade() {
                    *g.client.lock().expect("not poisoned") = Some(client);
                }
                return;
            }
            Err(ClientError::Refused(reason)) => {
                tracing::error!("the node refuses this gate: {reason}");
                if let Some(g) = gate.upgrade() {
                    *g.refused.lock().expect("not poisoned") = Some(reason);
                }
                return;
            }
            Err(e) => {
                // Said once at warning level: a wrong --node looks like an outage otherwise.
                if !warned {
                    tracing::warn!("node not reached (retrying every {CONNECT_RETRY:?}): {e}");
                    warned = true;
                } else {
                    tracing::debug!("node not reached: {e}");
                }
            }
        }
        tokio::time::sleep(CONNECT_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_ids_never_repeat_across_restarts_or_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan-ids");
        let now_ns = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        };
        let before = now_ns();
        let mut ids = ScanIds::open(&path, 0).unwrap();
        let first: Vec<u64> = (0..3).map(|_| ids.next().unwrap()).collect();
        // From the clock: above anything a wiped directory of this gate handed out before.
        assert!(first[0] >= before, "{first:?}");
        assert_eq!(first[1..], [first[0] + 1, first[0] + 2]);
        drop(ids);
        // A restart skips the rest of the block: ids already handed out are never reused.
        let mut ids = ScanIds::open(&path, 0).unwrap();
        let next = ids.next().unwrap();
        assert!(next >= first[0] + SCAN_ID_BLOCK, "{next} {first:?}");
        // Past a block's end, the next block is reserved first.
        ids.next = ids.end;
        let after = ids.next().unwrap();
        let on_disk: u64 = std::fs::read_to_string(&path)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(on_disk > after);
        drop(ids);
        // The file lost (or set back): the journal's highest id and the clock still hold.
        std::fs::remove_file(&path).unwrap();
        let mut ids = ScanIds::open(&path, after + 10).unwrap();
        assert!(ids.next().unwrap() > after + 10);
        // Ids that cannot go on are refused, not wrapped.
        std::fs::write(&path, format!("{}\n", u64::MAX - 5)).unwrap();
        assert!(ScanIds::open(&path, 0).is_err());
    }
}
