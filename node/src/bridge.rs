//! What every bridge to a shared backend has in common, whatever the backend (Redis,
//! PostgreSQL): the life of its connection, the subscription edges reported while it connects,
//! the reconnect backoff, the queue of work sent in order one batch at a time, and how a
//! message that arrives from the backend reaches the hub.
//!
//! [`Link`] and [`Outgoing`] are plain state, no I/O and no clock: the bridge actor drives
//! them and acts on what they return.
//!
//! # Driving a [`Link`]
//!
//! 1. [`Link::connecting`] before a connect attempt; keep the generation it returns.
//! 2. The attempt resubscribes from the hub's topic list, then reports
//!    [`Link::connected`] (act on [`Connected`]: report up, replay its `pending` edges) or
//!    [`Link::failed`].
//! 3. Every edge the hub reports goes through [`Link::edge`]; apply the edge it returns
//!    (the link is up). While connecting it is kept and handed back by `connected`; while
//!    down it is dropped, because the next connect resubscribes from the hub's list anyway.
//! 4. When the connection's event stream ends, call [`Link::failed`] with the generation of
//!    that connection; a stale generation (a connection already replaced) returns `None`.
//!    Act on [`Lost`]: report down, retry after `retry_in`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use switchboard_core::Topic;
use tracing::debug;

use crate::envelope;
use crate::hub::{BridgeStatus, Hub, Incoming};
use crate::metrics::{self, Metrics};

/// First reconnect delay.
pub const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest reconnect delay: a restarted backend is used again within this long.
pub const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How long one connect attempt (the connections and the resubscription) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages a bridge's mailbox holds; the hub counts a publish it cannot queue as lost.
pub const BRIDGE_MAILBOX_CAPACITY: usize = 64 * 1024;

/// A subscription change the hub reported, for one backend channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edge {
    /// The first local subscriber arrived: subscribe (Redis `SUBSCRIBE`, PostgreSQL `LISTEN`).
    Subscribe(String),
    /// The last local subscriber left: unsubscribe.
    Unsubscribe(String),
}

/// Where a bridge is in its connection life; `C` is the live connection.
#[derive(Debug)]
enum State<C> {
    /// Not connected; a reconnect is scheduled.
    Down,
    /// A connect attempt is running; edges reported meanwhile are replayed once it succeeds.
    Connecting { pending: Vec<Edge> },
    /// Connected.
    Up(C),
}

/// The connection state machine every bridge shares (see the module doc for the contract).
#[derive(Debug)]
pub struct Link<C> {
    state: State<C>,
    /// Incremented per attempt and per loss, so events of an old connection are recognised.
    generation: u64,
    backoff: Duration,
    connected_before: bool,
    /// Whether the current outage has been reported; retries after that are not news.
    outage_reported: bool,
}

/// What [`Link::connected`] obliges the bridge to do.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub struct Connected {
    /// Edges reported while connecting, in order: apply them now.
    pub pending: Vec<Edge>,
    /// Whether this is a reconnect (count it) rather than the first connection.
    pub reconnect: bool,
}

/// What [`Link::failed`] obliges the bridge to do.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub struct Lost {
    /// Whether this is news worth a warning (the first failure of an outage, including the
    /// first attempt of a node that starts without its backend) rather than one more retry.
    pub notable: bool,
    /// Try to connect again after this long.
    pub retry_in: Duration,
}

impl<C> Default for Link<C> {
    fn default() -> Self {
        Self {
            state: State::Down,
            generation: 0,
            backoff: MIN_BACKOFF,
            connected_before: false,
            outage_reported: false,
        }
    }
}

impl<C> Link<C> {
    /// A link that is down and has never connected.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A connect attempt starts: the generation its outcome must be reported with.
    pub fn connecting(&mut self) -> u64 {
        self.generation += 1;
        self.state = State::Connecting {
            pending: Vec::new(),
        };
        self.generation
    }

