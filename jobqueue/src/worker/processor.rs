//! Runs one fetched job, as Sidekiq's processor: checks its payload, finds its type, runs
//! it through the server middleware and its mechanisms, and settles it where it goes next
//! (acknowledged, rescheduled, its queue paused, or where [`crate::retry`] sends a failure).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::acker::{self, AckMessage};
use super::budgets;
use super::mechanisms::Guarded;
use super::middleware::{Outcome, ServerJob};
use super::{settle, Shared, Started};
use crate::broker::{Ack, Fetched, Settle};
use crate::budget::{Account, Tracked};
use crate::class_stats::Run;
use crate::client::BATCH_KEY;
use crate::envelope::Envelope;
use crate::job::JobOptions;
use crate::metrics::{self, Ended};
use crate::perform::{FollowUp, JobContext, JobError};
use crate::retry::{self, error_class};
use crate::schedule::window::quiet_until;
use crate::time::after;

/// Runs one job and settles it.
///
/// The futures of the rarer ends (a settle, a batch's count, death handlers) are boxed:
/// inline, they made every job's run 4.3 KB, written anew for each job; 1.9 KB without them.
pub(crate) async fn run(shared: &Shared, job: Fetched, acks: &mpsc::Sender<AckMessage>) {
    shared.busy.fetch_add(1, Ordering::Relaxed);
    // Shared with the list of running jobs while it runs, not copied into it.
    let job = Arc::new(job);
    let slot = Slot::take(shared);
    let account = Arc::new(Account::default());
    let mut follow_ups = Vec::new();
    let mut batch = None;
    let release_at_ack = OnceLock::new();
    let ended = execute(
        shared,
        &job,
        &slot,
        &account,
        &release_at_ack,
        &mut follow_ups,
        &mut batch,
    )
    .await;
    let unlock = release_at_ack.into_inner();
    // The clock is read twice at a job's start and once at its end (see `Slot`).
    let started = slot.started.get().map(|started| {
        let ran = slot.ran.get().copied();
        let ran = ran.unwrap_or_else(|| started.at.elapsed());
        (started.class, ran, started.since)
    });
    let class = started.map_or(metrics::UNKNOWN_CLASS, |(class, ..)| class);
    drop(slot);
    // A heartbeat may still hold the running entry it copied; the job is copied then.
    let job = Arc::try_unwrap(job).unwrap_or_else(|job| Fetched::clone(&job));
    shared.busy.fetch_sub(1, Ordering::Relaxed);
    shared.processed.fetch_add(1, Ordering::Relaxed);
    let outcome = ended_as(&ended);
    let ran = started.map(|(_, ran, _)| ran);
    shared.job_metrics.finished(&job.queue, class, outcome, ran);
    if let Some((_, ran, since)) = started {
        let run = Run {
            failed: matches!(outcome, Ended::Retried | Ended::Dead | Ended::Discarded),
            ran,
            at: since + ran,
            memory: account.memory().map(|m| (m.peak, m.retained)),
        };
        shared.class_stats.record(class, &run);
    }
    // A batch counts a job once it will not run again: done, skipped, cancelled or dead.
    if let Some((bid, jid)) = &batch {
        let finished = match &ended {
            Ok(Outcome::Done | Outcome::Skipped { .. }) => Some(true),
            Ok(Outcome::Cancelled) => Some(false),
            Err(Failed { to, .. }) if retry::dies(to) => Some(false),
            _ => None,
        };
        if let Some(succeeded) = finished {
            Box::pin(settle::batch_done(shared, bid, jid, succeeded)).await;
        }
    }
    match ended {
        Ok(Outcome::Done) if !follow_ups.is_empty() => {
            let parent = Envelope::parse(&job.payload)
                .map(|e| e.jid)
                .unwrap_or_default();
            Box::pin(settle::ack_then(shared, &parent, &job.payload, follow_ups)).await;
            if let Some((key, owner)) = unlock {
                Box::pin(super::mechanisms::release(
                    shared.broker.as_ref(),
                    &key,
                    &owner,
                ))
                .await;
            }
        }
        Ok(Outcome::Done) => {
            let payload = job.payload;
            acker::done(acks, Ack { payload, unlock }).await;
        }
        Ok(Outcome::Skipped { .. }) => {
            shared.skipped.fetch_add(1, Ordering::Relaxed);
            let payload = job.payload;
            acker::done(acks, Ack { payload, unlock }).await;
        }
        Ok(Outcome::Cancelled) => {
            shared.cancelled.fetch_add(1, Ordering::Relaxed);
            acker::done(acks, job.payload.into()).await;
        }
        Ok(Outcome::Reschedule { after: delay, .. }) => {
            let to = Settle::Schedule {
                payload: job.payload.clone(),
                at: after(delay),
            };
            Box::pin(settle::one(shared, &job.payload, to)).await;
        }
        Ok(Outcome::PauseQueue { cooldown, .. }) => {
            if let Err(e) = Box::pin(shared.broker.pause(&job.queue, Some(after(cooldown)))).await {
                tracing::warn!("pausing queue {} failed: {e}", job.queue);
            }
            let back = Settle::Queue {
                queue: job.queue.clone(),
                payload: job.payload.clone(),
                front: true,
            };
            Box::pin(settle::one(shared, &job.payload, back)).await;
        }
        Err(Failed { to, job: known }) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            let dies = retry::dies(&to);
            Box::pin(settle::one(shared, &job.payload, to)).await;
            if let (true, Some(known)) = (dies, known) {
                let (envelope, options) = *known;
                Box::pin(on_death(shared, &envelope, options)).await;
            }
        }
    }
}

