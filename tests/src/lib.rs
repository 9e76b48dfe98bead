//! End-to-end harness for the `switchboard` node: starts the real binary and talks to it the
//! way users do, over WebSocket (Phoenix Channels V2 JSON) and HTTP.
//!
//! The behaviour under test is the contract in `docs/node.md` and `docs/redis.md`; the
//! integration tests in `tests/tests/` each start their own node on a free loopback port.
//!
//! # Layout
//!
//! - [`node`]: [`Node`], one `switchboard` process: finding the binary, starting it with
//!   `--bind 127.0.0.1:0`, reading the address it prints, draining its output, SIGTERM, RSS
//!   and metrics.
//! - [`client`]: [`Client`], an async WebSocket client that keeps Phoenix refs the way
//!   phoenix.js does (`join_ref` is the ref of the join) and waits for frames with timeouts.
//! - [`frame`]: [`PhxFrame`], accessors for a received `[join_ref, ref, topic, event, payload]`.
//! - [`http`]: a minimal HTTP/1.1 client over tokio, enough for `/api/publish`, `/healthz`,
//!   `/readyz`, `/metrics` and deliberately malformed upgrade requests.
//! - [`redis`]: a private `redis-server` on a free port (kill -9, restart on the same port,
//!   freeze / thaw with SIGSTOP / SIGCONT) and helpers to read its pub/sub state, for the
//!   Redis bridge tests.
//! - [`postgres`]: a private PostgreSQL cluster (initdb'ed once, copied per test, run as the
//!   `postgres` user on a free port; immediate stop and start on the same port; freeze / thaw
//!   of the postmaster and every backend), an application's connection, LISTEN, and
//!   [`postgres::wait_delivery`] to know a node listens.
//! - [`backend`]: [`BackendServer`], either of those behind one interface (URL, node
//!   arguments, crash, restart, freeze, ping), so a fault suite runs once per
//!   [`BackendKind`].
//! - [`proxy`]: [`FaultProxy`], a TCP proxy on its own thread that passes, delays,
//!   black-holes or cuts the connections between a node and its backend.
//! - [`history`]: [`History`], the record of a fault test (publishes and their answers,
//!   deliveries, memberships, [green windows](history::GreenWindows) sampled from `/readyz`)
//!   and the check that lists missing, duplicated, reordered and unexpected deliveries.
//! - [`recovery`]: what a recovering subscriber saw (joins with `since`, their answers, the
//!   positions of the broadcasts) and the check that nothing acknowledged went missing or
//!   came twice across outages, unless it was told `recovered: false` for exactly that span.
//! - [`recovering`]: the recovering subscriber itself, which rejoins with `since` whenever
//!   its socket drops, its stream shows a hole or its node is ready again
//!   ([`recovering::ReadyWatch`]).
//! - [`rng`]: a small seeded generator, so randomised plans are reproducible.
//! - `src/bin/crossnode.rs`: measures cross-node latency and bridge throughput next to
//!   `redis-benchmark` (not a test; run it by hand).
//!
//! # Panics
//!
//! This is test support: the convenience methods panic with a message that says what was
//! expected and what arrived instead (and the node's recent log), which is what a failing
//! test should print. The `try_*` variants return errors for tests that expect failure.

pub mod backend;
pub mod client;
pub mod frame;
pub mod history;
pub mod http;
pub mod node;
pub mod postgres;
pub mod proxy;
pub mod recovering;
pub mod recovery;
pub mod redis;
pub mod rng;

pub use backend::{BackendKind, BackendServer};
pub use client::{Client, CloseOutcome, Incoming};
pub use frame::PhxFrame;
pub use history::History;
pub use http::HttpResponse;
pub use node::{Exit, Node};
pub use proxy::FaultProxy;
pub use rng::Rng;

use std::time::Duration;

/// How long the harness waits for something that should happen promptly (a reply, a
/// broadcast, a close) before declaring it missing. Generous: the tests run on a noisy
/// two-core machine next to a debug build.
pub const PATIENCE: Duration = Duration::from_secs(10);
