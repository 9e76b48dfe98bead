//! The PostgreSQL bridge actor: makes several nodes one system through `LISTEN`/`NOTIFY`.
//!
//! The same contract as the [Redis bridge](crate::redis_bridge), through the shared
//! [`bridge`] state: one dedicated connection `LISTEN`s, treated as an event source (its
//! [`Connection`] is polled as a stream of [`AsyncMessage::Notification`]s); a second one
//! publishes with `SELECT pg_notify($1, $2)`. The bridge `LISTEN`s on a topic's
//! [channel](crate::postgres_channel) when the hub reports its first local subscriber and
//! `UNLISTEN`s at its last, sending these changes in order, several per round trip. After
//! every (re)connect it `LISTEN`s again to the hub's own topic list.
//!
//! Delivery is local first with the same [envelope](crate::envelope) as Redis, so a node
//! drops its own echo and raw `pg_notify` payloads from applications arrive like raw Redis
//! messages. Publishes are pipelined in order, each its own transaction (PostgreSQL folds
//! identical notifications sent in one transaction into one), on a session with
//! `synchronous_commit = off`: a notification is never durable, so waiting for the WAL
//! flush would only slow it down. A publish over [`MAX_PAYLOAD_BYTES`] is refused by the hub
//! before it gets here ([`Upstream::limit`](crate::upstream::Upstream::limit)).
//!
//! While the database is unreachable the node keeps delivering locally, reports the bridge
//! down, counts the publishes other nodes miss, and reconnects with a backoff capped at
//! [`MAX_BACKOFF`](crate::bridge::MAX_BACKOFF).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;
use futures_util::StreamExt as _;
use switchboard_core::Topic;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Notification, Socket, Statement};
use tracing::{debug, info, warn};

use crate::bridge::{self, Edge, Link, Outgoing, BRIDGE_MAILBOX_CAPACITY, CONNECT_TIMEOUT};
use crate::envelope;
use crate::hub::{Hub, ListTopics};
use crate::metrics::{self, Metrics};
use crate::postgres_channel::{channel_name, is_mapped, quote_ident};
use crate::upstream::{MessageLimit, UpstreamPublish, UpstreamSubscribe, UpstreamUnsubscribe};

/// The largest `pg_notify` payload: PostgreSQL requires it to be shorter than 8000 bytes.
pub const MAX_PAYLOAD_BYTES: usize = 7999;
/// The limit publishes through PostgreSQL are held to (by the hub, and by sessions for
/// their error replies).
pub const MESSAGE_LIMIT: MessageLimit = MessageLimit {
    backend: "postgres",
    max_bytes: MAX_PAYLOAD_BYTES,
};
/// Most publishes pipelined in one batch.
const MAX_BATCH: usize = 1024;
/// Most `LISTEN`/`UNLISTEN` statements sent in one round trip.
const LISTEN_CHUNK: usize = 1000;
/// Notifications read from the socket but not yet handed to the hub; past it they are lost
/// (counted), so a stalled bridge never grows without bound.
const NOTIFICATION_BUFFER: usize = 16 * 1024;
/// What the bridge publishes with.
const NOTIFY_SQL: &str = "SELECT pg_notify($1, $2)";

/// Why a connect attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// Connecting, authenticating or a statement failed.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The hub did not answer with its topic list.
    #[error("the hub stopped")]
    HubStopped,
    /// The whole attempt took longer than [`CONNECT_TIMEOUT`].
    #[error("connect timed out")]
    TimedOut,
}

