//! Call-level retries for `#[job(external)]` jobs, against a real HTTP server on loopback
//! that fails on purpose, through reqwest and the ready classifier.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobqueue::{async_trait, Client, Job, JobContext, JobError, MemoryBroker, Perform, SortedSet};
use jobqueue_middleware::external::{classify_reqwest, idempotency_key};
use jobqueue_middleware::{call, CallPolicy};
use serde::{Deserialize, Serialize};
use support::scripted_http::serve;

fn ctx() -> JobContext {
    JobContext::for_job::<Notify>(Client::new(MemoryBroker::new()))
}

fn policy() -> CallPolicy {
    CallPolicy::for_job(&Notify::OPTIONS).min_delay(Duration::from_millis(10))
}

/// POSTs to `url` with the call's idempotency key, retrying per `policy()`.
async fn notify(ctx: &JobContext, url: &str) -> Result<u16, reqwest::Error> {
    let http = reqwest::Client::new();
    call(ctx, "notify", &policy(), |attempt| {
        let request = http
            .post(url)
            .header("Idempotency-Key", attempt.idempotency_key)
            .timeout(Duration::from_secs(5));
        async move { classify_reqwest(request.send().await).map(|r| r.status().as_u16()) }
    })
    .await
}

#[tokio::test]
async fn transient_failures_are_retried_with_the_same_idempotency_key() {
    let server = serve(&[503, 502, 200]).await;
    let ctx = ctx();
    assert_eq!(notify(&ctx, &server.url).await.unwrap(), 200);
    let keys = server.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 3, "1 attempt + 2 retries");
    assert!(
        keys.iter()
            .all(|k| *k == idempotency_key(&ctx.jid, "notify")),
        "{keys:?}"
    );

    let server = serve(&[429, 200]).await;
    assert_eq!(notify(&ctx, &server.url).await.unwrap(), 200);
    assert_eq!(server.keys.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn retries_stop_after_two() {
    let server = serve(&[500]).await;
    let err = notify(&ctx(), &server.url).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(500));
    assert_eq!(server.keys.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    for status in [400, 404, 422] {
        let server = serve(&[status, 200]).await;
        let err = notify(&ctx(), &server.url).await.unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(server.keys.lock().unwrap().len(), 1, "{status} is final");
    }
}

#[tokio::test]
async fn connection_errors_are_retried() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    drop(listener); // nothing listens there now
    let attempts = Arc::new(Mutex::new(0));
    let http = reqwest::Client::new();
    let counted = attempts.clone();
    let result = call(&ctx(), "notify", &policy(), |_| {
        *counted.lock().unwrap() += 1;
        let request = http.post(&url);
        async move { classify_reqwest(request.send().await) }
    })
    .await;
    assert!(result.unwrap_err().is_connect());
    assert_eq!(*attempts.lock().unwrap(), 3);
}

/// Not idempotent, calls out: job-level retries 0, call-level 2, and a while-executing lock.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "push", external)]
struct Notify {
    url: String,
}

#[async_trait]
impl Perform for Notify {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        let status = notify(ctx, &self.url).await?;
        support::jobs::record(&self.url, status.to_string());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_job_retries_the_call_not_the_job() {
    assert_eq!(
        (
            Notify::OPTIONS.retry.job_retries,
            Notify::OPTIONS.retry.call_retries
        ),
        (0, 2)
    );
    let b = support::Backend::memory().await;
    let failing = serve(&[503]).await;
    let flaky = serve(&[503, 200]).await;
    let client = b.client();
    client
        .enqueue(&Notify {
            url: failing.url.clone(),
        })
        .await
        .unwrap();
    client
        .enqueue(&Notify {
            url: flaky.url.clone(),
        })
        .await
        .unwrap();

    let worker = b.worker().register::<Notify>().build().unwrap();
    let handle = worker.handle();
    let task = tokio::spawn(worker.run_until(std::future::pending()));
    support::eventually(Duration::from_secs(20), "one ran, one died", || async {
        !support::jobs::runs(&flaky.url).is_empty()
            && b.admin().set_size(SortedSet::Dead).await.unwrap() == 1
    })
    .await;
    handle.shutdown();
    task.await.unwrap().unwrap();

    assert_eq!(flaky.keys.lock().unwrap().len(), 2);
    assert_eq!(
        failing.keys.lock().unwrap().len(),
        3,
        "the call was tried 3 times"
    );
    let dead = b
        .admin()
        .set_entries(SortedSet::Dead, 0, 1)
        .await
        .unwrap()
        .remove(0)
        .job
        .unwrap();
    assert_eq!(dead.retry_count, Some(0), "the job itself ran once");
    assert!(dead.error_message.unwrap().contains("503"));
}
