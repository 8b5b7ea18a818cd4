//! Calls to third-party services from `#[job(external)]` jobs: the call is retried, not the
//! job. Each call gets an idempotency key derived from the job id and the call's name, the
//! same on every attempt (and on a re-run of the same job after a crash), so the service
//! can recognise a repeat.
//!
//! Independent of any HTTP client: the call is a closure that says whether its failure is
//! worth retrying. [`classify_status`] does that for HTTP status codes, and with the
//! `reqwest` feature [`classify_reqwest`] does it for a reqwest response.
//!
//! ```no_run
//! use jobqueue::{JobContext, JobError, Job};
//! use jobqueue_middleware::{call, CallError, CallPolicy};
//! # #[derive(serde::Serialize, serde::Deserialize, Job)]
//! # #[job(external, idempotent)]
//! # struct SendPush { device: String }
//!
//! # async fn send(_: &str, _: &str) -> Result<u16, std::io::Error> { Ok(200) }
//! async fn perform(job: &SendPush, ctx: &JobContext) -> Result<(), JobError> {
//!     let policy = CallPolicy::for_job(&SendPush::OPTIONS);
//!     call(ctx, "push-provider", &policy, |attempt| async move {
//!         // Send attempt.idempotency_key with the request, e.g. as `Idempotency-Key`.
//!         match send(&job.device, &attempt.idempotency_key).await {
//!             Ok(200) => Ok(()),
//!             Ok(status) if status == 429 || status >= 500 => Err(CallError::Retry(format!("HTTP {status}"))),
//!             Ok(status) => Err(CallError::Fail(format!("HTTP {status}"))),
//!             Err(e) => Err(CallError::Retry(e.to_string())),
//!         }
//!     })
//!     .await
//!     .map_err(JobError::new)
//! }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use jobqueue::{JobContext, JobOptions};

use crate::key::digest;

/// One attempt at a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The same on every attempt of this call by this job; send it to the service.
    pub idempotency_key: String,
    /// 0 for the first attempt, then 1, 2, ...
    pub attempt: u32,
}

/// A failed attempt, and whether trying again may help.
#[derive(Debug)]
pub enum CallError<E> {
    /// Worth retrying: a connection error, a timeout, 429, a 5xx.
    Retry(E),
    /// Not worth retrying: any other 4xx, a bad request.
    Fail(E),
}

impl<E> CallError<E> {
    /// The error itself.
    pub fn into_inner(self) -> E {
        match self {
            CallError::Retry(e) | CallError::Fail(e) => e,
        }
    }

    fn is_retry(&self) -> bool {
        matches!(self, CallError::Retry(_))
    }
}

/// How many times a call is retried, and how long to wait between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The wait before the first retry; it doubles, with jitter, up to `max_delay`.
    pub min_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
}

impl CallPolicy {
    /// The job's call-level retries (2 for `external` jobs), waiting 500 ms, then about 1 s.
    pub fn for_job(options: &JobOptions) -> Self {
        Self {
            retries: options.retry.call_retries,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
        }
    }

    /// The same policy with another first wait.
    pub fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }
}

/// The idempotency key of call `name` made by the job `jid`.
pub fn idempotency_key(jid: &str, name: &str) -> String {
    digest(&["jobqueue-call", jid, name])
}

/// Makes the call `name`, retrying it per `policy` while it fails with
/// [`CallError::Retry`]. Returns the last error when it gives up.
pub async fn call<T, E, F, Fut>(
    ctx: &JobContext,
    name: &str,
    policy: &CallPolicy,
    mut attempt: F,
) -> Result<T, E>
where
    F: FnMut(Call) -> Fut,
    Fut: Future<Output = Result<T, CallError<E>>>,
{
    let key = idempotency_key(&ctx.jid, name);
    let attempts = AtomicU32::new(0);
    let backoff = ExponentialBuilder::new()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_jitter()
        .with_max_times(policy.retries as usize);
    let once = || {
        let call = Call {
            idempotency_key: key.clone(),
            attempt: attempts.fetch_add(1, Ordering::Relaxed),
        };
        attempt(call)
    };
    once.retry(backoff)
        .when(CallError::is_retry)
        .notify(
            |_, wait| tracing::info!(job = %ctx.jid, "call {name} failed; retrying in {wait:?}"),
        )
        .await
        .map_err(CallError::into_inner)
}

/// Classifies an HTTP status: `None` for success (1xx to 3xx), else whether to retry
/// (429 and 5xx) or not (any other 4xx).
pub fn classify_status(status: u16) -> Option<CallError<u16>> {
    match status {
        100..=399 => None,
        429 | 500..=599 => Some(CallError::Retry(status)),
        _ => Some(CallError::Fail(status)),
    }
}

/// Classifies a reqwest result: connection errors, timeouts, 429 and 5xx are worth
/// retrying; other 4xx and errors in building the request are not.
#[cfg(feature = "reqwest")]
pub fn classify_reqwest(
    result: Result<reqwest::Response, reqwest::Error>,
) -> Result<reqwest::Response, CallError<reqwest::Error>> {
    let response = result.map_err(|e| {
        if e.is_connect() || e.is_timeout() || e.is_request() {
            CallError::Retry(e)
        } else {
            CallError::Fail(e)
        }
    })?;
    match response.error_for_status_ref() {
        Ok(_) => Ok(response),
        Err(e) => match classify_status(response.status().as_u16()) {
            Some(CallError::Retry(_)) => Err(CallError::Retry(e)),
            _ => Err(CallError::Fail(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_like_a_careful_client() {
        assert!(classify_status(200).is_none());
        assert!(classify_status(304).is_none());
        for retry in [429, 500, 502, 503, 504] {
            assert!(
                matches!(classify_status(retry), Some(CallError::Retry(_))),
                "{retry}"
            );
        }
        for fail in [400, 401, 403, 404, 409, 422] {
            assert!(
                matches!(classify_status(fail), Some(CallError::Fail(_))),
                "{fail}"
            );
        }
    }

    #[test]
    fn keys_are_per_job_and_call() {
        let a = idempotency_key("j1", "charge");
        assert_eq!(a, idempotency_key("j1", "charge"));
        assert_ne!(a, idempotency_key("j2", "charge"));
        assert_ne!(a, idempotency_key("j1", "refund"));
        assert_eq!(a.len(), 64);
    }
}
