//! Load test against Redis. Three modes; each prints its figures on its last line.
//!
//! ```text
//! cargo run --release --example loadtest -- --jobs N --concurrency C [--redis URL]
//!     jobs=N concurrency=C enqueue_s=X drain_s=Y jobs_per_sec=Z process_cpu_us_per_job=..
//!     redis_cpu_us_per_job=.. peak_rss_kb=..   (CPU over enqueue and drain)
//! cargo run --release --example loadtest -- --latency --rate R --seconds S [--concurrency C]
//!     p50_ms=.. p99_ms=.. max_ms=..
//! cargo run --release --example loadtest -- --scheduled --jobs N [--concurrency C]
//!     p50_late_ms=.. p99_late_ms=.. process_cpu_us_per_job=.. redis_cpu_us_per_job=..
//! cargo run --release --example loadtest -- --idle --seconds S [--concurrency C]
//!     redis_commands_per_sec=.. cpu_percent=..
//! ```
//! `--plain` makes the latency and scheduled modes' producer write to Redis itself, as a
//! producer that does not notify would (Ruby Sidekiq's client, `redis-cli`): a plain `LPUSH`
//! onto the queue, or a `ZADD` onto the schedule set. The figures are then pickup times.
//! `--ruby` makes the latency mode's producer Ruby Sidekiq's own client (`ruby-sidekiq`).
//! Options: `--redis URL` (default `redis://127.0.0.1:6379/15`; only that database is
//! flushed; several nodes, `redis://a:7000,b:7000`, are a Redis Cluster, emptied beforehand,
//! and run the drain mode only; a `postgres://` URL is the PostgreSQL broker, its tables
//! emptied here, drain mode only), `--mechanisms` (use jobs that are collapsible or unique by their number, so
//! every job pays for its collapse marker or uniqueness lock), `--limits concurrency|rate|both`
//! (use jobs with a per-tenant concurrency limit, rate limit or both, over a thousand
//! tenants, none reached, so every job pays for taking and freeing its slots), `--metrics`
//! (install the Prometheus recorder of `examples/metrics.rs`, so every metric call is
//! recorded, and print how many jobs it counted before the figures). Built with `--features
//! tracking`, it runs under the tracking allocator, which charges each job's allocations
//! to it: the figures then include what budget tracking costs.
//!
//! `--enqueue-only` and `--drain-only` split the drain mode across two processes: the
//! first empties the database and enqueues the jobs, the second drains what is there
//! without flushing, and waits for as many jobs as its `--jobs` says. Each prints its own
//! CPU per job and peak memory, so the second's are the worker's alone, without the
//! producer's bulk payloads in its heap:
//!
//! ```text
//! loadtest --enqueue-only --jobs N [--mechanisms|--limits ..]
//!     enqueued=N enqueue_s=X process_cpu_us_per_job=.. redis_cpu_us_per_job=.. peak_rss_kb=..
//! loadtest --drain-only --jobs N --concurrency C [--mechanisms|--limits ..]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobqueue::{
    async_trait, Broker, Client, Job, JobContext, JobError, Perform, Queues, RedisBroker, Worker,
    WorkerBuilder,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[cfg(feature = "tracking")]
#[global_allocator]
static ALLOCATOR: jobqueue::budget::TrackingAllocator =
    jobqueue::budget::TrackingAllocator::system();

/// Jobs finished, and a wake-up when the last one is.
struct Progress {
    done: AtomicU64,
    target: AtomicU64,
    finished: Notify,
    /// Milliseconds, per job: how late it started.
    samples: Mutex<Vec<f64>>,
}

static PROGRESS: Progress = Progress {
    done: AtomicU64::new(0),
    target: AtomicU64::new(u64::MAX),
    finished: Notify::const_new(),
    samples: Mutex::new(Vec::new()),
};

