//! The hub's share of presence: the member lists of the topics this node's sockets watch,
//! the members this node's sockets hold, and the batching of diffs.
//!
//! Per watched topic the hub keeps a core [`TopicPresence`] with every node's members. Its own
//! members change it directly; other nodes' changes arrive from the backend
//! ([`Change`]s on the topic's presence channel). The list itself is read from the backend when
//! the first local socket joins the topic ("loading"), and again whenever changes may have been
//! missed (the bridge reconnected): changes that arrive during a read are kept and applied
//! after it, which is right because every change is idempotent per `phx_ref`.
//!
//! Diffs go out on a short timer ([`FLUSH_TICK`]), at most one per topic per [`BATCH_WINDOW`]:
//! a lone change reaches sockets at once, a storm of joins costs a few frames per watcher.
//!
//! This node's members are the truth about this node: the backend is told of each, and when it
//! may have lost some (it restarted, or declared this node gone while the node was only cut
//! off) the node writes them all again ([`PresenceOp::Sync`]). Without a backend the hub's
//! tables are all there is.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;
use switchboard_core::bridge::{EdgeOp, WaitOutcome};
use switchboard_core::connection::{JoinRefusal, PublishAnswer, PushAck};
use switchboard_core::encode_parts;
use switchboard_core::presence::event::Change;
use switchboard_core::presence::ops::{PresenceOp, PresenceReply};
use switchboard_core::presence::{self, Member, Meta, PresenceRules, TopicPresence};
use switchboard_core::{Payload, SessionId, Time, Topic};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::outbox::Overflow;
use super::{ready_step, Hub, Step};
use crate::messages::{
    PresenceChanged, PresenceHeld, PresenceResync, PushAnswered, UpstreamPresence, UpstreamWait,
};
use crate::metrics;

/// How often the hub looks for diffs to send.
pub const FLUSH_TICK: Duration = Duration::from_millis(50);

/// The shortest time between two diffs of one topic.
pub const BATCH_WINDOW: Duration = Duration::from_millis(250);

/// Heartbeats per `--presence-ttl` (the bridge sends them).
pub const HEARTBEATS_PER_TTL: u32 = 5;

/// How often a node heartbeats for `ttl`.
#[must_use]
pub fn heartbeat_every(ttl: Duration) -> Duration {
    ttl / HEARTBEATS_PER_TTL
}

/// How long the backend counts a node alive after a heartbeat: three heartbeats, so two can be
/// missed, and a node that stops is reaped (by another node's next heartbeat) within four
/// fifths of the TTL.
#[must_use]
pub fn liveness(ttl: Duration) -> Duration {
    ttl * 3 / HEARTBEATS_PER_TTL
}

/// Most changes kept for a topic while its list is read; past it the list is read again.
pub const MAX_BUFFERED_CHANGES: usize = 10_000;

/// One member this node's sockets hold.
#[derive(Debug, Clone)]
pub struct Local {
    /// The socket's session.
    pub session: SessionId,
    /// The topic.
    pub topic: Topic,
    /// The member.
    pub member: Member,
}

/// Where a topic's list stands.
#[derive(Debug)]
enum Load {
    /// The list is known (or is this node's view while the backend is out of reach).
    Ready,
    /// The list is being read; changes wait here.
    Loading {
        id: u64,
        buffered: Vec<Change>,
        overflowed: bool,
        waiting: Vec<oneshot::Sender<()>>,
    },
}

/// A topic local sockets watch.
#[derive(Debug)]
struct Watched {
    table: TopicPresence,
    /// SessionIds whose join was answered: they get the diffs.
    watchers: HashSet<SessionId>,
    /// Joins in progress.
    joining: usize,
    load: Load,
    last_diff: Option<Time>,
}

impl Watched {
    fn is_unwatched(&self) -> bool {
        self.watchers.is_empty() && self.joining == 0
    }
}

/// What a join finds when it enters a topic.
#[derive(Debug)]
pub enum Entered {
    /// The topic was not watched: subscribe its presence channel and read its list with this
    /// load id; the read completes the receiver.
    First(u64, oneshot::Receiver<()>),
    /// Its list is being read: wait for this.
    Loading(oneshot::Receiver<()>),
    /// Its list is known.
    Ready,
}

/// A diff due for sending.
#[derive(Debug)]
pub struct Due {
    /// The topic.
    pub topic: Topic,
    /// The `presence_diff` payload.
    pub diff: Payload,
    /// Who gets it.
    pub watchers: Vec<SessionId>,
}

