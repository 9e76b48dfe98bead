//! `FakeServerEngine`, the core's `LocalServer` behind the JavaScript `FakeServer`: the
//! conversions between JavaScript values and the core, in wasm32 (the protocol itself is the
//! core's, unit tested natively and compared with the node by the differential tests).

use switchboard_wasm::Engine;
use wasm_bindgen_test::wasm_bindgen_test;

use super::{code, get, json};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// The node's default limits, in the order the engine takes them.
const LIMITS: [u32; 9] = [65_536, 100, 255, 100, 200, 20, 200, 10_000, 1024];
const NOW_UNIX: f64 = 1_800_000_000.0;

fn open_engine() -> Engine {
    Engine::new("", None, &LIMITS, 60_000.0, 1.0).expect("valid options")
}

fn connect(engine: &mut Engine) -> f64 {
    engine
        .open(Some("2.0.0".into()), None, None, 0.0, NOW_UNIX)
        .expect("an open server admits every socket")
}

fn send(engine: &mut Engine, id: f64, text: &str) -> String {
    json(&engine.receive(id, Some(text.into()), 0.0))
}

#[wasm_bindgen_test]
fn joins_pushes_and_broadcasts_come_back_as_socket_items() {
    let mut engine = open_engine();
    let a = connect(&mut engine);
    let b = connect(&mut engine);
    assert_eq!(
        send(&mut engine, a, r#"["1","1","room:1","phx_join",{}]"#),
        r#"[[1,"[\"1\",\"1\",\"room:1\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]"]]"#
    );
    let _ = send(&mut engine, b, r#"["1","1","room:1","phx_join",{}]"#);
    assert_eq!(
        send(&mut engine, b, r#"["1","2","room:1","new_msg",{"n":1}]"#),
        concat!(
            r#"[[1,"[null,null,\"room:1\",\"new_msg\",{\"n\":1}]"],"#,
            r#"[2,"[null,null,\"room:1\",\"new_msg\",{\"n\":1}]"],"#,
            r#"[2,"[\"1\",\"2\",\"room:1\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]"]]"#
        )
    );
    assert_eq!(engine.socket(a), ["", "room:1"]);
    assert_eq!(engine.socket(b), ["", "room:1"]);
    assert_eq!(
        json(
            &engine
                .broadcast("room:1", None, "[true]", 0.0)
                .expect("valid")
        ),
        concat!(
            // The position first: none without history.
            r#"[null,[1,"[null,null,\"room:1\",\"message\",[true]]"],"#,
            r#"[2,"[null,null,\"room:1\",\"message\",[true]]"]]"#
        )
    );
    let thrown = engine
        .broadcast("room:1", Some("phx_reply".into()), "{}", 0.0)
        .expect_err("reserved event");
    assert_eq!(code(&thrown), "invalid_event");
}

#[wasm_bindgen_test]
fn closes_come_back_with_code_and_reason() {
    let mut engine = open_engine();
    let a = connect(&mut engine);
    assert_eq!(
        json(&engine.receive(a, None, 0.0)),
        r#"[[1,1003,"binary frames are not supported"]]"#
    );
    assert_eq!(engine.socket(a), Vec::<String>::new());
    let b = connect(&mut engine);
    // `tick` answers when to tick next and whether a presence diff is due then, then what
    // to do.
    assert_eq!(json(&engine.tick(59_999.0)), "[60000,false]");
    assert_eq!(
        json(&engine.tick(60_000.0)),
        r#"[null,false,[2,1000,"idle timeout"]]"#
    );
    let c = connect(&mut engine);
    assert_eq!(
        json(&engine.disconnect(c, 3008, "slow consumer", 0.0)),
        r#"[[3,3008,"slow consumer"]]"#
    );
    let d = connect(&mut engine);
    assert_eq!(json(&engine.client_close(d, 0.0)), "[]");
    assert_eq!(engine.socket(d), Vec::<String>::new());
    assert_eq!(json(&engine.client_close(b, 0.0)), "[]");
}

#[wasm_bindgen_test]
fn sockets_need_tokens_and_rules_apply_with_a_secret() {
    // Namespace `room`: join authenticated (1), push nobody (3); everything else: nobody.
    let mut engine = Engine::new(
        "1320/0/room\n3320/0/*",
        Some(SECRET.into()),
        &LIMITS,
        60_000.0,
        1.0,
    )
    .expect("valid");
    let refused = |engine: &mut Engine, vsn: Option<&str>, token: Option<String>| {
        let thrown = engine
            .open(vsn.map(str::to_owned), token, None, 0.0, NOW_UNIX)
            .expect_err("refused");
        (code(&thrown), get(&thrown, "status").as_f64())
    };
    assert_eq!(
        refused(&mut engine, None, None),
        ("missing_vsn".into(), Some(400.0))
    );
    assert_eq!(
        refused(&mut engine, Some("1.0.0"), None),
        ("unsupported_vsn".into(), Some(400.0))
    );
    assert_eq!(
        refused(&mut engine, Some("2.0.0"), None),
        ("unauthorized".into(), Some(401.0))
    );
    assert_eq!(
        refused(&mut engine, Some("2.0.0"), Some("junk".into())),
        ("unauthorized".into(), Some(401.0))
    );
    let token = engine.token("42", NOW_UNIX + 60.0, None).expect("a secret");
    // Past exp by more than the 30 s clock-skew leeway.
    let expired = engine
        .token("42", NOW_UNIX - 120.0, None)
        .expect("a secret");
    assert_eq!(
        refused(&mut engine, Some("2.0.0"), Some(expired)),
        ("unauthorized".into(), Some(401.0))
    );
    let a = engine
        .open(Some("2.0.0".into()), Some(token), None, 0.0, NOW_UNIX)
        .expect("a valid token");
    assert_eq!(engine.socket(a), ["42"]);
    assert!(send(&mut engine, a, r#"["1","1","room:1","phx_join",{}]"#)
        .contains(r#"\"status\":\"ok\""#));
    assert!(send(&mut engine, a, r#"["1","2","room:1","ev",{}]"#).contains("unauthorized"));
    assert!(send(&mut engine, a, r#"["3","3","other:1","phx_join",{}]"#).contains("unauthorized"));

    let thrown = Engine::new("", Some("short".into()), &LIMITS, 1.0, 1.0).expect_err("short");
    assert_eq!(code(&thrown), "invalid_argument");
    let thrown = open_engine()
        .token("42", NOW_UNIX, None)
        .expect_err("no secret");
    assert_eq!(code(&thrown), "no_token_secret");
    let thrown = Engine::new("", None, &LIMITS[..8], 1.0, 1.0).expect_err("eight limits");
    assert_eq!(code(&thrown), "invalid_argument");
}

#[wasm_bindgen_test]
fn limits_apply() {
    // maxFrameBytes 64, maxTopicsPerSocket 1, maxTopicBytes 8.
    let limits = [64, 1, 8, 100, 200, 20, 200, 10_000, 1024];
    let mut engine = Engine::new("", None, &limits, 1_000.0, 1.0).expect("valid");
    let a = connect(&mut engine);
    assert!(
        send(&mut engine, a, r#"["1","1","t:123456789","phx_join",{}]"#)
            .contains("invalid topic: topic is 11 bytes long; the limit is 8 bytes")
    );
    let _ = send(&mut engine, a, r#"["1","1","t:1","phx_join",{}]"#);
    assert!(send(&mut engine, a, r#"["2","2","t:2","phx_join",{}]"#)
        .contains("too many channels joined"));
    let big = format!(r#"[null,"3","t:1","e",{{"pad":"{}"}}]"#, "x".repeat(64));
    assert_eq!(
        send(&mut engine, a, &big),
        r#"[[1,1009,"frame too large"]]"#
    );
}

#[wasm_bindgen_test]
fn presence_and_history_come_from_the_channel_lines() {
    // `room`: anyone/anyone, presence on, no history; `feed`: history of 2 kept 60 s; at most
    // 2 members a topic.
    let limits = [65_536, 100, 255, 100, 200, 20, 200, 2, 1024];
    let mut engine =
        Engine::new("0010/0/room\n0022/60000/feed", None, &limits, 60_000.0, 7.0).expect("valid");
    let a = engine
        .open(
            Some("2.0.0".into()),
            None,
            Some("ada".into()),
            0.0,
            NOW_UNIX,
        )
        .expect("open");
    let joined = send(&mut engine, a, r#"["1","1","room:1","phx_join",{}]"#);
    assert!(joined.contains(r#"presence_state\",{\"ada\""#), "{joined}");
    assert!(joined.contains(r#"presence_diff"#), "{joined}");
    assert!(engine
        .presence("room:1")
        .is_some_and(|state| state.contains(r#""ada":{"metas":[{"phx_ref":"#)));
    assert_eq!(engine.presence("feed:1"), None);
    let b = connect(&mut engine);
    let _ = send(&mut engine, b, r#"["1","1","room:1","phx_join",{}]"#);
    // b watches without a key; a's second socket within the window: the diff waits.
    let c = engine
        .open(
            Some("2.0.0".into()),
            None,
            Some("ada".into()),
            10.0,
            NOW_UNIX,
        )
        .expect("open");
    let _ = json(&engine.receive(c, Some(r#"["1","1","room:1","phx_join",{}]"#.into()), 10.0));
    assert_eq!(json(&engine.tick(100.0)), "[250,true]");
    let due = json(&engine.tick(250.0));
    assert!(due.starts_with("[60000,false,[1,"), "{due}");
    // Closing a socket sends its leave to the others.
    let left = json(&engine.client_close(c, 600.0));
    assert!(
        left.contains("leaves") && left.starts_with("[[1,"),
        "{left}"
    );

    let published = json(
        &engine
            .broadcast("feed:1", Some("m".into()), "{}", 0.0)
            .expect("ok"),
    );
    assert!(published.starts_with(r#"["1:"#), "{published}");
}
