//! Operation histories and their checker.
//!
//! A history (JSON lines, `docs/FORMAT.md` §12) records every operation a load test sent:
//! gate, ticket, op, invoke and return times, and the answer, or none. [`check`] decides
//! whether each ticket's operations fit one atomic ticket with the engine's rules, by a
//! linearizability search per ticket (Wing & Gong's, with Lowe's memoization of (placed set,
//! state)): no ticket admitted twice, no acknowledged admit lost, every `already_used`
//! naming the gate that used it.

mod check;
mod format;
mod model;

pub use check::{check, Options, Report, Verdict, SEARCH_LIMIT_DEFAULT, SKEW_DEFAULT_MS};
pub use format::{
    parse, write_header, write_op, write_ticket, Answer, Attempt, History, OpKind, ParseError,
    Policy, Record, StateName, Ticket, LINE_MAX_BYTES, VERSION,
};

#[cfg(test)]
mod tests {
    use super::*;
    use stile_protocol::OutcomeKind as K;

    /// Wall clock of the history's monotonic zero, Unix ms.
    const T0_MS: u64 = 1_800_000_000_000;

    /// Builds a history through the writer, so every test also reads what the writer wrote.
    #[derive(Default)]
    struct Hist(Vec<u8>);

    impl Hist {
        fn ticket(mut self, code: &str, p: Policy) -> Self {
            write_ticket(&mut self.0, code, &p).unwrap();
            self
        }
        /// One attempt, times in ms from zero; `ret_ms` `None` for no answer.
        fn op(self, code: &str, gate: u16, op: OpKind, scan: u64, at: (u64, Option<u64>)) -> Op {
            Op {
                hist: self,
                code: code.to_string(),
                r: Record {
                    gate,
                    op,
                    scan_id: (op != OpKind::Status).then_some(scan),
                    invoke_ns: at.0 * 1_000_000,
                    return_ns: at.1.map(|r| r * 1_000_000),
                    wall_ms: T0_MS + at.0,
                    answer: Answer::Indeterminate,
                    out_gate: None,
                    entries: None,
                    inside: None,
                },
            }
        }
        fn check(&self) -> Report {
            self.check_with(Options::default())
        }
        fn check_with(&self, opts: Options) -> Report {
            check(&parse(&self.0[..]).unwrap(), &opts)
        }
    }

    /// An attempt being written.
    struct Op {
        hist: Hist,
        code: String,
        r: Record,
    }

    impl Op {
        fn out(mut self, k: K, gate: Option<u16>, entries: Option<u8>) -> Hist {
            self.r.answer = Answer::Outcome(k);
            self.r.out_gate = gate;
            self.r.entries = entries;
            self.done()
        }
        fn state(mut self, s: StateName, entries: u8, inside: bool) -> Hist {
            self.r.answer = Answer::State(s);
            self.r.entries = Some(entries);
            self.r.inside = Some(inside);
            self.done()
        }
        fn lost(self) -> Hist {
            self.done()
        }
        fn done(mut self) -> Hist {
            write_op(&mut self.hist.0, &self.code, &self.r).unwrap();
            self.hist
        }
    }

    use OpKind::{Checkin, Exit, Status, Undo};

    fn multi(n: u8) -> Policy {
        Policy {
            max_entries: n,
            ..Policy::SINGLE
        }
    }

    fn pairs() -> Policy {
        Policy {
            max_entries: 0,
            exits: true,
            ..Policy::SINGLE
        }
    }

    fn violation(r: &Report) -> &str {
        match &r.verdict {
            Verdict::Violation { detail, .. } => detail,
            v => panic!("expected a violation, got {v:?}"),
        }
    }

