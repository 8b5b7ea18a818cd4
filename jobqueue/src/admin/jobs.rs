//! Operators' actions on jobs: run a set's entry now, delete or kill it, cancel a job
//! wherever it is, empty a queue. A job put back in a queue passes the client's admission
//! (its header, its lock) as any enqueue does; a job taken out for good releases its locks.
//! Looking for a job reads a page at a time.

use std::time::Duration;

use super::{Admin, SetEntry, PAGE};
use crate::backend::{Location, Move, Settle, SortedSet, Source, Span};
use crate::client::{Admitted, Origin};
use crate::envelope::Envelope;
use crate::error::Error;
use crate::job::keys::cancel_key;

/// How long a cancellation waits for its job to show up running.
const CANCEL_TTL: Duration = Duration::from_secs(3600);

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

impl Admin {
    /// Sends `entry` of `set` to its queue now, as Sidekiq's "Retry Now" and "Add to queue"
    /// do (a retried job's `retry_count` goes down by one, as Sidekiq's does), through the
    /// client's admission: a unique job takes its lock again, and one whose twin is
    /// enqueued is dropped for it. Returns whether it was still there.
    pub async fn run_now(&self, set: SortedSet, entry: &SetEntry) -> Result<bool, Error> {
        let Ok(mut job) = Envelope::parse(&entry.payload) else {
            return Ok(false);
        };
        if set != SortedSet::Schedule {
            job.retry_count = job.retry_count.map(|n| n.saturating_sub(1));
        }
        let origin = match set {
            SortedSet::Schedule => Origin::Scheduled,
            _ => Origin::Retry,
        };
        let to = match self.client.admit(job, None, None, origin).await? {
            Admitted::Push(push, _) => Settle::Queue {
                queue: push.queue,
                payload: push.payload,
                front: false,
            },
            Admitted::Existing(_) => Settle::Discard,
        };
        self.move_entry(set, entry, to).await
    }

    /// Deletes `entry` of `set`, releasing its locks. Returns whether it was still there.
    pub async fn delete(&self, set: SortedSet, entry: &SetEntry) -> Result<bool, Error> {
        let moved = self.move_entry(set, entry, Settle::Discard).await?;
        if moved {
            self.release_locks(&entry.payload).await?;
        }
        Ok(moved)
    }

    /// Moves `entry` of `set` to the dead set, as Sidekiq's "Kill" does. Returns whether it
    /// was still there.
    pub async fn kill(&self, set: SortedSet, entry: &SetEntry) -> Result<bool, Error> {
        let to = Settle::Dead {
            payload: entry.payload.clone(),
        };
        let moved = self.move_entry(set, entry, to).await?;
        if moved {
            self.release_locks(&entry.payload).await?;
        }
        Ok(moved)
    }

    async fn move_entry(
        &self,
        set: SortedSet,
        entry: &SetEntry,
        to: Settle,
    ) -> Result<bool, Error> {
        let moved = self
            .broker
            .settle(Source::Set(set), &[Move::new(entry.payload.clone(), to)])
            .await?;
        Ok(moved.first().copied().unwrap_or(false))
    }

    /// Releases the uniqueness locks a job taken out for good holds, as its class's
    /// published options name them.
    async fn release_locks(&self, payload: &str) -> Result<(), Error> {
        let Ok(job) = Envelope::parse(payload) else {
            return Ok(());
        };
        let catalog = self.client.catalog();
        let options = catalog.options(self.broker.as_ref(), &job.class).await?;
        if let Some(spec) = options.and_then(|o| o.unique) {
            self.broker.unlock(&spec.queued_key(&job), &job.jid).await?;
            self.broker
                .unlock(&spec.running_key(&job), &job.jid)
                .await?;
        }
        Ok(())
    }

    /// Removes the job `jid` from `queue`, releasing its locks. Returns whether it was
    /// there. Reads the queue a page at a time.
    pub async fn delete_queued(&self, queue: &str, jid: &str) -> Result<bool, Error> {
        Ok(self.take_out(Location::Queue(queue), jid).await?.is_some())
    }

    /// Looks for the job `jid` at `at`, a page at a time, and removes it; returns its
    /// payload, once its locks are released.
    async fn take_out(&self, at: Location<'_>, jid: &str) -> Result<Option<String>, Error> {
        let mut offset = 0;
        loop {
            let page = self.broker.range(at, Span::page(offset, PAGE)).await?;
            let found = page
                .iter()
                .find(|e| Envelope::parse(&e.payload).is_ok_and(|job| job.jid == jid));
            if let Some(entry) = found {
                let payload = entry.payload.clone();
                if self
                    .broker
                    .remove(at, std::slice::from_ref(&payload))
                    .await?
                    == 0
                {
                    return Ok(None);
                }
                self.release_locks(&payload).await?;
                return Ok(Some(payload));
            }
            if page.len() < PAGE {
                return Ok(None);
            }
            offset += page.len();
        }
    }

    /// Cancels the job `jid`: removed if it is waiting (in a queue, or scheduled, or
    /// waiting for a retry, or set aside for its limits), with its locks released; stopped
    /// if it is running. A cancelled job is neither failed nor retried; running ones count
    /// in [`Stats::cancelled`](crate::backend::Stats::cancelled). Each read is a page.
    pub async fn cancel(&self, jid: &str) -> Result<Cancelled, Error> {
        for (set, name) in [
            (SortedSet::Schedule, "scheduled"),
            (SortedSet::Retry, "retry"),
        ] {
            if self.take_out(Location::Set(set), jid).await?.is_some() {
                return Ok(Cancelled::Removed { from: name.into() });
            }
        }
        for queue in self.broker.queues().await? {
            if self.take_out(Location::Queue(&queue), jid).await?.is_some() {
                return Ok(Cancelled::Removed { from: queue });
            }
        }
        for limit in self.broker.limits().await? {
            if self
                .take_out(Location::Parked(&limit.key), jid)
                .await?
                .is_some()
            {
                return Ok(Cancelled::Removed {
                    from: format!("limit {}", limit.key),
                });
            }
        }
        self.broker.set(&cancel_key(jid), "1", CANCEL_TTL).await?;
        // A process holding it in its buffer hears at once, and does not start it.
        self.broker.announce_cancel(jid).await?;
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

    /// Removes every job waiting in `queue`, a page at a time; returns how many there were.
    pub async fn clear(&self, queue: &str) -> Result<usize, Error> {
        let at = Location::Queue(queue);
        let mut removed = 0;
        loop {
            let page = self.broker.range(at, Span::page(0, PAGE)).await?;
            if page.is_empty() {
                return Ok(removed);
            }
            let payloads: Vec<String> = page.into_iter().map(|e| e.payload).collect();
            let gone = self.broker.remove(at, &payloads).await?;
            removed += gone;
            if gone == 0 {
                // Taken by workers meanwhile, as fast as they are read.
                return Ok(removed);
            }
        }
    }
}
