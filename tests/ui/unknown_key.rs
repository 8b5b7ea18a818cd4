use jobqueue::Job;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "mail", retry = 3)]
struct SendMail {
    to: String,
}

fn main() {}
