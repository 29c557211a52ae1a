//! The history file: JSON lines, documented in `docs/FORMAT.md` §12. A reader
//! ([`parse`]) and a writer ([`write_header`], [`write_ticket`], [`write_op`]) that formats
//! lines with `write!` and no intermediate value, so a load tester can record every
//! operation cheaply.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, Read, Write};

use serde::Deserialize;
use stile_protocol::OutcomeKind;

/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;
/// Most entries a ticket counts (the engine's state word saturates there).
pub const ENTRIES_MAX: u8 = stile_protocol::limits::ENTRIES_MAX;
/// Longest line accepted, in bytes: a line is a few hundred bytes; an imported code is
/// bounded well below this.
pub const LINE_MAX_BYTES: usize = 64 * 1024;

/// A ticket's rules, as the engine's policy states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// No entry before this Unix second.
    pub valid_from_unix_s: Option<u64>,
    /// No entry after this Unix second.
    pub valid_until_unix_s: Option<u64>,
    /// Valid for this many seconds from the first scan.
    pub valid_for_s: Option<u32>,
    /// Entries allowed (0: unlimited).
    pub max_entries: u8,
    /// Entry and exit alternate.
    pub exits: bool,
    /// How long after an admit the admitting gate may undo it, in seconds.
    pub undo_window_s: u32,
}

impl Policy {
    /// A single-entry ticket with no time limits and a 60 s undo window.
    pub const SINGLE: Policy = Policy {
        valid_from_unix_s: None,
        valid_until_unix_s: None,
        valid_for_s: None,
        max_entries: 1,
        exits: false,
        undo_window_s: 60,
    };
}

/// What a gate asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// Check in (entry).
    Checkin,
    /// Check out.
    Exit,
    /// Annul the gate's last admit.
    Undo,
    /// Read the ticket's state.
    Status,
}

impl OpKind {
    /// The name in the file.
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::Checkin => "checkin",
            OpKind::Exit => "exit",
            OpKind::Undo => "undo",
            OpKind::Status => "status",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [OpKind::Checkin, OpKind::Exit, OpKind::Undo, OpKind::Status]
            .into_iter()
            .find(|k| k.name() == name)
    }

    /// Whether the node would answer `kind` to this op at all.
    fn may_answer(self, kind: OutcomeKind) -> bool {
        use OutcomeKind as K;
        let own: &[K] = match self {
            // `undone`: a resend of an admit its gate has since undone.
            OpKind::Checkin => &[
                K::Admitted,
                K::AlreadyUsed,
                K::NotYetValid,
                K::Expired,
                K::Undone,
            ],
            OpKind::Exit => &[K::Exited, K::NotInside],
            OpKind::Undo => &[K::Undone, K::NotUndoable],
            OpKind::Status => &[],
        };
        let any = [
            K::Revoked,
            K::Forged,
            K::Unknown,
            K::WrongProvider,
            K::RateLimited,
            K::DiskFull,
        ];
        self != OpKind::Status && (own.contains(&kind) || any.contains(&kind))
    }
}

/// A ticket's state as a status read names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateName {
    /// Usable.
    Valid,
    /// Spent.
    Used,
    /// Past its validity, never spent.
    Expired,
    /// Revoked or transferred away.
    Revoked,
}

impl StateName {
    /// The name in the file (the node's status names).
    pub const fn name(self) -> &'static str {
        match self {
            StateName::Valid => "valid",
            StateName::Used => "used",
            StateName::Expired => "expired",
            StateName::Revoked => "revoked",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            StateName::Valid,
            StateName::Used,
            StateName::Expired,
            StateName::Revoked,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// What came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// No answer (timeout, lost connection): the op may or may not have taken effect.
    Indeterminate,
    /// The outcome of a check-in, exit or undo.
    Outcome(OutcomeKind),
    /// The state a status read named.
    State(StateName),
}

impl Answer {
    /// The name in the file.
    pub fn name(&self) -> &'static str {
        match self {
            Answer::Indeterminate => "indeterminate",
            Answer::Outcome(k) => k.name(),
            Answer::State(s) => s.name(),
        }
    }
}

