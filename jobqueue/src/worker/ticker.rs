//! The ticker: fires the ticks of this process's periodic jobs. Each tick is claimed once,
//! atomically, in the broker (`periodic:NAME:TICK`): however many processes run, each tick
//! enqueues one job, through the client like any enqueue. A tick missed while no process
//! ran is enqueued late if it is at most `periodic_grace` old, and skipped (and logged)
//! otherwise.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeZone, Utc};

use super::Shared;
use crate::backend::Published;
use crate::client::{Admitted, Origin};
use crate::error::Error;
use crate::metrics;
use crate::schedule::window::quiet_until;
use crate::schedule::Periodic;

/// A tick's claim outlives the grace period by this much, so no late process claims it.
const CLAIM_MARGIN: Duration = Duration::from_secs(60);
/// The longest the loop sleeps, so a changed clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Runs the periodic jobs of this process until it stops taking work.
pub(crate) async fn run(shared: Arc<Shared>) {
    if shared.periodic.is_empty() {
        return;
    }
    let grace = chrono::Duration::from_std(shared.config.periodic_grace).unwrap_or_default();
    let start = Utc::now();
    let mut checked: Vec<DateTime<Utc>> = Vec::with_capacity(shared.periodic.len());
    for periodic in &shared.periodic {
        report_missed(&shared, periodic, start - grace).await;
        checked.push(catch_up(&shared, periodic, start - grace, start).await);
    }
    let mut state = shared.state.subscribe();
    while shared.is_running() {
        let now = Utc::now();
        for (periodic, checked) in shared.periodic.iter().zip(checked.iter_mut()) {
            for tick in periodic.ticks(*checked, now) {
                match fire(
                    &shared,
                    periodic,
                    tick,
                    now - tick > chrono::Duration::seconds(1),
                )
                .await
                {
                    Ok(()) => *checked = tick,
                    Err(e) => {
                        tracing::warn!(
                            "periodic job `{}`: tick {tick}: {e}; trying again",
                            periodic.name
                        );
                        break;
                    }
                }
            }
        }
        if let Err(e) = publish(&shared, now).await {
            tracing::debug!("publishing the periodic schedules: {e}");
        }
        let next = shared
            .periodic
            .iter()
            .filter_map(|p| p.next_tick(now))
            .min();
        let wait = next
            .and_then(|t| (t - Utc::now()).to_std().ok())
            .unwrap_or_default()
            .min(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.changed() => {}
        }
    }
}

/// Publishes this process's schedules with their next tick, for operators' tools.
async fn publish(shared: &Shared, now: DateTime<Utc>) -> Result<(), Error> {
    let schedules: Vec<(String, String)> = shared
        .periodic
        .iter()
        .map(|p| (p.name.clone(), p.description(now).to_string()))
        .collect();
    Ok(shared
        .broker
        .publish(Published::Periodic, &schedules)
        .await?)
}

/// Enqueues the latest tick in `(from, until]`, if any, once: a process coming back after
/// missing several ticks runs the job once, not once per tick. Returns the time up to which
/// ticks are handled.
async fn catch_up(
    shared: &Shared,
    periodic: &Periodic,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> DateTime<Utc> {
    let missed = periodic.ticks(from, until);
    let Some(&latest) = missed.last() else {
        return until;
    };
    if missed.len() > 1 {
        tracing::info!(
            "periodic job `{}`: {} ticks within the grace period; only the latest, {latest}, is due",
            periodic.name,
            missed.len()
        );
    }
    match fire(shared, periodic, latest, true).await {
        Ok(()) => until,
        Err(e) => {
            tracing::warn!(
                "periodic job `{}`: tick {latest}: {e}; trying again",
                periodic.name
            );
            latest - chrono::Duration::milliseconds(1)
        }
    }
}

/// Logs the ticks no process enqueued since the last one was, older than the grace period.
async fn report_missed(shared: &Shared, periodic: &Periodic, horizon: DateTime<Utc>) {
    let last = match shared.broker.get(&periodic.last_key()).await {
        Ok(last) => last.and_then(|ms| ms.parse::<i64>().ok()),
        Err(e) => {
            tracing::warn!(
                "periodic job `{}`: reading its last tick: {e}",
                periodic.name
            );
            return;
        }
    };
    let Some(last) = last.and_then(|ms| Utc.timestamp_millis_opt(ms).single()) else {
        return;
    };
    let missed = periodic.ticks(last, horizon);
    if let (Some(first), Some(latest)) = (missed.first(), missed.last()) {
        tracing::warn!(
            "periodic job `{}` ({}): {} tick(s) from {first} to {latest} were missed while no \
             process ran it; they are older than the grace period and are skipped",
            periodic.name,
            periodic.describe(),
            missed.len(),
        );
    }
}

/// Claims `tick` and, if this process won it, enqueues the job through the client chain.
async fn fire(
    shared: &Shared,
    periodic: &Periodic,
    tick: DateTime<Utc>,
    late: bool,
) -> Result<(), Error> {
    if shared.broker.get(&periodic.paused_key()).await?.is_some() {
        tracing::info!(
            "periodic job `{}`: tick {tick} skipped: paused",
            periodic.name
        );
        return Ok(());
    }
    let ttl = shared.config.periodic_grace + CLAIM_MARGIN;
    let claimed = shared
        .broker
        .lock(&periodic.claim_key(tick), &shared.identity, ttl)
        .await?
        .is_none();
    if !claimed {
        return Ok(());
    }
    let tick_ms = tick.timestamp_millis().to_string();
    let keep = Duration::from_secs(400 * 24 * 3600);
    shared
        .broker
        .set(&periodic.last_key(), &tick_ms, keep)
        .await?;

    let envelope = periodic.envelope(tick);
    // A bulk job's tick inside a quiet window waits for its end.
    let at = periodic
        .options
        .bulk
        .then(|| quiet_until(&shared.config.quiet_windows, tick.max(Utc::now())))
        .flatten()
        .map(SystemTime::from);
    let jid = envelope.jid.clone();
    match shared
        .client
        .admit(envelope, at, Some(periodic.options), Origin::Periodic)
        .await
    {
        Ok(Admitted::Push(push, _)) => {
            shared.broker.push(std::slice::from_ref(&push)).await?;
            metrics::enqueued(&push.queue, periodic.class, 1);
            if late {
                tracing::info!(
                    "periodic job `{}`: tick {tick} enqueued late, within the grace period",
                    periodic.name
                );
            }
        }
        Ok(Admitted::Existing(existing)) => {
            tracing::info!(
                "periodic job `{}`: tick {tick}: job {existing} stands for {jid}",
                periodic.name
            );
        }
        Err(Error::Skipped { reason, .. }) => {
            tracing::info!(
                "periodic job `{}`: tick {tick} not enqueued: {reason}",
                periodic.name
            );
        }
        Err(e) => return Err(e),
    }
    Ok(())
}
