//! A private `redis-server` for tests of the Redis bridge, and helpers around bridged nodes.
//!
//! [`RedisServer::start`] finds a free loopback port and starts
//! `redis-server --port P --bind 127.0.0.1 --save '' --appendonly no` as a child process,
//! then waits until it answers `PING`. A test can [`kill -9`](RedisServer::kill9) it and
//! [`restart`](RedisServer::restart) it on the same port, [freeze](RedisServer::freeze) it
//! (SIGSTOP) and [thaw](RedisServer::thaw) it (SIGCONT), talk to it like `redis-cli` does
//! ([`RedisServer::cli`], through the `redis` crate) and listen to channels with a
//! [`Subscriber`]. Dropping a [`RedisServer`] kills the process.
//!
//! The binary is `$REDIS_SERVER`, else `redis-server` on `PATH`. When it is missing every
//! test that needs it fails with a message saying how to install it: the tests never skip
//! silently (`tests/run` installs it with apt-get).
//!
//! The free functions ([`bridged_args`], [`wait_bridge`], [`wait_bridge_up`]) start and
//! watch nodes that share topics through a server.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use redis::{FromRedisValue, ToRedisArgs, Value};

use crate::http::{self, HttpResponse};
use crate::node::Node;
use crate::PATIENCE;

/// How long a starting server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How many free ports [`RedisServer::start`] tries (another process may take the port
/// between our probe and the server's bind).
const START_ATTEMPTS: usize = 5;

/// Lines a process printed, shared with the thread that reads them.
type Lines = Arc<Mutex<Vec<String>>>;

/// The `redis-server` binary the tests run: `$REDIS_SERVER`, else `redis-server`.
#[must_use]
pub fn server_binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// A free TCP port on 127.0.0.1 (nothing listens on it when this returns).
///
/// # Panics
/// When no port can be bound.
#[must_use]
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind a probe socket on 127.0.0.1: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("probe socket has no address: {e}"))
        .port()
}

