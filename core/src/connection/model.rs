//! A driver for one [`Connection`] over a real [`Registry`], for property tests and fuzzing
//! (feature `model`).
//!
//! [`check`] feeds a connection a sequence of [`Step`]s — well-formed and malformed frames,
//! raw bytes, the driver's answers to joins and pushes in any order, time, transport
//! refusals, a server close — performs its outputs the way the node's hub does (a join
//! subscribes at once and is undone when refused; a leave unsubscribes), and checks after
//! every step that the connection's view of its memberships and the registry's agree, that
//! every frame it sends is a valid server frame, and that nothing comes after a close.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{
    Connection, JoinAnswer, JoinId, JoinRefusal, Limits, Output, PublishAnswer, PushAck, Reach,
};
use crate::frame::events;
use crate::{decode_frame, Access, ChannelRules, Registry, Rule, SubscribeError, Time, Topic};

/// Topic names frames draw from: valid ones that collide, a protected namespace, the
/// heartbeat topic, and invalid ones.
pub const TOPICS: [&str; 7] = [
    "room:1",
    "room:2",
    "auditlog:7",
    "phoenix",
    "",
    "a\u{1}b",
    "room:3",
];

/// Refs frames draw from (`None` is a JSON null).
pub const REFS: [Option<&str>; 5] = [None, Some("1"), Some("2"), Some("3"), Some("4")];

/// What a frame asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum FrameKind {
    /// `phx_join`.
    Join,
    /// `phx_leave`.
    Leave,
    /// A push of event `e`.
    Push,
    /// `heartbeat`.
    Heartbeat,
    /// An event only the server may send (`phx_reply`).
    ServerEvent,
    /// A push whose payload is not an object.
    NotObject,
}

/// One step of a connection's life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Step {
    /// A frame built from the pools (indices wrap).
    Frame {
        /// Index into [`REFS`].
        join_ref: u8,
        /// Index into [`REFS`].
        msg_ref: u8,
        /// Index into [`TOPICS`].
        topic: u8,
        /// What it asks.
        kind: FrameKind,
    },
    /// Arbitrary text.
    Raw(String),
    /// Arbitrary bytes (reassembled fragments).
    Bytes(Vec<u8>),
    /// The driver answers one pending join (index wraps): 0 everywhere, 1 local only, 2 timed
    /// out, 3 refused by the backend, else unavailable.
    AnswerJoin {
        /// Which pending join.
        which: u8,
        /// How.
        how: u8,
    },
    /// The driver answers one pending push: 0 everywhere, 1 local only, 2 refused, else
    /// overloaded.
    AnswerPush {
        /// Which pending push.
        which: u8,
        /// How.
        how: u8,
    },
    /// Time passes (milliseconds).
    Advance(u16),
    /// A binary message.
    Binary,
    /// A message over the size limit.
    Oversized,
    /// The server closes the socket.
    ServerClose,
    /// The server ends the membership of a topic (index into [`TOPICS`]) whose stream it can
    /// no longer vouch for: unsubscribed, then told.
    StreamBroken(u8),
}

/// The limits the checks run with: small, so the steps reach them.
#[must_use]
pub fn limits() -> Limits {
    Limits {
        max_frame_bytes: 4096,
        max_topic_bytes: 16,
        max_topics: 3,
        idle_timeout: Duration::from_secs(30),
        push_rate: 5,
        push_burst: 3,
        join_rate: 5,
        join_burst: 4,
    }
}

macro_rules! ensure {
    ($cond:expr, $($what:tt)+) => {
        if !$cond {
            return Err(format!($($what)+));
        }
    };
}

