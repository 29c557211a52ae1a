//! The transport's floor: a QUIC server with the node's TLS, transport settings and socket
//! buffers that answers every check-in at once with `admitted`, doing no other work: no
//! engine, no log, no roles beyond the CA's. `stile loadtest --target quic-echo://…` runs it
//! (`stile echo-server`) beside a node, so that what the node adds to the transport is
//! measured in one invocation. So that the load tester drives it as a node, it also answers
//! `ping`, `mint` (random codes, of no key), `stats` (sync mode none) and `metrics` (its CPU time);
//! anything else gets `admitted` too. Nothing it answers means anything.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use stile_protocol::frame::{split_frame, sync_mode, NodeMetrics, NodeStats, Request, Response};
use stile_protocol::udp;
use stile_protocol::{CodeBytes, Outcome, OutcomeKind};

use crate::NodeError;

/// A running echo server.
#[derive(Debug)]
pub struct EchoServer {
    endpoint: quinn::Endpoint,
}

impl EchoServer {
    /// Binds `listen` with the node certificate and CA in `tls_dir` and serves until
    /// closed. Must run inside a tokio runtime.
    pub fn start(listen: SocketAddr, tls_dir: &Path) -> Result<EchoServer, NodeError> {
        let loaded = crate::tls::load(tls_dir, None, Duration::from_secs(30))?;
        let bind = |source| NodeError::Bind {
            addr: listen,
            source,
        };
        let (socket, buffers) = udp::bind(listen).map_err(bind)?;
        if let Some(line) = buffers.shortfall() {
            tracing::warn!("{line}");
        }
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(loaded.config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind)?;
        tokio::spawn(accept(endpoint.clone()));
        Ok(EchoServer { endpoint })
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"echo server closing");
    }
}

async fn accept(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(answer(send, recv));
            }
        });
    }
}

/// Answers each whole request frame on a stream, a read's answers in one write, as the
/// node's writer sends them; a frame that does not parse ends the stream.
async fn answer(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let started = std::time::Instant::now();
    let mut buf = BytesMut::with_capacity(1 << 16);
    let mut out = Vec::with_capacity(1 << 12);
    let admitted = Response::Outcome(Outcome::bare(OutcomeKind::Admitted));
    while let Ok(Some(chunk)) = recv.read_chunk(1 << 16, true).await {
        buf.extend_from_slice(&chunk.bytes);
        loop {
            match split_frame(&buf) {
                Ok(Some((n, body))) => {
                    let Ok((id, request)) = Request::decode(body) else {
                        return;
                    };
                    match request {
                        Request::Ping => Response::Pong,
                        Request::Mint(spec) => Response::Codes(random_codes(spec.count)),
                        Request::Stats => Response::Stats(NodeStats {
                            sync_mode: sync_mode::NONE,
                            ..NodeStats::default()
                        }),
                        Request::Metrics { .. } => Response::Metrics(NodeMetrics {
                            uptime_us: started.elapsed().as_micros() as u64,
                            inflight: 0,
                            outcomes: Vec::new(),
                            latency_op: 0,
                            latency_us: Default::default(),
                            fsync_us: Default::default(),
                            disk_full: Some(false),
                            cpu_us: crate::metrics::process_cpu_us(),
                            rss_bytes: crate::metrics::process_rss_bytes(),
                        }),
                        // The measured path: no work but the answer.
                        _ => admitted.clone(),
                    }
                    .encode(id, &mut out);
                    buf.advance(n);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            if send.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// `n` codes of static format, random bytes, no signature.
fn random_codes(n: u32) -> Vec<CodeBytes> {
    (0..n.min(stile_protocol::frame::MINT_FRAME_MAX))
        .map(|_| {
            let mut b = [0u8; 20];
            getrandom::getrandom(&mut b[1..]).expect("the OS has randomness");
            b[0] = 1;
            CodeBytes::from_slice(&b).expect("20 bytes of format 1")
        })
        .collect()
}
