//! Statements on rows that several roles share: pushes and placements, the notice of a
//! change, the sets' letters, removals, lock releases, and what a claim returns.

use sqlx::PgConnection;

use super::WAKE;
use crate::backend::{dead_trim, Placement, Push, SortedSet};
use crate::error::BrokerError;
use crate::time::{epoch_seconds, now};

/// A sorted set's letter in `jobqueue_sets.set`.
pub(super) fn set_code(set: SortedSet) -> &'static str {
    match set {
        SortedSet::Schedule => "s",
        SortedSet::Retry => "r",
        SortedSet::Dead => "d",
    }
}

/// Inserts `jobs` on `conn`: queue pushes at the back of their queues (registering each
/// queue), the others into the schedule set. Returns whether any went to a queue and
/// whether any was scheduled. One statement.
pub(super) async fn insert(
    conn: &mut PgConnection,
    jobs: &[Push],
) -> Result<(bool, bool), BrokerError> {
    let (mut queues, mut payloads) = (Vec::new(), Vec::new());
    let (mut scores, mut scheduled) = (Vec::new(), Vec::<&str>::new());
    for job in jobs {
        match job.at {
            None => {
                queues.push(job.queue.as_str());
                payloads.push(job.payload.as_str());
            }
            Some(at) => {
                // A member is in a set once: the last push of the same payload wins.
                if let Some(i) = scheduled.iter().position(|p| *p == job.payload) {
                    scheduled.remove(i);
                    scores.remove(i);
                }
                scores.push(epoch_seconds(at));
                scheduled.push(job.payload.as_str());
            }
        }
    }
    let any = (!queues.is_empty(), !scheduled.is_empty());
    if !any.0 && !any.1 {
        return Ok(any);
    }
    sqlx::query(
        // A queue already listed is not written again: in an application's transaction the
        // write would hold the queue's entry until it commits.
        "WITH known AS (
             INSERT INTO jobqueue_queues (name) SELECT DISTINCT n FROM unnest($1::text[]) n
             WHERE NOT EXISTS (SELECT 1 FROM jobqueue_queues q WHERE q.name = n)
             ON CONFLICT DO NOTHING),
         later AS (
             INSERT INTO jobqueue_sets (set, score, digest, payload)
             SELECT 's', sc, sha256(convert_to(p, 'UTF8')), p FROM unnest($3::float8[], $4::text[]) t(sc, p)
             ON CONFLICT (set, digest) DO UPDATE SET score = excluded.score)
         INSERT INTO jobqueue_jobs (place, name, queue, pos, payload)
         SELECT 'q', q, q, nextval('jobqueue_pos'), p
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY t(q, p, i) ORDER BY i",
    )
    .bind(&queues)
    .bind(&payloads)
    .bind(&scores)
    .bind(&scheduled)
    .execute(conn)
    .await?;
    Ok(any)
}

/// Sends the notice of a change: `q` for a queue, `s` for the sets.
pub(super) async fn notify(
    conn: &mut PgConnection,
    queued: bool,
    scheduled: bool,
) -> Result<(), BrokerError> {
    let what = match (queued, scheduled) {
        (true, true) => "qs",
        (true, false) => "q",
        (false, true) => "s",
        (false, false) => return Ok(()),
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(WAKE)
        .bind(what)
        .execute(conn)
        .await?;
    Ok(())
}

/// Carries out a settle's placement on `conn`; returns whether it woke fetchers and the
/// scheduler.
pub(super) async fn place(
    conn: &mut PgConnection,
    placement: Placement<'_>,
) -> Result<(bool, bool), BrokerError> {
    match placement {
        Placement::Queue {
            queue,
            payload,
            front,
        } => {
            sqlx::query(
                "WITH known AS (INSERT INTO jobqueue_queues (name) VALUES ($1) ON CONFLICT DO NOTHING)
                 INSERT INTO jobqueue_jobs (place, name, queue, pos, payload)
                 VALUES ('q', $1, $1, CASE WHEN $3 THEN -nextval('jobqueue_pos') ELSE nextval('jobqueue_pos') END, $2)",
            )
            .bind(queue)
            .bind(payload)
            .bind(front)
            .execute(conn)
            .await?;
            Ok((true, false))
        }
        Placement::Set {
            set,
            payload,
            score,
        } => {
            sqlx::query(
                "INSERT INTO jobqueue_sets (set, score, digest, payload)
                 VALUES ($1::text::\"char\", $2, sha256(convert_to($3, 'UTF8')), $3)
                 ON CONFLICT (set, digest) DO UPDATE SET score = excluded.score",
            )
            .bind(set_code(set))
            .bind(score)
            .bind(payload)
            .execute(&mut *conn)
            .await?;
            // The dead set is trimmed once per settle ([`trim_dead`]); the others wake the
            // scheduler.
            Ok((false, set != SortedSet::Dead))
        }
        Placement::Nowhere => Ok((false, false)),
    }
}

/// Trims the dead set after additions at `at`: entries older than the timeout go, then the
/// oldest beyond the maximum.
pub(super) async fn trim_dead(conn: &mut PgConnection, at: f64) -> Result<(), BrokerError> {
    let (before, keep) = dead_trim(at);
    sqlx::query(
        "DELETE FROM jobqueue_sets WHERE set = 'd' AND (score < $1 OR id IN (
             SELECT id FROM jobqueue_sets WHERE set = 'd' ORDER BY score DESC, id DESC OFFSET $2))",
    )
    .bind(before)
    .bind(i64::try_from(keep).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// A job a fetch claimed.
pub(super) struct Claimed {
    /// Its row.
    pub(super) at: RowRef,
    /// The queue it came from.
    pub(super) queue: String,
    /// Its payload.
    pub(super) payload: String,
}

/// A row of `jobqueue_jobs`: where it is (`ctid`, as text) and its `id`. The place holds
/// until the row changes, or until `VACUUM FULL` rewrites the table; the id checks that it
/// still holds the row, so a statement by `RowRef` finds nothing rather than another row.
#[derive(Clone, Debug)]
pub(super) struct RowRef {
    pub(super) id: i64,
    pub(super) row: String,
}

/// Removes `payload` from `set`; returns whether it was there.
pub(super) async fn remove_from_set(
    conn: &mut PgConnection,
    set: SortedSet,
    payload: &str,
) -> Result<bool, BrokerError> {
    let gone = sqlx::query(
        "DELETE FROM jobqueue_sets WHERE set = $1::text::\"char\"
         AND digest = sha256(convert_to($2, 'UTF8')) AND payload = $2",
    )
    .bind(set_code(set))
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(gone.rows_affected() > 0)
}

/// Deletes `key` on `conn` if `owner` holds it; returns whether it did.
pub(super) async fn unlock_on(
    conn: &mut PgConnection,
    key: &str,
    owner: &str,
) -> Result<bool, BrokerError> {
    let gone =
        sqlx::query("DELETE FROM jobqueue_kv WHERE key = $1 AND value = $2 AND expires > $3")
            .bind(key)
            .bind(owner)
            .bind(now())
            .execute(conn)
            .await?;
    Ok(gone.rows_affected() > 0)
}

/// A count read from PostgreSQL, as a total (a negative one, never seen, as none).
pub(super) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}
