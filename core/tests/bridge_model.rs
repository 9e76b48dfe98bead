//! The bridge state machine against a simulated backend and a plain model of its promises.
//!
//! Random sequences of registry edges, waiting joins, publishes, time, and backend behaviour
//! (answers, refusals, failures, silence, late reports about old connections) drive a
//! [`Bridge`]; a harness plays the backend (a set of subscribed topics per connection) and
//! checks after every step that every promise holds, and at the end that a quiet, connected
//! bridge has exactly the registry's topics subscribed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use switchboard_core::bridge::{
    Action, Bridge, BridgeConfig, EdgeOp, Generation, LinkStatus, PublishOutcome, RequestError,
    WaitOutcome,
};
use switchboard_core::{Time, Topic};

const TOPICS: [&str; 6] = ["a:1", "a:2", "a:3", "b:1", "secret:1", "secret:2"];

#[derive(Debug, Clone)]
enum Op {
    /// The registry's edge for this topic: subscribe if not wanted, else unsubscribe.
    Toggle(usize),
    /// A join waits on a wanted topic.
    Wait(usize),
    Publish(usize),
    Advance(u64),
    /// Answer the pending connect: success or failure.
    Connect(bool),
    /// Answer the edge batch: 0 = as the backend would, 1 = connection failure.
    Edges(u8),
    /// Answer the publish batch: 0 = accept all, 1 = refuse the first, 2 = connection failure.
    Published(u8),
    Pong,
    LinkLost,
    /// Report a success for a generation that is over.
    LateReport,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..TOPICS.len()).prop_map(Op::Toggle),
        3 => (0..TOPICS.len()).prop_map(Op::Wait),
        2 => (1..4000_usize).prop_map(Op::Publish),
        3 => prop_oneof![0..50_u64, 50..2000_u64, 2000..8000_u64].prop_map(Op::Advance),
        2 => any::<bool>().prop_map(Op::Connect),
        4 => prop_oneof![5 => Just(0_u8), 1 => Just(1_u8)].prop_map(Op::Edges),
        3 => prop_oneof![5 => Just(0_u8), 1 => Just(1_u8), 1 => Just(2_u8)].prop_map(Op::Published),
        1 => Just(Op::Pong),
        1 => Just(Op::LinkLost),
        1 => Just(Op::LateReport),
    ]
}

