//! The tests of [`LocalServer`](super::LocalServer): the protocol, presence and history, as
//! the node answers them.

use serde_json::{json, Value};

use super::*;
use crate::presence::Meta;
use crate::Rule;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const NOW_UNIX: u64 = 1_800_000_000;

fn t(millis: u64) -> Time {
    Time::from_millis(millis)
}

fn open_server() -> LocalServer {
    LocalServer::new(Limits::default(), ChannelRules::new(Access::OPEN), None)
}

fn secured(rules: ChannelRules) -> LocalServer {
    LocalServer::new(
        Limits::default(),
        rules,
        Some(TokenSecret::new(SECRET).unwrap()),
    )
}

fn connect(server: &mut LocalServer) -> SessionId {
    server.open(Handshake::v2(), t(0), NOW_UNIX).unwrap()
}

fn token(sub: &str) -> String {
    TokenSecret::new(SECRET).unwrap().sign(sub, NOW_UNIX + 60)
}

/// `(connection, frame as JSON)` and `(connection, {"close": [code, reason]})`.
fn seen(out: Vec<Outgoing>) -> Vec<(u64, Value)> {
    out.into_iter()
        .map(|item| match item {
            Outgoing::Frame { to, text } => (to.get(), serde_json::from_str(&text).unwrap()),
            Outgoing::Close { to, code, reason } => (to.get(), json!({"close": [code, reason]})),
        })
        .collect()
}

fn send(server: &mut LocalServer, id: SessionId, frame: &Value) -> Vec<(u64, Value)> {
    seen(server.handle_text(id, &frame.to_string(), t(0)))
}

fn ok(join_ref: &str, msg_ref: &str, topic: &str) -> Value {
    json!([join_ref, msg_ref, topic, "phx_reply", {"status": "ok", "response": {}}])
}

fn error(join_ref: Option<&str>, msg_ref: &str, topic: &str, reason: &str) -> Value {
    json!([join_ref, msg_ref, topic, "phx_reply",
        {"status": "error", "response": {"reason": reason}}])
}

#[test]
fn the_handshake_is_checked_as_the_node_checks_it() {
    let mut server = open_server();
    assert_eq!(
        server.open(Handshake::default(), t(0), NOW_UNIX),
        Err(OpenRefusal::MissingVsn)
    );
    let other = server
        .open(
            Handshake {
                vsn: Some("1.0.0"),
                ..Handshake::default()
            },
            t(0),
            NOW_UNIX,
        )
        .unwrap_err();
    assert_eq!((other.status(), other.code()), (400, "unsupported_vsn"));
    assert_eq!(
        other.to_string(),
        r#"protocol version "1.0.0" is not supported; use vsn=2.0.0 (Phoenix V2 JSON)"#
    );
    // An open server ignores tokens, even bad ones.
    assert!(server
        .open(Handshake::v2().token("junk"), t(0), NOW_UNIX)
        .is_ok());

    let mut server = secured(ChannelRules::new(Access::SECURE_DEFAULT));
    let missing = server.open(Handshake::v2(), t(0), NOW_UNIX).unwrap_err();
    assert_eq!((missing.status(), missing.code()), (401, "unauthorized"));
    assert_eq!(
        server.open(Handshake::v2().token("junk"), t(0), NOW_UNIX),
        Err(OpenRefusal::Unauthorized {
            reason: TokenError::Malformed
        })
    );
    let expired = TokenSecret::new(SECRET)
        .unwrap()
        .sign("u", NOW_UNIX - 2 * crate::token::LEEWAY_SECONDS);
    assert_eq!(
        server.open(Handshake::v2().token(&expired), t(0), NOW_UNIX),
        Err(OpenRefusal::Unauthorized {
            reason: TokenError::Expired
        })
    );
    let id = server
        .open(Handshake::v2().token(&token("42")), t(0), NOW_UNIX)
        .unwrap();
    assert_eq!(server.connection(id).unwrap().user(), Some("42"));
    assert_eq!(server.connections(), [id]);
}