    #[test]
    fn concurrent_history_with_indeterminate_ops_is_consistent() {
        let h = Hist::default()
            .ticket("A", Policy::SINGLE)
            .ticket("B", pairs())
            .ticket("C", multi(2))
            // A: gate 2's rejection returns before gate 1's admit does: they overlapped.
            .op("A", 1, Checkin, 1, (0, Some(10)))
            .out(K::Admitted, Some(1), Some(1))
            .op("A", 2, Checkin, 1, (2, Some(8)))
            .out(K::AlreadyUsed, Some(1), Some(1))
            .op("A", 3, Checkin, 1, (20, None))
            .lost()
            .op("A", 4, Status, 0, (30, Some(31)))
            .state(StateName::Used, 1, true)
            .op("A", 5, Checkin, 1, (32, Some(33)))
            .out(K::RateLimited, None, None)
            // B: an entry whose answer was lost explains the second exit.
            .op("B", 1, Checkin, 1, (0, Some(1)))
            .out(K::Admitted, Some(1), Some(1))
            .op("B", 2, Exit, 1, (2, Some(3)))
            .out(K::Exited, Some(2), Some(1))
            .op("B", 1, Checkin, 2, (4, None))
            .lost()
            .op("B", 2, Exit, 2, (40, Some(41)))
            .out(K::Exited, Some(2), Some(2))
            .op("B", 9, Status, 0, (50, Some(51)))
            .state(StateName::Valid, 2, false)
            // C: an admit undone by its gate frees the entry it counted.
            .op("C", 1, Checkin, 1, (0, Some(1)))
            .out(K::Admitted, Some(1), Some(1))
            .op("C", 1, Undo, 2, (2, Some(3)))
            .out(K::Undone, Some(1), Some(0))
            .op("C", 2, Checkin, 1, (4, Some(9)))
            .out(K::Admitted, Some(2), Some(1))
            .op("C", 3, Checkin, 1, (5, Some(8)))
            .out(K::Admitted, Some(3), Some(2))
            // Gate 3's answer counted the second entry: its admit was the last event.
            .op("C", 4, Checkin, 1, (10, Some(11)))
            .out(K::AlreadyUsed, Some(3), Some(2));
        let r = h.check();
        assert_eq!(r.verdict, Verdict::Consistent, "{r}");
        assert_eq!(
            r.to_string(),
            "consistent: 15 operations on 3 tickets (2 indeterminate)"
        );
    }

    #[test]
    fn double_admit_of_single_entry_ticket_is_a_violation() {
        let h = Hist::default()
            .ticket("A", Policy::SINGLE)
            .op("A", 1, Checkin, 1, (0, Some(10)))
            .out(K::Admitted, Some(1), Some(1))
            .op("A", 2, Checkin, 1, (5, Some(12)))
            .out(K::Admitted, Some(2), Some(1));
        let r = h.check();
        let detail = violation(&r);
        assert!(r.to_string().starts_with("violation: ticket A: "), "{r}");
        // Both admits are named: the one that fits, and the one that cannot follow it.
        assert!(
            detail.contains("line 2: gate 1 checkin scan 1 -> admitted"),
            "{r}"
        );
        assert!(
            detail.contains("line 3: gate 2 checkin scan 1 -> admitted"),
            "{r}"
        );
    }

    #[test]
    fn lost_acknowledged_admit_is_a_violation() {
        let admitted = || {
            Hist::default()
                .ticket("A", Policy::SINGLE)
                .op("A", 1, Checkin, 1, (0, Some(10)))
                .out(K::Admitted, Some(1), Some(1))
        };
        let again = admitted()
            .op("A", 2, Checkin, 1, (20, Some(30)))
            .out(K::Admitted, Some(2), Some(1))
            .check();
        violation(&again);
        let unused = admitted()
            .op("A", 2, Status, 0, (20, Some(30)))
            .state(StateName::Valid, 0, false)
            .check();
        violation(&unused);
        // The same read while the admit was in flight may see the ticket before it.
        let overlapping = admitted()
            .op("A", 2, Status, 0, (5, Some(30)))
            .state(StateName::Valid, 0, false)
            .check();
        assert_eq!(overlapping.verdict, Verdict::Consistent, "{overlapping}");
    }

