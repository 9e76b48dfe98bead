//! Several nodes as one system through Redis (the "Redis bridge" issue): every publish
//! reaches every subscriber on every node exactly once with its event name, in publisher
//! order; producers that are not nodes can publish raw messages; a node holds one Redis
//! subscription per topic with local subscribers, whatever their number; `--channel-prefix`
//! maps topics to channels; a Redis backend without a URL is refused at start.
//!
//! Each test starts its own `redis-server` on a free port and its own nodes pointed at it.
//! Faults (Redis down, killed, restarted) are in `redis_faults.rs`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::redis::{bridged_args, wait_bridge_up, RedisServer};
use switchboard_e2e::{http, node, Client, Node, PhxFrame};

/// How long a subscriber must stay quiet after its last expected frame for a test to call
/// the delivery "exactly once".
const QUIET: Duration = Duration::from_millis(300);

/// A node sharing topics through `redis`, with extra command-line `args` (an empty channel
/// prefix unless they set one, whatever `CHANNEL_PREFIX` the caller's environment has).
fn bridged_node(redis: &RedisServer, args: &[&str]) -> Node {
    let mut all: Vec<String> = bridged_args(redis.port());
    if !args.contains(&"--channel-prefix") {
        all.extend(["--channel-prefix".to_owned(), String::new()]);
    }
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    Node::start(&all)
}

