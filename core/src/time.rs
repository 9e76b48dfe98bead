//! Time as the core sees it: a value the driver passes in, never read from a clock.

use std::ops::Add;
use std::time::Duration;

/// A point in time: how long after an epoch of the driver's choosing (the node uses its start,
/// the WebAssembly shell `performance.now()`'s origin). Only differences between two `Time`s
/// of one driver mean anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    /// The epoch itself.
    pub const ZERO: Self = Self(Duration::ZERO);

    /// The time `since` after the epoch.
    #[must_use]
    pub const fn from_since_epoch(since: Duration) -> Self {
        Self(since)
    }

    /// The time `millis` milliseconds after the epoch.
    #[must_use]
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    /// How long after the epoch this is.
    #[must_use]
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this is; zero when `earlier` is later.
    #[must_use]
    pub const fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Time {
    type Output = Self;

    /// Saturates at the largest representable time instead of overflowing.
    fn add(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_saturate_and_additions_do_not_overflow() {
        let t = Time::from_millis(1500);
        assert_eq!(
            t.saturating_duration_since(Time::from_millis(500)),
            Duration::from_secs(1)
        );
        assert_eq!(Time::ZERO.saturating_duration_since(t), Duration::ZERO);
        assert_eq!(
            (t + Duration::from_millis(500)).since_epoch(),
            Duration::from_secs(2)
        );
        let far = Time::from_since_epoch(Duration::MAX) + Duration::from_secs(1);
        assert_eq!(far.since_epoch(), Duration::MAX);
    }
}
