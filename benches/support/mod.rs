//! What several harness-less benches share.

use stile_engine::{Engine, MintRequest, PolicyId, MINT_BATCH_MAX};
use stile_protocol::CodeBytes;

/// Mints `count` tickets of `policy` in partition 0, in as many requests as the engine's
/// batch limit needs.
pub fn mint(engine: &Engine, policy: PolicyId, count: usize) -> Vec<CodeBytes> {
    let mut codes = Vec::with_capacity(count);
    while codes.len() < count {
        let n = (count - codes.len()).min(MINT_BATCH_MAX) as u32;
        codes.extend(
            engine
                .mint(&MintRequest {
                    policy,
                    partition: 0,
                    count: n,
                })
                .expect("mint"),
        );
    }
    codes
}

/// The number after `name` on the command line, or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
