//! `stile gateway`, and the gateway half of `stile up` (with `--demo`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use stile_certs as certs;
use stile_gateway::{Gateway, GatewayConfig};
use stile_protocol::client::ClientTls;

use crate::Conn;

/// Default HTTP address of the gateway.
pub const HTTP_DEFAULT: &str = "127.0.0.1:8080";
/// How long in-flight HTTP requests get at shutdown.
const DRAIN_MS: u64 = 5_000;

/// Gateway options shared by `stile gateway` and `stile up`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayOptions {
    /// Serve HTTPS with this certificate chain (PEM); service workers need it off localhost.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The HTTPS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Let reminder webhooks reach loopback, private, link-local and reserved addresses
    /// (off: only public ones, so a holder's webhook cannot reach into this network).
    #[arg(long)]
    pub webhook_private: bool,
}

impl GatewayOptions {
    fn pair(&self) -> Option<(PathBuf, PathBuf)> {
        self.tls_cert.clone().zip(self.tls_key.clone())
    }
}

/// Arguments of `stile gateway`.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// The default node and the admin certificate to reach it with.
    #[command(flatten)]
    conn: Conn,
    /// Address to serve HTTP on (port 0: any free port, printed at start).
    #[arg(long, default_value = HTTP_DEFAULT)]
    http: SocketAddr,
    /// HTTPS.
    #[command(flatten)]
    https: GatewayOptions,
}

/// The admin identity in `tls_dir` (or the files named).
pub fn admin_tls(
    tls_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
    ca: Option<&Path>,
) -> anyhow::Result<ClientTls> {
    let cert = cert
        .map(Path::to_path_buf)
        .unwrap_or_else(|| tls_dir.join(certs::admin_cert_name("admin")));
    let key = key
        .map(Path::to_path_buf)
        .unwrap_or_else(|| certs::key_path_for(&cert));
    let ca = ca
        .map(Path::to_path_buf)
        .unwrap_or_else(|| tls_dir.join(certs::CA_CERT));
    if !cert.exists() {
        anyhow::bail!(
            "no admin certificate {}: issue one with `stile certs issue-admin NAME` (or start \
             `stile up` once), or name one with --cert and --key",
            cert.display()
        );
    }
    // The gateway mints, revokes and follows events: a gate's certificate would start and
    // then fail every booking.
    certs::admin_name_of_file(&cert)
        .context("the gateway needs an admin certificate (`stile certs issue-admin NAME`)")?;
    Ok(ClientTls::from_files(&ca, &cert, &key)?)
}

/// Runs `stile gateway`.
pub fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("info");
    let (node, server_name) = args.conn.resolve()?;
    let tls = admin_tls(
        &args.conn.data.join("tls"),
        args.conn.cert.as_deref(),
        args.conn.key.as_deref(),
        args.conn.ca.as_deref(),
    )?;
    // The data dir holds the CA's key and the gateway's database: private, as `stile up`
    // and `stile node` make it.
    stile_engine::datadir::ensure(&args.conn.data)
        .with_context(|| format!("making {} private", args.conn.data.display()))?;
    let mut config = GatewayConfig::new(args.conn.data.join("gateway"), args.http, node, tls);
    config.node_server_name = server_name;
    config.node_shard = args.conn.addresses()?;
    config.https = args.https.pair();
    config.webhook_private = args.https.webhook_private;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stile-gateway")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Caught before the address is announced, so an early SIGTERM still stops cleanly.
        let mut signals = crate::signals::Signals::install()?;
        let gateway = Gateway::start(config.clone()).await?;
        // Scripts and tests read the bound address from this line.
        crate::say!(
            "stile gateway listening on {}",
            base_url(&config, gateway.local_addr())
        );
        crate::say!(
            "  API token (Authorization: Bearer) in {}",
            config.dir.join(stile_gateway::API_TOKEN_FILE).display()
        );
        signals.wait().await;
        gateway.shutdown(Duration::from_millis(DRAIN_MS)).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `http://ADDR` or `https://ADDR`.
