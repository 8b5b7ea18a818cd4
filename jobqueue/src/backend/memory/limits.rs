//! Per-key limits in memory: the same statement as the Redis broker's `limits.lua`. A job's
//! limits come from its payload; a key's slots are its running jobs, each named by its jid
//! and process (alive while its heartbeat is), or recent starts; jobs over a limit wait
//! under its key until it has room.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

use super::limits_of;
use crate::backend::LimitEntry;
use crate::job::{LimitKind, LimitTag};
use crate::time::from_epoch;

/// The queue a payload names (`default` when it names none).
pub(super) fn queue_of(payload: &str) -> String {
    #[derive(Deserialize)]
    struct Queue {
        queue: String,
    }
    serde_json::from_str::<Queue>(payload).map_or_else(|_| "default".to_owned(), |q| q.queue)
}

#[derive(Default)]
pub(super) struct Limits {
    /// Concurrency slots per key: the running jobs holding them, each as its jid and its
    /// process (the Redis broker's `JID@PROCESS`), so that a job leaving frees its own slot.
    held: HashMap<String, Vec<(String, String)>>,
    /// Rate slots per key: start times, oldest first.
    starts: HashMap<String, VecDeque<f64>>,
    /// Jobs set aside per key, oldest at the back.
    parked: HashMap<String, VecDeque<String>>,
    /// Keys with jobs set aside, and when to look at them again.
    index: HashMap<String, f64>,
}

impl Limits {
    /// How many more jobs `tag` lets start at `now`; when none, also when to look again.
    /// Slots of processes `alive` denies are free.
    fn room(
        &mut self,
        tag: &LimitTag,
        now: f64,
        lease: f64,
        alive: &dyn Fn(&str) -> bool,
    ) -> (usize, f64) {
        // A key left with nothing goes, as an empty Redis key does.
        let (taken, oldest) = match tag.kind {
            LimitKind::Rate { per, .. } => {
                let Some(starts) = self.starts.get_mut(&tag.key) else {
                    return tag.kind.room(0, None, now, lease);
                };
                while starts.front().is_some_and(|t| *t <= now - per) {
                    starts.pop_front();
                }
                let taken = (starts.len(), starts.front().copied());
                if starts.is_empty() {
                    self.starts.remove(&tag.key);
                }
                taken
            }
            LimitKind::Concurrency(_) => {
                let Some(holders) = self.held.get_mut(&tag.key) else {
                    return tag.kind.room(0, None, now, lease);
                };
                holders.retain(|(_, process)| alive(process));
                let taken = holders.len();
                if holders.is_empty() {
                    self.held.remove(&tag.key);
                }
                (taken, None)
            }
        };
        tag.kind.room(taken, oldest, now, lease)
    }

    /// Takes a slot in every limit of the job for `process`, or in none. Returns `None`
    /// when taken, or the key of a limit without room and when to look at it again.
    pub(super) fn admit(
        &mut self,
        job: &[LimitTag],
        jid: &str,
        process: &str,
        now: f64,
        lease: f64,
        alive: &dyn Fn(&str) -> bool,
    ) -> Option<(String, f64)> {
        for tag in job {
            let (free, at) = self.room(tag, now, lease, alive);
            if free == 0 {
                return Some((tag.key.clone(), at));
            }
        }
        for tag in job {
            match tag.kind {
                LimitKind::Concurrency(_) => {
                    self.held
                        .entry(tag.key.clone())
                        .or_default()
                        .push((jid.to_owned(), process.to_owned()));
                }
                LimitKind::Rate { .. } => {
                    self.starts
                        .entry(tag.key.clone())
                        .or_default()
                        .push_back(now);
                }
            }
        }
        None
    }

    /// Sets a job aside under `key` until its limit has room; looked at again by `at`.
    pub(super) fn park(&mut self, key: String, payload: String, at: f64) {
        let look = self.index.entry(key.clone()).or_insert(at);
        *look = look.min(at);
        self.parked.entry(key).or_default().push_front(payload);
    }

