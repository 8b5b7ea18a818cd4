//! Enqueueing: now, after a delay, at a time, or many jobs in one round trip.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::broker::{Broker, Push};
use crate::envelope::{encode_args, epoch_seconds, now, Envelope, Retry};
use crate::error::Error;
use crate::job::Job;

/// Pushes jobs to a broker. Cheap to clone.
///
/// ```
/// # use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize, Job)]
/// # #[job(queue = "emails", idempotent)]
/// # struct SendWelcome { user_id: u64 }
/// use jobqueue::{Client, MemoryBroker};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let client = Client::new(MemoryBroker::new());
/// let jid = client.enqueue(&SendWelcome { user_id: 7 }).await?;
/// assert_eq!(jid.len(), 24);
/// # Ok::<_, jobqueue::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Client {
    broker: Arc<dyn Broker>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `broker`.
    pub fn new(broker: impl Broker) -> Self {
        Self::from_shared(Arc::new(broker))
    }

    /// A client for a broker already shared with others.
    pub fn from_shared(broker: Arc<dyn Broker>) -> Self {
        Self { broker }
    }

    /// The broker this client pushes to.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Pushes `job` to its queue. Returns its job id.
    pub async fn enqueue<J: Job>(&self, job: &J) -> Result<String, Error> {
        self.push_one(job, None, None).await
    }

    /// Pushes `job` to `queue` instead of the queue its type names (Sidekiq's
    /// `set(queue: ...)`). Returns its job id.
    pub async fn enqueue_to<J: Job>(&self, queue: &str, job: &J) -> Result<String, Error> {
        self.push_one(job, Some(queue), None).await
    }

    /// Runs `job` once `delay` has passed. Returns its job id.
    pub async fn enqueue_in<J: Job>(&self, delay: Duration, job: &J) -> Result<String, Error> {
        self.push_one(job, None, Some(now() + delay.as_secs_f64()))
            .await
    }

    /// Runs `job` at `at` (at once if `at` has passed). Returns its job id.
    pub async fn enqueue_at<J: Job>(&self, at: SystemTime, job: &J) -> Result<String, Error> {
        self.push_one(job, None, Some(epoch_seconds(at))).await
    }

    /// Pushes many jobs in one round trip. Returns their job ids, in order.
    pub async fn enqueue_bulk<'a, J: Job>(
        &self,
        jobs: impl IntoIterator<Item = &'a J>,
    ) -> Result<Vec<String>, Error> {
        let at = now();
        let mut jids = Vec::new();
        let mut pushes = Vec::new();
        for job in jobs {
            let envelope = envelope_for(job, at)?;
            jids.push(envelope.jid.clone());
            pushes.push(to_push(envelope, None, at));
        }
        self.broker.push(&pushes).await?;
        Ok(jids)
    }

    /// Pushes a job given as a payload, for a class this process does not define (a Ruby
    /// job, say). The jid, `created_at` and `enqueued_at` are filled in here.
    pub async fn enqueue_envelope(
        &self,
        envelope: Envelope,
        at: Option<SystemTime>,
    ) -> Result<String, Error> {
        let jid = envelope.jid.clone();
        let push = to_push(envelope, at.map(epoch_seconds), now());
        self.broker.push(&[push]).await?;
        Ok(jid)
    }

    async fn push_one<J: Job>(
        &self,
        job: &J,
        queue: Option<&str>,
        at: Option<f64>,
    ) -> Result<String, Error> {
        let now = now();
        let mut envelope = envelope_for(job, now)?;
        if let Some(queue) = queue {
            envelope.queue = queue.to_owned();
        }
        let jid = envelope.jid.clone();
        self.broker.push(&[to_push(envelope, at, now)]).await?;
        Ok(jid)
    }
}

fn envelope_for<J: Job>(job: &J, created_at: f64) -> Result<Envelope, Error> {
    let args = encode_args(job).map_err(|source| Error::Serialize {
        class: J::NAME,
        source,
    })?;
    let mut envelope = Envelope::new(J::NAME, J::OPTIONS.queue, args);
    envelope.retry = Retry::Count(J::OPTIONS.retry.job_retries);
    envelope.created_at = Some(created_at);
    Ok(envelope)
}

/// A job due later goes to `schedule` without `enqueued_at`, as Sidekiq stores it; the
/// scheduler sets `enqueued_at` when it moves the job to its queue.
fn to_push(mut envelope: Envelope, at: Option<f64>, now: f64) -> Push {
    let at = at.filter(|at| *at > now);
    envelope.enqueued_at = if at.is_none() { Some(now) } else { None };
    Push {
        queue: envelope.queue.clone(),
        payload: envelope.to_json(),
        at,
    }
}
