//! One contract, every backend: the same scenarios — delivery to every subscriber exactly
//! once with the event name, publisher order, and subscriptions that follow the first and
//! last local subscriber — run against the memory backend (one node), Redis (two nodes) and
//! PostgreSQL (two nodes). The backend-specific behaviour (raw producer messages, faults,
//! limits) is in `redis_*.rs` and `postgres_*.rs`.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard_e2e::postgres::{self, PostgresServer};
use switchboard_e2e::redis::{self, wait_bridge_up, RedisServer};
use switchboard_e2e::{http, Client, Node, PhxFrame};

/// How long a subscriber must stay quiet for a test to call a delivery "exactly once".
const QUIET: Duration = Duration::from_millis(300);

/// The nodes' `--unsubscribe-linger`: shorter than [`QUIET`].
const LINGER_ARG: &str = "100ms";

/// Messages in the ordering scenario.
const ORDERED: u64 = 200;

/// The backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Redis,
    Postgres,
}

/// Two nodes sharing topics (for memory: the same node twice) and the server behind them.
struct Cluster {
    kind: Kind,
    a: Node,
    /// `None` for memory, where "node B" is node A.
    b: Option<Node>,
    _redis: Option<RedisServer>,
    _postgres: Option<PostgresServer>,
}

impl Cluster {
    async fn start(kind: Kind) -> Self {
        let (args, redis, postgres) = match kind {
            Kind::Memory => (
                vec!["--pubsub-backend".to_owned(), "memory".to_owned()],
                None,
                None,
            ),
            Kind::Redis => {
                let server = RedisServer::start();
                let mut args = redis::bridged_args(server.port());
                args.extend(["--channel-prefix".to_owned(), String::new()]);
                (args, Some(server), None)
            }
            Kind::Postgres => {
                let server = PostgresServer::start();
                (postgres::bridged_args(&server.url()), None, Some(server))
            }
        };
        // Unsubscribe soon after the last local subscriber leaves, so the test sees it.
        let mut args = args;
        args.extend(["--unsubscribe-linger".to_owned(), LINGER_ARG.to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let a = Node::start(&args);
        let b = (kind != Kind::Memory).then(|| Node::start(&args));
        let cluster = Self {
            kind,
            a,
            b,
            _redis: redis,
            _postgres: postgres,
        };
        if let Some(b) = &cluster.b {
            wait_bridge_up(&[&cluster.a, b]).await;
        }
        let ready = cluster.a.get("/readyz").await;
        assert_eq!(ready.status, 200, "{}", ready.text());
        let name = format!("{kind:?}").to_lowercase();
        assert_eq!(ready.json()["backend"], name.as_str(), "{}", ready.text());
        cluster
    }

    fn b(&self) -> &Node {
        self.b.as_ref().unwrap_or(&self.a)
    }

    fn bridged(&self) -> bool {
        self.kind != Kind::Memory
    }
}

/// Every client gets `expected` as its next broadcast, then nothing for [`QUIET`].
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

/// The scenarios every backend must pass.
async fn contract(kind: Kind) {
    let cluster = Cluster::start(kind).await;
    let (a, b) = (&cluster.a, cluster.b());
    let topic = "room:contract";
    let (mut a1, mut b1, mut b2) = (a.connect().await, b.connect().await, b.connect().await);
    // No waiting for the subscriptions to settle: a join's ok means its node is subscribed
    // upstream, so whatever is published after it arrives.
    for client in [&mut a1, &mut b1, &mut b2] {
        client.join_ok(topic).await;
    }

    // 1. Exactly once, with the event: a socket push on A, an HTTP publish on B.
    let push_ref = a1.push(topic, "new_msg", json!({"body": "hi"})).await;
    assert_eq!(a1.reply_to(&push_ref).await.status(), "ok");
    let expected = json!([null, null, topic, "new_msg", {"body": "hi"}]);
    expect_once(&mut [&mut a1, &mut b1, &mut b2], &expected).await;
    let response = http::publish(b.addr(), topic, Some("shout"), &json!([1, 2])).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let expected = json!([null, null, topic, "shout", [1, 2]]);
    expect_once(&mut [&mut a1, &mut b1, &mut b2], &expected).await;

    // 2. One publisher's messages arrive in order everywhere.
    for n in 0..ORDERED {
        let response = http::publish(a.addr(), topic, Some("seq"), &json!({"n": n})).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    for client in [&mut a1, &mut b1, &mut b2] {
        let mut got = Vec::new();
        while (got.len() as u64) < ORDERED {
            let frame = client.broadcast(topic, "seq").await;
            got.push(frame.payload()["n"].as_u64().unwrap_or(u64::MAX));
        }
        assert_eq!(got, (0..ORDERED).collect::<Vec<_>>(), "{kind:?}: order");
        client.expect_silence(QUIET).await;
    }

    // 3. Subscriptions follow the edges: once B's last subscriber leaves, B no longer takes
    //    the topic's messages from the backend; a new first subscriber brings them back.
    for client in [&mut b1, &mut b2] {
        assert_eq!(client.leave(topic).await.status(), "ok");
        client
            .recv_until("phx_close", |f| f.event() == "phx_close")
            .await;
    }
    tokio::time::sleep(QUIET).await;
    let received = b.metric("switchboard_bridge_received_total").await;
    let response = http::publish(a.addr(), topic, Some("after_leave"), &json!({})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    a1.broadcast(topic, "after_leave").await;
    for client in [&mut b1, &mut b2] {
        client.expect_silence(QUIET).await;
    }
    if cluster.bridged() {
        assert_eq!(
            b.metric("switchboard_bridge_received_total").await,
            received,
            "{kind:?}: B unsubscribed upstream when its last subscriber left"
        );
    }
    // The join's ok means B is subscribed upstream again: a publish right after it arrives.
    b1.join_ok(topic).await;
    let response = http::publish(a.addr(), topic, Some("back"), &json!({"n": 1})).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let expected = json!([null, null, topic, "back", {"n": 1}]);
    expect_once(&mut [&mut a1, &mut b1], &expected).await;
    b2.expect_silence(QUIET).await;
    for node in [a, b] {
        assert_eq!(
            node.metric("switchboard_bridge_lost_total").await,
            0.0,
            "{kind:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_backend_keeps_the_contract() {
    contract(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_backend_keeps_the_contract() {
    contract(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_backend_keeps_the_contract() {
    contract(Kind::Postgres).await;
}
