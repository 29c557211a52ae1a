//! Rotating codes drawn by the gateway: the node hands out one ticket's key (never a ring
//! key), and the gateway signs the code of the current time step with it, by its own clock.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use stile_protocol::client::Client;
use stile_protocol::code::CodeBytes;

use crate::problem::Problem;

/// The rotating code of `minted`'s ticket for the step that holds `unix_s`.
pub fn code_at(minted: &CodeBytes, key: &[u8; 32], step_s: u32, unix_s: u64) -> CodeBytes {
    let step = unix_s / u64::from(step_s.max(1));
    let mut code = CodeBytes::unsigned(&minted.header(), step as u8);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(code.signed_part());
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; 10];
    tag.copy_from_slice(&full[..10]);
    code.set_tag(&tag);
    code
}

/// A rotating ticket's key and step from its node.
pub async fn fetch_key(client: &Client, code: &CodeBytes) -> Result<([u8; 32], u32), Problem> {
    Ok(client.ticket_key(code).await?)
}
