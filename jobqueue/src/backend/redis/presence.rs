//! Processes on Redis ([`Presence`]): Sidekiq's process set and hashes, stats and signals,
//! the fetchers set recovery reads, and what processes publish for tools.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::AsyncCommands;

use super::codec::{lossy, number, payloads_from_bytes};
use super::RedisBroker;
use crate::backend::{lock, Heartbeat, Orphans, Presence, ProcessEntry, Published, Running, Stats};
use crate::error::BrokerError;
use crate::time::{epoch_seconds, from_epoch, now};

/// Sidekiq keeps daily stats for five years.
const STATS_TTL: i64 = 5 * 365 * 24 * 3600;

#[async_trait]
impl Presence for RedisBroker {
    async fn heartbeat(&self, beat: &Heartbeat) -> Result<Option<String>, BrokerError> {
        let keys = &self.inner.keys;
        // Sidekiq's `rtt_us`: the round trip of this process's previous heartbeat.
        let rtt_us = self.inner.rtt_us.load(Ordering::Relaxed);
        let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let ttl = i64::try_from(beat.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        // One transaction (see `transaction`).
        let mut pipe = redis::pipe();
        // An idle process has nothing to add; leaving out zero increments keeps it quiet.
        for (name, count) in [("processed", beat.processed), ("failed", beat.failed)] {
            if count == 0 {
                continue;
            }
            let daily = keys.plain(&format!("stat:{name}:{date}"));
            pipe.incr(keys.plain(&format!("stat:{name}")), count)
                .ignore()
                .incr(&daily, count)
                .ignore()
                .expire(&daily, STATS_TTL)
                .ignore();
        }
        if beat.skipped > 0 {
            pipe.incr(keys.plain("jobqueue:stat:skipped"), beat.skipped)
                .ignore();
        }
        if beat.cancelled > 0 {
            pipe.incr(keys.plain("jobqueue:stat:cancelled"), beat.cancelled)
                .ignore();
        }
        let hash = keys.plain(&beat.identity);
        // The running jobs, under both names Sidekiq's tools read: `:workers` (6.4.1) and
        // `:work` (6.4.2 and later); each value is JSON with the payload as a string.
        let work: Vec<(String, String)> = beat
            .running
            .iter()
            .map(|r| {
                // Sidekiq reads whole epoch seconds here.
                let run_at = epoch_seconds(r.since).trunc() as u64;
                let value = serde_json::json!({
                    "queue": r.queue, "payload": r.payload, "run_at": run_at,
                });
                (r.slot.clone(), value.to_string())
            })
            .collect();
        // An idle process that was idle at its last beat has nothing to clear.
        let was_busy = {
            let mut busy = lock(&self.inner.busy_at_last_beat);
            if work.is_empty() {
                busy.remove(&beat.identity)
            } else {
                !busy.insert(beat.identity.clone())
            }
        };
        for key in [format!("{hash}:workers"), format!("{hash}:work")] {
            if was_busy {
                pipe.unlink(&key).ignore();
            }
            if !work.is_empty() {
                pipe.hset_multiple(&key, &work)
                    .ignore()
                    .expire(&key, ttl)
                    .ignore();
            }
        }
        pipe.sadd(&keys.processes, &beat.identity)
            .ignore()
            .sadd(&keys.fetchers, &beat.identity)
            .ignore()
            .hset_multiple(
                &hash,
                &[
                    ("info", beat.info.clone()),
                    ("busy", beat.busy.to_string()),
                    ("beat", epoch_seconds(beat.beat).to_string()),
                    ("quiet", beat.quiet.to_string()),
                    ("rss", beat.rss_kb.to_string()),
                    ("rtt_us", rtt_us.to_string()),
                    // Read at the top level by Sidekiq 8.1.2 and later, in `info` before.
                    ("concurrency", beat.concurrency.to_string()),
                    // Ours: Sidekiq's tools read named fields and pass this one by.
                    ("classes", beat.classes.clone()),
                ],
            )
            .ignore()
            .expire(&hash, ttl)
            .ignore()
            .rpop(format!("{hash}-signals"), None);
        let started = Instant::now();
        let mut answers = self.transaction(&pipe).await?;
        let signal: Option<String> =
            redis::from_redis_value(answers.pop().unwrap_or(redis::Value::Nil))
                .map_err(redis::RedisError::from)?;
        let rtt = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.inner.rtt_us.store(rtt.max(1), Ordering::Relaxed);
        Ok(signal)
    }

    async fn forget(&self, identity: &str) -> Result<(), BrokerError> {
        let keys = &self.inner.keys;
        let hash = keys.plain(identity);
        let _: i64 = self
            .inner
            .scripts
            .forget
            .key(&keys.processes)
            .key(&keys.fetchers)
            .key(&hash)
            .key(format!("{hash}:workers"))
            .key(format!("{hash}:work"))
            .key(keys.in_flight(identity))
            .arg(identity)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn orphans(&self, except: &str) -> Result<Vec<Orphans>, BrokerError> {
        let keys = &self.inner.keys;
        let mut conn = self.conn();
        let fetchers: Vec<String> = conn.smembers(&keys.fetchers).await?;
        let candidates: Vec<String> = fetchers.into_iter().filter(|f| f != except).collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for identity in &candidates {
            pipe.exists(keys.plain(identity));
        }
        let alive: Vec<bool> = pipe.query_async(&mut conn).await?;
        let dead: Vec<String> = candidates
            .into_iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(identity, _)| identity)
            .collect();
        let mut orphans = Vec::with_capacity(dead.len());
        for identity in dead {
            let payloads: Vec<Vec<u8>> = conn.lrange(keys.in_flight(&identity), 0, -1).await?;
            orphans.push(Orphans {
                identity,
                payloads: payloads_from_bytes(payloads),
            });
        }
        Ok(orphans)
    }

    async fn signal(&self, identity: &str, signal: &str) -> Result<(), BrokerError> {
        let key = format!("{}-signals", self.inner.keys.plain(identity));
        let mut pipe = redis::pipe();
        pipe.lpush(&key, signal).expire(&key, 60);
        self.transaction(&pipe).await?;
        Ok(())
    }

    async fn processes(&self) -> Result<Vec<ProcessEntry>, BrokerError> {
        let keys = &self.inner.keys;
        let mut conn = self.conn();
        let identities: Vec<Vec<u8>> = conn.smembers(&keys.processes).await?;
        let mut identities: Vec<String> = identities.into_iter().map(lossy).collect();
        identities.sort();
        if identities.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for identity in &identities {
            let hash = keys.plain(identity);
            pipe.cmd("HMGET")
                .arg(&hash)
                .arg(&["info", "busy", "beat", "quiet", "rss", "classes"])
                .hgetall(format!("{hash}:work"));
        }
        // Read as bytes and parsed leniently, as Sidekiq reads them (`to_i`): a field another
        // writer left unreadable counts as absent, and never hides the other processes.
        type Fields = [Option<Vec<u8>>; 6];
        type Work = Vec<(Vec<u8>, Vec<u8>)>;
        let rows: Vec<(Fields, Work)> = pipe.query_async(&mut conn).await?;
        Ok(identities
            .into_iter()
            .zip(rows)
            .filter_map(|(identity, (fields, work))| {
                let [info, busy, beat, quiet, rss, classes] = fields.map(|f| f.map(lossy));
                let work = work
                    .into_iter()
                    .map(|(k, v)| (lossy(k), lossy(v)))
                    .collect();
                Some(ProcessEntry {
                    identity,
                    info: info?,
                    busy: number(busy).unwrap_or(0),
                    beat: from_epoch(number(beat).unwrap_or(0.0)),
                    quiet: quiet.as_deref() == Some("true"),
                    rss_kb: number(rss).unwrap_or(0),
                    running: running_from_work(work),
                    classes: classes.unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn stats(&self) -> Result<Stats, BrokerError> {
        let keys = &self.inner.keys;
        // A total another writer left unreadable counts as 0, as Sidekiq's `to_i` reads it.
        type Totals = [Option<Vec<u8>>; 4];
        let totals: Totals = redis::pipe()
            .get(keys.plain("stat:processed"))
            .get(keys.plain("stat:failed"))
            .get(keys.plain("jobqueue:stat:skipped"))
            .get(keys.plain("jobqueue:stat:cancelled"))
            .query_async(&mut self.conn())
            .await?;
        let [processed, failed, skipped, cancelled] = totals.map(|t| number(t.map(lossy)));
        Ok(Stats {
            processed: processed.unwrap_or(0),
            failed: failed.unwrap_or(0),
            skipped: skipped.unwrap_or(0),
            cancelled: cancelled.unwrap_or(0),
        })
    }

    async fn announce_cancel(&self, jid: &str) -> Result<(), BrokerError> {
        let notice = format!("{}{jid}", super::listener::CANCEL_NOTICE);
        let _: () = self.conn().publish(&self.inner.keys.wake, notice).await?;
        Ok(())
    }

    async fn publish(
        &self,
        what: Published,
        entries: &[(String, String)],
    ) -> Result<(), BrokerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let key = self.inner.keys.published(what);
        let _: () = self.conn().hset_multiple(&key, entries).await?;
        Ok(())
    }

    async fn published(&self, what: Published) -> Result<Vec<(String, String)>, BrokerError> {
        let key = self.inner.keys.published(what);
        let all: Vec<(Vec<u8>, Vec<u8>)> = self.conn().hgetall(&key).await?;
        let all: BTreeMap<String, String> =
            all.into_iter().map(|(k, v)| (lossy(k), lossy(v))).collect();
        Ok(all.into_iter().collect())
    }
}

impl RedisBroker {
    /// Runs `commands` as one `MULTI`/`EXEC` transaction and returns `EXEC`'s answers.
    /// Written out as plain commands, as pushes are, not as redis-rs's atomic pipeline: on a
    /// cluster connection a `MOVED` met inside an atomic pipeline comes back as an aborted
    /// transaction, an error, where in a plain pipeline it is followed like any other
    /// command's. A command that failed inside the transaction is an error, as in an atomic
    /// pipeline.
    async fn transaction(
        &self,
        commands: &redis::Pipeline,
    ) -> Result<Vec<redis::Value>, BrokerError> {
        let mut pipe = redis::Pipeline::with_capacity(commands.len() + 2);
        pipe.cmd("MULTI").ignore();
        for command in commands.cmd_iter() {
            pipe.add_command(command.clone()).ignore();
        }
        pipe.cmd("EXEC");
        let (answers,): (Vec<redis::Value>,) = pipe.query_async(&mut self.conn()).await?;
        if let Some(redis::Value::ServerError(e)) = answers
            .iter()
            .find(|a| matches!(a, redis::Value::ServerError(_)))
        {
            return Err(redis::RedisError::from(e.clone()).into());
        }
        Ok(answers)
    }

    /// The number of shards of the cluster whose home this broker is: the recorded one, or
    /// `proposed`, recorded now when there is none (the first process to connect decides
    /// for all that follow).
    pub(crate) async fn shard_count(&self, proposed: usize) -> Result<usize, BrokerError> {
        let key = self.inner.keys.plain("jobqueue:shards");
        let (_, count): (bool, usize) = redis::pipe()
            .set_nx(&key, proposed)
            .get(&key)
            .query_async(&mut self.conn())
            .await?;
        Ok(count)
    }

    /// Marks `identity` alive here for `ttl`, as its heartbeat's process hash does where
    /// the heartbeat is kept: a cluster's shards keep this mark for their own recovery
    /// (`orphans`, `forget`) and their limits' sweep of dead processes' slots.
    pub(crate) async fn mark_alive(
        &self,
        identity: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let keys = &self.inner.keys;
        let hash = keys.plain(identity);
        let ttl = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        redis::pipe()
            .sadd(&keys.fetchers, identity)
            .ignore()
            .hset(&hash, "beat", now())
            .ignore()
            .expire(&hash, ttl)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }
}

/// The running jobs of a process's `:work` hash (slot → `{queue, payload, run_at}`), oldest
/// first; entries that do not parse are left out.
fn running_from_work(work: Vec<(String, String)>) -> Vec<Running> {
    #[derive(serde::Deserialize)]
    struct Work {
        queue: String,
        payload: String,
        run_at: f64,
    }
    let mut running: Vec<Running> = work
        .into_iter()
        .filter_map(|(slot, value)| {
            let work: Work = serde_json::from_str(&value).ok()?;
            Some(Running {
                slot,
                queue: work.queue,
                payload: work.payload,
                since: from_epoch(work.run_at),
            })
        })
        .collect();
    running.sort_by_key(|r| r.since);
    running
}
