//! A whole Switchboard server in memory: [`LocalServer`], many [`Connection`]s, one
//! [`Registry`], the channel rules, the token secret and the [`Limits`], synchronous and without
//! I/O.
//!
//! It is the node without sockets, actors or a clock: the same protocol engine answers every
//! frame, the same registry routes every broadcast, the same token code admits every socket.
//! The WebAssembly fake server for frontend tests is a thin shell around it (it moves text
//! between JavaScript `WebSocket` objects and this type), and the differential tests drive it
//! next to the real node and require the same frames back.
//!
//! # Driving a [`LocalServer`]
//!
//! 1. [`open`](LocalServer::open) a connection with the `vsn` and `token` query parameters of
//!    the socket's URL, as the node's WebSocket upgrade reads them. A refusal is what the node
//!    answers instead of upgrading (HTTP 400 or 401): the socket never opens.
//! 2. Feed it what each socket sends: [`handle_text`](LocalServer::handle_text) for a text
//!    message (a message over [`Limits::max_frame_bytes`] is refused as the node's transport
//!    refuses it, with close 1009), [`handle_binary`](LocalServer::handle_binary), and
//!    [`handle_client_close`](LocalServer::handle_client_close) when the client closes.
//! 3. Server-side inputs: [`broadcast`](LocalServer::broadcast) (the node's
//!    `POST /api/publish`), [`disconnect`](LocalServer::disconnect) (the node closing a socket:
//!    shutdown, slow consumer) and [`tick`](LocalServer::tick) (time passed: idle sockets
//!    close). [`next_timeout`](LocalServer::next_timeout) says when a tick next matters.
//! 4. Every input returns the [`Outgoing`] items to perform, in order: frames to deliver and
//!    closes. Items for one connection are in the order the node sends them on its socket;
//!    after a [`Outgoing::Close`] that connection is gone (its subscriptions undone) and
//!    nothing more is addressed to it.
//!
//! The server performs everything the engine asks for itself, as the node's session and hub
//! do on a node without a backend: a join subscribes in the registry and is answered joined
//! everywhere (or refused with "too many channels joined"), a leave unsubscribes, a push is
//! delivered as `[null,null,topic,event,payload]` to every subscriber of its topic (the sender
//! included, before the sender's reply, as on the node) and then answered ok.
//!
//! Broadcasts reach subscribers in the order their connections were opened. Joins and pushes
//! are answered at once, which is one of the orders a node produces: a node answers a join
//! once its hub has subscribed and a push once its hub has published, so there, frames sent
//! right behind them (about other topics for a join, about any topic for a push) may be
//! answered first, and a leave sent right behind a push drops the push's broadcast to the
//! sender. Played one frame at a time, both answer alike (the differential tests check it).

use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::codec::encode_parts;
use crate::connection::{
    Connection, JoinAnswer, JoinRefusal, Limits, Output, PublishAnswer, Reach,
};
use crate::token::{TokenError, TokenSecret};
use crate::{
    Access, ChannelRules, Payload, Registry, SessionId, SubscribeError, Time, Topic, TopicError,
};

/// The only protocol version spoken: Phoenix Channels V2 JSON (`vsn=2.0.0`).
pub const PROTOCOL_VSN: &str = "2.0.0";

/// The event of a [`broadcast`](LocalServer::broadcast) that names none (the node's
/// `POST /api/publish` default).
pub const DEFAULT_EVENT: &str = "message";

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
}

impl PublishError {
    /// The node's stable error code.
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self {
            Self::InvalidTopic(_) => "invalid_topic",
            Self::EmptyEvent | Self::ReservedEvent { .. } => "invalid_event",
        }
    }
}

/// A Switchboard server in memory (see the module documentation for the driving contract).
#[derive(Debug)]
pub struct LocalServer {
    limits: Arc<Limits>,
    rules: Arc<ChannelRules>,
    secret: Option<TokenSecret>,
    registry: Registry,
    /// Sorted by id (ids only grow, so opening appends): a list rather than a map keeps the
    /// WebAssembly module small, and a test server holds few connections.
    connections: Vec<(SessionId, Connection)>,
}

