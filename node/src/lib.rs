//! The Switchboard node: a Phoenix Channels V2 compatible pub/sub server on actix.
//!
//! # Layout
//! - [`config`]: flags, environment variables and the TOML file.
//! - [`server`]: starting the HTTP server, announcing the address, graceful shutdown.
//! - [`http`]: the routes — WebSocket upgrade, `POST /api/publish`, health, readiness, metrics.
//! - [`hub`]: the topic hub actor that owns the core registry and routes every message.
//! - [`session`]: one actor per WebSocket, speaking the Phoenix protocol.
//! - [`outbox`]: bounded delivery from the hub to a session (the slow-consumer budget).
//! - [`upstream`]: the interface between the hub and a distributed backend.
//! - [`redis_bridge`]: the Redis bridge actor (several nodes as one system).
//! - [`postgres_bridge`]: the PostgreSQL bridge actor (the same, through LISTEN/NOTIFY);
//!   [`postgres_channel`]: topic → PostgreSQL channel names.
//! - [`bridge`]: what both bridges share — the connection state machine, edge replay,
//!   backoff, ordered batches, incoming delivery.
//! - [`envelope`]: how messages look on the shared channel, and raw producer messages.
//! - [`transport`]: the only module that knows the WebSocket library.
//! - [`metrics`]: counters and gauges in Prometheus text.
//! - [`security`]: who may connect, join, push and publish (tokens, channel rules, API key,
//!   origins); [`token`]: HS256 connect tokens.
//! - [`rate_limit`]: the per-socket push token bucket; [`connections`]: the connection limit
//!   and the open-file limit.

pub mod bridge;
pub mod config;
pub mod connections;
pub mod envelope;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod postgres_bridge;
pub mod postgres_channel;
pub mod rate_limit;
pub mod redis_bridge;
pub mod security;
pub mod server;
pub mod session;
pub mod token;
pub mod transport;
pub mod upstream;

pub use config::Config;
