//! One WebSocket: a session actor that speaks Phoenix Channels V2 JSON.
//!
//! The session registers with the hub in `started` (and handles no frame before the hub has
//! answered), tracks the `join_ref` of every topic it joined, turns client frames into hub
//! messages, sends the hub's deliveries as they are, and unregisters in `stopped`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use switchboard_core::{
    decode_request_addressed, encode_close, encode_reply, ClientFrame, Rejected, Reply, Request,
    SessionId, SubscribeError, Topic,
};
use tracing::debug;

use crate::connections::ConnectionSlot;
use crate::hub::{Connect, Disconnect, Hub, Publish, Subscribe, Unsubscribe};
use crate::metrics::{self, Metrics};
use crate::outbox::{Flush, FrameQueue, Outbox};
use crate::rate_limit::TokenBucket;
use crate::security::{Identity, Security};
use crate::transport::{self, Item, Message, ProtocolError, SocketContext};
use crate::upstream::MessageLimit;

/// Messages a session's mailbox holds: deliveries do not go through it (they wait in the
/// session's [`FrameQueue`] and at most one [`Flush`] is outstanding), so this bounds only
/// closes and wake-ups.
pub const SESSION_MAILBOX_CAPACITY: usize = 16;

/// Close codes and reasons the session sends.
pub mod close {
    /// No frame for the idle timeout.
    pub const IDLE: (u16, &str) = (1000, "idle timeout");
    /// The node is shutting down.
    pub const SHUTDOWN: (u16, &str) = (1001, "server shutting down");
    /// A binary message (only the JSON serializer is spoken).
    pub const BINARY: (u16, &str) = (1003, "binary frames are not supported");
    /// A message that is not a Phoenix V2 frame (the reason is the decode error).
    pub const NOT_A_FRAME: u16 = 1007;
    /// A message over the size limit.
    pub const TOO_LARGE: (u16, &str) = (1009, "frame too large");
    /// A WebSocket protocol violation.
    pub const PROTOCOL: (u16, &str) = (1002, "websocket protocol error");
}

/// The error reason of a join or push the channel rules refuse.
pub const UNAUTHORIZED: &str = "unauthorized";

/// The error reason of a push over the socket's rate limit.
pub const RATE_LIMITED: &str = "rate limit exceeded";

/// The error reason of a push made while the bridge is down.
pub const UPSTREAM_DOWN: &str = "upstream unavailable: delivered on this node only";

/// The limits every session applies.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Largest message accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Close after this long without a frame.
    pub idle_timeout: Duration,
    /// Unsent bytes allowed before the session is a slow consumer.
    pub send_buffer_bytes: usize,
    /// Longest topic a socket may join, in bytes.
    pub max_topic_bytes: usize,
    /// Pushes per second (refill rate of the push bucket).
    pub push_rate: u32,
    /// Size of the push bucket.
    pub push_burst: u32,
    /// Whether a bridge shares publishes with other nodes (then a push made while it is down
    /// is answered with an error, though local subscribers got it).
    pub bridged: bool,
    /// The backend's largest message (PostgreSQL: 7999 bytes of envelope), if it has one: a
    /// push over it is refused whole (delivered nowhere) with an error reply naming the limit.
    pub upstream_limit: Option<MessageLimit>,
}

/// Tells a session to close its socket with `code` and `reason`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CloseSession {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason.
    pub reason: &'static str,
}

/// One WebSocket connection.
#[derive(Debug)]
pub struct WsSession {
    id: Option<SessionId>,
    hub: Addr<Hub>,
    /// Topic → the `join_ref` of the current membership.
    joined: HashMap<Topic, Option<String>>,
    queue: Arc<FrameQueue>,
    limits: Arc<SessionLimits>,
    metrics: Arc<Metrics>,
    security: Arc<Security>,
    identity: Identity,
    pushes: TokenBucket,
    /// Held for the session's life: its place under the node's connection limit.
    _slot: ConnectionSlot,
    last_frame: Instant,
    /// A fragmented text message being reassembled.
    fragments: Option<Vec<u8>>,
}

