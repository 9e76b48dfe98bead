//! How messages look on the shared channel (a Redis channel or a PostgreSQL NOTIFY channel).
//!
//! A node publishes an *envelope*, a JSON object that keeps the event name and says which
//! process sent it:
//!
//! ```json
//! {"switchboard":{"event":"new_msg","origin":"3f9a0c12d4e5b6a7"},"payload":{"body":"hi"}}
//! ```
//!
//! Any other producer may publish the same shape to choose the event (`origin` is optional
//! and only used to drop a node's own echo). Anything else is a *raw* message: valid JSON is
//! delivered as the payload with the event [`DEFAULT_EVENT`](crate::http::DEFAULT_EVENT);
//! text that is not JSON is delivered as a JSON string, so nothing is dropped.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_core::Payload;

use crate::http::DEFAULT_EVENT;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta<'a> {
    event: &'a str,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow)]
    switchboard: Meta<'a>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// A message read from the shared channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sending node's origin id, when it was an envelope that carried one.
    pub origin: Option<String>,
    /// The event to deliver.
    pub event: String,
    /// The payload to deliver.
    pub payload: Payload,
}

/// Encodes an envelope for `payload` published as `event` by the node `origin`.
#[must_use]
pub fn encode(origin: &str, event: &str, payload: &Payload) -> String {
    let mut out = String::with_capacity(64 + event.len() + payload.get().len());
    out.push_str(r#"{"switchboard":"#);
    let meta = Meta {
        event,
        origin: Some(origin),
    };
    // Serialising two strings into a String cannot fail.
    out.push_str(&serde_json::to_string(&meta).unwrap_or_default());
    out.push_str(r#","payload":"#);
    out.push_str(payload.get());
    out.push('}');
    out
}

/// The length in bytes of [`encode`]'s output for an origin of `origin_len` bytes, without
/// building it (an origin is ASCII hex, so it is never escaped).
#[must_use]
pub fn encoded_len(origin_len: usize, event: &str, payload: &Payload) -> usize {
    // {"switchboard":{"event":E,"origin":"O"},"payload":P}
    const FIXED: usize = r#"{"switchboard":{"event":,"origin":""},"payload":}"#.len();
    FIXED + json_string_len(event) + origin_len + payload.get().len()
}

/// The length of `text` as a JSON string, quotes included, as `serde_json` writes it.
fn json_string_len(text: &str) -> usize {
    2 + text
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

/// Decodes whatever arrived on the channel: an envelope, raw JSON, or raw text.
#[must_use]
pub fn decode(bytes: &[u8]) -> Received {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(&text) {
        if !envelope.switchboard.event.is_empty() {
            return Received {
                origin: envelope.switchboard.origin.map(str::to_owned),
                event: envelope.switchboard.event.to_owned(),
                payload: Payload::from_raw_value(envelope.payload.to_owned()),
            };
        }
    }
    let payload = Payload::from_json(&text).unwrap_or_else(|_| {
        // Not JSON: deliver the text as a JSON string.
        Payload::from_value(text.as_ref()).unwrap_or_else(|_| Payload::empty_object())
    });
    Received {
        origin: None,
        event: DEFAULT_EVENT.to_owned(),
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_with_event_and_origin() {
        let payload = Payload::from_json(r#"{"body":"hi \"there\""}"#).unwrap();
        let text = encode("abc", "new_msg", &payload);
        assert_eq!(
            text,
            r#"{"switchboard":{"event":"new_msg","origin":"abc"},"payload":{"body":"hi \"there\""}}"#
        );
        let received = decode(text.as_bytes());
        assert_eq!(received.origin.as_deref(), Some("abc"));
        assert_eq!(received.event, "new_msg");
        assert_eq!(received.payload, payload);
    }

    #[test]
    fn encoded_len_is_the_length_of_the_encoding() {
        let payloads = [r#"{"body":"hi"}"#, "[]", r#""\u0000é""#, "1"];
        let events = [
            "m",
            "new \"msg\"",
            "tab\tnl\nback\\slash",
            "\u{1}\u{1f}\u{8}\u{c}",
            "é€😀",
        ];
        for payload in payloads {
            let payload = Payload::from_json(payload).unwrap();
            for event in events {
                for origin in ["", "3f9a0c12d4e5b6a7"] {
                    assert_eq!(
                        encoded_len(origin.len(), event, &payload),
                        encode(origin, event, &payload).len(),
                        "{event:?} {payload:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn producers_may_set_the_event_without_origin() {
        let received = decode(br#"{"payload":[1,2],"switchboard":{"event":"task_done"}}"#);
        assert_eq!(received.origin, None);
        assert_eq!(received.event, "task_done");
        assert_eq!(received.payload.get(), "[1,2]");
    }

    #[test]
    fn raw_json_arrives_as_the_default_event() {
        let received = decode(br#"{"activity_type":"TASK_COMPLETED"}"#);
        assert_eq!(received.event, "message");
        assert_eq!(
            received.payload.get(),
            r#"{"activity_type":"TASK_COMPLETED"}"#
        );
        // An object that merely mentions the key is raw too.
        let received = decode(br#"{"switchboard":1,"payload":2}"#);
        assert_eq!(received.event, "message");
    }

    #[test]
    fn text_that_is_not_json_arrives_as_a_string() {
        let received = decode(b"hello \"world\"");
        assert_eq!(received.event, "message");
        assert_eq!(received.payload.get(), r#""hello \"world\"""#);
        let received = decode(&[0xff, b'a']);
        assert_eq!(received.payload.get(), "\"\u{fffd}a\"");
    }
}