/// One attempt of one operation, as a line records it (the ticket's code aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The gate that asked.
    pub gate: u16,
    /// What it asked.
    pub op: OpKind,
    /// The gate's scan id (check-in, exit, undo); a resend carries the same one.
    pub scan_id: Option<u64>,
    /// When the request was sent, monotonic ns (one clock for the whole history).
    pub invoke_ns: u64,
    /// When the answer came, monotonic ns; for an indeterminate op, when the tester gave up
    /// (or absent).
    pub return_ns: Option<u64>,
    /// Wall clock at invoke, Unix ms: what validity is judged by.
    pub wall_ms: u64,
    /// The answer.
    pub answer: Answer,
    /// The gate the answer names (admitted, already_used, exited, undone, status).
    pub out_gate: Option<u16>,
    /// The entry count the answer carries.
    pub entries: Option<u8>,
    /// Whether a status read says the holder is inside.
    pub inside: Option<bool>,
}

/// A declared ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Its code, as scanned.
    pub code: String,
    /// Its rules.
    pub policy: Policy,
    /// The line that declared it (1-based).
    pub line: usize,
}

/// One line's operation, with the ticket it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Line number (1-based).
    pub line: usize,
    /// Index into [`History::tickets`].
    pub ticket: usize,
    /// What the line says.
    pub record: Record,
}

/// A whole history file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Tickets in the order declared.
    pub tickets: Vec<Ticket>,
    /// Operation lines in file order.
    pub attempts: Vec<Attempt>,
}

/// A line that cannot be read, or a file that cannot.
#[derive(Debug)]
pub struct ParseError {
    /// The line (1-based); 0 when the file itself failed.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for ParseError {}

/// One line as serde sees it.
#[derive(Debug, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Line {
    /// Optional first line: the format version.
    History { version: u32 },
    /// A ticket and its policy.
    Ticket(TicketLine),
    /// One attempt of an operation.
    Op(OpLine),
}

#[derive(Debug, Deserialize)]
struct TicketLine {
    code: String,
    #[serde(default)]
    from: Option<u64>,
    #[serde(default)]
    until: Option<u64>,
    #[serde(default)]
    for_s: Option<u32>,
    max_entries: u8,
    exits: bool,
    undo_s: u32,
}

#[derive(Debug, Deserialize)]
struct OpLine {
    gate: u16,
    code: String,
    op: String,
    #[serde(default)]
    scan: Option<u64>,
    inv_ns: u64,
    #[serde(default)]
    ret_ns: Option<u64>,
    wall_ms: u64,
    out: String,
    #[serde(default)]
    out_gate: Option<u16>,
    #[serde(default)]
    entries: Option<u8>,
    #[serde(default)]
    inside: Option<bool>,
}

/// Reads a history; the first bad line stops it, named by number.
pub fn parse(mut reader: impl BufRead) -> Result<History, ParseError> {
    let mut history = History::default();
    let mut by_code: HashMap<String, usize> = HashMap::new();
    let mut bytes = Vec::with_capacity(512);
    for line in 1.. {
        let err = |message: String| ParseError { line, message };
        bytes.clear();
        // At most one byte past the limit is read: a longer line is refused unread.
        let read = Read::take(&mut reader, LINE_MAX_BYTES as u64 + 1)
            .read_until(b'\n', &mut bytes)
            .map_err(|e| err(format!("cannot read: {e}")))?;
        if read == 0 {
            break;
        }
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        } else if bytes.len() > LINE_MAX_BYTES {
            return Err(err(format!("longer than {LINE_MAX_BYTES} bytes")));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| err(format!("cannot read: not UTF-8 ({e})")))?;
        if text.trim().is_empty() {
            continue;
        }
        let parsed: Line = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        match parsed {
            Line::History { version } if version == VERSION && line == 1 => {}
            Line::History { version } if version != VERSION => {
                return Err(err(format!(
                    "history format version {version}; this stile reads version {VERSION}"
                )))
            }
            Line::History { .. } => return Err(err("the header must be the first line".into())),
            Line::Ticket(t) => {
                let policy = ticket_policy(&t).map_err(err)?;
                if by_code.contains_key(&t.code) {
                    return Err(err(format!("ticket {} is declared twice", t.code)));
                }
                by_code.insert(t.code.clone(), history.tickets.len());
                history.tickets.push(Ticket {
                    code: t.code,
                    policy,
                    line,
                });
            }
            Line::Op(o) => {
                let Some(&ticket) = by_code.get(&o.code) else {
                    return Err(err(format!(
                        "ticket {} has no \"ticket\" line before its first operation",
                        o.code
                    )));
                };
                let record = op_record(&o).map_err(err)?;
                history.attempts.push(Attempt {
                    line,
                    ticket,
                    record,
                });
            }
        }
    }
    Ok(history)
}

