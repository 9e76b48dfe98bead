//! A subscriber that recovers what it missed (docs/history.md), recording everything it does
//! and sees into a [`History`] for [`crate::recovery::check`].
//!
//! [`Subscriber`] joins topics with history on one node (possibly through a
//! [`FaultProxy`](crate::proxy::FaultProxy)), remembers per topic the last position it
//! *took*, and rejoins a topic with `{"since": last}`:
//!
//! - when its socket ends: it reconnects (retrying until it can) and rejoins every topic;
//! - when `phx_close` or `phx_error` ends a membership it did not end itself (the node ends
//!   the memberships of topics with history with `phx_error` when it may have missed
//!   publications: its backend link was lost, or a position was skipped);
//! - when a broadcast is not the next one of its stream (a hole, an older or repeated
//!   position, another epoch): it takes nothing more of that topic until the rejoin is
//!   answered. The node should never let that happen (it ends the membership instead); the
//!   check counts each such broadcast as a hole.
//!
//! It does not watch its node's readiness to rejoin: what a client is told through its socket
//! must be enough. [`ReadyWatch`] counts the times its node was ready again, for the report.
//!
//! A broadcast is taken only when its position is exactly one past the last taken in the same
//! epoch, by a member whose join is not in flight (the rule [`crate::recovery`] replays);
//! after a first join or a `recovered: false`, the reply's position is taken at once and the
//! [`Tail`] up to it that may follow is let through. Half
//! of the rejoins of a topic it is still a member of leave first (`phx_leave`, then
//! `phx_join`); the others join over the membership, which the node closes with `phx_close`:
//! both paths of the node's duplicate guards are exercised. A join refused (the backend is
//! unreachable, the subscription was not confirmed in time) is retried with backoff.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::client::{Client, Incoming};
use crate::frame::PhxFrame;
use crate::history::{self, History};
use crate::http::KeepAlive;
use crate::recovery::{Event, Position, Tail, TailStep};
use crate::rng::Rng;

/// How often a [`ReadyWatch`] samples its node.
pub const WATCH_EVERY: Duration = Duration::from_millis(25);

/// How long a subscriber waits for a reply to a join or leave before it drops the socket and
/// starts again.
const REPLY_PATIENCE: Duration = Duration::from_secs(15);

/// How long a subscriber waits for a frame before looking at its node's readiness again.
const POLL: Duration = Duration::from_millis(20);

/// The first and the longest pause before retrying a refused join or a failed connect.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(800);

/// A task that samples one node's `/readyz` and `switchboard_bridge_reconnects_total` (as the
/// [`ReadinessSampler`](crate::history::ReadinessSampler) does) and counts *generations*: a
/// new one each time the node is ready after a sample that was not, or after its reconnect
/// counter moved. Subscribers rejoin on every new generation.
#[derive(Debug)]
pub struct ReadyWatch {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    generations: watch::Receiver<u64>,
}

impl ReadyWatch {
    /// Starts watching `node` every [`WATCH_EVERY`] on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn start(node: SocketAddr) -> Self {
        let (stop, stopped) = oneshot::channel();
        let (generation, generations) = watch::channel(0);
        let task = tokio::spawn(watch_loop(node, generation, stopped));
        Self {
            stop: Some(stop),
            task,
            generations,
        }
    }

    /// A receiver of the generations, for a [`Subscriber`].
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generations.clone()
    }

    /// Stops watching: how many times the node was ready again.
    pub async fn stop(mut self) -> u64 {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        *self.generations.borrow()
    }
}

async fn watch_loop(
    node: SocketAddr,
    generation: watch::Sender<u64>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connection: Option<KeepAlive> = None;
    let mut counter: Option<f64> = None;
    let mut dirty = false;
    let mut ticks = tokio::time::interval(WATCH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = ticks.tick() => {}
        }
        match history::sample_node(node, &mut connection).await {
            None => dirty = true,
            Some(now) => {
                // Counters are small integers, exact in an f64.
                if counter.is_some_and(|before| (before - now).abs() > 0.5) {
                    dirty = true;
                }
                counter = Some(now);
                if dirty {
                    dirty = false;
                    generation.send_modify(|g| *g += 1);
                }
            }
        }
    }
}

