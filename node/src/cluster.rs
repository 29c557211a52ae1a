//! A node's place in its shard, decided on etcd, after Patroni's design for synchronous
//! replication. The leader key (`/stile/CLUSTER/shards/ID/leader`), attached to the
//! leader's lease, is taken in one transaction, and only by the node `sync_standby` names
//! (on a fresh shard, where neither key was ever written, by the first node to try); its
//! create revision is the **epoch**, and every later write of the leader is guarded by it.
//! The leader names a synchronous standby in etcd only once the standby has acknowledged
//! everything, and clears the name (to empty) before it answers alone; while the name is
//! empty no one takes over. A leader whose standby acknowledges keeps answering through an
//! etcd outage: no change is answered without the one node that could take over. One that
//! answers alone stops once its lease has run out, counted on its monotonic clock from when
//! the last keep-alive that succeeded was sent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stile_cluster::{Cmp, Compare, Etcd, EtcdError, MemberInfo, Role, ShardKeys, TxnOp};
use stile_engine::Engine;
use stile_protocol::client::ClientConfig;
use tokio::sync::watch;

use crate::replicate::Replication;

/// How often the controller looks at etcd and its lease.
const TICK: Duration = Duration::from_millis(100);

/// What a node needs to take part in its shard.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The etcd client.
    pub etcd: Arc<Etcd>,
    /// The shard's keys.
    pub keys: ShardKeys,
    /// This node's name.
    pub name: String,
    /// Where gates and the shard's other nodes reach this node (`host:port`).
    pub advertise: String,
    /// The lease's time to live: a leader that cannot renew it stops within it.
    pub lease_ttl: Duration,
    /// The node's data dir (its epoch and epoch history).
    pub data: PathBuf,
    /// How this node reaches a peer as a client (its node certificate), given the peer's
    /// address.
    pub peer: Arc<dyn Fn(SocketAddr) -> ClientConfig + Send + Sync>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("keys", &self.keys)
            .field("name", &self.name)
            .field("advertise", &self.advertise)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd refused or could not be reached when it had to be.
    #[error("etcd: {0}")]
    Etcd(#[from] EtcdError),
    /// Following the leader failed for good.
    #[error(transparent)]
    Standby(#[from] crate::standby::StandbyError),
    /// A member key names no usable address.
    #[error("{0}")]
    Member(String),
    /// This node must start again as a standby of its shard: it stopped leading, or its
    /// data cannot follow the leader's and must be set aside and seeded afresh.
    #[error("{why}")]
    Rejoin {
        /// Whether the data dir must be seeded afresh from the leader.
        reseed: bool,
        /// Where this node's log parts from the leader's history (its records from there
        /// on are set aside and offered to the leader); `None`: nothing past it.
        diverged_at: Option<u64>,
        /// Why, for people.
        why: String,
    },
}

/// This node's role, as decided on etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// It leads, in this epoch.
    Leader {
        /// The leader key's create revision.
        epoch: u64,
    },
    /// It follows the leader of this name at this address.
    Standby {
        /// The leader's name.
        leader: String,
        /// Where it is reached.
        addr: SocketAddr,
    },
}

/// A lease kept alive by the controller.
#[derive(Debug)]
pub struct Held {
    /// The lease id.
    pub id: i64,
    /// Until when this node may count on it: when the last keep-alive that succeeded was
    /// sent, plus the time to live.
    pub until: Instant,
}

