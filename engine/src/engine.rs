//! The engine: key ring, policies, partitions, imported codes and scan memory, and the one
//! path every operation takes: locate the ticket (tag first), then one CAS on its word.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;
use stile_protocol::limits::LOADTEST_PARTITION;
use stile_protocol::{CodeBytes, CodeError, CodeFormat, Outcome};
use xxhash_rust::xxh3::Xxh3Builder;

use crate::clock::{Clock, MonotonicNow};
use crate::datadir;
use crate::error::OpenError;
use crate::index::{Partition, Slot};
use crate::keys::KeyRing;
use crate::policy::{Policy, PolicyError, PolicyId, PolicyTable};
use crate::scans::{ScanKey, ScanMemory};
use crate::snapshot::{SnapshotError, SnapshotInfo, Stage};
use crate::storage::{SharedStorage, StdStorage};
use crate::tables::{Tables, TicketLoc};
use crate::wal::record::ScanTrace;
use crate::wal::{Claim, Durability, LogFull, Record, Reservation, StartOptions, SyncMode, Wal};
use crate::word::{self, from_epoch_s, to_epoch_s, Applied, Ctx, Op, Word};

/// Default time step of rotating codes.
pub const ROTATION_STEP_DEFAULT_S: u32 = 30;
/// Most partitions one engine serves.
pub const PARTITIONS_PER_ENGINE_MAX: usize = 1024;
/// Zeros written per step of a spare's preparation in a log stepped by hand (small, so a
/// simulation's faults can strike between steps of its small segments).
const SIM_SPARE_STEP_BYTES: usize = 4096;

/// How an engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Partitions this engine owns; codes of other partitions are `unknown` here. By
    /// default 0, where tickets are minted unless told otherwise, and
    /// [`LOADTEST_PARTITION`], where `stile loadtest` mints its own.
    pub partitions: Vec<u16>,
    /// Most serials each partition hands out (at most 2^32).
    pub serials_per_partition_max: u64,
    /// Time step of rotating codes, seconds.
    pub rotation_step_s: u32,
    /// When the log syncs and when answers go out (engines opened on a data dir).
    pub sync: SyncMode,
    /// A log segment is closed and a new one started past this size.
    pub segment_max_bytes: u64,
    /// Log segments kept prepared (written with zeros) ahead of need from the start, as
    /// `stile node` does ([`crate::wal::RUNWAY_DEFAULT`]); 0 (the default): one at a time,
    /// once the log holds a megabyte. None with `SyncMode::None`.
    pub log_runway: u32,
    /// Open even though the newest time in the log or snapshot is more than
    /// [`CLOCK_BEHIND_LOG_MAX_S`] ahead of the clock (`--accept-clock-behind-log`: the
    /// operator knows the log's times are wrong, from a clock that was ahead); the engine's
    /// time then starts at the clock's.
    pub accept_clock_behind_log: bool,
}

/// How far the newest time in the log or snapshot may be ahead of the clock at start: the
/// engine's time starts there and stands still until the clock catches up. Beyond it the
/// clock (or the log) is wrong, and opening refuses rather than judge every ticket by it.
pub const CLOCK_BEHIND_LOG_MAX_S: u64 = 300;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            partitions: vec![0, LOADTEST_PARTITION],
            serials_per_partition_max: 1 << 32,
            rotation_step_s: ROTATION_STEP_DEFAULT_S,
            sync: SyncMode::Always,
            segment_max_bytes: crate::wal::segment::SEGMENT_MAX_BYTES,
            log_runway: 0,
            accept_clock_behind_log: false,
        }
    }
}

/// Who asks: a gate id and the provider whose tickets it may check in (`None`: an operator,
/// any provider). Both come from the gate's certificate, never from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    /// Gate id (recorded as the last gate of tickets it admits).
    pub id: u16,
    /// Provider restriction.
    pub provider: Option<u16>,
}

impl Gate {
    /// Gate `id` of provider `provider`.
    pub const fn new(id: u16, provider: u16) -> Self {
        Gate {
            id,
            provider: Some(provider),
        }
    }

    /// An operator acting as no gate (revoke, transfer, status).
    pub const OPERATOR: Gate = Gate {
        id: 0,
        provider: None,
    };
}

