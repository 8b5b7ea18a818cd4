//! Worker processes from configuration: flags, environment and a TOML file in that order,
//! bad values named at start, and `--drain` that exits once the queues are empty.

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use clap::Parser;
use jobqueue::runner::{self, WorkerArgs};
use jobqueue::Queues;
use support::jobs::{self, Note, Sleeps};
use support::Backend;

/// A service's command line with a `worker` subcommand.
#[derive(Parser, Debug)]
enum Service {
    Worker(WorkerArgs),
}

/// Environment variables are process-wide and parsing reads them: the test that sets them
/// holds this for its whole body, and every other parse holds it too.
static ENV: Mutex<()> = Mutex::new(());

fn env_lock() -> MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(|e| e.into_inner())
}

fn args(argv: &[&str]) -> Result<WorkerArgs, clap::Error> {
    let mut full = vec!["myservice", "worker"];
    full.extend_from_slice(argv);
    Service::try_parse_from(full).map(|Service::Worker(args)| args)
}

fn config_file(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("jobqueue-runner-{}.toml", jobs::token()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Environment variables are process-wide: every case that sets them is in this one test.
#[test]
fn flags_then_environment_then_file_then_defaults() {
    let _env = env_lock();
    let file = config_file(
        r#"
queue = ["from_file,3", "low"]
concurrency = 7
tag = "file"
shutdown_timeout = "9s"
redis = "redis://file:6379"
"#,
    );
    let file = file.to_str().unwrap();

    // Defaults.
    let s = args(&[]).unwrap().settings().unwrap();
    assert_eq!((s.concurrency, s.tag.as_str()), (10, ""));
    assert!(s.queues.is_all());
    assert_eq!(s.shutdown_timeout, Duration::from_secs(25));

    // The file under nothing else.
    let s = args(&["--config", file]).unwrap().settings().unwrap();
    assert_eq!(s.concurrency, 7);
    assert_eq!(s.queues.names(), ["from_file", "low"]);
    assert_eq!(
        (s.tag.as_str(), s.redis.as_str()),
        ("file", "redis://file:6379")
    );
    assert_eq!(s.shutdown_timeout, Duration::from_secs(9));

    // The environment over the file.
    std::env::set_var("JOBQUEUE_CONCURRENCY", "12");
    std::env::set_var("JOBQUEUE_QUEUES", "critical,2 default");
    let s = args(&["--config", file]).unwrap().settings().unwrap();
    assert_eq!(s.concurrency, 12);
    assert_eq!(s.queues, Queues::parse(["critical,2", "default"]).unwrap());
    assert_eq!(
        s.tag, "file",
        "what the environment does not set comes from the file"
    );

    // Flags over the environment.
    let s = args(&["--config", file, "-c", "20", "-q", "only"])
        .unwrap()
        .settings()
        .unwrap();
    assert_eq!(s.concurrency, 20);
    assert_eq!(s.queues.names(), ["only"]);

    // A bad value in the environment names the option.
    std::env::set_var("JOBQUEUE_CONCURRENCY", "many");
    let err = args(&[]).unwrap_err().to_string();
    assert!(
        err.contains("--concurrency") && err.contains("many"),
        "{err}"
    );
    std::env::remove_var("JOBQUEUE_CONCURRENCY");
    std::env::remove_var("JOBQUEUE_QUEUES");
}

#[test]
fn celery_style_queue_lists() {
    let _env = env_lock();
    let s = args(&["-Q", "a.b,c.d"]).unwrap().settings().unwrap();
    assert_eq!(s.queues, Queues::weighted([("a.b", 1), ("c.d", 1)]));
    let err = args(&["-Q", "a,b", "-q", "c"])
        .unwrap()
        .settings()
        .unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");
}

#[test]
fn bad_values_are_named_at_start() {
    let _env = env_lock();
    let cases: [(&[&str], &str); 4] = [
        (&["-c", "0"], "-c / JOBQUEUE_CONCURRENCY / concurrency `0`"),
        (&["-q", "critical,high"], "critical,high"),
        (
            &["--shutdown-timeout", "25"],
            "--shutdown-timeout / JOBQUEUE_SHUTDOWN_TIMEOUT / shutdown_timeout `25`",
        ),
        (&["-Q", "a,,b"], "-Q / JOBQUEUE_QUEUE_LIST / queues `a,,b`"),
    ];
    for (argv, named) in cases {
        let err = args(argv).unwrap().settings().unwrap_err().to_string();
        assert!(err.contains(named), "{argv:?}: {err}");
    }
    let err = args(&["-c", "lots"]).unwrap_err().to_string();
    assert!(
        err.contains("--concurrency") && err.contains("lots"),
        "{err}"
    );

    let file = config_file("concurrency = \"eight\"\n");
    let err = args(&["--config", file.to_str().unwrap()])
        .unwrap()
        .settings()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(file.to_str().unwrap()) && err.contains("concurrency"),
        "{err}"
    );
    let file = config_file("concurency = 8\n");
    let err = args(&["--config", file.to_str().unwrap()])
        .unwrap()
        .settings()
        .unwrap_err()
        .to_string();
    assert!(err.contains("concurency"), "an unknown key is named: {err}");
}

#[test]
fn weights_concurrency_and_shutdown_timeout_are_bounded() {
    let _env = env_lock();
    // The largest values taken.
    let s = args(&[
        "-q",
        "a,1000",
        "-q",
        "b",
        "-c",
        "5000",
        "--shutdown-timeout",
        "24h",
    ])
    .unwrap()
    .settings()
    .unwrap();
    assert_eq!(s.concurrency, runner::MAX_CONCURRENCY);
    assert_eq!(s.shutdown_timeout, runner::MAX_SHUTDOWN_TIMEOUT);
    assert_eq!(
        s.queues,
        Queues::weighted([("a", Queues::MAX_WEIGHT), ("b", 0)])
    );
    // One past them, and values that would once have been allocated or slept on.
    let cases: [(&[&str], &str); 7] = [
        (&["-q", "a,1001"], "from 0 to 1000"),
        (&["-q", "a,4000000000"], "from 0 to 1000"),
        (&["-c", "5001"], "concurrency `5001`: from 1 to 5000"),
        (&["-c", "18446744073709551615"], "from 1 to 5000"),
        (
            &["--shutdown-timeout", "25h"],
            "shutdown_timeout `25h`: at most 24h",
        ),
        (&["--shutdown-timeout", "300000000000y"], "at most 24h"),
        (
            &["--shutdown-timeout", "999999999999999999y"],
            "give a number and a unit",
        ),
    ];
    for (argv, named) in cases {
        let err = args(argv).unwrap().settings().unwrap_err().to_string();
        assert!(err.contains(named), "{argv:?}: {err}");
    }
    let file = config_file("concurrency = 1000000\nqueue = [\"a,4000000000\"]\n");
    let err = args(&["--config", file.to_str().unwrap()])
        .unwrap()
        .settings()
        .unwrap_err()
        .to_string();
    assert!(err.contains("from 0 to 1000"), "{err}");
    let file = config_file("concurrency = 1000000\n");
    let err = args(&["--config", file.to_str().unwrap()])
        .unwrap()
        .settings()
        .unwrap_err()
        .to_string();
    assert!(err.contains("concurrency `1000000`"), "{err}");
}

#[test]
fn redis_passwords_never_show() {
    let _env = env_lock();
    let url = "redis://ann:hunter2@127.0.0.1:6379/0";
    let parsed = args(&["--redis", url]).unwrap();
    let settings = parsed.settings().unwrap();
    assert_eq!(settings.redis, url, "the password is kept for connecting");
    for debug in [format!("{parsed:?}"), format!("{settings:?}")] {
        assert!(
            !debug.contains("hunter2") && debug.contains("redis://ann:***@127.0.0.1:6379/0"),
            "{debug}"
        );
    }
    // A TOML file the parser refuses on the URL's own line, and one where a value it
    // repeats in its message holds the URL.
    for (text, named) in [
        (
            "redis = \"redis://ann:hunter2@host:6379\" concurrency = 3\n",
            "line 1, column",
        ),
        (
            "tag = \"a\"\nconcurrency = \"redis://:hunter2@host\"\n",
            "line 2, column 15 (`concurrency`)",
        ),
        (
            "redis = \"rediss://:hunter2@host\"\nredis = \"again\"\n",
            "line 2",
        ),
    ] {
        let file = config_file(text);
        let err = args(&["--config", file.to_str().unwrap()])
            .unwrap()
            .settings()
            .unwrap_err();
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("hunter2"), "{text}: {shown}");
            assert!(shown.contains(named), "{text}: {shown}");
        }
    }
}