impl LocalServer {
    /// A server applying `limits` to every connection.
    ///
    /// With a token secret, sockets need a valid token and `rules` decide who may join and
    /// push. Without one the server is open, like a node started without `--token-secret`:
    /// every socket may join and push everywhere, and `rules` are not enforced.
    #[must_use]
    pub fn new(limits: Limits, rules: ChannelRules, secret: Option<TokenSecret>) -> Self {
        let rules = if secret.is_some() {
            rules
        } else {
            ChannelRules::new(Access::OPEN)
        };
        Self {
            registry: Registry::with_max_topics_per_session(limits.max_topics),
            limits: Arc::new(limits),
            rules: Arc::new(rules),
            secret,
            connections: Vec::new(),
        }
    }

    /// The limits every connection applies.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The channel rules in force (everything open without a token secret).
    #[must_use]
    pub fn rules(&self) -> &ChannelRules {
        &self.rules
    }

    /// The token secret, when sockets need tokens (to sign tokens for tests).
    #[must_use]
    pub const fn secret(&self) -> Option<&TokenSecret> {
        self.secret.as_ref()
    }

    /// Opens a connection at `now` for a socket whose URL carries the query parameters `vsn`
    /// and `token` (the first of each, percent-decoded), checking them as the node's upgrade
    /// does. `unix_seconds` is the wall-clock time the token's `exp` and `nbf` are checked
    /// against.
    ///
    /// # Errors
    /// [`OpenRefusal`] when the node would refuse the upgrade: a missing or other `vsn`
    /// (400), or, with a token secret, a missing or invalid token (401).
    pub fn open(
        &mut self,
        vsn: Option<&str>,
        token: Option<&str>,
        now: Time,
        unix_seconds: u64,
    ) -> Result<SessionId, OpenRefusal> {
        match vsn {
            Some(PROTOCOL_VSN) => {}
            Some(other) => {
                return Err(OpenRefusal::UnsupportedVsn {
                    vsn: other.to_owned(),
                })
            }
            None => return Err(OpenRefusal::MissingVsn),
        }
        let user = match &self.secret {
            None => None,
            Some(secret) => {
                let token = token.ok_or(OpenRefusal::Unauthorized {
                    reason: TokenError::Malformed,
                })?;
                let user = secret
                    .verify(token, unix_seconds)
                    .map_err(|reason| OpenRefusal::Unauthorized { reason })?;
                Some(user)
            }
        };
        let id = self.registry.connect();
        let connection =
            Connection::new(Arc::clone(&self.limits), Arc::clone(&self.rules), user, now);
        self.connections.push((id, connection));
        Ok(id)
    }

    /// Connection `id`'s protocol state (its user, joined topics), while it is open.
    #[must_use]
    pub fn connection(&self, id: SessionId) -> Option<&Connection> {
        let index = self.index(id)?;
        Some(&self.connections[index].1)
    }

    /// The open connections, in the order they were opened.
    #[must_use]
    pub fn connections(&self) -> Vec<SessionId> {
        self.connections.iter().map(|(id, _)| *id).collect()
    }

    fn index(&self, id: SessionId) -> Option<usize> {
        self.connections
            .binary_search_by_key(&id, |(id, _)| *id)
            .ok()
    }

    fn connection_mut(&mut self, id: SessionId) -> Option<&mut Connection> {
        let index = self.index(id)?;
        Some(&mut self.connections[index].1)
    }

    /// The connections subscribed to `topic`, in the order they were opened (the order
    /// broadcasts reach them).
    #[must_use]
    pub fn subscribers(&self, topic: &str) -> Vec<SessionId> {
        sorted(self.registry.subscribers(topic))
    }

