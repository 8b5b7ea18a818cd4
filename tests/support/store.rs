//! Views of a broker the tests read often, in one call each, over the storage interface.

use async_trait::async_trait;
use jobqueue::backend::{Location, SortedSet, Span};
use jobqueue::{Broker, BrokerError};

/// Reads of a broker's queues, sets, in-flight lists and keys, as the tests use them.
#[async_trait]
pub trait StoreExt {
    /// Every job in the in-flight list of `process`, newest first.
    async fn in_flight(&self, process: &str) -> Result<Vec<String>, BrokerError>;
    /// How many jobs wait in `queue`.
    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError>;
    /// The next job of `queue`.
    async fn queue_oldest(&self, queue: &str) -> Result<Option<String>, BrokerError>;
    /// Up to `count` jobs of `queue` from `offset`, the next first.
    async fn queue_range(
        &self,
        queue: &str,
        offset: usize,
        count: usize,
    ) -> Result<Vec<String>, BrokerError>;
    /// Up to `count` jobs of `set` from `offset`, with their scores in epoch seconds.
    async fn set_range(
        &self,
        set: SortedSet,
        offset: usize,
        count: usize,
    ) -> Result<Vec<(f64, String)>, BrokerError>;
    /// The value at `key` of the key/value store.
    async fn lock_holder(&self, key: &str) -> Result<Option<String>, BrokerError>;
}

#[async_trait]
impl<B: Broker + ?Sized> StoreExt for B {
    async fn in_flight(&self, process: &str) -> Result<Vec<String>, BrokerError> {
        let all = Span::page(0, usize::MAX);
        let held = self.range(Location::InFlight(process), all).await?;
        Ok(held.into_iter().map(|e| e.payload).collect())
    }

    async fn queue_len(&self, queue: &str) -> Result<usize, BrokerError> {
        self.len(Location::Queue(queue)).await
    }

    async fn queue_oldest(&self, queue: &str) -> Result<Option<String>, BrokerError> {
        Ok(self.queue_range(queue, 0, 1).await?.pop())
    }

    async fn queue_range(
        &self,
        queue: &str,
        offset: usize,
        count: usize,
    ) -> Result<Vec<String>, BrokerError> {
        let page = self
            .range(Location::Queue(queue), Span::page(offset, count))
            .await?;
        Ok(page.into_iter().map(|e| e.payload).collect())
    }

    async fn set_range(
        &self,
        set: SortedSet,
        offset: usize,
        count: usize,
    ) -> Result<Vec<(f64, String)>, BrokerError> {
        let page = self
            .range(Location::Set(set), Span::page(offset, count))
            .await?;
        Ok(page
            .into_iter()
            .map(|e| {
                let at = e.at.unwrap_or(std::time::UNIX_EPOCH);
                let secs = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                (secs, e.payload)
            })
            .collect())
    }

    async fn lock_holder(&self, key: &str) -> Result<Option<String>, BrokerError> {
        self.get(key).await
    }
}

/// A fetch of up to `max` jobs from `queues`, applying limits with `lease` when given and
/// reading collapse markers when asked.
pub fn request(
    queues: &[String],
    max: usize,
    lease: Option<std::time::Duration>,
    markers: bool,
) -> jobqueue::backend::Fetch<'_> {
    let mut fetch = jobqueue::backend::Fetch::new(queues, max);
    if let Some(lease) = lease {
        fetch = fetch.limits(lease);
    }
    if markers {
        fetch = fetch.markers();
    }
    fetch
}

/// A time in epoch seconds.
pub fn secs(at: std::time::SystemTime) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
