//! Live ticket state: one task per shard reads its `subscribe` stream, records each change
//! of a ticket the gateway sold (scans for occupancy and attendance, account events for
//! linked devices) and wakes the server-sent-event streams that show it.
//!
//! The stream comes from whichever node of the shard leads, and its cursor (`node_cursors`)
//! is kept under the shard's key ([`Shard::key`]), not a node's address: a shard's nodes
//! number their logs alike, so after a failover the new leader's stream goes on from the
//! same position rather than from 0.
//!
//! A follower that reads too slowly (the client drops a subscription
//! [`stile_protocol::client::SUBSCRIPTION_BACKLOG`] batches behind) records what it got and
//! subscribes again from its cursor, counted in `stile_gateway_resubscribes_total`; the
//! node is not reported down for it.
//!
//! A change wakes only the streams of its own ticket, account or device: each key has one
//! [`Signal`] (a version and a `Notify`) shared by the streams that watch it, so an idle
//! stream of another ticket costs nothing, and a stream that was busy while several changes
//! came re-reads once. Streams are capped in all, per key and per client address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use stile_protocol::client::ClientError;
use stile_protocol::frame::{error_code, Event, EventKind, TicketStateName};
use tokio::sync::Notify;

use crate::db::DbError;
use crate::nodes::Shard;
use crate::App;

/// Longest wait between attempts to reach a node that is down.
const RECONNECT_MAX_MS: u64 = 5_000;

/// A ticket changed, an account got an event, or a device was unlinked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// The ticket with this code (as minted) changed state (or was transferred).
    Ticket(Arc<str>),
    /// This account has new events.
    Account(i64),
    /// This device was unlinked: its streams end.
    Device(i64),
}

/// One key's wake-up, shared by the streams that watch the key.
#[derive(Debug, Default)]
pub struct Signal {
    /// Bumped by every change of the key.
    version: AtomicU64,
    /// Wakes the streams waiting on the key.
    notify: Notify,
}

/// A stream's watch of one key: it wakes when the key changed since it last looked.
#[derive(Debug)]
pub struct Watch {
    /// The key's signal.
    signal: Arc<Signal>,
    /// The version last seen.
    seen: u64,
    /// The key, to drop the signal when its last watch goes.
    key: Change,
    /// The shared state the signal is registered in.
    app: Arc<App>,
}

