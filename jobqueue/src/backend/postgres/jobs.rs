//! The hot path on PostgreSQL ([`JobStore`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::{PgConnection, Row};

use super::rows::{
    insert, notify, place, remove_from_set, set_code, trim_dead, unlock_on, Claimed, RowRef,
};
use super::{limits, PgBroker};
use crate::backend::{
    DirectMoves, Due, Fetch, Fetched, JobStore, LimitsRead, MarkerRead, Move, Placement, Push,
    SortedSet, Source, Wakeups,
};
use crate::envelope::header;
use crate::error::BrokerError;
use crate::time::{epoch_seconds, from_epoch, now};

/// Whether the moves are plain acknowledgements: jobs leaving an in-flight list for good,
/// with nothing pushed or unlocked, no limits to free, no payload twice. Those take one
/// statement together.
fn plain_acks(from: Source<'_>, moves: &[Move]) -> bool {
    let mut seen = HashSet::with_capacity(moves.len());
    matches!(from, Source::InFlight(_))
        && moves.iter().all(|m| {
            matches!(m.to, crate::backend::Settle::Discard)
                && m.then.is_empty()
                && m.unlock.is_none()
                && header::read(&m.payload).limits.is_none()
                && seen.insert(m.payload.as_str())
        })
}

#[async_trait]
impl JobStore for PgBroker {
    async fn push(&self, jobs: &[Push]) -> Result<(), BrokerError> {
        let mut conn = self.pool.acquire().await?;
        let (queued, scheduled) = insert(&mut conn, jobs).await?;
        // The jobs are in: a notice that fails is made up for by the watch, and must not
        // make the caller push them again.
        if let Err(e) = notify(&mut conn, queued, scheduled).await {
            tracing::debug!("postgres: notice of a push: {e}");
        }
        self.hub.wake(queued, scheduled);
        Ok(())
    }

    async fn push_once(
        &self,
        jobs: &[(String, Push)],
        ttl: Duration,
    ) -> Result<Vec<bool>, BrokerError> {
        let at = now();
        let mut tx = self.pool.begin().await?;
        let markers: Vec<&str> = jobs.iter().map(|(m, _)| m.as_str()).collect();
        // The markers this call sets: those absent or expired.
        let fresh: Vec<String> = sqlx::query_scalar(
            "INSERT INTO jobqueue_kv (key, value, expires) SELECT DISTINCT k, '1', $2 FROM unnest($1::text[]) k
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires
             WHERE jobqueue_kv.expires <= $3
             RETURNING key",
        )
        .bind(&markers)
        .bind(at + ttl.as_secs_f64())
        .bind(at)
        .fetch_all(&mut *tx)
        .await?;
        let mut fresh: HashSet<String> = fresh.into_iter().collect();
        let pushed: Vec<bool> = jobs.iter().map(|(m, _)| fresh.remove(m)).collect();
        let due: Vec<Push> = jobs
            .iter()
            .zip(&pushed)
            .filter(|(_, p)| **p)
            .map(|((_, job), _)| job.clone())
            .collect();
        let (queued, scheduled) = insert(&mut tx, &due).await?;
        notify(&mut tx, queued, scheduled).await?;
        tx.commit().await?;
        self.hub.wake(queued, scheduled);
        Ok(pushed)
    }

