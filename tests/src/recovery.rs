//! What a recovering subscriber saw, and the check that it got every acknowledged publication
//! exactly once, in order, across outages, or was told `recovered: false` for exactly the span
//! it lost (docs/history.md).
//!
//! A recovering subscriber ([`crate::recovering`]) records, per topic and in the order it
//! handled them, [`Event`]s: each join it sent (with the `since` it asked to recover from),
//! each answer (the stream's position and `recovered`, or the error), each broadcast (its
//! position and its [`payload`](crate::history::payload) identity) and each end of a
//! membership (a leave's reply, `phx_close`, the socket's end). [`check`] replays them per
//! (socket, topic), next to the publishes and the positions their answers named.
//!
//! # The subscriber's rule, which the check replays
//!
//! A broadcast is *taken* (extends the subscriber's stream) only when its position is exactly
//! one past the last taken, in the same epoch. Anything else — a hole, an older or repeated
//! position, another epoch — leaves the stream where it was and makes the subscriber rejoin
//! with `since` = the last position taken; so do broadcasts that arrive while a join is in
//! flight (they belong to the membership being replaced: the recovery sends them again). The
//! check keeps the same cursor and reports a `since` that differs from it as a harness error,
//! so a subscriber cannot skip a hole by asking from too far on.
//!
//! # Tails
//!
//! A join's reply names the position of the last publication it hands the socket (the
//! node's `Recovery::position`): publications that reached the node live while the join read
//! the history follow the reply even after a first join or a `recovered: false`, and the
//! reply's position is the last of them. So after such a reply at `R` a *tail* may come:
//! positions at or below `R`, contiguous, ending exactly at `R`, before anything newer (and,
//! after `recovered: false` in the same epoch, above `since`). The subscriber's cursor is `R`
//! from the reply on; tail broadcasts are counted and checked for their shape, not taken.
//! (A client that takes `R` as its cursor at the reply, as `clients/js/recover.mjs` does,
//! skips a tail its socket lost before it arrived: nothing here can see that.)
//!
//! # What the check proves
//!
//! - **Nothing missing, across outages.** A (socket, topic) *covers* every position after its
//!   first join's answer, in that epoch, through every `recovered: true` rejoin; a
//!   `recovered: false` answer to `since: L` with position `R` excuses exactly the positions
//!   after `L` in `L`'s epoch and up to `R` in `R`'s (when `L` and `R` share an epoch: those
//!   between them), and coverage goes on after `R`. Every publish answered ok whose position
//!   is covered must have been taken. A publish whose position nobody learned (a socket push
//!   delivered nowhere) is owed when it was sent after the first join was answered and its
//!   span (sent to answered) does not overlap the time an excused span can have been
//!   published in (from the publication of `L` to the answer naming `R`).
//! - **No duplicate.** A position at or below where a segment starts (`since` of a
//!   `recovered: true` rejoin, the position of a first join), or repeated within a segment,
//!   is a duplicate; so is one message taken at two positions.
//! - **Order.** Within a segment positions only go up; a publisher's publish answered ok
//!   before its next was sent must get the lower position.
//! - **Honest answers.** `recovered: true` must keep the epoch and deliver `since`+1 up to the
//!   answer's position, contiguously, before anything else; a join with `since` must be
//!   answered with `recovered`; after `recovered: false` nothing of the excused span may
//!   arrive (all or nothing); every broadcast of a topic with history carries a position;
//!   nothing arrives for a membership that ended; a publish's answered position is the one
//!   it is delivered at.
//!
//! Holes in a live stream are not errors by themselves: a node whose backend link was down
//! lost those publications and the subscriber's rejoin must recover them (the green-window
//! check of [`History`](crate::History) judges live delivery). They are counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Instant;

use crate::history::{Acked, Publish};

/// How many entries of each list a [`Findings`] display shows.
const SHOWN: usize = 20;

/// A stream position, `"<offset>:<epoch>"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// Counts up from 1 within an epoch (0: an empty stream).
    pub offset: u64,
    /// Names the stream; changes when the backend lost it.
    pub epoch: String,
}

impl Position {
    /// Parses `"<offset>:<epoch>"` (digits, a colon, a non-empty alphanumeric epoch).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let (offset, epoch) = text.split_once(':')?;
        let valid_offset = !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_digit());
        let valid_epoch = !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
        if !(valid_offset && valid_epoch) {
            return None;
        }
        Some(Self {
            offset: offset.parse().ok()?,
            epoch: epoch.to_owned(),
        })
    }

    /// The position right after this one in its epoch.
    #[must_use]
    pub fn next(&self) -> Self {
        Self {
            offset: self.offset + 1,
            epoch: self.epoch.clone(),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.offset, self.epoch)
    }
}

/// What a recovering subscriber did or saw on one topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// It sent a join, asking to recover after `since` (`None`: a first join).
    JoinSent {
        /// The position it asked to recover from, as sent.
        since: Option<String>,
        /// When it was sent.
        at: Instant,
    },
    /// The join was answered `ok`.
    Joined {
        /// The answer's `position` (`None` when it had none).
        position: Option<String>,
        /// The answer's `recovered`.
        recovered: Option<bool>,
        /// When the answer arrived.
        at: Instant,
    },
    /// The join was answered with an error (the subscriber is not a member).
    Refused {
        /// The error's reason.
        reason: String,
        /// When the answer arrived.
        at: Instant,
    },
    /// A broadcast of the topic arrived.
    Delivered {
        /// Its ref slot: the position (`None` when it had none).
        position: Option<String>,
        /// Its publisher and number, when the payload is a [`payload`](crate::history::payload).
        message: Option<(String, u64)>,
        /// When it arrived.
        at: Instant,
    },
    /// The membership ended: the leave was answered, `phx_close` or `phx_error` arrived, or
    /// the socket ended.
    Left {
        /// When.
        at: Instant,
    },
}

