//! Jobs left in an in-flight list by a process that died (or by this one at shutdown) go
//! back to the front of their queue. A job whose process died under it three times is
//! a poison pill and goes to the dead set instead.

use super::{dispatch, Shared};
use crate::broker::Settle;
use crate::envelope::Envelope;
use crate::error::BrokerError;
use crate::job::JobError;

/// A job interrupted by this many process deaths goes to the dead set.
pub const MAX_INTERRUPTIONS: u32 = 3;

/// Why jobs are handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandBack {
    /// The process holding them died; counts towards [`MAX_INTERRUPTIONS`].
    Crash,
    /// This process is shutting down and did not finish them in time.
    Shutdown,
}

/// Recovers the jobs of every process whose heartbeat has expired. Returns how many.
pub(crate) async fn recover_orphans(shared: &Shared) -> Result<usize, BrokerError> {
    let mut recovered = 0;
    for orphans in shared.broker.orphans(&shared.identity).await? {
        let moves: Vec<(String, Settle)> = orphans
            .payloads
            .iter()
            .map(|payload| (payload.clone(), hand_back_to(payload, HandBack::Crash)))
            .collect();
        let moved = shared.broker.settle_many(&orphans.identity, &moves).await?;
        for ((payload, to), moved) in moves.iter().zip(moved) {
            if !moved {
                continue;
            }
            recovered += 1;
            if matches!(to, Settle::Dead { .. } | Settle::Discard) {
                dispatch::after_death(shared, payload).await;
            }
        }
        shared.broker.forget(&orphans.identity).await?;
        if !orphans.payloads.is_empty() {
            tracing::warn!(
                "recovered {} job(s) from dead process {}",
                orphans.payloads.len(),
                orphans.identity
            );
        }
    }
    Ok(recovered)
}

/// Hands back jobs this process fetched and will not start (it went quiet). One try: what
/// stays in the in-flight list is handed back at shutdown, or recovered if this dies.
pub(crate) async fn hand_back(shared: &Shared, payloads: Vec<String>) {
    let count = payloads.len();
    if let Err(e) = hand_back_payloads(shared, payloads).await {
        tracing::warn!("handing back {count} fetched job(s) failed: {e}");
    }
}

/// Hands back every job still in this process's in-flight list.
pub(crate) async fn hand_back_own(shared: &Shared) -> Result<usize, BrokerError> {
    let payloads = shared.broker.in_flight(&shared.identity).await?;
    hand_back_payloads(shared, payloads).await
}

/// Puts jobs of this process back at the front of their queues; returns how many.
async fn hand_back_payloads(shared: &Shared, payloads: Vec<String>) -> Result<usize, BrokerError> {
    let moves: Vec<(String, Settle)> = payloads
        .into_iter()
        .map(|payload| {
            let to = hand_back_to(&payload, HandBack::Shutdown);
            (payload, to)
        })
        .collect();
    let moved = shared.broker.settle_many(&shared.identity, &moves).await?;
    Ok(moved.into_iter().filter(|m| *m).count())
}

fn hand_back_to(payload: &str, why: HandBack) -> Settle {
    let mut envelope = match Envelope::parse(payload) {
        Ok(envelope) => envelope,
        Err(e) => return dispatch::invalid_payload("", payload, &e),
    };
    if why == HandBack::Crash {
        let count = envelope.interrupted_count.unwrap_or(0) + 1;
        envelope.interrupted_count = Some(count);
        if count >= MAX_INTERRUPTIONS {
            let error = JobError::new(format!(
                "the process running this job died {count} times while running it; \
                 it is kept here as a likely cause (a poison pill)"
            ))
            .with_class(dispatch::error_class::INTERRUPTED);
            return dispatch::failure(&mut envelope, &error.no_retry());
        }
    }
    Settle::Queue {
        queue: envelope.queue.clone(),
        payload: envelope.to_json(),
        front: true,
    }
}
