//! Subscriptions: an admin's stream of ticket events from a log position, which feeds the
//! gateway's live pages and linked devices. At most [`SUBSCRIPTIONS_PER_STREAM_MAX`] a
//! stream, each counted while it runs and stopped by `unsubscribe` or its connection's end.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use stile_certs::Role;
use stile_engine::wal::tail::LogTail;
use stile_engine::wal::{Durability, Record};
use stile_engine::word::{from_epoch_s, Word};
use stile_protocol::frame::{
    error_code, Event, EventKind, Response, TicketStateName, EVENTS_FRAME_MAX,
};
use tokio::sync::{mpsc, Semaphore};

use crate::cmd::error;
use crate::cmd::status::wire_state;
use crate::conn::Running;
use crate::metrics::OPS;
use crate::stream::{Out, Stream};
use crate::Shared;

/// Subscriptions one stream may run at once.
pub const SUBSCRIPTIONS_PER_STREAM_MAX: usize = 16;

impl Stream {
    /// Starts a subscription (admin) from `from_seq`.
    pub(crate) fn subscribe(&mut self, id: u32, from_seq: u64) {
        if !matches!(self.identity.role, Role::Admin { .. }) {
            return self.forbidden(id, "subscribe");
        }
        self.start_follower(id, from_seq, Feed::Events);
    }

    /// Starts a log follower (a subscription, a replica follow) under request id `id`.
    pub(crate) fn start_follower(&mut self, id: u32, from_seq: u64, feed: Feed) {
        self.subscriptions.retain(|_, task| !task.is_finished());
        if self.subscriptions.len() >= SUBSCRIPTIONS_PER_STREAM_MAX {
            let message = format!(
                "this stream runs {SUBSCRIPTIONS_PER_STREAM_MAX} subscriptions already: \
                 unsubscribe one first"
            );
            return self.reply(id, &error(error_code::BAD_REQUEST, message));
        }
        // The follower's frames take slots of their own.
        self.slots.add_permits(1);
        let task = tokio::spawn(follow(
            self.shared.clone(),
            self.conn.clone(),
            self.tx.clone(),
            self.slots.clone(),
            id,
            from_seq,
            feed,
        ));
        // A client reusing the id of one still running wants the new one.
        if let Some(old) = self.subscriptions.insert(id, task.abort_handle()) {
            old.abort();
        }
    }

    /// Stops the subscription this stream started under request id `subscribe_id`.
    pub(crate) fn unsubscribe(&mut self, id: u32, subscribe_id: u32) {
        // Stopped between frames: a frame already queued still goes out, and the
        // client drops it. Not one started here: nothing to stop, the same answer.
        if let Some(task) = self.subscriptions.remove(&subscribe_id) {
            task.abort();
        }
        self.reply(id, &Response::Pong);
    }
}

/// The events a log record holds (mints, policies, keys and purges hold none).
fn events_of(seq: u64, record: &Record, out: &mut Vec<Event>) {
    let event = |kind, partition, serial, raw: u64| {
        let w = Word::unpack(raw);
        Event {
            seq,
            kind,
            partition,
            serial,
            state: wire_state(w.state, false),
            inside: w.inside,
            entries: w.entries,
            gate: w.gate,
            at_unix_s: from_epoch_s(w.time_e),
        }
    };
    match record {
        Record::State {
            partition,
            serial,
            word,
            ..
        } => out.push(event(EventKind::State, *partition, *serial, *word)),
        Record::Transfer {
            partition,
            old_serial,
            old_word,
            new_serial,
            new_word,
            ..
        } => {
            out.push(event(EventKind::State, *partition, *old_serial, *old_word));
            out.push(event(
                EventKind::TransferredIn,
                *partition,
                *new_serial,
                *new_word,
            ));
        }
        Record::Conflict(c) => out.push(Event {
            seq,
            kind: EventKind::Conflict,
            partition: c.partition,
            serial: c.serial,
            state: match c.kind {
                1 => TicketStateName::Used,
                _ => TicketStateName::Revoked,
            },
            inside: false,
            entries: 0,
            gate: c.second_gate,
            at_unix_s: from_epoch_s(c.second_at_e),
        }),
        Record::Policy { .. }
        | Record::Mint { .. }
        | Record::Import { .. }
        | Record::Key { .. }
        | Record::Purge { .. } => {}
    }
}

