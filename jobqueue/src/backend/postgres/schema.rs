//! The crate's migrations: versioned SQL files under `migrations/`, applied in order, each in
//! its own transaction, under an advisory lock so that processes starting together apply
//! each once.

use sqlx::PgPool;

use crate::error::BrokerError;

/// Every migration, by version, oldest first. A migration is never edited once released: a
/// change is a new one.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../migrations/0001_jobs.sql")),
    (2, include_str!("../../../migrations/0002_lines.sql")),
];

/// The advisory lock key migrations run under (`jobqueue` in ASCII).
const LOCK: i64 = 0x6a6f_6271_7565_7565;

/// Applies the migrations the database lacks; returns their versions.
pub(super) async fn migrate(pool: &PgPool) -> Result<Vec<i32>, BrokerError> {
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS jobqueue_migrations (
                 version integer PRIMARY KEY,
                 applied timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&mut *tx)
        .await?;
        let done: Option<i32> =
            sqlx::query_scalar("SELECT version FROM jobqueue_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_none() {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO jobqueue_migrations (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await?;
            applied.push(*version);
        }
        tx.commit().await?;
    }
    Ok(applied)
}
