//! Where a failed job goes, in one place, as Sidekiq's `job_retry.rb`: the `retry` set
//! after Sidekiq's backoff while it has retries left, then the `dead` set (trimmed to
//! [`DEAD_MAX_JOBS`] and [`DEAD_TIMEOUT`]), or nowhere for `retry: false` and
//! `dead: false`. Failures the library finds itself (bad payloads, unknown classes, panics,
//! timeouts, a process dying under a job again and again) take the same road, under the
//! [`error_class`] names. Whether a job dies decides whether the worker runs the death
//! handlers (lock releases, then each server middleware's `on_death`).

use std::time::{Duration, SystemTime};

use rand::Rng;
use serde_json::Value;

use crate::backend::{is_raw_bytes, Settle};
pub use crate::backend::{DEAD_MAX_JOBS, DEAD_TIMEOUT};
use crate::envelope::{DecodeError, Envelope, Retry};
use crate::perform::JobError;

/// A job interrupted by this many process deaths goes to the dead set (a poison pill).
pub const MAX_INTERRUPTIONS: u32 = 3;

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
    /// Another job with the same unique key was running (`on_conflict = "reject"`).
    pub const UNIQUE_CONFLICT: &str = "jobqueue::UniqueConflict";
    /// The run went over its budget, and the worker is in strict mode.
    pub const BUDGET_EXCEEDED: &str = "jobqueue::BudgetExceeded";
    /// The payload's `limits` header names counts, periods or keys out of range, or limits
    /// its fetch did not apply: running it would run it unlimited.
    pub const INVALID_LIMITS: &str = "jobqueue::InvalidLimits";
}

/// Sidekiq's delay before retry `count + 1` (count is 0 after the first failure):
/// `count^4 + 15 + rand(10) * (count + 1)` seconds.
pub fn sidekiq_backoff(count: u32) -> Duration {
    let count = u64::from(count);
    let jitter = rand::rng().random_range(0..10u64) * (count + 1);
    Duration::from_secs(count.saturating_pow(4).saturating_add(15 + jitter))
}

/// Whether a job settled this way will not run again, so its death handlers run.
pub(crate) fn dies(to: &Settle) -> bool {
    matches!(to, Settle::Dead { .. } | Settle::Discard)
}

/// Records the failure on the job and picks its next place, as Sidekiq's retrier does.
pub(crate) fn after_failure(envelope: &mut Envelope, error: &JobError) -> Settle {
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
            at: SystemTime::now() + delay,
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

/// Where a job goes when the process holding it died: back to the front of its queue, or,
/// at its [`MAX_INTERRUPTIONS`]th known interruption, to the dead set as a likely poison
/// pill. Only a job the process is known to have `started` counts an interruption; one
/// that may only have waited in its prefetch buffer goes back counted as recovered, so
/// that its next start is recorded (see `worker::recovery`).
pub(crate) fn after_interruption(payload: &str, started: bool) -> Settle {
    let mut envelope = match Envelope::parse(payload) {
        Ok(envelope) => envelope,
        Err(e) => return invalid_payload("", payload, &e),
    };
    if !started {
        envelope.recovered_count = Some(envelope.recovered_count.unwrap_or(0).saturating_add(1));
        return Settle::Queue {
            queue: envelope.queue.clone(),
            payload: envelope.to_json(),
            front: true,
        };
    }
    let count = envelope.interrupted_count.unwrap_or(0).saturating_add(1);
    envelope.interrupted_count = Some(count);
    if count >= MAX_INTERRUPTIONS {
        let error = JobError::new(format!(
            "the process running this job died {count} times while running it; \
             it is kept here as a likely cause (a poison pill)"
        ))
        .with_class(error_class::INTERRUPTED)
        .no_retry();
        return after_failure(&mut envelope, &error);
    }
    Settle::Queue {
        queue: envelope.queue.clone(),
        payload: envelope.to_json(),
        front: true,
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
    let message = if is_raw_bytes(payload) {
        "payload is not UTF-8 text, so it cannot be a JSON job; its bytes are kept as the \
         argument, in hex"
            .to_owned()
    } else {
        error.to_string()
    };
    let error = JobError::new(message)
        .with_class(error_class::INVALID_PAYLOAD)
        .no_retry();
    after_failure(&mut envelope, &error)
}

/// An oversized payload goes to the dead set as a job of its own holding only a preview,
/// so the dead set does not grow by its size.
pub(crate) fn too_large(queue: &str, payload: &str, limit: usize) -> Settle {
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
    after_failure(&mut envelope, &error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_sidekiq() {
        for count in [0u32, 1, 5, 24] {
            let c = u64::from(count);
            let base = c.pow(4) + 15;
            for _ in 0..50 {
                let secs = sidekiq_backoff(count).as_secs();
                assert!(
                    secs >= base && secs <= base + 9 * (c + 1),
                    "{count}: {secs}"
                );
                assert_eq!((secs - base) % (c + 1), 0);
            }
        }
    }

    #[test]
    fn the_third_interruption_is_a_poison_pill() {
        let mut payload = Envelope::new("Job", "default", vec![]).to_json();
        for expected in 1..MAX_INTERRUPTIONS {
            match after_interruption(&payload, true) {
                Settle::Queue {
                    payload: p,
                    front: true,
                    ..
                } => {
                    let envelope = Envelope::parse(&p).unwrap();
                    assert_eq!(envelope.interrupted_count, Some(expected));
                    payload = p;
                }
                other => panic!("interruption {expected} went to {other:?}"),
            }
        }
        match after_interruption(&payload, true) {
            Settle::Dead { payload } => {
                let envelope = Envelope::parse(&payload).unwrap();
                assert_eq!(
                    envelope.error_class.as_deref(),
                    Some(error_class::INTERRUPTED)
                );
            }
            other => panic!("the last interruption went to {other:?}"),
        }
    }

    #[test]
    fn a_job_not_known_to_have_started_is_never_counted() {
        let mut payload = Envelope::new("Job", "default", vec![]).to_json();
        for recovered in 1..=10 {
            match after_interruption(&payload, false) {
                Settle::Queue {
                    payload: p,
                    front: true,
                    ..
                } => {
                    let envelope = Envelope::parse(&p).unwrap();
                    assert_eq!(envelope.recovered_count, Some(recovered));
                    assert_eq!(envelope.interrupted_count, None);
                    payload = p;
                }
                other => panic!("recovery {recovered} went to {other:?}"),
            }
        }
    }
}
