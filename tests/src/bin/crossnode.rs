//! `crossnode`: measures the bridge between two `switchboard` nodes, through Redis,
//! PostgreSQL, or both one after the other (`--backend redis|postgres|both`; default redis).
//!
//! A publisher socket on node A pushes messages whose payload carries a send timestamp and a
//! sequence number; subscriber sockets on node B receive them through the backend. Two
//! phases, run per backend:
//!
//! 1. **Latency** at a fixed rate (default 10,000 msg/s for 10 s, 10 subscribers on B):
//!    publish→deliver time per delivered frame, p50/p99/p99.9/max, for node B (cross-node)
//!    and for the publisher's own copy on node A (local), plus loss and ordering.
//! 2. **Throughput**: the publisher sends as fast as it can for a few seconds, keeping at most
//!    `--window` messages in flight (sent but not yet delivered on B); messages/s delivered
//!    on B. The window stays under a session's mailbox (4,096 deliveries): with frames this
//!    small the mailbox, not the byte budget, is what cuts a subscriber off as slow (3008),
//!    and a subscriber cut off would measure the slow-consumer limit, not the bridge.
//!
//! Then `redis-benchmark` runs against the same Redis for comparison: the literal
//! `redis-benchmark -p P -t publish -n N -q` first, then, since Redis 7.0's benchmark has no
//! `publish` test (it prints nothing), `PUBLISH` as a custom command with a payload the size
//! of a node's envelope, unpipelined and with `-P 16` (the bridge pipelines its publishes).
//!
//! `redis-benchmark` runs for Redis only. Without `--a`/`--b` it starts its own server
//! (`redis-server`, or a private PostgreSQL cluster through the test harness) and two nodes
//! (the `switchboard` binary next to this one, or `$SWITCHBOARD_BIN`), logging at `warn`,
//! with the push rate limit raised out of the way. With `--a ADDR --b ADDR` it measures a
//! running setup of one backend (add `--redis-port P` for the benchmark). With `both`, the
//! last line is `{"redis": report, "postgres": report}`.
//!
//! Timestamps are taken from one monotonic clock in this process when each frame is
//! written; received frames are not JSON-parsed, the two numbers are found by byte search.
//! Everything (Redis, both nodes, this tool) shares the machine's cores, so the numbers are
//! for comparing builds on one machine, not absolute capacities.
//!
//! Prints a table, then the same figures as one JSON object on the last line.

// A measuring tool: printing its report (and its usage) is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_e2e::postgres::{self, PostgresServer};
use switchboard_e2e::redis::{self, RedisServer};
use switchboard_e2e::{http, Node};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A WebSocket connection to a node.
type Ws = WebSocketStream<TcpStream>;

/// How long a reader waits for more frames once the publisher has finished.
const IDLE: Duration = Duration::from_secs(3);

/// The channel `redis-benchmark` publishes on (no node subscribes to it).
const BENCH_CHANNEL: &str = "crossnode:bench";

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    rate: u64,
    seconds: f64,
    subscribers: usize,
    throughput_seconds: f64,
    throughput_subscribers: usize,
    window: u64,
    a: Option<SocketAddr>,
    b: Option<SocketAddr>,
    redis_port: Option<u16>,
    benchmark_requests: u64,
    backends: Vec<Backend>,
}

/// A backend to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Redis,
    Postgres,
}

impl Backend {
    const fn name(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rate: 10_000,
            seconds: 10.0,
            subscribers: 10,
            throughput_seconds: 5.0,
            throughput_subscribers: 1,
            window: 2_000,
            a: None,
            b: None,
            redis_port: None,
            benchmark_requests: 200_000,
            backends: vec![Backend::Redis],
        }
    }
}

