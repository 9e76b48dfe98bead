//! Presence: who is on a topic, in phoenix.js' own `Presence` format.
//!
//! A *member* is one joined socket that named itself: a presence *key* (the token's `sub`, or
//! what an open node's client calls itself), a *meta* object (the token's `info` claim merged
//! with what the client says about itself) and a `phx_ref` unique to that join. One user with
//! two sockets is one key with two metas.
//!
//! Everything here is pure: the node's hub keeps one [`TopicPresence`] per topic that has local
//! watchers, feeds it what its own sockets and the backend report (members tracked and
//! untracked, nodes gone, a fresh snapshot after a reconnect), and sends what it answers:
//! `presence_state` (the whole list, after a join's reply) and batched `presence_diff`
//! broadcasts. Across nodes each node owns its members; [`event`] is how the backend tells
//! every node about a change.
//!
//! # Layout
//! - [`meta`]: building and checking a member's meta, and its JSON with `phx_ref`.
//! - [`table`]: [`TopicPresence`], one topic's members, its pending diff and its state.
//! - [`event`]: the changes the backend announces (`join`, `leave`, `node_down`).
//! - [`ops`]: what a node asks of its backend ([`PresenceOp`](ops::PresenceOp)), and the
//!   answers.
//! - `model` (feature `model`): phoenix.js' `syncState`/`syncDiff`, ported as the reference
//!   the property tests check the table against.

pub mod event;
pub mod meta;
#[cfg(any(test, feature = "model"))]
pub mod model;
pub mod ops;
pub mod table;

pub use meta::{Meta, MetaError};
pub use table::{Member, TopicPresence};

use crate::compact::Map;
use crate::Topic;

/// The push a socket gets after every join of a presence topic: the whole list.
pub const PRESENCE_STATE: &str = "presence_state";

/// The broadcast of members that came and went since the last one.
pub const PRESENCE_DIFF: &str = "presence_diff";

/// The push a client sends to change its own meta without rejoining (payload: the new
/// `presence` object).
pub const PRESENCE_UPDATE: &str = "presence_update";

/// Events only the server sends on a presence topic: a client push or a publisher naming
/// them is refused, so nobody can forge a member list.
pub const SERVER_EVENTS: [&str; 2] = [PRESENCE_STATE, PRESENCE_DIFF];

/// The longest presence key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// The default bound on a member's meta (`info` and `presence` merged), in bytes of JSON.
pub const DEFAULT_MAX_META_BYTES: usize = 1024;

/// The default bound on a topic's members, across every node.
pub const DEFAULT_MAX_MEMBERS: usize = 10_000;

/// What prefixes a topic's presence channel on the backend (`__presence:room:lobby`). Client
/// topics cannot start with `__`, so no socket or publisher can reach it.
pub const CHANNEL_PREFIX: &str = "__presence:";

/// The backend channel carrying `topic`'s presence changes.
#[must_use]
pub fn channel_of(topic: &Topic) -> Topic {
    Topic::internal(&format!("{CHANNEL_PREFIX}{}", topic.as_str()))
}

/// The topic a presence channel carries changes of, or `None` for any other channel.
#[must_use]
pub fn topic_of(channel: &Topic) -> Option<Topic> {
    channel
        .as_str()
        .strip_prefix(CHANNEL_PREFIX)
        .and_then(|topic| Topic::new(topic).ok())
}

/// Which namespaces track presence, and the bounds that apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRules {
    namespaces: Map<String, bool>,
    everywhere: bool,
    /// The largest meta, in bytes of JSON.
    pub max_meta_bytes: usize,
    /// The most members a topic may have, across every node.
    pub max_members: usize,
}

impl Default for PresenceRules {
    fn default() -> Self {
        Self::none()
    }
}

impl PresenceRules {
    /// No namespace tracks presence.
    #[must_use]
    pub fn none() -> Self {
        Self {
            namespaces: Map::default(),
            everywhere: false,
            max_meta_bytes: DEFAULT_MAX_META_BYTES,
            max_members: DEFAULT_MAX_MEMBERS,
        }
    }

    /// Turns presence on for `namespace` (`"*"`: every namespace not configured otherwise).
    pub fn enable(&mut self, namespace: &str) {
        self.set(namespace, true);
    }

    /// Turns presence on or off for `namespace` (`"*"`: every namespace not configured
    /// otherwise).
    pub fn set(&mut self, namespace: &str, on: bool) {
        if namespace == "*" {
            self.everywhere = on;
        } else {
            self.namespaces.insert(namespace.to_owned(), on);
        }
    }

    /// Whether `topic` tracks presence.
    #[must_use]
    pub fn applies(&self, topic: &Topic) -> bool {
        self.namespaces
            .get(topic.namespace())
            .copied()
            .unwrap_or(self.everywhere)
    }

    /// Whether any namespace tracks presence.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.everywhere && !self.namespaces.values().any(|on| *on)
    }
}

/// Who a socket is, for presence: its key and what the application signed about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The presence key (a token's `sub`, or an open node's `user` connect parameter); a socket
    /// without one watches presence topics without being listed.
    pub key: Option<String>,
    /// The token's `info` claim: a JSON object merged into every meta (its fields win).
    pub info: Option<Meta>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_channels_are_reserved_topics_that_map_back() {
        let topic = Topic::new("room:lobby").unwrap();
        let channel = channel_of(&topic);
        assert_eq!(channel.as_str(), "__presence:room:lobby");
        assert!(
            Topic::new(channel.as_str()).is_err(),
            "no client can join it"
        );
        assert_eq!(topic_of(&channel), Some(topic.clone()));
        assert_eq!(topic_of(&topic), None);
    }

    #[test]
    fn rules_name_namespaces_or_everything() {
        let mut rules = PresenceRules::none();
        assert!(rules.is_empty());
        rules.enable("room");
        assert!(rules.applies(&Topic::new("room:1").unwrap()));
        assert!(!rules.applies(&Topic::new("feed:1").unwrap()));
        rules.enable("*");
        assert!(rules.applies(&Topic::new("feed:1").unwrap()));
        rules.set("feed", false);
        assert!(!rules.applies(&Topic::new("feed:1").unwrap()));
        assert!(rules.applies(&Topic::new("other").unwrap()));
    }
}
