//! The hub's share of history: the memory backend's streams, and the sessions that are
//! recovering a topic while its history is read.
//!
//! A session that joins a topic with history is subscribed at once (so nothing published from
//! then on is missed), but its deliveries of that topic are diverted into a bounded buffer
//! until the history has been read; [`recover`](switchboard_core::history::recovery::recover)
//! then merges the two, and the hub hands the session the result before any later delivery.
//!
//! The live copy of a publication and the history read travel different paths (the backend's
//! subscriber connection, its command connection), so a publication the read returned may
//! still arrive live afterwards. A finished recovery leaves a *floor* at the position it
//! delivered up to: live publications at or below it are not delivered to that session again.
//! The floor goes once the live stream passes it (it is ordered) or the session leaves.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hasher as _};

use switchboard_core::history::recovery::{HistoryRead, Publication};
use switchboard_core::history::ring::Ring;
use switchboard_core::history::{Epoch, HistoryRules, Position, Retention};
use switchboard_core::{Payload, SessionId, Time, Topic};

/// Most publications buffered for one recovering session; past it the recovery fails
/// (`recovered: false`) rather than holding more.
pub const MAX_RECOVERY_BUFFER: usize = 10_000;
/// Most bytes buffered for one recovering session.
pub const MAX_RECOVERY_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// One session recovering one topic.
#[derive(Debug)]
pub struct Recovering {
    id: u64,
    /// The session.
    pub session: SessionId,
    /// What arrived live since it was subscribed.
    pub live: Vec<Publication>,
    bytes: usize,
    /// Whether the buffer passed its bound (and lost publications).
    pub overflowed: bool,
}

/// History as the hub keeps it.
#[derive(Debug)]
pub struct Histories {
    rules: HistoryRules,
    /// The memory backend's streams (a backend keeps its own).
    rings: HashMap<Topic, Ring>,
    recovering: HashMap<Topic, Vec<Recovering>>,
    /// Where each finished recovery delivered up to, until the live stream passes it.
    floors: HashMap<Topic, Vec<(SessionId, Position)>>,
    /// The furthest position of each topic this node has seen (live, or answered to a join)
    /// while its sockets follow the topic: the next live publication must be the one after.
    heads: HashMap<Topic, Position>,
    next: u64,
    random: RandomState,
}

impl Histories {
    /// History for the topics `rules` name.
    #[must_use]
    pub fn new(rules: HistoryRules) -> Self {
        Self {
            rules,
            rings: HashMap::new(),
            recovering: HashMap::new(),
            floors: HashMap::new(),
            heads: HashMap::new(),
            next: 0,
            random: RandomState::new(),
        }
    }

    /// How much of `topic`'s stream is kept, if it has history.
    #[must_use]
    pub fn retention(&self, topic: &Topic) -> Option<Retention> {
        self.rules.retention(topic)
    }

    /// A new epoch: a random draw, so a restarted node never reuses one.
    fn new_epoch(&mut self) -> Epoch {
        self.next += 1;
        let mut hasher = self.random.build_hasher();
        hasher.write_u64(self.next);
        hasher.write_u32(std::process::id());
        Epoch::from_number(hasher.finish() >> 1)
    }

    /// The memory stream of `topic` at `now`, started (with a new epoch) when it has none or
    /// it expired.
    fn ring(&mut self, topic: &Topic, retention: Retention, now: Time) -> &mut Ring {
        let fresh = self
            .rings
            .get(topic)
            .is_none_or(|ring| ring.is_expired(now));
        if fresh {
            let epoch = self.new_epoch();
            let ring = Ring::new(epoch, retention.size as usize, retention.ttl, now);
            self.rings.insert(topic.clone(), ring);
        }
        // unwrap: inserted just above when absent.
        self.rings.get_mut(topic).expect("the ring exists")
    }

    /// Appends a publication to `topic`'s memory stream: its position.
    pub fn append(
        &mut self,
        topic: &Topic,
        retention: Retention,
        event: String,
        payload: Payload,
        now: Time,
    ) -> Position {
        self.ring(topic, retention, now).append(event, payload, now)
    }

    /// Reads `topic`'s memory stream after `after` (at most `limit`).
    pub fn read(
        &mut self,
        topic: &Topic,
        retention: Retention,
        after: u64,
        limit: usize,
        now: Time,
    ) -> HistoryRead {
        self.ring(topic, retention, now).read(after, limit)
    }

    /// Starts buffering `topic`'s deliveries for `session`: the recovery's id.
    pub fn begin_recovery(&mut self, topic: &Topic, session: SessionId) -> u64 {
        self.next += 1;
        let id = self.next;
        self.recovering
            .entry(topic.clone())
            .or_default()
            .push(Recovering {
                id,
                session,
                live: Vec::new(),
                bytes: 0,
                overflowed: false,
            });
        id
    }

    /// Ends recovery `id` of `topic`: what was buffered (`None` when it was already ended).
    pub fn end_recovery(&mut self, topic: &Topic, id: u64) -> Option<Recovering> {
        let list = self.recovering.get_mut(topic)?;
        let index = list.iter().position(|r| r.id == id)?;
        let recovering = list.swap_remove(index);
        if list.is_empty() {
            self.recovering.remove(topic);
        }
        Some(recovering)
    }

