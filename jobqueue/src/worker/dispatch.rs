//! Running one fetched job and deciding where it goes next: acknowledged, the `retry` set,
//! the `dead` set, or discarded. Bad input of any kind ends here as a recorded failure.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};
use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::registry::Handler;
use super::Shared;
use crate::broker::{Fetched, Settle, RAW_MARKER};
use crate::envelope::{epoch_seconds, now, DecodeError, Envelope, Retry};
use crate::job::{JobContext, JobError, JobOptions};
use crate::middleware::{Endpoint, Outcome, ServerJob};
use crate::schedule::sidekiq_backoff;
use crate::schedule::window::quiet_until;

/// The longest wait between two tries of a broker call that failed.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Error classes written to payloads for failures found by the library itself.
pub mod error_class {
    /// The payload is not a JSON job.
    pub const INVALID_PAYLOAD: &str = "jobqueue::InvalidPayload";
    /// No job type with the payload's class is registered with the worker.
    pub const UNKNOWN_CLASS: &str = "jobqueue::UnknownClass";
    /// The arguments do not deserialize into the job type.
    pub const INVALID_ARGUMENTS: &str = "jobqueue::InvalidArguments";
    /// `perform` panicked.
    pub const PANIC: &str = "jobqueue::Panic";
    /// The process running the job died, again and again.
    pub const INTERRUPTED: &str = "jobqueue::Interrupted";
    /// The payload is larger than the worker accepts.
    pub const PAYLOAD_TOO_LARGE: &str = "jobqueue::PayloadTooLarge";
    /// `perform` ran past the job's timeout.
    pub const TIMEOUT: &str = "jobqueue::Timeout";
}

/// Delays between tries of a failing broker call: 100 ms doubling to 5 s, with jitter.
pub(crate) fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs one job and settles it. Holds `permit` (a concurrency slot) until the job is done.
pub(crate) async fn run(
    shared: Arc<Shared>,
    job: Fetched,
    acks: mpsc::UnboundedSender<super::AckMessage>,
    permit: OwnedSemaphorePermit,
) {
    shared.busy.fetch_add(1, Ordering::Relaxed);
    let turn = execute(&shared, &job).await;
    shared.busy.fetch_sub(1, Ordering::Relaxed);
    shared.processed.fetch_add(1, Ordering::Relaxed);
    match turn {
        Turn::Done | Turn::Skipped => {
            if matches!(turn, Turn::Skipped) {
                shared.skipped.fetch_add(1, Ordering::Relaxed);
            }
            // The acker is gone only once shutdown has handed every job back.
            let _ = acks.send(super::AckMessage::Done(job.payload));
        }
        Turn::Later(to) => persist(&shared, &job.payload, to).await,
        Turn::PauseQueue(cooldown) => {
            let until = now() + cooldown.as_secs_f64();
            if let Err(e) = shared.broker.pause(&job.queue, Some(until)).await {
                tracing::warn!("pausing queue {} failed: {e}", job.queue);
            }
            let back = Settle::Queue {
                queue: job.queue.clone(),
                payload: job.payload.clone(),
                front: true,
            };
            persist(&shared, &job.payload, back).await;
        }
        Turn::Failed { to, died } => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            let dies = matches!(to, Settle::Dead { .. } | Settle::Discard);
            persist(&shared, &job.payload, to).await;
            if let (true, Some(died)) = (dies, died) {
                let (envelope, options) = *died;
                shared
                    .server_chain
                    .on_death(&envelope, options, &shared.client)
                    .await;
            }
        }
    }
    drop(permit);
}

/// How a job's turn ended.
enum Turn {
    Done,
    Skipped,
    /// Rescheduled by middleware: not a failure.
    Later(Settle),
    /// Its service is down: pause the queue this long and put the job back.
    PauseQueue(Duration),
    /// Failed; with the job and its options when middleware ran for it.
    Failed {
        to: Settle,
        died: Option<Box<(Envelope, &'static JobOptions)>>,
    },
}

/// Performs the job at the end of the server chain.
struct Perform<'a>(&'a dyn Handler);