/// Every client gets `expected` next (ignoring nothing: it must be the next broadcast on the
/// topic) and then nothing else for [`QUIET`].
async fn expect_once(clients: &mut [&mut Client], expected: &Value) {
    for client in clients.iter_mut() {
        let got = client.broadcast(expected.topic(), expected.event()).await;
        assert_eq!(&got, expected);
        let rest: Vec<Value> = client
            .take_pending()
            .into_iter()
            .filter(PhxFrame::is_broadcast)
            .collect();
        assert!(rest.is_empty(), "unexpected broadcasts: {rest:?}");
    }
    for client in clients.iter_mut() {
        client.expect_silence(QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_on_any_node_reaches_every_subscriber_on_every_node_exactly_once() {
    let redis = RedisServer::start();
    let (a, b, c) = (
        bridged_node(&redis, &[]),
        bridged_node(&redis, &[]),
        bridged_node(&redis, &[]),
    );
    wait_bridge_up(&[&a, &b, &c]).await;
    let topic = "room:lobby";
    let mut a1 = a.connect().await;
    let mut a2 = a.connect().await;
    let mut b1 = b.connect().await;
    let mut c1 = c.connect().await;
    let mut c2 = c.connect().await;
    for client in [&mut a1, &mut a2, &mut b1, &mut c1, &mut c2] {
        client.join_ok(topic).await;
    }
    // One Redis subscription per node, whatever its number of local subscribers.
    redis.wait_numsub(topic, 3).await;

    // A socket push on A: its sender and every other subscriber, on every node, get it once.
    let push_ref = a1.push(topic, "new_msg", json!({"body": "from A"})).await;
    let reply = a1.reply_to(&push_ref).await;
    assert_eq!(reply.status(), "ok", "the push was refused: {reply}");
    let expected = json!([null, null, topic, "new_msg", {"body": "from A"}]);
    expect_once(
        &mut [&mut a1, &mut a2, &mut b1, &mut c1, &mut c2],
        &expected,
    )
    .await;

    // An HTTP publish on B: recipients counts B's own subscribers; every node delivers it.
    let response = http::publish(b.addr(), topic, Some("shout"), &json!({"n": 2})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), json!({"ok": true, "recipients": 1}));
    let expected = json!([null, null, topic, "shout", {"n": 2}]);
    expect_once(
        &mut [&mut a1, &mut a2, &mut b1, &mut c1, &mut c2],
        &expected,
    )
    .await;

    // Without an event the default `message` crosses nodes too.
    let response = http::publish(c.addr(), topic, None, &json!(["x", 1])).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["recipients"], 2);
    let expected = json!([null, null, topic, "message", ["x", 1]]);
    expect_once(
        &mut [&mut a1, &mut a2, &mut b1, &mut c1, &mut c2],
        &expected,
    )
    .await;

    // Each node published what it originated and received what the others did.
    let (ma, mb, mc) = (a.metrics().await, b.metrics().await, c.metrics().await);
    let get = |m: &std::collections::HashMap<String, f64>, name: &str| node::metric_in(m, name);
    for (name, m) in [("A", &ma), ("B", &mb), ("C", &mc)] {
        assert_eq!(get(m, "switchboard_bridge_up"), 1.0, "node {name}");
        assert_eq!(
            get(m, "switchboard_bridge_published_total"),
            1.0,
            "node {name}"
        );
        assert_eq!(
            get(m, "switchboard_bridge_received_total"),
            2.0,
            "node {name}"
        );
        assert_eq!(get(m, "switchboard_bridge_lost_total"), 0.0, "node {name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_publish_envelopes_and_deliver_raw_messages_from_other_producers() {
    let redis = RedisServer::start();
    let (a, b) = (bridged_node(&redis, &[]), bridged_node(&redis, &[]));
    wait_bridge_up(&[&a, &b]).await;
    let topic = "auditlog:42";
    let mut a1 = a.connect().await;
    let mut b1 = b.connect().await;
    a1.join_ok(topic).await;
    b1.join_ok(topic).await;
    redis.wait_numsub(topic, 2).await;

    // What a producer that is not a node publishes, and what subscribers see.
    let cases: [(&[u8], &str, Value); 6] = [
        (
            br#"{"activity_type":"TASK_COMPLETED"}"#,
            "message",
            json!({"activity_type": "TASK_COMPLETED"}),
        ),
        (b"hello world", "message", json!("hello world")),
        (b"[1,\"two\"]", "message", json!([1, "two"])),
        (b"42", "message", json!(42)),
        (
            br#"{"switchboard":{"event":"task_done"},"payload":{"id":7}}"#,
            "task_done",
            json!({"id": 7}),
        ),
        (
            br#"{"switchboard":{"event":"from_elsewhere","origin":"0123456789abcdef"},"payload":"p"}"#,
            "from_elsewhere",
            json!("p"),
        ),
    ];
    for (message, event, payload) in &cases {
        assert_eq!(
            redis.publish(topic, *message),
            2,
            "both nodes are subscribed to {topic}"
        );
        let expected = json!([null, null, topic, event, payload]);
        expect_once(&mut [&mut a1, &mut b1], &expected).await;
    }
    assert_eq!(a.metric("switchboard_bridge_received_total").await, 6.0);

    // What a node publishes: an envelope with the event and the node's origin.
    let mut wire = redis.subscribe(&[topic]);
    let mut origins = Vec::new();
    for (from, event) in [(&a, "new_msg"), (&b, "other")] {
        let response = http::publish(from.addr(), topic, Some(event), &json!({"body": "hi"})).await;
        assert_eq!(response.status, 200, "{}", response.text());
        let (channel, bytes) = wire
            .next_message(Duration::from_secs(10))
            .expect("the node published to Redis");
        assert_eq!(channel, topic);
        let envelope: Value = serde_json::from_slice(&bytes).expect("the envelope is JSON");
        assert_eq!(envelope["switchboard"]["event"], event, "{envelope}");
        assert_eq!(envelope["payload"], json!({"body": "hi"}), "{envelope}");
        let origin = envelope["switchboard"]["origin"]
            .as_str()
            .unwrap_or_else(|| panic!("the envelope carries an origin: {envelope}"))
            .to_owned();
        assert!(!origin.is_empty(), "{envelope}");
        assert_eq!(
            envelope.as_object().map(serde_json::Map::len),
            Some(2),
            "only `switchboard` and `payload`: {envelope}"
        );
        origins.push(origin);
        let expected = json!([null, null, topic, event, {"body": "hi"}]);
        expect_once(&mut [&mut a1, &mut b1], &expected).await;
    }
    assert_ne!(origins[0], origins[1], "each process has its own origin");

    // A message carrying A's origin is A's own echo: B delivers it, A drops it.
    let echo = format!(
        r#"{{"switchboard":{{"event":"echo","origin":"{}"}},"payload":1}}"#,
        origins[0]
    );
    assert_eq!(redis.publish(topic, echo.as_str()), 3);
    let expected = json!([null, null, topic, "echo", 1]);
    expect_once(&mut [&mut b1], &expected).await;
    a1.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_subscribes_in_redis_on_the_first_local_subscriber_and_unsubscribes_on_the_last() {
    let redis = RedisServer::start();
    let (a, b) = (bridged_node(&redis, &[]), bridged_node(&redis, &[]));
    wait_bridge_up(&[&a, &b]).await;
    let topic = "room:edge";
    let calls = |name: &str| redis.command_calls(name);
    let _ = redis.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(redis.channels("*"), Vec::<String>::new());

    // Two local subscribers on A: one SUBSCRIBE, one Redis subscriber.
    let mut a1 = a.connect().await;
    let mut a2 = a.connect().await;
    a1.join_ok(topic).await;
    a2.join_ok(topic).await;
    redis.wait_numsub(topic, 1).await;
    redis.wait_channels("*", &[topic]).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        calls("subscribe"),
        1,
        "one SUBSCRIBE for two local subscribers"
    );
    assert_eq!(redis.numsub(topic), 1);

    // A subscriber on B as well: B's own subscription.
    let mut b1 = b.connect().await;
    b1.join_ok(topic).await;
    redis.wait_numsub(topic, 2).await;
    assert_eq!(calls("subscribe"), 2);

    // One of A's two leaves: A stays subscribed.
    let reply = a2.leave(topic).await;
    assert_eq!(reply.status(), "ok", "{reply}");
    tokio::time::sleep(QUIET).await;
    assert_eq!(calls("unsubscribe"), 0, "A still has a local subscriber");
    assert_eq!(redis.numsub(topic), 2);
    // ...and still delivers to the one left.
    let response = http::publish(b.addr(), topic, Some("still"), &json!({})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    a1.broadcast(topic, "still").await;

    // The last on A leaves: A unsubscribes, B does not.
    let reply = a1.leave(topic).await;
    assert_eq!(reply.status(), "ok", "{reply}");
    redis.wait_numsub(topic, 1).await;
    assert_eq!(calls("unsubscribe"), 1);

    // The last on B disconnects without leaving: B unsubscribes too; nothing is left.
    b1.close().await;
    drop(b1);
    redis.wait_numsub(topic, 0).await;
    redis.wait_channels("*", &[]).await;
    assert_eq!(calls("unsubscribe"), 2);

    // Several topics on one socket: disconnecting releases every one of them.
    let mut many = a.connect().await;
    let topics = ["room:one", "room:two", "room:three"];
    for t in topics {
        many.join_ok(t).await;
    }
    redis.wait_channels("room:*", &topics).await;
    drop(many);
    redis.wait_channels("*", &[]).await;
    assert_eq!(a.metric("switchboard_topics").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rapid_join_leave_churn_ends_subscribed_exactly_when_someone_listens() {
    let redis = RedisServer::start();
    // No linger and no join rate limit: every edge reaches Redis, as fast as the client makes
    // them.
    let churn = [
        "--unsubscribe-linger",
        "0s",
        "--join-rate",
        "100000",
        "--join-burst",
        "100000",
    ];
    let (a, b) = (bridged_node(&redis, &churn), bridged_node(&redis, &[]));
    wait_bridge_up(&[&a, &b]).await;
    let topic = "room:churn";
    let mut a1 = a.connect().await;
    let mut a2 = a.connect().await;

    // Edges in quick succession must reach Redis in order: the last one wins.
    for _ in 0..50 {
        a1.join_ok(topic).await;
        let reply = a1.leave(topic).await;
        assert_eq!(reply.status(), "ok", "{reply}");
    }
    a1.join_ok(topic).await;
    redis.wait_numsub(topic, 1).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(redis.numsub(topic), 1, "subscribed after the last join");
    let response = http::publish(b.addr(), topic, Some("after_churn"), &json!({})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let expected = json!([null, null, topic, "after_churn", {}]);
    expect_once(&mut [&mut a1], &expected).await;

    // Two sockets taking turns: the topic never empties, so A never unsubscribes.
    let unsubscribes = redis.command_calls("unsubscribe");
    for _ in 0..20 {
        a2.join_ok(topic).await;
        let reply = a1.leave(topic).await;
        assert_eq!(reply.status(), "ok", "{reply}");
        a1.join_ok(topic).await;
        let reply = a2.leave(topic).await;
        assert_eq!(reply.status(), "ok", "{reply}");
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(redis.command_calls("unsubscribe"), unsubscribes);
    assert_eq!(redis.numsub(topic), 1);

    // And churn ending with a leave ends unsubscribed.
    for _ in 0..50 {
        let reply = a1.leave(topic).await;
        assert_eq!(reply.status(), "ok", "{reply}");
        a1.join_ok(topic).await;
    }
    let reply = a1.leave(topic).await;
    assert_eq!(reply.status(), "ok", "{reply}");
    redis.wait_numsub(topic, 0).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(redis.numsub(topic), 0, "unsubscribed after the last leave");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_channel_prefix_maps_topics_to_prefixed_channels() {
    let redis = RedisServer::start();
    let a = bridged_node(&redis, &["--channel-prefix", "sb:"]);
    // The environment variable works as well as the flag.
    let b_args = bridged_args(redis.port());
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let b = Node::start_with_env(&b_args, &[("CHANNEL_PREFIX", "sb:")]);
    // A node with another prefix is another system on the same Redis.
    let other = bridged_node(&redis, &["--channel-prefix", "other:"]);
    wait_bridge_up(&[&a, &b, &other]).await;
    let topic = "room:p";
    let mut a1 = a.connect().await;
    let mut b1 = b.connect().await;
    let mut o1 = other.connect().await;
    for client in [&mut a1, &mut b1, &mut o1] {
        client.join_ok(topic).await;
    }
    redis
        .wait_channels("*", &["sb:room:p", "other:room:p"])
        .await;
    redis.wait_numsub("sb:room:p", 2).await;
    assert_eq!(redis.numsub(topic), 0, "nothing on the unprefixed channel");

    // Across nodes with the same prefix; not to the node with another prefix.
    let response = http::publish(a.addr(), topic, Some("hi"), &json!({"n": 1})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let expected = json!([null, null, topic, "hi", {"n": 1}]);
    expect_once(&mut [&mut a1, &mut b1], &expected).await;
    o1.expect_silence(QUIET).await;

    // Producers publish on the prefixed channel; the topic is the channel minus the prefix.
    assert_eq!(redis.publish("sb:room:p", r#"{"raw":true}"#), 2);
    let expected = json!([null, null, topic, "message", {"raw": true}]);
    expect_once(&mut [&mut a1, &mut b1], &expected).await;
    assert_eq!(redis.publish(topic, r#"{"raw":true}"#), 0);
    assert_eq!(redis.publish("other:room:p", "x"), 1);
    let expected = json!([null, null, topic, "message", "x"]);
    expect_once(&mut [&mut o1], &expected).await;
    a1.expect_silence(QUIET).await;
    b1.expect_silence(QUIET).await;
}

/// What one subscriber saw from each publisher, in arrival order.
type Seen = BTreeMap<String, Vec<u64>>;

/// Reads broadcasts of `event` on `topic` (payload `{"p": publisher, "n": seq}`) until
/// `total` have arrived, then expects silence: the sequences per publisher.
async fn read_sequences(mut client: Client, topic: &str, event: &str, total: usize) -> Seen {
    let mut seen = Seen::new();
    for _ in 0..total {
        let frame = client.broadcast(topic, event).await;
        let publisher = frame.payload()["p"].as_str().unwrap_or("?").to_owned();
        let n = frame.payload()["n"].as_u64().unwrap_or(u64::MAX);
        seen.entry(publisher).or_default().push(n);
    }
    let stray: Vec<Value> = client
        .take_pending()
        .into_iter()
        .filter(PhxFrame::is_broadcast)
        .collect();
    assert!(
        stray.is_empty(),
        "extra broadcasts: {:?}",
        &stray[..stray.len().min(5)]
    );
    client.expect_silence(QUIET).await;
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn every_subscriber_on_every_node_sees_each_publishers_messages_in_order() {
    const PER_PUBLISHER: u64 = 2_000;
    let redis = RedisServer::start();
    // The socket publisher sends as fast as it can: lift the per-socket push rate limit.
    let unlimited = ["--push-rate", "1000000", "--push-burst", "1000000"];
    let nodes = [
        bridged_node(&redis, &unlimited),
        bridged_node(&redis, &unlimited),
        bridged_node(&redis, &unlimited),
    ];
    wait_bridge_up(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let topic = "room:order";

    // Two publishers (a socket on node 0 and HTTP on node 1); subscribers on every node.
    let mut publisher = nodes[0].connect().await;
    publisher.join_ok(topic).await;
    let mut subscribers = Vec::new();
    for node in [&nodes[0], &nodes[1], &nodes[1], &nodes[2]] {
        let mut client = node.connect().await;
        client.join_ok(topic).await;
        subscribers.push(client);
    }
    redis.wait_numsub(topic, 3).await;
    let total = usize::try_from(2 * PER_PUBLISHER).unwrap_or(usize::MAX);
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|client| tokio::spawn(read_sequences(client, topic, "seq", total)))
        .collect();

    let http_addr = nodes[1].addr();
    let http_publisher = tokio::spawn(async move {
        for n in 0..PER_PUBLISHER {
            let response =
                http::publish(http_addr, topic, Some("seq"), &json!({"p": "http", "n": n})).await;
            assert_eq!(response.status, 200, "{}", response.text());
        }
    });
    let started = Instant::now();
    for n in 0..PER_PUBLISHER {
        publisher
            .push_no_ref(topic, "seq", json!({"p": "socket", "n": n}))
            .await;
    }
    // The publisher is a subscriber too.
    let own = read_sequences(publisher, topic, "seq", total);
    let (own, http_done) = tokio::join!(own, http_publisher);
    http_done.expect("the HTTP publisher finished");

    let expected: Vec<u64> = (0..PER_PUBLISHER).collect();
    let mut all = vec![own];
    for reader in readers {
        all.push(reader.await.expect("a subscriber finished"));
    }
    for (i, seen) in all.iter().enumerate() {
        assert_eq!(
            seen.len(),
            2,
            "subscriber {i} saw publishers {:?}",
            seen.keys()
        );
        for (publisher, sequence) in seen {
            assert!(
                sequence == &expected,
                "subscriber {i}: publisher {publisher}'s {} messages arrived out of order, \
                 duplicated or incompletely (first difference at index {:?})",
                sequence.len(),
                sequence.iter().zip(&expected).position(|(a, b)| a != b)
            );
        }
    }
    #[allow(clippy::print_stderr)] // The figure is for the reader of the test log.
    {
        eprintln!(
            "{} messages to 5 subscribers on 3 nodes in {:?}",
            2 * PER_PUBLISHER,
            started.elapsed()
        );
    }
}

#[test]
fn a_redis_backend_without_a_url_is_refused_at_start() {
    for (args, env) in [
        (vec!["--pubsub-backend", "redis"], vec![]),
        (vec![], vec![("PUBSUB_BACKEND", "redis")]),
    ] {
        let mut command = node::command();
        command
            .args(["--bind", "127.0.0.1:0"])
            .args(&args)
            .env_remove("REDIS_URL")
            .env_remove("PUBSUB_BACKEND")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command.spawn().expect("the node binary starts");
        let output = wait_with_timeout(child, Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            !output.status.success(),
            "{args:?} {env:?}: the node must exit non-zero; stdout: {stdout}"
        );
        assert!(
            stderr.contains("redis needs --redis-url (or REDIS_URL)"),
            "{args:?} {env:?}: the message names the missing URL; stderr: {stderr}"
        );
        assert!(
            !stdout.contains("listening"),
            "it must not start listening: {stdout}"
        );
    }
}

/// Waits for `child` to exit within `timeout` (killing it otherwise, and failing).
fn wait_with_timeout(mut child: std::process::Child, timeout: Duration) -> std::process::Output {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let output = child.wait_with_output().ok();
                panic!("the node did not exit within {timeout:?}: {output:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("cannot wait for the node: {e}"),
        }
    }
    child.wait_with_output().expect("the exited node's output")
}