fn finish_one() {
    if PROGRESS.done.fetch_add(1, Ordering::Relaxed) + 1 == PROGRESS.target.load(Ordering::Relaxed)
    {
        PROGRESS.finished.notify_one();
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A no-op job with one integer argument.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "loadtest", idempotent)]
struct Noop(u64);

/// Collapsible by its number (each number once, so every job runs).
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "loadtest", idempotent, collapsible)]
struct NoopCollapsible(u64);

/// Unique by its number.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "loadtest", idempotent, unique)]
struct NoopUnique(u64);

/// Declares a no-op job limited per tenant (a thousand tenants, by its number) with
/// limits no tenant reaches, so every job pays for taking and freeing its slots.
macro_rules! limited_noop {
    ($(#[$doc:meta])* $name:ident, $($limits:tt)*) => {
        $(#[$doc])*
        #[derive(Serialize, Deserialize, Job)]
        #[job(queue = "loadtest", idempotent, $($limits)*)]
        struct $name {
            n: u64,
            tenant: u64,
        }

        impl $name {
            fn new(n: u64) -> Self {
                Self { n, tenant: n % 1000 }
            }
        }

        #[async_trait]
        impl Perform for $name {
            async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
                finish_one();
                Ok(())
            }
        }
    };
}

limited_noop!(
    /// At most 100 at once per tenant.
    NoopConcurrency, concurrency(limit = 100, key = "tenant")
);
limited_noop!(
    /// At most 100,000 starts a minute per tenant.
    NoopRate, rate(limit = 100000, per = "1m", key = "tenant")
);
limited_noop!(
    /// Both.
    NoopLimited,
    concurrency(limit = 100, key = "tenant"),
    rate(limit = 100000, per = "1m", key = "tenant")
);

/// Records how late it started: its argument is the time, in microseconds, it was due.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "loadtest", idempotent)]
struct Stamped(u64);

#[async_trait]
impl Perform for Noop {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        finish_one();
        Ok(())
    }
}

#[async_trait]
impl Perform for NoopCollapsible {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        finish_one();
        Ok(())
    }
}

#[async_trait]
impl Perform for NoopUnique {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        finish_one();
        Ok(())
    }
}

#[async_trait]
impl Perform for Stamped {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        let late_ms = now_us().saturating_sub(self.0) as f64 / 1000.0;
        if let Ok(mut samples) = PROGRESS.samples.lock() {
            samples.push(late_ms);
        }
        finish_one();
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Drain,
    Latency,
    Scheduled,
    Idle,
}

struct Options {
    mode: Mode,
    jobs: u64,
    concurrency: usize,
    rate: u64,
    seconds: u64,
    redis: String,
    mechanisms: bool,
    limits: Option<String>,
    plain: bool,
    ruby: bool,
    metrics: bool,
    /// Which halves of the drain mode run in this process.
    halves: Halves,
}

