//! Per-key concurrency and rate limits, enforced at fetch, on both brokers: jobs over a
//! limit are set aside (not failed, not retried) and come back when their key has room.

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::time::Duration;

use jobqueue::backend::{Move, Settle, Source};
use jobqueue::{async_trait, Envelope, Job, JobContext, JobError, Perform, SortedSet};
use serde::{Deserialize, Serialize};
use support::heartbeat::beat;
use support::jobs::{self, most_at_once, now, record, AccountJob, ShopJob};
use support::secs;
use support::{eventually, start, Backend};

const LIMIT: Duration = Duration::from_secs(30);
const LEASE: Duration = Duration::from_secs(60);
/// A job starts a moment after its slot is taken at fetch, and later when its process
/// stalls: a rate check allows this much of that delay (a quarter of `PacedJob`'s period,
/// so that a stall of half a second on a loaded machine is not taken for a broken limit).
const SLACK: f64 = 0.5;

on_every_broker!(
    fetch_takes_slots_sets_the_rest_aside_and_a_release_brings_one_back,
    set_aside_jobs_come_back_when_their_key_has_room_again,
    jobs_over_a_concurrency_limit_wait_and_every_job_runs_once,
    a_running_job_keeps_its_slot_while_its_process_beats,
    a_rate_limit_spaces_starts_and_a_light_account_goes_first,
    a_heavy_tenant_does_not_starve_a_light_one,
    a_job_set_aside_is_cancelled_where_it_waits,
    a_late_acknowledgement_from_a_process_thought_dead_frees_no_other_runs_slot,
);

/// A shop's job with a number: at most two of a shop run at once. Records `+shop` as it
/// starts and `-shop` as it ends, and its number under `{token}-ran` as it starts.
#[derive(Serialize, Deserialize, Job, Debug, Clone)]
#[job(idempotent, concurrency(limit = 2, key = "shop"))]
struct NumberedShopJob {
    token: String,
    shop: String,
    n: u64,
    millis: u64,
}

#[async_trait]
impl Perform for NumberedShopJob {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        record(&self.token, format!("+{}", self.shop));
        record(&format!("{}-ran", self.token), self.n.to_string());
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        record(&self.token, format!("-{}", self.shop));
        Ok(())
    }
}

/// A shop's job that holds its slot until its token has an `open` label. Records `+shop`
/// as it starts and `-shop` as it ends.
#[derive(Serialize, Deserialize, Job, Debug, Clone)]
#[job(idempotent, concurrency(limit = 2, key = "shop"))]
struct GatedShopJob {
    token: String,
    shop: String,
}

#[async_trait]
impl Perform for GatedShopJob {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        record(&self.token, format!("+{}", self.shop));
        while !jobs::labels(&self.token).iter().any(|l| l == "open") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        record(&self.token, format!("-{}", self.shop));
        Ok(())
    }
}

/// An account's job: at most five of an account start in two seconds. Records the account.
#[derive(Serialize, Deserialize, Job, Debug, Clone)]
#[job(idempotent, rate(limit = 5, per = "2s", key = "account"))]
struct PacedJob {
    token: String,
    account: String,
}

#[async_trait]
impl Perform for PacedJob {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        record(&self.token, &self.account);
        Ok(())
    }
}

fn shop_job(t: &str, shop: &str, millis: u64) -> ShopJob {
    ShopJob {
        token: t.to_owned(),
        shop: shop.to_owned(),
        millis,
    }
}

fn shop_of(payload: &str) -> String {
    let envelope = Envelope::parse(payload).unwrap();
    envelope.args[0]["shop"].as_str().unwrap().to_owned()
}

