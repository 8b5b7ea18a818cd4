use jobqueue::Job;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Job)]
enum Choice {
    A,
}

#[derive(Serialize, Deserialize, Job)]
struct Generic<T> {
    value: T,
}

fn main() {}