    /// Ends every recovery of `session` (it went away).
    pub fn forget(&mut self, session: SessionId) {
        self.recovering.retain(|_, list| {
            list.retain(|r| r.session != session);
            !list.is_empty()
        });
        self.floors.retain(|_, list| {
            list.retain(|(id, _)| *id != session);
            !list.is_empty()
        });
    }

    /// `session`'s recovery of `topic` delivered everything up to `position`: live copies at
    /// or below it are duplicates.
    pub fn set_floor(&mut self, topic: &Topic, session: SessionId, position: Position) {
        let list = self.floors.entry(topic.clone()).or_default();
        list.retain(|(id, _)| *id != session);
        list.push((session, position));
    }

    /// `session` left `topic`: its floor there goes.
    pub fn leave(&mut self, session: SessionId, topic: &Topic) {
        if let Some(list) = self.floors.get_mut(topic) {
            list.retain(|(id, _)| *id != session);
            if list.is_empty() {
                self.floors.remove(topic);
            }
        }
    }

    /// The sessions that already have the live publication at `position` of `topic` from
    /// their recovery; floors the live stream has passed are dropped.
    pub fn delivered_already(&mut self, topic: &Topic, position: &Position) -> Vec<SessionId> {
        let Some(list) = self.floors.get_mut(topic) else {
            return Vec::new();
        };
        let mut already = Vec::new();
        list.retain(|(session, floor)| {
            if floor.epoch == position.epoch && position.offset <= floor.offset {
                already.push(*session);
                true
            } else {
                false
            }
        });
        if list.is_empty() {
            self.floors.remove(topic);
        }
        already
    }

