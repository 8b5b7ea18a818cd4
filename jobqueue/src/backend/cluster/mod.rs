//! The cluster broker: one logical queue spread over the masters of a Redis Cluster.
//!
//! The keyspace is cut into shards. Each shard is the whole single-Redis layout (queues,
//! in-flight lists, schedule, retry and dead sets, locks, limits, batches) under one hash
//! tag, so every script and transaction of the Redis broker runs unchanged within one slot;
//! the shards' tags are picked to fall in evenly spaced slots, so the masters of a cluster
//! made by `redis-cli --cluster create` serve equal numbers of them. A further tag, the
//! home, holds what belongs to no job: processes, stats, signals and what processes
//! publish. This module owns the layout (`connect`) and the routing; `jobs` (the hot path)
//! and `roles` (the other roles) carry out each method over the shards.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use tokio::task::JoinHandle;

use super::redis::{listen, Conn, RedisBroker};
use super::{lock, Broker, Push, WakeupHub};
use crate::envelope::header;
use crate::error::{redact_secrets, redact_url, BrokerError};
use crate::job::LimitTag;

mod jobs;
mod roles;

/// Redis Cluster's number of hash slots.
const SLOTS: usize = 16384;

/// How to reach a Redis Cluster and how to spread jobs over it. Its `Debug` output hides the
/// nodes' passwords.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// Seed nodes, `redis://[user:password@]host:port` each; the rest are discovered.
    pub nodes: Vec<String>,
    /// The name every key is tagged with (default `jobqueue`): several applications may
    /// share a cluster under different names.
    pub namespace: Option<String>,
    /// The number of shards, used when the cluster has none recorded yet (the first
    /// process to connect records it, and every later one uses the recorded number).
    /// Default: the number of masters.
    pub shards: Option<usize>,
    /// Queues spread over fewer shards than all (their jobs go to the first N): one shard
    /// keeps a queue in first-in, first-out order.
    pub queue_shards: HashMap<String, usize>,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// How long to wait for an answer to a command.
    pub response_timeout: Duration,
    /// Replicas each push waits for, and for how long (see
    /// [`ClusterConfig::wait_for_replicas`]).
    pub wait_for_replicas: Option<(usize, Duration)>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|n| redact_url(n)).collect();
        f.debug_struct("ClusterConfig")
            .field("nodes", &nodes)
            .field("namespace", &self.namespace)
            .field("shards", &self.shards)
            .field("queue_shards", &self.queue_shards)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("wait_for_replicas", &self.wait_for_replicas)
            .finish()
    }
}

impl ClusterConfig {
    /// The defaults for seed nodes given as `redis://host:port,host:port,...` (a node
    /// without a scheme takes the first one's).
    pub fn new(nodes: &str) -> Self {
        let mut parts = nodes.split(',').map(str::trim).filter(|n| !n.is_empty());
        let first = parts.next().unwrap_or_default().to_owned();
        let scheme = first
            .split_once("://")
            .map(|(scheme, _)| scheme.to_owned())
            .unwrap_or_else(|| "redis".to_owned());
        let mut all = vec![first];
        all.extend(parts.map(|node| match node.contains("://") {
            true => node.to_owned(),
            false => format!("{scheme}://{node}"),
        }));
        Self {
            nodes: all,
            namespace: None,
            shards: None,
            queue_shards: HashMap::new(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            wait_for_replicas: None,
        }
    }

    /// Tags every key with `namespace` instead of `jobqueue`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Cuts a new cluster's keyspace into `shards` shards (see [`ClusterConfig::shards`]).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards.max(1));
        self
    }

    /// Spreads `queue`'s jobs over its first `shards` shards only.
    pub fn queue_shards(mut self, queue: impl Into<String>, shards: usize) -> Self {
        self.queue_shards.insert(queue.into(), shards.max(1));
        self
    }

    /// Makes every push wait until `replicas` replicas of its shard's master have it
    /// (`WAIT`), for at most `timeout`; see
    /// [`RedisConfig::wait_for_replicas`](crate::RedisConfig::wait_for_replicas).
    pub fn wait_for_replicas(mut self, replicas: usize, timeout: Duration) -> Self {
        self.wait_for_replicas = Some((replicas, timeout));
        self
    }
}

