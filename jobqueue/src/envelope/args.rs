//! A job's arguments: written from its value as Sidekiq's `args`, read back into its type,
//! and shown with the values of its `sensitive` fields hidden.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{truncate, DecodeError, Envelope};

/// Writes a job's value as Sidekiq `args`: a value that serializes to a JSON array (a tuple
/// struct) is the argument list itself; anything else is the single argument.
pub fn encode_args<T: Serialize>(job: &T) -> Result<Vec<Value>, serde_json::Error> {
    Ok(match serde_json::to_value(job)? {
        Value::Array(args) => args,
        other => vec![other],
    })
}

/// What stands for a sensitive value in logs and error messages.
pub const REDACTED: &str = "[redacted]";

/// Reads Sidekiq `args` into a job's type: the single argument when there is one (a struct
/// written by this library), else the list positionally (a job pushed from Ruby as
/// `perform_async(a, b)` fills the struct's fields in order). The values of `sensitive`
/// fields never appear in the error.
pub fn decode_args<T: DeserializeOwned>(
    class: &str,
    args: &[Value],
    sensitive: &[&str],
) -> Result<T, DecodeError> {
    let as_list = || serde_json::from_value(Value::Array(args.to_vec()));
    let result = match args {
        [single] => serde_json::from_value(single.clone()).or_else(|single_err| {
            // An object is always meant as the struct itself; report its own error.
            if single.is_object() {
                Err(single_err)
            } else {
                as_list()
            }
        }),
        _ => as_list(),
    };
    result.map_err(|source| {
        let (shown, secrets) = redact(args, sensitive);
        let mut reason = source.to_string();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            reason = reason.replace(secret.as_str(), REDACTED);
        }
        DecodeError::Args {
            class: class.to_owned(),
            args: truncate(&Value::Array(shown).to_string(), 200).to_owned(),
            reason,
        }
    })
}

impl Envelope {
    /// The payload as JSON with the values of `sensitive` fields hidden, for showing it to
    /// operators (Sidekiq's Busy page).
    pub(crate) fn to_json_redacted(&self, sensitive: &[&str]) -> String {
        if sensitive.is_empty() {
            return self.to_json();
        }
        self.redacted(sensitive).to_json()
    }

    /// This job with the values of its `sensitive` argument fields replaced by
    /// [`REDACTED`], for showing it (positional arguments are all hidden when any field is
    /// sensitive, since they cannot be told apart).
    pub fn redacted(&self, sensitive: &[&str]) -> Envelope {
        let mut shown = self.clone();
        shown.args = redact(&self.args, sensitive).0;
        shown
    }
}

/// The values of `sensitive` fields among `args`, as text: what must never appear in a
/// message shown to anyone (every positional argument, when there are sensitive fields).
pub(crate) fn secrets(args: &[Value], sensitive: &[&str]) -> Vec<String> {
    redact(args, sensitive).1
}

/// `text` (JSON, or something like it that does not parse) with the value that follows each
/// `"field":` of `fields` replaced by `"[redacted]"`: a string, object or array whole, any
/// other value up to the next `,`, `}` or `]`. For payloads that cannot be read as jobs.
pub(crate) fn redact_text(text: &str, fields: &[&str]) -> String {
    let mut out = text.to_owned();
    for field in fields {
        let mark = format!("\"{field}\"");
        let mut from = 0;
        while let Some(found) = out[from..].find(&mark) {
            let after_name = from + found + mark.len();
            let rest = &out[after_name..];
            let colon = rest.len() - rest.trim_start().len();
            if !rest[colon..].starts_with(':') {
                from = after_name;
                continue;
            }
            let value_start = after_name + colon + 1;
            let value = &out[value_start..];
            let lead = value.len() - value.trim_start().len();
            let start = value_start + lead;
            let end = value_end(&out[start..]).map_or(out.len(), |n| start + n);
            let replacement = format!("\"{REDACTED}\"");
            out.replace_range(start..end, &replacement);
            from = start + replacement.len();
        }
    }
    out
}

