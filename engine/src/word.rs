//! The state word: one `u64` per ticket, changed only by compare-and-swap.
//!
//! | bits | field |
//! |---|---|
//! | 0–1 | state: 0 unminted, 1 valid, 2 used, 3 revoked |
//! | 2 | inside: the last event was an entry not since undone or exited |
//! | 3–8 | entries counted (saturates at 63) |
//! | 9–16 | version: +1 on every change (wraps), orders log records per ticket |
//! | 17–32 | gate of the last event |
//! | 33–63 | time of the last event, seconds from the engine epoch (31 bits) |
//!
//! The transitions are pure functions of (word, request); [`apply`] runs one of them in a CAS
//! loop over any [`WordCell`], so the same loop runs on `std` atomics in production and on
//! `loom` atomics in the model-checked test.

use std::sync::atomic::{AtomicU64, Ordering};

use stile_protocol::{Outcome, OutcomeKind, ENGINE_EPOCH_UNIX_S};

use crate::policy::Policy;

/// Ticket state in the low two bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TicketState {
    /// Never minted: the slot is empty.
    Unminted = 0,
    /// Minted and not (fully) used.
    Valid = 1,
    /// Used: every entry the policy allows is spent.
    Used = 2,
    /// Revoked or transferred away.
    Revoked = 3,
}

/// Largest entry count the word holds; policies allow at most this many entries.
pub use stile_protocol::limits::ENTRIES_MAX;
/// Largest event time the word holds, in seconds from the engine epoch.
pub const TIME_MAX_EPOCH_S: u32 = (1 << 31) - 1;

const STATE_MASK: u64 = 0b11;
const INSIDE_BIT: u64 = 1 << 2;
const ENTRIES_SHIFT: u32 = 3;
const ENTRIES_MASK: u64 = 0x3F;
const VERSION_SHIFT: u32 = 9;
const VERSION_MASK: u64 = 0xFF;
const GATE_SHIFT: u32 = 17;
const GATE_MASK: u64 = 0xFFFF;
const TIME_SHIFT: u32 = 33;

/// A decoded view of a state word; [`Word::pack`] and [`Word::unpack`] convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Word {
    /// Unminted, valid, used or revoked.
    pub state: TicketState,
    /// The last event was an entry that was neither undone nor followed by an exit.
    pub inside: bool,
    /// Entries counted so far, saturating at [`ENTRIES_MAX`].
    pub entries: u8,
    /// Change counter (wraps at 256); orders log records of one ticket.
    pub version: u8,
    /// Gate of the last event (0 when none).
    pub gate: u16,
    /// Time of the last event, seconds from the engine epoch.
    pub time_e: u32,
}

impl Word {
    /// The word of a freshly minted ticket.
    pub fn minted(now_e: u32) -> Self {
        Word {
            state: TicketState::Valid,
            inside: false,
            entries: 0,
            version: 1,
            gate: 0,
            time_e: now_e,
        }
    }

    /// Packs into the `u64` layout above.
    pub fn pack(self) -> u64 {
        debug_assert!(self.entries <= ENTRIES_MAX);
        debug_assert!(self.time_e <= TIME_MAX_EPOCH_S);
        (self.state as u64)
            | if self.inside { INSIDE_BIT } else { 0 }
            | (u64::from(self.entries) & ENTRIES_MASK) << ENTRIES_SHIFT
            | u64::from(self.version) << VERSION_SHIFT
            | u64::from(self.gate) << GATE_SHIFT
            | u64::from(self.time_e) << TIME_SHIFT
    }

