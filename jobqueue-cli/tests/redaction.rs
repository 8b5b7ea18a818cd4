//! The `sensitive` fields of a job class, end to end: a worker of the class runs against a
//! private Redis, publishes its classes, fails a job whose error quotes its card, wraps an
//! invalid and an oversized payload pushed by a foreign producer into the dead set, sets a
//! job aside under a per-key limit keyed on the card, and stops. Then, with no process
//! alive, the `jobqueue` command shows the retry, scheduled and dead sets and the limits,
//! and Redis's key names are read: no secret appears anywhere, and `[redacted]` stands
//! where each one was.

#[allow(dead_code)]
#[path = "../../tests/support/redis_server.rs"]
mod redis_server;

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobqueue::envelope::REDACTED;
use redis_server::RedisServer;
use serde_json::{json, Value};

/// A card charge: the card is sensitive, and at most one charge per card starts an hour, so
/// the limit's key is built from the card. Not idempotent, so a failure sends it to the
/// dead set at once; its error quotes the card.
#[derive(serde::Serialize, serde::Deserialize, jobqueue::Job)]
#[job(
    queue = "charges",
    sensitive = "card",
    rate(limit = 1, per = "1h", key = "card")
)]
struct ChargeCard {
    card: String,
    amount: u64,
}

#[jobqueue::async_trait]
impl jobqueue::Perform for ChargeCard {
    async fn perform(&self, _: &jobqueue::JobContext) -> Result<(), jobqueue::JobError> {
        Err(jobqueue::JobError::new(format!(
            "card {} was declined",
            self.card
        )))
    }
}

/// The message a `ChargeCard` failure shows once its card is hidden.
fn declined_redacted() -> String {
    format!("card {REDACTED} was declined")
}

/// The largest payload the test's worker runs.
const MAX_PAYLOAD: usize = 4096;

/// 32 random hex digits: a value no output holds by chance.
fn random_hex() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut hex = String::new();
    for part in 0..2u8 {
        // Each `RandomState` has keys of its own, seeded by the OS.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u8(part);
        write!(hex, "{:016x}", hasher.finish()).unwrap();
    }
    hex
}

/// One card number per path a secret takes, so a leak names its path.
struct Secrets {
    /// Of the jobs the worker ran: one failed, one set aside under the card's limit.
    worker_failed: String,
    /// Of a job failed by a foreign process (as Ruby Sidekiq writes it), in the retry set.
    foreign_failed: String,
    /// Of a job scheduled for an hour later.
    scheduled: String,
    /// In a payload that is not JSON, pushed by a foreign producer.
    invalid: String,
    /// In a payload over the worker's size limit, pushed by a foreign producer.
    oversized: String,
}

impl Secrets {
    fn new() -> Self {
        Self {
            worker_failed: random_hex(),
            foreign_failed: random_hex(),
            scheduled: random_hex(),
            invalid: random_hex(),
            oversized: random_hex(),
        }
    }

    fn all(&self) -> [(&'static str, &str); 5] {
        [
            ("worker_failed", &self.worker_failed),
            ("foreign_failed", &self.foreign_failed),
            ("scheduled", &self.scheduled),
            ("invalid", &self.invalid),
            ("oversized", &self.oversized),
        ]
    }
}

/// What one run of the `jobqueue` command printed.
struct Ran {
    args: Vec<String>,
    stdout: String,
    stderr: String,
}

/// Runs `jobqueue ARGS` against `url`, with no terminal on its input; it must succeed.
fn jobqueue(url: &str, args: &[&str]) -> Ran {
    let out = Command::new(env!("CARGO_BIN_EXE_jobqueue"))
        .arg("--redis")
        .arg(url)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the jobqueue command");
    let ran = Ran {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        out.status.success(),
        "jobqueue {args:?} failed: {}",
        ran.stderr
    );
    ran
}

fn parsed(ran: &Ran) -> Value {
    serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "jobqueue {:?} printed no JSON ({e}): {}",
            ran.args, ran.stdout
        )
    })
}

/// Each secret (labelled by its path) that appears in a command's output, and where.
fn leaks_in(outputs: &[Ran], secrets: &[(&str, &str)]) -> Vec<String> {
    let mut leaks = Vec::new();
    for ran in outputs {
        for &(label, secret) in secrets {
            for (stream, text) in [("stdout", &ran.stdout), ("stderr", &ran.stderr)] {
                if text.contains(secret) {
                    leaks.push(format!(
                        "the {label} secret in the {stream} of `jobqueue {}`:\n{text}",
                        ran.args.join(" ")
                    ));
                }
            }
        }
    }
    leaks
}

