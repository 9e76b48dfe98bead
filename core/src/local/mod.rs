//! A whole Switchboard server in memory: [`LocalServer`], many [`Connection`]s, one
//! [`Registry`], the channel rules, the token secret, the [`Limits`], presence and history,
//! synchronous and without I/O.
//!
//! It is the node without sockets, actors or a clock: the same protocol engine answers every
//! frame, the same registry routes every broadcast, the same token code admits every socket,
//! the same presence table lists who is on a topic and the same ring keeps a topic's history.
//! The WebAssembly fake server for frontend tests is a thin shell around it (it moves text
//! between JavaScript `WebSocket` objects and this type), and the differential tests drive it
//! next to the real node and require the same frames back.
//!
//! # Driving a [`LocalServer`]
//!
//! 1. Build it with [`new`](LocalServer::new), then, as the node's `[channels]` tables and
//!    `--presence-*` flags configure them, [`with_presence`](LocalServer::with_presence) and
//!    [`with_history`](LocalServer::with_history); [`with_seed`](LocalServer::with_seed)
//!    names it (a node draws a new id at every start).
//! 2. [`open`](LocalServer::open) a connection with the `vsn`, `token` and `user` query
//!    parameters of the socket's URL ([`Handshake`]), as the node's WebSocket upgrade reads
//!    them. A refusal is what the node answers instead of upgrading (HTTP 400 or 401): the
//!    socket never opens.
//! 3. Feed it what each socket sends: [`handle_text`](LocalServer::handle_text) for a text
//!    message (a message over [`Limits::max_frame_bytes`] is refused as the node's transport
//!    refuses it, with close 1009), [`handle_binary`](LocalServer::handle_binary), and
//!    [`handle_client_close`](LocalServer::handle_client_close) when the client closes.
//! 4. Server-side inputs: [`broadcast`](LocalServer::broadcast) (the node's
//!    `POST /api/publish`), [`disconnect`](LocalServer::disconnect) (the node closing a socket:
//!    shutdown, slow consumer) and [`tick`](LocalServer::tick) (time passed: idle sockets and
//!    sockets whose token expired close, held presence diffs go out).
//!    [`next_timeout`](LocalServer::next_timeout) says when a tick next matters.
//! 5. Every input returns the [`Outgoing`] items to perform, in order: frames to deliver and
//!    closes. Items for one connection are in the order the node sends them on its socket;
//!    after a [`Outgoing::Close`] that connection is gone (its subscriptions and presence
//!    undone) and nothing more is addressed to it.
//!
//! The server performs everything the engine asks for itself, as the node's session and hub
//! do on a node without a backend: a join subscribes in the registry and is answered joined
//! everywhere (or refused with "too many channels joined"), a leave unsubscribes, a push is
//! delivered as `[null,null,topic,event,payload]` to every subscriber of its topic (the sender
//! included, before the sender's reply, as on the node) and then answered ok.
//!
//! # Presence
//!
//! A join of a topic with presence tracks the socket's member (its key is the token's `sub`, or
//! on an open server the `user` query parameter; a socket without one only watches), refused
//! past [`PresenceRules::max_members`]. The socket gets the topic's list (`presence_state`)
//! right after its reply, then `presence_diff`s. Changes (joins, leaves, `presence_update`s,
//! closes) are batched as on the node: at most one diff per topic per
//! [`PRESENCE_BATCH_WINDOW`]. A change when no window is running goes out at once, with the
//! items of the input that made it; a change within a window waits for its end, and goes out
//! with the [`tick`](LocalServer::tick) at or after it (or with any later input), as the node's
//! flush timer sends it. Nothing depends on a clock the caller does not pass in: with the same
//! inputs at the same times the same diffs come out.
//!
//! # History
//!
//! A topic with history keeps its last publications in a [`Ring`], gives each a position
//! (`"<offset>:<epoch>"`, in the broadcast's ref slot) and answers a join with where its
//! stream stands; a join with `since` gets what it missed, in order, right after its reply
//! (and the list, for a presence topic), before anything else, or `recovered: false`. Epochs
//! come from the server's seed, never from randomness: servers with different seeds never
//! share one, and a stream quiet for its TTL starts a new one.
//!
//! # Order
//!
//! Broadcasts reach subscribers in the order their connections were opened. Joins and pushes
//! are answered at once, which is one of the orders a node produces: a node answers a join
//! once its hub has subscribed and a push once its hub has published, so there, frames sent
//! right behind them (about other topics for a join, about any topic for a push) may be
//! answered first, and a leave sent right behind a push drops the push's broadcast to the
//! sender. Played one frame at a time, both answer alike (the differential tests check it).
//! A join's reply is followed by the topic's list (presence) and then by what the join
//! recovered (history), before anything else reaches the socket, as on the node.
//!
//! # Layout
//! - this file: [`LocalServer`], its inputs and how it drives each [`Connection`];
//! - `io`: what goes in and out ([`Handshake`], [`Outgoing`], [`Published`]) and the refusals
//!   ([`OpenRefusal`], [`PublishError`]);
//! - `hub`: what the node's hub keeps (the registry, presence lists, history streams);
//! - `list`: one topic's presence members and pending changes, written as phoenix.js reads
//!   them.