/// What one subscriber did, for a scenario's own assertions (the history check judges the
/// deliveries).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Sockets opened (the first included).
    pub connections: usize,
    /// Joins sent with `since`.
    pub rejoins: usize,
    /// Of which preceded by a `phx_leave`.
    pub leaves: usize,
    /// Rejoins answered `recovered: true`.
    pub recovered: usize,
    /// Rejoins answered `recovered: false`.
    pub not_recovered: usize,
    /// Broadcasts that were not the next of their stream.
    pub holes: usize,
    /// Times its node was ready again.
    pub ready_again: usize,
    /// Joins refused, by reason.
    pub refused: BTreeMap<String, usize>,
    /// What went wrong that the history cannot record (a binary frame, a reply that never
    /// came).
    pub unexpected: Vec<String>,
}

impl Tally {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: Self) {
        self.connections += other.connections;
        self.rejoins += other.rejoins;
        self.leaves += other.leaves;
        self.recovered += other.recovered;
        self.not_recovered += other.not_recovered;
        self.holes += other.holes;
        self.ready_again += other.ready_again;
        for (reason, count) in other.refused {
            *self.refused.entry(reason).or_default() += count;
        }
        self.unexpected.extend(other.unexpected);
    }
}

/// A recovering subscriber (see the [module documentation](self)).
#[derive(Debug)]
pub struct Subscriber {
    /// Its name in the history.
    pub name: String,
    /// The `ws://` URL it connects to.
    pub url: String,
    /// Topics with history it joins.
    pub topics: Vec<String>,
    /// Where it records.
    pub history: Arc<History>,
    /// Its node's [`ReadyWatch`] generations.
    pub ready: watch::Receiver<u64>,
    /// Set to true to stop it.
    pub stop: watch::Receiver<bool>,
    /// Seeds its choice between leaving first and joining over.
    pub seed: u64,
}

/// The socket ended (or stopped answering): it has to be replaced.
#[derive(Debug)]
struct Ended;

/// One topic, as the subscriber sees it.
#[derive(Debug)]
struct Topic {
    name: String,
    /// The last position taken.
    last: Option<Position>,
    /// The join ref of the membership, while a member.
    member: Option<String>,
    /// A broadcast was not the next one: nothing is taken until the rejoin is answered.
    broken: bool,
    /// A join is in flight: what arrives belongs to the membership it replaces.
    in_flight: bool,
    /// It needs a (re)join.
    stale: bool,
    /// What may still follow the last reply.
    tail: Option<Tail>,
}

/// A subscriber at work.
struct Run {
    name: String,
    history: Arc<History>,
    topics: Vec<Topic>,
    rng: Rng,
    stop: watch::Receiver<bool>,
    tally: Tally,
}

impl Subscriber {
    /// Starts it on the current tokio runtime: its task, and a signal that fires once every
    /// topic was joined the first time.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn spawn(self) -> (JoinHandle<Tally>, oneshot::Receiver<()>) {
        let (joined, first_joins) = oneshot::channel();
        (tokio::spawn(self.run(Some(joined))), first_joins)
    }

    /// Runs until told to stop: what it did.
    pub async fn run(self, mut joined: Option<oneshot::Sender<()>>) -> Tally {
        let Self {
            name,
            url,
            topics,
            history,
            mut ready,
            stop,
            seed,
        } = self;
        let mut run = Run {
            name,
            history,
            topics: topics
                .into_iter()
                .map(|name| Topic {
                    name,
                    last: None,
                    member: None,
                    broken: false,
                    in_flight: false,
                    stale: true,
                    tail: None,
                })
                .collect(),
            rng: Rng::new(seed),
            stop,
            tally: Tally::default(),
        };
        let _ = ready.borrow_and_update();
        'connect: while !run.stopped() {
            let Some(mut client) = run.connect(&url).await else {
                break;
            };
            run.tally.connections += 1;
            for topic in &mut run.topics {
                topic.stale = true;
            }
            while !run.stopped() {
                if ready.has_changed().unwrap_or(false) {
                    // Counted only: a client learns of a lost link from its socket.
                    let _ = ready.borrow_and_update();
                    run.tally.ready_again += 1;
                }
                for i in 0..run.topics.len() {
                    if run.topics[i].stale && run.rejoin(&mut client, i).await.is_err() {
                        run.ended();
                        continue 'connect;
                    }
                }
                if let Some(joined) = joined.take() {
                    let _ = joined.send(());
                }
                match client.next_incoming(POLL).await {
                    None => {}
                    Some(Incoming::Frame(frame)) => run.handle(&frame),
                    Some(Incoming::Binary(_)) => {
                        run.tally
                            .unexpected
                            .push(format!("{}: a binary frame", run.name));
                    }
                    Some(_) => {
                        run.ended();
                        continue 'connect;
                    }
                }
            }
        }
        run.tally
    }
}

