//! Session identifiers.

use std::fmt;

/// Identifies one connected session (one WebSocket, one JS handler owner).
///
/// Allocated by [`Registry::connect`](crate::Registry::connect): monotonic from 1 and never
/// reused within one registry, so a stale id can never reach a later session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// The id as a number (for logs, metrics and bindings).
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Rebuilds an id from [`SessionId::get`]. An id the registry never allocated is simply
    /// unknown to it ([`SubscribeError::UnknownSession`](crate::SubscribeError::UnknownSession)).
    #[must_use]
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}
