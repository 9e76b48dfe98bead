//! The HTTP side of the node: `POST /api/publish`, `/healthz`, `/readyz`, `/metrics`, and the
//! answers to requests on the WebSocket endpoint that are not a V2 upgrade
//! (docs/node.md, "HTTP API" and "WebSocket endpoint").

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_e2e::{http, Node, PhxFrame};

/// An error answer: `status` with `{"error":{"code": code, "message": ...}}`.
fn assert_error(request: &str, response: &http::HttpResponse, status: u16, code: &str) {
    assert_eq!(
        response.status,
        status,
        "request {request:.80} expected {status} {code}; response body: {}",
        response.text()
    );
    let body = response.json();
    assert_eq!(
        body["error"]["code"], code,
        "request {request:.80}; body: {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "the error has a message: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_delivers_to_every_subscriber_and_counts_recipients() {
    let node = Node::start(&[]);
    let addr = node.addr();
    let mut first = node.connect().await;
    let mut second = node.connect().await;
    first.join_ok("room:lobby").await;
    second.join_ok("room:lobby").await;

    let response = http::post_json(
        addr,
        "/api/publish",
        r#"{"topic":"room:lobby","event":"new_msg","payload":{"body":"hi"}}"#,
    )
    .await;

    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), json!({"ok": true, "recipients": 2}));
    let expected = json!([null, null, "room:lobby", "new_msg", {"body": "hi"}]);
    assert_eq!(first.recv_json().await, expected);
    assert_eq!(second.recv_json().await, expected);

    let nobody = http::publish(addr, "room:empty", Some("new_msg"), &json!({})).await;
    assert_eq!(nobody.status, 200);
    assert_eq!(nobody.json(), json!({"ok": true, "recipients": 0}));
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_without_an_event_uses_message_and_passes_any_json_payload() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;
    client.join_ok("room:a").await;

    for payload in [
        json!({"k": [1, 2]}),
        json!("text"),
        json!([1, "two"]),
        json!(3.5),
        json!(null),
    ] {
        let response = http::publish(node.addr(), "room:a", None, &payload).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["recipients"], 1);
        let got = client.recv_json().await;
        assert_eq!(got, json!([null, null, "room:a", "message", payload]));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_rejects_bad_bodies_with_400_and_an_error_code() {
    let node = Node::start(&[]);
    let addr = node.addr();
    let cases: &[(&str, &str)] = &[
        ("{", "invalid_json"),
        ("not json at all", "invalid_json"),
        (r#"{"event":"e","payload":{}}"#, "invalid_body"),
        (r#"{"topic":"room:a","event":"e"}"#, "invalid_body"),
        (r#"{"topic":5,"payload":{}}"#, "invalid_body"),
        (
            r#"{"topic":"room:a","event":5,"payload":{}}"#,
            "invalid_body",
        ),
        (r#"{"topic":"","payload":{}}"#, "invalid_topic"),
        (r#"{"topic":"room\u0000a","payload":{}}"#, "invalid_topic"),
        (
            r#"{"topic":"room:a","event":"","payload":{}}"#,
            "invalid_event",
        ),
        (
            r#"{"topic":"room:a","event":"phx_reply","payload":{}}"#,
            "invalid_event",
        ),
        (
            r#"{"topic":"room:a","event":"phx_join","payload":{}}"#,
            "invalid_event",
        ),
    ];
    let mut client = node.connect().await;
    client.join_ok("room:a").await;

    for (body, code) in cases {
        let response = http::post_json(addr, "/api/publish", body).await;
        assert_error(body, &response, 400, code);
    }
    let long_topic = json!({"topic": "t".repeat(256), "payload": {}}).to_string();
    assert_error(
        &long_topic,
        &http::post_json(addr, "/api/publish", &long_topic).await,
        400,
        "invalid_topic",
    );

    // None of them reached the subscriber.
    assert_eq!(client.heartbeat().await.status(), "ok");
    assert_eq!(client.take_pending(), Vec::<Value>::new());
    assert_eq!(node.metric("switchboard_publishes_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_body_that_is_not_a_json_object_gets_invalid_body() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;
    client.join_ok("room:a").await;

    // Valid JSON, but not the documented object: a positional array must not be read as
    // topic, event, payload.
    for body in [
        r#"["room:a","e",{}]"#,
        r#"["room:a",{}]"#,
        "null",
        "5",
        r#""room:a""#,
    ] {
        let response = http::post_json(node.addr(), "/api/publish", body).await;
        assert_error(body, &response, 400, "invalid_body");
    }
    assert_eq!(client.heartbeat().await.status(), "ok");
    assert_eq!(client.take_pending(), Vec::<Value>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_body_over_max_publish_bytes_gets_413() {
    let node = Node::start(&["--max-publish-bytes", "1024"]);
    let addr = node.addr();
    let body_of_len = |len: usize| {
        let skeleton = json!({"topic": "room:a", "payload": ""}).to_string();
        let body =
            json!({"topic": "room:a", "payload": "x".repeat(len - skeleton.len())}).to_string();
        assert_eq!(body.len(), len);
        body
    };

    let at_limit = http::post_json(addr, "/api/publish", &body_of_len(1024)).await;
    assert_eq!(at_limit.status, 200, "{}", at_limit.text());

    let over = http::post_json(addr, "/api/publish", &body_of_len(1025)).await;
    assert_error("1025 bytes", &over, 413, "body_too_large");
    let far_over = http::post_json(addr, "/api/publish", &body_of_len(200_000)).await;
    assert_error("200000 bytes", &far_over, 413, "body_too_large");

    // The node still serves.
    assert_eq!(node.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn default_max_publish_bytes_is_64_kib() {
    let node = Node::start(&[]);
    let body = json!({"topic": "room:a", "payload": "x".repeat(70_000)}).to_string();
    let response = http::post_json(node.addr(), "/api/publish", &body).await;
    assert_error("70000 bytes", &response, 413, "body_too_large");
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_and_readyz_answer_while_running() {
    let node = Node::start(&[]);

    let health = node.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.text().trim(), "ok");

    let ready = node.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["status"], "ready");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_endpoint_refuses_missing_or_other_vsn_with_json_400() {
    let node = Node::start(&[]);
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    for path in [
        "/socket/websocket",
        "/socket/websocket?vsn=1.0.0",
        "/socket/websocket?vsn=2.0.1",
        "/socket/websocket?token=abc",
    ] {
        let response = http::request(node.addr(), "GET", path, &upgrade, &[])
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(response.status, 400, "{path}: {}", response.text());
        let body = response.json();
        assert!(
            body.to_string().to_lowercase().contains("vsn"),
            "{path}: the body names the problem (vsn): {body}"
        );
    }

    // The client library sees the same refusal.
    let refused =
        switchboard_e2e::Client::try_connect(&format!("ws://{}/socket/websocket", node.addr()))
            .await;
    assert!(refused.is_err(), "an upgrade without vsn must be refused");

    // A plain GET without an upgrade is refused too.
    let plain = node.get("/socket/websocket?vsn=2.0.0").await;
    assert_eq!(plain.status, 400, "{}", plain.text());

    // And the right vsn works, with extra params beside it.
    let mut client = switchboard_e2e::Client::connect(&format!(
        "ws://{}/socket/websocket?token=abc&vsn=2.0.0",
        node.addr()
    ))
    .await;
    assert_eq!(client.heartbeat().await.status(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_connections_topics_subscriptions_frames_and_publishes() {
    let node = Node::start(&[]);
    let addr = node.addr();
    let m = node.metrics().await;
    for name in [
        "switchboard_connections",
        "switchboard_topics",
        "switchboard_subscriptions",
        "switchboard_frames_in_total",
        "switchboard_frames_out_total",
        "switchboard_publishes_total",
        "switchboard_slow_consumer_disconnects_total",
        "switchboard_protocol_errors_total",
    ] {
        assert_eq!(
            switchboard_e2e::node::metric_in(&m, name),
            0.0,
            "{name} starts at 0"
        );
    }
    let metrics_text = node.get("/metrics").await.text();
    assert!(
        metrics_text.contains("# TYPE switchboard_connections gauge"),
        "{metrics_text}"
    );
    assert!(
        metrics_text.contains("# TYPE switchboard_publishes_total counter"),
        "{metrics_text}"
    );

    let mut a = node.connect().await;
    let mut b = node.connect().await;
    node.wait_metric_eq("switchboard_connections", 2.0).await;

    a.join_ok("room:1").await; // frames in: 1
    a.join_ok("room:2").await; // 2
    b.join_ok("room:1").await; // 3
    node.wait_metric_eq("switchboard_topics", 2.0).await;
    node.wait_metric_eq("switchboard_subscriptions", 3.0).await;

    let r = a.push("room:1", "m", json!({})).await; // 4; published once, to 2 sockets
    a.reply_to(&r).await;
    a.broadcast("room:1", "m").await;
    b.broadcast("room:1", "m").await;
    http::publish(addr, "room:2", None, &json!({})).await; // published, to 1 socket
    a.broadcast("room:2", "message").await;
    a.heartbeat().await; // 5
    assert_eq!(node.metric("switchboard_frames_in_total").await, 5.0);
    assert_eq!(node.metric("switchboard_publishes_total").await, 2.0);
    // Out: 3 join replies, 1 push reply, 2 + 1 broadcasts, 1 heartbeat reply, at least.
    let out = node.metric("switchboard_frames_out_total").await;
    assert!(out >= 8.0, "frames out {out} < 8");

    // Protocol errors: an error reply and a close both count.
    a.send_frame(Some("x"), Some("99"), "", "phx_join", json!({}))
        .await; // 6
    assert_eq!(a.reply_to("99").await.status(), "error");
    b.send_text("garbage").await;
    assert_eq!(b.expect_close().await.0, 1007);
    node.wait_metric_eq("switchboard_protocol_errors_total", 2.0)
        .await;

    // b's close drops its subscription; the topic stays while a is on it.
    node.wait_metric_eq("switchboard_connections", 1.0).await;
    node.wait_metric_eq("switchboard_subscriptions", 2.0).await;
    node.wait_metric_eq("switchboard_topics", 2.0).await;

    assert_eq!(a.leave("room:2").await.status(), "ok");
    node.wait_metric_eq("switchboard_topics", 1.0).await;
    node.wait_metric_eq("switchboard_subscriptions", 1.0).await;

    a.close().await;
    node.wait_metric_eq("switchboard_connections", 0.0).await;
    node.wait_metric_eq("switchboard_topics", 0.0).await;
    node.wait_metric_eq("switchboard_subscriptions", 0.0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        node.metric("switchboard_slow_consumer_disconnects_total")
            .await,
        0.0
    );
}
