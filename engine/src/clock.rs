//! Time comes through [`Clock`], so tests can move it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in whole Unix seconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now_unix_s(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_s(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A clock that tests set and advance by hand.
#[derive(Debug)]
pub struct ManualClock {
    /// Current Unix seconds.
    now_unix_s: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `now_unix_s`.
    pub fn new(now_unix_s: u64) -> Self {
        ManualClock {
            now_unix_s: AtomicU64::new(now_unix_s),
        }
    }

    /// Moves the clock to `unix_s`.
    pub fn set(&self, unix_s: u64) {
        self.now_unix_s.store(unix_s, Ordering::SeqCst);
    }

    /// Moves the clock forward by `s` seconds.
    pub fn advance(&self, s: u64) {
        self.now_unix_s.fetch_add(s, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_s(&self) -> u64 {
        self.now_unix_s.load(Ordering::SeqCst)
    }
}
