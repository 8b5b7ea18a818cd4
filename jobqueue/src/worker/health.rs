//! Health for orchestrators: live while the heartbeat reaches the broker often enough that
//! no other process takes this one for dead; ready while live, the last heartbeat reached
//! the broker, and the worker is taking jobs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::RunState;
use crate::time::{from_epoch, now};

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
    /// When the last heartbeat reached the broker, as the bits of its epoch seconds; 0: none.
    last_ok: AtomicU64,
    last_failed: AtomicBool,
}

impl Beats {
    pub(crate) fn record(&self, ok: bool) {
        self.last_failed.store(!ok, Ordering::Relaxed);
        if ok {
            self.last_ok.store(now().to_bits(), Ordering::Relaxed);
        }
    }

    pub(crate) fn health(&self, ttl: Duration, state: RunState) -> Health {
        let bits = self.last_ok.load(Ordering::Relaxed);
        let last_beat = (bits != 0).then(|| from_epoch(f64::from_bits(bits)));
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
