//! Where jobs live: the storage interface, split by role ([`JobStore`], [`Presence`],
//! [`KeyValue`], [`Views`], [`Batches`]; their sum is [`Broker`]), and its three backends:
//! one Redis ([`RedisBroker`], Sidekiq's layout), a Redis Cluster ([`ClusterBroker`], shards
//! of that layout) and memory ([`MemoryBroker`], the same semantics in one process).
//!
//! The worker, the client's admission and the admin views are written once against the
//! traits; backends store what they are given. `docs/backend.md` is the guide to writing
//! one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::Notify;

use crate::envelope::header;
use crate::error::BrokerError;
use crate::job::{names_a_slot, LimitTag};
use crate::time::epoch_seconds;

pub mod cluster;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod redis;
mod traits;
mod types;

pub use self::cluster::{ClusterBroker, ClusterConfig};
pub use self::memory::MemoryBroker;
pub use self::redis::{RedisBroker, RedisConfig};
pub use self::traits::{Batches, Broker, JobStore, KeyValue, Presence, Views};
pub use self::types::{
    BatchCallbacks, BatchStatus, DirectMoves, Due, Entry, Fetch, Fetched, Heartbeat, LimitEntry,
    LimitsRead, Location, MarkerRead, Move, MovedJob, Orphans, Paused, ProcessEntry, Published,
    Push, RelayStatus, Running, Settle, SortedSet, Source, Span, Stats,
};

/// Connects to the broker at `url`: one Redis (`redis://host:port/db`), a Redis Cluster
/// when the URL lists several seed nodes (`redis://a:7000,b:7000,c:7000`), or PostgreSQL
/// (`postgres://user@host/database`, with the `postgres` feature). `namespace`
/// prefixes every key on one Redis, and names the cluster's hash tags on a cluster. For
/// the admin command, the worker runner and anything else configured by a URL.
pub async fn connect(url: &str, namespace: Option<&str>) -> Result<Arc<dyn Broker>, BrokerError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return connect_postgres(url, namespace).await;
    }
    if url.contains(',') {
        let mut config = ClusterConfig::new(url);
        config.namespace = namespace.map(str::to_owned);
        return Ok(ClusterBroker::connect_with(config).await?.into());
    }
    let mut config = RedisConfig::new(url);
    config.namespace = namespace.map(str::to_owned);
    Ok(RedisBroker::connect_with(config).await?.into())
}

/// A PostgreSQL broker at `url` (its tables made by [`postgres::PgBroker::migrate`]): its
/// tables are its own namespace, so `namespace` must be `None`.
#[cfg(feature = "postgres")]
async fn connect_postgres(
    url: &str,
    namespace: Option<&str>,
) -> Result<Arc<dyn Broker>, BrokerError> {
    if namespace.is_some() {
        return Err(BrokerError::InvalidPgUrl {
            url: crate::error::redact_url(url),
            reason: "a namespace applies to Redis keys; a PostgreSQL broker's tables are \
                     `jobqueue_*` in the database the URL names"
                .into(),
        });
    }
    Ok(postgres::PgBroker::connect(url).await?.into())
}

#[cfg(not(feature = "postgres"))]
async fn connect_postgres(
    url: &str,
    _namespace: Option<&str>,
) -> Result<Arc<dyn Broker>, BrokerError> {
    Err(BrokerError::InvalidUrl {
        url: crate::error::redact_url(url),
        reason: "this build has no PostgreSQL backend: enable jobqueue's `postgres` feature".into(),
    })
}

/// The dead set keeps at most this many jobs, as Sidekiq does.
pub const DEAD_MAX_JOBS: usize = 10_000;
/// The dead set keeps jobs for at most this long, as Sidekiq does.
pub const DEAD_TIMEOUT: Duration = Duration::from_secs(180 * 24 * 3600);
/// How long a batch's state is kept after its last addition.
pub const BATCH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a finished batch's state is kept, for its status to be read, once its
/// callbacks are due.
pub const BATCH_LINGER: Duration = Duration::from_secs(24 * 3600);

/// The longest wait between two tries of a broker call that failed.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// This machine's name, as a process publishes it.
pub(crate) fn hostname() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// A new process identity, `hostname:pid:hex12`, as Sidekiq names its processes: for
/// workers, and for anything else that reports itself (the outbox's relays).
pub(crate) fn process_identity() -> String {
    use rand::RngCore;
    let mut nonce = [0u8; 6];
    rand::rng().fill_bytes(&mut nonce);
    format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        crate::envelope::hex(&nonce)
    )
}

/// Delays between tries of a failing broker call: 100 ms doubling to 5 s, with jitter,
/// without end. Every loop that calls a broker again after a failure (fetch, ack, settle,
/// the scheduler, the Redis wake-up listener) waits by this one curve.
pub(crate) fn backoff_builder() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
}

/// The delays of [`backoff_builder`], one after another.
pub(crate) fn backoff() -> ExponentialBackoff {
    backoff_builder().build()
}

/// Locks `mutex`, taking it over from a thread that panicked while holding it: the broker's
/// shared state (wake-up subscribers, tracked keys, where jobs are held) stays usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a payload stands for stored bytes that are not UTF-8 text (only the Redis broker
/// meets such bytes; it carries them in a form it can still find by value).
pub(crate) fn is_raw_bytes(payload: &str) -> bool {
    redis::is_raw(payload)
}