    async fn fetch(&self, process: &str, request: Fetch<'_>) -> Result<Vec<Fetched>, BrokerError> {
        let at = now();
        let Some(lease) = request.limits else {
            // Without limits the claim is one statement on its own.
            let mut conn = self.pool.acquire().await?;
            let claimed = claim(&mut conn, process, &request, at).await?;
            self.remember(&claimed);
            let mut taken: Vec<Fetched> = claimed
                .into_iter()
                .map(|job| Fetched {
                    queue: job.queue,
                    payload: job.payload,
                    marker: None,
                    limits: LimitsRead::NotRead,
                })
                .collect();
            // The claim has committed: a failed reading leaves the markers unread (the
            // worker then asks), rather than failing a fetch whose jobs are taken.
            if request.markers {
                if let Err(e) = read_markers(&mut conn, &mut taken, at).await {
                    tracing::debug!("postgres: reading collapse markers: {e}");
                }
            }
            return Ok(taken);
        };
        // With limits, a job's claim and its slots (or its setting aside) are one step.
        // Jobs set aside do not count: the fetch claims again, past them, until it has
        // `max` jobs or the queues are empty, so one busy key does not hold back the jobs
        // behind it.
        let mut tx = self.pool.begin().await?;
        let mut taken = Vec::with_capacity(request.max);
        let mut set_aside = false;
        let mut guard = limits::Guard::default();
        let lease = lease.as_secs_f64();
        loop {
            let wanted = request.max - taken.len();
            let claimed = claim(
                &mut tx,
                process,
                &Fetch {
                    max: wanted,
                    ..request
                },
                at,
            )
            .await?;
            let exhausted = claimed.len() < wanted;
            for job in claimed {
                let admitted = limits::admit(&mut tx, &mut guard, &job, process, at, lease).await?;
                let read = match admitted {
                    limits::Admitted::SetAside => {
                        set_aside = true;
                        continue;
                    }
                    limits::Admitted::Taken => LimitsRead::Applied,
                    limits::Admitted::Invalid => LimitsRead::Invalid,
                };
                taken.push(Fetched {
                    queue: job.queue,
                    payload: job.payload,
                    marker: None,
                    limits: read,
                });
            }
            if exhausted || taken.len() >= request.max {
                break;
            }
        }
        if set_aside {
            notify(&mut tx, false, true).await?;
        }
        if request.markers {
            read_markers(&mut tx, &mut taken, at).await?;
        }
        tx.commit().await?;
        // The schedulers look at set-aside jobs again when their keys have room.
        self.hub.wake(false, set_aside);
        Ok(taken)
    }

