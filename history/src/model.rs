//! One ticket as an atomic state machine with the engine's rules (`engine/src/word.rs`),
//! judged with tolerance where the history cannot know the node's clock: an answer that
//! depends on time is allowed when some time within the op's window, widened by the clock
//! skew, gives it.

use stile_protocol::OutcomeKind as K;

use crate::format::{Answer, OpKind, Policy, StateName, ENTRIES_MAX};

/// One operation after resends are merged: what the search places in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The gate that asked.
    pub gate: u16,
    /// What it asked.
    pub kind: OpKind,
    /// Its scan id.
    pub scan_id: Option<u64>,
    /// Lines of its attempts, first invocation first.
    pub lines: Vec<usize>,
    /// First invocation, monotonic ns.
    pub invoke_ns: u64,
    /// The first answer's arrival, monotonic ns; `None` when no attempt was answered.
    pub return_ns: Option<u64>,
    /// Earliest wall time it can have taken effect, Unix ms.
    pub wall_lo_ms: u64,
    /// Latest wall time it can have taken effect, Unix ms (`u64::MAX` when indeterminate).
    pub wall_hi_ms: u64,
    /// The answer.
    pub answer: Answer,
    /// The gate the answer names.
    pub out_gate: Option<u16>,
    /// The entry count the answer carries.
    pub entries: Option<u8>,
    /// Inside, as a status read says.
    pub inside: Option<bool>,
}

impl Op {
    /// No attempt was answered.
    pub fn indeterminate(&self) -> bool {
        self.answer == Answer::Indeterminate
    }
}

/// The ticket's state: what the engine's state word holds, with the last event and the first
/// scan named by the op that made them (so their gate and time come from that op).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct State {
    /// Entries counted.
    pub entries: u8,
    /// The last event was an entry not since undone or exited.
    pub inside: bool,
    /// Op (index) of the last event; `None` while fresh.
    pub last: Option<u32>,
    /// Op (index) of the first admit.
    pub first_scan: Option<u32>,
}

/// The rules for one ticket's ops.
#[derive(Debug, Clone, Copy)]
pub struct Model<'a> {
    /// The ticket's policy.
    pub policy: &'a Policy,
    /// Its ops, by index.
    pub ops: &'a [Op],
    /// Clock difference tolerated between the history's wall clock and the node's, ms.
    pub skew_ms: u64,
}

/// Slack for times the engine keeps in whole seconds.
const SECOND_MS: u64 = 1_000;

