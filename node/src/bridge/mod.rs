//! The bridge to a shared backend: one actor, generic over a small [`Backend`] trait, that
//! drives the core's [bridge state machine](switchboard_core::bridge::Bridge).
//!
//! The actor is a shell: it feeds the machine the hub's edges, waiting joins and publishes
//! (the [messages](crate::messages) it handles), performs what the machine asks through the
//! backend adapter (connect, apply a batch of subscription changes, publish a batch, ping),
//! reports every outcome back with the generation it ran on, and abandons whatever runs on a
//! generation the machine has ended. Every promise (joins answered only once subscribed,
//! ordered edges, bounded queues, liveness, reconnects) is the machine's, tested there.
//! What arrives from the backend is decoded ([`envelope`]) and handed to the hub through a
//! bounded mailbox; what does not fit is dropped and counted.
//!
//! # Layout
//! - [`backend`]: the [`Backend`] trait adapters implement.
//! - [`redis`]: the Redis adapter (pub/sub and pipelined `PUBLISH`).
//! - [`postgres`]: the PostgreSQL adapter (`LISTEN`/`NOTIFY`), and channel names.
//! - [`envelope`]: how messages look on the backend (`--envelope`).

pub mod backend;
pub mod envelope;
pub mod postgres;
pub mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use switchboard_core::bridge::{
    Action, Bridge, BridgeConfig, EdgeOp, Generation, LinkStatus, PublishOutcome, WaitOutcome,
};
use switchboard_core::presence::ops::{PresenceOp, PresenceReply};
use switchboard_core::presence::{self, event::Change};
use switchboard_core::{Time, Topic};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::messages::{
    Drain, Incoming, LinkLost, PresenceChanged, PresenceHeld, PresenceResync, UpstreamEdge,
    UpstreamPresence, UpstreamPublish, UpstreamRead, UpstreamWait,
};
use crate::metrics::{self, Metrics};
pub use backend::Backend;
use backend::{Connected, Inbox, Outgoing, Received};
use envelope::{Format, Read};

/// Messages a bridge's mailbox holds; the hub counts a publish it cannot queue as lost.
pub const BRIDGE_MAILBOX_CAPACITY: usize = 64 * 1024;

/// Messages from the backend waiting for the bridge; more are dropped and counted.
pub const INBOX_CAPACITY: usize = 16 * 1024;

type Machine = Bridge<oneshot::Sender<WaitOutcome>, oneshot::Sender<PublishOutcome>, Outgoing>;

/// The bridge actor. Runs on its own arbiter (thread).
pub struct BridgeActor<B: Backend> {
    backend: B,
    machine: Machine,
    format: Format,
    /// The connections of the live generation.
    link: Option<(Generation, B::Link)>,
    /// What runs on `running_generation` (its connect attempt included), to abandon when it
    /// ends.
    running: HashMap<u64, SpawnHandle>,
    running_generation: Generation,
    next_request: u64,
    /// Subscribed channel → its topic (channels are not always prefix + topic).
    channels: HashMap<String, Topic>,
    incoming: Recipient<Incoming>,
    /// Where presence changes and "the bridge is up" go, when presence is on.
    presence: Option<PresenceLink>,
    /// Told when the link is lost, once per outage.
    link_lost: Option<Recipient<LinkLost>>,
    metrics: Arc<Metrics>,
    epoch: Instant,
    timer: Option<(Time, SpawnHandle)>,
    drains: Vec<oneshot::Sender<()>>,
    /// How long a history read may take.
    read_timeout: std::time::Duration,
}

