//! Collapsible jobs and uniqueness locks, on both brokers, including concurrent enqueues.
//!
//! Every client and worker here is the plainest one a user can build (`Client::new`,
//! `Worker::builder`): the mechanisms a job's attribute demands need no installing.

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::collections::BTreeMap;
use std::time::Duration;

use jobqueue::backend::{Move, Source};
use jobqueue::client::{Admission, ClientJob, ClientMiddleware, ClientNext};
use jobqueue::schedule::Periodic;
use jobqueue::worker::{Outcome, ServerJob, ServerMiddleware, ServerNext};
use jobqueue::{
    async_trait, envelope::encode_args, Client, Envelope, Error, Job, JobContext, JobError,
    MechanismConfig, Perform, SortedSet, WorkerBuilder,
};
use serde::{Deserialize, Serialize};
use support::jobs::{self, record};
use support::{eventually, start, Backend};

const LIMIT: Duration = Duration::from_secs(20);

on_every_broker!(
    only_the_newest_of_a_burst_of_collapsible_jobs_runs,
    concurrent_collapsible_enqueues_run_exactly_one_job,
    collapse_markers_expire,
    a_fetch_reads_each_jobs_collapse_marker,
    a_job_that_waited_for_a_slot_sees_a_newer_one_enqueued_meanwhile,
    an_acknowledgement_releases_a_lock_only_for_its_owner,
    a_unique_job_is_enqueued_once_under_concurrent_enqueues,
    on_conflict_log_returns_the_job_that_stands_for_it,
    on_conflict_replace_swaps_the_queued_job,
    on_conflict_reschedule_tries_again_later,
    while_executing_never_runs_two_at_once_and_runs_them_all,
    until_executing_releases_when_the_job_starts,
    until_expired_holds_for_its_ttl,
    a_dead_job_releases_its_lock,
    every_enqueue_path_takes_the_lock,
    a_job_waiting_for_its_retry_keeps_its_lock,
    replace_takes_the_place_of_a_scheduled_or_retrying_holder,
    until_and_while_executing_locks_at_enqueue_and_while_running,
    a_refused_job_leaves_no_lock_or_marker,
    custom_middleware_composes_around_the_mechanisms,
    a_periodic_tick_takes_the_lock_like_any_enqueue,
    outcome_pause_queue_pauses_and_puts_the_job_back,
    a_while_executing_lock_is_renewed_past_its_lease,
    an_until_and_while_executing_lock_is_renewed_past_its_lease,
    a_unique_job_that_resumes_keeps_its_lock_until_it_has_executed,
    a_unique_job_failed_by_a_strict_budget_keeps_its_lock_for_its_retry,
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
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        record(&self.token, format!("{}:{}", self.account, self.seq));
        record(&jids(&self.token), ctx.jid.clone());
        Ok(())
    }
}