/// An [`Event`] of one socket on one topic.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The socket (a test's name for it).
    pub socket: String,
    /// The topic.
    pub topic: String,
    /// What happened.
    pub event: Event,
}

/// What [`check`] found for the recovering subscribers.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// (socket, topic) pairs recorded.
    pub subscriptions: usize,
    /// Joins answered ok, first joins included.
    pub joins: usize,
    /// Of which rejoins (with `since`).
    pub rejoins: usize,
    /// Rejoins answered `recovered: true`.
    pub recovered: usize,
    /// Rejoins answered `recovered: false` (or without `recovered`).
    pub not_recovered: usize,
    /// Of which with a position of another epoch than `since`'s.
    pub not_recovered_new_epoch: usize,
    /// Joins answered with an error (the subscriber tried again).
    pub refused: usize,
    /// Holes and epoch changes the live stream showed (each made the subscriber rejoin).
    pub holes: usize,
    /// Broadcasts taken (extending a stream).
    pub taken: usize,
    /// Broadcasts not taken (after a hole, or while a rejoin was in flight; sent again).
    pub superseded: usize,
    /// Broadcasts of a tail (see the [module documentation](self)).
    pub tails: usize,
    /// (publish, socket) pairs owed.
    pub owed: usize,
    /// Of which taken.
    pub delivered_owed: usize,
    /// Owed but never taken.
    pub missing: Vec<String>,
    /// Delivered again: at or below a segment's start, repeated in a segment, or one message
    /// at two positions of one stream.
    pub duplicates: Vec<String>,
    /// Positions going down within a segment; a publisher's order broken by the positions.
    pub reordered: Vec<String>,
    /// Delivered although inside a span answered `recovered: false` (all or nothing).
    pub unrecovered: Vec<String>,
    /// Delivered when the socket was not a member of the topic.
    pub after_leave: Vec<String>,
    /// Answers the stream contradicts: `recovered: true` across an epoch change or with a
    /// hole up to its position, a tail with a hole or one that stops short of the reply's
    /// position, a join with `since` answered without `recovered`, a join or broadcast
    /// without a position.
    pub broken_promises: Vec<String>,
    /// A publish delivered at another position than its answer named, or at two.
    pub mislabelled: Vec<String>,
    /// The subscriber's own mistakes (a `since` that is not the last position it took).
    pub harness: Vec<String>,
    /// For the first (socket, topic) pairs with an error: their events around the first one,
    /// for a report.
    pub traces: Vec<String>,
}

/// How many failing (socket, topic) pairs get a trace, and how many events before and after
/// the first error it shows.
const TRACED: usize = 3;
const TRACE_BEFORE: usize = 25;
const TRACE_AFTER: usize = 10;

impl Findings {
    /// How many errors were found.
    fn error_count(&self) -> usize {
        self.errors().iter().map(|(_, list)| list.len()).sum()
    }

    /// Whether no error was found.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.errors().iter().all(|(_, list)| list.is_empty())
    }

    /// The error lists, named.
    fn errors(&self) -> [(&'static str, &Vec<String>); 8] {
        [
            ("missing", &self.missing),
            ("duplicates", &self.duplicates),
            ("reordered", &self.reordered),
            (
                "delivered inside a span answered recovered:false",
                &self.unrecovered,
            ),
            ("delivered after the membership ended", &self.after_leave),
            ("broken promises", &self.broken_promises),
            ("mislabelled", &self.mislabelled),
            ("harness errors", &self.harness),
        ]
    }
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "recovering subscribers: {} subscriptions, {} joins ({} rejoins: {} recovered, {} \
             not recovered ({} with a new epoch), {} refused and retried), {} holes seen, {} \
             broadcasts taken, {} superseded, {} in tails; owed {}, delivered {}",
            self.subscriptions,
            self.joins,
            self.rejoins,
            self.recovered,
            self.not_recovered,
            self.not_recovered_new_epoch,
            self.refused,
            self.holes,
            self.taken,
            self.superseded,
            self.tails,
            self.owed,
            self.delivered_owed
        )?;
        for (name, list) in self.errors() {
            if list.is_empty() {
                continue;
            }
            writeln!(f, "{name} ({}):", list.len())?;
            for item in list.iter().take(SHOWN) {
                writeln!(f, "  {item}")?;
            }
            if list.len() > SHOWN {
                writeln!(f, "  ... and {} more", list.len() - SHOWN)?;
            }
        }
        for trace in &self.traces {
            writeln!(f, "{trace}")?;
        }
        Ok(())
    }
}

/// A publication's identity: (publisher, topic, seq).
type MessageKey<'a> = (&'a str, &'a str, u64);

/// Checks the recovering subscribers' `log` against the `publishes` and the positions their
/// answers named (`answered`, by (publisher, topic, seq)). See the [module documentation](self).
#[must_use]
pub fn check(
    log: &[Logged],
    publishes: &[Publish],
    answered: &HashMap<(String, String, u64), String>,
) -> Findings {
    let mut findings = Findings::default();
    if log.is_empty() {
        return findings;
    }
    let published: HashMap<MessageKey<'_>, &Publish> = publishes
        .iter()
        .map(|p| ((p.publisher.as_str(), p.topic.as_str(), p.seq), p))
        .collect();
    let positions = known_positions(log, answered, &mut findings);
    check_publisher_order(publishes, &positions, &mut findings);

    let mut streams: BTreeMap<(&str, &str), Vec<&Event>> = BTreeMap::new();
    for logged in log {
        streams
            .entry((logged.socket.as_str(), logged.topic.as_str()))
            .or_default()
            .push(&logged.event);
    }
    findings.subscriptions = streams.len();
    let origin = log
        .iter()
        .map(|l| event_time(&l.event))
        .min()
        .unwrap_or_else(Instant::now);
    for ((socket, topic), events) in streams {
        let mut stream = Stream::new(socket, topic, &published);
        let mut first_error = None;
        for (i, event) in events.iter().enumerate() {
            let before = findings.error_count();
            stream.handle(event, &mut findings);
            if first_error.is_none() && findings.error_count() > before {
                first_error = Some(i);
            }
        }
        let before = findings.error_count();
        stream.owed(publishes, &positions, &mut findings);
        if first_error.is_none() && findings.error_count() > before {
            first_error = Some(events.len().saturating_sub(1));
        }
        if let Some(at) = first_error.filter(|_| findings.traces.len() < TRACED) {
            let from = at.saturating_sub(TRACE_BEFORE);
            let to = (at + TRACE_AFTER + 1).min(events.len());
            let mut trace = format!(
                "{socket} on {topic}, events {from}..{to} of {} (ms since the first event; \
                 the first error at {at}):",
                events.len()
            );
            for (i, event) in events.iter().enumerate().take(to).skip(from) {
                let line = show(event, topic, &published, origin);
                trace.push_str(&format!("\n    {i:>4} {line}"));
            }
            findings.traces.push(trace);
        }
    }
    findings
}

