//! The in-memory broker: the same structures and semantics as the Redis broker, in one
//! process, for the quickstart, development and unit tests. Jobs do not survive the process.
//!
//! The state (`State`) is one struct behind one mutex: every method is one lock of it, as
//! every Redis method is one round trip. The roles are implemented in `jobs` (the hot path)
//! and `roles` (presence, the key/value store, views, batches); per-key limits in `limits`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use self::limits::{queue_of, Limits};
use super::applicable;
use super::{
    dead_trim, BatchCallbacks, Broker, Placement, ProcessEntry, Published, Push, SortedSet, Stats,
    WakeupHub,
};
use crate::job::LimitTag;
use crate::time::epoch_seconds;

mod jobs;
mod limits;
mod roles;

/// A broker that keeps everything in this process's memory.
///
/// Cheap to clone: clones share the same state, as clients of one Redis do.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
    hub: Arc<WakeupHub>,
}

#[derive(Default)]
struct State {
    /// Like Redis lists: pushed at the front (`LPUSH`), taken from the back.
    queues: HashMap<String, VecDeque<String>>,
    known_queues: BTreeSet<String>,
    schedule: ScoredSet,
    retry: ScoredSet,
    dead: ScoredSet,
    in_flight: HashMap<String, VecDeque<String>>,
    fetchers: BTreeSet<String>,
    processes: HashMap<String, LiveProcess>,
    signals: HashMap<String, VecDeque<String>>,
    published: HashMap<Published, BTreeMap<String, String>>,
    stats: Stats,
    /// The key/value store: value and expiry.
    values: HashMap<String, (String, Instant)>,
    /// Paused queues and when each resumes by itself (epoch seconds; infinite: never).
    paused: HashMap<String, f64>,
    batches: HashMap<String, Batch>,
    /// Per-key limits: slots taken and jobs set aside.
    limits: Limits,
}

/// A batch: its callbacks, the job ids not finished yet, its counts.
struct Batch {
    description: String,
    callbacks: BatchCallbacks,
    pending: HashSet<String>,
    total: u64,
    succeeded: u64,
    failed: u64,
    finished: bool,
    /// When it is forgotten: `BATCH_TTL` after its last addition, `BATCH_LINGER` after
    /// it finished.
    expires: Instant,
}

struct LiveProcess {
    entry: ProcessEntry,
    expires: Instant,
}

/// A Redis sorted set: unique members ordered by score, then by member.
#[derive(Default)]
struct ScoredSet {
    ordered: BTreeSet<(Score, String)>,
    scores: HashMap<String, Score>,
}

#[derive(Clone, Copy, Debug)]
struct Score(f64);

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0) == Ordering::Equal
    }
}
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl ScoredSet {
    fn add(&mut self, score: f64, member: String) {
        if let Some(old) = self.scores.insert(member.clone(), Score(score)) {
            self.ordered.remove(&(old, member.clone()));
        }
        self.ordered.insert((Score(score), member));
    }

    /// Removes `member`; returns whether it was there.
    fn remove(&mut self, member: &str) -> bool {
        match self.scores.remove(member) {
            Some(score) => self.ordered.remove(&(score, member.to_owned())),
            None => false,
        }
    }

    fn pop_first(&mut self) -> Option<(f64, String)> {
        let (score, member) = self.ordered.pop_first()?;
        self.scores.remove(&member);
        Some((score.0, member))
    }

    fn first_score(&self) -> Option<f64> {
        self.ordered.first().map(|(s, _)| s.0)
    }

    fn len(&self) -> usize {
        self.ordered.len()
    }

    fn iter(&self) -> impl Iterator<Item = (f64, &String)> {
        self.ordered.iter().map(|(s, m)| (s.0, m))
    }

    /// Drops members scored below `cutoff`, then the lowest until `max` remain.
    fn trim(&mut self, cutoff: f64, max: usize) {
        while let Some(first) = self.first_score() {
            if first < cutoff || self.len() > max {
                self.pop_first();
            } else {
                break;
            }
        }
    }
}

