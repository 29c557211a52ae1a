//! What a node answers to a check-in, exit or undo.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

/// Declares the outcome kinds once: each kind's variant, wire value and name, and from them
/// [`OutcomeKind::ALL`], [`OutcomeKind::from_u8`], [`OutcomeKind::name`] and
/// [`OutcomeKind::from_name`], which the codec, the node's metrics and `stile stat` use.
macro_rules! outcome_kinds {
    ($( $(#[$doc:meta])* $variant:ident = $byte:literal, $name:literal; )*) => {
        /// The kind of answer. The numbers are the wire values and never change.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum OutcomeKind {
            $( $(#[$doc])* $variant = $byte, )*
        }

        impl OutcomeKind {
            /// Every kind, in wire order.
            pub const ALL: [OutcomeKind; [$($byte),*].len()] = [$(OutcomeKind::$variant),*];

            /// The wire value back to a kind.
            pub fn from_u8(v: u8) -> Option<Self> {
                Self::ALL.get(v as usize).copied()
            }

            /// The snake_case name operators and scripts see (`admitted`, `already_used`, …).
            pub const fn name(self) -> &'static str {
                match self {
                    $(OutcomeKind::$variant => $name,)*
                }
            }

            /// The kind with this name.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|k| k.name() == name)
            }
        }
    };
}

outcome_kinds! {
    /// Open the gate: the ticket is now used (or one more entry is counted).
    Admitted = 0, "admitted";
    /// Keep it shut: the ticket was used before (when and at which gate: see the outcome).
    AlreadyUsed = 1, "already_used";
    /// The ticket's validity has not started.
    NotYetValid = 2, "not_yet_valid";
    /// The ticket's validity has ended.
    Expired = 3, "expired";
    /// The ticket was revoked or transferred to someone else.
    Revoked = 4, "revoked";
    /// Not a code we signed: bad length, symbol, key or tag (or a stale rotating code).
    Forged = 5, "forged";
    /// Signed, but no such ticket here (never minted, or another node's partition).
    Unknown = 6, "unknown";
    /// A ticket of another provider than the gate's.
    WrongProvider = 7, "wrong_provider";
    /// This gate sent too many forged or unknown codes; slow down.
    RateLimited = 8, "rate_limited";
    /// Exit recorded: the holder is now outside.
    Exited = 9, "exited";
    /// Exit refused: the ticket is not inside (or does not record exits).
    NotInside = 10, "not_inside";
    /// Undo done: the gate's last admit of this ticket is annulled.
    Undone = 11, "undone";
    /// Undo refused: not this gate's last admit, or the undo window has passed.
    NotUndoable = 12, "not_undoable";
    /// Not recorded: the node's disk is full, so it makes no change it cannot log. The
    /// ticket is unchanged; the same scan succeeds once the operator frees space.
    DiskFull = 13, "disk_full";
}

impl OutcomeKind {
    /// Whether the gate should open (or, for exits, let the holder out).
    pub const fn opens_gate(self) -> bool {
        matches!(self, OutcomeKind::Admitted | OutcomeKind::Exited)
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An answer with its details. Which details are set depends on the kind; unset ones are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// What happened.
    pub kind: OutcomeKind,
    /// The gate of the event named: the admitting gate for `admitted`, the earlier gate for
    /// `already_used`, the gate of the exit or undo.
    pub gate: u16,
    /// Entries counted on the ticket after this answer (multi-entry and day passes).
    pub entries: u8,
    /// Unix seconds of the event named: admit time, earlier use for `already_used`, start of
    /// validity for `not_yet_valid`, end for `expired`, revocation for `revoked`.
    pub at_unix_s: u64,
}

impl Outcome {
    /// An outcome with no details.
    pub const fn bare(kind: OutcomeKind) -> Self {
        Outcome {
            kind,
            gate: 0,
            entries: 0,
            at_unix_s: 0,
        }
    }

    /// `forged`.
    pub const FORGED: Outcome = Outcome::bare(OutcomeKind::Forged);
    /// `unknown`.
    pub const UNKNOWN: Outcome = Outcome::bare(OutcomeKind::Unknown);
    /// `wrong_provider`.
    pub const WRONG_PROVIDER: Outcome = Outcome::bare(OutcomeKind::WrongProvider);
    /// `rate_limited`.
    pub const RATE_LIMITED: Outcome = Outcome::bare(OutcomeKind::RateLimited);
    /// `disk_full`.
    pub const DISK_FULL: Outcome = Outcome::bare(OutcomeKind::DiskFull);

    /// One line a person at the gate can act on.
    pub fn message(&self) -> String {
        let at = || format_unix_s(self.at_unix_s);
        match self.kind {
            OutcomeKind::Admitted if self.entries > 1 => {
                format!("admitted at gate {} (entry {})", self.gate, self.entries)
            }
            OutcomeKind::Admitted => format!("admitted at gate {}", self.gate),
            OutcomeKind::AlreadyUsed => {
                format!("already used at {} by gate {}", at(), self.gate)
            }
            OutcomeKind::NotYetValid => format!("not valid before {}", at()),
            OutcomeKind::Expired => format!("expired at {}", at()),
            OutcomeKind::Revoked => format!("revoked or transferred at {}", at()),
            OutcomeKind::Forged => {
                "not a genuine code: bad signature, key or format (forged or mistyped)".into()
            }
            OutcomeKind::Unknown => "genuine code, but no such ticket on this node".into(),
            OutcomeKind::WrongProvider => {
                "ticket of another provider; not valid at this gate".into()
            }
            OutcomeKind::RateLimited => {
                "too many forged or unknown codes from this gate; try again shortly".into()
            }
            OutcomeKind::Exited => format!("exit recorded at gate {}", self.gate),
            OutcomeKind::NotInside => "exit refused: ticket is not inside".into(),
            OutcomeKind::Undone => format!("admit at gate {} annulled", self.gate),
            OutcomeKind::NotUndoable => {
                "undo refused: not this gate's last admit, or the undo window has passed".into()
            }
            OutcomeKind::DiskFull => "not recorded: the node's disk is full, so it takes no \
                                      changes; the ticket is unchanged, try again shortly"
                .into(),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message())
    }
}

/// The last second RFC 3339 can write: 9999-12-31T23:59:59Z.
pub const UNIX_S_MAX: u64 = 253_402_300_799;

/// RFC 3339 in UTC, to the second. Times past the year 9999 (a node refuses them in new
/// policies) are written as its last second.
pub fn format_unix_s(unix_s: u64) -> String {
    let s = unix_s.min(UNIX_S_MAX);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_roundtrip_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for (i, kind) in OutcomeKind::ALL.iter().enumerate() {
            assert_eq!(*kind as u8 as usize, i);
            assert_eq!(OutcomeKind::from_u8(i as u8), Some(*kind));
            assert!(names.insert(kind.name()));
        }
        assert_eq!(OutcomeKind::from_u8(14), None);
    }

    #[test]
    fn times_past_the_year_9999_are_written_as_its_last_second() {
        assert_eq!(format_unix_s(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_s(UNIX_S_MAX), "9999-12-31T23:59:59Z");
        for t in [UNIX_S_MAX + 1, 99_999_999_999_999, u64::MAX] {
            assert_eq!(format_unix_s(t), "9999-12-31T23:59:59Z");
        }
    }

    #[test]
    fn already_used_message_names_time_and_gate() {
        let o = Outcome {
            kind: OutcomeKind::AlreadyUsed,
            gate: 17,
            entries: 1,
            at_unix_s: 1_795_000_000,
        };
        assert_eq!(
            o.message(),
            "already used at 2026-11-18T11:06:40Z by gate 17"
        );
    }
}
