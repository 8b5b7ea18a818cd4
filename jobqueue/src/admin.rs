//! A look inside: queue sizes and latency, the scheduled, retry and dead sets, live
//! processes and totals, as Sidekiq's API and Web UI show them; and pausing queues.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::broker::{Broker, LimitEntry, ProcessEntry, Push, Settle, SortedSet, Stats};
use crate::class_stats::{self, ClassStats};
use crate::envelope::{Envelope, Retry};
use crate::error::Error;
use crate::schedule::periodic::{last_key, paused_key};
use crate::time::{after, from_epoch, now};

/// How long "paused until resumed" lasts for a periodic schedule.
const PAUSED_FOR_GOOD: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// The owner recorded on a periodic schedule's pause.
const PAUSED_BY: &str = "admin";

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

/// A job waiting in a queue.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct QueuedJob {
    /// The job, or the raw text when it does not parse.
    pub job: Result<Envelope, String>,
    /// The payload exactly as stored.
    pub payload: String,
}

/// What [`Admin::cancel`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cancelled {
    /// The job was waiting and is gone: from this queue, or the `scheduled` or `retry` set,
    /// or `limit KEY` (set aside until its limit key has room).
    Removed {
        /// Where it was.
        from: String,
    },
    /// A live process is running it; it is told at its next heartbeat, and its future is
    /// dropped after the worker's `cancel_grace` if it has not ended by then.
    Signalled,
    /// It was not found waiting or running; should it start within the hour (it may be
    /// between a queue and a process), it is cancelled at that process's next heartbeat.
    Marked,
}

/// How long a cancellation waits for its job to show up running.
const CANCEL_TTL: Duration = Duration::from_secs(3600);

/// The argument fields each job class declares `sensitive`, as the live worker processes
/// publish them: what to hide when showing a job.
#[derive(Clone, Debug, Default)]
pub struct Sensitive {
    by_class: HashMap<String, Vec<String>>,
}

impl Sensitive {
    /// `job` with the values of its class's sensitive fields hidden.
    pub fn redact(&self, job: &Envelope) -> Envelope {
        match self.by_class.get(&job.class) {
            Some(fields) => {
                let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
                job.redacted(&fields)
            }
            None => job.clone(),
        }
    }
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

    /// Up to `count` jobs waiting in `queue` from `offset`, the next to run first.
    pub async fn queue_jobs(
        &self,
        queue: &str,
        offset: usize,
        count: usize,
    ) -> Result<Vec<QueuedJob>, Error> {
        Ok(self
            .broker
            .queue_range(queue, offset, count)
            .await?
            .into_iter()
            .map(|payload| QueuedJob {
                job: Envelope::parse(&payload).map_err(|_| payload.clone()),
                payload,
            })
            .collect())
    }