fn assert_no_secret_in(outputs: &[Ran], secrets: &[(&str, &str)]) {
    let leaks = leaks_in(outputs, secrets);
    assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));
}

fn redis(url: &str, args: &[&str]) -> redis::Value {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut conn).unwrap()
}

/// Every key name in Redis, read with SCAN.
fn all_keys(url: &str) -> Vec<String> {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(&mut conn)
            .unwrap();
        keys.extend(
            batch
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
        );
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Waits until `done` holds, asking every 100 ms for at most a minute.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "waited a minute for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Sidekiq-format failed job as a foreign process (Ruby Sidekiq) writes it, its error
/// quoting the card.
fn foreign_failed_job(card: &str) -> String {
    json!({
        "class": "ChargeCard", "queue": "charges", "jid": "0badcafe0badcafe0badcafe",
        "args": [{"card": card, "amount": 5}], "retry": true,
        "created_at": 1_700_000_000.0, "enqueued_at": 1_700_000_000.0,
        "error_class": "RuntimeError", "error_message": format!("card {card} was declined"),
        "retry_count": 0, "failed_at": 1_700_000_000.0,
    })
    .to_string()
}

/// A payload that is not JSON (a comma is missing) naming a card.
fn invalid_payload(card: &str) -> String {
    format!(
        r#"{{"class":"ChargeCard","queue":"charges","args":[{{"card":"{card}","amount":7}}],"jid":"0ddba110ddba110ddba110dd" "retry":false}}"#
    )
}

/// A ChargeCard job over the worker's payload limit, its card within the preview the dead
/// set keeps of it.
fn oversized_payload(card: &str) -> String {
    let note = "n".repeat(2 * MAX_PAYLOAD);
    format!(
        r#"{{"class":"ChargeCard","queue":"charges","args":[{{"card":"{card}","amount":9,"note":"{note}"}}],"jid":"0b5e55ed0b5e55ed0b5e55ed","retry":false}}"#
    )
}

/// Runs a worker of `ChargeCard` (taking every queue, payloads up to [`MAX_PAYLOAD`]) on
/// `url` until `done` holds, then stops it and checks that no process is left alive.
fn run_worker_until(url: &str, what: &str, done: impl FnMut() -> bool) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(jobqueue::RedisBroker::connect(url)).unwrap();
    let mut config = jobqueue::WorkerConfig::default();
    config.idle_poll = Duration::from_millis(100);
    config.max_payload_bytes = MAX_PAYLOAD;
    let worker = jobqueue::Worker::builder(broker)
        .config(config)
        .register::<ChargeCard>()
        .build()
        .unwrap();
    let handle = worker.handle();
    let task = rt.spawn(worker.run_until(std::future::pending()));
    wait_for(what, done);
    handle.shutdown();
    rt.block_on(task).unwrap().unwrap();
    assert_eq!(
        parsed(&jobqueue(url, &["processes", "--json"])),
        json!([]),
        "no process is alive once the worker has stopped"
    );
}

/// A private Redis on which the scenario has run and whose worker has stopped.
struct Scenario {
    server: RedisServer,
    secrets: Secrets,
    scheduled_jid: String,
}

