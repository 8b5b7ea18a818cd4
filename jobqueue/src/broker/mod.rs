//! Where jobs live: the [`Broker`] trait, its Redis implementation, its Redis Cluster
//! implementation (shards of the Redis layout) and the in-memory one.
//!
//! Both keep the same structures Sidekiq keeps in Redis (queue lists, `schedule`, `retry`
//! and `dead` sorted sets, process hashes, stats) plus a per-process in-flight list for
//! reliable fetch. The worker, scheduler and admin code is written once against this trait.

use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use memchr::memmem::Finder;
use tokio::sync::Notify;

use crate::error::BrokerError;

pub mod cluster;
pub mod memory;
pub mod redis;

pub use self::cluster::{ClusterBroker, ClusterConfig};
pub use self::memory::MemoryBroker;
pub use self::redis::{RedisBroker, RedisConfig};

/// Connects to the broker at `url`: one Redis (`redis://host:port/db`), or a Redis Cluster
/// when the URL lists several seed nodes (`redis://a:7000,b:7000,c:7000`). `namespace`
/// prefixes every key on one Redis, and names the cluster's hash tags on a cluster. For
/// the admin command, the worker runner and anything else configured by a URL.
pub async fn connect(url: &str, namespace: Option<&str>) -> Result<Arc<dyn Broker>, BrokerError> {
    if url.contains(',') {
        let mut config = ClusterConfig::new(url);
        config.namespace = namespace.map(str::to_owned);
        return Ok(ClusterBroker::connect_with(config).await?.into());
    }
    let mut config = RedisConfig::new(url);
    config.namespace = namespace.map(str::to_owned);
    Ok(RedisBroker::connect_with(config).await?.into())
}

/// The dead set keeps at most this many jobs, as Sidekiq does.
pub const DEAD_MAX_JOBS: usize = 10_000;
/// The dead set keeps jobs for at most this long, as Sidekiq does.
pub const DEAD_TIMEOUT: Duration = Duration::from_secs(180 * 24 * 3600);

/// The longest wait between two tries of a broker call that failed.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

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

/// A job to push: to its queue now, or to the `schedule` set when `at` is given.
#[derive(Clone, Debug)]
pub struct Push {
    /// The queue name (without the `queue:` prefix).
    pub queue: String,
    /// The JSON payload.
    pub payload: String,
    /// When the job is due; `None` means now.
    pub at: Option<SystemTime>,
}

/// A job taken from a queue into a process's in-flight list.
#[derive(Clone, Debug, PartialEq)]
pub struct Fetched {
    /// The queue it was taken from.
    pub queue: String,
    /// The payload exactly as stored; it identifies the job in the in-flight list.
    pub payload: String,
    /// Its collapse marker, read in the same step, when the fetch was asked to read markers
    /// and the payload names one.
    pub marker: Option<MarkerRead>,
}

/// A collapsible job's marker as a fetch read it: the worker skips a stale job without
/// asking the broker again while the reading is fresh.
#[derive(Clone, Debug, PartialEq)]
pub struct MarkerRead {
    /// The marker's key, as the payload names it.
    pub key: String,
    /// The newest job with that key, if the marker has not expired.
    pub newest: Option<String>,
    /// When it was read.
    pub at: Instant,
}

impl MarkerRead {
    /// The reading of `payload`'s marker, `newest` telling what the broker holds under the
    /// key the payload names (none when it names none).
    pub(crate) fn of(payload: &str, newest: impl FnOnce(&str) -> Option<String>) -> Option<Self> {
        let key = collapse_in(payload)?;
        Some(Self {
            key: key.to_owned(),
            newest: newest(key),
            at: Instant::now(),
        })
    }
}

/// A finished job leaving a process's in-flight list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Its payload as fetched.
    pub payload: String,
    /// A lock it held until now, `(key, owner)`, released in the same round trip if the
    /// owner still holds it.
    pub unlock: Option<(String, String)>,
}

