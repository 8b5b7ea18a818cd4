//! Wake-ups from Redis: this process's workers wake when a job is pushed or scheduled by
//! anyone. Our own producers publish on the wake channel ([`listen`]); producers that do not
//! (Ruby Sidekiq's client, a plain `LPUSH`) are seen through Redis's client-side caching
//! ([`Tracker`]): an idle worker reads the keys it waits on through a tracking connection,
//! and Redis tells it once when any of them changes. Nothing is sent while a worker is
//! idle, and nothing while it is busy either, since only idle workers arm the keys.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushKind, Value};
use tokio::sync::mpsc;

use crate::error::BrokerError;
use crate::metrics;

use super::super::{backoff, lock, WakeupHub, MAX_BACKOFF};

/// What a cancel notice on the wake channel starts with; the job id follows.
pub(super) const CANCEL_NOTICE: &str = "cancel:";

/// Follows the wake channels and wakes this process's workers, and hears cancel notices; reconnects when the
/// connection drops, through the next of `clients` (the nodes of a cluster, any of which
/// hears every publication), waking everyone since a message may have been missed meanwhile.
pub(crate) async fn listen(
    clients: Vec<redis::Client>,
    channels: Vec<String>,
    hub: Arc<WakeupHub>,
) {
    let mut delays = backoff();
    let mut connected_before = false;
    for client in clients.iter().cycle() {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(&channels).await.is_ok() {
                    if std::mem::replace(&mut connected_before, true) {
                        metrics::reconnected("wake");
                    }
                    delays = backoff();
                    hub.wake(true, true);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let payload = msg.get_payload_bytes();
                        match payload.strip_prefix(CANCEL_NOTICE.as_bytes()) {
                            Some(jid) => hub.cancel(&String::from_utf8_lossy(jid)),
                            None => {
                                let scheduled = payload == b"scheduled";
                                hub.wake(!scheduled, scheduled);
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::debug!("wake-up channel: {e}"),
        }
        tokio::time::sleep(delays.next().unwrap_or(MAX_BACKOFF)).await;
    }
}

/// A RESP3 connection with `CLIENT TRACKING ON`, and the keys armed on it: read through
/// it since their last change, so Redis will say when they next change.
#[derive(Default)]
pub(super) struct Tracker {
    conn: Mutex<Option<MultiplexedConnection>>,
    armed: Mutex<HashSet<String>>,
}

impl Tracker {
    /// Arms `keys` that are not armed yet: the next change to any of them, by anyone, wakes
    /// this process. Returns whether any key was newly armed; the caller then looks once
    /// more, for a change made before the key was armed. Without a tracking connection
    /// (not yet connected, or refused by the server) nothing is armed and workers poll.
    pub(super) async fn arm(&self, keys: Vec<String>) -> Result<bool, BrokerError> {
        let Some(mut conn) = lock(&self.conn).clone() else {
            return Ok(false);
        };
        let fresh: Vec<String> = {
            let mut armed = lock(&self.armed);
            // Marked before the read, so an invalidation that overtakes the reply unmarks it.
            keys.into_iter()
                .filter(|k| armed.insert(k.clone()))
                .collect()
        };
        if fresh.is_empty() {
            return Ok(false);
        }
        let read = redis::cmd("EXISTS")
            .arg(&fresh)
            .query_async::<i64>(&mut conn)
            .await;
        if let Err(e) = read {
            let mut armed = lock(&self.armed);
            for key in &fresh {
                armed.remove(key);
            }
            return Err(e.into());
        }
        Ok(true)
    }

    /// Forgets armed keys that changed (all of them when no key is named: a flush).
    fn changed(&self, keys: &[&[u8]]) {
        let mut armed = lock(&self.armed);
        if keys.is_empty() {
            armed.clear();
        } else {
            armed.retain(|k| !keys.contains(&k.as_bytes()));
        }
    }

    fn set_connection(&self, conn: Option<MultiplexedConnection>) {
        *lock(&self.conn) = conn;
        lock(&self.armed).clear();
    }
}

/// Keeps the tracking connection of `tracker` up and wakes this process's workers when an
/// armed key changes: a queue (`queue_prefix`), or the schedule or retry set. Where Redis
/// refuses tracking (an ACL without it, a server that predates it), it logs once and stops:
/// workers then find such jobs at their `idle_poll`.
pub(super) async fn track(
    client: redis::Client,
    queue_prefix: String,
    queues_key: String,
    tracker: Arc<Tracker>,
    hub: Arc<WakeupHub>,
) {
    let mut delays = backoff();
    let mut connected_before = false;
    loop {
        let (pushes, mut received) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new().set_push_sender(pushes);
        match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(mut conn) => {
                let on = redis::cmd("CLIENT")
                    .arg("TRACKING")
                    .arg("ON")
                    .query_async::<()>(&mut conn)
                    .await;
                match on {
                    Ok(()) => {
                        if std::mem::replace(&mut connected_before, true) {
                            metrics::reconnected("tracking");
                        }
                        delays = backoff();
                        tracker.set_connection(Some(conn));
                        // Changes made while nothing was armed.
                        hub.wake(true, true);
                        while let Some(push) = received.recv().await {
                            match push.kind {
                                PushKind::Invalidate => {
                                    let mut keys = Vec::new();
                                    collect_keys(&push.data, &mut keys);
                                    tracker.changed(&keys);
                                    let queued = keys.is_empty()
                                        || keys.iter().any(|k| {
                                            k.starts_with(queue_prefix.as_bytes())
                                                || *k == queues_key.as_bytes()
                                        });
                                    let scheduled = keys.is_empty()
                                        || keys.iter().any(|k| {
                                            !k.starts_with(queue_prefix.as_bytes())
                                                && *k != queues_key.as_bytes()
                                        });
                                    hub.wake(queued, scheduled);
                                }
                                PushKind::Disconnection => break,
                                _ => {}
                            }
                        }
                        tracker.set_connection(None);
                    }
                    Err(e) if !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) => {
                        tracing::info!(
                            "redis refused key tracking ({e}); idle workers find jobs pushed by \
                             other producers at their idle_poll"
                        );
                        return;
                    }
                    Err(e) => tracing::debug!("key tracking: {e}"),
                }
            }
            Err(e) => tracing::debug!("key tracking: {e}"),
        }
        tokio::time::sleep(delays.next().unwrap_or(MAX_BACKOFF)).await;
    }
}

fn collect_keys<'a>(values: &'a [Value], keys: &mut Vec<&'a [u8]>) {
    for value in values {
        match value {
            Value::BulkString(bytes) => keys.push(bytes),
            Value::SimpleString(text) => keys.push(text.as_bytes()),
            Value::Array(inner) | Value::Set(inner) => collect_keys(inner, keys),
            _ => {}
        }
    }
}
