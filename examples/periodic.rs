//! Periodic jobs: a cron job in a time zone and an interval job, registered on two worker
//! instances at once (as two processes would); every tick still runs once.
//! `cargo run --example periodic` (in memory, or Redis with `REDIS_URL`).

mod common;

use std::time::Duration;

use jobqueue::schedule::Periodic;
use jobqueue::{async_trait, Job, JobContext, JobError, Perform, Worker};
use serde::{Deserialize, Serialize};

/// Runs on a cron schedule.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "reports", idempotent)]
struct Digest {
    kind: String,
}

/// Runs every few seconds.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "health", idempotent)]
struct Heartbeat;

#[async_trait]
impl Perform for Digest {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        println!("  {} digest by job {}", self.kind, &ctx.jid[..8]);
        Ok(())
    }
}

#[async_trait]
impl Perform for Heartbeat {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        println!("  health check by job {}", &ctx.jid[..8]);
        Ok(())
    }
}

fn worker(
    broker: std::sync::Arc<dyn jobqueue::Broker>,
) -> Result<jobqueue::WorkerBuilder, jobqueue::Error> {
    // In production: "0 7 * * MON-FRI" for 07:00 on weekdays. Here: every 2 seconds.
    let digest = Digest {
        kind: "activity".into(),
    };
    let tz = jobqueue::chrono_tz::Europe::Berlin;
    Ok(Worker::builder(broker)
        .register::<Digest>()
        .register::<Heartbeat>()
        .periodic(Periodic::cron(
            "activity-digest",
            "*/2 * * * * *",
            tz,
            &digest,
        )?)
        .periodic(Periodic::every(
            "health",
            Duration::from_secs(3),
            &Heartbeat,
        )?))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = common::broker("periodic").await?;
    println!("two workers, both scheduling, for 7 seconds:");
    let (a, b) = tokio::join!(
        common::run_for(worker(broker.clone())?, Duration::from_secs(7)),
        common::run_for(worker(broker.clone())?, Duration::from_secs(7)),
    );
    a?;
    b?;
    Ok(())
}