/// A ticket as presented: a signed code, or a string imported from another system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// A stile code.
    Code(CodeBytes),
    /// An imported code.
    Imported(&'a str),
}

/// A ticket found in the index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Located<'e> {
    /// Its partition and serial.
    pub loc: TicketLoc,
    /// Its slot.
    pub slot: &'e Slot,
    /// The format the presented code had (imported codes count as static).
    pub format: CodeFormat,
    /// The provider the presented code names (`None` for imported codes).
    pub code_provider: Option<u16>,
}

/// The ticket-verification engine (in memory; durability comes with the log).
pub struct Engine {
    /// What check-ins read and change: keys, policies, partitions, imported codes,
    /// successors, remembered scans.
    pub(crate) tables: Tables,
    /// Where time comes from.
    pub(crate) clock: MonotonicNow,
    /// Rotating code time step, seconds.
    pub(crate) rotation_step_s: u32,
    /// The write-ahead log (`None`: an in-memory engine).
    pub(crate) wal: Option<Wal>,
    /// What opening found in the log.
    pub(crate) recovered: Recovered,
    /// What applying a primary's records keeps between batches (a standby).
    pub(crate) standby: crate::standby::StandbyState,
    /// The data dir's lock (`None`: an in-memory engine). Last, so that it is let go only
    /// after the log has closed.
    pub(crate) _lock: Option<datadir::DirLock>,
}

/// What opening a data dir found in its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Records replayed.
    pub records: u64,
    /// Bytes of torn tail cut off the last segment.
    pub truncated_bytes: u64,
    /// Zeros after it: log space prepared ahead that no record reached (not damage).
    pub unwritten_bytes: u64,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("keys", &self.tables.keys)
            .field("policies", &self.tables.policies.len())
            .field("tickets", &self.minted_tickets())
            .field("imported", &self.tables.imported.len())
            .finish()
    }
}

impl Engine {
    /// An engine over `keys`, holding nothing else on disk.
    pub fn in_memory(
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        keys: KeyRing,
    ) -> Result<Self, OpenError> {
        if config.partitions.is_empty() || config.partitions.len() > PARTITIONS_PER_ENGINE_MAX {
            return Err(OpenError::Config(format!(
                "an engine serves 1 to {PARTITIONS_PER_ENGINE_MAX} partitions, got {}",
                config.partitions.len()
            )));
        }
        if config.serials_per_partition_max == 0 || config.serials_per_partition_max > 1 << 32 {
            return Err(OpenError::Config(
                "serials per partition must be 1 to 2^32".into(),
            ));
        }
        if config.segment_max_bytes <= crate::wal::segment::SEGMENT_HEADER_LEN + 64 {
            return Err(OpenError::Config(
                "log segments must hold at least one record".into(),
            ));
        }
        if config.rotation_step_s == 0 {
            return Err(OpenError::Config(
                "rotation step must be at least one second".into(),
            ));
        }
        check_clock(clock.now_unix_s())?;
        let mut ids = config.partitions.clone();
        ids.sort_unstable();
        ids.dedup();
        let partitions: Vec<Partition> = ids
            .into_iter()
            .map(|p| Partition::new(p, config.serials_per_partition_max))
            .collect();
        Ok(Engine {
            tables: Tables {
                keys,
                policies: PolicyTable::default(),
                partitions: partitions.into_boxed_slice(),
                purging: Default::default(),
                imported: DashMap::with_hasher(Xxh3Builder::new()),
                successors: Default::default(),
                scans: ScanMemory::default(),
                offline: Default::default(),
                newest_e: Default::default(),
            },
            clock: MonotonicNow::new(clock, 0),
            rotation_step_s: config.rotation_step_s,
            wal: None,
            recovered: Recovered::default(),
            standby: Default::default(),
            _lock: None,
        })
    }

