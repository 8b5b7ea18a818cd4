use jobqueue::Job;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Job)]
#[job(budget(alloc = "100 megabytes"))]
struct UnknownSizeUnit;

#[derive(Serialize, Deserialize, Job)]
#[job(budget(time = "1sec"))]
struct UnknownTimeUnit;

#[derive(Serialize, Deserialize, Job)]
#[job(budget(memory = "10MB"))]
struct UnknownBudgetKey;

#[derive(Serialize, Deserialize, Job)]
#[job(budget(retained = 10))]
struct SizeNotString;

#[derive(Serialize, Deserialize, Job)]
#[job(budget(alloc = "0MB"))]
struct ZeroSize;

#[derive(Serialize, Deserialize, Job)]
#[job(budget)]
struct NoLimits;

fn main() {}
