//! Securing a node (README "Securing a node"): connect tokens, per-user channels, channel
//! rules, the publish API key, origins, and the limits that hold under abuse.
//!
//! Tokens are signed here with an HS256 implementation independent of the node's, so a
//! token any standard JWT library makes is what the node is tested against.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use switchboard_e2e::{http, Client, Node, PhxFrame};
use tokio_tungstenite::tungstenite;

const SECRET: &str = "test-secret-0123456789abcdef-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// A JWT with the given header and claims, signed with HMAC-SHA256 under `key`.
fn jwt(header: &Value, claims: &Value, key: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// A valid token for `sub`, good for an hour.
fn token(sub: &str) -> String {
    jwt(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"sub": sub, "exp": now() + 3600}),
        SECRET.as_bytes(),
    )
}

fn secured(extra: &[&str]) -> Node {
    let mut args = vec!["--token-secret", SECRET];
    if !extra.contains(&"--api-key") {
        args.push("--open-publish");
    }
    args.extend_from_slice(extra);
    Node::start(&args)
}

fn url_with_token(node: &Node, token: &str) -> String {
    format!("{}&token={token}", node.ws_url())
}

async fn connect_as(node: &Node, sub: &str) -> Client {
    Client::connect(&url_with_token(node, &token(sub))).await
}

/// The HTTP status of a refused upgrade.
fn refused_status(result: Result<Client, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected the upgrade to be refused, but it was accepted"),
    }
}

