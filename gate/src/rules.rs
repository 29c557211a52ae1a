//! Offline decisions: the node's entry and exit rules (`engine/src/word.rs`), restated for
//! one replica entry. A gate deciding offline applies its own decisions to its replica, so
//! a second scan at the same gate is refused as the node would refuse it; what other gates
//! did meanwhile it cannot know (that is what reconciliation reports as conflicts).

use stile_protocol::OutcomeKind;

use crate::replica::{from_replica_s, to_replica_s, Entry, Policy, INSIDE, REVOKED};

/// Most entries a ticket counts (the node's state word saturates there).
const ENTRIES_MAX: u8 = stile_protocol::limits::ENTRIES_MAX;

/// What a scan asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Entry.
    Entry,
    /// Exit.
    Exit,
}

/// An offline answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What the gate answers.
    pub kind: OutcomeKind,
    /// The gate the answer names: the earlier gate for `already_used`, this gate for
    /// `admitted` and `exited` (0: unknown).
    pub gate: u16,
    /// Unix seconds of the event named: the earlier use, the start or end of validity
    /// (0: unknown).
    pub at_unix_s: u64,
    /// Entries counted after the answer.
    pub entries: u8,
}

impl Decision {
    fn bare(kind: OutcomeKind, entries: u8) -> Decision {
        Decision {
            kind,
            gate: 0,
            at_unix_s: 0,
            entries,
        }
    }
}

