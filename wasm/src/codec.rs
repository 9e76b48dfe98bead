//! `decodeFrame` / `encodeFrame`: the node's Phoenix Channels V2 JSON codec, with its errors.
//!
//! `decodeFrame` reads what a client sends, by the rules the node applies to client frames;
//! `encodeFrame` writes a frame in either direction (including the server's `phx_reply`,
//! `phx_close` and broadcasts), checked by the rules every frame obeys.

use switchboard_core::{decode_request, events, Request, DEFAULT_MAX_FRAME_BYTES};
use wasm_bindgen::prelude::*;

use crate::delivery::Message;
use crate::errors;
use crate::js::{self, Array, Object};

#[wasm_bindgen(typescript_custom_section)]
const FRAME_TS: &str = r#"
/** A client frame as the node understands it, from `decodeFrame`. */
export interface DecodedFrame {
  /** The ref of the join this frame belongs to, or `null`. */
  joinRef: string | null;
  /** The ref a reply will echo, or `null`. */
  ref: string | null;
  topic: string;
  event: string;
  /** The payload (always an object in a client frame; `{}` for `phx_leave` and `heartbeat`,
   *  whose payload the node ignores). */
  payload: Record<string, unknown>;
  /** What the node does with it: `phx_join` is a join, `phx_leave` a leave, `heartbeat` on
   *  topic `phoenix` a heartbeat, any other event a push (a publish to the topic). */
  kind: "join" | "leave" | "heartbeat" | "push";
}

/** The frame `encodeFrame` writes as `[joinRef, ref, topic, event, payload]`. */
export interface FrameInput {
  /** Default `null`. */
  joinRef?: string | null;
  /** Default `null`. */
  ref?: string | null;
  topic: string;
  event: string;
  /** Any JSON-serialisable value; default `{}`. */
  payload?: unknown;
}
"#;

/// Decodes a frame a client sent, with the node's rules for client frames: a five-element
/// JSON array `[joinRef, ref, topic, event, payload]` of at most 64 KiB, refs strings or
/// `null`, a valid topic, a non-empty event that is not one only the server sends, and an
/// object payload.
///
/// @throws Error whose `code` names the first problem, as the node reports it:
/// `frame_too_large`, `not_json`, `not_array`, `wrong_length`, `wrong_type`,
/// `payload_not_object`, `invalid_topic`, `empty_event` or `reserved_event`.
#[wasm_bindgen(js_name = decodeFrame, unchecked_return_type = "DecodedFrame")]
pub fn decode_frame(text: &str) -> Result<JsValue, JsValue> {
    let frame = decode_request(text, DEFAULT_MAX_FRAME_BYTES).map_err(|err| errors::to_js(&err))?;
    // The node ignores the payload of a leave or a heartbeat; so does the decoded frame.
    let (kind, event, payload) = match &frame.request {
        Request::Join { payload } => ("join", events::JOIN, Some(payload)),
        Request::Leave => ("leave", events::LEAVE, None),
        Request::Heartbeat => ("heartbeat", events::HEARTBEAT, None),
        Request::Push { event, payload } => ("push", event.as_str(), Some(payload)),
        // A request kind added to the core after these bindings were written.
        _ => {
            return Err(errors::invalid_argument(
                "the node accepts this frame, but these bindings do not know its kind",
            ))
        }
    };
    let payload = match payload {
        Some(payload) => js::parse_str(payload.get())?,
        None => Object::new().into(),
    };
    let object: JsValue = Object::new().into();
    let optional = |value: &Option<String>| value.as_deref().map_or(JsValue::NULL, JsValue::from);
    errors::set(&object, "joinRef", &optional(&frame.join_ref));
    errors::set(&object, "ref", &optional(&frame.msg_ref));
    errors::set(&object, "topic", &frame.topic.as_str().into());
    errors::set(&object, "event", &event.into());
    errors::set(&object, "payload", &payload);
    errors::set(&object, "kind", &kind.into());
    Ok(object)
}

/// Encodes `[joinRef, ref, topic, event, payload]` as the node writes it. Frames in either
/// direction are accepted (replies, `phx_close` and broadcasts too); the payload may be any
/// JSON value.
///
/// @throws Error with code `invalid_argument` when `frame` is not an object,
/// `not_serializable` for a payload JSON cannot carry, `wrong_type` for a ref that is not a
/// string or `null` or a topic or event that is not a string, `invalid_topic`, or
/// `empty_event`.
#[wasm_bindgen(js_name = encodeFrame)]
pub fn encode_frame(
    #[wasm_bindgen(unchecked_param_type = "FrameInput")] frame: JsValue,
) -> Result<String, JsValue> {
    if !frame.is_object() {
        return Err(errors::invalid_argument(
            "frame must be an object { joinRef, ref, topic, event, payload }",
        ));
    }
    let field = |name: &str| -> Result<JsValue, JsValue> {
        let value = js::get_property(&frame, name)?;
        Ok(if value.is_undefined() {
            JsValue::NULL
        } else {
            value
        })
    };
    let payload = js::get_property(&frame, "payload")?;
    let payload = if payload.is_undefined() {
        Object::new().into()
    } else if payload.is_function() || payload.is_symbol() {
        // Inside an array `JSON.stringify` would quietly write these as `null`.
        return Err(errors::not_serializable("payload", None));
    } else {
        payload
    };
    let array = Array::of5(
        &field("joinRef")?,
        &field("ref")?,
        &field("topic")?,
        &field("event")?,
        &payload,
    );
    let text = Message::serialize(&array, "frame")?.text();
    // The node's own decoder checks every element; a frame it accepts re-encodes canonically.
    let frame =
        switchboard_core::decode_frame(&text, usize::MAX).map_err(|err| errors::to_js(&err))?;
    Ok(frame.encode())
}