#[test]
fn help_never_shows_the_redis_password() {
    let _env = env_lock();
    std::env::set_var("REDIS_URL", "redis://:hunter2@127.0.0.1:6379");
    let help = args(&["--help"]).unwrap_err().render().to_string();
    std::env::remove_var("REDIS_URL");
    assert!(help.contains("REDIS_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}

#[tokio::test]
async fn an_invalid_redis_url_is_reported_without_its_password() {
    for url in [
        "redis://ann:hunter2@127.0.0.1:notaport",
        "redis://:hunter2@127.0.0.1:notaport,127.0.0.1:7001",
    ] {
        let parsed = {
            let _env = env_lock();
            args(&["--redis", url]).unwrap()
        };
        let err = runner::run(parsed, |w| w).await.unwrap_err();
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(
                !shown.contains("hunter2") && shown.contains(":***@127.0.0.1"),
                "{url}: {shown}"
            );
        }
    }
}

on_both_brokers!(a_draining_worker_exits_once_its_queues_are_empty);

async fn a_draining_worker_exits_once_its_queues_are_empty(b: Backend) {
    let t = jobs::token();
    let client = b.client();
    for i in 0..50 {
        client
            .enqueue_to("monthly", &Note::new(&t, i.to_string()))
            .await
            .unwrap();
    }
    client
        .enqueue_to(
            "monthly",
            &Sleeps {
                token: format!("{t}-slow"),
                millis: 300,
            },
        )
        .await
        .unwrap();
    // Due in a moment: a drain waits for due scheduled jobs too.
    client
        .enqueue_in(Duration::from_millis(300), &Note::new(&t, "scheduled"))
        .await
        .unwrap();
    let settings = {
        let _env = env_lock();
        args(&["-q", "monthly", "-q", "default", "-c", "4", "--drain"])
            .unwrap()
            .settings()
            .unwrap()
    };
    let ran = tokio::time::timeout(
        Duration::from_secs(120),
        runner::run_on(std::sync::Arc::clone(&b.broker), settings, |w| {
            w.register::<Note>().register::<Sleeps>()
        }),
    )
    .await
    .expect("the drain ended by itself");
    ran.expect("a clean exit");
    assert_eq!(
        jobs::runs(&t).len(),
        51,
        "every job ran, the scheduled one too"
    );
    assert_eq!(jobs::labels(&format!("{t}-slow")), ["started", "finished"]);
    let admin = b.admin();
    assert_eq!(admin.queue("monthly").await.unwrap().size, 0);
    assert_eq!(admin.queue("default").await.unwrap().size, 0);
    assert!(
        admin.processes().await.unwrap().is_empty(),
        "it left cleanly"
    );
}

/// A worker started by the runner on a Redis full of extreme values (far, negative and
/// infinite scores, garbage processes, payloads of every wrong shape) runs through its
/// queue, dead-letters what it cannot run, and drains without a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_drains_whatever_redis_holds() {
    let b = Backend::redis().await;
    let url = b.server.as_ref().unwrap().url();
    let seeded = url.clone();
    tokio::task::spawn_blocking(move || support::extremes::seed(&seeded))
        .await
        .unwrap();
    // The seed pauses `extreme` until the far future, as the dashboard would show it.
    b.admin().resume("extreme").await.unwrap();
    // Redis itself refuses INCRBY on a total that is not a number (so would Sidekiq's
    // heartbeat): the engine's counters need numbers there, which the dashboard and the
    // CLI read as 0. Every other extreme value stays.
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for key in [
        "stat:processed",
        "jobqueue:stat:skipped",
        "jobqueue:stat:cancelled",
    ] {
        let _: () = ::redis::AsyncCommands::del(&mut conn, key).await.unwrap();
    }
    let dead_before = b.admin().set_size(jobqueue::SortedSet::Dead).await.unwrap();
    let settings = {
        let _env = env_lock();
        args(&["-q", "extreme", "-c", "4", "--drain", "--redis", &url])
            .unwrap()
            .settings()
            .unwrap()
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        runner::run_on(std::sync::Arc::clone(&b.broker), settings, |w| {
            w.register::<Note>()
        }),
    )
    .await
    .expect("the drain ended by itself")
    .expect("a clean exit");
    let admin = b.admin();
    assert_eq!(admin.queue("extreme").await.unwrap().size, 0);
    // The payloads that are not jobs (bytes that are not UTF-8, an empty one) are dead.
    let dead_after = admin.set_size(jobqueue::SortedSet::Dead).await.unwrap();
    assert_eq!(
        dead_after,
        dead_before + 2,
        "what could not run is in the dead set"
    );
}
