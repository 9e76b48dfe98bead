//! The Redis adapter: pub/sub on one connection, `PUBLISH` pipelined on another.
//!
//! The subscribing connection is a RESP2 pub/sub connection treated as an event source: its
//! messages are moved, as they arrive, into the bridge's bounded [`Inbox`] (the Redis client
//! itself buffers without bound). `SUBSCRIBE`/`UNSUBSCRIBE` of a batch is one command whose
//! completion is Redis' confirmation of every channel. Publishes go as one pipeline per batch
//! on a multiplexed connection without the client's own response timeout: the bridge machine
//! decides when an answer is too late.
//!
//! When a namespace keeps history the node loads its [function library](functions) on every
//! connect (a Redis restarted without persistence has lost it), publishes those topics'
//! messages with `FCALL switchboard_publish` (in the same pipeline, so the order holds) and
//! reads their streams with `FCALL switchboard_history`.
//!
//! When a namespace tracks presence ([`RedisBackend::with_presence`]) it loads the
//! [presence library](presence) too, and performs every presence operation as one `FCALL` of
//! it on the publishing connection.
//!
//! # Layout
//! - [`functions`]: the Lua library for history.
//! - [`presence`]: the Lua library for presence, its calls and its replies.

pub mod functions;
pub mod presence;

use std::sync::Arc;

use futures_util::future::{self, LocalBoxFuture};
use futures_util::{FutureExt as _, StreamExt as _};
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, RedisError};
use switchboard_core::bridge::{EdgeOp, RequestError};
use switchboard_core::history::recovery::{HistoryRead, Publication};
use switchboard_core::history::{Epoch, HistoryRules, Position};
use switchboard_core::{Payload, Topic};

use super::backend::{
    Backend, Connected, Inbox, Outgoing, PresenceOp, PresenceReply, PublishResults, Received,
};
use crate::config::EnvelopeFormat;

/// The connections of one generation.
#[derive(Clone)]
pub struct RedisLink {
    sink: PubSubSink,
    publisher: MultiplexedConnection,
}

/// The Redis adapter.
#[derive(Debug, Clone)]
pub struct RedisBackend {
    client: redis::Client,
    prefix: Arc<str>,
    /// The function library to load on connect, when a namespace keeps history.
    library: Option<Arc<str>>,
    /// The presence library to load on connect, when a namespace tracks presence.
    presence_library: Option<Arc<str>>,
}

impl RedisBackend {
    /// An adapter for the Redis at `url`, with channel = `prefix` + topic, messages in
    /// `format`, and history for the namespaces `rules` name.
    ///
    /// # Errors
    /// The URL is not a valid Redis URL.
    pub fn new(
        url: &str,
        prefix: &str,
        format: EnvelopeFormat,
        rules: &HistoryRules,
    ) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            prefix: prefix.into(),
            library: (!rules.is_empty()).then(|| functions::library(prefix, format, rules).into()),
            presence_library: None,
        })
    }

    /// The same adapter, loading the [presence library](presence) on every connect (call it
    /// when a namespace tracks presence).
    #[must_use]
    pub fn with_presence(self) -> Self {
        Self {
            presence_library: Some(presence::library(&self.prefix).into()),
            ..self
        }
    }
}

/// Loads `library` (`FUNCTION LOAD REPLACE`); the error says which feature needs it.
async fn load_library(
    publisher: &MultiplexedConnection,
    library: &str,
    what: &str,
) -> Result<(), String> {
    let mut publisher = publisher.clone();
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(library)
        .query_async::<String>(&mut publisher)
        .await
        .map(drop)
        .map_err(|e| format!("cannot load the switchboard {what} (Redis 7 or later): {e}"))
}

/// The position in a `switchboard_publish` reply (`[offset, epoch]`; offset 0: no history).
fn position_of(reply: &redis::Value) -> Result<Option<Position>, String> {
    let redis::Value::Array(parts) = reply else {
        return Err(format!("unexpected switchboard_publish reply {reply:?}"));
    };
    match parts.as_slice() {
        [redis::Value::Int(0), ..] => Ok(None),
        [offset, epoch] => {
            let offset: u64 = redis::from_redis_value_ref(offset).map_err(|e| e.to_string())?;
            let epoch: String = redis::from_redis_value_ref(epoch).map_err(|e| e.to_string())?;
            let epoch = Epoch::new(&epoch).map_err(|e| e.to_string())?;
            Ok(Some(Position::new(offset, epoch)))
        }
        _ => Err(format!("unexpected switchboard_publish reply {reply:?}")),
    }
}

