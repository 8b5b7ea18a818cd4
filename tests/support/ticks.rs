//! The jobs run by the crash tests' worker processes. Each records its run by pushing a
//! `Record` to the `ran` queue (never consumed), sleeps, then records its completion to
//! `done`.

use std::time::Duration;

use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "ticks", idempotent)]
pub struct Tick {
    pub n: u64,
    pub millis: u64,
}

/// Like `Tick`, holding a lock from enqueue until it has executed.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "ticks", idempotent, unique(lock = "until_executed"))]
pub struct LockedTick {
    pub n: u64,
    pub millis: u64,
}

/// Like `Tick`, never running twice at once for the same arguments.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "ticks", idempotent, unique(lock = "while_executing"))]
pub struct ExclusiveTick {
    pub n: u64,
    pub millis: u64,
}

/// Like `Tick`, holding a lock from enqueue until it starts.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "ticks", idempotent, unique(lock = "until_executing"))]
pub struct StartsTick {
    pub n: u64,
    pub millis: u64,
}

/// Like `Tick`, holding a lock from enqueue for its whole TTL.
#[derive(Serialize, Deserialize, Job)]
#[job(
    queue = "ticks",
    idempotent,
    unique(lock = "until_expired", ttl = "10m")
)]
pub struct ExpiresTick {
    pub n: u64,
    pub millis: u64,
}

/// Like `Tick`, locked from enqueue until it starts, then while it runs.
#[derive(Serialize, Deserialize, Job)]
#[job(
    queue = "ticks",
    idempotent,
    unique(lock = "until_and_while_executing")
)]
pub struct GuardedTick {
    pub n: u64,
    pub millis: u64,
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

#[async_trait]
impl Perform for Tick {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        tick(ctx, self.n, self.millis).await
    }
}

#[async_trait]
impl Perform for LockedTick {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        tick(ctx, self.n, self.millis).await
    }
}

#[async_trait]
impl Perform for ExclusiveTick {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        tick(ctx, self.n, self.millis).await
    }
}

#[async_trait]
impl Perform for StartsTick {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        tick(ctx, self.n, self.millis).await
    }
}

#[async_trait]
impl Perform for ExpiresTick {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        tick(ctx, self.n, self.millis).await
    }
}

#[async_trait]
impl Perform for GuardedTick {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        tick(ctx, self.n, self.millis).await
    }
}
