//! `decodeFrame`: the node's Phoenix Channels V2 JSON decoder for client frames, with its
//! errors.
//!
//! `decodeFrame` reads what a client sends, by the rules the node applies to client frames.
//! `encodeFrame` is the package's JavaScript (`js/fake-server.js`): `JSON.stringify` writes a
//! frame exactly as the node's encoder does, and the refs, topic and event are checked by this
//! decoder, so neither can drift from the node. The `FrameInput` type below is its argument.

use switchboard_core::{decode_request, events, Request, DEFAULT_MAX_FRAME_BYTES};
use wasm_bindgen::prelude::*;

use crate::errors;
use crate::js::{self, Object};

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