/// The hub's presence state (see the module documentation).
#[derive(Debug)]
pub struct Presences {
    rules: Arc<PresenceRules>,
    node: String,
    next_ref: u64,
    next_load: u64,
    topics: HashMap<Topic, Watched>,
    local: HashMap<String, Local>,
    /// Members whose track (or update) the backend has not answered yet: a sync must not
    /// delete them, nor bring back what an update in flight replaces.
    in_flight: HashMap<String, (Topic, Member)>,
    by_session: HashMap<SessionId, HashMap<Topic, String>>,
    dirty: HashSet<Topic>,
    /// The backend may lack some of this node's members (or hold some it should not): write
    /// them all at the next chance. Shared with the requests that may fail.
    unsynced: Arc<AtomicBool>,
}

impl Presences {
    /// Presence for the topics `rules` name, on node `node` (its id on the backend).
    #[must_use]
    pub fn new(rules: Arc<PresenceRules>, node: String) -> Self {
        Self {
            rules,
            node,
            next_ref: 0,
            next_load: 0,
            topics: HashMap::new(),
            local: HashMap::new(),
            in_flight: HashMap::new(),
            by_session: HashMap::new(),
            dirty: HashSet::new(),
            unsynced: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The backend may differ from this node's members: sync at the next chance.
    pub fn mark_unsynced(&self) {
        self.unsynced.store(true, Ordering::Relaxed);
    }

    /// Whether a sync is due; clears the mark (a failed sync marks it again).
    pub fn take_unsynced(&self) -> bool {
        self.unsynced.swap(false, Ordering::Relaxed)
    }

    /// The flag, for requests that report failure after the fact.
    fn unsynced_flag(&self) -> Arc<AtomicBool> {
        self.unsynced.clone()
    }

    /// The rules.
    #[must_use]
    pub fn rules(&self) -> &PresenceRules {
        &self.rules
    }

    /// Whether any topic tracks presence.
    #[must_use]
    pub fn is_on(&self) -> bool {
        !self.rules.is_empty()
    }

    /// This node's id on the backend.
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A `phx_ref` no other member anywhere has: the node's id (random per start) and a count.
    pub fn new_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("{}.{}", self.node, self.next_ref)
    }

    /// A join of `topic` begins.
    pub fn enter(&mut self, topic: &Topic) -> Entered {
        if let Some(watched) = self.topics.get_mut(topic) {
            watched.joining += 1;
            return match &mut watched.load {
                Load::Ready => Entered::Ready,
                Load::Loading { waiting, .. } => {
                    let (done, wait) = oneshot::channel();
                    waiting.push(done);
                    Entered::Loading(wait)
                }
            };
        }
        self.next_load += 1;
        let id = self.next_load;
        let (done, wait) = oneshot::channel();
        self.topics.insert(
            topic.clone(),
            Watched {
                table: TopicPresence::new(),
                watchers: HashSet::new(),
                joining: 1,
                load: Load::Loading {
                    id,
                    buffered: Vec::new(),
                    overflowed: false,
                    waiting: vec![done],
                },
                last_diff: None,
            },
        );
        Entered::First(id, wait)
    }

    /// Starts reading `topic`'s list again (its changes may have been missed): the load id,
    /// or `None` when the topic is not watched or already being read.
    pub fn reload(&mut self, topic: &Topic) -> Option<u64> {
        let watched = self.topics.get_mut(topic)?;
        if matches!(watched.load, Load::Loading { .. }) {
            return None;
        }
        self.next_load += 1;
        let id = self.next_load;
        watched.load = Load::Loading {
            id,
            buffered: Vec::new(),
            overflowed: false,
            waiting: Vec::new(),
        };
        Some(id)
    }

    /// Every watched topic.
    pub fn watched(&self) -> impl Iterator<Item = &Topic> + '_ {
        self.topics.keys()
    }

    /// The read `id` of `topic`'s list ended: with the backend's members, or (`None`) without
    /// (the backend is out of reach: the list stays this node's view until the next read).
    /// Returns whether the topic must be read again (changes overflowed meanwhile).
    pub fn loaded(
        &mut self,
        topic: &Topic,
        id: u64,
        members: Option<Vec<(String, Member)>>,
    ) -> bool {
        let Some(watched) = self.topics.get_mut(topic) else {
            return false;
        };
        let current = matches!(&watched.load, Load::Loading { id: current, .. } if *current == id);
        if !current {
            return false;
        }
        let Load::Loading {
            buffered,
            overflowed,
            waiting,
            ..
        } = std::mem::replace(&mut watched.load, Load::Ready)
        else {
            return false;
        };
        if let Some(mut members) = members {
            // This node's own members are known here better than anywhere: a read that raced
            // with a track keeps them.
            for (phx_ref, local) in &self.local {
                if local.topic == *topic && !members.iter().any(|(r, _)| r == phx_ref) {
                    members.push((phx_ref.clone(), local.member.clone()));
                }
            }
            watched.table.resync(members);
        }
        for change in buffered {
            change.apply(&mut watched.table);
        }
        for done in waiting {
            let _ = done.send(());
        }
        if watched.table.has_changes() {
            self.dirty.insert(topic.clone());
        }
        overflowed
    }

