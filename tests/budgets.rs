//! Budgets: memory charged to the job whose future is polled (two jobs interleaved on one
//! thread each pay only their own), retained memory, time limits by tier, strict mode, and
//! the profile helper's figures against jobs that allocate known amounts. This test binary
//! installs the tracking allocator, as a service would.

mod support;

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use jobqueue::budget::{Tier, TrackingAllocator};
use jobqueue::testing::profile;
use jobqueue::{async_trait, Job, JobContext, JobError, Perform, SortedSet};
use serde::{Deserialize, Serialize};
use support::{eventually, start, Backend};
use tokio::sync::Notify;

#[global_allocator]
static ALLOCATOR: TrackingAllocator = TrackingAllocator::system();

const LIMIT: Duration = Duration::from_secs(30);
const MB: u64 = 1_000_000;
/// What the machinery inside a run allocates besides the job's own buffers (decoding the
/// arguments, the context, the tracing span): well under this.
const SLACK: u64 = 64 * 1024;

/// The order of the interleaving: `Small` allocates first and waits for `Large` to
/// allocate; both then free.
static SMALL_HOLDS: Notify = Notify::const_new();
static LARGE_HOLDS: Notify = Notify::const_new();

/// Holds 1 MB while `Large` holds 3 MB on the same thread.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "interleaved", idempotent)]
struct Small;

#[async_trait]
impl Perform for Small {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        let held = vec![1u8; MB as usize];
        SMALL_HOLDS.notify_one();
        LARGE_HOLDS.notified().await;
        drop(held);
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "interleaved", idempotent)]
struct Large;

#[async_trait]
impl Perform for Large {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        SMALL_HOLDS.notified().await;
        let held = vec![3u8; 3 * MB as usize];
        LARGE_HOLDS.notify_one();
        tokio::task::yield_now().await;
        drop(held);
        Ok(())
    }
}

/// The peak and retained bytes the live processes report for `class`.
async fn memory_of(b: &Backend, class: &str) -> (u64, u64) {
    let stats = b.admin().classes().await.unwrap();
    let row = stats
        .iter()
        .find(|c| c.class == class)
        .unwrap_or_else(|| panic!("no figures for {class}: {stats:?}"));
    (row.peak_bytes.unwrap(), row.retained_bytes.unwrap())
}

/// A current-thread runtime: the two jobs, the worker and the test share one thread.
#[tokio::test(flavor = "current_thread")]
async fn two_jobs_interleaved_on_one_thread_each_pay_only_their_own() {
    let b = Backend::memory().await;
    let w = start(
        b.worker()
            .concurrency(2)
            .register::<Small>()
            .register::<Large>(),
    );
    b.client().enqueue(&Large).await.unwrap();
    b.client().enqueue(&Small).await.unwrap();
    eventually(LIMIT, "both ran and were reported", || async {
        let stats = b.admin().classes().await.unwrap();
        stats.iter().filter(|c| c.total_runs == 1).count() == 2
    })
    .await;
    let (small_peak, small_retained) = memory_of(&b, "Small").await;
    let (large_peak, large_retained) = memory_of(&b, "Large").await;
    assert!(
        (MB..MB + SLACK).contains(&small_peak),
        "Small held {small_peak} at its peak; it allocated 1 MB while Large held 3 MB"
    );
    assert!(
        (3 * MB..3 * MB + SLACK).contains(&large_peak),
        "Large held {large_peak} at its peak"
    );
    assert!(small_retained < SLACK && large_retained < SLACK);
    w.stop().await;
}

/// Where a leaking job leaves its memory.
static LEAKED: LazyLock<Mutex<Vec<Vec<u8>>>> = LazyLock::new(Default::default);

/// Leaves 2 MB in a static; its budget allows 1 MB retained.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "leaks", idempotent, budget(retained = "1MB"))]
struct Leaks;

#[async_trait]
impl Perform for Leaks {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        LEAKED.lock().unwrap().push(vec![7u8; 2 * MB as usize]);
        Ok(())
    }
}