async fn fetch_takes_slots_sets_the_rest_aside_and_a_release_brings_one_back(b: Backend) {
    let t = jobs::token();
    let client = b.client();
    for _ in 0..5 {
        client.enqueue(&shop_job(&t, "a", 0)).await.unwrap();
    }
    client.enqueue(&shop_job(&t, "b", 0)).await.unwrap();
    let queues = ["default".to_owned()];
    beat(b.broker.as_ref(), "p", LEASE).await;

    let taken = b
        .broker
        .fetch("p", support::request(&queues, 10, Some(LEASE), false))
        .await
        .unwrap();
    let mut shops: Vec<String> = taken.iter().map(|f| shop_of(&f.payload)).collect();
    if b.cluster.is_some() {
        // Each shop's jobs live on the shard of its key: shard order, not queue order.
        shops.sort();
    }
    assert_eq!(
        shops,
        ["a", "a", "b"],
        "two of shop a, and shop b behind them"
    );
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
    let limits = b.admin().limits().await.unwrap();
    assert_eq!(limits.len(), 1);
    assert_eq!(limits[0].key, "ShopJob:concurrency:a");
    assert_eq!((limits[0].held, limits[0].parked), (2, 3));
    let of_a: Vec<_> = taken
        .iter()
        .filter(|f| shop_of(&f.payload) == "a")
        .collect();

    // A finished job frees its slot, and one waiting job goes to the front of its queue.
    b.broker
        .settle(
            Source::InFlight("p"),
            &[Move::done(of_a[0].payload.clone())],
        )
        .await
        .unwrap();
    assert_eq!(b.admin().queue("default").await.unwrap().size, 1);
    assert_eq!(b.admin().limits().await.unwrap()[0].parked, 2);
    let next = b
        .broker
        .fetch("p", support::request(&queues, 10, Some(LEASE), false))
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(shop_of(&next[0].payload), "a");

    // So does a failed one on its way to the retry set.
    let failed = Settle::Retry {
        payload: of_a[1].payload.clone(),
        at: std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    };
    let moved = b
        .broker
        .settle(
            Source::InFlight("p"),
            &[Move::new(of_a[1].payload.clone(), failed)],
        )
        .await
        .unwrap();
    assert_eq!(moved, [true]);
    assert_eq!(b.admin().queue("default").await.unwrap().size, 1);
    let limits = b.admin().limits().await.unwrap();
    assert_eq!((limits[0].held, limits[0].parked), (1, 1));
}

async fn set_aside_jobs_come_back_when_their_key_has_room_again(b: Backend) {
    let t = jobs::token();
    let client = b.client();
    for _ in 0..8 {
        let job = AccountJob {
            token: t.clone(),
            account: "x".into(),
        };
        client.enqueue(&job).await.unwrap();
    }
    let queues = ["default".to_owned()];
    let at = now();
    let taken = b
        .broker
        .fetch("p", support::request(&queues, 10, Some(LEASE), false))
        .await
        .unwrap();
    assert_eq!(taken.len(), 5, "five starts per second");
    let limits = b.admin().limits().await.unwrap();
    assert_eq!(limits[0].key, "AccountJob:rate:x");
    assert_eq!(limits[0].parked, 3);
    let next_look = secs(limits[0].next_look);
    assert!(next_look > at + 0.5 && next_look < now() + 1.5);
    let due = secs(b.broker.next_due().await.unwrap().unwrap());
    assert!((due - next_look).abs() < 1e-3, "the scheduler wakes for it");

    // Within the second: no room. A second later: room for all three.
    let at_time = |secs: f64| std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs);
    assert_eq!(b.broker.unpark_due(at_time(now()), LEASE).await.unwrap(), 0);
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
    assert_eq!(
        b.broker.unpark_due(at_time(at + 1.5), LEASE).await.unwrap(),
        3
    );
    assert_eq!(b.admin().queue("default").await.unwrap().size, 3);
    assert!(b.admin().limits().await.unwrap().is_empty());

    // Concurrency slots live as long as their process's heartbeat.
    for _ in 0..4 {
        client
            .enqueue_to("shops", &shop_job(&t, "z", 0))
            .await
            .unwrap();
    }
    let shops = ["shops".to_owned()];
    beat(b.broker.as_ref(), "alive", LEASE).await;
    let fetch = |process: &'static str, max: usize| {
        let broker = b.broker.clone();
        let shops = shops.clone();
        async move {
            let taken = broker
                .fetch(process, support::request(&shops, max, Some(LEASE), false))
                .await;
            taken.unwrap().len()
        }
    };
    assert_eq!(fetch("gone", 1).await, 1);
    assert_eq!(fetch("alive", 1).await, 1);
    // Full: the slot of "gone", which has no heartbeat, is free; that of "alive" is not.
    assert_eq!(fetch("alive", 10).await, 1);
    let limits = b.admin().limits().await.unwrap();
    assert_eq!((limits[0].held, limits[0].parked), (2, 1));
    // Still full when looked at again.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(61);
    assert_eq!(b.broker.unpark_due(later, LEASE).await.unwrap(), 0);
}

