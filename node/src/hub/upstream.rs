//! The hub's handle on a bridge to a shared backend: where edges, waiting joins and publishes
//! go, and the backend's message limit.
//!
//! The hub calls the bridge at the 0↔1 edges the registry reports, for every join that must
//! wait for its topic's subscription, and for every local publish. It holds only
//! `Recipient`s of the [messages](crate::messages), so any actor that handles them plugs in.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use switchboard_core::{Payload, Topic};

use crate::messages::{
    UpstreamEdge, UpstreamPresence, UpstreamPublish, UpstreamRead, UpstreamWait,
};

/// Measures a message as the bridge would send it (its envelope included), in bytes.
pub type Measure = Arc<dyn Fn(&Topic, &str, &Payload) -> usize + Send + Sync>;

/// The largest message a backend carries, measured as the bridge sends it. A publish over it
/// is refused whole: delivered nowhere, not even locally, and the publisher is told why
/// (HTTP 413 `payload_too_large_for_backend`).
#[derive(Clone)]
pub struct MessageLimit {
    /// The backend's name.
    pub backend: &'static str,
    /// The largest message, in bytes as sent.
    pub max_bytes: usize,
    /// How the bridge measures a message.
    pub measure: Measure,
}

impl std::fmt::Debug for MessageLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageLimit")
            .field("backend", &self.backend)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// A publish over a backend's [`MessageLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "message too large for the {backend} backend: {size} bytes as sent (payload, event and \
     envelope), the limit is {max_bytes} bytes; it was delivered nowhere"
)]
pub struct TooLarge {
    /// The backend's name.
    pub backend: &'static str,
    /// The message's size as sent.
    pub size: usize,
    /// The limit.
    pub max_bytes: usize,
}

impl MessageLimit {
    /// Checks the message a bridge would send for `event` and `payload` on `topic`.
    ///
    /// # Errors
    /// [`TooLarge`] when it is over the limit.
    pub fn check(&self, topic: &Topic, event: &str, payload: &Payload) -> Result<(), TooLarge> {
        let size = (self.measure)(topic, event, payload);
        if size > self.max_bytes {
            return Err(TooLarge {
                backend: self.backend,
                size,
                max_bytes: self.max_bytes,
            });
        }
        Ok(())
    }
}

/// The hub's handle on a bridge.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The backend's name, as `/readyz` reports it (`redis`, `postgres`).
    pub backend: &'static str,
    /// The largest message the backend carries, when it has a limit.
    pub limit: Option<MessageLimit>,
    /// How long the bridge lets a join wait for its subscription (for the error reply).
    pub subscribe_timeout: Duration,
    /// Where edges go (never dropped: `do_send`).
    pub edges: Recipient<UpstreamEdge>,
    /// Where waiting joins go (never dropped).
    pub wait: Recipient<UpstreamWait>,
    /// Where publishes go (refused when the bridge's mailbox is full).
    pub publish: Recipient<UpstreamPublish>,
    /// Where history reads go.
    pub read: Recipient<UpstreamRead>,
    /// Where presence operations go.
    pub presence: Recipient<UpstreamPresence>,
}

impl Upstream {
    /// The handle of a bridge actor.
    #[must_use]
    pub fn of<A>(backend: &'static str, subscribe_timeout: Duration, bridge: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<UpstreamEdge>
            + Handler<UpstreamWait>
            + Handler<UpstreamPublish>
            + Handler<UpstreamRead>
            + Handler<UpstreamPresence>,
    {
        Self {
            backend,
            limit: None,
            subscribe_timeout,
            edges: bridge.clone().recipient(),
            wait: bridge.clone().recipient(),
            publish: bridge.clone().recipient(),
            read: bridge.clone().recipient(),
            presence: bridge.clone().recipient(),
        }
    }

    /// The same handle, refusing publishes over `limit`.
    #[must_use]
    pub fn with_limit(mut self, limit: MessageLimit) -> Self {
        self.limit = Some(limit);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_uses_the_bridges_measure() {
        let limit = MessageLimit {
            backend: "postgres",
            max_bytes: 10,
            measure: Arc::new(|_: &Topic, event: &str, payload: &Payload| {
                event.len() + payload.get().len()
            }),
        };
        let payload = Payload::from_json(r#"{"a":1}"#).unwrap();
        let topic = Topic::new("t").unwrap();
        assert_eq!(limit.check(&topic, "abc", &payload), Ok(()));
        let err = limit.check(&topic, "abcd", &payload).unwrap_err();
        assert_eq!((err.size, err.max_bytes), (11, 10));
        assert!(err.to_string().contains("the limit is 10 bytes"), "{err}");
    }
}
