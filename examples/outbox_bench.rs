//! What transactional enqueue costs and how fast the outbox moves, on a PostgreSQL and a
//! Redis given by URL. Three measures, each printed on a line of its own:
//!
//! ```text
//! cargo run --release --example outbox_bench -- --postgres URL --redis URL
//!     tx_insert_us=..  tx_insert_and_enqueue_us=..  enqueue_tx_added_us=..  (PgBroker)
//!     tx_insert_and_outbox_us=..  outbox_added_us=..                       (outbox)
//!     relay_jobs=N relay_s=.. relay_jobs_per_sec=..
//!     rate=R seconds=S lag_p50_ms=.. lag_p99_ms=.. lag_max_ms=..
//! ```
//!
//! The first line times transactions that insert one row of an application's table, alone
//! and with a job enqueued beside it (medians over 2,000 of each, interleaved). The second
//! drains 100,000 committed outbox rows with one relay. The third enqueues at a steady rate
//! while a relay runs, and samples the age of the oldest waiting row every 10 ms. Both
//! databases are emptied first: use throwaway ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobqueue::backend::postgres::{PgBroker, Relay};
use jobqueue::{async_trait, Client, Job, JobContext, JobError, Perform, RedisBroker};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

#[derive(Serialize, Deserialize, Job)]
#[job(queue = "bench", idempotent)]
struct Receipt {
    order: i64,
}

#[async_trait]
impl Perform for Receipt {
    async fn perform(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(i).copied().unwrap_or(f64::NAN)
}

/// One order inserted in a transaction, with the job enqueued by `client` when given;
/// returns the transaction's time in microseconds.
async fn order(
    pool: &PgPool,
    client: Option<&Client>,
    n: i64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    let id: i64 = sqlx::query_scalar("INSERT INTO bench_orders (n) VALUES ($1) RETURNING id")
        .bind(n)
        .fetch_one(&mut *tx)
        .await?;
    if let Some(client) = client {
        client.enqueue_tx(&mut tx, &Receipt { order: id }).await?;
    }
    tx.commit().await?;
    Ok(started.elapsed().as_secs_f64() * 1e6)
}

/// Medians of plain transactions and of those that also enqueue through `client`.
async fn cost(pool: &PgPool, client: &Client) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let (mut plain, mut with_job) = (Vec::new(), Vec::new());
    for n in 0..2_000 {
        plain.push(order(pool, None, n).await?);
        with_job.push(order(pool, Some(client), n).await?);
    }
    Ok((median(plain), median(with_job)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut pg, mut redis) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--postgres" => pg = args.next(),
            "--redis" => redis = args.next(),
            other => {
                return Err(format!("unknown option {other}: --postgres URL --redis URL").into())
            }
        }
    }
    let (Some(pg), Some(redis)) = (pg, redis) else {
        return Err("usage: outbox_bench --postgres URL --redis URL".into());
    };
    let broker = PgBroker::connect(&pg).await?;
    broker.migrate().await?;
    let pool = broker.pool().clone();
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_orders;
         CREATE TABLE bench_orders (id bigserial PRIMARY KEY, n bigint);
         TRUNCATE jobqueue_jobs, jobqueue_sets, jobqueue_outbox, jobqueue_kv",
    )
    .execute(&pool)
    .await?;
    let redis_broker = RedisBroker::connect(&redis).await?;
    let mut conn = redis::Client::open(redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;

    // 1. The cost in the caller's transaction.
    let (plain, direct) = cost(&pool, &Client::new(broker.clone())).await?;
    let (_, outbox) = cost(&pool, &Client::new(redis_broker.clone())).await?;
    println!(
        "tx_insert_us={plain:.0} tx_insert_and_enqueue_us={direct:.0} enqueue_tx_added_us={:.0}",
        direct - plain
    );
    println!(
        "tx_insert_and_outbox_us={outbox:.0} outbox_added_us={:.0}",
        outbox - plain
    );

    // 2. A relay's throughput over a full outbox.
    sqlx::query("TRUNCATE jobqueue_outbox")
        .execute(&pool)
        .await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;
    let client = Client::new(redis_broker.clone());
    const RELAYED: usize = 100_000;
    let jobs: Vec<Receipt> = (0..RELAYED as i64).map(|order| Receipt { order }).collect();
    for chunk in jobs.chunks(10_000) {
        let mut tx = pool.begin().await?;
        client.enqueue_tx_bulk(&mut tx, chunk).await?;
        tx.commit().await?;
    }
    let relay = Relay::new(pool.clone(), redis_broker.clone());
    let started = Instant::now();
    let mut moved = 0;
    while moved < RELAYED {
        moved += relay.relay_once().await?;
    }
    let relay_s = started.elapsed().as_secs_f64();
    println!(
        "relay_jobs={RELAYED} relay_s={relay_s:.3} relay_jobs_per_sec={:.0}",
        RELAYED as f64 / relay_s
    );

    // 3. Lag under a steady rate: one enqueue_tx per transaction, paced.
    const RATE: u64 = 1_000;
    const SECONDS: u64 = 10;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relaying = tokio::spawn(Relay::new(pool.clone(), redis_broker.clone()).run_until(stopped));
    let sampler = {
        let relay = Relay::new(
            pool.clone(),
            Arc::new(redis_broker.clone()) as Arc<dyn jobqueue::Broker>,
        );
        tokio::spawn(async move {
            let mut lags = Vec::new();
            let until = Instant::now() + Duration::from_secs(SECONDS);
            while Instant::now() < until {
                if let Ok((_, oldest)) = relay.waiting().await {
                    let lag = oldest.map_or(0.0, |at| {
                        std::time::SystemTime::now()
                            .duration_since(at)
                            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
                    });
                    lags.push(lag);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            lags
        })
    };
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    for n in 0..(RATE * SECONDS) as i64 {
        tick.tick().await;
        order(&pool, Some(&client), n).await?;
    }
    let mut lags = sampler.await?;
    stop.send(()).ok();
    relaying.await?;
    println!(
        "rate={RATE} seconds={SECONDS} lag_p50_ms={:.1} lag_p99_ms={:.1} lag_max_ms={:.1}",
        percentile(&mut lags, 0.5),
        percentile(&mut lags, 0.99),
        percentile(&mut lags, 1.0)
    );
    Ok(())
}
