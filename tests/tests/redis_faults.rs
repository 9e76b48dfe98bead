//! The Redis bridge when Redis fails: a node started without Redis still runs and delivers
//! locally, says so on `/readyz` and in publish answers, and joins the other nodes once Redis
//! appears; a Redis killed with SIGKILL mid-stream and restarted is used again within about a
//! second, with no duplicate, no reordering and no crash.
//!
//! Each test starts its own `redis-server` on a free port and its own nodes pointed at it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::redis::{bridged_args, free_port, wait_bridge, wait_bridge_up, RedisServer};
use switchboard_e2e::{http, Client, Node, PhxFrame, PATIENCE};

/// The error reason of a push made while the bridge is down (docs: Redis bridge).
const UPSTREAM_DOWN: &str = "upstream unavailable: delivered on this node only";

/// A node sharing topics through the Redis on `port` (which need not be running), with no
/// channel prefix whatever the caller's environment says, and a push rate limit above the
/// steady publisher's 500 messages a second.
fn bridged_node(port: u16) -> Node {
    let mut args = bridged_args(port);
    args.extend(["--channel-prefix".to_owned(), String::new()]);
    args.extend(["--push-rate", "10000", "--push-burst", "10000"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start(&args)
}

/// Polls `/readyz` on `node` every 10 ms until it is 200 with `"bridge":"up"`: the time
/// since `since`.
async fn time_until_ready(node: &Node, since: Instant) -> Duration {
    let deadline = since + PATIENCE;
    loop {
        if let Ok(response) = http::request(node.addr(), "GET", "/readyz", &[], &[]).await {
            if response.status == 200 && response.json()["bridge"] == "up" {
                return since.elapsed();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} did not become ready within {PATIENCE:?} of Redis answering PING; log:\n{}",
            node.addr(),
            node.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_without_redis_delivers_locally_and_joins_when_redis_appears() {
    let port = free_port();
    let a = bridged_node(port);
    let b = bridged_node(port);

    // Alive, not ready, and saying why.
    let health = a.get("/healthz").await;
    assert_eq!(health.status, 200, "{}", health.text());
    let ready = wait_bridge(&a, false, PATIENCE).await;
    assert_eq!(ready.json()["status"], "not_ready", "{}", ready.text());
    assert_eq!(ready.json()["backend"], "redis", "{}", ready.text());
    assert_eq!(a.metric("switchboard_bridge_up").await, 0.0);

    // Local delivery works; the publisher is told the other nodes were not reached.
    let topic = "room:down";
    let mut a1 = a.connect().await;
    let mut a2 = a.connect().await;
    a1.join_ok(topic).await;
    a2.join_ok(topic).await;
    let push_ref = a1.push(topic, "local", json!({"n": 1})).await;
    let reply = a1.reply_to(&push_ref).await;
    assert_eq!(reply.status(), "error", "{reply}");
    assert_eq!(reply.reason(), UPSTREAM_DOWN, "{reply}");
    let expected = json!([null, null, topic, "local", {"n": 1}]);
    assert_eq!(a1.broadcast(topic, "local").await, expected);
    assert_eq!(a2.broadcast(topic, "local").await, expected);

    let started = Instant::now();
    let response = http::publish(a.addr(), topic, Some("local"), &json!({"n": 2})).await;
    let took = started.elapsed();
    assert_eq!(response.status, 503, "{}", response.text());
    let body = response.json();
    assert_eq!(body["error"]["code"], "upstream_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["recipients"], 2, "{body}");
    assert!(
        took < Duration::from_secs(1),
        "the publish answered in {took:?}; it must not wait for Redis"
    );
    let expected = json!([null, null, topic, "local", {"n": 2}]);
    assert_eq!(a1.broadcast(topic, "local").await, expected);
    assert_eq!(a2.broadcast(topic, "local").await, expected);
    assert!(a.metric("switchboard_bridge_lost_total").await >= 2.0);

    // Redis appears on the port: both nodes connect by themselves, and resubscribe.
    let redis = RedisServer::start_on(port);
    let appeared = Instant::now();
    let (ready_a, ready_b) = tokio::join!(
        time_until_ready(&a, appeared),
        time_until_ready(&b, appeared)
    );
    #[allow(clippy::print_stderr)] // The figure is for the reader of the test log.
    {
        eprintln!("Redis appeared: node A ready after {ready_a:?}, node B after {ready_b:?}");
    }
    redis.wait_numsub(topic, 1).await;

    // Cross-node delivery works now, both ways.
    let mut b1 = b.connect().await;
    b1.join_ok(topic).await;
    redis.wait_numsub(topic, 2).await;
    let response = http::publish(a.addr(), topic, Some("shared"), &json!({"n": 3})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), json!({"ok": true, "recipients": 2}));
    let expected = json!([null, null, topic, "shared", {"n": 3}]);
    for client in [&mut a1, &mut a2, &mut b1] {
        assert_eq!(client.broadcast(topic, "shared").await, expected);
    }
    let push_ref = b1.push(topic, "back", json!({"n": 4})).await;
    assert_eq!(b1.reply_to(&push_ref).await.status(), "ok");
    let expected = json!([null, null, topic, "back", {"n": 4}]);
    for client in [&mut a1, &mut a2, &mut b1] {
        assert_eq!(client.broadcast(topic, "back").await, expected);
    }
    for client in [&mut a1, &mut a2, &mut b1] {
        client.expect_silence(Duration::from_millis(300)).await;
    }
}

/// What the publisher saw of its own stream.
#[derive(Debug, Default)]
struct Published {
    /// Messages sent (sequence numbers 0..sent).
    sent: u64,
    /// Its own broadcasts, as delivered to it by its node.
    own: Vec<u64>,
    /// Error replies `upstream unavailable: ...`.
    down_replies: usize,
    /// Other error replies.
    other_errors: Vec<Value>,
}

/// Publishes `{"n": seq}` as `tick` every `interval` until `stop`, then one `end`, reading
/// its own socket as it goes (without blocking) and until its own `end` arrives.
async fn publish_steadily(
    mut client: Client,
    topic: &'static str,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> Published {
    let mut out = Published::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ended = false;
    let note = |out: &mut Published, frame: &Value| -> bool {
        if frame.is_broadcast() && frame.event() == "tick" {
            out.own
                .push(frame.payload()["n"].as_u64().unwrap_or(u64::MAX));
        } else if frame.is_broadcast() && frame.event() == "end" {
            return true;
        } else if frame.is_reply() && frame.status() == "error" {
            if frame.reason() == UPSTREAM_DOWN {
                out.down_replies += 1;
            } else {
                out.other_errors.push(frame.clone());
            }
        }
        false
    };
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let _ = client.push(topic, "tick", json!({"n": out.sent})).await;
        out.sent += 1;
        // Drain what has arrived, without waiting.
        while let Some(frame) = client.recv_json_within(Duration::ZERO).await {
            ended |= note(&mut out, &frame);
        }
    }
    let _ = client.push(topic, "end", json!({"n": out.sent})).await;
    while !ended {
        let frame = client.recv_json().await;
        ended |= note(&mut out, &frame);
    }
    out
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    /// `tick` sequence numbers in arrival order.
    ticks: Vec<u64>,
    /// `outage` broadcasts (published by HTTP while Redis was dead).
    outage: usize,
}

/// Reads `tick` broadcasts until an `end` broadcast.
async fn read_until_end(mut client: Client, topic: &'static str) -> Seen {
    let mut seen = Seen::default();
    loop {
        let frame = client
            .recv_until("a broadcast", |f| f.is_broadcast() && f.topic() == topic)
            .await;
        match frame.event() {
            "tick" => seen
                .ticks
                .push(frame.payload()["n"].as_u64().unwrap_or(u64::MAX)),
            "outage" => seen.outage += 1,
            "end" => return seen,
            other => panic!("unexpected broadcast {other}: {frame}"),
        }
    }
}

/// Whether `seen` is strictly increasing (no duplicate, no reordering): the first offending
/// index otherwise.
fn first_disorder(seen: &[u64]) -> Option<usize> {
    seen.windows(2).position(|w| w[0] >= w[1]).map(|i| i + 1)
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_killed_mid_stream_and_restarted_is_used_again_without_duplicates() {
    let mut redis = RedisServer::start();
    let a = bridged_node(redis.port());
    let b = bridged_node(redis.port());
    wait_bridge_up(&[&a, &b]).await;
    let topic = "room:steady";

    let mut publisher = a.connect().await;
    publisher.join_ok(topic).await;
    let mut subscribers = Vec::new();
    for node in [&a, &b, &b] {
        let mut client = node.connect().await;
        client.set_timeout(Duration::from_secs(20));
        client.join_ok(topic).await;
        subscribers.push(client);
    }
    // A socket that changes its topics while Redis is dead.
    let mut changer = b.connect().await;
    changer.join_ok("room:left").await;
    redis.wait_numsub(topic, 2).await;
    redis.wait_channels("*", &[topic, "room:left"]).await;
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|client| tokio::spawn(read_until_end(client, topic)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = tokio::spawn(publish_steadily(
        publisher,
        topic,
        Duration::from_millis(2),
        Arc::clone(&stop),
    ));

    // Streaming normally for a second, then SIGKILL.
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.kill9();
    let (down_a, down_b) = tokio::join!(
        wait_bridge(&a, false, PATIENCE),
        wait_bridge(&b, false, PATIENCE)
    );
    assert_eq!(down_a.json()["status"], "not_ready", "{}", down_a.text());
    assert_eq!(down_b.json()["status"], "not_ready", "{}", down_b.text());
    // While down, HTTP publishes answer promptly with 503 and what was delivered locally.
    let started = Instant::now();
    let response = http::publish(b.addr(), topic, Some("outage"), &json!({})).await;
    let took = started.elapsed();
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.json()["error"]["code"], "upstream_unavailable");
    assert_eq!(response.json()["recipients"], 2);
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    let reply = changer.leave("room:left").await;
    assert_eq!(reply.status(), "ok", "{reply}");
    changer.join_ok("room:joined").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Restart on the same port; time from its first PONG to both nodes ready.
    tokio::task::block_in_place(|| redis.restart());
    let answered = Instant::now();
    let (ready_a, ready_b) = tokio::join!(
        time_until_ready(&a, answered),
        time_until_ready(&b, answered)
    );
    let recovery = ready_a.max(ready_b);
    #[allow(clippy::print_stderr)] // The figure is for the reader of the test log.
    {
        eprintln!(
            "Redis restarted: node A ready after {ready_a:?}, node B after {ready_b:?} \
             (from the first PONG)"
        );
    }
    assert!(
        recovery < Duration::from_secs(3),
        "the bridge took {recovery:?} to come back (reconnect backoff is at most 500 ms)"
    );
    // Both resubscribed from their own topic lists, as they are now.
    redis.wait_numsub(topic, 2).await;
    redis.wait_channels("*", &[topic, "room:joined"]).await;

    // Keep streaming for a second with Redis back, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let published = publishing.await.expect("the publisher finished");
    let mut seen = Vec::new();
    for reader in readers {
        seen.push(reader.await.expect("a subscriber finished"));
    }

    let sent = published.sent;
    let all: Vec<u64> = (0..sent).collect();
    assert!(
        published.other_errors.is_empty(),
        "{:?}",
        published.other_errors
    );
    assert!(
        published.down_replies > 0,
        "pushes during the outage are answered {UPSTREAM_DOWN:?}"
    );
    // Node A's subscribers (the publisher and one more) got everything: local first.
    assert_eq!(
        published.own, all,
        "the publisher's own copy is complete and in order"
    );
    assert_eq!(
        seen[0].ticks, all,
        "A's other subscriber got everything, in order"
    );
    assert_eq!(
        seen[0].outage, 0,
        "B's publish during the outage stayed on B"
    );
    // Node B's subscribers lost the outage but nothing else: in order, no duplicates, and
    // the stream is whole again at the end.
    for (i, seen) in seen.iter().enumerate().skip(1) {
        assert_eq!(
            seen.outage, 1,
            "subscriber {i} on B got B's publish during the outage"
        );
        let got = &seen.ticks;
        assert_eq!(
            first_disorder(got),
            None,
            "subscriber {i} on B: duplicate or reordered"
        );
        assert!(
            got.len() < all.len(),
            "subscriber {i} on B cannot have seen what was published while Redis was dead"
        );
        assert_eq!(
            got.last(),
            Some(&(sent - 1)),
            "subscriber {i} on B got the last message"
        );
        let first_after_gap = got.windows(2).position(|w| w[1] != w[0] + 1);
        #[allow(clippy::print_stderr)] // The figure is for the reader of the test log.
        {
            eprintln!(
                "subscriber {i} on B: {} of {sent} messages, gap after index {first_after_gap:?}",
                got.len()
            );
        }
    }

    // The outage is counted; the nodes are still running and ready.
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    for (name, m) in [("A", &ma), ("B", &mb)] {
        assert_eq!(m["switchboard_bridge_up"], 1.0, "node {name}");
        assert!(
            m["switchboard_bridge_reconnects_total"] >= 1.0,
            "node {name}: {m:?}"
        );
    }
    assert!(ma["switchboard_bridge_lost_total"] > 0.0, "{ma:?}");
    assert!(mb["switchboard_bridge_lost_total"] > 0.0, "{mb:?}");
    assert!(
        mb["switchboard_bridge_received_total"] > 0.0
            && ma["switchboard_bridge_published_total"] > 0.0
    );

    // And delivery fully works again, from either side.
    let mut a1 = a.connect().await;
    let mut b1 = b.connect().await;
    a1.join_ok(topic).await;
    b1.join_ok(topic).await;
    for (from, event) in [(&a, "after_a"), (&b, "after_b")] {
        let response = http::publish(from.addr(), topic, Some(event), &json!({})).await;
        assert_eq!(response.status, 200, "{}", response.text());
        for client in [&mut a1, &mut b1] {
            assert_eq!(
                client.broadcast(topic, event).await,
                json!([null, null, topic, event, {}])
            );
        }
    }
    a1.expect_silence(Duration::from_millis(300)).await;
    b1.expect_silence(Duration::from_millis(300)).await;
    let (mut a, mut b) = (a, b);
    assert!(a.exit_status().is_none(), "node A is still running");
    assert!(b.exit_status().is_none(), "node B is still running");
}