/// The body of a refused upgrade.
fn refused_body(result: Result<Client, tungstenite::Error>) -> (u16, Value) {
    match result {
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().clone().unwrap_or_default();
            (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected the upgrade to be refused, but it was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_users_see_only_their_own_channel_and_every_probe_is_refused() {
    const USERS: usize = 1_000;
    const PROBES: usize = 10;
    // Two sockets per user would pass a low soft limit: raise ours (the node raises its own).
    let _ = rlimit::increase_nofile_limit(8_192);
    let node = secured(&[]);
    let ws_url = node.ws_url();

    let mut tasks = Vec::new();
    for user in 0..USERS {
        let url = format!("{ws_url}&token={}", token(&format!("user-{user}")));
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            let own = format!("auditlog:user-{user}");
            client.join_ok(&own).await;
            let mut refused = 0;
            for probe in 1..=PROBES {
                let other = format!("auditlog:user-{}", (user + probe * 7) % USERS);
                let reply = client.join(&other).await;
                assert_eq!(
                    reply.status(),
                    "error",
                    "user {user} joined {other}: {reply}"
                );
                assert_eq!(reply.reason(), "unauthorized");
                refused += 1;
            }
            (client, refused)
        }));
    }
    let mut clients = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (client, probes) = task.await.expect("a user task");
        refused += probes;
        clients.push(client);
    }
    assert_eq!(refused, USERS * PROBES, "every probe refused");

    // A producer publishes one message to every user's channel.
    for user in 0..USERS {
        let response = http::publish(
            node.addr(),
            &format!("auditlog:user-{user}"),
            Some("activity"),
            &json!({"for": user}),
        )
        .await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(
            response.json()["recipients"],
            1,
            "exactly the owner listens"
        );
    }
    // Each user receives exactly their own message and nothing else.
    let mut checks = Vec::new();
    for (user, mut client) in clients.into_iter().enumerate() {
        checks.push(tokio::spawn(async move {
            let frame = client
                .broadcast(&format!("auditlog:user-{user}"), "activity")
                .await;
            assert_eq!(frame.payload(), &json!({"for": user}));
            client.expect_silence(Duration::from_millis(200)).await;
        }));
    }
    for check in checks {
        check.await.expect("no cross-user delivery");
    }
    assert_eq!(
        node.metric("switchboard_unauthorized_total").await,
        (USERS * PROBES) as f64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_bad_token_is_refused_at_the_upgrade_with_401() {
    let node = secured(&[]);
    let claims = json!({"sub": "u1", "exp": now() + 3600});
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let good = token("u1");
    let mut parts: Vec<&str> = good.split('.').collect();
    let evil_claims =
        URL_SAFE_NO_PAD.encode(json!({"sub": "admin", "exp": now() + 3600}).to_string());
    parts[1] = &evil_claims;
    let tampered = parts.join(".");
    let cases = [
        (
            "forged with another secret",
            jwt(&hs256, &claims, b"not-the-secret-not-the-secret-00"),
        ),
        (
            "expired",
            jwt(
                &hs256,
                // Past exp by more than the node's clock-skew leeway (30 s).
                &json!({"sub": "u1", "exp": now() - 120}),
                SECRET.as_bytes(),
            ),
        ),
        ("alg none", none),
        (
            "HS512",
            jwt(&json!({"alg": "HS512"}), &claims, SECRET.as_bytes()),
        ),
        (
            "no exp",
            jwt(&hs256, &json!({"sub": "u1"}), SECRET.as_bytes()),
        ),
        (
            "no sub",
            jwt(&hs256, &json!({"exp": now() + 3600}), SECRET.as_bytes()),
        ),
        ("tampered claims", tampered),
        ("garbage", "not.a.token".to_owned()),
        ("empty", String::new()),
    ];
    let mut bodies = Vec::new();
    for (what, bad) in &cases {
        let (status, body) = refused_body(Client::try_connect(&url_with_token(&node, bad)).await);
        assert_eq!(status, 401, "{what}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        bodies.push(body);
    }
    // Nothing reveals why: every refusal reads the same.
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "{bodies:?}"
    );
    let (status, _) = refused_body(Client::try_connect(&node.ws_url()).await);
    assert_eq!(status, 401, "no token at all");
    // The real token works.
    let mut client = Client::connect(&url_with_token(&node, &good)).await;
    client.join_ok("auditlog:u1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_command_prints_a_token_the_node_accepts() {
    let node = secured(&[]);
    let output = switchboard_e2e::node::command()
        .args(["token", "--sub", "cli-user", "--ttl", "10m"])
        .env("TOKEN_SECRET", SECRET)
        .output()
        .expect("run switchboard token");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).expect("UTF-8");
    let mut client = Client::connect(&url_with_token(&node, printed.trim())).await;
    client.join_ok("notification:cli-user").await;

    let without = switchboard_e2e::node::command()
        .args(["token", "--sub", "x"])
        .output()
        .expect("run switchboard token");
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("no token secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_need_permission_and_rules_come_from_the_config_file() {
    let dir = std::env::temp_dir().join(format!("switchboard-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        r#"
[channels.room]
join = "authenticated"
push = "authenticated"

[channels.news]
join = "anyone"
push = "nobody"

[channels.chat]
join = "owner"
push = "owner"
"#,
    )
    .expect("write rules");
    let node = secured(&["--config", rules.to_str().expect("UTF-8 path")]);
    let mut alice = connect_as(&node, "alice").await;
    let mut bob = connect_as(&node, "bob").await;

    // room: any authenticated user joins and pushes.
    alice.join_ok("room:lobby").await;
    bob.join_ok("room:lobby").await;
    let push = alice
        .push("room:lobby", "hi", json!({"from": "alice"}))
        .await;
    assert_eq!(alice.reply_to(&push).await.status(), "ok");
    assert_eq!(
        bob.broadcast("room:lobby", "hi").await.payload(),
        &json!({"from": "alice"})
    );

    // news: join yes, push no.
    alice.join_ok("news:today").await;
    let push = alice.push("news:today", "fake", json!({})).await;
    let reply = alice.reply_to(&push).await;
    assert_eq!((reply.status(), reply.reason()), ("error", "unauthorized"));

    // chat: owner only, both ways.
    alice.join_ok("chat:alice").await;
    let push = alice.push("chat:alice", "note", json!({})).await;
    assert_eq!(alice.reply_to(&push).await.status(), "ok");
    let reply = bob.join("chat:alice").await;
    assert_eq!((reply.status(), reply.reason()), ("error", "unauthorized"));

    // Unlisted namespace: owner may join, nobody may push.
    alice.join_ok("auditlog:alice").await;
    let push = alice.push("auditlog:alice", "forged", json!({})).await;
    let reply = alice.reply_to(&push).await;
    assert_eq!((reply.status(), reply.reason()), ("error", "unauthorized"));
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_needs_the_api_key_when_one_is_set() {
    let node = Node::start(&["--api-key", "s3cret-key"]);
    let body = r#"{"topic":"room:a","payload":{}}"#;
    let missing = http::post_json(node.addr(), "/api/publish", body).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"]["code"], "unauthorized");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    for wrong in [
        "Bearer s3cret-kex",
        "Bearer s3cret-key-longer",
        "Basic s3cret-key",
        "s3cret-key",
    ] {
        let response = http::request(
            node.addr(),
            "POST",
            "/api/publish",
            &[
                ("content-type", "application/json"),
                ("authorization", wrong),
            ],
            body.as_bytes(),
        )
        .await
        .expect("request");
        assert_eq!(response.status, 401, "{wrong}");
    }
    let response = http::request(
        node.addr(),
        "POST",
        "/api/publish",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer s3cret-key"),
        ],
        body.as_bytes(),
    )
    .await
    .expect("request");
    assert_eq!(response.status, 200, "{}", response.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_over_the_rate_are_refused_then_allowed_again() {
    let node = Node::start(&["--push-rate", "5", "--push-burst", "5"]);
    let mut client = node.connect().await;
    client.join_ok("room:rate").await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let push = client.push("room:rate", "m", json!({ "i": i })).await;
        let reply = client.reply_to(&push).await;
        statuses.push((reply.status().to_owned(), reply.reason().to_owned()));
    }
    let ok = statuses.iter().filter(|(status, _)| status == "ok").count();
    assert!(
        (5..=6).contains(&ok),
        "the burst of 5 passes (one more may refill): {statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|(status, reason)| status == "error" && reason == "rate limit exceeded"),
        "{statuses:?}"
    );
    assert!(node.metric("switchboard_rate_limited_total").await >= 2.0);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let push = client
        .push("room:rate", "m", json!({"after": "a pause"}))
        .await;
    assert_eq!(
        client.reply_to(&push).await.status(),
        "ok",
        "recovered after a pause"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_allowed_origins_may_open_a_socket() {
    let node = Node::start(&["--allowed-origins", "https://app.example.com"]);
    let url = node.ws_url();
    let evil =
        Client::try_connect_with_headers(&url, &[("origin", "https://evil.example.com")]).await;
    let (status, body) = refused_body(evil);
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "origin_not_allowed");
    let lookalike =
        Client::try_connect_with_headers(&url, &[("origin", "https://app.example.com.evil.net")])
            .await;
    assert_eq!(refused_status(lookalike), 403);
    let mut allowed =
        Client::try_connect_with_headers(&url, &[("origin", "https://app.example.com")])
            .await
            .expect("the allowed origin connects");
    allowed.join_ok("room:a").await;
    // A client that sends no Origin is not a browser and is let in.
    let mut server_side = node.connect().await;
    server_side.join_ok("room:a").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_limit_are_refused_with_503_until_one_closes() {
    let node = Node::start(&["--max-connections", "2"]);
    let mut first = node.connect().await;
    let _second = node.connect().await;
    let (status, body) = refused_body(Client::try_connect(&node.ws_url()).await);
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "too_many_connections");
    assert_eq!(
        node.metric("switchboard_refused_connections_total").await,
        1.0
    );
    first.close().await;
    let mut retried = None;
    for _ in 0..50 {
        if let Ok(client) = Client::try_connect(&node.ws_url()).await {
            retried = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut third = retried.expect("a slot frees when a socket closes");
    third.join_ok("room:a").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_over_the_configured_length_are_refused() {
    let node = Node::start(&["--max-topic-bytes", "12"]);
    let mut client = node.connect().await;
    client.join_ok("room:abcdefg").await;
    let reply = client.join("room:abcdefgh").await;
    assert_eq!(reply.status(), "error");
    assert_eq!(
        reply.reason(),
        "invalid topic: topic is 13 bytes long; the limit is 12 bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_node_says_so_at_start_and_in_readyz() {
    let open = Node::start(&[]);
    let ready = open.get("/readyz").await;
    assert_eq!(ready.json()["auth"], "open");
    assert!(
        open.stderr_lines()
            .iter()
            .any(|line| line.contains("OPEN NODE")),
        "a loud warning at start: {}",
        open.log_tail(20)
    );
    let secure = secured(&[]);
    assert_eq!(secure.get("/readyz").await.json()["auth"], "token");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_is_closed_with_3005_when_its_token_expires_and_reconnects_with_a_fresh_one() {
    let node = secured(&[]);
    // exp 27 s ago: still accepted for the 30 s clock-skew leeway, so for about 3 s more.
    let claims = json!({"sub": "u1", "exp": now() - 27});
    let expiring = jwt(&json!({"alg": "HS256"}), &claims, SECRET.as_bytes());
    let mut client = Client::connect(&url_with_token(&node, &expiring)).await;
    client.join_ok("auditlog:u1").await;
    let started = std::time::Instant::now();
    client.set_timeout(Duration::from_secs(10));
    client.expect_close_with(3005, "token expired").await;
    let after = started.elapsed();
    assert!(
        after >= Duration::from_secs(1),
        "closed after {after:?}, before the token expired"
    );
    // The same token is refused now; a fresh one connects (what phoenix.js does when its
    // params is a function returning the current token).
    assert_eq!(
        refused_status(Client::try_connect(&url_with_token(&node, &expiring)).await),
        401
    );
    let mut fresh = connect_as(&node, "u1").await;
    fresh.join_ok("auditlog:u1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_shows_the_tokens_info_claim_which_the_client_cannot_override() {
    let dir = std::env::temp_dir().join(format!("switchboard-info-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("presence.toml");
    std::fs::write(
        &file,
        "[channels.room]\njoin = \"authenticated\"\npush = \"authenticated\"\npresence = true\n",
    )
    .expect("config");
    let node = secured(&["--config", file.to_str().expect("UTF-8 path")]);
    let claims = json!({"sub": "ada", "exp": now() + 3600, "info": {"name": "Ada Lovelace"}});
    let signed = jwt(&json!({"alg": "HS256"}), &claims, SECRET.as_bytes());
    let mut ada = Client::connect(&url_with_token(&node, &signed)).await;
    let reply = ada
        .join_with(
            "room:1",
            json!({"presence": {"name": "Mallory", "status": "online"}}),
        )
        .await;
    assert_eq!(reply.status(), "ok", "{reply}");
    let state = ada
        .recv_until("presence_state", |f| f.event() == "presence_state")
        .await;
    let metas = &state.payload()["ada"]["metas"];
    assert_eq!(metas.as_array().map(Vec::len), Some(1), "{state}");
    assert_eq!(metas[0]["name"], "Ada Lovelace", "info wins: {state}");
    assert_eq!(metas[0]["status"], "online", "{state}");
    // A token whose info is not an object is refused at the upgrade.
    let bad = json!({"sub": "eve", "exp": now() + 3600, "info": ["x"]});
    let bad = jwt(&json!({"alg": "HS256"}), &bad, SECRET.as_bytes());
    assert_eq!(
        refused_status(Client::try_connect(&url_with_token(&node, &bad)).await),
        401
    );
    // The token command signs info too.
    let output = switchboard_e2e::node::command()
        .args(["token", "--sub", "bob", "--info", r#"{"name":"Bob"}"#])
        .env("TOKEN_SECRET", SECRET)
        .output()
        .expect("switchboard token");
    assert!(output.status.success(), "{output:?}");
    let bob_token = String::from_utf8(output.stdout).expect("UTF-8");
    let mut bob = Client::connect(&url_with_token(&node, bob_token.trim())).await;
    bob.join_ok("room:1").await;
    let state = bob
        .recv_until("presence_state", |f| f.event() == "presence_state")
        .await;
    assert_eq!(state.payload()["bob"]["metas"][0]["name"], "Bob", "{state}");
    std::fs::remove_dir_all(&dir).ok();
}
