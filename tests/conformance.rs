//! The broker conformance suite: every test runs on the in-memory broker, on a real Redis
//! server and on a real Redis Cluster, through the public API, and must behave the same on
//! all three.

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::time::Duration;

use jobqueue::backend::Push;
use jobqueue::retry::error_class;
use jobqueue::{Envelope, Job, Queues, RunState, SortedSet, WorkerBuilder};
use support::jobs::now;
use support::jobs::{self, *};
use support::{eventually, start, Backend};

const LIMIT: Duration = Duration::from_secs(20);

/// A queue kept first in, first out: on a cluster, on one shard (see `Backend::cluster`).
const ORDERED: &str = support::ORDERED;

on_every_broker!(
    an_iterating_job_stops_at_its_time_limit_and_resumes_from_its_checkpoint,
    an_iterating_job_stops_at_shutdown_and_another_worker_resumes_it,
    batch_callbacks_run_once_when_every_job_has_finished,
    cancel_removes_waiting_jobs_and_stops_running_ones,
    follow_ups_are_pushed_with_the_ack_of_a_run_that_succeeds,
    ack_then_pushes_once_and_only_if_the_job_was_still_held,
    a_late_acknowledgement_leaves_a_recovered_job_alone,
    periodic_schedules_are_published_with_their_next_tick,
    periodic_schedules_pause_resume_and_run_now,
    a_queues_jobs_are_listed_next_first_and_deleted_by_id,
    processes_show_memory_running_jobs_and_class_figures,
    operators_act_on_sets_queues_and_processes,
    health_follows_the_heartbeat_and_the_state,
    the_dead_set_keeps_the_newest_ten_thousand,
    the_dead_set_drops_jobs_older_than_180_days,
    quiet_and_shutdown_return_prefetched_jobs_to_the_front_in_order,
    runs_enqueued_jobs_with_their_arguments,
    bulk_enqueue_runs_every_job_once,
    two_workers_share_a_queue_without_running_a_job_twice,
    dedicated_workers_take_only_their_own_queues,
    delayed_jobs_wait_until_due_and_wake_the_scheduler,
    idempotent_job_retries_once_then_lands_in_dead_set,
    non_idempotent_job_goes_straight_to_the_dead_set,
    default_backoff_follows_sidekiq,
    invalid_payload_is_dead_lettered_and_the_queue_keeps_flowing,
    unknown_class_fails_with_a_message_naming_it,
    arguments_that_do_not_fit_are_dead_lettered_without_retry,
    a_panic_is_a_failure_and_the_worker_keeps_running,
    a_job_past_its_timeout_fails_and_the_other_slots_keep_running,
    oversized_payloads_are_refused_at_enqueue_and_dead_lettered_at_fetch,
    strict_queues_drain_in_order,
    all_queues_mode_consumes_every_queue_including_dotted_names,
    jobs_of_a_dead_process_are_recovered,
    a_job_interrupted_three_times_goes_to_the_dead_set,
    shutdown_hands_unfinished_jobs_back_to_the_front_of_their_queue,
    shutdown_lets_running_jobs_finish_within_the_timeout,
    quiet_stops_taking_jobs_but_keeps_the_heartbeat,
    heartbeat_publishes_the_process_and_stats,
    a_fetch_takes_each_queues_oldest_jobs_first,
    due_jobs_reach_their_queues_stamped_and_otherwise_unchanged,
    a_cancelled_run_pushes_no_follow_up_and_releases_its_locks,
    a_job_cancelled_before_it_starts_never_runs_its_body,
    cancel_removes_a_job_waiting_for_its_retry,
    due_jobs_taken_by_a_process_that_died_mid_move_run_once,
);

async fn dead_jobs(b: &Backend) -> Vec<Envelope> {
    b.admin()
        .set_entries(SortedSet::Dead, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job.expect("dead jobs parse"))
        .collect()
}

/// Runs `builder` until one job is in the dead set, stops it, and returns that job.
async fn the_one_dead_job(b: &Backend, builder: WorkerBuilder) -> Envelope {
    let h = start(builder);
    eventually(LIMIT, "a job died", || async {
        dead_jobs(b).await.len() == 1
    })
    .await;
    h.stop().await;
    dead_jobs(b).await.remove(0)
}

