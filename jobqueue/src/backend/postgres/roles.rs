//! Presence, the key/value store, operator views and batches on PostgreSQL.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::rows::{insert, notify, remove_from_set, set_code, unlock_on};
use super::{PgBroker, CANCEL};
use crate::backend::{
    BatchCallbacks, BatchStatus, Batches, Entry, Heartbeat, KeyValue, LimitEntry, Location,
    Orphans, Paused, Presence, ProcessEntry, Published, Push, Running, Span, Stats, Views,
    BATCH_LINGER, BATCH_TTL,
};
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

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
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

/// A location's rows in `jobqueue_jobs`: its place letter and name; `None` for a set.
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
            (_, Some((place, name))) => sqlx::query_scalar(
                "SELECT count(*) FROM jobqueue_jobs WHERE place = $1::text::\"char\" AND name = $2",
            )
            .bind(place)
            .bind(name)
            .fetch_one(&self.pool)
            .await?,
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
                     WHERE place = $1::text::\"char\" AND name = $2
                     ORDER BY pos {order} OFFSET $3 LIMIT $4"
                ))
                .bind(place)
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
            let found = match at {
                Location::Set(set) => remove_from_set(&mut tx, set, payload).await?,
                Location::InFlight(_) => false,
                Location::Queue(name) | Location::Parked(name) => {
                    let place = if matches!(at, Location::Queue(_)) {
                        "q"
                    } else {
                        "p"
                    };
                    // The entry nearest the back of the line, as `LREM key 1` takes it.
                    let gone = sqlx::query(
                        "DELETE FROM jobqueue_jobs
                         WHERE place = $1::text::\"char\" AND name = $2 AND id = (
                             SELECT id FROM jobqueue_jobs
                             WHERE place = $1::text::\"char\" AND name = $2 AND payload = $3
                             ORDER BY pos DESC LIMIT 1 FOR UPDATE)",
                    )
                    .bind(place)
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
