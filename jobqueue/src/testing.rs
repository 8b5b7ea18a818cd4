//! Helpers for tests of services that use jobqueue (feature `testing`).
//!
//! - [`profile`] runs one job in isolation under the [`TrackingAllocator`] and reports its
//!   memory and wall time; [`Profile::assert_within_budget`] fails a test naming the budget,
//!   the figure and the limit. Run it on worst-case arguments before deploying a job.
//! - [`Fake`], as `Sidekiq::Testing`: enqueues are captured instead of pushed (no Redis),
//!   inspected by type with [`Fake::jobs`], and run with [`Fake::perform_one`] or
//!   [`Fake::drain`]; [`Fake::inline`] performs each job as it is enqueued. Jobs a job
//!   enqueues are captured (or performed) the same way.
//!
//! ```
//! use jobqueue::testing::Fake;
//! # use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize, Job)]
//! # struct SendWelcome { user_id: u64 }
//! # #[async_trait]
//! # impl Perform for SendWelcome {
//! #     async fn perform(&self, _: &JobContext) -> Result<(), JobError> { Ok(()) }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let fake = Fake::new().register::<SendWelcome>();
//! fake.client().enqueue(&SendWelcome { user_id: 7 }).await.unwrap();
//! assert_eq!(fake.jobs::<SendWelcome>().len(), 1);
//! assert_eq!(fake.drain().await.unwrap(), 1);
//! assert!(fake.jobs::<SendWelcome>().is_empty());
//! # }
//! ```
//!
//! [`TrackingAllocator`]: crate::budget::TrackingAllocator

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::backend::MemoryBroker;
use crate::budget::{self, is_tracking, Account, Memory, Overrun, Tier, Tracked};
use crate::client::{Admission, ClientJob, ClientMiddleware, ClientNext};
use crate::envelope::{decode_args, encode_args, Envelope};
use crate::error::Error;
use crate::job::Job;
use crate::perform::{JobContext, JobError, Perform};
use crate::worker::registry::Registry;
use crate::Client;

/// What one isolated run of a job used.
#[derive(Debug)]
#[non_exhaustive]
pub struct Profile {
    /// Its memory, as the tracking allocator counted it.
    pub memory: Memory,
    /// How long `perform` took.
    pub wall: Duration,
    /// What `perform` returned.
    pub result: Result<(), JobError>,
}

/// Why a job could not be profiled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// Nothing counts allocations.
    #[error(
        "no tracking allocator is installed: add `#[global_allocator] static A: \
         jobqueue::budget::TrackingAllocator = jobqueue::budget::TrackingAllocator::system();` \
         to the test file"
    )]
    NotTracking,
    /// The job does not serialize.
    #[error("{0}")]
    Job(#[from] Error),
}

/// Runs `job` once, in isolation, and reports its memory and wall time. Jobs it enqueues go
/// to an in-memory broker nobody reads.
pub async fn profile<J: Perform>(job: &J) -> Result<Profile, ProfileError> {
    if !is_tracking() {
        return Err(ProfileError::NotTracking);
    }
    let args = encode_args(job).map_err(|source| Error::Serialize {
        class: J::NAME,
        source,
    })?;
    let envelope = Envelope::new(J::NAME, J::OPTIONS.queue, args);
    let client = Client::new(MemoryBroker::new());
    let ctx = JobContext::new(&envelope, J::OPTIONS.queue, &J::OPTIONS, client);
    let account = Arc::new(Account::default());
    let started = Instant::now();
    let result = Tracked::new(Arc::clone(&account), job.perform(&ctx)).await;
    let wall = started.elapsed();
    let memory = account.memory().ok_or(ProfileError::NotTracking)?;
    Ok(Profile {
        memory,
        wall,
        result,
    })
}

impl Profile {
    /// The limits of `J`'s budget this run went over, with the time limit of `tier` (the
    /// tier the job will run in: frequent, rare or bulk).
    pub fn over_budget<J: Job>(&self, tier: Tier) -> Vec<Overrun> {
        budget::check(&J::OPTIONS.budget, tier, Some(self.memory), self.wall)
    }

    /// Panics, naming each budget, figure and limit, when this run went over `J`'s budget.
    #[track_caller]
    pub fn assert_within_budget<J: Job>(&self, tier: Tier) {
        let over = self.over_budget::<J>(tier);
        if !over.is_empty() {
            let what: Vec<String> = over.iter().map(ToString::to_string).collect();
            panic!(
                "{} is over budget as a {} job: {} (allocated {} in all, peak {}, retained {}, wall {:?})",
                J::NAME,
                tier.name(),
                what.join("; "),
                budget::size(self.memory.allocated),
                budget::size(self.memory.peak),
                budget::size(self.memory.retained),
                self.wall,
            );
        }
    }
}

