//! The middleware that turns `#[job(collapsible)]`, `#[job(unique)]` and
//! `#[job(external)]` into behaviour, on any jobqueue broker.
//!
//! ```no_run
//! use jobqueue::{Client, RedisBroker, Worker};
//! use jobqueue_middleware::{Collapse, Unique};
//! # #[derive(serde::Serialize, serde::Deserialize, jobqueue::Job)]
//! # #[job(collapsible)]
//! # struct RefreshBalance { account_id: u64 }
//! # #[jobqueue::async_trait]
//! # impl jobqueue::Perform for RefreshBalance {
//! #     async fn perform(&self, _: &jobqueue::JobContext) -> Result<(), jobqueue::JobError> { Ok(()) }
//! # }
//!
//! # async fn run() -> Result<(), jobqueue::Error> {
//! let broker = RedisBroker::connect("redis://127.0.0.1:6379").await?;
//! // Producers: the client side of each mechanism.
//! let client = Client::new(broker.clone()).with(Collapse::new()).with(Unique::new());
//! client.enqueue(&RefreshBalance { account_id: 7 }).await?;
//! // Workers: both sides.
//! Worker::builder(broker)
//!     .install(Collapse::new())
//!     .install(Unique::new())
//!     .register::<RefreshBalance>()
//!     .build()?
//!     .run()
//!     .await
//! # }
//! ```

#![deny(missing_docs)]

pub mod collapse;
pub mod external;
mod key;
pub mod unique;

pub use collapse::Collapse;
pub use external::{call, Call, CallError, CallPolicy};
pub use unique::Unique;

use jobqueue::middleware::Outcome;
use jobqueue::BrokerError;

/// How long a job waits when the broker could not be asked about its lock or marker.
const BROKER_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// A job whose lock or marker cannot be read now runs later, neither unguarded nor failed.
fn broker_unavailable(what: &str, error: &BrokerError) -> Outcome {
    Outcome::Reschedule {
        after: BROKER_RETRY,
        reason: format!("cannot read {what}: {error}"),
    }
}
