//! The checker: merge resends into operations, then, per ticket, search for an order of its
//! operations that respects real time and the model (Wing & Gong, with Lowe's memoization).

use std::collections::HashSet;
use std::fmt;

use crate::format::{Answer, Attempt, History, OpKind};
use crate::model::{changes_state, undecided, Model, Op, State};

/// Clock difference tolerated at validity edges unless told otherwise, ms.
pub const SKEW_DEFAULT_MS: u64 = 2_000;
/// Search states tried per ticket before giving up as undecided, unless told otherwise.
pub const SEARCH_LIMIT_DEFAULT: u64 = 500_000;
/// Operations listed in a violation report, per list.
const REPORT_OPS_MAX: usize = 12;

/// How to check.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Clock difference tolerated between the history's wall clock and the node's, ms.
    pub skew_ms: u64,
    /// Search states tried per ticket before the answer is undecided.
    pub search_limit: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            skew_ms: SKEW_DEFAULT_MS,
            search_limit: SEARCH_LIMIT_DEFAULT,
        }
    }
}

/// What the checker found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every ticket's operations fit one atomic ticket.
    Consistent,
    /// A ticket's operations fit no order; the text names them.
    Violation {
        /// The ticket's code.
        ticket: String,
        /// What is wrong and which operations, several lines.
        detail: String,
    },
    /// The search limit was reached on this ticket (and no violation was found elsewhere).
    Undecided {
        /// The ticket's code.
        ticket: String,
        /// Its operations.
        ops: usize,
    },
}

/// The checker's result with the history's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Operations, resends merged.
    pub ops: usize,
    /// Tickets declared.
    pub tickets: usize,
    /// Operations that got no answer.
    pub indeterminate: usize,
    /// Tickets found in violation (the verdict describes the first).
    pub violations: usize,
    /// The verdict.
    pub verdict: Verdict,
    /// The search limit in force (for the undecided message).
    pub search_limit: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Consistent => write!(
                f,
                "consistent: {} operations on {} tickets ({} indeterminate)",
                self.ops, self.tickets, self.indeterminate
            ),
            Verdict::Violation { ticket, detail } => {
                write!(f, "violation: ticket {ticket}: {detail}")?;
                if self.violations > 1 {
                    write!(
                        f,
                        "\n({} tickets in violation; the first shown)",
                        self.violations
                    )?;
                }
                Ok(())
            }
            Verdict::Undecided { ticket, ops } => write!(
                f,
                "undecided: ticket {ticket}: its {ops} operations were not decided within the \
                 search limit of {} states (raise --search-limit); {} operations on {} tickets \
                 ({} indeterminate)",
                self.search_limit, self.ops, self.tickets, self.indeterminate
            ),
        }
    }
}

/// Checks a whole history.
pub fn check(history: &History, opts: &Options) -> Report {
    let mut per_ticket: Vec<Vec<&Attempt>> = vec![Vec::new(); history.tickets.len()];
    for a in &history.attempts {
        per_ticket[a.ticket].push(a);
    }
    let mut report = Report {
        ops: 0,
        tickets: history.tickets.len(),
        indeterminate: 0,
        violations: 0,
        verdict: Verdict::Consistent,
        search_limit: opts.search_limit,
    };
    let mut undecided_at = None;
    for (t, attempts) in per_ticket.iter().enumerate() {
        let ticket = &history.tickets[t];
        let outcome = merge(attempts).and_then(|ops| {
            annulled_admits_were_undone(&ops)?;
            report.ops += ops.len();
            report.indeterminate += ops.iter().filter(|o| o.indeterminate()).count();
            let ops: Vec<Op> = ops.into_iter().filter(takes_part).collect();
            let model = Model {
                policy: &ticket.policy,
                ops: &ops,
                skew_ms: opts.skew_ms,
            };
            match search(&model, opts.search_limit) {
                Search::Found => Ok(()),
                Search::Limit => {
                    undecided_at.get_or_insert((t, ops.len()));
                    Ok(())
                }
                Search::Stuck { order, next } => Err(describe(&model, &order, &next)),
            }
        });
        if let Err(detail) = outcome {
            report.violations += 1;
            if report.violations == 1 {
                report.verdict = Verdict::Violation {
                    ticket: ticket.code.clone(),
                    detail,
                };
            }
        }
    }
    if let (Verdict::Consistent, Some((t, ops))) = (&report.verdict, undecided_at) {
        report.verdict = Verdict::Undecided {
            ticket: history.tickets[t].code.clone(),
            ops,
        };
    }
    report
}

