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
    /// Make node NAME the one that takes over shard SHARD, though it is not the synchronous
    /// standby (accepting that it may lack changes the old leader answered): revokes the
    /// leader's lease, waits the lease's time to live and a margin (the old leader stops
    /// answering alone by then), then names NAME; a running NAME takes the leader key.
    Promote {
        /// etcd endpoints (comma-separated).
        #[arg(long, value_name = "URL[,URL…]")]
        etcd: String,
        /// The cluster's name.
        #[arg(long, value_name = "NAME")]
        cluster: String,
        /// The shard.
        #[arg(long, value_name = "ID")]
        shard: String,
        /// The node to promote.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// The shard's `--lease` (how long the old leader may still answer alone).
        #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
        lease: std::time::Duration,
        /// Required: this may lose acknowledged changes.
        #[arg(long, required = true)]
        force: bool,
    },
}

/// Runs `stile cluster`.
pub fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let (etcd, cluster, json) = match args.action {
        ClusterAction::Status {
            etcd,
            cluster,
            json,
        } => (etcd, cluster, json),
        ClusterAction::Promote {
            etcd,
            cluster,
            shard,
            name,
            lease,
            force: _,
        } => return promote(&etcd, &cluster, &shard, &name, lease),
    };
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

/// `stile cluster promote --force`.
fn promote(
    etcd: &str,
    cluster: &str,
    shard: &str,
    name: &str,
    lease: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let endpoints: Vec<String> = etcd.split(',').map(|e| e.trim().to_string()).collect();
    let etcd = stile_cluster::Etcd::new(&endpoints, std::time::Duration::from_secs(5))?;
    let keys = stile_cluster::ShardKeys::new(cluster, shard)?;
    stile_cluster::keys::check_name("node", name)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // A mistyped name or shard would leave the shard with no node that may take over
        // (and a shard of that name created in etcd): only a registered node is named.
        if etcd.get(&keys.member(name)?).await?.is_none() {
            anyhow::bail!(
                "no node named {name} is registered in shard {shard} of cluster {cluster} \
                 (`stile cluster status` lists them): start it first (it waits as a standby), \
                 then promote it; nothing was changed"
            );
        }
        let leader = etcd.get(&keys.leader()).await?;
        if leader
            .as_ref()
            .is_some_and(|kv| kv.value == name.as_bytes())
        {
            anyhow::bail!("{name} leads shard {shard} already; nothing was changed");
        }
        eprintln!(
            "stile cluster promote: WARNING: {name} is made the node that takes over shard \
             {shard} without being its synchronous standby: changes the old leader answered \
             and {name} never received are lost, and tickets admitted by them may be admitted \
             again"
        );
        if let Some(kv) = leader {
            let old = String::from_utf8_lossy(&kv.value).into_owned();
            if kv.lease != 0 {
                match etcd.revoke(kv.lease).await {
                    Ok(()) | Err(stile_cluster::EtcdError::LeaseNotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            // The old leader counts its lease from its last renewal: past this it has
            // stopped answering alone.
            let wait = lease + std::time::Duration::from_secs(1);
            eprintln!(
                "stile cluster promote: revoked {old}'s lease; waiting {} before naming {name}",
                humantime::format_duration(wait)
            );
            tokio::time::sleep(wait).await;
        }
        // Only while no one leads: a node that took over meanwhile (the synchronous standby)
        // has named its own standby, and overwriting that name would let `name`, which may
        // lack changes, take over from it later instead of the node that holds them all.
        let named = etcd
            .txn(
                &[stile_cluster::Compare::CreateRevision(
                    keys.leader(),
                    stile_cluster::Cmp::Equal,
                    0,
                )],
                &[stile_cluster::TxnOp::Put {
                    key: keys.sync_standby(),
                    value: name.as_bytes().to_vec(),
                    lease: None,
                }],
                &[stile_cluster::TxnOp::Get { key: keys.leader() }],
            )
            .await?;
        if !named.succeeded {
            let leader: String = named
                .gets
                .first()
                .and_then(|kvs| kvs.first())
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                .unwrap_or_default();
            if leader == name {
                println!("{name} took over shard {shard} while this waited: it leads now");
                return Ok(ExitCode::SUCCESS);
            }
            anyhow::bail!(
                "{leader} took over shard {shard} while this waited: {name} was not named \
                 (`stile cluster status` shows the shard now)"
            );
        }
        println!("{name} may take over shard {shard} now: it leads once it holds the leader key");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
