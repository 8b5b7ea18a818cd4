//! The hot path over the shards ([`JobStore`]): a push to the shard its job's header names
//! (or in turn), a fetch level by level across shards, a settle to the shard holding each
//! job, with locks released on the shards they live on.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::future::{join_all, try_join_all};

use super::ClusterBroker;
use crate::backend::{
    DirectMoves, Due, Fetch, Fetched, JobStore, KeyValue, Location, Move, Push, RedisBroker,
    Settle, SortedSet, Source, Span, Views, Wakeups, DEAD_MAX_JOBS,
};
use crate::error::BrokerError;

impl ClusterBroker {
    /// `call` on every shard at once, the answers in shard order.
    pub(super) async fn on_all<'a, T, F, Fut>(&'a self, call: F) -> Result<Vec<T>, BrokerError>
    where
        F: Fn(&'a RedisBroker) -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        try_join_all(self.inner.shards.iter().map(call)).await
    }

    /// `call` on every shard at once, each to its end even when another fails (a failed
    /// future of `try_join_all` drops the others, and a dropped request may never be sent):
    /// the answers in shard order.
    pub(super) async fn on_each<'a, T, F, Fut>(&'a self, call: F) -> Vec<Result<T, BrokerError>>
    where
        F: Fn(&'a RedisBroker) -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        join_all(self.inner.shards.iter().map(call)).await
    }

    /// The shards in turn from the next starting point, so that successive fetches and
    /// scheduler rounds begin on different shards and none is favoured.
    fn rotation(&self) -> impl Iterator<Item = usize> {
        let count = self.inner.shards.len();
        let start = self
            .inner
            .next_fetch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (0..count).map(move |k| start.wrapping_add(k) % count)
    }

    /// Groups `moves` by the shard holding each job in flight; a job this process does not
    /// know goes to every shard, where the scripts find it or do nothing.
    fn by_holder(&self, moves: &[Move]) -> BTreeMap<usize, Vec<usize>> {
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, m) in moves.iter().enumerate() {
            match self.release(&m.payload) {
                Some(shard) => groups.entry(shard).or_default().push(i),
                None => {
                    for shard in 0..self.inner.shards.len() {
                        groups.entry(shard).or_default().push(i);
                    }
                }
            }
        }
        groups
    }

    /// Trims the dead sets to [`DEAD_MAX_JOBS`] together, as one set: each shard trims its
    /// own to that many (and by age) as a job dies there, and this drops the oldest over
    /// all of them. Deaths are rare, so its round trips are too.
    async fn trim_dead(&self) -> Result<(), BrokerError> {
        let dead = Location::Set(SortedSet::Dead);
        let sizes = self.on_all(|s| s.len(dead)).await?;
        let excess = sizes.iter().sum::<usize>().saturating_sub(DEAD_MAX_JOBS);
        if excess == 0 {
            return Ok(());
        }
        let oldest = self
            .on_all(|s| s.range(dead, Span::page(0, excess)))
            .await?;
        let mut tagged: Vec<(SystemTime, usize, String)> = oldest
            .into_iter()
            .enumerate()
            .flat_map(|(shard, page)| {
                page.into_iter()
                    .map(move |e| (e.at.unwrap_or(SystemTime::UNIX_EPOCH), shard, e.payload))
            })
            .collect();
        tagged.sort_by_key(|t| t.0);
        let mut by_shard: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (_, shard, payload) in tagged.into_iter().take(excess) {
            by_shard.entry(shard).or_default().push(payload);
        }
        let shards = &self.inner.shards;
        try_join_all(
            by_shard
                .iter()
                .map(|(&s, payloads)| shards[s].remove(dead, payloads)),
        )
        .await?;
        Ok(())
    }

    /// Releases the locks of `moves` where each lives: on the shard of its key.
    async fn unlock_all(&self, moves: &[Move]) -> Result<(), BrokerError> {
        try_join_all(
            moves
                .iter()
                .filter_map(|m| m.unlock.as_ref())
                .map(|(key, owner)| self.shard_by_key(key).unlock(key, owner)),
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl JobStore for ClusterBroker {
    async fn push(&self, jobs: &[Push]) -> Result<(), BrokerError> {
        let targets: Vec<usize> = jobs.iter().map(|job| self.shard_for(job)).collect();
        let shards = &self.inner.shards;
        // One job, or all for one shard: pushed as they are, without copies.
        if let Some(&first) = targets.first() {
            if targets.iter().all(|&s| s == first) {
                return shards[first].push(jobs).await;
            }
        }
        let mut groups: BTreeMap<usize, Vec<Push>> = BTreeMap::new();
        for (job, shard) in jobs.iter().zip(targets) {
            groups.entry(shard).or_default().push(job.clone());
        }
        try_join_all(groups.iter().map(|(&s, jobs)| shards[s].push(jobs))).await?;
        Ok(())
    }

    async fn push_once(
        &self,
        jobs: &[(String, Push)],
        ttl: Duration,
    ) -> Result<Vec<bool>, BrokerError> {
        // Each job's marker lives on the shard its job goes to, which a second push of the
        // same job finds again.
        let mut groups: BTreeMap<usize, (Vec<usize>, Vec<(String, Push)>)> = BTreeMap::new();
        for (i, job) in jobs.iter().enumerate() {
            let group = groups
                .entry(self.shard_placing(&job.1, Some(&job.0)))
                .or_default();
            group.0.push(i);
            group.1.push(job.clone());
        }
        let shards = &self.inner.shards;
        let results = try_join_all(
            groups
                .iter()
                .map(|(&s, (_, jobs))| shards[s].push_once(jobs, ttl)),
        )
        .await?;
        let mut pushed = vec![false; jobs.len()];
        for ((places, _), result) in groups.values().zip(results) {
            for (&i, p) in places.iter().zip(result) {
                pushed[i] = p;
            }
        }
        Ok(pushed)
    }

    async fn fetch(&self, process: &str, request: Fetch<'_>) -> Result<Vec<Fetched>, BrokerError> {
        // Level by level: the first queue on every shard, then the first two, and so on, so
        // that a queue's jobs on any shard go before a later queue's (strict and weighted
        // orders hold across shards). A busy first queue fills a fetch in one call. A shard
        // that fails (its master failing over) is passed by: the jobs already taken from the
        // others are in this process's in-flight lists, and returned, not dropped with the
        // error; the error is returned only when nothing was taken.
        let (queues, max) = (request.queues, request.max);
        let mut taken = Vec::new();
        let mut failed = None;
        for level in 1..=queues.len() {
            for shard in self.rotation() {
                if taken.len() >= max {
                    return Ok(taken);
                }
                let this = Fetch {
                    queues: &queues[..level],
                    max: max - taken.len(),
                    ..request
                };
                let mut more = match self.inner.shards[shard].fetch(process, this).await {
                    Ok(more) => more,
                    Err(e) => {
                        tracing::debug!("fetching from shard {shard}: {e}");
                        failed = Some(e);
                        continue;
                    }
                };
                self.hold(shard, more.iter().map(|f| f.payload.as_str()));
                // A marker read on another shard than its own was not the marker.
                for job in &mut more {
                    job.marker = job
                        .marker
                        .take()
                        .filter(|m| self.shard_of_key(&m.key) == shard);
                }
                taken.extend(more);
            }
        }
        match failed {
            Some(e) if taken.is_empty() => Err(e),
            _ => Ok(taken),
        }
    }

    async fn settle(&self, from: Source<'_>, moves: &[Move]) -> Result<Vec<bool>, BrokerError> {
        let shards = &self.inner.shards;
        let mut moved = vec![false; moves.len()];
        match from {
            Source::InFlight(process) => {
                // Each shard in one round trip: the jobs it holds, and the locks that live
                // on it.
                let groups = self.by_holder(moves);
                let plain = moves
                    .iter()
                    .all(|m| matches!(m.to, Settle::Discard) && m.then.is_empty());
                if plain {
                    let mut rounds: BTreeMap<usize, (Vec<usize>, Vec<&(String, String)>)> = groups
                        .into_iter()
                        .map(|(s, i)| (s, (i, Vec::new())))
                        .collect();
                    for lock in moves.iter().filter_map(|m| m.unlock.as_ref()) {
                        let round = rounds.entry(self.shard_of_key(&lock.0)).or_default();
                        round.1.push(lock);
                    }
                    let answers = try_join_all(rounds.iter().map(|(&s, (indices, unlocks))| {
                        let mine: Vec<Move> = indices
                            .iter()
                            .map(|&i| Move::done(moves[i].payload.clone()))
                            .collect();
                        async move {
                            let answer = shards[s].acknowledge(process, &mine, unlocks).await?;
                            Ok::<_, BrokerError>((indices, answer))
                        }
                    }))
                    .await?;
                    for (indices, answer) in answers {
                        for (&i, m) in indices.iter().zip(answer) {
                            moved[i] |= m;
                        }
                    }
                    return Ok(moved);
                }
                // Follow-ups go to the finished job's shard, in its script: atomic there.
                let answers = try_join_all(groups.into_iter().map(|(s, indices)| async move {
                    let mine: Vec<Move> = indices
                        .iter()
                        .map(|&i| Move {
                            unlock: None,
                            ..moves[i].clone()
                        })
                        .collect();
                    let answer = shards[s].settle(from, &mine).await?;
                    Ok::<_, BrokerError>((indices, answer))
                }))
                .await?;
                for (indices, answer) in answers {
                    for (i, m) in indices.into_iter().zip(answer) {
                        moved[i] |= m;
                    }
                }
                self.unlock_all(moves).await?;
            }
            Source::Set(_) => {
                // Only the shard holding an entry moves it, within that shard.
                let mine: Vec<Move> = moves
                    .iter()
                    .map(|m| Move {
                        unlock: None,
                        ..m.clone()
                    })
                    .collect();
                let answers = self.on_all(|s| s.settle(from, &mine)).await?;
                for answer in answers {
                    for (i, m) in answer.into_iter().enumerate() {
                        moved[i] |= m;
                    }
                }
                self.unlock_all(moves).await?;
            }
        }
        if moves.iter().any(|m| matches!(m.to, Settle::Dead { .. })) {
            self.trim_dead().await?;
        }
        Ok(moved)
    }

    async fn take_due(
        &self,
        process: &str,
        set: SortedSet,
        now: SystemTime,
        limit: usize,
        direct: Option<DirectMoves<'_>>,
    ) -> Result<Due, BrokerError> {
        let mut due = Due::default();
        for shard in self.rotation() {
            if due.len() >= limit {
                break;
            }
            let more = self.inner.shards[shard]
                .take_due(process, set, now, limit - due.len(), direct)
                .await?;
            self.hold(shard, more.taken.iter().map(|(_, p)| p.as_str()));
            due.moved.extend(more.moved);
            due.named.extend(more.named);
            due.taken.extend(more.taken);
        }
        Ok(due)
    }

    async fn next_due(&self) -> Result<Option<SystemTime>, BrokerError> {
        let firsts = self.on_all(|s| s.next_due()).await?;
        Ok(firsts.into_iter().flatten().min())
    }

    async fn unpark_due(&self, now: SystemTime, lease: Duration) -> Result<usize, BrokerError> {
        let moved = self.on_all(|s| s.unpark_due(now, lease)).await?;
        Ok(moved.into_iter().sum())
    }

    fn subscribe(&self) -> Arc<Wakeups> {
        self.inner.hub.subscribe()
    }
}
