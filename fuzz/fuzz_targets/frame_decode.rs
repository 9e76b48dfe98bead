//! Fuzz target: arbitrary bytes through the frame decoders. Decoding must never panic, and a
//! frame or request that decodes must re-encode to text that decodes equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_core::{decode_frame, decode_frame_bytes, decode_request, DEFAULT_MAX_FRAME_BYTES};

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
