//! WebAssembly bindings of [`switchboard_core`] for JavaScript: in-memory pub/sub with exactly
//! the Switchboard node's routing rules, topic rules, per-session limit and error codes, plus
//! the node's Phoenix Channels V2 frame codec. Frontend tests import it (npm package
//! `switchboard-wasm`) to run pub/sub without a server.
//!
//! The crate is thin: every routing and validation decision is the core's ([`Registry`],
//! [`Topic`], the codec); what lives here is the mapping of JavaScript session names to core
//! session ids, the handler table, and the JavaScript glue.
//!
//! # Layout
//! - `hub`: `Hub`, session names ↔ [`SessionId`]s and one handler per subscription over a
//!   core [`Registry`]; no JavaScript, unit tested natively.
//! - [`pubsub`]: the `PubSub` class (subscribe / unsubscribe / unsubscribeAll / broadcast and
//!   read-only stats).
//! - [`recording`]: the `RecordingPubSub` class, a `PubSub` that records every accepted call.
//! - `delivery`: broadcast fan-out: serialise once, a fresh copy per handler, every handler
//!   called, failures collected into one `handler_failed` error.
//! - [`codec`]: `decodeFrame` / `encodeFrame` over the core codec.
//! - [`options`]: the checked `PubSubOptions` object.
//! - `errors`: every JavaScript `Error` thrown, each with the core's stable `code`.
//! - `js`: the JavaScript built-ins the bindings call, declared here rather than taken from
//!   `js-sys`, whose unused promise machinery would cost the module about 0.7 KB gzipped.
//! - this file also picks the module's allocator (talc).
//!
//! [`Registry`]: switchboard_core::Registry
//! [`Topic`]: switchboard_core::Topic
//! [`SessionId`]: switchboard_core::SessionId

pub mod codec;
mod delivery;
mod errors;
mod hub;
mod js;
pub mod options;
pub mod pubsub;
pub mod recording;

pub use codec::{decode_frame, encode_frame};
pub use options::PubSubOptions;
pub use pubsub::PubSub;
pub use recording::RecordingPubSub;

/// The allocator of the `.wasm` module: talc instead of the default dlmalloc, about 2.5 KB
/// smaller gzipped (and faster) for a single-threaded module. Native builds keep the system
/// allocator.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();
