//! Presence on PostgreSQL: heartbeats, signals, recovery's view of the dead, totals,
//! cancel notices and what processes publish.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::rows::count;
use super::{PgBroker, CANCEL};
use crate::backend::{Heartbeat, Orphans, Presence, ProcessEntry, Published, Running, Stats};
use crate::error::BrokerError;
use crate::time::{epoch_seconds, from_epoch, now};

/// `what`'s name in `jobqueue_published`.
fn published_name(what: Published) -> &'static str {
    match what {
        Published::Periodic => "periodic",
        Published::Classes => "classes",
        Published::Relays => "relays",
    }
}

/// A heartbeat's running jobs as stored.
fn running_json(running: &[Running]) -> String {
    Value::Array(
        running
            .iter()
            .map(|r| {
                json!({
                    "slot": r.slot,
                    "queue": r.queue,
                    "payload": r.payload,
                    "since": epoch_seconds(r.since),
                })
            })
            .collect(),
    )
    .to_string()
}

/// The running jobs stored by [`running_json`]; a value that does not read is none.
fn running_of(text: &str) -> Vec<Running> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let field = |item: &Value, name: &str| item[name].as_str().unwrap_or_default().to_owned();
    items
        .iter()
        .map(|item| Running {
            slot: field(item, "slot"),
            queue: field(item, "queue"),
            payload: field(item, "payload"),
            since: from_epoch(item["since"].as_f64().unwrap_or_default()),
        })
        .collect()
}

