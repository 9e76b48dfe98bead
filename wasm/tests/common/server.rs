//! `FakeServerEngine`, the core's `LocalServer` behind the JavaScript `FakeServer`: the
//! conversions between JavaScript values and the core, in wasm32 (the protocol itself is the
//! core's, unit tested natively and compared with the node by the differential tests).

use switchboard_wasm::Engine;
use wasm_bindgen_test::wasm_bindgen_test;

use super::{code, get, json};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// The node's default limits, in the order the engine takes them.
const LIMITS: [u32; 7] = [65_536, 100, 255, 100, 200, 20, 200];
const NOW_UNIX: f64 = 1_800_000_000.0;

fn open_engine() -> Engine {
    Engine::new("", None, &LIMITS, 60_000.0).expect("valid options")
}

fn connect(engine: &mut Engine) -> f64 {
    engine
        .open(Some("2.0.0".into()), None, 0.0, NOW_UNIX)
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
        json(&engine.broadcast("room:1", None, "[true]").expect("valid")),
        concat!(
            r#"[[1,"[null,null,\"room:1\",\"message\",[true]]"],"#,
            r#"[2,"[null,null,\"room:1\",\"message\",[true]]"]]"#
        )
    );
    let thrown = engine
        .broadcast("room:1", Some("phx_reply".into()), "{}")
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
    // `tick` answers when to tick next, then what to do.
    assert_eq!(json(&engine.tick(59_999.0)), "[60000]");
    assert_eq!(
        json(&engine.tick(60_000.0)),
        r#"[null,[2,1000,"idle timeout"]]"#
    );
    let c = connect(&mut engine);
    assert_eq!(
        json(&engine.disconnect(c, 3008, "slow consumer", 0.0)),
        r#"[[3,3008,"slow consumer"]]"#
    );
    let d = connect(&mut engine);
    assert!(engine.client_close(d));
    assert!(!engine.client_close(d));
    assert!(!engine.client_close(b));
}

#[wasm_bindgen_test]
fn sockets_need_tokens_and_rules_apply_with_a_secret() {
    // Namespace `room`: join authenticated (1), push nobody (3); everything else: nobody.
    let mut engine =
        Engine::new("13room\n33*", Some(SECRET.into()), &LIMITS, 60_000.0).expect("valid");
    let refused = |engine: &mut Engine, vsn: Option<&str>, token: Option<String>| {
        let thrown = engine
            .open(vsn.map(str::to_owned), token, 0.0, NOW_UNIX)
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
    let token = engine.token("42", NOW_UNIX + 60.0).expect("a secret");
    // Past exp by more than the 30 s clock-skew leeway.
    let expired = engine.token("42", NOW_UNIX - 120.0).expect("a secret");
    assert_eq!(
        refused(&mut engine, Some("2.0.0"), Some(expired)),
        ("unauthorized".into(), Some(401.0))
    );
    let a = engine
        .open(Some("2.0.0".into()), Some(token), 0.0, NOW_UNIX)
        .expect("a valid token");
    assert_eq!(engine.socket(a), ["42"]);
    assert!(send(&mut engine, a, r#"["1","1","room:1","phx_join",{}]"#)
        .contains(r#"\"status\":\"ok\""#));
    assert!(send(&mut engine, a, r#"["1","2","room:1","ev",{}]"#).contains("unauthorized"));
    assert!(send(&mut engine, a, r#"["3","3","other:1","phx_join",{}]"#).contains("unauthorized"));

    let thrown = Engine::new("", Some("short".into()), &LIMITS, 1.0).expect_err("short");
    assert_eq!(code(&thrown), "invalid_argument");
    let thrown = open_engine().token("42", NOW_UNIX).expect_err("no secret");
    assert_eq!(code(&thrown), "no_token_secret");
    let thrown = Engine::new("", None, &LIMITS[..6], 1.0).expect_err("six limits");
    assert_eq!(code(&thrown), "invalid_argument");
}

#[wasm_bindgen_test]
fn limits_apply() {
    // maxFrameBytes 64, maxTopicsPerSocket 1, maxTopicBytes 8.
    let limits = [64, 1, 8, 100, 200, 20, 200];
    let mut engine = Engine::new("", None, &limits, 1_000.0).expect("valid");
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
