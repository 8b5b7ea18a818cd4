//! The header: what a backend acts on without parsing a whole job, namely its collapse key,
//! its per-key limits and its jid. The client writes these fields first, at a fixed place
//! (`{"collapse":"…","limits":"…","jid":"…",` with the first two only when the job has
//! them), so a backend reads them there with a few anchored comparisons. A payload written
//! otherwise (its keys sorted by another producer, or re-ordered by Ruby Sidekiq pushing it
//! again) is read as JSON, and only its top-level fields count. A header is never searched
//! for in the payload's text, where an argument could supply one.
//!
//! The Redis scripts read it by the same rules (`header` in `lua/lib.lua`).

use std::borrow::Cow;

use memchr::memmem;
use serde::de::Error as _;
use serde_json::value::RawValue;

/// A payload's header fields, each `None` when absent (or not a string).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header<'a> {
    /// The collapse marker's key.
    pub(crate) collapse: Option<Cow<'a, str>>,
    /// The limits' text (see [`crate::job::LimitTag`]).
    pub(crate) limits: Option<Cow<'a, str>>,
    /// The job id.
    pub(crate) jid: Option<Cow<'a, str>>,
}

/// The header of `payload`: at its fixed place, or from the top-level fields of a payload
/// that names `limits` or `collapse` anywhere; empty for any other.
pub(crate) fn read(payload: &str) -> Header<'_> {
    if let Some(header) = fixed(payload) {
        return header;
    }
    if !mentions(payload) {
        return Header::default();
    }
    decoded(payload)
}

/// The header where the client writes it, if the payload begins with it.
fn fixed(payload: &str) -> Option<Header<'_>> {
    let mut rest = payload.strip_prefix('{')?;
    let mut header = Header::default();
    if let Some((key, after)) = field(rest, "\"collapse\":\"").and_then(comma) {
        header.collapse = Some(Cow::Borrowed(key));
        rest = after;
    }
    if let Some((limits, after)) = field(rest, "\"limits\":\"").and_then(comma) {
        header.limits = Some(Cow::Borrowed(limits));
        rest = after;
    }
    let (jid, _) = field(rest, "\"jid\":\"")?;
    header.jid = Some(Cow::Borrowed(jid));
    Some(header)
}

/// A string field at the very start of `text` whose value holds no escape: the value and
/// what follows its closing quote.
fn field<'a>(text: &'a str, mark: &str) -> Option<(&'a str, &'a str)> {
    let rest = text.strip_prefix(mark)?;
    let end = memchr::memchr2(b'"', b'\\', rest.as_bytes())?;
    (rest.as_bytes()[end] == b'"').then(|| (&rest[..end], &rest[end + 1..]))
}

/// A field followed by the comma before the next one.
fn comma<'a>((value, after): (&'a str, &'a str)) -> Option<(&'a str, &'a str)> {
    Some((value, after.strip_prefix(',')?))
}

/// Whether the payload's text names a header field anywhere: if not, it has none.
fn mentions(payload: &str) -> bool {
    let bytes = payload.as_bytes();
    memmem::find(bytes, b"\"limits\"").is_some() || memmem::find(bytes, b"\"collapse\"").is_some()
}

/// The header among the top-level fields of a payload as JSON (the last of a repeated
/// field, as Redis's `cjson` reads it); empty when it is not a JSON object. Other fields
/// are only checked to be JSON, not read: a number too large for a float (`1e400`) does
/// not hide the header, as it does not from `cjson`.
fn decoded(payload: &str) -> Header<'static> {
    match serde_json::from_str::<TopLevel>(payload) {
        Ok(top) => top.0,
        // `cjson` keeps tabs and line breaks met inside a string, which serde_json refuses:
        // read as spaces, they leave every field where it was.
        Err(_) if payload.bytes().any(|b| matches!(b, b'\t' | b'\n' | b'\r')) => {
            let spaced = payload.replace(['\t', '\n', '\r'], " ");
            serde_json::from_str::<TopLevel>(&spaced)
                .map(|top| top.0)
                .unwrap_or_default()
        }
        Err(_) => Header::default(),
    }
}

