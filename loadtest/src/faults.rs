//! Faults on a schedule: SIGKILL and restart (`--kill-every`), SIGSTOP and SIGCONT
//! (`--pause-every`, `--pause-for`), struck at the node a run spawned, from when its tickets
//! are minted until its time is up.
//!
//! Each interval counts from when the node is back: a kill waits until the node has run
//! `kill_every` since it last started, so a slow recovery never turns the schedule into a
//! node that is always down. A pause ends by the run's end, or at once on a stop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::spawn::NodeProcess;
use crate::{Faults, Stop};

/// What a run struck.
#[derive(Debug, Default, Clone)]
pub(crate) struct Struck {
    /// Kills, each followed by a restart.
    pub kills: u64,
    /// Pauses, each followed by SIGCONT.
    pub pauses: u64,
    /// The node did not come back after a kill: why.
    pub failed: Option<String>,
}

/// The striking task.
pub(crate) struct Striker {
    task: tokio::task::JoinHandle<Struck>,
    done: Arc<tokio::sync::Notify>,
}

/// Starts striking `node` as `faults` says until `end`.
pub(crate) fn start(node: Arc<NodeProcess>, faults: Faults, end: Instant, stop: Stop) -> Striker {
    let done = Arc::new(tokio::sync::Notify::new());
    let task = tokio::spawn(strike(node, faults, end, stop, done.clone()));
    Striker { task, done }
}

impl Striker {
    /// Ends the schedule (the node left running) and says what was struck.
    pub(crate) async fn finish(self) -> Struck {
        self.done.notify_one();
        self.task.await.unwrap_or_else(|e| Struck {
            failed: Some(format!("the fault schedule failed: {e}")),
            ..Struck::default()
        })
    }
}

async fn strike(
    node: Arc<NodeProcess>,
    faults: Faults,
    end: Instant,
    stop: Stop,
    done: Arc<tokio::sync::Notify>,
) -> Struck {
    let mut struck = Struck::default();
    let now = Instant::now();
    let mut next_kill = faults.kill_every.map(|d| now + d);
    let mut next_pause = faults.pause_every.map(|d| now + d);
    while let Some(at) = [next_kill, next_pause].into_iter().flatten().min() {
        if at >= end {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(at.into()) => {}
            () = done.notified() => break,
            () = stop.requested() => break,
        }
        if next_kill == Some(at) {
            let n = node.clone();
            match tokio::task::spawn_blocking(move || n.kill_and_restart()).await {
                Ok(Ok(())) => struck.kills += 1,
                Ok(Err(e)) => {
                    struck.failed = Some(format!("after kill {}: {e}", struck.kills + 1));
                    break;
                }
                Err(e) => {
                    struck.failed = Some(format!("restarting the node: {e}"));
                    break;
                }
            }
            next_kill = faults.kill_every.map(|d| Instant::now() + d);
            // A pause due while the node was down waits for it to have run a little.
            next_pause = next_pause.map(|p| p.max(Instant::now() + Duration::from_millis(100)));
        } else {
            // Never past the run's time, and never past a stop: the node goes on at once.
            let until = (Instant::now() + faults.pause_for).min(end);
            node.pause(true);
            tokio::select! {
                () = tokio::time::sleep_until(until.into()) => {}
                () = done.notified() => {}
                () = stop.requested() => {}
            }
            node.pause(false);
            struck.pauses += 1;
            next_pause = faults.pause_every.map(|d| Instant::now() + d);
        }
    }
    if let Some(status) = node.exited() {
        struck.failed.get_or_insert(format!(
            "the node exited by itself ({status}); see {}",
            node.log_path().display()
        ));
    }
    struck
}