#[test]
fn a_push_reaches_every_subscriber_the_sender_first_then_its_reply() {
    let mut server = open_server();
    let a = connect(&mut server);
    let b = connect(&mut server);
    let c = connect(&mut server);
    assert_eq!(
        send(&mut server, a, &json!(["1", "1", "room:1", "phx_join", {}])),
        [(a.get(), ok("1", "1", "room:1"))]
    );
    let _ = send(&mut server, b, &json!(["1", "1", "room:1", "phx_join", {}]));
    let _ = send(&mut server, c, &json!(["1", "1", "room:2", "phx_join", {}]));
    assert_eq!(server.subscribers("room:1"), [a, b]);

    let broadcast = json!([null, null, "room:1", "new_msg", {"body": "hi"}]);
    assert_eq!(
        send(
            &mut server,
            b,
            &json!(["1", "2", "room:1", "new_msg", {"body": "hi"}])
        ),
        [
            (a.get(), broadcast.clone()),
            (b.get(), broadcast.clone()),
            (b.get(), ok("1", "2", "room:1")),
        ]
    );
    // Without a ref: delivered, not answered.
    assert_eq!(
        send(
            &mut server,
            a,
            &json!(["1", null, "room:1", "new_msg", {"body": "hi"}])
        ),
        [(a.get(), broadcast.clone()), (b.get(), broadcast)]
    );
}

#[test]
fn leaves_and_duplicate_joins_follow_phoenix() {
    let mut server = open_server();
    let a = connect(&mut server);
    let _ = send(&mut server, a, &json!(["1", "1", "room:1", "phx_join", {}]));
    assert_eq!(
        send(&mut server, a, &json!(["3", "3", "room:1", "phx_join", {}])),
        [
            (a.get(), json!(["1", "1", "room:1", "phx_close", {}])),
            (a.get(), ok("3", "3", "room:1")),
        ]
    );
    // A push under the replaced membership is refused without naming a membership.
    assert_eq!(
        send(&mut server, a, &json!(["1", "4", "room:1", "ev", {}])),
        [(a.get(), error(None, "4", "room:1", reasons_stale()))]
    );
    assert_eq!(
        send(
            &mut server,
            a,
            &json!(["3", "5", "room:1", "phx_leave", {}])
        ),
        [
            (a.get(), ok("3", "5", "room:1")),
            (a.get(), json!(["3", "3", "room:1", "phx_close", {}])),
        ]
    );
    assert!(server.subscribers("room:1").is_empty());
    assert_eq!(
        send(&mut server, a, &json!(["3", "6", "room:1", "ev", {}])),
        [(a.get(), error(None, "6", "room:1", "unmatched topic"))]
    );
}

fn reasons_stale() -> &'static str {
    crate::connection::reasons::STALE_JOIN_REF
}

