//! Counters and gauges, shared by every actor and rendered as Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The node's metrics. Counters only grow; gauges are set by their owner (the hub).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open WebSocket connections (counted by the sessions).
    pub connections: AtomicU64,
    /// Sessions registered with the hub (set by the hub).
    pub sessions: AtomicU64,
    /// Topics with at least one local subscriber (set by the hub).
    pub topics: AtomicU64,
    /// (socket, topic) pairs (set by the hub).
    pub subscriptions: AtomicU64,
    /// Frames received from clients.
    pub frames_in: AtomicU64,
    /// Frames queued to clients.
    pub frames_out: AtomicU64,
    /// Messages published (socket pushes and HTTP).
    pub publishes: AtomicU64,
    /// Sockets closed as slow consumers.
    pub slow_consumer_disconnects: AtomicU64,
    /// Frames rejected with an error reply or a close.
    pub protocol_errors: AtomicU64,
    /// Sockets, joins, pushes and publishes refused for want of a token, a rule, the API key
    /// or an allowed origin.
    pub unauthorized: AtomicU64,
    /// Pushes refused by the per-socket rate limit.
    pub rate_limited: AtomicU64,
    /// Connections refused at the connection limit.
    pub refused_connections: AtomicU64,
    /// 1 while the bridge to the shared backend is connected and resubscribed (0 without a
    /// backend).
    pub bridge_up: AtomicU64,
    /// Times the bridge connected again after losing the backend.
    pub bridge_reconnects: AtomicU64,
    /// Messages other nodes did not get because the bridge was down or full.
    pub bridge_lost: AtomicU64,
    /// Messages the bridge published to the backend.
    pub bridge_published: AtomicU64,
    /// Messages the bridge received from other nodes and producers.
    pub bridge_received: AtomicU64,
    /// Messages from the backend this node dropped because it could not take them as fast as
    /// they came (its bounded queues were full).
    pub bridge_dropped: AtomicU64,
    /// Messages from the backend refused because they name an event only the server may send.
    pub bridge_refused: AtomicU64,
    /// History reads (joins of history topics, recoveries, `GET /api/history`).
    pub history_reads: AtomicU64,
    /// Joins that asked to recover what they missed (`since`).
    pub recoveries: AtomicU64,
    /// Recoveries answered `recovered: true`.
    pub recoveries_succeeded: AtomicU64,
    /// Recoveries answered `recovered: false`, or refused because the history could not be
    /// read.
    pub recoveries_failed: AtomicU64,
    /// Memberships of topics with history that the node ended with `phx_error` because
    /// publications may not have reached it (its backend link went down, or a position was
    /// skipped); their clients rejoin and recover.
    pub streams_broken: AtomicU64,
    /// Presence members this node's sockets hold (set by the hub).
    pub presence_entries: AtomicU64,
    /// Presence members listed on this node, every node's, over the topics its sockets watch
    /// (set by the hub).
    pub presence_members: AtomicU64,
    /// `presence_diff` frames queued to sockets.
    pub presence_diffs: AtomicU64,
    /// `presence_state` frames sent (one per join of a presence topic).
    pub presence_states: AtomicU64,
    /// Presence changes from the backend this node could not read, and presence operations
    /// the backend failed.
    pub presence_errors: AtomicU64,
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Subtracts `n` from a gauge.
pub fn sub(gauge: &AtomicU64, n: u64) {
    gauge.fetch_sub(n, Ordering::Relaxed);
}

