//! The Switchboard node: a Phoenix Channels V2 compatible pub/sub server on actix.
//!
//! # Layout
//! Layers from the outside in; a module uses only the layers below it and the leaf modules.
//! - [`server`]: starting the node, announcing the address, graceful shutdown (wires the
//!   layers together).
//! - [`http`]: the routes — WebSocket upgrade, `POST /api/publish`, health, readiness, metrics.
//! - [`session`]: one actor per WebSocket, a thin shell around the core's protocol engine.
//! - [`transport`]: the only module that knows the WebSocket library.
//! - [`hub`]: the topic hub actor that owns the core registry and routes every message; its
//!   outbox (bounded delivery to a session) and its handle on a bridge.
//! - [`bridge`]: the bridge actor driving the core's bridge machine, its backend adapters
//!   (Redis, PostgreSQL) and the message formats on the backend.
//! - [`security`]: who may connect, join, push and publish (tokens, channel rules, API key,
//!   origins).
//! - Leaves: [`config`] (every option, declared once), [`messages`] (what actors of different
//!   layers send each other), [`metrics`] (counters and gauges in Prometheus text),
//!   [`connections`] (the connection limit and the open-file limit).

pub mod bridge;
pub mod config;
pub mod connections;
pub mod http;
pub mod hub;
pub mod messages;
pub mod metrics;
pub mod security;
pub mod server;
pub mod session;
pub mod transport;

pub use config::Config;
