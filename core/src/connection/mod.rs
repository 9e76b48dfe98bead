//! The Phoenix Channels V2 protocol of one client connection, as a sans-IO state machine.
//!
//! A [`Connection`] holds everything the protocol remembers about one socket (which topics it
//! joined and with which `join_ref`, joins still waiting for the server, its rate limits, when
//! it last spoke) and decides every answer: replies, `phx_close`, error reasons, close codes,
//! and their order. It does no I/O and reads no clock. The node's session actor and the
//! WebAssembly fake server are thin shells around it, so both answer every frame the same way.
//!
//! # Driving a [`Connection`]
//!
//! 1. Create one per socket with [`Connection::new`] once the socket is accepted (its user,
//!    if any, already authenticated).
//! 2. Feed it what the socket receives: [`handle_text`](Connection::handle_text) for each text
//!    message, [`handle_binary`](Connection::handle_binary),
//!    [`handle_oversized`](Connection::handle_oversized) and
//!    [`handle_protocol_error`](Connection::handle_protocol_error) for what the transport
//!    refused, [`touch`](Connection::touch) for pings and pongs.
//! 3. After every input, drain [`poll`](Connection::poll) and perform each [`Output`] in
//!    order. [`Output::Join`] and [`Output::Publish`] (with an ack) must be answered, later,
//!    with [`handle_join_answer`](Connection::handle_join_answer) and
//!    [`handle_publish_answer`](Connection::handle_publish_answer); drain `poll` after those
//!    too.
//! 4. Call [`handle_tick`](Connection::handle_tick) at [`poll_timeout`](Connection::poll_timeout)
//!    (or any time after); it closes an idle socket.
//! 5. After [`Output::Close`] the connection is finished: close the socket, undo its
//!    subscriptions, and drop it. A server that closes a socket itself (a slow consumer,
//!    shutdown) calls [`close`](Connection::close) to get the same output.
//!
//! Broadcasts never pass through here: the server writes them to the socket directly, encoded
//! once for every subscriber.
//!
//! # Order
//!
//! Frames are answered in the order they arrive, with one exception that keeps a slow join
//! from stalling the socket: while a join waits for the server ([`Output::Join`] not yet
//! answered), frames about *that* topic wait inside the connection (at most
//! [`MAX_WAITING_FRAMES`] and [`MAX_WAITING_BYTES`] in all) and are handled, in order, right
//! after the join's answer.
//! Frames about other topics and heartbeats go on meanwhile.

mod io;
mod limits;
#[cfg(any(test, feature = "model"))]
pub mod model;
pub mod reasons;

use std::collections::VecDeque;
use std::sync::Arc;

pub use io::{
    JoinAnswer, JoinId, JoinRefusal, Output, PresenceJoin, PublishAnswer, PushAck, Reach, Refusal,
};
pub use limits::Limits;

use crate::codec::{decode_request_addressed, encode_close, encode_parts, encode_reply, Rejected};
use crate::compact::Map;
use crate::frame::{ClientFrame, Payload, Reply, Request};
use crate::history::Position;
use crate::presence::{self, Identity, Meta, MetaError, PresenceRules};
use crate::rate::TokenBucket;
use crate::{ChannelRules, Time, Topic};

/// Most frames that may wait for pending joins at once; one more is refused with
/// [`reasons::TOO_MANY_WAITING`].
pub const MAX_WAITING_FRAMES: usize = 64;

/// Most bytes of frames (payloads, events, refs) that may wait for pending joins at once; a
/// frame that would pass it is refused like one frame too many.
pub const MAX_WAITING_BYTES: usize = 64 * 1024;

/// The response of a join that reaches this node only (the bridge is down).
const LOCAL_ONLY_RESPONSE: &str = r#"{"upstream":"unavailable"}"#;

/// A topic's membership, as this connection sees it.
#[derive(Debug)]
enum Membership {
    /// The join was handed to the driver and is not answered yet.
    Joining {
        join: JoinId,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        /// Frames about this topic that arrived meanwhile, in order.
        waiting: VecDeque<ClientFrame>,
        /// The server ended the membership this join is making before its answer came
        /// ([`Connection::handle_stream_broken`]): once answered, it ends at once.
        broken: bool,
    },
    /// Joined; requests must carry this `join_ref` (or none).
    Joined { join_ref: Option<String> },
}

