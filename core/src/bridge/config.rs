//! The bounds and timings a [`Bridge`](super::Bridge) works with.

use std::time::Duration;

/// How a [`Bridge`](super::Bridge) bounds its queues and paces its link. The node builds one
/// from its options (`--subscribe-timeout`, `--backend-timeout`, `--unsubscribe-linger`,
/// `--bridge-queue-messages`, `--bridge-queue-bytes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// How long a join waits for the backend to confirm its topic's subscription.
    pub subscribe_timeout: Duration,
    /// A backend that leaves a request unanswered this long is declared gone. Requests in
    /// flight may take half of it; when the link is otherwise quiet a ping goes out every half
    /// of it, so a backend that stops answering is noticed within this bound.
    pub backend_timeout: Duration,
    /// How long one connect attempt may take.
    pub connect_timeout: Duration,
    /// How long a topic stays subscribed upstream after its last local subscriber left, so a
    /// quick rejoin costs nothing and join/leave churn does not reach the backend.
    pub unsubscribe_linger: Duration,
    /// Most publishes waiting to be sent (the batch in flight included).
    pub max_queued_messages: usize,
    /// Most bytes of publishes waiting to be sent (the batch in flight included).
    pub max_queued_bytes: usize,
    /// Most publishes sent in one batch.
    pub max_publish_batch: usize,
    /// Most subscription changes sent in one batch.
    pub max_edge_batch: usize,
    /// First reconnect delay (before jitter).
    pub min_backoff: Duration,
    /// Longest reconnect delay (before jitter).
    pub max_backoff: Duration,
    /// Seed of the reconnect jitter (any value; the node draws one per process).
    pub jitter_seed: u64,
}

impl BridgeConfig {
    /// How long one request may stay in flight: half of
    /// [`backend_timeout`](Self::backend_timeout).
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        self.backend_timeout / 2
    }

    /// How long the link may stay quiet before a ping: half of
    /// [`backend_timeout`](Self::backend_timeout).
    #[must_use]
    pub fn ping_interval(&self) -> Duration {
        self.backend_timeout / 2
    }
}

impl Default for BridgeConfig {
    /// The node's defaults (docs/node.md).
    fn default() -> Self {
        Self {
            subscribe_timeout: Duration::from_secs(5),
            backend_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            unsubscribe_linger: Duration::from_secs(1),
            max_queued_messages: 10_000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_publish_batch: 1024,
            max_edge_batch: 1000,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            jitter_seed: 0x5eed,
        }
    }
}
