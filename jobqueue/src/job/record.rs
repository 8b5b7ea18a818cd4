//! A class's options as worker processes publish them (see
//! [`Published::Classes`](crate::backend::Published::Classes)), so that a process or a tool
//! without the job's type (the CLI, the dashboard, a scheduler that runs other classes)
//! admits its jobs and hides its sensitive fields as the type itself would.
//!
//! Options read back are interned: each distinct record becomes one `&'static JobOptions`
//! for the life of the process, as the derive's own options are, so a tool that reads the
//! same records again and again holds one copy of each.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Budget, CollapseSpec, ConcurrencyLimit, JobOptions, OnConflict, RateLimit, RetryPolicy,
    UniqueLock, UniqueSpec,
};

/// The published form of [`JobOptions`].
#[derive(Serialize, Deserialize)]
struct Record {
    queue: String,
    #[serde(default)]
    idempotent: bool,
    #[serde(default)]
    external: bool,
    #[serde(default)]
    bulk: bool,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    sensitive: Vec<String>,
    job_retries: u32,
    #[serde(default)]
    call_retries: u32,
    #[serde(default)]
    collapse: Option<Vec<String>>,
    #[serde(default)]
    unique: Option<Unique>,
    #[serde(default)]
    concurrency: Option<Limit>,
    #[serde(default)]
    rate: Option<Limit>,
    #[serde(default)]
    budget: Option<(Option<u64>, Option<u64>, Option<u64>)>,
}

#[derive(Serialize, Deserialize)]
struct Unique {
    lock: String,
    ttl_ms: u64,
    on_conflict: String,
    key: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Limit {
    limit: u32,
    #[serde(default)]
    per_ms: u64,
    key: Vec<String>,
}

const LOCKS: [(UniqueLock, &str); 5] = [
    (UniqueLock::UntilExecuting, "until_executing"),
    (UniqueLock::UntilExecuted, "until_executed"),
    (UniqueLock::UntilExpired, "until_expired"),
    (UniqueLock::WhileExecuting, "while_executing"),
    (
        UniqueLock::UntilAndWhileExecuting,
        "until_and_while_executing",
    ),
];

const CONFLICTS: [(OnConflict, &str); 4] = [
    (OnConflict::Reject, "reject"),
    (OnConflict::Replace, "replace"),
    (OnConflict::Reschedule, "reschedule"),
    (OnConflict::Log, "log"),
];

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn owned(fields: &[&str]) -> Vec<String> {
    fields.iter().map(|f| (*f).to_owned()).collect()
}

/// The name of `value` in `table`.
fn name<T: PartialEq>(table: &[(T, &str)], value: T) -> String {
    table
        .iter()
        .find(|(v, _)| *v == value)
        .map_or("", |(_, n)| *n)
        .to_owned()
}

/// The value named `name` in `table`.
fn find<T: Copy>(table: &[(T, &str)], name: &str) -> Option<T> {
    table
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(value, _)| *value)
}

/// `options` as published, JSON.
pub(crate) fn to_json(options: &JobOptions) -> String {
    let record = Record {
        queue: options.queue.to_owned(),
        idempotent: options.idempotent,
        external: options.external,
        bulk: options.bulk,
        timeout_ms: options.timeout.map(millis),
        sensitive: owned(options.sensitive),
        job_retries: options.retry.job_retries,
        call_retries: options.retry.call_retries,
        collapse: options.collapse.map(|c| owned(c.key)),
        unique: options.unique.map(|u| Unique {
            lock: name(&LOCKS, u.lock),
            ttl_ms: millis(u.ttl),
            on_conflict: name(&CONFLICTS, u.on_conflict),
            key: owned(u.key),
        }),
        concurrency: options.concurrency.map(|c| Limit {
            limit: c.limit,
            per_ms: 0,
            key: owned(c.key),
        }),
        rate: options.rate.map(|r| Limit {
            limit: r.limit,
            per_ms: millis(r.per),
            key: owned(r.key),
        }),
        budget: Some((
            options.budget.alloc,
            options.budget.retained,
            options.budget.time.map(millis),
        )),
    };
    serde_json::to_string(&record).unwrap_or_default()
}

/// The options published as `text`, interned; `None` when it is not a record this version
/// reads.
pub(crate) fn from_json(text: &str) -> Option<&'static JobOptions> {
    static SEEN: LazyLock<Mutex<HashMap<String, &'static JobOptions>>> =
        LazyLock::new(Default::default);
    let seen = || SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(options) = seen().get(text) {
        return Some(options);
    }
    let record: Record = serde_json::from_str(text).ok()?;
    let options = leak(record)?;
    seen().insert(text.to_owned(), options);
    Some(options)
}

fn leak_str(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

fn leak_fields(fields: Vec<String>) -> &'static [&'static str] {
    Box::leak(
        fields
            .into_iter()
            .map(leak_str)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

fn leak(record: Record) -> Option<&'static JobOptions> {
    let unique = match record.unique {
        Some(u) => Some(UniqueSpec {
            lock: find(&LOCKS, &u.lock)?,
            ttl: Duration::from_millis(u.ttl_ms),
            on_conflict: find(&CONFLICTS, &u.on_conflict)?,
            key: leak_fields(u.key),
        }),
        None => None,
    };
    let (alloc, retained, time) = record.budget.unwrap_or_default();
    let options = JobOptions {
        queue: leak_str(record.queue),
        idempotent: record.idempotent,
        external: record.external,
        bulk: record.bulk,
        timeout: record.timeout_ms.map(Duration::from_millis),
        sensitive: leak_fields(record.sensitive),
        retry: RetryPolicy {
            job_retries: record.job_retries,
            call_retries: record.call_retries,
        },
        collapse: record.collapse.map(|key| CollapseSpec {
            key: leak_fields(key),
        }),
        unique,
        budget: Budget {
            alloc,
            retained,
            time: time.map(Duration::from_millis),
        },
        concurrency: record.concurrency.map(|c| ConcurrencyLimit {
            limit: c.limit,
            key: leak_fields(c.key),
        }),
        rate: record.rate.map(|r| RateLimit {
            limit: r.limit,
            per: Duration::from_millis(r.per_ms),
            key: leak_fields(r.key),
        }),
    };
    Some(Box::leak(Box::new(options)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_back_as_they_were_written_once_each() {
        let options = JobOptions {
            queue: "nightly",
            idempotent: true,
            sensitive: &["card"],
            retry: RetryPolicy::derive(true, false, Some(3)),
            collapse: Some(CollapseSpec { key: &["shop"] }),
            unique: Some(UniqueSpec {
                lock: UniqueLock::UntilAndWhileExecuting,
                ttl: Duration::from_secs(600),
                on_conflict: OnConflict::Replace,
                key: &["shop", "day"],
            }),
            concurrency: Some(ConcurrencyLimit {
                limit: 2,
                key: &["shop"],
            }),
            rate: Some(RateLimit {
                limit: 10,
                per: Duration::from_millis(1500),
                key: &[],
            }),
            timeout: Some(Duration::from_secs(30)),
            budget: Budget {
                alloc: Some(5),
                retained: None,
                time: Some(Duration::from_secs(2)),
            },
            ..JobOptions::DEFAULT
        };
        let text = to_json(&options);
        let read = from_json(&text).expect("a record this version wrote");
        assert_eq!(*read, options);
        let again = from_json(&text).unwrap();
        assert!(std::ptr::eq(read, again), "interned, not leaked again");
        assert!(from_json("{}").is_none());
        assert!(from_json("not json").is_none());
    }
}
