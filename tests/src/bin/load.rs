//! `load`: drives many WebSocket clients against a `switchboard` node and measures it.
//!
//! ```text
//! load fanout|latency|many-topics|idle|cross-node|history|smoke|run [options] [-- node args]
//! ```
//!
//! Each scenario is a preset list of *phases*; flags override every phase of the preset. A
//! phase connects `--clients` subscribers and joins them to topics (`--pattern one`: all on
//! `load:all`; `own`: each on `load:own:<i>`; `own-shared`: each on its own topic and on
//! `load:shared`), publishes for `--seconds` from `--publishers` publishers (Phoenix pushes on
//! a socket, or `POST /api/publish` with `--via http`) at `--rate` msg/s or at the maximum rate
//! (`--rate max`: at most `--window` messages in flight past the slowest subscriber, so the
//! node's slow-consumer cut-off is never what is measured), waits for the deliveries to drain,
//! and reports deliveries/s, publish→deliver latency p50/p99/p99.9, errors and closes, the
//! node's RSS (baseline, per connection) and the CPU the node and this tool used. `--runs N`
//! repeats each phase and reports medians. A table goes to standard output; `--json` prints
//! one JSON object instead.
//!
//! The node is `--url ws://HOST:PORT` (twice for two nodes: publishers on the first,
//! subscribers on the second), or, by default (`--spawn`), one this tool starts: `--node-bin`,
//! else `$SWITCHBOARD_BIN`, else the `switchboard` binary next to this one; arguments after
//! `--` go to the node. `cross-node` starts a private `redis-server` and two nodes, then runs
//! `redis-benchmark` against that Redis for comparison. RSS and CPU need the node's pid:
//! known when spawned, else `--node-pid`.
//!
//! `history` ([`history`], in `load/history/`) measures what a topic's history costs on
//! nodes it starts with a config file of its own, on the memory backend and through a private
//! Redis or PostgreSQL (two nodes, as `cross-node`): publish throughput with history on vs off
//! (the same phases on `hist:` and `load:` topics of the same nodes, side by side), the time
//! to recover 1,000 missed messages, and the memory per topic at `history = 100`. A broadcast of a topic with history carries its
//! position in the ref slot (`[null,"17:k3Jd9",...`), which the reader recognises as well.
//!
//! # Keeping the tool cheap
//!
//! The tool shares the machine with the node, so what it spends per delivered frame is taken
//! from the node. Clients are a minimal hand-written WebSocket client on tokio (no
//! tungstenite): every connection of a process reads into one per-thread scratch buffer and
//! keeps only an unfinished frame of its own, so an idle connection costs a socket, a small
//! task and no buffer. Delivered frames are never JSON-parsed: a broadcast is recognised by its
//! `[null,null,` prefix and the send timestamp found by byte search for `"t":`. The clock is
//! read once per `read()`, not per frame, and latencies go into a log-linear histogram
//! (1.6 % resolution) that worker processes send back to be merged. Every process runs one
//! thread (a current-thread runtime); more client CPU means more processes.
//!
//! # Many connections
//!
//! Each process holds at most `--per-process` connections (default 10,000): the rest are
//! spread over worker processes, which are this binary re-executed with `--worker SPEC`. They
//! connect their share, report `ready`, print their progress every 10 ms (which the maximum
//! rate's window uses) and on `stop` send their counts and histogram. Client sockets are bound
//! to 127.0.0.1, 127.0.0.2, ... (`--sources`, default one per 16,000 clients) before
//! connecting, since one source address runs out of ephemeral ports near 28,000 connections.
//! At start each process raises its `RLIMIT_NOFILE` soft limit to the hard limit.
//!
//! Timestamps are wall-clock nanoseconds (`CLOCK_REALTIME`, the same in every process); every
//! loop ends by a deadline.

// A measuring tool: printing its report (and its usage) is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

// In `load/`, not next to this file: cargo would take `src/bin/history/` for a binary.
#[path = "load/history/mod.rs"]
mod history;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use memchr::memmem;
use serde_json::{json, Value};
use switchboard_e2e::redis::{self as redis_support, RedisServer};
use switchboard_e2e::{BackendKind, BackendServer, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, LocalSet};

// ---- constants -----------------------------------------------------------------------------

/// Phoenix heartbeat interval: every connection sends one after this long without traffic.
const HEARTBEAT: Duration = Duration::from_secs(25);
/// Per-thread read buffer every connection of a process reads into.
const SCRATCH_BYTES: usize = 256 * 1024;
/// Connections being set up at once (the node's listen backlog is finite).
const CONNECT_CONCURRENCY: usize = 128;
/// How long one connection may take to connect, upgrade and join.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// After publishing stops, how long without progress before undelivered frames count missing.
const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// The longest drain, whatever the progress.
const DRAIN_MAX: Duration = Duration::from_secs(15);
/// HTTP publish requests in flight on one connection (pipelined). At most 16: actix-http
/// (3.20) queues at most 16 pipelined requests and, with more already read, can stop
/// decoding them until its 5 s keep-alive timer closes the connection with requests
/// unanswered (seen with 64: a few connections in a hundred).
const HTTP_PIPELINE: u64 = 16;
/// How often workers report their progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(10);
/// Clients per source address by default.
const CLIENTS_PER_SOURCE: usize = 16_000;
/// The namespace of every scenario's topics but `history`'s (`load:all`, `load:own:<i>`,
/// `load:shared`).
const NAMESPACE: &str = "load";
/// `redis-benchmark`'s channel (no node subscribes to it).
const BENCH_CHANNEL: &str = "load:bench";

/// Finds the send timestamp in a delivered frame.
static FIND_T: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"t\":"));
/// Finds the reply event.
static FIND_REPLY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"phx_reply\""));
/// Finds an ok status.
static FIND_OK: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"status\":\"ok\""));

thread_local! {
    /// The buffer every connection on this thread reads into.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

// ---- options -------------------------------------------------------------------------------

const USAGE: &str = "\
usage: load SCENARIO [options] [-- node args]
scenarios (presets; flags override every phase):
  fanout       1 topic x 1,000 subscribers, one socket publisher at the maximum rate
  latency      max rate, then 1,000 subs at 10% of it, 1,000 subs at 100 msg/s,
               100 subs at 100 msg/s: latency percentiles
  many-topics  10,000 clients each on its own topic + load:shared; HTTP publishes to own
               topics (10,000 msg/s) and to the shared one (10 msg/s)
  idle         18,000 idle clients (own topic each): node RSS per connection
  cross-node   two nodes + a private redis: 10 subs on B at 10,000 msg/s from A, max rate
               to 1 sub on B, 1,000 subs on B at max rate; then redis-benchmark PUBLISH
  history      per backend (memory: one node; redis, postgres: two nodes + a private
               redis-server or PostgreSQL cluster, A -> B): publish throughput with
               history = 100 vs none (socket 1x10 max, http 4 pubs to 1,000 own topics
               max; same nodes, side by side), recovery of 1,000 missed messages (join
               with since -> last one, checked exactly once in order), memory per topic at
               history = 100 (1,000 topics x 100 publications of 100 bytes); own nodes only
  smoke        ~3 s, 50 clients, own node; exits 1 if a delivery is missing
  run          one phase from the flags alone
target:
  --url ws://HOST:PORT     a running node (twice: publishers on the first, subscribers on
                           the second); default: start one (--spawn)
  --spawn                  start the node(s) here (the default without --url)
  --node-bin PATH          the node binary (else $SWITCHBOARD_BIN, else ./switchboard
                           next to this tool)
  --node-pid PID           pid of a --url node, for RSS and CPU (repeat per --url)
  -- ARGS                  extra arguments for spawned nodes
phase overrides:
  --clients N              subscriber connections
  --pattern one|own|own-shared
  --publishers N           publisher connections (rate is split between them)
  --via socket|http        Phoenix push on a socket, or POST /api/publish
  --rate N|max             messages/s in total (own topics, for own-shared)
  --shared-rate N          messages/s to load:shared (own-shared)
  --seconds S              publishing time
  --window N               messages in flight past the slowest subscriber at max rate
                           (100; 2000 for cross-node's 1-subscriber phase)
  --payload-bytes N        padding added to each message's payload
  --hold S                 wait this long connected before measuring RSS
other:
  --runs N                 repeat each phase, report medians (default 1)
  --per-process N          connections per process before worker processes (10000)
  --sources N              source addresses 127.0.0.1.. (default 1 per 16,000 clients)
  --benchmark-requests N   redis-benchmark -n (cross-node; 200000)
  --json                   print one JSON object instead of the table
history:
  --backend LIST           memory, redis, postgres, comma-separated, or all (all)
  --missed N               messages a recovering socket missed (1000)
  --recoveries N           recoveries per run and backend (5)
  --topics N               topics of the memory measurement (1000)";

/// The topic every client joins with `--pattern one`: `<namespace>:all`.
fn topic_all(namespace: &str) -> String {
    format!("{namespace}:all")
}

/// The shared topic of `--pattern own-shared`: `<namespace>:shared`.
fn topic_shared(namespace: &str) -> String {
    format!("{namespace}:shared")
}

/// Client `i`'s own topic: `<namespace>:own:<i>`.
fn topic_own(namespace: &str, i: usize) -> String {
    format!("{namespace}:own:{i}")
}

/// How clients join topics (in a phase's namespace, `load` but for the `history` scenario).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Everyone on [`topic_all`].
    One,
    /// Each client on its [`topic_own`].
    Own,
    /// Each client on its [`topic_own`] and on [`topic_shared`].
    OwnShared,
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "one" => Ok(Self::One),
            "own" => Ok(Self::Own),
            "own-shared" => Ok(Self::OwnShared),
            _ => Err(format!("unknown pattern {text:?}")),
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::One => "one",
            Self::Own => "own",
            Self::OwnShared => "own-shared",
        }
    }

    /// The topics client `i` joins in `namespace`.
    fn topics(self, namespace: &str, i: usize) -> Vec<String> {
        match self {
            Self::One => vec![topic_all(namespace)],
            Self::Own => vec![topic_own(namespace, i)],
            Self::OwnShared => vec![topic_own(namespace, i), topic_shared(namespace)],
        }
    }
}