    /// Whether `topic`'s list is known (not being read).
    #[must_use]
    pub fn is_ready(&self, topic: &Topic) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|watched| matches!(watched.load, Load::Ready))
    }

    /// Members of `topic` now, across every node (0 when it is not watched).
    #[must_use]
    pub fn members(&self, topic: &Topic) -> usize {
        self.topics.get(topic).map_or(0, |w| w.table.len())
    }

    /// `topic`'s table, when it is watched.
    #[must_use]
    pub fn table(&self, topic: &Topic) -> Option<&TopicPresence> {
        self.topics.get(topic).map(|w| &w.table)
    }

    /// A change announced on the backend.
    pub fn apply(&mut self, topic: &Topic, change: Change) {
        let Some(watched) = self.topics.get_mut(topic) else {
            return;
        };
        match &mut watched.load {
            Load::Ready => {
                if change.apply(&mut watched.table) {
                    self.dirty.insert(topic.clone());
                }
            }
            Load::Loading {
                buffered,
                overflowed,
                ..
            } => {
                if buffered.len() < MAX_BUFFERED_CHANGES {
                    buffered.push(change);
                } else {
                    *overflowed = true;
                }
            }
        }
    }

    /// `session`'s member `phx_ref` of `topic` is in (stored on the backend, or the node runs
    /// alone, or the backend will get it with the next sync).
    pub fn track(&mut self, session: SessionId, topic: &Topic, phx_ref: String, member: Member) {
        let previous = self
            .by_session
            .entry(session)
            .or_default()
            .insert(topic.clone(), phx_ref.clone());
        if let Some(previous) = previous {
            self.local.remove(&previous);
        }
        if let Some(watched) = self.topics.get_mut(topic) {
            if watched.table.track(phx_ref.clone(), member.clone()) {
                self.dirty.insert(topic.clone());
            }
        }
        let member = Member {
            prev: None,
            ..member
        };
        self.local.insert(
            phx_ref,
            Local {
                session,
                topic: topic.clone(),
                member,
            },
        );
    }

    /// `session`'s member of `topic`, if it has one: `(phx_ref, member)`.
    #[must_use]
    pub fn member_of(&self, session: SessionId, topic: &Topic) -> Option<(&str, &Member)> {
        let phx_ref = self.by_session.get(&session)?.get(topic)?;
        let local = self.local.get(phx_ref)?;
        Some((phx_ref, &local.member))
    }

    /// Removes `session`'s member of `topic` here: its `phx_ref`, for the backend.
    pub fn untrack(&mut self, session: SessionId, topic: &Topic) -> Option<String> {
        let refs = self.by_session.get_mut(&session)?;
        let phx_ref = refs.remove(topic)?;
        if refs.is_empty() {
            self.by_session.remove(&session);
        }
        self.local.remove(&phx_ref);
        if let Some(watched) = self.topics.get_mut(topic) {
            if watched.table.untrack(&phx_ref) {
                self.dirty.insert(topic.clone());
            }
        }
        Some(phx_ref)
    }

    /// A join of `topic` ends: answered (the session now gets the diffs, and the list is its
    /// state) or not. Returns the state for an answered join.
    pub fn settle(&mut self, session: SessionId, topic: &Topic, answered: bool) -> Option<Payload> {
        let watched = self.topics.get_mut(topic)?;
        watched.joining = watched.joining.saturating_sub(1);
        if answered {
            watched.watchers.insert(session);
            return Some(watched.table.state());
        }
        None
    }

    /// `session` stops watching `topic` (it left, or its join failed after entering).
    pub fn unwatch(&mut self, session: SessionId, topic: &Topic) {
        if let Some(watched) = self.topics.get_mut(topic) {
            watched.watchers.remove(&session);
        }
    }

    /// Forgets `topic` if no socket watches it or is joining it: whether it was forgotten (its
    /// presence channel can go).
    pub fn drop_if_unwatched(&mut self, topic: &Topic) -> bool {
        let unwatched = self.topics.get(topic).is_some_and(Watched::is_unwatched);
        if unwatched {
            self.topics.remove(topic);
            self.dirty.remove(topic);
        }
        unwatched
    }

    /// Everything of `session` (it went away): the members to untrack on the backend,
    /// `(topic, phx_ref)`, and the topics it watched.
    pub fn forget(&mut self, session: SessionId) -> (Vec<(Topic, String)>, Vec<Topic>) {
        let topics: Vec<Topic> = self
            .by_session
            .get(&session)
            .map(|refs| refs.keys().cloned().collect())
            .unwrap_or_default();
        let mut gone = Vec::new();
        for topic in topics {
            if let Some(phx_ref) = self.untrack(session, &topic) {
                gone.push((topic, phx_ref));
            }
        }
        let mut watched = Vec::new();
        for (topic, entry) in &mut self.topics {
            if entry.watchers.remove(&session) {
                watched.push(topic.clone());
            }
        }
        (gone, watched)
    }

    /// A track (or update) of member `phx_ref` of `topic` went to the backend.
    pub fn begin_track(&mut self, phx_ref: &str, topic: &Topic, member: &Member) {
        self.in_flight
            .insert(phx_ref.to_owned(), (topic.clone(), member.clone()));
    }

    /// The backend answered the track of `phx_ref` (or it was abandoned).
    pub fn end_track(&mut self, phx_ref: &str) {
        self.in_flight.remove(phx_ref);
    }

    /// Tracks and updates the backend has not answered yet.
    #[must_use]
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }

    /// What the backend should hold for this node, `(topic, phx_ref, member)`: every member
    /// this node's sockets hold, and those whose track is on its way (a sync sent meanwhile
    /// must not delete them), without those an update on its way replaces.
    #[must_use]
    pub fn sync_entries(&self) -> Vec<(Topic, String, Member)> {
        let replaced: HashSet<&str> = self
            .in_flight
            .values()
            .filter_map(|(_, member)| member.prev.as_deref())
            .collect();
        let local = self
            .local
            .iter()
            .filter(|(phx_ref, _)| !replaced.contains(phx_ref.as_str()))
            .map(|(phx_ref, local)| (local.topic.clone(), phx_ref.clone(), local.member.clone()));
        let on_their_way = self.in_flight.iter().map(|(phx_ref, (topic, member))| {
            let member = Member {
                prev: None,
                ..member.clone()
            };
            (topic.clone(), phx_ref.clone(), member)
        });
        local.chain(on_their_way).collect()
    }

    /// How many members this node's sockets hold.
    #[must_use]
    pub fn local_count(&self) -> usize {
        self.local.len()
    }

    /// Members listed over every watched topic.
    #[must_use]
    pub fn listed(&self) -> usize {
        self.topics.values().map(|w| w.table.len()).sum()
    }

    /// The diffs due at `now` (at most one per topic per [`BATCH_WINDOW`]).
    pub fn due(&mut self, now: Time) -> Vec<Due> {
        let mut due = Vec::new();
        let mut later = HashSet::new();
        for topic in self.dirty.drain() {
            let Some(watched) = self.topics.get_mut(&topic) else {
                continue;
            };
            if watched
                .last_diff
                .is_some_and(|last| now.saturating_duration_since(last) < BATCH_WINDOW)
            {
                later.insert(topic);
                continue;
            }
            let Some(diff) = watched.table.take_diff() else {
                continue;
            };
            watched.last_diff = Some(now);
            if watched.watchers.is_empty() {
                continue;
            }
            due.push(Due {
                topic,
                diff,
                watchers: watched.watchers.iter().copied().collect(),
            });
        }
        self.dirty = later;
        due
    }
}

