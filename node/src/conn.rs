//! One connection: its identity, its streams, and each stream's reader and writer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use stile_protocol::frame::{
    close, encode_outcome, error_code, split_frame, sync_mode, Event, EventKind, MintSpec,
    NodeStats, RawCode, Request, Response, TicketInfo, TicketStateName, EVENTS_FRAME_MAX,
    MINT_FRAME_MAX,
};
use stile_protocol::{CodeBytes, CodeFormat, Outcome, OutcomeKind};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::metrics::{
    op_index, outcome_op_index, wire_metrics, OpTally, OutcomeTally, NO_OUTCOMES, OPS,
};
use crate::{Budget, Shared};
use stile_certs::{identity_of, Identity, Role};
use stile_engine::policy::{EntryRule, Policy, Validity};
use stile_engine::wal::tail::LogTail;
use stile_engine::wal::{Durability, Record};
use stile_engine::word::{from_epoch_s, TicketState, Word};
use stile_engine::{
    CheckinRequest, Gate, GateOp, MintRequest, Presented, TicketError, TicketStatus,
};

/// Check-ins gathered into one engine call at most.
const BATCH_MAX: usize = 1024;
/// Bytes read from a stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// How long a finished stream waits for the peer to acknowledge its last answers.
const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Bytes of answers the writer gathers before one write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Answers on their way to the writer.
struct Out {
    /// Encoded answer frames.
    bytes: BytesMut,
    /// What they wait for before going out.
    after: Durability,
    /// In-flight slots these answers free once written.
    slots: u32,
    /// When the requests they answer were read (their latency runs from here).
    read_at: Instant,
    /// The requests they answer, by op (none for subscription events).
    ops: OpTally,
}

/// An [`OpTally`] of one request of op `op`.
fn one_op(op: u8) -> OpTally {
    let mut ops = [0; OPS];
    ops[op_index(op)] = 1;
    ops
}

/// Serves one incoming connection until it closes.
pub(super) async fn serve(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let conn = match incoming.accept() {
        Ok(connecting) => match connecting.await {
            Ok(c) => c,
            Err(e) => {
                // The error may carry the peer's own close reason: any text at all.
                let e = one_line(e);
                tracing::info!("handshake with {remote} failed: {e}");
                return;
            }
        },
        Err(e) => {
            let e = one_line(e);
            tracing::info!("connection from {remote} not accepted: {e}");
            return;
        }
    };
    let identity = match peer_identity(&conn) {
        Ok(i) => i,
        Err(reason) => {
            tracing::warn!("closing connection from {remote}: {}", one_line(&reason));
            conn.close(close::NO_ROLE.into(), reason.as_bytes());
            return;
        }
    };
    let id = conn.stable_id();
    {
        // Registered under the same lock a CRL reload holds, so a revocation that lands
        // between handshake and here is still seen.
        let mut live = shared.live.lock().expect("live connections poisoned");
        if shared
            .revoked
            .lock()
            .expect("revoked set poisoned")
            .contains(&identity.serial)
        {
            conn.close(close::REVOKED.into(), b"certificate revoked");
            return;
        }
        live.insert(id, (identity.serial.clone(), conn.clone()));
    }
    let _open = Running::new(&shared.counters.connections);
    tracing::debug!("{} connected from {remote}", identity.role);
    let identity = Arc::new(identity);
    let mut shutdown = shared.shutdown.clone();
    let mut streams = JoinSet::new();
    let shutting_down = loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok((send, recv)) => {
                    streams.spawn(serve_stream(
                        shared.clone(),
                        conn.clone(),
                        identity.clone(),
                        send,
                        recv,
                    ));
                }
                Err(_) => break false,
            },
            _ = shutdown.wait_for(|s| *s) => break true,
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    };
    if shutting_down {
        // Streams stop reading and answer what they read; then the connection closes.
        while streams.join_next().await.is_some() {}
        conn.close(close::SHUTTING_DOWN.into(), b"node shutting down");
    } else {
        streams.abort_all();
    }
    shared
        .live
        .lock()
        .expect("live connections poisoned")
        .remove(&id);
}

