//! A look inside: queue sizes and latency, the scheduled, retry and dead sets, live
//! processes and totals, as Sidekiq's API and Web UI show them; and pausing queues.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::broker::{Broker, ProcessEntry, Settle, SortedSet, Stats};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::time::{after, from_epoch, now};

/// Views of a broker's queues, sets and processes, and the pause switch of each queue.
#[derive(Clone)]
pub struct Admin {
    broker: Arc<dyn Broker>,
}

/// A queue's size and how long its oldest job has waited.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// The queue name.
    pub name: String,
    /// Jobs waiting.
    pub size: usize,
    /// How long the oldest waiting job has waited (zero when empty).
    pub latency: Duration,
}

/// A job in the `schedule`, `retry` or `dead` set.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SetEntry {
    /// Its score: when it is due, or when it died.
    pub at: SystemTime,
    /// The job, or the raw text when it does not parse.
    pub job: Result<Envelope, String>,
    /// The payload exactly as stored, which identifies the entry.
    pub payload: String,
}

impl SetEntry {
    /// The job id, when the payload is a job.
    pub fn jid(&self) -> Option<&str> {
        self.job.as_ref().ok().map(|job| job.jid.as_str())
    }

    /// Whether the job's class and queue are these (when given) and its error message
    /// contains `error` (when given).
    pub fn matches(&self, class: Option<&str>, queue: Option<&str>, error: Option<&str>) -> bool {
        let Ok(job) = &self.job else {
            return class.is_none() && queue.is_none() && error.is_none();
        };
        class.is_none_or(|c| job.class == c)
            && queue.is_none_or(|q| job.queue == q)
            && error.is_none_or(|e| job.error_message.as_deref().is_some_and(|m| m.contains(e)))
    }
}

impl Admin {
    /// Views of `broker` (a [`MemoryBroker`](crate::MemoryBroker), a
    /// [`RedisBroker`](crate::RedisBroker), or an `Arc<dyn Broker>` shared with others).
    pub fn new(broker: impl Into<Arc<dyn Broker>>) -> Self {
        Self {
            broker: broker.into(),
        }
    }