impl Hub {
    /// Sends `op` to the backend: its answer, or why there is none.
    fn presence_op(
        &self,
        op: PresenceOp,
    ) -> Option<oneshot::Receiver<Result<PresenceReply, String>>> {
        let upstream = self.upstream.as_ref()?;
        let (reply, answer) = oneshot::channel();
        upstream.presence.do_send(UpstreamPresence { op, reply });
        Some(answer)
    }

    /// Tells the backend that member `phx_ref` of `topic` left (a failure is repaired by the
    /// next sync).
    fn presence_untrack(&self, topic: Topic, phx_ref: String) {
        let Some(answer) = self.presence_op(PresenceOp::Untrack { topic, phx_ref }) else {
            return;
        };
        let unsynced = self.presences.unsynced_flag();
        actix::spawn(async move {
            if !matches!(answer.await, Ok(Ok(_))) {
                unsynced.store(true, Ordering::Relaxed);
            }
        });
    }

    /// `session` no longer watches `topic`: its member leaves, and the topic's presence
    /// channel goes when nobody here watches it.
    pub(super) fn presence_leave(&mut self, session: SessionId, topic: &Topic) {
        if let Some(phx_ref) = self.presences.untrack(session, topic) {
            self.presence_untrack(topic.clone(), phx_ref);
        }
        self.presences.unwatch(session, topic);
        self.presence_drop(topic);
    }

