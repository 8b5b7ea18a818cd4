//! apalis 1 with apalis-postgres 1.0 (sqlx 0.9), tuned as its configuration allows for short
//! jobs: fetch batches of 1,000 (`batch_size`, default 10), no task locks, results (the acks)
//! kept; a tower concurrency limit of `--concurrency`. Enqueue with `push_bulk`.
//!
//! - Enqueue: `push_bulk` of 10,000 jobs is one `INSERT .. SELECT unnest(..)` in a
//!   transaction. Its migrations add an `AFTER INSERT .. FOR EACH ROW` trigger that sends a
//!   `pg_notify('apalis::job::insert', ..)` per job, counted in the enqueue.
//! - Fetch: `apalis.get_jobs`, one `UPDATE .. FOR UPDATE SKIP LOCKED` of `batch_size` pending
//!   jobs, marks them `Queued`. The next fetch follows as soon as the batch is handed out (and
//!   its acks written), so a backlog needs no poll interval; after an empty fetch the worker
//!   fetches again when next woken (by its heartbeat timer, 30 s, at the latest), or by a
//!   notice with `with_pubsub()` (LISTEN/NOTIFY, which only matters to an idle worker and is
//!   left off). A sweep at `--concurrency 50`: 100 ~4k jobs/s, 500 ~10k, 1,000 to 10,000
//!   alike (10k to 15k, within the noise of a shared 2-core machine).
//! - Acks: with `persist_results` (its default) each job's result is queued on a channel of
//!   4 × `batch_size`, and once a batch is handed out the worker writes all that are queued
//!   in one transaction (one `UPDATE .. FROM jsonb_array_elements(..)` setting `Done`): ack
//!   batching is built in, sized by `batch_size`. Fetch and acks take turns on one
//!   connection, never overlapping. `persist_results(false)` would drop the acks altogether
//!   (jobs left `Queued`, run again once the worker's heartbeats lapse), so it stays on.
//! - `lock_tasks(false)` skips the `Running` update each job would queue before it runs.
//!
//! Odd: `run_at` is stored in whole seconds, and `get_jobs` takes only `run_at < now()`.
//! Emptying drops the `apalis` schema (tables, functions, trigger, migration history) and
//! runs `PostgresStorage::setup` afresh, before the clocks start. The clock stops when the
//! last job has run; the worker is then aborted, its last batch of acks unwritten.

use apalis::prelude::*;
use apalis_postgres::{Config, PgPool, PostgresStorage};
use peers::{Clock, Options, PROGRESS};

/// Jobs the worker claims with one `apalis.get_jobs` call.
const BATCH: usize = 1000;

async fn noop(_n: u64) -> Result<(), BoxDynError> {
    PROGRESS.finish_one();
    Ok(())
}

#[tokio::main]
async fn main() {
    let o = Options::parse();
    let pool = PgPool::connect(&o.postgres)
        .await
        .expect("connect to postgres");
    sqlx::query("DROP SCHEMA IF EXISTS apalis CASCADE")
        .execute(&pool)
        .await
        .expect("drop schema apalis");
    PostgresStorage::setup(&pool).await.expect("migrate apalis");

    let mut clock = Clock::start(&o);
    let config = Config::default()
        .queue("peers-apalis")
        .batch_size(BATCH)
        .lock_tasks(false)
        .persist_results(true);
    let mut storage = PostgresStorage::<u64>::new(&pool).with_config(config);
    for chunk in o.chunks() {
        storage.push_bulk(chunk.collect()).await.expect("push_bulk");
    }
    clock.enqueued();
    let worker = WorkerBuilder::new("peers-apalis-1")
        .backend(storage)
        .concurrency(o.concurrency)
        .build(noop);
    let running = tokio::spawn(worker.run());
    PROGRESS.wait_for(o.jobs).await;
    clock.report();
    running.abort();
}
