//! The worker: fetch loop, processor, concurrency, heartbeat, recovery and shutdown.
//!
//! ```no_run
//! # use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize, Job)]
//! # #[job(queue = "emails", idempotent)]
//! # struct SendWelcome { user_id: u64 }
//! # #[async_trait]
//! # impl Perform for SendWelcome {
//! #     async fn perform(&self, _: &JobContext) -> Result<(), JobError> { Ok(()) }
//! # }
//! use jobqueue::{Queues, RedisBroker, Worker};
//!
//! # async fn run() -> Result<(), jobqueue::Error> {
//! let broker = RedisBroker::connect("redis://127.0.0.1:6379").await?;
//! Worker::builder(broker)
//!     .queues(Queues::parse(["critical,2", "emails"])?)
//!     .concurrency(20)
//!     .register::<SendWelcome>()
//!     .build()?
//!     .run() // until SIGINT or SIGTERM; SIGTSTP makes it quiet
//!     .await
//! # }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldhash::HashMap;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::{Broker, Fetched, KeyValue, Running, Wakeups};
use crate::client::Client;
use crate::envelope::Envelope;
use crate::error::{BrokerError, Error};
use crate::schedule::Periodic;

mod acker;
mod budgets;
mod builder;
mod config;
mod fetch;
mod finish;
mod health;
mod heartbeat;
mod mechanisms;
mod middleware;
mod processor;
mod queues;
mod recovery;
pub(crate) mod registry;
mod sampler;
mod scheduler;
mod settle;
mod signals;
mod ticker;

pub use self::builder::WorkerBuilder;
pub use self::config::WorkerConfig;
pub use self::health::Health;
pub use self::middleware::{Outcome, ServerChain, ServerJob, ServerMiddleware, ServerNext};
pub use self::queues::Queues;
use self::registry::Registry;

/// How long each last call to the broker at shutdown may take.
const LAST_CALLS: Duration = Duration::from_secs(5);

/// What the worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunState {
    /// Taking and running jobs.
    Running,
    /// Running the jobs it has, taking no new ones (Sidekiq's TSTP).
    Quiet,
    /// Shutting down.
    Stopping,
}

/// A job a slot has started.
#[derive(Clone)]
pub(crate) struct Started {
    pub(crate) job: Arc<Fetched>,
    pub(crate) sensitive: &'static [&'static str],
    pub(crate) since: std::time::SystemTime,
    /// Cancelled when an operator cancels the job.
    pub(crate) cancel: CancellationToken,
}

/// Sidekiq's thread ids are short base-36 strings.
fn base36(mut n: u64) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(char::from_digit((n % 36) as u32, 36).unwrap_or('0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.iter().rev().collect()
}

/// State shared by the worker's tasks.
pub(crate) struct Shared {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) client: Client,
    pub(crate) server_chain: ServerChain,
    pub(crate) periodic: Vec<Periodic>,
    pub(crate) registry: Registry,
    pub(crate) config: WorkerConfig,
    pub(crate) identity: String,
    pub(crate) info: String,
    pub(crate) wakeups: Arc<Wakeups>,
    pub(crate) state: watch::Sender<RunState>,
    /// Whether the state is past running, for the jobs' contexts.
    pub(crate) stopping: crate::perform::Stopping,
    pub(crate) busy: AtomicUsize,
    /// The jobs running now, by slot, for the heartbeat.
    pub(crate) running: Mutex<HashMap<u64, Started>>,
    /// The next slot number (a job's "thread id" on Sidekiq's Busy page).
    pub(crate) next_slot: AtomicU64,
    /// What the heartbeat last saw, for health checks.
    pub(crate) health: health::Beats,
    /// The registered handles of the per-job metrics.
    pub(crate) job_metrics: crate::metrics::JobMetrics,
    /// Per-class run figures, published with the heartbeat.
    pub(crate) class_stats: crate::class_stats::Recorder,
    /// Budget warnings and every process's class rates.
    pub(crate) budgets: budgets::Budgets,
    pub(crate) processed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) cancelled: AtomicU64,
}

impl Shared {
    /// The backend's key/value store: locks, markers, claims, marks.
    pub(crate) fn store(&self) -> &dyn KeyValue {
        self.broker.as_ref()
    }

