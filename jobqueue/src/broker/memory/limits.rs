//! Per-key limits in memory: the same statement as the Redis broker's `limits.lua`. A job's
//! limits come from its payload; a key's slots are running jobs (by jid, until their lease
//! ends) or recent starts; jobs over a limit wait under its key until it has room.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

use crate::broker::{has_limits, LimitEntry};
use crate::job::LimitTag;

/// What the limits need of a payload.
#[derive(Deserialize)]
pub(super) struct Tagged {
    pub(super) jid: String,
    pub(super) queue: String,
    pub(super) limits: Vec<LimitTag>,
}

/// The limits a payload carries, if any.
pub(super) fn tags_of(payload: &str) -> Option<Tagged> {
    if !has_limits(payload) {
        return None;
    }
    serde_json::from_str(payload).ok()
}

#[derive(Default)]
pub(super) struct Limits {
    /// Slots taken per key: (jid or start id, lease end or start time).
    slots: HashMap<String, Vec<(String, f64)>>,
    /// Jobs set aside per key, oldest at the back.
    parked: HashMap<String, VecDeque<String>>,
    /// Keys with jobs set aside, and when to look at them again.
    index: HashMap<String, f64>,
}

impl Limits {
    /// How many more jobs `tag` lets start at `now`; when none, also when one may.
    fn room(&mut self, tag: &LimitTag, now: f64) -> (usize, f64) {
        let per = tag.per.unwrap_or(0.0);
        let n = tag.concurrency.or(tag.rate).unwrap_or(0) as usize;
        let horizon = if tag.rate.is_some() { now - per } else { now };
        let slots = self.slots.entry(tag.key.clone()).or_default();
        slots.retain(|(_, score)| *score > horizon);
        let first = slots.iter().map(|(_, s)| *s).reduce(f64::min);
        match n.checked_sub(slots.len()).filter(|free| *free > 0) {
            Some(free) => (free, now),
            None => (0, first.unwrap_or(now) + per),
        }
    }

    /// Takes a slot in every limit of the job, or in none. Returns `None` when taken, or
    /// the key of a limit without room and when to look at it again.
    pub(super) fn admit(&mut self, job: &Tagged, now: f64, lease: f64) -> Option<(String, f64)> {
        for tag in &job.limits {
            let (free, at) = self.room(tag, now);
            if free == 0 {
                return Some((tag.key.clone(), at));
            }
        }
        for tag in &job.limits {
            let slots = self.slots.entry(tag.key.clone()).or_default();
            if tag.concurrency.is_some() {
                slots.retain(|(jid, _)| *jid != job.jid);
                slots.push((job.jid.clone(), now + lease));
            } else if tag.rate.is_some() {
                slots.push((format!("{}@{now}", job.jid), now));
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

    /// Frees the concurrency slots of a job leaving an in-flight list; returns the jobs to
    /// bring back, one per key it freed.
    pub(super) fn release(&mut self, job: &Tagged) -> Vec<String> {
        let mut back = Vec::new();
        for tag in job.limits.iter().filter(|t| t.concurrency.is_some()) {
            let Some(slots) = self.slots.get_mut(&tag.key) else {
                continue;
            };
            let before = slots.len();
            slots.retain(|(jid, _)| *jid != job.jid);
            if slots.len() < before {
                back.extend(self.unpark(&tag.key, 1));
            }
        }
        back
    }

    /// Extends the concurrency slots a job holds until `until`.
    pub(super) fn renew(&mut self, job: &Tagged, until: f64) {
        for tag in job.limits.iter().filter(|t| t.concurrency.is_some()) {
            if let Some(slot) = self
                .slots
                .get_mut(&tag.key)
                .and_then(|slots| slots.iter_mut().find(|(jid, _)| *jid == job.jid))
            {
                slot.1 = until;
            }
        }
    }

    /// The jobs to bring back from keys due by `now`, as many as each has room for, oldest
    /// first; keys without room are looked at again when they may have some.
    pub(super) fn due(&mut self, now: f64, lease: f64) -> Vec<String> {
        let due: Vec<String> = self
            .index
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut back = Vec::new();
        for key in due {
            let oldest = self.parked.get(&key).and_then(|l| l.back());
            let tag = oldest
                .and_then(|p| tags_of(p))
                .and_then(|t| t.limits.into_iter().find(|t| t.key == key));
            let Some(tag) = tag else {
                back.extend(self.unpark(&key, usize::MAX));
                continue;
            };
            let (free, mut at) = self.room(&tag, now);
            if free > 0 {
                back.extend(self.unpark(&key, free));
                at = now + tag.per.unwrap_or(lease);
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
                held: self.slots.get(key).map_or(0, Vec::len),
                parked: self.parked.get(key).map_or(0, VecDeque::len),
                next_look: *next_look,
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        entries
    }
}
