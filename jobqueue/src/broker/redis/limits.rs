//! Per-key limits on Redis (the keys are laid out in `lua/limits.lua`). A fetched job takes
//! its slots with plain pipelined commands, which cost Redis a fraction of a script's calls:
//! `HSET` of its slot id and `HLEN` for a concurrency key, `RPUSH` of its start for a rate
//! key. Only a job that finds a key full goes through the admit script, which gives back
//! what it took and decides exactly. That is safe because a count read after a job's own
//! slot is in place can only overstate the others: two jobs racing for the last slot may both
//! go to the script, never both run.
//!
//! A job frees its concurrency slots as it leaves its in-flight list. An acknowledgement
//! deletes them with plain commands too, whether or not the job was still in the list: the
//! slot id is a hash of the payload as fetched, and a job put back after its process died
//! carries one more interruption, so a late acknowledgement from a process thought dead
//! cannot free the slot of the job's next run.

use std::hash::Hasher;
use std::time::Duration;

use fnv::FnvHasher;
use redis::Pipeline;

use super::RedisBroker;
use crate::broker::{limits_in, Fetched};
use crate::error::BrokerError;
use crate::job::{LimitKind, LimitTag};
use crate::time::now;

/// A job's id in the slot hashes of its concurrency keys: a hash of its payload as fetched,
/// the same in every process.
fn slot_id(payload: &str) -> String {
    let mut hasher = FnvHasher::default();
    hasher.write(payload.as_bytes());
    format!("{:016x}", hasher.finish())
}

/// The concurrency slots a job frees as it leaves an in-flight list, as the settle script
/// takes them: its slot id and then the keys, space-separated; empty for a job without
/// concurrency limits. Read here, not in the script, because parsing in Lua costs Redis
/// microseconds per job.
pub(super) fn slots_freed(payload: &str) -> String {
    let keys: Vec<String> = limits_in(payload)
        .into_iter()
        .filter(LimitTag::is_concurrency)
        .map(|tag| tag.key)
        .collect();
    if keys.is_empty() {
        return String::new();
    }
    format!("{} {}", slot_id(payload), keys.join(" "))
}

impl RedisBroker {
    /// Takes the slots of the fetched jobs that have limits; a job that finds a key full is
    /// decided by the admit script and, without room, set aside out of the in-flight list.
    /// Returns the jobs admitted.
    pub(super) async fn admit(
        &self,
        process: &str,
        mut jobs: Vec<Fetched>,
        lease: Duration,
    ) -> Result<Vec<Fetched>, BrokerError> {
        let limited: Vec<(usize, String, Vec<LimitTag>)> = jobs
            .iter()
            .enumerate()
            .map(|(i, job)| (i, limits_in(&job.payload)))
            .filter(|(_, tags)| !tags.is_empty())
            .map(|(i, tags)| (i, slot_id(&jobs[i].payload), tags))
            .collect();
        if limited.is_empty() {
            return Ok(jobs);
        }
        let keys = &self.inner.keys;
        // The start the rate slots record; the admit script removes it by value.
        let started = now().to_string();
        let mut pipe = redis::pipe();
        for (_, id, tags) in &limited {
            for tag in tags {
                let slots = keys.slots(&tag.key);
                match tag.kind {
                    LimitKind::Concurrency(_) => {
                        pipe.hset(&slots, id, process).ignore().hlen(&slots);
                    }
                    LimitKind::Rate { per, .. } => {
                        let millis = (per * 1000.0).ceil().max(1.0) as i64;
                        pipe.rpush(&slots, &started)
                            .pexpire(&slots, millis)
                            .ignore();
                    }
                }
            }
        }
        // One count per limit, in order: the slots taken with this job's own.
        let counts: Vec<u64> = pipe.query_async(&mut self.conn()).await?;
        let mut counts = counts.into_iter();
        let mut full = Vec::new();
        for (i, id, tags) in &limited {
            let mut over = false;
            for tag in tags {
                let (LimitKind::Concurrency(limit) | LimitKind::Rate { limit, .. }) = tag.kind;
                over |= counts.next().unwrap_or(u64::MAX) > u64::from(limit);
            }
            if over {
                full.push((*i, id, tags));
            }
        }
        if full.is_empty() {
            return Ok(jobs);
        }
        let mut call = self.inner.scripts.admit.key(keys.in_flight(process));
        call.arg(&keys.prefix)
            .arg(process)
            .arg(&started)
            .arg(lease.as_secs_f64());
        for (i, id, tags) in &full {
            call.arg(super::codec::payload_bytes(&jobs[*i].payload).as_ref())
                .arg(id.as_str())
                .arg(tags.len());
            for tag in tags.iter() {
                match tag.kind {
                    LimitKind::Concurrency(limit) => call.arg("c").arg(limit).arg(0),
                    LimitKind::Rate { limit, per } => call.arg("r").arg(limit).arg(per),
                };
                call.arg(&tag.key);
            }
        }
        let verdicts: Vec<i64> = call.invoke_async(&mut self.conn()).await?;
        let mut refused: Vec<usize> = full
            .iter()
            .zip(verdicts)
            .filter(|(_, verdict)| *verdict == 0)
            .map(|((i, _, _), _)| *i)
            .collect();
        refused.sort_unstable();
        for i in refused.into_iter().rev() {
            jobs.remove(i);
        }
        Ok(jobs)
    }

    /// Adds to an acknowledgement's pipeline the deletion of `payload`'s concurrency slots,
    /// pushing their keys onto `freed`.
    pub(super) fn free_slots(&self, pipe: &mut Pipeline, payload: &str, freed: &mut Vec<String>) {
        let tags = limits_in(payload);
        if !tags.iter().any(LimitTag::is_concurrency) {
            return;
        }
        let id = slot_id(payload);
        for tag in tags.into_iter().filter(LimitTag::is_concurrency) {
            pipe.hdel(self.inner.keys.slots(&tag.key), &id).ignore();
            freed.push(tag.key);
        }
    }

    /// Ends an acknowledgement's pipeline with one look at which `freed` keys (not empty)
    /// have jobs set aside (`ZMSCORE`, whose reply goes to [`Self::unpark_freed`]).
    pub(super) fn look_for_parked(&self, pipe: &mut Pipeline, freed: &[String]) {
        pipe.cmd("ZMSCORE").arg(self.inner.keys.limits()).arg(freed);
    }

    /// Brings back one job set aside under each freed key that has any (`parked`: the
    /// reply of [`Self::look_for_parked`]).
    pub(super) async fn unpark_freed(
        &self,
        freed: Vec<String>,
        parked: Vec<Option<f64>>,
    ) -> Result<(), BrokerError> {
        let waiting: Vec<String> = freed
            .into_iter()
            .zip(parked)
            .filter(|(_, score)| score.is_some())
            .map(|(key, _)| key)
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        let mut call = self.inner.scripts.unpark_keys.prepare_invoke();
        call.arg(&self.inner.keys.prefix).arg(waiting);
        call.invoke_async::<i64>(&mut self.conn()).await?;
        Ok(())
    }
}
