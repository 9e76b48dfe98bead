//! The wasm tests, run in Node.js by `wasm-bindgen-test-runner` (`wasm/test.sh`).
#![cfg(target_arch = "wasm32")]

mod common;
