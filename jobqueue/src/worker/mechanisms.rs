//! The perform side of the mechanisms a job's attribute demands, run inside the server
//! middleware chain around the job itself, for every job of every worker:
//!
//! - the stale-job stopper (`#[job(collapsible)]`): a job that is not the newest for its
//!   key is skipped, by the marker its fetch read or, when that reading is stale, by asking;
//! - uniqueness locks (`#[job(unique)]`): the lock taken at enqueue is released when the
//!   lock type says so (`until_executed`: with the job's acknowledgement, in its round
//!   trip); a running lock is a lease taken before perform and renewed while the job runs,
//!   so a `kill -9` leaves it behind only until the lease lapses.
//!
//! A job waiting for a retry keeps its queued lock, since it is still enqueued; a job that
//! dies (dead set, or discarded) releases both. The enqueue side is in
//! `client/mechanisms.rs`.

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;

use super::middleware::{Endpoint, Outcome, ServerJob};
use super::registry::Handler;
use crate::backend::{KeyValue, MarkerRead};
use crate::client::MechanismConfig;
use crate::envelope::Envelope;
use crate::error::BrokerError;
use crate::job::{JobOptions, OnConflict, UniqueLock, UniqueSpec};
use crate::perform::JobError;
use crate::retry::error_class;

/// How long a job waits when the broker could not be asked about its lock or marker.
const BROKER_RETRY: Duration = Duration::from_secs(5);

/// How long a collapse marker read by the fetch stands for the marker: a job that waited
/// longer for a slot asks again, so a newer job enqueued meanwhile is seen.
const MARKER_FRESH: Duration = Duration::from_millis(50);

/// The job at the end of the server chain, inside its mechanisms.
pub(super) struct Guarded<'a> {
    pub(super) config: &'a MechanismConfig,
    pub(super) handler: &'a dyn Handler,
    /// The job's collapse marker as its fetch read it.
    pub(super) marker: Option<&'a MarkerRead>,
    /// A lock (key, owner) to release with the job's acknowledgement, in its round trip.
    pub(super) release_at_ack: &'a OnceLock<(String, String)>,
}

#[async_trait]
impl Endpoint for Guarded<'_> {
    async fn perform(&self, job: &ServerJob<'_>) -> Result<Outcome, JobError> {
        if let Some(spec) = job.options.collapse {
            let key = spec.marker_key_of(job.envelope);
            let read = self
                .marker
                .filter(|read| read.key == key && read.at.elapsed() < MARKER_FRESH);
            let newest = match read {
                Some(read) => read.newest.clone(),
                None => match job.store.get(&key).await {
                    Ok(newest) => newest,
                    Err(e) => return Ok(broker_unavailable("the collapse marker", &e)),
                },
            };
            if let Some(newest) = newest.filter(|n| *n != job.envelope.jid) {
                return Ok(Outcome::Skipped {
                    reason: format!("stale: job {newest} is newer for the same key"),
                });
            }
        }
        match job.options.unique {
            Some(spec) => self.unique(job, &spec).await,
            None => self.run(job).await,
        }
    }
}

