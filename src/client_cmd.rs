//! Client commands: `mint`, `check`, `status`, `revoke`, `transfer`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use stile_certs::{self as certs, Role};
use stile_protocol::client::{Client, ClientConfig, ClientError, ClientTls};
use stile_protocol::frame::{MintSpec, TicketInfo};
use stile_protocol::outcome::format_unix_s;
use stile_protocol::{CodeBytes, CodeFormat, Outcome};

use crate::Conn;

/// Which certificate a command uses by default.
pub(crate) enum Want {
    Admin,
    Gate,
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// How long a command waits for one answer unless told otherwise (reconnects included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects with the certificate `conn` names, or the default one for `want`.
pub(crate) async fn connect(conn: &Conn, want: Want) -> anyhow::Result<Client> {
    connect_waiting(conn, want, REQUEST_TIMEOUT).await
}

/// [`connect`], waiting at most `request_timeout` for each answer.
async fn connect_waiting(
    conn: &Conn,
    want: Want,
    request_timeout: Duration,
) -> anyhow::Result<Client> {
    let (config, _) = client_config(conn, want, request_timeout)?;
    Ok(Client::connect(config).await?)
}

/// How to reach the node with the certificate `conn` names, or the default one for `want`;
/// and the certificate's role.
pub(crate) fn client_config(
    conn: &Conn,
    want: Want,
    request_timeout: Duration,
) -> anyhow::Result<(ClientConfig, Option<Role>)> {
    let tls_dir = conn.data.join("tls");
    let (cert, key) = match (&conn.cert, &conn.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let name = match want {
                Want::Admin => certs::admin_cert_name("admin"),
                Want::Gate => certs::gate_cert_name(1),
            };
            let cert = tls_dir.join(name);
            (cert.clone(), certs::key_path_for(&cert))
        }
    };
    let ca = conn
        .ca
        .clone()
        .unwrap_or_else(|| tls_dir.join(certs::CA_CERT));
    if !cert.exists() {
        anyhow::bail!(
            "no certificate {}: start `stile up` once (it makes dev certificates), or name one \
             with --cert and --key",
            cert.display()
        );
    }
    let role = certs::identity_of_file(&cert).map(|i| i.role).ok();
    // A gate's provider, so that other providers' codes are refused without a round trip.
    let provider = match role {
        Some(Role::Gate { provider, .. }) => Some(provider),
        _ => None,
    };
    let tls = ClientTls::from_files(&ca, &cert, &key)?;
    let (addr, server_name) = conn.resolve()?;
    let mut config = ClientConfig::new(addr, tls);
    config.server_name = server_name;
    config.nodes = conn.addresses()?;
    config.provider = provider;
    config.request_timeout = request_timeout;
    Ok((config, role))
}

/// Parses a time given as Unix seconds or RFC 3339, from the second after the epoch (0 is
/// "no limit" on the wire: leaving the flag out says that) to the end of the year 9999.
fn parse_time(s: &str) -> Result<u64, String> {
    let t = match s.parse::<u64>() {
        Ok(n) => n,
        Err(_) => humantime::parse_rfc3339_weak(s)
            .map_err(|e| format!("{s:?}: not Unix seconds or an RFC 3339 time ({e})"))?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .map_err(|_| format!("{s:?} is before 1970"))?,
    };
    match t {
        0 => Err(format!(
            "{s:?} is the epoch itself, which the node reads as no limit: leave the flag out \
             for no limit, or give a later time"
        )),
        t if t > stile_protocol::outcome::UNIX_S_MAX => {
            Err(format!("{s:?} is after 9999-12-31T23:59:59Z"))
        }
        t => Ok(t),
    }
}

