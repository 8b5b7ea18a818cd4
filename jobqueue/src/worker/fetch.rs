//! The fetch loop. A fetcher task keeps a buffer of fetched jobs, refilled in one round
//! trip when half of it is free; each concurrency slot, a task of its own, takes its next
//! job from the buffer as soon as it is free, so fast jobs do not wait a round trip each. The buffer's size follows
//! the jobs: enough for what the slots start in about 10 ms at their recent pace, between
//! twice the concurrency (at most 64) and 512. Slow jobs keep it small, so a process does
//! not sit on jobs another process could start; fast jobs come hundreds to a round trip.
//! Buffered jobs are in the in-flight list like running ones, so a crash loses none. Never
//! spins: with nothing to do the fetcher waits for a push notification, or `idle_poll` for
//! jobs pushed by producers that do not notify.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinSet;

use super::acker::AckMessage;
use super::{processor, recovery, RunState, Shared};
use crate::backend::{self, Fetch, Fetched};
use crate::metrics;

/// How often [`crate::Queues::all`] looks for new queues.
const QUEUE_REFRESH: Duration = Duration::from_secs(5);
/// The smallest buffer is twice the concurrency, but no more than this.
const MIN_PREFETCH_CAP: usize = 64;
/// The largest buffer. Measured with `examples/loadtest.rs` (no-op jobs, concurrency 10):
/// a buffer of twice the concurrency drained about 29,000 jobs/s, one of 512 about 95,000,
/// with half the CPU per job in the process and in Redis.
const MAX_PREFETCH: usize = 512;
/// How much work, in time, the buffer holds at the pace jobs start: about how long a
/// fetched job waits for a slot.
const PREFETCH_WINDOW: Duration = Duration::from_millis(10);

/// The buffer's size, from the pace at which the slots start jobs.
struct Prefetch {
    floor: usize,
    started: Arc<AtomicU64>,
    seen: u64,
    at: Instant,
    /// Jobs started per second, smoothed.
    pace: f64,
}

impl Prefetch {
    fn new(concurrency: usize, started: Arc<AtomicU64>) -> Self {
        Self {
            floor: (concurrency * 2).clamp(1, MIN_PREFETCH_CAP),
            started,
            seen: 0,
            at: Instant::now(),
            pace: 0.0,
        }
    }

    /// How many jobs the buffer should hold now.
    fn target(&mut self) -> usize {
        let elapsed = self.at.elapsed();
        // Starts are counted over at least a window: over a shorter span, the slots
        // filling at once (one start in a microsecond) would look like a fast pace.
        if elapsed >= PREFETCH_WINDOW {
            let started = self.started.load(Ordering::Relaxed);
            let recent = started.saturating_sub(self.seen) as f64 / elapsed.as_secs_f64();
            self.pace = (self.pace + recent) / 2.0;
            self.seen = started;
            self.at = Instant::now();
        }
        let wanted = self.pace * PREFETCH_WINDOW.as_secs_f64();
        (wanted as usize).clamp(self.floor, MAX_PREFETCH)
    }
}

/// Runs until the worker is quiet or stopping; hands back the jobs fetched but not started,
/// and returns the slots, still running their last jobs.
///
/// Each concurrency slot is one task that takes a job from the buffer, runs it, and takes
/// the next, as Sidekiq's processor threads do. A task per job cost about 3,000 instructions
/// per job to spawn, schedule and reap (a third of a no-op job's dispatch).
pub(crate) async fn run(shared: Arc<Shared>, acks: mpsc::Sender<AckMessage>) -> JoinSet<()> {
    let started = Arc::new(AtomicU64::new(0));
    let prefetch = Prefetch::new(shared.config.concurrency, Arc::clone(&started));
    let (buffer, fetched) = mpsc::channel(MAX_PREFETCH);
    let fetcher = tokio::spawn(fetch(Arc::clone(&shared), buffer, prefetch));
    let fetched = Arc::new(Mutex::new(fetched));
    let mut slots = JoinSet::new();
    for _ in 0..shared.config.concurrency {
        slots.spawn(slot(
            Arc::clone(&shared),
            Arc::clone(&fetched),
            acks.clone(),
            Arc::clone(&started),
        ));
    }

    // The fetcher ends once the worker stops taking work; so does every slot's wait.
    let _ = fetcher.await;
    let mut fetched = fetched.lock().await;
    fetched.close();
    let mut unstarted = Vec::new();
    while let Some(job) = fetched.recv().await {
        unstarted.push(job.payload);
    }
    if !unstarted.is_empty() {
        recovery::return_unstarted(&shared, unstarted).await;
    }
    slots
}

