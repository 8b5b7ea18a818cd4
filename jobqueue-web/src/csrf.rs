//! Protection against cross-site requests, as OWASP's CSRF cheat sheet recommends, in two
//! independent layers:
//!
//! - **Where the request comes from.** Every state-changing request (anything but `GET`,
//!   `HEAD` and `OPTIONS`) is refused when the browser says it comes from elsewhere:
//!   `Sec-Fetch-Site` other than `same-origin` (or `none`, a request the user made
//!   directly), or an `Origin` (else a `Referer`) that is not the dashboard's own. The
//!   dashboard's own origin is the request's `Host` (or `X-Forwarded-Host`) with the
//!   request's scheme, or one of the origins given to
//!   [`Dashboard::allowed_origin`](crate::Dashboard::allowed_origin). A request that has
//!   none of these headers is not from a browser and goes on to the token check.
//! - **A signed double-submit token.** The token in the cookie is
//!   `issued.nonce.signature`: an HMAC-SHA256, under a secret only the server knows (random
//!   per router, or given by [`Dashboard::csrf_secret`](crate::Dashboard::csrf_secret) for
//!   several replicas), of the mount path, the time it was issued and a random nonce. The
//!   server accepts a cookie only with a valid signature less than a day old, and a form
//!   only when its hidden field repeats that cookie. An attacker who can plant a cookie (a
//!   sibling origin, a subdomain) cannot make one the server signed.
//!
//! The cookie is `HttpOnly` and `SameSite=Strict`. Over HTTPS (see [`is_https`]) it is also
//! `Secure` and named with the `__Host-` prefix, which makes the browser refuse it from any
//! other origin; that prefix requires `Path=/`, so the cookie then covers the whole host and
//! its name carries a hash of the mount path, to keep two dashboards on one host apart.
//! Over plain HTTP it is `jobqueue_csrf`, scoped to the mount path.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::header::{COOKIE, HOST, ORIGIN, REFERER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::WebError;
use crate::mount::base_path;

/// The cookie's name over plain HTTP.
const COOKIE_NAME: &str = "jobqueue_csrf";
/// The cookie's name over HTTPS, before the mount path's hash.
const HOST_COOKIE_NAME: &str = "__Host-jobqueue_csrf";
/// How long a token is accepted after it was issued.
pub(crate) const LIFETIME_SECS: u64 = 24 * 3600;
/// How far in the future an issue time may be (another replica's clock).
const SKEW_SECS: u64 = 300;

/// The server's side of the tokens: the signing secret and how requests are judged.
pub(crate) struct Csrf {
    secret: Vec<u8>,
    /// Origins (`https://admin.example.com`) accepted besides the request's own.
    allowed_origins: Vec<String>,
    /// Whether the dashboard is served over HTTPS; `None` detects it per request.
    https: Option<bool>,
}

/// This browser's token, and whether the browser sent it (a fresh one proves nothing).
#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) value: String,
    pub(crate) sent: bool,
}