    pub(crate) fn running_map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Started>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The jobs running now, oldest first, with sensitive argument values hidden.
    pub(crate) fn running_jobs(&self) -> Vec<Running> {
        let mut started: Vec<(u64, Started)> = self
            .running_map()
            .iter()
            .map(|(slot, s)| (*slot, s.clone()))
            .collect();
        started.sort_by_key(|(_, s)| s.since);
        started
            .into_iter()
            .map(|(slot, s)| Running {
                slot: base36(slot),
                payload: match Envelope::parse(&s.job.payload) {
                    Ok(envelope) => envelope.to_json_redacted(s.sensitive),
                    Err(_) => s.job.payload.clone(),
                },
                queue: s.job.queue.clone(),
                since: s.since,
            })
            .collect()
    }

    pub(crate) fn is_running(&self) -> bool {
        *self.state.borrow() == RunState::Running
    }

    /// Moves forward only: running, then quiet, then stopping.
    pub(crate) fn set_state(&self, to: RunState) {
        self.state.send_if_modified(|state| {
            let forward = matches!(
                (*state, to),
                (RunState::Running, RunState::Quiet | RunState::Stopping)
                    | (RunState::Quiet, RunState::Stopping)
            );
            if forward {
                *state = to;
            }
            forward
        });
    }
}

/// A worker process: takes jobs from its queues and runs them until shut down.
pub struct Worker {
    shared: Arc<Shared>,
}

/// Controls a running worker from elsewhere. Cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
    shared: Arc<Shared>,
}

impl WorkerHandle {
    /// Whether the worker is alive and ready, for an orchestrator's probes.
    pub fn health(&self) -> Health {
        self.shared.health.health(
            self.shared.config.heartbeat_ttl,
            *self.shared.state.borrow(),
        )
    }

    /// Stops taking new jobs; running ones finish. The worker keeps its heartbeat.
    pub fn quiet(&self) {
        self.shared.set_state(RunState::Quiet);
    }

    /// Shuts the worker down gracefully.
    pub fn shutdown(&self) {
        self.shared.set_state(RunState::Stopping);
    }

    /// What the worker is doing now.
    pub fn state(&self) -> RunState {
        *self.shared.state.borrow()
    }

    /// The process identity, as listed in Sidekiq's process set.
    pub fn identity(&self) -> &str {
        &self.shared.identity
    }
}

impl Worker {
    /// Starts building a worker on `broker` (a [`MemoryBroker`](crate::MemoryBroker), a
    /// [`RedisBroker`](crate::RedisBroker), or an `Arc<dyn Broker>` shared with others).
    pub fn builder(broker: impl Into<Arc<dyn Broker>>) -> WorkerBuilder {
        WorkerBuilder::new(broker.into())
    }

    /// A handle to make the worker quiet or shut it down while it runs.
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully. SIGTSTP makes it quiet.
    pub async fn run(self) -> Result<(), Error> {
        let handle = self.handle();
        let signals = tokio::spawn(async move {
            if let Err(e) = signals::listen(&handle).await {
                tracing::error!("cannot listen for shutdown signals: {e}");
            }
        });
        let result = self.run_until(std::future::pending::<()>()).await;
        signals.abort();
        result
    }

    /// Runs until `shutdown` completes (or a shutdown through the handle or Redis), then
    /// shuts down gracefully: no new jobs, running ones get `shutdown_timeout` to finish,
    /// the rest go back to the front of their queues.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let shared = self.shared;
        tokio::pin!(shutdown);
        if !start(&shared, &mut shutdown).await {
            return Ok(());
        }

        let (done_tx, done_rx) = watch::channel(false);
        let heartbeat = tokio::spawn(heartbeat::run(Arc::clone(&shared), done_rx.clone()));
        let sampler = tokio::spawn(sampler::run(Arc::clone(&shared), done_rx));
        let scheduler = tokio::spawn(scheduler::run(Arc::clone(&shared)));
        let periodic = tokio::spawn(ticker::run(Arc::clone(&shared)));
        let (ack_tx, ack_rx) = mpsc::channel(acker::ACK_BACKLOG);
        let acker = tokio::spawn(acker::run(Arc::clone(&shared), ack_rx));