    #[test]
    fn already_used_naming_a_gate_that_never_admitted_is_a_violation() {
        let h = Hist::default()
            .ticket("A", Policy::SINGLE)
            .op("A", 1, Checkin, 1, (0, Some(10)))
            .out(K::Admitted, Some(1), Some(1))
            .op("A", 2, Checkin, 1, (20, Some(30)))
            .out(K::AlreadyUsed, Some(7), Some(1));
        let r = h.check();
        assert!(
            violation(&r).contains("gate 2 checkin scan 1 -> already_used (gate 7"),
            "{r}"
        );
    }

    #[test]
    fn indeterminate_admit_explains_an_otherwise_impossible_already_used() {
        let base = || Hist::default().ticket("A", Policy::SINGLE);
        let alone =
            base()
                .op("A", 2, Checkin, 1, (20, Some(30)))
                .out(K::AlreadyUsed, Some(7), Some(1));
        violation(&alone.check());
        let explained = base()
            .op("A", 7, Checkin, 1, (0, None))
            .lost()
            .op("A", 2, Checkin, 1, (20, Some(30)))
            .out(K::AlreadyUsed, Some(7), Some(1));
        let r = explained.check();
        assert_eq!(r.verdict, Verdict::Consistent, "{r}");
        assert_eq!(r.indeterminate, 1);
        // Invoked after the rejection returned, it cannot explain it.
        let too_late = base()
            .op("A", 2, Checkin, 1, (20, Some(30)))
            .out(K::AlreadyUsed, Some(7), Some(1))
            .op("A", 7, Checkin, 1, (40, None))
            .lost();
        violation(&too_late.check());
    }

    #[test]
    fn resend_of_a_scan_id_is_the_same_operation() {
        let base = || {
            Hist::default()
                .ticket("A", Policy::SINGLE)
                .op("A", 1, Checkin, 5, (0, None))
                .lost()
                .op("A", 1, Checkin, 5, (50, Some(60)))
                .out(K::Admitted, Some(1), Some(1))
        };
        // A second admit of one scan id is the node repeating its first answer.
        let r = base()
            .op("A", 1, Checkin, 5, (70, Some(80)))
            .out(K::Admitted, Some(1), Some(1))
            .check();
        assert_eq!(
            r.to_string(),
            "consistent: 1 operations on 1 tickets (0 indeterminate)"
        );
        // Another scan id is another operation: a double admit.
        violation(
            &base()
                .op("A", 1, Checkin, 6, (70, Some(80)))
                .out(K::Admitted, Some(1), Some(1))
                .check(),
        );
        // A resend told `already_used` by its own gate lost its first answer.
        let r = base()
            .op("A", 1, Checkin, 5, (70, Some(80)))
            .out(K::AlreadyUsed, Some(1), Some(1))
            .check();
        assert!(
            violation(&r).contains("a resend must get the first answer"),
            "{r}"
        );
        // After its gate undid the admit, a resend is told so.
        let r = base()
            .op("A", 1, Undo, 6, (61, Some(62)))
            .out(K::Undone, Some(1), Some(0))
            .op("A", 1, Checkin, 5, (70, Some(80)))
            .out(K::Undone, Some(1), Some(0))
            .check();
        assert_eq!(r.verdict, Verdict::Consistent, "{r}");
    }