/// When `event` happened.
fn event_time(event: &Event) -> Instant {
    match event {
        Event::JoinSent { at, .. }
        | Event::Joined { at, .. }
        | Event::Refused { at, .. }
        | Event::Delivered { at, .. }
        | Event::Left { at } => *at,
    }
}

/// One line of a trace: the time, what happened, and for a broadcast when its publish was sent
/// and answered.
fn show(
    event: &Event,
    topic: &str,
    published: &HashMap<MessageKey<'_>, &Publish>,
    origin: Instant,
) -> String {
    let since = |at: Instant| at.saturating_duration_since(origin).as_secs_f64() * 1000.0;
    let ms = since(event_time(event));
    let what = match event {
        Event::JoinSent { since, .. } => format!("join sent, since {since:?}"),
        Event::Joined {
            position,
            recovered,
            ..
        } => format!("joined: position {position:?}, recovered {recovered:?}"),
        Event::Refused { reason, .. } => format!("refused: {reason}"),
        Event::Delivered {
            position, message, ..
        } => match message {
            Some((publisher, seq)) => {
                let publish = published
                    .get(&(publisher.as_str(), topic, *seq))
                    .map_or_else(
                        || "never published".to_owned(),
                        |p| {
                            format!(
                                "sent at {:.1}, answered at {:.1} {:?}",
                                since(p.sent_at),
                                since(p.acked_at),
                                p.ack
                            )
                        },
                    );
                format!("broadcast {position:?} {publisher}#{seq} ({publish})")
            }
            None => format!("broadcast {position:?}"),
        },
        Event::Left { .. } => "membership ended".to_owned(),
    };
    format!("{ms:>9.1} {what}")
}

/// Every publication's position: as its answer named it, else as it was delivered. A
/// delivery at another position than the answer's, or one message at two positions, is
/// reported.
fn known_positions<'a>(
    log: &'a [Logged],
    answered: &'a HashMap<(String, String, u64), String>,
    findings: &mut Findings,
) -> HashMap<MessageKey<'a>, Position> {
    let mut positions: HashMap<MessageKey<'a>, Position> = HashMap::new();
    let mut from_answer: HashMap<MessageKey<'a>, bool> = HashMap::new();
    for ((publisher, topic, seq), position) in answered {
        if let Some(position) = Position::parse(position) {
            let key = (publisher.as_str(), topic.as_str(), *seq);
            let _ = positions.insert(key, position);
            let _ = from_answer.insert(key, true);
        }
    }
    let mut reported: HashSet<MessageKey<'a>> = HashSet::new();
    for logged in log {
        let Event::Delivered {
            position: Some(position),
            message: Some((publisher, seq)),
            ..
        } = &logged.event
        else {
            continue;
        };
        let Some(position) = Position::parse(position) else {
            continue;
        };
        let key = (publisher.as_str(), logged.topic.as_str(), *seq);
        match positions.get(&key) {
            None => {
                let _ = positions.insert(key, position);
            }
            Some(known) if *known == position => {}
            Some(known) => {
                if reported.insert(key) {
                    let how = if from_answer.contains_key(&key) {
                        "answered"
                    } else {
                        "delivered elsewhere"
                    };
                    findings.mislabelled.push(format!(
                        "{} on {}: {publisher}#{seq} {how} at {known}, delivered at {position}",
                        logged.socket, logged.topic
                    ));
                }
            }
        }
    }
    positions
}

/// A publisher's publish answered ok must get a lower position than its next (sent after
/// that answer), in one epoch.
fn check_publisher_order(
    publishes: &[Publish],
    positions: &HashMap<MessageKey<'_>, Position>,
    findings: &mut Findings,
) {
    let mut by_publisher: BTreeMap<(&str, &str), Vec<&Publish>> = BTreeMap::new();
    for publish in publishes {
        by_publisher
            .entry((publish.publisher.as_str(), publish.topic.as_str()))
            .or_default()
            .push(publish);
    }
    for ((publisher, topic), mut list) in by_publisher {
        list.sort_by_key(|p| p.seq);
        let mut last_ok: Option<(&Publish, &Position)> = None;
        for publish in list {
            let Some(position) = positions.get(&(publisher, topic, publish.seq)) else {
                continue;
            };
            if let Some((earlier, at)) = last_ok {
                let answered_before = earlier.acked_at <= publish.sent_at;
                if answered_before && at.epoch == position.epoch && at.offset >= position.offset {
                    findings.reordered.push(format!(
                        "{publisher} on {topic}: #{} (answered ok first) at {at}, #{} at {position}",
                        earlier.seq, publish.seq
                    ));
                }
            }
            if publish.ack == Acked::Ok {
                last_ok = Some((publish, position));
            }
        }
    }
}

/// A span of positions a (socket, topic) covers: after `from`, through `to` (open: to the
/// end), in `epoch`.
#[derive(Debug)]
struct Piece {
    epoch: String,
    from: u64,
    to: Option<u64>,
}

