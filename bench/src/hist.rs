//! A log-linear latency histogram: exact below 128 ns, then 128 buckets per power of two, so a
//! percentile read from it is within 1/256 (0.4 %) of the true value. Fixed memory, O(1)
//! record, mergeable — the load generator records every transaction into one and the
//! orchestrator merges them across rounds for the picture.

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets up to `u64::MAX`: 128 exact ones, then 128 per power of two from 2^7 to 2^63.
const BUCKETS: usize = ((64 - SUB_BITS) as usize + 1) * SUB as usize;

/// Durations in nanoseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "Sparse", from = "Sparse")]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    max_ns: u64,
    sum_ns: u128,
}

/// The wire form: only the buckets that hold something, as `[lower bound ns, count]`.
#[derive(Clone, Serialize, Deserialize)]
struct Sparse {
    count: u64,
    max_ns: u64,
    mean_ns: u64,
    buckets: Vec<[u64; 2]>,
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
    ((e - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// Smallest value that falls in bucket `i`.
fn lower(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = i / SUB - 1 + SUB_BITS as u64;
    (SUB + i % SUB) << (e - SUB_BITS as u64)
}

/// Largest value that falls in bucket `i`.
fn upper(i: usize) -> u64 {
    if i + 1 >= BUCKETS {
        u64::MAX
    } else {
        lower(i + 1) - 1
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            count: 0,
            max_ns: 0,
            sum_ns: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.counts[index(ns)] += 1;
        self.count += 1;
        self.max_ns = self.max_ns.max(ns);
        self.sum_ns += u128::from(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.max_ns = self.max_ns.max(other.max_ns);
        self.sum_ns += other.sum_ns;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    pub fn mean_ns(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            (self.sum_ns / u128::from(self.count)) as u64
        }
    }

    /// The value at quantile `q` (0..=1): the middle of the bucket holding the rank, never
    /// above the largest value seen; the largest itself for the last rank. 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        if rank == self.count {
            return self.max_ns;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = (lower(i), upper(i));
                return (lo + (hi - lo) / 2).min(self.max_ns);
            }
        }
        self.max_ns
    }

    /// `(upper bound ns, cumulative fraction)` for every bucket that holds something: the
    /// empirical CDF, as the picture draws it.
    pub fn cdf(&self) -> Vec<(u64, f64)> {
        let mut seen = 0;
        let mut out = Vec::new();
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                seen += c;
                out.push((upper(i).min(self.max_ns), seen as f64 / self.count as f64));
            }
        }
        out
    }
}

impl From<Histogram> for Sparse {
    fn from(h: Histogram) -> Self {
        Sparse {
            count: h.count,
            max_ns: h.max_ns,
            mean_ns: h.mean_ns(),
            buckets: h
                .counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| [lower(i), c])
                .collect(),
        }
    }
}

impl From<Sparse> for Histogram {
    fn from(s: Sparse) -> Self {
        let mut h = Histogram::default();
        for [lo, c] in s.buckets {
            h.counts[index(lo)] += c;
        }
        h.count = s.count;
        h.max_ns = s.max_ns;
        h.sum_ns = u128::from(s.mean_ns) * u128::from(s.count);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that every value falls in the bucket whose bounds contain it, at the edges too.
    #[test]
    fn buckets_contain_their_values() {
        for v in (0..5000).chain([u64::MAX, u64::MAX / 3, 1 << 40, (1 << 40) - 1]) {
            let i = index(v);
            assert!(i < BUCKETS, "{v}");
            assert!(
                lower(i) <= v && v <= upper(i),
                "{v} in [{}, {}]",
                lower(i),
                upper(i)
            );
        }
    }

    /// Test that quantiles are within the bucket precision and survive the JSON round trip.
    #[test]
    fn quantiles_within_precision_and_round_trip() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [(0.5, 5_000_000.0), (0.99, 9_900_000.0)] {
            let got = h.quantile_ns(q) as f64;
            assert!((got - want).abs() / want < 0.005, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile_ns(1.0), 10_000_000);
        let back: Histogram = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back.quantile_ns(0.5), h.quantile_ns(0.5));
        assert_eq!(back.count(), h.count());
    }
}
