//! A look inside: queue sizes and latency, the scheduled, retry and dead sets, live
//! processes and totals, as Sidekiq's API and Web UI show them; and the operators' actions
//! on them (`jobs`: run now, delete, kill, cancel; `periodic`: schedules).
//!
//! Every job shown has its class's sensitive values hidden (`redact`), whether or not a
//! process of that class is alive: the classes' options are published by the processes
//! that run them and kept. Every call reads a bounded page, never a whole queue or set at
//! once. Jobs an operator puts back in a queue pass the client's admission, as any enqueue.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::backend::{
    Broker, LimitEntry, Location, Paused, ProcessEntry, Published, RelayStatus, SortedSet, Span,
    Stats,
};
use crate::class_stats::{self, ClassStats};
use crate::client::Client;
use crate::envelope::Envelope;
use crate::error::Error;

mod jobs;
mod periodic;
mod redact;

pub use self::jobs::Cancelled;
pub use self::redact::Sensitive;

/// How many entries one read of a queue or set takes when a call must look through it.
const PAGE: usize = 500;

/// Views of a broker's queues, sets and processes, and the operators' actions on them.
#[derive(Clone)]
pub struct Admin {
    broker: Arc<dyn Broker>,
    /// Admission for jobs put back in a queue, and the published classes.
    client: Client,
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

/// A job waiting in a queue.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct QueuedJob {
    /// The job with its sensitive values hidden, or its text (hidden likewise) when it
    /// does not parse.
    pub job: Result<Envelope, String>,
    /// The payload exactly as stored, which identifies it for an action; it may hold
    /// sensitive values, so show [`QueuedJob::job`].
    pub payload: String,
}