    /// The registry: who listens to what.
    #[must_use]
    pub const fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Connection `id` sent a text message at `now`. A message over
    /// [`Limits::max_frame_bytes`] is refused as the node's transport refuses it (close 1009)
    /// before the engine sees it. Nothing happens for a connection that is not open.
    pub fn handle_text(&mut self, id: SessionId, text: &str, now: Time) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let max_frame_bytes = self.limits.max_frame_bytes;
        if let Some(connection) = self.connection_mut(id) {
            if text.len() > max_frame_bytes {
                connection.handle_oversized(now);
            } else {
                connection.handle_text(text, now);
            }
            self.drive(id, now, &mut out);
        }
        out
    }

    /// Connection `id` sent a binary message at `now` (refused: close 1003).
    pub fn handle_binary(&mut self, id: SessionId, now: Time) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if let Some(connection) = self.connection_mut(id) {
            connection.handle_binary(now);
            self.drive(id, now, &mut out);
        }
        out
    }

    /// The client closed connection `id`: it is forgotten and its subscriptions undone.
    /// Returns whether it was open.
    pub fn handle_client_close(&mut self, id: SessionId) -> bool {
        self.forget(id)
    }

    /// The server closes connection `id` with `code` and `reason` (as a node closes a slow
    /// consumer with 3008 or every socket with 1001 when it shuts down).
    pub fn disconnect(
        &mut self,
        id: SessionId,
        code: u16,
        reason: &str,
        now: Time,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if let Some(connection) = self.connection_mut(id) {
            connection.close(code, reason);
            self.drive(id, now, &mut out);
        }
        out
    }

    /// Publishes `payload` (any JSON value) as `event` to every subscriber of `topic`, as the
    /// node's `POST /api/publish` does (`event` `None` is [`DEFAULT_EVENT`]). Returns one
    /// [`Outgoing::Frame`] per recipient, in the order the connections were opened: their
    /// number is the node's `recipients`.
    ///
    /// # Errors
    /// [`PublishError`] for an invalid topic, an empty event or one starting with `phx_`;
    /// nothing is delivered then.
    pub fn broadcast(
        &self,
        topic: &str,
        event: Option<&str>,
        payload: &Payload,
    ) -> Result<Vec<Outgoing>, PublishError> {
        let topic = Topic::new(topic)?;
        let event = event.unwrap_or(DEFAULT_EVENT);
        if event.is_empty() {
            return Err(PublishError::EmptyEvent);
        }
        if event.starts_with("phx_") {
            return Err(PublishError::ReservedEvent {
                event: event.to_owned(),
            });
        }
        let mut out = Vec::new();
        deliver(&self.registry, &topic, event, payload, &mut out);
        Ok(out)
    }

    /// Time passed: every connection idle for [`Limits::idle_timeout`] at `now` closes
    /// (1000 "idle timeout").
    pub fn tick(&mut self, now: Time) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for id in self.connections() {
            if let Some(connection) = self.connection_mut(id) {
                connection.handle_tick(now);
                self.drive(id, now, &mut out);
            }
        }
        out
    }

    /// When [`tick`](Self::tick) next closes an idle connection unless it speaks first;
    /// `None` without connections.
    #[must_use]
    pub fn next_timeout(&self) -> Option<Time> {
        self.connections
            .iter()
            .filter_map(|(_, connection)| connection.poll_timeout())
            .min()
    }

    /// Performs everything connection `id`'s engine asks for, as the node's session and hub
    /// do; forgets the connection once it has closed.
    fn drive(&mut self, id: SessionId, now: Time, out: &mut Vec<Outgoing>) {
        let Some(index) = self.index(id) else {
            return;
        };
        let connection = &mut self.connections[index].1;
        while let Some(output) = connection.poll() {
            match output {
                Output::Send(text) => out.push(Outgoing::Frame { to: id, text }),
                Output::Join { topic, join, .. } => {
                    let answer = match self.registry.subscribe(id, &topic) {
                        Ok(_) => JoinAnswer::Joined(Reach::Everywhere),
                        Err(SubscribeError::TooManyTopics { .. }) => {
                            JoinAnswer::Refused(JoinRefusal::TooManyTopics)
                        }
                        Err(_) => JoinAnswer::Refused(JoinRefusal::Unavailable),
                    };
                    connection.handle_join_answer(&topic, join, answer, now);
                }
                Output::Leave { topic } => {
                    let _ = self.registry.unsubscribe(id, topic.as_str());
                }
                Output::Publish {
                    topic,
                    event,
                    payload,
                    ack,
                } => {
                    deliver(&self.registry, &topic, &event, &payload, out);
                    if let Some(ack) = ack {
                        connection.handle_publish_answer(ack, &PublishAnswer::Everywhere);
                    }
                }
                Output::Close { code, reason } => {
                    out.push(Outgoing::Close {
                        to: id,
                        code,
                        reason,
                    });
                }
                // Refusals are only counted (metrics); the client has been answered. An output
                // this server does not know yet is left undone, as the node's session does.
                _ => {}
            }
        }
        if connection.is_closed() {
            self.forget(id);
        }
    }

    fn forget(&mut self, id: SessionId) -> bool {
        let _ = self.registry.disconnect(id);
        let index = self.index(id);
        index.map(|index| self.connections.remove(index)).is_some()
    }
}

