//! The wire payload: Sidekiq-compatible JSON, so Ruby Sidekiq and this library can share
//! queues and read each other's retry and dead sets.

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::time::now;

mod args;
pub(crate) mod header;

pub use self::args::{decode_args, encode_args, REDACTED};
pub(crate) use self::args::{redact_text, secrets};

/// Bytes of a payload besides its jid, class and queue: the keys, the timestamps, and
/// short arguments.
const PAYLOAD_OVERHEAD: usize = 160;

/// Sidekiq cuts error messages to this many characters.
const MAX_ERROR_MESSAGE: usize = 10_000;

/// A job as stored in Redis. Keys this library does not know are kept as they were.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The key of the job's collapse marker (`#[job(collapsible)]`): part of the header
    /// of the payload, written first, so a fetch reads the marker beside the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse: Option<String>,
    /// The job's per-key limits, as [`crate::job::LimitTag::encode`] writes them; absent for
    /// jobs without. Part of the header, written next, and the jid right after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<String>,
    /// The job id.
    pub jid: String,
    /// The class name the job is dispatched by.
    pub class: String,
    /// The queue the job belongs to. Written right after the class, and `enqueued_at` right
    /// after it, so a broker script moving a due job to its queue finds both without
    /// parsing the payload.
    pub queue: String,
    /// When the job was last pushed to its queue.
    #[serde(default, with = "epoch", skip_serializing_if = "Option::is_none")]
    pub enqueued_at: Option<f64>,
    /// The job's arguments.
    pub args: Vec<Value>,
    /// How many job-level retries the job gets.
    #[serde(default)]
    pub retry: Retry,
    /// When the job was first created, in epoch seconds.
    #[serde(default, with = "epoch", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<f64>,
    /// Retries so far: absent before the first failure, 0 after it. Sidekiq lowers it by
    /// one when a job is retried by hand (the Web UI's Retry buttons, `SortedEntry#retry`),
    /// so a job that died at its first failure comes back with -1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_count: Option<i64>,
    /// The class of the last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<String>,
    /// The message of the last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// When the job first failed.
    #[serde(default, with = "epoch", skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<f64>,
    /// When the job last failed on a retry.
    #[serde(default, with = "epoch", skip_serializing_if = "Option::is_none")]
    pub retried_at: Option<f64>,
    /// How many times a process died while running the job (known to have started it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_count: Option<u32>,
    /// How many times the job was recovered from a dead process that may not have started
    /// it (it may only have waited in that process's prefetch buffer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_count: Option<u32>,
    /// Every other key, preserved.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The payload's `retry` key: `true` (Sidekiq's default of 25), `false`, or a count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retry {
    /// `true`: Sidekiq's default count.
    #[default]
    Default,
    /// `false`: never retried and never kept in the dead set.
    Disabled,
    /// An explicit count; 0 sends the job to the dead set on its first failure.
    Count(u32),
}

impl Retry {
    /// Sidekiq's default when `retry` is `true`.
    pub const SIDEKIQ_DEFAULT: u32 = 25;

    /// The number of retries this setting allows.
    pub fn max_retries(self) -> u32 {
        match self {
            Retry::Default => Self::SIDEKIQ_DEFAULT,
            Retry::Disabled => 0,
            Retry::Count(n) => n,
        }
    }
}

impl Serialize for Retry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Retry::Default => s.serialize_bool(true),
            Retry::Disabled => s.serialize_bool(false),
            Retry::Count(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Retry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Bool(true) => Retry::Default,
            Value::Bool(false) | Value::Null => Retry::Disabled,
            Value::Number(n) => match n.as_u64() {
                Some(n) => Retry::Count(u32::try_from(n).unwrap_or(u32::MAX)),
                // Negative or fractional counts mean no retries, as in Ruby's `count < max`.
                None => Retry::Count(0),
            },
            other => {
                return Err(serde::de::Error::custom(format!(
                    "`retry` must be true, false or a count, not {other}"
                )))
            }
        })
    }
}