/// `text` on one line: control characters (a newline above all) and bidirectional-text
/// controls escaped, so that nothing a peer sends (the reason of its `CONNECTION_CLOSE`,
/// a name in its certificate) can start a log line of its own, such as a forged
/// `stile::audit` line, or show one text as another.
pub(crate) fn one_line(text: impl std::fmt::Display) -> String {
    let text = text.to_string();
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn peer_identity(conn: &quinn::Connection) -> Result<Identity, String> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or("no client certificate")?;
    let leaf = certs.first().ok_or("no client certificate")?;
    identity_of(leaf.as_ref())
}

/// What a stream's reader needs at hand.
struct Stream {
    /// State every connection shares.
    shared: Arc<Shared>,
    /// The stream's connection.
    conn: quinn::Connection,
    /// Who the peer is, from its certificate.
    identity: Arc<Identity>,
    /// The gate this peer is (gates only) and its budget.
    gate: Option<(Gate, Arc<Budget>)>,
    /// Answers to the stream's writer.
    tx: mpsc::UnboundedSender<Out>,
    /// In-flight slots: one per request read and not yet answered.
    slots: Arc<Semaphore>,
    /// Check-ins of the current read.
    batch: Vec<CheckinRequest>,
    /// Their request ids, in the same order.
    ids: Vec<u32>,
    /// Their outcomes, once the engine ran them.
    outcomes: Vec<Outcome>,
    /// Answers decided without the engine (forged layout, rate limited), sent with the batch.
    early: BytesMut,
    /// How many answers `early` holds.
    early_slots: u32,
    /// The early answers' requests by op.
    early_ops: OpTally,
    /// When the current read arrived.
    read_at: Instant,
    /// The same on the budgets' clock.
    now_ms: u64,
    /// Op of the request being handled.
    op: u8,
    /// Outcomes decided since the last flush, by wire value (added to the node's counters
    /// once per flush).
    outcome_tally: OutcomeTally,
    /// This gate's scan counter (gates only).
    gate_slot: Option<usize>,
    /// Subscriptions this stream started, by their request id.
    subscriptions: HashMap<u32, tokio::task::AbortHandle>,
}

/// Subscriptions one stream may run at once.
pub const SUBSCRIPTIONS_PER_STREAM_MAX: usize = 16;

async fn serve_stream(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    identity: Arc<Identity>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let slots = Arc::new(Semaphore::new(shared.config.inflight_per_stream.max(1)));
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_loop(send, rx, slots.clone(), shared.clone()));
    let gate = match identity.role {
        Role::Gate { id, provider } => Some((Gate::new(id, provider), shared.budget(provider, id))),
        Role::Admin { .. } => None,
    };
    let gate_slot = gate.as_ref().map(|(g, _)| shared.metrics.gate_slot(g.id));
    let mut s = Stream {
        shared: shared.clone(),
        conn: conn.clone(),
        identity,
        gate,
        tx,
        slots,
        batch: Vec::with_capacity(BATCH_MAX),
        ids: Vec::with_capacity(BATCH_MAX),
        outcomes: Vec::with_capacity(BATCH_MAX),
        early: BytesMut::new(),
        early_slots: 0,
        early_ops: [0; OPS],
        read_at: Instant::now(),
        now_ms: 0,
        op: 0,
        outcome_tally: NO_OUTCOMES,
        gate_slot,
        subscriptions: HashMap::new(),
    };
    let mut shutdown = shared.shutdown.clone();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
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
            if s.batch.len() >= BATCH_MAX {
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
    tracing::warn!("closing connection from {remote}: {}", one_line(e));
    let reason = e.to_string();
    conn.close(e.close_code().into(), reason.as_bytes());
}

