//! The PostgreSQL bridge when the database fails, as the Redis bridge does when Redis does: a
//! node started with the database down still runs and delivers locally, says so on `/readyz`
//! (`"backend":"postgres","bridge":"down"`) and in publish answers, and joins the others once
//! the database appears; a database stopped with `pg_ctl stop -m immediate` mid-stream and
//! started again is used again promptly, LISTENing to the topics the node has now, with no
//! duplicate, no reordering and no crash.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::postgres::{bridged_args, url_for, wait_delivery, PostgresServer};
use switchboard_e2e::redis::{free_port, wait_bridge, wait_bridge_up};
use switchboard_e2e::{http, Client, Node, PhxFrame, PATIENCE};

/// The error reason of a push made while the bridge is down.
const UPSTREAM_DOWN: &str = "upstream unavailable: delivered on this node only";

/// A node sharing topics through the database on `port` (which need not be running), with
/// a push rate limit above the steady publisher's 500 messages a second.
fn bridged_node(port: u16) -> Node {
    let mut args = bridged_args(&url_for(port));
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
            "{} did not become ready within {PATIENCE:?} of the database starting; log:\n{}",
            node.addr(),
            node.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_with_the_database_down_delivers_locally_and_joins_when_it_appears() {
    let port = free_port();
    let (a, b) = (bridged_node(port), bridged_node(port));

    let ready = wait_bridge(&a, false, PATIENCE).await;
    let body = ready.json();
    assert_eq!(ready.status, 503, "{body}");
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["backend"], "postgres", "{body}");
    assert_eq!(body["bridge"], "down", "{body}");
    assert_eq!(a.get("/healthz").await.status, 200);
    assert_eq!(a.metric("switchboard_bridge_up").await, 0.0);

    // Local delivery works; publishers are told the other nodes were not reached.
    let topic = "room:down";
    let (mut a1, mut a2) = (a.connect().await, a.connect().await);
    a1.join_ok(topic).await;
    a2.join_ok(topic).await;
    let push_ref = a1.push(topic, "local", json!({"n": 1})).await;
    let reply = a1.reply_to(&push_ref).await;
    assert_eq!(reply.status(), "error", "{reply}");
    assert_eq!(reply.reason(), UPSTREAM_DOWN, "{reply}");
    for client in [&mut a1, &mut a2] {
        assert_eq!(
            client.broadcast(topic, "local").await,
            json!([null, null, topic, "local", {"n": 1}])
        );
    }
    let started = Instant::now();
    let response = http::publish(a.addr(), topic, Some("local"), &json!({"n": 2})).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "it must not wait for the database"
    );
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.json()["error"]["code"], "upstream_unavailable");
    assert_eq!(response.json()["recipients"], 2);
    for client in [&mut a1, &mut a2] {
        client.broadcast(topic, "local").await;
    }

    // The database appears on the port: both nodes connect by themselves and LISTEN.
    let db = tokio::task::block_in_place(|| PostgresServer::start_on(port));
    let appeared = Instant::now();
    let (ready_a, ready_b) = tokio::join!(
        time_until_ready(&a, appeared),
        time_until_ready(&b, appeared)
    );
    #[allow(clippy::print_stderr)] // The figure is for the reader of the test log.
    {
        eprintln!("PostgreSQL appeared: node A ready after {ready_a:?}, node B after {ready_b:?}");
    }
    // A's topic, joined while the database was down, is LISTENed now: an application's
    // notification reaches it.
    db.notify(topic, r#"{"from":"app"}"#).await;
    for client in [&mut a1, &mut a2] {
        assert_eq!(
            client.broadcast(topic, "message").await,
            json!([null, null, topic, "message", {"from": "app"}])
        );
    }
    let mut b1 = b.connect().await;
    b1.join_ok(topic).await;
    wait_delivery(&a, topic, &mut [&mut a1, &mut a2, &mut b1]).await;
    let push_ref = b1.push(topic, "back", json!({"n": 3})).await;
    assert_eq!(b1.reply_to(&push_ref).await.status(), "ok");
    for client in [&mut a1, &mut a2, &mut b1] {
        assert_eq!(
            client.broadcast(topic, "back").await,
            json!([null, null, topic, "back", {"n": 3}])
        );
        client.expect_silence(Duration::from_millis(300)).await;
    }
}

/// What the publisher saw of its own stream.
#[derive(Debug, Default)]
struct Published {
    sent: u64,
    own: Vec<u64>,
    down_replies: usize,
    other_errors: Vec<Value>,
}

/// Pushes `{"n": seq}` as `tick` every `interval` until `stop`, then one `end`, reading its
/// own socket as it goes and until its own `end` arrives.
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

