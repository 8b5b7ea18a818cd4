//! The worker: fetch loop, dispatch, concurrency, heartbeat, recovery and shutdown.
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
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::sync::{mpsc, oneshot, watch};

use crate::broker::{Broker, Wakeups};
use crate::client::Client;
use crate::envelope::now;
use crate::error::{BrokerError, Error};
use crate::job::Perform;
use crate::middleware::{ClientChain, ClientMiddleware, ServerChain, ServerMiddleware};
use crate::schedule::{Periodic, QuietWindow};

pub(crate) mod dispatch;
mod fetch;
mod heartbeat;
mod queues;
mod recovery;
mod registry;

pub use self::dispatch::error_class;
pub use self::heartbeat::resident_memory_kb;
pub use self::queues::Queues;
pub use self::recovery::MAX_INTERRUPTIONS;
use self::registry::Registry;

/// How long each last call to the broker at shutdown may take.
const LAST_CALLS: Duration = Duration::from_secs(5);

/// How many finished jobs are removed from the in-flight list per round trip, at most.
const ACK_BATCH: usize = 256;

/// Worker settings; every one has a Sidekiq-like default.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The queues to take jobs from (default: all queues).
    pub queues: Queues,
    /// Jobs run at once (default 10).
    pub concurrency: usize,
    /// How long running jobs may take to finish at shutdown (default 25 s).
    pub shutdown_timeout: Duration,
    /// Time between heartbeats (default 5 s).
    pub heartbeat_interval: Duration,
    /// How long the process counts as alive after its last heartbeat (default 60 s). Jobs
    /// of a process silent for longer are recovered by the others.
    pub heartbeat_ttl: Duration,
    /// How often to look for dead processes' jobs (default 15 s).
    pub recovery_interval: Duration,
    /// The longest the scheduler sleeps before looking at the `schedule` and `retry` sets
    /// again, for jobs scheduled by producers that do not notify (default 5 s).
    pub poll_interval: Duration,
    /// The longest an idle worker waits before looking at its queues again, for jobs
    /// pushed by producers that do not notify, such as Ruby Sidekiq (default 2 s, as
    /// Sidekiq's own fetch timeout). Jobs pushed by this library wake workers at once.
    pub idle_poll: Duration,
    /// A tag shown by Sidekiq's tools (`tag` in the process info).
    pub tag: String,
    /// The largest payload the worker runs (default 1 MiB, as the client's default); a
    /// larger one goes to the dead set with a preview of its start.
    pub max_payload_bytes: usize,
    /// How late a periodic tick may still be enqueued, when no process ran at its time
    /// (default 60 s, as sidekiq-cron); older missed ticks are skipped and logged.
    pub periodic_grace: Duration,
    /// Daily windows in which bulk jobs (`#[job(bulk)]`) do not run: a bulk job fetched
    /// inside one, or ticking inside one, waits for its end.
    pub quiet_windows: Vec<QuietWindow>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            queues: Queues::all(),
            concurrency: 10,
            shutdown_timeout: Duration::from_secs(25),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_ttl: Duration::from_secs(60),
            recovery_interval: Duration::from_secs(15),
            poll_interval: Duration::from_secs(5),
            idle_poll: Duration::from_secs(2),
            tag: String::new(),
            max_payload_bytes: crate::client::DEFAULT_MAX_PAYLOAD_BYTES,
            periodic_grace: Duration::from_secs(60),
            quiet_windows: Vec::new(),
        }
    }
}

/// Builds a [`Worker`]: queues, concurrency, job types.
pub struct WorkerBuilder {
    broker: Arc<dyn Broker>,
    config: WorkerConfig,
    registry: Registry,
    client_chain: ClientChain,
    server_chain: ServerChain,
    periodic: Vec<Periodic>,
    errors: Vec<String>,
}

impl WorkerBuilder {
    /// The queues to consume. Default: [`Queues::all`].
    pub fn queues(mut self, queues: Queues) -> Self {
        self.config.queues = queues;
        self
    }