impl State {
    /// Carries out a settle's placement; returns whether it woke fetchers and the scheduler.
    fn place(&mut self, placement: Placement<'_>) -> (bool, bool) {
        match placement {
            Placement::Queue {
                queue,
                payload,
                front,
            } => {
                self.push_queue(queue, payload.to_owned(), front);
                (true, false)
            }
            Placement::Set {
                set,
                payload,
                score,
            } => {
                self.set(set).add(score, payload.to_owned());
                if set == SortedSet::Dead {
                    let (before, keep) = dead_trim(score);
                    self.dead.trim(before, keep);
                    (false, false)
                } else {
                    (false, true)
                }
            }
            Placement::Nowhere => (false, false),
        }
    }

    fn set(&mut self, set: SortedSet) -> &mut ScoredSet {
        match set {
            SortedSet::Schedule => &mut self.schedule,
            SortedSet::Retry => &mut self.retry,
            SortedSet::Dead => &mut self.dead,
        }
    }

    /// Pushes `jobs` to their queues or the schedule set; returns whether any went to a
    /// queue and whether any was scheduled, for the wake-ups.
    fn push_all(&mut self, jobs: &[Push]) -> (bool, bool) {
        let (mut queued, mut scheduled) = (false, false);
        for job in jobs {
            match job.at {
                None => {
                    self.push_queue(&job.queue, job.payload.clone(), false);
                    queued = true;
                }
                Some(at) => {
                    self.schedule.add(epoch_seconds(at), job.payload.clone());
                    scheduled = true;
                }
            }
        }
        (queued, scheduled)
    }

    fn push_queue(&mut self, queue: &str, payload: String, front: bool) {
        if !self.known_queues.contains(queue) {
            self.known_queues.insert(queue.to_owned());
        }
        let list = self.queues.entry(queue.to_owned()).or_default();
        if front {
            list.push_back(payload);
        } else {
            list.push_front(payload);
        }
    }

    /// Puts jobs back at the front of their queues, the first of `jobs` first in line;
    /// returns whether there were any.
    fn bring_back(&mut self, jobs: Vec<String>) -> bool {
        let any = !jobs.is_empty();
        for payload in jobs.into_iter().rev() {
            let queue = queue_of(&payload);
            self.push_queue(&queue, payload, true);
        }
        any
    }

    /// A job has left the in-flight list of `process`: the concurrency slots it held are
    /// free, and a job set aside under each comes back. Returns whether one did.
    fn leave(&mut self, payload: &str, process: &str) -> bool {
        let (tags, jid) = limits_of(payload);
        let back = self.limits.release(&tags, &jid, process);
        self.bring_back(back)
    }

    /// The value at `key`, if it has not expired.
    fn value(&self, key: &str) -> Option<&str> {
        let at = Instant::now();
        self.values
            .get(key)
            .filter(|(_, expires)| *expires > at)
            .map(|(value, _)| value.as_str())
    }

    /// Deletes `key` if `owner` holds it; returns whether it did.
    fn unlock(&mut self, key: &str, owner: &str) -> bool {
        let held = self.value(key) == Some(owner);
        if held {
            self.values.remove(key);
        }
        held
    }

    /// The limits, with the test of whether a process's heartbeat is live.
    fn limits_and_liveness(&mut self) -> (&mut Limits, impl Fn(&str) -> bool + '_) {
        let at = Instant::now();
        let processes = &self.processes;
        (&mut self.limits, move |identity: &str| {
            is_alive(processes, identity, at)
        })
    }

    fn is_alive(&self, identity: &str, at: Instant) -> bool {
        is_alive(&self.processes, identity, at)
    }
}

