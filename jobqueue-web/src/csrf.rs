//! Protection against cross-site requests: a random token in a `SameSite=Strict` cookie,
//! which every form repeats in a hidden field (double submit). Another site can neither
//! read the cookie nor make the browser send it, so it cannot forge an action.

use axum::extract::Request;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;

use crate::mount::base_path;

const COOKIE_NAME: &str = "jobqueue_csrf";

/// This browser's token, and whether the browser sent it (a fresh one proves nothing).
#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) value: String,
    pub(crate) sent: bool,
}

impl Token {
    /// Whether `field`, from a submitted form, proves the request came from our page.
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

/// Gives every request its token, setting the cookie on responses to browsers without one.
pub(crate) async fn cookie(mut request: Request, next: Next) -> Response {
    let sent = request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE_NAME && value.len() == 64)
        .map(|(_, value)| value.to_owned());
    let token = match sent {
        Some(value) => Token { value, sent: true },
        None => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            let value = bytes.iter().map(|b| format!("{b:02x}")).collect();
            Token { value, sent: false }
        }
    };
    let path = base_path(&request);
    request.extensions_mut().insert(token.clone());
    let mut response = next.run(request).await;
    if !token.sent {
        let path = if path.is_empty() { "/" } else { path.as_str() };
        let cookie = format!(
            "{COOKIE_NAME}={}; Path={path}; HttpOnly; SameSite=Strict",
            token.value
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::Token;

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
}
