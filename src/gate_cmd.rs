//! `stile gate`: a turnstile's agent. One scanned code a line on stdin, one decision a line
//! on stdout, online when the node answers in time and offline from the gate's replica
//! when it does not.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use stile_certs::Role;
use stile_gate::{Answer, Gate, GateConfig, Mode, Op};
use stile_protocol::outcome::format_unix_s;

use crate::client_cmd::{client_config, Want};
use crate::Conn;

/// Arguments of `stile gate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Reads one scanned code a line on stdin (keyboard-wedge scanners and turnstile controllers work \
this way) and writes one decision a line on stdout, flushed at once: \
CODE<TAB>outcome<TAB>details<TAB>online|offline (--json: one object a line with code, outcome, \
gate, at, entries, mode and reason). `refused` means the gate could not decide: keep the \
barrier shut. Staff-facing status lines (online, OFFLINE and the replica's age) go to stderr.

While the node answers, the gate keeps a replica of its provider's tickets in STATE/replica \
(loaded from the node, then following its changes). Offline, it decides from that replica \
and syncs each decision to STATE/journal before printing it; once the node answers again it \
uploads the journal in order (the node applies each scan once and records conflicts). At the \
end of input it waits until the journal is uploaded or --drain-timeout passes.

Exit status: 0 every line answered and the journal uploaded; 1 the gate could not start \
(certificate, state directory); 3 offline scans are left in the journal at the end (the next \
start of the gate uploads them).")]
pub struct GateArgs {
    /// How to reach the node, and the gate certificate (default DATA/tls/gate-1.crt).
    #[command(flatten)]
    conn: Conn,
    /// The gate's state: replica, journal, scan ids (default DATA/gate-ID).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// How long a scan waits for the node before the gate decides offline (1ms to 1m).
    #[arg(long, default_value = "500ms", value_parser = parse_online_timeout)]
    online_timeout: Duration,
    /// Never decide offline: without the node every scan is refused.
    #[arg(long)]
    no_offline: bool,
    /// The oldest replica the gate decides from offline.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    max_replica_age: Duration,
    /// The gate records exits (a rail exit barrier) rather than entries.
    #[arg(long)]
    exits: bool,
    /// Serve the gate's metrics (OpenMetrics text at /metrics: online, the replica's size,
    /// position and age, clock offset, scans waiting for upload, answers) on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// At the end of input, how long to wait for the journal's upload.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// One JSON object a line.
    #[arg(long)]
    json: bool,
}

/// Runs `stile gate`.
pub fn run(args: GateArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

/// Longest scanned line taken, bytes; the rest of a longer one is read and dropped (the
/// line is then no code: `forged`).
const LINE_MAX: usize = 4096;

/// One line of standard input, without its end, at most [`LINE_MAX`] bytes, bytes that are
/// not UTF-8 replaced (a scanner's garbage is answered `forged`, not fatal); `None` at EOF.
fn read_line(input: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut any = false;
    loop {
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(any.then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let room = LINE_MAX.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = done.unwrap_or(buf.len());
        input.consume(used);
        if done.is_some() {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

/// Whether standard output is open (Rust's stdout takes writes to a closed descriptor as
/// done, and the gate's answers would go nowhere).
fn stdout_open() -> bool {
    // SAFETY: F_GETFD on descriptor 1 reads its flags and changes nothing.
    unsafe { libc::fcntl(1, libc::F_GETFD) != -1 }
}

async fn serve(args: GateArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        stdout_open(),
        "standard output is closed: nobody would see the gate's answers"
    );
    let (client, role) = client_config(&args.conn, Want::Gate, Duration::from_secs(30))?;
    let Some(Role::Gate { id, provider }) = role else {
        anyhow::bail!("stile gate needs a gate certificate (urn:stile:gate:ID:provider:P)");
    };
    let state_dir = args
        .state
        .clone()
        .unwrap_or_else(|| args.conn.data.join(format!("gate-{id}")));
    let gate = Gate::open(GateConfig {
        client,
        gate: id,
        provider,
        state_dir: state_dir.clone(),
        online_timeout: args.online_timeout,
        offline_admits: !args.no_offline,
        max_replica_age: args.max_replica_age,
    })
    .with_context(|| format!("opening the gate's state in {}", state_dir.display()))?;
    if let Some(addr) = args.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics {addr}: cannot listen"))?;
        let g = gate.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let text = g.metrics_text();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        );
        eprintln!(
            "stile gate: metrics on http://{}/metrics",
            listener.local_addr()?
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let op = if args.exits { Op::Exit } else { Op::Entry };
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<std::io::Result<String>>(64);
    // Standard input blocks: a thread reads it.
    std::thread::spawn(move || {
        let mut input = std::io::stdin().lock();
        loop {
            let line = read_line(&mut input);
            let end = matches!(line, Ok(None));
            let sent = match line {
                Ok(Some(l)) => lines_tx.blocking_send(Ok(l)),
                Ok(None) => return,
                Err(e) => lines_tx.blocking_send(Err(e)),
            };
            if sent.is_err() || end {
                return;
            }
        }
    });
    let mut shown_mode: Option<Mode> = None;
    let mut out = std::io::stdout();
    while let Some(line) = lines.recv().await {
        let line = line.context("reading stdin")?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let answer = gate.scan(text, op).await;
        if shown_mode != Some(answer.mode) {
            shown_mode = Some(answer.mode);
            status_line(&gate, answer.mode, &args);
        }
        let shown = if args.json {
            json_line(text, &answer)
        } else {
            text_line(text, &answer)
        };
        // A closed stdout ends the gate: nobody reads its answers, and the barrier must
        // not act on a decision no one saw.
        if let Err(e) = writeln!(out, "{shown}").and_then(|()| out.flush()) {
            anyhow::bail!(
                "cannot write the answer to a scan ({e}): stopping; the scan's decision is in \
                 the node's state or the gate's journal"
            );
        }
    }
    let left = gate.drain(args.drain_timeout).await;
    gate.save();
    if left > 0 {
        eprintln!(
            "stile gate: {left} offline scans are not uploaded yet: the node did not take them \
             within {}; they stay in {} and the next start of the gate uploads them",
            humantime::format_duration(args.drain_timeout),
            state_dir.join("journal").display()
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// Tells staff, on stderr, that the gate went online or offline.
fn status_line(gate: &Gate, mode: Mode, args: &GateArgs) {
    let s = gate.status();
    match mode {
        Mode::Online => eprintln!("stile gate: online (node {})", args.conn.node),
        Mode::Offline => {
            let replica = match (s.replica_tickets, s.replica_age_s) {
                (Some(n), Some(age)) => format!(
                    "deciding from a replica of {n} tickets, {} old",
                    humantime::format_duration(Duration::from_secs(age))
                ),
                _ => "no replica: every scan is refused".into(),
            };
            match &s.refused {
                Some(why) => {
                    eprintln!("stile gate: OFFLINE: the node refuses this gate ({why}); {replica}")
                }
                None => eprintln!(
                    "stile gate: OFFLINE: the node did not answer within {}; {replica}",
                    humantime::format_duration(args.online_timeout)
                ),
            }
        }
    }
}

/// What a person at the gate needs beside the outcome.
fn details(a: &Answer) -> String {
    if let Some(r) = &a.reason {
        return r.clone();
    }
    let at = || format_unix_s(a.at_unix_s);
    match a.name() {
        "admitted" | "exited" => format!("entries {}", a.entries),
        "already_used" if a.gate != 0 => format!("by gate {} at {}", a.gate, at()),
        "already_used" => "used before".into(),
        "not_yet_valid" if a.at_unix_s != 0 => format!("valid from {}", at()),
        "expired" if a.at_unix_s != 0 => format!("expired at {}", at()),
        _ => String::new(),
    }
}

fn text_line(code: &str, a: &Answer) -> String {
    // Tabs and newlines inside a scanned line would break the columns.
    let code: String = code.chars().filter(|c| !c.is_control()).collect();
    format!("{code}\t{}\t{}\t{}", a.name(), details(a), a.mode.name())
}

fn json_line(code: &str, a: &Answer) -> String {
    serde_json::json!({
        "code": code,
        "outcome": a.name(),
        "gate": a.gate,
        "at": (a.at_unix_s != 0).then(|| format_unix_s(a.at_unix_s)),
        "entries": a.entries,
        "mode": a.mode.name(),
        "reason": a.reason,
    })
    .to_string()
}

/// `--online-timeout`: long enough for any answer to arrive (0 would decide every scan
/// offline with the node up), short enough for a turnstile.
fn parse_online_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(60) {
        return Err("must be 1ms to 1m (the node answers in well under a millisecond)".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::{read_line, LINE_MAX};

    /// Garbage bytes, an endless line and a missing last newline are lines like others:
    /// nothing a scanner sends stops the gate.
    #[test]
    fn any_bytes_are_lines_and_long_ones_are_cut() {
        let mut input = Vec::new();
        input.extend_from_slice(b"\xff\xfe\n");
        input.extend(std::iter::repeat_n(b'A', 3 * LINE_MAX));
        input.extend_from_slice(b"\nCODE\r\nlast");
        let mut r = std::io::BufReader::with_capacity(64, &input[..]);
        assert_eq!(read_line(&mut r).unwrap().unwrap(), "\u{fffd}\u{fffd}");
        assert_eq!(read_line(&mut r).unwrap().unwrap(), "A".repeat(LINE_MAX));
        assert_eq!(read_line(&mut r).unwrap().unwrap(), "CODE\r");
        assert_eq!(read_line(&mut r).unwrap().unwrap(), "last");
        assert_eq!(read_line(&mut r).unwrap(), None);
    }
}
