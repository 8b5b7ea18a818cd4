//! Redis going away, unreachable or slow: clear errors, bounded waits, no hang, and no
//! job acknowledged as enqueued is lost.

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::time::Duration;

use std::time::Instant;

use jobqueue::{BrokerError, Client, Error, RedisBroker, RedisConfig, Worker};
use support::jobs::{self, Note, Sleeps};
use support::{eventually, fast_config, start, RedisServer};

fn start_worker(
    broker: RedisBroker,
) -> (
    jobqueue::WorkerHandle,
    tokio::task::JoinHandle<Result<(), jobqueue::Error>>,
) {
    // A short heartbeat TTL: the test waits for a stopped worker to be taken for dead, and
    // no other worker runs beside it to be mistaken.
    let worker = Worker::builder(broker)
        .config(fast_config())
        .configure(|c| c.heartbeat_ttl = Duration::from_secs(1))
        .register::<Sleeps>()
        .shutdown_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let handle = worker.handle();
    (
        handle,
        tokio::spawn(worker.run_until(std::future::pending())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_without_redis_and_the_held_job_is_recovered_later() {
    let mut server = RedisServer::start_persistent();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    let t = jobs::token();
    jobqueue::Client::new(broker.clone())
        .enqueue(&Sleeps {
            token: t.clone(),
            millis: 60_000,
        })
        .await
        .unwrap();
    let (handle, task) = start_worker(broker.clone());
    eventually(Duration::from_secs(20), "the job started", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;

    server.kill();
    handle.shutdown();
    // A guard against a hang, generous for a slow machine; not a timing assertion.
    let result = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("shutdown ended although Redis is gone")
        .unwrap();
    let err = result.expect_err("the worker reports that it could not hand its job back");
    println!("shutdown without Redis: {err}");

    // Redis comes back with its data. The job is still in the stopped worker's in-flight
    // list; a new worker on the same broker, which reconnects by itself, recovers it once
    // the stopped worker's heartbeat has expired.
    server.restart();
    let t2 = jobs::token();
    let quick = Sleeps {
        token: t2.clone(),
        millis: 1,
    };
    jobqueue::Client::new(broker.clone())
        .enqueue(&quick)
        .await
        .unwrap();
    let (handle, task) = start_worker(broker);
    eventually(
        Duration::from_secs(30),
        "the held job ran again",
        || async { jobs::labels(&t).iter().filter(|l| *l == "started").count() == 2 },
    )
    .await;
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_run_loses_no_acknowledged_job() {
    let mut server = RedisServer::start_persistent();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    let client = Client::new(broker.clone());
    let worker = start(
        Worker::builder(broker)
            .config(fast_config())
            .register::<Note>(),
    );
    let t = jobs::token();
    let (mut acknowledged, mut refused) = (Vec::new(), 0);
    for i in 0..600 {
        if i == 200 {
            server.kill();
        }
        if i == 230 {
            server.restart();
        }
        match client.enqueue(&Note::new(&t, i.to_string())).await {
            Ok(_) => acknowledged.push(i.to_string()),
            Err(Error::Broker(_)) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        refused >= 30,
        "enqueues while Redis was down must fail, not vanish ({refused} refused)"
    );
    eventually(
        Duration::from_secs(60),
        "every acknowledged job ran",
        || async {
            let ran = jobs::labels(&t);
            acknowledged.iter().all(|label| ran.contains(label))
        },
    )
    .await;
    worker.stop().await;
    println!(
        "acknowledged={} refused={refused} ran={}",
        acknowledged.len(),
        jobs::runs(&t).len()
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error_within_the_connect_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = RedisConfig::new(format!("redis://127.0.0.1:{port}/"));
    config.connect_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = RedisBroker::connect_with(config)
        .await
        .err()
        .expect("nothing listens there");
    // A guard against a hang, not a timing assertion.
    assert!(started.elapsed() < Duration::from_secs(30));
    // The connection was refused, and the message says so (not just any redis error).
    let message = err.to_string();
    match &err {
        BrokerError::Redis(e) => assert!(e.is_connection_refusal(), "{message}"),
        other => panic!("expected a refused connection, got {other:?}"),
    }
    assert!(message.to_lowercase().contains("refused"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_a_timeout_for_the_caller_then_recovers() {
    let server = RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    config.response_timeout = Duration::from_millis(300);
    let client = Client::new(RedisBroker::connect_with(config).await.unwrap());
    let admin = redis::Client::open(server.url().as_str()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    // Once CLIENT PAUSE has answered, every other client's command waits for 2 s: the
    // server is slow from that moment, with no race against the enqueue below.
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2000)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let t = jobs::token();
    let err = client.enqueue(&Note::new(&t, "slow")).await.unwrap_err();
    match &err {
        Error::Broker(BrokerError::Redis(e)) => assert!(e.is_timeout(), "{err}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    eventually(Duration::from_secs(20), "enqueue works again", || async {
        client.enqueue(&Note::new(&t, "later")).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_finishing_while_redis_is_down_are_acknowledged_after_it_returns() {
    let mut server = RedisServer::start_persistent();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    let t = jobs::token();
    let jobs: Vec<Sleeps> = (0..4)
        .map(|_| Sleeps {
            token: t.clone(),
            millis: 300,
        })
        .collect();
    Client::new(broker.clone())
        .enqueue_bulk(&jobs)
        .await
        .unwrap();
    let worker = start(
        Worker::builder(broker.clone())
            .config(fast_config())
            .register::<Sleeps>(),
    );
    let identity = worker.handle.identity().to_owned();
    eventually(Duration::from_secs(20), "all four running", || async {
        jobs::labels(&t).iter().filter(|l| *l == "started").count() == 4
    })
    .await;
    // Redis goes away while the four run: they finish, and cannot be acknowledged.
    server.kill();
    eventually(Duration::from_secs(20), "all four finished", || async {
        jobs::labels(&t).iter().filter(|l| *l == "finished").count() == 4
    })
    .await;
    server.restart();
    eventually(
        Duration::from_secs(60),
        "the in-flight list emptied",
        || async {
            broker
                .in_flight(&identity)
                .await
                .is_ok_and(|held| held.is_empty())
        },
    )
    .await;
    worker.stop().await;
    let labels = jobs::labels(&t);
    assert_eq!(
        labels.iter().filter(|l| *l == "started").count(),
        4,
        "each ran once: {labels:?}"
    );
    assert_eq!(broker.queue_len("default").await.unwrap(), 0);
    assert!(broker.in_flight(&identity).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_an_unreachable_broker_and_recovers() {
    let mut server = RedisServer::start_persistent();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    let w = start(
        Worker::builder(broker)
            .config(fast_config())
            .register::<Note>(),
    );
    let limit = Duration::from_secs(30);
    eventually(limit, "ready", || async { w.handle.health().ready }).await;
    server.kill();
    eventually(limit, "the broker is unreachable, so not ready", || async {
        let health = w.handle.health();
        !health.broker_reachable && !health.ready
    })
    .await;
    server.restart();
    eventually(limit, "ready again", || async { w.handle.health().ready }).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_redis_refuses_is_an_error_not_a_silent_loss() {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    // Something else owns the queue's key, with another type: Redis refuses the LPUSH
    // inside the push's transaction.
    let client = redis::Client::open(server.url().as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SET")
        .arg("queue:default")
        .arg("not a list")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let t = jobs::token();
    let refused = Client::new(broker.clone())
        .enqueue(&Note::new(&t, "refused"))
        .await;
    assert!(
        matches!(&refused, Err(Error::Broker(BrokerError::Redis(e))) if e.to_string().contains("WRONGTYPE")),
        "{refused:?}"
    );
}

/// The test Redis helper starts a server only where the one answering is its own: on a
/// port another server holds, it refuses, where a plain PING would have been answered by
/// the other server.
#[test]
fn the_test_redis_helper_refuses_a_port_another_server_answers_on() {
    let first = RedisServer::start();
    let taken = RedisServer::try_start_on(first.port(), false);
    assert!(
        taken.is_err(),
        "started on port {}, which pid {:?} already serves",
        first.port(),
        first.pid()
    );
    assert_eq!(
        support::redis_server::server_pid(first.port()),
        first.pid(),
        "the first server still answers on its port"
    );
    let second = RedisServer::start();
    assert_ne!(second.port(), first.port());
    assert_eq!(
        support::redis_server::server_pid(second.port()),
        second.pid()
    );
}

/// Everything a test's own `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A worker started while Redis is away (a failover under way, a restart) does not exit:
/// its first heartbeat is tried again until Redis answers, then it runs jobs as usual. On
/// one thread, so that the test's subscriber sees the worker's warnings.
#[tokio::test(flavor = "current_thread")]
async fn a_worker_started_while_redis_is_down_starts_once_it_is_back() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let failed_beats = || {
        String::from_utf8_lossy(&logs.0.lock().unwrap())
            .matches("registering this process failed")
            .count()
    };
    let mut server = RedisServer::start_persistent();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    let t = jobs::token();
    Client::new(broker.clone())
        .enqueue(&Sleeps {
            token: t.clone(),
            millis: 0,
        })
        .await
        .unwrap();
    server.kill();
    let worker = start(
        Worker::builder(broker.clone())
            .config(fast_config())
            .register::<Sleeps>(),
    );
    eventually(
        Duration::from_secs(20),
        "two first heartbeats failed",
        || async { failed_beats() >= 2 },
    )
    .await;
    server.restart();
    eventually(Duration::from_secs(60), "the job ran", || async {
        jobs::labels(&t).iter().any(|l| l == "finished")
    })
    .await;
    assert!(worker.handle.health().ready);
    worker.stop().await;
}
