//! The wasm tests, run in headless Chromium by `wasm-bindgen-test-runner` with chromedriver
//! (`wasm/test.sh`).
#![cfg(target_arch = "wasm32")]

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

mod common;
