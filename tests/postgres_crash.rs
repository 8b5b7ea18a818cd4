//! Crashes on PostgreSQL, with real processes: worker processes killed with `kill -9` under
//! load, the database server killed and restarted under load, and outbox relays killed
//! mid-batch. Nothing committed is lost, and no job is pushed twice.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jobqueue::backend::postgres::PgBroker;
use jobqueue::backend::{Location, Span, Views};
use jobqueue::{Client, Envelope, SortedSet};
use sqlx::PgPool;
use support::ticks::Tick;
use support::{eventually, pg_broker, poison_pills, Backend, PgServer, StoreExt};

const LIMIT: Duration = Duration::from_secs(120);

fn spawn(args: &[&str], stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_jobqueue-test-worker"))
        .args(args)
        .stderr(stderr)
        .spawn()
        .expect("start the test worker")
}

/// The job numbers recorded in `queue` (the workers' `ran` and `done` records), counted.
async fn counts(broker: &PgBroker, queue: &str) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    let entries = broker
        .range(Location::Queue(queue), Span::page(0, 1_000_000))
        .await
        .unwrap();
    for entry in entries {
        let n = Envelope::parse(&entry.payload).unwrap().args[0]["n"]
            .as_u64()
            .unwrap();
        *counts.entry(n).or_default() += 1;
    }
    counts
}

