//! The hub's share of a [`LocalServer`](super::LocalServer), as the node's hub keeps it on a
//! node without a backend: who listens to what, the presence list of every watched topic and
//! the history stream of every topic with history.

use crate::codec::encode_parts;
use crate::connection::{JoinAnswer, JoinRefusal, PresenceJoin, PublishAnswer, Reach};
use crate::history::recovery::{recover, Publication};
use crate::history::ring::Ring;
use crate::history::{Epoch, Position, Retention};
use crate::presence::{self, Meta};
use crate::{Payload, Registry, SessionId, SubscribeError, Time, Topic};

use super::list::{Entry, List};
use super::{sorted, Outgoing, PRESENCE_BATCH_WINDOW};

/// The hub's share of a [`LocalServer`](super::LocalServer): apart from the connections so both can be borrowed
/// at once.
#[derive(Debug)]
pub(super) struct Hub {
    pub(super) registry: Registry,
    pub(super) max_members: usize,
    /// History per namespace (`"*"`: every namespace not listed): a list rather than
    /// [`HistoryRules`](crate::history::HistoryRules)' map, for the module's size.
    pub(super) history: Vec<(String, Retention)>,
    /// Topics with presence someone watches (lists for the same reason as `connections`).
    pub(super) presences: Vec<(Topic, Watched)>,
    /// The streams of topics with history.
    pub(super) streams: Vec<(Topic, Ring)>,
    /// Makes epochs and this server's id.
    pub(super) seed: u64,
    /// This server's id: the `<node>` of its `phx_ref`s.
    pub(super) node: String,
    /// `phx_ref`s and epochs drawn so far.
    pub(super) drawn: u64,
}

/// A topic with presence that sockets watch.
#[derive(Debug, Default)]
pub(super) struct Watched {
    pub(super) table: List,
    /// Sockets whose join was answered: they get the diffs.
    pub(super) watchers: Vec<SessionId>,
    /// The members sockets hold: `(socket, phx_ref)`.
    pub(super) members: Vec<(SessionId, String)>,
    /// When the last diff went out.
    pub(super) last_diff: Option<Time>,
}

/// What a join came to.
#[derive(Debug)]
pub(super) struct Entered {
    pub(super) answer: JoinAnswer,
    /// For a topic with presence: its list, for the socket right after the reply.
    pub(super) state: Option<Payload>,
    /// For a topic with history: what the socket missed, after the reply and the list.
    pub(super) recovered: Vec<Publication>,
}

impl Hub {
    /// A hub with `registry`, no presence or history yet, named after seed 0.
    pub(super) fn new(registry: Registry) -> Self {
        let mut hub = Self {
            registry,
            max_members: presence::DEFAULT_MAX_MEMBERS,
            history: Vec::new(),
            presences: Vec::new(),
            streams: Vec::new(),
            seed: 0,
            node: String::new(),
            drawn: 0,
        };
        hub.name(0);
        hub
    }

    /// Names the server after `seed`.
    pub(super) fn name(&mut self, seed: u64) {
        self.seed = seed;
        self.node = Epoch::from_number(mix(seed)).to_string();
    }

    /// How much of `topic`'s stream is kept: its namespace's retention, else `"*"`'s.
    pub(super) fn retention(&self, topic: &Topic) -> Option<Retention> {
        let of = |namespace: &str| {
            self.history
                .iter()
                .find(|(listed, _)| listed == namespace)
                .map(|(_, retention)| *retention)
        };
        of(topic.namespace()).or_else(|| of("*"))
    }

    /// A `phx_ref` no other member of this server has.
    pub(super) fn new_ref(&mut self) -> String {
        self.drawn += 1;
        format!("{}.{}", self.node, self.drawn)
    }

    /// A new epoch, never one this server (or one with another seed) gave before.
    pub(super) fn new_epoch(&mut self) -> Epoch {
        self.drawn += 1;
        Epoch::from_number(mix(self.seed ^ mix(self.drawn)))
    }

    /// `topic`'s list, while sockets watch it.
    pub(super) fn watched(&mut self, topic: &Topic) -> Option<&mut Watched> {
        self.presences
            .iter_mut()
            .find(|(watched, _)| watched == topic)
            .map(|(_, watched)| watched)
    }

