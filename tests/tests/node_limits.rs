//! Limits and the close codes that enforce them: topics per socket, malformed and binary
//! messages, oversized messages, idle sockets (docs/node.md, close code table).

use std::time::Duration;

use serde_json::json;
use switchboard_e2e::{http, Client, Node, PhxFrame};

#[tokio::test(flavor = "multi_thread")]
async fn the_101st_topic_on_one_socket_gets_too_many_channels_joined() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;
    for i in 0..100 {
        client.join_ok(&format!("room:{i}")).await;
    }

    let reply = client.join("room:100").await;
    assert_eq!(reply.status(), "error", "{reply}");
    assert_eq!(reply.reason(), "too many channels joined", "{reply}");
    assert!(client.join_ref("room:100").is_none());

    // At the limit, rejoining a joined topic is still allowed (it replaces the old join)...
    let rejoin = client.join("room:7").await;
    assert_eq!(rejoin.status(), "ok", "{rejoin}");
    // ...and leaving one makes room for another.
    assert_eq!(client.leave("room:0").await.status(), "ok");
    client.join_ok("room:100").await;
    node.wait_metric_eq("switchboard_subscriptions", 100.0)
        .await;
    node.wait_metric_eq("switchboard_topics", 100.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_topics_per_socket_flag_changes_the_limit_per_socket() {
    let node = Node::start(&["--max-topics-per-socket", "3"]);
    let mut first = node.connect().await;
    let mut second = node.connect().await;
    for topic in ["a:1", "a:2", "a:3"] {
        first.join_ok(topic).await;
        second.join_ok(topic).await;
    }
    for client in [&mut first, &mut second] {
        let reply = client.join("a:4").await;
        assert_eq!(reply.status(), "error", "{reply}");
        assert_eq!(reply.reason(), "too many channels joined");
    }
}

async fn expect_1007(node: &Node, text: &str) {
    let mut client = node.connect().await;
    client.send_text(text).await;
    let (code, reason) = client.expect_close().await;
    assert_eq!(
        code, 1007,
        "{text:?} must close with 1007, got {code} {reason:?}"
    );
    assert!(
        !reason.is_empty(),
        "the close reason names the problem for {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn text_that_is_not_a_phoenix_frame_closes_the_socket_with_1007() {
    let node = Node::start(&[]);
    for text in [
        "hello",
        "{\"topic\":\"room:a\"}",
        "[]",
        "[null, \"1\", \"room:a\", \"phx_join\"]",
        "[null, \"1\", \"room:a\", \"phx_join\", {}, 6]",
        "[1, \"1\", \"room:a\", \"phx_join\", {}]",
        "[null, 1, \"room:a\", \"phx_join\", {}]",
        "[null, \"1\", 7, \"phx_join\", {}]",
        "[null, \"1\", \"room:a\", 8, {}]",
        "[null, \"1\", \"room:a\", \"phx_join\", {}",
    ] {
        expect_1007(&node, text).await;
    }
    // Closing a bad socket leaves the node serving others.
    let mut client = node.connect().await;
    assert_eq!(client.heartbeat().await.status(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binary_message_closes_the_socket_with_1003() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;
    client.join_ok("room:a").await;

    client.send_binary(vec![0, 1, 2, 3]).await;

    let (code, reason) = client.expect_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1003, "binary frames are not supported")
    );
}

/// A push frame on `topic` exactly `len` bytes long.
fn push_of_len(join_ref: &str, topic: &str, len: usize) -> String {
    let skeleton = json!([join_ref, "99", topic, "big", {"pad": ""}]).to_string();
    let pad = len
        .checked_sub(skeleton.len())
        .expect("len is larger than an empty push");
    let text = json!([join_ref, "99", topic, "big", {"pad": "x".repeat(pad)}]).to_string();
    assert_eq!(text.len(), len);
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_max_frame_bytes_closes_only_that_socket_with_1009() {
    let node = Node::start(&[]);
    let mut big = node.connect().await;
    let mut bystander = node.connect().await;
    big.join_ok("room:a").await;
    bystander.join_ok("room:a").await;
    let join_ref = big.join_ref("room:a").expect("joined").to_owned();

    // Exactly the default limit (65536 bytes) is accepted.
    big.send_text(push_of_len(&join_ref, "room:a", 65_536))
        .await;
    assert_eq!(big.reply_to("99").await.status(), "ok");
    bystander.broadcast("room:a", "big").await;

    // One byte more is not.
    big.send_text(push_of_len(&join_ref, "room:a", 65_537))
        .await;
    let (code, reason) = big.expect_close().await;
    assert_eq!((code, reason.as_str()), (1009, "frame too large"));

    assert_eq!(bystander.heartbeat().await.status(), "ok");
    let msg_ref = bystander.push("room:a", "after", json!({})).await;
    assert_eq!(bystander.reply_to(&msg_ref).await.status(), "ok");
    bystander.broadcast("room:a", "after").await;
    node.wait_metric_eq("switchboard_connections", 1.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_frame_bytes_flag_lowers_the_limit() {
    let node = Node::start(&["--max-frame-bytes", "1024"]);
    let mut client = node.connect().await;
    client.join_ok("room:a").await;
    let join_ref = client.join_ref("room:a").expect("joined").to_owned();

    client
        .send_text(push_of_len(&join_ref, "room:a", 1024))
        .await;
    assert_eq!(client.reply_to("99").await.status(), "ok");
    client
        .send_text(push_of_len(&join_ref, "room:a", 1025))
        .await;
    assert_eq!(
        client.expect_close().await,
        (1009, "frame too large".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_socket_is_closed_with_1000_but_one_sending_heartbeats_stays() {
    let node = Node::start(&["--idle-timeout", "2s"]);
    let mut idle = node.connect().await;
    let mut listener = node.connect().await;
    let mut lively = node.connect().await;
    idle.join_ok("room:a").await;
    listener.join_ok("room:a").await;

    // Receiving broadcasts is not activity: only frames the client sends are.
    let publisher = async {
        for i in 0..16 {
            http::publish(node.addr(), "room:a", Some("tick"), &json!({ "i": i })).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let heartbeats = async {
        for _ in 0..20 {
            assert_eq!(lively.heartbeat().await.status(), "ok");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let idle_close = async {
        idle.set_timeout(Duration::from_secs(20));
        idle.expect_close().await
    };
    let listener_close = async {
        listener.set_timeout(Duration::from_secs(20));
        listener.expect_close().await
    };
    let ((), (), idle_closed, listener_closed) =
        tokio::join!(publisher, heartbeats, idle_close, listener_close);

    assert_eq!(idle_closed, (1000, "idle timeout".to_owned()));
    assert_eq!(listener_closed, (1000, "idle timeout".to_owned()));
    // Five seconds of heartbeats every 250 ms kept this one open.
    assert_eq!(lively.heartbeat().await.status(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_that_never_sends_a_frame_is_closed_after_the_idle_timeout() {
    let node = Node::start(&["--idle-timeout", "500ms"]);
    let mut client = Client::connect(&node.ws_url()).await;
    client.set_timeout(Duration::from_secs(20));
    assert_eq!(
        client.expect_close().await,
        (1000, "idle timeout".to_owned())
    );
    node.wait_metric_eq("switchboard_connections", 0.0).await;
}