    /// Opens the engine of data dir `dir`: loads its key ring (or makes one if the dir is
    /// new), replays the log (cutting off a torn tail, refusing a corrupt middle), and starts
    /// the log writer.
    pub fn open(
        dir: &Path,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OpenError> {
        let io = |source| OpenError::DataDir {
            path: dir.to_path_buf(),
            source,
        };
        datadir::ensure(dir).map_err(io)?;
        // Before anything is read: a second process would cut the first one's log as torn
        // and mint the same serials.
        let lock = datadir::lock(dir).map_err(|e| match e {
            datadir::LockError::Held(pid) => OpenError::InUse {
                path: dir.to_path_buf(),
                pid,
            },
            datadir::LockError::Io(source) => io(source),
        })?;
        // Before anything is made: keys and a log written under a wrong clock would be
        // judged by it.
        check_clock(clock.now_unix_s())?;
        let has_state = datadir::has_state(dir).map_err(io)?;
        let ring = dir.join(datadir::KEYS_DIR).join(datadir::RING_FILE);
        if !has_state && ring.exists() {
            // Keys are made in the same start that makes the log: a ring without a log or a
            // snapshot is a data dir whose log was deleted, and starting afresh would mint
            // the same codes again, for tickets that were already used.
            return Err(OpenError::LogMissing {
                path: dir.join(datadir::WAL_DIR),
            });
        }
        let keys = KeyRing::open(dir, has_state)?;
        let mut engine = Self::recover(StdStorage::shared(), dir, config, clock, keys, false)?;
        engine._lock = Some(lock);
        Ok(engine)
    }

    /// Loads the newest snapshot of data dir `dir` on `storage`, replays the log after it
    /// and starts the log (stepped by hand if `manual`: a simulation). What [`Self::open`]
    /// does once the dir is locked and its key ring read.
    pub(crate) fn recover(
        storage: SharedStorage,
        dir: &Path,
        config: EngineConfig,
        clock: Arc<dyn Clock>,
        keys: KeyRing,
        manual: bool,
    ) -> Result<Self, OpenError> {
        let options = StartOptions {
            mode: config.sync,
            segment_max_bytes: config.segment_max_bytes,
            runway: config.log_runway,
            manual,
            spare_step_bytes: if manual {
                SIM_SPARE_STEP_BYTES
            } else {
                crate::wal::segment::SPARE_STEP
            },
        };
        let accept_clock_behind_log = config.accept_clock_behind_log;
        let mut engine = Self::in_memory(config, clock, keys)?;
        let wal_dir = dir.join(datadir::WAL_DIR);
        let (from_seq, snapshots_end) =
            crate::snapshot::load_newest(&*storage, &engine.tables, dir)?;
        let end = crate::recovery::replay(&*storage, &engine.tables, &wal_dir, from_seq)?;
        engine.start_clock(accept_clock_behind_log)?;
        let tail = end.tail.clone();
        // Numbers go on past every snapshot's start, even one skipped as damaged: were they
        // handed out again below it, that snapshot, read whole at a later start (a
        // transient error, a repaired file), would stand in for records it never held
        // (found by the simulation).
        let next_seq = end.next_seq.max(snapshots_end);
        let wal = Wal::start_on(storage, &wal_dir, next_seq, tail, options).map_err(|source| {
            OpenError::DataDir {
                path: wal_dir.clone(),
                source,
            }
        })?;
        engine.wal = Some(wal);
        engine.recovered = Recovered {
            records: end.records,
            truncated_bytes: end.truncated_bytes,
            unwritten_bytes: end.unwritten_bytes,
        };
        Ok(engine)
    }

    /// Starts the engine's time at the newest time the recovered state holds, or refuses
    /// when that is more than [`CLOCK_BEHIND_LOG_MAX_S`] ahead of the clock (unless
    /// `accept_behind`: then at the clock's).
    fn start_clock(&mut self, accept_behind: bool) -> Result<(), OpenError> {
        let wall = self.clock.wall_unix_s();
        let newest = self.newest_time_unix_s();
        let ahead = newest.saturating_sub(wall);
        if ahead > CLOCK_BEHIND_LOG_MAX_S && !accept_behind {
            return Err(OpenError::Clock(format!(
                "the data dir holds a change made at {} (Unix {newest}), {ahead} s after this \
                 machine's clock says it is now ({wall}). Either the clock is behind (fix it: \
                 judged by it, tickets would be admitted again inside their undo windows and \
                 passes) or the log's times came from a clock that was ahead; if you know it \
                 was the log, start with --accept-clock-behind-log",
                stile_protocol::outcome::format_unix_s(newest),
            )));
        }
        let floor = if ahead > CLOCK_BEHIND_LOG_MAX_S {
            wall
        } else {
            newest.max(wall)
        };
        self.clock = MonotonicNow::new(self.clock.inner(), floor);
        Ok(())
    }

    /// The newest time any ticket's restored state records (its last event or first scan),
    /// Unix seconds; 0 with no tickets. Noted as the snapshot and the log are read, so that
    /// no pass over every slot is needed.
    fn newest_time_unix_s(&self) -> u64 {
        match self
            .tables
            .newest_e
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => 0,
            e => from_epoch_s(e),
        }
    }