impl Run {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn record(&self, topic: usize, event: Event) {
        self.history
            .recovering(&self.name, &self.topics[topic].name, event);
    }

    /// Connects, retrying with backoff: `None` once told to stop.
    async fn connect(&mut self, url: &str) -> Option<Client> {
        let mut pause = BACKOFF_FIRST;
        while !self.stopped() {
            let attempt = tokio::time::timeout(crate::PATIENCE, Client::try_connect(url)).await;
            if let Ok(Ok(client)) = attempt {
                return Some(client);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(BACKOFF_MAX);
        }
        None
    }

    /// The socket ended: every membership with it.
    fn ended(&mut self) {
        let at = Instant::now();
        for i in 0..self.topics.len() {
            let topic = &mut self.topics[i];
            topic.in_flight = false;
            topic.broken = false;
            topic.stale = true;
            topic.tail = None;
            if topic.member.take().is_some() {
                self.record(i, Event::Left { at });
            }
        }
    }

    /// Joins topic `i` (with `since` once it has a position) until the join is answered ok
    /// or the subscriber is told to stop.
    async fn rejoin(&mut self, client: &mut Client, i: usize) -> Result<(), Ended> {
        let mut pause = BACKOFF_FIRST;
        while !self.stopped() {
            let name = self.topics[i].name.clone();
            if let Some(join_ref) = self.topics[i].member.clone() {
                if self.rng.below(2) == 0 {
                    self.tally.leaves += 1;
                    let msg_ref = client.make_ref();
                    let leave = json!([join_ref, msg_ref, name, "phx_leave", {}]);
                    send(client, &leave).await?;
                    let _ = self.reply(client, &msg_ref).await?;
                    if self.topics[i].member.take().is_some() {
                        self.record(i, Event::Left { at: Instant::now() });
                    }
                }
            }
            let since = self.topics[i].last.as_ref().map(ToString::to_string);
            let payload = since
                .as_ref()
                .map_or_else(|| json!({}), |s| json!({ "since": s }));
            self.record(
                i,
                Event::JoinSent {
                    since: since.clone(),
                    at: Instant::now(),
                },
            );
            if since.is_some() {
                self.tally.rejoins += 1;
            }
            self.topics[i].in_flight = true;
            let msg_ref = client.make_ref();
            send(
                client,
                &json!([msg_ref, msg_ref, name, "phx_join", payload]),
            )
            .await?;
            let reply = self.reply(client, &msg_ref).await?;
            let at = Instant::now();
            let topic = &mut self.topics[i];
            topic.in_flight = false;
            if reply.status() == "ok" {
                let response = reply.response();
                let position = response
                    .get("position")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let recovered = response.get("recovered").and_then(Value::as_bool);
                topic.member = Some(msg_ref);
                topic.broken = false;
                topic.stale = false;
                topic.tail = None;
                if recovered == Some(true) {
                    self.tally.recovered += 1;
                } else {
                    if recovered == Some(false) {
                        self.tally.not_recovered += 1;
                    }
                    if let Some(reply) = position.as_deref().and_then(Position::parse) {
                        let since = since.as_deref().and_then(Position::parse);
                        topic.tail = Some(Tail::after(since.as_ref(), &reply));
                        topic.last = Some(reply);
                    }
                }
                self.record(
                    i,
                    Event::Joined {
                        position,
                        recovered,
                        at,
                    },
                );
                return Ok(());
            }
            topic.member = None;
            let reason = reply.reason().to_owned();
            *self.tally.refused.entry(reason.clone()).or_default() += 1;
            self.record(i, Event::Refused { reason, at });
            self.pump(client, pause).await?;
            pause = (pause * 2).min(BACKOFF_MAX);
        }
        Ok(())
    }

    /// Reads until the reply to `msg_ref`, handling what arrives first.
    async fn reply(&mut self, client: &mut Client, msg_ref: &str) -> Result<Value, Ended> {
        let deadline = Instant::now() + REPLY_PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match client.next_incoming(left).await {
                Some(Incoming::Frame(frame)) if frame.is_reply_to(msg_ref) => return Ok(frame),
                Some(Incoming::Frame(frame)) => self.handle(&frame),
                Some(Incoming::Binary(_)) => {
                    self.tally
                        .unexpected
                        .push(format!("{}: a binary frame", self.name));
                }
                None => {
                    let how = format!(
                        "{}: no reply to ref {msg_ref} within {REPLY_PATIENCE:?}",
                        self.name
                    );
                    self.tally.unexpected.push(how);
                    return Err(Ended);
                }
                Some(_) => return Err(Ended),
            }
        }
    }

