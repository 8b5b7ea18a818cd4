//! bullmq-rs 2.2, BullMQ's Rust port (BullMQ v5's Redis layout and Lua scripts), with its
//! defaults but for `--concurrency`: job locks renewed, stalled-job checks, completed jobs
//! kept. Enqueue with `add_bulk`.

use bullmq_rs::{QueueBuilder, RedisConnection, WorkerBuilder};
use peers::{Options, Run, PROGRESS};

#[tokio::main]
async fn main() {
    let o = Options::parse();
    let mut run = Run::start(&o).await;
    let conn = RedisConnection::new(o.redis.as_str());
    let queue = QueueBuilder::new("peers-bullmq")
        .connection(conn.clone())
        .build::<u64>()
        .await
        .expect("a queue");
    for chunk in o.chunks() {
        let jobs = chunk.map(|i| ("noop".to_owned(), i, None)).collect();
        queue.add_bulk(jobs).await.expect("add_bulk");
    }
    run.enqueued();
    let worker = WorkerBuilder::new("peers-bullmq")
        .connection(conn)
        .concurrency(o.concurrency)
        .build::<u64>();
    let handle = worker
        .start(|_job| async move {
            PROGRESS.finish_one();
            Ok(())
        })
        .await
        .expect("a worker");
    PROGRESS.wait_for(o.jobs).await;
    run.report().await;
    handle.shutdown();
}
