//! Per-class run figures. Each worker process counts its runs' outcomes and durations over
//! the last minute; its heartbeat publishes them beside the process; [`crate::Admin`] sums
//! every live process's into one row per class: throughput, failure rate and duration
//! percentiles.
//!
//! Durations go into a log-scale histogram (four buckets per power of two, so a percentile
//! is within 19 % of the true value), which sums exactly across processes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use foldhash::HashMap;
use serde::{Deserialize, Serialize};

use crate::time::epoch_seconds;

/// How far back the published figures reach.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The window moves on in steps this long.
const SLICE_SECS: u64 = 5;
const SLICES: u64 = WINDOW.as_secs() / SLICE_SECS;

/// How many violations each class keeps, per process and summed.
const VIOLATIONS_KEPT: usize = 10;

/// Runs of one class over a span: counts, a histogram of durations, and the most memory a
/// run held and left behind (when a tracking allocator counts it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Runs {
    runs: u64,
    failed: u64,
    max_us: u64,
    /// Histogram bucket → runs, sparse.
    hist: BTreeMap<u16, u64>,
    #[serde(default)]
    peak_max: Option<u64>,
    #[serde(default)]
    retained_max: Option<u64>,
}

impl Runs {
    fn record(&mut self, run: &Run) {
        let us = u64::try_from(run.ran.as_micros()).unwrap_or(u64::MAX);
        self.runs += 1;
        self.failed += u64::from(run.failed);
        self.max_us = self.max_us.max(us);
        *self.hist.entry(bucket(us)).or_default() += 1;
        if let Some((peak, retained)) = run.memory {
            self.peak_max = self.peak_max.max(Some(peak));
            self.retained_max = self.retained_max.max(Some(retained));
        }
    }

    /// Adds `other`'s figures, which another process published: sums saturate rather than
    /// overflow.
    fn add(&mut self, other: &Runs) {
        self.runs = self.runs.saturating_add(other.runs);
        self.failed = self.failed.saturating_add(other.failed);
        self.max_us = self.max_us.max(other.max_us);
        self.peak_max = self.peak_max.max(other.peak_max);
        self.retained_max = self.retained_max.max(other.retained_max);
        for (bucket, count) in &other.hist {
            let sum = self.hist.entry(*bucket).or_default();
            *sum = sum.saturating_add(*count);
        }
    }

    /// The duration at or below which a share `q` of the runs finished, from the upper
    /// edge of its bucket (never above the longest run).
    fn percentile(&self, q: f64) -> Duration {
        let total = self.hist.values().fold(0u64, |a, b| a.saturating_add(*b));
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (bucket, count) in &self.hist {
            seen = seen.saturating_add(*count);
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
    // No duration in microseconds reaches bucket 256; a published one may claim it.
    if log > 63 {
        return u64::MAX;
    }
    let edge = ((5 + quarter) << (log - 2)) - 1;
    u64::try_from(edge).unwrap_or(u64::MAX)
}

/// One run as the recorder takes it.
pub(crate) struct Run {
    pub(crate) failed: bool,
    pub(crate) ran: Duration,
    pub(crate) at: SystemTime,
    /// Peak and retained bytes, when counted.
    pub(crate) memory: Option<(u64, u64)>,
}

/// A run over its budget, as the class's record keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Violation {
    /// The run's job id.
    pub jid: String,
    /// Which limit: `alloc`, `retained`, `time` or `misclassified`.
    pub limit: String,
    /// What the run used: bytes, or microseconds for time.
    pub figure: u64,
    /// What it may use, in the same unit.
    pub allowed: u64,
    /// When, in epoch milliseconds.
    pub at_ms: u64,
    /// The tier the class was in: `frequent`, `rare` or `bulk`.
    pub tier: String,
}

/// What a process publishes for one class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Published {
    /// The last minute.
    window: Runs,
    /// Runs and failures since the process started.
    total: (u64, u64),
    /// The latest runs over budget, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    violations: Vec<Violation>,
}

