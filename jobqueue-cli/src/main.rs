//! `jobqueue`: look at and act on the queues, the scheduled, retry and dead sets and the
//! processes of a Redis that jobqueue (or Ruby Sidekiq) uses.
//!
//! Exit codes: 0 done; 1 the broker failed (unreachable, refused); 2 a usage error, or a
//! bulk action not confirmed; 3 the job or queue named was not found.

mod out;
mod sets;
mod views;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use jobqueue::{Admin, Client, Envelope, SortedSet};
use serde_json::{json, Value};

use out::Out;
use sets::{confirm, set};
use views::{classes, known_process, limits, periodic, processes, queues, stats};

#[derive(Parser)]
#[command(
    name = "jobqueue",
    version,
    about = "Look at and act on a jobqueue (or Sidekiq) Redis"
)]
struct Cli {
    /// The Redis URL; several nodes (`redis://a:7000,b:7000`) are a Redis Cluster's.
    // `--help` never shows the environment's value: it may hold a password.
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
    /// The key namespace, if the workers use one.
    #[arg(long, env = "JOBQUEUE_NAMESPACE")]
    namespace: Option<String>,
    /// Print JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Processed and failed totals, and how many jobs wait where.
    Stats,
    /// Each queue's size, latency and pause.
    Queues,
    /// The live worker processes.
    Processes,
    /// Makes a process take no new jobs (Sidekiq's quiet).
    Quiet { identity: String },
    /// Stops a process gracefully.
    Stop { identity: String },
    /// Cancels a job: removed if waiting, stopped if running (neither failed nor retried).
    Cancel { jid: String },
    /// Pauses a queue, for good or `--for` a while.
    Pause {
        queue: String,
        /// How long, as `10m` or `1h`.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Resumes a paused queue.
    Resume { queue: String },
    /// Removes every job waiting in a queue.
    Clear {
        queue: String,
        /// Do it without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Pushes a job: `jobqueue enqueue SendWelcome --args '[{"user_id":7}]'`.
    Enqueue {
        class: String,
        #[arg(long, default_value = "default")]
        queue: String,
        /// The arguments, a JSON array.
        #[arg(long, default_value = "[]")]
        args: String,
        /// Run it after this long, as `10m`.
        #[arg(long = "in", value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
    },
    /// The periodic schedules workers run, with their next tick.
    Periodic,
    /// Per job class over the last minute: runs, failures, durations, memory, and the
    /// latest runs over budget.
    Classes,
    /// Per-key limits with jobs set aside: slots taken and jobs waiting for room.
    Limits,
    /// Jobs waiting for a retry.
    Retries(SetCommand),
    /// Jobs scheduled for later.
    Scheduled(SetCommand),
    /// Jobs that will not be tried again.
    Dead(SetCommand),
}

#[derive(Args)]
struct SetCommand {
    #[command(subcommand)]
    action: SetAction,
}

#[derive(Subcommand)]
enum SetAction {
    /// Lists the jobs, earliest first.
    List(Filter),
    /// Shows one job whole.
    Show { jid: String },
    /// Sends jobs to their queue now (Sidekiq's "Retry Now" / "Add to queue").
    Retry(Target),
    /// Deletes jobs.
    Delete(Target),
    /// Moves jobs to the dead set.
    Kill(Target),
}

#[derive(Args, Clone)]
struct Filter {
    /// Only jobs of this class.
    #[arg(long)]
    class: Option<String>,
    /// Only jobs of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs whose error message contains this text.
    #[arg(long)]
    error: Option<String>,
}

#[derive(Args)]
struct Target {
    /// The job id; or `--all` with filters.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    jid: Option<String>,
    /// Every job that matches the filters.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    filter: Filter,
    /// Do it without asking.
    #[arg(long)]
    yes: bool,
}

/// Why the command did not do what was asked, with its exit code.
enum Failure {
    Broker(jobqueue::Error),
    Usage(String),
    NotFound(String),
}

impl From<jobqueue::Error> for Failure {
    fn from(e: jobqueue::Error) -> Self {
        Failure::Broker(e)
    }
}

impl From<jobqueue::BrokerError> for Failure {
    fn from(e: jobqueue::BrokerError) -> Self {
        Failure::Broker(e.into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Broker(e)) => {
            eprintln!("jobqueue: {e}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("jobqueue: {message}");
            ExitCode::from(2)
        }
        Err(Failure::NotFound(message)) => {
            eprintln!("jobqueue: {message}");
            ExitCode::from(3)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let broker = jobqueue::backend::connect(&cli.redis, cli.namespace.as_deref()).await?;
    let admin = Admin::new(Arc::clone(&broker));
    let out = Out { json: cli.json };
    match cli.command {
        Command::Stats => stats(&admin, &out).await,
        Command::Queues => queues(&admin, &out).await,
        Command::Processes => processes(&admin, &out).await,
        Command::Cancel { jid } => {
            let message = match admin.cancel(&jid).await? {
                jobqueue::admin::Cancelled::Removed { from } => {
                    format!("{jid} was waiting in {from}; removed")
                }
                jobqueue::admin::Cancelled::Signalled => {
                    format!("{jid} is running; it stops at its process's next heartbeat")
                }
                _ => format!(
                    "{jid} is neither waiting nor running; if it starts within the hour it is stopped"
                ),
            };
            out.done(&message);
            Ok(())
        }
        Command::Quiet { identity } => {
            known_process(&admin, &identity).await?;
            admin.quiet(&identity).await?;
            out.done(&format!("{identity} will go quiet at its next heartbeat"));
            Ok(())
        }
        Command::Stop { identity } => {
            known_process(&admin, &identity).await?;
            admin.stop(&identity).await?;
            out.done(&format!("{identity} will stop at its next heartbeat"));
            Ok(())
        }
        Command::Pause { queue, duration } => {
            match duration {
                Some(d) => admin.pause_for(&queue, bounded("--for", d)?).await?,
                None => admin.pause(&queue).await?,
            }
            out.done(&format!("queue {queue} paused"));
            Ok(())
        }
        Command::Resume { queue } => {
            admin.resume(&queue).await?;
            out.done(&format!("queue {queue} resumed"));
            Ok(())
        }
        Command::Clear { queue, yes } => {
            let size = admin.queue(&queue).await?.size;
            confirm(
                yes,
                &format!("remove the {size} job(s) waiting in {queue}?"),
            )?;
            let removed = admin.clear(&queue).await?;
            out.done(&format!("removed {removed} job(s) from {queue}"));
            Ok(())
        }
        Command::Enqueue {
            class,
            queue,
            args,
            delay,
        } => {
            let args: Vec<Value> = serde_json::from_str(&args).map_err(|e| {
                Failure::Usage(format!("--args must be a JSON array, as '[1, \"a\"]': {e}"))
            })?;
            let at = match delay {
                Some(d) => Some(
                    SystemTime::now()
                        .checked_add(bounded("--in", d)?)
                        .ok_or_else(|| Failure::Usage("--in: too far in the future".into()))?,
                ),
                None => None,
            };
            let envelope = Envelope::new(class, queue, args);
            let jid = Client::new(broker).enqueue_envelope(envelope, at).await?;
            if out.json {
                println!("{}", json!({ "jid": jid }));
            } else {
                println!("{jid}");
            }
            Ok(())
        }
        Command::Periodic => periodic(&admin, &out).await,
        Command::Classes => classes(&admin, &out).await,
        Command::Limits => limits(&admin, &out).await,
        Command::Retries(c) => set(&admin, &out, SortedSet::Retry, c.action).await,
        Command::Scheduled(c) => set(&admin, &out, SortedSet::Schedule, c.action).await,
        Command::Dead(c) => set(&admin, &out, SortedSet::Dead, c.action).await,
    }
}

/// The longest `--in` and `--for`: a hundred years.
const MAX_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `delay` when it is at most [`MAX_DELAY`], or a usage error naming `flag`.
fn bounded(flag: &str, delay: Duration) -> Result<Duration, Failure> {
    if delay > MAX_DELAY {
        return Err(Failure::Usage(format!(
            "{flag} {}: at most 100 years",
            humantime::format_duration(delay)
        )));
    }
    Ok(delay)
}
