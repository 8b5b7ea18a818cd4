//! The outbox: jobs enqueued in an application's PostgreSQL transaction for a broker
//! elsewhere (Redis, a cluster) wait in `jobqueue_outbox` until a [`Relay`] moves them.
//!
//! A relay claims a batch of committed rows (`FOR UPDATE SKIP LOCKED`, so any number of
//! relays share the table), pushes them with [`JobStore::push_once`] under a marker per job
//! id, deletes them and commits. A crash before the push leaves the rows for the next
//! relay; a crash after it leaves them too, and the next push of the same jobs finds their
//! markers and pushes nothing twice. The markers last [`RelayConfig::marker_ttl`]: rows a
//! relay pushed and could not delete must be relayed again within it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::PgPool;

use crate::backend::{Broker, Published, Push, RelayStatus};
use crate::envelope::header;
use crate::error::BrokerError;
use crate::time::{from_epoch, now};

/// How a relay works.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RelayConfig {
    /// The most rows moved in one step.
    pub batch: usize,
    /// How long a relay that found the outbox empty waits before it looks again.
    pub idle: Duration,
    /// How long a job's marker stays in the broker after its push.
    pub marker_ttl: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 500,
            idle: Duration::from_millis(50),
            marker_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Moves jobs committed to the outbox of a PostgreSQL database into a broker. Run one in
/// each worker process, or anywhere: relays share the outbox without pushing a job twice.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool) -> Result<(), jobqueue::Error> {
/// use jobqueue::backend::postgres::Relay;
///
/// let broker = jobqueue::RedisBroker::connect("redis://127.0.0.1/").await?;
/// let relay = Relay::new(pool, broker);
/// tokio::spawn(relay.run_until(tokio::signal::ctrl_c()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    broker: Arc<dyn Broker>,
    config: RelayConfig,
    name: String,
}

impl Relay {
    /// A relay from `pool`'s outbox into `broker`.
    pub fn new(pool: PgPool, broker: impl Into<Arc<dyn Broker>>) -> Self {
        Self {
            pool,
            broker: broker.into(),
            config: RelayConfig::default(),
            name: crate::backend::process_identity(),
        }
    }

    /// This relay, working as `config` says.
    pub fn config(mut self, config: RelayConfig) -> Self {
        self.config = config;
        self
    }

    /// Moves one batch of committed jobs into the broker; returns how many rows it took.
    pub async fn relay_once(&self) -> Result<usize, BrokerError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, String, String, Option<f64>)> = sqlx::query_as(
            "SELECT id, queue, payload, at FROM jobqueue_outbox ORDER BY id LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::try_from(self.config.batch.max(1)).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let jobs: Vec<(String, Push)> = rows
            .iter()
            .map(|(id, queue, payload, at)| {
                (
                    marker(*id, payload),
                    Push {
                        queue: queue.clone(),
                        payload: payload.clone(),
                        at: at.map(from_epoch),
                    },
                )
            })
            .collect();
        let pushed = self.broker.push_once(&jobs, self.config.marker_ttl).await?;
        let before = pushed.iter().filter(|p| !**p).count();
        if before > 0 {
            tracing::warn!(
                "outbox relay: {before} jobs were pushed by a relay that ended before deleting them; not pushed again"
            );
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        sqlx::query("DELETE FROM jobqueue_outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.len())
    }

    /// How many jobs wait in the outbox, and since when the oldest.
    pub async fn waiting(&self) -> Result<(u64, Option<SystemTime>), BrokerError> {
        let (count, oldest): (i64, Option<f64>) =
            sqlx::query_as("SELECT count(*), min(created) FROM jobqueue_outbox")
                .fetch_one(&self.pool)
                .await?;
        Ok((
            u64::try_from(count).unwrap_or_default(),
            oldest.map(from_epoch),
        ))
    }

    /// Relays until `stop` completes, publishing its status every second. A failing step
    /// is tried again after a backoff; nothing is lost meanwhile.
    pub async fn run_until(self, stop: impl Future) {
        let mut stop = std::pin::pin!(stop);
        let (mut relayed, mut reported) = (0u64, 0u64);
        let mut delays = crate::backend::backoff();
        let mut looked = std::time::Instant::now() - Duration::from_secs(1);
        loop {
            let wait = match self.relay_once().await {
                Ok(n) => {
                    relayed += n as u64;
                    delays = crate::backend::backoff();
                    (n < self.config.batch).then_some(self.config.idle)
                }
                Err(e) => {
                    tracing::warn!("outbox relay: {e}");
                    crate::metrics::broker_error("relay");
                    Some(delays.next().unwrap_or(crate::backend::MAX_BACKOFF))
                }
            };
            if looked.elapsed() >= Duration::from_secs(1) {
                looked = std::time::Instant::now();
                match self.report(relayed, relayed - reported).await {
                    Ok(()) => reported = relayed,
                    Err(e) => tracing::debug!("outbox relay status: {e}"),
                }
            }
            if let Some(wait) = wait {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = &mut stop => return,
                }
            }
        }
    }

    /// Publishes this relay's status for operators, and its metrics: `relayed` jobs in all,
    /// `new` of them since the last report.
    async fn report(&self, relayed: u64, new: u64) -> Result<(), BrokerError> {
        let (waiting, oldest) = self.waiting().await?;
        let lag = oldest.map_or(Duration::ZERO, |at| {
            SystemTime::now().duration_since(at).unwrap_or_default()
        });
        crate::metrics::relayed(new, lag);
        let status = RelayStatus {
            relayed,
            lag: lag.as_secs_f64(),
            waiting,
            at: now(),
        };
        let json = serde_json::to_string(&status).unwrap_or_default();
        self.broker
            .publish(Published::Relays, &[(self.name.clone(), json)])
            .await
    }
}

/// The marker of the outbox row `id`: its job id, which any relay of the same row finds
/// again; the row's id for a payload without one.
fn marker(id: i64, payload: &str) -> String {
    match header::read(payload).jid {
        Some(jid) if !jid.is_empty() => format!("relayed:{jid}"),
        _ => format!("relayed:row:{id}"),
    }
}