impl From<String> for Ack {
    fn from(payload: String) -> Self {
        Self {
            payload,
            unlock: None,
        }
    }
}

/// One of the sorted sets Sidekiq keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SortedSet {
    /// Jobs to run at a later time (`schedule`).
    Schedule,
    /// Failed jobs waiting for their next try (`retry`).
    Retry,
    /// Jobs that will not be tried again (`dead`).
    Dead,
}

impl SortedSet {
    /// The key Sidekiq uses for this set.
    pub fn key(self) -> &'static str {
        match self {
            SortedSet::Schedule => "schedule",
            SortedSet::Retry => "retry",
            SortedSet::Dead => "dead",
        }
    }
}

/// Which due jobs [`Broker::take_due`] may move straight to their queues, stamped with
/// `enqueued_at`, instead of handing them to the process to pass through the client
/// again: given when the client has no middleware, so that passing would only restamp
/// them.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct DirectMoves<'a> {
    /// The `enqueued_at` the moved jobs get (epoch seconds).
    pub enqueued_at: f64,
    /// The largest payload the client admits, in bytes; a larger job passes through it.
    pub max_payload_bytes: usize,
    /// Classes whose jobs pass through the client whatever they are, because their
    /// mechanisms act at enqueue (a uniqueness lock renewed, a collapse key written).
    pub through_client: &'a [&'static str],
    /// Whether to name each job moved (see [`Due::named`]), for its enqueue span.
    pub named: bool,
}

/// A job a broker moved straight to its queue, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovedJob {
    /// Its jid.
    pub jid: String,
    /// Its class.
    pub class: String,
    /// The queue it went to.
    pub queue: String,
}

/// The jobs [`Broker::take_due`] took.
#[derive(Clone, Debug, Default)]
pub struct Due {
    /// The due time (epoch seconds) of each job moved straight to its queue.
    pub moved: Vec<f64>,
    /// The jobs moved, in the order of `moved`, when [`DirectMoves::named`] asked for them.
    pub named: Vec<MovedJob>,
    /// The due time and payload of each job put in the process's in-flight list, for the
    /// process to move on.
    pub taken: Vec<(f64, String)>,
}

impl Due {
    /// How many jobs were taken, moved or not.
    pub fn len(&self) -> usize {
        self.moved.len() + self.taken.len()
    }

    /// Whether no job was due.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a job leaves a process's in-flight list to.
#[derive(Clone, Debug)]
pub enum Settle {
    /// Onto a queue: at the back (`LPUSH`, a due scheduled job) or at the front (`RPUSH`,
    /// a job handed back at shutdown or recovered from a dead process, so it runs next).
    Queue {
        /// The queue name.
        queue: String,
        /// The payload to push (the job may have been updated).
        payload: String,
        /// Push to the front of the queue.
        front: bool,
    },
    /// Into the `schedule` set, due at `at` (epoch seconds).
    Schedule {
        /// The payload to store.
        payload: String,
        /// When it is due.
        at: f64,
    },
    /// Into the `retry` set, due at `at` (epoch seconds).
    Retry {
        /// The payload with its failure recorded.
        payload: String,
        /// When the retry is due.
        at: f64,
    },
    /// Into the `dead` set, trimmed to [`DEAD_MAX_JOBS`] and [`DEAD_TIMEOUT`].
    Dead {
        /// The payload with its failure recorded.
        payload: String,
    },
    /// Nowhere: the job is discarded (a failed job with `retry: false`).
    Discard,
}

/// What a settle does to the stored structures: the one statement of its meaning that both
/// brokers carry out.
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
                score: *at,
            },
            Settle::Retry { payload, at } => Placement::Set {
                set: SortedSet::Retry,
                payload,
                score: *at,
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

/// A job running in a process, as Sidekiq's Busy page lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Running {
    /// Which of the process's slots runs it (Sidekiq's thread id).
    pub slot: String,
    /// The queue it was taken from.
    pub queue: String,
    /// Its payload, with sensitive argument values hidden.
    pub payload: String,
    /// When it started.
    pub since: SystemTime,
}

