//! Admin operations: mint, revoke, transfer, a rotating ticket's key, the node's stats and
//! latency histograms (purge has a file of its own). Each needs the admin role; the ones that change state are audited.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use stile_certs::Role;
use stile_engine::policy::{EntryRule, Policy, PolicyError, Validity};
use stile_engine::wal::Durability;
use stile_engine::{MintError, MintRequest, Presented, TicketError};
use stile_protocol::frame::{
    error_code, sync_mode, MintSpec, NodeStats, RawCode, Response, MINT_FRAME_MAX,
};
use stile_protocol::{CodeFormat, OutcomeKind};

use crate::cmd::{code_or_error, error, summary, ticket_error};
use crate::metrics::wire_metrics;
use crate::stream::{one_op, Out, Stream};

impl Stream {
    /// Answers `ticket_key` (admin), audited: key material leaves the node.
    pub(crate) fn ticket_key_request(&self, id: u32, code: RawCode) {
        let identity = self.identity.clone();
        let Role::Admin { name } = &identity.role else {
            return self.forbidden(id, "ticket_key");
        };
        let resp = self.ticket_key(code);
        // Key material leaves the node: say who took which ticket's key.
        let (partition, serial) = code.code().map_or((None, None), |c| {
            let h = c.header();
            (Some(h.partition), Some(h.serial))
        });
        tracing::info!(
            target: "stile::audit",
            op = "ticket_key",
            admin = %name,
            partition,
            serial,
            result = %summary(&resp),
        );
        self.reply(id, &resp);
    }

    /// Answers `stats` (admin). Node-wide counts over every provider's tickets and gates:
    /// an operator's view, not a gate's (the gateway and `stile stat` read them with admin
    /// certificates).
    pub(crate) fn stats_request(&self, id: u32) {
        if !matches!(self.identity.role, Role::Admin { .. }) {
            return self.forbidden(id, "stats");
        }
        let resp = Response::Stats(self.stats());
        self.reply(id, &resp);
    }

    /// Answers `metrics` (admin): one op's latency histogram.
    pub(crate) fn metrics_request(&self, id: u32, op: u8) {
        if !matches!(self.identity.role, Role::Admin { .. }) {
            return self.forbidden(id, "metrics");
        }
        let resp = Response::Metrics(wire_metrics(&self.shared, op));
        self.reply(id, &resp);
    }

    /// Mints a batch of tickets under a policy made (or found) from `spec`.
    pub(crate) fn mint(&self, id: u32, spec: MintSpec) {
        self.admin_blocking(id, "mint", move |e| mint(e, &spec));
    }

    /// Revokes a ticket.
    pub(crate) fn revoke(&self, id: u32, code: RawCode) {
        self.admin_blocking(id, "revoke", move |e| {
            let code = code_or_error(code)?;
            e.revoke(&Presented::Code(code))
                .map(Response::Outcome)
                .map_err(|e| ticket_error(&e))
        });
    }

    /// Voids a ticket and mints its successor, in one log record.
    pub(crate) fn transfer(&self, id: u32, code: RawCode) {
        self.admin_blocking(id, "transfer", move |e| {
            let code = code_or_error(code)?;
            e.transfer(&Presented::Code(code))
                .map(|c| Response::Codes(vec![c]))
                .map_err(|e| ticket_error(&e))
        });
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
    pub(crate) fn admin_blocking(
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
            tracing::info!(target: "stile::audit", op = what, admin = %name, result = %summary(&resp));
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
        offline_rotating: spec.offline_rotating,
        online_only: spec.online_only,
    };
    let policy = engine.add_policy(policy).map_err(|e| match e {
        PolicyError::DiskFull => (error_code::DISK_FULL, e.to_string()),
        e => bad(e.to_string()),
    })?;
    let codes = engine
        .mint(&MintRequest {
            policy,
            partition: spec.partition,
            count: spec.count,
        })
        .map_err(|e| match e {
            MintError::DiskFull | MintError::Policy(PolicyError::DiskFull) => {
                (error_code::DISK_FULL, e.to_string())
            }
            e => bad(e.to_string()),
        })?;
    Ok(Response::Codes(codes))
}
