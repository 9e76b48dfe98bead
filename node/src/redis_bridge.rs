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

use actix::prelude::*;
use redis::aio::{MultiplexedConnection, PubSubSink};
use switchboard_core::Topic;
use tracing::{debug, info, warn};

use crate::bridge::{self, Edge, Link, Outgoing};
pub use crate::bridge::{BRIDGE_MAILBOX_CAPACITY, CONNECT_TIMEOUT, MAX_BACKOFF, MIN_BACKOFF};
use crate::envelope;
use crate::hub::{Hub, ListTopics};
use crate::metrics::{self, Metrics};
use crate::upstream::{UpstreamPublish, UpstreamSubscribe, UpstreamUnsubscribe};

/// Most publishes sent in one pipeline.
const MAX_BATCH: usize = 1024;
/// Most channels in one SUBSCRIBE during a resubscription.
const SUBSCRIBE_CHUNK: usize = 1000;

/// The live connections.
struct Connection {
    sink: PubSubSink,
    publisher: MultiplexedConnection,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

/// The Redis bridge. Runs on its own arbiter (thread).
pub struct RedisBridge {
    client: redis::Client,
    prefix: String,
    origin: String,
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
    link: Link<Connection>,
    /// (channel, envelope) pairs waiting to be published.
    outgoing: Outgoing<(String, String)>,
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
            link: Link::new(),
            outgoing: Outgoing::default(),
        })
    }

    fn channel(&self, topic: &Topic) -> String {
        format!("{}{}", self.prefix, topic)
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let generation = self.link.connecting();
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
        ctx.spawn(attempt.into_actor(self).map(move |outcome, act, ctx| {
            let outcome = outcome.unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "connect timed out",
                )))
            });
            match outcome {
                Ok((sink, stream, publisher, resubscribed)) => {
                    let connection = Connection { sink, publisher };
                    act.on_connected(generation, connection, stream, resubscribed, ctx);
                }
                Err(err) => act.on_failure(generation, &err.to_string(), ctx),
            }
        }));
    }

    fn on_connected(
        &mut self,
        generation: u64,
        connection: Connection,
        stream: redis::aio::PubSubStream,
        resubscribed: usize,
        ctx: &mut Context<Self>,
    ) {
        let Some(connected) = self.link.connected(generation, connection) else {
            return;
        };
        bridge::report_up(&self.hub, &self.metrics, &connected);
        info!(
            resubscribed,
            replayed = connected.pending.len(),
            "redis bridge up"
        );
        for edge in connected.pending {
            self.apply(edge, ctx);
        }
        ctx.spawn(
            fut::wrap_stream::<_, Self>(stream)
                .map(|msg: redis::Msg, act, _| act.on_message(&msg))
                .finish()
                .map(move |(), act, ctx| act.on_failure(generation, "connection closed", ctx)),
        );
    }

    fn on_failure(&mut self, generation: u64, why: &str, ctx: &mut Context<Self>) {
        let Some(lost) = self.link.failed(generation) else {
            return;
        };
        if lost.notable {
            warn!(reason = why, "redis bridge down; delivering locally only");
        } else {
            debug!(reason = why, "redis reconnect failed");
        }
        bridge::report_down(&self.hub, &self.metrics, self.outgoing.clear());
        ctx.run_later(lost.retry_in, |act, ctx| act.connect(ctx));
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
        bridge::deliver_incoming(
            &self.hub,
            &self.metrics,
            &self.origin,
            topic,
            msg.get_payload_bytes(),
        );
    }

    fn edge(&mut self, edge: Edge, ctx: &mut Context<Self>) {
        if let Some(edge) = self.link.edge(edge) {
            self.apply(edge, ctx);
        }
    }

    fn apply(&mut self, edge: Edge, ctx: &mut Context<Self>) {
        let Some(connection) = self.link.up() else {
            return;
        };
        let mut sink = connection.sink.clone();
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
        let Some(connection) = self.link.up() else {
            return;
        };
        let mut publisher = connection.publisher.clone();
        let Some(batch) = self.outgoing.next_batch(MAX_BATCH) else {
            return;
        };
        let count = batch.len() as u64;
        let mut pipe = redis::pipe();
        for (channel, message) in &batch {
            pipe.cmd("PUBLISH").arg(channel).arg(message).ignore();
        }
        ctx.spawn(
            async move { pipe.query_async::<()>(&mut publisher).await }
                .into_actor(self)
                .map(move |outcome, act, ctx| {
                    act.outgoing.done();
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
        if !self.link.is_up() {
            metrics::add(&self.metrics.bridge_lost, 1);
            return;
        }
        let message = envelope::encode(&self.origin, &msg.event, &msg.payload);
        self.outgoing.push((self.channel(&msg.topic), message));
        self.flush(ctx);
    }
}
