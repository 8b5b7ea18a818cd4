//! What the command shows of the whole system: stats, queues, processes, periodic
//! schedules, per-key limits and job classes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobqueue::{Admin, SortedSet};
use serde_json::{json, Value};

use crate::out::{seconds, Out};
use crate::Failure;

pub(crate) async fn stats(admin: &Admin, out: &Out) -> Result<(), Failure> {
    let stats = admin.stats().await?;
    let mut enqueued = 0;
    for queue in admin.queues().await? {
        enqueued += queue.size;
    }
    let sizes = [
        ("scheduled", admin.set_size(SortedSet::Schedule).await?),
        ("retries", admin.set_size(SortedSet::Retry).await?),
        ("dead", admin.set_size(SortedSet::Dead).await?),
    ];
    let processes = admin.processes().await?.len();
    let mut values = vec![
        ("processed", stats.processed as usize),
        ("failed", stats.failed as usize),
        ("skipped", stats.skipped as usize),
        ("cancelled", stats.cancelled as usize),
        ("enqueued", enqueued),
    ];
    values.extend(sizes);
    values.push(("processes", processes));
    let json = Value::Object(
        values
            .iter()
            .map(|(k, v)| ((*k).into(), json!(v)))
            .collect(),
    );
    let rows = values
        .iter()
        .map(|(k, v)| vec![(*k).to_owned(), v.to_string()])
        .collect();
    out.table(&["stat", "value"], rows, json);
    Ok(())
}

pub(crate) async fn queues(admin: &Admin, out: &Out) -> Result<(), Failure> {
    let paused = admin.paused().await?;
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for queue in admin.queues().await? {
        let pause = paused.iter().find(|(name, _)| *name == queue.name);
        let pause_text = match pause {
            None => String::new(),
            Some((_, None)) => "paused".into(),
            Some((_, Some(until))) => format!("paused until {}", seconds(*until)),
        };
        json.push(json!({
            "name": queue.name, "size": queue.size,
            "latency_seconds": queue.latency.as_secs_f64(),
            "paused": pause.is_some(),
            "paused_until": pause.and_then(|(_, until)| until.map(seconds)),
        }));
        rows.push(vec![
            queue.name,
            queue.size.to_string(),
            format!("{:.1}s", queue.latency.as_secs_f64()),
            pause_text,
        ]);
    }
    out.table(
        &["queue", "size", "latency", "paused"],
        rows,
        Value::Array(json),
    );
    Ok(())
}

pub(crate) async fn processes(admin: &Admin, out: &Out) -> Result<(), Failure> {
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for p in admin.processes().await? {
        let info: Value = serde_json::from_str(&p.info).unwrap_or_default();
        let concurrency = info["concurrency"].as_u64().unwrap_or(0);
        let beat = seconds(p.beat);
        json.push(json!({
            "identity": p.identity, "busy": p.busy, "concurrency": concurrency,
            "quiet": p.quiet, "beat": beat, "queues": info["queues"],
        }));
        rows.push(vec![
            p.identity,
            p.busy.to_string(),
            concurrency.to_string(),
            if p.quiet { "yes" } else { "no" }.into(),
            format!("{beat:.0}"),
        ]);
    }
    out.table(
        &["identity", "busy", "concurrency", "quiet", "beat"],
        rows,
        Value::Array(json),
    );
    Ok(())
}

pub(crate) async fn periodic(admin: &Admin, out: &Out) -> Result<(), Failure> {
    let schedules = admin.periodic().await?;
    let now = seconds(SystemTime::now());
    let rows = schedules
        .iter()
        .map(|s| {
            let text = |key: &str| s[key].as_str().unwrap_or_default().to_owned();
            let next = s["next_tick"]
                .as_f64()
                .map(|t| format!("in {:.0}s", (t - now).max(0.0)))
                .unwrap_or_default();
            vec![
                text("name"),
                text("schedule"),
                text("class"),
                text("queue"),
                next,
            ]
        })
        .collect();
    out.table(
        &["name", "schedule", "class", "queue", "next tick"],
        rows,
        Value::Array(schedules),
    );
    Ok(())
}

