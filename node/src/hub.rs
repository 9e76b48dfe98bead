//! The topic hub actor: owns the core [`Registry`] and does all routing.
//!
//! Sessions register with [`Connect`], join and leave with [`Subscribe`] / [`Unsubscribe`],
//! and go with [`Disconnect`]. [`Publish`] (from a socket push or HTTP) encodes the broadcast
//! once and offers the shared bytes to every subscriber's [`Outbox`]; a subscriber whose
//! outbox overflows is evicted as a slow consumer: unsubscribed at once and told to close
//! with 3008.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;
use switchboard_core::{
    encode_broadcast, Payload, Registry, SessionId, SubscribeError, Subscribed, Topic, Unsubscribed,
};
use tracing::{debug, info, warn};

use crate::metrics::{self, Metrics};
use crate::outbox::{Outbox, Overflow};
use crate::session::CloseSession;
use crate::upstream::{
    TooLarge, Upstream, UpstreamPublish, UpstreamSubscribe, UpstreamUnsubscribe,
};

/// How many messages the hub's mailbox holds before senders that respect it must wait
/// (HTTP publishes) or are refused (socket pushes).
pub const HUB_MAILBOX_CAPACITY: usize = 16 * 1024;

/// Close code for a slow consumer (as Centrifugo's `DisconnectSlow`).
pub const CLOSE_SLOW_CONSUMER: u16 = 3008;

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
    upstream_up: bool,
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
            upstream_up: false,
        }
    }

    /// Tells the bridge that no local session listens to these topics any more.
    fn release_upstream(&self, topics: Vec<Topic>) {
        if let Some(upstream) = &self.upstream {
            for topic in topics {
                upstream.unsubscribe.do_send(UpstreamUnsubscribe { topic });
            }
        }
    }

    fn update_gauges(&self) {
        metrics::set(&self.metrics.topics, self.registry.topic_count());
        metrics::set(
            &self.metrics.subscriptions,
            self.registry.subscription_count(),
        );
    }

    /// Unsubscribes a session that cannot keep up and tells it to close.
    fn evict_slow(&mut self, id: SessionId) {
        let emptied = self.registry.disconnect(id);
        debug!(session = %id, emptied = emptied.topics.len(), "slow consumer evicted");
        self.release_upstream(emptied.topics);
        if let Some(entry) = self.sessions.remove(&id) {
            metrics::add(&self.metrics.slow_consumer_disconnects, 1);
            warn!(session = %id, "closing slow consumer (3008)");
            entry.close.do_send(CloseSession {
                code: CLOSE_SLOW_CONSUMER,
                reason: "slow consumer",
            });
        }
        self.update_gauges();
    }

    /// Offers `frame` to every local subscriber of `topic`; returns how many it was queued for.
    fn fan_out(&mut self, topic: &str, frame: &ByteString) -> usize {
        let mut queued = 0;
        let mut slow = Vec::new();
        let sessions = &self.sessions;
        self.registry.for_each_subscriber(topic, |id| {
            if let Some(entry) = sessions.get(&id) {
                match entry.outbox.offer(frame) {
                    Ok(()) => queued += 1,
                    Err(Overflow::Slow) => slow.push(id),
                    Err(Overflow::Gone) => {}
                }
            }
        });
        metrics::add(&self.metrics.frames_out, queued as u64);
        for id in slow {
            self.evict_slow(id);
        }
        queued
    }
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(HUB_MAILBOX_CAPACITY);
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
        self.sessions.remove(&msg.session);
        let emptied = self.registry.disconnect(msg.session);
        debug!(session = %msg.session, emptied = emptied.topics.len(), "session left");
        self.release_upstream(emptied.topics);
        self.update_gauges();
    }
}

/// Subscribe a session to a topic (a `phx_join`).
#[derive(Debug, Message)]
#[rtype(result = "Result<Subscribed, SubscribeError>")]
pub struct Subscribe {
    /// The session.
    pub session: SessionId,
    /// The topic.
    pub topic: Topic,
}

