//! A history of what a fault test published and what its sockets received, and the check
//! that decides which deliveries the node owed.
//!
//! A test records, with `Instant`s it takes itself:
//!
//! - every publish ([`History::published`]): publisher, topic, a sequence number that grows
//!   per (publisher, topic), when it was sent, when the answer came and what it said
//!   ([`Acked`]);
//! - every delivery a socket saw ([`History::delivered`], or
//!   [`History::delivered_payload`] for a payload made by [`payload`]);
//! - every membership: when a socket's join was answered `ok` ([`History::joined`]) and when
//!   it left or died ([`History::left`], [`History::left_all`]);
//! - when the system was fit to deliver: [`GreenWindows`], fed by a [`ReadinessSampler`]
//!   polling the nodes' `/readyz` and `switchboard_bridge_reconnects_total`.
//!
//! [`History::check`] then decides with a `grace` period. A publish is *required* at a
//! socket when its answer was [`Acked::Ok`], it was sent no earlier than the socket's join
//! was answered, answered no later than the socket left (if it did), and the whole interval
//! from sending to answer + `grace` lies inside one green window. The [`Report`] lists the
//! required deliveries that never came (`missing`), and, whatever the windows say, any
//! message delivered twice to a socket (`duplicates`), delivered after a later message of the
//! same publisher on the same topic (`reordered`), or never published (`unexpected`).
//! Deliveries of publishes answered with an error or not answered at all are allowed and
//! counted.
//!
//! Recovering subscribers ([`crate::recovering`]) are judged without windows: they record
//! what they did and saw per topic ([`History::recovering`]), the positions publishes were
//! answered with are recorded too ([`History::answered_at`]), and [`crate::recovery::check`]
//! decides — every publish answered ok delivered exactly once and in order across outages,
//! unless the subscriber was told `recovered: false` for exactly the span it lost. Its
//! [`Findings`] are part of the [`Report`] (`recovery`) and of [`Report::is_ok`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::http::{self, KeepAlive};
use crate::recovery::{self, Event, Findings, Logged};

/// How many entries of each list a [`Report`] shows.
const SHOWN: usize = 20;

/// The metric whose change between two readiness samples means a bridge flapped.
pub const RECONNECTS_METRIC: &str = "switchboard_bridge_reconnects_total";

/// The payload of message `seq` of `publisher`: `{"p": publisher, "s": seq}`.
#[must_use]
pub fn payload(publisher: &str, seq: u64) -> Value {
    json!({ "p": publisher, "s": seq })
}

/// The (publisher, seq) of a [`payload`], or `None` for anything else.
#[must_use]
pub fn parse(payload: &Value) -> Option<(String, u64)> {
    let publisher = payload.get("p")?.as_str()?;
    let seq = payload.get("s")?.as_u64()?;
    Some((publisher.to_owned(), seq))
}

/// How a publish was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acked {
    /// Accepted: every socket subscribed at the time must get it.
    Ok,
    /// Refused, with the reason (e.g. the node's "upstream unavailable" error).
    Refused(String),
    /// No answer (timeout, connection lost): it may or may not have gone out.
    Unknown,
}

/// One publish.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Who published (a test's name for a producer).
    pub publisher: String,
    /// The topic.
    pub topic: String,
    /// Its number: grows per (publisher, topic).
    pub seq: u64,
    /// When the request was sent.
    pub sent_at: Instant,
    /// When the answer came (or the publisher gave up waiting).
    pub acked_at: Instant,
    /// The answer.
    pub ack: Acked,
}

/// One message a socket received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Which socket (a test's name for it).
    pub socket: String,
    /// The topic it arrived on.
    pub topic: String,
    /// Its publisher.
    pub publisher: String,
    /// Its number.
    pub seq: u64,
    /// When it arrived.
    pub at: Instant,
}

/// A socket's time on a topic.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The socket.
    pub socket: String,
    /// The topic.
    pub topic: String,
    /// When its join was answered `ok`.
    pub joined_at: Instant,
    /// When it left (or its connection ended); `None` while still joined.
    pub left_at: Option<Instant>,
}

/// A span during which every node was ready and no bridge reconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Its first instant.
    pub start: Instant,
    /// Its last instant.
    pub end: Instant,
}

impl Window {
    /// Whether `[from, to]` lies inside this window.
    #[must_use]
    pub fn contains(&self, from: Instant, to: Instant) -> bool {
        self.start <= from && to <= self.end
    }

    /// How long it lasts.
    #[must_use]
    pub fn duration(&self) -> Duration {
        self.end.saturating_duration_since(self.start)
    }
}

/// One readiness sample: taken between `from` and `to`.
#[derive(Debug, Clone, Copy)]
struct Sample {
    from: Instant,
    to: Instant,
    green: bool,
    reconnects: f64,
}

