//! Periodic schedules as the worker processes publish them: next ticks, last run, paused;
//! pause, resume, enqueue now.

use std::time::Duration;

use axum::response::Response;
use maud::html;
use serde_json::Value;

use crate::error::WebError;
use crate::page::{brief, from_epoch, layout, when, Ctx, Nav, PageResult, Posted};
use crate::State;

/// `GET /periodic`.
pub(crate) async fn show(state: State, ctx: Ctx) -> PageResult {
    let schedules = state.0.admin.periodic().await?;
    let time =
        |v: &Value| html! { @if let Some(at) = v.as_f64().and_then(from_epoch) { (when(at)) } };
    let body = html! {
        div.scroll { table {
            thead { tr {
                th { "Name" } th { "Schedule" } th { "Job" } th { "Next ticks" } th { "Last run" }
                th { "State" } th { "" }
            } }
            tbody {
                @for s in &schedules {
                    @let name = s["name"].as_str().unwrap_or_default();
                    tr data-periodic=(name) {
                        td { (name) }
                        td { (s["schedule"].as_str().unwrap_or_default()) }
                        td {
                            (s["class"].as_str().unwrap_or_default()) " on " (s["queue"].as_str().unwrap_or_default())
                            br; span.mono.args { (brief(&s["args"], 120)) }
                        }
                        td { ul.ticks { @for tick in s["next_ticks"].as_array().into_iter().flatten() { li { (time(tick)) } } } }
                        td { (time(&s["last_tick"])) }
                        td {
                            @if s["paused"].as_bool() == Some(true) {
                                span.warn { "paused" }
                                @if let Some(until) = s["paused_until"].as_f64().and_then(from_epoch) { " until " (when(until)) }
                            } @else { "active" }
                        }
                        td.actions { (ctx.form("/periodic/act", "inline", html! {
                            input type="hidden" name="name" value=(name);
                            @if s["paused"].as_bool() == Some(true) {
                                button name="action" value="resume" { "Resume" }
                            } @else {
                                button name="action" value="pause" { "Pause" }
                            }
                            button name="action" value="run" { "Enqueue now" }
                        })) }
                    }
                }
                @if schedules.is_empty() { tr { td colspan="7" { "No worker publishes periodic schedules." } } }
            }
        } }
    };
    Ok(layout(&ctx, Nav::Periodic, "Periodic", body))
}

/// The longest timed pause of a schedule: a year.
const MAX_PAUSE_SECS: u64 = 366 * 24 * 3600;

/// `POST /periodic/act`: pause (optionally for `for` seconds), resume, or enqueue now.
pub(crate) async fn act(state: State, form: Posted) -> Result<Response, WebError> {
    let admin = &state.0.admin;
    let name = form.need("name")?;
    let notice = match form.need("action")? {
        "pause" => {
            // Seconds, up to a year; without `for`, until resumed.
            let cooldown = match form.get("for") {
                None => None,
                Some(text) => Some(
                    text.parse::<u64>()
                        .ok()
                        .filter(|s| (1..=MAX_PAUSE_SECS).contains(s))
                        .map(Duration::from_secs)
                        .ok_or_else(|| {
                            WebError::BadRequest(format!(
                                "`for` must be a number of seconds from 1 to {MAX_PAUSE_SECS}, not `{text}`"
                            ))
                        })?,
                ),
            };
            admin.pause_periodic(name, cooldown).await?;
            format!("Paused {name}.")
        }
        "resume" => {
            admin.resume_periodic(name).await?;
            format!("Resumed {name}.")
        }
        "run" => match admin.run_periodic(name).await? {
            Some(jid) => format!("Enqueued {name} now as job {jid}."),
            None => return Err(WebError::NotFound(format!("no process publishes `{name}`"))),
        },
        other => return Err(WebError::BadRequest(format!("no action `{other}`"))),
    };
    Ok(form.ctx.done("/periodic", &notice))
}
