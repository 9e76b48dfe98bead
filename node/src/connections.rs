//! The node-wide connection limit, and raising the open-file limit it depends on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// File descriptors kept free for listeners, Redis, logs and HTTP requests.
pub const RESERVED_FDS: u64 = 64;

/// Counts open WebSocket connections against a limit.
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    open: Arc<AtomicUsize>,
    limit: usize,
}

/// One connection's place under the limit; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<AtomicUsize>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionSlots {
    /// At most `limit` connections.
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self {
            open: Arc::default(),
            limit,
        }
    }

    /// The limit in force.
    #[must_use]
    pub const fn limit(&self) -> usize {
        self.limit
    }

    /// A slot, unless the limit is reached.
    #[must_use]
    pub fn try_acquire(&self) -> Option<ConnectionSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.limit).then_some(open + 1)
            })
            .is_ok();
        taken.then(|| ConnectionSlot {
            open: self.open.clone(),
        })
    }
}

/// Raises the soft open-file limit to the hard limit and returns the new soft limit (or the
/// old one, or `None` where the platform has no such limit).
#[must_use]
pub fn raise_open_file_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// The connection limit to use when none is configured: what the open-file limit allows,
/// less a reserve.
#[must_use]
pub fn automatic_limit(open_files: Option<u64>) -> usize {
    let open_files = open_files.unwrap_or(1024);
    usize::try_from(open_files.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_given_back() {
        let slots = ConnectionSlots::new(2);
        let a = slots.try_acquire().unwrap();
        let _b = slots.try_acquire().unwrap();
        assert!(slots.try_acquire().is_none());
        drop(a);
        assert!(slots.try_acquire().is_some());
    }

    #[test]
    fn automatic_limit_keeps_a_reserve() {
        assert_eq!(automatic_limit(Some(20_000)), 19_936);
        assert_eq!(automatic_limit(Some(10)), 1);
    }
}
