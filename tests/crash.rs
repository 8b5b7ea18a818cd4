//! `kill -9` of worker processes loses no job: another worker, or the same one restarted,
//! runs what the dead one held. Workers here are real OS processes on a private Redis.
//!
//! The workers' heartbeats are long-lived, so a loaded machine never makes a live worker
//! look dead; after a kill the test declares the victim dead by deleting its heartbeat, and
//! reads what it held from its in-flight list first (frozen: nobody recovers it before).

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::collections::{HashMap, HashSet};
use std::process::ExitStatus;
use std::process::{Child, Command};
use std::time::Duration;

use jobqueue::{Client, Envelope, Job, RedisBroker, SortedSet};
use support::ticks::{
    ChainedTick, ExclusiveTick, ExpiresTick, GuardedTick, LockedTick, PacedTick, ShopTick, Span,
    StartsTick, Tick,
};
use support::{eventually, poison_pills, RedisServer};

fn spawn_worker(url: &str) -> Child {
    spawn_worker_with(url, "8", "25000")
}

fn spawn_worker_with(url: &str, concurrency: &str, shutdown_ms: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_jobqueue-test-worker"))
        .args([url, concurrency, shutdown_ms])
        .spawn()
        .expect("start the test worker")
}

/// The jobs in the Redis list `list` (a queue or an in-flight list), parsed.
async fn jobs_in(url: &str, list: &str) -> Vec<Envelope> {
    let payloads: Vec<String> = redis::cmd("LRANGE")
        .arg(list)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn(url).await)
        .await
        .unwrap();
    payloads
        .iter()
        .map(|p| Envelope::parse(p).unwrap())
        .collect()
}

/// How many times each job number appears in `queue` (the workers' run records).
async fn counts(url: &str, queue: &str) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for envelope in jobs_in(url, &format!("queue:{queue}")).await {
        let n = envelope.args[0]["n"].as_u64().unwrap();
        *counts.entry(n).or_default() += 1;
    }
    counts
}

/// The distinct job numbers recorded in a queue that only grows (the workers' run records),
/// read as it grows: each look reads only the records pushed since the last one, so that
/// watching 20,000 of them costs the machine little.
struct Tally {
    list: String,
    read: usize,
    seen: HashSet<u64>,
    conn: Option<redis::aio::MultiplexedConnection>,
}

impl Tally {
    fn new(queue: &str) -> Self {
        Self {
            list: format!("queue:{queue}"),
            read: 0,
            seen: HashSet::new(),
            conn: None,
        }
    }

