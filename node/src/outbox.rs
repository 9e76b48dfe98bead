//! Bounded delivery to one session: a byte budget in front of its mailbox.
//!
//! The hub offers each frame to a session's [`Outbox`]. The frame is queued only while the
//! bytes queued and not yet handed to the socket stay within the budget and the mailbox has
//! room; otherwise the offer fails and the hub evicts the session as a slow consumer. The
//! session gives the bytes back as it hands each frame to the socket ([`QueuedBytes::release`]).
//!
//! A session actor runs inside its HTTP response stream and is polled only while the socket
//! can take more data, so a client that stops reading leaves its frames in the mailbox: the
//! budget is exactly what bounds that memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

/// Bytes offered to a session and not yet handed to its socket. Shared by the hub (adds) and
/// the session (releases).
#[derive(Debug, Clone, Default)]
pub struct QueuedBytes(Arc<AtomicUsize>);

impl QueuedBytes {
    /// Gives back `len` bytes once a frame has been handed to the socket.
    pub fn release(&self, len: usize) {
        self.0.fetch_sub(len, Ordering::Relaxed);
    }

    /// Bytes currently queued.
    #[must_use]
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A frame for a session to send as is (an encoded broadcast shared by every subscriber).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Deliver {
    /// The encoded frame; clones share the bytes.
    pub frame: ByteString,
}

/// Why an offer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Queued bytes would pass the budget, or the mailbox is full: a slow consumer.
    Slow,
    /// The session has already stopped.
    Gone,
}

/// The hub's handle for delivering to one session.
#[derive(Debug, Clone)]
pub struct Outbox {
    deliver: Recipient<Deliver>,
    queued: QueuedBytes,
    budget: usize,
}

impl Outbox {
    /// An outbox in front of `deliver`, allowing `budget` unsent bytes.
    #[must_use]
    pub const fn new(deliver: Recipient<Deliver>, queued: QueuedBytes, budget: usize) -> Self {
        Self {
            deliver,
            queued,
            budget,
        }
    }

    /// Queues `frame` for the session unless that would pass the budget or the mailbox is full.
    ///
    /// # Errors
    /// [`Overflow`] says why nothing was queued.
    pub fn offer(&self, frame: &ByteString) -> Result<(), Overflow> {
        let len = frame.len();
        let before = self.queued.0.fetch_add(len, Ordering::Relaxed);
        if before + len > self.budget {
            self.queued.release(len);
            return Err(Overflow::Slow);
        }
        match self.deliver.try_send(Deliver {
            frame: frame.clone(),
        }) {
            Ok(()) => Ok(()),
            Err(err) => {
                self.queued.release(len);
                Err(match err {
                    SendError::Full(_) => Overflow::Slow,
                    SendError::Closed(_) => Overflow::Gone,
                })
            }
        }
    }
}
