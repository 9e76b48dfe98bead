//! The wasm tests shared by `tests/node.rs` and `tests/browser.rs`: each file includes this
//! module, so every test runs in both environments.

mod codec;
mod digests;
mod pubsub;
mod recording;

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Reflect, JSON};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::wasm_bindgen_test;

/// What a [`Log`]'s handlers received: `(label, topic, message as JSON)`.
type Entries = Rc<RefCell<Vec<(String, String, String)>>>;

/// Collects deliveries from any number of labelled handlers, in call order.
#[derive(Clone, Default)]
pub(crate) struct Log(Entries);

impl Log {
    /// A handler that records `(label, topic, JSON of message)`.
    pub(crate) fn handler(&self, label: &str) -> JsValue {
        let entries = Rc::clone(&self.0);
        let label = label.to_owned();
        Closure::<dyn FnMut(String, JsValue)>::new(move |topic: String, message: JsValue| {
            entries
                .borrow_mut()
                .push((label.clone(), topic, json(&message)));
        })
        .into_js_value()
    }

    /// Every delivery so far.
    pub(crate) fn entries(&self) -> Vec<(String, String, String)> {
        self.0.borrow().clone()
    }

    /// The labels of the handlers called, in order.
    pub(crate) fn labels(&self) -> Vec<String> {
        self.0
            .borrow()
            .iter()
            .map(|(label, _, _)| label.clone())
            .collect()
    }
}

/// A handler that runs `body` with the message it receives.
pub(crate) fn handler_with(body: impl FnMut(JsValue) + 'static) -> JsValue {
    let mut body = body;
    Closure::<dyn FnMut(JsValue, JsValue)>::new(move |_topic: JsValue, message: JsValue| {
        body(message);
    })
    .into_js_value()
}

/// A handler that throws `Error(message)`.
pub(crate) fn throwing(message: &str) -> JsValue {
    let message = message.to_owned();
    Closure::<dyn FnMut(JsValue, JsValue) -> Result<(), JsValue>>::new(
        move |_topic: JsValue, _message: JsValue| Err(js_sys::Error::new(&message).into()),
    )
    .into_js_value()
}

/// `JSON.stringify(value)`.
pub(crate) fn json(value: &JsValue) -> String {
    JSON::stringify(value)
        .ok()
        .and_then(|text| text.as_string())
        .unwrap_or_else(|| "<not JSON>".to_owned())
}

/// `JSON.parse(text)`.
pub(crate) fn parse(text: &str) -> JsValue {
    JSON::parse(text).expect("test JSON is valid")
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
