//! `stile keys`: the key ring that signs feature codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use stile_engine::{Engine, EngineConfig, SystemClock};

/// Arguments of `stile keys`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// Data directory of a node (stopped), with its key ring.
    #[arg(long, default_value = crate::DATA_DEFAULT, global = true)]
    data: PathBuf,
    #[command(subcommand)]
    action: KeysAction,
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

/// Runs `stile keys`.
pub fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let data = &args.data;
    // A mistyped path must not become a new data dir with a key of its own.
    let ring = data
        .join(stile_engine::datadir::KEYS_DIR)
        .join(stile_engine::datadir::RING_FILE);
    if !ring.exists() {
        anyhow::bail!(
            "no key ring in {} (no {}): give the data dir of a node (`stile node` and \
             `stile up` make one)",
            data.display(),
            ring.display()
        );
    }
    let engine = Engine::open(data, EngineConfig::default(), Arc::new(SystemClock))
        .with_context(|| format!("opening data dir {}", data.display()))?;
    match args.action {
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
    Ok(ExitCode::SUCCESS)
}