        let stopping = async {
            let mut state = shared.state.subscribe();
            tokio::select! {
                _ = &mut shutdown => shared.set_state(RunState::Stopping),
                _ = state.wait_for(|s| *s == RunState::Stopping) => {}
            }
        };
        // Quiet ends the fetch loop; running jobs and the heartbeat go on until stopping. A
        // process with periodic jobs and no job types only schedules.
        let fetching = async {
            if shared.registry.is_empty() {
                tokio::task::JoinSet::new()
            } else {
                fetch::run(Arc::clone(&shared), ack_tx.clone()).await
            }
        };
        let (running, ()) = tokio::join!(fetching, stopping);
        let handed_back = wind_down(&shared, [scheduler, periodic], running, &ack_tx).await;
        drop(ack_tx);
        let _ = done_tx.send(true);
        for mut task in [acker, heartbeat, sampler] {
            if tokio::time::timeout(LAST_CALLS, &mut task).await.is_err() {
                task.abort();
            }
        }
        let farewell = tokio::time::timeout(LAST_CALLS, async {
            let last_beat = heartbeat::beat(&shared).await;
            shared.broker.forget(&shared.identity).await?;
            last_beat
        })
        .await
        .unwrap_or(Err(BrokerError::Timeout(LAST_CALLS)));
        let handed_back = handed_back?;
        farewell?;
        if handed_back > 0 {
            tracing::info!("handed {handed_back} unfinished job(s) back to their queues");
        }
        tracing::info!(identity = %shared.identity, "worker stopped");
        Ok(())
    }
}

/// Publishes the options of this process's classes (those it runs, and those of its
/// periodic jobs), so that processes and tools without them admit and show their jobs as
/// these types would.
async fn publish_classes(shared: &Shared) {
    let mut classes = shared.registry.classes();
    classes.extend(shared.periodic.iter().map(|p| (p.class, p.options)));
    if let Err(e) = crate::client::catalog::publish(shared.broker.as_ref(), &classes).await {
        tracing::warn!("publishing the options of this process's classes: {e}");
    }
}

/// Makes this process known before it holds any job: its first heartbeat, its classes
/// published, and the jobs of processes that died recovered. A broker that does not answer
/// yet (a cluster master failing over) is asked again, by the backoff of every other broker
/// call, until it does; returns false when the worker is stopped meanwhile.
async fn start(
    shared: &Shared,
    shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> bool {
    let mut delays = crate::backend::backoff();
    let mut state = shared.state.subscribe();
    while let Err(e) = heartbeat::beat(shared).await {
        let wait = delays.next().unwrap_or(crate::backend::MAX_BACKOFF);
        crate::metrics::broker_error("heartbeat");
        tracing::warn!("registering this process failed, trying again in {wait:?}: {e}");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.as_mut() => return false,
            _ = state.wait_for(|s| *s == RunState::Stopping) => return false,
        }
    }
    publish_classes(shared).await;
    if let Err(e) = recovery::recover_orphans(shared).await {
        tracing::warn!("recovering jobs of dead processes: {e}");
    }
    tracing::info!(identity = %shared.identity, "worker started");
    true
}

/// Stops the scheduler and ticker, gives `running` jobs the shutdown timeout to finish, has
/// the finished ones acknowledged, then hands the rest back to their queues. Returns how
/// many went back.
async fn wind_down(
    shared: &Shared,
    background: [tokio::task::JoinHandle<()>; 2],
    mut running: tokio::task::JoinSet<()>,
    acks: &mpsc::Sender<acker::AckMessage>,
) -> Result<usize, BrokerError> {
    let deadline = tokio::time::Instant::now() + shared.config.shutdown_timeout;
    for mut task in background {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
        }
    }
    let finished = tokio::time::timeout_at(deadline, async {
        while running.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !finished {
        tracing::warn!(
            "{} job(s) still running after {:?}; handing them back to their queues",
            running.len(),
            shared.config.shutdown_timeout
        );
    }
    // Finished jobs must be acknowledged before the rest is handed back, or they would be
    // handed back too. With the broker unreachable these last calls give up after a while:
    // the jobs stay in flight and other processes recover them once this process's
    // heartbeat has expired.
    let flushed = tokio::time::timeout(LAST_CALLS, acker::flush(acks)).await;
    let handed_back = match flushed {
        Ok(()) => tokio::time::timeout(LAST_CALLS, recovery::return_own(shared))
            .await
            .unwrap_or(Err(BrokerError::Timeout(LAST_CALLS))),
        Err(_) => Err(BrokerError::Timeout(LAST_CALLS)),
    };
    running.abort_all();
    while running.join_next().await.is_some() {}
    handed_back
}
