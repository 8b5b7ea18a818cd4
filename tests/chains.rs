//! Middleware chains, on both brokers: where client middleware runs, how a middleware stops
//! an enqueue or a perform, and the order of a chain.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobqueue::client::{Admission, ClientChain, ClientJob, ClientMiddleware, ClientNext, Origin};
use jobqueue::worker::{Outcome, ServerJob, ServerMiddleware, ServerNext};
use jobqueue::{async_trait, Envelope, Error, JobError, SortedSet};
use support::jobs::{self, Flaky, Note};
use support::{eventually, start, Backend};

const LIMIT: Duration = Duration::from_secs(20);

on_every_broker!(
    client_middleware_runs_on_every_enqueue_path_and_again_when_due,
    a_tenant_added_on_enqueue_is_restored_around_perform,
    client_middleware_can_refuse_a_job,
    server_middleware_can_skip_a_perform,
    server_middleware_can_reschedule_a_job,
);

type Log = Arc<Mutex<Vec<String>>>;

/// Records the origin of every job it sees.
#[derive(Clone)]
struct Origins(Log);

#[async_trait]
impl ClientMiddleware for Origins {
    async fn call(&self, job: &mut ClientJob, next: ClientNext<'_>) -> Result<Admission, Error> {
        self.0.lock().unwrap().push(format!("{:?}", job.origin));
        next.run(job).await
    }
}

fn log() -> Log {
    Arc::default()
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

async fn client_middleware_runs_on_every_enqueue_path_and_again_when_due(b: Backend) {
    let seen = log();
    let client = b.client().with(Origins(seen.clone()));
    let t = jobs::token();
    let note = |label: &str| Note::new(&t, label);
    client.enqueue(&note("now")).await.unwrap();
    client
        .enqueue_bulk(&[note("bulk 1"), note("bulk 2")])
        .await
        .unwrap();
    client
        .enqueue_in(Duration::from_millis(200), &note("later"))
        .await
        .unwrap();
    // Fails once and is retried at once.
    client
        .enqueue(&Flaky {
            token: t.clone(),
            failures: 1,
        })
        .await
        .unwrap();
    assert_eq!(entries(&seen), ["Enqueue"; 5]);

    let h = start(
        b.worker()
            .register::<Note>()
            .register::<Flaky>()
            .client_middleware(Origins(seen.clone())),
    );
    eventually(LIMIT, "every job ran", || async {
        jobs::runs(&t).len() == 6
    })
    .await;
    h.stop().await;
    let mut when_due = entries(&seen)[5..].to_vec();
    when_due.sort();
    assert_eq!(when_due, ["Retry", "Scheduled"]);
}

tokio::task_local! {
    static TENANT: String;
}

/// Puts the caller's tenant on each job, and makes it current again around perform.
#[derive(Clone)]
struct Tenant(String);

#[async_trait]
impl ClientMiddleware for Tenant {
    async fn call(&self, job: &mut ClientJob, next: ClientNext<'_>) -> Result<Admission, Error> {
        job.envelope
            .extra
            .insert("tenant".into(), self.0.clone().into());
        next.run(job).await
    }
}

#[async_trait]
impl ServerMiddleware for Tenant {
    async fn call(&self, job: &ServerJob<'_>, next: ServerNext<'_>) -> Result<Outcome, JobError> {
        let tenant = job
            .envelope
            .extra
            .get("tenant")
            .and_then(|t| t.as_str())
            .unwrap_or("none");
        TENANT.scope(tenant.to_owned(), next.run(job)).await
    }
}

/// Records the current tenant.
#[derive(serde::Serialize, serde::Deserialize, jobqueue::Job)]
struct WhoAmI {
    token: String,
}

#[async_trait]
impl jobqueue::Perform for WhoAmI {
    async fn perform(&self, _: &jobqueue::JobContext) -> Result<(), JobError> {
        let tenant = TENANT
            .try_with(Clone::clone)
            .unwrap_or_else(|_| "unset".into());
        jobs::record(&self.token, tenant);
        Ok(())
    }
}

async fn a_tenant_added_on_enqueue_is_restored_around_perform(b: Backend) {
    let t = jobs::token();
    b.client()
        .with(Tenant("acme".into()))
        .enqueue(&WhoAmI { token: t.clone() })
        .await
        .unwrap();
    b.client()
        .with(Tenant("globex".into()))
        .enqueue(&WhoAmI { token: t.clone() })
        .await
        .unwrap();
    let h = start(
        b.worker()
            .register::<WhoAmI>()
            .middleware(Tenant("server".into())),
    );
    eventually(LIMIT, "both jobs ran", || async {
        jobs::runs(&t).len() == 2
    })
    .await;
    h.stop().await;
    let mut tenants = jobs::labels(&t);
    tenants.sort();
    assert_eq!(tenants, ["acme", "globex"]);
}

/// Refuses jobs labelled "spam".
struct NoSpam;

#[async_trait]
impl ClientMiddleware for NoSpam {
    async fn call(&self, job: &mut ClientJob, next: ClientNext<'_>) -> Result<Admission, Error> {
        if job.envelope.args[0]["label"] == "spam" {
            return Err(Error::Skipped {
                class: job.envelope.class.clone(),
                reason: "labelled spam".into(),
            });
        }
        next.run(job).await
    }
}

async fn client_middleware_can_refuse_a_job(b: Backend) {
    let t = jobs::token();
    let client = b.client().with(NoSpam);
    let note = |label: &str| Note::new(&t, label);
    let err = client.enqueue(&note("spam")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Skipped { reason, .. } if reason == "labelled spam"),
        "{err}"
    );
    assert_eq!(err.to_string(), "Note was not enqueued: labelled spam");
    let jids = client
        .enqueue_bulk(&[note("ham"), note("spam"), note("eggs")])
        .await
        .unwrap();
    assert!(jids[0].is_some() && jids[1].is_none() && jids[2].is_some());
    assert_eq!(b.admin().queue("default").await.unwrap().size, 2);
}

