//! One `switchboard` process under test.
//!
//! [`Node::start`] finds the binary, starts it on `127.0.0.1:0`, waits for the line
//! `switchboard listening on http://ADDR` on its standard output and keeps draining both output
//! pipes in background threads, so a chatty node never blocks on a full pipe. Standard error
//! is kept for diagnostics. Dropping a [`Node`] kills the process.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::http::{self, HttpResponse};

/// How long the node may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The prefix of the node's first standard-output line.
const LISTENING_PREFIX: &str = "switchboard listening on http://";

/// Environment variables the node reads (docs/node.md). They are removed from the child's
/// environment unless a test sets them, so the caller's shell cannot change a test's node.
pub const CONFIG_ENV_VARS: &[&str] = &[
    "BIND",
    "CONFIG",
    "MAX_FRAME_BYTES",
    "MAX_TOPICS_PER_SOCKET",
    "IDLE_TIMEOUT",
    "SEND_BUFFER_BYTES",
    "MAX_PUBLISH_BYTES",
    "SHUTDOWN_TIMEOUT",
    "PUBSUB_BACKEND",
    "REDIS_URL",
    "CHANNEL_PREFIX",
    "DATABASE_URL",
    "TOKEN_SECRET",
    "API_KEY",
    "ALLOWED_ORIGINS",
    "MAX_CONNECTIONS",
    "MAX_TOPIC_BYTES",
    "PUSH_RATE",
    "PUSH_BURST",
    "JOIN_RATE",
    "JOIN_BURST",
    "ENVELOPE",
    "SUBSCRIBE_TIMEOUT",
    "BACKEND_TIMEOUT",
    "UNSUBSCRIBE_LINGER",
    "BRIDGE_QUEUE_MESSAGES",
    "BRIDGE_QUEUE_BYTES",
    "WRITE_TIMEOUT",
    "OPEN_PUBLISH",
    "MAX_CONNECTIONS_PER_USER",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "CLIENT_IP_HEADER",
];

/// How a terminated node ended.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// The process's exit status.
    pub status: ExitStatus,
    /// Time from SIGTERM to the observed exit.
    pub elapsed: Duration,
}

/// Lines a process printed, shared with the thread that reads them.
type Lines = Arc<Mutex<Vec<String>>>;

/// A running `switchboard` process. Killed on drop.
#[derive(Debug)]
pub struct Node {
    child: Child,
    addr: SocketAddr,
    stdout: Lines,
    stderr: Lines,
    sigterm_at: Option<Instant>,
    exited: Option<ExitStatus>,
}

/// The `switchboard` binary the tests run: `$SWITCHBOARD_BIN`, else
/// `$CARGO_TARGET_DIR/debug/switchboard`, else `<workspace>/target/debug/switchboard`.
#[must_use]
pub fn binary_path() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHBOARD_BIN") {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || workspace.join("target"),
        // A relative target dir is taken relative to the workspace root, where cargo is
        // normally invoked.
        |dir| workspace.join(dir),
    );
    target.join("debug").join("switchboard")
}

/// The binary, or a panic that says how to build it.
///
/// # Panics
/// When the binary does not exist.
#[must_use]
pub fn require_binary() -> PathBuf {
    let path = binary_path();
    assert!(
        path.is_file(),
        "the switchboard binary was not found at {}: run `cargo build -p switchboard-node` \
         first (or point SWITCHBOARD_BIN at it)",
        path.display()
    );
    path
}

/// A command for the binary with the node's configuration variables removed from its
/// environment.
#[must_use]
pub fn command() -> Command {
    let mut command = Command::new(require_binary());
    for var in CONFIG_ENV_VARS {
        command.env_remove(var);
    }
    command
}

