//! Operators and periodic schedules: what processes publish, pause and resume, and "run
//! now", which enqueues the schedule's job through the client's admission with its class's
//! published options, as a process's tick would.

use std::time::{Duration, SystemTime};

use super::Admin;
use crate::backend::Published;
use crate::client::{Admitted, Origin};
use crate::envelope::{Envelope, Retry};
use crate::error::Error;
use crate::schedule::periodic::{last_key, paused_key};
use crate::time::{epoch_seconds, now};

/// How long "paused until resumed" lasts for a periodic schedule.
const PAUSED_FOR_GOOD: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// The owner recorded on a periodic schedule's pause.
const PAUSED_BY: &str = "admin";

impl Admin {
    /// The periodic schedules worker processes have published, as JSON: each one's
    /// `name`, `schedule`, `class`, `queue`, `args`, `next_tick` and `next_ticks` (epoch
    /// seconds), `published_at`, and, read now, `last_tick` (the latest tick a process
    /// enqueued, or null), `paused` and `paused_until` (null when paused until resumed).
    pub async fn periodic(&self) -> Result<Vec<serde_json::Value>, Error> {
        let mut schedules = Vec::new();
        for (name, description) in self.broker.published(Published::Periodic).await? {
            let Ok(mut schedule) = serde_json::from_str::<serde_json::Value>(&description) else {
                continue;
            };
            let last = self.broker.get(&last_key(&name)).await?;
            let last = last
                .and_then(|ms| ms.parse::<f64>().ok())
                .map(|ms| ms / 1000.0);
            let paused = self.broker.get(&paused_key(&name)).await?;
            schedule["last_tick"] = last.into();
            schedule["paused"] = paused.is_some().into();
            schedule["paused_until"] = paused.and_then(|until| until.parse::<f64>().ok()).into();
            schedules.push(schedule);
        }
        Ok(schedules)
    }

    /// Pauses the periodic schedule `name` (for `cooldown`, or until resumed): its ticks
    /// pass without enqueueing.
    pub async fn pause_periodic(
        &self,
        name: &str,
        cooldown: Option<Duration>,
    ) -> Result<(), Error> {
        let until = cooldown.and_then(|c| SystemTime::now().checked_add(c));
        let (until, ttl) = match (cooldown, until) {
            (Some(cooldown), Some(until)) => (epoch_seconds(until).to_string(), cooldown),
            _ => (PAUSED_BY.to_owned(), PAUSED_FOR_GOOD),
        };
        Ok(self.broker.set(&paused_key(name), &until, ttl).await?)
    }

    /// Resumes the periodic schedule `name`.
    pub async fn resume_periodic(&self, name: &str) -> Result<(), Error> {
        let key = paused_key(name);
        if let Some(owner) = self.broker.get(&key).await? {
            self.broker.unlock(&key, &owner).await?;
        }
        Ok(())
    }

    /// Enqueues the job of the periodic schedule `name` now, outside its schedule, through
    /// the client's admission with its class's published options (its header, its lock),
    /// as a process's tick would; client middleware does not run, being the processes'.
    /// Returns the job's id (or that of the unique job standing for it), or `None` when no
    /// process publishes that schedule.
    pub async fn run_periodic(&self, name: &str) -> Result<Option<String>, Error> {
        let schedules = self.broker.published(Published::Periodic).await?;
        let Some(schedule) = schedules
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, d)| serde_json::from_str::<serde_json::Value>(d).ok())
        else {
            return Ok(None);
        };
        let (Some(class), Some(queue)) = (schedule["class"].as_str(), schedule["queue"].as_str())
        else {
            return Ok(None);
        };
        let args = schedule["args"].as_array().cloned().unwrap_or_default();
        let mut job = Envelope::new(class, queue, args);
        if let Some(retries) = schedule["retry"].as_u64() {
            job.retry = Retry::Count(u32::try_from(retries).unwrap_or(u32::MAX));
        }
        job.extra.insert(
            "periodic".into(),
            serde_json::json!({ "name": name, "tick": now(), "manual": true }),
        );
        match self.client.admit(job, None, None, Origin::Periodic).await? {
            Admitted::Push(push, jid) => {
                self.broker.push(std::slice::from_ref(&push)).await?;
                Ok(Some(jid))
            }
            Admitted::Existing(jid) => Ok(Some(jid)),
        }
    }

    /// The progress of the iterating job `jid` ([`crate::iterate`]), while it has a
    /// checkpoint.
    pub async fn iteration(&self, jid: &str) -> Result<Option<crate::iterate::Progress>, Error> {
        let key = crate::iterate::checkpoint_key(jid);
        let text = self.broker.get(&key).await?;
        Ok(text.as_deref().and_then(crate::iterate::progress_of))
    }
}