/// Which topics subscribers join: a pattern in a namespace.
#[derive(Debug, Clone)]
struct TopicPlan {
    pattern: Pattern,
    namespace: Rc<str>,
}

impl TopicPlan {
    /// The topics client `i` joins.
    fn topics(&self, i: usize) -> Vec<String> {
        self.pattern.topics(&self.namespace, i)
    }
}

/// How publishers publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// A Phoenix push on a joined socket.
    Socket,
    /// `POST /api/publish` on a keep-alive connection.
    Http,
}

/// A publishing rate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rate {
    /// As fast as the window allows.
    Max,
    /// Messages per second, in total.
    Fixed(f64),
    /// This fraction of the msgs/s the phase before measured (the latency preset).
    OfPrevious(f64),
}

impl Rate {
    fn parse(text: &str) -> Result<Self, String> {
        if text == "max" {
            return Ok(Self::Max);
        }
        let rate: f64 = text.parse().map_err(|e| format!("rate {text}: {e}"))?;
        if rate < 0.0 || !rate.is_finite() {
            return Err(format!("rate {text} must be a positive number or max"));
        }
        Ok(Self::Fixed(rate))
    }
}

/// One measurement: connect, publish, drain, report.
#[derive(Debug, Clone)]
struct Phase {
    name: String,
    /// The namespace of its topics ([`NAMESPACE`] but in the `history` scenario).
    namespace: String,
    clients: usize,
    pattern: Pattern,
    publishers: usize,
    via: Via,
    rate: Rate,
    shared_rate: f64,
    seconds: f64,
    window: u64,
    payload_bytes: usize,
    hold: f64,
}

impl Phase {
    fn new(name: &str, clients: usize) -> Self {
        Self {
            name: name.to_owned(),
            namespace: NAMESPACE.to_owned(),
            clients,
            pattern: Pattern::One,
            publishers: 1,
            via: Via::Socket,
            rate: Rate::Max,
            shared_rate: 0.0,
            seconds: 5.0,
            window: 100,
            payload_bytes: 0,
            hold: 0.0,
        }
    }

    /// Whether anything is published.
    fn publishes(&self) -> bool {
        match self.rate {
            Rate::Fixed(rate) => rate > 0.0 || self.shared_rate > 0.0,
            Rate::Max | Rate::OfPrevious(_) => true,
        }
    }
}

/// Flags that override every phase of a preset.
#[derive(Debug, Clone, Default)]
struct Overrides {
    clients: Option<usize>,
    pattern: Option<Pattern>,
    publishers: Option<usize>,
    via: Option<Via>,
    rate: Option<Rate>,
    shared_rate: Option<f64>,
    seconds: Option<f64>,
    window: Option<u64>,
    payload_bytes: Option<usize>,
    hold: Option<f64>,
}

impl Overrides {
    fn apply(&self, phase: &mut Phase) {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { phase.$field = v; } )* };
        }
        set!(
            clients,
            pattern,
            publishers,
            via,
            rate,
            shared_rate,
            seconds,
            window,
            payload_bytes,
            hold
        );
    }
}

/// Command-line options.
#[derive(Debug, Clone)]
struct Options {
    scenario: String,
    urls: Vec<SocketAddr>,
    spawn: bool,
    node_bin: Option<PathBuf>,
    node_args: Vec<String>,
    node_pids: Vec<u32>,
    runs: usize,
    per_process: usize,
    sources: Option<usize>,
    benchmark_requests: u64,
    json: bool,
    overrides: Overrides,
    /// The `history` scenario's own flags.
    history: history::HistoryOptions,
}

fn parse_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    let host = rest.split('/').next().unwrap_or(rest);
    let host = host.replace("localhost", "127.0.0.1");
    host.parse()
        .map_err(|e| format!("--url {url}: want ws://IP:PORT ({e})"))
}

fn parse_args(args: Vec<String>) -> Result<Options, String> {
    let mut args = args.into_iter();
    let scenario = args.next().ok_or("no scenario given")?;
    if scenario == "--help" || scenario == "-h" {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let mut options = Options {
        scenario,
        urls: Vec::new(),
        spawn: false,
        node_bin: None,
        node_args: Vec::new(),
        node_pids: Vec::new(),
        runs: 1,
        per_process: 10_000,
        sources: None,
        benchmark_requests: 200_000,
        json: false,
        overrides: Overrides::default(),
        history: history::HistoryOptions::default(),
    };
    let o = &mut options.overrides;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--" => {
                options.node_args = args.by_ref().collect();
                break;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--spawn" => {
                options.spawn = true;
                continue;
            }
            "--json" => {
                options.json = true;
                continue;
            }
            _ => {}
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| -> Result<f64, String> {
            v.parse::<f64>().map_err(|e| format!("{flag} {v}: {e}"))
        };
        let int = |v: &str| -> Result<usize, String> {
            v.replace('_', "")
                .parse::<usize>()
                .map_err(|e| format!("{flag} {v}: {e}"))
        };
        match flag.as_str() {
            "--url" => options.urls.push(parse_addr(&value)?),
            "--node-bin" => options.node_bin = Some(PathBuf::from(value)),
            "--node-pid" => options.node_pids.push(int(&value)? as u32),
            "--runs" => options.runs = int(&value)?.max(1),
            "--per-process" => options.per_process = int(&value)?.max(1),
            "--sources" => options.sources = Some(int(&value)?.clamp(1, 254)),
            "--benchmark-requests" => options.benchmark_requests = int(&value)? as u64,
            "--clients" => o.clients = Some(int(&value)?),
            "--pattern" => o.pattern = Some(Pattern::parse(&value)?),
            "--publishers" => o.publishers = Some(int(&value)?.max(1)),
            "--via" => {
                o.via = Some(match value.as_str() {
                    "socket" => Via::Socket,
                    "http" => Via::Http,
                    _ => return Err(format!("--via {value}: socket or http")),
                });
            }
            "--rate" => o.rate = Some(Rate::parse(&value)?),
            "--shared-rate" => o.shared_rate = Some(num(&value)?),
            "--seconds" => o.seconds = Some(num(&value)?),
            "--window" => o.window = Some(int(&value)?.max(1) as u64),
            "--payload-bytes" => o.payload_bytes = Some(int(&value)?),
            "--hold" => o.hold = Some(num(&value)?),
            "--backend" => options.history.backends = history::Backend::parse_list(&value)?,
            "--missed" => options.history.missed = int(&value)?.max(1) as u64,
            "--recoveries" => options.history.recoveries = int(&value)?,
            "--topics" => options.history.topics = int(&value)?.max(1) as u64,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if options.urls.len() > 2 {
        return Err("at most two --url".into());
    }
    if options.urls.is_empty() {
        options.spawn = true;
    }
    if options.scenario == "history" && !options.urls.is_empty() {
        return Err("history starts its own nodes (with its own config file): no --url".into());
    }
    Ok(options)
}

/// The phases of a scenario and how many nodes it needs.
fn preset(options: &Options) -> Result<(Vec<Phase>, usize), String> {
    let mut phases = match options.scenario.as_str() {
        "fanout" => vec![Phase::new("fanout 1x1000 max", 1_000)],
        "latency" => {
            let mut max = Phase::new("max rate 1x1000", 1_000);
            max.seconds = 3.0;
            let mut tenth = Phase::new("1x1000 at 10% of max", 1_000);
            tenth.rate = Rate::OfPrevious(0.1);
            tenth.seconds = 10.0;
            let mut hundred = Phase::new("1x1000 at 100 msg/s", 1_000);
            hundred.rate = Rate::Fixed(100.0);
            hundred.seconds = 10.0;
            let mut small = Phase::new("1x100 at 100 msg/s", 100);
            small.rate = Rate::Fixed(100.0);
            small.seconds = 10.0;
            vec![max, tenth, hundred, small]
        }
        "many-topics" => {
            let mut phase = Phase::new("10k own + shared", 10_000);
            phase.pattern = Pattern::OwnShared;
            phase.via = Via::Http;
            phase.publishers = 4;
            phase.rate = Rate::Fixed(10_000.0);
            phase.shared_rate = 10.0;
            phase.seconds = 10.0;
            vec![phase]
        }
        "idle" => {
            let mut phase = Phase::new("idle 18k", 18_000);
            phase.pattern = Pattern::Own;
            phase.rate = Rate::Fixed(0.0);
            phase.hold = 3.0;
            vec![phase]
        }
        "cross-node" => {
            let mut latency = Phase::new("A->B 10 subs 10k msg/s", 10);
            latency.rate = Rate::Fixed(10_000.0);
            latency.seconds = 10.0;
            let mut max = Phase::new("A->B 1 sub max", 1);
            max.window = 2_000;
            let fanout = Phase::new("A->B 1x1000 max", 1_000);
            vec![latency, max, fanout]
        }
        "smoke" => {
            let mut socket = Phase::new("smoke socket", 50);
            socket.rate = Rate::Fixed(200.0);
            socket.publishers = 2;
            socket.seconds = 1.5;
            let mut http = Phase::new("smoke http own-shared", 50);
            http.pattern = Pattern::OwnShared;
            http.via = Via::Http;
            http.publishers = 2;
            http.rate = Rate::Fixed(200.0);
            http.shared_rate = 20.0;
            http.seconds = 1.0;
            vec![socket, http]
        }
        "history" => history::phases(),
        "run" => vec![Phase::new("run", 100)],
        other => return Err(format!("unknown scenario {other:?}")),
    };
    for phase in &mut phases {
        options.overrides.apply(phase);
    }
    let nodes = if options.scenario == "cross-node" || options.urls.len() == 2 {
        2
    } else {
        1
    };
    Ok((phases, nodes))
}

// ---- entry ---------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nofile = raise_nofile_limit();
    if args.first().map(String::as_str) == Some("--worker") {
        let spec = args.get(1).cloned().unwrap_or_default();
        worker_main(&spec);
        return;
    }
    let options = match parse_args(args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("load: {message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let (phases, nodes) = match preset(&options) {
        Ok(preset) => preset,
        Err(message) => {
            eprintln!("load: {message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Some(bin) = &options.node_bin {
        // Before any thread exists: the harness reads this variable to find the node.
        std::env::set_var("SWITCHBOARD_BIN", bin);
    } else if std::env::var_os("SWITCHBOARD_BIN").is_none() {
        if let Some(sibling) = sibling_binary() {
            std::env::set_var("SWITCHBOARD_BIN", sibling);
        }
    }
    let biggest = phases.iter().map(|p| p.clients).max().unwrap_or(0);
    let in_process = biggest.min(options.per_process) as u64 + 64;
    if nofile < in_process {
        eprintln!(
            "load: the open-file limit is {nofile}, below the {in_process} sockets one process \
             needs here: raise it (`ulimit -n {in_process}`, or the hard limit in \
             /etc/security/limits.conf) or lower --per-process"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("load: cannot start the runtime: {e}");
            std::process::exit(1);
        });
    let ok = if options.scenario == "history" {
        LocalSet::new().block_on(&runtime, history::run(options, phases, nofile))
    } else {
        LocalSet::new().block_on(&runtime, run(options, phases, nodes, nofile))
    };
    std::process::exit(i32::from(!ok));
}

/// Raises the soft open-file limit to the hard one; the soft limit now in force.
fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("load: cannot raise RLIMIT_NOFILE ({e}); run `ulimit -n <hard limit>` first");
            rlimit::Resource::NOFILE
                .get()
                .map_or(1024, |(soft, _)| soft)
        }
    }
}

