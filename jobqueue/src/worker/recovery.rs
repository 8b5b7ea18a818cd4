//! Jobs left in an in-flight list go back to the front of their queue: a dead process's
//! (recovered by the others once its heartbeat has expired), and this process's own at
//! quiet and at shutdown.
//!
//! A dead process's list holds the jobs it was running and the jobs that only waited in its
//! prefetch buffer, and no write on a job's start tells them apart: that would cost every
//! job a round trip. So a job counts an interruption only when its process is known to
//! have started it: a job recovered once records its start before it runs again
//! (`processor::record_start`), and a later recovery reads that record. A job that never
//! started goes back uncounted, whatever befell it; a job whose process died under it
//! again and again is a poison pill, sent to the dead set by
//! [`crate::retry::after_interruption`] at its third known interruption.

use super::{finish, Shared};
use crate::backend::{Location, Move, Settle, Source, Span};
use crate::envelope::header;
use crate::error::BrokerError;
use crate::job::keys::started_key;
use crate::retry;

/// How many start records one read covers.
const STARTS_PER_READ: usize = 1000;

/// Recovers the jobs of every process whose heartbeat has expired. Returns how many. A
/// dead process whose recovery fails (a shard failing over) is left for the next round;
/// the others are recovered all the same.
pub(crate) async fn recover_orphans(shared: &Shared) -> Result<usize, BrokerError> {
    let mut recovered = 0;
    for orphans in shared.broker.orphans(&shared.identity).await? {
        match recover(shared, &orphans.identity, &orphans.payloads).await {
            Ok(0) => {}
            Ok(moved) => {
                recovered += moved;
                tracing::warn!(
                    "recovered {moved} job(s) from dead process {}",
                    orphans.identity
                );
            }
            Err(e) => tracing::warn!(
                "recovering the jobs of dead process {}: {e}",
                orphans.identity
            ),
        }
    }
    Ok(recovered)
}

/// Moves the jobs `payloads` of the dead process `identity` back to their queues (or to
/// the dead set), then forgets the process once nothing of it is left. Returns how many
/// moved.
async fn recover(
    shared: &Shared,
    identity: &str,
    payloads: &[String],
) -> Result<usize, BrokerError> {
    let mut moves = Vec::with_capacity(payloads.len());
    for chunk in payloads.chunks(STARTS_PER_READ) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|p| started_key(header::read(p).jid.as_deref().unwrap_or_default()))
            .collect();
        let starts = shared.store().get_many(&keys).await?;
        for (payload, start) in chunk.iter().zip(starts) {
            let started = start.as_deref() == Some(identity);
            let to = retry::after_interruption(payload, started);
            moves.push(Move::new(payload.clone(), to));
        }
    }
    let moved = shared
        .broker
        .settle(Source::InFlight(identity), &moves)
        .await?;
    let mut recovered = 0;
    for (m, moved) in moves.iter().zip(moved) {
        if !moved {
            continue;
        }
        recovered += 1;
        if retry::dies(&m.to) {
            finish::after_death(shared, &m.payload).await;
        }
    }
    shared.broker.forget(identity).await?;
    Ok(recovered)
}

/// Returns jobs this process fetched and will not start (it went quiet), `payloads` in
/// the order they were fetched. One try: what stays in the in-flight list is returned at
/// shutdown, or recovered if this dies.
pub(crate) async fn return_unstarted(shared: &Shared, mut payloads: Vec<String>) {
    // Each goes to the front, so the last fetched goes first: the queue keeps its order.
    payloads.reverse();
    let count = payloads.len();
    if let Err(e) = return_to_front(shared, payloads).await {
        tracing::warn!("returning {count} fetched job(s) to their queues failed: {e}");
    }
}

/// Returns every job still in this process's in-flight list (at shutdown). The list holds
/// the newest first, so the oldest ends up at the front of its queue.
pub(crate) async fn return_own(shared: &Shared) -> Result<usize, BrokerError> {
    let own = Location::InFlight(&shared.identity);
    let held = shared.broker.range(own, Span::page(0, usize::MAX)).await?;
    return_to_front(shared, held.into_iter().map(|e| e.payload).collect()).await
}

/// Puts jobs of this process back at the front of their queues, in the order given, as
/// they were: not interrupted by a crash, so not counted. Returns how many moved.
async fn return_to_front(shared: &Shared, payloads: Vec<String>) -> Result<usize, BrokerError> {
    let moves: Vec<Move> = payloads
        .into_iter()
        .map(|payload| {
            let to = match crate::envelope::Envelope::parse(&payload) {
                Ok(envelope) => Settle::Queue {
                    queue: envelope.queue,
                    payload: payload.clone(),
                    front: true,
                },
                Err(e) => retry::invalid_payload("", &payload, &e),
            };
            Move::new(payload, to)
        })
        .collect();
    let from = Source::InFlight(&shared.identity);
    let moved = shared.broker.settle(from, &moves).await?;
    Ok(moved.into_iter().filter(|m| *m).count())
}
