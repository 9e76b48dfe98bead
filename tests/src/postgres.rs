//! A private PostgreSQL cluster for tests of the PostgreSQL bridge.
//!
//! [`PostgresServer::start`] copies a freshly `initdb`-ed data directory (made once per
//! machine and PostgreSQL version, with trust authentication) into a temporary directory
//! owned by the `postgres` user, and starts it with `pg_ctl` on a free loopback port:
//! `-p PORT -k <its temp dir> -c listen_addresses=127.0.0.1`. We run as root, and PostgreSQL
//! refuses to, so every server command runs as `postgres` through `runuser -u postgres --`
//! (or directly when the tests do not run as root). A test can
//! [stop it immediately](PostgresServer::stop_immediate) (`pg_ctl stop -m immediate`: every
//! backend dies at once, clients see their connections drop), [start](PostgresServer::start_again)
//! it again on the same port, or [restart](PostgresServer::restart) it;
//! [freeze](PostgresServer::freeze) it (SIGSTOP to the postmaster and every process under it)
//! and [thaw](PostgresServer::thaw) it; talk to it as an
//! application does with [`PostgresServer::client`] (tokio-postgres), and LISTEN with a
//! [`Listener`]. Dropping a [`PostgresServer`] stops it and removes its directory.
//!
//! The binaries are those in `$PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else
//! `initdb`/`pg_ctl` on `PATH`. When PostgreSQL is missing every test that needs it fails with
//! a message saying how to install it: the tests never skip silently (`tests/run` installs it
//! with apt-get).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::http;
use crate::redis::{free_port, send_signal, wait_stopped};
use crate::PATIENCE;

/// How many free ports [`PostgresServer::start`] tries.
const START_ATTEMPTS: usize = 5;

/// The SQL function docs/postgres.md gives applications to compute a topic's channel (the
/// tests install it and check it agrees with the node).
pub const CHANNEL_FUNCTION_SQL: &str = r"
CREATE OR REPLACE FUNCTION switchboard_channel(name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT CASE
    WHEN octet_length(name) <= 63 AND name !~ '~[0-9a-f]{32}$' THEN name
    ELSE (SELECT left(name, n) FROM generate_series(30, 0, -1) AS n
          WHERE octet_length(left(name, n)) <= 30 LIMIT 1)
         || '~' || left(encode(sha256(convert_to(name, 'UTF8')), 'hex'), 32)
  END
$$;
";

/// The directory holding `initdb` and `pg_ctl`.
///
/// # Panics
/// When PostgreSQL is not installed (the message says how to install it).
#[must_use]
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(find_bin_dir)
        .clone()
        .unwrap_or_else(|why| panic!("{why}"))
}

fn find_bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(initdb) = on_path {
        if let Some(dir) = Path::new(&initdb).parent() {
            return Ok(dir.to_path_buf());
        }
    }
    Err(
        "PostgreSQL was not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): \
         the PostgreSQL bridge tests need a real server. Install it with \
         `apt-get install postgresql` (tests/run does) or point PG_BIN at the directory \
         holding initdb and pg_ctl"
            .to_owned(),
    )
}

/// Whether this process runs as root (then server commands run as `postgres`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args...` as the `postgres` user (when we are root), with its output.
fn as_postgres(program: &Path, args: &[&str]) -> Output {
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    command.args(args).current_dir("/");
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// Makes `path` (recursively) owned by `postgres` when we are root.
fn give_to_postgres(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "cannot chown {} to postgres (is there a `postgres` user? apt-get install \
             postgresql creates it)",
            path.display()
        );
    }
}

