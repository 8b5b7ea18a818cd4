//! Dedicated worker processes sharing one Redis, as Sidekiq and Celery deployments run them:
//! three processes each own one kind of work, with concurrency tuned to it, and a default
//! process takes the rest. Each is configured from environment variables alone, as a
//! Deployment's `env:` (or Helm values) would set them, through `jobqueue::runner`.
//!
//! ```text
//! JOBQUEUE_QUEUES=player_data JOBQUEUE_CONCURRENCY=20 cargo run --example workers -- worker
//! JOBQUEUE_QUEUES="critical,2 default" cargo run --example workers -- worker
//! cargo run --example workers -- worker -q push -c 50     # flags work too
//! cargo run --example workers -- demo   # starts the four roles, enqueues, stops them
//! ```
//! `REDIS_URL` picks the server (default `redis://127.0.0.1:6379`).

use std::process::{Child, Command};
use std::time::Duration;

use clap::Parser;
use jobqueue::runner::{self, WorkerArgs};
use jobqueue::{async_trait, Client, Job, JobContext, JobError, Perform, RedisBroker};
use serde::{Deserialize, Serialize};

/// The four roles of the deployment, as the environment of each process.
const ROLES: [(&str, &str, &str); 4] = [
    // CPU-light, latency-sensitive: many slots.
    ("player_data", "player_data", "20"),
    // Waits on third-party push services: many slots.
    ("push", "push", "50"),
    // Long bulk jobs: few slots so they never crowd the database.
    ("bulk", "bulk", "2"),
    // Everything else; `critical` comes first twice as often as `default`.
    ("default", "critical,2 default", "10"),
];

#[derive(Parser)]
enum Cli {
    /// Runs one worker process, configured by flags, environment and `--config`.
    Worker(WorkerArgs),
    /// Starts the four roles from environment variables alone, enqueues work, stops them.
    Demo,
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "player_data", idempotent)]
struct RecomputeSegment {
    segment_id: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "push", idempotent)]
struct SendPush {
    player_id: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "bulk", idempotent)]
struct NightlyExport {
    day: String,
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "default", idempotent)]
struct Housekeeping {
    task: String,
}

/// Each job says which process ran it.
fn report(ctx: &JobContext, what: String) {
    println!("pid {:>6} [{:<11}] {what}", std::process::id(), ctx.queue);
}

#[async_trait]
impl Perform for RecomputeSegment {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        report(ctx, format!("segment {} recomputed", self.segment_id));
        Ok(())
    }
}

#[async_trait]
impl Perform for SendPush {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        report(ctx, format!("push sent to player {}", self.player_id));
        Ok(())
    }
}

#[async_trait]
impl Perform for NightlyExport {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        report(ctx, format!("export of {} written", self.day));
        Ok(())
    }
}

#[async_trait]
impl Perform for Housekeeping {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        report(ctx, format!("housekeeping: {}", self.task));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse() {
        Cli::Worker(args) => {
            println!("pid {:>6} starts: {args:?}", std::process::id());
            runner::run(args, |w| {
                w.register::<RecomputeSegment>()
                    .register::<SendPush>()
                    .register::<NightlyExport>()
                    .register::<Housekeeping>()
            })
            .await?;
            Ok(())
        }
        Cli::Demo => {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            demo(&url).await
        }
    }
}

/// Starts the four roles as processes configured by their environment alone, enqueues work
/// for each, then stops them with SIGTERM.
async fn demo(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let mut children: Vec<Child> = ROLES
        .iter()
        .map(|(tag, queues, concurrency)| {
            Command::new(&exe)
                .arg("worker")
                .env("REDIS_URL", url)
                .env("JOBQUEUE_QUEUES", queues)
                .env("JOBQUEUE_CONCURRENCY", concurrency)
                .env("JOBQUEUE_TAG", tag)
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let client = Client::new(RedisBroker::connect(url).await?);
    let segments: Vec<_> = (1..=3)
        .map(|segment_id| RecomputeSegment { segment_id })
        .collect();
    client.enqueue_bulk(&segments).await?;
    client.enqueue(&SendPush { player_id: 42 }).await?;
    client
        .enqueue(&NightlyExport {
            day: "2026-11-21".into(),
        })
        .await?;
    client
        .enqueue(&Housekeeping {
            task: "vacuum sessions".into(),
        })
        .await?;
    client
        .enqueue_to(
            "critical",
            &Housekeeping {
                task: "rotate keys".into(),
            },
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    for child in &mut children {
        Command::new("kill").arg(child.id().to_string()).status()?;
    }
    for child in &mut children {
        child.wait()?;
    }
    Ok(())
}
