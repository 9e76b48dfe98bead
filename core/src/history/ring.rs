//! The in-memory history of one topic (the memory backend's, and a model of the others'):
//! the last publications, bounded in count, kept until the topic has been quiet for its TTL.

use std::collections::VecDeque;
use std::time::Duration;

use super::recovery::{HistoryRead, Publication};
use super::{Epoch, Position};
use crate::{Payload, Time};

/// One topic's stream: offsets count up from 1 within its epoch; at most `capacity`
/// publications are kept; once nothing has been published for `ttl` the stream is gone
/// ([`Ring::is_expired`]) and its owner starts a new one with a new epoch, so no offset of the
/// old one is ever trusted again. Expiry is of the whole stream, as a Redis key's TTL is.
#[derive(Debug, Clone)]
pub struct Ring {
    epoch: Epoch,
    latest: u64,
    entries: VecDeque<Publication>,
    capacity: usize,
    ttl: Duration,
    touched: Time,
    bytes: usize,
}

impl Ring {
    /// An empty stream of epoch `epoch` at `now`.
    #[must_use]
    pub fn new(epoch: Epoch, capacity: usize, ttl: Duration, now: Time) -> Self {
        Self {
            epoch,
            latest: 0,
            entries: VecDeque::with_capacity(capacity.min(64)),
            capacity: capacity.max(1),
            ttl,
            touched: now,
            bytes: 0,
        }
    }

    /// The stream's epoch.
    #[must_use]
    pub const fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// The latest position (offset 0 before the first publication).
    #[must_use]
    pub fn position(&self) -> Position {
        Position::new(self.latest, self.epoch.clone())
    }

    /// Whether nothing was published (or the stream created) for its TTL: it is gone.
    #[must_use]
    pub fn is_expired(&self, now: Time) -> bool {
        now.saturating_duration_since(self.touched) >= self.ttl
    }

    /// Bytes of payloads and events held.
    #[must_use]
    pub const fn bytes(&self) -> usize {
        self.bytes
    }

    /// Publications held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a publication at `now`: its position.
    pub fn append(&mut self, event: String, payload: Payload, now: Time) -> Position {
        self.latest += 1;
        self.touched = now;
        let position = self.position();
        self.bytes += event.len() + payload.get().len();
        self.entries.push_back(Publication {
            position: position.clone(),
            event,
            payload,
        });
        while self.entries.len() > self.capacity {
            if let Some(dropped) = self.entries.pop_front() {
                self.bytes -= dropped.event.len() + dropped.payload.get().len();
            }
        }
        position
    }

    /// The publications after offset `after` (at most `limit`, the oldest first).
    #[must_use]
    pub fn read(&self, after: u64, limit: usize) -> HistoryRead {
        let earliest = self
            .entries
            .front()
            .map_or(self.latest + 1, |first| first.position.offset);
        let skip =
            usize::try_from(after.saturating_add(1).saturating_sub(earliest)).unwrap_or(usize::MAX);
        HistoryRead {
            epoch: self.epoch.clone(),
            latest: self.latest,
            earliest,
            publications: self
                .entries
                .iter()
                .skip(skip)
                .take(limit)
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(capacity: usize) -> Ring {
        Ring::new(
            Epoch::new("e").unwrap(),
            capacity,
            Duration::from_secs(60),
            Time::ZERO,
        )
    }

    fn offsets(read: &HistoryRead) -> Vec<u64> {
        read.publications
            .iter()
            .map(|p| p.position.offset)
            .collect()
    }

    #[test]
    fn appends_count_up_and_the_oldest_go_past_the_capacity() {
        let mut ring = ring(3);
        for n in 1..=5_u64 {
            let position = ring.append("m".into(), Payload::from_json("1").unwrap(), Time::ZERO);
            assert_eq!(position.offset, n);
        }
        assert_eq!(ring.len(), 3);
        let read = ring.read(1, 100);
        assert_eq!((read.latest, read.earliest), (5, 3));
        assert_eq!(offsets(&read), vec![3, 4, 5]);
        assert_eq!(offsets(&ring.read(3, 100)), vec![4, 5]);
        assert_eq!(offsets(&ring.read(3, 1)), vec![4]);
        assert!(ring.read(5, 100).publications.is_empty());
        assert_eq!(ring.bytes(), 3 * 2);
    }

    #[test]
    fn an_empty_stream_reads_as_nothing_after_zero() {
        let ring = ring(3);
        let read = ring.read(0, 10);
        assert_eq!((read.latest, read.earliest), (0, 1));
        assert_eq!(ring.position().to_string(), "0:e");
    }

    #[test]
    fn the_stream_expires_after_its_ttl_without_publications() {
        let mut ring = ring(3);
        let _ = ring.append("m".into(), Payload::empty_object(), Time::from_millis(1000));
        assert!(!ring.is_expired(Time::from_millis(60_999)));
        assert!(ring.is_expired(Time::from_millis(61_000)));
    }
}
