//! Every error thrown to JavaScript, made in one place: an `Error` whose message is the core
//! error's text (the same words the node puts in its replies) and whose `code` property is the
//! core error's stable code.
//!
//! Codes that only the bindings can produce (a bad argument, a message JSON cannot carry, a
//! handler that threw) are the constants below.

use std::fmt::Display;

use switchboard_core::{DecodeError, SubscribeError, TopicError};
use wasm_bindgen::prelude::*;

use crate::hub::Refusal;
use crate::js::{AggregateError, Array, Error};

/// An argument has the wrong shape (options that are not an object, a handler that is not a
/// function, a frame that is not an object, an unknown option).
pub(crate) const INVALID_ARGUMENT: &str = "invalid_argument";
/// A message or payload JSON cannot represent (`undefined`, a function, a `BigInt`, a cycle).
pub(crate) const NOT_SERIALIZABLE: &str = "not_serializable";
/// One or more handlers threw during a broadcast (thrown after every handler was called).
pub(crate) const HANDLER_FAILED: &str = "handler_failed";

/// An error with a stable code.
pub(crate) trait Coded: Display {
    /// The stable, machine-readable code.
    fn code(&self) -> &'static str;
}

impl Coded for TopicError {
    fn code(&self) -> &'static str {
        Self::code(self)
    }
}

impl Coded for SubscribeError {
    fn code(&self) -> &'static str {
        Self::code(self)
    }
}

impl Coded for DecodeError {
    fn code(&self) -> &'static str {
        Self::code(self)
    }
}

impl Coded for Refusal {
    fn code(&self) -> &'static str {
        Self::code(self)
    }
}

/// The JavaScript `Error` for a core error.
pub(crate) fn to_js(err: &impl Coded) -> JsValue {
    coded(&err.to_string(), err.code())
}

/// An `Error` with `message` and a `code` property.
pub(crate) fn coded(message: &str, code: &str) -> JsValue {
    let error = Error::new(message);
    set(&error, "code", &code.into());
    error.into()
}

/// An [`INVALID_ARGUMENT`] error.
pub(crate) fn invalid_argument(message: &str) -> JsValue {
    coded(message, INVALID_ARGUMENT)
}

/// A [`NOT_SERIALIZABLE`] error; `cause` is what `JSON.stringify` threw, if it threw.
pub(crate) fn not_serializable(what: &str, cause: Option<&JsValue>) -> JsValue {
    let detail = cause
        .filter(|cause| cause.is_instance_of::<Error>())
        .and_then(|cause| cause.unchecked_ref::<Error>().message().as_string())
        .map(|message| format!(": {message}"))
        .unwrap_or_default();
    coded(
        &format!("{what} is not JSON-serialisable{detail}"),
        NOT_SERIALIZABLE,
    )
}

/// The [`HANDLER_FAILED`] error: an `AggregateError` whose `errors` are the values the
/// handlers threw, in delivery order, with `code`, `topic` and `delivered` properties.
pub(crate) fn handlers_failed(topic: &str, delivered: usize, errors: &Array) -> JsValue {
    let message = format!(
        "{failed} of {delivered} handlers of topic {topic:?} threw (every handler was called)",
        failed = errors.length()
    );
    let error = AggregateError::new(errors, &message);
    set(&error, "code", &HANDLER_FAILED.into());
    set(&error, "topic", &topic.into());
    set(&error, "delivered", &JsValue::from(delivered));
    error.into()
}

/// Defines a property on an object the bindings just created.
pub(crate) fn set(target: &JsValue, key: &str, value: &JsValue) {
    // A fresh, extensible object with no setters: defining a property on it cannot fail, so
    // there is nothing to report.
    let _defined = crate::js::set_property(target, key, value);
}
