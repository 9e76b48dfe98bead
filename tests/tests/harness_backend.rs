//! `BackendServer`, the same interface to a private Redis and a private PostgreSQL: each kind
//! starts, answers a ping with a deadline, stops answering while frozen or killed, comes back
//! on the same port, and is reachable through a fault proxy.

use std::time::Duration;

use switchboard_e2e::proxy::FaultProxy;
use switchboard_e2e::{BackendKind, BackendServer};

/// How long a server that should be down must stay silent (short: the servers answer a
/// ping on loopback within milliseconds when up).
const SILENCE: Duration = Duration::from_millis(500);

/// How long a server that is up may take to answer.
const ANSWER: Duration = Duration::from_secs(5);

async fn exercise(kind: BackendKind) {
    let mut server = tokio::task::spawn_blocking(move || BackendServer::start(kind))
        .await
        .unwrap();
    assert_eq!(server.kind(), kind);
    let port = server.port();
    assert_eq!(server.addr().to_string(), format!("127.0.0.1:{port}"));
    let url = server.url();
    assert_eq!(url, server.url_via(server.addr()));
    match kind {
        BackendKind::Redis => {
            assert_eq!(url, switchboard_e2e::redis::url_for(port));
            assert!(server.redis().is_some() && server.postgres().is_none());
        }
        BackendKind::Postgres => {
            assert_eq!(url, switchboard_e2e::postgres::url_for(port));
            assert!(server.postgres().is_some() && server.redis().is_none());
        }
    }
    let args = server.node_args(&url);
    let at = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
    };
    assert_eq!(at("--pubsub-backend").as_deref(), Some(kind.name()));
    assert!(args.contains(&url), "{args:?}");
    assert_eq!(at("--channel-prefix").as_deref(), Some(""));
    assert!(server.ping(ANSWER).await, "{kind} does not answer");

    server.freeze();
    assert!(server.is_frozen());
    assert!(!server.ping(SILENCE).await, "a frozen {kind} answered");
    server.thaw();
    assert!(server.ping(ANSWER).await, "a thawed {kind} does not answer");

    server.kill9();
    assert!(!server.ping(SILENCE).await, "a killed {kind} answered");
    server.restart();
    assert_eq!(server.port(), port);
    assert!(
        server.ping(ANSWER).await,
        "a restarted {kind} does not answer"
    );

    // Through a proxy: the same server at another address, and cut off by a black hole.
    let proxy = FaultProxy::start(server.addr());
    let via = server.url_via(proxy.addr());
    assert!(
        via.contains(&format!("127.0.0.1:{}", proxy.port())),
        "{via}"
    );
    assert!(kind.ping(&via, ANSWER).await, "{kind} through the proxy");
    proxy.black_hole();
    assert!(
        !kind.ping(&via, SILENCE).await,
        "{kind} answered through a black hole"
    );
    proxy.pass();
    assert!(kind.ping(&via, ANSWER).await, "{kind} after the black hole");
    proxy.cut();
    assert!(
        !kind.ping(&via, SILENCE).await,
        "{kind} answered through a cut"
    );
    proxy.pass();
    assert!(kind.ping(&via, ANSWER).await, "{kind} after the cut");
    assert!(!server.log_tail(5).is_empty());

    // Dropped while frozen: thawed and stopped, not left hanging.
    server.freeze();
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_through_the_backend_interface() {
    exercise(BackendKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_through_the_backend_interface() {
    exercise(BackendKind::Postgres).await;
}

#[test]
fn kinds_name_their_urls_and_arguments() {
    assert_eq!(
        BackendKind::ALL,
        [BackendKind::Redis, BackendKind::Postgres]
    );
    let addr = "127.0.0.1:7000".parse().unwrap();
    assert_eq!(BackendKind::Redis.url_for(addr), "redis://127.0.0.1:7000");
    assert_eq!(
        BackendKind::Postgres.url_for(addr),
        "postgres://postgres@127.0.0.1:7000/postgres"
    );
    assert_eq!(
        BackendKind::Redis.node_args("redis://127.0.0.1:7000"),
        [
            "--pubsub-backend",
            "redis",
            "--redis-url",
            "redis://127.0.0.1:7000",
            "--channel-prefix",
            ""
        ]
    );
    assert_eq!(
        BackendKind::Postgres.node_args("postgres://x"),
        switchboard_e2e::postgres::bridged_args("postgres://x")
    );
    assert_eq!(BackendKind::Postgres.to_string(), "postgres");
}
