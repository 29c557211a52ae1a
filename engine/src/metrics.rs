//! Lock-free histograms for latencies and batch sizes, readable two ways: as Prometheus
//! buckets ([`Coarse`], which the node encodes for `/metrics`) and in the fine layout of
//! [`stile_protocol::histogram`] (for the `metrics` request and `stile stat`'s percentiles).
//!
//! Recording is three relaxed atomic adds and takes no lock, so the node's reader and
//! writer tasks and the log's writer thread record without waiting for one another or for
//! a scrape. A reading is not one instant (buckets are loaded one by one while others add),
//! but every count it shows was recorded, and counts only grow.

use std::sync::atomic::{AtomicU64, Ordering};

use stile_protocol::histogram::{bucket_of, Histogram, BUCKETS};

/// Prometheus bucket edges of request latencies, microseconds: 10 µs to 1 s.
pub const LATENCY_EDGES_US: &[u64] = &[
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000,
];

/// Prometheus bucket edges of `fdatasync` latencies, microseconds: 50 µs to 5 s.
pub const FSYNC_EDGES_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// Prometheus bucket edges of records made durable per sync: powers of 4 up to 2^20.
pub const BATCH_EDGES: &[u64] = &[
    1, 4, 16, 64, 256, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576,
];

/// Most Prometheus edges a histogram takes.
pub const EDGES_MAX: usize = 32;

/// A histogram of integer values (microseconds, records) that any thread records into
/// without a lock. Aligned so that two histograms never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
pub struct AtomicHistogram {
    /// Counts in the fine layout ([`BUCKETS`] of them).
    fine: Box<[AtomicU64]>,
    /// Counts between Prometheus edges: `coarse[i]` counts values in `(edges[i-1],
    /// edges[i]]`, the last one values above every edge.
    coarse: Box<[AtomicU64]>,
    /// Prometheus bucket edges, ascending, in the recorded unit.
    edges: &'static [u64],
    /// Sum of the values recorded (wraps after 2^64, which is 584,000 years of
    /// microseconds).
    sum: AtomicU64,
}

impl AtomicHistogram {
    /// An empty histogram with Prometheus buckets at `edges` (ascending, at most
    /// [`EDGES_MAX`]).
    pub fn new(edges: &'static [u64]) -> Self {
        assert!(edges.len() <= EDGES_MAX, "too many edges");
        assert!(edges.windows(2).all(|w| w[0] < w[1]), "edges ascend");
        AtomicHistogram {
            fine: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            coarse: (0..=edges.len()).map(|_| AtomicU64::new(0)).collect(),
            edges,
            sum: AtomicU64::new(0),
        }
    }

    /// Records `n` values of `v` (a batch of answers that took the same time).
    #[inline]
    pub fn record_n(&self, v: u64, n: u64) {
        debug_assert!(n > 0, "record something");
        let coarse = self.edges.partition_point(|&e| e < v);
        self.fine[bucket_of(v)].fetch_add(n, Ordering::Relaxed);
        self.coarse[coarse].fetch_add(n, Ordering::Relaxed);
        self.sum.fetch_add(v.wrapping_mul(n), Ordering::Relaxed);
    }

    /// Records one value.
    #[inline]
    pub fn record(&self, v: u64) {
        self.record_n(v, 1);
    }

    /// Values recorded so far.
    pub fn count(&self) -> u64 {
        self.coarse.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The fine reading, sparse (what the `metrics` request carries).
    pub fn snapshot(&self) -> Histogram {
        Self::snapshot_of([self])
    }

    /// The fine reading of several histograms (shards of one), summed.
    pub fn snapshot_of<'a>(shards: impl IntoIterator<Item = &'a AtomicHistogram>) -> Histogram {
        let mut fine = vec![0u64; BUCKETS];
        let mut sum = 0u64;
        for h in shards {
            for (total, c) in fine.iter_mut().zip(h.fine.iter()) {
                *total += c.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(h.sum.load(Ordering::Relaxed));
        }
        let buckets = fine
            .into_iter()
            .enumerate()
            .filter(|&(_, n)| n > 0)
            .map(|(i, n)| (i as u16, n))
            .collect();
        Histogram { sum, buckets }
    }

    /// The Prometheus buckets of several histograms with the same edges (shards of one),
    /// summed, their values divided by `divisor` (1e6 turns microseconds into the seconds
    /// Prometheus expects; 1 keeps counts as they are).
    pub fn coarse_of<'a>(
        shards: impl IntoIterator<Item = &'a AtomicHistogram>,
        divisor: f64,
    ) -> Coarse {
        let mut buckets = [(f64::MAX, 0u64); EDGES_MAX + 1];
        let mut sum = 0u64;
        let mut len = 0;
        for h in shards {
            len = h.coarse.len();
            for (i, c) in h.coarse.iter().enumerate() {
                buckets[i].0 = h.edges.get(i).map_or(f64::MAX, |&e| e as f64 / divisor);
                buckets[i].1 += c.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(h.sum.load(Ordering::Relaxed));
        }
        Coarse {
            sum: sum as f64 / divisor,
            count: buckets[..len].iter().map(|&(_, n)| n).sum(),
            buckets,
            len,
        }
    }
}

/// A histogram as Prometheus reads it: bucket upper bounds (the last is `f64::MAX`, for
/// +Inf) with the count of values in each, their sum and their count.
#[derive(Debug, Clone, Copy)]
pub struct Coarse {
    /// Sum of the values, divided.
    pub sum: f64,
    /// Values counted.
    pub count: u64,
    /// Upper bound and count of each bucket (the first `len`).
    buckets: [(f64, u64); EDGES_MAX + 1],
    /// Buckets in use.
    len: usize,
}

impl Coarse {
    /// The buckets: upper bound and count.
    pub fn buckets(&self) -> &[(f64, u64)] {
        &self.buckets[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use stile_protocol::histogram::bucket_range;

    use super::*;

    #[test]
    fn edges_are_inclusive_and_the_fine_layout_agrees() {
        let h = AtomicHistogram::new(LATENCY_EDGES_US);
        h.record(10); // le 10 µs
        h.record(11); // le 25 µs
        h.record_n(1_000, 3); // le 1 ms
        h.record(2_000_000); // +Inf only
        assert_eq!(h.count(), 6);
        let fine = h.snapshot();
        assert_eq!(fine.count(), 6);
        assert_eq!(fine.sum, 10 + 11 + 3_000 + 2_000_000);
        let (low, high) = bucket_range(fine.buckets[2].0 as usize);
        assert!((low..=high).contains(&1_000) && fine.buckets[2].1 == 3);

        let coarse = AtomicHistogram::coarse_of([&h], 1e6);
        assert_eq!(coarse.count, 6);
        let b = coarse.buckets();
        assert_eq!(b.len(), LATENCY_EDGES_US.len() + 1);
        assert_eq!(b[0], (0.00001, 1));
        assert_eq!(b[1], (0.000025, 1));
        assert_eq!(b[6], (0.001, 3));
        assert_eq!(*b.last().unwrap(), (f64::MAX, 1));
        assert_eq!(b.iter().map(|&(_, n)| n).sum::<u64>(), 6);
    }
}
