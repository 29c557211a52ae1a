//! A cluster's state as etcd holds it, one shard at a time, for operators.

use std::collections::BTreeMap;
use std::fmt;

use crate::client::Etcd;
use crate::error::EtcdError;
use crate::keys::{shards_prefix, MemberInfo};
use crate::kv::Kv;

/// One shard as its keys describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    /// The shard's name.
    pub shard: String,
    /// The leader key's value: the leader's node name; `None` with no leader.
    pub leader: Option<String>,
    /// The leader key's create revision: the leader's epoch.
    pub epoch: Option<i64>,
    /// The sync standby key's value.
    pub sync_standby: Option<String>,
    /// Every member key's info, by name.
    pub members: Vec<MemberInfo>,
    /// Each member other than the leader, by name, with how far its `durable_seq` is behind
    /// the leader's; empty when the leader has no member key.
    pub lag: Vec<(String, u64)>,
    /// Keys of the shard whose values could not be read (a member value that is not
    /// `MemberInfo` JSON, a name that is not UTF-8).
    pub unreadable: Vec<String>,
}

impl ShardStatus {
    /// An empty shard, filled in by [`group`].
    fn new(shard: &str) -> ShardStatus {
        ShardStatus {
            shard: shard.to_string(),
            leader: None,
            epoch: None,
            sync_standby: None,
            members: Vec::new(),
            lag: Vec::new(),
            unreadable: Vec::new(),
        }
    }

    /// How far `name` is behind the leader, if known.
    pub fn lag_of(&self, name: &str) -> Option<u64> {
        self.lag
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, gap)| gap)
    }
}

/// The state of every shard of `cluster`, sorted by shard, read with one range request.
pub async fn cluster_status(etcd: &Etcd, cluster: &str) -> Result<Vec<ShardStatus>, EtcdError> {
    let prefix = shards_prefix(cluster)?;
    let kvs = etcd.get_prefix(&prefix).await?;
    Ok(group(&prefix, kvs))
}

/// The shards the keys under `prefix` describe. Keys of a kind stile does not know are
/// skipped, so that an older `stile status` reads a newer cluster.
pub(crate) fn group(prefix: &str, kvs: Vec<Kv>) -> Vec<ShardStatus> {
    let mut shards: BTreeMap<String, ShardStatus> = BTreeMap::new();
    for kv in kvs {
        let Some(rest) = kv.key.strip_prefix(prefix) else {
            continue;
        };
        let Some((shard, field)) = rest.split_once('/') else {
            continue;
        };
        let status = shards
            .entry(shard.to_string())
            .or_insert_with(|| ShardStatus::new(shard));
        let text = String::from_utf8(kv.value.clone()).ok();
        match (field, field.strip_prefix("members/")) {
            ("leader", _) => match text {
                Some(name) => {
                    (status.leader, status.epoch) = (Some(name), Some(kv.create_revision))
                }
                None => status.unreadable.push(kv.key),
            },
            ("sync_standby", _) => match text {
                Some(name) => status.sync_standby = Some(name),
                None => status.unreadable.push(kv.key),
            },
            (_, Some(_)) => match MemberInfo::from_json(&kv.value) {
                Ok(info) => status.members.push(info),
                Err(_) => status.unreadable.push(kv.key),
            },
            _ => {}
        }
    }
    let mut shards: Vec<ShardStatus> = shards.into_values().collect();
    for s in &mut shards {
        s.members.sort_by(|a, b| a.name.cmp(&b.name));
        let leader = s
            .members
            .iter()
            .find(|m| Some(&m.name) == s.leader.as_ref());
        if let Some(durable) = leader.map(|m| m.durable_seq) {
            s.lag = s
                .members
                .iter()
                .filter(|m| Some(&m.name) != s.leader.as_ref())
                .map(|m| (m.name.clone(), durable.saturating_sub(m.durable_seq)))
                .collect();
        }
    }
    shards
}

