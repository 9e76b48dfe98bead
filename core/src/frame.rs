//! The typed frames of the Phoenix Channels V2 JSON protocol.

use std::fmt;

use serde_json::value::RawValue;

use crate::Topic;

/// The topic phoenix.js sends heartbeats on.
pub const HEARTBEAT_TOPIC: &str = "phoenix";

/// Event names the protocol reserves.
pub mod events {
    /// Client → server: join a topic.
    pub const JOIN: &str = "phx_join";
    /// Client → server: leave a topic.
    pub const LEAVE: &str = "phx_leave";
    /// Server → client: the reply to a request that carried a ref.
    pub const REPLY: &str = "phx_reply";
    /// Server → client: the membership of a topic has ended.
    pub const CLOSE: &str = "phx_close";
    /// Server → client: the membership of a topic has crashed.
    pub const ERROR: &str = "phx_error";
    /// Client → server on topic `phoenix`: keep the socket alive.
    pub const HEARTBEAT: &str = "heartbeat";
}

/// A JSON value kept as its text, so that relaying it never re-serialises it.
///
/// Two payloads are equal when their texts are equal.
pub struct Payload(Box<RawValue>);

impl Payload {
    /// Parses `json` (any JSON value) without building a tree.
    ///
    /// # Errors
    /// The parser's error when `json` is not one valid JSON value.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        RawValue::from_string(json.to_owned()).map(Self)
    }

    /// Like [`Payload::from_json`] but takes ownership of the text (no copy).
    ///
    /// # Errors
    /// The parser's error when `json` is not one valid JSON value.
    pub fn from_json_string(json: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(json).map(Self)
    }

    /// Serialises `value` into a payload.
    ///
    /// # Errors
    /// The serialiser's error (for example a map with non-string keys).
    pub fn from_value<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// `{}`.
    #[must_use]
    pub fn empty_object() -> Self {
        // unwrap: "{}" is a valid JSON value, so parsing it cannot fail.
        Self(RawValue::from_string("{}".to_owned()).expect("{} is valid JSON"))
    }

    /// The JSON text.
    #[must_use]
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Whether the value is a JSON object.
    #[must_use]
    pub fn is_object(&self) -> bool {
        self.get().starts_with('{')
    }

    /// Parses the payload into a value tree.
    ///
    /// # Errors
    /// The deserialiser's error when the JSON does not fit `T`.
    pub fn parse<'de, T: serde::Deserialize<'de>>(&'de self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.get())
    }

    /// Wraps an already parsed raw JSON value (no copy).
    #[must_use]
    pub const fn from_raw_value(raw: Box<RawValue>) -> Self {
        Self(raw)
    }
}

impl Clone for Payload {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

/// One frame on the wire, in either direction: `[join_ref, ref, topic, event, payload]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The ref of the join that opened the membership this frame belongs to.
    pub join_ref: Option<String>,
    /// The ref a reply will echo; `None` for broadcasts and fire-and-forget pushes.
    pub msg_ref: Option<String>,
    /// The topic.
    pub topic: Topic,
    /// The event name.
    pub event: String,
    /// The payload (any JSON value; client requests carry objects).
    pub payload: Payload,
}

/// What a client asks of the server in one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// `phx_join`: subscribe to the topic. The payload holds the join parameters.
    Join {
        /// Join parameters (an object).
        payload: Payload,
    },
    /// `phx_leave`: unsubscribe from the topic.
    Leave,
    /// `heartbeat` on topic `phoenix`: keep the socket alive.
    Heartbeat,
    /// Any other event on a joined topic: publish it to every subscriber.
    Push {
        /// The event name, relayed as is.
        event: String,
        /// The message (an object).
        payload: Payload,
    },
}

/// A decoded client frame: the request and the addressing it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame {
    /// See [`Frame::join_ref`].
    pub join_ref: Option<String>,
    /// See [`Frame::msg_ref`].
    pub msg_ref: Option<String>,
    /// The topic the request is about.
    pub topic: Topic,
    /// What the client asks for.
    pub request: Request,
}

impl ClientFrame {
    /// The wire frame this request is sent as.
    #[must_use]
    pub fn to_frame(&self) -> Frame {
        let (event, payload) = match &self.request {
            Request::Join { payload } => (events::JOIN.to_owned(), payload.clone()),
            Request::Leave => (events::LEAVE.to_owned(), Payload::empty_object()),
            Request::Heartbeat => (events::HEARTBEAT.to_owned(), Payload::empty_object()),
            Request::Push { event, payload } => (event.clone(), payload.clone()),
        };
        Frame {
            join_ref: self.join_ref.clone(),
            msg_ref: self.msg_ref.clone(),
            topic: self.topic.clone(),
            event,
            payload,
        }
    }
}

/// The outcome a `phx_reply` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply<'a> {
    /// `{"status":"ok","response":<response>}`.
    Ok(&'a Payload),
    /// `{"status":"ok","response":{}}`.
    OkEmpty,
    /// `{"status":"error","response":{"reason":<reason>}}`.
    Error {
        /// Human-readable reason, e.g. `unmatched topic` or `unauthorized`.
        reason: &'a str,
    },
}