/// What a worker process publishes about itself, in Sidekiq's process hash.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    /// `hostname:pid:random`, as Sidekiq's identity.
    pub identity: String,
    /// The JSON `info` field (hostname, pid, queues, concurrency, ...).
    pub info: String,
    /// Jobs running now.
    pub busy: usize,
    /// When the heartbeat was sent.
    pub beat: SystemTime,
    /// The process has stopped fetching.
    pub quiet: bool,
    /// Resident memory in KiB.
    pub rss_kb: u64,
    /// Jobs finished and failed since the last heartbeat, added to `stat:*`.
    pub processed: u64,
    /// See `processed`.
    pub failed: u64,
    /// Jobs skipped by middleware since the last heartbeat, added to `jobqueue:stat:skipped`.
    pub skipped: u64,
    /// Running jobs cancelled since the last heartbeat, added to `jobqueue:stat:cancelled`.
    pub cancelled: u64,
    /// How long the process hash lives without a further heartbeat.
    pub ttl: Duration,
    /// How many jobs it runs at once.
    pub concurrency: usize,
    /// The jobs running now.
    pub running: Vec<Running>,
    /// Per-class run figures of the last minute, as JSON (see [`crate::class_stats`]).
    pub classes: String,
}

/// A process seen in the `processes` set.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ProcessEntry {
    /// Its identity.
    pub identity: String,
    /// The `info` JSON.
    pub info: String,
    /// Jobs running at its last heartbeat.
    pub busy: usize,
    /// Its last heartbeat.
    pub beat: SystemTime,
    /// Whether it has stopped fetching.
    pub quiet: bool,
    /// Resident memory in KiB at its last heartbeat.
    pub rss_kb: u64,
    /// The jobs it was running at its last heartbeat, oldest first.
    pub running: Vec<Running>,
    /// Its per-class run figures, as JSON (empty from processes that publish none, such
    /// as Ruby Sidekiq's).
    pub classes: String,
}

impl ProcessEntry {
    /// What a process's heartbeat says about it.
    pub(crate) fn from_beat(beat: &Heartbeat) -> Self {
        Self {
            identity: beat.identity.clone(),
            info: beat.info.clone(),
            busy: beat.busy,
            beat: beat.beat,
            quiet: beat.quiet,
            rss_kb: beat.rss_kb,
            running: beat.running.clone(),
            classes: beat.classes.clone(),
        }
    }
}

/// The in-flight jobs of a process whose heartbeat has expired.
#[derive(Clone, Debug)]
pub struct Orphans {
    /// The dead process.
    pub identity: String,
    /// The jobs it had taken and not finished.
    pub payloads: Vec<String>,
}

/// Processed and failed totals (`stat:processed`, `stat:failed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Jobs finished, successfully or not.
    pub processed: u64,
    /// Jobs that failed.
    pub failed: u64,
    /// Jobs that middleware decided not to run (not a Sidekiq statistic).
    pub skipped: u64,
    /// Running jobs ended by a cancellation (not a Sidekiq statistic).
    pub cancelled: u64,
}

/// The jobs a batch pushes when it finishes.
#[derive(Clone, Debug, Default)]
pub struct BatchCallbacks {
    /// Pushed when every job has finished, some possibly dead.
    pub on_complete: Option<Push>,
    /// Pushed when every job has succeeded.
    pub on_success: Option<Push>,
}

/// A batch's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchStatus {
    /// What the batch is, as its creator described it.
    pub description: String,
    /// Jobs added to it.
    pub total: u64,
    /// Jobs not finished yet.
    pub pending: u64,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Jobs that died, or were cancelled.
    pub failed: u64,
    /// Every job has finished and the callbacks were pushed.
    pub finished: bool,
}

