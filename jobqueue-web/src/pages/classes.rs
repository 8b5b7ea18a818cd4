//! Per job class, over the last minute: throughput, failure rate and duration
//! percentiles, summed over the live processes, against the time limit of the class's
//! tier (a class run 60 or more times a minute must finish within 1 s, a rarer one within
//! 5 s).

use std::time::Duration;

use jobqueue::ClassStats;
use maud::html;

use crate::page::{layout, precise, Ctx, Nav, PageResult};
use crate::State;

/// Runs per minute from which a class counts as frequent.
const FREQUENT: u64 = 60;

/// The tier's name and time limit.
fn tier(stats: &ClassStats) -> (&'static str, Duration) {
    if stats.runs_per_minute >= FREQUENT {
        ("frequent", Duration::from_secs(1))
    } else {
        ("rare", Duration::from_secs(5))
    }
}

/// `GET /classes`.
pub(crate) async fn show(state: State, ctx: Ctx) -> PageResult {
    let classes = state.0.admin.classes().await?;
    let body = html! {
        p.summary { "The last minute, summed over the live processes. A duration over its tier's limit is highlighted." }
        div.scroll { table {
            thead { tr {
                th { "Class" } th.num { "Runs/min" } th.num { "Failure rate" } th { "Tier (limit)" }
                th.num { "p50" } th.num { "p95" } th.num { "p99" } th.num { "Max" } th.num { "Runs since start" }
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
                        td.num { (c.total_runs) " (" (c.total_failed) " failed)" }
                    }
                }
                @if classes.is_empty() { tr { td colspan="9" { "No runs reported by live processes yet." } } }
            }
        } }
    };
    Ok(layout(&ctx, Nav::Classes, "Classes", body))
}