    /// Whether the data dir's path still names the directory this engine locked (true for
    /// an engine without one), and its log is still there (see [`Wal::in_place`]). A node
    /// checks it now and then and stops when it is false: every path it would use leads
    /// into another directory, or what it makes durable goes into deleted files.
    pub fn data_dir_in_place(&self) -> bool {
        self._lock
            .as_ref()
            .is_none_or(datadir::DirLock::still_at_path)
            && self.wal.as_ref().is_none_or(|w| w.in_place())
    }

    /// Times the clock stepped back while the engine ran, and how far it is behind the
    /// engine's time now (seconds): the engine holds its time still meanwhile.
    pub fn clock_steps_back(&self) -> (u64, u64) {
        (self.clock.steps_back(), self.clock.held_s())
    }

    /// Takes a snapshot while check-ins go on, then drops log segments it makes redundant.
    pub fn snapshot(&self) -> Result<SnapshotInfo, SnapshotError> {
        self.snapshot_until(Stage::Done)
    }

    /// [`Self::snapshot`], stopping at `stage` (for crash tests).
    #[doc(hidden)]
    pub fn snapshot_until(&self, stage: Stage) -> Result<SnapshotInfo, SnapshotError> {
        let wal = self.wal.as_ref().ok_or(SnapshotError::InMemory)?;
        crate::snapshot::take(&self.tables, wal, stage)
    }

    /// What opening found in the log.
    pub fn recovered(&self) -> Recovered {
        self.recovered
    }

    /// The log, if this engine has one.
    pub fn wal(&self) -> Option<&Wal> {
        self.wal.as_ref()
    }