/// A limit key with jobs set aside for want of room.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LimitEntry {
    /// `Class:concurrency:values` or `Class:rate:values`.
    pub key: String,
    /// Slots taken: jobs fetched and not finished (concurrency) or recent starts (rate).
    pub held: usize,
    /// Jobs set aside until the key has room.
    pub parked: usize,
    /// When the key is looked at again without a release (epoch seconds).
    pub next_look: f64,
}

/// The mark of a payload's limits, and what follows their closing quote (see
/// [`crate::envelope::Envelope::limits`]). The marks are looked for with a searcher built
/// once: `str::find` builds one per call, which cost a no-op job about 1,000 instructions.
const LIMITS_MARK: &str = "\"limits\":\"";
const JID_NEXT: &str = ",\"jid\":\"";

/// A payload's jid and limits, if it has limits: `"limits":"…","jid":"…"`, as
/// [`crate::envelope::Envelope`] writes them, first. Read by a search, not by parsing the
/// payload, as the Redis scripts read them: for most payloads, one search that finds
/// nothing. The first mark is the job's own: Ruby Sidekiq, pushing a job again, may put its
/// defaults first, but never the arguments.
pub(crate) fn limits_in(payload: &str) -> Option<(&str, Vec<crate::job::LimitTag>)> {
    static FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(LIMITS_MARK));
    let at = FINDER.find(payload.as_bytes())?;
    let (text, rest) = payload[at + LIMITS_MARK.len()..].split_once('"')?;
    let jid = rest.strip_prefix(JID_NEXT)?.split('"').next()?;
    Some((jid, crate::job::LimitTag::decode(text)))
}

/// The mark of a payload's collapse key (see [`crate::envelope::Envelope::collapse`]).
const COLLAPSE_MARK: &str = "\"collapse\":\"";

/// The collapse marker key a payload names, found as the Redis fetch scripts find it: the
/// first such mark, which is the job's own when it has one, since it is written first. A
/// payload without one may still match inside its arguments; the worker compares the key
/// with the one it computes before trusting a reading.
pub(crate) fn collapse_in(payload: &str) -> Option<&str> {
    static FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(COLLAPSE_MARK));
    let at = FINDER.find(payload.as_bytes())?;
    payload[at + COLLAPSE_MARK.len()..]
        .split_once('"')
        .map(|(key, _)| key)
}