async fn write_loop(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Out>,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
) {
    let mut out = BytesMut::with_capacity(WRITE_BATCH_BYTES);
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

fn error(code: u16, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

/// The answer to a gate past its forged-code budget.
fn rate_limited() -> Response {
    error(
        error_code::RATE_LIMITED,
        "rate limited: this gate sent too many forged or unknown codes; try again after the \
         cooldown",
    )
}

fn ticket_error(e: &TicketError) -> (u16, String) {
    let code = match e {
        TicketError::Forged => error_code::FORGED,
        TicketError::Unknown => error_code::NOT_FOUND,
        TicketError::NotTransferable(_) => error_code::CONFLICT,
        TicketError::PartitionFull(_) => error_code::UNAVAILABLE,
    };
    (code, e.to_string())
}

impl Stream {
    /// Hands answers to the writer; their requests are in flight until it writes them.
    fn send(&self, out: Out) {
        let n = out.ops.iter().sum();
        self.shared.metrics.accepted(n);
        if self.tx.send(out).is_err() {
            // The writer has stopped (its peer went away).
            self.shared.metrics.dropped(n);
        }
    }

    /// Sends one response to the current request now (it waits for nothing).
    fn reply(&self, id: u32, resp: &Response) {
        self.reply_after(id, resp, Durability::READY);
    }

    /// An answer that goes out once `after` is reached.
    fn reply_after(&self, id: u32, resp: &Response, after: Durability) {
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

    fn forbidden(&self, id: u32, what: &str) {
        let message = format!(
            "{what} needs the admin role; this is {}",
            self.identity.role
        );
        self.reply(id, &error(error_code::FORBIDDEN, message));
    }

    /// A gate's op asked by an admin.
    fn gates_only(&self, id: u32, what: &str) {
        let message = format!(
            "{what} needs a gate certificate (an admin checks in with checkin_as); this is {}",
            self.identity.role
        );
        self.reply(id, &error(error_code::FORBIDDEN, message));
    }

    /// An outcome decided here, sent with the current batch.
    fn early(&mut self, id: u32, outcome: &Outcome) {
        encode_outcome(id, outcome, &mut self.early);
        self.early_slots += 1;
        self.early_ops[op_index(self.op)] += 1;
        self.outcome_tally[outcome_op_index(self.op)][outcome.kind as usize] += 1;
    }

    fn handle(&mut self, id: u32, req: Request) {
        self.op = req.op();
        match req {
            Request::Checkin { scan_id, code } => {
                let Some((gate, budget)) = &self.gate else {
                    return self.gates_only(id, "check-in");
                };
                let (gate, blocked) = (*gate, budget.blocked(self.now_ms));
                match code.code() {
                    _ if blocked => self.early(id, &Outcome::RATE_LIMITED),
                    Err(_) => {
                        // Bytes that are no code spend the budget like a bad tag.
                        let budget = budget.clone();
                        let outcome = self.charge(&budget, Outcome::FORGED);
                        self.early(id, &outcome);
                    }
                    Ok(code) => {
                        self.batch.push(CheckinRequest {
                            gate,
                            scan_id,
                            code,
                        });
                        self.ids.push(id);
                    }
                }
            }
            Request::Exit { scan_id, code } | Request::Undo { scan_id, code } => {
                let op = match req {
                    Request::Exit { .. } => GateOp::Exit,
                    _ => GateOp::Undo,
                };
                let Some((gate, budget)) = &self.gate else {
                    return self.gates_only(id, "exit and undo");
                };
                let (gate, budget) = (*gate, budget.clone());
                self.scan_one(id, op, gate, &budget, scan_id, code);
            }
            Request::CheckinAs {
                gate,
                provider,
                scan_id,
                code,
            } => {
                let identity = self.identity.clone();
                let Role::Admin { name } = &identity.role else {
                    return self.forbidden(id, "checkin_as");
                };
                if gate == 0 {
                    return self.reply(
                        id,
                        &error(error_code::BAD_REQUEST, "gate ids are 1 to 65535"),
                    );
                }
                let budget = self.shared.budget(provider, gate);
                let metrics = &self.shared.metrics;
                metrics.count_gate(metrics.gate_slot(gate), 1);
                let outcome = self.scan_one(
                    id,
                    GateOp::Entry,
                    Gate::new(gate, provider),
                    &budget,
                    scan_id,
                    code,
                );
                tracing::info!(
                    target: "stile::audit",
                    "checkin_as by admin {name}: gate {gate} provider {provider} scan {scan_id}: {}",
                    outcome.kind
                );
            }
            Request::Status { code } => {
                let resp = self.status(code);
                // What it read may be a change not yet durable: the answer waits for every
                // change reserved so far, as a rejection waits for the admit it saw.
                let after = self.shared.engine.observed();
                self.reply_after(id, &resp, after);
            }
            Request::TicketKey { code } => {
                let identity = self.identity.clone();
                let Role::Admin { name } = &identity.role else {
                    return self.forbidden(id, "ticket_key");
                };
                let resp = self.ticket_key(code);
                // Key material leaves the node: say who took which ticket's key.
                let ticket = code.code().map_or_else(
                    |_| "no code".to_string(),
                    |c| {
                        let h = c.header();
                        format!("partition {} serial {}", h.partition, h.serial)
                    },
                );
                tracing::info!(
                    target: "stile::audit",
                    "ticket_key by admin {name}: {ticket}: {}",
                    summary(&resp)
                );
                self.reply(id, &resp);
            }
            Request::Ping => self.reply(id, &Response::Pong),
            // Node-wide counts over every provider's tickets and gates: an operator's view,
            // not a gate's (the gateway and `stile stat` read them with admin certificates).
            Request::Stats => {
                if !matches!(self.identity.role, Role::Admin { .. }) {
                    return self.forbidden(id, "stats");
                }
                let resp = Response::Stats(self.stats());
                self.reply(id, &resp);
            }
            Request::Metrics { op } => {
                if !matches!(self.identity.role, Role::Admin { .. }) {
                    return self.forbidden(id, "metrics");
                }
                let resp = Response::Metrics(wire_metrics(&self.shared, op));
                self.reply(id, &resp);
            }
            Request::Mint(spec) => self.admin_blocking(id, "mint", move |e| mint(e, &spec)),
            Request::Revoke { code } => self.admin_blocking(id, "revoke", move |e| {
                let code = code_or_error(code)?;
                e.revoke(&Presented::Code(code))
                    .map(Response::Outcome)
                    .map_err(|e| ticket_error(&e))
            }),
            Request::Transfer { code } => self.admin_blocking(id, "transfer", move |e| {
                let code = code_or_error(code)?;
                e.transfer(&Presented::Code(code))
                    .map(|c| Response::Codes(vec![c]))
                    .map_err(|e| ticket_error(&e))
            }),
            Request::Subscribe { from_seq } => {
                if !matches!(self.identity.role, Role::Admin { .. }) {
                    return self.forbidden(id, "subscribe");
                }
                self.subscriptions.retain(|_, task| !task.is_finished());
                if self.subscriptions.len() >= SUBSCRIPTIONS_PER_STREAM_MAX {
                    let message = format!(
                        "this stream runs {SUBSCRIPTIONS_PER_STREAM_MAX} subscriptions already: \
                         unsubscribe one first"
                    );
                    return self.reply(id, &error(error_code::BAD_REQUEST, message));
                }
                // The subscription's frames take slots of their own.
                self.slots.add_permits(1);
                let task = tokio::spawn(subscribe(
                    self.shared.clone(),
                    self.conn.clone(),
                    self.tx.clone(),
                    self.slots.clone(),
                    id,
                    from_seq,
                ));
                // A client reusing the id of one still running wants the new one.
                if let Some(old) = self.subscriptions.insert(id, task.abort_handle()) {
                    old.abort();
                }
            }
            Request::Unsubscribe { id: subscribe_id } => {
                // Stopped between frames: a frame already queued still goes out, and the
                // client drops it. Not one started here: nothing to stop, the same answer.
                if let Some(task) = self.subscriptions.remove(&subscribe_id) {
                    task.abort();
                }
                self.reply(id, &Response::Pong);
            }
        }
    }

    /// One gate operation outside the batch (exit, undo, `checkin_as`).
    fn scan_one(
        &mut self,
        id: u32,
        op: GateOp,
        gate: Gate,
        budget: &Budget,
        scan_id: u64,
        code: RawCode,
    ) -> Outcome {
        if budget.blocked(self.now_ms) {
            self.early(id, &Outcome::RATE_LIMITED);
            return Outcome::RATE_LIMITED;
        }
        let Ok(code) = code.code() else {
            self.charge(budget, Outcome::FORGED);
            self.early(id, &Outcome::FORGED);
            return Outcome::FORGED;
        };
        let (outcome, after) =
            self.shared
                .engine
                .scan_deferred(op, &gate, scan_id, &Presented::Code(code));
        let outcome = self.charge(budget, outcome);
        self.outcome_tally[outcome_op_index(self.op)][outcome.kind as usize] += 1;
        let mut bytes = BytesMut::new();
        encode_outcome(id, &outcome, &mut bytes);
        self.send(Out {
            bytes,
            after,
            slots: 1,
            read_at: self.read_at,
            ops: one_op(self.op),
        });
        outcome
    }

    /// Charges a forged or unknown answer to the budget; past it, the answer becomes
    /// `rate_limited`.
    #[inline]
    fn charge(&self, budget: &Budget, outcome: Outcome) -> Outcome {
        if matches!(outcome.kind, OutcomeKind::Forged | OutcomeKind::Unknown) {
            let cooldown = self.shared.config.budget_cooldown.as_millis() as u64;
            if !budget.charge(self.now_ms, cooldown) {
                return Outcome::RATE_LIMITED;
            }
        }
        outcome
    }

    /// Adds the outcomes decided since the last call to the node's counters (and this
    /// gate's scans).
    fn count(&mut self) {
        let tally = std::mem::replace(&mut self.outcome_tally, NO_OUTCOMES);
        let metrics = &self.shared.metrics;
        metrics.count_outcomes(&tally);
        if let Some(slot) = self.gate_slot {
            metrics.count_gate(slot, tally.iter().flatten().sum());
        }
    }

    /// Runs the gathered check-ins through the engine and hands their answers to the writer.
    fn flush(&mut self) {
        if self.batch.is_empty() && self.early.is_empty() {
            self.count();
            return;
        }
        let mut bytes = std::mem::take(&mut self.early);
        let mut slots = std::mem::take(&mut self.early_slots);
        let mut ops = std::mem::replace(&mut self.early_ops, [0; OPS]);
        let mut after = Durability::READY;
        if !self.batch.is_empty() {
            self.outcomes.clear();
            self.outcomes.resize(self.batch.len(), Outcome::FORGED);
            after = self
                .shared
                .engine
                .checkin_batch(&self.batch, &mut self.outcomes);
            if let Some((_, budget)) = &self.gate {
                let budget = budget.clone();
                for i in 0..self.outcomes.len() {
                    self.outcomes[i] = self.charge(&budget, self.outcomes[i]);
                }
            }
            for (id, outcome) in self.ids.iter().zip(&self.outcomes) {
                encode_outcome(*id, outcome, &mut bytes);
                self.outcome_tally[0][outcome.kind as usize] += 1;
            }
            slots += self.batch.len() as u32;
            ops[op_index(stile_protocol::frame::op::CHECKIN)] += self.batch.len() as u32;
            self.batch.clear();
            self.ids.clear();
        }
        self.count();
        self.send(Out {
            bytes,
            after,
            slots,
            read_at: self.read_at,
            ops,
        });
    }

    /// A ticket's state. A gate asks of its provider's tickets only, and spends its budget
    /// on codes that are not genuine or not known exactly as its scans do (in the same
    /// order: the tag first, then the provider, then the ticket), so that status is no free
    /// oracle to try codes against; past the budget it is refused with `RATE_LIMITED`.
    fn status(&self, code: RawCode) -> Response {
        let budget = self
            .gate
            .as_ref()
            .map(|(gate, budget)| (gate.provider, budget));
        if let Some((_, budget)) = budget {
            if budget.blocked(self.now_ms) {
                return rate_limited();
            }
        }
        let charged = |e: (u16, String)| match budget {
            Some((_, budget))
                if self.charge(budget, Outcome::FORGED).kind == OutcomeKind::RateLimited =>
            {
                rate_limited()
            }
            _ => error(e.0, e.1),
        };
        let code = match code_or_error(code) {
            Ok(c) => c,
            Err(e) => return charged(e),
        };
        let found = self.shared.engine.status(&Presented::Code(code));
        let theirs = budget.is_some_and(|(provider, _)| provider != Some(code.provider()));
        match found {
            Err(TicketError::Forged) => charged(ticket_error(&TicketError::Forged)),
            // Genuine, of another provider (known or not): refused, as a scan is.
            _ if theirs => error(
                error_code::FORBIDDEN,
                "ticket of another provider than this gate's",
            ),
            Ok(st) => Response::Ticket(ticket_info(&st)),
            Err(e @ TicketError::Unknown) => charged(ticket_error(&e)),
            Err(e) => {
                let (c, m) = ticket_error(&e);
                error(c, m)
            }
        }
    }

    /// A rotating ticket's key and the time step (admin; the caller checked the role). The
    /// code must be a genuine rotating code of a minted ticket, of any step: the checks and
    /// error codes of [`Self::status`]. Read-only: no log record.
    fn ticket_key(&self, code: RawCode) -> Response {
        let code = match code_or_error(code) {
            Ok(c) => c,
            Err((c, m)) => return error(c, m),
        };
        if code.format() != CodeFormat::Rotating {
            return error(
                error_code::BAD_REQUEST,
                "ticket_key is for rotating codes; this code is static",
            );
        }
        let engine = &self.shared.engine;
        if let Err(e) = engine.status(&Presented::Code(code)) {
            let (c, m) = ticket_error(&e);
            return error(c, m);
        }
        let h = code.header();
        match engine.keys().ticket_key(h.key_id, h.partition, h.serial) {
            Some(key) => Response::TicketKey {
                key,
                step_s: engine.rotation_step_s(),
            },
            // The key was retired between the look-up and here.
            None => {
                let (c, m) = ticket_error(&TicketError::Forged);
                error(c, m)
            }
        }
    }

    fn stats(&self) -> NodeStats {
        let engine = &self.shared.engine;
        let outcomes = self.shared.metrics.outcome_counts();
        let mut s = NodeStats {
            tickets: engine.minted_tickets(),
            scans: outcomes.iter().sum(),
            admitted: outcomes[OutcomeKind::Admitted as usize],
            connections: self.shared.counters.connections.load(Ordering::Relaxed),
            ..NodeStats::default()
        };
        if let Some(wal) = engine.wal() {
            let w = wal.stats();
            s.wal_records = w.records;
            s.wal_syncs = w.syncs;
            s.fsync_p50_us = w.sync_p50_us;
            s.fsync_p99_us = w.sync_p99_us;
            s.durable_seq = wal.durable_seq();
            s.sync_mode = match wal.mode() {
                stile_engine::SyncMode::Always => sync_mode::ALWAYS,
                stile_engine::SyncMode::Batch { .. } => sync_mode::BATCH,
                stile_engine::SyncMode::None => sync_mode::NONE,
            };
        }
        s
    }

    /// An admin operation that may wait for the log: run off the async threads.
    fn admin_blocking(
        &self,
        id: u32,
        what: &'static str,
        op: impl FnOnce(&stile_engine::Engine) -> Result<Response, (u16, String)> + Send + 'static,
    ) {
        let Role::Admin { name } = &self.identity.role else {
            return self.forbidden(id, what);
        };
        let name = name.clone();
        let engine = self.shared.engine.clone();
        let tx = self.tx.clone();
        let shared = self.shared.clone();
        let (read_at, ops) = (self.read_at, one_op(self.op));
        // In flight from now: the operation may take a while.
        shared.metrics.accepted(1);
        tokio::task::spawn_blocking(move || {
            let resp = match op(&engine) {
                Ok(r) => r,
                Err((code, message)) => Response::Error { code, message },
            };
            tracing::info!(target: "stile::audit", "{what} by admin {name}: {}", summary(&resp));
            let mut bytes = BytesMut::new();
            resp.encode(id, &mut bytes);
            let out = Out {
                bytes,
                after: Durability::READY,
                slots: 1,
                read_at,
                ops,
            };
            if tx.send(out).is_err() {
                shared.metrics.dropped(1);
            }
        });
    }
}

fn summary(resp: &Response) -> String {
    match resp {
        Response::Codes(c) => format!("{} code(s)", c.len()),
        Response::Outcome(o) => o.kind.to_string(),
        Response::TicketKey { step_s, .. } => format!("key handed out (step {step_s} s)"),
        Response::Error { message, .. } => format!("refused: {message}"),
        _ => "done".into(),
    }
}

fn code_or_error(code: RawCode) -> Result<CodeBytes, (u16, String)> {
    code.code()
        .map_err(|e| (error_code::FORGED, format!("not a code: {e}")))
}

fn mint(engine: &stile_engine::Engine, spec: &MintSpec) -> Result<Response, (u16, String)> {
    let bad = |m: String| (error_code::BAD_REQUEST, m);
    if spec.count == 0 || spec.count > MINT_FRAME_MAX {
        return Err(bad(format!(
            "a mint request makes 1 to {MINT_FRAME_MAX} tickets, got {}",
            spec.count
        )));
    }
    let opt = |v: u64| (v != 0).then_some(v);
    let policy = Policy {
        provider: spec.provider,
        format: spec.format,
        validity: Validity {
            not_before_unix_s: opt(spec.not_before_unix_s),
            not_after_unix_s: opt(spec.not_after_unix_s),
            duration_from_first_scan_s: (spec.duration_from_first_scan_s != 0)
                .then_some(spec.duration_from_first_scan_s),
        },
        entry: EntryRule {
            max_entries: spec.max_entries,
            records_exits: spec.records_exits,
        },
        undo_window_s: spec.undo_window_s,
    };
    let policy = engine.add_policy(policy).map_err(|e| bad(e.to_string()))?;
    let codes = engine
        .mint(&MintRequest {
            policy,
            partition: spec.partition,
            count: spec.count,
        })
        .map_err(|e| bad(e.to_string()))?;
    Ok(Response::Codes(codes))
}

/// What a holder is shown of a ticket in `state`, `expired` or not (the one mapping from
/// state words to the wire's state names).
fn wire_state(state: TicketState, expired: bool) -> TicketStateName {
    match state {
        TicketState::Used => TicketStateName::Used,
        TicketState::Revoked => TicketStateName::Revoked,
        TicketState::Valid if expired => TicketStateName::Expired,
        TicketState::Valid | TicketState::Unminted => TicketStateName::Valid,
    }
}

fn ticket_info(st: &TicketStatus) -> TicketInfo {
    TicketInfo {
        state: wire_state(st.word.state, st.expired),
        inside: st.word.inside,
        entries: st.word.entries,
        max_entries: st.policy.entry.max_entries,
        provider: st.policy.provider,
        partition: st.partition,
        serial: st.serial,
        gate: st.word.gate,
        format: st.policy.format,
        last_event_unix_s: from_epoch_s(st.word.time_e),
        first_scan_unix_s: st.first_scan_unix_s.unwrap_or(0),
        valid_from_unix_s: st.valid_from_unix_s.unwrap_or(0),
        valid_until_unix_s: st.valid_until_unix_s.unwrap_or(0),
    }
}

/// The events a log record holds (mints, policies and keys hold none).
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
        Record::Policy { .. }
        | Record::Mint { .. }
        | Record::Import { .. }
        | Record::Key { .. } => {}
    }
}

/// Streams ticket events from `from_seq` until the connection or node goes.
async fn subscribe(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    tx: mpsc::UnboundedSender<Out>,
    slots: Arc<Semaphore>,
    id: u32,
    from_seq: u64,
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
        tail = Some(t);
        let mut events = Vec::with_capacity(records.len());
        for (seq, record) in &records {
            events_of(*seq, record, &mut events);
        }
        if !events.is_empty() {
            // One slot per frame: a subscriber that does not read holds the stream back.
            tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p.forget(),
                    Err(_) => return,
                },
                _ = conn.closed() => return,
            }
            if !send(&Response::Events(events), 1) {
                return;
            }
        }
        if caught_up {
            tokio::select! {
                _ = wal.until(limit + 1).wait_async() => {}
                _ = conn.closed() => return,
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Counts a task while it runs, however it ends (aborted, or returning early).
struct Running<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Running<'a> {
    fn new(count: &'a std::sync::atomic::AtomicU64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Running(count)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use stile_engine::wal::{SyncMode, Wal};

    fn answer(byte: u8, after: Durability) -> Out {
        Out {
            bytes: BytesMut::from(&[byte][..]),
            after,
            slots: 1,
            read_at: Instant::now(),
            ops: one_op(stile_protocol::frame::op::CHECKIN),
        }
    }

    /// Peer text is logged on one line: newlines, other control characters and bidi
    /// controls come out escaped; everything else as it was.
    #[test]
    fn peer_text_is_logged_on_one_line() {
        assert_eq!(one_line("plain: ünïcode ok"), "plain: ünïcode ok");
        assert_eq!(
            one_line("refused\nstile::audit: mint by admin root\r\t\u{7f}"),
            "refused\\nstile::audit: mint by admin root\\r\\t\\u{7f}"
        );
        assert_eq!(one_line("a\u{202e}b\u{2066}c"), "a\\u{202e}b\\u{2066}c");
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
            assert!(
                tokio::time::timeout(Duration::from_millis(50), &mut next)
                    .await
                    .is_err(),
                "an answer went out before its log was durable"
            );
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
