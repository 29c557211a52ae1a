//! Shared set-up: an in-memory engine on a clock the test controls, and helpers for tests
//! that run the `stile` binary.

use std::sync::Arc;

use stile_engine::{Engine, EngineConfig, KeyRing, ManualClock, MintRequest, Policy, PolicyId};
use stile_protocol::CodeBytes;

/// A fixed "now" for tests: 2027-01-15T08:00:00Z.
pub const T0: u64 = 1_800_000_000;

/// An engine serving partitions 0 and 1, with its clock.
pub fn engine() -> (Engine, Arc<ManualClock>) {
    engine_with(EngineConfig {
        partitions: vec![0, 1],
        ..EngineConfig::default()
    })
}

/// An engine with a given configuration, with its clock.
pub fn engine_with(config: EngineConfig) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::in_memory(config, clock.clone(), KeyRing::ephemeral()).unwrap();
    (engine, clock)
}

/// Mints `count` tickets of `policy` in partition 0.
pub fn mint(engine: &Engine, policy: Policy, count: u32) -> (PolicyId, Vec<CodeBytes>) {
    let id = engine.add_policy(policy).unwrap();
    let codes = engine
        .mint(&MintRequest {
            policy: id,
            partition: 0,
            count,
        })
        .unwrap();
    (id, codes)
}

/// Reads `stile up`'s stderr until it names its QUIC address; the address, and every line
/// read so far.
pub fn read_up_quic_address(err: &mut impl std::io::BufRead) -> (String, String) {
    let mut said = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "stile up ended: {said}"
        );
        said.push_str(&line);
        if let Some(rest) = line.split("node on quic://").nth(1) {
            let addr = rest.split(',').next().unwrap().to_string();
            return (addr, said);
        }
    }
}

/// Asks a child to stop as an operator would.
pub fn sigterm(child: &std::process::Child) {
    // SAFETY: kill(2) with a pid we spawned and still own; it touches no memory.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}