impl Node {
    /// Starts a node on a free loopback port with extra command-line `args`.
    ///
    /// # Panics
    /// When the binary is missing, cannot be spawned, or does not print its address within
    /// 20 s (the message includes its standard error).
    #[must_use]
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Like [`Node::start`], with environment variables set for the process.
    ///
    /// # Panics
    /// As [`Node::start`].
    #[must_use]
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all_args = vec!["--bind", "127.0.0.1:0"];
        all_args.extend_from_slice(args);
        Self::start_exactly(&all_args, env)
    }

    /// Starts a node with exactly `args` (no `--bind` added: the caller must make it listen
    /// on a free port, e.g. with `BIND=127.0.0.1:0` in `env`).
    ///
    /// # Panics
    /// As [`Node::start`].
    #[must_use]
    pub fn start_exactly(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = command();
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary_path().display()));

        let stdout: Lines = Arc::default();
        let stderr: Lines = Arc::default();
        let (first_lines, listening) = mpsc::channel();
        if let Some(pipe) = child.stdout.take() {
            drain(pipe, Arc::clone(&stdout), Some(first_lines));
        }
        if let Some(pipe) = child.stderr.take() {
            drain(pipe, Arc::clone(&stderr), None);
        }

        let started = Instant::now();
        let addr = loop {
            let left = START_TIMEOUT.saturating_sub(started.elapsed());
            match listening.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                        match addr.trim().parse::<SocketAddr>() {
                            Ok(addr) => break addr,
                            Err(e) => {
                                let _ = child.kill();
                                fail_start(
                                    &format!("unparsable address line {line:?}: {e}"),
                                    &stderr,
                                );
                            }
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    fail_start(
                        &format!("no `{LISTENING_PREFIX}ADDR` line within {START_TIMEOUT:?}"),
                        &stderr,
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    fail_start(
                        &format!("standard output closed before the address line; exit {status:?}"),
                        &stderr,
                    );
                }
            }
        };

        Self {
            child,
            addr,
            stdout,
            stderr,
            sigterm_at: None,
            exited: None,
        }
    }

    /// The address the node listens on.
    #[must_use]
    pub const fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/socket/websocket?vsn=2.0.0`.
    #[must_use]
    pub fn ws_url(&self) -> String {
        format!("ws://{}/socket/websocket?vsn=2.0.0", self.addr)
    }

    /// `http://ADDR` followed by `path` (which starts with `/`).
    #[must_use]
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Standard-output lines so far (the first is the listening line).
    #[must_use]
    pub fn stdout_lines(&self) -> Vec<String> {
        lock(&self.stdout).clone()
    }

    /// Standard-error lines so far (the node's log).
    #[must_use]
    pub fn stderr_lines(&self) -> Vec<String> {
        lock(&self.stderr).clone()
    }

    /// The last `n` log lines, joined, for assertion messages.
    #[must_use]
    pub fn log_tail(&self, n: usize) -> String {
        let lines = lock(&self.stderr);
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Connects a WebSocket client to [`Node::ws_url`].
    ///
    /// # Panics
    /// When the handshake fails.
    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// `GET path` on the node.
    ///
    /// # Panics
    /// When no response arrives.
    pub async fn get(&self, path: &str) -> HttpResponse {
        http::get(self.addr, path).await
    }

    /// The node's `/metrics`, parsed: metric name (with labels, if any) → value.
    ///
    /// # Panics
    /// When `/metrics` does not answer 200.
    pub async fn metrics(&self) -> HashMap<String, f64> {
        self.try_metrics().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Node::metrics`], returning what went wrong instead of panicking.
    ///
    /// # Errors
    /// When the request fails or does not answer 200.
    pub async fn try_metrics(&self) -> Result<HashMap<String, f64>, String> {
        let response = http::request(self.addr, "GET", "/metrics", &[], &[])
            .await
            .map_err(|e| format!("GET /metrics on {} failed: {e}", self.addr))?;
        if response.status != 200 {
            return Err(format!(
                "GET /metrics answered {}: {}",
                response.status,
                response.text()
            ));
        }
        Ok(http::parse_metrics(&response.text()))
    }

    /// One metric's value.
    ///
    /// # Panics
    /// When the metric is missing (the message lists the ones present).
    pub async fn metric(&self, name: &str) -> f64 {
        let metrics = self.metrics().await;
        metric_in(&metrics, name)
    }

    /// Waits until metric `name` satisfies `accept` (polling `/metrics`), returning its value.
    ///
    /// # Panics
    /// After `crate::PATIENCE` without a match, with the last value seen.
    pub async fn wait_metric(&self, name: &str, what: &str, accept: impl Fn(f64) -> bool) -> f64 {
        // A failed poll is retried like a wrong value (and reported if it is the last).
        http::eventually(crate::PATIENCE, &format!("{name} {what}"), || async {
            let metrics = self.try_metrics().await?;
            let value = metrics
                .get(name)
                .copied()
                .ok_or_else(|| format!("{name} is missing from /metrics"))?;
            if accept(value) {
                Ok(value)
            } else {
                Err(value.to_string())
            }
        })
        .await
    }

    /// Waits until metric `name` equals `value` (gauges change a moment after the event that
    /// moves them, e.g. a socket's subscriptions are dropped after its close).
    ///
    /// # Panics
    /// After `crate::PATIENCE` without a match, with the last value seen.
    pub async fn wait_metric_eq(&self, name: &str, value: f64) {
        #[allow(clippy::float_cmp)] // metric values are small integers, exact in f64
        self.wait_metric(name, &format!("== {value}"), |v| v == value)
            .await;
    }

    /// The node's resident set size in KiB, from `/proc/<pid>/status`.
    ///
    /// # Panics
    /// When the file cannot be read (the process is gone).
    #[must_use]
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS line in {path}"))
    }

    /// Sends SIGTERM and notes the time, for [`Node::wait_exit`].
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn sigterm(&mut self) {
        let pid =
            i32::try_from(self.pid()).unwrap_or_else(|_| panic!("pid {} overflows", self.pid()));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap_or_else(|e| panic!("cannot send SIGTERM to {pid}: {e}"));
        self.sigterm_at = Some(Instant::now());
    }

    /// Waits up to `timeout` for the process to exit (blocking this thread), without killing
    /// it: `None` if it is still running.
    ///
    /// # Panics
    /// When waiting fails.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<Exit> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                let since = self.sigterm_at.unwrap_or(started);
                return Some(Exit {
                    status,
                    elapsed: since.elapsed(),
                });
            }
            if started.elapsed() >= timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for the process to exit, blocking this thread.
    ///
    /// # Panics
    /// When it is still running after `timeout` (it is then killed; the message includes
    /// its log).
    pub fn wait_exit(&mut self, timeout: Duration) -> Exit {
        if let Some(exit) = self.try_wait_exit(timeout) {
            return exit;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "the node did not exit within {timeout:?}; log:\n{}",
            self.log_tail(40)
        );
    }

    /// SIGTERM, then wait up to 10 s for the exit: the status and the time it took.
    ///
    /// # Panics
    /// As [`Node::sigterm`] and [`Node::wait_exit`].
    pub fn terminate(&mut self) -> Exit {
        self.sigterm();
        self.wait_exit(Duration::from_secs(10))
    }

    /// The exit status if the process has exited.
    ///
    /// # Panics
    /// When the status cannot be queried.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("cannot query the node's status: {e}"));
        }
        self.exited
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            // Diagnostics for the failing test: the harness's only output, on purpose.
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "--- switchboard log (last 60 lines) ---\n{}\n--- end of log ---",
                    self.log_tail(60)
                );
            }
        }
    }
}

/// A metric's value from a parsed `/metrics`.
///
/// # Panics
/// When the metric is missing.
#[must_use]
pub fn metric_in(metrics: &HashMap<String, f64>, name: &str) -> f64 {
    metrics.get(name).copied().unwrap_or_else(|| {
        let mut names: Vec<_> = metrics.keys().collect();
        names.sort();
        panic!("metric {name} is missing; /metrics has {names:?}")
    })
}

/// Reads `pipe` line by line into `lines` until it closes, also sending each line to
/// `first_lines` while someone listens.
fn drain(
    pipe: impl Read + Send + 'static,
    lines: Lines,
    first_lines: Option<mpsc::Sender<String>>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        let mut first_lines = first_lines;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = line.trim_end_matches(['\r', '\n']).to_owned();
                    // Stored before it is announced, so a caller woken by the announcement
                    // finds it in `lines`.
                    lock(&lines).push(text.clone());
                    if let Some(sender) = &first_lines {
                        if sender.send(text).is_err() {
                            first_lines = None;
                        }
                    }
                }
            }
        }
    });
}

fn lock(lines: &Lines) -> std::sync::MutexGuard<'_, Vec<String>> {
    // A panic while holding the lock cannot leave a Vec<String> inconsistent.
    lines.lock().unwrap_or_else(PoisonError::into_inner)
}

fn fail_start(what: &str, stderr: &Lines) -> ! {
    // Give the stderr thread a moment to collect the node's last words.
    thread::sleep(Duration::from_millis(300));
    panic!(
        "switchboard did not start: {what}\n--- its standard error ---\n{}",
        lock(stderr).join("\n")
    );
}