/// `redis://127.0.0.1:PORT`.
#[must_use]
pub fn url_for(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// A `redis-server` child process on a private port. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    log: Lines,
    starts: usize,
    frozen: bool,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` is missing (the message says how to install it) or no server
    /// answers after a few ports.
    #[must_use]
    pub fn start() -> Self {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut server = Self::new(free_port());
            match server.spawn() {
                Ok(()) => return server,
                Err(why) => last = why,
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts: {last}");
    }

    /// Starts a server on `port` (for a test that pointed a node at the port first).
    ///
    /// # Panics
    /// When it does not answer `PING` within 10 s.
    #[must_use]
    pub fn start_on(port: u16) -> Self {
        let mut server = Self::new(port);
        if let Err(why) = server.spawn() {
            panic!("redis-server did not start on port {port}: {why}");
        }
        server
    }

    fn new(port: u16) -> Self {
        Self {
            child: None,
            port,
            log: Arc::default(),
            starts: 0,
            frozen: false,
        }
    }

    /// Spawns the process and waits for `PING`; on failure the process is gone and the error
    /// says why (with its log).
    fn spawn(&mut self) -> Result<(), String> {
        let binary = server_binary();
        let port = self.port.to_string();
        let dir = std::env::temp_dir();
        let spawned = Command::new(&binary)
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{binary}` was not found: the Redis bridge tests need a real Redis server. \
                 Install it (`apt-get install redis-server`, which tests/run does) or point \
                 REDIS_SERVER at the binary"
            ),
            Err(e) => panic!("cannot start `{binary}`: {e}"),
        };
        self.starts += 1;
        let generation = format!("--- start #{} on port {port} ---", self.starts);
        lock(&self.log).push(generation);
        if let Some(pipe) = child.stdout.take() {
            drain(pipe, Arc::clone(&self.log));
        }
        if let Some(pipe) = child.stderr.take() {
            drain(pipe, Arc::clone(&self.log));
        }
        let started = Instant::now();
        loop {
            if self.ping() {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Let the drain threads collect its last words.
                thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "it exited with {status} before answering PING; log:\n{}",
                    self.log_tail(20)
                ));
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no PING answer within {START_TIMEOUT:?}; log:\n{}",
                    self.log_tail(20)
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The port it listens on.
    #[must_use]
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, for `--redis-url`.
    #[must_use]
    pub fn url(&self) -> String {
        url_for(self.port)
    }

    /// Its address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (it may still be starting up).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGKILL (no shutdown, no goodbye to clients), and wait until the process is gone.
    /// A frozen server is killed as it is: SIGKILL ends a stopped process, so it does not run
    /// again first.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.frozen = false;
    }

    /// SIGSTOP: the process stays, its clients' connections stay established, and nothing is
    /// answered until [`thaw`](Self::thaw) (the kernel still completes new connections into
    /// the listen backlog, so connecting succeeds and the first command hangs). Returns once
    /// the process is stopped. Nothing happens when it is already frozen.
    ///
    /// # Panics
    /// When the server does not run, or the signal cannot be sent.
    pub fn freeze(&mut self) {
        if self.frozen {
            return;
        }
        let pid = self.pid().unwrap_or_else(|| {
            panic!(
                "cannot freeze redis-server on port {}: it does not run",
                self.port
            )
        });
        send_signal(pid, Signal::SIGSTOP)
            .unwrap_or_else(|e| panic!("cannot SIGSTOP redis-server (pid {pid}): {e}"));
        self.frozen = true;
        wait_stopped(pid);
    }

    /// SIGCONT: a frozen server runs again and answers what waited meanwhile. Nothing happens
    /// when it is not frozen.
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn thaw(&mut self) {
        if !self.frozen {
            return;
        }
        if let Some(pid) = self.pid() {
            send_signal(pid, Signal::SIGCONT)
                .unwrap_or_else(|e| panic!("cannot SIGCONT redis-server (pid {pid}): {e}"));
        }
        self.frozen = false;
    }

    /// Whether the server is [frozen](Self::freeze).
    #[must_use]
    pub const fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Starts the server again on the same port (killing it first if it still runs) and waits
    /// until it answers `PING`. Returns when it does, so a caller can time what follows.
    ///
    /// # Panics
    /// When it does not come back within 10 s.
    pub fn restart(&mut self) {
        self.kill9();
        // The old listening socket is gone with the process; Redis binds with SO_REUSEADDR,
        // so TIME_WAIT connections on the port do not stop it. Retry briefly all the same.
        let mut last = String::new();
        for _ in 0..3 {
            match self.spawn() {
                Ok(()) => return,
                Err(why) => last = why,
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!("redis-server did not restart on port {}: {last}", self.port);
    }

    /// Whether the server answers `PING` right now (a fresh connection, short timeouts).
    #[must_use]
    pub fn ping(&self) -> bool {
        self.try_cli(&["PING"])
            .is_ok_and(|v| matches!(v, Value::SimpleString(ref s) if s == "PONG"))
    }

    /// The last `n` lines the server logged.
    #[must_use]
    pub fn log_tail(&self, n: usize) -> String {
        let lines = lock(&self.log);
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        let connection = client.get_connection_with_timeout(Duration::from_secs(2))?;
        connection.set_read_timeout(Some(PATIENCE))?;
        connection.set_write_timeout(Some(PATIENCE))?;
        Ok(connection)
    }

    /// Runs one command, as `redis-cli -p PORT args...` would, on a fresh connection.
    ///
    /// # Errors
    /// Connection failures and error replies.
    pub fn try_cli(&self, args: &[&str]) -> redis::RedisResult<Value> {
        let mut connection = self.connection()?;
        let Some((name, rest)) = args.split_first() else {
            return Ok(Value::Nil);
        };
        let mut command = redis::cmd(name);
        for arg in rest {
            command.arg(*arg);
        }
        command.query(&mut connection)
    }

    /// Runs one command and returns the reply.
    ///
    /// # Panics
    /// When the command fails (the message names it, with the server's log).
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> Value {
        self.try_cli(args).unwrap_or_else(|e| {
            panic!(
                "redis {args:?} on port {} failed: {e}; server log:\n{}",
                self.port,
                self.log_tail(10)
            )
        })
    }

    /// Runs one command and converts the reply.
    ///
    /// # Panics
    /// When the command fails or the reply does not convert.
    #[must_use]
    pub fn cli_as<T: FromRedisValue>(&self, args: &[&str]) -> T {
        let value = self.cli(args);
        redis::from_redis_value_ref(&value)
            .unwrap_or_else(|e| panic!("redis {args:?} answered {value:?}, not convertible: {e}"))
    }

    /// `PUBLISH channel message`: how many subscribers (nodes, here) Redis handed it to.
    ///
    /// # Panics
    /// When the command fails.
    pub fn publish(&self, channel: &str, message: impl ToRedisArgs) -> i64 {
        let run = || -> redis::RedisResult<i64> {
            let mut connection = self.connection()?;
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query(&mut connection)
        };
        run().unwrap_or_else(|e| panic!("PUBLISH {channel} failed: {e}"))
    }

    /// `PUBSUB NUMSUB channel`: its number of subscribed connections.
    ///
    /// # Panics
    /// When the command fails.
    #[must_use]
    pub fn numsub(&self, channel: &str) -> u64 {
        let counts: HashMap<String, u64> = self.cli_as(&["PUBSUB", "NUMSUB", channel]);
        counts.get(channel).copied().unwrap_or(0)
    }

    /// `PUBSUB CHANNELS pattern`, sorted.
    ///
    /// # Panics
    /// When the command fails.
    #[must_use]
    pub fn channels(&self, pattern: &str) -> Vec<String> {
        let mut channels: Vec<String> = self.cli_as(&["PUBSUB", "CHANNELS", pattern]);
        channels.sort();
        channels
    }

    /// How many times command `name` (lower case, e.g. `subscribe`) ran since the server
    /// started or `CONFIG RESETSTAT`, from `INFO commandstats`.
    ///
    /// # Panics
    /// When the command fails.
    #[must_use]
    pub fn command_calls(&self, name: &str) -> u64 {
        let info: String = self.cli_as(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{name}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until `channel` has exactly `expected` subscribers.
    ///
    /// # Panics
    /// After [`PATIENCE`] without it, with the last count seen.
    pub async fn wait_numsub(&self, channel: &str, expected: u64) {
        http::eventually(
            PATIENCE,
            &format!("PUBSUB NUMSUB {channel} = {expected}"),
            || async {
                let count = self.numsub(channel);
                if count == expected {
                    Ok(())
                } else {
                    Err(count.to_string())
                }
            },
        )
        .await;
    }

    /// Waits until `PUBSUB CHANNELS pattern` is exactly `expected` (in any order).
    ///
    /// # Panics
    /// After [`PATIENCE`] without it, with the last list seen.
    pub async fn wait_channels(&self, pattern: &str, expected: &[&str]) {
        let mut expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        expected.sort();
        http::eventually(
            PATIENCE,
            &format!("PUBSUB CHANNELS {pattern} = {expected:?}"),
            || async {
                let channels = self.channels(pattern);
                if channels == expected {
                    Ok(())
                } else {
                    Err(format!("{channels:?}"))
                }
            },
        )
        .await;
    }

    /// A connection subscribed to `channels`, to see what nodes publish.
    ///
    /// # Panics
    /// When the connection or the subscription fails.
    #[must_use]
    pub fn subscribe(&self, channels: &[&str]) -> Subscriber {
        let subscribe = || -> redis::RedisResult<Subscriber> {
            let mut connection = self.connection()?;
            let mut command = redis::cmd("SUBSCRIBE");
            for channel in channels {
                command.arg(*channel);
            }
            connection.send_packed_command(&command.get_packed_command())?;
            // One confirmation per channel.
            for _ in channels {
                let _ = connection.recv_response()?;
            }
            Ok(Subscriber { connection })
        };
        subscribe().unwrap_or_else(|e| panic!("SUBSCRIBE {channels:?} failed: {e}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if thread::panicking() {
            // Diagnostics for the failing test: the harness's only output, on purpose.
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "--- redis-server log (last 20 lines) ---\n{}\n--- end of log ---",
                    self.log_tail(20)
                );
            }
        }
        self.kill9();
    }
}

/// A Redis connection in subscribed mode (blocking reads with a timeout).
pub struct Subscriber {
    connection: redis::Connection,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").finish_non_exhaustive()
    }
}

impl Subscriber {
    /// The next message within `timeout` as (channel, payload bytes), or `None`.
    ///
    /// # Panics
    /// When the connection fails.
    pub fn next_message(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.connection
                .set_read_timeout(Some(left))
                .unwrap_or_else(|e| panic!("cannot set the read timeout: {e}"));
            match self.connection.recv_response() {
                Ok(value) => {
                    if let Some(msg) = redis::Msg::from_owned_value(value) {
                        return Some((
                            msg.get_channel_name().to_owned(),
                            msg.get_payload_bytes().to_vec(),
                        ));
                    }
                }
                Err(e) if e.is_timeout() => return None,
                Err(e) => panic!("the Redis subscriber connection failed: {e}"),
            }
        }
    }
}

