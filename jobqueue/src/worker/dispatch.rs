//! Running one fetched job and deciding where it goes next: acknowledged, the `retry` set,
//! the `dead` set, or discarded. Bad input of any kind ends here as a recorded failure.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};
use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::registry::Failure;
use super::Shared;
use crate::broker::{Fetched, Settle};
use crate::envelope::{now, DecodeError, Envelope, Retry};
use crate::job::{JobContext, JobError};
use crate::schedule::sidekiq_backoff;

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
    let outcome = execute(&shared, &job).await;
    shared.busy.fetch_sub(1, Ordering::Relaxed);
    shared.processed.fetch_add(1, Ordering::Relaxed);
    match outcome {
        None => {
            // The acker is gone only once shutdown has handed every job back.
            let _ = acks.send(super::AckMessage::Done(job.payload));
        }
        Some(to) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            persist(&shared, &job.payload, to).await;
        }
    }
    drop(permit);
}

/// Runs the job; `None` means it succeeded, otherwise where the failed job goes.
async fn execute(shared: &Shared, job: &Fetched) -> Option<Settle> {
    let mut envelope = match Envelope::parse(&job.payload) {
        Ok(envelope) => envelope,
        Err(e) => {
            tracing::error!(queue = %job.queue, "dead: {e}");
            return Some(invalid_payload(&job.queue, &job.payload, &e));
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
        return Some(failure(&mut envelope, &error, None));
    };
    let ctx = JobContext {
        jid: envelope.jid.clone(),
        queue: job.queue.clone(),
        class: envelope.class.clone(),
        retries: envelope.retry_count.map_or(0, |n| n.saturating_add(1)),
        client: shared.client.clone(),
    };
    let run = AssertUnwindSafe(handler.call(&envelope.args, &ctx)).catch_unwind();
    match run.await {
        Ok(Ok(())) => None,
        Ok(Err(Failure::Decode(e))) => {
            let error = JobError::new(e.to_string()).with_class(error_class::INVALID_ARGUMENTS);
            // Deserializing the same arguments again fails the same way: no retry.
            envelope.retry = Retry::Count(0);
            Some(failure(&mut envelope, &error, None))
        }
        Ok(Err(Failure::Failed { error, retry_in })) => {
            Some(failure(&mut envelope, &error, retry_in))
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-string payload".to_owned());
            let error = JobError::new(format!("perform panicked: {message}"))
                .with_class(error_class::PANIC);
            Some(failure(&mut envelope, &error, None))
        }
    }
}

/// Records the failure on the job and picks its next place, as Sidekiq's retrier does.
pub(crate) fn failure(
    envelope: &mut Envelope,
    error: &JobError,
    retry_in: Option<Duration>,
) -> Settle {
    let count = envelope.record_failure(error.class(), error.message());
    tracing::warn!(
        jid = %envelope.jid, class = %envelope.class, retry_count = count,
        "job failed: {error}"
    );
    if envelope.retry == Retry::Disabled {
        return Settle::Discard;
    }
    if count < envelope.retry.max_retries() {
        let delay = retry_in.unwrap_or_else(|| sidekiq_backoff(count));
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

/// A payload that is not a job goes to the dead set wrapped in a job of its own, so that
/// Sidekiq's tools can show it, with the original text as its only argument.
pub(crate) fn invalid_payload(queue: &str, payload: &str, error: &DecodeError) -> Settle {
    let mut envelope = Envelope::new(
        error_class::INVALID_PAYLOAD,
        queue,
        vec![Value::String(payload.to_owned())],
    );
    envelope.retry = Retry::Count(0);
    let error = JobError::new(error.to_string()).with_class(error_class::INVALID_PAYLOAD);
    failure(&mut envelope, &error, None)
}

/// Settles a job, trying again until the broker answers: a job must not stay in the
/// in-flight list of a live process. A job already recovered by another process is left
/// where that process put it.
pub(crate) async fn persist(shared: &Shared, payload: &str, to: Settle) {
    let settle = || shared.broker.settle(&shared.identity, payload, to.clone());
    let moved = settle
        .retry(
            ExponentialBuilder::new()
                .with_max_delay(MAX_BACKOFF)
                .with_jitter()
                .without_max_times(),
        )
        .notify(|e, wait| tracing::warn!("settling a job failed, trying again in {wait:?}: {e}"))
        .await;
    if let Ok(false) = moved {
        tracing::info!("a job finished here was already recovered by another process");
    }
}