/// A broker on a Redis Cluster: one logical queue spread over shards on every master.
///
/// Not compatible with Ruby Sidekiq, which does not run on a cluster. Cheap to clone.
///
/// ```no_run
/// # async fn example() -> Result<(), jobqueue::BrokerError> {
/// let broker = jobqueue::ClusterBroker::connect("redis://10.0.0.1:7000,10.0.0.2:7000").await?;
/// let client = jobqueue::Client::new(broker.clone());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterBroker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Each shard: the Redis broker's layout under its own hash tag.
    shards: Vec<RedisBroker>,
    /// Processes, stats, signals, and what processes publish.
    home: RedisBroker,
    queue_shards: HashMap<String, usize>,
    /// The shard of each job this process holds in an in-flight list, by the hash of its
    /// payload, so that its acknowledgement or settle goes to that shard alone.
    held: Mutex<HashMap<u64, usize>>,
    /// Where the next round-robin push and the next fetch begin: from a random shard, so
    /// that short-lived producers (one push per process) and many workers spread too.
    next_push: AtomicUsize,
    next_fetch: AtomicUsize,
    hub: Arc<WakeupHub>,
    listener: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl ClusterBroker {
    /// Connects to the cluster of the seed nodes `nodes` (`redis://a:7000,b:7001,...`) with
    /// the default settings.
    pub async fn connect(nodes: &str) -> Result<Self, BrokerError> {
        Self::connect_with(ClusterConfig::new(nodes)).await
    }

    /// Connects with the given settings, and reads the number of shards the cluster keeps
    /// (recording it, when the cluster has none, from the settings or its masters).
    pub async fn connect_with(config: ClusterConfig) -> Result<Self, BrokerError> {
        let all = config.nodes.join(",");
        let invalid = |e: redis::RedisError| BrokerError::InvalidUrl {
            url: redact_url(&all),
            reason: redact_secrets(&e.to_string(), &all),
        };
        // A node that refuses a few reconnections is dropped, so that the next command for
        // its slots reads the topology afresh and finds the replica that took over (left
        // to retry forever, the client would keep waiting on the dead address).
        let client = ClusterClientBuilder::new(config.nodes.clone())
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout)
            .max_connection_attempts(NonZeroUsize::MIN.saturating_add(2))
            .build()
            .map_err(invalid)?;
        let conn = tokio::time::timeout(config.connect_timeout * 2, client.get_async_connection())
            .await
            .map_err(|_| BrokerError::Timeout(config.connect_timeout))??;
        let conn = Conn::Cluster(conn);
        let base = config.namespace.as_deref().unwrap_or("jobqueue");
        let hub = Arc::new(WakeupHub::default());
        let slice = |tag: String| {
            RedisBroker::slice(
                conn.clone(),
                &tag,
                config.wait_for_replicas,
                Arc::clone(&hub),
            )
        };
        let home = slice(format!("{{{base}}}"));
        let proposed = match config.shards {
            Some(count) => count,
            None => masters(&mut conn.clone()).await?,
        };
        let count = home.shard_count(proposed).await?.max(1);
        let shards: Vec<RedisBroker> = shard_tags(base, count).into_iter().map(slice).collect();
        let mut channels: Vec<String> =
            shards.iter().map(|s| s.wake_channel().to_owned()).collect();
        channels.push(home.wake_channel().to_owned());
        // Any node hears every publication; the listener moves to the next when one fails.
        let listeners = config
            .nodes
            .iter()
            .map(|node| redis::Client::open(node.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let listener = tokio::spawn(listen(listeners, channels, Arc::clone(&hub)));
        Ok(Self {
            inner: Arc::new(Inner {
                shards,
                home,
                queue_shards: config.queue_shards,
                held: Mutex::default(),
                next_push: AtomicUsize::new(rand::random::<u32>() as usize),
                next_fetch: AtomicUsize::new(rand::random::<u32>() as usize),
                hub,
                listener,
            }),
        })
    }

    /// How many shards the keyspace is cut into.
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// The shard a pushed job goes to: a job with limits by its first limit key (so that
    /// key's slots are counted in one place, and its jobs keep their order), any other in
    /// turn over its queue's shards.
    fn shard_for(&self, push: &Push) -> usize {
        self.shard_placing(push, None)
    }

    /// Like [`ClusterBroker::shard_for`], a job without limits or a marker going by
    /// `by`'s slot, when given, rather than in turn: the same shard each time.
    fn shard_placing(&self, push: &Push, by: Option<&str>) -> usize {
        let inner = &self.inner;
        let spread = inner
            .queue_shards
            .get(&push.queue)
            .copied()
            .unwrap_or(usize::MAX)
            .clamp(1, inner.shards.len());
        let header = header::read(&push.payload);
        let limits = header.limits.and_then(|text| LimitTag::parse(&text).ok());
        if let Some(tag) = limits.as_deref().and_then(<[_]>::first) {
            return slot(&tag.key) % spread;
        }
        // A collapsible job goes beside its marker, so the fetch reads it there.
        match header.collapse.map(|key| self.shard_of_key(&key)) {
            Some(home) if home < spread => home,
            _ => match by {
                Some(key) => slot(key) % spread,
                None => inner.next_push.fetch_add(1, Ordering::Relaxed) % spread,
            },
        }
    }

    /// The index of the shard a key-named thing lives on.
    fn shard_of_key(&self, key: &str) -> usize {
        slot(key) % self.inner.shards.len()
    }

    /// The shard a key-named thing (a lock, a batch) lives on.
    fn shard_by_key(&self, key: &str) -> &RedisBroker {
        &self.inner.shards[self.shard_of_key(key)]
    }

    /// Remembers that `payloads` sit in an in-flight list on `shard`.
    fn hold<'a>(&self, shard: usize, payloads: impl IntoIterator<Item = &'a str>) {
        let mut held = lock(&self.inner.held);
        for payload in payloads {
            held.insert(fingerprint(payload), shard);
        }
    }

    /// The shard holding `payload` in an in-flight list, forgetting it; `None` when this
    /// process did not take it (the caller then asks every shard).
    fn release(&self, payload: &str) -> Option<usize> {
        lock(&self.inner.held).remove(&fingerprint(payload))
    }
}

