//! `--history FILE`: every attempt of every scan the runs send, as the JSON lines of
//! `docs/FORMAT.md` §12, for `stile history check`.
//!
//! Each run declares its tickets before its clock starts; each gate's receiver formats its
//! lines into a buffer of its own and hands it to the file when it fills, so recording costs
//! the hot path no lock per answer. One monotonic zero serves every run of the command, so
//! their times never go back. Forged codes are no tickets and are not recorded.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use stile_history::{Answer, OpKind, Policy, Record};
use stile_protocol::{CodeBytes, Outcome, OutcomeKind};

use crate::plan::{Item, Kind, NOT_GENUINE};

/// Bytes a gate gathers before handing them to the file.
const GATE_BUFFER_BYTES: usize = 64 * 1024;

/// The history file being written.
pub struct HistoryLog {
    path: PathBuf,
    file: Mutex<Sink>,
    /// The monotonic zero of every time in the file.
    zero: Instant,
    /// The wall clock at `zero`, Unix ms.
    zero_wall_ms: u64,
}

/// The file and the first write error (later writes are skipped: the history is broken).
struct Sink {
    out: BufWriter<File>,
    error: Option<std::io::Error>,
}

impl std::fmt::Debug for HistoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HistoryLog({})", self.path.display())
    }
}

impl HistoryLog {
    /// Creates (or truncates) `path` and writes the header line.
    pub fn create(path: &Path) -> std::io::Result<Arc<HistoryLog>> {
        use std::os::unix::fs::OpenOptionsExt;
        // 0600: it holds every minted ticket's code, each one a way in.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        stile_history::write_header(&mut out)?;
        let zero = Instant::now();
        let zero_wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ok(Arc::new(HistoryLog {
            path: path.to_path_buf(),
            file: Mutex::new(Sink { out, error: None }),
            zero,
            zero_wall_ms,
        }))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Declares a run's tickets: `codes` minted in the order and kinds `kinds` gives.
    pub(crate) fn tickets(&self, codes: &[CodeBytes], kinds: &[(Kind, u32)]) {
        let mut buf = Vec::with_capacity(codes.len().min(1 << 16) * 120);
        let mut codes = codes.iter();
        for &(kind, n) in kinds {
            let policy = policy_of(kind);
            for code in codes.by_ref().take(n as usize) {
                let _ = stile_history::write_ticket(&mut buf, code.to_text().as_str(), &policy);
                if buf.len() >= GATE_BUFFER_BYTES {
                    self.append(&buf);
                    buf.clear();
                }
            }
        }
        self.append(&buf);
    }

    /// A gate's recorder; `details`: the target's answers name gates and entry counts
    /// (Redis's script answers carry none).
    pub(crate) fn gate(self: &Arc<Self>, gate: u16, details: bool) -> GateHistory {
        GateHistory {
            log: self.clone(),
            gate,
            details,
            buf: Vec::with_capacity(GATE_BUFFER_BYTES + 512),
        }
    }

    /// Flushes the file to disk; the first write error, if any.
    pub fn finish(&self) -> std::io::Result<()> {
        let mut sink = self.file.lock().expect("not poisoned");
        if let Some(e) = sink.error.take() {
            return Err(e);
        }
        sink.out.flush()?;
        // Only a file is synced: a pipe or a device under /dev has nothing to sync.
        let file = sink.out.get_ref();
        match file.metadata()?.is_file() {
            true => file.sync_data(),
            false => Ok(()),
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut sink = self.file.lock().expect("not poisoned");
        if sink.error.is_none() {
            if let Err(e) = sink.out.write_all(bytes) {
                sink.error = Some(e);
            }
        }
    }

    /// Nanoseconds from the zero.
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.zero).as_nanos() as u64
    }
}

/// The history's policy of a kind of ticket (what `target.rs` mints).
fn policy_of(kind: Kind) -> Policy {
    match kind {
        Kind::Single => Policy::SINGLE,
        Kind::Journey => Policy {
            exits: true,
            ..Policy::SINGLE
        },
        Kind::DayPass => Policy {
            max_entries: 0,
            exits: true,
            valid_for_s: Some(crate::target::DAY_S),
            ..Policy::SINGLE
        },
    }
}

/// One gate's lines, gathered.
pub(crate) struct GateHistory {
    log: Arc<HistoryLog>,
    gate: u16,
    details: bool,
    buf: Vec<u8>,
}

impl GateHistory {
    /// Records one attempt of `item`, sent at `sent`: answered at `returned` with `answer`,
    /// or given up on then (`answer` `None`: the connection was lost or the node answered
    /// with an error, so whether it happened is unknown).
    pub(crate) fn record(
        &mut self,
        item: &Item,
        sent: Instant,
        returned: Instant,
        answer: Option<&Outcome>,
    ) {
        if item.ticket == NOT_GENUINE {
            return;
        }
        let invoke_ns = self.log.ns(sent);
        let named = |o: &Outcome| {
            self.details
                && matches!(
                    o.kind,
                    OutcomeKind::Admitted
                        | OutcomeKind::AlreadyUsed
                        | OutcomeKind::Exited
                        | OutcomeKind::Undone
                )
        };
        let r = Record {
            gate: self.gate,
            op: if item.exit {
                OpKind::Exit
            } else {
                OpKind::Checkin
            },
            scan_id: Some(item.scan_id),
            invoke_ns,
            return_ns: Some(self.log.ns(returned)),
            wall_ms: self.log.zero_wall_ms + invoke_ns / 1_000_000,
            answer: answer.map_or(Answer::Indeterminate, |o| Answer::Outcome(o.kind)),
            out_gate: answer.filter(|o| named(o)).map(|o| o.gate),
            entries: answer.filter(|o| named(o)).map(|o| o.entries),
            inside: None,
        };
        let _ = stile_history::write_op(&mut self.buf, item.code.to_text().as_str(), &r);
        if self.buf.len() >= GATE_BUFFER_BYTES {
            self.flush();
        }
    }

    /// Hands what is gathered to the file.
    pub(crate) fn flush(&mut self) {
        self.log.append(&self.buf);
        self.buf.clear();
    }
}

impl Drop for GateHistory {
    fn drop(&mut self) {
        self.flush();
    }
}
