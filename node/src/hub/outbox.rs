//! Bounded delivery to one session: a queue of shared frames in front of its socket.
//!
//! The hub offers each frame to a session's [`Outbox`]: a clone of the shared bytes goes into
//! the session's [`FrameQueue`] (a reference count, no copy and no allocation per delivery),
//! and the session is woken with one [`Flush`] only when its queue goes from empty to not
//! empty. The session then hands everything queued to its socket in one go, so a busy
//! subscriber drains many frames per wake-up.
//!
//! The queue is bounded by bytes (the send budget) and by frames; an offer that would pass
//! either fails, and the hub evicts the session as a slow consumer. A session actor runs
//! inside its HTTP response stream and is polled only while the socket can take more data, so
//! a client that stops reading leaves its frames in the queue: the bound is exactly what
//! limits that memory.
//!
//! A leave is ordered with the deliveries too: a frame of a topic its client has left must not
//! reach it after the leave's reply (a rejoin would see it twice, once from the old
//! membership and once from its recovery). The session sends what is queued before the
//! reply, then drops frames of that topic ([`Leaving`]) until the hub's marker that it has
//! taken the leave ([`Delivery::Left`]) comes out of the queue: everything after the marker
//! belongs to a later join.
//!
//! A membership the hub ends itself, because it can no longer vouch for its topic's stream
//! ([`Delivery::Broken`]), is ordered the same way: the marker comes after every frame of that
//! membership, and the session tells its client where the marker stands.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use actix::prelude::*;
use bytestring::ByteString;

use switchboard_core::Topic;

use crate::messages::Flush;

/// Smallest frame the queue is sized for: it holds at most `budget / MIN_FRAME_BYTES` frames,
/// so with frames at least this large the byte budget is what binds.
pub const MIN_FRAME_BYTES: usize = 64;

/// Why an offer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Queued bytes or frames would pass the bound: a slow consumer.
    Slow,
    /// The session has already stopped.
    Gone,
}

/// What the queue hands the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A frame for the socket.
    Frame(ByteString),
    /// The hub has unsubscribed the session from this topic: no frame of the membership it
    /// left comes after this.
    Left(Topic),
    /// The hub has ended the session's membership of this topic because publications may
    /// have been lost on their way to this node: no frame of that membership comes after
    /// this, and the client is to be told (it recovers by joining again).
    Broken(Topic),
}

/// What the session does with what it drained, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    /// Send the frame.
    Frame(ByteString),
    /// Tell the client its membership of the topic ended ([`Delivery::Broken`]).
    Broken(Topic),
}

#[derive(Debug, Default)]
struct Queued {
    frames: VecDeque<Delivery>,
    bytes: usize,
    /// Holds in force: while any is, nothing is drained (see [`FrameQueue::hold`]).
    held: usize,
}

/// Frames offered to one session and not yet handed to its socket. Shared by the hub (pushes)
/// and the session (drains).
#[derive(Debug)]
pub struct FrameQueue {
    queued: Mutex<Queued>,
    max_bytes: usize,
    max_frames: usize,
}

