//! Request handling, one file per op family (decode happened in the stream's reader; each
//! handler applies the request and encodes its answer): `scan.rs` (check-in, exit, undo,
//! `checkin_as`), `status.rs`, `admin.rs` (mint, revoke, transfer, `ticket_key`, stats,
//! metrics), `purge.rs`; subscriptions are in `crate::subscribe`.

mod admin;
mod purge;
mod scan;
pub(crate) mod status;

use stile_engine::{GateOp, TicketError};
use stile_protocol::frame::{error_code, RawCode, Request, Response};
use stile_protocol::CodeBytes;

use crate::stream::Stream;

impl Stream {
    /// Handles one request.
    pub(crate) fn handle(&mut self, id: u32, req: Request) {
        self.op = req.op();
        if !self.shared.replication.leading()
            && !matches!(
                req,
                Request::Ping | Request::Stats | Request::Metrics { .. }
            )
        {
            // Outcomes have no room for an address: a standby answers with an error.
            let leader = self.shared.replication.leader();
            return self.reply(id, &error(error_code::NOT_LEADER, leader));
        }
        match req {
            Request::Checkin { scan_id, code } => self.checkin(id, scan_id, code),
            Request::Exit { scan_id, code } => self.gate_scan(id, GateOp::Exit, scan_id, code),
            Request::Undo { scan_id, code } => self.gate_scan(id, GateOp::Undo, scan_id, code),
            Request::CheckinAs {
                gate,
                provider,
                scan_id,
                code,
            } => self.checkin_as(id, gate, provider, scan_id, code),
            Request::Status { code } => self.status_request(id, code),
            Request::TicketKey { code } => self.ticket_key_request(id, code),
            Request::Ping => self.reply(id, &Response::Pong),
            Request::Stats => self.stats_request(id),
            Request::Metrics { op } => self.metrics_request(id, op),
            Request::Mint(spec) => self.mint(id, spec),
            Request::Revoke { code } => self.revoke(id, code),
            Request::Transfer { code } => self.transfer(id, code),
            Request::Subscribe { from_seq } => self.subscribe(id, from_seq),
            Request::Unsubscribe { id: subscribe_id } => self.unsubscribe(id, subscribe_id),
            Request::Purge { partition } => self.purge(id, partition),
            Request::ReplicaPage { after, limit } => self.replica_page(id, after, limit),
            Request::ReplicaFollow { from_seq } => self.replica_follow(id, from_seq),
            Request::CheckinOffline(scan) => self.checkin_offline(id, scan),
            Request::Conflicts { provider, after } => self.conflicts(id, provider, after),
            Request::Replicate { .. } => {
                let message = format!(
                    "replicate needs a node certificate (a standby's); this is {}",
                    self.identity.role
                );
                self.reply(id, &error(error_code::FORBIDDEN, message))
            }
        }
    }
}

pub(crate) fn error(code: u16, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

/// The answer to a gate past its forged-code budget.
pub(crate) fn rate_limited() -> Response {
    error(
        error_code::RATE_LIMITED,
        "rate limited: this gate sent too many forged or unknown codes; try again after the \
         cooldown",
    )
}

pub(crate) fn ticket_error(e: &TicketError) -> (u16, String) {
    let code = match e {
        TicketError::Forged => error_code::FORGED,
        TicketError::Unknown => error_code::NOT_FOUND,
        TicketError::NotTransferable(_) => error_code::CONFLICT,
        TicketError::PartitionFull(_) => error_code::UNAVAILABLE,
        TicketError::DiskFull => error_code::DISK_FULL,
    };
    (code, e.to_string())
}

pub(crate) fn summary(resp: &Response) -> String {
    match resp {
        Response::Codes(c) => format!("{} code(s)", c.len()),
        Response::Outcome(o) => o.kind.to_string(),
        Response::TicketKey { step_s, .. } => format!("key handed out (step {step_s} s)"),
        Response::Purged { tickets, below } => {
            format!("{tickets} ticket(s) dropped, serials below {below} purged")
        }
        Response::Error { message, .. } => format!("refused: {message}"),
        _ => "done".into(),
    }
}

pub(crate) fn code_or_error(code: RawCode) -> Result<CodeBytes, (u16, String)> {
    code.code()
        .map_err(|e| (error_code::FORGED, format!("not a code: {e}")))
}
