//! CPU cost of the engine's per-job steps, without Redis: payload encode and decode, the
//! derive-generated path from a struct to a payload and back, middleware chain overhead,
//! and the in-memory broker end to end. `cargo bench --bench engine`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use jobqueue::client::{Admission, ClientChain, ClientJob, ClientMiddleware, ClientNext, Origin};
use jobqueue::envelope::{decode_args, encode_args};
use jobqueue::{
    async_trait, Client, Envelope, Error, Job, JobContext, JobError, MemoryBroker, Perform, Worker,
};
use serde::{Deserialize, Serialize};

/// A typical job: a few ids and a short string.
#[derive(Serialize, Deserialize, Job, Clone)]
#[job(queue = "player_data", idempotent)]
struct RecomputeSegment {
    segment_id: u64,
    player_id: u64,
    reason: String,
}

static DONE: AtomicU64 = AtomicU64::new(0);

#[async_trait]
impl Perform for RecomputeSegment {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        DONE.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn job() -> RecomputeSegment {
    RecomputeSegment {
        segment_id: 42,
        player_id: 7_000_001,
        reason: "level up".into(),
    }
}

fn payload() -> String {
    let mut envelope = Envelope::new(
        RecomputeSegment::NAME,
        "player_data",
        encode_args(&job()).unwrap(),
    );
    envelope.enqueued_at = envelope.created_at;
    envelope.to_json()
}

fn envelope_benches(c: &mut Criterion) {
    let text = payload();
    let parsed = Envelope::parse(&text).unwrap();
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode", |b| {
        b.iter(|| Envelope::parse(std::hint::black_box(&text)).unwrap())
    });
    group.bench_function("encode", |b| {
        b.iter(|| std::hint::black_box(&parsed).to_json())
    });
    group.finish();

    // What #[derive(Job)] plus serde do for each job: struct -> args -> payload -> struct.
    let mut group = c.benchmark_group("derived_job");
    group.throughput(Throughput::Elements(1));
    group.bench_function("round_trip", |b| {
        let job = job();
        b.iter(|| {
            let args = encode_args(std::hint::black_box(&job)).unwrap();
            let mut envelope = Envelope::new(
                RecomputeSegment::NAME,
                RecomputeSegment::OPTIONS.queue,
                args,
            );
            envelope.retry =
                jobqueue::envelope::Retry::Count(RecomputeSegment::OPTIONS.retry.job_retries);
            let text = envelope.to_json();
            let back = Envelope::parse(&text).unwrap();
            decode_args::<RecomputeSegment>(RecomputeSegment::NAME, &back.args, &[]).unwrap()
        })
    });
    group.finish();
}

/// Does nothing but pass the job on: the cost of one layer.
macro_rules! pass_through {
    ($name:ident) => {
        struct $name;
        #[async_trait]
        impl ClientMiddleware for $name {
            async fn call(
                &self,
                job: &mut ClientJob,
                next: ClientNext<'_>,
            ) -> Result<Admission, Error> {
                next.run(job).await
            }
        }
    };
}
pass_through!(Layer1);
pass_through!(Layer2);
pass_through!(Layer3);

fn middleware_benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let broker: Arc<dyn jobqueue::Broker> = Arc::new(MemoryBroker::new());
    let envelope = Envelope::parse(&payload()).unwrap();
    let mut chains = vec![("0_layers", ClientChain::new())];
    let mut three = ClientChain::new();
    three.add(Layer1).add(Layer2).add(Layer3);
    let mut one = ClientChain::new();
    one.add(Layer1);
    chains.push(("1_layer", one));
    chains.push(("3_layers", three));

    let mut group = c.benchmark_group("client_chain");
    group.throughput(Throughput::Elements(1));
    for (name, chain) in &chains {
        group.bench_function(*name, |b| {
            b.to_async(&runtime).iter_batched(
                || ClientJob {
                    envelope: envelope.clone(),
                    at: None,
                    options: Some(&RecomputeSegment::OPTIONS),
                    origin: Origin::Enqueue,
                    store: Arc::clone(&broker) as Arc<dyn jobqueue::backend::KeyValue>,
                },
                |mut job| async move { chain.run(&mut job).await.unwrap() },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// Enqueue 10,000 jobs in bulk and drain them with one worker, all in memory.
fn memory_broker_benches(c: &mut Criterion) {
    const JOBS: u64 = 10_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("memory_broker");
    group.throughput(Throughput::Elements(JOBS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("enqueue_and_drain_10k", |b| {
        b.to_async(&runtime).iter(|| async {
            let broker = MemoryBroker::new();
            let jobs: Vec<RecomputeSegment> = (0..JOBS).map(|_| job()).collect();
            Client::new(broker.clone())
                .enqueue_bulk(&jobs)
                .await
                .unwrap();
            let start = DONE.load(Ordering::Relaxed);
            let worker = Worker::builder(broker)
                .concurrency(50)
                .register::<RecomputeSegment>()
                .build()
                .unwrap();
            let handle = worker.handle();
            let running = tokio::spawn(worker.run_until(std::future::pending()));
            while DONE.load(Ordering::Relaxed) - start < JOBS {
                tokio::task::yield_now().await;
            }
            handle.shutdown();
            running.await.unwrap().unwrap();
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    envelope_benches,
    middleware_benches,
    memory_broker_benches
);
criterion_main!(benches);
