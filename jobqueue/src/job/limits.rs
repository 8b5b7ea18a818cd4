//! Per-key limits as a job's header carries them: the `limits` text the client writes from
//! the class's `concurrency(...)` and `rate(...)` options, and the one reading of it every
//! backend applies. Counts, periods and keys are bounded; a text out of bounds is refused
//! whole ([`InvalidLimits`]), so no job runs under part of its limits or none. The Redis
//! scripts read it by the same rules (`parse_limits` in `lua/lib.lua`).

use std::fmt::Write;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::JobOptions;
use crate::envelope::{push_hex, Envelope};

/// The largest count a limit may have (jobs at once, or starts per period).
pub const MAX_LIMIT_COUNT: u32 = 1_000_000;
/// The longest period a rate limit may have: ten years.
pub const MAX_LIMIT_PERIOD: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
/// The most limits one job may carry.
pub const MAX_LIMITS: usize = 4;
/// The longest limit key, in bytes.
pub const MAX_LIMIT_KEY: usize = 512;
/// A key field's value longer than this (escaped) is written as its digest.
const MAX_SHOWN_VALUE: usize = 64;

/// One limit as a job's header carries it: the backend enforces it at fetch from this
/// alone, so a job keeps the limits it was enqueued with.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitTag {
    /// `Class:concurrency:values` or `Class:rate:values`: whose slots the job takes.
    pub key: String,
    /// Which limit, and how much.
    pub kind: LimitKind,
}

/// A [`LimitTag`]'s limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LimitKind {
    /// At most this many jobs with the key run at once.
    Concurrency(u32),
    /// At most `limit` jobs with the key start in any `per` seconds.
    Rate {
        /// Starts per period.
        limit: u32,
        /// The period, in seconds.
        per: f64,
    },
}

/// Why a `limits` text cannot be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the job's limits `{text}` cannot be applied: {reason}")]
pub struct InvalidLimits {
    /// The text, cut to 200 characters.
    pub text: String,
    /// What is out of range.
    pub reason: String,
}

impl LimitTag {
    /// Whether this is a concurrency limit, whose slots are freed when the job ends.
    pub fn is_concurrency(&self) -> bool {
        matches!(self.kind, LimitKind::Concurrency(_))
    }

    /// The `limits` field's text: per limit, `c2 KEY` (a concurrency limit of 2) or
    /// `r100/60 KEY` (a rate of 100 per 60 s), separated by single spaces. Plain text
    /// because a backend reads it on every fetch and every acknowledgement.
    pub fn encode(tags: &[LimitTag]) -> String {
        let mut text = String::new();
        for tag in tags {
            if !text.is_empty() {
                text.push(' ');
            }
            // Writing to a String cannot fail.
            let _ = match tag.kind {
                LimitKind::Concurrency(n) => write!(text, "c{n} {}", tag.key),
                LimitKind::Rate { limit, per } => write!(text, "r{limit}/{per} {}", tag.key),
            };
        }
        text
    }

    /// The limits of a `limits` text, all of them or none: counts from 1 to
    /// [`MAX_LIMIT_COUNT`], periods above 0 up to [`MAX_LIMIT_PERIOD`] written as decimals,
    /// at most [`MAX_LIMITS`] limits, keys of letters, digits and `_-.:@%,` up to
    /// [`MAX_LIMIT_KEY`] bytes, each named by one limit only, single spaces between words.
    /// An empty text has none.
    pub fn parse(text: &str) -> Result<Vec<LimitTag>, InvalidLimits> {
        let invalid = |reason: &str| InvalidLimits {
            text: text.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        if let Some(c) = text
            .bytes()
            .find(|b| !allowed(*b) && *b != b' ' && *b != b'/')
        {
            return Err(invalid(&format!(
                "byte {c:#04x} is not allowed (letters, digits, `_-.:@%,/` and spaces)"
            )));
        }
        let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
        if !words.len().is_multiple_of(2) {
            return Err(invalid("a limit has no key"));
        }
        if words.len() / 2 > MAX_LIMITS {
            return Err(invalid(&format!("more than {MAX_LIMITS} limits")));
        }
        // Two limits on one key would count each other's slots: no client writes that.
        let keys: Vec<&str> = words.iter().skip(1).step_by(2).copied().collect();
        if keys.iter().enumerate().any(|(i, k)| keys[..i].contains(k)) {
            return Err(invalid("a key is named by two limits"));
        }
        words
            .chunks_exact(2)
            .map(|pair| {
                let (spec, key) = (pair[0], pair[1]);
                if key.len() > MAX_LIMIT_KEY || key.contains('/') {
                    return Err(invalid(&format!(
                        "a key is over {MAX_LIMIT_KEY} bytes or holds `/`"
                    )));
                }
                let kind = kind(spec).map_err(|reason| invalid(&reason))?;
                Ok(LimitTag {
                    key: key.to_owned(),
                    kind,
                })
            })
            .collect()
    }
}

/// Whether `jid` can name a concurrency slot (`JID@PROCESS`): printable ASCII without `@`
/// or spaces, as the fetch script requires. A job with limits and any other jid takes no
/// slot and does not run.
pub(crate) fn names_a_slot(jid: &str) -> bool {
    !jid.is_empty() && jid.bytes().all(|b| b.is_ascii_graphic() && b != b'@')
}

impl LimitKind {
    /// How many more jobs may start at `now` under a key of this kind holding `taken`
    /// slots (live holders for concurrency, starts within the period for rate, the oldest
    /// at `oldest`); when none, also when to look again: after `lease` for a concurrency
    /// key, when the oldest start leaves the period for a rate key. The rule every Rust
    /// backend applies (the Redis scripts state it in Lua).
    pub(crate) fn room(
        self,
        taken: usize,
        oldest: Option<f64>,
        now: f64,
        lease: f64,
    ) -> (usize, f64) {
        let (limit, look) = match self {
            LimitKind::Rate { limit, per } => (limit, oldest.unwrap_or(now) + per),
            LimitKind::Concurrency(limit) => (limit, now + lease),
        };
        match (limit as usize).checked_sub(taken).filter(|free| *free > 0) {
            Some(free) => (free, now),
            None => (0, look),
        }
    }
}

/// The bytes a limit key may hold.
fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-.:@%,".contains(&b)
}

