//! Restart accounting shared by every supervisor of a shard: how many restarts
//! and how long each took, from the death being noticed to the new child's
//! first poll.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Longest restart the histogram records exactly; longer ones are clamped.
const RESTART_NS_MAX: u64 = 60_000_000_000;

pub struct RestartStats {
    total: Cell<u64>,
    duration_ns: RefCell<Histogram<u64>>,
}

/// A copy of the restart figures, for reports and metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RestartSummary {
    pub restarts: u64,
    pub measured: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// Restart durations bucketed for Prometheus (see [`RestartStats::cumulative`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RestartBuckets {
    pub cumulative: Vec<u64>,
    pub sum_ns: f64,
    pub count: u64,
}

impl Default for RestartStats {
    fn default() -> Self {
        Self::new()
    }
}

impl RestartStats {
    pub fn new() -> Self {
        RestartStats {
            total: Cell::new(0),
            // 3 significant digits from 1 ns to a minute: about 30 KiB per shard.
            duration_ns: RefCell::new(
                Histogram::new_with_bounds(1, RESTART_NS_MAX, 3)
                    .expect("static histogram bounds are valid"),
            ),
        }
    }

    pub(crate) fn count_restart(&self) {
        self.total.set(self.total.get() + 1);
    }

    pub(crate) fn record_duration(&self, duration: Duration) {
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.duration_ns
            .borrow_mut()
            .saturating_record(ns.clamp(1, RESTART_NS_MAX));
    }

    pub fn restarts(&self) -> u64 {
        self.total.get()
    }

    /// The histogram of restart durations in nanoseconds.
    pub fn histogram(&self) -> std::cell::Ref<'_, Histogram<u64>> {
        self.duration_ns.borrow()
    }

    /// The histogram in Prometheus form: for each bound (ns), how many
    /// restarts took at most that long; then the sum of all durations in ns
    /// (from the histogram's mean, so within its 3 significant digits) and
    /// the count.
    pub fn cumulative(&self, bounds_ns: &[u64]) -> RestartBuckets {
        let histogram = self.duration_ns.borrow();
        let count = histogram.len();
        RestartBuckets {
            cumulative: bounds_ns
                .iter()
                .map(|&bound| {
                    if count == 0 {
                        0
                    } else {
                        histogram.count_between(0, bound.min(RESTART_NS_MAX))
                    }
                })
                .collect(),
            sum_ns: histogram.mean() * count as f64,
            count,
        }
    }

    pub fn summary(&self) -> RestartSummary {
        let histogram = self.duration_ns.borrow();
        RestartSummary {
            restarts: self.total.get(),
            measured: histogram.len(),
            p50_ns: histogram.value_at_quantile(0.5),
            p99_ns: histogram.value_at_quantile(0.99),
            max_ns: histogram.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_buckets_count_restarts_at_most_each_bound() {
        let stats = RestartStats::new();
        let empty = stats.cumulative(&[1_000, 1_000_000]);
        assert_eq!((empty.cumulative, empty.count), (vec![0, 0], 0));
        for micros in [2, 3, 500, 20_000] {
            stats.record_duration(Duration::from_micros(micros));
        }
        let buckets = stats.cumulative(&[1_000, 10_000, 1_000_000, 100_000_000]);
        assert_eq!(buckets.cumulative, vec![0, 2, 3, 4]);
        assert_eq!(buckets.count, 4);
        let exact = 20_505_000.0;
        assert!(
            (buckets.sum_ns - exact).abs() / exact < 0.001,
            "{}",
            buckets.sum_ns
        );
    }
}
