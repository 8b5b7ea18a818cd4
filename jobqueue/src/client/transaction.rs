//! Enqueueing in the application's own PostgreSQL transaction (feature `postgres`): the job
//! exists if and only if the transaction commits. With a [`PgBroker`](crate::backend::postgres::PgBroker)
//! the job is written into the broker's tables; with any other broker into the outbox,
//! from which a [`Relay`](crate::backend::postgres::Relay) moves committed jobs into it.

use std::time::SystemTime;

use sqlx::PgConnection;

use super::{count_enqueued, envelope_for, Admitted, Bulk, Client, Origin};
use crate::backend::postgres::push_in;
use crate::error::Error;
use crate::job::Job;
use crate::time::now;

impl Client {
    /// Enqueues `job` inside the transaction `tx` (any `&mut` of a
    /// `sqlx::Transaction<'_, Postgres>`, or of a connection), so that it exists if and
    /// only if the transaction commits. Returns its job id.
    ///
    /// Every admission rule applies, as for [`Client::enqueue`]. Locks and markers that
    /// admission takes (unique, collapse) are taken at once, outside the transaction: after
    /// a rollback they stay until their time to live, as after a job that was refused.
    /// Workers see the job once it commits: within the broker's watch interval on
    /// PostgreSQL, and once a relay moved it through the outbox elsewhere.
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize, jobqueue::Job)]
    /// # struct SendReceipt { order: i64 }
    /// # async fn example(pool: sqlx::PgPool, client: jobqueue::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = pool.begin().await?;
    /// let order: i64 = sqlx::query_scalar("INSERT INTO orders (total) VALUES (42) RETURNING id")
    ///     .fetch_one(&mut *tx)
    ///     .await?;
    /// client.enqueue_tx(&mut tx, &SendReceipt { order }).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_tx<J: Job>(
        &self,
        tx: &mut PgConnection,
        job: &J,
    ) -> Result<String, Error> {
        self.enqueue_tx_at(tx, None, job).await
    }

    /// Like [`Client::enqueue_tx`], for a job that runs at `at`.
    pub async fn enqueue_tx_at<J: Job>(
        &self,
        tx: &mut PgConnection,
        at: Option<SystemTime>,
        job: &J,
    ) -> Result<String, Error> {
        let envelope = envelope_for(job, now())?;
        match self
            .admit(envelope, at, Some(&J::OPTIONS), Origin::Enqueue)
            .await?
        {
            Admitted::Push(push, jid) => {
                let pushes = [push];
                push_in(tx, &pushes, self.broker.transactional()).await?;
                count_enqueued(&pushes, J::NAME);
                Ok(jid)
            }
            Admitted::Existing(jid) => Ok(jid),
        }
    }

    /// Like [`Client::enqueue_bulk`], inside the transaction `tx`, in one statement.
    pub async fn enqueue_tx_bulk<'a, J: Job>(
        &self,
        tx: &mut PgConnection,
        jobs: impl IntoIterator<Item = &'a J>,
    ) -> Result<Vec<Option<String>>, Error> {
        let Bulk { jids, pushes, .. } = self.admit_jobs(jobs, None, None).await?;
        push_in(tx, &pushes, self.broker.transactional()).await?;
        count_enqueued(&pushes, J::NAME);
        Ok(jids)
    }
}
