//! What a job is: the [`Job`] description (written by `#[derive(Job)]`), the [`Perform`]
//! body (written by you), its options and the retry policy derived from them.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::Client;

/// A job type: its class name on the wire and its options.
///
/// Implemented by `#[derive(Job)]`; see the crate documentation for the attribute.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The class name written in the payload. Ruby Sidekiq looks a job up by this name,
    /// so a queue shared with Ruby uses the Ruby class name here.
    const NAME: &'static str;
    /// The queue, retry policy and mechanisms chosen by the `#[job(...)]` attribute.
    const OPTIONS: JobOptions;
}

/// The work a job does.
///
/// ```
/// use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Job)]
/// #[job(queue = "emails", idempotent)]
/// struct SendWelcome { user_id: u64 }
///
/// #[async_trait]
/// impl Perform for SendWelcome {
///     async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
///         println!("welcome {} (job {})", self.user_id, ctx.jid);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Perform: Job {
    /// Runs the job. An error fails it; the retry policy decides what happens next.
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError>;

    /// Overrides the delay before retry number `retry_count + 1` (0 after the first failure).
    /// `None` keeps Sidekiq's backoff: `count^4 + 15 + rand(10) * (count + 1)` seconds.
    fn retry_in(&self, retry_count: u32, error: &JobError) -> Option<Duration> {
        let _ = (retry_count, error);
        None
    }
}

/// What a running job knows about itself.
#[derive(Clone)]
pub struct JobContext {
    /// The job id (24 lowercase hex characters).
    pub jid: String,
    /// The queue the job was taken from.
    pub queue: String,
    /// The class name on the wire.
    pub class: String,
    /// How many times the job has been retried before this run (0 on the first run).
    pub retries: u32,
    /// A client on the same broker, so a job can enqueue further jobs.
    pub client: Client,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("jid", &self.jid)
            .field("queue", &self.queue)
            .field("class", &self.class)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// Why a job failed: written to the payload as `error_class` and `error_message`.
///
/// Any `std::error::Error` converts into it, so `?` works inside `perform`.
pub struct JobError {
    class: Cow<'static, str>,
    message: String,
    pub(crate) no_retry: bool,
    pub(crate) retry_in: Option<Duration>,
    pub(crate) pause_queue: Option<Duration>,
}

impl JobError {
    /// A failure with a message and the class `JobError`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            class: Cow::Borrowed("JobError"),
            message: message.into(),
            no_retry: false,
            retry_in: None,
            pause_queue: None,
        }
    }

    /// Says that a service the job's queue depends on is down: the queue is paused for
    /// `cooldown` and the job goes back to the front of it, not counted as a failure. Every
    /// worker stops taking from the queue instead of failing job after job.
    pub fn pause_queue(mut self, cooldown: Duration) -> Self {
        self.pause_queue = Some(cooldown);
        self
    }

    /// Sends the job to the dead set now, whatever retries it has left (Sidekiq's `:kill`):
    /// for failures that a retry cannot mend.
    pub fn no_retry(mut self) -> Self {
        self.no_retry = true;
        self
    }

    /// Sets the `error_class` reported for this failure.
    pub fn with_class(mut self, class: impl Into<Cow<'static, str>>) -> Self {
        self.class = class.into();
        self
    }

    /// The `error_class` written to the payload.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The `error_message` written to the payload.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        let full = std::any::type_name::<E>();
        let class = full.rsplit("::").next().unwrap_or(full);
        Self {
            class: Cow::Borrowed(class),
            message,
            no_retry: false,
            retry_in: None,
            pause_queue: None,
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How many times a failed job, and a failed third-party call inside it, is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Job-level retries through the `retry` set.
    pub job_retries: u32,
    /// Retries of each third-party call made by the job (only for `external` jobs).
    pub call_retries: u32,
}

