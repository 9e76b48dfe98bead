//! The Phoenix Channels V2 JSON conversation as a client meets it: join, rejoin, leave,
//! heartbeat, pushes and broadcasts, stale pushes, and the error replies that keep the socket
//! open (docs/node.md, "WebSocket endpoint").

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_e2e::{http, Node, PhxFrame};

fn ok_reply(join_ref: Option<&str>, msg_ref: &str, topic: &str) -> Value {
    json!([join_ref, msg_ref, topic, "phx_reply", {"status": "ok", "response": {}}])
}

#[tokio::test(flavor = "multi_thread")]
async fn join_replies_ok_with_the_join_ref_and_ref_of_the_join() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;

    client
        .send_frame(
            Some("3"),
            Some("3"),
            "room:lobby",
            "phx_join",
            json!({"any": "params"}),
        )
        .await;
    let reply = client.recv_json().await;

    assert_eq!(reply.join_ref(), Some("3"), "{reply}");
    assert_eq!(reply.msg_ref(), Some("3"), "{reply}");
    assert_eq!(reply.topic(), "room:lobby");
    assert_eq!(reply.event(), "phx_reply");
    assert_eq!(reply.status(), "ok", "{reply}");
    assert!(reply.response().is_object(), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rejoining_a_joined_topic_closes_the_old_join_then_replies_ok() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;
    client
        .send_frame(Some("1"), Some("1"), "room:a", "phx_join", json!({}))
        .await;
    assert_eq!(client.recv_json().await.status(), "ok");

    client
        .send_frame(Some("2"), Some("2"), "room:a", "phx_join", json!({}))
        .await;
    let first = client.recv_json().await;
    let second = client.recv_json().await;

    assert_eq!(
        first.event(),
        "phx_close",
        "phx_close must come first: {first}"
    );
    assert_eq!(
        first.join_ref(),
        Some("1"),
        "phx_close carries the old join_ref: {first}"
    );
    assert_eq!(first.topic(), "room:a");
    assert_eq!(first.payload(), &json!({}));
    assert!(
        second.is_reply_to("2"),
        "then the reply to the new join: {second}"
    );
    assert_eq!(second.join_ref(), Some("2"));
    assert_eq!(second.status(), "ok", "{second}");

    // Still one subscription, not two: one publish arrives once.
    node.wait_metric_eq("switchboard_subscriptions", 1.0).await;
    let published = http::publish(node.addr(), "room:a", Some("ping"), &json!({"n": 1})).await;
    assert_eq!(published.json()["recipients"], 1, "{}", published.text());
    let got = client.broadcast("room:a", "ping").await;
    assert_eq!(got, json!([null, null, "room:a", "ping", {"n": 1}]));
    client.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leave_replies_ok_then_sends_phx_close_and_stops_deliveries() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;
    client
        .send_frame(Some("3"), Some("3"), "room:lobby", "phx_join", json!({}))
        .await;
    assert_eq!(client.recv_json().await.status(), "ok");

    client
        .send_frame(Some("3"), Some("5"), "room:lobby", "phx_leave", json!({}))
        .await;
    let reply = client.recv_json().await;
    let close = client.recv_json().await;

    assert_eq!(reply, ok_reply(Some("3"), "5", "room:lobby"));
    assert_eq!(close, json!(["3", "3", "room:lobby", "phx_close", {}]));

    let published = http::publish(node.addr(), "room:lobby", None, &json!({})).await;
    assert_eq!(published.json()["recipients"], 0, "{}", published.text());
    // A heartbeat round trip orders the check: nothing was delivered before its reply.
    let heartbeat = client.heartbeat().await;
    assert_eq!(heartbeat.status(), "ok");
    assert_eq!(client.take_pending(), Vec::<Value>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_gets_an_ok_reply_on_the_phoenix_topic() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;

    client
        .send_frame(None, Some("6"), "phoenix", "heartbeat", json!({}))
        .await;

    assert_eq!(client.recv_json().await, ok_reply(None, "6", "phoenix"));
}

#[tokio::test(flavor = "multi_thread")]
async fn push_on_a_joined_topic_reaches_every_subscriber_including_the_sender() {
    let node = Node::start(&[]);
    let mut alice = node.connect().await;
    let mut bob = node.connect().await;
    let mut carol = node.connect().await;
    alice.join_ok("room:lobby").await;
    bob.join_ok("room:lobby").await;
    carol.join_ok("room:other").await;

    let msg_ref = alice
        .push("room:lobby", "new_msg", json!({"body": "hi"}))
        .await;

    let expected = json!([null, null, "room:lobby", "new_msg", {"body": "hi"}]);
    let reply = alice.reply_to(&msg_ref).await;
    assert_eq!(
        reply,
        ok_reply(alice.join_ref("room:lobby"), &msg_ref, "room:lobby")
    );
    assert_eq!(alice.broadcast("room:lobby", "new_msg").await, expected);
    assert_eq!(bob.recv_json().await, expected);
    // Carol is on another topic: her heartbeat reply is the only thing she gets.
    assert_eq!(carol.heartbeat().await.status(), "ok");
    assert_eq!(carol.take_pending(), Vec::<Value>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn push_without_a_ref_is_broadcast_but_not_replied_to() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;
    client.join_ok("room:lobby").await;

    client
        .push_no_ref("room:lobby", "new_msg", json!({"body": "quiet"}))
        .await;
    let broadcast = client.broadcast("room:lobby", "new_msg").await;
    assert_eq!(broadcast.payload(), &json!({"body": "quiet"}));
    // The session handles frames in order: a reply to the push would come before this one.
    let heartbeat = client.heartbeat().await;
    assert_eq!(heartbeat.status(), "ok");

    let others = client.take_pending();
    assert!(
        others.iter().all(|f| !f.is_reply()),
        "a push with a null ref got a reply: {others:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn push_or_leave_on_a_topic_not_joined_gets_unmatched_topic() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;
    client.join_ok("room:joined").await;

    client
        .send_frame(None, Some("7"), "room:x", "new_msg", json!({"body": "hi"}))
        .await;
    let reply = client.recv_json().await;
    assert!(reply.is_reply_to("7"), "{reply}");
    assert_eq!(reply.topic(), "room:x");
    assert_eq!(reply.status(), "error", "{reply}");
    assert_eq!(reply.reason(), "unmatched topic", "{reply}");

    // A leave of a topic not joined is answered ok, as Phoenix does: the client wanted to be
    // out of it, and it is.
    client
        .send_frame(Some("8"), Some("8"), "room:y", "phx_leave", json!({}))
        .await;
    let reply = client.recv_json().await;
    assert!(reply.is_reply_to("8"), "{reply}");
    assert_eq!(reply.status(), "ok", "{reply}");
    client.expect_silence(Duration::from_millis(200)).await;

    // The socket is still usable.
    assert_eq!(client.heartbeat().await.status(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_with_a_stale_join_ref_after_rejoin_is_refused_by_its_ref_and_not_published() {
    let node = Node::start(&[]);
    let mut pusher = node.connect().await;
    let mut watcher = node.connect().await;
    watcher.join_ok("room:a").await;

    pusher
        .send_frame(Some("1"), Some("1"), "room:a", "phx_join", json!({}))
        .await;
    assert!(pusher.reply_to("1").await.status() == "ok");
    pusher
        .send_frame(Some("5"), Some("5"), "room:a", "phx_join", json!({}))
        .await;
    assert_eq!(pusher.reply_to("5").await.status(), "ok");
    let closed = pusher.take_pending();
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].event(), "phx_close");

    // Stale: join_ref "1" belongs to the membership the rejoin closed.
    pusher
        .send_frame(
            Some("1"),
            Some("6"),
            "room:a",
            "new_msg",
            json!({"body": "stale"}),
        )
        .await;
    pusher
        .send_frame(
            Some("5"),
            Some("7"),
            "room:a",
            "new_msg",
            json!({"body": "fresh"}),
        )
        .await;

    // The stale push is answered at once by its ref alone (join_ref null, so phoenix.js
    // routes the error to the push instead of dropping it as outdated), and not published:
    // one publisher's messages reach a subscriber in order, so anything the stale push
    // caused would arrive before the fresh one.
    let stale = pusher.reply_to("6").await;
    assert_eq!(stale.status(), "error", "{stale}");
    assert_eq!(stale[0], Value::Null, "{stale}");
    assert!(stale.reason().starts_with("stale join_ref"), "{stale}");
    let reply = pusher.reply_to("7").await;
    assert_eq!(reply.status(), "ok", "{reply}");
    let own = pusher.broadcast("room:a", "new_msg").await;
    assert_eq!(own.payload(), &json!({"body": "fresh"}));
    let seen = watcher.broadcast("room:a", "new_msg").await;
    assert_eq!(
        seen.payload(),
        &json!({"body": "fresh"}),
        "the stale push was broadcast"
    );
    pusher.expect_silence(Duration::from_millis(300)).await;
    watcher.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leave_with_a_stale_join_ref_is_answered_ok_and_the_join_stays() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;
    client
        .send_frame(Some("1"), Some("1"), "room:a", "phx_join", json!({}))
        .await;
    assert_eq!(client.reply_to("1").await.status(), "ok");
    client
        .send_frame(Some("2"), Some("2"), "room:a", "phx_join", json!({}))
        .await;
    assert_eq!(client.reply_to("2").await.status(), "ok");
    client.take_pending();

    // The membership join_ref "1" named is gone already: ok, and nothing else (no close, no
    // unsubscription of the current membership).
    client
        .send_frame(Some("1"), Some("3"), "room:a", "phx_leave", json!({}))
        .await;
    let reply = client.reply_to("3").await;
    assert_eq!(reply.status(), "ok", "{reply}");
    let heartbeat = client.heartbeat().await;
    assert_eq!(heartbeat.status(), "ok");
    assert_eq!(
        client.take_pending(),
        Vec::<Value>::new(),
        "the stale leave closed something"
    );

    let published = http::publish(node.addr(), "room:a", Some("still"), &json!({})).await;
    assert_eq!(published.json()["recipients"], 1, "{}", published.text());
    client.broadcast("room:a", "still").await;
}

/// Sends a five-element frame that breaks a rule and returns the reply to its ref.
async fn rejected(client: &mut switchboard_e2e::Client, frame: Value) -> Value {
    let msg_ref = frame[1]
        .as_str()
        .expect("test frames carry a ref")
        .to_owned();
    client.send_text(frame.to_string()).await;
    let reply = client.reply_to(&msg_ref).await;
    assert_eq!(reply.status(), "error", "{frame} must be refused: {reply}");
    assert!(
        !reply.reason().is_empty(),
        "the reason names the problem: {reply}"
    );
    reply
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_that_break_a_rule_get_an_error_reply_and_the_socket_stays_open() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;
    client.join_ok("room:ok").await;

    let empty_topic = rejected(&mut client, json!(["10", "10", "", "phx_join", {}])).await;
    assert_eq!(empty_topic.reason(), "invalid topic: topic is empty");

    let long_topic = "t".repeat(256);
    let reply = rejected(&mut client, json!(["11", "11", long_topic, "phx_join", {}])).await;
    assert!(reply.reason().starts_with("invalid topic"), "{reply}");

    let reply = rejected(&mut client, json!(["12", "12", "room\n1", "phx_join", {}])).await;
    assert!(reply.reason().starts_with("invalid topic"), "{reply}");

    let jr = client.join_ref("room:ok").map(str::to_owned);
    rejected(
        &mut client,
        json!([jr, "13", "room:ok", "new_msg", "not an object"]),
    )
    .await;
    rejected(&mut client, json!([jr, "14", "room:ok", "new_msg", [1, 2]])).await;
    rejected(&mut client, json!([jr, "15", "room:ok", "", {}])).await;
    rejected(&mut client, json!([jr, "16", "room:ok", "phx_reply", {}])).await;
    rejected(
        &mut client,
        json!(["17", "17", "room:b", "phx_join", "params"]),
    )
    .await;

    assert_eq!(client.heartbeat().await.status(), "ok");
    // Nothing was published by the refused frames, and the first join still stands.
    node.wait_metric_eq("switchboard_subscriptions", 1.0).await;
    assert_eq!(node.metric("switchboard_publishes_total").await, 0.0);
    let published = http::publish(node.addr(), "room:ok", Some("alive"), &json!({})).await;
    assert_eq!(published.json()["recipients"], 1);
    client.broadcast("room:ok", "alive").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn many_topics_on_one_socket_each_deliver_to_their_own_subscribers() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;
    for i in 0..10 {
        client.join_ok(&format!("room:{i}")).await;
    }
    for i in (0..10).rev() {
        let topic = format!("room:{i}");
        let msg_ref = client.push(&topic, "n", json!({ "i": i })).await;
        assert_eq!(client.reply_to(&msg_ref).await.status(), "ok");
    }
    for i in (0..10).rev() {
        let got = client.broadcast(&format!("room:{i}"), "n").await;
        assert_eq!(got.payload(), &json!({ "i": i }));
    }
    client.expect_silence(Duration::from_millis(300)).await;
}
