//! What only PostgreSQL offers: jobs enqueued in the application's own transaction, on the
//! PostgreSQL broker and through the outbox into Redis; migrations; acknowledgements after
//! the table is rewritten; the relay's pushes once per job. Each test starts its own
//! PostgreSQL (and Redis) server.

mod support;

use std::sync::Arc;
use std::time::Duration;

use jobqueue::backend::postgres::{PgBroker, Relay, RelayConfig};
use jobqueue::backend::{JobStore, Location, Push, Span};
use jobqueue::{Broker, Client, Job, MemoryBroker, RedisBroker};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use support::jobs::{self, Note};
use support::{eventually, pg_broker, start, Backend, PgServer, RedisServer, StoreExt};

const LIMIT: Duration = Duration::from_secs(30);

/// The application's own table, written in the same transactions as the jobs.
async fn orders(pool: &PgPool) {
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, label text)")
        .execute(pool)
        .await
        .unwrap();
}

/// Writes an order and enqueues its job in one transaction, then commits or rolls back.
async fn order(pool: &PgPool, client: &Client, token: &str, label: &str, commit: bool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (label) VALUES ($1)")
        .bind(label)
        .execute(&mut *tx)
        .await
        .unwrap();
    client
        .enqueue_tx(&mut tx, &Note::new(token, label))
        .await
        .unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

/// Rows of `table`.
async fn rows(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A worker whose polls are an hour apart: only a notice or the broker's watch wakes it.
fn deaf_worker(b: &Backend) -> support::Running {
    start(
        b.worker()
            .configure(|c| {
                c.idle_poll = Duration::from_secs(3600);
                c.poll_interval = Duration::from_secs(3600);
            })
            .register::<Note>(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_postgres_broker_a_rolled_back_job_never_runs_and_a_committed_one_runs_once() {
    let b = Backend::postgres().await;
    let broker = pg_broker(b.pg.as_ref().unwrap()).await;
    let pool = broker.pool().clone();
    orders(&pool).await;
    let t = jobs::token();
    let client = b.client();
    order(&pool, &client, &t, "rolled back", false).await;
    order(&pool, &client, &t, "committed", true).await;
    let h = deaf_worker(&b);
    eventually(LIMIT, "the committed job ran", || async {
        !jobs::labels(&t).is_empty()
    })
    .await;
    assert_eq!(jobs::labels(&t), ["committed"]);
    // Not visible before its transaction commits; once it does, found by the broker's
    // watch (the transaction sent no notice, and the worker does not poll).
    let mut open = pool.begin().await.unwrap();
    client
        .enqueue_tx(&mut open, &Note::new(&t, "committed later"))
        .await
        .unwrap();
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
    open.commit().await.unwrap();
    eventually(LIMIT, "the job committed later ran", || async {
        jobs::labels(&t).len() == 2
    })
    .await;
    h.stop().await;
    assert_eq!(jobs::labels(&t), ["committed", "committed later"]);
    assert_eq!(
        rows(&pool, "orders").await,
        1,
        "the rolled-back order is gone"
    );
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_outbox_a_rolled_back_job_never_reaches_redis_and_a_committed_one_runs_once() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let pool = PgPool::connect(&pg.url()).await.unwrap();
    pg_broker(&pg).await.migrate().await.unwrap();
    orders(&pool).await;
    let b = Backend::redis().await;
    let t = jobs::token();
    let client = b.client();
    order(&pool, &client, &t, "rolled back", false).await;
    order(&pool, &client, &t, "committed", true).await;
    assert_eq!(rows(&pool, "jobqueue_outbox").await, 1);
    assert_eq!(
        b.admin().queue("default").await.unwrap().size,
        0,
        "not yet relayed"
    );
    let relay = Relay::new(pool.clone(), Arc::clone(&b.broker));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relaying = tokio::spawn(relay.run_until(stopped));
    let h = start(b.worker().register::<Note>());
    eventually(LIMIT, "the committed job ran", || async {
        !jobs::labels(&t).is_empty()
    })
    .await;
    eventually(LIMIT, "the outbox emptied", || async {
        rows(&pool, "jobqueue_outbox").await == 0
    })
    .await;
    // A job enqueued after it: the relay and the worker are past the first.
    order(&pool, &client, &t, "after", true).await;
    eventually(LIMIT, "the later job ran", || async {
        jobs::labels(&t).len() == 2
    })
    .await;
    h.stop().await;
    stop.send(()).unwrap();
    relaying.await.unwrap();
    assert_eq!(jobs::labels(&t), ["committed", "after"]);
    assert_eq!(b.admin().queue("default").await.unwrap().size, 0);
    assert_eq!(rows(&pool, "jobqueue_outbox").await, 0);
}

#[derive(Serialize, Deserialize, Job)]
#[job(idempotent, unique(key = "account"))]
struct Sync {
    account: String,
}

#[async_trait::async_trait]
impl jobqueue::Perform for Sync {
    async fn perform(&self, _ctx: &jobqueue::JobContext) -> Result<(), jobqueue::JobError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_rules_apply_to_jobs_enqueued_in_a_transaction() {
    let b = Backend::postgres().await;
    let pool = pg_broker(b.pg.as_ref().unwrap()).await.pool().clone();
    let client = b.client().max_payload_bytes(200);
    let mut tx = pool.begin().await.unwrap();
    let first = client
        .enqueue_tx(
            &mut tx,
            &Sync {
                account: "a".into(),
            },
        )
        .await
        .unwrap();
    // The uniqueness lock is taken at enqueue: the twin is refused while the first holds it.
    let twin = client
        .enqueue_tx(
            &mut tx,
            &Sync {
                account: "a".into(),
            },
        )
        .await;
    assert!(
        matches!(&twin, Err(jobqueue::Error::Skipped { reason, .. }) if reason.contains(&first)),
        "{twin:?}"
    );
    let large = client
        .enqueue_tx(&mut tx, &Note::new("t", "x".repeat(500)))
        .await;
    assert!(
        matches!(large, Err(jobqueue::Error::PayloadTooLarge { .. })),
        "{large:?}"
    );
    let bulk = client
        .enqueue_tx_bulk(
            &mut tx,
            &[
                Sync {
                    account: "b".into(),
                },
                Sync {
                    account: "b".into(),
                },
            ],
        )
        .await
        .unwrap();
    assert!(
        bulk[0].is_some() && bulk[1].is_none(),
        "one job per key within a bulk too: {bulk:?}"
    );
    tx.commit().await.unwrap();
    assert_eq!(b.admin().queue("default").await.unwrap().size, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let broker = pg_broker(&pg).await;
    // Two processes starting together: each migration is applied by one of them.
    let other = pg_broker(&pg).await;
    let (a, b) = tokio::join!(broker.migrate(), other.migrate());
    let mut applied = [a.unwrap(), b.unwrap()].concat();
    applied.sort();
    assert_eq!(applied, [1, 2]);
    assert!(broker.migrate().await.unwrap().is_empty(), "a second run");
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM jobqueue_migrations ORDER BY version")
            .fetch_all(broker.pool())
            .await
            .unwrap();
    assert_eq!(versions, [1, 2]);
}

/// Pushes the same two jobs twice with `push_once`: the second push, as a relay's after a
/// crash between its push and its commit, pushes neither again.
async fn push_once_pushes_each_job_once(name: &str, broker: Arc<dyn Broker>) {
    let job = |n: u32| Push {
        queue: "once".into(),
        payload: format!(r#"{{"jid":"j{n}","class":"A","queue":"once"}}"#),
        at: None,
    };
    let jobs = vec![
        ("relayed:j1".to_owned(), job(1)),
        ("relayed:j2".to_owned(), job(2)),
    ];
    let ttl = Duration::from_secs(60);
    assert_eq!(
        broker.push_once(&jobs[..1], ttl).await.unwrap(),
        [true],
        "the first push on {name}"
    );
    assert_eq!(
        broker.push_once(&jobs, ttl).await.unwrap(),
        [false, true],
        "only the job not pushed before, on {name}"
    );
    assert_eq!(broker.push_once(&jobs, ttl).await.unwrap(), [false, false]);
    assert_eq!(broker.len(Location::Queue("once")).await.unwrap(), 2);
    assert!(broker.get("relayed:j1").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_once_pushes_each_job_once_on_every_broker() {
    push_once_pushes_each_job_once("memory", Arc::new(MemoryBroker::new())).await;
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(&redis.url()).await.unwrap();
    push_once_pushes_each_job_once("redis", Arc::new(broker)).await;
    let cluster = Backend::cluster().await;
    push_once_pushes_each_job_once("a cluster", cluster.broker).await;
    let pg = Backend::postgres().await;
    push_once_pushes_each_job_once("postgres", pg.broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_pushed_but_did_not_delete_pushes_nothing_twice() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let pool = PgPool::connect(&pg.url()).await.unwrap();
    pg_broker(&pg).await.migrate().await.unwrap();
    let redis = Backend::redis().await;
    let client = redis.client();
    let mut tx = pool.begin().await.unwrap();
    let notes: Vec<Note> = (0..5).map(|i| Note::new("t", format!("{i}"))).collect();
    let jids = client.enqueue_tx_bulk(&mut tx, &notes).await.unwrap();
    tx.commit().await.unwrap();
    // A relay's push of the first three, after which it died before deleting their rows.
    let first: Vec<(String, String)> =
        sqlx::query_as("SELECT queue, payload FROM jobqueue_outbox ORDER BY id LIMIT 3")
            .fetch_all(&pool)
            .await
            .unwrap();
    let pushed: Vec<(String, Push)> = first
        .into_iter()
        .zip(&jids)
        .map(|((queue, payload), jid)| {
            let marker = format!("relayed:{}", jid.as_deref().unwrap());
            let push = Push {
                queue,
                payload,
                at: None,
            };
            (marker, push)
        })
        .collect();
    let once = redis
        .broker
        .push_once(&pushed, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(once, [true; 3]);
    let relay = Relay::new(pool.clone(), Arc::clone(&redis.broker)).config({
        let mut config = RelayConfig::default();
        config.batch = 2;
        config
    });
    let mut moved = 0;
    loop {
        match relay.relay_once().await.unwrap() {
            0 => break,
            n => moved += n,
        }
    }
    assert_eq!(moved, 5, "every row was taken and deleted");
    assert_eq!(rows(&pool, "jobqueue_outbox").await, 0);
    let queued: Vec<String> = redis
        .broker
        .range(Location::Queue("default"), Span::page(0, 100))
        .await
        .unwrap()
        .into_iter()
        .map(|e| jobqueue::Envelope::parse(&e.payload).unwrap().jid)
        .collect();
    let expected: Vec<String> = jids.into_iter().flatten().collect();
    assert_eq!(queued, expected, "each job once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_wakes_an_idle_worker_before_its_poll() {
    // A worker whose idle poll is an hour, and a broker whose watch is an hour: only the
    // NOTIFY of a push can wake it.
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let mut config = jobqueue::backend::postgres::PgConfig::new(pg.url());
    config.watch_interval = Duration::from_secs(3600);
    config.migrate = true;
    let broker = PgBroker::connect_with(config).await.unwrap();
    let t = jobs::token();
    let h = start(
        jobqueue::Worker::builder(broker.clone())
            .config(support::fast_config())
            .configure(|c| {
                c.idle_poll = Duration::from_secs(3600);
                c.poll_interval = Duration::from_secs(3600);
            })
            .register::<Note>(),
    );
    // A first job, so that the worker is past the looks it makes at start-up.
    Client::new(broker.clone())
        .enqueue(&Note::new(&t, "first"))
        .await
        .unwrap();
    eventually(LIMIT, "the first job ran", || async {
        !jobs::labels(&t).is_empty()
    })
    .await;
    let producer = pg_broker(&pg).await;
    Client::new(producer)
        .enqueue(&Note::new(&t, "woken"))
        .await
        .unwrap();
    eventually(LIMIT, "the job ran", || async {
        jobs::labels(&t).len() == 2
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_the_outbox_a_relay_reports() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let pool = PgPool::connect(&pg.url()).await.unwrap();
    pg_broker(&pg).await.migrate().await.unwrap();
    let broker = MemoryBroker::new();
    let client = Client::new(broker.clone());
    let mut tx = pool.begin().await.unwrap();
    let notes: Vec<Note> = (0..3).map(|i| Note::new("t", format!("{i}"))).collect();
    client.enqueue_tx_bulk(&mut tx, &notes).await.unwrap();
    tx.commit().await.unwrap();
    // Rows another relay holds: this one passes them by, and reports them waiting.
    let mut held = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM jobqueue_outbox FOR UPDATE")
        .execute(&mut *held)
        .await
        .unwrap();
    let relay = Relay::new(pool.clone(), broker.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relaying = tokio::spawn(relay.run_until(stopped));
    let admin = jobqueue::Admin::new(broker.clone());
    assert!(admin
        .relays(Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());
    eventually(LIMIT, "the relay reported", || async {
        !admin
            .relays(Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    stop.send(()).unwrap();
    relaying.await.unwrap();
    held.rollback().await.unwrap();
    let relays = admin.relays(Duration::from_secs(60)).await.unwrap();
    assert_eq!(relays.len(), 1);
    assert_eq!((relays[0].1.waiting, relays[0].1.relayed), (3, 0));
    assert!(relays[0].1.lag > 0.0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = jobqueue_web::router(broker.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let page = reqwest::get(format!("{base}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.abort();
    assert!(
        page.contains(r#"<span data-stat="outbox-waiting">3</span>"#),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_vacuum_full_acknowledgements_delete_their_own_jobs_and_no_others() {
    // Acknowledgements go to the places their rows were claimed at; `VACUUM FULL` moves
    // every row, so a remembered place may now hold another of the process's jobs.
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let broker = pg_broker(&pg).await;
    broker.migrate().await.unwrap();
    let t = jobs::token();
    let notes: Vec<Note> = (0..300).map(|i| Note::new(&t, i.to_string())).collect();
    Client::new(broker.clone())
        .enqueue_bulk(&notes)
        .await
        .unwrap();
    let queues = ["default".to_owned()];
    let mut taken = Vec::new();
    while taken.len() < 300 {
        let batch = broker
            .fetch("p1", support::request(&queues, 100, None, false))
            .await
            .unwrap();
        assert!(!batch.is_empty());
        taken.extend(batch.into_iter().map(|job| job.payload));
    }
    sqlx::query("VACUUM FULL jobqueue_jobs")
        .execute(broker.pool())
        .await
        .unwrap();
    let (acked, kept): (Vec<_>, Vec<_>) = taken
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .unzip();
    let from = jobqueue::backend::Source::InFlight("p1");
    let moves: Vec<_> = acked
        .iter()
        .map(|p| jobqueue::backend::Move::done(p.clone()))
        .collect();
    assert_eq!(broker.settle(from, &moves).await.unwrap(), vec![true; 150]);
    let mut held: Vec<String> = broker.in_flight("p1").await.unwrap();
    held.sort();
    let mut kept = kept;
    kept.sort();
    assert_eq!(
        held, kept,
        "the jobs not acknowledged are all held, and only they"
    );
}
