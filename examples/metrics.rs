//! Prometheus metrics: `cargo run --example metrics` serves them at
//! `http://127.0.0.1:9464/metrics` (or `METRICS_PORT`) while jobs run, then prints one
//! scrape. Any `metrics` recorder works the same way; install it before starting workers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use jobqueue::{async_trait, Client, Job, JobContext, JobError, Perform, Worker};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "reports", idempotent)]
struct BuildReport {
    n: u64,
}

#[async_trait]
impl Perform for BuildReport {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(5 * (self.n % 4))).await;
        if self.n % 10 == 9 {
            return Err(JobError::new("the report service timed out"));
        }
        Ok(())
    }

    fn retry_in(&self, _: u32, _: &JobError) -> Option<Duration> {
        Some(Duration::from_millis(200))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("METRICS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9464);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;
    println!("metrics at http://{addr}/metrics");

    let broker = common::broker("metrics").await?;
    let client = Client::new(broker.clone());
    for n in 0..50 {
        client.enqueue(&BuildReport { n }).await?;
    }
    let worker = Worker::builder(broker)
        .register::<BuildReport>()
        .configure(|c| c.metrics_interval = Duration::from_millis(500));
    common::run_for(worker, Duration::from_secs(2)).await?;

    let scrape = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    for line in scrape.lines().filter(|l| l.starts_with("jobqueue_")) {
        println!("{line}");
    }
    Ok(())
}