impl Model<'_> {
    /// The state after op `i` from `s`, if its answer can come from `s`; for an indeterminate
    /// op, the state after it took effect, if it can change anything (if not, it is the same
    /// as dropping it).
    pub fn step(&self, s: State, i: usize) -> Option<State> {
        let op = &self.ops[i];
        let next = match op.kind {
            OpKind::Checkin => self.checkin(s, i),
            OpKind::Exit => self.exit(s, i),
            OpKind::Undo => self.undo(s, i),
            OpKind::Status => return self.status(s, op).then_some(s),
        };
        match op.answer {
            Answer::Indeterminate => next.filter(|n| *n != s),
            Answer::Outcome(k) if undecided(k) => Some(s),
            _ => next,
        }
    }

    fn spent(&self, s: State) -> bool {
        self.policy.max_entries != 0 && s.entries >= self.policy.max_entries
    }

    /// Gate of the last event (0 while fresh).
    pub fn last_gate(&self, s: State) -> u16 {
        s.last.map_or(0, |i| self.ops[i as usize].gate)
    }

    /// Whether the answer's details, where given, are these.
    fn details(op: &Op, gate: u16, entries: u8) -> bool {
        op.out_gate.is_none_or(|g| g == gate) && op.entries.is_none_or(|e| e == entries)
    }

    fn checkin(&self, s: State, i: usize) -> Option<State> {
        let op = &self.ops[i];
        let blocked = self.spent(s) || (self.policy.exits && s.inside);
        if blocked {
            let ok = op.answer == Answer::Outcome(K::AlreadyUsed)
                && Self::details(op, self.last_gate(s), s.entries);
            return ok.then_some(s);
        }
        let (early, late, inside_window) = self.validity(s, op);
        match op.answer {
            Answer::Outcome(K::NotYetValid) => early.then_some(s),
            Answer::Outcome(K::Expired) => late.then_some(s),
            // `undone`: an admit whose answer came only to a resend made after its gate undid
            // it; the details are the undo's.
            Answer::Outcome(K::Admitted | K::Undone) | Answer::Indeterminate if inside_window => {
                let n = State {
                    entries: s.entries.saturating_add(1).min(ENTRIES_MAX),
                    inside: true,
                    last: Some(i as u32),
                    first_scan: s.first_scan.or(Some(i as u32)),
                };
                let ok = op.answer != Answer::Outcome(K::Admitted)
                    || Self::details(op, op.gate, n.entries);
                ok.then_some(n)
            }
            _ => None,
        }
    }

    fn exit(&self, s: State, i: usize) -> Option<State> {
        let op = &self.ops[i];
        let can = self.policy.exits && s.inside;
        match op.answer {
            Answer::Outcome(K::NotInside) => (!can).then_some(s),
            Answer::Outcome(K::Exited) | Answer::Indeterminate if can => {
                let ok = op.indeterminate() || Self::details(op, op.gate, s.entries);
                ok.then_some(State {
                    inside: false,
                    last: Some(i as u32),
                    ..s
                })
            }
            _ => None,
        }
    }

    fn undo(&self, s: State, i: usize) -> Option<State> {
        let op = &self.ops[i];
        let mine = s.inside && self.last_gate(s) == op.gate;
        // The window runs from the admit's time; both times are the node's, in seconds.
        let (in_time, late) = match s.last {
            Some(a) => {
                let admit = &self.ops[a as usize];
                let window_ms = u64::from(self.policy.undo_window_s) * SECOND_MS;
                let slack = self.skew_ms + SECOND_MS;
                let in_time = op.wall_lo_ms
                    <= admit
                        .wall_hi_ms
                        .saturating_add(window_ms)
                        .saturating_add(slack);
                let late = op.wall_hi_ms.saturating_add(slack) > admit.wall_lo_ms + window_ms;
                (in_time, late)
            }
            None => (false, true),
        };
        match op.answer {
            Answer::Outcome(K::NotUndoable) => (!mine || late).then_some(s),
            Answer::Outcome(K::Undone) | Answer::Indeterminate if mine && in_time => {
                let n = State {
                    entries: s.entries.saturating_sub(1),
                    inside: false,
                    last: Some(i as u32),
                    ..s
                };
                let ok = op.indeterminate() || Self::details(op, op.gate, n.entries);
                ok.then_some(n)
            }
            _ => None,
        }
    }

    fn status(&self, s: State, op: &Op) -> bool {
        let Answer::State(name) = op.answer else {
            return true;
        };
        let (_, late, _) = self.validity(s, op);
        let (_, _, until_max_ms) = self.until_ms(s);
        let surely_late =
            until_max_ms.is_some_and(|u| op.wall_lo_ms.saturating_sub(self.skew_ms) >= u);
        let spent = self.spent(s);
        let name_ok = match name {
            StateName::Used => spent,
            StateName::Valid => !spent && !surely_late,
            StateName::Expired => !spent && late,
            StateName::Revoked => false,
        };
        name_ok
            && Self::details(op, self.last_gate(s), s.entries)
            && op.inside.is_none_or(|i| i == s.inside)
    }

    /// The end of validity as the first moment past it (Unix ms): (`from`, earliest end,
    /// latest end), the ends spread by when the first scan happened.
    fn until_ms(&self, s: State) -> (Option<u64>, Option<u64>, Option<u64>) {
        let p = self.policy;
        let from = p.valid_from_unix_s.map(|f| f.saturating_mul(SECOND_MS));
        let deadline = p
            .valid_until_unix_s
            .map(|u| u.saturating_add(1).saturating_mul(SECOND_MS));
        // Not scanned yet: a duration counts from now, so it cannot have run out.
        let by_duration = |edge: fn(&Op) -> u64| {
            let first = &self.ops[s.first_scan? as usize];
            let d_ms = u64::from(p.valid_for_s?) * SECOND_MS;
            Some(edge(first).saturating_add(d_ms).saturating_add(SECOND_MS))
        };
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let lo = min(deadline, by_duration(|o| o.wall_lo_ms));
        let hi = min(deadline, by_duration(|o| o.wall_hi_ms));
        (from, lo, hi)
    }

    /// For an entry now: (it may be before `from`, it may be past the end, it may be inside
    /// the window), each judged over the op's wall window widened by the skew.
    fn validity(&self, s: State, op: &Op) -> (bool, bool, bool) {
        let (from, end_lo, end_hi) = self.until_ms(s);
        let now_lo = op.wall_lo_ms.saturating_sub(self.skew_ms);
        let now_hi = op.wall_hi_ms.saturating_add(self.skew_ms);
        let early = from.is_some_and(|f| now_lo < f);
        let late = end_lo.is_some_and(|e| now_hi >= e);
        let inside = from.is_none_or(|f| now_hi >= f) && end_hi.is_none_or(|e| now_lo < e);
        (early, late, inside)
    }
}

/// Outcomes the model does not decide (the gate's provider, its budget, the node's disk):
/// allowed anywhere, and they change nothing. `forged` and `unknown` are not among them: a declared
/// ticket is genuine and minted, so a node that answers either for it has lost it.
pub fn undecided(k: K) -> bool {
    matches!(k, K::WrongProvider | K::RateLimited | K::DiskFull)
}

/// Whether an answer of this kind changed the ticket (so a resend gets it again).
pub fn changes_state(answer: Answer) -> bool {
    matches!(answer, Answer::Outcome(K::Admitted | K::Exited | K::Undone))
}
