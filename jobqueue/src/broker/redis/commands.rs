//! The broker's commands: each [`Broker`] method as a script call or a pipeline.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::{AsyncCommands, Script, ScriptInvocation};

use super::codec::{payload_bytes, payload_from_bytes, payloads_from_bytes};
use super::keys::Keys;
use super::{RedisBroker, UNLOCK};
use crate::broker::{
    dead_trim, lock, Ack, BatchCallbacks, BatchStatus, Broker, DirectMoves, Due, Fetched,
    Heartbeat, LimitEntry, MarkerRead, MovedJob, Orphans, Placement, ProcessEntry, Push, Running,
    Settle, SortedSet, Stats, Wakeups, BATCH_TTL,
};
use crate::error::BrokerError;
use crate::time::{epoch_seconds, from_epoch, now};

/// The most jobs a fetch moves in one call while it looks past jobs set aside.
const MAX_SCAN: usize = 1000;

/// How many limit keys one call of the unpark script looks at.
const UNPARK_BATCH: usize = 100;

/// Sidekiq keeps daily stats for five years.
const STATS_TTL: i64 = 5 * 365 * 24 * 3600;

/// A TTL in milliseconds, at least 1 (Redis refuses 0).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl Broker for RedisBroker {
    async fn push(&self, jobs: &[Push]) -> Result<(), BrokerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let keys = &self.inner.keys;
        let mut immediate: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut scheduled: Vec<(f64, &str)> = Vec::new();
        for job in jobs {
            match job.at {
                None => immediate
                    .entry(job.queue.as_str())
                    .or_default()
                    .push(&job.payload),
                Some(at) => scheduled.push((epoch_seconds(at), &job.payload)),
            }
        }
        let mut pipe = redis::pipe();
        pipe.cmd("MULTI").ignore();
        if !immediate.is_empty() {
            pipe.sadd(&keys.queues, immediate.keys().copied().collect::<Vec<_>>())
                .ignore();
            for (queue, payloads) in &immediate {
                pipe.lpush(keys.queue(queue), payloads).ignore();
            }
            pipe.publish(&keys.wake, "queued").ignore();
        }
        if !scheduled.is_empty() {
            pipe.zadd_multiple(keys.set(SortedSet::Schedule), &scheduled)
                .ignore();
            pipe.publish(&keys.wake, "scheduled").ignore();
        }
        self.send_push(pipe).await
    }

    async fn fetch(
        &self,
        process: &str,
        queues: &[String],
        max: usize,
        lease: Option<Duration>,
        markers: bool,
    ) -> Result<Vec<Fetched>, BrokerError> {
        if queues.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let locks = match markers {
            true => self.inner.keys.lock(""),
            false => String::new(),
        };
        let Some(lease) = lease else {
            let mut call = self.fetch_call(&self.inner.scripts.fetch, process, queues, max);
            call.arg(&locks);
            let reply: redis::Value = call.invoke_async(&mut self.conn()).await?;
            return Ok(fetched(queues, rows(reply, markers)?).collect());
        };
        // Jobs set aside do not count: the script looks further down the queue, in larger
        // steps while it finds only such jobs, until it has `max` or the queues are empty;
        // so a tenant with few jobs behind one with many waits for few round trips.
        let mut scan = max;
        let mut taken: Vec<Fetched> = Vec::new();
        loop {
            let script = &self.inner.scripts.fetch_limited;
            let mut call = self.fetch_call(script, process, queues, max - taken.len());
            call.arg(scan)
                .arg(process)
                .arg(&self.inner.keys.prefix)
                .arg(lease.as_secs_f64())
                .arg(&locks);
            let (looked, reply): (usize, redis::Value) =
                call.invoke_async(&mut self.conn()).await?;
            let flat = rows(reply, markers)?;
            let found = flat.len();
            taken.extend(fetched(queues, flat));
            // Fewer looked at than allowed: the queues ran dry, or it has all it wanted.
            if taken.len() >= max || looked < scan {
                return Ok(taken);
            }
            // Larger steps only while a step finds nothing to take.
            scan = if found == 0 {
                (scan * 4).min(MAX_SCAN.max(max))
            } else {
                max - taken.len()
            };
        }
    }

    async fn unpark_due(&self, now: f64, lease: Duration) -> Result<usize, BrokerError> {
        let moved: usize = self
            .inner
            .scripts
            .unpark
            .key(self.inner.keys.limits())
            .arg(&self.inner.keys.prefix)
            .arg(now)
            .arg(UNPARK_BATCH)
            .arg(lease.as_secs_f64())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(moved)
    }

    async fn limits(&self) -> Result<Vec<LimitEntry>, BrokerError> {
        let keys = &self.inner.keys;
        let waiting: Vec<(String, f64)> =
            self.conn().zrange_withscores(keys.limits(), 0, -1).await?;
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key, _) in &waiting {
            pipe.llen(keys.slots(key)).llen(keys.parked(key));
        }
        let counts: Vec<(usize, usize)> = pipe.query_async(&mut self.conn()).await?;
        Ok(waiting
            .into_iter()
            .zip(counts)
            .map(|((key, next_look), (held, parked))| LimitEntry {
                key,
                held,
                parked,
                next_look,
            })
            .collect())
    }

    async fn ack(&self, process: &str, acks: &[Ack]) -> Result<(), BrokerError> {
        let payloads: Vec<&str> = acks.iter().map(|ack| ack.payload.as_str()).collect();
        let unlocks: Vec<&(String, String)> =
            acks.iter().filter_map(|ack| ack.unlock.as_ref()).collect();
        self.ack_and_unlock(process, &payloads, &unlocks).await
    }

    async fn batch_add(
        &self,
        bid: &str,
        description: &str,
        callbacks: &BatchCallbacks,
        jids: &[String],
    ) -> Result<(), BrokerError> {
        let keys = &self.inner.keys;
        let (hash, pending) = keys.batch(bid);
        let mut call = self.inner.scripts.batch_add.key(hash);
        call.key(pending).arg(BATCH_TTL.as_secs()).arg(description);
        for callback in [&callbacks.on_complete, &callbacks.on_success] {
            match callback {
                Some(push) => call
                    .arg(keys.queue(&push.queue))
                    .arg(&push.queue)
                    .arg(payload_bytes(&push.payload).as_ref()),
                None => call.arg("").arg("").arg(""),
            };
        }
        call.arg(jids);
        call.invoke_async::<i64>(&mut self.conn()).await?;
        Ok(())
    }

    async fn batch_done(&self, bid: &str, jid: &str, succeeded: bool) -> Result<bool, BrokerError> {
        let keys = &self.inner.keys;
        let (hash, pending) = keys.batch(bid);
        let done: i64 = self
            .inner
            .scripts
            .batch_done
            .key(hash)
            .key(pending)
            .key(&keys.queues)
            .arg(jid)
            .arg(if succeeded { "1" } else { "0" })
            .arg(&keys.wake)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(done == 2)
    }

    async fn batch_status(&self, bid: &str) -> Result<Option<BatchStatus>, BrokerError> {
        let (hash, pending) = self.inner.keys.batch(bid);
        type Fields = (
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<String>,
        );
        let (fields, pending): (Fields, u64) = redis::pipe()
            .cmd("HMGET")
            .arg(&hash)
            .arg(&["description", "total", "succeeded", "failed", "finished"])
            .scard(&pending)
            .query_async(&mut self.conn())
            .await?;
        let (description, total, succeeded, failed, finished) = fields;
        Ok(description.map(|description| BatchStatus {
            description,
            total: total.unwrap_or(0),
            pending,
            succeeded: succeeded.unwrap_or(0),
            failed: failed.unwrap_or(0),
            finished: finished.is_some(),
        }))
    }

    async fn mark_cancelled(&self, jid: &str, ttl: Duration) -> Result<(), BrokerError> {
        let key = self.inner.keys.plain("jobqueue:cancelled");
        let now = now();
        let mut pipe = redis::pipe();
        pipe.zrembyscore(&key, "-inf", now)
            .zadd(&key, jid, now + ttl.as_secs_f64());
        self.transaction(&pipe).await?;
        Ok(())
    }

    async fn cancelled_among(&self, jids: &[String]) -> Result<Vec<String>, BrokerError> {
        if jids.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.inner.keys.plain("jobqueue:cancelled");
        let until: Vec<Option<f64>> = redis::cmd("ZMSCORE")
            .arg(&key)
            .arg(jids)
            .query_async(&mut self.conn())
            .await?;
        let now = now();
        Ok(jids
            .iter()
            .zip(until)
            .filter(|(_, until)| until.is_some_and(|u| u > now))
            .map(|(jid, _)| jid.clone())
            .collect())
    }

    async fn ack_then(
        &self,
        process: &str,
        payload: &str,
        then: &[Push],
    ) -> Result<bool, BrokerError> {
        // The settle script: a discard of the job, then its follow-ups, each pushed only if
        // the discard found the job.
        let keys = &self.inner.keys;
        let discard = [(payload.to_owned(), Settle::Discard)];
        let mut call = self.settle_call(process, &discard, now());
        for job in then {
            let (op, dest, target) = match job.at {
                None => ("then_lpush", keys.queue(&job.queue), job.queue.clone()),
                Some(at) => (
                    "then_zadd",
                    keys.set(SortedSet::Schedule),
                    epoch_seconds(at).to_string(),
                ),
            };
            call.key(dest)
                .arg("")
                .arg(op)
                .arg(payload_bytes(&job.payload).as_ref())
                .arg(target)
                .arg("");
        }
        let moved: Vec<i64> = call.invoke_async(&mut self.conn()).await?;
        Ok(moved.first() == Some(&1))
    }

    async fn settle_many(
        &self,
        process: &str,
        moves: &[(String, Settle)],
    ) -> Result<Vec<bool>, BrokerError> {
        if moves.is_empty() {
            return Ok(Vec::new());
        }
        // One moment for the whole settle: the dead set's scores and its trim.
        let call = self.settle_call(process, moves, now());
        let moved: Vec<i64> = call.invoke_async(&mut self.conn()).await?;
        Ok(moved.into_iter().map(|m| m == 1).collect())
    }

    async fn take_due(
        &self,
        process: &str,
        set: SortedSet,
        now: f64,
        limit: usize,
        direct: Option<DirectMoves<'_>>,
    ) -> Result<Due, BrokerError> {
        let keys = &self.inner.keys;
        // An empty stamp moves nothing directly.
        let (stamp, max_bytes, named, through_client) = match direct {
            // Written as the payload's other timestamps are, by serde_json.
            Some(d) => (
                serde_json::Value::from(d.enqueued_at).to_string(),
                d.max_payload_bytes,
                d.named,
                d.through_client,
            ),
            None => (String::new(), 0, false, &[][..]),
        };
        let mut call = self.inner.scripts.take_due.key(keys.set(set));
        call.key(keys.in_flight(process))
            .key(&keys.queues)
            .key(&keys.fetchers)
            .arg(now)
            .arg(limit)
            .arg(stamp)
            .arg(max_bytes)
            .arg(&keys.prefix)
            .arg(&keys.wake)
            .arg(if named { "1" } else { "" })
            .arg(process);
        for class in through_client {
            call.arg(*class);
        }
        type Reply = (Vec<f64>, Vec<(Vec<u8>, f64)>, Vec<(String, String, String)>);
        let (moved, taken, named): Reply = call.invoke_async(&mut self.conn()).await?;
        Ok(Due {
            moved,
            named: named
                .into_iter()
                .map(|(jid, class, queue)| MovedJob { jid, class, queue })
                .collect(),
            taken: taken
                .into_iter()
                .map(|(payload, at)| (at, payload_from_bytes(payload)))
                .collect(),
        })
    }

    async fn next_due(&self) -> Result<Option<f64>, BrokerError> {
        let keys = &self.inner.keys;
        type Firsts = Vec<(Vec<u8>, f64)>;
        let (schedule, retry, limits): (Firsts, Firsts, Firsts) = redis::pipe()
            .zrange_withscores(keys.set(SortedSet::Schedule), 0, 0)
            .zrange_withscores(keys.set(SortedSet::Retry), 0, 0)
            .zrange_withscores(keys.limits(), 0, 0)
            .query_async(&mut self.conn())
            .await?;
        Ok(schedule
            .into_iter()
            .chain(retry)
            .chain(limits)
            .map(|(_, score)| score)
            .reduce(f64::min))
    }

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

    async fn unregister(&self, identity: &str) -> Result<(), BrokerError> {
        let keys = &self.inner.keys;
        let hash = keys.plain(identity);
        redis::pipe()
            .srem(&keys.processes, identity)
            .ignore()
            .del(&[
                hash.clone(),
                format!("{hash}:workers"),
                format!("{hash}:work"),
            ])
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await?;
        self.forget(identity).await
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

    async fn forget(&self, identity: &str) -> Result<(), BrokerError> {
        let keys = &self.inner.keys;
        let _: i64 = self
            .inner
            .scripts
            .forget
            .key(&keys.fetchers)
            .key(keys.in_flight(identity))
            .key(keys.plain(identity))
            .arg(identity)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn in_flight(&self, process: &str) -> Result<Vec<String>, BrokerError> {
        let list = self.inner.keys.in_flight(process);
        let payloads: Vec<Vec<u8>> = self.conn().lrange(list, 0, -1).await?;
        Ok(payloads_from_bytes(payloads))
    }

    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        let mut queues: Vec<String> = self.conn().smembers(&self.inner.keys.queues).await?;
        queues.sort();
        Ok(queues)
    }

    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError> {
        Ok(self.conn().llen(self.inner.keys.queue(queue)).await?)
    }

    async fn queue_oldest(&self, queue: &str) -> Result<Option<String>, BrokerError> {
        let mut last: Vec<Vec<u8>> = self
            .conn()
            .lrange(self.inner.keys.queue(queue), -1, -1)
            .await?;
        Ok(last.pop().map(payload_from_bytes))
    }

    async fn queue_range(
        &self,
        queue: &str,
        offset: usize,
        count: usize,
    ) -> Result<Vec<String>, BrokerError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        // Jobs are pushed at the head and taken from the tail: the next to run is last.
        let stop = -1 - isize::try_from(offset).unwrap_or(isize::MAX - 1);
        let start = stop.saturating_sub(isize::try_from(count).unwrap_or(isize::MAX) - 1);
        let mut jobs: Vec<Vec<u8>> = self
            .conn()
            .lrange(self.inner.keys.queue(queue), start, stop)
            .await?;
        jobs.reverse();
        Ok(payloads_from_bytes(jobs))
    }

    async fn set_len(&self, set: SortedSet) -> Result<usize, BrokerError> {
        Ok(self.conn().zcard(self.inner.keys.set(set)).await?)
    }

    async fn set_range(
        &self,
        set: SortedSet,
        offset: usize,
        count: usize,
    ) -> Result<Vec<(f64, String)>, BrokerError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let start = isize::try_from(offset).unwrap_or(isize::MAX);
        let stop = start.saturating_add(isize::try_from(count).unwrap_or(isize::MAX) - 1);
        let entries: Vec<(Vec<u8>, f64)> = self
            .conn()
            .zrange_withscores(self.inner.keys.set(set), start, stop)
            .await?;
        Ok(entries
            .into_iter()
            .map(|(p, s)| (s, payload_from_bytes(p)))
            .collect())
    }

    async fn processes(&self) -> Result<Vec<ProcessEntry>, BrokerError> {
        let keys = &self.inner.keys;
        let mut conn = self.conn();
        let mut identities: Vec<String> = conn.smembers(&keys.processes).await?;
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
        type Fields = (
            Option<String>,
            Option<usize>,
            Option<f64>,
            Option<String>,
            Option<u64>,
            Option<String>,
        );
        let rows: Vec<(Fields, Vec<(String, String)>)> = pipe.query_async(&mut conn).await?;
        Ok(identities
            .into_iter()
            .zip(rows)
            .filter_map(|(identity, (fields, work))| {
                let (info, busy, beat, quiet, rss, classes) = fields;
                Some(ProcessEntry {
                    identity,
                    info: info?,
                    busy: busy.unwrap_or(0),
                    beat: from_epoch(beat.unwrap_or(0.0)),
                    quiet: quiet.as_deref() == Some("true"),
                    rss_kb: rss.unwrap_or(0),
                    running: running_from_work(work),
                    classes: classes.unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn stats(&self) -> Result<Stats, BrokerError> {
        let keys = &self.inner.keys;
        type Totals = (Option<u64>, Option<u64>, Option<u64>, Option<u64>);
        let (processed, failed, skipped, cancelled): Totals = redis::pipe()
            .get(keys.plain("stat:processed"))
            .get(keys.plain("stat:failed"))
            .get(keys.plain("jobqueue:stat:skipped"))
            .get(keys.plain("jobqueue:stat:cancelled"))
            .query_async(&mut self.conn())
            .await?;
        Ok(Stats {
            processed: processed.unwrap_or(0),
            failed: failed.unwrap_or(0),
            skipped: skipped.unwrap_or(0),
            cancelled: cancelled.unwrap_or(0),
        })
    }

    async fn lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        Ok(self
            .inner
            .scripts
            .lock
            .key(self.inner.keys.lock(key))
            .arg(owner)
            .arg(millis(ttl))
            .invoke_async(&mut self.conn())
            .await?)
    }

    async fn lock_force(&self, key: &str, owner: &str, ttl: Duration) -> Result<(), BrokerError> {
        let options =
            redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(millis(ttl)));
        let _: () = self
            .conn()
            .set_options(self.inner.keys.lock(key), owner, options)
            .await?;
        Ok(())
    }

    async fn lock_holder(&self, key: &str) -> Result<Option<String>, BrokerError> {
        Ok(self.conn().get(self.inner.keys.lock(key)).await?)
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, BrokerError> {
        let released: i64 = self
            .inner
            .scripts
            .unlock
            .key(self.inner.keys.lock(key))
            .arg(owner)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(released == 1)
    }

    async fn pause(&self, queue: &str, until: Option<f64>) -> Result<(), BrokerError> {
        let score = until.unwrap_or(f64::INFINITY);
        let _: () = self
            .conn()
            .zadd(&self.inner.keys.paused, queue, score)
            .await?;
        Ok(())
    }

    async fn resume(&self, queue: &str) -> Result<(), BrokerError> {
        let keys = &self.inner.keys;
        redis::pipe()
            .zrem(&keys.paused, queue)
            .ignore()
            .publish(&keys.wake, "queued")
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn paused(&self) -> Result<Vec<(String, Option<f64>)>, BrokerError> {
        let keys = &self.inner.keys;
        let mut conn = self.conn();
        let _: () = conn.zrembyscore(&keys.paused, "-inf", now()).await?;
        let entries: Vec<(String, f64)> = conn.zrange_withscores(&keys.paused, 0, -1).await?;
        Ok(entries
            .into_iter()
            .map(|(queue, until)| (queue, until.is_finite().then_some(until)))
            .collect())
    }

    async fn remove_job(&self, queue: &str, jid: &str) -> Result<bool, BrokerError> {
        let keys = &self.inner.keys;
        let removed: i64 = self
            .inner
            .scripts
            .remove_job
            .key(keys.queue(queue))
            .key(keys.set(SortedSet::Schedule))
            .key(keys.set(SortedSet::Retry))
            .arg(jid)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(removed == 1)
    }

    async fn remove_set_aside(&self, jid: &str) -> Result<Option<String>, BrokerError> {
        let key: Option<String> = self
            .inner
            .scripts
            .remove_set_aside
            .key(self.inner.keys.limits())
            .arg(&self.inner.keys.prefix)
            .arg(jid)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(key)
    }

    async fn watch(&self, queues: &[String], sets: bool) -> Result<bool, BrokerError> {
        let keys = &self.inner.keys;
        let mut watched: Vec<String> = queues.iter().map(|q| keys.queue(q)).collect();
        if !queues.is_empty() {
            watched.push(keys.queues.clone());
        }
        if sets {
            watched.push(keys.set(SortedSet::Schedule));
            watched.push(keys.set(SortedSet::Retry));
        }
        self.inner.tracker.arm(watched).await
    }

    async fn signal(&self, identity: &str, signal: &str) -> Result<(), BrokerError> {
        let key = format!("{}-signals", self.inner.keys.plain(identity));
        let mut pipe = redis::pipe();
        pipe.lpush(&key, signal).expire(&key, 60);
        self.transaction(&pipe).await?;
        Ok(())
    }

    async fn move_entry(
        &self,
        set: SortedSet,
        payload: &str,
        to: Settle,
    ) -> Result<bool, BrokerError> {
        let keys = &self.inner.keys;
        let now = now();
        let (dead_before, dead_keep) = dead_trim(now);
        let (op, dest, stored, target) = script_args(keys, to.placement(now));
        let moved: i64 = self
            .inner
            .scripts
            .move_entry
            .key(keys.set(set))
            .key(dest)
            .key(&keys.queues)
            .arg(payload_bytes(payload).as_ref())
            .arg(op)
            .arg(stored)
            .arg(target)
            .arg(dead_before)
            .arg(dead_keep)
            .arg(&keys.wake)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(moved == 1)
    }

    async fn publish_periodic(&self, schedules: &[(String, String)]) -> Result<(), BrokerError> {
        if schedules.is_empty() {
            return Ok(());
        }
        let key = self.inner.keys.plain("jobqueue:periodic");
        let _: () = self.conn().hset_multiple(&key, schedules).await?;
        Ok(())
    }

    async fn periodic(&self) -> Result<Vec<(String, String)>, BrokerError> {
        let key = self.inner.keys.plain("jobqueue:periodic");
        let all: BTreeMap<String, String> = self.conn().hgetall(&key).await?;
        Ok(all.into_iter().collect())
    }

    async fn clear(&self, queue: &str) -> Result<usize, BrokerError> {
        let key = self.inner.keys.queue(queue);
        let mut pipe = redis::pipe();
        pipe.llen(&key).del(&key);
        let mut answers = self.transaction(&pipe).await?.into_iter();
        let len: usize = redis::from_redis_value(answers.next().unwrap_or(redis::Value::Int(0)))
            .map_err(redis::RedisError::from)?;
        Ok(len)
    }

    fn subscribe(&self) -> Arc<Wakeups> {
        self.inner.hub.subscribe()
    }
}

/// A settle's placement as the settle and move scripts take it: the operation, its
/// destination key, the payload to store, and the `target` (the queue's name, to list it
/// in `queues`, or the score).
fn script_args<'a>(
    keys: &Keys,
    placement: Placement<'a>,
) -> (&'static str, String, &'a str, String) {
    match placement {
        Placement::Queue {
            queue,
            payload,
            front,
        } => (
            if front { "rpush" } else { "lpush" },
            keys.queue(queue),
            payload,
            queue.to_owned(),
        ),
        Placement::Set {
            set,
            payload,
            score,
        } => (
            if set == SortedSet::Dead {
                "dead"
            } else {
                "zadd"
            },
            keys.set(set),
            payload,
            score.to_string(),
        ),
        Placement::Nowhere => ("discard", keys.set(SortedSet::Dead), "", String::new()),
    }
}

impl RedisBroker {
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

    /// Runs `commands` as one `MULTI`/`EXEC` transaction and returns `EXEC`'s answers.
    /// Written out as plain commands, as pushes are (`send_push`), not as redis-rs's atomic
    /// pipeline: on a cluster connection a `MOVED` or `ASK` met inside an atomic pipeline
    /// comes back as an aborted transaction, an error, where in a plain pipeline it is
    /// followed like any other command's (`ASKING`, sent before `MULTI`, holds until `EXEC`).
    /// A command that failed inside the transaction is an error, as in an atomic pipeline.
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

    /// Sends a push's commands (`pipe`, begun with `MULTI`) as one transaction and, when
    /// pushes wait for replicas, `WAIT`s after it on the same connection (inside the
    /// transaction it would not wait). `EXEC`'s answer is read, not ignored, so that a
    /// command Redis refused in the transaction (a queue key of another type) is an error.
    async fn send_push(&self, mut pipe: redis::Pipeline) -> Result<(), BrokerError> {
        pipe.cmd("EXEC");
        let Some((wanted, timeout)) = self.inner.wait else {
            pipe.query_async::<()>(&mut self.conn()).await?;
            return Ok(());
        };
        pipe.cmd("WAIT").arg(wanted).arg(millis(timeout));
        let (_, acked): (redis::Value, usize) = pipe.query_async(&mut self.conn()).await?;
        if acked < wanted {
            return Err(BrokerError::NotReplicated { acked, wanted });
        }
        Ok(())
    }

    /// A call of a fetch script (`script`) taking up to `max` jobs from `queues` into the
    /// in-flight list of `process`; the limited fetch adds its own arguments.
    /// Removes `payloads` from `process`'s in-flight list and releases `unlocks` (key,
    /// owner), in one round trip.
    pub(crate) async fn ack_and_unlock(
        &self,
        process: &str,
        payloads: &[&str],
        unlocks: &[&(String, String)],
    ) -> Result<(), BrokerError> {
        if payloads.is_empty() && unlocks.is_empty() {
            return Ok(());
        }
        let list = self.inner.keys.in_flight(process);
        // A removal per job, then the unlock and the parked jobs' look. No command is marked
        // ignored: redis-rs keeps those in a hash set, which cost a job more than reading
        // its removal's reply does.
        let mut pipe = redis::Pipeline::with_capacity(payloads.len() + 2);
        let mut freed = Vec::new();
        for payload in payloads {
            // Sized up front: built argument by argument, each removal would grow its
            // buffers four or five times.
            let bytes = payload_bytes(payload);
            let mut lrem = redis::Cmd::with_capacity(4, 6 + list.len() + bytes.len());
            lrem.arg("LREM").arg(&list).arg(-1).arg(bytes.as_ref());
            pipe.add_command(lrem);
            self.free_slots(&mut pipe, payload, process, &mut freed);
        }
        if !unlocks.is_empty() {
            // One call for the batch's locks. EVAL, not EVALSHA: a pipeline cannot load the
            // script on a miss.
            let eval = pipe.cmd("EVAL").arg(UNLOCK).arg(unlocks.len());
            for (key, _) in unlocks {
                eval.arg(self.inner.keys.lock(key));
            }
            for (_, owner) in unlocks {
                eval.arg(owner);
            }
        }
        if freed.is_empty() {
            pipe.query_async::<()>(&mut self.ack_conn()).await?;
            return Ok(());
        }
        self.look_for_parked(&mut pipe, &freed);
        let mut replies: Vec<redis::Value> = pipe.query_async(&mut self.ack_conn()).await?;
        let parked: Vec<Option<f64>> = match replies.pop() {
            Some(last) => redis::from_redis_value(last).map_err(redis::RedisError::from)?,
            None => Vec::new(),
        };
        self.unpark_freed(freed, parked).await
    }

    fn fetch_call<'a>(
        &'a self,
        script: &'a Script,
        process: &str,
        queues: &[String],
        max: usize,
    ) -> ScriptInvocation<'a> {
        let keys = &self.inner.keys;
        let mut call = script.key(keys.in_flight(process));
        call.key(&keys.paused)
            .key(&keys.fetchers)
            .arg(max)
            .arg(now())
            .arg(process);
        for queue in queues {
            call.key(keys.queue(queue)).arg(queue);
        }
        call
    }

    /// A call of the settle script moving `moves` out of `process`'s in-flight list, with
    /// the dead set's trim taken at `now`; more moves may be added before it is invoked.
    fn settle_call(
        &self,
        process: &str,
        moves: &[(String, Settle)],
        now: f64,
    ) -> ScriptInvocation<'_> {
        let keys = &self.inner.keys;
        let (dead_before, dead_keep) = dead_trim(now);
        let mut call = self.inner.scripts.settle.key(keys.in_flight(process));
        call.key(&keys.queues)
            .arg(dead_before)
            .arg(dead_keep)
            .arg(&keys.wake)
            .arg(&keys.prefix);
        for (original, to) in moves {
            let (op, dest, stored, target) = script_args(keys, to.placement(now));
            call.key(dest)
                .arg(payload_bytes(original).as_ref())
                .arg(op)
                .arg(stored)
                .arg(target)
                .arg(super::limits::slots_freed(original, process));
        }
        call
    }
}

/// A job as the fetch scripts return it: its queue's index (from 1), its payload, and its
/// collapse marker's value when one was read (empty when the marker has expired).
type FetchedRow = (usize, Vec<u8>, Option<String>);

/// A queue's jobs as a fetch script returns them when it reads markers: the queue's index,
/// the payloads, and their markers' values.
type MarkedGroup = (usize, Vec<Vec<u8>>, Vec<Option<String>>);

/// A fetch script's jobs. The reply holds, for each queue taken from, its index and its
/// jobs, then their markers' values when it read markers: a worker without collapsible
/// classes is spared a value per job, and every job the index of its queue.
fn rows(reply: redis::Value, markers: bool) -> Result<Vec<FetchedRow>, BrokerError> {
    let mut rows = Vec::new();
    if markers {
        let groups: Vec<MarkedGroup> =
            redis::from_redis_value(reply).map_err(redis::RedisError::from)?;
        for (index, payloads, newest) in groups {
            let newest = newest.into_iter().chain(std::iter::repeat(None));
            rows.extend(payloads.into_iter().zip(newest).map(|(p, n)| (index, p, n)));
        }
    } else {
        let groups: Vec<(usize, Vec<Vec<u8>>)> =
            redis::from_redis_value(reply).map_err(redis::RedisError::from)?;
        for (index, payloads) in groups {
            rows.extend(payloads.into_iter().map(|p| (index, p, None)));
        }
    }
    Ok(rows)
}

fn fetched(queues: &[String], flat: Vec<FetchedRow>) -> impl Iterator<Item = Fetched> + '_ {
    flat.into_iter().map(|(index, payload, newest)| {
        let payload = payload_from_bytes(payload);
        let marker = newest.and_then(|newest| {
            MarkerRead::of(&payload, |_| Some(newest).filter(|jid| !jid.is_empty()))
        });
        Fetched {
            queue: queues
                .get(index.wrapping_sub(1))
                .cloned()
                .unwrap_or_default(),
            payload,
            marker,
        }
    })
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