fn ticket_policy(t: &TicketLine) -> Result<Policy, String> {
    if t.max_entries > ENTRIES_MAX {
        return Err(format!(
            "max_entries {} is more than the {ENTRIES_MAX} a ticket counts (0: unlimited)",
            t.max_entries
        ));
    }
    if let (Some(a), Some(b)) = (t.from, t.until) {
        if a > b {
            return Err(format!("validity from {a} is after until {b}"));
        }
    }
    if t.for_s == Some(0) {
        return Err("for_s must be at least 1 (leave it out for no duration)".into());
    }
    Ok(Policy {
        valid_from_unix_s: t.from,
        valid_until_unix_s: t.until,
        valid_for_s: t.for_s,
        max_entries: t.max_entries,
        exits: t.exits,
        undo_window_s: t.undo_s,
    })
}

fn op_record(o: &OpLine) -> Result<Record, String> {
    let op = OpKind::from_name(&o.op)
        .ok_or_else(|| format!("op \"{}\" is not one of checkin, exit, undo, status", o.op))?;
    let answer = if o.out == "indeterminate" {
        Answer::Indeterminate
    } else if op == OpKind::Status {
        Answer::State(StateName::from_name(&o.out).ok_or_else(|| {
            format!(
                "a status names valid, used, expired, revoked or indeterminate, not \"{}\"",
                o.out
            )
        })?)
    } else {
        let kind = OutcomeKind::from_name(&o.out)
            .ok_or_else(|| format!("\"{}\" is not an outcome name", o.out))?;
        if !op.may_answer(kind) {
            return Err(format!("a node never answers {} to {}", o.out, o.op));
        }
        Answer::Outcome(kind)
    };
    if op != OpKind::Status && o.scan.is_none() {
        return Err(format!("a {} needs its scan id (\"scan\")", o.op));
    }
    match o.ret_ns {
        None if answer != Answer::Indeterminate => {
            return Err(format!("answered {} but has no ret_ns", o.out))
        }
        Some(r) if r < o.inv_ns => return Err(format!("ret_ns {r} is before inv_ns {}", o.inv_ns)),
        _ => {}
    }
    Ok(Record {
        gate: o.gate,
        op,
        scan_id: o.scan,
        invoke_ns: o.inv_ns,
        return_ns: o.ret_ns,
        wall_ms: o.wall_ms,
        answer,
        out_gate: o.out_gate,
        entries: o.entries,
        inside: o.inside,
    })
}

