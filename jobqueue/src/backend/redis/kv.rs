//! The key/value store on Redis ([`KeyValue`]): plain string keys with a TTL under
//! `jobqueue:lock:`.

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;

use super::jobs::millis;
use super::RedisBroker;
use crate::backend::KeyValue;
use crate::error::BrokerError;

#[async_trait]
impl KeyValue for RedisBroker {
    async fn get(&self, key: &str) -> Result<Option<String>, BrokerError> {
        Ok(self.conn().get(self.inner.keys.lock(key)).await?)
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), BrokerError> {
        let options =
            redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(millis(ttl)));
        let _: () = self
            .conn()
            .set_options(self.inner.keys.lock(key), value, options)
            .await?;
        Ok(())
    }

    async fn lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        Ok(self
            .inner
            .scripts
            .lock
            .key(self.inner.keys.lock(key))
            .arg(owner)
            .arg(millis(ttl))
            .invoke_async(&mut self.conn())
            .await?)
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, BrokerError> {
        let released: i64 = self
            .inner
            .scripts
            .unlock
            .key(self.inner.keys.lock(key))
            .arg(owner)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(released == 1)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, BrokerError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|k| self.inner.keys.lock(k)).collect();
        Ok(redis::cmd("MGET")
            .arg(names)
            .query_async(&mut self.conn())
            .await?)
    }
}
