//! Uniqueness locks, in the lock types sidekiq-unique-jobs users rely on.
//!
//! Two locks per key, each holding the id of the job that owns it:
//! - the *queued* lock, taken at enqueue (`until_executing`, `until_executed`,
//!   `until_expired`, `until_and_while_executing`) with the job's `ttl`;
//! - the *running* lock, a lease taken before perform (`while_executing`,
//!   `until_and_while_executing`) and renewed while the job runs.
//!
//! Nothing can leave a lock behind for good: every lock has a TTL; the running lock is a
//! short lease that lapses soon after a `kill -9`; and a job recovered from a dead process
//! keeps its id, so it still owns its queued lock, runs, and releases it. Locks are released
//! on success and on death (dead set or discarded); a job waiting for a retry keeps its
//! queued lock, since it is still enqueued.

use std::convert::Infallible;
use std::time::Duration;

use async_trait::async_trait;
use jobqueue::envelope::now;
use jobqueue::middleware::{
    Admission, ClientJob, ClientMiddleware, ClientNext, Outcome, ServerJob, ServerMiddleware,
    ServerNext,
};
use jobqueue::{
    Broker, Client, Envelope, Error, JobError, JobOptions, Mechanism, OnConflict, UniqueLock,
    UniqueSpec,
};

use crate::key::job_key;

/// The uniqueness middleware; install it in both chains (`WorkerBuilder::install`) and on
/// every client that enqueues unique jobs (`Client::with`).
#[derive(Clone, Debug)]
pub struct Unique {
    reschedule_after: Duration,
    lease: Duration,
}

impl Default for Unique {
    fn default() -> Self {
        Self {
            reschedule_after: Duration::from_secs(5),
            lease: Duration::from_secs(30),
        }
    }
}

impl Unique {
    /// Rescheduled jobs wait 5 s; running locks are 30 s leases.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a job waits when `on_conflict = "reschedule"` sends it away.
    pub fn reschedule_after(mut self, wait: Duration) -> Self {
        self.reschedule_after = wait;
        self
    }

    /// The keys of the queued lock and the running lock of `envelope` (their values are
    /// the id of the job holding them).
    pub fn lock_keys(envelope: &Envelope, spec: &UniqueSpec) -> (String, String) {
        (queued_key(envelope, spec), running_key(envelope, spec))
    }

    /// The running lock's lease: renewed every third of it while the job runs, and lapsing
    /// this long after the process running the job died.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
}

fn queued_key(envelope: &Envelope, spec: &UniqueSpec) -> String {
    job_key("unique", envelope, spec.key, true)
}

fn running_key(envelope: &Envelope, spec: &UniqueSpec) -> String {
    job_key("running", envelope, spec.key, true)
}

fn locks_at_enqueue(lock: UniqueLock) -> bool {
    !matches!(lock, UniqueLock::WhileExecuting)
}

fn locks_while_running(lock: UniqueLock) -> bool {
    matches!(
        lock,
        UniqueLock::WhileExecuting | UniqueLock::UntilAndWhileExecuting
    )
}

const PROVIDES: &[Mechanism] = &[Mechanism::UniqueLock];

#[async_trait]
impl ClientMiddleware for Unique {
    async fn call(&self, job: &mut ClientJob, next: ClientNext<'_>) -> Result<Admission, Error> {
        let Some(spec) = job.options.and_then(|o| o.unique) else {
            return next.run(job).await;
        };
        if !locks_at_enqueue(spec.lock) {
            return next.run(job).await;
        }
        let key = queued_key(&job.envelope, &spec);
        let jid = job.envelope.jid.clone();
        // Held by this very job (a scheduled or retried job coming due) counts as taken.
        if let Some(holder) = job.broker.lock(&key, &jid, spec.ttl).await? {
            match spec.on_conflict {
                OnConflict::Reject => {
                    return Err(Error::Skipped {
                        class: job.envelope.class.clone(),
                        reason: format!(
                            "job {holder} with the same unique key is enqueued and holds the lock"
                        ),
                    })
                }
                OnConflict::Log => {
                    tracing::info!(
                        "{} {jid} not enqueued: job {holder} with the same unique key stands for it",
                        job.envelope.class
                    );
                    return Ok(Admission::Existing { jid: holder });
                }
                OnConflict::Reschedule => {
                    // Not locked now; the lock is tried again when the job comes due.
                    job.at = Some(
                        job.at.unwrap_or(0.0).max(now()) + self.reschedule_after.as_secs_f64(),
                    );
                    return next.run(job).await;
                }
                OnConflict::Replace => {
                    let removed = job.broker.remove_job(&job.envelope.queue, &holder).await?;
                    tracing::info!(
                        "{} {jid} replaces job {holder} ({})",
                        job.envelope.class,
                        if removed {
                            "removed"
                        } else {
                            "no longer waiting"
                        }
                    );
                    job.broker.lock_force(&key, &jid, spec.ttl).await?;
                }
            }
        }
        match next.run(job).await {
            Ok(Admission::Push) => Ok(Admission::Push),
            // A later middleware kept the job out: the lock is not its to keep.
            other => {
                job.broker.unlock(&key, &jid).await?;
                other
            }
        }
    }

