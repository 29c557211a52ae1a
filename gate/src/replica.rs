//! The gate's replica of its provider's tickets: what it decides from when the node does not
//! answer.
//!
//! Per ticket an [`Entry`] of 32 bytes: the ticket's place (partition, serial), a
//! [fingerprint] of its code, its policy (an index into a small table) and its last known
//! state. The replica never holds a code or a ring key (only the per-ticket rotation keys of
//! tickets minted to be verified offline, which draw those tickets' codes and nothing
//! else; see `docs/guide/gate.md` on theft): a fingerprint is 64 bits of SHA-256 over
//! the code, and a code's 80-bit tag is an HMAC under a key only the node has, so a stolen
//! replica names which serials exist but cannot be turned into a code (finding a tag whose
//! code hashes to a fingerprint takes about 2^64 tries per ticket, and leaves some 2^16
//! candidates the thief cannot tell apart offline).
//!
//! Entries are kept sorted by (partition, serial) in one vector: a lookup is a binary
//! search, and memory is the entries and nothing else.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use stile_protocol::frame::{ReplicaItem, ReplicaState, TicketStateName};
use stile_protocol::CodeBytes;

/// Unix second of the replica's time base (2020-01-01): times are kept as `u32` seconds
/// from it (0: none), good until 2156.
pub const EPOCH_UNIX_S: u64 = 1_577_836_800;
/// Policies a replica holds at most (an entry names one by a `u16`).
pub const POLICIES_MAX: usize = u16::MAX as usize;

pub use stile_protocol::fingerprint;

/// A ticket's rules, as the node states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Policy {
    /// No entry before this Unix second.
    pub valid_from_unix_s: Option<u64>,
    /// No entry after this Unix second.
    pub valid_until_unix_s: Option<u64>,
    /// Valid this long from the first scan, seconds.
    pub valid_for_s: Option<u32>,
    /// Entries allowed (0: unlimited).
    pub max_entries: u8,
    /// Entry and exit alternate.
    pub exits: bool,
    /// Never decided offline (the operator's choice for these tickets' event).
    pub online_only: bool,
}

/// Flag: the holder is inside (the last event was an entry).
pub const INSIDE: u8 = 1;
/// Flag: revoked, or transferred away.
pub const REVOKED: u8 = 2;

/// One ticket in the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// [`fingerprint`] of its code.
    pub fingerprint: u64,
    /// Serial inside its partition.
    pub serial: u32,
    /// Partition.
    pub partition: u16,
    /// Index into the replica's policies.
    pub policy: u16,
    /// Gate of the last event (0: none, or an operator).
    pub last_gate: u16,
    /// Entries counted.
    pub entries: u8,
    /// [`INSIDE`], [`REVOKED`].
    pub flags: u8,
    /// First scan, seconds from [`EPOCH_UNIX_S`] (0: never scanned).
    pub first_scan: u32,
    /// Last event, seconds from [`EPOCH_UNIX_S`] (0: none).
    pub last_at: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() <= 32, "an entry fits 32 bytes");

/// Bytes of an entry on disk.
const ENTRY_DISK_LEN: usize = 8 + 4 + 2 + 2 + 2 + 1 + 1 + 4 + 4;
/// Bytes of a rotation key on disk: partition, serial, key.
const ROTATING_KEY_DISK_LEN: usize = 2 + 4 + 32;
/// Bytes of a policy on disk.
const POLICY_DISK_LEN: usize = 4 + 8 + 8 + 4 + 1 + 1;

impl Entry {
    /// Its place, the replica's sort key.
    pub fn key(&self) -> (u16, u32) {
        (self.partition, self.serial)
    }

    /// Whether the holder is inside.
    pub fn inside(&self) -> bool {
        self.flags & INSIDE != 0
    }