/// Allocates 2 MB and frees it.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "leaks", idempotent, budget(retained = "1MB"))]
struct Frees;

#[async_trait]
impl Perform for Frees {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        let buffer = vec![7u8; 2 * MB as usize];
        std::hint::black_box(&buffer);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_memory_is_seen_when_a_job_leaks_and_not_when_it_frees() {
    for b in [Backend::memory().await, Backend::redis().await] {
        let w = start(b.worker().register::<Leaks>().register::<Frees>());
        let leak = b.client().enqueue(&Leaks).await.unwrap();
        b.client().enqueue(&Frees).await.unwrap();
        eventually(LIMIT, "both reported", || async {
            let stats = b.admin().classes().await.unwrap();
            stats.iter().filter(|c| c.total_runs == 1).count() == 2
        })
        .await;
        let (_, leaked) = memory_of(&b, "Leaks").await;
        let (freed_peak, freed) = memory_of(&b, "Frees").await;
        assert!(leaked >= 2 * MB, "retained {leaked}");
        assert!(freed < SLACK, "a job that frees retained {freed}");
        assert!(freed_peak >= 2 * MB);
        // The leak is on the class's record of violations; the job that frees is not.
        let stats = b.admin().classes().await.unwrap();
        let leaks = stats.iter().find(|c| c.class == "Leaks").unwrap();
        assert_eq!(leaks.violations.len(), 1, "{leaks:?}");
        let violation = &leaks.violations[0];
        assert_eq!(
            (violation.jid.as_str(), violation.limit.as_str()),
            (leak.as_str(), "retained")
        );
        assert!(
            violation.figure >= 2 * MB && violation.allowed == MB,
            "{violation:?}"
        );
        assert!(stats
            .iter()
            .find(|c| c.class == "Frees")
            .unwrap()
            .violations
            .is_empty());
        w.stop().await;
    }
}

/// Takes `millis`.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "timed", idempotent)]
struct Takes {
    millis: u64,
}

#[async_trait]
impl Perform for Takes {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        Ok(())
    }
}

/// The same, as another class, run rarely.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "timed", idempotent)]
struct TakesRarely {
    millis: u64,
}

