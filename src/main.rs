//! `stile`: the one binary. A thin layer over the library crates.

mod certs_cmd;
mod client_cmd;
mod cluster_cmd;
mod conflicts_cmd;
mod echo_cmd;
mod gate_cmd;
mod gateway_cmd;
mod history_cmd;
mod keys_cmd;
mod loadtest_cmd;
mod purge_cmd;
mod serve;
mod signals;
mod stat_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Writes a line of a server's friendly text to stdout. A closed stdout (`stile node |
/// head -1`) must not stop a server, so a failed write is ignored where `println!` would
/// panic.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Data directory `stile up` uses unless told otherwise.
pub const DATA_DEFAULT: &str = "stile-data";
/// QUIC address `stile up` listens on unless told otherwise.
pub const QUIC_DEFAULT: &str = "127.0.0.1:7443";

/// stile: ticket verification at the gate.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node in this process, making dev certificates on first start.
    Up(serve::UpArgs),
    /// Run a node on a data dir whose certificates exist.
    Node(serve::NodeArgs),
    /// Run the HTTP gateway (booking, QR, e-ticket pages, HTTP check-in) against a node.
    Gateway(gateway_cmd::GatewayArgs),
    /// Make the deployment's CA and issue or revoke certificates.
    Certs(certs_cmd::CertsArgs),
    /// Mint tickets (admin certificate); prints one code a line.
    Mint(client_cmd::MintArgs),
    /// Check codes in (gate certificate); one line a code: CODE, outcome, details.
    Check(client_cmd::CheckArgs),
    /// Run a turnstile's agent: scanned codes on stdin, decisions on stdout, offline from a
    /// local replica when the node does not answer in time.
    Gate(gate_cmd::GateArgs),
    /// List the conflicts gates' offline admits met on upload (admin certificate): tickets
    /// admitted offline that were already used, revoked or transferred.
    Conflicts(conflicts_cmd::ConflictsArgs),
    /// What etcd says of a cluster's shards: leaders, epochs, synchronous standbys, lag.
    Cluster(cluster_cmd::ClusterArgs),
    /// Show tickets' state.
    Status(client_cmd::TicketArgs),
    /// Revoke tickets (admin certificate).
    Revoke(client_cmd::TicketArgs),
    /// Transfer tickets: void each code and print its successor (admin certificate).
    Transfer(client_cmd::TicketArgs),
    /// Drop every ticket of a partition for good, of every provider (admin certificate);
    /// prints how many were dropped. `stile loadtest` leaves its tickets in partition 65535.
    Purge(purge_cmd::PurgeArgs),
    /// Manage the key ring that signs feature codes.
    Keys(keys_cmd::KeysArgs),
    /// Drive a scenario against a node (quic://), the engine in process (inproc), the bare
    /// transport (quic-echo://) or Redis (redis://, redis+tls://).
    Loadtest(loadtest_cmd::LoadtestArgs),
    /// Watch a node: check-ins per second, p50/p99/p999 latency, outcomes, fsync latency,
    /// connections, refreshed every second.
    Stat(stat_cmd::StatArgs),
    /// Check a recorded operation history: no ticket admitted twice, no acknowledged admit
    /// lost, every answer one atomic ticket could give.
    History(history_cmd::HistoryArgs),
    /// The bare QUIC echo `stile loadtest --target quic-echo://` measures the transport with.
    #[command(hide = true)]
    EchoServer(echo_cmd::EchoArgs),
}

/// How a client command reaches a node.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// Data directory whose `tls/` holds the certificates.
    #[arg(long, default_value = DATA_DEFAULT)]
    pub data: PathBuf,
    /// The node's QUIC address (host:port); a shard's nodes comma-separated (`A,B`): the
    /// client goes to whichever leads.
    #[arg(long, default_value = QUIC_DEFAULT)]
    pub node: String,
    /// Client certificate (default: the matching one in DATA/tls).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// CA certificate the node's certificate must chain to (default: DATA/tls/ca.crt).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Name the node's certificate must carry (default: the host of --node).
    #[arg(long)]
    pub server_name: Option<String>,
}

