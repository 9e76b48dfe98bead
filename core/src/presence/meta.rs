//! A member's meta: a JSON object, checked and bounded, sent with its `phx_ref`.
//!
//! The meta of a socket's membership merges two objects: the token's `info` claim (what the
//! application signed: a name, an avatar) and the join's `presence` parameter (what the client
//! says about itself: `{"status": "typing"}`). Where both name a field, `info` wins, so a
//! client cannot claim another name. Fields starting with `phx_` belong to the protocol.

use std::fmt;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::Payload;

/// Why a meta was refused. The text is the join's (or update's) error reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The value is not a JSON object.
    #[error("invalid presence: {what} must be a JSON object")]
    NotAnObject {
        /// Which value (`the presence parameter`, `the token's info claim`).
        what: &'static str,
    },
    /// A field name the protocol uses.
    #[error(
        "invalid presence: the field {field:?} is reserved (phx_ fields belong to the protocol)"
    )]
    ReservedField {
        /// The field.
        field: String,
    },
    /// Over the size bound.
    #[error("invalid presence: the meta is {size} bytes of JSON; the limit is {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// The presence key is over [`MAX_KEY_BYTES`](super::MAX_KEY_BYTES).
    #[error("invalid presence: the key is {len} bytes; the limit is {max} bytes")]
    KeyTooLong {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
}

/// A meta object, valid JSON text (compact, fields sorted).
#[derive(Clone, PartialEq, Eq)]
pub struct Meta(Payload);

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl Default for Meta {
    fn default() -> Self {
        Self::empty()
    }
}

impl Meta {
    /// `{}`.
    #[must_use]
    pub fn empty() -> Self {
        Self(Payload::empty_object())
    }

    /// Reads `json` (named `what` in errors) as a meta object.
    ///
    /// # Errors
    /// [`MetaError::NotAnObject`] for anything but an object, [`MetaError::ReservedField`] for
    /// a `phx_` field.
    pub fn parse(json: &str, what: &'static str) -> Result<Self, MetaError> {
        let fields = object(json, what)?;
        Ok(Self::from_fields(&fields))
    }

    /// The meta of a membership: `info`'s fields over `client`'s, at most `max_bytes` of JSON.
    ///
    /// # Errors
    /// [`MetaError::TooLarge`] when the merged object is over `max_bytes`.
    pub fn merge(
        info: Option<&Self>,
        client: Option<&Self>,
        max_bytes: usize,
    ) -> Result<Self, MetaError> {
        let merged = match (info, client) {
            (None, None) => Self::empty(),
            (Some(only), None) | (None, Some(only)) => only.clone(),
            (Some(info), Some(client)) => {
                // unwrap-free: both are objects by construction.
                let mut fields = object(client.0.get(), "the meta").unwrap_or_default();
                fields.extend(object(info.0.get(), "the meta").unwrap_or_default());
                Self::from_fields(&fields)
            }
        };
        let size = merged.0.get().len();
        if size > max_bytes {
            return Err(MetaError::TooLarge {
                size,
                max: max_bytes,
            });
        }
        Ok(merged)
    }

    fn from_fields(fields: &Map<String, Value>) -> Self {
        // unwrap: a map of JSON values always serializes, and its text is an object.
        let text = serde_json::to_string(fields).expect("a JSON map serializes");
        Self(Payload::from_json_string(text).expect("serialized JSON is valid"))
    }