/// The `switchboard` binary in the same directory as this program, if there is one.
fn sibling_binary() -> Option<PathBuf> {
    let path = std::env::current_exe().ok()?.parent()?.join("switchboard");
    path.is_file().then_some(path)
}

/// Wall-clock nanoseconds: comparable between processes.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// ---- the nodes -----------------------------------------------------------------------------

/// The nodes measured, owned when started here.
struct Target {
    /// Publishers connect to the first, subscribers to the last.
    addrs: Vec<SocketAddr>,
    pids: Vec<Option<u32>>,
    /// Kept alive for the run; dropping kills them (before their backend).
    _nodes: Vec<Node>,
    /// The private Redis or PostgreSQL the nodes share, when started here (the `history`
    /// scenario reads its memory).
    backend: Option<BackendServer>,
    binary: String,
}

impl Target {
    /// The port of the private Redis, when the nodes share one.
    fn redis_port(&self) -> Option<u16> {
        self.backend
            .as_ref()
            .and_then(BackendServer::redis)
            .map(RedisServer::port)
    }
}

/// The nodes of a scenario: `options`' own, or `nodes` started here (two share a private
/// Redis).
async fn target(options: &Options, nodes: usize) -> Target {
    if !options.spawn {
        let addrs = if options.urls.len() == 1 && nodes == 2 {
            vec![options.urls[0], options.urls[0]]
        } else {
            options.urls.clone()
        };
        let pids = (0..addrs.len())
            .map(|i| options.node_pids.get(i).copied())
            .collect();
        return Target {
            addrs,
            pids,
            backend: None,
            _nodes: Vec::new(),
            binary: "(running)".into(),
        };
    }
    let backend = (nodes > 1).then_some(BackendKind::Redis);
    spawn_target(options, nodes, backend, &[]).await
}

/// Starts `nodes` nodes with `extra` arguments (before the ones after `--`), sharing topics
/// through a private server of `backend` when one is given.
async fn spawn_target(
    options: &Options,
    nodes: usize,
    backend: Option<BackendKind>,
    extra: &[String],
) -> Target {
    let env = [("RUST_LOG", "warn")];
    // Publishers push as fast as the scenario asks: spawned nodes get no per-socket push
    // limit (arguments after `--` come later and win). A node given with --url must be
    // started with a high --push-rate for socket-publishing scenarios.
    let node_args: Vec<String> = ["--push-rate", "1000000000", "--push-burst", "1000000000"]
        .iter()
        .map(|arg| (*arg).to_owned())
        .chain(extra.iter().cloned())
        .chain(options.node_args.iter().cloned())
        .collect();
    let binary = switchboard_e2e::node::binary_path().display().to_string();
    let server = backend.map(BackendServer::start);
    let mut args = match &server {
        None => Vec::new(),
        // As the bridge tests start them.
        Some(server) => match server.redis() {
            Some(redis) => redis_support::bridged_args(redis.port()),
            None => server.node_args(&server.url()),
        },
    };
    args.extend(node_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started: Vec<Node> = (0..nodes.max(1))
        .map(|_| Node::start_with_env(&args, &env))
        .collect();
    if server.is_some() {
        redis_support::wait_bridge_up(&started.iter().collect::<Vec<_>>()).await;
    }
    Target {
        addrs: started.iter().map(Node::addr).collect(),
        pids: started.iter().map(|node| Some(node.pid())).collect(),
        backend: server,
        _nodes: started,
        binary,
    }
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// User + system CPU time of `pid` (or `self`), in clock ticks (USER_HZ, 100 on Linux).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based over the whole line).
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

// ---- histogram -----------------------------------------------------------------------------

/// Sub-buckets per power of two.
const HIST_SUB: usize = 64;

/// A log-linear histogram of nanoseconds: 64 buckets per power of two above 128 ns.
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; 60 * HIST_SUB],
            total: 0,
            max: 0,
            sum: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < 2 * HIST_SUB as u64 {
            return v as usize;
        }
        let exponent = 63 - v.leading_zeros();
        let shift = exponent - HIST_SUB.trailing_zeros();
        (shift as usize) * HIST_SUB + (v >> shift) as usize
    }

    fn lower(index: usize) -> u64 {
        if index < 2 * HIST_SUB {
            return index as u64;
        }
        let shift = index / HIST_SUB - 1;
        ((index % HIST_SUB + HIST_SUB) as u64) << shift
    }

    fn record(&mut self, v: u64) {
        let i = Self::index(v).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// The `q` quantile (bucket midpoint), ns.
    fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = (Self::lower(i), Self::lower(i + 1));
                return Some((lo + (hi - lo) / 2).min(self.max));
            }
        }
        Some(self.max)
    }

    fn to_json(&self) -> Value {
        let sparse: Vec<[u64; 2]> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| [i as u64, *c])
            .collect();
        json!({ "b": sparse, "max": self.max, "sum": self.sum.to_string() })
    }

    fn from_json(value: &Value) -> Self {
        let mut hist = Self::new();
        for pair in value["b"].as_array().into_iter().flatten() {
            let (Some(i), Some(c)) = (pair[0].as_u64(), pair[1].as_u64()) else {
                continue;
            };
            if let Some(slot) = hist.counts.get_mut(i as usize) {
                *slot += c;
                hist.total += c;
            }
        }
        hist.max = value["max"].as_u64().unwrap_or(0);
        hist.sum = value["sum"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        hist
    }

    fn summary_us(&self) -> Value {
        let us = |q: f64| self.quantile(q).map(|ns| ns as f64 / 1e3);
        json!({
            "count": self.total,
            "p50": us(0.50),
            "p99": us(0.99),
            "p99_9": us(0.999),
            "max": (self.total > 0).then(|| self.max as f64 / 1e3),
            "mean": (self.total > 0).then(|| self.sum as f64 / self.total as f64 / 1e3),
        })
    }
}

// ---- the WebSocket client ------------------------------------------------------------------

/// Appends a client (masked) text frame carrying `text`. The masking key is zero, so the
/// payload goes out as is (RFC 6455 requires the mask bit, not a random key on loopback).
fn encode_text(out: &mut Vec<u8>, text: &[u8]) {
    out.push(0x81);
    match text.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(text);
}

/// The next complete server frame in `buf`: (opcode, payload start, payload end).
fn next_frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, start) = match buf[1] & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let start: usize = start + if buf[1] & 0x80 != 0 { 4 } else { 0 };
    let end = start.checked_add(len)?;
    (buf.len() >= end).then_some((opcode, start, end))
}