/// Where a `Refresh` records the id of each job that ran.
fn jids(token: &str) -> String {
    format!("{token}-jids")
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
unique_job!(
    ExpiresLater,
    unique(lock = "until_expired", ttl = "1h", key = "token")
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
    b.client()
}

fn worker(b: &Backend) -> WorkerBuilder {
    b.worker().configure(|c| {
        c.mechanisms = MechanismConfig::default().conflict_wait(Duration::from_millis(50))
    })
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
    let refresh = |seq| Refresh {
        token: t.clone(),
        account: 7,
        seq,
    };
    // Eight producers, each with its own broker connection, as eight processes would have.
    let mut tasks = Vec::new();
    for producer in 0..8u64 {
        let c = Client::new(b.another_broker().await);
        let jobs: Vec<Refresh> = (0..10).map(|i| refresh(producer * 100 + i)).collect();
        tasks.push(tokio::spawn(async move {
            for job in &jobs {
                c.enqueue(job).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Then one more, from yet another connection: it is the newest beyond doubt.
    let last = Client::new(b.another_broker().await)
        .enqueue(&refresh(999))
        .await
        .unwrap();

    let h = start(worker(&b).register::<Refresh>().concurrency(8));
    eventually(LIMIT, "all 81 taken", || async {
        b.admin().stats().await.unwrap().processed == 81
    })
    .await;
    h.stop().await;
    assert_eq!(
        jobs::labels(&jids(&t)),
        [last],
        "exactly one ran: the last enqueued"
    );
    assert_eq!(b.admin().stats().await.unwrap().skipped, 80);
}

async fn collapse_markers_expire(b: Backend) {
    const SHORT: Duration = Duration::from_millis(300);
    let t = jobs::token();
    let refresh = |seq| Refresh {
        token: t.clone(),
        account: 3,
        seq,
    };
    let key = Refresh::OPTIONS
        .collapse
        .unwrap()
        .marker_key(&job("Refresh", &refresh(1)));
    // Written with a day's lifetime, the marker names its job: no stall lets it lapse first.
    let day = MechanismConfig::default().collapse_marker_ttl(Duration::from_secs(24 * 3600));
    let first = b
        .client()
        .mechanisms(day)
        .enqueue(&refresh(1))
        .await
        .unwrap();
    assert_eq!(
        b.broker.lock_holder(&key).await.unwrap(),
        Some(first.clone())
    );
    // The next enqueue with the key writes it again, with a short lifetime: it names the
    // newer job, or nothing once that has passed, and is gone in the end.
    let short = MechanismConfig::default().collapse_marker_ttl(SHORT);
    let second = b
        .client()
        .mechanisms(short)
        .enqueue(&refresh(2))
        .await
        .unwrap();
    let holder = b.broker.lock_holder(&key).await.unwrap();
    assert!(
        holder.is_none() || holder == Some(second),
        "the marker still names the first job: {holder:?} ({first})"
    );
    eventually(LIMIT, "the marker expired", || async {
        b.broker.lock_holder(&key).await.unwrap().is_none()
    })
    .await;
}

async fn a_fetch_reads_each_jobs_collapse_marker(b: Backend) {
    let c = client(&b);
    let refresh = |account, seq| Refresh {
        token: jobs::token(),
        account,
        seq,
    };
    let queues = [Refresh::OPTIONS.queue.to_owned()];
    // Both fetch scripts: the plain one, and the one for processes running limited jobs.
    for (base, lease) in [(0, None), (10, Some(Duration::from_secs(60)))] {
        let older = c.enqueue(&refresh(base + 1, 1)).await.unwrap();
        // A job with no marker between them: the markers read together still go to their own
        // jobs.
        let plain = c
            .enqueue_to(&queues[0], &import(&jobs::token(), "plain"))
            .await
            .unwrap();
        let newer = c.enqueue(&refresh(base + 1, 2)).await.unwrap();
        let alone = c.enqueue(&refresh(base + 2, 1)).await.unwrap();
        let key = Refresh::OPTIONS
            .collapse
            .unwrap()
            .marker_key(&job("Refresh", &refresh(base + 2, 1)));
        assert!(b.broker.unlock(&key, &alone).await.unwrap());

        let taken = b
            .broker
            .fetch("reader", support::request(&queues, 4, lease, true))
            .await
            .unwrap();
        // On a cluster, the shards' jobs come shard by shard: compared by jid, not in order.
        let mut read: BTreeMap<String, Option<(String, Option<String>)>> = taken
            .iter()
            .map(|f| {
                let marker = f.marker.clone().map(|m| (m.key, m.newest));
                (Envelope::parse(&f.payload).unwrap().jid, marker)
            })
            .collect();
        assert_eq!(read.remove(&plain), Some(None), "no marker for a plain job");
        let read: BTreeMap<String, (String, Option<String>)> = read
            .into_iter()
            .map(|(jid, marker)| (jid, marker.expect("the marker was read")))
            .collect();
        assert_eq!(read.len(), 3);
        assert_eq!(
            read[&older].1.as_ref(),
            Some(&newer),
            "the older sees the newer"
        );
        assert_eq!(read[&newer].1.as_ref(), Some(&newer));
        assert_eq!(read[&alone], (key, None), "none where the marker is gone");
    }

    // A process running no collapsible class does not ask for markers.
    c.enqueue(&refresh(3, 1)).await.unwrap();
    let taken = b
        .broker
        .fetch("reader", support::request(&queues, 1, None, false))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].marker, None);
}

/// Holds its slot until its token has an `open` label.
#[derive(Serialize, Deserialize, Job, Clone)]
#[job(queue = "holds")]
struct Hold {
    token: String,
}

#[async_trait]
impl Perform for Hold {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        record(&self.token, "start");
        while !jobs::labels(&self.token).iter().any(|l| l == "open") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

async fn a_job_that_waited_for_a_slot_sees_a_newer_one_enqueued_meanwhile(b: Backend) {
    let t = jobs::token();
    let hold = jobs::token();
    let c = client(&b);
    let refresh = |seq| Refresh {
        token: t.clone(),
        account: 1,
        seq,
    };
    c.enqueue(&Hold {
        token: hold.clone(),
    })
    .await
    .unwrap();
    let h = start(
        worker(&b)
            .register::<Hold>()
            .register::<Refresh>()
            .concurrency(1),
    );
    eventually(LIMIT, "the first job holds the only slot", || async {
        jobs::labels(&hold) == ["start"]
    })
    .await;
    // Fetched into the buffer with its marker naming itself, then outdated.
    c.enqueue(&refresh(1)).await.unwrap();
    let queue = Refresh::OPTIONS.queue;
    eventually(LIMIT, "the first was fetched", || async {
        b.admin().queue(queue).await.unwrap().size == 0
    })
    .await;
    c.enqueue(&refresh(2)).await.unwrap();
    // Longer than a fetch's reading of a marker stands for (50 ms).
    tokio::time::sleep(Duration::from_millis(100)).await;
    record(&hold, "open");
    eventually(LIMIT, "all three taken", || async {
        b.admin().stats().await.unwrap().processed == 3
    })
    .await;
    h.stop().await;
    assert_eq!(jobs::labels(&t), ["1:2"], "only the newer one ran");
    assert_eq!(b.admin().stats().await.unwrap().skipped, 1);
}

async fn an_acknowledgement_releases_a_lock_only_for_its_owner(b: Backend) {
    let c = client(&b);
    let queue = Import::OPTIONS.queue.to_owned();
    c.enqueue(&import(&jobs::token(), "a")).await.unwrap();
    c.enqueue(&import(&jobs::token(), "b")).await.unwrap();
    let taken = b
        .broker
        .fetch("acker", support::request(&[queue], 2, None, false))
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    let ttl = Duration::from_secs(60);
    b.broker.lock("mine", "a", ttl).await.unwrap();
    b.broker.lock("theirs", "c", ttl).await.unwrap();
    let acks = [
        Move::done(taken[0].payload.clone()).unlock(Some(("mine".into(), "a".into()))),
        Move::done(taken[1].payload.clone()).unlock(Some(("theirs".into(), "b".into()))),
    ];
    let moved = b
        .broker
        .settle(Source::InFlight("acker"), &acks)
        .await
        .unwrap();
    assert_eq!(moved, [true, true]);
    assert!(b.broker.in_flight("acker").await.unwrap().is_empty());
    assert_eq!(b.broker.lock_holder("mine").await.unwrap(), None);
    assert_eq!(
        b.broker.lock_holder("theirs").await.unwrap().as_deref(),
        Some("c"),
        "another owner's lock is kept"
    );
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
    let c = client(&b);
    let h = start(worker(&b).register::<Expires>().register::<ExpiresLater>());
    // An hour's lock still holds after its job has run, however slow the machine.
    let t = jobs::token();
    let held = ExpiresLater {
        token: t.clone(),
        label: "x".into(),
        millis: 0,
    };
    c.enqueue(&held).await.unwrap();
    eventually(LIMIT, "it ran", || async { jobs::runs(&t).len() == 2 }).await;
    let again = c.enqueue(&held).await;
    assert!(
        matches!(again, Err(Error::Skipped { .. })),
        "still locked after running: {again:?}"
    );
    // A second's lock is gone once its TTL has passed, though nothing released it.
    let t = jobs::token();
    let brief = Expires {
        token: t.clone(),
        label: "x".into(),
        millis: 0,
    };
    c.enqueue(&brief).await.unwrap();
    eventually(LIMIT, "it ran", || async { jobs::runs(&t).len() == 2 }).await;
    eventually(LIMIT, "the lock expired", || async {
        c.enqueue(&brief).await.is_ok()
    })
    .await;
    h.stop().await;
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

unique_job!(
    Guarded,
    idempotent,
    unique(
        lock = "until_and_while_executing",
        on_conflict = "reschedule",
        key = "token"
    )
);

/// Idempotent and unique: fails its first run and waits an hour for its retry.
#[derive(Serialize, Deserialize, Job, Clone)]
#[job(idempotent, unique(key = "token"))]
struct FailsFirst {
    token: String,
    label: String,
}

#[async_trait]
impl Perform for FailsFirst {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        record(&self.token, self.label.clone());
        Err(JobError::new("first try fails"))
    }

    fn retry_in(&self, _: u32, _: &JobError) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

/// Idempotent, unique, replacing the holder on conflict; fails and retries in an hour.
#[derive(Serialize, Deserialize, Job, Clone)]
#[job(idempotent, unique(on_conflict = "replace", key = "token"))]
struct Replacer {
    token: String,
    label: String,
    fail: bool,
}

#[async_trait]
impl Perform for Replacer {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        record(&self.token, self.label.clone());
        if self.fail {
            return Err(JobError::new("fails, to wait in the retry set"));
        }
        Ok(())
    }

    fn retry_in(&self, _: u32, _: &JobError) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

fn is_refused(result: &Result<String, Error>) -> bool {
    matches!(result, Err(Error::Skipped { .. }))
}

async fn every_enqueue_path_takes_the_lock(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    // Bulk: the second of two twins is refused within the same call.
    let jids = c
        .enqueue_bulk(&[import(&t, "a"), import(&t, "b")])
        .await
        .unwrap();
    assert!(jids[0].is_some() && jids[1].is_none(), "{jids:?}");
    // Single, delayed and timed enqueues all meet the lock.
    assert!(is_refused(&c.enqueue(&import(&t, "c")).await));
    let later = Duration::from_secs(3600);
    assert!(is_refused(&c.enqueue_in(later, &import(&t, "d")).await));
    let at = std::time::SystemTime::now() + later;
    assert!(is_refused(&c.enqueue_at(at, &import(&t, "e")).await));
    let bulk_at = c.enqueue_bulk_at(at, &[import(&t, "f")]).await.unwrap();
    assert_eq!(bulk_at, [None]);
    // A follow-up enqueued by a running job meets it too.
    #[derive(Serialize, Deserialize, Job)]
    struct EnqueuesTwin {
        token: String,
    }
    #[async_trait]
    impl Perform for EnqueuesTwin {
        async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
            let refused = is_refused(&ctx.enqueue(&import(&self.token, "g")).await);
            record(&self.token, format!("follow-up refused: {refused}"));
            Ok(())
        }
    }
    c.enqueue_to("other", &EnqueuesTwin { token: t.clone() })
        .await
        .unwrap();
    let h = start(
        worker(&b)
            .queues(jobqueue::Queues::strict(["other"]))
            .register::<EnqueuesTwin>(),
    );
    eventually(LIMIT, "the follow-up was tried", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    h.stop().await;
    assert_eq!(jobs::labels(&t), ["follow-up refused: true"]);
    assert_eq!(b.admin().queue("default").await.unwrap().size, 1);
    assert_eq!(b.admin().set_size(SortedSet::Schedule).await.unwrap(), 0);
}

async fn a_job_waiting_for_its_retry_keeps_its_lock(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    let job = FailsFirst {
        token: t.clone(),
        label: "1".into(),
    };
    c.enqueue(&job).await.unwrap();
    let h = start(worker(&b).register::<FailsFirst>());
    eventually(LIMIT, "it waits in the retry set", || async {
        b.admin().set_size(SortedSet::Retry).await.unwrap() == 1
    })
    .await;
    h.stop().await;
    assert!(
        is_refused(&c.enqueue(&job).await),
        "a twin is refused while the job waits for its retry"
    );
    assert_eq!(jobs::runs(&t).len(), 1);
}

async fn replace_takes_the_place_of_a_scheduled_or_retrying_holder(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    let replacer = |label: &str, fail: bool| Replacer {
        token: t.clone(),
        label: label.into(),
        fail,
    };
    let admin = b.admin();
    // A worker that runs the class publishes its options, by which a tool without the type
    // (the admin's "run now") admits its jobs.
    start(worker(&b).register::<Replacer>()).stop().await;
    // A holder in the schedule set: replaced, it stays there (no set is searched at an
    // enqueue), and goes no further when it comes due, here made due at once by hand.
    c.enqueue_in(Duration::from_secs(3600), &replacer("scheduled", false))
        .await
        .unwrap();
    assert_eq!(admin.set_size(SortedSet::Schedule).await.unwrap(), 1);
    c.enqueue(&replacer("replaces the scheduled one", true))
        .await
        .unwrap();
    let holder = admin.set_entries(SortedSet::Schedule, 0, 1).await.unwrap();
    assert!(admin
        .run_now(SortedSet::Schedule, &holder[0])
        .await
        .unwrap());
    assert_eq!(
        admin.set_size(SortedSet::Schedule).await.unwrap(),
        0,
        "the scheduled holder is gone once due"
    );
    assert_eq!(
        admin.queue(Replacer::OPTIONS.queue).await.unwrap().size,
        1,
        "only the replacement waits"
    );
    // The replacement fails and waits in the retry set, holding the lock there.
    let h = start(worker(&b).register::<Replacer>());
    eventually(LIMIT, "the replacement waits in the retry set", || async {
        b.admin().set_size(SortedSet::Retry).await.unwrap() == 1
    })
    .await;
    h.stop().await;
    // A holder in the retry set is replaced as well.
    c.enqueue(&replacer("replaces the retrying one", false))
        .await
        .unwrap();
    let holder = admin.set_entries(SortedSet::Retry, 0, 1).await.unwrap();
    assert!(admin.run_now(SortedSet::Retry, &holder[0]).await.unwrap());
    assert_eq!(admin.set_size(SortedSet::Retry).await.unwrap(), 0);
    let h = start(worker(&b).register::<Replacer>());
    eventually(LIMIT, "the last replacement ran", || async {
        jobs::runs(&t).len() == 2
    })
    .await;
    h.stop().await;
    assert_eq!(
        jobs::labels(&t),
        ["replaces the scheduled one", "replaces the retrying one"]
    );
}

async fn until_and_while_executing_locks_at_enqueue_and_while_running(b: Backend) {
    let t = jobs::token();
    let wait = MechanismConfig::default().conflict_wait(Duration::from_millis(50));
    let c = client(&b).mechanisms(wait);
    let guarded = |label: &str, millis| Guarded {
        token: t.clone(),
        label: label.into(),
        millis,
    };
    c.enqueue(&guarded("first", 2000)).await.unwrap();
    c.enqueue(&guarded("twin", 0)).await.unwrap();
    assert_eq!(
        b.admin().queue("default").await.unwrap().size,
        1,
        "locked at enqueue: the twin waits"
    );
    assert_eq!(b.admin().set_size(SortedSet::Schedule).await.unwrap(), 1);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = start(
        worker(&b)
            .middleware(Outcomes(seen.clone()))
            .register::<Guarded>()
            .concurrency(2),
    );
    // Once the first has started, its enqueue lock is gone and the twin reaches the queue;
    // its running lock then sends the twin away until it has ended.
    eventually(LIMIT, "the twin met the running lock", || async {
        seen.lock()
            .unwrap()
            .iter()
            .any(|s| s.contains("Reschedule") && s.contains("is running"))
    })
    .await;
    eventually(LIMIT, "both ran", || async { jobs::runs(&t).len() == 4 }).await;
    h.stop().await;
    assert_eq!(
        jobs::labels(&t),
        ["start first", "end first", "start twin", "end twin"]
    );
}

/// Refuses every job while its switch is on.
struct Gate(std::sync::Arc<std::sync::atomic::AtomicBool>);

#[async_trait]
impl ClientMiddleware for Gate {
    async fn call(&self, job: &mut ClientJob, next: ClientNext<'_>) -> Result<Admission, Error> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Skipped {
                class: job.envelope.class.clone(),
                reason: "the gate is shut".into(),
            });
        }
        next.run(job).await
    }
}

async fn a_refused_job_leaves_no_lock_or_marker(b: Backend) {
    let t = jobs::token();
    // Too large: refused before the lock or the marker is written.
    let c = client(&b).max_payload_bytes(200);
    let huge = Import {
        token: t.clone(),
        label: "x".repeat(500),
        millis: 0,
    };
    let err = c.enqueue(&huge).await.unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    let spec = Import::OPTIONS.unique.unwrap();
    let lock = spec.queued_key(&job("Import", &huge));
    assert_eq!(b.broker.lock_holder(&lock).await.unwrap(), None);
    let refresh = Refresh {
        token: format!("{t}{}", "y".repeat(500)),
        account: 9,
        seq: 1,
    };
    assert!(c.enqueue(&refresh).await.is_err());
    let marker = Refresh::OPTIONS
        .collapse
        .unwrap()
        .marker_key(&job("Refresh", &refresh));
    assert_eq!(b.broker.lock_holder(&marker).await.unwrap(), None);
    // Refused by middleware: no lock either, so the job goes through once it is let in.
    let shut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let gated = client(&b).with(Gate(shut.clone()));
    assert!(is_refused(&gated.enqueue(&import(&t, "1")).await));
    assert_eq!(b.broker.lock_holder(&lock).await.unwrap(), None);
    shut.store(false, std::sync::atomic::Ordering::SeqCst);
    gated.enqueue(&import(&t, "2")).await.expect("not locked");
    assert!(b.broker.lock_holder(&lock).await.unwrap().is_some());
}

/// Records the outcome of every job it wraps.
struct Outcomes(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

#[async_trait]
impl ServerMiddleware for Outcomes {
    async fn call(&self, job: &ServerJob<'_>, next: ServerNext<'_>) -> Result<Outcome, JobError> {
        let outcome = next.run(job).await;
        let seen = match &outcome {
            Ok(Outcome::Done) => "done".to_owned(),
            Ok(Outcome::Skipped { .. }) => "skipped".to_owned(),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("error {e}"),
        };
        self.0.lock().unwrap().push(seen);
        outcome
    }
}

async fn custom_middleware_composes_around_the_mechanisms(b: Backend) {
    let t = jobs::token();
    let c = client(&b).with(Gate(Default::default()));
    for seq in 1..=3 {
        c.enqueue(&Refresh {
            token: t.clone(),
            account: 1,
            seq,
        })
        .await
        .unwrap();
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = start(
        worker(&b)
            .middleware(Outcomes(seen.clone()))
            .register::<Refresh>(),
    );
    eventually(LIMIT, "all three taken", || async {
        seen.lock().unwrap().len() == 3
    })
    .await;
    h.stop().await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        ["done", "skipped", "skipped"],
        "the stopper ran inside"
    );
    assert_eq!(jobs::labels(&t), ["1:3"]);
}

async fn a_periodic_tick_takes_the_lock_like_any_enqueue(b: Backend) {
    let t = jobs::token();
    // The lock is held by a job waiting an hour in the schedule set.
    client(&b)
        .enqueue_in(Duration::from_secs(3600), &import(&t, "held"))
        .await
        .unwrap();
    let every = Periodic::every("ticks", Duration::from_millis(50), &import(&t, "tick")).unwrap();
    let control = Periodic::every(
        "control",
        Duration::from_millis(50),
        &jobs::Note::new(&t, "control tick"),
    )
    .unwrap();
    let h = start(
        worker(&b)
            .queues(jobqueue::Queues::strict(["nothing"]))
            .periodic(every)
            .periodic(control),
    );
    // The control ticks prove the ticker ran while the lock refused every import tick.
    eventually(LIMIT, "two control ticks were enqueued", || async {
        b.admin().queue("default").await.unwrap().size >= 2
    })
    .await;
    h.stop().await;
    let queued = b
        .broker
        .set_range(SortedSet::Schedule, 0, 10)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1, "only the holder waits in the schedule set");
    let mut imports = 0;
    while let Some(payload) = b.broker.queue_oldest("default").await.unwrap() {
        let envelope = Envelope::parse(&payload).unwrap();
        imports += usize::from(envelope.class == "Import");
        let default = jobqueue::backend::Location::Queue("default");
        b.broker.remove(default, &[payload]).await.unwrap();
    }
    assert_eq!(imports, 0, "no tick pushed a twin past the lock");
}

/// Pauses its queue instead of running the job.
struct DownstreamDown;

#[async_trait]
impl ServerMiddleware for DownstreamDown {
    async fn call(&self, _: &ServerJob<'_>, _: ServerNext<'_>) -> Result<Outcome, JobError> {
        Ok(Outcome::PauseQueue {
            cooldown: Duration::from_secs(3600),
            reason: "the mail service is down".into(),
        })
    }
}

async fn outcome_pause_queue_pauses_and_puts_the_job_back(b: Backend) {
    let t = jobs::token();
    let jid = client(&b)
        .enqueue(&jobs::Note::new(&t, "waits"))
        .await
        .unwrap();
    let h = start(
        worker(&b)
            .middleware(DownstreamDown)
            .register::<jobs::Note>(),
    );
    eventually(LIMIT, "the queue was paused", || async {
        !b.admin().paused().await.unwrap().is_empty()
    })
    .await;
    eventually(LIMIT, "the job is back", || async {
        b.admin().queue("default").await.unwrap().size == 1
    })
    .await;
    h.stop().await;
    let paused = b.admin().paused().await.unwrap();
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].0, "default");
    assert!(
        paused[0].1.is_some(),
        "paused for its cooldown, not for good"
    );
    let back = b.broker.queue_oldest("default").await.unwrap().unwrap();
    assert_eq!(Envelope::parse(&back).unwrap().jid, jid);
    let stats = b.admin().stats().await.unwrap();
    assert_eq!(stats.failed, 0, "not counted as a failure");
    assert!(jobs::runs(&t).is_empty());
}

/// Declares a unique job type, sent away while a twin runs (`on_conflict = "reschedule"`),
/// that records its start, holds its slot until its token has an `open` label, and records
/// its end.
macro_rules! gated_job {
    ($name:ident, $lock:literal) => {
        #[derive(Serialize, Deserialize, Job, Clone)]
        #[job(unique(lock = $lock, on_conflict = "reschedule", key = "token"))]
        struct $name {
            token: String,
            label: String,
        }

        #[async_trait]
        impl Perform for $name {
            async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
                record(&self.token, format!("start {}", self.label));
                while !jobs::labels(&self.token).iter().any(|l| l == "open") {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                record(&self.token, format!("end {}", self.label));
                Ok(())
            }
        }
    };
}

gated_job!(GatedExclusive, "while_executing");
gated_job!(GatedGuarded, "until_and_while_executing");

/// A job runs well past its running lock's lease: the lease is renewed while it runs, so
/// its twin, sent away again and again meanwhile, starts only once it has ended.
async fn a_running_lock_is_renewed_past_its_lease<J>(b: Backend, job: impl Fn(&str, &str) -> J)
where
    J: Job + Perform + Clone,
{
    const LEASE: Duration = Duration::from_millis(600);
    let t = jobs::token();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = start(
        b.worker()
            .configure(|c| {
                c.mechanisms = MechanismConfig::default()
                    .running_lease(LEASE)
                    .conflict_wait(Duration::from_millis(50))
            })
            .middleware(Outcomes(seen.clone()))
            .register::<J>()
            .concurrency(2),
    );
    let c = client(&b);
    c.enqueue(&job(&t, "first")).await.unwrap();
    eventually(LIMIT, "the first started", || async {
        jobs::labels(&t) == ["start first"]
    })
    .await;
    let started = std::time::Instant::now();
    c.enqueue(&job(&t, "twin")).await.unwrap();
    let sent_away = || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| s.contains("Reschedule") && s.contains("is running"))
            .count()
    };
    let twin_started = || jobs::labels(&t).contains(&"start twin".to_owned());
    eventually(
        LIMIT,
        "four leases have passed since the first started",
        || async { twin_started() || started.elapsed() >= LEASE * 4 },
    )
    .await;
    // The twin is still sent away, long after an unrenewed lease would have lapsed.
    let before = sent_away();
    eventually(LIMIT, "the twin met the running lock again", || async {
        twin_started() || sent_away() > before
    })
    .await;
    assert!(
        !twin_started(),
        "the twin started while the first ran: {:?}",
        jobs::labels(&t)
    );
    record(&t, "open");
    eventually(LIMIT, "both ran", || async { jobs::runs(&t).len() == 5 }).await;
    h.stop().await;
    assert_eq!(
        jobs::labels(&t),
        ["start first", "open", "end first", "start twin", "end twin"]
    );
}

