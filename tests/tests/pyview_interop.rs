//! A node started with `--envelope pyview --channel-prefix <PyView's prefix>` shares topics
//! with a PyView app that runs seed 004's own pub/sub backends unchanged
//! (`tests/pyview/seed_pubsub.py`), on Redis and on PostgreSQL.
//!
//! Each test starts a private backend and a node, then runs `tests/pyview/interop.py` with the
//! Python of the venv `tests/run` makes (`$SWITCHBOARD_PYTHON`). The script plays a PyView
//! instance (sessions subscribed through the seed's class, broadcasts through it) and two
//! phoenix-protocol browsers on the node, and checks every delivery exactly: what PyView
//! broadcasts reaches the node's subscribers once, as event `message` with the message as
//! payload; what is published on the node (`POST /api/publish`, a socket push) reaches every
//! PyView handler of the topic once as the message itself; nobody gets anything twice (the
//! node drops its own echo and never relays PyView's messages back); several messages arrive
//! in order. It prints a JSON summary, which the tests check too.
//!
//! What does not work in the seed itself (not the node), as the script records it:
//! - `RedisPubSub.start()` before the first `subscribe_topic` ends its listener at once
//!   (redis-py's `listen()` returns while nothing is subscribed); the script starts `_listen()`
//!   again after the first subscribe, without changing the class.
//! - `PostgresPubSub.broadcast()` never sends anything: `NOTIFY {channel}, $1` through asyncpg
//!   is a syntax error (NOTIFY takes a string literal, not a bind parameter), and an unquoted
//!   channel with `:` fails earlier on the `:`. So on PostgreSQL only node → PyView runs the
//!   seed's code; PyView → node is checked with what a working broadcast would send
//!   (`pg_notify(prefix || topic, json(message))` on the same channel), and the test asserts
//!   that the seed's broadcast fails as described and delivers nothing.
//!
//! `$SWITCHBOARD_PYTHON` unset fails the test with a message (never a silent skip).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_e2e::redis::wait_bridge_up;
use switchboard_e2e::{BackendKind, BackendServer, Node};

/// The longest a script run may take (it gives up on its own after 120 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The Python interpreter of the venv with redis, asyncpg and websockets.
fn python() -> PathBuf {
    let Some(python) = std::env::var_os("SWITCHBOARD_PYTHON") else {
        panic!(
            "SWITCHBOARD_PYTHON is not set: the PyView interop tests need the Python venv that \
             tests/run creates (target/pyvenv, with pinned redis, asyncpg and websockets). Run \
             tests/run, or create it yourself and set SWITCHBOARD_PYTHON=$PWD/target/pyvenv/bin/python"
        );
    };
    let python = PathBuf::from(python);
    assert!(
        python.is_file(),
        "SWITCHBOARD_PYTHON={} is not a file: run tests/run to create the venv",
        python.display()
    );
    python
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pyview/interop.py")
}

/// PyView's default channel prefix for `kind` (the seed's `channel_prefix` defaults).
const fn pyview_prefix(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Redis => "pyview:",
        BackendKind::Postgres => "pyview_",
    }
}

/// A node sharing topics with PyView through `server`.
async fn pyview_node(server: &BackendServer) -> Node {
    let kind = server.kind();
    let url = server.url();
    let url_flag = match kind {
        BackendKind::Redis => "--redis-url",
        BackendKind::Postgres => "--database-url",
    };
    let node = Node::start(&[
        "--pubsub-backend",
        kind.name(),
        url_flag,
        &url,
        "--channel-prefix",
        pyview_prefix(kind),
        "--envelope",
        "pyview",
    ]);
    wait_bridge_up(&[&node]).await;
    node
}

