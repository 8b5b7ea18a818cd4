//! Presence, the key/value store, operator views and batches over the shards: processes
//! and what they publish at the home, keys on the shard their name falls in, views summed
//! or merged, and pages read shard after shard so that no call reads more than a page.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::future::try_join_all;

use super::ClusterBroker;
use crate::backend::{
    BatchCallbacks, BatchStatus, Batches, Entry, Heartbeat, KeyValue, LimitEntry, Location,
    Orphans, Paused, Presence, ProcessEntry, Published, Span, Stats, Views,
};
use crate::error::BrokerError;

#[async_trait]
impl Presence for ClusterBroker {
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

    async fn forget(&self, identity: &str) -> Result<(), BrokerError> {
        self.on_all(|s| s.forget(identity)).await?;
        self.inner.home.forget(identity).await
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

    async fn signal(&self, identity: &str, signal: &str) -> Result<(), BrokerError> {
        self.inner.home.signal(identity, signal).await
    }

    async fn processes(&self) -> Result<Vec<ProcessEntry>, BrokerError> {
        self.inner.home.processes().await
    }

    async fn announce_cancel(&self, jid: &str) -> Result<(), BrokerError> {
        // Any node's subscribers hear a publication on any node.
        self.inner.home.announce_cancel(jid).await
    }

    async fn stats(&self) -> Result<Stats, BrokerError> {
        self.inner.home.stats().await
    }

    async fn publish(
        &self,
        what: Published,
        entries: &[(String, String)],
    ) -> Result<(), BrokerError> {
        self.inner.home.publish(what, entries).await
    }

    async fn published(&self, what: Published) -> Result<Vec<(String, String)>, BrokerError> {
        self.inner.home.published(what).await
    }
}

#[async_trait]
impl KeyValue for ClusterBroker {
    async fn get(&self, key: &str) -> Result<Option<String>, BrokerError> {
        self.shard_by_key(key).get(key).await
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), BrokerError> {
        self.shard_by_key(key).set(key, value, ttl).await
    }

    async fn lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        self.shard_by_key(key).lock(key, owner, ttl).await
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, BrokerError> {
        self.shard_by_key(key).unlock(key, owner).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, BrokerError> {
        // One read per shard, of the keys that live there.
        let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            by_shard.entry(self.shard_of_key(key)).or_default().push(i);
        }
        let shards = &self.inner.shards;
        let answers = try_join_all(by_shard.into_iter().map(|(s, indices)| async move {
            let mine: Vec<String> = indices.iter().map(|&i| keys[i].clone()).collect();
            let values = shards[s].get_many(&mine).await?;
            Ok::<_, BrokerError>((indices, values))
        }))
        .await?;
        let mut values = vec![None; keys.len()];
        for (indices, answer) in answers {
            for (i, value) in indices.into_iter().zip(answer) {
                values[i] = value;
            }
        }
        Ok(values)
    }
}

#[async_trait]
impl Views for ClusterBroker {
    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        let all: BTreeSet<String> = self
            .on_all(|s| s.queues())
            .await?
            .into_iter()
            .flatten()
            .collect();
        Ok(all.into_iter().collect())
    }

    async fn len(&self, at: Location<'_>) -> Result<usize, BrokerError> {
        Ok(self.on_all(|s| s.len(at)).await?.into_iter().sum())
    }

    /// A page is read shard after shard, in shard order: each shard's entries in their own
    /// order (a queue's next job first, a set's earliest), after the sizes of the shards
    /// before it. A page by score is merged from each shard's first `count` in the range.
    async fn range(&self, at: Location<'_>, span: Span) -> Result<Vec<Entry>, BrokerError> {
        let shards = &self.inner.shards;
        match span {
            Span::Page { mut offset, count } => {
                let sizes = self.on_all(|s| s.len(at)).await?;
                let mut page = Vec::new();
                for (shard, size) in shards.iter().zip(sizes) {
                    if page.len() >= count {
                        break;
                    }
                    if offset >= size {
                        offset -= size;
                        continue;
                    }
                    let want = count - page.len();
                    page.extend(shard.range(at, Span::page(offset, want)).await?);
                    offset = 0;
                }
                Ok(page)
            }
            Span::Scored { count, .. } => {
                let mut all: Vec<Entry> = self
                    .on_all(|s| s.range(at, span))
                    .await?
                    .into_iter()
                    .flatten()
                    .collect();
                all.sort_by_key(|e| e.at.unwrap_or(SystemTime::UNIX_EPOCH));
                all.truncate(count);
                Ok(all)
            }
        }
    }

    async fn remove(&self, at: Location<'_>, payloads: &[String]) -> Result<usize, BrokerError> {
        Ok(self
            .on_all(|s| s.remove(at, payloads))
            .await?
            .into_iter()
            .sum())
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

    async fn pause(&self, queue: &str, state: Paused) -> Result<(), BrokerError> {
        // Each shard's fetch reads its own copy.
        self.on_all(|s| s.pause(queue, state)).await?;
        Ok(())
    }

    async fn paused(&self) -> Result<Vec<(String, Option<SystemTime>)>, BrokerError> {
        // A queue paused on any shard is paused, until the latest of its shards resumes.
        let mut merged: BTreeMap<String, Option<SystemTime>> = BTreeMap::new();
        for (queue, until) in self.on_all(|s| s.paused()).await?.into_iter().flatten() {
            let latest = merged.entry(queue).or_insert(until);
            *latest = match (*latest, until) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        Ok(merged.into_iter().collect())
    }
}

#[async_trait]
impl Batches for ClusterBroker {
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
}
