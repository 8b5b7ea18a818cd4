//! A web dashboard for [jobqueue]: an axum [`Router`] a service mounts under any
//! prefix, behind its own authentication.
//!
//! Pages: an overview with live throughput, queues (pause, resume, clear, their jobs),
//! busy processes and their running jobs (quiet, stop), the scheduled, retry and dead sets
//! (filters, detail, run now, retry, delete, kill, on a selection or on all matching),
//! periodic schedules (pause, resume, enqueue now) and per-class figures (throughput,
//! duration percentiles, failure rate, against the time limits of the job guidelines).
//!
//! Every value from a payload is escaped; actions are POSTs carrying a CSRF token (a
//! `SameSite=Strict` cookie matched by a form field); a read-only mode hides and refuses
//! them; pages send a Content Security Policy that allows no inline or foreign script.
//! CSS and JavaScript are embedded: no CDN, no build step.
//!
//! ```no_run
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{extract::Request, http::StatusCode, middleware::Next, response::Response};
//!
//! let broker = jobqueue::RedisBroker::connect("redis://127.0.0.1:6379").await?;
//!
//! // The service's own authentication; here HTTP basic auth for `admin:secret`.
//! async fn basic_auth(request: Request, next: Next) -> Result<Response, StatusCode> {
//!     let expected = "Basic YWRtaW46c2VjcmV0"; // base64("admin:secret")
//!     match request.headers().get("authorization") {
//!         Some(value) if value == expected => Ok(next.run(request).await),
//!         _ => Err(StatusCode::UNAUTHORIZED),
//!     }
//! }
//!
//! let app = axum::Router::new()
//!     .nest("/jobs", jobqueue_web::router(broker))
//!     .layer(axum::middleware::from_fn(basic_auth));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod csrf;
mod error;
mod mount;
mod page;
mod pages;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use jobqueue::{Admin, Broker};

/// The dashboard's settings; [`Dashboard::router`] makes its routes.
///
/// ```
/// let broker = jobqueue::MemoryBroker::new();
/// let app: axum::Router = axum::Router::new()
///     .nest("/jobs", jobqueue_web::Dashboard::new(broker).read_only().router());
/// ```
#[derive(Clone)]
#[must_use]
pub struct Dashboard {
    admin: Admin,
    read_only: bool,
}

/// The dashboard of `broker` with every action enabled, to mount under any prefix;
/// the same as `Dashboard::new(broker).router()`.
pub fn router(broker: impl Into<Arc<dyn Broker>>) -> Router {
    Dashboard::new(broker).router()
}

impl Dashboard {
    /// The dashboard of `broker`: a [`MemoryBroker`](jobqueue::MemoryBroker), a
    /// [`RedisBroker`](jobqueue::RedisBroker) or a shared `Arc<dyn Broker>`.
    pub fn new(broker: impl Into<Arc<dyn Broker>>) -> Self {
        Self {
            admin: Admin::new(broker),
            read_only: false,
        }
    }

    /// Shows everything and changes nothing: no action buttons, and every POST is refused
    /// with 403.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// The routes, relative to wherever the service nests them.
    pub fn router(self) -> Router {
        let app = Arc::new(App {
            admin: self.admin,
            read_only: self.read_only,
        });
        Router::new()
            .route("/", get(pages::overview::show))
            .route("/stats.json", get(pages::overview::numbers))
            .route("/assets/{file}", get(page::asset))
            .route("/queues", get(pages::queues::list))
            .route("/queues/{name}", get(pages::queues::show))
            .route("/queues/{name}/act", post(pages::queues::act))
            .route("/busy", get(pages::busy::show))
            .route("/busy/act", post(pages::busy::act))
            .route("/periodic", get(pages::periodic::show))
            .route("/periodic/act", post(pages::periodic::act))
            .route("/classes", get(pages::classes::show))
            .route("/{set}", get(pages::sets::list))
            .route("/{set}/act", post(pages::sets::act))
            .route("/{set}/{jid}", get(pages::sets::detail))
            .layer(axum::middleware::from_fn(csrf::cookie))
            .layer(axum::middleware::from_fn(page::security_headers))
            .with_state(app)
    }
}

/// What every handler shares.
struct App {
    admin: Admin,
    read_only: bool,
}

type State = axum::extract::State<Arc<App>>;
