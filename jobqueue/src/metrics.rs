//! The library's metrics, through the [`metrics`](https://docs.rs/metrics) facade: install
//! any recorder (Prometheus, StatsD, ...) and they appear. Names and units follow Prometheus
//! conventions; labels are bounded to `queue`, `class` (registered class names, or
//! `unknown`), `outcome`, `set` and `operation`, never a job id or arguments.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `jobqueue_jobs_enqueued_total` | counter | queue, class | jobs pushed by a client, a periodic tick or a job |
//! | `jobqueue_jobs_finished_total` | counter | queue, class, outcome | jobs taken and ended: `succeeded`, `skipped`, `retried`, `dead`, `discarded`, `rescheduled`, `paused`, `cancelled` (failures are `retried` + `dead` + `discarded`) |
//! | `jobqueue_job_duration_seconds` | histogram | queue, class | time from a job's start to its end, for jobs that ran |
//! | `jobqueue_busy_slots` | gauge | | jobs running in this process |
//! | `jobqueue_concurrency` | gauge | | this process's concurrency |
//! | `jobqueue_queue_size` | gauge | queue | jobs waiting; sampled by one process at a time |
//! | `jobqueue_queue_latency_seconds` | gauge | queue | age of a queue's oldest job; sampled by one process at a time |
//! | `jobqueue_set_size` | gauge | set | jobs in the `schedule`, `retry` and `dead` sets; sampled by one process at a time |
//! | `jobqueue_scheduled_lateness_seconds` | histogram | set | how long after its due time a scheduled (`schedule`) or retried (`retry`) job reached its queue |
//! | `jobqueue_broker_errors_total` | counter | operation | failed broker calls of the worker's loops, each retried |
//! | `jobqueue_broker_reconnects_total` | counter | connection | reconnections of the Redis wake-up (`wake`) and key-tracking (`tracking`) connections after they dropped |
//! | `jobqueue_budget_violations_total` | counter | class, limit | runs over their budget: `alloc`, `retained`, `time`, `misclassified` |
//! | `jobqueue_outbox_relayed_total` | counter | | jobs this process's relay moved from a PostgreSQL outbox into its broker |
//! | `jobqueue_outbox_lag_seconds` | gauge | | age of the oldest job waiting in the outbox, at the relay's last look |

use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldhash::HashMap;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram, Unit,
};

/// The `class` label of a job whose class this process does not run.
pub(crate) const UNKNOWN_CLASS: &str = "unknown";

/// Registers the descriptions and units of every metric with the installed recorder.
pub(crate) fn describe() {
    describe_counter!(
        "jobqueue_jobs_enqueued_total",
        Unit::Count,
        "Jobs pushed by a client, a periodic tick or a job"
    );
    describe_counter!(
        "jobqueue_jobs_finished_total",
        Unit::Count,
        "Jobs taken and ended, by outcome"
    );
    describe_histogram!(
        "jobqueue_job_duration_seconds",
        Unit::Seconds,
        "Time from a job's start to its end"
    );
    describe_gauge!(
        "jobqueue_busy_slots",
        Unit::Count,
        "Jobs running in this process"
    );
    describe_gauge!(
        "jobqueue_concurrency",
        Unit::Count,
        "This process's concurrency"
    );
    describe_gauge!(
        "jobqueue_queue_size",
        Unit::Count,
        "Jobs waiting in a queue"
    );
    describe_gauge!(
        "jobqueue_queue_latency_seconds",
        Unit::Seconds,
        "Age of a queue's oldest waiting job"
    );
    describe_gauge!(
        "jobqueue_set_size",
        Unit::Count,
        "Jobs in the schedule, retry and dead sets"
    );
    describe_histogram!(
        "jobqueue_scheduled_lateness_seconds",
        Unit::Seconds,
        "How long after its due time a scheduled or retried job reached its queue"
    );
    describe_counter!(
        "jobqueue_broker_reconnects_total",
        Unit::Count,
        "Reconnections of the broker's wake-up and tracking connections"
    );
    describe_counter!(
        "jobqueue_broker_errors_total",
        Unit::Count,
        "Failed broker calls of the worker's loops"
    );
    describe_counter!(
        "jobqueue_budget_violations_total",
        Unit::Count,
        "Runs over their budget, by class and limit"
    );
    describe_counter!(
        "jobqueue_outbox_relayed_total",
        Unit::Count,
        "Jobs relayed from a PostgreSQL outbox into the broker"
    );
    describe_gauge!(
        "jobqueue_outbox_lag_seconds",
        Unit::Seconds,
        "Age of the oldest job waiting in the outbox"
    );
}

