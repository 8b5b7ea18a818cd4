//! The web dashboard (`jobqueue-web`) driven in Debian's headless Chromium, on every
//! broker (in memory, one Redis, a Redis Cluster): every page shows what the broker holds;
//! Retry, Pause, Resume and Delete do what they say to a running worker; hostile payloads
//! show as text and run nothing; forms without this browser's CSRF token and a read-only
//! dashboard change nothing.
//! Screenshots land in `target/screenshots/web-*/`.

mod support;

#[allow(unused_imports)]
use jobqueue::backend::{Batches, JobStore, KeyValue, Presence, Views};
#[allow(unused_imports)]
use support::StoreExt;

use std::sync::Arc;
use std::time::Duration;

use fantoccini::Locator;
use jobqueue::backend::{Push, Settle};
use jobqueue::schedule::Periodic;
use jobqueue::{
    async_trait, Broker, Envelope, Job, JobContext, JobError, Perform, Queues, SortedSet,
};
use serde::{Deserialize, Serialize};
use support::browser::Browser;
use support::extremes;
use support::jobs::{self, Note};
use support::{eventually, start, Backend};

const LIMIT: Duration = Duration::from_secs(30);

/// The dashboard of `broker`, nested at `/jobs` in a service on a free loopback port.
struct Site {
    base: String,
    server: tokio::task::JoinHandle<()>,
}

impl Site {
    async fn start(dashboard: jobqueue_web::Dashboard) -> Self {
        let app = axum::Router::new().nest("/jobs", dashboard.router());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let base = format!("http://{}/jobs", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the dashboard serves");
        });
        Self { base, server }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn backends() -> [(&'static str, Backend); 4] {
    [
        ("memory", Backend::memory().await),
        ("redis", Backend::redis().await),
        ("cluster", Backend::cluster().await),
        ("postgres", Backend::postgres().await),
    ]
}

/// Fails on its first run (not idempotent: straight to the dead set) and records every run.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "billing")]
struct ChargeOnce {
    token: String,
    api_key: String,
}

#[async_trait]
impl Perform for ChargeOnce {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        let first = jobs::runs(&self.token).is_empty();
        jobs::record(&self.token, "charge");
        if first {
            return Err(JobError::new("card declined").with_class("CardDeclined"));
        }
        Ok(())
    }
}

/// A job whose `password` the dashboard must hide.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "accounts", idempotent, retries = 5, sensitive = "password")]
struct Login {
    user: String,
    password: String,
}

#[async_trait]
impl Perform for Login {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        Err(JobError::new("directory unreachable").with_class("LdapError"))
    }

