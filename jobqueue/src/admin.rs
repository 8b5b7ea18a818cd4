//! A look inside: queue sizes and latency, the scheduled, retry and dead sets, live
//! processes and totals, as Sidekiq's API and Web UI show them; and pausing queues.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::{Broker, ProcessEntry, SortedSet, Stats};
use crate::envelope::{now, Envelope};
use crate::error::Error;

/// Views of a broker's queues, sets and processes, and the pause switch of each queue.
#[derive(Clone)]
pub struct Admin {
    broker: Arc<dyn Broker>,
}

/// A queue's size and how long its oldest job has waited.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueInfo {
    /// The queue name.
    pub name: String,
    /// Jobs waiting.
    pub size: usize,
    /// Seconds the oldest waiting job has waited (0 when empty).
    pub latency: f64,
}

/// A job in the `schedule`, `retry` or `dead` set.
#[derive(Clone, Debug, PartialEq)]
pub struct SetEntry {
    /// Its score: when it is due, or when it died, in epoch seconds.
    pub at: f64,
    /// The job, or the raw text when it does not parse.
    pub job: Result<Envelope, String>,
}

impl Admin {
    /// Views of `broker`.
    pub fn new(broker: impl Broker) -> Self {
        Self::from_shared(Arc::new(broker))
    }

    /// Views of a broker shared with clients and workers.
    pub fn from_shared(broker: Arc<dyn Broker>) -> Self {
        Self { broker }
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
            Some(payload) => Envelope::parse(&payload)
                .ok()
                .and_then(|e| e.enqueued_at.or(e.created_at))
                .map_or(0.0, |at| (now() - at).max(0.0)),
            None => 0.0,
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
                at,
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
        let until = now() + cooldown.as_secs_f64();
        Ok(self.broker.pause(queue, Some(until)).await?)
    }

    /// Resumes `queue`; idle workers wake at once.
    pub async fn resume(&self, queue: &str) -> Result<(), Error> {
        Ok(self.broker.resume(queue).await?)
    }

    /// The paused queues, each with the time (epoch seconds) it resumes by itself, if any.
    pub async fn paused(&self) -> Result<Vec<(String, Option<f64>)>, Error> {
        Ok(self.broker.paused().await?)
    }

    /// Processed and failed totals.
    pub async fn stats(&self) -> Result<Stats, Error> {
        Ok(self.broker.stats().await?)
    }
}
