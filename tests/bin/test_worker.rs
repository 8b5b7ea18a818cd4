//! A worker process for the crash tests:
//! `jobqueue-test-worker REDIS_URL [CONCURRENCY] [SHUTDOWN_TIMEOUT_MS]`.
//! Runs tick jobs, each of which records its run by pushing to the `ran` queue (never
//! consumed), sleeps, then records its completion to `done`; some hold unique locks.

use std::time::Duration;

use jobqueue::{Queues, RedisBroker, Worker, WorkerConfig};
use jobqueue_middleware::Unique;

#[path = "../support/ticks.rs"]
mod ticks;

use ticks::{ExclusiveTick, LockedTick, Tick};

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
