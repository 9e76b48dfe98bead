use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::presence::{Identity, Meta, PresenceRules};
use crate::{Access, Rule};

fn open() -> Connection {
    with(Limits::default(), ChannelRules::new(Access::OPEN), None)
}

fn with(limits: Limits, rules: ChannelRules, user: Option<&str>) -> Connection {
    Connection::new(
        Arc::new(limits),
        Arc::new(rules),
        user.map(str::to_owned),
        Time::ZERO,
    )
}

fn t(millis: u64) -> Time {
    Time::from_millis(millis)
}

/// Everything the connection asks for, as JSON for frames and short tags for the rest.
fn drain(conn: &mut Connection) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(output) = conn.poll() {
        out.push(match output {
            Output::Send(text) => serde_json::from_str(&text).unwrap(),
            Output::Join {
                topic,
                join,
                since,
                presence,
            } => {
                let mut out = json!({"join": topic.as_str(), "id": join.get()});
                if let Some(since) = since {
                    out["since"] = json!(since.to_string());
                }
                if let Some(presence) = presence {
                    out["presence"] = json!({
                        "key": presence.key,
                        "meta": serde_json::from_str::<Value>(presence.meta.as_str()).unwrap(),
                    });
                }
                out
            }
            Output::PresenceUpdate { topic, meta, ack } => json!({
                "update": topic.as_str(),
                "meta": serde_json::from_str::<Value>(meta.as_str()).unwrap(),
                "acked": ack.is_some(),
            }),
            Output::Leave { topic } => json!({"leave": topic.as_str()}),
            Output::Publish {
                topic,
                event,
                payload,
                ack,
            } => json!({
                "publish": topic.as_str(),
                "event": event,
                "payload": serde_json::from_str::<Value>(payload.get()).unwrap(),
                "acked": ack.is_some(),
            }),
            Output::Close { code, reason } => json!({"close": code, "reason": reason}),
            Output::Refused(refusal) => json!({"refused": format!("{refusal:?}")}),
        });
    }
    out
}

fn frames(outputs: &[Value]) -> Vec<Value> {
    outputs.iter().filter(|v| v.is_array()).cloned().collect()
}

fn joined(conn: &mut Connection, topic: &str, join_ref: &str) {
    conn.handle_text(
        &json!([join_ref, join_ref, topic, "phx_join", {}]).to_string(),
        t(0),
    );
    let out = drain(conn);
    let id = out[0]["id"].as_u64().unwrap();
    conn.handle_join_answer(
        &Topic::new(topic).unwrap(),
        JoinId(id),
        JoinAnswer::Joined(Reach::Everywhere),
        t(0),
    );
    assert_eq!(
        drain(conn),
        vec![json!([join_ref, join_ref, topic, "phx_reply", {"status": "ok", "response": {}}])]
    );
}

