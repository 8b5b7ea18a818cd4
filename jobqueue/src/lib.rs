//! # jobqueue
//!
//! Background jobs for Rust services: describe a job as a plain struct, enqueue it from
//! anywhere, and run it in worker processes embedded in your own binary. Jobs live in Redis,
//! in Sidekiq's format, so Ruby Sidekiq and this library can share queues and tools; or in
//! memory, with the same semantics, for development and tests.
//!
//! ```
//! use jobqueue::{async_trait, Client, Job, JobContext, JobError, MemoryBroker, Perform, Worker};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Job)]
//! #[job(queue = "emails", idempotent)]
//! struct SendWelcome {
//!     user_id: u64,
//! }
//!
//! #[async_trait]
//! impl Perform for SendWelcome {
//!     async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
//!         println!("sending welcome mail to user {}", self.user_id);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), jobqueue::Error> {
//! let broker = MemoryBroker::new();
//! Client::new(broker.clone()).enqueue(&SendWelcome { user_id: 7 }).await?;
//!
//! let worker = Worker::builder(broker.clone()).register::<SendWelcome>().build()?;
//! let handle = worker.handle();
//! let running = tokio::spawn(worker.run_until(std::future::pending()));
//! # let admin = jobqueue::Admin::new(broker.clone());
//! # while admin.queue("emails").await?.size > 0 {
//! #     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//! # }
//! handle.shutdown();
//! running.await.expect("worker task")?;
//! # Ok(())
//! # }
//! ```
//!
//! ## The `#[job(...)]` attribute
//!
//! | key | meaning |
//! |---|---|
//! | `queue = "name"` | the queue (default `"default"`) |
//! | `idempotent` | running the job twice is safe: it gets 1 job-level retry |
//! | `external` | the job calls third-party services: retry the call (2 times), not the job |
//! | `retries = N` | job-level retries; only with `idempotent` |
//! | `name = "Class"` | the class name on the wire (default: the type name) |
//! | `collapsible`, `collapsible(key = "a,b")` | only the newest job per key runs |
//! | `unique`, `unique(lock = "...", ttl = "10m", on_conflict = "...", key = "a,b")` | a uniqueness lock |
//! | `budget(alloc = "100MB", retained = "10MB", time = "1s")` | what one run may take |
//! | `concurrency(limit = 2, key = "a,b")` | at most 2 jobs per key run at once, in all processes |
//! | `rate(limit = 100, per = "1m", key = "a,b")` | at most 100 jobs per key start per minute |
//!
//! The retry policy ([`RetryPolicy::derive`]):
//!
//! | idempotent | external | job-level retries | call-level retries |
//! |---|---|---|---|
//! | no | no | 0 | none |
//! | yes | no | 1 | none |
//! | no | yes | 0 | 2, and a while-executing uniqueness lock |
//! | yes | yes | 0 | 2 |

#![deny(missing_docs)]
#![warn(unreachable_pub)]

// The layers, lowest first (each imports only from those before it): error, time,
// metrics, chain; envelope, class_stats; job; backend, schedule, budget; client; perform,
// retry; worker; admin. Runner and testing sit on top.
pub mod admin;
pub mod backend;
pub mod budget;
pub mod chain;
pub mod class_stats;
pub mod client;
pub mod envelope;
pub mod error;
pub mod iterate;
pub mod job;
pub mod metrics;
pub mod perform;
pub mod retry;
#[cfg(feature = "runner")]
pub mod runner;
pub mod schedule;
#[cfg(feature = "testing")]
pub mod testing;
mod time;
pub mod trace;
pub mod worker;

pub use async_trait::async_trait;
/// Time zones for cron schedules and quiet windows.
pub use chrono_tz;
pub use jobqueue_derive::Job;

pub use crate::admin::Admin;
pub use crate::backend::{
    Broker, ClusterBroker, ClusterConfig, MemoryBroker, RedisBroker, RedisConfig, SortedSet,
};
pub use crate::class_stats::ClassStats;
pub use crate::client::{Client, MechanismConfig};
pub use crate::envelope::Envelope;
pub use crate::error::{BrokerError, Error};
pub use crate::job::{
    Budget, CollapseSpec, ConcurrencyLimit, Job, JobOptions, OnConflict, RateLimit, RetryPolicy,
    UniqueLock, UniqueSpec,
};
pub use crate::perform::{JobContext, JobError, Perform};
pub use crate::worker::{
    Health, Queues, RunState, Worker, WorkerBuilder, WorkerConfig, WorkerHandle,
};
