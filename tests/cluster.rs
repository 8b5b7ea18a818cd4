//! Faults on a real Redis Cluster (three masters with replicas, on loopback): `kill -9`
//! of worker processes, a master killed under load and replaced by its replica (with and
//! without `wait_for_replicas`), both at once, a manual failover (`CLUSTER FAILOVER`), the
//! slot of a shard moved between masters during a run, a process forgotten while it still
//! ran, and a shard failing in the middle of a fetch. Each counts every job by number: none
//! lost, a job runs again only if it could (it was held by a victim, unfinished on a dead
//! master, or under way during a move), and each ends with nothing queued, nothing in any
//! in-flight list on any shard and no job's lock left.
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

/// A master killed under load, its replica taking over, the node restarted (it rejoins as
/// a replica): `replicas` replicas per master, pushes waiting for one of them when
/// `wait_for_replicas`. The run records go to the first shard, on another master, so that
/// they are never lost with it. Every job completes; a job runs twice only if it was
/// unfinished on the killed master (see [`unfinished_at_death`]): a fetch or
/// acknowledgement it made just before dying may be undone by the failover. A job whose
/// acknowledgement was undone is back in its worker's in-flight list, unseen by that live
/// worker: stopped, the worker hands it back, and a second worker runs it. Then nothing is
/// queued, in flight or locked.
async fn master_killed_under_load(replicas: usize, wait_for_replicas: bool) {
    const JOBS: u64 = 1500;
    let cluster = tokio::task::spawn_blocking(move || {
        RedisCluster::start_with(replicas, Duration::from_secs(1))
    })
    .await
    .unwrap();
    let mut config = ClusterConfig::new(&cluster.urls())
        .queue_shards("ran", 1)
        .queue_shards("done", 1);
    if wait_for_replicas {
        config = config.wait_for_replicas(1, Duration::from_secs(5));
    }
    let broker = ClusterBroker::connect_with(config).await.unwrap();
    let worker = run_ticks(&broker, JOBS).await;

    let tag = "{jobqueue-1}";
    let victim = cluster.master_of(tag);
    assert_ne!(
        victim,
        cluster.master_of("{jobqueue-3}"),
        "the records stay up"
    );
    let unfinished = unfinished_at_death(&cluster, victim, tag, replicas).await;
    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.kill_master(victim);
        // The operator restarts the dead node: it rejoins as the new master's replica.
        cluster.restart(victim);
        cluster
    })
    .await
    .unwrap();
    let done_at_restart = broker.queue_len("done").await.unwrap();
    assert!(
        !unfinished.is_empty(),
        "the master died holding unfinished jobs"
    );
    eventually(LIMIT, "every job completed after the kill", || async {
        done_now(&broker).await.len() == JOBS as usize
    })
    .await;
    worker.stop().await;
    let handed_back = broker.queue_len("ticks").await.unwrap();
    let second = tick_worker(&broker);
    eventually(LIMIT, "nothing queued", || async {
        broker.queue_len("ticks").await.unwrap() == 0
    })
    .await;
    second.stop().await;
    let what = format!(
        "replicas={replicas} wait_for_replicas={wait_for_replicas} \
         unfinished_on_the_dead_master={} done_at_restart={done_at_restart} \
         handed_back={handed_back}",
        unfinished.len()
    );
    assert_none_lost_repeats_only_under_way(&broker, JOBS, &unfinished, what, &HashSet::new())
        .await;
    assert_ends_clean(&broker, &cluster).await;
}

/// Pushes wait for a replica; two replicas each, so the one that takes over still has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_fails_over_and_loses_no_job() {
    master_killed_under_load(2, true).await;
}

/// The default mode: pushes do not wait; one replica each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_without_waiting_for_replicas_loses_no_job() {
    master_killed_under_load(1, false).await;
}