/// A data directory made by `initdb` once per machine and version, copied by every server.
fn template() -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let bin = bin_dir();
            let version = bin
                .parent()
                .and_then(Path::file_name)
                .map_or_else(|| "pg".to_owned(), |v| v.to_string_lossy().into_owned());
            let shared = std::env::temp_dir().join(format!("switchboard-e2e-pgdata-{version}"));
            if shared.join("PG_VERSION").is_file() && shared.join("postgresql.conf").is_file() {
                return shared;
            }
            let work = std::env::temp_dir().join(format!(
                "switchboard-e2e-pgdata-{version}.{}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&work);
            fs::create_dir_all(&work).unwrap_or_else(|e| panic!("cannot create {work:?}: {e}"));
            give_to_postgres(&work);
            let data = work.join("data");
            let output = as_postgres(
                &bin.join("initdb"),
                &[
                    "-D",
                    &data.to_string_lossy(),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            );
            assert!(
                output.status.success(),
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            // Another test process may have won the race; either copy is a complete cluster.
            if fs::rename(&data, &shared).is_err() {
                assert!(
                    shared.join("PG_VERSION").is_file(),
                    "cannot move the initdb output to {shared:?}"
                );
            }
            let _ = fs::remove_dir_all(&work);
            shared
        })
        .clone()
}

/// A PostgreSQL cluster on a private port. Stopped and deleted on drop.
#[derive(Debug)]
pub struct PostgresServer {
    dir: PathBuf,
    port: u16,
    running: bool,
    /// The processes [`PostgresServer::freeze`] stopped, postmaster first; empty when thawed.
    frozen: Vec<u32>,
}

impl PostgresServer {
    /// Starts a cluster on a free port and waits until it accepts connections.
    ///
    /// # Panics
    /// When PostgreSQL is missing (the message says how to install it) or no cluster starts
    /// after a few ports.
    #[must_use]
    pub fn start() -> Self {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut server = Self::create(free_port());
            match server.spawn() {
                Ok(()) => return server,
                Err(why) => last = why,
            }
        }
        panic!("postgres did not start after {START_ATTEMPTS} attempts: {last}");
    }

    /// Starts a cluster on `port` (for a test that pointed a node at the port first).
    ///
    /// # Panics
    /// When it does not start.
    #[must_use]
    pub fn start_on(port: u16) -> Self {
        let mut server = Self::create(port);
        if let Err(why) = server.spawn() {
            panic!("postgres did not start on port {port}: {why}");
        }
        server
    }

    /// A stopped cluster on `port` in a fresh copy of the template.
    fn create(port: u16) -> Self {
        let template = template();
        let dir =
            std::env::temp_dir().join(format!("switchboard-e2e-pg-{}-{port}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(dir.join("data"))
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "cannot copy {template:?}"
        );
        give_to_postgres(&dir);
        Self {
            dir,
            port,
            running: false,
            frozen: Vec::new(),
        }
    }

    /// `pg_ctl start -w`; on failure the error carries the server log.
    fn spawn(&mut self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let output = as_postgres(
            &bin_dir().join("pg_ctl"),
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &self.log_path().to_string_lossy(),
                "-o",
                &options,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        if !output.status.success() {
            return Err(format!(
                "pg_ctl start failed: {}{}\nlog:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log_tail(20)
            ));
        }
        self.running = true;
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The port it listens on.
    #[must_use]
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`, for `--database-url`.
    #[must_use]
    pub fn url(&self) -> String {
        url_for(self.port)
    }

    /// Whether the server runs.
    #[must_use]
    pub const fn is_running(&self) -> bool {
        self.running
    }

    /// `pg_ctl stop -m immediate`: every backend is killed at once, no goodbye to clients.
    /// A [frozen](Self::freeze) server is thawed first (a stopped postmaster would never
    /// act on pg_ctl's signal), so it may run for the moment between the two.
    ///
    /// # Panics
    /// When pg_ctl fails.
    pub fn stop_immediate(&mut self) {
        if !self.running {
            return;
        }
        self.thaw();
        let output = as_postgres(
            &bin_dir().join("pg_ctl"),
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        assert!(
            output.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.running = false;
    }

    /// Starts the stopped server again on the same port (crash recovery after an immediate
    /// stop) and returns once it accepts connections.
    ///
    /// # Panics
    /// When it does not come back.
    pub fn start_again(&mut self) {
        let mut last = String::new();
        for _ in 0..3 {
            match self.spawn() {
                Ok(()) => return,
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("postgres did not start again on port {}: {last}", self.port);
    }

    /// [`stop_immediate`](Self::stop_immediate), then [`start_again`](Self::start_again).
    pub fn restart(&mut self) {
        self.stop_immediate();
        self.start_again();
    }

    /// The postmaster's process id: the first line of `<data>/postmaster.pid`, while the
    /// server runs.
    #[must_use]
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// SIGSTOP to the postmaster and then to every process under it (the backends serving
    /// existing connections, the background workers): connections stay established and
    /// nothing is answered until [`thaw`](Self::thaw). New connections still complete their
    /// TCP handshake into the listen backlog and then wait. Returns once every one of those
    /// processes is stopped. Nothing happens when it is already frozen.
    ///
    /// # Panics
    /// When the server does not run or the postmaster cannot be signalled.
    pub fn freeze(&mut self) {
        if !self.frozen.is_empty() {
            return;
        }
        assert!(
            self.running,
            "cannot freeze postgres on port {}: it does not run",
            self.port
        );
        let postmaster = self.postmaster_pid().unwrap_or_else(|| {
            panic!(
                "cannot freeze postgres on port {}: no pid in {:?}",
                self.port,
                self.data().join("postmaster.pid")
            )
        });
        send_signal(postmaster, Signal::SIGSTOP)
            .unwrap_or_else(|e| panic!("cannot SIGSTOP the postmaster (pid {postmaster}): {e}"));
        self.frozen.push(postmaster);
        wait_stopped(postmaster);
        // A stopped postmaster forks nothing more; a child it forked just before shows up
        // in the next scan.
        loop {
            let new: Vec<u32> = descendants(postmaster)
                .into_iter()
                .filter(|pid| !self.frozen.contains(pid))
                .collect();
            if new.is_empty() {
                break;
            }
            for pid in new {
                // A backend may exit between the scan and the signal.
                if send_signal(pid, Signal::SIGSTOP).is_ok() {
                    self.frozen.push(pid);
                    wait_stopped(pid);
                }
            }
        }
    }

    /// SIGCONT to every process [`freeze`](Self::freeze) stopped (the postmaster last): the
    /// server answers what waited meanwhile. Nothing happens when it is not frozen.
    pub fn thaw(&mut self) {
        for pid in self.frozen.drain(..).rev() {
            // A process that is gone needs no waking.
            let _ = send_signal(pid, Signal::SIGCONT);
        }
    }

    /// Whether the server is [frozen](Self::freeze).
    #[must_use]
    pub fn is_frozen(&self) -> bool {
        !self.frozen.is_empty()
    }

    /// The last `n` lines of the server log.
    #[must_use]
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A connection as an application makes one (its driver runs on the caller's runtime).
    ///
    /// # Panics
    /// When the connection fails.
    pub async fn client(&self) -> Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url()));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Runs `sql` (one or more statements) on a fresh connection, as `psql -c` would.
    ///
    /// # Panics
    /// When it fails (the message names the statement and the server's error).
    pub async fn execute(&self, sql: &str) {
        let client = self.client().await;
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql:?} failed: {e:?}"));
    }

    /// `SELECT pg_notify(channel, payload)` on a fresh connection.
    ///
    /// # Panics
    /// When it fails.
    pub async fn notify(&self, channel: &str, payload: &str) {
        let client = self.client().await;
        client
            .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
            .await
            .unwrap_or_else(|e| panic!("pg_notify({channel:?}, ..) failed: {e:?}"));
    }

    /// A connection that `LISTEN`s on `channels`, to see what nodes publish.
    ///
    /// # Panics
    /// When the connection or a `LISTEN` fails.
    pub async fn listen(&self, channels: &[&str]) -> Listener {
        let (client, mut connection) = tokio_postgres::connect(&self.url(), NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url()));
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
                if let AsyncMessage::Notification(n) = message {
                    if sender
                        .send((n.channel().to_owned(), n.payload().to_owned()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        for channel in channels {
            let sql = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql} failed: {e:?}"));
        }
        Listener {
            _client: client,
            receiver,
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Diagnostics for the failing test: the harness's only output, on purpose.
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "--- postgres log (last 20 lines) ---\n{}\n--- end of log ---",
                    self.log_tail(20)
                );
            }
        }
        // A stopped postmaster would leave `pg_ctl stop` waiting for its full timeout.
        self.thaw();
        if self.running {
            let _ = as_postgres(
                &bin_dir().join("pg_ctl"),
                &[
                    "-D",
                    &self.data().to_string_lossy(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Every process under `root` (children, their children, ...), from the parent ids in
/// `/proc/<pid>/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = parent_pid(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            found.push(child);
            next.push(child);
        }
    }
    found
}

/// The parent id in `/proc/<pid>/stat`, or `None` when the process is gone.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses; it ends at the last `)`.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `postgres://postgres@127.0.0.1:PORT/postgres`.
#[must_use]
pub fn url_for(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// A connection in LISTEN mode.
#[derive(Debug)]
pub struct Listener {
    _client: Client,
    receiver: mpsc::UnboundedReceiver<(String, String)>,
}

impl Listener {
    /// The next notification within `timeout` as (channel, payload), or `None`.
    pub async fn next(&mut self, timeout: Duration) -> Option<(String, String)> {
        tokio::time::timeout(timeout, self.receiver.recv())
            .await
            .ok()
            .flatten()
    }
}

/// The arguments that make a node share topics through the database at `url` (add these to
/// the node's own), with an empty channel prefix. The backend is named explicitly, so the
/// caller's environment cannot change it (flags beat the environment).
#[must_use]
pub fn bridged_args(url: &str) -> Vec<String> {
    [
        "--pubsub-backend",
        "postgres",
        "--database-url",
        url,
        "--channel-prefix",
        "",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Waits until `node`'s `switchboard_bridge_received_total` reaches `at_least`.
///
/// # Panics
/// After [`PATIENCE`] without it.
pub async fn wait_received(node: &crate::Node, at_least: f64) {
    http::eventually(
        PATIENCE,
        &format!("switchboard_bridge_received_total >= {at_least}"),
        || async {
            let value = node.metric("switchboard_bridge_received_total").await;
            if value >= at_least {
                Ok(())
            } else {
                Err(value.to_string())
            }
        },
    )
    .await;
}

/// The event of [`wait_delivery`]'s probes.
pub const PROBE_EVENT: &str = "__probe";

/// Waits until a message published on `from` (over HTTP) reaches every one of `clients`
/// on `topic`, then discards the probes: after it, every node's subscription to `topic` is
/// in effect. PostgreSQL shows no session another session's LISTENs, so this is how a test
/// knows a node listens; it works the same for any backend. Probes count in the nodes'
/// `switchboard_bridge_*` metrics.
///
/// # Panics
/// After [`PATIENCE`] without every client getting a probe.
pub async fn wait_delivery(from: &crate::Node, topic: &str, clients: &mut [&mut crate::Client]) {
    use crate::PhxFrame as _;
    let started = Instant::now();
    let mut got = vec![false; clients.len()];
    let mut seq = 0_u64;
    while got.iter().any(|g| !g) {
        assert!(
            started.elapsed() < PATIENCE,
            "probes published on {} never reached every subscriber of {topic}: {got:?}",
            from.addr()
        );
        seq += 1;
        let response = http::publish(
            from.addr(),
            topic,
            Some(PROBE_EVENT),
            &serde_json::json!({ "probe": seq }),
        )
        .await;
        assert!(
            response.status == 200 || response.status == 503,
            "probe publish: {} {}",
            response.status,
            response.text()
        );
        for (client, got) in clients.iter_mut().zip(got.iter_mut()) {
            while let Some(frame) = client.recv_json_within(Duration::from_millis(30)).await {
                if frame.is_broadcast() && frame.event() == PROBE_EVENT {
                    *got = true;
                }
            }
        }
    }
    // Probes still in flight arrive within a moment; drop them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for client in clients.iter_mut() {
        while let Some(frame) = client.recv_json_within(Duration::from_millis(50)).await {
            assert!(
                frame.is_broadcast() && frame.event() == PROBE_EVENT,
                "only probes were expected while waiting for delivery, got {frame}"
            );
        }
    }
}
