//! Policies: the rules a group of tickets (an event, a fare product) shares. Immutable once
//! added; each ticket's slot holds a policy id.

use std::collections::HashMap;
use std::sync::Mutex;

use stile_protocol::outcome::UNIX_S_MAX;
use stile_protocol::CodeFormat;

use stile_protocol::limits::ENTRIES_MAX;

/// Most policies one engine holds (slots store the id in a `u32`; this bounds memory).
pub const POLICIES_MAX: usize = 1 << 20;
/// Longest undo window a policy may set: one hour.
pub use stile_protocol::limits::UNDO_WINDOW_MAX_S;
/// Undo window when a caller does not choose one.
pub const UNDO_WINDOW_DEFAULT_S: u32 = 60;

/// Index into the policy table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub u32);

/// A ticket's policy and signing key as its slot (and its mint and transfer records) keep
/// them: the policy id in the low 24 bits, the id of the key that signed the ticket's code
/// in the high 8 (0: not recorded, for tickets minted before keys were, and imported ones).
/// The key lets a node redraw the code a holder has, for the fingerprints of gates'
/// replicas and for listings, after the active key has changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotPolicy(pub u32);

/// Bits of [`SlotPolicy`] that hold the policy id.
const SLOT_POLICY_BITS: u32 = 24;
const _: () = assert!(POLICIES_MAX <= 1 << SLOT_POLICY_BITS);

impl SlotPolicy {
    /// Policy `policy`, code signed with key `key` (0: not recorded).
    pub const fn new(policy: PolicyId, key: u8) -> Self {
        SlotPolicy(policy.0 | (key as u32) << SLOT_POLICY_BITS)
    }

    /// The policy.
    #[inline]
    pub const fn policy(self) -> PolicyId {
        PolicyId(self.0 & ((1 << SLOT_POLICY_BITS) - 1))
    }

    /// The signing key (0: not recorded).
    #[inline]
    pub const fn key(self) -> u8 {
        (self.0 >> SLOT_POLICY_BITS) as u8
    }
}

/// When a ticket may be used. All bounds combine: an interval is `not_before` plus
/// `not_after`; a day pass is `duration_from_first_scan_s`, optionally inside an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Validity {
    /// No entry before this Unix second.
    pub not_before_unix_s: Option<u64>,
    /// No entry after this Unix second (the deadline).
    pub not_after_unix_s: Option<u64>,
    /// Valid for this many seconds from the first scan; re-entries do not move the start.
    pub duration_from_first_scan_s: Option<u32>,
}

impl Validity {
    /// No time limits.
    pub const ALWAYS: Validity = Validity {
        not_before_unix_s: None,
        not_after_unix_s: None,
        duration_from_first_scan_s: None,
    };

    /// The window `[from, until]` (inclusive, Unix seconds) for a ticket first scanned at
    /// `first_scan_unix_s` (or about to be, now).
    pub fn window(&self, first_scan_unix_s: u64) -> (Option<u64>, Option<u64>) {
        let by_duration = self
            .duration_from_first_scan_s
            .map(|d| first_scan_unix_s.saturating_add(u64::from(d)));
        let until = match (self.not_after_unix_s, by_duration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (self.not_before_unix_s, until)
    }
}

/// How entries are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryRule {
    /// Entries allowed; 0 means unlimited (a day pass). The ticket is `used` once spent.
    pub max_entries: u8,
    /// Entry and exit alternate: no re-entry while inside, no exit while outside.
    pub records_exits: bool,
}

impl EntryRule {
    /// One entry, then used.
    pub const SINGLE: EntryRule = EntryRule {
        max_entries: 1,
        records_exits: false,
    };

    /// Up to `n` entries.
    pub const fn multi(n: u8) -> Self {
        EntryRule {
            max_entries: n,
            records_exits: false,
        }
    }

    /// Entry/exit pairs, up to `max` entries (0: unlimited).
    pub const fn pairs(max: u8) -> Self {
        EntryRule {
            max_entries: max,
            records_exits: true,
        }
    }
}