impl Piece {
    fn covers(&self, position: &Position) -> bool {
        self.epoch == position.epoch
            && position.offset > self.from
            && self.to.is_none_or(|to| position.offset <= to)
    }
}

/// A span answered `recovered: false`: after `since` up to `reply`, published between `from`
/// (`None`: any time before) and `to`.
#[derive(Debug)]
struct Excuse {
    since: Position,
    reply: Position,
    from: Option<Instant>,
    to: Instant,
}

/// Whether `position` lies in the span a `recovered: false` answer at `reply` to `since`
/// excuses: after `since` in its epoch, and up to `reply` in its own (between the two when
/// they share an epoch).
fn in_span(since: &Position, reply: &Position, position: &Position) -> bool {
    if since.epoch == reply.epoch {
        return position.epoch == since.epoch
            && since.offset < position.offset
            && position.offset <= reply.offset;
    }
    (position.epoch == since.epoch && position.offset > since.offset)
        || (position.epoch == reply.epoch && position.offset <= reply.offset)
}

impl Excuse {
    fn covers(&self, position: &Position) -> bool {
        in_span(&self.since, &self.reply, position)
    }

    /// Whether a publication sent at `sent` and answered at `acked` may lie in the span.
    fn overlaps(&self, sent: Instant, acked: Instant) -> bool {
        self.from.is_none_or(|from| acked >= from) && sent <= self.to
    }
}

/// One membership's delivery rules.
#[derive(Debug)]
struct Segment {
    /// Everything after it is owed; at or below it (in its epoch) is a duplicate.
    start: Position,
    /// `recovered: true` promised everything through this, contiguously.
    promised: Option<Position>,
    /// `recovered: false` to `since` (first) with the position (second): nothing of the span
    /// may arrive.
    unrecovered: Option<(Position, Position)>,
    /// The last position delivered in the segment, and the epochs seen in it.
    last: Option<Position>,
    epochs: Vec<String>,
    /// A broadcast was not the next one: nothing more is taken until a rejoin.
    broken: bool,
    /// The tail that may follow the reply (first joins, `recovered: false`).
    tail: Option<Tail>,
}

impl Segment {
    fn new(start: Position) -> Self {
        Self {
            start,
            promised: None,
            unrecovered: None,
            last: None,
            epochs: Vec::new(),
            broken: false,
            tail: None,
        }
    }
}

/// What may still follow a reply at `until` (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The reply's position: the tail ends there.
    pub until: Position,
    /// The tail's last broadcast so far.
    pub last: Option<Position>,
    /// After `recovered: false` in the same epoch: the `since`, which the tail stays above.
    pub above: Option<Position>,
}

/// Where a broadcast stands with a [`Tail`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailStep {
    /// Not at or below the tail's end: the tail is over (`stopped_at`: it ended short of the
    /// reply's position, at this).
    Past {
        /// The tail's last broadcast, when the tail stopped before the reply's position.
        stopped_at: Option<Position>,
    },
    /// The tail's next broadcast (`done`: its last).
    Next {
        /// Whether it was the tail's last.
        done: bool,
    },
    /// At or below what the tail (or the span before it) already had.
    Repeated,
    /// Above the tail's next: a hole in it.
    Hole,
}

impl Tail {
    /// The tail after a reply at `reply` to a join with `since` (none after `recovered: true`).
    #[must_use]
    pub fn after(since: Option<&Position>, reply: &Position) -> Self {
        Self {
            until: reply.clone(),
            last: None,
            above: since.filter(|s| s.epoch == reply.epoch).cloned(),
        }
    }

    /// Where `position` stands, and the tail moved on by it.
    pub fn step(&mut self, position: &Position) -> TailStep {
        let inside = position.epoch == self.until.epoch && position.offset <= self.until.offset;
        if !inside {
            return TailStep::Past {
                stopped_at: self.last.clone(),
            };
        }
        let floor = self.last.as_ref().or(self.above.as_ref());
        if floor.is_some_and(|f| position.offset <= f.offset) {
            return TailStep::Repeated;
        }
        if self
            .last
            .as_ref()
            .is_some_and(|l| position.offset != l.offset + 1)
        {
            return TailStep::Hole;
        }
        self.last = Some(position.clone());
        TailStep::Next {
            done: *position == self.until,
        }
    }
}

/// One (socket, topic), replayed.
struct Stream<'a> {
    who: String,
    topic: &'a str,
    published: &'a HashMap<MessageKey<'a>, &'a Publish>,
    pieces: Vec<Piece>,
    excuses: Vec<Excuse>,
    first_answer: Option<Instant>,
    /// Messages taken, at their position.
    taken: HashMap<(&'a str, u64), Position>,
    /// The last position taken, and when its publication can have been published at the
    /// earliest (`None`: unknown).
    cursor: Option<Position>,
    cursor_from: Option<Instant>,
    /// A join in flight: its `since`, and when it was sent.
    pending: Option<(Option<Position>, Instant)>,
    segment: Option<Segment>,
}

impl<'a> Stream<'a> {
    fn new(
        socket: &str,
        topic: &'a str,
        published: &'a HashMap<MessageKey<'a>, &'a Publish>,
    ) -> Self {
        Self {
            who: format!("{socket} on {topic}"),
            topic,
            published,
            pieces: Vec::new(),
            excuses: Vec::new(),
            first_answer: None,
            taken: HashMap::new(),
            cursor: None,
            cursor_from: None,
            pending: None,
            segment: None,
        }
    }

    fn handle(&mut self, event: &'a Event, findings: &mut Findings) {
        match event {
            Event::JoinSent { since, at } => self.join_sent(since.as_deref(), *at, findings),
            Event::Joined {
                position,
                recovered,
                at,
            } => self.joined(position.as_deref(), *recovered, *at, findings),
            Event::Refused { .. } => {
                findings.refused += 1;
                self.pending = None;
                self.segment = None;
            }
            Event::Left { .. } => self.segment = None,
            Event::Delivered {
                position, message, ..
            } => self.delivered(position.as_deref(), message.as_ref(), findings),
        }
    }

