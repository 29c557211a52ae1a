//! One stream: a reader that parses requests and hands them to the engine a read at a
//! time, and a writer that sends the answers once what they observed is durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use stile_certs::{Identity, Role};
use stile_engine::wal::Durability;
use stile_engine::Gate;
use stile_protocol::frame::{error_code, split_frame, Request, Response};
use tokio::sync::{mpsc, Semaphore};

use crate::batch::Batch;
use crate::budget::Budget;
use crate::cmd::error;
use crate::conn::one_line;
use crate::metrics::{op_index, OpTally, OPS};
use crate::Shared;

/// Bytes read from a stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// How long a finished stream waits for the peer to acknowledge its last answers.
const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Bytes of answers the writer gathers before one write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Bytes a stream's read and write buffers start with; they grow with its traffic. Thousands
/// of gates each hold a stream: buffers of full size from the start cost 320 KiB a gate,
/// and zeroing the fresh pages of 4,096 of them at once held the node's CPUs for over a
/// second, past the gates' idle timeout.
const BUF_START: usize = 4 * 1024;

/// Answers on their way to the writer.
pub(crate) struct Out {
    /// Encoded answer frames.
    pub(crate) bytes: BytesMut,
    /// What they wait for before going out.
    pub(crate) after: Durability,
    /// In-flight slots these answers free once written.
    pub(crate) slots: u32,
    /// When the requests they answer were read (their latency runs from here).
    pub(crate) read_at: Instant,
    /// The requests they answer, by op (none for subscription events).
    pub(crate) ops: OpTally,
}

/// An [`OpTally`] of one request of op `op`.
pub(crate) fn one_op(op: u8) -> OpTally {
    let mut ops = [0; OPS];
    ops[op_index(op)] = 1;
    ops
}

/// What a stream's reader needs at hand: the stream, who is on it, and where its answers
/// go. What one read gathers for the engine is its [`Batch`].
pub(crate) struct Stream {
    /// State every connection shares.
    pub(crate) shared: Arc<Shared>,
    /// The stream's connection.
    pub(crate) conn: quinn::Connection,
    /// Who the peer is, from its certificate.
    pub(crate) identity: Arc<Identity>,
    /// The gate this peer is (gates only) and its budget.
    pub(crate) gate: Option<(Gate, Arc<Budget>)>,
    /// Answers to the stream's writer.
    pub(crate) tx: mpsc::UnboundedSender<Out>,
    /// In-flight slots: one per request read and not yet answered.
    pub(crate) slots: Arc<Semaphore>,
    /// What the current read gathered: check-ins for the engine, answers decided early,
    /// outcomes to count.
    pub(crate) batch: Batch,
    /// When the current read arrived.
    pub(crate) read_at: Instant,
    /// The same on the budgets' clock.
    pub(crate) now_ms: u64,
    /// Op of the request being handled.
    pub(crate) op: u8,
    /// This gate's scan counter (gates only).
    pub(crate) gate_slot: Option<usize>,
    /// Subscriptions this stream started, by their request id.
    pub(crate) subscriptions: HashMap<u32, tokio::task::AbortHandle>,
}