/// A job in the `schedule`, `retry` or `dead` set.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SetEntry {
    /// Its score: when it is due, or when it died.
    pub at: SystemTime,
    /// The job with its sensitive values hidden, or its text (hidden likewise) when it
    /// does not parse.
    pub job: Result<Envelope, String>,
    /// The payload exactly as stored, which identifies the entry for an action; it may
    /// hold sensitive values, so show [`SetEntry::job`].
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
        let broker = broker.into();
        Self {
            client: Client::new(Arc::clone(&broker)),
            broker,
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
        let at = Location::Queue(name);
        let size = self.broker.len(at).await?;
        let next = self.broker.range(at, Span::page(0, 1)).await?;
        let latency = next.first().map_or(Duration::ZERO, |e| {
            Envelope::parse(&e.payload).map_or(Duration::ZERO, |e| e.waited())
        });
        Ok(QueueInfo {
            name: name.to_owned(),
            size,
            latency,
        })
    }

    /// Up to `count` jobs waiting in `queue` from `offset`, the next to run first.
    pub async fn queue_jobs(
        &self,
        queue: &str,
        offset: usize,
        count: usize,
    ) -> Result<Vec<QueuedJob>, Error> {
        let sensitive = self.sensitive().await?;
        let page = self
            .broker
            .range(Location::Queue(queue), Span::page(offset, count))
            .await?;
        Ok(page
            .into_iter()
            .map(|e| QueuedJob {
                job: sensitive.shown(&e.payload),
                payload: e.payload,
            })
            .collect())
    }

    /// The number of jobs in `set`.
    pub async fn set_size(&self, set: SortedSet) -> Result<usize, Error> {
        Ok(self.broker.len(Location::Set(set)).await?)
    }

    /// Up to `count` jobs of `set` from `offset`, earliest score first.
    pub async fn set_entries(
        &self,
        set: SortedSet,
        offset: usize,
        count: usize,
    ) -> Result<Vec<SetEntry>, Error> {
        self.entries(set, Span::page(offset, count)).await
    }

    /// The jobs of `set` scored at `at`: how an entry whose time is known is found without
    /// reading the set.
    pub async fn set_entries_at(
        &self,
        set: SortedSet,
        at: SystemTime,
    ) -> Result<Vec<SetEntry>, Error> {
        let span = Span::Scored {
            min: at,
            max: at,
            count: PAGE,
        };
        self.entries(set, span).await
    }

    async fn entries(&self, set: SortedSet, span: Span) -> Result<Vec<SetEntry>, Error> {
        let sensitive = self.sensitive().await?;
        let page = self.broker.range(Location::Set(set), span).await?;
        Ok(page
            .into_iter()
            .map(|e| SetEntry {
                at: e.at.unwrap_or(SystemTime::UNIX_EPOCH),
                job: sensitive.shown(&e.payload),
                payload: e.payload,
            })
            .collect())
    }

    /// Every job of `set`, earliest first, read a page at a time.
    pub async fn all_entries(&self, set: SortedSet) -> Result<Vec<SetEntry>, Error> {
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

    /// The job `jid` in `set`, if it is there: found at its score `at` when given (one
    /// read), else looked for a page at a time.
    pub async fn find(
        &self,
        set: SortedSet,
        jid: &str,
        at: Option<SystemTime>,
    ) -> Result<Option<SetEntry>, Error> {
        if let Some(at) = at {
            let found = self.set_entries_at(set, at).await?;
            return Ok(found.into_iter().find(|e| e.jid() == Some(jid)));
        }
        let mut offset = 0;
        loop {
            let page = self.set_entries(set, offset, PAGE).await?;
            if let Some(entry) = page.iter().find(|e| e.jid() == Some(jid)) {
                return Ok(Some(entry.clone()));
            }
            if page.len() < PAGE {
                return Ok(None);
            }
            offset += page.len();
        }
    }

    /// The processes with a live heartbeat.
    pub async fn processes(&self) -> Result<Vec<ProcessEntry>, Error> {
        Ok(self.broker.processes().await?)
    }

    /// Quiets the process `identity` at its next heartbeat: it takes no new jobs.
    pub async fn quiet(&self, identity: &str) -> Result<(), Error> {
        Ok(self.broker.signal(identity, "TSTP").await?)
    }

    /// Stops the process `identity` gracefully at its next heartbeat.
    pub async fn stop(&self, identity: &str) -> Result<(), Error> {
        Ok(self.broker.signal(identity, "TERM").await?)
    }

    /// Pauses `queue` until resumed: workers stop taking its jobs within a fetch (a second
    /// at most when idle); running jobs finish; nothing is lost.
    pub async fn pause(&self, queue: &str) -> Result<(), Error> {
        Ok(self.broker.pause(queue, Paused::UntilResumed).await?)
    }

    /// Pauses `queue` for `cooldown`, after which it resumes by itself.
    pub async fn pause_for(&self, queue: &str, cooldown: Duration) -> Result<(), Error> {
        let until = SystemTime::now()
            .checked_add(cooldown)
            .map_or(Paused::UntilResumed, Paused::Until);
        Ok(self.broker.pause(queue, until).await?)
    }

    /// Resumes `queue`; idle workers wake at once.
    pub async fn resume(&self, queue: &str) -> Result<(), Error> {
        Ok(self.broker.pause(queue, Paused::No).await?)
    }

    /// The paused queues, each with the time it resumes by itself, if any.
    pub async fn paused(&self) -> Result<Vec<(String, Option<SystemTime>)>, Error> {
        Ok(self.broker.paused().await?)
    }

    /// The limit keys (`#[job(concurrency(...))]`, `#[job(rate(...))]`) with jobs set aside
    /// for want of room: how many slots are taken and how many jobs wait.
    pub async fn limits(&self) -> Result<Vec<LimitEntry>, Error> {
        Ok(self.broker.limits().await?)
    }

    /// Per job class, the runs of the last minute (throughput, failures, duration
    /// percentiles) and since start, summed over the live worker processes.
    pub async fn classes(&self) -> Result<Vec<ClassStats>, Error> {
        let processes = self.broker.processes().await?;
        Ok(class_stats::merge(
            processes.iter().map(|p| p.classes.as_str()),
        ))
    }

    /// Processed and failed totals.
    pub async fn stats(&self) -> Result<Stats, Error> {
        Ok(self.broker.stats().await?)
    }

    /// The outbox relays that reported within `within`, by name, with what each last
    /// reported (jobs relayed, the outbox's lag and size); a report that does not read is
    /// left out.
    pub async fn relays(&self, within: Duration) -> Result<Vec<(String, RelayStatus)>, Error> {
        let since = crate::time::now() - within.as_secs_f64();
        let published = self.broker.published(Published::Relays).await?;
        Ok(published
            .into_iter()
            .filter_map(|(name, json)| {
                let status: RelayStatus = serde_json::from_str(&json).ok()?;
                (status.at >= since).then_some((name, status))
            })
            .collect())
    }
}
