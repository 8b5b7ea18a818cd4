//! The key a job is collapsed or locked by: its class and a digest of its arguments (all of
//! them, or the fields the attribute names).

use jobqueue::Envelope;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `kind:class[:queue]:sha256(arguments)`. Object keys are sorted before hashing, so the
/// same arguments give the same key however they were written.
pub(crate) fn job_key(kind: &str, envelope: &Envelope, fields: &[&str], queue: bool) -> String {
    let selected = match (fields, envelope.args.as_slice()) {
        ([], args) => Value::Array(args.to_vec()),
        (fields, [Value::Object(object)]) => Value::Object(
            fields
                .iter()
                .map(|f| {
                    (
                        (*f).to_owned(),
                        object.get(*f).cloned().unwrap_or(Value::Null),
                    )
                })
                .collect::<Map<_, _>>(),
        ),
        // Positional arguments (a job pushed from Ruby): the fields cannot be picked out.
        (_, args) => Value::Array(args.to_vec()),
    };
    let digest = Sha256::digest(selected.to_string().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if queue {
        format!("{kind}:{}:{}:{hex}", envelope.class, envelope.queue)
    } else {
        format!("{kind}:{}:{hex}", envelope.class)
    }
}

/// A digest of `parts`, as lowercase hex.
pub(crate) fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(args: Vec<Value>) -> Envelope {
        Envelope::new("Refresh", "default", args)
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
