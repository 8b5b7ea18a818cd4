//! apalis 1 with apalis-redis 1, tuned as its configuration documents for short jobs: no
//! task locks (no lease renewal), no pubsub events, no stored results, fetch batches of
//! 1,000; a tower concurrency limit of `--concurrency`. Enqueue with `push_bulk`.
//!
//! apalis-redis 1.0 puts every pushed task in its scheduled set, due now, and its fetch
//! script promotes all due tasks with one Lua `unpack`, which fails beyond about 8,000
//! (Lua's stack limit): a backlog of 100,000 never starts. So the harness promotes them
//! itself before the worker starts, a thousand at a time, as that script does (onto the
//! active list, then a signal), and counts it in the enqueue.

use apalis::prelude::*;
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use peers::{Options, Run, PROGRESS};

async fn noop(_n: u64) -> Result<(), BoxDynError> {
    PROGRESS.finish_one();
    Ok(())
}

#[tokio::main]
async fn main() {
    let o = Options::parse();
    let mut run = Run::start(&o).await;
    let conn = apalis_redis::connect(o.redis.as_str())
        .await
        .expect("connect to redis");
    let config = Config::default()
        .queue("peers-apalis")
        .batch_size(1000)
        .lock_tasks(false)
        .emit_events(false)
        .persist_results(false);
    let mut storage = RedisStorage::<u64>::new(conn).with_config(config);
    for chunk in o.chunks() {
        storage.push_bulk(chunk.collect()).await.expect("push_bulk");
    }
    promote(&mut storage).await;
    run.enqueued();
    let worker = WorkerBuilder::new("peers-apalis-1")
        .backend(storage)
        .concurrency(o.concurrency)
        .build(noop);
    let running = tokio::spawn(worker.run());
    PROGRESS.wait_for(o.jobs).await;
    run.report().await;
    running.abort();
}

/// Moves the due tasks from the scheduled set to the active list, as `fetch_next.lua` does,
/// in slices small enough for Redis.
async fn promote(storage: &mut RedisStorage<u64>) {
    let config = storage.get_config().clone();
    let conn: &mut ConnectionManager = storage.get_connection();
    loop {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(config.scheduled_jobs_set())
            .arg(0)
            .arg(999)
            .query_async(conn)
            .await
            .expect("ZRANGE");
        if ids.is_empty() {
            break;
        }
        let _: () = redis::pipe()
            .atomic()
            .cmd("RPUSH")
            .arg(config.active_jobs_list())
            .arg(&ids)
            .cmd("ZREM")
            .arg(config.scheduled_jobs_set())
            .arg(&ids)
            .query_async(conn)
            .await
            .expect("promote");
    }
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(config.signal_list())
        .cmd("LPUSH")
        .arg(config.signal_list())
        .arg(1)
        .query_async(conn)
        .await
        .expect("signal");
}
