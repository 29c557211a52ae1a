//! The command line as a user meets it: `stile up` in one process, `stile mint` and
//! `stile check` in others, with no flags but where the data dir and port are.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{read_up_quic_address, sigterm};

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
        .args(["up", "--quic", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The friendly text is on stdout, whole lines, no log line among them.
    let mut out = BufReader::new(up.stdout.take().unwrap());
    let (addr, mut said) = read_up_quic_address(&mut out);
    // It tells the user what to run next, and made the dev certificates.
    while !said.contains(" check ") {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "{said}");
        said.push_str(&line);
    }
    assert!(!said.contains("INFO"), "a log line on stdout: {said}");
    for f in [
        "ca.crt",
        "node.crt",
        "admin-admin.crt",
        "gate-1.crt",
        "crl.pem",
    ] {
        assert!(data.join("tls").join(f).exists(), "{f}");
    }
    let err = up.stderr.take().unwrap();
    let logs = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));

    // The commands it printed work as pasted: this binary by the path it was started by,
    // the data dir and the address included.
    let pasted = |verb: &str| -> String {
        let line = said
            .lines()
            .find(|l| l.contains(&format!(" {verb} --data ")))
            .unwrap_or_else(|| panic!("no {verb} command in {said}"));
        let command = line.split('#').next().unwrap().trim().to_string();
        assert!(
            command.starts_with(env!("CARGO_BIN_EXE_stile")),
            "{command}"
        );
        command
    };
    let minted = Command::new("sh")
        .args(["-c", &pasted("mint")])
        .current_dir(dir.path())
        .output()
        .unwrap();
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
    let first = Command::new("sh")
        .args(["-c", &pasted("check").replace("CODE", codes[0])])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(first.status.success(), "{first:?}");
    let line = String::from_utf8(first.stdout).unwrap();
    let fields: Vec<&str> = line.trim_end().split('\t').collect();
    assert_eq!(fields[..2], [codes[0], "admitted"], "{line}");

    // A command closes its connection as it exits, rather than leaving the node to find it
    // gone at its idle timeout (30 s) and to wait on it when it shuts down: soon only the
    // gateway's connection and the reading one remain.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stat = stile(&data, &addr, &["stat", "--once", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&stat.stdout).unwrap();
        if v["connections"] == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

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

    // Transfer: OLD<TAB>NEW; asked again (say, after a lost answer), the same NEW.
    let moved = stile(&data, &addr, &["transfer", codes[1]]);
    assert!(moved.status.success(), "{moved:?}");
    let line = String::from_utf8(moved.stdout).unwrap();
    let (old, new) = line.trim_end().split_once('\t').unwrap();
    assert_eq!(old, codes[1]);
    stile_protocol::CodeBytes::parse(new).unwrap();
    let again = stile(&data, &addr, &["transfer", codes[1]]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(String::from_utf8(again.stdout).unwrap(), line);
    let status = stile(&data, &addr, &["status", codes[1], new]);
    let out = String::from_utf8(status.stdout).unwrap();
    let states: Vec<&str> = out.lines().map(|l| l.split('\t').nth(1).unwrap()).collect();
    assert_eq!(states, ["revoked", "valid"], "{out}");
    // A revoked ticket has no successor: transferring it is refused (exit 2).
    let revoked = stile(&data, &addr, &["revoke", codes[2]]);
    assert!(revoked.status.success(), "{revoked:?}");
    let refused = stile(&data, &addr, &["transfer", codes[2]]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");

    // The data dir is this process's: a second node, or a key command, is refused before it
    // reads the log (a second reader would cut the live log's tail as torn and mint the
    // same serials), and the running node goes on undisturbed.
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_stile"))
            .args(args)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap()
    };
    let holder = format!("in use by another process (pid {})", up.id());
    for args in [
        &["node", "--listen", "127.0.0.1:0"][..],
        &["keys", "rotate"][..],
    ] {
        let second = run(args);
        assert_eq!(second.status.code(), Some(1), "{args:?}: {second:?}");
        let msg = String::from_utf8(second.stderr).unwrap();
        assert!(msg.contains(&holder), "{args:?}: {msg}");
    }
    let status = stile(&data, &addr, &["status", codes[0]]);
    let out = String::from_utf8(status.stdout).unwrap();
    assert_eq!(out.split('\t').nth(1), Some("used"), "{out}");
    // A validity that starts later says when, in text as in JSON.
    let later = stile(
        &data,
        &addr,
        &[
            "mint",
            "--count",
            "1",
            "--valid-from",
            "2094-01-01T00:00:00Z",
        ],
    );
    assert!(later.status.success(), "{later:?}");
    let code = String::from_utf8(later.stdout).unwrap();
    let status = stile(&data, &addr, &["status", code.trim()]);
    let out = String::from_utf8(status.stdout).unwrap();
    assert!(out.contains("from 2094-01-01"), "{out}");
    // A gateway given a gate's certificate says so at once, rather than failing every
    // booking later.
    let tls = data.join("tls");
    let gateway = stile(
        &data,
        &addr,
        &[
            "gateway",
            "--http",
            "127.0.0.1:0",
            "--cert",
            tls.join("gate-1.crt").to_str().unwrap(),
            "--key",
            tls.join("gate-1.key").to_str().unwrap(),
        ],
    );
    assert_eq!(gateway.status.code(), Some(1), "{gateway:?}");
    let msg = String::from_utf8(gateway.stderr).unwrap();
    assert!(msg.contains("needs an admin certificate"), "{msg}");

    // A stopped node: a clear error, exit 1.
    // SAFETY: kill(2) on our own child with a valid signal number.
    assert_eq!(unsafe { libc::kill(up.id() as i32, libc::SIGTERM) }, 0);
    assert!(
        up.wait().unwrap().success(),
        "SIGTERM ends stile up cleanly"
    );
    // Logs went to stderr, and only logs.
    let logs = logs.join().unwrap();
    assert!(logs.contains("INFO"), "{logs}");
    assert!(
        !logs.contains("another terminal"),
        "friendly text among the logs: {logs}"
    );
    let down = stile(&data, &addr, &["check", codes[0]]);
    assert_eq!(down.status.code(), Some(1));
    let msg = String::from_utf8(down.stderr).unwrap();
    assert!(msg.starts_with("stile: "), "{msg}");
    // Stopped, it lets the data dir go.
    let keys = run(&["keys", "list"]);
    assert!(keys.status.success(), "{keys:?}");
    // A mistyped data dir is not made into a new one with a key of its own.
    let typo = dir.path().join("stile-dat");
    let keys = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["keys", "list", "--data"])
        .arg(&typo)
        .output()
        .unwrap();
    assert_eq!(keys.status.code(), Some(1), "{keys:?}");
    assert!(
        String::from_utf8_lossy(&keys.stderr).contains("no key ring"),
        "{keys:?}"
    );
    assert!(!typo.exists());
}