/// One run of the script.
struct Run {
    success: bool,
    code: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Reads `pipe` to its end on a thread of its own.
fn read_all(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// Runs interop.py with `python` against the node at `node_url` sharing `backend_url`
/// (blocking: call it from a blocking thread).
fn run_script(python: &Path, kind: BackendKind, backend_url: &str, node_url: &str) -> Run {
    let started = Instant::now();
    let mut child = Command::new(python)
        .arg("-B") // no __pycache__ in the source tree
        .arg(script())
        .args(["--backend", kind.name()])
        .args(["--backend-url", backend_url])
        .args(["--node-url", node_url])
        .args(["--channel-prefix", pyview_prefix(kind)])
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for interop.py") {
            break status;
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("waiting for the killed interop.py");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Run {
        success: status.success(),
        code: status.code(),
        timed_out,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

/// Starts `kind`'s backend and a PyView-envelope node, runs the script, and returns its
/// summary after checking what is common to both backends.
async fn interop(kind: BackendKind) -> Value {
    let python = python();
    let server = BackendServer::start(kind);
    let node = pyview_node(&server).await;
    let backend_url = server.url();
    let node_url = node.http_url("");
    let run =
        tokio::task::spawn_blocking(move || run_script(&python, kind, &backend_url, &node_url))
            .await
            .expect("the script runner panicked");
    let context = || {
        format!(
            "interop.py ({kind}) exited {:?} after {:.1?}{}\n--- its stdout:\n{}\n--- its stderr:\n{}\n\
             --- the node's log tail:\n{}\n--- the {kind} log tail:\n{}",
            run.code,
            run.elapsed,
            if run.timed_out { " (killed: it ran too long)" } else { "" },
            run.stdout,
            run.stderr,
            node.log_tail(40),
            server.log_tail(20)
        )
    };
    assert!(run.success, "{}", context());
    let summary: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("its stdout is not a JSON summary ({e}): {}", context()));
    assert_eq!(summary["ok"], json!(true), "{}", context());
    assert_eq!(summary["backend"], json!(kind.name()), "{}", context());

    // Node → PyView with the seed's code unchanged, on both backends: 6 HTTP publishes and
    // 5 socket pushes on T reach both PyView sessions of T and both browsers once each; 3
    // publishes on T2 reach its PyView session only.
    let checks = &summary["checks"];
    for (check, browsers, t_sessions, t2_session) in [
        ("node_http_to_pyview", 6, 6, 0),
        ("node_push_to_pyview", 5, 5, 0),
        ("node_http_to_pyview_other_topic", 0, 0, 3),
    ] {
        assert_eq!(checks[check]["ok"], json!(true), "{check}: {}", context());
        assert_eq!(
            checks[check]["deliveries"],
            json!({
                "phoenix:A": browsers, "phoenix:B": browsers,
                "pyview:s1": t_sessions, "pyview:s2": t_sessions, "pyview:s3": t2_session,
            }),
            "{check}: {}",
            context()
        );
    }
    // After everything and a quiet second: nothing late, nothing twice.
    assert_eq!(
        summary["totals"],
        json!({"phoenix:A": 17, "phoenix:B": 17, "pyview:s1": 17, "pyview:s2": 17, "pyview:s3": 3}),
        "{}",
        context()
    );
    summary
}

/// Both directions through Redis with seed 004's `RedisPubSub` unchanged (its listener
/// started again after the first subscribe, see the module docs).
#[tokio::test(flavor = "multi_thread")]
async fn redis_pyview_and_node_share_topics_both_ways_exactly_once() {
    let summary = interop(BackendKind::Redis).await;
    let check = &summary["checks"]["pyview_to_node"];
    assert_eq!(check["ok"], json!(true), "{summary:#}");
    assert_eq!(
        check["deliveries"],
        json!({"phoenix:A": 6, "phoenix:B": 6, "pyview:s1": 6, "pyview:s2": 6, "pyview:s3": 0}),
        "PyView's 6 broadcasts: once to each browser, once to each PyView session of the \
         topic (PyView's own echo, not relayed again by the node): {summary:#}"
    );
    assert_eq!(summary["seed_defects"], json!([]), "{summary:#}");
    assert_eq!(
        summary["seed_workarounds"][0]["what"],
        json!("RedisPubSub: listener task started again after the first subscribe_topic"),
        "{summary:#}"
    );
}

/// Node → PyView through PostgreSQL with seed 004's `PostgresPubSub` unchanged; its
/// `broadcast` cannot send (a seed defect, asserted so a change is noticed), and what a
/// working one would send reaches the node's subscribers.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_node_reaches_pyview_and_the_seed_broadcast_cannot_send() {
    let summary = interop(BackendKind::Postgres).await;
    let checks = &summary["checks"];
    let nothing =
        json!({"phoenix:A": 0, "phoenix:B": 0, "pyview:s1": 0, "pyview:s2": 0, "pyview:s3": 0});
    assert_eq!(
        checks["pyview_to_node_seed_broadcast"]["deliveries"], nothing,
        "{summary:#}"
    );
    let defects = summary["seed_defects"].as_array().expect("seed_defects");
    let errors: Vec<&str> = defects.iter().filter_map(|d| d["error"].as_str()).collect();
    assert_eq!(
        errors,
        [
            "PostgresSyntaxError: syntax error at or near \":\"",
            "PostgresSyntaxError: syntax error at or near \"$1\"",
        ],
        "the seed's `NOTIFY {{channel}}, $1`: on T (channel with ':') and on `counter` (a plain \
         identifier, so the bind parameter itself): {summary:#}"
    );
    assert_eq!(
        checks["pyview_wire_format_to_node"]["deliveries"],
        json!({"phoenix:A": 6, "phoenix:B": 6, "pyview:s1": 6, "pyview:s2": 6, "pyview:s3": 0}),
        "PyView's PostgreSQL wire format (pg_notify of json(message) on prefix + topic): once \
         to each browser and each PyView session of the topic: {summary:#}"
    );
}