/// The drain mode's two halves: both in one process, or one of them.
#[derive(Clone, Copy, PartialEq)]
enum Halves {
    Both,
    EnqueueOnly,
    DrainOnly,
}

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        mode: Mode::Drain,
        jobs: 100_000,
        concurrency: 10,
        rate: 1000,
        seconds: 10,
        redis: "redis://127.0.0.1:6379/15".into(),
        mechanisms: false,
        limits: None,
        plain: false,
        ruby: false,
        metrics: false,
        halves: Halves::Both,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |text: String, name: &str| {
            text.parse::<u64>()
                .map_err(|_| format!("{name} takes a whole number, not `{text}`"))
        };
        match arg.as_str() {
            "--jobs" => o.jobs = number(value("--jobs")?, "--jobs")?,
            "--concurrency" => {
                o.concurrency = number(value("--concurrency")?, "--concurrency")? as usize
            }
            "--rate" => o.rate = number(value("--rate")?, "--rate")?,
            "--seconds" => o.seconds = number(value("--seconds")?, "--seconds")?,
            "--redis" => o.redis = value("--redis")?,
            "--latency" => o.mode = Mode::Latency,
            "--scheduled" => o.mode = Mode::Scheduled,
            "--idle" => o.mode = Mode::Idle,
            "--mechanisms" => o.mechanisms = true,
            "--limits" => {
                let kind = value("--limits")?;
                if !["concurrency", "rate", "both"].contains(&kind.as_str()) {
                    return Err("--limits takes concurrency, rate or both".into());
                }
                o.limits = Some(kind);
            }
            "--plain" => o.plain = true,
            "--ruby" => o.ruby = true,
            "--metrics" => o.metrics = true,
            "--enqueue-only" => o.halves = Halves::EnqueueOnly,
            "--drain-only" => o.halves = Halves::DrainOnly,
            other => {
                return Err(format!(
                    "unknown option `{other}`; see the top of examples/loadtest.rs"
                ))
            }
        }
    }
    if o.halves != Halves::Both && o.mode != Mode::Drain {
        return Err("--enqueue-only and --drain-only split the drain mode only".into());
    }
    if o.jobs == 0 || o.concurrency == 0 || o.rate == 0 {
        return Err("--jobs, --concurrency and --rate must be at least 1".into());
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = parse_options()?;
    if o.metrics {
        install_metrics()?;
    }
    if o.redis.starts_with("postgres://") {
        // PostgreSQL: drain only, on jobqueue's tables emptied here.
        if !matches!(o.mode, Mode::Drain) {
            return Err("on PostgreSQL only the drain mode runs".into());
        }
        let pg = jobqueue::backend::postgres::PgBroker::connect(&o.redis).await?;
        pg.migrate().await?;
        let broker: Arc<dyn Broker> = pg.into();
        if o.halves != Halves::DrainOnly {
            let pool = sqlx::PgPool::connect(&o.redis).await?;
            sqlx::raw_sql(
                "TRUNCATE jobqueue_jobs, jobqueue_sets, jobqueue_queues, jobqueue_kv, \
                 jobqueue_processes, jobqueue_fetchers, jobqueue_slots, jobqueue_limit_keys",
            )
            .execute(&pool)
            .await?;
        }
        let client = Client::new(Arc::clone(&broker));
        return drain(&o, &client, worker_for(&o, broker), None).await;
    }
    if o.redis.contains(',') {
        // A cluster: drain only, on a cluster emptied beforehand.
        if !matches!(o.mode, Mode::Drain) {
            return Err("on a cluster (several nodes in --redis) only the drain mode runs".into());
        }
        let broker = jobqueue::backend::connect(&o.redis, None).await?;
        let client = Client::new(Arc::clone(&broker));
        return drain(&o, &client, worker_for(&o, broker), None).await;
    }
    let redis = redis::Client::open(o.redis.as_str())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    if o.halves != Halves::DrainOnly {
        redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;
    }
    let broker: Arc<dyn Broker> = RedisBroker::connect(&o.redis).await?.into();
    let client = Client::new(Arc::clone(&broker));
    let worker = worker_for(&o, broker);
    match o.mode {
        Mode::Drain => drain(&o, &client, worker, Some(&mut conn)).await,
        Mode::Latency => latency(&o, &client, &mut conn, worker).await,
        Mode::Scheduled => scheduled(&o, &client, &mut conn, worker).await,
        Mode::Idle => idle(&o, &mut conn, worker).await,
    }
}

/// The load test's worker on `broker`, with the job types the options call for.
fn worker_for(o: &Options, broker: Arc<dyn Broker>) -> WorkerBuilder {
    let mut worker = Worker::builder(broker)
        .queues(Queues::strict(["loadtest"]))
        .concurrency(o.concurrency)
        .register::<Noop>()
        .register::<Stamped>();
    if o.limits.is_some() {
        worker = worker
            .register::<NoopConcurrency>()
            .register::<NoopRate>()
            .register::<NoopLimited>();
    }
    if o.mechanisms {
        worker = worker
            .register::<NoopCollapsible>()
            .register::<NoopUnique>();
    }
    worker
}

