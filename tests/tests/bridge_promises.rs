//! What the bridge promises beyond steady delivery: a subscription the backend refuses fails
//! only its own join (never the link), a join while the backend is away says it reaches this
//! node only and is subscribed once the backend is back, and what was accepted before SIGTERM
//! reaches the backend before the node exits.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use switchboard_e2e::backend::{BackendKind, BackendServer};
use switchboard_e2e::redis::{self, wait_bridge, wait_bridge_up, RedisServer};
use switchboard_e2e::{http, Node, PhxFrame as _, PATIENCE};

/// A Redis user that may use every key but only the channels `allowed:*`.
fn limited_user(server: &RedisServer) -> String {
    let _ = server.cli(&[
        "ACL",
        "SETUSER",
        "limited",
        "on",
        ">pw",
        "~*",
        "resetchannels",
        "&allowed:*",
        "+@all",
    ]);
    format!("redis://limited:pw@127.0.0.1:{}", server.port())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_subscription_fails_its_join_with_the_reason_and_nothing_else() {
    let server = RedisServer::start();
    let url = limited_user(&server);
    let node = Node::start(&["--pubsub-backend", "redis", "--redis-url", &url]);
    wait_bridge_up(&[&node]).await;
    let mut client = node.connect().await;

    let reply = client.join("secret:1").await;
    assert_eq!(reply.status(), "error", "{reply}");
    assert!(
        reply
            .reason()
            .starts_with("the backend refused the subscription")
            && reply.reason().to_lowercase().contains("noperm"),
        "{reply}"
    );
    // Several joins at once, one of them refused: they may share one SUBSCRIBE, which Redis
    // refuses whole; the bridge then finds the refused channel and only its join fails.
    let mut others = Vec::new();
    for n in 0..5 {
        others.push(node.connect().await);
        let topic = if n == 2 {
            "secret:2".to_owned()
        } else {
            format!("allowed:{n}")
        };
        let _ = others[n].send_join(&topic, json!({})).await;
    }
    for (n, other) in others.iter_mut().enumerate() {
        let reply = other
            .recv_until("join reply", |f| f.event() == "phx_reply")
            .await;
        if n == 2 {
            assert_eq!(reply.status(), "error", "{reply}");
        } else {
            assert_eq!(reply.status(), "ok", "{reply}");
        }
    }
    // The link never went down, and the refused topic is not subscribed nor in the registry.
    let ready = node.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(
        node.metric("switchboard_bridge_reconnects_total").await,
        0.0
    );
    assert_eq!(server.numsub("secret:1"), 0);
    let published = http::publish(node.addr(), "secret:1", None, &json!({})).await;
    assert_eq!(published.json()["recipients"], 0, "{}", published.text());

    // A publish Redis refuses is delivered here only and says so.
    let mut local = node.connect().await;
    local.join("secret:3").await;
    let published = http::publish(node.addr(), "secret:9", Some("e"), &json!({})).await;
    assert_eq!(published.status, 503, "{}", published.text());
    assert_eq!(published.json()["error"]["code"], "upstream_refused");
    assert!(
        published.text().to_lowercase().contains("noperm"),
        "{}",
        published.text()
    );
    // The socket still works.
    assert_eq!(client.heartbeat().await.status(), "ok");
}

async fn down_at_start(kind: BackendKind) {
    // Find a port, then stop the backend: the node starts without it.
    let mut server = BackendServer::start(kind);
    let url = server.url();
    server.kill9();
    let mut args = server.node_args(&url);
    args.extend(["--backend-timeout".to_owned(), "2s".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (a, b) = (Node::start(&args), Node::start(&args));
    let _ = wait_bridge(&a, false, PATIENCE).await;
    let topic = "room:later";
    let mut subscriber = b.connect().await;
    let reply = subscriber.join(topic).await;
    assert_eq!(reply.status(), "ok", "{reply}");
    assert_eq!(
        reply.payload()["response"],
        json!({"upstream": "unavailable"}),
        "a join while the bridge is down says it reaches this node only: {reply}"
    );
    let published = http::publish(b.addr(), topic, Some("local"), &json!({})).await;
    assert_eq!(published.status, 503, "{}", published.text());
    assert_eq!(published.json()["recipients"], 1);
    subscriber.broadcast(topic, "local").await;

    // The backend comes; the topic joined meanwhile is subscribed with the rest.
    server.restart();
    wait_bridge_up(&[&a, &b]).await;
    let published = http::publish(a.addr(), topic, Some("remote"), &json!({})).await;
    assert_eq!(published.status, 200, "{}", published.text());
    subscriber.broadcast(topic, "remote").await;
    // And a join now is answered once subscribed, with an empty response.
    let reply = subscriber.join("room:now").await;
    assert_eq!(reply.payload()["response"], json!({}), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_at_start_joins_reach_this_node_only_until_it_comes() {
    down_at_start(BackendKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_down_at_start_joins_reach_this_node_only_until_it_comes() {
    down_at_start(BackendKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn what_was_accepted_before_sigterm_reaches_redis() {
    let server = RedisServer::start();
    let args = redis::bridged_args(server.port());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = Node::start(&args);
    wait_bridge_up(&[&node]).await;
    let watcher = server.subscribe(&["room:drain"]);
    // Many publishes in flight, and a socket pushing, when SIGTERM comes.
    let addr = node.addr();
    let mut publishers = Vec::new();
    for seq in 0..400_u64 {
        publishers.push(tokio::spawn(async move {
            let body = json!({"topic": "room:drain", "event": "m", "payload": {"seq": seq}});
            let answer = http::request(
                addr,
                "POST",
                "/api/publish",
                &[("content-type", "application/json")],
                body.to_string().as_bytes(),
            )
            .await;
            (seq, answer.map(|response| response.status).ok())
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    node.sigterm();
    let mut accepted = HashSet::new();
    for publisher in publishers {
        let (seq, status) = publisher.await.expect("publisher task");
        if status == Some(200) {
            accepted.insert(seq);
        }
    }
    let exit = node.wait_exit(Duration::from_secs(10));
    assert!(exit.status.success(), "{exit:?}");
    let mut watcher = watcher;
    let mut seen = HashSet::new();
    while let Some((_, body)) = watcher.next_message(Duration::from_millis(500)) {
        let body: serde_json::Value = serde_json::from_slice(&body).expect("an envelope");
        if let Some(seq) = body["payload"]["seq"].as_u64() {
            seen.insert(seq);
        }
    }
    let missing: Vec<&u64> = accepted.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "answered 200 but never reached Redis: {missing:?} ({} accepted)",
        accepted.len()
    );
    assert!(!accepted.is_empty(), "nothing was accepted before SIGTERM");
}
