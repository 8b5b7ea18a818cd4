//! rusty-sidekiq 0.15 (Sidekiq's wire format in Rust): `--concurrency` workers, each
//! fetching with `BRPOP` (no reliable fetch: a job in flight when the process dies is
//! lost), with its default middleware (retries, stats). It has no bulk enqueue: jobs go in
//! with `perform_async`, 64 at a time.

use async_trait::async_trait;
use futures::StreamExt;
use peers::{Options, Run, PROGRESS};
use sidekiq::{Processor, ProcessorConfig, RedisConnectionManager, Worker};

#[derive(Clone)]
struct Noop;

#[async_trait]
impl Worker<u64> for Noop {
    fn opts() -> sidekiq::WorkerOpts<u64, Self> {
        sidekiq::WorkerOpts::new().queue("peers-sidekiq")
    }

    async fn perform(&self, _n: u64) -> sidekiq::Result<()> {
        PROGRESS.finish_one();
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let o = Options::parse();
    let mut run = Run::start(&o).await;
    // The README asks for separate pools for enqueueing and fetching.
    let producer = pool(&o.redis, 64).await;
    futures::stream::iter(0..o.jobs)
        .map(|n| {
            let producer = producer.clone();
            async move { Noop::perform_async(&producer, n).await }
        })
        .buffer_unordered(64)
        .for_each(|r| async move { r.expect("perform_async") })
        .await;
    run.enqueued();
    // Each worker holds a connection in BRPOP; leave room for the stats publisher.
    let mut processor = Processor::new(
        pool(&o.redis, o.concurrency + 4).await,
        vec!["peers-sidekiq".into()],
    )
    .with_config(ProcessorConfig::default().num_workers(o.concurrency));
    processor.register(Noop);
    let stop = processor.get_cancellation_token();
    let running = tokio::spawn(processor.run());
    PROGRESS.wait_for(o.jobs).await;
    run.report().await;
    stop.cancel();
    running.abort();
}

async fn pool(url: &str, size: usize) -> sidekiq::RedisPool {
    let manager = RedisConnectionManager::new(url).expect("a redis URL");
    bb8::Pool::builder()
        .max_size(size as u32)
        .build(manager)
        .await
        .expect("a connection pool")
}
