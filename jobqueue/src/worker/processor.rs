//! Runs one fetched job, as Sidekiq's processor: checks its payload and header, finds its
//! type, runs it through the server middleware and its mechanisms, and hands how it ended
//! to the finish path ([`super::finish`]), the one place a job's end is accounted for.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::acker::AckMessage;
use super::budgets;
use super::finish::{self, Failed, Turn};
use super::mechanisms::Guarded;
use super::middleware::{Outcome, ServerJob};
use super::registry::Handler;
use super::{Shared, Started};
use crate::backend::{Fetched, LimitsRead};
use crate::budget::{Account, Tracked};
use crate::client::BATCH_KEY;
use crate::envelope::{header, secrets, Envelope};
use crate::job::keys::started_key;
use crate::job::{JobOptions, LimitTag};
use crate::perform::{JobContext, JobError};
use crate::retry::{self, error_class};
use crate::schedule::window::quiet_until;

/// How long a start record is kept: longer than a dead process takes to be recovered.
const STARTED_TTL: Duration = Duration::from_secs(24 * 3600);

/// Runs one job and hands its end to the finish path.
pub(crate) async fn run(shared: &Shared, job: Fetched, acks: &mpsc::Sender<AckMessage>) {
    shared.busy.fetch_add(1, Ordering::Relaxed);
    // Shared with the list of running jobs while it runs, not copied into it.
    let job = Arc::new(job);
    let slot = Slot::take(shared);
    let account = Arc::new(Account::default());
    let mut turn = Turn::default();
    let ended = execute(shared, &job, &slot, &account, &mut turn).await;
    // The clock is read twice at a job's start and once at its end (see `Slot`).
    turn.started = slot.started.get().map(|started| finish::Started {
        class: started.class,
        ran: slot
            .ran
            .get()
            .copied()
            .unwrap_or_else(|| started.at.elapsed()),
        since: started.since,
        memory: account.memory().map(|m| (m.peak, m.retained)),
    });
    drop(slot);
    // A heartbeat may still hold the running entry it copied; the job is copied then.
    let job = Arc::try_unwrap(job).unwrap_or_else(|job| Fetched::clone(&job));
    shared.busy.fetch_sub(1, Ordering::Relaxed);
    finish::finish(shared, job, ended, turn, acks).await;
}

/// A concurrency slot's entry in the list of running jobs; leaves it when dropped.
struct Slot<'a> {
    shared: &'a Shared,
    id: u64,
    /// The class and start of the job, once it is about to run.
    started: OnceLock<Start>,
    /// How long the job's run took, once it returned.
    ran: OnceLock<Duration>,
}

/// When a job started, read from the clock once each: a job's end time is its start and
/// its run's length, since clock reads are a noticeable part of a no-op job's cost.
struct Start {
    class: &'static str,
    at: Instant,
    since: SystemTime,
}

impl<'a> Slot<'a> {
    fn take(shared: &'a Shared) -> Self {
        let id = shared.next_slot.fetch_add(1, Ordering::Relaxed);
        Self {
            shared,
            id,
            started: OnceLock::new(),
            ran: OnceLock::new(),
        }
    }

    /// Lists the job as running, for the heartbeat (Sidekiq's Busy page). The payload is
    /// redacted only when a heartbeat shows it, not on every job's path.
    fn show(
        &self,
        job: &Arc<Fetched>,
        class: &'static str,
        options: &'static JobOptions,
        cancel: CancellationToken,
    ) {
        let since = SystemTime::now();
        let _ = self.started.set(Start {
            class,
            at: Instant::now(),
            since,
        });
        let started = Started {
            job: Arc::clone(job),
            sensitive: options.sensitive,
            since,
            cancel,
        };
        self.shared.running_map().insert(self.id, started);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.shared.running_map().remove(&self.id);
    }
}

