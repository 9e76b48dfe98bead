//! What a backend adapter implements: the few operations the bridge state machine asks for.
//!
//! An adapter knows its protocol and nothing of the bridge's promises: it opens connections,
//! applies a batch of subscription changes as one command, sends a batch of messages in order,
//! answers a ping, and hands what arrives to an [`Inbox`]. Timeouts, ordering, retries,
//! bounds and readiness are the [bridge machine](switchboard_core::bridge)'s.

use std::sync::Arc;

use futures_util::future::LocalBoxFuture;
use switchboard_core::bridge::{EdgeOp, RequestError};
use switchboard_core::history::recovery::HistoryRead;
use switchboard_core::history::Position;
pub use switchboard_core::presence::ops::{PresenceOp, PresenceReply};
use switchboard_core::presence::Member;
use switchboard_core::Topic;
use tokio::sync::mpsc;

use crate::metrics::{self, Metrics};

/// A message for the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A message for a channel, encoded once (a topic without history).
    Message {
        /// The channel (topic with prefix, or its mapped PostgreSQL name).
        channel: String,
        /// The message as the backend carries it.
        body: String,
    },
    /// A publication for a topic with history: the backend gives it its position, records it
    /// and publishes it, in one step (`switchboard_publish`).
    Record {
        /// The topic.
        topic: Topic,
        /// The event name.
        event: String,
        /// The message, as JSON text.
        payload: String,
    },
}

impl Outgoing {
    /// Bytes it takes in the queue toward the backend.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Self::Message { channel, body } => channel.len() + body.len(),
            Self::Record {
                topic,
                event,
                payload,
            } => topic.as_str().len() + event.len() + payload.len(),
        }
    }

    /// Whether it is empty (never: a message always has a channel or a topic).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A [`PresenceOp::Sync`]'s entries as both backends' `switchboard_presence_sync` take them:
/// `[[topic, ref, key, "<meta JSON>"], ...]`, the meta as a JSON *string* holding the object
/// (so Redis' Lua passes its text on untouched instead of decoding and re-encoding it). The
/// members' `node` is not sent: every entry is the syncing node's.
#[must_use]
pub fn sync_entries_json(entries: &[(Topic, String, Member)]) -> String {
    let rows: Vec<[&str; 4]> = entries
        .iter()
        .map(|(topic, phx_ref, member)| {
            [
                topic.as_str(),
                phx_ref.as_str(),
                member.key.as_str(),
                member.meta.as_str(),
            ]
        })
        .collect();
    // unwrap: an array of strings always serializes.
    serde_json::to_string(&rows).expect("strings serialize")
}

/// What a batch of messages came to: one result per message (a record's position, or why the
/// backend refused it), or why the connection failed.
pub type PublishResults = Result<Vec<Result<Option<Position>, String>>, String>;

/// A message that arrived from the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The channel it arrived on.
    pub channel: String,
    /// Its bytes.
    pub body: Vec<u8>,
    /// Whether this node's own publishing connection sent it (when the backend says who sent
    /// a message, as PostgreSQL does).
    pub from_self: bool,
}

/// Where an adapter puts what arrives: a bounded queue in front of the bridge. A message that
/// does not fit is dropped and counted (`switchboard_bridge_dropped_total`) instead of
/// growing memory; the bridge's end closing tells the adapter to stop reading.
#[derive(Debug, Clone)]
pub struct Inbox {
    sender: mpsc::Sender<Received>,
    metrics: Arc<Metrics>,
}

impl Inbox {
    /// A queue of `capacity` messages and the bridge's end of it.
    #[must_use]
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<Received>) {
        let (sender, receiver) = mpsc::channel(capacity);
        (Self { sender, metrics }, receiver)
    }

    /// Offers a message; `false` once the bridge no longer reads (stop reading too).
    pub fn offer(&self, received: Received) -> bool {
        match self.sender.try_send(received) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::add(&self.metrics.bridge_dropped, 1);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether the bridge has stopped reading.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// A successful connect: the connections, and a future that resolves (with the reason) when
/// one of them closes.
pub struct Connected<L> {
    /// The connections of this generation, shared by the requests that run on them.
    pub link: L,
    /// Resolves when a connection closes on its own (never, if the adapter cannot tell; the
    /// bridge's pings notice then).
    pub closed: LocalBoxFuture<'static, String>,
}

/// A backend the bridge can drive.
pub trait Backend: Unpin + 'static {
    /// The connections of one generation; cloned into every request running on them, and
    /// dropped (closing them) when the generation ends.
    type Link: Clone + Unpin + 'static;

    /// The backend's name, as `/readyz` and the logs say it (`redis`, `postgres`).
    fn name(&self) -> &'static str;

    /// The channel `topic` is subscribed and published on.
    fn channel(&self, topic: &Topic) -> String;

    /// Opens the connections (subscribed to nothing); what arrives on them goes to `inbox`.
    fn connect(
        &self,
        inbox: Inbox,
    ) -> LocalBoxFuture<'static, Result<Connected<Self::Link>, String>>;

    /// Applies `op` to every channel of `channels`, as one command.
    fn apply(
        &self,
        link: &Self::Link,
        op: EdgeOp,
        channels: Vec<String>,
    ) -> LocalBoxFuture<'static, Result<(), RequestError>>;

    /// Sends `messages` in order: one result per message (a record's position), or why the
    /// connection failed.
    fn publish(
        &self,
        link: &Self::Link,
        messages: Vec<Outgoing>,
    ) -> LocalBoxFuture<'static, PublishResults>;

    /// Reads `topic`'s history after offset `after`, at most `limit` publications.
    fn read_history(
        &self,
        link: &Self::Link,
        topic: &Topic,
        after: u64,
        limit: u32,
    ) -> LocalBoxFuture<'static, Result<HistoryRead, RequestError>>;

    /// Performs a presence operation (see [`PresenceOp`] for each one's contract). An error
    /// reply of the backend (presence not installed, an argument refused) is
    /// [`RequestError::Refused`]; a lost connection or a reply of the wrong shape is
    /// [`RequestError::Failed`].
    fn presence(
        &self,
        link: &Self::Link,
        op: PresenceOp,
    ) -> LocalBoxFuture<'static, Result<PresenceReply, RequestError>>;

    /// Checks that every connection of `link` answers.
    fn ping(&self, link: &Self::Link) -> LocalBoxFuture<'static, Result<(), String>>;
}