    /// `topic`'s stream at `now`, started (with a new epoch) when it has none or it expired.
    pub(super) fn stream(&mut self, topic: &Topic, now: Time) -> Option<&mut Ring> {
        let retention = self.retention(topic)?;
        let index = match self.streams.iter().position(|(stream, _)| stream == topic) {
            Some(index) if !self.streams[index].1.is_expired(now) => index,
            found => {
                let epoch = self.new_epoch();
                let ring = Ring::new(epoch, retention.size as usize, retention.ttl, now);
                match found {
                    Some(index) => {
                        self.streams[index].1 = ring;
                        index
                    }
                    None => {
                        self.streams.push((topic.clone(), ring));
                        self.streams.len() - 1
                    }
                }
            }
        };
        Some(&mut self.streams[index].1)
    }

    /// Subscribes `id` to `topic`, tracks its member on a presence topic, and reads what it
    /// missed on a topic with history, as the node's hub answers a `Subscribe`.
    pub(super) fn join(
        &mut self,
        id: SessionId,
        topic: &Topic,
        since: Option<Position>,
        presence: Option<PresenceJoin>,
        now: Time,
    ) -> Entered {
        let refused = |refusal| Entered {
            answer: JoinAnswer::Refused(refusal),
            state: None,
            recovered: Vec::new(),
        };
        match self.registry.subscribe(id, topic) {
            Ok(_) => {}
            Err(SubscribeError::TooManyTopics { .. }) => {
                return refused(JoinRefusal::TooManyTopics)
            }
            Err(_) => return refused(JoinRefusal::Unavailable),
        }
        let watching = presence.is_some();
        if let Some(presence) = presence {
            if let Err(refusal) = self.track(id, topic, presence) {
                let _ = self.registry.unsubscribe(id, topic.as_str());
                self.prune();
                return refused(refusal);
            }
        }
        let (answer, recovered) = match self.stream(topic, now) {
            None => (JoinAnswer::Joined(Reach::Everywhere), Vec::new()),
            Some(ring) => {
                let limit = since.as_ref().map_or(0, |_| ring.len());
                let after = since.as_ref().map_or(0, |since| since.offset);
                let recovery = recover(since.as_ref(), ring.read(after, limit), Vec::new());
                let answer = JoinAnswer::JoinedAt {
                    position: recovery.position,
                    recovered: recovery.recovered,
                };
                (answer, recovery.deliver)
            }
        };
        let state = if watching {
            self.watched(topic).map(|watched| {
                watched.watchers.push(id);
                watched.table.state()
            })
        } else {
            None
        };
        Entered {
            answer,
            state,
            recovered,
        }
    }

    /// Enters presence topic `topic` for `id`: a watcher, and a member when it has a key
    /// (refused when the topic holds [`PresenceRules::max_members`]).
    pub(super) fn track(
        &mut self,
        id: SessionId,
        topic: &Topic,
        presence: PresenceJoin,
    ) -> Result<(), JoinRefusal> {
        let max = self.max_members;
        let phx_ref = presence.key.as_ref().map(|_| self.new_ref());
        let index = match self.presences.iter().position(|(t, _)| t == topic) {
            Some(index) => index,
            None => {
                self.presences.push((topic.clone(), Watched::default()));
                self.presences.len() - 1
            }
        };
        let watched = &mut self.presences[index].1;
        let (Some(key), Some(phx_ref)) = (presence.key, phx_ref) else {
            return Ok(());
        };
        if watched.table.len() >= max {
            return Err(JoinRefusal::PresenceFull { max });
        }
        watched.members.push((id, phx_ref.clone()));
        watched.table.track(Entry {
            phx_ref,
            key,
            meta: presence.meta,
            prev: None,
        });
        Ok(())
    }