pub(crate) async fn limits(admin: &Admin, out: &Out) -> Result<(), Failure> {
    let limits = admin.limits().await?;
    let now = seconds(SystemTime::now());
    let rows = limits
        .iter()
        .map(|l| {
            vec![
                l.key.clone(),
                l.held.to_string(),
                l.parked.to_string(),
                format!("{:.1}s", (seconds(l.next_look) - now).max(0.0)),
            ]
        })
        .collect();
    let json: Vec<Value> = limits
        .iter()
        .map(|l| json!({"key": l.key, "held": l.held, "waiting": l.parked, "next_look": seconds(l.next_look)}))
        .collect();
    out.table(
        &["key", "slots taken", "waiting", "looked at in"],
        rows,
        Value::Array(json),
    );
    Ok(())
}

pub(crate) async fn classes(admin: &Admin, out: &Out) -> Result<(), Failure> {
    let classes = admin.classes().await?;
    let bytes = |b: Option<u64>| b.map_or_else(|| "-".to_owned(), jobqueue::budget::size);
    let rows = classes
        .iter()
        .map(|c| {
            vec![
                c.class.clone(),
                c.runs_per_minute.to_string(),
                format!("{:.1}%", c.failure_rate() * 100.0),
                format!("{:?}", c.p50),
                format!("{:?}", c.p99),
                format!("{:?}", c.max),
                bytes(c.peak_bytes),
                bytes(c.retained_bytes),
                c.violations.len().to_string(),
            ]
        })
        .collect();
    let json: Vec<Value> = classes
        .iter()
        .map(|c| {
            json!({
                "class": c.class,
                "runs_per_minute": c.runs_per_minute,
                "failed_per_minute": c.failed_per_minute,
                "total_runs": c.total_runs,
                "total_failed": c.total_failed,
                "p50_s": c.p50.as_secs_f64(),
                "p95_s": c.p95.as_secs_f64(),
                "p99_s": c.p99.as_secs_f64(),
                "max_s": c.max.as_secs_f64(),
                "peak_bytes": c.peak_bytes,
                "retained_bytes": c.retained_bytes,
                "violations": c.violations,
            })
        })
        .collect();
    out.table(
        &[
            "class",
            "runs/min",
            "failed",
            "p50",
            "p99",
            "max",
            "peak mem",
            "retained",
            "over budget",
        ],
        rows,
        Value::Array(json),
    );
    let violations: Vec<Vec<String>> = classes
        .iter()
        .flat_map(|c| c.violations.iter().map(move |v| (c, v)))
        .map(|(c, v)| {
            let figure = |n: u64| match v.limit.as_str() {
                "time" | "misclassified" => format!("{:?}", Duration::from_micros(n)),
                _ => jobqueue::budget::size(n),
            };
            let at = UNIX_EPOCH + Duration::from_millis(v.at_ms);
            vec![
                c.class.clone(),
                format!("{:.0}s ago", seconds(SystemTime::now()) - seconds(at)),
                v.jid.clone(),
                v.limit.clone(),
                figure(v.figure),
                figure(v.allowed),
                v.tier.clone(),
            ]
        })
        .collect();
    if !out.json && !violations.is_empty() {
        println!();
        println!("latest runs over budget:");
        out.table(
            &["class", "when", "jid", "limit", "figure", "allowed", "tier"],
            violations,
            Value::Null,
        );
    }
    Ok(())
}

pub(crate) async fn known_process(admin: &Admin, identity: &str) -> Result<(), Failure> {
    if admin
        .processes()
        .await?
        .iter()
        .any(|p| p.identity == identity)
    {
        Ok(())
    } else {
        Err(Failure::NotFound(format!(
            "no live process {identity}; `jobqueue processes` lists them"
        )))
    }
}