    fn join_sent(&mut self, since: Option<&str>, at: Instant, findings: &mut Findings) {
        let who = &self.who;
        let since = match since {
            None => {
                if let Some(cursor) = &self.cursor {
                    findings.harness.push(format!(
                        "{who}: rejoined without since after taking {cursor}"
                    ));
                }
                None
            }
            Some(text) => {
                let parsed = Position::parse(text);
                let mistake = match (&parsed, &self.cursor) {
                    (None, _) => Some(format!("asked since {text:?}, not a position")),
                    (Some(since), Some(cursor)) if since != cursor => Some(format!(
                        "asked since {since}, but the last position it took is {cursor}"
                    )),
                    (Some(since), None) => Some(format!("asked since {since} before any join")),
                    _ => None,
                };
                if let Some(mistake) = mistake {
                    findings.harness.push(format!("{who}: {mistake}"));
                }
                parsed
            }
        };
        self.pending = Some((since, at));
    }

    fn joined(
        &mut self,
        position: Option<&str>,
        recovered: Option<bool>,
        at: Instant,
        findings: &mut Findings,
    ) {
        let who = self.who.clone();
        let Some((since, sent)) = self.pending.take() else {
            findings
                .harness
                .push(format!("{who}: a join answered that it never sent"));
            return;
        };
        let Some(reply) = position.and_then(Position::parse) else {
            findings.broken_promises.push(format!(
                "{who}: a join answered ok with position {position:?}"
            ));
            self.segment = None;
            return;
        };
        findings.joins += 1;
        let Some(since) = since else {
            if recovered.is_some() {
                findings.broken_promises.push(format!(
                    "{who}: a join without since answered recovered: {recovered:?}"
                ));
            }
            self.pieces.push(Piece {
                epoch: reply.epoch.clone(),
                from: reply.offset,
                to: None,
            });
            self.first_answer = self.first_answer.or(Some(at));
            self.cursor = Some(reply.clone());
            self.cursor_from = Some(sent);
            let mut segment = Segment::new(reply.clone());
            segment.tail = Some(Tail::after(None, &reply));
            self.segment = Some(segment);
            return;
        };
        findings.rejoins += 1;
        let honest_true = match recovered {
            Some(true) if reply.epoch != since.epoch => {
                findings.broken_promises.push(format!(
                    "{who}: since {since} answered recovered: true at {reply}, another epoch"
                ));
                false
            }
            Some(true) if reply.offset < since.offset => {
                findings.broken_promises.push(format!(
                    "{who}: since {since} answered recovered: true at {reply}, behind it"
                ));
                false
            }
            Some(true) => true,
            Some(false) => false,
            None => {
                findings.broken_promises.push(format!(
                    "{who}: since {since} answered without recovered (position {reply})"
                ));
                false
            }
        };
        if honest_true {
            findings.recovered += 1;
            let mut segment = Segment::new(since);
            segment.promised = Some(reply);
            self.segment = Some(segment);
            return;
        }
        findings.not_recovered += 1;
        if reply.epoch != since.epoch {
            findings.not_recovered_new_epoch += 1;
        }
        if let Some(piece) = self.pieces.last_mut() {
            if piece.to.is_none() && piece.epoch == since.epoch {
                piece.to = Some(since.offset.max(piece.from));
            }
        }
        self.excuses.push(Excuse {
            since: since.clone(),
            reply: reply.clone(),
            from: self.cursor_from,
            to: at,
        });
        self.pieces.push(Piece {
            epoch: reply.epoch.clone(),
            from: reply.offset,
            to: None,
        });
        self.cursor = Some(reply.clone());
        self.cursor_from = Some(sent);
        let mut segment = Segment::new(reply.clone());
        segment.tail = Some(Tail::after(Some(&since), &reply));
        segment.unrecovered = Some((since, reply));
        self.segment = Some(segment);
    }

    fn delivered(
        &mut self,
        position: Option<&str>,
        message: Option<&'a (String, u64)>,
        findings: &mut Findings,
    ) {
        let what = match message {
            Some((publisher, seq)) => format!("{publisher}#{seq}"),
            None => "a broadcast".to_owned(),
        };
        let who = &self.who;
        let Some(segment) = self.segment.as_mut() else {
            findings.after_leave.push(format!(
                "{who}: {what} at {position:?} arrived while not a member"
            ));
            return;
        };
        let Some(position) = position.and_then(Position::parse) else {
            findings.broken_promises.push(format!(
                "{who}: {what} arrived with ref {position:?}, not a position"
            ));
            segment.broken = true;
            return;
        };
        if let Some(tail) = segment.tail.as_mut() {
            let until = tail.until.clone();
            match tail.step(&position) {
                TailStep::Past { stopped_at } => {
                    if let Some(stopped_at) = stopped_at {
                        findings.broken_promises.push(format!(
                            "{who}: the reply named {until}, but what followed it stopped at \
                             {stopped_at} before {what} at {position}"
                        ));
                    }
                    segment.tail = None;
                }
                TailStep::Next { done } => {
                    findings.tails += 1;
                    if done {
                        segment.tail = None;
                    }
                    if !segment.epochs.contains(&position.epoch) {
                        segment.epochs.push(position.epoch.clone());
                    }
                    segment.last = Some(position.clone());
                    if let Some((publisher, seq)) = message {
                        if let Some(earlier) = self
                            .taken
                            .insert((publisher.as_str(), *seq), position.clone())
                        {
                            findings.duplicates.push(format!(
                                "{who}: {what} taken at {earlier} and again at {position}"
                            ));
                        }
                    }
                    return;
                }
                TailStep::Repeated => {
                    findings.duplicates.push(format!(
                        "{who}: {what} at {position} after the reply at {until}, at or below \
                         what came before it"
                    ));
                    segment.broken = true;
                    return;
                }
                TailStep::Hole => {
                    findings.broken_promises.push(format!(
                        "{who}: the reply named {until}, but what followed it skipped to {what} \
                         at {position}"
                    ));
                    segment.broken = true;
                    return;
                }
            }
        }
        if let Some(error) = wrong_place(segment, &position) {
            let (list, why) = match error {
                Wrong::Duplicate(why) => (&mut findings.duplicates, why),
                Wrong::Reordered(why) => (&mut findings.reordered, why),
                Wrong::Unrecovered(why) => (&mut findings.unrecovered, why),
            };
            list.push(format!("{who}: {what} at {position} {why}"));
            segment.broken = true;
            return;
        }
        if !segment.epochs.contains(&position.epoch) {
            segment.epochs.push(position.epoch.clone());
        }
        segment.last = Some(position.clone());
        if self.pending.is_some() || segment.broken {
            findings.superseded += 1;
            return;
        }
        let Some(cursor) = &self.cursor else {
            // A member always has a cursor (its join's answer).
            findings.superseded += 1;
            return;
        };
        if position != cursor.next() {
            match &segment.promised {
                Some(promised)
                    if cursor.epoch == promised.epoch && cursor.offset < promised.offset =>
                {
                    findings.broken_promises.push(format!(
                        "{who}: recovered: true through {promised}, but after {cursor} came \
                         {what} at {position}"
                    ));
                }
                _ => findings.holes += 1,
            }
            segment.broken = true;
            findings.superseded += 1;
            return;
        }
        findings.taken += 1;
        self.cursor_from = None;
        if let Some((publisher, seq)) = message {
            self.cursor_from = self
                .published
                .get(&(publisher.as_str(), self.topic, *seq))
                .map(|p| p.sent_at);
            if let Some(earlier) = self
                .taken
                .insert((publisher.as_str(), *seq), position.clone())
            {
                findings.duplicates.push(format!(
                    "{who}: {what} taken at {earlier} and again at {position}"
                ));
            }
        }
        self.cursor = Some(position);
    }

