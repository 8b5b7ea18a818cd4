//! Operator views on PostgreSQL: queues, pages of any location, removals, limits, pauses.

use std::time::SystemTime;

use async_trait::async_trait;

use super::rows::{notify, remove_from_set, set_code};
use super::PgBroker;
use crate::backend::{Entry, LimitEntry, Location, Paused, Span, Views};
use crate::error::BrokerError;
use crate::time::{epoch_seconds, from_epoch, now};

/// A location's rows in `jobqueue_jobs`: its place letter and name; `None` for a set. The
/// letter goes into a statement's text, never as a parameter: each place has an index of its
/// own, which the planner can use only when it sees the letter.
fn line(at: Location<'_>) -> Option<(&'static str, &str)> {
    match at {
        Location::Queue(queue) => Some(("q", queue)),
        Location::InFlight(process) => Some(("f", process)),
        Location::Parked(key) => Some(("p", key)),
        Location::Set(_) => None,
    }
}

fn offset(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl Views for PgBroker {
    async fn queues(&self) -> Result<Vec<String>, BrokerError> {
        Ok(
            sqlx::query_scalar("SELECT name FROM jobqueue_queues ORDER BY name COLLATE \"C\"")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn len(&self, at: Location<'_>) -> Result<usize, BrokerError> {
        let n: i64 = match (at, line(at)) {
            (Location::Set(set), _) => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM jobqueue_sets WHERE set = $1::text::\"char\"",
                )
                .bind(set_code(set))
                .fetch_one(&self.pool)
                .await?
            }
            (_, Some((place, name))) => {
                sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM jobqueue_jobs WHERE place = '{place}' AND name = $1"
                ))
                .bind(name)
                .fetch_one(&self.pool)
                .await?
            }
            (_, None) => 0,
        };
        Ok(usize::try_from(n).unwrap_or_default())
    }

    async fn range(&self, at: Location<'_>, span: Span) -> Result<Vec<Entry>, BrokerError> {
        let rows: Vec<(String, Option<f64>)> = match (at, span) {
            (
                Location::Set(set),
                Span::Page {
                    offset: skip,
                    count,
                },
            ) => {
                sqlx::query_as(
                    "SELECT payload, score FROM jobqueue_sets WHERE set = $1::text::\"char\"
                 ORDER BY score, payload COLLATE \"C\" OFFSET $2 LIMIT $3",
                )
                .bind(set_code(set))
                .bind(offset(skip))
                .bind(offset(count))
                .fetch_all(&self.pool)
                .await?
            }
            (Location::Set(set), Span::Scored { min, max, count }) => {
                sqlx::query_as(
                    "SELECT payload, score FROM jobqueue_sets WHERE set = $1::text::\"char\"
                 AND score >= $2 AND score <= $3
                 ORDER BY score, payload COLLATE \"C\" LIMIT $4",
                )
                .bind(set_code(set))
                .bind(epoch_seconds(min))
                .bind(epoch_seconds(max))
                .bind(offset(count))
                .fetch_all(&self.pool)
                .await?
            }
            (
                _,
                Span::Page {
                    offset: skip,
                    count,
                },
            ) => {
                let Some((place, name)) = line(at) else {
                    return Ok(Vec::new());
                };
                // A queue and set-aside jobs: the next to run first; in flight: the newest.
                let order = if place == "f" { "DESC" } else { "ASC" };
                sqlx::query_as(&format!(
                    "SELECT payload, NULL::float8 FROM jobqueue_jobs
                     WHERE place = '{place}' AND name = $1
                     ORDER BY pos {order} OFFSET $2 LIMIT $3"
                ))
                .bind(name)
                .bind(offset(skip))
                .bind(offset(count))
                .fetch_all(&self.pool)
                .await?
            }
            (_, Span::Scored { .. }) => Vec::new(),
        };
        Ok(rows
            .into_iter()
            .map(|(payload, at)| Entry {
                payload,
                at: at.map(from_epoch),
            })
            .collect())
    }

    async fn remove(&self, at: Location<'_>, payloads: &[String]) -> Result<usize, BrokerError> {
        let mut tx = self.pool.begin().await?;
        let mut removed = 0;
        for payload in payloads {
            let found = match (at, line(at)) {
                (Location::Set(set), _) => remove_from_set(&mut tx, set, payload).await?,
                (Location::InFlight(_), _) | (_, None) => false,
                (_, Some((place, name))) => {
                    // The entry nearest the back of the line, as `LREM key 1` takes it.
                    let gone = sqlx::query(&format!(
                        "DELETE FROM jobqueue_jobs
                         WHERE place = '{place}' AND name = $1 AND ctid = (
                             SELECT ctid FROM jobqueue_jobs
                             WHERE place = '{place}' AND name = $1 AND payload = $2
                             ORDER BY pos DESC LIMIT 1 FOR UPDATE)"
                    ))
                    .bind(name)
                    .bind(payload)
                    .execute(&mut *tx)
                    .await?;
                    gone.rows_affected() > 0
                }
            };
            removed += usize::from(found);
        }
        if let Location::Parked(key) = at {
            sqlx::query(
                "DELETE FROM jobqueue_limit_keys WHERE key = $1 AND NOT EXISTS (
                     SELECT 1 FROM jobqueue_jobs WHERE place = 'p' AND name = $1)",
            )
            .bind(key)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    async fn limits(&self) -> Result<Vec<LimitEntry>, BrokerError> {
        let rows: Vec<(String, f64, i64, i64)> = sqlx::query_as(
            "SELECT k.key, k.next_look,
                 (SELECT count(*) FROM jobqueue_slots s WHERE s.key = k.key),
                 (SELECT count(*) FROM jobqueue_jobs j WHERE j.place = 'p' AND j.name = k.key)
             FROM jobqueue_limit_keys k ORDER BY k.key COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(key, next_look, held, parked)| LimitEntry {
                key,
                held: usize::try_from(held).unwrap_or_default(),
                parked: usize::try_from(parked).unwrap_or_default(),
                next_look: from_epoch(next_look),
            })
            .collect())
    }

    async fn pause(&self, queue: &str, state: Paused) -> Result<(), BrokerError> {
        let until = match state {
            Paused::No => {
                let mut conn = self.pool.acquire().await?;
                sqlx::query("DELETE FROM jobqueue_paused WHERE queue = $1")
                    .bind(queue)
                    .execute(&mut *conn)
                    .await?;
                notify(&mut conn, true, false).await?;
                self.hub.wake(true, false);
                return Ok(());
            }
            Paused::UntilResumed => f64::INFINITY,
            Paused::Until(at) => epoch_seconds(at),
        };
        sqlx::query(
            "INSERT INTO jobqueue_paused (queue, until) VALUES ($1, $2)
             ON CONFLICT (queue) DO UPDATE SET until = excluded.until",
        )
        .bind(queue)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn paused(&self) -> Result<Vec<(String, Option<SystemTime>)>, BrokerError> {
        let at = now();
        let rows: Vec<(String, f64)> = sqlx::query_as(
            "WITH over AS (DELETE FROM jobqueue_paused WHERE until <= $1)
             SELECT queue, until FROM jobqueue_paused WHERE until > $1 ORDER BY queue COLLATE \"C\"",
        )
        .bind(at)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(queue, until)| (queue, until.is_finite().then(|| from_epoch(until))))
            .collect())
    }
}
