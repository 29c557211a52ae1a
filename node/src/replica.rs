//! Gates' replicas and their offline uploads: `replica_page` (a provider's tickets with the
//! fingerprints of their codes, a page at a time), `replica_follow` (every change a replica
//! needs, from a log position, on the shared log follower), `checkin_offline` (one scan a
//! gate decided offline, applied once, in upload order), and an admin's `conflicts`.

use std::collections::BTreeSet;

use stile_certs::Role;
use stile_engine::wal::Record;
use stile_engine::{Engine, Gate, GateOp, KeyStatus, OfflineScan, PolicyId, ReplicaTicket};
use stile_protocol::frame::{
    error_code, Conflict, OfflineScan as WireScan, ReplicaBatch, ReplicaItem, ReplicaPolicy,
    ReplicaState, Response, ScanRef, CONFLICTS_FRAME_MAX, REPLICA_FRAME_ITEMS_MAX,
};

use stile_protocol::OutcomeKind;

use crate::cmd::error;
use crate::cmd::status::wire_state;
use crate::stream::Stream;
use crate::subscribe::Feed;

/// Tickets a page carries at most, leaving room in its frame for the policies they name.
const PAGE_TICKETS_MAX: usize = REPLICA_FRAME_ITEMS_MAX - 64;

impl Stream {
    /// The gate's provider, or the refusal sent when this peer is no gate.
    fn gate_for(&self, id: u32, what: &str) -> Option<Gate> {
        match &self.gate {
            Some((gate, _)) => Some(*gate),
            None => {
                self.gates_only(id, what);
                None
            }
        }
    }

    /// A page of the gate's provider's tickets after `after`.
    pub(crate) fn replica_page(&mut self, id: u32, after: Option<(u16, u32)>, limit: u32) {
        let Some(gate) = self.gate_for(id, "replica_page") else {
            return;
        };
        let provider = gate.provider.expect("gates have providers");
        let engine = &self.shared.engine;
        // Every change below this was made in memory before the slots are read: following
        // from it misses nothing (a change read twice applies twice to the same state).
        let seq = engine.wal().map_or(0, |w| w.written_seq());
        let mut tickets = Vec::new();
        let limit = (limit as usize).clamp(1, PAGE_TICKETS_MAX);
        let next = engine.replica_page(provider, after, limit, &mut tickets);
        let mut items = Vec::with_capacity(tickets.len() + 8);
        if after.is_none() {
            items.extend(retired_keys(engine));
            items.push(ReplicaItem::Rotation {
                step_s: engine.rotation_step_s(),
            });
        }
        let policies: BTreeSet<u32> = tickets.iter().map(|t| t.policy.0).collect();
        items.extend(policies.into_iter().filter_map(|p| policy_item(engine, p)));
        // A ticket takes two items when its rotation key comes with it.
        let room = REPLICA_FRAME_ITEMS_MAX - items.len().min(REPLICA_FRAME_ITEMS_MAX);
        let mut used = 0;
        let fit = tickets
            .iter()
            .take_while(|t| {
                used += 1 + usize::from(t.rotating_key.is_some());
                used <= room
            })
            .count();
        let next = match fit < tickets.len() {
            // Many policies or keys in one page: the page ends earlier.
            true => {
                tickets.truncate(fit);
                tickets.last().map(|t| (t.partition, t.serial))
            }
            false => next,
        };
        for t in &tickets {
            push_ticket(&mut items, t);
        }
        let batch = ReplicaBatch {
            seq,
            now_unix_s: engine.now_unix_s(),
            next,
            items,
        };
        self.reply(id, &Response::Replica(batch));
    }

    /// Streams the gate's provider's replica changes from `from_seq`.
    pub(crate) fn replica_follow(&mut self, id: u32, from_seq: u64) {
        let Some(gate) = self.gate_for(id, "replica_follow") else {
            return;
        };
        let provider = gate.provider.expect("gates have providers");
        // A replica ahead of this node's log (a node restored from an older backup) would
        // wait for positions that name other changes here: it must load afresh.
        let next = self.shared.engine.wal().map_or(0, |w| w.reserved_seq());
        if from_seq > next {
            let message = format!(
                "log position {from_seq} is ahead of this node's log (next {next}): load the \
                 replica afresh"
            );
            return self.reply(id, &error(error_code::TRIMMED, message));
        }
        self.start_follower(id, from_seq, Feed::Replica { provider });
    }

    /// Applies one scan the gate decided offline; answered once durable.
    pub(crate) fn checkin_offline(&mut self, id: u32, scan: WireScan) {
        let Some(gate) = self.gate_for(id, "checkin_offline") else {
            return;
        };
        let Ok(code) = scan.code.code() else {
            return self.reply(
                id,
                &error(error_code::FORGED, "the uploaded scan's code is not a code"),
            );
        };
        let engine_scan = OfflineScan {
            scan_id: scan.scan_id,
            scanned_at_unix_ms: scan.scanned_at_unix_ms,
            last_online_unix_s: scan.last_online_unix_s,
            op: match scan.exit {
                true => GateOp::Exit,
                false => GateOp::Entry,
            },
            decision: scan.decision,
            code,
        };
        let (outcome, after) = self.shared.engine.checkin_offline(&gate, &engine_scan);
        if scan.decision == OutcomeKind::Admitted
            && matches!(
                outcome.kind,
                OutcomeKind::Forged | OutcomeKind::Unknown | OutcomeKind::WrongProvider
            )
        {
            // A gate let someone in on a code this node does not take: a stale or tampered
            // replica, or a gate that lies. Nothing to apply; operators must see it.
            tracing::warn!(
                gate = gate.id,
                provider = gate.provider,
                scan_id = scan.scan_id,
                answer = %outcome.kind,
                "a gate uploaded an offline admit of a code this node refuses"
            );
        }
        self.reply_after(id, &Response::Outcome(outcome), after);
    }

