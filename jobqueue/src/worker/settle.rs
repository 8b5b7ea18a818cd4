//! Settling: moving jobs out of this process's in-flight list to where they go next.
//!
//! A job must not stay in the in-flight list of a live process, so a settle is tried again
//! until the broker answers. A job already recovered by another process is left where that
//! process put it.

use backon::Retryable;

use super::Shared;
use crate::backend::{backoff, backoff_builder, Move, Source, MAX_BACKOFF};
use crate::client::{Admitted, Origin};
use crate::error::Error;
use crate::metrics;
use crate::perform::FollowUp;

/// Settles one job; see [`many`].
pub(crate) async fn one(shared: &Shared, to: Move) {
    many(shared, vec![to]).await;
}

/// Settles jobs of this process's in-flight list in one round trip, trying again until the
/// broker answers.
pub(crate) async fn many(shared: &Shared, moves: Vec<Move>) {
    if moves.is_empty() {
        return;
    }
    let from = Source::InFlight(&shared.identity);
    let settle = || shared.broker.settle(from, &moves);
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

/// Acknowledges a job that succeeded (`done`) together with the follow-ups it declared:
/// each goes through the client's admission, then the job leaves the in-flight list and the
/// admitted follow-ups are pushed in one atomic broker call, tried again until the broker
/// answers (a repeat pushes nothing twice). A follow-up refused by middleware or too large
/// is logged and left out; the job itself succeeded.
pub(crate) async fn with_follow_ups(shared: &Shared, done: Move, follow_ups: Vec<FollowUp>) {
    let parent = crate::envelope::header::read(&done.payload)
        .jid
        .map(|jid| jid.into_owned())
        .unwrap_or_default();
    let parent = parent.as_str();
    let mut pushes = Vec::with_capacity(follow_ups.len());
    for follow_up in follow_ups {
        let class = follow_up.envelope.class.clone();
        let mut delays = backoff();
        loop {
            let admitted = shared
                .client
                .admit(
                    follow_up.envelope.clone(),
                    follow_up.at,
                    Some(follow_up.options),
                    Origin::Enqueue,
                )
                .await;
            match admitted {
                Ok(Admitted::Push(push, _)) => pushes.push((push, class.clone())),
                Ok(Admitted::Existing(jid)) => {
                    tracing::info!(parent, "follow-up {class}: job {jid} stands for it");
                }
                Err(Error::Broker(e)) => {
                    let wait = delays.next().unwrap_or(MAX_BACKOFF);
                    metrics::broker_error("settle");
                    tracing::warn!(
                        parent,
                        "admitting follow-up {class} failed, trying again in {wait:?}: {e}"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => tracing::warn!(parent, "follow-up {class} not enqueued: {e}"),
            }
            break;
        }
    }
    let (pushes, classes): (Vec<_>, Vec<_>) = pushes.into_iter().unzip();
    let done = [done.then(pushes)];
    let from = Source::InFlight(&shared.identity);
    let ack = || shared.broker.settle(from, &done);
    let acked = ack
        .retry(backoff_builder())
        .notify(|e, wait| {
            metrics::broker_error("ack");
            tracing::warn!("acknowledging job {parent} with its follow-ups failed, trying again in {wait:?}: {e}")
        })
        .await;
    match acked.map(|moved| moved.first() == Some(&true)) {
        Ok(true) => {
            for (push, class) in done[0].then.iter().zip(&classes) {
                metrics::enqueued(&push.queue, class, 1);
            }
        }
        Ok(false) => tracing::info!(
            parent,
            "job had already been recovered by another process; its follow-ups are left to its next run"
        ),
        Err(e) => tracing::error!(parent, "acknowledging the job with its follow-ups: {e}"),
    }
}

/// Records in its batch that a job finished, tried again until the broker answers (a
/// repeat counts nothing twice). Done before the job leaves the in-flight list: a crash
/// in between runs the job again, and its batch counts it once.
pub(crate) async fn batch_done(shared: &Shared, bid: &str, jid: &str, succeeded: bool) {
    let call = || shared.broker.batch_done(bid, jid, succeeded);
    let finished = call
        .retry(backoff_builder())
        .notify(|e, wait| {
            metrics::broker_error("batch");
            tracing::warn!(
                "recording job {jid} in batch {bid} failed, trying again in {wait:?}: {e}"
            )
        })
        .await;
    if let Ok(true) = finished {
        tracing::info!(bid, "batch finished; its callbacks are enqueued");
    }
}