/// Arguments of `stile mint`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 minted (codes on stdout, one a line), 1 an error.")]
pub struct MintArgs {
    #[command(flatten)]
    conn: Conn,
    /// Provider selling the tickets.
    #[arg(long, default_value_t = 1)]
    provider: u16,
    /// How many tickets.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    count: u32,
    /// Partition to mint into.
    #[arg(long, default_value_t = 0)]
    partition: u16,
    /// Rotating codes (the code changes every 30 s; a screenshot dies within a minute).
    #[arg(long)]
    rotating: bool,
    /// With --rotating: gates may verify these tickets' codes offline. Their replicas then
    /// hold each ticket's rotation key, so a stolen gate's replica draws valid codes for
    /// them until they are re-keyed (transferred, or the ring key retired).
    #[arg(long, requires = "rotating", conflicts_with = "online_only")]
    offline_rotating: bool,
    /// Gates may never admit these tickets offline (when their node does not answer, their
    /// scans are refused, saying why).
    #[arg(long)]
    online_only: bool,
    /// Not valid before this time (Unix seconds or RFC 3339).
    #[arg(long, value_parser = parse_time)]
    valid_from: Option<u64>,
    /// Not valid after this time (Unix seconds or RFC 3339).
    #[arg(long, value_parser = parse_time)]
    valid_until: Option<u64>,
    /// Valid this long from the first scan (a day pass: 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    valid_for: Option<Duration>,
    /// Entries allowed (0: unlimited within validity).
    #[arg(long, default_value_t = 1)]
    entries: u8,
    /// Entry and exit alternate (rail turnstiles).
    #[arg(long)]
    exits: bool,
    /// How long the admitting gate may annul an admit.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    undo_window: Duration,
}

/// Runs `stile mint`: codes on stdout, one a line, nothing else.
pub fn mint(args: MintArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn");
    let valid_for = args
        .valid_for
        .map(|d| {
            u32::try_from(d.as_secs()).map_err(|_| {
                anyhow::anyhow!(
                    "--valid-for {}: at most {} s (about 136 years)",
                    humantime::format_duration(d),
                    u32::MAX
                )
            })
        })
        .transpose()?;
    if valid_for == Some(0) {
        anyhow::bail!("--valid-for must be at least one second");
    }
    let spec = MintSpec {
        provider: args.provider,
        partition: args.partition,
        count: args.count,
        format: if args.rotating {
            CodeFormat::Rotating
        } else {
            CodeFormat::Static
        },
        max_entries: args.entries,
        records_exits: args.exits,
        undo_window_s: u32::try_from(args.undo_window.as_secs())
            .ok()
            .filter(|s| *s <= stile_protocol::limits::UNDO_WINDOW_MAX_S)
            .with_context(|| {
                format!(
                    "--undo-window: at most {} s",
                    stile_protocol::limits::UNDO_WINDOW_MAX_S
                )
            })?,
        not_before_unix_s: args.valid_from.unwrap_or(0),
        not_after_unix_s: args.valid_until.unwrap_or(0),
        duration_from_first_scan_s: valid_for.unwrap_or(0),
        offline_rotating: args.offline_rotating,
        online_only: args.online_only,
    };
    let codes = runtime()?.block_on(async {
        let client = connect(&args.conn, Want::Admin).await?;
        let codes = client.mint(spec).await;
        client.close().await;
        Ok::<_, anyhow::Error>(codes?)
    })?;
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for code in codes {
        writeln!(out, "{}", code.to_text().as_str())?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `stile check`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 every code opened the gate (or was undone), 2 any did not, 1 an \
                  error (after the lines of the answers that came; stderr says how to retry the \
                  rest)."
)]
pub struct CheckArgs {
    #[command(flatten)]
    conn: Conn,
    /// One JSON object a line instead of tab-separated text.
    #[arg(long)]
    json: bool,
    /// Record exits instead of entries.
    #[arg(long, conflicts_with = "undo")]
    exit: bool,
    /// Annul this gate's last admit of each code.
    #[arg(long)]
    undo: bool,
    /// Scan id of the first code (the next codes count up); reuse it to retry a scan.
    #[arg(long)]
    scan_id: Option<u64>,
    /// Longest wait for one code's answer, reconnecting to a node that went away included;
    /// past it the check ends with an error, after the lines of the answers it got.
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    timeout: Duration,
    /// Codes, as printed by `stile mint` (case, hyphens and spaces do not matter).
    #[arg(required = true)]
    codes: Vec<String>,
}

