//! Every way a job enters a queue carries its own header and passes admission, and nothing
//! an argument holds can act as a header: on the in-memory broker, one Redis and a cluster.
//!
//! The header (`limits`, the collapse key, the jid) is what the backends act on without
//! parsing a job; it is written by the client and read at its own place only.

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use jobqueue::backend::Push;
use jobqueue::client::Batch;
use jobqueue::schedule::Periodic;
use jobqueue::{async_trait, Envelope, Job, JobContext, JobError, Perform, Queues, SortedSet};
use serde::{Deserialize, Serialize};
use support::jobs::{self, most_at_once, Note, ShopJob};
use support::{eventually, start, Backend};
use tokio::sync::Semaphore;

const LIMIT: Duration = Duration::from_secs(20);

on_every_broker!(
    an_argument_cannot_take_another_tenants_slots,
    limits_text_in_an_argument_neither_strands_a_job_nor_limits_it,
    an_out_of_range_limits_header_is_a_named_failure_in_the_dead_set,
    a_payload_with_sorted_keys_keeps_its_limits,
    run_now_of_a_periodic_schedule_goes_through_admission,
    a_batch_callback_goes_through_admission,
);

/// Gates that hold a [`Smuggler`] until its test releases it, by token.
static GATES: LazyLock<Mutex<HashMap<String, Arc<Semaphore>>>> = LazyLock::new(Default::default);

fn gate(token: &str) -> Arc<Semaphore> {
    let mut gates = GATES.lock().unwrap();
    Arc::clone(
        gates
            .entry(token.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(0))),
    )
}

/// A job without limits whose first fields look like a header: `"limits":"…","jid":"…"`
/// appears in its payload, inside its arguments. With `hold`, it runs until its test
/// releases it.
#[derive(Serialize, Deserialize, Job, Debug, Clone)]
#[job(queue = "default")]
struct Smuggler {
    limits: String,
    jid: String,
    token: String,
    hold: bool,
}

#[async_trait]
impl Perform for Smuggler {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        jobs::record(&self.token, "smuggler+");
        if self.hold {
            let permit = gate(&self.token).acquire_owned().await;
            drop(permit);
        }
        jobs::record(&self.token, "smuggler-");
        Ok(())
    }
}

/// A nightly job of a shop: unique while enqueued, at most one of a shop at a time, kept
/// in a queue no test worker takes from, so what admission did stays to be seen.
#[derive(Serialize, Deserialize, Job, Debug, Clone)]
#[job(
    queue = "nightly",
    idempotent,
    unique(lock = "until_executed", on_conflict = "log"),
    concurrency(limit = 1, key = "shop")
)]
struct Nightly {
    shop: String,
}

