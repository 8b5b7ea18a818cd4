//! Per-class run figures. Each worker process counts its runs' outcomes and durations over
//! the last minute; its heartbeat publishes them beside the process; [`crate::Admin`] sums
//! every live process's into one row per class: throughput, failure rate and duration
//! percentiles.
//!
//! Durations go into a log-scale histogram (four buckets per power of two, so a percentile
//! is within 19 % of the true value), which sums exactly across processes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::time::epoch_seconds;

/// How far back the published figures reach.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The window moves on in steps this long.
const SLICE_SECS: u64 = 5;
const SLICES: u64 = WINDOW.as_secs() / SLICE_SECS;

/// Runs of one class over a span: counts and a histogram of durations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Runs {
    runs: u64,
    failed: u64,
    max_us: u64,
    /// Histogram bucket → runs, sparse.
    hist: BTreeMap<u16, u64>,
}

impl Runs {
    fn record(&mut self, failed: bool, ran: Duration) {
        let us = u64::try_from(ran.as_micros()).unwrap_or(u64::MAX);
        self.runs += 1;
        self.failed += u64::from(failed);
        self.max_us = self.max_us.max(us);
        *self.hist.entry(bucket(us)).or_default() += 1;
    }

    fn add(&mut self, other: &Runs) {
        self.runs += other.runs;
        self.failed += other.failed;
        self.max_us = self.max_us.max(other.max_us);
        for (bucket, count) in &other.hist {
            *self.hist.entry(*bucket).or_default() += count;
        }
    }

    /// The duration at or below which a share `q` of the runs finished, from the upper
    /// edge of its bucket (never above the longest run).
    fn percentile(&self, q: f64) -> Duration {
        let total: u64 = self.hist.values().sum();
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in &self.hist {
            seen += count;
            if seen >= rank {
                return Duration::from_micros(upper_edge(*bucket).min(self.max_us));
            }
        }
        Duration::from_micros(self.max_us)
    }
}

/// The histogram bucket of a duration in microseconds: exact below 8, then four buckets
/// per power of two.
fn bucket(us: u64) -> u16 {
    if us < 8 {
        return us as u16;
    }
    let log = 63 - us.leading_zeros() as u16;
    let quarter = ((us >> (log - 2)) & 3) as u16;
    log * 4 + quarter
}

/// The largest duration in `bucket`.
fn upper_edge(bucket: u16) -> u64 {
    if bucket < 8 {
        return u64::from(bucket);
    }
    let (log, quarter) = (u32::from(bucket / 4), u128::from(bucket % 4));
    let edge = ((5 + quarter) << (log - 2)) - 1;
    u64::try_from(edge).unwrap_or(u64::MAX)
}

/// What a process publishes for one class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Published {
    /// The last minute.
    window: Runs,
    /// Runs and failures since the process started.
    total: (u64, u64),
}

/// One class's runs in this process, by five-second slice.
#[derive(Default)]
struct ClassRuns {
    slices: VecDeque<(u64, Runs)>,
    total: (u64, u64),
}

impl ClassRuns {
    fn forget_before(&mut self, oldest: u64) {
        while self
            .slices
            .front()
            .is_some_and(|(slice, _)| *slice < oldest)
        {
            self.slices.pop_front();
        }
    }
}

/// A worker process's per-class figures, recorded as jobs end.
#[derive(Default)]
pub(crate) struct Recorder {
    classes: Mutex<HashMap<&'static str, ClassRuns>>,
}

fn slice_of(at: SystemTime) -> u64 {
    epoch_seconds(at).max(0.0) as u64 / SLICE_SECS
}

impl Recorder {
    /// Records a run of `class` that ended at `at` after running `ran`.
    pub(crate) fn record(&self, class: &'static str, failed: bool, ran: Duration, at: SystemTime) {
        let slice = slice_of(at);
        let mut classes = self.classes.lock().unwrap_or_else(|e| e.into_inner());
        let runs = classes.entry(class).or_default();
        runs.total.0 += 1;
        runs.total.1 += u64::from(failed);
        match runs.slices.back_mut() {
            Some((last, current)) if *last == slice => current.record(failed, ran),
            _ => {
                let mut current = Runs::default();
                current.record(failed, ran);
                runs.slices.push_back((slice, current));
                runs.forget_before(slice.saturating_sub(SLICES - 1));
            }
        }
    }

