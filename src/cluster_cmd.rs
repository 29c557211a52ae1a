//! `stile cluster`: what etcd says of a cluster's shards.

use std::process::ExitCode;

use clap::Subcommand;

/// Arguments of `stile cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    action: ClusterAction,
}

#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// Each shard's leader, epoch, synchronous standby and members with their lag.
    Status {
        /// etcd endpoints (comma-separated).
        #[arg(long, value_name = "URL[,URL…]")]
        etcd: String,
        /// The cluster's name.
        #[arg(long, value_name = "NAME")]
        cluster: String,
        /// One JSON object a shard, a line.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `stile cluster`.
pub fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let ClusterAction::Status {
        etcd,
        cluster,
        json,
    } = args.action;
    let endpoints: Vec<String> = etcd.split(',').map(|e| e.trim().to_string()).collect();
    let etcd = stile_cluster::Etcd::new(&endpoints, std::time::Duration::from_secs(5))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shards = runtime.block_on(stile_cluster::cluster_status(&etcd, &cluster))?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the listing quietly.
    if json {
        for s in &shards {
            let line = serde_json::json!({
                "shard": s.shard,
                "leader": s.leader,
                "epoch": s.epoch,
                "sync_standby": s.sync_standby,
                "members": s.members,
                "lag": s.lag.iter().map(|(n, l)| serde_json::json!({"name": n, "records": l})).collect::<Vec<_>>(),
            });
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
    } else {
        let _ = write!(out, "{}", stile_cluster::StatusTable(&shards));
    }
    Ok(ExitCode::SUCCESS)
}