#[async_trait]
impl Endpoint for Perform<'_> {
    async fn perform(&self, job: &ServerJob<'_>) -> Result<(), JobError> {
        let run = self.0.call(&job.envelope.args, job.ctx);
        let Some(limit) = job.options.timeout else {
            return run.await;
        };
        // Dropping the future stops the job at its next await: it cannot outlive its slot.
        tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
            Err(
                JobError::new(format!("perform did not finish within {limit:?}"))
                    .with_class(error_class::TIMEOUT),
            )
        })
    }
}

async fn execute(shared: &Shared, job: &Fetched) -> Turn {
    let limit = shared.config.max_payload_bytes;
    if job.payload.len() > limit {
        tracing::error!(queue = %job.queue, "dead: a {} byte payload, over the limit of {limit}", job.payload.len());
        let to = too_large(&job.queue, &job.payload, limit);
        return Turn::Failed { to, died: None };
    }
    let mut envelope = match Envelope::parse(&job.payload) {
        Ok(envelope) => envelope,
        Err(e) => {
            tracing::error!(queue = %job.queue, "dead: {e}");
            let to = invalid_payload(&job.queue, &job.payload, &e);
            return Turn::Failed { to, died: None };
        }
    };
    let Some(handler) = shared.registry.get(&envelope.class) else {
        let error = JobError::new(format!(
            "no job class `{}` is registered with this worker (it runs: {}); register it, or \
             stop this worker from taking queue `{}`",
            envelope.class,
            shared.registry.class_names().join(", "),
            job.queue,
        ))
        .with_class(error_class::UNKNOWN_CLASS);
        let to = failure(&mut envelope, &error);
        return Turn::Failed { to, died: None };
    };
    let options = handler.options();
    if options.bulk {
        if let Some(end) = quiet_until(&shared.config.quiet_windows, chrono::Utc::now()) {
            tracing::info!(jid = %envelope.jid, class = %envelope.class, "bulk job waits for the quiet window's end at {end}");
            return Turn::Later(Settle::Schedule {
                payload: envelope.to_json(),
                at: epoch_seconds(end.into()),
            });
        }
    }
    let ctx = JobContext {
        jid: envelope.jid.clone(),
        queue: job.queue.clone(),
        class: envelope.class.clone(),
        retries: envelope.retry_count.map_or(0, |n| n.saturating_add(1)),
        client: shared.client.clone(),
    };
    let server_job = ServerJob {
        envelope: &envelope,
        options,
        ctx: &ctx,
    };
    let endpoint = Perform(handler.as_ref());
    let run = AssertUnwindSafe(shared.server_chain.run(&server_job, &endpoint)).catch_unwind();
    let error = match run.await {
        Ok(Ok(Outcome::Done)) => return Turn::Done,
        Ok(Ok(Outcome::Skipped { reason })) => {
            tracing::info!(jid = %envelope.jid, class = %envelope.class, "skipped: {reason}");
            return Turn::Skipped;
        }
        Ok(Ok(Outcome::Reschedule { after, reason })) => {
            tracing::info!(jid = %envelope.jid, class = %envelope.class, "rescheduled in {after:?}: {reason}");
            return Turn::Later(Settle::Schedule {
                payload: envelope.to_json(),
                at: now() + after.as_secs_f64(),
            });
        }
        Ok(Ok(Outcome::PauseQueue { cooldown, reason })) => {
            tracing::warn!(queue = %job.queue, "pausing the queue for {cooldown:?}: {reason}");
            return Turn::PauseQueue(cooldown);
        }
        Ok(Err(error)) => match error.pause_queue {
            Some(cooldown) => {
                tracing::warn!(queue = %job.queue, "pausing the queue for {cooldown:?}: {error}");
                return Turn::PauseQueue(cooldown);
            }
            None => error,
        },
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-string payload".to_owned());
            JobError::new(format!("perform panicked: {message}")).with_class(error_class::PANIC)
        }
    };
    let to = failure(&mut envelope, &error);
    Turn::Failed {
        to,
        died: Some(Box::new((envelope, options))),
    }
}