/// Readiness samples, and the green [`Window`]s they prove.
///
/// Feed it samples in time order: whether every node was ready, and the sum of the nodes'
/// reconnect counters. The time between two consecutive samples is green when both are green
/// and the counter did not change (a change means a bridge went down and came back between
/// them, unseen); a window is a longest run of green samples with one counter value, from
/// the first to the last. A sample taken over a span of time ([`sample_span`]) counts as
/// taken at its end when it opens a window and at its start when it closes one, so a window
/// claims no more than the samples prove.
///
/// [`sample_span`]: Self::sample_span
#[derive(Debug, Clone, Default)]
pub struct GreenWindows {
    samples: Vec<Sample>,
}

impl GreenWindows {
    /// No samples yet (and so no window).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// One window from `start` to `end`: for a test without faults, where the system is
    /// known to be fit throughout.
    #[must_use]
    pub fn between(start: Instant, end: Instant) -> Self {
        let mut windows = Self::new();
        windows.sample(start, true, 0.0);
        windows.sample(end, true, 0.0);
        windows
    }

    /// A sample taken at `at`.
    pub fn sample(&mut self, at: Instant, all_green: bool, reconnects: f64) {
        self.sample_span(at, at, all_green, reconnects);
    }

    /// A sample whose observations were made between `from` and `to`.
    pub fn sample_span(&mut self, from: Instant, to: Instant, all_green: bool, reconnects: f64) {
        self.samples.push(Sample {
            from,
            to,
            green: all_green,
            reconnects,
        });
    }

    /// How many samples were fed.
    #[must_use]
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// How many of them were green.
    #[must_use]
    pub fn green_samples(&self) -> usize {
        self.samples.iter().filter(|s| s.green).count()
    }

    /// The green windows, in time order (windows of zero length are left out).
    #[must_use]
    pub fn windows(&self) -> Vec<Window> {
        let mut windows = Vec::new();
        // The open window: its start, its end so far, and its counter.
        let mut open: Option<(Instant, Instant, f64)> = None;
        let mut close = |open: &mut Option<(Instant, Instant, f64)>| {
            if let Some((start, end, _)) = open.take() {
                if end > start {
                    windows.push(Window { start, end });
                }
            }
        };
        for sample in &self.samples {
            if !sample.green {
                close(&mut open);
                continue;
            }
            match &mut open {
                // Counters are integers, exact in an f64.
                Some((_, end, counter)) if *counter == sample.reconnects => *end = sample.from,
                _ => {
                    close(&mut open);
                    open = Some((sample.to, sample.to, sample.reconnects));
                }
            }
        }
        close(&mut open);
        windows
    }
}

/// Which message reached which socket: the identity of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketMessage {
    /// The socket.
    pub socket: String,
    /// The topic.
    pub topic: String,
    /// The publisher.
    pub publisher: String,
    /// The message's number.
    pub seq: u64,
}

impl fmt::Display for SocketMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {}: {}#{}",
            self.socket, self.topic, self.publisher, self.seq
        )
    }
}

/// A message a socket received more than once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The message and socket.
    pub message: SocketMessage,
    /// How many times it arrived.
    pub times: usize,
}

/// A message a socket received after a later message of the same publisher and topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reordered {
    /// The late message and its socket.
    pub message: SocketMessage,
    /// The highest number delivered before it.
    pub after: u64,
}

/// What [`History::check`] found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Publishes recorded.
    pub publishes: usize,
    /// Of which answered [`Acked::Ok`].
    pub acked_ok: usize,
    /// Of which answered [`Acked::Refused`].
    pub acked_refused: usize,
    /// Of which [`Acked::Unknown`].
    pub acked_unknown: usize,
    /// `Ok` publishes whose interval (sent to answered + grace) lay in a green window.
    pub ok_in_green: usize,
    /// Deliveries recorded.
    pub deliveries: usize,
    /// Deliveries of `Refused` or `Unknown` publishes (allowed, not errors).
    pub delivered_not_ok: usize,
    /// (publish, socket) pairs that had to be delivered.
    pub required: usize,
    /// Of which delivered.
    pub delivered_required: usize,
    /// The green windows.
    pub green_windows: usize,
    /// Their total length.
    pub green_time: Duration,
    /// Required but never delivered.
    pub missing: Vec<SocketMessage>,
    /// Delivered more than once to a socket.
    pub duplicates: Vec<Duplicate>,
    /// Delivered after a higher number of the same publisher and topic.
    pub reordered: Vec<Reordered>,
    /// Delivered but never published (one entry per message and socket).
    pub unexpected: Vec<SocketMessage>,
    /// What the recovering subscribers' check found (empty without them).
    pub recovery: Findings,
}

impl Report {
    /// Whether no error was found.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty()
            && self.duplicates.is_empty()
            && self.reordered.is_empty()
            && self.unexpected.is_empty()
            && self.recovery.is_ok()
    }

    /// Panics with a readable summary (the first entries of each list) unless
    /// [`is_ok`](Self::is_ok).
    ///
    /// # Panics
    /// When a message is missing, duplicated, reordered or unexpected, or the recovering
    /// subscribers' check failed.
    pub fn assert_ok(&self) {
        assert!(self.is_ok(), "the history check failed:\n{self}");
    }
}