/// Where a JSON value at the start of `text` ends: after a string's closing quote or an
/// object's or array's closing bracket (strings inside skipped), or before the `,`, `}` or
/// `]` that ends any other value; `None` when it runs to the end.
fn value_end(text: &str) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, b) in text.bytes().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    in_string = false;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b',' | b'}' | b']' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// The arguments with the values of `sensitive` fields replaced, and those values as text.
/// Positional arguments cannot be told apart, so with sensitive fields they are all hidden.
fn redact(args: &[Value], sensitive: &[&str]) -> (Vec<Value>, Vec<String>) {
    if sensitive.is_empty() {
        return (args.to_vec(), Vec::new());
    }
    let as_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match args {
        [Value::Object(fields)] => {
            let mut shown = fields.clone();
            let mut secrets = Vec::new();
            for name in sensitive {
                if let Some(value) = shown.get_mut(*name) {
                    secrets.push(as_text(value));
                    *value = Value::String(REDACTED.to_owned());
                }
            }
            (vec![Value::Object(shown)], secrets)
        }
        _ => (
            args.iter()
                .map(|_| Value::String(REDACTED.to_owned()))
                .collect(),
            args.iter().map(as_text).collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn args_round_trip_for_structs_and_positional_ruby_args() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Named {
            id: u64,
            name: String,
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Tuple(u64, String);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Unit;

        let named = Named {
            id: 7,
            name: "n".into(),
        };
        let args = encode_args(&named).unwrap();
        assert_eq!(decode_args::<Named>("Named", &args, &[]).unwrap(), named);
        let ruby = vec![Value::from(7), Value::from("n")];
        assert_eq!(decode_args::<Named>("Named", &ruby, &[]).unwrap(), named);

        let tuple = Tuple(1, "a".into());
        let args = encode_args(&tuple).unwrap();
        assert_eq!(args.len(), 2);
        assert_eq!(decode_args::<Tuple>("Tuple", &args, &[]).unwrap(), tuple);

        let args = encode_args(&Unit).unwrap();
        assert_eq!(decode_args::<Unit>("Unit", &args, &[]).unwrap(), Unit);

        let err =
            decode_args::<Named>("Named", &[serde_json::json!({"id": "x"})], &[]).unwrap_err();
        assert!(err.to_string().contains("do not fit Named"), "{err}");
    }

    #[test]
    fn sensitive_values_are_hidden_in_text_that_does_not_parse() {
        let text =
            r#"{"class":"Login","args":[{"user":"ann","password":"hun\"ter2","pin": 4242}],"#;
        let shown = redact_text(text, &["password", "pin"]);
        assert!(!shown.contains("hun") && !shown.contains("4242"), "{shown}");
        assert!(shown.contains("ann"), "{shown}");
        assert_eq!(
            redact_text(r#"{"password":"x"#, &["password"]),
            r#"{"password":"[redacted]""#
        );
        assert_eq!(redact_text("password: x", &["password"]), "password: x");
        // An object or array as the value, with commas and brackets in its strings.
        let nested = r#"{"card":{"number":"4111","cvc":"1,2]3"},"n":1,"pin":[7,[8]],"m":2}"#;
        assert_eq!(
            redact_text(nested, &["card", "pin"]),
            r#"{"card":"[redacted]","n":1,"pin":"[redacted]","m":2}"#
        );
    }

    #[test]
    fn sensitive_values_never_reach_the_error() {
        #[derive(Serialize, Deserialize, Debug)]
        struct Login {
            user: String,
            password: String,
            pin: u32,
        }
        // The wrong type on the sensitive field itself: serde quotes the value.
        let args = [serde_json::json!({"user": "ann", "password": 424242, "pin": 1})];
        let err = decode_args::<Login>("Login", &args, &["password"])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("424242"), "{err}");
        assert!(err.contains(REDACTED) && err.contains("ann"), "{err}");
        // The wrong type elsewhere: the preview still hides the password.
        let args = [serde_json::json!({"user": "ann", "password": "hunter2", "pin": "x"})];
        let err = decode_args::<Login>("Login", &args, &["password"])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        // Positional arguments are hidden whole.
        let args = [Value::from("ann"), Value::from("hunter2")];
        let err = decode_args::<Login>("Login", &args, &["password"])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2") && !err.contains("ann"), "{err}");
    }

    mod fuzz {
        use super::*;
        use crate::envelope::tests::fuzz::json;
        use proptest::prelude::*;

        #[derive(Serialize, Deserialize, Debug)]
        struct Typed {
            id: u64,
            name: String,
            tags: Vec<String>,
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn args_never_panic_and_errors_name_the_class(args in prop::collection::vec(json(), 0..4)) {
                if let Err(e) = decode_args::<Typed>("Typed", &args, &[]) {
                    prop_assert!(e.to_string().contains("do not fit Typed"));
                }
            }

            #[test]
            fn a_sensitive_value_never_appears_in_the_error(
                secret in "[a-z0-9]{6,20}",
                id in json(),
                tags in json(),
            ) {
                let secret = format!("S3CR3T-{secret}");
                let args = [serde_json::json!({"id": id, "name": secret, "tags": tags})];
                if let Err(e) = decode_args::<Typed>("Typed", &args, &["name"]) {
                    prop_assert!(!e.to_string().contains(&secret), "{}", e);
                }
            }
        }
    }
}
