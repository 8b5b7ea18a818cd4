//! `#[derive(Job)]`: what the attribute produces, and the compile errors it gives.

use std::time::Duration;

use jobqueue::{Job, JobOptions, OnConflict, RetryPolicy, UniqueLock};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Job)]
struct Plain {
    id: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "player_data", idempotent)]
struct RecomputeSegment {
    segment_id: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "push", external)]
struct SendPush {
    device: String,
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "crm", idempotent, external)]
struct SyncCrm {
    account: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(
    queue = "utilitarian.tasks.amr.scheduled.daily",
    idempotent,
    retries = 5,
    name = "Amr::DailyJob"
)]
struct Daily;

#[derive(Serialize, Deserialize, Job)]
#[job(collapsible(key = "account_id"))]
struct RefreshBalance {
    account_id: u64,
    reason: String,
}

#[derive(Serialize, Deserialize, Job)]
#[job(unique(
    lock = "until_and_while_executing",
    ttl = "10m",
    on_conflict = "replace",
    key = "a,b"
))]
struct Dedup {
    a: u64,
    b: u64,
    c: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "q")]
#[job(unique(lock = "while_executing"), timeout = "2m")]
struct SplitAttributes(u64);

#[test]
fn defaults_are_sidekiq_like_and_safe() {
    assert_eq!(Plain::NAME, "Plain");
    assert_eq!(Plain::OPTIONS, JobOptions::DEFAULT);
    assert_eq!(Plain::OPTIONS.queue, "default");
    assert_eq!(
        Plain::OPTIONS.retry,
        RetryPolicy {
            job_retries: 0,
            call_retries: 0
        }
    );
}

#[test]
fn the_retry_policy_table() {
    let table = [
        (Plain::OPTIONS, 0, 0),
        (RecomputeSegment::OPTIONS, 1, 0),
        (SendPush::OPTIONS, 0, 2),
        (SyncCrm::OPTIONS, 0, 2),
    ];
    for (options, job, call) in table {
        assert_eq!(options.retry.job_retries, job, "{options:?}");
        assert_eq!(options.retry.call_retries, call, "{options:?}");
    }
    assert_eq!(RecomputeSegment::OPTIONS.queue, "player_data");
    let options = RecomputeSegment::OPTIONS;
    assert_eq!((options.idempotent, options.external), (true, false));
}

#[test]
fn a_non_idempotent_external_job_holds_a_while_executing_lock() {
    let unique = SendPush::OPTIONS.unique.expect("a lock");
    assert_eq!(unique.lock, UniqueLock::WhileExecuting);
    assert_eq!(unique.on_conflict, OnConflict::Reschedule);
    assert!(unique.ttl > Duration::ZERO);
    assert_eq!(SyncCrm::OPTIONS.unique, None, "idempotent: no lock needed");
}

#[test]
fn explicit_retries_name_and_dotted_queue() {
    assert_eq!(Daily::NAME, "Amr::DailyJob");
    assert_eq!(
        Daily::OPTIONS.queue,
        "utilitarian.tasks.amr.scheduled.daily"
    );
    assert_eq!(Daily::OPTIONS.retry.job_retries, 5);
}

#[test]
fn collapsible_and_unique_are_parsed() {
    assert_eq!(
        RefreshBalance::OPTIONS.collapse.expect("collapse").key,
        ["account_id"]
    );
    let unique = Dedup::OPTIONS.unique.expect("unique");
    assert_eq!(unique.lock, UniqueLock::UntilAndWhileExecuting);
    assert_eq!(unique.ttl, Duration::from_secs(600));
    assert_eq!(unique.on_conflict, OnConflict::Replace);
    assert_eq!(unique.key, ["a", "b"]);
    let split = SplitAttributes::OPTIONS;
    assert_eq!(split.queue, "q");
    assert_eq!(
        split.unique.expect("unique").lock,
        UniqueLock::WhileExecuting
    );
}

#[test]
fn compile_errors_point_at_the_attribute() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