    /// Reads for `span`, handling what arrives.
    async fn pump(&mut self, client: &mut Client, span: Duration) -> Result<(), Ended> {
        let until = Instant::now() + span;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match client.next_incoming(left).await {
                None => break,
                Some(Incoming::Frame(frame)) => self.handle(&frame),
                Some(Incoming::Binary(_)) => {
                    self.tally
                        .unexpected
                        .push(format!("{}: a binary frame", self.name));
                }
                Some(_) => return Err(Ended),
            }
        }
        Ok(())
    }

    /// A frame that is not an awaited reply: a broadcast, or the end of a membership.
    fn handle(&mut self, frame: &Value) {
        let Some(i) = self.topics.iter().position(|t| t.name == frame.topic()) else {
            return;
        };
        let at = Instant::now();
        if frame.is_broadcast() {
            let position = frame.msg_ref().map(str::to_owned);
            self.record(
                i,
                Event::Delivered {
                    position: position.clone(),
                    message: history::parse(frame.payload()),
                    at,
                },
            );
            let topic = &mut self.topics[i];
            if topic.member.is_none() || topic.in_flight || topic.broken {
                return;
            }
            let position = position.as_deref().and_then(Position::parse);
            if let (Some(tail), Some(at)) = (topic.tail.as_mut(), position.as_ref()) {
                match tail.step(at) {
                    TailStep::Past { .. } => topic.tail = None,
                    TailStep::Next { done } => {
                        if done {
                            topic.tail = None;
                        }
                        return;
                    }
                    TailStep::Repeated | TailStep::Hole => {
                        topic.broken = true;
                        topic.stale = true;
                        self.tally.holes += 1;
                        return;
                    }
                }
            }
            let next = topic.last.as_ref().map(Position::next);
            if position.is_some() && position == next {
                topic.last = position;
            } else {
                topic.broken = true;
                topic.stale = true;
                self.tally.holes += 1;
            }
            return;
        }
        let ends = matches!(frame.event(), "phx_close" | "phx_error");
        let topic = &mut self.topics[i];
        if ends && frame.join_ref().is_some() && frame.join_ref() == topic.member.as_deref() {
            topic.member = None;
            if !topic.in_flight {
                topic.stale = true;
            }
            self.record(i, Event::Left { at });
        }
    }
}

/// Sends `frame`; an error means the socket is gone.
async fn send(client: &mut Client, frame: &Value) -> Result<(), Ended> {
    client
        .try_send_text(frame.to_string())
        .await
        .map_err(|_| Ended)
}
