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
//! A topic with history has a position per publication, carried in each broadcast's ref
//! slot. Without a backend the hub keeps its streams; with one, the backend gives each
//! publication its position and every node delivers it from the backend. A join of such a
//! topic reads the history after being subscribed and hands the session what it missed
//! (when it asks with `since`) before any later delivery.
//!
//!
//! A topic with presence lists who is on it: a join of one tracks the socket's member, then
//! the socket gets the list (`presence_state`) right after its reply, and batched
//! `presence_diff`s from then on ([`presence`]).
//!
//! # Layout
//! - [`admin`]: read-only views for the inspector (`/admin`): topic pages, one topic.
//! - [`outbox`]: bounded delivery from the hub to one session.
//! - [`upstream`]: the hub's handle on a bridge.
//! - [`history`]: the memory backend's streams and the sessions recovering a topic.
//! - [`presence`]: member lists, this node's members, batched diffs, heartbeats.

pub mod admin;
pub mod history;
pub mod outbox;
pub mod presence;
pub mod upstream;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use switchboard_core::bridge::{EdgeOp, PublishOutcome, WaitOutcome};
use switchboard_core::connection::{
    reasons, JoinAnswer, JoinRefusal, PresenceJoin, PublishAnswer, PushAck, Reach,
};
use switchboard_core::history::recovery::{recover, HistoryRead, Publication};
use switchboard_core::history::{HistoryRules, Position, Retention};
use switchboard_core::presence::PresenceRules;
use switchboard_core::{
    encode_parts, Payload, Registry, SessionId, SubscribeError, Subscribed, Time, Topic,
    Unsubscribed,
};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::messages::{
    CloseSession, Incoming, LinkLost, PushAnswered, UpstreamEdge, UpstreamPublish, UpstreamRead,
    UpstreamWait,
};
use crate::metrics::{self, Metrics};
use history::Histories;
use outbox::{Outbox, Overflow};
use presence::Presences;
use upstream::{TooLarge, Upstream};

/// How many messages the hub's mailbox holds before senders that respect it must wait
/// (HTTP publishes) or are refused (socket pushes, incoming messages).
pub const HUB_MAILBOX_CAPACITY: usize = 16 * 1024;

/// How often the hub forgets sessions whose actor is gone without saying so (a socket reset
/// before its registration was answered never sends [`Disconnect`]).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

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
    histories: Histories,
    presences: Presences,
    /// How long this node's presence members outlive it on the backend.
    presence_ttl: Duration,
    /// (session, topic) pairs with a presence update in flight.
    updating: HashSet<(SessionId, Topic)>,
    /// The hub's clock starts when it does.
    started: Instant,
}

/// A step of the hub's work that may wait for the bridge.
type Step<T> = fut::LocalBoxActorFuture<Hub, T>;

/// A step whose result is known now.
fn ready_step<T: 'static>(value: T) -> Step<T> {
    Box::pin(fut::ready(value))
}

impl Hub {
    /// A hub allowing each session `max_topics_per_session` topics, bridged to other nodes
    /// through `upstream` when there is one, keeping history for the topics `history` names.
    #[must_use]
    pub fn new(
        max_topics_per_session: usize,
        metrics: Arc<Metrics>,
        upstream: Option<Upstream>,
        history: HistoryRules,
    ) -> Self {
        Self {
            registry: Registry::with_max_topics_per_session(max_topics_per_session),
            sessions: HashMap::new(),
            metrics,
            upstream,
            histories: Histories::new(history),
            presences: Presences::new(Arc::new(PresenceRules::none()), "local".into()),
            presence_ttl: Duration::from_secs(30),
            updating: HashSet::new(),
            started: Instant::now(),
        }
    }

    /// The same hub, tracking presence on the topics `rules` name, as node `node` (its id on
    /// the backend) whose members outlive it there by `ttl`.
    #[must_use]
    pub fn with_presence(mut self, rules: PresenceRules, node: String, ttl: Duration) -> Self {
        self.presences = Presences::new(Arc::new(rules), node);
        self.presence_ttl = ttl;
        self
    }