impl From<ClusterBroker> for Arc<dyn Broker> {
    fn from(broker: ClusterBroker) -> Self {
        Arc::new(broker)
    }
}

/// The number of masters serving slots.
async fn masters(conn: &mut Conn) -> Result<usize, BrokerError> {
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut ids: Vec<String> = Vec::new();
    for range in ranges {
        // [start, end, [host, port, id, ...], replicas...]
        if let redis::Value::Array(fields) = range {
            if let Some(redis::Value::Array(master)) = fields.get(2) {
                ids.push(format!("{:?}", master.get(..2)));
            }
        }
    }
    ids.sort();
    ids.dedup();
    match ids.len() {
        0 => Err(BrokerError::Cluster(
            "CLUSTER SLOTS lists no master; is every slot assigned (redis-cli --cluster check)?"
                .into(),
        )),
        n => Ok(n),
    }
}

/// The hash tags of `count` shards under `base`: shard i's is the first `base-k` whose slot
/// lies in the i-th of `count` equal slot ranges, so the shards spread as evenly as the
/// slots do. The same on every process.
fn shard_tags(base: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let range = (i * SLOTS / count)..((i + 1) * SLOTS / count).max(i * SLOTS / count + 1);
            (0..)
                .map(|k| format!("{{{base}-{k}}}"))
                .find(|tag| range.contains(&slot(&tag[1..tag.len() - 1])))
                .unwrap_or_default()
        })
        .collect()
}

/// The hash slot of `key` (its whole text: callers pass tags and names, not braced keys).
fn slot(key: &str) -> usize {
    usize::from(crc16::State::<crc16::XMODEM>::calculate(key.as_bytes())) % SLOTS
}

fn fingerprint(payload: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    payload.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // CLUSTER KEYSLOT answers, from Redis's documentation and a live server.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("123456789"), 12739);
    }

    #[test]
    fn shard_tags_fall_in_equal_slot_ranges() {
        for count in [1, 3, 6, 16] {
            let tags = shard_tags("jobqueue", count);
            assert_eq!(tags.len(), count);
            for (i, tag) in tags.iter().enumerate() {
                let s = slot(&tag[1..tag.len() - 1]);
                assert!(
                    s * count / SLOTS == i,
                    "{tag} at slot {s} for shard {i} of {count}"
                );
            }
        }
        assert_eq!(shard_tags("app", 3), shard_tags("app", 3));
    }

    #[test]
    fn seed_nodes_take_the_first_ones_scheme() {
        let config = ClusterConfig::new("rediss://a:7000, b:7001,redis://c:7002");
        assert_eq!(
            config.nodes,
            ["rediss://a:7000", "rediss://b:7001", "redis://c:7002"]
        );
    }

    #[test]
    fn neither_debug_nor_an_invalid_url_error_shows_a_password() {
        let config = ClusterConfig::new("redis://ann:hunter2@a:7000, :swordfish@b:notaport");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("swordfish"),
            "{debug}"
        );
        assert!(debug.contains("redis://ann:***@a:7000"), "{debug}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let Err(e) = runtime.block_on(ClusterBroker::connect_with(config)) else {
            panic!("a port that is not a number is refused");
        };
        let (shown, debug) = (e.to_string(), format!("{e:?}"));
        assert!(matches!(e, BrokerError::InvalidUrl { .. }), "{debug}");
        for text in [&shown, &debug] {
            assert!(
                !text.contains("hunter2") && !text.contains("swordfish"),
                "{text}"
            );
        }
        assert!(shown.contains("ann:***@a:7000"), "{shown}");
    }
}