    /// Every known queue with its size and latency.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>, Error> {
        let mut infos = Vec::new();
        for name in self.broker.queues().await? {
            infos.push(self.queue(&name).await?);
        }
        Ok(infos)
    }

    /// One queue's size and latency.
    pub async fn queue(&self, name: &str) -> Result<QueueInfo, Error> {
        let size = self.broker.queue_len(name).await?;
        let latency = match self.broker.queue_oldest(name).await? {
            Some(payload) => Envelope::parse(&payload).map_or(Duration::ZERO, |e| e.waited()),
            None => Duration::ZERO,
        };
        Ok(QueueInfo {
            name: name.to_owned(),
            size,
            latency,
        })
    }

    /// The number of jobs in `set`.
    pub async fn set_size(&self, set: SortedSet) -> Result<usize, Error> {
        Ok(self.broker.set_len(set).await?)
    }

    /// Up to `count` jobs of `set` from `offset`, earliest score first.
    pub async fn set_entries(
        &self,
        set: SortedSet,
        offset: usize,
        count: usize,
    ) -> Result<Vec<SetEntry>, Error> {
        Ok(self
            .broker
            .set_range(set, offset, count)
            .await?
            .into_iter()
            .map(|(at, payload)| SetEntry {
                at: from_epoch(at),
                job: Envelope::parse(&payload).map_err(|_| payload.clone()),
                payload,
            })
            .collect())
    }

    /// Every job of `set`, earliest first.
    pub async fn all_entries(&self, set: SortedSet) -> Result<Vec<SetEntry>, Error> {
        const PAGE: usize = 500;
        let mut all = Vec::new();
        loop {
            let page = self.set_entries(set, all.len(), PAGE).await?;
            let done = page.len() < PAGE;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    /// The job `jid` in `set`, if it is there.
    pub async fn find(&self, set: SortedSet, jid: &str) -> Result<Option<SetEntry>, Error> {
        Ok(self
            .all_entries(set)
            .await?
            .into_iter()
            .find(|e| e.jid() == Some(jid)))
    }

    /// Sends `entry` of `set` to its queue now, as Sidekiq's "Retry Now" and "Add to
    /// queue" do (a retried job's `retry_count` goes down by one, as Sidekiq's does).
    /// Returns whether it was still there.
    pub async fn run_now(&self, set: SortedSet, entry: &SetEntry) -> Result<bool, Error> {
        let Ok(job) = &entry.job else {
            return Ok(false);
        };
        let mut job = job.clone();
        if set != SortedSet::Schedule {
            job.retry_count = job.retry_count.map(|n| n - 1);
        }
        job.enqueued_at = Some(now());
        let to = Settle::Queue {
            queue: job.queue.clone(),
            payload: job.to_json(),
            front: false,
        };
        Ok(self.broker.move_entry(set, &entry.payload, to).await?)
    }

    /// Deletes `entry` of `set`. Returns whether it was still there.
    pub async fn delete(&self, set: SortedSet, entry: &SetEntry) -> Result<bool, Error> {
        Ok(self
            .broker
            .move_entry(set, &entry.payload, Settle::Discard)
            .await?)
    }

    /// Moves `entry` of `set` to the dead set, as Sidekiq's "Kill" does. Returns whether it
    /// was still there.
    pub async fn kill(&self, set: SortedSet, entry: &SetEntry) -> Result<bool, Error> {
        let to = Settle::Dead {
            payload: entry.payload.clone(),
        };
        Ok(self.broker.move_entry(set, &entry.payload, to).await?)
    }

    /// Quiets the process `identity` at its next heartbeat: it takes no new jobs.
    pub async fn quiet(&self, identity: &str) -> Result<(), Error> {
        Ok(self.broker.signal(identity, "TSTP").await?)
    }

    /// Stops the process `identity` gracefully at its next heartbeat.
    pub async fn stop(&self, identity: &str) -> Result<(), Error> {
        Ok(self.broker.signal(identity, "TERM").await?)
    }

    /// The periodic schedules worker processes have published: each one's name, schedule,
    /// class, queue, next tick and when it was last published, as JSON.
    pub async fn periodic(&self) -> Result<Vec<serde_json::Value>, Error> {
        Ok(self
            .broker
            .periodic()
            .await?
            .into_iter()
            .filter_map(|(_, description)| serde_json::from_str(&description).ok())
            .collect())
    }

    /// Removes every job waiting in `queue`; returns how many there were.
    pub async fn clear(&self, queue: &str) -> Result<usize, Error> {
        Ok(self.broker.clear(queue).await?)
    }

    /// The processes with a live heartbeat.
    pub async fn processes(&self) -> Result<Vec<ProcessEntry>, Error> {
        Ok(self.broker.processes().await?)
    }

    /// Pauses `queue` until resumed: workers stop taking its jobs within a fetch (a second
    /// at most when idle); running jobs finish; nothing is lost.
    pub async fn pause(&self, queue: &str) -> Result<(), Error> {
        Ok(self.broker.pause(queue, None).await?)
    }

    /// Pauses `queue` for `cooldown`, after which it resumes by itself.
    pub async fn pause_for(&self, queue: &str, cooldown: Duration) -> Result<(), Error> {
        Ok(self.broker.pause(queue, Some(after(cooldown))).await?)
    }

    /// Resumes `queue`; idle workers wake at once.
    pub async fn resume(&self, queue: &str) -> Result<(), Error> {
        Ok(self.broker.resume(queue).await?)
    }

    /// The paused queues, each with the time it resumes by itself, if any.
    pub async fn paused(&self) -> Result<Vec<(String, Option<SystemTime>)>, Error> {
        let paused = self.broker.paused().await?;
        Ok(paused
            .into_iter()
            .map(|(queue, until)| (queue, until.map(from_epoch)))
            .collect())
    }

    /// Processed and failed totals.
    pub async fn stats(&self) -> Result<Stats, Error> {
        Ok(self.broker.stats().await?)
    }
}
