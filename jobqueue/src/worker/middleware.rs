//! Server middleware: code that runs around every perform, as Sidekiq's server middleware.
//!
//! Each middleware gets the job and a [`ServerNext`] to call the rest of the chain (and
//! then the job) with; not calling it stops there. The first middleware in a chain is the
//! outermost. The mechanisms a job's attribute demands (the stale-job stopper, the running
//! lock, the lock releases) are not in the chain: the worker applies them inside it, around
//! the job itself, every time.

use std::time::Duration;

use async_trait::async_trait;

use crate::backend::KeyValue;
use crate::chain::{chain_methods, Chain, Entry};
use crate::client::Client;
use crate::envelope::Envelope;
use crate::job::JobOptions;
use crate::perform::{JobContext, JobError};

/// A job about to be performed.
#[non_exhaustive]
pub struct ServerJob<'a> {
    /// The payload as fetched.
    pub envelope: &'a Envelope,
    /// The job type's options.
    pub options: &'static JobOptions,
    /// The context the job's `perform` is given.
    pub ctx: &'a JobContext,
    /// The key/value store of the backend the job came from, for middleware that keeps
    /// state there.
    pub store: &'a dyn KeyValue,
}

/// How a job's turn ended, when it did not fail.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// It ran.
    Done,
    /// It should not run; it is acknowledged and counted as skipped.
    Skipped {
        /// Why, for the log.
        reason: String,
    },
    /// A service the queue depends on is down: the queue is paused for `cooldown`, and the
    /// job goes back to its front, not counted as a failure.
    PauseQueue {
        /// How long the queue stays paused.
        cooldown: Duration,
        /// Why, for the log.
        reason: String,
    },
    /// It should run later; it goes to the `schedule` set.
    Reschedule {
        /// How much later.
        after: Duration,
        /// Why, for the log.
        reason: String,
    },
    /// An operator cancelled it while it ran: it is acknowledged, counted as cancelled,
    /// neither failed nor retried.
    Cancelled,
}

/// Runs around every perform.
///
/// ```
/// use std::time::Instant;
/// use jobqueue::worker::{Outcome, ServerJob, ServerMiddleware, ServerNext};
/// use jobqueue::{async_trait, JobError};
///
/// /// Logs how long every job took.
/// struct Timing;
///
/// #[async_trait]
/// impl ServerMiddleware for Timing {
///     async fn call(&self, job: &ServerJob<'_>, next: ServerNext<'_>) -> Result<Outcome, JobError> {
///         let start = Instant::now();
///         let outcome = next.run(job).await;
///         println!("{} took {:?}", job.envelope.class, start.elapsed());
///         outcome
///     }
/// }
/// ```
#[async_trait]
pub trait ServerMiddleware: Send + Sync + 'static {
    /// Handles one job. Call `next.run(job)` to go on to the job itself.
    async fn call(&self, job: &ServerJob<'_>, next: ServerNext<'_>) -> Result<Outcome, JobError>;

    /// Called once a job will not run again: it went to the dead set or was discarded.
    /// `client` enqueues on the same broker, for a compensating job.
    async fn on_death(&self, envelope: &Envelope, options: &'static JobOptions, client: &Client) {
        let _ = (envelope, options, client);
    }
}

/// What runs at the end of a server chain: the job, inside its mechanisms.
#[async_trait]
pub(crate) trait Endpoint: Send + Sync {
    async fn perform(&self, job: &ServerJob<'_>) -> Result<Outcome, JobError>;
}

/// The rest of a server chain.
pub struct ServerNext<'a> {
    rest: &'a [Entry<dyn ServerMiddleware>],
    endpoint: &'a dyn Endpoint,
}

impl ServerNext<'_> {
    /// Runs the rest of the chain, then the job.
    pub async fn run(self, job: &ServerJob<'_>) -> Result<Outcome, JobError> {
        match self.rest.split_first() {
            Some((first, rest)) => {
                let next = ServerNext {
                    rest,
                    endpoint: self.endpoint,
                };
                first.middleware.call(job, next).await
            }
            None => self.endpoint.perform(job).await,
        }
    }
}

/// The middleware run around performs.
pub type ServerChain = Chain<dyn ServerMiddleware>;

chain_methods!(ServerMiddleware);

impl ServerChain {
    pub(crate) async fn run(
        &self,
        job: &ServerJob<'_>,
        endpoint: &dyn Endpoint,
    ) -> Result<Outcome, JobError> {
        ServerNext {
            rest: &self.entries,
            endpoint,
        }
        .run(job)
        .await
    }

    pub(crate) async fn on_death(
        &self,
        envelope: &Envelope,
        options: &'static JobOptions,
        client: &Client,
    ) {
        for entry in &self.entries {
            entry.middleware.on_death(envelope, options, client).await;
        }
    }
}