/// Writes the optional header line.
pub fn write_header(w: &mut impl Write) -> io::Result<()> {
    writeln!(w, r#"{{"t":"history","version":{VERSION}}}"#)
}

/// Writes a ticket's line; every ticket's line comes before its first operation.
pub fn write_ticket(w: &mut impl Write, code: &str, p: &Policy) -> io::Result<()> {
    w.write_all(br#"{"t":"ticket","code":"#)?;
    write_str(w, code)?;
    if let Some(s) = p.valid_from_unix_s {
        write!(w, r#","from":{s}"#)?;
    }
    if let Some(s) = p.valid_until_unix_s {
        write!(w, r#","until":{s}"#)?;
    }
    if let Some(s) = p.valid_for_s {
        write!(w, r#","for_s":{s}"#)?;
    }
    writeln!(
        w,
        r#","max_entries":{},"exits":{},"undo_s":{}}}"#,
        p.max_entries, p.exits, p.undo_window_s
    )
}

/// Writes one attempt's line.
pub fn write_op(w: &mut impl Write, code: &str, r: &Record) -> io::Result<()> {
    write!(w, r#"{{"t":"op","gate":{},"code":"#, r.gate)?;
    write_str(w, code)?;
    write!(w, r#","op":"{}""#, r.op.name())?;
    if let Some(s) = r.scan_id {
        write!(w, r#","scan":{s}"#)?;
    }
    write!(w, r#","inv_ns":{}"#, r.invoke_ns)?;
    if let Some(t) = r.return_ns {
        write!(w, r#","ret_ns":{t}"#)?;
    }
    write!(w, r#","wall_ms":{},"out":"{}""#, r.wall_ms, r.answer.name())?;
    if let Some(g) = r.out_gate {
        write!(w, r#","out_gate":{g}"#)?;
    }
    if let Some(e) = r.entries {
        write!(w, r#","entries":{e}"#)?;
    }
    if let Some(i) = r.inside {
        write!(w, r#","inside":{i}"#)?;
    }
    w.write_all(b"}\n")
}

/// A JSON string: stile codes (base32) are written as they are; anything else through
/// serde_json's escaping.
fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        write!(w, "\"{s}\"")
    } else {
        serde_json::to_writer(&mut *w, s).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(op: OpKind, answer: Answer) -> Record {
        Record {
            gate: 7,
            op,
            scan_id: (op != OpKind::Status).then_some(42),
            invoke_ns: 1_000,
            return_ns: (answer != Answer::Indeterminate).then_some(2_000),
            wall_ms: 1_800_000_000_000,
            answer,
            out_gate: Some(7),
            entries: Some(1),
            inside: (op == OpKind::Status).then_some(true),
        }
    }

    #[test]
    fn written_lines_read_back_the_same() {
        let policy = Policy {
            valid_from_unix_s: Some(1_800_000_000),
            valid_until_unix_s: Some(1_800_086_400),
            valid_for_s: Some(3_600),
            max_entries: 0,
            exits: true,
            undo_window_s: 30,
        };
        let records = [
            record(OpKind::Checkin, Answer::Outcome(OutcomeKind::Admitted)),
            record(OpKind::Exit, Answer::Indeterminate),
            record(OpKind::Undo, Answer::Outcome(OutcomeKind::NotUndoable)),
            record(OpKind::Status, Answer::State(StateName::Used)),
        ];
        let mut buf = Vec::new();
        write_header(&mut buf).unwrap();
        write_ticket(&mut buf, "ABC-123", &policy).unwrap();
        write_ticket(&mut buf, "imported \"q\"", &Policy::SINGLE).unwrap();
        for r in &records {
            write_op(&mut buf, "ABC-123", r).unwrap();
        }
        let h = parse(&buf[..]).unwrap();
        assert_eq!(h.tickets[0].policy, policy);
        assert_eq!(h.tickets[1].code, "imported \"q\"");
        assert_eq!(h.tickets[1].policy, Policy::SINGLE);
        let back: Vec<Record> = h.attempts.iter().map(|a| a.record).collect();
        assert_eq!(back, records);
        assert_eq!(h.attempts[3].line, 7);
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        let ticket = r#"{"t":"ticket","code":"A","max_entries":1,"exits":false,"undo_s":60}"#;
        let op = r#"{"t":"op","gate":1,"code":"A","op":"checkin","scan":1,"inv_ns":5,"ret_ns":9,"wall_ms":0,"out":"#;
        for (bad, says) in [
            (format!("{op}\"admitted\"}}"), "no \"ticket\" line"),
            ("{not json".to_string(), "key must be a string"),
            (
                format!("{op}\"exited\"}}"),
                "never answers exited to checkin",
            ),
            (format!("{op}\"admited\"}}"), "not an outcome name"),
            (
                op.replace("\"ret_ns\":9,", "") + "\"admitted\"}",
                "no ret_ns",
            ),
            (
                op.replace("\"scan\":1,", "") + "\"admitted\"}",
                "needs its scan id",
            ),
            (ticket.replace(":1,", ":64,"), "more than the 63"),
        ] {
            let first = if bad.contains("\"op\"") && !says.contains("ticket") {
                ticket
            } else {
                ""
            };
            let text = format!("{first}\n\n{bad}\n");
            let e = parse(text.as_bytes()).unwrap_err();
            assert_eq!(e.line, 3, "{bad}: {e}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }
}