/// Sets up the state the tests read, then stops the worker: see the file's documentation.
fn run_scenario() -> Scenario {
    let server = RedisServer::start();
    let url = server.url();
    let secrets = Secrets::new();

    // A foreign producer's pushes: straight into Redis, past any client.
    redis(&url, &["SADD", "queues", "charges"]);
    for payload in [
        invalid_payload(&secrets.invalid),
        oversized_payload(&secrets.oversized),
    ] {
        redis(&url, &["LPUSH", "queue:charges", &payload]);
    }
    let failed = foreign_failed_job(&secrets.foreign_failed);
    redis(&url, &["ZADD", "retry", "4000000000", &failed]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(jobqueue::RedisBroker::connect(&url)).unwrap();
    let client = jobqueue::Client::new(broker);
    // Two charges of one card: one runs and fails, the other waits for the card's limit.
    for amount in [1, 2] {
        let charge = ChargeCard {
            card: secrets.worker_failed.clone(),
            amount,
        };
        rt.block_on(client.enqueue(&charge)).unwrap();
    }
    let later = ChargeCard {
        card: secrets.scheduled.clone(),
        amount: 3,
    };
    let scheduled_jid = rt
        .block_on(client.enqueue_in(Duration::from_secs(3600), &later))
        .unwrap();

    // The worker publishes its classes before it takes a job: once it has sent the failed
    // charge and both foreign payloads to the dead set and set the second charge aside,
    // they are published.
    run_worker_until(
        &url,
        "three dead jobs and one limit key with a job set aside",
        || {
            let dead = parsed(&jobqueue(&url, &["dead", "list", "--json"]));
            let limits = parsed(&jobqueue(&url, &["limits", "--json"]));
            dead.as_array().unwrap().len() == 3
                && limits.as_array().unwrap().iter().any(|l| l["waiting"] == 1)
        },
    );
    Scenario {
        server,
        secrets,
        scheduled_jid,
    }
}

/// `list`, `list --json`, and `show` and `show --json` of each of its jobs, of `set`
/// (`retries`, `scheduled` or `dead`); and each job as `show --json` gave it.
fn read_set(url: &str, set: &str) -> (Vec<Ran>, Vec<Value>) {
    let mut outputs = vec![jobqueue(url, &[set, "list"])];
    let listed = jobqueue(url, &[set, "list", "--json"]);
    let entries = parsed(&listed);
    outputs.push(listed);
    let mut jobs = Vec::new();
    for entry in entries.as_array().unwrap() {
        let jid = entry["job"]["jid"].as_str().unwrap();
        let pretty = jobqueue(url, &[set, "show", jid]);
        let compact = jobqueue(url, &[set, "show", jid, "--json"]);
        assert_eq!(
            parsed(&pretty),
            parsed(&compact),
            "`show` and `show --json` print one job"
        );
        assert_eq!(&parsed(&compact), entry, "`show` prints the job `list` has");
        jobs.push(parsed(&compact)["job"].clone());
        outputs.push(pretty);
        outputs.push(compact);
    }
    (outputs, jobs)
}

/// The `ChargeCard` job among `jobs`, shown with its card hidden and its amount kept.
fn charge<'a>(jobs: &'a [Value], set: &str) -> &'a Value {
    let charges: Vec<&Value> = jobs.iter().filter(|j| j["class"] == "ChargeCard").collect();
    assert_eq!(charges.len(), 1, "one ChargeCard job in {set}: {jobs:#?}");
    let args = &charges[0]["args"];
    assert_eq!(args[0]["card"], REDACTED, "{set}: {args}");
    assert!(
        args[0]["amount"].is_u64(),
        "{set}: only the card is hidden: {args}"
    );
    charges[0]
}

#[test]
fn list_and_show_of_each_set_hide_the_card_and_the_error_text_quoting_it_with_no_process_alive() {
    let scenario = run_scenario();
    let url = scenario.server.url();
    let (retry_outputs, retries) = read_set(&url, "retries");
    let (dead_outputs, dead) = read_set(&url, "dead");
    let (scheduled_outputs, scheduled) = read_set(&url, "scheduled");
    let outputs: Vec<Ran> = [retry_outputs, dead_outputs, scheduled_outputs]
        .into_iter()
        .flatten()
        .collect();
    assert_no_secret_in(&outputs, &scenario.secrets.all());

    // Where each card was, and in each error that quoted it, the marker stands: in the
    // job failed by a foreign process (its error stored quoting the card), in the one
    // failed by the worker, and in the scheduled one.
    let retried = charge(&retries, "the retry set");
    assert_eq!(retried["jid"], "0badcafe0badcafe0badcafe");
    let failed = charge(&dead, "the dead set");
    for job in [retried, failed] {
        assert_eq!(job["error_message"], declined_redacted(), "{job}");
    }
    let later = charge(&scheduled, "the scheduled set");
    assert_eq!(later["jid"], scenario.scheduled_jid.as_str());
    // The tables show the errors (not the arguments).
    for ran in outputs
        .iter()
        .filter(|r| r.args.len() == 2 && r.args[1] == "list")
    {
        if ran.args[0] != "scheduled" {
            assert!(
                ran.stdout.contains(&declined_redacted()),
                "`jobqueue {}` shows the error with the card hidden:\n{}",
                ran.args.join(" "),
                ran.stdout
            );
        }
    }
}