    #[test]
    fn checkin_answered_undone_needs_its_gates_undo() {
        // The admit's answer was lost; its resend came after the gate had undone it.
        let lost_admit = || {
            Hist::default()
                .ticket("A", Policy::SINGLE)
                .op("A", 1, Checkin, 5, (0, None))
                .lost()
        };
        let undone = lost_admit()
            .op("A", 1, Undo, 6, (10, Some(11)))
            .out(K::Undone, Some(1), Some(0))
            .op("A", 1, Checkin, 5, (20, Some(21)))
            .out(K::Undone, Some(1), Some(0));
        let r = undone.check();
        assert_eq!(r.verdict, Verdict::Consistent, "{r}");
        assert_eq!(r.ops, 2, "{r}");
        let orphan = lost_admit()
            .op("A", 1, Checkin, 5, (20, Some(21)))
            .out(K::Undone, Some(1), Some(0))
            .check();
        assert!(
            violation(&orphan).contains("no undo of that gate"),
            "{orphan}"
        );
        // Undone with no admit that could have been undone: the undo cannot fit.
        let r = Hist::default()
            .ticket("A", Policy::SINGLE)
            .op("A", 1, Undo, 6, (10, Some(11)))
            .out(K::Undone, Some(1), Some(0))
            .check();
        violation(&r);
    }

    #[test]
    fn search_limit_gives_undecided() {
        // Many overlapping reads multiply the orders to try before the double admit shows.
        let mut h = Hist::default().ticket("A", Policy::SINGLE);
        for g in 0..14 {
            h = h
                .op("A", 100 + g, Status, 0, (0, Some(100)))
                .state(StateName::Valid, 0, false);
        }
        h = h
            .op("A", 1, Checkin, 1, (1, Some(100)))
            .out(K::Admitted, Some(1), Some(1))
            .op("A", 2, Checkin, 1, (1, Some(100)))
            .out(K::Admitted, Some(2), Some(1));
        let limited = h.check_with(Options {
            search_limit: 1_000,
            ..Options::default()
        });
        assert!(
            matches!(limited.verdict, Verdict::Undecided { ref ticket, ops: 16 } if ticket == "A"),
            "{limited}"
        );
        assert!(
            limited.to_string().contains("search limit of 1000"),
            "{limited}"
        );
        violation(&h.check());
    }

    #[test]
    fn validity_edges_tolerate_the_clock_skew() {
        let until_s = T0_MS / 1000 + 100;
        let p = Policy {
            valid_until_unix_s: Some(until_s),
            ..Policy::SINGLE
        };
        // Answered `kind` to a check-in made at `at_ms` from zero, checked with `skew_ms`.
        let one = |at_ms: u64, kind: K, skew_ms: u64| {
            Hist::default()
                .ticket("A", p)
                .op("A", 1, Checkin, 1, (at_ms, Some(at_ms + 1)))
                .out(kind, None, None)
                .check_with(Options {
                    skew_ms,
                    ..Options::default()
                })
                .verdict
        };
        let edge_ms = 100_000;
        for kind in [K::Admitted, K::Expired] {
            assert_eq!(one(edge_ms, kind, 2_000), Verdict::Consistent, "{kind}");
            assert_eq!(
                one(edge_ms + 2_000, kind, 2_000),
                Verdict::Consistent,
                "{kind}"
            );
        }
        assert_ne!(
            one(edge_ms + 10_000, K::Admitted, 2_000),
            Verdict::Consistent
        );
        assert_ne!(
            one(edge_ms - 10_000, K::Expired, 2_000),
            Verdict::Consistent
        );
        assert_ne!(one(edge_ms + 1_500, K::Admitted, 0), Verdict::Consistent);
        assert_ne!(one(0, K::NotYetValid, 2_000), Verdict::Consistent);
    }

    #[test]
    fn day_pass_runs_from_the_first_scan_not_the_last() {
        let p = Policy {
            valid_for_s: Some(3_600),
            ..pairs()
        };
        let two_hours = 7_200_000;
        let pass = || {
            Hist::default()
                .ticket("D", p)
                .op("D", 1, Checkin, 1, (0, Some(1)))
                .out(K::Admitted, Some(1), Some(1))
                .op("D", 1, Exit, 2, (10, Some(11)))
                .out(K::Exited, Some(1), Some(1))
        };
        let late_admit = pass()
            .op("D", 1, Checkin, 3, (two_hours, Some(two_hours + 1)))
            .out(K::Admitted, Some(1), Some(2));
        violation(&late_admit.check());
        let late_expired = pass()
            .op("D", 1, Checkin, 3, (two_hours, Some(two_hours + 1)))
            .out(K::Expired, None, None)
            .op("D", 2, Status, 0, (two_hours + 2, Some(two_hours + 3)))
            .state(StateName::Expired, 1, false);
        assert_eq!(late_expired.check().verdict, Verdict::Consistent);
    }

