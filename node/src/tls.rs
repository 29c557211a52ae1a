//! The node's TLS: its certificate, the client CA and the CRL, as a quinn server config.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use stile_protocol::frame::ALPN;

use stile_certs::{self as certs, CertError};

/// Bidirectional streams a connection may have open at once.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 4;

/// The server config and the serials its CRL revokes.
pub(crate) struct Loaded {
    /// The server config to serve with.
    pub config: quinn::ServerConfig,
    /// Serial numbers the CRL revokes.
    pub revoked: HashSet<Vec<u8>>,
}

fn bad(path: PathBuf, reason: String) -> CertError {
    CertError::Bad { path, reason }
}

/// Builds the server config from `dir`: `ca.crt` (clients must chain to it), `crl.pem`
/// (clients on it are refused), `node.crt` and `node.key`.
pub(crate) fn load(
    dir: &Path,
    name: Option<&str>,
    idle_timeout: Duration,
) -> Result<Loaded, CertError> {
    let ca_path = dir.join(certs::CA_CERT);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca_path).map_err(|e| {
        bad(
            ca_path.clone(),
            format!("cannot read the CA certificate: {e}"),
        )
    })? {
        let cert = cert.map_err(|e| bad(ca_path.clone(), e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| bad(ca_path.clone(), e.to_string()))?;
    }
    let crl_path = dir.join(certs::CRL);
    let crl = CertificateRevocationListDer::from_pem_file(&crl_path)
        .map_err(|e| bad(crl_path.clone(), format!("cannot read the CRL: {e}")))?;
    let revoked = certs::revoked_serials(dir)?.into_iter().collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls([crl])
        .build()
        .map_err(|e| bad(ca_path.clone(), format!("client verifier: {e}")))?;
    let cert_path = match name {
        Some(name) => dir.join(certs::node_cert_name(name)),
        None => dir.join(certs::NODE_CERT),
    };
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            bad(
                cert_path.clone(),
                format!("cannot read the node certificate: {e}"),
            )
        })?;
    let key_path = certs::key_path_for(&cert_path);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| bad(key_path.clone(), format!("cannot read the node key: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(cert_path.clone(), e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad(cert_path.clone(), format!("node certificate and key: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| bad(cert_path, e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(STREAMS_PER_CONNECTION_MAX.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_idle_timeout(Some(
        idle_timeout
            .try_into()
            .map_err(|_| CertError::Invalid("idle timeout too long".into()))?,
    ));
    transport.stream_receive_window((4u32 << 20).into());
    // The same for the whole connection: a peer that sends on all its streams and reads
    // none of the answers makes the node hold one stream's window of requests, not four.
    transport.receive_window((4u32 << 20).into());
    transport.send_window(8 << 20);
    config.transport_config(Arc::new(transport));
    Ok(Loaded { config, revoked })
}

/// What identifies a version of the CRL file: modification time and length.
pub(crate) fn crl_stamp(dir: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(dir.join(certs::CRL)).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