impl<B: Backend> std::fmt::Debug for BridgeActor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeActor")
            .field("backend", &self.backend.name())
            .field("format", &self.format)
            .field("generation", &self.machine.generation())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> BridgeActor<B> {
    /// A bridge through `backend`, speaking `format`, handing what arrives to `incoming`.
    #[must_use]
    pub fn new(
        backend: B,
        config: BridgeConfig,
        format: Format,
        incoming: Recipient<Incoming>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            backend,
            read_timeout: config.request_timeout(),
            machine: Bridge::new(config, Time::ZERO),
            format,
            link: None,
            running: HashMap::new(),
            running_generation: Generation::default(),
            next_request: 0,
            channels: HashMap::new(),
            incoming,
            presence: None,
            link_lost: None,
            metrics,
            epoch: Instant::now(),
            timer: None,
            drains: Vec::new(),
        }
    }

    /// The same bridge telling `lost` whenever its link is lost (once per outage).
    #[must_use]
    pub fn with_link_watch(mut self, lost: Recipient<LinkLost>) -> Self {
        self.link_lost = Some(lost);
        self
    }

    /// The same bridge doing presence's share (see [`PresenceLink`]).
    #[must_use]
    pub fn with_presence(mut self, link: PresenceLink) -> Self {
        self.presence = Some(link);
        self
    }

    /// Refreshes this node's presence liveness on the backend (reaping nodes whose liveness
    /// lapsed) and tells the hub how many entries the backend holds for it. Driven by the
    /// bridge's own timer, on its own thread, so a hub busy with a storm of joins cannot make
    /// its node look dead.
    fn presence_heartbeat(&mut self, ctx: &mut Context<Self>) {
        let Some(link) = &self.presence else {
            return;
        };
        let generation = self.machine.generation();
        let Some(live) = self
            .machine
            .is_up()
            .then(|| self.live(generation))
            .flatten()
        else {
            return;
        };
        let op = PresenceOp::Heartbeat {
            node: link.node.clone(),
            ttl: link.liveness,
        };
        let held = link.held.clone();
        let timeout = self.read_timeout;
        let request = self.backend.presence(&live, op);
        self.run(
            ctx,
            async move { tokio::time::timeout(timeout, request).await },
            move |act, result, _, _| match result {
                Ok(Ok(PresenceReply::Held(count))) => held.do_send(PresenceHeld { held: count }),
                other => {
                    metrics::add(&act.metrics.presence_errors, 1);
                    debug!(?other, "presence heartbeat failed");
                }
            },
        );
    }

    fn now(&self) -> Time {
        Time::from_since_epoch(self.epoch.elapsed())
    }

    /// Runs `request` on the current generation; its outcome goes to `done` unless the
    /// generation ends first.
    fn run<T: 'static>(
        &mut self,
        ctx: &mut Context<Self>,
        request: impl std::future::Future<Output = T> + 'static,
        done: impl FnOnce(&mut Self, T, Time, &mut Context<Self>) + 'static,
    ) {
        self.next_request += 1;
        let id = self.next_request;
        let handle = ctx.spawn(request.into_actor(self).map(move |outcome, act, ctx| {
            act.running.remove(&id);
            let now = act.now();
            done(act, outcome, now, ctx);
            act.perform(ctx);
        }));
        self.running.insert(id, handle);
    }

    /// Performs everything the machine asks for, then sets the timer for its next deadline.
    fn perform(&mut self, ctx: &mut Context<Self>) {
        while let Some(action) = self.machine.poll() {
            self.act(action, ctx);
        }
        if !self.drains.is_empty() && self.machine.is_idle() {
            for drained in self.drains.drain(..) {
                let _ = drained.send(());
            }
        }
        let next = self.machine.poll_timeout();
        if next != self.timer.as_ref().map(|(at, _)| *at) {
            if let Some((_, handle)) = self.timer.take() {
                ctx.cancel_future(handle);
            }
            if let Some(at) = next {
                let delay = at.saturating_duration_since(self.now());
                let handle = ctx.run_later(delay, move |act, ctx| {
                    act.timer = None;
                    let now = act.now();
                    act.machine.handle_tick(now);
                    act.perform(ctx);
                });
                self.timer = Some((at, handle));
            }
        }
    }

    fn act(&mut self, action: MachineAction, ctx: &mut Context<Self>) {
        match action {
            Action::Connect { generation } => {
                self.running_generation = generation;
                self.connect(generation, ctx);
            }
            Action::Disconnect { generation } => {
                if self
                    .link
                    .as_ref()
                    .is_some_and(|(live, _)| *live == generation)
                {
                    self.link = None;
                    self.channels.clear();
                }
                if self.running_generation == generation {
                    for (_, handle) in self.running.drain() {
                        ctx.cancel_future(handle);
                    }
                }
            }
            Action::Edges {
                generation,
                op,
                topics,
            } => {
                let Some(link) = self.live(generation) else {
                    return;
                };
                let channels: Vec<String> = topics
                    .iter()
                    .map(|topic| self.backend.channel(topic))
                    .collect();
                if op == EdgeOp::Subscribe {
                    // Messages may arrive as soon as the backend has the subscription, before
                    // its confirmation is read.
                    for (channel, topic) in channels.iter().zip(&topics) {
                        self.channels.insert(channel.clone(), topic.clone());
                    }
                }
                let request = self.backend.apply(&link, op, channels.clone());
                self.run(ctx, request, move |act, result, now, _| {
                    if op == EdgeOp::Unsubscribe && result.is_ok() {
                        for channel in &channels {
                            act.channels.remove(channel);
                        }
                    }
                    act.machine.handle_edges_done(generation, result, now);
                });
            }
            Action::Publish {
                generation,
                messages,
            } => {
                let Some(link) = self.live(generation) else {
                    return;
                };
                let request = self.backend.publish(&link, messages);
                self.run(ctx, request, move |act, result, now, _| {
                    act.machine.handle_published(generation, result, now);
                });
            }
            Action::Ping { generation } => {
                let Some(link) = self.live(generation) else {
                    return;
                };
                let request = self.backend.ping(&link);
                self.run(ctx, request, move |act, result, now, _| match result {
                    Ok(()) => act.machine.handle_pong(generation, now),
                    Err(reason) => act.machine.handle_link_lost(generation, &reason, now),
                });
            }
            Action::Answer { waiter, outcome } => {
                let _ = waiter.send(outcome);
            }
            Action::Published { ack, outcome } => {
                let counter = if outcome.is_sent() {
                    &self.metrics.bridge_published
                } else {
                    &self.metrics.bridge_lost
                };
                metrics::add(counter, 1);
                let _ = ack.send(outcome);
            }
            Action::EdgeRefused { topic, op, reason } => {
                warn!(%topic, ?op, %reason, backend = self.backend.name(), "subscription change refused");
            }
            Action::Status(status) => self.report(&status),
            other => debug!(?other, "bridge action not handled"),
        }
    }

    fn live(&self, generation: Generation) -> Option<B::Link> {
        self.link
            .as_ref()
            .filter(|(live, _)| *live == generation)
            .map(|(_, link)| link.clone())
    }

    fn connect(&mut self, generation: Generation, ctx: &mut Context<Self>) {
        let (inbox, received) = Inbox::new(INBOX_CAPACITY, self.metrics.clone());
        let attempt = self.backend.connect(inbox);
        self.run(ctx, attempt, move |act, outcome, now, ctx| match outcome {
            Ok(Connected { link, closed }) => {
                act.link = Some((generation, link));
                act.read(generation, received, closed, ctx);
                // A stale attempt is told to disconnect, which `perform` does next.
                act.machine.handle_connected(generation, now);
            }
            Err(reason) => act.machine.handle_connect_failed(generation, &reason, now),
        });
    }

    /// Reads what arrives on `generation`, and notices its connections ending.
    fn read(
        &mut self,
        generation: Generation,
        received: mpsc::Receiver<Received>,
        closed: futures_util::future::LocalBoxFuture<'static, String>,
        ctx: &mut Context<Self>,
    ) {
        let mut received = received;
        let stream = futures_util::stream::poll_fn(move |cx| received.poll_recv(cx));
        let reader = fut::wrap_stream::<_, Self>(stream)
            .map(|received, act, _| act.receive(&received))
            .finish();
        self.next_request += 1;
        let handle = ctx.spawn(reader.map(move |(), act, ctx| {
            let now = act.now();
            act.machine
                .handle_link_lost(generation, "the backend closed the connection", now);
            act.perform(ctx);
        }));
        self.running.insert(self.next_request, handle);
        self.run(ctx, closed, move |act, reason, now, _| {
            act.machine.handle_link_lost(generation, &reason, now);
        });
    }

    /// A message arrived: decode it and hand it to the hub.
    fn receive(&mut self, received: &Received) {
        let Some(topic) = self.channels.get(&received.channel) else {
            debug!(channel = %received.channel, "message on a channel not subscribed");
            return;
        };
        if let Some(members_of) = presence::topic_of(topic) {
            self.receive_presence(members_of, &received.body);
            return;
        }
        let decoded = match self.format.read(&received.body, received.from_self) {
            Read::Deliver(decoded) => decoded,
            Read::Echo => return,
            Read::Refused { event } => {
                metrics::add(&self.metrics.bridge_refused, 1);
                debug!(channel = %received.channel, %event, "message with a server-only event refused");
                return;
            }
        };
        metrics::add(&self.metrics.bridge_received, 1);
        let incoming = Incoming {
            topic: topic.clone(),
            event: decoded.event,
            payload: decoded.payload,
            position: decoded.position,
        };
        if self.incoming.try_send(incoming).is_err() {
            debug!("hub mailbox full; an incoming message is dropped");
            metrics::add(&self.metrics.bridge_dropped, 1);
        }
    }

    /// A presence change arrived on `topic`'s presence channel.
    fn receive_presence(&self, topic: Topic, body: &[u8]) {
        let Some(link) = &self.presence else {
            return;
        };
        match Change::parse(body) {
            Ok(change) => {
                if link
                    .changed
                    .try_send(PresenceChanged { topic, change })
                    .is_err()
                {
                    // A lost change would leave a list wrong: the hub reads them all again.
                    metrics::add(&self.metrics.bridge_dropped, 1);
                    warn!("hub mailbox full; a presence change is dropped, resyncing presence");
                    link.up.do_send(PresenceResync);
                }
            }
            Err(err) => {
                metrics::add(&self.metrics.presence_errors, 1);
                warn!(%topic, %err, "presence change refused");
            }
        }
    }

    fn report(&self, status: &LinkStatus) {
        let backend = self.backend.name();
        match status {
            LinkStatus::Connected {
                reconnect,
                resubscribing,
            } => {
                if *reconnect {
                    metrics::add(&self.metrics.bridge_reconnects, 1);
                }
                info!(backend, resubscribing, "bridge connected; subscribing");
            }
            LinkStatus::Ready => {
                metrics::set(&self.metrics.bridge_up, 1);
                info!(backend, "bridge up");
                if let Some(link) = &self.presence {
                    link.up.do_send(PresenceResync);
                }
            }
            LinkStatus::Down { reason, notable } => {
                metrics::set(&self.metrics.bridge_up, 0);
                if *notable {
                    warn!(backend, %reason, "bridge down; delivering locally only, reconnecting");
                    if let Some(lost) = &self.link_lost {
                        lost.do_send(LinkLost);
                    }
                } else {
                    debug!(backend, %reason, "reconnect failed");
                }
            }
            other => debug!(?other, "bridge status"),
        }
    }
}

