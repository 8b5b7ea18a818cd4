//! The scheduled, retry and dead sets: paged lists with filters, a job's detail, and the
//! actions on one job, on a selection, or on every job matching the filters.
//!
//! Pages read only their rows (a range of the sorted set). A filtered page scans from where
//! the previous one stopped, at most [`SCAN_LIMIT`] jobs per request, so a page stays fast
//! however large the set.

use std::collections::HashMap;

use axum::extract::Path;
use axum::response::Response;
use jobqueue::admin::SetEntry;
use jobqueue::{Admin, SortedSet};
use maud::{html, Markup};
use serde_json::Value;

use crate::error::WebError;
use crate::page::{
    brief, encode, from_epoch, layout, pager, pretty, when, Ctx, Nav, PageResult, Posted, PER_PAGE,
};
use crate::State;

/// The most jobs one filtered page reads.
const SCAN_LIMIT: usize = 5_000;
/// Jobs read per round trip while scanning.
const CHUNK: usize = 500;

/// One of the three sets as the dashboard shows it.
#[derive(Clone, Copy)]
struct Kind {
    set: SortedSet,
    path: &'static str,
    title: &'static str,
    nav: Nav,
    /// The dead set lists the latest deaths first, as Sidekiq's does.
    newest_first: bool,
    /// The actions offered: form value and label.
    actions: &'static [(&'static str, &'static str)],
    /// What the time column means.
    at_label: &'static str,
}

fn kind(name: &str) -> Result<Kind, WebError> {
    match name {
        "scheduled" => Ok(Kind {
            set: SortedSet::Schedule,
            path: "/scheduled",
            title: "Scheduled",
            nav: Nav::Scheduled,
            newest_first: false,
            actions: &[("run", "Add to queue"), ("delete", "Delete")],
            at_label: "Due",
        }),
        "retries" => Ok(Kind {
            set: SortedSet::Retry,
            path: "/retries",
            title: "Retries",
            nav: Nav::Retries,
            newest_first: false,
            actions: &[("run", "Retry now"), ("delete", "Delete"), ("kill", "Kill")],
            at_label: "Next retry",
        }),
        "dead" => Ok(Kind {
            set: SortedSet::Dead,
            path: "/dead",
            title: "Dead",
            nav: Nav::Dead,
            newest_first: true,
            actions: &[("run", "Retry now"), ("delete", "Delete")],
            at_label: "Died",
        }),
        _ => Err(WebError::NotFound(format!("no page `{name}`"))),
    }
}

/// Up to `count` jobs of the set from position `from` in the order shown, with their
/// positions.
async fn read_view(
    admin: &Admin,
    kind: Kind,
    total: usize,
    from: usize,
    count: usize,
) -> Result<Vec<(usize, SetEntry)>, WebError> {
    if !kind.newest_first {
        let entries = admin.set_entries(kind.set, from, count).await?;
        return Ok((from..).zip(entries).collect());
    }
    // Shown newest first: positions [from, from + count) are the stored range ending
    // `from` before the end, reversed.
    let end = total.saturating_sub(from);
    let start = end.saturating_sub(count);
    let mut entries = admin.set_entries(kind.set, start, end - start).await?;
    entries.reverse();
    Ok((from..).zip(entries).collect())
}

/// The class, queue and error-text filters of a list, when any is given.
struct Filter<'a> {
    class: Option<&'a str>,
    queue: Option<&'a str>,
    error: Option<&'a str>,
}

impl<'a> Filter<'a> {
    fn of(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        Self {
            class: get("class"),
            queue: get("queue"),
            error: get("error"),
        }
    }

    fn is_empty(&self) -> bool {
        self.class.is_none() && self.queue.is_none() && self.error.is_none()
    }

    fn matches(&self, entry: &SetEntry) -> bool {
        entry.matches(self.class, self.queue, self.error)
    }

    /// Hidden fields carrying the filter into a form.
    fn fields(&self) -> Markup {
        html! {
            @for (name, value) in [("class", self.class), ("queue", self.queue), ("error", self.error)] {
                @if let Some(value) = value { input type="hidden" name=(name) value=(value); }
            }
        }
    }