    /// Reads the `u64` layout above.
    pub fn unpack(raw: u64) -> Self {
        let state = match raw & STATE_MASK {
            0 => TicketState::Unminted,
            1 => TicketState::Valid,
            2 => TicketState::Used,
            _ => TicketState::Revoked,
        };
        Word {
            state,
            inside: raw & INSIDE_BIT != 0,
            entries: ((raw >> ENTRIES_SHIFT) & ENTRIES_MASK) as u8,
            version: ((raw >> VERSION_SHIFT) & VERSION_MASK) as u8,
            gate: ((raw >> GATE_SHIFT) & GATE_MASK) as u16,
            time_e: (raw >> TIME_SHIFT) as u32,
        }
    }

    /// Unix seconds of the last event.
    pub fn time_unix_s(&self) -> u64 {
        ENGINE_EPOCH_UNIX_S + u64::from(self.time_e)
    }

    /// This word after one more change by `gate` at `now_e`.
    fn touched(self, gate: u16, now_e: u32) -> Self {
        Word {
            version: self.version.wrapping_add(1),
            gate,
            time_e: now_e,
            ..self
        }
    }

    /// The outcome that names this word's last event.
    fn outcome(&self, kind: OutcomeKind) -> Outcome {
        Outcome {
            kind,
            gate: self.gate,
            entries: self.entries,
            at_unix_s: self.time_unix_s(),
        }
    }
}

/// Unix seconds to engine-epoch seconds, clamped to what a word holds.
pub fn to_epoch_s(unix_s: u64) -> u32 {
    unix_s
        .saturating_sub(ENGINE_EPOCH_UNIX_S)
        .min(u64::from(TIME_MAX_EPOCH_S)) as u32
}

/// Engine-epoch seconds back to Unix seconds.
pub fn from_epoch_s(epoch_s: u32) -> u64 {
    ENGINE_EPOCH_UNIX_S + u64::from(epoch_s)
}

/// A state change a gate or an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Check in (entry).
    Entry,
    /// Check out (exit), for entry/exit policies.
    Exit,
    /// Annul this gate's last admit, within the policy's undo window.
    Undo,
    /// Void the ticket, whatever its state.
    Revoke,
    /// Void the ticket to re-issue it to someone else: only while it is not spent and not
    /// inside.
    Transfer,
}

impl Op {
    /// The byte logged for this op (its declaration order).
    pub fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            0 => Op::Entry,
            1 => Op::Exit,
            2 => Op::Undo,
            3 => Op::Revoke,
            4 => Op::Transfer,
            _ => return None,
        })
    }
}

/// Everything a transition needs besides the word: immutable for one request.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The ticket's policy.
    pub policy: &'a Policy,
    /// Gate asking (0 for operators).
    pub gate: u16,
    /// Now, Unix seconds.
    pub now_unix_s: u64,
    /// First-scan time of the ticket, Unix seconds, if it has been scanned.
    pub first_scan_unix_s: Option<u64>,
}

/// One transition: the new word, or the rejection to answer with (word unchanged).
#[inline(always)]
pub fn transition(w: Word, op: Op, ctx: &Ctx<'_>) -> Result<Word, Outcome> {
    match w.state {
        TicketState::Unminted => return Err(Outcome::UNKNOWN),
        TicketState::Revoked => return Err(w.outcome(OutcomeKind::Revoked)),
        TicketState::Valid | TicketState::Used => {}
    }
    let now_e = to_epoch_s(ctx.now_unix_s);
    match op {
        Op::Entry => entry(w, ctx, now_e),
        Op::Exit if ctx.policy.entry.records_exits && w.inside => Ok(Word {
            inside: false,
            ..w.touched(ctx.gate, now_e)
        }),
        Op::Exit => Err(Outcome::bare(OutcomeKind::NotInside)),
        Op::Undo => {
            // An admit stamped later than now (a log whose times ran ahead, accepted by the
            // operator) is not undoable until its window would have begun.
            let in_window = now_e >= w.time_e && now_e - w.time_e <= ctx.policy.undo_window_s;
            if !(w.inside && w.gate == ctx.gate && in_window) {
                return Err(Outcome::bare(OutcomeKind::NotUndoable));
            }
            let entries = w.entries.saturating_sub(1);
            Ok(Word {
                state: TicketState::Valid,
                inside: false,
                entries,
                ..w.touched(ctx.gate, now_e)
            })
        }
        Op::Transfer
            if w.state == TicketState::Used || (ctx.policy.entry.records_exits && w.inside) =>
        {
            Err(w.outcome(OutcomeKind::AlreadyUsed))
        }
        Op::Revoke | Op::Transfer => Ok(Word {
            state: TicketState::Revoked,
            inside: false,
            ..w.touched(ctx.gate, now_e)
        }),
    }
}