async fn jobs_over_a_concurrency_limit_wait_and_every_job_runs_once(b: Backend) {
    const JOBS: u64 = 24;
    let t = jobs::token();
    let batch: Vec<NumberedShopJob> = (0..JOBS)
        .map(|n| NumberedShopJob {
            token: t.clone(),
            shop: if n % 2 == 0 { "a" } else { "b" }.into(),
            n,
            millis: 30,
        })
        .collect();
    b.client().enqueue_bulk(&batch).await.unwrap();
    let one = start(b.worker().register::<NumberedShopJob>().concurrency(8));
    let two = start(
        jobqueue::Worker::builder(b.another_broker().await)
            .config(support::fast_config())
            .register::<NumberedShopJob>()
            .concurrency(8),
    );
    eventually(LIMIT, "24 jobs ended", || async {
        jobs::labels(&t)
            .iter()
            .filter(|l| l.starts_with('-'))
            .count()
            == JOBS as usize
    })
    .await;
    one.stop().await;
    two.stop().await;
    let mut ran: Vec<u64> = jobs::labels(&format!("{t}-ran"))
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    ran.sort_unstable();
    assert_eq!(ran, (0..JOBS).collect::<Vec<_>>(), "each job ran once");
    assert_eq!(most_at_once(&t, "a"), 2);
    assert_eq!(most_at_once(&t, "b"), 2);
    let admin = b.admin();
    assert_eq!(admin.set_size(SortedSet::Retry).await.unwrap(), 0);
    assert_eq!(admin.set_size(SortedSet::Dead).await.unwrap(), 0);
    assert!(admin.limits().await.unwrap().is_empty());
}

async fn a_running_job_keeps_its_slot_while_its_process_beats(b: Backend) {
    // A heartbeat that lapses after three seconds, renewed every 200 ms: only a stall of
    // nearly three seconds could make this live process look dead.
    const TTL: Duration = Duration::from_secs(3);
    let t = jobs::token();
    let job = GatedShopJob {
        token: t.clone(),
        shop: "c".into(),
    };
    for _ in 0..3 {
        b.client().enqueue(&job).await.unwrap();
    }
    let h = start(
        b.worker()
            .register::<GatedShopJob>()
            .concurrency(4)
            .configure(|c| c.heartbeat_ttl = TTL),
    );
    eventually(LIMIT, "two run and the third waits", || async {
        let parked = b.admin().limits().await.unwrap();
        jobs::labels(&t) == ["+c", "+c"] && parked.len() == 1 && parked[0].parked == 1
    })
    .await;
    let taken = now();
    // A full key is looked at again a heartbeat's lifetime later, when the slots of a
    // process that died would be free: the two run on past that look.
    eventually(
        LIMIT,
        "the key was looked at again past the lifetime",
        || async {
            let third_started = jobs::labels(&t).len() > 2;
            let limits = b.admin().limits().await.unwrap();
            third_started
                || limits
                    .iter()
                    .any(|l| secs(l.next_look) > taken + TTL.as_secs_f64() + 0.5)
        },
    )
    .await;
    assert_eq!(
        jobs::labels(&t),
        ["+c", "+c"],
        "the third started while two ran"
    );
    record(&t, "open");
    eventually(LIMIT, "3 jobs ended", || async {
        jobs::labels(&t).iter().filter(|l| *l == "-c").count() == 3
    })
    .await;
    h.stop().await;
    assert_eq!(most_at_once(&t, "c"), 2);
}