impl Token {
    /// Whether `field`, from a submitted form, proves the request came from our page: it
    /// repeats the signed token this browser sent.
    pub(crate) fn matches(&self, field: &str) -> bool {
        // Compared in constant time, so the comparison leaks nothing of the token.
        self.sent
            && field.len() == self.value.len()
            && field
                .bytes()
                .zip(self.value.bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Csrf {
    /// Signs with `secret`, or with 32 random bytes when none is given.
    pub(crate) fn new(
        secret: Option<Vec<u8>>,
        allowed_origins: Vec<String>,
        https: Option<bool>,
    ) -> Self {
        let secret = secret.unwrap_or_else(|| {
            let mut bytes = vec![0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            bytes
        });
        let allowed_origins = allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        Self {
            secret,
            allowed_origins,
            https,
        }
    }

    fn mac(&self, base: &str, issued: u64, nonce: &[u8]) -> Hmac<Sha256> {
        // Any key length is valid for HMAC: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for part in [b"jobqueue-csrf-v1".as_slice(), base.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&issued.to_be_bytes());
        mac.update(nonce);
        mac
    }

    /// A new token for the dashboard mounted at `base`, issued at `issued` (epoch seconds).
    pub(crate) fn issue(&self, base: &str, issued: u64) -> String {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let signature = self.mac(base, issued, &nonce).finalize().into_bytes();
        format!("{issued:x}.{}.{}", hex(&nonce), hex(&signature))
    }

    /// Whether `token` is one this server signed for `base`, issued less than a day before
    /// `now`.
    pub(crate) fn verify(&self, token: &str, base: &str, now: u64) -> bool {
        // A token is about 110 characters; anything much longer is not one.
        if token.len() > 200 {
            return false;
        }
        let mut parts = token.split('.');
        let (Some(issued), Some(nonce), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Ok(issued) = u64::from_str_radix(issued, 16) else {
            return false;
        };
        let (Some(nonce), Some(signature)) = (unhex(nonce), unhex(signature)) else {
            return false;
        };
        if nonce.len() != 16
            || issued > now.saturating_add(SKEW_SECS)
            || now.saturating_sub(issued) >= LIFETIME_SECS
        {
            return false;
        }
        // `verify_slice` compares in constant time.
        self.mac(base, issued, &nonce)
            .verify_slice(&signature)
            .is_ok()
    }

    /// Whether `request` reached the dashboard over HTTPS, as far as the server can tell.
    fn secure(&self, headers: &HeaderMap, scheme: Option<&str>) -> bool {
        self.https.unwrap_or_else(|| is_https(headers, scheme))
    }
}

/// Whether a request came over HTTPS: its URI's scheme says so (servers that terminate TLS
/// themselves), or the proxy in front says so in `X-Forwarded-Proto` or `Forwarded`'s
/// `proto=`. A client that claims HTTPS falsely only gets a cookie its own browser will not
/// send back over plain HTTP.
pub(crate) fn is_https(headers: &HeaderMap, scheme: Option<&str>) -> bool {
    if scheme.is_some_and(|s| s.eq_ignore_ascii_case("https")) {
        return true;
    }
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_ascii_lowercase())
    };
    if first("x-forwarded-proto").as_deref() == Some("https") {
        return true;
    }
    first("forwarded").is_some_and(|f| {
        f.split(';')
            .filter_map(|pair| pair.split_once('='))
            .any(|(k, v)| k.trim() == "proto" && v.trim().trim_matches('"') == "https")
    })
}

/// The cookie's name for a dashboard mounted at `base`.
fn cookie_name(secure: bool, base: &str) -> String {
    match (secure, base.is_empty()) {
        (false, _) => COOKIE_NAME.to_owned(),
        (true, true) => HOST_COOKIE_NAME.to_owned(),
        (true, false) => {
            let digest = Sha256::digest(base.as_bytes());
            format!("{HOST_COOKIE_NAME}_{}", hex(&digest[..4]))
        }
    }
}

/// `host[:port]` in lower case, without the scheme's default port.
fn normal_host(host: &str, https: bool) -> String {
    let host = host.trim().to_ascii_lowercase();
    let default = if https { ":443" } else { ":80" };
    host.strip_suffix(default).unwrap_or(&host).to_owned()
}

/// Why a state-changing request is refused for where it comes from, if it is.
pub(crate) fn refuse_foreign(
    csrf: &Csrf,
    headers: &HeaderMap,
    scheme: Option<&str>,
    authority: Option<&str>,
) -> Option<String> {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    // The origin the browser names: `Origin`, else the origin of `Referer`.
    let claimed = match (header(ORIGIN.as_str()), header(REFERER.as_str())) {
        (Some(origin), _) => Some(origin.trim().to_ascii_lowercase()),
        (None, Some(referer)) => Some(origin_of(referer)),
        (None, None) => None,
    };
    if let Some(claimed) = &claimed {
        if csrf.allowed_origins.iter().any(|o| o == claimed) {
            return None;
        }
    }
    if let Some(site) = header("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!("the browser says it comes from a {site} page"));
        }
    }
    let claimed = claimed?;
    let secure = csrf.secure(headers, scheme);
    let host = header("x-forwarded-host")
        .and_then(|h| h.split(',').next())
        .or(header(HOST.as_str()))
        .or(authority)
        .map(|h| normal_host(h, secure));
    let own = claimed
        .split_once("://")
        .and_then(|(claimed_scheme, rest)| {
            // Over HTTPS only HTTPS; otherwise either, as a proxy may end TLS without saying.
            let scheme_ok = claimed_scheme == "https" || (claimed_scheme == "http" && !secure);
            let claimed_host = normal_host(rest, claimed_scheme == "https");
            (scheme_ok && host.as_deref() == Some(claimed_host.as_str())).then_some(())
        });
    match own {
        Some(()) => None,
        None => Some(format!("it comes from {claimed}, not from this dashboard")),
    }
}

/// `scheme://host[:port]` of a URL, lower-cased; the whole text when it is not a URL.
fn origin_of(url: &str) -> String {
    let url = url.trim().to_ascii_lowercase();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            format!("{scheme}://{}", &rest[..end])
        }
        None => url,
    }
}

