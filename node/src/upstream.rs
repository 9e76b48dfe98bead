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

/// The hub's handle on a bridge.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The backend's name, as `/readyz` reports it (`redis`).
    pub backend: &'static str,
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
            subscribe: bridge.clone().recipient(),
            unsubscribe: bridge.clone().recipient(),
            publish: bridge.clone().recipient(),
        }
    }
}

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
    fn origin_ids_differ_and_are_16_hex_digits() {
        let (a, b) = (origin_id(), origin_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
