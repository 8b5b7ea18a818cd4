//! The jobs run by the crash tests' worker processes. Each records its run by pushing a
//! `Record` to the `ran` queue (never consumed), sleeps, then records its completion to
//! `done`.

use std::time::Duration;

use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
use serde::{Deserialize, Serialize};

/// Declares a tick job type: `n` and `millis`, run by [`tick`], with its own attribute.
macro_rules! tick_job {
    ($(#[$doc:meta])* $name:ident, $($attr:tt)*) => {
        $(#[$doc])*
        #[derive(Serialize, Deserialize, Job)]
        #[job($($attr)*)]
        pub struct $name {
            pub n: u64,
            pub millis: u64,
        }

        #[async_trait]
        impl Perform for $name {
            async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
                tick(ctx, self.n, self.millis).await
            }
        }
    };
}

tick_job!(Tick, queue = "ticks", idempotent);
tick_job!(
    /// Like `Tick`, holding a lock from enqueue until it has executed.
    LockedTick, queue = "ticks", idempotent, unique(lock = "until_executed")
);
tick_job!(
    /// Like `Tick`, never running twice at once for the same arguments.
    ExclusiveTick, queue = "ticks", idempotent, unique(lock = "while_executing")
);
tick_job!(
    /// Like `Tick`, holding a lock from enqueue until it starts.
    StartsTick, queue = "ticks", idempotent, unique(lock = "until_executing")
);
tick_job!(
    /// Like `Tick`, holding a lock from enqueue for its whole TTL.
    ExpiresTick, queue = "ticks", idempotent, unique(lock = "until_expired", ttl = "10m")
);
tick_job!(
    /// Like `Tick`, locked from enqueue until it starts, then while it runs.
    GuardedTick, queue = "ticks", idempotent, unique(lock = "until_and_while_executing")
);

/// Like `Tick`, declaring a `Record` of its number as its follow-up (to the `default`
/// queue, which the crash tests' workers never take): pushed with its acknowledgement.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "ticks", idempotent)]
pub struct ChainedTick {
    pub n: u64,
    pub millis: u64,
}

#[async_trait]
impl Perform for ChainedTick {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        ctx.then(&Record { n: self.n })?;
        tick(ctx, self.n, self.millis).await
    }
}

/// Walks items `0..to`, recording each as a `Record` on `ran` and sleeping `millis`; a
/// resumable job (`jobqueue::iterate`), checkpointing after each item.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "ticks", idempotent)]
pub struct CountTick {
    pub to: u64,
    pub millis: u64,
}

#[async_trait]
impl jobqueue::iterate::Iterate for CountTick {
    type Cursor = u64;

    async fn step(&self, next: Option<u64>, ctx: &JobContext) -> Result<Option<u64>, JobError> {
        let item = next.unwrap_or(0);
        if item >= self.to {
            return Ok(None);
        }
        ctx.enqueue_to("ran", &Record { n: item }).await?;
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        Ok(Some(item + 1))
    }
}

#[async_trait]
impl Perform for CountTick {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        jobqueue::iterate::run(self, ctx).await
    }
}

/// A tenant's tick: at most two of a shop run at once, across processes. Records its run on
/// `ran`, sleeps, then records on `spans` when it started and ended.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "ticks", idempotent, concurrency(limit = 2, key = "shop"))]
pub struct ShopTick {
    pub n: u64,
    pub shop: u64,
    pub millis: u64,
}

#[async_trait]
impl Perform for ShopTick {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        let start = epoch();
        ctx.enqueue_to("ran", &Record { n: self.n }).await?;
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        let span = Span {
            n: self.n,
            key: self.shop,
            start,
            end: epoch(),
        };
        ctx.enqueue_to("spans", &span).await?;
        Ok(())
    }
}

/// An account's tick: at most ten of an account start in two seconds, across processes.
/// Records on `spans` when it started.
#[derive(Serialize, Deserialize, Job)]
#[job(
    queue = "ticks",
    idempotent,
    rate(limit = 10, per = "2s", key = "account")
)]
pub struct PacedTick {
    pub n: u64,
    pub account: u64,
}

#[async_trait]
impl Perform for PacedTick {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        let start = epoch();
        let span = Span {
            n: self.n,
            key: self.account,
            start,
            end: start,
        };
        ctx.enqueue_to("spans", &span).await?;
        Ok(())
    }
}

/// When a limited tick ran, by the job's own clock (epoch seconds); never run.
#[derive(Serialize, Deserialize, Job, Debug, Clone, Copy)]
pub struct Span {
    pub n: u64,
    pub key: u64,
    pub start: f64,
    pub end: f64,
}

fn epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Written by the ticks to the `ran` and `done` queues; never run.
#[derive(Serialize, Deserialize, Job)]
pub struct Record {
    pub n: u64,
}

/// Records the run, sleeps, records the completion.
async fn tick(ctx: &JobContext, n: u64, millis: u64) -> Result<(), JobError> {
    ctx.enqueue_to("ran", &Record { n }).await?;
    tokio::time::sleep(Duration::from_millis(millis)).await;
    ctx.enqueue_to("done", &Record { n }).await?;
    Ok(())
}