    /// Reserves `count` log numbers for changes about to be made (no-op in memory).
    #[inline]
    pub(crate) fn reserve(&self, count: u64) -> Option<Reservation<'_>> {
        self.wal.as_ref().map(|w| w.reserve(count))
    }

    /// [`Self::reserve`] for `count` records of fixed size, once the log has room for them:
    /// `Err` when its disk is full, before anything is reserved or changed.
    #[inline]
    pub(crate) fn reserve_room(&self, count: u64) -> Result<Option<Reservation<'_>>, LogFull> {
        self.wal.as_ref().map(|w| w.try_reserve(count)).transpose()
    }

    /// Room in the log for `bytes` of records about to be made, claimed before the changes
    /// they record: `Err` when its disk is full (none needed in memory).
    pub(crate) fn claim_room(&self, bytes: u64) -> Result<Option<Claim<'_>>, LogFull> {
        self.wal.as_ref().map(|w| w.claim(bytes)).transpose()
    }

    /// [`Self::reserve`], holding `claim` (from [`Self::claim_room`]) until the records are
    /// written.
    pub(crate) fn reserve_claimed(
        &self,
        count: u64,
        claim: Option<Claim<'_>>,
    ) -> Option<Reservation<'_>> {
        let wal = self.wal.as_ref()?;
        Some(match claim {
            Some(claim) => wal.reserve_with(count, claim),
            None => wal.reserve(count),
        })
    }

    /// What an answer that read the index just now must wait for before it goes out: every
    /// change reserved so far (one it read may not be durable yet).
    pub fn observed(&self) -> Durability {
        self.reserve(0).map_or(Durability::READY, |r| r.submit())
    }

    /// Logs one record outside the hot path, with its room `claim` if one was made before
    /// its change, and waits until it is durable.
    pub(crate) fn log_one(&self, claim: Option<Claim<'_>>, record: impl FnOnce() -> Record) {
        if let Some(mut r) = self.reserve_claimed(1, claim) {
            r.push(&record());
            r.submit().wait();
        }
    }

    /// The key ring (rotation, retirement, listing).
    pub fn keys(&self) -> &KeyRing {
        &self.tables.keys
    }

    /// Adds a policy (or finds an identical one) and returns its id, once durable. A new
    /// policy is refused while the log's disk is full.
    pub fn add_policy(&self, policy: Policy) -> Result<PolicyId, PolicyError> {
        let mut durability = None;
        // Claimed before the table is changed; given back if the policy is not new.
        let claim = self
            .claim_room(crate::wal::RECORD_CLAIM_BYTES)
            .map_err(|_| PolicyError::DiskFull)?;
        let id = self.tables.policies.add_with(policy, |id| {
            // Reserved under the table's lock, so policies reach the log in id order.
            if let Some(mut log) = self.reserve_claimed(1, claim) {
                log.push(&Record::Policy { id: id.0, policy });
                durability = Some(log.submit());
            }
        })?;
        if let Some(d) = durability {
            d.wait();
        }
        Ok(id)
    }

    /// Adds a key and makes it active (the old one keeps verifying); logged.
    pub fn rotate_key(&self) -> Result<u8, crate::keys::KeyError> {
        let id = self.tables.keys.rotate()?;
        self.log_one(None, || Record::Key {
            id,
            status: crate::keys::KeyStatus::Active as u8,
        });
        tracing::info!(target: "stile::audit", op = "rotate_key", key = id);
        Ok(id)
    }

    /// Retires key `id`: its codes read as `forged` from now on; logged.
    pub fn retire_key(&self, id: u8) -> Result<(), crate::keys::KeyError> {
        self.tables.keys.retire(id)?;
        self.log_one(None, || Record::Key {
            id,
            status: crate::keys::KeyStatus::Retired as u8,
        });
        tracing::info!(target: "stile::audit", op = "retire_key", key = id);
        Ok(())
    }

    /// The policy with id `id`.
    pub fn policy(&self, id: PolicyId) -> Option<&Policy> {
        self.tables.policies.get(id)
    }

    /// Unix seconds now, by the engine's clock.
    pub fn now_unix_s(&self) -> u64 {
        self.clock.now_unix_s()
    }

    /// Length of the rotating-code time step, seconds.
    pub fn rotation_step_s(&self) -> u32 {
        self.rotation_step_s
    }

    /// The rotating-code time step that contains `unix_s`.
    pub fn rotation_step(&self, unix_s: u64) -> u64 {
        unix_s / u64::from(self.rotation_step_s)
    }

    #[inline]
    pub(crate) fn partition(&self, id: u16) -> Option<&Partition> {
        self.tables.partition(id)
    }

    /// Tickets held over all partitions: serials handed out, less those purged.
    pub fn minted_tickets(&self) -> u64 {
        self.tables
            .partitions
            .iter()
            .map(Partition::held_serials)
            .sum()
    }

    /// Tickets held in partition `id` (`None`: not served here).
    pub fn partition_tickets(&self, id: u16) -> Option<u64> {
        self.partition(id).map(Partition::held_serials)
    }

    /// Bytes the index holds: slot chunks and chunk tables of every partition (imported codes'
    /// map entries not included).
    pub fn index_memory_bytes(&self) -> usize {
        self.tables
            .partitions
            .iter()
            .map(Partition::memory_bytes)
            .sum()
    }

    /// Reads text as a presented ticket: an imported code if one matches exactly, else the
    /// text form of a stile code.
    pub fn presented<'a>(&self, text: &'a str) -> Result<Presented<'a>, CodeError> {
        if !self.tables.imported.is_empty() && self.tables.imported.contains_key(text) {
            return Ok(Presented::Imported(text));
        }
        CodeBytes::parse(text).map(Presented::Code)
    }

    /// Finds a signed code's ticket: tag first (no index access for a bad one), then the
    /// gate's provider, then the slot. `step` is the current rotation step for gate scans, or
    /// `None` to accept a rotating code of any step (operator look-ups).
    #[inline]
    pub(crate) fn locate_code(
        &self,
        code: &CodeBytes,
        gate: &Gate,
        step: Option<u64>,
    ) -> Result<Located<'_>, Outcome> {
        let genuine = match code.format() {
            CodeFormat::Static => self.tables.keys.verify_static(code),
            CodeFormat::Rotating => self.tables.keys.verify_rotating(code, step),
        };
        if !genuine {
            return Err(Outcome::FORGED);
        }
        let h = code.header();
        if gate.provider.is_some_and(|p| p != h.provider) {
            return Err(Outcome::WRONG_PROVIDER);
        }
        let slot = self
            .partition(h.partition)
            .and_then(|p| p.slot(h.serial))
            .ok_or(Outcome::UNKNOWN)?;
        Ok(Located {
            loc: TicketLoc {
                partition: h.partition,
                serial: h.serial,
            },
            slot,
            format: h.format,
            code_provider: Some(h.provider),
        })
    }

    /// Finds an imported code's ticket.
    pub(crate) fn locate_imported(&self, text: &str) -> Result<Located<'_>, Outcome> {
        let loc = *self.tables.imported.get(text).ok_or(Outcome::UNKNOWN)?;
        let slot = self
            .partition(loc.partition)
            .and_then(|p| p.slot(loc.serial))
            .ok_or(Outcome::UNKNOWN)?;
        Ok(Located {
            loc,
            slot,
            format: CodeFormat::Static,
            code_provider: None,
        })
    }

    /// Finds any presented ticket.
    pub(crate) fn locate(
        &self,
        ticket: &Presented<'_>,
        gate: &Gate,
        step: Option<u64>,
    ) -> Result<Located<'_>, Outcome> {
        match ticket {
            Presented::Code(code) => self.locate_code(code, gate, step),
            Presented::Imported(text) => self.locate_imported(text),
        }
    }

    /// The policy of a located ticket, checked against what was presented. A minted slot
    /// always has a policy; a format or provider that disagrees with it means the code was
    /// never issued for this ticket.
    #[inline(always)]
    pub(crate) fn policy_of(&self, at: &Located<'_>, gate: &Gate) -> Result<&Policy, Outcome> {
        self.policy_of_word(
            at,
            gate,
            at.slot.word.load(std::sync::atomic::Ordering::Acquire),
        )
    }

    /// [`Self::policy_of`] given the slot's word as just loaded.
    #[inline(always)]
    fn policy_of_word(&self, at: &Located<'_>, gate: &Gate, word: u64) -> Result<&Policy, Outcome> {
        if word == 0 {
            return Err(Outcome::UNKNOWN);
        }
        let policy = self
            .tables
            .policies
            .get(at.slot.policy_id())
            .ok_or(Outcome::UNKNOWN)?;
        if policy.format != at.format || at.code_provider.is_some_and(|p| p != policy.provider) {
            return Err(Outcome::FORGED);
        }
        if gate.provider.is_some_and(|p| p != policy.provider) {
            return Err(Outcome::WRONG_PROVIDER);
        }
        Ok(policy)
    }

    /// What a change of a located ticket is decided from: its word as loaded now, the rules
    /// and the scan; or the answer, if one comes before (no policy, or a retry's remembered
    /// answer).
    #[inline(always)]
    fn prepare<'e>(
        &'e self,
        at: &Located<'e>,
        op: Op,
        gate: &Gate,
        scan_id: Option<u64>,
        now_unix_s: u64,
    ) -> Result<Prepared<'e>, Outcome> {
        let current = at.slot.word.load(std::sync::atomic::Ordering::Acquire);
        let policy = self.policy_of_word(at, gate, current)?;
        let scan = scan_id.map(|scan_id| ScanKey {
            gate: gate.id,
            scan_id,
            partition: at.loc.partition,
            serial: at.loc.serial,
        });
        if let Some(outcome) = scan.as_ref().and_then(|k| self.tables.scans.recall(k, op)) {
            return Err(outcome);
        }
        let first_scan_e = at
            .slot
            .first_scan_e
            .load(std::sync::atomic::Ordering::Relaxed);
        let ctx = Ctx {
            policy,
            gate: gate.id,
            now_unix_s,
            first_scan_unix_s: (first_scan_e != 0).then(|| from_epoch_s(first_scan_e)),
        };
        Ok(Prepared {
            current,
            ctx,
            scan,
            first_scan_e,
        })
    }

    /// What [`Self::run`] would answer when the log has no room, changing nothing: what the
    /// ticket's state refuses is refused as always (and a retry gets its remembered answer),
    /// and where a change would need a record the answer is `disk_full`.
    pub(crate) fn run_without_room(
        &self,
        at: &Located<'_>,
        op: Op,
        gate: &Gate,
        scan_id: Option<u64>,
        now_unix_s: u64,
    ) -> Outcome {
        match self.prepare(at, op, gate, scan_id, now_unix_s) {
            Err(outcome) => outcome,
            Ok(p) => match word::transition(Word::unpack(p.current), op, &p.ctx) {
                Ok(_) => Outcome::DISK_FULL,
                Err(refused) => refused,
            },
        }
    }

    /// Runs `op` on a located ticket in one CAS loop. Scans with a scan id first consult the
    /// gate's memory, so a retry gets the original answer.
    #[inline(always)]
    pub(crate) fn run(
        &self,
        at: &Located<'_>,
        op: Op,
        gate: &Gate,
        scan_id: Option<u64>,
        now_unix_s: u64,
        log: Option<&mut Reservation<'_>>,
    ) -> Applied {
        let Prepared {
            current,
            ctx,
            scan,
            first_scan_e,
        } = match self.prepare(at, op, gate, scan_id, now_unix_s) {
            Ok(p) => p,
            Err(outcome) => {
                return Applied {
                    outcome,
                    change: None,
                }
            }
        };
        let applied = word::apply_from(&at.slot.word, current, op, &ctx);
        if let Some((old, new)) = applied.change {
            if op == Op::Entry && old.entries == 0 && first_scan_e == 0 {
                // Set once: only a step from 0 entries to 1 tries, and only into an unset
                // field, so a thread that read it unset and then stalled across an admit and
                // its undo cannot move the start of a day pass.
                let _ = at.slot.first_scan_e.compare_exchange(
                    0,
                    to_epoch_s(now_unix_s).max(1),
                    std::sync::atomic::Ordering::AcqRel,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            // A transfer logs both tickets in one record of its own.
            if let (Some(log), true) = (log, op != Op::Transfer) {
                log.push(&Record::State {
                    partition: at.loc.partition,
                    serial: at.loc.serial,
                    word: new.pack(),
                    first_scan_e: at
                        .slot
                        .first_scan_e
                        .load(std::sync::atomic::Ordering::Acquire),
                    scan: scan.as_ref().map(|k| ScanTrace {
                        gate: k.gate,
                        scan_id: k.scan_id,
                        op: op as u8,
                        answer: crate::scans::pack(&applied.outcome),
                    }),
                });
            }
            if let Some(k) = &scan {
                self.tables.scans.remember(k, op, &applied.outcome);
            }
            if op == Op::Undo {
                // A retry of the admit just annulled is told so, never `admitted` again.
                self.tables.scans.annul_admit(
                    gate.id,
                    at.loc.partition,
                    at.loc.serial,
                    old.entries,
                    &applied.outcome,
                );
            }
        }
        applied
    }
}

/// What [`Engine::run`] decides a change from (see [`Engine::prepare`]).
struct Prepared<'e> {
    /// The ticket's word as loaded.
    current: u64,
    /// The rules, gate and time.
    ctx: Ctx<'e>,
    /// The gate's scan, if the change is one.
    scan: Option<ScanKey>,
    /// The ticket's first-scan time as loaded (engine-epoch seconds; 0: none).
    first_scan_e: u32,
}

/// Refuses a clock the engine's 32-bit times cannot hold: before the engine's epoch (times
/// would clamp, and a one-hour pass would be valid for years) or past its last second (a
/// pass would expire at once).
pub fn check_clock(now_unix_s: u64) -> Result<(), OpenError> {
    let (first, last) = (
        stile_protocol::ENGINE_EPOCH_UNIX_S,
        from_epoch_s(crate::word::TIME_MAX_EPOCH_S),
    );
    if now_unix_s < first || now_unix_s > last {
        return Err(OpenError::Clock(format!(
            "this machine's clock says {} (Unix {now_unix_s}), outside the times stile records \
             ({} to {}): set the clock right before starting",
            stile_protocol::outcome::format_unix_s(now_unix_s),
            stile_protocol::outcome::format_unix_s(first),
            stile_protocol::outcome::format_unix_s(last),
        )));
    }
    Ok(())
}