    fn retry_in(&self, _count: u32, _error: &JobError) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

/// Takes 20 ms against a 1 ms time budget.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "default", idempotent, budget(time = "1ms"))]
struct Dawdles;

#[async_trait]
impl Perform for Dawdles {
    async fn perform(&self, _: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

/// Waits until cancelled, then records it.
#[derive(Serialize, Deserialize, Job)]
#[job(queue = "long", idempotent)]
struct WaitsForCancel {
    token: String,
}

#[async_trait]
impl Perform for WaitsForCancel {
    async fn perform(&self, ctx: &JobContext) -> Result<(), JobError> {
        ctx.cancelled().await;
        jobs::record(&self.token, "cancelled");
        Ok(())
    }
}

/// A payload pushed as-is, into a queue or (with `at`) the scheduled set.
async fn push_raw(broker: &Arc<dyn Broker>, job: &Envelope, at: Option<std::time::SystemTime>) {
    let push = Push {
        queue: job.queue.clone(),
        payload: job.to_json(),
        at,
    };
    broker.push(&[push]).await.expect("push");
}

/// Moves a scheduled `job` into the retry or dead set with `failed` as its payload there.
async fn fail_into(broker: &Arc<dyn Broker>, job: &Envelope, failed: &Envelope, dead: bool) {
    let payload = failed.to_json();
    let to = if dead {
        Settle::Dead { payload }
    } else {
        Settle::Retry {
            payload,
            at: std::time::UNIX_EPOCH + Duration::from_secs(4_000_000_000),
        }
    };
    let moved = broker
        .settle(
            jobqueue::backend::Source::Set(SortedSet::Schedule),
            &[jobqueue::backend::Move::new(job.to_json(), to)],
        )
        .await
        .expect("move");
    assert_eq!(moved, [true], "the scheduled job was there to move");
}

fn in_an_hour() -> Option<std::time::SystemTime> {
    Some(std::time::SystemTime::now() + Duration::from_secs(3600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_what_the_broker_holds() {
    for (name, b) in backends().await {
        let t = jobs::token();
        let report = Note::new(&t, "report");
        let worker = start(
            b.worker()
                .queues(Queues::strict(["accounts", "billing", "default"]))
                .register::<Note>()
                .register::<Login>()
                .register::<ChargeOnce>()
                .register::<Dawdles>()
                .periodic(
                    Periodic::every("hourly-report", Duration::from_secs(3600), &report).unwrap(),
                ),
        );
        let client = b.client();
        let admin = b.admin();
        client
            .enqueue(&Login {
                user: "ann".into(),
                password: "hunter2".into(),
            })
            .await
            .unwrap();
        // Its own token: it fails on the first run recorded under it.
        client
            .enqueue(&ChargeOnce {
                token: jobs::token(),
                api_key: "k-123".into(),
            })
            .await
            .unwrap();
        client
            .enqueue_in(Duration::from_secs(3600), &Note::new(&t, "later"))
            .await
            .unwrap();
        let dawdled = client.enqueue(&Dawdles).await.unwrap();
        // Runs recorded for the Classes page.
        for i in 0..3 {
            client
                .enqueue(&Note::new(&t, format!("note {i}")))
                .await
                .unwrap();
        }
        eventually(LIMIT, "a retry, a death and three notes", || async {
            admin.set_size(SortedSet::Retry).await.unwrap() == 1
                && admin.set_size(SortedSet::Dead).await.unwrap() == 1
                && jobs::labels(&t)
                    .iter()
                    .filter(|l| l.starts_with("note"))
                    .count()
                    == 3
        })
        .await;
        // Waiting in a queue no worker reads.
        client
            .enqueue_to("waiting", &Note::new(&t, "queued"))
            .await
            .unwrap();
        eventually(LIMIT, "the classes and the schedule published", || async {
            let classes = admin.classes().await.unwrap();
            classes
                .iter()
                .any(|c| c.class.ends_with("Note") && c.total_runs >= 3)
                && classes.iter().any(|c| !c.violations.is_empty())
                && !admin.periodic().await.unwrap().is_empty()
        })
        .await;

        let site = Site::start(jobqueue_web::Dashboard::new(Arc::clone(&b.broker))).await;
        let browser = Browser::start(&format!("web-{name}")).await;

        let text = browser.open(&site.url("")).await;
        assert!(
            text.contains("Processed") && text.contains("Dead"),
            "{text}"
        );
        // The live chart draws once two polls have come back.
        eventually(LIMIT, "the live chart drew", || async {
            browser
                .client
                .find(Locator::Id("rate"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .contains("/s processed")
        })
        .await;
        browser.screenshot("overview").await;

        // Three jobs of one shop, at most two at once: a process takes two, one waits.
        for _ in 0..3 {
            let job = jobs::ShopJob {
                token: t.clone(),
                shop: "big shop".into(),
                millis: 0,
            };
            client.enqueue_to("limited", &job).await.unwrap();
        }
        support::heartbeat::beat(
            b.broker.as_ref(),
            "viewer:1:limits",
            Duration::from_secs(60),
        )
        .await;
        let limited = ["limited".to_owned()];
        let taken = b
            .broker
            .fetch(
                "viewer:1:limits",
                support::request(&limited, 10, Some(Duration::from_secs(60)), false),
            )
            .await
            .unwrap();
        assert_eq!(taken.len(), 2);

        let text = browser.open(&site.url("/queues")).await;
        assert!(
            text.contains("waiting") && text.contains("running"),
            "{text}"
        );
        assert!(text.contains("Jobs waiting for their limits"), "{text}");
        let mut cells = Vec::new();
        for cell in browser
            .client
            .find_all(Locator::Css("#limits td"))
            .await
            .unwrap()
        {
            cells.push(cell.text().await.unwrap());
        }
        assert_eq!(cells[..3], ["ShopJob:concurrency:big%20shop", "2", "1"]);
        browser.screenshot("queues").await;
        let text = browser.open(&site.url("/queues/waiting")).await;
        assert!(
            text.contains("queued") && text.contains("1 waiting"),
            "{text}"
        );
        browser.screenshot("queue").await;

        let identity = admin.processes().await.unwrap()[0].identity.clone();
        let text = browser.open(&site.url("/busy")).await;
        assert!(text.contains(&identity) && text.contains("MB"), "{text}");
        browser.screenshot("busy").await;

        let text = browser.open(&site.url("/scheduled")).await;
        assert!(text.contains("later") && text.contains("in 59m"), "{text}");
        browser.screenshot("scheduled").await;

        let text = browser.open(&site.url("/retries")).await;
        assert!(text.contains("LdapError") && text.contains("ann"), "{text}");
        assert!(!text.contains("hunter2"), "a sensitive field shows: {text}");
        browser.screenshot("retries").await;
        browser.click("tr[data-jid] td a").await;
        let text = browser.wait_for_text("directory unreachable").await;
        assert!(text.contains("[redacted]"), "{text}");
        assert!(!text.contains("hunter2"), "a sensitive field shows: {text}");
        browser.screenshot("retry-detail").await;

        let text = browser.open(&site.url("/dead")).await;
        assert!(
            text.contains("CardDeclined") && text.contains("k-123"),
            "{text}"
        );
        browser.screenshot("dead").await;

        let text = browser.open(&site.url("/periodic")).await;
        assert!(
            text.contains("hourly-report") && text.contains("every 3600s"),
            "{text}"
        );
        browser.screenshot("periodic").await;

        let text = browser.open(&site.url("/classes")).await;
        assert!(text.contains("Note") && text.contains("Login"), "{text}");
        let row = browser
            .client
            .find(Locator::Css("tr[data-class$='Note']"))
            .await
            .expect("a row for the Note class")
            .text()
            .await
            .unwrap();
        assert!(row.contains("rare (5.00s)"), "{row}");
        let over = browser
            .client
            .find(Locator::Css(&format!("tr[data-violation='{dawdled}']")))
            .await
            .expect("the run over budget is listed")
            .text()
            .await
            .unwrap();
        assert!(
            over.contains("Dawdles") && over.contains("time") && over.contains("1.0ms"),
            "{over}"
        );
        browser.screenshot("classes").await;

        // A phone's width: the navigation wraps and tables scroll inside their box.
        browser.client.set_window_size(390, 844).await.unwrap();
        browser.open(&site.url("/retries")).await;
        let overflow: bool = browser
            .client
            .execute(
                "return document.documentElement.scrollWidth > window.innerWidth + 1",
                vec![],
            )
            .await
            .unwrap()
            .as_bool()
            .unwrap();
        assert!(!overflow, "the page is wider than a phone's screen");
        browser.screenshot("retries-phone").await;

        browser.close().await;
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_dead_job_makes_the_worker_perform_it() {
    for (name, b) in backends().await {
        let t = jobs::token();
        let worker = start(b.worker().register::<ChargeOnce>());
        let admin = b.admin();
        let jid = b
            .client()
            .enqueue(&ChargeOnce {
                token: t.clone(),
                api_key: "k".into(),
            })
            .await
            .unwrap();
        eventually(LIMIT, "the job died", || async {
            admin.set_size(SortedSet::Dead).await.unwrap() == 1
        })
        .await;

        let site = Site::start(jobqueue_web::Dashboard::new(Arc::clone(&b.broker))).await;
        let browser = Browser::start(&format!("web-{name}")).await;
        browser.open(&site.url("/dead")).await;
        browser
            .click(&format!("tr[data-jid='{jid}'] input[type=checkbox]"))
            .await;
        browser.screenshot("dead-selected").await;
        browser.click("#bulk button[value=run]").await;
        eventually(LIMIT, "the worker ran the job again", || async {
            jobs::runs(&t).len() == 2
        })
        .await;
        assert_eq!(admin.set_size(SortedSet::Dead).await.unwrap(), 0);
        browser.wait_for_text("Retry now: 1 job(s).").await;
        browser.screenshot("dead-retried").await;
        browser.close().await;
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_fetching_from_a_queue_and_resume_restarts_it() {
    for (name, b) in backends().await {
        let t = jobs::token();
        // `pausable` comes first: a fetch that finds jobs in both takes its job first.
        let worker = start(
            b.worker()
                .queues(Queues::strict(["pausable", "other"]))
                .register::<Note>()
                .configure(|c| c.idle_poll = Duration::from_millis(50)),
        );
        let client = b.client();
        client
            .enqueue_to("pausable", &Note::new(&t, "warm-up"))
            .await
            .unwrap();
        eventually(LIMIT, "the queue exists and ran a job", || async {
            jobs::runs(&t).len() == 1
        })
        .await;

        let site = Site::start(jobqueue_web::Dashboard::new(Arc::clone(&b.broker))).await;
        let browser = Browser::start(&format!("web-{name}")).await;
        browser.open(&site.url("/queues")).await;
        browser
            .click("tr[data-queue='pausable'] button[value=pause]")
            .await;
        browser
            .wait_for_text("Paused pausable until resumed.")
            .await;
        browser.screenshot("paused").await;

        // Pushed in this order: any fetch that returns `after` saw `held` too, and would
        // have taken it first had the queue not been paused.
        client
            .enqueue_to("pausable", &Note::new(&t, "held"))
            .await
            .unwrap();
        client
            .enqueue_to("other", &Note::new(&t, "after"))
            .await
            .unwrap();
        eventually(LIMIT, "the other queue's job ran", || async {
            jobs::labels(&t).contains(&"after".to_owned())
        })
        .await;
        assert!(
            !jobs::labels(&t).contains(&"held".to_owned()),
            "{:?}",
            jobs::labels(&t)
        );
        assert_eq!(b.admin().queue("pausable").await.unwrap().size, 1);

        browser
            .click("tr[data-queue='pausable'] button[value=resume]")
            .await;
        eventually(LIMIT, "the held job ran after resume", || async {
            jobs::labels(&t).contains(&"held".to_owned())
        })
        .await;
        browser.screenshot("resumed").await;
        browser.close().await;
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_the_busy_page_stops_a_running_job() {
    for (name, b) in backends().await {
        let t = jobs::token();
        let worker = start(b.worker().register::<WaitsForCancel>());
        let admin = b.admin();
        let jid = b
            .client()
            .enqueue(&WaitsForCancel { token: t.clone() })
            .await
            .unwrap();
        eventually(LIMIT, "the job shows as running", || async {
            admin
                .processes()
                .await
                .unwrap()
                .iter()
                .any(|p| !p.running.is_empty())
        })
        .await;
        let site = Site::start(jobqueue_web::Dashboard::new(Arc::clone(&b.broker))).await;
        let browser = Browser::start(&format!("web-{name}")).await;
        let text = browser.open(&site.url("/busy")).await;
        assert!(text.contains("WaitsForCancel"), "{text}");
        browser.click("button[value=cancel]").await;
        browser
            .wait_for_text(&format!("Asked job {jid} to stop."))
            .await;
        eventually(LIMIT, "the job saw its cancellation", || async {
            jobs::labels(&t) == ["cancelled"]
        })
        .await;
        eventually(LIMIT, "counted as cancelled", || async {
            admin.stats().await.unwrap().cancelled == 1
        })
        .await;
        browser.open(&site.url("")).await;
        browser.screenshot("cancelled").await;
        browser.close().await;
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_a_job() {
    for (name, b) in backends().await {
        let t = jobs::token();
        let client = b.client();
        let admin = b.admin();
        let scheduled = client
            .enqueue_in(Duration::from_secs(3600), &Note::new(&t, "doomed"))
            .await
            .unwrap();
        let kept = client
            .enqueue_in(Duration::from_secs(7200), &Note::new(&t, "kept"))
            .await
            .unwrap();
        let queued = client
            .enqueue_to("idle", &Note::new(&t, "queued"))
            .await
            .unwrap();

        let site = Site::start(jobqueue_web::Dashboard::new(Arc::clone(&b.broker))).await;
        let browser = Browser::start(&format!("web-{name}")).await;
        browser.open(&site.url("/scheduled")).await;
        browser
            .click(&format!("tr[data-jid='{scheduled}'] td a"))
            .await;
        browser.wait_for_text("doomed").await;
        browser.click("button[value=delete]").await;
        browser.wait_for_text("Delete: 1 job(s).").await;
        assert!(admin
            .find(SortedSet::Schedule, &scheduled, None)
            .await
            .unwrap()
            .is_none());
        assert!(admin
            .find(SortedSet::Schedule, &kept, None)
            .await
            .unwrap()
            .is_some());
        browser.screenshot("scheduled-deleted").await;

        browser.open(&site.url("/queues/idle")).await;
        browser.click("button[value=delete]").await;
        browser
            .wait_for_text(&format!("Deleted job {queued}."))
            .await;
        assert_eq!(admin.queue("idle").await.unwrap().size, 0);
        browser.close().await;
    }
}

/// Markup and script where a payload's class, arguments and error go.
const HOSTILE_CLASS: &str = "<script>window.__pwned = 'class'</script>";
const HOSTILE_ARG: &str = "<img src=x onerror=\"window.__pwned = 'arg'\"><b>bold</b>";
const HOSTILE_ERROR: &str = "</td><script>window.__pwned = 'error'</script>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_show_as_text_and_run_nothing() {
    for (name, b) in backends().await {
        let hostile = |queue: &str| {
            let mut job = Envelope::new(
                HOSTILE_CLASS,
                queue,
                vec![serde_json::json!({ "name": HOSTILE_ARG })],
            );
            job.extra
                .insert("note".into(), serde_json::json!(HOSTILE_ERROR));
            job
        };
        let queued = hostile("evil<i>queue</i>");
        push_raw(&b.broker, &queued, None).await;
        let scheduled = hostile("default");
        push_raw(&b.broker, &scheduled, in_an_hour()).await;
        for dead in [false, true] {
            let job = hostile("default");
            push_raw(&b.broker, &job, in_an_hour()).await;
            let mut failed = job.clone();
            failed.error_class = Some(HOSTILE_CLASS.into());
            failed.error_message = Some(HOSTILE_ERROR.into());
            failed.retry_count = Some(0);
            failed.failed_at = Some(1.7e9);
            fail_into(&b.broker, &job, &failed, dead).await;
        }

        let site = Site::start(jobqueue_web::Dashboard::new(Arc::clone(&b.broker))).await;
        let browser = Browser::start(&format!("web-{name}")).await;
        // Each page, and the payload text it must show literally.
        let pages = [
            ("/queues".to_owned(), vec![queued.queue.as_str()]),
            (
                format!("/queues/{}", encode(&queued.queue)),
                vec![HOSTILE_CLASS, "<b>bold</b>"],
            ),
            ("/scheduled".to_owned(), vec![HOSTILE_CLASS, "<b>bold</b>"]),
            (
                format!("/scheduled/{}", scheduled.jid),
                vec![HOSTILE_CLASS, "<b>bold</b>", HOSTILE_ERROR],
            ),
            ("/retries".to_owned(), vec![HOSTILE_CLASS, HOSTILE_ERROR]),
            ("/dead".to_owned(), vec![HOSTILE_CLASS, HOSTILE_ERROR]),
        ];
        for (i, (page, shown)) in pages.iter().enumerate() {
            let text = browser.open(&site.url(page)).await;
            for literal in shown {
                assert!(
                    text.contains(literal),
                    "{page} does not show {literal:?}: {text}"
                );
            }
            assert_nothing_injected(&browser, page).await;
            browser.screenshot(&format!("hostile-{i}")).await;
        }
        // The detail page shows the error and the arguments literally (the argument as a
        // JSON string, its quotes escaped).
        let text = browser.open(&site.url("/retries")).await;
        assert!(text.contains(HOSTILE_ERROR), "{text}");
        browser.click("tr[data-jid] td a").await;
        let text = browser.wait_for_text("Arguments").await;
        assert!(
            text.contains(HOSTILE_ERROR)
                && text.contains(&serde_json::to_string(HOSTILE_ARG).unwrap()),
            "{text}"
        );
        assert_nothing_injected(&browser, "a retry's detail").await;
        browser.screenshot("hostile-detail").await;
        browser.close().await;
    }
}

/// No payload script ran on the page, and no payload markup became an element.
async fn assert_nothing_injected(browser: &Browser, page: &str) {
    let pwned = browser
        .client
        .execute(
            "return window.__pwned === undefined ? null : window.__pwned",
            vec![],
        )
        .await
        .unwrap();
    assert!(pwned.is_null(), "{page}: a payload's script ran: {pwned}");
    let elements = browser
        .client
        .execute(
            "return document.querySelectorAll('main script, main img, main i').length \
             + [...document.querySelectorAll('main b')].filter(b => b.textContent === 'bold').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(elements, 0, "{page}: a payload's markup became elements");
}

fn encode(segment: &str) -> String {
    let mut out = String::new();
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A plain HTTP request to the dashboard: (status, body).
async fn http(
    method: &str,
    url: &str,
    cookie: Option<&str>,
    form: &str,
) -> (u16, String, Vec<String>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = match method {
        "POST" => client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned()),
        _ => client.get(url),
    };
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.expect("the dashboard answers");
    let status = response.status().as_u16();
    let cookies = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    (status, response.text().await.unwrap(), cookies)
}

/// A form POST with `headers`: (status, body).
async fn post(url: &str, headers: &[(&str, &str)], form: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the dashboard answers");
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_and_foreign_origins_are_refused() {
    let b = Backend::redis().await;
    let admin = b.admin();
    let site = Site::start(jobqueue_web::Dashboard::new(Arc::clone(&b.broker))).await;
    let own = site.base.trim_end_matches("/jobs").to_owned();
    let pause = site.url("/queues/target/act");
    let signed = a_signed_token(&site).await;
    let cookie = format!("jobqueue_csrf={signed}");
    let chosen = "0".repeat(64);
    let chosen_cookie = format!("jobqueue_csrf={chosen}");
    let forged_form = format!("action=pause&csrf={chosen}");
    let form = format!("action=pause&csrf={signed}");
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let refused: [(&str, Headers, &str); 6] = [
        // The attack that once paused a queue: a cookie and token of the attacker's
        // choosing, from a foreign origin; and the same from no origin at all.
        (
            "chosen token, foreign origin",
            vec![("cookie", &chosen_cookie), ("origin", "http://127.0.0.1:1")],
            &forged_form,
        ),
        (
            "chosen token, no origin",
            vec![("cookie", &chosen_cookie)],
            &forged_form,
        ),
        (
            "chosen token, own origin",
            vec![("cookie", &chosen_cookie), ("origin", &own)],
            &forged_form,
        ),
        // A token the server signed, from elsewhere.
        (
            "signed token, foreign origin",
            vec![("cookie", &cookie), ("origin", "http://evil.example")],
            &form,
        ),
        (
            "signed token, cross-site fetch",
            vec![("cookie", &cookie), ("sec-fetch-site", "cross-site")],
            &form,
        ),
        (
            "signed token, foreign referer",
            vec![("cookie", &cookie), ("referer", "http://evil.example/page")],
            &form,
        ),
    ];
    for (case, headers, form) in refused {
        let (status, body) = post(&pause, &headers, form).await;
        assert_eq!(status, 403, "{case}: {body}");
        assert!(admin.paused().await.unwrap().is_empty(), "{case}: paused");
    }
    // The page's own form, from the page's origin.
    let (status, body) = post(
        &pause,
        &[
            ("cookie", &cookie),
            ("origin", &own),
            ("sec-fetch-site", "same-origin"),
        ],
        &form,
    )
    .await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(admin.paused().await.unwrap().len(), 1);

    // Behind a proxy that ends TLS: a `Secure`, `__Host-` cookie for the whole host.
    let client = reqwest::Client::new();
    let response = client
        .get(site.url("/queues"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let set = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set.starts_with("__Host-jobqueue_csrf_"), "{set}");
    for attribute in ["; Path=/;", "; Secure", "; HttpOnly", "; SameSite=Strict"] {
        assert!(set.contains(attribute), "{attribute}: {set}");
    }
    // Declared HTTPS: the same without the proxy's word, and plain-HTTP origins refused.
    let https = Site::start(jobqueue_web::Dashboard::new(Arc::clone(&b.broker)).https(true)).await;
    let response = client.get(https.url("/queues")).send().await.unwrap();
    let set = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set.contains("; Secure") && set.starts_with("__Host-"),
        "{set}"
    );
    let token = set.split(';').next().unwrap().split_once('=').unwrap().1;
    let name = set.split('=').next().unwrap();
    let https_own = https.base.trim_end_matches("/jobs").to_owned();
    let (status, body) = post(
        &https.url("/queues/target/act"),
        &[
            ("cookie", &format!("{name}={token}")),
            ("origin", &https_own),
        ],
        &format!("action=resume&csrf={token}"),
    )
    .await;
    assert_eq!(
        status, 403,
        "an http:// origin on an HTTPS dashboard: {body}"
    );
    assert_eq!(admin.paused().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_this_browsers_token_and_read_only_refuses_them() {
    let b = Backend::memory().await;
    b.client()
        .enqueue_to("kept", &Note::new(&jobs::token(), "x"))
        .await
        .unwrap();
    let site = Site::start(jobqueue_web::Dashboard::new(Arc::clone(&b.broker))).await;
    let clear = site.url("/queues/kept/act");

    // No cookie and no token; a token without its cookie; a cookie with another token.
    let (status, _, cookies) = http("GET", &site.url("/assets/style.css"), None, "").await;
    assert_eq!(status, 200);
    let cookie = cookies
        .iter()
        .find(|c| c.starts_with("jobqueue_csrf="))
        .expect("a CSRF cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(cookies[0].contains("SameSite=Strict") && cookies[0].contains("Path=/jobs"));
    let token = cookie.trim_start_matches("jobqueue_csrf=").to_owned();
    let forged = "0".repeat(64);
    for (cookie, field) in [
        (None, None),
        (None, Some(token.as_str())),
        (Some(cookie.as_str()), Some(forged.as_str())),
        (Some(cookie.as_str()), None),
    ] {
        let form = match field {
            Some(field) => format!("action=clear&csrf={field}"),
            None => "action=clear".to_owned(),
        };
        let (status, body, _) = http("POST", &clear, cookie, &form).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(b.admin().queue("kept").await.unwrap().size, 1);
    }
    // The page's own token with its cookie is what a click sends.
    let (status, _, _) = http(
        "POST",
        &clear,
        Some(&cookie),
        &format!("action=clear&csrf={token}"),
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(b.admin().queue("kept").await.unwrap().size, 0);

    b.client()
        .enqueue_to("kept", &Note::new(&jobs::token(), "y"))
        .await
        .unwrap();
    let read_only =
        Site::start(jobqueue_web::Dashboard::new(Arc::clone(&b.broker)).read_only()).await;
    let (status, page, cookies) = http("GET", &read_only.url("/queues"), None, "").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("kept") && page.contains("read-only"),
        "{page}"
    );
    assert!(
        !page.contains("<form method=\"post\""),
        "a read-only page offers an action"
    );
    let cookie = cookies[0].split(';').next().unwrap().to_owned();
    let token = cookie.trim_start_matches("jobqueue_csrf=");
    let (status, body, _) = http(
        "POST",
        &read_only.url("/queues/kept/act"),
        Some(&cookie),
        &format!("action=clear&csrf={token}"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("read-only"), "{body}");
    assert_eq!(b.admin().queue("kept").await.unwrap().size, 1);
}

/// A page another origin serves: `html` at `/{name}` for each pair, on `ip` at a free port.
struct Elsewhere {
    base: String,
    server: tokio::task::JoinHandle<()>,
}

impl Elsewhere {
    async fn start(ip: &str, pages: Vec<(String, String)>) -> Self {
        let mut app = axum::Router::new();
        for (name, html) in pages {
            app = app.route(
                &format!("/{name}"),
                axum::routing::get(move || async move { axum::response::Html(html) }),
            );
        }
        let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
            .await
            .expect("a free loopback port");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the other site serves");
        });
        Self { base, server }
    }
}

impl Drop for Elsewhere {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A page that plants `cookie` (when given) for the dashboard's host, as any page on a
/// sibling origin may, then posts `action` with `token` to the dashboard's `target` at once.
fn attack_page(target: &str, action: &str, token: &str, cookie: Option<&str>) -> String {
    let plant = cookie
        .map(|c| format!("document.cookie = {:?};", c))
        .unwrap_or_default();
    format!(
        r#"<!doctype html><html><body><p>Win a prize!</p>
<form method="post" action="{target}"><input type="hidden" name="action" value="{action}">
<input type="hidden" name="csrf" value="{token}"></form>
<script>{plant} document.forms[0].submit();</script></body></html>"#
    )
}

/// A token the dashboard signed, as an attacker gets one by opening the dashboard itself.
async fn a_signed_token(site: &Site) -> String {
    let (status, _, cookies) = http("GET", &site.url("/assets/style.css"), None, "").await;
    assert_eq!(status, 200);
    let cookie = cookies
        .iter()
        .find_map(|c| c.split(';').next()?.strip_prefix("jobqueue_csrf="))
        .expect("a CSRF cookie");
    cookie.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_from_other_sites_change_nothing_and_a_click_still_works() {
    let b = Backend::redis().await;
    b.client()
        .enqueue_to("target", &Note::new(&jobs::token(), "x"))
        .await
        .unwrap();
    let admin = b.admin();
    let site = Site::start(jobqueue_web::Dashboard::new(Arc::clone(&b.broker))).await;
    let target = site.url("/queues/target/act");
    let signed = a_signed_token(&site).await;
    let chosen = "0".repeat(64);
    // 127.0.0.2 is another site (SameSite keeps the dashboard's cookie from it); another
    // port of 127.0.0.1 is the same site, another origin, and may set cookies the
    // dashboard's host receives.
    let cross_site = Elsewhere::start(
        "127.0.0.2",
        vec![(
            "attack".into(),
            attack_page(&target, "pause", &signed, None),
        )],
    )
    .await;
    let plant = |value: &str| format!("jobqueue_csrf={value}; path=/jobs/queues");
    let sibling = Elsewhere::start(
        "127.0.0.1",
        vec![
            (
                "chosen".into(),
                attack_page(&target, "pause", &chosen, Some(&plant(&chosen))),
            ),
            (
                "signed".into(),
                attack_page(&target, "pause", &signed, Some(&plant(&signed))),
            ),
        ],
    )
    .await;

    let browser = Browser::start("web-csrf").await;
    // The victim has the dashboard open: its browser holds the dashboard's own cookie.
    browser.open(&site.url("/queues")).await;
    let attacks = [
        ("chosen-cookie", format!("{}/chosen", sibling.base)),
        ("signed-cookie", format!("{}/signed", sibling.base)),
        ("cross-site", format!("{}/attack", cross_site.base)),
    ];
    // The sibling's planted cookies have no SameSite attribute, and Chrome sends such a
    // cookie on a cross-site POST in its first two minutes: the cross-site form carries
    // the planted signed token too, and only its origin gives it away.
    let mut failures = Vec::new();
    for (name, url) in attacks {
        browser
            .client
            .goto(&url)
            .await
            .expect("open the other site");
        // The form posts itself: wait until the dashboard's answer is on screen, whatever
        // it is.
        eventually(LIMIT, "the dashboard's answer", || async {
            let at = browser.client.current_url().await.unwrap().to_string();
            at.starts_with(&site.base) && !browser.text().await.is_empty()
        })
        .await;
        let text = browser.text().await;
        browser.screenshot(&format!("refused-{name}")).await;
        // Every attack is tried before judging, so a failure shows them all.
        if !admin.paused().await.unwrap().is_empty() {
            failures.push(format!("{name}: the queue was paused"));
            admin.resume("target").await.unwrap();
        } else if !(text.contains("403") && text.contains("Refused")) {
            // Refused for where it came from, before any token is looked at.
            failures.push(format!("{name}: not refused for its origin: {text}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // The dashboard's own button still works, in the same browser.
    browser.open(&site.url("/queues")).await;
    browser
        .click("tr[data-queue='target'] button[value=pause]")
        .await;
    browser.wait_for_text("Paused target until resumed.").await;
    let paused = admin.paused().await.unwrap();
    assert_eq!(paused.len(), 1, "{paused:?}");
    assert_eq!(paused[0].0, "target");
    browser.screenshot("own-click").await;
    browser.close().await;
}

/// `bytes` as one path segment, everything but plain characters escaped.
fn encode_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    for byte in bytes {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(byte) {
            out.push(*byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_and_action_answers_whatever_redis_holds() {
    let b = Backend::redis().await;
    let url = b.server.as_ref().unwrap().url();
    tokio::task::spawn_blocking(move || extremes::seed(&url))
        .await
        .unwrap();
    let site = Site::start(jobqueue_web::Dashboard::new(Arc::clone(&b.broker))).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let huge = "18446744073709551615";
    let over = "99999999999999999999999999";
    let mut paths: Vec<String> = [
        "",
        "/",
        "/stats.json",
        "/queues",
        "/busy",
        "/periodic",
        "/classes",
        "/nowhere",
        "/assets/nothing",
        "/queues/nowhere",
    ]
    .map(str::to_owned)
    .to_vec();
    for name in extremes::queue_names() {
        let queue = format!("/queues/{}", encode_bytes(&name));
        for query in [
            "",
            "?page=0",
            "?page=-1",
            &format!("?page={huge}"),
            &format!("?page={over}"),
        ] {
            paths.push(format!("{queue}{query}"));
        }
    }
    for set in ["/scheduled", "/retries", "/dead"] {
        for query in [
            String::new(),
            format!("?page={huge}"),
            format!("?page={over}"),
            "?class=Extreme".into(),
            format!("?class=Extreme&from={huge}"),
            format!("?error=huge&from={over}"),
            "?queue=%FF%FE&notice=%FF".into(),
        ] {
            paths.push(format!("{set}{query}"));
        }
        for jid in extremes::JIDS.iter().chain(&["nothing"]) {
            paths.push(format!("{set}/{jid}"));
            paths.push(format!("{set}/{jid}?at={huge}"));
            paths.push(format!("{set}/{jid}?at=-1"));
        }
    }
    let mut failures = Vec::new();
    for path in &paths {
        let url = site.url(path);
        match client.get(&url).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.bytes().await;
                if status >= 500 || body.is_err() {
                    failures.push(format!("GET {path}: {status} {body:?}"));
                }
            }
            Err(e) => failures.push(format!("GET {path}: no answer: {e}")),
        }
    }

    assert!(failures.is_empty(), "{failures:#?}");

    // What a person sees of them, before the actions below change them.
    let browser = Browser::start("web-extremes").await;
    let far = format!("/scheduled/{}", extremes::JIDS[0]);
    let huge_count = format!("/retries/{}", extremes::JIDS[5]);
    for (path, shown) in [
        (far.as_str(), "far future"),
        (huge_count.as_str(), "9223372036854775807 failure(s)"),
        ("/scheduled", "in 285"),
        ("/busy", "huge:2:b"),
        ("/classes", "Extreme"),
        ("/periodic", "plain"),
        ("", "Processed"),
    ] {
        let text = browser.open(&site.url(path)).await;
        assert!(
            text.contains(shown),
            "{path} does not show {shown:?}: {text}"
        );
        browser
            .screenshot(&format!("extreme{}", path.replace('/', "-")))
            .await;
    }
    browser.close().await;

    // Every action on every extreme entry, with the page's own token and origin.
    let token = a_signed_token(&site).await;
    let own = site.base.trim_end_matches("/jobs").to_owned();
    let mut forms: Vec<(String, String)> = Vec::new();
    // Each set's entries are all sent to their queue, killed or deleted, one by one by
    // their ids, then the rest in bulk.
    for (set, action) in [
        ("/retries", "run"),
        ("/scheduled", "kill"),
        ("/dead", "run"),
        ("/retries", "delete"),
    ] {
        for jid in extremes::JIDS {
            forms.push((
                format!("{set}/act"),
                format!("action={action}&jid={jid}&pos={huge}"),
            ));
        }
        forms.push((
            format!("{set}/act"),
            format!("action={action}&scope=all&pos={over}"),
        ));
    }
    for name in extremes::queue_names() {
        let act = format!("/queues/{}/act", encode_bytes(&name));
        for form in [
            "action=pause&for=1d",
            "action=pause&for=100y",
            "action=resume",
            "action=delete&jid=q1",
            "action=clear",
        ] {
            forms.push((act.clone(), form.into()));
        }
    }
    for form in [
        format!("action=pause&name=huge&for={huge}"),
        format!("action=pause&name=plain&for={over}"),
        "action=run&name=huge".into(),
        "action=run&name=not-json".into(),
        "action=run&name=plain".into(),
        "action=resume&name=huge".into(),
    ] {
        forms.push(("/periodic/act".into(), form));
    }
    for form in [
        "action=quiet&identity=huge:2:b",
        "action=stop&identity=garbage:1:a",
        "action=cancel&jid=running",
        "action=cancel&jid=%FF%FE",
    ] {
        forms.push(("/busy/act".into(), form.into()));
    }
    for (path, form) in &forms {
        let response = client
            .post(site.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", format!("jobqueue_csrf={token}"))
            .header("origin", &own)
            .body(format!("{form}&csrf={token}"))
            .send()
            .await;
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                if !(status == 303 || (400..500).contains(&status)) {
                    failures.push(format!("POST {path} {form}: {status} {body}"));
                }
            }
            Err(e) => failures.push(format!("POST {path} {form}: no answer: {e}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
