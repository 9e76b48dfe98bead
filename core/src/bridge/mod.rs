//! The bridge to a shared backend (Redis, PostgreSQL) as a sans-IO state machine.
//!
//! A [`Bridge`] owns everything that crosses the network between a node and its backend and
//! every promise made about it, and none of the I/O: the life of the link (connect, liveness,
//! jittered reconnect), the topics subscribed upstream (mirroring the registry's 0↔1 edges,
//! sent in batches, in order, one batch at a time, with a linger before unsubscribing), the
//! joins waiting for their topic's subscription to be confirmed, and the bounded queue of
//! publishes. The node's bridge actor drives it with a backend adapter; a property test drives
//! it against a plain model.
//!
//! # Driving a [`Bridge`]
//!
//! 1. Create it with [`Bridge::new`] and call [`handle_tick`](Bridge::handle_tick) right away
//!    and then whenever [`poll_timeout`](Bridge::poll_timeout) passes.
//! 2. Report every 0↔1 edge of the registry, in the order the registry produced them:
//!    [`handle_subscribe`](Bridge::handle_subscribe) on a topic's first local subscriber,
//!    [`handle_unsubscribe`](Bridge::handle_unsubscribe) on its last. The bridge keeps its own
//!    copy of the topics with local subscribers and resubscribes them after every reconnect.
//! 3. A join that must not be answered before its topic's subscription is in effect calls
//!    [`handle_wait`](Bridge::handle_wait) (after the edge of its own join, if it made one);
//!    its waiter comes back once in an [`Action::Answer`].
//! 4. Every publish goes through [`handle_publish`](Bridge::handle_publish); its ack comes back
//!    once in an [`Action::Published`].
//! 5. After every input drain [`poll`](Bridge::poll) and perform each [`Action`] in order;
//!    report the outcome of each request with the [`Generation`] it named. Reports about a
//!    generation that is no longer current are ignored, so a driver never has to track which
//!    connection is live.
//!
//! # Promises (checked by the property tests)
//!
//! - Every waiter and every ack is handed back exactly once; a waiter within the subscribe
//!   timeout.
//! - [`WaitOutcome::Confirmed`] is given only while the backend has confirmed the topic's
//!   subscription on the current connection.
//! - Once the link is up and quiet, the backend's subscriptions are exactly the topics with
//!   local subscribers (after the linger).
//! - Subscription changes for one topic reach the backend in the order they were decided,
//!   never two batches at once; publishes too.
//! - The queue toward the backend never holds more than the configured messages and bytes.
//! - A request left unanswered for half the backend timeout, or a ping for as long, ends the
//!   link; so does a failed publish: nothing is counted as sent that the backend did not
//!   accept.

mod backoff;
mod config;
mod io;
#[cfg(any(test, feature = "model"))]
pub mod model;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

pub use config::BridgeConfig;
pub use io::{Action, EdgeOp, Generation, LinkStatus, PublishOutcome, RequestError, WaitOutcome};

use crate::history::Position;
use crate::{Time, Topic};
use backoff::Backoff;

/// Where the link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not connected; connect at `retry_at`.
    Down { retry_at: Time },
    /// A connect attempt runs; it fails at `deadline`.
    Connecting { deadline: Time },
    /// Connected; `ready` once the resubscription after connecting is done.
    Up { ready: bool },
}

/// What the bridge knows of one topic.
#[derive(Debug, Default)]
struct TopicState {
    /// The topic has local subscribers (the registry's view, from the edges).
    wanted: bool,
    /// The backend confirmed the subscription on the current connection.
    upstream: bool,
    /// Part of the edge batch in flight.
    in_flight: bool,
    /// In the `dirty` queue.
    queued: bool,
    /// Part of the resubscription after connecting, not yet confirmed.
    resubscribing: bool,
    /// Unwanted since then: do not unsubscribe before.
    linger_until: Option<Time>,
    /// The backend refused to subscribe it on this connection: not retried until a new join
    /// waits for it.
    refused: Option<String>,
    /// A batch holding it was refused: send it alone to learn which topic the backend
    /// refuses.
    solo: bool,
}