#[async_trait]
impl Presence for PgBroker {
    async fn heartbeat(&self, beat: &Heartbeat) -> Result<Option<String>, BrokerError> {
        let at = now();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO jobqueue_processes
                 (identity, info, busy, beat, quiet, rss_kb, running, classes, expires)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (identity) DO UPDATE SET info = excluded.info, busy = excluded.busy,
                 beat = excluded.beat, quiet = excluded.quiet, rss_kb = excluded.rss_kb,
                 running = excluded.running, classes = excluded.classes, expires = excluded.expires",
        )
        .bind(&beat.identity)
        .bind(&beat.info)
        .bind(i64::try_from(beat.busy).unwrap_or(i64::MAX))
        .bind(epoch_seconds(beat.beat))
        .bind(beat.quiet)
        .bind(i64::try_from(beat.rss_kb).unwrap_or(i64::MAX))
        .bind(running_json(&beat.running))
        .bind(&beat.classes)
        .bind(at + beat.ttl.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO jobqueue_fetchers (identity) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&beat.identity)
            .execute(&mut *tx)
            .await?;
        let added = [
            ("processed", beat.processed),
            ("failed", beat.failed),
            ("skipped", beat.skipped),
            ("cancelled", beat.cancelled),
        ];
        let (names, values): (Vec<&str>, Vec<i64>) = added
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| (*name, i64::try_from(*n).unwrap_or(i64::MAX)))
            .unzip();
        if !names.is_empty() {
            sqlx::query(
                "INSERT INTO jobqueue_stats (name, value) SELECT * FROM unnest($1::text[], $2::bigint[])
                 ON CONFLICT (name) DO UPDATE SET value = jobqueue_stats.value + excluded.value",
            )
            .bind(&names)
            .bind(&values)
            .execute(&mut *tx)
            .await?;
        }
        let signal: Option<String> = sqlx::query_scalar(
            "DELETE FROM jobqueue_signals WHERE id = (
                 SELECT id FROM jobqueue_signals WHERE identity = $1 ORDER BY id LIMIT 1)
             RETURNING signal",
        )
        .bind(&beat.identity)
        .fetch_optional(&mut *tx)
        .await?;
        // Housekeeping, a bounded piece per beat: expired values and processes.
        sqlx::query(
            "WITH old AS (DELETE FROM jobqueue_kv WHERE key IN (
                 SELECT key FROM jobqueue_kv WHERE expires <= $1 LIMIT 1000))
             DELETE FROM jobqueue_processes WHERE identity IN (
                 SELECT identity FROM jobqueue_processes WHERE expires <= $1 LIMIT 100)",
        )
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(signal)
    }

    async fn forget(&self, identity: &str) -> Result<(), BrokerError> {
        sqlx::query(
            "WITH gone AS (DELETE FROM jobqueue_processes WHERE identity = $1)
             DELETE FROM jobqueue_fetchers WHERE identity = $1 AND NOT EXISTS (
                 SELECT 1 FROM jobqueue_jobs WHERE place = 'f' AND name = $1)",
        )
        .bind(identity)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn orphans(&self, except: &str) -> Result<Vec<Orphans>, BrokerError> {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT f.identity, j.payload FROM jobqueue_fetchers f
             LEFT JOIN jobqueue_jobs j ON j.place = 'f' AND j.name = f.identity
             WHERE f.identity <> $1 AND NOT EXISTS (
                 SELECT 1 FROM jobqueue_processes p WHERE p.identity = f.identity AND p.expires > $2)
             ORDER BY f.identity COLLATE \"C\", j.pos DESC",
        )
        .bind(except)
        .bind(now())
        .fetch_all(&self.pool)
        .await?;
        let mut orphans: Vec<Orphans> = Vec::new();
        for (identity, payload) in rows {
            if orphans.last().is_none_or(|o| o.identity != identity) {
                orphans.push(Orphans {
                    identity,
                    payloads: Vec::new(),
                });
            }
            if let (Some(last), Some(payload)) = (orphans.last_mut(), payload) {
                last.payloads.push(payload);
            }
        }
        Ok(orphans)
    }

    async fn signal(&self, identity: &str, signal: &str) -> Result<(), BrokerError> {
        sqlx::query("INSERT INTO jobqueue_signals (identity, signal) VALUES ($1, $2)")
            .bind(identity)
            .bind(signal)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn processes(&self) -> Result<Vec<ProcessEntry>, BrokerError> {
        type Row = (String, String, i64, f64, bool, i64, String, String);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT identity, info, busy, beat, quiet, rss_kb, running, classes
             FROM jobqueue_processes WHERE expires > $1 ORDER BY identity COLLATE \"C\"",
        )
        .bind(now())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(identity, info, busy, beat, quiet, rss_kb, running, classes)| ProcessEntry {
                    identity,
                    info,
                    busy: usize::try_from(busy).unwrap_or_default(),
                    beat: from_epoch(beat),
                    quiet,
                    rss_kb: u64::try_from(rss_kb).unwrap_or_default(),
                    running: running_of(&running),
                    classes,
                },
            )
            .collect())
    }

    async fn stats(&self) -> Result<Stats, BrokerError> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT name, value FROM jobqueue_stats")
            .fetch_all(&self.pool)
            .await?;
        let mut stats = Stats::default();
        for (name, value) in rows {
            let slot = match name.as_str() {
                "processed" => &mut stats.processed,
                "failed" => &mut stats.failed,
                "skipped" => &mut stats.skipped,
                "cancelled" => &mut stats.cancelled,
                _ => continue,
            };
            *slot = count(value);
        }
        Ok(stats)
    }

    async fn announce_cancel(&self, jid: &str) -> Result<(), BrokerError> {
        self.hub.cancel(jid);
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CANCEL)
            .bind(jid)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn publish(
        &self,
        what: Published,
        entries: &[(String, String)],
    ) -> Result<(), BrokerError> {
        // The last entry of a name wins, as a hash's last field does.
        let entries: BTreeMap<&str, &str> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (names, values): (Vec<&str>, Vec<&str>) = entries.into_iter().unzip();
        sqlx::query(
            "INSERT INTO jobqueue_published (what, name, value)
             SELECT $1, n, v FROM unnest($2::text[], $3::text[]) t(n, v)
             ON CONFLICT (what, name) DO UPDATE SET value = excluded.value",
        )
        .bind(published_name(what))
        .bind(&names)
        .bind(&values)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn published(&self, what: Published) -> Result<Vec<(String, String)>, BrokerError> {
        Ok(sqlx::query_as(
            "SELECT name, value FROM jobqueue_published WHERE what = $1 ORDER BY name COLLATE \"C\"",
        )
        .bind(published_name(what))
        .fetch_all(&self.pool)
        .await?)
    }
}
