//! The Sidekiq::Testing-style helpers users' unit tests run on, with no Redis: enqueues
//! captured and inspected by type, performed one at a time or drained (with the jobs they
//! enqueue), or performed inline at enqueue.

use std::sync::atomic::{AtomicU64, Ordering};

use jobqueue::testing::Fake;
use jobqueue::{async_trait, Error, Job, JobContext, JobError, Perform};
use serde::{Deserialize, Serialize};

/// Sums what `Add` jobs performed, per test (each uses its own `to`).
static TOTALS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

#[derive(Serialize, Deserialize, Job, Debug, PartialEq)]
#[job(queue = "math", idempotent)]
struct Add {
    to: usize,
    n: u64,
}

#[async_trait]
impl Perform for Add {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        if self.n == 13 {
            return Err(JobError::new("unlucky"));
        }
        TOTALS[self.to].fetch_add(self.n, Ordering::Relaxed);
        Ok(())
    }
}

/// Enqueues `Add` jobs for 1..=n: a follow-up per number.
#[derive(Serialize, Deserialize, Job, Debug, PartialEq)]
#[job(queue = "fanout")]
struct FanOut {
    to: usize,
    n: u64,
}

#[async_trait]
impl Perform for FanOut {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        for n in 1..=self.n {
            ctx.enqueue(&Add { to: self.to, n })
                .await
                .map_err(|e| JobError::new(e.to_string()))?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn enqueues_are_captured_and_inspected_by_type() {
    let fake = Fake::new();
    let client = fake.client();
    let jid = client.enqueue(&Add { to: 0, n: 2 }).await.unwrap();
    client
        .enqueue_in(std::time::Duration::from_secs(60), &Add { to: 0, n: 3 })
        .await
        .unwrap();
    client.enqueue(&FanOut { to: 0, n: 1 }).await.unwrap();
    assert_eq!(
        fake.jobs::<Add>(),
        [Add { to: 0, n: 2 }, Add { to: 0, n: 3 }]
    );
    assert_eq!(fake.jobs::<FanOut>(), [FanOut { to: 0, n: 1 }]);
    assert_eq!(fake.envelopes()[0].jid, jid);
    assert_eq!(fake.envelopes()[2].queue, "fanout");
    fake.clear();
    assert!(fake.envelopes().is_empty());
    // Nothing was performed.
    assert_eq!(TOTALS[0].load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn drain_performs_the_captured_jobs_and_the_jobs_they_enqueue() {
    let fake = Fake::new().register::<Add>().register::<FanOut>();
    fake.client()
        .enqueue(&FanOut { to: 1, n: 4 })
        .await
        .unwrap();

    assert_eq!(fake.perform_one().await.unwrap().as_deref(), Some("FanOut"));
    // Its follow-ups were captured, not performed.
    assert_eq!(fake.jobs::<Add>().len(), 4);
    assert_eq!(TOTALS[1].load(Ordering::Relaxed), 0);

    assert_eq!(fake.drain().await.unwrap(), 4);
    assert_eq!(TOTALS[1].load(Ordering::Relaxed), 1 + 2 + 3 + 4);
    assert_eq!(fake.perform_one().await.unwrap(), None);

    // A failing job stops the drain with its error.
    fake.client().enqueue(&Add { to: 1, n: 13 }).await.unwrap();
    let error = fake.drain().await.unwrap_err();
    assert_eq!(error.to_string(), "JobError: unlucky");

    // A class the fake does not know is an error naming it.
    let unknown = Fake::new();
    unknown
        .client()
        .enqueue(&Add { to: 1, n: 1 })
        .await
        .unwrap();
    let error = unknown.drain().await.unwrap_err();
    assert!(error.to_string().contains("register::<Add>()"), "{error}");
}

#[tokio::test]
async fn inline_mode_performs_at_enqueue_follow_ups_included() {
    let fake = Fake::inline().register::<Add>().register::<FanOut>();
    fake.client()
        .enqueue(&FanOut { to: 2, n: 3 })
        .await
        .unwrap();
    assert_eq!(TOTALS[2].load(Ordering::Relaxed), 1 + 2 + 3);
    assert!(fake.envelopes().is_empty());

    let error = fake
        .client()
        .enqueue(&Add { to: 2, n: 13 })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::PerformedInline { .. }), "{error}");
    assert!(error.to_string().contains("unlucky"), "{error}");
}

/// Declares `Add { n }` as its next step.
#[derive(Serialize, Deserialize, Job, Debug, PartialEq)]
#[job(queue = "steps")]
struct ThenAdd {
    to: usize,
    n: u64,
}

#[async_trait]
impl Perform for ThenAdd {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        ctx.then(&Add {
            to: self.to,
            n: self.n,
        })
        .map_err(|e| JobError::new(e.to_string()))?;
        Ok(())
    }
}

#[tokio::test]
async fn declared_next_steps_are_captured_once_their_job_succeeds() {
    let fake = Fake::new().register::<ThenAdd>().register::<Add>();
    fake.client()
        .enqueue(&ThenAdd { to: 3, n: 5 })
        .await
        .unwrap();
    assert_eq!(
        fake.perform_one().await.unwrap().as_deref(),
        Some("ThenAdd")
    );
    assert_eq!(fake.jobs::<Add>(), [Add { to: 3, n: 5 }]);
    fake.drain().await.unwrap();
    assert_eq!(TOTALS[3].load(Ordering::Relaxed), 5);
}
