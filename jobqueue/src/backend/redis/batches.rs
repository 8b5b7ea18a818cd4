//! Batches on Redis ([`Batches`]): a hash of counts and callbacks, and a set of the job ids
//! not finished yet, both under `jobqueue:batch:<bid>`.

use async_trait::async_trait;

use super::RedisBroker;
use crate::backend::{BatchCallbacks, BatchStatus, Batches, BATCH_LINGER, BATCH_TTL};
use crate::error::BrokerError;
use crate::time::now;

#[async_trait]
impl Batches for RedisBroker {
    async fn batch_add(
        &self,
        bid: &str,
        description: &str,
        callbacks: &BatchCallbacks,
        jids: &[String],
    ) -> Result<(), BrokerError> {
        let (hash, pending) = self.inner.keys.batch(bid);
        let mut call = self.inner.scripts.batch_add.key(hash);
        call.key(pending).arg(BATCH_TTL.as_secs()).arg(description);
        for callback in [&callbacks.on_complete, &callbacks.on_success] {
            call.arg(callback.as_ref().map_or("", |push| push.payload.as_str()));
        }
        call.arg(jids);
        call.invoke_async::<i64>(&mut self.conn()).await?;
        Ok(())
    }

    async fn batch_done(&self, bid: &str, jid: &str, succeeded: bool) -> Result<bool, BrokerError> {
        let keys = &self.inner.keys;
        let (hash, pending) = keys.batch(bid);
        let done: i64 = self
            .inner
            .scripts
            .batch_done
            .key(hash)
            .key(pending)
            .arg(jid)
            .arg(if succeeded { "1" } else { "0" })
            .arg(&keys.prefix)
            .arg(now())
            .arg(BATCH_LINGER.as_secs())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(done == 2)
    }

    async fn batch_status(&self, bid: &str) -> Result<Option<BatchStatus>, BrokerError> {
        let (hash, pending) = self.inner.keys.batch(bid);
        type Fields = (
            Option<String>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<String>,
        );
        let (fields, pending): (Fields, u64) = redis::pipe()
            .cmd("HMGET")
            .arg(&hash)
            .arg(&["description", "total", "succeeded", "failed", "finished"])
            .scard(&pending)
            .query_async(&mut self.conn())
            .await?;
        let (description, total, succeeded, failed, finished) = fields;
        Ok(description.map(|description| BatchStatus {
            description,
            total: total.unwrap_or(0),
            pending,
            succeeded: succeeded.unwrap_or(0),
            failed: failed.unwrap_or(0),
            finished: finished.is_some(),
        }))
    }
}