    /// The sessions recovering `topic`, whose deliveries are buffered instead.
    pub fn recovering(&self, topic: &Topic) -> impl Iterator<Item = SessionId> + '_ {
        self.recovering
            .get(topic)
            .into_iter()
            .flatten()
            .map(|r| r.session)
    }

    /// Whether any session recovers `topic`.
    #[must_use]
    pub fn is_recovering(&self, topic: &Topic) -> bool {
        self.recovering.contains_key(topic)
    }

    /// Buffers a live publication of `topic` for every session recovering it.
    pub fn buffer(&mut self, topic: &Topic, publication: &Publication) {
        let Some(list) = self.recovering.get_mut(topic) else {
            return;
        };
        let bytes = publication.event.len() + publication.payload.get().len();
        for recovering in list {
            if recovering.overflowed {
                continue;
            }
            if recovering.live.len() >= MAX_RECOVERY_BUFFER
                || recovering.bytes + bytes > MAX_RECOVERY_BUFFER_BYTES
            {
                recovering.overflowed = true;
                recovering.live = Vec::new();
                recovering.bytes = 0;
                continue;
            }
            recovering.bytes += bytes;
            recovering.live.push(publication.clone());
        }
    }

    /// A live publication of `topic` at `position` arrived: whether publications before it
    /// never did (the same epoch, and not the one after the furthest seen). Another epoch is
    /// a new stream (the old one expired or was lost), not a gap: it starts over.
    pub fn follow(&mut self, topic: &Topic, position: &Position) -> bool {
        match self.heads.get_mut(topic) {
            Some(head) if head.epoch == position.epoch => {
                let skipped = position.offset > head.offset.saturating_add(1);
                if position.offset > head.offset {
                    head.offset = position.offset;
                }
                skipped
            }
            Some(head) => {
                *head = position.clone();
                false
            }
            None => {
                self.heads.insert(topic.clone(), position.clone());
                false
            }
        }
    }

    /// A join of `topic` was answered with `position` (the stream's head when it was read):
    /// live publications after it must follow on from it.
    pub fn joined_at(&mut self, topic: &Topic, position: &Position) {
        match self.heads.get_mut(topic) {
            Some(head) if head.epoch == position.epoch && head.offset >= position.offset => {}
            Some(head) => *head = position.clone(),
            None => {
                self.heads.insert(topic.clone(), position.clone());
            }
        }
    }

    /// No socket here follows `topic` any more (or its stream was ended): forget its head.
    pub fn unfollow(&mut self, topic: &Topic) {
        self.heads.remove(topic);
    }

    /// The link to the backend was lost: every head is stale.
    pub fn unfollow_all(&mut self) {
        self.heads.clear();
    }

    /// Ends every recovery of `topic` by `session` (its membership was ended): its join is
    /// answered as one whose session went away.
    pub fn abandon_recovery(&mut self, topic: &Topic, session: SessionId) {
        if let Some(list) = self.recovering.get_mut(topic) {
            list.retain(|r| r.session != session);
            if list.is_empty() {
                self.recovering.remove(topic);
            }
        }
    }

    /// Drops memory streams quiet for their TTL (the next publication starts a new epoch).
    pub fn sweep(&mut self, now: Time) {
        self.rings.retain(|_, ring| !ring.is_expired(now));
    }

    /// Memory streams kept, and the bytes of their publications.
    #[must_use]
    pub fn usage(&self) -> (usize, usize) {
        (self.rings.len(), self.rings.values().map(Ring::bytes).sum())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn retention() -> Retention {
        Retention {
            size: 3,
            ttl: Duration::from_secs(10),
        }
    }

    fn topic() -> Topic {
        Topic::new("feed:1").unwrap()
    }

    fn at(position: &str) -> Position {
        position.parse().unwrap()
    }

    #[test]
    fn a_skipped_offset_is_a_gap_and_another_epoch_starts_over() {
        let mut histories = Histories::new(HistoryRules::default());
        let t = topic();
        assert!(!histories.follow(&t, &at("5:e")), "the first one seen");
        assert!(!histories.follow(&t, &at("6:e")));
        assert!(!histories.follow(&t, &at("6:e")), "a repeat is not a gap");
        assert!(
            !histories.follow(&t, &at("4:e")),
            "an older one is not a gap"
        );
        assert!(histories.follow(&t, &at("8:e")), "7 never arrived");
        assert!(!histories.follow(&t, &at("9:e")));
        assert!(!histories.follow(&t, &at("1:f")), "a new stream");
        assert!(!histories.follow(&t, &at("2:f")));
        histories.unfollow(&t);
        assert!(!histories.follow(&t, &at("9:f")), "forgotten: starts over");
    }

    #[test]
    fn a_join_answer_moves_the_head_forward_only() {
        let mut histories = Histories::new(HistoryRules::default());
        let t = topic();
        histories.joined_at(&t, &at("10:e"));
        assert!(
            !histories.follow(&t, &at("9:e")),
            "a live copy the read had"
        );
        assert!(!histories.follow(&t, &at("11:e")));
        histories.joined_at(&t, &at("3:e"));
        assert!(histories.follow(&t, &at("13:e")), "the head stayed at 11");
        histories.joined_at(&t, &at("2:g"));
        assert!(
            histories.follow(&t, &at("4:g")),
            "the join's epoch is the stream's"
        );
        histories.unfollow_all();
        assert!(!histories.follow(&t, &at("9:g")));
    }

    #[test]
    fn memory_streams_count_up_and_restart_with_a_new_epoch_after_their_ttl() {
        let mut histories = Histories::new(HistoryRules::none());
        let payload = Payload::empty_object();
        let first = histories.append(
            &topic(),
            retention(),
            "m".into(),
            payload.clone(),
            Time::ZERO,
        );
        let second = histories.append(
            &topic(),
            retention(),
            "m".into(),
            payload.clone(),
            Time::from_millis(5),
        );
        assert_eq!((first.offset, second.offset), (1, 2));
        assert_eq!(first.epoch, second.epoch);
        let later = Time::from_millis(20_000);
        let restarted = histories.append(&topic(), retention(), "m".into(), payload, later);
        assert_eq!(restarted.offset, 1);
        assert_ne!(restarted.epoch, first.epoch);
    }

    #[test]
    fn recovering_sessions_buffer_until_their_recovery_ends() {
        let mut histories = Histories::new(HistoryRules::none());
        let (a, b) = (SessionId::from_raw(1), SessionId::from_raw(2));
        let id = histories.begin_recovery(&topic(), a);
        let _ = histories.begin_recovery(&topic(), b);
        let publication = Publication {
            position: "1:e".parse().unwrap(),
            event: "m".into(),
            payload: Payload::empty_object(),
        };
        histories.buffer(&topic(), &publication);
        assert_eq!(histories.recovering(&topic()).count(), 2);
        let ended = histories.end_recovery(&topic(), id).unwrap();
        assert_eq!(ended.live, vec![publication]);
        assert!(histories.end_recovery(&topic(), id).is_none());
        histories.forget(b);
        assert!(!histories.is_recovering(&topic()));
    }

    #[test]
    fn a_floor_skips_live_copies_of_what_a_recovery_delivered_until_the_stream_passes_it() {
        let mut histories = Histories::new(HistoryRules::none());
        let (a, b) = (SessionId::from_raw(1), SessionId::from_raw(2));
        let at = |text: &str| -> Position { text.parse().unwrap() };
        histories.set_floor(&topic(), a, at("5:e"));
        histories.set_floor(&topic(), b, at("3:e"));
        assert_eq!(
            histories.delivered_already(&topic(), &at("3:e")),
            vec![a, b]
        );
        assert_eq!(histories.delivered_already(&topic(), &at("4:e")), vec![a]);
        assert_eq!(histories.delivered_already(&topic(), &at("5:e")), vec![a]);
        assert_eq!(histories.delivered_already(&topic(), &at("6:e")), vec![]);
        assert_eq!(
            histories.delivered_already(&topic(), &at("5:e")),
            vec![],
            "floors passed"
        );
        histories.set_floor(&topic(), a, at("9:e"));
        assert_eq!(
            histories.delivered_already(&topic(), &at("1:other")),
            vec![],
            "new epoch"
        );
        histories.set_floor(&topic(), a, at("9:e"));
        histories.leave(a, &topic());
        assert_eq!(histories.delivered_already(&topic(), &at("2:e")), vec![]);
    }
}
