//! The PostgreSQL broker: Sidekiq's structures as rows of jobqueue's own tables (see
//! `migrations/`), for services whose jobs should live beside their data and be enqueued in
//! the same transaction as the rows they belong to ([`crate::Client::enqueue_tx`]).
//!
//! - A fetch claims a batch of jobs in one statement (`FOR UPDATE SKIP LOCKED`), moving them
//!   into the process's in-flight rows; an acknowledgement deletes them only from there,
//!   so one that comes after recovery took the job back finds nothing and changes nothing.
//!   Finished jobs are deleted: the jobs table holds live jobs only.
//! - Wake-ups come by `LISTEN/NOTIFY`, each `NOTIFY` sent by the broker's own statement,
//!   never inside an application's transaction; and, for jobs committed by such a
//!   transaction or through a pooler that drops `LISTEN`, by a look at the tables'
//!   sequences every [`PgConfig::watch_interval`].
//!
//! The roles are implemented in `jobs` (the hot path, with per-key limits in `limits`),
//! `presence`, `kv`, `views` and `batches`, over the statements `rows` shares between
//! them; `schema` applies migrations; `outbox` relays jobs enqueued in a
//! transaction into another broker.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool};

use super::{Broker, Push, WakeupHub};

pub use self::outbox::{Relay, RelayConfig};
use crate::error::{redact_url, BrokerError};
use crate::time::epoch_seconds;

mod batches;
mod jobs;
mod kv;
mod limits;
mod outbox;
mod presence;
mod rows;
mod schema;
mod views;

/// The channel pushes and resumes are announced on: `q` for a queue, `s` for the sets.
const WAKE: &str = "jobqueue_wake";
/// How long after a sequence changed the watch keeps waking workers.
const LINGER: Duration = Duration::from_secs(1);

/// The channel cancelled jobs' ids are announced on.
const CANCEL: &str = "jobqueue_cancel";

/// How to reach PostgreSQL. Its `Debug` output hides the URL's password.
#[derive(Clone)]
#[non_exhaustive]
pub struct PgConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// The most connections the broker's pool opens.
    pub max_connections: u32,
    /// How often the broker looks for jobs committed without a notice (enqueued in an
    /// application's transaction, or through a pooler in transaction mode): one cheap
    /// statement per interval.
    pub watch_interval: Duration,
    /// Apply the crate's migrations on connect ([`PgBroker::migrate`]).
    pub migrate: bool,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("watch_interval", &self.watch_interval)
            .field("migrate", &self.migrate)
            .finish()
    }
}

impl PgConfig {
    /// The defaults for `url`: 10 connections, a look every 100 ms, no migrations.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 10,
            watch_interval: Duration::from_millis(100),
            migrate: false,
        }
    }
}

/// A broker on PostgreSQL (13 or later). Cheap to clone: clones share the pool.
///
/// ```no_run
/// # async fn example() -> Result<(), jobqueue::Error> {
/// use jobqueue::backend::postgres::{PgBroker, PgConfig};
///
/// let mut config = PgConfig::new("postgres://app@localhost/app");
/// config.migrate = true;
/// let broker = PgBroker::connect_with(config).await?;
/// let client = jobqueue::Client::new(broker);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgBroker {
    pool: PgPool,
    hub: Arc<WakeupHub>,
    /// The rows of the jobs this broker claimed, by payload, so that an acknowledgement
    /// deletes by row; one it does not find here is deleted by its payload.
    claimed: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<rows::RowRef>>>>,
}

impl PgBroker {
    /// Connects to `url` with the defaults of [`PgConfig::new`]; the tables must exist
    /// ([`PgBroker::migrate`]).
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with(PgConfig::new(url)).await
    }

    /// Connects as `config` says.
    pub async fn connect_with(config: PgConfig) -> Result<Self, BrokerError> {
        let options: PgConnectOptions =
            config
                .url
                .parse()
                .map_err(|e: sqlx::Error| BrokerError::InvalidPgUrl {
                    url: redact_url(&config.url),
                    reason: redact_url(&e.to_string()),
                })?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(2))
            .connect_with(options)
            .await?;
        let broker = Self::with_pool(pool, config.watch_interval);
        if config.migrate {
            broker.migrate().await?;
        }
        Ok(broker)
    }

    /// A broker on the application's own pool, looking for jobs committed without a notice
    /// every `watch_interval`. The broker keeps one of the pool's connections for `LISTEN`,
    /// so the pool needs at least two. Called outside a Tokio runtime, it starts no
    /// listener: its workers then find jobs by their polls alone.
    pub fn with_pool(pool: PgPool, watch_interval: Duration) -> Self {
        let hub = Arc::new(WakeupHub::default());
        if pool.options().get_max_connections() < 2 {
            tracing::warn!("postgres: a pool of one connection leaves none for work once the broker listens: give it at least two");
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(listen(
                    pool.clone(),
                    Arc::downgrade(&hub),
                    watch_interval.max(Duration::from_millis(1)),
                ));
            }
            Err(_) => tracing::warn!("postgres: no Tokio runtime: the broker does not listen"),
        }
        Self {
            pool,
            hub,
            claimed: Arc::default(),
        }
    }

    /// Applies the migrations shipped with this crate that the database lacks, in order,
    /// each in a transaction, one process at a time; a second run does nothing. Returns
    /// the versions applied.
    pub async fn migrate(&self) -> Result<Vec<i32>, BrokerError> {
        schema::migrate(&self.pool).await
    }

    /// The pool, for the application's own statements and transactions.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Applies the migrations the database at `url` lacks (see [`PgBroker::migrate`]); for the