fn config() -> BridgeConfig {
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

struct Harness {
    bridge: Bridge<u64, u64, usize>,
    config: BridgeConfig,
    now: Time,
    /// The registry's view: topics with local subscribers.
    wanted: BTreeSet<String>,
    /// The backend: what it has subscribed for the current connection.
    backend: HashSet<String>,
    /// The live connection's generation, once connected.
    live: Option<Generation>,
    connecting: Option<Generation>,
    edges: Option<(Generation, EdgeOp, Vec<Topic>)>,
    publishing: Option<(Generation, Vec<usize>)>,
    pinging: Option<Generation>,
    retired: Vec<Generation>,
    /// Waiter id → (topic, deadline), until answered.
    waiting: HashMap<u64, (String, Time)>,
    answered: HashSet<u64>,
    /// Ack id → bytes, until handed back.
    acks: HashMap<u64, usize>,
    next_id: u64,
    ready: bool,
}

impl Harness {
    fn new() -> Self {
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
            answered: HashSet::new(),
            acks: HashMap::new(),
            next_id: 0,
            ready: false,
        };
        harness.bridge.handle_tick(Time::ZERO);
        harness.perform();
        harness
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Performs every action, checking each promise as it is made.
    fn perform(&mut self) {
        while let Some(action) = self.bridge.poll() {
            match action {
                Action::Connect { generation } => {
                    assert!(self.connecting.is_none() && self.live.is_none());
                    self.connecting = Some(generation);
                }
                Action::Disconnect { generation } => {
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
                Action::Edges {
                    generation,
                    op,
                    topics,
                } => {
                    assert_eq!(Some(generation), self.live, "edges on the live link only");
                    assert!(self.edges.is_none(), "one edge batch at a time");
                    assert!(!topics.is_empty() && topics.len() <= self.config.max_edge_batch);
                    self.edges = Some((generation, op, topics));
                }
                Action::Publish {
                    generation,
                    messages,
                } => {
                    assert_eq!(Some(generation), self.live);
                    assert!(self.publishing.is_none(), "one publish batch at a time");
                    assert!(messages.len() <= self.config.max_publish_batch);
                    self.publishing = Some((generation, messages));
                }
                Action::Ping { generation } => {
                    assert_eq!(Some(generation), self.live);
                    self.pinging = Some(generation);
                }
                Action::Answer { waiter, outcome } => {
                    let (topic, deadline) = self
                        .waiting
                        .remove(&waiter)
                        .expect("a waiter is answered once");
                    self.answered.insert(waiter);
                    match outcome {
                        WaitOutcome::Confirmed => {
                            assert!(self.live.is_some(), "confirmed on a live link");
                            assert!(
                                self.backend.contains(&topic),
                                "confirmed only while the backend has {topic}"
                            );
                        }
                        WaitOutcome::TimedOut => assert!(self.now >= deadline),
                        WaitOutcome::Refused(_) => assert!(topic.starts_with("secret:")),
                        WaitOutcome::LocalOnly => {}
                        other => panic!("unexpected outcome {other:?}"),
                    }
                }
                Action::Published { ack, outcome } => {
                    self.acks.remove(&ack).expect("an ack is handed back once");
                    if let PublishOutcome::Refused(reason) = outcome {
                        assert_eq!(reason, "refused");
                    }
                }
                Action::EdgeRefused { topic, .. } => assert!(topic.as_str().starts_with("secret:")),
                Action::Status(LinkStatus::Ready) => self.ready = true,
                Action::Status(LinkStatus::Down { .. }) => self.ready = false,
                Action::Status(_) => {}
                other => panic!("unexpected action {other:?}"),
            }
        }
        assert!(self.bridge.queued() <= self.config.max_queued_messages);
        assert!(self.bridge.queued_bytes() <= self.config.max_queued_bytes);
        assert_eq!(self.ready, self.bridge.is_ready());
        // No waiter outlives its deadline once time has passed it.
        for (waiter, (_, deadline)) in &self.waiting {
            assert!(
                *deadline > self.now,
                "waiter {waiter} past its deadline {deadline:?} at {:?}",
                self.now
            );
        }
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        match *op {
            Op::Toggle(i) => {
                let topic = Topic::new(TOPICS[i]).unwrap();
                if self.wanted.insert(TOPICS[i].to_owned()) {
                    self.bridge.handle_subscribe(&topic, now);
                } else {
                    self.wanted.remove(TOPICS[i]);
                    self.bridge.handle_unsubscribe(&topic, now);
                }
            }
            Op::Wait(i) => {
                if self.wanted.contains(TOPICS[i]) {
                    let id = self.id();
                    self.waiting.insert(
                        id,
                        (TOPICS[i].to_owned(), now + self.config.subscribe_timeout),
                    );
                    self.bridge
                        .handle_wait(&Topic::new(TOPICS[i]).unwrap(), id, now);
                }
            }
            Op::Publish(bytes) => {
                let id = self.id();
                self.acks.insert(id, bytes);
                self.bridge.handle_publish(bytes, bytes, id, now);
            }
            Op::Advance(millis) => {
                self.now = self.now + Duration::from_millis(millis);
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
            Op::Edges(kind) => {
                if let Some((generation, op, topics)) = self.edges.take() {
                    let result = if kind == 1 {
                        Err(RequestError::Failed("reset".into()))
                    } else if op == EdgeOp::Subscribe
                        && topics.iter().any(|t| t.as_str().starts_with("secret:"))
                    {
                        Err(RequestError::Refused("NOPERM".into()))
                    } else {
                        for topic in &topics {
                            match op {
                                EdgeOp::Subscribe => self.backend.insert(topic.as_str().to_owned()),
                                EdgeOp::Unsubscribe => self.backend.remove(topic.as_str()),
                            };
                        }
                        Ok(())
                    };
                    self.bridge.handle_edges_done(generation, result, now);
                }
            }
            Op::Published(kind) => {
                if let Some((generation, messages)) = self.publishing.take() {
                    let result = match kind {
                        0 => Ok(messages.iter().map(|_| Ok(())).collect()),
                        1 => Ok(messages
                            .iter()
                            .enumerate()
                            .map(|(i, _)| {
                                if i == 0 {
                                    Err("refused".into())
                                } else {
                                    Ok(())
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
                            .handle_published(generation, Ok(vec![Ok(())]), now);
                        self.bridge.handle_pong(generation, now);
                    }
                }
            }
        }
        self.perform();
    }

    /// A well-behaved backend from now on: answer everything until nothing is pending and
    /// the lingers have passed.
    fn settle(&mut self) {
        for _ in 0..200 {
            let before = (
                self.connecting.is_some(),
                self.edges.is_some(),
                self.publishing.is_some(),
                self.pinging.is_some(),
            );
            self.apply(&Op::Connect(true));
            self.apply(&Op::Edges(0));
            self.apply(&Op::Published(0));
            self.apply(&Op::Pong);
            if before == (false, false, false, false)
                && self.connecting.is_none()
                && self.edges.is_none()
                && self.publishing.is_none()
                && self.live.is_some()
            {
                // Let lingers and timers pass, in steps shorter than the ping deadline.
                self.apply(&Op::Advance(400));
                if self.edges.is_none() && self.connecting.is_none() && self.waiting.is_empty() {
                    let expected: HashSet<String> = self
                        .wanted
                        .iter()
                        .filter(|t| !t.starts_with("secret:"))
                        .cloned()
                        .collect();
                    if self.backend == expected {
                        return;
                    }
                }
            } else if self.connecting.is_none() && self.live.is_none() {
                self.apply(&Op::Advance(100));
            }
        }
        panic!(
            "never settled: wanted {:?}, backend {:?}, live {:?}",
            self.wanted, self.backend, self.live
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_bridge_keeps_its_promises(ops in prop::collection::vec(op(), 0..200)) {
        let mut harness = Harness::new();
        for op in &ops {
            harness.apply(op);
        }
        harness.settle();
        assert!(harness.bridge.is_ready(), "quiet and connected means ready");
        // Publishes still queued get answered once the link carries them; then every ack
        // has come back.
        for _ in 0..20 {
            harness.apply(&Op::Published(0));
        }
        assert!(harness.acks.is_empty(), "unanswered acks: {:?}", harness.acks);
        // Waiters still pending are past nothing; let them time out or be confirmed.
        harness.apply(&Op::Advance(3000));
        harness.settle();
        assert!(harness.waiting.is_empty(), "unanswered waiters: {:?}", harness.waiting);
    }
}
