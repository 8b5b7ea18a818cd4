//! The `jobqueue` command run as a process against a private Redis: every subcommand, its
//! output, its exit codes, and state written by Ruby Sidekiq.

#[path = "../../tests/support/extremes.rs"]
mod extremes;
#[path = "../../tests/support/heartbeat.rs"]
mod heartbeat;
#[allow(dead_code)]
#[path = "../../tests/support/redis_cluster.rs"]
mod redis_cluster;
#[allow(dead_code)]
#[path = "../../tests/support/redis_server.rs"]
mod redis_server;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use serde_json::{json, Value};

/// Runs `jobqueue ARGS` against `url`, with no terminal on its input.
fn jobqueue(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jobqueue"))
        .arg("--redis")
        .arg(url)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the jobqueue command")
}

fn ok(url: &str, args: &[&str]) -> String {
    let out = jobqueue(url, args);
    assert!(
        out.status.success(),
        "jobqueue {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_of(url: &str, args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    serde_json::from_str(ok(url, &with_json).trim()).unwrap()
}

fn redis(url: &str, args: &[&str]) -> redis::Value {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut conn).unwrap()
}

/// A Sidekiq-format job, as any producer writes it.
fn job(jid: &str, class: &str, queue: &str, error: Option<&str>) -> String {
    let mut job = json!({
        "class": class, "queue": queue, "args": [1], "jid": jid, "retry": true,
        "created_at": 1_700_000_000.0, "enqueued_at": 1_700_000_000.0,
    });
    if let Some(error) = error {
        job["error_class"] = json!("RuntimeError");
        job["error_message"] = json!(error);
        job["retry_count"] = json!(0);
        job["failed_at"] = json!(1_700_000_000.0);
    }
    job.to_string()
}