/// One client connection (see the module documentation for the driving contract).
#[derive(Debug)]
pub struct Connection {
    limits: Arc<Limits>,
    rules: Arc<ChannelRules>,
    user: Option<String>,
    presence: Arc<PresenceRules>,
    identity: Identity,
    memberships: Map<Topic, Membership>,
    waiting: usize,
    waiting_bytes: usize,
    pushes: TokenBucket,
    joins: TokenBucket,
    last_input: Time,
    /// When the socket's token stops being accepted: the connection closes then.
    expires: Option<Time>,
    next_join: u64,
    outputs: VecDeque<Output>,
    closed: bool,
}

impl Connection {
    /// A new connection at `now`, for `user` (the token's `sub`; `None` on an open server or
    /// for a socket without a token), applying `limits` and `rules`.
    #[must_use]
    pub fn new(
        limits: Arc<Limits>,
        rules: Arc<ChannelRules>,
        user: Option<String>,
        now: Time,
    ) -> Self {
        Self {
            pushes: TokenBucket::new(limits.push_rate, limits.push_burst, now),
            joins: TokenBucket::new(limits.join_rate, limits.join_burst, now),
            limits,
            rules,
            user,
            presence: Arc::new(PresenceRules::none()),
            identity: Identity::default(),
            memberships: Map::default(),
            waiting: 0,
            waiting_bytes: 0,
            last_input: now,
            expires: None,
            next_join: 0,
            outputs: VecDeque::new(),
            closed: false,
        }
    }

    /// The same connection, tracking presence on the topics `rules` name as `identity`.
    #[must_use]
    pub fn with_presence(mut self, rules: Arc<PresenceRules>, identity: Identity) -> Self {
        self.presence = rules;
        self.identity = identity;
        self
    }

    /// The same connection, closed with [`reasons::close::TOKEN_EXPIRED`] at `at` (when its
    /// token stops being accepted).
    #[must_use]
    pub const fn with_expiry(mut self, at: Time) -> Self {
        self.expires = Some(at);
        self
    }

