//! What a node asks of its backend to keep every node's member lists right, and the
//! backend's answers: the contract each backend adapter implements.

use std::time::Duration;

use super::Member;
use crate::Topic;

/// A presence operation: what the hub asks of the backend to keep every node's member lists
/// right (see the node's `docs/presence.md`). Each is one atomic step on the backend (a Redis
/// function, a PostgreSQL function) that stores the change and announces it on the topic's presence
/// channel ([`channel_of`](super::channel_of)) in the format
/// [`event`](super::event) reads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceOp {
    /// Store `member` as `phx_ref` on `topic` and announce its join, unless the topic already
    /// has `max_members` members (an update, `member.prev` set, replaces that member instead,
    /// deleting it, and never counts against the bound). Answered
    /// [`PresenceReply::Tracked`] or [`PresenceReply::Full`].
    Track {
        /// The topic.
        topic: Topic,
        /// The member's `phx_ref`.
        phx_ref: String,
        /// The member (its `node` is this node).
        member: Member,
        /// The topic's bound, across every node.
        max_members: usize,
    },
    /// Delete member `phx_ref` of `topic` and announce its leave (nothing when it is not
    /// there). Answered [`PresenceReply::Done`].
    Untrack {
        /// The topic.
        topic: Topic,
        /// The member's `phx_ref`.
        phx_ref: String,
    },
    /// `node` is alive for `ttl` more; every node whose liveness has lapsed is gone: delete
    /// its entries and announce `node_down` on each topic it had members on. Answered
    /// [`PresenceReply::Held`] with how many entries the backend holds for `node`.
    Heartbeat {
        /// This node.
        node: String,
        /// How long it counts as alive without another heartbeat.
        ttl: Duration,
    },
    /// Make the backend's entries of `node` exactly `entries` (after the backend lost them, or
    /// declared the node gone while it was only cut off), announcing each join and leave that
    /// takes, and refresh its liveness for `ttl`. Answered [`PresenceReply::Done`].
    Sync {
        /// This node.
        node: String,
        /// How long it counts as alive.
        ttl: Duration,
        /// Every member this node has: `(topic, phx_ref, member)`.
        entries: Vec<(Topic, String, Member)>,
    },
    /// Every member of `topic`, on every node. Answered [`PresenceReply::Members`].
    List {
        /// The topic.
        topic: Topic,
    },
}

/// The backend's answer to a [`PresenceOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceReply {
    /// The member is stored and announced.
    Tracked,
    /// The topic has its bound of members: nothing stored.
    Full,
    /// Done.
    Done,
    /// Entries the backend holds for the node.
    Held(u64),
    /// A topic's members: `(phx_ref, member)`.
    Members(Vec<(String, Member)>),
}