/// The `outcome` label of a job's end.
fn ended_as(ended: &Result<Outcome, Failed>) -> Ended {
    match ended {
        Ok(Outcome::Done) => Ended::Succeeded,
        Ok(Outcome::Skipped { .. }) => Ended::Skipped,
        Ok(Outcome::Reschedule { .. }) => Ended::Rescheduled,
        Ok(Outcome::PauseQueue { .. }) => Ended::Paused,
        Ok(Outcome::Cancelled) => Ended::Cancelled,
        Err(Failed { to, .. }) => match to {
            Settle::Dead { .. } => Ended::Dead,
            Settle::Discard => Ended::Discarded,
            _ => Ended::Retried,
        },
    }
}

/// A failed job: where it goes, and the job and its options when its type is known (for
/// the death handlers).
struct Failed {
    to: Settle,
    job: Option<Box<(Envelope, &'static JobOptions)>>,
}

impl Failed {
    fn unknown(to: Settle) -> Self {
        Self { to, job: None }
    }
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

async fn execute(
    shared: &Shared,
    job: &Arc<Fetched>,
    slot: &Slot<'_>,
    account: &Arc<Account>,
    release_at_ack: &OnceLock<(String, String)>,
    follow_ups: &mut Vec<FollowUp>,
    batch: &mut Option<(String, String)>,
) -> Result<Outcome, Failed> {
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
    if let Some(bid) = envelope.extra.get(BATCH_KEY).and_then(|b| b.as_str()) {
        *batch = Some((bid.to_owned(), envelope.jid.clone()));
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
    let options = handler.options();
    if options.bulk {
        if let Some(end) = quiet_until(&shared.config.quiet_windows, chrono::Utc::now()) {
            tracing::info!(jid = %envelope.jid, class = %envelope.class, "bulk job waits for the quiet window's end at {end}");
            let wait = std::time::SystemTime::from(end)
                .duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO);
            return Ok(Outcome::Reschedule {
                after: wait,
                reason: format!("a bulk job waits for the quiet window's end at {end}"),
            });
        }
    }
    let cancel = CancellationToken::new();
    slot.show(job, handler.class(), options, cancel.clone());
    let ctx = JobContext::new(&envelope, &job.queue, options, shared.client.clone())
        .with_cancel(cancel)
        .with_stopping(Arc::clone(&shared.stopping));
    let server_job = ServerJob {
        envelope: &envelope,
        options,
        ctx: &ctx,
        broker: &shared.broker,
    };
    let endpoint = Guarded {
        config: &shared.config.mechanisms,
        handler: handler.as_ref(),
        marker: job.marker.as_ref(),
        release_at_ack,
    };
    let span = tracing::info_span!(
        "jobqueue.perform",
        jid = %envelope.jid,
        class = %envelope.class,
        queue = %job.queue,
        retry_count = ctx.retries,
    );
    crate::trace::continue_from(&envelope, &span);
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
    let result = tokio::select! {
        biased;
        result = run => Some(result),
        () = stopped => None,
    };
    let result = match result {
        Some(result) if !ctx.is_cancelled() => result,
        // Cancelled during the run: it stopped by itself (whatever it returned; its
        // follow-ups are not pushed), or it was dropped after the grace.
        _ => {
            tracing::info!(jid = %envelope.jid, class = %envelope.class, "cancelled");
            if slot.started.get().is_some() {
                super::mechanisms::release_on_death(shared.broker.as_ref(), &envelope, options)
                    .await;
            }
            return Ok(Outcome::Cancelled);
        }
    };
    let ran = slot
        .started
        .get()
        .map_or(Duration::ZERO, |started| started.at.elapsed());
    let _ = slot.ran.set(ran);
    let over = budgets::review(
        shared,
        handler.class(),
        &envelope.jid,
        options,
        account.memory(),
        ran,
    );
    let result = match result {
        Ok(Ok(Outcome::Done)) if shared.config.strict_budgets && !over.is_empty() => {
            let what: Vec<String> = over.iter().map(ToString::to_string).collect();
            let error = JobError::new(format!("over budget (strict mode): {}", what.join("; ")))
                .with_class(error_class::BUDGET_EXCEEDED);
            Ok(Err(error))
        }
        other => other,
    };
    let error = match result {
        Ok(Ok(outcome)) => {
            match &outcome {
                Outcome::Done if ctx.resumes() => {
                    return Ok(Outcome::Reschedule {
                        after: Duration::ZERO,
                        reason: "it resumes from its checkpoint".into(),
                    });
                }
                Outcome::Done => *follow_ups = ctx.take_follow_ups(),
                Outcome::Skipped { reason } => {
                    tracing::info!(jid = %envelope.jid, class = %envelope.class, "skipped: {reason}");
                }
                Outcome::Reschedule { after, reason } => {
                    tracing::info!(jid = %envelope.jid, class = %envelope.class, "rescheduled in {after:?}: {reason}");
                }
                Outcome::PauseQueue { cooldown, reason } => {
                    tracing::warn!(queue = %job.queue, "pausing the queue for {cooldown:?}: {reason}");
                }
                Outcome::Cancelled => {
                    tracing::info!(jid = %envelope.jid, class = %envelope.class, "cancelled");
                }
            }
            return Ok(outcome);
        }
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
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-string payload".to_owned());
            JobError::new(format!("perform panicked: {message}")).with_class(error_class::PANIC)
        }
    };
    let to = retry::after_failure(&mut envelope, &error);
    Err(Failed {
        to,
        job: Some(Box::new((envelope, options))),
    })
}

/// The death handlers of a job that will not run again: its locks are released, then each
/// server middleware's `on_death` runs.
async fn on_death(shared: &Shared, envelope: &Envelope, options: &'static JobOptions) {
    super::mechanisms::release_on_death(shared.broker.as_ref(), envelope, options).await;
    shared
        .server_chain
        .on_death(envelope, options, &shared.client)
        .await;
}

/// The death handlers of a job that died outside a run (a poison pill found in a dead
/// process's in-flight list); its batch counts it as failed, since it will not run again.
pub(crate) async fn after_death(shared: &Shared, payload: &str) {
    let Ok(envelope) = Envelope::parse(payload) else {
        return;
    };
    if let Some(bid) = envelope.extra.get(BATCH_KEY).and_then(|b| b.as_str()) {
        settle::batch_done(shared, bid, &envelope.jid, false).await;
    }
    if let Some(handler) = shared.registry.get(&envelope.class) {
        on_death(shared, &envelope, handler.options()).await;
    }
}
