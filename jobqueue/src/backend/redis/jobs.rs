//! The hot path on Redis ([`JobStore`]): pushes in one transaction, fetches and settles in
//! one script call each, acknowledgements in one pipeline.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redis::ScriptInvocation;

use super::codec::{is_raw, payload_bytes, payload_from_bytes};
use super::{RedisBroker, UNLOCK};
use crate::backend::{
    dead_trim, DirectMoves, Due, Fetch, Fetched, JobStore, LimitsRead, MarkerRead, Move, MovedJob,
    Placement, Push, Settle, SortedSet, Source, Wakeups,
};
use crate::envelope::header;
use crate::error::BrokerError;
use crate::job::{names_a_slot, LimitTag};
use crate::time::{epoch_seconds, from_epoch, now};

/// The most jobs a fetch moves in one call while it looks past jobs set aside.
const MAX_SCAN: usize = 1000;

/// How many limit keys one call of the unpark script looks at.
const UNPARK_BATCH: usize = 100;

/// A TTL in milliseconds, at least 1 (Redis refuses 0).
pub(super) fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl JobStore for RedisBroker {
    async fn push(&self, jobs: &[Push]) -> Result<(), BrokerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let keys = &self.inner.keys;
        let mut immediate: BTreeMap<&str, Vec<&[u8]>> = BTreeMap::new();
        let mut scheduled: Vec<(f64, &[u8])> = Vec::new();
        for job in jobs {
            match job.at {
                None => immediate
                    .entry(job.queue.as_str())
                    .or_default()
                    .push(job.payload.as_bytes()),
                Some(at) => scheduled.push((epoch_seconds(at), job.payload.as_bytes())),
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

    async fn push_once(
        &self,
        jobs: &[(String, Push)],
        ttl: Duration,
    ) -> Result<Vec<bool>, BrokerError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        // The key routes the call on a cluster; the script names its keys from the prefix.
        let keys = &self.inner.keys;
        let mut call = self.inner.scripts.push_once.key(&keys.queues);
        call.arg(&keys.prefix)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        for (marker, job) in jobs {
            let score = job.at.map(|at| epoch_seconds(at).to_string());
            call.arg(marker)
                .arg(&job.queue)
                .arg(score.unwrap_or_default())
                .arg(payload_bytes(&job.payload).as_ref());
        }
        let pushed: Vec<i64> = call.invoke_async(&mut self.conn()).await?;
        Ok(pushed.into_iter().map(|n| n == 1).collect())
    }

    async fn fetch(&self, process: &str, request: Fetch<'_>) -> Result<Vec<Fetched>, BrokerError> {
        let (queues, max) = (request.queues, request.max);
        if queues.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let locks = match request.markers {
            true => self.inner.keys.lock(""),
            false => String::new(),
        };
        let Some(lease) = request.limits else {
            let call = self.fetch_call(process, queues, max, &locks, None);
            let (_, groups): Reply = call.invoke_async(&mut self.conn()).await?;
            return Ok(fetched(queues, groups, LimitsRead::NotRead).collect());
        };
        // Jobs set aside do not count: the script looks further down the queue, in larger
        // steps while it finds only such jobs, until it has `max` or the queues are empty;
        // so a tenant with few jobs behind one with many waits for few round trips.
        let mut scan = max;
        let mut taken: Vec<Fetched> = Vec::new();
        loop {
            let want = max - taken.len();
            let call = self.fetch_call(process, queues, want, &locks, Some((scan, lease)));
            let (looked, groups): Reply = call.invoke_async(&mut self.conn()).await?;
            let before = taken.len();
            taken.extend(fetched(queues, groups, LimitsRead::Applied));
            // Fewer looked at than allowed: the queues ran dry, or it has all it wanted.
            if taken.len() >= max || looked < scan {
                return Ok(taken);
            }
            // Larger steps only while a step finds nothing to take.
            scan = if taken.len() == before {
                (scan * 4).min(MAX_SCAN.max(max))
            } else {
                max - taken.len()
            };
        }
    }

    async fn settle(&self, from: Source<'_>, moves: &[Move]) -> Result<Vec<bool>, BrokerError> {
        if moves.is_empty() {
            return Ok(Vec::new());
        }
        if let Source::InFlight(process) = from {
            if moves
                .iter()
                .all(|m| matches!(m.to, Settle::Discard) && m.then.is_empty())
            {
                let unlocks: Vec<&(String, String)> =
                    moves.iter().filter_map(|m| m.unlock.as_ref()).collect();
                return self.acknowledge(process, moves, &unlocks).await;
            }
        }
        // One moment for the whole settle: the dead set's scores and its trim.
        let call = self.settle_call(from, moves, now());
        let replies: Vec<i64> = call.invoke_async(&mut self.conn()).await?;
        // A reply per move, then one per follow-up of it.
        let mut at = 0;
        let mut moved = Vec::with_capacity(moves.len());
        for m in moves {
            moved.push(replies.get(at) == Some(&1));
            at += 1 + m.then.len();
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
        let keys = &self.inner.keys;
        // An empty stamp moves nothing directly.
        let (stamp, max_bytes, named, plain) = match direct {
            // Written as the payload's other timestamps are, by serde_json.
            Some(d) => (
                serde_json::Value::from(epoch_seconds(d.enqueued_at)).to_string(),
                d.max_payload_bytes,
                d.named,
                d.plain,
            ),
            None => (String::new(), 0, false, &[][..]),
        };
        let mut call = self.inner.scripts.take_due.key(keys.set(set));
        call.key(keys.in_flight(process))
            .arg(&keys.prefix)
            .arg(epoch_seconds(now))
            .arg(limit)
            .arg(stamp)
            .arg(max_bytes)
            .arg(if named { "1" } else { "" })
            .arg(process);
        for class in plain {
            call.arg(*class);
        }
        type DueReply = (Vec<f64>, Vec<(Vec<u8>, f64)>, Vec<(String, String, String)>);
        let (moved, taken, named): DueReply = call.invoke_async(&mut self.conn()).await?;
        Ok(Due {
            moved: moved.into_iter().map(from_epoch).collect(),
            named: named
                .into_iter()
                .map(|(jid, class, queue)| MovedJob { jid, class, queue })
                .collect(),
            taken: taken
                .into_iter()
                .map(|(payload, at)| (from_epoch(at), payload_from_bytes(payload)))
                .collect(),
        })
    }

    async fn next_due(&self) -> Result<Option<SystemTime>, BrokerError> {
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
            .reduce(f64::min)
            .map(from_epoch))
    }

    async fn unpark_due(&self, now: SystemTime, lease: Duration) -> Result<usize, BrokerError> {
        let moved: usize = self
            .unpark_call(epoch_seconds(now), lease)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(moved)
    }

    fn subscribe(&self) -> Arc<Wakeups> {
        self.inner.hub.subscribe()
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
}

/// A fetch script's reply: the jobs looked at, and a [`Group`] per queue taken from.
type Reply = (usize, Vec<Group>);

/// A queue's jobs as the fetch script returns them: the queue's index (from 1), the
/// payloads, their markers' values when read, and the positions (from 1) of the payloads
/// whose limits could not be applied.
type Group = (usize, Vec<Vec<u8>>, Vec<Option<String>>, Vec<usize>);

fn fetched(
    queues: &[String],
    groups: Vec<Group>,
    read: LimitsRead,
) -> impl Iterator<Item = Fetched> + '_ {
    groups
        .into_iter()
        .flat_map(move |(index, payloads, markers, bad)| {
            let queue = queues
                .get(index.wrapping_sub(1))
                .cloned()
                .unwrap_or_default();
            let markers = markers.into_iter().map(Some).chain(std::iter::repeat(None));
            payloads
                .into_iter()
                .zip(markers)
                .enumerate()
                .map(move |(k, (payload, newest))| {
                    let payload = payload_from_bytes(payload);
                    let marker = newest.flatten().and_then(|newest| {
                        MarkerRead::of(&payload, |_| Some(newest).filter(|jid| !jid.is_empty()))
                    });
                    let limits = match bad.contains(&(k + 1)) {
                        true => LimitsRead::Invalid,
                        false => read,
                    };
                    Fetched {
                        queue: queue.clone(),
                        payload,
                        marker,
                        limits,
                    }
                })
        })
}

/// The concurrency slots a job of `process` holds, as its header names them: its slot id
/// (`JID@PROCESS`) and the keys; none for a job without concurrency limits (or with limits
/// a fetch could not apply, which took none).
fn concurrency_slots(payload: &str, process: &str) -> Option<(String, Vec<String>)> {
    // Bytes that are not UTF-8 may follow a header the fetch script read and took slots
    // by: read it there too.
    let text = if is_raw(payload) {
        Cow::Owned(String::from_utf8_lossy(&payload_bytes(payload)).into_owned())
    } else {
        Cow::Borrowed(payload)
    };
    let header = header::read(&text);
    let (Some(text), Some(jid)) = (header.limits, header.jid) else {
        return None;
    };
    // The fetch script takes no slot for a job whose jid cannot name one.
    if !names_a_slot(&jid) {
        return None;
    }
    let keys: Vec<String> = LimitTag::parse(&text)
        .ok()?
        .into_iter()
        .filter(LimitTag::is_concurrency)
        .map(|tag| tag.key)
        .collect();
    (!keys.is_empty()).then(|| (format!("{jid}@{process}"), keys))
}

/// The concurrency slots a job of `process` frees as it leaves the in-flight list, as the
/// settle script takes them: its slot id and then the keys, space-separated; empty for a job
/// without concurrency limits.
fn slots_freed(payload: &str, process: &str) -> String {
    concurrency_slots(payload, process)
        .map(|(id, keys)| format!("{id} {}", keys.join(" ")))
        .unwrap_or_default()
}

/// A settle's placement as the settle script takes it: the operation, the payload to store,
/// and the target (the queue's name, or the score).
fn script_args(placement: Placement<'_>) -> (&'static str, &str, String) {
    match placement {
        Placement::Queue {
            queue,
            payload,
            front,
        } => (
            if front { "rpush" } else { "lpush" },
            payload,
            queue.to_owned(),
        ),
        Placement::Set {
            set,
            payload,
            score,
        } => (
            match set {
                SortedSet::Schedule => "schedule",
                SortedSet::Retry => "retry",
                SortedSet::Dead => "dead",
            },
            payload,
            score.to_string(),
        ),
        Placement::Nowhere => ("discard", "", String::new()),
    }
}

impl RedisBroker {
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

    /// A call of the fetch script taking up to `max` jobs from `queues` into the in-flight
    /// list of `process`, reading markers under `locks` (empty: none), and applying limits
    /// while looking at up to `scan` jobs with `limits`' lease.
    fn fetch_call<'a>(
        &'a self,
        process: &str,
        queues: &[String],
        max: usize,
        locks: &str,
        limits: Option<(usize, Duration)>,
    ) -> ScriptInvocation<'a> {
        let keys = &self.inner.keys;
        let mut call = self.inner.scripts.fetch.key(keys.in_flight(process));
        call.key(&keys.paused).arg(max).arg(now());
        for queue in queues {
            call.key(keys.queue(queue)).arg(queue);
        }
        call.arg(locks).arg(&keys.prefix).arg(process);
        match limits {
            Some((scan, lease)) => call.arg(scan).arg(lease.as_secs_f64()),
            None => call.arg(""),
        };
        call
    }

    /// A call of the unpark script: set-aside jobs whose keys are due by `now`, or, with
    /// `freed` keys, one job set aside under each.
    fn unpark_call(&self, now: f64, lease: Duration) -> ScriptInvocation<'_> {
        let mut call = self.inner.scripts.unpark.key(self.inner.keys.limits());
        call.arg(&self.inner.keys.prefix)
            .arg(now)
            .arg(UNPARK_BATCH)
            .arg(lease.as_secs_f64());
        call
    }

    /// A call of the settle script moving `moves` out of `from`, with the dead set's trim
    /// taken at `now`.
    fn settle_call(&self, from: Source<'_>, moves: &[Move], now: f64) -> ScriptInvocation<'_> {
        let keys = &self.inner.keys;
        let (source, kind, process) = match from {
            Source::InFlight(process) => (keys.in_flight(process), "list", Some(process)),
            Source::Set(set) => (keys.set(set), "zset", None),
        };
        let (dead_before, dead_keep) = dead_trim(now);
        let mut call = self.inner.scripts.settle.key(source);
        call.arg(&keys.prefix)
            .arg(kind)
            .arg(now)
            .arg(dead_before)
            .arg(dead_keep);
        for m in moves {
            let (op, stored, target) = script_args(m.to.placement(now));
            let slots = process.map(|p| slots_freed(&m.payload, p));
            let (lock, owner) = match &m.unlock {
                Some((key, owner)) => (keys.lock(key), owner.as_str()),
                None => (String::new(), ""),
            };
            call.arg(payload_bytes(&m.payload).as_ref())
                .arg(op)
                .arg(payload_bytes(stored).as_ref())
                .arg(target)
                .arg(slots.unwrap_or_default())
                .arg(lock)
                .arg(owner);
            for job in &m.then {
                let (op, target) = match job.at {
                    None => ("then_lpush", job.queue.clone()),
                    Some(at) => ("then_schedule", epoch_seconds(at).to_string()),
                };
                call.arg("")
                    .arg(op)
                    .arg(job.payload.as_bytes())
                    .arg(target)
                    .arg("")
                    .arg("")
                    .arg("");
            }
        }
        call
    }

    /// Removes finished jobs from `process`'s in-flight list, frees their concurrency slots
    /// and releases `unlocks` (key, owner: on a cluster, the locks that live on this shard,
    /// whichever jobs they are of), in one round trip (and one more to bring back jobs set
    /// aside under the keys freed, when there are any). A slot is removed by its own id,
    /// `JID@PROCESS`, whether or not the job was still in flight: a job recovered from a
    /// process thought dead runs again in another entry, so a late acknowledgement frees
    /// nothing but its own.
    pub(crate) async fn acknowledge(
        &self,
        process: &str,
        moves: &[Move],
        unlocks: &[&(String, String)],
    ) -> Result<Vec<bool>, BrokerError> {
        if moves.is_empty() && unlocks.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.inner.keys;
        let list = keys.in_flight(process);
        let mut pipe = redis::Pipeline::with_capacity(moves.len() + 2);
        // Where each job's own removal is among the replies.
        let mut removals = Vec::with_capacity(moves.len());
        let mut freed = Vec::new();
        let mut replies = 0;
        for m in moves {
            // Sized up front: built argument by argument, each removal would grow its
            // buffers four or five times.
            let bytes = payload_bytes(&m.payload);
            let mut lrem = redis::Cmd::with_capacity(4, 6 + list.len() + bytes.len());
            lrem.arg("LREM").arg(&list).arg(-1).arg(bytes.as_ref());
            pipe.add_command(lrem);
            removals.push(replies);
            replies += 1;
            if let Some((id, slot_keys)) = concurrency_slots(&m.payload, process) {
                for key in slot_keys {
                    pipe.lrem(keys.slots(&key), 1, id.as_str());
                    replies += 1;
                    freed.push(key);
                }
            }
        }
        if !unlocks.is_empty() {
            // One call for the batch's locks. EVAL, not EVALSHA: a pipeline cannot load the
            // script on a miss.
            let eval = pipe.cmd("EVAL").arg(UNLOCK).arg(unlocks.len());
            for (key, _) in unlocks {
                eval.arg(keys.lock(key));
            }
            for (_, owner) in unlocks {
                eval.arg(owner);
            }
        }
        if !freed.is_empty() {
            // Which of the freed keys have jobs set aside.
            pipe.cmd("ZMSCORE").arg(keys.limits()).arg(&freed);
        }
        let mut values: Vec<redis::Value> = pipe.query_async(&mut self.ack_conn()).await?;
        let moved = removals
            .iter()
            .map(|&i| matches!(values.get(i), Some(redis::Value::Int(n)) if *n > 0))
            .collect();
        if freed.is_empty() {
            return Ok(moved);
        }
        let parked: Vec<Option<f64>> = match values.pop() {
            Some(last) => redis::from_redis_value(last).map_err(redis::RedisError::from)?,
            None => Vec::new(),
        };
        let waiting: Vec<String> = freed
            .into_iter()
            .zip(parked)
            .filter(|(_, score)| score.is_some())
            .map(|(key, _)| key)
            .collect();
        if !waiting.is_empty() {
            let mut call = self.unpark_call(now(), Duration::ZERO);
            call.arg(waiting);
            call.invoke_async::<i64>(&mut self.conn()).await?;
        }
        Ok(moved)
    }
}