    #[test]
    fn undo_only_by_the_admitting_gate_within_its_window() {
        let admitted = || {
            Hist::default()
                .ticket("A", Policy::SINGLE)
                .op("A", 1, Checkin, 1, (0, Some(1)))
                .out(K::Admitted, Some(1), Some(1))
        };
        let other_gate =
            admitted()
                .op("A", 2, Undo, 1, (5, Some(6)))
                .out(K::Undone, Some(2), Some(0));
        violation(&other_gate.check());
        let refused = admitted()
            .op("A", 2, Undo, 1, (5, Some(6)))
            .out(K::NotUndoable, None, None);
        assert_eq!(refused.check().verdict, Verdict::Consistent);
        let too_late = admitted()
            .op("A", 1, Undo, 2, (120_000, Some(120_001)))
            .out(K::Undone, Some(1), Some(0));
        violation(&too_late.check());
        let in_time_refused =
            admitted()
                .op("A", 1, Undo, 2, (5, Some(6)))
                .out(K::NotUndoable, None, None);
        violation(&in_time_refused.check());
    }

    #[test]
    fn entry_and_exit_alternate() {
        let inside = || {
            Hist::default()
                .ticket("B", pairs())
                .op("B", 1, Checkin, 1, (0, Some(1)))
                .out(K::Admitted, Some(1), Some(1))
        };
        violation(
            &inside()
                .op("B", 2, Checkin, 1, (5, Some(6)))
                .out(K::Admitted, Some(2), Some(2))
                .check(),
        );
        violation(
            &inside()
                .op("B", 2, Exit, 1, (5, Some(6)))
                .out(K::NotInside, None, None)
                .check(),
        );
        let r = inside()
            .op("B", 2, Checkin, 1, (5, Some(6)))
            .out(K::AlreadyUsed, Some(1), Some(1))
            .check();
        assert_eq!(r.verdict, Verdict::Consistent, "{r}");
    }

    #[test]
    fn an_endless_line_is_refused_after_the_limit_not_read_whole() {
        let endless = std::io::BufReader::new(std::io::repeat(b'a'));
        let e = parse(endless).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("longer than"), "{e}");
    }

    #[test]
    fn a_declared_ticket_read_as_forged_or_unknown_was_lost() {
        let with = |k: K| {
            Hist::default()
                .ticket("A", Policy::SINGLE)
                .op("A", 1, Checkin, 1, (0, Some(1)))
                .out(k, None, None)
                .check()
                .verdict
        };
        // A declared ticket is genuine and minted: a node that calls it forged or unknown
        // (its data lost, say) or revoked (no revokes here) breaks the promise.
        for k in [K::Revoked, K::Forged, K::Unknown] {
            assert_ne!(with(k), Verdict::Consistent, "{k}");
        }
        // The gate's provider and budget are not the ticket's business.
        for k in [K::WrongProvider, K::RateLimited, K::DiskFull] {
            assert_eq!(with(k), Verdict::Consistent, "{k}");
        }
        // An acknowledged admit followed by `forged`: the node lost the ticket.
        let r = Hist::default()
            .ticket("A", Policy::SINGLE)
            .op("A", 1, Checkin, 1, (0, Some(1)))
            .out(K::Admitted, Some(1), Some(1))
            .op("A", 2, Checkin, 1, (5, Some(6)))
            .out(K::Forged, None, None)
            .check();
        assert!(violation(&r).contains("forged"), "{r}");
    }
}