const USAGE: &str = "\
usage: crossnode [options]
  --rate N                    latency phase publish rate, msg/s (10000)
  --seconds S                 latency phase duration (10)
  --subscribers N             subscribers on node B in the latency phase (10)
  --throughput-seconds S      throughput phase duration (5)
  --throughput-subscribers N  subscribers on node B in the throughput phase (1)
  --window N                  most messages in flight in the throughput phase (2000)
  --benchmark-requests N      redis-benchmark -n (200000)
  --a ADDR --b ADDR           measure running nodes (host:port) instead of starting them
  --redis-port P              the running setup's Redis, for redis-benchmark
  --backend B                 redis, postgres or both (redis)
Without --a/--b it starts redis-server and two nodes ($SWITCHBOARD_BIN, else the
switchboard binary next to this one).";

fn parse_args() -> Result<Options, String> {
    let mut options = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--rate" => options.rate = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => options.seconds = value.parse().map_err(|e| bad(&e))?,
            "--subscribers" => options.subscribers = value.parse().map_err(|e| bad(&e))?,
            "--throughput-seconds" => {
                options.throughput_seconds = value.parse().map_err(|e| bad(&e))?;
            }
            "--throughput-subscribers" => {
                options.throughput_subscribers = value.parse().map_err(|e| bad(&e))?;
            }
            "--window" => options.window = value.parse().map_err(|e| bad(&e))?,
            "--benchmark-requests" => {
                options.benchmark_requests = value.parse().map_err(|e| bad(&e))?;
            }
            "--a" => options.a = Some(value.parse().map_err(|e| bad(&e))?),
            "--b" => options.b = Some(value.parse().map_err(|e| bad(&e))?),
            "--redis-port" => options.redis_port = Some(value.parse().map_err(|e| bad(&e))?),
            "--backend" => {
                options.backends = match value.as_str() {
                    "redis" => vec![Backend::Redis],
                    "postgres" => vec![Backend::Postgres],
                    "both" => vec![Backend::Redis, Backend::Postgres],
                    _ => return Err(bad(&"expected redis, postgres or both")),
                };
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if options.a.is_some() != options.b.is_some() {
        return Err("give both --a and --b, or neither".into());
    }
    if options.a.is_some() && options.backends.len() > 1 {
        return Err("--a/--b measure one running setup: name its --backend".into());
    }
    if options.rate == 0 || options.subscribers == 0 || options.throughput_subscribers == 0 {
        return Err("rates and subscriber counts must be at least 1".into());
    }
    if options.window == 0 {
        return Err("--window must be at least 1".into());
    }
    Ok(options)
}

fn main() {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("crossnode: {message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if std::env::var_os("SWITCHBOARD_BIN").is_none() {
        if let Some(sibling) = sibling_binary() {
            // Before any thread exists: the harness reads this variable to find the node.
            std::env::set_var("SWITCHBOARD_BIN", sibling);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("crossnode: cannot start the runtime: {e}");
            std::process::exit(1);
        });
    runtime.block_on(run(options));
}

/// The `switchboard` binary in the same directory as this program, if there is one.
fn sibling_binary() -> Option<PathBuf> {
    let path = std::env::current_exe().ok()?.parent()?.join("switchboard");
    path.is_file().then_some(path)
}

/// A server this tool started (held so that it stops when the setup is dropped).
#[derive(Debug)]
#[allow(dead_code)] // The PostgreSQL server is only held, never read.
enum Server {
    Redis(RedisServer),
    Postgres(PostgresServer),
}

/// The nodes and server measured; owns them when this tool started them.
struct Setup {
    backend: Backend,
    a: SocketAddr,
    b: SocketAddr,
    redis_port: Option<u16>,
    owned: Option<(Server, Node, Node)>,
}

async fn setup(options: &Options, backend: Backend) -> Setup {
    if let (Some(a), Some(b)) = (options.a, options.b) {
        return Setup {
            backend,
            a,
            b,
            redis_port: options.redis_port,
            owned: None,
        };
    }
    let (server, mut args) = match backend {
        Backend::Redis => {
            let server = RedisServer::start();
            let mut args = redis::bridged_args(server.port());
            args.extend(["--channel-prefix".to_owned(), String::new()]);
            (Server::Redis(server), args)
        }
        Backend::Postgres => {
            let server = PostgresServer::start();
            let args = postgres::bridged_args(&server.url());
            (Server::Postgres(server), args)
        }
    };
    // The publisher pushes far above a browser's default allowance.
    args.extend(["--push-rate", "1000000", "--push-burst", "1000000"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [("RUST_LOG", "warn")];
    let node_a = Node::start_with_env(&args, &env);
    let node_b = Node::start_with_env(&args, &env);
    redis::wait_bridge_up(&[&node_a, &node_b]).await;
    let redis_port = match &server {
        Server::Redis(server) => Some(server.port()),
        Server::Postgres(_) => None,
    };
    Setup {
        backend,
        a: node_a.addr(),
        b: node_b.addr(),
        redis_port,
        owned: Some((server, node_a, node_b)),
    }
}

async fn run(options: Options) {
    let mut reports = serde_json::Map::new();
    for backend in options.backends.clone() {
        let report = run_one(&options, backend).await;
        reports.insert(backend.name().to_owned(), report);
    }
    if reports.len() > 1 {
        print_comparison(&reports);
        println!("{}", Value::Object(reports));
    } else if let Some((_, report)) = reports.into_iter().next() {
        println!("{report}");
    }
}

/// Cross-node latency and throughput per backend, side by side.
fn print_comparison(reports: &serde_json::Map<String, Value>) {
    let fmt = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"))
    };
    println!("cross-node, side by side:");
    println!(
        "  {:<10} {:>10} {:>10} {:>10} {:>10} {:>16} {:>9}",
        "backend", "p50 µs", "p99 µs", "p99.9 µs", "missing", "throughput msg/s", "disorder"
    );
    for (name, report) in reports {
        let cross = &report["latency"]["cross_node"];
        println!(
            "  {name:<10} {:>10} {:>10} {:>10} {:>10} {:>16} {:>9}",
            fmt(&cross["latency_us"]["p50"]),
            fmt(&cross["latency_us"]["p99"]),
            fmt(&cross["latency_us"]["p99_9"]),
            cross["missing"],
            fmt(&report["throughput"]["delivered_msgs_per_s_per_subscriber"]),
            cross["disorder"],
        );
    }
    println!();
}

async fn run_one(options: &Options, backend: Backend) -> Value {
    let options = options.clone();
    let setup = setup(&options, backend).await;
    let binary = std::env::var("SWITCHBOARD_BIN").unwrap_or_else(|_| "(running)".into());
    eprintln!(
        "crossnode [{}]: node A {}, node B {}, redis port {:?}, binary {}",
        setup.backend.name(),
        setup.a,
        setup.b,
        setup.redis_port,
        if setup.owned.is_some() {
            binary.as_str()
        } else {
            "(running setup)"
        }
    );

    eprintln!(
        "latency phase: {} msg/s for {} s, {} subscribers on B ...",
        options.rate, options.seconds, options.subscribers
    );
    let latency = latency_phase(&setup, &options).await;
    eprintln!(
        "throughput phase: {} s, window {}, {} subscriber(s) on B ...",
        options.throughput_seconds, options.window, options.throughput_subscribers
    );
    let throughput = throughput_phase(&setup, &options).await;
    let lost = bridge_lost(&setup).await;
    let benchmarks = setup
        .redis_port
        .filter(|_| setup.backend == Backend::Redis)
        .map(|port| {
            eprintln!("redis-benchmark ...");
            run_benchmarks(port, options.benchmark_requests)
        })
        .unwrap_or_default();

    let report = json!({
        "backend": setup.backend.name(),
        "setup": {
            "node_a": setup.a.to_string(),
            "node_b": setup.b.to_string(),
            "redis_port": setup.redis_port,
            "backend": setup.backend.name(),
            "started_here": setup.owned.is_some(),
            "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        },
        "latency": latency,
        "throughput": throughput,
        "bridge_lost_total": lost,
        "redis_benchmark": benchmarks,
    });
    print_table(&options, &report);
    drop(setup);
    report
}

// ---- connections ---------------------------------------------------------------------------

async fn connect(addr: SocketAddr) -> Ws {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    let _ = stream.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake with {addr} failed: {e}"));
    ws
}

/// Joins `topic` with join ref `"1"` and waits for the ok reply.
async fn join(ws: &mut Ws, topic: &str) {
    let frame = format!(r#"["1","1","{topic}","phx_join",{{}}]"#);
    ws.send(Message::text(frame))
        .await
        .unwrap_or_else(|e| panic!("join {topic} failed: {e}"));
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        match next {
            Ok(Some(Ok(Message::Text(text)))) => {
                let text = text.as_str();
                if text.contains("phx_reply") && text.contains(r#""status":"ok""#) {
                    return;
                }
                assert!(!text.contains("phx_reply"), "join {topic} refused: {text}");
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no reply to join {topic}: {other:?}"),
        }
    }
}

/// The number after `key` in `text` (e.g. `"s":` → 42), found by byte search.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    text[start..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(None, |acc: Option<u64>, d| {
            Some(acc.unwrap_or(0) * 10 + u64::from(d - b'0'))
        })
}

/// Nanoseconds since `base`.
fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

// ---- readers -------------------------------------------------------------------------------

/// What the publisher and the readers share.
#[derive(Debug)]
struct Shared {
    /// The clock every timestamp is taken from.
    base: Instant,
    /// Readers that saw a warm-up frame.
    warmed: AtomicUsize,
    /// The last sequence number sent, once the publisher has finished (`u64::MAX` before).
    last_seq: AtomicU64,
    /// Woken as readers make progress (throughput phase).
    progress: Notify,
}

/// One reader's view of the stream.
#[derive(Debug, Default)]
struct Reading {
    /// publish→deliver latencies, ns.
    latencies: Vec<u64>,
    /// Frames with a sequence number received.
    received: u64,
    /// Frames whose sequence number was not above the previous one (duplicate or reordered).
    disorder: u64,
    /// Error replies (only the publisher gets any).
    errors: u64,
    /// First error reply seen.
    first_error: Option<String>,
    /// When the first and the last numbered frame arrived, ns since the shared base.
    first_at: Option<u64>,
    last_at: u64,
    /// How the connection ended, if it did.
    ended: Option<String>,
}

/// Reads `stream` until the frame with the publisher's last sequence number, or [`IDLE`]
/// without frames after the publisher finished. `acked` is set to the highest sequence
/// number seen plus one.
async fn read_numbered(
    mut stream: SplitStream<Ws>,
    shared: Arc<Shared>,
    acked: Arc<AtomicU64>,
    expected: usize,
) -> Reading {
    let mut reading = Reading {
        latencies: Vec::with_capacity(expected),
        ..Reading::default()
    };
    let mut warmed = false;
    let mut last: Option<u64> = None;
    let mut last_frame = Instant::now();
    loop {
        let finished = shared.last_seq.load(Ordering::Acquire);
        if finished != u64::MAX && last.is_some_and(|l| l >= finished) {
            break;
        }
        // Short waits, so the end of publishing is noticed promptly.
        let next = match tokio::time::timeout(Duration::from_millis(50), stream.next()).await {
            Ok(next) => next,
            Err(_) if finished != u64::MAX && last_frame.elapsed() > IDLE => break,
            Err(_) => continue,
        };
        last_frame = Instant::now();
        let text = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                reading.ended = Some(format!("closed by the node: {frame:?}"));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                reading.ended = Some(e.to_string());
                break;
            }
            None => {
                reading.ended = Some("end of stream".into());
                break;
            }
        };
        let now = nanos_since(shared.base);
        let text = text.as_str();
        if let (Some(seq), Some(sent)) =
            (number_after(text, r#""s":"#), number_after(text, r#""t":"#))
        {
            reading.latencies.push(now.saturating_sub(sent));
            reading.received += 1;
            reading.first_at.get_or_insert(now);
            reading.last_at = now;
            if last.is_some_and(|l| seq <= l) {
                reading.disorder += 1;
            } else {
                last = Some(seq);
                acked.store(seq + 1, Ordering::Release);
            }
            if reading.received % 64 == 0 {
                shared.progress.notify_one();
            }
        } else if text.contains(r#""w":"#) {
            if !warmed {
                warmed = true;
                shared.warmed.fetch_add(1, Ordering::AcqRel);
            }
        } else if text.contains(r#""status":"error""#) {
            reading.errors += 1;
            reading.first_error.get_or_insert_with(|| text.to_owned());
        }
    }
    shared.progress.notify_one();
    reading
}

/// A publisher on node A and `subscribers` readers on node B, all joined to `topic`, warmed
/// up until every reader has received a frame from the publisher through Redis.
struct Rig {
    sink: SplitSink<Ws, Message>,
    shared: Arc<Shared>,
    own: tokio::task::JoinHandle<Reading>,
    readers: Vec<tokio::task::JoinHandle<Reading>>,
    acked: Vec<Arc<AtomicU64>>,
    topic: String,
}

async fn rig(setup: &Setup, topic: &str, subscribers: usize, expected: usize) -> Rig {
    let shared = Arc::new(Shared {
        base: Instant::now(),
        warmed: AtomicUsize::new(0),
        last_seq: AtomicU64::new(u64::MAX),
        progress: Notify::new(),
    });
    let mut readers = Vec::new();
    let mut acked = Vec::new();
    for _ in 0..subscribers {
        let mut ws = connect(setup.b).await;
        join(&mut ws, topic).await;
        let (_sink, stream) = ws.split();
        // The sink half is dropped: readers never send (the node's idle timeout is far off).
        let progress = Arc::new(AtomicU64::new(0));
        acked.push(Arc::clone(&progress));
        readers.push(tokio::spawn(read_numbered(
            stream,
            Arc::clone(&shared),
            progress,
            expected,
        )));
    }
    let mut ws = connect(setup.a).await;
    join(&mut ws, topic).await;
    let (mut sink, stream) = ws.split();
    let own = tokio::spawn(read_numbered(
        stream,
        Arc::clone(&shared),
        Arc::new(AtomicU64::new(0)),
        expected,
    ));
    // Warm up: until B has subscribed in Redis, nothing published on A reaches it.
    let warm = format!(r#"["1",null,"{topic}","w",{{"w":1}}]"#);
    let started = Instant::now();
    while shared.warmed.load(Ordering::Acquire) < subscribers + 1 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the subscribers on B received nothing from A within 20 s: is the bridge up?"
        );
        sink.send(Message::text(warm.as_str()))
            .await
            .unwrap_or_else(|e| panic!("warm-up push failed: {e}"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Rig {
        sink,
        shared,
        own,
        readers,
        acked,
        topic: topic.to_owned(),
    }
}

impl Rig {
    fn frame(&self, seq: u64) -> Message {
        let sent = nanos_since(self.shared.base);
        Message::text(format!(
            r#"["1",null,"{}","m",{{"s":{seq},"t":{sent}}}]"#,
            self.topic
        ))
    }

    /// Marks the end of publishing and collects every reader: (own copy on A, readers on B).
    async fn finish(self, sent: u64) -> (Reading, Vec<Reading>) {
        self.shared
            .last_seq
            .store(sent.saturating_sub(1), Ordering::Release);
        let own = self.own.await.unwrap_or_default();
        let mut readers = Vec::new();
        for reader in self.readers {
            readers.push(reader.await.unwrap_or_default());
        }
        drop(self.sink);
        (own, readers)
    }
}

// ---- phases --------------------------------------------------------------------------------

async fn latency_phase(setup: &Setup, options: &Options) -> Value {
    let total = (options.rate as f64 * options.seconds) as u64;
    let expected = usize::try_from(total).unwrap_or(usize::MAX);
    let mut rig = rig(setup, "bench:latency", options.subscribers, expected).await;
    let period = 1e9 / options.rate as f64;
    let start = Instant::now();
    let mut sent = 0_u64;
    let mut max_lag_ns = 0_u64;
    while sent < total {
        let now = nanos_since(start);
        let due = ((now as f64 / period) as u64 + 1).min(total);
        if due > sent {
            let intended = (sent as f64 * period) as u64;
            max_lag_ns = max_lag_ns.max(now.saturating_sub(intended));
            for seq in sent..due {
                let frame = rig.frame(seq);
                if let Err(e) = rig.sink.feed(frame).await {
                    eprintln!("publisher: send failed: {e}");
                    break;
                }
            }
            if let Err(e) = rig.sink.flush().await {
                eprintln!("publisher: flush failed: {e}");
                break;
            }
            sent = due;
        }
        let next = Duration::from_nanos((sent as f64 * period) as u64);
        tokio::time::sleep_until((start + next).into()).await;
    }
    let elapsed = start.elapsed();
    let (own, readers) = rig.finish(sent).await;
    json!({
        "rate_target": options.rate,
        "seconds": options.seconds,
        "subscribers_on_b": options.subscribers,
        "sent": sent,
        "publish_seconds": elapsed.as_secs_f64(),
        "publisher_max_lag_ms": max_lag_ns as f64 / 1e6,
        "cross_node": summarize(&readers, sent),
        "local_on_a": summarize(std::slice::from_ref(&own), sent),
    })
}

async fn throughput_phase(setup: &Setup, options: &Options) -> Value {
    let subscribers = options.throughput_subscribers;
    let mut rig = rig(setup, "bench:throughput", subscribers, 1 << 20).await;
    let duration = Duration::from_secs_f64(options.throughput_seconds);
    let start = Instant::now();
    let start_ns = nanos_since(rig.shared.base);
    let mut sent = 0_u64;
    let mut stalls = 0_u64;
    while start.elapsed() < duration {
        let acked = rig
            .acked
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        let in_flight = sent.saturating_sub(acked);
        if in_flight >= options.window {
            stalls += 1;
            let _ = tokio::time::timeout(Duration::from_millis(2), rig.shared.progress.notified())
                .await;
            continue;
        }
        let batch = (options.window - in_flight).min(256);
        for seq in sent..sent + batch {
            let frame = rig.frame(seq);
            if let Err(e) = rig.sink.feed(frame).await {
                eprintln!("publisher: send failed: {e}");
            }
        }
        if let Err(e) = rig.sink.flush().await {
            eprintln!("publisher: flush failed: {e}");
            break;
        }
        sent += batch;
    }
    let publish_seconds = start.elapsed().as_secs_f64();
    let (own, readers) = rig.finish(sent).await;
    let delivered: Vec<Value> = readers
        .iter()
        .map(|r| {
            let seconds = r.last_at.saturating_sub(start_ns) as f64 / 1e9;
            json!({
                "received": r.received,
                "seconds": seconds,
                "msgs_per_s": if seconds > 0.0 { r.received as f64 / seconds } else { 0.0 },
            })
        })
        .collect();
    let per_subscriber: Vec<f64> = delivered
        .iter()
        .filter_map(|d| d["msgs_per_s"].as_f64())
        .collect();
    let min_rate = per_subscriber.iter().copied().fold(f64::INFINITY, f64::min);
    json!({
        "seconds": options.throughput_seconds,
        "window": options.window,
        "subscribers_on_b": subscribers,
        "sent": sent,
        "publish_msgs_per_s": sent as f64 / publish_seconds,
        "delivered_msgs_per_s_per_subscriber": if min_rate.is_finite() { min_rate } else { 0.0 },
        "delivered_frames_per_s_on_b": per_subscriber.iter().sum::<f64>(),
        "window_stalls": stalls,
        "per_subscriber": delivered,
        "cross_node": summarize(&readers, sent),
        "local_on_a": summarize(std::slice::from_ref(&own), sent),
    })
}

/// Counts and latency percentiles over `readings`, each of which should have seen `sent`.
fn summarize(readings: &[Reading], sent: u64) -> Value {
    let mut all: Vec<u64> = readings
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    all.sort_unstable();
    let us = |q: f64| percentile(&all, q).map(|ns| ns as f64 / 1e3);
    let received: u64 = readings.iter().map(|r| r.received).sum();
    let expected = sent * readings.len() as u64;
    json!({
        "readers": readings.len(),
        "received": received,
        "expected": expected,
        "missing": expected.saturating_sub(received),
        "disorder": readings.iter().map(|r| r.disorder).sum::<u64>(),
        "error_replies": readings.iter().map(|r| r.errors).sum::<u64>(),
        "first_error": readings.iter().find_map(|r| r.first_error.clone()),
        "ended": readings.iter().filter_map(|r| r.ended.clone()).collect::<Vec<_>>(),
        "latency_us": {
            "p50": us(0.50),
            "p90": us(0.90),
            "p99": us(0.99),
            "p99_9": us(0.999),
            "max": all.last().map(|ns| *ns as f64 / 1e3),
            "mean": if all.is_empty() { None } else {
                Some(all.iter().map(|ns| *ns as f64).sum::<f64>() / all.len() as f64 / 1e3)
            },
        },
    })
}

/// The `q` quantile of sorted `values` (nearest rank).
fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// `switchboard_bridge_lost_total` on each node.
async fn bridge_lost(setup: &Setup) -> Value {
    let mut lost = serde_json::Map::new();
    for (name, addr) in [("a", setup.a), ("b", setup.b)] {
        let value = http::request(addr, "GET", "/metrics", &[], &[])
            .await
            .ok()
            .map(|r| http::parse_metrics(&r.text()))
            .and_then(|m| m.get("switchboard_bridge_lost_total").copied());
        lost.insert(name.to_owned(), json!(value));
    }
    Value::Object(lost)
}

// ---- redis-benchmark ----------------------------------------------------------------------

/// Runs `redis-benchmark` three ways (see the file's doc): their commands and results.
fn run_benchmarks(port: u16, requests: u64) -> Value {
    let binary = std::env::var("REDIS_BENCHMARK").unwrap_or_else(|_| "redis-benchmark".into());
    // A payload the size of a node's envelope of this tool's frames.
    let payload = r#"{"switchboard":{"event":"m","origin":"0123456789abcdef"},"payload":{"s":123456,"t":12345678901}}"#;
    let port = port.to_string();
    let n = requests.to_string();
    let runs: [(&str, Vec<&str>); 3] = [
        (
            "literal",
            vec!["-p", &port, "-t", "publish", "-n", &n, "-q"],
        ),
        (
            "publish",
            vec![
                "-p",
                &port,
                "-n",
                &n,
                "-q",
                "publish",
                BENCH_CHANNEL,
                payload,
            ],
        ),
        (
            "publish_pipelined_16",
            vec![
                "-p",
                &port,
                "-n",
                &n,
                "-q",
                "-P",
                "16",
                "publish",
                BENCH_CHANNEL,
                payload,
            ],
        ),
    ];
    let mut out = serde_json::Map::new();
    for (name, args) in runs {
        let command = format!("{binary} {}", shell_words(&args));
        let result = match Command::new(&binary).args(&args).output() {
            Ok(output) => {
                let text = String::from_utf8_lossy(&output.stdout);
                // Progress lines end in `\r`; the result is the last segment.
                let last = text
                    .split(['\r', '\n'])
                    .map(str::trim)
                    .rfind(|s| !s.is_empty())
                    .unwrap_or("")
                    .to_owned();
                let rps = last
                    .split(": ")
                    .last()
                    .and_then(|s| s.split(" requests per second").next())
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .filter(|_| last.contains("requests per second"));
                json!({
                    "command": command,
                    "requests_per_s": rps,
                    "output": if last.is_empty() { "(no output)".to_owned() } else { last },
                })
            }
            Err(e) => {
                json!({ "command": command, "requests_per_s": null, "output": e.to_string() })
            }
        };
        out.insert(name.to_owned(), result);
    }
    Value::Object(out)
}

/// Arguments quoted for a shell where needed, for the report.
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
            {
                (*a).to_owned()
            } else {
                format!("'{a}'")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---- report --------------------------------------------------------------------------------

fn print_table(options: &Options, report: &Value) {
    let fmt = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"))
    };
    let row = |name: &str, s: &Value| {
        let l = &s["latency_us"];
        println!(
            "  {name:<26} {:>9} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9}",
            s["received"].to_string(),
            s["missing"].to_string(),
            s["disorder"].to_string(),
            fmt(&l["p50"]),
            fmt(&l["p90"]),
            fmt(&l["p99"]),
            fmt(&l["p99_9"]),
            fmt(&l["max"]),
        );
    };
    let header = || {
        println!(
            "  {:<26} {:>9} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "", "received", "missing", "disord", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
        );
    };
    let latency = &report["latency"];
    println!();
    println!(
        "latency: publisher on A at {} msg/s for {} s ({} sent in {:.2} s, pacer max lag {:.2} ms); {} subscribers on B",
        options.rate,
        options.seconds,
        latency["sent"],
        latency["publish_seconds"].as_f64().unwrap_or(0.0),
        latency["publisher_max_lag_ms"].as_f64().unwrap_or(0.0),
        options.subscribers
    );
    header();
    let backend = report["backend"].as_str().unwrap_or("backend");
    println!("[{backend}]");
    row(&format!("cross-node A→{backend}→B"), &latency["cross_node"]);
    row("local on A (own copy)", &latency["local_on_a"]);
    let throughput = &report["throughput"];
    println!();
    println!(
        "throughput: as fast as possible for {} s, window {}, {} subscriber(s) on B",
        options.throughput_seconds, options.window, options.throughput_subscribers
    );
    println!(
        "  published {} msgs ({:.0} msg/s); delivered on B {:.0} msg/s per subscriber ({:.0} frames/s)",
        throughput["sent"],
        throughput["publish_msgs_per_s"].as_f64().unwrap_or(0.0),
        throughput["delivered_msgs_per_s_per_subscriber"]
            .as_f64()
            .unwrap_or(0.0),
        throughput["delivered_frames_per_s_on_b"]
            .as_f64()
            .unwrap_or(0.0),
    );
    header();
    row("cross-node under load", &throughput["cross_node"]);
    row("local on A under load", &throughput["local_on_a"]);
    println!();
    println!("bridge_lost_total: {}", report["bridge_lost_total"]);
    println!();
    if backend != "redis" {
        return;
    }
    println!("redis-benchmark (same Redis):");
    if let Some(runs) = report["redis_benchmark"].as_object() {
        for (name, run) in runs {
            println!(
                "  {name:<22} {:>12}  $ {}",
                run["requests_per_s"]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.0} req/s")),
                run["command"].as_str().unwrap_or("")
            );
            if run["requests_per_s"].is_null() {
                println!("  {:<22} {:>12}    output: {}", "", "", run["output"]);
            }
        }
    } else {
        println!("  skipped (no --redis-port)");
    }
    println!();
}
