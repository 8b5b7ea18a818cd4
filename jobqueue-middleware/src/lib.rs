//! Optional building blocks for jobqueue jobs: call-level retries for `#[job(external)]`
//! jobs ([`call`]), with idempotency keys and a ready classifier for HTTP answers.
//!
//! The mechanisms a job's attribute demands (collapse markers and the stale-job stopper for
//! `collapsible`, uniqueness locks for `unique`) are not here: every `jobqueue` client and
//! worker applies them itself, so they cannot be left out.

#![deny(missing_docs)]

pub mod external;
mod key;

pub use external::{call, Call, CallError, CallPolicy};
