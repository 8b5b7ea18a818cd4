//! Busy: the live worker processes (identity, queues, concurrency, busy, memory, last
//! beat, quiet) and the jobs they run; quiet or stop a process.

use axum::response::Response;
use jobqueue::Envelope;
use maud::html;
use serde_json::Value;

use crate::error::WebError;
use crate::page::{brief, layout, when, Ctx, Nav, PageResult, Posted};
use crate::State;

/// `GET /busy`.
pub(crate) async fn show(state: State, ctx: Ctx) -> PageResult {
    let processes = state.0.admin.processes().await?;
    let body = html! {
        h2 { "Processes" }
        div.scroll { table {
            thead { tr {
                th { "Process" } th { "Queues" } th.num { "Busy" } th { "Memory" }
                th { "Last beat" } th { "State" } th { "" }
            } }
            tbody {
                @for p in &processes {
                    @let info: Value = serde_json::from_str(&p.info).unwrap_or_default();
                    @let concurrency = info["concurrency"].as_u64().unwrap_or(0);
                    tr data-process=(p.identity) {
                        td {
                            span.mono { (p.identity) }
                            @if let Some(tag) = info["tag"].as_str() { " " span.badge { (tag) } }
                        }
                        td { (info["queues"].as_array().map(|q| q.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                        td.num { (p.busy) " / " (concurrency) }
                        td { (format!("{:.1} MB", p.rss_kb as f64 / 1024.0)) }
                        td { (when(p.beat)) }
                        td { @if p.quiet { span.warn { "quiet" } } @else { "running" } }
                        td.actions { (ctx.form("/busy/act", "inline", html! {
                            input type="hidden" name="identity" value=(p.identity);
                            @if !p.quiet { button name="action" value="quiet" { "Quiet" } }
                            button.danger name="action" value="stop"
                                data-confirm="Stop this process? Its running jobs finish first." { "Stop" }
                        })) }
                    }
                }
                @if processes.is_empty() { tr { td colspan="7" { "No live processes." } } }
            }
        } }
        h2 { "Running jobs" }
        div.scroll { table {
            thead { tr { th { "Process" } th { "Slot" } th { "Queue" } th { "Class" } th { "Arguments" } th { "Started" } th { "" } } }
            tbody {
                @for p in &processes {
                    @for r in &p.running {
                        // Running payloads are redacted by the process that runs them.
                        @let job = Envelope::parse(&r.payload).ok();
                        tr {
                            td.mono { (p.identity) }
                            td.mono { (r.slot) }
                            td { (r.queue) }
                            td { (job.as_ref().map_or("?", |j| j.class.as_str())) }
                            td.mono.args { (job.as_ref().map(|j| brief(&j.args, 200)).unwrap_or_default()) }
                            td { (when(r.since)) }
                            td.actions { @if let Some(job) = &job {
                                (ctx.form("/busy/act", "inline", html! {
                                    input type="hidden" name="jid" value=(job.jid);
                                    button.danger name="action" value="cancel"
                                        data-confirm="Cancel this job? It is stopped, not retried." { "Cancel" }
                                }))
                            } }
                        }
                    }
                }
                @if processes.iter().all(|p| p.running.is_empty()) {
                    tr { td colspan="7" { "Nothing running." } }
                }
            }
        } }
    };
    Ok(layout(&ctx, Nav::Busy, "Busy", body))
}

/// `POST /busy/act`: quiet or stop a process (at its next heartbeat).
pub(crate) async fn act(state: State, form: Posted) -> Result<Response, WebError> {
    let admin = &state.0.admin;
    if form.get("action") == Some("cancel") {
        let jid = form.need("jid")?;
        admin.cancel(jid).await?;
        return Ok(form.ctx.done("/busy", &format!("Asked job {jid} to stop.")));
    }
    let identity = form.need("identity")?;
    let notice = match form.need("action")? {
        "quiet" => {
            admin.quiet(identity).await?;
            format!("Asked {identity} to go quiet.")
        }
        "stop" => {
            admin.stop(identity).await?;
            format!("Asked {identity} to stop.")
        }
        other => return Err(WebError::BadRequest(format!("no action `{other}`"))),
    };
    Ok(form.ctx.done("/busy", &notice))
}