/// The live connections. The clients are shared with the futures that use them; dropping
/// the last handle closes a connection.
struct Live {
    listener: Rc<Client>,
    publisher: Rc<Client>,
    notify: Statement,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// What a successful connect attempt hands the actor.
struct Attempt {
    live: Live,
    notifications: mpsc::Receiver<Notification>,
    publisher_closed: oneshot::Receiver<Option<String>>,
    listening: usize,
}

/// The PostgreSQL bridge. Runs on its own arbiter (thread).
pub struct PostgresBridge {
    config: tokio_postgres::Config,
    prefix: String,
    origin: String,
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
    link: Link<Live>,
    /// `LISTEN`/`UNLISTEN` changes waiting to be sent.
    edges: Outgoing<Edge>,
    /// (channel, envelope) pairs waiting to be published.
    outgoing: Outgoing<(String, String)>,
    /// Mapped channel → its topic, for the topics with local subscribers whose channel is
    /// mapped (other channels name their topic after the prefix).
    mapped: HashMap<String, Topic>,
}

impl std::fmt::Debug for PostgresBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBridge")
            .field("prefix", &self.prefix)
            .field("origin", &self.origin)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

/// Parses a `--database-url`: a `postgres://` / `postgresql://` URL or a `key=value`
/// connection string, as libpq takes them.
///
/// # Errors
/// The text is neither.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_application_name().is_none() {
        config.application_name("switchboard");
    }
    config.connect_timeout(CONNECT_TIMEOUT);
    Ok(config)
}

impl PostgresBridge {
    /// A bridge to the database at `url` (not yet connected).
    ///
    /// # Errors
    /// The URL is not a valid connection string.
    pub fn new(
        url: &str,
        prefix: String,
        origin: String,
        hub: Addr<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            config: parse_url(url)?,
            prefix,
            origin,
            hub,
            metrics,
            link: Link::new(),
            edges: Outgoing::default(),
            outgoing: Outgoing::default(),
            mapped: HashMap::new(),
        })
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let generation = self.link.connecting();
        let attempt = connect(
            self.config.clone(),
            self.hub.clone(),
            self.prefix.clone(),
            self.metrics.clone(),
        );
        let attempt = async move {
            tokio::time::timeout(CONNECT_TIMEOUT, attempt)
                .await
                .unwrap_or(Err(ConnectError::TimedOut))
        };
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(move |outcome, act, ctx| match outcome {
                    Ok(attempt) => act.on_connected(generation, attempt, ctx),
                    Err(err) => act.on_failure(generation, &err.to_string(), ctx),
                }),
        );
    }

    fn on_connected(&mut self, generation: u64, attempt: Attempt, ctx: &mut Context<Self>) {
        let Attempt {
            live,
            mut notifications,
            publisher_closed,
            listening,
        } = attempt;
        let Some(connected) = self.link.connected(generation, live) else {
            return;
        };
        bridge::report_up(&self.hub, &self.metrics, &connected);
        info!(
            listening,
            replayed = connected.pending.len(),
            "postgres bridge up"
        );
        for edge in connected.pending {
            self.edges.push(edge);
        }
        self.flush_edges(ctx);
        let stream = futures_util::stream::poll_fn(move |cx| notifications.poll_recv(cx));
        ctx.spawn(
            fut::wrap_stream::<_, Self>(stream)
                .map(|notification: Notification, act, _| act.on_notification(&notification))
                .finish()
                .map(move |(), act, ctx| {
                    act.on_failure(generation, "listening connection closed", ctx);
                }),
        );
        ctx.spawn(publisher_closed.into_actor(self).map(move |why, act, ctx| {
            let why = why.ok().flatten().unwrap_or_else(|| "closed".into());
            act.on_failure(generation, &format!("publishing connection: {why}"), ctx);
        }));
    }

    fn on_failure(&mut self, generation: u64, why: &str, ctx: &mut Context<Self>) {
        let Some(lost) = self.link.failed(generation) else {
            return;
        };
        if lost.notable {
            warn!(
                reason = why,
                "postgres bridge down; delivering locally only"
            );
        } else {
            debug!(reason = why, "postgres reconnect failed");
        }
        // The next connect LISTENs to the hub's topic list, so queued changes are moot.
        let _ = self.edges.clear();
        bridge::report_down(&self.hub, &self.metrics, self.outgoing.clear());
        ctx.run_later(lost.retry_in, |act, ctx| act.connect(ctx));
    }

    fn on_notification(&mut self, notification: &Notification) {
        let channel = notification.channel();
        let topic = if is_mapped(channel) {
            self.mapped.get(channel).cloned()
        } else {
            channel
                .strip_prefix(self.prefix.as_str())
                .and_then(|name| Topic::new(name).ok())
        };
        let Some(topic) = topic else {
            debug!(
                channel,
                "notification on a channel that is not a topic of ours"
            );
            return;
        };
        bridge::deliver_incoming(
            &self.hub,
            &self.metrics,
            &self.origin,
            topic,
            notification.payload().as_bytes(),
        );
    }

    fn edge(&mut self, edge: Edge, ctx: &mut Context<Self>) {
        if let Some(edge) = self.link.edge(edge) {
            self.edges.push(edge);
            self.flush_edges(ctx);
        }
    }

    /// Sends the queued `LISTEN`/`UNLISTEN`s as one round trip, in order.
    fn flush_edges(&mut self, ctx: &mut Context<Self>) {
        let Some(live) = self.link.up() else {
            return;
        };
        let listener = Rc::clone(&live.listener);
        let Some(batch) = self.edges.next_batch(LISTEN_CHUNK) else {
            return;
        };
        let sql = listen_sql(&batch);
        ctx.spawn(
            async move { listener.batch_execute(&sql).await }
                .into_actor(self)
                .map(move |outcome, act, ctx| {
                    act.edges.done();
                    if let Err(err) = outcome {
                        // A broken connection ends the notification stream, which reconnects
                        // and LISTENs from the hub's list.
                        warn!(%err, changes = batch.len(), "postgres LISTEN/UNLISTEN failed");
                    }
                    act.flush_edges(ctx);
                }),
        );
    }

    /// Pipelines the queued publishes, in order, one transaction each.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let Some(live) = self.link.up() else {
            return;
        };
        let (publisher, notify) = (Rc::clone(&live.publisher), live.notify.clone());
        let Some(batch) = self.outgoing.next_batch(MAX_BATCH) else {
            return;
        };
        let count = batch.len() as u64;
        ctx.spawn(
            async move {
                // join_all polls the futures in order the first time, which is when each
                // sends its query: the pipeline keeps the publishing order.
                let results =
                    join_all(batch.iter().map(|(channel, message)| {
                        publisher.execute_raw(&notify, [channel, message])
                    }))
                    .await;
                let failed = results.iter().filter(|r| r.is_err()).count() as u64;
                (failed, results.into_iter().find_map(Result::err))
            }
            .into_actor(self)
            .map(move |(failed, first_error), act, ctx| {
                act.outgoing.done();
                metrics::add(&act.metrics.bridge_published, count - failed);
                if let Some(err) = first_error {
                    metrics::add(&act.metrics.bridge_lost, failed);
                    warn!(%err, lost = failed, "postgres publish failed");
                }
                act.flush(ctx);
            }),
        );
    }
}

