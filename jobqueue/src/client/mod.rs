//! Enqueueing: now, after a delay, at a time, or many jobs in one round trip.
//!
//! Every job passes one admission path (`Client::admit`), whoever enqueues it: a caller,
//! a running job's follow-ups, a periodic tick, the scheduler moving a due job (a batch's
//! callbacks among them), an operator's "run now". In order: the client middleware chain
//! (which may change or refuse it), its header (collapse key, per-key limits), the payload
//! size check, the mechanisms its attribute demands (collapse marker, uniqueness lock), and
//! only then the backend. A refused job has left nothing behind. A class this process does
//! not have is admitted with the options its own processes publish (its catalog).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tracing::Instrument;

use crate::backend::{BatchStatus, Broker, KeyValue, Push};
use crate::envelope::{encode_args, Envelope, Retry};
use crate::error::Error;
use crate::job::{Job, JobOptions, LimitTag};
use crate::metrics;
use crate::time::{epoch_seconds, now};
use crate::trace;

mod batch;
pub(crate) mod catalog;
mod mechanisms;
mod middleware;
#[cfg(feature = "postgres")]
mod transaction;

pub use self::batch::Batch;
pub(crate) use self::batch::BATCH_KEY;
use self::catalog::Catalog;
pub use self::mechanisms::MechanismConfig;
pub use self::middleware::{
    Admission, ClientChain, ClientJob, ClientMiddleware, ClientNext, Origin,
};

/// How many jobs of a bulk enqueue go through the client chain at once.
const BULK_MIDDLEWARE_CONCURRENCY: usize = 256;

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
    chain: Arc<ClientChain>,
    max_payload_bytes: usize,
    mechanisms: MechanismConfig,
    /// The options of classes this process does not have, as their processes publish them.
    catalog: Arc<Catalog>,
}

