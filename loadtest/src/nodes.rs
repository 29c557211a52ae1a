//! The nodes a `quic://` target names, and which of them the gates believe leads.
//!
//! `quic://HOST:PORT` is one node; `quic://A+B` (more `+C` allowed) the nodes of one shard, a
//! primary and its standbys in any order. A gate's link goes to the node believed to lead;
//! when a node answers `not_leader` (its message names the leader, or is empty) or the
//! connection is lost, the belief moves to the leader named, else to the next address in
//! turn, and the gate connects there and resends what is unanswered.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Nodes one target names at most (a shard is a primary and a few standbys).
pub const TARGET_NODES_MAX: usize = 8;
/// Longest pause of a gate whose new links keep being answered `not_leader`: the shard is
/// choosing its leader, and a gate that asked at once again would only be refused again.
pub(crate) const FAILOVER_PAUSE_MAX: Duration = Duration::from_secs(1);
/// The first such pause; each next one is twice as long.
const FAILOVER_PAUSE_FIRST: Duration = Duration::from_millis(50);
/// Longest wait for one node of a shard to take a gate's connection: a dead node (a killed
/// primary answers nothing at all) costs a failover this long before the next is tried.
/// Below the relink's own timeout, so that each attempt moves the belief on.
pub(crate) const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One node of a target, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeName {
    /// `HOST:PORT`, as written.
    pub written: String,
    /// The host: the name the node's certificate must carry.
    pub host: String,
}

/// The nodes of a `quic://` target, in the order written; `None` for a target of another
/// scheme. Each must be `HOST:PORT`; none may be empty or named twice.
pub(crate) fn parse(target: &str) -> Option<Result<Vec<NodeName>, String>> {
    let rest = target.strip_prefix("quic://")?;
    Some(parse_nodes(target, rest.trim_end_matches('/')))
}

fn parse_nodes(target: &str, rest: &str) -> Result<Vec<NodeName>, String> {
    let shape = "write one node as quic://HOST:PORT, a shard's nodes as quic://HOST:PORT+HOST:PORT";
    let parts: Vec<&str> = rest.split('+').collect();
    if parts.len() > TARGET_NODES_MAX {
        return Err(format!(
            "target {target:?} names {} nodes; a shard has at most {TARGET_NODES_MAX}",
            parts.len()
        ));
    }
    let mut nodes: Vec<NodeName> = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let which = match parts.len() {
            1 => "its node".to_string(),
            n => format!("node {} of {n}", i + 1),
        };
        if part.trim().is_empty() {
            return Err(format!("target {target:?}: {which} is empty: {shape}"));
        }
        let node = host_port(part).ok_or_else(|| {
            format!("target {target:?}: {which}, {part:?}, is not HOST:PORT: {shape}")
        })?;
        if nodes.iter().any(|n| n.written == node.written) {
            return Err(format!("target {target:?} names {part} twice"));
        }
        nodes.push(node);
    }
    Ok(nodes)
}

/// `HOST:PORT` (an IPv6 host in brackets). Port 0 passes: `--spawn-node` plans with it
/// before its node has a port.
fn host_port(part: &str) -> Option<NodeName> {
    let (host, port) = part.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let bad =
        |h: &str| h.is_empty() || h.contains(|c: char| c.is_whitespace() || "/[]@".contains(c));
    // An IPv6 address needs its brackets; a host without them has no colon.
    let ok = match bare {
        Some(h) => h.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !bad(host) && !host.contains(':'),
    };
    ok.then(|| NodeName {
        written: part.to_string(),
        host: bare.unwrap_or(host).to_string(),
    })
}

/// The node the gates believe leads, shared by them all.
#[derive(Debug)]
pub(crate) struct Leader {
    /// Every node of the target, in the order written.
    nodes: Vec<SocketAddr>,
    /// The node believed to lead: one of `nodes`, or an address a `not_leader` named.
    at: Mutex<SocketAddr>,
}

impl Leader {
    /// The first of `nodes` believed to lead, until told otherwise.
    pub(crate) fn new(nodes: Vec<SocketAddr>) -> Leader {
        assert!(!nodes.is_empty() && nodes.len() <= TARGET_NODES_MAX);
        Leader {
            at: Mutex::new(nodes[0]),
            nodes,
        }
    }

