//! Per job class, over the last minute: throughput, failure rate, duration percentiles
//! and memory, summed over the live processes, against the time limit of the class's tier
//! (a class run 60 or more times a minute must finish within 1 s, a rarer one within 5 s)
//! and the memory limits of the default budget; then the latest runs over their budget.

use std::time::Duration;

use jobqueue::budget::size;
use jobqueue::{Budget, ClassStats};
use maud::html;

use crate::page::{from_epoch, layout, precise, when, Ctx, Nav, PageResult};
use crate::State;

/// The tier's name and time limit, without the class's own budget (which only its
/// processes know; their violations below apply it).
fn tier(stats: &ClassStats) -> (&'static str, Duration) {
    let limit = Budget::DEFAULT.time_limit(stats.runs_per_minute);
    if stats.runs_per_minute >= Budget::FREQUENT_PER_MINUTE {
        ("frequent", limit)
    } else {
        ("rare", limit)
    }
}

/// A figure of a violation in its unit.
fn figure(limit: &str, n: u64) -> String {
    match limit {
        "time" | "misclassified" => precise(Duration::from_micros(n)),
        _ => size(n),
    }
}

/// `GET /classes`.
pub(crate) async fn show(state: State, ctx: Ctx) -> PageResult {
    let classes = state.0.admin.classes().await?;
    let body = html! {
        p.summary {
            "The last minute, summed over the live processes. A duration over its tier's limit, "
            "or memory over the default budget (" (size(Budget::ALLOC)) " held, " (size(Budget::RETAINED))
            " retained), is highlighted. Memory shows when the service installs the tracking allocator."
        }
        div.scroll { table {
            thead { tr {
                th { "Class" } th.num { "Runs/min" } th.num { "Failure rate" } th { "Tier (limit)" }
                th.num { "p50" } th.num { "p95" } th.num { "p99" } th.num { "Max" }
                th.num { "Peak memory" } th.num { "Retained" } th.num { "Runs since start" }
            } }
            tbody {
                @for c in &classes {
                    @let (name, limit) = tier(c);
                    tr data-class=(c.class) {
                        td { (c.class) }
                        td.num { (c.runs_per_minute) }
                        td.num.warn[c.failed_per_minute > 0] {
                            (format!("{:.1} %", c.failure_rate() * 100.0))
                        }
                        td { (name) " (" (precise(limit)) ")" }
                        td.num.over[c.p50 > limit] { (precise(c.p50)) }
                        td.num.over[c.p95 > limit] { (precise(c.p95)) }
                        td.num.over[c.p99 > limit] { (precise(c.p99)) }
                        td.num.over[c.max > limit] { (precise(c.max)) }
                        td.num.over[c.peak_bytes > Some(Budget::ALLOC)] { (c.peak_bytes.map_or("-".to_owned(), size)) }
                        td.num.over[c.retained_bytes > Some(Budget::RETAINED)] { (c.retained_bytes.map_or("-".to_owned(), size)) }
                        td.num { (c.total_runs) " (" (c.total_failed) " failed)" }
                    }
                }
                @if classes.is_empty() { tr { td colspan="11" { "No runs reported by live processes yet." } } }
            }
        } }
        h2 { "Latest runs over budget" }
        div.scroll { table {
            thead { tr {
                th { "Class" } th { "When" } th { "Job" } th { "Limit" } th.num { "Used" } th.num { "Allowed" } th { "Tier" }
            } }
            tbody {
                @for c in &classes {
                    @for v in &c.violations {
                        tr data-violation=(v.jid) {
                            td { (c.class) }
                            td { @if let Some(at) = from_epoch(v.at_ms as f64 / 1000.0) { (when(at)) } }
                            td.mono { (v.jid) }
                            td { (v.limit) }
                            td.num { (figure(&v.limit, v.figure)) }
                            td.num { (figure(&v.limit, v.allowed)) }
                            td { (v.tier) }
                        }
                    }
                }
                @if classes.iter().all(|c| c.violations.is_empty()) {
                    tr { td colspan="7" { "No run went over its budget." } }
                }
            }
        } }
    };
    Ok(layout(&ctx, Nav::Classes, "Classes", body))
}