    /// Which publishes answered ok this (socket, topic) owed, and whether it took them.
    fn owed(
        &self,
        publishes: &[Publish],
        positions: &HashMap<MessageKey<'_>, Position>,
        findings: &mut Findings,
    ) {
        let Some(first_answer) = self.first_answer else {
            return;
        };
        for publish in publishes
            .iter()
            .filter(|p| p.topic == self.topic && p.ack == Acked::Ok)
        {
            let key = (publish.publisher.as_str(), self.topic, publish.seq);
            let position = positions.get(&key);
            let by_position =
                position.filter(|p| self.pieces.iter().any(|piece| piece.epoch == p.epoch));
            let owed = match by_position {
                Some(position) => {
                    self.pieces.iter().any(|piece| piece.covers(position))
                        && !self.excuses.iter().any(|e| e.covers(position))
                }
                None => {
                    publish.sent_at > first_answer
                        && !self
                            .excuses
                            .iter()
                            .any(|e| e.overlaps(publish.sent_at, publish.acked_at))
                }
            };
            if !owed {
                continue;
            }
            findings.owed += 1;
            if self
                .taken
                .contains_key(&(publish.publisher.as_str(), publish.seq))
            {
                findings.delivered_owed += 1;
            } else {
                let at =
                    position.map_or_else(|| "no known position".to_owned(), ToString::to_string);
                findings.missing.push(format!(
                    "{}: {}#{} ({at})",
                    self.who, publish.publisher, publish.seq
                ));
            }
        }
    }
}

/// Why a broadcast cannot come where it did.
enum Wrong {
    Duplicate(String),
    Reordered(String),
    Unrecovered(String),
}

