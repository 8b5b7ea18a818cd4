//! A look inside: queue sizes and latency, the scheduled, retry and dead sets, live
//! processes and totals, as Sidekiq's API and Web UI show them; and pausing queues.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::broker::{Broker, ProcessEntry, SortedSet, Stats};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::time::{after, from_epoch};

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
                job: Envelope::parse(&payload).map_err(|_| payload),
            })
            .collect())
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