    /// Reads the records pushed since the last look; returns how many distinct jobs have
    /// been recorded.
    async fn update(&mut self, url: &str) -> usize {
        // New records are pushed at the head; the ones read already are the `read` at the
        // tail, whatever was pushed meanwhile.
        let end = -(self.read as i64) - 1;
        if self.conn.is_none() {
            self.conn = Some(conn(url).await);
        }
        let new: Vec<String> = redis::cmd("LRANGE")
            .arg(&self.list)
            .arg(0)
            .arg(end)
            .query_async(self.conn.as_mut().unwrap())
            .await
            .unwrap();
        self.read += new.len();
        for payload in new {
            let envelope = Envelope::parse(&payload).unwrap();
            self.seen.insert(envelope.args[0]["n"].as_u64().unwrap());
        }
        self.seen.len()
    }
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// The identity of the worker process `child`, once it has registered.
async fn identity_of(url: &str, child: &Child) -> String {
    let mut conn = conn(url).await;
    let needle = format!(":{}:", child.id());
    let start = std::time::Instant::now();
    loop {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg("processes")
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(identity) = members.into_iter().find(|m| m.contains(&needle)) {
            return identity;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the worker never registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The job numbers in the in-flight list of `identity`.
async fn held(url: &str, identity: &str) -> Vec<u64> {
    jobs_in(url, &format!("jobqueue:inflight:{identity}"))
        .await
        .iter()
        .map(|e| e.args[0]["n"].as_u64().unwrap())
        .collect()
}

/// Kills `victim` with SIGKILL (no shutdown code runs) and returns the job numbers it held
/// at its death, then declares it dead so the others recover them.
async fn kill_dash_nine(url: &str, mut victim: Child, identity: &str) -> Vec<u64> {
    victim.kill().unwrap();
    victim.wait().unwrap();
    let held = held(url, identity).await;
    let _: i64 = redis::cmd("DEL")
        .arg(identity)
        .query_async(&mut conn(url).await)
        .await
        .unwrap();
    held
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
    let mut held_at_kills = HashSet::new();
    for round in 1..=3u64 {
        let worker = spawn_worker(&url);
        let identity = identity_of(&url, &worker).await;
        eventually(limit, "the worker made progress", || async {
            broker.queue_len("done").await.unwrap() as u64 >= round * 40
        })
        .await;
        let held = kill_dash_nine(&url, worker, &identity).await;
        kills += 1;
        assert!(!held.is_empty(), "the worker held jobs when it was killed");
        held_at_kills.extend(held);
    }

    // A job held at each of the three kills has been interrupted three times: it is a
    // likely poison pill and goes to the dead set, kept, not run again.
    let mut survivor = spawn_worker(&url);
    eventually(
        limit,
        "every job completed or kept as a poison pill",
        || async {
            let mut finished: HashSet<u64> = counts(&url, "done").await.into_keys().collect();
            finished.extend(poison_pills(&broker).await);
            finished.len() as u64 == JOBS
        },
    )
    .await;
    eventually(limit, "no job left in any in-flight list", || async {
        in_flight_total(&url).await == 0
    })
    .await;
    survivor.kill().unwrap();
    survivor.wait().unwrap();

    let ran = counts(&url, "ran").await;
    let repeated: Vec<u64> = ran
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    let poisoned = poison_pills(&broker).await;
    let lost = (0..JOBS)
        .filter(|n| !ran.contains_key(n) && !poisoned.contains(n))
        .count();
    println!(
        "jobs={JOBS} kills={kills} ran={} repeated={} lost={lost} held_at_kills={} poison_pills={}",
        ran.len(),
        repeated.len(),
        held_at_kills.len(),
        poisoned.len()
    );
    assert_eq!(lost, 0);
    assert!(
        poisoned.iter().all(|n| held_at_kills.contains(n)),
        "only jobs held at the kills died of them: {poisoned:?}"
    );
    assert_eq!(broker.queue_len("ticks").await.unwrap(), 0);
    // Only a job in a victim's in-flight list at its death may run twice.
    let stray: Vec<_> = repeated
        .iter()
        .filter(|n| !held_at_kills.contains(*n))
        .collect();
    assert!(
        stray.is_empty(),
        "jobs run twice that no victim held: {stray:?}"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_pushes_each_follow_up_exactly_once() {
    const JOBS: u64 = 300;
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let jobs: Vec<ChainedTick> = (0..JOBS).map(|n| ChainedTick { n, millis: 30 }).collect();
    Client::new(broker.clone())
        .enqueue_bulk(&jobs)
        .await
        .unwrap();

    let limit = Duration::from_secs(60);
    let mut held_at_kills = HashSet::new();
    for round in 1..=3u64 {
        let worker = spawn_worker(&url);
        let identity = identity_of(&url, &worker).await;
        eventually(limit, "the worker made progress", || async {
            broker.queue_len("done").await.unwrap() as u64 >= round * 40
        })
        .await;
        held_at_kills.extend(kill_dash_nine(&url, worker, &identity).await);
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

    // Jobs held at a kill ran again (their first run's follow-up was never pushed); every
    // job's follow-up is in the `default` queue exactly once.
    let ran = counts(&url, "ran").await;
    let rerun = ran.values().filter(|c| **c > 1).count();
    let follow_ups = counts(&url, "default").await;
    let missing: Vec<u64> = (0..JOBS).filter(|n| !follow_ups.contains_key(n)).collect();
    let doubled: Vec<(&u64, &usize)> = follow_ups.iter().filter(|(_, c)| **c != 1).collect();
    println!(
        "jobs={JOBS} held_at_kills={} rerun={rerun} follow_ups={}",
        held_at_kills.len(),
        follow_ups.len()
    );
    assert!(rerun > 0, "no job ran twice: the kills tested nothing");
    assert!(missing.is_empty(), "follow-ups never pushed: {missing:?}");
    assert!(
        doubled.is_empty(),
        "follow-ups pushed more than once: {doubled:?}"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_finishes_once_across_processes_and_kills() {
    const JOBS: u64 = 300;
    /// The number of the batch's `on_complete` record.
    const CALLBACK: u64 = 1_000_000;
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let client = Client::new(broker.clone());
    let batch = jobqueue::client::Batch::new("ticks")
        .on_complete(&support::ticks::Record { n: CALLBACK })
        .unwrap();
    let jobs: Vec<Tick> = (0..JOBS).map(|n| Tick { n, millis: 20 }).collect();
    client.enqueue_batch(&batch, &jobs).await.unwrap();

    // Two workers finish jobs of the batch at once; one of them is killed each round.
    let limit = Duration::from_secs(60);
    let mut other = spawn_worker(&url);
    let mut held_at_kills: Vec<HashSet<u64>> = Vec::new();
    for round in 1..=3u64 {
        let worker = spawn_worker(&url);
        let identity = identity_of(&url, &worker).await;
        eventually(limit, "the workers made progress", || async {
            broker.queue_len("done").await.unwrap() as u64 >= round * 40
        })
        .await;
        let held = kill_dash_nine(&url, worker, &identity).await;
        assert!(!held.is_empty(), "round {round}: the victim held no job");
        held_at_kills.push(held.into_iter().collect());
    }
    // A job held by a victim at each of the three kills is a poison pill: it goes to the
    // dead set (`jobqueue::Interrupted`) and its batch counts it as failed.
    eventually(limit, "every job completed or died", || async {
        let mut finished: HashSet<u64> = counts(&url, "done").await.into_keys().collect();
        finished.extend(poison_pills(&broker).await);
        finished.len() as u64 == JOBS
    })
    .await;
    eventually(limit, "the batch finished", || async {
        client
            .batch_status(batch.id())
            .await
            .unwrap()
            .is_some_and(|s| s.finished)
    })
    .await;
    other.kill().unwrap();
    other.wait().unwrap();
    let status = client.batch_status(batch.id()).await.unwrap().unwrap();
    let dead = poison_pills(&broker).await;
    let done: HashSet<u64> = counts(&url, "done").await.into_keys().collect();
    // A batch counts a job's first outcome. A job can succeed, be counted, and lose its
    // acknowledgement to a kill: it runs again and may then die of interruptions, and its
    // batch keeps the success. So the failures are at least the dead jobs that never
    // completed anywhere, and at most all the dead jobs.
    let never_done = dead.difference(&done).count() as u64;
    let died = dead.len() as u64;
    let held_any: HashSet<u64> = held_at_kills.iter().flatten().copied().collect();
    let held_every = held_at_kills
        .iter()
        .skip(1)
        .fold(held_at_kills[0].clone(), |all, held| &all & held);
    println!(
        "batch: {} succeeded, {} failed; {died} died of interruptions, {never_done} of them never completed; {} jobs held at the kills",
        status.succeeded,
        status.failed,
        held_any.len()
    );
    // Every job a victim held is accounted for: it completed, or it died of the kills.
    let unaccounted: Vec<&u64> = held_any
        .iter()
        .filter(|n| !done.contains(n) && !dead.contains(n))
        .collect();
    assert!(
        unaccounted.is_empty(),
        "held at a kill, then neither completed nor dead: {unaccounted:?}"
    );
    // A job dies of interruptions only when it was held at each of the three deaths.
    let stray: Vec<&u64> = dead.difference(&held_every).collect();
    assert!(
        stray.is_empty(),
        "dead of interruptions, yet not held at every kill: {stray:?}"
    );
    // Only a job held at a kill may have run twice.
    let ran = counts(&url, "ran").await;
    let rerun_unheld: Vec<&u64> = ran
        .iter()
        .filter(|(n, c)| **c > 1 && !held_any.contains(n))
        .map(|(n, _)| n)
        .collect();
    assert!(
        rerun_unheld.is_empty(),
        "jobs run twice that no victim held: {rerun_unheld:?}"
    );
    assert_eq!((status.total, status.pending), (JOBS, 0));
    assert_eq!(status.succeeded + status.failed, JOBS);
    assert!(
        (never_done..=died).contains(&status.failed),
        "{} failed, expected between {never_done} and {died}",
        status.failed
    );
    // The callback (a `Record` on the `default` queue, which no worker takes) was pushed
    // exactly once.
    let callbacks = counts(&url, "default").await;
    assert_eq!(callbacks.get(&CALLBACK), Some(&1), "{callbacks:?}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_job_killed_mid_way_resumes_from_its_checkpoint() {
    const ITEMS: u64 = 200;
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let client = Client::new(broker.clone());
    let jid = client
        .enqueue(&support::ticks::CountTick {
            to: ITEMS,
            millis: 10,
        })
        .await
        .unwrap();
    let limit = Duration::from_secs(60);
    let worker = spawn_worker(&url);
    let identity = identity_of(&url, &worker).await;
    let admin = jobqueue::Admin::new(broker.clone());
    eventually(limit, "a quarter of the items done", || async {
        admin
            .iteration(&jid)
            .await
            .unwrap()
            .is_some_and(|p| p.done >= ITEMS / 4)
    })
    .await;
    let mut worker = worker;
    worker.kill().unwrap();
    worker.wait().unwrap();
    // Declared dead, so the survivor recovers the job it held.
    let _: i64 = redis::cmd("DEL")
        .arg(&identity)
        .query_async(&mut conn(&url).await)
        .await
        .unwrap();
    let at_kill = admin.iteration(&jid).await.unwrap().unwrap();
    assert!(at_kill.done < ITEMS, "killed mid-way: {at_kill:?}");

    let mut survivor = spawn_worker(&url);
    eventually(limit, "every item done", || async {
        counts(&url, "ran").await.len() as u64 == ITEMS
    })
    .await;
    eventually(limit, "the checkpoint removed at the end", || async {
        admin.iteration(&jid).await.unwrap().is_none()
    })
    .await;
    survivor.kill().unwrap();
    survivor.wait().unwrap();
    // Items before the checkpoint ran once; only the item in progress at the kill may have
    // run twice.
    let ran = counts(&url, "ran").await;
    let twice: Vec<(&u64, &usize)> = ran.iter().filter(|(_, c)| **c > 1).collect();
    println!(
        "items={ITEMS} checkpoint_at_kill={} twice={twice:?}",
        at_kill.done
    );
    assert!(ran.values().all(|c| *c <= 2), "{ran:?}");
    assert!(
        twice.len() <= 1,
        "more than the item in progress ran twice: {twice:?}"
    );
    assert!(
        twice.iter().all(|(n, _)| **n == at_kill.done),
        "a repeat other than the item after the checkpoint: {twice:?}"
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

/// How long `key` has left to live, or `None` when it has no TTL (or does not exist).
async fn ttl(url: &str, key: &str) -> Option<Duration> {
    let ms: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn(url).await)
        .await
        .unwrap();
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// Lets `key` lapse now, as its TTL would later.
async fn lapse(url: &str, key: &str) {
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(key)
        .arg(1)
        .query_async(&mut conn(url).await)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unique_lock_is_stuck_after_kill_dash_nine() {
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let client = Client::new(broker.clone());
    let limit = Duration::from_secs(60);

    let locked = LockedTick { n: 1, millis: 1500 };
    let exclusive = ExclusiveTick { n: 2, millis: 1500 };
    client.enqueue(&locked).await.unwrap();
    client.enqueue(&exclusive).await.unwrap();
    let locked_spec = LockedTick::OPTIONS.unique.unwrap();
    let queued_lock = format!(
        "jobqueue:lock:{}",
        locked_spec.queued_key(&envelope(&locked))
    );
    let exclusive_spec = ExclusiveTick::OPTIONS.unique.unwrap();
    let running_lock = format!(
        "jobqueue:lock:{}",
        exclusive_spec.running_key(&envelope(&exclusive))
    );

    let worker = spawn_worker(&url);
    let identity = identity_of(&url, &worker).await;
    eventually(limit, "both started", || async {
        broker.queue_len("ran").await.unwrap() == 2
    })
    .await;
    let held = kill_dash_nine_without_declaring(&url, worker, &identity).await;
    assert_eq!(held.len(), 2, "both were running at the kill");
    let dead_holder = redis_get(&url, &running_lock)
        .await
        .expect("lease held at the kill");
    assert!(
        redis_get(&url, &queued_lock).await.is_some(),
        "lock held at the kill"
    );

    // Twins with the same arguments, enqueued while the dead process still holds both.
    let refused = client.enqueue(&locked).await;
    assert!(
        matches!(refused, Err(jobqueue::Error::Skipped { .. })),
        "the queued lock refuses a twin: {refused:?}"
    );
    let twin = client.enqueue(&exclusive).await.unwrap();
    let survivor = spawn_worker(&url);
    // The twin contends with the dead process's lease: it is sent away, not run.
    eventually(
        limit,
        "the twin was rescheduled by the held lease",
        || async {
            let scheduled = broker.set_range(SortedSet::Schedule, 0, 10).await.unwrap();
            scheduled.iter().any(|(_, p)| p.contains(&twin))
        },
    )
    .await;
    assert_eq!(
        counts(&url, "ran").await.get(&2),
        Some(&1),
        "the twin did not run"
    );
    assert_eq!(redis_get(&url, &running_lock).await, Some(dead_holder));
    // Neither lock can outlive its TTL: the lease lapses within its 60 s, the queued
    // lock within its TTL. Let them lapse now rather than wait.
    let lease = ttl(&url, &running_lock).await.expect("the lease has a TTL");
    assert!(lease <= Duration::from_secs(60), "{lease:?}");
    let queued = ttl(&url, &queued_lock).await.expect("the lock has a TTL");
    assert!(queued <= locked_spec.ttl, "{queued:?}");
    lapse(&url, &running_lock).await;
    eventually(limit, "the twin ran once the lease lapsed", || async {
        counts(&url, "done").await.get(&2) == Some(&1)
    })
    .await;
    // The dead process's jobs come back once it is declared dead, and run to the end.
    let _: i64 = redis::cmd("DEL")
        .arg(&identity)
        .query_async(&mut conn(&url).await)
        .await
        .unwrap();
    eventually(
        limit,
        "the recovered jobs and the twin finished",
        || async { broker.queue_len("done").await.unwrap() == 3 },
    )
    .await;
    eventually(limit, "no lock left", || async {
        redis_get(&url, &queued_lock).await.is_none()
            && redis_get(&url, &running_lock).await.is_none()
    })
    .await;
    // The same unique job can be enqueued again.
    client.enqueue(&locked).await.expect("not stuck");
    let mut survivor = survivor;
    survivor.kill().unwrap();
    survivor.wait().unwrap();
    drop(server);
}

/// Kills `victim` and returns what it held, leaving it registered (not yet declared dead).
async fn kill_dash_nine_without_declaring(
    url: &str,
    mut victim: Child,
    identity: &str,
) -> Vec<u64> {
    victim.kill().unwrap();
    victim.wait().unwrap();
    held(url, identity).await
}

async fn redis_get(url: &str, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn(url).await)
        .await
        .unwrap()
}

/// The keys of jobs' locks and leases (not the workers' own claims, such as the metrics
/// sampler's), sorted.
async fn lock_keys(url: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys = Vec::new();
    for kind in ["unique", "running", "collapse"] {
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("jobqueue:lock:{kind}:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(found);
    }
    keys.sort();
    keys
}

/// 20,000 jobs, two worker processes, 20 `kill -9`s spread over the run, a new worker
/// started after each. Every job runs at least once; a job runs twice only if it was in a
/// victim's in-flight list at its death; nothing stays in flight; no lock is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_twenty_kills_lose_no_job() {
    const JOBS: u64 = 20_000;
    const LOCKED: u64 = 500;
    const KILLS: u64 = 20;
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let client = Client::new(broker.clone());
    let plain: Vec<Tick> = (LOCKED..JOBS).map(|n| Tick { n, millis: 1 }).collect();
    let locked: Vec<LockedTick> = (0..LOCKED).map(|n| LockedTick { n, millis: 1 }).collect();
    client.enqueue_bulk(&locked).await.unwrap();
    client.enqueue_bulk(&plain).await.unwrap();

    let limit = Duration::from_secs(120);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let worker = spawn_worker(&url);
        let identity = identity_of(&url, &worker).await;
        workers.push((worker, identity));
    }
    let mut held_at_kills: HashSet<u64> = HashSet::new();
    let mut held_total = 0;
    // The completions, read as they come: each look reads only the records added since.
    let done_tally = tokio::sync::Mutex::new(Tally::new("done"));
    for kill in 0..KILLS {
        // Kill k falls once a share of the work is done, at a moment varied without a
        // random source, so every kill lands while work remains.
        let due = JOBS * (kill + 1) / (KILLS + 2) + (kill * 137) % 300;
        eventually(limit, "the workers made progress", || async {
            broker.queue_len("done").await.unwrap() as u64 >= due
        })
        .await;
        let (victim, identity) = workers.remove((kill % 2) as usize);
        eventually(limit, "the victim holds jobs", || async {
            !held(&url, &identity).await.is_empty()
        })
        .await;
        let done = done_tally.lock().await.update(&url).await as u64;
        assert!(
            done < JOBS,
            "work remains at kill {kill}: {done} of {JOBS} done"
        );
        let held = kill_dash_nine(&url, victim, &identity).await;
        assert!(
            !held.is_empty(),
            "kill {kill}: the victim held no job at its death"
        );
        held_total += held.len();
        held_at_kills.extend(held);
        let worker = spawn_worker(&url);
        let identity = identity_of(&url, &worker).await;
        workers.push((worker, identity));
    }
    eventually(limit, "every job completed", || async {
        done_tally.lock().await.update(&url).await as u64 == JOBS
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
    for (mut worker, _) in workers {
        worker.kill().unwrap();
        worker.wait().unwrap();
    }

    let ran = counts(&url, "ran").await;
    let repeated: Vec<u64> = ran
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    let lost = (0..JOBS).filter(|n| !ran.contains_key(n)).count();
    println!(
        "jobs={JOBS} kills={KILLS} ran={} repeated={} lost={lost} held_at_kills={held_total}",
        ran.len(),
        repeated.len(),
    );
    assert_eq!(lost, 0);
    let stray: Vec<_> = repeated
        .iter()
        .filter(|n| !held_at_kills.contains(*n))
        .collect();
    assert!(
        stray.is_empty(),
        "jobs run twice that no victim held: {stray:?}"
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

/// The lock keys (as stored) of a job: its queued lock and its running lease.
fn stored_keys<J: Job>(job: &J) -> (String, String) {
    let spec = J::OPTIONS.unique.expect("a unique job");
    let envelope = envelope(job);
    (
        format!("jobqueue:lock:{}", spec.queued_key(&envelope)),
        format!("jobqueue:lock:{}", spec.running_key(&envelope)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lock_mode_survives_kill_dash_nine() {
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let client = Client::new(broker.clone());
    let limit = Duration::from_secs(60);
    let lease = Duration::from_secs(60);

    let executed = LockedTick { n: 1, millis: 1500 };
    let exclusive = ExclusiveTick { n: 2, millis: 1500 };
    let starts = StartsTick { n: 3, millis: 1500 };
    let expires = ExpiresTick { n: 4, millis: 1500 };
    let guarded = GuardedTick { n: 5, millis: 1500 };
    client.enqueue(&executed).await.unwrap();
    client.enqueue(&exclusive).await.unwrap();
    client.enqueue(&starts).await.unwrap();
    client.enqueue(&expires).await.unwrap();
    client.enqueue(&guarded).await.unwrap();
    let (executed_queued, _) = stored_keys(&executed);
    let (_, exclusive_running) = stored_keys(&exclusive);
    let (starts_queued, _) = stored_keys(&starts);
    let (expires_queued, _) = stored_keys(&expires);
    let (guarded_queued, guarded_running) = stored_keys(&guarded);

    let worker = spawn_worker(&url);
    let identity = identity_of(&url, &worker).await;
    eventually(limit, "all five started", || async {
        broker.queue_len("ran").await.unwrap() == 5
    })
    .await;
    let held = kill_dash_nine_without_declaring(&url, worker, &identity).await;
    assert_eq!(held.len(), 5, "all five were running at the kill");

    // At the kill, each mode holds what it should, and nothing without a TTL.
    for (key, bound) in [
        (&executed_queued, LockedTick::OPTIONS.unique.unwrap().ttl),
        (&exclusive_running, lease),
        (&expires_queued, ExpiresTick::OPTIONS.unique.unwrap().ttl),
        (&guarded_running, lease),
    ] {
        assert!(
            redis_get(&url, key).await.is_some(),
            "{key} held at the kill"
        );
        let left = ttl(&url, key)
            .await
            .unwrap_or_else(|| panic!("{key} has no TTL"));
        assert!(left <= bound, "{key}: {left:?} left, over {bound:?}");
    }
    for key in [&starts_queued, &guarded_queued] {
        assert_eq!(
            redis_get(&url, key).await,
            None,
            "{key} released at the start"
        );
    }

    // Declared dead, its jobs are recovered, keep their ids and so their locks, and run.
    let _: i64 = redis::cmd("DEL")
        .arg(&identity)
        .query_async(&mut conn(&url).await)
        .await
        .unwrap();
    let mut survivor = spawn_worker(&url);
    eventually(limit, "all five finished", || async {
        counts(&url, "done").await.len() == 5
    })
    .await;
    eventually(
        limit,
        "every lock but the until-expired one is gone",
        || async { lock_keys(&url).await == [expires_queued.clone()] },
    )
    .await;
    assert!(client.enqueue(&executed).await.is_ok());
    assert!(client.enqueue(&starts).await.is_ok());
    assert!(client.enqueue(&guarded).await.is_ok());
    assert!(
        matches!(
            client.enqueue(&expires).await,
            Err(jobqueue::Error::Skipped { .. })
        ),
        "until_expired holds for its TTL"
    );
    survivor.kill().unwrap();
    survivor.wait().unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigtstp_makes_a_worker_quiet() {
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let limit = Duration::from_secs(60);
    let mut worker = spawn_worker(&url);
    let identity = identity_of(&url, &worker).await;
    let status = Command::new("kill")
        .args(["-TSTP", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let entry = |broker: RedisBroker, identity: String| async move {
        broker
            .processes()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.identity == identity)
            .expect("still registered")
    };
    eventually(limit, "the heartbeat says quiet", || async {
        entry(broker.clone(), identity.clone()).await.quiet
    })
    .await;
    let quiet_since = entry(broker.clone(), identity.clone()).await.beat;
    Client::new(broker.clone())
        .enqueue(&Tick { n: 1, millis: 1 })
        .await
        .unwrap();
    // Two more heartbeats: the process is alive and looping, yet takes nothing.
    eventually(limit, "two more heartbeats", || async {
        entry(broker.clone(), identity.clone()).await.beat
            > quiet_since + Duration::from_millis(300)
    })
    .await;
    assert_eq!(broker.queue_len("ticks").await.unwrap(), 1, "not taken");
    assert_eq!(broker.queue_len("ran").await.unwrap(), 0);
    assert!(
        sigterm(&mut worker).success(),
        "clean exit on SIGTERM after quiet"
    );
    assert_eq!(broker.queue_len("ticks").await.unwrap(), 1);
    drop(server);
}

/// The spans the limited ticks recorded, by key.
async fn spans(url: &str) -> HashMap<u64, Vec<Span>> {
    let mut by_key: HashMap<u64, Vec<Span>> = HashMap::new();
    for envelope in jobs_in(url, "queue:spans").await {
        let span: Span = serde_json::from_value(envelope.args[0].clone()).unwrap();
        by_key.entry(span.key).or_default().push(span);
    }
    by_key
}

/// The most spans that overlapped at any instant (one that ends as another starts does
/// not overlap it).
fn most_at_once(spans: &[Span]) -> usize {
    let mut edges: Vec<(f64, i32)> = spans
        .iter()
        .flat_map(|s| [(s.start, 1), (s.end, -1)])
        .collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

/// Three worker processes of concurrency 8 share 200 jobs of five shops, at most two of a
/// shop at once: the jobs' own records never show three of a shop at once, each shop does
/// use its two slots, and every job runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_across_processes() {
    const JOBS: u64 = 200;
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let jobs: Vec<ShopTick> = (0..JOBS)
        .map(|n| ShopTick {
            n,
            shop: n % 5,
            millis: 40,
        })
        .collect();
    Client::new(broker.clone())
        .enqueue_bulk(&jobs)
        .await
        .unwrap();
    let mut workers: Vec<Child> = (0..3).map(|_| spawn_worker(&url)).collect();
    eventually(Duration::from_secs(120), "every job ran", || async {
        spans(&url).await.values().map(Vec::len).sum::<usize>() as u64 == JOBS
    })
    .await;
    for worker in &mut workers {
        worker.kill().unwrap();
        worker.wait().unwrap();
    }
    let by_shop = spans(&url).await;
    let ran = counts(&url, "ran").await;
    assert_eq!(ran.len() as u64, JOBS);
    assert!(ran.values().all(|c| *c == 1), "a job ran twice");
    for (shop, spans) in &by_shop {
        let most = most_at_once(spans);
        println!("shop {shop}: {} jobs, at most {most} at once", spans.len());
        assert_eq!(most, 2, "shop {shop} ran {most} jobs at once");
    }
    drop(server);
}

/// Three worker processes share 60 jobs of two accounts, at most ten starts of an account
/// in two seconds: no 1.5 s of the jobs' own start times holds more than ten of an account.
/// The slots are taken at fetch and a job starts a moment later (later still when its
/// process stalls on a loaded machine), so the check allows that delay (`SLACK`), a quarter
/// of the period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_processes() {
    const JOBS: u64 = 60;
    const PERIOD: f64 = 2.0;
    const SLACK: f64 = 0.5;
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    // The workers are up and waiting before the jobs come, so no start waits on a
    // process's own start-up.
    let mut workers: Vec<Child> = (0..3).map(|_| spawn_worker(&url)).collect();
    for worker in &workers {
        identity_of(&url, worker).await;
    }
    let jobs: Vec<PacedTick> = (0..JOBS).map(|n| PacedTick { n, account: n % 2 }).collect();
    Client::new(broker.clone())
        .enqueue_bulk(&jobs)
        .await
        .unwrap();
    eventually(Duration::from_secs(120), "every job ran", || async {
        spans(&url).await.values().map(Vec::len).sum::<usize>() as u64 == JOBS
    })
    .await;
    for worker in &mut workers {
        worker.kill().unwrap();
        worker.wait().unwrap();
    }
    for (account, spans) in spans(&url).await {
        let mut starts: Vec<f64> = spans.iter().map(|s| s.start).collect();
        starts.sort_by(f64::total_cmp);
        let closest = starts
            .windows(11)
            .map(|w| w[10] - w[0])
            .reduce(f64::min)
            .unwrap();
        let took = starts[starts.len() - 1] - starts[0];
        println!(
            "account {account}: {} starts over {took:.2} s; eleven starts span at least {closest:.3} s",
            starts.len()
        );
        assert!(
            closest >= PERIOD - SLACK,
            "account {account}: eleven starts within {closest:.3} s"
        );
    }
    drop(server);
}

/// A worker holding both slots of a shop is killed with `kill -9`. Its slots live as long
/// as its heartbeat: once it is found dead, another worker recovers its two jobs and runs
/// them and the shop's waiting jobs, never more than two at once. Nothing is lost, and only
/// the two jobs it held run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_of_a_killed_process_free_when_it_is_found_dead() {
    const JOBS: u64 = 20;
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let jobs: Vec<ShopTick> = (0..JOBS)
        .map(|n| ShopTick {
            n,
            shop: 7,
            millis: if n < 2 { 3000 } else { 100 },
        })
        .collect();
    Client::new(broker.clone())
        .enqueue_bulk(&jobs)
        .await
        .unwrap();
    let (slots, parked) = (
        "jobqueue:limit:ShopTick:concurrency:7",
        "jobqueue:parked:ShopTick:concurrency:7",
    );
    let victim = spawn_worker(&url);
    let identity = identity_of(&url, &victim).await;
    eventually(
        Duration::from_secs(60),
        "the victim runs two jobs",
        || async { counts(&url, "ran").await.len() == 2 },
    )
    .await;
    let mut c = conn(&url).await;
    let waiting: usize = redis::cmd("LLEN")
        .arg(parked)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        waiting,
        JOBS as usize - 2,
        "the rest wait for the shop's slots"
    );
    let held_at_kill = kill_dash_nine_without_declaring(&url, victim, &identity).await;
    assert_eq!(held_at_kill.len(), 2);
    // A concurrency key's slots: an entry per running job, `JID@PROCESS`.
    let held: Vec<String> = redis::cmd("LRANGE")
        .arg(slots)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    let suffix = format!("@{identity}");
    assert!(
        held.len() == 2 && held.iter().all(|slot| slot.ends_with(&suffix)),
        "the dead process still holds the shop's slots: {held:?}"
    );

    let mut survivor = spawn_worker(&url);
    let _: i64 = redis::cmd("DEL")
        .arg(&identity)
        .query_async(&mut c)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "every job ran to its end",
        || async { spans(&url).await.get(&7).map_or(0, Vec::len) as u64 == JOBS },
    )
    .await;
    survivor.kill().unwrap();
    survivor.wait().unwrap();
    let ran = counts(&url, "ran").await;
    assert_eq!(ran.len() as u64, JOBS, "no job lost");
    let twice: HashSet<u64> = ran
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(twice, held_at_kill.into_iter().collect::<HashSet<_>>());
    assert_eq!(most_at_once(&spans(&url).await[&7]), 2);
    drop(server);
}

/// Jobs a worker fetched into its prefetch buffer and had not started when it was killed
/// did nothing to kill it: recovering them is not an interruption of theirs, and none of
/// them may reach the dead set as a poison pill (`jobqueue::Interrupted`).
///
/// Each victim (concurrency 8, so a buffer of 16) is killed once its eight slots have
/// started their jobs (of 25 to 75 ms) and before the first of them ends, so eight of the
/// jobs it holds wait in its buffer; a worker in this process that takes no ticks recovers
/// them to the front of their queue, and the next victim takes the same ones first. Three
/// such kills, then two later in the run, then a survivor runs the rest. A job that started
/// has pushed its number to `ran`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_waiting_in_a_killed_workers_buffer_are_not_poison_pills() {
    const JOBS: u64 = 400;
    const KILLS: usize = 5;
    const SLOTS: usize = 8;
    let server = RedisServer::start();
    let url = server.url();
    let broker = RedisBroker::connect(&url).await.unwrap();
    let jobs: Vec<Tick> = (0..JOBS)
        .map(|n| Tick {
            n,
            millis: 25 + (n * 37) % 51,
        })
        .collect();
    Client::new(broker.clone())
        .enqueue_bulk(&jobs)
        .await
        .unwrap();
    let recoverer = support::start(
        jobqueue::Worker::builder(broker.clone())
            .config(support::fast_config())
            .queues(jobqueue::Queues::strict(["elsewhere"]))
            .register::<Tick>(),
    );

    let limit = Duration::from_secs(60);
    let mut held_at_kills: Vec<HashSet<u64>> = Vec::new();
    let mut unstarted_at_kills: HashSet<u64> = HashSet::new();
    for kill in 0..KILLS {
        let ran_before = broker.queue_len("ran").await.unwrap();
        let victim = spawn_worker(&url);
        let identity = identity_of(&url, &victim).await;
        if kill >= 3 {
            // Later moments: once the victim has finished a share of the work.
            eventually(limit, "the victim made progress", || async {
                broker.queue_len("done").await.unwrap() as u64 >= 100 * (kill as u64 - 1)
            })
            .await;
        }
        eventually(limit, "the victim's slots all started", || async {
            broker.queue_len("ran").await.unwrap() >= ran_before + SLOTS
                && held(&url, &identity).await.len() > SLOTS
        })
        .await;
        let at_kill: HashSet<u64> = kill_dash_nine(&url, victim, &identity)
            .await
            .into_iter()
            .collect();
        let started: HashSet<u64> = counts(&url, "ran").await.into_keys().collect();
        unstarted_at_kills.extend(at_kill.difference(&started));
        held_at_kills.push(at_kill);
        eventually(limit, "the victim's jobs were recovered", || async {
            held(&url, &identity).await.is_empty()
        })
        .await;
    }
    let mut survivor = spawn_worker(&url);
    eventually(limit, "every job completed or died", || async {
        let mut finished: HashSet<u64> = counts(&url, "done").await.into_keys().collect();
        finished.extend(poison_pills(&broker).await);
        finished.len() as u64 == JOBS
    })
    .await;
    eventually(limit, "no job left in any in-flight list", || async {
        in_flight_total(&url).await == 0
    })
    .await;
    survivor.kill().unwrap();
    survivor.wait().unwrap();
    recoverer.stop().await;

    let ran = counts(&url, "ran").await;
    let dead = poison_pills(&broker).await;
    let never_started: Vec<u64> = {
        let mut never: Vec<u64> = dead
            .iter()
            .filter(|n| !ran.contains_key(n))
            .copied()
            .collect();
        never.sort_unstable();
        never
    };
    let started_less_than_thrice = dead
        .iter()
        .filter(|n| ran.get(n).copied().unwrap_or(0) < 3)
        .count();
    println!(
        "jobs={JOBS} kills={KILLS} held_at_kills={:?} unstarted_at_kills={} dead={} \
         dead_never_started={} dead_started_less_than_thrice={started_less_than_thrice}",
        held_at_kills.iter().map(HashSet::len).collect::<Vec<_>>(),
        unstarted_at_kills.len(),
        dead.len(),
        never_started.len(),
    );
    assert!(
        !unstarted_at_kills.is_empty(),
        "no victim held a job it had not started: the kills tested nothing"
    );
    let held_thrice: HashSet<u64> = dead
        .iter()
        .filter(|n| held_at_kills.iter().filter(|h| h.contains(n)).count() >= 3)
        .copied()
        .collect();
    assert_eq!(held_thrice, dead, "a job died of fewer than three kills");
    assert!(
        never_started.is_empty(),
        "jobs that never started reached the dead set as poison pills: {never_started:?}"
    );
    drop(server);
}
