//! Faults between the nodes and their backend, judged against what the node promises:
//!
//! - a join answered `ok` is subscribed everywhere (the first local subscriber's `ok` waits for
//!   the backend's SUBSCRIBE/LISTEN confirmation);
//! - a publish answered `200`/`ok` was accepted by the backend, so every subscriber joined
//!   before it gets it while the nodes are ready; one the backend did not take is answered
//!   `503` / "upstream unavailable";
//! - a backend that stops answering is noticed within `--backend-timeout`, the bridge
//!   reconnects and resubscribes, and `/readyz` is green again within about two seconds of the
//!   backend answering;
//! - what waits for the backend is bounded (`--bridge-queue-messages`, `--bridge-queue-bytes`):
//!   past it a publish is refused at once and counted in `switchboard_bridge_lost_total`.
//!
//! One suite for both backends: every scenario is an `async fn(BackendKind)`, and `both!`
//! makes a `redis` and a `postgres` test of it. Two nodes, A and B, reach a private backend
//! through a [`FaultProxy`] each, so one node's link can be faulted alone, and run with
//! `--backend-timeout 2s` and `--subscribe-timeout 2s`. A scenario records a [`History`]:
//! HTTP and socket publishers on both nodes publishing sequenced payloads continuously,
//! subscribers on both nodes (membership from the instant their join was answered `ok`), and a
//! [`ReadinessSampler`] on both nodes; it ends with the history check (nothing missing while
//! green, nothing duplicated, reordered or invented) plus its own assertions.
//!
//! Scenarios 1 to 5 also run *recovering subscribers* ([`Subscriber`]) on topics with history
//! (`hist:*`, [`HISTORY_SIZE`] publications kept, from the nodes' config file): two per node,
//! one of them through a client-side [`FaultProxy`] so its socket can be cut. Each rejoins
//! with `since` whenever its socket drops or the node ends a membership (`phx_error`: the node
//! does so for topics with history when its backend link is lost or a position was skipped),
//! as phoenix.js does; it does not watch `/readyz`. For them readiness excuses nothing: every
//! publish answered ok is delivered exactly once and in order, across every outage, or the
//! subscriber was told `recovered: false` for exactly the span it lost
//! ([`switchboard_e2e::recovery`]), and the node never delivers a hole in a stream.
//! Plain subscribers and socket publishers keep to the topics without history (a membership
//! the node ends is theirs to rejoin; only the recovering subscriber does); the HTTP
//! publishers publish to every topic.
//!
//! # Scenarios
//!
//! 1. [`steady_state`]: no fault, a control (nothing refused, nothing missing).
//! 2. [`cut_link`]: A's connections reset twice mid-stream; A reconnects at once.
//! 3. [`black_hole`]: A's link silent for twice the backend timeout; A notices within it, B
//!    stays ready, A recovers once the link heals.
//! 4. [`freeze_backend`]: the backend stopped (SIGSTOP) for twice the backend timeout; both
//!    nodes notice within it and recover after the thaw.
//! 5. [`kill_backend`]: the backend killed and restarted on its port mid-stream.
//! 6. [`slow_links`]: 300 ms each way on both links: slow, not dead; joins still wait for the
//!    backend's confirmation.
//! 7. [`flood_while_black_holed`]: 48 MB of pushes on A while its link is black-holed: the
//!    queue's bounds, refusals at once, `lost_total`, RSS (`--backend-timeout 30s` here, so
//!    the flood is read before the black hole could be noticed).
//! 8. [`many_topics_resubscribe`]: 50,000 topics on A resubscribed after a backend crash
//!    (at the default `--backend-timeout`, see there).
//! 9. [`join_guarantee`]: publishes sent the moment B's joins are answered, through cuts of
//!    either link and joins that race the unsubscribe linger.
//!
//! A black hole or a frozen backend is invisible until the node's liveness check notices it:
//! a publish accepted by the backend meanwhile cannot reach the cut-off node, and no node can
//! know sooner. Those scenarios hand the check the fault's span as not fit to deliver, and
//! assert separately that the node noticed within the bound. A cut or a crash closes the
//! connections, so there the readiness sampler alone decides.
//!
//! Scenarios run one at a time ([`SERIAL`]): their time bounds assume the two cores are not
//! shared with another scenario. The measured figures (time to notice, time to recover, 503
//! counts, RSS growth) are printed; see them with
//! `cargo test -p switchboard-e2e --test faults -- --nocapture --test-threads 1`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::history::{payload, Acked, GreenWindows, ReadinessSampler, Report};
use switchboard_e2e::proxy::FaultProxy;
use switchboard_e2e::recovering::{self, ReadyWatch, Subscriber};
use switchboard_e2e::recovery::{Event, Position};
use switchboard_e2e::{http, BackendKind, BackendServer, Client, History, Incoming, Node, Rng};
use switchboard_e2e::{PhxFrame, PATIENCE};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// `--backend-timeout` of the nodes (scenario 7 sets its own, see there).
const BACKEND_TIMEOUT: Duration = Duration::from_secs(2);

/// `--subscribe-timeout` of the nodes.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How far past `--backend-timeout` a node may notice a silent backend: the `/readyz` poll,
/// the debug build and a busy two-core machine.
const NOTICE_SLACK: Duration = Duration::from_millis(1000);

/// How soon after the backend answers again a node must be ready: "within about 2 s"
/// (reconnect backoff capped near 500 ms, a connect, the resubscription), plus the poll.
const RECOVERY_BOUND: Duration = Duration::from_millis(2500);

/// The history check's grace: a publish is owed only if its answer came this long before the
/// green window ended (a message in flight when a link is cut is not owed).
const GRACE: Duration = Duration::from_millis(500);

/// How long subscribers keep reading after the publishers stopped.
const SETTLE: Duration = Duration::from_millis(1000);

/// How long a socket publisher waits for the reply to a push before calling it unknown.
const REPLY_PATIENCE: Duration = Duration::from_secs(8);

/// The error reason of a push the backend did not take.
const UPSTREAM_DOWN: &str = "upstream unavailable: delivered on this node only";

/// The error reason of a join whose subscription was not confirmed in time (2 s here).
const SUBSCRIBE_TIMED_OUT: &str =
    "the backend did not confirm the subscription within 2s; try again";

/// The namespace with history: `[channels.hist]` in the nodes' config file.
const HISTORY_NAMESPACE: &str = "hist";

/// Publications kept per topic of [`HISTORY_NAMESPACE`]: far more than a scenario publishes
/// to one, so a `recovered: false` can only mean the stream was lost.
const HISTORY_SIZE: usize = 10_000;

/// The reason of a join with `since` while the backend is unreachable (it is retried).
const HISTORY_UNAVAILABLE: &str = "history unavailable";

/// One scenario at a time (see the module documentation).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Prints a measured figure for the maintainers (the workspace forbids stray prints).
#[allow(clippy::print_stderr)]
fn report(kind: BackendKind, scenario: &str, figures: &str) {
    eprintln!("[faults/{kind}/{scenario}] {figures}");
}

/// Milliseconds, for the printed figures.
fn ms(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
}

// ---- the cluster --------------------------------------------------------------------------

/// Which node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// A private backend and two nodes, each reaching it through its own [`FaultProxy`].
struct Cluster {
    kind: BackendKind,
    backend: BackendServer,
    proxy_a: FaultProxy,
    proxy_b: FaultProxy,
    a: Node,
    b: Node,
}

/// The nodes' flags: the short timeouts, and limits raised above what the scenarios do (the
/// publishers' rates, the joins of scenarios 8 and 9); an idle timeout longer than any
/// scenario, as the recording sockets send nothing.
fn flags(overrides: &[(&str, &str)]) -> Vec<String> {
    let backend_timeout = format!("{}s", BACKEND_TIMEOUT.as_secs());
    let subscribe_timeout = format!("{}s", SUBSCRIBE_TIMEOUT.as_secs());
    let mut flags: Vec<(&str, String)> = vec![
        ("--backend-timeout", backend_timeout),
        ("--subscribe-timeout", subscribe_timeout),
        ("--push-rate", "100000".into()),
        ("--push-burst", "100000".into()),
        ("--join-rate", "100000".into()),
        ("--join-burst", "100000".into()),
        ("--idle-timeout", "10m".into()),
    ];
    for (name, value) in overrides {
        match flags.iter_mut().find(|(n, _)| n == name) {
            Some(flag) => flag.1 = (*value).to_owned(),
            None => flags.push((name, (*value).to_owned())),
        }
    }
    flags
        .into_iter()
        .flat_map(|(name, value)| [name.to_owned(), value])
        .collect()
}

/// A config file giving [`HISTORY_NAMESPACE`] a history of [`HISTORY_SIZE`], unique to the
/// calling cluster.
fn config_file() -> std::path::PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "switchboard-faults-{}-{}.toml",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let text = format!("[channels.{HISTORY_NAMESPACE}]\nhistory = {HISTORY_SIZE}\n");
    std::fs::write(&path, text).expect("the nodes' config file");
    path
}

impl Cluster {
    /// Starts the backend, the proxies and both nodes (with the default [`flags`] changed by
    /// `overrides`), and waits until both nodes are ready.
    async fn start(kind: BackendKind, overrides: &[(&str, &str)]) -> Self {
        let backend = tokio::task::spawn_blocking(move || BackendServer::start(kind))
            .await
            .expect("the backend starts");
        let proxy_a = FaultProxy::start(backend.addr());
        let proxy_b = FaultProxy::start(backend.addr());
        let config = config_file();
        let node = |proxy: &FaultProxy| {
            let mut args = backend.node_args(&backend.url_via(proxy.addr()));
            args.extend(["--config".to_owned(), config.to_string_lossy().into_owned()]);
            args.extend(flags(overrides));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Node::start(&args)
        };
        let (a, b) = (node(&proxy_a), node(&proxy_b));
        let cluster = Self {
            kind,
            backend,
            proxy_a,
            proxy_b,
            a,
            b,
        };
        let started = Instant::now();
        for side in [Side::A, Side::B] {
            let _ = cluster.until_ready(side, true, started, PATIENCE).await;
        }
        cluster
    }