    async fn settle(&self, from: Source<'_>, moves: &[Move]) -> Result<Vec<bool>, BrokerError> {
        if moves.is_empty() {
            return Ok(Vec::new());
        }
        if let (Source::InFlight(process), true) = (from, plain_acks(from, moves)) {
            return self.acknowledge(process, moves).await;
        }
        if let Source::InFlight(_) = from {
            self.forget_claims(moves.iter().map(|m| m.payload.as_str()));
        }
        let (mut queued, mut scheduled) = (false, false);
        let mut moved = Vec::with_capacity(moves.len());
        let mut tx = self.pool.begin().await?;
        let mut guard = limits::Guard::default();
        let at = now();
        let mut died = false;
        for m in moves {
            let removed = match from {
                Source::InFlight(process) => {
                    let gone: Option<i64> = sqlx::query_scalar(
                        "DELETE FROM jobqueue_jobs WHERE place = 'f' AND name = $1 AND ctid = (
                             SELECT ctid FROM jobqueue_jobs WHERE place = 'f' AND name = $1 AND payload = $2
                             ORDER BY pos LIMIT 1 FOR UPDATE)
                         RETURNING id",
                    )
                    .bind(process)
                    .bind(&m.payload)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if gone.is_some() {
                        queued |= limits::release(&mut tx, &mut guard, &m.payload, process).await?;
                    }
                    gone.is_some()
                }
                Source::Set(set) => remove_from_set(&mut tx, set, &m.payload).await?,
            };
            moved.push(removed);
            if removed {
                let placement = m.to.placement(at);
                died |= matches!(
                    placement,
                    Placement::Set {
                        set: SortedSet::Dead,
                        ..
                    }
                );
                let (q, s) = place(&mut tx, placement).await?;
                let (tq, ts) = insert(&mut tx, &m.then).await?;
                queued |= q || tq;
                scheduled |= s || ts;
            }
            if let Some((key, owner)) = &m.unlock {
                unlock_on(&mut tx, key, owner).await?;
            }
        }
        if died {
            trim_dead(&mut tx, at).await?;
        }
        notify(&mut tx, queued, scheduled).await?;
        tx.commit().await?;
        self.hub.wake(queued, scheduled);
        Ok(moved)
    }

    async fn take_due(
        &self,
        process: &str,
        set: SortedSet,
        now: SystemTime,
        limit: usize,
        // The process's own move costs a statement per job here, as a direct move would.
        _direct: Option<DirectMoves<'_>>,
    ) -> Result<Due, BrokerError> {
        let rows: Vec<(f64, String)> = sqlx::query_as(
            "WITH due AS (
                 SELECT id FROM jobqueue_sets WHERE set = $1::text::\"char\" AND score <= $2
                 ORDER BY score, payload COLLATE \"C\" LIMIT $3 FOR UPDATE SKIP LOCKED),
             gone AS (
                 DELETE FROM jobqueue_sets s USING due WHERE s.id = due.id
                 RETURNING s.score, s.payload),
             listed AS (
                 INSERT INTO jobqueue_fetchers (identity) SELECT $4 WHERE EXISTS (SELECT 1 FROM gone)
                 ON CONFLICT DO NOTHING),
             held AS (
                 INSERT INTO jobqueue_jobs (place, name, queue, pos, payload)
                 SELECT 'f', $4, '', nextval('jobqueue_flight'), g.payload
                 FROM (SELECT * FROM gone ORDER BY score, payload COLLATE \"C\") g)
             SELECT score, payload FROM gone ORDER BY score, payload COLLATE \"C\"",
        )
        .bind(set_code(set))
        .bind(epoch_seconds(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(process)
        .fetch_all(&self.pool)
        .await?;
        Ok(Due {
            taken: rows
                .into_iter()
                .map(|(at, payload)| (from_epoch(at), payload))
                .collect(),
            ..Due::default()
        })
    }

    async fn next_due(&self) -> Result<Option<SystemTime>, BrokerError> {
        let next: Option<f64> = sqlx::query_scalar(
            "SELECT least(
                 (SELECT min(score) FROM jobqueue_sets WHERE set = 's'),
                 (SELECT min(score) FROM jobqueue_sets WHERE set = 'r'),
                 (SELECT min(next_look) FROM jobqueue_limit_keys))",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next.map(from_epoch))
    }

    async fn unpark_due(&self, now: SystemTime, lease: Duration) -> Result<usize, BrokerError> {
        let mut tx = self.pool.begin().await?;
        let moved = limits::unpark_due(&mut tx, epoch_seconds(now), lease.as_secs_f64()).await?;
        notify(&mut tx, moved > 0, false).await?;
        tx.commit().await?;
        self.hub.wake(moved > 0, false);
        Ok(moved)
    }

    fn subscribe(&self) -> Arc<Wakeups> {
        self.hub.subscribe()
    }

    fn transactional(&self) -> bool {
        true
    }
}

/// Claims up to `request.max` jobs from its queues, in order, skipping paused queues, into
/// `process`'s in-flight rows, in one statement; returns them, each queue's oldest first.
async fn claim(
    conn: &mut PgConnection,
    process: &str,
    request: &Fetch<'_>,
    at: f64,
) -> Result<Vec<Claimed>, BrokerError> {
    // The statement is the function `jobqueue_claim` (migrations/0002_lines.sql).
    let rows = sqlx::query(
        "SELECT id, place_at AS row, queue, payload, ord, pos FROM jobqueue_claim($1, $2, $3, $4)",
    )
    .bind(request.queues)
    .bind(i64::try_from(request.max).unwrap_or(i64::MAX))
    .bind(process)
    .bind(at)
    .fetch_all(conn)
    .await?;
    let mut claimed: Vec<(i64, i64, Claimed)> = rows
        .into_iter()
        .map(|r| {
            Ok((
                r.try_get("ord")?,
                r.try_get("pos")?,
                Claimed {
                    at: RowRef {
                        id: r.try_get("id")?,
                        row: r.try_get("row")?,
                    },
                    queue: r.try_get("queue")?,
                    payload: r.try_get("payload")?,
                },
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?;
    claimed.sort_unstable_by_key(|c| (c.0, c.1));
    Ok(claimed.into_iter().map(|(_, _, job)| job).collect())
}

impl PgBroker {
    /// Remembers the rows of jobs claimed, for their acknowledgements.
    fn remember(&self, claimed: &[Claimed]) {
        let mut rows = crate::backend::lock(&self.claimed);
        for job in claimed {
            rows.entry(job.payload.clone())
                .or_default()
                .push(job.at.clone());
        }
    }

    /// Forgets the claims of `payloads` (the oldest claim of each); returns their rows.
    fn forget_claims<'a>(&self, payloads: impl Iterator<Item = &'a str>) -> Vec<Option<RowRef>> {
        let mut rows = crate::backend::lock(&self.claimed);
        payloads
            .map(|payload| {
                let held = rows.get_mut(payload)?;
                let row = (!held.is_empty()).then(|| held.remove(0));
                if held.is_empty() {
                    rows.remove(payload);
                }
                row
            })
            .collect()
    }

    /// Deletes plain acknowledgements ([`plain_acks`]): by the rows this broker claimed them
    /// in, in one statement, and the others by their payloads, in one more. Returns, per
    /// move, whether the job was still in `process`'s in-flight rows: a row recovered by
    /// another process has left them, and is not touched.
    async fn acknowledge(&self, process: &str, moves: &[Move]) -> Result<Vec<bool>, BrokerError> {
        let held = self.forget_claims(moves.iter().map(|m| m.payload.as_str()));
        let (ids, rows): (Vec<i64>, Vec<&str>) = held
            .iter()
            .flatten()
            .map(|at| (at.id, at.row.as_str()))
            .unzip();
        // Whatever row a place holds now, it goes only if it is one of these jobs, still
        // held by this process. The place letter is compared as text on purpose: as a
        // letter it is the in-flight index's condition, and the planner may walk that
        // index, over every row the process held since the last vacuum, where the places
        // lead straight to the rows.
        let gone: HashSet<i64> = if ids.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_scalar(
                "DELETE FROM jobqueue_jobs
                 WHERE ctid = ANY($1::text[]::tid[]) AND id = ANY($2)
                     AND place::text = 'f' AND name = $3
                 RETURNING id",
            )
            .bind(&rows)
            .bind(&ids)
            .bind(process)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect()
        };
        let mut moved: Vec<bool> = held
            .iter()
            .map(|at| at.as_ref().is_some_and(|at| gone.contains(&at.id)))
            .collect();
        // Jobs claimed elsewhere (recovered from another process, or before a restart), or
        // whose remembered row was not this process's: by payload.
        let rest: Vec<usize> = (0..moves.len()).filter(|i| !moved[*i]).collect();
        if !rest.is_empty() {
            let payloads: Vec<&str> = rest.iter().map(|i| moves[*i].payload.as_str()).collect();
            let found = acknowledge_by_payload(&self.pool, process, &payloads).await?;
            for (i, found) in rest.into_iter().zip(found) {
                moved[i] = found;
            }
        }
        Ok(moved)
    }
}

/// Deletes in-flight rows of `process` by payload, in one statement; returns, per payload,
/// whether one was there.
async fn acknowledge_by_payload(
    pool: &sqlx::PgPool,
    process: &str,
    payloads: &[&str],
) -> Result<Vec<bool>, BrokerError> {
    let gone: Vec<i64> = sqlx::query_scalar(
        "WITH hit AS (
             SELECT DISTINCT ON (u.i) u.i, j.ctid AS row
             FROM unnest($2::text[]) WITH ORDINALITY u(p, i)
             JOIN jobqueue_jobs j ON j.place = 'f' AND j.name = $1 AND j.payload = u.p
             ORDER BY u.i, j.pos)
         DELETE FROM jobqueue_jobs j USING hit WHERE j.ctid = hit.row RETURNING hit.i",
    )
    .bind(process)
    .bind(payloads)
    .fetch_all(pool)
    .await?;
    let mut moved = vec![false; payloads.len()];
    for i in gone {
        if let Some(m) = usize::try_from(i - 1).ok().and_then(|i| moved.get_mut(i)) {
            *m = true;
        }
    }
    Ok(moved)
}

/// Reads the collapse marker of each taken job whose header names one, in one statement.
async fn read_markers(
    conn: &mut PgConnection,
    taken: &mut [Fetched],
    at: f64,
) -> Result<(), BrokerError> {
    let keys: Vec<String> = taken
        .iter()
        .filter_map(|job| header::read(&job.payload).collapse.map(|k| k.into_owned()))
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    let values: Vec<(String, String)> =
        sqlx::query_as("SELECT key, value FROM jobqueue_kv WHERE key = ANY($1) AND expires > $2")
            .bind(&keys)
            .bind(at)
            .fetch_all(conn)
            .await?;
    for job in taken {
        job.marker = MarkerRead::of(&job.payload, |key| {
            values
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        });
    }
    Ok(())
}
