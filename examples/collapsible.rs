//! Collapsible jobs: a burst of refreshes for one account runs once, the newest.
//! `cargo run --example collapsible` (in memory, or Redis with `REDIS_URL`).

mod common;

use std::time::Duration;

use jobqueue::{async_trait, Admin, Client, Job, JobContext, JobError, Perform, Worker};
use serde::{Deserialize, Serialize};

/// Recomputes an account's balance from scratch: only the latest request matters.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "balances", idempotent, collapsible(key = "account_id"))]
struct RefreshBalance {
    account_id: u64,
    /// Why it was asked for; not part of the key.
    reason: String,
}

#[async_trait]
impl Perform for RefreshBalance {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        println!(
            "  ran: account {} ({}) job {}",
            self.account_id, self.reason, ctx.jid
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = common::broker("collapsible").await?;
    let before = Admin::new(broker.clone()).stats().await?;

    // Every client records the newest job per key: the attribute asks for it.
    let client = Client::new(broker.clone());
    println!("enqueueing 5 refreshes for account 1 and 1 for account 2");
    for deposit in 1..=5 {
        let reason = format!("deposit {deposit}");
        client
            .enqueue(&RefreshBalance {
                account_id: 1,
                reason,
            })
            .await?;
    }
    client
        .enqueue(&RefreshBalance {
            account_id: 2,
            reason: "withdrawal".into(),
        })
        .await?;

    // Every worker's stopper skips every job that is not the newest.
    let worker = Worker::builder(broker.clone()).register::<RefreshBalance>();
    common::run_for(worker, Duration::from_secs(1)).await?;

    let after = Admin::new(broker).stats().await?;
    println!(
        "processed {}, skipped as stale {}",
        after.processed - before.processed,
        after.skipped - before.skipped
    );
    Ok(())
}