/// The text of a payload that stands for bytes that are not UTF-8, those bytes replaced:
/// to be shown, never acted on; `None` for any other payload.
pub(crate) fn raw_bytes_text(payload: &str) -> Option<String> {
    redis::raw_text(payload)
}

/// The limits a fetch applies to a job, from its header, and its jid (which names its
/// slots): `Err` when they cannot be applied (out of range, or without a jid).
pub(crate) fn applicable(payload: &str) -> Result<(Vec<LimitTag>, String), ()> {
    let header = header::read(payload);
    let Some(text) = header.limits else {
        return Ok((Vec::new(), String::new()));
    };
    let tags = LimitTag::parse(&text).map_err(|_| ())?;
    let jid = header.jid.map(|jid| jid.into_owned()).unwrap_or_default();
    if !tags.is_empty() && !names_a_slot(&jid) {
        return Err(());
    }
    Ok((tags, jid))
}

impl MarkerRead {
    /// The reading of `payload`'s marker, `newest` telling what the backend holds under the
    /// key its header names (none when it names none).
    pub(crate) fn of(payload: &str, newest: impl FnOnce(&str) -> Option<String>) -> Option<Self> {
        let header = header::read(payload);
        let key = header.collapse?;
        Some(Self {
            newest: newest(&key),
            key: key.into_owned(),
            at: std::time::Instant::now(),
        })
    }
}

/// What a settle does to the stored structures: the one statement of its meaning that the
/// backends carry out, with times as the scores they store.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Placement<'a> {
    /// Onto `queue`'s list, at its front or back; fetchers are woken.
    Queue {
        queue: &'a str,
        payload: &'a str,
        front: bool,
    },
    /// Into `set` at `score`. The scheduler is woken for the schedule and retry sets; the
    /// dead set is trimmed to [`dead_trim`] after the addition.
    Set {
        set: SortedSet,
        payload: &'a str,
        score: f64,
    },
    /// Nowhere: the job is dropped.
    Nowhere,
}

impl Settle {
    /// Where this settle puts the job, `now` being the time of death for the dead set.
    pub(crate) fn placement(&self, now: f64) -> Placement<'_> {
        match self {
            Settle::Queue {
                queue,
                payload,
                front,
            } => Placement::Queue {
                queue,
                payload,
                front: *front,
            },
            Settle::Schedule { payload, at } => Placement::Set {
                set: SortedSet::Schedule,
                payload,
                score: epoch_seconds(*at),
            },
            Settle::Retry { payload, at } => Placement::Set {
                set: SortedSet::Retry,
                payload,
                score: epoch_seconds(*at),
            },
            Settle::Dead { payload } => Placement::Set {
                set: SortedSet::Dead,
                payload,
                score: now,
            },
            Settle::Discard => Placement::Nowhere,
        }
    }
}

/// The dead set's trim after an addition at `now`: entries scored before the first value
/// go, then all but the newest `DEAD_MAX_JOBS`.
pub(crate) fn dead_trim(now: f64) -> (f64, usize) {
    (now - DEAD_TIMEOUT.as_secs_f64(), DEAD_MAX_JOBS)
}

/// How long a cancel notice is remembered: a mark lasts as long.
const CANCEL_NOTICE_KEPT: Duration = Duration::from_secs(3600);

/// Wake-ups for one worker: a job was pushed to a queue, or scheduled; and the jobs it has
/// heard were cancelled.
#[derive(Debug, Default)]
pub struct Wakeups {
    /// A job was pushed to a queue.
    pub queued: Notify,
    /// A job was scheduled or retried for later.
    pub scheduled: Notify,
    /// Jobs announced cancelled, and when the notice came.
    cancelled: Mutex<HashMap<String, Instant>>,
}

impl Wakeups {
    /// Whether the job `jid` was announced cancelled within the hour.
    pub fn cancelled(&self, jid: &str) -> bool {
        lock(&self.cancelled)
            .get(jid)
            .is_some_and(|at| at.elapsed() < CANCEL_NOTICE_KEPT)
    }

    fn cancel(&self, jid: &str) {
        let mut cancelled = lock(&self.cancelled);
        cancelled.retain(|_, at| at.elapsed() < CANCEL_NOTICE_KEPT);
        cancelled.insert(jid.to_owned(), Instant::now());
    }
}

/// The subscribers of a broker. Each gets its own permit, so a wake-up that comes while a
/// worker is busy is not lost.
#[derive(Debug, Default)]
pub(crate) struct WakeupHub {
    subscribers: Mutex<Vec<Weak<Wakeups>>>,
}

impl WakeupHub {
    pub(crate) fn subscribe(&self) -> Arc<Wakeups> {
        let wakeups = Arc::new(Wakeups::default());
        let mut subs = lock(&self.subscribers);
        subs.retain(|w| w.strong_count() > 0);
        subs.push(Arc::downgrade(&wakeups));
        wakeups
    }

    /// Tells every subscriber that the job `jid` is cancelled.
    pub(crate) fn cancel(&self, jid: &str) {
        let subs = lock(&self.subscribers);
        for wakeups in subs.iter().filter_map(Weak::upgrade) {
            wakeups.cancel(jid);
        }
    }

    pub(crate) fn wake(&self, queued: bool, scheduled: bool) {
        let subs = lock(&self.subscribers);
        for wakeups in subs.iter().filter_map(Weak::upgrade) {
            if queued {
                wakeups.queued.notify_one();
            }
            if scheduled {
                wakeups.scheduled.notify_one();
            }
        }
    }
}