/// Runs `steps` through a connection of user `7` (rules: `auditlog` is owner-only, pushes to
/// it nobody's), then answers everything still pending, checking every step.
///
/// # Errors
/// What was broken, and when.
pub fn check(steps: &[Step]) -> Result<(), String> {
    let mut driver = Driver::new();
    for (index, step) in steps.iter().enumerate() {
        driver
            .step(step)
            .map_err(|what| format!("step {index} ({step:?}): {what}"))?;
    }
    while !driver.joins.is_empty() || !driver.pushes.is_empty() {
        driver.step(&Step::AnswerJoin { which: 0, how: 0 })?;
        driver.step(&Step::AnswerPush { which: 0, how: 0 })?;
    }
    Ok(())
}

struct Driver {
    connection: Connection,
    registry: Registry,
    session: crate::SessionId,
    now: Time,
    joins: Vec<(Topic, JoinId)>,
    pushes: Vec<PushAck>,
    closed: bool,
}

impl Driver {
    fn new() -> Self {
        let mut rules = ChannelRules::new(Access::OPEN);
        rules.set(
            "auditlog",
            Access {
                join: Rule::Owner,
                push: Rule::Nobody,
            },
        );
        let limits = limits();
        let mut registry = Registry::with_max_topics_per_session(limits.max_topics);
        let session = registry.connect();
        Self {
            connection: Connection::new(
                Arc::new(limits),
                Arc::new(rules),
                Some("7".to_owned()),
                Time::ZERO,
            ),
            registry,
            session,
            now: Time::ZERO,
            joins: Vec::new(),
            pushes: Vec::new(),
            closed: false,
        }
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        let now = self.now;
        match step {
            Step::Frame {
                join_ref,
                msg_ref,
                topic,
                kind,
            } => {
                let text = frame(*join_ref, *msg_ref, *topic, *kind);
                self.connection.handle_text(&text, now);
            }
            Step::Raw(text) => self.connection.handle_text(text, now),
            Step::Bytes(bytes) => self.connection.handle_text_bytes(bytes, now),
            Step::AnswerJoin { which, how } => {
                if !self.joins.is_empty() {
                    let (topic, join) = self.joins.remove(usize::from(*which) % self.joins.len());
                    let answer = match how % 5 {
                        0 => JoinAnswer::Joined(Reach::Everywhere),
                        1 => JoinAnswer::Joined(Reach::LocalOnly),
                        2 => JoinAnswer::Refused(JoinRefusal::UpstreamTimeout {
                            after: Duration::from_secs(5),
                        }),
                        3 => JoinAnswer::Refused(JoinRefusal::UpstreamRefused {
                            reason: "NOPERM".into(),
                        }),
                        _ => JoinAnswer::Refused(JoinRefusal::Unavailable),
                    };
                    if matches!(answer, JoinAnswer::Refused(_)) {
                        // The hub undoes a join it could not complete.
                        let _ = self.registry.unsubscribe(self.session, topic.as_str());
                    }
                    self.connection
                        .handle_join_answer(&topic, join, answer, now);
                }
            }
            Step::AnswerPush { which, how } => {
                if !self.pushes.is_empty() {
                    let ack = self.pushes.remove(usize::from(*which) % self.pushes.len());
                    let answer = match how % 4 {
                        0 => PublishAnswer::Everywhere,
                        1 => PublishAnswer::LocalOnly,
                        2 => PublishAnswer::Refused("too large".into()),
                        _ => PublishAnswer::Overloaded,
                    };
                    self.connection.handle_publish_answer(ack, &answer);
                }
            }
            Step::Advance(millis) => {
                self.now = self.now + Duration::from_millis(u64::from(*millis));
                self.connection.handle_tick(self.now);
            }
            Step::Binary => self.connection.handle_binary(now),
            Step::Oversized => self.connection.handle_oversized(now),
            Step::ServerClose => self.connection.close(1001, "server shutting down"),
            Step::StreamBroken(topic) => {
                if let Ok(topic) = Topic::new(TOPICS[usize::from(*topic) % TOPICS.len()]) {
                    if !self.closed {
                        let _ = self.registry.unsubscribe(self.session, topic.as_str());
                    }
                    self.connection.handle_stream_broken(&topic);
                }
            }
        }
        self.perform()
    }

