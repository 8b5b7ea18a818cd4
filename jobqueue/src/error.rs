//! Errors returned by the library.

use std::time::Duration;

/// A broker could not do what was asked of it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Redis refused the command, or the connection to it failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The Redis URL could not be used.
    #[error("invalid redis url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}; is it running and reachable?")]
    Timeout(Duration),
    /// A push reached the master but not the replicas it was configured to wait for, in
    /// time. Its jobs are queued; they are lost only if the master fails before a replica
    /// copies them. Pushing again would queue them twice.
    #[error("the push was written to the master but only {acked} of {wanted} replicas confirmed it in time; check the replicas' link (INFO replication)")]
    NotReplicated {
        /// Replicas that confirmed the writes.
        acked: usize,
        /// Replicas the push waited for.
        wanted: usize,
    },
    /// The cluster's layout could not be read or set up.
    #[error("redis cluster: {0}")]
    Cluster(String),
}

/// An enqueue, a worker start or an admin call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker failed; the operation may be retried once it is reachable again.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The job's fields could not be written as JSON arguments.
    #[error("cannot serialize the arguments of {class}: {source}")]
    Serialize {
        /// The class name of the job.
        class: &'static str,
        /// What serde reported.
        source: serde_json::Error,
    },
    /// The job's payload is larger than the client allows; nothing was pushed.
    #[error("{class} was not enqueued: its payload is {bytes} bytes, over the limit of {limit}; pass large data by reference (an id, a URL) or raise Client::max_payload_bytes")]
    PayloadTooLarge {
        /// The class name of the job.
        class: String,
        /// The payload's size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Client middleware refused the job; nothing was pushed.
    #[error("{class} was not enqueued: {reason}")]
    Skipped {
        /// The class name of the job.
        class: String,
        /// Why, as the middleware put it.
        reason: String,
    },
    /// The worker was configured in a way that cannot run safely.
    #[error("worker configuration: {0}")]
    Config(String),
    /// A job performed at enqueue (`testing::Fake::inline`) failed.
    #[error("{class} failed when performed inline: {message}")]
    PerformedInline {
        /// The class name of the job.
        class: String,
        /// The job's error.
        message: String,
    },
}
