//! Client middleware: code that runs around every enqueue, as Sidekiq's client middleware.
//!
//! Each middleware gets the job and a [`ClientNext`] to call the rest of the chain with; not
//! calling it stops there. The first middleware in a chain is the outermost. The mechanisms
//! a job's attribute demands (collapse markers, uniqueness locks) are not in the chain: the
//! client applies them after it, every time, so no chain can leave them out.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::backend::KeyValue;
use crate::chain::{chain_methods, Chain, Entry};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::job::JobOptions;

/// Why a job is being pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A caller enqueued it.
    Enqueue,
    /// The scheduler is moving it from the `schedule` set to its queue.
    Scheduled,
    /// The scheduler is moving it from the `retry` set to its queue.
    Retry,
    /// A periodic job's tick.
    Periodic,
}

/// A job on its way to the broker.
pub struct ClientJob {
    /// The payload; middleware may change it.
    pub envelope: Envelope,
    /// When it is due, or `None` for now.
    pub at: Option<SystemTime>,
    /// The job type's options, when the type is known here.
    pub options: Option<&'static JobOptions>,
    /// Why it is being pushed.
    pub origin: Origin,
    /// The key/value store of the backend it goes to, for middleware that keeps state
    /// there (a lock, a counter).
    pub store: Arc<dyn KeyValue>,
}

/// What the client chain decided.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Push the job.
    Push,
    /// Do not push it: the job `jid`, already enqueued, stands for it. The enqueue call
    /// returns `jid` as if it had been pushed.
    Existing {
        /// The job standing in for this one.
        jid: String,
    },
}

/// Runs around every enqueue: single, bulk, scheduled, periodic, and again when the
/// scheduler moves a scheduled or retried job to its queue.
///
/// ```
/// use jobqueue::client::{Admission, ClientJob, ClientMiddleware, ClientNext};
/// use jobqueue::{async_trait, Error};
///
/// /// Stamps every job with the tenant it was enqueued for.
/// struct Tenant(String);
///
/// #[async_trait]
/// impl ClientMiddleware for Tenant {
///     async fn call(&self, job: &mut ClientJob, next: ClientNext<'_>) -> Result<Admission, Error> {
///         job.envelope.extra.insert("tenant".into(), self.0.clone().into());
///         next.run(job).await
///     }
/// }
/// ```
#[async_trait]
pub trait ClientMiddleware: Send + Sync + 'static {
    /// Handles one job. Call `next.run(job)` to go on; return
    /// [`Error::Skipped`] to refuse the job, or [`Admission::Existing`] to drop it in favour
    /// of one already enqueued.
    async fn call(&self, job: &mut ClientJob, next: ClientNext<'_>) -> Result<Admission, Error>;
}

/// The rest of a client chain.
pub struct ClientNext<'a> {
    rest: &'a [Entry<dyn ClientMiddleware>],
}

impl ClientNext<'_> {
    /// Runs the rest of the chain.
    pub async fn run(self, job: &mut ClientJob) -> Result<Admission, Error> {
        match self.rest.split_first() {
            Some((first, rest)) => first.middleware.call(job, ClientNext { rest }).await,
            None => Ok(Admission::Push),
        }
    }
}

/// The middleware run around enqueues.
pub type ClientChain = Chain<dyn ClientMiddleware>;

chain_methods!(ClientMiddleware);

impl ClientChain {
    /// Runs the chain for one job.
    pub async fn run(&self, job: &mut ClientJob) -> Result<Admission, Error> {
        ClientNext {
            rest: &self.entries,
        }
        .run(job)
        .await
    }
}
