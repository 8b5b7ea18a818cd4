//! What a job is: the [`Job`] description (written by `#[derive(Job)]`), its options, the
//! retry policy derived from them, and the keys its collapse marker and uniqueness locks
//! are stored under. What running job code sees is in [`crate::perform`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::envelope::{push_hex, Envelope};

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

/// One limit as a job's payload carries it: the broker enforces it at fetch from this
/// alone, so a job keeps the limits it was enqueued with.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitTag {
    /// `Class:concurrency:values` or `Class:rate:values`: whose slots the job takes.
    pub key: String,
    /// Which limit, and how much.
    pub kind: LimitKind,
}

/// A [`LimitTag`]'s limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LimitKind {
    /// At most this many jobs with the key run at once.
    Concurrency(u32),
    /// At most `limit` jobs with the key start in any `per` seconds.
    Rate {
        /// Starts per period.
        limit: u32,
        /// The period, in seconds.
        per: f64,
    },
}

impl LimitTag {
    /// Whether this is a concurrency limit, whose slots are freed when the job ends.
    pub fn is_concurrency(&self) -> bool {
        matches!(self.kind, LimitKind::Concurrency(_))
    }

    /// The `limits` field's text: per limit, `c2 KEY` (a concurrency limit of 2) or
    /// `r100/60 KEY` (a rate of 100 per 60 s), space-separated. Plain text because the
    /// broker reads it on every fetch and every acknowledgement.
    pub fn encode(tags: &[LimitTag]) -> String {
        let words: Vec<String> = tags
            .iter()
            .map(|t| match t.kind {
                LimitKind::Concurrency(n) => format!("c{n} {}", t.key),
                LimitKind::Rate { limit, per } => format!("r{limit}/{per} {}", t.key),
            })
            .collect();
        words.join(" ")
    }

    /// The limits in a `limits` field's text; what does not parse, and limits of 0, are
    /// left out.
    pub fn decode(text: &str) -> Vec<LimitTag> {
        let mut words = text.split_ascii_whitespace();
        let mut tags = Vec::new();
        while let (Some(spec), Some(key)) = (words.next(), words.next()) {
            let positive = |n: &str| n.parse::<u32>().ok().filter(|n| *n > 0);
            let kind = if let Some(n) = spec.strip_prefix('c') {
                positive(n).map(LimitKind::Concurrency)
            } else if let Some((n, per)) = spec.strip_prefix('r').and_then(|r| r.split_once('/')) {
                match (positive(n), per.parse().ok()) {
                    (Some(limit), Some(per)) => Some(LimitKind::Rate { limit, per }),
                    _ => None,
                }
            } else {
                None
            };
            tags.extend(kind.map(|kind| LimitTag {
                key: key.to_owned(),
                kind,
            }));
        }
        tags
    }
}

impl JobOptions {
    /// The limits a job with these options carries in its payload; empty without limits.
    pub fn limit_tags(&self, envelope: &Envelope) -> Vec<LimitTag> {
        let mut tags = Vec::new();
        if let Some(c) = self.concurrency {
            tags.push(LimitTag {
                key: limit_key("concurrency", envelope, c.key),
                kind: LimitKind::Concurrency(c.limit),
            });
        }
        if let Some(r) = self.rate {
            tags.push(LimitTag {
                key: limit_key("rate", envelope, r.key),
                kind: LimitKind::Rate {
                    limit: r.limit,
                    per: r.per.as_secs_f64(),
                },
            });
        }
        tags
    }
}