const CHUNK: u64 = 10_000;

/// Enqueues the jobs `make` builds from the numbers `numbers`, in one call.
async fn enqueue<J: Job>(
    client: &Client,
    numbers: std::ops::Range<u64>,
    make: impl Fn(u64) -> J,
) -> Result<(), jobqueue::Error> {
    let jobs: Vec<J> = numbers.map(make).collect();
    client.enqueue_bulk(&jobs).await?;
    Ok(())
}

/// Enqueues the jobs the options call for, `CHUNK` at a time.
async fn enqueue_all(o: &Options, client: &Client) -> Result<(), jobqueue::Error> {
    let mut n = 0;
    while n < o.jobs {
        let end = (n + CHUNK).min(o.jobs);
        match o.limits.as_deref() {
            Some("concurrency") => enqueue(client, n..end, NoopConcurrency::new).await?,
            Some("rate") => enqueue(client, n..end, NoopRate::new).await?,
            Some(_) => enqueue(client, n..end, NoopLimited::new).await?,
            None if !o.mechanisms => enqueue(client, n..end, Noop).await?,
            None if n % (2 * CHUNK) == 0 => enqueue(client, n..end, NoopCollapsible).await?,
            None => enqueue(client, n..end, NoopUnique).await?,
        }
        n = end;
    }
    Ok(())
}

/// Enqueues the jobs, then drains them; reports CPU per job (enqueue and drain) for this
/// process and, given a connection to it, for Redis. With `--enqueue-only` it stops after
/// the enqueue; with `--drain-only` it drains the jobs already there, and its figures are
/// the drain's alone.
async fn drain(
    o: &Options,
    client: &Client,
    worker: WorkerBuilder,
    mut redis: Option<&mut redis::aio::MultiplexedConnection>,
) -> Result<(), Box<dyn std::error::Error>> {
    PROGRESS.target.store(o.jobs, Ordering::Relaxed);
    let process_cpu = cpu_seconds();
    let redis_cpu = match redis.as_deref_mut() {
        Some(conn) => Some(redis_cpu_seconds(conn).await?),
        None => None,
    };
    let started = Instant::now();
    if o.halves != Halves::DrainOnly {
        enqueue_all(o, client).await?;
    }
    let enqueue_s = started.elapsed().as_secs_f64();
    let drain_s = if o.halves == Halves::EnqueueOnly {
        None
    } else {
        let worker = worker.build()?;
        let handle = worker.handle();
        let started = Instant::now();
        let finished = PROGRESS.finished.notified();
        let running = tokio::spawn(worker.run_until(std::future::pending()));
        finished.await;
        let drain_s = started.elapsed().as_secs_f64();
        handle.shutdown();
        running.await??;
        Some(drain_s)
    };
    let per_job = |seconds: f64| seconds * 1e6 / o.jobs.max(1) as f64;
    let process_us = per_job(cpu_seconds() - process_cpu);
    let redis_us = match (redis, redis_cpu) {
        (Some(conn), Some(before)) => {
            format!("{:.2}", per_job(redis_cpu_seconds(conn).await? - before))
        }
        _ => "-".to_owned(),
    };
    let Some(drain_s) = drain_s else {
        println!(
            "enqueued={} enqueue_s={enqueue_s:.3} process_cpu_us_per_job={process_us:.2} \
             redis_cpu_us_per_job={redis_us} peak_rss_kb={}",
            o.jobs,
            peak_resident_memory_kb()
        );
        return Ok(());
    };
    println!("rss_kb={}", resident_memory_kb());
    if let Some(metrics) = METRICS.get() {
        println!("metrics_jobs_finished={}", finished_jobs(&metrics.render()));
    }
    println!(
        "jobs={} concurrency={} enqueue_s={enqueue_s:.3} drain_s={drain_s:.3} jobs_per_sec={:.0} \
         process_cpu_us_per_job={process_us:.2} redis_cpu_us_per_job={redis_us} peak_rss_kb={}",
        o.jobs,
        o.concurrency,
        o.jobs as f64 / drain_s,
        peak_resident_memory_kb()
    );
    Ok(())
}