pub(crate) fn enqueued(queue: &str, class: &str, count: u64) {
    counter!("jobqueue_jobs_enqueued_total", "queue" => queue.to_owned(), "class" => class.to_owned())
        .increment(count);
}

/// How a taken job ended, as the `outcome` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Succeeded,
    Skipped,
    Retried,
    Dead,
    Discarded,
    Rescheduled,
    Paused,
    Cancelled,
}

impl Ended {
    /// Every outcome, in declaration order (so `ended as usize` indexes it).
    const ALL: [Ended; 8] = [
        Ended::Succeeded,
        Ended::Skipped,
        Ended::Retried,
        Ended::Dead,
        Ended::Discarded,
        Ended::Rescheduled,
        Ended::Paused,
        Ended::Cancelled,
    ];

    fn label(self) -> &'static str {
        match self {
            Ended::Succeeded => "succeeded",
            Ended::Skipped => "skipped",
            Ended::Retried => "retried",
            Ended::Dead => "dead",
            Ended::Discarded => "discarded",
            Ended::Rescheduled => "rescheduled",
            Ended::Paused => "paused",
            Ended::Cancelled => "cancelled",
        }
    }
}

/// The handles of one queue and class's job metrics, registered once: the hot path then
/// pays no label building or lookup per job.
struct JobHandles {
    finished: [Counter; Ended::ALL.len()],
    duration: Histogram,
}

impl JobHandles {
    fn new(queue: &str, class: &'static str) -> Self {
        Self {
            finished: Ended::ALL.map(|ended| {
                counter!(
                    "jobqueue_jobs_finished_total",
                    "queue" => queue.to_owned(), "class" => class, "outcome" => ended.label()
                )
            }),
            duration: histogram!(
                "jobqueue_job_duration_seconds", "queue" => queue.to_owned(), "class" => class
            ),
        }
    }
}

/// The job metric handles of one worker, by queue and class.
#[derive(Default)]
pub(crate) struct JobMetrics {
    handles: Mutex<HashMap<String, HashMap<&'static str, Arc<JobHandles>>>>,
}

impl JobMetrics {
    /// Counts a taken job's end, and how long it ran when it did.
    pub(crate) fn finished(
        &self,
        queue: &str,
        class: &'static str,
        ended: Ended,
        ran: Option<Duration>,
    ) {
        let handles = {
            let mut all = self.handles.lock().unwrap_or_else(|e| e.into_inner());
            let by_class = match all.get_mut(queue) {
                Some(by_class) => by_class,
                None => all.entry(queue.to_owned()).or_default(),
            };
            Arc::clone(
                by_class
                    .entry(class)
                    .or_insert_with(|| Arc::new(JobHandles::new(queue, class))),
            )
        };
        handles.finished[ended as usize].increment(1);
        if let Some(ran) = ran {
            handles.duration.record(ran.as_secs_f64());
        }
    }
}

pub(crate) fn process(busy: usize, concurrency: usize) {
    gauge!("jobqueue_busy_slots").set(busy as f64);
    gauge!("jobqueue_concurrency").set(concurrency as f64);
}

pub(crate) fn queue(queue: &str, size: usize, latency: Duration) {
    gauge!("jobqueue_queue_size", "queue" => queue.to_owned()).set(size as f64);
    gauge!("jobqueue_queue_latency_seconds", "queue" => queue.to_owned())
        .set(latency.as_secs_f64());
}

pub(crate) fn set(set: &'static str, size: usize) {
    gauge!("jobqueue_set_size", "set" => set).set(size as f64);
}

/// How long after its due time a scheduled or retried job was moved to its queue.
pub(crate) fn late(set: &'static str, seconds: f64) {
    histogram!("jobqueue_scheduled_lateness_seconds", "set" => set).record(seconds.max(0.0));
}

/// A connection of the broker's came back after it dropped.
pub(crate) fn reconnected(connection: &'static str) {
    counter!("jobqueue_broker_reconnects_total", "connection" => connection).increment(1);
}

/// A run went over its budget's `limit` (`alloc`, `retained`, `time`, `misclassified`).
pub(crate) fn budget_violation(class: &'static str, limit: &'static str) {
    counter!("jobqueue_budget_violations_total", "class" => class, "limit" => limit).increment(1);
}

/// A relay moved `count` jobs from the outbox; the oldest left waits since `lag`.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn relayed(count: u64, lag: Duration) {
    counter!("jobqueue_outbox_relayed_total").increment(count);
    gauge!("jobqueue_outbox_lag_seconds").set(lag.as_secs_f64());
}

pub(crate) fn broker_error(operation: &'static str) {
    counter!("jobqueue_broker_errors_total", "operation" => operation).increment(1);
}