    /// Forgets `topic`'s list (and unsubscribes its presence channel) when nobody watches it.
    fn presence_drop(&mut self, topic: &Topic) {
        if self.presences.drop_if_unwatched(topic) {
            self.edge(presence::channel_of(topic), EdgeOp::Unsubscribe);
        }
        self.presence_gauges();
    }

    /// Everything presence knew of a session that went away.
    pub(super) fn presence_forget(&mut self, session: SessionId) {
        if !self.presences.is_on() {
            return;
        }
        let (gone, watched) = self.presences.forget(session);
        for (topic, phx_ref) in gone {
            self.presence_untrack(topic, phx_ref);
        }
        for topic in watched {
            self.presence_drop(&topic);
        }
    }

    fn presence_gauges(&self) {
        metrics::set(&self.metrics.presence_entries, self.presences.local_count());
        metrics::set(&self.metrics.presence_members, self.presences.listed());
    }

    /// Reads `topic`'s list (load `id`) from the backend, after its presence channel is
    /// subscribed; without a backend, or while it is out of reach, the list is this node's
    /// own view until the next read.
    fn presence_load(&mut self, topic: Topic, id: u64, ctx: &mut Context<Self>) {
        let Some(upstream) = &self.upstream else {
            self.presences.loaded(&topic, id, Some(Vec::new()));
            return;
        };
        let (reply, confirmed) = oneshot::channel();
        upstream.wait.do_send(UpstreamWait {
            topic: presence::channel_of(&topic),
            reply,
        });
        let read = confirmed.into_actor(self).then(move |outcome, hub, _| {
            let listed: Step<Option<Vec<(String, Member)>>> = match outcome {
                Ok(WaitOutcome::Confirmed) => match hub.presence_op(PresenceOp::List {
                    topic: topic.clone(),
                }) {
                    Some(answer) => Box::pin(answer.into_actor(hub).map(|answer, _, _| {
                        match answer {
                            Ok(Ok(PresenceReply::Members(members))) => Some(members),
                            _ => None,
                        }
                    })),
                    None => ready_step(None),
                },
                _ => ready_step(None),
            };
            listed.map(move |members, hub: &mut Self, ctx| {
                let failed = members.is_none();
                let again = hub.presences.loaded(&topic, id, members);
                if failed {
                    debug!(%topic, "presence list unavailable; this node's view until the next read");
                }
                if again {
                    if let Some(id) = hub.presences.reload(&topic) {
                        hub.presence_load(topic, id, ctx);
                    }
                }
                hub.presence_gauges();
            })
        });
        ctx.spawn(read);
    }

    /// A join of presence topic `topic` begins: the list is read if nobody here watched the
    /// topic; the step ends once the list is known.
    pub(super) fn presence_enter(&mut self, topic: &Topic, ctx: &mut Context<Self>) -> Step<()> {
        match self.presences.enter(topic) {
            Entered::First(id, wait) => {
                if self.upstream.is_some() {
                    self.edge(presence::channel_of(topic), EdgeOp::Subscribe);
                }
                self.presence_load(topic.clone(), id, ctx);
                Box::pin(wait.into_actor(self).map(|_, _, _| ()))
            }
            Entered::Loading(wait) => Box::pin(wait.into_actor(self).map(|_, _, _| ())),
            Entered::Ready => ready_step(()),
        }
    }

