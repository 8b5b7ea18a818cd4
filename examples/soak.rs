//! A soak run: a steady load for a long time, with worker processes killed (`kill -9`) now
//! and then, to see that nothing grows without bound. Not a test: it prints figures.
//!
//! ```text
//! cargo run --release --example soak -- --redis redis://127.0.0.1:6379/15 \
//!     [--minutes 60] [--rate 200] [--workers 3] [--kill-every 300]
//! ```
//!
//! It flushes the database first, then runs `--workers` worker processes (this program
//! again, as `soak worker URL`) and a producer in this process enqueueing `--rate` jobs a
//! second: plain jobs, unique jobs, collapsible jobs, jobs under a per-tenant concurrency
//! limit, jobs due a few seconds later, jobs that fail once and retry, jobs that declare a
//! follow-up, and jobs in batches. Every `--kill-every` seconds it kills one worker with
//! `SIGKILL` and starts another. Once a minute it samples each worker's resident memory,
//! Redis's `used_memory`, and the number of keys by prefix, and prints a line; at the end it
//! prints the first and last samples side by side, and how many jobs were enqueued and
//! completed. Its workers beat every second with a 10 s lifetime, so a killed worker's jobs
//! are recovered within seconds.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jobqueue::client::Batch;
use jobqueue::{async_trait, Client, Job, JobContext, JobError, Perform, Queues, Worker};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

/// Completions, counted in Redis by the workers (a counter, not a growing list).
const DONE: &str = "soak:done";

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "soak", idempotent)]
struct Plain {
    n: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(
    queue = "soak",
    idempotent,
    unique(lock = "until_executed", ttl = "10m")
)]
struct Unique {
    n: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "soak", idempotent, collapsible(key = "account"))]
struct Collapsed {
    account: u64,
    n: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "soak", idempotent, concurrency(limit = 2, key = "tenant"))]
struct Limited {
    tenant: u64,
    n: u64,
}

/// Fails on its first run, succeeds on its retry (due within a second).
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "soak", idempotent, retries = 3)]
struct Flaky {
    n: u64,
}

/// Declares a `Plain` as its follow-up.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "soak", idempotent)]
struct Chained {
    n: u64,
}

/// A short piece of work, then one completion counted.
async fn work(ctx: &JobContext, n: u64) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_millis(5 + n % 20)).await;
    let _ = ctx;
    count_done().await;
    Ok(())
}

static REDIS: std::sync::OnceLock<redis::aio::ConnectionManager> = std::sync::OnceLock::new();

async fn count_done() {
    if let Some(conn) = REDIS.get() {
        let mut conn = conn.clone();
        let _: Result<i64, _> = redis::cmd("INCR").arg(DONE).query_async(&mut conn).await;
    }
}

#[async_trait]
impl Perform for Plain {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        work(ctx, self.n).await
    }
}

#[async_trait]
impl Perform for Unique {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        work(ctx, self.n).await
    }
}

#[async_trait]
impl Perform for Collapsed {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        work(ctx, self.n).await
    }
}

#[async_trait]
impl Perform for Limited {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        work(ctx, self.n).await
    }
}

#[async_trait]
impl Perform for Flaky {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        if ctx.retries == 0 {
            return Err(JobError::new("the first run fails"));
        }
        work(ctx, self.n).await
    }

    fn retry_in(&self, _: u32, _: &JobError) -> Option<Duration> {
        Some(Duration::from_millis(500))
    }
}

#[async_trait]
impl Perform for Chained {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        ctx.then(&Plain { n: self.n })?;
        work(ctx, self.n).await
    }
}

struct Options {
    redis: String,
    minutes: u64,
    rate: u64,
    workers: usize,
    kill_every: u64,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        redis: "redis://127.0.0.1:6379/15".into(),
        minutes: 60,
        rate: 200,
        workers: 3,
        kill_every: 300,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--redis" => options.redis = value.clone(),
            "--minutes" => options.minutes = number()?,
            "--rate" => options.rate = number()?.max(1),
            "--workers" => options.workers = usize::try_from(number()?).unwrap_or(1).max(1),
            "--kill-every" => options.kill_every = number()?.max(1),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("worker") {
        let url = args.next().ok_or("usage: soak worker URL")?;
        return worker(&url).await;
    }
    let options = options()?;
    let client = redis::Client::open(options.redis.as_str())?;
    let mut conn = redis::aio::ConnectionManager::new(client).await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;
    let _ = REDIS.set(conn.clone());
    let broker = jobqueue::RedisBroker::connect(&options.redis).await?;
    let jobs = Client::new(broker);

    let mut workers: Vec<Child> = Vec::new();
    for _ in 0..options.workers {
        workers.push(spawn_worker(&options.redis)?);
    }
    let enqueued = AtomicU64::new(0);
    let started = Instant::now();
    let end = started + Duration::from_secs(options.minutes * 60);
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = started;
    let mut next_kill = started + Duration::from_secs(options.kill_every);
    let mut kills = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let per_tick = (options.rate / 10).max(1);
    while Instant::now() < end {
        ticker.tick().await;
        for _ in 0..per_tick {
            let n = enqueued.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = enqueue_one(&jobs, n).await {
                eprintln!("enqueue {n}: {e}");
            }
        }
        if Instant::now() >= next_kill {
            next_kill += Duration::from_secs(options.kill_every);
            let victim = workers.remove(kills % workers.len());
            kill(victim).await;
            kills += 1;
            workers.push(spawn_worker(&options.redis)?);
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(60);
            let sample = Sample::take(&mut conn, &workers, started.elapsed()).await?;
            println!("{}", sample.line());
            samples.push(sample);
        }
    }
    // Let the last jobs finish, then a last sample.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let last = Sample::take(&mut conn, &workers, started.elapsed()).await?;
    println!("{}", last.line());
    for worker in workers {
        kill(worker).await;
    }
    let done: u64 = redis::cmd("GET")
        .arg(DONE)
        .query_async::<Option<u64>>(&mut conn)
        .await?
        .unwrap_or(0);
    println!(
        "enqueued={} completions={done} kills={kills} minutes={}",
        enqueued.load(Ordering::Relaxed),
        options.minutes
    );
    if let Some(first) = samples.get(1).or(samples.first()) {
        println!("first and last samples:\n{}\n{}", first.line(), last.line());
        let mut prefixes: Vec<&String> = first.keys.keys().chain(last.keys.keys()).collect();
        prefixes.sort();
        prefixes.dedup();
        for prefix in prefixes {
            println!(
                "keys {prefix}: {} -> {}",
                first.keys.get(prefix).unwrap_or(&0),
                last.keys.get(prefix).unwrap_or(&0)
            );
        }
    }
    Ok(())
}

