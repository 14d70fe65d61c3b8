//! A fixed-bucket latency histogram of relaxed atomics: what `/metrics` renders and what a
//! published stats snapshot carries (p50/p99 by interpolation, as `histogram_quantile`).
//!
//! Fixed buckets rather than a sketch: recording is a binary search over 22 constants and
//! two `fetch_add`s, no allocation, no lock; and buckets are what Prometheus aggregates
//! across processes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in nanoseconds: 1 µs (an L1 hit) to 10 s (a slow body).
const BOUNDS_NS: [u64; 22] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The same bounds in seconds, as rendered in `le` labels (and offered to exporters).
pub(crate) const BOUNDS_SECONDS: [f64; 22] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
];

/// Counts per bucket (the last one past every bound) and the sum of what was recorded.
#[derive(Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    #[inline]
    pub(crate) fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The counts now. Not one atomic picture (a concurrent record may show in a bucket
    /// and not yet in the sum), but `count` is the buckets' total, so `_count` always equals
    /// the `+Inf` bucket.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        HistogramSnapshot {
            count: buckets.iter().sum(),
            sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

/// A histogram's figures at one moment, serialisable (for a published stats key).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub(crate) struct HistogramSnapshot {
    /// Observations per bucket, not cumulative: `buckets[i]` counts those above bound
    /// `i - 1` and at most bound `i` of [`BOUNDS_SECONDS`]; the last one those above every
    /// bound.
    pub(crate) buckets: Vec<u64>,
    /// Sum of the observations, in seconds.
    pub(crate) sum_seconds: f64,
    /// Number of observations.
    pub(crate) count: u64,
}

impl HistogramSnapshot {
    /// Cumulative counts per `le` bound as Prometheus renders them, `+Inf` last.
    pub(crate) fn cumulative(&self) -> impl Iterator<Item = (Option<f64>, u64)> + '_ {
        let mut total = 0;
        self.buckets.iter().enumerate().map(move |(i, n)| {
            total += n;
            (BOUNDS_SECONDS.get(i).copied(), total)
        })
    }

    /// The `q` quantile (0..=1) in seconds, interpolated linearly inside its bucket as
    /// PromQL's `histogram_quantile` does; `None` before the first observation. Past the
    /// last bound it answers the last bound (there is no upper edge to interpolate to).
    #[cfg_attr(not(test), allow(dead_code))] // for `cachectl top` (p50/p99)
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            let upto = below + n;
            if n > 0 && upto as f64 >= rank {
                let Some(&hi) = BOUNDS_SECONDS.get(i) else {
                    return BOUNDS_SECONDS.last().copied();
                };
                let lo = if i == 0 { 0.0 } else { BOUNDS_SECONDS[i - 1] };
                let within = (rank - below as f64) / n as f64;
                return Some(lo + (hi - lo) * within);
            }
            below = upto;
        }
        BOUNDS_SECONDS.last().copied()
    }

    /// This snapshot minus an earlier one of the same histogram (a rate over an interval,
    /// as `cachectl top` needs); counts that went down (a restart) count from zero.
    #[cfg_attr(not(test), allow(dead_code))] // for `cachectl top`
    pub(crate) fn since(&self, earlier: &Self) -> Self {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        Self {
            count: buckets.iter().sum(),
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_agree_and_ascend() {
        for (ns, s) in BOUNDS_NS.iter().zip(BOUNDS_SECONDS) {
            assert!((*ns as f64 / 1e9 - s).abs() < 1e-12, "{ns} ns vs {s} s");
        }
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn records_into_the_bucket_whose_bound_is_at_least_the_value() {
        let h = Histogram::default();
        h.record(Duration::from_nanos(1_000)); // le=0.000001 (inclusive)
        h.record(Duration::from_nanos(1_001)); // le=0.0000025
        h.record(Duration::from_millis(3)); // le=0.005
        h.record(Duration::from_secs(60)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[11], 1);
        assert_eq!(s.buckets[22], 1);
        let cumulative: Vec<_> = s.cumulative().collect();
        assert_eq!(cumulative.len(), 23);
        assert_eq!(cumulative[22], (None, 4));
        assert_eq!(cumulative[11], (Some(0.005), 3));
        assert!((s.sum_seconds - (60.0 + 0.003 + 0.000_002_001)).abs() < 1e-9);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        // 100 observations in (0.001, 0.0025]: the median is half way through it.
        for _ in 0..100 {
            h.record(Duration::from_micros(2_000));
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5).unwrap_or_default();
        assert!((p50 - 0.001_75).abs() < 1e-9, "{p50}");
        let p99 = s.quantile(0.99).unwrap_or_default();
        assert!(p99 > 0.002_4 && p99 <= 0.002_5, "{p99}");
        let later = {
            h.record(Duration::from_secs(1));
            h.snapshot()
        };
        let delta = later.since(&s);
        assert_eq!(delta.count, 1);
        assert_eq!(delta.buckets[18], 1);
    }
}