    /// The next thing to do, oldest first; `None` when there is nothing.
    pub fn poll(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_tick`](Self::handle_tick) should run next; `None` once closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        let idle = self.last_input + self.limits.idle_timeout;
        (!self.closed).then(|| self.expires.map_or(idle, |expires| expires.min(idle)))
    }

    /// When the socket's token stops being accepted, if it has one.
    #[must_use]
    pub const fn expires(&self) -> Option<Time> {
        self.expires
    }

    /// Whether the connection has closed (an [`Output::Close`] was issued).
    #[must_use]
    pub const fn is_closed(&self) -> bool {
        self.closed
    }

    /// The limits this connection applies.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The user this connection belongs to.
    #[must_use]
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Topics joined (answered ok), in no particular order.
    pub fn joined(&self) -> impl Iterator<Item = &Topic> + '_ {
        self.memberships
            .iter()
            .filter(|(_, membership)| matches!(membership, Membership::Joined { .. }))
            .map(|(topic, _)| topic)
    }

    /// Topics whose join waits for the driver's answer (but for joins whose membership the
    /// server already ended: see [`handle_stream_broken`](Self::handle_stream_broken)).
    pub fn joining(&self) -> impl Iterator<Item = &Topic> + '_ {
        self.memberships
            .iter()
            .filter(|(_, membership)| {
                matches!(membership, Membership::Joining { broken: false, .. })
            })
            .map(|(topic, _)| topic)
    }

    /// A text message arrived at `now`.
    pub fn handle_text(&mut self, text: &str, now: Time) {
        if self.closed {
            return;
        }
        self.last_input = self.last_input.max(now);
        match decode_request_addressed(text, self.limits.max_frame_bytes) {
            Ok(frame) => self.handle_frame(frame, now),
            Err(Rejected {
                error,
                reply_to: Some(to),
            }) => {
                self.refused(Refusal::Protocol);
                let reason = error.to_string();
                self.send(encode_reply(
                    to.join_ref.as_deref(),
                    to.msg_ref.as_deref(),
                    &to.topic,
                    &Reply::Error { reason: &reason },
                ));
            }
            Err(Rejected {
                error,
                reply_to: None,
            }) => {
                self.refused(Refusal::Protocol);
                self.close(reasons::close::NOT_A_FRAME, &error.to_string());
            }
        }
    }

    /// A text message arrived as bytes (reassembled from fragments): checked for UTF-8, then
    /// as [`handle_text`](Self::handle_text).
    pub fn handle_text_bytes(&mut self, bytes: &[u8], now: Time) {
        if self.closed {
            return;
        }
        if let Ok(text) = std::str::from_utf8(bytes) {
            self.handle_text(text, now);
        } else {
            self.last_input = self.last_input.max(now);
            self.refused(Refusal::Protocol);
            self.close(reasons::close::NOT_A_FRAME, "frame is not valid UTF-8");
        }
    }

    /// A binary message arrived: only the JSON serializer is spoken.
    pub fn handle_binary(&mut self, now: Time) {
        self.transport_refusal(reasons::close::BINARY, now);
    }

    /// A message over [`Limits::max_frame_bytes`] arrived (the transport stopped reading it).
    pub fn handle_oversized(&mut self, now: Time) {
        self.transport_refusal(reasons::close::TOO_LARGE, now);
    }

    /// The transport saw a WebSocket protocol violation.
    pub fn handle_protocol_error(&mut self, now: Time) {
        self.transport_refusal(reasons::close::PROTOCOL, now);
    }

    /// The client showed it is alive without a text message (a ping or pong).
    pub fn touch(&mut self, now: Time) {
        self.last_input = self.last_input.max(now);
    }

    /// Time passed: closes the socket when its token has expired, or when it has been idle for
    /// [`Limits::idle_timeout`].
    pub fn handle_tick(&mut self, now: Time) {
        if self.closed {
            return;
        }
        if self.expires.is_some_and(|expires| now >= expires) {
            let (code, reason) = reasons::close::TOKEN_EXPIRED;
            self.close(code, reason);
        } else if now.saturating_duration_since(self.last_input) >= self.limits.idle_timeout {
            self.close(reasons::close::IDLE.0, reasons::close::IDLE.1);
        }
    }

    /// The server closes the socket (slow consumer, shutdown).
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.outputs.push_back(Output::Close {
            code,
            reason: reason.to_owned(),
        });
    }

    /// The driver's answer to the [`Output::Join`] with id `join` for `topic`. An answer for a
    /// join that is no longer pending is ignored.
    pub fn handle_join_answer(
        &mut self,
        topic: &Topic,
        join: JoinId,
        answer: JoinAnswer,
        now: Time,
    ) {
        if self.closed {
            return;
        }
        let pending = matches!(
            self.memberships.get(topic),
            Some(Membership::Joining { join: id, .. }) if *id == join
        );
        if !pending {
            return;
        }
        let Some(Membership::Joining {
            join_ref,
            msg_ref,
            waiting,
            broken,
            ..
        }) = self.memberships.remove(topic)
        else {
            return;
        };
        self.waiting -= waiting.len();
        self.waiting_bytes -= waiting.iter().map(weight).sum::<usize>();
        match answer {
            JoinAnswer::Joined(reach) => {
                let reply = match reach {
                    Reach::Everywhere => encode_reply(
                        join_ref.as_deref(),
                        msg_ref.as_deref(),
                        topic.as_str(),
                        &Reply::OkEmpty,
                    ),
                    Reach::LocalOnly => encode_reply(
                        join_ref.as_deref(),
                        msg_ref.as_deref(),
                        topic.as_str(),
                        &Reply::Ok(&local_only_response()),
                    ),
                };
                self.memberships
                    .insert(topic.clone(), Membership::Joined { join_ref });
                self.send(reply);
            }
            JoinAnswer::JoinedAt {
                position,
                recovered,
            } => {
                let response = history_response(&position, recovered);
                let reply = encode_reply(
                    join_ref.as_deref(),
                    msg_ref.as_deref(),
                    topic.as_str(),
                    &Reply::Ok(&response),
                );
                self.memberships
                    .insert(topic.clone(), Membership::Joined { join_ref });
                self.send(reply);
            }
            JoinAnswer::Refused(refusal) => {
                if refusal == JoinRefusal::TooManyTopics {
                    self.refused(Refusal::Protocol);
                }
                let reason = refusal.to_string();
                self.send(encode_reply(
                    join_ref.as_deref(),
                    msg_ref.as_deref(),
                    topic.as_str(),
                    &Reply::Error { reason: &reason },
                ));
            }
        }
        if broken {
            self.handle_stream_broken(topic);
        }
        for frame in waiting {
            if self.closed {
                break;
            }
            self.handle_frame(frame, now);
        }
    }

    /// The server has ended this socket's membership of `topic` because it can no longer
    /// vouch for the topic's stream (publications may have been lost on their way to this
    /// node: its backend link went down, or a position was skipped). The client is told with
    /// `phx_error` under the membership's `join_ref`, as Phoenix does when a channel crashes;
    /// phoenix.js then rejoins with backoff, with `since` when its params ask to recover.
    ///
    /// The driver has already unsubscribed the socket, so no [`Output::Leave`] follows. A
    /// join still waiting for its answer ends the same way right after that answer (the
    /// membership it makes was ended before it began); a topic not joined is ignored.
    pub fn handle_stream_broken(&mut self, topic: &Topic) {
        if self.closed {
            return;
        }
        match self.memberships.get_mut(topic) {
            Some(Membership::Joined { .. }) => {
                if let Some(Membership::Joined { join_ref }) = self.memberships.remove(topic) {
                    self.send(encode_parts(
                        join_ref.as_deref(),
                        join_ref.as_deref(),
                        topic.as_str(),
                        crate::frame::events::ERROR,
                        "{}",
                    ));
                }
            }
            Some(Membership::Joining { broken, .. }) => *broken = true,
            None => {}
        }
    }

    /// The presence list of `topic` (a `presence_state` payload), for the socket that just
    /// joined it: sent right after the join's reply, with the join's `join_ref`. Ignored
    /// unless the topic is joined.
    pub fn handle_presence_state(&mut self, topic: &Topic, state: &Payload) {
        if self.closed {
            return;
        }
        let Some(Membership::Joined { join_ref }) = self.memberships.get(topic) else {
            return;
        };
        let frame = encode_parts(
            join_ref.as_deref(),
            None,
            topic.as_str(),
            presence::PRESENCE_STATE,
            state.get(),
        );
        self.send(frame);
    }

    /// The driver's answer to an [`Output::Publish`] (or [`Output::PresenceUpdate`]) that
    /// carried `ack`.
    pub fn handle_publish_answer(&mut self, ack: PushAck, answer: &PublishAnswer) {
        if self.closed {
            return;
        }
        let reply = match answer {
            PublishAnswer::Everywhere => Reply::OkEmpty,
            PublishAnswer::LocalOnly => Reply::Error {
                reason: reasons::UPSTREAM_DOWN,
            },
            PublishAnswer::Refused(reason) => {
                self.refused(Refusal::Protocol);
                Reply::Error { reason }
            }
            PublishAnswer::Overloaded => {
                self.refused(Refusal::Protocol);
                Reply::Error {
                    reason: reasons::OVERLOADED,
                }
            }
        };
        self.send(encode_reply(
            ack.join_ref.as_deref(),
            Some(&ack.msg_ref),
            ack.topic.as_str(),
            &reply,
        ));
    }

    fn handle_frame(&mut self, frame: ClientFrame, now: Time) {
        if frame.request == Request::Heartbeat {
            self.reply(&frame, &Reply::OkEmpty);
            return;
        }
        if let Some(Membership::Joining { waiting, .. }) = self.memberships.get_mut(&frame.topic) {
            let bytes = weight(&frame);
            if self.waiting < MAX_WAITING_FRAMES && self.waiting_bytes + bytes <= MAX_WAITING_BYTES
            {
                waiting.push_back(frame);
                self.waiting += 1;
                self.waiting_bytes += bytes;
            } else {
                self.refused(Refusal::Protocol);
                self.reply_error(&frame, reasons::TOO_MANY_WAITING);
            }
            return;
        }
        match &frame.request {
            Request::Join { .. } => self.join(frame, now),
            Request::Leave => self.leave(&frame, now),
            Request::Push { event, payload } => {
                let (event, payload) = (event.clone(), payload.clone());
                self.push(&frame, event, payload, now);
            }
            // The codec may learn new requests; an unknown one is answered, never dropped.
            _ => self.reply_error(&frame, reasons::UNSUPPORTED),
        }
    }

    fn join(&mut self, frame: ClientFrame, now: Time) {
        let len = frame.topic.as_str().len();
        if len > self.limits.max_topic_bytes {
            self.refused(Refusal::Protocol);
            let reason = format!(
                "invalid topic: topic is {len} bytes long; the limit is {} bytes",
                self.limits.max_topic_bytes
            );
            self.reply_error(&frame, &reason);
            return;
        }
        if !self.joins.try_take(now) {
            self.refused(Refusal::RateLimited);
            self.reply_error(&frame, reasons::JOIN_RATE_LIMITED);
            return;
        }
        if !self.rules.may_join(&frame.topic, self.user.as_deref()) {
            self.refused(Refusal::Unauthorized);
            self.reply_error(&frame, reasons::UNAUTHORIZED);
            return;
        }
        if let Some(Membership::Joined { join_ref }) = self.memberships.remove(&frame.topic) {
            // A second join closes the old membership, then joins anew (Phoenix does the
            // same): the new join gets its own answer (a position, a recovery, presence).
            self.outputs.push_back(Output::Leave {
                topic: frame.topic.clone(),
            });
            self.send(encode_close(join_ref.as_deref(), frame.topic.as_str()));
        }
        if self.memberships.len() >= self.limits.max_topics {
            self.refused(Refusal::Protocol);
            self.reply_error(&frame, reasons::TOO_MANY_CHANNELS);
            return;
        }
        let JoinParams { since, presence } = match join_params(&frame) {
            Ok(params) => params,
            Err(reason) => {
                self.refused(Refusal::Protocol);
                self.reply_error(&frame, &reason);
                return;
            }
        };
        let presence = match self.presence_join(&frame.topic, presence.as_ref()) {
            Ok(presence) => presence,
            Err(reason) => {
                self.refused(Refusal::Protocol);
                self.reply_error(&frame, &reason);
                return;
            }
        };
        self.next_join += 1;
        let join = JoinId(self.next_join);
        let topic = frame.topic.clone();
        self.memberships.insert(
            topic.clone(),
            Membership::Joining {
                join,
                join_ref: frame.join_ref,
                msg_ref: frame.msg_ref,
                waiting: VecDeque::new(),
                broken: false,
            },
        );
        self.outputs.push_back(Output::Join {
            topic,
            join,
            since,
            presence,
        });
    }

    /// What a join of `topic` tracks: `None` when the topic has no presence; the socket's key
    /// and meta (`info` over the join's `presence` parameter) when it does.
    fn presence_join(
        &self,
        topic: &Topic,
        client: Option<&Meta>,
    ) -> Result<Option<PresenceJoin>, String> {
        if !self.presence.applies(topic) {
            return match client {
                None => Ok(None),
                Some(_) => Err(reasons::PRESENCE_OFF.to_owned()),
            };
        }
        let Some(key) = self.identity.key.clone() else {
            return match client {
                None => Ok(Some(PresenceJoin {
                    key: None,
                    meta: Meta::empty(),
                })),
                Some(_) => Err(reasons::PRESENCE_NO_KEY.to_owned()),
            };
        };
        presence::meta::check_key(&key).map_err(|err| err.to_string())?;
        let meta = self.meta(client).map_err(|err| err.to_string())?;
        Ok(Some(PresenceJoin {
            key: Some(key),
            meta,
        }))
    }

    /// The meta of this socket's membership: its `info` over what the client sent.
    fn meta(&self, client: Option<&Meta>) -> Result<Meta, MetaError> {
        Meta::merge(
            self.identity.info.as_ref(),
            client,
            self.presence.max_meta_bytes,
        )
    }

    fn leave(&mut self, frame: &ClientFrame, now: Time) {
        // Leaves spend join tokens when there are any, so join/leave churn is bounded by the
        // join rate, but a leave itself is never refused: refusing it would keep a socket
        // subscribed that its client believes gone.
        let _ = self.joins.try_take(now);
        let current = match self.memberships.get(&frame.topic) {
            Some(Membership::Joined { join_ref }) => join_ref,
            // Not joined (or an older membership that is gone): Phoenix answers ok.
            _ => {
                self.reply(frame, &Reply::OkEmpty);
                return;
            }
        };
        if frame.join_ref.is_some() && *current != frame.join_ref {
            // A leave of a membership a later join replaced: it is gone already.
            self.reply(frame, &Reply::OkEmpty);
            return;
        }
        let join_ref = current.clone();
        self.memberships.remove(&frame.topic);
        self.outputs.push_back(Output::Leave {
            topic: frame.topic.clone(),
        });
        self.reply(frame, &Reply::OkEmpty);
        self.send(encode_close(join_ref.as_deref(), frame.topic.as_str()));
    }

    fn push(&mut self, frame: &ClientFrame, event: String, payload: Payload, now: Time) {
        let current = match self.memberships.get(&frame.topic) {
            Some(Membership::Joined { join_ref }) => join_ref,
            _ => {
                self.refused(Refusal::Protocol);
                self.reply_unaddressed(frame, reasons::UNMATCHED_TOPIC);
                return;
            }
        };
        if frame.join_ref.is_some() && *current != frame.join_ref {
            self.refused(Refusal::Protocol);
            self.reply_unaddressed(frame, reasons::STALE_JOIN_REF);
            return;
        }
        if self.presence.applies(&frame.topic) {
            if presence::SERVER_EVENTS.contains(&event.as_str()) {
                self.refused(Refusal::Protocol);
                self.reply_error(frame, reasons::PRESENCE_SERVER_EVENT);
                return;
            }
            if event == presence::PRESENCE_UPDATE {
                self.presence_update(frame, &payload, now);
                return;
            }
        }
        if !self.rules.may_push(&frame.topic, self.user.as_deref()) {
            self.refused(Refusal::Unauthorized);
            self.reply_error(frame, reasons::UNAUTHORIZED);
            return;
        }
        if !self.pushes.try_take(now) {
            self.refused(Refusal::RateLimited);
            self.reply_error(frame, reasons::RATE_LIMITED);
            return;
        }
        let ack = frame.msg_ref.clone().map(|msg_ref| PushAck {
            join_ref: frame.join_ref.clone(),
            msg_ref,
            topic: frame.topic.clone(),
        });
        self.outputs.push_back(Output::Publish {
            topic: frame.topic.clone(),
            event,
            payload,
            ack,
        });
    }

    /// A `presence_update` push on a joined presence topic: the socket's new meta.
    fn presence_update(&mut self, frame: &ClientFrame, payload: &Payload, now: Time) {
        if self.identity.key.is_none() {
            self.refused(Refusal::Protocol);
            self.reply_error(frame, reasons::PRESENCE_NO_KEY);
            return;
        }
        if !self.pushes.try_take(now) {
            self.refused(Refusal::RateLimited);
            self.reply_error(frame, reasons::RATE_LIMITED);
            return;
        }
        let meta = Meta::parse(payload.get(), "the presence_update payload")
            .and_then(|client| self.meta(Some(&client)));
        let meta = match meta {
            Ok(meta) => meta,
            Err(err) => {
                self.refused(Refusal::Protocol);
                self.reply_error(frame, &err.to_string());
                return;
            }
        };
        let ack = frame.msg_ref.clone().map(|msg_ref| PushAck {
            join_ref: frame.join_ref.clone(),
            msg_ref,
            topic: frame.topic.clone(),
        });
        self.outputs.push_back(Output::PresenceUpdate {
            topic: frame.topic.clone(),
            meta,
            ack,
        });
    }

    fn transport_refusal(&mut self, (code, reason): (u16, &str), now: Time) {
        if self.closed {
            return;
        }
        self.last_input = self.last_input.max(now);
        self.refused(Refusal::Protocol);
        self.close(code, reason);
    }

    fn send(&mut self, text: String) {
        self.outputs.push_back(Output::Send(text));
    }

    fn refused(&mut self, refusal: Refusal) {
        self.outputs.push_back(Output::Refused(refusal));
    }

    fn reply(&mut self, frame: &ClientFrame, reply: &Reply<'_>) {
        self.send(encode_reply(
            frame.join_ref.as_deref(),
            frame.msg_ref.as_deref(),
            frame.topic.as_str(),
            reply,
        ));
    }

    fn reply_error(&mut self, frame: &ClientFrame, reason: &str) {
        self.reply(frame, &Reply::Error { reason });
    }

    /// An error reply that names no membership (`join_ref` null), as Phoenix answers requests
    /// it cannot route: phoenix.js matches it to the push by its ref alone.
    fn reply_unaddressed(&mut self, frame: &ClientFrame, reason: &str) {
        self.send(encode_reply(
            None,
            frame.msg_ref.as_deref(),
            frame.topic.as_str(),
            &Reply::Error { reason },
        ));
    }
}

/// The join's parameters the protocol reads. Other parameters are the application's.
#[derive(Debug, Default)]
struct JoinParams {
    /// `since`: the last position the client saw (a string `"<offset>:<epoch>"`, or null).
    since: Option<Position>,
    /// `presence`: what the client says about itself on a presence topic (an object, or null).
    presence: Option<Meta>,
}

fn join_params(frame: &ClientFrame) -> Result<JoinParams, String> {
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(default, borrow)]
        since: Option<&'a serde_json::value::RawValue>,
        #[serde(default, borrow)]
        presence: Option<&'a serde_json::value::RawValue>,
    }
    let Request::Join { payload } = &frame.request else {
        return Ok(JoinParams::default());
    };
    if payload.get() == "{}" {
        return Ok(JoinParams::default());
    }
    let params: Params<'_> = serde_json::from_str(payload.get())
        .map_err(|err| format!("invalid join parameters: {err}"))?;
    let since = match params.since.map(serde_json::value::RawValue::get) {
        None | Some("null") => None,
        Some(text) => Some(
            serde_json::from_str::<&str>(text)
                .ok()
                .ok_or_else(|| {
                    "invalid since: a position is a string \"<offset>:<epoch>\"".to_owned()
                })?
                .parse()
                .map_err(|err| format!("invalid since: {err}"))?,
        ),
    };
    let presence = match params.presence {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => {
            Some(Meta::parse(raw.get(), "the presence parameter").map_err(|err| err.to_string())?)
        }
    };
    Ok(JoinParams { since, presence })
}

/// What a waiting frame costs, near enough: its variable parts.
fn weight(frame: &ClientFrame) -> usize {
    let request = match &frame.request {
        Request::Join { payload } => payload.get().len(),
        Request::Push { event, payload } => event.len() + payload.get().len(),
        _ => 0,
    };
    request
        + frame.topic.as_str().len()
        + frame.join_ref.as_ref().map_or(0, String::len)
        + frame.msg_ref.as_ref().map_or(0, String::len)
}

/// `{"position":"<offset>:<epoch>"}`, with `"recovered"` when the client named a position.
fn history_response(position: &Position, recovered: Option<bool>) -> Payload {
    let mut text = format!(r#"{{"position":"{position}""#);
    if let Some(recovered) = recovered {
        text.push_str(if recovered {
            r#","recovered":true"#
        } else {
            r#","recovered":false"#
        });
    }
    text.push('}');
    // unwrap: a position is digits, ':' and letters, so the text is valid JSON (tested).
    Payload::from_json_string(text).expect("valid JSON")
}

fn local_only_response() -> Payload {
    // unwrap: the constant is valid JSON (a unit test parses it).
    Payload::from_json(LOCAL_ONLY_RESPONSE).expect("valid JSON constant")
}

#[cfg(test)]
mod tests;
