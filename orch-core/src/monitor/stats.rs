//! What the attempt stage counts for the monitor: per engine, finished and failed engine calls
//! and a histogram of their durations, all cumulative atomics (an attempt costs two or three
//! uncontended-cache-line adds). The monitor diffs two snapshots to get a window's error rate
//! and percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two: a percentile is off by at most an eighth.
const SUB_BUCKETS: u32 = 4;
/// Durations up to 2^36 µs (about 19 hours) have buckets of their own; longer ones share
/// the last.
const MAX_EXPONENT: u32 = 36;
const BUCKETS: usize = (SUB_BUCKETS * (MAX_EXPONENT + 1)) as usize;

/// The bucket of a duration of `micros` microseconds.
fn bucket(micros: u64) -> usize {
    if micros < u64::from(SUB_BUCKETS) {
        return micros as usize;
    }
    let exponent = 63 - micros.leading_zeros();
    if exponent > MAX_EXPONENT {
        return BUCKETS - 1;
    }
    // The two bits after the leading one.
    let sub = (micros >> (exponent - 2)) & u64::from(SUB_BUCKETS - 1);
    (SUB_BUCKETS * (exponent - 1) + sub as u32) as usize
}

/// The upper bound, in microseconds, of bucket `index`.
fn bucket_upper(index: usize) -> u64 {
    let index = index as u32;
    if index < SUB_BUCKETS {
        return u64::from(index) + 1;
    }
    let exponent = index / SUB_BUCKETS + 1;
    let sub = u64::from(index % SUB_BUCKETS);
    (1u64 << exponent) + ((sub + 1) << (exponent - 2))
}

/// Counters of one engine's calls on this node, since start.
pub(crate) struct EngineStats {
    finished: AtomicU64,
    failed: AtomicU64,
    durations: Box<[AtomicU64]>,
}

impl EngineStats {
    pub(crate) fn new() -> Self {
        EngineStats {
            finished: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            durations: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records one engine call that took `took` and succeeded or not.
    pub(crate) fn record(&self, took: Duration, succeeded: bool) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        if !succeeded {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.durations[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            finished: self.finished.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            durations: self
                .durations
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// The counters of an [`EngineStats`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatsSnapshot {
    pub(crate) finished: u64,
    pub(crate) failed: u64,
    durations: Vec<u64>,
}

impl StatsSnapshot {
    /// What happened between `earlier` and this snapshot.
    pub(crate) fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            finished: self.finished.saturating_sub(earlier.finished),
            failed: self.failed.saturating_sub(earlier.failed),
            durations: self
                .durations
                .iter()
                .zip(&earlier.durations)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
        }
    }

    /// Failed calls per finished call; `None` without calls.
    pub(crate) fn error_rate(&self) -> Option<f64> {
        (self.finished > 0).then(|| self.failed as f64 / self.finished as f64)
    }

    /// The duration, in seconds, that a fraction `q` of calls stayed within (the upper bound
    /// of the bucket it falls in); `None` without calls.
    pub(crate) fn percentile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.durations.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.durations.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_upper(index) as f64 / 1e6);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_durations_in_order_within_an_eighth() {
        let mut last = 0;
        for micros in (0..5_000_000u64).step_by(997).chain([1 << 40, u64::MAX]) {
            let index = bucket(micros);
            assert!(index >= last, "{micros} went back a bucket");
            last = index;
            if index < BUCKETS - 1 {
                let upper = bucket_upper(index);
                assert!(micros < upper, "{micros} above its bucket's bound {upper}");
                assert!(upper as f64 <= (micros as f64 + 1.0) * 1.25 + 1.0);
            }
        }
    }

    #[test]
    fn percentiles_and_error_rate_of_a_window() {
        let stats = EngineStats::new();
        let before = stats.snapshot();
        for i in 0..100u64 {
            stats.record(Duration::from_millis(10 * (i + 1)), i % 10 != 0);
        }
        let window = stats.snapshot().since(&before);
        assert_eq!(window.error_rate(), Some(0.1));
        let p95 = window.percentile(0.95).unwrap();
        assert!((0.95..=1.2).contains(&p95), "p95 {p95}");
        let p50 = window.percentile(0.5).unwrap();
        assert!((0.5..=0.63).contains(&p50), "p50 {p50}");
        assert_eq!(
            stats.snapshot().since(&stats.snapshot()).percentile(0.5),
            None
        );
    }
}