    /// The node believed to lead.
    pub(crate) fn get(&self) -> SocketAddr {
        *self.at.lock().expect("not poisoned")
    }

    /// A link to `from` failed. A leader `named` (by a `not_leader` answer) is believed at
    /// once, the newest word there is; otherwise the belief moves from `from` to the next
    /// node in turn, unless another gate moved it already.
    pub(crate) fn moved(&self, from: SocketAddr, named: Option<SocketAddr>) {
        let mut at = self.at.lock().expect("not poisoned");
        match named.filter(|n| *n != from) {
            Some(n) => *at = n,
            None if *at == from => *at = self.next_after(from),
            None => {}
        }
    }

    /// The node after `from` in the order written (the first after one not written).
    fn next_after(&self, from: SocketAddr) -> SocketAddr {
        match self.nodes.iter().position(|a| *a == from) {
            Some(i) => self.nodes[(i + 1) % self.nodes.len()],
            None => self.nodes[0],
        }
    }
}

/// How long a gate waits before its next link when its last `refused` links in a row were
/// answered `not_leader` (no answer else between them): nothing after the first, then
/// doubling up to [`FAILOVER_PAUSE_MAX`].
pub(crate) fn failover_pause(refused: u32) -> Duration {
    match refused {
        0 | 1 => Duration::ZERO,
        n => FAILOVER_PAUSE_FIRST
            .saturating_mul(1 << (n - 2).min(16))
            .min(FAILOVER_PAUSE_MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(target: &str) -> Result<Vec<String>, String> {
        parse(target)
            .unwrap()
            .map(|v| v.into_iter().map(|n| n.written).collect())
    }

    #[test]
    fn a_shard_target_names_its_nodes_in_order() {
        assert_eq!(
            written("quic://127.0.0.1:7443").unwrap(),
            ["127.0.0.1:7443"]
        );
        assert_eq!(
            written("quic://a.example:1+[::1]:2+10.0.0.3:3/").unwrap(),
            ["a.example:1", "[::1]:2", "10.0.0.3:3"]
        );
        let n = parse("quic://[::1]:2").unwrap().unwrap();
        assert_eq!(n[0].host, "::1");
        assert!(parse("redis://x:1").is_none());
    }

    #[test]
    fn a_bad_shard_target_says_which_node_is_wrong() {
        for (target, says) in [
            ("quic://", "its node is empty"),
            ("quic://127.0.0.1:1+", "node 2 of 2 is empty"),
            ("quic://+127.0.0.1:1", "node 1 of 2 is empty"),
            ("quic://a:1++b:2", "node 2 of 3 is empty"),
            ("quic://a:1+nonsense", "\"nonsense\", is not HOST:PORT"),
            ("quic://a:1+b:65536", "is not HOST:PORT"),
            ("quic://a:1+b:x", "is not HOST:PORT"),
            ("quic://::1:2", "is not HOST:PORT"),
            ("quic://a:1+a:1", "names a:1 twice"),
            ("quic://a:1+b:1+c:1+d:1+e:1+f:1+g:1+h:1+i:1", "at most 8"),
        ] {
            let e = written(target).unwrap_err();
            assert!(e.contains(says), "{target}: {e}");
        }
    }

    #[test]
    fn the_belief_follows_a_named_leader_else_the_next_node_once() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let leader = Leader::new(vec![a, b]);
        assert_eq!(leader.get(), a);
        // Two gates lose `a` at once: the belief moves on once, not twice.
        leader.moved(a, None);
        leader.moved(a, None);
        assert_eq!(leader.get(), b);
        leader.moved(b, None);
        assert_eq!(leader.get(), a);
        // A node naming itself says nothing new; a named leader is believed.
        leader.moved(a, Some(a));
        assert_eq!(leader.get(), b);
        leader.moved(b, Some(c));
        assert_eq!(leader.get(), c);
        // From a node not written, to the first written.
        leader.moved(c, None);
        assert_eq!(leader.get(), a);
    }

    #[test]
    fn refused_gates_wait_longer_each_time_up_to_a_bound() {
        assert_eq!(failover_pause(1), Duration::ZERO);
        assert_eq!(failover_pause(2), Duration::from_millis(50));
        assert_eq!(failover_pause(3), Duration::from_millis(100));
        assert_eq!(failover_pause(40), FAILOVER_PAUSE_MAX);
    }
}
