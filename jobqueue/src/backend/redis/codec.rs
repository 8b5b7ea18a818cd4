//! Payload bytes and the strings the rest of the library handles. Redis stores bytes; a
//! payload that is not UTF-8 text (written by some other producer) must still be removable
//! from its lists by value and end in the dead set, so it is carried as a marked hex string.

use crate::envelope::hex;

/// Marks a payload whose bytes are not UTF-8 text (or that start with this marker); the
/// rest is the bytes in hex. Such a payload fails to parse and is dead-lettered like any bad
/// payload, while the broker can still remove it from its lists by value.
const RAW_MARKER: &str = "\u{0}jobqueue-raw-bytes:";

/// Whether `payload` stands for bytes that are not UTF-8 text.
pub(crate) fn is_raw(payload: &str) -> bool {
    payload.starts_with(RAW_MARKER)
}

/// The text of a payload that stands for bytes that are not UTF-8, with those bytes
/// replaced (to be shown, never acted on); `None` for any other payload.
pub(crate) fn raw_text(payload: &str) -> Option<String> {
    is_raw(payload).then(|| String::from_utf8_lossy(&payload_bytes(payload)).into_owned())
}

/// Payload bytes from Redis as a string, losslessly (see [`RAW_MARKER`]).
pub(super) fn payload_from_bytes(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) if !text.starts_with(RAW_MARKER) => text,
        Ok(text) => raw_payload(text.as_bytes()),
        Err(e) => raw_payload(e.as_bytes()),
    }
}

fn raw_payload(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(RAW_MARKER.len() + bytes.len() * 2);
    text.push_str(RAW_MARKER);
    text.push_str(&hex(bytes));
    text
}

/// The exact bytes stored in Redis for a payload string from [`payload_from_bytes`].
pub(super) fn payload_bytes(payload: &str) -> std::borrow::Cow<'_, [u8]> {
    match payload.strip_prefix(RAW_MARKER) {
        Some(hex) => (0..hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Vec<u8>>()
            .into(),
        None => payload.as_bytes().into(),
    }
}

/// Text another writer stored (a queue's name, a process's field), with bytes that are not
/// UTF-8 replaced: shown, never acted on by value.
pub(super) fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A number stored as text, when it reads as one (Sidekiq's `to_i` reads the rest as 0).
pub(super) fn number<T: std::str::FromStr>(text: Option<String>) -> Option<T> {
    text?.trim().parse().ok()
}

pub(super) fn payloads_from_bytes(list: Vec<Vec<u8>>) -> Vec<String> {
    list.into_iter().map(payload_from_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_bytes_round_trip_losslessly() {
        let cases: [&[u8]; 4] = [
            b"{\"class\":\"A\"}",
            b"\xff\xfe not utf-8",
            RAW_MARKER.as_bytes(),
            b"",
        ];
        for bytes in cases {
            let text = payload_from_bytes(bytes.to_vec());
            assert_eq!(payload_bytes(&text).as_ref(), bytes);
        }
        assert!(payload_from_bytes(b"\xff".to_vec()).starts_with(RAW_MARKER));
    }
}