/// Checks the job, runs it, and says how it ended.
async fn execute(
    shared: &Shared,
    job: &Arc<Fetched>,
    slot: &Slot<'_>,
    account: &Arc<Account>,
    turn: &mut Turn,
) -> Result<Outcome, Failed> {
    let (mut envelope, handler) = prepare(shared, job)?;
    if let Some(bid) = envelope.extra.get(BATCH_KEY).and_then(|b| b.as_str()) {
        turn.batch = Some((bid.to_owned(), envelope.jid.clone()));
    }
    let options = handler.options();
    if let Some(wait) = bulk_wait(shared, &envelope, options) {
        return Ok(wait);
    }
    if shared.wakeups.cancelled(&envelope.jid) {
        // Cancelled while it waited in this process's buffer: it does not start.
        tracing::info!(jid = %envelope.jid, class = %envelope.class, "cancelled before it started");
        super::mechanisms::release_on_death(shared.store(), &envelope, options).await;
        return Ok(Outcome::Cancelled);
    }
    let cancel = CancellationToken::new();
    slot.show(job, handler.class(), options, cancel.clone());
    record_start(shared, &envelope).await;
    let ctx = JobContext::new(&envelope, &job.queue, options, shared.client.clone())
        .with_cancel(cancel)
        .with_stopping(Arc::clone(&shared.stopping));
    let result = perform(
        shared,
        job,
        handler.as_ref(),
        &envelope,
        &ctx,
        account,
        turn,
    )
    .await;
    let Some(result) = result.filter(|_| !ctx.is_cancelled()) else {
        // Cancelled during the run: it stopped by itself (whatever it returned; its
        // follow-ups are not pushed), or it was dropped after the grace.
        tracing::info!(jid = %envelope.jid, class = %envelope.class, "cancelled");
        super::mechanisms::release_on_death(shared.store(), &envelope, options).await;
        return Ok(Outcome::Cancelled);
    };
    let result = review_budgets(
        shared,
        handler.class(),
        &envelope.jid,
        options,
        account,
        slot,
        result,
    );
    let error = match result {
        Ok(Ok(outcome)) => return Ok(succeeded(&envelope, &job.queue, &ctx, outcome, turn)),
        Ok(Err(error)) => match error.pause_queue {
            Some(cooldown) => {
                tracing::warn!(queue = %job.queue, "pausing the queue for {cooldown:?}: {error}");
                return Ok(Outcome::PauseQueue {
                    cooldown,
                    reason: error.to_string(),
                });
            }
            None => error,
        },
        Err(panic) => panicked(panic),
    };
    // The job's own error message may quote its sensitive values.
    let error = error.redact(&secrets(&envelope.args, options.sensitive));
    let to = retry::after_failure(&mut envelope, &error);
    Err(Failed::known(to, envelope, options))
}

/// The run's time, recorded in its slot, and its budgets reviewed: in strict mode, a success
/// over budget becomes a failure.
fn review_budgets(
    shared: &Shared,
    class: &'static str,
    jid: &str,
    options: &JobOptions,
    account: &Account,
    slot: &Slot<'_>,
    result: std::thread::Result<Result<Outcome, JobError>>,
) -> std::thread::Result<Result<Outcome, JobError>> {
    let ran = slot
        .started
        .get()
        .map_or(Duration::ZERO, |started| started.at.elapsed());
    let _ = slot.ran.set(ran);
    let over = budgets::review(shared, class, jid, options, account.memory(), ran);
    match result {
        Ok(Ok(Outcome::Done)) if shared.config.strict_budgets && !over.is_empty() => {
            let what: Vec<String> = over.iter().map(ToString::to_string).collect();
            let error = JobError::new(format!("over budget (strict mode): {}", what.join("; ")))
                .with_class(error_class::BUDGET_EXCEEDED);
            Ok(Err(error))
        }
        other => other,
    }
}

/// The job's payload, parsed, and its type's handler; or where a job that cannot run goes.
fn prepare(shared: &Shared, job: &Fetched) -> Result<(Envelope, Arc<dyn Handler>), Failed> {
    let limit = shared.config.max_payload_bytes;
    if job.payload.len() > limit {
        tracing::error!(queue = %job.queue, "dead: a {} byte payload, over the limit of {limit}", job.payload.len());
        return Err(Failed::unknown(retry::too_large(
            &job.queue,
            &job.payload,
            limit,
        )));
    }
    let mut envelope = match Envelope::parse(&job.payload) {
        Ok(envelope) => envelope,
        Err(e) => {
            tracing::error!(queue = %job.queue, "dead: {e}");
            return Err(Failed::unknown(retry::invalid_payload(
                &job.queue,
                &job.payload,
                &e,
            )));
        }
    };
    if let Some(reason) = unapplied_limits(job, &envelope) {
        let error = JobError::new(reason)
            .with_class(error_class::INVALID_LIMITS)
            .no_retry();
        tracing::error!(jid = %envelope.jid, class = %envelope.class, "dead: {error}");
        return Err(Failed::unknown(retry::after_failure(&mut envelope, &error)));
    }
    let Some(handler) = shared.registry.get(&envelope.class) else {
        let error = JobError::new(format!(
            "no job class `{}` is registered with this worker (it runs: {}); register it, or \
             stop this worker from taking queue `{}`",
            envelope.class,
            shared.registry.class_names().join(", "),
            job.queue,
        ))
        .with_class(error_class::UNKNOWN_CLASS);
        return Err(Failed::unknown(retry::after_failure(&mut envelope, &error)));
    };
    Ok((envelope, Arc::clone(handler)))
}

