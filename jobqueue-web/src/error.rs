//! Why a page or an action failed, as an HTTP status and a short page saying what to do.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

/// A failed request.
#[derive(Debug)]
pub(crate) enum WebError {
    /// The broker did not answer.
    Broker(jobqueue::Error),
    /// The library refused the action (a job over the payload limit, a middleware's
    /// refusal); nothing was changed.
    Refused(jobqueue::Error),
    /// The request names something that is not there.
    NotFound(String),
    /// The request is malformed.
    BadRequest(String),
    /// The form's CSRF token is missing or wrong.
    Forbidden,
    /// A state-changing request from another origin, and why it is taken as one.
    CrossSite(String),
    /// An action on a read-only dashboard.
    ReadOnly,
    /// The dashboard is wired wrongly (a bug of ours).
    Internal(&'static str),
}

impl From<jobqueue::Error> for WebError {
    fn from(e: jobqueue::Error) -> Self {
        match e {
            jobqueue::Error::Broker(_) => WebError::Broker(e),
            refused => WebError::Refused(refused),
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            WebError::Broker(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("The broker did not answer: {e}. Reload the page to try again."),
            ),
            WebError::Refused(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Refused: {e}. Nothing was changed."),
            ),
            WebError::NotFound(what) => (StatusCode::NOT_FOUND, what),
            WebError::BadRequest(what) => (StatusCode::BAD_REQUEST, what),
            WebError::Forbidden => (
                StatusCode::FORBIDDEN,
                "The form's security token is missing or does not match this browser's: \
                 reload the page and try again."
                    .to_owned(),
            ),
            WebError::CrossSite(why) => (
                StatusCode::FORBIDDEN,
                format!(
                    "Refused: {why}. Actions are taken only from the dashboard's own pages; \
                     open the dashboard and use its buttons."
                ),
            ),
            WebError::ReadOnly => (
                StatusCode::FORBIDDEN,
                "This dashboard is read-only: it shows the queues and changes nothing.".to_owned(),
            ),
            WebError::Internal(what) => (StatusCode::INTERNAL_SERVER_ERROR, what.to_owned()),
        };
        let page = html! {
            (maud::DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "jobqueue: " (status) } }
                body { h1 { (status) } p.error { (message) } }
            }
        };
        (status, page).into_response()
    }
}
