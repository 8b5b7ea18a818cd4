//! Building a worker: queues, concurrency, job types, periodic jobs, middleware. Every
//! check that can be made before the worker runs is made in [`WorkerBuilder::build`].

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::middleware::{ServerChain, ServerMiddleware};
use super::registry::Registry;
use super::{Queues, RunState, Shared, Worker, WorkerConfig};
use crate::backend::{hostname, process_identity, Broker};
use crate::client::{Client, ClientChain, ClientMiddleware};
use crate::error::Error;
use crate::perform::Perform;
use crate::schedule::{Periodic, QuietWindow};
use crate::time::now;

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
    pub(super) fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            broker,
            config: WorkerConfig::default(),
            registry: Registry::default(),
            client_chain: ClientChain::new(),
            server_chain: ServerChain::new(),
            periodic: Vec::new(),
            errors: Vec::new(),
        }
    }

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

    /// Checks the configuration.
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
        if !errors.is_empty() {
            return Err(Error::Config(errors.join("; ")));
        }

        crate::metrics::describe();
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
            // Ours: what the dashboard hides when it shows these classes' arguments.
            "sensitive": self.registry.sensitive(),
        })
        .to_string();
        let (state, _) = watch::channel(RunState::Running);
        let seen = state.subscribe();
        let stopping = Arc::new(move || *seen.borrow() != RunState::Running);
        Ok(Worker {
            shared: Arc::new(Shared {
                wakeups: self.broker.subscribe(),
                client: Client::new(Arc::clone(&self.broker))
                    .with_chain(self.client_chain)
                    .max_payload_bytes(self.config.max_payload_bytes)
                    .mechanisms(self.config.mechanisms),
                server_chain: self.server_chain,
                periodic: self.periodic,
                broker: self.broker,
                registry: self.registry,
                config: self.config,
                identity,
                info,
                state,
                stopping,
                busy: AtomicUsize::new(0),
                running: Mutex::default(),
                next_slot: AtomicU64::new(0),
                job_metrics: crate::metrics::JobMetrics::default(),
                class_stats: crate::class_stats::Recorder::default(),
                budgets: super::budgets::Budgets::default(),
                health: super::health::Beats::default(),
                processed: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
                cancelled: AtomicU64::new(0),
            }),
        })
    }
}
