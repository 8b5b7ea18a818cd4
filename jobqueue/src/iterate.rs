//! Resumable bulk jobs, as Sidekiq 7.3's iterable jobs: a job walks a cursor one item at a
//! time, checkpointing the cursor in the broker after each item. When its time budget is
//! nearly spent, when the worker shuts down, or when its queue is paused, it stops after
//! the current item and goes back to the schedule set as the same job, due now; its next
//! run starts from the checkpoint. After a `kill -9` the job is recovered and resumes from
//! the last checkpoint: only the item in progress at the kill is processed again.
//!
//! ```
//! use jobqueue::iterate::{self, Iterate};
//! use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
//! use serde::{Deserialize, Serialize};
//!
//! /// Re-indexes every product of a shop, one page of ids per step.
//! #[derive(Serialize, Deserialize, Job)]
//! #[job(queue = "bulk", idempotent, bulk)]
//! struct ReindexShop { shop_id: u64 }
//!
//! #[async_trait]
//! impl Iterate for ReindexShop {
//!     type Cursor = u64; // the last product id done
//!
//!     async fn step(&self, after: Option<u64>, _ctx: &JobContext) -> Result<Option<u64>, JobError> {
//!         let after = after.unwrap_or(0);
//!         if after >= 10_000 {
//!             return Ok(None); // done
//!         }
//!         // ... reindex products after..after + 500 ...
//!         Ok(Some(after + 500))
//!     }
//! }
//!
//! #[async_trait]
//! impl Perform for ReindexShop {
//!     async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
//!         iterate::run(self, ctx).await
//!     }
//! }
//! ```

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::job::Job;
use crate::perform::{JobContext, JobError};

/// How long a checkpoint outlives its job's last step.
const CHECKPOINT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a run looks whether its queue was paused.
const PAUSE_CHECK: Duration = Duration::from_secs(1);

/// A job that walks a cursor one item at a time; see the module.
#[async_trait]
pub trait Iterate: Job {
    /// Where the job is: what [`Iterate::step`] returns and is given back.
    type Cursor: Serialize + DeserializeOwned + Send + Sync;

    /// Processes the item after `cursor` (`None`: the first), and returns the cursor
    /// after it, or `None` when there is nothing left.
    async fn step(
        &self,
        cursor: Option<Self::Cursor>,
        ctx: &JobContext,
    ) -> Result<Option<Self::Cursor>, JobError>;

    /// How long one run may go on before it stops and resumes in a new run: by default
    /// 80 % of the job's time budget (bulk jobs: 5 minutes).
    fn run_for(&self) -> Duration {
        if Self::OPTIONS.bulk {
            Duration::from_secs(300)
        } else {
            Self::OPTIONS.budget.time_limit(0).mul_f64(0.8)
        }
    }
}

/// A checkpoint: the cursor, and how many items are done.
#[derive(Serialize, Deserialize)]
struct Checkpoint<C> {
    cursor: C,
    done: u64,
}

/// The progress of an iterating job, as [`Admin::iteration`](crate::Admin::iteration) reads it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Items done so far, over every run.
    pub done: u64,
    /// The cursor of the last item done, as JSON.
    pub cursor: serde_json::Value,
}

/// The checkpoint key of the job `jid`.
pub(crate) fn checkpoint_key(jid: &str) -> String {
    format!("iterate:{jid}")
}

/// The progress a checkpoint's text records.
pub(crate) fn progress_of(text: &str) -> Option<Progress> {
    let checkpoint: Checkpoint<serde_json::Value> = serde_json::from_str(text).ok()?;
    Some(Progress {
        done: checkpoint.done,
        cursor: checkpoint.cursor,
    })
}

fn broker_error(e: impl std::fmt::Display) -> JobError {
    JobError::new(format!("checkpoint: {e}"))
}

/// Runs `job` from its last checkpoint: step after step until it is done (the checkpoint
/// is then removed), or until it should stop for now (it then goes back to its queue's
/// schedule, due at once, and resumes from the checkpoint).
pub async fn run<J: Iterate>(job: &J, ctx: &JobContext) -> Result<(), JobError> {
    let key = checkpoint_key(&ctx.jid);
    let broker = ctx.broker();
    // The checkpoint's text is also its owner in the lock primitive, which removes it.
    let mut stored = broker.get(&key).await.map_err(broker_error)?;
    let mut checkpoint: Option<Checkpoint<J::Cursor>> = stored
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok());
    let started = Instant::now();
    let mut pause_checked = Instant::now();
    let limit = job.run_for();
    loop {
        let (cursor, done) = match checkpoint.take() {
            Some(c) => (Some(c.cursor), c.done),
            None => (None, 0),
        };
        let Some(next) = job.step(cursor, ctx).await? else {
            if let Some(text) = &stored {
                broker.unlock(&key, text).await.map_err(broker_error)?;
            }
            return Ok(());
        };
        let saved = Checkpoint {
            cursor: next,
            done: done + 1,
        };
        let text = serde_json::to_string(&saved).map_err(broker_error)?;
        broker
            .set(&key, &text, CHECKPOINT_TTL)
            .await
            .map_err(broker_error)?;
        checkpoint = Some(saved);
        stored = Some(text);
        let mut stop = started.elapsed() >= limit || ctx.is_stopping() || ctx.is_cancelled();
        if !stop && pause_checked.elapsed() >= PAUSE_CHECK {
            pause_checked = Instant::now();
            let paused = broker.paused().await.map_err(broker_error)?;
            stop = paused.iter().any(|(queue, _)| *queue == ctx.queue);
        }
        if stop {
            ctx.resume_later();
            return Ok(());
        }
    }
}
