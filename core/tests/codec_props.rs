//! Property tests for the Phoenix V2 codec.
//!
//! - Decoding never panics, whatever the text or bytes (random, JSON-shaped, or a valid frame
//!   with bytes mutated), and whatever the size limit.
//! - Generated valid frames round-trip: `decode_request(encode(request)) == request` and
//!   `decode_frame(frame.encode()) == frame`, with refs and events full of quotes, backslashes,
//!   control characters and non-ASCII text, and payloads built from `serde_json` values.
//! - Any input that decodes re-encodes to text that decodes equal (the canonical form is a
//!   fixed point); `decode_request_addressed` agrees with `decode_request` and addresses
//!   exactly the content errors of well-formed frames; and the helpers `encode_reply` / `encode_close` / `encode_broadcast` produce
//!   frames that decode to what they were given.
//!
//! A WebSocket message arrives whole, so feeding the codec partial chunks is out of scope.

use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use switchboard_core::codec::ReplyTo;
use switchboard_core::{
    decode_frame, decode_frame_bytes, decode_request, decode_request_addressed, encode_broadcast,
    encode_close, encode_parts, encode_reply, events, ClientFrame, DecodeError, Frame, Payload,
    Reply, Request, Topic, DEFAULT_MAX_FRAME_BYTES, HEARTBEAT_TOPIC,
};

const MAX: usize = DEFAULT_MAX_FRAME_BYTES;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Characters that stress JSON string escaping: quotes, backslashes, every kind of control
/// character, the JavaScript line separators, multi-byte and astral code points.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => prop::sample::select(vec![
            '"', '\\', '/', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{0}', '\u{1}', '\u{1f}',
            '\u{7f}', '\u{80}', '\u{9f}', '\u{2028}', '\u{2029}', '\u{feff}', 'é', '☕', '😀',
            ':', ' ', '[', ']', '{', '}', ',',
        ]),
        1 => any::<char>(),
    ]
}

/// A string of [`tricky_char`]s.
fn tricky_string(max_len: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..max_len).prop_map(|chars| chars.into_iter().collect())
}

/// A ref as phoenix.js sends them (a counter) or anything a hostile client could send.
fn a_ref() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(0.8, prop_oneof![2 => "[0-9]{1,6}", 1 => tricky_string(24)])
}

/// A valid topic: typical `namespace:key` names, or any text without control characters.
fn a_topic() -> impl Strategy<Value = Topic> {
    prop_oneof![
        2 => "(room|auditlog|notification):[a-z0-9-]{1,36}",
        1 => Just(HEARTBEAT_TOPIC.to_owned()),
        2 => tricky_string(40),
        // Near the 255-byte limit, with multi-byte characters on both sides of it.
        1 => "[a-zé☕]{60,90}",
    ]
    .prop_filter_map("not a valid topic", |name| Topic::new(&name).ok())
}

/// A non-empty event name that is not one of the protocol's own.
fn a_custom_event() -> impl Strategy<Value = String> {
    prop_oneof![2 => "[a-z_]{1,16}", 1 => tricky_string(20)].prop_filter(
        "reserved or empty event",
        |event| {
            !event.is_empty()
                && ![
                    events::JOIN,
                    events::LEAVE,
                    events::REPLY,
                    events::CLOSE,
                    events::ERROR,
                    events::HEARTBEAT,
                ]
                .contains(&event.as_str())
        },
    )
}

/// Any non-empty event, the protocol's own included.
fn any_event() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => a_custom_event(),
        1 => prop::sample::select(vec![
            events::JOIN, events::LEAVE, events::REPLY, events::CLOSE, events::ERROR,
            events::HEARTBEAT,
        ])
        .prop_map(str::to_owned),
    ]
}

/// A JSON number: integers across the `i64`/`u64` range and finite floats.
fn a_number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        any::<f64>().prop_filter_map("not finite", Number::from_f64),
    ]
}

/// Any JSON value, a few levels deep.
fn a_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        a_number().prop_map(Value::Number),
        tricky_string(16).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(tricky_string(10), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A JSON object, as client requests carry.
fn an_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(tricky_string(10), a_value(), 0..6)
        .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>()))
}

/// A payload from `value`, either compact or pretty-printed (whitespace inside the raw text).
fn payload_of(value: &Value, pretty: bool) -> Payload {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    // unwrap: serialising a `Value` cannot fail, and its text is one JSON value.
    Payload::from_json_string(text.unwrap()).unwrap()
}

