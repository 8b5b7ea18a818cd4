//! The enqueue side of the mechanisms a job's attribute demands: the collapse marker
//! (`#[job(collapsible)]`) and the uniqueness lock taken at enqueue (`#[job(unique)]`).
//!
//! They are not middleware a user installs: every [`Client`](super::Client) applies them
//! after its middleware chain, on every enqueue path (single, bulk, scheduled, retry,
//! periodic), so the attribute's promise holds whatever client is built. The perform side
//! (the stale-job stopper, the running lease, releases) is in the worker.

use std::time::{Duration, SystemTime};

use crate::backend::KeyValue;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::job::{JobOptions, OnConflict};

use super::middleware::{Admission, Origin};

/// Settings of the collapse and uniqueness mechanisms, shared by clients and workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MechanismConfig {
    /// How long a collapse marker lives after the last enqueue with its key (default one
    /// day). An older job still queued when its marker has expired is no longer recognised
    /// as stale and runs.
    pub collapse_marker_ttl: Duration,
    /// How long a job waits when a uniqueness conflict sends it away
    /// (`on_conflict = "reschedule"`, or a running lock held by another job; default 5 s).
    pub conflict_wait: Duration,
    /// The lease of a running lock: renewed every third of it while the job runs, and
    /// lapsing this long after the process running the job died (default 30 s, capped by
    /// the lock's `ttl`).
    pub running_lease: Duration,
}

impl Default for MechanismConfig {
    fn default() -> Self {
        Self {
            collapse_marker_ttl: Duration::from_secs(24 * 3600),
            conflict_wait: Duration::from_secs(5),
            running_lease: Duration::from_secs(30),
        }
    }
}

impl MechanismConfig {
    /// These settings with another collapse marker lifetime.
    pub fn collapse_marker_ttl(mut self, ttl: Duration) -> Self {
        self.collapse_marker_ttl = ttl;
        self
    }

    /// These settings with another wait after a uniqueness conflict.
    pub fn conflict_wait(mut self, wait: Duration) -> Self {
        self.conflict_wait = wait;
        self
    }

    /// These settings with another running-lock lease.
    pub fn running_lease(mut self, lease: Duration) -> Self {
        self.running_lease = lease;
        self
    }
}

/// Applies the job's mechanisms just before its push. `at` may be moved
/// later by a reschedule on conflict. Nothing here runs for a job whose type is unknown to
/// this process (`options` is `None`): its mechanisms are its own producer's business.
pub(super) async fn apply(
    config: &MechanismConfig,
    store: &dyn KeyValue,
    envelope: &Envelope,
    options: Option<&'static JobOptions>,
    origin: Origin,
    at: &mut Option<SystemTime>,
) -> Result<Admission, Error> {
    let Some(options) = options else {
        return Ok(Admission::Push);
    };
    if let Some(spec) = options.unique.filter(|s| s.locks_at_enqueue()) {
        let key = spec.queued_key(envelope);
        let jid = &envelope.jid;
        // A due job coming back from the schedule or retry set still holds its own lock,
        // and taking it again only renews it.
        if let Some(holder) = store.lock(&key, jid, spec.ttl).await? {
            match spec.on_conflict {
                OnConflict::Reject => {
                    return Err(Error::Skipped {
                        class: envelope.class.clone(),
                        reason: format!(
                            "job {holder} with the same unique key is enqueued and holds the lock"
                        ),
                    })
                }
                OnConflict::Log => {
                    tracing::info!(
                        "{} {jid} not enqueued: job {holder} with the same unique key stands for it",
                        envelope.class
                    );
                    return Ok(Admission::Existing { jid: holder });
                }
                OnConflict::Reschedule => {
                    // Not locked now; the lock is tried again when the job comes due.
                    let base = at.map_or(SystemTime::now(), |at| at.max(SystemTime::now()));
                    *at = Some(base + config.conflict_wait);
                }
                OnConflict::Replace if matches!(origin, Origin::Scheduled | Origin::Retry) => {
                    // A due job whose lock a newer job took was replaced by it: it goes no
                    // further, and the newer job stands for it.
                    tracing::info!("{} {jid} was replaced by job {holder}", envelope.class);
                    return Ok(Admission::Existing { jid: holder });
                }
                OnConflict::Replace => {
                    // The lock names the newest job: the one it replaces is skipped when
                    // its turn comes (the worker's mechanisms, or this admission when it is
                    // due), so no queue or set is searched.
                    tracing::info!("{} {jid} replaces job {holder}", envelope.class);
                    store.set(&key, jid, spec.ttl).await?;
                }
            }
        }
    }
    // Only a new job (an enqueue, a periodic tick) is the newest; a due job moving to its
    // queue is not.
    // Recorded before the push, so no worker can see this job before its marker.
    if let (Some(spec), Origin::Enqueue | Origin::Periodic) = (options.collapse, origin) {
        let key = spec.marker_key_of(envelope);
        store
            .set(&key, &envelope.jid, config.collapse_marker_ttl)
            .await?;
    }
    Ok(Admission::Push)
}