/// Sets a gauge.
pub fn set(gauge: &AtomicU64, value: usize) {
    gauge.store(u64::try_from(value).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl Metrics {
    /// Whether the bridge is connected.
    #[must_use]
    pub fn is_bridge_up(&self) -> bool {
        self.bridge_up.load(Ordering::Relaxed) == 1
    }

    /// The Prometheus text exposition of every metric.
    #[must_use]
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &str, &AtomicU64); 29] = [
            (
                "switchboard_connections",
                "gauge",
                "Open WebSocket connections.",
                &self.connections,
            ),
            (
                "switchboard_sessions",
                "gauge",
                "Sessions registered with the hub (a socket that went away is forgotten within a second).",
                &self.sessions,
            ),
            (
                "switchboard_topics",
                "gauge",
                "Topics with at least one local subscriber.",
                &self.topics,
            ),
            (
                "switchboard_subscriptions",
                "gauge",
                "Socket-topic subscriptions.",
                &self.subscriptions,
            ),
            (
                "switchboard_frames_in_total",
                "counter",
                "Frames received from clients.",
                &self.frames_in,
            ),
            (
                "switchboard_frames_out_total",
                "counter",
                "Frames queued to clients.",
                &self.frames_out,
            ),
            (
                "switchboard_publishes_total",
                "counter",
                "Messages published by sockets and HTTP.",
                &self.publishes,
            ),
            (
                "switchboard_slow_consumer_disconnects_total",
                "counter",
                "Sockets closed because their unsent data passed the send buffer.",
                &self.slow_consumer_disconnects,
            ),
            (
                "switchboard_protocol_errors_total",
                "counter",
                "Frames rejected with an error reply or a close.",
                &self.protocol_errors,
            ),
            (
                "switchboard_unauthorized_total",
                "counter",
                "Sockets, joins, pushes and publishes refused by tokens, rules, API key or origin.",
                &self.unauthorized,
            ),
            (
                "switchboard_rate_limited_total",
                "counter",
                "Pushes refused by the per-socket rate limit.",
                &self.rate_limited,
            ),
            (
                "switchboard_refused_connections_total",
                "counter",
                "Connections refused at the connection limit.",
                &self.refused_connections,
            ),
            (
                "switchboard_bridge_up",
                "gauge",
                "1 while the bridge to the shared backend is connected.",
                &self.bridge_up,
            ),
            (
                "switchboard_bridge_reconnects_total",
                "counter",
                "Times the bridge reconnected after losing the backend.",
                &self.bridge_reconnects,
            ),
            (
                "switchboard_bridge_lost_total",
                "counter",
                "Messages other nodes missed because the bridge was down or full.",
                &self.bridge_lost,
            ),
            (
                "switchboard_bridge_published_total",
                "counter",
                "Messages the bridge published to the backend.",
                &self.bridge_published,
            ),
            (
                "switchboard_bridge_received_total",
                "counter",
                "Messages the bridge received from other nodes and producers.",
                &self.bridge_received,
            ),
            (
                "switchboard_bridge_dropped_total",
                "counter",
                "Messages from the backend dropped because this node could not take them fast enough.",
                &self.bridge_dropped,
            ),
            (
                "switchboard_bridge_refused_total",
                "counter",
                "Messages from the backend refused: they named an event only the server may send.",
                &self.bridge_refused,
            ),
            (
                "switchboard_history_reads_total",
                "counter",
                "History reads: joins of history topics, recoveries, GET /api/history.",
                &self.history_reads,
            ),
            (
                "switchboard_recoveries_total",
                "counter",
                "Joins that asked to recover what they missed (since).",
                &self.recoveries,
            ),
            (
                "switchboard_recoveries_succeeded_total",
                "counter",
                "Recoveries answered recovered: true.",
                &self.recoveries_succeeded,
            ),
            (
                "switchboard_recoveries_failed_total",
                "counter",
                "Recoveries answered recovered: false, or refused for want of the history.",
                &self.recoveries_failed,
            ),
            (
                "switchboard_streams_broken_total",
                "counter",
                "Memberships of history topics ended with phx_error because publications may have missed this node.",
                &self.streams_broken,
            ),
            (
                "switchboard_presence_entries",
                "gauge",
                "Presence members this node's sockets hold.",
                &self.presence_entries,
            ),
            (
                "switchboard_presence_members",
                "gauge",
                "Presence members of every node listed here, over the topics local sockets watch.",
                &self.presence_members,
            ),
            (
                "switchboard_presence_diffs_total",
                "counter",
                "presence_diff frames queued to sockets.",
                &self.presence_diffs,
            ),
            (
                "switchboard_presence_states_total",
                "counter",
                "presence_state frames sent, one per join of a presence topic.",
                &self.presence_states,
            ),
            (
                "switchboard_presence_errors_total",
                "counter",
                "Presence changes from the backend that could not be read, and failed presence operations.",
                &self.presence_errors,
            ),
        ];
        let mut out = String::with_capacity(1024);
        for (name, kind, help, value) in rows {
            let value = value.load(Ordering::Relaxed);
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        add(&metrics.publishes, 3);
        set(&metrics.connections, 2);
        let text = metrics.render();
        assert!(text.contains(
            "# TYPE switchboard_publishes_total counter\nswitchboard_publishes_total 3\n"
        ));
        assert!(text.contains("switchboard_connections 2\n"));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 29);
    }
}