/// Timestamps are written as float epoch seconds (read by Sidekiq 6, 7 and 8) and read in
/// both forms: floats are seconds, integers are Sidekiq 8's milliseconds.
mod epoch {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    /// Integers at least this large are milliseconds; as seconds they would be past year 5000.
    const MILLIS_THRESHOLD: f64 = 1e11;

    pub(super) fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(secs) => s.serialize_f64(*secs),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Number(n) if n.is_f64() => n.as_f64(),
            Value::Number(n) => n
                .as_f64()
                .map(|v| if v >= MILLIS_THRESHOLD { v / 1000.0 } else { v }),
            // Some producers write strings; keep the job rather than refuse it.
            Value::String(s) => s.parse().ok(),
            _ => None,
        })
    }
}

/// Why a payload could not be turned into a job.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload is not a JSON object of the expected shape.
    #[error("payload is not a valid job: {0}")]
    Payload(serde_json::Error),
    /// The arguments do not fit the job type.
    #[error("arguments {args} do not fit {class}: {reason}")]
    Args {
        /// The job class.
        class: String,
        /// The arguments, as JSON (cut if long), with sensitive fields redacted.
        args: String,
        /// What serde reported, with sensitive values redacted.
        reason: String,
    },
}

impl Envelope {
    /// A new job with a fresh jid and `created_at` set to now.
    pub fn new(class: impl Into<String>, queue: impl Into<String>, args: Vec<Value>) -> Self {
        Self {
            collapse: None,
            limits: None,
            jid: new_jid(),
            class: class.into(),
            args,
            queue: queue.into(),
            retry: Retry::Default,
            created_at: Some(now()),
            enqueued_at: None,
            retry_count: None,
            error_class: None,
            error_message: None,
            failed_at: None,
            retried_at: None,
            interrupted_count: None,
            recovered_count: None,
            extra: Map::new(),
        }
    }

    /// Parses a payload taken from Redis.
    pub fn parse(payload: &str) -> Result<Self, DecodeError> {
        serde_json::from_str(payload).map_err(DecodeError::Payload)
    }

    /// The payload as stored in Redis.
    pub fn to_json(&self) -> String {
        // Room for the keys and the usual values at once: serde_json starts at 128 bytes,
        // so a typical payload (about 160) was copied once as it grew.
        let mut out = Vec::with_capacity(
            PAYLOAD_OVERHEAD + self.jid.len() + self.class.len() + self.queue.len(),
        );
        // Serializing this type cannot fail: every key is a string and every value is JSON.
        if serde_json::to_writer(&mut out, self).is_err() {
            return String::new();
        }
        // serde_json writes UTF-8 only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Records a failure the way Sidekiq does: `retry_count` becomes 0 on the first
    /// failure (with `failed_at`), then counts up (with `retried_at`). Returns the new count.
    pub fn record_failure(&mut self, class: &str, message: &str) -> u32 {
        self.error_class = Some(class.to_owned());
        self.error_message = Some(truncate(message, MAX_ERROR_MESSAGE).to_owned());
        let at = now();
        let count = match self.retry_count {
            Some(n) => {
                self.retried_at = Some(at);
                n.saturating_add(1)
            }
            None => {
                self.failed_at = Some(at);
                0
            }
        };
        self.retry_count = Some(count);
        u32::try_from(count.max(0)).unwrap_or(u32::MAX)
    }
}

impl Envelope {
    /// How long the job has waited since it was pushed to its queue (or created).
    pub(crate) fn waited(&self) -> std::time::Duration {
        self.enqueued_at
            .or(self.created_at)
            .and_then(|at| std::time::Duration::try_from_secs_f64(now() - at).ok())
            .unwrap_or_default()
    }
}

/// A new job id: 24 lowercase hex characters, as Sidekiq's `SecureRandom.hex(12)`.
pub fn new_jid() -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// Lowercase hex, two characters a byte: job ids, key digests, process nonces.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    push_hex(&mut text, bytes);
    text
}

