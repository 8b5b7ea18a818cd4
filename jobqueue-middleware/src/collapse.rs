//! Collapsible jobs: when a job is enqueued again and again, only the newest one runs.
//!
//! The client side records the newest job id per key on every enqueue; the server side
//! (the stale-job stopper) skips any job that is not the newest for its key. A skipped job
//! is acknowledged and counted in the `skipped` statistic.

use std::time::Duration;

use async_trait::async_trait;
use jobqueue::middleware::{
    Admission, ClientJob, ClientMiddleware, ClientNext, Origin, Outcome, ServerJob,
    ServerMiddleware, ServerNext,
};
use jobqueue::{CollapseSpec, Envelope, Error, JobError, Mechanism};

use crate::key::job_key;

/// The collapse middleware; install it in both chains (`WorkerBuilder::install`) and on
/// every client that enqueues collapsible jobs (`Client::with`).
#[derive(Clone, Debug)]
pub struct Collapse {
    marker_ttl: Duration,
}

impl Default for Collapse {
    fn default() -> Self {
        Self {
            marker_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl Collapse {
    /// Markers live for a day after the last enqueue with their key.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the newest-job marker of a key lives after its last enqueue. An older job
    /// still queued when its marker has expired is no longer recognised as stale and runs.
    pub fn marker_ttl(mut self, ttl: Duration) -> Self {
        self.marker_ttl = ttl;
        self
    }

    /// The key of the newest-job marker for `envelope` (its value is that job's id).
    pub fn marker_key(envelope: &Envelope, spec: &CollapseSpec) -> String {
        job_key("collapse", envelope, spec.key, false)
    }
}

const PROVIDES: &[Mechanism] = &[Mechanism::Collapse];

#[async_trait]
impl ClientMiddleware for Collapse {
    async fn call(&self, job: &mut ClientJob, next: ClientNext<'_>) -> Result<Admission, Error> {
        // Only a new enqueue makes a job the newest; a due job moving to its queue does not.
        if let (Some(spec), Origin::Enqueue) = (job.options.and_then(|o| o.collapse), job.origin) {
            // Recorded before the push, so no worker can see this job before its marker.
            let key = Self::marker_key(&job.envelope, &spec);
            job.broker
                .lock_force(&key, &job.envelope.jid, self.marker_ttl)
                .await?;
        }
        next.run(job).await
    }

    fn provides(&self) -> &'static [Mechanism] {
        PROVIDES
    }
}

#[async_trait]
impl ServerMiddleware for Collapse {
    async fn call(&self, job: &ServerJob<'_>, next: ServerNext<'_>) -> Result<Outcome, JobError> {
        if let Some(spec) = job.options.collapse {
            let key = Self::marker_key(job.envelope, &spec);
            let newest = match job.ctx.client.broker().lock_holder(&key).await {
                Ok(newest) => newest,
                Err(e) => return Ok(crate::broker_unavailable("the collapse marker", &e)),
            };
            if let Some(newest) = newest.filter(|n| *n != job.envelope.jid) {
                return Ok(Outcome::Skipped {
                    reason: format!("stale: job {newest} is newer for the same key"),
                });
            }
        }
        next.run(job).await
    }

    fn provides(&self) -> &'static [Mechanism] {
        PROVIDES
    }
}