/// A duration of at least 100 ms (`2s`, `500ms`).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?}: at least 100ms"));
    }
    Ok(d)
}

fn outcome_json(text: &str, o: &Outcome) -> String {
    let mut v = serde_json::json!({
        "code": text,
        "outcome": o.kind.name(),
        "message": o.message(),
    });
    if o.gate != 0 {
        v["gate"] = o.gate.into();
    }
    if o.entries != 0 {
        v["entries"] = o.entries.into();
    }
    if o.at_unix_s != 0 {
        v["at_unix_s"] = o.at_unix_s.into();
        v["at"] = format_unix_s(o.at_unix_s).into();
    }
    v.to_string()
}

/// Runs `stile check`: one line a code, printed as its answer comes. Exit status: 0 if every
/// code opened the gate, 2 if any did not, 1 on an error (after the lines of every answer
/// that came before it, and a line on stderr saying how to retry the rest).
pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    crate::init_logging("warn");
    let mut out = std::io::stdout().lock();
    let mut all_open = true;
    runtime()?.block_on(async {
        let client = connect_waiting(&args.conn, Want::Gate, args.timeout).await?;
        let first = args.scan_id.unwrap_or_else(|| client.next_scan_id());
        for (i, text) in args.codes.iter().enumerate() {
            let scan_id = first.wrapping_add(i as u64);
            let answer = match CodeBytes::parse(text) {
                Err(_) => Ok(Outcome::FORGED),
                Ok(code) if args.exit => client.exit(&code, scan_id).await,
                Ok(code) if args.undo => client.undo(&code, scan_id).await,
                Ok(code) => client.checkin(&code, scan_id).await,
            };
            let o = match answer {
                Ok(o) => o,
                Err(e @ ClientError::Node { .. }) => {
                    // An answer, not a lost one: retrying the same scan would get it again.
                    client.close().await;
                    return Err(anyhow::Error::new(e).context("the node refused the scan"));
                }
                Err(e) => {
                    client.close().await;
                    return Err(anyhow::Error::new(e).context(unanswered(&args, i, scan_id)));
                }
            };
            all_open &= o.kind.opens_gate() || o.kind == stile_protocol::OutcomeKind::Undone;
            // Each line as its answer comes: a caller sees every answer it got, whatever
            // happens to the rest.
            if args.json {
                writeln!(out, "{}", outcome_json(text, &o))?;
            } else {
                writeln!(out, "{text}\t{}\t{}", o.kind.name(), o.message())?;
            }
            out.flush()?;
        }
        client.close().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(if all_open {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// What `stile check` says when code `i` got no answer: how many did not, and how to ask
/// again with the same scan ids (so that a scan the node did make is answered as it was).
fn unanswered(args: &CheckArgs, i: usize, scan_id: u64) -> String {
    let left = args.codes.len() - i;
    format!(
        "{left} of {} code(s) got no answer, from {} on (scan id {scan_id}); to retry them, \
         run the same command with --scan-id {scan_id} and those codes",
        args.codes.len(),
        args.codes[i]
    )
}

/// Arguments of `status`, `revoke` and `transfer`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 every code succeeded, 2 any failed (its line says `error`), 1 the \
                  node could not be reached."
)]
pub struct TicketArgs {
    #[command(flatten)]
    conn: Conn,
    /// One JSON object a line instead of tab-separated text.
    #[arg(long)]
    json: bool,
    /// Codes.
    #[arg(required = true)]
    codes: Vec<String>,
}

fn parse_codes(codes: &[String]) -> anyhow::Result<Vec<CodeBytes>> {
    codes
        .iter()
        .map(|t| CodeBytes::parse(t).with_context(|| format!("{t}: not a code")))
        .collect()
}

fn ticket_json(text: &str, t: &TicketInfo) -> String {
    let time = |v: u64| (v != 0).then(|| format_unix_s(v));
    serde_json::json!({
        "code": text,
        "state": t.state.name(),
        "inside": t.inside,
        "entries": t.entries,
        "max_entries": t.max_entries,
        "provider": t.provider,
        "partition": t.partition,
        "serial": t.serial,
        "gate": t.gate,
        "rotating": t.format == CodeFormat::Rotating,
        "last_event": time(t.last_event_unix_s),
        "first_scan": time(t.first_scan_unix_s),
        "valid_from": time(t.valid_from_unix_s),
        "valid_until": time(t.valid_until_unix_s),
    })
    .to_string()
}

/// Runs `op` on every code over one admin connection, then prints each code's result with
/// `line` (an error prints `CODE<TAB>error<TAB>why`). Exit status: 0 if every code
/// succeeded, 2 if any failed, 1 if the node could not be reached.
fn per_code<T>(
    args: &TicketArgs,
    op: impl AsyncFn(&Client, &CodeBytes) -> Result<T, ClientError>,
    line: impl Fn(&str, &T) -> String,
) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn");
    let codes = parse_codes(&args.codes)?;
    let results = runtime()?.block_on(async {
        let client = connect(&args.conn, Want::Admin).await?;
        let mut out = Vec::with_capacity(codes.len());
        for c in &codes {
            out.push(op(&client, c).await);
        }
        client.close().await;
        Ok::<_, anyhow::Error>(out)
    })?;
    let mut ok = true;
    for (text, r) in args.codes.iter().zip(results) {
        match r {
            Ok(v) => println!("{}", line(text, &v)),
            Err(e) => {
                ok = false;
                println!("{text}\terror\t{e}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Runs `stile status` (admin certificate by default: any provider).
pub fn status(args: TicketArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    per_code(
        &args,
        async |client, c| client.status(c).await,
        |text, t| {
            if json {
                return ticket_json(text, t);
            }
            let until = match (t.valid_from_unix_s, t.valid_until_unix_s) {
                (0, 0) => "no end".to_string(),
                (0, u) => format!("until {}", format_unix_s(u)),
                (f, 0) => format!("from {}, no end", format_unix_s(f)),
                (f, u) => format!("from {} until {}", format_unix_s(f), format_unix_s(u)),
            };
            let max = match t.max_entries {
                0 => "unlimited".to_string(),
                n => n.to_string(),
            };
            format!(
                "{text}\t{}\tprovider {} entries {}/{max} {until}",
                t.state.name(),
                t.provider,
                t.entries
            )
        },
    )
}

/// Runs `stile revoke`.
pub fn revoke(args: TicketArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    per_code(
        &args,
        async |client, c| client.revoke(c).await,
        |text, o| {
            if json {
                outcome_json(text, o)
            } else {
                format!("{text}\t{}\t{}", o.kind.name(), o.message())
            }
        },
    )
}

/// Runs `stile transfer`: one line a code, `OLD<TAB>NEW`.
pub fn transfer(args: TicketArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    per_code(
        &args,
        async |client, c| client.transfer(c).await,
        |text, new| {
            if json {
                serde_json::json!({"code": text, "new_code": new.to_text().as_str()}).to_string()
            } else {
                format!("{text}\t{}", new.to_text().as_str())
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    /// Unix seconds or RFC 3339, from one second after the epoch to the end of 9999: the
    /// epoch itself is "no limit" on the wire, and later times cannot be written down.
    #[test]
    fn times_are_taken_between_the_epoch_and_the_year_10000() {
        assert_eq!(parse_time("1"), Ok(1));
        assert_eq!(parse_time("2030-01-01T00:00:00Z"), Ok(1_893_456_000));
        assert_eq!(parse_time("253402300799"), Ok(253_402_300_799));
        for bad in [
            "0",
            "1970-01-01T00:00:00Z",
            "253402300800",
            "99999999999999",
            "soon",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert!(parse_time("0").unwrap_err().contains("no limit"));
    }
}
