//! A worker process configured like a deployment: flags, environment variables and an
//! optional TOML file, for a service's `main` to hand its `worker` subcommand to.
//!
//! ```no_run
//! use clap::Parser;
//! use jobqueue::runner::{self, WorkerArgs};
//! # use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
//! # #[derive(serde::Serialize, serde::Deserialize, Job)]
//! # struct SendWelcome { user_id: u64 }
//! # #[async_trait]
//! # impl Perform for SendWelcome {
//! #     async fn perform(&self, _: &JobContext) -> Result<(), JobError> { Ok(()) }
//! # }
//!
//! #[derive(Parser)]
//! enum Command {
//!     /// Runs a worker: `myservice worker -q critical,2 -q default -c 20`.
//!     Worker(WorkerArgs),
//! }
//!
//! # async fn main_() -> Result<(), jobqueue::Error> {
//! match Command::parse() {
//!     Command::Worker(args) => runner::run(args, |w| w.register::<SendWelcome>()).await,
//! }
//! # }
//! ```
//!
//! Each setting is taken from, in order: its flag, its environment variable, the TOML file
//! (`--config`, `JOBQUEUE_CONFIG`), the default. A bad value stops the process at start with
//! a message naming the option and the value.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::backend::{Broker, Location};
use crate::error::{redact_secrets, redact_url, Error};
use crate::worker::{Queues, Worker, WorkerBuilder};

/// The most jobs a process runs at once (`-c`). Each slot is a task with its own
/// connection use and memory; past a few thousand, run more processes instead.
pub const MAX_CONCURRENCY: usize = 5000;

/// The longest shutdown timeout (`--shutdown-timeout`): a day. A longer one would keep a
/// stopping process, and the deploy waiting on it, past any orchestrator's patience.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The options of a worker process.
// Its `Debug` output hides the Redis URL's password (written by hand below).
#[derive(clap::Args, Clone, Default)]
#[non_exhaustive]
pub struct WorkerArgs {
    /// A queue to take jobs from, Sidekiq style: `-q critical,2 -q default` (a weight after
    /// the comma; without weights, strict order). Default: every queue.
    #[arg(
        short = 'q',
        long = "queue",
        env = "JOBQUEUE_QUEUES",
        value_delimiter = ' '
    )]
    pub queue: Vec<String>,
    /// Queues Celery style: `-Q a.b,c.d`, a comma list taken with equal weight.
    #[arg(short = 'Q', long = "queues", env = "JOBQUEUE_QUEUE_LIST")]
    pub queues: Option<String>,
    /// Jobs run at once (default 10).
    #[arg(short = 'c', long, env = "JOBQUEUE_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// A tag shown by Sidekiq's tools.
    #[arg(long, env = "JOBQUEUE_TAG")]
    pub tag: Option<String>,
    /// How long running jobs may take to finish at shutdown: `25s`, `500ms`, `2m`.
    #[arg(long, env = "JOBQUEUE_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
    /// The Redis URL (default `redis://127.0.0.1:6379`); several nodes
    /// (`redis://a:7000,b:7000`) are a Redis Cluster's; a `postgres://` URL is a
    /// PostgreSQL database's (feature `postgres`).
    // `--help` never shows the environment's value: it may hold a password.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// A TOML file with any of: `queue` (a list), `queues`, `concurrency`, `tag`,
    /// `shutdown_timeout`, `redis`.
    #[arg(long, env = "JOBQUEUE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Runs until the queues and their due scheduled jobs are empty, then shuts down and
    /// exits 0: for on-demand and monthly workers.
    #[arg(long, env = "JOBQUEUE_DRAIN")]
    pub drain: bool,
    /// With a PostgreSQL URL, applies the crate's migrations the database lacks before
    /// starting (a second run does nothing).
    #[arg(long, env = "JOBQUEUE_MIGRATE")]
    pub migrate: bool,
}

/// The settings of a worker process, resolved from its options. Its `Debug` output hides
/// the Redis URL's password.
#[derive(Clone)]
#[non_exhaustive]
pub struct Settings {
    /// The Redis URL.
    pub redis: String,
    /// The queues to take jobs from.
    pub queues: Queues,
    /// Jobs run at once.
    pub concurrency: usize,
    /// The tag shown by Sidekiq's tools.
    pub tag: String,
    /// How long running jobs may take to finish at shutdown.
    pub shutdown_timeout: Duration,
    /// Stop once the queues are empty.
    pub drain: bool,
}

impl std::fmt::Debug for WorkerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerArgs")
            .field("queue", &self.queue)
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("tag", &self.tag)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("redis", &self.redis.as_deref().map(redact_url))
            .field("config", &self.config)
            .field("drain", &self.drain)
            .finish()
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("redis", &redact_url(&self.redis))
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("tag", &self.tag)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("drain", &self.drain)
            .finish()
    }
}

/// The TOML file's keys.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    queue: Option<Vec<String>>,
    queues: Option<String>,
    concurrency: Option<usize>,
    tag: Option<String>,
    shutdown_timeout: Option<String>,
    redis: Option<String>,
    drain: Option<bool>,
}