/// A limit's `c<count>` or `r<count>/<period>`.
fn kind(spec: &str) -> Result<LimitKind, String> {
    let count = |digits: &str| {
        let n = digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse::<u64>().ok())
            .flatten()
            .filter(|n| (1..=u64::from(MAX_LIMIT_COUNT)).contains(n));
        n.and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("`{spec}`: counts run from 1 to {MAX_LIMIT_COUNT}"))
    };
    if let Some(n) = spec.strip_prefix('c') {
        return count(n).map(LimitKind::Concurrency);
    }
    let Some((n, per)) = spec.strip_prefix('r').and_then(|r| r.split_once('/')) else {
        return Err(format!(
            "`{spec}` is neither `c<count>` nor `r<count>/<seconds>`"
        ));
    };
    let limit = count(n)?;
    let decimal = {
        let (whole, fraction) = per.split_once('.').unwrap_or((per, ""));
        !whole.is_empty()
            && [whole, fraction]
                .iter()
                .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
    };
    let per = decimal
        .then(|| per.parse::<f64>().ok())
        .flatten()
        .filter(|p| *p > 0.0 && *p <= MAX_LIMIT_PERIOD.as_secs_f64())
        .ok_or_else(|| {
            format!(
                "`{spec}`: a period is a decimal number of seconds above 0, up to {}",
                MAX_LIMIT_PERIOD.as_secs()
            )
        })?;
    Ok(LimitKind::Rate { limit, per })
}

impl JobOptions {
    /// The limits a job with these options carries in its header; empty without limits.
    pub fn limit_tags(&self, envelope: &Envelope) -> Vec<LimitTag> {
        let mut tags = Vec::new();
        if let Some(c) = self.concurrency {
            tags.push(LimitTag {
                key: limit_key("concurrency", envelope, c.key, self.sensitive),
                kind: LimitKind::Concurrency(c.limit),
            });
        }
        if let Some(r) = self.rate {
            tags.push(LimitTag {
                key: limit_key("rate", envelope, r.key, self.sensitive),
                kind: LimitKind::Rate {
                    limit: r.limit,
                    per: r.per.as_secs_f64(),
                },
            });
        }
        tags
    }
}

