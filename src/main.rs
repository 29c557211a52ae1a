//! `stile`: the one binary. A thin layer over the library crates.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use stile_engine::{Engine, EngineConfig, SystemClock};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// stile: ticket verification at the gate.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the key ring that signs feature codes.
    Keys {
        /// Data directory (made, with a fresh key, if it is new).
        #[arg(long, default_value = "stile-data", global = true)]
        data: PathBuf,
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// List key ids and their status (active, verify, retired).
    List,
    /// Add a key and make it active; the old active key keeps verifying its codes.
    Rotate,
    /// Retire a key: codes it signed read as forged from now on.
    Retire {
        /// Key id (1-255).
        id: u8,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keys { data, action } => keys(&data, action),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // The cause chain on one line; no backtrace for people at a terminal.
            eprintln!("stile: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn keys(data: &std::path::Path, action: KeysAction) -> anyhow::Result<()> {
    let engine = Engine::open(data, EngineConfig::default(), Arc::new(SystemClock))
        .with_context(|| format!("opening data dir {}", data.display()))?;
    match action {
        KeysAction::List => {}
        KeysAction::Rotate => {
            let id = engine.rotate_key()?;
            eprintln!("key {id} is now active");
        }
        KeysAction::Retire { id } => {
            engine.retire_key(id)?;
            eprintln!("key {id} retired: codes it signed now read as forged");
        }
    }
    for (id, status) in engine.keys().list() {
        println!("{id}\t{}", status.name());
    }
    Ok(())
}
