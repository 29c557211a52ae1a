//! Rotating codes drawn by the gateway: the node hands out one ticket's key (never a ring
//! key), and the gateway signs the code of the current time step with it, by its own clock.

use stile_protocol::client::Client;
use stile_protocol::code::CodeBytes;

use crate::problem::Problem;

/// The rotating code of `minted`'s ticket for the step that holds `unix_s`.
pub fn code_at(minted: &CodeBytes, key: &[u8; 32], step_s: u32, unix_s: u64) -> CodeBytes {
    let step = stile_protocol::rotating::step_at(unix_s, step_s);
    stile_protocol::rotating::draw(&minted.header(), key, step)
}

/// A rotating ticket's key and step from its node.
pub async fn fetch_key(client: &Client, code: &CodeBytes) -> Result<([u8; 32], u32), Problem> {
    Ok(client.ticket_key(code).await?)
}
