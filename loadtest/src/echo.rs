//! `quic-echo://HOST:PORT`: the transport's floor. The tester starts `stile echo-server`
//! (this same program) on that address with the certificates in `DATA/tls`: a QUIC server
//! with the node's TLS, transport settings and socket buffers that answers every check-in
//! `admitted` at once, with no engine and no log. Driven as a node (its gates, frames and
//! datagrams are a node's), so that `--compare quic-echo://…,quic://…` tells what the node
//! adds to the transport. Its answers decide nothing: a run against it checks no outcome.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::leftovers::{Server, TempTree};

/// The scheme of an echo target.
pub const SCHEME: &str = "quic-echo://";
/// The line `stile echo-server` prints once it listens.
const LISTENING: &str = "stile echo listening on quic://";
/// Its standard error, in its directory: why it stopped, if it did.
const LOG: &str = "echo.log";
/// Longest wait for it to say so.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `stile echo-server` on `listen` (host:port, port 0 for a free one) with the
/// certificates of data dir `data`; returns it and where it listens.
pub(crate) fn spawn(data: &Path, listen: &str) -> Result<(Server, SocketAddr), String> {
    let listen: SocketAddr = listen
        .trim_end_matches('/')
        .parse()
        .map_err(|_| format!("{listen:?} is not IP:PORT (the echo server is started there)"))?;
    if listen.ip().is_unspecified() {
        return Err(format!(
            "{listen} is where the gates connect as well as where the echo server listens: \
             name one address of this machine, such as 127.0.0.1"
        ));
    }
    let program = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let dir = TempTree::new_in(&[data, Path::new(".")], ".stile-echo-")
        .map_err(|e| format!("making a directory for the echo server: {e}"))?;
    let log_path = dir.path().join(LOG);
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("making the echo server's log: {e}"))?;
    let mut command = Command::new(program);
    command
        .arg("echo-server")
        .arg("--data")
        .arg(data)
        .arg("--listen")
        .arg(listen.to_string())
        .env("STILE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log);
    // A group of its own: a terminal's Ctrl-C reaches the tester, which ends the run (reading
    // the server's CPU time) and then stops this server, instead of the server dying under
    // the run.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl and
    // getppid, which are async-signal-safe: the server dies with the thread that started it,
    // so a tester killed outright leaves none behind.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            use rustix::process::{getppid, set_parent_process_death_signal, Signal};
            set_parent_process_death_signal(Some(Signal::KILL))?;
            if getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent) {
                return Err(std::io::Error::from(rustix::io::Errno::SRCH));
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting the echo server: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut server = Server::new(child, dir);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
    match line.trim().strip_prefix(LISTENING).map(str::parse) {
        Some(Ok(addr)) => Ok((server, addr)),
        _ => Err(match exit_status(&mut server) {
            Some(status) => {
                let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                match said.lines().rev().find(|l| !l.trim().is_empty()) {
                    Some(last) => format!(
                        "the echo server exited ({status}): {}",
                        last.trim().trim_start_matches("stile: ")
                    ),
                    None => format!(
                        "the echo server exited ({status}): does DATA/tls hold the node \
                         certificate, and is {listen} free?"
                    ),
                }
            }
            None => {
                format!("the echo server did not say where it listens within {START_TIMEOUT:?}")
            }
        }),
    }
}

/// How long a server whose output ended may take to be seen exited.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// The server's exit status once it has exited, waiting up to [`EXIT_WAIT`]: its output
/// ends as it exits, a moment before the process can be reaped.
fn exit_status(server: &mut Server) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + EXIT_WAIT;
    loop {
        match server.exited() {
            Some(status) => return Some(status),
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            None => return None,
        }
    }
}
