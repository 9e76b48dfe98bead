//! WebAssembly bindings of [`switchboard_core`] for JavaScript: a fake Switchboard server for
//! testing frontend code that uses the official `phoenix` client, and the node's Phoenix
//! Channels V2 frame decoder. Frontend tests import it (npm package `switchboard-wasm`).
//!
//! The crate is thin: every protocol, routing, rule and token decision is the core's
//! ([`LocalServer`] drives the same [`Connection`] engine as the node's sessions). What lives
//! here is the conversion of JavaScript values; the package's JavaScript (`js/fake-server.js`)
//! emulates the browser `WebSocket` around it.
//!
//! # Layout
//! - [`server`]: `FakeServerEngine`, the core's [`LocalServer`] for the JavaScript
//!   `FakeServer` (internal: the package's JavaScript is its only user).
//! - [`codec`]: `decodeFrame` over the core codec (`encodeFrame` is JavaScript, checked by it).
//! - `errors`: every JavaScript `Error` thrown, each with the core's stable `code`.
//! - `js`: the JavaScript built-ins the bindings call, declared here rather than taken from
//!   `js-sys`, whose unused promise machinery would cost the module about 0.7 KB gzipped.
//! - this file also picks the module's allocator (talc).
//!
//! [`LocalServer`]: switchboard_core::local::LocalServer
//! [`Connection`]: switchboard_core::connection::Connection

pub mod codec;
mod errors;
mod js;
pub mod server;

pub use codec::decode_frame;
pub use server::Engine;

/// The allocator of the `.wasm` module: talc instead of the default dlmalloc, about 2.5 KB
/// smaller gzipped (and faster) for a single-threaded module. Native builds keep the system
/// allocator.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();
