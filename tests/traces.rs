//! A `tracing` span per enqueue and per perform, with the job's id, class, queue and retry
//! count, on both brokers. One subscriber serves the whole binary; each test looks only at
//! the spans of its own job ids.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use support::jobs::{self, Flaky};
use support::{eventually, start, Backend};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::fmt::MakeWriter;

const LIMIT: Duration = Duration::from_secs(20);

on_both_brokers!(enqueue_and_perform_each_have_a_span);

/// Everything the subscriber writes, one line per span opened.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn lines() -> &'static Lines {
    static LINES: OnceLock<Lines> = OnceLock::new();
    LINES.get_or_init(|| {
        let lines = Lines::default();
        tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_span_events(FmtSpan::NEW)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .init();
        lines
    })
}

/// The lines that open a span named `name` and mention `jid`.
fn spans(name: &str, jid: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&lines().0.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains(&format!("{name}{{")) && l.contains(jid) && l.ends_with("new"))
        .map(str::to_owned)
        .collect()
}

async fn enqueue_and_perform_each_have_a_span(b: Backend) {
    lines();
    let t = jobs::token();
    let jid = b
        .client()
        .enqueue(&Flaky {
            token: t.clone(),
            failures: 1,
        })
        .await
        .unwrap();
    let h = start(b.worker().register::<Flaky>());
    eventually(LIMIT, "it failed once, then succeeded", || async {
        jobs::runs(&t).len() == 2
    })
    .await;
    h.stop().await;

    // The enqueue, then the retry's way back to its queue through the client.
    let enqueues = spans("jobqueue.enqueue", &jid);
    assert_eq!(enqueues.len(), 2, "{enqueues:#?}");
    assert!(enqueues
        .iter()
        .all(|e| e.contains("class=Flaky") && e.contains("queue=default")));
    assert!(enqueues[0].contains("origin=Enqueue"), "{}", enqueues[0]);
    assert!(enqueues[1].contains("origin=Retry"), "{}", enqueues[1]);
    let performs = spans("jobqueue.perform", &jid);
    assert_eq!(performs.len(), 2, "{performs:#?}");
    assert!(performs[0].contains("retry_count=0"), "{}", performs[0]);
    assert!(performs[1].contains("retry_count=1"), "{}", performs[1]);
    assert!(performs.iter().all(|p| p.contains("class=Flaky")));
}