/// Appends `bytes` to `text` in lowercase hex, 32 bytes at a time through a buffer on the
/// stack (a `push` per character costs about four times as much).
pub(crate) fn push_hex(text: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for chunk in bytes.chunks(32) {
        let mut buf = [0u8; 64];
        for (pair, b) in buf.chunks_exact_mut(2).zip(chunk) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
        // Hex digits are ASCII, so this is always UTF-8.
        text.push_str(std::str::from_utf8(&buf[..chunk.len() * 2]).unwrap_or_default());
    }
}

/// The job id of the `n`th follow-up of job `parent`: the same on every run of the parent,
/// so a run repeated after a crash declares the same jobs.
pub(crate) fn derived_jid(parent: &str, n: usize) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{parent}:then:{n}").as_bytes());
    hex(&digest[..12])
}

/// `text` cut to at most `max` characters, on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn reads_sidekiq_6_and_8_timestamps() {
        let six = r#"{"class":"A","args":[],"jid":"x","queue":"q","enqueued_at":1700000000.25}"#;
        let eight = r#"{"class":"A","args":[],"jid":"x","queue":"q","enqueued_at":1700000000250}"#;
        assert_eq!(
            Envelope::parse(six).unwrap().enqueued_at,
            Some(1_700_000_000.25)
        );
        assert_eq!(
            Envelope::parse(eight).unwrap().enqueued_at,
            Some(1_700_000_000.25)
        );
    }

    /// Payloads as Sidekiq 6.4, 7.3 and 8.1 write them (from their `job_retry.rb`,
    /// `client.rb` and `api.rb`), including a job retried by hand from the dead set.
    #[test]
    fn reads_every_field_sidekiq_writes() {
        let six_retried_by_hand = r#"{"class":"A","args":[1],"jid":"j6","queue":"q",
            "retry":true,"created_at":1700000000.1,"enqueued_at":1700000100.2,
            "error_message":"boom","error_class":"RuntimeError","failed_at":1700000050.3,
            "retry_count":-1,"backtrace":true,"error_backtrace":"eJzLSM3JyQcABiwCFQ=="}"#;
        let seven = r#"{"class":"A","args":[],"jid":"j7","queue":"q","retry":5,
            "retry_for":3600,"retry_queue":"low","backtrace":10,"tags":["a"],
            "cattr":{"tenant":1},"created_at":1700000000.5,"enqueued_at":1700000000.6,
            "retry_count":0,"failed_at":1700000001.0,"error_class":"E","error_message":"m"}"#;
        let eight = r#"{"class":"A","args":[],"jid":"j8","queue":"q","retry":false,
            "created_at":1700000000500,"enqueued_at":1700000000600,"retry_count":3,
            "failed_at":1700000001000,"retried_at":1700000002000,"discarded_at":1700000003000,
            "error_class":"E","error_message":null,"dead":false,"wrapped":"W"}"#;
        let six = Envelope::parse(six_retried_by_hand).unwrap();
        assert_eq!(six.retry_count, Some(-1));
        assert_eq!(six.retry, Retry::Default);
        let seven = Envelope::parse(seven).unwrap();
        assert_eq!((seven.retry, seven.retry_count), (Retry::Count(5), Some(0)));
        let eight = Envelope::parse(eight).unwrap();
        assert_eq!(eight.created_at, Some(1_700_000_000.5));
        assert_eq!(eight.retried_at, Some(1_700_000_002.0));
        assert_eq!(eight.error_message, None);
        // Their own keys survive a round trip untouched.
        let back: Value = serde_json::from_str(&seven.to_json()).unwrap();
        assert_eq!(back["retry_for"], 3600);
        assert_eq!(back["cattr"]["tenant"], 1);
        let back: Value = serde_json::from_str(&eight.to_json()).unwrap();
        assert_eq!(back["discarded_at"], 1_700_000_003_000_i64);
        assert_eq!(back["dead"], false);
    }

    #[test]
    fn a_job_retried_by_hand_fails_like_sidekiq() {
        // Died at its first failure (0), retried by hand (-1), fails again: Sidekiq adds
        // one, to 0, and stamps `retried_at`.
        let mut env = Envelope::new("A", "q", vec![]);
        env.retry_count = Some(-1);
        env.failed_at = Some(1.0);
        assert_eq!(env.record_failure("E", "again"), 0);
        assert_eq!(env.retry_count, Some(0));
        assert!(env.retried_at.is_some());
        assert_eq!(env.failed_at, Some(1.0));
    }

    #[test]
    fn reads_nulls_as_absent_and_refuses_a_repeated_or_missing_field() {
        let nulls = r#"{"class":"A","args":[],"jid":"x","queue":"q","retry":null,
            "enqueued_at":null,"retry_count":null,"error_class":null,"collapse":null}"#;
        let env = Envelope::parse(nulls).unwrap();
        assert_eq!(env.retry, Retry::Disabled);
        assert_eq!((env.enqueued_at, env.retry_count), (None, None));
        assert_eq!((env.error_class, env.collapse), (None, None));
        let twice = r#"{"class":"A","args":[],"jid":"x","queue":"q","jid":"y"}"#;
        let error = Envelope::parse(twice).unwrap_err().to_string();
        assert!(error.contains("duplicate field `jid`"), "{error}");
        let no_queue = r#"{"class":"A","args":[],"jid":"x"}"#;
        let error = Envelope::parse(no_queue).unwrap_err().to_string();
        assert!(error.contains("missing field `queue`"), "{error}");
        let wrong = r#"{"class":"A","args":{},"jid":"x","queue":"q"}"#;
        assert!(Envelope::parse(wrong).is_err());
        assert!(Envelope::parse(r#"["A",[],"x","q"]"#).is_err());
    }

    #[test]
    fn keeps_unknown_keys() {
        let raw =
            r#"{"class":"A","args":[1],"jid":"x","queue":"q","retry":3,"bid":"b1","tags":["t"]}"#;
        let env = Envelope::parse(raw).unwrap();
        assert_eq!(env.retry, Retry::Count(3));
        let back: Value = serde_json::from_str(&env.to_json()).unwrap();
        assert_eq!(back["bid"], "b1");
        assert_eq!(back["tags"][0], "t");
        assert_eq!(back["retry"], 3);
    }

    #[test]
    fn records_failures_like_sidekiq() {
        let mut env = Envelope::new("A", "q", vec![]);
        assert_eq!(env.record_failure("E", "boom"), 0);
        assert!(env.failed_at.is_some() && env.retried_at.is_none());
        assert_eq!(env.record_failure("E", &"x".repeat(20_000)), 1);
        assert!(env.retried_at.is_some());
        assert_eq!(env.error_message.as_deref().map(str::len), Some(10_000));
    }

    #[test]
    fn jids_are_24_lowercase_hex() {
        let jid = new_jid();
        assert_eq!(jid.len(), 24);
        assert!(jid
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(jid, new_jid());
    }

    pub(crate) mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value, nested a few levels.
        pub(crate) fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,40}".prop_map(Value::String),
            ];
            leaf.prop_recursive(6, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("class".to_owned()),
                            Just("args".to_owned()),
                            Just("jid".to_owned()),
                            Just("queue".to_owned()),
                            Just("retry".to_owned()),
                            Just("enqueued_at".to_owned()),
                            Just("limits".to_owned()),
                            Just("collapse".to_owned()),
                            ".{0,8}"
                        ],
                        inner,
                        0..8
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn parse_never_panics_on_text(text in ".{0,300}") {
                let _ = Envelope::parse(&text);
            }

            #[test]
            fn parse_never_panics_on_json(value in json()) {
                if let Ok(envelope) = Envelope::parse(&value.to_string()) {
                    // Whatever parses writes back and parses again.
                    prop_assert!(Envelope::parse(&envelope.to_json()).is_ok());
                }
            }
        }
    }
}
