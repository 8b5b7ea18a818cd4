//! A worker process for the crash tests:
//! `jobqueue-test-worker REDIS_URL [CONCURRENCY] [SHUTDOWN_TIMEOUT_MS]`.
//! Runs tick jobs, each of which records its run by pushing to the `ran` queue (never
//! consumed), sleeps, then records its completion to `done`; some hold unique locks.

use std::time::Duration;

use jobqueue::{
    async_trait, Job, JobContext, JobError, Perform, Queues, RedisBroker, Worker, WorkerConfig,
};
use jobqueue_middleware::Unique;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "ticks", idempotent)]
struct Tick {
    n: u64,
    millis: u64,
}

/// Like `Tick`, holding a lock from enqueue until it has executed.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "ticks", idempotent, unique(lock = "until_executed"))]
struct LockedTick {
    n: u64,
    millis: u64,
}

/// Like `Tick`, never running twice at once for the same arguments.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "ticks", idempotent, unique(lock = "while_executing"))]
struct ExclusiveTick {
    n: u64,
    millis: u64,
}

/// Written by the ticks to the `ran` and `done` queues; never run.
#[derive(Serialize, Deserialize, Job)]
struct Record {
    n: u64,
}

/// Records the run, sleeps, records the completion.
async fn tick(ctx: &JobContext, n: u64, millis: u64) -> Result<(), JobError> {
    ctx.client.enqueue_to("ran", &Record { n }).await?;
    tokio::time::sleep(Duration::from_millis(millis)).await;
    ctx.client.enqueue_to("done", &Record { n }).await?;
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: jobqueue-test-worker REDIS_URL [CONCURRENCY] [SHUTDOWN_TIMEOUT_MS]")?;
    let concurrency: usize = args.next().unwrap_or_else(|| "10".into()).parse()?;
    let shutdown_ms: u64 = args.next().unwrap_or_else(|| "25000".into()).parse()?;
    let broker = RedisBroker::connect(&url).await?;
    Worker::builder(broker)
        .config(WorkerConfig {
            queues: Queues::strict(["ticks"]),
            concurrency,
            shutdown_timeout: Duration::from_millis(shutdown_ms),
            heartbeat_interval: Duration::from_millis(200),
            heartbeat_ttl: Duration::from_secs(1),
            recovery_interval: Duration::from_millis(200),
            ..WorkerConfig::default()
        })
        .register::<Tick>()
        .register::<LockedTick>()
        .register::<ExclusiveTick>()
        .install(
            Unique::new()
                .lease(Duration::from_secs(1))
                .reschedule_after(Duration::from_millis(200)),
        )
        .build()?
        .run()
        .await?;
    Ok(())
}
