//! `stile history check FILE`: is a recorded history consistent with one atomic ticket per
//! ticket?

use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use stile_history::{Options, Verdict, SEARCH_LIMIT_DEFAULT};

/// Arguments of `stile history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(subcommand)]
    command: HistoryCommand,
}

#[derive(Debug, clap::Subcommand)]
enum HistoryCommand {
    /// Check a history (JSON lines, docs/FORMAT.md §12) against the engine's rules, one
    /// ticket at a time.
    #[command(after_help = "\
Prints `consistent: N operations on M tickets (K indeterminate)`, or the first violation: the \
ticket, the longest order of its operations that fits, and the operations that cannot follow \
it.

Exit status: 0 consistent, 2 violation, 3 undecided (the search limit was reached on a \
ticket), 1 the file cannot be read or a line is bad (named by number). Bad arguments also \
exit 2.")]
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The history file.
    file: PathBuf,
    /// Clock difference tolerated between the recorder and the node at validity edges and
    /// undo windows.
    #[arg(long, default_value = "2s")]
    clock_skew: humantime::Duration,
    /// Search states tried per ticket before giving up (exit 3).
    #[arg(long, default_value_t = SEARCH_LIMIT_DEFAULT)]
    search_limit: u64,
}

/// Runs `stile history`.
pub fn run(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        HistoryCommand::Check(args) => check(args),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open history {}", args.file.display()))?;
    let history = stile_history::parse(BufReader::new(file))
        .with_context(|| format!("history {}", args.file.display()))?;
    let opts = Options {
        skew_ms: u64::try_from(args.clock_skew.as_millis()).unwrap_or(u64::MAX),
        search_limit: args.search_limit,
    };
    let report = stile_history::check(&history, &opts);
    println!("{report}");
    Ok(match report.verdict {
        Verdict::Consistent => ExitCode::SUCCESS,
        Verdict::Violation { .. } => ExitCode::from(2),
        Verdict::Undecided { .. } => ExitCode::from(3),
    })
}
