//! Middleware: code that runs around every enqueue (client) and every perform (server).
//!
//! Each middleware gets the job and a [`ClientNext`] / [`ServerNext`] to call the rest of the
//! chain with; not calling it stops there. The first middleware in a chain is the
//! outermost. This is Sidekiq's model, with `next` in place of `yield`.
//!
//! ```
//! use jobqueue::middleware::{Admission, ClientJob, ClientMiddleware, ClientNext};
//! use jobqueue::{async_trait, Error};
//!
//! /// Stamps every job with the tenant it was enqueued for.
//! struct Tenant(String);
//!
//! #[async_trait]
//! impl ClientMiddleware for Tenant {
//!     async fn call(&self, job: &mut ClientJob, next: ClientNext<'_>) -> Result<Admission, Error> {
//!         job.envelope.extra.insert("tenant".into(), self.0.clone().into());
//!         next.run(job).await
//!     }
//! }
//! ```

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::broker::Broker;
use crate::client::Client;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::job::{JobContext, JobError, JobOptions, Mechanism};

/// Why a job is being pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// When it is due (epoch seconds), or `None` for now.
    pub at: Option<f64>,
    /// The job type's options, when the type is known here.
    pub options: Option<&'static JobOptions>,
    /// Why it is being pushed.
    pub origin: Origin,
    /// The broker it goes to, for middleware that keeps state there.
    pub broker: Arc<dyn Broker>,
}

/// What the client chain decided.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// Runs around every enqueue: single, bulk, scheduled, and again when the scheduler moves a
/// scheduled or retried job to its queue.
#[async_trait]
pub trait ClientMiddleware: Send + Sync + 'static {
    /// Handles one job. Call `next.run(job)` to go on; return
    /// [`Error::Skipped`] to refuse the job, or [`Admission::Existing`] to drop it in favour
    /// of one already enqueued.
    async fn call(&self, job: &mut ClientJob, next: ClientNext<'_>) -> Result<Admission, Error>;

    /// The mechanisms this middleware provides.
    fn provides(&self) -> &'static [Mechanism] {
        &[]
    }
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

/// A job about to be performed.
pub struct ServerJob<'a> {
    /// The payload as fetched.
    pub envelope: &'a Envelope,
    /// The job type's options.
    pub options: &'static JobOptions,
    /// The job's context, with a client on the same broker.
    pub ctx: &'a JobContext,
}

/// How a job's turn ended, when it did not fail.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It ran.
    Done,
    /// A middleware decided it should not run; it is acknowledged and counted as skipped.
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
    /// A middleware decided it should run later; it goes to the `schedule` set.
    Reschedule {
        /// How much later.
        after: Duration,
        /// Why, for the log.
        reason: String,
    },
}

/// Runs around every perform.
#[async_trait]
pub trait ServerMiddleware: Send + Sync + 'static {
    /// Handles one job. Call `next.run(job)` to go on to the job itself.
    async fn call(&self, job: &ServerJob<'_>, next: ServerNext<'_>) -> Result<Outcome, JobError>;

    /// Called once a job will not run again: it went to the dead set or was discarded.
    async fn on_death(&self, envelope: &Envelope, options: &'static JobOptions, client: &Client) {
        let _ = (envelope, options, client);
    }

    /// The mechanisms this middleware provides.
    fn provides(&self) -> &'static [Mechanism] {
        &[]
    }
}

/// Performs the job at the end of a server chain.
#[async_trait]
pub(crate) trait Endpoint: Send + Sync {
    async fn perform(&self, job: &ServerJob<'_>) -> Result<(), JobError>;
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
            None => self.endpoint.perform(job).await.map(|()| Outcome::Done),
        }
    }
}

struct Entry<M: ?Sized> {
    type_id: TypeId,
    name: &'static str,
    middleware: Arc<M>,
}

impl<M: ?Sized> Clone for Entry<M> {
    fn clone(&self) -> Self {
        Self {
            type_id: self.type_id,
            name: self.name,
            middleware: Arc::clone(&self.middleware),
        }
    }
}

/// An ordered list of middleware; the first is the outermost. A type appears at most once:
/// adding it again replaces the earlier entry, as in Sidekiq.
pub struct Chain<M: ?Sized> {
    entries: Vec<Entry<M>>,
}

/// The middleware run around enqueues.
pub type ClientChain = Chain<dyn ClientMiddleware>;
/// The middleware run around performs.
pub type ServerChain = Chain<dyn ServerMiddleware>;

impl<M: ?Sized> Default for Chain<M> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<M: ?Sized> Clone for Chain<M> {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
        }
    }
}

impl<M: ?Sized> fmt::Debug for Chain<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| e.name))
            .finish()
    }
}

impl<M: ?Sized> Chain<M> {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    fn entry<T: 'static>(middleware: Arc<M>) -> Entry<M> {
        Entry {
            type_id: TypeId::of::<T>(),
            name: std::any::type_name::<T>(),
            middleware,
        }
    }

    fn position<T: 'static>(&self) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.type_id == TypeId::of::<T>())
    }

    fn insert_at<T: 'static>(&mut self, index: usize, middleware: Arc<M>) {
        let replaced = self.position::<T>();
        let mut index = index;
        if let Some(old) = replaced {
            self.entries.remove(old);
            if old < index {
                index -= 1;
            }
        }
        let index = index.min(self.entries.len());
        self.entries.insert(index, Self::entry::<T>(middleware));
    }

    /// Removes `T`; returns whether it was there.
    pub fn remove<T: 'static>(&mut self) -> bool {
        match self.position::<T>() {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// Whether `T` is in the chain.
    pub fn contains<T: 'static>(&self) -> bool {
        self.position::<T>().is_some()
    }

    /// The type names in order, outermost first.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name).collect()
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

macro_rules! chain_methods {
    ($trait:ident) => {
        impl Chain<dyn $trait> {
            /// Appends `middleware` (innermost), replacing an earlier one of the same type.
            pub fn add<T: $trait>(&mut self, middleware: T) -> &mut Self {
                let len = self.entries.len();
                self.insert_at::<T>(len, Arc::new(middleware));
                self
            }

            /// Puts `middleware` first (outermost), replacing an earlier one of the same type.
            pub fn prepend<T: $trait>(&mut self, middleware: T) -> &mut Self {
                self.insert_at::<T>(0, Arc::new(middleware));
                self
            }

            /// Puts `middleware` just outside `Before`, or last when `Before` is absent.
            pub fn insert_before<Before: 'static, T: $trait>(
                &mut self,
                middleware: T,
            ) -> &mut Self {
                let index = self.position::<Before>().unwrap_or(self.entries.len());
                self.insert_at::<T>(index, Arc::new(middleware));
                self
            }

            /// Puts `middleware` just inside `After`, or last when `After` is absent.
            pub fn insert_after<After: 'static, T: $trait>(&mut self, middleware: T) -> &mut Self {
                let index = self
                    .position::<After>()
                    .map_or(self.entries.len(), |i| i + 1);
                self.insert_at::<T>(index, Arc::new(middleware));
                self
            }

            /// The mechanisms the chain provides.
            pub fn provides(&self) -> Vec<Mechanism> {
                self.entries
                    .iter()
                    .flat_map(|e| e.middleware.provides().iter().copied())
                    .collect()
            }
        }
    };
}

chain_methods!(ClientMiddleware);
chain_methods!(ServerMiddleware);

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
