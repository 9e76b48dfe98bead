//! The wasm tests shared by `tests/node.rs` and `tests/browser.rs`: each file includes this
//! module, so every test runs in both environments.

mod codec;
mod digests;
mod server;

use js_sys::{Reflect, JSON};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::wasm_bindgen_test;

/// `JSON.stringify(value)`.
pub(crate) fn json(value: &JsValue) -> String {
    JSON::stringify(value)
        .ok()
        .and_then(|text| text.as_string())
        .unwrap_or_else(|| "<not JSON>".to_owned())
}

/// A property of a JavaScript object.
pub(crate) fn get(target: &JsValue, key: &str) -> JsValue {
    Reflect::get(target, &key.into()).expect("Reflect.get on an object")
}

/// The `code` property of a thrown error (asserting it is an `Error`).
pub(crate) fn code(thrown: &JsValue) -> String {
    assert!(
        thrown.is_instance_of::<js_sys::Error>(),
        "not an Error: {thrown:?}"
    );
    get(thrown, "code")
        .as_string()
        .expect("the error has a string code")
}

/// The `message` of a thrown error.
pub(crate) fn message(thrown: &JsValue) -> String {
    get(thrown, "message")
        .as_string()
        .expect("the error has a message")
}

#[wasm_bindgen_test]
fn model_digests_match_the_native_table() {
    let mismatches = digests::mismatches();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
