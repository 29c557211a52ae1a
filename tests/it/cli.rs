//! The command line as a user meets it: `stile up` in one process, `stile mint` and
//! `stile check` in others, with no flags but where the data dir and port are.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn stile(data: &Path, node: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(args)
        .arg("--data")
        .arg(data)
        .args(["--node", node])
        .output()
        .unwrap()
}

#[test]
fn up_mint_check_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("stile-data");
    let mut up = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["up", "--quic", "127.0.0.1:0"])
        .arg("--data")
        .arg(&data)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(up.stderr.take().unwrap());
    let mut said = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "stile up ended: {said}"
        );
        said.push_str(&line);
        if let Some(rest) = line.split("node on quic://").nth(1) {
            break rest.split(',').next().unwrap().to_string();
        }
    };
    // It tells the user what to run next, and made the dev certificates.
    while !said.contains("stile check") {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "{said}");
        said.push_str(&line);
    }
    assert!(said.contains("stile mint"), "{said}");
    for f in [
        "ca.crt",
        "node.crt",
        "admin-admin.crt",
        "gate-1.crt",
        "crl.pem",
    ] {
        assert!(data.join("tls").join(f).exists(), "{f}");
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));

    let minted = stile(&data, &addr, &["mint", "--count", "3"]);
    assert!(minted.status.success(), "{minted:?}");
    let stdout = String::from_utf8(minted.stdout).unwrap();
    let codes: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        codes.len(),
        3,
        "one code a line and nothing else: {stdout:?}"
    );
    for c in &codes {
        stile_protocol::CodeBytes::parse(c).unwrap();
    }

    let first = stile(&data, &addr, &["check", codes[0]]);
    assert!(first.status.success(), "{first:?}");
    let line = String::from_utf8(first.stdout).unwrap();
    let fields: Vec<&str> = line.trim_end().split('\t').collect();
    assert_eq!(fields[..2], [codes[0], "admitted"], "{line}");

    let again = stile(&data, &addr, &["check", "--json", codes[0], "NOT-A-CODE"]);
    assert_eq!(again.status.code(), Some(2), "a refusal exits 2");
    let out = String::from_utf8(again.stdout).unwrap();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["outcome"], "already_used");
    assert_eq!(lines[0]["gate"], 1);
    assert_eq!(lines[1]["outcome"], "forged");

    // A stopped node: a clear error, exit 1.
    // SAFETY: kill(2) on our own child with a valid signal number.
    assert_eq!(unsafe { libc::kill(up.id() as i32, libc::SIGTERM) }, 0);
    assert!(
        up.wait().unwrap().success(),
        "SIGTERM ends stile up cleanly"
    );
    let down = stile(&data, &addr, &["check", codes[1]]);
    assert_eq!(down.status.code(), Some(1));
    let msg = String::from_utf8(down.stderr).unwrap();
    assert!(msg.starts_with("stile: "), "{msg}");
}
