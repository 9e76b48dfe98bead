//! The session table: JavaScript session names mapped onto core [`SessionId`]s, one handler
//! per subscription, and a core [`Registry`] that decides every routing question.
//!
//! Nothing here touches JavaScript: the handler type is a parameter, so the table is unit
//! tested natively with plain values and used from the bindings with JavaScript functions.

use std::collections::{BinaryHeap, HashMap};
use std::fmt;

use foldhash::fast::RandomState;

use switchboard_core::{
    topic, Registry, SessionId, SubscribeError, Subscribed, Topic, TopicError, Unsubscribed,
};

// Hash maps, not B-trees: hashbrown is already linked for the core registry, and B-tree code
// would add about 18 KB to the module. Order comes from sorting where it matters.
type Map<K, V> = HashMap<K, V, RandomState>;

/// Why [`Hub::subscribe`] refused: the topic breaks the topic rules, or the registry said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The topic is not a valid [`Topic`].
    Topic(TopicError),
    /// The registry refused (per-session limit).
    Subscribe(SubscribeError),
}

impl Refusal {
    /// The core error's stable code.
    pub(crate) const fn code(&self) -> &'static str {
        match self {
            Self::Topic(err) => err.code(),
            Self::Subscribe(err) => err.code(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Topic(err) => err.fmt(f),
            Self::Subscribe(err) => err.fmt(f),
        }
    }
}

/// One session the JavaScript side has used: its name and a handler per subscribed topic.
#[derive(Debug)]
struct Session<H> {
    name: String,
    handlers: Map<Topic, H>,
}

/// The in-memory pub/sub state behind `PubSub`: a core [`Registry`] (the single source of
/// truth for who listens to what) plus what the registry does not know: each session's
/// JavaScript name and the handler of each subscription.
///
/// # Driving contract
/// - A session name is connected to the registry the first time [`subscribe`](Self::subscribe)
///   uses it, and forgotten by [`disconnect`](Self::disconnect); a name used again after that
///   gets a new [`SessionId`] (the registry never reuses ids).
/// - A call that returns an error changed nothing.
/// - [`route`](Self::route) returns the handlers to call, in the order their sessions were
///   first used; the caller calls them after releasing its borrow of the hub, so a handler
///   may call back into the hub.
#[derive(Debug)]
pub(crate) struct Hub<H> {
    registry: Registry,
    ids: Map<String, SessionId>,
    sessions: Map<SessionId, Session<H>>,
}