    /// The attempt of `generation` succeeded with `connection`. `None` (and `connection` is
    /// dropped) when that attempt is no longer the current one.
    pub fn connected(&mut self, generation: u64, connection: C) -> Option<Connected> {
        if generation != self.generation {
            return None;
        }
        let State::Connecting { pending } =
            std::mem::replace(&mut self.state, State::Up(connection))
        else {
            // The generation changes whenever the state leaves Connecting, so this is
            // unreachable; stay consistent all the same.
            return Some(Connected {
                pending: Vec::new(),
                reconnect: self.connected_before,
            });
        };
        let reconnect = self.connected_before;
        self.connected_before = true;
        self.outage_reported = false;
        self.backoff = MIN_BACKOFF;
        Some(Connected { pending, reconnect })
    }

    /// The attempt or connection of `generation` failed or ended. `None` when it is stale.
    pub fn failed(&mut self, generation: u64) -> Option<Lost> {
        if generation != self.generation || matches!(self.state, State::Down) {
            return None;
        }
        self.state = State::Down;
        self.generation += 1;
        let retry_in = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        let notable = !self.outage_reported;
        self.outage_reported = true;
        Some(Lost { notable, retry_in })
    }

    /// An edge from the hub: `Some` when it must be applied now (the link is up).
    pub fn edge(&mut self, edge: Edge) -> Option<Edge> {
        match &mut self.state {
            State::Up(_) => Some(edge),
            State::Connecting { pending } => {
                pending.push(edge);
                None
            }
            State::Down => None,
        }
    }

    /// The live connection, when up.
    #[must_use]
    pub const fn up(&self) -> Option<&C> {
        match &self.state {
            State::Up(connection) => Some(connection),
            _ => None,
        }
    }

    /// Whether the link is up.
    #[must_use]
    pub const fn is_up(&self) -> bool {
        matches!(self.state, State::Up(_))
    }

    /// The current generation.
    #[must_use]
    pub const fn generation(&self) -> u64 {
        self.generation
    }
}

/// Work sent to the backend in order, one batch at a time: items queue while a batch is in
/// flight, and the next batch takes what queued meanwhile.
#[derive(Debug)]
pub struct Outgoing<T> {
    queue: VecDeque<T>,
    in_flight: bool,
}

impl<T> Default for Outgoing<T> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            in_flight: false,
        }
    }
}

impl<T> Outgoing<T> {
    /// Queues an item.
    pub fn push(&mut self, item: T) {
        self.queue.push_back(item);
    }

    /// The next batch of at most `max` items, oldest first, unless one is in flight or
    /// nothing waits. The caller sends it and then calls [`Outgoing::done`].
    pub fn next_batch(&mut self, max: usize) -> Option<Vec<T>> {
        if self.in_flight || self.queue.is_empty() {
            return None;
        }
        self.in_flight = true;
        let take = self.queue.len().min(max);
        Some(self.queue.drain(..take).collect())
    }

    /// The batch in flight has been answered (or failed).
    pub fn done(&mut self) {
        self.in_flight = false;
    }

    /// Drops everything queued (the connection is gone): how many items that was.
    pub fn clear(&mut self) -> usize {
        let dropped = self.queue.len();
        self.queue.clear();
        dropped
    }