/// Skips jobs whose label starts with "skip".
struct SkipSome;

#[async_trait]
impl ServerMiddleware for SkipSome {
    async fn call(&self, job: &ServerJob<'_>, next: ServerNext<'_>) -> Result<Outcome, JobError> {
        let label = job.envelope.args[0]["label"].as_str().unwrap_or_default();
        if label.starts_with("skip") {
            return Ok(Outcome::Skipped {
                reason: "told to".into(),
            });
        }
        next.run(job).await
    }
}

async fn server_middleware_can_skip_a_perform(b: Backend) {
    let t = jobs::token();
    for label in ["skip me", "run me", "skip me too"] {
        b.client().enqueue(&Note::new(&t, label)).await.unwrap();
    }
    let h = start(b.worker().register::<Note>().middleware(SkipSome));
    eventually(LIMIT, "all three counted", || async {
        b.admin().stats().await.unwrap().processed == 3
    })
    .await;
    h.stop().await;
    assert_eq!(jobs::labels(&t), ["run me"]);
    let stats = b.admin().stats().await.unwrap();
    assert_eq!((stats.skipped, stats.failed), (2, 0));
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
    assert_eq!(b.admin().set_size(SortedSet::Dead).await.unwrap(), 0);
}

/// Sends every job away once, 200 ms later.
struct NotYet(Log);

#[async_trait]
impl ServerMiddleware for NotYet {
    async fn call(&self, job: &ServerJob<'_>, next: ServerNext<'_>) -> Result<Outcome, JobError> {
        let first_time = {
            let mut seen = self.0.lock().unwrap();
            let first = !seen.contains(&job.envelope.jid);
            seen.push(job.envelope.jid.clone());
            first
        };
        if first_time {
            return Ok(Outcome::Reschedule {
                after: Duration::from_millis(200),
                reason: "not yet".into(),
            });
        }
        next.run(job).await
    }
}

async fn server_middleware_can_reschedule_a_job(b: Backend) {
    let t = jobs::token();
    let jid = b
        .client()
        .enqueue(&Note::new(&t, "patience"))
        .await
        .unwrap();
    let seen = log();
    let h = start(
        b.worker()
            .register::<Note>()
            .middleware(NotYet(seen.clone())),
    );
    eventually(LIMIT, "the job ran on its second turn", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    h.stop().await;
    assert_eq!(entries(&seen), [jid.clone(), jid]);
    assert_eq!(b.admin().stats().await.unwrap().failed, 0);
}

macro_rules! tracer {
    ($name:ident) => {
        struct $name(Log);

        #[async_trait]
        impl ClientMiddleware for $name {
            async fn call(
                &self,
                job: &mut ClientJob,
                next: ClientNext<'_>,
            ) -> Result<Admission, Error> {
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("{}>", stringify!($name)));
                let result = next.run(job).await;
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("<{}", stringify!($name)));
                result
            }
        }
    };
}

tracer!(A);
tracer!(B);
tracer!(C);

/// What the tracers saw while `chain` ran once.
async fn trace(chain: &ClientChain) -> Vec<String> {
    TRACE.lock().unwrap().clear();
    let mut job = ClientJob {
        envelope: Envelope::new("X", "default", vec![]),
        at: None,
        options: None,
        origin: Origin::Enqueue,
        store: Arc::new(jobqueue::MemoryBroker::new()),
    };
    assert_eq!(chain.run(&mut job).await.unwrap(), Admission::Push);
    entries(&TRACE)
}

static TRACE: std::sync::LazyLock<Log> = std::sync::LazyLock::new(Log::default);

#[tokio::test]
async fn chains_run_outermost_first_and_can_be_edited() {
    let mut chain = ClientChain::new();
    chain.add(A(TRACE.clone())).add(C(TRACE.clone()));
    chain.insert_before::<C, _>(B(TRACE.clone()));
    assert_eq!(trace(&chain).await, ["A>", "B>", "C>", "<C", "<B", "<A"]);
    assert!(chain.contains::<B>());

    assert!(chain.remove::<B>());
    assert!(!chain.remove::<B>());
    chain.prepend(C(TRACE.clone())); // moves C first: a type appears once
    assert_eq!(chain.names().len(), 2);
    assert_eq!(trace(&chain).await, ["C>", "A>", "<A", "<C"]);

    chain.insert_after::<C, _>(B(TRACE.clone()));
    assert_eq!(trace(&chain).await, ["C>", "B>", "A>", "<A", "<B", "<C"]);
    chain.add(C(TRACE.clone())); // moves C last
    assert_eq!(trace(&chain).await, ["B>", "A>", "C>", "<C", "<A", "<B"]);
}
