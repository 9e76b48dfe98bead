//! The options object of `new PubSub(options)` and `new RecordingPubSub(options)`, checked
//! strictly: a misspelt option is an error, not a silent default.

use switchboard_core::DEFAULT_MAX_TOPICS_PER_SESSION;
use wasm_bindgen::prelude::*;

use crate::errors;
use crate::js::{self, Object};

#[wasm_bindgen(typescript_custom_section)]
const OPTIONS_TS: &str = r#"
/** Options of `new PubSub(options)` and `new RecordingPubSub(options)`. */
export interface PubSubOptions {
  /**
   * The most topics one session may subscribe to at once (a non-negative integer). One more
   * `subscribe` throws with code `too_many_topics`, as the node refuses a join. Default 100,
   * Phoenix's limit.
   */
  maxTopicsPerSession?: number;
}
"#;

#[wasm_bindgen]
extern "C" {
    /// See the `PubSubOptions` TypeScript interface.
    #[wasm_bindgen(typescript_type = "PubSubOptions")]
    pub type PubSubOptions;
}

const MAX_TOPICS_PER_SESSION: &str = "maxTopicsPerSession";

/// Reads the per-session topic limit from `options` (absent: the default).
///
/// # Errors
/// [`errors::INVALID_ARGUMENT`] for options that are not an object, an unknown option, or a
/// limit that is not a non-negative integer.
pub(crate) fn max_topics_per_session(options: Option<&PubSubOptions>) -> Result<usize, JsValue> {
    let Some(options) = options.map(AsRef::<JsValue>::as_ref) else {
        return Ok(DEFAULT_MAX_TOPICS_PER_SESSION);
    };
    if options.is_undefined() || options.is_null() {
        return Ok(DEFAULT_MAX_TOPICS_PER_SESSION);
    }
    if !options.is_object() {
        return Err(errors::invalid_argument(
            "options must be an object such as { maxTopicsPerSession: 100 }",
        ));
    }
    let keys = Object::keys(options);
    for index in 0..keys.length() {
        let key = keys.get(index).as_string().unwrap_or_default();
        if key != MAX_TOPICS_PER_SESSION {
            return Err(errors::invalid_argument(&format!(
                "unknown option {key:?}; the only option is {MAX_TOPICS_PER_SESSION:?}"
            )));
        }
    }
    let value = js::get_property(options, MAX_TOPICS_PER_SESSION)?;
    if value.is_undefined() {
        return Ok(DEFAULT_MAX_TOPICS_PER_SESSION);
    }
    match value.as_f64() {
        // The bounds check makes the cast exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(limit) if limit.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&limit) => {
            Ok(limit as usize)
        }
        _ => Err(errors::invalid_argument(
            "maxTopicsPerSession must be a non-negative integer",
        )),
    }
}
