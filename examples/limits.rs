//! Per-key limits: a shop's syncs run at most two at once, an account's calls start at most
//! five a second, and a shop with many jobs does not hold up one with few.
//! `cargo run --example limits` (in memory; `REDIS_URL` for Redis).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobqueue::{async_trait, Admin, Client, Job, JobContext, JobError, Perform, Worker};
use serde::{Deserialize, Serialize};

static FINISHED: AtomicU64 = AtomicU64::new(0);
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn elapsed() -> f64 {
    STARTED.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Syncs one page of a shop's catalogue: at most two per shop at once, on any process.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "sync", idempotent, concurrency(limit = 2, key = "shop"))]
struct SyncShop {
    shop: String,
    page: u32,
}

#[async_trait]
impl Perform for SyncShop {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        println!("{:5.2}s  sync {} page {}", elapsed(), self.shop, self.page);
        tokio::time::sleep(Duration::from_millis(100)).await;
        FINISHED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Calls a third party for an account: at most five calls start per second per account.
#[derive(Serialize, Deserialize, Job)]
#[job(
    queue = "sync",
    idempotent,
    rate(limit = 5, per = "1s", key = "account")
)]
struct PushToCrm {
    account: String,
    contact: u32,
}

#[async_trait]
impl Perform for PushToCrm {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        println!(
            "{:5.2}s  crm {} contact {}",
            elapsed(),
            self.account,
            self.contact
        );
        FINISHED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = common::broker("limits").await?;
    let client = Client::new(Arc::clone(&broker));
    // The big shop is enqueued first; the small one's pages still start at once.
    let mut pages: Vec<SyncShop> = (0..12)
        .map(|page| SyncShop {
            shop: "big-shop".into(),
            page,
        })
        .collect();
    pages.extend((0..2).map(|page| SyncShop {
        shop: "small-shop".into(),
        page,
    }));
    client.enqueue_bulk(&pages).await?;
    let calls: Vec<PushToCrm> = (0..12)
        .map(|contact| PushToCrm {
            account: "acme".into(),
            contact,
        })
        .collect();
    client.enqueue_bulk(&calls).await?;
    let total = (pages.len() + calls.len()) as u64;

    let worker = Worker::builder(Arc::clone(&broker))
        .concurrency(10)
        .register::<SyncShop>()
        .register::<PushToCrm>()
        .build()?;
    let handle = worker.handle();
    elapsed();
    let running = tokio::spawn(worker.run_until(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    for limit in Admin::new(Arc::clone(&broker)).limits().await? {
        println!(
            "        {}: {} slots taken, {} jobs waiting",
            limit.key, limit.held, limit.parked
        );
    }
    let started = Instant::now();
    while FINISHED.load(Ordering::Relaxed) < total && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{} of {total} jobs finished",
        FINISHED.load(Ordering::Relaxed)
    );
    handle.shutdown();
    running.await??;
    Ok(())
}