/// The arguments that make a node share topics through the server at `port` (add these to
/// the node's own). The backend is named explicitly, so a `PUBSUB_BACKEND` or `REDIS_URL` in
/// the caller's environment cannot change it (flags beat the environment).
#[must_use]
pub fn bridged_args(port: u16) -> Vec<String> {
    ["--pubsub-backend", "redis", "--redis-url", &url_for(port)]
        .map(str::to_owned)
        .to_vec()
}

/// Waits until `GET /readyz` on `node` says the bridge is `up` (`200`, `"bridge":"up"`) or
/// `down` (`503`, `"bridge":"down"`): the response.
///
/// # Panics
/// After `timeout` without it, with the last answer.
pub async fn wait_bridge(node: &Node, up: bool, timeout: Duration) -> HttpResponse {
    let (status, bridge) = if up { (200, "up") } else { (503, "down") };
    http::eventually(
        timeout,
        &format!(
            "/readyz {status} with \"bridge\":\"{bridge}\" on {}",
            node.addr()
        ),
        || async {
            let response = http::request(node.addr(), "GET", "/readyz", &[], &[])
                .await
                .map_err(|e| e.to_string())?;
            if response.status == status && response.json()["bridge"] == bridge {
                Ok(response)
            } else {
                Err(format!("{} {}", response.status, response.text()))
            }
        },
    )
    .await
}