/// A `switchboard_history` reply: `[offset, epoch, earliest, [[id, [field, value, ...]], ...]]`.
fn history_of(reply: &redis::Value) -> Result<HistoryRead, String> {
    let shape = || format!("unexpected switchboard_history reply {reply:?}");
    let redis::Value::Array(parts) = reply else {
        return Err(shape());
    };
    let [latest, epoch, earliest, redis::Value::Array(entries)] = parts.as_slice() else {
        return Err(shape());
    };
    let latest: u64 = redis::from_redis_value_ref(latest).map_err(|e| e.to_string())?;
    let epoch: String = redis::from_redis_value_ref(epoch).map_err(|e| e.to_string())?;
    let epoch = Epoch::new(&epoch).map_err(|e| e.to_string())?;
    let earliest: u64 = redis::from_redis_value_ref(earliest).map_err(|e| e.to_string())?;
    let mut publications = Vec::with_capacity(entries.len());
    for entry in entries {
        let redis::Value::Array(entry) = entry else {
            return Err(shape());
        };
        let [id, redis::Value::Array(fields)] = entry.as_slice() else {
            return Err(shape());
        };
        let id: String = redis::from_redis_value_ref(id).map_err(|e| e.to_string())?;
        let offset = id
            .split('-')
            .next()
            .and_then(|offset| offset.parse().ok())
            .ok_or_else(shape)?;
        let (mut event, mut payload) = (None, None);
        for pair in fields.chunks(2) {
            let [name, value] = pair else { break };
            let name: String = redis::from_redis_value_ref(name).map_err(|e| e.to_string())?;
            let value: String = redis::from_redis_value_ref(value).map_err(|e| e.to_string())?;
            match name.as_str() {
                "e" => event = Some(value),
                "p" => payload = Some(value),
                _ => {}
            }
        }
        let payload = payload
            .and_then(|text| Payload::from_json_string(text).ok())
            .ok_or_else(shape)?;
        publications.push(Publication {
            position: Position::new(offset, epoch.clone()),
            event: event.unwrap_or_else(|| crate::messages::DEFAULT_EVENT.to_owned()),
            payload,
        });
    }
    Ok(HistoryRead {
        epoch,
        latest,
        earliest,
        publications,
    })
}

/// A Redis error as the bridge machine sees it: an error reply refuses the request (the
/// connection is fine), anything else means the connection is gone.
fn classify(err: &RedisError) -> RequestError {
    if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
    {
        RequestError::Failed(err.to_string())
    } else {
        RequestError::Refused(err.to_string())
    }
}

impl Backend for RedisBackend {
    type Link = RedisLink;