/// Any wire frame (the payload may be any JSON value).
fn a_frame() -> impl Strategy<Value = Frame> {
    (
        a_ref(),
        a_ref(),
        a_topic(),
        any_event(),
        a_value(),
        any::<bool>(),
    )
        .prop_map(|(join_ref, msg_ref, topic, event, value, pretty)| Frame {
            join_ref,
            msg_ref,
            topic,
            event,
            payload: payload_of(&value, pretty),
        })
}

/// A request a client can send, shaped so that its encoding decodes back to itself: a
/// heartbeat goes to the `phoenix` topic, a push never uses a protocol event.
fn a_request() -> impl Strategy<Value = ClientFrame> {
    let request = prop_oneof![
        (an_object(), any::<bool>()).prop_map(|(value, pretty)| Request::Join {
            payload: payload_of(&value, pretty)
        }),
        Just(Request::Leave),
        Just(Request::Heartbeat),
        (a_custom_event(), an_object(), any::<bool>()).prop_map(|(event, value, pretty)| {
            Request::Push {
                event,
                payload: payload_of(&value, pretty),
            }
        }),
    ];
    (a_ref(), a_ref(), a_topic(), request).prop_map(|(join_ref, msg_ref, topic, request)| {
        let topic = if request == Request::Heartbeat {
            // unwrap: "phoenix" is a valid topic.
            Topic::new(HEARTBEAT_TOPIC).unwrap()
        } else {
            topic
        };
        ClientFrame {
            join_ref,
            msg_ref,
            topic,
            request,
        }
    })
}

/// JSON-shaped noise: tokens of the Phoenix frame grammar in random order, so the decoder
/// gets past the JSON parser more often than with uniformly random text.
fn json_shaped() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "[",
            "]",
            "{",
            "}",
            ",",
            ":",
            "null",
            "true",
            "1",
            "-0.5e3",
            "\"",
            "\\",
            " ",
            "\"phoenix\"",
            "\"room:1\"",
            "\"phx_join\"",
            "\"phx_reply\"",
            "\"heartbeat\"",
            "\"\"",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"a\\\"b\"",
            "{}",
            "[]",
            "null,",
        ])
        .prop_map(str::to_owned),
        tricky_string(4),
    ];
    prop::collection::vec(token, 0..24).prop_map(|tokens| tokens.concat())
}

/// A valid frame's text with a few bytes replaced, inserted or removed.
fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        a_frame(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    )
        .prop_map(|(frame, edits)| {
            let mut bytes = frame.encode().into_bytes();
            for (at, byte, kind) in edits {
                let at = at.index(bytes.len() + 1);
                match kind {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.push(byte),
                }
            }
            bytes
        })
}