    /// Performs the outputs as the node's hub does and checks them.
    fn perform(&mut self) -> Result<(), String> {
        while let Some(output) = self.connection.poll() {
            ensure!(!self.closed, "{output:?} after the close");
            match output {
                Output::Send(text) => check_sent(&text)?,
                Output::Join { topic, join, .. } => {
                    match self.registry.subscribe(self.session, &topic) {
                        Ok(_) => self.joins.push((topic, join)),
                        Err(SubscribeError::TooManyTopics { .. }) => {
                            let answer = JoinAnswer::Refused(JoinRefusal::TooManyTopics);
                            self.connection
                                .handle_join_answer(&topic, join, answer, self.now);
                        }
                        Err(err) => return Err(format!("subscribe failed: {err}")),
                    }
                }
                Output::Leave { topic } => {
                    let _ = self.registry.unsubscribe(self.session, topic.as_str());
                }
                Output::Publish { ack, .. } | Output::PresenceUpdate { ack, .. } => {
                    self.pushes.extend(ack);
                }
                Output::Close { .. } => self.closed = true,
                Output::Refused(_) => {}
            }
        }
        ensure!(
            self.closed == self.connection.is_closed(),
            "closed {} but the connection says {}",
            self.closed,
            self.connection.is_closed()
        );
        if !self.closed {
            let held: BTreeSet<&Topic> = self.registry.topics_of(self.session).collect();
            let known: BTreeSet<&Topic> = self
                .connection
                .joined()
                .chain(self.connection.joining())
                .collect();
            ensure!(
                held == known,
                "the registry holds {held:?}, the connection knows {known:?}"
            );
            ensure!(
                known.len() <= self.connection.limits().max_topics,
                "{} memberships",
                known.len()
            );
        }
        Ok(())
    }
}

/// A frame the connection sends must be a five-element array with string-or-null refs, a
/// string topic (an error reply echoes even an invalid one), a reply or close event and an
/// object payload; a frame with a valid topic must decode.
fn check_sent(text: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|err| format!("sent {text}: {err}"))?;
    let ok = value.as_array().is_some_and(|parts| {
        parts.len() == 5
            && (parts[0].is_null() || parts[0].is_string())
            && (parts[1].is_null() || parts[1].is_string())
            && parts[2].is_string()
            && (parts[3] == events::REPLY || parts[3] == events::CLOSE || parts[3] == events::ERROR)
            && parts[4].is_object()
    });
    ensure!(ok, "sent a malformed frame {text}");
    if value[2]
        .as_str()
        .is_some_and(|topic| Topic::new(topic).is_ok())
    {
        decode_frame(text, usize::MAX).map_err(|err| format!("sent {text}: {err}"))?;
    }
    Ok(())
}

/// The text of a frame built from the pools.
#[must_use]
pub fn frame(join_ref: u8, msg_ref: u8, topic: u8, kind: FrameKind) -> String {
    let string = |value: &str| serde_json::to_string(value).unwrap_or_default();
    let json = |value: Option<&str>| value.map_or_else(|| "null".to_owned(), string);
    let join_ref = json(REFS[usize::from(join_ref) % REFS.len()]);
    let msg_ref = json(REFS[usize::from(msg_ref) % REFS.len()]);
    let topic = string(TOPICS[usize::from(topic) % TOPICS.len()]);
    let (event, payload) = match kind {
        FrameKind::Join => (events::JOIN, "{}"),
        FrameKind::Leave => (events::LEAVE, "{}"),
        FrameKind::Push => ("e", r#"{"n":1}"#),
        FrameKind::Heartbeat => (events::HEARTBEAT, "{}"),
        FrameKind::ServerEvent => (events::REPLY, "{}"),
        FrameKind::NotObject => ("e", "[1]"),
    };
    format!("[{join_ref},{msg_ref},{topic},\"{event}\",{payload}]")
}
