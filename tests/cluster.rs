//! Faults on a real Redis Cluster (three masters with a replica each, on loopback): `kill -9`
//! of worker processes, a master killed under load and replaced by its replica, a manual
//! failover (`CLUSTER FAILOVER`), and slots moved between masters during a run. Each
//! counts every job by number: none lost, and a job runs again only if it was under way
//! when the fault struck.
//!
//! The conformance suite runs on a cluster too (`tests/conformance.rs`).

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use jobqueue::{Broker, BrokerError, Client, ClusterBroker, ClusterConfig, Envelope, Queues};
use support::ticks::Tick;
use support::{eventually, poison_pills, start, RedisCluster};

const LIMIT: Duration = Duration::from_secs(120);

/// How many times each job number appears in `queue` (the ticks' run records).
async fn counts(broker: &ClusterBroker, queue: &str) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for payload in broker.queue_range(queue, 0, usize::MAX / 2).await.unwrap() {
        let n = Envelope::parse(&payload).unwrap().args[0]["n"]
            .as_u64()
            .unwrap();
        *counts.entry(n).or_default() += 1;
    }
    counts
}

/// Checks, by job number, that every job completed and that only jobs `under_way` at the
/// fault ran more than once, and that the queue is empty; prints the counts after `what`.
async fn assert_none_lost_repeats_only_under_way(
    broker: &ClusterBroker,
    jobs: u64,
    under_way: &HashSet<u64>,
    what: String,
    kept_dead: &HashSet<u64>,
) {
    let ran = counts(broker, "ran").await;
    let done = counts(broker, "done").await;
    let repeated: Vec<u64> = ran
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    let lost: Vec<u64> = (0..jobs)
        .filter(|n| !done.contains_key(n) && !kept_dead.contains(n))
        .collect();
    println!(
        "jobs={jobs} {what} under_way={} repeated={} lost={}",
        under_way.len(),
        repeated.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    let stray: Vec<_> = repeated.iter().filter(|n| !under_way.contains(n)).collect();
    assert!(
        stray.is_empty(),
        "jobs ran twice that were not under way at the fault: {stray:?}"
    );
    assert_eq!(broker.queue_len("ticks").await.unwrap(), 0);
}

/// A broker whose pushes wait for a replica, so that no acknowledged job or run record is
/// lost when a master dies.
async fn durable(cluster: &RedisCluster) -> ClusterBroker {
    let config = ClusterConfig::new(&cluster.urls()).wait_for_replicas(1, Duration::from_secs(5));
    ClusterBroker::connect_with(config).await.unwrap()
}

/// An in-process worker on `broker` running ticks.
fn tick_worker(broker: &ClusterBroker) -> support::Running {
    start(
        jobqueue::Worker::builder(broker.clone())
            .config(support::fast_config())
            .queues(Queues::strict(["ticks"]))
            .concurrency(8)
            .register::<Tick>(),
    )
}

/// Enqueues `jobs` ticks of 20 ms and runs them on an in-process worker; returns the
/// worker once 100 have completed, so that a fault strikes mid-run.
async fn run_ticks(broker: &ClusterBroker, jobs: u64) -> support::Running {
    enqueue_ticks(broker, jobs, 20).await;
    let worker = tick_worker(broker);
    eventually(LIMIT, "the worker made progress", || async {
        broker.queue_len("done").await.unwrap() >= 100
    })
    .await;
    worker
}

async fn enqueue_ticks(broker: &ClusterBroker, jobs: u64, millis: u64) {
    let ticks: Vec<Tick> = (0..jobs).map(|n| Tick { n, millis }).collect();
    Client::new(broker.clone())
        .enqueue_bulk(&ticks)
        .await
        .unwrap();
}

/// Waits until every job has completed after `fault`, stops the worker, and checks that
/// none was lost and that only jobs `under_way` at the fault ran twice.
async fn finish_after(
    broker: &ClusterBroker,
    worker: support::Running,
    jobs: u64,
    under_way: &HashSet<u64>,
    fault: &str,
    done_before: usize,
) {
    eventually(
        LIMIT,
        &format!("every job completed after the {fault}"),
        || async {
            matches!(broker.queue_len("done").await, Ok(n) if n >= jobs as usize)
                && done_now(broker).await.len() == jobs as usize
        },
    )
    .await;
    worker.stop().await;
    let what = format!("done_before_{fault}={done_before}");
    assert_none_lost_repeats_only_under_way(broker, jobs, under_way, what, &HashSet::new()).await;
}

/// Jobs that may run again after a fault: those with a run record by the end of the fault
/// that had not completed before it began.
async fn under_way(broker: &ClusterBroker, done_before: &HashSet<u64>) -> HashSet<u64> {
    counts(broker, "ran")
        .await
        .into_keys()
        .filter(|n| !done_before.contains(n))
        .collect()
}

async fn done_now(broker: &ClusterBroker) -> HashSet<u64> {
    counts(broker, "done").await.into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_fails_over_and_loses_no_job() {
    const JOBS: u64 = 600;
    // Two replicas each: the replica that takes over still has one to confirm pushes.
    let cluster =
        tokio::task::spawn_blocking(|| RedisCluster::start_with(2, Duration::from_secs(1)))
            .await
            .unwrap();
    let broker = durable(&cluster).await;
    let worker = run_ticks(&broker, JOBS).await;

    let done_before = done_now(&broker).await;
    let victim = cluster.masters()[0].0;
    let mut cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.kill_master(victim);
        cluster
    })
    .await
    .unwrap();
    let under_way = under_way(&broker, &done_before).await;
    // The operator restarts the dead node: it rejoins as the new master's replica.
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(victim);
        cluster
    })
    .await
    .unwrap();
    assert!(
        done_before.len() < JOBS as usize,
        "the master died while jobs were left"
    );

    finish_after(&broker, worker, JOBS, &under_way, "kill", done_before.len()).await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_during_a_run_loses_no_job_and_fails_no_call() {
    const JOBS: u64 = 600;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let broker = durable(&cluster).await;
    let worker = run_ticks(&broker, JOBS).await;

    // An operator swaps a master and its replica; the old master stays up, as a replica
    // that answers its old slots' keys with MOVED.
    let done_before = done_now(&broker).await;
    let master = cluster.masters()[0].0;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.fail_over(master);
        cluster
    })
    .await
    .unwrap();
    let under_way = under_way(&broker, &done_before).await;
    assert!(
        done_before.len() < JOBS as usize,
        "the failover came while jobs were left"
    );
    // Scripts and commands on every shard work at once: none waits out a timeout.
    for shard_call in 0..10 {
        let absent = jobqueue::backend::Move::done(format!("absent-{shard_call}"));
        let from = jobqueue::backend::Source::Set(jobqueue::SortedSet::Retry);
        broker
            .settle(from, &[absent])
            .await
            .expect("a script on every shard right after the failover");
    }
    broker
        .queue_len("ticks")
        .await
        .expect("a queue's size right after the failover");

    finish_after(
        &broker,
        worker,
        JOBS,
        &under_way,
        "failover",
        done_before.len(),
    )
    .await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_during_a_run_loses_no_job() {
    const JOBS: u64 = 600;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let broker = ClusterBroker::connect(&cluster.urls()).await.unwrap();
    let worker = run_ticks(&broker, JOBS).await;

    // Every slot of one master, its shard's among them, moves to another, keys and all.
    let done_before = done_now(&broker).await;
    let masters = cluster.masters();
    let (from, to) = (masters[0].1.clone(), masters[1].1.clone());
    let source = from.clone();
    let cluster = tokio::task::spawn_blocking(move || {
        let slots = cluster.slot_count(&from);
        cluster.reshard(&from, &to, slots);
        cluster
    })
    .await
    .unwrap();
    let under_way = under_way(&broker, &done_before).await;
    assert!(
        done_before.len() < JOBS as usize,
        "the slots moved while jobs were left"
    );
    assert_eq!(cluster.slot_count(&source), 0, "the source serves no slot");

    finish_after(
        &broker,
        worker,
        JOBS,
        &under_way,
        "reshard",
        done_before.len(),
    )
    .await;
}