impl Conn {
    /// The (first) node's address and the server name to expect.
    pub fn resolve(&self) -> anyhow::Result<(SocketAddr, String)> {
        let first = self.node.split(',').next().unwrap_or_default().trim();
        let addr = resolve_one(first)?;
        let host = first
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(first);
        let name = self.server_name.clone().unwrap_or_else(|| host.to_string());
        Ok((addr, name))
    }

    /// Every node `--node` names, in order.
    pub fn addresses(&self) -> anyhow::Result<Vec<SocketAddr>> {
        self.node
            .split(',')
            .map(|n| resolve_one(n.trim()))
            .collect()
    }
}

/// One `host:port`.
fn resolve_one(node: &str) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    use std::net::ToSocketAddrs;
    node.to_socket_addrs()
        .with_context(|| format!("--node {node}: not a host:port"))?
        .next()
        .with_context(|| format!("--node {node}: no address"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One process-wide TLS provider (ring) for the HTTP clients that do not name one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Up(args) => serve::up(args),
        Command::Node(args) => serve::node(args),
        Command::Gateway(args) => gateway_cmd::run(args),
        Command::Certs(args) => certs_cmd::run(args),
        Command::Mint(args) => client_cmd::mint(args),
        Command::Check(args) => client_cmd::check(args),
        Command::Gate(args) => gate_cmd::run(args),
        Command::Conflicts(args) => conflicts_cmd::run(args),
        Command::Cluster(args) => cluster_cmd::run(args),
        Command::Status(args) => client_cmd::status(args),
        Command::Revoke(args) => client_cmd::revoke(args),
        Command::Transfer(args) => client_cmd::transfer(args),
        Command::Purge(args) => purge_cmd::run(args),
        Command::Keys(args) => keys_cmd::run(args),
        Command::Loadtest(args) => loadtest_cmd::run(args),
        Command::Stat(args) => stat_cmd::run(args),
        Command::History(args) => history_cmd::run(args),
        Command::EchoServer(args) => echo_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // The cause chain on one line; no backtrace for people at a terminal.
            eprintln!("stile: {}", one_line(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// How to run this binary again from the same directory, for commands printed to be pasted:
/// the path it was started by when that names one (`target/release/stile` after `cargo run`),
/// else its bare name, which the shell found on `PATH`.
pub fn invoked_as() -> String {
    let argv0 = std::env::args().next().unwrap_or_default();
    if argv0.contains('/') {
        shell_word(&argv0)
    } else {
        "stile".to_string()
    }
}

/// One quoting rule for every command stile prints to be pasted.
pub use stile_loadtest::report::shell_word;

/// An error and its causes on one line, each cause once: an error whose message already
/// ends with its cause's (`cannot listen on ADDR: Address already in use`) does not repeat it.
fn one_line(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let c = cause.to_string();
        if text.ends_with(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}

/// Logs to stderr at `default` level unless `STILE_LOG` says otherwise.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STILE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; plain text for a file or a journal.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::{one_line, shell_word};

    /// What a shell would split or expand is quoted; quotes inside are kept.
    #[test]
    fn shell_words_survive_a_shell() {
        assert_eq!(shell_word("target/release/stile"), "target/release/stile");
        assert_eq!(shell_word("127.0.0.1:7443"), "127.0.0.1:7443");
        assert_eq!(shell_word("[::1]:7443"), "'[::1]:7443'");
        assert_eq!(shell_word("my data"), "'my data'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
        for word in ["my data", "it's", "$HOME", "a*b", "[::1]:7443", "x;y"] {
            let echoed = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {}", shell_word(word))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(echoed.stdout).unwrap(), word);
        }
    }

    #[test]
    fn causes_are_told_once() {
        /// An error that tells its cause in its own message, as the node's bind error does.
        #[derive(Debug)]
        struct Bind(std::io::Error);
        impl std::fmt::Display for Bind {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot listen on 127.0.0.1:1: {}", self.0)
            }
        }
        impl std::error::Error for Bind {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let os = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let err = anyhow::Error::new(Bind(os)).context("starting the node");
        let text = one_line(&err);
        assert_eq!(text.matches("address in use").count(), 1, "{text}");
        assert!(
            text.starts_with("starting the node: cannot listen on 127.0.0.1:1: "),
            "{text}"
        );
    }
}
