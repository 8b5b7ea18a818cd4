//! Shared by the examples: the broker to use and a worker run for a while.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use jobqueue::{Broker, MemoryBroker, RedisBroker, RedisConfig, WorkerBuilder};

/// Redis when `REDIS_URL` is set (keys under `NAMESPACE:`), else a fresh in-memory broker.
pub async fn broker(namespace: &str) -> Result<Arc<dyn Broker>, jobqueue::Error> {
    Ok(match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("broker: Redis at {url} (keys under `{namespace}:`)");
            let config = RedisConfig::new(url).namespace(namespace);
            Arc::new(RedisBroker::connect_with(config).await?)
        }
        Err(_) => {
            println!("broker: in memory (set REDIS_URL to use Redis)");
            Arc::new(MemoryBroker::new())
        }
    })
}

/// Runs a worker for `duration`, then shuts it down gracefully.
pub async fn run_for(
    builder: WorkerBuilder,
    duration: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    builder
        .build()?
        .run_until(tokio::time::sleep(duration))
        .await?;
    Ok(())
}
