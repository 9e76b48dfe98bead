//! Every error thrown to JavaScript, made in one place: an `Error` whose message is the core
//! error's text (the same words the node puts in its replies) and whose `code` property is the
//! core error's stable code.
//!
//! Codes that only the bindings can produce (a bad argument, a message JSON cannot carry, a
//! token asked of a server without a secret) are the constants below.

use std::fmt::Display;

use switchboard_core::DecodeError;
use wasm_bindgen::prelude::*;

use crate::js::Error;

/// An argument has the wrong shape (a frame that is not an object, a token secret that is too
/// short).
pub(crate) const INVALID_ARGUMENT: &str = "invalid_argument";
/// A message or payload JSON cannot represent (`undefined`, a function, a `BigInt`, a cycle).
pub(crate) const NOT_SERIALIZABLE: &str = "not_serializable";
/// A token was asked of a `FakeServer` without a token secret.
pub(crate) const NO_TOKEN_SECRET: &str = "no_token_secret";

/// An error with a stable code.
pub(crate) trait Coded: Display {
    /// The stable, machine-readable code.
    fn code(&self) -> &'static str;
}

impl Coded for DecodeError {
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

/// A [`NOT_SERIALIZABLE`] error for `what`.
pub(crate) fn not_serializable(what: &str) -> JsValue {
    coded(
        &format!("{what} is not JSON-serialisable"),
        NOT_SERIALIZABLE,
    )
}

/// Defines a property on an object the bindings just created.
pub(crate) fn set(target: &JsValue, key: &str, value: &JsValue) {
    // A fresh, extensible object with no setters: defining a property on it cannot fail, so
    // there is nothing to report.
    let _defined = crate::js::set_property(target, key, value);
}
