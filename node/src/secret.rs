//! The node's secret (`DATA/node.secret`), and the QUIC endpoint settings derived from it that
//! must outlive a restart.
//!
//! A QUIC server that restarts has forgotten its connections. When a gate's next packet
//! arrives, the server answers it with a stateless reset: a packet ending in a token that it
//! handed the gate during the handshake, HMAC of the connection id under the server's reset
//! key. The gate drops the connection at once and reconnects, but only if the token matches:
//! with a reset key drawn afresh at each start, as `quinn::EndpointConfig::default()` does,
//! it never does, and every gate waits for its idle timeout instead. So the reset key is
//! derived from a secret kept in the data dir. The connection-id generator matters too:
//! quinn's default one signs its ids with a key drawn at each start and drops a packet whose
//! id it did not sign before considering a reset; the node's ids are plain random bytes, so
//! any packet of a former connection earns a reset.
//!
//! The file holds 64 hex digits and a newline, mode 0600, made on the first start. A missing
//! or unreadable one is made again (with a warning): that costs connected gates their idle
//! timeout once, nothing else.

use std::io;
use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use stile_engine::keys::PrekeyedHmac;

/// The secret's file in the data dir.
pub const SECRET_FILE: &str = "node.secret";
/// Bytes of secret.
const SECRET_LEN: usize = 32;
/// Bytes of a connection id the node issues (quinn's default length).
const CID_LEN: usize = 8;
/// What the reset key is derived with (a new label makes a new key).
const RESET_KEY_LABEL: &[u8] = b"stile node: QUIC stateless reset key v1";

/// The endpoint config of a node whose secret is in `data_dir` (made there if missing).
pub(crate) fn endpoint_config(data_dir: &Path) -> io::Result<quinn::EndpointConfig> {
    let secret = load_or_make(data_dir)?;
    Ok(endpoint_config_from(&secret))
}

/// The endpoint config for `secret`: its reset key, random connection ids.
pub(crate) fn endpoint_config_from(secret: &[u8; SECRET_LEN]) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::new(Arc::new(ResetKey::derive(secret)));
    config.cid_generator(|| Box::new(RandomCids));
    config
}

/// A fresh random secret (for an engine without a data dir: resets then last one run).
pub(crate) fn random() -> [u8; SECRET_LEN] {
    let mut secret = [0u8; SECRET_LEN];
    getrandom::getrandom(&mut secret).expect("the OS has randomness");
    secret
}

/// Reads the secret in `dir`, or makes and stores a new one if there is none (or none that
/// reads).
fn load_or_make(dir: &Path) -> io::Result<[u8; SECRET_LEN]> {
    let path = dir.join(SECRET_FILE);
    // Not a regular file (a FIFO would block the start for good, a device would be read
    // without end): refused, as a directory is, rather than read.
    match std::fs::symlink_metadata(&path) {
        Ok(m) if !m.file_type().is_file() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file: remove it", path.display()),
            ));
        }
        _ => {}
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => match parse(&text) {
            Some(secret) => {
                keep_private(&path)?;
                return Ok(secret);
            }
            None => tracing::warn!(
                "{} does not hold 64 hex digits: making a new node secret (connected gates \
                 notice this restart only at their idle timeout)",
                path.display()
            ),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
    let secret = random();
    let tmp = dir.join(format!("{SECRET_FILE}.tmp"));
    let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let text = text + "\n";
    stile_engine::datadir::write_private_synced(&tmp, &[text.as_bytes()])
        .and_then(|()| stile_engine::datadir::rename_synced(&tmp, &path))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(secret)
}

/// The secret in the file's text, if it is one.
fn parse(text: &str) -> Option<[u8; SECRET_LEN]> {
    let hex = text.strip_suffix('\n').unwrap_or(text).as_bytes();
    if hex.len() != 2 * SECRET_LEN {
        return None;
    }
    let mut secret = [0u8; SECRET_LEN];
    for (byte, pair) in secret.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(secret)
}

/// Takes read access from everyone but the owner, should someone have given it.
fn keep_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            "{} was readable by others (mode {:o}): made 0600",
            path.display(),
            mode & 0o777
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// HMAC-SHA256 under a key derived from the node secret: signs stateless reset tokens (of
/// connection ids, at most 20 bytes: one block for [`PrekeyedHmac`]).
struct ResetKey(PrekeyedHmac);

impl ResetKey {
    /// The key for `secret`: HMAC-SHA256(secret, label), so the secret itself is never a key.
    fn derive(secret: &[u8; SECRET_LEN]) -> ResetKey {
        let key = PrekeyedHmac::new(secret).mac(RESET_KEY_LABEL);
        ResetKey(PrekeyedHmac::new(&key))
    }

    /// The MAC of `data`; `None` past what one block holds (never a connection id).
    fn mac(&self, data: &[u8]) -> Option<[u8; 32]> {
        (data.len() <= PrekeyedHmac::MSG_MAX).then(|| self.0.mac(data))
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = self
            .mac(data)
            .expect("quinn signs connection ids of at most 20 bytes");
        signature_out.copy_from_slice(&mac);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        match self.mac(data) {
            Some(mac) if bool::from(mac.ct_eq(signature)) => Ok(()),
            _ => Err(quinn::crypto::CryptoError),
        }
    }
}

/// Connection ids of random bytes, valid across restarts (none is ever refused as foreign).
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; CID_LEN];
        getrandom::getrandom(&mut id).expect("the OS has randomness");
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use quinn::crypto::HmacKey;

    use super::*;

    /// Regression: a FIFO in the secret's place blocked the start for good (the node had
    /// its lock and ignored SIGTERM). Anything but a regular file is refused at once.
    #[test]
    fn a_secret_that_is_no_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRET_FILE);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = load_or_make(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    /// The secret is made once, 0600, and read back the same; the reset key it gives signs
    /// the same after a "restart" and differently for another secret.
    #[test]
    fn the_secret_survives_restarts_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_make(dir.path()).unwrap();
        let path = dir.path().join(SECRET_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_make(dir.path()).unwrap(), first);

        let sign = |secret: &[u8; SECRET_LEN]| {
            let key = ResetKey::derive(secret);
            let mut out = vec![0; key.signature_len()];
            key.sign(b"connection id", &mut out);
            assert!(key.verify(b"connection id", &out).is_ok());
            assert!(key.verify(b"another id", &out).is_err());
            out
        };
        assert_eq!(sign(&first), sign(&load_or_make(dir.path()).unwrap()));
        assert_ne!(sign(&first), sign(&random()));
        // Derived, not the secret used as a key.
        assert_ne!(
            sign(&first),
            PrekeyedHmac::new(&first).mac(b"connection id").to_vec()
        );
    }

    /// A missing or damaged secret is made again; one left readable by others is made private.
    #[test]
    fn a_missing_or_damaged_secret_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRET_FILE);
        let first = load_or_make(dir.path()).unwrap();
        std::fs::remove_file(&path).unwrap();
        let second = load_or_make(dir.path()).unwrap();
        assert_ne!(first, second);
        std::fs::write(&path, "not hex\n").unwrap();
        let third = load_or_make(dir.path()).unwrap();
        assert_ne!(third, second);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_make(dir.path()).unwrap(), third);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
