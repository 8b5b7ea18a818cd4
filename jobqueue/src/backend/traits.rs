//! The storage interface, split by role. A backend implements each role; the [`Broker`] is
//! their sum, and everything above the backends (the client's admission, the worker, the
//! admin views) is written once against it. Backends store; they do not decide: what a
//! job's header, its class's options or its outcome mean is settled above them.
//!
//! Required methods, by role: [`JobStore`] 7 (the hot path), [`Presence`] 9, [`KeyValue`]
//! 4, [`Views`] 7, [`Batches`] 3: 30 in all. A backend may also implement
//! [`JobStore::push_once`], which an outbox relay needs. `docs/backend.md` walks through the in-memory
//! broker as an example.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::types::{
    BatchCallbacks, BatchStatus, Due, Entry, Fetch, Fetched, Heartbeat, LimitEntry, Location, Move,
    Orphans, Paused, ProcessEntry, Published, Push, SortedSet, Source, Span, Stats,
};
use super::{DirectMoves, Wakeups};
use crate::error::BrokerError;

/// The hot path: every job passes through these.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Pushes jobs: those without `at` to their queues (registering each queue), the others
    /// to the `schedule` set. Wakes waiting workers and schedulers.
    async fn push(&self, jobs: &[Push]) -> Result<(), BrokerError>;

    /// Moves jobs from the queues of `request`, in order, into the in-flight list of
    /// `process`, skipping paused queues; returns at once with what it found, possibly
    /// nothing.
    ///
    /// With [`Fetch::limits`], each job's header limits are read and applied in the same
    /// atomic step: a job is taken only if every limit has room, taking a slot in each for
    /// `process` (a concurrency slot, `JID@PROCESS`, is held until the job leaves the
    /// in-flight list, or until the process's heartbeat lapses); otherwise it is set
    /// aside, out of its queue, until [`JobStore::unpark_due`] or the release of a slot
    /// brings it back. A job whose header limits are out of range takes no slot and is
    /// returned as [`LimitsRead::Invalid`](super::LimitsRead::Invalid).
    async fn fetch(&self, process: &str, request: Fetch<'_>) -> Result<Vec<Fetched>, BrokerError>;

    /// Moves jobs out of `from`, each only if it is still there, atomically per job with
    /// its follow-ups and lock release ([`Move`]). Returns, per move, whether the job was
    /// there: a job another process already recovered is left where that one put it.
    /// Leaving an in-flight list frees the job's concurrency slots, and brings back one
    /// job set aside under each.
    async fn settle(&self, from: Source<'_>, moves: &[Move]) -> Result<Vec<bool>, BrokerError>;

    /// Takes up to `limit` jobs due by `now` out of `set`. Each goes into the in-flight
    /// list of `process`, so that a crash before it reaches its queue loses nothing, unless
    /// `direct` lets it go straight to its queue in the same step. A backend may move none
    /// directly: the process then moves them itself, to the same end.
    async fn take_due(
        &self,
        process: &str,
        set: SortedSet,
        now: SystemTime,
        limit: usize,
        direct: Option<DirectMoves<'_>>,
    ) -> Result<Due, BrokerError>;

    /// The earliest due time in `schedule` and `retry`, and of jobs set aside by their
    /// limits, if any.
    async fn next_due(&self) -> Result<Option<SystemTime>, BrokerError>;

    /// Brings jobs set aside by [`JobStore::fetch`] back to the front of their queues, as
    /// many as their keys have room for by `now`; a concurrency key still full is looked at
    /// again after `lease`. Returns how many it brought back.
    async fn unpark_due(&self, now: SystemTime, lease: Duration) -> Result<usize, BrokerError>;

    /// A handle woken when jobs are pushed or scheduled, so workers need not poll.
    fn subscribe(&self) -> Arc<Wakeups>;

    /// Asks to be woken (through [`JobStore::subscribe`]'s handle) at the next change to
    /// `queues` or to the list of queues, and with `sets` to the schedule and retry sets,
    /// by any producer, including one that does not notify (Ruby Sidekiq's client, a plain
    /// `LPUSH`). Returns whether anything was newly watched: a change made just before is
    /// not signalled, so the caller then looks once more. A backend whose every change
    /// wakes its subscribers anyway has nothing to do.
    async fn watch(&self, queues: &[String], sets: bool) -> Result<bool, BrokerError> {
        let _ = (queues, sets);
        Ok(false)
    }

    /// Pushes each job unless its marker (a [`KeyValue`] key) is set, setting the marker
    /// for `ttl`, atomically per job: pushing the same jobs again, after a lost reply or a
    /// crash before the caller recorded the push, pushes none twice. Returns, per job,
    /// whether this call pushed it. What a relay from an outbox pushes with; a backend
    /// that cannot do it in one step returns [`BrokerError::Unsupported`].
    async fn push_once(
        &self,
        jobs: &[(String, Push)],
        ttl: Duration,
    ) -> Result<Vec<bool>, BrokerError> {
        let _ = (jobs, ttl);
        Err(BrokerError::Unsupported("pushing jobs once by a marker"))
    }

    /// Whether this broker's jobs live in PostgreSQL's `jobqueue_*` tables, so that a job
    /// written there in an application's transaction is one of its jobs; otherwise such a
    /// job goes to the outbox for a relay to push (see [`crate::Client::enqueue_tx`]).
    #[cfg(feature = "postgres")]
    fn transactional(&self) -> bool {
        false
    }
}

/// Processes: heartbeats, signals, recovery of the dead, and what they publish for tools.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records a heartbeat, adds its stats, and returns a signal (`TSTP`, `TERM`) sent to
    /// the process through Sidekiq's `<identity>-signals` list, if any.
    async fn heartbeat(&self, beat: &Heartbeat) -> Result<Option<String>, BrokerError>;

    /// Removes a process that has ended or died: at once from the live processes, and
    /// from those recovery looks at once its in-flight list is empty.
    async fn forget(&self, identity: &str) -> Result<(), BrokerError>;

    /// The in-flight jobs of every process but `except` whose heartbeat has expired.
    async fn orphans(&self, except: &str) -> Result<Vec<Orphans>, BrokerError>;

    /// Sends a signal to a process, read at its next heartbeat, as Sidekiq's API does:
    /// `TSTP` quiets it, `TERM` stops it.
    async fn signal(&self, identity: &str, signal: &str) -> Result<(), BrokerError>;

    /// The processes with a live heartbeat.
    async fn processes(&self) -> Result<Vec<ProcessEntry>, BrokerError>;

    /// The processed, failed, skipped and cancelled totals.
    async fn stats(&self) -> Result<Stats, BrokerError>;

    /// Tells every live process at once that the job `jid` is cancelled, through its
    /// [`JobStore::subscribe`] handle ([`Wakeups::cancelled`]): a process holding the job in
    /// its buffer does not start it.
    async fn announce_cancel(&self, jid: &str) -> Result<(), BrokerError>;

    /// Publishes `entries` (name, JSON) of `what`, replacing entries of the same names;
    /// kept after the process ends.
    async fn publish(
        &self,
        what: Published,
        entries: &[(String, String)],
    ) -> Result<(), BrokerError>;

    /// What has been published of `what`, by name.
    async fn published(&self, what: Published) -> Result<Vec<(String, String)>, BrokerError>;
}

