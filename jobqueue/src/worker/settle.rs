//! Settling: moving jobs out of this process's in-flight list to where they go next, and
//! the one backoff every worker loop uses when a broker call fails.
//!
//! A job must not stay in the in-flight list of a live process, so a settle is tried again
//! until the broker answers. A job already recovered by another process is left where that
//! process put it.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};

use super::Shared;
use crate::broker::Settle;

/// The longest wait between two tries of a broker call that failed.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Delays between tries of a failing broker call: 100 ms doubling to 5 s, with jitter,
/// without end. Every worker loop (fetch, ack, settle, scheduler) waits by this curve.
pub(crate) fn backoff() -> ExponentialBackoff {
    backoff_builder().build()
}

fn backoff_builder() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
}

/// Settles one job; see [`many`].
pub(crate) async fn one(shared: &Shared, payload: &str, to: Settle) {
    many(shared, vec![(payload.to_owned(), to)]).await;
}

/// Settles jobs in one round trip, trying again until the broker answers.
pub(crate) async fn many(shared: &Shared, moves: Vec<(String, Settle)>) {
    if moves.is_empty() {
        return;
    }
    let settle = || shared.broker.settle_many(&shared.identity, &moves);
    let moved = settle
        .retry(backoff_builder())
        .notify(|e, wait| tracing::warn!("settling jobs failed, trying again in {wait:?}: {e}"))
        .await;
    if let Ok(moved) = moved {
        let gone = moved.iter().filter(|m| !**m).count();
        if gone > 0 {
            tracing::info!(
                "{gone} job(s) finished here had already been recovered by another process"
            );
        }
    }
}
