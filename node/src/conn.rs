//! One connection: its identity and its streams.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use stile_certs::{identity_of, Identity};
use stile_protocol::frame::close;
use tokio::task::JoinSet;

use crate::Shared;

/// TLS alert 44, `certificate_revoked`, as a QUIC crypto error code.
const REVOKED_ALERT: u64 = 0x100 + 44;

/// Whether a handshake failed because this node refused the peer's revoked certificate.
fn is_revoked_alert(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::TransportError(t) if u64::from(t.code) == REVOKED_ALERT)
}

/// Flags a peer that came with a revoked certificate: counted and logged as a warning.
fn refused_revoked(shared: &Shared, remote: std::net::SocketAddr) {
    use std::sync::atomic::Ordering;
    shared
        .counters
        .revoked_refused
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%remote, "refused a connection with a revoked certificate");
}

/// Serves one incoming connection until it closes.
pub(crate) async fn serve(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let conn = match incoming.accept() {
        Ok(connecting) => match connecting.await {
            Ok(c) => c,
            Err(e) => {
                if is_revoked_alert(&e) {
                    refused_revoked(&shared, remote);
                    return;
                }
                // The error may carry the peer's own close reason: any text at all.
                let e = one_line(e);
                tracing::info!(%remote, error = %e, "handshake failed");
                return;
            }
        },
        Err(e) => {
            let e = one_line(e);
            tracing::info!(%remote, error = %e, "connection not accepted");
            return;
        }
    };
    let identity = match peer_identity(&conn) {
        Ok(i) => i,
        Err(reason) => {
            tracing::warn!(%remote, reason = %one_line(&reason), "closing connection");
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
            drop(live);
            refused_revoked(&shared, remote);
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
                    streams.spawn(crate::stream::serve_stream(
                        shared.clone(),
                        conn.clone(),
                        identity.clone(),
                        send,
                        recv,
                    ));
                }
                Err(e) => {
                    tracing::debug!(%remote, reason = %e, "connection ended");
                    break false;
                }
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

/// Counts a task while it runs, however it ends (aborted, or returning early).
pub(crate) struct Running<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Running<'a> {
    pub(crate) fn new(count: &'a std::sync::atomic::AtomicU64) -> Self {
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
    use super::*;

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
}
