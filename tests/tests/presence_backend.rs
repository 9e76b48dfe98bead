//! Presence on the backends (docs/redis.md and docs/postgres.md, *Presence*): the functions a
//! node installs when a namespace tracks presence, called directly the way a node (or an
//! application) calls them, with the announcements they publish read off the backend.
//!
//! A node is started once per backend with `[channels.room] presence = true` (and history on
//! `feed`, so both installs meet) and a channel prefix, only to install the functions; it is
//! stopped before the checks, so nothing else talks to the backend meanwhile.

use std::io::{BufRead as _, BufReader, ErrorKind, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::postgres::{Listener, PostgresServer};
use switchboard_e2e::redis::{wait_bridge_up, RedisServer};
use switchboard_e2e::{Node, PATIENCE};

/// The channel prefix the node (and so the functions) use.
const PREFIX: &str = "sb:";

/// How long to wait for an announcement that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// A config file turning presence on for `room` and history on for `feed`.
fn config_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "switchboard-presence-backend-{name}-{}.toml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "[channels.room]\npresence = true\n\n[channels.feed]\nhistory = 10\n",
    )
    .expect("config file");
    path
}

/// Starts a node on the backend at `url` until its bridge is up (so the functions are
/// installed), then stops it.
async fn install(backend: &str, url_flag: &str, url: &str) {
    let config = config_file(backend);
    let config = config.to_string_lossy();
    let mut node = Node::start(&[
        "--config",
        &config,
        "--pubsub-backend",
        backend,
        url_flag,
        url,
        "--channel-prefix",
        PREFIX,
    ]);
    wait_bridge_up(&[&node]).await;
    let _ = node.terminate();
}

/// A backend holding the presence functions, and a connection to call them with.
enum Raw {
    Redis(RedisServer),
    Postgres {
        server: PostgresServer,
        client: tokio_postgres::Client,
    },
}

/// A connection listening to presence channels.
enum Watch {
    Redis(RedisWatch),
    Postgres(Listener),
}

/// A Redis connection in subscribed mode that can wait for a message and time out without
/// losing the next one. (The harness' `Subscriber` cannot: after a read timeout the `redis`
/// crate skips the next value it reads, taking it for the late reply to a command.) It reads
/// the little RESP that pub/sub sends (arrays of bulk strings and integers) itself.
struct RedisWatch {
    reader: BufReader<TcpStream>,
}

impl RedisWatch {
    fn subscribe(server: &RedisServer, channels: &[&str]) -> Self {
        let mut stream = TcpStream::connect(server.addr()).expect("connect to redis");
        let mut command = redis::cmd("SUBSCRIBE");
        for channel in channels {
            command.arg(*channel);
        }
        stream
            .write_all(&command.get_packed_command())
            .expect("SUBSCRIBE");
        let mut watch = Self {
            reader: BufReader::new(stream),
        };
        for channel in channels {
            let confirmation = watch.push(PATIENCE).expect("a SUBSCRIBE confirmation");
            assert_eq!(confirmation[..2], ["subscribe", *channel]);
        }
        watch
    }