impl WorkerArgs {
    /// The settings these options give: flags and environment first, then the TOML file,
    /// then the defaults.
    pub fn settings(&self) -> Result<Settings, Error> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => File::default(),
        };
        let queue = if self.queue.is_empty() {
            file.queue.unwrap_or_default()
        } else {
            self.queue.clone()
        };
        let celery = self.queues.clone().or(file.queues);
        let queues = match (queue.is_empty(), celery) {
            (false, Some(_)) => {
                return Err(Error::Config(
                    "give the queues either Sidekiq style (-q) or Celery style (-Q), not both"
                        .into(),
                ))
            }
            (false, None) => Queues::parse(&queue)
                .map_err(|e| Error::Config(format!("-q / JOBQUEUE_QUEUES / queue: {e}")))?,
            (true, Some(list)) => {
                let names: Vec<&str> = list.split(',').map(str::trim).collect();
                if names.iter().any(|n| n.is_empty()) {
                    return Err(Error::Config(format!(
                        "-Q / JOBQUEUE_QUEUE_LIST / queues `{list}`: a queue name is empty"
                    )));
                }
                Queues::weighted(names.into_iter().map(|n| (n, 1)))
            }
            (true, None) => Queues::all(),
        };
        let concurrency = self.concurrency.or(file.concurrency).unwrap_or(10);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            return Err(Error::Config(format!(
                "-c / JOBQUEUE_CONCURRENCY / concurrency `{concurrency}`: from 1 to \
                 {MAX_CONCURRENCY} jobs may run at once in a process; run more processes for more"
            )));
        }
        let shutdown_timeout = match self.shutdown_timeout.clone().or(file.shutdown_timeout) {
            Some(text) => {
                let option = "--shutdown-timeout / JOBQUEUE_SHUTDOWN_TIMEOUT / shutdown_timeout";
                let timeout = parse_duration(&text).ok_or_else(|| {
                    Error::Config(format!(
                        "{option} `{text}`: give a number and a unit, as in `25s`, `500ms` or `2m`"
                    ))
                })?;
                if timeout > MAX_SHUTDOWN_TIMEOUT {
                    return Err(Error::Config(format!("{option} `{text}`: at most 24h")));
                }
                timeout
            }
            None => Duration::from_secs(25),
        };
        Ok(Settings {
            redis: self
                .redis
                .clone()
                .or(file.redis)
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            queues,
            concurrency,
            tag: self.tag.clone().or(file.tag).unwrap_or_default(),
            shutdown_timeout,
            drain: self.drain || file.drain.unwrap_or(false),
        })
    }
}

fn read_file(path: &Path) -> Result<File, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("--config {}: cannot read it: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        Error::Config(format!(
            "--config {}: {}",
            path.display(),
            toml_report(&e, &text)
        ))
    })
}

/// Where a TOML file is wrong and why, on one line: the line, column and key, and the
/// parser's message, without quoting the line (it may hold a password), and with the
/// passwords of the file's URLs hidden wherever the message repeats a value.
fn toml_report(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    let place = e.span().map(|span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        let source = text.lines().nth(line - 1).unwrap_or("");
        // The key the line sets, when it reads as `key = ...`.
        let key = source
            .split_once('=')
            .map(|(key, _)| key.trim())
            .filter(|key| {
                !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        match key {
            Some(key) => format!("line {line}, column {column} (`{key}`): "),
            None => format!("line {line}, column {column}: "),
        }
    });
    redact_secrets(&format!("{}{message}", place.unwrap_or_default()), text)
}

/// `500ms`, `25s`, `2m`, `1h 30m`: a number and a unit is required.
fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

/// Connects to the configured Redis and runs a worker with the job types `register` adds,
/// until SIGINT or SIGTERM, or, with `--drain`, until its queues are empty.
pub async fn run(
    args: WorkerArgs,
    register: impl FnOnce(WorkerBuilder) -> WorkerBuilder,
) -> Result<(), Error> {
    let settings = args.settings()?;
    let broker = crate::backend::connect(&settings.redis, None).await?;
    #[cfg(feature = "postgres")]
    if args.migrate {
        crate::backend::postgres::migrate_at(&settings.redis).await?;
    }
    run_on(broker, settings, register).await
}

/// Runs a worker with `settings` on `broker`; see [`run`].
pub async fn run_on(
    broker: impl Into<Arc<dyn Broker>>,
    settings: Settings,
    register: impl FnOnce(WorkerBuilder) -> WorkerBuilder,
) -> Result<(), Error> {
    let broker = broker.into();
    let queues = settings.queues.clone();
    let worker = register(Worker::builder(Arc::clone(&broker)))
        .queues(settings.queues)
        .concurrency(settings.concurrency)
        .shutdown_timeout(settings.shutdown_timeout)
        .configure(|c| c.tag = settings.tag)
        .build()?;
    if settings.drain {
        // Until SIGINT or SIGTERM as any worker, or until drained.
        let handle = worker.handle();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                match is_drained(broker.as_ref(), &queues, handle.identity()).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => tracing::warn!("checking whether the queues are drained: {e}"),
                }
            }
            tracing::info!("the queues are drained; shutting down");
            handle.shutdown();
        });
    }
    worker.run().await
}

/// Nothing waits in `queues`, nothing is due in the schedule and retry sets, and this
/// process holds no job (running, fetched, or finished and not yet acknowledged).
async fn is_drained(broker: &dyn Broker, queues: &Queues, identity: &str) -> Result<bool, Error> {
    if broker.len(Location::InFlight(identity)).await? > 0 {
        return Ok(false);
    }
    let names = if queues.is_all() {
        broker.queues().await?
    } else {
        queues.names()
    };
    for name in &names {
        if broker.len(Location::Queue(name)).await? > 0 {
            return Ok(false);
        }
    }
    Ok(broker
        .next_due()
        .await?
        .is_none_or(|at| at > SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("25s"), Some(Duration::from_secs(25)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("25"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("3 fortnights"), None);
        // Too large for a `Duration`: refused, not a panic.
        assert_eq!(parse_duration("300000000000000y"), None);
    }
}