fn spawn_worker(urls: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_jobqueue-test-worker"))
        .args([urls, "8", "25000"])
        .spawn()
        .expect("start the test worker")
}

/// The identity of the worker process `child`, once it has registered.
async fn identity_of(broker: &ClusterBroker, child: &Child) -> String {
    let needle = format!(":{}:", child.id());
    let start = std::time::Instant::now();
    loop {
        let processes = broker.processes().await.unwrap();
        if let Some(p) = processes.into_iter().find(|p| p.identity.contains(&needle)) {
            return p.identity;
        }
        assert!(start.elapsed() < LIMIT, "the worker never registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_of_workers_loses_no_job_on_a_cluster() {
    const JOBS: u64 = 300;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let urls = cluster.urls();
    let broker = ClusterBroker::connect(&urls).await.unwrap();
    enqueue_ticks(&broker, JOBS, 30).await;

    let mut held_at_kills = HashSet::new();
    let mut identities = Vec::new();
    for round in 1..=3usize {
        let mut victim = spawn_worker(&urls);
        let identity = identity_of(&broker, &victim).await;
        identities.push(identity.clone());
        eventually(LIMIT, "the worker made progress", || async {
            broker.queue_len("done").await.unwrap() >= round * 40
        })
        .await;
        victim.kill().unwrap();
        victim.wait().unwrap();
        // What it held, from its in-flight lists on every shard; then it is declared dead.
        let held = broker.in_flight(&identity).await.unwrap();
        assert!(!held.is_empty(), "the worker held jobs when it was killed");
        held_at_kills.extend(
            held.iter()
                .map(|p| Envelope::parse(p).unwrap().args[0]["n"].as_u64().unwrap()),
        );
        broker.forget(&identity).await.unwrap();
    }

    let mut survivor = spawn_worker(&urls);
    identities.push(identity_of(&broker, &survivor).await);
    // A job held at each of the three kills has been interrupted three times: it is a
    // likely poison pill and goes to the dead set, kept, not run again.
    let start = std::time::Instant::now();
    while done_now(&broker).await.len() + poison_pills(&broker).await.len() < JOBS as usize {
        if start.elapsed() > LIMIT {
            let whereabouts = whereabouts(&broker, JOBS, &identities, &mut survivor).await;
            let _ = survivor.kill();
            panic!("gave up after {LIMIT:?} waiting for every job: {whereabouts}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    survivor.kill().unwrap();
    survivor.wait().unwrap();
    let poisoned = poison_pills(&broker).await;
    assert!(
        poisoned.is_subset(&held_at_kills),
        "only jobs held at the kills died of them: {poisoned:?}"
    );
    let what = format!(
        "kills=3 (under way: held at the kills) poison_pills={}",
        poisoned.len()
    );
    assert_none_lost_repeats_only_under_way(&broker, JOBS, &held_at_kills, what, &poisoned).await;
}

/// Where the jobs not yet done are, for a failure's message: how many are queued, what
/// each process (the victims, then the survivor) holds in flight and whether it is still
/// registered, and whether the survivor still runs.
async fn whereabouts(
    broker: &ClusterBroker,
    jobs: u64,
    identities: &[String],
    survivor: &mut Child,
) -> String {
    let done = done_now(broker).await;
    let missing: Vec<u64> = (0..jobs).filter(|n| !done.contains(n)).collect();
    let registered: Vec<String> = broker
        .processes()
        .await
        .map(|ps| ps.into_iter().map(|p| p.identity).collect())
        .unwrap_or_default();
    let mut text = format!(
        "{} not done (first: {:?}); {:?} queued; survivor exited: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)],
        broker.queue_len("ticks").await,
        survivor.try_wait(),
    );
    for identity in identities {
        let held = broker.in_flight(identity).await.map(|h| h.len());
        let listed = registered.contains(identity);
        text.push_str(&format!(
            "; {identity}: {held:?} in flight, registered: {listed}"
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_waits_for_replicas_and_says_when_they_fall_short() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let tick = Tick { n: 1, millis: 0 };
    // One replica per master: a push waiting for it succeeds.
    let one = durable(&cluster).await;
    Client::new(one.clone()).enqueue(&tick).await.unwrap();
    // Two are never there: the push is refused as unconfirmed, and its job is queued.
    let config =
        ClusterConfig::new(&cluster.urls()).wait_for_replicas(2, Duration::from_millis(200));
    let two: Arc<dyn Broker> = ClusterBroker::connect_with(config).await.unwrap().into();
    let err = Client::new(Arc::clone(&two))
        .enqueue(&tick)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            jobqueue::Error::Broker(BrokerError::NotReplicated {
                acked: 1,
                wanted: 2
            })
        ),
        "{err}"
    );
    assert_eq!(one.queue_len("ticks").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_spread_over_every_master() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let broker = ClusterBroker::connect(&cluster.urls()).await.unwrap();
    assert_eq!(broker.shard_count(), 3, "one shard per master by default");
    let before = cluster.commands_per_master();
    enqueue_ticks(&broker, 3000, 0).await;
    let after = cluster.commands_per_master();
    let pushes: Vec<u64> = after
        .iter()
        .map(|(port, n)| n - before.iter().find(|(p, _)| p == port).map_or(0, |b| b.1))
        .collect();
    println!("commands per master for 3000 pushes: {pushes:?}");
    assert_eq!(pushes.len(), 3);
    let (least, most) = (pushes.iter().min().unwrap(), pushes.iter().max().unwrap());
    assert!(
        *least > 0 && most / least < 2,
        "every master served a like share: {pushes:?}"
    );
    assert_eq!(broker.queue_len("ticks").await.unwrap(), 3000);
    // The jobs themselves: a third on each master.
    let keys = cluster.keys_per_master();
    assert!(keys.iter().all(|(_, n)| *n > 0), "{keys:?}");
}