impl RetryPolicy {
    /// The policy table: a job that is not idempotent is never re-run; an idempotent job is
    /// re-run once; a job that calls third-party services retries the call, not the job.
    /// `retries` (only allowed on idempotent jobs) replaces the job-level count.
    pub const fn derive(idempotent: bool, external: bool, retries: Option<u32>) -> Self {
        let default_job_retries = if idempotent && !external { 1 } else { 0 };
        let job_retries = match retries {
            Some(n) if idempotent => n,
            _ => default_job_retries,
        };
        let call_retries = if external { 2 } else { 0 };
        Self {
            job_retries,
            call_retries,
        }
    }
}

/// When a uniqueness lock is taken and released (the sidekiq-unique-jobs lock types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UniqueLock {
    /// Locked at enqueue, released when the job starts.
    UntilExecuting,
    /// Locked at enqueue, released when the job has finished.
    UntilExecuted,
    /// Locked at enqueue, released only when the TTL runs out.
    UntilExpired,
    /// Locked while the job runs: no two run at once.
    WhileExecuting,
    /// Locked at enqueue until the job starts, then while it runs.
    UntilAndWhileExecuting,
}

/// What to do with a job whose uniqueness lock is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    /// Refuse the new job and tell the caller.
    Reject,
    /// Remove the job holding the lock and take its place.
    Replace,
    /// Try the new job again a little later.
    Reschedule,
    /// Drop the new job and log it.
    Log,
}

/// A uniqueness lock, as asked for by `#[job(unique(...))]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniqueSpec {
    /// When the lock is held.
    pub lock: UniqueLock,
    /// The lock's lifetime, always finite so a crash never leaves a lock behind for good.
    pub ttl: Duration,
    /// What a conflicting job does.
    pub on_conflict: OnConflict,
    /// The fields that make up the lock key; empty means all arguments.
    pub key: &'static [&'static str],
}

/// A collapsible job, as asked for by `#[job(collapsible)]`: only the newest job per key runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollapseSpec {
    /// The fields that make up the collapse key; empty means all arguments.
    pub key: &'static [&'static str],
}

/// Everything the `#[job(...)]` attribute says about a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobOptions {
    /// The queue the job is pushed to.
    pub queue: &'static str,
    /// Running the job twice is safe.
    pub idempotent: bool,
    /// The job calls third-party services.
    pub external: bool,
    /// The job is bulk work: it never runs inside a worker's quiet windows.
    pub bulk: bool,
    /// How long `perform` may run; past it the job is failed and retried per its policy.
    pub timeout: Option<Duration>,
    /// Fields whose values never appear in logs or error messages.
    pub sensitive: &'static [&'static str],
    /// Retries, derived from the above.
    pub retry: RetryPolicy,
    /// Only the newest job per key runs.
    pub collapse: Option<CollapseSpec>,
    /// A uniqueness lock.
    pub unique: Option<UniqueSpec>,
}

impl JobOptions {
    /// The options of a job with no attribute: queue `default`, not idempotent, no retries.
    pub const DEFAULT: JobOptions = JobOptions {
        queue: "default",
        idempotent: false,
        external: false,
        bulk: false,
        timeout: None,
        sensitive: &[],
        retry: RetryPolicy::derive(false, false, None),
        collapse: None,
        unique: None,
    };

    /// The mechanisms a worker must have installed before it may run this job.
    pub fn required_mechanisms(&self) -> impl Iterator<Item = Mechanism> {
        let collapse = self.collapse.map(|_| Mechanism::Collapse);
        let unique = self.unique.map(|_| Mechanism::UniqueLock);
        collapse.into_iter().chain(unique)
    }
}

/// A mechanism provided by middleware, required by some job options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// The stale-job client and stopper for collapsible jobs.
    Collapse,
    /// Uniqueness locks.
    UniqueLock,
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mechanism::Collapse => "the collapse (stale-job) middleware",
            Mechanism::UniqueLock => "the unique-lock middleware",
        })
    }
}
