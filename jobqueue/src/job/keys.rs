//! The keys a job's state is stored under in a backend's key/value store: its collapse
//! marker and uniqueness locks (a digest of its arguments), and the marks kept per job id.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::envelope::{push_hex, Envelope};

/// The key of a job's cancel mark: set by an operator, read by the process running it.
pub(crate) fn cancel_key(jid: &str) -> String {
    format!("cancelled:{jid}")
}

/// The key of a job's start record: which process started it, written before a job that
/// was recovered once runs again, so that a later recovery knows it started.
pub(crate) fn started_key(jid: &str) -> String {
    format!("started:{jid}")
}

/// `kind:class[:queue]:sha256(arguments)`: the job's class and a digest of its arguments
/// (all of them, or the fields the attribute names). Object keys are sorted before hashing,
/// so the same arguments give the same key however they were written.
pub(super) fn job_key(kind: &str, envelope: &Envelope, fields: &[&str], queue: bool) -> String {
    const NULL: Value = Value::Null;
    // The arguments are written straight into the digest: a `BTreeMap` of the picked
    // fields writes the same JSON as a `Value::Object` of them (keys sorted), and the
    // arguments' slice the same as a `Value::Array`, without copying them first.
    let mut hasher = Sha256::new();
    let written = match (fields, envelope.args.as_slice()) {
        (fields, [Value::Object(object)]) if !fields.is_empty() => {
            let picked: BTreeMap<&str, &Value> = fields
                .iter()
                .map(|f| (*f, object.get(*f).unwrap_or(&NULL)))
                .collect();
            serde_json::to_writer(&mut hasher, &picked)
        }
        // All of them; or positional arguments (a job pushed from Ruby), whose fields
        // cannot be picked out.
        (_, args) => serde_json::to_writer(&mut hasher, args),
    };
    // Writing JSON values into a hasher cannot fail; a key without its digest would still
    // name the class, but never match a lock taken with one.
    let digest = match written {
        Ok(()) => hasher.finalize(),
        Err(_) => Default::default(),
    };
    let mut key = String::with_capacity(
        kind.len() + envelope.class.len() + envelope.queue.len() + 3 + 2 * digest.len(),
    );
    for part in [kind, ":", &envelope.class] {
        key.push_str(part);
    }
    if queue {
        key.push(':');
        key.push_str(&envelope.queue);
    }
    key.push(':');
    push_hex(&mut key, &digest);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(args: Vec<Value>) -> Envelope {
        Envelope::new("Refresh", "default", args)
    }

    /// The keys locks were taken under before the digest was written into directly: a
    /// lock taken by an earlier version must still be found.
    #[test]
    fn keys_are_those_of_the_arguments_json_digest() {
        let cases = [
            (
                vec![
                    json!(1),
                    json!("a"),
                    json!({"b": 2, "a": [1, {"z": 1, "y": null}]}),
                ],
                &[][..],
            ),
            (
                vec![json!({"account": 1, "reason": "a", "nested": {"b": 1, "a": 2}})],
                &["reason", "nested", "account"][..],
            ),
            (vec![json!({"account": 1})], &["missing", "account"][..]),
            (vec![json!(1), json!(2)], &["account"][..]),
            (vec![], &[][..]),
        ];
        for (args, fields) in cases {
            let job = envelope(args.clone());
            let selected = match (fields, args.as_slice()) {
                ([], _) => Value::Array(args.clone()),
                (fields, [Value::Object(object)]) => Value::Object(
                    fields
                        .iter()
                        .map(|f| {
                            (
                                (*f).to_owned(),
                                object.get(*f).cloned().unwrap_or(Value::Null),
                            )
                        })
                        .collect(),
                ),
                _ => Value::Array(args.clone()),
            };
            let digest: String = Sha256::digest(selected.to_string().as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                job_key("unique", &job, fields, true),
                format!("unique:Refresh:default:{digest}")
            );
            assert_eq!(
                job_key("collapse", &job, fields, false),
                format!("collapse:Refresh:{digest}")
            );
        }
    }

    #[test]
    fn named_fields_pick_the_key_and_the_rest_is_ignored() {
        let a = envelope(vec![json!({"account": 1, "reason": "a"})]);
        let b = envelope(vec![json!({"reason": "b", "account": 1})]);
        let c = envelope(vec![json!({"account": 2, "reason": "a"})]);
        assert_eq!(
            job_key("c", &a, &["account"], false),
            job_key("c", &b, &["account"], false)
        );
        assert_ne!(
            job_key("c", &a, &["account"], false),
            job_key("c", &c, &["account"], false)
        );
        assert_ne!(job_key("c", &a, &[], false), job_key("c", &b, &[], false));
    }

    #[test]
    fn the_queue_counts_only_when_asked() {
        let mut a = envelope(vec![json!(1)]);
        let k1 = job_key("u", &a, &[], true);
        a.queue = "other".into();
        assert_ne!(k1, job_key("u", &a, &[], true));
        assert!(k1.starts_with("u:Refresh:default:"));
    }
}