/// What every decoded input must satisfy beyond not panicking: its canonical encoding decodes
/// equal, request decoding agrees with frame decoding, and `is_object` agrees with a parse.
fn check_decoded(text: &str, max: usize) -> Result<(), TestCaseError> {
    let frame = decode_frame(text, max);
    let request = decode_request(text, max);
    match &frame {
        Ok(frame) => {
            let again = decode_frame(&frame.encode(), usize::MAX);
            prop_assert_eq!(again.as_ref(), Ok(frame), "re-encoded {}", frame.encode());
            // The payload is checked for JSON grammar only: a number out of `f64` range or a
            // lone surrogate escape is relayed verbatim although `Value` refuses it.
            if let Ok(parsed) = serde_json::from_str::<Value>(frame.payload.get()) {
                prop_assert_eq!(frame.payload.is_object(), parsed.is_object());
            }
        }
        Err(err) => {
            // Request decoding runs the frame checks first and must fail the same way.
            prop_assert_eq!(request.as_ref().err(), Some(err));
        }
    }
    match (decode_request_addressed(text, max), &request) {
        (Ok(addressed), Ok(request)) => prop_assert_eq!(&addressed, request),
        (Err(rejected), Err(err)) => {
            prop_assert_eq!(&rejected.error, err);
            // Only a well-formed five-element array can be answered.
            let structural = matches!(
                err,
                DecodeError::TooLarge { .. }
                    | DecodeError::NotUtf8
                    | DecodeError::NotJson { .. }
                    | DecodeError::NotArray
                    | DecodeError::WrongLength { .. }
                    | DecodeError::WrongType { .. }
                    | DecodeError::InvalidString { .. }
            );
            prop_assert_eq!(rejected.reply_to.is_none(), structural, "{:?}", rejected);
            if let (Some(to), Ok(frame)) = (&rejected.reply_to, &frame) {
                prop_assert_eq!(&to.join_ref, &frame.join_ref);
                prop_assert_eq!(&to.msg_ref, &frame.msg_ref);
                prop_assert_eq!(to.topic.as_str(), frame.topic.as_str());
            }
        }
        (addressed, request) => {
            return Err(TestCaseError::fail(format!(
                "decode_request_addressed {addressed:?} but decode_request {request:?}"
            )));
        }
    }
    if let Ok(request) = &request {
        let frame = frame.as_ref().expect("a request is a frame");
        prop_assert_eq!(&request.topic, &frame.topic);
        prop_assert_eq!(&request.join_ref, &frame.join_ref);
        prop_assert_eq!(&request.msg_ref, &frame.msg_ref);
        let again = decode_request(&request.encode(), usize::MAX);
        prop_assert_eq!(
            again.as_ref(),
            Ok(request),
            "re-encoded {}",
            request.encode()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn decoding_arbitrary_text_never_panics(text in any::<String>(), max in prop_oneof![Just(MAX), 0usize..64]) {
        check_decoded(&text, max)?;
    }

    #[test]
    fn decoding_json_shaped_text_never_panics(text in json_shaped()) {
        check_decoded(&text, MAX)?;
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let decoded = decode_frame_bytes(&bytes, MAX);
        match std::str::from_utf8(&bytes) {
            Ok(text) => {
                prop_assert_eq!(&decoded, &decode_frame(text, MAX));
                check_decoded(text, MAX)?;
            }
            Err(_) => prop_assert_eq!(decoded, Err(DecodeError::NotUtf8)),
        }
    }

    #[test]
    fn decoding_mutated_frames_never_panics(bytes in mutated_frame()) {
        let decoded = decode_frame_bytes(&bytes, MAX);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            prop_assert_eq!(&decoded, &decode_frame(text, MAX));
            check_decoded(text, MAX)?;
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn frames_round_trip(frame in a_frame()) {
        let text = frame.encode();
        prop_assert_eq!(decode_frame(&text, usize::MAX), Ok(frame.clone()), "text {}", text);
        prop_assert_eq!(decode_frame_bytes(text.as_bytes(), text.len()), Ok(frame));
    }

    #[test]
    fn requests_round_trip(request in a_request()) {
        let text = request.encode();
        prop_assert_eq!(decode_request(&text, usize::MAX), Ok(request), "text {}", text);
    }

    /// The size limit is in bytes and inclusive.
    #[test]
    fn limit_is_exactly_the_encoded_length(request in a_request()) {
        let text = request.encode();
        prop_assert!(decode_request(&text, text.len()).is_ok());
        prop_assert_eq!(
            decode_request(&text, text.len() - 1),
            Err(DecodeError::TooLarge { len: text.len(), max: text.len() - 1 })
        );
    }

    /// Text a client formatted its own way (whitespace between elements, escapes the encoder
    /// would not write) decodes to the same request as its canonical re-encoding.
    #[test]
    fn reformatted_requests_decode_equal(
        request in a_request(),
        gaps in prop::collection::vec(prop::sample::select(vec!["", " ", "\n", "\t", "\r\n  "]), 6),
        escape_ascii in any::<bool>(),
    ) {
        let frame = request.to_frame();
        let string = |text: &str| {
            if escape_ascii {
                // Every character as \uXXXX (surrogate pairs above the BMP), which decoders
                // must accept and the encoder never writes.
                let mut out = String::from("\"");
                for unit in text.encode_utf16() {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
                out.push('"');
                out
            } else {
                // unwrap: serialising a string cannot fail.
                serde_json::to_string(text).unwrap()
            }
        };
        let optional = |text: Option<&str>| text.map_or_else(|| "null".to_owned(), string);
        let text = format!(
            "{}[{}{}{},{}{}{},{}{}{},{}{}{},{}{}{}]{}",
            gaps[0],
            gaps[1], optional(frame.join_ref.as_deref()), gaps[2],
            gaps[3], optional(frame.msg_ref.as_deref()), gaps[4],
            gaps[5], string(frame.topic.as_str()), gaps[1],
            gaps[2], string(&frame.event), gaps[3],
            gaps[4], frame.payload.get(), gaps[5],
            gaps[0],
        );
        let decoded = decode_request(&text, usize::MAX);
        prop_assert_eq!(decoded.as_ref(), Ok(&request), "text {}", text);
        check_decoded(&text, usize::MAX)?;
    }

    /// A well-formed frame whose content breaks a rule is rejected with the addressing it
    /// carried, so the server can answer with a `phx_reply` error instead of closing.
    #[test]
    fn content_errors_are_addressed(
        request in a_request(),
        fault in 0u8..6,
        junk in tricky_string(8),
    ) {
        let frame = request.to_frame();
        let (topic, event, payload, expected) = match fault {
            0 => (String::new(), frame.event.clone(), frame.payload.get().to_owned(), "invalid_topic"),
            1 => (format!("{}\u{1}{junk}", frame.topic), frame.event.clone(), frame.payload.get().to_owned(), "invalid_topic"),
            2 => ("x".repeat(256), frame.event.clone(), frame.payload.get().to_owned(), "invalid_topic"),
            3 => (frame.topic.to_string(), String::new(), frame.payload.get().to_owned(), "empty_event"),
            4 => (frame.topic.to_string(), frame.event.clone(), serde_json::to_string(&junk).unwrap(), "payload_not_object"),
            _ => (frame.topic.to_string(), events::CLOSE.to_owned(), frame.payload.get().to_owned(), "reserved_event"),
        };
        let text = encode_parts(frame.join_ref.as_deref(), frame.msg_ref.as_deref(), &topic, &event, &payload);
        let rejected = decode_request_addressed(&text, usize::MAX)
            .err()
            .ok_or_else(|| TestCaseError::fail(format!("accepted {text}")))?;
        prop_assert_eq!(rejected.error.code(), expected, "text {}", text);
        prop_assert_eq!(rejected.reply_to, Some(ReplyTo {
            join_ref: frame.join_ref,
            msg_ref: frame.msg_ref,
            topic,
        }));
    }

    #[test]
    fn broadcasts_decode_to_what_was_sent(topic in a_topic(), event in any_event(), value in a_value()) {
        let payload = payload_of(&value, false);
        let shared = encode_broadcast(topic.as_str(), &event, &payload);
        let frame = decode_frame_bytes(shared.as_bytes(), usize::MAX);
        prop_assert_eq!(frame, Ok(Frame { join_ref: None, msg_ref: None, topic, event, payload }));
    }

    #[test]
    fn replies_and_closes_decode_to_what_was_sent(
        join_ref in a_ref(),
        msg_ref in a_ref(),
        topic in a_topic(),
        response in an_object(),
        reason in tricky_string(30),
        kind in 0u8..3,
    ) {
        let response_payload = payload_of(&response, false);
        // Compared as text: the response is relayed verbatim, and parsing floats back with
        // serde_json's default (not round-trip exact) parser would blur the comparison.
        let (reply, expected) = match kind {
            0 => (
                Reply::Ok(&response_payload),
                format!(r#"{{"status":"ok","response":{}}}"#, response_payload.get()),
            ),
            1 => (Reply::OkEmpty, r#"{"status":"ok","response":{}}"#.to_owned()),
            _ => (
                Reply::Error { reason: &reason },
                // The encoder escapes strings exactly as serde_json does.
                format!(
                    r#"{{"status":"error","response":{{"reason":{}}}}}"#,
                    serde_json::to_string(&reason).unwrap()
                ),
            ),
        };
        let text = encode_reply(join_ref.as_deref(), msg_ref.as_deref(), topic.as_str(), &reply);
        let frame = decode_frame(&text, usize::MAX).map_err(|err| TestCaseError::fail(format!("{err}: {text}")))?;
        prop_assert_eq!(&frame.join_ref, &join_ref);
        prop_assert_eq!(&frame.msg_ref, &msg_ref);
        prop_assert_eq!(&frame.topic, &topic);
        prop_assert_eq!(frame.event.as_str(), events::REPLY);
        prop_assert_eq!(frame.payload.get(), expected.as_str());
        // A client may not send a reply.
        prop_assert_eq!(
            decode_request(&text, usize::MAX),
            Err(DecodeError::ReservedEvent { event: events::REPLY.to_owned() })
        );

        let close = decode_frame(&encode_close(join_ref.as_deref(), topic.as_str()), usize::MAX);
        prop_assert_eq!(close, Ok(Frame {
            join_ref: join_ref.clone(),
            msg_ref: join_ref,
            topic,
            event: events::CLOSE.to_owned(),
            payload: Payload::empty_object(),
        }));
    }
}
