//! The pure core of Switchboard: the topic registry, the Phoenix Channels V2 JSON codec, the
//! protocol engine of one client connection, and the bridge to a shared backend.
//!
//! Nothing here does I/O, reads a clock, takes a lock or draws randomness for ids: inputs in,
//! outcomes out, time passed in as [`Time`]. The node's actors and the wasm bindings drive
//! these state machines and act on every outcome (each type's documentation gives its driving
//! contract).
//!
//! # Layout
//! - [`topic`]: [`Topic`], a validated topic name with its namespace, and [`TopicError`].
//! - [`session`]: [`SessionId`], allocated by the registry, monotonic, never reused.
//! - [`registry`]: [`Registry`], who listens to what; [`Subscribed`] / [`Unsubscribed`] /
//!   [`Emptied`] report the 0↔1 edges an upstream bridge must act on.
//! - [`frame`]: the typed protocol frames ([`Frame`], [`ClientFrame`], [`Request`],
//!   [`Payload`], [`Reply`]).
//! - [`codec`]: decoding with a typed [`DecodeError`] for every malformation, and encoding of
//!   replies, `phx_close` and broadcasts (encoded once into a shared [`SharedFrame`]).
//! - [`rules`]: [`ChannelRules`], who may join and push per namespace ([`Rule`]: anyone,
//!   authenticated, owner, nobody).
//! - [`connection`]: [`Connection`](connection::Connection), the protocol of one client socket
//!   (joins, leaves, pushes, heartbeats, replies, close codes) as a sans-IO state machine.
//! - [`bridge`]: [`Bridge`](bridge::Bridge), the link to a shared backend (subscriptions,
//!   confirmations, publishes, liveness, reconnects) as a sans-IO state machine.
//! - [`local`]: [`LocalServer`](local::LocalServer), a whole server in memory (connections,
//!   registry, rules, tokens, limits) driving the engine as the node does, synchronously; the
//!   WebAssembly fake server's core and the differential tests' reference.
//! - [`token`]: HS256 connect tokens ([`TokenSecret`](token::TokenSecret)), checked the same
//!   way by the node and the fake server.
//! - [`history`]: stream positions, a topic's history in memory, and the recovery merge.
//! - [`presence`]: who is on a topic: members, batched diffs and state in phoenix.js' format,
//!   and the changes a backend announces.
//! - [`time`]: [`Time`], the time the drivers pass in; [`rate`]: [`TokenBucket`].
//! - `compact`: the maps and sets of the state machines: hash tables on the node, plain lists
//!   in WebAssembly (for the module's size).
//! - `model` (feature `model`): a plain reference model and op-sequence checker shared by
//!   property tests, fuzz targets and the wasm tests.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod codec;
mod compact;
pub mod connection;
pub mod frame;
pub mod history;
pub mod local;
#[cfg(any(test, feature = "model"))]
pub mod model;
pub mod presence;
pub mod rate;
pub mod registry;
pub mod rules;
pub mod session;
pub mod time;
pub mod token;
pub mod topic;

pub use codec::{
    decode_frame, decode_frame_bytes, decode_request, decode_request_addressed, encode_broadcast,
    encode_close, encode_parts, encode_reply, DecodeError, Field, Rejected, ReplyTo, SharedFrame,
    DEFAULT_MAX_FRAME_BYTES, MAX_REF_BYTES,
};
pub use frame::{events, ClientFrame, Frame, Payload, Reply, Request, HEARTBEAT_TOPIC};
pub use rate::TokenBucket;
pub use registry::{
    Emptied, Registry, SubscribeError, Subscribed, Subscribers, Unsubscribed,
    DEFAULT_MAX_TOPICS_PER_SESSION,
};
pub use rules::{Access, ChannelRules, Rule, UnknownRule};
pub use session::SessionId;
pub use time::Time;
pub use topic::{Topic, TopicError, MAX_TOPIC_BYTES};
