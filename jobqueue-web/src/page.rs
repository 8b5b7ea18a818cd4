//! What every page shares: where the dashboard is mounted, the layout, the forms, the
//! formatting of times and durations, paging, and the embedded assets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Query, Request};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup, DOCTYPE};

use crate::csrf::Token;
use crate::error::WebError;
use crate::mount::mount_of;
use crate::App;

const STYLE: &str = include_str!("../assets/style.css");
const SCRIPT: &str = include_str!("../assets/app.js");
/// Rows per page of a list.
pub(crate) const PER_PAGE: usize = 25;
/// The highest page number taken: past the end of any list Redis can hold (2^32 rows).
const MAX_PAGE: usize = (1 << 32) / PER_PAGE + 1;

/// The request as a page sees it: the mount path, the CSRF token, the mode, the query.
pub(crate) struct Ctx {
    pub(crate) base: String,
    pub(crate) token: Token,
    pub(crate) read_only: bool,
    pub(crate) query: HashMap<String, String>,
}

impl FromRequestParts<Arc<App>> for Ctx {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, WebError> {
        let inner = parts.uri.path().to_owned();
        let full = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(inner.clone(), |o| o.0.path().to_owned());
        let token = parts
            .extensions
            .get::<Token>()
            .cloned()
            .ok_or(WebError::Internal("the CSRF layer is missing"))?;
        let Query(query) = Query::<HashMap<String, String>>::from_request_parts(parts, app)
            .await
            .unwrap_or_default();
        Ok(Self {
            base: mount_of(&full, &inner),
            token,
            read_only: app.read_only,
            query,
        })
    }
}

impl Ctx {
    /// The address of the dashboard's `path` (which starts with `/`).
    pub(crate) fn link(&self, path: &str) -> String {
        // A router nested at `/jobs` answers `/jobs`, not `/jobs/`.
        match path.strip_prefix('/') {
            Some(rest) if !self.base.is_empty() && (rest.is_empty() || rest.starts_with('?')) => {
                format!("{}{rest}", self.base)
            }
            _ => format!("{}{path}", self.base),
        }
    }

    /// A query parameter, when given and not empty.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The 1-based page number asked for; one past any list's end at most, so that the
    /// offset it gives never overflows.
    pub(crate) fn page(&self) -> usize {
        self.param("page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(1)
            .clamp(1, MAX_PAGE)
    }

    /// The first row of the page asked for.
    pub(crate) fn offset(&self) -> usize {
        (self.page() - 1) * PER_PAGE
    }

    /// A form posting to `path` with the CSRF token, holding `fields`; nothing in
    /// read-only mode.
    pub(crate) fn form(&self, path: &str, class: &str, fields: Markup) -> Markup {
        if self.read_only {
            return html! {};
        }
        html! {
            form method="post" action=(self.link(path)) class=(class) {
                input type="hidden" name="csrf" value=(self.token.value);
                (fields)
            }
        }
    }

    /// A redirect to `path` after an action, with what was done (shown as a notice).
    pub(crate) fn done(&self, path: &str, notice: &str) -> Response {
        let separator = if path.contains('?') { '&' } else { '?' };
        let to = format!(
            "{}{separator}notice={}",
            self.link(path),
            form_urlencoded::byte_serialize(notice.as_bytes()).collect::<String>()
        );
        Redirect::to(&to).into_response()
    }
}

/// A submitted form whose CSRF token matched, as its fields in order.
pub(crate) struct Posted {
    pub(crate) ctx: Ctx,
    fields: Vec<(String, String)>,
}

impl FromRequest<Arc<App>> for Posted {
    type Rejection = WebError;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<Self, WebError> {
        let (mut parts, body) = request.into_parts();
        let ctx = Ctx::from_request_parts(&mut parts, app).await?;
        if ctx.read_only {
            return Err(WebError::ReadOnly);
        }
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .map_err(|_| WebError::BadRequest("the form is too large".into()))?;
        let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let sent = fields.iter().find(|(name, _)| name == "csrf");
        if !sent.is_some_and(|(_, value)| ctx.token.matches(value)) {
            return Err(WebError::Forbidden);
        }
        Ok(Self { ctx, fields })
    }
}

impl Posted {
    /// The first value of field `name`, when given and not empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// The value of field `name`, or a 400 naming it.
    pub(crate) fn need(&self, name: &str) -> Result<&str, WebError> {
        self.get(name)
            .ok_or_else(|| WebError::BadRequest(format!("the form has no `{name}`")))
    }

