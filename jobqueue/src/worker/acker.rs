//! Acknowledging: finished jobs leave the in-flight list in batches, whatever has queued
//! up since the last round trip, so a fast worker pays one round trip for many jobs. The
//! `until_executed` locks of those jobs are released in the same round trip.

use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;

use super::Shared;
use crate::backend::{self, Move, Source};
use crate::metrics;

/// How many finished jobs are removed from the in-flight list per round trip, at most.
/// Measured with `examples/loadtest.rs` (concurrency 50, collapsible and unique jobs): with
/// 256, finished jobs waiting for their acknowledgement peaked at about 7,000, each holding
/// its payload; with 1,024, at about 1,000.
const ACK_BATCH: usize = 1024;

/// How many finished jobs may wait for their acknowledgement. A slot that finds this many
/// waits: without a bound, jobs whose acknowledgement costs Redis more than their run
/// (per-key limits free their slots there) piled up, each holding its payload, and a
/// worker at concurrency 200 grew to twice its memory in 100,000 jobs.
pub(crate) const ACK_BACKLOG: usize = 4 * ACK_BATCH;

/// What the acker is told.
pub(crate) enum AckMessage {
    /// This job finished (its payload as fetched, and a lock it releases).
    Done(Move),
    /// Answer once everything sent before has reached the broker.
    Flush(oneshot::Sender<()>),
}

/// Waits until every acknowledgement sent so far has reached the broker.
pub(super) async fn flush(acks: &mpsc::Sender<AckMessage>) {
    let (tx, rx) = oneshot::channel();
    if acks.send(AckMessage::Flush(tx)).await.is_ok() {
        let _ = rx.await;
    }
}

/// Hands a finished job to the acker, waiting only while [`ACK_BACKLOG`] jobs already wait.
pub(super) async fn done(acks: &mpsc::Sender<AckMessage>, ack: Move) {
    // Most jobs find room: trying first spares them the wait's future. The acker is gone
    // only once shutdown has handed every job back, so a closed channel needs nothing.
    if let Err(TrySendError::Full(message)) = acks.try_send(AckMessage::Done(ack)) {
        let _ = acks.send(message).await;
    }
}

/// Removes finished jobs from the in-flight list, batching whatever has queued up since the
/// last round trip; a failed batch is tried again until the broker answers.
pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<AckMessage>) {
    let mut messages = Vec::with_capacity(ACK_BATCH);
    let mut batch = Vec::with_capacity(ACK_BATCH);
    let mut flushes = Vec::new();
    // Taken together, the messages free their room in the channel at once.
    while rx.recv_many(&mut messages, ACK_BATCH).await > 0 {
        for message in messages.drain(..) {
            match message {
                AckMessage::Done(ack) => batch.push(ack),
                AckMessage::Flush(tx) => flushes.push(tx),
            }
        }
        let mut delays = backend::backoff();
        let from = Source::InFlight(&shared.identity);
        while let Err(e) = shared.broker.settle(from, &batch).await {
            let wait = delays.next().unwrap_or(backend::MAX_BACKOFF);
            metrics::broker_error("ack");
            tracing::warn!(
                "acknowledging {} job(s) failed, trying again in {wait:?}: {e}",
                batch.len()
            );
            tokio::time::sleep(wait).await;
        }
        batch.clear();
        for tx in flushes.drain(..) {
            let _ = tx.send(());
        }
    }
}