/// Whether `position` breaks `segment`'s rules (see [`Segment`]).
fn wrong_place(segment: &Segment, position: &Position) -> Option<Wrong> {
    if let Some((since, reply)) = &segment.unrecovered {
        if position.epoch == since.epoch && position.offset <= since.offset {
            return Some(Wrong::Duplicate(format!(
                "after a rejoin since {since}, at or below it"
            )));
        }
        if in_span(since, reply, position) {
            return Some(Wrong::Unrecovered(format!(
                "after since {since} was answered recovered: false at {reply}"
            )));
        }
    } else if position.epoch == segment.start.epoch && position.offset <= segment.start.offset {
        return Some(Wrong::Duplicate(format!(
            "in a membership that starts after {}",
            segment.start
        )));
    }
    let last = segment.last.as_ref()?;
    if position.epoch == last.epoch {
        return match position.offset.cmp(&last.offset) {
            std::cmp::Ordering::Greater => None,
            std::cmp::Ordering::Equal => {
                Some(Wrong::Duplicate("twice in one membership".to_owned()))
            }
            std::cmp::Ordering::Less => Some(Wrong::Reordered(format!("after {last}"))),
        };
    }
    segment
        .epochs
        .contains(&position.epoch)
        .then(|| Wrong::Reordered(format!("after {last}, of an epoch left behind")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A fixed origin and offsets in milliseconds.
    struct Clock(Instant);

    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    /// A script of one socket `s` on topic `t`, the publishes of `p`, and their answers.
    struct Script {
        clock: Clock,
        log: Vec<Logged>,
        publishes: Vec<Publish>,
        answered: HashMap<(String, String, u64), String>,
    }

    impl Script {
        fn new() -> Self {
            Self {
                clock: Clock(Instant::now()),
                log: Vec::new(),
                publishes: Vec::new(),
                answered: HashMap::new(),
            }
        }

        fn event(&mut self, event: Event) {
            self.log.push(Logged {
                socket: "s".into(),
                topic: "t".into(),
                event,
            });
        }

        fn join(&mut self, ms: u64, since: Option<&str>, position: &str, recovered: Option<bool>) {
            let at = self.clock.at(ms);
            self.event(Event::JoinSent {
                since: since.map(str::to_owned),
                at,
            });
            self.event(Event::Joined {
                position: Some(position.to_owned()),
                recovered,
                at: at + Duration::from_millis(1),
            });
        }

        fn left(&mut self, ms: u64) {
            let at = self.clock.at(ms);
            self.event(Event::Left { at });
        }

        fn got(&mut self, ms: u64, seq: u64, position: &str) {
            let at = self.clock.at(ms);
            self.event(Event::Delivered {
                position: Some(position.to_owned()),
                message: Some(("p".into(), seq)),
                at,
            });
        }

        /// Publish `seq` sent at `ms`, answered ok 5 ms later at `position` (`None`: a push,
        /// whose answer names none).
        fn published(&mut self, ms: u64, seq: u64, position: Option<&str>) {
            self.publishes.push(Publish {
                publisher: "p".into(),
                topic: "t".into(),
                seq,
                sent_at: self.clock.at(ms),
                acked_at: self.clock.at(ms + 5),
                ack: Acked::Ok,
            });
            if let Some(position) = position {
                let _ = self
                    .answered
                    .insert(("p".into(), "t".into(), seq), position.to_owned());
            }
        }

        fn check(&self) -> Findings {
            check(&self.log, &self.publishes, &self.answered)
        }
    }

    #[test]
    fn positions_parse() {
        assert_eq!(
            Position::parse("17:k3Jd9"),
            Some(Position {
                offset: 17,
                epoch: "k3Jd9".into()
            })
        );
        for bad in ["17", ":e", "1:", "x:e", "1:e-f", "-1:e"] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Position::parse("0:e")
                .map(|p| p.next().to_string())
                .as_deref(),
            Some("1:e")
        );
    }

    /// Joined at 0:e; 1..=3 published and delivered.
    fn steady() -> Script {
        let mut script = Script::new();
        script.join(0, None, "0:e", None);
        for seq in 1..=3 {
            script.published(10 * seq, seq, Some(&format!("{seq}:e")));
            script.got(10 * seq + 6, seq, &format!("{seq}:e"));
        }
        script
    }

    #[test]
    fn a_stream_without_faults_is_clean() {
        let findings = steady().check();
        assert!(findings.is_ok(), "{findings}");
        assert_eq!(
            (findings.owed, findings.delivered_owed, findings.taken),
            (3, 3, 3)
        );
        assert_eq!((findings.joins, findings.rejoins), (1, 0));
    }

    #[test]
    fn a_hole_recovered_by_a_rejoin_is_fine_and_the_redelivery_is_no_duplicate() {
        let mut script = steady();
        // 4 and 5 lost live (the node's link was down), 6 arrives: a hole.
        for seq in 4..=6 {
            script.published(100 + seq, seq, Some(&format!("{seq}:e")));
        }
        script.got(120, 6, "6:e");
        script.join(130, Some("3:e"), "6:e", Some(true));
        for seq in 4..=6 {
            script.got(140, seq, &format!("{seq}:e"));
        }
        let findings = script.check();
        assert!(findings.is_ok(), "{findings}");
        assert_eq!(
            (findings.holes, findings.superseded, findings.recovered),
            (1, 1, 1)
        );
        assert_eq!((findings.owed, findings.delivered_owed), (6, 6));
    }

    #[test]
    fn a_silent_gap_is_missing() {
        let mut script = steady();
        script.published(100, 4, Some("4:e"));
        script.published(110, 5, Some("5:e"));
        script.got(120, 5, "5:e");
        let findings = script.check();
        // 5 came after a hole and was never taken either.
        assert_eq!(
            findings.missing,
            ["s on t: p#4 (4:e)", "s on t: p#5 (5:e)"],
            "{findings}"
        );
        assert_eq!(findings.holes, 1);
        assert!(!findings.is_ok());
    }

    #[test]
    fn a_push_delivered_nowhere_is_missing_unless_an_excuse_may_hold_it() {
        let mut script = steady();
        script.published(100, 4, None);
        let findings = script.check();
        assert_eq!(findings.missing, ["s on t: p#4 (no known position)"]);

        // The same push while the subscriber was told recovered: false (the history was
        // lost from after 3 up to 0:f): excused.
        script.join(200, Some("3:e"), "0:f", Some(false));
        let findings = script.check();
        assert!(findings.is_ok(), "{findings}");
        assert_eq!(
            (findings.not_recovered, findings.not_recovered_new_epoch),
            (1, 1)
        );
    }

    #[test]
    fn recovered_false_excuses_exactly_its_span() {
        let mut script = steady();
        // The stream was lost after 3 (a new epoch f): 4:e and 1:f, 2:f fall in the span.
        script.published(100, 4, Some("4:e"));
        script.published(110, 5, Some("1:f"));
        script.published(120, 6, Some("2:f"));
        script.join(130, Some("3:e"), "2:f", Some(false));
        // After the answer: 3:f is owed.
        script.published(140, 7, Some("3:f"));
        script.published(150, 8, Some("4:f"));
        script.got(160, 7, "3:f");
        let findings = script.check();
        assert_eq!(findings.missing, ["s on t: p#8 (4:f)"], "{findings}");
        assert_eq!(findings.owed, 5);
    }

    #[test]
    fn recovered_false_within_one_epoch_excuses_only_between_since_and_the_answer() {
        let mut script = steady();
        script.published(100, 4, Some("4:e"));
        script.published(110, 5, Some("5:e"));
        script.join(130, Some("3:e"), "4:e", Some(false));
        let findings = script.check();
        assert_eq!(findings.missing, ["s on t: p#5 (5:e)"], "{findings}");
    }

    #[test]
    fn a_redelivery_at_or_below_the_recovery_point_is_a_duplicate() {
        let mut script = steady();
        script.join(100, Some("3:e"), "3:e", Some(true));
        // The old membership's 3 arriving after the rejoin's answer.
        script.got(110, 3, "3:e");
        let findings = script.check();
        assert_eq!(findings.duplicates.len(), 1, "{findings}");
        assert!(findings.duplicates[0].contains("p#3 at 3:e"), "{findings}");

        // Within one membership, twice.
        let mut script = steady();
        script.got(100, 3, "3:e");
        let findings = script.check();
        assert_eq!(findings.duplicates.len(), 1, "{findings}");
        assert!(findings.duplicates[0].contains("twice"), "{findings}");
    }

    #[test]
    fn after_recovered_false_nothing_of_the_span_may_arrive() {
        let mut script = steady();
        script.published(100, 4, Some("4:e"));
        script.join(130, Some("3:e"), "1:f", Some(false));
        script.got(140, 4, "4:e");
        let findings = script.check();
        assert_eq!(findings.unrecovered.len(), 1, "{findings}");
    }

    #[test]
    fn recovered_true_must_deliver_its_whole_span_and_keep_the_epoch() {
        let mut script = steady();
        for seq in 4..=6 {
            script.published(100 + seq, seq, Some(&format!("{seq}:e")));
        }
        script.join(130, Some("3:e"), "6:e", Some(true));
        script.got(140, 5, "5:e");
        let findings = script.check();
        assert_eq!(findings.broken_promises.len(), 1, "{findings}");
        assert!(
            findings.broken_promises[0].contains("through 6:e"),
            "{findings}"
        );

        let mut script = steady();
        script.join(130, Some("3:e"), "0:f", Some(true));
        let findings = script.check();
        assert_eq!(findings.broken_promises.len(), 1, "{findings}");
        assert!(
            findings.broken_promises[0].contains("another epoch"),
            "{findings}"
        );
    }

    #[test]
    fn a_since_that_skips_a_hole_is_a_harness_error() {
        let mut script = steady();
        script.published(100, 4, Some("4:e"));
        script.published(110, 5, Some("5:e"));
        script.got(120, 5, "5:e");
        script.join(130, Some("5:e"), "5:e", Some(true));
        let findings = script.check();
        assert_eq!(findings.harness.len(), 1, "{findings}");
        assert_eq!(findings.missing.len(), 2, "{findings}");
    }

    #[test]
    fn broadcasts_after_the_membership_ended_and_while_a_rejoin_is_in_flight() {
        let mut script = steady();
        let at = script.clock.at(100);
        script.event(Event::JoinSent {
            since: Some("3:e".into()),
            at,
        });
        script.published(101, 4, Some("4:e"));
        // The old membership's frame before its phx_close: fine, sent again by the recovery.
        script.got(102, 4, "4:e");
        script.left(103);
        // After the phx_close, before the answer: an error.
        script.got(104, 4, "4:e");
        script.event(Event::Joined {
            position: Some("4:e".into()),
            recovered: Some(true),
            at: script.clock.at(105),
        });
        script.got(106, 4, "4:e");
        let findings = script.check();
        assert_eq!(findings.after_leave.len(), 1, "{findings}");
        assert_eq!(
            (findings.superseded, findings.owed, findings.delivered_owed),
            (1, 4, 4)
        );
        assert!(findings.duplicates.is_empty(), "{findings}");
    }

    #[test]
    fn positions_must_match_the_answers_and_the_publishers_order() {
        let mut script = steady();
        script.published(100, 4, Some("4:e"));
        script.got(110, 4, "5:e");
        let findings = script.check();
        assert_eq!(findings.mislabelled.len(), 1, "{findings}");

        let mut script = Script::new();
        script.join(0, None, "0:e", None);
        script.published(10, 1, Some("2:e"));
        script.published(20, 2, Some("1:e"));
        let findings = script.check();
        assert_eq!(findings.reordered.len(), 1, "{findings}");
    }

    #[test]
    fn a_tail_up_to_the_replys_position_may_follow_a_first_join() {
        // The read saw 1, 2 and 3 arrived live meanwhile: the reply names 3, then 2 and 3.
        let mut script = Script::new();
        script.published(0, 1, Some("1:e"));
        script.published(2, 2, Some("2:e"));
        script.published(3, 3, Some("3:e"));
        script.join(1, None, "3:e", None);
        script.got(10, 2, "2:e");
        script.got(10, 3, "3:e");
        script.published(20, 4, Some("4:e"));
        script.got(30, 4, "4:e");
        let findings = script.check();
        assert!(findings.is_ok(), "{findings}");
        assert_eq!((findings.tails, findings.taken, findings.owed), (2, 1, 1));

        // A tail that stops short of the reply's position.
        let mut script = Script::new();
        script.join(1, None, "3:e", None);
        script.got(10, 2, "2:e");
        script.got(10, 4, "4:e");
        let findings = script.check();
        assert_eq!(findings.broken_promises.len(), 1, "{findings}");
        assert!(
            findings.broken_promises[0].contains("stopped at 2:e"),
            "{findings}"
        );

        // The reply's position again once the tail is over: a duplicate.
        let mut script = Script::new();
        script.join(1, None, "3:e", None);
        script.got(10, 3, "3:e");
        script.got(11, 3, "3:e");
        let findings = script.check();
        assert_eq!(findings.duplicates.len(), 1, "{findings}");
    }

    #[test]
    fn a_tail_after_recovered_false_stays_above_since() {
        let mut script = steady();
        script.published(100, 4, Some("4:e"));
        script.published(101, 5, Some("5:e"));
        script.join(110, Some("3:e"), "5:e", Some(false));
        script.got(120, 5, "5:e");
        let findings = script.check();
        assert!(findings.is_ok(), "{findings}");
        assert_eq!(findings.tails, 1);

        let mut script = steady();
        script.join(110, Some("3:e"), "5:e", Some(false));
        script.got(120, 3, "3:e");
        let findings = script.check();
        assert_eq!(findings.duplicates.len(), 1, "{findings}");
    }

    #[test]
    fn a_join_with_since_must_say_whether_it_recovered() {
        let mut script = steady();
        script.join(100, Some("3:e"), "3:e", None);
        let findings = script.check();
        assert_eq!(findings.broken_promises.len(), 1, "{findings}");
        assert!(
            findings.to_string().contains("without recovered"),
            "{findings}"
        );
    }
}
