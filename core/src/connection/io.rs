//! What a [`Connection`](super::Connection) asks of its driver, and what the driver answers.

use std::fmt;
use std::time::Duration;

use crate::history::Position;
use crate::presence::Meta;
use crate::{Payload, Topic};

/// Identifies one join the connection is waiting on; echoed in
/// [`Connection::handle_join_answer`](super::Connection::handle_join_answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinId(pub(super) u64);

impl JoinId {
    /// The id as a number (for logs).
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Where the answer to a push goes: echoed in
/// [`Connection::handle_publish_answer`](super::Connection::handle_publish_answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAck {
    pub(super) join_ref: Option<String>,
    pub(super) msg_ref: String,
    pub(super) topic: Topic,
}

/// Something the driver must do, in the order [`Connection::poll`](super::Connection::poll)
/// returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send this text frame to the client.
    Send(String),
    /// Subscribe this connection to `topic`, then answer with
    /// [`handle_join_answer`](super::Connection::handle_join_answer) and this `join` id. Until
    /// then, frames about `topic` wait inside the connection, in order.
    Join {
        /// The topic.
        topic: Topic,
        /// The id to answer with.
        join: JoinId,
        /// The last position the client saw (its join's `since`), to recover from.
        since: Option<Position>,
        /// For a topic that tracks presence: who joins (answer the join, then call
        /// [`handle_presence_state`](super::Connection::handle_presence_state)).
        presence: Option<PresenceJoin>,
    },
    /// Unsubscribe this connection from `topic` (no answer). It comes before the leave's reply
    /// and `phx_close`: a driver that queues deliveries sends what it queued for the old
    /// membership first.
    Leave {
        /// The topic.
        topic: Topic,
    },
    /// Publish to every subscriber of `topic`, this connection included. When `ack` is
    /// `Some`, answer with [`handle_publish_answer`](super::Connection::handle_publish_answer);
    /// when `None` the client asked for no reply (its push had no ref).
    Publish {
        /// The topic.
        topic: Topic,
        /// The event name.
        event: String,
        /// The message.
        payload: Payload,
        /// Where the answer goes.
        ack: Option<PushAck>,
    },
    /// Replace this connection's meta on a presence topic: the member `phx_ref_prev` names
    /// leaves as the new one joins. Answer like a publish when `ack` is `Some`.
    PresenceUpdate {
        /// The topic.
        topic: Topic,
        /// The new meta (the token's `info` merged over what the client sent).
        meta: Meta,
        /// Where the answer goes.
        ack: Option<PushAck>,
    },
    /// Close the socket with this code and reason; the connection handles nothing more.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// A request was refused: count it (metrics only; the client has been answered).
    Refused(Refusal),
}

/// Why a request was refused, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// A malformed frame, an unmatched topic, a stale membership or a limit.
    Protocol,
    /// The channel rules said no.
    Unauthorized,
    /// Over a rate limit.
    RateLimited,
}

/// What a join of a presence topic tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceJoin {
    /// The presence key; `None`: the socket watches the list without being in it.
    pub key: Option<String>,
    /// The member's meta.
    pub meta: Meta,
}

/// How far the messages of a joined topic reach this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reach {
    /// From everywhere: the backend confirmed the subscription, or the server runs alone.
    Everywhere,
    /// Only what is published on this node: the bridge to the other nodes is down (the
    /// subscription is made upstream as soon as it is back).
    LocalOnly,
}

/// The driver's answer to [`Output::Join`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinAnswer {
    /// Subscribed.
    Joined(Reach),
    /// Subscribed to a topic with history (everywhere): the reply says where its stream stands
    /// and, when the client named the last position it saw, whether what it missed follows.
    JoinedAt {
        /// The stream's position: every publication after it reaches the socket.
        position: Position,
        /// Whether the publications after the client's `since` follow the reply (`None`: the
        /// client named none).
        recovered: Option<bool>,
    },
    /// Not subscribed (the driver has undone any subscription it made for this join).
    Refused(JoinRefusal),
}

/// Why the driver could not subscribe a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinRefusal {
    /// The socket holds its limit of topics.
    TooManyTopics,
    /// The backend did not confirm the subscription in time.
    UpstreamTimeout {
        /// The bound that passed.
        after: Duration,
    },
    /// The backend refused the subscription (for example a Redis ACL without the channel).
    UpstreamRefused {
        /// What the backend said.
        reason: String,
    },
    /// The server cannot take joins now (shutting down).
    Unavailable,
    /// The join names a position to recover from, and the history cannot be read now (the
    /// backend is unreachable): the client should try again.
    HistoryUnavailable {
        /// Why.
        reason: String,
    },
    /// The topic has as many presence members as it may (across every node).
    PresenceFull {
        /// The bound.
        max: usize,
    },
    /// The presence list cannot be read or joined now (the backend is unreachable).
    PresenceUnavailable {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for JoinRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyTopics => f.write_str(super::reasons::TOO_MANY_CHANNELS),
            Self::UpstreamTimeout { after } => write!(
                f,
                "the backend did not confirm the subscription within {after:?}; try again"
            ),
            Self::UpstreamRefused { reason } => {
                write!(f, "the backend refused the subscription: {reason}")
            }
            Self::Unavailable => f.write_str(super::reasons::UNAVAILABLE),
            Self::HistoryUnavailable { reason } => {
                write!(f, "history unavailable: {reason}; try again")
            }
            Self::PresenceFull { max } => write!(
                f,
                "too many members: the topic has its limit of {max} presence members"
            ),
            Self::PresenceUnavailable { reason } => {
                write!(f, "presence unavailable: {reason}; try again")
            }
        }
    }
}

/// The driver's answer to [`Output::Publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishAnswer {
    /// Delivered here and accepted by the backend for every other node (or the server runs
    /// alone).
    Everywhere,
    /// Delivered on this node only: the bridge to the other nodes is down or full.
    LocalOnly,
    /// Refused whole, delivered nowhere, with this reason.
    Refused(String),
    /// The server could not take it now.
    Overloaded,
}
