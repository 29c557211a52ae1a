//! The nodes the gateway talks to, each shard through one pipelined protocol client with
//! the admin certificate, and the provider → shard routes.
//!
//! A route names a shard: one node, or a primary and its standbys (`A,B`), whose client
//! goes to whichever leads. A shard is known by its [`Shard::key`], the same whatever order
//! its nodes are named in: one client and one event cursor per shard.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use stile_protocol::client::{Client, ClientConfig, ClientError, ClientTls};
use tokio::sync::Mutex;

/// How long one connection attempt to a node may take.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// At most this many shards (routes to distinct shards, the default's included).
pub const SHARDS_MAX: usize = 256;
/// At most this many nodes in one shard: a primary, its synchronous standby and one more.
pub const SHARD_NODES_MAX: usize = 3;

/// Why a route's text names no shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// Nothing between two commas, or nothing at all.
    #[error("it has an empty part")]
    EmptyPart,
    /// A part that is no `host:port` address.
    #[error("{0:?} is not an address (an IP address and a port, such as 127.0.0.1:7443)")]
    NotAddress(String),
    /// The same node named twice.
    #[error("it names {0} twice")]
    Duplicate(SocketAddr),
    /// More nodes than a shard has.
    #[error("it names {0} nodes; a shard has at most {SHARD_NODES_MAX}")]
    TooMany(usize),
}

/// One shard's nodes, in the order given (the first is tried first).
#[derive(Debug, Clone)]
pub struct Shard {
    /// The nodes as given: at least one, at most [`SHARD_NODES_MAX`], no duplicates.
    addrs: Arc<[SocketAddr]>,
    /// The shard's name whatever the order of `addrs`: a lone node's address, else the
    /// addresses sorted and joined with `+`. Keys its client and its event cursor.
    key: Arc<str>,
}

impl Shard {
    /// A shard of the nodes at `addrs` (the first tried first).
    pub fn new(addrs: Vec<SocketAddr>) -> Result<Shard, ShardError> {
        if addrs.is_empty() {
            return Err(ShardError::EmptyPart);
        }
        if addrs.len() > SHARD_NODES_MAX {
            return Err(ShardError::TooMany(addrs.len()));
        }
        let mut sorted = addrs.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(ShardError::Duplicate(w[0]));
        }
        let key: Vec<String> = sorted.iter().map(SocketAddr::to_string).collect();
        Ok(Shard {
            addrs: addrs.into(),
            key: key.join("+").into(),
        })
    }

    /// A lone node.
    pub fn one(addr: SocketAddr) -> Shard {
        Shard {
            addrs: Arc::new([addr]),
            key: addr.to_string().into(),
        }
    }

    /// Parses `host:port` or `host:port,host:port[,…]` (IP addresses; spaces around parts
    /// allowed).
    pub fn parse(text: &str) -> Result<Shard, ShardError> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        if parts.len() > SHARD_NODES_MAX {
            return Err(ShardError::TooMany(parts.len()));
        }
        let mut addrs = Vec::with_capacity(parts.len());
        for part in parts {
            if part.is_empty() {
                return Err(ShardError::EmptyPart);
            }
            let addr = part
                .parse()
                .map_err(|_| ShardError::NotAddress(part.to_string()))?;
            addrs.push(addr);
        }
        Shard::new(addrs)
    }

    /// The nodes, the first tried first.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The node tried first.
    pub fn first(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The shard's name whatever order its nodes are given in (see [`Shard`]).
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Shards are the same when they have the same nodes, in any order.
impl PartialEq for Shard {
    fn eq(&self, other: &Shard) -> bool {
        self.key == other.key
    }
}

impl Eq for Shard {}

/// The canonical text of a route: the nodes as given, comma-separated.
impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, a) in self.addrs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

/// Provider → shard, and the default shard of providers without a route of their own.
#[derive(Debug)]
pub struct Routes {
    /// The shard of providers without a route of their own.
    default: Shard,
    /// Provider → shard, for providers with a route of their own.
    routes: RwLock<HashMap<u16, Shard>>,
}

impl Routes {
    /// No routes yet: every provider goes to `default`.
    pub fn new(default: Shard) -> Routes {
        Routes {
            default,
            routes: RwLock::new(HashMap::new()),
        }
    }

    /// The default shard.
    pub fn default_shard(&self) -> &Shard {
        &self.default
    }

    /// Sets (or, with `None`, clears) a provider's route.
    pub fn set_route(&self, provider: u16, shard: Option<Shard>) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        match shard {
            Some(shard) => routes.insert(provider, shard),
            None => routes.remove(&provider),
        };
    }

    /// Whether `provider` has a route of its own.
    pub fn has_route(&self, provider: u16) -> bool {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.contains_key(&provider)
    }

    /// The shard that owns `provider`'s tickets.
    pub fn route(&self, provider: u16) -> Shard {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes.get(&provider).unwrap_or(&self.default).clone()
    }

    /// Whether routing a provider to `shard` would make the routes name more than
    /// [`SHARDS_MAX`] shards.
    pub fn too_many_with(&self, shard: &Shard) -> bool {
        let all = self.all();
        !all.contains(shard) && all.len() >= SHARDS_MAX
    }

    /// Every shard the routes name, once each (whatever the order of its nodes), the
    /// default first.
    pub fn all(&self) -> Vec<Shard> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut all = vec![self.default.clone()];
        for shard in routes.values() {
            if !all.contains(shard) {
                all.push(shard.clone());
            }
        }
        all
    }
}