/// `tick` sequence numbers one subscriber saw, in order, until an `end` broadcast.
async fn read_until_end(mut client: Client, topic: &'static str) -> Vec<u64> {
    let mut ticks = Vec::new();
    loop {
        let frame = client
            .recv_until("a broadcast", |f| f.is_broadcast() && f.topic() == topic)
            .await;
        match frame.event() {
            "tick" => ticks.push(frame.payload()["n"].as_u64().unwrap_or(u64::MAX)),
            "end" => return ticks,
            other => panic!("unexpected broadcast {other}: {frame}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_restarted_mid_stream_is_used_again_without_duplicates() {
    let mut db = PostgresServer::start();
    let (a, b) = (bridged_node(db.port()), bridged_node(db.port()));
    wait_bridge_up(&[&a, &b]).await;
    let topic = "room:steady";

    let mut publisher = a.connect().await;
    publisher.join_ok(topic).await;
    let (mut a2, mut b1, mut b2) = (a.connect().await, b.connect().await, b.connect().await);
    for client in [&mut a2, &mut b1, &mut b2] {
        client.set_timeout(Duration::from_secs(20));
        client.join_ok(topic).await;
    }
    wait_delivery(&a, topic, &mut [&mut publisher, &mut a2, &mut b1, &mut b2]).await;
    // A socket that changes its topics while the database is down.
    let mut changer = b.connect().await;
    changer.join_ok("room:left").await;
    let readers: Vec<_> = [a2, b1, b2]
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

    // Streaming for a second, then every backend is killed at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| db.stop_immediate());
    let (down_a, down_b) = tokio::join!(
        wait_bridge(&a, false, PATIENCE),
        wait_bridge(&b, false, PATIENCE)
    );
    assert_eq!(down_a.json()["backend"], "postgres", "{}", down_a.text());
    assert_eq!(down_b.json()["bridge"], "down", "{}", down_b.text());
    let reply = changer.leave("room:left").await;
    assert_eq!(reply.status(), "ok", "{reply}");
    changer.join_ok("room:joined").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Start it again on the same port; time from it accepting connections to both ready.
    tokio::task::block_in_place(|| db.start_again());
    let answered = Instant::now();
    let (ready_a, ready_b) = tokio::join!(
        time_until_ready(&a, answered),
        time_until_ready(&b, answered)
    );
    let recovery = ready_a.max(ready_b);
    #[allow(clippy::print_stderr)] // The figure is for the reader of the test log.
    {
        eprintln!("PostgreSQL restarted: node A ready after {ready_a:?}, node B after {ready_b:?}");
    }
    assert!(
        recovery < Duration::from_secs(3),
        "the bridge took {recovery:?} to come back (reconnect backoff is at most 500 ms)"
    );

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
    assert_eq!(
        published.own, all,
        "the publisher's own copy is complete and in order"
    );
    assert_eq!(
        seen[0], all,
        "A's other subscriber got everything, in order"
    );
    for (i, got) in seen.iter().enumerate().skip(1) {
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "subscriber {i} on B: duplicate or reordered"
        );
        assert!(
            got.len() < all.len(),
            "subscriber {i} on B missed the outage"
        );
        assert_eq!(
            got.last(),
            Some(&(sent - 1)),
            "subscriber {i} on B got the last message"
        );
        #[allow(clippy::print_stderr)] // The figure is for the reader of the test log.
        {
            eprintln!("subscriber {i} on B: {} of {sent} messages", got.len());
        }
    }
    // B LISTENs to its topics as they are now (the stream has stopped, so its counter only
    // moves for these): room:joined, not room:left.
    let received = b.metric("switchboard_bridge_received_total").await;
    db.notify("room:left", "{}").await;
    db.notify("room:joined", r#"{"n":1}"#).await;
    assert_eq!(
        changer.broadcast("room:joined", "message").await,
        json!([null, null, "room:joined", "message", {"n": 1}])
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.metric("switchboard_bridge_received_total").await,
        received + 1.0,
        "B no longer LISTENs to room:left"
    );

    let (ma, mb) = (a.metrics().await, b.metrics().await);
    for (name, m) in [("A", &ma), ("B", &mb)] {
        assert_eq!(m["switchboard_bridge_up"], 1.0, "node {name}");
        assert!(
            m["switchboard_bridge_reconnects_total"] >= 1.0,
            "node {name}: {m:?}"
        );
    }
    assert!(ma["switchboard_bridge_lost_total"] > 0.0, "{ma:?}");
    let (mut a, mut b) = (a, b);
    assert!(a.exit_status().is_none(), "node A is still running");
    assert!(b.exit_status().is_none(), "node B is still running");
}
