//! What a job is: the [`Job`] description (written by `#[derive(Job)]`), its options, the
//! retry policy derived from them, and the keys its collapse marker and uniqueness locks
//! are stored under. What running job code sees is in [`crate::perform`].

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::envelope::Envelope;

pub(crate) mod keys;
mod limits;
pub(crate) mod record;

use self::keys::job_key;
pub(crate) use self::limits::names_a_slot;
pub use self::limits::{
    InvalidLimits, LimitKind, LimitTag, MAX_LIMITS, MAX_LIMIT_COUNT, MAX_LIMIT_KEY,
    MAX_LIMIT_PERIOD,
};

/// A job type: its class name on the wire and its options.
///
/// Implemented by `#[derive(Job)]`; see the crate documentation for the attribute.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The class name written in the payload. Ruby Sidekiq looks a job up by this name,
    /// so a queue shared with Ruby uses the Ruby class name here.
    const NAME: &'static str;
    /// The queue, retry policy and mechanisms chosen by the `#[job(...)]` attribute.
    const OPTIONS: JobOptions;
}

/// How many times a failed job, and a failed third-party call inside it, is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Job-level retries through the `retry` set.
    pub job_retries: u32,
    /// Retries of each third-party call made by the job (only for `external` jobs).
    pub call_retries: u32,
}

impl RetryPolicy {
    /// The policy table: a job that is not idempotent is never re-run; an idempotent job is
    /// re-run once; a job that calls third-party services retries the call, not the job.
    /// `retries` (only allowed on idempotent jobs) replaces the job-level count.
    pub const fn derive(idempotent: bool, external: bool, retries: Option<u32>) -> Self {
        let default_job_retries = if idempotent && !external { 1 } else { 0 };
        let job_retries = match retries {
            Some(n) if idempotent => n,
            _ => default_job_retries,
        };
        let call_retries = if external { 2 } else { 0 };
        Self {
            job_retries,
            call_retries,
        }
    }
}

/// When a uniqueness lock is taken and released (the sidekiq-unique-jobs lock types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UniqueLock {
    /// Locked at enqueue, released when the job starts.
    UntilExecuting,
    /// Locked at enqueue, released when the job has finished.
    UntilExecuted,
    /// Locked at enqueue, released only when the TTL runs out.
    UntilExpired,
    /// Locked while the job runs: no two run at once.
    WhileExecuting,
    /// Locked at enqueue until the job starts, then while it runs.
    UntilAndWhileExecuting,
}

/// What to do with a job whose uniqueness lock is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    /// Refuse the new job and tell the caller.
    Reject,
    /// Remove the job holding the lock and take its place.
    Replace,
    /// Try the new job again a little later.
    Reschedule,
    /// Drop the new job and log it.
    Log,
}

/// A uniqueness lock, as asked for by `#[job(unique(...))]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniqueSpec {
    /// When the lock is held.
    pub lock: UniqueLock,
    /// The lock's lifetime, always finite so a crash never leaves a lock behind for good.
    pub ttl: Duration,
    /// What a conflicting job does.
    pub on_conflict: OnConflict,
    /// The fields that make up the lock key; empty means all arguments.
    pub key: &'static [&'static str],
}

/// A collapsible job, as asked for by `#[job(collapsible)]`: only the newest job per key runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollapseSpec {
    /// The fields that make up the collapse key; empty means all arguments.
    pub key: &'static [&'static str],
}

/// Everything the `#[job(...)]` attribute says about a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobOptions {
    /// The queue the job is pushed to.
    pub queue: &'static str,
    /// Running the job twice is safe.
    pub idempotent: bool,
    /// The job calls third-party services.
    pub external: bool,
    /// The job is bulk work: it never runs inside a worker's quiet windows.
    pub bulk: bool,
    /// How long `perform` may run; past it the job is failed and retried per its policy.
    pub timeout: Option<Duration>,
    /// Fields whose values never appear in logs or error messages.
    pub sensitive: &'static [&'static str],
    /// Retries, derived from the above.
    pub retry: RetryPolicy,
    /// Only the newest job per key runs.
    pub collapse: Option<CollapseSpec>,
    /// A uniqueness lock.
    pub unique: Option<UniqueSpec>,
    /// How much memory and time one run may take.
    pub budget: Budget,
    /// At most this many jobs per key run at once, across all processes.
    pub concurrency: Option<ConcurrencyLimit>,
    /// At most this many jobs per key start per period, across all processes.
    pub rate: Option<RateLimit>,
}

/// `#[job(concurrency(limit = 2, key = "shop_id"))]`: at most `limit` jobs of the class with
/// the same key fields run at once, across all processes; without `key`, at most `limit`
/// of the class. Enforced when workers fetch: a job over the limit is set aside, and goes
/// back to the front of its queue as soon as its key has room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConcurrencyLimit {
    /// Jobs running at once per key.
    pub limit: u32,
    /// The fields whose values make the key; empty means one limit for the whole class.
    pub key: &'static [&'static str],
}

