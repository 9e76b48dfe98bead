//! The topic hub actor: owns the core [`Registry`] and does all routing.
//!
//! Sessions register with [`Connect`], join and leave with [`Subscribe`] / [`Unsubscribe`],
//! and go with [`Disconnect`]. [`Publish`] (from a socket push or HTTP) encodes the broadcast
//! once and offers the shared bytes to every subscriber's [`Outbox`]; a subscriber whose
//! outbox overflows is evicted as a slow consumer: unsubscribed at once and told to close
//! with 3008.
//!
//! With a backend, the hub reports every 0↔1 edge of the registry to the bridge in order,
//! answers a join only once the bridge says the topic's subscription is in effect (undoing
//! the join when it is not), and answers a publish once the bridge says what became of it.
//!
//! # Layout
//! - [`outbox`]: bounded delivery from the hub to one session.
//! - [`upstream`]: the hub's handle on a bridge.

pub mod outbox;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use switchboard_core::bridge::{EdgeOp, PublishOutcome, WaitOutcome};
use switchboard_core::connection::{
    reasons, JoinAnswer, JoinRefusal, PublishAnswer, PushAck, Reach,
};
use switchboard_core::{
    encode_broadcast, Payload, Registry, SessionId, SubscribeError, Subscribed, Topic, Unsubscribed,
};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::messages::{
    CloseSession, Incoming, PushAnswered, UpstreamEdge, UpstreamPublish, UpstreamWait,
};
use crate::metrics::{self, Metrics};
use outbox::{Outbox, Overflow};
use upstream::{TooLarge, Upstream};

/// How many messages the hub's mailbox holds before senders that respect it must wait
/// (HTTP publishes) or are refused (socket pushes, incoming messages).
pub const HUB_MAILBOX_CAPACITY: usize = 16 * 1024;

/// How often the hub forgets sessions whose actor is gone without saying so (a socket reset
/// before its registration was answered never sends [`Disconnect`]).
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What the hub keeps per connected session.
#[derive(Debug)]
struct SessionEntry {
    outbox: Outbox,
    close: Recipient<CloseSession>,
}

/// The topic hub. One per node.
#[derive(Debug)]
pub struct Hub {
    registry: Registry,
    sessions: HashMap<SessionId, SessionEntry>,
    metrics: Arc<Metrics>,
    upstream: Option<Upstream>,
}

impl Hub {
    /// A hub allowing each session `max_topics_per_session` topics, bridged to other nodes
    /// through `upstream` when there is one.
    #[must_use]
    pub fn new(
        max_topics_per_session: usize,
        metrics: Arc<Metrics>,
        upstream: Option<Upstream>,
    ) -> Self {
        Self {
            registry: Registry::with_max_topics_per_session(max_topics_per_session),
            sessions: HashMap::new(),
            metrics,
            upstream,
        }
    }

    /// Tells the bridge about an edge. Edges are never dropped (`do_send` ignores the
    /// mailbox's capacity): the bridge's copy of the topics must stay exact.
    fn edge(&self, topic: Topic, op: EdgeOp) {
        if let Some(upstream) = &self.upstream {
            upstream.edges.do_send(UpstreamEdge { topic, op });
        }
    }

    fn update_gauges(&self) {
        metrics::set(&self.metrics.sessions, self.sessions.len());
        metrics::set(&self.metrics.topics, self.registry.topic_count());
        metrics::set(
            &self.metrics.subscriptions,
            self.registry.subscription_count(),
        );
    }

    /// Unsubscribes a session from everything and forgets it.
    fn forget(&mut self, id: SessionId) -> Option<SessionEntry> {
        let entry = self.sessions.remove(&id);
        let emptied = self.registry.disconnect(id);
        for topic in emptied.topics {
            self.edge(topic, EdgeOp::Unsubscribe);
        }
        self.update_gauges();
        entry
    }

    /// Undoes a join the bridge could not confirm.
    fn undo_join(&mut self, session: SessionId, topic: &Topic) {
        if self.registry.unsubscribe(session, topic.as_str()) == Unsubscribed::LastLocal {
            self.edge(topic.clone(), EdgeOp::Unsubscribe);
        }
        self.update_gauges();
    }

    /// Unsubscribes a session that cannot keep up and tells it to close.
    fn evict_slow(&mut self, id: SessionId) {
        if let Some(entry) = self.forget(id) {
            metrics::add(&self.metrics.slow_consumer_disconnects, 1);
            warn!(session = %id, "closing slow consumer (3008)");
            let (code, reason) = reasons::close::SLOW_CONSUMER;
            entry.close.do_send(CloseSession { code, reason });
        }
    }

    /// Offers `frame` to every local subscriber of `topic`; returns how many it was queued for.
    fn fan_out(&mut self, topic: &str, frame: &ByteString) -> usize {
        let mut queued = 0;
        let mut slow = Vec::new();
        let mut gone = Vec::new();
        let sessions = &self.sessions;
        self.registry.for_each_subscriber(topic, |id| {
            if let Some(entry) = sessions.get(&id) {
                match entry.outbox.offer(frame) {
                    Ok(()) => queued += 1,
                    Err(Overflow::Slow) => slow.push(id),
                    Err(Overflow::Gone) => gone.push(id),
                }
            }
        });
        metrics::add(&self.metrics.frames_out, queued as u64);
        for id in slow {
            self.evict_slow(id);
        }
        for id in gone {
            let _ = self.forget(id);
        }
        queued
    }