/// How long a batch's state is kept after its last addition.
pub const BATCH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Storage for queues, sets and processes, shared by clients and workers.
///
/// Every method is one round trip to Redis, or one lock of the in-memory state.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Pushes jobs: those without `at` to their queues (registering each queue in
    /// `queues`), the others to `schedule`. Wakes waiting workers and schedulers.
    async fn push(&self, jobs: &[Push]) -> Result<(), BrokerError>;

    /// Moves up to `max` jobs from the given queues, in order, into the in-flight list of
    /// `process`, skipping paused queues. Returns at once with what it found, possibly
    /// nothing.
    ///
    /// A job with limits (its payload's `limits`, see [`crate::job::LimitTag`]) is taken
    /// only if every limit has room, taking a slot in each for `process` (a concurrency
    /// slot is held until the job leaves the in-flight list, or until the process's
    /// heartbeat lapses); otherwise it is set aside, out of its queue, until
    /// [`Broker::unpark_due`] or the release of a slot brings it back. A full concurrency
    /// key is looked at again after `lease` in case no release comes. With no `lease`, for a
    /// process that runs no job class with limits, limits are not looked for, which spares
    /// Redis a search of each payload.
    ///
    /// With `markers`, the collapse marker a payload names is read in the same step
    /// ([`Fetched::marker`]), so the worker need not ask for it job by job.
    async fn fetch(
        &self,
        process: &str,
        queues: &[String],
        max: usize,
        lease: Option<Duration>,
        markers: bool,
    ) -> Result<Vec<Fetched>, BrokerError>;

    /// Brings jobs set aside by [`Broker::fetch`] back to the front of their queues, as many
    /// as their keys have room for by `now`; a concurrency key still full is looked at again
    /// after `lease`. Returns how many it brought back.
    async fn unpark_due(&self, now: f64, lease: Duration) -> Result<usize, BrokerError>;

    /// The limit keys with jobs set aside, with their slots and waiting jobs.
    async fn limits(&self) -> Result<Vec<LimitEntry>, BrokerError>;

    /// Removes finished jobs from the in-flight list of `process`, releasing the locks they
    /// name, in one round trip on one Redis.
    async fn ack(&self, process: &str, acks: &[Ack]) -> Result<(), BrokerError>;

    /// Adds the jobs `jids` to the batch `bid`, creating it (with `description` and
    /// `callbacks`) if it is new; the callbacks of an existing batch are kept.
    async fn batch_add(
        &self,
        bid: &str,
        description: &str,
        callbacks: &BatchCallbacks,
        jids: &[String],
    ) -> Result<(), BrokerError>;

    /// Records that the job `jid` of batch `bid` finished (succeeded or not), once per job
    /// however often it is called; the call that finishes the batch pushes its callbacks,
    /// exactly once. Returns whether this call finished the batch.
    async fn batch_done(&self, bid: &str, jid: &str, succeeded: bool) -> Result<bool, BrokerError>;

    /// The counts of batch `bid`, if it exists.
    async fn batch_status(&self, bid: &str) -> Result<Option<BatchStatus>, BrokerError>;

    /// Marks the job `jid` as cancelled for `ttl`: a process running it stops it.
    async fn mark_cancelled(&self, jid: &str, ttl: Duration) -> Result<(), BrokerError>;

    /// Which of `jids` are marked cancelled.
    async fn cancelled_among(&self, jids: &[String]) -> Result<Vec<String>, BrokerError>;

    /// Removes a finished job from the in-flight list of `process` and, in the same atomic
    /// step and only if it was still there, pushes its follow-up jobs `then`: a crash before
    /// pushes nothing (the job runs again), and a repeated call (after a lost reply) pushes
    /// nothing twice. Returns whether the job was there.
    async fn ack_then(
        &self,
        process: &str,
        payload: &str,
        then: &[Push],
    ) -> Result<bool, BrokerError>;

    /// Moves jobs out of the in-flight list of `process`, each `(payload as fetched, where
    /// to)`, atomically, in one round trip. For each, returns false, and does nothing, when
    /// the job was no longer there (another process recovered it), so a job is never put
    /// back twice.
    async fn settle_many(
        &self,
        process: &str,
        moves: &[(String, Settle)],
    ) -> Result<Vec<bool>, BrokerError>;

    /// Moves one job; see [`Broker::settle_many`].
    async fn settle(&self, process: &str, payload: &str, to: Settle) -> Result<bool, BrokerError> {
        let moved = self
            .settle_many(process, &[(payload.to_owned(), to)])
            .await?;
        Ok(moved.first().copied().unwrap_or(false))
    }

    /// Takes up to `limit` jobs due by `now` out of `set`. Each goes into the in-flight
    /// list of `process`, so that a crash before it reaches its queue loses nothing, unless
    /// `direct` lets it go straight to its queue in the same step. A broker may move none
    /// directly: the process then moves them itself, to the same end.
    async fn take_due(
        &self,
        process: &str,
        set: SortedSet,
        now: f64,
        limit: usize,
        direct: Option<DirectMoves<'_>>,
    ) -> Result<Due, BrokerError>;

    /// The earliest due time in `schedule` and `retry`, and of jobs set aside by their
    /// limits, if any.
    async fn next_due(&self) -> Result<Option<f64>, BrokerError>;

    /// Records a heartbeat, adds the stats, and returns a signal (`TSTP`, `TERM`) sent to
    /// the process through Sidekiq's `<identity>-signals` list, if any.
    async fn heartbeat(&self, beat: &Heartbeat) -> Result<Option<String>, BrokerError>;

    /// Removes a process that is shutting down from `processes`.
    async fn unregister(&self, identity: &str) -> Result<(), BrokerError>;

    /// The in-flight jobs of every process but `except` whose heartbeat has expired.
    async fn orphans(&self, except: &str) -> Result<Vec<Orphans>, BrokerError>;

    /// Forgets a dead process once its in-flight list is empty.
    async fn forget(&self, identity: &str) -> Result<(), BrokerError>;

    /// The in-flight jobs of `process`.
    async fn in_flight(&self, process: &str) -> Result<Vec<String>, BrokerError>;

    /// Every queue that has ever been pushed to (the `queues` set).
    async fn queues(&self) -> Result<Vec<String>, BrokerError>;

    /// The number of jobs waiting in `queue`.
    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError>;

    /// The job that has waited longest in `queue`.
    async fn queue_oldest(&self, queue: &str) -> Result<Option<String>, BrokerError>;

    /// Up to `count` jobs waiting in `queue` from `offset`, the next to run first.
    async fn queue_range(
        &self,
        queue: &str,
        offset: usize,
        count: usize,
    ) -> Result<Vec<String>, BrokerError>;

    /// The number of jobs in `set`.
    async fn set_len(&self, set: SortedSet) -> Result<usize, BrokerError>;

    /// Up to `count` jobs of `set` with their scores, earliest first, from `offset`.
    async fn set_range(
        &self,
        set: SortedSet,
        offset: usize,
        count: usize,
    ) -> Result<Vec<(f64, String)>, BrokerError>;

    /// The processes with a live heartbeat.
    async fn processes(&self) -> Result<Vec<ProcessEntry>, BrokerError>;

    /// The processed, failed and skipped totals.
    async fn stats(&self) -> Result<Stats, BrokerError>;

    /// Takes the lock `key` for `owner` for `ttl`, or renews it when `owner` holds it.
    /// Returns `None` when `owner` holds it now, or the holder that kept it.
    async fn lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError>;

    /// Gives the lock `key` to `owner` for `ttl`, whoever held it.
    async fn lock_force(&self, key: &str, owner: &str, ttl: Duration) -> Result<(), BrokerError>;

    /// Who holds the lock `key`, if anyone.
    async fn lock_holder(&self, key: &str) -> Result<Option<String>, BrokerError>;

    /// Releases the lock `key` if `owner` holds it; returns whether it did.
    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, BrokerError>;

    /// Pauses `queue` until `until` (epoch seconds), or until resumed when `None`. Workers
    /// stop taking its jobs at their next fetch; jobs already running go on.
    async fn pause(&self, queue: &str, until: Option<f64>) -> Result<(), BrokerError>;

    /// Resumes `queue` and wakes idle workers.
    async fn resume(&self, queue: &str) -> Result<(), BrokerError>;

    /// The paused queues, each with the time it resumes by itself, if any.
    async fn paused(&self) -> Result<Vec<(String, Option<f64>)>, BrokerError>;

    /// Removes the job `jid` from `queue`, or from the `schedule` or `retry` set. Returns
    /// whether it was found. Scans them, so it costs time in proportion to their size.
    async fn remove_job(&self, queue: &str, jid: &str) -> Result<bool, BrokerError>;

    /// Removes the job `jid` from the jobs set aside for their limits (see
    /// [`Broker::fetch`]). Returns the limit key it waited under, if found. Scans them.
    async fn remove_set_aside(&self, jid: &str) -> Result<Option<String>, BrokerError>;

    /// A handle woken when jobs are pushed or scheduled, so workers need not poll.
    fn subscribe(&self) -> Arc<Wakeups>;

    /// Sends a signal to a process, read at its next heartbeat, as Sidekiq's API does:
    /// `TSTP` quiets it, `TERM` stops it.
    async fn signal(&self, identity: &str, signal: &str) -> Result<(), BrokerError>;

    /// Moves the job `payload` (exactly as stored) out of `set` to where `to` says: a
    /// queue, the dead set, or nowhere. Returns whether it was there.
    async fn move_entry(
        &self,
        set: SortedSet,
        payload: &str,
        to: Settle,
    ) -> Result<bool, BrokerError>;

    /// Removes every job waiting in `queue`; returns how many there were.
    async fn clear(&self, queue: &str) -> Result<usize, BrokerError>;

    /// Publishes periodic schedules (name, description as JSON) for operators' tools.
    async fn publish_periodic(&self, schedules: &[(String, String)]) -> Result<(), BrokerError>;

    /// The periodic schedules published so far (name, description as JSON).
    async fn periodic(&self) -> Result<Vec<(String, String)>, BrokerError>;

    /// Asks to be woken (through [`Broker::subscribe`]'s handle) at the next change to
    /// `queues` or to the list of queues, and with `sets` to the schedule and retry sets,
    /// by any producer, including one that does not notify (Ruby Sidekiq's client, a plain
    /// `LPUSH`). Returns whether anything was newly watched: a change made just before is
    /// not signalled, so the caller then looks once more. A broker whose every change wakes
    /// its subscribers anyway has nothing to do.
    async fn watch(&self, queues: &[String], sets: bool) -> Result<bool, BrokerError> {
        let _ = (queues, sets);
        Ok(false)
    }
}

