//! A simulated backend and a plain model of the bridge's promises, for property tests and
//! fuzzing (feature `model`).
//!
//! [`check`] runs a sequence of [`Op`]s — registry edges, waiting joins, publishes, time, and
//! the backend's behaviour (answers, refusals, failures, silence, late reports about old
//! connections) — through a [`Bridge`], playing the backend as a set of subscribed topics per
//! connection, and checks after every step that every promise holds; at the end a well-behaved
//! backend is played until the bridge is quiet, and it must then be connected, ready, with
//! exactly the registry's topics subscribed and every waiter and ack handed back.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use super::{
    Action, Bridge, BridgeConfig, EdgeOp, Generation, LinkStatus, PublishOutcome, RequestError,
    WaitOutcome,
};
use crate::{Time, Topic};

/// The topics the ops draw from; the backend refuses to subscribe the `secret:` ones.
pub const TOPICS: [&str; 6] = ["a:1", "a:2", "a:3", "b:1", "secret:1", "secret:2"];

/// One step: something the registry, a join, a publisher, the clock or the backend does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Op {
    /// The registry's edge for `TOPICS[i % 6]`: subscribe if not wanted, else unsubscribe.
    Toggle(u8),
    /// A join waits on `TOPICS[i % 6]` (when wanted, as the hub only waits after its edge).
    Wait(u8),
    /// A publish of this many bytes (1..=4000).
    Publish(u16),
    /// Time passes (milliseconds, at most 8 s).
    Advance(u16),
    /// The pending connect attempt succeeds (`true`) or fails.
    Connect(bool),
    /// The edge batch in flight is answered as the backend would (`false`) or its connection
    /// fails (`true`).
    Edges(bool),
    /// The publish batch in flight: 0 accepted, 1 first message refused, else the connection
    /// fails.
    Published(u8),
    /// The ping in flight is answered.
    Pong,
    /// The live connection breaks.
    LinkLost,
    /// Successes are reported for the last generation that ended.
    LateReport,
}

/// The configuration the checks run with: small bounds so the ops reach them.
#[must_use]
pub fn config() -> BridgeConfig {
    BridgeConfig {
        subscribe_timeout: Duration::from_millis(3000),
        backend_timeout: Duration::from_millis(6000),
        connect_timeout: Duration::from_millis(1000),
        unsubscribe_linger: Duration::from_millis(500),
        max_queued_messages: 5,
        max_queued_bytes: 10_000,
        max_publish_batch: 2,
        max_edge_batch: 3,
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        jitter_seed: 9,
    }
}

/// Runs `ops`, then a well-behaved backend until quiet, checking every promise.
///
/// # Errors
/// What was broken, and when.
pub fn check(ops: &[Op]) -> Result<(), String> {
    let mut harness = Harness::new()?;
    for (step, op) in ops.iter().enumerate() {
        harness
            .apply(op)
            .map_err(|what| format!("step {step} ({op:?}): {what}"))?;
    }
    harness
        .settle()
        .map_err(|what| format!("settling: {what}"))?;
    // Waiters still pending are confirmed or time out; publishes still queued are sent.
    harness.apply(&Op::Advance(3000))?;
    harness
        .settle()
        .map_err(|what| format!("settling: {what}"))?;
    if !harness.bridge.is_ready() {
        return Err("quiet and connected, but not ready".into());
    }
    if !harness.acks.is_empty() {
        return Err(format!("acks never handed back: {:?}", harness.acks));
    }
    if !harness.waiting.is_empty() {
        return Err(format!("waiters never answered: {:?}", harness.waiting));
    }
    Ok(())
}

macro_rules! ensure {
    ($cond:expr, $($what:tt)+) => {
        if !$cond {
            return Err(format!($($what)+));
        }
    };
}

/// The bridge, the simulated backend, and what is owed.
struct Harness {
    bridge: Bridge<u64, u64, usize>,
    config: BridgeConfig,
    now: Time,
    /// The registry's view: topics with local subscribers.
    wanted: BTreeSet<String>,
    /// The backend: what it has subscribed for the live connection.
    backend: HashSet<String>,
    live: Option<Generation>,
    connecting: Option<Generation>,
    edges: Option<(Generation, EdgeOp, Vec<Topic>)>,
    publishing: Option<(Generation, Vec<usize>)>,
    pinging: Option<Generation>,
    retired: Vec<Generation>,
    /// Waiter id → (topic, deadline), until answered.
    waiting: HashMap<u64, (String, Time)>,
    /// Ack id → bytes, until handed back.
    acks: HashMap<u64, usize>,
    next_id: u64,
    ready: bool,
}

