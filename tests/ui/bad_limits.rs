use jobqueue::Job;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Job)]
#[job(concurrency(limit = 0, key = "shop"))]
struct ZeroLimit {
    shop: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(concurrency(key = "shop"))]
struct NoLimit {
    shop: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(concurrency(limit = 2, key = "tenant"))]
struct UnknownKeyField {
    shop: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(rate(limit = 100, key = "account"))]
struct RateWithoutPeriod {
    account: u64,
}

#[derive(Serialize, Deserialize, Job)]
#[job(rate(limit = 100, per = "1 minute"))]
struct BadPeriod;

#[derive(Serialize, Deserialize, Job)]
#[job(concurrency(limit = 2, per = "1m"))]
struct PeriodOnConcurrency;

#[derive(Serialize, Deserialize, Job)]
#[job(concurrency)]
struct Bare;

fn main() {}
