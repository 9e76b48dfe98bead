//! One WebSocket: a session actor that is a thin shell around the core's protocol engine.
//!
//! Every protocol decision (replies, their order, error reasons, close codes, limits) is made
//! by [`switchboard_core::connection::Connection`]. The session registers with the hub in
//! `started` (and handles no frame before the hub has answered), feeds the engine what the
//! socket receives, performs what the engine asks (send a frame, join or leave through the
//! hub, publish, close), answers the engine with the hub's answers, writes the hub's
//! deliveries to the socket as they are, and unregisters in `stopped`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use switchboard_core::connection::{
    reasons, Connection, JoinAnswer, JoinRefusal, Output, PublishAnswer, Refusal,
};
use switchboard_core::{SessionId, Time};
use tracing::debug;

use crate::connections::ConnectionSlot;
use crate::hub::outbox::{Delivery, Drained, FrameQueue, Leaving, Outbox};
use crate::hub::presence::UpdatePresence;
use crate::hub::{Connect, Disconnect, Hub, Publish, PushPublish, Subscribe, Unsubscribe};
use crate::messages::{CloseSession, Flush, PushAnswered};
use crate::metrics::{self, Metrics};
use crate::transport::{self, Item, Message, ProtocolError};

/// The context a session runs in.
type SocketContext = transport::SocketContext<WsSession>;

/// Messages a session's mailbox holds: deliveries do not go through it (they wait in the
/// session's [`FrameQueue`] and at most one [`Flush`] is outstanding), so this bounds only
/// closes and wake-ups.
pub const SESSION_MAILBOX_CAPACITY: usize = 16;

/// One WebSocket connection.
#[derive(Debug)]
pub struct WsSession {
    id: Option<SessionId>,
    hub: Addr<Hub>,
    engine: Connection,
    /// The engine's clock starts when the session does.
    epoch: Instant,
    queue: Arc<FrameQueue>,
    metrics: Arc<Metrics>,
    /// Held for the session's life: its place under the node's connection limit.
    _slot: ConnectionSlot,
    /// A fragmented text message being reassembled.
    fragments: Option<Vec<u8>>,
    /// Topics left whose leave the hub has not taken yet.
    leaving: Leaving,
    /// The buffer the queue is drained into, kept between drains.
    batch: VecDeque<Delivery>,
}

impl WsSession {
    /// A session that will register with `hub`, driving `engine` (a connection created at
    /// [`Time::ZERO`]: the session's clock starts now), queueing at most `send_buffer_bytes`
    /// of deliveries.
    #[must_use]
    pub fn new(
        hub: Addr<Hub>,
        engine: Connection,
        send_buffer_bytes: usize,
        metrics: Arc<Metrics>,
        slot: ConnectionSlot,
    ) -> Self {
        Self {
            id: None,
            hub,
            engine,
            epoch: Instant::now(),
            queue: Arc::new(FrameQueue::new(send_buffer_bytes)),
            metrics,
            _slot: slot,
            fragments: None,
            leaving: Leaving::default(),
            batch: VecDeque::new(),
        }
    }

    fn now(&self) -> Time {
        Time::from_since_epoch(self.epoch.elapsed())
    }

    /// Hands everything queued (and not of a membership being left) to the socket, and tells
    /// the client, in order, of memberships the hub ended.
    fn flush(&mut self, ctx: &mut SocketContext) {
        let mut batch = std::mem::take(&mut self.batch);
        self.queue.drain_into(&mut batch);
        let mut broken = Vec::new();
        self.leaving
            .filter_each(batch.drain(..), |drained| match drained {
                Drained::Frame(frame) => ctx.text(frame),
                Drained::Broken(topic) => broken.push(topic),
            });
        // The buffer (empty, its capacity kept) goes back to the queue at the next drain.
        self.batch = batch;
        for topic in broken {
            // After every frame of that membership (the hub sends none after its marker).
            // Only frames come out of a broken stream (no leave: the hub has taken it), so
            // this does not flush again.
            self.engine.handle_stream_broken(&topic);
            self.drive(ctx);
        }
    }

