//! A fixed log-linear histogram of latencies in microseconds.
//!
//! Values below 64 µs have a bucket each; above, every power of two is cut into 64 equal
//! buckets, so a quantile is off by at most 1/64 (≈ 1.6 %) — HDR-histogram precision with two
//! significant figures, in 2,304 counters (18 KiB), up to 2^41 µs. Recording is a shift and an
//! add; histograms merge by adding counters, and travel between processes as the sparse list
//! of non-empty buckets ([`Sparse`]).

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
const MAX_EXP: u32 = 40;
const BUCKETS: usize = SUB * (MAX_EXP - SUB_BITS + 2) as usize;

/// Counts of values (microseconds) in log-linear buckets, plus the exact extremes and sum.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket a value falls in.
fn index(value: u64) -> usize {
    if value < SUB as u64 {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros();
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = (value >> (exp - SUB_BITS)) as usize - SUB;
    SUB * (exp - SUB_BITS + 1) as usize + sub
}

/// The highest value that falls in bucket `index`.
fn highest(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let exp = (index / SUB) as u32 + SUB_BITS - 1;
    let sub = (index % SUB) as u64 + SUB as u64;
    ((sub + 1) << (exp - SUB_BITS)) - 1
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Counts one value.
    #[inline]
    pub fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.total += 1;
        self.sum += u128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// How many values were counted.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The largest value counted (exact); 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean (exact); 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0–1): the highest value of the bucket holding it, capped at
    /// the exact maximum; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return highest(i).min(self.max).max(self.min);
            }
        }
        self.max
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.absorb_summary(other.total, other.sum, other.min, other.max);
    }

    fn absorb_summary(&mut self, total: u64, sum: u128, min: u64, max: u64) {
        self.total += total;
        self.sum += sum;
        self.min = self.min.min(min);
        self.max = self.max.max(max);
    }

    /// The non-empty buckets, for sending to another process.
    pub fn to_sparse(&self) -> Sparse {
        Sparse {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|&(_, &count)| count > 0)
                .map(|(i, &count)| (i as u32, count))
                .collect(),
            total: self.total,
            sum: self.sum as f64,
            min: self.min,
            max: self.max,
        }
    }

    /// Adds a histogram received as [`Sparse`].
    pub fn merge_sparse(&mut self, sparse: &Sparse) {
        for &(i, count) in &sparse.buckets {
            if let Some(slot) = self.counts.get_mut(i as usize) {
                *slot += count;
            }
        }
        self.absorb_summary(sparse.total, sparse.sum as u128, sparse.min, sparse.max);
    }

    /// p50, p90, p99, max and mean in milliseconds.
    pub fn summary_ms(&self) -> Quantiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Quantiles {
            count: self.total,
            p50: ms(self.quantile(0.50)),
            p90: ms(self.quantile(0.90)),
            p99: ms(self.quantile(0.99)),
            max: ms(self.max),
            mean: self.mean() / 1000.0,
        }
    }
}

/// A histogram as its non-empty buckets, for the pipe between worker and coordinator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sparse {
    /// `(bucket, count)` pairs.
    pub buckets: Vec<(u32, u64)>,
    /// Values counted.
    pub total: u64,
    /// Their sum (as a float: JSON has no 128-bit integers).
    pub sum: f64,
    /// The smallest.
    pub min: u64,
    /// The largest.
    pub max: u64,
}

/// A latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Quantiles {
    /// Values counted.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest (exact).
    pub max: f64,
    /// Mean (exact).
    pub mean: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut last = 0;
        for value in (0..100_000u64).chain([1 << 30, (1 << 41) - 1]) {
            let i = index(value);
            assert!(i >= last, "indices never go down");
            last = i;
            assert!(highest(i) >= value, "{value} fits bucket {i}");
            if i > 0 {
                assert!(highest(i - 1) < value, "{value} is above bucket {}", i - 1);
            }
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(1.0), 100_000);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(h.max(), 100_000);
        assert!((h.mean() - 50_000.5).abs() < 1e-6);
    }

    #[test]
    fn small_values_are_exact_and_empty_is_zero() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.5), 0);
        assert!(h.is_empty());
        for v in [3, 3, 3, 7] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 3);
        assert_eq!(h.quantile(0.99), 7);
        assert_eq!(h.len(), 4);
    }

    #[test]
    fn merging_directly_and_through_sparse_agree() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for v in 0..1000 {
            a.record(v * 7);
            b.record(v * 13 + 5);
        }
        let mut direct = a.clone();
        direct.merge(&b);
        let wire = serde_json::to_string(&b.to_sparse()).unwrap();
        let mut via = a.clone();
        via.merge_sparse(&serde_json::from_str(&wire).unwrap());
        assert_eq!(direct.len(), 2000);
        assert_eq!(via.len(), 2000);
        for q in [0.1, 0.5, 0.9, 0.999] {
            assert_eq!(direct.quantile(q), via.quantile(q));
        }
        assert_eq!(direct.max(), via.max());
        let mut empty = Histogram::new();
        empty.merge_sparse(&Histogram::new().to_sparse());
        assert_eq!(empty.quantile(0.5), 0);
    }
}