async fn a_rate_limit_spaces_starts_and_a_light_account_goes_first(b: Backend) {
    let t = jobs::token();
    let account = |name: &str| PacedJob {
        token: t.clone(),
        account: name.into(),
    };
    let mut batch: Vec<PacedJob> = (0..12).map(|_| account("heavy")).collect();
    batch.extend((0..3).map(|_| account("light")));
    b.client().enqueue_bulk(&batch).await.unwrap();
    let h = start(b.worker().register::<PacedJob>().concurrency(8));
    eventually(LIMIT, "15 jobs ran", || async {
        jobs::runs(&t).len() == 15
    })
    .await;
    h.stop().await;
    let runs = jobs::runs(&t);
    let starts = |name: &str| -> Vec<f64> {
        let mut s: Vec<f64> = runs.iter().filter(|r| r.0 == name).map(|r| r.1).collect();
        s.sort_by(f64::total_cmp);
        s
    };
    let heavy = starts("heavy");
    let closest = heavy
        .windows(6)
        .map(|w| w[5] - w[0])
        .reduce(f64::min)
        .unwrap();
    assert!(closest >= 2.0 - SLACK, "six starts within {closest:.3} s");
    let light = starts("light");
    assert!(
        light.iter().all(|s| *s < heavy[5]),
        "the light account waited for the heavy one's second period"
    );
}

async fn a_heavy_tenant_does_not_starve_a_light_one(b: Backend) {
    const HEAVY: usize = 20_000;
    let t = jobs::token();
    let mut batch: Vec<ShopJob> = (0..HEAVY).map(|_| shop_job(&t, "heavy", 0)).collect();
    batch.extend((0..10).map(|_| shop_job(&t, "light", 0)));
    b.client().enqueue_bulk(&batch).await.unwrap();
    let h = start(b.worker().register::<ShopJob>().concurrency(8));
    eventually(LIMIT, "the light tenant's 10 jobs ended", || async {
        jobs::labels(&t).iter().filter(|l| *l == "-light").count() == 10
    })
    .await;
    let heavy_done = jobs::labels(&t).iter().filter(|l| *l == "-heavy").count();
    h.stop().await;
    println!("heavy jobs done when the light tenant's were: {heavy_done} of {HEAVY}");
    // The README: the small tenant's 10 jobs finished while 10 to 30 of the big one's had.
    assert!(
        heavy_done <= 30,
        "the light tenant waited for {heavy_done} of the heavy one's jobs"
    );
    let limits = b.admin().limits().await.unwrap();
    assert!(limits
        .iter()
        .any(|l| l.key == "ShopJob:concurrency:heavy" && l.parked > 0));
}

async fn a_job_set_aside_is_cancelled_where_it_waits(b: Backend) {
    let t = jobs::token();
    let client = b.client();
    let mut jids = Vec::new();
    for _ in 0..3 {
        jids.push(client.enqueue(&shop_job(&t, "a", 0)).await.unwrap());
    }
    let queues = ["default".to_owned()];
    beat(b.broker.as_ref(), "p", LEASE).await;
    let taken = b
        .broker
        .fetch("p", support::request(&queues, 10, Some(LEASE), false))
        .await
        .unwrap();
    assert_eq!(taken.len(), 2, "the third waits for the shop's slots");

    let cancelled = b.admin().cancel(&jids[2]).await.unwrap();
    assert_eq!(
        cancelled,
        jobqueue::admin::Cancelled::Removed {
            from: "limit ShopJob:concurrency:a".into()
        }
    );
    assert!(
        b.admin().limits().await.unwrap().is_empty(),
        "no job waits under the key any more"
    );
    // The slots free, and nothing comes back to run.
    let acks: Vec<Move> = taken.into_iter().map(|f| Move::done(f.payload)).collect();
    b.broker.settle(Source::InFlight("p"), &acks).await.unwrap();
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
    assert!(b
        .broker
        .fetch("p", support::request(&queues, 10, Some(LEASE), false))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        b.admin().cancel(&jids[2]).await.unwrap(),
        jobqueue::admin::Cancelled::Marked,
        "gone: a second cancel finds it nowhere"
    );
}

