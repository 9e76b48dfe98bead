//! Decoding and encoding Phoenix Channels V2 JSON frames.
//!
//! Decoding never panics and never trusts its input: every way a frame can be wrong has its
//! own [`DecodeError`] variant. Payloads are kept as JSON text ([`Payload`]) so relaying a
//! message never re-serialises it, and a broadcast is encoded once into a [`SharedFrame`]
//! whose bytes every subscriber's send reuses.

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::frame::{events, ClientFrame, Frame, Payload, Reply, Request, HEARTBEAT_TOPIC};
use crate::{Topic, TopicError};

/// The default largest text frame accepted from a client: 64 KiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// The longest `join_ref` or `ref` accepted, in bytes. phoenix.js sends short counters
/// (`"1"`, `"2"`, ...); a server keeps a membership's `join_ref` for as long as it lasts, so a
/// longer ref would let one client hold memory per joined topic.
pub const MAX_REF_BYTES: usize = 64;

/// A position in `[join_ref, ref, topic, event, payload]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// Element 0.
    JoinRef,
    /// Element 1.
    Ref,
    /// Element 2.
    Topic,
    /// Element 3.
    Event,
    /// Element 4.
    Payload,
}

impl Field {
    /// The element's name as the protocol documentation spells it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::JoinRef => "join_ref",
            Self::Ref => "ref",
            Self::Topic => "topic",
            Self::Event => "event",
            Self::Payload => "payload",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is longer than the limit; nothing of it was parsed.
    #[error("frame is {len} bytes; the limit is {max} bytes")]
    TooLarge {
        /// Length of the frame in bytes.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The frame's bytes are not UTF-8.
    #[error("frame is not valid UTF-8")]
    NotUtf8,
    /// The frame is not valid JSON.
    #[error("frame is not valid JSON: {detail}")]
    NotJson {
        /// The parser's description, with line and column.
        detail: String,
    },
    /// The frame is valid JSON but not an array.
    #[error("frame is not a JSON array [join_ref, ref, topic, event, payload]")]
    NotArray,
    /// The frame is an array with other than five elements.
    #[error("frame has {len} elements; expected 5: [join_ref, ref, topic, event, payload]")]
    WrongLength {
        /// Number of elements found.
        len: usize,
    },
    /// An element has the wrong JSON type.
    #[error("{field} must be {expected}")]
    WrongType {
        /// Which element.
        field: Field,
        /// What it must be.
        expected: &'static str,
    },
    /// An element is a JSON string that cannot be read as text: an escape of a lone UTF-16
    /// surrogate (such as `"\ud800"`), which no UTF-8 string can hold.
    #[error("{field} is not a valid string: it escapes a lone UTF-16 surrogate")]
    InvalidString {
        /// Which element.
        field: Field,
    },
    /// A `join_ref` or `ref` is longer than [`MAX_REF_BYTES`].
    #[error("{field} is {len} bytes long; the limit is {max} bytes")]
    RefTooLong {
        /// Which element.
        field: Field,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A client request's payload is not a JSON object.
    #[error("payload must be a JSON object")]
    PayloadNotObject,
    /// The topic breaks the topic rules.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// The event is the empty string.
    #[error("event is empty")]
    EmptyEvent,
    /// A client sent an event only the server may send (`phx_reply`, `phx_close`, `phx_error`).
    #[error("event {event:?} is reserved for the server")]
    ReservedEvent {
        /// The event received.
        event: String,
    },
}

impl DecodeError {
    /// A stable, machine-readable code for this error.
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "frame_too_large",
            Self::NotUtf8 => "not_utf8",
            Self::NotJson { .. } => "not_json",
            Self::NotArray => "not_array",
            Self::WrongLength { .. } => "wrong_length",
            Self::WrongType { .. } => "wrong_type",
            Self::InvalidString { .. } => "invalid_string",
            Self::RefTooLong { .. } => "ref_too_long",
            Self::PayloadNotObject => "payload_not_object",
            Self::InvalidTopic(_) => "invalid_topic",
            Self::EmptyEvent => "empty_event",
            Self::ReservedEvent { .. } => "reserved_event",
        }
    }
}