    /// Every value of field `name` (checkboxes).
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The sections of the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Busy,
    Queues,
    Scheduled,
    Retries,
    Dead,
    Periodic,
    Classes,
}

const NAV: [(Nav, &str, &str); 8] = [
    (Nav::Overview, "/", "Overview"),
    (Nav::Busy, "/busy", "Busy"),
    (Nav::Queues, "/queues", "Queues"),
    (Nav::Scheduled, "/scheduled", "Scheduled"),
    (Nav::Retries, "/retries", "Retries"),
    (Nav::Dead, "/dead", "Dead"),
    (Nav::Periodic, "/periodic", "Periodic"),
    (Nav::Classes, "/classes", "Classes"),
];

/// A whole page: the navigation, the notice of the last action, `title` and `body`.
pub(crate) fn layout(ctx: &Ctx, active: Nav, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · jobqueue" }
                link rel="stylesheet" href=(ctx.link("/assets/style.css"));
                script src=(ctx.link("/assets/app.js")) defer {}
            }
            body {
                header {
                    a.brand href=(ctx.link("/")) { "jobqueue" }
                    nav {
                        @for (section, path, label) in NAV {
                            a href=(ctx.link(path)) class=[(section == active).then_some("active")] { (label) }
                        }
                    }
                    @if ctx.read_only { span.badge { "read-only" } }
                }
                main {
                    @if let Some(notice) = ctx.param("notice") {
                        p.notice role="status" { (notice) }
                    }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// Serves the embedded stylesheet and script.
pub(crate) async fn asset(
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Result<Response, WebError> {
    let (body, kind) = match file.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return Err(WebError::NotFound("no such asset".into())),
    };
    Ok((
        [
            (CONTENT_TYPE, HeaderValue::from_static(kind)),
            (CACHE_CONTROL, HeaderValue::from_static("max-age=300")),
        ],
        body,
    )
        .into_response())
}

/// No script but ours, no framing, no sniffing: a payload that slips past escaping still
/// cannot run.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    response
}

/// A short description of how far `at` is from now: "12s ago", "in 3m", "in 2d", "in
/// 104000000y".
pub(crate) fn relative(at: SystemTime) -> String {
    let now = SystemTime::now();
    match at.duration_since(now) {
        Ok(ahead) if ahead >= Duration::from_secs(1) => format!("in {}", short(ahead)),
        Ok(_) => "now".to_owned(),
        Err(behind) => format!("{} ago", short(behind.duration())),
    }
}

/// A time as an element: relative text, the exact UTC time on hover. A time no calendar
/// reaches (past year 262,143, as any producer may store) shows as its epoch seconds.
pub(crate) fn when(at: SystemTime) -> Markup {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let date = i64::try_from(since.as_secs())
        .ok()
        .and_then(|s| chrono::DateTime::<chrono::Utc>::from_timestamp(s, since.subsec_nanos()));
    match date {
        Some(date) => {
            let exact = date.format("%Y-%m-%d %H:%M:%S UTC").to_string();
            html! { time datetime=(exact) title=(exact) { (relative(at)) } }
        }
        None => {
            let exact = format!("{} seconds after 1970", since.as_secs());
            html! { time title=(exact) { (relative(at)) } }
        }
    }
}

/// The time `seconds` since the epoch, when it is one a clock can hold.
pub(crate) fn from_epoch(seconds: f64) -> Option<SystemTime> {
    if !(seconds.is_finite() && seconds >= 0.0) {
        return None;
    }
    Duration::try_from_secs_f64(seconds)
        .ok()
        .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
}

/// A duration in its largest whole unit: "45s", "3m", "2h", "5d".
pub(crate) fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        86_400..31_536_000 => format!("{}d", s / 86_400),
        _ => format!("{}y", s / 31_536_000),
    }
}

/// A run's duration to a useful precision: "840µs", "12.3ms", "1.20s".
pub(crate) fn precise(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// A path segment with everything but plain characters escaped.
pub(crate) fn encode(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// JSON as indented text.
pub(crate) fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// JSON on one line, cut to `max` characters.
pub(crate) fn brief(value: &impl serde::Serialize, max: usize) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Links to the previous and next pages of a list of `total` rows, keeping the query's
/// other parameters.
pub(crate) fn pager(ctx: &Ctx, path: &str, total: usize) -> Markup {
    let page = ctx.page();
    let pages = total.div_ceil(PER_PAGE).max(1);
    let link = |to: usize| {
        let mut query: Vec<(&str, String)> = ctx
            .query
            .iter()
            .filter(|(k, _)| k.as_str() != "page" && k.as_str() != "notice")
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        query.sort();
        query.push(("page", to.to_string()));
        let encoded: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        format!("{}?{encoded}", ctx.link(path))
    };
    html! {
        nav.pager {
            @if page > 1 { a rel="prev" href=(link(page - 1)) { "← Previous" } }
            span { "Page " (page) " of " (pages) " · " (total) " in all" }
            @if page < pages { a rel="next" href=(link(page + 1)) { "Next →" } }
        }
    }
}

/// A 200 page, or the error page.
pub(crate) type PageResult = Result<Markup, WebError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(short(Duration::from_secs(59)), "59s");
        assert_eq!(short(Duration::from_secs(3599)), "59m");
        assert_eq!(precise(Duration::from_micros(840)), "840µs");
        assert_eq!(precise(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(precise(Duration::from_millis(1_200)), "1.20s");
        assert_eq!(brief(&"abcdef", 4), "\"abc…");
        assert_eq!(short(Duration::from_secs(400 * 86_400)), "1y");
    }

    #[test]
    fn any_stored_time_shows_without_panic() {
        for seconds in [
            9e12,
            1e300,
            f64::MAX,
            f64::INFINITY,
            -1.0,
            -1e300,
            f64::NAN,
            0.0,
        ] {
            if let Some(at) = from_epoch(seconds) {
                let shown = when(at).into_string();
                assert!(shown.contains("<time"), "{seconds}: {shown}");
            }
        }
        assert!(from_epoch(f64::MAX).is_none() && from_epoch(-1.0).is_none());
        let far = when(from_epoch(9e12).unwrap()).into_string();
        assert!(far.contains("9000000000000 seconds after 1970"), "{far}");
        let near = when(from_epoch(1.7e9).unwrap()).into_string();
        assert!(near.contains("2023-11-14 22:13:20 UTC"), "{near}");
    }
}
