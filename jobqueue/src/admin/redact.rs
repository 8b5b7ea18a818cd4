//! What operators see of a job: its class's `sensitive` fields hidden, in its arguments, in
//! its error message, and in the text of a payload that does not parse (or was wrapped as
//! invalid or oversized), whether or not a process of that class is alive.

use std::collections::HashMap;

use serde_json::Value;

use super::Admin;
use crate::backend::raw_bytes_text;
use crate::envelope::{redact_text, secrets, Envelope, REDACTED};
use crate::error::Error;
use crate::retry::error_class;

/// The argument fields each job class declares `sensitive`, as the processes that run them
/// publish them: what to hide when showing a job.
#[derive(Clone, Debug, Default)]
pub struct Sensitive {
    by_class: HashMap<String, Vec<String>>,
}

impl Sensitive {
    /// `job` with the values of its class's sensitive fields hidden, in its arguments and
    /// its error message. A payload that was kept as the argument of a job of its own
    /// (invalid, or too large) has every known class's sensitive fields hidden in it and in
    /// its error message.
    pub fn redact(&self, job: &Envelope) -> Envelope {
        let wrapped = [error_class::INVALID_PAYLOAD, error_class::PAYLOAD_TOO_LARGE];
        if wrapped.contains(&job.class.as_str()) {
            let mut shown = job.clone();
            for arg in &mut shown.args {
                if let Value::String(text) = arg {
                    *text = match raw_bytes_text(text) {
                        // Bytes that are not UTF-8, kept in hex: shown as text when that
                        // hides a field.
                        Some(readable) => match self.text(&readable) {
                            hidden if hidden != readable => hidden,
                            _ => std::mem::take(text),
                        },
                        None => self.text(text),
                    };
                }
            }
            // A decode error may quote a piece of the payload.
            if let Some(message) = &mut shown.error_message {
                *message = self.text(message);
            }
            return shown;
        }
        let Some(fields) = self.by_class.get(&job.class) else {
            return job.clone();
        };
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let mut shown = job.redacted(&fields);
        if let Some(message) = &mut shown.error_message {
            for secret in secrets(&job.args, &fields).iter().filter(|s| !s.is_empty()) {
                *message = message.replace(secret.as_str(), REDACTED);
            }
        }
        shown
    }

    /// A stored payload as it may be shown: the job, redacted; or, when it does not parse,
    /// its text with every known sensitive field's value hidden.
    pub fn shown(&self, payload: &str) -> Result<Envelope, String> {
        match Envelope::parse(payload) {
            Ok(job) => Ok(self.redact(&job)),
            Err(_) => Err(self.text(payload)),
        }
    }

    /// `text` with the value of every known sensitive field hidden wherever it appears as
    /// `"field": value`.
    fn text(&self, text: &str) -> String {
        let mut fields: Vec<&str> = self
            .by_class
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        fields.dedup();
        redact_text(text, &fields)
    }
}

impl Admin {
    /// The sensitive argument fields of each job class, as published by the processes that
    /// run them (kept after they end), and as live processes of an earlier version show
    /// them in their heartbeat.
    pub async fn sensitive(&self) -> Result<Sensitive, Error> {
        let catalog = self.client.catalog();
        catalog.fresh(self.broker.as_ref()).await?;
        let mut by_class: HashMap<String, Vec<String>> = HashMap::new();
        for (class, options) in catalog.classes() {
            let fields = options.sensitive.iter().map(|f| (*f).to_owned());
            by_class.entry(class).or_default().extend(fields);
        }
        for process in self.broker.processes().await? {
            let Ok(info) = serde_json::from_str::<Value>(&process.info) else {
                continue;
            };
            let Some(classes) = info["sensitive"].as_object() else {
                continue;
            };
            for (class, fields) in classes {
                let known = by_class.entry(class.clone()).or_default();
                for field in fields
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    known.push(field.to_owned());
                }
            }
        }
        for fields in by_class.values_mut() {
            fields.sort_unstable();
            fields.dedup();
        }
        by_class.retain(|_, fields| !fields.is_empty());
        Ok(Sensitive { by_class })
    }
}