/// Writes the first [`SHOWN`] entries of a list, one a line.
fn write_list<T>(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    list: &[T],
    line: impl Fn(&T) -> String,
) -> fmt::Result {
    if list.is_empty() {
        return Ok(());
    }
    writeln!(f, "{name} ({}):", list.len())?;
    for item in list.iter().take(SHOWN) {
        writeln!(f, "  {}", line(item))?;
    }
    if list.len() > SHOWN {
        writeln!(f, "  ... and {} more", list.len() - SHOWN)?;
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "required {}, delivered {}; missing {}, duplicates {}, reordered {}, unexpected {}",
            self.required,
            self.delivered_required,
            self.missing.len(),
            self.duplicates.len(),
            self.reordered.len(),
            self.unexpected.len()
        )?;
        writeln!(
            f,
            "publishes {} (ok {}, of which {} in green windows; refused {}; unknown {}); \
             deliveries {} ({} of refused or unknown publishes); {} green windows, {:.3} s",
            self.publishes,
            self.acked_ok,
            self.ok_in_green,
            self.acked_refused,
            self.acked_unknown,
            self.deliveries,
            self.delivered_not_ok,
            self.green_windows,
            self.green_time.as_secs_f64()
        )?;
        write_list(f, "missing", &self.missing, ToString::to_string)?;
        write_list(f, "duplicates", &self.duplicates, |d| {
            format!("{} ({} times)", d.message, d.times)
        })?;
        write_list(f, "reordered", &self.reordered, |r| {
            format!("{} (after #{})", r.message, r.after)
        })?;
        write_list(f, "unexpected", &self.unexpected, ToString::to_string)?;
        if self.recovery.subscriptions > 0 {
            write!(f, "{}", self.recovery)?;
        }
        Ok(())
    }
}

/// Everything recorded.
#[derive(Debug, Default)]
struct Recorded {
    publishes: Vec<Publish>,
    deliveries: Vec<Delivery>,
    memberships: Vec<Membership>,
    green: Option<GreenWindows>,
    /// The position each publish with history was answered with, by (publisher, topic, seq).
    answered: HashMap<(String, String, u64), String>,
    /// What the recovering subscribers did and saw, in the order each recorded it.
    recovering: Vec<Logged>,
}

/// The record of a test: publishes, deliveries, memberships and readiness. Its methods take
/// `&self`, so the tasks of a test can share one (`Arc<History>`).
#[derive(Debug, Default)]
pub struct History {
    recorded: Mutex<Recorded>,
}

impl History {
    /// An empty history.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn recorded(&self) -> MutexGuard<'_, Recorded> {
        // Plain data: a panic elsewhere while holding the lock leaves nothing half-changed.
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a publish.
    pub fn publish(&self, publish: Publish) {
        self.recorded().publishes.push(publish);
    }

    /// Records a publish from its parts.
    pub fn published(
        &self,
        publisher: &str,
        topic: &str,
        seq: u64,
        sent_at: Instant,
        acked_at: Instant,
        ack: Acked,
    ) {
        self.publish(Publish {
            publisher: publisher.to_owned(),
            topic: topic.to_owned(),
            seq,
            sent_at,
            acked_at,
            ack,
        });
    }

    /// Records that publish `seq` of `publisher` on `topic` was answered with `position` (a
    /// topic with history: `POST /api/publish` names it).
    pub fn answered_at(&self, publisher: &str, topic: &str, seq: u64, position: &str) {
        let _ = self.recorded().answered.insert(
            (publisher.to_owned(), topic.to_owned(), seq),
            position.to_owned(),
        );
    }

    /// Records what recovering subscriber `socket` did or saw on `topic` (in the order it
    /// handled them: see [`crate::recovery`]).
    pub fn recovering(&self, socket: &str, topic: &str, event: Event) {
        self.recorded().recovering.push(Logged {
            socket: socket.to_owned(),
            topic: topic.to_owned(),
            event,
        });
    }

    /// A copy of what the recovering subscribers recorded so far.
    #[must_use]
    pub fn recovering_log(&self) -> Vec<Logged> {
        self.recorded().recovering.clone()
    }

    /// Records that `socket` received message `seq` of `publisher` on `topic` at `at`.
    pub fn delivered(&self, socket: &str, topic: &str, publisher: &str, seq: u64, at: Instant) {
        self.recorded().deliveries.push(Delivery {
            socket: socket.to_owned(),
            topic: topic.to_owned(),
            publisher: publisher.to_owned(),
            seq,
            at,
        });
    }

    /// Records a delivery whose payload follows [`payload`]; returns whether it did (nothing
    /// is recorded for any other payload).
    pub fn delivered_payload(
        &self,
        socket: &str,
        topic: &str,
        message: &Value,
        at: Instant,
    ) -> bool {
        let Some((publisher, seq)) = parse(message) else {
            return false;
        };
        self.delivered(socket, topic, &publisher, seq, at);
        true
    }

