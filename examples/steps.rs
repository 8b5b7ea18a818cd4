//! Work split into budget-sized steps ("Pattern X"): each run exports one page of orders
//! and declares the job for the rest with `ctx.then`, pushed only when the step succeeds,
//! in the same broker call that acknowledges it. `cargo run --example steps` (in memory;
//! `REDIS_URL` for Redis).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobqueue::{async_trait, Client, Job, JobContext, JobError, Perform, Worker};
use serde::{Deserialize, Serialize};

const ORDERS: u64 = 10_000;
const PAGE: u64 = 1_000;
static EXPORTED: AtomicU64 = AtomicU64::new(0);

/// Exports orders from `after` on, one page per run.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "exports", idempotent)]
struct ExportOrders {
    after: u64,
}

#[async_trait]
impl Perform for ExportOrders {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        let end = (self.after + PAGE).min(ORDERS);
        // ... write orders after..end to the export file ...
        EXPORTED.fetch_add(end - self.after, Ordering::Relaxed);
        println!("  exported orders {}..{end} (job {})", self.after, ctx.jid);
        if end < ORDERS {
            let next = ctx
                .then(&ExportOrders { after: end })
                .map_err(|e| JobError::new(e.to_string()))?;
            println!("  next step: job {next}");
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = common::broker("steps").await?;
    Client::new(Arc::clone(&broker))
        .enqueue(&ExportOrders { after: 0 })
        .await?;
    let worker = Worker::builder(Arc::clone(&broker))
        .register::<ExportOrders>()
        .build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run_until(std::future::pending()));
    let started = Instant::now();
    while EXPORTED.load(Ordering::Relaxed) < ORDERS && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown();
    running.await??;
    println!(
        "exported {} orders in {} steps",
        EXPORTED.load(Ordering::Relaxed),
        ORDERS / PAGE
    );
    Ok(())
}