/// The rules shared by a group of tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Operator that sells these tickets; only its gates may check them in.
    pub provider: u16,
    /// Static or rotating codes.
    pub format: CodeFormat,
    /// When the tickets may be used.
    pub validity: Validity,
    /// How entries (and exits) count.
    pub entry: EntryRule,
    /// How long after an admit the admitting gate may annul it.
    pub undo_window_s: u32,
    /// Rotating tickets only: gates may verify these tickets' codes offline, so their
    /// replicas hold each ticket's rotation key (a stolen replica then draws valid codes
    /// for them until they are re-keyed).
    pub offline_rotating: bool,
    /// Gates may not admit these tickets offline (an event that takes no double-entry
    /// risk): offline, their scans are refused with the reason.
    pub online_only: bool,
}

impl Policy {
    /// A single-entry static policy for `provider` with no time limits and the default undo
    /// window: the simplest event ticket.
    pub fn simple(provider: u16) -> Self {
        Policy {
            provider,
            format: CodeFormat::Static,
            validity: Validity::ALWAYS,
            entry: EntryRule::SINGLE,
            undo_window_s: UNDO_WINDOW_DEFAULT_S,
            offline_rotating: false,
            online_only: false,
        }
    }

    /// Checks the rules make sense.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.entry.max_entries > ENTRIES_MAX {
            return Err(PolicyError::TooManyEntries(self.entry.max_entries));
        }
        if self.undo_window_s > UNDO_WINDOW_MAX_S {
            return Err(PolicyError::UndoWindowTooLong(self.undo_window_s));
        }
        if let (Some(a), Some(b)) = (
            self.validity.not_before_unix_s,
            self.validity.not_after_unix_s,
        ) {
            if a > b {
                return Err(PolicyError::EmptyInterval {
                    not_before: a,
                    not_after: b,
                });
            }
        }
        if self.validity.duration_from_first_scan_s == Some(0) {
            return Err(PolicyError::ZeroDuration);
        }
        if self.offline_rotating && self.format != CodeFormat::Rotating {
            return Err(PolicyError::OfflineRotatingNeedsRotating);
        }
        if self.offline_rotating && self.online_only {
            return Err(PolicyError::OnlineOnlyAndOfflineRotating);
        }
        for t in [
            self.validity.not_before_unix_s,
            self.validity.not_after_unix_s,
        ]
        .into_iter()
        .flatten()
        {
            if t > UNIX_S_MAX {
                return Err(PolicyError::TimeTooLate(t));
            }
        }
        Ok(())
    }
}

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `max_entries` above what a state word counts.
    #[error("at most {ENTRIES_MAX} entries per ticket can be counted, asked for {0} (use 0 for unlimited)")]
    TooManyEntries(u8),
    /// Undo window above [`UNDO_WINDOW_MAX_S`].
    #[error("undo window of {0} s is longer than the maximum of {UNDO_WINDOW_MAX_S} s")]
    UndoWindowTooLong(u32),
    /// `not_before` after `not_after`.
    #[error("validity interval is empty: starts at {not_before}, ends at {not_after}")]
    EmptyInterval {
        /// Start, Unix seconds.
        not_before: u64,
        /// End, Unix seconds.
        not_after: u64,
    },
    /// A duration of zero seconds.
    #[error("a validity duration from first scan must be at least one second")]
    ZeroDuration,
    /// A validity time past 9999-12-31T23:59:59Z (leave it out for no limit).
    #[error(
        "validity time {0} (Unix seconds) is after 9999-12-31T23:59:59Z; leave it out for no limit"
    )]
    TimeTooLate(u64),
    /// The table is full.
    #[error("this node holds the maximum of {POLICIES_MAX} policies")]
    TableFull,
    /// Offline verification of rotating codes asked for static codes.
    #[error("offline verification of rotating codes needs rotating codes (static codes are always verified offline by fingerprint)")]
    OfflineRotatingNeedsRotating,
    /// Online only, and yet verified offline.
    #[error("tickets checked online only cannot also have their rotating codes verified offline")]
    OnlineOnlyAndOfflineRotating,
    /// No policy has this id.
    #[error("no policy with id {0}")]
    NoSuchPolicy(u32),
    /// The policy is new and the log's disk is full (see [`crate::wal::LogFull`]).
    #[error("{}", crate::error::DISK_FULL_MESSAGE)]
    DiskFull,
}

/// Append-only table of policies: lock-free reads by id; adds (rare, operator path) take a
/// mutex and reuse the id of an identical policy.
#[derive(Debug, Default)]
pub struct PolicyTable {
    /// Policies by id.
    policies: boxcar::Vec<Policy>,
    /// Id of every distinct policy, so identical events share one entry.
    ids: Mutex<HashMap<Policy, PolicyId>>,
}

