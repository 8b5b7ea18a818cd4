//! Wake-ups from Redis: this process's workers wake when a job is pushed or scheduled by
//! anyone. Our own producers publish on the wake channel ([`listen`]); producers that do not
//! (Ruby Sidekiq's client, a plain `LPUSH`) are seen through Redis's client-side-caching
//! invalidations ([`track`]): Redis tells us whenever a queue or the schedule or retry set
//! changes, at no cost while idle.

use std::sync::Arc;

use futures_util::StreamExt;

use redis::{AsyncConnectionConfig, PushKind, Value};
use tokio::sync::mpsc;

use super::super::{backoff, WakeupHub, MAX_BACKOFF};

/// Follows the wake channel and wakes this process's workers; reconnects when the
/// connection drops, waking everyone since a message may have been missed meanwhile.
pub(super) async fn listen(client: redis::Client, channel: String, hub: Arc<WakeupHub>) {
    let mut delays = backoff();
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(&channel).await.is_ok() {
                    delays = backoff();
                    hub.wake(true, true);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let scheduled = msg.get_payload_bytes() == b"scheduled";
                        hub.wake(!scheduled, scheduled);
                    }
                }
            }
            Err(e) => tracing::debug!("wake-up channel: {e}"),
        }
        tokio::time::sleep(delays.next().unwrap_or(MAX_BACKOFF)).await;
    }
}

/// Follows changes to the `watched` key prefixes (any queue; the schedule and retry sets)
/// with `CLIENT TRACKING ... BCAST` on a RESP3 connection, and wakes this process's workers.
/// Where Redis refuses tracking (an ACL without it, a server that predates it), it logs once
/// and stops: workers then find such jobs at their `idle_poll`.
pub(super) async fn track(client: redis::Client, watched: [String; 3], hub: Arc<WakeupHub>) {
    let mut delays = backoff();
    loop {
        let (pushes, mut received) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new().set_push_sender(pushes);
        match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            // The connection stays open while its pushes are read, until this arm ends.
            Ok(mut conn) => {
                let mut tracking = redis::cmd("CLIENT");
                tracking.arg("TRACKING").arg("ON").arg("BCAST");
                for prefix in &watched {
                    tracking.arg("PREFIX").arg(prefix);
                }
                match tracking.query_async::<()>(&mut conn).await {
                    Ok(()) => {
                        delays = backoff();
                        // Changes made while we were not listening.
                        hub.wake(true, true);
                        while let Some(push) = received.recv().await {
                            match push.kind {
                                PushKind::Invalidate => {
                                    let (queued, scheduled) = classify(&push.data, &watched);
                                    hub.wake(queued, scheduled);
                                }
                                PushKind::Disconnection => break,
                                _ => {}
                            }
                        }
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

/// Whether an invalidation names a queue, and whether it names the schedule or retry set.
/// No key at all (a flush) wakes both.
fn classify(data: &[Value], watched: &[String; 3]) -> (bool, bool) {
    let mut keys = Vec::new();
    collect_keys(data, &mut keys);
    if keys.is_empty() {
        return (true, true);
    }
    let queued = keys.iter().any(|k| k.starts_with(watched[0].as_bytes()));
    let scheduled = keys
        .iter()
        .any(|k| *k == watched[1].as_bytes() || *k == watched[2].as_bytes());
    (queued, scheduled)
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
