//! Who may touch what: two namespaces on one Redis never see each other's jobs, locks or
//! stats; the library works as a Redis ACL user confined to its namespace's keys and
//! channels, so it touches nothing outside it; and it talks TLS (`rediss://`).

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::time::Duration;

use jobqueue::{
    async_trait, Admin, Client, Error, Job, JobContext, JobError, Perform, RedisBroker,
    RedisConfig, SortedSet, Worker,
};
use serde::{Deserialize, Serialize};
use support::jobs::{self, ChargeCard, Note};
use support::{eventually, fast_config, start, RedisServer};

const LIMIT: Duration = Duration::from_secs(20);

async fn namespaced(url: &str, namespace: &str) -> RedisBroker {
    RedisBroker::connect_with(RedisConfig::new(url).namespace(namespace))
        .await
        .expect("connect")
}

/// Unique and idempotent: fails its first run, so it passes through the retry set holding
/// its lock.
#[derive(Serialize, Deserialize, Job)]
#[job(idempotent, unique(key = "token"))]
struct LockedRetry {
    token: String,
}

#[async_trait]
impl Perform for LockedRetry {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        jobs::record(&self.token, format!("run {}", ctx.retries));
        if ctx.retries == 0 {
            return Err(JobError::new("first run fails"));
        }
        Ok(())
    }

    fn retry_in(&self, _: u32, _: &JobError) -> Option<Duration> {
        Some(Duration::from_millis(100))
    }
}

/// Runs a job that succeeds, one that dies, and a unique one that is retried once: every
/// structure (queues, in-flight lists, locks, the retry and dead sets, stats) is used.
async fn run_one_of_each(broker: RedisBroker, token: &str) {
    let client = Client::new(broker.clone());
    let locked = LockedRetry {
        token: format!("{token}-locked"),
    };
    client.enqueue(&locked).await.unwrap();
    assert!(
        matches!(client.enqueue(&locked).await, Err(Error::Skipped { .. })),
        "the unique lock was taken"
    );
    client.enqueue(&Note::new(token, "ok")).await.unwrap();
    client
        .enqueue(&ChargeCard {
            token: token.into(),
        })
        .await
        .unwrap();
    let admin = Admin::new(broker.clone());
    let w = start(
        Worker::builder(broker)
            .config(fast_config())
            .register::<Note>()
            .register::<ChargeCard>()
            .register::<LockedRetry>(),
    );
    eventually(LIMIT, "both ran", || async { jobs::runs(token).len() == 2 }).await;
    eventually(
        LIMIT,
        "the unique job ran again from the retry set",
        || async { jobs::labels(&locked.token) == ["run 0", "run 1"] },
    )
    .await;

    eventually(LIMIT, "the failure reached the dead set", || async {
        admin.set_size(SortedSet::Dead).await.unwrap() == 1
    })
    .await;
    w.stop().await;
    // Released once it succeeded (the worker has stopped, so nothing runs it again).
    client
        .enqueue(&locked)
        .await
        .expect("the lock was released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_never_see_each_other() {
    let server = RedisServer::start();
    let (a, b) = (
        namespaced(&server.url(), "alpha").await,
        namespaced(&server.url(), "beta").await,
    );
    let t = jobs::token();
    run_one_of_each(a.clone(), &t).await;

    let (alpha, beta) = (Admin::new(a), Admin::new(b.clone()));
    assert_eq!(alpha.stats().await.unwrap().processed, 4);
    assert_eq!(beta.stats().await.unwrap().processed, 0);
    assert_eq!(beta.set_size(SortedSet::Dead).await.unwrap(), 0);
    assert!(beta.queues().await.unwrap().is_empty());
    // The unique job enqueued again at the end waits in alpha's queue.
    assert_eq!(alpha.queues().await.unwrap().len(), 1);
    let before = alpha.queue("default").await.unwrap().size;

    // A job left in alpha's queue is not taken by a worker of beta, which does run its own.
    Client::new(namespaced(&server.url(), "alpha").await)
        .enqueue(&Note::new(&t, "stays in alpha"))
        .await
        .unwrap();
    let control = jobs::token();
    Client::new(b.clone())
        .enqueue(&Note::new(&control, "beta's own"))
        .await
        .unwrap();
    let w = start(Worker::builder(b).config(fast_config()).register::<Note>());
    eventually(LIMIT, "beta's worker ran beta's job", || async {
        !jobs::runs(&control).is_empty()
    })
    .await;
    w.stop().await;
    assert_eq!(alpha.queue("default").await.unwrap().size, before + 1);

    // Every key written lives under one of the two namespaces.
    let client = redis::Client::open(server.url().as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let stray: Vec<&String> = keys
        .iter()
        .filter(|k| !k.starts_with("alpha:") && !k.starts_with("beta:"))
        .collect();
    assert!(stray.is_empty(), "keys outside the namespaces: {stray:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_as_an_acl_user_confined_to_its_namespace() {
    let server = RedisServer::start();
    let admin = redis::Client::open(server.url().as_str()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    // Keys and channels under `app:` only; no administrative or dangerous commands.
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "worker",
            "on",
            ">s3cret",
            "~app:*",
            "&app:*",
            "+@all",
            "-@dangerous",
            "-@admin",
        ])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let url = format!("redis://worker:s3cret@127.0.0.1:{}/", server.port());

    // The user really is confined: a key outside the namespace is refused.
    let confined = redis::Client::open(url.as_str()).unwrap();
    let mut as_user = confined.get_multiplexed_async_connection().await.unwrap();
    let outside = redis::cmd("SET")
        .arg("elsewhere")
        .arg(1)
        .query_async::<()>(&mut as_user)
        .await;
    let refusal = outside.unwrap_err().to_string();
    assert!(
        refusal.contains("NoPerm") || refusal.contains("NOPERM"),
        "{refusal}"
    );

    let t = jobs::token();
    run_one_of_each(namespaced(&url, "app").await, &t).await;
    assert_eq!(jobs::labels(&t).len(), 2);
    // A unique lock, a retry-set job and a scheduled job all work within the namespace.
    let broker = namespaced(&url, "app").await;
    Client::new(broker.clone())
        .enqueue_in(Duration::from_millis(100), &Note::new(&t, "later"))
        .await
        .unwrap();
    let w = start(
        Worker::builder(broker)
            .config(fast_config())
            .register::<Note>(),
    );
    eventually(LIMIT, "the scheduled job ran", || async {
        jobs::runs(&t).len() == 3
    })
    .await;
    w.stop().await;
    // The ACL log records every refusal; there is none.
    let denied: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        denied.len(),
        1,
        "only the deliberate refusal above: {denied:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_jobs_over_tls() {
    let (server, ca) = RedisServer::start_tls();
    let config = RedisConfig::new(server.tls_url()).tls_ca_pem(ca);
    let broker = RedisBroker::connect_with(config)
        .await
        .expect("a TLS connection");
    let t = jobs::token();
    run_one_of_each(broker, &t).await;

    // Without the test CA the server's certificate is not trusted.
    let untrusted = RedisConfig {
        connect_timeout: Duration::from_secs(2),
        ..RedisConfig::new(server.tls_url())
    };
    assert!(RedisBroker::connect_with(untrusted).await.is_err());
}
