//! A web dashboard for [jobqueue]: an axum [`Router`] a service mounts under any
//! prefix, behind its own authentication.
//!
//! Pages: an overview with live throughput, queues (pause, resume, clear, their jobs),
//! busy processes and their running jobs (quiet, stop), the scheduled, retry and dead sets
//! (filters, detail, run now, retry, delete, kill, on a selection or on all matching),
//! periodic schedules (pause, resume, enqueue now) and per-class figures (throughput,
//! duration percentiles, failure rate, against the time limits of the job guidelines).
//!
//! Every value from a payload is escaped; actions are POSTs, refused when the browser says
//! they come from another origin (`Origin`, `Sec-Fetch-Site`) and accepted only with a
//! signed CSRF token (an HMAC under a server secret, in a `SameSite=Strict`, `HttpOnly`
//! cookie matched by a form field; `Secure` and `__Host-` over HTTPS: see
//! [`Dashboard::https`]); a read-only mode hides and refuses them; pages send a Content
//! Security Policy that allows no inline or foreign script.
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
    csrf_secret: Option<Vec<u8>>,
    allowed_origins: Vec<String>,
    https: Option<bool>,
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
            csrf_secret: None,
            allowed_origins: Vec::new(),
            https: None,
        }
    }

    /// Signs the CSRF tokens with `secret` instead of 32 random bytes drawn when the router
    /// is made. Give the same secret (at least 32 random bytes, kept like a password) to
    /// every replica behind one load balancer, so that a form served by one is accepted by
    /// another; a random secret also means that a restart asks open pages to reload before
    /// their next action.
    pub fn csrf_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.csrf_secret = Some(secret.into());
        self
    }

    /// Accepts actions posted from `origin` (`https://admin.example.com`, no path) besides
    /// the dashboard's own. The dashboard's own origin is the request's `Host` (or
    /// `X-Forwarded-Host`, from a proxy that rewrites `Host`) with its scheme; name it here
    /// when a proxy changes the host and says nothing.
    pub fn allowed_origin(mut self, origin: impl Into<String>) -> Self {
        self.allowed_origins.push(origin.into());
        self
    }

    /// Declares whether the dashboard is served over HTTPS. Over HTTPS the CSRF cookie is
    /// `Secure` and named `__Host-jobqueue_csrf…`, which needs `Path=/` (its name then
    /// carries a hash of the mount path, so dashboards under two prefixes of one host keep
    /// apart), and only `https://` origins are accepted. By default it is detected per
    /// request: the request URI's scheme, or a proxy's `X-Forwarded-Proto: https` or
    /// `Forwarded: proto=https`. Declare it when a proxy ends TLS without saying so.
    pub fn https(mut self, https: bool) -> Self {
        self.https = Some(https);
        self
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
        let csrf = Arc::new(csrf::Csrf::new(
            self.csrf_secret,
            self.allowed_origins,
            self.https,
        ));
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
            .layer(axum::middleware::from_fn_with_state(csrf, csrf::guard))
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