/// The limits a job that leaves an in-flight list took at its fetch, with its jid: those
/// [`applicable`] gives, none for a job whose limits could not be applied.
fn limits_of(payload: &str) -> (Vec<LimitTag>, String) {
    applicable(payload).unwrap_or_default()
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written: every
        // operation completes its changes without calling out.
        super::lock(&self.state)
    }
}

/// Whether `identity`'s heartbeat is live at `at`.
fn is_alive(processes: &HashMap<String, LiveProcess>, identity: &str, at: Instant) -> bool {
    processes.get(identity).is_some_and(|p| p.expires > at)
}

/// Removes the last occurrence of `payload` (Redis `LREM list -1 payload`).
fn remove_last(list: &mut VecDeque<String>, payload: &str) -> bool {
    match list.iter().rposition(|p| p == payload) {
        Some(i) => list.remove(i).is_some(),
        None => false,
    }
}

#[cfg(feature = "testing")]
impl MemoryBroker {
    /// Adds `payload` to `set` at `at` as it is, without the trims and wake-ups of the
    /// broker's own moves: for tests that need an entry of another time, as a test of the
    /// Redis broker writes one with `ZADD` (feature `testing`).
    pub fn insert_scored(&self, set: SortedSet, at: std::time::SystemTime, payload: &str) {
        self.state()
            .set(set)
            .add(epoch_seconds(at), payload.to_owned());
    }
}

impl From<MemoryBroker> for Arc<dyn Broker> {
    fn from(broker: MemoryBroker) -> Self {
        Arc::new(broker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Fetch, JobStore, Location, Move, Settle, Source, Span, Views};
    use crate::backend::{DEAD_MAX_JOBS, DEAD_TIMEOUT};
    use crate::time::now;

    #[tokio::test]
    async fn a_finished_batch_lingers_then_is_forgotten() {
        use crate::backend::{BatchCallbacks, Batches, BATCH_LINGER, BATCH_TTL};
        let broker = MemoryBroker::new();
        let jids = ["a".to_owned()];
        let none = BatchCallbacks::default();
        broker.batch_add("open", "o", &none, &jids).await.unwrap();
        broker.batch_add("done", "d", &none, &jids).await.unwrap();
        assert!(broker.batch_done("done", "a", true).await.unwrap());
        let expires = |bid: &str| broker.state().batches[bid].expires - Instant::now();
        assert!(expires("open") > BATCH_LINGER && expires("open") <= BATCH_TTL);
        assert!(expires("done") <= BATCH_LINGER);
        // Once past its time, a batch is not shown, and the next addition drops it.
        broker.state().batches.get_mut("done").unwrap().expires = Instant::now();
        assert!(broker.batch_status("done").await.unwrap().is_none());
        broker.batch_add("new", "n", &none, &jids).await.unwrap();
        assert!(!broker.state().batches.contains_key("done"));
        assert!(broker.batch_status("open").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_dead_set_drops_jobs_older_than_its_timeout() {
        let broker = MemoryBroker::new();
        let old = now() - DEAD_TIMEOUT.as_secs_f64() - 60.0;
        broker.state().dead.add(old, "ancient".into());
        broker.state().dead.add(now() - 60.0, "recent".into());
        let push = Push {
            queue: "q".into(),
            payload: "fresh".into(),
            at: None,
        };
        broker.push(&[push]).await.unwrap();
        let queues = ["q".to_owned()];
        broker.fetch("p", Fetch::new(&queues, 1)).await.unwrap();
        let dead = Settle::Dead {
            payload: "fresh".into(),
        };
        let moved = broker
            .settle(Source::InFlight("p"), &[Move::new("fresh", dead)])
            .await
            .unwrap();
        assert_eq!(moved, [true]);
        let kept: Vec<String> = broker
            .range(Location::Set(SortedSet::Dead), Span::page(0, 10))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect();
        assert_eq!(kept, ["recent", "fresh"]);
        assert!(DEAD_MAX_JOBS > kept.len());
    }
}
