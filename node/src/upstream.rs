//! The seam between the hub and a distributed backend: what the hub tells a bridge.
//!
//! The hub calls the bridge only at the 0↔1 edges the core reports (subscribe upstream on a
//! topic's first local subscriber, unsubscribe on its last) and for every local publish. A
//! bridge answers with the hub's [`Incoming`](crate::hub::Incoming),
//! [`BridgeStatus`](crate::hub::BridgeStatus) and [`ListTopics`](crate::hub::ListTopics)
//! messages. Any backend that handles these three messages plugs in.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};

use actix::prelude::*;
use switchboard_core::{Payload, Topic};

use crate::envelope;

/// The first local subscriber of `topic` arrived: subscribe to it upstream.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UpstreamSubscribe {
    /// The topic.
    pub topic: Topic,
}

/// The last local subscriber of `topic` left: unsubscribe from it upstream.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UpstreamUnsubscribe {
    /// The topic.
    pub topic: Topic,
}

/// A message published on this node (already delivered locally): send it to the other nodes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UpstreamPublish {
    /// The topic.
    pub topic: Topic,
    /// The event name.
    pub event: String,
    /// The message.
    pub payload: Payload,
}

/// The largest message a backend carries, measured as the [envelope](crate::envelope) the
/// bridge sends. A publish over it is refused whole: delivered nowhere, not even locally, and
/// the publisher is told why (HTTP 413 `payload_too_large_for_backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimit {
    /// The backend's name.
    pub backend: &'static str,
    /// The largest envelope, in bytes.
    pub max_bytes: usize,
}

/// A publish over a backend's [`MessageLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "message too large for the {backend} backend: {size} bytes as sent (payload, event and \
     about 60 bytes of envelope), the limit is {max_bytes} bytes; it was delivered nowhere"
)]
pub struct TooLarge {
    /// The backend's name.
    pub backend: &'static str,
    /// The envelope's size.
    pub size: usize,
    /// The limit.
    pub max_bytes: usize,
}

impl MessageLimit {
    /// Checks the envelope a bridge would send for `event` and `payload`.
    ///
    /// # Errors
    /// [`TooLarge`] when it is over the limit.
    pub fn check(&self, event: &str, payload: &Payload) -> Result<(), TooLarge> {
        let size = envelope::encoded_len(ORIGIN_LEN, event, payload);
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
    /// Where edge subscriptions go.
    pub subscribe: Recipient<UpstreamSubscribe>,
    /// Where edge unsubscriptions go.
    pub unsubscribe: Recipient<UpstreamUnsubscribe>,
    /// Where local publishes go.
    pub publish: Recipient<UpstreamPublish>,
}

impl Upstream {
    /// The handle of a bridge actor.
    #[must_use]
    pub fn of<A>(backend: &'static str, bridge: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<UpstreamSubscribe>
            + Handler<UpstreamUnsubscribe>
            + Handler<UpstreamPublish>,
    {
        Self {
            backend,
            limit: None,
            subscribe: bridge.clone().recipient(),
            unsubscribe: bridge.clone().recipient(),
            publish: bridge.clone().recipient(),
        }
    }
}

impl Upstream {
    /// The same handle, refusing publishes whose envelope is over `max_bytes`.
    #[must_use]
    pub const fn with_max_message_bytes(mut self, max_bytes: usize) -> Self {
        self.limit = Some(MessageLimit {
            backend: self.backend,
            max_bytes,
        });
        self
    }
}

/// The length of every [`origin_id`].
pub const ORIGIN_LEN: usize = 16;

/// A random id for this process, drawn once at start (never configured), so a node can
/// recognise and drop its own messages when they come back from the shared channel.
#[must_use]
pub fn origin_id() -> String {
    // The standard library seeds RandomState from the operating system's randomness.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_counts_the_whole_envelope() {
        let limit = MessageLimit {
            backend: "postgres",
            max_bytes: 100,
        };
        let payload = Payload::from_json(r#"{"a":1}"#).unwrap();
        let exact = envelope::encode(&origin_id(), "e", &payload).len();
        let fits = MessageLimit {
            max_bytes: exact,
            ..limit
        };
        assert_eq!(fits.check("e", &payload), Ok(()));
        let over = MessageLimit {
            max_bytes: exact - 1,
            ..limit
        };
        let err = over.check("e", &payload).unwrap_err();
        assert_eq!(err.size, exact);
        assert!(
            err.to_string()
                .contains(&format!("the limit is {} bytes", exact - 1)),
            "{err}"
        );
    }

    #[test]
    fn origin_ids_differ_and_are_16_hex_digits() {
        let (a, b) = (origin_id(), origin_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), ORIGIN_LEN);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
