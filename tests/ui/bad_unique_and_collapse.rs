use jobqueue::Job;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Job)]
#[job(unique(lock = "until_done"))]
struct BadLock {
    id: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(unique(ttl = "forever"))]
struct BadTtl {
    id: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(collapsible(key = "acount_id"))]
struct MissingField {
    account_id: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "a", queue = "b")]
struct Twice;

#[derive(Serialize, Deserialize, Job)]
#[job(sensitive = "passwrd")]
struct Login {
    password: String,
}

fn main() {}