/// Queues `[null,null,topic,event,payload]` for every subscriber of `topic`, in the order
/// they connected.
fn deliver(
    registry: &Registry,
    topic: &Topic,
    event: &str,
    payload: &Payload,
    out: &mut Vec<Outgoing>,
) {
    let subscribers = sorted(registry.subscribers(topic.as_str()));
    if subscribers.is_empty() {
        return;
    }
    let text = encode_parts(None, None, topic.as_str(), event, payload.get());
    out.extend(subscribers.into_iter().map(|to| Outgoing::Frame {
        to,
        text: text.clone(),
    }));
}

/// Session ids in allocation order: the order connections were opened.
fn sorted(ids: impl Iterator<Item = SessionId>) -> Vec<SessionId> {
    // A binary heap rather than `sort_unstable`: the WebAssembly build already links it for
    // the same job, and a second sort would cost the module about 2 KB.
    ids.collect::<BinaryHeap<_>>().into_sorted_vec()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::Rule;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW_UNIX: u64 = 1_800_000_000;

    fn t(millis: u64) -> Time {
        Time::from_millis(millis)
    }

    fn open_server() -> LocalServer {
        LocalServer::new(Limits::default(), ChannelRules::new(Access::OPEN), None)
    }

    fn secured(rules: ChannelRules) -> LocalServer {
        LocalServer::new(
            Limits::default(),
            rules,
            Some(TokenSecret::new(SECRET).unwrap()),
        )
    }

    fn connect(server: &mut LocalServer) -> SessionId {
        server.open(Some("2.0.0"), None, t(0), NOW_UNIX).unwrap()
    }

    fn token(sub: &str) -> String {
        TokenSecret::new(SECRET).unwrap().sign(sub, NOW_UNIX + 60)
    }

    /// `(connection, frame as JSON)` and `(connection, {"close": [code, reason]})`.
    fn seen(out: Vec<Outgoing>) -> Vec<(u64, Value)> {
        out.into_iter()
            .map(|item| match item {
                Outgoing::Frame { to, text } => (to.get(), serde_json::from_str(&text).unwrap()),
                Outgoing::Close { to, code, reason } => {
                    (to.get(), json!({"close": [code, reason]}))
                }
            })
            .collect()
    }

    fn send(server: &mut LocalServer, id: SessionId, frame: &Value) -> Vec<(u64, Value)> {
        seen(server.handle_text(id, &frame.to_string(), t(0)))
    }

    fn ok(join_ref: &str, msg_ref: &str, topic: &str) -> Value {
        json!([join_ref, msg_ref, topic, "phx_reply", {"status": "ok", "response": {}}])
    }

    fn error(join_ref: Option<&str>, msg_ref: &str, topic: &str, reason: &str) -> Value {
        json!([join_ref, msg_ref, topic, "phx_reply",
            {"status": "error", "response": {"reason": reason}}])
    }

    #[test]
    fn the_handshake_is_checked_as_the_node_checks_it() {
        let mut server = open_server();
        assert_eq!(
            server.open(None, None, t(0), NOW_UNIX),
            Err(OpenRefusal::MissingVsn)
        );
        let other = server
            .open(Some("1.0.0"), None, t(0), NOW_UNIX)
            .unwrap_err();
        assert_eq!((other.status(), other.code()), (400, "unsupported_vsn"));
        assert_eq!(
            other.to_string(),
            r#"protocol version "1.0.0" is not supported; use vsn=2.0.0 (Phoenix V2 JSON)"#
        );
        // An open server ignores tokens, even bad ones.
        assert!(server
            .open(Some("2.0.0"), Some("junk"), t(0), NOW_UNIX)
            .is_ok());

        let mut server = secured(ChannelRules::new(Access::SECURE_DEFAULT));
        let missing = server
            .open(Some("2.0.0"), None, t(0), NOW_UNIX)
            .unwrap_err();
        assert_eq!((missing.status(), missing.code()), (401, "unauthorized"));
        assert_eq!(
            server.open(Some("2.0.0"), Some("junk"), t(0), NOW_UNIX),
            Err(OpenRefusal::Unauthorized {
                reason: TokenError::Malformed
            })
        );
        let expired = TokenSecret::new(SECRET)
            .unwrap()
            .sign("u", NOW_UNIX - 2 * crate::token::LEEWAY_SECONDS);
        assert_eq!(
            server.open(Some("2.0.0"), Some(&expired), t(0), NOW_UNIX),
            Err(OpenRefusal::Unauthorized {
                reason: TokenError::Expired
            })
        );
        let id = server
            .open(Some("2.0.0"), Some(&token("42")), t(0), NOW_UNIX)
            .unwrap();
        assert_eq!(server.connection(id).unwrap().user(), Some("42"));
        assert_eq!(server.connections(), [id]);
    }

    #[test]
    fn a_push_reaches_every_subscriber_the_sender_first_then_its_reply() {
        let mut server = open_server();
        let a = connect(&mut server);
        let b = connect(&mut server);
        let c = connect(&mut server);
        assert_eq!(
            send(&mut server, a, &json!(["1", "1", "room:1", "phx_join", {}])),
            [(a.get(), ok("1", "1", "room:1"))]
        );
        let _ = send(&mut server, b, &json!(["1", "1", "room:1", "phx_join", {}]));
        let _ = send(&mut server, c, &json!(["1", "1", "room:2", "phx_join", {}]));
        assert_eq!(server.subscribers("room:1"), [a, b]);

        let broadcast = json!([null, null, "room:1", "new_msg", {"body": "hi"}]);
        assert_eq!(
            send(
                &mut server,
                b,
                &json!(["1", "2", "room:1", "new_msg", {"body": "hi"}])
            ),
            [
                (a.get(), broadcast.clone()),
                (b.get(), broadcast.clone()),
                (b.get(), ok("1", "2", "room:1")),
            ]
        );
        // Without a ref: delivered, not answered.
        assert_eq!(
            send(
                &mut server,
                a,
                &json!(["1", null, "room:1", "new_msg", {"body": "hi"}])
            ),
            [(a.get(), broadcast.clone()), (b.get(), broadcast)]
        );
    }

    #[test]
    fn leaves_and_duplicate_joins_follow_phoenix() {
        let mut server = open_server();
        let a = connect(&mut server);
        let _ = send(&mut server, a, &json!(["1", "1", "room:1", "phx_join", {}]));
        assert_eq!(
            send(&mut server, a, &json!(["3", "3", "room:1", "phx_join", {}])),
            [
                (a.get(), json!(["1", "1", "room:1", "phx_close", {}])),
                (a.get(), ok("3", "3", "room:1")),
            ]
        );
        // A push under the replaced membership is refused without naming a membership.
        assert_eq!(
            send(&mut server, a, &json!(["1", "4", "room:1", "ev", {}])),
            [(a.get(), error(None, "4", "room:1", reasons_stale()))]
        );
        assert_eq!(
            send(
                &mut server,
                a,
                &json!(["3", "5", "room:1", "phx_leave", {}])
            ),
            [
                (a.get(), ok("3", "5", "room:1")),
                (a.get(), json!(["3", "3", "room:1", "phx_close", {}])),
            ]
        );
        assert!(server.subscribers("room:1").is_empty());
        assert_eq!(
            send(&mut server, a, &json!(["3", "6", "room:1", "ev", {}])),
            [(a.get(), error(None, "6", "room:1", "unmatched topic"))]
        );
    }

    fn reasons_stale() -> &'static str {
        crate::connection::reasons::STALE_JOIN_REF
    }

    #[test]
    fn limits_refuse_as_the_node_does() {
        let limits = Limits {
            max_topics: 1,
            max_topic_bytes: 8,
            max_frame_bytes: 100,
            ..Limits::default()
        };
        let mut server = LocalServer::new(limits, ChannelRules::new(Access::OPEN), None);
        let a = connect(&mut server);
        let _ = send(&mut server, a, &json!(["1", "1", "t:1", "phx_join", {}]));
        assert_eq!(
            send(&mut server, a, &json!(["2", "2", "t:2", "phx_join", {}])),
            [(
                a.get(),
                error(Some("2"), "2", "t:2", "too many channels joined")
            )]
        );
        assert_eq!(
            send(
                &mut server,
                a,
                &json!(["3", "3", "t:123456789", "phx_join", {}])
            ),
            [(
                a.get(),
                error(
                    Some("3"),
                    "3",
                    "t:123456789",
                    "invalid topic: topic is 11 bytes long; the limit is 8 bytes"
                )
            )]
        );
        let big = format!(r#"[null,"4","t:1","ev",{{"pad":"{}"}}]"#, "x".repeat(100));
        assert_eq!(
            seen(server.handle_text(a, &big, t(0))),
            [(a.get(), json!({"close": [1009, "frame too large"]}))]
        );
        assert!(server.connections().is_empty());
        assert!(server.subscribers("t:1").is_empty());
        assert!(
            server.handle_text(a, "[]", t(0)).is_empty(),
            "closed is closed"
        );
    }

    #[test]
    fn bad_frames_close_or_get_error_replies() {
        let mut server = open_server();
        let a = connect(&mut server);
        let out = seen(server.handle_text(a, r#"["1","1","t","phx_join",[]]"#, t(0)));
        assert_eq!(
            out,
            [(
                a.get(),
                error(Some("1"), "1", "t", "payload must be a JSON object")
            )]
        );
        let out = seen(server.handle_text(a, "nope", t(0)));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1["close"][0], 1007);
        let b = connect(&mut server);
        assert_eq!(
            seen(server.handle_binary(b, t(0))),
            [(
                b.get(),
                json!({"close": [1003, "binary frames are not supported"]})
            )]
        );
    }

    #[test]
    fn channel_rules_apply_with_a_secret_and_not_without() {
        let mut rules = ChannelRules::new(Access {
            join: Rule::Nobody,
            push: Rule::Nobody,
        });
        rules.set(
            "room",
            Access {
                join: Rule::Authenticated,
                push: Rule::Authenticated,
            },
        );
        rules.set(
            "auditlog",
            Access {
                join: Rule::Owner,
                push: Rule::Nobody,
            },
        );
        let mut server = secured(rules.clone());
        let a = server
            .open(Some("2.0.0"), Some(&token("42")), t(0), NOW_UNIX)
            .unwrap();
        assert_eq!(
            send(&mut server, a, &json!(["1", "1", "room:1", "phx_join", {}])),
            [(a.get(), ok("1", "1", "room:1"))]
        );
        assert_eq!(
            send(
                &mut server,
                a,
                &json!(["2", "2", "admin:1", "phx_join", {}])
            ),
            [(a.get(), error(Some("2"), "2", "admin:1", "unauthorized"))]
        );
        assert_eq!(
            send(
                &mut server,
                a,
                &json!(["3", "3", "auditlog:43", "phx_join", {}])
            ),
            [(
                a.get(),
                error(Some("3"), "3", "auditlog:43", "unauthorized")
            )]
        );
        let _ = send(
            &mut server,
            a,
            &json!(["4", "4", "auditlog:42", "phx_join", {}]),
        );
        assert_eq!(
            send(&mut server, a, &json!(["4", "5", "auditlog:42", "ev", {}])),
            [(
                a.get(),
                error(Some("4"), "5", "auditlog:42", "unauthorized")
            )]
        );

        let mut open = LocalServer::new(Limits::default(), rules, None);
        let b = connect(&mut open);
        assert_eq!(
            send(&mut open, b, &json!(["1", "1", "admin:1", "phx_join", {}])),
            [(b.get(), ok("1", "1", "admin:1"))]
        );
    }

    #[test]
    fn broadcasts_count_recipients_and_check_like_the_publish_endpoint() {
        let mut server = open_server();
        let a = connect(&mut server);
        let b = connect(&mut server);
        let _ = send(&mut server, b, &json!(["1", "1", "room:1", "phx_join", {}]));
        let _ = send(&mut server, a, &json!(["1", "1", "room:1", "phx_join", {}]));
        let payload = Payload::from_json("[1,2]").unwrap();
        let out = seen(server.broadcast("room:1", None, &payload).unwrap());
        let frame = json!([null, null, "room:1", "message", [1, 2]]);
        assert_eq!(out, [(a.get(), frame.clone()), (b.get(), frame)]);
        assert!(server
            .broadcast("nobody", Some("e"), &payload)
            .unwrap()
            .is_empty());
        let code = |topic: &str, event: Option<&str>| {
            server.broadcast(topic, event, &payload).unwrap_err().code()
        };
        assert_eq!(code("", None), "invalid_topic");
        assert_eq!(code("t", Some("")), "invalid_event");
        assert_eq!(code("t", Some("phx_reply")), "invalid_event");
    }

    #[test]
    fn idle_connections_close_on_tick_and_closes_forget_subscriptions() {
        let mut server = open_server();
        let a = connect(&mut server);
        let b = connect(&mut server);
        let _ = send(&mut server, a, &json!(["1", "1", "room:1", "phx_join", {}]));
        assert_eq!(server.next_timeout(), Some(t(60_000)));
        let _ = server.handle_text(b, r#"[null,"1","phoenix","heartbeat",{}]"#, t(30_000));
        assert!(server.tick(t(59_999)).is_empty());
        assert_eq!(
            seen(server.tick(t(60_000))),
            [(a.get(), json!({"close": [1000, "idle timeout"]}))]
        );
        assert!(server.subscribers("room:1").is_empty());
        assert_eq!(server.next_timeout(), Some(t(90_000)));

        assert_eq!(
            seen(server.disconnect(b, 3008, "slow consumer", t(31_000))),
            [(b.get(), json!({"close": [3008, "slow consumer"]}))]
        );
        assert_eq!(server.next_timeout(), None);

        let c = connect(&mut server);
        let _ = send(&mut server, c, &json!(["1", "1", "room:1", "phx_join", {}]));
        assert!(server.handle_client_close(c));
        assert!(!server.handle_client_close(c));
        assert!(server.subscribers("room:1").is_empty());
        assert_eq!(server.registry().session_count(), 0);
    }
}
