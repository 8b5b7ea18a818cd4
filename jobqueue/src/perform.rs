//! What running job code sees: the [`Perform`] trait you implement, the [`JobContext`]
//! it is given, and the [`JobError`] it returns. No raw broker: a job enqueues follow-ups
//! through its context, so the mechanisms its attribute demands always apply.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::client::envelope_for;
use crate::client::Client;
use crate::envelope::{derived_jid, Envelope};
use crate::error::Error;
use crate::job::{Job, JobOptions};

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

/// What a running job knows about itself, and what it may do besides its own work:
/// enqueue follow-up jobs (through the worker's client, so every mechanism applies).
///
/// In a unit test, make one with [`JobContext::for_job`] and call `perform` directly.
#[derive(Clone)]
#[non_exhaustive]
pub struct JobContext {
    /// The job id (24 lowercase hex characters).
    pub jid: String,
    /// The queue the job was taken from.
    pub queue: String,
    /// The class name on the wire.
    pub class: String,
    /// How many times the job has been retried before this run (0 on the first run).
    pub retries: u32,
    options: &'static JobOptions,
    client: Client,
    /// What the run asks of the worker once it returns: follow-ups, or to resume later.
    requests: Arc<Mutex<Requests>>,
    /// Cancelled when an operator cancels the job; none outside a worker, where nothing
    /// can cancel it.
    cancel: Option<CancellationToken>,
    /// The batch the job belongs to.
    batch: Option<String>,
    /// Whether the worker running the job is shutting down or quiet; none outside a worker.
    stopping: Option<Stopping>,
}

/// Whether a worker is shutting down or quiet: one per worker, shared by its jobs.
pub(crate) type Stopping = Arc<dyn Fn() -> bool + Send + Sync>;

/// What a run asks of the worker once it returns.
#[derive(Default)]
struct Requests {
    /// Jobs to push once this run succeeds.
    then: Vec<FollowUp>,
    /// Run again, as the same job, from where it stopped.
    resume: bool,
}

/// A job declared with [`JobContext::then`], pushed when the running job succeeds.
#[derive(Clone, Debug)]
pub(crate) struct FollowUp {
    pub(crate) envelope: Envelope,
    pub(crate) at: Option<SystemTime>,
    pub(crate) options: &'static JobOptions,
}

impl JobContext {
    pub(crate) fn new(
        envelope: &Envelope,
        queue: &str,
        options: &'static JobOptions,
        client: Client,
    ) -> Self {
        Self {
            jid: envelope.jid.clone(),
            queue: queue.to_owned(),
            class: envelope.class.clone(),
            retries: envelope.retry_count.map_or(0, |n| {
                u32::try_from(n.saturating_add(1).max(0)).unwrap_or(u32::MAX)
            }),
            options,
            client,
            requests: Arc::default(),
            // Never cancelled, and never stopping, unless a worker says so: set by the
            // worker alone, so a context costs no channel or closure it replaces at once.
            cancel: None,
            batch: envelope
                .extra
                .get(crate::client::BATCH_KEY)
                .and_then(|bid| bid.as_str())
                .map(str::to_owned),
            stopping: None,
        }
    }

    /// This context, telling the job when its worker stops taking work.
    pub(crate) fn with_stopping(mut self, stopping: Stopping) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// Whether the worker running this job is shutting down or has gone quiet: a long job
    /// should stop at its next step and resume later ([`crate::iterate`] does).
    pub fn is_stopping(&self) -> bool {
        self.stopping.as_ref().is_some_and(|stopping| stopping())
    }

    /// Asks for this job to run again, as the same job, once this run returns `Ok`: it goes
    /// to the schedule set, due at once, instead of being acknowledged.
    pub(crate) fn resume_later(&self) {
        self.requests().resume = true;
    }

    pub(crate) fn resumes(&self) -> bool {
        self.requests().resume
    }

    fn requests(&self) -> std::sync::MutexGuard<'_, Requests> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The broker, for the crate's own helpers that keep state there.
    pub(crate) fn broker(&self) -> &Arc<dyn crate::backend::Broker> {
        self.client.broker()
    }

    /// This context, cancelled with `cancel`.
    pub(crate) fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Whether an operator cancelled this job (`Admin::cancel`): a job that checks it
    /// between steps can stop cleanly; one that does not is dropped at its next await
    /// after the worker's `cancel_grace`. A run cancelled while it ran ends as cancelled
    /// whatever it returns: neither failed nor retried, and its follow-ups not pushed.
    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// Completes when an operator cancels this job; for `tokio::select!` against work.
    pub async fn cancelled(&self) {
        match &self.cancel {
            Some(cancel) => cancel.cancelled().await,
            // No switch: the job cannot be cancelled.
            None => std::future::pending::<()>().await,
        }
    }

