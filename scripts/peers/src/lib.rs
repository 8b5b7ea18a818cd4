//! What every harness shares: its options, and the figures it prints on its last line in
//! the form of jobqueue's load test, so that `scripts/compare` reads them all alike:
//!
//! ```text
//! jobs=N concurrency=C enqueue_s=X drain_s=Y jobs_per_sec=Z process_cpu_us_per_job=..
//!     redis_cpu_us_per_job=..
//! ```
//!
//! Each harness empties the database, enqueues `--jobs` no-op jobs with its queue's fastest
//! bulk call, then starts its worker with `--concurrency` slots and times the drain, from the
//! worker's start to the last job's end. CPU is counted over enqueue and drain.
//!
//! The harnesses of PostgreSQL queues take `--postgres URL` instead of `--redis URL`, time
//! themselves with [`Clock`] and leave out `redis_cpu_us_per_job`: the calling script
//! measures PostgreSQL's CPU from outside.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

/// The harness's options.
pub struct Options {
    pub redis: String,
    pub postgres: String,
    pub jobs: u64,
    pub concurrency: usize,
}

impl Options {
    /// `--redis URL --jobs N --concurrency C`, or `--postgres URL ..`.
    pub fn parse() -> Self {
        let mut o = Options {
            redis: "redis://127.0.0.1:6379/15".into(),
            postgres: "postgres://postgres@127.0.0.1:5432/test".into(),
            jobs: 100_000,
            concurrency: 10,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let value = args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            match arg.as_str() {
                "--redis" => o.redis = value,
                "--postgres" => o.postgres = value,
                "--jobs" => o.jobs = value.parse().expect("--jobs takes a whole number"),
                "--concurrency" => {
                    o.concurrency = value.parse().expect("--concurrency takes a whole number")
                }
                other => panic!(
                    "unknown option {other}: --redis URL (or --postgres URL) --jobs N --concurrency C"
                ),
            }
        }
        o
    }

    /// The job numbers, in the slices each harness enqueues with one bulk call.
    pub fn chunks(&self) -> impl Iterator<Item = std::ops::Range<u64>> {
        const CHUNK: u64 = 10_000;
        let jobs = self.jobs;
        (0..jobs)
            .step_by(CHUNK as usize)
            .map(move |n| n..(n + CHUNK).min(jobs))
    }
}

/// Counts finished jobs and wakes the harness at the last one.
pub struct Progress {
    done: AtomicU64,
    target: AtomicU64,
    finished: Notify,
}

pub static PROGRESS: Progress = Progress {
    done: AtomicU64::new(0),
    target: AtomicU64::new(u64::MAX),
    finished: Notify::const_new(),
};

impl Progress {
    /// Called by every job.
    pub fn finish_one(&self) {
        if self.done.fetch_add(1, Ordering::Relaxed) + 1 == self.target.load(Ordering::Relaxed) {
            self.finished.notify_one();
        }
    }

    /// Waits for `jobs` jobs in all.
    pub async fn wait_for(&self, jobs: u64) {
        let finished = self.finished.notified();
        self.target.store(jobs, Ordering::Relaxed);
        if self.done.load(Ordering::Relaxed) >= jobs {
            return;
        }
        finished.await;
    }
}

/// One run's clocks: started before the enqueue.
pub struct Run {
    options_jobs: u64,
    concurrency: usize,
    conn: redis::aio::MultiplexedConnection,
    process_cpu: f64,
    redis_cpu: f64,
    started: Instant,
    enqueue_s: f64,
    drain_started: Option<Instant>,
}

impl Run {
    /// Empties the harness's database and starts the clocks.
    pub async fn start(o: &Options) -> Self {
        let client = redis::Client::open(o.redis.as_str()).expect("a redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        let _: () = redis::cmd("FLUSHDB")
            .query_async(&mut conn)
            .await
            .expect("FLUSHDB");
        let redis_cpu = redis_cpu_seconds(&mut conn).await;
        Self {
            options_jobs: o.jobs,
            concurrency: o.concurrency,
            conn,
            process_cpu: cpu_seconds(),
            redis_cpu,
            started: Instant::now(),
            enqueue_s: 0.0,
            drain_started: None,
        }
    }

    /// The enqueue is over; the drain starts.
    pub fn enqueued(&mut self) {
        self.enqueue_s = self.started.elapsed().as_secs_f64();
        self.drain_started = Some(Instant::now());
    }

    /// The last job is done: prints the figures.
    pub async fn report(mut self) {
        let drain_s = self
            .drain_started
            .expect("enqueued() before report()")
            .elapsed()
            .as_secs_f64();
        let jobs = self.options_jobs.max(1) as f64;
        let process_us = (cpu_seconds() - self.process_cpu) * 1e6 / jobs;
        let redis_us = (redis_cpu_seconds(&mut self.conn).await - self.redis_cpu) * 1e6 / jobs;
        println!(
            "jobs={} concurrency={} enqueue_s={:.3} drain_s={drain_s:.3} jobs_per_sec={:.0} \
             process_cpu_us_per_job={process_us:.2} redis_cpu_us_per_job={redis_us:.2}",
            self.options_jobs,
            self.concurrency,
            self.enqueue_s,
            jobs / drain_s,
        );
    }
}

/// One run's clocks without a Redis, for the PostgreSQL queues: started before the enqueue.
pub struct Clock {
    jobs: u64,
    concurrency: usize,
    process_cpu: f64,
    started: Instant,
    enqueue_s: f64,
    drain_started: Option<Instant>,
}

impl Clock {
    /// Starts the clocks; the harness has emptied its tables already.
    pub fn start(o: &Options) -> Self {
        Self {
            jobs: o.jobs,
            concurrency: o.concurrency,
            process_cpu: cpu_seconds(),
            started: Instant::now(),
            enqueue_s: 0.0,
            drain_started: None,
        }
    }

    /// The enqueue is over; the drain starts.
    pub fn enqueued(&mut self) {
        self.enqueue_s = self.started.elapsed().as_secs_f64();
        self.drain_started = Some(Instant::now());
    }

    /// The last job is done: prints the figures.
    pub fn report(self) {
        let drain_s = self
            .drain_started
            .expect("enqueued() before report()")
            .elapsed()
            .as_secs_f64();
        let jobs = self.jobs.max(1) as f64;
        let process_us = (cpu_seconds() - self.process_cpu) * 1e6 / jobs;
        println!(
            "jobs={} concurrency={} enqueue_s={:.3} drain_s={drain_s:.3} jobs_per_sec={:.0} \
             process_cpu_us_per_job={process_us:.2}",
            self.jobs,
            self.concurrency,
            self.enqueue_s,
            jobs / drain_s,
        );
    }
}

/// This process's CPU seconds so far, user and system (`/proc/self/stat`).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line; 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Redis's CPU seconds so far, user and system (`INFO cpu`).
async fn redis_cpu_seconds(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .expect("INFO cpu");
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}