/// Decodes one frame in either direction: structure, element types and topic are checked,
/// the payload may be any JSON value.
///
/// # Errors
/// [`DecodeError`] names the first problem found.
pub fn decode_frame(text: &str, max_bytes: usize) -> Result<Frame, DecodeError> {
    let raw = decode_structure(text, max_bytes)?;
    if let Some(error) = raw.ref_too_long() {
        return Err(error);
    }
    let topic = Topic::try_from(raw.topic)?;
    if raw.event.is_empty() {
        return Err(DecodeError::EmptyEvent);
    }
    Ok(Frame {
        join_ref: raw.join_ref,
        msg_ref: raw.msg_ref,
        topic,
        event: raw.event,
        payload: Payload::from_raw_value(raw.payload.to_owned()),
    })
}

/// The five elements of a structurally valid frame, before any rule about their content.
struct RawFrame<'a> {
    join_ref: Option<String>,
    msg_ref: Option<String>,
    topic: String,
    event: String,
    payload: &'a RawValue,
}

impl RawFrame<'_> {
    /// The first ref over [`MAX_REF_BYTES`], as an error.
    fn ref_too_long(&self) -> Option<DecodeError> {
        [
            (Field::JoinRef, &self.join_ref),
            (Field::Ref, &self.msg_ref),
        ]
        .into_iter()
        .find_map(|(field, value)| {
            let len = value.as_ref().map_or(0, String::len);
            (len > MAX_REF_BYTES).then_some(DecodeError::RefTooLong {
                field,
                len,
                max: MAX_REF_BYTES,
            })
        })
    }
}

fn decode_structure(text: &str, max_bytes: usize) -> Result<RawFrame<'_>, DecodeError> {
    if text.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            len: text.len(),
            max: max_bytes,
        });
    }
    let elements: Vec<&RawValue> = serde_json::from_str(text).map_err(|err| {
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            DecodeError::NotArray
        } else {
            DecodeError::NotJson {
                detail: err.to_string(),
            }
        }
    })?;
    let [join_ref, msg_ref, topic, event, payload] = elements[..] else {
        return Err(DecodeError::WrongLength {
            len: elements.len(),
        });
    };
    Ok(RawFrame {
        join_ref: optional_string(join_ref, Field::JoinRef)?,
        msg_ref: optional_string(msg_ref, Field::Ref)?,
        topic: required_string(topic, Field::Topic)?,
        event: required_string(event, Field::Event)?,
        payload,
    })
}

/// Like [`decode_frame`], for raw bytes (checks UTF-8 first).
///
/// # Errors
/// [`DecodeError::NotUtf8`], or what [`decode_frame`] reports.
pub fn decode_frame_bytes(bytes: &[u8], max_bytes: usize) -> Result<Frame, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: max_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
    decode_frame(text, max_bytes)
}

/// Decodes a frame a client sent and classifies it as a [`Request`].
///
/// On top of [`decode_frame`]'s checks the payload must be an object and the event must not
/// be one only the server sends.
///
/// # Errors
/// [`DecodeError`] names the first problem found.
pub fn decode_request(text: &str, max_bytes: usize) -> Result<ClientFrame, DecodeError> {
    decode_request_addressed(text, max_bytes).map_err(|rejected| rejected.error)
}

/// Where an error reply to a rejected frame goes: the addressing the frame carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The frame's `join_ref`.
    pub join_ref: Option<String>,
    /// The frame's `ref`.
    pub msg_ref: Option<String>,
    /// The frame's topic as sent (possibly not a valid [`Topic`]).
    pub topic: String,
}

/// A client frame that could not be accepted, and whether it can be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Rejected {
    /// What is wrong with it.
    pub error: DecodeError,
    /// `Some` when the frame was well-formed enough to address an error reply (a valid
    /// five-element array whose content broke a rule); `None` when it was not even that.
    pub reply_to: Option<ReplyTo>,
}