    fn name(&self) -> &'static str {
        "redis"
    }

    fn channel(&self, topic: &Topic) -> String {
        format!("{}{}", self.prefix, topic)
    }

    fn connect(
        &self,
        inbox: Inbox,
    ) -> LocalBoxFuture<'static, Result<Connected<RedisLink>, String>> {
        let client = self.client.clone();
        let library = self.library.clone();
        let presence_library = self.presence_library.clone();
        async move {
            let pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
            let config = AsyncConnectionConfig::new()
                .set_response_timeout(None)
                .set_connection_timeout(None);
            let publisher = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(library) = library {
                load_library(
                    &publisher,
                    &library,
                    "function library, which history needs",
                )
                .await?;
            }
            if let Some(library) = presence_library {
                load_library(
                    &publisher,
                    &library,
                    "presence library, which presence needs",
                )
                .await?;
            }
            let (sink, mut stream) = pubsub.split();
            let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
            // Drains the client's unbounded stream into the bounded inbox as fast as messages
            // arrive; ends with the connection, or when the bridge stops reading.
            actix::spawn(async move {
                while let Some(msg) = stream.next().await {
                    let received = Received {
                        channel: msg.get_channel_name().to_owned(),
                        body: msg.get_payload_bytes().to_vec(),
                        from_self: false,
                    };
                    if !inbox.offer(received) {
                        return;
                    }
                }
                let _ = closed_tx.send(());
            });
            let closed = closed_rx
                .map(|_| "the subscribing connection closed".to_owned())
                .boxed_local();
            Ok(Connected {
                link: RedisLink { sink, publisher },
                closed,
            })
        }
        .boxed_local()
    }

    fn apply(
        &self,
        link: &RedisLink,
        op: EdgeOp,
        channels: Vec<String>,
    ) -> LocalBoxFuture<'static, Result<(), RequestError>> {
        let mut sink = link.sink.clone();
        async move {
            match op {
                EdgeOp::Subscribe => sink.subscribe(&channels).await,
                EdgeOp::Unsubscribe => sink.unsubscribe(&channels).await,
            }
            .map_err(|err| classify(&err))
        }
        .boxed_local()
    }

    fn publish(
        &self,
        link: &RedisLink,
        messages: Vec<Outgoing>,
    ) -> LocalBoxFuture<'static, PublishResults> {
        let mut publisher = link.publisher.clone();
        async move {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for message in &messages {
                match message {
                    Outgoing::Message { channel, body } => {
                        pipe.cmd("PUBLISH").arg(channel).arg(body);
                    }
                    Outgoing::Record {
                        topic,
                        event,
                        payload,
                    } => {
                        pipe.cmd("FCALL")
                            .arg("switchboard_publish")
                            .arg(1)
                            .arg(topic.as_str())
                            .arg(payload)
                            .arg(event);
                    }
                }
            }
            let replies: Vec<redis::RedisResult<redis::Value>> = pipe
                .query_async(&mut publisher)
                .await
                .map_err(|err| err.to_string())?;
            Ok(replies
                .into_iter()
                .zip(&messages)
                .map(|(reply, message)| match (reply, message) {
                    (Ok(reply), Outgoing::Record { .. }) => position_of(&reply),
                    (Ok(_), Outgoing::Message { .. }) => Ok(None),
                    (Err(err), _) => Err(err.to_string()),
                })
                .collect())
        }
        .boxed_local()
    }

    fn read_history(
        &self,
        link: &RedisLink,
        topic: &Topic,
        after: u64,
        limit: u32,
    ) -> LocalBoxFuture<'static, Result<HistoryRead, RequestError>> {
        let mut publisher = link.publisher.clone();
        let topic = topic.clone();
        async move {
            let reply: redis::Value = redis::cmd("FCALL")
                .arg("switchboard_history")
                .arg(1)
                .arg(topic.as_str())
                .arg(after)
                .arg(limit)
                .query_async(&mut publisher)
                .await
                .map_err(|err| classify(&err))?;
            history_of(&reply).map_err(RequestError::Failed)
        }
        .boxed_local()
    }

    fn presence(
        &self,
        link: &RedisLink,
        op: PresenceOp,
    ) -> LocalBoxFuture<'static, Result<PresenceReply, RequestError>> {
        let mut publisher = link.publisher.clone();
        async move {
            let command = presence::command(&op).map_err(RequestError::Refused)?;
            let reply: redis::Value = command
                .query_async(&mut publisher)
                .await
                .map_err(|err| classify(&err))?;
            presence::reply(&op, &reply).map_err(RequestError::Failed)
        }
        .boxed_local()
    }

    fn ping(&self, link: &RedisLink) -> LocalBoxFuture<'static, Result<(), String>> {
        let mut sink = link.sink.clone();
        let mut publisher = link.publisher.clone();
        async move {
            let listening = async { sink.ping::<redis::Value>().await.map(|_| ()) };
            let publishing = async {
                redis::cmd("PING")
                    .query_async::<String>(&mut publisher)
                    .await
                    .map(|_| ())
            };
            let (listening, publishing) = future::join(listening, publishing).await;
            listening
                .map_err(|err| format!("subscribing connection: {err}"))
                .and(publishing.map_err(|err| format!("publishing connection: {err}")))
        }
        .boxed_local()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_prefix_and_topic() {
        let rules = HistoryRules::none();
        let backend = RedisBackend::new(
            "redis://127.0.0.1:1",
            "sb:",
            EnvelopeFormat::Switchboard,
            &rules,
        )
        .unwrap();
        assert_eq!(backend.channel(&Topic::new("room:1").unwrap()), "sb:room:1");
        assert!(backend.library.is_none(), "no history, no library");
        assert!(
            backend.presence_library.is_none(),
            "no presence, no library"
        );
        let backend = backend.with_presence();
        assert!(backend
            .presence_library
            .as_deref()
            .is_some_and(|text| text.contains(r#"local PREFIX = "sb:""#)));
        assert!(RedisBackend::new("http://nope", "", EnvelopeFormat::Switchboard, &rules).is_err());
    }

    #[test]
    fn replies_of_the_functions_are_read() {
        use redis::Value;
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let position = position_of(&Value::Array(vec![Value::Int(17), bulk("k3Jd9")])).unwrap();
        assert_eq!(position.unwrap().to_string(), "17:k3Jd9");
        assert_eq!(
            position_of(&Value::Array(vec![Value::Int(0), bulk("")])).unwrap(),
            None
        );
        let entry = |id: &str, payload: &str| {
            Value::Array(vec![
                bulk(id),
                Value::Array(vec![bulk("e"), bulk("m"), bulk("p"), bulk(payload)]),
            ])
        };
        let read = history_of(&Value::Array(vec![
            Value::Int(5),
            bulk("ep"),
            Value::Int(3),
            Value::Array(vec![entry("4-0", "{\"n\":4}"), entry("5-0", "{\"n\":5}")]),
        ]))
        .unwrap();
        assert_eq!((read.latest, read.earliest), (5, 3));
        assert_eq!(read.publications.len(), 2);
        assert_eq!(read.publications[1].position.to_string(), "5:ep");
        assert_eq!(read.publications[0].payload.get(), "{\"n\":4}");
        assert!(history_of(&Value::Int(1)).is_err());
    }
}