/// The Prometheus recorder of `--metrics`, to read back what it recorded.
static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder, with the upkeep its `install` would run (it drains
/// histogram samples into their summaries), but no listener.
fn install_metrics() -> Result<(), Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    METRICS
        .set(handle)
        .map_err(|_| "the metrics recorder was installed twice")?;
    Ok(())
}

/// The jobs a Prometheus scrape counts as finished, whatever their outcome.
fn finished_jobs(scrape: &str) -> f64 {
    scrape
        .lines()
        .filter(|line| line.starts_with("jobqueue_jobs_finished_total{"))
        .filter_map(|line| line.rsplit_once(' '))
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

/// Redis's CPU seconds so far (user and system, from `INFO cpu`).
async fn redis_cpu_seconds(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<f64, redis::RedisError> {
    info_sum(conn, "cpu", &["used_cpu_sys", "used_cpu_user"]).await
}

/// The sum of the numeric fields `names` of the `INFO` section `section`.
async fn info_sum(
    conn: &mut redis::aio::MultiplexedConnection,
    section: &str,
    names: &[&str],
) -> Result<f64, redis::RedisError> {
    let info: String = redis::cmd("INFO").arg(section).query_async(conn).await?;
    Ok(info
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| names.contains(name))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .sum())
}

/// Pushes `Stamped` jobs through Ruby Sidekiq's client at `RATE` per second.
const RUBY_PRODUCER: &str = r#"
require "sidekiq"
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
interval = 1.0 / Float(ENV.fetch("RATE"))
Integer(ENV.fetch("COUNT")).times do
  Sidekiq::Client.push("class" => "Stamped", "queue" => "loadtest",
    "args" => [(Time.now.to_f * 1_000_000).to_i])
  sleep interval
end
"#;

/// A `Stamped` job as a producer outside this library writes it.
fn plain_payload(due_us: u64) -> String {
    let jid = jobqueue::envelope::new_jid();
    serde_json::json!({
        "class": Stamped::NAME, "queue": "loadtest", "args": [due_us], "jid": jid,
        "retry": true, "created_at": now_us() as f64 / 1e6, "enqueued_at": now_us() as f64 / 1e6,
    })
    .to_string()
}

async fn latency(
    o: &Options,
    client: &Client,
    conn: &mut redis::aio::MultiplexedConnection,
    worker: WorkerBuilder,
) -> Result<(), Box<dyn std::error::Error>> {
    let total = o.rate * o.seconds;
    PROGRESS.target.store(total, Ordering::Relaxed);
    let worker = worker.build()?;
    let handle = worker.handle();
    let finished = PROGRESS.finished.notified();
    let running = tokio::spawn(worker.run_until(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    if o.ruby {
        // Ruby stamps each job with its own clock, read just before its push.
        let status = tokio::process::Command::new("ruby")
            .args(["-e", RUBY_PRODUCER])
            .env("REDIS_URL", &o.redis)
            .env("RATE", o.rate.to_string())
            .env("COUNT", total.to_string())
            // redis-rb's deprecation notices, one per push.
            .stderr(std::process::Stdio::null())
            .status()
            .await?;
        if !status.success() {
            return Err("the Ruby producer failed (apt-get install ruby-sidekiq)".into());
        }
        finished.await;
        handle.shutdown();
        running.await??;
        let (p50, p99, max) = percentiles();
        println!("p50_ms={p50:.3} p99_ms={p99:.3} max_ms={max:.3}");
        return Ok(());
    }
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..total {
        ticker.tick().await;
        if o.plain {
            redis::cmd("LPUSH")
                .arg("queue:loadtest")
                .arg(plain_payload(now_us()))
                .query_async::<()>(conn)
                .await?;
        } else {
            client.enqueue(&Stamped(now_us())).await?;
        }
    }
    finished.await;
    handle.shutdown();
    running.await??;
    let (p50, p99, max) = percentiles();
    println!("p50_ms={p50:.3} p99_ms={p99:.3} max_ms={max:.3}");
    Ok(())
}

async fn scheduled(
    o: &Options,
    client: &Client,
    conn: &mut redis::aio::MultiplexedConnection,
    worker: WorkerBuilder,
) -> Result<(), Box<dyn std::error::Error>> {
    PROGRESS.target.store(o.jobs, Ordering::Relaxed);
    let worker = worker.build()?;
    let handle = worker.handle();
    let finished = PROGRESS.finished.notified();
    let running = tokio::spawn(worker.run_until(std::future::pending()));

    let due = SystemTime::now() + Duration::from_secs(3);
    let due_us = due.duration_since(UNIX_EPOCH)?.as_micros() as u64;
    if o.plain {
        // Pushed once the worker is idle, so its scheduler has nothing due to wake it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let score = due_us as f64 / 1e6;
        for _ in 0..o.jobs {
            redis::cmd("ZADD")
                .arg("schedule")
                .arg(score)
                .arg(plain_payload(due_us))
                .query_async::<()>(conn)
                .await?;
        }
    } else {
        let jobs: Vec<Stamped> = (0..o.jobs).map(|_| Stamped(due_us)).collect();
        for chunk in jobs.chunks(CHUNK as usize) {
            client.enqueue_bulk_at(due, chunk).await?;
        }
    }
    // Nothing runs until the jobs are due, so the CPU from here on is their moving and
    // running.
    let (process_cpu, redis_cpu) = (cpu_seconds(), redis_cpu_seconds(conn).await?);
    finished.await;
    let per_job = |seconds: f64| seconds * 1e6 / o.jobs as f64;
    let process_us = per_job(cpu_seconds() - process_cpu);
    let redis_us = per_job(redis_cpu_seconds(conn).await? - redis_cpu);
    handle.shutdown();
    running.await??;
    let (p50, p99, _) = percentiles();
    println!(
        "p50_late_ms={p50:.3} p99_late_ms={p99:.3} process_cpu_us_per_job={process_us:.2} \
         redis_cpu_us_per_job={redis_us:.2}"
    );
    Ok(())
}

/// An idle worker: Redis commands it sends per second (from the server's own count, less
/// this measurement's two calls) and the CPU it uses.
async fn idle(
    o: &Options,
    conn: &mut redis::aio::MultiplexedConnection,
    worker: WorkerBuilder,
) -> Result<(), Box<dyn std::error::Error>> {
    let worker = worker.build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run_until(std::future::pending()));
    // Let start-up (registration, first recovery pass) pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (commands_before, cpu_before, started) =
        (total_commands(conn).await?, cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    let commands = total_commands(conn)
        .await?
        .saturating_sub(commands_before + 1);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    handle.shutdown();
    running.await??;
    println!(
        "redis_commands_per_sec={:.2} cpu_percent={:.2}",
        commands as f64 / elapsed,
        100.0 * cpu / elapsed
    );
    Ok(())
}

async fn total_commands(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<u64, redis::RedisError> {
    Ok(info_sum(conn, "stats", &["total_commands_processed"]).await? as u64)
}

/// User and system CPU seconds of this process (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentiles() -> (f64, f64, f64) {
    let mut samples = PROGRESS
        .samples
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len().max(1)) - 1;
        samples.get(i).copied().unwrap_or(f64::NAN)
    };
    (
        at(0.50),
        at(0.99),
        samples.last().copied().unwrap_or(f64::NAN),
    )
}

/// This process's peak resident memory in KiB (`VmHWM` in `/proc/self/status`, 0 where
/// there is none).
fn peak_resident_memory_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// This process's resident memory in KiB, from `/proc/self/statm` (0 where there is none).
fn resident_memory_kb() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4
}