async fn runs_enqueued_jobs_with_their_arguments(b: Backend) {
    let t = jobs::token();
    let jid = b
        .client()
        .enqueue(&Note::new(&t, "hello ünïcode"))
        .await
        .unwrap();
    assert_eq!(jid.len(), 24);
    let h = start(b.worker().register::<Note>());
    let identity = h.handle.identity().to_owned();
    eventually(LIMIT, "the job ran", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    eventually(LIMIT, "the job was acknowledged", || async {
        b.broker.in_flight(&identity).await.unwrap().is_empty()
    })
    .await;
    h.stop().await;
    assert_eq!(jobs::labels(&t), ["hello ünïcode"]);
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
}

async fn bulk_enqueue_runs_every_job_once(b: Backend) {
    let t = jobs::token();
    let batch: Vec<Note> = (0..1000).map(|i| Note::new(&t, i.to_string())).collect();
    let jids = b.client().enqueue_bulk(&batch).await.unwrap();
    assert_eq!(jids.len(), 1000);
    assert_eq!(b.admin().queue("default").await.unwrap().size, 1000);
    let h = start(b.worker().register::<Note>().concurrency(16));
    eventually(LIMIT, "1000 jobs ran", || async {
        jobs::runs(&t).len() >= 1000
    })
    .await;
    h.stop().await;
    let mut labels: Vec<usize> = jobs::labels(&t)
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    labels.sort_unstable();
    assert_eq!(
        labels,
        (0..1000).collect::<Vec<_>>(),
        "each job exactly once"
    );
    assert_eq!(b.admin().stats().await.unwrap().processed, 1000);
}

async fn two_workers_share_a_queue_without_running_a_job_twice(b: Backend) {
    let t = jobs::token();
    // Each with its own broker connection, as two processes would have.
    let h1 = start(b.worker().register::<Note>());
    let h2 = start(
        jobqueue::Worker::builder(b.another_broker().await)
            .config(support::fast_config())
            .register::<Note>(),
    );
    let batch: Vec<Note> = (0..500).map(|i| Note::new(&t, i.to_string())).collect();
    for chunk in batch.chunks(50) {
        b.client().enqueue_bulk(chunk).await.unwrap();
    }
    eventually(LIMIT, "500 jobs ran", || async {
        jobs::runs(&t).len() >= 500
    })
    .await;
    h1.stop().await;
    h2.stop().await;
    let mut labels = jobs::labels(&t);
    labels.sort();
    labels.dedup();
    assert_eq!(labels.len(), 500);
    assert_eq!(jobs::runs(&t).len(), 500, "no job ran twice");
}

async fn dedicated_workers_take_only_their_own_queues(b: Backend) {
    let (t_push, t_bulk) = (jobs::token(), jobs::token());
    for i in 0..5 {
        let label = i.to_string();
        let push = QueuedNote {
            token: t_push.clone(),
            label: label.clone(),
        };
        b.client().enqueue_to("push", &push).await.unwrap();
        let bulk = QueuedNote {
            token: t_bulk.clone(),
            label,
        };
        b.client().enqueue_to("bulk", &bulk).await.unwrap();
    }
    // Only the bulk worker runs: it drains `bulk` and leaves `push` alone.
    let h_bulk = start(
        b.worker()
            .register::<QueuedNote>()
            .queues(Queues::strict(["bulk"]))
            .concurrency(1),
    );
    eventually(LIMIT, "the bulk jobs ran", || async {
        jobs::runs(&t_bulk).len() == 5
    })
    .await;
    assert!(jobs::runs(&t_push).is_empty());
    assert_eq!(b.admin().queue("push").await.unwrap().size, 5);

    let h_push = start(
        b.worker()
            .register::<QueuedNote>()
            .queues(Queues::strict(["push"])),
    );
    eventually(LIMIT, "the push jobs ran", || async {
        jobs::runs(&t_push).len() == 5
    })
    .await;
    h_bulk.stop().await;
    h_push.stop().await;
    assert_eq!(jobs::runs(&t_bulk).len(), 5);
}

async fn delayed_jobs_wait_until_due_and_wake_the_scheduler(b: Backend) {
    let t = jobs::token();
    // With a 60 s poll, only the wake-up on scheduling can make the job run in time.
    let h = start(
        b.worker()
            .register::<Note>()
            .configure(|c| c.poll_interval = Duration::from_secs(60)),
    );
    let due = now() + 0.5;
    b.client()
        .enqueue_in(Duration::from_millis(500), &Note::new(&t, "later"))
        .await
        .unwrap();
    assert_eq!(b.admin().set_size(SortedSet::Schedule).await.unwrap(), 1);
    eventually(LIMIT, "the delayed job ran", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    let started = jobs::runs(&t)[0].1;
    assert!(
        started >= due - 0.001,
        "ran {:.3}s before it was due",
        due - started
    );
    assert_eq!(b.admin().set_size(SortedSet::Schedule).await.unwrap(), 0);

    // A time in the past means now.
    b.client()
        .enqueue_at(std::time::SystemTime::UNIX_EPOCH, &Note::new(&t, "past"))
        .await
        .unwrap();
    eventually(LIMIT, "the past-due job ran", || async {
        jobs::runs(&t).len() == 2
    })
    .await;
    h.stop().await;
}

async fn idempotent_job_retries_once_then_lands_in_dead_set(b: Backend) {
    let t = jobs::token();
    assert_eq!(Flaky::OPTIONS.retry.job_retries, 1);
    b.client()
        .enqueue(&Flaky {
            token: t.clone(),
            failures: 1,
        })
        .await
        .unwrap();
    let t2 = jobs::token();
    b.client()
        .enqueue(&Flaky {
            token: t2.clone(),
            failures: 5,
        })
        .await
        .unwrap();
    let h = start(b.worker().register::<Flaky>());
    eventually(LIMIT, "the flaky job succeeded on its retry", || async {
        jobs::labels(&t) == ["run 0", "run 1"]
    })
    .await;
    eventually(LIMIT, "the hopeless job died", || async {
        dead_jobs(&b).await.len() == 1
    })
    .await;
    h.stop().await;

    assert_eq!(jobs::labels(&t2), ["run 0", "run 1"], "one retry, no more");
    let dead = dead_jobs(&b).await.remove(0);
    assert_eq!(dead.class, "Flaky");
    assert_eq!(dead.retry_count, Some(1));
    assert_eq!(dead.error_class.as_deref(), Some("Planned"));
    assert_eq!(dead.error_message.as_deref(), Some("planned failure 1"));
    assert!(dead.failed_at.is_some() && dead.retried_at.is_some());
    assert_eq!(b.admin().set_size(SortedSet::Retry).await.unwrap(), 0);
    let stats = b.admin().stats().await.unwrap();
    assert_eq!((stats.processed, stats.failed), (4, 3));
}

async fn non_idempotent_job_goes_straight_to_the_dead_set(b: Backend) {
    let t = jobs::token();
    b.client()
        .enqueue(&ChargeCard { token: t.clone() })
        .await
        .unwrap();
    let dead = the_one_dead_job(&b, b.worker().register::<ChargeCard>()).await;
    assert_eq!(jobs::labels(&t), ["ran"]);
    assert_eq!(dead.retry_count, Some(0));
    assert_eq!(dead.error_class.as_deref(), Some("Declined"));
    assert_eq!(dead.error_message.as_deref(), Some("card declined"));
    assert!(dead.failed_at.is_some());
    assert_eq!(b.admin().set_size(SortedSet::Retry).await.unwrap(), 0);
}

async fn default_backoff_follows_sidekiq(b: Backend) {
    let t = jobs::token();
    b.client()
        .enqueue(&AlwaysFails { token: t.clone() })
        .await
        .unwrap();
    let before = now();
    let h = start(b.worker().register::<AlwaysFails>());
    eventually(LIMIT, "the job waits in the retry set", || async {
        b.admin().set_size(SortedSet::Retry).await.unwrap() == 1
    })
    .await;
    h.stop().await;
    let entry = b
        .admin()
        .set_entries(SortedSet::Retry, 0, 1)
        .await
        .unwrap()
        .remove(0);
    // First retry: 0^4 + 15 + rand(10) * 1 seconds from the failure.
    let delay = entry
        .at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - before;
    assert!(
        (15.0..=25.0 + (now() - before)).contains(&delay),
        "retry in {delay}s"
    );
    let job = entry.job.unwrap();
    assert_eq!(job.retry_count, Some(0));
    assert_eq!(job.error_class.as_deref(), Some("Error"));
    assert_eq!(job.error_message.as_deref(), Some("disk on fire"));
}

async fn invalid_payload_is_dead_lettered_and_the_queue_keeps_flowing(b: Backend) {
    let t = jobs::token();
    b.broker
        .push(&[Push {
            queue: "default".into(),
            payload: "{not json".into(),
            at: None,
        }])
        .await
        .unwrap();
    b.client().enqueue(&Note::new(&t, "after")).await.unwrap();
    let h = start(b.worker().register::<Note>());
    eventually(LIMIT, "the good job ran", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    eventually(LIMIT, "the bad one died", || async {
        dead_jobs(&b).await.len() == 1
    })
    .await;
    h.stop().await;
    let dead = dead_jobs(&b).await.remove(0);
    assert_eq!(dead.class, error_class::INVALID_PAYLOAD);
    assert_eq!(
        dead.error_class.as_deref(),
        Some(error_class::INVALID_PAYLOAD)
    );
    assert_eq!(dead.args, [serde_json::json!("{not json")]);
    assert!(dead
        .error_message
        .unwrap()
        .contains("payload is not a valid job"));
}

async fn unknown_class_fails_with_a_message_naming_it(b: Backend) {
    let mut env = Envelope::new("Billing::Ghost", "default", vec![serde_json::json!(1)]);
    env.retry = jobqueue::envelope::Retry::Count(0);
    b.client().enqueue_envelope(env, None).await.unwrap();
    let dead = the_one_dead_job(&b, b.worker().register::<Note>()).await;
    assert_eq!(
        dead.error_class.as_deref(),
        Some(error_class::UNKNOWN_CLASS)
    );
    let message = dead.error_message.unwrap();
    assert!(
        message.contains("`Billing::Ghost`") && message.contains("Note"),
        "{message}"
    );
}

async fn arguments_that_do_not_fit_are_dead_lettered_without_retry(b: Backend) {
    let env = Envelope::new("Flaky", "default", vec![serde_json::json!({"token": 5})]);
    b.client().enqueue_envelope(env, None).await.unwrap();
    let dead = the_one_dead_job(&b, b.worker().register::<Flaky>()).await;
    assert_eq!(
        dead.error_class.as_deref(),
        Some(error_class::INVALID_ARGUMENTS)
    );
    let message = dead.error_message.unwrap();
    assert!(
        message.contains("do not fit Flaky") && message.contains("token"),
        "{message}"
    );
    assert_eq!(b.admin().set_size(SortedSet::Retry).await.unwrap(), 0);
}

async fn a_panic_is_a_failure_and_the_worker_keeps_running(b: Backend) {
    let t = jobs::token();
    b.client()
        .enqueue(&Panics { token: t.clone() })
        .await
        .unwrap();
    let h = start(
        b.worker()
            .register::<Panics>()
            .register::<Note>()
            .concurrency(1),
    );
    eventually(LIMIT, "the job died", || async {
        dead_jobs(&b).await.len() == 1
    })
    .await;
    b.client().enqueue(&Note::new(&t, "after")).await.unwrap();
    eventually(LIMIT, "the next job ran", || async {
        jobs::labels(&t).len() == 2
    })
    .await;
    h.stop().await;
    let dead = dead_jobs(&b).await.remove(0);
    assert_eq!(dead.error_class.as_deref(), Some(error_class::PANIC));
    assert!(dead
        .error_message
        .unwrap()
        .contains("index out of bounds in test job"));
}

async fn a_job_past_its_timeout_fails_and_the_other_slots_keep_running(b: Backend) {
    let (stuck, quick) = (jobs::token(), jobs::token());
    b.client()
        .enqueue(&Bounded {
            token: stuck.clone(),
            millis: 60_000,
        })
        .await
        .unwrap();
    let w = start(
        b.worker()
            .register::<Bounded>()
            .register::<Note>()
            .concurrency(2),
    );
    eventually(LIMIT, "the stuck job started", || async {
        !jobs::runs(&stuck).is_empty()
    })
    .await;
    for i in 0..5 {
        b.client()
            .enqueue(&Note::new(&quick, i.to_string()))
            .await
            .unwrap();
    }
    eventually(LIMIT, "the other slot ran the rest", || async {
        jobs::runs(&quick).len() == 5
    })
    .await;
    eventually(LIMIT, "the stuck job died", || async {
        dead_jobs(&b).await.len() == 1
    })
    .await;
    w.stop().await;
    assert_eq!(jobs::labels(&stuck), ["started"], "stopped at its timeout");
    let dead = dead_jobs(&b).await.remove(0);
    assert_eq!(dead.error_class.as_deref(), Some(error_class::TIMEOUT));
    assert!(dead.error_message.unwrap().contains("1s"));
}

async fn oversized_payloads_are_refused_at_enqueue_and_dead_lettered_at_fetch(b: Backend) {
    let t = jobs::token();
    let huge = Note::new(&t, "x".repeat(2 << 20));
    let err = b.client().enqueue(&huge).await.unwrap_err();
    assert!(
        matches!(
            err,
            jobqueue::Error::PayloadTooLarge {
                limit: 1_048_576,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert_eq!(
        b.admin().queue("default").await.unwrap().size,
        0,
        "nothing pushed"
    );

    // A producer with a higher limit pushes it; the worker keeps its own.
    b.client()
        .max_payload_bytes(8 << 20)
        .enqueue(&huge)
        .await
        .unwrap();
    b.client().enqueue(&Note::new(&t, "small")).await.unwrap();
    let dead = the_one_dead_job(&b, b.worker().register::<Note>()).await;
    eventually(LIMIT, "the small job ran", || async {
        jobs::labels(&t) == ["small"]
    })
    .await;
    assert_eq!(
        dead.error_class.as_deref(),
        Some(error_class::PAYLOAD_TOO_LARGE)
    );
    let preview = dead.args[0].as_str().unwrap();
    assert!(
        preview.len() <= 1024 && preview.starts_with('{'),
        "{}",
        preview.len()
    );
}

async fn strict_queues_drain_in_order(b: Backend) {
    let t = jobs::token();
    for (queue, n) in [("low", 5), ("high", 5)] {
        for i in 0..n {
            let job = QueuedNote {
                token: t.clone(),
                label: format!("{queue}{i}"),
            };
            b.client().enqueue_to(queue, &job).await.unwrap();
        }
    }
    let h = start(
        b.worker()
            .register::<QueuedNote>()
            .queues(Queues::strict(["high", "low"]))
            .concurrency(1),
    );
    eventually(LIMIT, "10 jobs ran", || async {
        jobs::runs(&t).len() == 10
    })
    .await;
    h.stop().await;
    let expected: Vec<String> = (0..5)
        .map(|i| format!("high{i}"))
        .chain((0..5).map(|i| format!("low{i}")))
        .collect();
    let mut ran = jobs::labels(&t);
    if b.cluster.is_some() {
        // A queue spread over shards is first in, first out within each shard only; the
        // order between queues holds across them.
        ran[..5].sort();
        ran[5..].sort();
    }
    assert_eq!(ran, expected, "high first, each queue in FIFO order");
}

async fn all_queues_mode_consumes_every_queue_including_dotted_names(b: Backend) {
    let t = jobs::token();
    let h = start(b.worker().register::<QueuedNote>().queues(Queues::all()));
    for queue in [
        "utilitarian.tasks.amr.scheduled.daily",
        "default",
        "player_data",
    ] {
        let job = QueuedNote {
            token: t.clone(),
            label: queue.into(),
        };
        b.client().enqueue_to(queue, &job).await.unwrap();
    }
    eventually(LIMIT, "3 jobs ran", || async { jobs::runs(&t).len() == 3 }).await;
    h.stop().await;
    let mut labels = jobs::labels(&t);
    labels.sort();
    assert_eq!(
        labels,
        [
            "default",
            "player_data",
            "utilitarian.tasks.amr.scheduled.daily"
        ]
    );
}

/// A fetch takes the oldest jobs of each queue in turn, oldest first, however it is asked
/// (plain, reading collapse markers, or with limits), and leaves the in-flight list as one
/// move per job would: the newest taken at its head. A cluster spreads the second queue
/// over its shards, which keep their order only each within itself.
async fn a_fetch_takes_each_queues_oldest_jobs_first(b: Backend) {
    let ways = [
        (None, false),
        (None, true),
        (Some(Duration::from_secs(60)), false),
    ];
    for (way, (lease, markers)) in ways.into_iter().enumerate() {
        let queues = [ORDERED.to_owned(), format!("fetch-order-{way}")];
        let label = |queue: &str, i: usize| format!("{queue}/{i}");
        let mut pushes = Vec::new();
        for (queue, count) in queues.iter().zip([5, 3]) {
            for i in 0..count {
                let args = vec![serde_json::json!(label(queue, i))];
                pushes.push(Push {
                    queue: queue.clone(),
                    payload: Envelope::new("Note", queue.as_str(), args).to_json(),
                    at: None,
                });
            }
        }
        b.broker.push(&pushes).await.unwrap();
        let process = format!("fetcher:{way}:000000000001");
        let labels = |payloads: Vec<String>| -> Vec<String> {
            payloads
                .iter()
                .map(|p| {
                    Envelope::parse(p).unwrap().args[0]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect()
        };
        let mut taken = Vec::new();
        for max in [6, 6] {
            let fetched = b
                .broker
                .fetch(&process, support::request(&queues, max, lease, markers))
                .await
                .unwrap();
            assert!(
                fetched.iter().all(|f| f.marker.is_none()),
                "no job names a marker"
            );
            assert!(fetched
                .iter()
                .all(|f| f.payload.contains(&format!("\"{}/", f.queue))));
            taken.extend(labels(fetched.into_iter().map(|f| f.payload).collect()));
        }
        let mut expected: Vec<String> = (0..5).map(|i| label(&queues[0], i)).collect();
        expected.extend((0..3).map(|i| label(&queues[1], i)));
        let mut held = labels(b.broker.in_flight(&process).await.unwrap());
        if b.cluster.is_some() {
            assert_eq!(taken[..5], expected[..5], "way {way}");
            taken.sort();
            held.sort();
            expected.sort();
            assert_eq!(taken, expected, "way {way}");
            assert_eq!(held, expected, "way {way}");
        } else {
            assert_eq!(taken, expected, "way {way}");
            held.reverse();
            assert_eq!(held, expected, "way {way}: the newest taken heads the list");
        }
        for queue in &queues {
            assert_eq!(b.admin().queue(queue).await.unwrap().size, 0);
        }
    }
}

/// Due jobs reach their queues stamped with a new `enqueued_at`, and otherwise as they
/// were, whoever wrote them: this library (the Redis scripts move these themselves),
/// this library after an earlier run (an `enqueued_at` to replace), Ruby Sidekiq (its key
/// order), or anyone with an `enqueued_at` inside the arguments.
async fn due_jobs_reach_their_queues_stamped_and_otherwise_unchanged(b: Backend) {
    use serde_json::{json, Value};
    let queue = "due.stamped";
    let fresh = Envelope::new("Note", queue, vec![json!("fresh")]);
    let mut again = Envelope::new("Note", queue, vec![json!("again")]);
    again.enqueued_at = Some(1_700_000_000.25);
    again.retry_count = Some(0);
    again.error_message = Some("it failed once".into());
    let ruby = format!(
        r#"{{"retry":true,"queue":"{queue}","class":"Ruby::Greeting","args":["ruby"],"jid":"0123456789abcdef01234567","created_at":1700000000.5}}"#
    );
    let nested = Envelope::new(
        "Note",
        queue,
        vec![json!({"enqueued_at": 5}), json!("nested")],
    );
    let payloads = [fresh.to_json(), again.to_json(), ruby, nested.to_json()];
    let pushed_at = now();
    let due = std::time::SystemTime::now() - Duration::from_secs(1);
    let pushes: Vec<Push> = payloads
        .iter()
        .map(|payload| Push {
            queue: queue.to_owned(),
            payload: payload.clone(),
            at: Some(due),
        })
        .collect();
    b.broker.push(&pushes).await.unwrap();
    // The worker takes another queue, so the moved jobs stay to be read.
    let h = start(
        b.worker()
            .register::<Note>()
            .queues(Queues::strict(["elsewhere"])),
    );
    eventually(LIMIT, "every due job reached its queue", || async {
        b.admin().queue(queue).await.unwrap().size == payloads.len()
    })
    .await;
    h.stop().await;
    let arrived: Vec<String> = b
        .admin()
        .queue_jobs(queue, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.payload)
        .collect();
    let without_stamp = |payload: &str| -> (Value, f64) {
        let mut value: Value = serde_json::from_str(payload).unwrap();
        let stamp = value
            .as_object_mut()
            .unwrap()
            .remove("enqueued_at")
            .and_then(|v| v.as_f64());
        (value, stamp.unwrap_or(f64::NAN))
    };
    for payload in &payloads {
        let (expected, _) = without_stamp(payload);
        let jid = expected["jid"].as_str().unwrap();
        let moved = arrived
            .iter()
            .find(|a| a.contains(jid))
            .unwrap_or_else(|| panic!("{jid} is not in {arrived:?}"));
        let (value, stamp) = without_stamp(moved);
        assert_eq!(value, expected, "{moved}");
        assert!(
            stamp >= pushed_at - 0.001 && stamp <= now() + 0.001,
            "stamped {stamp}, pushed at {pushed_at}: {moved}"
        );
        assert_eq!(
            moved.matches("\"enqueued_at\":").count(),
            if moved.contains("nested") { 2 } else { 1 },
            "{moved}"
        );
        // This library's own jobs keep the order the client writes: the stamp right
        // after the queue.
        if value["class"] == "Note" {
            assert!(
                moved.contains(&format!("\"queue\":\"{queue}\",\"enqueued_at\":")),
                "{moved}"
            );
        }
    }
    assert_eq!(b.admin().set_size(SortedSet::Schedule).await.unwrap(), 0);
}

/// Registers a process that never beats again and takes every queued job into its
/// in-flight list, as a process killed mid-job leaves them.
async fn leave_jobs_with_a_dead_process(b: &Backend, identity: &str) {
    support::heartbeat::beat(b.broker.as_ref(), identity, Duration::from_secs(1)).await;
    let taken = b
        .broker
        .fetch(
            identity,
            support::request(
                &["default".into()],
                100,
                Some(std::time::Duration::from_secs(60)),
                false,
            ),
        )
        .await
        .unwrap();
    assert!(!taken.is_empty());
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
}

async fn jobs_of_a_dead_process_are_recovered(b: Backend) {
    let t = jobs::token();
    for i in 0..3 {
        b.client()
            .enqueue(&Note::new(&t, i.to_string()))
            .await
            .unwrap();
    }
    leave_jobs_with_a_dead_process(&b, "crashed:1:000000000001").await;
    let h = start(b.worker().register::<Note>());
    eventually(LIMIT, "the orphaned jobs ran", || async {
        jobs::runs(&t).len() == 3
    })
    .await;
    h.stop().await;
    assert!(b
        .broker
        .in_flight("crashed:1:000000000001")
        .await
        .unwrap()
        .is_empty());
    assert!(
        b.broker.orphans("").await.unwrap().is_empty(),
        "the dead process is forgotten"
    );
}

async fn a_job_interrupted_three_times_goes_to_the_dead_set(b: Backend) {
    let t = jobs::token();
    // In a batch, which counts it as failed when it dies.
    let batch = jobqueue::client::Batch::new("poison");
    let jid = b
        .client()
        .enqueue_batch(&batch, &[Note::new(&t, "x")])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    // A worker that recovers orphans but never takes from `default`, so the job's only
    // runs are the ones that die under it.
    let recoverer = start(
        b.worker()
            .queues(Queues::strict(["elsewhere"]))
            .register::<Note>(),
    );
    let back = || async {
        eventually(LIMIT, "the orphan is back in its queue", || async {
            b.admin().queue("default").await.unwrap().size == 1
        })
        .await;
        let back = b.broker.queue_oldest("default").await.unwrap().unwrap();
        Envelope::parse(&back).unwrap()
    };
    // A process that only held the job may never have started it: its death counts no
    // interruption, and the job is marked as recovered.
    leave_jobs_with_a_dead_process(&b, "crashed:0:000000000000").await;
    let first = back().await;
    assert_eq!(
        (first.recovered_count, first.interrupted_count),
        (Some(1), None),
        "a job not known to have started is not counted"
    );
    // A recovered job's next process records its start before running it, as a worker
    // does: each death of such a process counts.
    let max = jobqueue::retry::MAX_INTERRUPTIONS;
    let started = |identity: String| {
        let broker = b.broker.clone();
        let key = format!("started:{jid}");
        async move {
            broker
                .set(&key, &identity, Duration::from_secs(600))
                .await
                .unwrap();
        }
    };
    for death in 1..max {
        let identity = format!("crashed:{death}:00000000000{death}");
        leave_jobs_with_a_dead_process(&b, &identity).await;
        started(identity).await;
        assert_eq!(
            back().await.interrupted_count,
            Some(death),
            "counted once per death"
        );
    }
    started("crashed:9:000000000009".to_owned()).await;
    leave_jobs_with_a_dead_process(&b, "crashed:9:000000000009").await;
    eventually(LIMIT, "the poison pill reached the dead set", || async {
        b.admin().set_size(SortedSet::Dead).await.unwrap() == 1
    })
    .await;
    eventually(LIMIT, "its batch finished, with one job failed", || async {
        let status = b.client().batch_status(batch.id()).await.unwrap().unwrap();
        (status.failed, status.pending, status.finished) == (1, 0, true)
    })
    .await;
    // Now a worker takes `default`: had the poison pill gone back to its queue as well, it
    // would run there before or beside a job pushed after it, which is waited for.
    let reader = start(
        b.worker()
            .queues(Queues::strict(["default"]))
            .register::<Note>(),
    );
    let reader_identity = reader.handle.identity().to_owned();
    b.client()
        .enqueue(&Note::new(&t, "pushed after"))
        .await
        .unwrap();
    eventually(
        LIMIT,
        "the queue was drained and its jobs ended",
        || async {
            jobs::labels(&t).contains(&"pushed after".to_owned())
                && b.admin().queue("default").await.unwrap().size == 0
                && b.broker
                    .in_flight(&reader_identity)
                    .await
                    .unwrap()
                    .is_empty()
        },
    )
    .await;
    reader.stop().await;
    recoverer.stop().await;
    let dead = dead_jobs(&b).await.remove(0);
    assert_eq!(
        jobs::labels(&t),
        ["pushed after"],
        "a poison pill is not run again"
    );
    assert_eq!(dead.error_class.as_deref(), Some(error_class::INTERRUPTED));
    assert_eq!(dead.interrupted_count, Some(max));
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
}

async fn shutdown_hands_unfinished_jobs_back_to_the_front_of_their_queue(b: Backend) {
    let t = jobs::token();
    b.client()
        .enqueue_to(
            ORDERED,
            &Sleeps {
                token: t.clone(),
                millis: 60_000,
            },
        )
        .await
        .unwrap();
    let h = start(
        b.worker()
            .register::<Sleeps>()
            .register::<Note>()
            .queues(Queues::strict([ORDERED]))
            .shutdown_timeout(Duration::from_millis(300)),
    );
    eventually(LIMIT, "the long job started", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    b.client()
        .enqueue_to(ORDERED, &Note::new(&t, "queued behind"))
        .await
        .unwrap();
    // Let the worker take the note too, or not: either way nothing may be lost.
    h.stop().await;
    let queue = b.admin().queue(ORDERED).await.unwrap();
    let ran = jobs::labels(&t);
    assert!(!ran.contains(&"finished".to_owned()));
    let note_ran = ran.contains(&"queued behind".to_owned());
    assert_eq!(queue.size, if note_ran { 1 } else { 2 }, "ran: {ran:?}");
    // The unfinished job is next out.
    let next = b
        .broker
        .fetch(
            "probe",
            support::request(
                &[ORDERED.into()],
                1,
                Some(std::time::Duration::from_secs(60)),
                false,
            ),
        )
        .await
        .unwrap()
        .remove(0);
    assert_eq!(Envelope::parse(&next.payload).unwrap().class, "Sleeps");
    assert!(
        b.broker.processes().await.unwrap().is_empty(),
        "the process unregistered"
    );
}

async fn shutdown_lets_running_jobs_finish_within_the_timeout(b: Backend) {
    let t = jobs::token();
    b.client()
        .enqueue(&Sleeps {
            token: t.clone(),
            millis: 300,
        })
        .await
        .unwrap();
    let h = start(
        b.worker()
            .register::<Sleeps>()
            .shutdown_timeout(Duration::from_secs(10)),
    );
    eventually(LIMIT, "the job started", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    h.stop().await;
    assert_eq!(jobs::labels(&t), ["started", "finished"]);
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
}

async fn quiet_stops_taking_jobs_but_keeps_the_heartbeat(b: Backend) {
    let t = jobs::token();
    let h = start(
        b.worker()
            .register::<Note>()
            .configure(|c| c.idle_poll = Duration::from_millis(50)),
    );
    eventually(LIMIT, "the process registered", || async {
        b.admin().processes().await.unwrap().len() == 1
    })
    .await;
    h.handle.quiet();
    assert_eq!(h.handle.state(), RunState::Quiet);
    b.client().enqueue(&Note::new(&t, "waits")).await.unwrap();
    eventually(LIMIT, "the heartbeat says quiet", || async {
        b.admin()
            .processes()
            .await
            .unwrap()
            .first()
            .is_some_and(|p| p.quiet)
    })
    .await;
    // Several idle polls and heartbeats have passed by now.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(jobs::runs(&t).is_empty());
    assert_eq!(b.admin().queue("default").await.unwrap().size, 1);
    h.stop().await;
    assert_eq!(
        b.admin().queue("default").await.unwrap().size,
        1,
        "nothing lost"
    );
}

async fn heartbeat_publishes_the_process_and_stats(b: Backend) {
    let t = jobs::token();
    let h = start(
        b.worker()
            .register::<Note>()
            .queues(Queues::strict(["default", "mail"]))
            .concurrency(7)
            .configure(|c| c.tag = "billing".into()),
    );
    for i in 0..3 {
        b.client()
            .enqueue(&Note::new(&t, i.to_string()))
            .await
            .unwrap();
    }
    eventually(LIMIT, "the stats reached the broker", || async {
        b.admin().stats().await.unwrap().processed == 3
    })
    .await;
    let processes = b.admin().processes().await.unwrap();
    assert_eq!(processes.len(), 1);
    assert_eq!(processes[0].identity, h.handle.identity());
    let info: serde_json::Value = serde_json::from_str(&processes[0].info).unwrap();
    assert_eq!(info["concurrency"], 7);
    assert_eq!(info["queues"], serde_json::json!(["default", "mail"]));
    assert_eq!(info["tag"], "billing");
    assert_eq!(info["identity"], h.handle.identity());
    h.stop().await;
    assert!(b.admin().processes().await.unwrap().is_empty());
}

/// The labels of the jobs in `queue`, front (next to run) first, taken out of it.
async fn take_in_order(b: &Backend, queue: &str) -> Vec<String> {
    let size = b.broker.queue_len(queue).await.unwrap();
    b.broker
        .fetch(
            "reader:0:000000000000",
            support::request(
                &[queue.to_owned()],
                size,
                Some(std::time::Duration::from_secs(60)),
                false,
            ),
        )
        .await
        .unwrap()
        .iter()
        .map(|f| {
            let job = Envelope::parse(&f.payload).unwrap();
            job.args[0]
                .get("label")
                .and_then(|l| l.as_str())
                .unwrap_or("sleeps")
                .to_owned()
        })
        .collect()
}

async fn quiet_and_shutdown_return_prefetched_jobs_to_the_front_in_order(b: Backend) {
    let t = jobs::token();
    b.client()
        .enqueue_to(
            ORDERED,
            &Sleeps {
                token: t.clone(),
                millis: 60_000,
            },
        )
        .await
        .unwrap();
    for label in ["2", "3", "4", "5", "6"] {
        b.client()
            .enqueue_to(ORDERED, &Note::new(&t, label))
            .await
            .unwrap();
    }
    // One slot: the sleeper runs, the next two wait in the fetch buffer.
    let h = start(
        b.worker()
            .concurrency(1)
            .queues(Queues::strict([ORDERED]))
            .shutdown_timeout(Duration::from_millis(100))
            .register::<Sleeps>()
            .register::<Note>(),
    );
    let identity = h.handle.identity().to_owned();
    eventually(LIMIT, "one running and two prefetched", || async {
        b.broker.in_flight(&identity).await.unwrap().len() == 3
    })
    .await;
    assert_eq!(jobs::labels(&t), ["started"]);

    h.handle.quiet();
    eventually(LIMIT, "the prefetched jobs were returned", || async {
        b.broker.in_flight(&identity).await.unwrap().len() == 1
    })
    .await;
    assert_eq!(b.admin().queue(ORDERED).await.unwrap().size, 5);
    let front = b.broker.queue_oldest(ORDERED).await.unwrap().unwrap();
    assert_eq!(Envelope::parse(&front).unwrap().args[0]["label"], "2");

    h.stop().await;
    assert_eq!(jobs::labels(&t), ["started"], "nothing else started");
    assert!(b.broker.in_flight(&identity).await.unwrap().is_empty());
    assert_eq!(
        take_in_order(&b, ORDERED).await,
        ["sleeps", "2", "3", "4", "5", "6"],
        "the unfinished job first, then the returned ones, in their order"
    );
}

/// Takes `payloads` into the in-flight list of a process and settles them all to the dead
/// set in one call.
async fn bury(b: &Backend, payloads: Vec<String>) {
    bury_in(b, "graveyard", payloads).await
}

/// Like [`bury`], through `queue`.
async fn bury_in(b: &Backend, queue: &str, payloads: Vec<String>) {
    let pushes: Vec<Push> = payloads
        .iter()
        .map(|payload| Push {
            queue: queue.into(),
            payload: payload.clone(),
            at: None,
        })
        .collect();
    b.broker.push(&pushes).await.unwrap();
    let taken = b
        .broker
        .fetch(
            "digger:0:000000000000",
            support::request(
                &[queue.into()],
                payloads.len(),
                Some(std::time::Duration::from_secs(60)),
                false,
            ),
        )
        .await
        .unwrap();
    assert_eq!(taken.len(), payloads.len());
    let moves: Vec<_> = taken
        .into_iter()
        .map(|f| {
            let to = jobqueue::backend::Settle::Dead {
                payload: f.payload.clone(),
            };
            jobqueue::backend::Move::new(f.payload, to)
        })
        .collect();
    let from = jobqueue::backend::Source::InFlight("digger:0:000000000000");
    b.broker.settle(from, &moves).await.unwrap();
}

async fn the_dead_set_keeps_the_newest_ten_thousand(b: Backend) {
    let max = jobqueue::retry::DEAD_MAX_JOBS;
    bury(&b, vec!["the first to die".into()]).await;
    // Later deaths, so the first is the oldest.
    eventually(LIMIT, "the clock moved on", || async {
        let first = b.broker.set_range(SortedSet::Dead, 0, 1).await.unwrap()[0].0;
        now() > first + 0.01
    })
    .await;
    bury(&b, (0..max).map(|i| format!("death {i}")).collect()).await;
    assert_eq!(b.admin().set_size(SortedSet::Dead).await.unwrap(), max);
    let oldest = b.broker.set_range(SortedSet::Dead, 0, 1).await.unwrap();
    assert_ne!(oldest[0].1, "the first to die", "the oldest was trimmed");
}

async fn the_dead_set_drops_jobs_older_than_180_days(b: Backend) {
    // Deaths go through the queue kept on one shard, so that on a cluster they share one
    // dead set with the entries planted beside them.
    bury_in(&b, ORDERED, vec!["first".into()]).await;
    let timeout = jobqueue::retry::DEAD_TIMEOUT.as_secs_f64();
    plant_dead(
        &b,
        &[
            (now() - timeout - 60.0, "ancient"),
            (now() - timeout + 60.0, "old"),
        ],
    )
    .await;
    let planted: Vec<String> = b
        .broker
        .set_range(SortedSet::Dead, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(planted, ["ancient", "old", "first"], "planted beside it");
    // The next death trims what is older than 180 days, and only that.
    bury_in(&b, ORDERED, vec!["fresh".into()]).await;
    let kept: Vec<String> = b
        .broker
        .set_range(SortedSet::Dead, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(kept, ["old", "first", "fresh"]);
}

/// Writes `entries` (score, payload) into the dead set as they are, dated as given: on
/// Redis with `ZADD`, on a cluster into the dead set of the shard that holds the dead set's
/// entries already, on PostgreSQL with an `INSERT`, in memory through the broker's own set.
async fn plant_dead(b: &Backend, entries: &[(f64, &str)]) {
    if let Some(memory) = &b.memory {
        for (score, payload) in entries {
            memory.insert_scored(
                SortedSet::Dead,
                std::time::UNIX_EPOCH + Duration::from_secs_f64(*score),
                payload,
            );
        }
        return;
    }
    if let Some(pg) = &b.pg {
        let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
        for (score, payload) in entries {
            sqlx::query(
                "INSERT INTO jobqueue_sets (set, score, digest, payload)
                 VALUES ('d', $1, sha256(convert_to($2, 'UTF8')), $2)",
            )
            .bind(score)
            .bind(payload)
            .execute(&pool)
            .await
            .unwrap();
        }
        return;
    }
    let mut targets = Vec::new();
    if let Some(server) = &b.server {
        targets.push((server.url(), "dead".to_owned()));
    }
    if let Some(cluster) = &b.cluster {
        for (port, _) in cluster.masters() {
            let url = format!("redis://127.0.0.1:{port}/");
            let client = ::redis::Client::open(url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg("*dead")
                .query_async(&mut conn)
                .await
                .unwrap();
            targets.extend(keys.into_iter().map(|key| (url.clone(), key)));
        }
        assert_eq!(targets.len(), 1, "one shard holds the deaths: {targets:?}");
    }
    for (url, key) in targets {
        let client = ::redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for (score, payload) in entries {
            ::redis::cmd("ZADD")
                .arg(&key)
                .arg(*score)
                .arg(*payload)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
    }
}

async fn health_follows_the_heartbeat_and_the_state(b: Backend) {
    let h = start(b.worker().register::<Note>());
    eventually(LIMIT, "ready", || async { h.handle.health().ready }).await;
    let health = h.handle.health();
    assert!(health.live && health.broker_reachable, "{health:?}");
    assert!(health.last_beat.is_some());
    h.handle.quiet();
    let health = h.handle.health();
    assert!(
        health.live && !health.ready,
        "quiet is alive, not ready: {health:?}"
    );
    let handle = h.handle.clone();
    h.stop().await;
    let health = handle.health();
    assert_eq!(health.state, RunState::Stopping);
    assert!(!health.ready, "{health:?}");
}

async fn operators_act_on_sets_queues_and_processes(b: Backend) {
    let t = jobs::token();
    let admin = b.admin();
    // A dead job that had failed once (retry_count 0), and a scheduled one.
    let mut dead = Envelope::new(
        "Note",
        "default",
        jobqueue::envelope::encode_args(&Note::new(&t, "dead")).unwrap(),
    );
    dead.record_failure("E", "boom");
    bury(&b, vec![dead.to_json()]).await;
    let later = b
        .client()
        .enqueue_in(Duration::from_secs(3600), &Note::new(&t, "later"))
        .await
        .unwrap();
    let other = b
        .client()
        .enqueue_in(Duration::from_secs(3600), &Note::new(&t, "other"))
        .await
        .unwrap();

    // Run the dead job now: it is back in its queue, its retry_count lowered as Sidekiq does.
    let entry = admin
        .find(SortedSet::Dead, &dead.jid, None)
        .await
        .unwrap()
        .expect("in the dead set");
    assert!(entry.matches(Some("Note"), Some("default"), Some("boo")));
    assert!(!entry.matches(Some("Other"), None, None));
    assert!(admin.run_now(SortedSet::Dead, &entry).await.unwrap());
    assert!(
        !admin.run_now(SortedSet::Dead, &entry).await.unwrap(),
        "only once"
    );
    let queued =
        Envelope::parse(&b.broker.queue_oldest("default").await.unwrap().unwrap()).unwrap();
    assert_eq!(
        (queued.jid.as_str(), queued.retry_count),
        (dead.jid.as_str(), Some(-1))
    );

    // Delete one scheduled job, kill the other.
    let entry = admin
        .find(SortedSet::Schedule, &later, None)
        .await
        .unwrap()
        .unwrap();
    assert!(admin.delete(SortedSet::Schedule, &entry).await.unwrap());
    let entry = admin
        .find(SortedSet::Schedule, &other, None)
        .await
        .unwrap()
        .unwrap();
    assert!(admin.kill(SortedSet::Schedule, &entry).await.unwrap());
    assert_eq!(admin.set_size(SortedSet::Schedule).await.unwrap(), 0);
    assert!(admin
        .find(SortedSet::Dead, &other, None)
        .await
        .unwrap()
        .is_some());

    // Clear the queue.
    assert_eq!(admin.clear("default").await.unwrap(), 1);
    assert_eq!(admin.queue("default").await.unwrap().size, 0);

    // Quiet, then stop, a running worker through the broker.
    let h = start(b.worker().register::<Note>());
    let identity = h.handle.identity().to_owned();
    admin.quiet(&identity).await.unwrap();
    eventually(LIMIT, "quiet", || async {
        h.handle.state() == RunState::Quiet
    })
    .await;
    admin.stop(&identity).await.unwrap();
    eventually(LIMIT, "stopping", || async {
        h.handle.state() == RunState::Stopping
    })
    .await;
    h.stop().await;
}

async fn periodic_schedules_are_published_with_their_next_tick(b: Backend) {
    let hourly = jobqueue::schedule::Periodic::every(
        "hourly-report",
        Duration::from_secs(3600),
        &Note::new("periodic", "hourly"),
    )
    .unwrap();
    let h = start(b.worker().periodic(hourly));
    let admin = b.admin();
    eventually(LIMIT, "the schedule was published", || async {
        !admin.periodic().await.unwrap().is_empty()
    })
    .await;
    h.stop().await;
    let published = admin.periodic().await.unwrap();
    let report = &published[0];
    assert_eq!(report["name"], "hourly-report");
    assert_eq!(report["class"], "Note");
    assert_eq!(report["queue"], "default");
    let next = report["next_tick"].as_f64().unwrap();
    assert!(next > now() && next <= now() + 3600.0, "{report}");
    assert!(
        report["schedule"].as_str().unwrap().contains("3600"),
        "{report}"
    );
}

async fn periodic_schedules_pause_resume_and_run_now(b: Backend) {
    let t = jobs::token();
    // Both tick every second; the ticker fires `a` before `b` for the same tick, and
    // their jobs share one queue, so `a`'s job would run before `b`'s.
    let every = |name: &str| {
        jobqueue::schedule::Periodic::every(name, Duration::from_secs(1), &Note::new(&t, name))
            .unwrap()
    };
    let admin = b.admin();
    admin.pause_periodic("a", None).await.unwrap();
    let h = start(
        b.worker()
            .register::<Note>()
            .periodic(every("a"))
            .periodic(every("b")),
    );
    eventually(LIMIT, "two ticks of b", || async {
        jobs::labels(&t).iter().filter(|l| *l == "b").count() >= 2
    })
    .await;
    assert!(
        !jobs::labels(&t).contains(&"a".to_owned()),
        "a paused schedule ticked"
    );
    let listed = admin.periodic().await.unwrap();
    let a = listed.iter().find(|s| s["name"] == "a").unwrap();
    let b_listed = listed.iter().find(|s| s["name"] == "b").unwrap();
    assert_eq!(
        (a["paused"].as_bool(), a["last_tick"].is_null()),
        (Some(true), true),
        "{a}"
    );
    assert_eq!(b_listed["paused"], false);
    assert!(
        b_listed["last_tick"].as_f64().unwrap() > now() - 60.0,
        "{b_listed}"
    );
    assert_eq!(
        b_listed["next_ticks"].as_array().unwrap().len(),
        5,
        "{b_listed}"
    );
    assert_eq!(b_listed["args"][0]["label"], "b", "{b_listed}");

    // Enqueue now runs a paused schedule's job once, by hand.
    let jid = admin
        .run_periodic("a")
        .await
        .unwrap()
        .expect("a is published");
    assert!(admin.run_periodic("nope").await.unwrap().is_none());
    eventually(LIMIT, "a ran by hand", || async {
        jobs::labels(&t).contains(&"a".to_owned())
    })
    .await;
    assert_eq!(jid.len(), 24);

    admin.resume_periodic("a").await.unwrap();
    eventually(LIMIT, "a ticks again", || async {
        jobs::labels(&t).iter().filter(|l| *l == "a").count() >= 2
    })
    .await;
    admin
        .pause_periodic("b", Some(Duration::from_secs(600)))
        .await
        .unwrap();
    let listed = admin.periodic().await.unwrap();
    let b_listed = listed.iter().find(|s| s["name"] == "b").unwrap();
    let until = b_listed["paused_until"].as_f64().unwrap();
    assert!(
        (now() + 590.0..now() + 610.0).contains(&until),
        "{b_listed}"
    );
    h.stop().await;
}

async fn a_queues_jobs_are_listed_next_first_and_deleted_by_id(b: Backend) {
    let t = jobs::token();
    let mut jids = Vec::new();
    for i in 0..5 {
        jids.push(
            b.client()
                .enqueue_to(ORDERED, &Note::new(&t, i.to_string()))
                .await
                .unwrap(),
        );
    }
    let admin = b.admin();
    let label = |job: &jobqueue::admin::QueuedJob| {
        job.job.as_ref().unwrap().args[0]["label"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first: Vec<String> = admin
        .queue_jobs(ORDERED, 0, 2)
        .await
        .unwrap()
        .iter()
        .map(label)
        .collect();
    assert_eq!(first, ["0", "1"]);
    let rest: Vec<String> = admin
        .queue_jobs(ORDERED, 3, 10)
        .await
        .unwrap()
        .iter()
        .map(label)
        .collect();
    assert_eq!(rest, ["3", "4"]);
    assert!(admin.queue_jobs(ORDERED, 5, 10).await.unwrap().is_empty());
    assert!(admin.queue_jobs("nowhere", 0, 10).await.unwrap().is_empty());

    assert!(admin.delete_queued(ORDERED, &jids[1]).await.unwrap());
    assert!(
        !admin.delete_queued(ORDERED, &jids[1]).await.unwrap(),
        "only once"
    );
    let left: Vec<String> = admin
        .queue_jobs(ORDERED, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(label)
        .collect();
    assert_eq!(left, ["0", "2", "3", "4"]);
}

async fn processes_show_memory_running_jobs_and_class_figures(b: Backend) {
    let t = jobs::token();
    let h = start(b.worker().register::<Sleeps>());
    b.client()
        .enqueue(&Sleeps {
            token: t.clone(),
            millis: 1_500,
        })
        .await
        .unwrap();
    let admin = b.admin();
    eventually(LIMIT, "the heartbeat lists the running job", || async {
        admin
            .processes()
            .await
            .unwrap()
            .iter()
            .any(|p| !p.running.is_empty())
    })
    .await;
    let process = admin.processes().await.unwrap().remove(0);
    assert!(process.rss_kb > 0);
    let running = &process.running[0];
    assert_eq!(running.queue, "default");
    let job = Envelope::parse(&running.payload).unwrap();
    assert_eq!(job.class, "Sleeps");

    eventually(LIMIT, "the class figures include the run", || async {
        admin
            .classes()
            .await
            .unwrap()
            .iter()
            .any(|c| c.class == "Sleeps" && c.total_runs == 1)
    })
    .await;
    let sleeps = admin.classes().await.unwrap().remove(0);
    assert_eq!((sleeps.runs_per_minute, sleeps.failed_per_minute), (1, 0));
    assert!(
        sleeps.p50 >= Duration::from_millis(1_500) && sleeps.p50 <= sleeps.max,
        "{sleeps:?}"
    );
    assert!(admin.processes().await.unwrap()[0].running.is_empty());
    h.stop().await;
    assert!(
        admin.classes().await.unwrap().is_empty(),
        "figures leave with their process"
    );
}

/// Step `n` of 3: records itself, declares step `n + 1`, and fails its first run when
/// `fail_first` (after declaring), so that run must push nothing.
#[derive(serde::Serialize, serde::Deserialize, Job)]
#[job(queue = "steps", idempotent)]
struct Step {
    token: String,
    n: u64,
    fail_first: bool,
}

#[jobqueue::async_trait]
impl jobqueue::Perform for Step {
    async fn perform(&self, ctx: &jobqueue::JobContext) -> Result<(), jobqueue::JobError> {
        jobs::record(&self.token, format!("step {} {}", self.n, ctx.jid));
        if self.n < 3 {
            ctx.then(&Step {
                token: self.token.clone(),
                n: self.n + 1,
                fail_first: self.fail_first,
            })
            .map_err(|e| jobqueue::JobError::new(e.to_string()))?;
        }
        if self.fail_first && ctx.retries == 0 {
            return Err(jobqueue::JobError::new("first run fails"));
        }
        Ok(())
    }

    fn retry_in(&self, _: u32, _: &jobqueue::JobError) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

async fn follow_ups_are_pushed_with_the_ack_of_a_run_that_succeeds(b: Backend) {
    let t = jobs::token();
    let h = start(b.worker().register::<Step>());
    b.client()
        .enqueue(&Step {
            token: t.clone(),
            n: 1,
            fail_first: true,
        })
        .await
        .unwrap();
    eventually(LIMIT, "the third step ran", || async {
        jobs::labels(&t)
            .iter()
            .filter(|l| l.starts_with("step 3"))
            .count()
            == 2
    })
    .await;
    h.stop().await;
    // Each step's first run fails after declaring the next: only its retry pushed it, so
    // every step ran exactly twice (once failing, once succeeding), never more.
    let labels = jobs::labels(&t);
    for n in 1..=3 {
        let runs: Vec<&String> = labels
            .iter()
            .filter(|l| l.starts_with(&format!("step {n} ")))
            .collect();
        assert_eq!(runs.len(), 2, "step {n}: {labels:?}");
        assert_eq!(runs[0], runs[1], "the retry is the same job");
    }
    // A follow-up's job id is the same on every run of its parent.
    let jid = |n: u64| {
        labels
            .iter()
            .find(|l| l.starts_with(&format!("step {n} ")))
            .unwrap()[7..]
            .to_owned()
    };
    assert_ne!(jid(1), jid(2));
    assert_eq!(b.admin().queue("steps").await.unwrap().size, 0);
}

async fn ack_then_pushes_once_and_only_if_the_job_was_still_held(b: Backend) {
    let t = jobs::token();
    b.client()
        .enqueue_to("held", &Note::new(&t, "parent"))
        .await
        .unwrap();
    let taken = b
        .broker
        .fetch(
            "p1",
            support::request(
                &["held".to_owned()],
                1,
                Some(std::time::Duration::from_secs(60)),
                false,
            ),
        )
        .await
        .unwrap()
        .remove(0);
    let then = [
        Push {
            queue: "next".into(),
            payload: Envelope::new("Note", "next", vec![]).to_json(),
            at: None,
        },
        Push {
            queue: "next".into(),
            payload: Envelope::new("Note", "next", vec![]).to_json(),
            at: Some(std::time::SystemTime::now() + Duration::from_secs(3600)),
        },
    ];
    let done = [jobqueue::backend::Move::done(taken.payload.clone()).then(then.to_vec())];
    let from = jobqueue::backend::Source::InFlight("p1");
    assert_eq!(b.broker.settle(from, &done).await.unwrap(), [true]);
    // A repeat (as after a lost reply) finds the job gone and pushes nothing.
    assert_eq!(b.broker.settle(from, &done).await.unwrap(), [false]);
    assert_eq!(b.admin().queue("next").await.unwrap().size, 1);
    assert_eq!(b.admin().set_size(SortedSet::Schedule).await.unwrap(), 1);
    assert!(b.broker.in_flight("p1").await.unwrap().is_empty());
    assert!(b
        .admin()
        .queues()
        .await
        .unwrap()
        .iter()
        .any(|q| q.name == "next"));
}

/// A process's acknowledgements that come after another process recovered one of its jobs
/// (as from a worker stalled past its heartbeat) find that job gone and leave it in the
/// queue it went back to; the job the process still held goes.
async fn a_late_acknowledgement_leaves_a_recovered_job_alone(b: Backend) {
    let t = jobs::token();
    for label in ["recovered", "held"] {
        b.client()
            .enqueue_to("late", &Note::new(&t, label))
            .await
            .unwrap();
    }
    let taken = b
        .broker
        .fetch(
            "p1",
            support::request(
                &["late".to_owned()],
                2,
                // Without limits: the fetch a worker without limited classes makes.
                None,
                false,
            ),
        )
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    let from = jobqueue::backend::Source::InFlight("p1");
    let recovered = taken[0].payload.clone();
    let back = jobqueue::backend::Move::new(
        recovered.clone(),
        jobqueue::backend::Settle::Queue {
            queue: "late".into(),
            payload: recovered.clone(),
            front: true,
        },
    );
    let other = b.another_broker().await;
    assert_eq!(other.settle(from, &[back]).await.unwrap(), [true]);
    let done: Vec<_> = taken
        .iter()
        .map(|job| jobqueue::backend::Move::done(job.payload.clone()))
        .collect();
    assert_eq!(b.broker.settle(from, &done).await.unwrap(), [false, true]);
    assert!(b.broker.in_flight("p1").await.unwrap().is_empty());
    let waiting = b
        .broker
        .range(
            jobqueue::backend::Location::Queue("late"),
            jobqueue::backend::Span::Page {
                offset: 0,
                count: 10,
            },
        )
        .await
        .unwrap();
    let waiting: Vec<&str> = waiting.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(waiting, [recovered.as_str()]);
}

/// Records `label` under `token` when dropped: at the end of a run, or when the run's
/// future is dropped mid-way.
struct RecordOnDrop(String, &'static str);

impl Drop for RecordOnDrop {
    fn drop(&mut self) {
        jobs::record(&self.0, self.1);
    }
}

/// Runs until cancelled: a cooperative one watches its context and stops with an error
/// (which must not count as a failure); the other ignores it, would finish after three
/// seconds, and is dropped before. Either records when its run ends, finished or dropped.
#[derive(serde::Serialize, serde::Deserialize, Job)]
#[job(queue = "long", idempotent)]
struct Cancellable {
    token: String,
    cooperative: bool,
}

#[jobqueue::async_trait]
impl jobqueue::Perform for Cancellable {
    async fn perform(&self, ctx: &jobqueue::JobContext) -> Result<(), jobqueue::JobError> {
        jobs::record(&self.token, format!("started {}", self.cooperative));
        let _ended = RecordOnDrop(
            self.token.clone(),
            if self.cooperative {
                "cooperative run ended"
            } else {
                "ignoring run ended"
            },
        );
        if self.cooperative {
            ctx.cancelled().await;
            assert!(ctx.is_cancelled());
            jobs::record(&self.token, "saw the cancellation");
            return Err(jobqueue::JobError::new("stopped on request"));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        jobs::record(&self.token, "finished");
        Ok(())
    }
}

async fn cancel_removes_waiting_jobs_and_stops_running_ones(b: Backend) {
    use jobqueue::admin::Cancelled;
    let t = jobs::token();
    let admin = b.admin();
    let parked = b
        .client()
        .enqueue_to("parked", &Note::new(&t, "parked"))
        .await
        .unwrap();
    let later = b
        .client()
        .enqueue_in(Duration::from_secs(3600), &Note::new(&t, "later"))
        .await
        .unwrap();
    assert_eq!(
        admin.cancel(&parked).await.unwrap(),
        Cancelled::Removed {
            from: "parked".into()
        }
    );
    assert_eq!(
        admin.cancel(&later).await.unwrap(),
        Cancelled::Removed {
            from: "scheduled".into()
        }
    );
    assert_eq!(admin.queue("parked").await.unwrap().size, 0);
    assert_eq!(admin.set_size(SortedSet::Schedule).await.unwrap(), 0);
    assert_eq!(
        admin.cancel("0123456789abcdef01234567").await.unwrap(),
        Cancelled::Marked
    );

    let h = start(
        b.worker()
            .register::<Cancellable>()
            .configure(|c| c.cancel_grace = Duration::from_millis(200)),
    );
    let mut running = Vec::new();
    for cooperative in [true, false] {
        let job = Cancellable {
            token: t.clone(),
            cooperative,
        };
        running.push(b.client().enqueue(&job).await.unwrap());
    }
    eventually(LIMIT, "both run and show in the heartbeat", || async {
        let shown: usize = admin
            .processes()
            .await
            .unwrap()
            .iter()
            .map(|p| p.running.len())
            .sum();
        shown == 2
    })
    .await;
    for jid in &running {
        assert_eq!(admin.cancel(jid).await.unwrap(), Cancelled::Signalled);
    }
    eventually(LIMIT, "both ended as cancelled", || async {
        admin.stats().await.unwrap().cancelled == 2
    })
    .await;
    eventually(LIMIT, "the job that ignores its context ended", || async {
        jobs::labels(&t).contains(&"ignoring run ended".to_owned())
    })
    .await;
    let labels = jobs::labels(&t);
    assert!(
        labels.contains(&"saw the cancellation".to_owned()),
        "{labels:?}"
    );
    // Had it not been dropped after the grace, it would have finished first (its run ends
    // after three seconds, with `finished`).
    assert!(
        !labels.contains(&"finished".to_owned()),
        "the job that ignores its context was not stopped: {labels:?}"
    );
    let stats = admin.stats().await.unwrap();
    assert_eq!(stats.failed, 0, "a cancelled run is not a failure");
    assert_eq!(admin.set_size(SortedSet::Retry).await.unwrap(), 0);
    assert_eq!(admin.set_size(SortedSet::Dead).await.unwrap(), 0);
    assert_eq!(admin.queue("long").await.unwrap().size, 0);
    assert!(b
        .broker
        .in_flight(h.handle.identity())
        .await
        .unwrap()
        .is_empty());
    h.stop().await;
    assert_eq!(
        jobs::labels(&t)
            .iter()
            .filter(|l| l.starts_with("started"))
            .count(),
        2,
        "not retried"
    );
}

/// A job of a batch: fails when `fail` (not idempotent: it dies), and adds `adds` more
/// members to its batch.
#[derive(serde::Serialize, serde::Deserialize, Job, Clone)]
#[job(queue = "members")]
struct Member {
    token: String,
    fail: bool,
    adds: u64,
}

#[jobqueue::async_trait]
impl jobqueue::Perform for Member {
    async fn perform(&self, ctx: &jobqueue::JobContext) -> Result<(), jobqueue::JobError> {
        for _ in 0..self.adds {
            let member = Member {
                token: self.token.clone(),
                fail: false,
                adds: 0,
            };
            ctx.enqueue_in_batch(&member)
                .await
                .map_err(|e| jobqueue::JobError::new(e.to_string()))?;
        }
        jobs::record(&self.token, "member");
        if self.fail {
            return Err(jobqueue::JobError::new("this member fails"));
        }
        Ok(())
    }
}

/// A batch callback: records its label.
#[derive(serde::Serialize, serde::Deserialize, Job)]
#[job(queue = "callbacks")]
struct Finished {
    token: String,
    label: String,
}

#[jobqueue::async_trait]
impl jobqueue::Perform for Finished {
    async fn perform(&self, _: &jobqueue::JobContext) -> Result<(), jobqueue::JobError> {
        jobs::record(&self.token, self.label.clone());
        Ok(())
    }
}

async fn batch_callbacks_run_once_when_every_job_has_finished(b: Backend) {
    use jobqueue::client::Batch;
    let t = jobs::token();
    let client = b.client();
    let callback = |label: &str| Finished {
        token: t.clone(),
        label: label.to_owned(),
    };
    let member = |fail, adds| Member {
        token: t.clone(),
        fail,
        adds,
    };
    let mut bids = Vec::new();
    let mut members_of = Vec::new();
    // All succeed; one member dies; one member adds two more to its batch.
    for (name, members) in [
        ("all", vec![member(false, 0); 5]),
        (
            "one dies",
            vec![member(false, 0), member(true, 0), member(false, 0)],
        ),
        ("nested", vec![member(false, 2)]),
    ] {
        let batch = Batch::new(name)
            .on_complete(&callback(&format!("{name}: complete")))
            .unwrap()
            .on_success(&callback(&format!("{name}: success")))
            .unwrap();
        let jids = client.enqueue_batch(&batch, &members).await.unwrap();
        members_of.push(
            jids.into_iter()
                .map(Option::unwrap)
                .collect::<Vec<String>>(),
        );
        bids.push(batch.id().to_owned());
    }
    let status = client.batch_status(&bids[0]).await.unwrap().unwrap();
    assert_eq!(
        (status.total, status.pending, status.finished),
        (5, 5, false)
    );
    assert_eq!(status.description, "all");

    let h = start(
        b.worker()
            .queues(Queues::strict(["members", "callbacks"]))
            .register::<Member>()
            .register::<Finished>(),
    );
    eventually(LIMIT, "every batch completed", || async {
        let labels = jobs::labels(&t);
        labels.iter().filter(|l| l.ends_with(": complete")).count() == 3
            && labels.iter().filter(|l| l.ends_with(": success")).count() == 2
    })
    .await;
    h.stop().await;
    let labels = jobs::labels(&t);
    for label in [
        "all: complete",
        "all: success",
        "one dies: complete",
        "nested: complete",
        "nested: success",
    ] {
        assert_eq!(
            labels.iter().filter(|l| *l == label).count(),
            1,
            "{label}: {labels:?}"
        );
    }
    assert!(
        !labels.contains(&"one dies: success".to_owned()),
        "{labels:?}"
    );
    assert_eq!(b.admin().queue("callbacks").await.unwrap().size, 0);
    assert_eq!(labels.iter().filter(|l| *l == "member").count(), 5 + 3 + 3);

    let status = |bid: &str| {
        let client = client.clone();
        let bid = bid.to_owned();
        async move { client.batch_status(&bid).await.unwrap().unwrap() }
    };
    let all = status(&bids[0]).await;
    assert_eq!(
        (
            all.total,
            all.pending,
            all.succeeded,
            all.failed,
            all.finished
        ),
        (5, 0, 5, 0, true)
    );
    let one_dies = status(&bids[1]).await;
    assert_eq!((one_dies.succeeded, one_dies.failed), (2, 1));
    let nested = status(&bids[2]).await;
    assert_eq!((nested.total, nested.succeeded), (3, 3));
    // Done again (a job run twice after a crash) counts nothing and pushes nothing, whether
    // the repeat succeeded or failed.
    let counts = |s: jobqueue::backend::BatchStatus| (s.total, s.pending, s.succeeded, s.failed);
    for member in members_of[0].iter().chain(&members_of[1]) {
        for succeeded in [true, false] {
            for bid in &bids[..2] {
                let before = counts(status(bid).await);
                assert!(
                    !b.broker.batch_done(bid, member, succeeded).await.unwrap(),
                    "{member} done again in {bid}"
                );
                assert_eq!(counts(status(bid).await), before, "{member} in {bid}");
            }
        }
    }
    // A job that is not a member counts nothing either.
    assert!(!b
        .broker
        .batch_done(&bids[0], "0123456789abcdef01234567", true)
        .await
        .unwrap());
    assert_eq!(counts(status(&bids[0]).await), (5, 0, 5, 0));
    // The worker has stopped: a callback pushed again would wait in its queue.
    assert_eq!(b.admin().queue("callbacks").await.unwrap().size, 0);
    // A finished batch lingers a day, not the month an unfinished one is kept.
    if let Some(server) = &b.server {
        let mut redis = ::redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for bid in &bids {
            let ttl: i64 = ::redis::cmd("TTL")
                .arg(format!("jobqueue:batch:{bid}"))
                .query_async(&mut redis)
                .await
                .unwrap();
            let linger = jobqueue::backend::BATCH_LINGER.as_secs() as i64;
            assert!(ttl > 0 && ttl <= linger, "{bid}: TTL {ttl}");
        }
    }
}

/// Walks items `0..to`, 30 ms each, stopping after 50 ms of a run to resume later.
#[derive(serde::Serialize, serde::Deserialize, Job)]
#[job(queue = "walks", idempotent)]
struct Walk {
    token: String,
    to: u64,
}

#[jobqueue::async_trait]
impl jobqueue::iterate::Iterate for Walk {
    type Cursor = u64;

    async fn step(
        &self,
        next: Option<u64>,
        _: &jobqueue::JobContext,
    ) -> Result<Option<u64>, jobqueue::JobError> {
        let item = next.unwrap_or(0);
        if item >= self.to {
            return Ok(None);
        }
        jobs::record(&self.token, format!("item {item}"));
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok(Some(item + 1))
    }

    fn run_for(&self) -> Duration {
        Duration::from_millis(50)
    }
}

#[jobqueue::async_trait]
impl jobqueue::Perform for Walk {
    async fn perform(&self, ctx: &jobqueue::JobContext) -> Result<(), jobqueue::JobError> {
        jobs::record(&self.token, "run");
        jobqueue::iterate::run(self, ctx).await
    }
}

async fn an_iterating_job_stops_at_its_time_limit_and_resumes_from_its_checkpoint(b: Backend) {
    let t = jobs::token();
    let h = start(
        b.worker()
            .register::<Walk>()
            .configure(|c| c.poll_interval = Duration::from_millis(50)),
    );
    let jid = b
        .client()
        .enqueue(&Walk {
            token: t.clone(),
            to: 8,
        })
        .await
        .unwrap();
    let admin = b.admin();
    eventually(LIMIT, "progress visible mid-way", || async {
        admin
            .iteration(&jid)
            .await
            .unwrap()
            .is_some_and(|p| p.done >= 2)
    })
    .await;
    eventually(LIMIT, "every item done", || async {
        jobs::labels(&t).contains(&"item 7".to_owned())
    })
    .await;
    eventually(LIMIT, "the checkpoint removed", || async {
        admin.iteration(&jid).await.unwrap().is_none()
    })
    .await;
    h.stop().await;
    let labels = jobs::labels(&t);
    for item in 0..8 {
        let n = labels
            .iter()
            .filter(|l| **l == format!("item {item}"))
            .count();
        assert_eq!(n, 1, "item {item}: {labels:?}");
    }
    let runs = labels.iter().filter(|l| *l == "run").count();
    assert!(runs >= 3, "it should have stopped and resumed: {labels:?}");
    // Resumed as the same job: nothing failed, nothing left anywhere.
    assert_eq!(admin.set_size(SortedSet::Retry).await.unwrap(), 0);
    assert_eq!(admin.set_size(SortedSet::Schedule).await.unwrap(), 0);
}

/// Like `Walk`, with no time limit of its own.
#[derive(serde::Serialize, serde::Deserialize, Job)]
#[job(queue = "walks", idempotent, bulk)]
struct LongWalk {
    token: String,
    to: u64,
}

#[jobqueue::async_trait]
impl jobqueue::iterate::Iterate for LongWalk {
    type Cursor = u64;

    async fn step(
        &self,
        next: Option<u64>,
        _: &jobqueue::JobContext,
    ) -> Result<Option<u64>, jobqueue::JobError> {
        let item = next.unwrap_or(0);
        if item >= self.to {
            return Ok(None);
        }
        jobs::record(&self.token, format!("item {item}"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(Some(item + 1))
    }
}

#[jobqueue::async_trait]
impl jobqueue::Perform for LongWalk {
    async fn perform(&self, ctx: &jobqueue::JobContext) -> Result<(), jobqueue::JobError> {
        jobs::record(&self.token, "run");
        jobqueue::iterate::run(self, ctx).await
    }
}

async fn an_iterating_job_stops_at_shutdown_and_another_worker_resumes_it(b: Backend) {
    let t = jobs::token();
    let admin = b.admin();
    let first = start(b.worker().register::<LongWalk>());
    let jid = b
        .client()
        .enqueue(&LongWalk {
            token: t.clone(),
            to: 30,
        })
        .await
        .unwrap();
    eventually(LIMIT, "some items done", || async {
        admin
            .iteration(&jid)
            .await
            .unwrap()
            .is_some_and(|p| p.done >= 3)
    })
    .await;
    // A graceful shutdown: the run stops after its current item and waits scheduled.
    first.stop().await;
    let stopped_at = admin.iteration(&jid).await.unwrap().unwrap().done;
    assert!(stopped_at < 30, "stopped mid-way at {stopped_at}");
    assert_eq!(admin.set_size(SortedSet::Schedule).await.unwrap(), 1);

    let second = start(
        b.worker()
            .register::<LongWalk>()
            .configure(|c| c.poll_interval = Duration::from_millis(50)),
    );
    eventually(LIMIT, "the rest done by the next worker", || async {
        admin.iteration(&jid).await.unwrap().is_none()
            && jobs::labels(&t).contains(&"item 29".to_owned())
    })
    .await;
    second.stop().await;
    let labels = jobs::labels(&t);
    for item in 0..30 {
        let n = labels
            .iter()
            .filter(|l| **l == format!("item {item}"))
            .count();
        assert_eq!(n, 1, "item {item}: {labels:?}");
    }
    assert_eq!(
        labels.iter().filter(|l| *l == "run").count(),
        2,
        "{labels:?}"
    );
}

/// Declares a follow-up, holds a uniqueness lock (`lock`), then runs until cancelled: a
/// cooperative one waits for its cancellation and returns success, which a cancelled run
/// must not turn into an acknowledgement that pushes the follow-up; the other ignores it
/// and is dropped after the grace (it would finish after three seconds).
macro_rules! locked_with_follow_up {
    ($name:ident, $lock:literal, $cooperative:literal) => {
        #[derive(serde::Serialize, serde::Deserialize, Job, Clone)]
        #[job(queue = "long", idempotent, unique(lock = $lock, key = "token"))]
        struct $name {
            token: String,
        }

        #[jobqueue::async_trait]
        impl jobqueue::Perform for $name {
            async fn perform(&self, ctx: &jobqueue::JobContext) -> Result<(), jobqueue::JobError> {
                ctx.then(&QueuedNote {
                    token: self.token.clone(),
                    label: "follow-up".into(),
                })?;
                jobs::record(&self.token, "started");
                if $cooperative {
                    ctx.cancelled().await;
                    jobs::record(&self.token, "saw the cancellation");
                } else {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    jobs::record(&self.token, "finished");
                }
                Ok(())
            }
        }
    };
}

locked_with_follow_up!(LockedUntilDone, "until_executed", true);
locked_with_follow_up!(LockedWhileRunning, "while_executing", false);

/// The envelope of `job` as a client would write it, for its lock keys.
fn envelope_of<J: Job>(job: &J) -> Envelope {
    Envelope::new(
        J::NAME,
        J::OPTIONS.queue,
        jobqueue::envelope::encode_args(job).unwrap(),
    )
}

async fn a_cancelled_run_pushes_no_follow_up_and_releases_its_locks(b: Backend) {
    let t = jobs::token();
    let admin = b.admin();
    let until_done = LockedUntilDone { token: t.clone() };
    let while_running = LockedWhileRunning { token: t.clone() };
    let running_key = LockedWhileRunning::OPTIONS
        .unique
        .unwrap()
        .running_key(&envelope_of(&while_running));
    let h = start(
        b.worker()
            .queues(Queues::strict(["long"]))
            .register::<LockedUntilDone>()
            .register::<LockedWhileRunning>()
            .configure(|c| c.cancel_grace = Duration::from_millis(200)),
    );
    let jids = [
        b.client().enqueue(&until_done).await.unwrap(),
        b.client().enqueue(&while_running).await.unwrap(),
    ];
    eventually(LIMIT, "both run and show in the heartbeat", || async {
        let shown: usize = admin
            .processes()
            .await
            .unwrap()
            .iter()
            .map(|p| p.running.len())
            .sum();
        shown == 2
    })
    .await;
    // Both hold their locks while they run.
    assert!(
        matches!(
            b.client().enqueue(&until_done).await,
            Err(jobqueue::Error::Skipped { .. })
        ),
        "the queued lock is held"
    );
    assert_eq!(
        b.broker.lock_holder(&running_key).await.unwrap().as_deref(),
        Some(jids[1].as_str()),
        "the running lock is held"
    );
    for jid in &jids {
        assert_eq!(
            admin.cancel(jid).await.unwrap(),
            jobqueue::admin::Cancelled::Signalled
        );
    }
    eventually(LIMIT, "both ended as cancelled", || async {
        admin.stats().await.unwrap().cancelled == 2
    })
    .await;
    eventually(LIMIT, "both left the in-flight list", || async {
        b.broker
            .in_flight(h.handle.identity())
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    h.stop().await;
    let mut labels = jobs::labels(&t);
    labels.sort();
    assert_eq!(labels, ["saw the cancellation", "started", "started"]);
    assert_eq!(
        admin.queue("default").await.unwrap().size,
        0,
        "no follow-up pushed"
    );
    assert_eq!(admin.set_size(SortedSet::Schedule).await.unwrap(), 0);
    assert_eq!(b.broker.lock_holder(&running_key).await.unwrap(), None);
    b.client()
        .enqueue(&until_done)
        .await
        .expect("the queued lock was released");
    let stats = admin.stats().await.unwrap();
    assert_eq!((stats.failed, stats.processed), (0, 2));
}

/// Holds the only slot of its worker until its token has an `open` label.
#[derive(serde::Serialize, serde::Deserialize, Job)]
#[job(queue = "long")]
struct Blocker {
    token: String,
}

#[jobqueue::async_trait]
impl jobqueue::Perform for Blocker {
    async fn perform(&self, _: &jobqueue::JobContext) -> Result<(), jobqueue::JobError> {
        jobs::record(&self.token, "blocking");
        while !jobs::labels(&self.token).iter().any(|l| l == "open") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

async fn a_job_cancelled_before_it_starts_never_runs_its_body(b: Backend) {
    let (gate, t) = (jobs::token(), jobs::token());
    let admin = b.admin();
    let h = start(
        b.worker()
            .queues(Queues::strict(["long"]))
            .concurrency(1)
            .register::<Blocker>()
            .register::<Cancellable>()
            .configure(|c| c.cancel_grace = Duration::from_millis(200)),
    );
    b.client()
        .enqueue(&Blocker {
            token: gate.clone(),
        })
        .await
        .unwrap();
    eventually(LIMIT, "the blocker holds the only slot", || async {
        jobs::labels(&gate) == ["blocking"]
    })
    .await;
    let jid = b
        .client()
        .enqueue(&Cancellable {
            token: t.clone(),
            cooperative: true,
        })
        .await
        .unwrap();
    // Taken into the worker's buffer, behind the blocker: between its queue and its run.
    let identity = h.handle.identity().to_owned();
    eventually(LIMIT, "the job was fetched", || async {
        b.broker.in_flight(&identity).await.unwrap().len() == 2
    })
    .await;
    assert_eq!(admin.queue("long").await.unwrap().size, 0);
    assert_eq!(
        admin.cancel(&jid).await.unwrap(),
        jobqueue::admin::Cancelled::Marked,
        "neither waiting nor running"
    );
    jobs::record(&gate, "open");
    eventually(LIMIT, "the job ended as cancelled", || async {
        admin.stats().await.unwrap().cancelled == 1
    })
    .await;
    eventually(LIMIT, "both left the in-flight list", || async {
        b.broker.in_flight(&identity).await.unwrap().is_empty()
    })
    .await;
    h.stop().await;
    let stats = admin.stats().await.unwrap();
    assert_eq!((stats.failed, stats.processed), (0, 2));
    assert_eq!(admin.set_size(SortedSet::Retry).await.unwrap(), 0);
    assert_eq!(admin.set_size(SortedSet::Dead).await.unwrap(), 0);
    assert_eq!(
        jobs::labels(&t),
        Vec::<String>::new(),
        "the body of a job cancelled before it started ran"
    );
}

async fn cancel_removes_a_job_waiting_for_its_retry(b: Backend) {
    let t = jobs::token();
    let admin = b.admin();
    let jid = b
        .client()
        .enqueue(&AlwaysFails { token: t.clone() })
        .await
        .unwrap();
    let h = start(b.worker().register::<AlwaysFails>());
    eventually(LIMIT, "the job waits in the retry set", || async {
        admin
            .find(SortedSet::Retry, &jid, None)
            .await
            .unwrap()
            .is_some()
    })
    .await;
    assert_eq!(
        admin.cancel(&jid).await.unwrap(),
        jobqueue::admin::Cancelled::Removed {
            from: "retry".into()
        }
    );
    h.stop().await;
    assert_eq!(admin.set_size(SortedSet::Retry).await.unwrap(), 0);
    assert_eq!(admin.set_size(SortedSet::Dead).await.unwrap(), 0);
    assert_eq!(admin.set_size(SortedSet::Schedule).await.unwrap(), 0);
    assert_eq!(admin.queue("default").await.unwrap().size, 0);
    assert_eq!(
        admin.cancel(&jid).await.unwrap(),
        jobqueue::admin::Cancelled::Marked,
        "gone: a second cancel finds it nowhere"
    );
    assert_eq!(jobs::labels(&t), ["ran"]);
}

/// Due jobs a process took into its in-flight list on their way from the schedule set to
/// their queues, when it died before it moved them: they are recovered and run, each
/// once, and the due jobs it had not taken yet are moved by the others, each once.
async fn due_jobs_taken_by_a_process_that_died_mid_move_run_once(b: Backend) {
    const JOBS: usize = 30;
    const DEAD: &str = "mover:1:000000000001";
    let t = jobs::token();
    let due = std::time::SystemTime::now() - Duration::from_secs(1);
    let pushes: Vec<Push> = (0..JOBS)
        .map(|i| {
            let note = Note::new(&t, i.to_string());
            let args = jobqueue::envelope::encode_args(&note).unwrap();
            Push {
                queue: "default".into(),
                payload: Envelope::new("Note", "default", args).to_json(),
                at: Some(due),
            }
        })
        .collect();
    b.broker.push(&pushes).await.unwrap();
    // A process whose heartbeat lapses in a second takes two thirds of them, as the
    // scheduler does, and dies before it moves them on.
    support::heartbeat::beat(b.broker.as_ref(), DEAD, Duration::from_secs(1)).await;
    let taken = b
        .broker
        .take_due(
            DEAD,
            SortedSet::Schedule,
            std::time::SystemTime::now(),
            20,
            None,
        )
        .await
        .unwrap();
    assert_eq!(taken.len(), 20);
    assert!(
        taken.moved.is_empty(),
        "taken, not moved: asked to move none"
    );
    assert_eq!(b.broker.in_flight(DEAD).await.unwrap().len(), 20);
    assert_eq!(
        b.admin().set_size(SortedSet::Schedule).await.unwrap(),
        JOBS - 20
    );
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);

    let h = start(b.worker().register::<Note>());
    let identity = h.handle.identity().to_owned();
    eventually(LIMIT, "every due job ran", || async {
        jobs::runs(&t).len() >= JOBS
    })
    .await;
    eventually(LIMIT, "nothing left anywhere", || async {
        b.broker.in_flight(DEAD).await.unwrap().is_empty()
            && b.broker.in_flight(&identity).await.unwrap().is_empty()
            && b.admin().queue("default").await.unwrap().size == 0
    })
    .await;
    h.stop().await;
    let mut ran: Vec<usize> = jobs::labels(&t)
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    ran.sort_unstable();
    assert_eq!(ran, (0..JOBS).collect::<Vec<_>>(), "each due job ran once");
    assert_eq!(b.admin().set_size(SortedSet::Schedule).await.unwrap(), 0);
    assert!(
        b.broker.orphans("").await.unwrap().is_empty(),
        "the dead process is forgotten"
    );
}
