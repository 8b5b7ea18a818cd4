//! Per-key limits on PostgreSQL: the same statement as the Redis broker's `limits.lua` and
//! the memory broker's ledger, with the rule of room from [`LimitKind::room`]. Slots are
//! rows of `jobqueue_slots` (a running job's `jid` and process, or a start's time); jobs
//! over a limit are set aside as rows of `jobqueue_jobs` under the key, and
//! `jobqueue_limit_keys` says when each key is looked at again.
//!
//! Every change runs in its caller's transaction after taking one advisory lock, so that
//! two processes deciding about the same key do so one after the other.

use sqlx::PgConnection;

use super::rows::{Claimed, RowRef};

use crate::backend::applicable;
use crate::error::BrokerError;
use crate::job::{LimitKind, LimitTag};

/// The advisory lock the limits are changed under (`jqlimits` in ASCII).
const LOCK: i64 = 0x6a71_6c69_6d69_7473;

/// Whether this transaction holds the limits' lock yet, and the keys it found full: with
/// the lock held no slot frees up before the transaction ends, so a key found full stays
/// full for the rest of it.
#[derive(Default)]
pub(super) struct Guard {
    held: bool,
    full: std::collections::HashMap<String, f64>,
}

impl Guard {
    async fn take(&mut self, conn: &mut PgConnection) -> Result<(), BrokerError> {
        if !self.held {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(LOCK)
                .execute(conn)
                .await?;
            self.held = true;
        }
        Ok(())
    }
}

/// What a fetch did with a claimed job's limits.
pub(super) enum Admitted {
    /// It took a slot in each limit (none when it names none).
    Taken,
    /// A limit had no room: the job is set aside under its key.
    SetAside,
    /// Its limits cannot be applied: it took no slot.
    Invalid,
}

/// How many more jobs `tag` lets start at `now`, and when to look again if none; slots of
/// processes whose heartbeat has lapsed (by the clock, whatever `now` is) and starts past
/// the period are dropped first.
async fn room(
    conn: &mut PgConnection,
    tag: &LimitTag,
    now: f64,
    lease: f64,
) -> Result<(usize, f64), BrokerError> {
    let (concurrency, per) = match tag.kind {
        LimitKind::Concurrency(_) => (true, 0.0),
        LimitKind::Rate { per, .. } => (false, per),
    };
    sqlx::query(
        "DELETE FROM jobqueue_slots s WHERE s.key = $1 AND CASE WHEN $3
             THEN NOT EXISTS (SELECT 1 FROM jobqueue_processes p WHERE p.identity = s.process AND p.expires > $5)
             ELSE s.at <= $2 - $4 END",
    )
    .bind(&tag.key)
    .bind(now)
    .bind(concurrency)
    .bind(per)
    .bind(crate::time::now())
    .execute(&mut *conn)
    .await?;
    let (taken, oldest): (i64, Option<f64>) =
        sqlx::query_as("SELECT count(*), min(at) FROM jobqueue_slots WHERE key = $1")
            .bind(&tag.key)
            .fetch_one(conn)
            .await?;
    Ok(tag.kind.room(
        usize::try_from(taken).unwrap_or(usize::MAX),
        oldest,
        now,
        lease,
    ))
}

/// Applies the limits of the claimed `job` for `process`, in the claim's transaction: takes
/// a slot in every limit or in none; sets the job aside under the first without room.
pub(super) async fn admit(
    conn: &mut PgConnection,
    guard: &mut Guard,
    job: &Claimed,
    process: &str,
    now: f64,
    lease: f64,
) -> Result<Admitted, BrokerError> {
    let (tags, jid) = match applicable(&job.payload) {
        Err(()) => return Ok(Admitted::Invalid),
        Ok((tags, _)) if tags.is_empty() => return Ok(Admitted::Taken),
        Ok(found) => found,
    };
    guard.take(conn).await?;
    for tag in &tags {
        let look = match guard.full.get(&tag.key) {
            Some(look) => Some(*look),
            None => match room(conn, tag, now, lease).await? {
                (0, look) => {
                    guard.full.insert(tag.key.clone(), look);
                    Some(look)
                }
                _ => None,
            },
        };
        if let Some(look) = look {
            sqlx::query(
                "WITH parked AS (
                     UPDATE jobqueue_jobs SET place = 'p', name = $2, pos = nextval('jobqueue_pos')
                     WHERE ctid = $1::tid)
                 INSERT INTO jobqueue_limit_keys (key, next_look) VALUES ($2, $3)
                 ON CONFLICT (key) DO UPDATE
                 SET next_look = least(jobqueue_limit_keys.next_look, excluded.next_look)",
            )
            .bind(&job.at.row)
            .bind(&tag.key)
            .bind(look)
            .execute(&mut *conn)
            .await?;
            return Ok(Admitted::SetAside);
        }
    }
    let keys: Vec<&str> = tags.iter().map(|t| t.key.as_str()).collect();
    let holders: Vec<&str> = tags
        .iter()
        .map(|t| if t.is_concurrency() { process } else { "" })
        .collect();
    sqlx::query(
        "INSERT INTO jobqueue_slots (key, jid, process, at)
         SELECT k, $2, p, $3 FROM unnest($1::text[], $4::text[]) t(k, p)",
    )
    .bind(&keys)
    .bind(&jid)
    .bind(now)
    .bind(&holders)
    .execute(conn)
    .await?;
    Ok(Admitted::Taken)
}

