//! Signals a command stops on: SIGTERM and SIGINT, and SIGHUP for commands run in a
//! terminal. Shared by `stile up`, `node`, `gateway` and `loadtest`.

use anyhow::Context;

/// SIGTERM and SIGINT, caught from the moment of [`Signals::install`].
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    /// SIGHUP too, for commands that run in a terminal (a closed terminal stops them).
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Catches SIGTERM and SIGINT from now on (must run inside the runtime).
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: None,
        })
    }

    /// [`Signals::install`], and SIGHUP as well.
    pub fn install_with_hangup() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut signals = Self::install()?;
        signals.hup = Some(signal(SignalKind::hangup()).context("installing the SIGHUP handler")?);
        Ok(signals)
    }

    /// Waits for either (again after each one).
    pub async fn wait(&mut self) {
        let hup = async {
            match &mut self.hup {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
            () = hup => {}
        }
    }
}

/// Ignores SIGXFSZ, so that a write past a file size limit (`RLIMIT_FSIZE`) fails with
/// `EFBIG`, which the node's log takes for a full disk, instead of killing the process.
pub fn ignore_file_size_limit() {
    // SAFETY: signal(2) with a valid signal number and SIG_IGN; it touches no memory of ours.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