/// Decides `op` at `gate` at `now_unix_s` for the ticket `e` under `policy`: the answer, and
/// the entry as it is after it (unchanged unless admitted or exited).
pub fn decide(e: &Entry, policy: &Policy, op: Op, gate: u16, now_unix_s: u64) -> (Decision, Entry) {
    let last = Decision {
        kind: OutcomeKind::AlreadyUsed,
        gate: e.last_gate,
        at_unix_s: from_replica_s(e.last_at).unwrap_or(0),
        entries: e.entries,
    };
    if e.flags & REVOKED != 0 {
        let d = Decision {
            kind: OutcomeKind::Revoked,
            ..last
        };
        return (d, *e);
    }
    let touched = |flags: u8, entries: u8| Entry {
        flags,
        entries,
        last_gate: gate,
        last_at: to_replica_s(now_unix_s),
        ..*e
    };
    match op {
        Op::Exit if policy.exits && e.inside() => {
            let n = touched(e.flags & !INSIDE, e.entries);
            (
                Decision {
                    kind: OutcomeKind::Exited,
                    gate,
                    at_unix_s: now_unix_s,
                    entries: n.entries,
                },
                n,
            )
        }
        Op::Exit => (Decision::bare(OutcomeKind::NotInside, e.entries), *e),
        Op::Entry => {
            let spent = policy.max_entries != 0 && e.entries >= policy.max_entries;
            if spent || (policy.exits && e.inside()) {
                return (last, *e);
            }
            let first = from_replica_s(e.first_scan).unwrap_or(now_unix_s);
            let by_duration = policy
                .valid_for_s
                .map(|d| first.saturating_add(u64::from(d)));
            let until = match (policy.valid_until_unix_s, by_duration) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(from) = policy.valid_from_unix_s.filter(|&f| now_unix_s < f) {
                let d = Decision {
                    at_unix_s: from,
                    ..Decision::bare(OutcomeKind::NotYetValid, e.entries)
                };
                return (d, *e);
            }
            if let Some(until) = until.filter(|&u| now_unix_s > u) {
                let d = Decision {
                    at_unix_s: until,
                    ..Decision::bare(OutcomeKind::Expired, e.entries)
                };
                return (d, *e);
            }
            let mut n = touched(
                e.flags | INSIDE,
                e.entries.saturating_add(1).min(ENTRIES_MAX),
            );
            if n.first_scan == 0 {
                n.first_scan = to_replica_s(now_unix_s);
            }
            (
                Decision {
                    kind: OutcomeKind::Admitted,
                    gate,
                    at_unix_s: now_unix_s,
                    entries: n.entries,
                },
                n,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn fresh() -> Entry {
        Entry {
            fingerprint: 1,
            serial: 1,
            partition: 0,
            policy: 0,
            last_gate: 0,
            entries: 0,
            flags: 0,
            first_scan: 0,
            last_at: 0,
        }
    }

    fn single() -> Policy {
        Policy {
            max_entries: 1,
            ..Policy::default()
        }
    }

    #[test]
    fn a_single_ticket_admits_once_and_then_names_who_used_it() {
        let (d, e) = decide(&fresh(), &single(), Op::Entry, 4, NOW);
        assert_eq!((d.kind, d.gate, d.entries), (OutcomeKind::Admitted, 4, 1));
        let (again, same) = decide(&e, &single(), Op::Entry, 5, NOW + 10);
        assert_eq!(
            (again.kind, again.gate, again.at_unix_s),
            (OutcomeKind::AlreadyUsed, 4, NOW)
        );
        assert_eq!(same, e, "a refusal changes nothing");
    }

    #[test]
    fn entry_and_exit_alternate() {
        let p = Policy {
            exits: true,
            ..Policy::default()
        };
        let (d, e) = decide(&fresh(), &p, Op::Exit, 1, NOW);
        assert_eq!(d.kind, OutcomeKind::NotInside);
        let (_, e) = decide(&e, &p, Op::Entry, 1, NOW);
        let (d, _) = decide(&e, &p, Op::Entry, 2, NOW);
        assert_eq!(d.kind, OutcomeKind::AlreadyUsed, "no re-entry while inside");
        let (d, e) = decide(&e, &p, Op::Exit, 2, NOW + 5);
        assert_eq!((d.kind, d.gate), (OutcomeKind::Exited, 2));
        let (d, _) = decide(&e, &p, Op::Entry, 3, NOW + 9);
        assert_eq!((d.kind, d.entries), (OutcomeKind::Admitted, 2));
    }

    #[test]
    fn validity_counts_from_the_window_and_the_first_scan() {
        let p = Policy {
            valid_from_unix_s: Some(NOW),
            valid_until_unix_s: Some(NOW + 1000),
            valid_for_s: Some(100),
            max_entries: 0,
            exits: true,
            online_only: false,
        };
        let (d, _) = decide(&fresh(), &p, Op::Entry, 1, NOW - 1);
        assert_eq!((d.kind, d.at_unix_s), (OutcomeKind::NotYetValid, NOW));
        let (d, e) = decide(&fresh(), &p, Op::Entry, 1, NOW + 10);
        assert_eq!(d.kind, OutcomeKind::Admitted);
        let (_, e) = decide(&e, &p, Op::Exit, 1, NOW + 20);
        let (d, _) = decide(&e, &p, Op::Entry, 1, NOW + 111);
        assert_eq!(
            (d.kind, d.at_unix_s),
            (OutcomeKind::Expired, NOW + 110),
            "a hundred seconds from the first scan"
        );
        let (d, _) = decide(&fresh(), &p, Op::Entry, 1, NOW + 1001);
        assert_eq!((d.kind, d.at_unix_s), (OutcomeKind::Expired, NOW + 1000));
    }

    #[test]
    fn a_revoked_ticket_is_refused_whatever_asks() {
        let e = Entry {
            flags: REVOKED,
            ..fresh()
        };
        for op in [Op::Entry, Op::Exit] {
            assert_eq!(
                decide(&e, &single(), op, 1, NOW).0.kind,
                OutcomeKind::Revoked
            );
        }
    }

    #[test]
    fn multi_entry_tickets_count_up_to_their_limit() {
        let p = Policy {
            max_entries: 3,
            ..Policy::default()
        };
        let mut e = fresh();
        for n in 1..=3 {
            let (d, next) = decide(&e, &p, Op::Entry, 1, NOW + u64::from(n));
            assert_eq!((d.kind, d.entries), (OutcomeKind::Admitted, n));
            e = next;
        }
        assert_eq!(
            decide(&e, &p, Op::Entry, 1, NOW + 9).0.kind,
            OutcomeKind::AlreadyUsed
        );
    }
}