/// An operator swaps the master of the home (processes, heartbeats) and of a shard with its
/// replica (`CLUSTER FAILOVER`): the old master stays up, as a replica that answers its old
/// slots with `MOVED`. A worker process runs through the switch: its calls meet it (the old
/// master answered some with `MOVED`, counted by its `INFO errorstats`, while nothing else
/// called the cluster), none fails (its log has no warning), and nothing runs twice (a
/// manual failover waits for the replica to catch up, so no write is lost). A client idle
/// through the switch then makes transactions (a heartbeat, a cancellation, a signal) as
/// its first calls to the moved slots: each follows the redirection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_during_a_run_loses_no_job_and_fails_no_call() {
    const JOBS: u64 = 1500;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let urls = cluster.urls();
    let broker = durable(&cluster).await;
    enqueue_ticks(&broker, JOBS, 30).await;
    let idle = ClusterBroker::connect(&urls).await.unwrap();
    let dir = logs_dir("manual-failover");
    let mut worker = spawn_logged(&broker, &urls, &dir).await;
    eventually(LIMIT, "the worker made progress", || async {
        broker.queue_len("done").await.unwrap() >= 100
    })
    .await;

    let master = cluster.master_of("{jobqueue}");
    let held = in_flight_on(&cluster, master);
    assert!(
        held > 0,
        "jobs were in flight on the master when the switch began"
    );
    let moved_before = cluster.errors(master, "MOVED");
    // From here until the counts are read, only the worker calls the cluster.
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.fail_over(master);
        cluster
    })
    .await
    .unwrap();
    let redirected = cluster.errors(master, "MOVED") - moved_before;
    let done_at_switch = broker.queue_len("done").await.unwrap();
    println!("in flight on the old master at the switch: {held}; its MOVED answers: {redirected}");
    assert!(
        done_at_switch < JOBS as usize,
        "the switch ended while jobs were left"
    );
    assert!(redirected > 0, "the worker's calls met the switch");

    // The idle client's first calls to the home's slot since the switch: transactions.
    idle.signal("absent-process", "TSTP")
        .await
        .expect("a signal, first call after the switch");
    support::heartbeat::beat(&idle, "idle-client:1:000000000000", Duration::from_secs(60)).await;
    // Scripts and commands on every shard work at once: none waits out a timeout.
    for shard_call in 0..10 {
        let absent = jobqueue::backend::Move::done(format!("absent-{shard_call}"));
        let from = jobqueue::backend::Source::Set(jobqueue::SortedSet::Retry);
        idle.settle(from, &[absent])
            .await
            .expect("a script on every shard right after the failover");
    }
    idle.forget("idle-client:1:000000000000").await.unwrap();

    eventually(LIMIT, "every job completed after the switch", || async {
        done_now(&broker).await.len() == JOBS as usize
    })
    .await;
    assert!(
        sigterm(&mut worker.child).success(),
        "the worker stopped cleanly"
    );
    assert_eq!(
        warnings(&worker),
        Vec::<String>::new(),
        "the worker's calls all succeeded"
    );
    let repeated: Vec<u64> = counts(&broker, "ran")
        .await
        .into_iter()
        .filter(|(_, c)| *c > 1)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(repeated, Vec::<u64>::new(), "no job ran twice");
    assert_ends_clean(&broker, &cluster).await;
}

