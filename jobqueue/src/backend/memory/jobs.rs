//! The hot path in memory ([`JobStore`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{applicable, remove_last, MemoryBroker, State};
use crate::backend::{
    DirectMoves, Due, Fetch, Fetched, JobStore, LimitsRead, MarkerRead, Move, Push, SortedSet,
    Source, Wakeups,
};
use crate::error::BrokerError;
use crate::time::{epoch_seconds, from_epoch, now};

#[async_trait]
impl JobStore for MemoryBroker {
    async fn push(&self, jobs: &[Push]) -> Result<(), BrokerError> {
        let (queued, scheduled) = self.state().push_all(jobs);
        self.hub.wake(queued, scheduled);
        Ok(())
    }

    async fn push_once(
        &self,
        jobs: &[(String, Push)],
        ttl: Duration,
    ) -> Result<Vec<bool>, BrokerError> {
        let (mut queued, mut scheduled) = (false, false);
        let pushed = {
            let mut state = self.state();
            let expires = std::time::Instant::now() + ttl;
            jobs.iter()
                .map(|(marker, job)| {
                    if state.value(marker).is_some() {
                        return false;
                    }
                    state
                        .values
                        .insert(marker.clone(), ("1".to_owned(), expires));
                    let (q, s) = state.push_all(std::slice::from_ref(job));
                    queued |= q;
                    scheduled |= s;
                    true
                })
                .collect()
        };
        self.hub.wake(queued, scheduled);
        Ok(pushed)
    }

    async fn fetch(&self, process: &str, request: Fetch<'_>) -> Result<Vec<Fetched>, BrokerError> {
        let mut state = self.state();
        let mut taken = Vec::new();
        let mut set_aside = false;
        let at = now();
        for queue in request.queues {
            if state.paused.get(queue).is_some_and(|until| *until > at) {
                continue;
            }
            while taken.len() < request.max {
                let Some(payload) = state.queues.get_mut(queue).and_then(VecDeque::pop_back) else {
                    break;
                };
                let mut limits = LimitsRead::NotRead;
                if let Some(lease) = request.limits {
                    limits = LimitsRead::Applied;
                    match applicable(&payload) {
                        Err(()) => limits = LimitsRead::Invalid,
                        Ok((tags, _)) if tags.is_empty() => {}
                        Ok((tags, jid)) => {
                            let (ledger, alive) = state.limits_and_liveness();
                            if let Some((key, look)) =
                                ledger.admit(&tags, &jid, process, at, lease.as_secs_f64(), &alive)
                            {
                                ledger.park(key, payload, look);
                                set_aside = true;
                                continue;
                            }
                        }
                    }
                }
                let marker = request
                    .markers
                    .then(|| MarkerRead::of(&payload, |key| state.value(key).map(str::to_owned)))
                    .flatten();
                taken.push(Fetched {
                    queue: queue.clone(),
                    payload,
                    marker,
                    limits,
                });
            }
        }
        hold(
            &mut state,
            process,
            taken.iter().map(|job| job.payload.clone()),
        );
        drop(state);
        // The schedulers look at set-aside jobs again when their keys have room.
        self.hub.wake(false, set_aside);
        Ok(taken)
    }

    async fn settle(&self, from: Source<'_>, moves: &[Move]) -> Result<Vec<bool>, BrokerError> {
        let (mut queued, mut scheduled) = (false, false);
        let mut moved = Vec::with_capacity(moves.len());
        {
            let mut state = self.state();
            let at = now();
            for m in moves {
                let removed = match from {
                    Source::InFlight(process) => {
                        let removed = state
                            .in_flight
                            .get_mut(process)
                            .is_some_and(|list| remove_last(list, &m.payload));
                        if removed {
                            queued |= state.leave(&m.payload, process);
                        }
                        removed
                    }
                    Source::Set(set) => state.set(set).remove(&m.payload),
                };
                moved.push(removed);
                if removed {
                    let (q, s) = state.place(m.to.placement(at));
                    let (tq, ts) = state.push_all(&m.then);
                    queued |= q || tq;
                    scheduled |= s || ts;
                }
                if let Some((key, owner)) = &m.unlock {
                    state.unlock(key, owner);
                }
            }
        }
        self.hub.wake(queued, scheduled);
        Ok(moved)
    }

    async fn take_due(
        &self,
        process: &str,
        set: SortedSet,
        now: SystemTime,
        limit: usize,
        // The process's own move costs no more here than a move in this broker would.
        _direct: Option<DirectMoves<'_>>,
    ) -> Result<Due, BrokerError> {
        let now = epoch_seconds(now);
        let mut state = self.state();
        let mut due = Vec::new();
        while due.len() < limit && state.set(set).first_score().is_some_and(|s| s <= now) {
            if let Some((at, payload)) = state.set(set).pop_first() {
                due.push((from_epoch(at), payload));
            }
        }
        hold(
            &mut state,
            process,
            due.iter().map(|(_, payload)| payload.clone()),
        );
        Ok(Due {
            taken: due,
            ..Due::default()
        })
    }

    async fn next_due(&self) -> Result<Option<SystemTime>, BrokerError> {
        let state = self.state();
        Ok([
            state.schedule.first_score(),
            state.retry.first_score(),
            state.limits.next_look(),
        ]
        .into_iter()
        .flatten()
        .reduce(f64::min)
        .map(from_epoch))
    }

    async fn unpark_due(&self, now: SystemTime, lease: Duration) -> Result<usize, BrokerError> {
        let moved = {
            let mut state = self.state();
            let back = {
                let (ledger, alive) = state.limits_and_liveness();
                ledger.due(epoch_seconds(now), lease.as_secs_f64(), &alive)
            };
            let moved = back.len();
            state.bring_back(back);
            moved
        };
        self.hub.wake(moved > 0, false);
        Ok(moved)
    }

    fn subscribe(&self) -> Arc<Wakeups> {
        self.hub.subscribe()
    }
}

/// Puts `payloads` at the head of `process`'s in-flight list, in order. A process forgotten
/// while it was thought dead is listed again for recovery before it holds a job.
fn hold(state: &mut State, process: &str, payloads: impl Iterator<Item = String>) {
    let list = state.in_flight.entry(process.to_owned()).or_default();
    let before = list.len();
    for payload in payloads {
        list.push_front(payload);
    }
    if list.len() > before && !state.fetchers.contains(process) {
        state.fetchers.insert(process.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::limits_of;

    #[test]
    fn a_header_is_applicable_only_in_range_and_with_a_jid() {
        let ok = r#"{"limits":"c2 k","jid":"j","class":"A"}"#;
        assert_eq!(applicable(ok).unwrap().0.len(), 1);
        assert_eq!(limits_of(ok), (applicable(ok).unwrap().0, "j".to_owned()));
        assert!(applicable(r#"{"limits":"c0 k","jid":"j"}"#).is_err());
        assert!(limits_of(r#"{"limits":"c0 k","jid":"j"}"#).0.is_empty());
        assert!(
            applicable(r#"{"args":[],"limits":"c2 k"}"#).is_err(),
            "no jid"
        );
        assert!(applicable(r#"{"limits":"","jid":"j"}"#)
            .unwrap()
            .0
            .is_empty());
        assert!(applicable(r#"{"jid":"j","class":"A"}"#)
            .unwrap()
            .0
            .is_empty());
    }
}
