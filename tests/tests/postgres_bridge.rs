//! Several nodes as one system through PostgreSQL LISTEN/NOTIFY: every publish
//! reaches every subscriber on every node exactly once with its event name; applications
//! publish with `pg_notify` (raw or enveloped), inside their transactions (delivered only if
//! they commit); a message too large for NOTIFY is refused whole with a clear error; topics
//! whose channel name is over PostgreSQL's 63 bytes are mapped as docs/postgres.md says; the
//! backend's configuration is refused when ambiguous or incomplete.
//!
//! Each test starts its own PostgreSQL cluster on a free port and its own nodes. Faults
//! (database down at start, restarted) are in `postgres_faults.rs`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::postgres::{
    bridged_args, wait_delivery, PostgresServer, CHANNEL_FUNCTION_SQL,
};
use switchboard_e2e::redis::wait_bridge_up;
use switchboard_e2e::{http, node, Client, Node, PhxFrame};

/// How long a subscriber must stay quiet after its last expected frame for a test to call
/// the delivery "exactly once".
const QUIET: Duration = Duration::from_millis(300);

/// PostgreSQL's NOTIFY payload limit as the node enforces it (shorter than 8000 bytes).
const LIMIT: usize = 7999;

fn bridged_node(db: &PostgresServer) -> Node {
    let args = bridged_args(&db.url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start(&args)
}

/// Every client gets `expected` as its next broadcast and then nothing else for [`QUIET`].
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
async fn two_nodes_on_one_database_deliver_every_publish_exactly_once_with_its_event() {
    let db = PostgresServer::start();
    let (a, b) = (bridged_node(&db), bridged_node(&db));
    wait_bridge_up(&[&a, &b]).await;
    let ready = a.get("/readyz").await.json();
    assert_eq!(
        (&ready["status"], &ready["backend"], &ready["bridge"]),
        (&json!("ready"), &json!("postgres"), &json!("up")),
        "{ready}"
    );
    let topic = "room:lobby";
    let (mut a1, mut a2, mut b1) = (a.connect().await, a.connect().await, b.connect().await);
    for client in [&mut a1, &mut a2, &mut b1] {
        client.join_ok(topic).await;
    }
    wait_delivery(&a, topic, &mut [&mut a1, &mut a2, &mut b1]).await;
    wait_delivery(&b, topic, &mut [&mut a1, &mut a2, &mut b1]).await;
    let before = (
        a.metric("switchboard_bridge_published_total").await,
        b.metric("switchboard_bridge_received_total").await,
    );

    // A socket push on A reaches its sender, A's other subscriber and B's, once each.
    let push_ref = a1.push(topic, "new_msg", json!({"body": "from A"})).await;
    let reply = a1.reply_to(&push_ref).await;
    assert_eq!(reply.status(), "ok", "{reply}");
    let expected = json!([null, null, topic, "new_msg", {"body": "from A"}]);
    expect_once(&mut [&mut a1, &mut a2, &mut b1], &expected).await;

    // An HTTP publish on B: recipients counts B's own subscribers.
    let response = http::publish(b.addr(), topic, Some("shout"), &json!({"n": 2})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), json!({"ok": true, "recipients": 1}));
    let expected = json!([null, null, topic, "shout", {"n": 2}]);
    expect_once(&mut [&mut a1, &mut a2, &mut b1], &expected).await;

    // The same message twice is two messages (PostgreSQL folds duplicates only within one
    // transaction, and the bridge sends each publish in its own).
    for _ in 0..2 {
        let response = http::publish(a.addr(), topic, Some("dup"), &json!({"same": true})).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    for client in [&mut a1, &mut a2, &mut b1] {
        for _ in 0..2 {
            let got = client.broadcast(topic, "dup").await;
            assert_eq!(got, json!([null, null, topic, "dup", {"same": true}]));
        }
        client.expect_silence(QUIET).await;
    }

    let published = a.metric("switchboard_bridge_published_total").await - before.0;
    let received = b.metric("switchboard_bridge_received_total").await - before.1;
    assert_eq!(
        published, 3.0,
        "A published its push and the two duplicates"
    );
    assert_eq!(
        received, 3.0,
        "B received what A published, its own echo dropped"
    );
    assert_eq!(a.metric("switchboard_bridge_lost_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_pg_notify_from_applications_arrives_like_raw_redis_publish() {
    let db = PostgresServer::start();
    let (a, b) = (bridged_node(&db), bridged_node(&db));
    wait_bridge_up(&[&a, &b]).await;
    let topic = "auditlog:123e4567-e89b-12d3-a456-426614174000";
    let (mut a1, mut b1) = (a.connect().await, b.connect().await);
    a1.join_ok(topic).await;
    b1.join_ok(topic).await;
    wait_delivery(&a, topic, &mut [&mut a1, &mut b1]).await;
    wait_delivery(&b, topic, &mut [&mut a1, &mut b1]).await;

    let cases: [(&str, &str, Value); 7] = [
        (
            r#"{"activity_type":"TASK_COMPLETED"}"#,
            "message",
            json!({"activity_type": "TASK_COMPLETED"}),
        ),
        ("hello world", "message", json!("hello world")),
        ("[1,\"two\"]", "message", json!([1, "two"])),
        ("42", "message", json!(42)),
        ("", "message", json!("")),
        (
            r#"{"switchboard":{"event":"task_done"},"payload":{"id":7}}"#,
            "task_done",
            json!({"id": 7}),
        ),
        (
            r#"{"switchboard":{"event":"from_elsewhere","origin":"0123456789abcdef"},"payload":"p"}"#,
            "from_elsewhere",
            json!("p"),
        ),
    ];
    for (message, event, payload) in &cases {
        db.notify(topic, message).await;
        let expected = json!([null, null, topic, event, payload]);
        expect_once(&mut [&mut a1, &mut b1], &expected).await;
    }

    // What a node sends: an envelope with the event and its origin, on the topic's channel.
    let mut wire = db.listen(&[topic]).await;
    let response = http::publish(a.addr(), topic, Some("new_msg"), &json!({"body": "hi"})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let (channel, text) = wire
        .next(Duration::from_secs(10))
        .await
        .expect("the node notified the channel");
    assert_eq!(channel, topic);
    let envelope: Value = serde_json::from_str(&text).expect("the envelope is JSON");
    assert_eq!(envelope["switchboard"]["event"], "new_msg", "{envelope}");
    assert_eq!(envelope["payload"], json!({"body": "hi"}), "{envelope}");
    let origin = envelope["switchboard"]["origin"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(origin.len(), 16, "{envelope}");
    expect_once(
        &mut [&mut a1, &mut b1],
        &json!([null, null, topic, "new_msg", {"body": "hi"}]),
    )
    .await;

    // A notification carrying A's origin is A's own echo: B delivers it, A drops it.
    let echo = format!(r#"{{"switchboard":{{"event":"echo","origin":"{origin}"}},"payload":1}}"#);
    db.notify(topic, &echo).await;
    expect_once(&mut [&mut b1], &json!([null, null, topic, "echo", 1])).await;
    a1.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notify_inside_an_application_transaction_is_delivered_only_if_it_commits() {
    let db = PostgresServer::start();
    let a = bridged_node(&db);
    wait_bridge_up(&[&a]).await;
    let user = "123e4567-e89b-12d3-a456-426614174000";
    let topic = format!("auditlog:{user}");
    let mut a1 = a.connect().await;
    a1.join_ok(&topic).await;
    wait_delivery(&a, &topic, &mut [&mut a1]).await;
    db.execute("CREATE TABLE audit_log (id serial PRIMARY KEY, user_id uuid, entry jsonb)")
        .await;

    // docs/postgres.md's example: write the row and notify in one transaction.
    let mut app = db.client().await;
    for (outcome, id) in [("rollback", 1), ("commit", 2)] {
        let tx = app.transaction().await.expect("BEGIN");
        let entry = json!({"activity_type": "TASK_COMPLETED", "n": id}).to_string();
        tx.execute(
            "INSERT INTO audit_log (user_id, entry) VALUES ($1::text::uuid, $2::text::jsonb)",
            &[&user, &entry],
        )
        .await
        .expect("INSERT");
        tx.execute(
            "SELECT pg_notify('auditlog:' || $1::text, $2)",
            &[&user, &entry],
        )
        .await
        .expect("pg_notify");
        // Nothing is delivered before the transaction ends.
        a1.expect_silence(QUIET).await;
        if outcome == "commit" {
            tx.commit().await.expect("COMMIT");
            let got = a1.broadcast(&topic, "message").await;
            assert_eq!(got[4], json!({"activity_type": "TASK_COMPLETED", "n": 2}));
            a1.expect_silence(QUIET).await;
        } else {
            tx.rollback().await.expect("ROLLBACK");
            a1.expect_silence(Duration::from_millis(800)).await;
        }
    }
    let rows = app
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .expect("count");
    assert_eq!(rows.get::<_, i64>(0), 1, "only the committed row exists");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_over_the_notify_limit_is_refused_whole_with_a_clear_error() {
    let db = PostgresServer::start();
    let (a, b) = (bridged_node(&db), bridged_node(&db));
    wait_bridge_up(&[&a, &b]).await;
    let topic = "room:big";
    let (mut a1, mut b1) = (a.connect().await, b.connect().await);
    a1.join_ok(topic).await;
    b1.join_ok(topic).await;
    wait_delivery(&a, topic, &mut [&mut a1, &mut b1]).await;

    // The envelope of event "e" with a string payload of n characters is n + 61 bytes
    // (the origin is 16 hex digits): find the largest payload that fits exactly.
    let overhead =
        r#"{"switchboard":{"event":"e","origin":"0123456789abcdef"},"payload":""}"#.len();
    let fits = "x".repeat(LIMIT - overhead);
    let response = http::publish(a.addr(), topic, Some("e"), &json!(fits)).await;
    assert_eq!(response.status, 200, "{}", response.text());
    for client in [&mut a1, &mut b1] {
        let got = client.broadcast(topic, "e").await;
        assert_eq!(got[4].as_str().map(str::len), Some(fits.len()));
    }

    // One byte more: 413, delivered nowhere (not even on A), and the limit is named.
    let over = format!("{fits}x");
    let published = a.metric("switchboard_bridge_published_total").await;
    let response = http::publish(a.addr(), topic, Some("e"), &json!(over)).await;
    assert_eq!(response.status, 413, "{}", response.text());
    let body = response.json();
    assert_eq!(
        body["error"]["code"], "payload_too_large_for_backend",
        "{body}"
    );
    assert_eq!(body["error"]["limit"], LIMIT, "{body}");
    assert_eq!(body["error"]["size"], LIMIT + 1, "{body}");
    assert_eq!(body["recipients"], 0, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("postgres")
            && message.contains("7999 bytes")
            && message.contains("delivered nowhere"),
        "{message}"
    );
    a1.expect_silence(QUIET).await;
    b1.expect_silence(QUIET).await;
    assert_eq!(
        a.metric("switchboard_bridge_published_total").await,
        published,
        "nothing was sent to PostgreSQL"
    );
    assert_eq!(a.metric("switchboard_bridge_lost_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_whose_channel_is_over_63_bytes_are_mapped_and_work_end_to_end() {
    let db = PostgresServer::start();
    let (a, b) = (bridged_node(&db), bridged_node(&db));
    wait_bridge_up(&[&a, &b]).await;
    db.execute(CHANNEL_FUNCTION_SQL).await;
    let app = db.client().await;
    let channel_of = |name: String| {
        let app = &app;
        async move {
            app.query_one("SELECT switchboard_channel($1)", &[&name])
                .await
                .expect("switchboard_channel()")
                .get::<_, String>(0)
        }
    };

    // Two long topics that share their first 63 bytes, and a non-ASCII one.
    let shared = format!("reports:{}", "x".repeat(60));
    let long1 = format!("{shared}:one");
    let long2 = format!("{shared}:two");
    let accented = format!("journal:{}", "é".repeat(40));
    let short = "auditlog:123e4567-e89b-12d3-a456-426614174000";
    assert_eq!(
        channel_of(short.to_owned()).await,
        short,
        "45 bytes: unmapped"
    );
    assert_eq!(
        channel_of(shared.clone()).await,
        "reports:xxxxxxxxxxxxxxxxxxxxxx~f483685e949ad176f362ab1933f66264",
        "the example in docs/postgres.md"
    );
    let mut clients = Vec::new();
    for topic in [&long1, &long2, &accented] {
        let (mut a1, mut b1) = (a.connect().await, b.connect().await);
        a1.join_ok(topic).await;
        b1.join_ok(topic).await;
        wait_delivery(&a, topic, &mut [&mut a1, &mut b1]).await;
        clients.push((topic.clone(), a1, b1));
    }
    for (topic, a1, b1) in &mut clients {
        // Across nodes, with the event.
        let response = http::publish(a.addr(), topic, Some("long"), &json!({"t": *topic})).await;
        assert_eq!(response.status, 200, "{}", response.text());
        expect_once(
            &mut [a1, b1],
            &json!([null, null, *topic, "long", {"t": *topic}]),
        )
        .await;
        // From an application that computes the channel with the documented function.
        let channel = channel_of(topic.clone()).await;
        assert!(channel.len() <= 63, "{channel}");
        db.notify(&channel, r#"{"from":"app"}"#).await;
        expect_once(
            &mut [a1, b1],
            &json!([null, null, *topic, "message", {"from": "app"}]),
        )
        .await;
    }

    // A topic spelled like another topic's mapped channel is a different channel.
    let imposter = channel_of(long1.clone()).await;
    let mut i1 = b.connect().await;
    i1.join_ok(&imposter).await;
    wait_delivery(&a, &imposter, &mut [&mut i1]).await;
    let response = http::publish(a.addr(), &long1, Some("private"), &json!({})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let (_, a1, b1) = &mut clients[0];
    expect_once(&mut [a1, b1], &json!([null, null, long1, "private", {}])).await;
    i1.expect_silence(QUIET).await;
}

#[test]
fn an_incomplete_or_ambiguous_backend_configuration_is_refused_at_start() {
    /// Arguments, environment, and what standard error must say.
    type Case = (
        Vec<&'static str>,
        Vec<(&'static str, &'static str)>,
        &'static str,
    );
    let cases: [Case; 3] = [
        (
            vec!["--pubsub-backend", "postgres"],
            vec![],
            "postgres needs --database-url (or DATABASE_URL)",
        ),
        (
            vec![],
            vec![("PUBSUB_BACKEND", "postgres")],
            "postgres needs --database-url (or DATABASE_URL)",
        ),
        (
            vec![],
            vec![
                ("REDIS_URL", "redis://127.0.0.1:1"),
                ("DATABASE_URL", "postgres://127.0.0.1:1/x"),
            ],
            "choose one with --pubsub-backend redis|postgres (or PUBSUB_BACKEND)",
        ),
    ];
    for (args, env, message) in cases {
        let mut command = node::command();
        command
            .args(["--bind", "127.0.0.1:0"])
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("the node binary starts");
        let started = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{args:?} {env:?}: the node did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{args:?} {env:?}: must exit non-zero"
        );
        assert!(stderr.contains(message), "{args:?} {env:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_push_over_the_notify_limit_gets_an_error_reply_and_is_delivered_nowhere() {
    let db = PostgresServer::start();
    let (a, b) = (bridged_node(&db), bridged_node(&db));
    wait_bridge_up(&[&a, &b]).await;
    let topic = "room:bigpush";
    let (mut a1, mut a2, mut b1) = (a.connect().await, a.connect().await, b.connect().await);
    for client in [&mut a1, &mut a2, &mut b1] {
        client.join_ok(topic).await;
    }
    wait_delivery(&a, topic, &mut [&mut a1, &mut a2, &mut b1]).await;
    let push_ref = a1.push(topic, "e", json!({"x": "x".repeat(LIMIT)})).await;
    let reply = a1.reply_to(&push_ref).await;
    assert_eq!(reply.status(), "error", "{reply}");
    let reason = reply.reason();
    assert!(
        reason.contains("postgres") && reason.contains("the limit is 7999 bytes"),
        "{reason}"
    );
    for client in [&mut a1, &mut a2, &mut b1] {
        client.expect_silence(QUIET).await;
    }
}