    /// Whether it was revoked or transferred away.
    pub fn revoked(&self) -> bool {
        self.flags & REVOKED != 0
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.serial.to_le_bytes());
        out.extend_from_slice(&self.partition.to_le_bytes());
        out.extend_from_slice(&self.policy.to_le_bytes());
        out.extend_from_slice(&self.last_gate.to_le_bytes());
        out.push(self.entries);
        out.push(self.flags);
        out.extend_from_slice(&self.first_scan.to_le_bytes());
        out.extend_from_slice(&self.last_at.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Entry {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Entry {
            fingerprint: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            serial: u32_at(8),
            partition: u16_at(12),
            policy: u16_at(14),
            last_gate: u16_at(16),
            entries: b[18],
            flags: b[19],
            first_scan: u32_at(20),
            last_at: u32_at(24),
        }
    }
}

/// A Unix second as replica time (0 stays 0: none; before the base: 1).
pub fn to_replica_s(unix_s: u64) -> u32 {
    if unix_s == 0 {
        return 0;
    }
    unix_s
        .saturating_sub(EPOCH_UNIX_S)
        .clamp(1, u64::from(u32::MAX)) as u32
}

/// Replica time as a Unix second (`None` for 0).
pub fn from_replica_s(s: u32) -> Option<u64> {
    (s != 0).then(|| EPOCH_UNIX_S + u64::from(s))
}

/// Sets an entry's state from the node's.
fn set_state(e: &mut Entry, s: &ReplicaState) {
    e.entries = s.entries;
    e.last_gate = s.gate;
    e.last_at = to_replica_s(s.at_unix_s);
    e.first_scan = to_replica_s(s.first_scan_unix_s);
    e.flags = 0;
    if s.inside {
        e.flags |= INSIDE;
    }
    if s.state == TicketStateName::Revoked {
        e.flags |= REVOKED;
    }
}

/// What a scanned code is to the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// No ticket at its place: unknown to the replica (or another provider's).
    Unknown,
    /// A ticket is there, but the code's fingerprint is not its: a forged (or mistyped)
    /// code.
    Forged,
    /// A rotating code of a ticket whose codes are checked online only.
    OnlineOnly,
    /// The ticket, at its index.
    Found(usize),
}

/// Why a replica file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The file is not a replica, or is damaged.
    #[error("not a replica, or damaged: {0}")]
    Bad(String),
}

/// The replica: a provider's tickets, sorted by place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replica {
    /// The provider whose tickets these are.
    pub provider: u16,
    /// The node's log position of the newest change applied.
    pub seq: u64,
    /// When the replica was last known to be current (the node's clock), Unix seconds.
    pub synced_unix_s: u64,
    /// The gate's journal records this replica reflects (its own decisions are applied as
    /// they are made): a restart applies the records from here on again, uploaded or not.
    /// `None` for a replica saved before this was kept.
    pub journal_pos: Option<u64>,
    /// The node's clock minus the gate's, seconds, as last learned online: a restarted gate
    /// offline still judges validity by the node's time.
    pub clock_offset_s: i64,
    policies: Vec<Policy>,
    /// The node's id of each policy (parallel to `policies`).
    node_policies: Vec<u32>,
    /// Keys retired on the node: codes they signed are forged.
    retired_keys: Vec<u8>,
    /// A load is under way: tickets are appended unsorted.
    loading: bool,
    /// Rotation keys of rotating tickets gates may verify offline, by place: each draws
    /// that ticket's codes.
    rotating_keys: HashMap<(u16, u32), [u8; 32]>,
    /// The node's rotation time step, seconds (0: not known yet).
    pub step_s: u32,
    entries: Vec<Entry>,
}

/// File magic.
const MAGIC: &[u8; 8] = b"STILEREP";
/// Format version (3 added the journal position and the clock offset).
const VERSION: u32 = 3;

impl Replica {
    /// An empty replica of `provider`'s tickets.
    pub fn new(provider: u16) -> Replica {
        Replica {
            provider,
            ..Replica::default()
        }
    }