/// Whether an op constrains the order: a status read that got no answer, and an outcome the
/// model does not decide, fit anywhere and change nothing.
fn takes_part(op: &Op) -> bool {
    match op.answer {
        Answer::Indeterminate => op.kind != OpKind::Status,
        Answer::Outcome(k) => !undecided(k),
        Answer::State(_) => true,
    }
}

/// Merges one ticket's attempts into operations: the attempts of one (gate, op, scan id) up
/// to its first answer are one operation, spanning from the first invocation to that answer.
/// After an answer that changed state, a resend must get the same answer (or `undone`, for an
/// admit its gate has since undone); after one that changed nothing, the node decides a
/// resend afresh, so it starts a new operation.
fn merge(attempts: &[&Attempt]) -> Result<Vec<Op>, String> {
    let mut sorted: Vec<&Attempt> = attempts.to_vec();
    sorted.sort_by_key(|a| {
        let r = &a.record;
        let own = (r.op == OpKind::Status).then_some(a.line);
        (r.gate, r.op, r.scan_id, own, r.invoke_ns)
    });
    let mut ops: Vec<Op> = Vec::new();
    let mut open = false;
    for (i, a) in sorted.iter().enumerate() {
        let r = &a.record;
        let same = i > 0 && {
            let p = &sorted[i - 1].record;
            (p.gate, p.op, p.scan_id) == (r.gate, r.op, r.scan_id) && r.op != OpKind::Status
        };
        if same && !open {
            let op = ops.last_mut().expect("an op before its resend");
            if changes_state(op.answer) {
                resend_agrees(op, a)?;
                op.lines.push(a.line);
                continue;
            }
        }
        if same && open {
            let op = ops.last_mut().expect("an op before its resend");
            op.lines.push(a.line);
            if r.answer != Answer::Indeterminate {
                answer(op, a);
                open = false;
            }
            continue;
        }
        ops.push(Op {
            gate: r.gate,
            kind: r.op,
            scan_id: r.scan_id,
            lines: vec![a.line],
            invoke_ns: r.invoke_ns,
            return_ns: None,
            wall_lo_ms: r.wall_ms,
            wall_hi_ms: u64::MAX,
            answer: Answer::Indeterminate,
            out_gate: None,
            entries: None,
            inside: None,
        });
        open = r.answer == Answer::Indeterminate;
        if !open {
            answer(ops.last_mut().expect("just pushed"), a);
        }
    }
    ops.sort_by_key(|o| (o.invoke_ns, o.lines[0]));
    Ok(ops)
}

/// A check-in answered `undone` (its first answer lost, its resend made after its gate undid
/// it) needs that undo in the history.
fn annulled_admits_were_undone(ops: &[Op]) -> Result<(), String> {
    use stile_protocol::OutcomeKind as K;
    let undone = Answer::Outcome(K::Undone);
    let orphan = ops.iter().find(|o| {
        o.kind == OpKind::Checkin
            && o.answer == undone
            && !ops
                .iter()
                .any(|u| u.kind == OpKind::Undo && u.gate == o.gate && u.answer == undone)
    });
    match orphan {
        Some(o) => Err(format!(
            "gate {} scan {} (check-in, line {}) was answered undone, but no undo of that gate \
             was answered undone",
            o.gate,
            o.scan_id.unwrap_or_default(),
            o.lines.last().copied().unwrap_or_default()
        )),
        None => Ok(()),
    }
}

