//! Who waits for which log position. Each waiter registers the number it needs, and the
//! writer wakes only the waiters its latest sync satisfied: with many streams waiting on
//! successive syncs, waking every waiter on every sync would wake most of them for nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

/// Wakers by the number each waits for: woken once everything below it is durable.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    by_seq: Mutex<BTreeMap<u64, Vec<Waker>>>,
}

impl Waiters {
    /// Registers `waker` to be woken once `durable` reaches `seq`. The caller checks
    /// `durable` again afterwards: a waker registered after the writer's last wake-up is
    /// woken by the next one only.
    fn register(&self, seq: u64, waker: &Waker) {
        let mut by_seq = self.by_seq.lock().expect("waiters poisoned");
        let wakers = by_seq.entry(seq).or_default();
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    /// Wakes everyone waiting for a number at or below `durable` (stored before the call).
    pub(super) fn wake_through(&self, durable: u64) {
        let ready = {
            let mut by_seq = self.by_seq.lock().expect("waiters poisoned");
            if by_seq
                .first_key_value()
                .is_none_or(|(&seq, _)| seq > durable)
            {
                return;
            }
            let later = by_seq.split_off(&(durable + 1));
            std::mem::replace(&mut *by_seq, later)
        };
        for waker in ready.into_values().flatten() {
            waker.wake();
        }
    }

    /// How many numbers have waiters (for tests).
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.by_seq.lock().expect("waiters poisoned").len()
    }
}

/// Waits, asynchronously, until `durable` reaches `seq`.
pub(super) struct Until<'a> {
    pub(super) durable: &'a AtomicU64,
    pub(super) waiters: &'a Waiters,
    pub(super) seq: u64,
}

impl Future for Until<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.durable.load(Ordering::Acquire) >= self.seq {
            return Poll::Ready(());
        }
        self.waiters.register(self.seq, cx.waker());
        if self.durable.load(Ordering::Acquire) >= self.seq {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Wakes a parked thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Blocks this thread until `durable` reaches `seq`.
pub(super) fn wait_blocking(durable: &AtomicU64, waiters: &Waiters, seq: u64) {
    if durable.load(Ordering::Acquire) >= seq {
        return;
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    loop {
        waiters.register(seq, &waker);
        if durable.load(Ordering::Acquire) >= seq {
            return;
        }
        std::thread::park();
        if durable.load(Ordering::Acquire) >= seq {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_only_the_waiters_a_sync_satisfied() {
        let waiters = Waiters::default();
        let durable = AtomicU64::new(0);
        let counts: Vec<Arc<Count>> = (0..3)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        let wakers: Vec<Waker> = counts.iter().map(|c| Waker::from(c.clone())).collect();
        for (seq, waker) in [10u64, 20, 30].into_iter().zip(&wakers) {
            let mut until = Until {
                durable: &durable,
                waiters: &waiters,
                seq,
            };
            let mut cx = Context::from_waker(waker);
            assert!(Pin::new(&mut until).poll(&mut cx).is_pending());
            // Polled again (a spurious poll): registered once only.
            assert!(Pin::new(&mut until).poll(&mut cx).is_pending());
        }
        durable.store(20, Ordering::Release);
        waiters.wake_through(20);
        let woken: Vec<usize> = counts.iter().map(|c| c.0.load(Ordering::SeqCst)).collect();
        assert_eq!(woken, [1, 1, 0]);
        assert_eq!(waiters.pending(), 1);
        // A number already durable is ready without registering.
        let mut done = Until {
            durable: &durable,
            waiters: &waiters,
            seq: 15,
        };
        let mut cx = Context::from_waker(&wakers[0]);
        assert!(Pin::new(&mut done).poll(&mut cx).is_ready());
        assert_eq!(waiters.pending(), 1);
        durable.store(31, Ordering::Release);
        waiters.wake_through(31);
        assert_eq!(counts[2].0.load(Ordering::SeqCst), 1);
        assert_eq!(waiters.pending(), 0);
    }

    #[test]
    fn blocking_waiters_race_the_writer_without_a_lost_wakeup() {
        // Many threads wait for successive numbers while a writer advances one at a time;
        // a lost wake-up leaves a thread parked past the deadline.
        let shared = Arc::new((AtomicU64::new(0), Waiters::default()));
        let threads: Vec<_> = (1..=64u64)
            .map(|seq| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    wait_blocking(&shared.0, &shared.1, seq);
                    assert!(shared.0.load(Ordering::Acquire) >= seq);
                })
            })
            .collect();
        for d in 1..=64u64 {
            if d % 8 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            shared.0.store(d, Ordering::Release);
            shared.1.wake_through(d);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !threads.iter().all(|t| t.is_finished()) {
            assert!(
                std::time::Instant::now() < deadline,
                "a waiter missed its wake-up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in threads {
            t.join().unwrap();
        }
    }
}
