//! The finish path: the one place a job's end is accounted for. A table ([`row`]) says,
//! for each way a job's turn can end, which counter and metric it adds to, whether its
//! class figures count a failure, whether its batch counts it, and whether its death
//! handlers run; [`finish`] carries that out and settles the job where it goes next.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::acker::{self, AckMessage};
use super::middleware::Outcome;
use super::{settle, Shared};
use crate::backend::{Fetched, Move, Paused, Settle};
use crate::class_stats::Run;
use crate::envelope::Envelope;
use crate::job::JobOptions;
use crate::metrics::{self, Ended};
use crate::perform::FollowUp;
use crate::retry;

/// A failed job: where it goes, and the job and its options when its type is known (for
/// the death handlers).
pub(super) struct Failed {
    to: Settle,
    job: Option<Box<(Envelope, &'static JobOptions)>>,
}

impl Failed {
    /// A job of a known type that failed.
    pub(super) fn known(to: Settle, envelope: Envelope, options: &'static JobOptions) -> Self {
        Self {
            to,
            job: Some(Box::new((envelope, options))),
        }
    }

    /// A job that could not run (its payload, its header or its class).
    pub(super) fn unknown(to: Settle) -> Self {
        Self { to, job: None }
    }
}

/// What a job's turn gathered on its way, for its end.
#[derive(Default)]
pub(super) struct Turn {
    /// When it started, once it did.
    pub(super) started: Option<Started>,
    /// The follow-ups a successful run declared.
    pub(super) follow_ups: Vec<FollowUp>,
    /// Its batch and jid, when it belongs to one.
    pub(super) batch: Option<(String, String)>,
    /// A lock (key, owner) released with its acknowledgement, in its round trip.
    pub(super) unlock: OnceLock<(String, String)>,
}

/// A run that started: its class, its length, its start, its memory (peak, retained).
pub(super) struct Started {
    pub(super) class: &'static str,
    pub(super) ran: Duration,
    pub(super) since: SystemTime,
    pub(super) memory: Option<(u64, u64)>,
}

/// What a way of ending means.
struct Row {
    /// The `outcome` label of its metrics.
    label: Ended,
    /// The process counter it adds to, besides `processed`.
    counter: Option<fn(&Shared) -> &AtomicU64>,
    /// Whether the class figures count it as a failure.
    failure: bool,
    /// Whether its batch counts it (it will not run again), and as succeeded or not.
    batch: Option<bool>,
    /// Whether its death handlers run (lock releases, middleware's `on_death`).
    dies: bool,
}

/// The table: each way a job's turn can end, and what it means.
fn row(ended: &Result<Outcome, Failed>) -> Row {
    let row = |label, counter, failure, batch, dies| Row {
        label,
        counter,
        failure,
        batch,
        dies,
    };
    match ended {
        Ok(Outcome::Done) => row(Ended::Succeeded, None, false, Some(true), false),
        Ok(Outcome::Skipped { .. }) => row(
            Ended::Skipped,
            Some(|s| &s.skipped),
            false,
            Some(true),
            false,
        ),
        Ok(Outcome::Cancelled) => row(
            Ended::Cancelled,
            Some(|s| &s.cancelled),
            false,
            Some(false),
            false,
        ),
        Ok(Outcome::Reschedule { .. }) => row(Ended::Rescheduled, None, false, None, false),
        Ok(Outcome::PauseQueue { .. }) => row(Ended::Paused, None, false, None, false),
        Err(Failed { to, .. }) => {
            let label = match to {
                Settle::Dead { .. } => Ended::Dead,
                Settle::Discard => Ended::Discarded,
                _ => Ended::Retried,
            };
            let dies = retry::dies(to);
            row(
                label,
                Some(|s| &s.failed),
                true,
                dies.then_some(false),
                dies,
            )
        }
    }
}

/// Accounts for a job's end as its [`row`] says, and settles it.
///
/// The futures of the rarer ends (a settle, a batch's count, death handlers) are boxed:
/// inline, they made every job's run 4.3 KB, written anew for each job; 1.9 KB without them.
pub(super) async fn finish(
    shared: &Shared,
    job: Fetched,
    ended: Result<Outcome, Failed>,
    turn: Turn,
    acks: &mpsc::Sender<AckMessage>,
) {
    let row = row(&ended);
    shared.processed.fetch_add(1, Ordering::Relaxed);
    if let Some(counter) = row.counter {
        counter(shared).fetch_add(1, Ordering::Relaxed);
    }
    let class = turn
        .started
        .as_ref()
        .map_or(metrics::UNKNOWN_CLASS, |s| s.class);
    let ran = turn.started.as_ref().map(|s| s.ran);
    shared
        .job_metrics
        .finished(&job.queue, class, row.label, ran);
    if let Some(started) = &turn.started {
        let run = Run {
            failed: row.failure,
            ran: started.ran,
            at: started.since + started.ran,
            memory: started.memory,
        };
        shared.class_stats.record(class, &run);
    }
    // A batch counts a job once it will not run again, before the job leaves its list: a
    // crash in between runs the job again, and its batch counts it once.
    if let (Some(succeeded), Some((bid, jid))) = (row.batch, &turn.batch) {
        Box::pin(settle::batch_done(shared, bid, jid, succeeded)).await;
    }
    let unlock = turn.unlock.into_inner();
    let to = match ended {
        Ok(Outcome::Done) if !turn.follow_ups.is_empty() => {
            let done = Move::done(job.payload).unlock(unlock);
            Box::pin(settle::with_follow_ups(shared, done, turn.follow_ups)).await;
            return;
        }
        Ok(Outcome::Done | Outcome::Skipped { .. }) => {
            acker::done(acks, Move::done(job.payload).unlock(unlock)).await;
            return;
        }
        Ok(Outcome::Cancelled) => {
            acker::done(acks, Move::done(job.payload)).await;
            return;
        }
        Ok(Outcome::Reschedule { after, .. }) => Settle::Schedule {
            payload: job.payload.clone(),
            at: SystemTime::now() + after,
        },
        Ok(Outcome::PauseQueue { cooldown, .. }) => {
            let until = Paused::Until(SystemTime::now() + cooldown);
            if let Err(e) = Box::pin(shared.broker.pause(&job.queue, until)).await {
                tracing::warn!("pausing queue {} failed: {e}", job.queue);
            }
            Settle::Queue {
                queue: job.queue.clone(),
                payload: job.payload.clone(),
                front: true,
            }
        }
        Err(Failed { to, job: known }) => {
            Box::pin(settle::one(shared, Move::new(job.payload.clone(), to))).await;
            if let (true, Some(known)) = (row.dies, known) {
                let (envelope, options) = *known;
                Box::pin(on_death(shared, &envelope, options)).await;
            }
            return;
        }
    };
    Box::pin(settle::one(shared, Move::new(job.payload, to))).await;
}

/// The death handlers of a job that will not run again: its locks are released, then each
/// server middleware's `on_death` runs.
async fn on_death(shared: &Shared, envelope: &Envelope, options: &'static JobOptions) {
    super::mechanisms::release_on_death(shared.store(), envelope, options).await;
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
    if let Some(bid) = envelope
        .extra
        .get(crate::client::BATCH_KEY)
        .and_then(|b| b.as_str())
    {
        settle::batch_done(shared, bid, &envelope.jid, false).await;
    }
    if let Some(handler) = shared.registry.get(&envelope.class) {
        on_death(shared, &envelope, handler.options()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_end_has_its_row() {
        let dead = Err(Failed::unknown(Settle::Dead {
            payload: String::new(),
        }));
        let retried = Err(Failed::unknown(Settle::Retry {
            payload: String::new(),
            at: SystemTime::now(),
        }));
        let cases = [
            (
                Ok(Outcome::Done),
                Ended::Succeeded,
                false,
                Some(true),
                false,
            ),
            (
                Ok(Outcome::Skipped {
                    reason: String::new(),
                }),
                Ended::Skipped,
                false,
                Some(true),
                false,
            ),
            (
                Ok(Outcome::Cancelled),
                Ended::Cancelled,
                false,
                Some(false),
                false,
            ),
            (dead, Ended::Dead, true, Some(false), true),
            (retried, Ended::Retried, true, None, false),
            (
                Err(Failed::unknown(Settle::Discard)),
                Ended::Discarded,
                true,
                Some(false),
                true,
            ),
        ];
        for (ended, label, failure, batch, dies) in cases {
            let row = row(&ended);
            assert_eq!(
                (row.label, row.failure, row.batch, row.dies),
                (label, failure, batch, dies)
            );
        }
    }
}
