//! The bucket layout of the node's latency histograms, shared by the node that counts and
//! the tools that read them (`stile stat`), and the sparse form they travel in.
//!
//! Values are integers (microseconds for latencies). Bucket `i` below 32 holds exactly the
//! value `i`; above, each power of two is cut into 32 equal buckets, so a bucket is at most
//! 1/32 (3.1 %) of its values wide. Values from 2^36 on (19 hours in microseconds) share the
//! last bucket. Byte layout on the wire: `docs/FORMAT.md` §9.

/// Buckets in the layout.
pub const BUCKETS: usize = 1024;
/// Bits of a value kept below its leading one: 32 buckets per power of two.
const SUB_BITS: u32 = 5;
/// Buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Largest value with a bucket of its own; larger ones count in the last bucket.
pub const VALUE_MAX: u64 = (1 << 36) - 1;

/// The bucket that counts `v`.
#[inline]
pub fn bucket_of(v: u64) -> usize {
    let v = v.min(VALUE_MAX);
    if v < SUB {
        return v as usize;
    }
    let octave = 63 - v.leading_zeros();
    let sub = (v >> (octave - SUB_BITS)) - SUB;
    ((octave - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The smallest and largest value bucket `i` counts (both inclusive).
pub fn bucket_range(i: usize) -> (u64, u64) {
    assert!(i < BUCKETS, "bucket {i} out of range");
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let octave = (i / SUB) as u32 + SUB_BITS - 1;
    let shift = octave - SUB_BITS;
    let low = (SUB + i % SUB) << shift;
    (low, low + (1 << shift) - 1)
}

/// A histogram in the layout above, sparse: only buckets that counted something.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Histogram {
    /// Sum of the values counted (saturating).
    pub sum: u64,
    /// `(bucket, count)`, buckets ascending and below [`BUCKETS`], counts non-zero.
    pub buckets: Vec<(u16, u64)>,
}

impl Histogram {
    /// Values counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|&(_, n)| n).sum()
    }

    /// Mean value, if anything was counted.
    pub fn mean(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum as f64 / n as f64)
    }

    /// The value at quantile `q` (0 to 1), as the largest value its bucket holds (so a
    /// quantile is never reported below its true value by more than a bucket's width);
    /// `None` if nothing was counted.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(i, c) in &self.buckets {
            seen += c;
            if seen >= rank {
                return Some(bucket_range(i as usize).1);
            }
        }
        self.buckets
            .last()
            .map(|&(i, _)| bucket_range(i as usize).1)
    }

    /// What was counted after `earlier` (an earlier reading of the same counters). Buckets
    /// that went down (a restarted node) count as zero.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut old = earlier.buckets.iter().peekable();
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for &(i, c) in &self.buckets {
            while old.next_if(|&&(j, _)| j < i).is_some() {}
            let before = old.next_if(|&&(j, _)| j == i).map_or(0, |&(_, n)| n);
            if c > before {
                buckets.push((i, c - before));
            }
        }
        Histogram {
            sum: self.sum.saturating_sub(earlier.sum),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_values_without_gaps() {
        let mut next = 0;
        for i in 0..BUCKETS {
            let (low, high) = bucket_range(i);
            assert_eq!(
                low,
                next,
                "bucket {i} starts where {} ended",
                i.saturating_sub(1)
            );
            assert!(high >= low);
            assert_eq!(bucket_of(low), i);
            assert_eq!(bucket_of(high), i);
            // At most 1/32 of its values wide.
            assert!(
                (high - low) * 32 <= low.max(1),
                "bucket {i}: {low}..={high}"
            );
            next = high + 1;
        }
        assert_eq!(next, VALUE_MAX + 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_the_upper_edge_of_their_bucket() {
        let mut h = Histogram::default();
        // 90 values of 100 µs, 9 of 1000 µs, 1 of 10,000 µs.
        for (v, n) in [(100u64, 90u64), (1000, 9), (10_000, 1)] {
            h.buckets.push((bucket_of(v) as u16, n));
            h.sum += v * n;
        }
        let edge = |v| bucket_range(bucket_of(v)).1;
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), Some(edge(100)));
        assert_eq!(h.quantile(0.9), Some(edge(100)));
        assert_eq!(h.quantile(0.99), Some(edge(1000)));
        assert_eq!(h.quantile(0.999), Some(edge(10_000)));
        assert!(edge(1000) >= 1000 && edge(1000) < 1032);
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn since_subtracts_bucket_by_bucket() {
        let a = Histogram {
            sum: 10,
            buckets: vec![(1, 2), (5, 1)],
        };
        let b = Histogram {
            sum: 25,
            buckets: vec![(1, 2), (3, 4), (5, 2), (9, 1)],
        };
        let d = b.since(&a);
        assert_eq!(d.buckets, vec![(3, 4), (5, 1), (9, 1)]);
        assert_eq!(d.sum, 15);
        assert_eq!(
            a.since(&b).count(),
            0,
            "a restart counts as nothing, not a wrap"
        );
    }
}
