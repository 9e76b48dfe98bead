//! Fan-out of one message: serialise it once, hand every handler its own fresh copy, call them
//! all, and report every handler that threw.

use wasm_bindgen::prelude::*;

use crate::errors;
use crate::js::{self, Array, Function};

/// A message serialised to JSON text exactly once; every reader gets its own parsed copy. The
/// text stays a JavaScript string: parsing it for each handler never copies it through wasm
/// memory.
#[derive(Debug, Clone)]
pub(crate) struct Message(JsValue);

impl Message {
    /// Serialises `value` with `JSON.stringify` (so `toJSON` runs, as it would before the
    /// value went over a socket). `what` names the value in the error.
    ///
    /// # Errors
    /// [`errors::NOT_SERIALIZABLE`] for values JSON cannot carry: `undefined`, a function or
    /// a symbol (which `JSON.stringify` turns into nothing), a `BigInt` or a cycle (which make
    /// it throw).
    pub(crate) fn serialize(value: &JsValue, what: &str) -> Result<Self, JsValue> {
        match js::stringify(value) {
            Ok(text) if text.is_string() => Ok(Self(text)),
            Ok(_) => Err(errors::not_serializable(what, None)),
            Err(thrown) => Err(errors::not_serializable(what, Some(&thrown))),
        }
    }

    /// A fresh deserialised copy: nothing a reader does to it is seen by anyone else.
    pub(crate) fn copy(&self) -> Result<JsValue, JsValue> {
        js::parse(&self.0)
    }

    /// The JSON text.
    pub(crate) fn text(&self) -> String {
        // The constructor only keeps strings.
        self.0.as_string().unwrap_or_default()
    }
}

/// Calls each handler with `(topic, copy)`, every one of them even when some throw.
///
/// Returns how many handlers were called.
///
/// # Errors
/// After calling every handler, the [`errors::HANDLER_FAILED`] `AggregateError` when any of
/// them threw.
pub(crate) fn deliver(
    topic: &str,
    message: &Message,
    handlers: &[Function],
) -> Result<usize, JsValue> {
    let topic_value = JsValue::from_str(topic);
    let failures = Array::new();
    for handler in handlers {
        let copy = message.copy()?;
        if let Err(thrown) = handler.call2(&JsValue::UNDEFINED, &topic_value, &copy) {
            failures.push(&thrown);
        }
    }
    if failures.length() == 0 {
        Ok(handlers.len())
    } else {
        Err(errors::handlers_failed(topic, handlers.len(), &failures))
    }
}