/// Wake-ups for one worker: a job was pushed to a queue, or scheduled.
#[derive(Debug, Default)]
pub struct Wakeups {
    /// A job was pushed to a queue.
    pub queued: Notify,
    /// A job was scheduled or retried for later.
    pub scheduled: Notify,
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

#[cfg(test)]
mod tests {
    use super::{collapse_in, limits_in};
    use crate::envelope::Envelope;
    use serde_json::json;

    #[test]
    fn a_payloads_limits_are_read_where_the_client_or_ruby_puts_them() {
        let mut envelope = Envelope::new("SyncShop", "default", vec![json!({"limits": "c1 x"})]);
        assert!(
            limits_in(&envelope.to_json()).is_none(),
            "arguments are not limits"
        );
        envelope.limits = Some("c2 SyncShop:concurrency:42 r100/60 SyncShop:rate".into());
        let payload = envelope.to_json();
        assert!(payload.starts_with(r#"{"limits":"c2 "#), "{payload}");
        let (jid, tags) = limits_in(&payload).unwrap();
        assert_eq!(jid, envelope.jid);
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[1].key, "SyncShop:rate");
        // Ruby Sidekiq pushing it again puts its defaults (its `sidekiq_options`) first.
        let ruby = payload.replacen('{', r#"{"backtrace":false,"#, 1);
        assert_eq!(limits_in(&ruby).unwrap().0, envelope.jid);
        // Parsed and written again, as a retry does, it starts with them again.
        let again = Envelope::parse(&ruby).unwrap().to_json();
        assert!(again.starts_with(r#"{"limits":"#), "{again}");
    }

    #[test]
    fn a_payloads_collapse_key_is_found_first_and_written_first() {
        let mut envelope = Envelope::new("Refresh", "default", vec![json!({"account": 1})]);
        assert_eq!(collapse_in(&envelope.to_json()), None);
        envelope.collapse = Some("collapse:Refresh:ab12".into());
        envelope.limits = Some("c2 Refresh:concurrency".into());
        let payload = envelope.to_json();
        assert!(payload.starts_with(r#"{"collapse":"collapse:Refresh:ab12","limits":"#));
        assert_eq!(collapse_in(&payload), Some("collapse:Refresh:ab12"));
        assert_eq!(
            limits_in(&payload).unwrap().0,
            envelope.jid,
            "limits still read"
        );
        // Without a key of its own, a payload may match in its arguments: the worker
        // compares the key with the one it expects before trusting a reading.
        let lookalike = Envelope::new("Refresh", "default", vec![json!({"collapse": "x"})]);
        assert_eq!(collapse_in(&lookalike.to_json()), Some("x"));
    }
}
