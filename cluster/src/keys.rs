//! Where a stile cluster keeps its state in etcd, and what the values hold.
//!
//! ```text
//! /stile/{cluster}/shards/{shard}/leader           the leader's node name; its create
//!                                                  revision is the shard's epoch
//! /stile/{cluster}/shards/{shard}/sync_standby     the name of the standby the leader waits for
//! /stile/{cluster}/shards/{shard}/members/{name}   MemberInfo as JSON, put with the node's lease
//! ```
//!
//! Names are checked ([`check_name`]) so that none can add a `/` and reach another shard's or
//! cluster's keys.

use serde::{Deserialize, Serialize};

/// Longest cluster, shard or node name.
pub const NAME_MAX_BYTES: usize = 64;

/// A cluster, shard or node name that cannot go into a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} name {name:?} {reason}: use 1 to {NAME_MAX_BYTES} characters of A-Z, a-z, 0-9, '_', '.' and '-'"
)]
pub struct NameError {
    /// Which kind of name: "cluster", "shard" or "node".
    pub what: &'static str,
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks a name for use in a key: 1 to [`NAME_MAX_BYTES`] characters of `[A-Za-z0-9_.-]`,
/// and not `.` or `..`, which read as paths.
pub fn check_name(what: &'static str, name: &str) -> Result<(), NameError> {
    let error = |reason| {
        Err(NameError {
            what,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return error("is empty");
    }
    if name.len() > NAME_MAX_BYTES {
        return error("is too long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return error("holds a character that is not allowed");
    }
    if name == "." || name == ".." {
        return error("reads as a path");
    }
    Ok(())
}

/// The prefix under which every shard of `cluster` keeps its keys: `/stile/{cluster}/shards/`.
pub fn shards_prefix(cluster: &str) -> Result<String, NameError> {
    check_name("cluster", cluster)?;
    Ok(format!("/stile/{cluster}/shards/"))
}

/// The keys of one shard of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKeys {
    /// `/stile/{cluster}/shards/{shard}/`, the prefix of every key of the shard.
    prefix: String,
}

impl ShardKeys {
    /// The keys of `shard` in `cluster`, both names checked.
    pub fn new(cluster: &str, shard: &str) -> Result<ShardKeys, NameError> {
        check_name("shard", shard)?;
        Ok(ShardKeys {
            prefix: format!("{}{shard}/", shards_prefix(cluster)?),
        })
    }

    /// `/stile/{cluster}/shards/{shard}/leader`: the leader's node name, put with its lease.
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// `/stile/{cluster}/shards/{shard}/sync_standby`: the standby the leader waits for.
    pub fn sync_standby(&self) -> String {
        format!("{}sync_standby", self.prefix)
    }

    /// `/stile/{cluster}/shards/{shard}/members/{name}`: the node's [`MemberInfo`].
    pub fn member(&self, name: &str) -> Result<String, NameError> {
        check_name("node", name)?;
        Ok(format!("{}members/{name}", self.prefix))
    }

    /// `/stile/{cluster}/shards/{shard}/members/`, the prefix of the member keys.
    pub fn members_prefix(&self) -> String {
        format!("{}members/", self.prefix)
    }

    /// `/stile/{cluster}/shards/{shard}/`, the prefix of every key of the shard.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// A node's role in its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves check-ins and ships its log.
    Primary,
    /// Follows the primary's log.
    Standby,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        })
    }
}

/// What a node says about itself under its member key, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The node's name, the same as in its key.
    pub name: String,
    /// Where its peers and gates reach it, `host:port`.
    pub addr: String,
    /// Its role as it sees it.
    pub role: Role,
    /// The log position it has made durable.
    pub durable_seq: u64,
    /// The log position its peer has acknowledged (a primary: its standby's; a standby: what
    /// it acknowledged).
    pub acked_seq: u64,
    /// The epoch (leader key create revision) it last saw.
    pub epoch: i64,
}

impl MemberInfo {
    /// The value to put under the member key.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("MemberInfo serializes")
    }

    /// A member key's value back.
    pub fn from_json(bytes: &[u8]) -> Result<MemberInfo, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout() {
        let k = ShardKeys::new("prod", "s-1").unwrap();
        assert_eq!(k.leader(), "/stile/prod/shards/s-1/leader");
        assert_eq!(k.sync_standby(), "/stile/prod/shards/s-1/sync_standby");
        assert_eq!(
            k.member("n.1_a").unwrap(),
            "/stile/prod/shards/s-1/members/n.1_a"
        );
        assert_eq!(shards_prefix("prod").unwrap(), "/stile/prod/shards/");
        assert!(k.leader().starts_with(k.prefix()));
    }

    #[test]
    fn names_that_could_leave_their_place_are_refused() {
        for bad in [
            "",
            "a/b",
            "..",
            ".",
            "a b",
            "é",
            "a\0",
            &"x".repeat(NAME_MAX_BYTES + 1),
        ] {
            assert!(
                ShardKeys::new(bad, "s").is_err(),
                "cluster {bad:?} accepted"
            );
            assert!(ShardKeys::new("c", bad).is_err(), "shard {bad:?} accepted");
            assert!(
                ShardKeys::new("c", "s").unwrap().member(bad).is_err(),
                "node {bad:?}"
            );
        }
        assert!(check_name("node", &"x".repeat(NAME_MAX_BYTES)).is_ok());
        let e = ShardKeys::new("c", "a/b").unwrap_err().to_string();
        assert!(
            e.contains("shard name \"a/b\"") && e.contains("not allowed"),
            "{e}"
        );
    }

    #[test]
    fn member_info_is_the_documented_json() {
        let m = MemberInfo {
            name: "n1".into(),
            addr: "10.0.0.1:4433".into(),
            role: Role::Standby,
            durable_seq: 10,
            acked_seq: 9,
            epoch: 42,
        };
        assert_eq!(
            String::from_utf8(m.to_json()).unwrap(),
            r#"{"name":"n1","addr":"10.0.0.1:4433","role":"standby","durable_seq":10,"acked_seq":9,"epoch":42}"#
        );
        assert_eq!(MemberInfo::from_json(&m.to_json()).unwrap(), m);
    }
}