    /// A context for a first run of a `J` with a new job id, whose follow-up jobs go
    /// through `client`: for calling `perform` directly in tests.
    ///
    /// ```
    /// # use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
    /// # #[derive(serde::Serialize, serde::Deserialize, Job)]
    /// # struct Ping;
    /// # #[async_trait]
    /// # impl Perform for Ping {
    /// #     async fn perform(&self, _: &JobContext) -> Result<(), JobError> { Ok(()) }
    /// # }
    /// use jobqueue::{Client, MemoryBroker};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let ctx = JobContext::for_job::<Ping>(Client::new(MemoryBroker::new()));
    /// Ping.perform(&ctx).await.unwrap();
    /// # });
    /// ```
    pub fn for_job<J: Job>(client: Client) -> Self {
        let envelope = Envelope::new(J::NAME, J::OPTIONS.queue, Vec::new());
        Self::new(&envelope, J::OPTIONS.queue, &J::OPTIONS, client)
    }

    /// The options the job's `#[job(...)]` attribute chose.
    pub fn options(&self) -> &'static JobOptions {
        self.options
    }

    /// Declares `job` as this job's next step: it is pushed only if this run succeeds, in
    /// the same broker call that acknowledges this job, so a crash before that pushes
    /// nothing (this job runs again and declares it again) and a crash after has pushed it
    /// once. A run that fails pushes none of its follow-ups. Returns the follow-up's job id,
    /// the same on every run of this job.
    ///
    /// This is how work is split into budget-sized steps: a job does one step and declares
    /// the job for the rest.
    pub fn then<J: Job>(&self, job: &J) -> Result<String, Error> {
        self.then_at(None, job)
    }

    /// As [`JobContext::then`], the follow-up due after `delay`.
    pub fn then_in<J: Job>(&self, delay: Duration, job: &J) -> Result<String, Error> {
        self.then_at(Some(SystemTime::now() + delay), job)
    }

    fn then_at<J: Job>(&self, at: Option<SystemTime>, job: &J) -> Result<String, Error> {
        let mut envelope = envelope_for(job, crate::time::now())?;
        let mut requests = self.requests();
        let then = &mut requests.then;
        envelope.jid = derived_jid(&self.jid, then.len());
        let jid = envelope.jid.clone();
        then.push(FollowUp {
            envelope,
            at,
            options: &J::OPTIONS,
        });
        Ok(jid)
    }

    /// The follow-ups declared so far, taken out.
    pub(crate) fn take_follow_ups(&self) -> Vec<FollowUp> {
        std::mem::take(&mut self.requests().then)
    }

    /// The id of the batch this job belongs to, if any.
    pub fn batch_id(&self) -> Option<&str> {
        self.batch.as_deref()
    }

    /// Adds `job` to this job's batch and pushes it: the batch finishes only once it has
    /// finished too. Refused (as [`Error::Skipped`]) when this job is not in a batch.
    pub async fn enqueue_in_batch<J: Job>(&self, job: &J) -> Result<String, Error> {
        let Some(bid) = &self.batch else {
            return Err(Error::Skipped {
                class: J::NAME.to_owned(),
                reason: format!("job {} is not in a batch to add it to", self.jid),
            });
        };
        self.client.enqueue_in_batch(bid, job).await
    }

    /// Enqueues a follow-up job; see [`Client::enqueue`].
    pub async fn enqueue<J: Job>(&self, job: &J) -> Result<String, Error> {
        self.client.enqueue(job).await
    }

    /// Enqueues a follow-up job to `queue`; see [`Client::enqueue_to`].
    pub async fn enqueue_to<J: Job>(&self, queue: &str, job: &J) -> Result<String, Error> {
        self.client.enqueue_to(queue, job).await
    }

    /// Enqueues a follow-up job that runs after `delay`; see [`Client::enqueue_in`].
    pub async fn enqueue_in<J: Job>(&self, delay: Duration, job: &J) -> Result<String, Error> {
        self.client.enqueue_in(delay, job).await
    }

    /// Enqueues a follow-up job that runs at `at`; see [`Client::enqueue_at`].
    pub async fn enqueue_at<J: Job>(&self, at: SystemTime, job: &J) -> Result<String, Error> {
        self.client.enqueue_at(at, job).await
    }
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

    /// This error with each of `secrets` replaced in its message by
    /// [`REDACTED`](crate::envelope::REDACTED): a job's error may quote its sensitive
    /// arguments, and its message is stored and shown.
    pub(crate) fn redact(mut self, secrets: &[String]) -> Self {
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            if self.message.contains(secret.as_str()) {
                self.message = self
                    .message
                    .replace(secret.as_str(), crate::envelope::REDACTED);
            }
        }
        self
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
