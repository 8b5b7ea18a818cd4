//! The values the storage interface speaks: jobs to push, jobs fetched, where a finished job
//! goes, pages of stored jobs, process presence and figures. Times are [`SystemTime`] and
//! [`Duration`]; scores and encodings stay inside each backend.

use std::time::{Duration, Instant, SystemTime};

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

/// What a fetch asks for: up to `max` jobs from `queues`, in order, skipping paused queues.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Fetch<'a> {
    /// The queues, in the order they are tried.
    pub queues: &'a [String],
    /// The most jobs to take.
    pub max: usize,
    /// Apply the per-key limits each job's header names (see [`crate::job::LimitTag`]),
    /// looking at a full concurrency key again after this lease in case no release comes.
    /// `None` for a process that runs no class with limits: a job it takes with limits is
    /// one it refuses ([`LimitsRead::NotRead`]).
    pub limits: Option<Duration>,
    /// Read each job's collapse marker in the same step ([`Fetched::marker`]).
    pub markers: bool,
}

impl<'a> Fetch<'a> {
    /// Up to `max` jobs from `queues`, without limits or markers.
    pub fn new(queues: &'a [String], max: usize) -> Self {
        Self {
            queues,
            max,
            limits: None,
            markers: false,
        }
    }

    /// This fetch, applying the jobs' limits with `lease` (see [`Fetch::limits`]).
    pub fn limits(mut self, lease: Duration) -> Self {
        self.limits = Some(lease);
        self
    }

    /// This fetch, reading collapse markers too.
    pub fn markers(mut self) -> Self {
        self.markers = true;
        self
    }
}

/// A job taken from a queue into a process's in-flight list.
#[derive(Clone, Debug, PartialEq)]
pub struct Fetched {
    /// The queue it was taken from.
    pub queue: String,
    /// The payload exactly as stored; it identifies the job in the in-flight list.
    pub payload: String,
    /// Its collapse marker, read in the same step, when the fetch was asked to read markers
    /// and the header names one.
    pub marker: Option<MarkerRead>,
    /// What the fetch did with the limits its header names.
    pub limits: LimitsRead,
}

/// What a fetch did with a job's per-key limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitsRead {
    /// The fetch did not read them ([`Fetch::limits`] was `None`).
    NotRead,
    /// The fetch read the header and took a slot in each limit it names (none when it
    /// names none).
    Applied,
    /// The header names limits out of range (or without a jid): the fetch took no slot,
    /// and the job must not run.
    Invalid,
}

/// A collapsible job's marker as a fetch read it: the worker skips a stale job without
/// asking the backend again while the reading is fresh.
#[derive(Clone, Debug, PartialEq)]
pub struct MarkerRead {
    /// The marker's key, as the header names it.
    pub key: String,
    /// The newest job with that key, if the marker has not expired.
    pub newest: Option<String>,
    /// When it was read.
    pub at: Instant,
}

/// Where a job is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location<'a> {
    /// Waiting in a queue.
    Queue(&'a str),
    /// In one of the sorted sets.
    Set(SortedSet),
    /// In the in-flight list of a process.
    InFlight(&'a str),
    /// Set aside under a limit key until it has room.
    Parked(&'a str),
}

/// Which entries of a [`Location`] to read.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Span {
    /// Up to `count` from position `offset`: for a queue the next to run first, for a set
    /// the earliest score first, for an in-flight list the newest first.
    Page {
        /// Entries to skip.
        offset: usize,
        /// Entries to read.
        count: usize,
    },
    /// Up to `count` entries of a sorted set scored from `min` to `max`, earliest first
    /// (nothing elsewhere): how a job is found by its time, without a scan.
    Scored {
        /// The earliest score.
        min: SystemTime,
        /// The latest score.
        max: SystemTime,
        /// Entries to read.
        count: usize,
    },
}

impl Span {
    /// Up to `count` entries from `offset`.
    pub fn page(offset: usize, count: usize) -> Self {
        Span::Page { offset, count }
    }
}

/// A stored job as a view reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The payload exactly as stored, which identifies the entry.
    pub payload: String,
    /// Its score in a sorted set (when it is due, or when it died); `None` elsewhere.
    pub at: Option<SystemTime>,
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

/// Where a finished or moved job goes.
#[derive(Clone, Debug)]
pub enum Settle {
    /// Onto a queue: at the back (a due scheduled job) or at the front (a job handed back
    /// at shutdown or recovered from a dead process, so it runs next).
    Queue {
        /// The queue name.
        queue: String,
        /// The payload to push (the job may have been updated).
        payload: String,
        /// Push to the front of the queue.
        front: bool,
    },
    /// Into the `schedule` set, due at `at`.
    Schedule {
        /// The payload to store.
        payload: String,
        /// When it is due.
        at: SystemTime,
    },
    /// Into the `retry` set, due at `at`.
    Retry {
        /// The payload with its failure recorded.
        payload: String,
        /// When the retry is due.
        at: SystemTime,
    },
    /// Into the `dead` set, trimmed to [`DEAD_MAX_JOBS`](super::DEAD_MAX_JOBS) and
    /// [`DEAD_TIMEOUT`](super::DEAD_TIMEOUT).
    Dead {
        /// The payload with its failure recorded.
        payload: String,
    },
    /// Nowhere: the job is done, or discarded.
    Discard,
}

/// Where the jobs of a settle are taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source<'a> {
    /// The in-flight list of a process: a job leaving it frees its concurrency slots.
    InFlight(&'a str),
    /// A sorted set: an operator moving an entry.
    Set(SortedSet),
}

/// One job leaving its [`Source`], with what goes with it, all in one atomic step.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Move {
    /// The payload exactly as fetched or stored.
    pub payload: String,
    /// Where it goes.
    pub to: Settle,
    /// Jobs pushed in the same step, only if this job was still there: a job's follow-ups
    /// (a repeated call, after a lost reply, pushes nothing twice).
    pub then: Vec<Push>,
    /// A lock `(key, owner)` released in the same round trip if the owner still holds it.
    pub unlock: Option<(String, String)>,
}