    /// The object's JSON text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Bytes of JSON.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Whether the object has no field.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.get() == "{}"
    }

    /// Appends the meta as phoenix.js sees it to `out`: `phx_ref` (and `phx_ref_prev` for an
    /// update) first, then the meta's own fields.
    pub fn write_with_refs(&self, out: &mut String, phx_ref: &str, prev: Option<&str>) {
        out.push_str(r#"{"phx_ref":"#);
        push_json_string(out, phx_ref);
        if let Some(prev) = prev {
            out.push_str(r#","phx_ref_prev":"#);
            push_json_string(out, prev);
        }
        let inner = &self.0.get()[1..];
        // JSON's whitespace is ASCII (a byte scan keeps Unicode's tables out of the
        // WebAssembly module).
        if inner.bytes().find(|byte| !byte.is_ascii_whitespace()) != Some(b'}') {
            out.push(',');
        }
        out.push_str(inner);
    }
}

/// Checks a presence key's length.
///
/// # Errors
/// [`MetaError::KeyTooLong`].
pub fn check_key(key: &str) -> Result<(), MetaError> {
    if key.len() > super::MAX_KEY_BYTES {
        return Err(MetaError::KeyTooLong {
            len: key.len(),
            max: super::MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// `json` as an object's fields, refusing `phx_` fields.
fn object(json: &str, what: &'static str) -> Result<Map<String, Value>, MetaError> {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(json) else {
        return Err(MetaError::NotAnObject { what });
    };
    if let Some(field) = fields.keys().find(|field| field.starts_with("phx_")) {
        return Err(MetaError::ReservedField {
            field: field.clone(),
        });
    }
    Ok(fields)
}

/// Appends `text` as a JSON string.
pub(crate) fn push_json_string(out: &mut String, text: &str) {
    if text
        .bytes()
        .all(|byte| byte >= 0x20 && byte != b'"' && byte != b'\\')
    {
        // Nothing to escape (keys and refs nearly always): no allocation.
        out.push('"');
        out.push_str(text);
        out.push('"');
        return;
    }
    // unwrap: a string always serializes.
    out.push_str(&serde_json::to_string(text).expect("a string serializes"));
}

/// Reads a meta from a raw JSON value (a join's `presence` parameter).
///
/// # Errors
/// As [`Meta::parse`].
pub fn from_raw(raw: &RawValue, what: &'static str) -> Result<Meta, MetaError> {
    Meta::parse(raw.get(), what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(json: &str) -> Meta {
        Meta::parse(json, "the meta").unwrap()
    }

    #[test]
    fn only_objects_without_phx_fields_are_metas() {
        assert_eq!(
            Meta::parse("[1]", "the presence parameter"),
            Err(MetaError::NotAnObject {
                what: "the presence parameter"
            })
        );
        assert!(Meta::parse("nope", "x").is_err());
        let err = Meta::parse(r#"{"phx_ref":"forged"}"#, "x").unwrap_err();
        assert!(err.to_string().contains("\"phx_ref\" is reserved"), "{err}");
        assert_eq!(
            meta(r#"{ "b": 1, "a": [true] }"#).as_str(),
            r#"{"a":[true],"b":1}"#
        );
    }

    #[test]
    fn the_applications_info_wins_over_the_client() {
        let info = meta(r#"{"name":"Ada","avatar":"a.png"}"#);
        let client = meta(r#"{"name":"Mallory","status":"typing"}"#);
        let merged = Meta::merge(Some(&info), Some(&client), 1024).unwrap();
        assert_eq!(
            merged.as_str(),
            r#"{"avatar":"a.png","name":"Ada","status":"typing"}"#
        );
        assert_eq!(Meta::merge(None, None, 1024).unwrap(), Meta::empty());
        let err = Meta::merge(None, Some(&client), 10).unwrap_err();
        assert_eq!(err, MetaError::TooLarge { size: 36, max: 10 });
        assert!(err.to_string().contains("the limit is 10 bytes"));
    }

    #[test]
    fn refs_come_first_in_the_json_phoenix_sees() {
        let mut out = String::new();
        meta(r#"{"a":1}"#).write_with_refs(&mut out, "r\"1", Some("r0"));
        assert_eq!(out, r#"{"phx_ref":"r\"1","phx_ref_prev":"r0","a":1}"#);
        let mut out = String::new();
        Meta::empty().write_with_refs(&mut out, "r1", None);
        assert_eq!(out, r#"{"phx_ref":"r1"}"#);
        let _: Value = serde_json::from_str(&out).unwrap();
    }

    #[test]
    fn strings_are_escaped_only_when_they_need_it() {
        for text in [
            "plain",
            "",
            "é €",
            "quote\"",
            "back\\slash",
            "line\nbreak",
            "\u{1}",
        ] {
            let mut out = String::new();
            push_json_string(&mut out, text);
            assert_eq!(out, serde_json::to_string(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn keys_are_bounded() {
        assert!(check_key(&"k".repeat(256)).is_ok());
        assert!(check_key(&"k".repeat(257)).is_err());
    }
}