/// One connect attempt: both connections, the publishing statement, and a `LISTEN` for every
/// topic the hub has.
async fn connect(
    config: tokio_postgres::Config,
    hub: Addr<Hub>,
    prefix: String,
    metrics: Arc<Metrics>,
) -> Result<Attempt, ConnectError> {
    let (listener, connection) = config.connect(NoTls).await?;
    let (sender, notifications) = mpsc::channel(NOTIFICATION_BUFFER);
    actix::spawn(forward_notifications(connection, sender, metrics));
    let (publisher, connection) = config.connect(NoTls).await?;
    let (closed, publisher_closed) = oneshot::channel();
    actix::spawn(async move {
        let outcome = connection.await;
        let _ = closed.send(outcome.err().map(|err| err.to_string()));
    });
    publisher
        .batch_execute("SET synchronous_commit = off")
        .await?;
    let notify = publisher.prepare(NOTIFY_SQL).await?;
    let topics = hub
        .send(ListTopics)
        .await
        .map_err(|_| ConnectError::HubStopped)?;
    let channels: Vec<Edge> = topics
        .iter()
        .map(|topic| Edge::Subscribe(channel_name(&prefix, topic.as_str())))
        .collect();
    for chunk in channels.chunks(LISTEN_CHUNK) {
        listener.batch_execute(&listen_sql(chunk)).await?;
    }
    Ok(Attempt {
        live: Live {
            listener: Rc::new(listener),
            publisher: Rc::new(publisher),
            notify,
        },
        notifications,
        publisher_closed,
        listening: channels.len(),
    })
}