#[test]
fn limits_refuse_as_the_node_does() {
    let limits = Limits {
        max_topics: 1,
        max_topic_bytes: 8,
        max_frame_bytes: 100,
        ..Limits::default()
    };
    let mut server = LocalServer::new(limits, ChannelRules::new(Access::OPEN), None);
    let a = connect(&mut server);
    let _ = send(&mut server, a, &json!(["1", "1", "t:1", "phx_join", {}]));
    assert_eq!(
        send(&mut server, a, &json!(["2", "2", "t:2", "phx_join", {}])),
        [(
            a.get(),
            error(Some("2"), "2", "t:2", "too many channels joined")
        )]
    );
    assert_eq!(
        send(
            &mut server,
            a,
            &json!(["3", "3", "t:123456789", "phx_join", {}])
        ),
        [(
            a.get(),
            error(
                Some("3"),
                "3",
                "t:123456789",
                "invalid topic: topic is 11 bytes long; the limit is 8 bytes"
            )
        )]
    );
    let big = format!(r#"[null,"4","t:1","ev",{{"pad":"{}"}}]"#, "x".repeat(100));
    assert_eq!(
        seen(server.handle_text(a, &big, t(0))),
        [(a.get(), json!({"close": [1009, "frame too large"]}))]
    );
    assert!(server.connections().is_empty());
    assert!(server.subscribers("t:1").is_empty());
    assert!(
        server.handle_text(a, "[]", t(0)).is_empty(),
        "closed is closed"
    );
}

#[test]
fn bad_frames_close_or_get_error_replies() {
    let mut server = open_server();
    let a = connect(&mut server);
    let out = seen(server.handle_text(a, r#"["1","1","t","phx_join",[]]"#, t(0)));
    assert_eq!(
        out,
        [(
            a.get(),
            error(Some("1"), "1", "t", "payload must be a JSON object")
        )]
    );
    let out = seen(server.handle_text(a, "nope", t(0)));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1["close"][0], 1007);
    let b = connect(&mut server);
    assert_eq!(
        seen(server.handle_binary(b, t(0))),
        [(
            b.get(),
            json!({"close": [1003, "binary frames are not supported"]})
        )]
    );
}

#[test]
fn channel_rules_apply_with_a_secret_and_not_without() {
    let mut rules = ChannelRules::new(Access {
        join: Rule::Nobody,
        push: Rule::Nobody,
    });
    rules.set(
        "room",
        Access {
            join: Rule::Authenticated,
            push: Rule::Authenticated,
        },
    );
    rules.set(
        "auditlog",
        Access {
            join: Rule::Owner,
            push: Rule::Nobody,
        },
    );
    let mut server = secured(rules.clone());
    let a = server
        .open(Handshake::v2().token(&token("42")), t(0), NOW_UNIX)
        .unwrap();
    assert_eq!(
        send(&mut server, a, &json!(["1", "1", "room:1", "phx_join", {}])),
        [(a.get(), ok("1", "1", "room:1"))]
    );
    assert_eq!(
        send(
            &mut server,
            a,
            &json!(["2", "2", "admin:1", "phx_join", {}])
        ),
        [(a.get(), error(Some("2"), "2", "admin:1", "unauthorized"))]
    );
    assert_eq!(
        send(
            &mut server,
            a,
            &json!(["3", "3", "auditlog:43", "phx_join", {}])
        ),
        [(
            a.get(),
            error(Some("3"), "3", "auditlog:43", "unauthorized")
        )]
    );
    let _ = send(
        &mut server,
        a,
        &json!(["4", "4", "auditlog:42", "phx_join", {}]),
    );
    assert_eq!(
        send(&mut server, a, &json!(["4", "5", "auditlog:42", "ev", {}])),
        [(
            a.get(),
            error(Some("4"), "5", "auditlog:42", "unauthorized")
        )]
    );

    let mut open = LocalServer::new(Limits::default(), rules, None);
    let b = connect(&mut open);
    assert_eq!(
        send(&mut open, b, &json!(["1", "1", "admin:1", "phx_join", {}])),
        [(b.get(), ok("1", "1", "admin:1"))]
    );
}

#[test]
fn broadcasts_count_recipients_and_check_like_the_publish_endpoint() {
    let mut server = open_server();
    let a = connect(&mut server);
    let b = connect(&mut server);
    let _ = send(&mut server, b, &json!(["1", "1", "room:1", "phx_join", {}]));
    let _ = send(&mut server, a, &json!(["1", "1", "room:1", "phx_join", {}]));
    let payload = Payload::from_json("[1,2]").unwrap();
    let published = server.broadcast("room:1", None, &payload, t(0)).unwrap();
    assert_eq!(
        (published.recipients(), published.position.clone()),
        (2, None)
    );
    let out = seen(published.outgoing);
    let frame = json!([null, null, "room:1", "message", [1, 2]]);
    assert_eq!(out, [(a.get(), frame.clone()), (b.get(), frame)]);
    assert!(server
        .broadcast("nobody", Some("e"), &payload, t(0))
        .unwrap()
        .outgoing
        .is_empty());
    let mut code = |topic: &str, event: Option<&str>| {
        server
            .broadcast(topic, event, &payload, t(0))
            .unwrap_err()
            .code()
    };
    assert_eq!(code("", None), "invalid_topic");
    assert_eq!(code("t", Some("")), "invalid_event");
    assert_eq!(code("t", Some("phx_reply")), "invalid_event");
}

#[test]
fn idle_connections_close_on_tick_and_closes_forget_subscriptions() {
    let mut server = open_server();
    let a = connect(&mut server);
    let b = connect(&mut server);
    let _ = send(&mut server, a, &json!(["1", "1", "room:1", "phx_join", {}]));
    assert_eq!(server.next_timeout(), Some(t(60_000)));
    let _ = server.handle_text(b, r#"[null,"1","phoenix","heartbeat",{}]"#, t(30_000));
    assert!(server.tick(t(59_999)).is_empty());
    assert_eq!(
        seen(server.tick(t(60_000))),
        [(a.get(), json!({"close": [1000, "idle timeout"]}))]
    );
    assert!(server.subscribers("room:1").is_empty());
    assert_eq!(server.next_timeout(), Some(t(90_000)));

    assert_eq!(
        seen(server.disconnect(b, 3008, "slow consumer", t(31_000))),
        [(b.get(), json!({"close": [3008, "slow consumer"]}))]
    );
    assert_eq!(server.next_timeout(), None);

    let c = connect(&mut server);
    let _ = send(&mut server, c, &json!(["1", "1", "room:1", "phx_join", {}]));
    assert!(server.handle_client_close(c, t(31_000)).is_empty());
    assert!(server.connection(c).is_none());
    assert!(server.handle_client_close(c, t(31_000)).is_empty());
    assert!(server.subscribers("room:1").is_empty());
    assert_eq!(server.registry().session_count(), 0);
}

// ---- presence --------------------------------------------------------------------------

fn with_presence(max_members: usize) -> LocalServer {
    let mut rules = PresenceRules::none();
    rules.enable("room");
    rules.max_members = max_members;
    open_server().with_presence(rules)
}

fn user(server: &mut LocalServer, name: &str) -> SessionId {
    server
        .open(Handshake::v2().user(name), t(0), NOW_UNIX)
        .unwrap()
}

fn send_at(
    server: &mut LocalServer,
    id: SessionId,
    frame: &Value,
    millis: u64,
) -> Vec<(u64, Value)> {
    seen(server.handle_text(id, &frame.to_string(), t(millis)))
}

fn state(join_ref: &str, topic: &str, state: &Value) -> Value {
    json!([join_ref, null, topic, "presence_state", state])
}

fn diff(topic: &str, joins: &Value, leaves: &Value) -> Value {
    json!([null, null, topic, "presence_diff", {"joins": joins, "leaves": leaves}])
}

#[test]
fn two_sockets_of_one_user_are_one_key_with_two_metas_and_diffs_are_batched() {
    let mut server = with_presence(10);
    let node = server.hub.node.clone();
    let r = |n: u64| format!("{node}.{n}");
    let a = user(&mut server, "ada");
    let b = user(&mut server, "ada");
    let c = connect(&mut server); // no user: watches without being listed
    let joined = json!({"ada": {"metas": [{"phx_ref": r(1), "status": "online"}]}});
    assert_eq!(
        send_at(
            &mut server,
            a,
            &json!(["1", "1", "room:1", "phx_join", {"presence": {"status": "online"}}]),
            0
        ),
        [
            (a.get(), ok("1", "1", "room:1")),
            (a.get(), state("1", "room:1", &joined)),
            // A lone change goes out at once (the joiner gets it too, as on the node).
            (a.get(), diff("room:1", &joined, &json!({}))),
        ]
    );
    let both = json!({"ada": {"metas": [
        {"phx_ref": r(1), "status": "online"},
        {"phx_ref": r(2)}
    ]}});
    assert_eq!(
        send_at(
            &mut server,
            b,
            &json!(["1", "1", "room:1", "phx_join", {}]),
            10
        ),
        [
            (b.get(), ok("1", "1", "room:1")),
            (b.get(), state("1", "room:1", &both)),
        ],
        "within the window: the diff waits"
    );
    assert_eq!(server.next_timeout(), Some(t(250)));
    assert_eq!(server.next_presence_diff(), Some(t(250)));
    assert!(server.tick(t(249)).is_empty());
    let second = diff(
        "room:1",
        &json!({"ada": {"metas": [{"phx_ref": r(2)}]}}),
        &json!({}),
    );
    assert_eq!(
        seen(server.tick(t(250))),
        [(a.get(), second.clone()), (b.get(), second)]
    );
    assert_eq!(server.next_presence_diff(), None);
    assert_eq!(
        send_at(
            &mut server,
            c,
            &json!(["1", "1", "room:1", "phx_join", {}]),
            300
        ),
        [
            (c.get(), ok("1", "1", "room:1")),
            (c.get(), state("1", "room:1", &both)),
        ],
        "an observer changes nothing"
    );
    assert_eq!(
        send_at(
            &mut server,
            c,
            &json!(["2", "2", "room:2", "phx_join", {"presence": {}}]),
            300
        ),
        [(
            c.get(),
            error(
                Some("2"),
                "2",
                "room:2",
                crate::connection::reasons::PRESENCE_NO_KEY
            )
        )]
    );

    // An update: the new meta joins (naming the old one), the old one leaves, at once.
    let update = json!(["1", "2", "room:1", "presence_update", {"status": "typing"}]);
    let updated = diff(
        "room:1",
        &json!({"ada": {"metas": [{"phx_ref": r(3), "phx_ref_prev": r(1), "status": "typing"}]}}),
        &json!({"ada": {"metas": [{"phx_ref": r(1), "status": "online"}]}}),
    );
    assert_eq!(
        send_at(&mut server, a, &update, 600),
        [
            (a.get(), ok("1", "2", "room:1")),
            (a.get(), updated.clone()),
            (b.get(), updated.clone()),
            (c.get(), updated),
        ]
    );
    // A socket that goes: its member leaves, after the window.
    assert!(server.handle_client_close(b, t(700)).is_empty());
    let left = diff(
        "room:1",
        &json!({}),
        &json!({"ada": {"metas": [{"phx_ref": r(2)}]}}),
    );
    assert_eq!(
        seen(server.tick(t(850))),
        [(a.get(), left.clone()), (c.get(), left)]
    );
    assert_eq!(
        serde_json::from_str::<Value>(server.presence("room:1").unwrap().get()).unwrap(),
        json!({"ada": {"metas": [{"phx_ref": r(3), "status": "typing"}]}})
    );
    assert_eq!(server.presence("other:1"), None);
    // A leave: the member goes, and the leaver is told nothing more.
    let out = send_at(
        &mut server,
        a,
        &json!(["1", "3", "room:1", "phx_leave", {}]),
        2000,
    );
    assert_eq!(
        out,
        [
            (a.get(), ok("1", "3", "room:1")),
            (a.get(), json!(["1", "1", "room:1", "phx_close", {}])),
            (
                c.get(),
                diff(
                    "room:1",
                    &json!({}),
                    &json!({"ada": {"metas": [{"phx_ref": r(3), "status": "typing"}]}})
                )
            ),
        ]
    );
    // The last watcher goes: the list is forgotten.
    let _ = server.disconnect(c, 1001, "shutting down", t(2100));
    assert!(server.hub.presences.is_empty());
    assert_eq!(server.presence("room:1").unwrap().get(), "{}");
}

#[test]
fn presence_refuses_past_its_bound_and_forged_lists() {
    let mut server = with_presence(1);
    let a = user(&mut server, "ada");
    let b = user(&mut server, "bob");
    let c = connect(&mut server);
    let _ = send(&mut server, a, &json!(["1", "1", "room:1", "phx_join", {}]));
    assert_eq!(
        send(&mut server, b, &json!(["1", "1", "room:1", "phx_join", {}])),
        [(
            b.get(),
            error(
                Some("1"),
                "1",
                "room:1",
                "too many members: the topic has its limit of 1 presence members"
            )
        )]
    );
    assert_eq!(server.subscribers("room:1"), [a]);
    // Watching is not being a member.
    assert_eq!(
        send(&mut server, c, &json!(["1", "1", "room:1", "phx_join", {}]))[0],
        (c.get(), ok("1", "1", "room:1"))
    );
    assert_eq!(
        send(
            &mut server,
            a,
            &json!(["1", "2", "room:1", "presence_diff", {}])
        ),
        [(
            a.get(),
            error(
                Some("1"),
                "2",
                "room:1",
                crate::connection::reasons::PRESENCE_SERVER_EVENT
            )
        )]
    );
    let payload = Payload::empty_object();
    let forged = server
        .broadcast("room:1", Some("presence_state"), &payload, t(0))
        .unwrap_err();
    assert_eq!(forged.code(), "invalid_event");
    assert_eq!(
        forged.to_string(),
        r#"event "presence_state" is sent by the server only on a topic with presence"#
    );
    assert!(server
        .broadcast("other:1", Some("presence_state"), &payload, t(0))
        .is_ok());
}

#[test]
fn tokens_name_members_carry_their_info_and_expire() {
    let mut rules = PresenceRules::none();
    rules.enable("*");
    let secret = TokenSecret::new(SECRET).unwrap();
    let mut server = secured(ChannelRules::new(Access::OPEN)).with_presence(rules);
    let info = Meta::parse(r#"{"name":"Ada"}"#, "info").unwrap();
    let token = secret.sign_with_info("42", NOW_UNIX + 60, Some(&info));
    // With a token secret the user parameter names nobody: the token does.
    let a = server
        .open(
            Handshake::v2().token(&token).user("mallory"),
            t(0),
            NOW_UNIX,
        )
        .unwrap();
    let out = send(
        &mut server,
        a,
        &json!(["1", "1", "room:1", "phx_join", {"presence": {"name": "Eve", "s": 1}}]),
    );
    let node = server.hub.node.clone();
    assert_eq!(
        out[1],
        (
            a.get(),
            state(
                "1",
                "room:1",
                &json!({"42": {"metas": [{"phx_ref": format!("{node}.1"), "name": "Ada", "s": 1}]}})
            )
        )
    );
    // Valid until exp plus the leeway: 90 s from now.
    let expiry = t(90_000);
    assert_eq!(server.connection(a).unwrap().expires(), Some(expiry));
    assert_eq!(server.next_timeout(), Some(t(60_000)), "idle first");
    let _ = server.handle_text(a, r#"[null,"2","phoenix","heartbeat",{}]"#, t(59_000));
    assert_eq!(server.next_timeout(), Some(expiry));
    assert_eq!(
        seen(server.tick(expiry)),
        [(a.get(), json!({"close": [3005, "token expired"]}))]
    );
    assert!(server.hub.presences.is_empty());
}

// ---- history ---------------------------------------------------------------------------

fn with_history(size: u32, ttl_secs: u64) -> LocalServer {
    let mut rules = HistoryRules::none();
    rules.set(
        "feed",
        Retention {
            size,
            ttl: Duration::from_secs(ttl_secs),
        },
    );
    open_server().with_history(&rules)
}

fn publish(server: &mut LocalServer, n: u64, millis: u64) -> Published {
    let payload = Payload::from_json(&format!(r#"{{"n":{n}}}"#)).unwrap();
    server
        .broadcast("feed:1", Some("m"), &payload, t(millis))
        .unwrap()
}

fn joined_at(join_ref: &str, topic: &str, response: &Value) -> Value {
    json!([join_ref, join_ref, topic, "phx_reply", {"status": "ok", "response": response}])
}

#[test]
fn positions_and_recovery_follow_the_history() {
    let mut server = with_history(3, 60);
    let a = connect(&mut server);
    // A join of an empty stream starts it.
    let out = send(&mut server, a, &json!(["1", "1", "feed:1", "phx_join", {}]));
    let epoch = server.hub.streams[0].1.epoch().to_string();
    let at = |offset: u64| format!("{offset}:{epoch}");
    assert_eq!(
        out,
        [(
            a.get(),
            joined_at("1", "feed:1", &json!({"position": at(0)}))
        )]
    );
    for n in 1..=4 {
        let published = publish(&mut server, n, n);
        assert_eq!(published.position.unwrap().to_string(), at(n));
        assert_eq!(
            seen(published.outgoing),
            [(a.get(), json!([null, at(n), "feed:1", "m", {"n": n}]))]
        );
    }
    // A push is a publication too.
    assert_eq!(
        send(&mut server, a, &json!(["1", "2", "feed:1", "m", {"n": 5}])),
        [
            (a.get(), json!([null, at(5), "feed:1", "m", {"n": 5}])),
            (a.get(), ok("1", "2", "feed:1")),
        ]
    );

    let b = connect(&mut server);
    let recovered = send(
        &mut server,
        b,
        &json!(["1", "1", "feed:1", "phx_join", {"since": at(3)}]),
    );
    assert_eq!(
        recovered,
        [
            (
                b.get(),
                joined_at(
                    "1",
                    "feed:1",
                    &json!({"position": at(5), "recovered": true})
                )
            ),
            (b.get(), json!([null, at(4), "feed:1", "m", {"n": 4}])),
            (b.get(), json!([null, at(5), "feed:1", "m", {"n": 5}])),
        ]
    );
    // Past the history (it keeps 3..5), another epoch, a future offset: not recovered.
    for since in [at(1), "3:other".to_owned(), at(9)] {
        let out = send(
            &mut server,
            b,
            &json!(["2", "2", "feed:1", "phx_join", {"since": since}]),
        );
        assert_eq!(
            out.last().unwrap(),
            &(
                b.get(),
                json!(["2", "2", "feed:1", "phx_reply",
                    {"status": "ok", "response": {"position": at(5), "recovered": false}}])
            ),
            "since {since}"
        );
    }
    assert_eq!(
        send(
            &mut server,
            b,
            &json!(["3", "3", "feed:1", "phx_join", {"since": "nope"}])
        )
        .last()
        .unwrap()
        .1[4]["response"]["reason"],
        "invalid since: a position is written \"<offset>:<epoch>\", e.g. \"17:k3Jd9\""
    );
    // Topics without history ignore since.
    assert_eq!(
        send(
            &mut server,
            b,
            &json!(["4", "4", "room:1", "phx_join", {"since": at(1)}])
        ),
        [(b.get(), ok("4", "4", "room:1"))]
    );

    // Quiet for the TTL: the stream is gone, and the next starts a new epoch.
    assert!(server
        .tick(t(60_004))
        .iter()
        .all(|o| matches!(o, Outgoing::Close { .. })));
    assert!(server.hub.streams.is_empty());
    let fresh = publish(&mut server, 6, 60_005).position.unwrap();
    assert_eq!(fresh.offset, 1);
    assert_ne!(fresh.epoch.to_string(), epoch);
}

#[test]
fn a_recovering_join_gets_its_reply_its_list_and_what_it_missed_first() {
    // The reply, the list and what was missed come first, then the presence diff; a push
    // right behind comes after.
    let mut rules = PresenceRules::none();
    rules.enable("feed");
    let mut server = with_history(10, 60).with_presence(rules);
    let _ = publish(&mut server, 1, 0);
    let epoch = server.hub.streams[0].1.epoch().to_string();
    let at = |offset: u64| format!("{offset}:{epoch}");
    let a = user(&mut server, "ada");
    let join = json!(["1", "1", "feed:1", "phx_join", {"since": at(0)}]);
    let push = json!(["1", "2", "feed:1", "m", {"n": 2}]);
    let mut out = seen(server.handle_text(a, &join.to_string(), t(0)));
    out.extend(seen(server.handle_text(a, &push.to_string(), t(0))));
    let node = server.hub.node.clone();
    let member = json!({"ada": {"metas": [{"phx_ref": format!("{node}.2")}]}});
    assert_eq!(
        out,
        [
            (
                a.get(),
                joined_at(
                    "1",
                    "feed:1",
                    &json!({"position": at(1), "recovered": true})
                )
            ),
            (a.get(), state("1", "feed:1", &member)),
            (a.get(), json!([null, at(1), "feed:1", "m", {"n": 1}])),
            (a.get(), diff("feed:1", &member, &json!({}))),
            (a.get(), json!([null, at(2), "feed:1", "m", {"n": 2}])),
            (a.get(), ok("1", "2", "feed:1")),
        ]
    );
}

#[test]
fn seeds_name_servers_apart() {
    let mut rules = HistoryRules::none();
    rules.set(
        "*",
        Retention {
            size: 1,
            ttl: Duration::from_secs(1),
        },
    );
    let epoch = |seed: u64| {
        let mut server = open_server().with_history(&rules).with_seed(seed);
        let position = publish(&mut server, 1, 0).position.unwrap();
        (position.epoch, server.hub.node.clone())
    };
    assert_eq!(epoch(1), epoch(1), "deterministic");
    assert_ne!(epoch(1).0, epoch(2).0);
    assert_ne!(epoch(1).1, epoch(2).1);
}
