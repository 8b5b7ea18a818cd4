//! Errors returned by the library.

use std::time::Duration;

/// A broker could not do what was asked of it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Redis refused the command, or the connection to it failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The Redis URL could not be used.
    #[error("invalid redis url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given, its password replaced by `***`.
        url: String,
        /// Why it was refused (any password in it replaced by `***`).
        reason: String,
    },
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}; is it running and reachable?")]
    Timeout(Duration),
    /// A push reached the master but not the replicas it was configured to wait for, in
    /// time. Its jobs are queued; they are lost only if the master fails before a replica
    /// copies them. Pushing again would queue them twice.
    #[error("the push was written to the master but only {acked} of {wanted} replicas confirmed it in time; check the replicas' link (INFO replication)")]
    NotReplicated {
        /// Replicas that confirmed the writes.
        acked: usize,
        /// Replicas the push waited for.
        wanted: usize,
    },
    /// The cluster's layout could not be read or set up.
    #[error("redis cluster: {0}")]
    Cluster(String),
    /// The backend cannot do what was asked (a backend written elsewhere that implements
    /// only the required methods).
    #[error("this backend does not support {0}")]
    Unsupported(&'static str),
    /// PostgreSQL refused a statement, or the connection to it failed.
    #[cfg(feature = "postgres")]
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// The PostgreSQL URL could not be used.
    #[cfg(feature = "postgres")]
    #[error("invalid postgres url `{url}`: {reason}")]
    InvalidPgUrl {
        /// The URL as given, its password replaced by `***`.
        url: String,
        /// Why it was refused.
        reason: String,
    },
}

/// An enqueue, a worker start or an admin call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker failed; the operation may be retried once it is reachable again.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The job's fields could not be written as JSON arguments.
    #[error("cannot serialize the arguments of {class}: {source}")]
    Serialize {
        /// The class name of the job.
        class: &'static str,
        /// What serde reported.
        source: serde_json::Error,
    },
    /// The job's payload is larger than the client allows; nothing was pushed.
    #[error("{class} was not enqueued: its payload is {bytes} bytes, over the limit of {limit}; pass large data by reference (an id, a URL) or raise Client::max_payload_bytes")]
    PayloadTooLarge {
        /// The class name of the job.
        class: String,
        /// The payload's size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Client middleware refused the job; nothing was pushed.
    #[error("{class} was not enqueued: {reason}")]
    Skipped {
        /// The class name of the job.
        class: String,
        /// Why, as the middleware put it.
        reason: String,
    },
    /// The worker was configured in a way that cannot run safely.
    #[error("worker configuration: {0}")]
    Config(String),
    /// A job performed at enqueue (`testing::Fake::inline`) failed.
    #[error("{class} failed when performed inline: {message}")]
    PerformedInline {
        /// The class name of the job.
        class: String,
        /// The job's error.
        message: String,
    },
}

/// `text` with the password of every URL in it (`redis://user:PASSWORD@host`, one or many
/// nodes) replaced by `***`, for messages and `Debug` output. Conservative: everything
/// between a userinfo's first `:` and the last `@` before the next `://` goes, so a
/// password with unescaped `@`, `/` or `,` is hidden whole.
pub(crate) fn redact_url(text: &str) -> String {
    let pieces: Vec<String> = text.split("://").map(redact_userinfo).collect();
    pieces.join("://")
}

fn redact_userinfo(piece: &str) -> String {
    let Some(at) = piece.rfind('@') else {
        return piece.to_owned();
    };
    match piece[..at].find(':') {
        Some(colon) => format!("{}***{}", &piece[..=colon], &piece[at..]),
        None => piece.to_owned(),
    }
}

/// The passwords of the URLs in `source`, as written and percent-decoded.
fn url_passwords(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for piece in source.split("://") {
        let Some(at) = piece.rfind('@') else { continue };
        let Some(colon) = piece[..at].find(':') else {
            continue;
        };
        let password = &piece[colon + 1..at];
        if !password.is_empty() {
            found.push(password.to_owned());
            let decoded = percent_decoded(password);
            if decoded != password {
                found.push(decoded);
            }
        }
    }
    // The longest first, so that a password holding another is hidden whole.
    found.sort_by_key(|p| std::cmp::Reverse(p.len()));
    found
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `message` with its URLs' passwords redacted, and with every password of the URLs in
/// `source` (the text the message is about: a URL, a configuration file) replaced by
/// `***` wherever it appears, as a parser's report may quote it.
pub(crate) fn redact_secrets(message: &str, source: &str) -> String {
    // In prose a URL ends at white space or a quote.
    let mut pieces = message.split("://");
    let mut redacted = pieces.next().unwrap_or_default().to_owned();
    for piece in pieces {
        let end = piece
            .find(|c: char| c.is_whitespace() || "`'\"".contains(c))
            .unwrap_or(piece.len());
        redacted.push_str("://");
        redacted.push_str(&redact_userinfo(&piece[..end]));
        redacted.push_str(&piece[end..]);
    }
    let mut message = redacted;
    for password in url_passwords(source) {
        message = message.replace(&password, "***");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_replaced() {
        let cases = [
            ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://ann:hunter2@host", "redis://ann:***@host"),
            ("rediss://ann:p@ss/w,rd@host", "rediss://ann:***@host"),
            (
                "redis://:a1@x:7000,redis://:b2@y:7001",
                "redis://:***@x:7000,redis://:***@y:7001",
            ),
            (":hunter2@host", ":***@host"),
            ("redis://ann@host", "redis://ann@host"),
            ("redis://host:6379", "redis://host:6379"),
            ("no url here", "no url here"),
            ("", ""),
        ];
        for (url, redacted) in cases {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    #[test]
    fn passwords_quoted_anywhere_are_replaced() {
        let source = "redis = \"redis://ann:s%40cret@host\" junk";
        let message = "line 1: expected newline, found `j` after s%40cret; decoded s@cret";
        let redacted = redact_secrets(message, source);
        assert!(!redacted.contains("cret"), "{redacted}");
        assert!(redacted.contains("line 1: expected newline"), "{redacted}");
        // A URL quoted in the message loses its password, whatever the source.
        let redacted = redact_secrets("cannot use `redis://ann:x1@h:1`: no: a@b", "");
        assert_eq!(redacted, "cannot use `redis://ann:***@h:1`: no: a@b");
    }
}