/// The default largest payload a client pushes and a worker accepts: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("middleware", &self.chain)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `broker` (a [`MemoryBroker`](crate::MemoryBroker), a
    /// [`RedisBroker`](crate::RedisBroker), or an `Arc<dyn Broker>` shared with others),
    /// with no middleware.
    pub fn new(broker: impl Into<Arc<dyn Broker>>) -> Self {
        Self {
            broker: broker.into(),
            chain: Arc::new(ClientChain::new()),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            mechanisms: MechanismConfig::default(),
            catalog: Arc::default(),
        }
    }

    /// This client with another payload size limit (default 1 MiB). A larger job is
    /// refused with [`Error::PayloadTooLarge`].
    pub fn max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload_bytes = limit;
        self
    }

    /// This client with other settings for the collapse and uniqueness mechanisms.
    pub fn mechanisms(mut self, config: MechanismConfig) -> Self {
        self.mechanisms = config;
        self
    }

    /// This client with `chain` as its middleware.
    pub fn with_chain(mut self, chain: ClientChain) -> Self {
        self.chain = Arc::new(chain);
        self
    }

    /// This client with `middleware` appended to its chain.
    pub fn with<M: ClientMiddleware>(mut self, middleware: M) -> Self {
        Arc::make_mut(&mut self.chain).add(middleware);
        self
    }

    /// The broker it pushes to.
    pub(crate) fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Its reading of the classes processes publish.
    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The middleware every enqueue goes through.
    pub fn chain(&self) -> &ClientChain {
        &self.chain
    }

    /// Pushes `job` to its queue. Returns its job id (or, when middleware let an already
    /// enqueued job stand for it, that job's id).
    pub async fn enqueue<J: Job>(&self, job: &J) -> Result<String, Error> {
        self.enqueue_one(job, None, None).await
    }

    /// Pushes `job` to `queue` instead of the queue its type names (Sidekiq's
    /// `set(queue: ...)`). Returns its job id.
    pub async fn enqueue_to<J: Job>(&self, queue: &str, job: &J) -> Result<String, Error> {
        self.enqueue_one(job, Some(queue), None).await
    }

    /// Runs `job` once `delay` has passed. Returns its job id.
    pub async fn enqueue_in<J: Job>(&self, delay: Duration, job: &J) -> Result<String, Error> {
        self.enqueue_one(job, None, Some(SystemTime::now() + delay))
            .await
    }

    /// Runs `job` at `at` (at once if `at` has passed). Returns its job id.
    pub async fn enqueue_at<J: Job>(&self, at: SystemTime, job: &J) -> Result<String, Error> {
        self.enqueue_one(job, None, Some(at)).await
    }

    /// Pushes many jobs in one round trip. Returns, in order, each job's id, or `None` for
    /// a job that middleware refused (the reason is logged), as Sidekiq's `push_bulk` does.
    pub async fn enqueue_bulk<'a, J: Job>(
        &self,
        jobs: impl IntoIterator<Item = &'a J>,
    ) -> Result<Vec<Option<String>>, Error> {
        self.push_bulk(jobs, None, None).await
    }

    /// Enqueues `jobs` as (or into) `batch`, like [`Client::enqueue_bulk`]: the batch's
    /// callbacks are pushed once when they have all finished. Jobs middleware refuses, or
    /// that an existing unique job stands for, are not part of it. A batch with no job
    /// never finishes.
    pub async fn enqueue_batch<'a, J: Job>(
        &self,
        batch: &Batch,
        jobs: impl IntoIterator<Item = &'a J>,
    ) -> Result<Vec<Option<String>>, Error> {
        self.push_bulk(jobs, None, Some(batch)).await
    }

    /// Pushes `job` into batch `bid` (a job of the batch adding to it).
    pub(crate) async fn enqueue_in_batch<J: Job>(
        &self,
        bid: &str,
        job: &J,
    ) -> Result<String, Error> {
        let mut envelope = envelope_for(job, now())?;
        envelope
            .extra
            .insert(BATCH_KEY.into(), bid.to_owned().into());
        match self
            .admit(envelope, None, Some(&J::OPTIONS), Origin::Enqueue)
            .await?
        {
            Admitted::Push(push, jid) => {
                let callbacks = crate::backend::BatchCallbacks::default();
                self.broker
                    .batch_add(bid, "", &callbacks, std::slice::from_ref(&jid))
                    .await?;
                self.broker.push(std::slice::from_ref(&push)).await?;
                metrics::enqueued(&push.queue, J::NAME, 1);
                Ok(jid)
            }
            Admitted::Existing(jid) => Ok(jid),
        }
    }

    /// The counts of batch `bid`, if it exists (it is kept 30 days after its last
    /// addition).
    pub async fn batch_status(&self, bid: &str) -> Result<Option<BatchStatus>, Error> {
        Ok(self.broker.batch_status(bid).await?)
    }

    /// Like [`Client::enqueue_bulk`], for jobs that run at `at`.
    pub async fn enqueue_bulk_at<'a, J: Job>(
        &self,
        at: SystemTime,
        jobs: impl IntoIterator<Item = &'a J>,
    ) -> Result<Vec<Option<String>>, Error> {
        self.push_bulk(jobs, Some(at), None).await
    }

    async fn push_bulk<'a, J: Job>(
        &self,
        jobs: impl IntoIterator<Item = &'a J>,
        at: Option<SystemTime>,
        batch: Option<&Batch>,
    ) -> Result<Vec<Option<String>>, Error> {
        let Bulk {
            jids,
            pushes,
            pushed,
        } = self.admit_jobs(jobs, at, batch).await?;
        if let Some(batch) = batch {
            if !batch.classes().is_empty() {
                catalog::publish(self.broker.as_ref(), batch.classes()).await?;
            }
            // The batch knows its jobs before any of them can finish.
            self.broker
                .batch_add(batch.id(), batch.description(), batch.callbacks(), &pushed)
                .await?;
        }
        self.broker.push(&pushes).await?;
        count_enqueued(&pushes, J::NAME);
        Ok(jids)
    }

    /// Admits the jobs of a bulk.
    async fn admit_jobs<'a, J: Job>(
        &self,
        jobs: impl IntoIterator<Item = &'a J>,
        at: Option<SystemTime>,
        batch: Option<&Batch>,
    ) -> Result<Bulk, Error> {
        let now = now();
        let envelopes = jobs
            .into_iter()
            .map(|job| {
                let mut envelope = envelope_for(job, now)?;
                if let Some(batch) = batch {
                    envelope
                        .extra
                        .insert(BATCH_KEY.into(), batch.id().to_owned().into());
                }
                Ok(envelope)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let admitted = self.admit_bulk(envelopes, at, &J::OPTIONS).await;
        let mut jids = Vec::with_capacity(admitted.len());
        let mut pushes = Vec::with_capacity(admitted.len());
        let mut pushed = Vec::with_capacity(admitted.len());
        for result in admitted {
            match result {
                Ok(Admitted::Push(push, jid)) => {
                    jids.push(Some(jid.clone()));
                    pushes.push(push);
                    pushed.push(jid);
                }
                Ok(Admitted::Existing(jid)) => jids.push(Some(jid)),
                Err(Error::Skipped { class, reason }) => {
                    tracing::info!("{class} not enqueued: {reason}");
                    jids.push(None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Bulk {
            jids,
            pushes,
            pushed,
        })
    }

    /// Runs the jobs of a bulk through the client chain and mechanisms; the results are in
    /// the jobs' order. Middleware that keeps state in the broker makes a round trip per
    /// job; running the chains together lets the connection pipeline them. Twins (jobs
    /// with the same uniqueness key) go one after the other, in the order given, so that
    /// the first takes the lock: a cluster connection may reorder commands sent together.
    async fn admit_bulk(
        &self,
        envelopes: Vec<Envelope>,
        at: Option<SystemTime>,
        options: &'static JobOptions,
    ) -> Vec<Result<Admitted, Error>> {
        let unique = options.unique.filter(|spec| spec.locks_at_enqueue());
        // A job's round is how many earlier jobs of the bulk share its key.
        let mut earlier: HashMap<String, usize> = HashMap::new();
        let mut rounds: Vec<Vec<(usize, Envelope)>> = Vec::new();
        let count = envelopes.len();
        for (i, envelope) in envelopes.into_iter().enumerate() {
            let round = match unique {
                Some(spec) => {
                    let seen = earlier.entry(spec.queued_key(&envelope)).or_insert(0);
                    *seen += 1;
                    *seen - 1
                }
                None => 0,
            };
            if rounds.len() <= round {
                rounds.resize_with(round + 1, Vec::new);
            }
            rounds[round].push((i, envelope));
        }
        let mut results: Vec<Option<Result<Admitted, Error>>> = (0..count).map(|_| None).collect();
        for round in rounds {
            // Each result goes to its place as it comes: collected first, a bulk's results
            // were copied again each time their vector grew.
            let mut admitted = std::pin::pin!(futures_util::stream::iter(round)
                .map(|(i, envelope)| async move {
                    let result = self
                        .admit(envelope, at, Some(options), Origin::Enqueue)
                        .await;
                    (i, result)
                })
                .buffered(BULK_MIDDLEWARE_CONCURRENCY));
            while let Some((i, result)) = admitted.next().await {
                results[i] = Some(result);
            }
        }
        results.into_iter().flatten().collect()
    }

    /// Pushes a job given as a payload, for a class this process does not define (a Ruby
    /// job, say). `enqueued_at` is filled in here.
    pub async fn enqueue_envelope(
        &self,
        envelope: Envelope,
        at: Option<SystemTime>,
    ) -> Result<String, Error> {
        self.push_envelope(envelope, at, None).await
    }

    async fn enqueue_one<J: Job>(
        &self,
        job: &J,
        queue: Option<&str>,
        at: Option<SystemTime>,
    ) -> Result<String, Error> {
        let mut envelope = envelope_for(job, now())?;
        if let Some(queue) = queue {
            envelope.queue = queue.to_owned();
        }
        self.push_envelope(envelope, at, Some(&J::OPTIONS)).await
    }

    /// Runs one job through the chain and pushes it.
    async fn push_envelope(
        &self,
        envelope: Envelope,
        at: Option<SystemTime>,
        options: Option<&'static JobOptions>,
    ) -> Result<String, Error> {
        let class = envelope.class.clone();
        match self.admit(envelope, at, options, Origin::Enqueue).await? {
            Admitted::Push(push, jid) => {
                self.broker.push(std::slice::from_ref(&push)).await?;
                metrics::enqueued(&push.queue, &class, 1);
                Ok(jid)
            }
            Admitted::Existing(jid) => Ok(jid),
        }
    }

    /// The largest payload this client pushes, in bytes.
    pub(crate) fn payload_limit(&self) -> usize {
        self.max_payload_bytes
    }

    fn check_size(&self, push: &Push, class: &str) -> Result<(), Error> {
        if push.payload.len() > self.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                class: class.to_owned(),
                bytes: push.payload.len(),
                limit: self.max_payload_bytes,
            });
        }
        Ok(())
    }

    /// Makes one job ready to push: the middleware chain, then its header, the size check,
    /// then the job's mechanisms, so a job refused for any reason leaves no lock or marker
    /// behind. Every enqueue path comes through here. `options` are the job type's; for a
    /// class this process does not have, those its processes publish, if any.
    pub(crate) async fn admit(
        &self,
        envelope: Envelope,
        at: Option<SystemTime>,
        options: Option<&'static JobOptions>,
        origin: Origin,
    ) -> Result<Admitted, Error> {
        let span = enqueue_span(&envelope.jid, &envelope.class, &envelope.queue, origin);
        self.admit_in_span(envelope, at, options, origin)
            .instrument(span)
            .await
    }

    async fn admit_in_span(
        &self,
        mut envelope: Envelope,
        at: Option<SystemTime>,
        options: Option<&'static JobOptions>,
        origin: Origin,
    ) -> Result<Admitted, Error> {
        // A new job carries the trace that made it; a due job keeps the one it has.
        if matches!(origin, Origin::Enqueue | Origin::Periodic) {
            trace::inject(&mut envelope);
        }
        let options = match options {
            Some(options) => Some(options),
            None => {
                let class = &envelope.class;
                self.catalog.options(self.broker.as_ref(), class).await?
            }
        };
        let mut job = ClientJob {
            envelope,
            at,
            options,
            origin,
            store: Arc::clone(&self.broker) as Arc<dyn KeyValue>,
        };
        if let Admission::Existing { jid } = self.chain.run(&mut job).await? {
            return Ok(Admitted::Existing(jid));
        }
        let mut at = job.at;
        let mut envelope = job.envelope;
        if let Some(options) = options {
            write_header(&mut envelope, options);
        }
        let now = SystemTime::now();
        let mut push = to_push(&mut envelope, at, now);
        self.check_size(&push, &envelope.class)?;
        let before = at;
        let broker = self.broker.as_ref();
        match mechanisms::apply(
            &self.mechanisms,
            broker,
            &envelope,
            options,
            origin,
            &mut at,
        )
        .await?
        {
            Admission::Existing { jid } => return Ok(Admitted::Existing(jid)),
            Admission::Push => {}
        }
        if at != before {
            push = to_push(&mut envelope, at, now);
        }
        Ok(Admitted::Push(push, envelope.jid))
    }
}

/// The jobs of a bulk that passed admission.
struct Bulk {
    /// In order, each job's id, or `None` for a job middleware refused (the reason is
    /// logged).
    jids: Vec<Option<String>>,
    /// The pushes of the jobs admitted.
    pushes: Vec<Push>,
    /// Their ids.
    pushed: Vec<String>,
}

/// Counts enqueued jobs of `class`, per run of one queue rather than per job: a bulk is
/// usually one queue.
fn count_enqueued(pushes: &[Push], class: &str) {
    let mut runs: Vec<(&str, u64)> = Vec::new();
    for push in pushes {
        match runs.last_mut() {
            Some((queue, count)) if *queue == push.queue => *count += 1,
            _ => runs.push((&push.queue, 1)),
        }
    }
    for (queue, count) in runs {
        metrics::enqueued(queue, class, count);
    }
}

/// The span of one job's enqueue.
pub(crate) fn enqueue_span(jid: &str, class: &str, queue: &str, origin: Origin) -> tracing::Span {
    tracing::info_span!("jobqueue.enqueue", jid = %jid, class = %class, queue = %queue, origin = ?origin)
}

/// Whether enqueue spans are recorded, so a job moved without the client needs one made.
pub(crate) fn enqueue_spans_enabled() -> bool {
    tracing::span_enabled!(tracing::Level::INFO)
}

/// A job that passed the client chain.
pub(crate) enum Admitted {
    /// Ready to push; with its jid.
    Push(Push, String),
    /// Not pushed: the job with this jid stands for it.
    Existing(String),
}

pub(crate) fn envelope_for<J: Job>(job: &J, created_at: f64) -> Result<Envelope, Error> {
    let args = encode_args(job).map_err(|source| Error::Serialize {
        class: J::NAME,
        source,
    })?;
    let mut envelope = Envelope::new(J::NAME, J::OPTIONS.queue, args);
    envelope.retry = Retry::Count(J::OPTIONS.retry.job_retries);
    envelope.created_at = Some(created_at);
    Ok(envelope)
}

/// Writes the header a backend acts on from the class's `options`: the collapse marker's
/// key, so a fetch reads the marker beside the job, and the per-key limits, so a fetch
/// applies them. The one place a header is written.
fn write_header(envelope: &mut Envelope, options: &JobOptions) {
    if let Some(spec) = options.collapse {
        envelope.collapse = Some(spec.marker_key(envelope));
    }
    let limits = options.limit_tags(envelope);
    envelope.limits = (!limits.is_empty()).then(|| LimitTag::encode(&limits));
}

/// A job due later goes to `schedule` without `enqueued_at`, as Sidekiq stores it; the
/// scheduler sets `enqueued_at` when it moves the job to its queue.
fn to_push(envelope: &mut Envelope, at: Option<SystemTime>, now: SystemTime) -> Push {
    let at = at.filter(|at| *at > now);
    envelope.enqueued_at = if at.is_none() {
        Some(epoch_seconds(now))
    } else {
        None
    };
    Push {
        queue: envelope.queue.clone(),
        payload: envelope.to_json(),
        at,
    }
}