/// Frees the concurrency slots the job `payload` held for `process` as it leaves the
/// process's in-flight rows, and brings back one job set aside under each; returns
/// whether one came back.
pub(super) async fn release(
    conn: &mut PgConnection,
    guard: &mut Guard,
    payload: &str,
    process: &str,
) -> Result<bool, BrokerError> {
    let (tags, jid) = applicable(payload).unwrap_or_default();
    let keys: Vec<String> = tags
        .into_iter()
        .filter(LimitTag::is_concurrency)
        .map(|t| t.key)
        .collect();
    if keys.is_empty() {
        return Ok(false);
    }
    guard.take(conn).await?;
    sqlx::query("DELETE FROM jobqueue_slots WHERE key = ANY($1) AND jid = $2 AND process = $3")
        .bind(&keys)
        .bind(&jid)
        .bind(process)
        .execute(&mut *conn)
        .await?;
    let mut back = Vec::new();
    for key in &keys {
        back.extend(unpark(conn, key, 1).await?);
    }
    bring_back(conn, &back).await?;
    Ok(!back.is_empty())
}

/// The rows (with `key`) of up to `n` of the oldest jobs set aside under `key`, oldest
/// first; forgets the key when none are left.
async fn unpark(
    conn: &mut PgConnection,
    key: &str,
    n: i64,
) -> Result<Vec<(RowRef, String)>, BrokerError> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, ctid::text FROM jobqueue_jobs WHERE place = 'p' AND name = $1
         ORDER BY pos LIMIT $2",
    )
    .bind(key)
    .bind(n)
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    sqlx::query(
        "DELETE FROM jobqueue_limit_keys WHERE key = $1 AND NOT EXISTS (
             SELECT 1 FROM jobqueue_jobs WHERE place = 'p' AND name = $1 AND NOT (id = ANY($2)))",
    )
    .bind(key)
    .bind(&ids)
    .execute(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, row)| (RowRef { id, row }, key.to_owned()))
        .collect())
}

/// Puts set-aside jobs (by row and key) back at the front of their queues, the first of
/// `rows` first in line.
async fn bring_back(conn: &mut PgConnection, rows: &[(RowRef, String)]) -> Result<(), BrokerError> {
    for (at, key) in rows.iter().rev() {
        sqlx::query(
            "UPDATE jobqueue_jobs SET place = 'q', name = queue, pos = -nextval('jobqueue_pos')
             WHERE ctid = $1::tid AND id = $2 AND place = 'p' AND name = $3",
        )
        .bind(&at.row)
        .bind(at.id)
        .bind(key)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Brings back jobs from keys due by `now`, as many as each has room for, oldest first;
/// keys without room are looked at again when they may have some. Returns how many came
/// back.
pub(super) async fn unpark_due(
    conn: &mut PgConnection,
    now: f64,
    lease: f64,
) -> Result<usize, BrokerError> {
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT key FROM jobqueue_limit_keys WHERE next_look <= $1 ORDER BY next_look",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    Guard::default().take(conn).await?;
    let mut back = Vec::new();
    for key in due {
        let oldest: Option<String> = sqlx::query_scalar(
            "SELECT payload FROM jobqueue_jobs WHERE place = 'p' AND name = $1 ORDER BY pos LIMIT 1",
        )
        .bind(&key)
        .fetch_optional(&mut *conn)
        .await?;
        let tag = oldest.and_then(|p| {
            applicable(&p)
                .unwrap_or_default()
                .0
                .into_iter()
                .find(|t| t.key == key)
        });
        let Some(tag) = tag else {
            back.extend(unpark(conn, &key, i64::MAX).await?);
            continue;
        };
        let (free, mut at) = room(conn, &tag, now, lease).await?;
        if free > 0 {
            back.extend(unpark(conn, &key, i64::try_from(free).unwrap_or(i64::MAX)).await?);
            at = now
                + match tag.kind {
                    LimitKind::Rate { per, .. } => per,
                    LimitKind::Concurrency(_) => lease,
                };
        }
        sqlx::query("UPDATE jobqueue_limit_keys SET next_look = $2 WHERE key = $1")
            .bind(&key)
            .bind(at)
            .execute(&mut *conn)
            .await?;
    }
    bring_back(conn, &back).await?;
    Ok(back.len())
}
