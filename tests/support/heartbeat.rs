//! A heartbeat sent by hand, for tests that fetch as a process without running a worker.
//! Shared with the admin command's tests.

use std::time::Duration;

use jobqueue::Broker;

/// Records a heartbeat for `identity` that lives `ttl`, as a worker process would.
pub async fn beat(broker: &dyn Broker, identity: &str, ttl: Duration) {
    let beat = jobqueue::backend::Heartbeat {
        identity: identity.into(),
        info: "{}".into(),
        busy: 0,
        beat: std::time::SystemTime::now(),
        quiet: false,
        rss_kb: 0,
        processed: 0,
        failed: 0,
        skipped: 0,
        cancelled: 0,
        ttl,
        concurrency: 1,
        running: Vec::new(),
        classes: String::new(),
    };
    broker.heartbeat(&beat).await.expect("heartbeat");
}
