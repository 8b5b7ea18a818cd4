//! Jobs left in an in-flight list go back to the front of their queue: a dead process's
//! (recovered by the others once its heartbeat has expired), and this process's own at
//! quiet and at shutdown. A job whose process died under it again and again is a poison
//! pill: [`crate::retry::after_interruption`] sends it to the dead set instead.

use super::{processor, Shared};
use crate::broker::Settle;
use crate::error::BrokerError;
use crate::retry;

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
    let moves: Vec<(String, Settle)> = payloads
        .iter()
        .map(|payload| (payload.clone(), retry::after_interruption(payload)))
        .collect();
    let moved = shared.broker.settle_many(identity, &moves).await?;
    let mut recovered = 0;
    for ((payload, to), moved) in moves.iter().zip(moved) {
        if !moved {
            continue;
        }
        recovered += 1;
        if retry::dies(to) {
            processor::after_death(shared, payload).await;
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
    let payloads = shared.broker.in_flight(&shared.identity).await?;
    return_to_front(shared, payloads).await
}

/// Puts jobs of this process back at the front of their queues, in the order given, as
/// they were: not interrupted by a crash, so not counted. Returns how many moved.
async fn return_to_front(shared: &Shared, payloads: Vec<String>) -> Result<usize, BrokerError> {
    let moves: Vec<(String, Settle)> = payloads
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
            (payload, to)
        })
        .collect();
    let moved = shared.broker.settle_many(&shared.identity, &moves).await?;
    Ok(moved.into_iter().filter(|m| *m).count())
}
