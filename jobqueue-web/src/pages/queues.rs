//! Queues: size, latency and paused state; pause (for good or for a while), resume,
//! clear; a queue's waiting jobs, paged, each deletable; jobs set aside by their limits.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::Path;
use axum::response::Response;
use maud::{html, Markup};

use crate::error::WebError;
use crate::page::{
    brief, encode, layout, pager, short, when, Ctx, Nav, PageResult, Posted, PER_PAGE,
};
use crate::State;

/// The pause lengths offered, beside "until resumed".
const PAUSE_FOR: [(&str, Duration); 3] = [
    ("5m", Duration::from_secs(300)),
    ("1h", Duration::from_secs(3600)),
    ("1d", Duration::from_secs(86_400)),
];

fn controls(ctx: &Ctx, name: &str, paused: bool) -> Markup {
    let path = format!("/queues/{}/act", encode(name));
    html! {
        @if paused {
            (ctx.form(&path, "inline", html! {
                button name="action" value="resume" { "Resume" }
            }))
        } @else {
            (ctx.form(&path, "inline", html! {
                select name="for" aria-label="pause for" {
                    option value="" { "until resumed" }
                    @for (label, _) in PAUSE_FOR { option value=(label) { "for " (label) } }
                }
                button name="action" value="pause" { "Pause" }
            }))
        }
        (ctx.form(&path, "inline", html! {
            button.danger name="action" value="clear"
                data-confirm=(format!("Delete every job waiting in {name}?")) { "Clear" }
        }))
    }
}

/// `GET /queues`.
pub(crate) async fn list(state: State, ctx: Ctx) -> PageResult {
    let admin = &state.0.admin;
    let queues = admin.queues().await?;
    let paused: HashMap<String, Option<std::time::SystemTime>> =
        admin.paused().await?.into_iter().collect();
    let limits = admin.limits().await?;
    let body = html! {
        div.scroll { table {
            thead { tr { th { "Queue" } th.num { "Size" } th { "Latency" } th { "State" } th { "" } } }
            tbody {
                @for q in &queues {
                    @let until = paused.get(&q.name);
                    tr data-queue=(q.name) {
                        td { a href=(ctx.link(&format!("/queues/{}", encode(&q.name)))) { (q.name) } }
                        td.num { (q.size) }
                        td { (short(q.latency)) }
                        td {
                            @match until {
                                None => "running",
                                Some(None) => span.warn { "paused" },
                                Some(Some(at)) => span.warn { "paused, resumes " (when(*at)) },
                            }
                        }
                        td.actions { (controls(&ctx, &q.name, until.is_some())) }
                    }
                }
                @if queues.is_empty() { tr { td colspan="5" { "No queues yet." } } }
            }
        } }
        @if !limits.is_empty() {
            h2 { "Jobs waiting for their limits" }
            div.scroll { table #limits {
                thead { tr { th { "Limit key" } th.num { "Slots taken" } th.num { "Waiting" } th { "Looked at again" } } }
                tbody {
                    @for l in &limits {
                        tr {
                            td.mono { (l.key) }
                            td.num { (l.held) }
                            td.num { (l.parked) }
                            td { (when(l.next_look)) }
                        }
                    }
                }
            } }
        }
    };
    Ok(layout(&ctx, Nav::Queues, "Queues", body))
}

/// `GET /queues/{name}`: the waiting jobs, the next to run first.
pub(crate) async fn show(state: State, ctx: Ctx, Path(name): Path<String>) -> PageResult {
    let admin = &state.0.admin;
    let info = admin.queue(&name).await?;
    let paused = admin.paused().await?.iter().any(|(q, _)| *q == name);
    let offset = ctx.offset();
    let jobs = admin.queue_jobs(&name, offset, PER_PAGE).await?;
    let sensitive = admin.sensitive().await?;
    let path = format!("/queues/{}/act", encode(&name));
    let body = html! {
        p.summary {
            (info.size) " waiting · latency " (short(info.latency))
            @if paused { " · " span.warn { "paused" } }
        }
        div.actions { (controls(&ctx, &name, paused)) }
        div.scroll { table {
            thead { tr { th { "Job" } th { "Class" } th { "Arguments" } th { "Enqueued" } th { "" } } }
            tbody {
                @for job in &jobs {
                    tr {
                        @match &job.job {
                            Ok(e) => {
                                @let shown = sensitive.redact(e);
                                td.mono { (e.jid) }
                                td { (e.class) }
                                td.mono.args { (brief(&shown.args, 200)) }
                                td { @if let Some(at) = e.enqueued_at.and_then(crate::page::from_epoch) { (when(at)) } }
                                td.actions { (ctx.form(&path, "inline", html! {
                                    input type="hidden" name="jid" value=(e.jid);
                                    button.danger name="action" value="delete"
                                        data-confirm="Delete this job?" { "Delete" }
                                })) }
                            }
                            Err(raw) => {
                                td colspan="5" .mono { "not a job: " (brief(raw, 200)) }
                            }
                        }
                    }
                }
                @if jobs.is_empty() { tr { td colspan="5" { "No jobs waiting." } } }
            }
        } }
        (pager(&ctx, &format!("/queues/{}", encode(&name)), info.size))
    };
    Ok(layout(&ctx, Nav::Queues, &format!("Queue {name}"), body))
}

/// `POST /queues/{name}/act`: pause, resume, clear, or delete one job.
pub(crate) async fn act(
    state: State,
    Path(name): Path<String>,
    form: Posted,
) -> Result<Response, WebError> {
    let admin = &state.0.admin;
    let notice = match form.need("action")? {
        "pause" => match form.get("for") {
            None => {
                admin.pause(&name).await?;
                format!("Paused {name} until resumed.")
            }
            Some(label) => {
                let (_, cooldown) = PAUSE_FOR
                    .iter()
                    .find(|(l, _)| *l == label)
                    .ok_or_else(|| WebError::BadRequest(format!("no pause length `{label}`")))?;
                admin.pause_for(&name, *cooldown).await?;
                format!("Paused {name} for {label}.")
            }
        },
        "resume" => {
            admin.resume(&name).await?;
            format!("Resumed {name}.")
        }
        "clear" => {
            let cleared = admin.clear(&name).await?;
            format!("Cleared {cleared} jobs from {name}.")
        }
        "delete" => {
            let jid = form.need("jid")?;
            if admin.delete_queued(&name, jid).await? {
                format!("Deleted job {jid}.")
            } else {
                format!("Job {jid} had already left {name}.")
            }
        }
        other => return Err(WebError::BadRequest(format!("no action `{other}`"))),
    };
    let back = if form.get("action") == Some("delete") {
        format!("/queues/{}", encode(&name))
    } else {
        "/queues".to_owned()
    };
    Ok(form.ctx.done(&back, &notice))
}