mod hub;
mod io;
mod list;
#[cfg(test)]
mod tests;

use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::encode_parts;
use crate::connection::{Connection, Limits, Output, PublishAnswer};
use crate::history::{HistoryRules, Retention};
use crate::presence::{self, Identity, PresenceRules};
use crate::token::{TokenError, TokenSecret};
use crate::{Access, ChannelRules, Payload, Registry, SessionId, Time, Topic};

use hub::Hub;
pub use io::{Handshake, OpenRefusal, Outgoing, PublishError, Published};
use list::List;

/// The only protocol version spoken: Phoenix Channels V2 JSON (`vsn=2.0.0`).
pub const PROTOCOL_VSN: &str = "2.0.0";

/// The event of a [`broadcast`](LocalServer::broadcast) that names none (the node's
/// `POST /api/publish` default).
pub const DEFAULT_EVENT: &str = "message";

/// The shortest time between two `presence_diff`s of one topic (the node's batching window).
pub const PRESENCE_BATCH_WINDOW: Duration = Duration::from_millis(250);

/// A server in memory (see the module documentation for the driving contract).
#[derive(Debug)]
pub struct LocalServer {
    limits: Arc<Limits>,
    rules: Arc<ChannelRules>,
    secret: Option<TokenSecret>,
    presence: Arc<PresenceRules>,
    /// Sorted by id (ids only grow, so opening appends): a list rather than a map keeps the
    /// WebAssembly module small, and a test server holds few connections.
    connections: Vec<(SessionId, Connection)>,
    /// What the node's hub keeps: who listens to what, presence, history.
    hub: Hub,
}