#[test]
fn a_join_waits_for_the_driver_then_replies_ok() {
    let mut conn = open();
    conn.handle_text(r#"["1","1","room:a","phx_join",{}]"#, t(0));
    assert_eq!(drain(&mut conn), vec![json!({"join": "room:a", "id": 1})]);
    assert_eq!(conn.joining().count(), 1);
    conn.handle_join_answer(
        &Topic::new("room:a").unwrap(),
        JoinId(1),
        JoinAnswer::Joined(Reach::Everywhere),
        t(1),
    );
    assert_eq!(
        drain(&mut conn),
        vec![json!(["1", "1", "room:a", "phx_reply", {"status": "ok", "response": {}}])]
    );
    assert_eq!(conn.joined().count(), 1);
}

#[test]
fn a_local_only_join_says_so_in_its_response() {
    let mut conn = open();
    conn.handle_text(r#"["1","1","room:a","phx_join",{}]"#, t(0));
    let _ = drain(&mut conn);
    conn.handle_join_answer(
        &Topic::new("room:a").unwrap(),
        JoinId(1),
        JoinAnswer::Joined(Reach::LocalOnly),
        t(1),
    );
    assert_eq!(
        drain(&mut conn),
        vec![json!(["1", "1", "room:a", "phx_reply",
            {"status": "ok", "response": {"upstream": "unavailable"}}])]
    );
}

#[test]
fn a_refused_join_replies_the_reason_and_leaves_no_membership() {
    let mut conn = open();
    conn.handle_text(r#"["1","1","room:a","phx_join",{}]"#, t(0));
    let _ = drain(&mut conn);
    conn.handle_join_answer(
        &Topic::new("room:a").unwrap(),
        JoinId(1),
        JoinAnswer::Refused(JoinRefusal::UpstreamTimeout {
            after: Duration::from_secs(5),
        }),
        t(1),
    );
    let out = drain(&mut conn);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0][4]["status"], "error");
    assert_eq!(
        out[0][4]["response"]["reason"],
        "the backend did not confirm the subscription within 5s; try again"
    );
    assert_eq!(conn.joined().count() + conn.joining().count(), 0);
    // A push now is to a topic not joined.
    conn.handle_text(r#"["1","2","room:a","m",{}]"#, t(2));
    let out = frames(&drain(&mut conn));
    assert_eq!(out[0][4]["response"]["reason"], "unmatched topic");
}

#[test]
fn frames_about_a_pending_join_wait_and_other_topics_do_not() {
    let mut conn = open();
    conn.handle_text(r#"["1","1","room:a","phx_join",{}]"#, t(0));
    conn.handle_text(r#"["1","2","room:a","m",{"n":1}]"#, t(0));
    conn.handle_text(r#"["1","3","room:a","phx_leave",{}]"#, t(0));
    conn.handle_text(r#"[null,"4","phoenix","heartbeat",{}]"#, t(0));
    conn.handle_text(r#"[null,"5","room:b","m",{}]"#, t(0));
    let out = drain(&mut conn);
    assert_eq!(out[0], json!({"join": "room:a", "id": 1}));
    assert_eq!(
        frames(&out),
        vec![
            json!([null, "4", "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
            json!([null, "5", "room:b", "phx_reply",
                {"status": "error", "response": {"reason": "unmatched topic"}}]),
        ]
    );
    conn.handle_join_answer(
        &Topic::new("room:a").unwrap(),
        JoinId(1),
        JoinAnswer::Joined(Reach::Everywhere),
        t(1),
    );
    assert_eq!(
        drain(&mut conn),
        vec![
            json!(["1", "1", "room:a", "phx_reply", {"status": "ok", "response": {}}]),
            json!({"publish": "room:a", "event": "m", "payload": {"n": 1}, "acked": true}),
            json!({"leave": "room:a"}),
            json!(["1", "3", "room:a", "phx_reply", {"status": "ok", "response": {}}]),
            json!(["1", "1", "room:a", "phx_close", {}]),
        ]
    );
}

#[test]
fn waiting_frames_are_bounded() {
    let mut conn = open();
    conn.handle_text(r#"["1","1","room:a","phx_join",{}]"#, t(0));
    for i in 0..MAX_WAITING_FRAMES {
        conn.handle_text(
            &json!(["1", i.to_string(), "room:a", "m", {}]).to_string(),
            t(0),
        );
    }
    let _ = drain(&mut conn);
    conn.handle_text(r#"["1","x","room:a","m",{}]"#, t(0));
    let out = frames(&drain(&mut conn));
    assert_eq!(
        out[0][4]["response"]["reason"],
        "too many requests waiting for pending joins"
    );
}

#[test]
fn waiting_bytes_are_bounded() {
    let mut conn = open();
    conn.handle_text(r#"["1","1","room:a","phx_join",{}]"#, t(0));
    let big = "x".repeat(40 * 1024);
    conn.handle_text(
        &json!(["1", "2", "room:a", "m", {"big": big}]).to_string(),
        t(0),
    );
    let _ = drain(&mut conn);
    conn.handle_text(
        &json!(["1", "3", "room:a", "m", {"big": big}]).to_string(),
        t(0),
    );
    let out = frames(&drain(&mut conn));
    assert_eq!(
        out[0][4]["response"]["reason"],
        "too many requests waiting for pending joins"
    );
}

#[test]
fn leave_of_a_topic_not_joined_is_ok_as_in_phoenix() {
    let mut conn = open();
    conn.handle_text(r#"["7","8","room:x","phx_leave",{}]"#, t(0));
    assert_eq!(
        drain(&mut conn),
        vec![json!(["7", "8", "room:x", "phx_reply", {"status": "ok", "response": {}}])]
    );
}

#[test]
fn a_push_with_a_stale_join_ref_is_answered_by_its_ref_alone() {
    let mut conn = open();
    joined(&mut conn, "room:a", "1");
    conn.handle_text(r#"["2","2","room:a","phx_join",{}]"#, t(0));
    assert_eq!(
        drain(&mut conn),
        vec![
            json!({"leave": "room:a"}),
            json!(["1", "1", "room:a", "phx_close", {}]),
            json!({"join": "room:a", "id": 2}),
        ]
    );
    conn.handle_join_answer(
        &Topic::new("room:a").unwrap(),
        JoinId(2),
        JoinAnswer::Joined(Reach::Everywhere),
        t(0),
    );
    assert_eq!(
        frames(&drain(&mut conn)),
        vec![json!(["2", "2", "room:a", "phx_reply", {"status": "ok", "response": {}}])]
    );
    conn.handle_text(r#"["1","3","room:a","m",{}]"#, t(0));
    assert_eq!(
        frames(&drain(&mut conn)),
        vec![json!([null, "3", "room:a", "phx_reply",
            {"status": "error", "response": {"reason": "stale join_ref: the topic was joined again since"}}])]
    );
    // A stale leave names a membership that is gone: ok, and the current one stays.
    conn.handle_text(r#"["1","4","room:a","phx_leave",{}]"#, t(0));
    assert_eq!(
        drain(&mut conn),
        vec![json!(["1", "4", "room:a", "phx_reply", {"status": "ok", "response": {}}])]
    );
    assert_eq!(conn.joined().count(), 1);
}

#[test]
fn pushes_are_published_and_answered_by_the_driver() {
    let mut conn = open();
    joined(&mut conn, "room:a", "1");
    conn.handle_text(r#"["1","2","room:a","new_msg",{"body":"hi"}]"#, t(0));
    let mut ack = None;
    while let Some(output) = conn.poll() {
        if let Output::Publish { ack: a, .. } = output {
            ack = a;
        }
    }
    let ack = ack.expect("a push with a ref is acked");
    conn.handle_publish_answer(ack.clone(), &PublishAnswer::LocalOnly);
    assert_eq!(
        drain(&mut conn),
        vec![json!(["1", "2", "room:a", "phx_reply", {"status": "error",
            "response": {"reason": "upstream unavailable: delivered on this node only"}}])]
    );
    conn.handle_publish_answer(ack, &PublishAnswer::Everywhere);
    assert_eq!(drain(&mut conn)[0][4]["status"], "ok");
    conn.handle_text(r#"["1",null,"room:a","e",{}]"#, t(0));
    assert_eq!(drain(&mut conn)[0]["acked"], false);
}

#[test]
fn rules_and_rates_refuse_with_their_reasons() {
    let mut rules = ChannelRules::new(Access::SECURE_DEFAULT);
    rules.set(
        "room",
        Access {
            join: Rule::Authenticated,
            push: Rule::Nobody,
        },
    );
    let limits = Limits {
        push_rate: 1,
        push_burst: 1,
        join_rate: 1,
        join_burst: 2,
        ..Limits::default()
    };
    let mut conn = with(limits, rules, Some("42"));
    conn.handle_text(r#"["1","1","auditlog:43","phx_join",{}]"#, t(0));
    assert_eq!(
        frames(&drain(&mut conn))[0][4]["response"]["reason"],
        "unauthorized"
    );
    joined(&mut conn, "room:a", "2");
    conn.handle_text(r#"["2","3","room:a","m",{}]"#, t(0));
    assert_eq!(
        frames(&drain(&mut conn))[0][4]["response"]["reason"],
        "unauthorized"
    );
    conn.handle_text(r#"["4","4","room:b","phx_join",{}]"#, t(0));
    assert_eq!(
        frames(&drain(&mut conn))[0][4]["response"]["reason"],
        "join rate limit exceeded"
    );
    conn.handle_text(r#"["4","4","room:b","phx_join",{}]"#, t(1000));
    assert_eq!(drain(&mut conn)[0]["join"], "room:b");
}

#[test]
fn push_rate_limit_refuses_past_the_burst() {
    let limits = Limits {
        push_rate: 1,
        push_burst: 2,
        ..Limits::default()
    };
    let mut conn = with(limits, ChannelRules::new(Access::OPEN), None);
    joined(&mut conn, "room:a", "1");
    for _ in 0..2 {
        conn.handle_text(r#"["1","2","room:a","m",{}]"#, t(0));
        assert!(drain(&mut conn)[0]["publish"].is_string());
    }
    conn.handle_text(r#"["1","3","room:a","m",{}]"#, t(0));
    let out = drain(&mut conn);
    assert_eq!(out[0], json!({"refused": "RateLimited"}));
    assert_eq!(out[1][4]["response"]["reason"], "rate limit exceeded");
}

#[test]
fn the_topic_limit_counts_pending_joins() {
    let limits = Limits {
        max_topics: 2,
        ..Limits::default()
    };
    let mut conn = with(limits, ChannelRules::new(Access::OPEN), None);
    for topic in ["a:1", "a:2", "a:3"] {
        conn.handle_text(&json!(["1", "1", topic, "phx_join", {}]).to_string(), t(0));
    }
    let out = drain(&mut conn);
    assert_eq!(out[0]["join"], "a:1");
    assert_eq!(out[1]["join"], "a:2");
    assert_eq!(out[3][4]["response"]["reason"], "too many channels joined");
}

#[test]
fn malformed_frames_get_replies_or_close_1007() {
    let mut conn = open();
    conn.handle_text(r#"["1","1","","phx_join",{}]"#, t(0));
    let out = frames(&drain(&mut conn));
    assert_eq!(
        out[0][4]["response"]["reason"],
        "invalid topic: topic is empty"
    );
    assert!(!conn.is_closed());
    conn.handle_text("garbage", t(0));
    let out = drain(&mut conn);
    assert_eq!(out[1]["close"], 1007);
    assert!(conn.is_closed());
    conn.handle_text(r#"[null,"1","phoenix","heartbeat",{}]"#, t(0));
    assert!(drain(&mut conn).is_empty(), "nothing after close");
}

#[test]
fn transport_refusals_close_with_their_codes() {
    for (call, code) in [
        (Connection::handle_binary as fn(&mut Connection, Time), 1003),
        (Connection::handle_oversized, 1009),
        (Connection::handle_protocol_error, 1002),
    ] {
        let mut conn = open();
        call(&mut conn, t(0));
        assert_eq!(drain(&mut conn)[1]["close"], code);
    }
    let mut conn = open();
    conn.handle_text_bytes(&[0xff, 0xfe], t(0));
    assert_eq!(drain(&mut conn)[1]["reason"], "frame is not valid UTF-8");
}

#[test]
fn an_idle_socket_is_closed_at_its_timeout() {
    let mut conn = open();
    assert_eq!(conn.poll_timeout(), Some(t(60_000)));
    conn.touch(t(30_000));
    conn.handle_tick(t(60_000));
    assert!(drain(&mut conn).is_empty());
    assert_eq!(conn.poll_timeout(), Some(t(90_000)));
    conn.handle_tick(t(90_000));
    assert_eq!(
        drain(&mut conn),
        vec![json!({"close": 1000, "reason": "idle timeout"})]
    );
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn a_stale_join_answer_is_ignored() {
    let mut conn = open();
    conn.handle_text(r#"["1","1","room:a","phx_join",{}]"#, t(0));
    let _ = drain(&mut conn);
    let topic = Topic::new("room:a").unwrap();
    conn.handle_join_answer(
        &topic,
        JoinId(9),
        JoinAnswer::Joined(Reach::Everywhere),
        t(0),
    );
    assert!(drain(&mut conn).is_empty());
    assert_eq!(conn.joining().count(), 1);
}

#[test]
fn the_local_only_response_is_json() {
    assert!(local_only_response().is_object());
}

#[test]
fn a_join_passes_its_since_and_a_malformed_one_is_refused() {
    let mut conn = open();
    conn.handle_text(
        r#"["1","1","feed:1","phx_join",{"since":"3:ab","x":1}]"#,
        t(0),
    );
    assert_eq!(
        drain(&mut conn),
        vec![json!({"join": "feed:1", "id": 1, "since": "3:ab"})]
    );
    conn.handle_text(r#"["2","2","feed:2","phx_join",{"since":null}]"#, t(0));
    assert_eq!(drain(&mut conn), vec![json!({"join": "feed:2", "id": 2})]);
    for since in [r#""3""#, "3", r#""x:ab""#] {
        conn.handle_text(
            &format!(r#"["3","3","feed:3","phx_join",{{"since":{since}}}]"#),
            t(0),
        );
        let out = frames(&drain(&mut conn));
        assert!(
            out[0][4]["response"]["reason"]
                .as_str()
                .unwrap()
                .starts_with("invalid since"),
            "{out:?}"
        );
    }
}

#[test]
fn a_join_of_a_history_topic_replies_its_position_and_whether_it_recovered() {
    let mut conn = open();
    conn.handle_text(r#"["1","1","feed:1","phx_join",{"since":"3:ab"}]"#, t(0));
    let _ = drain(&mut conn);
    conn.handle_join_answer(
        &Topic::new("feed:1").unwrap(),
        JoinId(1),
        JoinAnswer::JoinedAt {
            position: "17:ab".parse().unwrap(),
            recovered: Some(true),
        },
        t(1),
    );
    assert_eq!(
        drain(&mut conn),
        vec![json!(["1", "1", "feed:1", "phx_reply",
            {"status": "ok", "response": {"position": "17:ab", "recovered": true}}])]
    );
    assert_eq!(
        history_response(&"0:x".parse().unwrap(), None).get(),
        r#"{"position":"0:x"}"#
    );
}

fn presence_conn(key: Option<&str>, info: Option<&str>) -> Connection {
    let mut rules = PresenceRules::none();
    rules.enable("room");
    rules.max_meta_bytes = 64;
    let identity = Identity {
        key: key.map(str::to_owned),
        info: info.map(|info| Meta::parse(info, "info").unwrap()),
    };
    open().with_presence(Arc::new(rules), identity)
}

#[test]
fn a_presence_join_names_the_member_and_the_state_follows_the_reply() {
    let mut conn = presence_conn(Some("ada"), Some(r#"{"name":"Ada"}"#));
    conn.handle_text(
        r#"["1","1","room:1","phx_join",{"presence":{"status":"away","name":"Eve"}}]"#,
        t(0),
    );
    let out = drain(&mut conn);
    assert_eq!(
        out,
        vec![json!({"join": "room:1", "id": 1,
            "presence": {"key": "ada", "meta": {"name": "Ada", "status": "away"}}})]
    );
    let topic = Topic::new("room:1").unwrap();
    conn.handle_join_answer(
        &topic,
        JoinId(1),
        JoinAnswer::Joined(Reach::Everywhere),
        t(0),
    );
    let state = Payload::from_json(r#"{"ada":{"metas":[{"phx_ref":"n-1"}]}}"#).unwrap();
    conn.handle_presence_state(&topic, &state);
    assert_eq!(
        drain(&mut conn),
        vec![
            json!(["1", "1", "room:1", "phx_reply", {"status": "ok", "response": {}}]),
            json!(["1", null, "room:1", "presence_state", {"ada": {"metas": [{"phx_ref": "n-1"}]}}]),
        ]
    );
    // A topic without presence gets no state and tracks nothing.
    conn.handle_text(r#"["2","2","feed:1","phx_join",{}]"#, t(0));
    assert_eq!(drain(&mut conn), vec![json!({"join": "feed:1", "id": 2})]);
    conn.handle_presence_state(&Topic::new("feed:1").unwrap(), &state);
    assert_eq!(drain(&mut conn), Vec::<Value>::new(), "not joined yet");
}

#[test]
fn a_socket_without_a_key_watches_without_being_listed() {
    let mut conn = presence_conn(None, None);
    conn.handle_text(r#"["1","1","room:1","phx_join",{}]"#, t(0));
    assert_eq!(
        drain(&mut conn),
        vec![json!({"join": "room:1", "id": 1, "presence": {"key": null, "meta": {}}})]
    );
    conn.handle_text(
        r#"["2","2","room:2","phx_join",{"presence":{"a":1}}]"#,
        t(0),
    );
    let out = drain(&mut conn);
    assert_eq!(out[1][4]["response"]["reason"], reasons::PRESENCE_NO_KEY);
}

#[test]
fn bad_presence_parameters_are_refused_with_reasons() {
    let mut conn = presence_conn(Some("ada"), None);
    for (payload, reason) in [
        (
            r#"{"presence":[1]}"#,
            "the presence parameter must be a JSON object",
        ),
        (r#"{"presence":{"phx_ref":"x"}}"#, "\"phx_ref\" is reserved"),
        (
            r#"{"presence":{"bio":"0123456789012345678901234567890123456789012345678901234567890"}}"#,
            "the limit is 64 bytes",
        ),
    ] {
        conn.handle_text(&format!(r#"["1","1","room:1","phx_join",{payload}]"#), t(0));
        let out = drain(&mut conn);
        let got = out[1][4]["response"]["reason"].as_str().unwrap().to_owned();
        assert!(got.contains(reason), "{payload}: {got}");
    }
    conn.handle_text(r#"["1","1","feed:1","phx_join",{"presence":{}}]"#, t(0));
    let out = drain(&mut conn);
    assert_eq!(out[1][4]["response"]["reason"], reasons::PRESENCE_OFF);
    let mut long = presence_conn(Some(&"k".repeat(300)), None);
    long.handle_text(r#"["1","1","room:1","phx_join",{}]"#, t(0));
    let out = drain(&mut long);
    assert!(out[1][4]["response"]["reason"]
        .as_str()
        .unwrap()
        .contains("the key is 300 bytes"));
}

#[test]
fn a_member_updates_its_meta_and_cannot_forge_diffs() {
    let mut conn = presence_conn(Some("ada"), Some(r#"{"name":"Ada"}"#));
    conn.handle_text(r#"["1","1","room:1","phx_join",{}]"#, t(0));
    let _ = drain(&mut conn);
    let topic = Topic::new("room:1").unwrap();
    conn.handle_join_answer(
        &topic,
        JoinId(1),
        JoinAnswer::Joined(Reach::Everywhere),
        t(0),
    );
    let _ = drain(&mut conn);
    conn.handle_text(
        r#"["1","2","room:1","presence_update",{"status":"typing","name":"Eve"}]"#,
        t(0),
    );
    assert_eq!(
        drain(&mut conn),
        vec![
            json!({"update": "room:1", "meta": {"name": "Ada", "status": "typing"}, "acked": true})
        ]
    );
    for event in ["presence_diff", "presence_state"] {
        conn.handle_text(
            &format!(r#"["1","3","room:1","{event}",{{"joins":{{}}}}]"#),
            t(0),
        );
        let out = drain(&mut conn);
        assert_eq!(
            out[1][4]["response"]["reason"],
            reasons::PRESENCE_SERVER_EVENT
        );
    }
    conn.handle_text(r#"["1","4","room:1","presence_update",[]]"#, t(0));
    let out = drain(&mut conn);
    assert!(out[1][4]["response"]["reason"]
        .as_str()
        .unwrap()
        .contains("must be a JSON object"));
}

#[test]
fn a_socket_is_closed_with_3005_when_its_token_expires() {
    let mut conn = open().with_expiry(t(5_000));
    assert_eq!(
        conn.poll_timeout(),
        Some(t(5_000)),
        "before the idle timeout"
    );
    conn.touch(t(4_000));
    conn.handle_tick(t(4_999));
    assert_eq!(drain(&mut conn), Vec::<Value>::new());
    conn.handle_tick(t(5_000));
    assert_eq!(
        drain(&mut conn),
        vec![json!({"close": 3005, "reason": "token expired"})]
    );
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn a_broken_stream_ends_the_membership_with_phx_error() {
    let mut conn = open();
    joined(&mut conn, "feed:a", "3");
    joined(&mut conn, "feed:b", "4");
    conn.handle_stream_broken(&Topic::new("feed:a").unwrap());
    // No leave: the driver has unsubscribed the socket already.
    assert_eq!(
        drain(&mut conn),
        vec![json!(["3", "3", "feed:a", "phx_error", {}])]
    );
    assert_eq!(
        conn.joined().map(Topic::as_str).collect::<Vec<_>>(),
        ["feed:b"]
    );
    // A topic not joined (or no longer) is ignored.
    conn.handle_stream_broken(&Topic::new("feed:a").unwrap());
    conn.handle_stream_broken(&Topic::new("feed:z").unwrap());
    assert_eq!(drain(&mut conn), Vec::<Value>::new());
    // A push to it now is answered as one to a topic not joined.
    conn.handle_text(r#"["3","5","feed:a","msg",{}]"#, t(1));
    assert_eq!(frames(&drain(&mut conn))[0][3], "phx_reply");
}

#[test]
fn a_join_whose_stream_broke_before_its_answer_ends_right_after_it() {
    let mut conn = open();
    conn.handle_text(r#"["7","7","feed:a","phx_join",{"since":"4:e"}]"#, t(0));
    let id = drain(&mut conn)[0]["id"].as_u64().unwrap();
    let topic = Topic::new("feed:a").unwrap();
    conn.handle_stream_broken(&topic);
    assert_eq!(drain(&mut conn), Vec::<Value>::new());
    conn.handle_join_answer(
        &topic,
        JoinId(id),
        JoinAnswer::JoinedAt {
            position: "9:e".parse().unwrap(),
            recovered: Some(true),
        },
        t(1),
    );
    let out = drain(&mut conn);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0][3], "phx_reply");
    assert_eq!(out[1], json!(["7", "7", "feed:a", "phx_error", {}]));
    assert_eq!(conn.joined().count(), 0);
}