/// Clients of every shard, made on first use, and the routes.
pub struct Nodes {
    /// Provider → shard.
    pub routes: Routes,
    /// The admin identity and the deployment's CA.
    tls: ClientTls,
    /// Name the nodes' certificates carry.
    server_name: String,
    /// Connected clients by shard key; each follows whichever node of its shard leads.
    clients: Mutex<HashMap<Arc<str>, Arc<Client>>>,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes")
            .field("default", &self.routes.default.to_string())
            .finish()
    }
}

impl Nodes {
    /// Nodes reached with `tls`; providers without a route go to `default`.
    pub fn new(default: Shard, tls: ClientTls, server_name: String) -> Nodes {
        Nodes {
            routes: Routes::new(default),
            tls,
            server_name,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client of `shard`, connecting on first use; it goes to whichever node leads.
    pub async fn client(&self, shard: &Shard) -> Result<Arc<Client>, ClientError> {
        {
            let clients = self.clients.lock().await;
            if let Some(c) = clients.get(shard.key()) {
                return Ok(c.clone());
            }
            if clients.len() >= SHARDS_MAX {
                return Err(ClientError::Connect {
                    node: shard.first(),
                    reason: format!("more than {SHARDS_MAX} shards; remove unused routes"),
                });
            }
        }
        // Connect without the lock: a node that does not answer must not hold up the others.
        let mut config = ClientConfig::new(shard.first(), self.tls.clone());
        config.server_name = self.server_name.clone();
        if shard.addrs().len() > 1 {
            config.nodes = shard.addrs().to_vec();
        }
        let connect = Client::connect(config);
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let client = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        let mut clients = self.clients.lock().await;
        // Two requests may have connected at once; keep the first, drop ours.
        Ok(clients
            .entry(shard.key.clone())
            .or_insert_with(|| Arc::new(client))
            .clone())
    }

    /// The client of the shard that owns `provider`.
    pub async fn for_provider(&self, provider: u16) -> Result<(Shard, Arc<Client>), ClientError> {
        let shard = self.routes.route(provider);
        let client = self.client(&shard).await?;
        Ok((shard, client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_names_one_node_or_a_shard_in_canonical_form() {
        let one = Shard::parse(" 127.0.0.1:7443 ").unwrap();
        assert_eq!(
            (one.to_string(), one.key()),
            ("127.0.0.1:7443".into(), "127.0.0.1:7443")
        );
        let two = Shard::parse("127.0.0.1:7444, 127.0.0.1:7443").unwrap();
        assert_eq!(two.to_string(), "127.0.0.1:7444,127.0.0.1:7443", "as given");
        assert_eq!(two.first(), "127.0.0.1:7444".parse().unwrap());
        assert_eq!(two.key(), "127.0.0.1:7443+127.0.0.1:7444", "sorted");
        let v6 = Shard::parse("[::1]:7443,127.0.0.1:7443,10.0.0.1:1").unwrap();
        assert_eq!(v6.to_string(), "[::1]:7443,127.0.0.1:7443,10.0.0.1:1");
    }

    #[test]
    fn the_same_nodes_in_another_order_are_the_same_shard() {
        let ab = Shard::parse("127.0.0.1:1,127.0.0.1:2").unwrap();
        let ba = Shard::parse("127.0.0.1:2,127.0.0.1:1").unwrap();
        assert_eq!(ab, ba);
        assert_eq!(ab.key(), ba.key());
        assert_ne!(ab, Shard::parse("127.0.0.1:1").unwrap());
        assert_ne!(ab, Shard::parse("127.0.0.1:1,127.0.0.1:3").unwrap());
    }

    #[test]
    fn bad_routes_say_what_is_wrong() {
        use ShardError::*;
        let cases = [
            ("", EmptyPart),
            ("127.0.0.1:1,", EmptyPart),
            (",127.0.0.1:1", EmptyPart),
            ("127.0.0.1:1, ,127.0.0.1:2", EmptyPart),
            ("node-a:7443", NotAddress("node-a:7443".into())),
            ("127.0.0.1", NotAddress("127.0.0.1".into())),
            (
                "127.0.0.1:1,127.0.0.1:99999",
                NotAddress("127.0.0.1:99999".into()),
            ),
            (
                "127.0.0.1:1, 127.0.0.1:1",
                Duplicate("127.0.0.1:1".parse().unwrap()),
            ),
            (
                "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4",
                TooMany(4),
            ),
            (",,,,,,,,,,,,,,,,,,,,,,,,,,,,", TooMany(29)),
        ];
        for (text, want) in cases {
            assert_eq!(Shard::parse(text).unwrap_err(), want, "{text:?}");
        }
    }

    #[test]
    fn every_shard_is_listed_once_the_default_first() {
        let default = Shard::parse("127.0.0.1:1,127.0.0.1:2").unwrap();
        let routes = Routes::new(default.clone());
        routes.set_route(1, Some(Shard::parse("127.0.0.1:2,127.0.0.1:1").unwrap()));
        routes.set_route(2, Some(Shard::parse("127.0.0.1:3,127.0.0.1:4").unwrap()));
        routes.set_route(3, Some(Shard::parse("127.0.0.1:4,127.0.0.1:3").unwrap()));
        let all: Vec<String> = routes.all().iter().map(|s| s.key().to_string()).collect();
        assert_eq!(all, ["127.0.0.1:1+127.0.0.1:2", "127.0.0.1:3+127.0.0.1:4"]);
        assert_eq!(routes.route(9), default);
        assert!(!routes.has_route(9));
        routes.set_route(1, None);
        assert!(!routes.has_route(1));
    }
}
