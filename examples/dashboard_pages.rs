//! How long the dashboard's pages take with 100,000 jobs in the scheduled set and in a
//! queue: the first, middle and last page, a filtered page, a job's detail with and
//! without the position its list link carries. Each page is fetched over loopback HTTP,
//! as a browser would, and timed over several requests (median and slowest).
//!
//! ```text
//! cargo run --release --example dashboard_pages -- --redis redis://127.0.0.1:6379/15
//! cargo run --release --example dashboard_pages            # the in-memory broker
//! ```
//! The Redis database given is flushed first.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use jobqueue::backend::Push;
use jobqueue::{Broker, Envelope, MemoryBroker, RedisBroker};

const JOBS: usize = 100_000;
const ROUNDS: usize = 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let redis = args
        .iter()
        .position(|a| a == "--redis")
        .and_then(|i| args.get(i + 1).cloned());
    let broker: Arc<dyn Broker> = match &redis {
        Some(url) => {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("FLUSHDB").exec_async(&mut conn).await?;
            Arc::new(RedisBroker::connect(url).await?)
        }
        None => Arc::new(MemoryBroker::new()),
    };
    println!(
        "broker: {}; {JOBS} jobs scheduled and {JOBS} queued",
        redis.as_deref().unwrap_or("in memory")
    );

    // One job in ten thousand is of the class the filtered page looks for.
    let start = SystemTime::now() + Duration::from_secs(3600);
    let mut middle_jid = String::new();
    for batch in 0..JOBS / 1_000 {
        let mut pushes = Vec::with_capacity(2_000);
        for i in batch * 1_000..(batch + 1) * 1_000 {
            let class = if i % 10_000 == 5_000 {
                "RareJob"
            } else {
                "CommonJob"
            };
            let job = Envelope::new(class, "big", vec![serde_json::json!({ "n": i })]);
            if i == JOBS / 2 {
                middle_jid = job.jid.clone();
            }
            let at = start + Duration::from_millis(i as u64);
            pushes.push(Push {
                queue: "big".into(),
                payload: job.to_json(),
                at: Some(at),
            });
            pushes.push(Push {
                queue: "big".into(),
                payload: job.to_json(),
                at: None,
            });
        }
        broker.push(&pushes).await?;
    }

    let app = axum::Router::new().nest("/jobs", jobqueue_web::router(Arc::clone(&broker)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/jobs", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();

    let last_page = JOBS.div_ceil(25);
    let pages = [
        ("overview", "/".to_owned()),
        ("scheduled, first page", "/scheduled".to_owned()),
        (
            "scheduled, middle page",
            format!("/scheduled?page={}", last_page / 2),
        ),
        (
            "scheduled, last page",
            format!("/scheduled?page={last_page}"),
        ),
        (
            "scheduled, filtered (5,000 scanned)",
            "/scheduled?class=RareJob".to_owned(),
        ),
        (
            "job detail, position given",
            format!("/scheduled/{middle_jid}?at={}", JOBS / 2),
        ),
        (
            "job detail, no position (full scan)",
            format!("/scheduled/{middle_jid}"),
        ),
        ("queue, first page", "/queues/big".to_owned()),
        ("queue, last page", format!("/queues/big?page={last_page}")),
    ];
    println!("{:<40} {:>10} {:>10}", "page", "median", "slowest");
    for (name, path) in pages {
        // A router nested at `/jobs` answers `/jobs`, not `/jobs/`.
        let url = if path == "/" {
            base.clone()
        } else {
            format!("{base}{path}")
        };
        let mut times = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let response = http.get(&url).send().await?;
            let status = response.status();
            let body = response.text().await?;
            times.push(started.elapsed());
            if !status.is_success() {
                return Err(format!("{url}: {status}: {body}").into());
            }
        }
        times.sort();
        println!(
            "{name:<40} {:>8.2}ms {:>8.2}ms",
            times[ROUNDS / 2].as_secs_f64() * 1e3,
            times[ROUNDS - 1].as_secs_f64() * 1e3
        );
    }
    Ok(())
}