impl PolicyTable {
    /// Adds `policy` (or finds its twin) and returns its id.
    pub fn add(&self, policy: Policy) -> Result<PolicyId, PolicyError> {
        self.add_with(policy, |_| {})
    }

    /// Adds `policy` (or finds its twin) and returns its id; `on_new` runs, under the
    /// table's lock, only when the policy is new (the engine logs it there, in id order).
    pub fn add_with(
        &self,
        policy: Policy,
        on_new: impl FnOnce(PolicyId),
    ) -> Result<PolicyId, PolicyError> {
        policy.validate()?;
        let mut ids = self.ids.lock().expect("policy table mutex poisoned");
        if let Some(id) = ids.get(&policy) {
            return Ok(*id);
        }
        if self.policies.count() >= POLICIES_MAX {
            return Err(PolicyError::TableFull);
        }
        let id = PolicyId(self.policies.push(policy) as u32);
        ids.insert(policy, id);
        on_new(id);
        Ok(id)
    }

    /// Puts back policy `id` while recovering: the next id, or one already present and equal.
    pub fn restore(&self, id: PolicyId, policy: Policy) -> Result<(), String> {
        let mut ids = self.ids.lock().expect("policy table mutex poisoned");
        let len = self.policies.count();
        match (id.0 as usize).cmp(&len) {
            std::cmp::Ordering::Equal => {
                self.policies.push(policy);
                ids.entry(policy).or_insert(id);
                Ok(())
            }
            std::cmp::Ordering::Less if self.policies.get(id.0 as usize) == Some(&policy) => Ok(()),
            std::cmp::Ordering::Less => Err(format!(
                "policy {} differs from the one already known",
                id.0
            )),
            std::cmp::Ordering::Greater => {
                Err(format!("policy {} logged before policy {len}", id.0))
            }
        }
    }

    /// The policy with this id.
    #[inline]
    pub fn get(&self, id: PolicyId) -> Option<&Policy> {
        self.policies.get(id.0 as usize)
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.policies.count()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_policies_share_an_id() {
        let t = PolicyTable::default();
        let a = t.add(Policy::simple(1)).unwrap();
        let b = t.add(Policy::simple(2)).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.add(Policy::simple(1)).unwrap(), a);
        assert_eq!(t.get(b).unwrap().provider, 2);
        assert_eq!(t.len(), 2);
        assert!(t.get(PolicyId(7)).is_none());
    }

    #[test]
    fn refuses_nonsense_with_reasons() {
        let t = PolicyTable::default();
        let mut p = Policy::simple(1);
        p.entry.max_entries = 64;
        assert!(t
            .add(p)
            .unwrap_err()
            .to_string()
            .contains("at most 63 entries"));
        let mut p = Policy::simple(1);
        p.validity.not_before_unix_s = Some(10);
        p.validity.not_after_unix_s = Some(5);
        assert!(matches!(t.add(p), Err(PolicyError::EmptyInterval { .. })));
        let mut p = Policy::simple(1);
        p.undo_window_s = 7200;
        assert!(matches!(
            t.add(p),
            Err(PolicyError::UndoWindowTooLong(7200))
        ));
        // Times no one can write down (past 9999-12-31T23:59:59Z), at either end.
        for late in [UNIX_S_MAX + 1, u64::MAX] {
            let mut p = Policy::simple(1);
            p.validity.not_before_unix_s = Some(late);
            assert_eq!(t.add(p), Err(PolicyError::TimeTooLate(late)));
            let mut p = Policy::simple(1);
            p.validity.not_after_unix_s = Some(late);
            assert_eq!(t.add(p), Err(PolicyError::TimeTooLate(late)));
        }
        let mut p = Policy::simple(1);
        p.validity.not_after_unix_s = Some(UNIX_S_MAX);
        assert!(t.add(p).is_ok(), "the last second is a time like any");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn day_pass_window_is_capped_by_deadline() {
        let v = Validity {
            not_before_unix_s: None,
            not_after_unix_s: Some(1_000),
            duration_from_first_scan_s: Some(500),
        };
        assert_eq!(v.window(100), (None, Some(600)));
        assert_eq!(v.window(900), (None, Some(1_000)));
    }
}