impl Watch {
    /// Resolves once the key changed after the last time this returned (or the watch was
    /// made); any number of changes in between resolve it once.
    pub async fn changed(&mut self) {
        loop {
            let notified = self.signal.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let version = self.signal.version.load(Ordering::Acquire);
            if version != self.seen {
                self.seen = version;
                self.app.metrics.sse_wakeups.inc();
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut signals = self
            .app
            .live
            .signals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Under the map's lock no new watch can share this signal: if this is the last, the
        // key goes.
        if Arc::strong_count(&self.signal) == 1 {
            signals.remove(&self.key);
        }
    }
}

/// Fan-out of changes to the streams that watch them.
#[derive(Debug)]
pub struct Live {
    /// The signal of every key some stream watches.
    signals: Mutex<HashMap<Change, Arc<Signal>>>,
    /// Keys of the shards whose event stream a task follows.
    followed: Mutex<std::collections::HashSet<Arc<str>>>,
    /// Open SSE streams.
    streams: StreamCounts,
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

impl Live {
    /// No subscribers yet.
    pub fn new() -> Live {
        Live {
            signals: Default::default(),
            followed: Default::default(),
            streams: Default::default(),
        }
    }

    /// Wakes the streams that watch `change`'s key, and no other.
    pub fn publish(&self, change: Change) {
        let signals = self.signals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(signal) = signals.get(&change) {
            signal.version.fetch_add(1, Ordering::Release);
            signal.notify.notify_waiters();
        }
    }

    /// A watch of `key` from now on.
    pub fn watch(app: &Arc<App>, key: Change) -> Watch {
        let mut signals = app.live.signals.lock().unwrap_or_else(|p| p.into_inner());
        let signal = signals.entry(key.clone()).or_default().clone();
        let seen = signal.version.load(Ordering::Acquire);
        Watch {
            signal,
            seen,
            key,
            app: app.clone(),
        }
    }

    /// Keys some stream watches now (for tests and metrics).
    pub fn watched_keys(&self) -> usize {
        self.signals.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The state words of a state name.
pub fn state_word(state: TicketStateName) -> &'static str {
    match state {
        TicketStateName::Valid => "valid",
        TicketStateName::Used => "used",
        TicketStateName::Revoked => "revoked",
        TicketStateName::Expired => "expired",
    }
}

/// Starts following `shard`'s events unless a task already does (for the same nodes in
/// any order).
pub fn ensure_following(app: &Arc<App>, shard: &Shard) {
    let mut followed = app.live.followed.lock().unwrap_or_else(|p| p.into_inner());
    if followed.insert(shard.key().into()) {
        tokio::spawn(follow_shard(app.clone(), shard.clone()));
    }
}

/// A ticket that changed, and its account.
type Changed = (Arc<str>, Option<i64>);

/// Follows `shard`'s event stream from the stored cursor until the gateway stops.
async fn follow_shard(app: Arc<App>, shard: Shard) {
    let mut shutdown = app.shutdown.clone();
    let mut backoff_ms = 100;
    loop {
        let run = follow_once(&app, &shard);
        let result = tokio::select! {
            r = run => r,
            _ = crate::stopped(&mut shutdown) => return,
        };
        match result {
            // The node answers: follow it again from the stored cursor (at once when only
            // the gateway was slow).
            Ok(Ended::FellBehind) => {
                backoff_ms = 100;
                continue;
            }
            Ok(Ended::Trimmed) => backoff_ms = 100,
            Err(e) => {
                app.metrics.node_up.set(0);
                app.metrics.node_stream_failures.inc();
                tracing::warn!(%shard, error = %e, "node event stream; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        backoff_ms = (backoff_ms * 2).min(RECONNECT_MAX_MS);
    }
}

/// Why following a node stopped while the node still answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The gateway read too slowly and the client dropped the subscription
    /// ([`stile_protocol::client::SUBSCRIPTION_BACKLOG`] batches behind); what it had
    /// received is recorded, the rest is read again from the cursor.
    FellBehind,
    /// The node no longer has the log from the cursor on; the cursor skipped to its end.
    Trimmed,
}

/// Why following a node stopped.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for FollowError {
    fn from(e: rusqlite::Error) -> Self {
        FollowError::Db(e.into())
    }
}

async fn follow_once(app: &Arc<App>, shard: &Shard) -> Result<Ended, FollowError> {
    let client = app.nodes.client(shard).await?;
    let s = shard.clone();
    let from: u64 = app
        .db
        .call(move |c| -> Result<u64, FollowError> { Ok(load_cursor(c, &s)?) })
        .await?;
    let mut sub = client.subscribe(from).await?;
    app.metrics.node_up.set(1);
    tracing::info!(%shard, from_seq = from, "following node events");
    while let Some(batch) = sub.next().await {
        let events = match batch {
            Ok(events) => events,
            Err(ClientError::Node { code, message }) if code == error_code::TRIMMED => {
                // The node dropped the log before our cursor (a snapshot); skip to its end.
                let stats = client.stats().await?;
                tracing::warn!(%shard, from_seq = from, to_seq = stats.durable_seq, %message,
                    "node no longer has events from the cursor; skipping ahead");
                let s = shard.clone();
                app.db
                    .call(move |c| -> Result<(), FollowError> {
                        save_cursor(c, s.key(), stats.durable_seq)?;
                        Ok(())
                    })
                    .await?;
                return Ok(Ended::Trimmed);
            }
            Err(e) => return Err(e.into()),
        };
        app.metrics.node_events.inc_by(events.len() as u64);
        let (a, s) = (app.clone(), shard.clone());
        let changed = app
            .db
            .call(move |c| -> Result<Vec<Changed>, FollowError> {
                Ok(record_events(
                    c,
                    s.key(),
                    &|p| a.nodes.routes.route(p) == s,
                    &events,
                )?)
            })
            .await?;
        for (code, account) in changed {
            app.live.publish(Change::Ticket(code));
            if let Some(a) = account {
                app.live.publish(Change::Account(a));
            }
        }
    }
    if sub.fell_behind() {
        // Not the node going away: it answered all along, so `node_up` stays as it is.
        app.metrics.resubscribes.inc();
        tracing::debug!(%shard, "fell behind the node's event stream; subscribing again");
        return Ok(Ended::FellBehind);
    }
    Err(ClientError::Closed.into())
}

/// The next log position to read of `shard`: its cursor, else (a shard whose cursor was
/// kept by its first node's address, as the default node's `--node A,B` was) the cursor of
/// its first node, else 0.
fn load_cursor(c: &rusqlite::Connection, shard: &Shard) -> rusqlite::Result<u64> {
    let cursor = |key: &str| -> rusqlite::Result<Option<i64>> {
        c.query_row(
            "SELECT next_seq FROM node_cursors WHERE node = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()
    };
    let mut seq = cursor(shard.key())?;
    if seq.is_none() && shard.addrs().len() > 1 {
        seq = cursor(&shard.first().to_string())?;
    }
    Ok(seq.unwrap_or(0) as u64)
}

/// Stores the next log position to read of the shard keyed `key` ([`Shard::key`]).
fn save_cursor(c: &rusqlite::Connection, key: &str, next_seq: u64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO node_cursors (node, next_seq) VALUES (?1, ?2)
         ON CONFLICT (node) DO UPDATE SET next_seq = excluded.next_seq",
        params![key, next_seq as i64],
    )?;
    Ok(())
}

/// What a state change was, from the ticket's previous state and its new one.
fn kind_of(prev_state: &str, prev_entries: u8, prev_inside: bool, e: &Event) -> &'static str {
    match e.state {
        TicketStateName::Revoked => "revoked",
        _ if e.entries > prev_entries => "entry",
        _ if prev_inside && !e.inside && e.entries == prev_entries => "exit",
        TicketStateName::Valid if prev_state == "used" || e.entries < prev_entries => "undo",
        TicketStateName::Used if prev_state != "used" => "entry",
        _ => "change",
    }
}

/// Records one batch in one transaction: scans, mirrored state, account events, and the
/// cursor of the shard keyed `key`, the events' source. `ours` says whether a provider's
/// tickets route to that shard.
///
/// The old ticket of a transfer (a state event that shares its log position with a
/// `TransferredIn`) keeps its state here: the gateway's own transfer commit marks it
/// transferred and adds its successor in one transaction. Marked revoked here first, it
/// would free its place, and a booking could take it before that commit (or, if the commit
/// never came, for good) while the successor then took a place too.
fn record_events(
    c: &mut rusqlite::Connection,
    key: &str,
    ours: &dyn Fn(u16) -> bool,
    events: &[Event],
) -> rusqlite::Result<Vec<Changed>> {
    let tx = crate::db::immediate(c)?;
    let mut changed = Vec::new();
    let mut next_seq = None;
    let transfers: std::collections::HashSet<u64> = events
        .iter()
        .filter(|e| e.kind == EventKind::TransferredIn)
        .map(|e| e.seq)
        .collect();
    for e in events {
        next_seq = Some(e.seq + 1);
        if e.kind != EventKind::State {
            // The gateway records its own transfers when it makes them; conflicts change
            // no ticket (the conflicts route reads them from the node).
            continue;
        }
        // (partition, serial) is unique on one node; the provider says which node.
        let mut stmt = tx.prepare_cached(
            "SELECT code, event, account, last_state, entries, inside, provider FROM tickets
             WHERE partition = ?1 AND serial = ?2",
        )?;
        let rows = stmt.query_map(params![e.partition, e.serial], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u8>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, u16>(6)?,
            ))
        })?;
        let mut row = None;
        for r in rows {
            let r = r?;
            if ours(r.6) {
                row = Some(r);
                break;
            }
        }
        drop(stmt);
        let Some((code, event, account, prev_state, prev_entries, prev_inside, _)) = row else {
            continue; // minted elsewhere (the CLI, another gateway)
        };
        let kind = kind_of(&prev_state, prev_entries, prev_inside, e);
        let state = match transfers.contains(&e.seq) {
            true => prev_state.as_str(),
            false => state_word(e.state),
        };
        let new = tx.execute(
            "INSERT OR IGNORE INTO scans (seq, code, event, kind, gate, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.seq as i64, code, event, kind, e.gate, e.at_unix_s as i64],
        )?;
        if new == 0 {
            continue; // read before: the log is being read again from an earlier position
        }
        tx.execute(
            "UPDATE tickets SET last_state = CASE WHEN last_state = 'revoked' THEN last_state ELSE ?2 END, entries = ?3, inside = ?4, last_gate = ?5,
                 last_at = ?6,
                 first_entry = CASE WHEN first_entry IS NULL AND ?7 THEN ?6 ELSE first_entry END
             WHERE code = ?1",
            params![
                code,
                state,
                e.entries,
                e.inside,
                e.gate,
                e.at_unix_s as i64,
                kind == "entry"
            ],
        )?;
        if let Some(account) = account {
            let body = serde_json::json!({
                "code": code, "kind": kind, "state": state, "gate": e.gate,
                "at": crate::rfc3339(e.at_unix_s),
            });
            let account_kind = match kind {
                "entry" => "used",
                other => other,
            };
            crate::store::accounts::add_event(&tx, account, &code, account_kind, &body)?;
        }
        changed.push((Arc::<str>::from(code), account));
    }
    if let Some(seq) = next_seq {
        save_cursor(&tx, key, seq)?;
    }
    tx.commit()?;
    Ok(changed)
}

/// Open server-sent-event streams at most (each holds a connection).
pub const SSE_STREAMS_MAX: usize = 8_000;
/// Open streams of one ticket or one account from one client address at most (counted per
/// client, so that nobody who knows a code can take the holder's own streams away).
pub const SSE_STREAMS_PER_KEY_MAX: usize = 16;
/// Open streams of one client address (an IPv6 /64) at most, so that one client with many
/// codes cannot take every slot (a household or an office behind one NAT address stays well
/// under it). The gateway serves clients directly (it terminates TLS): behind a reverse
/// proxy every stream would share the proxy's address.
pub const SSE_STREAMS_PER_CLIENT_MAX: usize = 64;

/// The client a stream is counted against: its IPv4 address, or its IPv6 /64 (one host
/// commonly holds a whole /64, so single IPv6 addresses would not cap anyone).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The address a request came from, put in its extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(
    /// The client's address and port, as the TCP connection says.
    pub SocketAddr,
);