impl<H: Clone> Hub<H> {
    /// An empty hub allowing each session at most `limit` topics.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            registry: Registry::with_max_topics_per_session(limit),
            ids: Map::default(),
            sessions: Map::default(),
        }
    }

    /// The per-session topic limit.
    pub(crate) const fn max_topics_per_session(&self) -> usize {
        self.registry.max_topics_per_session()
    }

    /// Subscribes session `name` to `topic` with `handler`, connecting the session on first
    /// use. Subscribing again to a topic the session holds replaces its handler (as a second
    /// `phx_join` replaces the membership on the node) and reports [`Subscribed::Already`].
    pub(crate) fn subscribe(
        &mut self,
        name: &str,
        topic: &str,
        handler: H,
    ) -> Result<Subscribed, Refusal> {
        let topic = Topic::new(topic).map_err(Refusal::Topic)?;
        let (id, is_new) = match self.ids.get(name) {
            Some(&id) => (id, false),
            None => (self.registry.connect(), true),
        };
        match self.registry.subscribe(id, &topic) {
            Ok(outcome) => {
                if is_new {
                    self.ids.insert(name.to_owned(), id);
                }
                self.sessions
                    .entry(id)
                    .or_insert_with(|| Session {
                        name: name.to_owned(),
                        handlers: Map::default(),
                    })
                    .handlers
                    .insert(topic, handler);
                Ok(outcome)
            }
            Err(err) => {
                if is_new {
                    // Leave no trace of a refused call: the session was connected only for it.
                    let _emptied = self.registry.disconnect(id);
                }
                Err(Refusal::Subscribe(err))
            }
        }
    }

    /// Unsubscribes session `name` from `topic`; `true` when it was subscribed.
    pub(crate) fn unsubscribe(&mut self, name: &str, topic: &str) -> Result<bool, TopicError> {
        topic::validate(topic)?;
        let Some(&id) = self.ids.get(name) else {
            return Ok(false);
        };
        match self.registry.unsubscribe(id, topic) {
            Unsubscribed::NotSubscribed => Ok(false),
            _ => {
                if let Some(session) = self.sessions.get_mut(&id) {
                    session.handlers.remove(topic);
                }
                Ok(true)
            }
        }
    }

    /// Unsubscribes session `name` from everything and forgets it; returns how many
    /// subscriptions it held (0 for a name never used).
    pub(crate) fn disconnect(&mut self, name: &str) -> usize {
        let Some(id) = self.ids.remove(name) else {
            return 0;
        };
        self.sessions.remove(&id);
        self.registry.disconnect(id).left
    }

    /// The handlers of `topic`'s subscribers, in the order their sessions were first used.
    pub(crate) fn route(&self, topic: &str) -> Result<Vec<H>, TopicError> {
        Ok(self
            .subscriber_ids(topic)?
            .into_iter()
            .filter_map(|id| self.sessions.get(&id)?.handlers.get(topic).cloned())
            .collect())
    }

    /// The names of `topic`'s subscribers, in the order their sessions were first used.
    pub(crate) fn subscribers(&self, topic: &str) -> Result<Vec<String>, TopicError> {
        Ok(self
            .subscriber_ids(topic)?
            .into_iter()
            .filter_map(|id| Some(self.sessions.get(&id)?.name.clone()))
            .collect())
    }

    fn subscriber_ids(&self, topic: &str) -> Result<Vec<SessionId>, TopicError> {
        topic::validate(topic)?;
        // Session ids are allocated in order of first use: sorting gives a stable, documented
        // delivery order instead of the registry's hash order. A binary heap sorts in
        // O(n log n) for about 2 KB less gzipped module than `slice::sort_unstable`.
        let ids: BinaryHeap<SessionId> = self.registry.subscribers(topic).collect();
        Ok(ids.into_sorted_vec())
    }

    /// Every topic with at least one subscriber, sorted.
    pub(crate) fn topics(&self) -> Vec<String> {
        let mut topics: Vec<Topic> = self.registry.topics().cloned().collect();
        // Sorting `Topic`s (not `String`s) reuses the sort the core already links.
        topics.sort_unstable();
        topics.iter().map(Topic::to_string).collect()
    }

    /// Sessions in use (subscribed at least once, not yet disconnected).
    pub(crate) fn session_count(&self) -> usize {
        self.registry.session_count()
    }

    /// (session, topic) pairs.
    pub(crate) const fn subscription_count(&self) -> usize {
        self.registry.subscription_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_hub(limit: usize) -> Hub<&'static str> {
        Hub::new(limit)
    }

    /// The registry and the handler table describe the same subscriptions.
    fn assert_consistent(hub: &Hub<&'static str>) {
        let handlers: usize = hub.sessions.values().map(|s| s.handlers.len()).sum();
        assert_eq!(handlers, hub.subscription_count());
        assert_eq!(hub.ids.len(), hub.session_count());
        assert_eq!(hub.sessions.len(), hub.session_count());
        for (name, id) in &hub.ids {
            assert_eq!(&hub.sessions[id].name, name);
            for topic in hub.sessions[id].handlers.keys() {
                assert!(hub.registry.is_subscribed(*id, topic.as_str()));
            }
        }
    }

    #[test]
    fn routes_in_first_use_order_and_replaces_handlers() {
        let mut hub = new_hub(100);
        assert_eq!(hub.subscribe("b", "room", "b1"), Ok(Subscribed::FirstLocal));
        assert_eq!(hub.subscribe("a", "room", "a1"), Ok(Subscribed::Joined));
        assert_eq!(hub.subscribe("b", "room", "b2"), Ok(Subscribed::Already));
        assert_eq!(hub.route("room"), Ok(vec!["b2", "a1"]));
        assert_eq!(hub.subscribers("room"), Ok(vec!["b".into(), "a".into()]));
        assert_eq!(hub.route("nobody"), Ok(vec![]));
        assert_consistent(&hub);
    }

    #[test]
    fn refused_calls_leave_no_trace() {
        let mut hub = new_hub(1);
        assert_eq!(
            hub.subscribe("a", "", "h"),
            Err(Refusal::Topic(TopicError::Empty))
        );
        assert_eq!(hub.session_count(), 0);
        assert!(hub.subscribe("a", "x", "h").is_ok());
        let refused = hub.subscribe("a", "y", "h").unwrap_err();
        assert_eq!(refused.code(), "too_many_topics");
        assert_eq!(refused.to_string(), "too many topics joined (limit 1)");
        assert_eq!(hub.topics(), ["x"]);
        let mut zero = new_hub(0);
        assert!(zero.subscribe("a", "x", "h").is_err());
        assert_eq!(zero.session_count(), 0);
        assert_consistent(&hub);
    }

    #[test]
    fn unsubscribe_and_disconnect() {
        let mut hub = new_hub(100);
        let _ = hub.subscribe("a", "x", "ax");
        let _ = hub.subscribe("a", "y", "ay");
        let _ = hub.subscribe("b", "y", "by");
        assert_eq!(hub.unsubscribe("a", "x"), Ok(true));
        assert_eq!(hub.unsubscribe("a", "x"), Ok(false));
        assert_eq!(hub.unsubscribe("nobody", "x"), Ok(false));
        assert_eq!(
            hub.unsubscribe("a", "bad\n"),
            Err(TopicError::ControlCharacter { position: 3 })
        );
        assert_eq!(hub.topics(), ["y"]);
        assert_eq!(hub.disconnect("a"), 1);
        assert_eq!(hub.disconnect("a"), 0);
        assert_eq!(hub.route("y"), Ok(vec!["by"]));
        assert_eq!((hub.session_count(), hub.subscription_count()), (1, 1));
        // A name used again after disconnecting is a new session, last in delivery order.
        let _ = hub.subscribe("a", "y", "ay2");
        assert_eq!(hub.route("y"), Ok(vec!["by", "ay2"]));
        assert_consistent(&hub);
    }
}
