//! Health probes for an orchestrator: `cargo run --example health` serves
//! `GET /live` and `GET /ready` (200 or 503) on `127.0.0.1:8081` (or `HEALTH_PORT`) beside a
//! running worker, as a Kubernetes liveness and readiness probe would call them.

mod common;

use std::time::Duration;

use jobqueue::{async_trait, Job, JobContext, JobError, Perform, Worker, WorkerHandle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Serialize, Deserialize, Job)]
struct Ping;

#[async_trait]
impl Perform for Ping {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// Answers one probe: 200 when the check holds, 503 when it does not, 404 elsewhere.
async fn answer(mut stream: tokio::net::TcpStream, handle: WorkerHandle) -> std::io::Result<()> {
    let mut request = [0u8; 1024];
    let read = stream.read(&mut request).await?;
    let line = String::from_utf8_lossy(&request[..read]);
    let health = handle.health();
    let check = if line.starts_with("GET /live ") {
        Some(health.live)
    } else if line.starts_with("GET /ready ") {
        Some(health.ready)
    } else {
        None
    };
    let status = match check {
        Some(true) => "200 OK",
        Some(false) => "503 Service Unavailable",
        None => "404 Not Found",
    };
    let body = format!("{health:?}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("HEALTH_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8081);
    let broker = common::broker("health").await?;
    let worker = Worker::builder(broker).register::<Ping>().build()?;
    let handle = worker.handle();
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("probes at http://127.0.0.1:{port}/live and /ready");
    let probes = handle.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = probes.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, handle).await {
                    eprintln!("probe: {e}");
                }
            });
        }
    });
    let seconds = std::env::var("RUN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    worker
        .run_until(tokio::time::sleep(Duration::from_secs(seconds)))
        .await?;
    Ok(())
}