    /// How many jobs run at once.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.config.concurrency = concurrency;
        self
    }

    /// Registers a job type; only registered types run.
    pub fn register<J: Perform>(mut self) -> Self {
        if let Some(existing) = self.registry.add::<J>() {
            self.errors.push(format!(
                "class name `{}` is registered twice, by {existing} and {}; give one of them \
                 another #[job(name = \"...\")]",
                J::NAME,
                std::any::type_name::<J>()
            ));
        }
        self
    }

    /// Enqueues a job on a schedule. Any number of processes may register the same
    /// schedule: each tick is enqueued once.
    pub fn periodic(mut self, periodic: Periodic) -> Self {
        if self.periodic.iter().any(|p| p.name() == periodic.name()) {
            self.errors.push(format!(
                "periodic job `{}` is registered twice; give each schedule its own name",
                periodic.name()
            ));
        }
        self.periodic.push(periodic);
        self
    }

    /// Keeps bulk jobs from running in a daily window (operational hours).
    pub fn quiet_window(mut self, window: QuietWindow) -> Self {
        self.config.quiet_windows.push(window);
        self
    }

    /// How long running jobs may take to finish at shutdown before they are handed back.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Replaces all settings at once (the registered job types are kept).
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Changes some settings in place.
    pub fn configure(mut self, change: impl FnOnce(&mut WorkerConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Appends `middleware` to the server chain, run around every perform.
    pub fn middleware<M: ServerMiddleware>(mut self, middleware: M) -> Self {
        self.server_chain.add(middleware);
        self
    }

    /// Appends `middleware` to the client chain of this worker, run when the scheduler moves
    /// due jobs to their queues and when jobs enqueue other jobs.
    pub fn client_middleware<M: ClientMiddleware>(mut self, middleware: M) -> Self {
        self.client_chain.add(middleware);
        self
    }

    /// Appends middleware that has a client and a server side to both chains.
    pub fn install<M>(self, middleware: M) -> Self
    where
        M: ClientMiddleware + ServerMiddleware + Clone,
    {
        self.client_middleware(middleware.clone())
            .middleware(middleware)
    }

    /// Edits the server chain: insert before or after, remove, reorder.
    pub fn server_chain(mut self, edit: impl FnOnce(&mut ServerChain)) -> Self {
        edit(&mut self.server_chain);
        self
    }

    /// Edits this worker's client chain.
    pub fn client_chain(mut self, edit: impl FnOnce(&mut ClientChain)) -> Self {
        edit(&mut self.client_chain);
        self
    }

    /// Checks the configuration. A job whose options need a mechanism that is not installed
    /// is refused here rather than run without it.
    pub fn build(self) -> Result<Worker, Error> {
        let mut errors = self.errors;
        if self.registry.is_empty() && self.periodic.is_empty() {
            errors.push(
                "no job types registered and no periodic jobs; call .register::<YourJob>()".into(),
            );
        }
        if self.config.concurrency == 0 {
            errors.push("concurrency must be at least 1".into());
        }
        if self.config.heartbeat_ttl <= self.config.heartbeat_interval * 2 {
            errors.push(format!(
                "heartbeat_ttl ({:?}) must be more than twice heartbeat_interval ({:?}), or a \
                 live process could be taken for dead",
                self.config.heartbeat_ttl, self.config.heartbeat_interval
            ));
        }
        if let Err(e) = self.config.queues.validate() {
            errors.push(e.to_string());
        }
        let installed = self.server_chain.provides();
        for (class, handler) in self.registry.iter() {
            for needed in handler.options().required_mechanisms() {
                if !installed.contains(&needed) {
                    errors.push(format!(
                        "job `{class}` needs {needed}, which this worker does not have; \
                         install it, or remove the option from the job"
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(Error::Config(errors.join("; ")));
        }

        let identity = process_identity();
        let info = serde_json::json!({
            "hostname": hostname(),
            "started_at": now(),
            "pid": std::process::id(),
            "tag": self.config.tag,
            "concurrency": self.config.concurrency,
            "queues": self.config.queues.names(),
            "labels": ["jobqueue"],
            "identity": identity,
        })
        .to_string();
        let (state, _) = watch::channel(RunState::Running);
        Ok(Worker {
            shared: Arc::new(Shared {
                wakeups: self.broker.subscribe(),
                client: Client::from_shared(Arc::clone(&self.broker)).with_chain(self.client_chain),
                server_chain: self.server_chain,
                periodic: self.periodic,
                broker: self.broker,
                registry: self.registry,
                config: self.config,
                identity,
                info,
                state,
                busy: AtomicUsize::new(0),
                processed: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
            }),
        })
    }
}

/// What the worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Taking and running jobs.
    Running,
    /// Running the jobs it has, taking no new ones (Sidekiq's TSTP).
    Quiet,
    /// Shutting down.
    Stopping,
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
    pub(crate) busy: AtomicUsize,
    pub(crate) processed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) skipped: AtomicU64,
}

impl Shared {
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

pub(crate) enum AckMessage {
    Done(String),
    Flush(oneshot::Sender<()>),
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
    /// Starts building a worker on `broker`.
    pub fn builder(broker: impl Broker) -> WorkerBuilder {
        Self::builder_shared(Arc::new(broker))
    }

    /// Starts building a worker on a broker shared with clients or other workers.
    pub fn builder_shared(broker: Arc<dyn Broker>) -> WorkerBuilder {
        WorkerBuilder {
            broker,
            config: WorkerConfig::default(),
            registry: Registry::default(),
            client_chain: ClientChain::new(),
            server_chain: ServerChain::new(),
            periodic: Vec::new(),
            errors: Vec::new(),
        }
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
            if let Err(e) = os_signals(&handle).await {
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
        // Registering first makes this process alive before it holds any job.
        heartbeat::beat(&shared).await?;
        if let Err(e) = recovery::recover_orphans(&shared).await {
            tracing::warn!("recovering jobs of dead processes: {e}");
        }
        tracing::info!(identity = %shared.identity, "worker started");

        let (done_tx, done_rx) = watch::channel(false);
        let heartbeat = tokio::spawn(heartbeat::run(Arc::clone(&shared), done_rx));
        let scheduler = tokio::spawn(crate::schedule::run(Arc::clone(&shared)));
        let periodic = tokio::spawn(crate::schedule::periodic::run(Arc::clone(&shared)));
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let acker = tokio::spawn(run_acker(Arc::clone(&shared), ack_rx));

        let stopping = async {
            let mut state = shared.state.subscribe();
            tokio::select! {
                _ = shutdown => shared.set_state(RunState::Stopping),
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
        let (mut running, ()) = tokio::join!(fetching, stopping);
        let deadline = tokio::time::Instant::now() + shared.config.shutdown_timeout;
        for mut task in [scheduler, periodic] {
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
        // Finished jobs must be acknowledged before the rest is handed back, or they would
        // be handed back too. With the broker unreachable these last calls give up after a
        // while: the jobs stay in flight and other processes recover them once this
        // process's heartbeat has expired.
        let flushed = tokio::time::timeout(LAST_CALLS, flush_acks(&ack_tx)).await;
        let handed_back = match flushed {
            Ok(()) => tokio::time::timeout(LAST_CALLS, recovery::hand_back_own(&shared))
                .await
                .unwrap_or(Err(BrokerError::Timeout(LAST_CALLS))),
            Err(_) => Err(BrokerError::Timeout(LAST_CALLS)),
        };
        running.abort_all();
        while running.join_next().await.is_some() {}
        drop(ack_tx);
        let _ = done_tx.send(true);
        for mut task in [acker, heartbeat] {
            if tokio::time::timeout(LAST_CALLS, &mut task).await.is_err() {
                task.abort();
            }
        }
        let farewell = tokio::time::timeout(LAST_CALLS, async {
            let last_beat = heartbeat::beat(&shared).await;
            shared.broker.unregister(&shared.identity).await?;
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

/// Waits until every acknowledgement sent so far has reached the broker.
async fn flush_acks(acks: &mpsc::UnboundedSender<AckMessage>) {
    let (tx, rx) = oneshot::channel();
    if acks.send(AckMessage::Flush(tx)).is_ok() {
        let _ = rx.await;
    }
}

/// Removes finished jobs from the in-flight list, batching whatever has queued up since the
/// last round trip; a failed batch is tried again until the broker answers.
async fn run_acker(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<AckMessage>) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                AckMessage::Done(payload) => batch.push(payload),
                AckMessage::Flush(tx) => flushes.push(tx),
            }
            next = if batch.len() < ACK_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let mut delays = dispatch::backoff();
        while let Err(e) = shared.broker.ack(&shared.identity, &batch).await {
            let wait = delays.next().unwrap_or(dispatch::MAX_BACKOFF);
            tracing::warn!(
                "acknowledging {} job(s) failed, trying again in {wait:?}: {e}",
                batch.len()
            );
            tokio::time::sleep(wait).await;
        }
        batch.clear();
        for tx in flushes.drain(..) {
            let _ = tx.send(());
        }
    }
}

async fn os_signals(handle: &WorkerHandle) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tstp = signal(SignalKind::from_raw(libc::SIGTSTP))?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tstp.recv() => {
                    tracing::info!("SIGTSTP: quiet, no new jobs");
                    handle.quiet();
                }
            }
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutdown signal received");
    handle.shutdown();
    Ok(())
}

fn hostname() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// `hostname:pid:hex12`, as Sidekiq names its processes.
fn process_identity() -> String {
    let mut nonce = [0u8; 6];
    rand::rng().fill_bytes(&mut nonce);
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}:{}:{hex}", hostname(), std::process::id())
}