/// A value as it appears in a limit key: letters, digits and `_-.:@` as they are, anything
/// else as `%XX` per byte, so a key needs no escaping in JSON, in Redis or in a log line.
fn escape_key(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"_-.:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Class:kind` and, with key fields, `:` and their values joined by `,` (strings as they
/// are, anything else as JSON): readable in Redis and in the dashboard, unlike the digests
/// of lock keys, because operators look limits up by tenant.
fn limit_key(kind: &str, envelope: &Envelope, fields: &[&str]) -> String {
    let mut key = format!("{}:{kind}", envelope.class);
    if fields.is_empty() {
        return key;
    }
    let object = match envelope.args.as_slice() {
        [Value::Object(object)] => Some(object),
        _ => None,
    };
    let values: Vec<String> = fields
        .iter()
        .map(|f| match object.and_then(|o| o.get(*f)) {
            Some(Value::String(s)) => escape_key(s),
            Some(other) => escape_key(&other.to_string()),
            None => "null".to_owned(),
        })
        .collect();
    key.push(':');
    key.push_str(&values.join(","));
    key
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

/// `kind:class[:queue]:sha256(arguments)`: the job's class and a digest of its arguments
/// (all of them, or the fields the attribute names). Object keys are sorted before hashing,
/// so the same arguments give the same key however they were written.
fn job_key(kind: &str, envelope: &Envelope, fields: &[&str], queue: bool) -> String {
    const NULL: Value = Value::Null;
    // The arguments are written straight into the digest: a `BTreeMap` of the picked
    // fields writes the same JSON as a `Value::Object` of them (keys sorted), and the
    // arguments' slice the same as a `Value::Array`, without copying them first.
    let mut hasher = Sha256::new();
    let written = match (fields, envelope.args.as_slice()) {
        (fields, [Value::Object(object)]) if !fields.is_empty() => {
            let picked: BTreeMap<&str, &Value> = fields
                .iter()
                .map(|f| (*f, object.get(*f).unwrap_or(&NULL)))
                .collect();
            serde_json::to_writer(&mut hasher, &picked)
        }
        // All of them; or positional arguments (a job pushed from Ruby), whose fields
        // cannot be picked out.
        (_, args) => serde_json::to_writer(&mut hasher, args),
    };
    // Writing JSON values into a hasher cannot fail; a key without its digest would still
    // name the class, but never match a lock taken with one.
    let digest = match written {
        Ok(()) => hasher.finalize(),
        Err(_) => Default::default(),
    };
    let mut key = String::with_capacity(
        kind.len() + envelope.class.len() + envelope.queue.len() + 3 + 2 * digest.len(),
    );
    for part in [kind, ":", &envelope.class] {
        key.push_str(part);
    }
    if queue {
        key.push(':');
        key.push_str(&envelope.queue);
    }
    key.push(':');
    push_hex(&mut key, &digest);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(args: Vec<Value>) -> Envelope {
        Envelope::new("Refresh", "default", args)
    }

    /// The keys locks were taken under before the digest was written into directly: a
    /// lock taken by an earlier version must still be found.
    #[test]
    fn keys_are_those_of_the_arguments_json_digest() {
        let cases = [
            (
                vec![
                    json!(1),
                    json!("a"),
                    json!({"b": 2, "a": [1, {"z": 1, "y": null}]}),
                ],
                &[][..],
            ),
            (
                vec![json!({"account": 1, "reason": "a", "nested": {"b": 1, "a": 2}})],
                &["reason", "nested", "account"][..],
            ),
            (vec![json!({"account": 1})], &["missing", "account"][..]),
            (vec![json!(1), json!(2)], &["account"][..]),
            (vec![], &[][..]),
        ];
        for (args, fields) in cases {
            let job = envelope(args.clone());
            let selected = match (fields, args.as_slice()) {
                ([], _) => Value::Array(args.clone()),
                (fields, [Value::Object(object)]) => Value::Object(
                    fields
                        .iter()
                        .map(|f| {
                            (
                                (*f).to_owned(),
                                object.get(*f).cloned().unwrap_or(Value::Null),
                            )
                        })
                        .collect(),
                ),
                _ => Value::Array(args.clone()),
            };
            let digest: String = Sha256::digest(selected.to_string().as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                job_key("unique", &job, fields, true),
                format!("unique:Refresh:default:{digest}")
            );
            assert_eq!(
                job_key("collapse", &job, fields, false),
                format!("collapse:Refresh:{digest}")
            );
        }
    }

    #[test]
    fn named_fields_pick_the_key_and_the_rest_is_ignored() {
        let a = envelope(vec![json!({"account": 1, "reason": "a"})]);
        let b = envelope(vec![json!({"reason": "b", "account": 1})]);
        let c = envelope(vec![json!({"account": 2, "reason": "a"})]);
        assert_eq!(
            job_key("c", &a, &["account"], false),
            job_key("c", &b, &["account"], false)
        );
        assert_ne!(
            job_key("c", &a, &["account"], false),
            job_key("c", &c, &["account"], false)
        );
        assert_ne!(job_key("c", &a, &[], false), job_key("c", &b, &[], false));
    }

    #[test]
    fn limit_keys_are_readable_and_per_field_value() {
        let options = JobOptions {
            concurrency: Some(ConcurrencyLimit {
                limit: 2,
                key: &["shop", "region"],
            }),
            rate: Some(RateLimit {
                limit: 100,
                per: Duration::from_secs(60),
                key: &[],
            }),
            ..JobOptions::DEFAULT
        };
        let tags = options.limit_tags(&envelope(vec![json!({"shop": 42, "region": "eu"})]));
        assert_eq!(tags[0].key, "Refresh:concurrency:42,eu");
        assert_eq!(tags[0].kind, LimitKind::Concurrency(2));
        assert_eq!(tags[1].key, "Refresh:rate");
        let rate = LimitKind::Rate {
            limit: 100,
            per: 60.0,
        };
        assert_eq!(tags[1].kind, rate);
        let text = LimitTag::encode(&tags);
        assert_eq!(text, "c2 Refresh:concurrency:42,eu r100/60 Refresh:rate");
        assert_eq!(LimitTag::decode(&text), tags);
        assert!(LimitTag::decode("x1 a c? b c0 d r0/1 e").is_empty());
        assert!(JobOptions::DEFAULT.limit_tags(&envelope(vec![])).is_empty());
        let odd = options.limit_tags(&envelope(vec![json!({"shop": "a \"b\",c", "region": 1})]));
        assert_eq!(odd[0].key, "Refresh:concurrency:a%20%22b%22%2Cc,1");
    }

    #[test]
    fn the_queue_counts_only_when_asked() {
        let mut a = envelope(vec![json!(1)]);
        let k1 = job_key("u", &a, &[], true);
        a.queue = "other".into();
        assert_ne!(k1, job_key("u", &a, &[], true));
        assert!(k1.starts_with("u:Refresh:default:"));
    }
}
