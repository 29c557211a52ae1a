//! `stile conflicts`: the offline admits that gates uploaded and the node found already used,
//! revoked or transferred, for disputes.

use std::io::Write;
use std::process::ExitCode;

use stile_protocol::frame::Conflict;
use stile_protocol::outcome::format_unix_s;

use crate::client_cmd::{connect, runtime, Want};
use crate::Conn;

/// Arguments of `stile conflicts`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
One line a conflict, oldest first: CODE<TAB>kind<TAB>first scan<TAB>second scan, where kind is \
double_entry (the ticket was already used), after_revoke or after_transfer, the first scan is \
the earlier use, revoke or transfer (gate 0: an operator) and the second the gate's offline \
admit. --json: one object a line with code, kind, provider, first and second ({gate, at}).")]
pub struct ConflictsArgs {
    /// How to reach the node, and the admin certificate.
    #[command(flatten)]
    conn: Conn,
    /// Only this provider's tickets.
    #[arg(long)]
    provider: Option<u16>,
    /// One JSON object a line.
    #[arg(long)]
    json: bool,
}

/// Runs `stile conflicts`.
pub fn run(args: ConflictsArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = connect(&args.conn, Want::Admin).await?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut after = 0;
        loop {
            let (items, next) = client.conflicts(args.provider, after).await?;
            for c in &items {
                writeln!(out, "{}", line(c, args.json))?;
            }
            match next {
                Some(n) if n > after => after = n,
                _ => break,
            }
        }
        out.flush()?;
        client.close().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn line(c: &Conflict, json: bool) -> String {
    let code = c.code.to_text();
    if json {
        let scan = |s: &stile_protocol::frame::ScanRef| serde_json::json!({"gate": s.gate, "at": format_unix_s(s.at_unix_s)});
        return serde_json::json!({
            "code": code.as_str(),
            "kind": c.kind.name(),
            "provider": c.provider,
            "first": scan(&c.first),
            "second": scan(&c.second),
        })
        .to_string();
    }
    let scan = |s: &stile_protocol::frame::ScanRef| match s.gate {
        0 => format!("operator at {}", format_unix_s(s.at_unix_s)),
        g => format!("gate {g} at {}", format_unix_s(s.at_unix_s)),
    };
    format!(
        "{}\t{}\t{}\t{}",
        code.as_str(),
        c.kind.name(),
        scan(&c.first),
        scan(&c.second)
    )
}
