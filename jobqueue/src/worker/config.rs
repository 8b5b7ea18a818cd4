//! Worker settings.

use std::time::Duration;

use super::Queues;
use crate::client::MechanismConfig;
use crate::schedule::QuietWindow;

/// Worker settings; every one has a Sidekiq-like default.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The queues to take jobs from (default: all queues).
    pub queues: Queues,
    /// Jobs run at once (default 10).
    pub concurrency: usize,
    /// How long running jobs may take to finish at shutdown (default 25 s).
    pub shutdown_timeout: Duration,
    /// Time between heartbeats (default 5 s).
    pub heartbeat_interval: Duration,
    /// How long the process counts as alive after its last heartbeat (default 60 s). Jobs
    /// of a process silent for longer are recovered by the others.
    pub heartbeat_ttl: Duration,
    /// How often to look for dead processes' jobs (default 15 s).
    pub recovery_interval: Duration,
    /// The longest the scheduler sleeps before looking at the `schedule` and `retry` sets
    /// again, for jobs scheduled by producers that do not notify (default 5 s).
    pub poll_interval: Duration,
    /// The longest an idle worker waits before looking at its queues again, for jobs
    /// pushed by producers that do not notify, such as Ruby Sidekiq (default 2 s, as
    /// Sidekiq's own fetch timeout). Jobs pushed by this library wake workers at once.
    pub idle_poll: Duration,
    /// A tag shown by Sidekiq's tools (`tag` in the process info).
    pub tag: String,
    /// The largest payload the worker runs (default 1 MiB, as the client's default); a
    /// larger one goes to the dead set with a preview of its start.
    pub max_payload_bytes: usize,
    /// How late a periodic tick may still be enqueued, when no process ran at its time
    /// (default 60 s, as sidekiq-cron); older missed ticks are skipped and logged.
    pub periodic_grace: Duration,
    /// Daily windows in which bulk jobs (`#[job(bulk)]`) do not run: a bulk job fetched
    /// inside one, or ticking inside one, waits for its end.
    pub quiet_windows: Vec<QuietWindow>,
    /// How often the gauges that need broker reads (queue sizes and latency, set sizes) are
    /// sampled, by one process at a time (default 30 s).
    pub metrics_interval: Duration,
    /// Settings of the collapse and uniqueness mechanisms, for the perform side and for
    /// this worker's own enqueues (due jobs, periodic ticks, follow-up jobs).
    pub mechanisms: MechanismConfig,
    /// Strict budgets, for staging: a run over its budget fails with the error class
    /// `jobqueue::BudgetExceeded` (and goes where its retry policy sends failures), instead
    /// of only being reported.
    pub strict_budgets: bool,
    /// How long a cancelled job has to end by itself (it sees `JobContext::is_cancelled`)
    /// before its future is dropped at its next await (default 5 s).
    pub cancel_grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            queues: Queues::all(),
            concurrency: 10,
            shutdown_timeout: Duration::from_secs(25),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_ttl: Duration::from_secs(60),
            recovery_interval: Duration::from_secs(15),
            poll_interval: Duration::from_secs(5),
            idle_poll: Duration::from_secs(2),
            tag: String::new(),
            max_payload_bytes: crate::client::DEFAULT_MAX_PAYLOAD_BYTES,
            metrics_interval: Duration::from_secs(30),
            mechanisms: MechanismConfig::default(),
            periodic_grace: Duration::from_secs(60),
            quiet_windows: Vec::new(),
            strict_budgets: false,
            cancel_grace: Duration::from_secs(5),
        }
    }
}
