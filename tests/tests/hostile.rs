//! Hostile clients: every cost a client can make the node pay is bounded, each bound is
//! measured against the limit docs/security.md promises, and what must not happen is shown
//! not to happen (a second subscriber that waits and gets nothing, a connection that is gone).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::redis::{self, wait_bridge_up, RedisServer};
use switchboard_e2e::{http, Client, Node, PhxFrame as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const SECRET: &str = "hostile-tests-secret-0123456789abcdef";

/// How long a second subscriber listens before "nothing arrived" counts.
const QUIET: Duration = Duration::from_millis(500);

#[allow(clippy::print_stderr)] // The figures are what the maintainers quote.
fn report(line: &str) {
    eprintln!("{line}");
}

/// A signed token for `sub` (HS256), valid for `ttl_seconds`.
fn token(sub: &str, ttl_seconds: u64) -> String {
    let output = switchboard_e2e::node::command()
        .args(["token", "--sub", sub, "--ttl", &format!("{ttl_seconds}s")])
        .env("TOKEN_SECRET", SECRET)
        .output()
        .expect("switchboard token");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn long_refs_are_refused_and_never_stored() {
    let node = Node::start(&["--join-rate", "100000", "--join-burst", "100000"]);
    let long = "7".repeat(60 * 1024);
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(node.connect().await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = node.rss_kib();
    for (s, socket) in sockets.iter_mut().enumerate() {
        for t in 0..100 {
            let topic = format!("room:{s}-{t}");
            socket
                .send_frame(Some(&long), Some("1"), &topic, "phx_join", json!({}))
                .await;
        }
    }
    for socket in &mut sockets {
        for _ in 0..100 {
            let reply = socket
                .recv_until("reply", |f| f.event() == "phx_reply")
                .await;
            assert_eq!(reply.status(), "error", "{reply}");
            assert_eq!(
                reply.reason(),
                "join_ref is 61440 bytes long; the limit is 64 bytes"
            );
            assert_eq!(reply[0], Value::Null, "the long ref is not echoed");
        }
        assert_eq!(socket.heartbeat().await.status(), "ok", "the socket stays");
    }
    let grown = node.rss_kib().saturating_sub(before);
    report(&format!(
        "20 sockets x 100 joins with a 60 KB join_ref: RSS +{grown} KiB (every join refused)"
    ));
    assert_eq!(node.metric("switchboard_subscriptions").await, 0.0);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_join_leave_flood_is_rate_limited_coalesced_and_does_not_slow_others() {
    let redis = RedisServer::start();
    let mut args = redis::bridged_args(redis.port());
    // A low rate, so that even a slow machine's flood reaches it.
    args.extend(["--join-rate", "5", "--join-burst", "10"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::start(&args);
    wait_bridge_up(&[&node]).await;

    // A quiet pair measures round trips: a publisher's push to a topic it and a watcher
    // joined, until the watcher sees it.
    let mut watcher = node.connect().await;
    let mut publisher = node.connect().await;
    watcher.join_ok("watch:1").await;
    publisher.join_ok("watch:1").await;
    let baseline = round_trips(&mut publisher, &mut watcher, 100).await;

    let commands_before = redis.command_calls("subscribe") + redis.command_calls("unsubscribe");
    let flood_seconds = 3;
    let addr = node.ws_url();
    let mut flooders = Vec::new();
    for s in 0..100 {
        let url = addr.clone();
        flooders.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            let deadline = Instant::now() + Duration::from_secs(flood_seconds);
            let (mut joined, mut limited, mut n) = (0_u64, 0_u64, 0_u64);
            while Instant::now() < deadline {
                n += 1;
                let topic = format!("churn:{s}-{n}");
                let reply = client.join(&topic).await;
                if reply.status() == "ok" {
                    joined += 1;
                    let _ = client.leave(&topic).await;
                } else {
                    assert_eq!(reply.reason(), "join rate limit exceeded", "{reply}");
                    limited += 1;
                }
            }
            (joined, limited)
        }));
    }
    let during = round_trips(&mut publisher, &mut watcher, 300).await;
    let (mut joined, mut limited) = (0, 0);
    for flooder in flooders {
        let (j, l) = flooder.await.expect("flooder");
        joined += j;
        limited += l;
    }
    // Let the lingers end so every unsubscription is counted.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let commands =
        redis.command_calls("subscribe") + redis.command_calls("unsubscribe") - commands_before;
    let bound = 100 * (10 + 5 * flood_seconds);
    report(&format!(
        "join/leave flood, 100 sockets for {flood_seconds} s: {joined} joins accepted, {limited} \
         refused; {commands} SUBSCRIBE/UNSUBSCRIBE commands; others' round trip p50/p99 \
         {:.2}/{:.2} ms before, {:.2}/{:.2} ms during",
        baseline.0, baseline.1, during.0, during.1
    ));
    assert!(
        joined <= bound,
        "{joined} joins passed the join rate (bound {bound})"
    );
    assert!(
        commands <= 2 * joined,
        "{commands} backend commands for {joined} joins"
    );
    assert!(limited > 0, "the flood never hit the join rate");
}

/// `count` push round trips from `publisher` to `watcher`: (p50, p99) in ms. Every push must
/// arrive.
async fn round_trips(publisher: &mut Client, watcher: &mut Client, count: usize) -> (f64, f64) {
    let mut times = Vec::with_capacity(count);
    for n in 0..count {
        let started = Instant::now();
        publisher
            .push_no_ref("watch:1", "tick", json!({ "n": n }))
            .await;
        loop {
            let frame = watcher.broadcast("watch:1", "tick").await;
            if frame.payload()["n"] == n {
                break;
            }
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let _ = publisher.take_pending();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_reset_during_its_upgrade_leaves_nothing_behind() {
    let node = Node::start(&[]);
    let addr = node.addr();
    for _ in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        let mut stream = socket.connect(addr).await.expect("connect");
        let request = format!(
            "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("request");
        // Reset at once: the session may not even have registered.
        stream.set_zero_linger().expect("linger");
        drop(stream);
    }
    node.wait_metric_eq("switchboard_connections", 0.0).await;
    node.wait_metric_eq("switchboard_sessions", 0.0).await;
    // And the node still serves.
    let mut client = node.connect().await;
    client.join_ok("room:after").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_pushes_reach_nobody() {
    let config = std::env::temp_dir().join(format!("hostile-rules-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[channels.room]\njoin = \"authenticated\"\npush = \"nobody\"\n\
         [channels.chat]\njoin = \"authenticated\"\npush = \"authenticated\"\n",
    )
    .expect("config file");
    let node = Node::start(&[
        "--token-secret",
        SECRET,
        "--open-publish",
        "--config",
        config.to_str().expect("path"),
        "--push-rate",
        "1",
        "--push-burst",
        "1",
    ]);
    let url = format!("{}&token={}", node.ws_url(), token("u1", 600));
    let (mut pusher, mut other) = (Client::connect(&url).await, Client::connect(&url).await);
    for topic in ["room:1", "chat:1"] {
        pusher.join_ok(topic).await;
        other.join_ok(topic).await;
    }
    // Refused by the rule: nobody may push to room.
    let msg_ref = pusher.push("room:1", "m", json!({"n": 1})).await;
    assert_eq!(pusher.reply_to(&msg_ref).await.reason(), "unauthorized");
    // Over the rate: the first push passes, the second is refused.
    let first = pusher.push("chat:1", "m", json!({"n": 2})).await;
    let second = pusher.push("chat:1", "m", json!({"n": 3})).await;
    assert_eq!(pusher.reply_to(&first).await.status(), "ok");
    assert_eq!(
        pusher.reply_to(&second).await.reason(),
        "rate limit exceeded"
    );
    let got = other.broadcast("chat:1", "m").await;
    assert_eq!(got.payload()["n"], 2);
    other.expect_silence(QUIET).await;
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_during_shutdown_is_answered_503() {
    let mut node = Node::start(&[
        "--shutdown-timeout",
        "5s",
        "--write-timeout",
        "30s",
        "--send-buffer-bytes",
        "67108864",
    ]);
    // A subscriber that stopped reading with a full socket (past what the kernel buffers)
    // cannot be sent its close frame, so the node keeps draining until its deadline.
    let mut stuck = Client::connect_with_recv_buffer(&node.ws_url(), 4096).await;
    stuck.join_ok("flood:1").await;
    let payload = json!({ "padding": "x".repeat(16 * 1024) });
    for _ in 0..640 {
        let response = http::publish(node.addr(), "flood:1", None, &payload).await;
        assert_eq!(response.status, 200);
    }
    node.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = Client::try_connect(&node.ws_url()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("shutting_down"), "{body}");
        }
        other => panic!(
            "an upgrade during shutdown got {:?}",
            other.map(|_| "a socket")
        ),
    }
    let exit = node.wait_exit(Duration::from_secs(10));
    assert!(exit.status.success(), "{exit:?}");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_publish_body_over_the_limit_is_refused_without_reading_it() {
    let node = Node::start(&["--max-publish-bytes", "65536"]);
    let before = node.rss_kib();
    let mut stream = TcpStream::connect(node.addr()).await.expect("connect");
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        node.addr()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
    let total = 64 * 1024 * 1024;
    let mut sent = 0_usize;
    let mut response = Vec::new();
    while sent < total {
        let write =
            tokio::time::timeout(Duration::from_secs(2), stream.write_all(chunk.as_bytes()));
        match write.await {
            Ok(Ok(())) => sent += 64 * 1024,
            // The node stopped reading (the write blocks) or closed the connection.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    report(&format!(
        "a chunked publish of 64 MiB against a 64 KiB limit: the node took {} KiB, RSS +{} KiB",
        sent / 1024,
        node.rss_kib().saturating_sub(before)
    ));
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("body_too_large"), "{text}");
    assert!(sent < total, "the node read the whole 64 MiB body");
    assert!(node.rss_kib().saturating_sub(before) < 8 * 1024);
}

#[test]
fn help_never_prints_secrets_from_the_environment() {
    let secrets = [
        ("TOKEN_SECRET", "token-secret-0123456789abcdef0123456789"),
        ("API_KEY", "api-key-s3cr3t-value"),
        ("DATABASE_URL", "postgres://app:db-pa55word@10.0.0.5/app"),
        ("REDIS_URL", "redis://:redis-pa55word@10.0.0.6:6379"),
    ];
    let output = switchboard_e2e::node::command()
        .arg("--help")
        .envs(secrets)
        .output()
        .expect("switchboard --help");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("--token-secret"), "{text}");
    for (name, value) in secrets {
        assert!(!text.contains(value), "--help printed {name}'s value");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_only_events_from_redis_are_refused() {
    let redis = RedisServer::start();
    let args = redis::bridged_args(redis.port());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::start(&args);
    wait_bridge_up(&[&node]).await;
    let mut client = node.connect().await;
    client.join_ok("room:1").await;
    for event in ["phx_close", "phx_reply", "phx_error"] {
        let envelope = json!({"switchboard": {"event": event}, "payload": {"status": "ok"}});
        assert_eq!(redis.publish("room:1", envelope.to_string()), 1);
    }
    redis.publish(
        "room:1",
        json!({"switchboard": {"event": "fine"}, "payload": {}}).to_string(),
    );
    let frame = client.recv_json().await;
    assert_eq!(
        frame.event(),
        "fine",
        "only the allowed message arrives: {frame}"
    );
    client.expect_silence(QUIET).await;
    assert_eq!(node.metric("switchboard_bridge_refused_total").await, 3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_reserved_for_the_backend_are_refused_everywhere() {
    let node = Node::start(&[]);
    let mut client = node.connect().await;
    let reply = client.join("__keyspace@0__:auditlog:1").await;
    assert_eq!(reply.status(), "error", "{reply}");
    assert!(reply.reason().contains("reserved"), "{reply}");
    let response = http::publish(node.addr(), "__redis__:invalidate", None, &json!({})).await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(response.json()["error"]["code"], "invalid_topic");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_are_capped_per_user_and_per_address() {
    let node = Node::start(&[
        "--token-secret",
        SECRET,
        "--open-publish",
        "--max-connections-per-user",
        "3",
        "--max-connections-per-address",
        "2",
        "--client-ip-header",
        "X-Forwarded-For",
    ]);
    let url = |sub: &str| format!("{}&token={}", node.ws_url(), token(sub, 600));
    let connect = |url: String, ip: &'static str| async move {
        Client::try_connect_with_headers(&url, &[("X-Forwarded-For", ip)]).await
    };
    let status = |result: Result<Client, tokio_tungstenite::tungstenite::Error>| match result {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("{other}"),
    };
    // Per user: three sockets of u1 from three addresses; the fourth is refused.
    let mut held = Vec::new();
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        held.push(connect(url("u1"), ip).await.expect("within the limits"));
    }
    assert_eq!(status(connect(url("u1"), "10.0.0.4").await), 429);
    // Per address: the proxy's header names the client; a client's own claim before it does
    // not count.
    held.push(connect(url("u2"), "10.0.0.9").await.expect("first"));
    held.push(
        connect(url("u3"), "1.2.3.4, 10.0.0.9")
            .await
            .expect("second"),
    );
    assert_eq!(status(connect(url("u4"), "10.0.0.9").await), 429);
    assert_eq!(status(connect(url("u4"), "10.0.0.8").await), 101);
    // A closed socket gives its place back.
    let mut first = held.remove(0);
    first.close().await;
    node.wait_metric("switchboard_connections", "< 6", |v| v < 6.0)
        .await;
    assert_eq!(status(connect(url("u1"), "10.0.0.5").await), 101);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_cut_off_by_the_node() {
    let node = Node::start(&["--write-timeout", "1s"]);
    let mut stuck = Client::connect_with_recv_buffer(&node.ws_url(), 4096).await;
    stuck.join_ok("flood:1").await;
    let payload = json!({ "padding": "x".repeat(8 * 1024) });
    // Fill the socket (well under the 1 MiB send budget, so this is not a slow-consumer
    // eviction), then wait.
    for _ in 0..64 {
        let _ = http::publish(node.addr(), "flood:1", None, &payload).await;
    }
    let started = Instant::now();
    node.wait_metric_eq("switchboard_connections", 0.0).await;
    let took = started.elapsed();
    report(&format!(
        "a client that stopped reading was cut off {took:?} after its socket filled (--write-timeout 1s)"
    ));
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        node.metric("switchboard_slow_consumer_disconnects_total")
            .await,
        0.0
    );
}

/// The most memory one socket can make the node hold, measured: it joins the most topics,
/// each with the longest name and the longest refs, stops reading, and is sent distinct
/// messages until its send budget is full (past what the kernel buffers). The figure goes in
/// docs/security.md ("worst-case cost of one socket").
#[tokio::test(flavor = "multi_thread")]
async fn the_worst_case_memory_of_one_socket_is_its_send_budget() {
    const SOCKETS: usize = 20;
    const BUDGET: usize = 1024 * 1024;
    let node = Node::start(&[
        "--join-rate",
        "100000",
        "--join-burst",
        "100000",
        "--write-timeout",
        "120s",
    ]);
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        sockets.push(Client::connect_with_recv_buffer(&node.ws_url(), 4096).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = node.rss_kib();
    let long_ref = "9".repeat(64);
    for (s, socket) in sockets.iter_mut().enumerate() {
        for t in 0..100 {
            let topic = format!("{s:03}-{t:03}:{}", "t".repeat(240));
            socket
                .send_frame(
                    Some(&long_ref),
                    Some(&long_ref),
                    &topic,
                    "phx_join",
                    json!({}),
                )
                .await;
            let reply = socket
                .recv_until("join reply", |f| f.event() == "phx_reply")
                .await;
            assert_eq!(reply.status(), "ok", "{reply}");
        }
    }
    let joined = node.rss_kib().saturating_sub(before);
    // Distinct messages to each socket's own first topic: nothing is shared between them.
    let padding = "p".repeat(60 * 1024);
    let mut peak = 0;
    for round in 0..200 {
        for s in 0..SOCKETS {
            let topic = format!("{s:03}-000:{}", "t".repeat(240));
            let _ = http::publish(
                node.addr(),
                &topic,
                None,
                &json!({"r": round, "p": padding}),
            )
            .await;
        }
        peak = peak.max(node.rss_kib().saturating_sub(before));
        let evicted = node
            .metric("switchboard_slow_consumer_disconnects_total")
            .await;
        if evicted >= SOCKETS as f64 {
            break;
        }
    }
    let per_socket = peak / SOCKETS as u64;
    report(&format!(
        "worst case per socket: {} KiB after 100 joins of 255-byte topics with 64-byte refs, \
         peak {per_socket} KiB with a full send budget ({} KiB)",
        joined / SOCKETS as u64,
        BUDGET / 1024
    ));
    assert!(
        per_socket <= (2 * BUDGET / 1024 + 512) as u64,
        "{per_socket} KiB per socket"
    );
}

/// The node's CPU time so far (user + system), from `/proc/<pid>/stat`, in clock ticks
/// (100 per second on Linux).
fn cpu_ticks(node: &Node) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", node.pid())).expect("stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[tokio::test(flavor = "multi_thread")]
async fn one_sockets_flood_costs_the_node_a_bounded_share_of_cpu() {
    let node = Node::start(&[]);
    let mut watcher = node.connect().await;
    watcher.join_ok("room:flood").await;
    let mut flooder = node.connect().await;
    flooder.join_ok("room:flood").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_before = cpu_ticks(&node);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = cpu_ticks(&node) - idle_before;
    // As fast as the socket takes them: pushes (refused past 100/s after a burst of 200),
    // frames that are not frames, heartbeats and joins of topics it may not have.
    let flood_seconds = 3;
    let before = cpu_ticks(&node);
    let started = Instant::now();
    let mut sent = 0_u64;
    while started.elapsed() < Duration::from_secs(flood_seconds) {
        for n in 0..50 {
            let text = match n % 5 {
                0 | 1 => json!(["1", n.to_string(), "room:flood", "msg", {"n": n}]).to_string(),
                2 => json!([null, n.to_string(), "phoenix", "heartbeat", {}]).to_string(),
                3 => json!(["9", n.to_string(), "__keyspace@0__:x", "phx_join", {}]).to_string(),
                _ => json!(["1", n.to_string(), "room:flood", "phx_reply", {}]).to_string(),
            };
            flooder.send_text(text).await;
            sent += 1;
        }
        // Read the replies so the flooder itself is not cut off as a slow reader.
        let _ = flooder.take_pending();
        while flooder
            .recv_json_within(Duration::from_millis(1))
            .await
            .is_some()
        {}
    }
    let busy = cpu_ticks(&node) - before;
    let wall = started.elapsed().as_secs_f64();
    // What reached the other socket: at most the burst and the rate.
    let mut delivered = 0_u64;
    while watcher
        .recv_json_within(Duration::from_millis(300))
        .await
        .is_some()
    {
        delivered += 1;
    }
    report(&format!(
        "one socket's flood: {sent} frames in {wall:.1} s ({:.0}/s); node CPU {:.0}% of one core \
         (idle {:.1}%); {delivered} broadcasts reached another socket",
        sent as f64 / wall,
        busy as f64 / wall,
        idle as f64 / 2.0,
    ));
    let bound = 200 + 100 * (flood_seconds + 1);
    assert!(
        delivered <= bound,
        "{delivered} broadcasts passed the push rate (bound {bound})"
    );
    assert!(delivered > 0, "the allowed pushes were delivered");
    // The node still answers others at once.
    let mut other = node.connect().await;
    other.join_ok("room:after").await;
}
