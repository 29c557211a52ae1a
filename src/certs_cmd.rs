//! `stile certs`: the deployment's CA, certificates for node, gates and admins, and the CRL.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use stile_certs as certs;

/// Arguments of `stile certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Directory of the CA and certificates (default: DATA/tls).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// Data directory, when --dir is not given.
    #[arg(long, default_value = crate::DATA_DEFAULT, global = true)]
    data: PathBuf,
    #[command(subcommand)]
    action: CertsAction,
}

#[derive(Debug, Subcommand)]
enum CertsAction {
    /// Make a new CA (ca.crt, ca.key) and an empty CRL (crl.pem).
    Init,
    /// Issue the node's server certificate (node.crt, node.key); with --name, a shard
    /// node's (node-NAME.crt, node-NAME.key), which also lets it follow a primary.
    IssueNode {
        /// DNS names and IP addresses the node is reached by.
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        /// The node's name in its shard (letters, digits, '.', '_', '-').
        #[arg(long)]
        name: Option<String>,
    },
    /// Issue a gate's certificate (gate-ID.crt, gate-ID.key).
    IssueGate {
        /// Gate id, 1-65535.
        id: u16,
        /// The provider whose tickets the gate checks in.
        #[arg(long)]
        provider: u16,
    },
    /// Issue an admin certificate (admin-NAME.crt, admin-NAME.key).
    IssueAdmin {
        /// Who holds it (letters, digits, '.', '_', '-').
        name: String,
    },
    /// Put a certificate on the CRL; running nodes refuse it and close its connections.
    Revoke {
        /// The certificate file.
        file: PathBuf,
    },
}

/// Runs `stile certs`.
pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| args.data.join("tls"));
    match args.action {
        CertsAction::Init => {
            certs::init(&dir)?;
            println!("{}", dir.join(certs::CA_CERT).display());
        }
        CertsAction::IssueNode { sans, name } => {
            let cert = certs::issue_node_named(&dir, &sans, name.as_deref())?;
            println!("{}", cert.display())
        }
        CertsAction::IssueGate { id, provider } => {
            println!("{}", certs::issue_gate(&dir, id, provider)?.display())
        }
        CertsAction::IssueAdmin { name } => {
            println!("{}", certs::issue_admin(&dir, &name)?.display())
        }
        CertsAction::Revoke { file } => {
            let who = certs::revoke(&dir, &file)?;
            eprintln!("revoked {} ({})", file.display(), who.role);
        }
    }
    Ok(ExitCode::SUCCESS)
}
