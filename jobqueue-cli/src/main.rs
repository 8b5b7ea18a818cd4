//! `jobqueue`: look at and act on the queues, the scheduled, retry and dead sets and the
//! processes of a Redis that jobqueue (or Ruby Sidekiq) uses.
//!
//! Exit codes: 0 done; 1 the broker failed (unreachable, refused); 2 a usage error, or a
//! bulk action not confirmed; 3 the job or queue named was not found.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;
use jobqueue::admin::SetEntry;
use std::sync::Arc;

use jobqueue::{Admin, Client, Envelope, SortedSet};
use serde_json::{json, Value};

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

/// Prints tables for people and JSON for scripts.
struct Out {
    json: bool,
}

impl Out {
    fn table(&self, headers: &[&str], rows: Vec<Vec<String>>, json: Value) {
        if self.json {
            println!("{json}");
            return;
        }
        // A stored value may be a megabyte long: cells show its start.
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .map(|row| row.into_iter().map(|cell| clip(&cell)).collect())
            .collect();
        let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("{}", padded.join("  ").trim_end());
        };
        line(headers.iter().map(|h| h.to_string()).collect());
        for row in rows {
            line(row);
        }
    }

    fn done(&self, message: &str) {
        if self.json {
            println!("{}", json!({ "ok": true, "message": message }));
        } else {
            println!("{message}");
        }
    }
}

/// The longest cell a table shows, in characters.
const MAX_CELL: usize = 120;

