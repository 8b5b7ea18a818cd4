//! The overview: totals, and processed and failed per second, live.

use axum::Json;
use jobqueue::SortedSet;
use maud::html;
use serde::Serialize;

use crate::error::WebError;
use crate::page::{layout, Ctx, Nav, PageResult};
use crate::State;

/// The figures of the overview, also served as JSON for the live chart.
#[derive(Serialize)]
pub(crate) struct Numbers {
    processed: u64,
    failed: u64,
    busy: usize,
    enqueued: usize,
    retries: usize,
    scheduled: usize,
    dead: usize,
    processes: usize,
    cancelled: u64,
    /// Jobs waiting in the outboxes relays read, and the age of the oldest in seconds, as
    /// the relays that reported in the last minute say; `None` without such a relay.
    outbox: Option<(u64, f64)>,
}

/// Relays silent for longer are not counted.
const RELAY_FRESH: std::time::Duration = std::time::Duration::from_secs(60);

async fn read(app: &crate::App) -> Result<Numbers, WebError> {
    let admin = &app.admin;
    let stats = admin.stats().await?;
    let processes = admin.processes().await?;
    let queues = admin.queues().await?;
    let relays = admin.relays(RELAY_FRESH).await?;
    // Relays of one outbox report the same rows: the largest reading stands for it.
    let outbox = relays
        .iter()
        .map(|(_, r)| (r.waiting, r.lag))
        .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1)));
    Ok(Numbers {
        processed: stats.processed,
        failed: stats.failed,
        busy: processes.iter().map(|p| p.busy).sum(),
        enqueued: queues.iter().map(|q| q.size).sum(),
        retries: admin.set_size(SortedSet::Retry).await?,
        scheduled: admin.set_size(SortedSet::Schedule).await?,
        dead: admin.set_size(SortedSet::Dead).await?,
        processes: processes.len(),
        cancelled: stats.cancelled,
        outbox,
    })
}

/// `GET /stats.json`.
pub(crate) async fn numbers(state: State) -> Result<Json<Numbers>, WebError> {
    Ok(Json(read(&state.0).await?))
}

/// `GET /`.
pub(crate) async fn show(state: State, ctx: Ctx) -> PageResult {
    let n = read(&state.0).await?;
    let cards = [
        ("processed", "Processed", n.processed as usize, "/"),
        ("failed", "Failed", n.failed as usize, "/retries"),
        ("busy", "Busy", n.busy, "/busy"),
        ("enqueued", "Enqueued", n.enqueued, "/queues"),
        ("retries", "Retries", n.retries, "/retries"),
        ("scheduled", "Scheduled", n.scheduled, "/scheduled"),
        ("dead", "Dead", n.dead, "/dead"),
        ("processes", "Processes", n.processes, "/busy"),
        ("cancelled", "Cancelled", n.cancelled as usize, "/busy"),
    ];
    let body = html! {
        section.cards {
            @for (key, label, value, path) in cards {
                a.card href=(ctx.link(path)) {
                    span.value data-stat=(key) { (value) }
                    span.label { (label) }
                }
            }
        }
        @if let Some((waiting, lag)) = n.outbox {
            section.outbox {
                h2 { "Outbox" }
                p {
                    span data-stat="outbox-waiting" { (waiting) } " jobs committed and waiting for a relay; the oldest for "
                    span data-stat="outbox-lag" { (format!("{lag:.1}")) } " s."
                }
            }
        }
        section.chart {
            h2 { "Jobs per second" }
            p.legend {
                span.processed { "processed" } " "
                span.failed { "failed" } " "
                span #rate { }
            }
            svg #chart viewBox="0 0 600 160" preserveAspectRatio="none" role="img"
                aria-label="processed and failed jobs per second, last two minutes"
                data-source=(ctx.link("/stats.json")) {
                polyline.processed points="" {}
                polyline.failed points="" {}
            }
        }
    };
    Ok(layout(&ctx, Nav::Overview, "Overview", body))
}