/// Why a job must not run under the limits its fetch applied, if it must not: its header
/// names limits out of range, or limits the fetch did not apply (read where a backend
/// could not read them, or taken by a process that applies none). Running it would run it
/// unlimited.
fn unapplied_limits(job: &Fetched, envelope: &Envelope) -> Option<String> {
    if job.limits == LimitsRead::Invalid {
        let header = header::read(&job.payload);
        let reason = match header.limits.map(|text| LimitTag::parse(&text)) {
            Some(Err(e)) => e.to_string(),
            _ => "its limits name no job id to take their slots by".to_owned(),
        };
        return Some(reason);
    }
    let limits = envelope.limits.as_deref().filter(|l| !l.is_empty())?;
    match job.limits {
        LimitsRead::NotRead => Some(format!(
            "its limits `{limits}` were not applied: the process that took it runs no class \
             with limits (is its class registered here without them?)"
        )),
        _ if header::read(&job.payload).limits.as_deref() != Some(limits) => Some(format!(
            "its limits `{limits}` are written where a backend cannot read them; enqueue it \
             through the client, which writes them first"
        )),
        _ => None,
    }
}

/// When a bulk job must wait for the end of a quiet window: the outcome that sends it there.
fn bulk_wait(shared: &Shared, envelope: &Envelope, options: &JobOptions) -> Option<Outcome> {
    if !options.bulk {
        return None;
    }
    let end = quiet_until(&shared.config.quiet_windows, chrono::Utc::now())?;
    tracing::info!(jid = %envelope.jid, class = %envelope.class, "bulk job waits for the quiet window's end at {end}");
    let wait = SystemTime::from(end)
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(Outcome::Reschedule {
        after: wait,
        reason: format!("a bulk job waits for the quiet window's end at {end}"),
    })
}

/// Records that this process starts a job that was recovered from a dead process before,
/// so that if this process dies under it too, recovery knows it started (see
/// [`crate::retry::after_interruption`]). Other jobs start without a write: a job whose
/// start was never recorded goes back to its queue uncounted.
async fn record_start(shared: &Shared, envelope: &Envelope) {
    if envelope.recovered_count.is_none() && envelope.interrupted_count.is_none() {
        return;
    }
    let key = started_key(&envelope.jid);
    if let Err(e) = shared
        .store()
        .set(&key, &shared.identity, STARTED_TTL)
        .await
    {
        tracing::warn!(jid = %envelope.jid, "recording the start of a recovered job: {e}");
    }
}

/// The job's run through the server middleware and its mechanisms, with its allocations
/// charged to it; `None` when a cancellation's grace ran out first.
async fn perform(
    shared: &Shared,
    job: &Fetched,
    handler: &dyn Handler,
    envelope: &Envelope,
    ctx: &JobContext,
    account: &Arc<Account>,
    turn: &Turn,
) -> Option<std::thread::Result<Result<Outcome, JobError>>> {
    let options = handler.options();
    let server_job = ServerJob {
        envelope,
        options,
        ctx,
        store: shared.store(),
    };
    let endpoint = Guarded {
        config: &shared.config.mechanisms,
        handler,
        marker: job.marker.as_ref(),
        release_at_ack: &turn.unlock,
    };
    let span = tracing::info_span!(
        "jobqueue.perform",
        jid = %envelope.jid,
        class = %envelope.class,
        queue = %job.queue,
        retry_count = ctx.retries,
    );
    crate::trace::continue_from(envelope, &span);
    // Everything the job's run allocates, in its middleware and its code, is charged to it.
    let run = Tracked::new(
        Arc::clone(account),
        AssertUnwindSafe(shared.server_chain.run(&server_job, &endpoint)).catch_unwind(),
    )
    .instrument(span);
    // A cancelled job has `cancel_grace` to end by itself; then its future is dropped.
    let grace = shared.config.cancel_grace;
    let stopped = async {
        ctx.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    // The run first: a job that ends at its first poll never waits on the cancel switch.
    tokio::select! {
        biased;
        result = run => Some(result),
        () = stopped => None,
    }
}

/// A run that returned without failing: its outcome, once logged; its follow-ups taken
/// when it is done, and a resumable job sent to run again.
fn succeeded(
    envelope: &Envelope,
    queue: &str,
    ctx: &JobContext,
    outcome: Outcome,
    turn: &mut Turn,
) -> Outcome {
    let (jid, class) = (&envelope.jid, &envelope.class);
    match &outcome {
        Outcome::Done if ctx.resumes() => {
            return Outcome::Reschedule {
                after: Duration::ZERO,
                reason: "it resumes from its checkpoint".into(),
            };
        }
        Outcome::Done => turn.follow_ups = ctx.take_follow_ups(),
        Outcome::Skipped { reason } => tracing::info!(%jid, %class, "skipped: {reason}"),
        Outcome::Reschedule { after, reason } => {
            tracing::info!(%jid, %class, "rescheduled in {after:?}: {reason}");
        }
        Outcome::PauseQueue { cooldown, reason } => {
            tracing::warn!(%queue, "pausing the queue for {cooldown:?}: {reason}");
        }
        Outcome::Cancelled => tracing::info!(%jid, %class, "cancelled"),
    }
    outcome
}

/// A panic in `perform`, as a failure.
fn panicked(panic: Box<dyn std::any::Any + Send>) -> JobError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_owned());
    JobError::new(format!("perform panicked: {message}")).with_class(error_class::PANIC)
}
