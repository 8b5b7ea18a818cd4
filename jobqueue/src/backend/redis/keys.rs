//! The key layout: Sidekiq's keys (`queue:NAME`, `schedule`, `retry`, `dead`, `processes`,
//! `stat:*`) and ours (`jobqueue:inflight:<identity>`, `jobqueue:lock:<key>`, ...), under
//! an optional namespace. Nothing outside the Redis broker knows it.

use super::super::{Published, SortedSet};

/// Where everything lives: Sidekiq's keys, ours under `jobqueue:`, all under the
/// namespace when one is set.
pub(super) struct Keys {
    pub(super) prefix: String,
    pub(super) queues: String,
    pub(super) fetchers: String,
    pub(super) processes: String,
    pub(super) paused: String,
    pub(super) wake: String,
}

impl Keys {
    pub(super) fn new(namespace: Option<&str>) -> Self {
        let prefix = namespace.map(|ns| format!("{ns}:")).unwrap_or_default();
        Self {
            queues: format!("{prefix}queues"),
            fetchers: format!("{prefix}jobqueue:fetchers"),
            processes: format!("{prefix}processes"),
            paused: format!("{prefix}jobqueue:paused"),
            wake: format!("{prefix}jobqueue:wake"),
            prefix,
        }
    }

    pub(super) fn plain(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(super) fn queue(&self, queue: &str) -> String {
        format!("{}queue:{queue}", self.prefix)
    }

    pub(super) fn set(&self, set: SortedSet) -> String {
        self.plain(set.key())
    }

    pub(super) fn in_flight(&self, process: &str) -> String {
        format!("{}jobqueue:inflight:{process}", self.prefix)
    }

    /// A batch's hash and its set of pending job ids.
    pub(super) fn batch(&self, bid: &str) -> (String, String) {
        let hash = format!("{}jobqueue:batch:{bid}", self.prefix);
        let pending = format!("{hash}:pending");
        (hash, pending)
    }

    /// The slots taken under a limit key (the layout of the limits' keys is in
    /// `lua/limits.lua`).
    pub(super) fn slots(&self, key: &str) -> String {
        format!("{}jobqueue:limit:{key}", self.prefix)
    }

    /// The jobs set aside under a limit key.
    pub(super) fn parked(&self, key: &str) -> String {
        format!("{}jobqueue:parked:{key}", self.prefix)
    }

    /// The limit keys with jobs set aside, scored by when to look at them again.
    pub(super) fn limits(&self) -> String {
        format!("{}jobqueue:limits", self.prefix)
    }

    pub(super) fn lock(&self, key: &str) -> String {
        format!("{}jobqueue:lock:{key}", self.prefix)
    }

    /// What processes publish for tools: periodic schedules, job classes.
    pub(super) fn published(&self, what: Published) -> String {
        match what {
            Published::Periodic => format!("{}jobqueue:periodic", self.prefix),
            Published::Classes => format!("{}jobqueue:classes", self.prefix),
            Published::Relays => format!("{}jobqueue:relays", self.prefix),
        }
    }
}