/// Enqueues job number `n` of the mix.
async fn enqueue_one(jobs: &Client, n: u64) -> Result<(), jobqueue::Error> {
    match n % 10 {
        0..=2 => jobs.enqueue(&Plain { n }).await.map(drop),
        3 => jobs.enqueue(&Unique { n }).await.map(drop),
        4 => jobs
            .enqueue(&Collapsed { account: n % 50, n })
            .await
            .map(drop),
        5 | 6 => jobs
            .enqueue(&Limited { tenant: n % 100, n })
            .await
            .map(drop),
        7 => jobs
            .enqueue_in(Duration::from_secs(1 + n % 5), &Plain { n })
            .await
            .map(drop),
        8 => jobs.enqueue(&Flaky { n }).await.map(drop),
        _ if n % 100 == 9 => {
            let batch = Batch::new(format!("batch {n}")).on_complete(&Plain { n })?;
            let members: Vec<Plain> = (0..5).map(|k| Plain { n: n + k }).collect();
            jobs.enqueue_batch(&batch, &members).await.map(drop)
        }
        _ => jobs.enqueue(&Chained { n }).await.map(drop),
    }
}

fn spawn_worker(url: &str) -> std::io::Result<Child> {
    let program = std::env::current_exe()?;
    Command::new(program)
        .arg("worker")
        .arg(url)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

async fn kill(mut worker: Child) {
    let _ = worker.start_kill();
    let _ = worker.wait().await;
}

async fn worker(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = redis::Client::open(url)?;
    let _ = REDIS.set(redis::aio::ConnectionManager::new(client).await?);
    let broker = jobqueue::RedisBroker::connect(url).await?;
    Worker::builder(broker)
        .queues(Queues::strict(["soak"]))
        .concurrency(20)
        .configure(|c| {
            c.heartbeat_interval = Duration::from_secs(1);
            c.heartbeat_ttl = Duration::from_secs(10);
            c.recovery_interval = Duration::from_secs(2);
        })
        .register::<Plain>()
        .register::<Unique>()
        .register::<Collapsed>()
        .register::<Limited>()
        .register::<Flaky>()
        .register::<Chained>()
        .build()?
        .run()
        .await?;
    Ok(())
}

/// One look at the run.
struct Sample {
    at: Duration,
    worker_rss_kb: Vec<u64>,
    redis_memory: u64,
    keys: BTreeMap<String, u64>,
    total_keys: u64,
    /// Jobs waiting: the queue's length, then the sizes of `schedule`, `retry` and `dead`.
    backlog: [u64; 4],
}

impl Sample {
    async fn take(
        conn: &mut redis::aio::ConnectionManager,
        workers: &[Child],
        at: Duration,
    ) -> Result<Self, redis::RedisError> {
        let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
        let redis_memory = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut keys: BTreeMap<String, u64> = BTreeMap::new();
        let mut cursor: u64 = 0;
        let mut total_keys = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            for key in page {
                total_keys += 1;
                *keys.entry(prefix(&key)).or_default() += 1;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let (queued, scheduled, retries, dead): (u64, u64, u64, u64) = redis::pipe()
            .cmd("LLEN")
            .arg("queue:soak")
            .cmd("ZCARD")
            .arg("schedule")
            .cmd("ZCARD")
            .arg("retry")
            .cmd("ZCARD")
            .arg("dead")
            .query_async(conn)
            .await?;
        let worker_rss_kb = workers
            .iter()
            .filter_map(Child::id)
            .map(|pid| rss_kb(pid).unwrap_or(0))
            .collect();
        Ok(Self {
            at,
            worker_rss_kb,
            redis_memory,
            keys,
            total_keys,
            backlog: [queued, scheduled, retries, dead],
        })
    }

    fn line(&self) -> String {
        format!(
            "minute={:.0} worker_rss_kb={:?} redis_used_memory={} queued/scheduled/retry/dead={:?} keys={} by_prefix={:?}",
            self.at.as_secs_f64() / 60.0,
            self.worker_rss_kb,
            self.redis_memory,
            self.backlog,
            self.total_keys,
            self.keys
        )
    }
}

/// A key's kind: its name up to the part that varies per job, tenant or process.
fn prefix(key: &str) -> String {
    let parts: Vec<&str> = key.split(':').collect();
    let kept = match parts.first() {
        Some(&"jobqueue") if parts.get(1) == Some(&"lock") => 3,
        Some(&"jobqueue") => 2,
        Some(&"queue") | Some(&"stat") => 2,
        _ => 1,
    };
    let mut kind = parts[..kept.min(parts.len())].join(":");
    if parts.len() > kept {
        kind.push_str(":*");
    }
    kind
}

/// A process's resident memory in KiB (Linux).
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
