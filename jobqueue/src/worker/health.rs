//! Health for orchestrators: live while the heartbeat reaches the broker often enough that
//! no other process takes this one for dead; ready while live, the last heartbeat reached
//! the broker, and the worker is taking jobs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::RunState;

/// A worker's health, from [`WorkerHandle::health`](super::WorkerHandle::health).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The last heartbeat that reached the broker is younger than `heartbeat_ttl`: the
    /// liveness probe.
    pub live: bool,
    /// Live, the broker answered the last heartbeat, and the worker takes jobs (not quiet,
    /// not stopping): the readiness probe.
    pub ready: bool,
    /// When the last heartbeat reached the broker.
    pub last_beat: Option<SystemTime>,
    /// The broker answered the last heartbeat.
    pub broker_reachable: bool,
    /// What the worker is doing.
    pub state: RunState,
}

/// What the heartbeat saw.
#[derive(Debug, Default)]
pub(crate) struct Beats {
    /// Milliseconds since the epoch of the last heartbeat that reached the broker; 0: none.
    last_ok_ms: AtomicU64,
    last_failed: AtomicBool,
}

impl Beats {
    pub(crate) fn record(&self, ok: bool) {
        self.last_failed.store(!ok, Ordering::Relaxed);
        if ok {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            self.last_ok_ms.store(ms, Ordering::Relaxed);
        }
    }

    pub(crate) fn health(&self, ttl: Duration, state: RunState) -> Health {
        let ms = self.last_ok_ms.load(Ordering::Relaxed);
        let last_beat = (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms));
        let live = last_beat
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .is_some_and(|age| age < ttl);
        let broker_reachable = last_beat.is_some() && !self.last_failed.load(Ordering::Relaxed);
        Health {
            live,
            ready: live && broker_reachable && state == RunState::Running,
            last_beat,
            broker_reachable,
            state,
        }
    }
}