impl LocalServer {
    /// A server applying `limits` to every connection, without presence or history.
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
        let hub = Hub::new(Registry::with_max_topics_per_session(limits.max_topics));
        Self {
            limits: Arc::new(limits),
            rules: Arc::new(rules),
            secret,
            presence: Arc::new(PresenceRules::none()),
            connections: Vec::new(),
            hub,
        }
    }

    /// The same server, tracking presence on the topics `rules` name, with its bounds (the
    /// node's `presence = true` per namespace, `--presence-max-members` and
    /// `--presence-max-meta-bytes`). Connections opened before keep the rules they had.
    #[must_use]
    pub fn with_presence(mut self, rules: PresenceRules) -> Self {
        self.hub.max_members = rules.max_members;
        self.presence = Arc::new(rules);
        self
    }

    /// The same server, keeping history for the topics `rules` name (the node's `history` and
    /// `history_ttl` per namespace).
    #[must_use]
    pub fn with_history(self, rules: &HistoryRules) -> Self {
        rules.iter().fold(self, |server, (namespace, retention)| {
            server.with_namespace_history(namespace, retention)
        })
    }

    /// The same server, keeping `retention` of every topic of `namespace` (`"*"`: of every
    /// namespace without its own), as one `[channels.<namespace>]` table's `history` and
    /// `history_ttl` do.
    #[must_use]
    pub fn with_namespace_history(mut self, namespace: &str, retention: Retention) -> Self {
        let history = &mut self.hub.history;
        match history.iter_mut().find(|(listed, _)| listed == namespace) {
            Some(listed) => listed.1 = retention,
            None => history.push((namespace.to_owned(), retention)),
        }
        self
    }

    /// The same server, named by `seed`: its epochs and the `<node>` part of its `phx_ref`s
    /// derive from it, as a node draws a new id at every start. Servers with different seeds
    /// never share an epoch, so a position one of them gave is never trusted by another.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.hub.name(seed);
        self
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

    /// Which topics track presence, and its bounds.
    #[must_use]
    pub fn presence_rules(&self) -> &PresenceRules {
        &self.presence
    }

    /// How much of `topic`'s stream is kept, if it has history.
    #[must_use]
    pub fn retention(&self, topic: &Topic) -> Option<Retention> {
        self.hub.retention(topic)
    }

    /// The token secret, when sockets need tokens (to sign tokens for tests).
    #[must_use]
    pub const fn secret(&self) -> Option<&TokenSecret> {
        self.secret.as_ref()
    }

    /// Opens a connection at `now` for a socket whose URL carries `handshake`, checking it as
    /// the node's upgrade does. `unix_seconds` is the wall-clock time the token's `exp` and
    /// `nbf` are checked against; a socket with a token closes (3005 "token expired") once its
    /// token stops being accepted, [`Verified::valid_for`](crate::token::Verified::valid_for)
    /// after `now`.
    ///
    /// # Errors
    /// [`OpenRefusal`] when the node would refuse the upgrade: a missing or other `vsn`
    /// (400), or, with a token secret, a missing or invalid token (401).
    pub fn open(
        &mut self,
        handshake: Handshake<'_>,
        now: Time,
        unix_seconds: u64,
    ) -> Result<SessionId, OpenRefusal> {
        match handshake.vsn {
            Some(PROTOCOL_VSN) => {}
            Some(other) => {
                return Err(OpenRefusal::UnsupportedVsn {
                    vsn: other.to_owned(),
                })
            }
            None => return Err(OpenRefusal::MissingVsn),
        }
        // Who the socket is on presence topics: the token's sub, or on an open server what
        // the client calls itself.
        let (user, identity, expires) = match &self.secret {
            None => {
                let key = handshake.user.filter(|user| !user.is_empty());
                let identity = Identity {
                    key: key.map(str::to_owned),
                    info: None,
                };
                (None, identity, None)
            }
            Some(secret) => {
                let token = handshake.token.ok_or(OpenRefusal::Unauthorized {
                    reason: TokenError::Malformed,
                })?;
                let verified = secret
                    .verify_claims(token, unix_seconds)
                    .map_err(|reason| OpenRefusal::Unauthorized { reason })?;
                let expires = now + Duration::from_secs(verified.valid_for(unix_seconds));
                let identity = Identity {
                    key: Some(verified.sub.clone()),
                    info: verified.info,
                };
                (Some(verified.sub), identity, Some(expires))
            }
        };
        let id = self.hub.registry.connect();
        let mut connection =
            Connection::new(Arc::clone(&self.limits), Arc::clone(&self.rules), user, now)
                .with_presence(Arc::clone(&self.presence), identity);
        if let Some(expires) = expires {
            connection = connection.with_expiry(expires);
        }
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

    /// The connections subscribed to `topic`, in the order they were opened (the order
    /// broadcasts reach them).
    #[must_use]
    pub fn subscribers(&self, topic: &str) -> Vec<SessionId> {
        sorted(self.hub.registry.subscribers(topic))
    }

    /// The registry: who listens to what.
    #[must_use]
    pub const fn registry(&self) -> &Registry {
        &self.hub.registry
    }

    /// `topic`'s members as a `presence_state` payload (`{key: {"metas": [...]}}`, what the
    /// node's `GET /api/presence` lists), or `None` when the topic tracks no presence.
    pub fn presence(&mut self, topic: &str) -> Option<Payload> {
        let topic = Topic::new(topic).ok()?;
        if !self.presence.applies(&topic) {
            return None;
        }
        Some(
            self.hub
                .watched(&topic)
                .map_or_else(|| List::default().state(), |watched| watched.table.state()),
        )
    }

    /// Connection `id` sent a text message at `now`. A message over
    /// [`Limits::max_frame_bytes`] is refused as the node's transport refuses it (close 1009)
    /// before the engine sees it. Nothing happens for a connection that is not open.
    pub fn handle_text(&mut self, id: SessionId, text: &str, now: Time) -> Vec<Outgoing> {
        let max_frame_bytes = self.limits.max_frame_bytes;
        self.input(id, now, |connection| {
            if text.len() > max_frame_bytes {
                connection.handle_oversized(now);
            } else {
                connection.handle_text(text, now);
            }
        })
    }

    /// Connection `id` sent a binary message at `now` (refused: close 1003).
    pub fn handle_binary(&mut self, id: SessionId, now: Time) -> Vec<Outgoing> {
        self.input(id, now, |connection| connection.handle_binary(now))
    }

    /// The client closed connection `id` at `now`: it is forgotten, its subscriptions undone
    /// and its presence members gone. Returns what that sends the others (a `presence_diff`,
    /// when no window is running); nothing for a connection that is not open.
    pub fn handle_client_close(&mut self, id: SessionId, now: Time) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if self.forget(id) {
            self.hub.flush(now, &mut out);
        }
        out
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
        self.input(id, now, |connection| connection.close(code, reason))
    }

    /// Publishes `payload` (any JSON value) as `event` to every subscriber of `topic` at
    /// `now`, as the node's `POST /api/publish` does (`event` `None` is [`DEFAULT_EVENT`]).
    /// On a topic with history the publication gets the next position, carried in the
    /// broadcast's ref slot.
    ///
    /// # Errors
    /// [`PublishError`] for an invalid topic, an empty event, one starting with `phx_`, or
    /// `presence_state`/`presence_diff` on a topic with presence; nothing is delivered then.
    pub fn broadcast(
        &mut self,
        topic: &str,
        event: Option<&str>,
        payload: &Payload,
        now: Time,
    ) -> Result<Published, PublishError> {
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
        if self.presence.applies(&topic) && presence::SERVER_EVENTS.contains(&event) {
            return Err(PublishError::ServerEvent {
                event: event.to_owned(),
            });
        }
        let mut outgoing = Vec::new();
        let position = self.hub.publish(&topic, event, payload, now, &mut outgoing);
        Ok(Published { outgoing, position })
    }

    /// Time passed: every connection idle for [`Limits::idle_timeout`] at `now`, or whose
    /// token has expired, closes; presence diffs whose window has passed go out; streams
    /// quiet for their TTL are dropped.
    pub fn tick(&mut self, now: Time) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for id in self.connections() {
            if let Some(index) = self.index(id) {
                self.connections[index].1.handle_tick(now);
                self.drive(id, now, &mut out);
            }
        }
        self.hub.streams.retain(|(_, ring)| !ring.is_expired(now));
        self.hub.flush(now, &mut out);
        out
    }

    /// When [`tick`](Self::tick) next has something to do: a connection turns idle or its
    /// token expires (unless it speaks first), or a held presence diff is due; `None` when
    /// nothing is pending.
    #[must_use]
    pub fn next_timeout(&self) -> Option<Time> {
        let connections = self
            .connections
            .iter()
            .filter_map(|(_, connection)| connection.poll_timeout())
            .min();
        match (connections, self.next_presence_diff()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the next held presence diff is due (the end of its topic's batching window), if
    /// one waits. Unlike idle timeouts, it is an event a test may be waiting for.
    #[must_use]
    pub fn next_presence_diff(&self) -> Option<Time> {
        self.hub
            .presences
            .iter()
            .filter(|(_, watched)| watched.table.has_changes())
            .filter_map(|(_, watched)| watched.last_diff)
            .min()
            .map(|last| last + PRESENCE_BATCH_WINDOW)
    }

    /// Applies `input` to connection `id` at `now` and performs what follows.
    fn input(
        &mut self,
        id: SessionId,
        now: Time,
        input: impl FnOnce(&mut Connection),
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if let Some(index) = self.index(id) {
            input(&mut self.connections[index].1);
            self.drive(id, now, &mut out);
            self.hub.flush(now, &mut out);
        }
        out
    }

    /// Performs everything connection `id`'s engine asks for, as the node's session and hub
    /// do; forgets the connection once it has closed.
    ///
    /// What a join recovered is held, as the node's hub holds the socket's queue, until the
    /// connection's own frames (the reply, the list) have gone out. A join is answered within
    /// the input that made it, so no frame ever waits behind one here.
    fn drive(&mut self, id: SessionId, now: Time, out: &mut Vec<Outgoing>) {
        let Some(index) = self.index(id) else {
            return;
        };
        let connection = &mut self.connections[index].1;
        let hub = &mut self.hub;
        let mut held: Vec<Outgoing> = Vec::new();
        loop {
            let Some(output) = connection.poll() else {
                if held.is_empty() {
                    break;
                }
                out.append(&mut held);
                continue;
            };
            match output {
                Output::Send(text) => out.push(Outgoing::Frame { to: id, text }),
                Output::Join {
                    topic,
                    join,
                    since,
                    presence,
                } => {
                    let entered = hub.join(id, &topic, since, presence, now);
                    connection.handle_join_answer(&topic, join, entered.answer, now);
                    if let Some(state) = &entered.state {
                        connection.handle_presence_state(&topic, state);
                    }
                    for publication in &entered.recovered {
                        let position = publication.position.to_string();
                        held.push(Outgoing::Frame {
                            to: id,
                            text: encode_parts(
                                None,
                                Some(&position),
                                topic.as_str(),
                                &publication.event,
                                publication.payload.get(),
                            ),
                        });
                    }
                }
                Output::Leave { topic } => hub.leave(id, &topic),
                Output::Publish {
                    topic,
                    event,
                    payload,
                    ack,
                } => {
                    let _position = hub.publish(&topic, &event, &payload, now, out);
                    if let Some(ack) = ack {
                        connection.handle_publish_answer(ack, &PublishAnswer::Everywhere);
                    }
                }
                Output::PresenceUpdate { topic, meta, ack } => {
                    let answer = hub.update(id, &topic, meta);
                    if let Some(ack) = ack {
                        connection.handle_publish_answer(ack, &answer);
                    }
                }
                Output::Close { code, reason } => {
                    held.clear();
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

    /// Forgets connection `id`: its subscriptions and presence members go. Whether it was
    /// open.
    fn forget(&mut self, id: SessionId) -> bool {
        let _ = self.hub.registry.disconnect(id);
        self.hub.forget(id);
        let index = self.index(id);
        index.map(|index| self.connections.remove(index)).is_some()
    }
}

/// Session ids in allocation order: the order connections were opened.
fn sorted(ids: impl Iterator<Item = SessionId>) -> Vec<SessionId> {
    // A binary heap rather than `sort_unstable`: the WebAssembly build already links it for
    // the same job, and a second sort would cost the module about 2 KB.
    ids.collect::<BinaryHeap<_>>().into_sorted_vec()
}
