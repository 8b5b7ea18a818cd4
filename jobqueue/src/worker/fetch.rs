//! The fetch loop: takes as many jobs as there are free slots, one round trip at a time,
//! and runs each in its own task. Never spins: with nothing to do it waits for a push
//! notification, or `idle_poll` for jobs pushed by producers that do not notify.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::{dispatch, AckMessage, Shared};

/// How often [`crate::Queues::all`] looks for new queues.
const QUEUE_REFRESH: Duration = Duration::from_secs(5);
/// The most jobs taken in one round trip.
const MAX_BATCH: usize = 64;

/// Runs until the worker is quiet or stopping; returns the tasks of the jobs still running.
pub(crate) async fn run(
    shared: Arc<Shared>,
    acks: mpsc::UnboundedSender<AckMessage>,
) -> JoinSet<()> {
    let slots = Arc::new(Semaphore::new(shared.config.concurrency));
    let mut running = JoinSet::new();
    let mut state = shared.state.subscribe();
    let mut delays = dispatch::backoff();
    let mut known_queues: Vec<String> = Vec::new();
    let mut refreshed: Option<Instant> = None;

    while shared.is_running() {
        while running.try_join_next().is_some() {}
        let first = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = state.changed() => continue,
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }

        let queues = &shared.config.queues;
        if queues.is_all() && refreshed.is_none_or(|at| at.elapsed() >= QUEUE_REFRESH) {
            match shared.broker.queues().await {
                Ok(found) => {
                    known_queues = found;
                    refreshed = Some(Instant::now());
                }
                Err(e) => tracing::warn!("listing queues: {e}"),
            }
        }
        let order = queues.fetch_order(&known_queues);
        let fetched = shared
            .broker
            .fetch(&shared.identity, &order, permits.len())
            .await;
        let jobs = match fetched {
            Ok(jobs) => {
                delays = dispatch::backoff();
                jobs
            }
            Err(e) => {
                let wait = delays.next().unwrap_or(dispatch::MAX_BACKOFF);
                tracing::warn!("fetch failed, trying again in {wait:?}: {e}");
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = state.changed() => {}
                }
                continue;
            }
        };
        if jobs.is_empty() {
            drop(permits);
            tokio::select! {
                _ = shared.wakeups.queued.notified() => {}
                _ = tokio::time::sleep(shared.config.idle_poll) => {}
                _ = state.changed() => {}
            }
            // A new queue may be what woke us.
            refreshed = None;
            continue;
        }
        for (job, permit) in jobs.into_iter().zip(permits) {
            running.spawn(dispatch::run(
                Arc::clone(&shared),
                job,
                acks.clone(),
                permit,
            ));
        }
    }
    running
}