    /// Records that `socket`'s join of `topic` was answered `ok` at `at`. A membership of the
    /// same socket and topic still open ends at `at` (a rejoin).
    pub fn joined(&self, socket: &str, topic: &str, at: Instant) {
        let mut recorded = self.recorded();
        let _ = end_membership(&mut recorded.memberships, socket, Some(topic), at);
        recorded.memberships.push(Membership {
            socket: socket.to_owned(),
            topic: topic.to_owned(),
            joined_at: at,
            left_at: None,
        });
    }

    /// Records that `socket` left `topic` at `at`; whether it was joined.
    pub fn left(&self, socket: &str, topic: &str, at: Instant) -> bool {
        end_membership(&mut self.recorded().memberships, socket, Some(topic), at) > 0
    }

    /// Records that `socket` left every topic at `at` (its connection ended); how many it was
    /// joined to.
    pub fn left_all(&self, socket: &str, at: Instant) -> usize {
        end_membership(&mut self.recorded().memberships, socket, None, at)
    }

    /// Sets the readiness record [`check`](Self::check) uses.
    pub fn set_green(&self, green: GreenWindows) {
        self.recorded().green = Some(green);
    }

    /// A copy of the publishes recorded so far.
    #[must_use]
    pub fn publishes(&self) -> Vec<Publish> {
        self.recorded().publishes.clone()
    }

    /// A copy of the deliveries recorded so far.
    #[must_use]
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.recorded().deliveries.clone()
    }

    /// A copy of the memberships recorded so far.
    #[must_use]
    pub fn memberships(&self) -> Vec<Membership> {
        self.recorded().memberships.clone()
    }

    /// Checks the history (see the [module documentation](self)): which deliveries were owed
    /// with `grace` for a publish to arrive after its answer, and which arrived wrongly.
    ///
    /// # Panics
    /// When no readiness was recorded ([`set_green`](Self::set_green)): without it nothing
    /// would be required and every check would pass.
    #[must_use]
    pub fn check(&self, grace: Duration) -> Report {
        let recorded = self.recorded();
        let green = recorded.green.as_ref().unwrap_or_else(|| {
            panic!(
                "History::check needs readiness: call History::set_green with the windows of \
                 a ReadinessSampler (or GreenWindows::between for a test without faults)"
            )
        });
        let windows = green.windows();
        let mut report = Report {
            publishes: recorded.publishes.len(),
            deliveries: recorded.deliveries.len(),
            green_windows: windows.len(),
            green_time: windows.iter().map(Window::duration).sum(),
            ..Report::default()
        };

        let published: HashMap<(&str, &str, u64), &Publish> = recorded
            .publishes
            .iter()
            .map(|p| ((p.publisher.as_str(), p.topic.as_str(), p.seq), p))
            .collect();
        let delivered = check_deliveries(&recorded.deliveries, &published, &mut report);

        let mut memberships: HashMap<&str, Vec<&Membership>> = HashMap::new();
        for membership in &recorded.memberships {
            memberships
                .entry(membership.topic.as_str())
                .or_default()
                .push(membership);
        }
        for publish in &recorded.publishes {
            match publish.ack {
                Acked::Ok => report.acked_ok += 1,
                Acked::Refused(_) => {
                    report.acked_refused += 1;
                    continue;
                }
                Acked::Unknown => {
                    report.acked_unknown += 1;
                    continue;
                }
            }
            let until = publish.acked_at + grace;
            if !windows.iter().any(|w| w.contains(publish.sent_at, until)) {
                continue;
            }
            report.ok_in_green += 1;
            let owed: HashSet<&str> = memberships
                .get(publish.topic.as_str())
                .into_iter()
                .flatten()
                .filter(|m| {
                    publish.sent_at >= m.joined_at
                        && m.left_at.is_none_or(|left| publish.acked_at <= left)
                })
                .map(|m| m.socket.as_str())
                .collect();
            for socket in owed {
                report.required += 1;
                let message = SocketMessage {
                    socket: socket.to_owned(),
                    topic: publish.topic.clone(),
                    publisher: publish.publisher.clone(),
                    seq: publish.seq,
                };
                if delivered.contains(&message) {
                    report.delivered_required += 1;
                } else {
                    report.missing.push(message);
                }
            }
        }
        report.missing.sort();
        report.recovery = recovery::check(
            &recorded.recovering,
            &recorded.publishes,
            &recorded.answered,
        );
        report
    }
}

/// Ends the open memberships of `socket` (on `topic`, or on every topic); how many.
fn end_membership(
    memberships: &mut [Membership],
    socket: &str,
    topic: Option<&str>,
    at: Instant,
) -> usize {
    let mut ended = 0;
    for membership in memberships
        .iter_mut()
        .filter(|m| m.socket == socket && m.left_at.is_none() && topic.is_none_or(|t| m.topic == t))
    {
        membership.left_at = Some(at);
        ended += 1;
    }
    ended
}