/// The decimal number right after `"t":` in `text`, spaces allowed before it (PostgreSQL
/// renders a payload with history as `jsonb`: `{"t": 17..., ...}`).
fn timestamp(text: &[u8]) -> Option<u64> {
    let at = FIND_T.find(text)? + 4;
    let digits = text[at..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit());
    let mut value: Option<u64> = None;
    for d in digits {
        value = Some(value.unwrap_or(0).wrapping_mul(10) + u64::from(d - b'0'));
    }
    value
}

/// Opens a WebSocket to `addr` from `source`: the two halves and bytes read past the handshake.
async fn open(
    addr: SocketAddr,
    source: Ipv4Addr,
) -> Result<(OwnedReadHalf, OwnedWriteHalf, Vec<u8>), String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let mut stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr} from {source}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("upgrade request: {e}"))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0_u8; 512];
    let end = loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("upgrade response: {e}"))?;
        if n == 0 {
            return Err("closed during the upgrade".into());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = memmem::find(&head, b"\r\n\r\n") {
            break end + 4;
        }
        if head.len() > 8192 {
            return Err("upgrade response too long".into());
        }
    };
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&head[..head.len().min(80)]).into_owned();
        return Err(format!("upgrade refused: {line}"));
    }
    let rest = head.split_off(end);
    let (read, write) = stream.into_split();
    Ok((read, write, rest))
}

/// What reads on one connection count into.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// Subscriber number `slot` of this process.
    Subscriber(usize),
    /// A publisher reading its own copies.
    Publisher,
}

/// Counts of one phase in one process, shared by its tasks (one thread).
#[derive(Debug)]
struct Shared {
    /// Timed broadcasts each subscriber received.
    received: Vec<Cell<u64>>,
    /// Subscribers that have seen a warm-up broadcast.
    warmed: Cell<usize>,
    /// Subscribers joined to all their topics.
    joined: Cell<usize>,
    /// Subscribers that failed to connect or join.
    failed: Cell<usize>,
    first_failure: RefCell<Option<String>>,
    /// Error replies (join refused, unmatched topic ...).
    error_replies: Cell<u64>,
    first_error_reply: RefCell<Option<String>>,
    /// Connections that ended during the phase, by why.
    closes: RefCell<BTreeMap<String, u64>>,
    /// publish→deliver latencies of subscribers' deliveries.
    hist: RefCell<Histogram>,
    /// Broadcasts publishers got back (their own copies).
    publisher_received: Cell<u64>,
    /// Wall clock of the last timed delivery.
    last_at: Cell<u64>,
    /// Messages sent by this process's publishers.
    sent: Cell<u64>,
    /// Woken when subscribers make progress (the max-rate window).
    progress: Notify,
    /// Set when the phase ends: connections are dropped, not reported as closed.
    ending: Cell<bool>,
}

impl Shared {
    fn new(subscribers: usize) -> Self {
        Self {
            received: (0..subscribers).map(|_| Cell::new(0)).collect(),
            warmed: Cell::new(0),
            joined: Cell::new(0),
            failed: Cell::new(0),
            first_failure: RefCell::new(None),
            error_replies: Cell::new(0),
            first_error_reply: RefCell::new(None),
            closes: RefCell::new(BTreeMap::new()),
            hist: RefCell::new(Histogram::new()),
            publisher_received: Cell::new(0),
            last_at: Cell::new(0),
            sent: Cell::new(0),
            progress: Notify::new(),
            ending: Cell::new(false),
        }
    }

    fn fail(&self, why: String) {
        self.failed.set(self.failed.get() + 1);
        self.first_failure.borrow_mut().get_or_insert(why);
    }

    fn closed(&self, why: String) {
        if !self.ending.get() {
            *self.closes.borrow_mut().entry(why).or_insert(0) += 1;
        }
    }

    fn received_sum(&self) -> u64 {
        self.received.iter().map(Cell::get).sum()
    }

    fn received_min(&self) -> u64 {
        self.received
            .iter()
            .map(Cell::get)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The phase's counts as JSON (what a worker sends back).
    fn to_json(&self) -> Value {
        json!({
            "connected": self.joined.get(),
            "failed": self.failed.get(),
            "first_failure": *self.first_failure.borrow(),
            "received": self.received_sum(),
            "error_replies": self.error_replies.get(),
            "first_error_reply": *self.first_error_reply.borrow(),
            "closes": *self.closes.borrow(),
            "last_at": self.last_at.get(),
            "hist": self.hist.borrow().to_json(),
        })
    }
}

/// What one read batch asked the reader to do next.
enum Next {
    Read,
    Close(String),
}

/// Handles the frames complete in `buf`; returns how many bytes were used.
fn handle_frames(
    buf: &[u8],
    now: u64,
    role: Role,
    shared: &Shared,
    conn: &mut ConnState,
    next: &mut Next,
) -> usize {
    let mut used = 0;
    while let Some((opcode, start, end)) = next_frame(&buf[used..]) {
        let payload = &buf[used + start..used + end];
        used += end;
        match opcode {
            0x1 => handle_text(payload, now, role, shared, conn),
            0x8 => {
                let code = payload
                    .get(..2)
                    .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                *next = Next::Close(format!("close {code} {reason}"));
                break;
            }
            // Ping, pong, binary, continuation: the node sends none of these to clients.
            _ => {}
        }
    }
    used
}

/// Per-connection reader state.
#[derive(Debug)]
struct ConnState {
    /// Join replies still expected.
    joins_left: usize,
    /// Whether a warm-up broadcast was seen.
    warmed: bool,
}

/// Whether `text` is a broadcast: `[null,null,...` or, on a topic with history,
/// `[null,"<offset>:<epoch>",...` (the heartbeat's reply, `[null,"hb",...`, is not one).
fn is_broadcast(text: &[u8]) -> bool {
    text.starts_with(b"[null,null,")
        || (text.starts_with(b"[null,\"") && text.get(7).is_some_and(u8::is_ascii_digit))
}

fn handle_text(text: &[u8], now: u64, role: Role, shared: &Shared, conn: &mut ConnState) {
    if is_broadcast(text) {
        let Some(sent) = timestamp(text) else {
            // A warm-up broadcast (no timestamp).
            if !conn.warmed {
                conn.warmed = true;
                if matches!(role, Role::Subscriber(_)) {
                    shared.warmed.set(shared.warmed.get() + 1);
                    shared.progress.notify_one();
                }
            }
            return;
        };
        match role {
            Role::Subscriber(slot) => {
                let cell = &shared.received[slot];
                cell.set(cell.get() + 1);
                shared.hist.borrow_mut().record(now.saturating_sub(sent));
            }
            Role::Publisher => shared
                .publisher_received
                .set(shared.publisher_received.get() + 1),
        }
    } else if FIND_REPLY.find(text).is_some() {
        if FIND_OK.find(text).is_some() {
            if conn.joins_left > 0 {
                conn.joins_left -= 1;
                if conn.joins_left == 0 && matches!(role, Role::Subscriber(_)) {
                    shared.joined.set(shared.joined.get() + 1);
                }
            }
        } else {
            shared.error_replies.set(shared.error_replies.get() + 1);
            shared
                .first_error_reply
                .borrow_mut()
                .get_or_insert_with(|| String::from_utf8_lossy(text).into_owned());
        }
    }
}

/// Reads `read` until it closes, counting frames into `shared`. With `write`, a heartbeat
/// goes out after [`HEARTBEAT`] of silence.
async fn reader(
    read: OwnedReadHalf,
    mut write: Option<OwnedWriteHalf>,
    role: Role,
    shared: Rc<Shared>,
    mut pending: Vec<u8>,
    joins: usize,
) {
    let mut conn = ConnState {
        joins_left: joins,
        warmed: false,
    };
    let mut next = Next::Read;
    if !pending.is_empty() {
        let used = handle_frames(&pending, now_ns(), role, &shared, &mut conn, &mut next);
        pending.drain(..used);
    }
    loop {
        if let Next::Close(why) = next {
            shared.closed(why);
            return;
        }
        let ready = match &mut write {
            Some(w) => match tokio::time::timeout(HEARTBEAT, read.readable()).await {
                Ok(ready) => ready,
                Err(_) => {
                    let mut frame = Vec::new();
                    encode_text(&mut frame, br#"[null,"hb","phoenix","heartbeat",{}]"#);
                    if let Err(e) = w.write_all(&frame).await {
                        shared.closed(format!("heartbeat write: {}", e.kind()));
                        return;
                    }
                    continue;
                }
            },
            None => read.readable().await,
        };
        if let Err(e) = ready {
            shared.closed(format!("io error: {}", e.kind()));
            return;
        }
        let outcome = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            match read.try_read(&mut scratch) {
                Ok(0) => Err("end of stream".to_owned()),
                Ok(n) => {
                    let now = now_ns();
                    if pending.is_empty() {
                        let used =
                            handle_frames(&scratch[..n], now, role, &shared, &mut conn, &mut next);
                        pending.extend_from_slice(&scratch[used..n]);
                    } else {
                        pending.extend_from_slice(&scratch[..n]);
                        let used =
                            handle_frames(&pending, now, role, &shared, &mut conn, &mut next);
                        pending.drain(..used);
                    }
                    if pending.is_empty() && pending.capacity() > 4096 {
                        pending = Vec::new();
                    }
                    if matches!(role, Role::Subscriber(_)) {
                        shared.last_at.set(now);
                    }
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(format!("io error: {}", e.kind())),
            }
        });
        if let Err(why) = outcome {
            shared.closed(why);
            return;
        }
        shared.progress.notify_one();
    }
}

/// The join frames for `topics` (join ref = ref = position + 1).
fn join_frames(topics: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let n = i + 1;
        encode_text(
            &mut out,
            format!(r#"["{n}","{n}","{topic}","phx_join",{{}}]"#).as_bytes(),
        );
    }
    out
}

/// The source address of client `global`.
fn source_of(global: usize, sources: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (global % sources) as u8)
}