impl WsSession {
    /// A session that will register with `hub`, for the socket of `identity`.
    #[must_use]
    pub fn new(
        hub: Addr<Hub>,
        limits: Arc<SessionLimits>,
        metrics: Arc<Metrics>,
        security: Arc<Security>,
        identity: Identity,
        slot: ConnectionSlot,
    ) -> Self {
        let now = Instant::now();
        Self {
            id: None,
            hub,
            joined: HashMap::new(),
            queue: Arc::new(FrameQueue::new(limits.send_buffer_bytes)),
            pushes: TokenBucket::new(limits.push_rate, limits.push_burst, now),
            limits,
            metrics,
            security,
            identity,
            _slot: slot,
            last_frame: now,
            fragments: None,
        }
    }

    fn send(&self, ctx: &mut SocketContext, text: String) {
        metrics::add(&self.metrics.frames_out, 1);
        ctx.text(text);
    }

    fn reply(&self, ctx: &mut SocketContext, frame: &ClientFrame, reply: &Reply<'_>) {
        let text = encode_reply(
            frame.join_ref.as_deref(),
            frame.msg_ref.as_deref(),
            frame.topic.as_str(),
            reply,
        );
        self.send(ctx, text);
    }

    fn close_with(&self, ctx: &mut SocketContext, (code, reason): (u16, &str)) {
        transport::close(ctx, code, reason);
        ctx.stop();
    }

    fn handle_text(&mut self, text: &str, ctx: &mut SocketContext) {
        metrics::add(&self.metrics.frames_in, 1);
        match decode_request_addressed(text, self.limits.max_frame_bytes) {
            Ok(frame) => self.handle_frame(frame, ctx),
            Err(Rejected {
                error,
                reply_to: Some(to),
            }) => {
                metrics::add(&self.metrics.protocol_errors, 1);
                let reason = error.to_string();
                let text = encode_reply(
                    to.join_ref.as_deref(),
                    to.msg_ref.as_deref(),
                    &to.topic,
                    &Reply::Error { reason: &reason },
                );
                self.send(ctx, text);
            }
            Err(Rejected {
                error,
                reply_to: None,
            }) => {
                metrics::add(&self.metrics.protocol_errors, 1);
                debug!(session = ?self.id, %error, "not a Phoenix frame; closing");
                self.close_with(ctx, (close::NOT_A_FRAME, &error.to_string()));
            }
        }
    }

    fn handle_frame(&mut self, frame: ClientFrame, ctx: &mut SocketContext) {
        match &frame.request {
            Request::Heartbeat => self.reply(ctx, &frame, &Reply::OkEmpty),
            Request::Join { .. } => self.join(frame, ctx),
            Request::Leave => {
                if self.check_membership(&frame, ctx) {
                    self.joined.remove(&frame.topic);
                    if let Some(session) = self.id {
                        self.hub.do_send(Unsubscribe {
                            session,
                            topic: frame.topic.clone(),
                        });
                    }
                    self.reply(ctx, &frame, &Reply::OkEmpty);
                    let close = encode_close(frame.join_ref.as_deref(), frame.topic.as_str());
                    self.send(ctx, close);
                }
            }
            Request::Push { event, payload } => {
                if self.check_membership(&frame, ctx) && self.may_push(&frame, ctx) {
                    if let Some(Err(too_large)) = self
                        .limits
                        .upstream_limit
                        .map(|limit| limit.check(event, payload))
                    {
                        metrics::add(&self.metrics.protocol_errors, 1);
                        let reason = too_large.to_string();
                        self.reply(ctx, &frame, &Reply::Error { reason: &reason });
                        return;
                    }
                    let publish = Publish {
                        topic: frame.topic.clone(),
                        event: event.clone(),
                        payload: payload.clone(),
                    };
                    match self.hub.try_send(publish) {
                        Ok(()) if self.limits.bridged && !self.metrics.is_bridge_up() => {
                            self.reply(
                                ctx,
                                &frame,
                                &Reply::Error {
                                    reason: UPSTREAM_DOWN,
                                },
                            );
                        }
                        Ok(()) => {
                            if frame.msg_ref.is_some() {
                                self.reply(ctx, &frame, &Reply::OkEmpty);
                            }
                        }
                        Err(_) => {
                            metrics::add(&self.metrics.protocol_errors, 1);
                            self.reply(
                                ctx,
                                &frame,
                                &Reply::Error {
                                    reason: "server overloaded",
                                },
                            );
                        }
                    }
                }
            }
            // The core may learn new requests; an unknown one is answered, never dropped.
            _ => self.reply(
                ctx,
                &frame,
                &Reply::Error {
                    reason: "unsupported request",
                },
            ),
        }
    }

