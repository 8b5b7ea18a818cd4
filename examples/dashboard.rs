//! The web dashboard with jobs flowing through it: `cargo run --example dashboard`, then
//! open the printed address. Jobs run in the in-memory broker, or in Redis when
//! `REDIS_URL` is set; some fail and are retried, some die, some wait scheduled, one
//! periodic job ticks every 30 s. `PORT` picks the port (default: a free one). Ctrl-C stops.

mod common;

use std::sync::Arc;
use std::time::Duration;

use jobqueue::schedule::Periodic;
use jobqueue::{async_trait, Client, Job, JobContext, JobError, Perform, Worker};
use serde::{Deserialize, Serialize};

/// A number from 0 to 99 that looks random and is the same on every run.
fn roll(seed: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % 100
}

/// Sends an email; the token is `sensitive`, so the dashboard never shows it.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "emails", idempotent, sensitive = "token")]
struct SendEmail {
    user_id: u64,
    token: String,
}

#[async_trait]
impl Perform for SendEmail {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(5 + roll(self.user_id) * 2)).await;
        if roll(self.user_id + 1) < 10 {
            return Err(
                JobError::new("SMTP server said 451: try again later").with_class("SmtpError")
            );
        }
        Ok(())
    }

    fn retry_in(&self, _count: u32, _error: &JobError) -> Option<Duration> {
        Some(Duration::from_secs(20))
    }
}

/// Resizes an image: quick, never fails.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "images", idempotent)]
struct ResizeImage {
    image_id: u64,
    width: u32,
}

#[async_trait]
impl Perform for ResizeImage {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(roll(self.image_id) * 3)).await;
        Ok(())
    }
}

/// Charges a card: not idempotent, so a failure goes straight to the dead set.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "billing")]
struct ChargeCard {
    order_id: u64,
    cents: u64,
}

#[async_trait]
impl Perform for ChargeCard {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        if roll(self.order_id) < 5 {
            return Err(
                JobError::new("card declined: insufficient funds").with_class("CardDeclined")
            );
        }
        Ok(())
    }
}

/// A report, run on a schedule and by hand.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "reports", idempotent)]
struct SalesReport {
    region: String,
}

#[async_trait]
impl Perform for SalesReport {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = common::broker("dashboard_demo").await?;
    let client = Client::new(Arc::clone(&broker));

    let port = std::env::var("PORT").unwrap_or_else(|_| "0".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let app = axum::Router::new().nest("/jobs", jobqueue_web::router(Arc::clone(&broker)));
    println!("dashboard: http://{}/jobs", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let report = SalesReport {
        region: "emea".into(),
    };
    let worker = Worker::builder(Arc::clone(&broker))
        .concurrency(10)
        .register::<SendEmail>()
        .register::<ResizeImage>()
        .register::<ChargeCard>()
        .register::<SalesReport>()
        .periodic(Periodic::every(
            "sales-report",
            Duration::from_secs(30),
            &report,
        )?)
        .build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run_until(async {
        let _ = tokio::signal::ctrl_c().await;
    }));

    // Work waiting for later, so the Scheduled page has something to show.
    for n in 0..40u64 {
        let job = ResizeImage {
            image_id: n,
            width: 320,
        };
        client
            .enqueue_in(Duration::from_secs(600 + n * 90), &job)
            .await?;
    }
    // About twenty jobs a second until Ctrl-C.
    let mut n = 0u64;
    while !running.is_finished() {
        n += 1;
        let token = format!("secret-{n}");
        client.enqueue(&SendEmail { user_id: n, token }).await?;
        client
            .enqueue(&ResizeImage {
                image_id: n,
                width: 640,
            })
            .await?;
        if n.is_multiple_of(4) {
            let cents = 500 + n % 7 * 1_000;
            client.enqueue(&ChargeCard { order_id: n, cents }).await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.shutdown();
    running.await??;
    Ok(())
}
