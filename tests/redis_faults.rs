//! Redis going away under a worker: shutdown still ends, with an error saying why, and
//! the job it could not hand back is recovered by another worker once Redis is back.

mod support;

use std::time::Duration;

use jobqueue::{RedisBroker, Worker};
use support::jobs::{self, Sleeps};
use support::{eventually, fast_config, RedisServer};

fn start_worker(
    broker: RedisBroker,
) -> (
    jobqueue::WorkerHandle,
    tokio::task::JoinHandle<Result<(), jobqueue::Error>>,
) {
    let worker = Worker::builder(broker)
        .config(fast_config())
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