impl TopicState {
    /// The change the backend needs now, if any.
    fn needed(&self, now: Time) -> Option<EdgeOp> {
        if self.in_flight {
            None
        } else if self.wanted && !self.upstream && self.refused.is_none() {
            Some(EdgeOp::Subscribe)
        } else if !self.wanted && self.upstream && self.linger_until.is_none_or(|t| t <= now) {
            Some(EdgeOp::Unsubscribe)
        } else {
            None
        }
    }
}

#[derive(Debug)]
struct EdgeBatch {
    op: EdgeOp,
    topics: Vec<Topic>,
    sent: Time,
}

#[derive(Debug)]
struct PublishBatch<P> {
    acks: Vec<(P, usize)>,
    sent: Time,
}

#[derive(Debug, Clone, Copy)]
enum Ping {
    Due(Time),
    InFlight(Time),
}

#[derive(Debug)]
struct Waiter<W> {
    id: u64,
    waiter: W,
}

/// The bridge state machine (see the module documentation for the driving contract).
///
/// `W` is what a waiting join is handed back as, `P` a publish's ack, `M` a message as the
/// driver sends it.
#[derive(Debug)]
pub struct Bridge<W, P, M> {
    config: BridgeConfig,
    link: Link,
    generation: u64,
    connected_before: bool,
    outage_reported: bool,
    backoff: Backoff,
    topics: HashMap<Topic, TopicState>,
    dirty: VecDeque<Topic>,
    lingering: VecDeque<(Time, Topic)>,
    resubscribing: usize,
    edges: Option<EdgeBatch>,
    waiters: HashMap<Topic, Vec<Waiter<W>>>,
    deadlines: VecDeque<(Time, u64, Topic)>,
    next_waiter: u64,
    queue: VecDeque<(M, P, usize)>,
    queued_bytes: usize,
    in_flight: Option<PublishBatch<P>>,
    ping: Ping,
    draining: bool,
    outputs: VecDeque<Action<W, P, M>>,
}

impl<W, P, M> Bridge<W, P, M> {
    /// A bridge that is down and connects at its first [`handle_tick`](Self::handle_tick).
    #[must_use]
    pub fn new(config: BridgeConfig, now: Time) -> Self {
        Self {
            backoff: Backoff::new(config.min_backoff, config.max_backoff, config.jitter_seed),
            config,
            link: Link::Down { retry_at: now },
            generation: 0,
            connected_before: false,
            outage_reported: false,
            topics: HashMap::new(),
            dirty: VecDeque::new(),
            lingering: VecDeque::new(),
            resubscribing: 0,
            edges: None,
            waiters: HashMap::new(),
            deadlines: VecDeque::new(),
            next_waiter: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            in_flight: None,
            ping: Ping::Due(now),
            draining: false,
            outputs: VecDeque::new(),
        }
    }

    /// The next thing to do, oldest first.
    pub fn poll(&mut self) -> Option<Action<W, P, M>> {
        self.outputs.pop_front()
    }

