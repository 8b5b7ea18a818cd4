//! A pre-deployment budget check, as a service's own test suite would have it: each job
//! run once on its worst-case arguments under the tracking allocator, its memory and time
//! held to its budget (100 MB held, 10 MB retained, 1 s or 5 s by tier, unless the job's
//! `#[job(budget(...))]` says otherwise). A job over budget fails the test with the budget,
//! the figure and the limit: `ExportAllOrders` below shows the message.

use jobqueue::budget::{Tier, TrackingAllocator};
use jobqueue::testing::profile;
use jobqueue::{async_trait, Job, JobContext, JobError, Perform};
use serde::{Deserialize, Serialize};

#[global_allocator]
static ALLOCATOR: TrackingAllocator = TrackingAllocator::system();

/// Resizes one image: holds the decoded pixels, keeps nothing.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "images", idempotent)]
struct ResizeImage {
    width: usize,
    height: usize,
}

#[async_trait]
impl Perform for ResizeImage {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        let pixels = vec![0u8; self.width * self.height * 4];
        let thumbnail: Vec<u8> = pixels.iter().step_by(16).copied().collect();
        std::hint::black_box(thumbnail);
        Ok(())
    }
}

/// Loads every order into memory at once: fine for a small shop, not for the largest.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "exports", idempotent)]
struct ExportAllOrders {
    orders: usize,
}

#[async_trait]
impl Perform for ExportAllOrders {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        let rows: Vec<[u8; 512]> = vec![[b' '; 512]; self.orders];
        std::hint::black_box(rows);
        Ok(())
    }
}

#[tokio::test]
async fn resize_image_fits_its_budget_at_the_largest_upload() {
    // The largest upload the service accepts: 4096 x 4096.
    let report = profile(&ResizeImage {
        width: 4096,
        height: 4096,
    })
    .await
    .unwrap();
    assert!(report.result.is_ok());
    // Run thousands of times a minute: the frequent tier, 1 s.
    report.assert_within_budget::<ResizeImage>(Tier::Frequent);
}

#[tokio::test]
#[should_panic(
    expected = "ExportAllOrders is over budget as a rare job: held 256.0 MB at its peak, \
                           over the alloc budget of 100.0 MB"
)]
async fn export_all_orders_does_not_fit_for_the_largest_shop() {
    // The largest shop has 500,000 orders: this job must become bulk work in steps.
    let report = profile(&ExportAllOrders { orders: 500_000 }).await.unwrap();
    report.assert_within_budget::<ExportAllOrders>(Tier::Rare);
}
