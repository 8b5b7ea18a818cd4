//! A batch: an import split into one job per row, with a job that runs once when every
//! row has finished (`on_complete`) and one when every row has succeeded (`on_success`);
//! a row job adds a retry row to the batch from inside it. `cargo run --example batch`
//! (in memory; `REDIS_URL` for Redis).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobqueue::client::Batch;
use jobqueue::{async_trait, Client, Job, JobContext, JobError, Perform, Worker};
use serde::{Deserialize, Serialize};

static REPORTED: AtomicBool = AtomicBool::new(false);

/// Imports one row; row 7 needs a second pass, added to the same batch.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "import", idempotent)]
struct ImportRow {
    row: u64,
    second_pass: bool,
}

#[async_trait]
impl Perform for ImportRow {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        if self.row == 7 && !self.second_pass {
            let again = ImportRow {
                row: 7,
                second_pass: true,
            };
            ctx.enqueue_in_batch(&again)
                .await
                .map_err(|e| JobError::new(e.to_string()))?;
        }
        println!("  row {} imported (batch {:?})", self.row, ctx.batch_id());
        Ok(())
    }
}

/// Runs once, when the batch is through.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "import")]
struct ImportReport {
    file: String,
    outcome: String,
}

#[async_trait]
impl Perform for ImportReport {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        println!("{}: {}", self.file, self.outcome);
        REPORTED.store(true, Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = common::broker("batch").await?;
    let client = Client::new(Arc::clone(&broker));
    let report = |outcome: &str| ImportReport {
        file: "rows.csv".into(),
        outcome: outcome.into(),
    };
    let batch = Batch::new("import of rows.csv")
        .on_complete(&report("every row finished"))?
        .on_success(&report("every row succeeded"))?;
    let rows: Vec<ImportRow> = (0..10)
        .map(|row| ImportRow {
            row,
            second_pass: false,
        })
        .collect();
    client.enqueue_batch(&batch, &rows).await?;

    let worker = Worker::builder(Arc::clone(&broker))
        .register::<ImportRow>()
        .register::<ImportReport>()
        .build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run_until(std::future::pending()));
    let started = Instant::now();
    while !REPORTED.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A callback runs only once the batch has finished.
    let status = client.batch_status(batch.id()).await?.ok_or("no batch")?;
    println!(
        "batch {}: {} jobs, {} succeeded, {} failed, finished: {}",
        batch.id(),
        status.total,
        status.succeeded,
        status.failed,
        status.finished
    );
    handle.shutdown();
    running.await??;
    Ok(())
}
