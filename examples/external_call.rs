//! A job that calls a third-party service: the call is retried (twice, with backoff and the
//! same idempotency key), not the job. The service here is a stand-in on loopback that
//! fails twice with 503, then succeeds.
//! `cargo run --example external_call`.

mod common;
#[path = "../tests/support/scripted_http.rs"]
mod scripted_http;

use std::time::Duration;

use jobqueue::{async_trait, Client, Job, JobContext, JobError, Perform, Worker};
use jobqueue_middleware::external::classify_reqwest;
use jobqueue_middleware::{call, CallPolicy};
use serde::{Deserialize, Serialize};

/// Not idempotent and external: no job-level retry, 2 call-level retries, and a
/// while-executing lock so two copies never call out at once.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "push", external)]
struct SendPush {
    url: String,
    player_id: u64,
}

#[async_trait]
impl Perform for SendPush {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        let http = reqwest::Client::new();
        let policy = CallPolicy::for_job(&Self::OPTIONS).min_delay(Duration::from_millis(100));
        let status = call(ctx, "push-provider", &policy, |attempt| {
            println!(
                "  attempt {} with Idempotency-Key {}…",
                attempt.attempt,
                &attempt.idempotency_key[..12]
            );
            let request = http
                .post(&self.url)
                .header("Idempotency-Key", attempt.idempotency_key)
                .timeout(Duration::from_secs(5));
            async move { classify_reqwest(request.send().await).map(|r| r.status()) }
        })
        .await?;
        println!("  push to player {} accepted: {status}", self.player_id);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = scripted_http::serve(&[503, 503, 200]).await;
    let broker = common::broker("external").await?;
    // Not idempotent and external: the attribute implies a while-executing lock, which
    // every client and worker applies by itself.
    Client::new(broker.clone())
        .enqueue(&SendPush {
            url: service.url.clone(),
            player_id: 42,
        })
        .await?;
    let worker = Worker::builder(broker).register::<SendPush>();
    common::run_for(worker, Duration::from_secs(2)).await?;
    println!(
        "the service saw {} requests",
        service.keys.lock().map(|k| k.len()).unwrap_or(0)
    );
    Ok(())
}
