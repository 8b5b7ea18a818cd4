//! The pub/sub listener: wakes this process's workers when any process pushes a job or
//! schedules one.

use std::sync::Arc;

use futures_util::StreamExt;

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