/// Finds duplicates, reorderings and unexpected deliveries, and counts deliveries of publishes
/// that were not `Ok`; the set of (socket, message) delivered.
fn check_deliveries(
    deliveries: &[Delivery],
    published: &HashMap<(&str, &str, u64), &Publish>,
    report: &mut Report,
) -> HashSet<SocketMessage> {
    // Per (socket, topic, publisher): the deliveries in arrival order (recording order
    // breaks ties).
    let mut streams: BTreeMap<(&str, &str, &str), Vec<&Delivery>> = BTreeMap::new();
    for delivery in deliveries {
        streams
            .entry((&delivery.socket, &delivery.topic, &delivery.publisher))
            .or_default()
            .push(delivery);
    }
    let mut delivered = HashSet::new();
    for ((socket, topic, publisher), mut stream) in streams {
        stream.sort_by_key(|d| d.at);
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        let mut highest: Option<u64> = None;
        for delivery in stream {
            let message = || SocketMessage {
                socket: socket.to_owned(),
                topic: topic.to_owned(),
                publisher: publisher.to_owned(),
                seq: delivery.seq,
            };
            let count = counts.entry(delivery.seq).or_default();
            *count += 1;
            if *count > 1 {
                // A duplicate, reported once below, not also as a reordering.
                continue;
            }
            match published.get(&(publisher, topic, delivery.seq)) {
                None => report.unexpected.push(message()),
                Some(publish) if publish.ack != Acked::Ok => report.delivered_not_ok += 1,
                Some(_) => {}
            }
            if let Some(after) = highest.filter(|h| *h > delivery.seq) {
                report.reordered.push(Reordered {
                    message: message(),
                    after,
                });
            }
            highest = highest.max(Some(delivery.seq));
            let _ = delivered.insert(message());
        }
        for (seq, times) in counts {
            if times > 1 {
                report.duplicates.push(Duplicate {
                    message: SocketMessage {
                        socket: socket.to_owned(),
                        topic: topic.to_owned(),
                        publisher: publisher.to_owned(),
                        seq,
                    },
                    times,
                });
            }
        }
    }
    delivered
}

/// The default time between two [`ReadinessSampler`] samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// How long one node may take to answer a sample's requests before it counts as not green.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(1);

/// A background task that samples every node's readiness into [`GreenWindows`].
///
/// Each sample asks every node (at once, on a kept-alive connection per node) for
/// `/metrics`, then `/readyz`, then `/metrics` again: the node is green when `/readyz` is
/// `200` and [`RECONNECTS_METRIC`] did not change around it (a missing metric counts as 0);
/// the sample is green when every node is, with the sum of their counters. Any error or a
/// node slower than a second makes the sample not green.
#[derive(Debug)]
pub struct ReadinessSampler {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<GreenWindows>,
}

impl ReadinessSampler {
    /// Starts sampling `nodes` every [`SAMPLE_EVERY`] on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn start(nodes: &[SocketAddr]) -> Self {
        Self::start_every(nodes, SAMPLE_EVERY)
    }

    /// Starts sampling `nodes` every `every`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn start_every(nodes: &[SocketAddr], every: Duration) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(sample_loop(nodes.to_vec(), every, stopped));
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Stops sampling (after the sample in progress): what was recorded.
    ///
    /// # Panics
    /// When the sampling task panicked.
    pub async fn stop(mut self) -> GreenWindows {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .unwrap_or_else(|e| panic!("the readiness sampler failed: {e}"))
    }
}

/// Samples until `stopped` fires.
async fn sample_loop(
    nodes: Vec<SocketAddr>,
    every: Duration,
    mut stopped: oneshot::Receiver<()>,
) -> GreenWindows {
    let mut windows = GreenWindows::new();
    let mut connections: Vec<Option<KeepAlive>> = nodes.iter().map(|_| None).collect();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return windows,
            _ = ticks.tick() => {}
        }
        let from = Instant::now();
        let samples = futures_util::future::join_all(
            nodes
                .iter()
                .zip(connections.iter_mut())
                .map(|(addr, connection)| sample_node(*addr, connection)),
        )
        .await;
        let to = Instant::now();
        let green = samples.iter().all(Option::is_some);
        let reconnects = samples.iter().flatten().sum();
        windows.sample_span(from, to, green, reconnects);
    }
}

/// One node's reconnect counter when it is green (see [`ReadinessSampler`]), else `None`.
pub(crate) async fn sample_node(
    addr: SocketAddr,
    connection: &mut Option<KeepAlive>,
) -> Option<f64> {
    let sample = async {
        let before = reconnects(get(addr, connection, "/metrics").await?)?;
        let ready = get(addr, connection, "/readyz").await?;
        let after = reconnects(get(addr, connection, "/metrics").await?)?;
        // Counters are integers, exact in an f64.
        (ready.status == 200 && before == after).then_some(after)
    };
    let sampled = tokio::time::timeout(SAMPLE_TIMEOUT, sample).await;
    if sampled.is_err() {
        // The connection may hold half a response: start afresh next time.
        *connection = None;
    }
    sampled.ok().flatten()
}