/// Reads a stream's requests, hands them to the engine a read at a time, and leaves the
/// answers to its writer, until the stream ends or the node shuts down.
pub(crate) async fn serve_stream(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    identity: Arc<Identity>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    if let Role::Node { name } = &identity.role {
        // A node's only business with another is to follow its log.
        return crate::replicate::serve(shared, name.clone(), send, recv).await;
    }
    let slots = Arc::new(Semaphore::new(shared.config.inflight_per_stream.max(1)));
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_loop(send, rx, slots.clone(), shared.clone()));
    let gate = match identity.role {
        Role::Gate { id, provider } => Some((Gate::new(id, provider), shared.budget(provider, id))),
        Role::Admin { .. } | Role::Node { .. } => None,
    };
    let gate_slot = gate.as_ref().map(|(g, _)| shared.metrics.gate_slot(g.id));
    let mut s = Stream {
        shared: shared.clone(),
        conn: conn.clone(),
        identity,
        gate,
        tx,
        slots,
        batch: Batch::new(),
        read_at: Instant::now(),
        now_ms: 0,
        op: 0,
        gate_slot,
        subscriptions: HashMap::new(),
    };
    let mut shutdown = shared.shutdown.clone();
    let mut buf = BytesMut::with_capacity(BUF_START);
    'read: loop {
        let chunk = tokio::select! {
            c = recv.read_chunk(READ_CHUNK, true) => c,
            _ = shutdown.wait_for(|s| *s) => break 'read,
        };
        match chunk {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) | Err(_) => break 'read,
        }
        s.read_at = Instant::now();
        s.now_ms = shared.ms_at(s.read_at);
        loop {
            let (n, id, req) = match split_frame(&buf) {
                Ok(Some((n, body))) => match Request::decode(body) {
                    Ok((id, req)) => (n, id, req),
                    Err(e) => return refuse(&conn, &e),
                },
                Ok(None) => break,
                Err(e) => return refuse(&conn, &e),
            };
            buf.advance(n);
            match s.slots.clone().try_acquire_owned() {
                Ok(p) => p.forget(),
                Err(_) => {
                    // Too many in flight: answer what we have, then wait for room.
                    s.flush();
                    tokio::select! {
                        p = s.slots.clone().acquire_owned() => match p {
                            Ok(p) => p.forget(),
                            Err(_) => break 'read,
                        },
                        _ = conn.closed() => break 'read,
                    }
                }
            }
            s.handle(id, req);
            if s.batch.is_full() {
                s.flush();
            }
        }
        s.flush();
    }
    s.flush();
    drop(s);
    let _ = writer.await;
}

fn refuse(conn: &quinn::Connection, e: &stile_protocol::frame::FrameError) {
    let remote = conn.remote_address();
    tracing::warn!(%remote, reason = %one_line(e), "closing connection");
    let reason = e.to_string();
    conn.close(e.close_code().into(), reason.as_bytes());
}

async fn write_loop(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Out>,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
) {
    let mut out = BytesMut::with_capacity(BUF_START);
    // When and what each write's answers were asked for, for the latency histograms.
    let mut written: Vec<(Instant, OpTally)> = Vec::with_capacity(64);
    let mut held = None;
    while let Some(freed) = gather(&mut rx, &mut held, &mut out, &mut written).await {
        if send.write_all(&out).await.is_err() {
            // The peer is gone: nothing more goes out, and what it asked leaves flight.
            rx.close();
            let m = &shared.metrics;
            for (_, ops) in written.drain(..) {
                m.dropped(ops.iter().sum());
            }
            for o in held
                .take()
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                m.dropped(o.ops.iter().sum());
            }
            return;
        }
        let now = Instant::now();
        for (read_at, ops) in written.drain(..) {
            shared.metrics.answered(&ops, read_at, now);
        }
        out.clear();
        slots.add_permits(freed as usize);
    }
    // Wait until the peer has every answer: closing the connection before that would drop
    // answers still in flight, and the gate would resend scans that were already done.
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
    }
}

/// Gathers the answers of the next write into `out` and returns the in-flight slots they
/// free; `None` once the stream's reader is done and every answer is written.
///
/// The first answer waits for the log. Those queued behind it join the write only if they may
/// already go out; the first that may not is `held` for the next write. Answers made durable
/// by one sync thus leave together, and never wait behind a later batch's sync: under steady
/// traffic the queue is never empty, and waiting on each answer in turn held durable answers
/// back for several syncs.
async fn gather(
    rx: &mut mpsc::UnboundedReceiver<Out>,
    held: &mut Option<Out>,
    out: &mut BytesMut,
    written: &mut Vec<(Instant, OpTally)>,
) -> Option<u32> {
    let mut first = match held.take() {
        Some(o) => o,
        None => rx.recv().await?,
    };
    std::mem::replace(&mut first.after, Durability::READY)
        .wait_async()
        .await;
    let mut freed = 0;
    let mut next = Some(first);
    while let Some(o) = next.take() {
        out.extend_from_slice(&o.bytes);
        freed += o.slots;
        written.push((o.read_at, o.ops));
        if out.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(o) if o.after.is_ready() => next = Some(o),
                Ok(o) => *held = Some(o),
                Err(_) => {}
            }
        }
    }
    Some(freed)
}