#[test]
fn up_demo_serves_ticket_pages_and_the_gateway_command_runs_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("stile-data");
    let mut up = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "up",
            "--quic",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--demo",
        ])
        .arg("--data")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(up.stdout.take().unwrap());
    let mut lines = Vec::new();
    while lines.iter().filter(|l: &&String| l.contains("/t/")).count() < 3 {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "stile up ended: {lines:?}"
        );
        lines.push(line.trim().to_string());
    }
    let base = lines
        .iter()
        .find_map(|l| l.strip_prefix("stile gateway listening on "))
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_string();
    let pages: Vec<&String> = lines.iter().filter(|l| l.contains("/t/")).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async {
        let http = reqwest::Client::new();
        for page in &pages {
            assert!(page.starts_with(&format!("{base}/t/")), "{page}");
            let res = http.get(page.as_str()).send().await.unwrap();
            assert_eq!(res.status(), 200);
            assert!(res.text().await.unwrap().contains("data-state=\"valid\""));
        }
        let health = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
    });
    // Node alone, then `stile gateway` against it, from the same data dir.
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    let mut node = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["node", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(node.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let quic = line.trim().rsplit("quic://").next().unwrap().to_string();
    let mut gw = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "gateway",
            "--http",
            "127.0.0.1:0",
            "--node",
            &quic,
            "--data",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(gw.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base2 = line
        .trim()
        .strip_prefix("stile gateway listening on ")
        .unwrap()
        .to_string();
    rt.block_on(async {
        // The bookings made by `up --demo` are in the gateway's database, still valid.
        let code = pages[0].rsplit('/').next().unwrap();
        let res = reqwest::get(format!("{base2}/v1/tickets/{code}"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["state"], "valid", "{v}");
        assert_eq!(v["stale"], false, "the node answered");
    });
    // A second gateway on the same data dir is refused, and says why.
    let second = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args([
            "gateway",
            "--http",
            "127.0.0.1:0",
            "--node",
            &quic,
            "--data",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{said}");
    assert!(said.contains("another gateway is already using"), "{said}");
    for child in [&mut gw, &mut node] {
        sigterm(child);
        assert!(child.wait().unwrap().success());
    }
}

/// Regression: with its directory deleted, the gateway went on committing bookings into
/// unlinked files, and the next start began with an empty database. It stops instead.
#[test]
fn a_gateway_whose_directory_is_deleted_stops() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("stile-data");
    let mut up = Command::new(env!("CARGO_BIN_EXE_stile"))
        .args(["up", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(up.stdout.take().unwrap());
    let mut said = String::new();
    while !said.contains("stile gateway listening on") {
        assert!(out.read_line(&mut said).unwrap() > 0, "{said}");
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    std::fs::remove_dir_all(data.join("gateway")).unwrap();
    let status = crate::support::exit_within_a_minute(&mut up, "the gateway");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
}

/// `--help` states defaults as clap does, one name for the QUIC address (the other an
/// alias), and the exit statuses where they matter.
#[test]
fn help_states_defaults_one_name_and_exit_statuses() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_stile"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let up = help(&["up"]);
    for want in [
        "--listen <LISTEN>",
        "[alias: --quic]",
        "[default: stile-data]",
        "[default: 127.0.0.1:7443]",
        "[default: 127.0.0.1:8080]",
        "[default: always]",
    ] {
        assert!(up.contains(want), "{want:?} not in:\n{up}");
    }
    assert!(help(&["node"]).contains("[alias: --quic]"));
    let check = help(&["check"]);
    assert!(
        check.contains("Exit status: 0 every code opened the gate")
            && check.contains("2 any did not"),
        "{check}"
    );
    assert!(help(&["status"]).contains("Exit status:"));
    assert!(help(&["mint"]).contains("Exit status:"));
}