/// `GET path` on the kept-alive connection, opening it (once more, after a failure) as
/// needed.
async fn get(
    addr: SocketAddr,
    connection: &mut Option<KeepAlive>,
    path: &str,
) -> Option<http::HttpResponse> {
    for _ in 0..2 {
        if connection.is_none() {
            *connection = KeepAlive::open(addr).await.ok();
        }
        let open = connection.as_mut()?;
        match open.get(path).await {
            Ok(response) if response.header("connection") == Some("close") => {
                *connection = None;
                return Some(response);
            }
            Ok(response) => return Some(response),
            Err(_) => *connection = None,
        }
    }
    None
}

/// The reconnect counter in a `/metrics` response (0 when absent), or `None` when the
/// response is not metrics.
fn reconnects(response: http::HttpResponse) -> Option<f64> {
    if response.status != 200 {
        return None;
    }
    let metrics = http::parse_metrics(&response.text());
    Some(metrics.get(RECONNECTS_METRIC).copied().unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed origin and offsets in milliseconds, for readable timelines.
    struct Clock(Instant);

    impl Clock {
        fn new() -> Self {
            Self(Instant::now())
        }

        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    const GRACE: Duration = Duration::from_millis(100);

    /// One socket `s` joined on `t` at 0; green from 0 to 10 s with samples every 10 ms.
    fn setup(clock: &Clock) -> History {
        let history = History::new();
        history.joined("s", "t", clock.at(0));
        let mut green = GreenWindows::new();
        for ms in (0..=10_000).step_by(10) {
            green.sample(clock.at(ms), true, 0.0);
        }
        history.set_green(green);
        history
    }

    fn ok(history: &History, clock: &Clock, seq: u64, sent: u64, acked: u64) {
        history.published("p", "t", seq, clock.at(sent), clock.at(acked), Acked::Ok);
    }

    #[test]
    fn payloads_round_trip() {
        assert_eq!(payload("a", 7), json!({"p": "a", "s": 7}));
        assert_eq!(parse(&payload("a", 7)), Some(("a".to_owned(), 7)));
        assert_eq!(parse(&json!({"p": 1, "s": 7})), None);
        assert_eq!(parse(&json!({"body": "hi"})), None);
    }

    #[test]
    fn a_required_delivery_that_never_came_is_missing() {
        let clock = Clock::new();
        let history = setup(&clock);
        ok(&history, &clock, 1, 100, 110);
        ok(&history, &clock, 2, 200, 210);
        history.delivered("s", "t", "p", 1, clock.at(120));
        let report = history.check(GRACE);
        assert_eq!((report.required, report.delivered_required), (2, 1));
        assert_eq!(report.missing.len(), 1);
        assert_eq!(report.missing[0].seq, 2);
        assert!(!report.is_ok());
        let text = report.to_string();
        assert!(text.contains("missing (1):"), "{text}");
        assert!(text.contains("s on t: p#2"), "{text}");
        let failed = std::panic::catch_unwind(|| report.assert_ok());
        assert!(failed.is_err());
    }

    #[test]
    fn a_publish_outside_every_green_window_is_not_required() {
        let clock = Clock::new();
        let history = History::new();
        history.joined("s", "t", clock.at(0));
        let mut green = GreenWindows::new();
        green.sample(clock.at(0), true, 0.0);
        green.sample(clock.at(500), true, 0.0);
        green.sample(clock.at(600), false, 0.0);
        green.sample(clock.at(1_000), true, 0.0);
        green.sample(clock.at(2_000), true, 0.0);
        history.set_green(green);
        // In the first window, not delivered: missing.
        ok(&history, &clock, 1, 100, 110);
        // Answered + grace past the end of the first window (500): not required.
        ok(&history, &clock, 2, 390, 420);
        // In the red gap: not required, and delivering it is fine.
        ok(&history, &clock, 3, 700, 710);
        history.delivered("s", "t", "p", 3, clock.at(1_100));
        // In the second window, delivered.
        ok(&history, &clock, 4, 1_200, 1_210);
        history.delivered("s", "t", "p", 4, clock.at(1_220));
        let report = history.check(GRACE);
        assert_eq!(report.green_windows, 2);
        assert_eq!((report.required, report.delivered_required), (2, 1));
        assert_eq!(report.ok_in_green, 2);
        assert_eq!(
            report.missing.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [1]
        );
        assert!(report.duplicates.is_empty() && report.reordered.is_empty());
    }

    #[test]
    fn a_message_delivered_twice_is_a_duplicate_even_outside_green_windows() {
        let clock = Clock::new();
        let history = History::new();
        history.joined("s", "t", clock.at(0));
        history.set_green(GreenWindows::new());
        history.published("p", "t", 1, clock.at(10), clock.at(20), Acked::Unknown);
        history.delivered("s", "t", "p", 1, clock.at(30));
        history.delivered("s", "t", "p", 1, clock.at(40));
        let report = history.check(GRACE);
        assert_eq!(report.required, 0);
        assert_eq!(report.delivered_not_ok, 1);
        assert_eq!(report.duplicates.len(), 1);
        assert_eq!(report.duplicates[0].times, 2);
        assert!(report.reordered.is_empty(), "{report}");
        assert!(report.to_string().contains("(2 times)"), "{report}");
    }

    #[test]
    fn a_lower_number_after_a_higher_one_is_reordered() {
        let clock = Clock::new();
        let history = setup(&clock);
        for seq in 1..=3 {
            ok(&history, &clock, seq, 100 * seq, 100 * seq + 5);
        }
        history.delivered("s", "t", "p", 1, clock.at(110));
        history.delivered("s", "t", "p", 3, clock.at(310));
        history.delivered("s", "t", "p", 2, clock.at(320));
        // Another publisher's numbers are a separate order.
        history.published("q", "t", 9, clock.at(100), clock.at(105), Acked::Ok);
        history.delivered("s", "t", "q", 9, clock.at(115));
        let report = history.check(GRACE);
        assert!(report.missing.is_empty(), "{report}");
        assert_eq!(report.reordered.len(), 1, "{report}");
        assert_eq!(
            (report.reordered[0].message.seq, report.reordered[0].after),
            (2, 3)
        );
        assert!(report.duplicates.is_empty());
    }

    #[test]
    fn a_delivery_never_published_is_unexpected() {
        let clock = Clock::new();
        let history = setup(&clock);
        history.delivered("s", "t", "ghost", 1, clock.at(10));
        let report = history.check(GRACE);
        assert_eq!(report.unexpected.len(), 1);
        assert_eq!(report.unexpected[0].publisher, "ghost");
    }

    #[test]
    fn a_reconnect_between_samples_ends_the_window() {
        let clock = Clock::new();
        let history = History::new();
        history.joined("s", "t", clock.at(0));
        let mut green = GreenWindows::new();
        for ms in (0..=1_000).step_by(20) {
            // Every sample green, but the counter moved between 500 and 520.
            let reconnects = if ms <= 500 { 3.0 } else { 4.0 };
            green.sample(clock.at(ms), true, reconnects);
        }
        assert_eq!(
            green.windows(),
            [
                Window {
                    start: clock.at(0),
                    end: clock.at(500)
                },
                Window {
                    start: clock.at(520),
                    end: clock.at(1_000)
                }
            ]
        );
        history.set_green(green);
        // Spans the flap: not required.
        ok(&history, &clock, 1, 450, 460);
        // Wholly after it: required.
        ok(&history, &clock, 2, 600, 610);
        history.delivered("s", "t", "p", 2, clock.at(620));
        let report = history.check(GRACE);
        assert_eq!((report.required, report.delivered_required), (1, 1));
        report.assert_ok();
    }

    #[test]
    fn a_sample_span_claims_only_what_it_proves() {
        let clock = Clock::new();
        let mut green = GreenWindows::new();
        green.sample_span(clock.at(0), clock.at(5), true, 0.0);
        green.sample_span(clock.at(20), clock.at(25), true, 0.0);
        green.sample_span(clock.at(40), clock.at(45), true, 0.0);
        green.sample_span(clock.at(60), clock.at(65), false, 0.0);
        assert_eq!(
            green.windows(),
            [Window {
                start: clock.at(5),
                end: clock.at(40)
            }]
        );
        assert_eq!((green.samples(), green.green_samples()), (4, 3));
    }

    #[test]
    fn a_publish_sent_before_the_join_was_answered_is_not_required() {
        let clock = Clock::new();
        let history = setup(&clock);
        history.joined("late", "t", clock.at(150));
        ok(&history, &clock, 1, 100, 200);
        ok(&history, &clock, 2, 300, 310);
        history.delivered("s", "t", "p", 1, clock.at(201));
        history.delivered("s", "t", "p", 2, clock.at(311));
        history.delivered("late", "t", "p", 2, clock.at(311));
        let report = history.check(GRACE);
        // s owes 1 and 2; late owes only 2.
        assert_eq!((report.required, report.delivered_required), (3, 3));
        report.assert_ok();
    }

    #[test]
    fn a_publish_answered_after_the_socket_left_is_not_required() {
        let clock = Clock::new();
        let history = setup(&clock);
        history.joined("gone", "t", clock.at(0));
        assert!(history.left("gone", "t", clock.at(205)));
        assert!(!history.left("gone", "t", clock.at(206)));
        // Answered before the leave: owed to `gone` too.
        ok(&history, &clock, 1, 100, 200);
        // Sent before, answered after: not owed to `gone`.
        ok(&history, &clock, 2, 200, 210);
        for seq in [1, 2] {
            history.delivered("s", "t", "p", seq, clock.at(300));
        }
        let report = history.check(GRACE);
        assert_eq!((report.required, report.delivered_required), (3, 2));
        assert_eq!(report.missing.len(), 1);
        assert_eq!(
            (report.missing[0].socket.as_str(), report.missing[0].seq),
            ("gone", 1)
        );
    }

    /// A stand-in for a node's `/readyz` and `/metrics` (kept-alive connections), with the
    /// readiness and the reconnect counter set by the test.
    struct FakeNode {
        addr: SocketAddr,
        ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
        reconnects: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl FakeNode {
        async fn start() -> Self {
            use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
            use std::sync::Arc;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};

            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let ready = Arc::new(AtomicBool::new(true));
            let reconnects = Arc::new(AtomicU64::new(0));
            let (r, c) = (Arc::clone(&ready), Arc::clone(&reconnects));
            tokio::spawn(async move {
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let (ready, reconnects) = (Arc::clone(&r), Arc::clone(&c));
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0_u8; 1024];
                        loop {
                            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                                match stream.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                                continue;
                            };
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let (status, body) = if head.starts_with("GET /readyz") {
                                if ready.load(Ordering::SeqCst) {
                                    ("200 OK", "{}".to_owned())
                                } else {
                                    ("503 Service Unavailable", "{}".to_owned())
                                }
                            } else {
                                let n = reconnects.load(Ordering::SeqCst);
                                (
                                    "200 OK",
                                    format!("# TYPE x counter\n{RECONNECTS_METRIC} {n}\n"),
                                )
                            };
                            let response = format!(
                                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if stream.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            Self {
                addr,
                ready,
                reconnects,
            }
        }

        fn set_ready(&self, ready: bool) {
            self.ready.store(ready, std::sync::atomic::Ordering::SeqCst);
        }

        fn reconnected(&self) {
            let _ = self
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_sampler_sees_red_spans_and_flaps() {
        let a = FakeNode::start().await;
        let b = FakeNode::start().await;
        let sampler = ReadinessSampler::start(&[a.addr, b.addr]);
        let phase = Duration::from_millis(300);
        tokio::time::sleep(phase).await;
        let red_from = Instant::now();
        b.set_ready(false);
        tokio::time::sleep(phase).await;
        b.set_ready(true);
        let red_to = Instant::now();
        tokio::time::sleep(phase).await;
        // A flap the readiness never shows: only the counter moves.
        let flap = Instant::now();
        a.reconnected();
        tokio::time::sleep(phase).await;
        let green = sampler.stop().await;

        assert!(green.samples() >= 20, "only {} samples", green.samples());
        let windows = green.windows();
        assert_eq!(windows.len(), 3, "{windows:?}");
        assert!(windows[0].end <= red_from, "{windows:?}");
        assert!(windows[1].start >= red_to, "{windows:?}");
        assert!(
            windows[1].end <= flap && flap <= windows[2].start,
            "{windows:?}"
        );
        for window in &windows {
            assert!(
                window.duration() >= Duration::from_millis(100),
                "{windows:?}"
            );
        }
    }

    #[test]
    fn the_recovering_subscribers_check_is_part_of_the_report() {
        let clock = Clock::new();
        let history = History::new();
        history.set_green(GreenWindows::between(clock.at(0), clock.at(1_000)));
        history.recovering(
            "r",
            "h",
            Event::JoinSent {
                since: None,
                at: clock.at(0),
            },
        );
        history.recovering(
            "r",
            "h",
            Event::Joined {
                position: Some("0:e".into()),
                recovered: None,
                at: clock.at(1),
            },
        );
        // Answered ok at 1:e, never delivered: missing, although no membership of the
        // green-window check owes it.
        history.published("p", "h", 1, clock.at(10), clock.at(15), Acked::Ok);
        history.answered_at("p", "h", 1, "1:e");
        let report = history.check(GRACE);
        assert_eq!(report.required, 0);
        assert_eq!(report.recovery.missing, ["r on h: p#1 (1:e)"]);
        assert!(!report.is_ok());
        assert!(
            report.to_string().contains("recovering subscribers"),
            "{report}"
        );
        assert_eq!(history.recovering_log().len(), 2);

        history.recovering(
            "r",
            "h",
            Event::Delivered {
                position: Some("1:e".into()),
                message: Some(("p".into(), 1)),
                at: clock.at(20),
            },
        );
        history.check(GRACE).assert_ok();
    }

    #[test]
    fn left_all_ends_every_topic_and_a_rejoin_ends_the_old_membership() {
        let clock = Clock::new();
        let history = History::new();
        history.joined("s", "a", clock.at(0));
        history.joined("s", "b", clock.at(0));
        history.joined("s", "b", clock.at(10));
        assert_eq!(history.left_all("s", clock.at(20)), 2);
        let ends: Vec<_> = history.memberships().iter().map(|m| m.left_at).collect();
        assert_eq!(
            ends,
            [Some(clock.at(20)), Some(clock.at(10)), Some(clock.at(20))]
        );
        assert!(history.delivered_payload("s", "a", &payload("p", 1), clock.at(5)));
        assert!(!history.delivered_payload("s", "a", &json!({"x": 1}), clock.at(5)));
        assert_eq!(history.deliveries().len(), 1);
    }
}