    /// Items waiting (not counting a batch in flight).
    #[must_use]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Reports a bridge that came up: the metric, and the hub (which answers publishes by it).
pub fn report_up(hub: &Addr<Hub>, metrics: &Metrics, connected: &Connected) {
    if connected.reconnect {
        metrics::add(&metrics.bridge_reconnects, 1);
    }
    metrics::set(&metrics.bridge_up, 1);
    hub.do_send(BridgeStatus { up: true });
}

/// Reports a bridge that went down; `lost` publishes were queued and will never be sent.
pub fn report_down(hub: &Addr<Hub>, metrics: &Metrics, lost: usize) {
    metrics::set(&metrics.bridge_up, 0);
    metrics::add(&metrics.bridge_lost, lost as u64);
    hub.do_send(BridgeStatus { up: false });
}

/// A message arrived from the backend on `topic`'s channel: decode it (envelope or raw),
/// drop this node's own echo (`origin`), and hand the rest to the hub for local delivery.
pub fn deliver_incoming(
    hub: &Addr<Hub>,
    metrics: &Arc<Metrics>,
    origin: &str,
    topic: Topic,
    bytes: &[u8],
) {
    let received = envelope::decode(bytes);
    if received.origin.as_deref() == Some(origin) {
        return;
    }
    metrics::add(&metrics.bridge_received, 1);
    let incoming = Incoming {
        topic,
        event: received.event,
        payload: received.payload,
    };
    if hub.try_send(incoming).is_err() {
        debug!("hub mailbox full; an incoming message is lost");
        metrics::add(&metrics.bridge_lost, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(name: &str) -> Edge {
        Edge::Subscribe(name.into())
    }

    #[test]
    fn edges_while_connecting_are_replayed_in_order_and_dropped_while_down() {
        let mut link = Link::<&str>::new();
        assert_eq!(
            link.edge(sub("lost")),
            None,
            "down: the next connect resubscribes"
        );
        let generation = link.connecting();
        assert_eq!(link.edge(sub("a")), None);
        assert_eq!(link.edge(Edge::Unsubscribe("a".into())), None);
        assert_eq!(link.edge(sub("b")), None);
        let connected = link.connected(generation, "conn").unwrap();
        assert_eq!(
            connected.pending,
            vec![sub("a"), Edge::Unsubscribe("a".into()), sub("b")]
        );
        assert!(!connected.reconnect);
        assert_eq!(link.up(), Some(&"conn"));
        assert_eq!(link.edge(sub("c")), Some(sub("c")), "up: apply now");
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_on_success() {
        let mut link = Link::<()>::new();
        let mut delays = Vec::new();
        for _ in 0..6 {
            let generation = link.connecting();
            delays.push(link.failed(generation).unwrap().retry_in.as_millis());
        }
        assert_eq!(delays, [50, 100, 200, 400, 500, 500]);
        let generation = link.connecting();
        let _ = link.connected(generation, ()).unwrap();
        let lost = link.failed(generation).unwrap();
        assert_eq!(lost.retry_in, MIN_BACKOFF);
        assert!(lost.notable, "losing a live connection is news");
        let generation = link.connecting();
        assert!(
            !link.failed(generation).unwrap().notable,
            "a failed retry is not"
        );
        let generation = link.connecting();
        assert!(link.connected(generation, ()).unwrap().reconnect);
    }

    #[test]
    fn events_of_a_replaced_connection_are_ignored() {
        let mut link = Link::<u8>::new();
        let first = link.connecting();
        let _ = link.connected(first, 1).unwrap();
        assert!(link.failed(first).is_some());
        assert_eq!(link.failed(first), None, "its stream ending again is stale");
        let second = link.connecting();
        assert_eq!(
            link.connected(first, 9),
            None,
            "an old attempt cannot come up"
        );
        assert!(link.connected(second, 2).is_some());
        assert_eq!(link.failed(first), None);
        assert!(link.is_up());
        assert_eq!(link.generation(), second);
    }

    #[test]
    fn outgoing_sends_one_batch_at_a_time_in_order() {
        let mut out = Outgoing::default();
        for i in 0..5 {
            out.push(i);
        }
        assert_eq!(out.next_batch(3), Some(vec![0, 1, 2]));
        out.push(5);
        assert_eq!(out.next_batch(3), None, "one batch in flight");
        out.done();
        assert_eq!(out.next_batch(10), Some(vec![3, 4, 5]));
        out.done();
        assert_eq!(out.next_batch(10), None);
        out.push(6);
        out.push(7);
        assert_eq!(out.len(), 2);
        assert_eq!(out.clear(), 2);
        assert!(out.is_empty());
    }
}