/// A value as it appears in a limit key: letters, digits and `_-.:@` as they are, anything
/// else as `%XX` per byte, so a key needs no escaping in JSON, in Redis or in a log line.
fn escape_key(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"_-.:@".contains(&b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `sha256-` and the first 8 bytes of a value's digest, in hex: a sensitive value, or one
/// too long to show, in a limit key.
fn digest(value: &str) -> String {
    let mut text = String::from("sha256-");
    push_hex(&mut text, &Sha256::digest(value.as_bytes())[..8]);
    text
}

/// `Class:kind` and, with key fields, `:` and their values joined by `,` (strings as they
/// are, anything else as JSON): readable in Redis and in the dashboard, unlike the digests
/// of lock keys, because operators look limits up by tenant. A `sensitive` field's value,
/// and a value too long to show, appear as its digest.
fn limit_key(kind: &str, envelope: &Envelope, fields: &[&str], sensitive: &[&str]) -> String {
    let mut key = format!("{}:{kind}", escape_key(&envelope.class));
    if fields.is_empty() {
        return key;
    }
    let object = match envelope.args.as_slice() {
        [Value::Object(object)] => Some(object),
        _ => None,
    };
    let values: Vec<String> = fields
        .iter()
        .map(|f| {
            let text = match object.and_then(|o| o.get(*f)) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => return "null".to_owned(),
            };
            let shown = escape_key(&text);
            if sensitive.contains(f) || shown.len() > MAX_SHOWN_VALUE {
                digest(&text)
            } else {
                shown
            }
        })
        .collect();
    key.push(':');
    key.push_str(&values.join(","));
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{ConcurrencyLimit, RateLimit};
    use serde_json::json;

    fn envelope(args: Vec<Value>) -> Envelope {
        Envelope::new("Refresh", "default", args)
    }

    #[test]
    fn limit_keys_are_readable_and_per_field_value() {
        let options = JobOptions {
            concurrency: Some(ConcurrencyLimit {
                limit: 2,
                key: &["shop", "region"],
            }),
            rate: Some(RateLimit {
                limit: 100,
                per: Duration::from_secs(60),
                key: &[],
            }),
            ..JobOptions::DEFAULT
        };
        let tags = options.limit_tags(&envelope(vec![json!({"shop": 42, "region": "eu"})]));
        assert_eq!(tags[0].key, "Refresh:concurrency:42,eu");
        assert_eq!(tags[0].kind, LimitKind::Concurrency(2));
        assert_eq!(tags[1].key, "Refresh:rate");
        let rate = LimitKind::Rate {
            limit: 100,
            per: 60.0,
        };
        assert_eq!(tags[1].kind, rate);
        let text = LimitTag::encode(&tags);
        assert_eq!(text, "c2 Refresh:concurrency:42,eu r100/60 Refresh:rate");
        assert_eq!(LimitTag::parse(&text).unwrap(), tags);
        assert!(JobOptions::DEFAULT.limit_tags(&envelope(vec![])).is_empty());
        let odd = options.limit_tags(&envelope(vec![json!({"shop": "a \"b\",c", "region": 1})]));
        assert_eq!(odd[0].key, "Refresh:concurrency:a%20%22b%22%2Cc,1");
        // Whatever the values, the text the client writes reads back.
        assert_eq!(LimitTag::parse(&LimitTag::encode(&odd)).unwrap(), odd);
    }

    #[test]
    fn sensitive_and_long_values_appear_as_digests() {
        let options = JobOptions {
            sensitive: &["email"],
            concurrency: Some(ConcurrencyLimit {
                limit: 1,
                key: &["email", "note"],
            }),
            ..JobOptions::DEFAULT
        };
        let long = "x".repeat(200);
        let tags = options.limit_tags(&envelope(vec![
            json!({"email": "ann@example.com", "note": long}),
        ]));
        let key = &tags[0].key;
        assert!(!key.contains("ann"), "{key}");
        assert!(!key.contains("xxxx"), "{key}");
        assert!(key.starts_with("Refresh:concurrency:sha256-"), "{key}");
        let again = options.limit_tags(&envelope(vec![
            json!({"email": "ann@example.com", "note": "x".repeat(200)}),
        ]));
        assert_eq!(&again[0].key, key, "the same values give the same key");
        assert!(key.len() < 100, "{key}");
    }

    #[test]
    fn only_texts_in_range_parse_and_never_in_part() {
        assert_eq!(LimitTag::parse("").unwrap(), []);
        assert!(LimitTag::parse("c1 a r5/1 a").is_err());
        assert!(LimitTag::parse("c1 a c1 b").is_ok());
        assert_eq!(
            LimitTag::parse("r5/0.5 a").unwrap()[0].kind,
            LimitKind::Rate { limit: 5, per: 0.5 }
        );
        assert_eq!(
            LimitTag::parse("c1000000 a").unwrap()[0].kind,
            LimitKind::Concurrency(1_000_000)
        );
        for bad in [
            "r1/1e300 x",
            "c99999999999 y",
            "c1000001 y",
            "r5/0 z",
            "r5/nan w",
            "r5/-1 w",
            "r5/+1 w",
            "r5/.5 w",
            "r5/316224001 w",
            "c0 v",
            "c-1 v",
            "c2 ",
            "c2",
            "x1 a",
            "c2 a c3",
            "c1 a c1 b c1 c c1 d c1 e",
            "c1 a\tb",
            "c1 a\u{b}b",
            "c1 a\"b",
            "c1 a/b",
            "c1 ключ",
        ] {
            assert!(LimitTag::parse(bad).is_err(), "{bad:?} parsed");
        }
        let long = format!("c1 {}", "k".repeat(MAX_LIMIT_KEY + 1));
        assert!(LimitTag::parse(&long).is_err());
        let error = LimitTag::parse("c0 v").unwrap_err().to_string();
        assert!(
            error.contains("`c0 v`") && error.contains("from 1"),
            "{error}"
        );
    }
}