/// Connects subscriber `slot` (client number `global`), joins its topics and reads until the
/// phase ends.
async fn subscriber(
    addr: SocketAddr,
    global: usize,
    slot: usize,
    plan: TopicPlan,
    sources: usize,
    shared: Rc<Shared>,
    gate: Rc<Semaphore>,
) {
    let permit = gate.acquire().await;
    let mut last = String::new();
    let mut opened = None;
    for attempt in 0..3 {
        match tokio::time::timeout(CONNECT_TIMEOUT, open(addr, source_of(global, sources))).await {
            Ok(Ok(conn)) => {
                opened = Some(conn);
                break;
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    drop(permit);
    let Some((read, mut write, pending)) = opened else {
        shared.fail(last);
        return;
    };
    let topics = plan.topics(global);
    if let Err(e) = write.write_all(&join_frames(&topics)).await {
        shared.fail(format!("join write: {e}"));
        return;
    }
    reader(
        read,
        Some(write),
        Role::Subscriber(slot),
        shared,
        pending,
        topics.len(),
    )
    .await;
}

/// Starts `count` subscribers numbered from `first`; their tasks.
fn start_subscribers(
    addr: SocketAddr,
    first: usize,
    count: usize,
    plan: &TopicPlan,
    sources: usize,
    shared: &Rc<Shared>,
) -> Vec<JoinHandle<()>> {
    let gate = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    (0..count)
        .map(|slot| {
            tokio::task::spawn_local(subscriber(
                addr,
                first + slot,
                slot,
                plan.clone(),
                sources,
                Rc::clone(shared),
                Rc::clone(&gate),
            ))
        })
        .collect()
}

// ---- worker processes ----------------------------------------------------------------------

/// A worker process: holds a share of the subscribers.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    state: Arc<WorkerState>,
}

/// What a worker reported, updated by the thread reading its output.
#[derive(Debug, Default)]
struct WorkerState {
    received: AtomicU64,
    min: AtomicU64,
    warmed: AtomicU64,
    ready: Mutex<Option<Value>>,
    done: Mutex<Option<Value>>,
    exited: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Worker {
    fn spawn(spec: &Value) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .arg("--worker")
            .arg(spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a worker: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("worker without stdout")?;
        let state = Arc::new(WorkerState::default());
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("p ") {
                    let mut it = rest.split(' ').map(|x| x.parse::<u64>().unwrap_or(0));
                    shared
                        .received
                        .store(it.next().unwrap_or(0), Ordering::Relaxed);
                    shared.min.store(it.next().unwrap_or(0), Ordering::Relaxed);
                    shared
                        .warmed
                        .store(it.next().unwrap_or(0), Ordering::Relaxed);
                } else if let Some(rest) = line.strip_prefix("ready ") {
                    *lock(&shared.ready) = serde_json::from_str(rest).ok();
                } else if let Some(rest) = line.strip_prefix("done ") {
                    *lock(&shared.done) = serde_json::from_str(rest).ok();
                }
            }
            shared.exited.store(true, Ordering::Release);
        });
        Ok(Self {
            child,
            stdin,
            state,
        })
    }

    fn ready(&self) -> Option<Value> {
        lock(&self.state.ready).clone()
    }

    /// Tells the worker to stop and waits (up to 10 s) for its report.
    async fn finish(mut self) -> Value {
        if let Some(stdin) = &mut self.stdin {
            let _ = stdin.write_all(b"stop\n");
            let _ = stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&self.state.done).is_none()
            && !self.state.exited.load(Ordering::Acquire)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The worker's report may still be on its way when it exits.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let done = lock(&self.state.done).take();
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        done.unwrap_or_else(|| json!({ "failed_worker": true }))
    }
}

/// The worker's main: `spec` says which clients to connect where.
fn worker_main(spec: &str) {
    let spec: Value = serde_json::from_str(spec).unwrap_or_else(|e| {
        eprintln!("load worker: bad spec: {e}");
        std::process::exit(2);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("load worker: cannot start the runtime: {e}");
            std::process::exit(1);
        });
    LocalSet::new().block_on(&runtime, worker(spec));
    std::process::exit(0);
}

async fn worker(spec: Value) {
    let addr: SocketAddr = spec["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4000)));
    let first = spec["first"].as_u64().unwrap_or(0) as usize;
    let count = spec["count"].as_u64().unwrap_or(0) as usize;
    let sources = spec["sources"].as_u64().unwrap_or(1) as usize;
    let plan = TopicPlan {
        pattern: Pattern::parse(spec["pattern"].as_str().unwrap_or("one")).unwrap_or(Pattern::One),
        namespace: spec["namespace"].as_str().unwrap_or(NAMESPACE).into(),
    };
    let lifetime = Duration::from_secs(spec["lifetime_s"].as_u64().unwrap_or(900));
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reader = Arc::clone(&stop);
    // Standard input: `stop`, or its end (the coordinator is gone), ends the worker.
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        stop_reader.store(true, Ordering::Release);
    });
    let shared = Rc::new(Shared::new(count));
    let tasks = start_subscribers(addr, first, count, &plan, sources, &shared);
    let started = Instant::now();
    let mut announced = false;
    let mut out = std::io::stdout();
    while !stop.load(Ordering::Acquire) && started.elapsed() < lifetime {
        if !announced && shared.joined.get() + shared.failed.get() >= count {
            announced = true;
            let ready = json!({
                "connected": shared.joined.get(),
                "failed": shared.failed.get(),
                "first_failure": *shared.first_failure.borrow(),
            });
            let _ = writeln!(out, "ready {ready}");
        }
        let _ = writeln!(
            out,
            "p {} {} {}",
            shared.received_sum(),
            shared.received_min(),
            shared.warmed.get()
        );
        let _ = out.flush();
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
    shared.ending.set(true);
    let mut report = shared.to_json();
    report["cpu_ticks"] = json!(cpu_ticks("self"));
    let _ = writeln!(out, "done {report}");
    let _ = out.flush();
    for task in tasks {
        task.abort();
    }
}

// ---- publishers ----------------------------------------------------------------------------

/// What publishers need to see of every subscriber, in this process and in the workers.
struct Progress {
    shared: Rc<Shared>,
    workers: Vec<Arc<WorkerState>>,
    local_subscribers: usize,
}

impl Progress {
    fn min_received(&self) -> u64 {
        let local = if self.local_subscribers > 0 {
            self.shared.received_min()
        } else {
            u64::MAX
        };
        self.workers
            .iter()
            .map(|w| w.min.load(Ordering::Relaxed))
            .fold(local, u64::min)
    }

    fn received(&self) -> u64 {
        self.shared.received_sum()
            + self
                .workers
                .iter()
                .map(|w| w.received.load(Ordering::Relaxed))
                .sum::<u64>()
    }

    fn warmed(&self) -> usize {
        self.shared.warmed.get()
            + self
                .workers
                .iter()
                .map(|w| w.warmed.load(Ordering::Relaxed) as usize)
                .sum::<usize>()
    }
}

/// What a publisher did.
#[derive(Debug, Default, Clone)]
struct Published {
    /// Messages sent (socket) or accepted with 200 (HTTP).
    sent: u64,
    /// Of those, to the shared topic (own-shared).
    shared_sent: u64,
    /// HTTP answers other than 200.
    http_errors: u64,
    first_http_error: Option<String>,
    /// How far the pacer fell behind its schedule, ns.
    max_lag_ns: u64,
    /// Why it stopped early, if it did.
    failure: Option<String>,
}

