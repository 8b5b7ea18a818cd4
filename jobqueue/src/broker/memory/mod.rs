//! The in-memory broker: the same structures and semantics as the Redis broker, in one
//! process, for the quickstart, development and unit tests. Jobs do not survive the process.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use self::limits::{job_limits, queue_of, Limits};
use super::{
    dead_trim, Ack, BatchCallbacks, BatchStatus, Broker, DirectMoves, Due, Fetched, Heartbeat,
    LimitEntry, MarkerRead, Orphans, Placement, ProcessEntry, Push, Settle, SortedSet, Stats,
    WakeupHub, Wakeups,
};
use crate::error::BrokerError;
use crate::time::{epoch_seconds, now};

mod limits;

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
    periodic: HashMap<String, String>,
    stats: Stats,
    locks: HashMap<String, (String, Instant)>,
    /// Paused queues and when each resumes by itself (epoch seconds; infinite: never).
    paused: HashMap<String, f64>,
    /// Jobs marked cancelled, until when.
    cancelled: HashMap<String, Instant>,
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

    fn contains(&self, member: &str) -> bool {
        self.scores.contains_key(member)
    }

    fn remove(&mut self, member: &str) {
        if let Some(score) = self.scores.remove(member) {
            self.ordered.remove(&(score, member.to_owned()));
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
        let (jid, tags) = job_limits(payload);
        let back = self.limits.release(&tags, jid, process);
        self.bring_back(back)
    }

    /// Who holds the lock `key`, if it has not expired.
    fn holder(&self, key: &str) -> Option<&str> {
        let at = Instant::now();
        self.locks
            .get(key)
            .filter(|(_, expires)| *expires > at)
            .map(|(holder, _)| holder.as_str())
    }

    /// Releases the lock `key` if `owner` holds it; returns whether it did.
    fn unlock(&mut self, key: &str, owner: &str) -> bool {
        let held = self.holder(key) == Some(owner);
        if held {
            self.locks.remove(key);
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

    fn expire_processes(&mut self) {
        let at = Instant::now();
        self.processes.retain(|_, p| p.expires > at);
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written: every
        // operation below completes its changes without calling out.
        super::lock(&self.state)
    }
}

#[cfg(feature = "testing")]
impl MemoryBroker {
    /// Adds `payload` to `set` with `score` (epoch seconds) as it is, without the trims and
    /// wake-ups of the broker's own moves: for tests that need an entry of another time,
    /// as a test of the Redis broker writes one with `ZADD` (feature `testing`).
    pub fn insert_scored(&self, set: SortedSet, score: f64, payload: &str) {
        self.state().set(set).add(score, payload.to_owned());
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

impl From<MemoryBroker> for Arc<dyn Broker> {
    fn from(broker: MemoryBroker) -> Self {
        Arc::new(broker)
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn push(&self, jobs: &[Push]) -> Result<(), BrokerError> {
        let (queued, scheduled) = self.state().push_all(jobs);
        self.hub.wake(queued, scheduled);
        Ok(())
    }

    async fn fetch(
        &self,
        process: &str,
        queues: &[String],
        max: usize,
        lease: Option<Duration>,
        markers: bool,
    ) -> Result<Vec<Fetched>, BrokerError> {
        let mut state = self.state();
        let mut taken = Vec::new();
        let mut set_aside = false;
        let at = now();
        for queue in queues {
            if state.paused.get(queue).is_some_and(|until| *until > at) {
                continue;
            }
            while taken.len() < max {
                let Some(payload) = state.queues.get_mut(queue).and_then(VecDeque::pop_back) else {
                    break;
                };
                let job = lease.map(|lease| (job_limits(&payload), lease));
                if let Some(((jid, job), lease)) = job.filter(|((_, tags), _)| !tags.is_empty()) {
                    let jid = jid.to_owned();
                    let (limits, alive) = state.limits_and_liveness();
                    if let Some((key, look)) =
                        limits.admit(&job, &jid, process, at, lease.as_secs_f64(), &alive)
                    {
                        limits.park(key, payload, look);
                        set_aside = true;
                        continue;
                    }
                }
                let marker = markers
                    .then(|| MarkerRead::of(&payload, |key| state.holder(key).map(str::to_owned)))
                    .flatten();
                taken.push(Fetched {
                    queue: queue.clone(),
                    payload,
                    marker,
                });
            }
        }
        let list = state.in_flight.entry(process.to_owned()).or_default();
        for job in &taken {
            list.push_front(job.payload.clone());
        }
        drop(state);
        // The schedulers look at set-aside jobs again when their keys have room.
        self.hub.wake(false, set_aside);
        Ok(taken)
    }

    async fn unpark_due(&self, now: f64, lease: Duration) -> Result<usize, BrokerError> {
        let moved = {
            let mut state = self.state();
            let back = {
                let (limits, alive) = state.limits_and_liveness();
                limits.due(now, lease.as_secs_f64(), &alive)
            };
            let moved = back.len();
            state.bring_back(back);
            moved
        };
        self.hub.wake(moved > 0, false);
        Ok(moved)
    }

    async fn limits(&self) -> Result<Vec<LimitEntry>, BrokerError> {
        Ok(self.state().limits.entries())
    }

    async fn ack(&self, process: &str, acks: &[Ack]) -> Result<(), BrokerError> {
        let mut queued = false;
        {
            let mut state = self.state();
            for Ack { payload, unlock } in acks {
                let removed = state
                    .in_flight
                    .get_mut(process)
                    .is_some_and(|list| remove_last(list, payload));
                if removed {
                    queued |= state.leave(payload, process);
                }
                if let Some((key, owner)) = unlock {
                    state.unlock(key, owner);
                }
            }
        }
        self.hub.wake(queued, false);
        Ok(())
    }

    async fn batch_add(
        &self,
        bid: &str,
        description: &str,
        callbacks: &BatchCallbacks,
        jids: &[String],
    ) -> Result<(), BrokerError> {
        let mut state = self.state();
        let batch = state
            .batches
            .entry(bid.to_owned())
            .or_insert_with(|| Batch {
                description: description.to_owned(),
                callbacks: callbacks.clone(),
                pending: HashSet::new(),
                total: 0,
                succeeded: 0,
                failed: 0,
                finished: false,
            });
        for jid in jids {
            if batch.pending.insert(jid.clone()) {
                batch.total += 1;
            }
        }
        Ok(())
    }

    async fn batch_done(&self, bid: &str, jid: &str, succeeded: bool) -> Result<bool, BrokerError> {
        let callbacks = {
            let mut state = self.state();
            let Some(batch) = state.batches.get_mut(bid) else {
                return Ok(false);
            };
            if !batch.pending.remove(jid) {
                return Ok(false);
            }
            if succeeded {
                batch.succeeded += 1;
            } else {
                batch.failed += 1;
            }
            if !batch.pending.is_empty() || batch.finished {
                return Ok(false);
            }
            batch.finished = true;
            let mut due: Vec<Push> = batch.callbacks.on_complete.iter().cloned().collect();
            if batch.failed == 0 {
                due.extend(batch.callbacks.on_success.iter().cloned());
            }
            due
        };
        self.push(&callbacks).await?;
        Ok(true)
    }

    async fn batch_status(&self, bid: &str) -> Result<Option<BatchStatus>, BrokerError> {
        Ok(self.state().batches.get(bid).map(|b| BatchStatus {
            description: b.description.clone(),
            total: b.total,
            pending: b.pending.len() as u64,
            succeeded: b.succeeded,
            failed: b.failed,
            finished: b.finished,
        }))
    }

    async fn mark_cancelled(&self, jid: &str, ttl: Duration) -> Result<(), BrokerError> {
        let mut state = self.state();
        let at = Instant::now();
        state.cancelled.retain(|_, until| *until > at);
        state.cancelled.insert(jid.to_owned(), at + ttl);
        Ok(())
    }

    async fn cancelled_among(&self, jids: &[String]) -> Result<Vec<String>, BrokerError> {
        let state = self.state();
        let at = Instant::now();
        Ok(jids
            .iter()
            .filter(|jid| state.cancelled.get(*jid).is_some_and(|until| *until > at))
            .cloned()
            .collect())
    }

    async fn ack_then(
        &self,
        process: &str,
        payload: &str,
        then: &[Push],
    ) -> Result<bool, BrokerError> {
        let (removed, (queued, scheduled)) = {
            let mut state = self.state();
            let removed = state
                .in_flight
                .get_mut(process)
                .is_some_and(|list| remove_last(list, payload));
            let pushed = if removed {
                let back = state.leave(payload, process);
                let (queued, scheduled) = state.push_all(then);
                (queued || back, scheduled)
            } else {
                (false, false)
            };
            (removed, pushed)
        };
        self.hub.wake(queued, scheduled);
        Ok(removed)
    }

    async fn settle_many(
        &self,
        process: &str,
        moves: &[(String, Settle)],
    ) -> Result<Vec<bool>, BrokerError> {
        let (mut queued, mut scheduled) = (false, false);
        let mut moved = Vec::with_capacity(moves.len());
        {
            let mut state = self.state();
            for (payload, to) in moves {
                let removed = state
                    .in_flight
                    .get_mut(process)
                    .is_some_and(|list| remove_last(list, payload));
                moved.push(removed);
                if !removed {
                    continue;
                }
                queued |= state.leave(payload, process);
                let (q, s) = state.place(to.placement(now()));
                queued |= q;
                scheduled |= s;
            }
        }
        self.hub.wake(queued, scheduled);
        Ok(moved)
    }

    async fn take_due(
        &self,
        process: &str,
        set: SortedSet,
        now: f64,
        limit: usize,
        // The process's own move costs no more here than a move in this broker would.
        _direct: Option<DirectMoves<'_>>,
    ) -> Result<Due, BrokerError> {
        let mut state = self.state();
        let mut due = Vec::new();
        while due.len() < limit && state.set(set).first_score().is_some_and(|s| s <= now) {
            if let Some(entry) = state.set(set).pop_first() {
                due.push(entry);
            }
        }
        let list = state.in_flight.entry(process.to_owned()).or_default();
        for (_, payload) in &due {
            list.push_front(payload.clone());
        }
        Ok(Due {
            taken: due,
            ..Due::default()
        })
    }

    async fn next_due(&self) -> Result<Option<f64>, BrokerError> {
        let state = self.state();
        Ok([
            state.schedule.first_score(),
            state.retry.first_score(),
            state.limits.next_look(),
        ]
        .into_iter()
        .flatten()
        .reduce(f64::min))
    }

    async fn heartbeat(&self, beat: &Heartbeat) -> Result<Option<String>, BrokerError> {
        let mut state = self.state();
        state.stats.processed += beat.processed;
        state.stats.failed += beat.failed;
        state.stats.skipped += beat.skipped;
        state.stats.cancelled += beat.cancelled;
        state.fetchers.insert(beat.identity.clone());
        state.processes.insert(
            beat.identity.clone(),
            LiveProcess {
                entry: ProcessEntry::from_beat(beat),
                expires: Instant::now() + beat.ttl,
            },
        );
        Ok(state
            .signals
            .get_mut(&beat.identity)
            .and_then(VecDeque::pop_back))
    }

    async fn unregister(&self, identity: &str) -> Result<(), BrokerError> {
        self.state().processes.remove(identity);
        self.forget(identity).await
    }

    async fn orphans(&self, except: &str) -> Result<Vec<Orphans>, BrokerError> {
        let state = self.state();
        let at = Instant::now();
        Ok(state
            .fetchers
            .iter()
            .filter(|id| id.as_str() != except && !state.is_alive(id, at))
            .map(|id| Orphans {
                identity: id.clone(),
                payloads: state
                    .in_flight
                    .get(id)
                    .map(|l| l.iter().cloned().collect())
                    .unwrap_or_default(),
            })
            .collect())
    }

    async fn forget(&self, identity: &str) -> Result<(), BrokerError> {
        let mut state = self.state();
        let empty = state.in_flight.get(identity).is_none_or(VecDeque::is_empty);
        if empty && !state.is_alive(identity, Instant::now()) {
            state.fetchers.remove(identity);
            state.in_flight.remove(identity);
        }
        Ok(())
    }

    async fn in_flight(&self, process: &str) -> Result<Vec<String>, BrokerError> {
        Ok(self
            .state()
            .in_flight
            .get(process)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        Ok(self.state().known_queues.iter().cloned().collect())
    }

    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError> {
        Ok(self.state().queues.get(queue).map_or(0, VecDeque::len))
    }

    async fn queue_oldest(&self, queue: &str) -> Result<Option<String>, BrokerError> {
        Ok(self
            .state()
            .queues
            .get(queue)
            .and_then(|q| q.back().cloned()))
    }

    async fn queue_range(
        &self,
        queue: &str,
        offset: usize,
        count: usize,
    ) -> Result<Vec<String>, BrokerError> {
        Ok(self.state().queues.get(queue).map_or_else(Vec::new, |q| {
            q.iter().rev().skip(offset).take(count).cloned().collect()
        }))
    }

    async fn set_len(&self, set: SortedSet) -> Result<usize, BrokerError> {
        Ok(self.state().set(set).len())
    }

    async fn set_range(
        &self,
        set: SortedSet,
        offset: usize,
        count: usize,
    ) -> Result<Vec<(f64, String)>, BrokerError> {
        Ok(self
            .state()
            .set(set)
            .iter()
            .skip(offset)
            .take(count)
            .map(|(s, p)| (s, p.clone()))
            .collect())
    }

    async fn processes(&self) -> Result<Vec<ProcessEntry>, BrokerError> {
        let mut state = self.state();
        state.expire_processes();
        let mut entries: Vec<ProcessEntry> =
            state.processes.values().map(|p| p.entry.clone()).collect();
        entries.sort_by(|a, b| a.identity.cmp(&b.identity));
        Ok(entries)
    }

    async fn stats(&self) -> Result<Stats, BrokerError> {
        Ok(self.state().stats)
    }

    async fn lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        let mut state = self.state();
        let at = Instant::now();
        match state.locks.get(key) {
            Some((holder, expires)) if *expires > at && holder != owner => Ok(Some(holder.clone())),
            _ => {
                state
                    .locks
                    .insert(key.to_owned(), (owner.to_owned(), at + ttl));
                Ok(None)
            }
        }
    }

    async fn lock_force(&self, key: &str, owner: &str, ttl: Duration) -> Result<(), BrokerError> {
        let expires = Instant::now() + ttl;
        self.state()
            .locks
            .insert(key.to_owned(), (owner.to_owned(), expires));
        Ok(())
    }

    async fn lock_holder(&self, key: &str) -> Result<Option<String>, BrokerError> {
        let mut state = self.state();
        let at = Instant::now();
        state.locks.retain(|_, (_, expires)| *expires > at);
        Ok(state.holder(key).map(str::to_owned))
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, BrokerError> {
        Ok(self.state().unlock(key, owner))
    }

    async fn pause(&self, queue: &str, until: Option<f64>) -> Result<(), BrokerError> {
        let until = until.unwrap_or(f64::INFINITY);
        self.state().paused.insert(queue.to_owned(), until);
        Ok(())
    }

    async fn resume(&self, queue: &str) -> Result<(), BrokerError> {
        self.state().paused.remove(queue);
        self.hub.wake(true, false);
        Ok(())
    }

    async fn paused(&self) -> Result<Vec<(String, Option<f64>)>, BrokerError> {
        let mut state = self.state();
        let at = now();
        state.paused.retain(|_, until| *until > at);
        let mut paused: Vec<_> = state
            .paused
            .iter()
            .map(|(queue, until)| (queue.clone(), until.is_finite().then_some(*until)))
            .collect();
        paused.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(paused)
    }

    async fn remove_set_aside(&self, jid: &str) -> Result<Option<String>, BrokerError> {
        let needle = format!("\"jid\":\"{jid}\"");
        Ok(self.state().limits.remove(&needle))
    }

    async fn remove_job(&self, queue: &str, jid: &str) -> Result<bool, BrokerError> {
        let needle = format!("\"jid\":\"{jid}\"");
        let mut state = self.state();
        if let Some(list) = state.queues.get_mut(queue) {
            if let Some(i) = list.iter().position(|p| p.contains(&needle)) {
                list.remove(i);
                return Ok(true);
            }
        }
        for set in [SortedSet::Schedule, SortedSet::Retry] {
            let found = state
                .set(set)
                .iter()
                .find(|(_, p)| p.contains(&needle))
                .map(|(_, p)| p.clone());
            if let Some(payload) = found {
                state.set(set).remove(&payload);
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn signal(&self, identity: &str, signal: &str) -> Result<(), BrokerError> {
        self.state()
            .signals
            .entry(identity.to_owned())
            .or_default()
            .push_front(signal.to_owned());
        Ok(())
    }

    async fn move_entry(
        &self,
        set: SortedSet,
        payload: &str,
        to: Settle,
    ) -> Result<bool, BrokerError> {
        let (queued, scheduled) = {
            let mut state = self.state();
            if !state.set(set).contains(payload) {
                return Ok(false);
            }
            state.set(set).remove(payload);
            state.place(to.placement(now()))
        };
        self.hub.wake(queued, scheduled);
        Ok(true)
    }

    async fn publish_periodic(&self, schedules: &[(String, String)]) -> Result<(), BrokerError> {
        let mut state = self.state();
        for (name, description) in schedules {
            state.periodic.insert(name.clone(), description.clone());
        }
        Ok(())
    }

    async fn periodic(&self) -> Result<Vec<(String, String)>, BrokerError> {
        let mut all: Vec<_> = self
            .state()
            .periodic
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort();
        Ok(all)
    }

    async fn clear(&self, queue: &str) -> Result<usize, BrokerError> {
        Ok(self
            .state()
            .queues
            .get_mut(queue)
            .map_or(0, |list| list.drain(..).count()))
    }

    fn subscribe(&self) -> Arc<Wakeups> {
        self.hub.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{DEAD_MAX_JOBS, DEAD_TIMEOUT};

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
        broker
            .fetch("p", &["q".into()], 1, Some(Duration::from_secs(60)), false)
            .await
            .unwrap();
        let dead = Settle::Dead {
            payload: "fresh".into(),
        };
        assert!(broker.settle("p", "fresh", dead).await.unwrap());
        let kept: Vec<String> = broker
            .set_range(SortedSet::Dead, 0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(kept, ["recent", "fresh"]);
        assert!(DEAD_MAX_JOBS > kept.len());
    }
}
