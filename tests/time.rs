//! Periodic jobs across several schedulers, quiet windows for bulk jobs, and paused queues,
//! on both brokers.

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Timelike, Utc};
use jobqueue::client::{Admission, ClientJob, ClientMiddleware, ClientNext};
use jobqueue::schedule::{Periodic, QuietWindow};
use jobqueue::{
    async_trait, Envelope, Error, Job, JobContext, JobError, Perform, SortedSet, Worker,
};
use serde::{Deserialize, Serialize};
use support::jobs::{self, now, Note, Sleeps};
use support::{eventually, fast_config, start, Backend};

const LIMIT: Duration = Duration::from_secs(20);

on_both_brokers!(
    each_tick_is_enqueued_once_however_many_schedulers_run,
    a_missed_tick_within_the_grace_period_is_enqueued_once,
    a_missed_tick_past_the_grace_period_is_skipped,
    after_downtime_only_the_latest_missed_tick_runs,
    periodic_jobs_pass_through_client_middleware,
    a_bulk_job_fetched_in_a_quiet_window_waits_for_its_end,
    a_bulk_tick_in_a_quiet_window_is_scheduled_for_its_end,
    a_paused_queue_is_not_taken_until_resumed,
    a_timed_pause_ends_by_itself,
    a_job_whose_service_is_down_pauses_its_queue,
);

/// Takes every job in `queue` and returns them.
async fn drain(b: &Backend, queue: &str) -> Vec<Envelope> {
    let size = b.broker.queue_len(queue).await.unwrap();
    b.broker
        .fetch(
            "test-reader",
            support::request(
                &[queue.to_owned()],
                size,
                Some(std::time::Duration::from_secs(60)),
                false,
            ),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|f| Envelope::parse(&f.payload).unwrap())
        .collect()
}

fn tick_of(job: &Envelope) -> f64 {
    job.extra["periodic"]["tick"]
        .as_f64()
        .expect("a periodic tick")
}

/// A scheduler-only process: periodic jobs, no job types.
async fn scheduler(b: &Backend, periodic: Periodic, grace: Duration) -> support::Running {
    let broker = b.another_broker().await;
    start(
        Worker::builder(broker)
            .config(fast_config())
            .configure(|c| c.periodic_grace = grace)
            .periodic(periodic),
    )
}

async fn each_tick_is_enqueued_once_however_many_schedulers_run(b: Backend) {
    let every = Duration::from_millis(100);
    let mut schedulers = Vec::new();
    for _ in 0..4 {
        let periodic = Periodic::every("beat", every, &Note::new("periodic", "beat")).unwrap();
        schedulers.push(scheduler(&b, periodic, Duration::from_millis(50)).await);
    }
    eventually(LIMIT, "ten ticks", || async {
        b.broker.queue_len("default").await.unwrap() >= 10
    })
    .await;
    for s in schedulers {
        s.stop().await;
    }
    let mut ticks: Vec<f64> = drain(&b, "default").await.iter().map(tick_of).collect();
    ticks.sort_by(f64::total_cmp);
    let count = ticks.len();
    ticks.dedup();
    assert_eq!(ticks.len(), count, "a tick was enqueued twice");
    for pair in ticks.windows(2) {
        let step = ((pair[1] - pair[0]) * 1000.0).round();
        assert_eq!(
            step, 100.0,
            "a tick is missing between {} and {}",
            pair[0], pair[1]
        );
    }
}

/// The last midnight UTC, in epoch seconds.
fn last_midnight() -> f64 {
    let midnight = Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap();
    midnight.and_utc().timestamp() as f64
}

/// Every day at midnight UTC: the last tick is always within a day and an hour.
fn daily() -> Periodic {
    Periodic::every(
        "daily",
        Duration::from_secs(24 * 3600),
        &Note::new("periodic", "daily"),
    )
    .unwrap()
}

async fn a_missed_tick_within_the_grace_period_is_enqueued_once(b: Backend) {
    let grace = Duration::from_secs(25 * 3600);
    let mut schedulers = Vec::new();
    for _ in 0..3 {
        schedulers.push(scheduler(&b, daily(), grace).await);
    }
    eventually(LIMIT, "the missed tick", || async {
        b.broker.queue_len("default").await.unwrap() >= 1
    })
    .await;
    // Give the other schedulers their chance to enqueue it again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for s in schedulers {
        s.stop().await;
    }
    let jobs = drain(&b, "default").await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(tick_of(&jobs[0]), last_midnight());
}