    /// Tracks `session`'s member of `topic`.
    pub(super) fn presence_track(
        &mut self,
        session: SessionId,
        topic: Topic,
        key: String,
        meta: Meta,
    ) -> Step<Result<(), JoinRefusal>> {
        let max = self.presences.rules().max_members;
        let phx_ref = self.presences.new_ref();
        let member = Member {
            key,
            meta,
            node: self.presences.node().to_owned(),
            prev: None,
        };
        let op = PresenceOp::Track {
            topic: topic.clone(),
            phx_ref: phx_ref.clone(),
            member: member.clone(),
            max_members: max,
        };
        let Some(answer) = self.presence_op(op) else {
            if self.presences.members(&topic) >= max {
                return ready_step(Err(JoinRefusal::PresenceFull { max }));
            }
            self.presences.track(session, &topic, phx_ref, member);
            self.presence_gauges();
            return ready_step(Ok(()));
        };
        self.presences.begin_track(&phx_ref, &topic, &member);
        Box::pin(answer.into_actor(self).map(move |answer, hub, _| {
            hub.presences.end_track(&phx_ref);
            match answer {
                Ok(Ok(PresenceReply::Full)) => {
                    // A sync sent meanwhile may have written it: make sure it is gone.
                    hub.presence_untrack(topic, phx_ref);
                    return Err(JoinRefusal::PresenceFull { max });
                }
                Ok(Ok(PresenceReply::Tracked)) => {}
                other => {
                    // Out of reach: this node lists the member now and writes it to the
                    // backend with the next sync.
                    debug!(%topic, ?other, "presence track not confirmed; syncing later");
                    hub.presences.mark_unsynced();
                }
            }
            if !hub.sessions.contains_key(&session) {
                hub.presence_untrack(topic, phx_ref);
                return Err(JoinRefusal::Unavailable);
            }
            hub.presences.track(session, &topic, phx_ref, member);
            hub.presence_gauges();
            Ok(())
        }))
    }

    /// The end of a presence join: the session watches the topic and gets its list (`None`
    /// when the join was refused or the session is gone).
    pub(super) fn presence_settle(
        &mut self,
        session: SessionId,
        topic: &Topic,
        joined: bool,
    ) -> Option<Payload> {
        let alive = self.sessions.contains_key(&session);
        if joined && alive {
            metrics::add(&self.metrics.presence_states, 1);
            return self.presences.settle(session, topic, true);
        }
        self.presences.settle(session, topic, false);
        if let Some(phx_ref) = self.presences.untrack(session, topic) {
            self.presence_untrack(topic.clone(), phx_ref);
        }
        self.presence_drop(topic);
        None
    }

    /// Sends the diffs that are due.
    fn presence_flush(&mut self) {
        let now = self.now();
        for due in self.presences.due(now) {
            let frame = ByteString::from(encode_parts(
                None,
                None,
                due.topic.as_str(),
                presence::PRESENCE_DIFF,
                due.diff.get(),
            ));
            let mut slow = Vec::new();
            let mut queued = 0;
            for session in due.watchers {
                if let Some(entry) = self.sessions.get(&session) {
                    match entry.outbox.offer(&frame) {
                        Ok(()) => queued += 1,
                        Err(Overflow::Slow) => slow.push(session),
                        Err(Overflow::Gone) => {}
                    }
                }
            }
            metrics::add(&self.metrics.presence_diffs, queued);
            metrics::add(&self.metrics.frames_out, queued);
            for session in slow {
                self.evict_slow(session);
            }
        }
        self.presence_gauges();
    }

    /// Makes the backend's entries of this node exactly its members.
    fn presence_sync(&mut self, ctx: &mut Context<Self>) {
        let _ = self.presences.take_unsynced();
        let op = PresenceOp::Sync {
            node: self.presences.node().to_owned(),
            ttl: self.liveness(),
            entries: self.presences.sync_entries(),
        };
        let Some(answer) = self.presence_op(op) else {
            return;
        };
        ctx.spawn(answer.into_actor(self).map(|answer, hub, _| {
            if !matches!(answer, Ok(Ok(PresenceReply::Done))) {
                debug!(?answer, "presence sync failed; trying again");
                hub.presences.mark_unsynced();
            }
        }));
    }

    /// How long the backend counts this node alive after a heartbeat.
    fn liveness(&self) -> Duration {
        liveness(self.presence_ttl)
    }

    /// Starts the presence timer (diffs; the bridge heartbeats on its own).
    pub(super) fn start_presence(&mut self, ctx: &mut Context<Self>) {
        if self.presences.is_on() {
            ctx.run_interval(FLUSH_TICK, |hub, _| hub.presence_flush());
        }
    }
}

impl Handler<PresenceChanged> for Hub {
    type Result = ();

    fn handle(&mut self, msg: PresenceChanged, _: &mut Self::Context) {
        self.presences.apply(&msg.topic, msg.change);
    }
}

impl Handler<PresenceHeld> for Hub {
    type Result = ();

    /// A heartbeat's count: the backend holds this node's members, give or take the tracks
    /// still on their way; otherwise (it lost them, or declared this node gone while it was
    /// only cut off) the node writes them all again.
    fn handle(&mut self, msg: PresenceHeld, ctx: &mut Self::Context) {
        let low = self.presences.local_count() as u64;
        let high = low + self.presences.in_flight_count() as u64;
        if self.presences.take_unsynced() || !(low..=high).contains(&msg.held) {
            debug!(
                held = msg.held,
                low, high, "presence entries differ; syncing"
            );
            self.presence_sync(ctx);
        }
    }
}