    /// Whether `frame` addresses the current membership of its topic. Answers `unmatched topic`
    /// for a topic not joined; silently ignores a stale `join_ref` (a push from before a
    /// rejoin), as Phoenix does.
    fn check_membership(&self, frame: &ClientFrame, ctx: &mut SocketContext) -> bool {
        match self.joined.get(&frame.topic) {
            None => {
                metrics::add(&self.metrics.protocol_errors, 1);
                self.reply(
                    ctx,
                    frame,
                    &Reply::Error {
                        reason: "unmatched topic",
                    },
                );
                false
            }
            Some(join_ref) if frame.join_ref.is_some() && *join_ref != frame.join_ref => {
                debug!(session = ?self.id, topic = %frame.topic, "stale join_ref ignored");
                false
            }
            Some(_) => true,
        }
    }

    /// Whether this socket may push to the frame's topic now (channel rules, then the rate
    /// limit); answers the refusal itself.
    fn may_push(&mut self, frame: &ClientFrame, ctx: &mut SocketContext) -> bool {
        let user = self.identity.user.as_deref();
        if !self.security.rules().may_push(&frame.topic, user) {
            metrics::add(&self.metrics.unauthorized, 1);
            self.reply(
                ctx,
                frame,
                &Reply::Error {
                    reason: UNAUTHORIZED,
                },
            );
            return false;
        }
        if !self.pushes.try_take(Instant::now()) {
            metrics::add(&self.metrics.rate_limited, 1);
            self.reply(
                ctx,
                frame,
                &Reply::Error {
                    reason: RATE_LIMITED,
                },
            );
            return false;
        }
        true
    }

    /// Whether this socket may join the frame's topic (length limit, then channel rules);
    /// answers the refusal itself.
    fn may_join(&self, frame: &ClientFrame, ctx: &mut SocketContext) -> bool {
        let len = frame.topic.as_str().len();
        if len > self.limits.max_topic_bytes {
            metrics::add(&self.metrics.protocol_errors, 1);
            let reason = format!(
                "invalid topic: topic is {len} bytes long; the limit is {} bytes",
                self.limits.max_topic_bytes
            );
            self.reply(ctx, frame, &Reply::Error { reason: &reason });
            return false;
        }
        if !self
            .security
            .rules()
            .may_join(&frame.topic, self.identity.user.as_deref())
        {
            metrics::add(&self.metrics.unauthorized, 1);
            self.reply(
                ctx,
                frame,
                &Reply::Error {
                    reason: UNAUTHORIZED,
                },
            );
            return false;
        }
        true
    }

    fn join(&mut self, frame: ClientFrame, ctx: &mut SocketContext) {
        if !self.may_join(&frame, ctx) {
            return;
        }
        if let Some(old_join_ref) = self.joined.get_mut(&frame.topic) {
            // A second join closes the old membership first, then succeeds.
            let close = encode_close(old_join_ref.as_deref(), frame.topic.as_str());
            old_join_ref.clone_from(&frame.join_ref);
            self.send(ctx, close);
            self.reply(ctx, &frame, &Reply::OkEmpty);
            return;
        }
        let Some(session) = self.id else {
            // Unreachable in practice: no frame is handled before the hub has answered.
            self.reply(
                ctx,
                &frame,
                &Reply::Error {
                    reason: "server unavailable",
                },
            );
            return;
        };
        let subscribe = Subscribe {
            session,
            topic: frame.topic.clone(),
        };
        self.hub
            .send(subscribe)
            .into_actor(self)
            .map(move |outcome, act, ctx| match outcome {
                Ok(Ok(_)) => {
                    act.joined
                        .insert(frame.topic.clone(), frame.join_ref.clone());
                    act.reply(ctx, &frame, &Reply::OkEmpty);
                }
                Ok(Err(SubscribeError::TooManyTopics { .. })) => {
                    metrics::add(&act.metrics.protocol_errors, 1);
                    act.reply(
                        ctx,
                        &frame,
                        &Reply::Error {
                            reason: "too many channels joined",
                        },
                    );
                }
                Ok(Err(err)) => {
                    act.reply(
                        ctx,
                        &frame,
                        &Reply::Error {
                            reason: &err.to_string(),
                        },
                    );
                }
                Err(_) => act.reply(
                    ctx,
                    &frame,
                    &Reply::Error {
                        reason: "server unavailable",
                    },
                ),
            })
            .wait(ctx);
    }

