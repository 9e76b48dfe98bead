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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use actix::prelude::*;
use bytestring::ByteString;

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

#[derive(Debug, Default)]
struct Queued {
    frames: VecDeque<ByteString>,
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
        queued.frames.push_back(frame.clone());
        Ok(queued.frames.len() == 1)
    }

    /// Takes every queued frame, oldest first (none while the queue is held).
    pub fn drain(&self) -> VecDeque<ByteString> {
        let mut queued = self.lock();
        if queued.held > 0 {
            return VecDeque::new();
        }
        queued.bytes = 0;
        std::mem::take(&mut queued.frames)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let drained = queue.drain();
        assert_eq!(drained[0].as_bytes().as_ptr(), frame.as_bytes().as_ptr());
    }
}
