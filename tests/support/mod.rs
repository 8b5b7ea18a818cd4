//! Shared by the integration tests: a private Redis, both brokers, test jobs.
#![allow(dead_code)]

pub mod browser;
pub mod extremes;
pub mod heartbeat;
pub mod jobs;
pub mod postgres;
pub mod redis_cluster;
pub mod redis_server;
pub mod scripted_http;
pub mod store;
pub mod ticks;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobqueue::backend::postgres::{PgBroker, PgConfig};
use jobqueue::{
    Broker, ClusterBroker, ClusterConfig, MemoryBroker, RedisBroker, WorkerBuilder, WorkerConfig,
};

pub use postgres::PgServer;
pub use redis_cluster::RedisCluster;
pub use redis_server::RedisServer;
#[allow(unused_imports)]
pub use store::{request, secs, StoreExt};

/// A queue whose tests need first in, first out across the whole queue, which a cluster
/// keeps only within a shard: the cluster backend keeps it on one.
pub const ORDERED: &str = "ordered";

/// The cluster backend's settings: [`ORDERED`] on one shard.
fn cluster_config(cluster: &RedisCluster) -> ClusterConfig {
    ClusterConfig::new(&cluster.urls()).queue_shards(ORDERED, 1)
}

/// A broker under test, with the Redis server behind it when there is one.
pub struct Backend {
    pub broker: Arc<dyn Broker>,
    pub server: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
    /// The in-memory broker itself, when the backend is one.
    pub memory: Option<MemoryBroker>,
    /// The PostgreSQL server behind the broker, when there is one.
    pub pg: Option<PgServer>,
}

impl Backend {
    pub async fn memory() -> Self {
        let memory = MemoryBroker::new();
        Self {
            broker: Arc::new(memory.clone()),
            server: None,
            cluster: None,
            memory: Some(memory),
            pg: None,
        }
    }

    pub async fn redis() -> Self {
        let server = RedisServer::start();
        let broker = RedisBroker::connect(&server.url())
            .await
            .expect("connect to the test's redis-server");
        Self {
            broker: Arc::new(broker),
            server: Some(server),
            cluster: None,
            memory: None,
            pg: None,
        }
    }

    /// A cluster of three masters with a replica each, and a broker spreading its queues
    /// over it, but for [`ORDERED`], kept on one shard.
    pub async fn cluster() -> Self {
        let cluster = tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .expect("start a redis cluster");
        let broker = ClusterBroker::connect_with(cluster_config(&cluster))
            .await
            .expect("connect to the test's redis cluster");
        Self {
            broker: Arc::new(broker),
            server: None,
            cluster: Some(cluster),
            memory: None,
            pg: None,
        }
    }

    /// A PostgreSQL server of the test's own, its tables made by the crate's migrations.
    pub async fn postgres() -> Self {
        let pg = tokio::task::spawn_blocking(PgServer::start)
            .await
            .expect("start postgres");
        let broker = pg_broker(&pg).await;
        broker.migrate().await.expect("apply the migrations");
        Self {
            broker: Arc::new(broker),
            server: None,
            cluster: None,
            memory: None,
            pg: Some(pg),
        }
    }

    /// Another handle on the same store, with its own connection on Redis, as another
    /// process would have.
    pub async fn another_broker(&self) -> Arc<dyn Broker> {
        match (&self.server, &self.cluster) {
            (Some(server), _) => Arc::new(
                RedisBroker::connect(&server.url())
                    .await
                    .expect("connect to the test's redis-server"),
            ),
            (_, Some(cluster)) => Arc::new(
                ClusterBroker::connect_with(cluster_config(cluster))
                    .await
                    .expect("connect to the test's redis cluster"),
            ),
            _ => match &self.pg {
                Some(pg) => Arc::new(pg_broker(pg).await),
                None => Arc::clone(&self.broker),
            },
        }
    }

    pub fn client(&self) -> jobqueue::Client {
        jobqueue::Client::new(Arc::clone(&self.broker))
    }

    pub fn admin(&self) -> jobqueue::Admin {
        jobqueue::Admin::new(Arc::clone(&self.broker))
    }

    /// A worker builder with short intervals, so tests about heartbeats and recovery do not
    /// wait for production timeouts.
    pub fn worker(&self) -> WorkerBuilder {
        jobqueue::Worker::builder(Arc::clone(&self.broker)).config(fast_config())
    }
}

/// A broker on `pg`, looking for unannounced jobs every 20 ms.
pub async fn pg_broker(pg: &PgServer) -> PgBroker {
    let mut config = PgConfig::new(pg.url());
    config.watch_interval = Duration::from_millis(20);
    PgBroker::connect_with(config)
        .await
        .expect("connect to the test's postgres")
}

/// A worker running in the background.
pub struct Running {
    pub handle: jobqueue::WorkerHandle,
    task: tokio::task::JoinHandle<Result<(), jobqueue::Error>>,
}

impl Running {
    /// Shuts the worker down and checks that it stopped cleanly.
    pub async fn stop(self) {
        self.handle.shutdown();
        self.task
            .await
            .expect("worker task")
            .expect("clean shutdown");
    }
}

/// Builds and starts `builder` in the background.
pub fn start(builder: WorkerBuilder) -> Running {
    let worker = builder.build().expect("valid worker");
    let handle = worker.handle();
    let task = tokio::spawn(worker.run_until(std::future::pending()));
    Running { handle, task }
}

/// Quick recovery rounds, and a heartbeat that outlives any stall of a loaded machine:
/// tests make a process dead on purpose (a heartbeat with a short TTL, or a deleted one),
/// never by waiting for a live one to look dead.
pub fn fast_config() -> WorkerConfig {
    let mut config = WorkerConfig::default();
    config.concurrency = 4;
    config.shutdown_timeout = Duration::from_secs(5);
    config.heartbeat_interval = Duration::from_millis(200);
    config.heartbeat_ttl = Duration::from_secs(60);
    config.recovery_interval = Duration::from_millis(200);
    config
}

/// Waits until `condition` holds; panics with `what` after `limit`. A guard against hangs,
/// not a timing assertion.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "gave up after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the conformance body `$name(Backend)` once on each broker.
#[macro_export]
macro_rules! on_both_brokers {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::Backend::memory().await).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::Backend::redis().await).await;
                }
            )*
        }
    };
}

/// Runs the conformance body `$name(Backend)` once on each broker: in memory, on one Redis,
/// on a Redis Cluster and on PostgreSQL.
#[macro_export]
macro_rules! on_every_broker {
    ($($name:ident),* $(,)?) => {
        on_both_brokers!($($name),*);
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::Backend::postgres().await).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::Backend::cluster().await).await;
                }
            )*
        }
    };
}

/// The numbers of the ticks in the dead set as interrupted too often: a job held by a
/// process at each of its `MAX_INTERRUPTIONS` deaths is kept there as a likely poison pill.
pub async fn poison_pills(broker: &dyn Broker) -> std::collections::HashSet<u64> {
    let dead = broker
        .set_range(jobqueue::SortedSet::Dead, 0, 1000)
        .await
        .unwrap();
    dead.iter()
        .filter_map(|(_, payload)| jobqueue::Envelope::parse(payload).ok())
        .filter(|e| e.error_class.as_deref() == Some(jobqueue::retry::error_class::INTERRUPTED))
        .filter_map(|e| e.args[0]["n"].as_u64())
        .collect()
}
