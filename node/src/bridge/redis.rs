//! The Redis adapter: pub/sub on one connection, `PUBLISH` pipelined on another.
//!
//! The subscribing connection is a RESP2 pub/sub connection treated as an event source: its
//! messages are moved, as they arrive, into the bridge's bounded [`Inbox`] (the Redis client
//! itself buffers without bound). `SUBSCRIBE`/`UNSUBSCRIBE` of a batch is one command whose
//! completion is Redis' confirmation of every channel. Publishes go as one pipeline per batch
//! on a multiplexed connection without the client's own response timeout: the bridge machine
//! decides when an answer is too late.

use std::sync::Arc;

use futures_util::future::{self, LocalBoxFuture};
use futures_util::{FutureExt as _, StreamExt as _};
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, RedisError};
use switchboard_core::bridge::{EdgeOp, RequestError};
use switchboard_core::Topic;

use super::backend::{Backend, Connected, Inbox, Outgoing, Received};

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
}

impl RedisBackend {
    /// An adapter for the Redis at `url`, with channel = `prefix` + topic.
    ///
    /// # Errors
    /// The URL is not a valid Redis URL.
    pub fn new(url: &str, prefix: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            prefix: prefix.into(),
        })
    }
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
        async move {
            let pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
            let config = AsyncConnectionConfig::new()
                .set_response_timeout(None)
                .set_connection_timeout(None);
            let publisher = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| e.to_string())?;
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
    ) -> LocalBoxFuture<'static, Result<Vec<Result<(), String>>, String>> {
        let mut publisher = link.publisher.clone();
        async move {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for message in &messages {
                pipe.cmd("PUBLISH").arg(&message.channel).arg(&message.body);
            }
            let replies: Vec<redis::RedisResult<redis::Value>> = pipe
                .query_async(&mut publisher)
                .await
                .map_err(|err| err.to_string())?;
            Ok(replies
                .into_iter()
                .map(|reply| reply.map(|_| ()).map_err(|err| err.to_string()))
                .collect())
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
        let backend = RedisBackend::new("redis://127.0.0.1:1", "sb:").unwrap();
        assert_eq!(backend.channel(&Topic::new("room:1").unwrap()), "sb:room:1");
        assert!(RedisBackend::new("http://nope", "").is_err());
    }
}