    /// Encodes the broadcast once and queues it for every local subscriber.
    fn deliver_locally(&mut self, topic: &Topic, event: &str, payload: &Payload) -> usize {
        if self.registry.subscriber_count(topic.as_str()) == 0 {
            return 0;
        }
        let encoded = encode_broadcast(topic.as_str(), event, payload);
        // The core encodes UTF-8 JSON, so this check cannot fail; it runs once per message,
        // not once per subscriber.
        let Ok(frame) = ByteString::try_from(encoded.into_bytes()) else {
            return 0;
        };
        self.fan_out(topic.as_str(), &frame)
    }
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(HUB_MAILBOX_CAPACITY);
        ctx.run_interval(SWEEP_INTERVAL, |hub, _| {
            let gone: Vec<SessionId> = hub
                .sessions
                .iter()
                .filter(|(_, entry)| !entry.close.connected())
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                debug!(session = %id, "forgetting a session that went away unannounced");
                let _ = hub.forget(id);
            }
        });
    }
}

/// A new session asks for its id. Answered with the [`SessionId`] the registry allocated.
#[derive(Debug, Message)]
#[rtype(result = "SessionId")]
pub struct Connect {
    /// Where the hub offers the session's deliveries.
    pub outbox: Outbox,
    /// Where the hub tells the session to close.
    pub close: Recipient<CloseSession>,
}

impl Handler<Connect> for Hub {
    type Result = MessageResult<Connect>;

    fn handle(&mut self, msg: Connect, _: &mut Self::Context) -> Self::Result {
        let id = self.registry.connect();
        self.sessions.insert(
            id,
            SessionEntry {
                outbox: msg.outbox,
                close: msg.close,
            },
        );
        self.update_gauges();
        MessageResult(id)
    }
}

/// A session has gone: forget it and everything it subscribed to.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    /// The session.
    pub session: SessionId,
}

impl Handler<Disconnect> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Self::Context) {
        let _ = self.forget(msg.session);
        debug!(session = %msg.session, "session left");
    }
}

/// Subscribe a session to a topic (a `phx_join`). Answered once the subscription is in effect
/// everywhere it can be (see the module doc).
#[derive(Debug, Message)]
#[rtype(result = "JoinAnswer")]
pub struct Subscribe {
    /// The session.
    pub session: SessionId,
    /// The topic.
    pub topic: Topic,
}

impl Handler<Subscribe> for Hub {
    type Result = ActorResponse<Self, JoinAnswer>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        let Subscribe { session, topic } = msg;
        match self.registry.subscribe(session, &topic) {
            Ok(Subscribed::FirstLocal) => {
                debug!(%topic, "first local subscriber");
                self.edge(topic.clone(), EdgeOp::Subscribe);
            }
            Ok(_) => {}
            Err(SubscribeError::TooManyTopics { .. }) => {
                return ActorResponse::reply(JoinAnswer::Refused(JoinRefusal::TooManyTopics));
            }
            Err(_) => return ActorResponse::reply(JoinAnswer::Refused(JoinRefusal::Unavailable)),
        }
        self.update_gauges();
        let Some(upstream) = &self.upstream else {
            return ActorResponse::reply(JoinAnswer::Joined(Reach::Everywhere));
        };
        let after = upstream.subscribe_timeout;
        let (reply, answer) = oneshot::channel();
        upstream.wait.do_send(UpstreamWait {
            topic: topic.clone(),
            reply,
        });
        ActorResponse::r#async(answer.into_actor(self).map(move |outcome, hub, _| {
            let refusal = match outcome {
                Ok(WaitOutcome::Confirmed) => return JoinAnswer::Joined(Reach::Everywhere),
                Ok(WaitOutcome::LocalOnly) => return JoinAnswer::Joined(Reach::LocalOnly),
                Ok(WaitOutcome::TimedOut) => JoinRefusal::UpstreamTimeout { after },
                Ok(WaitOutcome::Refused(reason)) => JoinRefusal::UpstreamRefused { reason },
                Ok(_) | Err(_) => JoinRefusal::Unavailable,
            };
            debug!(%topic, session = %session, %refusal, "join undone");
            hub.undo_join(session, &topic);
            JoinAnswer::Refused(refusal)
        }))
    }
}

/// Unsubscribe a session from a topic (a `phx_leave`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    /// The session.
    pub session: SessionId,
    /// The topic.
    pub topic: Topic,
}

impl Handler<Unsubscribe> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Self::Context) {
        self.undo_join(msg.session, &msg.topic);
    }
}

/// Publish a message to every subscriber of a topic, on this node and (through the bridge)
/// on every other. Answered with what happened.
#[derive(Debug, Message)]
#[rtype(result = "Published")]
pub struct Publish {
    /// The topic.
    pub topic: Topic,
    /// The event name subscribers see.
    pub event: String,
    /// The message.
    pub payload: Payload,
}

