//! Wire compatibility with the real Ruby Sidekiq (Debian's `ruby-sidekiq`): Ruby pushes
//! jobs our worker runs, our client pushes jobs a Ruby Sidekiq process runs, and Sidekiq's
//! own API reads our queues, retry and dead sets, processes and stats.

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use jobqueue::{
    async_trait, Client, Envelope, Job, JobContext, JobError, Perform, Queues, RunState,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use support::{eventually, jobs, Backend};

const LIMIT: Duration = Duration::from_secs(30);

/// A Ruby job class, run here: Ruby's positional `args` fill the fields in order.
#[derive(Serialize, Deserialize, Job)]
#[job(name = "Ruby::Greeting", queue = "interop", idempotent)]
struct Greeting {
    name: String,
    times: u32,
}

#[async_trait]
impl Perform for Greeting {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        jobs::record(
            &format!("greeting-{}", self.name),
            format!("{}x{}@{}", self.name, self.times, ctx.jid),
        );
        Ok(())
    }
}

/// Fails every time; idempotent with 3 retries, so it waits in the retry set. One at a time:
/// its limit must survive Ruby's pushing it again.
#[derive(Serialize, Deserialize, Job)]
#[job(
    name = "Interop::Retried",
    queue = "interop",
    idempotent,
    retries = 3,
    concurrency(limit = 1)
)]
struct Retried {
    id: u64,
}

#[async_trait]
impl Perform for Retried {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        Err(JobError::new("upstream returned 503").with_class("UpstreamError"))
    }
}

/// Fails and is not idempotent, so it goes to the dead set.
#[derive(Serialize, Deserialize, Job)]
#[job(name = "Interop::Dies", queue = "interop")]
struct Dies {
    id: u64,
}

#[async_trait]
impl Perform for Dies {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        Err(JobError::new("ledger is closed").with_class("LedgerClosed"))
    }
}

/// Defined in Ruby (`RubyEcho#perform(text, n)`); a tuple struct is a positional arg list.
#[derive(Serialize, Deserialize, Job)]
#[job(name = "RubyEcho", queue = "rubyq")]
struct RubyEcho(String, u64);

const RUBY_HEADER: &str = r#"
require "json"
require "sidekiq"
require "sidekiq/api"
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
"#;

const RUBY_WORKER: &str = r#"
require "json"
require "sidekiq"
class RubyEcho
  include Sidekiq::Worker
  def perform(text, n)
    Sidekiq.redis { |c| c.rpush("echo", JSON.generate([text, n, jid])) }
  end
end
"#;

const RUBY_READ: &str = r#"
show = ->(j) { { "class" => j.klass, "display_class" => j.display_class, "args" => j.args,
  "display_args" => j.display_args, "jid" => j.jid, "queue" => j.queue,
  "error_class" => j["error_class"], "error_message" => j["error_message"],
  "retry_count" => j["retry_count"], "at" => j.at.to_f, "failed_at" => j["failed_at"] } }
stats = Sidekiq::Stats.new
puts JSON.generate({
  "retry" => Sidekiq::RetrySet.new.map(&show),
  "dead" => Sidekiq::DeadSet.new.map(&show),
  "queues" => Sidekiq::Queue.all.map { |q| { "name" => q.name, "size" => q.size, "latency" => q.latency,
    "jobs" => q.map { |j| { "class" => j.klass, "args" => j.args, "jid" => j.jid,
      "enqueued_at" => j.enqueued_at.to_f, "created_at" => j.created_at.to_f } } } },
  "processes" => Sidekiq::ProcessSet.new.map { |p| { "identity" => p["identity"],
    "concurrency" => p["concurrency"], "queues" => p["queues"], "busy" => p["busy"],
    "quiet" => p["quiet"], "tag" => p["tag"], "hostname" => p["hostname"] } },
  "stats" => { "processed" => stats.processed, "failed" => stats.failed,
    "retry_size" => stats.retry_size, "dead_size" => stats.dead_size },
})
"#;

