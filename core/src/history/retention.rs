//! Which topics keep history, and how much: per namespace, as the configuration's
//! `[channels.<namespace>]` tables say (`history = N`, `history_ttl = "10m"`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Topic;

/// The default time a stream is kept after its last publication.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

/// How much of a topic's stream is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Retention {
    /// Publications kept (the newest).
    pub size: u32,
    /// The stream is gone once nothing was published for this long (and a new one, with a
    /// new epoch, starts at the next publication).
    pub ttl: Duration,
}

/// History retention per namespace (`"*"` for namespaces not listed). A topic whose
/// namespace has none keeps no history and behaves as it always did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRules {
    namespaces: BTreeMap<String, Retention>,
    fallback: Option<Retention>,
}

impl HistoryRules {
    /// No history anywhere.
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// Sets `namespace`'s retention (`"*"`: every namespace not listed).
    pub fn set(&mut self, namespace: &str, retention: Retention) {
        if namespace == "*" {
            self.fallback = Some(retention);
        } else {
            self.namespaces.insert(namespace.to_owned(), retention);
        }
    }

    /// The retention of `topic`, if it keeps history.
    #[must_use]
    pub fn retention(&self, topic: &Topic) -> Option<Retention> {
        self.namespaces
            .get(topic.namespace())
            .copied()
            .or(self.fallback)
    }

    /// Whether any topic keeps history.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.fallback.is_none()
    }

    /// Every namespace with history and its retention (`"*"` last, if set), for backends
    /// that carry the rules into their own functions.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Retention)> + '_ {
        self.namespaces
            .iter()
            .map(|(namespace, retention)| (namespace.as_str(), *retention))
            .chain(self.fallback.map(|retention| ("*", retention)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_then_the_fallback() {
        let mut rules = HistoryRules::none();
        assert!(rules.is_empty());
        let feed = Retention {
            size: 100,
            ttl: DEFAULT_TTL,
        };
        rules.set("feed", feed);
        let topic = |name: &str| Topic::new(name).unwrap();
        assert_eq!(rules.retention(&topic("feed:42")), Some(feed));
        assert_eq!(rules.retention(&topic("room:1")), None);
        let any = Retention {
            size: 10,
            ttl: Duration::from_secs(60),
        };
        rules.set("*", any);
        assert_eq!(rules.retention(&topic("room:1")), Some(any));
        assert_eq!(
            rules.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["feed", "*"]
        );
    }
}
