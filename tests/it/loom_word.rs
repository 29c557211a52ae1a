//! Model check of the state word's CAS loop under loom: every interleaving of racing
//! check-ins, undos, exits and revokes. The loop under test is the engine's own
//! [`stile_engine::word::apply`], run over loom's atomics.

use std::sync::atomic::Ordering;

use loom::sync::atomic::AtomicU64;
use loom::sync::Arc;
use stile_engine::word::{apply, Ctx, Op, WordCell};
use stile_engine::{EntryRule, OutcomeKind, Policy, TicketState, Word};

/// loom's atomic as a state-word cell.
struct LoomWord(AtomicU64);

impl WordCell for LoomWord {
    fn load(&self, order: Ordering) -> u64 {
        self.0.load(order)
    }
    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        s: Ordering,
        f: Ordering,
    ) -> Result<u64, u64> {
        self.0.compare_exchange_weak(current, new, s, f)
    }
}

const T0: u64 = 1_800_000_000;

/// What each racing thread did: its op, its gate and the answer it got.
type Summary = [(Op, u16, OutcomeKind)];
/// A property of one explored interleaving: start word, end word, what each thread saw.
type Check = fn(&Word, &Word, &Summary);

fn run(policy: Policy, start: Word, ops: Vec<(Op, u16)>, check: Check) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(move || {
        let cell = Arc::new(LoomWord(AtomicU64::new(start.pack())));
        let handles: Vec<_> = ops
            .iter()
            .map(|&(op, gate)| {
                let cell = cell.clone();
                loom::thread::spawn(move || {
                    let ctx = Ctx {
                        policy: &policy,
                        gate,
                        now_unix_s: T0,
                        first_scan_unix_s: None,
                    };
                    let applied = apply(&*cell, op, &ctx);
                    (op, gate, applied)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let end = Word::unpack(cell.0.load(Ordering::SeqCst));
        // No lost update: the version moved once per reported change.
        let changes = results.iter().filter(|r| r.2.change.is_some()).count();
        assert_eq!(
            end.version,
            start.version.wrapping_add(changes as u8),
            "{results:?}"
        );
        // Each change's "before" is exactly some earlier word: they chain from start to end.
        let mut chain: Vec<_> = results.iter().filter_map(|r| r.2.change).collect();
        chain.sort_by_key(|(old, _)| old.version.wrapping_sub(start.version));
        let mut at = start;
        for (old, new) in chain {
            assert_eq!(old, at, "a change built on a stale word");
            at = new;
        }
        assert_eq!(at, end);
        let summary: Vec<_> = results
            .iter()
            .map(|r| (r.0, r.1, r.2.outcome.kind))
            .collect();
        check(&start, &end, &summary);
    });
}

#[test]
fn loom_two_gates_racing_admit_exactly_one() {
    run(
        Policy::simple(1),
        Word::minted(0),
        vec![(Op::Entry, 1), (Op::Entry, 2)],
        |_, end, r| {
            let admits = r.iter().filter(|x| x.2 == OutcomeKind::Admitted).count();
            assert_eq!(admits, 1);
            let loser = r.iter().find(|x| x.2 != OutcomeKind::Admitted).unwrap();
            assert_eq!(loser.2, OutcomeKind::AlreadyUsed);
            assert_eq!(end.state, TicketState::Used);
        },
    );
}

#[test]
fn loom_checkin_races_undo_and_revoke() {
    let policy = Policy::simple(1);
    let ctx = Ctx {
        policy: &policy,
        gate: 1,
        now_unix_s: T0,
        first_scan_unix_s: None,
    };
    let used = stile_engine::word::transition(Word::minted(0), Op::Entry, &ctx).unwrap();
    run(
        policy,
        used,
        vec![(Op::Undo, 1), (Op::Entry, 2), (Op::Revoke, 0)],
        |_, end, r| {
            let kind = |op: Op| r.iter().find(|x| x.0 == op).unwrap().2;
            // Gate 2 can only get in after gate 1's undo reopened the ticket.
            if kind(Op::Entry) == OutcomeKind::Admitted {
                assert_eq!(kind(Op::Undo), OutcomeKind::Undone);
            }
            assert_eq!(kind(Op::Revoke), OutcomeKind::Revoked);
            assert_eq!(end.state, TicketState::Revoked);
        },
    );
}

#[test]
fn loom_entry_races_exit_and_undo_on_pairs() {
    let policy = Policy {
        entry: EntryRule::pairs(0),
        ..Policy::simple(1)
    };
    let ctx = Ctx {
        policy: &policy,
        gate: 1,
        now_unix_s: T0,
        first_scan_unix_s: None,
    };
    let inside = stile_engine::word::transition(Word::minted(0), Op::Entry, &ctx).unwrap();
    run(
        policy,
        inside,
        vec![(Op::Exit, 2), (Op::Entry, 3), (Op::Undo, 1)],
        |start, end, r| {
            let kind = |op: Op| r.iter().find(|x| x.0 == op).unwrap().2;
            // Exit and undo both need "inside": at most one of them wins against the start.
            let leave = [
                kind(Op::Exit) == OutcomeKind::Exited,
                kind(Op::Undo) == OutcomeKind::Undone,
            ];
            assert!(!(leave[0] && leave[1]) || kind(Op::Entry) == OutcomeKind::Admitted);
            let admitted = kind(Op::Entry) == OutcomeKind::Admitted;
            let entries = start.entries as i32 + admitted as i32 - leave[1] as i32;
            assert_eq!(end.entries as i32, entries);
            // Gate 3 writes only entries (inside); gates 2 and 1 only exits and undos (outside).
            assert_eq!(end.inside, end.gate == 3);
        },
    );
}
