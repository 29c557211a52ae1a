//! The nodes the gateway talks to, each through one pipelined protocol client with the
//! admin certificate, and the provider → node routes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use stile_protocol::client::{Client, ClientConfig, ClientError, ClientTls};
use tokio::sync::Mutex;

/// How long one connection attempt to a node may take.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// At most this many nodes (routes to distinct addresses).
pub const NODES_MAX: usize = 256;

/// Clients of every node, made on first use, and the routes.
pub struct Nodes {
    /// The node of providers without a route of their own.
    default: SocketAddr,
    /// The admin identity and the deployment's CA.
    tls: ClientTls,
    /// Name the nodes' certificates carry.
    server_name: String,
    /// Connected clients by node address.
    clients: Mutex<HashMap<SocketAddr, Arc<Client>>>,
    /// Provider → node, for providers with a route of their own.
    routes: RwLock<HashMap<u16, SocketAddr>>,
    /// Every node of the default node's shard (empty: the default alone): its client
    /// follows whichever leads.
    shard: Vec<SocketAddr>,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes")
            .field("default", &self.default)
            .finish()
    }
}

impl Nodes {
    /// Nodes reached with `tls`; providers without a route go to `default`.
    pub fn new(default: SocketAddr, tls: ClientTls, server_name: String) -> Nodes {
        Nodes {
            default,
            tls,
            server_name,
            clients: Mutex::new(HashMap::new()),
            routes: RwLock::new(HashMap::new()),
            shard: Vec::new(),
        }
    }

    /// Names the default node's shard: its client goes to whichever of them leads.
    pub fn set_shard(&mut self, shard: Vec<SocketAddr>) {
        self.shard = shard;
    }

    /// The default node.
    pub fn default_node(&self) -> SocketAddr {
        self.default
    }

    /// Sets (or, with `None`, clears) a provider's route.
    pub fn set_route(&self, provider: u16, node: Option<SocketAddr>) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        match node {
            Some(addr) => routes.insert(provider, addr),
            None => routes.remove(&provider),
        };
    }

    /// Whether `provider` has a route of its own.
    pub fn has_route(&self, provider: u16) -> bool {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.contains_key(&provider)
    }

    /// The node that owns `provider`'s tickets.
    pub fn route(&self, provider: u16) -> SocketAddr {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.get(&provider).copied().unwrap_or(self.default)
    }

    /// Every node the routes name, the default first.
    pub fn all(&self) -> Vec<SocketAddr> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut all = vec![self.default];
        for addr in routes.values() {
            if !all.contains(addr) {
                all.push(*addr);
            }
        }
        all
    }

    /// The client of the node at `addr`, connecting on first use.
    pub async fn client(&self, addr: SocketAddr) -> Result<Arc<Client>, ClientError> {
        {
            let clients = self.clients.lock().await;
            if let Some(c) = clients.get(&addr) {
                return Ok(c.clone());
            }
            if clients.len() >= NODES_MAX {
                return Err(ClientError::Connect {
                    node: addr,
                    reason: format!("more than {NODES_MAX} nodes; remove unused routes"),
                });
            }
        }
        // Connect without the lock: a node that does not answer must not hold up the others.
        let mut config = ClientConfig::new(addr, self.tls.clone());
        config.server_name = self.server_name.clone();
        if addr == self.default {
            config.nodes = self.shard.clone();
        }
        let connect = Client::connect(config);
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let client = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        let mut clients = self.clients.lock().await;
        // Two requests may have connected at once; keep the first, drop ours.
        Ok(clients
            .entry(addr)
            .or_insert_with(|| Arc::new(client))
            .clone())
    }

    /// The client of the node that owns `provider`.
    pub async fn for_provider(
        &self,
        provider: u16,
    ) -> Result<(SocketAddr, Arc<Client>), ClientError> {
        let addr = self.route(provider);
        Ok((addr, self.client(addr).await?))
    }
}