    /// When [`handle_tick`](Self::handle_tick) must run next (`None`: only on new input).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        let link = match self.link {
            Link::Down { retry_at } => Some(retry_at),
            Link::Connecting { deadline } => Some(deadline),
            Link::Up { .. } => {
                let ping = match self.ping {
                    Ping::Due(at) => at,
                    Ping::InFlight(sent) => sent + self.config.request_timeout(),
                };
                Some(
                    self.oldest_request()
                        .map_or(ping, |sent| ping.min(sent + self.config.request_timeout())),
                )
            }
        };
        [
            link,
            self.deadlines.front().map(|(at, ..)| *at),
            self.lingering.front().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether the link is connected.
    #[must_use]
    pub const fn is_up(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }

    /// Whether the link is connected and resubscribed: the node delivers everywhere.
    #[must_use]
    pub const fn is_ready(&self) -> bool {
        matches!(self.link, Link::Up { ready: true })
    }

    /// The current generation (the last connection attempted).
    #[must_use]
    pub const fn generation(&self) -> Generation {
        Generation(self.generation)
    }

    /// Publishes queued or in flight.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queue.len() + self.in_flight.as_ref().map_or(0, |b| b.acks.len())
    }

    /// Bytes of publishes queued or in flight.
    #[must_use]
    pub const fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Topics the bridge keeps (wanted, subscribed, or being changed).
    #[must_use]
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Whether the backend has confirmed `topic`'s subscription on the current connection.
    #[must_use]
    pub fn is_subscribed(&self, topic: &Topic) -> bool {
        self.is_up() && self.topics.get(topic).is_some_and(|state| state.upstream)
    }

    /// Whether nothing waits to be published (what a shutdown waits for).
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_none()
    }

    /// Time passed: reconnects, checks liveness, expires waiters and lingers.
    pub fn handle_tick(&mut self, now: Time) {
        self.drive(now);
    }

    /// The registry reports `topic`'s first local subscriber.
    pub fn handle_subscribe(&mut self, topic: &Topic, now: Time) {
        let state = self.topics.entry(topic.clone()).or_default();
        state.wanted = true;
        state.linger_until = None;
        state.refused = None;
        self.mark_dirty(topic);
        self.drive(now);
    }

    /// The registry reports that `topic` lost its last local subscriber.
    pub fn handle_unsubscribe(&mut self, topic: &Topic, now: Time) {
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        state.wanted = false;
        if state.resubscribing {
            state.resubscribing = false;
            self.resubscribing -= 1;
        }
        let linger = self.config.unsubscribe_linger;
        let until = now + linger;
        state.linger_until = Some(until);
        if linger.is_zero() {
            self.mark_dirty(topic);
        } else {
            self.lingering.push_back((until, topic.clone()));
        }
        self.forget_if_idle(topic);
        self.drive(now);
    }

    /// A join on `topic` waits until its subscription is in effect; `waiter` comes back in an
    /// [`Action::Answer`] (at once when the answer is known now).
    pub fn handle_wait(&mut self, topic: &Topic, waiter: W, now: Time) {
        if !self.is_up() {
            self.outputs.push_back(Action::Answer {
                waiter,
                outcome: WaitOutcome::LocalOnly,
            });
            return;
        }
        let state = self.topics.entry(topic.clone()).or_default();
        if state.wanted && state.upstream && !state.in_flight {
            self.outputs.push_back(Action::Answer {
                waiter,
                outcome: WaitOutcome::Confirmed,
            });
            return;
        }
        // A topic the backend refused gets one more attempt for every new join.
        state.refused = None;
        self.mark_dirty(topic);
        self.next_waiter += 1;
        let id = self.next_waiter;
        self.waiters
            .entry(topic.clone())
            .or_default()
            .push(Waiter { id, waiter });
        self.deadlines
            .push_back((now + self.config.subscribe_timeout, id, topic.clone()));
        self.drive(now);
    }

    /// Queues a message of `bytes` bytes for the backend; `ack` comes back in an
    /// [`Action::Published`] (at once when it cannot be queued).
    pub fn handle_publish(&mut self, message: M, bytes: usize, ack: P, now: Time) {
        let outcome = if self.draining || !self.is_up() {
            Some(PublishOutcome::Unavailable)
        } else if self.queued() >= self.config.max_queued_messages
            || self.queued_bytes + bytes > self.config.max_queued_bytes
        {
            Some(PublishOutcome::QueueFull)
        } else {
            None
        };
        if let Some(outcome) = outcome {
            self.outputs.push_back(Action::Published { ack, outcome });
            return;
        }
        self.queued_bytes += bytes;
        self.queue.push_back((message, ack, bytes));
        self.drive(now);
    }

    /// The connect attempt of `generation` succeeded.
    pub fn handle_connected(&mut self, generation: Generation, now: Time) {
        if generation.0 != self.generation || !matches!(self.link, Link::Connecting { .. }) {
            self.outputs.push_back(Action::Disconnect { generation });
            return;
        }
        self.link = Link::Up { ready: false };
        self.backoff.reset();
        self.outage_reported = false;
        self.ping = Ping::Due(now + self.config.ping_interval());
        let wanted: Vec<Topic> = self
            .topics
            .iter_mut()
            .filter(|(_, state)| state.wanted)
            .map(|(topic, state)| {
                state.resubscribing = true;
                topic.clone()
            })
            .collect();
        self.resubscribing = wanted.len();
        for topic in &wanted {
            self.mark_dirty(topic);
        }
        self.outputs
            .push_back(Action::Status(LinkStatus::Connected {
                reconnect: self.connected_before,
                resubscribing: wanted.len(),
            }));
        self.connected_before = true;
        self.check_ready();
        self.drive(now);
    }

    /// The connect attempt of `generation` failed.
    pub fn handle_connect_failed(&mut self, generation: Generation, reason: &str, now: Time) {
        if generation.0 == self.generation && matches!(self.link, Link::Connecting { .. }) {
            self.go_down(reason, now);
        }
    }

    /// A connection of `generation` broke (its stream ended, a request failed on it).
    pub fn handle_link_lost(&mut self, generation: Generation, reason: &str, now: Time) {
        if generation.0 == self.generation && self.is_up() {
            self.go_down(reason, now);
        }
    }

    /// Every connection of `generation` answered the ping.
    pub fn handle_pong(&mut self, generation: Generation, now: Time) {
        if generation.0 == self.generation && self.is_up() {
            if let Ping::InFlight(_) = self.ping {
                self.ping = Ping::Due(now + self.config.ping_interval());
            }
            self.drive(now);
        }
    }

    /// The edge batch of `generation` is done: applied, refused, or failed.
    pub fn handle_edges_done(
        &mut self,
        generation: Generation,
        result: Result<(), RequestError>,
        now: Time,
    ) {
        if generation.0 != self.generation || !self.is_up() {
            return;
        }
        let Some(batch) = self.edges.take() else {
            return;
        };
        match result {
            Ok(()) => {
                for topic in &batch.topics {
                    self.edge_applied(topic, batch.op);
                }
            }
            Err(RequestError::Failed(reason)) => {
                self.go_down(&format!("subscription change failed: {reason}"), now);
                return;
            }
            Err(RequestError::Refused(_)) if batch.topics.len() > 1 => {
                // Learn which topic the backend refuses: send each alone, in the same order,
                // ahead of everything else.
                for topic in batch.topics.iter().rev() {
                    if let Some(state) = self.topics.get_mut(topic) {
                        state.in_flight = false;
                        state.solo = true;
                        if !state.queued {
                            state.queued = true;
                            self.dirty.push_front(topic.clone());
                        }
                    }
                }
            }
            Err(RequestError::Refused(reason)) => {
                for topic in &batch.topics {
                    self.edge_refused(topic, batch.op, &reason);
                }
            }
        }
        self.check_ready();
        self.drive(now);
    }

    /// The publish batch of `generation` is done: one result per message on success (with the
    /// position the backend gave it, for a publication with history), or the reason the batch
    /// failed (which ends the link).
    pub fn handle_published(
        &mut self,
        generation: Generation,
        result: Result<Vec<Result<Option<Position>, String>>, String>,
        now: Time,
    ) {
        if generation.0 != self.generation || !self.is_up() {
            return;
        }
        let results = match result {
            Ok(results) => results,
            Err(reason) => {
                self.go_down(&format!("publish failed: {reason}"), now);
                return;
            }
        };
        let Some(batch) = self.in_flight.take() else {
            return;
        };
        let mut results = results.into_iter();
        for (ack, bytes) in batch.acks {
            self.queued_bytes -= bytes;
            let outcome = match results.next() {
                Some(Ok(position)) => PublishOutcome::Sent { position },
                Some(Err(reason)) => PublishOutcome::Refused(reason),
                None => PublishOutcome::Lost,
            };
            self.outputs.push_back(Action::Published { ack, outcome });
        }
        self.drive(now);
    }

    /// The node is shutting down: publish what is queued, accept nothing new.
    pub fn handle_shutdown(&mut self, now: Time) {
        self.draining = true;
        self.drive(now);
    }

    /// Expires timers, starts what is due, sends what waits.
    fn drive(&mut self, now: Time) {
        self.expire_waiters(now);
        self.end_lingers(now);
        match self.link {
            Link::Down { retry_at } if now >= retry_at => {
                self.generation += 1;
                self.link = Link::Connecting {
                    deadline: now + self.config.connect_timeout,
                };
                self.outputs.push_back(Action::Connect {
                    generation: Generation(self.generation),
                });
            }
            Link::Connecting { deadline } if now >= deadline => {
                let timeout = self.config.connect_timeout;
                self.go_down(&format!("connect timed out after {timeout:?}"), now);
            }
            Link::Up { .. } => {
                let timeout = self.config.request_timeout();
                let oldest = match self.ping {
                    Ping::InFlight(sent) => Some(
                        self.oldest_request()
                            .map_or(sent, |oldest| oldest.min(sent)),
                    ),
                    Ping::Due(_) => self.oldest_request(),
                };
                if oldest.is_some_and(|sent| now.saturating_duration_since(sent) >= timeout) {
                    self.go_down(&format!("the backend did not answer for {timeout:?}"), now);
                    return;
                }
                if let Ping::Due(at) = self.ping {
                    if now >= at {
                        self.ping = Ping::InFlight(now);
                        self.outputs.push_back(Action::Ping {
                            generation: Generation(self.generation),
                        });
                    }
                }
                self.send_edges(now);
                self.send_publishes(now);
            }
            _ => {}
        }
    }

    fn oldest_request(&self) -> Option<Time> {
        let edges = self.edges.as_ref().map(|b| b.sent);
        let publishes = self.in_flight.as_ref().map(|b| b.sent);
        edges.into_iter().chain(publishes).min()
    }

    fn expire_waiters(&mut self, now: Time) {
        while let Some((deadline, ..)) = self.deadlines.front() {
            if *deadline > now {
                break;
            }
            let Some((_, id, topic)) = self.deadlines.pop_front() else {
                break;
            };
            let Some(list) = self.waiters.get_mut(&topic) else {
                continue;
            };
            let Some(index) = list.iter().position(|w| w.id == id) else {
                continue;
            };
            let waiter = list.remove(index).waiter;
            if list.is_empty() {
                self.waiters.remove(&topic);
            }
            self.outputs.push_back(Action::Answer {
                waiter,
                outcome: WaitOutcome::TimedOut,
            });
            self.forget_if_idle(&topic);
        }
    }

    fn end_lingers(&mut self, now: Time) {
        while let Some((until, _)) = self.lingering.front() {
            if *until > now {
                break;
            }
            let Some((until, topic)) = self.lingering.pop_front() else {
                break;
            };
            let current = self
                .topics
                .get(&topic)
                .is_some_and(|state| !state.wanted && state.linger_until == Some(until));
            if current {
                self.mark_dirty(&topic);
            }
        }
    }

    fn mark_dirty(&mut self, topic: &Topic) {
        if let Some(state) = self.topics.get_mut(topic) {
            if !state.queued {
                state.queued = true;
                self.dirty.push_back(topic.clone());
            }
        }
    }

    /// Sends the next batch of subscription changes, if none is in flight: topics needing
    /// the same change, oldest first.
    fn send_edges(&mut self, now: Time) {
        if self.edges.is_some() || !self.is_up() {
            return;
        }
        let max = self.config.max_edge_batch.max(1);
        let mut op = None;
        let mut batch = Vec::new();
        let mut aside = Vec::new();
        while let Some(topic) = self.dirty.pop_front() {
            let Some(state) = self.topics.get_mut(&topic) else {
                continue;
            };
            state.queued = false;
            let Some(needed) = state.needed(now) else {
                self.forget_if_idle(&topic);
                continue;
            };
            let solo = state.solo;
            match op {
                None => {
                    op = Some(needed);
                    batch.push(topic);
                    if solo {
                        break;
                    }
                }
                Some(op) if op == needed && !solo => batch.push(topic),
                Some(_) => aside.push(topic),
            }
            if batch.len() >= max || aside.len() >= max {
                break;
            }
        }
        for topic in aside.into_iter().rev() {
            if let Some(state) = self.topics.get_mut(&topic) {
                state.queued = true;
                self.dirty.push_front(topic);
            }
        }
        let Some(op) = op else {
            return;
        };
        for topic in &batch {
            if let Some(state) = self.topics.get_mut(topic) {
                state.in_flight = true;
            }
        }
        self.outputs.push_back(Action::Edges {
            generation: Generation(self.generation),
            op,
            topics: batch.clone(),
        });
        self.edges = Some(EdgeBatch {
            op,
            topics: batch,
            sent: now,
        });
    }

    fn send_publishes(&mut self, now: Time) {
        if self.in_flight.is_some() || self.queue.is_empty() || !self.is_up() {
            return;
        }
        let take = self.queue.len().min(self.config.max_publish_batch.max(1));
        let mut messages = Vec::with_capacity(take);
        let mut acks = Vec::with_capacity(take);
        for (message, ack, bytes) in self.queue.drain(..take) {
            messages.push(message);
            acks.push((ack, bytes));
        }
        self.outputs.push_back(Action::Publish {
            generation: Generation(self.generation),
            messages,
        });
        self.in_flight = Some(PublishBatch { acks, sent: now });
    }

    fn edge_applied(&mut self, topic: &Topic, op: EdgeOp) {
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        state.in_flight = false;
        state.solo = false;
        match op {
            EdgeOp::Subscribe => {
                state.upstream = true;
                if state.resubscribing {
                    state.resubscribing = false;
                    self.resubscribing -= 1;
                }
                self.answer_waiters(topic, &WaitOutcome::Confirmed);
            }
            EdgeOp::Unsubscribe => state.upstream = false,
        }
        self.mark_dirty(topic);
    }

    fn edge_refused(&mut self, topic: &Topic, op: EdgeOp, reason: &str) {
        let Some(state) = self.topics.get_mut(topic) else {
            return;
        };
        state.in_flight = false;
        state.solo = false;
        match op {
            EdgeOp::Subscribe => {
                state.refused = Some(reason.to_owned());
                if state.resubscribing {
                    state.resubscribing = false;
                    self.resubscribing -= 1;
                }
                self.answer_waiters(topic, &WaitOutcome::Refused(reason.to_owned()));
            }
            // A refused unsubscription leaves nothing to undo that a reconnect would not:
            // count the topic as gone.
            EdgeOp::Unsubscribe => state.upstream = false,
        }
        self.outputs.push_back(Action::EdgeRefused {
            topic: topic.clone(),
            op,
            reason: reason.to_owned(),
        });
        self.mark_dirty(topic);
    }

    fn answer_waiters(&mut self, topic: &Topic, outcome: &WaitOutcome) {
        for Waiter { waiter, .. } in self.waiters.remove(topic).unwrap_or_default() {
            self.outputs.push_back(Action::Answer {
                waiter,
                outcome: outcome.clone(),
            });
        }
    }

    /// Drops a topic's entry once nothing about it is left to do.
    fn forget_if_idle(&mut self, topic: &Topic) {
        let idle = self.topics.get(topic).is_some_and(|state| {
            !state.wanted && !state.upstream && !state.in_flight && !state.queued
        });
        if idle && !self.waiters.contains_key(topic) {
            self.topics.remove(topic);
        }
    }

    fn check_ready(&mut self) {
        if self.link == (Link::Up { ready: false }) && self.resubscribing == 0 {
            self.link = Link::Up { ready: true };
            self.outputs.push_back(Action::Status(LinkStatus::Ready));
        }
    }

    /// The link is gone: every promise that depended on it is settled now.
    fn go_down(&mut self, reason: &str, now: Time) {
        self.outputs.push_back(Action::Disconnect {
            generation: Generation(self.generation),
        });
        let retry_in: Duration = self.backoff.next_delay();
        self.link = Link::Down {
            retry_at: now + retry_in,
        };
        self.edges = None;
        self.dirty.clear();
        self.lingering.clear();
        self.resubscribing = 0;
        self.topics.retain(|_, state| {
            state.upstream = false;
            state.in_flight = false;
            state.queued = false;
            state.resubscribing = false;
            state.refused = None;
            state.solo = false;
            state.linger_until = None;
            state.wanted
        });
        self.deadlines.clear();
        for (_, list) in std::mem::take(&mut self.waiters) {
            for Waiter { waiter, .. } in list {
                self.outputs.push_back(Action::Answer {
                    waiter,
                    outcome: WaitOutcome::LocalOnly,
                });
            }
        }
        let in_flight = self.in_flight.take().map(|b| b.acks).unwrap_or_default();
        for (ack, _) in in_flight {
            self.outputs.push_back(Action::Published {
                ack,
                outcome: PublishOutcome::Lost,
            });
        }
        for (_, ack, _) in std::mem::take(&mut self.queue) {
            self.outputs.push_back(Action::Published {
                ack,
                outcome: PublishOutcome::Lost,
            });
        }
        self.queued_bytes = 0;
        self.ping = Ping::Due(now);
        self.outputs.push_back(Action::Status(LinkStatus::Down {
            reason: reason.to_owned(),
            notable: !self.outage_reported,
        }));
        self.outage_reported = true;
    }
}

#[cfg(test)]
mod tests;
