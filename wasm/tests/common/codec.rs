//! `decodeFrame`: the node's decoder of client frames and its error codes (`encodeFrame` is
//! JavaScript, tested by the package's `node --test` suite).

use switchboard_wasm::decode_frame;
use wasm_bindgen_test::wasm_bindgen_test;

use super::{code, json};

#[wasm_bindgen_test]
fn decodes_client_frames_with_their_kind() {
    let cases = [
        (
            r#"["3","3","room:lobby","phx_join",{"token":"t"}]"#,
            r#"{"joinRef":"3","ref":"3","topic":"room:lobby","event":"phx_join","payload":{"token":"t"},"kind":"join"}"#,
        ),
        (
            r#"["3","5","room:lobby","phx_leave",{"ignored":true}]"#,
            r#"{"joinRef":"3","ref":"5","topic":"room:lobby","event":"phx_leave","payload":{},"kind":"leave"}"#,
        ),
        (
            r#"[null,"6","phoenix","heartbeat",{}]"#,
            r#"{"joinRef":null,"ref":"6","topic":"phoenix","event":"heartbeat","payload":{},"kind":"heartbeat"}"#,
        ),
        (
            r#"["3",null,"room:lobby","new_msg",{"body":"hi","n":[1,2.5]}]"#,
            r#"{"joinRef":"3","ref":null,"topic":"room:lobby","event":"new_msg","payload":{"body":"hi","n":[1,2.5]},"kind":"push"}"#,
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(json(&decode_frame(text).expect(text)), expected);
    }
}

#[wasm_bindgen_test]
fn decode_errors_carry_the_nodes_codes() {
    let oversized = format!(r#"[null,null,"t","e",{{"pad":"{}"}}]"#, "x".repeat(70_000));
    let cases = [
        (oversized.as_str(), "frame_too_large"),
        ("not json", "not_json"),
        (r#"{"a":1}"#, "not_array"),
        (r#"[null,null,"t"]"#, "wrong_length"),
        (r#"[1,null,"t","e",{}]"#, "wrong_type"),
        (r#"[null,null,"t","e",[1]]"#, "payload_not_object"),
        (r#"[null,null,"","e",{}]"#, "invalid_topic"),
        (r#"[null,null,"t","",{}]"#, "empty_event"),
        (r#"[null,"1","t","phx_reply",{}]"#, "reserved_event"),
    ];
    for (text, expected) in cases {
        let thrown = decode_frame(text).expect_err(expected);
        assert_eq!(code(&thrown), expected);
    }
    let thrown = decode_frame(r#"[1,null,"t","e",{}]"#).expect_err("wrong type");
    assert_eq!(super::message(&thrown), "join_ref must be a string or null");
}