async fn a_missed_tick_past_the_grace_period_is_skipped(b: Backend) {
    // The last New Year is more than a second ago, but in the first second of a year.
    let yearly = Periodic::cron(
        "new-year",
        "@yearly",
        chrono_tz::UTC,
        &Note::new("periodic", "yearly"),
    )
    .unwrap();
    // A control schedule in the same process: once it has ticked, the start-up catch-up
    // (which looks at the yearly tick first) is over.
    let control = Periodic::every(
        "control",
        Duration::from_millis(100),
        &Note::new("periodic", "control"),
    )
    .unwrap();
    let s = start(
        Worker::builder(b.another_broker().await)
            .config(fast_config())
            .configure(|c| c.periodic_grace = Duration::from_secs(1))
            .periodic(yearly)
            .periodic(control),
    );
    eventually(LIMIT, "a control tick", || async {
        b.broker.queue_len("default").await.unwrap() >= 1
    })
    .await;
    s.stop().await;
    let labels: Vec<String> = drain(&b, "default")
        .await
        .iter()
        .map(|job| job.args[0]["label"].as_str().unwrap().to_owned())
        .collect();
    assert!(!labels.is_empty());
    assert!(
        labels.iter().all(|l| l == "control"),
        "the yearly tick was skipped: {labels:?}"
    );
}

