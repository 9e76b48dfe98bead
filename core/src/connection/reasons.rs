//! Every error reason and close code a connection sends: the one place where what went wrong
//! becomes what the client reads.

/// Close codes (WebSocket close frames).
pub mod close {
    /// No frame for the idle timeout.
    pub const IDLE: (u16, &str) = (1000, "idle timeout");
    /// The server is shutting down.
    pub const SHUTDOWN: (u16, &str) = (1001, "server shutting down");
    /// A WebSocket protocol violation.
    pub const PROTOCOL: (u16, &str) = (1002, "websocket protocol error");
    /// A binary message (only the JSON serializer is spoken).
    pub const BINARY: (u16, &str) = (1003, "binary frames are not supported");
    /// A message that is not a Phoenix V2 frame; the close reason is the decode error.
    pub const NOT_A_FRAME: u16 = 1007;
    /// A message over the size limit.
    pub const TOO_LARGE: (u16, &str) = (1009, "frame too large");
    /// The socket's token expired (as Centrifugo's `DisconnectExpired`): reconnect with a
    /// fresh one.
    pub const TOKEN_EXPIRED: (u16, &str) = (3005, "token expired");
    /// The socket could not keep up with its deliveries (as Centrifugo's `DisconnectSlow`).
    pub const SLOW_CONSUMER: (u16, &str) = (3008, "slow consumer");
}

/// A push or leave on a topic the socket has not joined (Phoenix's own words).
pub const UNMATCHED_TOPIC: &str = "unmatched topic";
/// A push that names an earlier membership of its topic (its `join_ref` is not the current
/// join's).
pub const STALE_JOIN_REF: &str = "stale join_ref: the topic was joined again since";
/// A join or push the channel rules refuse.
pub const UNAUTHORIZED: &str = "unauthorized";
/// A push over the socket's push rate.
pub const RATE_LIMITED: &str = "rate limit exceeded";
/// A join or leave over the socket's join rate.
pub const JOIN_RATE_LIMITED: &str = "join rate limit exceeded";
/// One join more than the per-socket topic limit (Phoenix's own words).
pub const TOO_MANY_CHANNELS: &str = "too many channels joined";
/// A push made while the bridge to the other nodes is down: delivered here only.
pub const UPSTREAM_DOWN: &str = "upstream unavailable: delivered on this node only";
/// The server could not take the request now (its queues are full).
pub const OVERLOADED: &str = "server overloaded";
/// The server is stopping or its hub is gone.
pub const UNAVAILABLE: &str = "server unavailable";
/// Requests addressed to topics whose joins are still pending passed the bound.
pub const TOO_MANY_WAITING: &str = "too many requests waiting for pending joins";
/// An event the core does not know how to serve.
pub const UNSUPPORTED: &str = "unsupported request";
/// A join with a `presence` parameter on a topic that tracks no presence.
pub const PRESENCE_OFF: &str =
    "invalid presence: this topic tracks no presence (presence = true in its namespace turns it on)";
/// A presence parameter or update from a socket without a presence key.
pub const PRESENCE_NO_KEY: &str = "invalid presence: this socket has no presence key (connect \
     with a token whose sub is the key, or, on a node without tokens, the user parameter)";
/// A client push of an event only the server sends on a presence topic.
pub const PRESENCE_SERVER_EVENT: &str =
    "presence_state and presence_diff are sent by the server only";
