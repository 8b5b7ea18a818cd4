//! The key/value store on PostgreSQL: values with an expiry, locks by owner.

use std::time::Duration;

use async_trait::async_trait;

use super::rows::unlock_on;
use super::PgBroker;
use crate::backend::KeyValue;
use crate::error::BrokerError;
use crate::time::now;

#[async_trait]
impl KeyValue for PgBroker {
    async fn get(&self, key: &str) -> Result<Option<String>, BrokerError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM jobqueue_kv WHERE key = $1 AND expires > $2")
                .bind(key)
                .bind(now())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), BrokerError> {
        sqlx::query(
            "INSERT INTO jobqueue_kv (key, value, expires) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
        )
        .bind(key)
        .bind(value)
        .bind(now() + ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, BrokerError> {
        loop {
            let at = now();
            let (taken, holder): (bool, Option<String>) = sqlx::query_as(
                "WITH took AS (
                     INSERT INTO jobqueue_kv (key, value, expires) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires
                     WHERE jobqueue_kv.expires <= $4 OR jobqueue_kv.value = excluded.value
                     RETURNING 1)
                 SELECT EXISTS (SELECT 1 FROM took),
                        (SELECT value FROM jobqueue_kv WHERE key = $1 AND expires > $4)",
            )
            .bind(key)
            .bind(owner)
            .bind(at + ttl.as_secs_f64())
            .bind(at)
            .fetch_one(&self.pool)
            .await?;
            match (taken, holder) {
                (true, _) => return Ok(None),
                (false, Some(holder)) => return Ok(Some(holder)),
                // Taken by a transaction that committed after this statement's snapshot:
                // look again.
                (false, None) => tokio::task::yield_now().await,
            }
        }
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, BrokerError> {
        let mut conn = self.pool.acquire().await?;
        unlock_on(&mut conn, key, owner).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, BrokerError> {
        Ok(sqlx::query_scalar(
            "SELECT kv.value FROM unnest($1::text[]) WITH ORDINALITY u(k, i)
             LEFT JOIN jobqueue_kv kv ON kv.key = u.k AND kv.expires > $2 ORDER BY u.i",
        )
        .bind(keys)
        .bind(now())
        .fetch_all(&self.pool)
        .await?)
    }
}
