//! `ok` to a join means subscribed everywhere: the moment a join on node B is answered, a
//! message published on node A reaches it. Tried 1,000 times in a row on fresh topics and
//! 1,000 times on a topic left and rejoined at once, on Redis and on PostgreSQL, with no
//! waiting anywhere but for the join's own reply.
//!
//! Before the bridge confirmed subscriptions, half of such messages were lost on Redis: the
//! ok went out before Redis had processed the SUBSCRIBE.

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_e2e::backend::{BackendKind, BackendServer};
use switchboard_e2e::{http, Client, Node, PhxFrame as _};

/// Iterations of each scenario.
const ITERATIONS: usize = 1000;

/// How long a published message may take to arrive before it counts as lost.
const ARRIVAL: Duration = Duration::from_secs(2);

fn nodes(server: &BackendServer, extra: &[&str]) -> (Node, Node) {
    let mut args = server.node_args(&server.url());
    // One socket joins and leaves a thousand times, and one pushes as fast as the iterations
    // go: no join or push rate limit here.
    args.extend(
        [
            "--join-rate",
            "100000",
            "--join-burst",
            "100000",
            "--push-rate",
            "100000",
            "--push-burst",
            "100000",
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Node::start(&args), Node::start(&args))
}

/// Waits for the broadcast of `seq` on `topic`; false when it does not come in time. Other
/// broadcasts (earlier iterations' stragglers) are skipped.
async fn arrives(client: &mut Client, topic: &str, seq: usize) -> bool {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = client.recv_json_within(left).await else {
            return false;
        };
        if frame.is_broadcast() && frame.topic() == topic && frame.payload()["seq"] == seq {
            return true;
        }
    }
}

#[allow(clippy::print_stderr)] // The figures are what the maintainers quote.
fn report(what: &str, kind: BackendKind, lost: usize, elapsed: Duration) {
    eprintln!(
        "{kind}: {what}: {lost} of {ITERATIONS} lost ({:.1} ms per iteration)",
        elapsed.as_secs_f64() * 1000.0 / ITERATIONS as f64
    );
}

/// B joins a fresh topic; the moment the join is answered, A publishes to it (over HTTP on
/// even iterations, as a socket push on odd ones).
async fn join_then_publish(kind: BackendKind) {
    let server = BackendServer::start(kind);
    let (a, b) = nodes(&server, &["--max-topics-per-socket", "2000"]);
    switchboard_e2e::redis::wait_bridge_up(&[&a, &b]).await;
    let mut pusher = a.connect().await;
    let mut subscriber = b.connect().await;
    let started = Instant::now();
    let mut lost = Vec::new();
    for seq in 0..ITERATIONS {
        let topic = format!("fresh:{seq}");
        let by_push = seq % 2 == 1;
        if by_push {
            pusher.join_ok(&topic).await;
        }
        subscriber.join_ok(&topic).await;
        if by_push {
            let msg_ref = pusher.push(&topic, "m", json!({ "seq": seq })).await;
            let reply = pusher.reply_to(&msg_ref).await;
            assert_eq!(reply.status(), "ok", "{reply}");
        } else {
            let response = http::publish(a.addr(), &topic, Some("m"), &json!({ "seq": seq })).await;
            assert_eq!(response.status, 200, "{}", response.text());
        }
        if !arrives(&mut subscriber, &topic, seq).await {
            lost.push(seq);
        }
        if by_push {
            let _ = pusher.leave(&topic).await;
        }
        let _ = subscriber.leave(&topic).await;
    }
    report("join then publish", kind, lost.len(), started.elapsed());
    assert!(lost.is_empty(), "{kind}: lost after join ok: {lost:?}");
    assert_eq!(a.metric("switchboard_bridge_lost_total").await, 0.0);
}

/// B's only subscriber leaves a topic and rejoins at once; the moment the rejoin is answered,
/// A publishes. Without a linger every leave reaches the backend, so its UNSUBSCRIBE and the
/// next SUBSCRIBE race unless they are kept in order.
async fn leave_then_rejoin(kind: BackendKind, linger: &str) {
    let server = BackendServer::start(kind);
    let (a, b) = nodes(&server, &["--unsubscribe-linger", linger]);
    switchboard_e2e::redis::wait_bridge_up(&[&a, &b]).await;
    let topic = "room:rejoin";
    let mut subscriber = b.connect().await;
    subscriber.join_ok(topic).await;
    let started = Instant::now();
    let mut lost = Vec::new();
    for seq in 0..ITERATIONS {
        let reply = subscriber.leave(topic).await;
        assert_eq!(reply.status(), "ok", "{reply}");
        subscriber.join_ok(topic).await;
        let response = http::publish(a.addr(), topic, Some("m"), &json!({ "seq": seq })).await;
        assert_eq!(response.status, 200, "{}", response.text());
        if !arrives(&mut subscriber, topic, seq).await {
            lost.push(seq);
        }
    }
    report(
        &format!("leave then rejoin (linger {linger})"),
        kind,
        lost.len(),
        started.elapsed(),
    );
    assert!(lost.is_empty(), "{kind}: lost after rejoin ok: {lost:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_join_then_publish_loses_nothing() {
    join_then_publish(BackendKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_join_then_publish_loses_nothing() {
    join_then_publish(BackendKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_leave_then_rejoin_loses_nothing() {
    leave_then_rejoin(BackendKind::Redis, "0s").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_leave_then_rejoin_loses_nothing() {
    leave_then_rejoin(BackendKind::Postgres, "0s").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejoin_within_the_linger_costs_the_backend_nothing() {
    let server = BackendServer::start(BackendKind::Redis);
    let (a, b) = nodes(&server, &[]);
    switchboard_e2e::redis::wait_bridge_up(&[&a, &b]).await;
    let redis = server.redis().expect("a redis server");
    let topic = "room:linger";
    let mut subscriber = b.connect().await;
    subscriber.join_ok(topic).await;
    let (subscribes, unsubscribes) = (
        redis.command_calls("subscribe"),
        redis.command_calls("unsubscribe"),
    );
    for seq in 0..100 {
        let _ = subscriber.leave(topic).await;
        subscriber.join_ok(topic).await;
        let response = http::publish(a.addr(), topic, Some("m"), &json!({ "seq": seq })).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(arrives(&mut subscriber, topic, seq).await, "lost {seq}");
    }
    assert_eq!(redis.command_calls("subscribe"), subscribes);
    assert_eq!(redis.command_calls("unsubscribe"), unsubscribes);
    // After the last leave, the linger (1 s by default) passes and B unsubscribes.
    let _ = subscriber.leave(topic).await;
    redis.wait_numsub(topic, 0).await;
}