    /// An admin's page of conflicts from list position `after`.
    pub(crate) fn conflicts(&mut self, id: u32, provider: Option<u16>, after: u64) {
        if !matches!(self.identity.role, Role::Admin { .. }) {
            return self.forbidden(id, "conflicts");
        }
        let from = usize::try_from(after).unwrap_or(usize::MAX);
        let (list, next) = self
            .shared
            .engine
            .conflicts(provider, from, CONFLICTS_FRAME_MAX);
        let items = list
            .into_iter()
            .filter_map(|(i, c, code)| {
                Some(Conflict {
                    index: i as u64,
                    kind: c.kind,
                    provider: c.provider,
                    // A ticket purged since: its code cannot be drawn, and nothing is shown.
                    code: code?,
                    first: ScanRef {
                        gate: c.first.gate,
                        at_unix_s: c.first.at_unix_s,
                    },
                    second: ScanRef {
                        gate: c.second.gate,
                        at_unix_s: c.second.at_unix_s,
                    },
                })
            })
            .collect();
        let next = next.map(|n| n as u64);
        self.reply(id, &Response::Conflicts { items, next });
    }
}

/// A replica's ticket item, and its rotation key's if it has one.
fn push_ticket(items: &mut Vec<ReplicaItem>, t: &ReplicaTicket) {
    items.push(ReplicaItem::Ticket {
        fingerprint: t.fingerprint,
        policy: t.policy.0,
        state: state_of(t),
    });
    if let Some(key) = t.rotating_key {
        items.push(ReplicaItem::RotatingKey {
            partition: t.partition,
            serial: t.serial,
            key,
        });
    }
}

fn state_of(t: &ReplicaTicket) -> ReplicaState {
    ReplicaState {
        partition: t.partition,
        serial: t.serial,
        state: wire_state(t.word.state, false),
        inside: t.word.inside,
        entries: t.word.entries,
        gate: t.word.gate,
        at_unix_s: t.word.time_unix_s(),
        first_scan_unix_s: t.first_scan_unix_s,
    }
}

/// Policy `id` as a replica holds it, if it exists.
fn policy_item(engine: &Engine, id: u32) -> Option<ReplicaItem> {
    let p = engine.policy(PolicyId(id))?;
    Some(ReplicaItem::Policy(ReplicaPolicy {
        id,
        valid_from_unix_s: p.validity.not_before_unix_s.unwrap_or(0),
        valid_until_unix_s: p.validity.not_after_unix_s.unwrap_or(0),
        valid_for_s: p.validity.duration_from_first_scan_s.unwrap_or(0),
        max_entries: p.entry.max_entries,
        exits: p.entry.records_exits,
        rotating: p.format == stile_protocol::CodeFormat::Rotating,
        offline_rotating: p.offline_rotating,
        online_only: p.online_only,
    }))
}

/// The retired keys, so the gate treats their codes as forged.
fn retired_keys(engine: &Engine) -> impl Iterator<Item = ReplicaItem> {
    engine
        .keys()
        .list()
        .into_iter()
        .filter(|(_, s)| *s == KeyStatus::Retired)
        .map(|(id, _)| ReplicaItem::KeyRetired(id))
}

/// The replica frames for `records` of the log, for gates of `provider`: everything every
/// record below `reached` changed for that provider's tickets, as their state now (items are
/// absolute, so a change seen twice is harmless). A batch with no items when `heartbeat` is
/// due and nothing changed.
pub(crate) fn frames_of(
    engine: &Engine,
    provider: u16,
    records: &[(u64, Record)],
    reached: u64,
    heartbeat: bool,
) -> Vec<Response> {
    let mut items = Vec::new();
    let ticket = |items: &mut Vec<ReplicaItem>, partition: u16, serial: u32, whole: bool| {
        if let Some(t) = engine.replica_ticket(provider, partition, serial) {
            match whole {
                true => push_ticket(items, &t),
                false => items.push(ReplicaItem::State(state_of(&t))),
            }
        }
    };
    for (_, record) in records {
        match record {
            Record::Policy { id, policy } if policy.provider == provider => {
                items.extend(policy_item(engine, *id));
            }
            Record::Mint {
                partition,
                first,
                count,
                ..
            } => {
                for serial in *first..first.saturating_add(*count) {
                    ticket(&mut items, *partition, serial, true);
                }
            }
            Record::State {
                partition, serial, ..
            } => ticket(&mut items, *partition, *serial, false),
            Record::Transfer {
                partition,
                old_serial,
                new_serial,
                ..
            } => {
                ticket(&mut items, *partition, *old_serial, false);
                ticket(&mut items, *partition, *new_serial, true);
            }
            Record::Key { id, status } if *status == KeyStatus::Retired as u8 => {
                items.push(ReplicaItem::KeyRetired(*id));
            }
            // Imported codes are no stile codes (gates decide them online only); purges
            // drop old tickets a replica may keep; conflicts are the node's own.
            _ => {}
        }
    }
    if items.is_empty() && !heartbeat {
        return Vec::new();
    }
    let now_unix_s = engine.now_unix_s();
    let batch = |items: Vec<ReplicaItem>| {
        Response::Replica(ReplicaBatch {
            seq: reached,
            now_unix_s,
            next: None,
            items,
        })
    };
    if items.is_empty() {
        return vec![batch(Vec::new())];
    }
    let mut frames = Vec::with_capacity(items.len().div_ceil(REPLICA_FRAME_ITEMS_MAX));
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        frames.push(batch(
            items.by_ref().take(REPLICA_FRAME_ITEMS_MAX).collect(),
        ));
    }
    frames
}