/// What a follower is sent of the log.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Feed {
    /// Ticket events (an admin's subscription).
    Events,
    /// Replica changes of one provider's tickets (a gate), and a batch with no changes
    /// after each [`REPLICA_HEARTBEAT`] without any, so the gate knows its replica is
    /// current.
    Replica {
        /// The gate's provider.
        provider: u16,
    },
}

/// How long a replica follower goes without a batch when nothing changes.
pub(crate) const REPLICA_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

/// Streams what `feed` wants of the log from `from_seq` until the connection or node goes.
async fn follow(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    tx: mpsc::UnboundedSender<Out>,
    slots: Arc<Semaphore>,
    id: u32,
    from_seq: u64,
    feed: Feed,
) {
    let _running = Running::new(&shared.counters.subscriptions);
    // `slots`: 1 for an events frame, which took a slot; 0 for an error, which did not (the
    // subscribe request's own slot was handed back when it started).
    let send = |resp: &Response, slots: u32| {
        let mut bytes = BytesMut::new();
        resp.encode(id, &mut bytes);
        // Events are not answers to a request: they count in no latency and not in flight.
        tx.send(Out {
            bytes,
            after: Durability::READY,
            slots,
            read_at: Instant::now(),
            ops: [0; OPS],
        })
        .is_ok()
    };
    let Some(wal) = shared.engine.wal() else {
        send(
            &Response::Error {
                code: error_code::UNAVAILABLE,
                message: "this node keeps no log".into(),
            },
            0,
        );
        return;
    };
    let mut tail = Some(LogTail::new(wal.dir(), from_seq));
    // When the last frame went out.
    let mut heartbeat_due = tokio::time::Instant::now();
    let mut shutdown = shared.shutdown.clone();
    loop {
        let limit = wal.durable_seq();
        let mut t = tail.take().expect("the tail is put back");
        let read = tokio::task::spawn_blocking(move || {
            let mut records = Vec::new();
            let r = t.read(limit, EVENTS_FRAME_MAX / 2, &mut records);
            (t, records, r)
        })
        .await;
        let Ok((t, records, result)) = read else {
            return;
        };
        // Caught up even when the tail's position stays below the limit: the numbers left
        // are ones reserved and never written (scans that changed nothing), and reading again
        // before more is durable would only spin.
        let caught_up = match result {
            Ok(caught_up) => caught_up,
            Err(e) => {
                send(
                    &Response::Error {
                        code: error_code::TRIMMED,
                        message: e.to_string(),
                    },
                    0,
                );
                return;
            }
        };
        // Every change below this is in what was read.
        let reached = match caught_up {
            true => limit,
            false => t.next_seq(),
        };
        tail = Some(t);
        let frames = match feed {
            Feed::Events => {
                let mut events = Vec::with_capacity(records.len());
                for (seq, record) in &records {
                    events_of(*seq, record, &mut events);
                }
                match events.is_empty() {
                    true => Vec::new(),
                    false => vec![Response::Events(events)],
                }
            }
            Feed::Replica { provider } => crate::replica::frames_of(
                &shared.engine,
                provider,
                &records,
                reached,
                heartbeat_due.elapsed() >= REPLICA_HEARTBEAT,
            ),
        };
        for frame in &frames {
            // One slot per frame: a follower that does not read holds the stream back.
            tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p.forget(),
                    Err(_) => return,
                },
                _ = conn.closed() => return,
            }
            if !send(frame, 1) {
                return;
            }
            heartbeat_due = tokio::time::Instant::now();
        }
        if caught_up {
            let heartbeat = async {
                match feed {
                    Feed::Events => std::future::pending().await,
                    Feed::Replica { .. } => {
                        tokio::time::sleep_until(heartbeat_due + REPLICA_HEARTBEAT).await
                    }
                }
            };
            tokio::select! {
                _ = wal.until(limit + 1).wait_async() => {}
                _ = heartbeat => {}
                _ = conn.closed() => return,
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}
