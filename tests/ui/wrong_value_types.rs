use jobqueue::Job;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Job)]
#[job(queue = 5)]
struct QueueNotString;

#[derive(Serialize, Deserialize, Job)]
#[job(idempotent, retries = "3")]
struct RetriesNotNumber;

#[derive(Serialize, Deserialize, Job)]
#[job(idempotent = true)]
struct FlagWithValue;

fn main() {}