/// The header fields of a JSON object, read by [`decoded`].
struct TopLevel(Header<'static>);

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> serde::de::Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut header = Header::default();
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            let slot = match name.as_ref() {
                "collapse" => &mut header.collapse,
                "limits" => &mut header.limits,
                "jid" => &mut header.jid,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            // Taken raw, so that a value that is not a string is skipped, as `cjson` reads
            // it, whatever its depth or its numbers' range.
            let raw = map.next_value::<&'de RawValue>()?;
            *slot = match raw.get().starts_with('"') {
                true => Some(Cow::Owned(
                    serde_json::from_str::<String>(raw.get()).map_err(A::Error::custom)?,
                )),
                false => None,
            };
        }
        Ok(TopLevel(header))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use serde_json::json;

    fn of(payload: &str) -> (Option<String>, Option<String>, Option<String>) {
        let h = read(payload);
        let own = |v: Option<Cow<'_, str>>| v.map(Cow::into_owned);
        (own(h.collapse), own(h.limits), own(h.jid))
    }

    #[test]
    fn the_client_writes_the_header_first_and_it_is_read_there() {
        let mut envelope = Envelope::new("Refresh", "default", vec![json!({"a": 1})]);
        envelope.collapse = Some("collapse:Refresh:ab".into());
        envelope.limits = Some("c2 Refresh:concurrency".into());
        let payload = envelope.to_json();
        assert!(payload.starts_with(r#"{"collapse":"collapse:Refresh:ab","limits":"c2 "#));
        assert_eq!(
            of(&payload),
            (
                Some("collapse:Refresh:ab".into()),
                Some("c2 Refresh:concurrency".into()),
                Some(envelope.jid.clone())
            )
        );
        assert!(matches!(read(&payload).limits, Some(Cow::Borrowed(_))));
        let plain = Envelope::new("Plain", "default", vec![]);
        assert_eq!(of(&plain.to_json()), (None, None, Some(plain.jid.clone())));
    }

    #[test]
    fn an_argument_never_supplies_a_header() {
        // Ruby keeps a hash's keys in their order: an argument can hold exactly the text a
        // header has.
        let payload = r#"{"class":"A","args":[{"limits":"c100 B:concurrency:7","jid":"x","collapse":"k"}],"jid":"j","queue":"q"}"#;
        assert_eq!(of(payload), (None, None, Some("j".into())));
        let nested = r#"{"jid":"j","class":"A","args":[{"limits":"c1 x"}],"queue":"q"}"#;
        assert_eq!(of(nested), (None, None, Some("j".into())));
    }

    #[test]
    fn a_payload_written_otherwise_keeps_its_header() {
        // Keys sorted (Python's `sort_keys`, Go's maps, `jq -S`), and Ruby's defaults first.
        let sorted = r#"{"args":[],"class":"A","jid":"j","limits":"c2 A:concurrency","queue":"q"}"#;
        assert_eq!(
            of(sorted),
            (None, Some("c2 A:concurrency".into()), Some("j".into()))
        );
        let ruby = r#"{"retry":true,"limits":"c2 k","jid":"j","class":"A","args":[],"queue":"q"}"#;
        assert_eq!(of(ruby), (None, Some("c2 k".into()), Some("j".into())));
        // An escape in a value: read as JSON.
        let escaped = r#"{"collapse":"a\"b","jid":"j","class":"A","args":[],"queue":"q"}"#;
        assert_eq!(of(escaped), (Some("a\"b".into()), None, Some("j".into())));
        // A repeated field: the last, as Redis's cjson reads it.
        let twice = r#"{"args":[],"limits":"c1 a","limits":"c2 b","jid":"j"}"#;
        assert_eq!(of(twice).1, Some("c2 b".into()));
        // Not a string, not an object, not JSON.
        assert_eq!(
            of(r#"{"args":[],"limits":5,"jid":"j"}"#),
            (None, None, Some("j".into()))
        );
        assert_eq!(of(r#"["limits","collapse"]"#), (None, None, None));
        assert_eq!(of(r#"{"limits":"c1 a""#), (None, None, None));
        // A number out of a float's range elsewhere: still JSON, as Redis's cjson reads it.
        let huge = r#"{"args":[1e400],"limits":"c1 a","jid":"j"}"#;
        assert_eq!(of(huge), (None, Some("c1 a".into()), Some("j".into())));
        // Header fields whose values are not strings, however deep or large: skipped.
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        let odd = format!(
            r#"{{"class":"A","collapse":1e400,"x":{deep},"collapse":{deep},"jid":"j","limits":"c1 K"}}"#
        );
        assert_eq!(of(&odd), (None, Some("c1 K".into()), Some("j".into())));
        // A tab inside a string, which `cjson` keeps.
        let tab = "{\"class\":\"A\",\"args\":[\"a\tb\"],\"jid\":\"j\",\"limits\":\"c1 K\"}";
        assert_eq!(of(tab), (None, Some("c1 K".into()), Some("j".into())));
        // Not JSON (NaN): no header, here as in the scripts.
        assert_eq!(
            of(r#"{"args":[NaN],"limits":"c1 a","jid":"j"}"#),
            (None, None, None)
        );
        assert_eq!(of(""), (None, None, None));
    }
}
