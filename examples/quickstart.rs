//! Enqueue a few jobs and run them, with no server: `cargo run --example quickstart`.
//! With `REDIS_URL` set (e.g. `redis://127.0.0.1:6379`) the same jobs go through Redis.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobqueue::{async_trait, Admin, Client, Job, JobContext, JobError, Perform, SortedSet, Worker};
use serde::{Deserialize, Serialize};

/// Jobs that have finished one way or another.
static SETTLED: AtomicUsize = AtomicUsize::new(0);

/// Idempotent: safe to run twice, so it gets one retry.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "emails", idempotent)]
struct SendWelcome {
    user_id: u64,
}

#[async_trait]
impl Perform for SendWelcome {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        println!(
            "  [{}] welcome mail sent to user {}",
            ctx.queue, self.user_id
        );
        SETTLED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Fails on its first run and succeeds on its retry.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "sync", idempotent)]
struct SyncInventory {
    warehouse: String,
}

#[async_trait]
impl Perform for SyncInventory {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        if ctx.retries == 0 {
            println!(
                "  [{}] sync of {} failed (first run); it will be retried",
                ctx.queue, self.warehouse
            );
            return Err(JobError::new("inventory service timed out"));
        }
        println!(
            "  [{}] sync of {} succeeded on retry {}",
            ctx.queue, self.warehouse, ctx.retries
        );
        SETTLED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    // Sidekiq's backoff would wait 15-25 s; the demo retries after one second.
    fn retry_in(&self, _count: u32, _error: &JobError) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
}

/// Not idempotent: a failure is never retried, it goes to the dead set for a human.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "billing")]
struct ChargeCard {
    order_id: u64,
    cents: u64,
}

#[async_trait]
impl Perform for ChargeCard {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        SETTLED.fetch_add(1, Ordering::Relaxed);
        if self.cents > 100_000 {
            println!(
                "  [{}] order {} declined; not retried (not idempotent)",
                ctx.queue, self.order_id
            );
            return Err(JobError::new("amount over the card limit").with_class("CardDeclined"));
        }
        println!(
            "  [{}] order {} charged {} cents",
            ctx.queue, self.order_id, self.cents
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = common::broker("quickstart").await?;
    let client = Client::new(Arc::clone(&broker));
    let admin = Admin::new(Arc::clone(&broker));
    let dead_before = admin.set_size(SortedSet::Dead).await?;

    println!("enqueueing 5 jobs:");
    client
        .enqueue_bulk(&[SendWelcome { user_id: 1 }, SendWelcome { user_id: 2 }])
        .await?;
    client
        .enqueue(&SyncInventory {
            warehouse: "north".into(),
        })
        .await?;
    client
        .enqueue(&ChargeCard {
            order_id: 17,
            cents: 2_500,
        })
        .await?;
    client
        .enqueue_in(
            Duration::from_millis(500),
            &ChargeCard {
                order_id: 18,
                cents: 900_000,
            },
        )
        .await?;

    let worker = Worker::builder(Arc::clone(&broker))
        .concurrency(5)
        .register::<SendWelcome>()
        .register::<SyncInventory>()
        .register::<ChargeCard>()
        .build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run_until(std::future::pending()));

    let started = Instant::now();
    while SETTLED.load(Ordering::Relaxed) < 5 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give the last failure a moment to reach the dead set.
    let mut dead = admin.set_entries(SortedSet::Dead, 0, 100).await?;
    while dead.len() <= dead_before && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        dead = admin.set_entries(SortedSet::Dead, 0, 100).await?;
    }
    handle.shutdown();
    running.await??;

    println!("done in {:.1}s. dead set:", started.elapsed().as_secs_f64());
    for entry in dead.iter().skip(dead_before) {
        if let Ok(job) = &entry.job {
            println!(
                "  {} {}: {} ({})",
                job.class,
                serde_json::Value::from(job.args.clone()),
                job.error_message.as_deref().unwrap_or(""),
                job.error_class.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}