/// How many jobs [`Fake::drain`] runs before it decides jobs enqueue each other forever.
const DRAIN_LIMIT: usize = 100_000;

/// Enqueues captured in memory, as `Sidekiq::Testing.fake!` (or performed at once, as
/// `Sidekiq::Testing.inline!`).
#[derive(Clone)]
pub struct Fake {
    captured: Arc<Mutex<VecDeque<Envelope>>>,
    registry: Arc<Mutex<Registry>>,
    inline: bool,
}

impl Default for Fake {
    fn default() -> Self {
        Self::new()
    }
}

impl Fake {
    /// Captures every enqueue.
    pub fn new() -> Self {
        Self {
            captured: Arc::default(),
            registry: Arc::default(),
            inline: false,
        }
    }

    /// Performs every enqueued job at once, before the enqueue returns; a failure is the
    /// enqueue's error.
    pub fn inline() -> Self {
        Self {
            inline: true,
            ..Self::new()
        }
    }

    /// Lets [`Fake::drain`], [`Fake::perform_one`] and inline mode run `J`.
    pub fn register<J: Perform>(self) -> Self {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add::<J>();
        self
    }

    /// A client whose enqueues this fake captures (or performs).
    pub fn client(&self) -> Client {
        Client::new(MemoryBroker::new()).with(self.clone())
    }

    /// The captured jobs of type `J`, oldest first (those whose arguments do not fit `J`
    /// are left out).
    pub fn jobs<J: Job>(&self) -> Vec<J> {
        self.envelopes()
            .iter()
            .filter(|e| e.class == J::NAME)
            .filter_map(|e| decode_args(J::NAME, &e.args, J::OPTIONS.sensitive).ok())
            .collect()
    }

    /// Every captured job, oldest first.
    pub fn envelopes(&self) -> Vec<Envelope> {
        self.captured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Forgets every captured job.
    pub fn clear(&self) {
        self.captured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Performs the oldest captured job (scheduled ones too, at once); returns its class,
    /// or `None` when none is left.
    pub async fn perform_one(&self) -> Result<Option<String>, JobError> {
        let next = self
            .captured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        let Some(envelope) = next else {
            return Ok(None);
        };
        self.perform(&envelope).await?;
        Ok(Some(envelope.class))
    }

    /// Performs captured jobs, and the jobs they enqueue, until none is left; returns how
    /// many ran. Stops at the first failure.
    pub async fn drain(&self) -> Result<usize, JobError> {
        let mut ran = 0;
        while self.perform_one().await?.is_some() {
            ran += 1;
            if ran == DRAIN_LIMIT {
                return Err(JobError::new(format!(
                    "drain ran {DRAIN_LIMIT} jobs and more are enqueued: do jobs enqueue each other forever?"
                )));
            }
        }
        Ok(ran)
    }

    async fn perform(&self, envelope: &Envelope) -> Result<(), JobError> {
        let handler = {
            let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            registry.get(&envelope.class).cloned()
        };
        let Some(handler) = handler else {
            return Err(JobError::new(format!(
                "no job class `{}` is registered with this fake: call `.register::<{}>()`",
                envelope.class, envelope.class
            )));
        };
        let ctx = JobContext::new(envelope, &envelope.queue, handler.options(), self.client());
        handler.call(&envelope.args, &ctx).await?;
        // Its declared next steps, as a worker would push them once it succeeded.
        for next in ctx.take_follow_ups() {
            self.client()
                .enqueue_envelope(next.envelope, next.at)
                .await
                .map_err(|e| JobError::new(e.to_string()))?;
        }
        Ok(())
    }
}

#[async_trait]
impl ClientMiddleware for Fake {
    async fn call(&self, job: &mut ClientJob, _next: ClientNext<'_>) -> Result<Admission, Error> {
        let envelope = job.envelope.clone();
        let jid = envelope.jid.clone();
        if self.inline {
            self.perform(&envelope)
                .await
                .map_err(|e| Error::PerformedInline {
                    class: envelope.class.clone(),
                    message: e.to_string(),
                })?;
        } else {
            self.captured
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(envelope);
        }
        // Nothing is pushed: the enqueue returns this job's id as if it had been.
        Ok(Admission::Existing { jid })
    }
}