/// Like [`decode_request`], but says where an error reply can go.
///
/// A server answers a rejection that has [`Rejected::reply_to`] with a `phx_reply` error and
/// keeps the socket (a client that joins an invalid topic learns why, instead of reconnecting
/// in a loop); a rejection without it means the peer does not speak the protocol.
///
/// # Errors
/// [`Rejected`] with the first problem found.
pub fn decode_request_addressed(text: &str, max_bytes: usize) -> Result<ClientFrame, Rejected> {
    let raw = decode_structure(text, max_bytes).map_err(|error| Rejected {
        error,
        reply_to: None,
    })?;
    let reject = |error: DecodeError, raw: RawFrame<'_>| Rejected {
        error,
        reply_to: Some(ReplyTo {
            join_ref: raw.join_ref,
            msg_ref: raw.msg_ref,
            topic: raw.topic,
        }),
    };
    if let Some(error) = raw.ref_too_long() {
        // Answered, but without echoing a ref that is too long to keep.
        let short = |value: Option<String>| value.filter(|v| v.len() <= MAX_REF_BYTES);
        return Err(Rejected {
            error,
            reply_to: Some(ReplyTo {
                join_ref: short(raw.join_ref),
                msg_ref: short(raw.msg_ref),
                topic: raw.topic,
            }),
        });
    }
    let topic = match Topic::new(&raw.topic) {
        Ok(topic) => topic,
        Err(err) => return Err(reject(err.into(), raw)),
    };
    if raw.event.is_empty() {
        return Err(reject(DecodeError::EmptyEvent, raw));
    }
    if !raw.payload.get().starts_with('{') {
        return Err(reject(DecodeError::PayloadNotObject, raw));
    }
    let request = match raw.event.as_str() {
        events::JOIN => Request::Join {
            payload: Payload::from_raw_value(raw.payload.to_owned()),
        },
        events::LEAVE => Request::Leave,
        events::HEARTBEAT if topic.as_str() == HEARTBEAT_TOPIC => Request::Heartbeat,
        events::REPLY | events::CLOSE | events::ERROR => {
            let error = DecodeError::ReservedEvent {
                event: raw.event.clone(),
            };
            return Err(reject(error, raw));
        }
        _ => Request::Push {
            payload: Payload::from_raw_value(raw.payload.to_owned()),
            event: raw.event,
        },
    };
    Ok(ClientFrame {
        join_ref: raw.join_ref,
        msg_ref: raw.msg_ref,
        topic,
        request,
    })
}

fn optional_string(raw: &RawValue, field: Field) -> Result<Option<String>, DecodeError> {
    if raw.get() == "null" {
        Ok(None)
    } else if raw.get().starts_with('"') {
        required_string(raw, field).map(Some)
    } else {
        Err(DecodeError::WrongType {
            field,
            expected: "a string or null",
        })
    }
}

fn required_string(raw: &RawValue, field: Field) -> Result<String, DecodeError> {
    if !raw.get().starts_with('"') {
        return Err(DecodeError::WrongType {
            field,
            expected: "a string",
        });
    }
    // The raw value is already valid JSON, so a string that fails to read escapes a lone
    // surrogate.
    serde_json::from_str(raw.get()).map_err(|_| DecodeError::InvalidString { field })
}

/// Bytes of an encoded frame, shared by every send that reuses them: cloning is a reference
/// count, never a copy. Always valid UTF-8 JSON text.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedFrame(Bytes);

impl SharedFrame {
    /// The encoded bytes (UTF-8 JSON).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared buffer itself, for a transport that sends [`Bytes`].
    #[must_use]
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty (never true for an encoded frame).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SharedFrame {
    fn from(text: String) -> Self {
        Self(Bytes::from(text))
    }
}

impl std::fmt::Debug for SharedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedFrame({})", String::from_utf8_lossy(&self.0))
    }
}

impl Frame {
    /// Encodes the frame as JSON text.
    #[must_use]
    pub fn encode(&self) -> String {
        encode_parts(
            self.join_ref.as_deref(),
            self.msg_ref.as_deref(),
            self.topic.as_str(),
            &self.event,
            self.payload.get(),
        )
    }
}

impl ClientFrame {
    /// Encodes the request as JSON text.
    #[must_use]
    pub fn encode(&self) -> String {
        self.to_frame().encode()
    }
}