#[test]
fn every_subcommand_against_a_private_redis() {
    let server = RedisServer::start();
    let url = server.url();
    for i in 0..2 {
        redis(&url, &["SADD", "queues", "mail"]);
        redis(
            &url,
            &[
                "LPUSH",
                "queue:mail",
                &job(&format!("mail{i}"), "Mailer", "mail", None),
            ],
        );
    }
    redis(
        &url,
        &[
            "ZADD",
            "dead",
            "1700000100",
            &job("dead1", "Boom", "mail", Some("exploded")),
        ],
    );
    redis(
        &url,
        &[
            "ZADD",
            "dead",
            "1700000200",
            &job("dead2", "Fizz", "mail", Some("fizzled")),
        ],
    );
    redis(
        &url,
        &[
            "ZADD",
            "retry",
            "4000000000",
            &job("retry1", "Flaky", "mail", Some("503")),
        ],
    );
    redis(
        &url,
        &[
            "ZADD",
            "schedule",
            "4000000000",
            &job("later1", "Mailer", "mail", None),
        ],
    );

    let stats = json_of(&url, &["stats"]);
    assert_eq!(stats["enqueued"], 2);
    assert_eq!(
        (
            stats["dead"].clone(),
            stats["retries"].clone(),
            stats["scheduled"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );

    let table = ok(&url, &["queues"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("mail") && l.contains(" 2 ")),
        "{table}"
    );

    // Lists, filters, one job whole, and a job that is not there.
    let dead = json_of(&url, &["dead", "list", "--class", "Boom"]);
    assert_eq!(dead.as_array().unwrap().len(), 1);
    assert_eq!(dead[0]["job"]["jid"], "dead1");
    let by_error = json_of(&url, &["dead", "list", "--error", "fizz"]);
    assert_eq!(by_error[0]["job"]["jid"], "dead2");
    let shown = json_of(&url, &["dead", "show", "dead1"]);
    assert_eq!(shown["job"]["error_message"], "exploded");
    let missing = jobqueue(&url, &["dead", "show", "nope"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("dead list"));

    // Retry one dead job now: back in its queue, retry_count lowered as Sidekiq does.
    ok(&url, &["dead", "retry", "dead1"]);
    let queues = json_of(&url, &["queues"]);
    assert_eq!(queues[0]["size"], 3);
    let head: String = match redis(&url, &["LINDEX", "queue:mail", "0"]) {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).unwrap(),
        other => panic!("{other:?}"),
    };
    let head: Value = serde_json::from_str(&head).unwrap();
    assert_eq!(
        (head["jid"].clone(), head["retry_count"].clone()),
        (json!("dead1"), json!(-1))
    );

    // A bulk action needs a confirmation; without a terminal that is --yes.
    let refused = jobqueue(&url, &["dead", "delete", "--all"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(json_of(&url, &["stats"])["dead"], 1);
    ok(&url, &["dead", "delete", "--all", "--yes"]);
    assert_eq!(json_of(&url, &["stats"])["dead"], 0);

    ok(&url, &["retries", "kill", "retry1"]);
    assert_eq!(json_of(&url, &["stats"])["dead"], 1);
    ok(
        &url,
        &["scheduled", "retry", "--all", "--class", "Mailer", "--yes"],
    );
    assert_eq!(json_of(&url, &["queues"])[0]["size"], 4);

    // Pause for a while, resume, clear.
    ok(&url, &["pause", "mail", "--for", "10m"]);
    let paused = json_of(&url, &["queues"]);
    assert_eq!(paused[0]["paused"], true);
    assert!(paused[0]["paused_until"].as_f64().unwrap() > 1.7e9);
    ok(&url, &["resume", "mail"]);
    assert_eq!(json_of(&url, &["queues"])[0]["paused"], false);
    assert_eq!(jobqueue(&url, &["clear", "mail"]).status.code(), Some(2));
    ok(&url, &["clear", "mail", "--yes"]);
    assert_eq!(json_of(&url, &["queues"])[0]["size"], 0);

    // Enqueue a job by class name.
    let jid = ok(
        &url,
        &["enqueue", "Report", "--queue", "reports", "--args", "[7]"],
    );
    assert_eq!(jid.trim().len(), 24);
    let reports = json_of(&url, &["queues"]);
    let reports = reports
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "reports")
        .unwrap();
    assert_eq!(reports["size"], 1);
    assert_eq!(
        jobqueue(&url, &["enqueue", "Report", "--args", "{"])
            .status
            .code(),
        Some(2)
    );

    // An unknown process, and a Redis that is not there.
    assert_eq!(
        jobqueue(&url, &["quiet", "nobody:1:2"]).status.code(),
        Some(3)
    );
    let port = redis_server::free_port();
    let down = jobqueue(&format!("redis://127.0.0.1:{port}"), &["stats"]);
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr)
        .to_lowercase()
        .contains("refused"));
}

const RUBY_STATE: &str = r#"
require "sidekiq"
require "sidekiq/api"
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
Sidekiq::Client.push("class" => "RubyMailer", "queue" => "ruby_mail", "args" => ["hi"])
Sidekiq::Client.push("class" => "RubyMailer", "queue" => "ruby_mail", "args" => ["later"], "at" => Time.now.to_f + 3600)
Sidekiq::DeadSet.new.kill(Sidekiq.dump_json("class" => "RubyMailer", "queue" => "ruby_mail", "args" => ["dead"],
  "jid" => "rubydead0000000000000001", "error_message" => "smtp down", "error_class" => "Net::SMTPError"))
"#;

const RUBY_WORKER: &str = r#"
require "sidekiq"
class RubyMailer
  include Sidekiq::Worker
  def perform(*) = nil
end
"#;

#[test]
fn state_written_by_ruby_sidekiq() {
    let server = RedisServer::start();
    let url = server.url();
    let pushed = Command::new("ruby")
        .args(["-e", RUBY_STATE])
        .env("REDIS_URL", &url)
        .stderr(Stdio::null())
        .status()
        .expect("Ruby Sidekiq is missing: apt-get install ruby-sidekiq (scripts/test does)");
    assert!(pushed.success());

    let queues = json_of(&url, &["queues"]);
    assert_eq!(queues[0]["name"], "ruby_mail");
    assert_eq!(queues[0]["size"], 1);
    let scheduled = json_of(&url, &["scheduled", "list"]);
    assert_eq!(scheduled[0]["job"]["args"], json!(["later"]));
    let dead = json_of(&url, &["dead", "list", "--error", "smtp"]);
    assert_eq!(dead[0]["job"]["jid"], "rubydead0000000000000001");

    // A Ruby Sidekiq process: listed, and quieted through its signals list.
    let dir = std::env::temp_dir().join(format!("jobqueue-cli-{}", redis_server::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let worker_file = dir.join("worker.rb");
    std::fs::write(&worker_file, RUBY_WORKER).unwrap();
    let mut sidekiq = Command::new("sidekiq")
        .args(["-q", "elsewhere", "-c", "1", "-r"])
        .arg(&worker_file)
        .env("REDIS_URL", &url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Ruby Sidekiq");
    let started = Instant::now();
    let identity = loop {
        let processes = json_of(&url, &["processes"]);
        if let Some(p) = processes.as_array().unwrap().first() {
            break p["identity"].as_str().unwrap().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Sidekiq never registered"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    ok(&url, &["quiet", &identity]);
    let quieted = loop {
        let processes = json_of(&url, &["processes"]);
        if processes[0]["quiet"] == true {
            break true;
        }
        if started.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // And `stop` makes it shut down by itself.
    let stopped = quieted && {
        ok(&url, &["stop", &identity]);
        loop {
            if sidekiq.try_wait().unwrap().is_some() {
                break true;
            }
            if started.elapsed() > Duration::from_secs(90) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let _ = Command::new("kill").arg(sidekiq.id().to_string()).status();
    let _ = sidekiq.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(quieted, "the Ruby process went quiet");
    assert!(stopped, "the Ruby process stopped on `jobqueue stop`");
    assert_eq!(
        json_of(&url, &["processes"]),
        json!([]),
        "and left the process set"
    );
}

/// The argument of the periodic job the next test's worker publishes.
#[derive(serde::Serialize, serde::Deserialize, jobqueue::Job)]
#[job(queue = "reports")]
struct NightlyReport {
    kind: String,
}

#[test]
fn periodic_schedules_with_their_next_tick() {
    let server = RedisServer::start();
    let url = server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(jobqueue::RedisBroker::connect(&url)).unwrap();
    let nightly = jobqueue::schedule::Periodic::cron(
        "nightly-report",
        "0 3 * * *",
        jobqueue::chrono_tz::UTC,
        &NightlyReport {
            kind: "sales".into(),
        },
    )
    .unwrap();
    let worker = jobqueue::Worker::builder(broker)
        .periodic(nightly)
        .build()
        .unwrap();
    let handle = worker.handle();
    let task = rt.spawn(worker.run_until(std::future::pending()));
    let started = Instant::now();
    let listed = loop {
        let listed = json_of(&url, &["periodic"]);
        if !listed.as_array().unwrap().is_empty() {
            break listed;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never published"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(listed[0]["name"], "nightly-report");
    assert_eq!(listed[0]["queue"], "reports");
    assert!(listed[0]["schedule"]
        .as_str()
        .unwrap()
        .contains("0 3 * * *"));
    assert!(listed[0]["next_tick"].as_f64().unwrap() > 1.7e9);
    let table = ok(&url, &["periodic"]);
    assert!(
        table.contains("nightly-report") && table.contains("in "),
        "{table}"
    );
    handle.shutdown();
    rt.block_on(task).unwrap().unwrap();
}

/// Takes longer than its 100 ms time budget.
#[derive(serde::Serialize, serde::Deserialize, jobqueue::Job)]
#[job(queue = "slow", budget(time = "100ms"))]
struct SlowReport {
    millis: u64,
}

#[jobqueue::async_trait]
impl jobqueue::Perform for SlowReport {
    async fn perform(&self, _: &jobqueue::JobContext) -> Result<(), jobqueue::JobError> {
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        Ok(())
    }
}

#[test]
fn classes_show_each_class_and_its_runs_over_budget() {
    let server = RedisServer::start();
    let url = server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(jobqueue::RedisBroker::connect(&url)).unwrap();
    let client = jobqueue::Client::new(broker.clone());
    let mut config = jobqueue::WorkerConfig::default();
    config.heartbeat_interval = Duration::from_millis(200);
    let worker = jobqueue::Worker::builder(broker)
        .config(config)
        .register::<SlowReport>()
        .build()
        .unwrap();
    let handle = worker.handle();
    let task = rt.spawn(worker.run_until(std::future::pending()));
    let jid = rt
        .block_on(client.enqueue(&SlowReport { millis: 250 }))
        .unwrap();
    let started = Instant::now();
    let listed = loop {
        let listed = json_of(&url, &["classes"]);
        if listed.as_array().is_some_and(|a| !a.is_empty()) {
            break listed;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never published"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let row = &listed[0];
    assert_eq!(row["class"], "SlowReport");
    assert_eq!(row["total_runs"], 1);
    assert!(row["p50_s"].as_f64().unwrap() >= 0.25, "{row}");
    let violation = &row["violations"][0];
    assert_eq!(violation["jid"], jid.as_str());
    assert_eq!(violation["limit"], "time");
    assert_eq!(violation["allowed"], 100_000);
    let table = ok(&url, &["classes"]);
    assert!(
        table.contains("SlowReport")
            && table.contains("latest runs over budget")
            && table.contains(&jid),
        "{table}"
    );
    handle.shutdown();
    rt.block_on(task).unwrap().unwrap();
}

#[test]
fn cancel_removes_a_waiting_job() {
    let server = RedisServer::start();
    let url = server.url();
    let payload = job("0123456789abcdef01234567", "Export", "exports", None);
    redis(&url, &["SADD", "queues", "exports"]);
    redis(&url, &["LPUSH", "queue:exports", &payload]);
    let said = ok(&url, &["cancel", "0123456789abcdef01234567"]);
    assert!(said.contains("was waiting in exports; removed"), "{said}");
    assert_eq!(
        redis(&url, &["LLEN", "queue:exports"]),
        redis::Value::Int(0)
    );
    let said = json_of(&url, &["cancel", "fedcba9876543210fedcba98"]);
    assert!(
        said["message"]
            .as_str()
            .unwrap()
            .contains("neither waiting nor running"),
        "{said}"
    );
}

#[derive(serde::Serialize, serde::Deserialize, jobqueue::Job)]
#[job(queue = "sync", concurrency(limit = 2, key = "shop"))]
struct SyncShop {
    shop: String,
}

#[test]
fn limits_show_the_keys_with_jobs_set_aside() {
    let server = RedisServer::start();
    let url = server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(jobqueue::RedisBroker::connect(&url)).unwrap();
    let client = jobqueue::Client::new(broker.clone());
    for _ in 0..3 {
        let job = SyncShop {
            shop: "big shop".into(),
        };
        rt.block_on(client.enqueue(&job)).unwrap();
    }
    // A fetch as a live worker's: two take the shop's slots, the third is set aside.
    rt.block_on(heartbeat::beat(&broker, "p", Duration::from_secs(60)));
    let queues = ["sync".to_owned()];
    let request = jobqueue::backend::Fetch::new(&queues, 10).limits(Duration::from_secs(60));
    let taken = rt
        .block_on(jobqueue::backend::JobStore::fetch(&broker, "p", request))
        .unwrap();
    assert_eq!(taken.len(), 2);
    let listed = json_of(&url, &["limits"]);
    assert_eq!(
        listed[0]["key"], "SyncShop:concurrency:big%20shop",
        "{listed}"
    );
    assert_eq!(
        (&listed[0]["held"], &listed[0]["waiting"]),
        (&json!(2), &json!(1))
    );
    let table = ok(&url, &["limits"]);
    assert!(table.contains("SyncShop:concurrency:big%20shop"), "{table}");
}

#[test]
fn a_cluster_is_read_and_steered_like_one_redis() {
    let cluster = redis_cluster::RedisCluster::start();
    let urls = cluster.urls();
    for n in 0..30 {
        let args = format!("[{n}]");
        ok(
            &urls,
            &["enqueue", "Report", "--queue", "reports", "--args", &args],
        );
    }
    // Thirty jobs over three shards, one on each master, counted as one queue.
    let queues = json_of(&urls, &["queues"]);
    assert_eq!(queues[0]["name"], "reports");
    assert_eq!(queues[0]["size"], 30);
    let keys = cluster.keys_per_master();
    assert!(keys.iter().all(|(_, n)| *n > 0), "{keys:?}");
    ok(&urls, &["pause", "reports", "--for", "10m"]);
    assert_eq!(json_of(&urls, &["queues"])[0]["paused"], true);
    ok(&urls, &["resume", "reports"]);
    assert_eq!(json_of(&urls, &["queues"])[0]["paused"], false);
    ok(&urls, &["clear", "reports", "--yes"]);
    assert_eq!(json_of(&urls, &["queues"])[0]["size"], 0);
}

/// Runs `jobqueue ARGS` and checks that it ended as documented (0 done, 1 broker, 2 usage,
/// 3 not found) with a message when it failed, never with a panic (exit 101).
fn answers(url: &str, args: &[&str]) -> Result<Output, String> {
    let out = jobqueue(url, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(out),
        Some(1..=3) if !stderr.trim().is_empty() => Ok(out),
        code => Err(format!(
            "jobqueue {:?}: exit {code:?}: {}",
            args.iter()
                .map(|a| a.chars().take(80).collect::<String>())
                .collect::<Vec<_>>(),
            stderr.chars().take(2000).collect::<String>()
        )),
    }
}

#[test]
fn every_command_answers_whatever_redis_holds_and_whatever_it_is_given() {
    let server = RedisServer::start();
    let url = server.url();
    extremes::seed(&url);
    // The longest single argument Linux passes (128 KiB) is under a megabyte.
    let big = "l".repeat(100_000);
    let huge = "18446744073709551615";
    let mut commands: Vec<Vec<String>> = Vec::new();
    let mut add = |args: &[&str]| commands.push(args.iter().map(|a| a.to_string()).collect());
    // Reading everything, as tables and as JSON.
    for json in [false, true] {
        let mut reads: Vec<Vec<&str>> = vec![
            vec!["stats"],
            vec!["queues"],
            vec!["processes"],
            vec!["periodic"],
            vec!["classes"],
            vec!["limits"],
        ];
        for set in ["retries", "scheduled", "dead"] {
            reads.push(vec![set, "list"]);
            reads.push(vec![set, "list", "--class", "Extreme", "--error", "huge"]);
            for jid in extremes::JIDS {
                reads.push(vec![set, "show", jid]);
            }
        }
        for mut args in reads {
            if json {
                args.push("--json");
            }
            add(&args);
        }
    }
    // Acting on every extreme entry, one by one and in bulk.
    for (set, action) in [
        ("retries", "retry"),
        ("scheduled", "kill"),
        ("dead", "retry"),
        ("retries", "delete"),
        ("dead", "kill"),
    ] {
        for jid in extremes::JIDS {
            add(&[set, action, jid]);
        }
        add(&[set, action, "--all", "--yes"]);
    }
    // Arguments out of every range.
    for args in [
        vec!["enqueue", "X", "--in", "300000000000y"],
        vec!["enqueue", "X", "--in", "18446744073709551615s"],
        vec!["enqueue", "X", "--in", "999999999999999999999y"],
        vec!["enqueue", "X", "--in", "101y"],
        vec!["enqueue", "X", "--in", "-5s"],
        vec!["enqueue", "X", "--args", "[1e400]"],
        vec!["enqueue", "X", "--args", "{\"not\": \"an array\"}"],
        vec!["enqueue", "X", "--args", &big],
        vec!["enqueue", "", "--queue", ""],
        vec!["enqueue", &big, "--queue", &big],
        vec!["pause", "extreme", "--for", "300000000000y"],
        vec!["pause", "extreme", "--for", "0s"],
        vec!["pause", &big],
        vec!["resume", "bad\u{fffd}\u{fffd}name"],
        vec!["quiet", "huge:2:b"],
        vec!["stop", "garbage:1:a"],
        vec!["quiet", &big],
        vec!["cancel", "running"],
        vec!["cancel", &big],
        vec!["clear", "extreme", "--yes"],
        vec!["dead", "show", huge],
        vec!["retries", "list", "--class", &big],
    ] {
        add(&args);
    }
    let mut failures = Vec::new();
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Err(e) = answers(&url, &args) {
            failures.push(e);
        }
    }
    // An unreachable or malformed Redis URL is a broker error, not a crash, and its
    // password is not shown.
    for bad in [
        "redis://:hunter2@127.0.0.1:1",
        "redis://ann:hunter2@host:notaport",
        "redis://:hunter2@127.0.0.1:notaport,127.0.0.1:2",
        "not a url",
        "",
    ] {
        match answers(bad, &["stats"]) {
            Ok(out) if String::from_utf8_lossy(&out.stderr).contains("hunter2") => {
                failures.push(format!("{bad}: {}", String::from_utf8_lossy(&out.stderr)))
            }
            Ok(_) => {}
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // What the far future and the range checks look like.
    let far = json_of(&url, &["scheduled", "list"]);
    assert!(
        far.as_array().is_some_and(|a| a.is_empty()),
        "killed: {far}"
    );
    let out = jobqueue(&url, &["enqueue", "X", "--in", "300000000000y"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--in") && stderr.contains("100 years"),
        "{stderr}"
    );
}

#[test]
fn help_never_shows_the_redis_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_jobqueue"))
        .arg("--help")
        .env("REDIS_URL", "redis://:hunter2@127.0.0.1:6379")
        .output()
        .expect("run the jobqueue command");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("REDIS_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}
