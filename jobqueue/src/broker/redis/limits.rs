//! Per-key limits on Redis, on the Rust side: what a job frees as it leaves its in-flight
//! list. Jobs take their slots in the limited fetch script (`lua/fetch_limited.lua`, with
//! the rules and the key layout in `lua/limits.lua`).
//!
//! A concurrency slot is an entry `JID@PROCESS` of its key's list. An acknowledgement
//! removes its jobs' slots with plain `LREM`s in the same pipeline as the jobs' own, whether
//! or not a job was still in flight: a job recovered from a process thought dead runs again
//! under another process, in another entry, so a late acknowledgement frees nothing but its
//! own.

use redis::Pipeline;

use super::RedisBroker;
use crate::broker::limits_in;
use crate::error::BrokerError;
use crate::job::LimitTag;

/// The concurrency slots a job of `process` holds: its slot id (`JID@PROCESS`) and the keys;
/// none for a job without concurrency limits.
fn concurrency_slots(payload: &str, process: &str) -> Option<(String, Vec<String>)> {
    let (jid, tags) = limits_in(payload)?;
    let keys: Vec<String> = tags
        .into_iter()
        .filter(LimitTag::is_concurrency)
        .map(|tag| tag.key)
        .collect();
    (!keys.is_empty()).then(|| (format!("{jid}@{process}"), keys))
}

/// The concurrency slots a job of `process` frees as it leaves the in-flight list, as the
/// settle script takes them: its slot id and then the keys, space-separated; empty for a job
/// without concurrency limits.
pub(super) fn slots_freed(payload: &str, process: &str) -> String {
    concurrency_slots(payload, process)
        .map(|(id, keys)| format!("{id} {}", keys.join(" ")))
        .unwrap_or_default()
}

impl RedisBroker {
    /// Adds to an acknowledgement's pipeline the deletion of the concurrency slots of
    /// `payload`, run by `process`, pushing their keys onto `freed`.
    pub(super) fn free_slots(
        &self,
        pipe: &mut Pipeline,
        payload: &str,
        process: &str,
        freed: &mut Vec<String>,
    ) {
        let Some((id, keys)) = concurrency_slots(payload, process) else {
            return;
        };
        for key in keys {
            pipe.lrem(self.inner.keys.slots(&key), 1, id.as_str());
            freed.push(key);
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
        let mut call = self.inner.scripts.unpark_keys.key(self.inner.keys.limits());
        call.arg(&self.inner.keys.prefix).arg(waiting);
        call.invoke_async::<i64>(&mut self.conn()).await?;
        Ok(())
    }
}
