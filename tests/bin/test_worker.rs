//! A worker process for the crash tests:
//! `jobqueue-test-worker REDIS_URL [CONCURRENCY] [SHUTDOWN_TIMEOUT_MS]`; a list of URLs
//! (`redis://a:1,b:2,...`) is a Redis Cluster's seed nodes, a `postgres://` URL a
//! PostgreSQL broker. `jobqueue-test-worker relay POSTGRES_URL REDIS_URL` runs an outbox
//! relay instead, in batches of 200.
//! Runs tick jobs, each of which records its run by pushing to the `ran` queue (never
//! consumed), sleeps, then records its completion to `done`; some hold unique locks. On a
//! cluster both records stay on the first shard, so that a test killing the master of
//! another loses none of them (without `wait_for_replicas`, a push the dead master had not
//! copied yet is lost).
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
    if url == "relay" {
        return relay(args.next(), args.next()).await;
    }
    let concurrency: usize = args.next().unwrap_or_else(|| "10".into()).parse()?;
    let shutdown_ms: u64 = args.next().unwrap_or_else(|| "25000".into()).parse()?;
    // Warnings (failed calls, recovered jobs) go to standard error, for the tests' logs.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // A start that meets a failover waits for the cluster, as the worker's first heartbeat
    // does, rather than exiting: tried again for up to a minute, 100 ms doubling to 5 s.
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    let broker = loop {
        match connect(&url).await {
            Ok(broker) => break broker,
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                eprintln!("connecting failed, trying again in {delay:?}: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
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

/// Relays the outbox of the database at `pg` into the Redis at `redis` until killed.
async fn relay(
    pg: Option<String>,
    redis: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (Some(pg), Some(redis)) = (pg, redis) else {
        return Err("usage: jobqueue-test-worker relay POSTGRES_URL REDIS_URL".into());
    };
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let pool = sqlx::PgPool::connect(&pg).await?;
    let broker = jobqueue::RedisBroker::connect(&redis).await?;
    let mut config = jobqueue::backend::postgres::RelayConfig::default();
    config.batch = 200;
    jobqueue::backend::postgres::Relay::new(pool, broker)
        .config(config)
        .run_until(std::future::pending::<()>())
        .await;
    Ok(())
}

/// A broker on `url`: one Redis, or a cluster (a list of seed nodes) keeping the run
/// records on its first shard.
async fn connect(url: &str) -> Result<std::sync::Arc<dyn jobqueue::Broker>, jobqueue::BrokerError> {
    if !url.contains(',') {
        return jobqueue::backend::connect(url, None).await;
    }
    let config = jobqueue::ClusterConfig::new(url)
        .queue_shards("ran", 1)
        .queue_shards("done", 1);
    Ok(jobqueue::ClusterBroker::connect_with(config).await?.into())
}
