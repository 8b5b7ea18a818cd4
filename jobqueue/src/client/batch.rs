//! Batches: jobs enqueued together, with callback jobs pushed once when they have all
//! finished (`on_complete`, even if some died) and when they have all succeeded
//! (`on_success`), as Sidekiq Pro's batches. A job of the batch may add jobs to it
//! ([`JobContext::enqueue_in_batch`](crate::JobContext::enqueue_in_batch)).

use crate::backend::{BatchCallbacks, Push};
use crate::envelope::new_jid;
use crate::error::Error;
use crate::job::{Job, JobOptions};

use super::envelope_for;

/// The payload key that names a job's batch.
pub(crate) const BATCH_KEY: &str = "bid";

/// A batch to enqueue jobs in, with [`Client::enqueue_batch`](crate::Client::enqueue_batch).
///
/// ```
/// # use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
/// # #[derive(serde::Serialize, serde::Deserialize, Job)]
/// # struct ImportRow { row: u64 }
/// # #[derive(serde::Serialize, serde::Deserialize, Job)]
/// # struct ImportDone { file: String }
/// use jobqueue::client::Batch;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let client = jobqueue::Client::new(jobqueue::MemoryBroker::new());
/// let batch = Batch::new("import of rows.csv")
///     .on_complete(&ImportDone { file: "rows.csv".into() })?;
/// let rows: Vec<ImportRow> = (0..100).map(|row| ImportRow { row }).collect();
/// client.enqueue_batch(&batch, &rows).await?;
/// let status = client.batch_status(batch.id()).await?.unwrap();
/// assert_eq!((status.total, status.pending), (100, 100));
/// # Ok::<(), jobqueue::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Batch {
    bid: String,
    description: String,
    callbacks: BatchCallbacks,
    /// The callbacks' classes and options, published with the batch so that whichever
    /// process's scheduler admits the callbacks admits them as their types would.
    classes: Vec<(&'static str, &'static JobOptions)>,
}

impl Batch {
    /// A new batch, described for operators.
    pub fn new(description: impl Into<String>) -> Self {
        Self {
            bid: new_jid(),
            description: description.into(),
            callbacks: BatchCallbacks::default(),
            classes: Vec::new(),
        }
    }

    /// Its id, for [`Client::batch_status`](crate::Client::batch_status).
    pub fn id(&self) -> &str {
        &self.bid
    }

    /// Pushes `job` once every job of the batch has finished, some possibly dead.
    pub fn on_complete<J: Job>(mut self, job: &J) -> Result<Self, Error> {
        self.callbacks.on_complete = Some(callback(job)?);
        self.classes.push((J::NAME, &J::OPTIONS));
        Ok(self)
    }

    /// Pushes `job` once every job of the batch has succeeded.
    pub fn on_success<J: Job>(mut self, job: &J) -> Result<Self, Error> {
        self.callbacks.on_success = Some(callback(job)?);
        self.classes.push((J::NAME, &J::OPTIONS));
        Ok(self)
    }

    pub(crate) fn classes(&self) -> &[(&'static str, &'static JobOptions)] {
        &self.classes
    }

    pub(crate) fn description(&self) -> &str {
        &self.description
    }

    pub(crate) fn callbacks(&self) -> &BatchCallbacks {
        &self.callbacks
    }
}

/// A callback as the batch keeps it: pushed when the batch finishes into the `schedule`
/// set, due at once, where a worker's scheduler admits it as any due job.
fn callback<J: Job>(job: &J) -> Result<Push, Error> {
    let envelope = envelope_for(job, crate::time::now())?;
    Ok(Push {
        queue: envelope.queue.clone(),
        payload: envelope.to_json(),
        at: None,
    })
}