    /// Tickets held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no ticket.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of memory its tables take (entries, policies and rotation keys, capacity
    /// included).
    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.policies.capacity() * std::mem::size_of::<Policy>()
            + self.rotating_keys.capacity() * (6 + 32 + 8)
    }

    /// The policy at `index`.
    pub fn policy(&self, index: u16) -> Option<&Policy> {
        self.policies.get(usize::from(index))
    }

    /// The index of `policy`, added if new; `None` when the table is full.
    pub fn policy_index(&mut self, policy: Policy) -> Option<u16> {
        self.node_policy(u32::MAX, policy)
    }

    /// The index of the node's policy `node_id`, set to `policy` (added if new); `None`
    /// when the table is full.
    pub fn node_policy(&mut self, node_id: u32, policy: Policy) -> Option<u16> {
        if let Some(i) = self
            .node_policies
            .iter()
            .zip(&self.policies)
            .position(|(&id, p)| id == node_id && (id != u32::MAX || *p == policy))
        {
            self.policies[i] = policy;
            return Some(i as u16);
        }
        if self.policies.len() >= POLICIES_MAX {
            return None;
        }
        self.policies.push(policy);
        self.node_policies.push(node_id);
        Some((self.policies.len() - 1) as u16)
    }

    /// The index of the node's policy `node_id`, if the replica has it.
    pub fn index_of_node_policy(&self, node_id: u32) -> Option<u16> {
        self.node_policies
            .iter()
            .position(|&id| id == node_id)
            .map(|i| i as u16)
    }

    /// Notes that the node retired key `id`.
    pub fn retire_key(&mut self, id: u8) {
        if !self.retired_keys.contains(&id) {
            self.retired_keys.push(id);
        }
    }

    /// The entry at `index` (from [`Lookup::Found`]).
    pub fn entry(&self, index: usize) -> &Entry {
        &self.entries[index]
    }

    /// The entry at `index`, to change.
    pub fn entry_mut(&mut self, index: usize) -> &mut Entry {
        &mut self.entries[index]
    }

    /// The ticket at a place.
    pub fn find(&self, partition: u16, serial: u32) -> Option<usize> {
        self.entries
            .binary_search_by_key(&(partition, serial), Entry::key)
            .ok()
    }

    /// What a rotating `code` is to the replica at `now_unix_s`: found when the replica
    /// holds its ticket's key and the code is that ticket's for this time step, the one
    /// before or the one after (as the node accepts).
    pub fn lookup_rotating(&self, code: &CodeBytes, now_unix_s: u64) -> Lookup {
        let h = code.header();
        if h.provider != self.provider {
            return Lookup::Unknown;
        }
        if self.retired_keys.contains(&h.key_id) {
            return Lookup::Forged;
        }
        let Some(i) = self.find(h.partition, h.serial) else {
            return Lookup::Unknown;
        };
        let (Some(key), Some(low)) = (
            self.rotating_keys.get(&(h.partition, h.serial)),
            code.step_low(),
        ) else {
            return Lookup::OnlineOnly;
        };
        if self.step_s == 0 {
            return Lookup::OnlineOnly;
        }
        let now = now_unix_s / u64::from(self.step_s);
        let genuine = [now.wrapping_sub(1), now, now.wrapping_add(1)]
            .into_iter()
            .filter(|s| *s as u8 == low)
            .any(|s| stile_protocol::rotating::draw(&h, key, s).tag() == code.tag());
        match genuine {
            true => Lookup::Found(i),
            false => Lookup::Forged,
        }
    }

    /// What `code` is to the replica at `now_unix_s`, whatever its format.
    pub fn lookup_at(&self, code: &CodeBytes, now_unix_s: u64) -> Lookup {
        match code.format() {
            stile_protocol::CodeFormat::Rotating => self.lookup_rotating(code, now_unix_s),
            stile_protocol::CodeFormat::Static => self.lookup(code),
        }
    }

    /// What a static `code` is to the replica.
    pub fn lookup(&self, code: &CodeBytes) -> Lookup {
        let h = code.header();
        if h.provider != self.provider {
            return Lookup::Unknown;
        }
        if self.retired_keys.contains(&h.key_id) {
            return Lookup::Forged;
        }
        match self.find(h.partition, h.serial) {
            None => Lookup::Unknown,
            Some(i) if self.entries[i].fingerprint == fingerprint(code) => Lookup::Found(i),
            Some(_) => Lookup::Forged,
        }
    }

    /// Puts `entry` in its place, replacing what was there.
    pub fn upsert(&mut self, entry: Entry) {
        match self.entries.binary_search_by_key(&entry.key(), Entry::key) {
            Ok(i) => self.entries[i] = entry,
            Err(i) => self.entries.insert(i, entry),
        }
    }

    /// Appends a page of entries as a load goes (any order); [`Replica::finish_load`] sorts
    /// them once at the end.
    pub fn extend_unsorted(&mut self, entries: impl IntoIterator<Item = Entry>) {
        self.entries.extend(entries);
    }

    /// Sorts what [`Replica::extend_unsorted`] appended, the later of two entries at one
    /// place winning.
    pub fn finish_load(&mut self) {
        self.loading = false;
        // Stable: of equal keys, the one appended last ends last, and is kept.
        self.entries.sort_by_key(Entry::key);
        let mut kept: Vec<Entry> = Vec::with_capacity(self.entries.len());
        for e in self.entries.drain(..) {
            match kept.last_mut() {
                Some(last) if last.key() == e.key() => *last = e,
                _ => kept.push(e),
            }
        }
        kept.shrink_to_fit();
        self.entries = kept;
    }

    /// Applies one item the node sent (a page's, or a change's). A ticket naming a policy
    /// the replica does not hold is an error: the node sends each policy first.
    pub fn apply(&mut self, item: &ReplicaItem) -> Result<(), ReplicaError> {
        match item {
            ReplicaItem::Policy(p) => {
                let policy = Policy {
                    valid_from_unix_s: (p.valid_from_unix_s != 0).then_some(p.valid_from_unix_s),
                    valid_until_unix_s: (p.valid_until_unix_s != 0).then_some(p.valid_until_unix_s),
                    valid_for_s: (p.valid_for_s != 0).then_some(p.valid_for_s),
                    max_entries: p.max_entries,
                    exits: p.exits,
                    online_only: p.online_only,
                };
                self.node_policy(p.id, policy).ok_or_else(|| {
                    ReplicaError::Bad("more policies than a replica holds".into())
                })?;
            }
            ReplicaItem::KeyRetired(id) => self.retire_key(*id),
            ReplicaItem::Ticket {
                fingerprint,
                policy,
                state,
            } => {
                let policy = self.index_of_node_policy(*policy).ok_or_else(|| {
                    ReplicaError::Bad(format!("a ticket names policy {policy}, not sent first"))
                })?;
                let mut e = Entry {
                    fingerprint: *fingerprint,
                    serial: state.serial,
                    partition: state.partition,
                    policy,
                    last_gate: 0,
                    entries: 0,
                    flags: 0,
                    first_scan: 0,
                    last_at: 0,
                };
                set_state(&mut e, state);
                if self.loading {
                    self.entries.push(e);
                } else {
                    self.upsert(e);
                }
            }
            ReplicaItem::State(state) => {
                if let Some(i) = self.find(state.partition, state.serial) {
                    set_state(&mut self.entries[i], state);
                }
            }
            ReplicaItem::RotatingKey {
                partition,
                serial,
                key,
            } => {
                self.rotating_keys.insert((*partition, *serial), *key);
            }
            ReplicaItem::Rotation { step_s } => self.step_s = *step_s,
        }
        Ok(())
    }

    /// Starts a load: tickets are appended as pages come, and sorted by
    /// [`Replica::finish_load`].
    pub fn start_load(&mut self) {
        self.loading = true;
    }

    /// Writes the replica to `path` whole: a temporary file beside it, synced, renamed over
    /// it, the directory synced.
    pub fn save(&self, path: &Path) -> Result<(), ReplicaError> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * ENTRY_DISK_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.provider.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.synced_unix_s.to_le_bytes());
        out.extend_from_slice(&self.journal_pos.map_or(u64::MAX, |p| p).to_le_bytes());
        out.extend_from_slice(&self.clock_offset_s.to_le_bytes());
        out.extend_from_slice(&(self.policies.len() as u32).to_le_bytes());
        for (p, node_id) in self.policies.iter().zip(&self.node_policies) {
            out.extend_from_slice(&node_id.to_le_bytes());
            out.extend_from_slice(&p.valid_from_unix_s.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&p.valid_until_unix_s.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&p.valid_for_s.unwrap_or(0).to_le_bytes());
            out.push(p.max_entries);
            out.push(u8::from(p.exits) | u8::from(p.online_only) << 1);
        }
        out.push(self.retired_keys.len() as u8);
        out.extend_from_slice(&self.retired_keys);
        out.extend_from_slice(&self.step_s.to_le_bytes());
        out.extend_from_slice(&(self.rotating_keys.len() as u64).to_le_bytes());
        let mut keys: Vec<_> = self.rotating_keys.iter().collect();
        keys.sort_unstable_by_key(|(place, _)| **place);
        for ((partition, serial), key) in keys {
            out.extend_from_slice(&partition.to_le_bytes());
            out.extend_from_slice(&serial.to_le_bytes());
            out.extend_from_slice(key);
        }
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            e.encode(&mut out);
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        let tmp = path.with_extension("new");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&out)?;
            f.sync_data()?;
        }
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Reads a replica [`Replica::save`] wrote; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Replica>, ReplicaError> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let bad = |m: &str| ReplicaError::Bad(format!("{}: {m}", path.display()));
        if bytes.len() < 8 + 4 + 2 + 8 + 8 + 4 + 1 + 8 + 8 || &bytes[..8] != MAGIC {
            return Err(bad("no replica header"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != sum {
            return Err(bad("checksum mismatch"));
        }
        let mut r = Reader { b: body, at: 8 };
        let version = r.u32();
        if !(2..=VERSION).contains(&version) {
            return Err(bad("unknown version"));
        }
        let mut replica = Replica::new(r.u16());
        replica.seq = r.u64();
        replica.synced_unix_s = r.u64();
        if version >= 3 {
            if r.left() < 16 {
                return Err(bad("header cut short"));
            }
            replica.journal_pos = Some(r.u64()).filter(|&p| p != u64::MAX);
            replica.clock_offset_s = r.u64() as i64;
        }
        let policies = r.u32() as usize;
        if policies > POLICIES_MAX || r.left() < policies * POLICY_DISK_LEN + 9 {
            return Err(bad("policy table cut short"));
        }
        for _ in 0..policies {
            replica.node_policies.push(r.u32());
            let from = r.u64();
            let until = r.u64();
            let for_s = r.u32();
            let max_entries = r.u8();
            let flags = r.u8();
            let (exits, online_only) = (flags & 1 != 0, flags & 2 != 0);
            replica.policies.push(Policy {
                valid_from_unix_s: (from != 0).then_some(from),
                valid_until_unix_s: (until != 0).then_some(until),
                valid_for_s: (for_s != 0).then_some(for_s),
                max_entries,
                exits,
                online_only,
            });
        }
        let retired = usize::from(r.u8());
        if r.left() < retired + 8 {
            return Err(bad("retired keys cut short"));
        }
        for _ in 0..retired {
            let id = r.u8();
            replica.retired_keys.push(id);
        }
        if r.left() < 4 + 8 + 8 {
            return Err(bad("rotation keys cut short"));
        }
        replica.step_s = r.u32();
        let keys = r.u64() as usize;
        if r.left() < keys.saturating_mul(ROTATING_KEY_DISK_LEN).saturating_add(8) {
            return Err(bad("rotation keys cut short"));
        }
        for _ in 0..keys {
            let place = (r.u16(), r.u32());
            let key: [u8; 32] = r.take();
            replica.rotating_keys.insert(place, key);
        }
        let n = r.u64() as usize;
        if r.left() != n.saturating_mul(ENTRY_DISK_LEN) {
            return Err(bad("entry table of the wrong length"));
        }
        replica.entries = body[r.at..]
            .chunks_exact(ENTRY_DISK_LEN)
            .map(Entry::decode)
            .collect();
        let sorted = replica.entries.windows(2).all(|w| w[0].key() < w[1].key());
        let policies_ok = replica
            .entries
            .iter()
            .all(|e| usize::from(e.policy) < replica.policies.len());
        if !sorted || !policies_ok {
            return Err(bad("entries out of order or naming no policy"));
        }
        Ok(Some(replica))
    }
}

/// Reads little-endian fields in order (lengths checked before).
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let v = self.b[self.at..self.at + N].try_into().expect("N bytes");
        self.at += N;
        v
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn left(&self) -> usize {
        self.b.len() - self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn code(provider: u16, partition: u16, serial: u32, tag: u8) -> CodeBytes {
        let mut b = [0u8; 20];
        b[0] = 1;
        b[2..4].copy_from_slice(&provider.to_be_bytes());
        b[4..6].copy_from_slice(&partition.to_be_bytes());
        b[6..10].copy_from_slice(&serial.to_be_bytes());
        b[10..].fill(tag);
        CodeBytes::from_slice(&b).unwrap()
    }

    fn entry_of(code: &CodeBytes, policy: u16) -> Entry {
        let h = code.header();
        Entry {
            fingerprint: fingerprint(code),
            serial: h.serial,
            partition: h.partition,
            policy,
            last_gate: 0,
            entries: 0,
            flags: 0,
            first_scan: 0,
            last_at: 0,
        }
    }

    #[test]
    fn lookups_tell_unknown_forged_and_found_apart() {
        let mut r = Replica::new(7);
        let p = r.policy_index(Policy::default()).unwrap();
        let real = code(7, 0, 42, 0xAB);
        r.upsert(entry_of(&real, p));
        assert_eq!(r.lookup(&real), Lookup::Found(0));
        // Same place, another tag: a forged copy.
        assert_eq!(r.lookup(&code(7, 0, 42, 0xAC)), Lookup::Forged);
        assert_eq!(r.lookup(&code(7, 0, 43, 0xAB)), Lookup::Unknown);
        assert_eq!(r.lookup(&code(8, 0, 42, 0xAB)), Lookup::Unknown);
    }

    #[test]
    fn a_load_in_any_order_ends_sorted_with_the_last_word_kept() {
        let mut r = Replica::new(1);
        let p = r.policy_index(Policy::default()).unwrap();
        let mut later = entry_of(&code(1, 0, 5, 1), p);
        later.entries = 1;
        r.extend_unsorted([
            entry_of(&code(1, 1, 1, 1), p),
            entry_of(&code(1, 0, 5, 1), p),
            entry_of(&code(1, 0, 2, 1), p),
            later,
        ]);
        r.finish_load();
        let keys: Vec<_> = (0..r.len()).map(|i| r.entry(i).key()).collect();
        assert_eq!(keys, vec![(0, 2), (0, 5), (1, 1)]);
        assert_eq!(r.entry(1).entries, 1);
    }

    #[test]
    fn a_saved_replica_loads_back_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica");
        assert!(Replica::load(&path).unwrap().is_none());
        let mut r = Replica::new(3);
        r.seq = 99;
        r.synced_unix_s = 1_800_000_000;
        r.journal_pos = Some(17);
        r.clock_offset_s = -3_000;
        let p = r
            .policy_index(Policy {
                valid_from_unix_s: Some(1_800_000_000),
                valid_until_unix_s: None,
                valid_for_s: Some(86_400),
                max_entries: 0,
                exits: true,
                online_only: true,
            })
            .unwrap();
        for s in 0..1000 {
            let mut e = entry_of(&code(3, 2, s, 9), p);
            e.entries = (s % 3) as u8;
            e.flags = (s % 4) as u8;
            e.first_scan = s;
            e.last_at = s * 2;
            e.last_gate = (s % 7) as u16;
            r.upsert(e);
        }
        r.save(&path).unwrap();
        assert_eq!(Replica::load(&path).unwrap().unwrap(), r);
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(Replica::load(&path), Err(ReplicaError::Bad(_))));
        fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(Replica::load(&path), Err(ReplicaError::Bad(_))));
    }

    #[test]
    fn times_round_trip_and_none_stays_none() {
        assert_eq!(to_replica_s(0), 0);
        assert_eq!(from_replica_s(0), None);
        let t = 1_800_000_123;
        assert_eq!(from_replica_s(to_replica_s(t)), Some(t));
        assert_eq!(to_replica_s(5), 1, "before the base: the earliest time");
    }
}