impl Stream {
    /// Hands answers to the writer; their requests are in flight until it writes them.
    pub(crate) fn send(&self, out: Out) {
        let n = out.ops.iter().sum();
        self.shared.metrics.accepted(n);
        if self.tx.send(out).is_err() {
            // The writer has stopped (its peer went away).
            self.shared.metrics.dropped(n);
        }
    }

    /// Sends one response to the current request now (it waits for nothing).
    pub(crate) fn reply(&self, id: u32, resp: &Response) {
        self.reply_after(id, resp, Durability::READY);
    }

    /// An answer that goes out once `after` is reached.
    pub(crate) fn reply_after(&self, id: u32, resp: &Response, after: Durability) {
        let mut bytes = BytesMut::new();
        resp.encode(id, &mut bytes);
        self.send(Out {
            bytes,
            after,
            slots: 1,
            read_at: self.read_at,
            ops: one_op(self.op),
        });
    }

    pub(crate) fn forbidden(&self, id: u32, what: &str) {
        let message = format!(
            "{what} needs the admin role; this is {}",
            self.identity.role
        );
        self.reply(id, &error(error_code::FORBIDDEN, message));
    }

    /// A gate's op asked by an admin.
    pub(crate) fn gates_only(&self, id: u32, what: &str) {
        let message = format!(
            "{what} needs a gate certificate (an admin checks in with checkin_as); this is {}",
            self.identity.role
        );
        self.reply(id, &error(error_code::FORBIDDEN, message));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use stile_engine::wal::{Record, SyncMode, Wal};

    fn answer(byte: u8, after: Durability) -> Out {
        Out {
            bytes: BytesMut::from(&[byte][..]),
            after,
            slots: 1,
            read_at: Instant::now(),
            ops: one_op(stile_protocol::frame::op::CHECKIN),
        }
    }

    /// An answer already durable goes out at once, though answers queued behind it still
    /// wait for the log; those join the next write together once their sync is done.
    #[tokio::test]
    async fn durable_answers_do_not_wait_behind_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 0, None, SyncMode::Always, 64 << 20).unwrap();
        // Number 0 reserved and not yet submitted: number 1 cannot be durable before it.
        let gap = wal.reserve(1);
        let mut later = wal.reserve(1);
        later.push(&Record::State {
            partition: 0,
            serial: 1,
            word: 1 << 8,
            first_scan_e: 1,
            scan: None,
        });
        let pending = later.submit();
        assert!(!pending.is_ready());

        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(answer(1, Durability::READY)).unwrap();
        tx.send(answer(2, pending)).unwrap();
        tx.send(answer(3, Durability::READY)).unwrap();
        let (mut held, mut out, mut written) = (None, BytesMut::new(), Vec::new());
        let freed = tokio::time::timeout(
            Duration::from_secs(10),
            gather(&mut rx, &mut held, &mut out, &mut written),
        )
        .await
        .expect("a durable answer waited for a later one's sync");
        assert_eq!((freed, &out[..]), (Some(1), &[1u8][..]));
        assert!(
            held.is_some(),
            "the answer still waiting is kept for the next write"
        );

        out.clear();
        let freed = {
            let next = gather(&mut rx, &mut held, &mut out, &mut written);
            tokio::pin!(next);
            // Number 0 is still reserved, so number 1 cannot be durable however long this
            // takes: however often it is polled, with the log writer running in between,
            // `gather` must stay pending. (No time is measured.)
            for _ in 0..100 {
                let polled = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(
                        std::future::Future::poll(next.as_mut(), cx).is_pending(),
                    )
                })
                .await;
                assert!(polled, "an answer went out before its log was durable");
                tokio::task::yield_now().await;
                std::thread::yield_now();
            }
            drop(gap);
            tokio::time::timeout(Duration::from_secs(10), next)
                .await
                .expect("answers stayed back after their sync")
        };
        assert_eq!((freed, &out[..]), (Some(2), &[2u8, 3][..]));
        assert_eq!(written.len(), 3);

        drop(tx);
        out.clear();
        assert_eq!(
            gather(&mut rx, &mut held, &mut out, &mut written).await,
            None
        );
    }
}