/// Records the failure on the job and picks its next place, as Sidekiq's retrier does.
pub(crate) fn failure(envelope: &mut Envelope, error: &JobError) -> Settle {
    let count = envelope.record_failure(error.class(), error.message());
    tracing::warn!(
        jid = %envelope.jid, class = %envelope.class, retry_count = count,
        "job failed: {error}"
    );
    if envelope.retry == Retry::Disabled {
        return Settle::Discard;
    }
    if !error.no_retry && count < envelope.retry.max_retries() {
        let delay = error.retry_in.unwrap_or_else(|| sidekiq_backoff(count));
        return Settle::Retry {
            at: now() + delay.as_secs_f64(),
            payload: envelope.to_json(),
        };
    }
    if envelope.extra.get("dead") == Some(&Value::Bool(false)) {
        return Settle::Discard;
    }
    Settle::Dead {
        payload: envelope.to_json(),
    }
}

/// Runs the death hooks for a job that went to the dead set outside a run (a poison pill).
pub(crate) async fn after_death(shared: &Shared, payload: &str) {
    let Ok(envelope) = Envelope::parse(payload) else {
        return;
    };
    if let Some(handler) = shared.registry.get(&envelope.class) {
        let options = handler.options();
        shared
            .server_chain
            .on_death(&envelope, options, &shared.client)
            .await;
    }
}

/// A payload that is not a job goes to the dead set wrapped in a job of its own, so that
/// Sidekiq's tools can show it, with the original text as its only argument.
pub(crate) fn invalid_payload(queue: &str, payload: &str, error: &DecodeError) -> Settle {
    let mut envelope = Envelope::new(
        error_class::INVALID_PAYLOAD,
        queue,
        vec![Value::String(payload.to_owned())],
    );
    let message = match payload.strip_prefix(RAW_MARKER) {
        Some(_) => "payload is not UTF-8 text, so it cannot be a JSON job; its bytes are kept \
                    as the argument, in hex"
            .to_owned(),
        None => error.to_string(),
    };
    let error = JobError::new(message)
        .with_class(error_class::INVALID_PAYLOAD)
        .no_retry();
    failure(&mut envelope, &error)
}

/// An oversized payload goes to the dead set as a job of its own holding only a preview,
/// so the dead set does not grow by its size.
fn too_large(queue: &str, payload: &str, limit: usize) -> Settle {
    const PREVIEW: usize = 1024;
    let end = (0..=PREVIEW.min(payload.len()))
        .rev()
        .find(|i| payload.is_char_boundary(*i))
        .unwrap_or(0);
    let mut envelope = Envelope::new(
        error_class::PAYLOAD_TOO_LARGE,
        queue,
        vec![Value::String(payload[..end].to_owned())],
    );
    let error = JobError::new(format!(
        "the payload is {} bytes, over the worker's limit of {limit}; its first {end} bytes are kept as the argument",
        payload.len()
    ))
    .with_class(error_class::PAYLOAD_TOO_LARGE)
    .no_retry();
    failure(&mut envelope, &error)
}

/// Settles a job, trying again until the broker answers: a job must not stay in the
/// in-flight list of a live process. A job already recovered by another process is left
/// where that process put it.
pub(crate) async fn persist(shared: &Shared, payload: &str, to: Settle) {
    persist_many(shared, vec![(payload.to_owned(), to)]).await;
}

/// Settles jobs in one round trip, trying again until the broker answers.
pub(crate) async fn persist_many(shared: &Shared, moves: Vec<(String, Settle)>) {
    if moves.is_empty() {
        return;
    }
    let settle = || shared.broker.settle_many(&shared.identity, &moves);
    let moved = settle
        .retry(
            ExponentialBuilder::new()
                .with_max_delay(MAX_BACKOFF)
                .with_jitter()
                .without_max_times(),
        )
        .notify(|e, wait| tracing::warn!("settling jobs failed, trying again in {wait:?}: {e}"))
        .await;
    if let Ok(moved) = moved {
        let gone = moved.iter().filter(|m| !**m).count();
        if gone > 0 {
            tracing::info!(
                "{gone} job(s) finished here had already been recovered by another process"
            );
        }
    }
}