/// A key/value store with expiry, shared by uniqueness locks, collapse markers, periodic
/// claims, cancel marks, start records and checkpoints. Keys are the library's own names
/// (`unique:…`, `collapse:…`); a backend keeps them apart from everything else.
#[async_trait]
pub trait KeyValue: Send + Sync + 'static {
    /// The value at `key`, if any and not expired.
    async fn get(&self, key: &str) -> Result<Option<String>, BrokerError>;

    /// Sets `key` to `value` for `ttl`, whatever it held.
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), BrokerError>;

    /// Takes `key` for `owner` for `ttl`, or renews it when `owner` holds it. Returns
    /// `None` when `owner` holds it now, or the holder that kept it.
    async fn lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError>;

    /// Deletes `key` if `owner` holds it; returns whether it did.
    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, BrokerError>;

    /// The values at `keys`, in order: one round trip where the backend can.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, BrokerError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(key).await?);
        }
        Ok(values)
    }
}

/// What operators read and change: queues, sets, set-aside jobs, pauses. Each call is
/// bounded: a page, not a whole list.
#[async_trait]
pub trait Views: Send + Sync + 'static {
    /// Every queue that has ever been pushed to (the `queues` set), sorted.
    async fn queues(&self) -> Result<Vec<String>, BrokerError>;

    /// How many jobs are at `at`.
    async fn len(&self, at: Location<'_>) -> Result<usize, BrokerError>;

    /// The jobs of `span` at `at`.
    async fn range(&self, at: Location<'_>, span: Span) -> Result<Vec<Entry>, BrokerError>;

    /// Removes the jobs `payloads` (exactly as stored) from `at`; returns how many were
    /// there. In-flight lists are left alone (their jobs are settled, not removed).
    async fn remove(&self, at: Location<'_>, payloads: &[String]) -> Result<usize, BrokerError>;

    /// The limit keys with jobs set aside, with their slots and waiting jobs.
    async fn limits(&self) -> Result<Vec<LimitEntry>, BrokerError>;

    /// Pauses or resumes `queue`. Workers stop taking its jobs at their next fetch; jobs
    /// already running go on; a resume wakes idle workers.
    async fn pause(&self, queue: &str, state: Paused) -> Result<(), BrokerError>;

    /// The paused queues, each with the time it resumes by itself, if any.
    async fn paused(&self) -> Result<Vec<(String, Option<SystemTime>)>, BrokerError>;
}

/// Batches: jobs enqueued together, whose callbacks are pushed once when all have finished.
#[async_trait]
pub trait Batches: Send + Sync + 'static {
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
    /// however often it is called; the call that finishes the batch puts its callbacks in
    /// the `schedule` set, due at once, exactly once, where a worker's scheduler admits
    /// them as it does any due job. Returns whether this call finished the batch.
    async fn batch_done(&self, bid: &str, jid: &str, succeeded: bool) -> Result<bool, BrokerError>;

    /// The counts of batch `bid`, if it exists.
    async fn batch_status(&self, bid: &str) -> Result<Option<BatchStatus>, BrokerError>;
}

/// Storage for queues, sets and processes, shared by clients, workers and tools: every role
/// at once. Implemented for any type that implements each role.
pub trait Broker: JobStore + Presence + KeyValue + Views + Batches {}

impl<T: JobStore + Presence + KeyValue + Views + Batches> Broker for T {}
