//! The Redis broker: Sidekiq's key layout, plus in-flight lists for reliable fetch.
//!
//! Split as redis-rs is: the connection and its settings here, in [`config`] and in `conn`
//! (one server or a cluster), the key layout in `keys`, payload bytes in `codec`, the
//! wake-up channel in `listener`; the protocol (which keys, which commands) per role in
//! `jobs` (the hot path), `presence`, `kv`, `views` and `batches`, with the `.lua` scripts
//! in `lua/` (`lib.lua` is their shared library, prepended to each).

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ProtocolVersion, Script};
use tokio::task::JoinHandle;

use super::{Broker, WakeupHub};
use crate::error::BrokerError;

mod batches;
mod codec;
pub mod config;
mod conn;
mod jobs;
mod keys;
mod kv;
mod listener;
mod presence;
mod views;

pub(crate) use self::codec::{is_raw, raw_text};
use self::config::open_client;
pub use self::config::RedisConfig;
pub(crate) use self::conn::Conn;
use self::keys::Keys;
pub(crate) use self::listener::listen;
use self::listener::{track, Tracker};

/// A script with the library (`lua/lib.lua`) before it.
macro_rules! with_lib {
    ($($file:literal),+) => {
        concat!(include_str!("lua/lib.lua"), $(include_str!($file)),+)
    };
}

/// Releases locks whose owners still hold them.
const UNLOCK: &str = include_str!("lua/unlock.lua");

/// One script per backend operation.
struct Scripts {
    fetch: Script,
    settle: Script,
    take_due: Script,
    unpark: Script,
    forget: Script,
    lock: Script,
    unlock: Script,
    batch_add: Script,
    batch_done: Script,
    remove: Script,
    push_once: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            fetch: Script::new(with_lib!("lua/limits.lua", "lua/fetch.lua")),
            settle: Script::new(with_lib!("lua/limits.lua", "lua/settle.lua")),
            take_due: Script::new(with_lib!("lua/take_due.lua")),
            unpark: Script::new(with_lib!("lua/limits.lua", "lua/unpark.lua")),
            forget: Script::new(include_str!("lua/forget.lua")),
            lock: Script::new(include_str!("lua/lock.lua")),
            unlock: Script::new(UNLOCK),
            batch_add: Script::new(include_str!("lua/batch_add.lua")),
            batch_done: Script::new(with_lib!("lua/batch_done.lua")),
            remove: Script::new(include_str!("lua/remove.lua")),
            push_once: Script::new(with_lib!("lua/push_once.lua")),
        }
    }
}

/// A broker on a Redis server, compatible with Sidekiq's keys and payloads.
///
/// Cheap to clone: clones share its two multiplexed connections (one for acknowledgements),
/// which reconnect by themselves.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    /// The acknowledgements' own connection (see [`RedisBroker::ack_conn`]).
    acks: Conn,
    keys: Keys,
    /// Replicas each push waits for, and how long (`WAIT`).
    wait: Option<(usize, Duration)>,
    scripts: Scripts,
    hub: Arc<WakeupHub>,
    tracker: Arc<Tracker>,
    /// The round trip of the last heartbeat, in microseconds (Sidekiq's `rtt_us`).
    rtt_us: AtomicU64,
    /// Processes of this broker that had running jobs at their last heartbeat.
    busy_at_last_beat: Mutex<HashSet<String>>,
    listeners: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
    }
}

impl RedisBroker {
    /// Connects to `url` with the default settings.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with(RedisConfig::new(url)).await
    }

    /// Connects with the given settings. Fails if Redis cannot be reached within the
    /// connect timeout; once connected, lost connections are re-established by themselves.
    pub async fn connect_with(config: RedisConfig) -> Result<Self, BrokerError> {
        let client = open_client(&config, ProtocolVersion::RESP2)?;
        let tracking = open_client(&config, ProtocolVersion::RESP3)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let manager = || async {
            tokio::time::timeout(
                config.connect_timeout * 2,
                ConnectionManager::new_with_config(client.clone(), manager_config.clone()),
            )
            .await
            .map_err(|_| BrokerError::Timeout(config.connect_timeout))?
            .map_err(BrokerError::from)
        };
        // Acknowledgements go through a connection of their own (`ack_conn`); both are
        // opened at once, so start-up waits for one round of connecting, not two.
        let (conn, acks) = tokio::try_join!(manager(), manager())?;
        let keys = Keys::new(config.namespace.as_deref());
        let hub = Arc::new(WakeupHub::default());
        let tracker = Arc::new(Tracker::default());
        let listeners = vec![
            tokio::spawn(listen(
                vec![client.clone()],
                vec![keys.wake.clone()],
                Arc::clone(&hub),
            )),
            tokio::spawn(track(
                tracking,
                keys.queue(""),
                keys.queues.clone(),
                Arc::clone(&tracker),
                Arc::clone(&hub),
            )),
        ];
        Ok(Self::assemble(
            Conn::Single(conn),
            Conn::Single(acks),
            keys,
            config.wait_for_replicas,
            hub,
            tracker,
            listeners,
        ))
    }

    /// A broker on one slice of a cluster: every key under `namespace` (a hash tag, so all
    /// of them in one slot), sharing `conn` and `hub` with the cluster broker that owns it,
    /// which also listens for wake-ups; no key tracking (producers on a cluster notify).
    pub(crate) fn slice(
        conn: Conn,
        namespace: &str,
        wait: Option<(usize, Duration)>,
        hub: Arc<WakeupHub>,
    ) -> Self {
        let keys = Keys::new(Some(namespace));
        Self::assemble(
            conn.clone(),
            conn,
            keys,
            wait,
            hub,
            Arc::default(),
            Vec::new(),
        )
    }

    /// The wake-up channel this broker's scripts publish on.
    pub(crate) fn wake_channel(&self) -> &str {
        &self.inner.keys.wake
    }

    fn assemble(
        conn: Conn,
        acks: Conn,
        keys: Keys,
        wait: Option<(usize, Duration)>,
        hub: Arc<WakeupHub>,
        tracker: Arc<Tracker>,
        listeners: Vec<JoinHandle<()>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn,
                acks,
                keys,
                wait,
                scripts: Scripts::new(),
                hub,
                tracker,
                rtt_us: AtomicU64::new(0),
                busy_at_last_beat: Mutex::default(),
                listeners,
            }),
        }
    }

    fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }

    /// The connection acknowledgements go through. A multiplexed connection's replies are
    /// read by one task: with the acknowledgements on a second connection, their replies
    /// and the fetches' are read side by side, and a busy worker drains 3 to 10 % faster.
    /// On a cluster slice it is the shared cluster connection.
    fn ack_conn(&self) -> Conn {
        self.inner.acks.clone()
    }
}

impl From<RedisBroker> for Arc<dyn Broker> {
    fn from(broker: RedisBroker) -> Self {
        Arc::new(broker)
    }
}
