//! Codec throughput: decoding a typical client push, encoding broadcasts and replies.
//!
//! Run with `cargo bench -p switchboard-core --bench codec`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchboard_core::{
    decode_request, encode_broadcast, encode_reply, Payload, Reply, DEFAULT_MAX_FRAME_BYTES,
};

/// A push as phoenix.js sends it, with a payload of about 200 bytes.
const PUSH: &str = concat!(
    r#"["3","17","auditlog:123e4567-e89b-12d3-a456-426614174000","new_entry","#,
    r#"{"id":"9b2f0c3e-5d7a-4e1b-8f6a-2c4d9e7b1a03","actor":"alice@example.com","#,
    r#""action":"document.update","target":"doc:42","at":"2025-01-01T12:00:00Z","#,
    r#""changes":{"title":["Draft","Final \"v2\""],"size":[1024,2048]}}]"#
);

fn codec(c: &mut Criterion) {
    let request = decode_request(PUSH, DEFAULT_MAX_FRAME_BYTES).expect("the sample is valid");
    let frame = request.to_frame();
    let payload = frame.payload.clone();
    assert!(
        (180..=260).contains(&payload.get().len()),
        "payload is ~200 B"
    );

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_request_push_200B", |b| {
        b.iter(|| decode_request(black_box(PUSH), DEFAULT_MAX_FRAME_BYTES));
    });
    group.bench_function("encode_broadcast_200B", |b| {
        b.iter(|| {
            encode_broadcast(
                black_box(frame.topic.as_str()),
                black_box(&frame.event),
                black_box(&payload),
            )
        });
    });
    group.bench_function("encode_reply_ok_empty", |b| {
        b.iter(|| {
            encode_reply(
                black_box(Some("3")),
                black_box(Some("17")),
                black_box(frame.topic.as_str()),
                &Reply::OkEmpty,
            )
        });
    });
    let response = Payload::from_json(r#"{"id":"9b2f0c3e"}"#).expect("valid");
    group.bench_function("encode_reply_ok_response", |b| {
        b.iter(|| {
            encode_reply(
                black_box(Some("3")),
                black_box(Some("17")),
                black_box(frame.topic.as_str()),
                &Reply::Ok(black_box(&response)),
            )
        });
    });
    group.bench_function("encode_reply_error", |b| {
        b.iter(|| {
            encode_reply(
                black_box(Some("3")),
                black_box(Some("17")),
                black_box(frame.topic.as_str()),
                &Reply::Error {
                    reason: black_box("unmatched topic"),
                },
            )
        });
    });
    group.finish();
}

criterion_group!(codec_benches, codec);
criterion_main!(codec_benches);
