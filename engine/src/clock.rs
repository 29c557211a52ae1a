//! Time comes through [`Clock`], so tests can move it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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

/// The engine's notion of now: its clock's seconds, never going backwards.
///
/// A wall clock stepped back (an NTP correction, an operator's `date -s`) would otherwise
/// reopen undo windows and let a pass counted from its first scan admit again; time is held
/// still instead until the clock catches up, and the step is reported (a log line, and
/// [`MonotonicNow::steps_back`] for the metrics).
#[derive(Debug)]
pub struct MonotonicNow {
    /// The clock read.
    clock: Arc<dyn Clock>,
    /// The newest second handed out: what now never goes below.
    floor: AtomicU64,
    /// Times the clock was seen stepping back (each episode once).
    steps_back: AtomicU64,
    /// The clock is behind `floor` right now.
    held: AtomicBool,
}

impl MonotonicNow {
    /// Now by `clock`, never below `floor_unix_s`.
    pub fn new(clock: Arc<dyn Clock>, floor_unix_s: u64) -> Self {
        MonotonicNow {
            clock,
            floor: AtomicU64::new(floor_unix_s),
            steps_back: AtomicU64::new(0),
            held: AtomicBool::new(false),
        }
    }

    /// The clock read.
    pub fn inner(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The clock's own reading, unheld.
    pub fn wall_unix_s(&self) -> u64 {
        self.clock.now_unix_s()
    }

    /// Times the clock stepped back while this ran.
    pub fn steps_back(&self) -> u64 {
        self.steps_back.load(Ordering::Relaxed)
    }

    /// Seconds the clock is behind the engine's time now (0: not held).
    pub fn held_s(&self) -> u64 {
        self.floor
            .load(Ordering::Relaxed)
            .saturating_sub(self.clock.now_unix_s())
    }

    #[cold]
    #[inline(never)]
    fn stepped_back(&self, wall: u64, floor: u64) {
        if !self.held.swap(true, Ordering::Relaxed) {
            self.steps_back.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                behind_s = floor - wall,
                "the system clock stepped back: the engine's time stands still until it \
                 catches up"
            );
        }
    }

    #[cold]
    #[inline(never)]
    fn caught_up(&self) {
        if self.held.swap(false, Ordering::Relaxed) {
            tracing::info!("the system clock caught up: the engine's time moves again");
        }
    }
}

impl MonotonicNow {
    /// The engine's time and the clock's own reading, from one read of the clock (a
    /// check-in batch needs both: state changes by the first, rotating steps by the second).
    #[inline]
    pub fn now_and_wall_unix_s(&self) -> (u64, u64) {
        let wall = self.clock.now_unix_s();
        let floor = self.floor.load(Ordering::Relaxed);
        if wall < floor {
            self.stepped_back(wall, floor);
            return (floor, wall);
        }
        if self.held.load(Ordering::Relaxed) {
            self.caught_up();
        }
        if wall > floor {
            return (
                self.floor.fetch_max(wall, Ordering::Relaxed).max(wall),
                wall,
            );
        }
        (wall, wall)
    }
}

impl Clock for MonotonicNow {
    #[inline]
    fn now_unix_s(&self) -> u64 {
        self.now_and_wall_unix_s().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a clock stepped forward and back moved the engine's time back with it.
    #[test]
    fn a_stepped_back_clock_holds_time_still_and_is_counted_once() {
        let clock = Arc::new(ManualClock::new(1_000));
        let now = MonotonicNow::new(clock.clone(), 0);
        assert_eq!(now.now_unix_s(), 1_000);
        clock.set(90_000);
        assert_eq!(now.now_unix_s(), 90_000);
        clock.set(1_001);
        assert_eq!(now.now_unix_s(), 90_000, "held");
        clock.set(1_002);
        assert_eq!(now.now_unix_s(), 90_000, "still held");
        assert_eq!((now.steps_back(), now.held_s()), (1, 90_000 - 1_002));
        clock.set(90_005);
        assert_eq!(now.now_unix_s(), 90_005);
        assert_eq!(now.held_s(), 0);
        clock.set(90_000);
        assert_eq!(now.now_unix_s(), 90_005);
        assert_eq!(now.steps_back(), 2, "a second episode");
        // A floor from the log holds from the start.
        let now = MonotonicNow::new(Arc::new(ManualClock::new(500)), 600);
        assert_eq!(now.now_unix_s(), 600);
    }
}