/// One class's runs in this process, by five-second slice.
#[derive(Default)]
struct ClassRuns {
    slices: VecDeque<(u64, Runs)>,
    total: (u64, u64),
    violations: VecDeque<Violation>,
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
    /// Records a run of `class`; returns how many runs of it ended in the last minute.
    pub(crate) fn record(&self, class: &'static str, run: &Run) -> u64 {
        let slice = slice_of(run.at);
        let mut classes = self.classes.lock().unwrap_or_else(|e| e.into_inner());
        let runs = classes.entry(class).or_default();
        runs.total.0 += 1;
        runs.total.1 += u64::from(run.failed);
        match runs.slices.back_mut() {
            Some((last, current)) if *last == slice => current.record(run),
            _ => {
                let mut current = Runs::default();
                current.record(run);
                runs.slices.push_back((slice, current));
                runs.forget_before(slice.saturating_sub(SLICES - 1));
            }
        }
        runs.slices.iter().map(|(_, r)| r.runs).sum()
    }

    /// How many runs of `class` ended in the last minute in this process.
    pub(crate) fn runs_per_minute(&self, class: &str) -> u64 {
        let oldest = slice_of(SystemTime::now()).saturating_sub(SLICES - 1);
        let classes = self.classes.lock().unwrap_or_else(|e| e.into_inner());
        classes.get(class).map_or(0, |runs| {
            runs.slices
                .iter()
                .filter(|(slice, _)| *slice >= oldest)
                .map(|(_, r)| r.runs)
                .sum()
        })
    }

    /// Whether any run was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.classes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Keeps `violation` in `class`'s record (the latest few).
    pub(crate) fn violated(&self, class: &'static str, violation: Violation) {
        let mut classes = self.classes.lock().unwrap_or_else(|e| e.into_inner());
        let kept = &mut classes.entry(class).or_default().violations;
        kept.push_front(violation);
        kept.truncate(VIOLATIONS_KEPT);
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
                        violations: runs.violations.iter().cloned().collect(),
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
    /// The most memory a run held at once in the last minute (when counted).
    pub peak_bytes: Option<u64>,
    /// The most memory a run left allocated in the last minute (when counted).
    pub retained_bytes: Option<u64>,
    /// The latest runs over budget, newest first.
    pub violations: Vec<Violation>,
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
            sum.total.0 = sum.total.0.saturating_add(figures.total.0);
            sum.total.1 = sum.total.1.saturating_add(figures.total.1);
            sum.violations.extend(figures.violations);
        }
    }
    by_class
        .into_iter()
        .map(|(class, mut sum)| {
            sum.violations.sort_by_key(|v| std::cmp::Reverse(v.at_ms));
            sum.violations.truncate(VIOLATIONS_KEPT);
            (class, sum)
        })
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
            peak_bytes: sum.window.peak_max,
            retained_bytes: sum.window.retained_max,
            violations: sum.violations,
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
        let run = |failed, ran, memory| Run {
            failed,
            ran,
            at,
            memory,
        };
        for ms in 1..=90 {
            a.record(
                "Fast",
                &run(false, Duration::from_millis(ms), Some((ms * 1000, 0))),
            );
        }
        for _ in 0..10 {
            b.record("Fast", &run(true, Duration::from_secs(2), None));
        }
        b.record("Other", &run(false, Duration::from_millis(5), None));
        let violation = |jid: &str, at_ms| Violation {
            jid: jid.into(),
            limit: "time".into(),
            figure: 2_000_000,
            allowed: 1_000_000,
            at_ms,
            tier: "frequent".into(),
        };
        a.violated("Fast", violation("older", 1));
        b.violated("Fast", violation("newer", 2));
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
        assert_eq!(
            (fast.peak_bytes, fast.retained_bytes),
            (Some(90_000), Some(0))
        );
        let jids: Vec<&str> = fast.violations.iter().map(|v| v.jid.as_str()).collect();
        assert_eq!(jids, ["newer", "older"]);
        assert_eq!(stats[1].peak_bytes, None);
    }

    #[test]
    fn the_window_forgets_runs_older_than_a_minute() {
        let recorder = Recorder::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let run = |at| Run {
            failed: false,
            ran: Duration::from_millis(1),
            at,
            memory: None,
        };
        assert_eq!(recorder.record("Job", &run(start)), 1);
        let later = start + WINDOW + Duration::from_secs(SLICE_SECS);
        assert_eq!(
            recorder.record("Job", &run(later)),
            1,
            "the first run has left the window"
        );
        let stats = merge([recorder.snapshot(later).as_str()]);
        assert_eq!(stats[0].runs_per_minute, 1);
        assert_eq!(stats[0].total_runs, 2);
    }
}
