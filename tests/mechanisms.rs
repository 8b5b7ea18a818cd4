//! Collapsible jobs and uniqueness locks, on both brokers, including concurrent enqueues.

mod support;

use std::time::Duration;

use jobqueue::{
    async_trait, envelope::encode_args, Client, Envelope, Error, Job, JobContext, JobError,
    Perform, SortedSet, WorkerBuilder,
};
use jobqueue_middleware::{Collapse, Unique};
use serde::{Deserialize, Serialize};
use support::jobs::{self, record};
use support::{eventually, start, Backend};

const LIMIT: Duration = Duration::from_secs(20);

on_both_brokers!(
    only_the_newest_of_a_burst_of_collapsible_jobs_runs,
    concurrent_collapsible_enqueues_run_exactly_one_job,
    collapse_markers_expire,
    a_unique_job_is_enqueued_once_under_concurrent_enqueues,
    on_conflict_log_returns_the_job_that_stands_for_it,
    on_conflict_replace_swaps_the_queued_job,
    on_conflict_reschedule_tries_again_later,
    while_executing_never_runs_two_at_once_and_runs_them_all,
    until_executing_releases_when_the_job_starts,
    until_expired_holds_for_its_ttl,
    a_dead_job_releases_its_lock,
);

#[derive(Serialize, Deserialize, Job, Clone)]
#[job(collapsible(key = "account"))]
struct Refresh {
    token: String,
    account: u64,
    seq: u64,
}

#[async_trait]
impl Perform for Refresh {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        record(&self.token, format!("{}:{}", self.account, self.seq));
        Ok(())
    }
}

/// Declares a unique job type that records its label and sleeps `millis`.
macro_rules! unique_job {
    ($name:ident, $($attr:tt)*) => {
        #[derive(Serialize, Deserialize, Job, Clone)]
        #[job($($attr)*)]
        struct $name {
            token: String,
            label: String,
            millis: u64,
        }

        #[async_trait]
        impl Perform for $name {
            async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
                record(&self.token, format!("start {}", self.label));
                tokio::time::sleep(Duration::from_millis(self.millis)).await;
                record(&self.token, format!("end {}", self.label));
                Ok(())
            }
        }
    };
}

unique_job!(Import, idempotent, unique(key = "token"));
unique_job!(ImportLog, unique(on_conflict = "log", key = "token"));
unique_job!(
    ImportReplace,
    unique(on_conflict = "replace", key = "token")
);
unique_job!(
    ImportLater,
    unique(on_conflict = "reschedule", key = "token")
);
unique_job!(Exclusive, unique(lock = "while_executing", key = "token"));
unique_job!(Starts, unique(lock = "until_executing", key = "token"));
unique_job!(
    Expires,
    unique(lock = "until_expired", ttl = "1s", key = "token")
);

/// Not idempotent and always fails: straight to the dead set.
#[derive(Serialize, Deserialize, Job, Clone)]
#[job(unique(key = "token"))]
struct Doomed {
    token: String,
}

#[async_trait]
impl Perform for Doomed {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        record(&self.token, "ran");
        Err(JobError::new("no luck"))
    }
}

fn client(b: &Backend) -> Client {
    b.client().with(Collapse::new()).with(Unique::new())
}

fn worker(b: &Backend) -> WorkerBuilder {
    b.worker()
        .install(Collapse::new())
        .install(Unique::new().reschedule_after(Duration::from_millis(50)))
}

fn job<J: Job>(name: &str, job: &J) -> Envelope {
    Envelope::new(name, J::OPTIONS.queue, encode_args(job).unwrap())
}

async fn only_the_newest_of_a_burst_of_collapsible_jobs_runs(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    for seq in 1..=5 {
        c.enqueue(&Refresh {
            token: t.clone(),
            account: 1,
            seq,
        })
        .await
        .unwrap();
    }
    c.enqueue(&Refresh {
        token: t.clone(),
        account: 2,
        seq: 1,
    })
    .await
    .unwrap();
    let h = start(worker(&b).register::<Refresh>());
    eventually(LIMIT, "all six taken", || async {
        b.admin().stats().await.unwrap().processed == 6
    })
    .await;
    h.stop().await;
    let mut ran = jobs::labels(&t);
    ran.sort();
    assert_eq!(ran, ["1:5", "2:1"], "the newest per account");
    let stats = b.admin().stats().await.unwrap();
    assert_eq!((stats.skipped, stats.failed), (4, 0));
}