/// Open streams, in all, per ticket or account and per client address.
#[derive(Debug, Default)]
pub struct StreamCounts {
    /// Streams per key (`t:CODE`, `a:ACCOUNT`), and per client address.
    per_key: Mutex<(HashMap<String, usize>, HashMap<IpAddr, usize>)>,
}

/// An open SSE stream's place in the counts and the `sse_streams` gauge; freed on drop.
#[derive(Debug)]
pub struct StreamGauge {
    /// The gauge.
    gauge: prometheus_client::metrics::gauge::Gauge,
    /// The shared state, to give the place back.
    app: Arc<App>,
    /// The stream's key.
    key: String,
    /// The client's address, if known.
    client: Option<IpAddr>,
}

impl StreamGauge {
    /// A place for one more stream of `key` from `client`, unless the limits say no.
    pub fn open(
        app: &Arc<App>,
        key: String,
        client: Option<IpAddr>,
    ) -> Result<StreamGauge, crate::problem::Problem> {
        let mut counts = app
            .live
            .streams
            .per_key
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (per_key, per_client) = &mut *counts;
        let client = client.map(client_key);
        let key = match client {
            Some(c) => format!("{key}@{c}"),
            None => key,
        };
        let total: usize = app.metrics.sse_streams.get().max(0) as usize;
        let n = per_key.get(&key).copied().unwrap_or(0);
        let from_client = client
            .and_then(|c| per_client.get(&c).copied())
            .unwrap_or(0);
        if total >= SSE_STREAMS_MAX
            || n >= SSE_STREAMS_PER_KEY_MAX
            || from_client >= SSE_STREAMS_PER_CLIENT_MAX
        {
            return Err(crate::problem::Problem::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many open live streams (at most {SSE_STREAMS_PER_KEY_MAX} per ticket or \
                     account from one client address, {SSE_STREAMS_PER_CLIENT_MAX} per client \
                     address, {SSE_STREAMS_MAX} in all); close one and retry"
                ),
            )
            .retry_after(5));
        }
        per_key.insert(key.clone(), n + 1);
        if let Some(c) = client {
            per_client.insert(c, from_client + 1);
        }
        app.metrics.sse_streams.inc();
        Ok(StreamGauge {
            gauge: app.metrics.sse_streams.clone(),
            app: app.clone(),
            key,
            client,
        })
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.gauge.dec();
        let mut counts = self
            .app
            .live
            .streams
            .per_key
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (per_key, per_client) = &mut *counts;
        if let Some(n) = per_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per_key.remove(&self.key);
            }
        }
        if let Some(c) = self.client {
            if let Some(n) = per_client.get_mut(&c) {
                *n -= 1;
                if *n == 0 {
                    per_client.remove(&c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the node's transfer event freed the old ticket's place before the
    /// gateway's transfer committed (or when that commit never came, after a crash or a
    /// timeout), so a booking took the place and the successor took one more: a capped
    /// event sold past its capacity. The old side of a transfer keeps its place here.
    #[test]
    fn a_transfer_seen_on_the_node_first_frees_no_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        let _db = crate::db::Db::open(&path).unwrap(); // the schema
        let mut c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "INSERT INTO providers (id, name, created_at) VALUES (1, 'p', 0);
             INSERT INTO events (id, provider, name, venue, starts_at, entry, max_entries,
                 undo_window_s, rotating, reminder_lead_s, created_at, capacity)
             VALUES (1, 1, 'e', 'v', 0, 'single', 1, 60, 0, '[]', 0, 1);
             INSERT INTO bookings (id, event, payment_ref, created_at) VALUES (1, 1, 'p', 0);
             INSERT INTO tickets (code, booking, event, holder_name, provider, partition,
                 serial, rotating, created_at, page_token)
             VALUES ('ALICE', 1, 1, 'Alice', 1, 0, 0, 0, 0, 'tk_a');",
        )
        .unwrap();
        let event = |kind, serial, state| Event {
            seq: 10,
            kind,
            partition: 0,
            serial,
            state,
            inside: false,
            entries: 0,
            gate: 0,
            at_unix_s: 1_800_000_000,
        };
        let node = "127.0.0.1:7443";
        record_events(
            &mut c,
            node,
            &|_| true,
            &[
                event(EventKind::State, 0, TicketStateName::Revoked),
                event(EventKind::TransferredIn, 1, TicketStateName::Valid),
            ],
        )
        .unwrap();
        let sold: i64 = c
            .query_row("SELECT sold FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sold, 1, "Alice's place waits for her successor");
        let carol = c.execute(
            "INSERT INTO tickets (code, booking, event, holder_name, provider, partition,
                 serial, rotating, created_at, page_token)
             VALUES ('CAROL', 1, 1, 'Carol', 1, 0, 2, 0, 0, 'tk_c')",
            [],
        );
        assert!(carol.is_err(), "sold out");
        // A revocation that is no transfer frees the place.
        record_events(
            &mut c,
            node,
            &|_| true,
            &[Event {
                seq: 11,
                ..event(EventKind::State, 0, TicketStateName::Revoked)
            }],
        )
        .unwrap();
        let sold: i64 = c
            .query_row("SELECT sold FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sold, 0);
    }

    #[test]
    fn a_shard_reads_its_cursor_by_key_whatever_the_order_of_its_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        let _db = crate::db::Db::open(&path).unwrap(); // the schema
        let c = rusqlite::Connection::open(&path).unwrap();
        let shard = |text: &str| Shard::parse(text).unwrap();
        let (a, b) = ("127.0.0.1:7001", "127.0.0.1:7002");
        assert_eq!(load_cursor(&c, &shard(a)).unwrap(), 0, "nothing read yet");
        // Kept by the first node's address (the default node's `--node A,B` before cursors
        // were kept by shard): the shard named with that node first goes on from it.
        save_cursor(&c, a, 40).unwrap();
        assert_eq!(load_cursor(&c, &shard(&format!("{a},{b}"))).unwrap(), 40);
        // Once kept by shard, the shard's key wins, in either order of its nodes.
        save_cursor(&c, shard(&format!("{a},{b}")).key(), 55).unwrap();
        assert_eq!(load_cursor(&c, &shard(&format!("{b},{a}"))).unwrap(), 55);
        assert_eq!(load_cursor(&c, &shard(&format!("{a},{b}"))).unwrap(), 55);
        // A lone node keeps its own.
        assert_eq!(load_cursor(&c, &shard(a)).unwrap(), 40);
    }

    #[test]
    fn streams_are_counted_per_ipv4_address_and_ipv6_64() {
        let key = |a: &str| client_key(a.parse().unwrap());
        assert_eq!(key("192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
    }
}
