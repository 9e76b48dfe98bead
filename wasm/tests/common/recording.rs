//! `RecordingPubSub`: records what it accepted and still delivers.

use js_sys::Array;
use switchboard_wasm::RecordingPubSub;
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::wasm_bindgen_test;

use super::{code, json, parse, throwing, Log};

fn records(array: &JsValue) -> Vec<String> {
    array
        .unchecked_ref::<Array>()
        .iter()
        .map(|record| json(&record))
        .collect()
}

fn count(array: &JsValue) -> u32 {
    array.unchecked_ref::<Array>().length()
}

#[wasm_bindgen_test]
fn records_every_accepted_call_and_delivers() {
    let pubsub = RecordingPubSub::new(None).expect("default options");
    let log = Log::default();
    assert_eq!(
        pubsub.subscribe("s1", "room:1", log.handler("s1")),
        Ok(true)
    );
    assert_eq!(
        pubsub.subscribe("s2", "room:1", log.handler("s2")),
        Ok(true)
    );
    assert_eq!(pubsub.broadcast("room:1", parse(r#"{"n":1}"#)), Ok(2));
    assert_eq!(pubsub.unsubscribe("s1", "room:1"), Ok(true));
    assert_eq!(pubsub.unsubscribe_all("s2"), 1);
    assert_eq!(pubsub.disconnect("s3"), 0);
    assert_eq!(log.labels(), ["s1", "s2"]);
    assert_eq!(
        records(&pubsub.subscriptions()),
        [
            r#"{"action":"subscribe","sessionId":"s1","topic":"room:1"}"#,
            r#"{"action":"subscribe","sessionId":"s2","topic":"room:1"}"#,
            r#"{"action":"unsubscribe","sessionId":"s1","topic":"room:1"}"#,
            r#"{"action":"unsubscribeAll","sessionId":"s2"}"#,
            r#"{"action":"disconnect","sessionId":"s3"}"#,
        ]
    );
    assert_eq!(
        records(&pubsub.broadcasts()),
        [r#"{"topic":"room:1","message":{"n":1},"delivered":2}"#]
    );
    // s1 left its only topic but is still a session (as a socket with no joins is).
    // The records are copies: changing what a getter returned changes nothing.
    pubsub.broadcasts().unchecked_into::<Array>().set_length(0);
    assert_eq!(count(&pubsub.broadcasts()), 1);
    pubsub.clear();
    assert_eq!(
        (count(&pubsub.subscriptions()), count(&pubsub.broadcasts())),
        (0, 0)
    );
    assert_eq!(
        pubsub.session_count(),
        1,
        "clear forgets records, not state"
    );
}

#[wasm_bindgen_test]
fn refused_calls_are_not_recorded_but_failed_deliveries_are() {
    let pubsub = RecordingPubSub::new(Some(parse(r#"{"maxTopicsPerSession":1}"#).unchecked_into()))
        .expect("valid options");
    let log = Log::default();
    assert_eq!(
        code(
            &pubsub
                .subscribe("s", "", log.handler("s"))
                .expect_err("empty")
        ),
        "topic_empty"
    );
    pubsub.subscribe("s", "a", throwing("boom")).expect("valid");
    assert_eq!(
        code(
            &pubsub
                .subscribe("s", "b", log.handler("s"))
                .expect_err("limit")
        ),
        "too_many_topics"
    );
    assert_eq!(
        code(
            &pubsub
                .broadcast("a", JsValue::UNDEFINED)
                .expect_err("undefined")
        ),
        "not_serializable"
    );
    assert_eq!(
        code(&pubsub.broadcast("a", JsValue::from(5)).expect_err("throws")),
        "handler_failed"
    );
    assert_eq!(
        records(&pubsub.subscriptions()),
        [r#"{"action":"subscribe","sessionId":"s","topic":"a"}"#]
    );
    assert_eq!(
        records(&pubsub.broadcasts()),
        [r#"{"topic":"a","message":5,"delivered":1}"#]
    );
    assert_eq!(pubsub.max_topics_per_session(), 1);
    assert_eq!(pubsub.topics(), ["a"]);
    assert_eq!(pubsub.subscribers("a"), Ok(vec!["s".into()]));
    assert_eq!(pubsub.subscription_count(), 1);
}