/// The slot of the queue's shard moves to another master while a worker fetches and
/// acknowledges its jobs (every job on that one shard), as `redis-cli --cluster reshard`
/// moves it: the target imports the slot, its keys are migrated, then every master learns
/// the new owner. The worker meets the move: jobs are in flight on the moving shard when
/// it begins, its calls are redirected with `ASK` while the slot is migrating (at least 20,
/// counted by the source's `INFO errorstats`), and jobs remain when the slot is handed
/// over. None is lost, and nothing is left behind. A job under way
/// during the move (run between its start and the hand-over) may run twice: redis-rs sends
/// the `ASKING` of a redirected call apart from it, another call on the same connection
/// can take it, and the call then fails (a job whose run record fails is retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_during_a_run_loses_no_job() {
    const JOBS: u64 = 1500;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let config = ClusterConfig::new(&cluster.urls()).queue_shards("ticks", 1);
    let broker = ClusterBroker::connect_with(config).await.unwrap();
    let worker = run_ticks(&broker, JOBS).await;

    // The first shard's slot moves, with every job of the queue.
    let slot = cluster.slot_of("{jobqueue-3}");
    let from = cluster.master_of("{jobqueue-3}");
    let to = cluster
        .masters()
        .into_iter()
        .map(|(p, _)| p)
        .find(|p| *p != from)
        .unwrap();
    let held = in_flight_on(&cluster, from);
    assert!(
        held > 0,
        "jobs were in flight on the moving shard when the move began"
    );
    let (ask_before, moved_before) = (cluster.errors(from, "ASK"), cluster.errors(from, "MOVED"));
    let done_before = done_now(&broker).await;
    cluster.begin_migration(slot, from, to);
    let keys = cluster.migrate_keys(slot, from, to);
    // The test's own reads are tried again: redis-rs sends ASKING apart from the command
    // it redirects, so another call on the same connection can take its place.
    let done_count = || through_faults("counting completed jobs", || broker.queue_len("done"));
    let done_migrating = done_count().await;
    eventually(LIMIT, "calls met the migrating slot", || async {
        cluster.errors(from, "ASK") >= ask_before + 20
    })
    .await;
    let asked = cluster.errors(from, "ASK") - ask_before;
    let done_at_end_of_migration = done_count().await;
    cluster.end_migration(slot, to);
    let under_way = under_way(&broker, &done_before).await;
    let done_moved = done_count().await;
    assert!(
        done_moved < JOBS as usize,
        "the move ended while jobs were left"
    );
    eventually(LIMIT, "every job completed after the move", || async {
        done_now(&broker).await.len() == JOBS as usize
    })
    .await;
    let moved = cluster.errors(from, "MOVED") - moved_before;
    println!(
        "in flight at the start: {held}; keys migrated: {keys}; ASK answers while migrating: \
         {asked}; MOVED answers after: {moved}; done when the keys had moved \
         {done_migrating}, when the slot was handed over {done_at_end_of_migration}, then \
         {done_moved}"
    );
    assert_eq!(in_flight_on(&cluster, from), 0, "the source holds nothing");
    worker.stop().await;
    let what = format!("done_when_migrating={done_migrating}");
    assert_none_lost_repeats_only_under_way(&broker, JOBS, &under_way, what, &HashSet::new()).await;
    assert_ends_clean(&broker, &cluster).await;
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
    assert!(
        sigterm(&mut survivor).success(),
        "the survivor stopped cleanly"
    );
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
    assert_ends_clean(&broker, &cluster).await;
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

/// A worker process of the test binary, with its identity and the file its warnings go to.
struct WorkerProcess {
    child: Child,
    identity: String,
    log: std::path::PathBuf,
}