/// `#[job(rate(limit = 100, per = "1m", key = "account"))]`: at most `limit` jobs of the
/// class with the same key fields start in any period of `per`, across all processes.
/// Enforced when workers fetch, as [`ConcurrencyLimit`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Starts per period per key.
    pub limit: u32,
    /// The period.
    pub per: Duration,
    /// The fields whose values make the key; empty means one limit for the whole class.
    pub key: &'static [&'static str],
}

/// How much memory and time one run of a job may take (`#[job(budget(alloc = "100MB",
/// retained = "10MB", time = "1s"))]`); what is not given takes the guidelines' default.
/// A run over budget is reported (a warning, a metric, the class's record of violations)
/// and, in strict mode, fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The most live memory a run may hold at once, in bytes.
    pub alloc: Option<u64>,
    /// The most memory a run may leave allocated when it ends, in bytes.
    pub retained: Option<u64>,
    /// How long a run may take; without it, by the class's tier: 1 s for a class run 60 or
    /// more times a minute, 5 s for a rarer one. Bulk jobs have no time limit.
    pub time: Option<Duration>,
}

impl Budget {
    /// The guidelines' memory limit: 100 MB held at once.
    pub const ALLOC: u64 = 100_000_000;
    /// The guidelines' retained-memory limit: 10 MB.
    pub const RETAINED: u64 = 10_000_000;
    /// Runs per minute from which a class is frequent.
    pub const FREQUENT_PER_MINUTE: u64 = 60;
    /// A frequent class's time limit.
    pub const FREQUENT_TIME: Duration = Duration::from_secs(1);
    /// A rare class's time limit, and the longest a job that is not bulk should run.
    pub const RARE_TIME: Duration = Duration::from_secs(5);
    /// Every limit from the guidelines.
    pub const DEFAULT: Budget = Budget {
        alloc: None,
        retained: None,
        time: None,
    };

    /// The memory limit that applies.
    pub fn alloc_limit(&self) -> u64 {
        self.alloc.unwrap_or(Self::ALLOC)
    }

    /// The retained-memory limit that applies.
    pub fn retained_limit(&self) -> u64 {
        self.retained.unwrap_or(Self::RETAINED)
    }

    /// The time limit that applies to a class run `runs_per_minute` times a minute.
    pub fn time_limit(&self, runs_per_minute: u64) -> Duration {
        self.time
            .unwrap_or(if runs_per_minute >= Self::FREQUENT_PER_MINUTE {
                Self::FREQUENT_TIME
            } else {
                Self::RARE_TIME
            })
    }
}

impl JobOptions {
    /// The options of a job with no attribute: queue `default`, not idempotent, no retries.
    pub const DEFAULT: JobOptions = JobOptions {
        queue: "default",
        idempotent: false,
        external: false,
        bulk: false,
        timeout: None,
        sensitive: &[],
        retry: RetryPolicy::derive(false, false, None),
        collapse: None,
        unique: None,
        budget: Budget::DEFAULT,
        concurrency: None,
        rate: None,
    };
}

impl UniqueSpec {
    /// The key of the lock taken at enqueue; its value is the id of the job holding it.
    pub fn queued_key(&self, envelope: &Envelope) -> String {
        job_key("unique", envelope, self.key, true)
    }

    /// The key of the lease taken while the job runs; its value is the id of the job
    /// holding it.
    pub fn running_key(&self, envelope: &Envelope) -> String {
        job_key("running", envelope, self.key, true)
    }

    /// Whether the lock is taken when the job is enqueued.
    pub(crate) fn locks_at_enqueue(&self) -> bool {
        !matches!(self.lock, UniqueLock::WhileExecuting)
    }

    /// Whether a lease is held while the job runs.
    pub(crate) fn locks_while_running(&self) -> bool {
        matches!(
            self.lock,
            UniqueLock::WhileExecuting | UniqueLock::UntilAndWhileExecuting
        )
    }
}

impl CollapseSpec {
    /// The key of the newest-job marker; its value is the id of the newest job enqueued
    /// with this key.
    pub fn marker_key(&self, envelope: &Envelope) -> String {
        job_key("collapse", envelope, self.key, false)
    }

    /// The marker key the payload names (the client writes it there), or for a job pushed
    /// without it (by Ruby, or by an earlier version) the one its arguments give.
    pub(crate) fn marker_key_of(&self, envelope: &Envelope) -> String {
        match &envelope.collapse {
            Some(key) => key.clone(),
            None => self.marker_key(envelope),
        }
    }
}
