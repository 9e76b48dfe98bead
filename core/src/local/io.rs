//! What goes into and out of a [`LocalServer`](super::LocalServer): the handshake a socket
//! opens with, the items every input returns, what a broadcast did, and the refusals.

use crate::history::Position;
use crate::token::TokenError;
use crate::{SessionId, TopicError};

use super::PROTOCOL_VSN;

/// Something a [`LocalServer`] input asks the shell to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outgoing {
    /// Deliver this text frame to connection `to`.
    Frame {
        /// The connection.
        to: SessionId,
        /// The frame, as the node writes it.
        text: String,
    },
    /// Close connection `to` with this WebSocket close code and reason. The connection is
    /// gone already: its subscriptions are undone and nothing more is addressed to it.
    Close {
        /// The connection.
        to: SessionId,
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

impl Outgoing {
    /// The connection this is for.
    #[must_use]
    pub const fn to(&self) -> SessionId {
        match self {
            Self::Frame { to, .. } | Self::Close { to, .. } => *to,
        }
    }
}

/// What the node reads from a socket's URL at its upgrade: the first `vsn`, `token` and
/// `user` query parameters, percent-decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handshake<'a> {
    /// The protocol version (`2.0.0`).
    pub vsn: Option<&'a str>,
    /// The connect token (needed with a token secret).
    pub token: Option<&'a str>,
    /// On an open server, the client's presence key (phoenix.js: `params: {user: "ada"}`);
    /// ignored with a token secret, where the key is the token's `sub`.
    pub user: Option<&'a str>,
}

impl<'a> Handshake<'a> {
    /// `vsn=2.0.0` and nothing else.
    #[must_use]
    pub const fn v2() -> Self {
        Self {
            vsn: Some(PROTOCOL_VSN),
            token: None,
            user: None,
        }
    }

    /// The same, with `token`.
    #[must_use]
    pub const fn token(self, token: &'a str) -> Self {
        Self {
            token: Some(token),
            ..self
        }
    }

    /// The same, with `user`.
    #[must_use]
    pub const fn user(self, user: &'a str) -> Self {
        Self {
            user: Some(user),
            ..self
        }
    }
}

/// Why [`LocalServer::open`] refused a socket: what the node answers instead of upgrading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenRefusal {
    /// The URL has no `vsn` query parameter (HTTP 400).
    #[error("the vsn query parameter is required; use vsn=2.0.0 (Phoenix V2 JSON)")]
    MissingVsn,
    /// The URL asks for another protocol version (HTTP 400).
    #[error("protocol version {vsn:?} is not supported; use vsn=2.0.0 (Phoenix V2 JSON)")]
    UnsupportedVsn {
        /// The version asked for.
        vsn: String,
    },
    /// The server has a token secret and the token is missing or not valid (HTTP 401). The
    /// message is what the node tells the client; `reason` is what it logs.
    #[error("a valid token is required (the token query parameter)")]
    Unauthorized {
        /// Why the token was refused.
        reason: TokenError,
    },
}

impl OpenRefusal {
    /// The HTTP status the node answers the upgrade request with.
    #[must_use]
    pub const fn status(&self) -> u16 {
        match self {
            Self::MissingVsn | Self::UnsupportedVsn { .. } => 400,
            Self::Unauthorized { .. } => 401,
        }
    }

    /// The node's stable error code (the `code` of its JSON error body).
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self {
            Self::MissingVsn => "missing_vsn",
            Self::UnsupportedVsn { .. } => "unsupported_vsn",
            Self::Unauthorized { .. } => "unauthorized",
        }
    }
}

/// Why [`LocalServer::broadcast`] refused a message: what the node's `POST /api/publish`
/// answers with HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic breaks the topic rules.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// The event is the empty string.
    #[error("event is empty")]
    EmptyEvent,
    /// The event starts with `phx_`, which the protocol reserves.
    #[error("event {event:?} is reserved by the protocol")]
    ReservedEvent {
        /// The event given.
        event: String,
    },
    /// `presence_state` or `presence_diff` on a topic with presence: only the server sends
    /// them, so nobody can forge a member list.
    #[error("event {event:?} is sent by the server only on a topic with presence")]
    ServerEvent {
        /// The event given.
        event: String,
    },
}

impl PublishError {
    /// The node's stable error code.
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self {
            Self::InvalidTopic(_) => "invalid_topic",
            Self::EmptyEvent | Self::ReservedEvent { .. } | Self::ServerEvent { .. } => {
                "invalid_event"
            }
        }
    }
}

/// What a [`LocalServer::broadcast`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Published {
    /// One [`Outgoing::Frame`] per recipient, in the order the connections were opened.
    pub outgoing: Vec<Outgoing>,
    /// The publication's place in its topic's stream, when the topic has history (the node's
    /// `"position"` in its answer).
    pub position: Option<Position>,
}

impl Published {
    /// How many sockets it goes to: the node's `recipients`.
    #[must_use]
    pub fn recipients(&self) -> usize {
        self.outgoing.len()
    }
}