/// One concurrency slot: runs jobs from the buffer, one at a time, until the worker stops
/// taking work. One slot at a time waits on the buffer; the others wait for it.
async fn slot(
    shared: Arc<Shared>,
    fetched: Arc<Mutex<mpsc::Receiver<Fetched>>>,
    acks: mpsc::Sender<AckMessage>,
    started: Arc<AtomicU64>,
) {
    let mut state = shared.state.subscribe();
    while shared.is_running() {
        let next = async { fetched.lock().await.recv().await };
        // The buffer first: while it holds jobs, the state is not waited on.
        let job = tokio::select! {
            biased;
            job = next => match job {
                Some(job) => job,
                None => break,
            },
            _ = state.changed() => continue,
        };
        started.fetch_add(1, Ordering::Relaxed);
        // A job's own panics end its run (see the processor); this catches one in the
        // library's code around it, which would otherwise cost the process a slot.
        let run = AssertUnwindSafe(processor::run(&shared, job, &acks));
        if run.catch_unwind().await.is_err() {
            tracing::error!("a job's run panicked outside the job; its slot goes on");
        }
    }
}

/// Which queues a fetch asks, in what order: with [`crate::Queues::all`], every queue
/// known, looked up again every [`QUEUE_REFRESH`] and after an idle wait.
struct Order {
    known: Vec<String>,
    refreshed: Option<Instant>,
}

impl Order {
    async fn now(&mut self, shared: &Shared) -> Vec<String> {
        let queues = &shared.config.queues;
        if queues.is_all()
            && self
                .refreshed
                .is_none_or(|at| at.elapsed() >= QUEUE_REFRESH)
        {
            match shared.broker.queues().await {
                Ok(found) => {
                    self.known = found;
                    self.refreshed = Some(Instant::now());
                }
                Err(e) => {
                    metrics::broker_error("queues");
                    tracing::warn!("listing queues: {e}");
                }
            }
        }
        queues.fetch_order(&self.known)
    }
}

/// Keeps the buffer filled until the worker stops taking work.
async fn fetch(shared: Arc<Shared>, buffer: mpsc::Sender<Fetched>, mut prefetch: Prefetch) {
    let mut state = shared.state.subscribe();
    let mut delays = backend::backoff();
    let mut order = Order {
        known: Vec::new(),
        refreshed: None,
    };
    while shared.is_running() {
        // Wait until at most half the buffer is full, so each round trip brings a useful
        // batch; then fill it.
        let target = prefetch.target();
        let reserved = MAX_PREFETCH - target / 2;
        let room = tokio::select! {
            room = buffer.reserve_many(reserved) => match room {
                Ok(room) => room,
                Err(_) => return,
            },
            _ = state.changed() => continue,
        };
        let held = MAX_PREFETCH - reserved - buffer.capacity();
        let wanted = target.saturating_sub(held).max(1);
        let queues = order.now(&shared).await;
        let jobs = match shared
            .broker
            .fetch(&shared.identity, request(&shared, &queues, wanted))
            .await
        {
            Ok(jobs) => {
                delays = backend::backoff();
                jobs
            }
            Err(e) => {
                let wait = delays.next().unwrap_or(backend::MAX_BACKOFF);
                metrics::broker_error("fetch");
                tracing::warn!("fetch failed, trying again in {wait:?}: {e}");
                drop(room);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = state.changed() => {}
                }
                continue;
            }
        };
        if jobs.is_empty() {
            drop(room);
            idle(&shared, &queues, &mut state).await;
            // A new queue may be what woke us.
            order.refreshed = None;
            continue;
        }
        let mut jobs = jobs.into_iter();
        for (permit, job) in room.zip(jobs.by_ref()) {
            permit.send(job);
        }
        // The rest fits: the buffer had this much room beyond the reservation.
        for job in jobs {
            if buffer.send(job).await.is_err() {
                return;
            }
        }
    }
}

