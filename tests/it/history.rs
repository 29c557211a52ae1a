//! `stile history check` on files as a load tester would write them: the exit status says
//! consistent (0), violation (2), undecided (3) or unreadable (1).

use std::process::{Command, Output};

/// A single-entry ticket and its first admit, at gate 1.
const ADMITTED: &str = r#"{"t":"history","version":1}
{"t":"ticket","code":"A","max_entries":1,"exits":false,"undo_s":60}
{"t":"op","gate":1,"code":"A","op":"checkin","scan":1,"inv_ns":0,"ret_ns":10000000,"wall_ms":1800000000000,"out":"admitted","out_gate":1,"entries":1}
"#;

fn check(history: &str, args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("history.jsonl");
    std::fs::write(&file, history).unwrap();
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["history", "check"])
        .arg(&file)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stdout).into_owned() + &String::from_utf8_lossy(&stderr);
    (status.code(), text)
}

/// An op line at gate `gate`, invoked at `inv_ms`, answered `out` at `inv_ms + 5`.
fn op(gate: u16, scan: u64, inv_ms: u64, out: &str) -> String {
    format!(
        r#"{{"t":"op","gate":{gate},"code":"A","op":"checkin","scan":{scan},"inv_ns":{},"ret_ns":{},"wall_ms":{},"out":{out}}}"#,
        inv_ms * 1_000_000,
        (inv_ms + 5) * 1_000_000,
        1_800_000_000_000 + inv_ms,
    ) + "\n"
}

#[test]
fn history_check_exit_status_tells_consistent_violation_undecided_and_bad_file() {
    // A resend answered with the first answer, and a later gate told who used the ticket.
    let fine = format!(
        "{ADMITTED}{}{}",
        op(1, 1, 20, r#""admitted","out_gate":1,"entries":1"#),
        op(2, 1, 30, r#""already_used","out_gate":1,"entries":1"#),
    );
    let (code, text) = check(&fine, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        text.trim(),
        "consistent: 2 operations on 1 tickets (0 indeterminate)"
    );

    // A lost acknowledged admit: a later scan admitted again.
    let twice = format!(
        "{ADMITTED}{}",
        op(2, 1, 30, r#""admitted","out_gate":2,"entries":1"#)
    );
    let (code, text) = check(&twice, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.starts_with("violation: ticket A: "), "{text}");
    assert!(
        text.contains("line 4: gate 2 checkin scan 1 -> admitted"),
        "{text}"
    );

    // Many overlapping reads and a double admit: too many orders for a tiny limit.
    let mut crowded = ADMITTED.to_string();
    for gate in 10..24 {
        crowded += &format!(
            r#"{{"t":"op","gate":{gate},"code":"A","op":"status","inv_ns":1,"ret_ns":9000000,"wall_ms":1800000000000,"out":"valid","entries":0}}"#
        );
        crowded += "\n";
    }
    crowded += &op(2, 1, 1, r#""admitted","out_gate":2,"entries":1"#);
    let (code, text) = check(&crowded, &["--search-limit", "1000"]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.starts_with("undecided: ticket A"), "{text}");
    assert_eq!(check(&crowded, &[]).0, Some(2));

    // A bad line is named by number.
    let bad = format!("{ADMITTED}{}", op(2, 1, 30, r#""admited""#));
    let (code, text) = check(&bad, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("line 4: \"admited\" is not an outcome name"),
        "{text}"
    );
    let (code, text) = check(ADMITTED, &["--clock-skew", "soon"]);
    assert_eq!(code, Some(2), "bad arguments: {text}");
}
