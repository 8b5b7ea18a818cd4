//! The sampler: sets the metrics gauges that need broker reads (queue sizes and latency,
//! set sizes). One process samples at a time: it holds a claim in the broker and renews it
//! while it lives, so the gauges come from one place and the others read nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Shared;
use crate::backend::{Location, SortedSet, Span};
use crate::envelope::Envelope;
use crate::error::BrokerError;
use crate::metrics;

/// The claim of the process that samples the broker-wide gauges.
const SAMPLER_CLAIM: &str = "metrics:sampler";

/// Samples every `metrics_interval` until `done` turns true.
pub(crate) async fn run(shared: Arc<Shared>, mut done: watch::Receiver<bool>) {
    loop {
        if let Err(e) = sample(&shared).await {
            metrics::broker_error("sample");
            tracing::warn!("sampling queue metrics: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.config.metrics_interval) => {}
            _ = done.changed() => {}
        }
        if *done.borrow() {
            return;
        }
    }
}

/// Sets the gauges when this process holds (or takes, or renews) the sampling claim.
async fn sample(shared: &Shared) -> Result<(), BrokerError> {
    let claim = shared.config.metrics_interval * 3;
    if shared
        .broker
        .lock(SAMPLER_CLAIM, &shared.identity, claim)
        .await?
        .is_some()
    {
        return Ok(());
    }
    for queue in shared.broker.queues().await? {
        let at = Location::Queue(&queue);
        let size = shared.broker.len(at).await?;
        let next = shared.broker.range(at, Span::page(0, 1)).await?;
        let waited = next.first().map_or(Duration::ZERO, |e| {
            Envelope::parse(&e.payload).map_or(Duration::ZERO, |e| e.waited())
        });
        metrics::queue(&queue, size, waited);
    }
    for set in [SortedSet::Schedule, SortedSet::Retry, SortedSet::Dead] {
        metrics::set(set.key(), shared.broker.len(Location::Set(set)).await?);
    }
    Ok(())
}