/// A fetch of up to `wanted` jobs from `queues`. A full limit key is looked at again after
/// a heartbeat's lifetime, by when the slots of a process that died holding them are free;
/// a worker without limited classes does not apply limits (a job it fetches with limits is
/// one it cannot run, and refuses). Markers are read for a worker with collapsible classes.
fn request<'a>(shared: &Shared, queues: &'a [String], wanted: usize) -> Fetch<'a> {
    let mut request = Fetch::new(queues, wanted);
    if shared.registry.has_limits() {
        request = request.limits(shared.config.heartbeat_ttl);
    }
    if shared.registry.has_collapsible() {
        request = request.markers();
    }
    request
}

/// Waits, with nothing to fetch, for a push, the idle poll, or a change of state; told of
/// pushes by producers that do not notify too. A push that came before the watch began is
/// found by returning at once, for one more look.
async fn idle(shared: &Shared, queues: &[String], state: &mut watch::Receiver<RunState>) {
    match shared.broker.watch(queues, false).await {
        Ok(true) => return,
        Ok(false) => {}
        Err(e) => tracing::debug!("watching the queues: {e}"),
    }
    tokio::select! {
        _ = shared.wakeups.queued.notified() => {}
        _ = tokio::time::sleep(shared.config.idle_poll) => {}
        _ = state.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer whose last look at the pace was `ago`, with `started` jobs since.
    fn looked(prefetch: &mut Prefetch, ago: Duration, started: u64) -> usize {
        prefetch.at = Instant::now()
            .checked_sub(ago)
            .expect("the clock is past the span");
        prefetch.started.fetch_add(started, Ordering::Relaxed);
        prefetch.target()
    }

    #[test]
    fn slow_jobs_keep_the_buffer_at_twice_the_concurrency() {
        let mut prefetch = Prefetch::new(10, Arc::new(AtomicU64::new(0)));
        assert_eq!(prefetch.target(), 20, "no pace known yet");
        // Ten one-second jobs a second.
        assert_eq!(looked(&mut prefetch, Duration::from_secs(1), 10), 20);
        assert_eq!(looked(&mut prefetch, Duration::from_secs(1), 10), 20);
    }

    #[test]
    fn fast_jobs_grow_the_buffer_to_its_cap_and_a_pause_shrinks_it() {
        let mut prefetch = Prefetch::new(10, Arc::new(AtomicU64::new(0)));
        // 100,000 jobs a second: half of that pace is known after one look (about 500
        // jobs in 10 ms; the span measured is a little longer than the one set), then the
        // cap.
        let first = looked(&mut prefetch, Duration::from_millis(100), 10_000);
        assert!((450..=500).contains(&first), "{first}");
        let second = looked(&mut prefetch, Duration::from_millis(100), 10_000);
        assert_eq!(second, MAX_PREFETCH);
        // A second without a start halves the pace at each look.
        let paused = looked(&mut prefetch, Duration::from_secs(1), 0);
        assert!((340..=375).contains(&paused), "{paused}");
        let longer = looked(&mut prefetch, Duration::from_secs(1), 0);
        assert!((170..=188).contains(&longer), "{longer}");
    }

    #[test]
    fn slots_filling_at_once_do_not_grow_the_buffer() {
        let mut prefetch = Prefetch::new(20, Arc::new(AtomicU64::new(0)));
        // Twenty slots take twenty long jobs within a millisecond: no pace yet.
        assert_eq!(looked(&mut prefetch, Duration::from_millis(1), 20), 40);
        // Nothing starts for the next 20 ms.
        assert_eq!(looked(&mut prefetch, Duration::from_millis(20), 0), 40);
    }

    #[test]
    fn a_large_concurrency_starts_from_64() {
        let mut prefetch = Prefetch::new(200, Arc::new(AtomicU64::new(0)));
        assert_eq!(prefetch.target(), MIN_PREFETCH_CAP);
    }
}