/// What the bridge does for presence: hands the changes announced on the backend to
/// `changed`, tells `up` whenever changes may have been missed (it connected and subscribed
/// again, or a change did not fit the hub's mailbox), and keeps node `node` alive on the
/// backend: a heartbeat every `every` counting it alive for `liveness`, each answered to
/// `held`.
#[derive(Debug)]
pub struct PresenceLink {
    /// Where changes go.
    pub changed: Recipient<PresenceChanged>,
    /// Where "read every list again" goes.
    pub up: Recipient<PresenceResync>,
    /// Where each heartbeat's count goes.
    pub held: Recipient<PresenceHeld>,
    /// This node's id on the backend.
    pub node: String,
    /// How often to heartbeat.
    pub every: std::time::Duration,
    /// How long a heartbeat keeps the node alive.
    pub liveness: std::time::Duration,
}

type MachineAction =
    Action<oneshot::Sender<WaitOutcome>, oneshot::Sender<PublishOutcome>, Outgoing>;

impl<B: Backend> Actor for BridgeActor<B> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(BRIDGE_MAILBOX_CAPACITY);
        let now = self.now();
        self.machine.handle_tick(now);
        self.perform(ctx);
        if let Some(link) = &self.presence {
            ctx.run_interval(link.every, |act, ctx| act.presence_heartbeat(ctx));
        }
    }
}