/// The message every publisher sends: `{"t":<ns>,"s":<seq>,"x":"<pad>"}`.
fn message_payload(out: &mut String, seq: u64, now: u64, pad: &str) {
    use std::fmt::Write as _;
    let _ = write!(out, r#"{{"t":{now},"s":{seq}"#);
    if !pad.is_empty() {
        let _ = write!(out, r#","x":"{pad}""#);
    }
    out.push('}');
}

/// A socket publisher joined to `topic` (its own copies are read and counted apart).
struct SocketPublisher {
    write: OwnedWriteHalf,
    topic: String,
    reader: JoinHandle<()>,
}

impl SocketPublisher {
    async fn connect(addr: SocketAddr, topic: &str, shared: &Rc<Shared>) -> Result<Self, String> {
        let (read, mut write, pending) = open(addr, Ipv4Addr::LOCALHOST).await?;
        write
            .write_all(&join_frames(&[topic.to_owned()]))
            .await
            .map_err(|e| format!("publisher join: {e}"))?;
        let reader = tokio::task::spawn_local(reader(
            read,
            None,
            Role::Publisher,
            Rc::clone(shared),
            pending,
            1,
        ));
        Ok(Self {
            write,
            topic: topic.to_owned(),
            reader,
        })
    }

    /// Sends messages `seqs` in one write.
    async fn send(&mut self, seqs: std::ops::Range<u64>, pad: &str) -> Result<(), String> {
        let now = now_ns();
        let mut frames = Vec::with_capacity((seqs.end - seqs.start) as usize * 80);
        let mut text = String::with_capacity(128);
        for seq in seqs {
            text.clear();
            text.push_str(&format!(r#"["1",null,"{}","m","#, self.topic));
            message_payload(&mut text, seq, now, pad);
            text.push(']');
            encode_text(&mut frames, text.as_bytes());
        }
        self.write
            .write_all(&frames)
            .await
            .map_err(|e| format!("publish write: {e}"))
    }

    /// Warm-up pushes (no timestamp) until `want` subscribers saw one: until then a remote
    /// node may not have subscribed in Redis yet.
    async fn warm_up(&mut self, progress: &Progress, want: usize) -> Result<(), String> {
        let started = Instant::now();
        let mut frame = Vec::new();
        encode_text(
            &mut frame,
            format!(r#"["1",null,"{}","w",{{"w":1}}]"#, self.topic).as_bytes(),
        );
        while progress.warmed() < want {
            if started.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "only {} of {want} subscribers saw a warm-up message within 20 s",
                    progress.warmed()
                ));
            }
            self.write
                .write_all(&frame)
                .await
                .map_err(|e| format!("warm-up write: {e}"))?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Publishes on a socket for `seconds`: at `rate` msg/s, or with `rate` `None` as fast as the
/// window allows.
async fn publish_socket(
    publisher: &mut SocketPublisher,
    rate: Option<f64>,
    phase: &Phase,
    progress: &Progress,
    pad: &str,
) -> Published {
    let mut out = Published::default();
    let start = Instant::now();
    let duration = Duration::from_secs_f64(phase.seconds);
    let shared = &progress.shared;
    while start.elapsed() < duration {
        let batch = match rate {
            None => {
                let in_flight = shared.sent.get().saturating_sub(progress.min_received());
                if in_flight >= phase.window {
                    let wait = if progress.workers.is_empty() { 2 } else { 1 };
                    let _ = tokio::time::timeout(
                        Duration::from_millis(wait),
                        shared.progress.notified(),
                    )
                    .await;
                    continue;
                }
                (phase.window - in_flight).min(64)
            }
            Some(rate) => {
                let period = 1e9 / rate;
                let elapsed = start.elapsed().as_nanos() as f64;
                let due = (elapsed / period) as u64 + 1;
                if due <= out.sent {
                    let next = Duration::from_nanos((out.sent as f64 * period) as u64);
                    tokio::time::sleep_until((start + next).into()).await;
                    continue;
                }
                let intended = ((out.sent as f64) * period) as u64;
                out.max_lag_ns = out
                    .max_lag_ns
                    .max((elapsed as u64).saturating_sub(intended));
                (due - out.sent).min(1_000)
            }
        };
        if let Err(e) = publisher.send(out.sent..out.sent + batch, pad).await {
            out.failure = Some(e);
            break;
        }
        out.sent += batch;
        shared.sent.set(shared.sent.get() + batch);
        if rate.is_none() {
            // Let the readers run between batches.
            tokio::task::yield_now().await;
        }
    }
    // The publisher stays connected (and reads its own copies) until the phase ends: closing
    // its write half now would make the node drop the pushes it has not read yet.
    out
}

/// Which topic an HTTP publisher's message `n` goes to.
#[derive(Debug, Clone)]
enum HttpTarget {
    /// Always this topic.
    Fixed(String),
    /// [`topic_own`] of `namespace`, round robin over `clients` (offset by publisher `index`
    /// of `of`).
    Own {
        namespace: Rc<str>,
        clients: usize,
        index: usize,
        of: usize,
    },
}

impl HttpTarget {
    fn topic(&self, n: u64) -> String {
        match self {
            Self::Fixed(topic) => topic.clone(),
            Self::Own {
                namespace,
                clients,
                index,
                of,
            } => topic_own(namespace, (n as usize * of + index) % (*clients).max(1)),
        }
    }
}

/// One HTTP response's status, if `buf` holds a complete one: (status, total length).
fn http_response(buf: &[u8]) -> Option<(u16, usize)> {
    let head_end = memmem::find(buf, b"\r\n\r\n")? + 4;
    let head = &buf[..head_end];
    let status = std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()?;
    let lower = head.to_ascii_lowercase();
    let length = memmem::find(&lower, b"content-length:").map_or(0, |at| {
        lower[at + 15..]
            .iter()
            .skip_while(|b| **b == b' ')
            .take_while(|b| b.is_ascii_digit())
            .fold(0_usize, |n, d| n * 10 + usize::from(d - b'0'))
    });
    (buf.len() >= head_end + length).then_some((status, head_end + length))
}

/// Publishes with `POST /api/publish` on one keep-alive connection for `seconds`, pipelining
/// up to [`HTTP_PIPELINE`] requests: at `rate` msg/s, or as fast as answers come.
async fn publish_http(
    addr: SocketAddr,
    target: HttpTarget,
    rate: Option<f64>,
    seconds: f64,
    pad: String,
) -> Published {
    let mut out = Published::default();
    let stream = match TcpSocket::new_v4() {
        Ok(socket) => socket.connect(addr).await,
        Err(e) => Err(e),
    };
    let stream = match stream {
        Ok(stream) => stream,
        Err(e) => {
            out.failure = Some(format!("HTTP connect: {e}"));
            return out;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let answered = Rc::new(Cell::new(0_u64));
    let statuses: Rc<RefCell<(u64, u64, Option<String>)>> = Rc::default();
    let answers = {
        let answered = Rc::clone(&answered);
        let statuses = Rc::clone(&statuses);
        tokio::task::spawn_local(async move {
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut chunk = vec![0_u8; 16 * 1024];
            loop {
                let n = match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut used = 0;
                while let Some((status, len)) = http_response(&buf[used..]) {
                    let mut s = statuses.borrow_mut();
                    if status == 200 {
                        s.0 += 1;
                    } else {
                        s.1 += 1;
                        s.2.get_or_insert_with(|| {
                            String::from_utf8_lossy(&buf[used..used + len]).into_owned()
                        });
                    }
                    used += len;
                    answered.set(answered.get() + 1);
                }
                buf.drain(..used);
            }
        })
    };
    let start = Instant::now();
    let duration = Duration::from_secs_f64(seconds);
    let mut sent = 0_u64;
    let mut body = String::with_capacity(256);
    let mut request = Vec::with_capacity(64 * 1024);
    while start.elapsed() < duration {
        let in_flight = sent - answered.get();
        let room = HTTP_PIPELINE.saturating_sub(in_flight);
        let batch = match rate {
            None => room,
            Some(rate) => {
                let period = 1e9 / rate;
                let elapsed = start.elapsed().as_nanos() as f64;
                let due = (elapsed / period) as u64 + 1;
                if due <= sent {
                    let next = Duration::from_nanos((sent as f64 * period) as u64);
                    tokio::time::sleep_until((start + next).into()).await;
                    continue;
                }
                out.max_lag_ns = out
                    .max_lag_ns
                    .max((elapsed as u64).saturating_sub((sent as f64 * period) as u64));
                (due - sent).min(room)
            }
        };
        if batch == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        let now = now_ns();
        request.clear();
        for n in sent..sent + batch {
            body.clear();
            body.push_str(r#"{"topic":""#);
            body.push_str(&target.topic(n));
            body.push_str(r#"","event":"m","payload":"#);
            message_payload(&mut body, n, now, &pad);
            body.push('}');
            request.extend_from_slice(
                format!(
                    "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            request.extend_from_slice(body.as_bytes());
        }
        if let Err(e) = write.write_all(&request).await {
            out.failure = Some(format!("HTTP write: {e}"));
            break;
        }
        sent += batch;
    }
    // Collect the outstanding answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.get() < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    answers.abort();
    let s = statuses.borrow();
    out.sent = s.0;
    out.http_errors = s.1 + (sent - answered.get());
    out.first_http_error.clone_from(&s.2);
    out
}

// ---- one phase -----------------------------------------------------------------------------

/// Runs `phase` once; `previous_rate` is the msgs/s the phase before measured.
#[allow(clippy::too_many_lines)] // one linear story: connect, hold, publish, drain, report
async fn run_phase(
    phase: &Phase,
    target: &Target,
    options: &Options,
    previous_rate: Option<f64>,
) -> Value {
    let sub_addr = *target.addrs.last().unwrap_or(&target.addrs[0]);
    let pub_addr = target.addrs[0];
    let sub_pid = *target.pids.last().unwrap_or(&None);
    let sources = options
        .sources
        .unwrap_or_else(|| phase.clients.div_ceil(CLIENTS_PER_SOURCE).max(1));
    let rate = match phase.rate {
        Rate::Max => None,
        Rate::Fixed(rate) => Some(rate),
        Rate::OfPrevious(fraction) => Some(previous_rate.unwrap_or(10_000.0) * fraction),
    };
    let rss_baseline = sub_pid.and_then(rss_kib);

    // Connect: this process's share first, the rest in workers.
    let local = phase.clients.min(options.per_process);
    let shared = Rc::new(Shared::new(local));
    let mut workers = Vec::new();
    let mut first = local;
    let lifetime = (phase.seconds + phase.hold) as u64 + 600;
    let mut failures = Vec::new();
    while first < phase.clients {
        let count = (phase.clients - first).min(options.per_process);
        let spec = json!({
            "addr": sub_addr.to_string(),
            "first": first,
            "count": count,
            "pattern": phase.pattern.name(),
            "namespace": phase.namespace,
            "sources": sources,
            "lifetime_s": lifetime,
        });
        match Worker::spawn(&spec) {
            Ok(worker) => workers.push(worker),
            Err(e) => failures.push(e),
        }
        first += count;
    }
    let connect_started = Instant::now();
    let plan = TopicPlan {
        pattern: phase.pattern,
        namespace: phase.namespace.as_str().into(),
    };
    let tasks = start_subscribers(sub_addr, 0, local, &plan, sources, &shared);
    let connect_deadline = Duration::from_secs(60 + phase.clients as u64 / 100);
    loop {
        let local_done = shared.joined.get() + shared.failed.get() >= local;
        let workers_done = workers
            .iter()
            .all(|w| w.ready().is_some() || w.state.exited.load(Ordering::Acquire));
        if local_done && workers_done {
            break;
        }
        if connect_started.elapsed() > connect_deadline {
            failures.push(format!(
                "not every client joined within {connect_deadline:?}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let mut connected = shared.joined.get();
    let mut connect_failed = shared.failed.get();
    let mut first_failure = shared.first_failure.borrow().clone();
    for worker in &workers {
        if let Some(ready) = worker.ready() {
            connected += ready["connected"].as_u64().unwrap_or(0) as usize;
            connect_failed += ready["failed"].as_u64().unwrap_or(0) as usize;
            if first_failure.is_none() {
                first_failure = ready["first_failure"].as_str().map(str::to_owned);
            }
        }
    }
    if phase.hold > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(phase.hold)).await;
    } else {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let rss_connected = sub_pid.and_then(rss_kib);

    // Publish.
    let progress = Progress {
        shared: Rc::clone(&shared),
        workers: workers.iter().map(|w| Arc::clone(&w.state)).collect(),
        local_subscribers: local,
    };
    let pad = "x".repeat(phase.payload_bytes);
    let node_pids: Vec<u32> = target.pids.iter().flatten().copied().collect();
    let cpu_before: Vec<Option<u64>> = node_pids
        .iter()
        .map(|p| cpu_ticks(&p.to_string()))
        .collect();
    let tool_before = cpu_ticks("self");
    let mut published = Vec::new();
    let mut publish_started_ns = now_ns();
    let mut publish_started = Instant::now();
    let mut publish_failure = None;
    let mut socket_publishers = Vec::new();
    if phase.publishes() {
        if phase.pattern == Pattern::One && phase.via == Via::Socket {
            let mut publishers = Vec::new();
            for _ in 0..phase.publishers {
                match SocketPublisher::connect(pub_addr, &topic_all(&phase.namespace), &shared)
                    .await
                {
                    Ok(p) => publishers.push(p),
                    Err(e) => publish_failure = Some(e),
                }
            }
            // Wait for the publishers' joins, then warm up (a remote node subscribes late).
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(first) = publishers.first_mut() {
                if let Err(e) = first.warm_up(&progress, connected).await {
                    publish_failure = Some(e);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            publish_started_ns = now_ns();
            publish_started = Instant::now();
            let each = rate.map(|r| r / phase.publishers as f64);
            let runs = publishers
                .iter_mut()
                .map(|p| publish_socket(p, each, phase, &progress, &pad));
            published = futures_util::future::join_all(runs).await;
            socket_publishers = publishers;
        } else {
            let clients = phase.clients;
            let mut runs = Vec::new();
            let own_rate = rate.map(|r| r / phase.publishers as f64);
            for index in 0..phase.publishers {
                let target = match phase.pattern {
                    Pattern::One => HttpTarget::Fixed(topic_all(&phase.namespace)),
                    Pattern::Own | Pattern::OwnShared => HttpTarget::Own {
                        namespace: Rc::clone(&plan.namespace),
                        clients,
                        index,
                        of: phase.publishers,
                    },
                };
                if own_rate != Some(0.0) {
                    runs.push(tokio::task::spawn_local(publish_http(
                        pub_addr,
                        target,
                        own_rate,
                        phase.seconds,
                        pad.clone(),
                    )));
                }
            }
            let shared_run =
                (phase.pattern == Pattern::OwnShared && phase.shared_rate > 0.0).then(|| {
                    tokio::task::spawn_local(publish_http(
                        pub_addr,
                        HttpTarget::Fixed(topic_shared(&phase.namespace)),
                        Some(phase.shared_rate),
                        phase.seconds,
                        pad.clone(),
                    ))
                });
            for run in runs {
                published.push(run.await.unwrap_or_default());
            }
            if let Some(run) = shared_run {
                let mut p = run.await.unwrap_or_default();
                p.shared_sent = p.sent;
                published.push(p);
            }
        }
    }
    let publish_seconds = publish_started.elapsed().as_secs_f64();
    let sent: u64 = published.iter().map(|p| p.sent).sum();
    let shared_sent: u64 = published.iter().map(|p| p.shared_sent).sum();
    let expected = match phase.pattern {
        Pattern::One => sent * connected as u64,
        Pattern::Own => sent,
        Pattern::OwnShared => (sent - shared_sent) + shared_sent * connected as u64,
    };

    // Drain.
    let drain_started = Instant::now();
    let mut last_seen = progress.received();
    let mut last_change = Instant::now();
    while progress.received() < expected && drain_started.elapsed() < DRAIN_MAX {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = progress.received();
        if now != last_seen {
            last_seen = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > DRAIN_IDLE {
            break;
        }
    }
    let node_cpu: Vec<Option<f64>> = node_pids
        .iter()
        .zip(&cpu_before)
        .map(|(p, before)| {
            let after = cpu_ticks(&p.to_string())?;
            let elapsed = publish_started.elapsed().as_secs_f64();
            Some((after - (*before)?) as f64 / elapsed)
        })
        .collect();
    let tool_ticks = cpu_ticks("self").zip(tool_before).map(|(a, b)| a - b);
    let rss_after = sub_pid.and_then(rss_kib);

    // Collect.
    shared.ending.set(true);
    let mut hist = shared.hist.borrow().clone();
    let mut received = shared.received_sum();
    let mut last_at = shared.last_at.get();
    let mut error_replies = shared.error_replies.get();
    let mut first_error_reply = shared.first_error_reply.borrow().clone();
    let mut closes = shared.closes.borrow().clone();
    let mut worker_ticks = 0;
    for worker in workers {
        let report = worker.finish().await;
        if report.get("failed_worker").is_some() {
            failures.push("a worker sent no report".into());
            continue;
        }
        hist.merge(&Histogram::from_json(&report["hist"]));
        received += report["received"].as_u64().unwrap_or(0);
        last_at = last_at.max(report["last_at"].as_u64().unwrap_or(0));
        error_replies += report["error_replies"].as_u64().unwrap_or(0);
        if first_error_reply.is_none() {
            first_error_reply = report["first_error_reply"].as_str().map(str::to_owned);
        }
        for (why, n) in report["closes"].as_object().into_iter().flatten() {
            *closes.entry(why.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
        }
        worker_ticks += report["cpu_ticks"].as_u64().unwrap_or(0);
    }
    for task in tasks {
        task.abort();
    }
    for publisher in socket_publishers {
        publisher.reader.abort();
    }
    // Let the aborted tasks drop their sockets before the next phase.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let deliver_seconds = if last_at > publish_started_ns && received > 0 {
        (last_at - publish_started_ns) as f64 / 1e9
    } else {
        publish_seconds
    };
    let per_conn = |rss: Option<u64>| {
        rss.zip(rss_baseline)
            .filter(|_| connected > 0)
            .map(|(now, base)| (now.saturating_sub(base) * 1024) as f64 / connected as f64)
    };
    let http_errors: u64 = published.iter().map(|p| p.http_errors).sum();
    let publish_failures: Vec<String> = published
        .iter()
        .filter_map(|p| p.failure.clone().or_else(|| p.first_http_error.clone()))
        .chain(publish_failure)
        .collect();
    let tool_cpu =
        tool_ticks.map(|t| (t + worker_ticks) as f64 / publish_started.elapsed().as_secs_f64());
    json!({
        "phase": phase.name,
        "clients": phase.clients,
        "pattern": phase.pattern.name(),
        "namespace": phase.namespace,
        "publishers": phase.publishers,
        "via": if phase.via == Via::Socket && phase.pattern == Pattern::One { "socket" } else { "http" },
        "rate_target": rate,
        "shared_rate": phase.shared_rate,
        "window": rate.is_none().then_some(phase.window),
        "seconds": phase.seconds,
        "processes": 1 + phase.clients.saturating_sub(1) / options.per_process,
        "sources": sources,
        "connected": connected,
        "connect_failed": connect_failed,
        "first_connect_failure": first_failure,
        "connect_seconds": connect_seconds,
        "sent": sent,
        "msgs_per_s": sent as f64 / publish_seconds,
        "expected": expected,
        "received": received,
        "missing": expected.saturating_sub(received),
        "deliver_seconds": deliver_seconds,
        "deliveries_per_s": received as f64 / deliver_seconds,
        "latency_us": hist.summary_us(),
        "pacer_max_lag_ms": published.iter().map(|p| p.max_lag_ns).max().unwrap_or(0) as f64 / 1e6,
        "error_replies": error_replies,
        "first_error_reply": first_error_reply,
        "http_errors": http_errors,
        "publish_failures": publish_failures,
        "closes": closes,
        "setup_failures": failures,
        "node_rss_kib": {
            "baseline": rss_baseline,
            "connected": rss_connected,
            "after": rss_after,
        },
        "node_rss_bytes_per_connection": per_conn(rss_connected),
        "node_rss_bytes_per_connection_after": per_conn(rss_after),
        // Percent of one core, over publishing and draining (ticks are 1/100 s).
        "node_cpu_pct": node_cpu,
        "tool_cpu_pct": tool_cpu,
    })
}

/// Whether a run lost or refused anything.
fn run_failed(run: &Value) -> bool {
    run["missing"].as_u64().unwrap_or(0) > 0
        || run["connect_failed"].as_u64().unwrap_or(0) > 0
        || run["error_replies"].as_u64().unwrap_or(0) > 0
        || run["http_errors"].as_u64().unwrap_or(0) > 0
        || run["closes"].as_object().is_some_and(|c| !c.is_empty())
        || run["publish_failures"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        || run["setup_failures"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
}

/// The median of `values` (the lower middle one for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    (!values.is_empty()).then(|| values[(values.len() - 1) / 2])
}

/// Medians over `runs` of the headline figures.
fn medians(runs: &[Value]) -> Value {
    let of = |path: &[&str]| {
        median(
            runs.iter()
                .filter_map(|r| path.iter().try_fold(r, |v, k| v.get(*k))?.as_f64())
                .collect(),
        )
    };
    json!({
        "msgs_per_s": of(&["msgs_per_s"]),
        "deliveries_per_s": of(&["deliveries_per_s"]),
        "p50_us": of(&["latency_us", "p50"]),
        "p99_us": of(&["latency_us", "p99"]),
        "p99_9_us": of(&["latency_us", "p99_9"]),
        "max_us": of(&["latency_us", "max"]),
        "rss_bytes_per_connection": of(&["node_rss_bytes_per_connection"]),
        "tool_cpu_pct": of(&["tool_cpu_pct"]),
        "node_cpu_pct": median(runs.iter().filter_map(|r| {
            r["node_cpu_pct"].as_array().map(|a| a.iter().filter_map(Value::as_f64).sum())
        }).collect()),
        "missing_total": runs.iter().map(|r| r["missing"].as_u64().unwrap_or(0)).sum::<u64>(),
    })
}

// ---- the run -------------------------------------------------------------------------------

async fn run(options: Options, phases: Vec<Phase>, nodes: usize, nofile: u64) -> bool {
    // A spawned setup is started afresh for every run, so each run's RSS baseline is a new
    // process (an allocator keeps what a previous run freed) and runs are independent.
    let mut target = target(&options, nodes).await;
    eprintln!(
        "load: {} on {:?} (node {}, pids {:?}); {} cpus shared by the node(s) and this tool",
        options.scenario,
        target.addrs,
        target.binary,
        target.pids,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
    );
    let mut results = Vec::new();
    let mut previous_rate = None;
    let mut ok = true;
    let mut fresh = true;
    for phase in &phases {
        let mut runs = Vec::new();
        for n in 0..options.runs {
            if options.spawn && !fresh {
                drop(target);
                target = self::target(&options, nodes).await;
            }
            fresh = false;
            eprintln!(
                "load: phase {:?} run {}/{}: {} clients ...",
                phase.name,
                n + 1,
                options.runs,
                phase.clients
            );
            let run = run_phase(phase, &target, &options, previous_rate).await;
            if run_failed(&run) {
                ok = false;
                eprintln!(
                    "load: phase {:?} lost or refused something: {run}",
                    phase.name
                );
            }
            runs.push(run);
        }
        let summary = medians(&runs);
        if phase.rate == Rate::Max {
            previous_rate = summary["msgs_per_s"].as_f64();
        }
        results.push(json!({ "phase": phase.name, "median": summary, "runs": runs }));
    }
    let benchmarks = target
        .redis_port()
        .map(|port| run_benchmarks(port, options.benchmark_requests));
    let report = json!({
        "scenario": options.scenario,
        "machine": {
            "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            "nofile_soft_limit": nofile,
            "note": "the node(s), redis and this tool share these cpus",
        },
        "node": { "addrs": target.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(), "binary": target.binary },
        "phases": results,
        "redis_benchmark": benchmarks,
        "ok": ok,
    });
    if options.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    drop(target);
    ok
}

// ---- redis-benchmark -----------------------------------------------------------------------

/// `redis-benchmark` PUBLISH against `port`, plain and with `-P 16`, with a payload the size of
/// a node's envelope of this tool's messages.
fn run_benchmarks(port: u16, requests: u64) -> Value {
    let binary = std::env::var("REDIS_BENCHMARK").unwrap_or_else(|_| "redis-benchmark".into());
    let payload = r#"{"switchboard":{"event":"m","origin":"0123456789abcdef"},"payload":{"t":1731234567890123456,"s":123456}}"#;
    let port = port.to_string();
    let n = requests.to_string();
    let mut out = serde_json::Map::new();
    for (name, pipeline) in [("publish", None), ("publish_pipelined_16", Some("16"))] {
        let mut args = vec!["-p", port.as_str(), "-n", n.as_str(), "-q"];
        if let Some(p) = pipeline {
            args.extend(["-P", p]);
        }
        args.extend(["publish", BENCH_CHANNEL, payload]);
        let command = format!(
            "{binary} {}",
            args.iter()
                .map(|a| if a.starts_with('{') {
                    format!("'{a}'")
                } else {
                    (*a).to_owned()
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
        let result = Command::new(&binary).args(&args).output();
        let (rps, text) = match result {
            Ok(output) => {
                let text = String::from_utf8_lossy(&output.stdout).into_owned();
                let last = text
                    .split(['\r', '\n'])
                    .map(str::trim)
                    .rfind(|s| s.contains("requests per second"))
                    .unwrap_or("")
                    .to_owned();
                let rps = last
                    .split(": ")
                    .nth(1)
                    .and_then(|s| s.split(" requests").next())
                    .and_then(|s| s.trim().parse::<f64>().ok());
                (rps, last)
            }
            Err(e) => (None, e.to_string()),
        };
        out.insert(
            name.to_owned(),
            json!({ "command": command, "requests_per_s": rps, "output": text }),
        );
    }
    Value::Object(out)
}

// ---- report --------------------------------------------------------------------------------

fn print_table(report: &Value) {
    let f = |v: &Value, scale: f64, digits: usize| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{:.*}", digits, x / scale))
    };
    println!();
    println!(
        "scenario {}, {} cpus shared by node(s) and tool; latencies in ms; medians of {} run(s)",
        report["scenario"].as_str().unwrap_or(""),
        report["machine"]["cpus"],
        report["phases"][0]["runs"].as_array().map_or(0, Vec::len)
    );
    println!(
        "{:<26} {:>7} {:>9} {:>11} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>8}",
        "phase",
        "clients",
        "msgs/s",
        "deliv/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "missing",
        "B/conn",
        "node cpu%",
        "tool cpu%"
    );
    for phase in report["phases"].as_array().into_iter().flatten() {
        let m = &phase["median"];
        let first = &phase["runs"][0];
        println!(
            "{:<26} {:>7} {:>9} {:>11} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>8}",
            phase["phase"].as_str().unwrap_or(""),
            first["connected"],
            f(&m["msgs_per_s"], 1.0, 0),
            f(&m["deliveries_per_s"], 1.0, 0),
            f(&m["p50_us"], 1e3, 2),
            f(&m["p99_us"], 1e3, 2),
            f(&m["p99_9_us"], 1e3, 2),
            f(&m["max_us"], 1e3, 1),
            m["missing_total"],
            f(&m["rss_bytes_per_connection"], 1.0, 0),
            f(&m["node_cpu_pct"], 1.0, 0),
            f(&m["tool_cpu_pct"], 1.0, 0),
        );
        for run in phase["runs"].as_array().into_iter().flatten() {
            let problems: Vec<String> = [
                ("connect failed", &run["connect_failed"]),
                ("error replies", &run["error_replies"]),
                ("http errors", &run["http_errors"]),
            ]
            .iter()
            .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
            .map(|(what, v)| format!("{what}: {v}"))
            .chain(
                run["closes"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(why, n)| format!("closed ({why}): {n}")),
            )
            .chain(
                ["first_connect_failure", "first_error_reply"]
                    .iter()
                    .filter_map(|k| run[*k].as_str().map(|s| format!("{k}: {s}"))),
            )
            .chain(
                ["publish_failures", "setup_failures"]
                    .iter()
                    .flat_map(|k| run[*k].as_array().cloned().unwrap_or_default())
                    .map(|v| v.to_string()),
            )
            .collect();
            if !problems.is_empty() {
                println!("    ! {}", problems.join("; "));
            }
        }
        if let Some(rss) = first["node_rss_kib"].as_object() {
            if rss.get("baseline").is_some_and(|v| !v.is_null()) {
                println!(
                    "    node RSS KiB: baseline {}, connected {}, after {}; connect {:.1} s",
                    rss["baseline"],
                    rss["connected"],
                    rss["after"],
                    first["connect_seconds"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    if let Some(bench) = report["redis_benchmark"].as_object() {
        println!("redis-benchmark (same redis):");
        for (name, run) in bench {
            println!(
                "  {name:<22} {:>12}  $ {}",
                f(&run["requests_per_s"], 1.0, 0),
                run["command"].as_str().unwrap_or("")
            );
        }
    }
    println!(
        "{}",
        if report["ok"].as_bool() == Some(true) {
            "ok: nothing lost or refused"
        } else {
            "NOT OK: something was lost or refused (see !)"
        }
    );
}
