//! What one connection may do: sizes, counts, rates and the idle timeout.

use std::time::Duration;

use crate::{DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_TOPICS_PER_SESSION, MAX_TOPIC_BYTES};

/// The limits a [`Connection`](super::Connection) applies. Shared by every connection of a
/// server (the node builds one from its configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest text message accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Longest topic a socket may join, in bytes (at most [`MAX_TOPIC_BYTES`]).
    pub max_topic_bytes: usize,
    /// Topics one socket may have joined (or be joining) at once.
    pub max_topics: usize,
    /// Close a socket that sends nothing for this long.
    pub idle_timeout: Duration,
    /// Pushes per second (the push bucket's refill rate).
    pub push_rate: u32,
    /// Pushes at once above the rate (the push bucket's size).
    pub push_burst: u32,
    /// Joins and leaves per second (the join bucket's refill rate).
    pub join_rate: u32,
    /// Joins and leaves at once above the rate (the join bucket's size).
    pub join_burst: u32,
}

impl Default for Limits {
    /// The node's defaults (docs/node.md).
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_topic_bytes: MAX_TOPIC_BYTES,
            max_topics: DEFAULT_MAX_TOPICS_PER_SESSION,
            idle_timeout: Duration::from_secs(60),
            push_rate: 100,
            push_burst: 200,
            join_rate: 20,
            join_burst: 200,
        }
    }
}