    fn handle_fragment(&mut self, item: Item, ctx: &mut SocketContext) {
        let (bytes, last) = match item {
            Item::FirstText(bytes) => {
                self.fragments = Some(Vec::new());
                (bytes, false)
            }
            Item::FirstBinary(_) => return self.close_with(ctx, close::BINARY),
            Item::Continue(bytes) => (bytes, false),
            Item::Last(bytes) => (bytes, true),
        };
        let Some(buffer) = self.fragments.as_mut() else {
            return self.close_with(ctx, close::PROTOCOL);
        };
        if buffer.len() + bytes.len() > self.limits.max_frame_bytes {
            metrics::add(&self.metrics.protocol_errors, 1);
            return self.close_with(ctx, close::TOO_LARGE);
        }
        buffer.extend_from_slice(&bytes);
        if last {
            let buffer = self.fragments.take().unwrap_or_default();
            match String::from_utf8(buffer) {
                Ok(text) => self.handle_text(&text, ctx),
                Err(_) => self.close_with(ctx, (close::NOT_A_FRAME, "frame is not valid UTF-8")),
            }
        }
    }
}

impl Actor for WsSession {
    type Context = SocketContext;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(SESSION_MAILBOX_CAPACITY);
        metrics::add(&self.metrics.connections, 1);
        let connect = Connect {
            outbox: Outbox::new(self.queue.clone(), ctx.address().recipient()),
            close: ctx.address().recipient(),
        };
        self.hub
            .send(connect)
            .into_actor(self)
            .map(|outcome, act, ctx| match outcome {
                Ok(id) => act.id = Some(id),
                Err(_) => act.close_with(ctx, close::SHUTDOWN),
            })
            .wait(ctx);
        let tick =
            (self.limits.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        ctx.run_interval(tick, |act, ctx| {
            if act.last_frame.elapsed() >= act.limits.idle_timeout {
                debug!(session = ?act.id, "idle timeout");
                act.close_with(ctx, close::IDLE);
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        metrics::sub(&self.metrics.connections, 1);
        if let Some(session) = self.id {
            self.hub.do_send(Disconnect { session });
        }
    }
}

impl StreamHandler<Result<Message, ProtocolError>> for WsSession {
    fn handle(&mut self, item: Result<Message, ProtocolError>, ctx: &mut Self::Context) {
        self.last_frame = Instant::now();
        match item {
            Ok(Message::Text(text)) => self.handle_text(&text, ctx),
            Ok(Message::Binary(_)) => {
                metrics::add(&self.metrics.protocol_errors, 1);
                self.close_with(ctx, close::BINARY);
            }
            Ok(Message::Continuation(item)) => self.handle_fragment(item, ctx),
            Ok(Message::Ping(bytes)) => ctx.pong(&bytes),
            Ok(Message::Pong(_) | Message::Nop) => {}
            Ok(Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ProtocolError::Overflow) => {
                metrics::add(&self.metrics.protocol_errors, 1);
                self.close_with(ctx, close::TOO_LARGE);
            }
            Err(err) => {
                debug!(session = ?self.id, %err, "websocket protocol error");
                metrics::add(&self.metrics.protocol_errors, 1);
                self.close_with(ctx, close::PROTOCOL);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Flush> for WsSession {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) {
        for frame in self.queue.drain() {
            ctx.text(frame);
        }
    }
}

impl Handler<CloseSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        self.close_with(ctx, (msg.code, msg.reason));
    }
}