    fn provides(&self) -> &'static [Mechanism] {
        PROVIDES
    }
}

#[async_trait]
impl ServerMiddleware for Unique {
    async fn call(&self, job: &ServerJob<'_>, next: ServerNext<'_>) -> Result<Outcome, JobError> {
        let Some(spec) = job.options.unique else {
            return next.run(job).await;
        };
        let broker = job.ctx.client.broker();
        let jid = &job.envelope.jid;
        let queued = queued_key(job.envelope, &spec);

        if !locks_while_running(spec.lock) {
            if spec.lock == UniqueLock::UntilExecuting {
                if let Err(e) = broker.unlock(&queued, jid).await {
                    return Ok(crate::broker_unavailable("the unique lock", &e));
                }
            }
            let outcome = next.run(job).await;
            if spec.lock == UniqueLock::UntilExecuted
                && matches!(outcome, Ok(Outcome::Done | Outcome::Skipped { .. }))
            {
                release(broker.as_ref(), &queued, jid).await;
            }
            return outcome;
        }

        let running = running_key(job.envelope, &spec);
        let lease = self.lease.min(spec.ttl);
        match broker.lock(&running, jid, lease).await {
            Ok(None) => {}
            Ok(Some(holder)) => return self.running_conflict(job, &spec, &holder),
            Err(e) => return Ok(crate::broker_unavailable("the unique lock", &e)),
        }
        if spec.lock == UniqueLock::UntilAndWhileExecuting {
            release(broker.as_ref(), &queued, jid).await;
        }
        let outcome = tokio::select! {
            outcome = next.run(job) => outcome,
            never = renew(broker.as_ref(), &running, jid, lease) => match never {},
        };
        release(broker.as_ref(), &running, jid).await;
        outcome
    }

    async fn on_death(&self, envelope: &Envelope, options: &'static JobOptions, client: &Client) {
        if let Some(spec) = options.unique {
            let broker = client.broker().as_ref();
            release(broker, &queued_key(envelope, &spec), &envelope.jid).await;
            release(broker, &running_key(envelope, &spec), &envelope.jid).await;
        }
    }

    fn provides(&self) -> &'static [Mechanism] {
        PROVIDES
    }
}

impl Unique {
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
                .with_class("jobqueue::UniqueConflict")
                .no_retry()),
            // A running job cannot be replaced; wait for it instead.
            OnConflict::Reschedule | OnConflict::Replace => {
                tracing::debug!(
                    "{} {} waits: {reason}",
                    job.envelope.class,
                    job.envelope.jid
                );
                Ok(Outcome::Reschedule {
                    after: self.reschedule_after,
                    reason,
                })
            }
        }
    }
}

/// Renews a running lock every third of its lease, for as long as the job runs.
async fn renew(broker: &dyn Broker, key: &str, jid: &str, lease: Duration) -> Infallible {
    loop {
        tokio::time::sleep(lease / 3).await;
        if let Err(e) = broker.lock(key, jid, lease).await {
            tracing::warn!("renewing the running lock of job {jid}: {e}");
        }
    }
}

/// Releases a lock this job holds; a failure only delays the release to the lock's TTL.
async fn release(broker: &dyn Broker, key: &str, jid: &str) {
    if let Err(e) = broker.unlock(key, jid).await {
        tracing::warn!("releasing lock {key} of job {jid} failed; it expires by its TTL: {e}");
    }
}
