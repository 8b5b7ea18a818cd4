//! Metric values after a known workload, on both brokers: counts exact, histogram counts
//! exact, sampled gauges plausible. Each backend's test runs on a runtime of its own whose
//! threads all record into a recorder of its own, so each sees only its own metrics, though
//! both use the same queue names.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::jobs::{self, ChargeCard, Flaky, Note};
use support::{eventually, start, Backend};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn memory_a_known_workload_gives_exact_counts() {
    with_own_recorder(|| async {
        a_known_workload_gives_exact_counts(Backend::memory().await).await
    });
}

#[test]
fn redis_a_known_workload_gives_exact_counts() {
    with_own_recorder(|| async {
        a_known_workload_gives_exact_counts(Backend::redis().await).await
    });
}

/// What the recorder has seen so far. Its snapshots take the values out (counters and
/// gauges back to 0, histograms emptied), so they are folded in here: counters summed,
/// gauges kept at their highest, histogram values kept.
#[derive(Clone, Debug)]
enum Seen {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

/// A test's own recorder, and what it has seen.
struct Recorded {
    snapshotter: Snapshotter,
    seen: Mutex<HashMap<String, Seen>>,
}

thread_local! {
    /// The recorder of the test running on this thread.
    static RECORDED: std::cell::Cell<Option<&'static Recorded>> = const { std::cell::Cell::new(None) };
}

/// Runs `test` on a runtime of its own, whose every thread (and this one) records into a
/// new recorder, which [`seen`] reads.
fn with_own_recorder<F, Fut>(test: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
    let recorded: &'static Recorded = Box::leak(Box::new(Recorded {
        snapshotter: recorder.snapshotter(),
        seen: Mutex::default(),
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // For the thread's whole life: the runtime's threads end with the test.
            std::mem::forget(metrics::set_default_local_recorder(recorder));
            RECORDED.set(Some(recorded));
        })
        .build()
        .expect("a runtime");
    let _here = metrics::set_default_local_recorder(recorder);
    RECORDED.set(Some(recorded));
    runtime.block_on(test());
}

/// The value of `name` with exactly these labels.
fn seen(name: &str, labels: &[(&str, &str)]) -> Option<Seen> {
    let recorded = RECORDED
        .get()
        .expect("a test running with its own recorder");
    let mut all = recorded.seen.lock().unwrap();
    for (key, _, _, value) in recorded.snapshotter.snapshot().into_vec() {
        let mut pairs: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        pairs.sort();
        let id = format!("{}{{{}}}", key.key().name(), pairs.join(","));
        let entry = all.entry(id).or_insert(match value {
            DebugValue::Counter(_) => Seen::Counter(0),
            DebugValue::Gauge(_) => Seen::Gauge(f64::MIN),
            DebugValue::Histogram(_) => Seen::Histogram(Vec::new()),
        });
        match (entry, value) {
            (Seen::Counter(total), DebugValue::Counter(n)) => *total += n,
            (Seen::Gauge(max), DebugValue::Gauge(g)) => *max = max.max(g.into_inner()),
            (Seen::Histogram(all), DebugValue::Histogram(values)) => {
                all.extend(values.into_iter().map(|v| v.into_inner()))
            }
            (entry, value) => panic!("{entry:?} changed kind: {value:?}"),
        }
    }
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    all.get(&format!("{name}{{{}}}", pairs.join(","))).cloned()
}

fn count(name: &str, labels: &[(&str, &str)]) -> u64 {
    match seen(name, labels) {
        Some(Seen::Counter(n)) => n,
        Some(Seen::Histogram(values)) => values.len() as u64,
        None => 0,
        other => panic!("{name} is not a count: {other:?}"),
    }
}

fn gauge(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match seen(name, labels) {
        Some(Seen::Gauge(g)) => Some(g),
        None => None,
        other => panic!("{name} is not a gauge: {other:?}"),
    }
}

