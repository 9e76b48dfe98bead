//! The messages that cross between actors of different layers, kept in this leaf module so
//! that no layer imports another to talk to it: the hub hands sessions their deliveries and
//! close orders through these, and the hub and the bridge talk only through them (each holds
//! the other's `Recipient`s), so either can be tested without the other.

use actix::prelude::*;
use switchboard_core::bridge::{EdgeOp, PublishOutcome, WaitOutcome};
use switchboard_core::connection::{PublishAnswer, PushAck};
use switchboard_core::history::recovery::HistoryRead;
use switchboard_core::history::Position;
use switchboard_core::presence::event::Change;
use switchboard_core::presence::ops::{PresenceOp, PresenceReply};
use switchboard_core::{Payload, Topic};
use tokio::sync::oneshot;

/// The event a message is delivered as when it names none (an HTTP publish without `event`,
/// a raw message from Redis or PostgreSQL).
pub const DEFAULT_EVENT: &str = "message";

/// Events with this prefix belong to the protocol (`phx_reply`, `phx_close`, `phx_error`,
/// `phx_join`, `phx_leave`): no publisher may send them to subscribers, from any ingress
/// (HTTP, the backend; a socket's push of one is a join, a leave or refused by the codec).
pub const RESERVED_PREFIX: &str = "phx_";

/// Tells a session to close its socket with `code` and `reason`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CloseSession {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason.
    pub reason: &'static str,
}

/// Wakes a session to hand its queued deliveries to the socket.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Flush;

/// Hub → bridge: a 0↔1 edge of the registry, in the order the registry produced it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UpstreamEdge {
    /// The topic.
    pub topic: Topic,
    /// `Subscribe` on its first local subscriber, `Unsubscribe` on its last.
    pub op: EdgeOp,
}

/// Hub → bridge: a join waits until `topic`'s subscription is in effect upstream. Sent after
/// the join's own edge, if it made one.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UpstreamWait {
    /// The topic.
    pub topic: Topic,
    /// Where the answer goes.
    pub reply: oneshot::Sender<WaitOutcome>,
}

/// Hub → bridge: a message published on this node for every other node. Without history it
/// is already delivered to this node's subscribers; with history (`record`) the backend gives
/// it its position and every node, this one included, delivers it from the backend.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UpstreamPublish {
    /// The topic.
    pub topic: Topic,
    /// The event name.
    pub event: String,
    /// The message.
    pub payload: Payload,
    /// Whether the topic keeps history.
    pub record: bool,
    /// Where the outcome goes.
    pub ack: oneshot::Sender<PublishOutcome>,
}

/// Hub → bridge: read a topic's history after an offset (a joining client's recovery, or
/// `GET /api/history`). Answered at once with an error while the link is down.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UpstreamRead {
    /// The topic.
    pub topic: Topic,
    /// Publications after this offset.
    pub after: u64,
    /// At most this many.
    pub limit: u32,
    /// Where the read goes, or why there is none.
    pub reply: oneshot::Sender<Result<HistoryRead, String>>,
}

/// Bridge → hub: a message from another node or producer, for this node's subscribers.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Incoming {
    /// The topic.
    pub topic: Topic,
    /// The event name.
    pub event: String,
    /// The message.
    pub payload: Payload,
    /// Its place in the topic's stream, when it was published with history.
    pub position: Option<Position>,
}

/// Server → bridge: the node is shutting down. Answered once everything accepted has been
/// published (or could not be).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Hub → session: what became of a push whose client asked for a reply.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PushAnswered {
    /// The push, as the engine identifies it.
    pub ack: PushAck,
    /// What became of it.
    pub answer: PublishAnswer,
}

/// Hub → bridge: a presence operation on the backend. Answered at once with an error while
/// the link is down.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UpstreamPresence {
    /// The operation.
    pub op: PresenceOp,
    /// Where the answer goes, or why there is none.
    pub reply: oneshot::Sender<Result<PresenceReply, String>>,
}

/// Bridge → hub: the link to the backend was lost (once per outage): publications made on
/// other nodes do not reach this one until it is back.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct LinkLost;

/// Bridge → hub: a presence change another node (or this one) announced on the backend.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PresenceChanged {
    /// The topic whose members changed.
    pub topic: Topic,
    /// The change.
    pub change: Change,
}

/// Bridge → hub: presence changes may have been missed (the bridge connected again and every
/// subscription is in effect, or a change found the hub's mailbox full): read every presence
/// list again.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PresenceResync;

/// Bridge → hub: a presence heartbeat's answer: how many entries the backend holds for this
/// node.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PresenceHeld {
    /// The backend's count.
    pub held: u64,
}