async fn concurrent_collapsible_enqueues_run_exactly_one_job(b: Backend) {
    let t = jobs::token();
    let mut tasks = Vec::new();
    for producer in 0..8u64 {
        let c = client(&b);
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let seq = producer * 100 + i;
                c.enqueue(&Refresh {
                    token: t.clone(),
                    account: 7,
                    seq,
                })
                .await
                .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let probe = Refresh {
        token: t.clone(),
        account: 7,
        seq: 0,
    };
    let key = Collapse::marker_key(&job("Refresh", &probe), &Refresh::OPTIONS.collapse.unwrap());
    let newest = b.broker.lock_holder(&key).await.unwrap().expect("a marker");

    let h = start(worker(&b).register::<Refresh>().concurrency(8));
    eventually(LIMIT, "all 80 taken", || async {
        b.admin().stats().await.unwrap().processed == 80
    })
    .await;
    h.stop().await;
    assert_eq!(jobs::runs(&t).len(), 1, "exactly one ran");
    assert_eq!(b.admin().stats().await.unwrap().skipped, 79);
    // The one that ran is the newest: its marker is unchanged and names it.
    assert_eq!(
        b.broker.lock_holder(&key).await.unwrap().as_deref(),
        Some(newest.as_str())
    );
}

async fn collapse_markers_expire(b: Backend) {
    let c = b
        .client()
        .with(Collapse::new().marker_ttl(Duration::from_millis(300)));
    let refresh = Refresh {
        token: jobs::token(),
        account: 3,
        seq: 1,
    };
    let jid = c.enqueue(&refresh).await.unwrap();
    let key = Collapse::marker_key(
        &job("Refresh", &refresh),
        &Refresh::OPTIONS.collapse.unwrap(),
    );
    assert_eq!(b.broker.lock_holder(&key).await.unwrap(), Some(jid));
    eventually(LIMIT, "the marker expired", || async {
        b.broker.lock_holder(&key).await.unwrap().is_none()
    })
    .await;
}

fn import(token: &str, label: &str) -> Import {
    Import {
        token: token.into(),
        label: label.into(),
        millis: 0,
    }
}

async fn a_unique_job_is_enqueued_once_under_concurrent_enqueues(b: Backend) {
    let t = jobs::token();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = client(&b);
        let job = import(&t, &i.to_string());
        tasks.push(tokio::spawn(async move { c.enqueue(&job).await }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(Error::Skipped { reason, .. }) => {
                assert!(reason.contains("holds the lock"), "{reason}")
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(b.admin().queue("default").await.unwrap().size, 1);

    let h = start(worker(&b).register::<Import>());
    eventually(LIMIT, "it ran", || async { jobs::runs(&t).len() == 2 }).await;
    // Released on success: the same job may be enqueued again.
    eventually(LIMIT, "the lock was released", || async {
        client(&b).enqueue(&import(&t, "again")).await.is_ok()
    })
    .await;
    eventually(LIMIT, "it ran again", || async {
        jobs::runs(&t).len() == 4
    })
    .await;
    h.stop().await;
}

async fn on_conflict_log_returns_the_job_that_stands_for_it(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    let first = c
        .enqueue(&ImportLog {
            token: t.clone(),
            label: "1".into(),
            millis: 0,
        })
        .await
        .unwrap();
    let second = c
        .enqueue(&ImportLog {
            token: t.clone(),
            label: "2".into(),
            millis: 0,
        })
        .await
        .unwrap();
    assert_eq!(second, first);
    assert_eq!(b.admin().queue("default").await.unwrap().size, 1);
}

async fn on_conflict_replace_swaps_the_queued_job(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    let old = c
        .enqueue(&ImportReplace {
            token: t.clone(),
            label: "old".into(),
            millis: 0,
        })
        .await
        .unwrap();
    let new = c
        .enqueue(&ImportReplace {
            token: t.clone(),
            label: "new".into(),
            millis: 0,
        })
        .await
        .unwrap();
    assert_ne!(old, new);
    let h = start(worker(&b).register::<ImportReplace>());
    eventually(LIMIT, "the replacement ran", || async {
        jobs::runs(&t).len() == 2
    })
    .await;
    h.stop().await;
    assert_eq!(jobs::labels(&t), ["start new", "end new"]);
}

async fn on_conflict_reschedule_tries_again_later(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    c.enqueue(&ImportLater {
        token: t.clone(),
        label: "1".into(),
        millis: 200,
    })
    .await
    .unwrap();
    c.enqueue(&ImportLater {
        token: t.clone(),
        label: "2".into(),
        millis: 0,
    })
    .await
    .unwrap();
    assert_eq!(b.admin().queue("default").await.unwrap().size, 1);
    assert_eq!(b.admin().set_size(SortedSet::Schedule).await.unwrap(), 1);
    let h = start(worker(&b).register::<ImportLater>());
    eventually(LIMIT, "both ran", || async { jobs::runs(&t).len() == 4 }).await;
    h.stop().await;
    let labels = jobs::labels(&t);
    assert_eq!(
        &labels[..2],
        ["start 1", "end 1"],
        "the second waited for the first: {labels:?}"
    );
}

async fn while_executing_never_runs_two_at_once_and_runs_them_all(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    for i in 0..5 {
        c.enqueue(&Exclusive {
            token: t.clone(),
            label: i.to_string(),
            millis: 40,
        })
        .await
        .unwrap();
    }
    assert_eq!(
        b.admin().queue("default").await.unwrap().size,
        5,
        "no lock at enqueue"
    );
    let h = start(worker(&b).register::<Exclusive>().concurrency(5));
    eventually(LIMIT, "all five ran", || async {
        jobs::runs(&t).len() == 10
    })
    .await;
    h.stop().await;
    let labels = jobs::labels(&t);
    for pair in labels.chunks(2) {
        let started = pair[0]
            .strip_prefix("start ")
            .unwrap_or_else(|| panic!("{labels:?}"));
        assert_eq!(pair[1], format!("end {started}"), "overlap in {labels:?}");
    }
}

async fn until_executing_releases_when_the_job_starts(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    let long = Starts {
        token: t.clone(),
        label: "long".into(),
        millis: 60_000,
    };
    c.enqueue(&long).await.unwrap();
    assert!(matches!(c.enqueue(&long).await, Err(Error::Skipped { .. })));
    let h = start(
        worker(&b)
            .register::<Starts>()
            .shutdown_timeout(Duration::from_millis(100)),
    );
    eventually(LIMIT, "it started", || async { !jobs::runs(&t).is_empty() }).await;
    c.enqueue(&long)
        .await
        .expect("the lock was released at the start");
    h.stop().await;
}

async fn until_expired_holds_for_its_ttl(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    let job = Expires {
        token: t.clone(),
        label: "x".into(),
        millis: 0,
    };
    c.enqueue(&job).await.unwrap();
    let h = start(worker(&b).register::<Expires>());
    eventually(LIMIT, "it ran", || async { jobs::runs(&t).len() == 2 }).await;
    h.stop().await;
    assert!(
        matches!(c.enqueue(&job).await, Err(Error::Skipped { .. })),
        "still locked after running"
    );
    eventually(LIMIT, "the lock expired", || async {
        c.enqueue(&job).await.is_ok()
    })
    .await;
}

async fn a_dead_job_releases_its_lock(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    let job = Doomed { token: t.clone() };
    c.enqueue(&job).await.unwrap();
    let h = start(worker(&b).register::<Doomed>());
    eventually(LIMIT, "it died", || async {
        b.admin().set_size(SortedSet::Dead).await.unwrap() == 1
    })
    .await;
    eventually(LIMIT, "the lock was released", || async {
        c.enqueue(&job).await.is_ok()
    })
    .await;
    h.stop().await;
}
