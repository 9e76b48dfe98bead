//! How messages look on the shared channel (a Redis channel or a PostgreSQL NOTIFY channel).
//!
//! With `--envelope switchboard` (the default) a node publishes an *envelope*, a JSON object
//! that keeps the event name and says which process sent it:
//!
//! ```json
//! {"switchboard":{"event":"new_msg","origin":"3f9a0c12d4e5b6a7"},"payload":{"body":"hi"}}
//! ```
//!
//! Any other producer may publish the same shape to choose the event (`origin` is optional
//! and only used to drop a node's own echo). Anything else is a *raw* message: valid JSON is
//! delivered as the payload with the event [`DEFAULT_EVENT`]; text that is not JSON is
//! delivered as a JSON string, so nothing is dropped.
//!
//! With `--envelope pyview` the node speaks what PyView's own backends send and read (seed
//! 004): on Redis `{"topic":T,"message":P}` (plus `event` and `origin` keys of ours, which
//! PyView ignores), on PostgreSQL the message itself. A PyView message arrives as event
//! [`DEFAULT_EVENT`]. On PostgreSQL the node recognises its own echo by the notifying
//! backend's process id instead of an origin key.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_core::history::Position;
use switchboard_core::{Payload, Topic};

use crate::config::EnvelopeFormat;
pub use crate::messages::DEFAULT_EVENT;
use crate::messages::RESERVED_PREFIX;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta<'a> {
    event: &'a str,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<&'a str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    position: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow)]
    switchboard: Meta<'a>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Debug, Deserialize)]
struct PyviewMessage<'a> {
    #[serde(borrow)]
    topic: &'a RawValue,
    #[serde(borrow)]
    message: &'a RawValue,
    #[serde(default, borrow)]
    event: Option<&'a str>,
    #[serde(default, borrow)]
    origin: Option<&'a str>,
    #[serde(default, borrow)]
    position: Option<&'a str>,
}

/// What became of a message read from the shared channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Deliver it to the local subscribers.
    Deliver(Decoded),
    /// This node's own message, back from the backend: already delivered here.
    Echo,
    /// Refused: it names an event only the server may send (`phx_reply`, `phx_close`, ...),
    /// which would make phoenix.js clients act on a reply or drop their channel.
    Refused {
        /// The event it named.
        event: String,
    },
}

/// A message read from the shared channel, for local delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The event to deliver.
    pub event: String,
    /// The payload to deliver.
    pub payload: Payload,
    /// Its place in the topic's stream, when it was published with history.
    pub position: Option<Position>,
}

/// The wire format of one node's messages on its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// The switchboard envelope, carrying this node's origin id.
    Switchboard {
        /// This process's origin id.
        origin: String,
    },
    /// PyView's Redis format, with our origin id as an extra key.
    PyviewKeyed {
        /// This process's origin id.
        origin: String,
    },
    /// PyView's PostgreSQL format: the message alone (echoes are recognised by the sender's
    /// process id).
    PyviewBare,
}

impl Format {
    /// The format `--envelope` selects on `backend` (`redis` or `postgres`).
    #[must_use]
    pub fn new(envelope: EnvelopeFormat, backend: &str, origin: String) -> Self {
        match (envelope, backend) {
            (EnvelopeFormat::Pyview, "postgres") => Self::PyviewBare,
            (EnvelopeFormat::Pyview, _) => Self::PyviewKeyed { origin },
            (EnvelopeFormat::Switchboard, _) => Self::Switchboard { origin },
        }
    }