/// Drives the listening connection: polls it as a stream of messages and passes the
/// notifications on. Ends (dropping `sender`, which tells the bridge) when the connection
/// does, or when the bridge has dropped the receiver.
async fn forward_notifications(
    mut connection: Connection<Socket, NoTlsStream>,
    sender: mpsc::Sender<Notification>,
    metrics: Arc<Metrics>,
) {
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(notification)) => match sender.try_send(notification) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::add(&metrics.bridge_lost, 1);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            },
            Ok(AsyncMessage::Notice(notice)) => debug!(%notice, "postgres notice"),
            Ok(_) => {}
            Err(err) => {
                debug!(%err, "postgres listening connection failed");
                return;
            }
        }
    }
}

/// One SQL string with a `LISTEN` or `UNLISTEN` per edge, in order.
fn listen_sql(edges: &[Edge]) -> String {
    let mut sql = String::new();
    for edge in edges {
        let (verb, channel) = match edge {
            Edge::Subscribe(channel) => ("LISTEN ", channel),
            Edge::Unsubscribe(channel) => ("UNLISTEN ", channel),
        };
        sql.push_str(verb);
        sql.push_str(&quote_ident(channel));
        sql.push(';');
    }
    sql
}

impl Actor for PostgresBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(BRIDGE_MAILBOX_CAPACITY);
        self.connect(ctx);
    }
}

impl Handler<UpstreamSubscribe> for PostgresBridge {
    type Result = ();

    fn handle(&mut self, msg: UpstreamSubscribe, ctx: &mut Self::Context) {
        let channel = channel_name(&self.prefix, msg.topic.as_str());
        if is_mapped(&channel) {
            self.mapped.insert(channel.clone(), msg.topic);
        }
        self.edge(Edge::Subscribe(channel), ctx);
    }
}

impl Handler<UpstreamUnsubscribe> for PostgresBridge {
    type Result = ();

    fn handle(&mut self, msg: UpstreamUnsubscribe, ctx: &mut Self::Context) {
        let channel = channel_name(&self.prefix, msg.topic.as_str());
        self.mapped.remove(&channel);
        self.edge(Edge::Unsubscribe(channel), ctx);
    }
}

impl Handler<UpstreamPublish> for PostgresBridge {
    type Result = ();

    fn handle(&mut self, msg: UpstreamPublish, ctx: &mut Self::Context) {
        if !self.link.is_up() {
            metrics::add(&self.metrics.bridge_lost, 1);
            return;
        }
        let message = envelope::encode(&self.origin, &msg.event, &msg.payload);
        if message.len() > MAX_PAYLOAD_BYTES {
            // The hub refuses these before they get here; never send a truncated message.
            metrics::add(&self.metrics.bridge_lost, 1);
            warn!(
                bytes = message.len(),
                "publish over the NOTIFY limit dropped"
            );
            return;
        }
        let channel = channel_name(&self.prefix, msg.topic.as_str());
        self.outgoing.push((channel, message));
        self.flush(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_statements_quote_every_channel_in_order() {
        let sql = listen_sql(&[
            Edge::Subscribe("room:1".into()),
            Edge::Unsubscribe(r#"we"ird"#.into()),
        ]);
        assert_eq!(sql, r#"LISTEN "room:1";UNLISTEN "we""ird";"#);
    }

    #[test]
    fn urls_and_connection_strings_parse() {
        let config = parse_url("postgres://sb@127.0.0.1:5433/app").unwrap();
        assert_eq!(config.get_application_name(), Some("switchboard"));
        assert_eq!(config.get_ports(), [5433]);
        let config = parse_url("host=/tmp port=5 user=x application_name=mine").unwrap();
        assert_eq!(config.get_application_name(), Some("mine"));
        assert!(parse_url("postgres://[bad").is_err());
    }
}
