//! The scheduler: moves due jobs from the `schedule` and `retry` sets to their queues, as
//! Sidekiq's `scheduled.rb`, through the client again (middleware, size check, mechanisms),
//! and brings back jobs set aside by their limits when their keys have room.
//!
//! When the client has no middleware, passing a job through it would only stamp its
//! `enqueued_at`, unless its class has a mechanism that acts at enqueue; the broker may
//! then stamp and move such jobs itself, in the step that takes them (the Redis scripts
//! do), and the process sees only the rest.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join, join_all};

use super::{settle, Shared};
use crate::broker::{self, DirectMoves, Settle, SortedSet};
use crate::client::{self, Admitted, Origin};
use crate::envelope::Envelope;
use crate::error::{BrokerError, Error};
use crate::metrics;
use crate::retry;
use crate::time::{after, epoch_seconds, now};

/// How long a due job waits when client middleware failed on it (a broker error).
const MIDDLEWARE_RETRY: Duration = Duration::from_secs(5);

/// How many due jobs are moved per round trip.
const DUE_BATCH: usize = 1000;

/// Moves due jobs to their queues until the worker stops. Sleeps until the earliest due
/// time, woken early when a job is scheduled, and looks again at least every
/// `poll_interval` for jobs scheduled by other producers.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut state = shared.state.subscribe();
    let mut delays = broker::backoff();
    // A due job that passing through the client would only restamp may be moved by the
    // broker itself: when the client has no middleware, and its class no mechanism that
    // acts at enqueue.
    let through_client = shared
        .client
        .chain()
        .is_empty()
        .then(|| shared.registry.enqueue_mechanisms());
    while shared.is_running() {
        let wait = match enqueue_due(&shared, through_client.as_deref()).await {
            Ok(next) => {
                // Be told of jobs scheduled by producers that do not notify; one made before
                // the watch began is found by one more look.
                match shared.broker.watch(&[], true).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => tracing::debug!("watching the schedule: {e}"),
                }
                delays = broker::backoff();
                let poll = shared.config.poll_interval;
                next.map_or(poll, |at| {
                    Duration::from_secs_f64((at - now()).max(0.0)).min(poll)
                })
            }
            Err(e) => {
                metrics::broker_error("schedule");
                tracing::warn!("scheduler: {e}");
                delays.next().unwrap_or(broker::MAX_BACKOFF)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.wakeups.scheduled.notified() => {}
            _ = state.changed() => {}
        }
    }
}

/// Moves every due job, then returns the next due time. The broker moves those it may
/// (see [`DirectMoves`]) when `through_client` is given.
async fn enqueue_due(
    shared: &Shared,
    through_client: Option<&[&'static str]>,
) -> Result<Option<f64>, BrokerError> {
    for set in [SortedSet::Retry, SortedSet::Schedule] {
        // The next batch is taken while the last goes through the client middleware and
        // to its queues: the steps wait on different things (the broker's script, this
        // process's CPU and the settle's round trip), so a burst of due jobs moves at the
        // pace of the slower step, not of their sum.
        let mut taken: Option<(f64, Vec<(f64, String)>)> = None;
        loop {
            let taken_at = now();
            let direct = through_client.map(|through_client| DirectMoves {
                enqueued_at: taken_at,
                max_payload_bytes: shared.client.payload_limit(),
                through_client,
                named: client::enqueue_spans_enabled(),
            });
            let take = shared
                .broker
                .take_due(&shared.identity, set, taken_at, DUE_BATCH, direct);
            let previous = async {
                if let Some((at, due)) = taken.take() {
                    move_batch(shared, set, at, due).await;
                }
            };
            // A failed take returns once the batch before it has been moved.
            let (due, ()) = join(take, previous).await;
            let due = due?;
            let last = due.len() < DUE_BATCH;
            for at in &due.moved {
                metrics::late(set.key(), taken_at - at);
            }
            // Each moved job's enqueue span, as the client would have opened.
            for job in &due.named {
                drop(client::enqueue_span(
                    &job.jid,
                    &job.class,
                    &job.queue,
                    origin(set),
                ));
            }
            if !due.taken.is_empty() {
                taken = Some((taken_at, due.taken));
            }
            if last {
                break;
            }
        }
        if let Some((at, due)) = taken {
            move_batch(shared, set, at, due).await;
        }
    }
    // Jobs set aside by their limits whose keys may have room.
    shared
        .broker
        .unpark_due(now(), shared.config.heartbeat_ttl)
        .await?;
    shared.broker.next_due().await
}

/// Moves one batch of due jobs, taken at `taken_at`, through the client middleware
/// concurrently, then to their queues in one trip.
async fn move_batch(shared: &Shared, set: SortedSet, taken_at: f64, due: Vec<(f64, String)>) {
    for (at, _) in &due {
        metrics::late(set.key(), taken_at - at);
    }
    let moves = join_all(due.into_iter().map(|(_, payload)| async move {
        let to = match Envelope::parse(&payload) {
            Ok(envelope) => to_queue(shared, &payload, envelope, set).await,
            Err(e) => retry::invalid_payload(set.key(), &payload, &e),
        };
        (payload, to)
    }))
    .await;
    settle::many(shared, moves).await;
}

/// Why a due job from `set` is pushed.
fn origin(set: SortedSet) -> Origin {
    match set {
        SortedSet::Retry => Origin::Retry,
        _ => Origin::Scheduled,
    }
}

/// Where a due job goes: through the client middleware again, as Sidekiq does, then to its
/// queue, unless the middleware keeps it out.
async fn to_queue(shared: &Shared, payload: &str, envelope: Envelope, set: SortedSet) -> Settle {
    let origin = origin(set);
    let options = shared.registry.get(&envelope.class).map(|h| h.options());
    let (class, jid) = (envelope.class.clone(), envelope.jid.clone());
    match shared.client.admit(envelope, None, options, origin).await {
        Ok(Admitted::Push(push, _)) => match push.at {
            None => Settle::Queue {
                queue: push.queue,
                payload: push.payload,
                front: false,
            },
            Some(at) => Settle::Schedule {
                payload: push.payload,
                at: epoch_seconds(at),
            },
        },
        Ok(Admitted::Existing(existing)) => {
            tracing::info!("{class} {jid} dropped when due: job {existing} stands for it");
            Settle::Discard
        }
        Err(Error::Skipped { reason, .. }) => {
            tracing::info!("{class} {jid} dropped when due: {reason}");
            Settle::Discard
        }
        Err(Error::PayloadTooLarge { limit, .. }) => {
            tracing::error!("{class} {jid} dead when due: its payload is over {limit} bytes");
            retry::too_large(set.key(), payload, limit)
        }
        Err(e) => {
            tracing::warn!(
                "{class} {jid}: client middleware failed, trying again in {MIDDLEWARE_RETRY:?}: {e}"
            );
            Settle::Schedule {
                payload: payload.to_owned(),
                at: after(MIDDLEWARE_RETRY),
            }
        }
    }
}