/// Encodes `[join_ref, ref, topic, event, payload]` where `payload` is JSON text.
///
/// The caller vouches that `payload` is one valid JSON value (a [`Payload`] always is).
#[must_use]
pub fn encode_parts(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &str,
) -> String {
    let mut out = String::with_capacity(
        16 + join_ref.map_or(4, str::len)
            + msg_ref.map_or(4, str::len)
            + topic.len()
            + event.len()
            + payload.len(),
    );
    out.push('[');
    push_optional_string(&mut out, join_ref);
    out.push(',');
    push_optional_string(&mut out, msg_ref);
    out.push(',');
    push_json_string(&mut out, topic);
    out.push(',');
    push_json_string(&mut out, event);
    out.push(',');
    out.push_str(payload);
    out.push(']');
    out
}

/// Encodes a `phx_reply` to the request `(join_ref, msg_ref)` on `topic`.
#[must_use]
pub fn encode_reply(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    reply: &Reply<'_>,
) -> String {
    let mut payload = String::with_capacity(64);
    match reply {
        Reply::Ok(response) => {
            payload.push_str(r#"{"status":"ok","response":"#);
            payload.push_str(response.get());
            payload.push('}');
        }
        Reply::OkEmpty => payload.push_str(r#"{"status":"ok","response":{}}"#),
        Reply::Error { reason } => {
            payload.push_str(r#"{"status":"error","response":{"reason":"#);
            push_json_string(&mut payload, reason);
            payload.push_str("}}");
        }
    }
    encode_parts(join_ref, msg_ref, topic, events::REPLY, &payload)
}

/// Encodes `phx_close` for the membership opened by `join_ref` on `topic` (sent after a leave,
/// and before a duplicate join replaces the membership).
#[must_use]
pub fn encode_close(join_ref: Option<&str>, topic: &str) -> String {
    encode_parts(join_ref, join_ref, topic, events::CLOSE, "{}")
}

/// Encodes `[null, null, topic, event, payload]` once, for every subscriber to share.
#[must_use]
pub fn encode_broadcast(topic: &str, event: &str, payload: &Payload) -> SharedFrame {
    SharedFrame::from(encode_parts(None, None, topic, event, payload.get()))
}

fn push_optional_string(out: &mut String, value: Option<&str>) {
    match value {
        Some(text) => push_json_string(out, text),
        None => out.push_str("null"),
    }
}

/// Appends `text` as a JSON string literal.
fn push_json_string(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut start = 0;
    for (index, byte) in text.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[start..index]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = index + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = DEFAULT_MAX_FRAME_BYTES;

    #[test]
    fn refs_over_the_limit_are_refused_and_never_echoed() {
        let long = "9".repeat(MAX_REF_BYTES + 1);
        let fits = "9".repeat(MAX_REF_BYTES);
        let text = format!(r#"["{long}","2","room:1","phx_join",{{}}]"#);
        let rejected = decode_request_addressed(&text, MAX).unwrap_err();
        assert_eq!(
            rejected.error,
            DecodeError::RefTooLong {
                field: Field::JoinRef,
                len: MAX_REF_BYTES + 1,
                max: MAX_REF_BYTES
            }
        );
        assert_eq!(rejected.error.code(), "ref_too_long");
        let to = rejected.reply_to.unwrap();
        assert_eq!((to.join_ref, to.msg_ref.as_deref()), (None, Some("2")));
        let text = format!(r#"["1","{long}","room:1","m",{{}}]"#);
        let rejected = decode_request_addressed(&text, MAX).unwrap_err();
        assert_eq!(rejected.reply_to.unwrap().msg_ref, None);
        assert!(decode_frame(&text, MAX).is_err(), "either direction");
        let text = format!(r#"["{fits}","{fits}","room:1","m",{{}}]"#);
        assert!(decode_request(&text, MAX).is_ok());
    }

    fn request(text: &str) -> Result<ClientFrame, DecodeError> {
        decode_request(text, MAX)
    }

    #[test]
    fn decodes_a_phoenix_join() {
        let frame = request(r#"["3","3","room:lobby","phx_join",{"token":"t"}]"#).unwrap();
        assert_eq!(frame.join_ref.as_deref(), Some("3"));
        assert_eq!(frame.msg_ref.as_deref(), Some("3"));
        assert_eq!(frame.topic.as_str(), "room:lobby");
        assert_eq!(
            frame.request,
            Request::Join {
                payload: Payload::from_json(r#"{"token":"t"}"#).unwrap()
            }
        );
    }

    #[test]
    fn decodes_leave_heartbeat_and_push() {
        let leave = request(r#"["3","5","room:lobby","phx_leave",{}]"#).unwrap();
        assert_eq!(leave.request, Request::Leave);
        let beat = request(r#"[null,"6","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(beat.request, Request::Heartbeat);
        assert_eq!(beat.join_ref, None);
        let push = request(r#"["3","4","room:lobby","new_msg",{"body":"hi"}]"#).unwrap();
        assert_eq!(
            push.request,
            Request::Push {
                event: "new_msg".into(),
                payload: Payload::from_json(r#"{"body":"hi"}"#).unwrap()
            }
        );
        // "heartbeat" on another topic is an ordinary event.
        let other = request(r#"["1",null,"room:x","heartbeat",{}]"#).unwrap();
        assert!(matches!(other.request, Request::Push { .. }));
    }

    #[test]
    fn every_malformation_has_its_own_error() {
        let cases: &[(&str, DecodeError)] = &[
            (
                "not json",
                DecodeError::NotJson {
                    detail: "expected ident at line 1 column 2".into(),
                },
            ),
            (r#"{"a":1}"#, DecodeError::NotArray),
            (r#""text""#, DecodeError::NotArray),
            (r#"[null,null,"t"]"#, DecodeError::WrongLength { len: 3 }),
            (
                r#"[1,null,"t","e",{}]"#,
                DecodeError::WrongType {
                    field: Field::JoinRef,
                    expected: "a string or null",
                },
            ),
            (
                r#"[null,7,"t","e",{}]"#,
                DecodeError::WrongType {
                    field: Field::Ref,
                    expected: "a string or null",
                },
            ),
            (
                r#"[null,null,null,"e",{}]"#,
                DecodeError::WrongType {
                    field: Field::Topic,
                    expected: "a string",
                },
            ),
            (
                r#"[null,null,"t",["e"],{}]"#,
                DecodeError::WrongType {
                    field: Field::Event,
                    expected: "a string",
                },
            ),
            (r#"[null,null,"t","e",[1]]"#, DecodeError::PayloadNotObject),
            (r#"[null,null,"t","e","s"]"#, DecodeError::PayloadNotObject),
            (
                r#"[null,null,"","e",{}]"#,
                DecodeError::InvalidTopic(TopicError::Empty),
            ),
            (
                r#"[null,null,"a\nb","e",{}]"#,
                DecodeError::InvalidTopic(TopicError::ControlCharacter { position: 1 }),
            ),
            (r#"[null,null,"t","",{}]"#, DecodeError::EmptyEvent),
            (
                r#"[null,"1","t","phx_reply",{}]"#,
                DecodeError::ReservedEvent {
                    event: "phx_reply".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(&request(text).unwrap_err(), expected, "input: {text}");
        }
    }

    #[test]
    fn content_errors_carry_the_addressing_for_an_error_reply() {
        let rejected = decode_request_addressed(r#"["1","2","","phx_join",{}]"#, MAX).unwrap_err();
        assert_eq!(rejected.error, DecodeError::InvalidTopic(TopicError::Empty));
        assert_eq!(
            rejected.reply_to,
            Some(ReplyTo {
                join_ref: Some("1".into()),
                msg_ref: Some("2".into()),
                topic: String::new(),
            })
        );
        let garbage = decode_request_addressed("[1,2", MAX).unwrap_err();
        assert_eq!(garbage.reply_to, None);
        assert!(matches!(garbage.error, DecodeError::NotJson { .. }));
        let wrong_type = decode_request_addressed(r#"[1,"2","t","e",{}]"#, MAX).unwrap_err();
        assert_eq!(wrong_type.reply_to, None);
    }

    #[test]
    fn a_lone_surrogate_is_named_as_such() {
        let err = request(r#"["1","1","room:\ud800","phx_join",{}]"#).unwrap_err();
        assert_eq!(
            err,
            DecodeError::InvalidString {
                field: Field::Topic
            }
        );
        assert_eq!(
            err.to_string(),
            "topic is not a valid string: it escapes a lone UTF-16 surrogate"
        );
    }

    #[test]
    fn size_limit_is_checked_before_parsing() {
        let text = format!(r#"[null,null,"t","e",{{"pad":"{}"}}]"#, "x".repeat(100));
        assert_eq!(
            decode_request(&text, 50).unwrap_err(),
            DecodeError::TooLarge {
                len: text.len(),
                max: 50
            }
        );
        assert!(decode_request(&text, text.len()).is_ok());
        assert_eq!(
            decode_frame_bytes(&[0xff, b'['], MAX).unwrap_err(),
            DecodeError::NotUtf8
        );
    }

    #[test]
    fn decode_frame_accepts_any_payload_value() {
        let frame = decode_frame(r#"[null,null,"t","e",[1,2]]"#, MAX).unwrap();
        assert_eq!(frame.payload.get(), "[1,2]");
        assert!(!frame.payload.is_object());
    }

    #[test]
    fn encodes_replies_close_and_broadcast_as_phoenix_does() {
        assert_eq!(
            encode_reply(Some("3"), Some("3"), "room:lobby", &Reply::OkEmpty),
            r#"["3","3","room:lobby","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            encode_reply(
                None,
                Some("3"),
                "room:x",
                &Reply::Error {
                    reason: "unmatched topic"
                }
            ),
            r#"[null,"3","room:x","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );
        let response = Payload::from_json(r#"{"n":1}"#).unwrap();
        assert_eq!(
            encode_reply(None, Some("6"), "phoenix", &Reply::Ok(&response)),
            r#"[null,"6","phoenix","phx_reply",{"status":"ok","response":{"n":1}}]"#
        );
        assert_eq!(
            encode_close(Some("3"), "room:lobby"),
            r#"["3","3","room:lobby","phx_close",{}]"#
        );
        let payload = Payload::from_json(r#"{"body":"hi"}"#).unwrap();
        let shared = encode_broadcast("room:lobby", "new_msg", &payload);
        assert_eq!(
            shared.as_bytes(),
            br#"[null,null,"room:lobby","new_msg",{"body":"hi"}]"#
        );
        let copy = shared.clone();
        assert_eq!(
            copy.as_bytes().as_ptr(),
            shared.as_bytes().as_ptr(),
            "clones share bytes"
        );
    }

    #[test]
    fn strings_are_escaped() {
        let text = encode_parts(Some("a\"b"), Some("\\"), "t", "e\u{1}\n", "{}");
        assert_eq!(text, r#"["a\"b","\\","t","e\u0001\n",{}]"#);
        let frame = decode_frame(&text, MAX).unwrap();
        assert_eq!(frame.join_ref.as_deref(), Some("a\"b"));
        assert_eq!(frame.event, "e\u{1}\n");
    }

    #[test]
    fn reencoding_a_decoded_frame_round_trips() {
        let text = r#"[ "1" , null , "room:é" , "ev" , { "k" : [1, 2.5, "x"] } ]"#;
        let frame = decode_request(text, MAX).unwrap();
        assert_eq!(decode_request(&frame.encode(), MAX).unwrap(), frame);
    }

    #[test]
    fn a_payload_is_relayed_as_sent_even_with_a_lone_surrogate() {
        // JSON text a browser's JSON.parse accepts; `serde_json::Value` would refuse it, the
        // raw payload keeps it byte for byte.
        let text = r#"["1",null,"room:a","ev",{"k":"\ud66d\ude00"}]"#;
        let frame = decode_request(text, MAX).unwrap();
        assert_eq!(decode_request(&frame.encode(), MAX).unwrap(), frame);
        let reserved = r#"["1",null,"__om:a","ev",{"k":"\ude00"}]"#;
        let rejected = decode_request_addressed(reserved, MAX).unwrap_err();
        assert_eq!(rejected.reply_to.unwrap().topic, "__om:a");
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            request("[1]").unwrap_err().to_string(),
            "frame has 1 elements; expected 5: [join_ref, ref, topic, event, payload]"
        );
        assert_eq!(
            request(r#"[1,null,"t","e",{}]"#).unwrap_err().to_string(),
            "join_ref must be a string or null"
        );
    }
}
