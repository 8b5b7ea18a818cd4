//! Presence, the key/value store, operator views and batches in memory.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::{Batch, LiveProcess, MemoryBroker};
use crate::backend::{
    BatchCallbacks, BatchStatus, Batches, Entry, Heartbeat, JobStore, KeyValue, LimitEntry,
    Location, Orphans, Paused, Presence, ProcessEntry, Published, Push, Span, Stats, Views,
    BATCH_LINGER, BATCH_TTL,
};
use crate::error::BrokerError;
use crate::time::{epoch_seconds, from_epoch, now};

#[async_trait]
impl Presence for MemoryBroker {
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

    async fn forget(&self, identity: &str) -> Result<(), BrokerError> {
        let mut state = self.state();
        state.processes.remove(identity);
        if state.in_flight.get(identity).is_none_or(VecDeque::is_empty) {
            state.fetchers.remove(identity);
            state.in_flight.remove(identity);
        }
        Ok(())
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

    async fn signal(&self, identity: &str, signal: &str) -> Result<(), BrokerError> {
        self.state()
            .signals
            .entry(identity.to_owned())
            .or_default()
            .push_front(signal.to_owned());
        Ok(())
    }

    async fn processes(&self) -> Result<Vec<ProcessEntry>, BrokerError> {
        let mut state = self.state();
        let at = Instant::now();
        state.processes.retain(|_, p| p.expires > at);
        let mut entries: Vec<ProcessEntry> =
            state.processes.values().map(|p| p.entry.clone()).collect();
        entries.sort_by(|a, b| a.identity.cmp(&b.identity));
        Ok(entries)
    }

    async fn stats(&self) -> Result<Stats, BrokerError> {
        Ok(self.state().stats)
    }

    async fn announce_cancel(&self, jid: &str) -> Result<(), BrokerError> {
        self.hub.cancel(jid);
        Ok(())
    }

    async fn publish(
        &self,
        what: Published,
        entries: &[(String, String)],
    ) -> Result<(), BrokerError> {
        let mut state = self.state();
        let published = state.published.entry(what).or_default();
        for (name, value) in entries {
            published.insert(name.clone(), value.clone());
        }
        Ok(())
    }

    async fn published(&self, what: Published) -> Result<Vec<(String, String)>, BrokerError> {
        Ok(self
            .state()
            .published
            .get(&what)
            .map(|all| all.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl KeyValue for MemoryBroker {
    async fn get(&self, key: &str) -> Result<Option<String>, BrokerError> {
        let mut state = self.state();
        let at = Instant::now();
        state.values.retain(|_, (_, expires)| *expires > at);
        Ok(state.value(key).map(str::to_owned))
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), BrokerError> {
        let expires = Instant::now() + ttl;
        self.state()
            .values
            .insert(key.to_owned(), (value.to_owned(), expires));
        Ok(())
    }

    async fn lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        let mut state = self.state();
        let at = Instant::now();
        match state.values.get(key) {
            Some((holder, expires)) if *expires > at && holder != owner => Ok(Some(holder.clone())),
            _ => {
                state
                    .values
                    .insert(key.to_owned(), (owner.to_owned(), at + ttl));
                Ok(None)
            }
        }
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, BrokerError> {
        Ok(self.state().unlock(key, owner))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, BrokerError> {
        let state = self.state();
        Ok(keys
            .iter()
            .map(|key| state.value(key).map(str::to_owned))
            .collect())
    }
}

#[async_trait]
impl Views for MemoryBroker {
    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        Ok(self.state().known_queues.iter().cloned().collect())
    }

    async fn len(&self, at: Location<'_>) -> Result<usize, BrokerError> {
        let mut state = self.state();
        Ok(match at {
            Location::Queue(queue) => state.queues.get(queue).map_or(0, VecDeque::len),
            Location::Set(set) => state.set(set).len(),
            Location::InFlight(process) => state.in_flight.get(process).map_or(0, VecDeque::len),
            Location::Parked(key) => state.limits.parked(key).map_or(0, VecDeque::len),
        })
    }

    async fn range(&self, at: Location<'_>, span: Span) -> Result<Vec<Entry>, BrokerError> {
        let mut state = self.state();
        let plain = |payload: &String| Entry {
            payload: payload.clone(),
            at: None,
        };
        let (list, tail) = match at {
            Location::Queue(queue) => (state.queues.get(queue), true),
            Location::Parked(key) => (state.limits.parked(key), true),
            Location::InFlight(process) => (state.in_flight.get(process), false),
            Location::Set(set) => {
                let set = state.set(set);
                let scored = |(score, payload): (f64, &String)| Entry {
                    payload: payload.clone(),
                    at: Some(from_epoch(score)),
                };
                return Ok(match span {
                    Span::Page { offset, count } => {
                        set.iter().skip(offset).take(count).map(scored).collect()
                    }
                    Span::Scored { min, max, count } => {
                        let (min, max) = (epoch_seconds(min), epoch_seconds(max));
                        set.iter()
                            .skip_while(|(score, _)| *score < min)
                            .take_while(|(score, _)| *score <= max)
                            .take(count)
                            .map(scored)
                            .collect()
                    }
                });
            }
        };
        let (Some(list), Span::Page { offset, count }) = (list, span) else {
            return Ok(Vec::new());
        };
        Ok(match tail {
            true => list
                .iter()
                .rev()
                .skip(offset)
                .take(count)
                .map(plain)
                .collect(),
            false => list.iter().skip(offset).take(count).map(plain).collect(),
        })
    }

    async fn remove(&self, at: Location<'_>, payloads: &[String]) -> Result<usize, BrokerError> {
        let mut state = self.state();
        let mut removed = 0;
        for payload in payloads {
            let found = match at {
                Location::Queue(queue) => state.queues.get_mut(queue).and_then(|list| {
                    let i = list.iter().position(|p| p == payload)?;
                    list.remove(i)
                }),
                Location::Set(set) => state.set(set).remove(payload).then(String::new),
                Location::Parked(key) => state.limits.remove(key, payload).then(String::new),
                Location::InFlight(_) => None,
            };
            removed += usize::from(found.is_some());
        }
        Ok(removed)
    }

    async fn limits(&self) -> Result<Vec<LimitEntry>, BrokerError> {
        Ok(self.state().limits.entries())
    }

    async fn pause(&self, queue: &str, state: Paused) -> Result<(), BrokerError> {
        let until = match state {
            Paused::No => {
                self.state().paused.remove(queue);
                self.hub.wake(true, false);
                return Ok(());
            }
            Paused::UntilResumed => f64::INFINITY,
            Paused::Until(at) => epoch_seconds(at),
        };
        self.state().paused.insert(queue.to_owned(), until);
        Ok(())
    }

    async fn paused(&self) -> Result<Vec<(String, Option<SystemTime>)>, BrokerError> {
        let mut state = self.state();
        let at = now();
        state.paused.retain(|_, until| *until > at);
        let mut paused: Vec<_> = state
            .paused
            .iter()
            .map(|(queue, until)| (queue.clone(), until.is_finite().then(|| from_epoch(*until))))
            .collect();
        paused.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(paused)
    }
}

#[async_trait]
impl Batches for MemoryBroker {
    async fn batch_add(
        &self,
        bid: &str,
        description: &str,
        callbacks: &BatchCallbacks,
        jids: &[String],
    ) -> Result<(), BrokerError> {
        let mut state = self.state();
        let at = Instant::now();
        state.batches.retain(|_, b| b.expires > at);
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
                expires: at,
            });
        batch.expires = at + BATCH_TTL;
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
            if batch.expires <= Instant::now() || !batch.pending.remove(jid) {
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
            batch.expires = Instant::now() + BATCH_LINGER;
            let mut due: Vec<Push> = batch.callbacks.on_complete.iter().cloned().collect();
            if batch.failed == 0 {
                due.extend(batch.callbacks.on_success.iter().cloned());
            }
            due
        };
        // Into the schedule set, due now: a scheduler admits them as any due job.
        let at = Some(SystemTime::now());
        let due: Vec<Push> = callbacks.into_iter().map(|p| Push { at, ..p }).collect();
        self.push(&due).await?;
        Ok(true)
    }

    async fn batch_status(&self, bid: &str) -> Result<Option<BatchStatus>, BrokerError> {
        let at = Instant::now();
        let state = self.state();
        let batch = state.batches.get(bid).filter(|b| b.expires > at);
        Ok(batch.map(|b| BatchStatus {
            description: b.description.clone(),
            total: b.total,
            pending: b.pending.len() as u64,
            succeeded: b.succeeded,
            failed: b.failed,
            finished: b.finished,
        }))
    }
}