impl FrameQueue {
    /// An empty queue holding at most `max_bytes` (and `max_bytes / MIN_FRAME_BYTES` frames).
    #[must_use]
    pub fn new(max_bytes: usize) -> Self {
        Self {
            queued: Mutex::default(),
            max_bytes,
            max_frames: (max_bytes / MIN_FRAME_BYTES).max(16),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        // A panic while holding the lock leaves the queue consistent (push and drain are
        // single operations), so a poisoned lock is still usable.
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `frame` unless that would pass a bound; returns whether the queue was empty.
    fn push(&self, frame: &ByteString) -> Result<bool, Overflow> {
        let mut queued = self.lock();
        if queued.bytes + frame.len() > self.max_bytes || queued.frames.len() >= self.max_frames {
            return Err(Overflow::Slow);
        }
        queued.bytes += frame.len();
        queued.frames.push_back(Delivery::Frame(frame.clone()));
        Ok(queued.frames.len() == 1)
    }

    /// Adds the marker that the session has left `topic` (never refused: a marker is small and
    /// one per leave, and the session waits for it); returns whether the queue was empty.
    fn push_left(&self, topic: Topic) -> bool {
        let mut queued = self.lock();
        queued.frames.push_back(Delivery::Left(topic));
        queued.frames.len() == 1
    }

    /// Adds the marker that the hub ended the session's membership of `topic` (never refused,
    /// as [`push_left`](Self::push_left)); returns whether the queue was empty.
    fn push_broken(&self, topic: Topic) -> bool {
        let mut queued = self.lock();
        queued.frames.push_back(Delivery::Broken(topic));
        queued.frames.len() == 1
    }

    /// Takes everything queued, oldest first (nothing while the queue is held).
    pub fn drain(&self) -> VecDeque<Delivery> {
        let mut queued = self.lock();
        if queued.held > 0 {
            return VecDeque::new();
        }
        queued.bytes = 0;
        std::mem::take(&mut queued.frames)
    }

    /// Swaps what is queued, oldest first, into `into` (which should be empty: its buffer
    /// becomes the queue's, so a session that drains into the same buffer every time makes
    /// no allocation per batch, on either side). Nothing while the queue is held.
    pub fn drain_into(&self, into: &mut VecDeque<Delivery>) {
        let mut queued = self.lock();
        if queued.held > 0 {
            return;
        }
        queued.bytes = 0;
        std::mem::swap(&mut queued.frames, into);
    }

    /// Keeps what is queued from being drained until [`release`](Self::release): the hub
    /// holds a session's queue while it queues a recovering join's replay, so the session can
    /// send the join's reply before it.
    pub fn hold(&self) {
        self.lock().held += 1;
    }

    /// Ends one [`hold`](Self::hold): whether frames are waiting to be drained.
    pub fn release(&self) -> bool {
        let mut queued = self.lock();
        queued.held = queued.held.saturating_sub(1);
        queued.held == 0 && !queued.frames.is_empty()
    }

    /// Bytes queued now.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// The hub's handle for delivering to one session.
#[derive(Debug, Clone)]
pub struct Outbox {
    queue: Arc<FrameQueue>,
    wake: Recipient<Flush>,
}

impl Outbox {
    /// An outbox filling `queue` and waking the session through `wake`.
    #[must_use]
    pub const fn new(queue: Arc<FrameQueue>, wake: Recipient<Flush>) -> Self {
        Self { queue, wake }
    }

    /// Holds the session's queue (see [`FrameQueue::hold`]); the session releases it.
    pub fn hold(&self) {
        self.queue.hold();
    }

    /// Tells the session, in order with its deliveries, that it no longer gets `topic`'s.
    pub fn left(&self, topic: Topic) {
        if self.queue.push_left(topic) && self.wake.connected() {
            self.wake.do_send(Flush);
        }
    }

    /// Tells the session, in order with its deliveries, that the hub has ended its membership
    /// of `topic` (see [`Delivery::Broken`]).
    pub fn broken(&self, topic: Topic) {
        if self.queue.push_broken(topic) && self.wake.connected() {
            self.wake.do_send(Flush);
        }
    }

    /// Queues `frame` for the session unless that would pass the queue's bounds.
    ///
    /// # Errors
    /// [`Overflow`] says why nothing was queued.
    pub fn offer(&self, frame: &ByteString) -> Result<(), Overflow> {
        if self.queue.push(frame)? {
            // At most one Flush is outstanding per session: only the empty → not empty
            // transition sends one, and the session empties the queue when it handles it.
            if !self.wake.connected() {
                let _ = self.queue.drain();
                return Err(Overflow::Gone);
            }
            self.wake.do_send(Flush);
        }
        Ok(())
    }
}

/// The topics a session has left whose [`Delivery::Left`] marker has not come out of its
/// queue yet: their frames belong to the membership it left.
#[derive(Debug, Default)]
pub struct Leaving {
    topics: HashMap<Topic, usize>,
}

impl Leaving {
    /// The session's client left `topic` (the hub is told next).
    pub fn begin(&mut self, topic: Topic) {
        *self.topics.entry(topic).or_default() += 1;
    }

    /// What to do with `drained`, in order: frames of a topic being left are dropped, each
    /// [`Delivery::Left`] ends one leave, and a [`Delivery::Broken`] of a topic the session
    /// is not leaving already is passed on (one it is leaving has ended for its client).
    pub fn filter(&mut self, drained: VecDeque<Delivery>) -> Vec<Drained> {
        let mut out = Vec::with_capacity(drained.len());
        self.filter_each(drained, |item| out.push(item));
        out
    }

    /// [`filter`](Self::filter), handing each item to `each` instead of collecting them.
    pub fn filter_each(
        &mut self,
        drained: impl IntoIterator<Item = Delivery>,
        mut each: impl FnMut(Drained),
    ) {
        for delivery in drained {
            match delivery {
                Delivery::Frame(frame) => {
                    if self.topics.is_empty() || !self.is_left(&frame) {
                        each(Drained::Frame(frame));
                    }
                }
                Delivery::Broken(topic) => {
                    if !self.topics.contains_key(&topic) {
                        each(Drained::Broken(topic));
                    }
                }
                Delivery::Left(topic) => {
                    if let Some(count) = self.topics.get_mut(&topic) {
                        *count -= 1;
                        if *count == 0 {
                            self.topics.remove(&topic);
                        }
                    }
                }
            }
        }
    }

    /// Whether `frame` (`[join_ref, ref, topic, event, payload]`) is of a topic being left.
    fn is_left(&self, frame: &ByteString) -> bool {
        use serde::de::IgnoredAny;
        type Parts<'a> = (
            IgnoredAny,
            IgnoredAny,
            std::borrow::Cow<'a, str>,
            IgnoredAny,
            IgnoredAny,
        );
        serde_json::from_str::<Parts<'_>>(frame)
            .ok()
            .and_then(|(_, _, topic, _, _)| Topic::new(&topic).ok())
            .is_some_and(|topic| self.topics.contains_key(&topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(drained: VecDeque<Delivery>) -> Vec<ByteString> {
        drained
            .into_iter()
            .filter_map(|delivery| match delivery {
                Delivery::Frame(frame) => Some(frame),
                Delivery::Left(_) | Delivery::Broken(_) => None,
            })
            .collect()
    }

    #[test]
    fn frames_of_a_left_topic_are_dropped_until_the_hubs_marker() {
        let queue = FrameQueue::new(4096);
        let topic = Topic::new("feed:1").unwrap();
        let old = ByteString::from(r#"[null,"5:e","feed:1","m",{}]"#);
        let other = ByteString::from(r#"[null,null,"feed:2","m",{}]"#);
        let new = ByteString::from(r#"[null,"6:e","feed:1","m",{}]"#);
        let mut leaving = Leaving::default();
        leaving.begin(topic.clone());
        let _ = queue.push(&old);
        let _ = queue.push(&other);
        let _ = queue.push_left(topic);
        let _ = queue.push(&new);
        assert_eq!(
            leaving.filter(queue.drain()),
            vec![Drained::Frame(other), Drained::Frame(new.clone())]
        );
        let _ = queue.push(&new);
        assert_eq!(
            leaving.filter(queue.drain()),
            vec![Drained::Frame(new)],
            "the leave is over"
        );
    }

    #[test]
    fn a_broken_membership_is_passed_on_in_order_unless_it_is_being_left() {
        let queue = FrameQueue::new(4096);
        let (one, two) = (Topic::new("feed:1").unwrap(), Topic::new("feed:2").unwrap());
        let before = ByteString::from(r#"[null,"5:e","feed:1","m",{}]"#);
        let other = ByteString::from(r#"[null,null,"feed:2","m",{}]"#);
        let mut leaving = Leaving::default();
        leaving.begin(two.clone());
        let _ = queue.push(&before);
        let _ = queue.push_broken(one.clone());
        let _ = queue.push(&other);
        let _ = queue.push_broken(two.clone());
        let _ = queue.push_left(two);
        assert_eq!(
            leaving.filter(queue.drain()),
            vec![Drained::Frame(before), Drained::Broken(one)],
            "feed:2 was being left: its client has its answer already"
        );
    }

    #[test]
    fn bytes_and_frames_are_bounded_and_drain_empties() {
        let queue = FrameQueue::new(1024);
        let frame = ByteString::from("x".repeat(300));
        assert_eq!(queue.push(&frame), Ok(true));
        assert_eq!(queue.push(&frame), Ok(false));
        assert_eq!(queue.push(&frame), Ok(false));
        assert_eq!(queue.push(&frame), Err(Overflow::Slow));
        assert_eq!(queue.bytes(), 900);
        assert_eq!(queue.drain().len(), 3);
        assert_eq!(queue.bytes(), 0);
        assert_eq!(
            queue.push(&frame),
            Ok(true),
            "empty again: the next push wakes"
        );
    }

    #[test]
    fn draining_into_a_buffer_hands_the_queue_that_buffer() {
        let queue = FrameQueue::new(4096);
        let frame = ByteString::from("x");
        let _ = queue.push(&frame);
        let _ = queue.push(&frame);
        let mut batch = VecDeque::with_capacity(64);
        queue.drain_into(&mut batch);
        assert_eq!(frames(std::mem::take(&mut batch)).len(), 2);
        let mut reused = VecDeque::with_capacity(64);
        queue.drain_into(&mut reused);
        assert!(reused.is_empty());
        assert!(
            queue.lock().frames.capacity() >= 64,
            "the queue fills the buffer it was given, with no new allocation"
        );
        queue.hold();
        let _ = queue.push(&frame);
        queue.drain_into(&mut reused);
        assert!(reused.is_empty(), "nothing while held");
    }

    #[test]
    fn a_held_queue_is_not_drained_until_released() {
        let queue = FrameQueue::new(1024);
        queue.hold();
        let frame = ByteString::from("x");
        let _ = queue.push(&frame);
        assert!(queue.drain().is_empty());
        assert!(queue.release(), "frames wait");
        assert_eq!(queue.drain().len(), 1);
        assert!(!queue.release(), "releasing an unheld queue is harmless");
    }

    #[test]
    fn tiny_frames_hit_the_frame_bound() {
        let queue = FrameQueue::new(64 * 16);
        let tiny = ByteString::from_static("[]");
        for _ in 0..16 {
            assert!(queue.push(&tiny).is_ok());
        }
        assert_eq!(queue.push(&tiny), Err(Overflow::Slow));
    }

    #[test]
    fn shared_frames_are_not_copied() {
        let queue = FrameQueue::new(1024);
        let frame = ByteString::from("shared");
        let _ = queue.push(&frame);
        let drained = frames(queue.drain());
        assert_eq!(drained[0].as_bytes().as_ptr(), frame.as_bytes().as_ptr());
    }
}
