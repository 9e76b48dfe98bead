//! Reading received Phoenix V2 frames: `[join_ref, ref, topic, event, payload]` as a
//! [`serde_json::Value`].

use serde_json::Value;

/// Accessors for a Phoenix V2 frame held as a JSON array. Missing or mistyped elements read as
/// `None` / `""` / `Null`, so an assertion on them fails with the whole frame in view rather
/// than panicking inside the accessor.
pub trait PhxFrame {
    /// Element 0, the join ref, when it is a string.
    fn join_ref(&self) -> Option<&str>;
    /// Element 1, the message ref, when it is a string.
    fn msg_ref(&self) -> Option<&str>;
    /// Element 2, the topic (`""` when not a string).
    fn topic(&self) -> &str;
    /// Element 3, the event (`""` when not a string).
    fn event(&self) -> &str;
    /// Element 4, the payload (`Null` when missing).
    fn payload(&self) -> &Value;
    /// True for a `phx_reply` frame.
    fn is_reply(&self) -> bool {
        self.event() == "phx_reply"
    }
    /// True for a `phx_reply` whose ref is `msg_ref`.
    fn is_reply_to(&self, msg_ref: &str) -> bool {
        self.is_reply() && self.msg_ref() == Some(msg_ref)
    }
    /// True for a broadcast (`[null, null, topic, event, payload]` with a non-`phx_` event,
    /// or `[null, "<offset>:<epoch>", ...]` on a topic with history).
    fn is_broadcast(&self) -> bool {
        self.join_ref().is_none()
            && self.msg_ref().is_none_or(|position| position.contains(':'))
            && !self.event().is_empty()
            && !self.event().starts_with("phx_")
    }
    /// A broadcast's position (`"<offset>:<epoch>"`), on a topic with history.
    fn position(&self) -> Option<&str> {
        self.msg_ref().filter(|_| self.is_broadcast())
    }
    /// A reply's `status` (`"ok"` / `"error"`), `""` for anything else.
    fn status(&self) -> &str {
        self.payload()
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    /// A reply's `response` object (`Null` when absent).
    fn response(&self) -> &Value {
        self.payload().get("response").unwrap_or(&Value::Null)
    }
    /// An error reply's `response.reason`, `""` when absent.
    fn reason(&self) -> &str {
        self.response()
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

impl PhxFrame for Value {
    fn join_ref(&self) -> Option<&str> {
        self.get(0).and_then(Self::as_str)
    }
    fn msg_ref(&self) -> Option<&str> {
        self.get(1).and_then(Self::as_str)
    }
    fn topic(&self) -> &str {
        self.get(2).and_then(Self::as_str).unwrap_or("")
    }
    fn event(&self) -> &str {
        self.get(3).and_then(Self::as_str).unwrap_or("")
    }
    fn payload(&self) -> &Value {
        self.get(4).unwrap_or(&Self::Null)
    }
}