    /// The next push within `timeout`, as its items: nothing is consumed unless one has
    /// begun to arrive, and then it is read whole.
    fn push(&mut self, timeout: Duration) -> Option<Vec<String>> {
        let set = |reader: &BufReader<TcpStream>, timeout| {
            reader
                .get_ref()
                .set_read_timeout(Some(timeout))
                .expect("read timeout");
        };
        set(&self.reader, timeout.max(Duration::from_millis(1)));
        match self.reader.fill_buf() {
            Ok([]) => panic!("redis closed the subscribed connection"),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(e) => panic!("reading the subscribed connection: {e}"),
        }
        set(&self.reader, PATIENCE);
        let header = self.line();
        let count: usize = header
            .strip_prefix('*')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a push is an array, got {header:?}"));
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            let line = self.line();
            if let Some(len) = line.strip_prefix('$') {
                let len: usize = len.parse().expect("a bulk length");
                let mut bytes = vec![0; len + 2];
                std::io::Read::read_exact(&mut self.reader, &mut bytes).expect("a bulk string");
                bytes.truncate(len);
                items.push(String::from_utf8(bytes).expect("UTF-8"));
            } else if let Some(n) = line.strip_prefix(':') {
                items.push(n.to_owned());
            } else {
                panic!("unexpected RESP item {line:?}");
            }
        }
        Some(items)
    }

    /// One CRLF-terminated line, without the CRLF.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a RESP line");
        line.trim_end_matches("\r\n").to_owned()
    }

    /// The next message within `timeout`: (channel, payload).
    fn next(&mut self, timeout: Duration) -> Option<(String, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut push = self.push(left)?;
            if push.len() == 3 && push[0] == "message" {
                let payload = push.pop().unwrap_or_default();
                let channel = push.pop().unwrap_or_default();
                return Some((channel, payload));
            }
        }
    }
}

/// The presence channel of `topic` (short topics: PostgreSQL maps names over 63 bytes).
fn channel(topic: &str) -> String {
    format!("{PREFIX}__presence:{topic}")
}

impl Raw {
    async fn start(redis: bool) -> Self {
        if redis {
            let server = RedisServer::start();
            install("redis", "--redis-url", &server.url()).await;
            Self::Redis(server)
        } else {
            let server = PostgresServer::start();
            install("postgres", "--database-url", &server.url()).await;
            let client = server.client().await;
            Self::Postgres { server, client }
        }
    }

    fn redis_int(&self, args: &[&str]) -> Result<i64, String> {
        let Self::Redis(server) = self else {
            unreachable!("a Redis call on PostgreSQL")
        };
        let value = server.try_cli(args).map_err(|e| e.to_string())?;
        redis::from_redis_value_ref(&value).map_err(|e| format!("{value:?}: {e}"))
    }

    async fn pg_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, String> {
        let Self::Postgres { client, .. } = self else {
            unreachable!("a PostgreSQL call on Redis")
        };
        client
            .query_one(sql, params)
            .await
            .map_err(|e| format!("{e:?}"))
    }

    #[allow(clippy::too_many_arguments)]
    async fn try_track(
        &self,
        topic: &str,
        phx_ref: &str,
        node: &str,
        key: &str,
        meta: &str,
        max: i64,
        prev: Option<&str>,
    ) -> Result<bool, String> {
        match self {
            Self::Redis(_) => {
                let max = max.to_string();
                let mut args = vec![
                    "FCALL",
                    "switchboard_presence_track",
                    "1",
                    topic,
                    phx_ref,
                    node,
                    key,
                    meta,
                    &max,
                ];
                args.extend(prev);
                Ok(self.redis_int(&args)? == 1)
            }
            Self::Postgres { .. } => {
                let row = self
                    .pg_one(
                        "SELECT switchboard_presence_track($1, $2, $3, $4, $5::text::json, $6, $7)",
                        &[&topic, &phx_ref, &node, &key, &meta, &max, &prev],
                    )
                    .await?;
                Ok(row.get(0))
            }
        }
    }

    async fn track(
        &self,
        topic: &str,
        phx_ref: &str,
        node: &str,
        key: &str,
        meta: &str,
        max: i64,
    ) -> bool {
        self.try_track(topic, phx_ref, node, key, meta, max, None)
            .await
            .unwrap_or_else(|e| panic!("track {topic} {phx_ref}: {e}"))
    }

    async fn untrack(&self, topic: &str, phx_ref: &str) -> bool {
        match self {
            Self::Redis(_) => {
                self.redis_int(&["FCALL", "switchboard_presence_untrack", "1", topic, phx_ref])
                    .unwrap_or_else(|e| panic!("untrack: {e}"))
                    == 1
            }
            Self::Postgres { .. } => self
                .pg_one(
                    "SELECT switchboard_presence_untrack($1, $2)",
                    &[&topic, &phx_ref],
                )
                .await
                .unwrap_or_else(|e| panic!("untrack: {e}"))
                .get(0),
        }
    }