impl Handler<Subscribe> for Hub {
    type Result = Result<Subscribed, SubscribeError>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        let outcome = self.registry.subscribe(msg.session, &msg.topic);
        if outcome == Ok(Subscribed::FirstLocal) {
            debug!(topic = %msg.topic, "first local subscriber");
            if let Some(upstream) = &self.upstream {
                upstream
                    .subscribe
                    .do_send(UpstreamSubscribe { topic: msg.topic });
            }
        }
        self.update_gauges();
        outcome
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
        if self.registry.unsubscribe(msg.session, msg.topic.as_str()) == Unsubscribed::LastLocal {
            self.release_upstream(vec![msg.topic]);
        }
        self.update_gauges();
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Local sessions the message was queued for.
    pub recipients: usize,
    /// Whether other nodes get it.
    pub upstream: UpstreamOutcome,
}

/// Whether a publish reached the shared backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// The node runs alone (in memory).
    NotConfigured,
    /// Handed to the bridge for the other nodes.
    Forwarded,
    /// The bridge is down or full: only this node's subscribers got it.
    Unavailable,
    /// Over the backend's message limit: refused whole, delivered nowhere (not even here).
    TooLarge(TooLarge),
}

impl Hub {
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

impl Handler<Publish> for Hub {
    type Result = MessageResult<Publish>;

    fn handle(&mut self, msg: Publish, _: &mut Self::Context) -> Self::Result {
        if let Some(limit) = self.upstream.as_ref().and_then(|u| u.limit) {
            if let Err(too_large) = limit.check(&msg.event, &msg.payload) {
                debug!(topic = %msg.topic, %too_large, "publish refused");
                return MessageResult(Published {
                    recipients: 0,
                    upstream: UpstreamOutcome::TooLarge(too_large),
                });
            }
        }
        metrics::add(&self.metrics.publishes, 1);
        let recipients = self.deliver_locally(&msg.topic, &msg.event, &msg.payload);
        let upstream = match &self.upstream {
            None => UpstreamOutcome::NotConfigured,
            Some(_) if !self.upstream_up => UpstreamOutcome::Unavailable,
            Some(upstream) => {
                let forward = UpstreamPublish {
                    topic: msg.topic,
                    event: msg.event,
                    payload: msg.payload,
                };
                match upstream.publish.try_send(forward) {
                    Ok(()) => UpstreamOutcome::Forwarded,
                    Err(_) => UpstreamOutcome::Unavailable,
                }
            }
        };
        if upstream == UpstreamOutcome::Unavailable {
            metrics::add(&self.metrics.bridge_lost, 1);
        }
        MessageResult(Published {
            recipients,
            upstream,
        })
    }
}

/// A message that arrived from another node or producer through the bridge: deliver it to
/// the local subscribers only.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Incoming {
    /// The topic.
    pub topic: Topic,
    /// The event name.
    pub event: String,
    /// The message.
    pub payload: Payload,
}

impl Handler<Incoming> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Incoming, _: &mut Self::Context) {
        let _ = self.deliver_locally(&msg.topic, &msg.event, &msg.payload);
    }
}

/// The bridge went up or down.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct BridgeStatus {
    /// Whether the bridge can reach the backend.
    pub up: bool,
}

impl Handler<BridgeStatus> for Hub {
    type Result = ();

    fn handle(&mut self, msg: BridgeStatus, _: &mut Self::Context) {
        self.upstream_up = msg.up;
    }
}

/// Every topic with a local subscriber: what a reconnected bridge resubscribes.
#[derive(Debug, Message)]
#[rtype(result = "Vec<Topic>")]
pub struct ListTopics;

impl Handler<ListTopics> for Hub {
    type Result = MessageResult<ListTopics>;

    fn handle(&mut self, _: ListTopics, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.registry.topics().cloned().collect())
    }
}

/// The node is shutting down: tell every session to close with 1001. Answered with how many
/// sessions were told.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct CloseAll {
    /// The close code.
    pub code: u16,
    /// The close reason.
    pub reason: &'static str,
}

impl Handler<CloseAll> for Hub {
    type Result = usize;

    fn handle(&mut self, msg: CloseAll, _: &mut Self::Context) -> usize {
        info!(sessions = self.sessions.len(), "closing every socket");
        for entry in self.sessions.values() {
            entry.close.do_send(CloseSession {
                code: msg.code,
                reason: msg.reason,
            });
        }
        self.sessions.len()
    }
}
