//! Batches on PostgreSQL: counts, pending jobs, and callbacks scheduled once.

use std::time::SystemTime;

use async_trait::async_trait;

use super::rows::{count, insert, notify};
use super::PgBroker;
use crate::backend::{BatchCallbacks, BatchStatus, Batches, Push, BATCH_LINGER, BATCH_TTL};
use crate::error::BrokerError;
use crate::time::now;

#[async_trait]
impl Batches for PgBroker {
    async fn batch_add(
        &self,
        bid: &str,
        description: &str,
        callbacks: &BatchCallbacks,
        jids: &[String],
    ) -> Result<(), BrokerError> {
        let at = now();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "WITH old AS (DELETE FROM jobqueue_batches WHERE expires <= $1 RETURNING bid)
             DELETE FROM jobqueue_batch_jobs WHERE bid IN (SELECT bid FROM old)",
        )
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let push = |p: &Option<Push>| p.as_ref().map(|p| (p.queue.clone(), p.payload.clone()));
        let (complete, success) = (push(&callbacks.on_complete), push(&callbacks.on_success));
        sqlx::query(
            "INSERT INTO jobqueue_batches
                 (bid, description, complete_queue, complete_payload, success_queue, success_payload, expires)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (bid) DO UPDATE SET expires = excluded.expires",
        )
        .bind(bid)
        .bind(description)
        .bind(complete.as_ref().map(|c| &c.0))
        .bind(complete.as_ref().map(|c| &c.1))
        .bind(success.as_ref().map(|c| &c.0))
        .bind(success.as_ref().map(|c| &c.1))
        .bind(at + BATCH_TTL.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "WITH added AS (
                 INSERT INTO jobqueue_batch_jobs (bid, jid) SELECT $1, j FROM unnest($2::text[]) j
                 ON CONFLICT DO NOTHING RETURNING 1)
             UPDATE jobqueue_batches SET total = total + (SELECT count(*) FROM added) WHERE bid = $1",
        )
        .bind(bid)
        .bind(jids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn batch_done(&self, bid: &str, jid: &str, succeeded: bool) -> Result<bool, BrokerError> {
        type Row = (
            i64,
            bool,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let at = now();
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query(
            "DELETE FROM jobqueue_batch_jobs WHERE bid = $1 AND jid = $2 AND EXISTS (
                 SELECT 1 FROM jobqueue_batches WHERE bid = $1 AND expires > $3)",
        )
        .bind(bid)
        .bind(jid)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if gone.rows_affected() == 0 {
            return Ok(false);
        }
        let (failed, finished, cq, cp, sq, sp): Row = sqlx::query_as(
            "UPDATE jobqueue_batches SET
                 succeeded = succeeded + CASE WHEN $2 THEN 1 ELSE 0 END,
                 failed = failed + CASE WHEN $2 THEN 0 ELSE 1 END
             WHERE bid = $1
             RETURNING failed, finished, complete_queue, complete_payload, success_queue, success_payload",
        )
        .bind(bid)
        .bind(succeeded)
        .fetch_one(&mut *tx)
        .await?;
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobqueue_batch_jobs WHERE bid = $1")
                .bind(bid)
                .fetch_one(&mut *tx)
                .await?;
        if pending > 0 || finished {
            tx.commit().await?;
            return Ok(false);
        }
        sqlx::query("UPDATE jobqueue_batches SET finished = true, expires = $2 WHERE bid = $1")
            .bind(bid)
            .bind(at + BATCH_LINGER.as_secs_f64())
            .execute(&mut *tx)
            .await?;
        // Into the schedule set, due now: a scheduler admits them as any due job.
        let due_now = Some(SystemTime::now());
        let mut due = Vec::new();
        let callback = |q: Option<String>, p: Option<String>| {
            q.zip(p).map(|(queue, payload)| Push {
                queue,
                payload,
                at: due_now,
            })
        };
        due.extend(callback(cq, cp));
        if failed == 0 {
            due.extend(callback(sq, sp));
        }
        let (_, scheduled) = insert(&mut tx, &due).await?;
        notify(&mut tx, false, scheduled).await?;
        tx.commit().await?;
        self.hub.wake(false, scheduled);
        Ok(true)
    }

    async fn batch_status(&self, bid: &str) -> Result<Option<BatchStatus>, BrokerError> {
        type Row = (String, i64, i64, i64, i64, bool);
        let row: Option<Row> = sqlx::query_as(
            "SELECT description, total,
                 (SELECT count(*) FROM jobqueue_batch_jobs j WHERE j.bid = b.bid),
                 succeeded, failed, finished
             FROM jobqueue_batches b WHERE bid = $1 AND expires > $2",
        )
        .bind(bid)
        .bind(now())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(description, total, pending, succeeded, failed, finished)| BatchStatus {
                description,
                total: count(total),
                pending: count(pending),
                succeeded: count(succeeded),
                failed: count(failed),
                finished,
            },
        ))
    }
}