impl<B: Backend> Handler<UpstreamEdge> for BridgeActor<B> {
    type Result = ();

    fn handle(&mut self, msg: UpstreamEdge, ctx: &mut Self::Context) {
        let now = self.now();
        match msg.op {
            EdgeOp::Subscribe => self.machine.handle_subscribe(&msg.topic, now),
            EdgeOp::Unsubscribe => self.machine.handle_unsubscribe(&msg.topic, now),
        }
        self.perform(ctx);
    }
}

impl<B: Backend> Handler<UpstreamWait> for BridgeActor<B> {
    type Result = ();

    fn handle(&mut self, msg: UpstreamWait, ctx: &mut Self::Context) {
        let now = self.now();
        self.machine.handle_wait(&msg.topic, msg.reply, now);
        self.perform(ctx);
    }
}

impl<B: Backend> Handler<UpstreamPublish> for BridgeActor<B> {
    type Result = ();

    fn handle(&mut self, msg: UpstreamPublish, ctx: &mut Self::Context) {
        let now = self.now();
        let outgoing = if msg.record {
            Outgoing::Record {
                topic: msg.topic,
                event: msg.event,
                payload: msg.payload.get().to_owned(),
            }
        } else {
            Outgoing::Message {
                channel: self.backend.channel(&msg.topic),
                body: self.format.encode(&msg.topic, &msg.event, &msg.payload),
            }
        };
        let bytes = outgoing.len();
        self.machine.handle_publish(outgoing, bytes, msg.ack, now);
        self.perform(ctx);
    }
}

