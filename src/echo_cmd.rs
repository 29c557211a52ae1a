//! `stile echo-server`: the bare QUIC echo (the node's TLS, transport settings and socket
//! buffers, no engine) that `stile loadtest --target quic-echo://…` starts to measure the
//! transport's floor beside a node. Hidden from `--help`: it serves no tickets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// Options of `stile echo-server`.
#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// Data directory whose `tls/` holds the CA and the node certificate.
    #[arg(long, default_value = crate::DATA_DEFAULT)]
    data: PathBuf,
    /// UDP address to serve on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// Serves until SIGINT or SIGTERM.
pub fn run(args: EchoArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stile-echo")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut signals = crate::signals::Signals::install()?;
        let tls = args.data.join("tls");
        let server = stile_node::echo::EchoServer::start(args.listen, &tls)
            .with_context(|| format!("starting the echo server with {}", tls.display()))?;
        // The load tester reads the address from this line.
        crate::say!("stile echo listening on quic://{}", server.local_addr()?);
        signals.wait().await;
        server.close();
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