fn require_sidekiq() {
    let ok = Command::new("ruby")
        .args(["-e", "require 'sidekiq'"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Ruby Sidekiq is missing. These tests need the real thing: \
         `apt-get install ruby-sidekiq` (or run scripts/test, which does)"
    );
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("jobqueue-sidekiq-{}", jobs::token()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a Ruby script against the test's Redis; returns its standard output.
fn ruby(url: &str, body: &str) -> String {
    let out = Command::new("ruby")
        .args(["-e", &format!("{RUBY_HEADER}\n{body}")])
        .env("REDIS_URL", url)
        .output()
        .expect("run ruby");
    assert!(
        out.status.success(),
        "ruby failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn read_with_sidekiq_api(url: &str) -> Value {
    serde_json::from_str(ruby(url, RUBY_READ).trim()).expect("the Ruby script prints JSON")
}

fn redis_url(b: &Backend) -> String {
    b.server.as_ref().unwrap().url()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_pushes_jobs_that_our_worker_runs() {
    require_sidekiq();
    let b = Backend::redis().await;
    let url = redis_url(&b);
    // Pollers a minute apart: every job below must be picked up because Redis told the
    // worker of the change, well within the 30 s the test waits.
    let worker = b
        .worker()
        .register::<Greeting>()
        .configure(|c| {
            c.idle_poll = Duration::from_secs(60);
            c.poll_interval = Duration::from_secs(60);
        })
        .build()
        .unwrap();
    let handle = worker.handle();
    let task = tokio::spawn(worker.run_until(std::future::pending()));
    let admin = b.admin();
    eventually(LIMIT, "the worker is up and idle", || async {
        !admin.processes().await.unwrap().is_empty()
    })
    .await;

    let jid = ruby(
        &url,
        r#"puts Sidekiq::Client.push("class" => "Ruby::Greeting", "queue" => "interop", "args" => ["world", 3])
           Sidekiq::Client.push("class" => "Ruby::Greeting", "queue" => "interop", "args" => ["later", 2], "at" => Time.now.to_f + 0.3)"#,
    );
    let jid = jid.trim().to_owned();
    eventually(LIMIT, "the Ruby-pushed job ran", || async {
        !jobs::runs("greeting-world").is_empty()
    })
    .await;
    assert_eq!(jobs::labels("greeting-world"), [format!("worldx3@{jid}")]);
    eventually(LIMIT, "the Ruby-scheduled job ran", || async {
        !jobs::runs("greeting-later").is_empty()
    })
    .await;

    // A bulk push, onto a queue nobody had used before.
    ruby(
        &url,
        r#"Sidekiq::Client.push_bulk("class" => "Ruby::Greeting", "queue" => "brand.new", "args" => [["bulk1", 1], ["bulk2", 2]])"#,
    );
    eventually(
        LIMIT,
        "the bulk-pushed jobs ran from the new queue",
        || async {
            !jobs::runs("greeting-bulk1").is_empty() && !jobs::runs("greeting-bulk2").is_empty()
        },
    )
    .await;

    // A producer that does nothing but LPUSH.
    let payload = serde_json::json!({
        "class": "Ruby::Greeting", "queue": "interop", "args": ["plain", 1],
        "jid": "0123456789abcdef01234567", "retry": true, "enqueued_at": support::jobs::now(),
    });
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("LPUSH")
        .arg("queue:interop")
        .arg(payload.to_string())
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    eventually(LIMIT, "the plain LPUSH ran", || async {
        !jobs::runs("greeting-plain").is_empty()
    })
    .await;

    // Sidekiq's API sends a quiet signal through Redis; our heartbeat obeys it.
    ruby(&url, "Sidekiq::ProcessSet.new.each(&:quiet!)");
    eventually(LIMIT, "the worker went quiet", || async {
        handle.state() == RunState::Quiet
    })
    .await;
    // And `stop!` shuts it down: the worker's run ends by itself, cleanly.
    ruby(&url, "Sidekiq::ProcessSet.new.each(&:stop!)");
    let ended = tokio::time::timeout(LIMIT, task)
        .await
        .expect("the worker stopped on Sidekiq's stop!");
    ended.unwrap().unwrap();
    assert!(
        b.admin().processes().await.unwrap().is_empty(),
        "it left Sidekiq's process set"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_jobs_run_on_ruby_sidekiq() {
    require_sidekiq();
    let b = Backend::redis().await;
    let url = redis_url(&b);
    let dir = scratch_dir();
    let worker_file = dir.join("echo.rb");
    std::fs::write(&worker_file, RUBY_WORKER).unwrap();

    let client = b.client();
    let jid = client
        .enqueue(&RubyEcho("from rust".into(), 42))
        .await
        .unwrap();
    let mut sidekiq = start_sidekiq(&url, &worker_file);

    let echoed = echoed(&url).await;
    let echo: Value = serde_json::from_str(&echoed[0]).unwrap();
    assert_eq!(echo, serde_json::json!(["from rust", 42, jid]));

    stop_sidekiq(&mut sidekiq);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidekiq_api_reads_our_queues_sets_processes_and_stats() {
    require_sidekiq();
    let b = Backend::redis().await;
    let url = redis_url(&b);
    let client: Client = b.client();
    client.enqueue(&Retried { id: 1 }).await.unwrap();
    client.enqueue(&Dies { id: 2 }).await.unwrap();
    let waiting = client
        .enqueue_to("waiting.queue", &Dies { id: 3 })
        .await
        .unwrap();

    let worker = b
        .worker()
        .register::<Retried>()
        .register::<Dies>()
        .queues(Queues::strict(["interop"]))
        .concurrency(3)
        .configure(|c| c.tag = "interop-test".into())
        .build()
        .unwrap();
    let handle = worker.handle();
    let task = tokio::spawn(worker.run_until(std::future::pending()));
    let broker = Arc::clone(&b.broker);
    eventually(LIMIT, "both failures recorded and flushed", || async {
        broker.stats().await.unwrap().failed == 2
    })
    .await;

    let seen = read_with_sidekiq_api(&url);
    let retry = &seen["retry"][0];
    assert_eq!(retry["class"], "Interop::Retried");
    assert_eq!(retry["display_class"], "Interop::Retried");
    assert_eq!(retry["args"], serde_json::json!([{"id": 1}]));
    assert_eq!(retry["error_class"], "UpstreamError");
    assert_eq!(retry["error_message"], "upstream returned 503");
    assert_eq!(retry["retry_count"], 0);
    assert!(retry["at"].as_f64().unwrap() > support::jobs::now() + 10.0);

    let dead = &seen["dead"][0];
    assert_eq!(dead["class"], "Interop::Dies");
    assert_eq!(dead["error_class"], "LedgerClosed");
    assert_eq!(dead["retry_count"], 0);
    assert!(dead["failed_at"].as_f64().is_some());

    let queues = seen["queues"].as_array().unwrap();
    let waiting_queue = queues
        .iter()
        .find(|q| q["name"] == "waiting.queue")
        .expect("our queue is listed");
    assert_eq!(waiting_queue["size"], 1);
    assert_eq!(waiting_queue["jobs"][0]["jid"], waiting.as_str());
    assert_eq!(waiting_queue["jobs"][0]["class"], "Interop::Dies");
    assert!(waiting_queue["latency"].as_f64().unwrap() >= 0.0);
    assert!(waiting_queue["jobs"][0]["enqueued_at"].as_f64().unwrap() > 1.6e9);

    let process = &seen["processes"][0];
    assert_eq!(process["identity"], handle.identity());
    assert_eq!(process["concurrency"], 3);
    assert_eq!(process["queues"], serde_json::json!(["interop"]));
    assert_eq!(process["tag"], "interop-test");

    assert_eq!(seen["stats"]["processed"], 2);
    assert_eq!(seen["stats"]["failed"], 2);
    assert_eq!(seen["stats"]["retry_size"], 1);
    assert_eq!(seen["stats"]["dead_size"], 1);

    handle.shutdown();
    task.await.unwrap().unwrap();
    let after = read_with_sidekiq_api(&url);
    assert_eq!(
        after["processes"],
        serde_json::json!([]),
        "unregistered at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_relayed_from_a_postgres_outbox_run_on_ruby_sidekiq() {
    require_sidekiq();
    let b = Backend::redis().await;
    let url = redis_url(&b);
    let dir = scratch_dir();
    let worker_file = dir.join("echo.rb");
    std::fs::write(&worker_file, RUBY_WORKER).unwrap();
    let pg = tokio::task::spawn_blocking(support::PgServer::start)
        .await
        .unwrap();
    support::pg_broker(&pg).await.migrate().await.unwrap();
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    // Enqueued in a transaction for the Redis broker: into the outbox, then relayed.
    let mut tx = pool.begin().await.unwrap();
    let jid = b
        .client()
        .enqueue_tx(&mut tx, &RubyEcho("relayed".into(), 7))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let relay = jobqueue::backend::postgres::Relay::new(pool.clone(), Arc::clone(&b.broker));
    assert_eq!(relay.relay_once().await.unwrap(), 1);
    let mut sidekiq = start_sidekiq(&url, &worker_file);
    let echoed = echoed(&url).await;
    stop_sidekiq(&mut sidekiq);
    let echo: Value = serde_json::from_str(&echoed[0]).unwrap();
    assert_eq!(echo, serde_json::json!(["relayed", 7, jid]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the Ruby worker echoed to the `echo` list, once it has echoed something.
async fn echoed(url: &str) -> Vec<String> {
    let redis = redis::Client::open(url).unwrap();
    let conn = redis.get_multiplexed_async_connection().await.unwrap();
    eventually(LIMIT, "Ruby Sidekiq ran the job", || {
        let mut conn = conn.clone();
        async move {
            redis::cmd("LLEN")
                .arg("echo")
                .query_async::<usize>(&mut conn)
                .await
                .unwrap()
                > 0
        }
    })
    .await;
    redis::cmd("LRANGE")
        .arg("echo")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn.clone())
        .await
        .unwrap()
}

fn start_sidekiq(url: &str, file: &Path) -> std::process::Child {
    Command::new("sidekiq")
        .args(["-q", "rubyq", "-c", "2", "-t", "2", "-r"])
        .arg(file)
        .env("REDIS_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Ruby Sidekiq (apt-get install ruby-sidekiq)")
}

fn stop_sidekiq(child: &mut std::process::Child) {
    // SIGTERM, Sidekiq's graceful stop.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// Not idempotent: its first run fails (to the dead set), any later run succeeds.
#[derive(Serialize, Deserialize, Job)]
#[job(name = "Interop::FailsFirst", queue = "interop")]
struct FailsFirst {
    token: String,
}

#[async_trait]
impl Perform for FailsFirst {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        let first = jobs::runs(&self.token).is_empty();
        jobs::record(&self.token, format!("run, retries {}", ctx.retries));
        if first {
            return Err(JobError::new("not yet").with_class("NotYet"));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_retried_by_hand_through_sidekiqs_api_run_here() {
    require_sidekiq();
    let b = Backend::redis().await;
    let url = redis_url(&b);
    let dead = jobs::token();
    let client = b.client();
    client
        .enqueue(&FailsFirst {
            token: dead.clone(),
        })
        .await
        .unwrap();
    let worker = b
        .worker()
        .register::<FailsFirst>()
        .register::<Retried>()
        .queues(Queues::strict(["interop"]))
        .configure(|c| c.idle_poll = Duration::from_millis(50))
        .build()
        .unwrap();
    let handle = worker.handle();
    let task = tokio::spawn(worker.run_until(std::future::pending()));
    let admin = b.admin();
    eventually(LIMIT, "it died at its first failure", || async {
        admin.set_size(jobqueue::SortedSet::Dead).await.unwrap() == 1
    })
    .await;

    // Sidekiq's "Retry All" on the dead set: retry_count comes back as -1.
    ruby(&url, "Sidekiq::DeadSet.new.retry_all");
    eventually(LIMIT, "the retried job ran here and succeeded", || async {
        jobs::runs(&dead).len() == 2
    })
    .await;
    assert_eq!(
        jobs::labels(&dead),
        ["run, retries 0", "run, retries 0"],
        "a job retried by hand counts from where Sidekiq put it"
    );

    // `SortedEntry#retry` on a job waiting in the retry set, too.
    client.enqueue(&Retried { id: 7 }).await.unwrap();
    eventually(LIMIT, "it waits in the retry set", || async {
        admin.set_size(jobqueue::SortedSet::Retry).await.unwrap() == 1
    })
    .await;
    ruby(&url, "Sidekiq::RetrySet.new.each(&:retry)");
    eventually(
        LIMIT,
        "it ran again and is back in the retry set",
        || async {
            let failed = b.broker.stats().await.unwrap().failed;
            failed == 3 && admin.set_size(jobqueue::SortedSet::Retry).await.unwrap() == 1
        },
    )
    .await;
    handle.shutdown();
    task.await.unwrap().unwrap();
    assert_eq!(admin.set_size(jobqueue::SortedSet::Dead).await.unwrap(), 0);
    let seen = read_with_sidekiq_api(&url);
    assert_eq!(
        seen["retry"][0]["retry_count"], 0,
        "failed again after the hand retry"
    );
    assert_eq!(
        seen["dead"],
        serde_json::json!([]),
        "nothing dead-lettered as invalid"
    );

    // Ruby pushes the job again with its defaults first in the payload; the job keeps its
    // concurrency limit: a fetch takes its slot.
    ruby(&url, "Sidekiq::RetrySet.new.each(&:retry)");
    let queued = b.broker.queue_len("interop").await.unwrap();
    assert_eq!(queued, 1, "Ruby pushed it back to its queue");
    let fetched = b
        .broker
        .fetch(
            "interop-test",
            support::request(&["interop".to_owned()], 10, Some(LIMIT), false),
        )
        .await
        .unwrap();
    assert_eq!(fetched.len(), 1);
    assert!(
        !fetched[0].payload.starts_with("{\"limits\""),
        "Ruby reordered the payload: {}",
        fetched[0].payload
    );
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let held: Vec<String> = redis::cmd("LRANGE")
        .arg("jobqueue:limit:Interop::Retried:concurrency")
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let envelope = Envelope::parse(&fetched[0].payload).unwrap();
    assert_eq!(
        held,
        [format!("{}@interop-test", envelope.jid)],
        "the fetch took the job's slot"
    );
}

/// Holds a card token that must not be shown; runs until told to stop.
#[derive(Serialize, Deserialize, Job)]
#[job(name = "Interop::Charge", queue = "interop", sensitive = "card")]
struct Charge {
    order: u64,
    card: String,
    token: String,
}

#[async_trait]
impl Perform for Charge {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        jobs::record(&self.token, "started");
        while jobs::runs(&format!("{}-stop", self.token)).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

const RUBY_BUSY: &str = r#"
busy = Sidekiq::Workers.new.map { |process, tid, work|
  job = Sidekiq::JobRecord.new(work["payload"])
  { "process" => process, "tid" => tid, "queue" => work["queue"], "run_at" => work["run_at"],
    "class" => job.display_class, "args" => job.display_args, "jid" => job.jid } }
processes = Sidekiq::ProcessSet.new.map { |p| { "rtt_us" => p["rtt_us"], "busy" => p["busy"] } }
puts JSON.generate({ "busy" => busy, "size" => Sidekiq::Workers.new.size, "processes" => processes })
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidekiqs_busy_view_lists_our_running_jobs() {
    require_sidekiq();
    let b = Backend::redis().await;
    let url = redis_url(&b);
    let t = jobs::token();
    let jid = b
        .client()
        .enqueue(&Charge {
            order: 42,
            card: "4242-4242-4242-4242".into(),
            token: t.clone(),
        })
        .await
        .unwrap();
    let worker = b.worker().register::<Charge>().build().unwrap();
    let handle = worker.handle();
    let task = tokio::spawn(worker.run_until(std::future::pending()));
    eventually(LIMIT, "the job started", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    let busy = || -> Value { serde_json::from_str(ruby(&url, RUBY_BUSY).trim()).unwrap() };
    // Listed at a heartbeat; `rtt_us` is measured from the one before.
    eventually(
        LIMIT,
        "a heartbeat listed it, with a measured rtt",
        || async {
            let seen = busy();
            seen["size"] == 1
                && seen["processes"][0]["rtt_us"]
                    .as_u64()
                    .is_some_and(|r| r > 0)
        },
    )
    .await;
    let seen = busy();
    let work = &seen["busy"][0];
    assert_eq!(work["process"], handle.identity());
    assert_eq!(work["queue"], "interop");
    assert_eq!(work["class"], "Interop::Charge");
    assert_eq!(work["jid"], jid.as_str());
    let args = work["args"].to_string();
    assert!(args.contains("42"), "{args}");
    assert!(!args.contains("4242-4242"), "the card is hidden: {args}");
    let run_at = work["run_at"].as_f64().unwrap();
    assert!((run_at - support::jobs::now()).abs() < 600.0, "{run_at}");
    let process = &seen["processes"][0];
    assert_eq!(process["busy"], 1);
    assert!(
        process["rtt_us"].as_u64().unwrap() > 0,
        "a measured rtt: {process}"
    );

    jobs::record(&format!("{t}-stop"), "stop");
    eventually(LIMIT, "the Busy view emptied", || async {
        busy()["size"] == 0
    })
    .await;
    handle.shutdown();
    task.await.unwrap().unwrap();
}

/// What Sidekiq 7.3 and 8.1 read, taken from their `lib/sidekiq/api.rb` (`ProcessSet#each`
/// reads `info`, `busy`, `beat`, `quiet`, `rss`, `rtt_us` and, from 8.1.2, `concurrency`;
/// `WorkSet#each` reads `<identity>:work`, each value JSON with `queue`, `run_at` in epoch
/// seconds and `payload` as a JSON string). Only Sidekiq 6.4 runs here, so newer versions
/// are checked against the shapes their code reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_and_work_hashes_have_the_shapes_sidekiq_7_and_8_read() {
    let b = Backend::redis().await;
    let url = redis_url(&b);
    let t = jobs::token();
    b.client()
        .enqueue(&Charge {
            order: 7,
            card: "secret-card".into(),
            token: t.clone(),
        })
        .await
        .unwrap();
    let worker = b
        .worker()
        .register::<Charge>()
        .configure(|c| c.tag = "shapes".into())
        .build()
        .unwrap();
    let handle = worker.handle();
    let identity = handle.identity().to_owned();
    let task = tokio::spawn(worker.run_until(std::future::pending()));
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let work_key = format!("{identity}:work");
    eventually(LIMIT, "the running job is in the :work hash", || async {
        let len: usize = redis::cmd("HLEN")
            .arg(&work_key)
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        len == 1
    })
    .await;

    let work: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&work_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (_, value) = work.iter().next().unwrap();
    let value: Value = serde_json::from_str(value).unwrap();
    assert_eq!(value["queue"], "interop");
    let run_at = value["run_at"].as_u64().expect("integer epoch seconds");
    assert!((run_at as f64 - support::jobs::now()).abs() < 600.0);
    let payload: Value =
        serde_json::from_str(value["payload"].as_str().expect("the payload as a string")).unwrap();
    assert_eq!(payload["class"], "Interop::Charge");
    assert_eq!(payload["args"][0]["card"], "[redacted]");
    let workers: usize = redis::cmd("HLEN")
        .arg(format!("{identity}:workers"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(workers, 1, "and under the 6.4.1 name");

    let fields: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(&identity)
        .arg(&[
            "info",
            "busy",
            "beat",
            "quiet",
            "rss",
            "rtt_us",
            "concurrency",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let field = |i: usize| {
        fields[i]
            .clone()
            .unwrap_or_else(|| panic!("field {i} missing"))
    };
    let info: Value = serde_json::from_str(&field(0)).unwrap();
    for key in [
        "hostname",
        "started_at",
        "pid",
        "tag",
        "concurrency",
        "queues",
        "labels",
        "identity",
    ] {
        assert!(!info[key].is_null(), "info lacks {key}: {info}");
    }
    assert_eq!(info["identity"], identity.as_str());
    assert_eq!(field(1), "1", "busy");
    assert!(
        field(2).parse::<f64>().unwrap() > 1.6e9,
        "beat in float seconds"
    );
    assert!(["true", "false"].contains(&field(3).as_str()), "quiet");
    field(4).parse::<u64>().expect("rss in KiB");
    field(5).parse::<u64>().expect("rtt_us");
    assert_eq!(
        field(6),
        info["concurrency"].to_string(),
        "concurrency in both places"
    );

    jobs::record(&format!("{t}-stop"), "stop");
    handle.shutdown();
    task.await.unwrap().unwrap();
}

/// Sidekiq's Web UI (`sidekiq/web` on Debian's rack and webrick), on a free loopback port.
struct SidekiqWeb {
    child: std::process::Child,
    url: String,
}

impl SidekiqWeb {
    fn start(redis_url: &str) -> Self {
        let port = support::redis_server::free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ruby/sidekiq_web.rb");
        let child = Command::new("ruby")
            .arg(script)
            .env("REDIS_URL", redis_url)
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Sidekiq's Web UI (apt-get install ruby-sidekiq ruby-rack ruby-webrick)");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < LIMIT, "Sidekiq's Web UI did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn page(&self, path: &str) -> String {
        format!("{}/{path}", self.url)
    }
}

impl Drop for SidekiqWeb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidekiqs_web_ui_sees_and_steers_our_jobs() {
    require_sidekiq();
    let b = Backend::redis().await;
    let url = redis_url(&b);
    let (dead, running) = (jobs::token(), jobs::token());
    let client = b.client();
    client
        .enqueue(&FailsFirst {
            token: dead.clone(),
        })
        .await
        .unwrap();
    client.enqueue(&Retried { id: 9 }).await.unwrap();
    client
        .enqueue(&Charge {
            order: 1,
            card: "1111-2222".into(),
            token: running.clone(),
        })
        .await
        .unwrap();
    let scheduled = client
        .enqueue_in(
            Duration::from_secs(3600),
            &Greeting {
                name: "web".into(),
                times: 1,
            },
        )
        .await
        .unwrap();
    client.enqueue_to("waiting", &Dies { id: 5 }).await.unwrap();
    let worker = b
        .worker()
        .register::<FailsFirst>()
        .register::<Retried>()
        .register::<Charge>()
        .register::<Greeting>()
        .queues(Queues::strict(["interop"]))
        .concurrency(4)
        .build()
        .unwrap();
    let handle = worker.handle();
    let task = tokio::spawn(worker.run_until(std::future::pending()));
    let admin = b.admin();
    eventually(LIMIT, "a dead, a retrying and a running job", || async {
        admin.set_size(jobqueue::SortedSet::Dead).await.unwrap() == 1
            && admin.set_size(jobqueue::SortedSet::Retry).await.unwrap() == 1
            && !jobs::runs(&running).is_empty()
    })
    .await;
    let failed_jid = Envelope::parse(&dead_payload(&b).await).unwrap().jid;

    let web = SidekiqWeb::start(&url);
    let browser = support::browser::Browser::start("sidekiq_web").await;

    // Busy: our process and its running job, with the card hidden.
    let mut busy = String::new();
    for _ in 0..100 {
        busy = browser.open(&web.page("busy")).await;
        if busy.contains("Interop::Charge") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.screenshot("busy").await;
    assert!(busy.contains("Interop::Charge"), "{busy}");
    assert!(busy.contains(handle.identity()), "{busy}");
    assert!(busy.contains("interop"), "{busy}");
    assert!(!busy.contains("1111-2222"), "the card is hidden: {busy}");

    // Queues: sizes.
    let queues = browser.open(&web.page("queues")).await;
    browser.screenshot("queues").await;
    let row: Vec<&str> = queues
        .lines()
        .find(|l| l.starts_with("waiting"))
        .unwrap_or_else(|| panic!("no `waiting` row: {queues}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "1", "its size: {row:?}");
    assert!(row[2].parse::<f64>().unwrap() > 0.0, "its latency: {row:?}");

    // Dead: "Retry Now" makes our worker run the job, to success this time.
    let morgue = browser.open(&web.page("morgue")).await;
    assert!(morgue.contains("Interop::FailsFirst"), "{morgue}");
    browser.screenshot("dead").await;
    browser.click(&format!("a[href*='{failed_jid}']")).await;
    browser.screenshot("dead-job").await;
    browser.click("input[name='retry']").await;
    eventually(LIMIT, "the dead job ran again, and succeeded", || async {
        jobs::runs(&dead).len() == 2
    })
    .await;
    assert_eq!(admin.set_size(jobqueue::SortedSet::Dead).await.unwrap(), 0);

    // Retries: "Delete" removes the waiting retry.
    let retries = browser.open(&web.page("retries")).await;
    assert!(retries.contains("Interop::Retried"), "{retries}");
    browser.screenshot("retries").await;
    browser.click("a[href*='retries/']").await;
    browser.click("input[name='delete']").await;
    eventually(LIMIT, "the retry was deleted", || async {
        admin.set_size(jobqueue::SortedSet::Retry).await.unwrap() == 0
    })
    .await;

    // Scheduled: "Add to queue" runs the job now.
    let page = browser.open(&web.page("scheduled")).await;
    assert!(page.contains("Ruby::Greeting"), "{page}");
    browser.screenshot("scheduled").await;
    browser.click(&format!("a[href*='{scheduled}']")).await;
    browser.click("input[name='add_to_queue']").await;
    eventually(LIMIT, "the scheduled job ran now", || async {
        !jobs::runs("greeting-web").is_empty()
    })
    .await;

    // Busy: "Quiet" on our process quiets the worker.
    browser.open(&web.page("busy")).await;
    browser.click("table button[name='quiet']").await;
    eventually(LIMIT, "the worker went quiet", || async {
        handle.state() == RunState::Quiet
    })
    .await;
    browser.open(&web.page("busy")).await;
    browser.screenshot("busy-quiet").await;

    jobs::record(&format!("{running}-stop"), "stop");
    browser.close().await;
    handle.shutdown();
    task.await.unwrap().unwrap();
}

async fn dead_payload(b: &Backend) -> String {
    b.broker
        .set_range(jobqueue::SortedSet::Dead, 0, 1)
        .await
        .unwrap()
        .remove(0)
        .1
}
