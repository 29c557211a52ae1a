//! The index's memory per minted ticket, at 10 million tickets.

use stile_engine::{MintRequest, Policy, MINT_BATCH_MAX};

use crate::support::engine;

/// A slot is 16 bytes (state word, policy id, first-scan time); chunks of 2 MiB and the
/// per-partition chunk table add a little. Reported by this test and by the engine bench.
#[test]
fn index_costs_16_bytes_per_ticket_at_10_million() {
    const TICKETS: usize = 10_000_000;
    let (e, _) = engine();
    let policy = e.add_policy(Policy::simple(1)).unwrap();
    let mut minted = 0;
    while minted < TICKETS {
        let count = (TICKETS - minted).min(MINT_BATCH_MAX) as u32;
        e.mint_each(
            &MintRequest {
                policy,
                partition: 0,
                count,
            },
            |_| minted += 1,
        )
        .unwrap();
    }
    let per_ticket = e.index_memory_bytes() as f64 / TICKETS as f64;
    println!(
        "index memory: {} bytes for {TICKETS} tickets = {per_ticket:.2} bytes/ticket",
        e.index_memory_bytes()
    );
    assert_eq!(e.minted_tickets(), TICKETS as u64);
    assert!(per_ticket < 16.25, "{per_ticket} bytes per ticket");
    assert!(
        per_ticket >= 16.0,
        "a slot cannot cost less than its 16 bytes: {per_ticket}"
    );
}