/// Gives `op` the answer attempt `a` got.
fn answer(op: &mut Op, a: &Attempt) {
    let r = &a.record;
    let ret = r
        .return_ns
        .expect("an answered line has ret_ns (checked on reading)");
    op.return_ns = Some(ret);
    op.wall_hi_ms = op
        .wall_lo_ms
        .saturating_add((ret - op.invoke_ns.min(ret)).div_ceil(1_000_000));
    op.answer = r.answer;
    op.out_gate = r.out_gate;
    op.entries = r.entries;
    op.inside = r.inside;
}

/// A resend of a scan that changed state must get the first answer back.
fn resend_agrees(op: &Op, a: &Attempt) -> Result<(), String> {
    use stile_protocol::OutcomeKind as K;
    let r = &a.record;
    let same = r.answer == op.answer
        && r.out_gate
            .is_none_or(|g| op.out_gate.is_none_or(|o| o == g))
        && r.entries.is_none_or(|e| op.entries.is_none_or(|o| o == e));
    let annulled =
        op.answer == Answer::Outcome(K::Admitted) && r.answer == Answer::Outcome(K::Undone);
    if same || annulled || r.answer == Answer::Indeterminate {
        return Ok(());
    }
    Err(format!(
        "gate {} resent scan {} ({}) at line {} and was answered {} there, but {} at line {}: \
         a resend must get the first answer",
        r.gate,
        r.scan_id.unwrap_or_default(),
        r.op.name(),
        a.line,
        r.answer.name(),
        op.answer.name(),
        op.lines.last().copied().unwrap_or_default(),
    ))
}

/// How a ticket's search ended.
#[derive(Debug)]
enum Search {
    /// An order fits.
    Found,
    /// The search limit was reached.
    Limit,
    /// No order fits: the longest order that fits as far as it goes, and the ops that could
    /// come next there but fit nothing.
    Stuck { order: Vec<usize>, next: Vec<usize> },
}

/// Fixed-size set of op indexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)].into_boxed_slice())
    }
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn flip(&mut self, i: usize) {
        self.0[i / 64] ^= 1 << (i % 64);
    }
}

/// One level of the depth-first search.
#[derive(Debug)]
struct Frame {
    /// The state after the ops placed so far.
    state: State,
    /// The next op index to try here.
    cursor: usize,
}

/// The search: ops are sorted by invocation. An op may come next when it was invoked before
/// every answered op not yet placed had returned; an answered op must be placed, an
/// unanswered one may be placed (if it changes something) or left out. Every (placed set,
/// state) pair is visited once.
fn search(model: &Model<'_>, limit: u64) -> Search {
    let ops = model.ops;
    let n = ops.len();
    let answered = ops.iter().filter(|o| !o.indeterminate()).count();
    let mut placed = Bits::new(n);
    let mut placed_answered = 0;
    let mut order: Vec<usize> = Vec::new();
    let mut deepest: Vec<usize> = Vec::new();
    let mut seen: HashSet<(Bits, State)> = HashSet::new();
    let mut frames = vec![Frame {
        state: State::default(),
        cursor: 0,
    }];
    seen.insert((placed.clone(), State::default()));
    while let Some(top) = frames.len().checked_sub(1) {
        if placed_answered == answered {
            return Search::Found;
        }
        let horizon = horizon(ops, &placed);
        let state = frames[top].state;
        let mut pushed = None;
        while frames[top].cursor < n && pushed.is_none() {
            let i = frames[top].cursor;
            frames[top].cursor += 1;
            if placed.has(i) {
                continue;
            }
            if ops[i].invoke_ns > horizon {
                frames[top].cursor = n;
                break;
            }
            let Some(next) = model.step(state, i) else {
                continue;
            };
            placed.flip(i);
            if seen.insert((placed.clone(), next)) {
                pushed = Some((i, next));
            } else {
                placed.flip(i);
            }
        }
        match pushed {
            Some((i, next)) => {
                if seen.len() as u64 > limit {
                    return Search::Limit;
                }
                order.push(i);
                placed_answered += usize::from(!ops[i].indeterminate());
                if order.len() > deepest.len() {
                    deepest.clone_from(&order);
                }
                frames.push(Frame {
                    state: next,
                    cursor: 0,
                });
            }
            None => {
                frames.pop();
                if let Some(i) = order.pop() {
                    placed.flip(i);
                    placed_answered -= usize::from(!ops[i].indeterminate());
                }
            }
        }
    }
    let mut at = Bits::new(n);
    for &i in &deepest {
        at.flip(i);
    }
    let horizon = horizon(ops, &at);
    let next = (0..n)
        .filter(|&i| !at.has(i) && !ops[i].indeterminate() && ops[i].invoke_ns <= horizon)
        .collect();
    Search::Stuck {
        order: deepest,
        next,
    }
}