/// `cell` on one line, cut to [`MAX_CELL`] characters.
fn clip(cell: &str) -> String {
    let line: String = cell
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_CELL + 1)
        .collect();
    if line.chars().count() > MAX_CELL {
        let cut: String = line.chars().take(MAX_CELL - 1).collect();
        format!("{cut}…")
    } else {
        line
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

async fn stats(admin: &Admin, out: &Out) -> Result<(), Failure> {
    let stats = admin.stats().await?;
    let mut enqueued = 0;
    for queue in admin.queues().await? {
        enqueued += queue.size;
    }
    let sizes = [
        ("scheduled", admin.set_size(SortedSet::Schedule).await?),
        ("retries", admin.set_size(SortedSet::Retry).await?),
        ("dead", admin.set_size(SortedSet::Dead).await?),
    ];
    let processes = admin.processes().await?.len();
    let mut values = vec![
        ("processed", stats.processed as usize),
        ("failed", stats.failed as usize),
        ("skipped", stats.skipped as usize),
        ("cancelled", stats.cancelled as usize),
        ("enqueued", enqueued),
    ];
    values.extend(sizes);
    values.push(("processes", processes));
    let json = Value::Object(
        values
            .iter()
            .map(|(k, v)| ((*k).into(), json!(v)))
            .collect(),
    );
    let rows = values
        .iter()
        .map(|(k, v)| vec![(*k).to_owned(), v.to_string()])
        .collect();
    out.table(&["stat", "value"], rows, json);
    Ok(())
}

async fn queues(admin: &Admin, out: &Out) -> Result<(), Failure> {
    let paused = admin.paused().await?;
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for queue in admin.queues().await? {
        let pause = paused.iter().find(|(name, _)| *name == queue.name);
        let pause_text = match pause {
            None => String::new(),
            Some((_, None)) => "paused".into(),
            Some((_, Some(until))) => format!("paused until {}", seconds(*until)),
        };
        json.push(json!({
            "name": queue.name, "size": queue.size,
            "latency_seconds": queue.latency.as_secs_f64(),
            "paused": pause.is_some(),
            "paused_until": pause.and_then(|(_, until)| until.map(seconds)),
        }));
        rows.push(vec![
            queue.name,
            queue.size.to_string(),
            format!("{:.1}s", queue.latency.as_secs_f64()),
            pause_text,
        ]);
    }
    out.table(
        &["queue", "size", "latency", "paused"],
        rows,
        Value::Array(json),
    );
    Ok(())
}

async fn processes(admin: &Admin, out: &Out) -> Result<(), Failure> {
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for p in admin.processes().await? {
        let info: Value = serde_json::from_str(&p.info).unwrap_or_default();
        let concurrency = info["concurrency"].as_u64().unwrap_or(0);
        let beat = seconds(p.beat);
        json.push(json!({
            "identity": p.identity, "busy": p.busy, "concurrency": concurrency,
            "quiet": p.quiet, "beat": beat, "queues": info["queues"],
        }));
        rows.push(vec![
            p.identity,
            p.busy.to_string(),
            concurrency.to_string(),
            if p.quiet { "yes" } else { "no" }.into(),
            format!("{beat:.0}"),
        ]);
    }
    out.table(
        &["identity", "busy", "concurrency", "quiet", "beat"],
        rows,
        Value::Array(json),
    );
    Ok(())
}

async fn periodic(admin: &Admin, out: &Out) -> Result<(), Failure> {
    let schedules = admin.periodic().await?;
    let now = seconds(SystemTime::now());
    let rows = schedules
        .iter()
        .map(|s| {
            let text = |key: &str| s[key].as_str().unwrap_or_default().to_owned();
            let next = s["next_tick"]
                .as_f64()
                .map(|t| format!("in {:.0}s", (t - now).max(0.0)))
                .unwrap_or_default();
            vec![
                text("name"),
                text("schedule"),
                text("class"),
                text("queue"),
                next,
            ]
        })
        .collect();
    out.table(
        &["name", "schedule", "class", "queue", "next tick"],
        rows,
        Value::Array(schedules),
    );
    Ok(())
}

async fn limits(admin: &Admin, out: &Out) -> Result<(), Failure> {
    let limits = admin.limits().await?;
    let now = seconds(SystemTime::now());
    let rows = limits
        .iter()
        .map(|l| {
            vec![
                l.key.clone(),
                l.held.to_string(),
                l.parked.to_string(),
                format!("{:.1}s", (seconds(l.next_look) - now).max(0.0)),
            ]
        })
        .collect();
    let json: Vec<Value> = limits
        .iter()
        .map(|l| json!({"key": l.key, "held": l.held, "waiting": l.parked, "next_look": seconds(l.next_look)}))
        .collect();
    out.table(
        &["key", "slots taken", "waiting", "looked at in"],
        rows,
        Value::Array(json),
    );
    Ok(())
}

async fn classes(admin: &Admin, out: &Out) -> Result<(), Failure> {
    let classes = admin.classes().await?;
    let bytes = |b: Option<u64>| b.map_or_else(|| "-".to_owned(), jobqueue::budget::size);
    let rows = classes
        .iter()
        .map(|c| {
            vec![
                c.class.clone(),
                c.runs_per_minute.to_string(),
                format!("{:.1}%", c.failure_rate() * 100.0),
                format!("{:?}", c.p50),
                format!("{:?}", c.p99),
                format!("{:?}", c.max),
                bytes(c.peak_bytes),
                bytes(c.retained_bytes),
                c.violations.len().to_string(),
            ]
        })
        .collect();
    let json: Vec<Value> = classes
        .iter()
        .map(|c| {
            json!({
                "class": c.class,
                "runs_per_minute": c.runs_per_minute,
                "failed_per_minute": c.failed_per_minute,
                "total_runs": c.total_runs,
                "total_failed": c.total_failed,
                "p50_s": c.p50.as_secs_f64(),
                "p95_s": c.p95.as_secs_f64(),
                "p99_s": c.p99.as_secs_f64(),
                "max_s": c.max.as_secs_f64(),
                "peak_bytes": c.peak_bytes,
                "retained_bytes": c.retained_bytes,
                "violations": c.violations,
            })
        })
        .collect();
    out.table(
        &[
            "class",
            "runs/min",
            "failed",
            "p50",
            "p99",
            "max",
            "peak mem",
            "retained",
            "over budget",
        ],
        rows,
        Value::Array(json),
    );
    let violations: Vec<Vec<String>> = classes
        .iter()
        .flat_map(|c| c.violations.iter().map(move |v| (c, v)))
        .map(|(c, v)| {
            let figure = |n: u64| match v.limit.as_str() {
                "time" | "misclassified" => format!("{:?}", Duration::from_micros(n)),
                _ => jobqueue::budget::size(n),
            };
            let at = UNIX_EPOCH + Duration::from_millis(v.at_ms);
            vec![
                c.class.clone(),
                format!("{:.0}s ago", seconds(SystemTime::now()) - seconds(at)),
                v.jid.clone(),
                v.limit.clone(),
                figure(v.figure),
                figure(v.allowed),
                v.tier.clone(),
            ]
        })
        .collect();
    if !out.json && !violations.is_empty() {
        println!();
        println!("latest runs over budget:");
        out.table(
            &["class", "when", "jid", "limit", "figure", "allowed", "tier"],
            violations,
            Value::Null,
        );
    }
    Ok(())
}

async fn known_process(admin: &Admin, identity: &str) -> Result<(), Failure> {
    if admin
        .processes()
        .await?
        .iter()
        .any(|p| p.identity == identity)
    {
        Ok(())
    } else {
        Err(Failure::NotFound(format!(
            "no live process {identity}; `jobqueue processes` lists them"
        )))
    }
}

async fn set(admin: &Admin, out: &Out, set: SortedSet, action: SetAction) -> Result<(), Failure> {
    match action {
        SetAction::List(filter) => {
            let entries = matching(admin, set, &filter).await?;
            let json = Value::Array(entries.iter().map(entry_json).collect());
            let rows = entries
                .iter()
                .map(|e| match &e.job {
                    Ok(job) => vec![
                        job.jid.clone(),
                        job.class.clone(),
                        job.queue.clone(),
                        format!("{:.0}", seconds(e.at)),
                        job.error_message.clone().unwrap_or_default(),
                    ],
                    Err(raw) => vec![
                        String::new(),
                        "(not a job)".into(),
                        String::new(),
                        format!("{:.0}", seconds(e.at)),
                        raw.chars().take(60).collect(),
                    ],
                })
                .collect();
            out.table(&["jid", "class", "queue", "at", "error"], rows, json);
            Ok(())
        }
        SetAction::Show { jid } => {
            let entry = admin
                .find(set, &jid, None)
                .await?
                .ok_or_else(|| not_found(set, &jid))?;
            let value = entry_json(&entry);
            if out.json {
                println!("{value}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            }
            Ok(())
        }
        SetAction::Retry(target) => act(admin, out, set, target, Act::Retry).await,
        SetAction::Delete(target) => act(admin, out, set, target, Act::Delete).await,
        SetAction::Kill(target) => {
            if set == SortedSet::Dead {
                return Err(Failure::Usage("dead jobs are dead already".into()));
            }
            act(admin, out, set, target, Act::Kill).await
        }
    }
}

#[derive(Clone, Copy)]
enum Act {
    Retry,
    Delete,
    Kill,
}

async fn act(
    admin: &Admin,
    out: &Out,
    set: SortedSet,
    target: Target,
    act: Act,
) -> Result<(), Failure> {
    let entries = match &target.jid {
        Some(jid) => vec![admin
            .find(set, jid, None)
            .await?
            .ok_or_else(|| not_found(set, jid))?],
        None => {
            let entries = matching(admin, set, &target.filter).await?;
            let verb = match act {
                Act::Retry => "send to their queue",
                Act::Delete => "delete",
                Act::Kill => "move to the dead set",
            };
            confirm(target.yes, &format!("{verb} {} job(s)?", entries.len()))?;
            entries
        }
    };
    // A progress bar on a terminal, for long bulk actions; nothing for scripts.
    let progress = if std::io::stderr().is_terminal() && entries.len() > 1 {
        ProgressBar::new(entries.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    let mut done = 0;
    for entry in &entries {
        let moved = match act {
            Act::Retry => admin.run_now(set, entry).await?,
            Act::Delete => admin.delete(set, entry).await?,
            Act::Kill => admin.kill(set, entry).await?,
        };
        done += usize::from(moved);
        progress.inc(1);
    }
    progress.finish_and_clear();
    let verb = match act {
        Act::Retry => "sent to their queue",
        Act::Delete => "deleted",
        Act::Kill => "moved to the dead set",
    };
    out.done(&format!("{done} job(s) {verb}"));
    Ok(())
}

async fn matching(
    admin: &Admin,
    set: SortedSet,
    filter: &Filter,
) -> Result<Vec<SetEntry>, Failure> {
    Ok(admin
        .all_entries(set)
        .await?
        .into_iter()
        .filter(|e| {
            e.matches(
                filter.class.as_deref(),
                filter.queue.as_deref(),
                filter.error.as_deref(),
            )
        })
        .collect())
}

/// An entry as JSON, with its sensitive values hidden (the job as the admin shows it).
fn entry_json(entry: &SetEntry) -> Value {
    let job = match &entry.job {
        Ok(job) => serde_json::to_value(job).unwrap_or(Value::Null),
        Err(text) => Value::String(text.clone()),
    };
    json!({ "at": seconds(entry.at), "job": job })
}

fn not_found(set: SortedSet, jid: &str) -> Failure {
    Failure::NotFound(format!(
        "no job {jid} in the {} set; `jobqueue {} list` shows what is there",
        set.key(),
        match set {
            SortedSet::Retry => "retries",
            SortedSet::Schedule => "scheduled",
            SortedSet::Dead => "dead",
        }
    ))
}

/// Asks before a bulk action, on a terminal; elsewhere `--yes` is required.
fn confirm(yes: bool, question: &str) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(format!(
            "{question} Not confirmed: add --yes to do it without a terminal"
        )));
    }
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::Usage("not confirmed; nothing done".into()))
    }
}

fn seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
