//! `kill -9` of worker processes loses no job: another worker, or the same one restarted,
//! runs what the dead one held. Workers here are real OS processes on a private Redis.

mod support;

use std::collections::HashMap;
use std::process::ExitStatus;
use std::process::{Child, Command};
use std::time::Duration;

use jobqueue::{Broker, Client, Envelope, Job, RedisBroker};
use jobqueue_middleware::Unique;
use support::ticks::{ExclusiveTick, LockedTick, Tick};
use support::{eventually, RedisServer};

fn spawn_worker(url: &str) -> Child {
    spawn_worker_with(url, "8", "25000")
}

fn spawn_worker_with(url: &str, concurrency: &str, shutdown_ms: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_jobqueue-test-worker"))
        .args([url, concurrency, shutdown_ms])
        .spawn()
        .expect("start the test worker")
}

/// How many times each job number appears in `queue` (the workers' run records).
async fn counts(url: &str, queue: &str) -> HashMap<u64, usize> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let records: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("queue:{queue}"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut counts = HashMap::new();
    for record in &records {
        let envelope = Envelope::parse(record).unwrap();
        let n = envelope.args[0]["n"].as_u64().unwrap();
        *counts.entry(n).or_default() += 1;
    }
    counts
}

async fn in_flight_total(url: &str) -> usize {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("jobqueue:inflight:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut total = 0;
    for key in keys {
        let len: usize = redis::cmd("LLEN")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        total += len;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_no_job() {
    const JOBS: u64 = 300;
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let jobs: Vec<Tick> = (0..JOBS).map(|n| Tick { n, millis: 30 }).collect();
    Client::new(broker.clone())
        .enqueue_bulk(&jobs)
        .await
        .unwrap();

    let limit = Duration::from_secs(60);
    let mut kills = 0;
    let mut held_at_kills = 0;
    for round in 1..=3u64 {
        let mut worker = spawn_worker(&url);
        eventually(limit, "the worker made progress", || async {
            broker.queue_len("done").await.unwrap() as u64 >= round * 40
        })
        .await;
        let held = in_flight_total(&url).await;
        worker.kill().unwrap(); // SIGKILL: no shutdown code runs
        worker.wait().unwrap();
        kills += 1;
        held_at_kills += held;
        assert!(held > 0, "the worker held jobs when it was killed");
    }

    let mut survivor = spawn_worker(&url);
    eventually(limit, "every job completed", || async {
        counts(&url, "done").await.len() as u64 == JOBS
    })
    .await;
    eventually(limit, "no job left in any in-flight list", || async {
        in_flight_total(&url).await == 0
    })
    .await;
    survivor.kill().unwrap();
    survivor.wait().unwrap();

    let ran = counts(&url, "ran").await;
    let repeated: usize = ran.values().map(|c| c - 1).sum();
    let lost = (0..JOBS).filter(|n| !ran.contains_key(n)).count();
    println!("jobs={JOBS} kills={kills} ran={} repeated={repeated} lost={lost} held_at_kills={held_at_kills}", ran.len());
    assert_eq!(lost, 0);
    assert_eq!(broker.queue_len("ticks").await.unwrap(), 0);
    // Only jobs in flight at a kill may run twice (each kill can also catch a job between
    // its fetch and its first record, which does not show as a repeat).
    assert!(
        repeated <= held_at_kills,
        "{repeated} repeats but only {held_at_kills} held"
    );
    drop(server);
}

fn sigterm(child: &mut Child) -> ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_short_jobs_and_hands_long_ones_back() {
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let client = Client::new(broker.clone());
    let limit = Duration::from_secs(60);

    // Short jobs finish within the shutdown timeout.
    let short: Vec<Tick> = (0..8).map(|n| Tick { n, millis: 300 }).collect();
    client.enqueue_bulk(&short).await.unwrap();
    let mut worker = spawn_worker_with(&url, "8", "10000");
    eventually(limit, "8 jobs running", || async {
        broker.queue_len("ran").await.unwrap() == 8
    })
    .await;
    assert!(sigterm(&mut worker).success(), "clean exit on SIGTERM");
    assert_eq!(
        broker.queue_len("done").await.unwrap(),
        8,
        "running jobs finished"
    );
    assert_eq!(broker.queue_len("ticks").await.unwrap(), 0);
    assert_eq!(in_flight_total(&url).await, 0);
    assert!(broker.processes().await.unwrap().is_empty(), "unregistered");

    // Long jobs are handed back to the front of their queue at the timeout.
    let long: Vec<Tick> = (100..104).map(|n| Tick { n, millis: 60_000 }).collect();
    client.enqueue_bulk(&long).await.unwrap();
    let mut worker = spawn_worker_with(&url, "8", "300");
    eventually(limit, "4 long jobs running", || async {
        broker.queue_len("ran").await.unwrap() == 12
    })
    .await;
    assert!(sigterm(&mut worker).success(), "clean exit on SIGTERM");
    assert_eq!(
        broker.queue_len("ticks").await.unwrap(),
        4,
        "all 4 handed back"
    );
    assert_eq!(broker.queue_len("done").await.unwrap(), 8);
    assert_eq!(in_flight_total(&url).await, 0);
    drop(server);
}

fn envelope<J: Job>(job: &J) -> Envelope {
    Envelope::new(
        J::NAME,
        J::OPTIONS.queue,
        jobqueue::envelope::encode_args(job).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unique_lock_is_stuck_after_kill_dash_nine() {
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let client = Client::new(broker.clone()).with(Unique::new());
    let limit = Duration::from_secs(60);

    let locked = LockedTick { n: 1, millis: 1500 };
    let exclusive = ExclusiveTick { n: 2, millis: 1500 };
    client.enqueue(&locked).await.unwrap();
    client.enqueue(&exclusive).await.unwrap();
    let (queued_lock, _) =
        Unique::lock_keys(&envelope(&locked), &LockedTick::OPTIONS.unique.unwrap());
    let (_, running_lock) = Unique::lock_keys(
        &envelope(&exclusive),
        &ExclusiveTick::OPTIONS.unique.unwrap(),
    );

    let mut worker = spawn_worker(&url);
    eventually(limit, "both started", || async {
        broker.queue_len("ran").await.unwrap() == 2
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(
        broker.lock_holder(&queued_lock).await.unwrap().is_some(),
        "held at the kill"
    );
    assert!(
        broker.lock_holder(&running_lock).await.unwrap().is_some(),
        "held at the kill"
    );

    // A twin of the exclusive job, enqueued while the dead process's lease is still on.
    client
        .enqueue(&ExclusiveTick { n: 2, millis: 10 })
        .await
        .unwrap();
    let mut survivor = spawn_worker(&url);
    eventually(
        limit,
        "the recovered jobs and the twin finished",
        || async { broker.queue_len("done").await.unwrap() == 3 },
    )
    .await;
    eventually(limit, "no lock left", || async {
        broker.lock_holder(&queued_lock).await.unwrap().is_none()
            && broker.lock_holder(&running_lock).await.unwrap().is_none()
    })
    .await;
    // The same unique job can be enqueued again.
    client.enqueue(&locked).await.expect("not stuck");
    survivor.kill().unwrap();
    survivor.wait().unwrap();
    drop(server);
}

async fn lock_keys(url: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg("jobqueue:lock:*")
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// 20,000 jobs, two worker processes, at least 20 `kill -9`s at random moments, a new
/// worker started after each. Every job runs at least once; only jobs in flight at a kill
/// run twice; nothing stays in flight; no lock is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_twenty_kills_lose_no_job() {
    const JOBS: u64 = 20_000;
    const LOCKED: u64 = 500;
    const KILLS: usize = 20;
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let client = Client::new(broker.clone()).with(Unique::new());
    let plain: Vec<Tick> = (LOCKED..JOBS).map(|n| Tick { n, millis: 1 }).collect();
    let locked: Vec<LockedTick> = (0..LOCKED).map(|n| LockedTick { n, millis: 1 }).collect();
    client.enqueue_bulk(&locked).await.unwrap();
    client.enqueue_bulk(&plain).await.unwrap();

    let limit = Duration::from_secs(120);
    let mut workers = vec![spawn_worker(&url), spawn_worker(&url)];
    let mut held_at_kills = 0;
    for kill in 0..KILLS {
        // A moment between 50 and 400 ms, varied without a random source.
        tokio::time::sleep(Duration::from_millis(50 + (kill as u64 * 137) % 350)).await;
        held_at_kills += in_flight_total(&url).await;
        let mut victim = workers.remove(kill % workers.len());
        victim.kill().unwrap();
        victim.wait().unwrap();
        workers.push(spawn_worker(&url));
    }
    eventually(limit, "every job completed", || async {
        counts(&url, "done").await.len() as u64 == JOBS
    })
    .await;
    eventually(limit, "nothing left in flight", || async {
        in_flight_total(&url).await == 0
    })
    .await;
    eventually(limit, "no lock left behind", || async {
        lock_keys(&url).await.is_empty()
    })
    .await;
    for mut worker in workers {
        worker.kill().unwrap();
        worker.wait().unwrap();
    }

    let ran = counts(&url, "ran").await;
    let repeated: usize = ran.values().map(|c| c - 1).sum();
    let lost = (0..JOBS).filter(|n| !ran.contains_key(n)).count();
    println!(
        "jobs={JOBS} kills={KILLS} ran={} repeated={repeated} lost={lost} held_at_kills={held_at_kills}",
        ran.len()
    );
    assert_eq!(lost, 0);
    assert!(
        repeated <= held_at_kills,
        "{repeated} repeats but only {held_at_kills} held at kills"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_acks_the_finished_and_hands_back_the_rest() {
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let client = Client::new(broker.clone());
    let short: Vec<Tick> = (0..50).map(|n| Tick { n, millis: 500 }).collect();
    let long: Vec<Tick> = (50..100).map(|n| Tick { n, millis: 60_000 }).collect();
    client.enqueue_bulk(&short).await.unwrap();
    client.enqueue_bulk(&long).await.unwrap();
    let mut worker = spawn_worker_with(&url, "100", "2000");
    eventually(Duration::from_secs(60), "100 jobs running", || async {
        broker.queue_len("ran").await.unwrap() == 100
    })
    .await;
    let started = std::time::Instant::now();
    assert!(sigterm(&mut worker).success(), "clean exit on SIGTERM");
    // Within the 2 s timeout plus the last calls; a guard, not a timing assertion.
    assert!(started.elapsed() < Duration::from_secs(20));
    let done = counts(&url, "done").await;
    assert_eq!(done.len(), 50, "the short jobs finished and were acked");
    assert!(done.keys().all(|n| *n < 50));
    assert_eq!(
        broker.queue_len("ticks").await.unwrap(),
        50,
        "the long ones are back"
    );
    assert_eq!(in_flight_total(&url).await, 0);
    drop(server);
}