/// The entry rules: spent or inside first (the gate wants to know who used it), then validity,
/// then count the entry.
fn entry(w: Word, ctx: &Ctx<'_>, now_e: u32) -> Result<Word, Outcome> {
    let rule = &ctx.policy.entry;
    if w.state == TicketState::Used || (rule.records_exits && w.inside) {
        return Err(w.outcome(OutcomeKind::AlreadyUsed));
    }
    let (from, until) = ctx
        .policy
        .validity
        .window(ctx.first_scan_unix_s.unwrap_or(ctx.now_unix_s));
    if let Some(from) = from.filter(|&f| ctx.now_unix_s < f) {
        return Err(Outcome {
            at_unix_s: from,
            ..Outcome::bare(OutcomeKind::NotYetValid)
        });
    }
    if let Some(until) = until.filter(|&u| ctx.now_unix_s > u) {
        return Err(Outcome {
            at_unix_s: until,
            ..Outcome::bare(OutcomeKind::Expired)
        });
    }
    let entries = w.entries.saturating_add(1).min(ENTRIES_MAX);
    let spent = rule.max_entries != 0 && entries >= rule.max_entries;
    let state = if spent {
        TicketState::Used
    } else {
        TicketState::Valid
    };
    Ok(Word {
        state,
        inside: true,
        entries,
        ..w.touched(ctx.gate, now_e)
    })
}

/// The answer to a successful transition.
pub fn success(op: Op, new: Word) -> Outcome {
    let kind = match op {
        Op::Entry => OutcomeKind::Admitted,
        Op::Exit => OutcomeKind::Exited,
        Op::Undo => OutcomeKind::Undone,
        Op::Revoke | Op::Transfer => OutcomeKind::Revoked,
    };
    new.outcome(kind)
}

/// An atomic cell holding a state word: `std`'s `AtomicU64`, or loom's in the model check.
pub trait WordCell {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u64;
    /// Atomic compare-and-exchange (weak: may fail spuriously).
    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
}

impl WordCell for AtomicU64 {
    #[inline]
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    #[inline]
    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        AtomicU64::compare_exchange_weak(self, current, new, success, failure)
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The answer.
    pub outcome: Outcome,
    /// The word before and after, when the state changed.
    pub change: Option<(Word, Word)>,
}

/// Runs `op` on `cell` in one CAS loop: read, decide, swap; on a lost race, decide again
/// on what the winner wrote. Exactly one of any set of racing admits of a single-entry ticket
/// succeeds.
#[inline]
pub fn apply<C: WordCell + ?Sized>(cell: &C, op: Op, ctx: &Ctx<'_>) -> Applied {
    apply_from(cell, cell.load(Ordering::Acquire), op, ctx)
}