pub fn base_url(config: &GatewayConfig, addr: SocketAddr) -> String {
    let scheme = if config.https.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// Starts the gateway of `stile up` against the node at `node`.
pub async fn start_for_up(
    data: &Path,
    http: SocketAddr,
    https: &GatewayOptions,
    node: SocketAddr,
) -> anyhow::Result<(Gateway, GatewayConfig)> {
    let tls = admin_tls(&data.join("tls"), None, None, None)?;
    let mut config = GatewayConfig::new(data.join("gateway"), http, node, tls);
    config.https = https.pair();
    config.webhook_private = https.webhook_private;
    let gateway = Gateway::start(config.clone())
        .await
        .with_context(|| format!("starting the gateway on {http}"))?;
    Ok((gateway, config))
}

/// Tickets `--demo` books.
const DEMO_TICKETS: usize = 3;

/// What `--demo` made: its tickets' pages and gate 1's credentials.
pub struct Demo {
    /// The e-ticket pages, as URLs.
    pub pages: Vec<String>,
    /// Gate 1's HTTP token and staff PIN, when this demo made the gate (the first on a data
    /// dir; later ones leave it as it is).
    pub gate: Option<(String, String)>,
}

/// Makes provider 1 (if new), an event valid now and a booking of three tickets through the
/// gateway's own API; returns the e-ticket page URLs and a gate token for HTTP check-in.
pub async fn demo(base: &str, api_token: &str, https: bool) -> anyhow::Result<Demo> {
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(https)
        .timeout(Duration::from_secs(30))
        .build()?;
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(api_token)
            .json(&body)
    };
    let res = post(
        "/v1/providers",
        serde_json::json!({"id": 1, "name": "Demo provider"}),
    )
    .send()
    .await?;
    if !(res.status().is_success() || res.status() == reqwest::StatusCode::CONFLICT) {
        anyhow::bail!("demo: making provider 1 failed: {}", res.text().await?);
    }
    // Provider 1 made now: a new demo, whose gate 1 is made below. Made before (an earlier
    // --demo, or the operator's): its gate 1 is left as it is, token, PIN and name.
    let fresh = res.status().is_success();
    let now = stile_gateway::now_s();
    let event = post(
        "/v1/events",
        serde_json::json!({
            "provider": 1, "name": "Demo match", "venue": "Demo stadium",
            "starts_at": stile_gateway::rfc3339(now + 3600),
            "valid_from": stile_gateway::rfc3339(now - 60),
            "valid_until": stile_gateway::rfc3339(now + 86_400),
            "capacity": 1000,
        }),
    )
    .send()
    .await?
    .error_for_status()
    .context("demo: making the event")?
    .json::<serde_json::Value>()
    .await?;
    let tickets: Vec<_> = (0..DEMO_TICKETS)
        .map(|i| serde_json::json!({"holder": {"name": format!("Demo fan {}", i + 1)}}))
        .collect();
    let booking = post(
        "/v1/bookings",
        serde_json::json!({"event": event["id"], "tickets": tickets, "payment_ref": "demo"}),
    )
    .header("idempotency-key", format!("demo-{now}"))
    .send()
    .await?
    .error_for_status()
    .context("demo: booking")?
    .json::<serde_json::Value>()
    .await?;
    let pages = booking["tickets"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["page"].as_str())
                .map(|p| format!("{base}{p}"))
                .collect()
        })
        .unwrap_or_default();
    let gate = if fresh {
        post(
            "/v1/providers/1/gates",
            serde_json::json!({"gate": 1, "name": "Demo gate"}),
        )
        .send()
        .await?
        .error_for_status()
        .context("demo: gate token")?
        .json::<serde_json::Value>()
        .await?
    } else {
        serde_json::Value::Null
    };
    Ok(Demo {
        pages,
        gate: gate["token"]
            .as_str()
            .zip(gate["pin"].as_str())
            .map(|(t, p)| (t.to_string(), p.to_string())),
    })
}