impl ClusterConfig {
    /// Grants a lease and registers this node's member key under it. The key is taken only
    /// if no live node holds it: a second node given the same name (and certificate) would
    /// acknowledge for the first and could take over without its changes. A key of this
    /// node's former life goes with its lease; past that the name is refused.
    pub async fn register(&self, place: &str, durable: u64) -> Result<Held, ClusterError> {
        let key = self.keys.member(&self.name).map_err(EtcdError::from)?;
        let deadline = Instant::now() + self.lease_ttl + Duration::from_secs(2);
        loop {
            let sent = Instant::now();
            let ttl_s = self.lease_ttl.as_secs().max(1) as i64;
            let lease = self.etcd.grant(ttl_s).await?;
            let txn = self
                .etcd
                .txn(
                    &[Compare::CreateRevision(key.clone(), Cmp::Equal, 0)],
                    &[TxnOp::Put {
                        key: key.clone(),
                        value: self.member_info(place, durable, 0).to_json(),
                        lease: Some(lease.id),
                    }],
                    &[TxnOp::Get { key: key.clone() }],
                )
                .await?;
            if txn.succeeded {
                return Ok(Held {
                    id: lease.id,
                    until: sent + self.lease_ttl,
                });
            }
            let _ = self.etcd.revoke(lease.id).await;
            if Instant::now() >= deadline {
                let addr = txn
                    .gets
                    .first()
                    .and_then(|kvs| kvs.first())
                    .and_then(|kv| MemberInfo::from_json(&kv.value).ok())
                    .map(|m| m.addr)
                    .unwrap_or_default();
                return Err(ClusterError::Member(format!(
                    "another node named {} is registered in this shard (at {addr}): each node \
                     needs a name (and certificate) of its own",
                    self.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// [`Self::register`], waiting while etcd cannot be reached: a node that starts (or
    /// starts again to rejoin, which losing etcd may be the cause of) during an etcd outage
    /// joins once it is back rather than exiting.
    pub async fn register_waiting(&self, place: &str, durable: u64) -> Result<Held, ClusterError> {
        let mut pause = Duration::from_millis(200);
        loop {
            match self.register(place, durable).await {
                Err(ClusterError::Etcd(e)) if e.is_transient() => {
                    tracing::warn!(error = %e, "cannot reach etcd to register this node; retrying");
                }
                other => return other,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    fn member_info(&self, role: &str, durable: u64, epoch: u64) -> MemberInfo {
        MemberInfo {
            name: self.name.clone(),
            addr: self.advertise.clone(),
            role: match role {
                "primary" => Role::Primary,
                _ => Role::Standby,
            },
            durable_seq: durable,
            acked_seq: 0,
            epoch: epoch as i64,
        }
    }

    async fn put_member(
        &self,
        lease: i64,
        role: &str,
        durable: u64,
        epoch: u64,
    ) -> Result<(), ClusterError> {
        let info = self.member_info(role, durable, epoch);
        let key = self.keys.member(&self.name).map_err(EtcdError::from)?;
        self.etcd.put(&key, &info.to_json(), Some(lease)).await?;
        Ok(())
    }

    /// The address of member `name`, from its member key.
    async fn addr_of(&self, name: &str) -> Result<Option<SocketAddr>, ClusterError> {
        let key = self.keys.member(name).map_err(EtcdError::from)?;
        let Some(kv) = self.etcd.get(&key).await? else {
            return Ok(None);
        };
        let info = MemberInfo::from_json(&kv.value)
            .map_err(|e| ClusterError::Member(format!("member {name}: {e}")))?;
        use std::net::ToSocketAddrs;
        Ok(info.addr.to_socket_addrs().ok().and_then(|mut a| a.next()))
    }

    /// Decides this node's place: takes the leader key if it may, else finds the leader to
    /// follow; waits (polling) while there is neither.
    pub async fn place(&self, lease: &mut Held, start_seq: u64) -> Result<Place, ClusterError> {
        let mut renewed = Instant::now();
        loop {
            // Kept alive while waiting: the leader key is put under it.
            renew(self, lease, &mut renewed).await;
            if Instant::now() >= lease.until {
                *lease = self.register_waiting("standby", start_seq).await?;
            }
            match self.try_place(lease.id, start_seq).await {
                Ok(Some(place)) => return Ok(place),
                Ok(None) => {}
                // etcd unreachable for now: wait, as for a leader.
                Err(ClusterError::Etcd(e)) if e.is_transient() => {
                    tracing::warn!(error = %e, "cannot reach etcd to find the shard's leader");
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(TICK * 2).await;
        }
    }

    async fn try_place(&self, lease: i64, start_seq: u64) -> Result<Option<Place>, ClusterError> {
        let (leader_key, sync_key) = (self.keys.leader(), self.keys.sync_standby());
        if let Some(kv) = self.etcd.get(&leader_key).await? {
            let leader = String::from_utf8_lossy(&kv.value).into_owned();
            if leader == self.name {
                // Our own key of a former life: its lease runs out, then we try again.
                return Ok(None);
            }
            return Ok(self
                .addr_of(&leader)
                .await?
                .map(|addr| Place::Standby { leader, addr }));
        }
        let sync = self.etcd.get(&sync_key).await?;
        let compare = match &sync {
            // A fresh shard: whoever bootstraps it first leads it.
            None => Compare::CreateRevision(sync_key.clone(), Cmp::Equal, 0),
            Some(kv) if kv.value == self.name.as_bytes() => {
                Compare::Value(sync_key.clone(), Cmp::Equal, self.name.as_bytes().to_vec())
            }
            // Another node may take over, or none (the name is empty): wait.
            Some(_) => return Ok(None),
        };
        let txn = self
            .etcd
            .txn(
                &[
                    Compare::CreateRevision(leader_key.clone(), Cmp::Equal, 0),
                    compare,
                ],
                &[TxnOp::Put {
                    key: leader_key.clone(),
                    value: self.name.as_bytes().to_vec(),
                    lease: Some(lease),
                }],
                &[],
            )
            .await?;
        if !txn.succeeded {
            return Ok(None);
        }
        let epoch = txn.revision as u64;
        if sync.is_none() {
            // The key exists from now on: the shard is no longer fresh.
            self.guarded_put(epoch, &sync_key, b"").await?;
        }
        tracing::info!(epoch, start_seq, "took the shard's leader key");
        Ok(Some(Place::Leader { epoch }))
    }

    /// Puts `value` at `key` if this node still leads in `epoch`; `false` if it does not.
    async fn guarded_put(&self, epoch: u64, key: &str, value: &[u8]) -> Result<bool, ClusterError> {
        let txn = self
            .etcd
            .txn(
                &[Compare::CreateRevision(
                    self.keys.leader(),
                    Cmp::Equal,
                    epoch as i64,
                )],
                &[TxnOp::Put {
                    key: key.to_string(),
                    value: value.to_vec(),
                    lease: None,
                }],
                &[],
            )
            .await?;
        Ok(txn.succeeded)
    }
}

/// Runs this node's part in its shard from `place` on, until `shutdown`: leads (naming and
/// clearing its synchronous standby, stepping down when it must), or follows the leader and
/// takes over when etcd lets it. Returns only for what it cannot mend.
pub async fn run(
    cfg: ClusterConfig,
    engine: Arc<Engine>,
    repl: Arc<Replication>,
    mut lease: Held,
    mut place: Place,
    mut shutdown: watch::Receiver<bool>,
) -> ClusterError {
    loop {
        let next = match place {
            Place::Leader { epoch } => {
                lead(&cfg, &engine, &repl, &mut lease, epoch, &mut shutdown).await
            }
            Place::Standby { ref leader, addr } => {
                follow(
                    &cfg,
                    &engine,
                    &repl,
                    &mut lease,
                    leader,
                    addr,
                    &mut shutdown,
                )
                .await
            }
        };
        match next {
            Ok(Some(p)) => place = p,
            Ok(None) => return ClusterError::Member("shutting down".into()),
            Err(e @ ClusterError::Rejoin { .. }) => {
                // The name is free for this node's next start at once.
                let _ = cfg.etcd.revoke(lease.id).await;
                return e;
            }
            Err(e) => return e,
        }
    }
}

/// Renews the lease if a third of its time has passed; a lease etcd no longer has is
/// replaced (a standby) or lost (the caller sees `until` in the past).
async fn renew(cfg: &ClusterConfig, lease: &mut Held, last: &mut Instant) {
    if last.elapsed() < cfg.lease_ttl / 3 {
        return;
    }
    renew_now(cfg, lease, last).await;
}

/// Renews the lease now.
async fn renew_now(cfg: &ClusterConfig, lease: &mut Held, last: &mut Instant) {
    let sent = Instant::now();
    *last = sent;
    match cfg.etcd.keep_alive(lease.id).await {
        Ok(_) => lease.until = sent + cfg.lease_ttl,
        Err(EtcdError::LeaseNotFound { .. }) => lease.until = sent,
        Err(e) => tracing::warn!(error = %e, "cannot renew the lease"),
    }
}

async fn lead(
    cfg: &ClusterConfig,
    engine: &Arc<Engine>,
    repl: &Arc<Replication>,
    lease: &mut Held,
    epoch: u64,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Place>, ClusterError> {
    let wal = engine.wal().expect("a cluster node keeps a log");
    crate::standby::begin_epoch(&cfg.data, epoch, wal.reserved_seq())?;
    *repl.epochs.lock().expect("epochs poisoned") = crate::standby::read_epochs(&cfg.data);
    repl.set_epoch(epoch);
    // A lease renewed while following may be near its end: renewed now, before the leader
    // judges by it.
    let mut renewed = Instant::now();
    renew_now(cfg, lease, &mut renewed).await;
    repl.set_leading(true, cfg.advertise.clone());
    tracing::info!(epoch, "leading the shard");
    let mut warned = Instant::now() - Duration::from_secs(60);
    let mut member_put = Instant::now() - Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.wait_for(|s| *s) => return Ok(None),
        }
        renew(cfg, lease, &mut renewed).await;
        let named = repl.sync_standby().is_some_and(|s| s.named);
        tracing::trace!(named, candidate = ?repl.sync_standby(), ready = ?repl.ready_candidate(), local = wal.local_seq(), reserved = wal.reserved_seq(), acked = wal.acked_seq(), "leader tick");
        if Instant::now() >= lease.until && !named {
            // Answering alone without a lease: another node may lead by now.
            return step_down(repl, engine, "the lease ran out").await;
        }
        match cfg.etcd.get(&cfg.keys.leader()).await {
            Ok(Some(kv))
                if kv.create_revision as u64 == epoch && kv.value == cfg.name.as_bytes() => {}
            Ok(Some(_)) => return step_down(repl, engine, "another node leads").await,
            Ok(None) => return step_down(repl, engine, "its leader key is gone").await,
            // etcd unreachable: lead on while the lease (or the standby) allows.
            Err(e) => {
                if repl.drop_wanted() && warned.elapsed() >= Duration::from_secs(5) {
                    warned = Instant::now();
                    tracing::error!(
                        error = %e,
                        "answers wait: the synchronous standby stopped acknowledging and etcd \
                         cannot be reached to clear its name, so this node may not answer alone"
                    );
                }
                continue;
            }
        }
        if let Some(name) = repl.ready_candidate() {
            match cfg
                .guarded_put(epoch, &cfg.keys.sync_standby(), name.as_bytes())
                .await
            {
                Ok(true) => repl.mark_named(&name),
                Ok(false) => return step_down(repl, engine, "another node leads").await,
                Err(e) => tracing::warn!(error = %e, "cannot name the synchronous standby"),
            }
        }
        if repl.drop_wanted() {
            match cfg.guarded_put(epoch, &cfg.keys.sync_standby(), b"").await {
                Ok(true) => repl.drop_sync(wal),
                Ok(false) => return step_down(repl, engine, "another node leads").await,
                Err(e) => tracing::warn!(error = %e, "cannot clear the synchronous standby"),
            }
        }
        if member_put.elapsed() >= Duration::from_secs(1) {
            member_put = Instant::now();
            let _ = cfg
                .put_member(lease.id, "primary", wal.local_seq(), epoch)
                .await;
        }
    }
}

/// Decides this node's place again (the leader changed or went), with a live lease.
async fn campaign(
    cfg: &ClusterConfig,
    lease: &mut Held,
    renewed: &mut Instant,
    durable: u64,
    start_seq: u64,
) -> Result<Option<Place>, ClusterError> {
    renew_now(cfg, lease, renewed).await;
    if Instant::now() >= lease.until {
        *lease = cfg.register_waiting("standby", durable).await?;
    }
    cfg.place(lease, start_seq).await.map(Some)
}

/// Stops answering; the node then waits for a leader to follow.
///
/// Answers waiting for the standby's acknowledgement stay waiting: released now, they would
/// tell gates of changes the new leader never had (found by a test: an admit made after a
/// pause was answered as the old primary stepped down).
async fn step_down(
    repl: &Replication,
    engine: &Engine,
    why: &str,
) -> Result<Option<Place>, ClusterError> {
    tracing::warn!(reason = why, "no longer leading the shard");
    repl.set_leading(false, String::new());
    if let Some(wal) = engine.wal() {
        // Whatever the watchdog wanted, nothing is answered without the standby now.
        wal.require_acks(true);
    }
    Err(ClusterError::Rejoin {
        reseed: false,
        diverged_at: None,
        why: format!("this node stopped leading its shard ({why}); it rejoins as a standby"),
    })
}

/// What a refusal by the leader that retrying cannot mend asks of this node: a log that
/// diverged is set aside from where it parts and the node seeded afresh, as is one too far
/// behind (nothing of its own to set aside).
fn rejoin_for(e: crate::standby::StandbyError) -> ClusterError {
    use stile_protocol::frame::error_code;
    let crate::standby::StandbyError::Refused { code, message } = &e else {
        return e.into();
    };
    let diverged_at = match *code {
        error_code::TRIMMED => None,
        error_code::CONFLICT => match crate::standby::diverged_at(message) {
            Some(at) => Some(at),
            None => return e.into(),
        },
        _ => return e.into(),
    };
    ClusterError::Rejoin {
        reseed: true,
        diverged_at,
        why: format!("this node cannot follow its leader as it is ({e}); it is seeded afresh"),
    }
}

async fn follow(
    cfg: &ClusterConfig,
    engine: &Arc<Engine>,
    repl: &Arc<Replication>,
    lease: &mut Held,
    leader: &str,
    addr: SocketAddr,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Place>, ClusterError> {
    repl.set_leading(false, addr.to_string());
    let wal = engine.wal().expect("a cluster node keeps a log");
    let (stop, stopped) = watch::channel(false);
    let follower = {
        let (engine, data, peer) = (engine.clone(), cfg.data.clone(), (cfg.peer)(addr));
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(50);
            loop {
                match crate::standby::follow(engine.clone(), &data, &peer, stopped.clone()).await {
                    Err(crate::standby::StandbyError::Shutdown) => return None,
                    Err(e @ crate::standby::StandbyError::Refused { code, .. })
                        if code == stile_protocol::frame::error_code::TRIMMED
                            || code == stile_protocol::frame::error_code::CONFLICT =>
                    {
                        return Some(e)
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot follow the leader; retrying"),
                    Ok(()) => {}
                }
                if *stopped.borrow() {
                    return None;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        })
    };
    let mut follower = Some(follower);
    let mut registered = Instant::now() - Duration::from_secs(60);
    let mut renewed = Instant::now();
    let mut member_put = Instant::now() - Duration::from_secs(60);
    let result = loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.wait_for(|s| *s) => break Ok(None),
        }
        if follower.as_ref().is_some_and(|f| f.is_finished()) {
            if let Ok(Some(e)) = follower.take().expect("checked").await {
                break Err(rejoin_for(e));
            }
        }
        renew(cfg, lease, &mut renewed).await;
        if Instant::now() >= lease.until && registered.elapsed() >= Duration::from_secs(1) {
            registered = Instant::now();
            match cfg.register("standby", wal.local_seq()).await {
                Ok(held) => *lease = held,
                Err(e) => tracing::warn!(error = %e, "cannot renew this standby's lease"),
            }
        }
        if member_put.elapsed() >= Duration::from_secs(1) {
            member_put = Instant::now();
            let _ = cfg
                .put_member(lease.id, "standby", wal.local_seq(), repl.epoch())
                .await;
        }
        let current = match cfg.etcd.get(&cfg.keys.leader()).await {
            Ok(kv) => kv,
            Err(_) => continue,
        };
        if current.is_some_and(|kv| kv.value == leader.as_bytes()) {
            continue;
        }
        // Another leader, or none (then this node may take over): stop acknowledging the
        // old one first, so that from here on no change is answered with this node's
        // acknowledgement.
        let _ = stop.send(true);
        if let Some(f) = follower.take() {
            let _ = f.await;
        }
        break campaign(
            cfg,
            lease,
            &mut renewed,
            wal.local_seq(),
            wal.reserved_seq(),
        )
        .await;
    };
    let _ = stop.send(true);
    if let Some(f) = follower.take() {
        f.abort();
    }
    result
}