/// The identity of the worker process `child`, once it has beaten.
async fn identity_of(pool: &PgPool, child: &Child) -> String {
    let needle = format!("%:{}:%", child.id());
    let start = std::time::Instant::now();
    loop {
        let found: Option<String> =
            sqlx::query_scalar("SELECT identity FROM jobqueue_processes WHERE identity LIKE $1")
                .bind(&needle)
                .fetch_optional(pool)
                .await
                .unwrap();
        if let Some(identity) = found {
            return identity;
        }
        assert!(start.elapsed() < LIMIT, "the worker never registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Kills `victim` with SIGKILL; returns the job numbers it held, and declares it dead.
async fn kill_dash_nine(pool: &PgPool, mut victim: Child, identity: &str) -> Vec<u64> {
    victim.kill().unwrap();
    victim.wait().unwrap();
    let held: Vec<String> =
        sqlx::query_scalar("SELECT payload FROM jobqueue_jobs WHERE place = 'f' AND name = $1")
            .bind(identity)
            .fetch_all(pool)
            .await
            .unwrap();
    sqlx::query("DELETE FROM jobqueue_processes WHERE identity = $1")
        .bind(identity)
        .execute(pool)
        .await
        .unwrap();
    held.iter()
        .map(|p| Envelope::parse(p).unwrap().args[0]["n"].as_u64().unwrap())
        .collect()
}

async fn in_flight(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobqueue_jobs WHERE place = 'f'")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_of_workers_under_load_loses_no_job() {
    const JOBS: u64 = 600;
    let b = Backend::postgres().await;
    let pg = b.pg.as_ref().unwrap();
    let broker = pg_broker(pg).await;
    let pool = broker.pool().clone();
    let jobs: Vec<Tick> = (0..JOBS).map(|n| Tick { n, millis: 20 }).collect();
    Client::new(broker.clone())
        .enqueue_bulk(&jobs)
        .await
        .unwrap();
    let url = pg.url();
    let mut held_at_kills = HashSet::new();
    let mut kills = 0;
    // Two workers at a time; both killed each round.
    for round in 1..=3usize {
        let workers: Vec<Child> = (0..2)
            .map(|_| spawn(&[&url, "8", "25000"], Stdio::inherit()))
            .collect();
        let mut identities = Vec::new();
        for worker in &workers {
            identities.push(identity_of(&pool, worker).await);
        }
        eventually(LIMIT, "the workers made progress", || async {
            counts(&broker, "done").await.len() >= round * 80
        })
        .await;
        for (worker, identity) in workers.into_iter().zip(&identities) {
            held_at_kills.extend(kill_dash_nine(&pool, worker, identity).await);
            kills += 1;
        }
    }
    assert!(
        !held_at_kills.is_empty(),
        "the workers held jobs when killed"
    );
    let mut survivor = spawn(&[&url, "8", "25000"], Stdio::inherit());
    eventually(LIMIT, "every job done or kept as a poison pill", || async {
        let mut finished: HashSet<u64> = counts(&broker, "done").await.into_keys().collect();
        finished.extend(poison_pills(b.broker.as_ref()).await);
        finished.len() as u64 == JOBS
    })
    .await;
    eventually(LIMIT, "no job left in flight", || async {
        in_flight(&pool).await == 0
    })
    .await;
    survivor.kill().unwrap();
    survivor.wait().unwrap();
    let ran = counts(&broker, "ran").await;
    let poisoned = poison_pills(b.broker.as_ref()).await;
    let lost = (0..JOBS)
        .filter(|n| !ran.contains_key(n) && !poisoned.contains(n))
        .count();
    let repeated: Vec<u64> = ran
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    println!(
        "jobs={JOBS} kills={kills} ran={} repeated={} held_at_kills={} poison_pills={}",
        ran.len(),
        repeated.len(),
        held_at_kills.len(),
        poisoned.len()
    );
    assert_eq!(lost, 0);
    let stray: Vec<_> = repeated
        .iter()
        .filter(|n| !held_at_kills.contains(*n))
        .collect();
    assert!(stray.is_empty(), "run twice, held by no victim: {stray:?}");
    assert_eq!(b.admin().queue("ticks").await.unwrap().size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_no_committed_job() {
    const JOBS: u64 = 1_500;
    let b = Backend::postgres().await;
    let pg = b.pg.as_ref().unwrap();
    let broker = pg_broker(pg).await;
    let jobs: Vec<Tick> = (0..JOBS).map(|n| Tick { n, millis: 5 }).collect();
    Client::new(broker.clone())
        .enqueue_bulk(&jobs)
        .await
        .unwrap();
    let url = pg.url();
    let mut worker = spawn(&[&url, "8", "25000"], Stdio::inherit());
    eventually(LIMIT, "the worker made progress", || async {
        counts(&broker, "done").await.len() >= 200
    })
    .await;
    // Killed as a crash would, mid-load, and started again from its log.
    let before = pg.pid().expect("the server's pid");
    let done_at_kill = counts(&broker, "done").await.len() as u64;
    tokio::task::block_in_place(|| {
        pg.kill();
        pg.restart();
    });
    assert_ne!(
        pg.pid(),
        Some(before),
        "the server was killed and started again"
    );
    assert!(done_at_kill < JOBS, "killed mid-load");
    // Jobs whose records failed during the restart fail and are retried; the worker's
    // pool, acknowledgements and heartbeat reconnect by themselves.
    eventually(LIMIT, "every job done, or dead with its error", || async {
        let Ok(done) = tokio::time::timeout(Duration::from_secs(5), counts(&broker, "done")).await
        else {
            return false;
        };
        let mut finished: HashSet<u64> = done.into_keys().collect();
        let dead = b
            .broker
            .set_range(SortedSet::Dead, 0, 10_000)
            .await
            .unwrap_or_default();
        finished.extend(
            dead.iter()
                .filter_map(|(_, p)| Envelope::parse(p).ok())
                .filter_map(|e| e.args[0]["n"].as_u64()),
        );
        finished.len() as u64 == JOBS
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    let done = counts(&broker, "done").await;
    let dead = b.admin().set_size(SortedSet::Dead).await.unwrap();
    println!(
        "jobs={JOBS} done_at_kill={done_at_kill} done={} dead={dead}",
        done.len()
    );
    assert_eq!(b.admin().queue("ticks").await.unwrap().size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_killed_mid_batch_lose_nothing_and_push_nothing_twice() {
    const JOBS: usize = 20_000;
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    pg_broker(&pg).await.migrate().await.unwrap();
    let pool = PgPool::connect(&pg.url()).await.unwrap();
    let redis = Backend::redis().await;
    let server = redis.server.as_ref().unwrap();
    let client = redis.client();
    let jobs: Vec<Tick> = (0..JOBS as u64).map(|n| Tick { n, millis: 0 }).collect();
    for chunk in jobs.chunks(2_000) {
        let mut tx = pool.begin().await.unwrap();
        client.enqueue_tx_bulk(&mut tx, chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
    let queued = || async { redis.admin().queue("ticks").await.unwrap().size };
    let logs = std::env::temp_dir().join(format!("jobqueue-relay-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    // Relays killed at random points of their batches, until one found jobs a killed relay
    // had pushed without deleting their rows (it says so), at most 40 times.
    let mut kills = 0;
    let mut repushes_refused = 0;
    while repushes_refused == 0 && kills < 40 && queued().await < JOBS - 2_000 {
        let log = logs.join(format!("{kills}.log"));
        let mut relay = spawn(
            &["relay", &pg.url(), &server.url()],
            Stdio::from(std::fs::File::create(&log).unwrap()),
        );
        let before = queued().await;
        eventually(LIMIT, "the relay moved jobs", || async {
            queued().await >= before + 300
        })
        .await;
        relay.kill().unwrap();
        relay.wait().unwrap();
        kills += 1;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        repushes_refused += text.matches("not pushed again").count();
    }
    // One last relay finishes the outbox.
    let mut last = spawn(&["relay", &pg.url(), &server.url()], Stdio::inherit());
    eventually(LIMIT, "the outbox emptied", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobqueue_outbox")
            .fetch_one(&pool)
            .await
            .unwrap()
            == 0
    })
    .await;
    last.kill().unwrap();
    last.wait().unwrap();
    let entries = redis
        .broker
        .range(Location::Queue("ticks"), Span::page(0, JOBS * 2))
        .await
        .unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for entry in &entries {
        *seen
            .entry(Envelope::parse(&entry.payload).unwrap().jid)
            .or_default() += 1;
    }
    let twice = seen.values().filter(|c| **c > 1).count();
    println!(
        "jobs={JOBS} relay_kills={kills} repushes_refused={repushes_refused} queued={} distinct={} twice={twice}",
        entries.len(),
        seen.len()
    );
    assert!(
        repushes_refused > 0,
        "no kill fell between a relay's push and its commit in {kills} kills"
    );
    assert_eq!(twice, 0, "jobs pushed twice");
    assert_eq!(seen.len(), JOBS, "every job reached Redis");
    let _ = std::fs::remove_dir_all(&logs);
}