    /// `id`'s new meta on `topic` (`presence_update`): its member is replaced by one with a
    /// new `phx_ref`, which names the old one as `phx_ref_prev`.
    pub(super) fn update(&mut self, id: SessionId, topic: &Topic, meta: Meta) -> PublishAnswer {
        let phx_ref = self.new_ref();
        let watched = self.watched(topic);
        let Some((slot, entries)) = watched.and_then(|watched| {
            let slot = watched
                .members
                .iter_mut()
                .find(|(session, _)| *session == id)?;
            Some((slot, &mut watched.table))
        }) else {
            return PublishAnswer::Refused("not a presence member of this topic".into());
        };
        let old = std::mem::replace(&mut slot.1, phx_ref.clone());
        let key = entries
            .members
            .iter()
            .find(|entry| entry.phx_ref == old)
            .map(|entry| entry.key.clone())
            .unwrap_or_default();
        entries.track(Entry {
            phx_ref,
            key,
            meta,
            prev: Some(old),
        });
        PublishAnswer::Everywhere
    }

    /// `id` left `topic`: unsubscribed, and on a presence topic its member leaves and it stops
    /// watching.
    pub(super) fn leave(&mut self, id: SessionId, topic: &Topic) {
        let _ = self.registry.unsubscribe(id, topic.as_str());
        if let Some(watched) = self.watched(topic) {
            watched.unwatch(id);
            self.prune();
        }
    }

    /// Everything presence knew of `id` (it went away).
    pub(super) fn forget(&mut self, id: SessionId) {
        for (_, watched) in &mut self.presences {
            watched.unwatch(id);
        }
        self.prune();
    }

    /// Forgets the lists nobody watches any more (their pending diffs and windows go with
    /// them, as on the node). Every other list has a watcher or a member, so only the ones a
    /// change has just emptied go.
    pub(super) fn prune(&mut self) {
        self.presences
            .retain(|(_, watched)| !watched.watchers.is_empty() || !watched.members.is_empty());
    }

    /// Publishes to every subscriber of `topic` (with the next position, on a topic with
    /// history): its position.
    pub(super) fn publish(
        &mut self,
        topic: &Topic,
        event: &str,
        payload: &Payload,
        now: Time,
        out: &mut Vec<Outgoing>,
    ) -> Option<Position> {
        let position = self
            .stream(topic, now)
            .map(|ring| ring.append(event.to_owned(), payload.clone(), now));
        let subscribers = sorted(self.registry.subscribers(topic.as_str()));
        if !subscribers.is_empty() {
            let slot = position.as_ref().map(ToString::to_string);
            let text = encode_parts(None, slot.as_deref(), topic.as_str(), event, payload.get());
            out.extend(subscribers.into_iter().map(|to| Outgoing::Frame {
                to,
                text: text.clone(),
            }));
        }
        position
    }

    /// Sends the presence diffs due at `now`: at most one per topic per
    /// [`PRESENCE_BATCH_WINDOW`], to the sockets whose join was answered.
    pub(super) fn flush(&mut self, now: Time, out: &mut Vec<Outgoing>) {
        for (topic, watched) in &mut self.presences {
            let waiting = watched
                .last_diff
                .is_some_and(|last| now.saturating_duration_since(last) < PRESENCE_BATCH_WINDOW);
            if waiting {
                continue;
            }
            let Some(diff) = watched.table.take_diff() else {
                continue;
            };
            watched.last_diff = Some(now);
            let watchers = sorted(watched.watchers.iter().copied());
            if watchers.is_empty() {
                continue;
            }
            let text = encode_parts(
                None,
                None,
                topic.as_str(),
                presence::PRESENCE_DIFF,
                diff.get(),
            );
            out.extend(watchers.into_iter().map(|to| Outgoing::Frame {
                to,
                text: text.clone(),
            }));
        }
    }
}

impl Watched {
    /// `id` no longer watches: its member (if any) leaves.
    pub(super) fn unwatch(&mut self, id: SessionId) {
        self.watchers.retain(|watcher| *watcher != id);
        let table = &mut self.table;
        self.members.retain(|(session, phx_ref)| {
            if *session == id {
                table.untrack(phx_ref);
                return false;
            }
            true
        });
    }
}

/// SplitMix64's finaliser: spreads a seed and a counter over every bit, deterministically.
const fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