async fn a_while_executing_lock_is_renewed_past_its_lease(b: Backend) {
    a_running_lock_is_renewed_past_its_lease(b, |token, label| GatedExclusive {
        token: token.into(),
        label: label.into(),
    })
    .await;
}

async fn an_until_and_while_executing_lock_is_renewed_past_its_lease(b: Backend) {
    a_running_lock_is_renewed_past_its_lease(b, |token, label| GatedGuarded {
        token: token.into(),
        label: label.into(),
    })
    .await;
}

/// Unique until executed, and resumable: walks items `0..to`, 20 ms each, and records
/// `walked` once it has done them all.
#[derive(Serialize, Deserialize, Job, Clone)]
#[job(queue = "walks", idempotent, unique(key = "token"))]
struct UniqueWalk {
    token: String,
    to: u64,
}

#[async_trait]
impl jobqueue::iterate::Iterate for UniqueWalk {
    type Cursor = u64;

    async fn step(&self, next: Option<u64>, _: &JobContext) -> Result<Option<u64>, JobError> {
        let item = next.unwrap_or(0);
        if item >= self.to {
            record(&self.token, "walked");
            return Ok(None);
        }
        record(&self.token, format!("item {item}"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(Some(item + 1))
    }
}

#[async_trait]
impl Perform for UniqueWalk {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        record(&self.token, "run");
        jobqueue::iterate::run(self, ctx).await
    }
}

async fn a_unique_job_that_resumes_keeps_its_lock_until_it_has_executed(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    let walk = UniqueWalk {
        token: t.clone(),
        to: 30,
    };
    let jid = c.enqueue(&walk).await.unwrap();
    let first = start(worker(&b).register::<UniqueWalk>());
    eventually(LIMIT, "some items done", || async {
        jobs::labels(&t).contains(&"item 3".to_owned())
    })
    .await;
    // A graceful shutdown stops the run after its item; it waits to resume, still enqueued.
    first.stop().await;
    let waiting = b
        .admin()
        .find(SortedSet::Schedule, &jid, None)
        .await
        .unwrap();
    assert!(waiting.is_some(), "it waits in the schedule set to resume");
    assert!(!jobs::labels(&t).contains(&"walked".to_owned()));
    assert!(
        is_refused(&c.enqueue(&walk).await),
        "a twin is refused while the job waits to resume"
    );
    let second = start(worker(&b).register::<UniqueWalk>());
    eventually(LIMIT, "the walk ended", || async {
        jobs::labels(&t).contains(&"walked".to_owned())
    })
    .await;
    let labels = jobs::labels(&t);
    assert_eq!(
        labels.iter().filter(|l| *l == "run").count(),
        2,
        "one stop, one resume: {labels:?}"
    );
    // Executed now: the lock goes with its acknowledgement.
    eventually(LIMIT, "the lock was released", || async {
        c.enqueue(&walk).await.is_ok()
    })
    .await;
    second.stop().await;
}

/// Unique until executed, idempotent, with a 10 ms time budget it goes over; retries in an
/// hour.
#[derive(Serialize, Deserialize, Job, Clone)]
#[job(idempotent, unique(key = "token"), budget(time = "10ms"))]
struct OverTime {
    token: String,
}

#[async_trait]
impl Perform for OverTime {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        record(&self.token, "ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(())
    }

    fn retry_in(&self, _: u32, _: &JobError) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

async fn a_unique_job_failed_by_a_strict_budget_keeps_its_lock_for_its_retry(b: Backend) {
    let t = jobs::token();
    let c = client(&b);
    let job = OverTime { token: t.clone() };
    let jid = c.enqueue(&job).await.unwrap();
    let h = start(
        worker(&b)
            .register::<OverTime>()
            .configure(|c| c.strict_budgets = true),
    );
    eventually(LIMIT, "it waits in the retry set", || async {
        b.admin()
            .find(SortedSet::Retry, &jid, None)
            .await
            .unwrap()
            .is_some()
    })
    .await;
    h.stop().await;
    let entry = b
        .admin()
        .find(SortedSet::Retry, &jid, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        entry.job.unwrap().error_class.as_deref(),
        Some("jobqueue::BudgetExceeded")
    );
    assert!(
        is_refused(&c.enqueue(&job).await),
        "a twin is refused while the job waits for its retry"
    );
    assert_eq!(jobs::labels(&t), ["ran"]);
}
