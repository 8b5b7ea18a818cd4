//! Uniqueness locks: a job enqueued twice is refused, or answered by the job already
//! queued, and a while-executing lock keeps twins from running at once.
//! `cargo run --example unique` (in memory, or Redis with `REDIS_URL`).

mod common;

use std::time::Duration;

use jobqueue::{
    async_trait, Client, Error, Job, JobContext, JobError, MechanismConfig, Perform, Worker,
};
use serde::{Deserialize, Serialize};

/// Locked from enqueue until it has run; a duplicate is refused.
#[derive(Serialize, Deserialize, Job)]
#[job(
    queue = "imports",
    idempotent,
    unique(ttl = "30m", on_conflict = "reject")
)]
struct ImportFile {
    path: String,
}

/// Never two at once per account; a twin waits and runs after.
#[derive(Serialize, Deserialize, Job)]
#[job(
    queue = "imports",
    idempotent,
    unique(lock = "while_executing", key = "account_id")
)]
struct SyncAccount {
    account_id: u64,
    batch: u32,
}

#[async_trait]
impl Perform for ImportFile {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        println!("  imported {}", self.path);
        Ok(())
    }
}

#[async_trait]
impl Perform for SyncAccount {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        println!(
            "  sync of account {} batch {}: start",
            self.account_id, self.batch
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        println!(
            "  sync of account {} batch {}: end",
            self.account_id, self.batch
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = common::broker("unique").await?;
    let client = Client::new(broker.clone());

    // A new file name per run, so a run stopped halfway leaves nothing in the next one's way.
    let run = &jobqueue::envelope::new_jid()[..6];
    let file = ImportFile {
        path: format!("/data/import-{run}.csv"),
    };
    let jid = client.enqueue(&file).await?;
    println!("import enqueued as {jid}");
    match client.enqueue(&file).await {
        Err(Error::Skipped { reason, .. }) => println!("duplicate refused: {reason}"),
        other => println!("unexpected: {other:?}"),
    }
    for batch in 1..=3 {
        client
            .enqueue(&SyncAccount {
                account_id: 9,
                batch,
            })
            .await?;
    }

    let worker = || {
        Worker::builder(broker.clone())
            .configure(|c| {
                c.mechanisms = MechanismConfig::default().conflict_wait(Duration::from_millis(50))
            })
            .concurrency(5)
            .register::<ImportFile>()
            .register::<SyncAccount>()
    };
    common::run_for(worker(), Duration::from_secs(2)).await?;

    // The lock was released when the import ran: the file can be imported again.
    let again = client.enqueue(&file).await?;
    println!("after it ran, the import is accepted again as {again}");
    common::run_for(worker(), Duration::from_millis(500)).await?;
    Ok(())
}