/// A process that stalled past its heartbeat's lifetime is thought dead: another takes the
/// slots its jobs held. When it comes back, runs a new job of the key and acknowledges the
/// jobs it held before, those late acknowledgements free neither the other process's slot
/// nor the one its own new run holds: each slot names its job and its process.
async fn a_late_acknowledgement_from_a_process_thought_dead_frees_no_other_runs_slot(b: Backend) {
    let t = jobs::token();
    let client = b.client();
    let mut jids = Vec::new();
    for _ in 0..5 {
        jids.push(client.enqueue(&shop_job(&t, "a", 0)).await.unwrap());
    }
    let queues = ["default".to_owned()];
    let fetch = |process: &'static str, max: usize| {
        let broker = b.broker.clone();
        let queues = queues.clone();
        async move {
            broker
                .fetch(process, support::request(&queues, max, Some(LEASE), false))
                .await
                .unwrap()
        }
    };
    let jid_of = |payload: &str| Envelope::parse(payload).unwrap().jid;
    // "stalled" takes both slots, but has no heartbeat: to the others it looks dead.
    let stale = fetch("stalled", 2).await;
    assert_eq!(stale.len(), 2);
    beat(b.broker.as_ref(), "other", LEASE).await;
    let other = fetch("other", 1).await;
    assert_eq!(
        other.len(),
        1,
        "a slot of the process thought dead was taken"
    );
    // It comes back, and takes the other slot for a new run.
    beat(b.broker.as_ref(), "stalled", LEASE).await;
    let new_run = fetch("stalled", 1).await;
    assert_eq!(new_run.len(), 1);
    // The key is full: a third process's fetch sets the fifth job aside.
    beat(b.broker.as_ref(), "third", LEASE).await;
    assert!(fetch("third", 10).await.is_empty());
    let limits = b.admin().limits().await.unwrap();
    assert_eq!((limits[0].held, limits[0].parked), (2, 1), "{limits:?}");

    // The late acknowledgements of the two jobs it held before.
    let late: Vec<Move> = stale
        .iter()
        .map(|f| Move::done(f.payload.clone()))
        .collect();
    b.broker
        .settle(Source::InFlight("stalled"), &late)
        .await
        .unwrap();
    assert!(
        fetch("third", 10).await.is_empty(),
        "a late acknowledgement freed another run's slot"
    );
    let limits = b.admin().limits().await.unwrap();
    assert_eq!((limits[0].held, limits[0].parked), (2, 1), "{limits:?}");

    // Each run's own acknowledgement frees its own slot, and the fifth job comes back.
    b.broker
        .settle(
            Source::InFlight("other"),
            &[Move::done(other[0].payload.clone())],
        )
        .await
        .unwrap();
    let fifth = fetch("third", 10).await;
    assert_eq!(
        fifth.iter().map(|f| jid_of(&f.payload)).collect::<Vec<_>>(),
        [jids[4].clone()]
    );
    b.broker
        .settle(
            Source::InFlight("stalled"),
            &[Move::done(new_run[0].payload.clone())],
        )
        .await
        .unwrap();
    b.broker
        .settle(
            Source::InFlight("third"),
            &[Move::done(fifth[0].payload.clone())],
        )
        .await
        .unwrap();
    assert!(b.admin().limits().await.unwrap().is_empty());
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
}
