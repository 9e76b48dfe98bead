//! The Redis bridge actor: makes several nodes one system through Redis pub/sub.
//!
//! One pub/sub connection per node, treated as an event source, and one multiplexed
//! connection for `PUBLISH`. The bridge subscribes to a channel (`<prefix><topic>`) only when
//! the hub reports a topic's first local subscriber and unsubscribes at its last. After every
//! (re)connect it resubscribes from the hub's own topic list, so the core stays the single
//! source of truth.
//!
//! Delivery is local first: the hub delivers a publish on this node at once and hands it to
//! the bridge, which publishes an [envelope](crate::envelope) carrying this process's random
//! origin id; when the message comes back from Redis the bridge drops it. Publishes are sent
//! in order, batched into one pipeline while the previous one is in flight.
//!
//! While Redis is unreachable the node keeps delivering locally, reports the bridge down (to
//! `/readyz` through the hub, and in metrics), counts the publishes other nodes miss, and
//! reconnects with a backoff capped at [`MAX_BACKOFF`].

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use redis::aio::{MultiplexedConnection, PubSubSink};
use switchboard_core::Topic;
use tracing::{debug, info, warn};

use crate::envelope;
use crate::hub::{BridgeStatus, Hub, Incoming, ListTopics};
use crate::metrics::{self, Metrics};
use crate::upstream::{UpstreamPublish, UpstreamSubscribe, UpstreamUnsubscribe};

/// First reconnect delay.
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest reconnect delay: a restarted Redis is used again within this long.
pub const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How long one connect attempt (both connections and the resubscription) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages the bridge's mailbox holds; the hub counts a publish it cannot queue as lost.
pub const BRIDGE_MAILBOX_CAPACITY: usize = 64 * 1024;
/// Most publishes sent in one pipeline.
const MAX_BATCH: usize = 1024;
/// Most channels in one SUBSCRIBE during a resubscription.
const SUBSCRIBE_CHUNK: usize = 1000;

/// A subscription change the hub reported.
#[derive(Debug, Clone)]
enum Edge {
    Subscribe(String),
    Unsubscribe(String),
}

/// Where the bridge is in its connection life.
#[derive(Debug)]
enum Link {
    /// Not connected; a reconnect is scheduled.
    Down,
    /// A connect attempt is running; edges reported meanwhile are replayed once it succeeds.
    Connecting { pending: Vec<Edge> },
    /// Connected.
    Up {
        sink: PubSubSink,
        publisher: MultiplexedConnection,
    },
}

/// The Redis bridge. Runs on its own arbiter (thread).
pub struct RedisBridge {
    client: redis::Client,
    prefix: String,
    origin: String,
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
    link: Link,
    /// Incremented per connection, so events of an old connection are recognised.
    generation: u64,
    backoff: Duration,
    connected_before: bool,
    batch: Vec<(String, String)>,
    flushing: bool,
}