/// [`apply`], starting from a value of the cell the caller has just loaded (`Acquire`), to
/// spare a second load; a stale value only costs one failed CAS.
#[inline(always)]
pub fn apply_from<C: WordCell + ?Sized>(
    cell: &C,
    mut current: u64,
    op: Op,
    ctx: &Ctx<'_>,
) -> Applied {
    loop {
        let old = Word::unpack(current);
        let new = match transition(old, op, ctx) {
            Ok(new) => new,
            Err(outcome) => {
                return Applied {
                    outcome,
                    change: None,
                }
            }
        };
        match cell.compare_exchange_weak(current, new.pack(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                return Applied {
                    outcome: success(op, new),
                    change: Some((old, new)),
                }
            }
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{EntryRule, Validity};
    use stile_protocol::CodeFormat;

    fn policy(entry: EntryRule, validity: Validity) -> Policy {
        Policy {
            provider: 1,
            format: CodeFormat::Static,
            validity,
            entry,
            undo_window_s: 60,
            offline_rotating: false,
            online_only: false,
        }
    }

    const T0: u64 = 1_800_000_000;

    fn ctx(p: &Policy, gate: u16, now: u64) -> Ctx<'_> {
        Ctx {
            policy: p,
            gate,
            now_unix_s: now,
            first_scan_unix_s: None,
        }
    }

    #[test]
    fn pack_unpack_roundtrip_at_field_limits() {
        for w in [
            Word {
                state: TicketState::Revoked,
                inside: true,
                entries: 63,
                version: 255,
                gate: 65535,
                time_e: TIME_MAX_EPOCH_S,
            },
            Word {
                state: TicketState::Unminted,
                inside: false,
                entries: 0,
                version: 0,
                gate: 0,
                time_e: 0,
            },
            Word {
                state: TicketState::Used,
                inside: false,
                entries: 7,
                version: 9,
                gate: 300,
                time_e: 12345,
            },
        ] {
            assert_eq!(Word::unpack(w.pack()), w);
        }
        assert_eq!(Word::unpack(0).state, TicketState::Unminted);
    }

    #[test]
    fn single_entry_admits_once_then_names_gate_and_time() {
        let p = policy(EntryRule::SINGLE, Validity::ALWAYS);
        let w = Word::minted(to_epoch_s(T0));
        let used = transition(w, Op::Entry, &ctx(&p, 4, T0 + 5)).unwrap();
        assert_eq!(used.state, TicketState::Used);
        let again = transition(used, Op::Entry, &ctx(&p, 9, T0 + 6)).unwrap_err();
        assert_eq!(again.kind, OutcomeKind::AlreadyUsed);
        assert_eq!((again.gate, again.at_unix_s), (4, T0 + 5));
    }

    #[test]
    fn validity_window_and_first_scan_duration() {
        let p = policy(
            EntryRule::pairs(0),
            Validity {
                not_before_unix_s: Some(T0),
                not_after_unix_s: Some(T0 + 1000),
                duration_from_first_scan_s: Some(100),
            },
        );
        let w = Word::minted(0);
        let early = transition(w, Op::Entry, &ctx(&p, 1, T0 - 1)).unwrap_err();
        assert_eq!(
            (early.kind, early.at_unix_s),
            (OutcomeKind::NotYetValid, T0)
        );
        let mut c = ctx(&p, 1, T0 + 10);
        let inside = transition(w, Op::Entry, &c).unwrap();
        c.first_scan_unix_s = Some(T0 + 10);
        let out = transition(
            inside,
            Op::Exit,
            &Ctx {
                now_unix_s: T0 + 50,
                ..c
            },
        )
        .unwrap();
        assert!(!out.inside);
        assert!(transition(
            out,
            Op::Entry,
            &Ctx {
                now_unix_s: T0 + 110,
                ..c
            }
        )
        .is_ok());
        let late = transition(
            out,
            Op::Entry,
            &Ctx {
                now_unix_s: T0 + 111,
                ..c
            },
        )
        .unwrap_err();
        assert_eq!(
            (late.kind, late.at_unix_s),
            (OutcomeKind::Expired, T0 + 110)
        );
    }

    #[test]
    fn undo_only_same_gate_inside_window_and_once() {
        let p = policy(EntryRule::SINGLE, Validity::ALWAYS);
        let used = transition(Word::minted(0), Op::Entry, &ctx(&p, 2, T0)).unwrap();
        assert_eq!(
            transition(used, Op::Undo, &ctx(&p, 3, T0 + 1))
                .unwrap_err()
                .kind,
            OutcomeKind::NotUndoable
        );
        assert_eq!(
            transition(used, Op::Undo, &ctx(&p, 2, T0 + 61))
                .unwrap_err()
                .kind,
            OutcomeKind::NotUndoable
        );
        let undone = transition(used, Op::Undo, &ctx(&p, 2, T0 + 60)).unwrap();
        assert_eq!(
            (undone.state, undone.entries, undone.inside),
            (TicketState::Valid, 0, false)
        );
        assert_eq!(
            transition(undone, Op::Undo, &ctx(&p, 2, T0 + 61))
                .unwrap_err()
                .kind,
            OutcomeKind::NotUndoable
        );
    }

    #[test]
    fn multi_entry_counts_up_to_limit() {
        let p = policy(EntryRule::multi(3), Validity::ALWAYS);
        let mut w = Word::minted(0);
        for i in 1..=3u8 {
            w = transition(w, Op::Entry, &ctx(&p, 1, T0)).unwrap();
            assert_eq!(w.entries, i);
        }
        assert_eq!(w.state, TicketState::Used);
        assert_eq!(
            transition(w, Op::Entry, &ctx(&p, 1, T0)).unwrap_err().kind,
            OutcomeKind::AlreadyUsed
        );
        assert_eq!(
            transition(w, Op::Exit, &ctx(&p, 1, T0)).unwrap_err().kind,
            OutcomeKind::NotInside
        );
    }

    #[test]
    fn pairs_refuse_reentry_while_inside_and_exit_while_outside() {
        let p = policy(EntryRule::pairs(0), Validity::ALWAYS);
        let w = Word::minted(0);
        assert_eq!(
            transition(w, Op::Exit, &ctx(&p, 1, T0)).unwrap_err().kind,
            OutcomeKind::NotInside
        );
        let inside = transition(w, Op::Entry, &ctx(&p, 1, T0)).unwrap();
        let again = transition(inside, Op::Entry, &ctx(&p, 2, T0 + 1)).unwrap_err();
        assert_eq!((again.kind, again.gate), (OutcomeKind::AlreadyUsed, 1));
        let out = transition(inside, Op::Exit, &ctx(&p, 5, T0 + 2)).unwrap();
        assert_eq!(success(Op::Exit, out).kind, OutcomeKind::Exited);
        assert_eq!(
            transition(out, Op::Entry, &ctx(&p, 1, T0 + 3))
                .unwrap()
                .entries,
            2
        );
    }

    #[test]
    fn revoke_wins_over_everything_and_sticks() {
        let p = policy(EntryRule::SINGLE, Validity::ALWAYS);
        let r = transition(Word::minted(0), Op::Revoke, &ctx(&p, 0, T0)).unwrap();
        for op in [Op::Entry, Op::Exit, Op::Undo, Op::Revoke] {
            assert_eq!(
                transition(r, op, &ctx(&p, 1, T0)).unwrap_err().kind,
                OutcomeKind::Revoked
            );
        }
        assert_eq!(
            transition(Word::unpack(0), Op::Entry, &ctx(&p, 1, T0))
                .unwrap_err()
                .kind,
            OutcomeKind::Unknown
        );
    }

    #[test]
    fn apply_bumps_version_once_per_change() {
        let p = policy(EntryRule::SINGLE, Validity::ALWAYS);
        let cell = AtomicU64::new(Word::minted(0).pack());
        let a = apply(&cell, Op::Entry, &ctx(&p, 1, T0));
        assert_eq!(a.outcome.kind, OutcomeKind::Admitted);
        let b = apply(&cell, Op::Entry, &ctx(&p, 2, T0));
        assert_eq!(b.change, None);
        assert_eq!(Word::unpack(cell.load(Ordering::Relaxed)).version, 2);
    }
}