    fn now(&self) -> Time {
        Time::from_since_epoch(self.started.elapsed())
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
        self.histories.forget(id);
        self.presence_forget(id);
        let emptied = self.registry.disconnect(id);
        for topic in emptied.topics {
            self.histories.unfollow(&topic);
            self.edge(topic, EdgeOp::Unsubscribe);
        }
        self.update_gauges();
        entry
    }

    /// Undoes a join the bridge could not confirm (or a leave).
    fn undo_join(&mut self, session: SessionId, topic: &Topic) {
        self.histories.leave(session, topic);
        if self.registry.unsubscribe(session, topic.as_str()) == Unsubscribed::LastLocal {
            self.histories.unfollow(topic);
            self.edge(topic.clone(), EdgeOp::Unsubscribe);
        }
        self.update_gauges();
    }

    /// Ends every local membership of `topic` (a topic with history) because publications
    /// may not have reached this node: each session is unsubscribed as if it had left, and
    /// told in order with its deliveries, so that its client hears `phx_error` and rejoins
    /// to recover what it missed. Returns how many memberships ended.
    fn break_stream(&mut self, topic: &Topic) -> usize {
        let mut members = Vec::new();
        self.registry
            .for_each_subscriber(topic.as_str(), |id| members.push(id));
        for &session in &members {
            self.histories.abandon_recovery(topic, session);
            self.undo_join(session, topic);
            if self.presences.rules().applies(topic) {
                self.presence_leave(session, topic);
            }
            if let Some(entry) = self.sessions.get(&session) {
                entry.outbox.broken(topic.clone());
            }
        }
        self.histories.unfollow(topic);
        metrics::add(&self.metrics.streams_broken, members.len() as u64);
        members.len()
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

    /// Offers `frame` to every local subscriber of `topic` but those in `skip`; returns how
    /// many it was queued for.
    fn fan_out(&mut self, topic: &str, frame: &ByteString, skip: &[SessionId]) -> usize {
        let mut queued = 0;
        let mut slow = Vec::new();
        let mut gone = Vec::new();
        let sessions = &self.sessions;
        self.registry.for_each_subscriber(topic, |id| {
            if skip.contains(&id) {
                return;
            }
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

    /// Encodes the broadcast once (with its position in the ref slot, when it has one) and
    /// queues it for every local subscriber; a session recovering the topic gets it after its
    /// recovery instead.
    fn deliver_locally(
        &mut self,
        topic: &Topic,
        event: &str,
        payload: &Payload,
        position: Option<&Position>,
    ) -> usize {
        let skip: Vec<SessionId> = match position {
            Some(position) => {
                let mut skip = self.histories.delivered_already(topic, position);
                if self.histories.is_recovering(topic) {
                    self.histories.buffer(
                        topic,
                        &Publication {
                            position: position.clone(),
                            event: event.to_owned(),
                            payload: payload.clone(),
                        },
                    );
                    skip.extend(self.histories.recovering(topic));
                }
                skip
            }
            None => Vec::new(),
        };
        if self.registry.subscriber_count(topic.as_str()) <= skip.len() {
            return 0;
        }
        let frame = broadcast_frame(topic, event, payload, position);
        self.fan_out(topic.as_str(), &frame, &skip)
    }

    /// Ends a session's recovery of `topic` with `read` (or why there is none): hands the
    /// session what it missed and what arrived meanwhile, and says how to answer its join.
    fn finish_recovery(
        &mut self,
        session: SessionId,
        topic: &Topic,
        recovery: u64,
        since: Option<&Position>,
        read: Result<HistoryRead, String>,
    ) -> JoinAnswer {
        let Some(recovering) = self.histories.end_recovery(topic, recovery) else {
            // The session went away meanwhile.
            return JoinAnswer::Refused(JoinRefusal::Unavailable);
        };
        let read = match read {
            Ok(read) => read,
            Err(reason) => {
                if since.is_some() {
                    metrics::add(&self.metrics.recoveries_failed, 1);
                }
                debug!(%topic, session = %session, %reason, "history unavailable");
                return JoinAnswer::Refused(JoinRefusal::HistoryUnavailable { reason });
            }
        };
        let live = if recovering.overflowed {
            Vec::new()
        } else {
            recovering.live
        };
        let mut recovery = recover(since, read, live);
        if recovering.overflowed && recovery.recovered == Some(true) {
            // Live publications were lost from the buffer: the stream would have a hole.
            recovery.recovered = Some(false);
            recovery.deliver.clear();
        }
        match recovery.recovered {
            Some(true) => metrics::add(&self.metrics.recoveries_succeeded, 1),
            Some(false) => metrics::add(&self.metrics.recoveries_failed, 1),
            None => {}
        }
        if let Some(entry) = self.sessions.get(&session) {
            // The session sends the join's reply first, then releases what is queued here.
            entry.outbox.hold();
            let mut slow = false;
            for publication in &recovery.deliver {
                let frame = broadcast_frame(
                    topic,
                    &publication.event,
                    &publication.payload,
                    Some(&publication.position),
                );
                match entry.outbox.offer(&frame) {
                    Ok(()) => metrics::add(&self.metrics.frames_out, 1),
                    Err(_) => {
                        slow = true;
                        break;
                    }
                }
            }
            if slow {
                self.evict_slow(session);
                return JoinAnswer::Refused(JoinRefusal::Unavailable);
            }
            self.histories
                .set_floor(topic, session, recovery.position.clone());
            self.histories.joined_at(topic, &recovery.position);
        }
        JoinAnswer::JoinedAt {
            position: recovery.position,
            recovered: recovery.recovered,
        }
    }
}

/// `[null, <position or null>, topic, event, payload]`, encoded once for every subscriber.
fn broadcast_frame(
    topic: &Topic,
    event: &str,
    payload: &Payload,
    position: Option<&Position>,
) -> ByteString {
    let position = position.map(ToString::to_string);
    ByteString::from(encode_parts(
        None,
        position.as_deref(),
        topic.as_str(),
        event,
        payload.get(),
    ))
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(HUB_MAILBOX_CAPACITY);
        self.start_presence(ctx);
        ctx.run_interval(SWEEP_INTERVAL, |hub, _| {
            let now = hub.now();
            hub.histories.sweep(now);
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
/// everywhere it can be; for a topic with presence, once the session's member is tracked; for
/// a topic with history, once the session has been handed what it missed since `since` (see
/// the module doc).
#[derive(Debug, Message)]
#[rtype(result = "Joined")]
pub struct Subscribe {
    /// The session.
    pub session: SessionId,
    /// The topic.
    pub topic: Topic,
    /// The last position the client saw, to recover from.
    pub since: Option<Position>,
    /// Who joins, for a topic with presence.
    pub presence: Option<PresenceJoin>,
}

/// The hub's answer to a [`Subscribe`].
#[derive(Debug)]
pub struct Joined {
    /// The answer for the engine.
    pub answer: JoinAnswer,
    /// Whether the hub holds the session's queue (what the join recovered, presence diffs):
    /// the session sends the reply (and the state) first, then releases it.
    pub held: bool,
    /// For a topic with presence: its list, for the socket right after the reply.
    pub presence_state: Option<Payload>,
}

/// What a history read asks for: after the client's position, as much as the history holds;
/// without one, only the stream's state.
fn read_bounds(since: Option<&Position>, size: u32) -> (u64, u32) {
    since.map_or((0, 0), |since| (since.offset, size))
}

impl Hub {
    /// Waits until `topic`'s subscription is in effect upstream: how far it reaches, or why it
    /// is not.
    fn confirm_upstream(&self, topic: &Topic) -> Step<Result<Reach, JoinRefusal>> {
        let Some(upstream) = &self.upstream else {
            return ready_step(Ok(Reach::Everywhere));
        };
        let timeout = upstream.subscribe_timeout;
        let (reply, answer) = oneshot::channel();
        upstream.wait.do_send(UpstreamWait {
            topic: topic.clone(),
            reply,
        });
        Box::pin(
            answer
                .into_actor(self)
                .map(move |outcome, _, _| match outcome {
                    Ok(WaitOutcome::Confirmed) => Ok(Reach::Everywhere),
                    Ok(WaitOutcome::LocalOnly) => Ok(Reach::LocalOnly),
                    Ok(WaitOutcome::TimedOut) => {
                        Err(JoinRefusal::UpstreamTimeout { after: timeout })
                    }
                    Ok(WaitOutcome::Refused(reason)) => {
                        Err(JoinRefusal::UpstreamRefused { reason })
                    }
                    Ok(_) | Err(_) => Err(JoinRefusal::Unavailable),
                }),
        )
    }

    /// The history part of a join that reached `reach`: reads what the session missed and
    /// queues it (see [`finish_recovery`](Self::finish_recovery)).
    fn join_history(
        &mut self,
        session: SessionId,
        topic: Topic,
        since: Option<Position>,
        history: Option<(Retention, u64)>,
        reach: Reach,
    ) -> Step<JoinAnswer> {
        let Some((retention, recovery)) = history else {
            return ready_step(JoinAnswer::Joined(reach));
        };
        if reach == Reach::LocalOnly {
            let _ = self.histories.end_recovery(&topic, recovery);
            if since.is_none() {
                return ready_step(JoinAnswer::Joined(Reach::LocalOnly));
            }
            metrics::add(&self.metrics.recoveries_failed, 1);
            return ready_step(JoinAnswer::Refused(JoinRefusal::HistoryUnavailable {
                reason: "the backend is unreachable".into(),
            }));
        }
        metrics::add(&self.metrics.history_reads, 1);
        let (after, limit) = read_bounds(since.as_ref(), retention.size);
        let Some(upstream) = &self.upstream else {
            let now = self.now();
            let read = self
                .histories
                .read(&topic, retention, after, limit as usize, now);
            let answer = self.finish_recovery(session, &topic, recovery, since.as_ref(), Ok(read));
            return ready_step(answer);
        };
        let (reply, read) = oneshot::channel();
        upstream.read.do_send(UpstreamRead {
            topic: topic.clone(),
            after,
            limit,
            reply,
        });
        Box::pin(read.into_actor(self).map(move |read, hub, _| {
            let read = read.unwrap_or_else(|_| Err("the bridge stopped".into()));
            hub.finish_recovery(session, &topic, recovery, since.as_ref(), read)
        }))
    }

    /// The end of every join: undoes what a refused one did; gives an answered presence join
    /// its list.
    fn finish_join(
        &mut self,
        session: SessionId,
        topic: &Topic,
        answer: JoinAnswer,
        presence: bool,
    ) -> Joined {
        let joined = !matches!(answer, JoinAnswer::Refused(_));
        let mut held = matches!(answer, JoinAnswer::JoinedAt { .. });
        let mut presence_state = None;
        if presence {
            presence_state = self.presence_settle(session, topic, joined);
            if let (Some(_), Some(entry), false) =
                (&presence_state, self.sessions.get(&session), held)
            {
                // Diffs from now on wait until the session has sent the reply and the list.
                entry.outbox.hold();
                held = true;
            }
        }
        if let JoinAnswer::Refused(refusal) = &answer {
            debug!(%topic, session = %session, %refusal, "join undone");
            self.undo_join(session, topic);
        }
        Joined {
            answer,
            held,
            presence_state,
        }
    }
}

impl Handler<Subscribe> for Hub {
    type Result = ActorResponse<Self, Joined>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) -> Self::Result {
        let Subscribe {
            session,
            topic,
            since,
            presence,
        } = msg;
        let refused = |refusal| Joined {
            answer: JoinAnswer::Refused(refusal),
            held: false,
            presence_state: None,
        };
        match self.registry.subscribe(session, &topic) {
            Ok(Subscribed::FirstLocal) => {
                debug!(%topic, "first local subscriber");
                self.edge(topic.clone(), EdgeOp::Subscribe);
            }
            Ok(_) => {}
            Err(SubscribeError::TooManyTopics { .. }) => {
                return ActorResponse::reply(refused(JoinRefusal::TooManyTopics));
            }
            Err(_) => return ActorResponse::reply(refused(JoinRefusal::Unavailable)),
        }
        self.update_gauges();
        let retention = self.histories.retention(&topic);
        if retention.is_some() && since.is_some() {
            metrics::add(&self.metrics.recoveries, 1);
        }
        // From now on the topic's deliveries to this session wait for its recovery.
        let history =
            retention.map(|retention| (retention, self.histories.begin_recovery(&topic, session)));
        let has_presence = presence.is_some();
        let loaded = presence.as_ref().map(|_| self.presence_enter(&topic, ctx));
        let confirmed = self.confirm_upstream(&topic);
        let topic_for_presence = topic.clone();
        let with_presence = confirmed.then(move |reach, _: &mut Self, _| -> Step<_> {
            match (reach, loaded, presence) {
                (
                    Ok(reach),
                    Some(loaded),
                    Some(PresenceJoin {
                        key: Some(key),
                        meta,
                    }),
                ) => Box::pin(loaded.then(move |(), hub: &mut Self, _| {
                    hub.presence_track(session, topic_for_presence, key, meta)
                        .map(move |tracked, _, _| tracked.map(|()| reach))
                })),
                (Ok(reach), Some(loaded), _) => Box::pin(loaded.map(move |(), _, _| Ok(reach))),
                (reach, _, _) => ready_step(reach),
            }
        });
        let topic_for_history = topic.clone();
        let answered = with_presence.then(move |reach, hub: &mut Self, _| match reach {
            Ok(reach) => hub.join_history(session, topic_for_history, since, history, reach),
            Err(refusal) => {
                if let Some((_, recovery)) = history {
                    let _ = hub.histories.end_recovery(&topic_for_history, recovery);
                }
                ready_step(JoinAnswer::Refused(refusal))
            }
        });
        ActorResponse::r#async(
            answered
                .map(move |answer, hub, _| hub.finish_join(session, &topic, answer, has_presence)),
        )
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
        if self.presences.rules().applies(&msg.topic) {
            self.presence_leave(msg.session, &msg.topic);
        }
        if let Some(entry) = self.sessions.get(&msg.session) {
            entry.outbox.left(msg.topic);
        }
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
    /// Local sessions the message was (or, with history on a backend, will be) delivered to.
    pub recipients: usize,
    /// Whether other nodes get it.
    pub upstream: UpstreamOutcome,
    /// Its place in the topic's stream, when the topic has history.
    pub position: Option<Position>,
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
                    position: None,
                });
            }
        }
        metrics::add(&self.metrics.publishes, 1);
        let retention = self.histories.retention(&msg.topic);
        if self.upstream.is_none() {
            // Alone: the hub keeps the streams.
            let position = retention.map(|retention| {
                let now = self.now();
                self.histories.append(
                    &msg.topic,
                    retention,
                    msg.event.clone(),
                    msg.payload.clone(),
                    now,
                )
            });
            let recipients =
                self.deliver_locally(&msg.topic, &msg.event, &msg.payload, position.as_ref());
            return Pending::Now(Published {
                recipients,
                upstream: UpstreamOutcome::NotConfigured,
                position,
            });
        }
        // With history the backend gives the position and every node delivers from the
        // backend, this one included; without, this node delivers first.
        let record = retention.is_some();
        let recipients = if record {
            self.registry.subscriber_count(msg.topic.as_str())
        } else {
            self.deliver_locally(&msg.topic, &msg.event, &msg.payload, None)
        };
        let (ack, outcome) = oneshot::channel();
        let forward = UpstreamPublish {
            topic: msg.topic,
            event: msg.event,
            payload: msg.payload,
            record,
            ack,
        };
        // A publication with history that the backend did not take was delivered nowhere.
        let delivered = move |sent: bool| if sent || !record { recipients } else { 0 };
        let Some(upstream) = &self.upstream else {
            return Pending::Now(Published {
                recipients: 0,
                upstream: UpstreamOutcome::Unavailable,
                position: None,
            });
        };
        if upstream.publish.try_send(forward).is_err() {
            metrics::add(&self.metrics.bridge_lost, 1);
            return Pending::Now(Published {
                recipients: delivered(false),
                upstream: UpstreamOutcome::Unavailable,
                position: None,
            });
        }
        Pending::Later(Box::pin(async move {
            let (upstream, position) = match outcome.await {
                Ok(PublishOutcome::Sent { position }) => (UpstreamOutcome::Sent, position),
                Ok(PublishOutcome::Refused(reason)) => (UpstreamOutcome::Refused(reason), None),
                Ok(_) | Err(_) => (UpstreamOutcome::Unavailable, None),
            };
            Published {
                recipients: delivered(upstream == UpstreamOutcome::Sent),
                upstream,
                position,
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
        if self.presences.rules().applies(&msg.topic)
            && switchboard_core::presence::SERVER_EVENTS.contains(&msg.event.as_str())
        {
            // Only this node writes a presence topic's list: a forged diff would break it.
            metrics::add(&self.metrics.bridge_refused, 1);
            debug!(topic = %msg.topic, event = %msg.event, "message with a presence event refused");
            return;
        }
        if let Some(position) = &msg.position {
            if self.histories.follow(&msg.topic, position) {
                // Publications before this one never reached this node (a message the bridge
                // had to drop, a link that came back): its sockets rejoin and recover them.
                let ended = self.break_stream(&msg.topic);
                warn!(topic = %msg.topic, %position, ended, "publications skipped; memberships ended to recover them");
                return;
            }
        }
        let _ = self.deliver_locally(&msg.topic, &msg.event, &msg.payload, msg.position.as_ref());
    }
}

impl Handler<LinkLost> for Hub {
    type Result = ();

    /// Publications made elsewhere during the outage will not reach this node live: the
    /// memberships of topics with history end now, and their clients rejoin (refused with a
    /// reason until the link is back, then recovering exactly what they missed).
    fn handle(&mut self, _: LinkLost, _: &mut Self::Context) {
        let topics: Vec<Topic> = self
            .registry
            .topics()
            .filter(|topic| self.histories.retention(topic).is_some())
            .cloned()
            .collect();
        self.histories.unfollow_all();
        let ended: usize = topics.iter().map(|topic| self.break_stream(topic)).sum();
        if ended > 0 {
            warn!(
                ended,
                topics = topics.len(),
                "backend link lost; memberships of topics with history ended so their clients recover"
            );
        }
    }
}

/// Read a topic's history (`GET /api/history`): the publications after `after`, at most
/// `limit`, or why there are none.
#[derive(Debug, Message)]
#[rtype(result = "Result<HistoryRead, String>")]
pub struct ReadHistory {
    /// The topic.
    pub topic: Topic,
    /// Publications after this offset.
    pub after: u64,
    /// At most this many.
    pub limit: u32,
}

impl Handler<ReadHistory> for Hub {
    type Result = ResponseFuture<Result<HistoryRead, String>>;

    fn handle(&mut self, msg: ReadHistory, _: &mut Self::Context) -> Self::Result {
        let ReadHistory {
            topic,
            after,
            limit,
        } = msg;
        let Some(retention) = self.histories.retention(&topic) else {
            return Box::pin(async move { Err(format!("topic {topic:?} keeps no history")) });
        };
        let limit = limit.min(retention.size);
        let Some(upstream) = &self.upstream else {
            metrics::add(&self.metrics.history_reads, 1);
            let now = self.now();
            let read = self
                .histories
                .read(&topic, retention, after, limit as usize, now);
            return Box::pin(async move { Ok(read) });
        };
        let (reply, read) = oneshot::channel();
        upstream.read.do_send(UpstreamRead {
            topic,
            after,
            limit,
            reply,
        });
        Box::pin(async move {
            read.await
                .unwrap_or_else(|_| Err("the bridge stopped".into()))
        })
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