async fn after_downtime_only_the_latest_missed_tick_runs(b: Backend) {
    // Ten daily ticks fall within the grace period; one job runs, for the latest.
    let s = scheduler(&b, daily(), Duration::from_secs(10 * 24 * 3600)).await;
    eventually(LIMIT, "the catch-up tick", || async {
        b.broker.queue_len("default").await.unwrap() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.stop().await;
    let jobs = drain(&b, "default").await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(tick_of(&jobs[0]), last_midnight());
}

#[derive(Clone)]
struct Origins(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl ClientMiddleware for Origins {
    async fn call(&self, job: &mut ClientJob, next: ClientNext<'_>) -> Result<Admission, Error> {
        self.0.lock().unwrap().push(format!("{:?}", job.origin));
        next.run(job).await
    }
}

async fn periodic_jobs_pass_through_client_middleware(b: Backend) {
    let seen = Origins(Arc::default());
    let s = start(
        b.worker().client_middleware(seen.clone()).periodic(
            Periodic::every(
                "beat",
                Duration::from_millis(100),
                &Note::new("periodic", "beat"),
            )
            .unwrap(),
        ),
    );
    eventually(LIMIT, "a tick", || async {
        b.broker.queue_len("default").await.unwrap() >= 1
    })
    .await;
    s.stop().await;
    assert!(seen.0.lock().unwrap().iter().any(|o| o == "Periodic"));
}

/// A daily window that contains now: from the last full minute to two minutes later.
fn window_around_now() -> (QuietWindow, chrono::DateTime<Utc>) {
    let now = Utc::now()
        .with_second(0)
        .unwrap()
        .with_nanosecond(0)
        .unwrap();
    let end = now + chrono::Duration::minutes(2);
    let window = QuietWindow::daily(
        &now.format("%H:%M").to_string(),
        &end.format("%H:%M").to_string(),
        chrono_tz::UTC,
    )
    .unwrap();
    (window, end)
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "bulk", idempotent, bulk)]
struct Export {
    token: String,
}

#[async_trait]
impl Perform for Export {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        jobs::record(&self.token, "exported");
        Ok(())
    }
}

async fn a_bulk_job_fetched_in_a_quiet_window_waits_for_its_end(b: Backend) {
    let t = jobs::token();
    let (window, end) = window_around_now();
    b.client()
        .enqueue(&Export { token: t.clone() })
        .await
        .unwrap();
    b.client()
        .enqueue(&Note::new(&t, "not bulk"))
        .await
        .unwrap();
    let w = start(
        b.worker()
            .register::<Export>()
            .register::<Note>()
            .quiet_window(window),
    );
    eventually(LIMIT, "the bulk job was put off", || async {
        b.admin().set_size(SortedSet::Schedule).await.unwrap() == 1
    })
    .await;
    eventually(LIMIT, "the other job ran", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    w.stop().await;
    assert_eq!(jobs::labels(&t), ["not bulk"]);
    let entry = b
        .admin()
        .set_entries(SortedSet::Schedule, 0, 1)
        .await
        .unwrap()
        .remove(0);
    // Due at the window's end (never before), give or take the moment it took to settle.
    let due = std::time::SystemTime::from(end);
    let late = entry
        .at
        .duration_since(due)
        .expect("not due inside the window");
    assert!(
        late < Duration::from_secs(1),
        "due {late:?} after the window's end"
    );
    assert_eq!(b.admin().stats().await.unwrap().failed, 0);
}

async fn a_bulk_tick_in_a_quiet_window_is_scheduled_for_its_end(b: Backend) {
    let (window, end) = window_around_now();
    let export = Export {
        token: jobs::token(),
    };
    let s = start(
        b.worker()
            .quiet_window(window)
            .periodic(Periodic::every("export", Duration::from_millis(200), &export).unwrap()),
    );
    eventually(LIMIT, "a tick", || async {
        b.admin().set_size(SortedSet::Schedule).await.unwrap() >= 1
    })
    .await;
    s.stop().await;
    assert_eq!(b.broker.queue_len("bulk").await.unwrap(), 0);
    let entry = b
        .admin()
        .set_entries(SortedSet::Schedule, 0, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(entry.at, std::time::SystemTime::from(end));
}

async fn a_paused_queue_is_not_taken_until_resumed(b: Backend) {
    let t = jobs::token();
    let w = start(
        b.worker()
            .register::<Note>()
            .register::<Sleeps>()
            .configure(|c| c.idle_poll = Duration::from_millis(50)),
    );
    b.client()
        .enqueue(&Sleeps {
            token: t.clone(),
            millis: 300,
        })
        .await
        .unwrap();
    eventually(LIMIT, "the long job started", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    b.admin().pause("default").await.unwrap();
    assert_eq!(
        b.admin().paused().await.unwrap(),
        [("default".to_owned(), None)]
    );
    b.client().enqueue(&Note::new(&t, "waits")).await.unwrap();
    eventually(LIMIT, "the running job finished", || async {
        jobs::runs(&t).len() == 2
    })
    .await;
    // Many idle polls later, the queued job is still there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(jobs::labels(&t), ["started", "finished"]);
    assert_eq!(b.admin().queue("default").await.unwrap().size, 1);

    b.admin().resume("default").await.unwrap();
    eventually(LIMIT, "the job ran after resume", || async {
        jobs::runs(&t).len() == 3
    })
    .await;
    w.stop().await;
    assert!(b.admin().paused().await.unwrap().is_empty());
}

async fn a_timed_pause_ends_by_itself(b: Backend) {
    const PAUSE: Duration = Duration::from_millis(300);
    let t = jobs::token();
    let control = jobs::token();
    let w = start(
        b.worker()
            .register::<Note>()
            .configure(|c| c.idle_poll = Duration::from_millis(50)),
    );
    let paused_at = now();
    b.admin().pause_for("default", PAUSE).await.unwrap();
    b.client().enqueue(&Note::new(&t, "later")).await.unwrap();
    // A job on another queue proves the worker was taking jobs during the pause.
    b.client()
        .enqueue_to("other", &Note::new(&control, "control"))
        .await
        .unwrap();
    eventually(LIMIT, "the control job ran", || async {
        !jobs::runs(&control).is_empty()
    })
    .await;
    eventually(LIMIT, "it ran once the pause ended", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    w.stop().await;
    let ran_at = jobs::runs(&t)[0].1;
    assert!(
        ran_at - paused_at >= PAUSE.as_secs_f64(),
        "ran {:.3}s into a {PAUSE:?} pause",
        ran_at - paused_at
    );
    assert!(
        b.admin().paused().await.unwrap().is_empty(),
        "the pause ended"
    );
}

/// Its service is down on the first run.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "crm", idempotent)]
struct SyncCrm {
    token: String,
}

#[async_trait]
impl Perform for SyncCrm {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        let first = jobs::runs(&self.token).is_empty();
        jobs::record(&self.token, "ran");
        if first {
            return Err(JobError::new("CRM answered 503").pause_queue(Duration::from_millis(400)));
        }
        Ok(())
    }
}

async fn a_job_whose_service_is_down_pauses_its_queue(b: Backend) {
    let t = jobs::token();
    b.client()
        .enqueue(&SyncCrm { token: t.clone() })
        .await
        .unwrap();
    let w = start(
        b.worker()
            .register::<SyncCrm>()
            .configure(|c| c.idle_poll = Duration::from_millis(50)),
    );
    eventually(LIMIT, "the queue was paused", || async {
        b.admin()
            .paused()
            .await
            .unwrap()
            .iter()
            .any(|(q, until)| q == "crm" && until.is_some())
    })
    .await;
    eventually(LIMIT, "it ran again after the cool-down", || async {
        jobs::runs(&t).len() == 2
    })
    .await;
    w.stop().await;
    let stats = b.admin().stats().await.unwrap();
    assert_eq!(stats.failed, 0, "a paused queue is not a failure");
    assert_eq!(b.admin().set_size(SortedSet::Retry).await.unwrap(), 0);
}
