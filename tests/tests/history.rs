//! History and recovery (docs/history.md) on every backend: positions in the ref slot, a
//! join's reply with the stream's position, recovery of exactly what was missed (or
//! `recovered: false`), `GET /api/history`, and the backends' own ways to publish with history
//! (Redis' `FCALL switchboard_publish`, PostgreSQL's `SELECT switchboard_publish(...)` in a
//! transaction).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_e2e::backend::{BackendKind, BackendServer};
use switchboard_e2e::redis::wait_bridge_up;
use switchboard_e2e::{http, Client, Node, PhxFrame as _};
use tokio_postgres::SimpleQueryMessage;

const QUIET: Duration = Duration::from_millis(300);

/// A config file giving `feed` a history of 100 and `short` one of 3.
fn config_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "switchboard-history-{name}-{}.toml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "[channels.feed]\nhistory = 100\nhistory_ttl = \"10m\"\n\n[channels.short]\nhistory = 3\n",
    )
    .expect("config file");
    path
}

/// Two nodes sharing `kind` (for memory, one node twice).
struct Cluster {
    a: Node,
    b: Option<Node>,
    server: Option<BackendServer>,
}

impl Cluster {
    async fn start(kind: Option<BackendKind>, name: &str) -> Self {
        let config = config_file(name);
        let mut args = vec![
            "--config".to_owned(),
            config.to_string_lossy().into_owned(),
            "--join-rate".to_owned(),
            "1000".to_owned(),
        ];
        let server = kind.map(BackendServer::start);
        if let Some(server) = &server {
            args.extend(server.node_args(&server.url()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let a = Node::start(&args);
        let b = server.as_ref().map(|_| Node::start(&args));
        if let Some(b) = &b {
            wait_bridge_up(&[&a, b]).await;
        }
        Self { a, b, server }
    }

    fn b(&self) -> &Node {
        self.b.as_ref().unwrap_or(&self.a)
    }
}

async fn publish(node: &Node, topic: &str, n: u64) -> String {
    let response = http::publish(node.addr(), topic, Some("m"), &json!({ "n": n })).await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["position"]
        .as_str()
        .unwrap_or_else(|| panic!("no position in {}", response.text()))
        .to_owned()
}

/// The next `count` broadcasts on `topic`: (position, n).
async fn received(client: &mut Client, topic: &str, count: usize) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    while got.len() < count {
        let frame = client.broadcast(topic, "m").await;
        got.push((
            frame.msg_ref().unwrap_or("no position").to_owned(),
            frame.payload()["n"].as_u64().unwrap_or(u64::MAX),
        ));
    }
    got
}

fn offset(position: &str) -> u64 {
    position
        .split(':')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0)
}

fn epoch(position: &str) -> &str {
    position.split(':').nth(1).unwrap_or_default()
}

/// The scenarios every backend passes.
async fn scenario(kind: Option<BackendKind>) {
    let name = kind.map_or("memory", BackendKind::name);
    let cluster = Cluster::start(kind, name).await;
    let (a, b) = (&cluster.a, cluster.b());
    let topic = "feed:1";

    // Positions count up in one epoch; the HTTP answer says each.
    let mut positions = Vec::new();
    for n in 1..=5 {
        positions.push(publish(a, topic, n).await);
    }
    let stream = epoch(&positions[0]).to_owned();
    assert!(!stream.is_empty());
    assert_eq!(
        positions.iter().map(|p| offset(p)).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "{positions:?}"
    );
    assert!(positions.iter().all(|p| epoch(p) == stream));

    // A join says where the stream stands; live broadcasts carry their position as the ref.
    let mut live = b.connect().await;
    let reply = live.join(topic).await;
    assert_eq!(reply.status(), "ok", "{reply}");
    assert_eq!(
        reply.payload()["response"],
        json!({ "position": format!("5:{stream}") })
    );
    // The publishing node's own subscribers get them too (from the backend, like every node).
    let mut publishers_node = a.connect().await;
    let reply = publishers_node.join(topic).await;
    assert_eq!(reply.status(), "ok", "{reply}");
    for n in 6..=8 {
        let _ = publish(a, topic, n).await;
    }
    let expected: Vec<(String, u64)> = (6..=8).map(|n| (format!("{n}:{stream}"), n)).collect();
    assert_eq!(received(&mut live, topic, 3).await, expected);
    assert_eq!(received(&mut publishers_node, topic, 3).await, expected);

    // A client that last saw 5 gets 6, 7, 8 after its reply, in order, then live ones.
    let mut recovering = b.connect().await;
    let reply = recovering
        .join_with(topic, json!({ "since": format!("5:{stream}") }))
        .await;
    assert_eq!(
        reply.payload()["response"],
        json!({ "position": format!("8:{stream}"), "recovered": true }),
        "{reply}"
    );
    let _ = publish(a, topic, 9).await;
    assert_eq!(
        received(&mut recovering, topic, 4).await,
        (6..=9)
            .map(|n| (format!("{n}:{stream}"), n))
            .collect::<Vec<_>>()
    );
    recovering.expect_silence(QUIET).await;

    // Nothing missed: recovered with nothing to replay.
    let mut current = b.connect().await;
    let reply = current
        .join_with(topic, json!({ "since": format!("9:{stream}") }))
        .await;
    assert_eq!(reply.payload()["response"]["recovered"], true, "{reply}");
    current.expect_silence(QUIET).await;

    // Another epoch, or a position older than the history keeps: not recovered, nothing
    // replayed.
    let mut other = b.connect().await;
    let reply = other
        .join_with(topic, json!({ "since": "3:another" }))
        .await;
    assert_eq!(reply.payload()["response"]["recovered"], false, "{reply}");
    other.expect_silence(QUIET).await;
    let short = "short:1";
    for n in 1..=10 {
        let _ = publish(a, short, n).await;
    }
    let short_epoch = {
        let mut probe = b.connect().await;
        let reply = probe.join(short).await;
        let position = reply.payload()["response"]["position"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(offset(&position), 10, "{reply}");
        epoch(&position).to_owned()
    };
    let mut late = b.connect().await;
    let reply = late
        .join_with(short, json!({ "since": format!("2:{short_epoch}") }))
        .await;
    assert_eq!(reply.payload()["response"]["recovered"], false, "{reply}");
    late.expect_silence(QUIET).await;
    let reply = late
        .join_with(short, json!({ "since": format!("7:{short_epoch}") }))
        .await;
    assert_eq!(reply.payload()["response"]["recovered"], true, "{reply}");
    assert_eq!(
        received(&mut late, short, 3).await,
        (8..=10)
            .map(|n| (format!("{n}:{short_epoch}"), n))
            .collect::<Vec<_>>()
    );

    // A malformed since is refused with its reason.
    let mut bad = b.connect().await;
    let reply = bad.join_with(topic, json!({ "since": "7" })).await;
    assert_eq!(reply.status(), "error", "{reply}");
    assert!(reply.reason().starts_with("invalid since"), "{reply}");

    // GET /api/history gives the same.
    let path = format!("/api/history?topic={topic}&since=5:{stream}&limit=2");
    let history = http::get(b.addr(), &path).await;
    assert_eq!(history.status, 200, "{}", history.text());
    let body = history.json();
    assert_eq!(body["recovered"], true);
    assert_eq!(body["position"], format!("9:{stream}"));
    let got: Vec<&Value> = body["publications"].as_array().unwrap().iter().collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["position"], format!("6:{stream}"));
    assert_eq!(got[0]["payload"], json!({"n": 6}));
    let none = http::get(b.addr(), "/api/history?topic=room:1").await;
    assert_eq!(none.status, 404, "{}", none.text());

    // A topic without history behaves as always: no position anywhere.
    let mut plain = b.connect().await;
    let reply = plain.join("room:1").await;
    assert_eq!(reply.payload()["response"], json!({}), "{reply}");
    let response = http::publish(a.addr(), "room:1", Some("m"), &json!({})).await;
    assert_eq!(response.status, 200);
    assert!(
        response.json().get("position").is_none(),
        "{}",
        response.text()
    );
    let frame = plain.broadcast("room:1", "m").await;
    assert_eq!(frame.msg_ref(), None);
    drop(cluster.server);
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_history_and_recovery() {
    scenario(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_history_and_recovery_across_nodes() {
    scenario(Some(BackendKind::Redis)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_history_and_recovery_across_nodes() {
    scenario(Some(BackendKind::Postgres)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_producers_publish_with_history_and_a_lost_stream_changes_the_epoch() {
    let mut cluster = Cluster::start(Some(BackendKind::Redis), "redis-fcall").await;
    let topic = "feed:7";
    let mut client = cluster.a.connect().await;
    let reply = client.join(topic).await;
    let position = reply.payload()["response"]["position"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(offset(&position), 0, "{reply}");
    let stream = epoch(&position).to_owned();
    // An external producer: one documented call.
    let redis = cluster
        .server
        .as_ref()
        .and_then(BackendServer::redis)
        .expect("redis");
    let reply: Vec<redis::Value> = redis.cli_as(&[
        "FCALL",
        "switchboard_publish",
        "1",
        topic,
        r#"{"n": 1}"#,
        "m",
    ]);
    assert_eq!(reply.len(), 2, "{reply:?}");
    assert_eq!(
        received(&mut client, topic, 1).await,
        vec![(format!("1:{stream}"), 1)]
    );
    let bad = redis.try_cli(&["FCALL", "switchboard_publish", "1", topic, "not json"]);
    assert!(
        bad.is_err(),
        "a payload that is not JSON is refused: {bad:?}"
    );
    // Plain PUBLISH keeps working, live only.
    redis.publish(topic, r#"{"n": 2}"#);
    let frame = client.recv_json().await;
    assert_eq!(
        frame.msg_ref(),
        None,
        "no position without history: {frame}"
    );

    // Redis restarted without persistence lost the stream: a new epoch, old positions are
    // not recovered.
    let server = cluster.server.as_mut().expect("server");
    server.kill9();
    server.restart();
    wait_bridge_up(&[&cluster.a, cluster.b()]).await;
    let after = publish(&cluster.a, topic, 3).await;
    assert_eq!(offset(&after), 1, "{after}");
    assert_ne!(epoch(&after), stream, "a new epoch");
    let mut returning = cluster.b().connect().await;
    let reply = returning
        .join_with(topic, json!({ "since": format!("1:{stream}") }))
        .await;
    assert_eq!(reply.payload()["response"]["recovered"], false, "{reply}");
    returning.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_producers_publish_with_history_in_their_transactions() {
    let cluster = Cluster::start(Some(BackendKind::Postgres), "postgres-sql").await;
    let topic = "feed:9";
    let mut client = cluster.b().connect().await;
    let reply = client.join(topic).await;
    let stream = epoch(
        reply.payload()["response"]["position"]
            .as_str()
            .unwrap_or_default(),
    )
    .to_owned();
    let postgres = cluster
        .server
        .as_ref()
        .and_then(BackendServer::postgres)
        .expect("postgres");
    let app = postgres.client().await;
    // Rolled back: no history, no delivery.
    app.batch_execute(&format!(
        "BEGIN; SELECT switchboard_publish('{topic}', '{{\"n\": 1}}'::jsonb, 'm'); ROLLBACK;"
    ))
    .await
    .expect("rollback");
    client.expect_silence(QUIET).await;
    // Committed: both, with the next offset.
    app.batch_execute(&format!(
        "BEGIN; SELECT switchboard_publish('{topic}', '{{\"n\": 2}}'::jsonb, 'm'); COMMIT;"
    ))
    .await
    .expect("commit");
    assert_eq!(
        received(&mut client, topic, 1).await,
        vec![(format!("1:{stream}"), 2)]
    );
    let row = app
        .query_one(
            "SELECT switchboard_publish($1, '{\"n\": 3}'::jsonb)",
            &[&topic],
        )
        .await
        .expect("publish");
    let position: String = row.get(0);
    assert_eq!(position, format!("2:{stream}"));
    let frame = client.broadcast(topic, "message").await;
    assert_eq!(frame.position(), Some(position.as_str()));
    // A transaction that recorded a position commits durably even in a session that does not
    // wait for the WAL flush (as the node's publishing connection): a crash must not lose it
    // and hand its position to another publication.
    app.batch_execute("SET synchronous_commit = off")
        .await
        .expect("set");
    for (topic, expected) in [(topic, "on"), ("room:1", "off")] {
        let sql = format!(
            "BEGIN; SELECT switchboard_publish('{topic}', '{{}}'::jsonb, 'm'); \
             SHOW synchronous_commit; COMMIT;"
        );
        let rows = app.simple_query(&sql).await.expect("transaction");
        let shown: Vec<&str> = rows
            .iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => row.get(0),
                _ => None,
            })
            .collect();
        assert_eq!(shown.last(), Some(&expected), "{topic}: {shown:?}");
    }
    let refused = app
        .batch_execute("SELECT switchboard_publish('__redis__:x', '{}'::jsonb)")
        .await;
    assert!(refused.is_err(), "reserved topics are refused");
}

/// A node whose link to the backend is lost can no longer vouch for its history topics:
/// their memberships end with `phx_error` (so phoenix.js rejoins), a rejoin with `since` is
/// refused while the link is down, and once it is back the rejoin recovers exactly what was
/// published on the other node meanwhile. Nothing is missed without the client being told.
async fn link_loss_ends_history_memberships_and_the_rejoin_recovers(kind: BackendKind) {
    use switchboard_e2e::FaultProxy;

    let config = config_file(&format!("{}-link-loss", kind.name()));
    let server = BackendServer::start(kind);
    let proxy = FaultProxy::start(server.addr());
    let base = [
        "--config",
        config.to_str().expect("utf-8 path"),
        "--backend-timeout",
        "2s",
    ];
    let args = |url: &str| -> Vec<String> {
        let mut args: Vec<String> = base.iter().map(|s| (*s).to_owned()).collect();
        args.extend(server.node_args(url));
        args
    };
    let (direct, via_proxy) = (args(&server.url()), args(&server.url_via(proxy.addr())));
    let a = Node::start(&direct.iter().map(String::as_str).collect::<Vec<_>>());
    let b = Node::start(&via_proxy.iter().map(String::as_str).collect::<Vec<_>>());
    wait_bridge_up(&[&a, &b]).await;

    let topic = "feed:lost";
    let plain = "room:lost";
    let mut client = b.connect().await;
    let reply = client.join(topic).await;
    assert_eq!(reply.status(), "ok", "{reply}");
    let join_ref = reply.msg_ref().expect("join ref").to_owned();
    client.join_ok(plain).await;
    let first = publish(&a, topic, 1).await;
    assert_eq!(
        received(&mut client, topic, 1).await,
        vec![(first.clone(), 1)]
    );

    // B's link goes silent: within --backend-timeout its history membership ends, in order
    // after what it was sent, under the membership's join_ref.
    proxy.black_hole();
    let error = client
        .recv_until("phx_error on the history topic", |f| {
            f.topic() == topic && f.event() == "phx_error"
        })
        .await;
    assert_eq!(error.join_ref(), Some(join_ref.as_str()), "{error}");
    assert_eq!(error.msg_ref(), Some(join_ref.as_str()), "{error}");
    let pending = client.take_pending();
    assert!(
        pending
            .iter()
            .all(|f| f.topic() != plain || f.event() != "phx_error"),
        "a topic without history keeps its membership: {pending:?}"
    );

    // A's link is fine: publications go on there.
    let mut missed = Vec::new();
    for n in 2..=6 {
        missed.push((publish(&a, topic, n).await, n));
    }
    // While B cannot reach the backend, a rejoin that asks to recover is refused.
    let refused = client
        .join_with(topic, json!({ "since": first.clone() }))
        .await;
    assert_eq!(refused.status(), "error", "{refused}");

    // The link is back: the rejoin recovers exactly the missed ones, then live ones follow.
    proxy.pass();
    wait_bridge_up(&[&b]).await;
    let reply = client
        .join_with(topic, json!({ "since": first.clone() }))
        .await;
    assert_eq!(reply.status(), "ok", "{reply}");
    assert_eq!(reply.payload()["response"]["recovered"], true, "{reply}");
    assert_eq!(received(&mut client, topic, 5).await, missed);
    let live = publish(&a, topic, 7).await;
    assert_eq!(received(&mut client, topic, 1).await, vec![(live, 7)]);
    assert!(b.metric("switchboard_streams_broken_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_link_loss_ends_history_memberships_and_the_rejoin_recovers() {
    link_loss_ends_history_memberships_and_the_rejoin_recovers(BackendKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_link_loss_ends_history_memberships_and_the_rejoin_recovers() {
    link_loss_ends_history_memberships_and_the_rejoin_recovers(BackendKind::Postgres).await;
}
