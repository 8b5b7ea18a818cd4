//! Each [`Broker`] method over the shards: routed to one shard where the job or key says
//! which, to the home for processes and stats, and fanned out (then summed or merged)
//! where an answer spans the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{join_all, try_join_all};

use super::ClusterBroker;
use crate::broker::{
    Ack, BatchCallbacks, BatchStatus, Broker, DirectMoves, Due, Fetched, Heartbeat, LimitEntry,
    Orphans, ProcessEntry, Push, Settle, SortedSet, Stats, Wakeups, DEAD_MAX_JOBS,
};
use crate::error::BrokerError;

impl ClusterBroker {
    /// `call` on every shard at once, the answers in shard order.
    async fn on_all<'a, T, F, Fut>(&'a self, call: F) -> Result<Vec<T>, BrokerError>
    where
        F: Fn(&'a crate::broker::RedisBroker) -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        try_join_all(self.inner.shards.iter().map(call)).await
    }

    /// `call` on every shard at once, each to its end even when another fails (a failed
    /// future of `try_join_all` drops the others, and a dropped request may never be sent):
    /// the answers in shard order.
    async fn on_each<'a, T, F, Fut>(&'a self, call: F) -> Vec<Result<T, BrokerError>>
    where
        F: Fn(&'a crate::broker::RedisBroker) -> Fut,
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

    /// Groups `items` by the shard holding each job in flight (`payload_of`); a job this
    /// process does not know goes to every shard, where the scripts find it or do nothing.
    fn by_holder<T>(
        &self,
        items: &[T],
        payload_of: impl Fn(&T) -> &str,
    ) -> BTreeMap<usize, Vec<usize>> {
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            match self.release(payload_of(item)) {
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
        let sizes = self.on_all(|s| s.set_len(SortedSet::Dead)).await?;
        let excess = sizes.iter().sum::<usize>().saturating_sub(DEAD_MAX_JOBS);
        if excess == 0 {
            return Ok(());
        }
        let oldest = self
            .on_all(|s| s.set_range(SortedSet::Dead, 0, excess))
            .await?;
        let mut tagged: Vec<(f64, usize, String)> = oldest
            .into_iter()
            .enumerate()
            .flat_map(|(shard, page)| page.into_iter().map(move |(at, p)| (at, shard, p)))
            .collect();
        tagged.sort_by(|a, b| a.0.total_cmp(&b.0));
        let shards = &self.inner.shards;
        try_join_all(
            tagged
                .into_iter()
                .take(excess)
                .map(|(_, shard, payload)| async move {
                    shards[shard]
                        .move_entry(SortedSet::Dead, &payload, Settle::Discard)
                        .await
                }),
        )
        .await?;
        Ok(())
    }

    /// Merges each shard's first `offset + count` entries by `key` and keeps `count` from
    /// `offset`.
    fn merged<T, K: PartialOrd>(
        pages: Vec<Vec<T>>,
        offset: usize,
        count: usize,
        key: impl Fn(&T) -> K,
    ) -> Vec<T> {
        let mut all: Vec<T> = pages.into_iter().flatten().collect();
        all.sort_by(|a, b| {
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        all.into_iter().skip(offset).take(count).collect()
    }
}

/// When a waiting job was enqueued (its `enqueued_at`, or its `created_at`, read as the
/// envelope reads them), to order jobs of several shards as one queue; unreadable last.
fn enqueued_at(payload: &str) -> f64 {
    crate::envelope::Envelope::parse(payload)
        .ok()
        .and_then(|e| e.enqueued_at.or(e.created_at))
        .unwrap_or(f64::MAX)
}

#[async_trait]
impl Broker for ClusterBroker {
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

    async fn fetch(
        &self,
        process: &str,
        queues: &[String],
        max: usize,
        lease: Option<Duration>,
        markers: bool,
    ) -> Result<Vec<Fetched>, BrokerError> {
        // Level by level: the first queue on every shard, then the first two, and so on, so
        // that a queue's jobs on any shard go before a later queue's (strict and weighted
        // orders hold across shards). A busy first queue fills a fetch in one call.
        // A shard that fails (its master failing over) is passed by: the jobs already
        // taken from the others are in this process's in-flight lists, and returned, not
        // dropped with the error; the error is returned only when nothing was taken.
        let mut taken = Vec::new();
        let mut failed = None;
        for level in 1..=queues.len() {
            for shard in self.rotation() {
                if taken.len() >= max {
                    return Ok(taken);
                }
                let fetched = self.inner.shards[shard]
                    .fetch(process, &queues[..level], max - taken.len(), lease, markers)
                    .await;
                let mut more = match fetched {
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

    async fn unpark_due(&self, now: f64, lease: Duration) -> Result<usize, BrokerError> {
        let moved = self.on_all(|s| s.unpark_due(now, lease)).await?;
        Ok(moved.into_iter().sum())
    }

    async fn limits(&self) -> Result<Vec<LimitEntry>, BrokerError> {
        let mut merged: BTreeMap<String, LimitEntry> = BTreeMap::new();
        for entry in self.on_all(|s| s.limits()).await?.into_iter().flatten() {
            match merged.get_mut(&entry.key) {
                Some(seen) => {
                    seen.held += entry.held;
                    seen.parked += entry.parked;
                    seen.next_look = seen.next_look.min(entry.next_look);
                }
                None => {
                    merged.insert(entry.key.clone(), entry);
                }
            }
        }
        Ok(merged.into_values().collect())
    }

    async fn ack(&self, process: &str, acks: &[Ack]) -> Result<(), BrokerError> {
        // Each shard in one round trip: the jobs it holds, and the locks that live on it.
        let mut rounds: BTreeMap<usize, (Vec<&str>, Vec<&(String, String)>)> = BTreeMap::new();
        for (shard, indices) in self.by_holder(acks, |ack| ack.payload.as_str()) {
            let round = rounds.entry(shard).or_default();
            round
                .0
                .extend(indices.iter().map(|&i| acks[i].payload.as_str()));
        }
        for unlock in acks.iter().filter_map(|ack| ack.unlock.as_ref()) {
            let round = rounds.entry(self.shard_of_key(&unlock.0)).or_default();
            round.1.push(unlock);
        }
        let shards = &self.inner.shards;
        try_join_all(
            rounds.iter().map(|(&s, (payloads, unlocks))| {
                shards[s].ack_and_unlock(process, payloads, unlocks)
            }),
        )
        .await?;
        Ok(())
    }

    async fn batch_add(
        &self,
        bid: &str,
        description: &str,
        callbacks: &BatchCallbacks,
        jids: &[String],
    ) -> Result<(), BrokerError> {
        self.shard_by_key(bid)
            .batch_add(bid, description, callbacks, jids)
            .await
    }

    async fn batch_done(&self, bid: &str, jid: &str, succeeded: bool) -> Result<bool, BrokerError> {
        self.shard_by_key(bid).batch_done(bid, jid, succeeded).await
    }

    async fn batch_status(&self, bid: &str) -> Result<Option<BatchStatus>, BrokerError> {
        self.shard_by_key(bid).batch_status(bid).await
    }

    async fn mark_cancelled(&self, jid: &str, ttl: Duration) -> Result<(), BrokerError> {
        self.inner.home.mark_cancelled(jid, ttl).await
    }

    async fn cancelled_among(&self, jids: &[String]) -> Result<Vec<String>, BrokerError> {
        self.inner.home.cancelled_among(jids).await
    }

    async fn ack_then(
        &self,
        process: &str,
        payload: &str,
        then: &[Push],
    ) -> Result<bool, BrokerError> {
        // The follow-ups go to the finished job's shard, in its script: atomic there.
        let candidates: Vec<usize> = match self.release(payload) {
            Some(shard) => vec![shard],
            None => (0..self.inner.shards.len()).collect(),
        };
        for shard in candidates {
            if self.inner.shards[shard]
                .ack_then(process, payload, then)
                .await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn settle_many(
        &self,
        process: &str,
        moves: &[(String, Settle)],
    ) -> Result<Vec<bool>, BrokerError> {
        let groups = self.by_holder(moves, |(payload, _)| payload.as_str());
        let shards = &self.inner.shards;
        let answers = try_join_all(groups.into_iter().map(|(s, indices)| async move {
            let mine: Vec<(String, Settle)> = indices.iter().map(|&i| moves[i].clone()).collect();
            let moved = shards[s].settle_many(process, &mine).await?;
            Ok::<_, BrokerError>((indices, moved))
        }))
        .await?;
        let mut moved = vec![false; moves.len()];
        for (indices, answer) in answers {
            for (i, m) in indices.into_iter().zip(answer) {
                moved[i] |= m;
            }
        }
        if moves
            .iter()
            .any(|(_, to)| matches!(to, Settle::Dead { .. }))
        {
            self.trim_dead().await?;
        }
        Ok(moved)
    }

    async fn take_due(
        &self,
        process: &str,
        set: SortedSet,
        now: f64,
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

    async fn next_due(&self) -> Result<Option<f64>, BrokerError> {
        let firsts = self.on_all(|s| s.next_due()).await?;
        Ok(firsts.into_iter().flatten().reduce(f64::min))
    }

    async fn heartbeat(&self, beat: &Heartbeat) -> Result<Option<String>, BrokerError> {
        // Each shard keeps a mark of the live processes for its own recovery and limits.
        // Every shard is marked even when one fails: a master failing over does not keep
        // this process's marks on the others from being renewed.
        self.on_each(|s| s.mark_alive(&beat.identity, beat.ttl))
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()?;
        self.inner.home.heartbeat(beat).await
    }

    async fn unregister(&self, identity: &str) -> Result<(), BrokerError> {
        self.inner.home.unregister(identity).await?;
        self.on_all(|s| s.unregister(identity)).await?;
        Ok(())
    }

    async fn orphans(&self, except: &str) -> Result<Vec<Orphans>, BrokerError> {
        // A shard that cannot be read (its master failing over) hides no orphan of the
        // others: their jobs are recovered now, its own at a later round.
        let mut merged: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut failed = Vec::new();
        let answers = self.on_each(|s| s.orphans(except)).await;
        let shards = answers.len();
        for (shard, answer) in answers.into_iter().enumerate() {
            let orphans = match answer {
                Ok(orphans) => orphans,
                Err(e) => {
                    tracing::warn!("looking for dead processes' jobs on shard {shard}: {e}");
                    failed.push(e);
                    continue;
                }
            };
            for orphan in orphans {
                self.hold(shard, orphan.payloads.iter().map(String::as_str));
                merged
                    .entry(orphan.identity)
                    .or_default()
                    .extend(orphan.payloads);
            }
        }
        if failed.len() == shards {
            if let Some(e) = failed.pop() {
                return Err(e);
            }
        }
        Ok(merged
            .into_iter()
            .map(|(identity, payloads)| Orphans { identity, payloads })
            .collect())
    }

    async fn forget(&self, identity: &str) -> Result<(), BrokerError> {
        self.on_all(|s| s.forget(identity)).await?;
        self.inner.home.forget(identity).await
    }

    async fn in_flight(&self, process: &str) -> Result<Vec<String>, BrokerError> {
        let mut all = Vec::new();
        for (shard, payloads) in self
            .on_all(|s| s.in_flight(process))
            .await?
            .into_iter()
            .enumerate()
        {
            self.hold(shard, payloads.iter().map(String::as_str));
            all.extend(payloads);
        }
        Ok(all)
    }

    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        let all: BTreeSet<String> = self
            .on_all(|s| s.queues())
            .await?
            .into_iter()
            .flatten()
            .collect();
        Ok(all.into_iter().collect())
    }

    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError> {
        Ok(self.on_all(|s| s.queue_len(queue)).await?.into_iter().sum())
    }

    async fn queue_oldest(&self, queue: &str) -> Result<Option<String>, BrokerError> {
        let oldest = self.on_all(|s| s.queue_oldest(queue)).await?;
        Ok(Self::merged(
            oldest.into_iter().map(Vec::from_iter).collect(),
            0,
            1,
            |p| enqueued_at(p),
        )
        .pop())
    }

    async fn queue_range(
        &self,
        queue: &str,
        offset: usize,
        count: usize,
    ) -> Result<Vec<String>, BrokerError> {
        let pages = self
            .on_all(|s| s.queue_range(queue, 0, offset.saturating_add(count)))
            .await?;
        Ok(Self::merged(pages, offset, count, |p| enqueued_at(p)))
    }

    async fn set_len(&self, set: SortedSet) -> Result<usize, BrokerError> {
        Ok(self.on_all(|s| s.set_len(set)).await?.into_iter().sum())
    }

    async fn set_range(
        &self,
        set: SortedSet,
        offset: usize,
        count: usize,
    ) -> Result<Vec<(f64, String)>, BrokerError> {
        let pages = self
            .on_all(|s| s.set_range(set, 0, offset.saturating_add(count)))
            .await?;
        Ok(Self::merged(pages, offset, count, |(score, _)| *score))
    }

    async fn processes(&self) -> Result<Vec<ProcessEntry>, BrokerError> {
        self.inner.home.processes().await
    }

    async fn stats(&self) -> Result<Stats, BrokerError> {
        self.inner.home.stats().await
    }

    async fn lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        self.shard_by_key(key).lock(key, owner, ttl).await
    }

    async fn lock_force(&self, key: &str, owner: &str, ttl: Duration) -> Result<(), BrokerError> {
        self.shard_by_key(key).lock_force(key, owner, ttl).await
    }

    async fn lock_holder(&self, key: &str) -> Result<Option<String>, BrokerError> {
        self.shard_by_key(key).lock_holder(key).await
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, BrokerError> {
        self.shard_by_key(key).unlock(key, owner).await
    }

    async fn pause(&self, queue: &str, until: Option<f64>) -> Result<(), BrokerError> {
        // Each shard's fetch reads its own copy.
        self.on_all(|s| s.pause(queue, until)).await?;
        Ok(())
    }

    async fn resume(&self, queue: &str) -> Result<(), BrokerError> {
        self.on_all(|s| s.resume(queue)).await?;
        Ok(())
    }

    async fn paused(&self) -> Result<Vec<(String, Option<f64>)>, BrokerError> {
        // A queue paused on any shard is paused, until the latest of its shards resumes.
        let mut merged: BTreeMap<String, Option<f64>> = BTreeMap::new();
        for (queue, until) in self.on_all(|s| s.paused()).await?.into_iter().flatten() {
            let latest = merged.entry(queue).or_insert(until);
            *latest = match (*latest, until) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        Ok(merged.into_iter().collect())
    }

    async fn remove_job(&self, queue: &str, jid: &str) -> Result<bool, BrokerError> {
        let removed = self.on_all(|s| s.remove_job(queue, jid)).await?;
        Ok(removed.into_iter().any(|r| r))
    }

    async fn remove_set_aside(&self, jid: &str) -> Result<Option<String>, BrokerError> {
        let removed = self.on_all(|s| s.remove_set_aside(jid)).await?;
        Ok(removed.into_iter().flatten().next())
    }

    fn subscribe(&self) -> Arc<Wakeups> {
        self.inner.hub.subscribe()
    }

    async fn signal(&self, identity: &str, signal: &str) -> Result<(), BrokerError> {
        self.inner.home.signal(identity, signal).await
    }

    async fn move_entry(
        &self,
        set: SortedSet,
        payload: &str,
        to: Settle,
    ) -> Result<bool, BrokerError> {
        // Only the shard holding the entry moves it, within that shard.
        let dies = matches!(to, Settle::Dead { .. });
        let moved = self
            .on_all(|s| s.move_entry(set, payload, to.clone()))
            .await?;
        if dies {
            self.trim_dead().await?;
        }
        Ok(moved.into_iter().any(|m| m))
    }

    async fn clear(&self, queue: &str) -> Result<usize, BrokerError> {
        Ok(self.on_all(|s| s.clear(queue)).await?.into_iter().sum())
    }

    async fn publish_periodic(&self, schedules: &[(String, String)]) -> Result<(), BrokerError> {
        self.inner.home.publish_periodic(schedules).await
    }

    async fn periodic(&self) -> Result<Vec<(String, String)>, BrokerError> {
        self.inner.home.periodic().await
    }
}
