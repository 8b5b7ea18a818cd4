//! A worker process for the crash tests:
//! `jobqueue-test-worker REDIS_URL [CONCURRENCY] [SHUTDOWN_TIMEOUT_MS]`; a list of URLs
//! (`redis://a:1,b:2,...`) is a Redis Cluster's seed nodes.
//! Runs tick jobs, each of which records its run by pushing to the `ran` queue (never
//! consumed), sleeps, then records its completion to `done`; some hold unique locks.
//!
//! Its heartbeat and running-lock leases are long (a stalled machine never makes a live
//! process look dead); a test that kills it declares it dead by deleting its heartbeat,
//! and checks that its leases would lapse by themselves before it expires them.

use std::time::Duration;

use jobqueue::{MechanismConfig, Queues, Worker};

#[path = "../support/ticks.rs"]
mod ticks;

use ticks::{
    ChainedTick, CountTick, ExclusiveTick, ExpiresTick, GuardedTick, LockedTick, PacedTick,
    ShopTick, StartsTick, Tick,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: jobqueue-test-worker REDIS_URL [CONCURRENCY] [SHUTDOWN_TIMEOUT_MS]")?;
    let concurrency: usize = args.next().unwrap_or_else(|| "10".into()).parse()?;
    let shutdown_ms: u64 = args.next().unwrap_or_else(|| "25000".into()).parse()?;
    let broker = jobqueue::backend::connect(&url, None).await?;
    Worker::builder(broker)
        .queues(Queues::strict(["ticks"]))
        .concurrency(concurrency)
        .shutdown_timeout(Duration::from_millis(shutdown_ms))
        .configure(|c| {
            c.heartbeat_interval = Duration::from_millis(200);
            c.heartbeat_ttl = Duration::from_secs(60);
            c.recovery_interval = Duration::from_millis(200);
            c.mechanisms = MechanismConfig::default()
                .running_lease(Duration::from_secs(60))
                .conflict_wait(Duration::from_millis(200));
        })
        .register::<Tick>()
        .register::<LockedTick>()
        .register::<ExclusiveTick>()
        .register::<StartsTick>()
        .register::<ExpiresTick>()
        .register::<GuardedTick>()
        .register::<ChainedTick>()
        .register::<CountTick>()
        .register::<ShopTick>()
        .register::<PacedTick>()
        .build()?
        .run()
        .await?;
    Ok(())
}