    async fn heartbeat(&self, node: &str, ttl_ms: i64) -> i64 {
        match self {
            Self::Redis(_) => self
                .redis_int(&[
                    "FCALL",
                    "switchboard_presence_heartbeat",
                    "0",
                    node,
                    &ttl_ms.to_string(),
                ])
                .unwrap_or_else(|e| panic!("heartbeat: {e}")),
            Self::Postgres { .. } => self
                .pg_one(
                    "SELECT switchboard_presence_heartbeat($1, $2)",
                    &[&node, &ttl_ms],
                )
                .await
                .unwrap_or_else(|e| panic!("heartbeat: {e}"))
                .get(0),
        }
    }

    async fn sync(&self, node: &str, ttl_ms: i64, entries: &Value) -> i64 {
        let entries = entries.to_string();
        match self {
            Self::Redis(_) => self
                .redis_int(&[
                    "FCALL",
                    "switchboard_presence_sync",
                    "0",
                    node,
                    &ttl_ms.to_string(),
                    &entries,
                ])
                .unwrap_or_else(|e| panic!("sync: {e}")),
            Self::Postgres { .. } => self
                .pg_one(
                    "SELECT switchboard_presence_sync($1, $2, $3::text::json)",
                    &[&node, &ttl_ms, &entries],
                )
                .await
                .unwrap_or_else(|e| panic!("sync: {e}"))
                .get(0),
        }
    }

    /// Every entry of `topic`, sorted by ref: (ref, {"node", "key", "meta"}).
    async fn list(&self, topic: &str) -> Vec<(String, Value)> {
        let mut entries: Vec<(String, Value)> = match self {
            Self::Redis(server) => {
                let flat: Vec<String> =
                    server.cli_as(&["FCALL_RO", "switchboard_presence_list", "1", topic]);
                flat.chunks(2)
                    .map(|pair| {
                        let entry: Value = serde_json::from_str(&pair[1])
                            .unwrap_or_else(|e| panic!("stored entry {:?}: {e}", pair[1]));
                        (pair[0].clone(), entry)
                    })
                    .collect()
            }
            Self::Postgres { client, .. } => client
                .query(
                    "SELECT ref, node, key, meta::text FROM switchboard_presence_list($1)",
                    &[&topic],
                )
                .await
                .unwrap_or_else(|e| panic!("list: {e:?}"))
                .into_iter()
                .map(|row| {
                    let meta: String = row.get(3);
                    let meta: Value = serde_json::from_str(&meta).expect("meta is JSON");
                    let (node, key): (String, String) = (row.get(1), row.get(2));
                    (
                        row.get(0),
                        json!({ "node": node, "key": key, "meta": meta }),
                    )
                })
                .collect(),
        };
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    async fn refs(&self, topic: &str) -> Vec<String> {
        self.list(topic).await.into_iter().map(|(r, _)| r).collect()
    }

    /// `attempts` tracks on `topic` at once, each on its own connection, with bound `max`:
    /// how many were tracked.
    async fn burst(&self, topic: &str, attempts: usize, max: i64) -> usize {
        let mut tasks = Vec::new();
        for i in 0..attempts {
            let (topic, phx_ref) = (topic.to_owned(), format!("c{i}"));
            tasks.push(match self {
                Self::Redis(server) => {
                    let url = server.url();
                    tokio::task::spawn_blocking(move || {
                        let client = redis::Client::open(url).expect("redis url");
                        let mut connection = client.get_connection().expect("connect");
                        let tracked: i64 = redis::cmd("FCALL")
                            .arg("switchboard_presence_track")
                            .arg(1)
                            .arg(&topic)
                            .arg(&phx_ref)
                            .arg("n1")
                            .arg("k")
                            .arg("{}")
                            .arg(max)
                            .query(&mut connection)
                            .expect("track");
                        tracked == 1
                    })
                }
                Self::Postgres { server, .. } => {
                    let url = server.url();
                    tokio::spawn(async move {
                        let (client, connection) =
                            tokio_postgres::connect(&url, tokio_postgres::NoTls)
                                .await
                                .expect("connect");
                        tokio::spawn(connection);
                        client
                            .query_one(
                                "SELECT switchboard_presence_track($1, $2, 'n1', 'k', '{}', $3)",
                                &[&topic, &phx_ref, &max],
                            )
                            .await
                            .expect("track")
                            .get::<_, bool>(0)
                    })
                }
            });
        }
        let mut tracked = 0;
        for task in tasks {
            if task.await.expect("task") {
                tracked += 1;
            }
        }
        tracked
    }

    /// A connection listening to the presence channels of `topics`.
    async fn watch(&self, topics: &[&str]) -> Watch {
        let channels: Vec<String> = topics.iter().map(|topic| channel(topic)).collect();
        let channels: Vec<&str> = channels.iter().map(String::as_str).collect();
        match self {
            Self::Redis(server) => Watch::Redis(RedisWatch::subscribe(server, &channels)),
            Self::Postgres { server, .. } => Watch::Postgres(server.listen(&channels).await),
        }
    }
}

impl Watch {
    /// The next announcement: (channel, payload).
    async fn next_within(&mut self, timeout: Duration) -> Option<(String, String)> {
        match self {
            Self::Redis(watch) => watch.next(timeout),
            Self::Postgres(listener) => listener.next(timeout).await,
        }
    }