impl Harness {
    fn new() -> Result<Self, String> {
        let config = config();
        let mut harness = Self {
            bridge: Bridge::new(config.clone(), Time::ZERO),
            config,
            now: Time::ZERO,
            wanted: BTreeSet::new(),
            backend: HashSet::new(),
            live: None,
            connecting: None,
            edges: None,
            publishing: None,
            pinging: None,
            retired: Vec::new(),
            waiting: HashMap::new(),
            acks: HashMap::new(),
            next_id: 0,
            ready: false,
        };
        harness.bridge.handle_tick(Time::ZERO);
        harness.perform()?;
        Ok(harness)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn retire(&mut self, generation: Generation) {
        if self.live == Some(generation) {
            self.live = None;
            self.backend.clear();
        }
        if self.connecting == Some(generation) {
            self.connecting = None;
        }
        if self.edges.as_ref().is_some_and(|(g, ..)| *g == generation) {
            self.edges = None;
        }
        if self
            .publishing
            .as_ref()
            .is_some_and(|(g, _)| *g == generation)
        {
            self.publishing = None;
        }
        if self.pinging == Some(generation) {
            self.pinging = None;
        }
        self.ready = false;
        self.retired.push(generation);
    }

    /// Performs every action, checking each promise as it is made.
    fn perform(&mut self) -> Result<(), String> {
        while let Some(action) = self.bridge.poll() {
            match action {
                Action::Connect { generation } => {
                    ensure!(
                        self.connecting.is_none() && self.live.is_none(),
                        "a connect while another connection lives"
                    );
                    self.connecting = Some(generation);
                }
                Action::Disconnect { generation } => self.retire(generation),
                Action::Edges {
                    generation,
                    op,
                    topics,
                } => {
                    ensure!(Some(generation) == self.live, "edges off the live link");
                    ensure!(self.edges.is_none(), "two edge batches at once");
                    ensure!(
                        !topics.is_empty() && topics.len() <= self.config.max_edge_batch,
                        "an edge batch of {}",
                        topics.len()
                    );
                    self.edges = Some((generation, op, topics));
                }
                Action::Publish {
                    generation,
                    messages,
                } => {
                    ensure!(Some(generation) == self.live, "a publish off the live link");
                    ensure!(self.publishing.is_none(), "two publish batches at once");
                    ensure!(
                        messages.len() <= self.config.max_publish_batch,
                        "a publish batch of {}",
                        messages.len()
                    );
                    self.publishing = Some((generation, messages));
                }
                Action::Ping { generation } => {
                    ensure!(Some(generation) == self.live, "a ping off the live link");
                    self.pinging = Some(generation);
                }
                Action::Answer { waiter, outcome } => {
                    let (topic, deadline) = self
                        .waiting
                        .remove(&waiter)
                        .ok_or_else(|| format!("waiter {waiter} answered twice"))?;
                    match outcome {
                        WaitOutcome::Confirmed => {
                            ensure!(self.live.is_some(), "confirmed without a live link");
                            ensure!(
                                self.backend.contains(&topic),
                                "confirmed {topic} while the backend does not have it"
                            );
                        }
                        WaitOutcome::TimedOut => {
                            ensure!(self.now >= deadline, "timed out before its deadline");
                        }
                        WaitOutcome::Refused(_) => {
                            ensure!(topic.starts_with("secret:"), "{topic} refused");
                        }
                        WaitOutcome::LocalOnly => {}
                    }
                }
                Action::Published { ack, outcome } => {
                    self.acks
                        .remove(&ack)
                        .ok_or_else(|| format!("ack {ack} handed back twice"))?;
                    if let PublishOutcome::Refused(reason) = outcome {
                        ensure!(reason == "refused", "refused for {reason}");
                    }
                }
                Action::EdgeRefused { topic, .. } => {
                    ensure!(topic.as_str().starts_with("secret:"), "{topic} refused");
                }
                Action::Status(LinkStatus::Ready) => self.ready = true,
                Action::Status(LinkStatus::Down { .. }) => self.ready = false,
                Action::Status(LinkStatus::Connected { .. }) => {}
            }
        }
        ensure!(
            self.bridge.queued() <= self.config.max_queued_messages,
            "{} messages queued",
            self.bridge.queued()
        );
        ensure!(
            self.bridge.queued_bytes() <= self.config.max_queued_bytes,
            "{} bytes queued",
            self.bridge.queued_bytes()
        );
        ensure!(
            self.ready == self.bridge.is_ready(),
            "readiness reported {} but is {}",
            self.ready,
            self.bridge.is_ready()
        );
        for (waiter, (_, deadline)) in &self.waiting {
            ensure!(
                *deadline > self.now,
                "waiter {waiter} past its deadline {deadline:?} at {:?}",
                self.now
            );
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let now = self.now;
        match *op {
            Op::Toggle(i) => {
                let name = TOPICS[usize::from(i) % TOPICS.len()];
                let topic = topic(name)?;
                if self.wanted.insert(name.to_owned()) {
                    self.bridge.handle_subscribe(&topic, now);
                } else {
                    self.wanted.remove(name);
                    self.bridge.handle_unsubscribe(&topic, now);
                }
            }
            Op::Wait(i) => {
                let name = TOPICS[usize::from(i) % TOPICS.len()];
                if self.wanted.contains(name) {
                    let id = self.id();
                    self.waiting
                        .insert(id, (name.to_owned(), now + self.config.subscribe_timeout));
                    self.bridge.handle_wait(&topic(name)?, id, now);
                }
            }
            Op::Publish(bytes) => {
                let bytes = usize::from(bytes % 4000) + 1;
                let id = self.id();
                self.acks.insert(id, bytes);
                self.bridge.handle_publish(bytes, bytes, id, now);
            }
            Op::Advance(millis) => {
                self.now = self.now + Duration::from_millis(u64::from(millis % 8000));
                self.bridge.handle_tick(self.now);
            }
            Op::Connect(ok) => {
                if let Some(generation) = self.connecting.take() {
                    if ok {
                        self.live = Some(generation);
                        self.backend.clear();
                        self.bridge.handle_connected(generation, now);
                    } else {
                        self.bridge
                            .handle_connect_failed(generation, "refused", now);
                    }
                }
            }
            Op::Edges(fail) => {
                if let Some((generation, op, topics)) = self.edges.take() {
                    let result = if fail {
                        Err(RequestError::Failed("reset".into()))
                    } else if op == EdgeOp::Subscribe
                        && topics.iter().any(|t| t.as_str().starts_with("secret:"))
                    {
                        Err(RequestError::Refused("NOPERM".into()))
                    } else {
                        for topic in &topics {
                            match op {
                                EdgeOp::Subscribe => {
                                    self.backend.insert(topic.as_str().to_owned());
                                }
                                EdgeOp::Unsubscribe => {
                                    self.backend.remove(topic.as_str());
                                }
                            }
                        }
                        Ok(())
                    };
                    self.bridge.handle_edges_done(generation, result, now);
                }
            }
            Op::Published(kind) => {
                if let Some((generation, messages)) = self.publishing.take() {
                    let result = match kind % 3 {
                        0 => Ok(messages.iter().map(|_| Ok(None)).collect()),
                        1 => Ok(messages
                            .iter()
                            .enumerate()
                            .map(|(i, _)| {
                                if i == 0 {
                                    Err("refused".to_owned())
                                } else {
                                    Ok(None)
                                }
                            })
                            .collect()),
                        _ => Err("reset".into()),
                    };
                    self.bridge.handle_published(generation, result, now);
                }
            }
            Op::Pong => {
                if let Some(generation) = self.pinging.take() {
                    self.bridge.handle_pong(generation, now);
                }
            }
            Op::LinkLost => {
                if let Some(generation) = self.live {
                    self.bridge.handle_link_lost(generation, "reset", now);
                }
            }
            Op::LateReport => {
                if let Some(&generation) = self.retired.last() {
                    if Some(generation) != self.live {
                        self.bridge.handle_edges_done(generation, Ok(()), now);
                        self.bridge
                            .handle_published(generation, Ok(vec![Ok(None)]), now);
                        self.bridge.handle_pong(generation, now);
                    }
                }
            }
        }
        self.perform()
    }

    /// A well-behaved backend from now on: answers everything until nothing is pending, the
    /// lingers have passed and the backend has exactly the wanted topics (less the refused).
    fn settle(&mut self) -> Result<(), String> {
        for _ in 0..200 {
            let idle_before = self.connecting.is_none()
                && self.edges.is_none()
                && self.publishing.is_none()
                && self.pinging.is_none();
            self.apply(&Op::Connect(true))?;
            self.apply(&Op::Edges(false))?;
            self.apply(&Op::Published(0))?;
            self.apply(&Op::Pong)?;
            let idle =
                self.connecting.is_none() && self.edges.is_none() && self.publishing.is_none();
            if idle_before && idle && self.live.is_some() {
                // Let lingers and timers pass, in steps shorter than the ping deadline.
                self.apply(&Op::Advance(400))?;
                if self.edges.is_none() && self.connecting.is_none() && self.waiting.is_empty() {
                    let expected: HashSet<String> = self
                        .wanted
                        .iter()
                        .filter(|t| !t.starts_with("secret:"))
                        .cloned()
                        .collect();
                    if self.backend == expected {
                        return Ok(());
                    }
                }
            } else if self.connecting.is_none() && self.live.is_none() {
                self.apply(&Op::Advance(100))?;
            }
        }
        Err(format!(
            "never settled: wanted {:?}, backend {:?}, live {:?}",
            self.wanted, self.backend, self.live
        ))
    }
}

fn topic(name: &str) -> Result<Topic, String> {
    Topic::new(name).map_err(|err| err.to_string())
}