    /// The figures to publish at `at`, as JSON: per class, the last minute and the totals.
    pub(crate) fn snapshot(&self, at: SystemTime) -> String {
        let oldest = slice_of(at).saturating_sub(SLICES - 1);
        let mut classes = self.classes.lock().unwrap_or_else(|e| e.into_inner());
        let published: BTreeMap<&str, Published> = classes
            .iter_mut()
            .map(|(class, runs)| {
                runs.forget_before(oldest);
                let mut window = Runs::default();
                for (_, slice) in &runs.slices {
                    window.add(slice);
                }
                (
                    *class,
                    Published {
                        window,
                        total: runs.total,
                    },
                )
            })
            .collect();
        serde_json::to_string(&published).unwrap_or_default()
    }
}

/// One job class's figures summed over the live worker processes.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ClassStats {
    /// The job class.
    pub class: String,
    /// Runs that ended in the last minute.
    pub runs_per_minute: u64,
    /// Of those, runs that failed.
    pub failed_per_minute: u64,
    /// Runs since the processes started.
    pub total_runs: u64,
    /// Failed runs since the processes started.
    pub total_failed: u64,
    /// Median duration over the last minute.
    pub p50: Duration,
    /// 95th percentile duration over the last minute.
    pub p95: Duration,
    /// 99th percentile duration over the last minute.
    pub p99: Duration,
    /// The longest run in the last minute.
    pub max: Duration,
}

impl ClassStats {
    /// The share of the last minute's runs that failed (0 when none ran).
    pub fn failure_rate(&self) -> f64 {
        if self.runs_per_minute == 0 {
            return 0.0;
        }
        self.failed_per_minute as f64 / self.runs_per_minute as f64
    }
}

/// Sums the figures several processes published, one row per class, by class name.
/// Figures that do not parse (a process of another version) are left out.
pub(crate) fn merge<'a>(published: impl IntoIterator<Item = &'a str>) -> Vec<ClassStats> {
    let mut by_class: BTreeMap<String, Published> = BTreeMap::new();
    for json in published {
        let Ok(classes) = serde_json::from_str::<BTreeMap<String, Published>>(json) else {
            continue;
        };
        for (class, figures) in classes {
            let sum = by_class.entry(class).or_default();
            sum.window.add(&figures.window);
            sum.total.0 += figures.total.0;
            sum.total.1 += figures.total.1;
        }
    }
    by_class
        .into_iter()
        .map(|(class, sum)| ClassStats {
            class,
            runs_per_minute: sum.window.runs,
            failed_per_minute: sum.window.failed,
            total_runs: sum.total.0,
            total_failed: sum.total.1,
            p50: sum.window.percentile(0.50),
            p95: sum.window.percentile(0.95),
            p99: sum.window.percentile(0.99),
            max: Duration::from_micros(sum.window.max_us),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut previous = 0;
        for us in 0..100_000u64 {
            let b = bucket(us);
            assert!(b >= previous, "bucket of {us} went down");
            previous = b;
            let edge = upper_edge(b);
            assert!(edge >= us, "{us} above its bucket's edge {edge}");
            assert!(
                edge as f64 <= us as f64 * 1.25 + 1.0,
                "{us}: edge {edge} too loose"
            );
        }
        assert_eq!(upper_edge(bucket(u64::MAX)), u64::MAX);
    }

    #[test]
    fn percentiles_and_sums_over_processes() {
        let at = SystemTime::now();
        let (a, b) = (Recorder::default(), Recorder::default());
        for ms in 1..=90 {
            a.record("Fast", false, Duration::from_millis(ms), at);
        }
        for _ in 0..10 {
            b.record("Fast", true, Duration::from_secs(2), at);
        }
        b.record("Other", false, Duration::from_millis(5), at);
        let stats = merge([a.snapshot(at).as_str(), b.snapshot(at).as_str(), "junk"]);
        assert_eq!(stats.len(), 2);
        let fast = &stats[0];
        assert_eq!(fast.class, "Fast");
        assert_eq!((fast.runs_per_minute, fast.failed_per_minute), (100, 10));
        assert_eq!((fast.total_runs, fast.total_failed), (100, 10));
        assert!((fast.failure_rate() - 0.1).abs() < 1e-9);
        let p50 = fast.p50.as_secs_f64();
        assert!((0.050..=0.050 * 1.25).contains(&p50), "p50 {p50}");
        assert_eq!(fast.p95, Duration::from_secs(2));
        assert_eq!(fast.max, Duration::from_secs(2));
    }

    #[test]
    fn the_window_forgets_runs_older_than_a_minute() {
        let recorder = Recorder::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        recorder.record("Job", false, Duration::from_millis(1), start);
        let later = start + WINDOW + Duration::from_secs(SLICE_SECS);
        recorder.record("Job", false, Duration::from_millis(1), later);
        let stats = merge([recorder.snapshot(later).as_str()]);
        assert_eq!(stats[0].runs_per_minute, 1);
        assert_eq!(stats[0].total_runs, 2);
    }
}