impl<B: Backend> Handler<UpstreamRead> for BridgeActor<B> {
    type Result = ();

    fn handle(&mut self, msg: UpstreamRead, ctx: &mut Self::Context) {
        let UpstreamRead {
            topic,
            after,
            limit,
            reply,
        } = msg;
        let generation = self.machine.generation();
        let link = self
            .machine
            .is_up()
            .then(|| self.live(generation))
            .flatten();
        let Some(link) = link else {
            let _ = reply.send(Err(format!(
                "the {} backend is unreachable",
                self.backend.name()
            )));
            return;
        };
        metrics::add(&self.metrics.history_reads, 1);
        let timeout = self.read_timeout;
        let read = self.backend.read_history(&link, &topic, after, limit);
        let request = async move {
            match tokio::time::timeout(timeout, read).await {
                Ok(Ok(read)) => Ok(read),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!("the history read took longer than {timeout:?}")),
            }
        };
        // Abandoned with its generation: the reply is then dropped, which the hub reads as
        // "unavailable".
        self.run(ctx, request, move |_, result, _, _| {
            let _ = reply.send(result);
        });
    }
}

impl<B: Backend> Handler<UpstreamPresence> for BridgeActor<B> {
    type Result = ();

    fn handle(&mut self, msg: UpstreamPresence, ctx: &mut Self::Context) {
        let UpstreamPresence { op, reply } = msg;
        let generation = self.machine.generation();
        let link = self
            .machine
            .is_up()
            .then(|| self.live(generation))
            .flatten();
        let Some(link) = link else {
            let _ = reply.send(Err(format!(
                "the {} backend is unreachable",
                self.backend.name()
            )));
            return;
        };
        let timeout = self.read_timeout;
        let request = self.backend.presence(&link, op);
        let metrics = self.metrics.clone();
        let request = async move {
            let result = match tokio::time::timeout(timeout, request).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!(
                    "the presence operation took longer than {timeout:?}"
                )),
            };
            if result.is_err() {
                metrics::add(&metrics.presence_errors, 1);
            }
            result
        };
        // Abandoned with its generation: the reply is then dropped, which the hub reads as
        // "unavailable".
        self.run(ctx, request, move |_, result, _, _| {
            let _ = reply.send(result);
        });
    }
}

impl<B: Backend> Handler<Drain> for BridgeActor<B> {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (drained, done) = oneshot::channel();
        self.drains.push(drained);
        let now = self.now();
        self.machine.handle_shutdown(now);
        self.perform(ctx);
        Box::pin(async move {
            let _ = done.await;
        })
    }
}