/// worker runner's `--migrate`.
#[cfg(feature = "runner")]
pub(crate) async fn migrate_at(url: &str) -> Result<Vec<i32>, BrokerError> {
    let mut config = PgConfig::new(url);
    config.max_connections = 2;
    let broker = PgBroker::connect_with(config).await?;
    broker.migrate().await
}

impl From<PgBroker> for Arc<dyn Broker> {
    fn from(broker: PgBroker) -> Self {
        Arc::new(broker)
    }
}

/// Writes `jobs` (from [`crate::Client::enqueue_tx`]) on `conn`, inside the caller's
/// transaction: into the broker's tables when `direct`, else into the outbox, for a relay
/// to move into the broker once the transaction commits. Sends no notice: a `NOTIFY` in
/// the caller's transaction would serialize every commit of the database behind a lock.
pub(crate) async fn push_in(
    conn: &mut PgConnection,
    jobs: &[Push],
    direct: bool,
) -> Result<(), BrokerError> {
    if direct {
        rows::insert(conn, jobs).await?;
        return Ok(());
    }
    let (queues, payloads, ats): (Vec<&str>, Vec<&str>, Vec<Option<f64>>) = jobs
        .iter()
        .map(|j| {
            (
                j.queue.as_str(),
                j.payload.as_str(),
                j.at.map(epoch_seconds),
            )
        })
        .fold((vec![], vec![], vec![]), |mut acc, (q, p, a)| {
            acc.0.push(q);
            acc.1.push(p);
            acc.2.push(a);
            acc
        });
    sqlx::query(
        "INSERT INTO jobqueue_outbox (queue, payload, at, created)
         SELECT q, p, a, extract(epoch FROM clock_timestamp())
         FROM unnest($1::text[], $2::text[], $3::float8[]) WITH ORDINALITY t(q, p, a, i) ORDER BY i",
    )
    .bind(queues)
    .bind(payloads)
    .bind(ats)
    .execute(conn)
    .await?;
    Ok(())
}

/// Wakes this process's workers: on each notice, and when a look at the tables' sequences
/// finds rows inserted without one. After a change it wakes them at every look for a second
/// more, for a transaction that had inserted but not yet committed; one that commits later
/// is found by the workers' own polls. Ends when the broker is dropped.
async fn listen(pool: PgPool, hub: Weak<WakeupHub>, every: Duration) {
    let mut listener: Option<PgListener> = None;
    let mut seen: Option<(i64, i64)> = None;
    // When each sequence last changed.
    let mut changed_at: (Option<Instant>, Option<Instant>) = (None, None);
    let mut delays = super::backoff();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(wakeups) = hub.upgrade() else { return };
        if listener.is_none() {
            match PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen_all([WAKE, CANCEL]).await {
                    Ok(()) => {
                        listener = Some(l);
                        delays = super::backoff();
                        // Notices sent while no one listened are lost: look once.
                        wakeups.wake(true, true);
                    }
                    Err(e) => tracing::debug!("postgres: LISTEN failed: {e}"),
                },
                Err(e) => tracing::debug!("postgres: no connection to listen on: {e}"),
            }
        }
        drop(wakeups);
        let notice = async {
            match listener.as_mut() {
                Some(l) => Some(l.try_recv().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = notice => {
                let Some(wakeups) = hub.upgrade() else { return };
                match got {
                    Some(Ok(Some(n))) if n.channel() == CANCEL => wakeups.cancel(n.payload()),
                    Some(Ok(Some(n))) => {
                        let what = n.payload();
                        wakeups.wake(what.contains('q'), what.contains('s'));
                    }
                    // The connection was lost and will be made again: notices may be lost.
                    Some(Ok(None)) => wakeups.wake(true, true),
                    Some(Err(e)) => {
                        tracing::debug!("postgres: listening: {e}");
                        listener = None;
                        drop(wakeups);
                        tokio::time::sleep(delays.next().unwrap_or(super::MAX_BACKOFF)).await;
                    }
                    None => {}
                }
            }
            _ = tick.tick() => {
                let Some(wakeups) = hub.upgrade() else { return };
                let now = sqlx::query_as::<_, (i64, i64)>(
                    "SELECT (SELECT last_value FROM jobqueue_jobs_id_seq), (SELECT last_value FROM jobqueue_sets_id_seq)",
                )
                .fetch_one(&pool)
                .await;
                if let Ok(now) = now {
                    let at = Instant::now();
                    if let Some(before) = seen {
                        if before.0 != now.0 {
                            changed_at.0 = Some(at);
                        }
                        if before.1 != now.1 {
                            changed_at.1 = Some(at);
                        }
                    }
                    let recent = |t: Option<Instant>| t.is_some_and(|t| at - t <= LINGER);
                    let (queued, scheduled) = (recent(changed_at.0), recent(changed_at.1));
                    if queued || scheduled {
                        wakeups.wake(queued, scheduled);
                    }
                    seen = Some(now);
                }
            }
        }
    }
}
