//! Tokens: the API token of management routes (made on first start, kept in a 0600 file),
//! gate tokens for HTTP check-in, gates' staff PINs and device tokens for linked devices.
//! Only SHA-256 hashes of gate and device tokens, and salted hashes of PINs, are stored.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};

use crate::problem::Problem;
use crate::{App, GatewayError};

/// Random bytes in a new token.
const TOKEN_BYTES: usize = 24;

/// A new random token: `n` bytes as lower-case hex.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new token of the usual length.
pub fn new_token() -> String {
    random_token(TOKEN_BYTES)
}

/// SHA-256 of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Shortest API token the gateway accepts from a file an operator wrote.
pub const API_TOKEN_MIN_LEN: usize = 32;

/// Digits of a gate's staff PIN: short enough to type on a stranger's phone, and guessed
/// only a few times before the control locks (see `api::staff`).
pub const PIN_DIGITS: u32 = 6;

/// A new staff PIN: [`PIN_DIGITS`] random decimal digits.
pub fn new_pin() -> String {
    let n = rand::rngs::OsRng.gen_range(0..10u32.pow(PIN_DIGITS));
    format!("{n:0width$}", width = PIN_DIGITS as usize)
}

/// A new random salt for a PIN's hash.
pub fn new_pin_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
}

/// The stored form of gate `gate` of `provider`'s PIN: SHA-256 of the salt, the gate's
/// numbers and the PIN, so a hash says nothing of another gate's PIN. (Six digits do not
/// resist guessing by whoever reads the database; that reader has every code already.)
pub fn hash_pin(salt: &[u8; 16], provider: u16, gate: u16, pin: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"stile gate pin\0");
    h.update(salt);
    h.update(provider.to_be_bytes());
    h.update(gate.to_be_bytes());
    h.update(pin.as_bytes());
    h.finalize().into()
}

/// Whether `pin` is the PIN whose salted hash is `hash`, compared in constant time.
pub fn pin_matches(salt: &[u8; 16], hash: &[u8; 32], provider: u16, gate: u16, pin: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(hash_pin(salt, provider, gate, pin).ct_eq(hash))
}

/// Reads the API token at `path`, or makes one (mode 0600) if the file is new.
pub fn load_or_make_token(path: &Path) -> Result<String, GatewayError> {
    let io = |what: &str, source| GatewayError::Io {
        what: format!("{what} {}", path.display()),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            // Whoever reads the token books and transfers as the gateway: owner only,
            // whatever mode the file was left with.
            crate::db::restrict(path, 0o600).map_err(|e| io("restricting", e))?;
            let token = text.trim().to_string();
            // An operator's own token is welcome, but not a guessable one: it books, revokes
            // and transfers every ticket.
            if token.len() < API_TOKEN_MIN_LEN || token.chars().any(|c| !c.is_ascii_graphic()) {
                return Err(GatewayError::Io {
                    what: format!(
                        "{} must hold one API token of at least {API_TOKEN_MIN_LEN} printable \
                         characters (no spaces); delete it to have one made",
                        path.display()
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidData),
                });
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path).map_err(|e| io("making", e))?;
            std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| io("writing", e))?;
            Ok(token)
        }
        Err(e) => Err(io("reading", e)),
    }
}

/// The bearer token of a request, from `Authorization: Bearer …`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// 401 with the header that says how to authenticate.
pub fn unauthorized(detail: &str) -> Response {
    let mut res = Problem::unauthorized(detail).into_response();
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// Middleware of management routes: the API token is required.
pub async fn require_api_token(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match bearer(req.headers()) {
        Some(token) if hash_token(token) == app.api_token_hash => next.run(req).await,
        Some(_) => unauthorized("the API token is wrong; it is in the gateway's api-token file"),
        None => unauthorized(
            "this route needs `Authorization: Bearer TOKEN` with the API token from the \
             gateway's api-token file",
        ),
    }
}
