//! Hostile payloads, pushed straight into Redis as another producer could: bytes that are
//! not UTF-8, deep nesting, numbers out of range, wrong types, missing fields, a payload
//! over the size limit. Each ends in the dead set with an error naming its problem; the
//! good job queued behind them runs; nothing is left in flight.

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::time::Duration;

use jobqueue::retry::error_class;
use jobqueue::SortedSet;
use support::jobs::{self, Note};
use support::{eventually, start, Backend};

const LIMIT: Duration = Duration::from_secs(30);

fn note(args: &str) -> String {
    format!(
        r#"{{"class":"Note","queue":"default","jid":"0123456789abcdef01234567","args":{args}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_are_dead_lettered_and_the_queue_keeps_flowing() {
    let b = Backend::redis().await;
    let url = b.server.as_ref().unwrap().url();
    let redis = redis::Client::open(url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();

    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let too_big = note(&format!(
        r#"[{{"token":"t","label":"{}"}}]"#,
        "x".repeat(2 << 20)
    ));
    let hostile: Vec<(Vec<u8>, &str)> = vec![
        (b"\xff\xfe{\"class\":\"Note\"}".to_vec(), "not UTF-8"),
        (note(&deep).into_bytes(), "recursion limit"),
        (note("[1e400]").into_bytes(), "out of range"),
        (
            note(r#"[{"token":"t","label":18446744073709551616}]"#).into_bytes(),
            "do not fit Note",
        ),
        (
            note(r#"[{"token":5,"label":[]}]"#).into_bytes(),
            "invalid type",
        ),
        (
            br#"{"class":"Note","queue":"default"}"#.to_vec(),
            "missing field",
        ),
        (b"[1,2,3]".to_vec(), "not a valid job"),
        (b"null".to_vec(), "not a valid job"),
        (too_big.into_bytes(), "over the worker's limit"),
    ];
    for (payload, _) in &hostile {
        redis::cmd("LPUSH")
            .arg("queue:default")
            .arg(payload)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    // A scheduled one too: the scheduler must get past it.
    redis::cmd("ZADD")
        .arg("schedule")
        .arg(0)
        .arg(b"\xc3\x28".as_slice())
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    redis::cmd("SADD")
        .arg("queues")
        .arg("default")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let t = jobs::token();
    b.client().enqueue(&Note::new(&t, "good")).await.unwrap();

    let w = start(b.worker().register::<Note>());
    eventually(LIMIT, "the good job ran", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    let expected = hostile.len() + 1;
    eventually(LIMIT, "every hostile payload died", || async {
        b.admin().set_size(SortedSet::Dead).await.unwrap() == expected
    })
    .await;
    let identity = w.handle.identity().to_owned();
    w.stop().await;

    let dead = b
        .admin()
        .set_entries(SortedSet::Dead, 0, 100)
        .await
        .unwrap();
    let messages: Vec<String> = dead
        .iter()
        .map(|e| {
            let job = e
                .job
                .as_ref()
                .expect("dead entries are jobs Sidekiq can read");
            let class = job.error_class.as_deref().unwrap_or_default();
            assert!(
                [
                    error_class::INVALID_PAYLOAD,
                    error_class::INVALID_ARGUMENTS,
                    error_class::PAYLOAD_TOO_LARGE
                ]
                .contains(&class),
                "{class}"
            );
            job.error_message.clone().unwrap_or_default()
        })
        .collect();
    for (_, problem) in &hostile {
        assert!(
            messages.iter().any(|m| m.contains(problem)),
            "no error names `{problem}`: {messages:#?}"
        );
    }
    assert!(
        b.broker.in_flight(&identity).await.unwrap().is_empty(),
        "nothing left in flight"
    );
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
    assert_eq!(b.admin().set_size(SortedSet::Schedule).await.unwrap(), 0);
}
