//! What a gate does in the background while its node answers: keeps its replica current
//! (loaded whole in pages when there is none or the node no longer keeps its position, then
//! following the node's changes), and uploads its journal's offline scans in order.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use stile_protocol::client::{Client, ClientError, PendingAnswer};
use stile_protocol::frame::{error_code, OfflineScan, ReplicaBatch, Request, Response};

use crate::gate::Gate;
use crate::journal::Record;
use crate::replica::{Replica, ReplicaError};
use crate::rules::{decide, Op};

/// Tickets asked for per page.
const PAGE_TICKETS: u32 = 800;
/// How often a followed replica is written to disk (and at every load).
const SAVE_EVERY: Duration = Duration::from_secs(30);
/// How often a changed replica is written to disk.
const SAVE_DIRTY_EVERY: Duration = Duration::from_secs(5);
/// Uploads in flight at once.
const UPLOAD_WINDOW: usize = 256;
/// Uploads acknowledged between two upload marks in the journal (each is an `fdatasync`;
/// the node's own mark makes a scan uploaded twice count once, so marks may lag).
const UPLOAD_MARK_EVERY: u64 = 1024;
/// Pause before trying again after a failure.
const RETRY: Duration = Duration::from_millis(500);

/// Why a replica could not be followed.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// Loads the provider's replica from the node, page by page (what a gate does when it has
/// none).
pub async fn load(client: &Client, provider: u16) -> Result<Replica, ClientError> {
    let mut replica = Replica::new(provider);
    replica.start_load();
    let mut after = None;
    let mut first: Option<(u64, u64)> = None;
    loop {
        let batch = match client
            .request(Request::ReplicaPage {
                after,
                limit: PAGE_TICKETS,
            })
            .await?
        {
            Response::Replica(b) => b,
            _ => return Err(ClientError::Unexpected("replica_page")),
        };
        first.get_or_insert((batch.seq, batch.now_unix_s));
        for item in &batch.items {
            replica.apply(item).map_err(|e| ClientError::Node {
                code: error_code::BAD_REQUEST,
                message: e.to_string(),
            })?;
        }
        match batch.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    replica.finish_load();
    let (seq, now) = first.unwrap_or_default();
    replica.seq = seq;
    replica.synced_unix_s = now;
    Ok(replica)
}

/// Keeps the gate's replica current for as long as the gate lives.
pub(crate) async fn replica_loop(gate: Weak<Gate>) {
    let mut reload = false;
    loop {
        let Some(g) = gate.upgrade() else { return };
        let Some(client) = g.client() else {
            drop(g);
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let have = g.replica_seq();
        drop(g);
        let from = match have {
            Some(seq) if !reload => seq,
            _ => match load(&client, gate_provider(&gate)).await {
                Ok(r) => {
                    let Some(g) = gate.upgrade() else { return };
                    let seq = r.seq;
                    g.install_replica(r);
                    reload = false;
                    seq
                }
                Err(e) => {
                    tracing::debug!("replica not loaded: {e}");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        match follow(&gate, &client, from).await {
            Err(SyncError::Client(ClientError::Node { code, message }))
                if code == error_code::TRIMMED =>
            {
                tracing::info!(
                    "the node no longer keeps the replica's position ({message}): reloading"
                );
                reload = true;
            }
            Err(e) => {
                tracing::debug!("replica follow ended: {e}");
                tokio::time::sleep(RETRY).await;
            }
            Ok(()) => {}
        }
    }
}

fn gate_provider(gate: &Weak<Gate>) -> u16 {
    gate.upgrade().map_or(0, |g| g.provider())
}

/// Follows the node's changes from `from` until the stream ends.
async fn follow(gate: &Weak<Gate>, client: &Client, from: u64) -> Result<(), SyncError> {
    let mut stream = client.replica_follow(from).await?;
    let mut saved = Instant::now();
    while let Some(batch) = stream.next().await {
        let batch: ReplicaBatch = batch?;
        let Some(g) = gate.upgrade() else {
            return Ok(());
        };
        g.apply_batch(&batch)?;
        if saved.elapsed() >= SAVE_EVERY {
            g.save_replica();
            saved = Instant::now();
        }
    }
    Ok(())
}

/// Re-applies the journal's offline decisions not yet uploaded to a freshly loaded replica,
/// so this gate still refuses a second scan of a ticket it admitted offline.
pub(crate) fn reapply(replica: &mut Replica, pending: &[Record], gate_id: u16) {
    for record in pending {
        let Record::Offline(s) = record else { continue };
        let at_s = s.scanned_at_unix_ms / 1000;
        let crate::replica::Lookup::Found(i) = replica.lookup_at(&s.code, at_s) else {
            continue;
        };
        let e = *replica.entry(i);
        let Some(policy) = replica.policy(e.policy).copied() else {
            continue;
        };
        let (d, next) = decide(&e, &policy, s.op, gate_id, s.scanned_at_unix_ms / 1000);
        if d.kind == s.decision {
            *replica.entry_mut(i) = next;
        }
    }
}

/// The scan ids the node applied online after the gate had decided them offline: their
/// late answer was an admit or an exit, and uploading them would apply nothing new. A late
/// refusal is not among them: when the gate admitted that scan offline the holder went in
/// all the same (the ticket used meanwhile at another gate, say), and only its upload tells
/// the node, which records the conflict.
pub(crate) fn applied_late(scans: &[Record]) -> HashSet<u64> {
    scans
        .iter()
        .filter_map(|r| match r {
            Record::LateOnline(s)
                if matches!(
                    s.decision,
                    stile_protocol::OutcomeKind::Admitted | stile_protocol::OutcomeKind::Exited
                ) =>
            {
                Some(s.scan_id)
            }
            _ => None,
        })
        .collect()
}

/// Uploads the journal's scans in order for as long as the gate lives.
pub(crate) async fn upload_loop(gate: Weak<Gate>) {
    loop {
        let Some(g) = gate.upgrade() else { return };
        let wake = g.upload_wake();
        let work = g.client().and_then(|c| Some((c, g.upload_work()?)));
        drop(g);
        let Some((client, (base, pending, late))) = work else {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(RETRY) => {}
            }
            continue;
        };
        if let Err(e) = upload(&gate, &client, base, &pending, &late).await {
            tracing::debug!("upload interrupted: {e}");
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Uploads `pending` (the journal's scans from position `base`), `UPLOAD_WINDOW` in flight,
/// moving the journal's upload mark as answers come in order.
async fn upload(
    gate: &Weak<Gate>,
    client: &Client,
    base: u64,
    pending: &[Record],
    late: &HashSet<u64>,
) -> Result<(), ClientError> {
    let mut window: VecDeque<Option<PendingAnswer>> = VecDeque::with_capacity(UPLOAD_WINDOW);
    let mut done = 0u64;
    let mut marked = 0u64;
    let settle = |answer: Option<PendingAnswer>| async move {
        let Some(a) = answer else { return Ok(()) };
        match a.wait().await {
            // Not applied (its disk is full): uploaded again later.
            Ok(Response::Outcome(o)) if o.kind == stile_protocol::OutcomeKind::DiskFull => {
                Err(ClientError::Node {
                    code: error_code::DISK_FULL,
                    message: "the node's disk is full".into(),
                })
            }
            // Another provider's ticket: this certificate is not the journal's gate, and
            // the scan waits for the one that is.
            Ok(Response::Outcome(o)) if o.kind == stile_protocol::OutcomeKind::WrongProvider => {
                Err(ClientError::Node {
                    code: error_code::FORBIDDEN,
                    message: "the node takes no upload of another provider's ticket from this \
                              gate"
                        .into(),
                })
            }
            Ok(_) => Ok(()),
            // Not a code the node takes: there is nothing to apply, now or later.
            Err(ClientError::Node {
                code: error_code::FORGED,
                message,
            }) => {
                tracing::warn!("the node refused an uploaded scan: {message}");
                Ok(())
            }
            // Any other refusal leaves the scan in the journal, uploaded again later: a
            // scan is never dropped on the node's word that it could not take it now.
            Err(e) => Err(e),
        }
    };
    for record in pending {
        if window.len() == UPLOAD_WINDOW {
            settle(window.pop_front().expect("full")).await?;
            done += 1;
            if done - marked >= UPLOAD_MARK_EVERY {
                mark(gate, base + done);
                marked = done;
            }
        }
        let answer = match record {
            // A scan the node applied online after all: nothing to upload.
            Record::Offline(s) if !late.contains(&s.scan_id) => {
                let scan = OfflineScan::new(
                    &s.code,
                    s.scan_id,
                    s.scanned_at_unix_ms,
                    s.last_online_unix_s,
                    s.op == Op::Exit,
                    s.decision,
                );
                Some(client.submit(Request::CheckinOffline(scan)).await?)
            }
            _ => None,
        };
        window.push_back(answer);
    }
    while let Some(answer) = window.pop_front() {
        settle(answer).await?;
        done += 1;
    }
    if done > marked {
        mark(gate, base + done);
    }
    Ok(())
}

/// Writes the journal's upload mark.
fn mark(gate: &Weak<Gate>, count: u64) {
    if let Some(g) = gate.upgrade() {
        g.mark_uploaded(count);
    }
}

/// Starts the gate's background tasks (each ends once the gate is dropped).
pub(crate) fn spawn_all(gate: &Arc<Gate>) {
    tokio::spawn(replica_loop(Arc::downgrade(gate)));
    tokio::spawn(upload_loop(Arc::downgrade(gate)));
    tokio::spawn(save_loop(Arc::downgrade(gate)));
}

/// Saves the replica every [`SAVE_DIRTY_EVERY`] when it changed (own decisions, online
/// answers learned, the node's changes), so a restart loses little of what the gate knew.
async fn save_loop(gate: Weak<Gate>) {
    loop {
        tokio::time::sleep(SAVE_DIRTY_EVERY).await;
        let Some(g) = gate.upgrade() else { return };
        // Off the runtime's threads: a replica of a million tickets is 28 MB to write.
        let _ = tokio::task::spawn_blocking(move || g.save()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Scan;
    use stile_protocol::{CodeBytes, OutcomeKind};

    fn scan(scan_id: u64, decision: OutcomeKind) -> Scan {
        let mut b = [0u8; 20];
        b[0] = 1;
        Scan {
            scan_id,
            scanned_at_unix_ms: 1,
            last_online_unix_s: 0,
            op: Op::Entry,
            decision,
            code: CodeBytes::from_slice(&b).expect("format 1"),
        }
    }

    /// Two gates admit one ticket offline; once the node is back both scans, still awaited
    /// online, are sent again: one is admitted, the other refused `already_used`. The
    /// refused one's offline admit must still go up, or the node never records the double
    /// entry (the `outage` load test found it missing).
    #[test]
    fn a_late_refusal_of_an_offline_admit_is_still_uploaded() {
        let journal = [
            Record::Offline(scan(7, OutcomeKind::Admitted)),
            Record::Offline(scan(8, OutcomeKind::Admitted)),
            Record::Offline(scan(9, OutcomeKind::Admitted)),
            Record::LateOnline(scan(7, OutcomeKind::Admitted)),
            Record::LateOnline(scan(8, OutcomeKind::AlreadyUsed)),
            Record::Uploaded { count: 1 },
        ];
        assert_eq!(applied_late(&journal), HashSet::from([7]));
    }
}