    /// The filter as a query string (with a leading `?`, or empty).
    fn query(&self) -> String {
        let pairs: Vec<(&str, &str)> = [
            ("class", self.class),
            ("queue", self.queue),
            ("error", self.error),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        if pairs.is_empty() {
            return String::new();
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!("?{query}")
    }
}

/// `GET /{set}`.
pub(crate) async fn list(state: State, ctx: Ctx, Path(name): Path<String>) -> PageResult {
    let kind = kind(&name)?;
    let admin = &state.0.admin;
    let total = admin.set_size(kind.set).await?;
    let filter = Filter::of(|k| ctx.param(k));
    let sensitive = admin.sensitive().await?;
    let (rows, footer) = if filter.is_empty() {
        let from = ctx.offset();
        let rows = read_view(admin, kind, total, from, PER_PAGE).await?;
        (rows, pager(&ctx, kind.path, total))
    } else {
        let start: usize = ctx
            .param("from")
            .and_then(|f| f.parse().ok())
            .unwrap_or(0)
            .min(total);
        let mut rows = Vec::new();
        let mut at = start;
        while rows.len() < PER_PAGE && at < total && at - start < SCAN_LIMIT {
            let chunk = read_view(admin, kind, total, at, CHUNK).await?;
            if chunk.is_empty() {
                break;
            }
            for (position, entry) in chunk {
                at = position + 1;
                if filter.matches(&entry) {
                    rows.push((position, entry));
                    if rows.len() == PER_PAGE {
                        break;
                    }
                }
            }
        }
        let more = {
            let mut query = filter.query();
            query.push_str(&format!("&from={at}"));
            ctx.link(&format!("{}{query}", kind.path))
        };
        let footer = html! {
            nav.pager {
                span { "Matching jobs among positions " (start + 1) " to " (at) " of " (total) }
                @if at < total { a rel="next" href=(more) { "More matches →" } }
            }
        };
        (rows, footer)
    };
    let page_from = rows.first().map_or(0, |(p, _)| *p);
    let actions = |scope: &'static str| {
        html! {
            input type="hidden" name="scope" value=(scope);
            input type="hidden" name="pos" value=(page_from);
            (filter.fields())
            @for (action, label) in kind.actions {
                @let confirm = if scope == "all" {
                    format!("{label}: every job matching the filters?")
                } else {
                    format!("{label}: the selected jobs?")
                };
                button name="action" value=(action)
                    class=[(*action != "run").then_some("danger")]
                    data-confirm=(confirm) { (label) }
            }
        }
    };
    let act_path = format!("{}/act", kind.path);
    let body = html! {
        form.filters method="get" action=(ctx.link(kind.path)) {
            input name="class" placeholder="class" value=[filter.class];
            input name="queue" placeholder="queue" value=[filter.queue];
            input name="error" placeholder="error text" value=[filter.error];
            button { "Filter" }
            @if !filter.is_empty() { a href=(ctx.link(kind.path)) { "Clear filters" } }
        }
        @if !ctx.read_only {
            div.bulk {
                span { "Selected:" }
                form #bulk method="post" action=(ctx.link(&act_path)) class="inline" {
                    input type="hidden" name="csrf" value=(ctx.token.value);
                    (actions("selected"))
                }
                span { (if filter.is_empty() { "All:" } else { "All matching:" }) }
                (ctx.form(&act_path, "inline", actions("all")))
            }
        }
        div.scroll { table {
            thead { tr {
                @if !ctx.read_only { th { input type="checkbox" data-select-all="jid" aria-label="select all"; } }
                th { (kind.at_label) } th { "Class" } th { "Queue" } th { "Arguments" }
                @if kind.set != SortedSet::Schedule { th { "Error" } th.num { "Retries" } }
            } }
            tbody {
                @for (position, entry) in &rows {
                    (row(&ctx, kind, *position, entry, &sensitive))
                }
                @if rows.is_empty() { tr { td colspan="7" { "No jobs here." } } }
            }
        } }
        (footer)
    };
    Ok(layout(&ctx, kind.nav, kind.title, body))
}

fn row(
    ctx: &Ctx,
    kind: Kind,
    position: usize,
    entry: &SetEntry,
    sensitive: &jobqueue::admin::Sensitive,
) -> Markup {
    let Ok(job) = &entry.job else {
        return html! { tr { td colspan="7" .mono { "not a job: " (brief(&entry.payload, 200)) } } };
    };
    let shown = sensitive.redact(job);
    let detail = ctx.link(&format!("{}/{}?at={position}", kind.path, encode(&job.jid)));
    html! {
        tr data-jid=(job.jid) {
            @if !ctx.read_only {
                td { input type="checkbox" name="jid" value=(job.jid) form="bulk" aria-label="select"; }
            }
            td { a href=(detail) { (when(entry.at)) } }
            td { a href=(detail) { (job.class) } }
            td { (job.queue) }
            td.mono.args { (brief(&shown.args, 160)) }
            @if kind.set != SortedSet::Schedule {
                td.error {
                    @if let Some(class) = &job.error_class { b { (class) } ": " }
                    (job.error_message.as_deref().map(|m| brief_text(m, 160)).unwrap_or_default())
                }
                td.num { (job.retry_count.map(|n| n.to_string()).unwrap_or_default()) }
            }
        }
    }
}