impl Handler<PresenceResync> for Hub {
    type Result = ();

    fn handle(&mut self, _: PresenceResync, ctx: &mut Self::Context) {
        if !self.presences.is_on() {
            return;
        }
        // First this node's own members (the backend may have lost them), then every list,
        // on the same connection in that order.
        self.presence_sync(ctx);
        let topics: Vec<Topic> = self.presences.watched().cloned().collect();
        for topic in topics {
            if let Some(id) = self.presences.reload(&topic) {
                self.presence_load(topic, id, ctx);
            }
        }
    }
}

/// A socket changes its meta on a presence topic (`presence_update`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UpdatePresence {
    /// The session.
    pub session: SessionId,
    /// The topic.
    pub topic: Topic,
    /// The new meta.
    pub meta: Meta,
    /// Where the answer goes, when the client asked for one.
    pub reply: Option<(Recipient<PushAnswered>, PushAck)>,
}

impl Handler<UpdatePresence> for Hub {
    type Result = ();

    fn handle(&mut self, msg: UpdatePresence, ctx: &mut Self::Context) {
        let UpdatePresence {
            session,
            topic,
            meta,
            reply,
        } = msg;
        let answer = move |answer: PublishAnswer| {
            if let Some((reply, ack)) = reply.clone() {
                reply.do_send(PushAnswered { ack, answer });
            }
        };
        let Some((old, member)) = self.presences.member_of(session, &topic) else {
            return answer(PublishAnswer::Refused(
                "not a presence member of this topic".into(),
            ));
        };
        let old = old.to_owned();
        let updating = (session, topic.clone());
        if !self.updating.insert(updating.clone()) {
            return answer(PublishAnswer::Refused(
                "a presence update is in progress; wait for its reply".into(),
            ));
        }
        let member = Member {
            meta,
            prev: Some(old.clone()),
            ..member.clone()
        };
        let phx_ref = self.presences.new_ref();
        let op = PresenceOp::Track {
            topic: topic.clone(),
            phx_ref: phx_ref.clone(),
            member: member.clone(),
            max_members: self.presences.rules().max_members,
        };
        let Some(pending) = self.presence_op(op) else {
            self.updating.remove(&updating);
            self.presences.track(session, &topic, phx_ref, member);
            return answer(PublishAnswer::Everywhere);
        };
        self.presences.begin_track(&phx_ref, &topic, &member);
        ctx.spawn(pending.into_actor(self).map(move |outcome, hub, _| {
            hub.updating.remove(&updating);
            hub.presences.end_track(&phx_ref);
            let still = hub
                .presences
                .member_of(session, &topic)
                .is_some_and(|(current, _)| current == old);
            if !still {
                // The socket left meanwhile: the new member must not stay.
                hub.presence_untrack(topic, phx_ref);
                return answer(PublishAnswer::Refused("left the topic".into()));
            }
            let result = match outcome {
                Ok(Ok(PresenceReply::Tracked)) => PublishAnswer::Everywhere,
                Ok(Ok(PresenceReply::Full)) => {
                    hub.presence_untrack(topic, phx_ref);
                    return answer(PublishAnswer::Refused("the topic is full".into()));
                }
                other => {
                    warn!(%topic, ?other, "presence update not confirmed; syncing later");
                    hub.presences.mark_unsynced();
                    PublishAnswer::LocalOnly
                }
            };
            hub.presences.track(session, &topic, phx_ref, member);
            answer(result);
        }));
    }
}

/// `GET /api/presence`: a topic's members on every node, as a `presence_state` payload.
#[derive(Debug, Message)]
#[rtype(result = "Result<Payload, String>")]
pub struct ListPresence {
    /// The topic.
    pub topic: Topic,
}

impl Handler<ListPresence> for Hub {
    type Result = ResponseFuture<Result<Payload, String>>;

    fn handle(&mut self, msg: ListPresence, _: &mut Self::Context) -> Self::Result {
        let topic = msg.topic;
        if !self.presences.rules().applies(&topic) {
            return Box::pin(async move { Err(format!("topic {topic:?} tracks no presence")) });
        }
        let Some(answer) = self.presence_op(PresenceOp::List {
            topic: topic.clone(),
        }) else {
            let state = self
                .presences
                .topics
                .get_mut(&topic)
                .map_or_else(|| TopicPresence::new().state(), |w| w.table.state());
            return Box::pin(async move { Ok(state) });
        };
        Box::pin(async move {
            match answer.await {
                Ok(Ok(PresenceReply::Members(members))) => {
                    let mut table = TopicPresence::new();
                    table.resync(members);
                    Ok(table.state())
                }
                Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
                Ok(Err(reason)) => Err(reason),
                Err(_) => Err("the bridge stopped".into()),
            }
        })
    }
}