async fn a_known_workload_gives_exact_counts(mut b: Backend) {
    // The same queues for both backends: a recorder shared with the other test would count
    // its jobs too.
    let (work, waiting) = ("work".to_owned(), "waiting".to_owned());
    let t = jobs::token();
    let client = b.client();
    for i in 0..5 {
        client
            .enqueue_to(&work, &Note::new(&t, i.to_string()))
            .await
            .unwrap();
    }
    client
        .enqueue_to(&work, &ChargeCard { token: t.clone() })
        .await
        .unwrap();
    client
        .enqueue_to(
            &work,
            &Flaky {
                token: format!("{t}-flaky"),
                failures: 1,
            },
        )
        .await
        .unwrap();
    for i in 0..3 {
        client
            .enqueue_to(&waiting, &Note::new(&t, format!("waits {i}")))
            .await
            .unwrap();
    }
    let h = start(
        b.worker()
            .queues(jobqueue::Queues::strict([work.as_str()]))
            .register::<Note>()
            .register::<ChargeCard>()
            .register::<Flaky>()
            .configure(|c| c.metrics_interval = Duration::from_millis(100)),
    );
    let q = work.as_str();
    eventually(LIMIT, "every job ended", || async {
        count(
            "jobqueue_jobs_finished_total",
            &[("queue", q), ("class", "Note"), ("outcome", "succeeded")],
        ) == 5
            && count(
                "jobqueue_jobs_finished_total",
                &[("queue", q), ("class", "Flaky"), ("outcome", "succeeded")],
            ) == 1
            && count(
                "jobqueue_jobs_finished_total",
                &[("queue", q), ("class", "ChargeCard"), ("outcome", "dead")],
            ) == 1
    })
    .await;
    eventually(LIMIT, "the waiting queue was sampled", || async {
        gauge("jobqueue_queue_size", &[("queue", waiting.as_str())]) == Some(3.0)
    })
    .await;
    eventually(LIMIT, "the dead set was sampled with its job", || async {
        gauge("jobqueue_set_size", &[("set", "dead")]) == Some(1.0)
    })
    .await;
    h.stop().await;

    let finished = |class, outcome| {
        count(
            "jobqueue_jobs_finished_total",
            &[("queue", q), ("class", class), ("outcome", outcome)],
        )
    };
    assert_eq!(finished("Flaky", "retried"), 1);
    assert_eq!(finished("Note", "retried"), 0);
    assert_eq!(finished("ChargeCard", "retried"), 0);
    let enqueued = |class| {
        count(
            "jobqueue_jobs_enqueued_total",
            &[("queue", q), ("class", class)],
        )
    };
    assert_eq!(enqueued("Note"), 5);
    assert_eq!(enqueued("ChargeCard"), 1);
    assert_eq!(enqueued("Flaky"), 1, "a retry is not an enqueue");
    let waiting_enqueued = count(
        "jobqueue_jobs_enqueued_total",
        &[("queue", waiting.as_str()), ("class", "Note")],
    );
    assert_eq!(waiting_enqueued, 3);
    let durations = |class| {
        count(
            "jobqueue_job_duration_seconds",
            &[("queue", q), ("class", class)],
        )
    };
    assert_eq!(durations("Note"), 5);
    assert_eq!(durations("Flaky"), 2);
    assert_eq!(durations("ChargeCard"), 1);
    let latency = gauge(
        "jobqueue_queue_latency_seconds",
        &[("queue", waiting.as_str())],
    )
    .expect("a latency for the waiting queue");
    assert!((0.0..600.0).contains(&latency), "{latency}");
    assert_eq!(gauge("jobqueue_concurrency", &[]), Some(4.0));
    // A Redis restart: the wake-up and tracking connections come back, and say so.
    if let Some(server) = b.server.as_mut() {
        server.restart();
        eventually(LIMIT, "both connections came back", || async {
            count(
                "jobqueue_broker_reconnects_total",
                &[("connection", "wake")],
            ) >= 1
                && count(
                    "jobqueue_broker_reconnects_total",
                    &[("connection", "tracking")],
                ) >= 1
        })
        .await;
    }
    // The flaky job's retry came due and was moved: its lateness was measured.
    match seen("jobqueue_scheduled_lateness_seconds", &[("set", "retry")]) {
        Some(Seen::Histogram(late)) => {
            assert!(!late.is_empty());
            assert!(late.iter().all(|s| (0.0..60.0).contains(s)), "{late:?}");
        }
        other => panic!("no lateness for the retry set: {other:?}"),
    }
}