impl Drop for WorkerProcess {
    /// A failed test leaves no worker process running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `call` until it succeeds: the test's own reads and writes ride out a failover as
/// a worker's calls do. Gives up after [`LIMIT`].
async fn through_faults<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BrokerError>>,
{
    let start = std::time::Instant::now();
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) => assert!(start.elapsed() < LIMIT, "{what} kept failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a worker process logging its warnings to a file in `dir`, and waits until it has
/// registered.
async fn spawn_logged(broker: &ClusterBroker, urls: &str, dir: &std::path::Path) -> WorkerProcess {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = dir.join(format!("worker-{n}.log"));
    let file = std::fs::File::create(&log).expect("create a worker's log");
    let child = Command::new(env!("CARGO_BIN_EXE_jobqueue-test-worker"))
        .args([urls, "8", "25000"])
        .stderr(file)
        .spawn()
        .expect("start the test worker");
    let needle = format!(":{}:", child.id());
    let mut worker = WorkerProcess {
        child,
        identity: String::new(),
        log,
    };
    let start = std::time::Instant::now();
    loop {
        if let Ok(processes) = broker.processes().await {
            if let Some(p) = processes.into_iter().find(|p| p.identity.contains(&needle)) {
                worker.identity = p.identity;
                return worker;
            }
        }
        assert_running(std::slice::from_mut(&mut worker));
        assert!(start.elapsed() < LIMIT, "the worker never registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The end of a worker's log.
fn log_tail(worker: &WorkerProcess) -> String {
    let text = std::fs::read_to_string(&worker.log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Panics, with its log, if a worker process has exited by itself.
fn assert_running(workers: &mut [WorkerProcess]) {
    for worker in workers {
        if let Ok(Some(status)) = worker.child.try_wait() {
            panic!(
                "worker {} exited by itself ({status}):\n{}",
                worker.identity,
                log_tail(worker)
            );
        }
    }
}

/// Every in-flight list on every master: (port, key, length).
fn in_flight_lists(cluster: &RedisCluster) -> Vec<(u16, String, usize)> {
    cluster
        .keys("*jobqueue:inflight:*")
        .into_iter()
        .map(|(port, key)| {
            let len = cluster.command(port, &["LLEN", &key]);
            (port, key, len.trim().parse().unwrap_or(0))
        })
        .filter(|(_, _, len)| *len > 0)
        .collect()
}

/// What each shard's master knows of the processes holding jobs in flight: the fetchers
/// set and the process marks, for a failure's message.
fn shard_marks(cluster: &RedisCluster) -> String {
    let mut text = String::new();
    for (port, key) in cluster.keys("*jobqueue:fetchers") {
        let members = cluster.command(port, &["SMEMBERS", &key]);
        text.push_str(&format!("\n{port} {key}: {}", members.replace('\n', " ")));
        for member in members.lines().filter(|m| !m.is_empty()) {
            let tag = key.split(':').next().unwrap_or_default();
            let mark = format!("{tag}:{member}");
            let ttl = cluster.command(port, &["TTL", &mark]);
            text.push_str(&format!("\n  mark {mark} ttl {}", ttl.trim()));
        }
    }
    text
}

/// The jobs a master still held unfinished when it died: its shard's queue, in-flight
/// lists and retry set, read in one transaction on the master `port` (serving the shard
/// `tag`) together with a write, then `WAIT`ed for until every replica has that write.
/// Anything the master did before the read is on the replicas; what it did between the
/// read and its death, which a failover may undo (a fetch, an acknowledgement), touched
/// only jobs listed here. Call it right before the kill.
async fn unfinished_at_death(
    cluster: &RedisCluster,
    port: u16,
    tag: &str,
    replicas: usize,
) -> HashSet<u64> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let lists: Vec<String> = cluster
        .keys(&format!("{tag}:jobqueue:inflight:*"))
        .into_iter()
        .filter(|(p, _)| *p == port)
        .map(|(_, key)| key)
        .chain([format!("{tag}:queue:ticks")])
        .collect();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for list in &lists {
        pipe.lrange(list, 0, -1);
    }
    pipe.zrange(format!("{tag}:retry"), 0, -1)
        .incr(format!("{tag}:test:probe"), 1)
        .ignore();
    let read: Vec<Vec<String>> = pipe.query_async(&mut conn).await.unwrap();
    let acked: usize = redis::cmd("WAIT")
        .arg(replicas)
        .arg(5000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acked, replicas, "every replica has what the master did");
    read.iter()
        .flatten()
        .map(|p| Envelope::parse(p).unwrap().args[0]["n"].as_u64().unwrap())
        .collect()
}

/// Default mode (no `wait_for_replicas`; a replica per master), 16,000 jobs: 16 `kill -9`s of worker
/// processes, three running at a time, a new one started right after each kill, while
/// the master of a shard is killed and fails over (kills 8 to 10 fall during the switch,
/// and the workers started then meet it) and later rejoins. Every job runs; a job runs
/// twice only if a victim held it at its death or it was unfinished on the killed master
/// (see [`unfinished_at_death`]); once the last workers have stopped, no job is queued,
/// every in-flight list on every shard is empty and no lock is left. No worker exits by
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_kills_around_a_master_failover_strand_no_job() {
    const JOBS: u64 = 16_000;
    const KILLS: u64 = 16;
    const FAILOVER_AT: u64 = KILLS / 2;
    let cluster =
        tokio::task::spawn_blocking(|| RedisCluster::start_with(1, Duration::from_secs(2)))
            .await
            .unwrap();
    let urls = cluster.urls();
    let dir = logs_dir("kills-around-a-failover");
    let broker = ClusterBroker::connect(&urls).await.unwrap();
    // Enqueued before any fault, each push copied to a replica.
    let ticks: Vec<Tick> = (0..JOBS).map(|n| Tick { n, millis: 1 }).collect();
    Client::new(durable(&cluster).await)
        .enqueue_bulk(&ticks)
        .await
        .unwrap();

    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(spawn_logged(&broker, &urls, &dir).await);
    }
    // A shard away from the home and the run records (the first shard): jobs only.
    let tag = "{jobqueue-1}";
    let victim_port = cluster.master_of(tag);
    assert_ne!(victim_port, cluster.master_of("{jobqueue-3}"));
    let mut cluster = Some(cluster);
    let mut switching = None;
    let mut unfinished_on_dead_master = HashSet::new();
    let mut held_at_kills = HashSet::new();
    let mut dead = Vec::new();
    for kill in 0..KILLS {
        let due = JOBS * (kill + 1) / (KILLS + 2) + (kill * 137) % 300;
        eventually(LIMIT, "the workers made progress", || async {
            matches!(broker.queue_len("done").await, Ok(n) if n as u64 >= due)
        })
        .await;
        if kill == FAILOVER_AT {
            let c = cluster.take().unwrap();
            unfinished_on_dead_master = unfinished_at_death(&c, victim_port, tag, 1).await;
            switching = Some(
                tokio::task::spawn_blocking(move || {
                    let mut c = c;
                    let id = c.kill_node(victim_port);
                    (c, id)
                })
                .await
                .unwrap(),
            );
        }
        assert_running(&mut workers);
        let mut victim = workers.remove((kill % 3) as usize);
        victim.child.kill().unwrap();
        victim.child.wait().unwrap();
        // The next worker starts at once: during the switch, it meets the failover.
        workers.push(spawn_logged(&broker, &urls, &dir).await);
        let held = through_faults("reading the victim's jobs", || {
            broker.in_flight(&victim.identity)
        })
        .await;
        held_at_kills.extend(
            held.iter()
                .map(|p| Envelope::parse(p).unwrap().args[0]["n"].as_u64().unwrap()),
        );
        through_faults("declaring the victim dead", || {
            broker.forget(&victim.identity)
        })
        .await;
        dead.push(victim);
        if kill == FAILOVER_AT + 2 {
            let (c, id) = switching.take().unwrap();
            cluster = Some(
                tokio::task::spawn_blocking(move || {
                    let mut c = c;
                    c.wait_taken_over(&id);
                    c.restart(victim_port);
                    c
                })
                .await
                .unwrap(),
            );
        }
    }
    let cluster = cluster.unwrap();

    let start = std::time::Instant::now();
    loop {
        let settled = done_now(&broker).await.len() + poison_pills(&broker).await.len();
        if settled == JOBS as usize {
            break;
        }
        if start.elapsed() > Duration::from_secs(180) {
            let mut text = format!("{settled} of {JOBS} done or dead after 180 s; in flight:");
            for (port, key, len) in in_flight_lists(&cluster) {
                text.push_str(&format!("\n{port} {key}: {len}"));
            }
            text.push_str(&shard_marks(&cluster));
            for w in workers.iter().chain(dead.iter()) {
                text.push_str(&format!("\n--- {} ---\n{}", w.identity, log_tail(w)));
            }
            panic!("{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_running(&mut workers);
    // The live workers stop, handing back what they hold; a job whose acknowledgement the
    // failover undid is back in its worker's list, and so handed back: a last worker runs
    // whatever they handed back.
    for mut worker in workers {
        assert!(
            sigterm(&mut worker.child).success(),
            "{}",
            log_tail(&worker)
        );
    }
    let last = spawn_logged(&broker, &urls, &dir).await;
    eventually(LIMIT, "nothing queued", || async {
        broker.queue_len("ticks").await.unwrap() == 0
    })
    .await;
    let mut last = last;
    assert!(sigterm(&mut last.child).success(), "{}", log_tail(&last));

    let poisoned = poison_pills(&broker).await;
    assert!(
        poisoned.is_subset(&held_at_kills),
        "only jobs held at the kills died of them: {poisoned:?}"
    );
    let could_repeat: HashSet<u64> = held_at_kills
        .union(&unfinished_on_dead_master)
        .copied()
        .collect();
    let what = format!(
        "kills={KILLS} held_at_kills={} unfinished_on_the_dead_master={} poison_pills={}",
        held_at_kills.len(),
        unfinished_on_dead_master.len(),
        poisoned.len()
    );
    assert_none_lost_repeats_only_under_way(&broker, JOBS, &could_repeat, what, &poisoned).await;
    assert_ends_clean(&broker, &cluster).await;
}

/// The members of every shard's fetchers set (the processes whose in-flight lists the
/// shard's recovery looks at), over every master; the home's set is left out.
fn fetchers(cluster: &RedisCluster) -> Vec<String> {
    cluster
        .keys("{jobqueue-*}:jobqueue:fetchers")
        .into_iter()
        .flat_map(|(port, key)| {
            let members = cluster.command(port, &["SMEMBERS", &key]);
            members
                .lines()
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A process whose heartbeat lapses while it still runs (a stall, or calls held up by a
/// failover for longer than its TTL) is found dead by the others, which recover its jobs and
/// forget it on every shard where it then holds none. It goes on fetching; when it really
/// dies, the jobs it fetched after it was forgotten must be found too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_fetched_after_a_process_was_forgotten_are_recovered_when_it_dies() {
    const JOBS: u64 = 30;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let broker = ClusterBroker::connect(&cluster.urls()).await.unwrap();
    let stalled = "stalled-host:1:0123456789ab";

    // Its last heartbeat lives a second; a live worker (taking another queue) finds it
    // dead and forgets it on every shard.
    support::heartbeat::beat(&broker, stalled, Duration::from_secs(1)).await;
    assert_eq!(
        fetchers(&cluster).iter().filter(|f| *f == stalled).count(),
        3
    );
    let other = start(
        jobqueue::Worker::builder(broker.clone())
            .config(support::fast_config())
            .queues(Queues::strict(["elsewhere"]))
            .register::<Tick>(),
    );
    eventually(
        LIMIT,
        "the stalled process forgotten on every shard",
        || async { !fetchers(&cluster).iter().any(|f| f == stalled) },
    )
    .await;
    other.stop().await;

    // Still running, it fetches jobs from every shard, then dies holding them.
    enqueue_ticks(&broker, JOBS, 0).await;
    let held = broker
        .fetch(
            stalled,
            support::request(&["ticks".to_owned()], JOBS as usize, None, false),
        )
        .await
        .unwrap();
    assert_eq!(held.len(), JOBS as usize);
    let shards_holding: HashSet<u16> = in_flight_lists(&cluster).iter().map(|l| l.0).collect();
    assert_eq!(shards_holding.len(), 3, "it holds jobs on every master");

    // A worker of the queue recovers and runs them all.
    let worker = tick_worker(&broker);
    eventually(LIMIT, "every job the dead process held ran", || async {
        done_now(&broker).await.len() == JOBS as usize
    })
    .await;
    worker.stop().await;
    assert_ends_clean(&broker, &cluster).await;
}

/// A fetch goes over the shards in turn; when one fails after others have moved jobs into
/// this process's in-flight lists, those jobs are handed to the worker, not dropped with
/// the error (dropped, they would sit in the lists of a live process, run by nobody). The
/// failing shard here holds its queue key as a string, so that its fetch script fails
/// every time, where a master failing over fails for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_failing_mid_fetch_strands_no_job_taken_from_the_others() {
    // Fewer jobs than a fetch asks for (twice the concurrency): once the healthy shards hold
    // fewer than that, a fetch that takes their last jobs goes on to the failing shard.
    const JOBS: u64 = 30;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let broker = ClusterBroker::connect(&cluster.urls()).await.unwrap();
    enqueue_ticks(&broker, JOBS, 0).await;
    // One shard's queue is replaced by a string: its jobs are gone, and every fetch from
    // that shard fails (WRONGTYPE).
    let queues = cluster.keys("*:queue:ticks");
    assert_eq!(queues.len(), 3, "{queues:?}");
    let (port, broken) = queues[0].clone();
    let gone = cluster.command(port, &["LRANGE", &broken, "0", "-1"]);
    let gone: HashSet<u64> = gone
        .lines()
        .filter(|l| !l.is_empty())
        .map(|p| Envelope::parse(p).unwrap().args[0]["n"].as_u64().unwrap())
        .collect();
    assert!(!gone.is_empty());
    cluster.command(port, &["SET", &broken, "not a queue"]);

    let worker = tick_worker(&broker);
    eventually(LIMIT, "every job of the healthy shards ran", || async {
        done_now(&broker).await.len() == JOBS as usize - gone.len()
    })
    .await;
    assert!(
        in_flight_lists(&cluster).is_empty(),
        "jobs left in the live worker's in-flight lists: {:?}",
        in_flight_lists(&cluster)
    );
    worker.stop().await;
}

/// A fresh directory for the worker processes' logs of one test.
fn logs_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("jobqueue-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a directory for the workers' logs");
    dir
}

/// How many jobs the in-flight lists on the master on `port` hold.
fn in_flight_on(cluster: &RedisCluster, port: u16) -> usize {
    in_flight_lists(cluster)
        .into_iter()
        .filter(|(p, _, _)| *p == port)
        .map(|(_, _, len)| len)
        .sum()
}

/// Stops a worker process with SIGTERM (a graceful shutdown) and returns how it exited.
fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

/// The warnings and errors in a worker process's log, but for jobs over their time budget
/// (a tick slowed by a failover is): each is a call that failed, a job recovered, or worse.
fn warnings(worker: &WorkerProcess) -> Vec<String> {
    std::fs::read_to_string(&worker.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("failed"))
        .filter(|l| !l.contains("over budget"))
        .map(str::to_owned)
        .collect()
}

/// The lock keys of jobs (unique locks, running leases, collapse markers) on every master.
fn job_locks(cluster: &RedisCluster) -> Vec<(u16, String)> {
    ["unique", "running", "collapse"]
        .iter()
        .flat_map(|kind| cluster.keys(&format!("*jobqueue:lock:{kind}:*")))
        .collect()
}

/// The end of every kill and failover test, once its workers have stopped: no job queued,
/// nothing left in any in-flight list on any shard, no job's lock left.
async fn assert_ends_clean(broker: &ClusterBroker, cluster: &RedisCluster) {
    assert_eq!(broker.queue_len("ticks").await.unwrap(), 0, "no job queued");
    assert_eq!(
        in_flight_lists(cluster),
        Vec::new(),
        "nothing left in flight"
    );
    assert_eq!(job_locks(cluster), Vec::new(), "no lock left");
}
