//! Worker processes from configuration: flags, environment and a TOML file in that order,
//! bad values named at start, and `--drain` that exits once the queues are empty.

mod support;

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
        Duration::from_secs(60),
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
