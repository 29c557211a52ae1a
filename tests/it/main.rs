//! stile's integration tests: one binary across crates.

mod browser;
mod cli;
mod crash;
mod disk_full;
mod durability;
mod engine_disk_full;
mod engine_ops;
mod failover;
mod faults;
mod forged;
mod gate;
mod gateway;
mod gateway_failover;
mod history;
mod loadtest;
mod loom_word;
mod memory;
mod metrics;
mod node;
mod outage;
mod purge;
mod race;
mod readme;
mod snapshot;
mod standby;
mod support;
