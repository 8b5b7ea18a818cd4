//! Time: the scheduler that moves due jobs from the `schedule` and `retry` sets to their
//! queues, the retry backoff, periodic (cron and interval) jobs, and quiet windows.

pub mod periodic;
pub mod window;

pub use self::periodic::Periodic;
pub use self::window::QuietWindow;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use rand::Rng;

use crate::broker::{Settle, SortedSet};
use crate::client::Admitted;
use crate::envelope::{now, Envelope};
use crate::middleware::Origin;
use crate::worker::{dispatch, Shared};

/// How long a due job waits when client middleware failed on it (a broker error).
const MIDDLEWARE_RETRY: Duration = Duration::from_secs(5);

/// How many due jobs are moved per round trip.
const DUE_BATCH: usize = 1000;

/// Sidekiq's delay before retry `count + 1` (count is 0 after the first failure):
/// `count^4 + 15 + rand(10) * (count + 1)` seconds.
pub fn sidekiq_backoff(count: u32) -> Duration {
    let count = u64::from(count);
    let jitter = rand::rng().random_range(0..10u64) * (count + 1);
    Duration::from_secs(count.saturating_pow(4).saturating_add(15 + jitter))
}

/// Moves due jobs to their queues until the worker stops. Sleeps until the earliest due
/// time, woken early when a job is scheduled, and looks again at least every
/// `poll_interval` for jobs scheduled by other producers.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut state = shared.state.subscribe();
    let mut delays = dispatch::backoff();
    while shared.is_running() {
        let wait = match enqueue_due(&shared).await {
            Ok(next) => {
                delays = dispatch::backoff();
                let poll = shared.config.poll_interval;
                next.map_or(poll, |at| {
                    Duration::from_secs_f64((at - now()).max(0.0)).min(poll)
                })
            }
            Err(e) => {
                tracing::warn!("scheduler: {e}");
                delays.next().unwrap_or(dispatch::MAX_BACKOFF)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.wakeups.scheduled.notified() => {}
            _ = state.changed() => {}
        }
    }
}

/// Moves every due job, then returns the next due time.
async fn enqueue_due(shared: &Shared) -> Result<Option<f64>, crate::BrokerError> {
    for set in [SortedSet::Retry, SortedSet::Schedule] {
        loop {
            let due = shared
                .broker
                .take_due(&shared.identity, set, now(), DUE_BATCH)
                .await?;
            // Through the client middleware concurrently, then to the queues in one trip.
            let moves = join_all(due.iter().map(|payload| async move {
                let to = match Envelope::parse(payload) {
                    Ok(envelope) => to_queue(shared, payload, envelope, set).await,
                    Err(e) => dispatch::invalid_payload(set.key(), payload, &e),
                };
                (payload.clone(), to)
            }))
            .await;
            dispatch::persist_many(shared, moves).await;
            if due.len() < DUE_BATCH {
                break;
            }
        }
    }
    shared.broker.next_due().await
}

/// Where a due job goes: through the client middleware again, as Sidekiq does, then to its
/// queue, unless the middleware keeps it out.
async fn to_queue(shared: &Shared, payload: &str, envelope: Envelope, set: SortedSet) -> Settle {
    let origin = match set {
        SortedSet::Retry => Origin::Retry,
        _ => Origin::Scheduled,
    };
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
        Err(crate::Error::Skipped { reason, .. }) => {
            tracing::info!("{class} {jid} dropped when due: {reason}");
            Settle::Discard
        }
        Err(e) => {
            tracing::warn!(
                "{class} {jid}: client middleware failed, trying again in {MIDDLEWARE_RETRY:?}: {e}"
            );
            Settle::Schedule {
                payload: payload.to_owned(),
                at: now() + MIDDLEWARE_RETRY.as_secs_f64(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_sidekiq() {
        for count in [0u32, 1, 5, 24] {
            let c = u64::from(count);
            let base = c.pow(4) + 15;
            for _ in 0..50 {
                let secs = sidekiq_backoff(count).as_secs();
                assert!(
                    secs >= base && secs <= base + 9 * (c + 1),
                    "{count}: {secs}"
                );
                assert_eq!((secs - base) % (c + 1), 0);
            }
        }
    }
}
