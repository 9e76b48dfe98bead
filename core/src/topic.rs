//! Validated topic names.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// The longest topic accepted, in bytes of UTF-8.
pub const MAX_TOPIC_BYTES: usize = 255;

/// Why a string is not a valid [`Topic`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic is the empty string.
    #[error("topic is empty")]
    Empty,
    /// The topic is longer than [`MAX_TOPIC_BYTES`].
    #[error("topic is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        /// Length of the rejected topic in bytes.
        len: usize,
        /// The limit it exceeded.
        max: usize,
    },
    /// The topic contains a control character (such as NUL, newline or DEL).
    #[error("topic contains a control character at byte {position}")]
    ControlCharacter {
        /// Byte offset of the first control character.
        position: usize,
    },
    /// The topic starts with `__`, which is reserved: on a shared Redis such names are the
    /// server's own channels (`__keyspace@0__:...`, `__redis__:invalidate`), outside the
    /// node's channel space.
    #[error("topic starts with \"__\", which is reserved for the backend's own channels")]
    Reserved,
}

impl TopicError {
    /// A stable, machine-readable code for this error (used in protocol replies and by the
    /// JavaScript bindings).
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self {
            Self::Empty => "topic_empty",
            Self::TooLong { .. } => "topic_too_long",
            Self::ControlCharacter { .. } => "topic_control_character",
            Self::Reserved => "topic_reserved",
        }
    }
}

/// A topic name: non-empty UTF-8, at most [`MAX_TOPIC_BYTES`] bytes, no control characters,
/// not starting with `__` (reserved for the backend's own channels).
///
/// Cloning is cheap (a reference count), so the registry can keep a topic in both of its
/// indexes without copying the text. A topic's *namespace* is the part before the first `:`
/// (`auditlog` in `auditlog:123e4567-e89b-12d3-a456-426614174000`), and its *key* is the part
/// after it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` and makes a topic of it.
    ///
    /// # Errors
    /// [`TopicError`] says which rule the name breaks.
    pub fn new(name: &str) -> Result<Self, TopicError> {
        validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// A topic the server itself uses on a backend (`__presence:room:1`): made from a valid
    /// topic, and starting with the reserved `__` that keeps it from clients.
    #[must_use]
    pub(crate) fn internal(name: &str) -> Self {
        Self(Arc::from(name))
    }

    /// The topic's text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `:`, or the whole topic when it has no `:`.
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.0
            .split_once(':')
            .map_or(&self.0, |(namespace, _)| namespace)
    }

    /// The part after the first `:`, if the topic has one (`123` in `auditlog:123`).
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        self.0.split_once(':').map(|(_, key)| key)
    }
}

/// Checks the rules of [`Topic`] without allocating.
///
/// # Errors
/// [`TopicError`] says which rule the name breaks.
pub fn validate(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong {
            len: name.len(),
            max: MAX_TOPIC_BYTES,
        });
    }
    if let Some((position, _)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(TopicError::ControlCharacter { position });
    }
    if name.starts_with("__") {
        return Err(TopicError::Reserved);
    }
    Ok(())
}

impl TryFrom<&str> for Topic {
    type Error = TopicError;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

impl TryFrom<String> for Topic {
    type Error = TopicError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        validate(&name)?;
        Ok(Self(Arc::from(name)))
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_per_user_channel_names() {
        let topic = Topic::new("auditlog:123e4567-e89b-12d3-a456-426614174000").unwrap();
        assert_eq!(topic.namespace(), "auditlog");
        assert_eq!(topic.key(), Some("123e4567-e89b-12d3-a456-426614174000"));
        assert_eq!(
            topic.as_str(),
            "auditlog:123e4567-e89b-12d3-a456-426614174000"
        );
    }

    #[test]
    fn namespace_of_a_topic_without_colon_is_the_whole_topic() {
        let topic = Topic::new("lobby").unwrap();
        assert_eq!(topic.namespace(), "lobby");
        assert_eq!(topic.key(), None);
        let nested = Topic::new("room:a:b").unwrap();
        assert_eq!(nested.namespace(), "room");
        assert_eq!(nested.key(), Some("a:b"));
    }

    #[test]
    fn names_reserved_for_the_backend_are_refused() {
        for name in ["__keyspace@0__:auditlog:1", "__redis__:invalidate", "__"] {
            assert_eq!(Topic::new(name), Err(TopicError::Reserved), "{name}");
        }
        assert_eq!(TopicError::Reserved.code(), "topic_reserved");
        assert!(Topic::new("_private:1").is_ok(), "one underscore is fine");
        assert!(Topic::new("a__b").is_ok());
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
    }

    #[test]
    fn length_limit_is_in_bytes() {
        assert!(Topic::new(&"a".repeat(MAX_TOPIC_BYTES)).is_ok());
        assert_eq!(
            Topic::new(&"a".repeat(MAX_TOPIC_BYTES + 1)),
            Err(TopicError::TooLong { len: 256, max: 255 })
        );
        // 128 two-byte characters are 256 bytes.
        assert!(matches!(
            Topic::new(&"é".repeat(128)),
            Err(TopicError::TooLong { len: 256, .. })
        ));
    }

    #[test]
    fn rejects_control_characters_with_their_position() {
        assert_eq!(
            Topic::new("room\n1"),
            Err(TopicError::ControlCharacter { position: 4 })
        );
        assert_eq!(
            Topic::new("\u{0}"),
            Err(TopicError::ControlCharacter { position: 0 })
        );
        assert_eq!(
            Topic::new("é\u{7f}"),
            Err(TopicError::ControlCharacter { position: 2 })
        );
    }

    #[test]
    fn accepts_unicode_and_spaces() {
        assert!(Topic::new("chat:café au lait ☕").is_ok());
    }

    #[test]
    fn errors_have_stable_codes_and_readable_messages() {
        let err = Topic::new("").unwrap_err();
        assert_eq!(err.code(), "topic_empty");
        assert_eq!(err.to_string(), "topic is empty");
        let err = Topic::new(&"x".repeat(300)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "topic is 300 bytes long; the limit is 255 bytes"
        );
    }

    #[test]
    fn hashes_like_its_text_so_lookups_by_str_work() {
        let mut set = std::collections::HashSet::new();
        set.insert(Topic::new("a:b").unwrap());
        assert!(set.contains("a:b"));
    }
}