#[test]
fn invalid_and_oversized_payloads_wrapped_in_the_dead_set_are_listed_and_shown_with_the_card_hidden(
) {
    let scenario = run_scenario();
    let url = scenario.server.url();
    let (outputs, dead) = read_set(&url, "dead");
    assert_no_secret_in(&outputs, &scenario.secrets.all());
    for (class, amount) in [
        (jobqueue::retry::error_class::INVALID_PAYLOAD, 7),
        (jobqueue::retry::error_class::PAYLOAD_TOO_LARGE, 9),
    ] {
        let wrapped: Vec<&Value> = dead.iter().filter(|j| j["class"] == class).collect();
        assert_eq!(wrapped.len(), 1, "one {class} job: {dead:#?}");
        let kept = wrapped[0]["args"][0].as_str().unwrap();
        assert!(
            kept.contains(&format!(r#""card":"{REDACTED}","amount":{amount}"#)),
            "{class}: the payload kept, with the card hidden: {kept}"
        );
    }
}

#[test]
fn limit_keys_built_from_the_card_are_digests_in_redis_key_names_and_in_jobqueue_limits() {
    let scenario = run_scenario();
    let url = scenario.server.url();
    let table = jobqueue(&url, &["limits"]);
    let listed = jobqueue(&url, &["limits", "--json"]);
    let limits = parsed(&listed);
    let keys = all_keys(&url);
    let secrets = scenario.secrets.all();
    let mut leaks = leaks_in(&[table, listed], &secrets);
    for (label, secret) in secrets {
        for name in keys.iter().filter(|k| k.contains(secret)) {
            leaks.push(format!("the {label} secret in the Redis key {name}"));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));

    // Not vacuously: the limit is listed, by its digest, and holds its slots in Redis.
    let key = limits[0]["key"].as_str().unwrap();
    let digest = key
        .strip_prefix("ChargeCard:rate:sha256-")
        .unwrap_or_else(|| panic!("the card's limit key is its digest: {limits}"));
    assert!(
        digest.len() == 16 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    assert!(
        keys.iter().any(|k| k.ends_with(&format!(":limit:{key}"))),
        "the card's limit holds its slots under a Redis key: {keys:#?}"
    );
}

/// A job payload whose `retry` is not true, false or a count: the error that makes it
/// invalid quotes the `retry` value, here an object holding the card.
fn payload_whose_error_quotes_the_card(card: &str) -> String {
    format!(
        r#"{{"class":"ChargeCard","queue":"charges","args":[{{"card":"{card}","amount":4}}],"jid":"0e770e770e770e770e770e77","retry":{{"card":"{card}"}}}}"#
    )
}

/// A wrapped invalid payload's error message is shown like its argument: the parse error
/// of a foreign payload may quote a sensitive value, and the worker stores it as it is.
#[test]
fn an_invalid_payload_whose_error_quotes_the_card_is_listed_and_shown_with_the_card_hidden() {
    let server = RedisServer::start();
    let url = server.url();
    let secret = random_hex();
    let payload = payload_whose_error_quotes_the_card(&secret);
    redis(&url, &["SADD", "queues", "charges"]);
    redis(&url, &["LPUSH", "queue:charges", &payload]);
    run_worker_until(&url, "the payload wrapped in the dead set", || {
        let dead = parsed(&jobqueue(&url, &["dead", "list", "--json"]));
        dead.as_array().unwrap().len() == 1
    });

    let (outputs, dead) = read_set(&url, "dead");
    assert_no_secret_in(&outputs, &[("quoted", &secret)]);
    assert_eq!(
        dead[0]["class"],
        jobqueue::retry::error_class::INVALID_PAYLOAD
    );
    let kept = dead[0]["args"][0].as_str().unwrap();
    assert!(
        kept.contains(&format!(r#""card":"{REDACTED}","amount":4"#)),
        "the payload kept, with the card hidden: {kept}"
    );
    let message = dead[0]["error_message"].as_str().unwrap();
    assert!(
        message.contains("`retry` must be")
            && message.contains(&format!(r#"{{"card":"{REDACTED}"}}"#)),
        "the error shows the marker where the card was: {message}"
    );
}

/// A payload that is not UTF-8 is kept in the dead set in hex, which would show its card
/// as hex digits: it is shown as text, with the card hidden, when that hides a field.
#[test]
fn a_payload_that_is_not_utf8_is_shown_with_the_card_hidden_not_in_hex() {
    let server = RedisServer::start();
    let url = server.url();
    let secret = random_hex();
    let in_hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let mut payload = format!(
        r#"{{"class":"ChargeCard","queue":"charges","args":[{{"card":"{secret}","amount":5,"note":""#
    )
    .into_bytes();
    payload.extend_from_slice(b"\xff\"}],\"jid\":\"0f0f0f0f0f0f0f0f0f0f0f0f\"}");
    redis(&url, &["SADD", "queues", "charges"]);
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg("queue:charges")
        .arg(payload)
        .query(&mut conn)
        .unwrap();
    run_worker_until(&url, "the payload wrapped in the dead set", || {
        let dead = parsed(&jobqueue(&url, &["dead", "list", "--json"]));
        dead.as_array().unwrap().len() == 1
    });

    let (outputs, dead) = read_set(&url, "dead");
    assert_no_secret_in(&outputs, &[("card", &secret), ("card in hex", &in_hex)]);
    let kept = dead[0]["args"][0].as_str().unwrap();
    assert!(
        kept.contains(&format!(r#""card":"{REDACTED}","amount":5"#)),
        "the payload shown as text, with the card hidden: {kept}"
    );
}