impl Guarded<'_> {
    /// The job itself, stopped at its timeout.
    async fn run(&self, job: &ServerJob<'_>) -> Result<Outcome, JobError> {
        let run = self.handler.call(&job.envelope.args, job.ctx);
        let result = match job.options.timeout {
            None => run.await,
            // Dropping the future stops the job at its next await: it cannot outlive its slot.
            Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                Err(
                    JobError::new(format!("perform did not finish within {limit:?}"))
                        .with_class(error_class::TIMEOUT),
                )
            }),
        };
        result.map(|()| Outcome::Done)
    }

    async fn unique(&self, job: &ServerJob<'_>, spec: &UniqueSpec) -> Result<Outcome, JobError> {
        let store = job.store;
        let jid = &job.envelope.jid;
        let queued = spec.queued_key(job.envelope);
        if spec.on_conflict == OnConflict::Replace && spec.locks_at_enqueue() {
            // A newer job with the same key took the lock at its enqueue: this one was
            // replaced, and is skipped rather than searched for in its queue.
            match store.get(&queued).await {
                Ok(Some(newer)) if newer != *jid => {
                    return Ok(Outcome::Skipped {
                        reason: format!("replaced by job {newer} with the same unique key"),
                    })
                }
                Ok(_) => {}
                Err(e) => return Ok(broker_unavailable("the unique lock", &e)),
            }
        }

        if !spec.locks_while_running() {
            if spec.lock == UniqueLock::UntilExecuting {
                if let Err(e) = store.unlock(&queued, jid).await {
                    return Ok(broker_unavailable("the unique lock", &e));
                }
            }
            let outcome = self.run(job).await;
            if spec.lock == UniqueLock::UntilExecuted
                && matches!(outcome, Ok(Outcome::Done | Outcome::Skipped { .. }))
            {
                // Released when the job is acknowledged; a job that goes back to a queue or
                // set after all (a resume, a strict budget) keeps it, being still enqueued.
                let _ = self.release_at_ack.set((queued, jid.clone()));
            }
            return outcome;
        }

        let running = spec.running_key(job.envelope);
        let lease = self.config.running_lease.min(spec.ttl);
        match store.lock(&running, jid, lease).await {
            Ok(None) => {}
            Ok(Some(holder)) => return self.running_conflict(job, spec, &holder),
            Err(e) => return Ok(broker_unavailable("the unique lock", &e)),
        }
        if spec.lock == UniqueLock::UntilAndWhileExecuting {
            release(store, &queued, jid).await;
        }
        let outcome = tokio::select! {
            outcome = self.run(job) => outcome,
            never = renew(store, &running, jid, lease) => match never {},
        };
        release(store, &running, jid).await;
        outcome
    }

    /// Another job with the same key is running.
    fn running_conflict(
        &self,
        job: &ServerJob<'_>,
        spec: &UniqueSpec,
        holder: &str,
    ) -> Result<Outcome, JobError> {
        let reason = format!("job {holder} with the same unique key is running");
        match spec.on_conflict {
            OnConflict::Log => Ok(Outcome::Skipped { reason }),
            OnConflict::Reject => Err(JobError::new(reason)
                .with_class(error_class::UNIQUE_CONFLICT)
                .no_retry()),
            // A running job cannot be replaced; wait for it instead.
            OnConflict::Reschedule | OnConflict::Replace => {
                tracing::debug!(
                    "{} {} waits: {reason}",
                    job.envelope.class,
                    job.envelope.jid
                );
                Ok(Outcome::Reschedule {
                    after: self.config.conflict_wait,
                    reason,
                })
            }
        }
    }
}

/// Releases the locks of a job that will not run again.
pub(crate) async fn release_on_death(
    store: &dyn KeyValue,
    envelope: &Envelope,
    options: &JobOptions,
) {
    if let Some(spec) = options.unique {
        release(store, &spec.queued_key(envelope), &envelope.jid).await;
        release(store, &spec.running_key(envelope), &envelope.jid).await;
    }
}

/// A job whose lock or marker cannot be read now runs later, neither unguarded nor failed.
fn broker_unavailable(what: &str, error: &BrokerError) -> Outcome {
    Outcome::Reschedule {
        after: BROKER_RETRY,
        reason: format!("cannot read {what}: {error}"),
    }
}

/// Renews a running lock every third of its lease, for as long as the job runs.
async fn renew(store: &dyn KeyValue, key: &str, jid: &str, lease: Duration) -> Infallible {
    loop {
        tokio::time::sleep(lease / 3).await;
        if let Err(e) = store.lock(key, jid, lease).await {
            tracing::warn!("renewing the running lock of job {jid}: {e}");
        }
    }
}

/// Releases a lock this job holds; a failure only delays the release to the lock's TTL.
pub(super) async fn release(store: &dyn KeyValue, key: &str, jid: &str) {
    if let Err(e) = store.unlock(key, jid).await {
        tracing::warn!("releasing lock {key} of job {jid} failed; it expires by its TTL: {e}");
    }
}