    /// The jobs set aside under `key`, oldest at the back.
    pub(super) fn parked(&self, key: &str) -> Option<&VecDeque<String>> {
        self.parked.get(key)
    }

    /// Removes the set-aside job `payload` from under `key`; forgets a key left with none.
    /// Returns whether it was there.
    pub(super) fn remove(&mut self, key: &str, payload: &str) -> bool {
        let Some(list) = self.parked.get_mut(key) else {
            return false;
        };
        let Some(i) = list.iter().position(|p| p == payload) else {
            return false;
        };
        list.remove(i);
        if list.is_empty() {
            self.parked.remove(key);
            self.index.remove(key);
        }
        true
    }

    /// Takes up to `n` of the oldest jobs set aside under `key`, oldest first; forgets the
    /// key when none are left.
    pub(super) fn unpark(&mut self, key: &str, n: usize) -> Vec<String> {
        let Some(list) = self.parked.get_mut(key) else {
            self.index.remove(key);
            return Vec::new();
        };
        let taken: Vec<String> = (0..n).map_while(|_| list.pop_back()).collect();
        if list.is_empty() {
            self.parked.remove(key);
            self.index.remove(key);
        }
        taken
    }

    /// Frees the concurrency slots the job `jid` held for `process` as it leaves the
    /// process's in-flight list; returns the jobs to bring back, one per key.
    pub(super) fn release(&mut self, job: &[LimitTag], jid: &str, process: &str) -> Vec<String> {
        let mut back = Vec::new();
        for tag in job.iter().filter(|t| t.is_concurrency()) {
            if let Some(holders) = self.held.get_mut(&tag.key) {
                // Absent when the slots were freed because the process looked dead: then
                // it frees nothing, not even a slot its process holds for another job.
                if let Some(at) = holders.iter().position(|(j, p)| j == jid && p == process) {
                    holders.remove(at);
                }
                if holders.is_empty() {
                    self.held.remove(&tag.key);
                }
            }
            back.extend(self.unpark(&tag.key, 1));
        }
        back
    }

    /// The jobs to bring back from keys due by `now`, as many as each has room for, oldest
    /// first; keys without room are looked at again when they may have some.
    pub(super) fn due(
        &mut self,
        now: f64,
        lease: f64,
        alive: &dyn Fn(&str) -> bool,
    ) -> Vec<String> {
        let due: Vec<String> = self
            .index
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut back = Vec::new();
        for key in due {
            let oldest = self.parked.get(&key).and_then(|l| l.back());
            let tag = oldest.and_then(|p| limits_of(p).0.into_iter().find(|t| t.key == key));
            let Some(tag) = tag else {
                back.extend(self.unpark(&key, usize::MAX));
                continue;
            };
            let (free, mut at) = self.room(&tag, now, lease, alive);
            if free > 0 {
                back.extend(self.unpark(&key, free));
                at = now
                    + match tag.kind {
                        LimitKind::Rate { per, .. } => per,
                        LimitKind::Concurrency(_) => lease,
                    };
            }
            if let Some(look) = self.index.get_mut(&key) {
                *look = at;
            }
        }
        back
    }

    /// The earliest time a key is looked at again.
    pub(super) fn next_look(&self) -> Option<f64> {
        self.index.values().copied().reduce(f64::min)
    }

    /// The keys with jobs set aside.
    pub(super) fn entries(&self) -> Vec<LimitEntry> {
        let mut entries: Vec<LimitEntry> = self
            .index
            .iter()
            .map(|(key, next_look)| LimitEntry {
                key: key.clone(),
                held: match self.held.get(key) {
                    Some(holders) => holders.len(),
                    None => self.starts.get(key).map_or(0, VecDeque::len),
                },
                parked: self.parked.get(key).map_or(0, VecDeque::len),
                next_look: from_epoch(*next_look),
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        entries
    }
}