impl fmt::Display for ShardStatus {
    /// ```text
    /// shard s1: leader n1, epoch 42, sync standby n2
    ///   member  role     addr           durable  acked  lag
    ///   n1      primary  10.0.0.1:4433  100      98     leader
    ///   n2      standby  10.0.0.2:4433  97       97     3
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_none = |v: Option<&str>| v.unwrap_or("none").to_string();
        let epoch = self.epoch.map_or("none".to_string(), |e| e.to_string());
        writeln!(
            f,
            "shard {}: leader {}, epoch {epoch}, sync standby {}",
            self.shard,
            or_none(self.leader.as_deref()),
            or_none(self.sync_standby.as_deref()),
        )?;
        if self.members.is_empty() {
            writeln!(f, "  no members")?;
        } else {
            let mut rows =
                vec![["member", "role", "addr", "durable", "acked", "lag"].map(String::from)];
            for m in &self.members {
                let lag = if Some(&m.name) == self.leader.as_ref() {
                    "leader".to_string()
                } else {
                    self.lag_of(&m.name)
                        .map_or("unknown".to_string(), |g| g.to_string())
                };
                rows.push([
                    m.name.clone(),
                    m.role.to_string(),
                    m.addr.clone(),
                    m.durable_seq.to_string(),
                    m.acked_seq.to_string(),
                    lag,
                ]);
            }
            write_table(f, &rows)?;
        }
        for key in &self.unreadable {
            writeln!(f, "  unreadable value at {key}")?;
        }
        Ok(())
    }
}

/// Rows in columns as wide as their widest cell, two spaces apart, indented two.
fn write_table<const N: usize>(f: &mut fmt::Formatter<'_>, rows: &[[String; N]]) -> fmt::Result {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::from(" ");
        for (w, cell) in widths.iter().zip(row) {
            line.push(' ');
            line.push_str(&format!("{cell:<w$} "));
        }
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Every shard's [`ShardStatus`], one after the other, or a line saying there are none.
#[derive(Debug, Clone, Copy)]
pub struct StatusTable<'a>(
    /// The shards, as [`cluster_status`] returns them.
    pub &'a [ShardStatus],
);

impl fmt::Display for StatusTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return writeln!(f, "no shards");
        }
        for s in self.0 {
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Role;

    fn kv(key: &str, value: &[u8], create_revision: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.to_vec(),
            create_revision,
            mod_revision: 0,
            lease: 0,
        }
    }

    fn member(name: &str, role: Role, durable_seq: u64) -> Vec<u8> {
        let addr = format!("{name}:4433");
        MemberInfo {
            name: name.into(),
            addr,
            role,
            durable_seq,
            acked_seq: 0,
            epoch: 1,
        }
        .to_json()
    }

    #[test]
    fn keys_group_by_shard_with_epoch_and_lag() {
        let p = "/stile/c/shards/";
        let kvs = vec![
            kv("/stile/c/shards/b/leader", b"n3", 9),
            kv(
                "/stile/c/shards/a/members/n2",
                &member("n2", Role::Standby, 97),
                3,
            ),
            kv("/stile/c/shards/a/leader", b"n1", 5),
            kv(
                "/stile/c/shards/a/members/n1",
                &member("n1", Role::Primary, 100),
                2,
            ),
            kv("/stile/c/shards/a/sync_standby", b"n2", 4),
            kv("/stile/c/shards/a/members/bad", b"{", 6),
            kv("/stile/c/shards/a/future_key", b"?", 7),
        ];
        let s = group(p, kvs);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].shard, "a");
        assert_eq!((s[0].leader.as_deref(), s[0].epoch), (Some("n1"), Some(5)));
        assert_eq!(s[0].sync_standby.as_deref(), Some("n2"));
        assert_eq!(
            s[0].members
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        assert_eq!(s[0].lag, vec![("n2".to_string(), 3)]);
        assert_eq!(
            s[0].unreadable,
            vec!["/stile/c/shards/a/members/bad".to_string()]
        );
        assert_eq!(
            (s[1].shard.as_str(), s[1].epoch, s[1].members.len()),
            ("b", Some(9), 0)
        );
        assert!(s[1].lag.is_empty());
    }

    #[test]
    fn the_table_names_each_member_with_role_and_lag() {
        let p = "/stile/c/shards/";
        let s = group(
            p,
            vec![
                kv("/stile/c/shards/a/leader", b"n1", 5),
                kv(
                    "/stile/c/shards/a/members/n1",
                    &member("n1", Role::Primary, 100),
                    2,
                ),
                kv(
                    "/stile/c/shards/a/members/n2",
                    &member("n2", Role::Standby, 97),
                    3,
                ),
            ],
        );
        let text = StatusTable(&s).to_string();
        assert_eq!(
            text,
            "shard a: leader n1, epoch 5, sync standby none\n\
             \x20 member  role     addr     durable  acked  lag\n\
             \x20 n1      primary  n1:4433  100      0      leader\n\
             \x20 n2      standby  n2:4433  97       0      3\n"
        );
        assert_eq!(StatusTable(&[]).to_string(), "no shards\n");
    }
}
