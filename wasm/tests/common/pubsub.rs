//! `PubSub`: routing, copies, failures and validation, as JavaScript sees them.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Array, Object, Reflect};
use switchboard_wasm::PubSub;
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::wasm_bindgen_test;

use super::{code, get, handler_with, json, message, parse, throwing, Log};

fn pubsub() -> PubSub {
    PubSub::new(None).expect("default options are valid")
}

fn limited(limit: u32) -> PubSub {
    let options = parse(&format!(r#"{{"maxTopicsPerSession":{limit}}}"#));
    PubSub::new(Some(options.unchecked_into())).expect("a valid limit")
}

#[wasm_bindgen_test]
fn broadcast_reaches_exactly_the_subscribers_in_first_use_order() {
    let pubsub = pubsub();
    let log = Log::default();
    assert_eq!(pubsub.subscribe("b", "room:1", log.handler("b")), Ok(true));
    assert_eq!(pubsub.subscribe("a", "room:1", log.handler("a")), Ok(true));
    assert_eq!(pubsub.subscribe("c", "room:2", log.handler("c")), Ok(true));
    assert_eq!(pubsub.broadcast("room:1", parse(r#"{"n":1}"#)), Ok(2));
    assert_eq!(
        log.entries(),
        [
            ("b".into(), "room:1".into(), r#"{"n":1}"#.into()),
            ("a".into(), "room:1".into(), r#"{"n":1}"#.into()),
        ]
    );
    assert_eq!(pubsub.broadcast("nobody:here", JsValue::from(1)), Ok(0));
    assert_eq!(pubsub.topics(), ["room:1", "room:2"]);
    assert_eq!(
        pubsub.subscribers("room:1"),
        Ok(vec!["b".into(), "a".into()])
    );
    assert_eq!(
        (pubsub.session_count(), pubsub.subscription_count()),
        (3, 3)
    );
}

#[wasm_bindgen_test]
fn resubscribing_replaces_the_handler() {
    let pubsub = pubsub();
    let log = Log::default();
    assert_eq!(pubsub.subscribe("s", "t", log.handler("old")), Ok(true));
    assert_eq!(pubsub.subscribe("s", "t", log.handler("new")), Ok(false));
    assert_eq!(pubsub.broadcast("t", JsValue::NULL), Ok(1));
    assert_eq!(log.labels(), ["new"]);
    assert_eq!(pubsub.subscription_count(), 1);
}

#[wasm_bindgen_test]
fn unsubscribe_and_unsubscribe_all_forget() {
    let pubsub = pubsub();
    let log = Log::default();
    for topic in ["x", "y", "z"] {
        pubsub
            .subscribe("s", topic, log.handler(topic))
            .expect("valid");
    }
    pubsub
        .subscribe("other", "y", log.handler("other"))
        .expect("valid");
    assert_eq!(pubsub.unsubscribe("s", "x"), Ok(true));
    assert_eq!(pubsub.unsubscribe("s", "x"), Ok(false));
    assert_eq!(pubsub.unsubscribe("never-seen", "x"), Ok(false));
    assert_eq!(pubsub.broadcast("x", JsValue::NULL), Ok(0));
    assert_eq!(pubsub.unsubscribe_all("s"), 2);
    assert_eq!(pubsub.unsubscribe_all("s"), 0);
    assert_eq!(pubsub.topics(), ["y"]);
    assert_eq!(
        (pubsub.session_count(), pubsub.subscription_count()),
        (1, 1)
    );
    assert_eq!(pubsub.disconnect("other"), 1);
    assert_eq!((pubsub.session_count(), pubsub.topics().len()), (0, 0));
    assert_eq!(pubsub.broadcast("y", JsValue::NULL), Ok(0));
    assert!(log.entries().is_empty());
}

#[wasm_bindgen_test]
fn each_handler_gets_its_own_copy() {
    let pubsub = pubsub();
    let seen = Rc::new(RefCell::new(Vec::new()));
    for label in ["first", "second"] {
        let seen = Rc::clone(&seen);
        let handler = handler_with(move |message| {
            seen.borrow_mut().push(json(&message));
            // Vandalise the copy: nobody else may see this.
            let _ = Reflect::set(&message, &"n".into(), &label.into());
            let list: Array = get(&message, "list").unchecked_into();
            list.push(&JsValue::from(99));
        });
        pubsub.subscribe(label, "t", handler).expect("valid");
    }
    let original = parse(r#"{"n":1,"list":[1]}"#);
    assert_eq!(pubsub.broadcast("t", original.clone()), Ok(2));
    assert_eq!(
        *seen.borrow(),
        [r#"{"n":1,"list":[1]}"#, r#"{"n":1,"list":[1]}"#]
    );
    assert_eq!(
        json(&original),
        r#"{"n":1,"list":[1]}"#,
        "the broadcaster's value"
    );
}

#[wasm_bindgen_test]
fn a_throwing_handler_does_not_stop_the_others_and_is_reported() {
    let pubsub = pubsub();
    let log = Log::default();
    pubsub.subscribe("a", "t", log.handler("a")).expect("valid");
    pubsub
        .subscribe("b", "t", throwing("b broke"))
        .expect("valid");
    pubsub.subscribe("c", "t", log.handler("c")).expect("valid");
    pubsub
        .subscribe("d", "t", throwing("d broke"))
        .expect("valid");
    let error = pubsub
        .broadcast("t", JsValue::from(1))
        .expect_err("two handlers threw");
    assert_eq!(log.labels(), ["a", "c"], "every other handler was called");
    assert_eq!(code(&error), "handler_failed");
    assert_eq!(
        get(&error, "name").as_string().as_deref(),
        Some("AggregateError")
    );
    assert_eq!(get(&error, "delivered").as_f64(), Some(4.0));
    assert_eq!(get(&error, "topic").as_string().as_deref(), Some("t"));
    let errors: Array = get(&error, "errors").unchecked_into();
    let messages: Vec<String> = errors.iter().map(|thrown| message(&thrown)).collect();
    assert_eq!(messages, ["b broke", "d broke"]);
    assert!(
        message(&error).contains("2 of 4 handlers"),
        "{}",
        message(&error)
    );
}

#[wasm_bindgen_test]
fn invalid_topics_throw_the_core_codes_and_change_nothing() {
    let pubsub = pubsub();
    let log = Log::default();
    let long = "x".repeat(256);
    for (topic, expected) in [
        ("", "topic_empty"),
        (long.as_str(), "topic_too_long"),
        ("room\n1", "topic_control_character"),
    ] {
        let thrown = pubsub
            .subscribe("s", topic, log.handler("s"))
            .expect_err(topic);
        assert_eq!(code(&thrown), expected);
        assert_eq!(
            code(&pubsub.unsubscribe("s", topic).expect_err(topic)),
            expected
        );
        assert_eq!(
            code(&pubsub.broadcast(topic, JsValue::NULL).expect_err(topic)),
            expected
        );
        assert_eq!(code(&pubsub.subscribers(topic).expect_err(topic)), expected);
    }
    let thrown = pubsub
        .subscribe("s", "", log.handler("s"))
        .expect_err("empty");
    assert_eq!(message(&thrown), "topic is empty");
    let thrown = pubsub
        .subscribe("s", &long, log.handler("s"))
        .expect_err("long");
    assert_eq!(
        message(&thrown),
        "topic is 256 bytes long; the limit is 255 bytes"
    );
    assert_eq!(
        (pubsub.session_count(), pubsub.subscription_count()),
        (0, 0)
    );
}

#[wasm_bindgen_test]
fn the_per_session_limit_is_the_nodes() {
    let pubsub = limited(2);
    assert_eq!(pubsub.max_topics_per_session(), 2);
    let log = Log::default();
    pubsub.subscribe("s", "1", log.handler("1")).expect("first");
    pubsub
        .subscribe("s", "2", log.handler("2"))
        .expect("second");
    let thrown = pubsub
        .subscribe("s", "3", log.handler("3"))
        .expect_err("third");
    assert_eq!(code(&thrown), "too_many_topics");
    assert_eq!(message(&thrown), "too many topics joined (limit 2)");
    assert_eq!(
        pubsub.subscribe("s", "2", log.handler("2")),
        Ok(false),
        "already held"
    );
    pubsub
        .subscribe("other", "3", log.handler("o"))
        .expect("the limit is per session");
    assert_eq!(pubsub.unsubscribe("s", "1"), Ok(true));
    assert_eq!(pubsub.subscribe("s", "3", log.handler("3")), Ok(true));
    assert_eq!(
        PubSub::new(None).expect("default").max_topics_per_session(),
        100
    );
    let zero = limited(0);
    assert_eq!(
        code(&zero.subscribe("s", "t", log.handler("z")).expect_err("0")),
        "too_many_topics"
    );
    assert_eq!(
        zero.session_count(),
        0,
        "a refused first subscribe leaves no session"
    );
}

#[wasm_bindgen_test]
fn bad_arguments_are_invalid_argument() {
    for options in [
        r#"{"maxTopicsPerSession":-1}"#,
        r#"{"maxTopicsPerSession":1.5}"#,
        r#"{"maxTopicsPerSession":"3"}"#,
        r#"{"maxTopicPerSession":3}"#,
        "7",
    ] {
        let thrown = PubSub::new(Some(parse(options).unchecked_into())).expect_err(options);
        assert_eq!(code(&thrown), "invalid_argument", "{options}");
    }
    let empty: JsValue = Object::new().into();
    assert!(PubSub::new(Some(empty.unchecked_into())).is_ok());
    let pubsub = pubsub();
    let thrown = pubsub
        .subscribe("s", "t", JsValue::from("not a function"))
        .expect_err("string");
    assert_eq!(code(&thrown), "invalid_argument");
    assert_eq!(pubsub.session_count(), 0);
}

#[wasm_bindgen_test]
fn messages_json_cannot_carry_are_refused_before_delivery() {
    let pubsub = pubsub();
    let log = Log::default();
    pubsub.subscribe("s", "t", log.handler("s")).expect("valid");
    let cycle: JsValue = Object::new().into();
    let _ = Reflect::set(&cycle, &"me".into(), &cycle);
    let big = js_sys::BigInt::from(1_u64);
    for value in [
        JsValue::UNDEFINED,
        cycle,
        big.into(),
        js_sys::Function::new_no_args("").into(),
    ] {
        let thrown = pubsub.broadcast("t", value).expect_err("not JSON");
        assert_eq!(code(&thrown), "not_serializable");
    }
    assert!(log.entries().is_empty());
    // toJSON runs, as it would before the message went over a socket.
    let date = js_sys::Date::new(&JsValue::from(0.0));
    assert_eq!(pubsub.broadcast("t", date.into()), Ok(1));
    assert_eq!(log.entries()[0].2, r#""1970-01-01T00:00:00.000Z""#);
}

#[wasm_bindgen_test]
fn handlers_may_call_back_in_and_the_receivers_are_fixed_per_broadcast() {
    let pubsub = Rc::new(pubsub());
    let log = Log::default();
    let inner = Rc::clone(&pubsub);
    let late = log.handler("late");
    let reentrant = handler_with(move |_message| {
        // Subscribe someone new, drop a current receiver, and broadcast elsewhere, all from
        // inside a delivery.
        inner.subscribe("late", "t", late.clone()).expect("valid");
        inner.unsubscribe("b", "t").expect("valid");
        inner.broadcast("other", JsValue::NULL).expect("no throw");
        assert_eq!(inner.subscription_count(), 3);
    });
    pubsub.subscribe("a", "t", reentrant).expect("valid");
    pubsub.subscribe("b", "t", log.handler("b")).expect("valid");
    pubsub
        .subscribe("c", "other", log.handler("c"))
        .expect("valid");
    assert_eq!(pubsub.broadcast("t", JsValue::NULL), Ok(2));
    assert_eq!(
        log.labels(),
        ["c", "b"],
        "b was a receiver when the broadcast started"
    );
    assert_eq!(pubsub.subscribers("t"), Ok(vec!["a".into(), "late".into()]));
}

#[wasm_bindgen_test]
fn many_sessions_route_like_the_registry() {
    let pubsub = pubsub();
    let count = Rc::new(RefCell::new(0_u32));
    for session in 0..2000 {
        let count = Rc::clone(&count);
        let handler = handler_with(move |_| *count.borrow_mut() += 1);
        let topic = format!("room:{}", session % 10);
        pubsub
            .subscribe(&session.to_string(), &topic, handler)
            .expect("valid");
    }
    assert_eq!(pubsub.broadcast("room:3", JsValue::NULL), Ok(200));
    assert_eq!(*count.borrow(), 200);
    let order = pubsub.subscribers("room:3").expect("valid");
    let numbers: Vec<u32> = order
        .iter()
        .map(|id| id.parse().expect("numeric ids"))
        .collect();
    assert!(
        numbers.windows(2).all(|pair| pair[0] < pair[1]),
        "first-use order"
    );
}