/// The node is shutting down: its members leave the backend at once instead of at the TTL.
/// Answered once the backend took it (or could not).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct LeavePresence;

impl Handler<LeavePresence> for Hub {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: LeavePresence, _: &mut Self::Context) -> Self::Result {
        let op = PresenceOp::Sync {
            node: self.presences.node().to_owned(),
            ttl: self.liveness(),
            entries: Vec::new(),
        };
        let answer = self
            .presences
            .is_on()
            .then(|| self.presence_op(op))
            .flatten();
        Box::pin(async move {
            if let Some(answer) = answer {
                let _ = answer.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use switchboard_core::presence::Meta;

    use super::*;

    fn presences() -> Presences {
        let mut rules = PresenceRules::none();
        rules.enable("room");
        Presences::new(Arc::new(rules), "n1".into())
    }

    fn topic() -> Topic {
        Topic::new("room:1").unwrap()
    }

    fn member(key: &str, node: &str) -> Member {
        Member {
            key: key.into(),
            meta: Meta::empty(),
            node: node.into(),
            prev: None,
        }
    }

    fn session(n: u64) -> SessionId {
        SessionId::from_raw(n)
    }

    #[test]
    fn a_read_keeps_changes_that_arrive_meanwhile_and_the_nodes_own_members() {
        let mut presences = presences();
        let Entered::First(id, _) = presences.enter(&topic()) else {
            panic!("the first join reads the list");
        };
        assert!(matches!(presences.enter(&topic()), Entered::Loading(_)));
        presences.apply(
            &topic(),
            Change::parse(br#"{"op":"leave","ref":"n2.1"}"#).unwrap(),
        );
        presences.track(session(1), &topic(), "n1.1".into(), member("ada", "n1"));
        let read = vec![
            ("n2.1".into(), member("bob", "n2")),
            ("n3.1".into(), member("cy", "n3")),
        ];
        assert!(!presences.loaded(&topic(), id, Some(read)));
        // bob left during the read; ada is this node's own.
        let table = presences.table(&topic()).unwrap();
        let keys: Vec<&str> = table.members().map(|(_, m)| m.key.as_str()).collect();
        assert_eq!(keys, ["ada", "cy"]);
    }

    #[test]
    fn diffs_are_batched_per_window_and_go_to_answered_watchers_only() {
        let mut presences = presences();
        let Entered::First(id, _) = presences.enter(&topic()) else {
            panic!("first");
        };
        presences.loaded(&topic(), id, Some(Vec::new()));
        presences.track(session(1), &topic(), "n1.1".into(), member("ada", "n1"));
        let state = presences.settle(session(1), &topic(), true).unwrap();
        assert!(state.get().contains("ada"));
        let now = Time::from_millis(1000);
        let due = presences.due(now);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].watchers, vec![session(1)]);
        presences.apply(
            &topic(),
            Change::parse(br#"{"op":"join","ref":"n2.1","node":"n2","key":"bob","meta":{}}"#)
                .unwrap(),
        );
        assert!(
            presences.due(now + Duration::from_millis(100)).is_empty(),
            "within the window"
        );
        let due = presences.due(now + BATCH_WINDOW);
        assert!(due[0].diff.get().contains("bob"));
        assert!(
            presences.due(now + BATCH_WINDOW * 3).is_empty(),
            "nothing new"
        );
    }

    #[test]
    fn a_session_that_goes_leaves_everywhere_and_topics_can_go() {
        let mut presences = presences();
        let Entered::First(id, _) = presences.enter(&topic()) else {
            panic!("first");
        };
        presences.loaded(&topic(), id, None);
        presences.track(session(1), &topic(), "n1.1".into(), member("ada", "n1"));
        presences.settle(session(1), &topic(), true);
        assert_eq!(presences.local_count(), 1);
        let (gone, watched) = presences.forget(session(1));
        assert_eq!(gone, vec![(topic(), "n1.1".to_owned())]);
        assert_eq!(watched, vec![topic()]);
        assert_eq!(presences.local_count(), 0);
        assert!(presences.drop_if_unwatched(&topic()));
        assert!(presences.table(&topic()).is_none());
    }
}
