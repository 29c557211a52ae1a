//! `stile purge`: drop every ticket of a partition from a node, for good.

use std::process::ExitCode;

use stile_protocol::limits::LOADTEST_PARTITION;

use crate::client_cmd::{connect, runtime, Want};
use crate::Conn;

/// Arguments of `stile purge`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Tickets are kept by partition, not by provider: a purge drops every ticket minted into the \
partition so far, of every provider, whatever its state, and the node frees their memory. It \
is durable before the answer, survives restarts and snapshots, and a purged code then answers \
`unknown`. Serials go on from where they were, so a purged code never names a new ticket. \
`stile loadtest` mints into partition 65535; `stile mint` and the gateway mint into partition 0 \
unless told otherwise, so any partition but 65535 needs --force.

Exit status: 0 purged (also when there was nothing to drop), 1 refused or failed (no admin \
certificate, a partition the node does not serve, no answer), 2 bad arguments.")]
pub struct PurgeArgs {
    #[command(flatten)]
    conn: Conn,
    /// Partition whose tickets are dropped, of every provider (65535: the load test's).
    #[arg(long)]
    partition: u16,
    /// Purge a partition other than the load test's (65535): the tickets of bookings and of
    /// `stile mint` live in partition 0.
    #[arg(long)]
    force: bool,
}

/// Runs `stile purge`: one line on stdout, how many tickets were dropped.
pub fn run(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn");
    if args.partition != LOADTEST_PARTITION && !args.force {
        anyhow::bail!(
            "partition {p} is not the load test's ({LOADTEST_PARTITION}): purging it drops every \
             ticket minted into it, of every provider (bookings and `stile mint` use partition \
             0 unless told otherwise); add --force if that is what you mean",
            p = args.partition
        );
    }
    let (tickets, below) = runtime()?.block_on(async {
        let client = connect(&args.conn, Want::Admin).await?;
        let purged = client.purge(args.partition).await;
        client.close().await;
        Ok::<_, anyhow::Error>(purged?)
    })?;
    println!(
        "purged partition {}: {tickets} tickets dropped; new tickets there get serials from \
         {below} on",
        args.partition
    );
    Ok(ExitCode::SUCCESS)
}
