//! What a [`Bridge`](super::Bridge) asks of its driver, and what it tells it.

use std::fmt;

use crate::history::Position;
use crate::Topic;

/// Identifies one connection to the backend: every action names the generation it belongs to,
/// and every report about a generation that is no longer current is ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Generation(pub(super) u64);

impl Generation {
    /// The generation as a number (for logs).
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// A subscription change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdgeOp {
    /// Subscribe (Redis `SUBSCRIBE`, PostgreSQL `LISTEN`).
    Subscribe,
    /// Unsubscribe (Redis `UNSUBSCRIBE`, PostgreSQL `UNLISTEN`).
    Unsubscribe,
}

/// Something the driver must do, in the order [`Bridge::poll`](super::Bridge::poll) returns
/// them.
#[derive(Debug)]
#[non_exhaustive]
pub enum Action<W, P, M> {
    /// Open the connections of `generation` (without any subscription), then report
    /// [`handle_connected`](super::Bridge::handle_connected) or
    /// [`handle_connect_failed`](super::Bridge::handle_connect_failed).
    Connect {
        /// The generation to report with.
        generation: Generation,
    },
    /// Drop the connections of `generation` and abandon everything still running on them;
    /// nothing about them will be reported any more (and a late report is ignored).
    Disconnect {
        /// The generation that is over.
        generation: Generation,
    },
    /// Apply `op` to every topic of `topics` (one command), then report
    /// [`handle_edges_done`](super::Bridge::handle_edges_done).
    Edges {
        /// The connection to use.
        generation: Generation,
        /// Subscribe or unsubscribe.
        op: EdgeOp,
        /// The topics, in order.
        topics: Vec<Topic>,
    },
    /// Send these messages in order, then report
    /// [`handle_published`](super::Bridge::handle_published) with one result per message.
    Publish {
        /// The connection to use.
        generation: Generation,
        /// The messages, oldest first.
        messages: Vec<M>,
    },
    /// Check that every connection of `generation` still answers, then report
    /// [`handle_pong`](super::Bridge::handle_pong) (or
    /// [`handle_link_lost`](super::Bridge::handle_link_lost) on an error).
    Ping {
        /// The connection to check.
        generation: Generation,
    },
    /// The answer to a [`handle_wait`](super::Bridge::handle_wait).
    Answer {
        /// The waiter, handed back.
        waiter: W,
        /// Whether the topic's subscription is in effect.
        outcome: WaitOutcome,
    },
    /// The outcome of a [`handle_publish`](super::Bridge::handle_publish).
    Published {
        /// The publish's ack, handed back.
        ack: P,
        /// What became of it.
        outcome: PublishOutcome,
    },
    /// The backend refused a subscription change (the link is fine): log it.
    EdgeRefused {
        /// The topic.
        topic: Topic,
        /// The change refused.
        op: EdgeOp,
        /// What the backend said.
        reason: String,
    },
    /// The link changed state: report it (readiness, metrics, logs).
    Status(LinkStatus),
}

/// The answer to a join that waits for its topic's subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitOutcome {
    /// The backend confirmed the subscription: messages published anywhere from now on
    /// arrive.
    Confirmed,
    /// The link is down: only messages published on this node arrive until it is back (the
    /// topic is subscribed again when it is).
    LocalOnly,
    /// The backend did not confirm within the subscribe timeout.
    TimedOut,
    /// The backend refused the subscription.
    Refused(String),
}

/// What became of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// The backend accepted it (and gave it this position, for a publication with history).
    Sent {
        /// Its place in the topic's stream, when it has history.
        position: Option<Position>,
    },
    /// The link is down (or the bridge is shutting down): it was not queued.
    Unavailable,
    /// The queue toward the backend is full: it was not queued.
    QueueFull,
    /// It was queued, but the link failed before the backend accepted it.
    Lost,
    /// The backend refused it.
    Refused(String),
}

impl PublishOutcome {
    /// Whether the other nodes got (or will get) the message.
    #[must_use]
    pub const fn is_sent(&self) -> bool {
        matches!(self, Self::Sent { .. })
    }
}

/// The state of the link, as the bridge reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkStatus {
    /// Connected; the topics with local subscribers are being subscribed again.
    Connected {
        /// Whether the link was up before (a reconnect).
        reconnect: bool,
        /// How many topics are subscribed again.
        resubscribing: usize,
    },
    /// Connected and every topic that had local subscribers when it connected is subscribed:
    /// the node delivers everywhere.
    Ready,
    /// Not connected; a reconnect is scheduled.
    Down {
        /// Why.
        reason: String,
        /// Whether this is news (the first failure of an outage) rather than one more failed
        /// retry.
        notable: bool,
    },
}

/// Why a request to the backend failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// The backend answered with an error: this request is refused, the link is fine.
    Refused(String),
    /// The connection failed: the link is gone.
    Failed(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(reason) => write!(f, "refused: {reason}"),
            Self::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}