    /// The text sent for `payload` published as `event` on `topic`.
    #[must_use]
    pub fn encode(&self, topic: &Topic, event: &str, payload: &Payload) -> String {
        match self {
            Self::Switchboard { origin } => {
                let mut out = String::with_capacity(64 + event.len() + payload.get().len());
                out.push_str(r#"{"switchboard":"#);
                let meta = Meta {
                    event,
                    origin: Some(origin),
                    position: None,
                };
                // Serialising two strings into a String cannot fail.
                out.push_str(&serde_json::to_string(&meta).unwrap_or_default());
                out.push_str(r#","payload":"#);
                out.push_str(payload.get());
                out.push('}');
                out
            }
            Self::PyviewKeyed { origin } => {
                let mut out =
                    String::with_capacity(64 + topic.as_str().len() + payload.get().len());
                out.push_str(r#"{"topic":"#);
                push_json_string(&mut out, topic.as_str());
                out.push_str(r#","message":"#);
                out.push_str(payload.get());
                out.push_str(r#","event":"#);
                push_json_string(&mut out, event);
                out.push_str(r#","origin":"#);
                push_json_string(&mut out, origin);
                out.push('}');
                out
            }
            Self::PyviewBare => payload.get().to_owned(),
        }
    }

    /// The length of [`encode`](Self::encode)'s output, without building it.
    #[must_use]
    pub fn encoded_len(&self, topic: &Topic, event: &str, payload: &Payload) -> usize {
        match self {
            Self::Switchboard { origin } => {
                // {"switchboard":{"event":E,"origin":"O"},"payload":P}
                const FIXED: usize = r#"{"switchboard":{"event":,"origin":},"payload":}"#.len();
                FIXED + json_string_len(event) + json_string_len(origin) + payload.get().len()
            }
            Self::PyviewKeyed { origin } => {
                const FIXED: usize = r#"{"topic":,"message":,"event":,"origin":}"#.len();
                FIXED
                    + json_string_len(topic.as_str())
                    + payload.get().len()
                    + json_string_len(event)
                    + json_string_len(origin)
            }
            Self::PyviewBare => payload.get().len(),
        }
    }

    /// Reads what arrived (`from_self`: the backend says this node's connection sent it).
    #[must_use]
    pub fn read(&self, bytes: &[u8], from_self: bool) -> Read {
        match self.decode(bytes, from_self) {
            None => Read::Echo,
            Some(decoded) if decoded.event.starts_with(RESERVED_PREFIX) => Read::Refused {
                event: decoded.event,
            },
            Some(decoded) => Read::Deliver(decoded),
        }
    }

    /// Decodes what arrived; `None` for this node's own echo. A publication with history
    /// (one with a position) is never an echo: every node delivers it from the backend, its
    /// publisher's included, even when this node's own connection sent it (on PostgreSQL,
    /// `switchboard_publish` notifies from the publishing connection).
    fn decode(&self, bytes: &[u8], from_self: bool) -> Option<Decoded> {
        let text = String::from_utf8_lossy(bytes);
        match self {
            Self::Switchboard { origin } => {
                if let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(&text) {
                    if !envelope.switchboard.event.is_empty() {
                        let position = parse_position(envelope.switchboard.position);
                        let ours =
                            from_self || envelope.switchboard.origin == Some(origin.as_str());
                        if position.is_none() && ours {
                            return None;
                        }
                        return Some(Decoded {
                            event: envelope.switchboard.event.to_owned(),
                            payload: Payload::from_raw_value(envelope.payload.to_owned()),
                            position,
                        });
                    }
                }
            }
            Self::PyviewKeyed { origin } => {
                if let Ok(message) = serde_json::from_str::<PyviewMessage<'_>>(&text) {
                    if message.topic.get().starts_with('"') {
                        let position = parse_position(message.position);
                        let ours = from_self || message.origin == Some(origin.as_str());
                        if position.is_none() && ours {
                            return None;
                        }
                        let event = message
                            .event
                            .filter(|event| !event.is_empty())
                            .unwrap_or(DEFAULT_EVENT);
                        return Some(Decoded {
                            event: event.to_owned(),
                            payload: Payload::from_raw_value(message.message.to_owned()),
                            position,
                        });
                    }
                }
            }
            Self::PyviewBare => {}
        }
        (!from_self).then(|| raw(&text))
    }
}

/// A message that is not in the node's format: JSON as the payload, anything else as a JSON
/// string, with the default event.
fn raw(text: &str) -> Decoded {
    let payload = Payload::from_json(text)
        .unwrap_or_else(|_| Payload::from_value(text).unwrap_or_else(|_| Payload::empty_object()));
    Decoded {
        event: DEFAULT_EVENT.to_owned(),
        payload,
        position: None,
    }
}

/// A position as an envelope carries it; one that does not parse is ignored (the message is
/// delivered without it).
fn parse_position(text: Option<&str>) -> Option<Position> {
    text.and_then(|text| text.parse().ok())
}

fn push_json_string(out: &mut String, text: &str) {
    // Serialising a string into a String cannot fail.
    out.push_str(&serde_json::to_string(text).unwrap_or_default());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn switchboard(origin: &str) -> Format {
        Format::Switchboard {
            origin: origin.into(),
        }
    }

    #[test]
    fn server_only_events_from_the_backend_are_refused() {
        let format = switchboard("me");
        for event in ["phx_reply", "phx_close", "phx_error", "phx_join"] {
            let text = format!(r#"{{"switchboard":{{"event":"{event}"}},"payload":{{}}}}"#);
            assert_eq!(
                format.read(text.as_bytes(), false),
                Read::Refused {
                    event: event.into()
                }
            );
        }
        let pyview = Format::new(EnvelopeFormat::Pyview, "redis", "me".into());
        let text = r#"{"topic":"t","message":{},"event":"phx_close"}"#;
        assert!(matches!(
            pyview.read(text.as_bytes(), false),
            Read::Refused { .. }
        ));
        assert!(matches!(format.read(b"{}", false), Read::Deliver(_)));
        assert_eq!(format.read(b"{}", true), Read::Echo);
    }

    fn topic() -> Topic {
        Topic::new("room:1").unwrap()
    }

    #[test]
    fn envelopes_round_trip_with_event_and_drop_their_own_echo() {
        let payload = Payload::from_json(r#"{"body":"hi \"there\""}"#).unwrap();
        let text = switchboard("abc").encode(&topic(), "new_msg", &payload);
        assert_eq!(
            text,
            r#"{"switchboard":{"event":"new_msg","origin":"abc"},"payload":{"body":"hi \"there\""}}"#
        );
        assert_eq!(
            switchboard("abc").decode(text.as_bytes(), false),
            None,
            "own echo"
        );
        let received = switchboard("xyz").decode(text.as_bytes(), false).unwrap();
        assert_eq!(received.event, "new_msg");
        assert_eq!(received.payload, payload);
    }

    #[test]
    fn a_publication_with_history_is_delivered_even_when_this_node_sent_it() {
        // PostgreSQL's `switchboard_publish` notifies from this node's publishing connection,
        // so the backend marks the notification as this node's own.
        let format = switchboard("abc");
        let text = r#"{"switchboard":{"event":"m","position":"7:e1"},"payload":{"n":1}}"#;
        let decoded = format.decode(text.as_bytes(), true).unwrap();
        assert_eq!(decoded.position, Some("7:e1".parse().unwrap()));
        assert_eq!(decoded.payload.get(), r#"{"n":1}"#);
        let ours = r#"{"switchboard":{"event":"m","origin":"abc","position":"7:e1"},"payload":1}"#;
        assert!(format.decode(ours.as_bytes(), false).is_some());
        // Without a position it is an echo, whichever way it is recognised.
        let live = r#"{"switchboard":{"event":"m"},"payload":{"n":1}}"#;
        assert_eq!(format.decode(live.as_bytes(), true), None);
        assert_eq!(format.decode(b"{}", true), None, "a raw message");
        let keyed = Format::new(EnvelopeFormat::Pyview, "redis", "me".into());
        let text = r#"{"topic":"t","message":1,"event":"m","position":"3:e1"}"#;
        assert!(keyed.decode(text.as_bytes(), true).is_some());
        let text = r#"{"topic":"t","message":1,"event":"m"}"#;
        assert_eq!(keyed.decode(text.as_bytes(), true), None);
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
        let topics = ["room:1", "a \"quoted\" topic", "é€"];
        let formats = [
            switchboard("3f9a0c12d4e5b6a7"),
            switchboard(""),
            Format::PyviewKeyed {
                origin: "3f9a".into(),
            },
            Format::PyviewBare,
        ];
        for format in &formats {
            for payload in payloads {
                let payload = Payload::from_json(payload).unwrap();
                for event in events {
                    for topic in topics {
                        let topic = Topic::new(topic).unwrap();
                        assert_eq!(
                            format.encoded_len(&topic, event, &payload),
                            format.encode(&topic, event, &payload).len(),
                            "{format:?} {event:?} {payload:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn producers_may_set_the_event_without_origin() {
        let received = switchboard("me")
            .decode(
                br#"{"payload":[1,2],"switchboard":{"event":"task_done"}}"#,
                false,
            )
            .unwrap();
        assert_eq!(received.event, "task_done");
        assert_eq!(received.payload.get(), "[1,2]");
    }

    #[test]
    fn raw_json_and_text_arrive_as_the_default_event() {
        let format = switchboard("me");
        let received = format
            .decode(br#"{"activity_type":"TASK_COMPLETED"}"#, false)
            .unwrap();
        assert_eq!(received.event, "message");
        assert_eq!(
            received.payload.get(),
            r#"{"activity_type":"TASK_COMPLETED"}"#
        );
        let received = format
            .decode(br#"{"switchboard":1,"payload":2}"#, false)
            .unwrap();
        assert_eq!(received.event, "message");
        let received = format.decode(b"hello \"world\"", false).unwrap();
        assert_eq!(received.payload.get(), r#""hello \"world\"""#);
        let received = format.decode(&[0xff, b'a'], false).unwrap();
        assert_eq!(received.payload.get(), "\"\u{fffd}a\"");
    }

    #[test]
    fn pyview_messages_round_trip_and_pyview_producers_are_understood() {
        let ours = Format::new(EnvelopeFormat::Pyview, "redis", "me".into());
        let payload = Payload::from_json("42").unwrap();
        let text = ours.encode(&topic(), "count", &payload);
        assert_eq!(
            text,
            r#"{"topic":"room:1","message":42,"event":"count","origin":"me"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["topic"], "room:1", "PyView reads the topic");
        assert_eq!(parsed["message"], 42, "and the message");
        assert_eq!(ours.decode(text.as_bytes(), false), None, "own echo");
        let other = Format::new(EnvelopeFormat::Pyview, "redis", "other".into());
        assert_eq!(other.decode(text.as_bytes(), false).unwrap().event, "count");
        // What PyView's RedisPubSub.broadcast sends.
        let from_pyview = other
            .decode(br#"{"topic": "counter", "message": {"n": 1}}"#, false)
            .unwrap();
        assert_eq!(from_pyview.event, "message");
        assert_eq!(from_pyview.payload.get(), r#"{"n": 1}"#);
    }

    #[test]
    fn pyview_on_postgres_is_the_message_alone_and_echoes_are_known_by_sender() {
        let format = Format::new(EnvelopeFormat::Pyview, "postgres", "me".into());
        assert_eq!(format, Format::PyviewBare);
        let payload = Payload::from_json(r#"{"n":1}"#).unwrap();
        let text = format.encode(&topic(), "ignored", &payload);
        assert_eq!(text, r#"{"n":1}"#);
        assert_eq!(format.decode(text.as_bytes(), true), None);
        assert_eq!(
            format.decode(text.as_bytes(), false).unwrap().payload,
            payload
        );
    }
}