/// The earliest return among answered ops not yet placed: no op invoked after it may come
/// before it.
fn horizon(ops: &[Op], placed: &Bits) -> u64 {
    ops.iter()
        .enumerate()
        .filter(|(i, _)| !placed.has(*i))
        .filter_map(|(_, o)| o.return_ns)
        .min()
        .unwrap_or(u64::MAX)
}

/// A violation's text: the longest order that fits, and what could not follow it.
fn describe(model: &Model<'_>, order: &[usize], next: &[usize]) -> String {
    let ops = model.ops;
    let t0 = ops.iter().map(|o| o.invoke_ns).min().unwrap_or(0);
    let mut state = State::default();
    for &i in order {
        state = model
            .step(state, i)
            .expect("the order was found by the search");
    }
    let mut text = format!(
        "no order of its {} operations fits one atomic ticket\n  longest order that fits ({} \
         operations, last {} shown):",
        ops.len(),
        order.len(),
        order.len().min(REPORT_OPS_MAX)
    );
    for &i in &order[order.len().saturating_sub(REPORT_OPS_MAX)..] {
        text.push_str(&format!("\n    {}", show(&ops[i], t0)));
    }
    text.push_str(&format!(
        "\n  there the ticket has {} entries, {}, last event by gate {}; none of these fits next:",
        state.entries,
        if state.inside { "inside" } else { "outside" },
        model.last_gate(state)
    ));
    for &i in next.iter().take(REPORT_OPS_MAX) {
        text.push_str(&format!("\n    {}", show(&ops[i], t0)));
    }
    text
}

/// One op on one line: where it is in the file, what it asked, what it got and when.
fn show(op: &Op, t0: u64) -> String {
    let ms = |ns: u64| (ns - t0) as f64 / 1e6;
    let lines: Vec<String> = op.lines.iter().map(|l| l.to_string()).collect();
    let mut s = format!(
        "line {}: gate {} {}",
        lines.join(","),
        op.gate,
        op.kind.name()
    );
    if let Some(id) = op.scan_id {
        s.push_str(&format!(" scan {id}"));
    }
    s.push_str(&format!(" -> {}", op.answer.name()));
    let mut details = Vec::new();
    if let Some(g) = op.out_gate {
        details.push(format!("gate {g}"));
    }
    if let Some(e) = op.entries {
        details.push(format!("entries {e}"));
    }
    if let Some(i) = op.inside {
        details.push(if i { "inside" } else { "outside" }.to_string());
    }
    if !details.is_empty() {
        s.push_str(&format!(" ({})", details.join(", ")));
    }
    match op.return_ns {
        Some(r) => s.push_str(&format!(", {:.3}..{:.3} ms", ms(op.invoke_ns), ms(r))),
        None => s.push_str(&format!(", from {:.3} ms", ms(op.invoke_ns))),
    }
    s
}