/// Refuses state-changing requests from elsewhere, and gives every request its token,
/// setting the cookie on responses to browsers without a valid one.
pub(crate) async fn guard(
    State(csrf): State<Arc<Csrf>>,
    mut request: Request,
    next: Next,
) -> Response {
    let scheme = request.uri().scheme_str().map(str::to_owned);
    let authority = request.uri().authority().map(|a| a.as_str().to_owned());
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe {
        if let Some(why) = refuse_foreign(
            &csrf,
            request.headers(),
            scheme.as_deref(),
            authority.as_deref(),
        ) {
            return WebError::CrossSite(why).into_response();
        }
    }
    let base = base_path(&request);
    let secure = csrf.secure(request.headers(), scheme.as_deref());
    let name = cookie_name(secure, &base);
    let now = now_secs();
    let sent = request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, value)| *n == name && csrf.verify(value, &base, now))
        .map(|(_, value)| value.to_owned());
    let token = match sent {
        Some(value) => Token { value, sent: true },
        None => Token {
            value: csrf.issue(&base, now),
            sent: false,
        },
    };
    request.extensions_mut().insert(token.clone());
    let mut response = next.run(request).await;
    if !token.sent {
        let cookie = if secure {
            format!(
                "{name}={}; Path=/; Max-Age={LIFETIME_SECS}; Secure; HttpOnly; SameSite=Strict",
                token.value
            )
        } else {
            let path = if base.is_empty() { "/" } else { base.as_str() };
            format!(
                "{name}={}; Path={path}; Max-Age={LIFETIME_SECS}; HttpOnly; SameSite=Strict",
                token.value
            )
        };
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn csrf() -> Csrf {
        Csrf::new(Some(b"a secret".to_vec()), Vec::new(), None)
    }

    #[test]
    fn only_the_sent_token_matches() {
        let token = Token {
            value: "ab".repeat(32),
            sent: true,
        };
        assert!(token.matches(&"ab".repeat(32)));
        assert!(!token.matches(&"ab".repeat(31)));
        assert!(!token.matches(&format!("{}ac", "ab".repeat(31))));
        let fresh = Token {
            sent: false,
            ..token
        };
        assert!(!fresh.matches(&"ab".repeat(32)));
    }

    #[test]
    fn a_token_is_valid_where_and_while_it_was_issued() {
        let csrf = csrf();
        let token = csrf.issue("/jobs", NOW);
        assert!(csrf.verify(&token, "/jobs", NOW));
        assert!(csrf.verify(&token, "/jobs", NOW + LIFETIME_SECS - 1));
        // Expired; issued too far ahead; for another mount; under another secret.
        assert!(!csrf.verify(&token, "/jobs", NOW + LIFETIME_SECS));
        assert!(!csrf.verify(&token, "/jobs", NOW - SKEW_SECS - 1));
        assert!(!csrf.verify(&token, "/other", NOW));
        assert!(!csrf.verify(&token, "", NOW));
        let other = Csrf::new(Some(b"another secret".to_vec()), Vec::new(), None);
        assert!(!other.verify(&token, "/jobs", NOW));
        // Two tokens differ; random secrets differ.
        assert_ne!(token, csrf.issue("/jobs", NOW));
        let random = Csrf::new(None, Vec::new(), None);
        assert!(!random.verify(&token, "/jobs", NOW));
        assert!(random.verify(&random.issue("/jobs", NOW), "/jobs", NOW));
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let csrf = csrf();
        let token = csrf.issue("", NOW);
        // Every single character changed, one at a time.
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let tampered = String::from_utf8(bytes).unwrap();
            if tampered != token {
                assert!(!csrf.verify(&tampered, "", NOW), "{tampered}");
            }
        }
        // A later issue time with the same nonce and signature.
        let (issued, rest) = token.split_once('.').unwrap();
        let later = u64::from_str_radix(issued, 16).unwrap() + 1;
        assert!(!csrf.verify(&format!("{later:x}.{rest}"), "", NOW));
        // Attacker-chosen values of every shape, as the old unsigned cookie took them.
        let forged = [
            "0".repeat(64),
            format!("{NOW:x}.{}.{}", "00".repeat(16), "00".repeat(32)),
            String::new(),
            "...".into(),
            format!("{token}.x"),
            "x".repeat(100_000),
            format!("{NOW:x}.zz.{}", "00".repeat(32)),
            format!("{}.{rest}", "f".repeat(40)),
        ];
        for forged in forged {
            assert!(!csrf.verify(&forged, "", NOW), "{forged}");
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn requests_from_elsewhere_are_refused() {
        let csrf = csrf();
        let judge = |pairs: &[(&'static str, &str)]| {
            refuse_foreign(&csrf, &headers(pairs), None, None).is_none()
        };
        let host = ("host", "127.0.0.1:3000");
        // Our own page; not a browser; a request the user made directly.
        assert!(judge(&[host, ("origin", "http://127.0.0.1:3000")]));
        assert!(judge(&[host, ("sec-fetch-site", "same-origin")]));
        assert!(judge(&[host]));
        assert!(judge(&[host, ("sec-fetch-site", "none")]));
        assert!(judge(&[
            host,
            ("referer", "http://127.0.0.1:3000/jobs/queues")
        ]));
        assert!(judge(&[
            ("host", "Example.COM"),
            ("origin", "http://example.com:80")
        ]));
        // Another port, host or scheme; a sandboxed page; a sibling or foreign site.
        assert!(!judge(&[host, ("origin", "http://127.0.0.1:3001")]));
        assert!(!judge(&[host, ("origin", "http://127.0.0.2:3000")]));
        assert!(!judge(&[host, ("origin", "null")]));
        assert!(!judge(&[host, ("referer", "http://evil.example/x")]));
        assert!(!judge(&[host, ("sec-fetch-site", "same-site")]));
        assert!(!judge(&[host, ("sec-fetch-site", "cross-site")]));
        assert!(!judge(&[
            host,
            ("origin", "http://127.0.0.1:3000"),
            ("sec-fetch-site", "cross-site")
        ]));
        assert!(
            !judge(&[("origin", "http://127.0.0.1:3000")]),
            "no host to match"
        );
        // Over HTTPS, only the HTTPS origin.
        let https = ("x-forwarded-proto", "https");
        assert!(judge(&[host, https, ("origin", "https://127.0.0.1:3000")]));
        assert!(!judge(&[host, https, ("origin", "http://127.0.0.1:3000")]));
        // Behind a proxy that rewrites the host.
        assert!(judge(&[
            ("host", "10.0.0.5:8080"),
            ("x-forwarded-host", "admin.example.com"),
            https,
            ("origin", "https://admin.example.com")
        ]));
        // An origin the service allows, from wherever the browser says.
        let allowing = Csrf::new(None, vec!["https://ops.example.com/".into()], None);
        let origin = ("origin", "https://ops.example.com");
        let pairs = headers(&[host, origin, ("sec-fetch-site", "same-site")]);
        assert!(refuse_foreign(&allowing, &pairs, None, None).is_none());
    }

    #[test]
    fn https_is_detected_or_declared() {
        assert!(is_https(&HeaderMap::new(), Some("https")));
        assert!(!is_https(&HeaderMap::new(), None));
        assert!(is_https(
            &headers(&[("x-forwarded-proto", "HTTPS, http")]),
            None
        ));
        assert!(is_https(
            &headers(&[("forwarded", "for=1.2.3.4;proto=https;host=a")]),
            None
        ));
        assert!(!is_https(&headers(&[("x-forwarded-proto", "http")]), None));
        let declared = Csrf::new(None, Vec::new(), Some(true));
        assert!(declared.secure(&HeaderMap::new(), None));
        let plain = Csrf::new(None, Vec::new(), Some(false));
        assert!(!plain.secure(&headers(&[("x-forwarded-proto", "https")]), None));
    }

    #[test]
    fn cookie_names_keep_dashboards_apart_over_https() {
        assert_eq!(cookie_name(false, "/jobs"), "jobqueue_csrf");
        assert_eq!(cookie_name(true, ""), "__Host-jobqueue_csrf");
        let jobs = cookie_name(true, "/jobs");
        assert!(jobs.starts_with("__Host-jobqueue_csrf_"), "{jobs}");
        assert_ne!(jobs, cookie_name(true, "/admin/jobs"));
    }
}