impl Move {
    /// Moves `payload` to `to`.
    pub fn new(payload: impl Into<String>, to: Settle) -> Self {
        Self {
            payload: payload.into(),
            to,
            then: Vec::new(),
            unlock: None,
        }
    }

    /// A finished job leaving for good.
    pub fn done(payload: impl Into<String>) -> Self {
        Self::new(payload, Settle::Discard)
    }

    /// This move, pushing `then` if the job was still there.
    pub fn then(mut self, then: Vec<Push>) -> Self {
        self.then = then;
        self
    }

    /// This move, releasing the lock `key` if `owner` holds it.
    pub fn unlock(mut self, lock: Option<(String, String)>) -> Self {
        self.unlock = lock;
        self
    }
}

/// Which due jobs [`JobStore::take_due`](super::JobStore::take_due) may move straight to
/// their queues, stamped with `enqueued_at`, instead of handing them to the process to pass
/// through the client again: given when passing would only restamp them.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct DirectMoves<'a> {
    /// The `enqueued_at` the moved jobs get.
    pub enqueued_at: SystemTime,
    /// The largest payload the client admits, in bytes; a larger job passes through it.
    pub max_payload_bytes: usize,
    /// The classes whose jobs may move directly: those known to need no admission (no
    /// uniqueness lock renewed, no collapse key or limits written). A job of any other
    /// class, known or not, passes through the client, which reads the options a class
    /// published since.
    pub plain: &'a [&'a str],
    /// Whether to name each job moved (see [`Due::named`]), for its enqueue span.
    pub named: bool,
}

impl<'a> DirectMoves<'a> {
    /// Direct moves stamped `enqueued_at`, of payloads up to `max_payload_bytes`, of jobs
    /// of the `plain` classes.
    pub fn new(
        enqueued_at: SystemTime,
        max_payload_bytes: usize,
        plain: &'a [&'a str],
        named: bool,
    ) -> Self {
        Self {
            enqueued_at,
            max_payload_bytes,
            plain,
            named,
        }
    }
}

/// A job a backend moved straight to its queue, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovedJob {
    /// Its jid.
    pub jid: String,
    /// Its class.
    pub class: String,
    /// The queue it went to.
    pub queue: String,
}

/// The jobs [`JobStore::take_due`](super::JobStore::take_due) took.
#[derive(Clone, Debug, Default)]
pub struct Due {
    /// The due time of each job moved straight to its queue.
    pub moved: Vec<SystemTime>,
    /// The jobs moved, in the order of `moved`, when [`DirectMoves::named`] asked for them.
    pub named: Vec<MovedJob>,
    /// The due time and payload of each job put in the process's in-flight list, for the
    /// process to move on.
    pub taken: Vec<(SystemTime, String)>,
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

/// Whether a queue is paused, and until when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Paused {
    /// Taking jobs.
    No,
    /// Paused until resumed.
    UntilResumed,
    /// Paused until this time, then resumed by itself.
    Until(SystemTime),
}

/// What processes publish for operators' tools, kept after they end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Published {
    /// Periodic schedules: name, description as JSON.
    Periodic,
    /// Job classes: class name, its options as JSON (what admission and redaction need).
    Classes,
    /// Outbox relays: relay name, its status as JSON (jobs relayed, lag, jobs waiting).
    Relays,
}

/// A process's heartbeat: its Sidekiq process hash, its stats, and its running jobs.
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

/// A job a process is running, as its heartbeat shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Running {
    /// The slot running it (Sidekiq's thread id).
    pub slot: String,
    /// The queue it came from.
    pub queue: String,
    /// Its payload, with sensitive values hidden.
    pub payload: String,
    /// When it started.
    pub since: SystemTime,
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
    /// The jobs it had taken and not finished, newest first.
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
    /// When the key is looked at again without a release.
    pub next_look: SystemTime,
}

/// What an outbox relay publishes of itself ([`Published::Relays`]), for operators.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct RelayStatus {
    /// Jobs it has moved since it started.
    pub relayed: u64,
    /// The age of the oldest job waiting in the outbox at its last look, in seconds.
    pub lag: f64,
    /// Jobs waiting in the outbox at its last look.
    pub waiting: u64,
    /// When it looked, in epoch seconds.
    pub at: f64,
}
