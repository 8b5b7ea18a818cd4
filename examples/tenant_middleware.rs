//! A custom middleware: the client side stamps each job with the tenant it was enqueued
//! for; the server side makes that tenant current again around perform.
//! `cargo run --example tenant_middleware`.

mod common;

use std::time::Duration;

use jobqueue::client::{Admission, ClientJob, ClientMiddleware, ClientNext};
use jobqueue::worker::{Outcome, ServerJob, ServerMiddleware, ServerNext};
use jobqueue::{async_trait, Client, Error, Job, JobContext, JobError, Perform, Worker};
use serde::{Deserialize, Serialize};

tokio::task_local! {
    /// The tenant the current code runs for.
    static TENANT: String;
}

/// Carries the tenant from the enqueuing code to the job.
#[derive(Clone)]
struct TenantMiddleware;

#[async_trait]
impl ClientMiddleware for TenantMiddleware {
    async fn call(&self, job: &mut ClientJob, next: ClientNext<'_>) -> Result<Admission, Error> {
        if let Ok(tenant) = TENANT.try_with(Clone::clone) {
            job.envelope.extra.insert("tenant".into(), tenant.into());
        }
        next.run(job).await
    }
}

#[async_trait]
impl ServerMiddleware for TenantMiddleware {
    async fn call(&self, job: &ServerJob<'_>, next: ServerNext<'_>) -> Result<Outcome, JobError> {
        match job.envelope.extra.get("tenant").and_then(|t| t.as_str()) {
            Some(tenant) => TENANT.scope(tenant.to_owned(), next.run(job)).await,
            None => next.run(job).await,
        }
    }
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "reports", idempotent)]
struct BuildReport {
    month: String,
}

#[async_trait]
impl Perform for BuildReport {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        let tenant = TENANT
            .try_with(Clone::clone)
            .unwrap_or_else(|_| "(none)".into());
        println!("  report for {} built for tenant {tenant}", self.month);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = common::broker("tenants").await?;
    let client = Client::new(broker.clone()).with(TenantMiddleware);
    for tenant in ["acme", "globex"] {
        let job = BuildReport {
            month: "2026-10".into(),
        };
        TENANT.scope(tenant.into(), client.enqueue(&job)).await?;
    }
    let worker = Worker::builder(broker)
        .install(TenantMiddleware)
        .register::<BuildReport>();
    common::run_for(worker, Duration::from_secs(1)).await?;
    Ok(())
}