impl std::fmt::Debug for RedisBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBridge")
            .field("prefix", &self.prefix)
            .field("origin", &self.origin)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl RedisBridge {
    /// A bridge to the Redis at `url` (not yet connected).
    ///
    /// # Errors
    /// The URL is not a valid Redis URL.
    pub fn new(
        url: &str,
        prefix: String,
        origin: String,
        hub: Addr<Hub>,
        metrics: Arc<Metrics>,
    ) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            prefix,
            origin,
            hub,
            metrics,
            link: Link::Down,
            generation: 0,
            backoff: MIN_BACKOFF,
            connected_before: false,
            batch: Vec::new(),
            flushing: false,
        })
    }

    fn channel(&self, topic: &Topic) -> String {
        format!("{}{}", self.prefix, topic)
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.link = Link::Connecting {
            pending: Vec::new(),
        };
        self.generation += 1;
        let client = self.client.clone();
        let hub = self.hub.clone();
        let prefix = self.prefix.clone();
        let attempt = async move {
            let pubsub = client.get_async_pubsub().await?;
            let publisher = client.get_multiplexed_async_connection().await?;
            let topics = hub
                .send(ListTopics)
                .await
                .map_err(|_| redis::RedisError::from((redis::ErrorKind::Client, "hub stopped")))?;
            let (mut sink, stream) = pubsub.split();
            let channels: Vec<String> = topics.iter().map(|t| format!("{prefix}{t}")).collect();
            for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
                sink.subscribe(chunk).await?;
            }
            Ok::<_, redis::RedisError>((sink, stream, publisher, channels.len()))
        };
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, attempt);
        ctx.spawn(attempt.into_actor(self).map(|outcome, act, ctx| {
            let outcome = outcome.unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "connect timed out",
                )))
            });
            match outcome {
                Ok((sink, stream, publisher, resubscribed)) => {
                    act.on_connected(sink, stream, publisher, resubscribed, ctx);
                }
                Err(err) => act.on_failure(&err.to_string(), ctx),
            }
        }));
    }

    fn on_connected(
        &mut self,
        sink: PubSubSink,
        stream: redis::aio::PubSubStream,
        publisher: MultiplexedConnection,
        resubscribed: usize,
        ctx: &mut Context<Self>,
    ) {
        let pending = match std::mem::replace(&mut self.link, Link::Up { sink, publisher }) {
            Link::Connecting { pending } => pending,
            _ => Vec::new(),
        };
        if self.connected_before {
            metrics::add(&self.metrics.bridge_reconnects, 1);
        }
        self.connected_before = true;
        self.backoff = MIN_BACKOFF;
        metrics::set(&self.metrics.bridge_up, 1);
        self.hub.do_send(BridgeStatus { up: true });
        info!(resubscribed, replayed = pending.len(), "redis bridge up");
        for edge in pending {
            self.apply(edge, ctx);
        }
        let generation = self.generation;
        ctx.spawn(
            fut::wrap_stream::<_, Self>(stream)
                .map(|msg: redis::Msg, act, _| act.on_message(&msg))
                .finish()
                .map(move |(), act, ctx| {
                    if act.generation == generation {
                        act.on_failure("connection closed", ctx);
                    }
                }),
        );
    }

    fn on_failure(&mut self, why: &str, ctx: &mut Context<Self>) {
        let was_up = matches!(self.link, Link::Up { .. });
        self.link = Link::Down;
        self.generation += 1;
        if was_up || !self.connected_before {
            warn!(reason = why, "redis bridge down; delivering locally only");
        } else {
            debug!(reason = why, "redis reconnect failed");
        }
        metrics::set(&self.metrics.bridge_up, 0);
        self.hub.do_send(BridgeStatus { up: false });
        let lost = self.batch.len();
        self.batch.clear();
        metrics::add(&self.metrics.bridge_lost, lost as u64);
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    fn on_message(&mut self, msg: &redis::Msg) {
        let Some(name) = msg.get_channel_name().strip_prefix(self.prefix.as_str()) else {
            return;
        };
        let Ok(topic) = Topic::new(name) else {
            debug!(
                channel = msg.get_channel_name(),
                "message on a channel that is not a valid topic"
            );
            return;
        };
        let received = envelope::decode(msg.get_payload_bytes());
        if received.origin.as_deref() == Some(self.origin.as_str()) {
            return;
        }
        metrics::add(&self.metrics.bridge_received, 1);
        let incoming = Incoming {
            topic,
            event: received.event,
            payload: received.payload,
        };
        if self.hub.try_send(incoming).is_err() {
            metrics::add(&self.metrics.bridge_lost, 1);
        }
    }

    fn edge(&mut self, edge: Edge, ctx: &mut Context<Self>) {
        match &mut self.link {
            Link::Connecting { pending } => pending.push(edge),
            // The next connect resubscribes from the hub's topic list.
            Link::Down => {}
            Link::Up { .. } => self.apply(edge, ctx),
        }
    }

    fn apply(&mut self, edge: Edge, ctx: &mut Context<Self>) {
        let Link::Up { sink, .. } = &self.link else {
            return;
        };
        let mut sink = sink.clone();
        ctx.spawn(
            async move {
                match &edge {
                    Edge::Subscribe(channel) => sink.subscribe(channel).await,
                    Edge::Unsubscribe(channel) => sink.unsubscribe(channel).await,
                }
                .map_err(|err| (edge, err))
            }
            .into_actor(self)
            .map(|outcome, _, _| {
                if let Err((edge, err)) = outcome {
                    // A broken connection ends the message stream, which reconnects.
                    warn!(?edge, %err, "redis subscription change failed");
                }
            }),
        );
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.batch.is_empty() {
            return;
        }
        let Link::Up { publisher, .. } = &self.link else {
            return;
        };
        let mut publisher = publisher.clone();
        let take = self.batch.len().min(MAX_BATCH);
        let batch: Vec<(String, String)> = self.batch.drain(..take).collect();
        let count = batch.len() as u64;
        let mut pipe = redis::pipe();
        for (channel, message) in &batch {
            pipe.cmd("PUBLISH").arg(channel).arg(message).ignore();
        }
        self.flushing = true;
        ctx.spawn(
            async move { pipe.query_async::<()>(&mut publisher).await }
                .into_actor(self)
                .map(move |outcome, act, ctx| {
                    act.flushing = false;
                    match outcome {
                        Ok(()) => metrics::add(&act.metrics.bridge_published, count),
                        Err(err) => {
                            metrics::add(&act.metrics.bridge_lost, count);
                            warn!(%err, lost = count, "redis publish failed");
                        }
                    }
                    act.flush(ctx);
                }),
        );
    }
}

impl Actor for RedisBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(BRIDGE_MAILBOX_CAPACITY);
        self.connect(ctx);
    }
}

impl Handler<UpstreamSubscribe> for RedisBridge {
    type Result = ();

    fn handle(&mut self, msg: UpstreamSubscribe, ctx: &mut Self::Context) {
        let channel = self.channel(&msg.topic);
        self.edge(Edge::Subscribe(channel), ctx);
    }
}

impl Handler<UpstreamUnsubscribe> for RedisBridge {
    type Result = ();

    fn handle(&mut self, msg: UpstreamUnsubscribe, ctx: &mut Self::Context) {
        let channel = self.channel(&msg.topic);
        self.edge(Edge::Unsubscribe(channel), ctx);
    }
}

impl Handler<UpstreamPublish> for RedisBridge {
    type Result = ();

    fn handle(&mut self, msg: UpstreamPublish, ctx: &mut Self::Context) {
        if !matches!(self.link, Link::Up { .. }) {
            metrics::add(&self.metrics.bridge_lost, 1);
            return;
        }
        let message = envelope::encode(&self.origin, &msg.event, &msg.payload);
        self.batch.push((self.channel(&msg.topic), message));
        self.flush(ctx);
    }
}