    /// The next announcement, which must be `expected` on `topic`'s presence channel.
    async fn expect(&mut self, topic: &str, expected: &str) {
        let got = self.next_within(PATIENCE).await;
        assert_eq!(
            got,
            Some((channel(topic), expected.to_owned())),
            "expected {expected} on {topic}"
        );
    }

    /// The next `count` announcements, in any order.
    async fn take(&mut self, count: usize) -> Vec<(String, String)> {
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            let next = self.next_within(PATIENCE).await;
            got.push(next.unwrap_or_else(|| panic!("{} of {count} announcements came", got.len())));
        }
        got
    }

    async fn expect_silence(&mut self) {
        if let Some(got) = self.next_within(QUIET).await {
            panic!("no announcement was expected, got {got:?}");
        }
    }
}

/// The scenario both backends pass.
async fn scenario(redis: bool) {
    let raw = Raw::start(redis).await;
    let (one, two) = ("room:1", "room:2");
    let mut watch = raw.watch(&[one, two]).await;

    // Track: stored and announced, exactly as core's presence::event reads it.
    assert_eq!(raw.heartbeat("n1", 60_000).await, 0);
    assert!(
        raw.track(one, "r1", "n1", "ada", r#"{"s":"idle"}"#, 2)
            .await
    );
    watch
        .expect(
            one,
            r#"{"op":"join","ref":"r1","node":"n1","key":"ada","meta":{"s":"idle"}}"#,
        )
        .await;
    assert_eq!(
        raw.list(one).await,
        [(
            "r1".to_owned(),
            json!({"node": "n1", "key": "ada", "meta": {"s": "idle"}})
        )]
    );
    if let Raw::Redis(server) = &raw {
        // The stored entry is what parse_entry reads, under the documented key.
        let stored: String = server.cli_as(&[
            "HGET",
            &format!("switchboard:presence:members:{PREFIX}{one}"),
            "r1",
        ]);
        assert_eq!(stored, r#"{"node":"n1","key":"ada","meta":{"s":"idle"}}"#);
    }

    // Idempotent: the same ref again is tracked, once.
    assert!(
        raw.track(one, "r1", "n1", "ada", r#"{"s":"idle"}"#, 2)
            .await
    );
    watch.expect_silence().await;

    // The bound: the second member fits, the third is refused and stores nothing.
    assert!(raw.track(one, "r2", "n1", "bob", "{}", 2).await);
    watch
        .expect(
            one,
            r#"{"op":"join","ref":"r2","node":"n1","key":"bob","meta":{}}"#,
        )
        .await;
    assert!(!raw.track(one, "r3", "n1", "cy", "{}", 2).await, "full");
    watch.expect_silence().await;
    assert_eq!(raw.refs(one).await, ["r1", "r2"]);
    // An already stored ref is not refused at the bound.
    assert!(raw.track(one, "r2", "n1", "bob", "{}", 2).await);

    // An update at the bound: replaces its prev, one announcement carrying prev.
    assert!(raw
        .try_track(one, "r4", "n1", "ada", r#"{"s":"typing"}"#, 2, Some("r1"))
        .await
        .unwrap());
    watch
        .expect(
            one,
            r#"{"op":"join","ref":"r4","node":"n1","key":"ada","meta":{"s":"typing"},"prev":"r1"}"#,
        )
        .await;
    watch.expect_silence().await;
    assert_eq!(raw.refs(one).await, ["r2", "r4"]);

    // Refused arguments change nothing.
    for (meta, why) in [
        (r#"{"phx_ref":"x"}"#, "phx_ field"),
        ("[1]", "not an object"),
    ] {
        let refused = raw.try_track(two, "bad", "n1", "k", meta, 10, None).await;
        assert!(refused.is_err(), "{why}: {refused:?}");
    }
    assert!(raw
        .try_track("__x", "bad", "n1", "k", "{}", 10, None)
        .await
        .is_err());
    assert!(raw
        .try_track(two, "", "n1", "k", "{}", 10, None)
        .await
        .is_err());
    watch.expect_silence().await;
    assert!(raw.list(two).await.is_empty());

    // Untrack: deleted and announced; absent: nothing.
    assert!(raw.untrack(one, "r2").await);
    watch.expect(one, r#"{"op":"leave","ref":"r2"}"#).await;
    assert!(!raw.untrack(one, "r2").await);
    assert!(!raw.untrack(two, "r4").await, "another topic's ref");
    watch.expect_silence().await;
    assert_eq!(raw.refs(one).await, ["r4"]);

    // Heartbeat: a node whose liveness lapsed is reaped by the next heartbeat, with one
    // node_down per topic it had entries on; the reply counts the caller's own entries.
    assert_eq!(raw.heartbeat("n2", 200).await, 0);
    for (topic, phx_ref) in [(one, "a1"), (one, "a2"), (two, "a3")] {
        assert!(raw.track(topic, phx_ref, "n2", "dee", "{}", 100).await);
    }
    let _ = watch.take(3).await;
    assert_eq!(raw.heartbeat("n2", 200).await, 3, "n2 holds three");
    assert_eq!(raw.heartbeat("n1", 60_000).await, 1, "n2 is still alive");
    watch.expect_silence().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(raw.heartbeat("n1", 60_000).await, 1);
    let mut downs = watch.take(2).await;
    downs.sort();
    assert_eq!(
        downs,
        [
            (channel(one), r#"{"op":"node_down","node":"n2"}"#.to_owned()),
            (channel(two), r#"{"op":"node_down","node":"n2"}"#.to_owned()),
        ]
    );
    watch.expect_silence().await;
    assert_eq!(raw.refs(one).await, ["r4"]);
    assert!(raw.list(two).await.is_empty());
    assert_eq!(raw.heartbeat("n2", 60_000).await, 0, "n2 lost its entries");
    assert_eq!(raw.heartbeat("n1", 60_000).await, 1, "nothing more to reap");
    watch.expect_silence().await;

    // Sync: what n1 lacks joins, what it no longer has leaves, what it has stays quiet.
    let held = raw
        .sync(
            "n1",
            60_000,
            &json!([
                [one, "r4", "ada", r#"{"s":"typing"}"#],
                [two, "s1", "eve", r#"{"n":[1,{}]}"#]
            ]),
        )
        .await;
    assert_eq!(held, 2);
    watch
        .expect(
            two,
            r#"{"op":"join","ref":"s1","node":"n1","key":"eve","meta":{"n":[1,{}]}}"#,
        )
        .await;
    watch.expect_silence().await;
    let held = raw
        .sync(
            "n1",
            60_000,
            &json!([[two, "s1", "eve", r#"{"n":[1,{}]}"#]]),
        )
        .await;
    assert_eq!(held, 1);
    watch.expect(one, r#"{"op":"leave","ref":"r4"}"#).await;
    watch.expect_silence().await;
    assert!(raw.list(one).await.is_empty());
    assert_eq!(
        raw.list(two).await,
        [(
            "s1".to_owned(),
            json!({"node": "n1", "key": "eve", "meta": {"n": [1, {}]}})
        )]
    );
    assert_eq!(raw.heartbeat("n1", 60_000).await, 1);

    // Thousands of entries in one sync, then half of them replaced.
    let bulk = |from: usize, to: usize| -> Value {
        Value::Array(
            (from..to)
                .map(|i| {
                    json!([
                        if i % 2 == 0 { one } else { two },
                        format!("b{i}"),
                        format!("u{i}"),
                        format!(r#"{{"i":{i}}}"#)
                    ])
                })
                .collect(),
        )
    };
    assert_eq!(raw.sync("bulk", 60_000, &bulk(0, 3000)).await, 3000);
    let joins = watch.take(3000).await;
    assert!(joins
        .iter()
        .all(|(_, body)| body.starts_with(r#"{"op":"join","ref":"b"#)));
    assert_eq!(raw.sync("bulk", 60_000, &bulk(1500, 4500)).await, 3000);
    let changes = watch.take(3000).await;
    let leaves = changes
        .iter()
        .filter(|(_, body)| body.contains(r#""op":"leave""#))
        .count();
    assert_eq!(leaves, 1500, "b0..b1499 leave, b3000..b4499 join");
    watch.expect_silence().await;
    assert_eq!(
        raw.list(one).await.len() + raw.list(two).await.len(),
        3000 + 1
    );
    // Synced entries count toward the bound of later tracks.
    assert!(!raw.track(one, "late", "n1", "z", "{}", 10).await);

    // Tracks racing on separate connections never pass the bound.
    let topic = "room:burst";
    assert_eq!(raw.burst(topic, 12, 5).await, 5);
    assert_eq!(raw.list(topic).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_presence_functions() {
    scenario(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_presence_functions() {
    scenario(false).await;
}

/// Both libraries side by side on Redis, one `switchboard_channel` on PostgreSQL.
#[tokio::test(flavor = "multi_thread")]
async fn history_and_presence_install_together() {
    let redis = Raw::start(true).await;
    let Raw::Redis(server) = &redis else {
        unreachable!()
    };
    let libraries = format!("{:?}", server.cli(&["FUNCTION", "LIST"]));
    assert!(
        libraries.contains("switchboard_presence_sync"),
        "{libraries}"
    );
    assert!(libraries.contains("switchboard_publish"), "{libraries}");

    let postgres = Raw::start(false).await;
    let row = postgres
        .pg_one(
            "SELECT count(*) FILTER (WHERE proname = 'switchboard_channel'), \
             count(*) FILTER (WHERE proname = 'switchboard_publish'), \
             count(*) FILTER (WHERE proname LIKE 'switchboard_presence_%') FROM pg_proc",
            &[],
        )
        .await
        .unwrap();
    let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((counts.0, counts.1), (1, 1));
    assert!(counts.2 >= 5, "{counts:?}");
    // The presence channel of a long topic is its mapped name, as the node computes it.
    let long = format!("room:{}", "x".repeat(80));
    let row = postgres
        .pg_one(
            "SELECT switchboard_presence_channel($1) = switchboard_channel($2)",
            &[&long, &format!("{PREFIX}__presence:{long}")],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
}
