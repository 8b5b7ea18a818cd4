//! The scheduler: moves due jobs from the `schedule` and `retry` sets to their queues, as
//! Sidekiq's `scheduled.rb`, through the client again (middleware, size check, mechanisms),
//! and brings back jobs set aside by their limits when their keys have room.
//!
//! When the client has no middleware, passing a job through it would only stamp its
//! `enqueued_at`, unless admission acts on its class (a lock, a marker, limits; known from
//! this process's types and from what other processes publish); the backend may then stamp
//! and move such jobs itself, in the step that takes them (the Redis scripts do), and the
//! process sees only the rest. A batch's callbacks come this way too: the backend puts them
//! in the `schedule` set, due at once, and they are admitted here.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::{join, join_all};

use super::{registry, settle, Shared};
use crate::backend::{self, DirectMoves, Move, Settle, SortedSet};
use crate::client::{self, Admitted, Origin};
use crate::envelope::Envelope;
use crate::error::{BrokerError, Error};
use crate::metrics;
use crate::retry;

/// How long a due job waits when client middleware failed on it (a broker error).
const MIDDLEWARE_RETRY: Duration = Duration::from_secs(5);

/// How many due jobs are moved per round trip.
const DUE_BATCH: usize = 1000;

/// Moves due jobs to their queues until the worker stops. Sleeps until the earliest due
/// time, woken early when a job is scheduled, and looks again at least every
/// `poll_interval` for jobs scheduled by other producers.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut state = shared.state.subscribe();
    let mut delays = backend::backoff();
    while shared.is_running() {
        let wait = match enqueue_due(&shared).await {
            Ok(next) => {
                // Be told of jobs scheduled by producers that do not notify; one made before
                // the watch began is found by one more look.
                match shared.broker.watch(&[], true).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => tracing::debug!("watching the schedule: {e}"),
                }
                delays = backend::backoff();
                let poll = shared.config.poll_interval;
                next.map_or(poll, |at| {
                    at.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                        .min(poll)
                })
            }
            Err(e) => {
                metrics::broker_error("schedule");
                tracing::warn!("scheduler: {e}");
                delays.next().unwrap_or(backend::MAX_BACKOFF)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.wakeups.scheduled.notified() => {}
            _ = state.changed() => {}
        }
    }
}

/// The classes whose due jobs may move straight to their queues, because admission does
/// not act on them (no lock, collapse key or limits to write): this process's and those
/// other processes publish so. A job of any other class, known or not, passes through the
/// client, which reads a class published since the catalog's last reading. `None` when
/// every due job must pass, because the client has middleware.
fn plain_classes(shared: &Shared) -> Option<Vec<String>> {
    if !shared.client.chain().is_empty() {
        return None;
    }
    // This process's own options decide for its classes; the published ones for the rest.
    let own = shared
        .registry
        .classes()
        .into_iter()
        .map(|(class, options)| (class.to_owned(), options));
    let others = shared
        .client
        .catalog()
        .classes()
        .into_iter()
        .filter(|(class, _)| shared.registry.get(class).is_none());
    Some(
        own.chain(others)
            .filter(|(_, options)| !registry::admission_acts_on(options))
            .map(|(class, _)| class)
            .collect(),
    )
}

/// Moves every due job, then returns the next due time. The broker moves those it may
/// itself (see [`DirectMoves`]) when no client middleware is there to run.
async fn enqueue_due(shared: &Shared) -> Result<Option<SystemTime>, BrokerError> {
    // What other processes publish, for the classes of due jobs this process does not run.
    if let Err(e) = shared.client.catalog().fresh(shared.broker.as_ref()).await {
        tracing::debug!("reading the published classes: {e}");
    }
    let plain = plain_classes(shared);
    let plain: Option<Vec<&str>> = plain
        .as_ref()
        .map(|classes| classes.iter().map(String::as_str).collect());
    for set in [SortedSet::Retry, SortedSet::Schedule] {
        // The next batch is taken while the last goes through the client middleware and
        // to its queues: the steps wait on different things (the broker's script, this
        // process's CPU and the settle's round trip), so a burst of due jobs moves at the
        // pace of the slower step, not of their sum.
        let mut taken: Option<(SystemTime, Vec<(SystemTime, String)>)> = None;
        loop {
            let taken_at = SystemTime::now();
            let direct = plain.as_deref().map(|plain| {
                DirectMoves::new(
                    taken_at,
                    shared.client.payload_limit(),
                    plain,
                    client::enqueue_spans_enabled(),
                )
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
                metrics::late(set.key(), seconds_late(taken_at, *at));
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
        .unpark_due(SystemTime::now(), shared.config.heartbeat_ttl)
        .await?;
    shared.broker.next_due().await
}

/// How late a job due at `due` is at `at`, in seconds (negative when early).
fn seconds_late(at: SystemTime, due: SystemTime) -> f64 {
    match at.duration_since(due) {
        Ok(late) => late.as_secs_f64(),
        Err(early) => -early.duration().as_secs_f64(),
    }
}

/// Moves one batch of due jobs, taken at `taken_at`, through the client middleware
/// concurrently, then to their queues in one trip.
async fn move_batch(
    shared: &Shared,
    set: SortedSet,
    taken_at: SystemTime,
    due: Vec<(SystemTime, String)>,
) {
    for (at, _) in &due {
        metrics::late(set.key(), seconds_late(taken_at, *at));
    }
    let moves = join_all(due.into_iter().map(|(_, payload)| async move {
        let to = match Envelope::parse(&payload) {
            Ok(envelope) => to_queue(shared, &payload, envelope, set).await,
            Err(e) => retry::invalid_payload(set.key(), &payload, &e),
        };
        Move::new(payload, to)
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
                at,
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
                at: SystemTime::now() + MIDDLEWARE_RETRY,
            }
        }
    }
}