    /// Removes the job `jid` from `queue`. Returns whether it was there.
    pub async fn delete_queued(&self, queue: &str, jid: &str) -> Result<bool, Error> {
        Ok(self.broker.remove_job(queue, jid).await?)
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
            job.retry_count = job.retry_count.map(|n| n.saturating_sub(1));
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

    /// Cancels the job `jid`: removed if it is waiting (in a queue, or scheduled, or
    /// waiting for a retry, or set aside for its limits), stopped if it is running. A
    /// cancelled job is neither failed nor retried; running ones count in
    /// [`Stats::cancelled`].
    pub async fn cancel(&self, jid: &str) -> Result<Cancelled, Error> {
        for (set, name) in [
            (SortedSet::Schedule, "scheduled"),
            (SortedSet::Retry, "retry"),
        ] {
            if let Some(entry) = self.find(set, jid).await? {
                if self.delete(set, &entry).await? {
                    return Ok(Cancelled::Removed { from: name.into() });
                }
            }
        }
        for queue in self.broker.queues().await? {
            if self.broker.remove_job(&queue, jid).await? {
                return Ok(Cancelled::Removed { from: queue });
            }
        }
        if let Some(key) = self.broker.remove_set_aside(jid).await? {
            return Ok(Cancelled::Removed {
                from: format!("limit {key}"),
            });
        }
        self.broker.mark_cancelled(jid, CANCEL_TTL).await?;
        let running = self.broker.processes().await?.iter().any(|p| {
            p.running
                .iter()
                .any(|r| Envelope::parse(&r.payload).is_ok_and(|e| e.jid == jid))
        });
        Ok(if running {
            Cancelled::Signalled
        } else {
            Cancelled::Marked
        })
    }

    /// The progress of the iterating job `jid` ([`crate::iterate`]), while it has a
    /// checkpoint.
    pub async fn iteration(&self, jid: &str) -> Result<Option<crate::iterate::Progress>, Error> {
        let key = crate::iterate::checkpoint_key(jid);
        let text = self.broker.lock_holder(&key).await?;
        Ok(text.as_deref().and_then(crate::iterate::progress_of))
    }

    /// Quiets the process `identity` at its next heartbeat: it takes no new jobs.
    pub async fn quiet(&self, identity: &str) -> Result<(), Error> {
        Ok(self.broker.signal(identity, "TSTP").await?)
    }

    /// Stops the process `identity` gracefully at its next heartbeat.
    pub async fn stop(&self, identity: &str) -> Result<(), Error> {
        Ok(self.broker.signal(identity, "TERM").await?)
    }

    /// The periodic schedules worker processes have published, as JSON: each one's
    /// `name`, `schedule`, `class`, `queue`, `args`, `next_tick` and `next_ticks` (epoch
    /// seconds), `published_at`, and, read now, `last_tick` (the latest tick a process
    /// enqueued, or null), `paused` and `paused_until` (null when paused until resumed).
    pub async fn periodic(&self) -> Result<Vec<serde_json::Value>, Error> {
        let mut schedules = Vec::new();
        for (name, description) in self.broker.periodic().await? {
            let Ok(mut schedule) = serde_json::from_str::<serde_json::Value>(&description) else {
                continue;
            };
            let last = self.broker.lock_holder(&last_key(&name)).await?;
            let last = last
                .and_then(|ms| ms.parse::<f64>().ok())
                .map(|ms| ms / 1000.0);
            let paused = self.broker.lock_holder(&paused_key(&name)).await?;
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
        let (until, ttl) = match cooldown {
            Some(cooldown) => (after(cooldown).to_string(), cooldown),
            None => (PAUSED_BY.to_owned(), PAUSED_FOR_GOOD),
        };
        Ok(self
            .broker
            .lock_force(&paused_key(name), &until, ttl)
            .await?)
    }

    /// Resumes the periodic schedule `name`.
    pub async fn resume_periodic(&self, name: &str) -> Result<(), Error> {
        let key = paused_key(name);
        if let Some(owner) = self.broker.lock_holder(&key).await? {
            self.broker.unlock(&key, &owner).await?;
        }
        Ok(())
    }

    /// Enqueues the job of the periodic schedule `name` now, outside its schedule, as a
    /// worker's tick would (straight into its queue: client middleware does not run).
    /// Returns the new job's id, or `None` when no process publishes that schedule.
    pub async fn run_periodic(&self, name: &str) -> Result<Option<String>, Error> {
        let schedules = self.broker.periodic().await?;
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
        job.enqueued_at = Some(now());
        job.extra.insert(
            "periodic".into(),
            serde_json::json!({ "name": name, "tick": now(), "manual": true }),
        );
        let push = Push {
            queue: job.queue.clone(),
            payload: job.to_json(),
            at: None,
        };
        self.broker.push(std::slice::from_ref(&push)).await?;
        Ok(Some(job.jid))
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

    /// The sensitive argument fields of each job class the live worker processes run.
    pub async fn sensitive(&self) -> Result<Sensitive, Error> {
        let mut by_class: HashMap<String, Vec<String>> = HashMap::new();
        for process in self.broker.processes().await? {
            let Ok(info) = serde_json::from_str::<serde_json::Value>(&process.info) else {
                continue;
            };
            let Some(classes) = info["sensitive"].as_object() else {
                continue;
            };
            for (class, fields) in classes {
                let fields = fields.as_array().into_iter().flatten();
                let known = by_class.entry(class.clone()).or_default();
                for field in fields.filter_map(|f| f.as_str()) {
                    if !known.iter().any(|k| k == field) {
                        known.push(field.to_owned());
                    }
                }
            }
        }
        Ok(Sensitive { by_class })
    }

    /// Processed and failed totals.
    pub async fn stats(&self) -> Result<Stats, Error> {
        Ok(self.broker.stats().await?)
    }
}
