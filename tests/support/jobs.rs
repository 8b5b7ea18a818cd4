//! Jobs used by the tests. Each records what happened under a token unique to its test.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
use serde::{Deserialize, Serialize};

/// A run: its label and start time in epoch seconds.
type Run = (String, f64);

/// What ran, per token.
static RUNS: LazyLock<Mutex<HashMap<String, Vec<Run>>>> = LazyLock::new(Default::default);

pub fn record(token: &str, label: impl Into<String>) {
    RUNS.lock()
        .unwrap()
        .entry(token.to_owned())
        .or_default()
        .push((label.into(), now()));
}

pub fn runs(token: &str) -> Vec<Run> {
    RUNS.lock().unwrap().get(token).cloned().unwrap_or_default()
}

pub fn labels(token: &str) -> Vec<String> {
    runs(token).into_iter().map(|(l, _)| l).collect()
}

pub fn token() -> String {
    jobqueue::envelope::new_jid()
}

/// Records its label and succeeds.
#[derive(Serialize, Deserialize, Job, Debug, Clone)]
#[job(queue = "default", idempotent)]
pub struct Note {
    pub token: String,
    pub label: String,
}

impl Note {
    pub fn new(token: &str, label: impl Into<String>) -> Self {
        Self {
            token: token.to_owned(),
            label: label.into(),
        }
    }
}

#[async_trait]
impl Perform for Note {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        record(&self.token, &self.label);
        Ok(())
    }
}

/// Like `Note`, on a queue named by the test.
#[derive(Serialize, Deserialize, Job, Debug, Clone)]
#[job(name = "QueuedNote")]
pub struct QueuedNote {
    pub token: String,
    pub label: String,
}

#[async_trait]
impl Perform for QueuedNote {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        record(&self.token, &self.label);
        Ok(())
    }
}

/// Idempotent (one retry); fails while `failures` is above the run number; retries at once.
#[derive(Serialize, Deserialize, Job, Debug)]
#[job(idempotent)]
pub struct Flaky {
    pub token: String,
    pub failures: u32,
}

#[async_trait]
impl Perform for Flaky {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        record(&self.token, format!("run {}", ctx.retries));
        if ctx.retries < self.failures {
            return Err(
                JobError::new(format!("planned failure {}", ctx.retries)).with_class("Planned")
            );
        }
        Ok(())
    }

    fn retry_in(&self, _count: u32, _error: &JobError) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

/// Idempotent, always fails, Sidekiq's default backoff.
#[derive(Serialize, Deserialize, Job, Debug)]
#[job(idempotent)]
pub struct AlwaysFails {
    pub token: String,
}

#[async_trait]
impl Perform for AlwaysFails {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        record(&self.token, "ran");
        Err(std::io::Error::other("disk on fire").into())
    }
}

/// Not idempotent: never retried.
#[derive(Serialize, Deserialize, Job, Debug)]
pub struct ChargeCard {
    pub token: String,
}

#[async_trait]
impl Perform for ChargeCard {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        record(&self.token, "ran");
        Err(JobError::new("card declined").with_class("Declined"))
    }
}

/// Panics.
#[derive(Serialize, Deserialize, Job, Debug)]
#[job(idempotent, retries = 0)]
pub struct Panics {
    pub token: String,
}

#[async_trait]
impl Perform for Panics {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        record(&self.token, "ran");
        panic!("index out of bounds in test job");
    }
}

/// Sleeps, then records.
#[derive(Serialize, Deserialize, Job, Debug)]
#[job(idempotent)]
pub struct Sleeps {
    pub token: String,
    pub millis: u64,
}

#[async_trait]
impl Perform for Sleeps {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        record(&self.token, "started");
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        record(&self.token, "finished");
        Ok(())
    }
}

/// Sleeps `millis`, but may run for one second at most.
#[derive(Serialize, Deserialize, Job, Debug)]
#[job(timeout = "1s")]
pub struct Bounded {
    pub token: String,
    pub millis: u64,
}

#[async_trait]
impl Perform for Bounded {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        record(&self.token, "started");
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        record(&self.token, "finished");
        Ok(())
    }
}

/// The current time in float epoch seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A shop's job: at most two of a shop run at once. Records `+shop` as it starts and
/// `-shop` as it ends.
#[derive(Serialize, Deserialize, Job, Debug, Clone)]
#[job(idempotent, concurrency(limit = 2, key = "shop"))]
pub struct ShopJob {
    pub token: String,
    pub shop: String,
    pub millis: u64,
}

#[async_trait]
impl Perform for ShopJob {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        record(&self.token, format!("+{}", self.shop));
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        record(&self.token, format!("-{}", self.shop));
        Ok(())
    }
}

/// An account's job: at most five of an account start per second. Records the account.
#[derive(Serialize, Deserialize, Job, Debug, Clone)]
#[job(idempotent, rate(limit = 5, per = "1s", key = "account"))]
pub struct AccountJob {
    pub token: String,
    pub account: String,
}

#[async_trait]
impl Perform for AccountJob {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        record(&self.token, &self.account);
        Ok(())
    }
}

/// The most jobs of `shop` running at once in a token's `+shop` / `-shop` records.
pub fn most_at_once(token: &str, shop: &str) -> usize {
    let (start, end) = (format!("+{shop}"), format!("-{shop}"));
    let (mut now, mut most) = (0usize, 0usize);
    for label in labels(token) {
        if label == start {
            now += 1;
            most = most.max(now);
        } else if label == end {
            now = now.saturating_sub(1);
        }
    }
    most
}
