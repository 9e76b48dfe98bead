//! Freezing the private servers: a frozen Redis or PostgreSQL keeps its connections and
//! answers nothing, on connections made before the freeze (for PostgreSQL: served by
//! backend processes the postmaster forked) as on new ones, until it is thawed.

use std::time::{Duration, Instant};

use switchboard_e2e::postgres::PostgresServer;
use switchboard_e2e::redis::RedisServer;
use switchboard_e2e::BackendKind;
use tokio_postgres::NoTls;

/// How long a frozen server must stay silent.
const SILENCE: Duration = Duration::from_secs(1);

/// How long a thawed server may take to answer.
const ANSWER: Duration = Duration::from_secs(5);

/// A blocking Redis connection whose every wait is bounded by `timeout`.
fn redis_connection(url: &str, timeout: Duration) -> redis::Connection {
    let client = redis::Client::open(url).unwrap();
    let connection = client.get_connection_with_timeout(ANSWER).unwrap();
    connection.set_read_timeout(Some(timeout)).unwrap();
    connection.set_write_timeout(Some(timeout)).unwrap();
    connection
}

#[test]
fn a_frozen_redis_answers_nothing_until_thawed() {
    let mut server = RedisServer::start();
    let mut before = redis_connection(&server.url(), SILENCE);
    let pong: String = redis::cmd("PING").query(&mut before).unwrap();
    assert_eq!(pong, "PONG");

    server.freeze();
    assert!(server.is_frozen());
    let pid = server.pid().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert!(stat.contains(") T "), "not stopped: {stat}");

    // The connection made before: the command times out.
    let started = Instant::now();
    let answer: redis::RedisResult<String> = redis::cmd("PING").query(&mut before);
    let err = answer.expect_err("a frozen server answered PING");
    assert!(err.is_timeout(), "expected a timeout, got {err}");
    assert!(started.elapsed() >= SILENCE);
    // A new connection: the kernel accepts it, the server does not answer.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert!(!runtime.block_on(BackendKind::Redis.ping(&server.url(), SILENCE)));

    server.thaw();
    assert!(!server.is_frozen());
    let mut after = redis_connection(&server.url(), ANSWER);
    let pong: String = redis::cmd("PING").query(&mut after).unwrap();
    assert_eq!(pong, "PONG");
    assert!(server.ping());

    // Frozen at drop (or at kill -9): killed all the same.
    server.freeze();
    server.kill9();
    assert!(!server.is_frozen());
    server.restart();
    server.freeze();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_postgres_answers_nothing_until_thawed() {
    let mut server = PostgresServer::start();
    let before = server.client().await;
    let rows = before.simple_query("SELECT 1").await.unwrap();
    assert!(!rows.is_empty());

    server.freeze();
    assert!(server.is_frozen());
    let postmaster = server.postmaster_pid().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{postmaster}/stat")).unwrap();
    assert!(stat.contains(") T "), "postmaster not stopped: {stat}");

    // The connection made before is served by a backend the postmaster forked: stopped too.
    let answer = tokio::time::timeout(SILENCE, before.simple_query("SELECT 1")).await;
    assert!(answer.is_err(), "a frozen backend answered: {answer:?}");
    // A new connection gets no startup answer from the postmaster.
    let url = server.url();
    let connecting = tokio::time::timeout(SILENCE, tokio_postgres::connect(&url, NoTls)).await;
    assert!(connecting.is_err(), "a frozen postmaster answered");

    server.thaw();
    assert!(!server.is_frozen());
    // The old connection works again (its backend ran on).
    let rows = tokio::time::timeout(ANSWER, before.simple_query("SELECT 1"))
        .await
        .expect("no answer after thaw")
        .unwrap();
    assert!(!rows.is_empty());
    assert!(BackendKind::Postgres.ping(&server.url(), ANSWER).await);

    // Frozen at drop: thawed first, so the immediate stop does not hang.
    server.freeze();
    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopping a frozen cluster took {:?}",
        started.elapsed()
    );
}