    /// Performs everything the engine asks for.
    fn drive(&mut self, ctx: &mut SocketContext) {
        while let Some(output) = self.engine.poll() {
            match output {
                Output::Send(text) => {
                    metrics::add(&self.metrics.frames_out, 1);
                    ctx.text(text);
                }
                Output::Join {
                    topic,
                    join,
                    since,
                    presence,
                } => {
                    let Some(session) = self.id else {
                        let now = self.now();
                        let answer = JoinAnswer::Refused(JoinRefusal::Unavailable);
                        self.engine.handle_join_answer(&topic, join, answer, now);
                        continue;
                    };
                    let subscribe = Subscribe {
                        session,
                        topic: topic.clone(),
                        since,
                        presence,
                    };
                    ctx.spawn(self.hub.send(subscribe).into_actor(self).map(
                        move |joined, act, ctx| {
                            let (answer, held, state) = match joined {
                                Ok(joined) => (joined.answer, joined.held, joined.presence_state),
                                Err(_) => {
                                    (JoinAnswer::Refused(JoinRefusal::Unavailable), false, None)
                                }
                            };
                            // The hub held the queue while it queued what the join recovers
                            // (and the presence diffs after the list): the reply goes first,
                            // then the list, then everything queued.
                            let now = act.now();
                            act.engine.handle_join_answer(&topic, join, answer, now);
                            if let Some(state) = state {
                                act.engine.handle_presence_state(&topic, &state);
                            }
                            act.drive(ctx);
                            if held && act.queue.release() {
                                act.flush(ctx);
                            }
                        },
                    ));
                }
                Output::Leave { topic } => {
                    // What the old membership was sent goes before the leave's reply; what
                    // the hub queues for it until it takes the leave is dropped.
                    self.flush(ctx);
                    if let Some(session) = self.id {
                        self.leaving.begin(topic.clone());
                        self.hub.do_send(Unsubscribe { session, topic });
                    }
                }
                Output::Publish {
                    topic,
                    event,
                    payload,
                    ack,
                } => {
                    let publish = Publish {
                        topic,
                        event,
                        payload,
                    };
                    let reply = ack.map(|ack| (ctx.address().recipient(), ack));
                    if let Err(refused) = self.hub.try_send(PushPublish { publish, reply }) {
                        debug!(session = ?self.id, "hub mailbox full; push refused");
                        if let Some((_, ack)) = refused.into_inner().reply {
                            self.engine
                                .handle_publish_answer(ack, &PublishAnswer::Overloaded);
                        } else {
                            metrics::add(&self.metrics.protocol_errors, 1);
                        }
                    }
                }
                Output::PresenceUpdate { topic, meta, ack } => {
                    let Some(session) = self.id else {
                        continue;
                    };
                    let reply = ack.map(|ack| (ctx.address().recipient(), ack));
                    self.hub.do_send(UpdatePresence {
                        session,
                        topic,
                        meta,
                        reply,
                    });
                }
                Output::Close { code, reason } => {
                    transport::close(ctx, code, &reason);
                    ctx.stop();
                }
                Output::Refused(refusal) => {
                    let counter = match refusal {
                        Refusal::Unauthorized => &self.metrics.unauthorized,
                        Refusal::RateLimited => &self.metrics.rate_limited,
                        _ => &self.metrics.protocol_errors,
                    };
                    metrics::add(counter, 1);
                }
                // The engine may learn new outputs: a shell that does not know one yet says so.
                other => debug!(?other, "engine output not handled"),
            }
        }
    }

    fn handle_fragment(&mut self, item: Item, now: Time) {
        let (bytes, last) = match item {
            Item::FirstText(bytes) => {
                self.fragments = Some(Vec::new());
                (bytes, false)
            }
            Item::FirstBinary(_) => return self.engine.handle_binary(now),
            Item::Continue(bytes) => (bytes, false),
            Item::Last(bytes) => (bytes, true),
        };
        let limit = self.engine.limits().max_frame_bytes;
        let Some(buffer) = self.fragments.as_mut() else {
            return self.engine.handle_protocol_error(now);
        };
        if buffer.len() + bytes.len() > limit {
            return self.engine.handle_oversized(now);
        }
        buffer.extend_from_slice(&bytes);
        if last {
            let buffer = self.fragments.take().unwrap_or_default();
            metrics::add(&self.metrics.frames_in, 1);
            self.engine.handle_text_bytes(&buffer, now);
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
                Err(_) => {
                    let (code, reason) = reasons::close::SHUTDOWN;
                    act.engine.close(code, reason);
                    act.drive(ctx);
                }
            })
            .wait(ctx);
        let tick = (self.engine.limits().idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        ctx.run_interval(tick, |act, ctx| {
            let now = act.now();
            act.engine.handle_tick(now);
            act.drive(ctx);
        });
        if let Some(expires) = self.engine.expires() {
            // Closed with 3005 the moment the token stops being accepted.
            let after = expires.saturating_duration_since(self.now());
            ctx.run_later(after, |act, ctx| {
                let now = act.now();
                act.engine.handle_tick(now);
                act.drive(ctx);
            });
        }
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
        let now = self.now();
        match item {
            Ok(Message::Text(text)) => {
                metrics::add(&self.metrics.frames_in, 1);
                self.engine.handle_text(&text, now);
            }
            Ok(Message::Binary(_)) => self.engine.handle_binary(now),
            Ok(Message::Continuation(item)) => self.handle_fragment(item, now),
            Ok(Message::Ping(bytes)) => {
                self.engine.touch(now);
                ctx.pong(&bytes);
            }
            Ok(Message::Pong(_) | Message::Nop) => self.engine.touch(now),
            Ok(Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ProtocolError::Overflow) => self.engine.handle_oversized(now),
            Err(err) => {
                debug!(session = ?self.id, %err, "websocket protocol error");
                self.engine.handle_protocol_error(now);
            }
        }
        self.drive(ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Flush> for WsSession {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) {
        self.flush(ctx);
    }
}

impl Handler<CloseSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        self.engine.close(msg.code, msg.reason);
        self.drive(ctx);
    }
}

impl Handler<PushAnswered> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: PushAnswered, ctx: &mut Self::Context) {
        self.engine.handle_publish_answer(msg.ack, &msg.answer);
        self.drive(ctx);
    }
}