    fn node(&self, side: Side) -> &Node {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    fn proxy(&self, side: Side) -> &FaultProxy {
        match side {
            Side::A => &self.proxy_a,
            Side::B => &self.proxy_b,
        }
    }

    fn addrs(&self) -> [SocketAddr; 2] {
        [self.a.addr(), self.b.addr()]
    }

    /// Both nodes' recent logs and the backend's, for failure messages.
    fn logs(&self) -> String {
        format!(
            "node A log:\n{}\nnode B log:\n{}\n{} log:\n{}",
            self.a.log_tail(30),
            self.b.log_tail(30),
            self.kind,
            self.backend.log_tail(10)
        )
    }

    /// Polls `/readyz` of `side` every 10 ms until it is ready (`200`, bridge up) or not
    /// (`503`, bridge down), as `ready` says: the time since `since`.
    async fn until_ready(
        &self,
        side: Side,
        ready: bool,
        since: Instant,
        limit: Duration,
    ) -> Duration {
        let node = self.node(side);
        loop {
            if let Ok(response) = http::request(node.addr(), "GET", "/readyz", &[], &[]).await {
                let bridge = serde_json::from_slice::<Value>(&response.body)
                    .ok()
                    .and_then(|body| body["bridge"].as_str().map(str::to_owned));
                let (status, wanted) = if ready { (200, "up") } else { (503, "down") };
                if response.status == status && bridge.as_deref() == Some(wanted) {
                    return since.elapsed();
                }
            }
            assert!(
                since.elapsed() < limit,
                "node {side:?} did not become {} within {limit:?}\n{}",
                if ready { "ready" } else { "not ready" },
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the reconnect counter of `side` has passed `before` and it is ready: the
    /// time since `since`. For a fault the node may not have noticed yet when it heals.
    async fn until_reconnected(&self, side: Side, before: f64, since: Instant) -> Duration {
        http::eventually(PATIENCE, "a reconnect", || async {
            let now = self
                .metric(side, "switchboard_bridge_reconnects_total")
                .await;
            if now > before {
                Ok(())
            } else {
                Err(now.to_string())
            }
        })
        .await;
        self.until_ready(side, true, since, PATIENCE).await
    }

    async fn metric(&self, side: Side, name: &str) -> f64 {
        self.node(side).metric(name).await
    }

    /// `Report::assert_ok`, with the logs printed first when it fails.
    fn assert_report(&self, checked: &Report) {
        if !checked.is_ok() {
            report_logs(self.kind, &self.logs());
        }
        checked.assert_ok();
    }
}

#[allow(clippy::print_stderr)]
fn report_logs(kind: BackendKind, logs: &str) {
    eprintln!("[faults/{kind}] the history check failed; logs:\n{logs}");
}

// ---- traffic: publishers and subscribers recording into a History --------------------------

/// The workload of a scenario.
#[derive(Debug, Clone)]
struct Plan {
    /// Topics published to, round robin, and joined by every subscriber.
    topics: Vec<String>,
    /// Recording subscriber sockets per node.
    subscribers: usize,
    /// HTTP publishers per node.
    http_publishers: usize,
    /// Socket publishers per node (joined to every topic, so also recording subscribers).
    socket_publishers: usize,
    /// Pause between two publishes of one publisher.
    interval: Duration,
    /// Recovering subscribers per node, joined to the topics of [`HISTORY_NAMESPACE`]; the
    /// first of each node connects through a client-side proxy ([`Traffic::cut_clients`]).
    recovering: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            topics: (0..3).map(|i| format!("fault:{i}")).collect(),
            subscribers: 2,
            http_publishers: 1,
            socket_publishers: 1,
            interval: Duration::from_millis(10),
            recovering: 0,
        }
    }
}

impl Plan {
    /// The default plan plus two topics with history, which the HTTP publishers publish to
    /// too, and two recovering subscribers per node.
    fn recovering() -> Self {
        let mut plan = Self::default();
        plan.topics
            .extend((0..2).map(|i| format!("{HISTORY_NAMESPACE}:{i}")));
        plan.recovering = 2;
        plan
    }

    /// The topics without history: plain subscribers and socket publishers join these.
    fn live_topics(&self) -> Vec<String> {
        let prefix = format!("{HISTORY_NAMESPACE}:");
        self.topics
            .iter()
            .filter(|t| !t.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// The topics with history.
    fn history_topics(&self) -> Vec<String> {
        let prefix = format!("{HISTORY_NAMESPACE}:");
        self.topics
            .iter()
            .filter(|t| t.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

/// What one publisher saw.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    refused: usize,
    unknown: usize,
    /// Answers that are neither success nor the documented refusal.
    unexpected: Vec<String>,
    /// How its socket ended, if it did before it was told to stop.
    ended: Option<String>,
}

/// Why no reply came.
#[derive(Debug)]
enum NoReply {
    Timeout,
    Ended(String),
}

/// Records a broadcast received by `socket`.
fn record(history: &History, socket: &str, frame: &Value) {
    if frame.is_broadcast() {
        let _ = history.delivered_payload(socket, frame.topic(), frame.payload(), Instant::now());
    }
}

/// Reads `client` until the reply to `msg_ref`, recording the broadcasts met on the way.
async fn await_reply(
    client: &mut Client,
    msg_ref: &str,
    socket: &str,
    history: &History,
    patience: Duration,
) -> Result<Value, NoReply> {
    let deadline = Instant::now() + patience;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NoReply::Timeout);
        }
        match client.next_incoming(left).await {
            None => return Err(NoReply::Timeout),
            Some(Incoming::Frame(frame)) if frame.is_reply_to(msg_ref) => return Ok(frame),
            Some(Incoming::Frame(frame)) => record(history, socket, &frame),
            Some(other) => return Err(NoReply::Ended(format!("{other:?}"))),
        }
    }
}

/// Reads `client` (a recording subscriber) until `stop`: its broadcasts go to `history`.
/// `Err` says how the socket ended, if it did first.
async fn read_until(
    mut client: Client,
    socket: String,
    history: Arc<History>,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    for frame in client.take_pending() {
        record(&history, &socket, &frame);
    }
    while !*stop.borrow() {
        match client.next_incoming(Duration::from_millis(50)).await {
            None => {}
            Some(Incoming::Frame(frame)) => record(&history, &socket, &frame),
            Some(other) => {
                let _ = history.left_all(&socket, Instant::now());
                return Err(format!("{socket}: {other:?}"));
            }
        }
    }
    Ok(())
}

/// Joins `topics` on `client`, recording each membership from the instant its `ok` arrived.
async fn join_recorded(client: &mut Client, socket: &str, topics: &[String], history: &History) {
    for topic in topics {
        let reply = client.join(topic).await;
        let at = Instant::now();
        assert_eq!(reply.status(), "ok", "{socket} joining {topic}: {reply}");
        assert_eq!(
            reply.response().get("upstream"),
            None,
            "{socket} joining {topic} with the bridge up: {reply}"
        );
        history.joined(socket, topic, at);
    }
}

/// Publishes `payload(name, seq)` over HTTP on `addr`, round robin over `topics`, every
/// `interval` until `stop`.
async fn http_publisher(
    addr: SocketAddr,
    name: String,
    topics: Vec<String>,
    history: Arc<History>,
    interval: Duration,
    stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut seqs = vec![0_u64; topics.len()];
    let mut turn = 0;
    while !*stop.borrow() {
        let t = turn % topics.len();
        turn += 1;
        let seq = seqs[t];
        seqs[t] += 1;
        let _ = publish_http(addr, &name, &topics[t], seq, &history, &mut tally).await;
        tokio::time::sleep(interval).await;
    }
    tally
}

/// One HTTP publish of `payload(name, seq)` on `topic`, recorded and counted: its answer.
async fn publish_http(
    addr: SocketAddr,
    name: &str,
    topic: &str,
    seq: u64,
    history: &History,
    tally: &mut Tally,
) -> Acked {
    let body = json!({ "topic": topic, "event": "seq", "payload": payload(name, seq) });
    let sent = Instant::now();
    let response = http::request(
        addr,
        "POST",
        "/api/publish",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    let acked = Instant::now();
    let ack = match response {
        Ok(response) if response.status == 200 => {
            let body = serde_json::from_slice::<Value>(&response.body).unwrap_or_default();
            if let Some(position) = body["position"].as_str() {
                history.answered_at(name, topic, seq, position);
            }
            Acked::Ok
        }
        Ok(response) => {
            let code = serde_json::from_slice::<Value>(&response.body)
                .ok()
                .and_then(|body| body["error"]["code"].as_str().map(str::to_owned));
            if response.status != 503 || code.as_deref() != Some("upstream_unavailable") {
                tally
                    .unexpected
                    .push(format!("{name}: {} {}", response.status, response.text()));
            }
            Acked::Refused(format!("{} {code:?}", response.status))
        }
        Err(_) => Acked::Unknown,
    };
    match ack {
        Acked::Ok => tally.ok += 1,
        Acked::Refused(_) => tally.refused += 1,
        Acked::Unknown => tally.unknown += 1,
    }
    history.published(name, topic, seq, sent, acked, ack.clone());
    ack
}

/// Pushes `payload(name, seq)` on `client` (joined to every topic), round robin, waiting for
/// each reply, every `interval` until `stop_publishing`; then keeps recording what arrives
/// until `stop_reading`.
async fn socket_publisher(
    mut client: Client,
    name: String,
    topics: Vec<String>,
    history: Arc<History>,
    interval: Duration,
    stop_publishing: watch::Receiver<bool>,
    stop_reading: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut seqs = vec![0_u64; topics.len()];
    let mut turn = 0;
    while !*stop_publishing.borrow() {
        let t = turn % topics.len();
        turn += 1;
        let seq = seqs[t];
        seqs[t] += 1;
        let sent = Instant::now();
        let msg_ref = client.push(&topics[t], "seq", payload(&name, seq)).await;
        let reply = await_reply(&mut client, &msg_ref, &name, &history, REPLY_PATIENCE).await;
        let acked = Instant::now();
        let ack = match reply {
            Ok(frame) if frame.status() == "ok" => Acked::Ok,
            Ok(frame) => {
                if frame.reason() != UPSTREAM_DOWN {
                    tally.unexpected.push(format!("{name}: {frame}"));
                }
                Acked::Refused(frame.reason().to_owned())
            }
            Err(NoReply::Timeout) => Acked::Unknown,
            Err(NoReply::Ended(how)) => {
                history.published(&name, &topics[t], seq, sent, acked, Acked::Unknown);
                tally.unknown += 1;
                let _ = history.left_all(&name, acked);
                tally.ended = Some(how);
                return tally;
            }
        };
        match ack {
            Acked::Ok => tally.ok += 1,
            Acked::Refused(_) => tally.refused += 1,
            Acked::Unknown => tally.unknown += 1,
        }
        history.published(&name, &topics[t], seq, sent, acked, ack);
        tokio::time::sleep(interval).await;
    }
    if let Err(how) = read_until(client, name, Arc::clone(&history), stop_reading).await {
        tally.ended = Some(how);
    }
    tally
}

/// Publishers and subscribers running on a cluster, and the readiness sampler.
struct Traffic {
    history: Arc<History>,
    sampler: ReadinessSampler,
    stop_publishing: watch::Sender<bool>,
    stop_reading: watch::Sender<bool>,
    publishers: Vec<JoinHandle<Tally>>,
    subscribers: Vec<JoinHandle<Result<(), String>>>,
    recovering: Vec<JoinHandle<recovering::Tally>>,
    /// One per node with recovering subscribers.
    watches: Vec<ReadyWatch>,
    /// The client-side proxies of the first recovering subscriber of each node.
    client_proxies: Vec<FaultProxy>,
}

/// What a scenario's traffic recorded.
struct Recorded {
    history: Arc<History>,
    green: GreenWindows,
    /// Every publisher's tally, summed.
    tally: Tally,
    /// Every recovering subscriber's tally, summed.
    recovering: recovering::Tally,
}

impl Traffic {
    /// Starts the sampler, joins the subscribers, then starts the publishers.
    async fn start(cluster: &Cluster, plan: &Plan) -> Self {
        let history = Arc::new(History::new());
        let sampler = ReadinessSampler::start(&cluster.addrs());
        let (stop_publishing, publishing) = watch::channel(false);
        let (stop_reading, reading) = watch::channel(false);
        let mut traffic = Self {
            history,
            sampler,
            stop_publishing,
            stop_reading,
            publishers: Vec::new(),
            subscribers: Vec::new(),
            recovering: Vec::new(),
            watches: Vec::new(),
            client_proxies: Vec::new(),
        };
        for side in [Side::A, Side::B] {
            let node = cluster.node(side);
            for i in 0..plan.subscribers {
                let name = format!("{side:?}-sub{i}");
                traffic.subscribe(node, name, &plan.live_topics()).await;
            }
            traffic.start_recovering(side, node, plan).await;
            for i in 0..plan.socket_publishers {
                let name = format!("{side:?}-ws{i}");
                let mut client = node.connect().await;
                join_recorded(&mut client, &name, &plan.live_topics(), &traffic.history).await;
                traffic.publishers.push(tokio::spawn(socket_publisher(
                    client,
                    name,
                    plan.live_topics(),
                    Arc::clone(&traffic.history),
                    plan.interval,
                    publishing.clone(),
                    reading.clone(),
                )));
            }
            for i in 0..plan.http_publishers {
                traffic.publishers.push(tokio::spawn(http_publisher(
                    node.addr(),
                    format!("{side:?}-http{i}"),
                    plan.topics.clone(),
                    Arc::clone(&traffic.history),
                    plan.interval,
                    publishing.clone(),
                )));
            }
        }
        traffic
    }

    /// `plan.recovering` recovering subscribers on `node` (the first through a client-side
    /// proxy), once each has joined every topic with history.
    async fn start_recovering(&mut self, side: Side, node: &Node, plan: &Plan) {
        if plan.recovering == 0 {
            return;
        }
        let watch = ReadyWatch::start(node.addr());
        for i in 0..plan.recovering {
            let addr = if i == 0 {
                let proxy = FaultProxy::start(node.addr());
                let addr = proxy.addr();
                self.client_proxies.push(proxy);
                addr
            } else {
                node.addr()
            };
            let subscriber = Subscriber {
                name: format!("{side:?}-rec{i}"),
                url: format!("ws://{addr}/socket/websocket?vsn=2.0.0"),
                topics: plan.history_topics(),
                history: Arc::clone(&self.history),
                ready: watch.subscribe(),
                stop: self.stop_reading.subscribe(),
                seed: 0x5eed_0000 + u64::try_from(self.recovering.len()).expect("small"),
            };
            let (task, joined) = subscriber.spawn();
            tokio::time::timeout(PATIENCE, joined)
                .await
                .expect("a recovering subscriber joined its topics in time")
                .expect("a recovering subscriber joined its topics");
            self.recovering.push(task);
        }
        self.watches.push(watch);
    }

    /// Resets the sockets of the recovering subscribers behind client-side proxies: they
    /// reconnect and recover.
    fn cut_clients(&self) {
        for proxy in &self.client_proxies {
            proxy.cut_existing();
        }
    }

    /// A recording subscriber `name` on `node`, joined to `topics`.
    async fn subscribe(&mut self, node: &Node, name: String, topics: &[String]) {
        let mut client = node.connect().await;
        join_recorded(&mut client, &name, topics, &self.history).await;
        let reading = self.stop_reading.subscribe();
        self.subscribers.push(tokio::spawn(read_until(
            client,
            name,
            Arc::clone(&self.history),
            reading,
        )));
    }

    /// Stops the publishers, lets the subscribers read for `settle` more, stops them and the
    /// sampler. Panics if a socket ended on its own or a publish got an undocumented answer.
    async fn finish(self, settle: Duration) -> Recorded {
        let _ = self.stop_publishing.send(true);
        let mut tally = Tally::default();
        let mut ended = Vec::new();
        // Socket publishers go on reading until `stop_reading`.
        tokio::time::sleep(settle).await;
        let _ = self.stop_reading.send(true);
        for publisher in self.publishers {
            let t = publisher.await.expect("a publisher task");
            tally.ok += t.ok;
            tally.refused += t.refused;
            tally.unknown += t.unknown;
            tally.unexpected.extend(t.unexpected);
            ended.extend(t.ended);
        }
        for subscriber in self.subscribers {
            if let Err(how) = subscriber.await.expect("a subscriber task") {
                ended.push(how);
            }
        }
        let mut recovering = recovering::Tally::default();
        for subscriber in self.recovering {
            recovering.add(subscriber.await.expect("a recovering subscriber task"));
        }
        for watch in self.watches {
            let _ = watch.stop().await;
        }
        let green = self.sampler.stop().await;
        assert!(
            ended.is_empty(),
            "sockets ended during the scenario: {ended:?}"
        );
        assert!(
            tally.unexpected.is_empty(),
            "publishes got undocumented answers: {:?}",
            tally.unexpected
        );
        assert!(
            recovering.unexpected.is_empty(),
            "recovering subscribers: {:?}",
            recovering.unexpected
        );
        let undocumented: Vec<&String> = recovering
            .refused
            .keys()
            .filter(|r| !r.starts_with(HISTORY_UNAVAILABLE) && *r != SUBSCRIBE_TIMED_OUT)
            .collect();
        assert!(
            undocumented.is_empty(),
            "recovering subscribers' joins got undocumented refusals: {undocumented:?}"
        );
        Recorded {
            history: self.history,
            green,
            tally,
            recovering,
        }
    }
}

/// `green` less the spans in `faults`: what the check may treat as fit to deliver.
fn without(green: &GreenWindows, faults: &[(Instant, Instant)]) -> GreenWindows {
    let mut pieces: Vec<(Instant, Instant)> =
        green.windows().iter().map(|w| (w.start, w.end)).collect();
    for &(from, to) in faults {
        pieces = pieces
            .into_iter()
            .flat_map(|(start, end)| {
                let mut kept = Vec::new();
                if start < from {
                    kept.push((start, end.min(from)));
                }
                if end > to {
                    kept.push((start.max(to), end));
                }
                kept
            })
            .collect();
    }
    let mut windows = GreenWindows::new();
    // A distinct counter per piece keeps the pieces apart.
    let mut counter = 0.0;
    for (start, end) in pieces {
        windows.sample(start, true, counter);
        windows.sample(end, true, counter);
        counter += 1.0;
    }
    windows
}

impl Recorded {
    /// The history check, treating `faults` as not fit to deliver.
    fn check(&self, faults: &[(Instant, Instant)]) -> Report {
        self.history.set_green(without(&self.green, faults));
        self.history.check(GRACE)
    }

    /// `Ok` publishes sent after `at`.
    fn ok_after(&self, at: Instant) -> usize {
        self.history
            .publishes()
            .iter()
            .filter(|p| p.sent_at > at && p.ack == Acked::Ok)
            .count()
    }
}

/// The standard figures of a history check.
fn summary(checked: &Report) -> String {
    let mut text = format!(
        "publishes {} (ok {}, refused {}, unknown {}), required deliveries {} (all delivered: \
         {}), green {:.1} s in {} windows",
        checked.publishes,
        checked.acked_ok,
        checked.acked_refused,
        checked.acked_unknown,
        checked.required,
        checked.missing.is_empty(),
        checked.green_time.as_secs_f64(),
        checked.green_windows
    );
    let recovery = &checked.recovery;
    if recovery.subscriptions > 0 {
        text.push_str(&format!(
            "; recovering: {} rejoins ({} recovered, {} not, {} of them a new epoch; {} \
             refused and retried), {} holes seen, {} tail broadcasts, owed {} (all delivered: \
             {})",
            recovery.rejoins,
            recovery.recovered,
            recovery.not_recovered,
            recovery.not_recovered_new_epoch,
            recovery.refused,
            recovery.holes,
            recovery.tails,
            recovery.owed,
            recovery.missing.is_empty()
        ));
    }
    text
}

/// What a scenario expects of its recovering subscribers' rejoins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejoins {
    /// No fault: no hole, nothing lost.
    None,
    /// Outages the history covers: rejoins, every one recovered.
    Recovered,
    /// The stream itself was lost (Redis restarted without persistence): every subscriber
    /// was told `recovered: false` with a position of a new epoch on every topic.
    NewEpoch,
}

/// The recovering subscribers' figures a scenario expects (the history check has judged the
/// deliveries): they were owed something, no `recovered: false` while the history reached
/// back, and the rejoins of `expected`.
fn assert_recovery(
    kind: BackendKind,
    scenario: &str,
    checked: &Report,
    recorded: &Recorded,
    expected: Rejoins,
) {
    let tally = &recorded.recovering;
    report(
        kind,
        scenario,
        &format!(
            "recovering subscribers: {} sockets opened, {} rejoins ({} leaving first), {} \
             after their node was ready again, refusals {:?}",
            tally.connections, tally.rejoins, tally.leaves, tally.ready_again, tally.refused
        ),
    );
    let recovery = &checked.recovery;
    assert!(
        recovery.subscriptions > 0 && recovery.owed > 0,
        "the recovering subscribers were owed nothing: {checked}"
    );
    assert_eq!(
        recovery.holes, 0,
        "the node delivered a hole in a stream instead of ending the membership: {checked}"
    );
    assert_eq!(
        recovery.not_recovered, recovery.not_recovered_new_epoch,
        "recovered: false although the stream was kept and the history ({HISTORY_SIZE}) \
         reached back: {checked}"
    );
    match expected {
        Rejoins::None => assert_eq!(
            (recovery.holes, recovery.not_recovered),
            (0, 0),
            "without faults a recovering subscriber sees no hole: {checked}"
        ),
        Rejoins::Recovered => {
            assert!(
                recovery.rejoins > 0 && recovery.recovered > 0,
                "the recovering subscribers never recovered: {checked}"
            );
            assert_eq!(recovery.not_recovered, 0, "{checked}");
        }
        Rejoins::NewEpoch => {
            let told = told_new_epoch(&recorded.history.recovering_log());
            assert_eq!(
                told.len(),
                recovery.subscriptions,
                "every recovering subscriber must be told recovered: false with a new epoch \
                 on every topic; told: {told:?}; {checked}"
            );
        }
    }
}

/// The (socket, topic) pairs that were answered `recovered: false` with a position of
/// another epoch than their `since`.
fn told_new_epoch(log: &[switchboard_e2e::recovery::Logged]) -> HashSet<(String, String)> {
    let mut since: HashMap<(&str, &str), Option<Position>> = HashMap::new();
    let mut told = HashSet::new();
    for logged in log {
        let key = (logged.socket.as_str(), logged.topic.as_str());
        match &logged.event {
            Event::JoinSent { since: asked, .. } => {
                let _ = since.insert(key, asked.as_deref().and_then(Position::parse));
            }
            Event::Joined {
                position,
                recovered: Some(false),
                ..
            } => {
                let reply = position.as_deref().and_then(Position::parse);
                if let (Some(Some(asked)), Some(reply)) = (since.get(&key), reply) {
                    if asked.epoch != reply.epoch {
                        let _ = told.insert((logged.socket.clone(), logged.topic.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    told
}

// ---- the scenarios -------------------------------------------------------------------------

/// Scenario 1: No fault: a control. Every publish is accepted and delivered.
async fn steady_state(kind: BackendKind) {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(kind, &[]).await;
    let traffic = Traffic::start(&cluster, &Plan::recovering()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let recorded = traffic.finish(SETTLE).await;
    let checked = recorded.check(&[]);
    report(kind, "steady", &summary(&checked));
    cluster.assert_report(&checked);
    assert!(checked.required > 0, "{checked}");
    assert_recovery(kind, "steady", &checked, &recorded, Rejoins::None);
    assert_eq!(
        (checked.acked_refused, checked.acked_unknown),
        (0, 0),
        "without faults every publish is accepted: {checked}"
    );
    assert_eq!(
        checked.green_windows, 1,
        "readiness never flapped: {checked}"
    );
    for side in [Side::A, Side::B] {
        assert_eq!(
            cluster
                .metric(side, "switchboard_bridge_reconnects_total")
                .await,
            0.0
        );
        assert_eq!(
            cluster.metric(side, "switchboard_bridge_lost_total").await,
            0.0
        );
    }
}

/// Scenario 2: A's link reset twice while publishing: A reconnects at once each time, nothing
/// accepted while green is missing. Between the two, the recovering subscribers behind
/// client-side proxies lose their sockets too.
async fn cut_link(kind: BackendKind) {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(kind, &[]).await;
    let traffic = Traffic::start(&cluster, &Plan::recovering()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut recoveries = Vec::new();
    let mut last_recovery = Instant::now();
    for cut in 1..=2 {
        let cut_at = Instant::now();
        cluster.proxy_a.cut_existing();
        // Recovered: the reconnect counted and /readyz green.
        http::eventually(PATIENCE, "A's reconnect after the cut", || async {
            let reconnects = cluster
                .metric(Side::A, "switchboard_bridge_reconnects_total")
                .await;
            if reconnects >= f64::from(cut) {
                Ok(())
            } else {
                Err(reconnects.to_string())
            }
        })
        .await;
        let recovered = cluster
            .until_ready(Side::A, true, cut_at, RECOVERY_BOUND)
            .await;
        recoveries.push(recovered);
        last_recovery = Instant::now();
        if cut == 1 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            traffic.cut_clients();
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let recorded = traffic.finish(SETTLE).await;
    let checked = recorded.check(&[]);
    report(
        kind,
        "cut",
        &format!(
            "A ready again {} after each cut; {}",
            recoveries
                .iter()
                .map(|d| ms(*d))
                .collect::<Vec<_>>()
                .join(", "),
            summary(&checked)
        ),
    );
    cluster.assert_report(&checked);
    assert!(checked.required > 0, "{checked}");
    assert_recovery(kind, "cut", &checked, &recorded, Rejoins::Recovered);
    assert!(
        recorded.recovering.connections >= 6,
        "the two proxied recovering subscribers reconnected after their sockets were cut: {:?}",
        recorded.recovering
    );
    assert!(
        recorded.ok_after(last_recovery) > 0,
        "publishes are accepted again after the cuts: {checked}"
    );
    assert_eq!(
        cluster
            .metric(Side::A, "switchboard_bridge_reconnects_total")
            .await,
        2.0,
        "one reconnect per cut"
    );
    assert_eq!(
        cluster
            .metric(Side::B, "switchboard_bridge_reconnects_total")
            .await,
        0.0,
        "B's link was never touched"
    );
}

/// Scenario 3: A's link black-holed for twice the backend timeout: A notices within the timeout,
/// B stays ready, A recovers once the link heals.
async fn black_hole(kind: BackendKind) {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(kind, &[]).await;
    let traffic = Traffic::start(&cluster, &Plan::recovering()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let lost_before = cluster
        .metric(Side::A, "switchboard_bridge_lost_total")
        .await;

    let fault_at = Instant::now();
    cluster.proxy_a.black_hole();
    let limit = BACKEND_TIMEOUT + NOTICE_SLACK;
    let (noticed, b_dropped) = tokio::join!(
        cluster.until_ready(Side::A, false, fault_at, limit + PATIENCE),
        poll_stays_ready(&cluster, Side::B, 2 * BACKEND_TIMEOUT)
    );
    tokio::time::sleep((fault_at + 2 * BACKEND_TIMEOUT).saturating_duration_since(Instant::now()))
        .await;
    cluster.proxy_a.cut_existing();
    cluster.proxy_a.pass();
    let healed_at = Instant::now();
    let recovered = cluster
        .until_ready(Side::A, true, healed_at, PATIENCE)
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let recorded = traffic.finish(SETTLE).await;
    let checked = recorded.check(&[(fault_at, healed_at)]);
    let lost = cluster
        .metric(Side::A, "switchboard_bridge_lost_total")
        .await
        - lost_before;
    report(
        kind,
        "black-hole",
        &format!(
            "A noticed the black hole after {} (bound {}), ready {} after the link healed; \
             A's lost_total +{lost}; {}",
            ms(noticed),
            ms(limit),
            ms(recovered),
            summary(&checked)
        ),
    );
    cluster.assert_report(&checked);
    assert!(
        noticed <= limit,
        "A noticed the black hole after {noticed:?}, later than {limit:?}\n{}",
        cluster.logs()
    );
    assert!(
        recovered <= RECOVERY_BOUND,
        "A took {recovered:?} to be ready after the link healed\n{}",
        cluster.logs()
    );
    assert_eq!(
        b_dropped, None,
        "B's link was fine, yet its /readyz said {b_dropped:?}"
    );
    assert!(checked.required > 0, "{checked}");
    assert_recovery(kind, "black-hole", &checked, &recorded, Rejoins::Recovered);
    assert!(recorded.ok_after(healed_at + recovered) > 0, "{checked}");
    assert!(
        recorded.tally.refused > 0 && lost > 0.0,
        "A's publishes during the black hole were refused and counted as lost: {checked}"
    );
}

/// Polls `/readyz` of `side` every 20 ms for `span`: the first answer that was not 200.
async fn poll_stays_ready(cluster: &Cluster, side: Side, span: Duration) -> Option<String> {
    let until = Instant::now() + span;
    while Instant::now() < until {
        let response = http::request(cluster.node(side).addr(), "GET", "/readyz", &[], &[]).await;
        match response {
            Ok(response) if response.status == 200 => {}
            Ok(response) => return Some(format!("{} {}", response.status, response.text())),
            Err(e) => return Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Scenario 4: The backend itself frozen (SIGSTOP) for twice the backend timeout: both nodes notice
/// within the timeout and recover once it is thawed.
async fn freeze_backend(kind: BackendKind) {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(kind, &[]).await;
    let traffic = Traffic::start(&cluster, &Plan::recovering()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let fault_at = Instant::now();
    tokio::task::block_in_place(|| cluster.backend.freeze());
    let limit = BACKEND_TIMEOUT + NOTICE_SLACK;
    let (noticed_a, noticed_b) = tokio::join!(
        cluster.until_ready(Side::A, false, fault_at, limit + PATIENCE),
        cluster.until_ready(Side::B, false, fault_at, limit + PATIENCE)
    );
    tokio::time::sleep((fault_at + 2 * BACKEND_TIMEOUT).saturating_duration_since(Instant::now()))
        .await;
    tokio::task::block_in_place(|| cluster.backend.thaw());
    let thawed_at = Instant::now();
    let (recovered_a, recovered_b) = tokio::join!(
        cluster.until_ready(Side::A, true, thawed_at, PATIENCE),
        cluster.until_ready(Side::B, true, thawed_at, PATIENCE)
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let recorded = traffic.finish(SETTLE).await;
    let checked = recorded.check(&[(fault_at, thawed_at)]);
    report(
        kind,
        "freeze",
        &format!(
            "noticed after {} (A), {} (B), bound {}; ready {} (A), {} (B) after the thaw; {}",
            ms(noticed_a),
            ms(noticed_b),
            ms(limit),
            ms(recovered_a),
            ms(recovered_b),
            summary(&checked)
        ),
    );
    cluster.assert_report(&checked);
    for (side, noticed, recovered) in [
        (Side::A, noticed_a, recovered_a),
        (Side::B, noticed_b, recovered_b),
    ] {
        assert!(
            noticed <= limit,
            "{side:?} noticed the frozen backend after {noticed:?}, later than {limit:?}\n{}",
            cluster.logs()
        );
        assert!(
            recovered <= RECOVERY_BOUND,
            "{side:?} took {recovered:?} to be ready after the thaw\n{}",
            cluster.logs()
        );
    }
    assert!(checked.required > 0, "{checked}");
    assert_recovery(kind, "freeze", &checked, &recorded, Rejoins::Recovered);
    assert!(
        recorded.ok_after(thawed_at + recovered_a.max(recovered_b)) > 0,
        "{checked}"
    );
}

/// Scenario 5: The backend killed with SIGKILL (PostgreSQL: stop -m immediate) mid-stream and
/// restarted on the same port. Redis runs without persistence: its streams are lost, and every
/// recovering subscriber must be told so (`recovered: false`, a new epoch); PostgreSQL keeps
/// them, and every rejoin recovers. The proxied recovering subscribers lose their sockets
/// while the backend is down: their joins with `since` are refused until it is back.
async fn kill_backend(kind: BackendKind) {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(kind, &[]).await;
    let traffic = Traffic::start(&cluster, &Plan::recovering()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.backend.kill9());
    let limit = BACKEND_TIMEOUT + NOTICE_SLACK;
    let (noticed_a, noticed_b) = tokio::join!(
        cluster.until_ready(Side::A, false, killed_at, limit + PATIENCE),
        cluster.until_ready(Side::B, false, killed_at, limit + PATIENCE)
    );
    traffic.cut_clients();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // `restart` returns once the backend answers.
    tokio::task::block_in_place(|| cluster.backend.restart());
    let answering_at = Instant::now();
    let (recovered_a, recovered_b) = tokio::join!(
        cluster.until_ready(Side::A, true, answering_at, PATIENCE),
        cluster.until_ready(Side::B, true, answering_at, PATIENCE)
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let recorded = traffic.finish(SETTLE).await;
    let checked = recorded.check(&[]);
    report(
        kind,
        "kill-9",
        &format!(
            "noticed after {} (A), {} (B); ready {} (A), {} (B) after the backend answered; {}",
            ms(noticed_a),
            ms(noticed_b),
            ms(recovered_a),
            ms(recovered_b),
            summary(&checked)
        ),
    );
    cluster.assert_report(&checked);
    for (side, noticed, recovered) in [
        (Side::A, noticed_a, recovered_a),
        (Side::B, noticed_b, recovered_b),
    ] {
        assert!(
            noticed <= limit,
            "{side:?} noticed the crash after {noticed:?}"
        );
        assert!(
            recovered <= RECOVERY_BOUND,
            "{side:?} took {recovered:?} to be ready after the restart\n{}",
            cluster.logs()
        );
    }
    assert!(checked.required > 0, "{checked}");
    let expected = match kind {
        BackendKind::Redis => Rejoins::NewEpoch,
        BackendKind::Postgres => Rejoins::Recovered,
    };
    assert_recovery(kind, "kill-9", &checked, &recorded, expected);
    let unavailable: usize = recorded
        .recovering
        .refused
        .iter()
        .filter(|(reason, _)| reason.starts_with(HISTORY_UNAVAILABLE))
        .map(|(_, count)| count)
        .sum();
    assert!(
        unavailable > 0,
        "joins with since while the backend was down are refused (history unavailable): {:?}",
        recorded.recovering
    );
    assert!(
        recorded.ok_after(answering_at + recovered_a.max(recovered_b)) > 0,
        "{checked}"
    );
}

/// The proxies' delay in scenario 6, each way.
const DELAY: Duration = Duration::from_millis(300);

/// Scenario 6: Both links slow (300 ms each way) but alive: readiness stays green, nothing is
/// refused or missing, and a join still waits for (and gets) the backend's confirmation.
async fn slow_links(kind: BackendKind) {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(kind, &[]).await;
    let mut traffic = Traffic::start(&cluster, &Plan::default()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.proxy_a.delay(DELAY);
    cluster.proxy_b.delay(DELAY);
    let slowed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Fresh topics joined on A under the delay: answered ok after a round trip to the
    // backend, and a publish on B right after the ok reaches the joiner.
    let mut join_times = Vec::new();
    let mut fresh_tally = Tally::default();
    for i in 0..3 {
        let topic = format!("slow:fresh:{i}");
        let name = format!("A-fresh{i}");
        let mut client = cluster.a.connect().await;
        let started = Instant::now();
        let reply = client.join(&topic).await;
        let at = Instant::now();
        assert_eq!(reply.status(), "ok", "a join under a slow link: {reply}");
        assert_eq!(reply.response().get("upstream"), None, "{reply}");
        join_times.push(at - started);
        traffic.history.joined(&name, &topic, at);
        let ack = publish_http(
            cluster.b.addr(),
            "B-fresh",
            &topic,
            0,
            &traffic.history,
            &mut fresh_tally,
        )
        .await;
        assert_eq!(ack, Acked::Ok, "a publish under a slow link");
        let reading = traffic.stop_reading.subscribe();
        traffic.subscribers.push(tokio::spawn(read_until(
            client,
            name,
            Arc::clone(&traffic.history),
            reading,
        )));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.proxy_a.pass();
    cluster.proxy_b.pass();
    let slow_for = slowed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let recorded = traffic.finish(SETTLE + 2 * DELAY).await;
    let checked = recorded.check(&[]);
    report(
        kind,
        "delay",
        &format!(
            "{} each way for {:.1} s; fresh joins on A took {}; {}",
            ms(DELAY),
            slow_for.as_secs_f64(),
            join_times
                .iter()
                .map(|d| ms(*d))
                .collect::<Vec<_>>()
                .join(", "),
            summary(&checked)
        ),
    );
    cluster.assert_report(&checked);
    assert!(
        fresh_tally.unexpected.is_empty(),
        "{:?}",
        fresh_tally.unexpected
    );
    assert_eq!(
        checked.green_windows, 1,
        "readiness stayed green throughout: {checked}"
    );
    assert_eq!(
        (checked.acked_refused, checked.acked_unknown),
        (0, 0),
        "a slow backend is not a dead one: {checked}"
    );
    assert!(checked.required > 0, "{checked}");
    for took in &join_times {
        assert!(
            *took >= 2 * DELAY,
            "a first join was answered after {took:?}, sooner than the round trip to the \
             backend ({:?}): not confirmed by it",
            2 * DELAY
        );
    }
    for side in [Side::A, Side::B] {
        assert_eq!(
            cluster
                .metric(side, "switchboard_bridge_reconnects_total")
                .await,
            0.0,
            "node {side:?} dropped a slow but live link\n{}",
            cluster.logs()
        );
    }
}

/// The flood of scenario 7: sockets, pushes per socket, padding per payload. 48 MB offered,
/// three times the queue's byte bound. Each flooding socket gets its own pushes back (a push
/// is delivered to local subscribers, the sender included), so the flood is spread over
/// several sockets and paced in bursts of [`FLOOD_BURST`]: a socket whose deliveries pile up
/// past `--send-buffer-bytes` is rightly closed as a slow consumer, and a busy two-core
/// machine must not make the test's own sockets that.
const FLOOD_SOCKETS: usize = 8;
const FLOOD_PUSHES: usize = 2_000;
const FLOOD_BURST: usize = 100;
const FLOOD_PAD: usize = 3_000;

/// Scenario 7's `--backend-timeout`: long enough that the node (a debug build) has read the
/// whole flood before it could notice the black hole (a request may take half of it), so
/// what waits then is what its queue holds, and what it refused it refused for a full queue.
const FLOOD_BACKEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's default `--bridge-queue-messages` and `--bridge-queue-bytes`.
const QUEUE_MESSAGES: usize = 10_000;
const QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// The most A's RSS may grow under the flood ("well under 100 MB"). Measured: about 50 MiB
/// (a debug build holds some 9 KB per queued 3 KB message: the payload as read, the
/// envelope, allocator arenas) plus the frames read and not yet handled. Unbounded, the
/// flood's 48 MB would be held several times over.
const FLOOD_RSS_BOUND_KIB: u64 = 80 * 1024;

/// The reading half of a WebSocket client that parses frames itself. A flooding socket gets
/// its own pushes back (a push is delivered to local subscribers, the sender included):
/// decoding them with a general client in a debug build is slow enough that the node rightly
/// closes the socket as a slow consumer. This one skips large frames unread.
struct RawReader {
    stream: OwnedReadHalf,
    /// Bytes read; those before `pos` are parsed.
    buf: Vec<u8>,
    pos: usize,
}

/// Frames at most this long are parsed; a reply is far shorter, a flood broadcast far longer.
const RAW_PARSE_BYTES: usize = 1024;

/// What a [`RawReader`] read.
enum RawFrame {
    /// A text frame: its text, or `None` for one too long to be a reply (skipped unread).
    Text(Option<String>),
    /// The end of the connection: a close frame's code and reason, the end of the stream, or
    /// nothing for [`PATIENCE`].
    End(String),
}

impl RawReader {
    fn new(stream: OwnedReadHalf) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(1 << 20),
            pos: 0,
        }
    }

    /// Reads more bytes into `buf` (dropping those parsed first); false at the end of the
    /// stream.
    async fn fill(&mut self) -> bool {
        let _ = self.buf.drain(..self.pos);
        self.pos = 0;
        let mut chunk = [0_u8; 64 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next frame the node sent.
    async fn next(&mut self) -> RawFrame {
        loop {
            match self.parse() {
                // Text (the node sends no other data frames).
                Some((1, text)) => {
                    let text = text.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
                    return RawFrame::Text(text);
                }
                Some((8, payload)) => {
                    let payload = payload.unwrap_or_default();
                    let code = payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                    return RawFrame::End(format!("closed by the node: {code:?} {reason:?}"));
                }
                // Ping, pong.
                Some(_) => {}
                None => match tokio::time::timeout(PATIENCE, self.fill()).await {
                    Ok(true) => {}
                    Ok(false) => return RawFrame::End("the connection ended".into()),
                    Err(_) => return RawFrame::End(format!("nothing for {PATIENCE:?}")),
                },
            }
        }
    }

    /// A complete frame from `buf`, if there is one: its opcode and (short) payload. Servers
    /// do not mask.
    fn parse(&mut self) -> Option<(u8, Option<Vec<u8>>)> {
        let buf = &self.buf[self.pos..];
        let (first, second) = (*buf.first()?, *buf.get(1)?);
        let (len, header) = match second & 0x7f {
            126 => {
                let bytes = [*buf.get(2)?, *buf.get(3)?];
                (usize::from(u16::from_be_bytes(bytes)), 4)
            }
            127 => {
                let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
                (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
            }
            short => (usize::from(short), 2),
        };
        if buf.len() < header + len {
            return None;
        }
        assert_eq!(first & 0x80, 0x80, "the node sent a fragmented frame");
        let payload = (len <= RAW_PARSE_BYTES).then(|| buf[header..header + len].to_vec());
        self.pos += header + len;
        Some((first & 0x0f, payload))
    }
}

/// A masked client text frame. The zero masking key leaves the text as it is (a client must
/// mask; the key's value is its own business).
fn text_frame(text: &str) -> Vec<u8> {
    let len = text.len();
    let mut frame = vec![0x81];
    match (u8::try_from(len), u16::try_from(len)) {
        (Ok(short), _) if short < 126 => frame.push(0x80 | short),
        (_, Ok(medium)) => {
            frame.push(0x80 | 126);
            frame.extend(medium.to_be_bytes());
        }
        _ => {
            frame.push(0x80 | 127);
            frame.extend(u64::try_from(len).expect("fits").to_be_bytes());
        }
    }
    frame.extend([0, 0, 0, 0]);
    frame.extend(text.as_bytes());
    frame
}

/// A raw WebSocket joined to a topic, ready to flood it.
struct FloodSocket {
    reader: RawReader,
    writer: OwnedWriteHalf,
    name: String,
    topic: String,
}

impl FloodSocket {
    /// Connects to `addr` and joins `topic` (before the fault: a first join during a black
    /// hole would wait for a confirmation that cannot come).
    async fn join(addr: SocketAddr, name: String, topic: String) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .expect("the raw socket connects");
        stream.set_nodelay(true).expect("nodelay");
        let (stream, mut writer) = stream.into_split();
        let mut reader = RawReader::new(stream);
        let upgrade = format!(
            "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: c3dpdGNoYm9hcmQtZmxvb2Q=\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        writer
            .write_all(upgrade.as_bytes())
            .await
            .expect("upgrade sent");
        let end = loop {
            if let Some(end) = reader.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            assert!(reader.fill().await, "the upgrade was not answered");
        };
        let head = String::from_utf8_lossy(&reader.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        reader.pos = end;

        let join = json!(["j", "j", topic, "phx_join", {}]).to_string();
        writer
            .write_all(&text_frame(&join))
            .await
            .expect("join sent");
        loop {
            let text = match reader.next().await {
                RawFrame::Text(Some(text)) => text,
                RawFrame::Text(None) => continue,
                RawFrame::End(how) => panic!("the flooding socket's join: {how}"),
            };
            let frame: Value = serde_json::from_str(&text).expect("JSON");
            if frame.is_reply_to("j") {
                assert_eq!(frame.status(), "ok", "{frame}");
                return Self {
                    reader,
                    writer,
                    name,
                    topic,
                };
            }
        }
    }
}

/// What one flooding socket saw: per push, when it was sent and answered, and how.
struct Flooded {
    sent: Vec<Instant>,
    answers: Vec<Option<(Instant, bool)>>,
}

/// Pushes `count` payloads on `flooder` as fast as it can while a reader takes every reply
/// and skips every broadcast; counts the replies and the pushes written in `counters`.
async fn flood(
    flooder: FloodSocket,
    count: usize,
    counters: (Arc<AtomicUsize>, Arc<AtomicUsize>),
) -> Flooded {
    let (answered, written) = counters;
    let FloodSocket {
        mut reader,
        writer,
        name,
        topic,
    } = flooder;
    let reading = tokio::spawn(async move {
        let mut answers: Vec<Option<(Instant, bool)>> = vec![None; count];
        let mut left = count;
        while left > 0 {
            let text = match reader.next().await {
                RawFrame::Text(Some(text)) => text,
                RawFrame::Text(None) => continue,
                RawFrame::End(how) => panic!("the flooding socket ({left} replies missing): {how}"),
            };
            let frame: Value = serde_json::from_str(&text).expect("JSON");
            let Some(seq) = frame.msg_ref().and_then(|r| r.parse::<usize>().ok()) else {
                continue;
            };
            if frame.is_reply() && seq < count && answers[seq].is_none() {
                let ok = frame.status() == "ok";
                assert!(ok || frame.reason() == UPSTREAM_DOWN, "{frame}");
                answers[seq] = Some((Instant::now(), ok));
                left -= 1;
                let _ = answered.fetch_add(1, Ordering::Relaxed);
            }
        }
        answers
    });
    let pad = "x".repeat(FLOOD_PAD);
    let mut sent = Vec::with_capacity(count);
    let mut writer = BufWriter::with_capacity(256 * 1024, writer);
    for seq in 0..count {
        let push = json!(["j", seq.to_string(), topic, "flood", {"p": name, "s": seq, "pad": pad}]);
        sent.push(Instant::now());
        writer
            .write_all(&text_frame(&push.to_string()))
            .await
            .expect("push sent");
        if seq % FLOOD_BURST == FLOOD_BURST - 1 {
            writer.flush().await.expect("flushed");
            let _ = written.fetch_add(FLOOD_BURST, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    writer.flush().await.expect("flushed");
    let _ = written.fetch_add(count % FLOOD_BURST, Ordering::Relaxed);
    let answers = reading.await.expect("the flood reader");
    drop(writer);
    Flooded { sent, answers }
}

/// The peak RSS (KiB) of process `pid` sampled every 20 ms until `stop`.
async fn peak_rss(pid: u32, stop: watch::Receiver<bool>) -> u64 {
    let mut peak = 0;
    while !*stop.borrow() {
        if let Some(kib) = rss_kib(pid) {
            peak = peak.max(kib);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peak
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Scenario 7: a flood of pushes on A while its link is black-holed. Once its queue is full A
/// refuses at once, without waiting to notice the black hole; what waits is within the
/// queue's bounds; what it refused is counted as lost; its memory stays bounded; once the link
/// heals everything works again.
async fn flood_while_black_holed(kind: BackendKind) {
    let _serial = SERIAL.lock().await;
    let timeout = format!("{}s", FLOOD_BACKEND_TIMEOUT.as_secs());
    let cluster = Cluster::start(kind, &[("--backend-timeout", &timeout)]).await;
    let mut traffic = Traffic::start(&cluster, &Plan::default()).await;
    let flood_topics: Vec<String> = (0..FLOOD_SOCKETS).map(|i| format!("flood:{i}")).collect();
    // B listens to the flood topics: whatever of the flood reaches it is checked too.
    traffic
        .subscribe(&cluster.b, "B-flood".into(), &flood_topics)
        .await;
    let mut flooders = Vec::new();
    for (i, topic) in flood_topics.iter().enumerate() {
        let flooder = FloodSocket::join(cluster.a.addr(), format!("flood{i}"), topic.clone());
        flooders.push(flooder.await);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let lost_before = cluster
        .metric(Side::A, "switchboard_bridge_lost_total")
        .await;
    let rss_before = cluster.a.rss_kib();

    let fault_at = Instant::now();
    cluster.proxy_a.black_hole();
    let (stop_rss, rss_stopped) = watch::channel(false);
    let rss = tokio::spawn(peak_rss(cluster.a.pid(), rss_stopped));
    let (answered, written) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut floods: Vec<_> = flooders
        .into_iter()
        .map(|flooder| {
            let counters = (Arc::clone(&answered), Arc::clone(&written));
            tokio::spawn(flood(flooder, FLOOD_PUSHES, counters))
        })
        .collect();
    // The node has read the whole flood once every push is written and the replies stop
    // coming: every push is then refused or waiting in the queue. That must happen before
    // the black hole could be noticed (a request may take half the backend timeout).
    let read_by = fault_at + FLOOD_BACKEND_TIMEOUT / 2 - Duration::from_secs(1);
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(i) = floods.iter().position(JoinHandle::is_finished) {
            // Only a failure ends a flood before the link heals: show it.
            let _ = floods.swap_remove(i).await.expect("a flooding socket");
            panic!("a flooding socket finished before the link healed");
        }
        assert!(
            Instant::now() < read_by,
            "the node had not read the flood {:?} after the black hole ({} replies so far)\n{}",
            fault_at.elapsed(),
            last.0,
            cluster.logs()
        );
        let now = answered.load(Ordering::Relaxed);
        if now != last.0 || written.load(Ordering::Relaxed) < FLOOD_SOCKETS * FLOOD_PUSHES {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_millis(500) {
            break;
        }
    }
    let (refused_at_once, settled_at) = last;
    let waiting = FLOOD_SOCKETS * FLOOD_PUSHES - refused_at_once;
    // Probes over HTTP while the queue is full, before the black hole can be noticed: as
    // large as the flood's pushes (a small message would still fit in the queue's bytes).
    let mut probes = Vec::new();
    let mut unexpected_probes = Vec::new();
    let pad = "x".repeat(FLOOD_PAD);
    for seq in 0..5 {
        let body = json!({
            "topic": flood_topics[0],
            "event": "probe",
            "payload": { "p": "A-probe", "s": seq, "pad": pad },
        });
        let started = Instant::now();
        let response = http::post_json(cluster.a.addr(), "/api/publish", &body.to_string()).await;
        let took = started.elapsed();
        let ack = match response.status {
            200 => Acked::Ok,
            503 => Acked::Refused(response.json()["error"]["code"].to_string()),
            _ => {
                unexpected_probes.push(format!("{} {}", response.status, response.text()));
                Acked::Unknown
            }
        };
        let topic = &flood_topics[0];
        traffic
            .history
            .published("A-probe", topic, seq, started, started + took, ack.clone());
        probes.push((took, ack));
    }
    let rss_full = cluster.a.rss_kib();
    let readyz = http::get(cluster.a.addr(), "/readyz").await;
    let lost = cluster
        .metric(Side::A, "switchboard_bridge_lost_total")
        .await
        - lost_before;

    // Heal before the black hole is noticed (scenario 3 measures that): what waited is sent
    // or refused now.
    let full_for = fault_at.elapsed();
    let reconnects = cluster
        .metric(Side::A, "switchboard_bridge_reconnects_total")
        .await;
    cluster.proxy_a.cut_existing();
    cluster.proxy_a.pass();
    let healed_at = Instant::now();
    let recovered = cluster
        .until_reconnected(Side::A, reconnects, healed_at)
        .await;
    let mut flooded = Vec::new();
    for flood in floods {
        flooded.push(flood.await.expect("a flooding socket"));
    }
    let _ = stop_rss.send(true);
    let rss_peak = rss.await.expect("the RSS sampler");
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The flood's pushes go into the history, so anything of it B got is checked too.
    let (mut accepted_later, mut refused_later) = (0, 0);
    let mut refusal_delays = Vec::new();
    for (flood, topic) in flooded.iter().zip(&flood_topics) {
        let name = topic.replace(':', "");
        for (seq, (sent, answer)) in flood.sent.iter().zip(&flood.answers).enumerate() {
            let (at, ok) = answer.expect("every push answered");
            let ack = if ok {
                Acked::Ok
            } else {
                Acked::Refused(UPSTREAM_DOWN.into())
            };
            let seq = u64::try_from(seq).expect("fits");
            traffic.history.published(&name, topic, seq, *sent, at, ack);
            if at <= settled_at {
                refusal_delays.push(at - fault_at);
            } else if ok {
                accepted_later += 1;
            } else {
                refused_later += 1;
            }
        }
    }
    refusal_delays.sort();
    let recorded = traffic.finish(SETTLE).await;
    let checked = recorded.check(&[(fault_at, healed_at)]);
    let growth = rss_peak.saturating_sub(rss_before);
    report(
        kind,
        "flood",
        &format!(
            "{} pushes of {FLOOD_PAD} bytes on A while black-holed, read by the node within \
             {}: {refused_at_once} refused at once (from {} to {} after the black hole), \
             {waiting} waited in the queue (bound {}); HTTP probes with the queue full: {}; \
             lost_total +{lost} by then; RSS {} MiB before, {} MiB with the queue full, peak \
             {} MiB (+{} MiB, bound +{} MiB); the link healed {:.1} s after the black hole, A \
             reconnected and was ready {} later, and the waiting pushes were {accepted_later} \
             accepted, {refused_later} refused; {}",
            FLOOD_SOCKETS * FLOOD_PUSHES,
            ms(settled_at - fault_at),
            refusal_delays
                .first()
                .map_or_else(|| "-".to_owned(), |d| ms(*d)),
            refusal_delays
                .last()
                .map_or_else(|| "-".to_owned(), |d| ms(*d)),
            QUEUE_MESSAGES.min(QUEUE_BYTES / FLOOD_PAD),
            probes
                .iter()
                .map(|(took, ack)| format!("{} in {}", ack_name(ack), ms(*took)))
                .collect::<Vec<_>>()
                .join(", "),
            rss_before / 1024,
            rss_full / 1024,
            rss_peak / 1024,
            growth / 1024,
            FLOOD_RSS_BOUND_KIB / 1024,
            full_for.as_secs_f64(),
            ms(recovered),
            summary(&checked)
        ),
    );
    cluster.assert_report(&checked);
    assert!(unexpected_probes.is_empty(), "{unexpected_probes:?}");
    assert_eq!(
        readyz.status,
        200,
        "A noticed the black hole before {full_for:?}, sooner than half its backend timeout; \
         the scenario assumed it could not: {}",
        readyz.text()
    );
    for (took, ack) in &probes {
        assert!(
            matches!(ack, Acked::Refused(_)) && *took < Duration::from_millis(500),
            "with its queue full, A must refuse a publish at once: {ack:?} after {took:?}"
        );
    }
    assert!(
        refused_at_once > 0,
        "with its queue full, A refused nothing before the black hole could be noticed\n{}",
        cluster.logs()
    );
    let bound = QUEUE_MESSAGES.min(QUEUE_BYTES / FLOOD_PAD);
    assert!(
        waiting > 0 && waiting <= bound,
        "{waiting} pushes waited for the backend; the queue holds at most {bound}"
    );
    let refused = u32::try_from(refused_at_once).expect("fits");
    assert!(
        lost >= f64::from(refused),
        "every refused push is counted as lost: {refused} refused, lost_total +{lost}"
    );
    assert!(
        growth <= FLOOD_RSS_BOUND_KIB,
        "A's RSS grew by {} MiB under the flood (bound {} MiB)",
        growth / 1024,
        FLOOD_RSS_BOUND_KIB / 1024
    );
    assert!(
        recovered <= RECOVERY_BOUND,
        "A took {recovered:?} to recover"
    );
    assert!(recorded.ok_after(healed_at + recovered) > 0, "{checked}");
    assert!(checked.required > 0, "{checked}");
}

/// `ok`, `refused` or `unknown`.
fn ack_name(ack: &Acked) -> &'static str {
    match ack {
        Acked::Ok => "ok",
        Acked::Refused(_) => "refused",
        Acked::Unknown => "unknown",
    }
}

/// Topics on A in scenario 8, and how many sockets hold them.
const MANY_TOPICS: usize = 50_000;
const MANY_SOCKETS: usize = 5;

/// Topics of scenario 8 a publish from B probes after the restart.
const MANY_PROBES: usize = 200;

/// Joins `topics` on `client` in waves of 500: the join replies that were not a plain ok.
async fn join_many(client: &mut Client, topics: &[String]) -> Vec<String> {
    let mut bad = Vec::new();
    for wave in topics.chunks(500) {
        let mut waiting: HashSet<String> = HashSet::new();
        for topic in wave {
            let _ = waiting.insert(client.send_join(topic, json!({})).await);
        }
        while !waiting.is_empty() {
            match client.next_incoming(3 * PATIENCE).await {
                Some(Incoming::Frame(frame)) if frame.is_reply() => {
                    let Some(msg_ref) = frame.msg_ref() else {
                        continue;
                    };
                    if waiting.remove(msg_ref)
                        && (frame.status() != "ok" || frame.response().get("upstream").is_some())
                    {
                        bad.push(frame.to_string());
                    }
                }
                Some(Incoming::Frame(_)) => {}
                other => panic!(
                    "waiting for join replies: {other:?} ({} left)",
                    waiting.len()
                ),
            }
        }
    }
    bad
}

/// Scenario 8: 50,000 topics with subscribers on A resubscribe after the backend is killed and
/// restarted, without tripping a timeout: A is ready again and a publish from B to 200 of
/// them, sent the moment A says it is ready, arrives.
///
/// It runs at the node's default `--backend-timeout` (10 s: a batch of 1,000 subscriptions
/// must be confirmed within 5 s) rather than the suite's 2 s, with a long
/// `--subscribe-timeout`: 50,000 first joins from five sockets at once are set-up, paced by
/// the machine, and on a busy two-core machine a 1,000-channel SUBSCRIBE through a debug
/// build can take longer than the 1 s a 2 s timeout allows, which the node (rightly, by its
/// rule) takes for a dead backend. The resubscription after the restart is what is measured.
async fn many_topics_resubscribe(kind: BackendKind) {
    let _serial = SERIAL.lock().await;
    let per_socket = (MANY_TOPICS / MANY_SOCKETS).to_string();
    let overrides = [
        ("--max-topics-per-socket", per_socket.as_str()),
        ("--backend-timeout", "10s"),
        ("--subscribe-timeout", "20s"),
    ];
    let mut cluster = Cluster::start(kind, &overrides).await;
    let history = Arc::new(History::new());
    let sampler = ReadinessSampler::start(&cluster.addrs());

    let topics: Vec<String> = (0..MANY_TOPICS).map(|i| format!("many:{i:05}")).collect();
    let started = Instant::now();
    let mut joining = Vec::new();
    for chunk in topics.chunks(MANY_TOPICS / MANY_SOCKETS) {
        let mut client = cluster.a.connect().await;
        let chunk = chunk.to_vec();
        joining.push(tokio::spawn(async move {
            let bad = join_many(&mut client, &chunk).await;
            (client, Instant::now(), bad)
        }));
    }
    let mut joined = Vec::new();
    for joining in joining {
        joined.push(joining.await.expect("a joining socket"));
    }
    let subscribed_in = started.elapsed();
    let probes: Vec<usize> = (0..MANY_PROBES)
        .map(|i| i * (MANY_TOPICS / MANY_PROBES) + i % 7)
        .collect();
    let per_socket = MANY_TOPICS / MANY_SOCKETS;
    let mut clients = Vec::new();
    for (i, (client, at, bad)) in joined.into_iter().enumerate() {
        assert!(
            bad.is_empty(),
            "{} joins not plainly ok, e.g. {:?}",
            bad.len(),
            &bad[..1]
        );
        // Every join of the socket was answered ok by `at`: its memberships start then (no
        // publish is sent before). Only the probed topics are recorded (the history's
        // bookkeeping of a membership grows with the number recorded).
        for &probe in probes.iter().filter(|&&p| p / per_socket == i) {
            history.joined(&format!("A-many{i}"), &topics[probe], at);
        }
        clients.push(client);
    }
    assert_eq!(
        cluster.metric(Side::A, "switchboard_topics").await,
        MANY_TOPICS as f64
    );
    let mut tally = Tally::default();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let missed = probe_many(
        &cluster,
        &topics,
        &probes,
        0,
        &history,
        &mut clients,
        &mut tally,
    )
    .await;
    assert!(
        missed.is_empty(),
        "probes before the crash never arrived on A: {missed:?}"
    );

    let reconnects_before = cluster
        .metric(Side::A, "switchboard_bridge_reconnects_total")
        .await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.backend.kill9());
    let _ = cluster
        .until_ready(Side::A, false, killed_at, PATIENCE)
        .await;
    tokio::task::block_in_place(|| cluster.backend.restart());
    let answering_at = Instant::now();
    let resubscribed = cluster
        .until_ready(Side::A, true, answering_at, Duration::from_secs(60))
        .await;
    let _ = cluster
        .until_ready(Side::B, true, answering_at, PATIENCE)
        .await;
    // At once: ready must mean resubscribed, every topic.
    let missed = probe_many(
        &cluster,
        &topics,
        &probes,
        1,
        &history,
        &mut clients,
        &mut tally,
    )
    .await;
    // Still ready, and no second reconnect: no resubscription batch timed out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reconnects = cluster
        .metric(Side::A, "switchboard_bridge_reconnects_total")
        .await
        - reconnects_before;
    let green = sampler.stop().await;
    history.set_green(green);
    let checked = history.check(GRACE);
    report(
        kind,
        "50k-topics",
        &format!(
            "{MANY_TOPICS} topics joined on A in {:.1} s; after kill -9 and restart A was ready \
             (resubscribed) {} after the backend answered, with {reconnects} reconnect(s); {}",
            subscribed_in.as_secs_f64(),
            ms(resubscribed),
            summary(&checked)
        ),
    );
    cluster.assert_report(&checked);
    assert!(
        missed.is_empty(),
        "A said it was ready, yet {} of {MANY_PROBES} probes published on B right then never \
         arrived: {:?}\n{}",
        missed.len(),
        &missed[..missed.len().min(10)],
        cluster.logs()
    );
    assert!(tally.unexpected.is_empty(), "{:?}", tally.unexpected);
    assert_eq!(tally.ok, 2 * MANY_PROBES, "every probe accepted: {checked}");
    assert!(checked.required > 0, "{checked}");
    assert_eq!(
        reconnects,
        1.0,
        "A reconnected more than once: a resubscription timed out\n{}",
        cluster.logs()
    );
}

/// B publishes `payload("B-probe", round)` over HTTP to each probed topic, then waits for
/// each to reach A's socket holding that topic: the topics whose probe never came.
async fn probe_many(
    cluster: &Cluster,
    topics: &[String],
    probes: &[usize],
    round: u64,
    history: &History,
    clients: &mut [Client],
    tally: &mut Tally,
) -> Vec<String> {
    let mut missed = Vec::new();
    for &i in probes {
        let ack = publish_http(
            cluster.b.addr(),
            "B-probe",
            &topics[i],
            round,
            history,
            tally,
        )
        .await;
        assert_eq!(
            ack,
            Acked::Ok,
            "probe {round} to {}: {:?}",
            topics[i],
            tally.unexpected
        );
    }
    let per_socket = MANY_TOPICS / MANY_SOCKETS;
    for (s, client) in clients.iter_mut().enumerate() {
        let name = format!("A-many{s}");
        let mut expected: HashSet<&str> = probes
            .iter()
            .filter(|&&i| i / per_socket == s)
            .map(|&i| topics[i].as_str())
            .collect();
        let deadline = Instant::now() + PATIENCE;
        while !expected.is_empty() && Instant::now() < deadline {
            match client.next_incoming(deadline - Instant::now()).await {
                Some(Incoming::Frame(frame)) if frame.is_broadcast() => {
                    let _ = expected.remove(frame.topic());
                    record(history, &name, &frame);
                }
                Some(Incoming::Frame(_)) | None => {}
                Some(other) => panic!("{name} ended: {other:?}"),
            }
        }
        missed.extend(expected.into_iter().map(str::to_owned));
    }
    missed.sort();
    missed
}

/// `--unsubscribe-linger` in scenario 9: the churner rejoins around it.
const CHURN_LINGER: &str = "200ms";

/// What B's churner did.
#[derive(Debug, Default)]
struct Churned {
    joins: usize,
    unavailable: usize,
    timed_out: usize,
    unexpected: Vec<String>,
}

/// Joins one of three topics on `client`, has A publish to it (`joined`), waits (up to a
/// second) for both publishes, leaves, and rejoins after 100 to 300 ms: around the 200 ms
/// linger, a rejoin finds its topic still subscribed, being unsubscribed, or gone upstream.
/// Each `ok` must mean subscribed everywhere all the same.
async fn churn(
    mut client: Client,
    history: Arc<History>,
    joined: mpsc::UnboundedSender<String>,
    stop: watch::Receiver<bool>,
) -> Churned {
    const NAME: &str = "B-churn";
    let mut churned = Churned::default();
    let mut rng = Rng::new(0x00c0_ffee);
    while !*stop.borrow() {
        let topic = format!("churn:{}", rng.below(3));
        let reply = client.join(&topic).await;
        let at = Instant::now();
        for frame in client.take_pending() {
            record(&history, NAME, &frame);
        }
        if reply.status() != "ok" {
            if reply.reason() == SUBSCRIBE_TIMED_OUT {
                churned.timed_out += 1;
            } else {
                churned.unexpected.push(reply.to_string());
            }
            continue;
        }
        churned.joins += 1;
        match reply.response().get("upstream") {
            None => {}
            Some(up) if up == "unavailable" => churned.unavailable += 1,
            Some(_) => churned.unexpected.push(reply.to_string()),
        }
        history.joined(NAME, &topic, at);
        let _ = joined.send(topic.clone());
        let (mut got, deadline) = (0, Instant::now() + Duration::from_secs(1));
        while got < 2 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match client.next_incoming(left).await {
                Some(Incoming::Frame(frame)) => {
                    got += usize::from(frame.is_broadcast() && frame.topic() == topic);
                    record(&history, NAME, &frame);
                }
                Some(other) => panic!("B's churner ended: {other:?}"),
                None => break,
            }
        }
        let leaving = Instant::now();
        let reply = client.leave(&topic).await;
        if reply.status() != "ok" {
            churned.unexpected.push(reply.to_string());
        }
        let _ = history.left(NAME, &topic, leaving);
        for frame in client.take_pending() {
            record(&history, NAME, &frame);
        }
        let pause = 100 + rng.below(200);
        tokio::time::sleep(Duration::from_millis(u64::try_from(pause).expect("small"))).await;
    }
    churned
}

/// Scenario 9: the join guarantee under faults. A client on B joins fresh topics one after
/// another, another churns through a few (see [`churn`]), and A publishes to each topic the
/// moment B's join is answered ok; A's link, then B's, is cut for a second in the middle.
/// Every publish answered 200 while both nodes were ready reaches B.
async fn join_guarantee(kind: BackendKind) {
    let _serial = SERIAL.lock().await;
    let overrides = [
        ("--max-topics-per-socket", "5000"),
        ("--unsubscribe-linger", CHURN_LINGER),
    ];
    let cluster = Cluster::start(kind, &overrides).await;
    let history = Arc::new(History::new());
    let sampler = ReadinessSampler::start(&cluster.addrs());
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel::<String>();
    let (stop_joining, joining_stopped) = watch::channel(false);

    // A's publisher: two publishes to each topic, right after a join of it on B was answered.
    let publisher = {
        let history = Arc::clone(&history);
        let addr = cluster.a.addr();
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut seqs: HashMap<String, u64> = HashMap::new();
            while let Some(topic) = joined_rx.recv().await {
                let seq = seqs.entry(topic.clone()).or_default();
                for _ in 0..2 {
                    let _ = publish_http(addr, "A-pub", &topic, *seq, &history, &mut tally).await;
                    *seq += 1;
                }
            }
            tally
        })
    };
    // B's churner: joins, leaves and rejoins a few topics around the unsubscribe linger.
    let churner = tokio::spawn(churn(
        cluster.b.connect().await,
        Arc::clone(&history),
        joined_tx.clone(),
        joining_stopped.clone(),
    ));
    // B's joiner.
    let joiner = {
        let history = Arc::clone(&history);
        let mut client = cluster.b.connect().await;
        tokio::spawn(async move {
            let (mut ok, mut unavailable, mut timed_out) = (0, 0, 0);
            let mut unexpected = Vec::new();
            let mut i = 0;
            while !*joining_stopped.borrow() {
                let topic = format!("join:{i}");
                i += 1;
                let reply = client.join(&topic).await;
                let at = Instant::now();
                for frame in client.take_pending() {
                    record(&history, "B-joiner", &frame);
                }
                if reply.status() == "ok" {
                    history.joined("B-joiner", &topic, at);
                    match reply.response().get("upstream") {
                        None => ok += 1,
                        Some(up) if up == "unavailable" => unavailable += 1,
                        Some(_) => unexpected.push(reply.to_string()),
                    }
                    let _ = joined_tx.send(topic);
                } else if reply.reason() == SUBSCRIBE_TIMED_OUT {
                    timed_out += 1;
                } else {
                    unexpected.push(reply.to_string());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            drop(joined_tx);
            // Keep recording what arrives until the publisher is done and it settled.
            let deadline = Instant::now() + SETTLE;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match client.next_incoming(left).await {
                    Some(Incoming::Frame(frame)) => record(&history, "B-joiner", &frame),
                    Some(other) => panic!("B's joiner ended: {other:?}"),
                    None => break,
                }
            }
            (ok, unavailable, timed_out, unexpected)
        })
    };

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut outages = Vec::new();
    for side in [Side::A, Side::B] {
        let cut_at = Instant::now();
        cluster.proxy(side).cut();
        let _ = cluster.until_ready(side, false, cut_at, PATIENCE).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        cluster.proxy(side).pass();
        let healed_at = Instant::now();
        let recovered = cluster.until_ready(side, true, healed_at, PATIENCE).await;
        outages.push((side, recovered));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let _ = stop_joining.send(true);
    let churned = churner.await.expect("B's churner");
    let (ok, unavailable, timed_out, unexpected) = joiner.await.expect("B's joiner");
    let tally = publisher.await.expect("A's publisher");
    let green = sampler.stop().await;
    history.set_green(green);
    let checked = history.check(GRACE);
    report(
        kind,
        "join-guarantee",
        &format!(
            "B's joins: {ok} ok, {unavailable} ok with upstream unavailable, {timed_out} timed \
             out; B's churner: {} rejoins ({} with upstream unavailable, {} timed out); A's \
             publishes: {} ok, {} refused; recovery after each outage: {}; {}",
            churned.joins,
            churned.unavailable,
            churned.timed_out,
            tally.ok,
            tally.refused,
            outages
                .iter()
                .map(|(side, d)| format!("{side:?} {}", ms(*d)))
                .collect::<Vec<_>>()
                .join(", "),
            summary(&checked)
        ),
    );
    cluster.assert_report(&checked);
    assert!(
        unexpected.is_empty() && churned.unexpected.is_empty(),
        "undocumented join or leave replies: {unexpected:?} {:?}",
        churned.unexpected
    );
    assert!(
        churned.joins > 10,
        "the churner hardly churned: {}",
        churned.joins
    );
    assert!(tally.unexpected.is_empty(), "{:?}", tally.unexpected);
    assert!(checked.required > 0, "{checked}");
    assert!(ok > 0 && tally.ok > 0, "{checked}");
    assert!(
        unavailable > 0,
        "joins on B while its bridge was down are answered ok with upstream unavailable"
    );
    assert!(
        tally.refused > 0,
        "A's publishes while its bridge was down are refused"
    );
    for (side, recovered) in &outages {
        assert!(
            *recovered <= RECOVERY_BOUND,
            "{side:?} took {recovered:?} to recover"
        );
    }
}

// ---- one test per scenario and backend ----------------------------------------------------

/// A `redis` and a `postgres` test of a scenario, in a module named after it.
macro_rules! both {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use switchboard_e2e::BackendKind;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn redis() {
                super::$scenario(BackendKind::Redis).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$scenario(BackendKind::Postgres).await;
            }
        }
    )*};
}

both!(
    steady_state,
    cut_link,
    black_hole,
    freeze_backend,
    kill_backend,
    slow_links,
    flood_while_black_holed,
    many_topics_resubscribe,
    join_guarantee,
);

/// The flag list keeps one value per flag (the node refuses a flag given twice).
#[test]
fn flags_are_overridden_not_repeated() {
    let args = flags(&[
        ("--backend-timeout", "6s"),
        ("--max-topics-per-socket", "9"),
    ]);
    let at = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].as_str())
    };
    assert_eq!(at("--backend-timeout"), Some("6s"));
    assert_eq!(at("--max-topics-per-socket"), Some("9"));
    assert_eq!(args.iter().filter(|a| *a == "--backend-timeout").count(), 1);
}