#[async_trait]
impl Perform for TakesRarely {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_run_is_over_budget_in_the_frequent_tier_and_not_in_the_rare_one() {
    let b = Backend::memory().await;
    let w = start(
        b.worker()
            .concurrency(20)
            .register::<Takes>()
            .register::<TakesRarely>(),
    );
    // Sixty quick runs in the minute make `Takes` frequent: its limit is 1 s.
    let quick: Vec<Takes> = (0..60).map(|_| Takes { millis: 1 }).collect();
    b.client().enqueue_bulk(&quick).await.unwrap();
    eventually(LIMIT, "sixty runs", || async {
        b.admin()
            .classes()
            .await
            .unwrap()
            .iter()
            .any(|c| c.runs_per_minute >= 60)
    })
    .await;
    let slow = b.client().enqueue(&Takes { millis: 1_200 }).await.unwrap();
    b.client()
        .enqueue(&TakesRarely { millis: 1_200 })
        .await
        .unwrap();
    eventually(LIMIT, "the slow runs reported", || async {
        let stats = b.admin().classes().await.unwrap();
        stats
            .iter()
            .any(|c| c.class == "Takes" && c.total_runs == 61)
            && stats
                .iter()
                .any(|c| c.class == "TakesRarely" && c.total_runs == 1)
    })
    .await;
    let stats = b.admin().classes().await.unwrap();
    let frequent = stats.iter().find(|c| c.class == "Takes").unwrap();
    assert_eq!(frequent.violations.len(), 1, "{frequent:?}");
    let v = &frequent.violations[0];
    assert_eq!(
        (v.jid.as_str(), v.limit.as_str(), v.tier.as_str(), v.allowed),
        (slow.as_str(), "time", "frequent", 1_000_000)
    );
    assert!(v.figure >= 1_200_000, "{v:?}");
    let rare = stats.iter().find(|c| c.class == "TakesRarely").unwrap();
    assert!(
        rare.violations.is_empty(),
        "1.2 s is within a rare job's 5 s: {rare:?}"
    );
    w.stop().await;
}

/// Holds 2 MB at once; its budget allows 1 MB. Not idempotent: a failure goes to the dead set.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "strict", budget(alloc = "1MB"))]
struct Greedy;

#[async_trait]
impl Perform for Greedy {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        let buffer = vec![1u8; 2 * MB as usize];
        std::hint::black_box(&buffer);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_fails_a_run_over_budget() {
    for b in [Backend::memory().await, Backend::redis().await] {
        let w = start(
            b.worker()
                .register::<Greedy>()
                .configure(|c| c.strict_budgets = true),
        );
        let jid = b.client().enqueue(&Greedy).await.unwrap();
        eventually(LIMIT, "the greedy job died", || async {
            b.admin().set_size(SortedSet::Dead).await.unwrap() == 1
        })
        .await;
        let dead = b
            .admin()
            .find(SortedSet::Dead, &jid, None)
            .await
            .unwrap()
            .unwrap();
        let job = dead.job.unwrap();
        assert_eq!(job.error_class.as_deref(), Some("jobqueue::BudgetExceeded"));
        let message = job.error_message.unwrap();
        assert!(
            message.contains("over the alloc budget of 1.0 MB"),
            "{message}"
        );
        w.stop().await;

        // Without strict mode the same run is reported and succeeds.
        let w = start(b.worker().register::<Greedy>());
        b.client().enqueue(&Greedy).await.unwrap();
        eventually(LIMIT, "the run reported", || async {
            b.admin()
                .classes()
                .await
                .unwrap()
                .iter()
                .any(|c| c.class == "Greedy" && !c.violations.is_empty())
        })
        .await;
        assert_eq!(b.admin().set_size(SortedSet::Dead).await.unwrap(), 1);
        w.stop().await;
    }
}

/// Allocates `bytes` in one buffer, keeps `kept` of them in a static, frees the rest.
#[derive(Serialize, Deserialize, Job)]
#[job(budget(alloc = "8MB", retained = "1MB"))]
struct Known {
    bytes: usize,
    kept: usize,
}

static KEPT: LazyLock<Mutex<Vec<Vec<u8>>>> = LazyLock::new(Default::default);

#[async_trait]
impl Perform for Known {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        let buffer = vec![0u8; self.bytes];
        std::hint::black_box(&buffer);
        drop(buffer);
        KEPT.lock().unwrap().push(vec![0u8; self.kept]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

#[tokio::test]
async fn the_profile_helper_reports_what_a_job_allocates() {
    let job = Known {
        bytes: 5_000_000,
        kept: 300_000,
    };
    let report = profile(&job).await.unwrap();
    assert!(report.result.is_ok());
    let m = report.memory;
    assert!(
        (5_300_000..5_300_000 + SLACK).contains(&m.allocated),
        "{m:?}"
    );
    assert!((5_000_000..5_000_000 + SLACK).contains(&m.peak), "{m:?}");
    assert!((300_000..300_000 + SLACK).contains(&m.retained), "{m:?}");
    assert!(report.wall >= Duration::from_millis(20));
    report.assert_within_budget::<Known>(Tier::Frequent);

    // Over budget: the assertion names the budget, the figure and the limit.
    let greedy = profile(&Known {
        bytes: 9_000_000,
        kept: 0,
    })
    .await
    .unwrap();
    let failure = std::panic::catch_unwind(|| greedy.assert_within_budget::<Known>(Tier::Frequent))
        .expect_err("9 MB held is over an 8 MB budget");
    let message = failure.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("Known is over budget as a frequent job")
            && message.contains("over the alloc budget of 8.0 MB")
            && message.contains("held 9.0 MB"),
        "{message}"
    );
}