#[async_trait]
impl Perform for Nightly {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// Pushes a [`Smuggler`] as a producer that keeps its arguments' keys in the order it
/// wrote them (Ruby's hashes do): `"limits":"…","jid":"…"` first in its argument.
async fn smuggle(b: &Backend, limits: &str, jid: &str, token: &str, hold: bool) {
    let args = serde_json::json!([{"limits": limits, "jid": jid, "token": token, "hold": hold}]);
    let ordered = format!(
        r#"[{{"limits":{},"jid":{},"token":{},"hold":{hold}}}]"#,
        serde_json::json!(limits),
        serde_json::json!(jid),
        serde_json::json!(token),
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ordered).unwrap(),
        args
    );
    let mut envelope = Envelope::new("Smuggler", "default", vec!["ARGS".into()]);
    envelope.enqueued_at = Some(jobs::now());
    let payload = envelope.to_json().replace(r#"["ARGS"]"#, &ordered);
    let push = Push {
        queue: "default".into(),
        payload,
        at: None,
    };
    b.broker.push(&[push]).await.unwrap();
}

fn count(t: &str, label: &str) -> usize {
    jobs::labels(t).iter().filter(|l| *l == label).count()
}

/// Every in-flight list of the backend, by process: a test ends with them empty.
async fn in_flight_everywhere(b: &Backend) -> usize {
    let mut held = 0;
    for process in b.admin().processes().await.unwrap() {
        held += b.broker.in_flight(&process.identity).await.unwrap().len();
    }
    held
}

async fn an_argument_cannot_take_another_tenants_slots(b: Backend) {
    let t = jobs::token();
    let client = b.client();
    let h = start(
        b.worker()
            .configure(|c| c.concurrency = 4)
            .register::<Smuggler>()
            .register::<ShopJob>(),
    );
    // Two plain jobs whose arguments name shop 7's slots, each with a limit of 100.
    for _ in 0..2 {
        smuggle(&b, "c100 ShopJob:concurrency:7", "x", &t, true).await;
    }
    eventually(LIMIT, "both smugglers run", || async {
        count(&t, "smuggler+") == 2
    })
    .await;
    // While they run, shop 7's own job has both of its slots.
    client
        .enqueue(&ShopJob {
            token: t.clone(),
            shop: "7".into(),
            millis: 0,
        })
        .await
        .unwrap();
    let shop_token = t.clone();
    let ran = async move {
        eventually(LIMIT, "shop 7's job ran beside the smugglers", || async {
            count(&shop_token, "-7") == 1
        })
        .await;
    };
    let ran = tokio::spawn(ran).await;
    gate(&t).add_permits(2);
    eventually(LIMIT, "the smugglers ended", || async {
        count(&t, "smuggler-") == 2
    })
    .await;
    h.stop().await;
    assert!(
        ran.is_ok(),
        "shop 7's job waited for jobs that are not its own"
    );
    assert_eq!(count(&t, "smuggler+"), 2, "{:?}", jobs::labels(&t));
    assert!(b.admin().limits().await.unwrap().is_empty());
}

async fn limits_text_in_an_argument_neither_strands_a_job_nor_limits_it(b: Backend) {
    let t = jobs::token();
    // A rate of one start per 1e300 seconds, named in an argument: were it read, the
    // second job could never start, and reading it made Redis's fetch script fail after
    // moving the job.
    for _ in 0..2 {
        smuggle(&b, "r1/1e300 x", "p", &t, false).await;
    }
    // A process that runs a class with limits reads them at fetch.
    let h = start(b.worker().register::<Smuggler>().register::<ShopJob>());
    eventually(LIMIT, "both jobs ran", || async {
        count(&t, "smuggler-") == 2
    })
    .await;
    // Each job's acknowledgement follows its end: a stranded job stays in flight.
    eventually(LIMIT, "no job is stranded in flight", || async {
        in_flight_everywhere(&b).await == 0
    })
    .await;
    h.stop().await;
    assert!(b.admin().limits().await.unwrap().is_empty());
    assert_eq!(b.admin().set_size(SortedSet::Dead).await.unwrap(), 0);
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
}

/// A payload as another producer might write it: `fields` first, in that order, then the
/// rest of `envelope` with its keys sorted.
fn written_as(envelope: &Envelope, fields: &[(&str, serde_json::Value)]) -> String {
    let mut text = String::from("{");
    for (name, value) in fields {
        text.push_str(&format!("{}:{},", serde_json::json!(name), value));
    }
    let value = serde_json::to_value(envelope).unwrap();
    let sorted: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_value(value).unwrap();
    let rest = serde_json::to_string(&sorted).unwrap();
    text.push_str(&rest[1..]);
    text
}

async fn an_out_of_range_limits_header_is_a_named_failure_in_the_dead_set(b: Backend) {
    let t = jobs::token();
    // Headers as a producer other than this library could write them: counts and periods
    // out of range, and a period that is not a number.
    let headers = [
        "r1/1e300 x",
        "c99999999999 y",
        "r5/0 z",
        "r5/nan w",
        "c0 v",
        "c2 ",
    ];
    let mut pushes = Vec::new();
    for header in headers {
        let mut envelope = Envelope::new(
            "Note",
            "default",
            vec![serde_json::json!({"token": t, "label": header})],
        );
        envelope.limits = Some(header.to_owned());
        pushes.push(Push {
            queue: "default".into(),
            payload: envelope.to_json(),
            at: None,
        });
    }
    // One more, its header where a producer sorting its keys puts it.
    let mut sorted = Envelope::new(
        "Note",
        "default",
        vec![serde_json::json!({"token": t, "label": "sorted"})],
    );
    sorted.limits = Some("r1/1e300 u".into());
    pushes.push(Push {
        queue: "default".into(),
        payload: written_as(&sorted, &[]),
        at: None,
    });
    b.broker.push(&pushes).await.unwrap();
    let h = start(b.worker().register::<Note>());
    eventually(LIMIT, "every job in the dead set", || async {
        b.admin().set_size(SortedSet::Dead).await.unwrap() == pushes.len()
    })
    .await;
    assert_eq!(in_flight_everywhere(&b).await, 0, "a job is stranded");
    h.stop().await;
    for entry in b
        .admin()
        .set_entries(SortedSet::Dead, 0, 100)
        .await
        .unwrap()
    {
        let job = entry.job.expect("the dead job parses");
        assert_eq!(
            job.error_class.as_deref(),
            Some(jobqueue::retry::error_class::INVALID_LIMITS),
            "{job:?}"
        );
        let message = job.error_message.unwrap_or_default();
        assert!(message.contains("limits"), "{message}");
    }
    assert!(jobs::labels(&t).is_empty(), "a job with bad limits ran");
    assert!(b.admin().limits().await.unwrap().is_empty());
}

async fn a_payload_with_sorted_keys_keeps_its_limits(b: Backend) {
    let t = jobs::token();
    let mut pushes = Vec::new();
    for _ in 0..4 {
        let job = ShopJob {
            token: t.clone(),
            shop: "s".into(),
            millis: 300,
        };
        // As the client writes it, then re-written with sorted keys (Python's
        // `sort_keys`, Go's maps, `jq -S`).
        let mut envelope = Envelope::new(
            "ShopJob",
            "default",
            vec![serde_json::to_value(&job).unwrap()],
        );
        envelope.limits = Some("c2 ShopJob:concurrency:s".into());
        let payload = written_as(&envelope, &[]);
        assert!(payload.starts_with(r#"{"args":"#), "{payload}");
        pushes.push(Push {
            queue: "default".into(),
            payload,
            at: None,
        });
    }
    b.broker.push(&pushes).await.unwrap();
    let h = start(
        b.worker()
            .configure(|c| c.concurrency = 4)
            .register::<ShopJob>(),
    );
    eventually(LIMIT, "all four ran", || async { count(&t, "-s") == 4 }).await;
    h.stop().await;
    assert_eq!(most_at_once(&t, "s"), 2, "{:?}", jobs::labels(&t));
}

/// Jobs waiting in `queue`, parsed.
async fn waiting(b: &Backend, queue: &str) -> Vec<Envelope> {
    b.admin()
        .queue_jobs(queue, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.job.expect("the queued job parses"))
        .collect()
}

async fn run_now_of_a_periodic_schedule_goes_through_admission(b: Backend) {
    let admin = b.admin();
    // Paused, so that no tick enqueues it: only the hand of an operator does.
    admin.pause_periodic("nightly-7", None).await.unwrap();
    let nightly = Periodic::every(
        "nightly-7",
        Duration::from_secs(24 * 3600),
        &Nightly { shop: "7".into() },
    )
    .unwrap();
    let h = start(
        b.worker()
            .queues(Queues::strict(["default"]))
            .periodic(nightly),
    );
    eventually(LIMIT, "the schedule was published", || async {
        !admin.periodic().await.unwrap().is_empty()
    })
    .await;
    // No process is left to ask: the tool admits the job as the class's options say.
    h.stop().await;
    let first = admin.run_periodic("nightly-7").await.unwrap().unwrap();
    let second = admin.run_periodic("nightly-7").await.unwrap().unwrap();
    assert_eq!(
        second, first,
        "the unique job enqueued first stands for the second"
    );
    let queued = waiting(&b, "nightly").await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].jid, first);
    assert_eq!(
        queued[0].limits.as_deref(),
        Some("c1 Nightly:concurrency:7"),
        "{queued:?}"
    );
}

async fn a_batch_callback_goes_through_admission(b: Backend) {
    let t = jobs::token();
    let client = b.client();
    let h = start(
        b.worker()
            .queues(Queues::strict(["default"]))
            .register::<Note>(),
    );
    // The worker is running, its scheduler past its first reading of the published
    // classes, before the batches publish their callbacks' class.
    eventually(LIMIT, "the worker beat", || async {
        !b.admin().processes().await.unwrap().is_empty()
    })
    .await;
    // Two batches whose callbacks are the same unique job.
    let mut bids = Vec::new();
    for name in ["first", "second"] {
        let batch = Batch::new(name)
            .on_complete(&Nightly { shop: "7".into() })
            .unwrap();
        client
            .enqueue_batch(&batch, &[Note::new(&t, name)])
            .await
            .unwrap();
        bids.push(batch.id().to_owned());
    }
    eventually(
        LIMIT,
        "both batches finished and their callbacks were admitted",
        || async {
            let mut finished = true;
            for bid in &bids {
                let status = client.batch_status(bid).await.unwrap().unwrap();
                finished &= status.finished;
            }
            finished
                && b.admin().set_size(SortedSet::Schedule).await.unwrap() == 0
                && !waiting(&b, "nightly").await.is_empty()
        },
    )
    .await;
    h.stop().await;
    let queued = waiting(&b, "nightly").await;
    assert_eq!(queued.len(), 1, "one callback stands for both: {queued:?}");
    assert_eq!(
        queued[0].limits.as_deref(),
        Some("c1 Nightly:concurrency:7"),
        "{queued:?}"
    );
}
