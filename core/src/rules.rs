//! Channel rules: who may join a topic and who may push to it, per namespace.
//!
//! A rule is evaluated against the topic and the connecting user (the token's `sub`, or
//! nobody for an unauthenticated socket). Evaluation is pure: the node supplies the user.

use crate::compact::Map;
use crate::Topic;

/// Who a rule admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Rule {
    /// Every socket, authenticated or not.
    Anyone,
    /// Every socket with a valid token.
    Authenticated,
    /// A socket whose user is the topic's key: the part after the first `:` equals the
    /// token's `sub` (`auditlog:42` for user `42`).
    Owner,
    /// No socket (server-side producers still publish over HTTP or the backend).
    Nobody,
}

impl Rule {
    /// The rule's name as written in configuration.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Anyone => "anyone",
            Self::Authenticated => "authenticated",
            Self::Owner => "owner",
            Self::Nobody => "nobody",
        }
    }

    /// Whether `user` (`None`: not authenticated) passes this rule for `topic`.
    #[must_use]
    pub fn admits(self, topic: &Topic, user: Option<&str>) -> bool {
        match self {
            Self::Anyone => true,
            Self::Authenticated => user.is_some(),
            Self::Owner => match (user, topic.key()) {
                (Some(user), Some(key)) => !user.is_empty() && user == key,
                _ => false,
            },
            Self::Nobody => false,
        }
    }
}

/// Why a rule name could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rule {0:?}: expected anyone, authenticated, owner or nobody")]
pub struct UnknownRule(pub String);

impl std::str::FromStr for Rule {
    type Err = UnknownRule;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "anyone" => Ok(Self::Anyone),
            "authenticated" => Ok(Self::Authenticated),
            "owner" => Ok(Self::Owner),
            "nobody" => Ok(Self::Nobody),
            other => Err(UnknownRule(other.to_owned())),
        }
    }
}

/// The join and push rules of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Access {
    /// Who may join.
    pub join: Rule,
    /// Who may push (publish from a socket).
    pub push: Rule,
}

impl Access {
    /// The default for a namespace nobody configured on a node with tokens: a user may join
    /// only their own topics and no socket may push.
    pub const SECURE_DEFAULT: Self = Self {
        join: Rule::Owner,
        push: Rule::Nobody,
    };

    /// Everything allowed: a node without a token secret, for development.
    pub const OPEN: Self = Self {
        join: Rule::Anyone,
        push: Rule::Anyone,
    };
}

/// The rules of every namespace, and the rule for namespaces not listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRules {
    namespaces: Map<String, Access>,
    fallback: Access,
}

impl ChannelRules {
    /// Rules where unlisted namespaces get `fallback`.
    #[must_use]
    pub fn new(fallback: Access) -> Self {
        Self {
            namespaces: Map::default(),
            fallback,
        }
    }

    /// Sets the rules of `namespace` (the part of a topic before the first `:`).
    pub fn set(&mut self, namespace: impl Into<String>, access: Access) {
        self.namespaces.insert(namespace.into(), access);
    }

    /// The access that applies to `topic`.
    #[must_use]
    pub fn access(&self, topic: &Topic) -> Access {
        self.namespaces
            .get(topic.namespace())
            .copied()
            .unwrap_or(self.fallback)
    }

    /// Whether `user` may join `topic`.
    #[must_use]
    pub fn may_join(&self, topic: &Topic, user: Option<&str>) -> bool {
        self.access(topic).join.admits(topic, user)
    }

    /// Whether `user` may push to `topic`.
    #[must_use]
    pub fn may_push(&self, topic: &Topic, user: Option<&str>) -> bool {
        self.access(topic).push.admits(topic, user)
    }

    /// The rule for unlisted namespaces.
    #[must_use]
    pub const fn fallback(&self) -> Access {
        self.fallback
    }

    /// Every configured namespace and its access.
    pub fn namespaces(&self) -> impl Iterator<Item = (&str, Access)> + '_ {
        self.namespaces
            .iter()
            .map(|(name, access)| (name.as_str(), *access))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> Topic {
        Topic::new(name).unwrap()
    }

    #[test]
    fn owner_means_the_key_after_the_first_colon_is_the_user() {
        let t = topic("auditlog:42");
        assert!(Rule::Owner.admits(&t, Some("42")));
        assert!(!Rule::Owner.admits(&t, Some("43")));
        assert!(!Rule::Owner.admits(&t, Some("4")));
        assert!(!Rule::Owner.admits(&t, None));
        assert!(!Rule::Owner.admits(&topic("auditlog"), Some("auditlog")));
        assert!(!Rule::Owner.admits(&topic("auditlog:"), Some("")));
        assert!(Rule::Owner.admits(&topic("a:b:c"), Some("b:c")));
    }

    #[test]
    fn other_rules() {
        let t = topic("room:lobby");
        assert!(Rule::Anyone.admits(&t, None));
        assert!(!Rule::Authenticated.admits(&t, None));
        assert!(Rule::Authenticated.admits(&t, Some("u")));
        assert!(!Rule::Nobody.admits(&t, Some("lobby")));
    }

    #[test]
    fn unlisted_namespaces_get_the_fallback() {
        let mut rules = ChannelRules::new(Access::SECURE_DEFAULT);
        rules.set(
            "room",
            Access {
                join: Rule::Authenticated,
                push: Rule::Authenticated,
            },
        );
        assert!(rules.may_join(&topic("room:1"), Some("u")));
        assert!(rules.may_push(&topic("room:1"), Some("u")));
        assert!(rules.may_join(&topic("auditlog:u"), Some("u")));
        assert!(!rules.may_join(&topic("auditlog:v"), Some("u")));
        assert!(!rules.may_push(&topic("auditlog:u"), Some("u")));
    }

    #[test]
    fn rule_names_parse_and_print() {
        for rule in [Rule::Anyone, Rule::Authenticated, Rule::Owner, Rule::Nobody] {
            assert_eq!(rule.name().parse::<Rule>(), Ok(rule));
        }
        assert_eq!(
            "everyone".parse::<Rule>().unwrap_err().to_string(),
            "unknown rule \"everyone\": expected anyone, authenticated, owner or nobody"
        );
    }
}
