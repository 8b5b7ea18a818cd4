//! Settling: moving jobs out of this process's in-flight list to where they go next.
//!
//! A job must not stay in the in-flight list of a live process, so a settle is tried again
//! until the broker answers. A job already recovered by another process is left where that
//! process put it.

use backon::Retryable;

use super::Shared;
use crate::broker::{backoff_builder, Settle};
use crate::metrics;

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
        .notify(|e, wait| {
            metrics::broker_error("settle");
            tracing::warn!("settling jobs failed, trying again in {wait:?}: {e}")
        })
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
