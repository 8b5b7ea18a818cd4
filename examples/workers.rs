//! Dedicated worker processes sharing one Redis, as Sidekiq and Celery deployments run them:
//! three processes each own one kind of work, with concurrency tuned to it, and a default
//! process takes the rest.
//!
//! ```text
//! cargo run --example workers -- player_data   # one process per role, e.g. under systemd
//! cargo run --example workers -- push
//! cargo run --example workers -- bulk
//! cargo run --example workers -- default
//! cargo run --example workers -- demo          # starts all four, enqueues, stops them
//! ```
//! `REDIS_URL` picks the server (default `redis://127.0.0.1:6379`).

use std::process::{Child, Command};
use std::time::Duration;

use jobqueue::{
    async_trait, Client, Job, JobContext, JobError, Perform, Queues, RedisBroker, Worker,
};
use serde::{Deserialize, Serialize};

/// Who consumes what, and how many at once.
fn role(name: &str) -> Option<(Queues, usize)> {
    Some(match name {
        // CPU-light, latency-sensitive: many slots.
        "player_data" => (Queues::strict(["player_data"]), 20),
        // Waits on third-party push services: many slots.
        "push" => (Queues::strict(["push"]), 50),
        // Long bulk jobs: few slots so they never crowd the database.
        "bulk" => (Queues::strict(["bulk"]), 2),
        // Everything else; `critical` comes first twice as often as `default`.
        "default" => (Queues::weighted([("critical", 2), ("default", 1)]), 10),
        _ => return None,
    })
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
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let name = std::env::args().nth(1).unwrap_or_else(|| "demo".into());
    if name == "demo" {
        return demo(&url).await;
    }
    let (queues, concurrency) =
        role(&name).ok_or("role must be player_data, push, bulk, default or demo")?;
    println!(
        "pid {:>6} runs role {name}: queues {queues}, concurrency {concurrency}",
        std::process::id()
    );
    Worker::builder(RedisBroker::connect(&url).await?)
        .queues(queues)
        .concurrency(concurrency)
        .register::<RecomputeSegment>()
        .register::<SendPush>()
        .register::<NightlyExport>()
        .register::<Housekeeping>()
        .configure(|c| c.tag = name.clone())
        .build()?
        .run() // until SIGTERM or Ctrl-C
        .await?;
    Ok(())
}

/// Starts the four roles as processes, enqueues work for each, then stops them with SIGTERM.
async fn demo(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let mut children: Vec<Child> = ["player_data", "push", "bulk", "default"]
        .iter()
        .map(|role| Command::new(&exe).arg(role).env("REDIS_URL", url).spawn())
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
