//! What the tracking allocator costs per allocation: the system allocator called directly,
//! then through `TrackingAllocator` outside any job (a thread-local read), then inside a
//! job's run (three atomic additions more). `cargo bench --bench alloc`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jobqueue::budget::TrackingAllocator;
use jobqueue::testing::profile;
use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
use serde::{Deserialize, Serialize};

#[global_allocator]
static ALLOCATOR: TrackingAllocator = TrackingAllocator::system();

/// Allocations per job run, so the run's own cost is spread thin.
const PER_RUN: u64 = 10_000;

/// Allocates 64 bytes, fills them and frees them, `PER_RUN` times, through `allocator`.
fn churn(allocator: &impl GlobalAlloc) {
    let layout = Layout::new::<[u8; 64]>();
    for _ in 0..PER_RUN {
        // SAFETY: a non-zero layout, written within its size, freed with the same layout.
        unsafe {
            let ptr = allocator.alloc(layout);
            ptr.write_bytes(0, 64);
            black_box(ptr);
            allocator.dealloc(ptr, layout);
        }
    }
}

/// Churns through the tracking allocator inside a job's run.
#[derive(Serialize, Deserialize, Job)]
struct Allocates;

#[async_trait]
impl Perform for Allocates {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        churn(&ALLOCATOR);
        Ok(())
    }
}

fn allocations(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_64B");
    group.throughput(Throughput::Elements(PER_RUN));
    group.bench_function("system_allocator", |b| b.iter(|| churn(&System)));
    group.bench_function("tracking_outside_a_job", |b| b.iter(|| churn(&ALLOCATOR)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    group.bench_function("tracking_inside_a_job", |b| {
        b.iter(|| rt.block_on(profile(&Allocates)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, allocations);
criterion_main!(benches);
