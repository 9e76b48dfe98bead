//! Fuzz target: arbitrary bytes through the frame decoders, the one the node uses on every
//! client frame (`decode_request_addressed`) included. Decoding must never panic, a frame or
//! request that decodes must re-encode to text that decodes equal, and a rejection that can be
//! answered must name the frame's own addressing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_core::{
    decode_frame, decode_frame_bytes, decode_request, decode_request_addressed,
    DEFAULT_MAX_FRAME_BYTES,
};

const MAX: usize = DEFAULT_MAX_FRAME_BYTES;

fuzz_target!(|data: &[u8]| {
    let frame = decode_frame_bytes(data, MAX);
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(frame.is_err(), "non-UTF-8 input decoded: {frame:?}");
        return;
    };
    assert_eq!(
        frame,
        decode_frame(text, MAX),
        "bytes and text decoders disagree"
    );
    if let Ok(frame) = &frame {
        let encoded = frame.encode();
        assert_eq!(
            decode_frame(&encoded, usize::MAX).as_ref(),
            Ok(frame),
            "re-encoded frame {encoded} does not decode equal"
        );
    }
    let request = decode_request(text, MAX);
    let addressed = decode_request_addressed(text, MAX);
    match (&addressed, &request) {
        (Ok(a), Ok(r)) => assert_eq!(a, r, "the two request decoders disagree"),
        (Err(rejected), Err(err)) => {
            assert_eq!(&rejected.error, err, "the two request decoders disagree");
            if let Some(to) = &rejected.reply_to {
                // An answerable rejection came from a well-formed array: its addressing is
                // the frame's own. The elements are read raw, as the decoder reads them: a
                // payload may hold escapes (a lone surrogate) that `serde_json::Value` refuses
                // but that are still JSON text a browser parses.
                let parts: Vec<&serde_json::value::RawValue> =
                    serde_json::from_str(text).expect("an answerable frame is a JSON array");
                let topic: String =
                    serde_json::from_str(parts[2].get()).expect("its topic is a string");
                assert_eq!(topic, to.topic);
            }
        }
        _ => panic!("the two request decoders disagree: {addressed:?} vs {request:?}"),
    }
    match (&request, &frame) {
        (Ok(request), Ok(frame)) => {
            assert_eq!(request.topic, frame.topic);
            let encoded = request.encode();
            assert_eq!(
                decode_request(&encoded, usize::MAX).as_ref(),
                Ok(request),
                "re-encoded request {encoded} does not decode equal"
            );
        }
        (Ok(request), Err(err)) => panic!("request {request:?} decoded from a bad frame: {err}"),
        (Err(_), _) => {}
    }
});