fn brief_text(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The jobs `jids` of the set, looked for around position `near` first (where the page
/// that listed them saw them), then in the whole set.
async fn locate(
    admin: &Admin,
    kind: Kind,
    jids: &[&str],
    near: usize,
) -> Result<Vec<SetEntry>, WebError> {
    let total = admin.set_size(kind.set).await?;
    let near = near.min(total);
    let window = read_view(admin, kind, total, near.saturating_sub(CHUNK / 4), CHUNK).await?;
    let mut found: HashMap<String, SetEntry> = window
        .into_iter()
        .filter_map(|(_, e)| {
            e.jid()
                .filter(|j| jids.contains(j))
                .map(|j| (j.to_owned(), e.clone()))
        })
        .collect();
    if found.len() < jids.len() {
        for entry in admin.all_entries(kind.set).await? {
            if let Some(jid) = entry.jid().filter(|j| jids.contains(j)) {
                found.entry(jid.to_owned()).or_insert(entry);
            }
        }
    }
    Ok(jids.iter().filter_map(|j| found.remove(*j)).collect())
}

/// `GET /{set}/{jid}`: everything about one job.
pub(crate) async fn detail(
    state: State,
    ctx: Ctx,
    Path((name, jid)): Path<(String, String)>,
) -> PageResult {
    let kind = kind(&name)?;
    let admin = &state.0.admin;
    let near = ctx.param("at").and_then(|a| a.parse().ok()).unwrap_or(0);
    let entry = locate(admin, kind, &[jid.as_str()], near)
        .await?
        .pop()
        .ok_or_else(|| WebError::NotFound(format!("job {jid} is no longer in {name}")))?;
    let Ok(job) = &entry.job else {
        return Err(WebError::NotFound(format!("{jid} is not a job")));
    };
    let shown = admin.sensitive().await?.redact(job);
    let time = |t: Option<f64>| html! { @if let Some(at) = t.and_then(from_epoch) { (when(at)) } };
    let backtrace: Vec<&str> = job
        .extra
        .get("error_backtrace")
        .and_then(Value::as_array)
        .map(|lines| lines.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut extra = job.extra.clone();
    extra.remove("error_backtrace");
    let body = html! {
        div.actions { (ctx.form(&format!("{}/act", kind.path), "inline", html! {
            input type="hidden" name="scope" value="selected";
            input type="hidden" name="jid" value=(job.jid);
            input type="hidden" name="pos" value=(near);
            @for (action, label) in kind.actions {
                button name="action" value=(action) class=[(*action != "run").then_some("danger")]
                    data-confirm=(format!("{label}: this job?")) { (label) }
            }
        })) }
        dl.detail {
            dt { "Job id" } dd.mono { (job.jid) }
            dt { "Class" } dd { (job.class) }
            dt { "Queue" } dd { (job.queue) }
            dt { (kind.at_label) } dd { (when(entry.at)) }
            dt { "Created" } dd { (time(job.created_at)) }
            dt { "Enqueued" } dd { (time(job.enqueued_at)) }
            @if job.error_class.is_some() || job.error_message.is_some() {
                dt { "Error" } dd.error {
                    @if let Some(class) = &job.error_class { b { (class) } ": " }
                    (job.error_message.as_deref().unwrap_or_default())
                }
                dt { "Tries" } dd {
                    "failed first " (time(job.failed_at))
                    @if job.retried_at.is_some() { ", last retried " (time(job.retried_at)) }
                    @if let Some(count) = job.retry_count { ", " (count.saturating_add(1)) " failure(s) so far" }
                    " of " (job.retry.max_retries()) " retries allowed"
                    @if let Some(n) = job.interrupted_count { "; interrupted " (n) " time(s)" }
                }
            }
        }
        h2 { "Arguments" }
        pre.json { (pretty(&shown.args)) }
        @if !backtrace.is_empty() {
            h2 { "Backtrace" }
            pre { @for line in &backtrace { (line) "\n" } }
        }
        @if !extra.is_empty() {
            h2 { "Other fields" }
            pre.json { (pretty(&extra)) }
        }
    };
    Ok(layout(
        &ctx,
        kind.nav,
        &format!("{} · {}", kind.title, job.class),
        body,
    ))
}

/// `POST /{set}/act`: run now, delete or kill the selected jobs, or every job matching the
/// filters.
pub(crate) async fn act(
    state: State,
    Path(name): Path<String>,
    form: Posted,
) -> Result<Response, WebError> {
    let kind = kind(&name)?;
    let admin = &state.0.admin;
    let action = form.need("action")?;
    let Some((_, label)) = kind.actions.iter().find(|(a, _)| *a == action) else {
        return Err(WebError::BadRequest(format!(
            "no action `{action}` on {name}"
        )));
    };
    let filter = Filter::of(|k| form.get(k));
    let entries = if form.get("scope") == Some("all") {
        let all = admin.all_entries(kind.set).await?;
        all.into_iter().filter(|e| filter.matches(e)).collect()
    } else {
        let near = form.get("pos").and_then(|p| p.parse().ok()).unwrap_or(0);
        locate(admin, kind, &form.all("jid"), near).await?
    };
    let mut done = 0;
    for entry in &entries {
        let moved = match action {
            "run" => admin.run_now(kind.set, entry).await?,
            "delete" => admin.delete(kind.set, entry).await?,
            "kill" => admin.kill(kind.set, entry).await?,
            _ => false,
        };
        done += usize::from(moved);
    }
    let notice = format!("{label}: {done} job(s).");
    Ok(form
        .ctx
        .done(&format!("{}{}", kind.path, filter.query()), &notice))
}
