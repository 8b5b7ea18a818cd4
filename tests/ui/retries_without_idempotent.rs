use jobqueue::Job;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "billing", retries = 3)]
struct ChargeCard {
    order_id: u64,
}

fn main() {}