/// What a [`Publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Local sessions the message was queued for.
    pub recipients: usize,
    /// Whether other nodes get it.
    pub upstream: UpstreamOutcome,
}

/// Whether a publish reached the shared backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamOutcome {
    /// The node runs alone (in memory).
    NotConfigured,
    /// The backend accepted it for the other nodes.
    Sent,
    /// The bridge is down or full, or lost the link before the backend took it: only this
    /// node's subscribers got it.
    Unavailable,
    /// The backend refused it (delivered on this node only).
    Refused(String),
    /// Over the backend's message limit: refused whole, delivered nowhere (not even here).
    TooLarge(TooLarge),
}

/// A result the hub has now, or will have once the bridge answers.
enum Pending<T> {
    Now(T),
    Later(futures_util::future::BoxFuture<'static, T>),
}

impl Hub {
    /// Delivers locally, then hands the message to the bridge (see [`Publish`]).
    fn publish(&mut self, msg: Publish) -> Pending<Published> {
        if let Some(limit) = self.upstream.as_ref().and_then(|u| u.limit.as_ref()) {
            if let Err(too_large) = limit.check(&msg.topic, &msg.event, &msg.payload) {
                debug!(topic = %msg.topic, %too_large, "publish refused");
                return Pending::Now(Published {
                    recipients: 0,
                    upstream: UpstreamOutcome::TooLarge(too_large),
                });
            }
        }
        metrics::add(&self.metrics.publishes, 1);
        let recipients = self.deliver_locally(&msg.topic, &msg.event, &msg.payload);
        let Some(upstream) = &self.upstream else {
            return Pending::Now(Published {
                recipients,
                upstream: UpstreamOutcome::NotConfigured,
            });
        };
        let (ack, outcome) = oneshot::channel();
        let forward = UpstreamPublish {
            topic: msg.topic,
            event: msg.event,
            payload: msg.payload,
            ack,
        };
        if upstream.publish.try_send(forward).is_err() {
            metrics::add(&self.metrics.bridge_lost, 1);
            return Pending::Now(Published {
                recipients,
                upstream: UpstreamOutcome::Unavailable,
            });
        }
        Pending::Later(Box::pin(async move {
            let upstream = match outcome.await {
                Ok(PublishOutcome::Sent) => UpstreamOutcome::Sent,
                Ok(PublishOutcome::Refused(reason)) => UpstreamOutcome::Refused(reason),
                Ok(_) | Err(_) => UpstreamOutcome::Unavailable,
            };
            Published {
                recipients,
                upstream,
            }
        }))
    }
}

impl Handler<Publish> for Hub {
    type Result = ActorResponse<Self, Published>;

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) -> Self::Result {
        match self.publish(msg) {
            Pending::Now(published) => ActorResponse::reply(published),
            Pending::Later(later) => ActorResponse::r#async(fut::wrap_future(later)),
        }
    }
}

/// A socket push: [`Publish`], answered to the session when its client asked for a reply.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PushPublish {
    /// The message.
    pub publish: Publish,
    /// Where the answer goes, and which push it answers.
    pub reply: Option<(Recipient<PushAnswered>, PushAck)>,
}

impl Published {
    /// What a socket's client is told.
    #[must_use]
    pub fn answer(&self) -> PublishAnswer {
        match &self.upstream {
            UpstreamOutcome::NotConfigured | UpstreamOutcome::Sent => PublishAnswer::Everywhere,
            UpstreamOutcome::Refused(reason) => PublishAnswer::Refused(format!(
                "the backend refused the message ({reason}); delivered on this node only"
            )),
            UpstreamOutcome::TooLarge(too_large) => PublishAnswer::Refused(too_large.to_string()),
            UpstreamOutcome::Unavailable => PublishAnswer::LocalOnly,
        }
    }
}

impl Handler<PushPublish> for Hub {
    type Result = ();

    fn handle(&mut self, msg: PushPublish, _: &mut Self::Context) {
        let published = self.publish(msg.publish);
        let Some((reply, ack)) = msg.reply else {
            return;
        };
        match published {
            Pending::Now(published) => reply.do_send(PushAnswered {
                ack,
                answer: published.answer(),
            }),
            Pending::Later(later) => {
                actix::spawn(async move {
                    let answer = later.await.answer();
                    reply.do_send(PushAnswered { ack, answer });
                });
            }
        }
    }
}

impl Handler<Incoming> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Incoming, _: &mut Self::Context) {
        let _ = self.deliver_locally(&msg.topic, &msg.event, &msg.payload);
    }
}

/// The node is shutting down: tell every session to close with 1001. Answered with how many
/// sessions were told.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct CloseAll;

impl Handler<CloseAll> for Hub {
    type Result = usize;

    fn handle(&mut self, _: CloseAll, _: &mut Self::Context) -> usize {
        info!(sessions = self.sessions.len(), "closing every socket");
        let (code, reason) = reasons::close::SHUTDOWN;
        for entry in self.sessions.values() {
            entry.close.do_send(CloseSession { code, reason });
        }
        self.sessions.len()
    }
}
