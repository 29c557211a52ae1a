//! A code's fingerprint: what a gate's replica holds instead of the code.
//!
//! The first 8 bytes of SHA-256 over a domain tag and the code's bytes. The node computes it
//! for each ticket it sends a gate; the gate computes it for each code it scans offline and
//! compares. It names a code without being one: a code's 80-bit tag is an HMAC under a key
//! only the node has, so turning a fingerprint back into a code takes about 2^64 tries per
//! ticket and leaves some 2^16 candidates that cannot be told apart offline.

use sha2::{Digest, Sha256};

use crate::code::CodeBytes;

/// Domain tag, so the hash of a code is never reused for anything else.
const DOMAIN: &[u8] = b"stile fingerprint v1\0";

/// `code`'s fingerprint.
pub fn fingerprint(code: &CodeBytes) -> u64 {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(code.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}