/// [`wait_bridge`] up, for every node, with [`PATIENCE`].
///
/// # Panics
/// When a node's bridge does not come up.
pub async fn wait_bridge_up(nodes: &[&Node]) {
    for node in nodes {
        let _ = wait_bridge(node, true, PATIENCE).await;
    }
}

/// Sends `signal` to process `pid`.
pub(crate) fn send_signal(pid: u32, signal: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::ESRCH)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
}

/// The state letter of process `pid` in `/proc/<pid>/stat` (`R`, `S`, `T`, ...), or `None`
/// when it is gone.
pub(crate) fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses; it ends at the last `)`.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// Waits (briefly) until process `pid` is stopped or gone: a signal is delivered
/// asynchronously, and a caller of `freeze` means "no longer running" when it returns.
pub(crate) fn wait_stopped(pid: u32) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        match process_state(pid) {
            Some('T' | 't' | 'Z' | 'X') | None => return,
            Some(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Reads `pipe` line by line into `lines` until it closes.
fn drain(pipe: impl Read + Send + 'static, lines: Lines) {
    thread::spawn(move || {
        let reader = BufReader::new(pipe);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            lock(&lines).push(line);
        }
    });
}

fn lock(lines: &Lines) -> std::sync::MutexGuard<'_, Vec<String>> {
    // A panic while holding the lock cannot leave a Vec<String> inconsistent.
    lines.lock().unwrap_or_else(PoisonError::into_inner)
}
