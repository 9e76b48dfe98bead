//! One private backend, Redis or PostgreSQL, behind one interface, so a fault suite written
//! once runs against both.
//!
//! [`BackendServer::start`] starts a [`RedisServer`] or a [`PostgresServer`] and offers what
//! the fault tests do to either: its address and URL (also [through another
//! address](BackendServer::url_via), such as a [`FaultProxy`](crate::proxy::FaultProxy)),
//! the arguments that make a node use it ([`BackendKind::node_args`]), a crash
//! ([`kill9`](BackendServer::kill9): SIGKILL for Redis, `pg_ctl stop -m immediate` for
//! PostgreSQL), a [restart](BackendServer::restart) on the same port,
//! [freeze](BackendServer::freeze) / [thaw](BackendServer::thaw), its log, and a
//! [ping](BackendKind::ping) with a deadline (Redis `PING`, PostgreSQL `SELECT 1`) that
//! tells a backend that answers from one that hangs.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::postgres::{self, PostgresServer};
use crate::redis::RedisServer;

/// Which backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// A `redis-server`.
    Redis,
    /// A PostgreSQL cluster.
    Postgres,
}

impl BackendKind {
    /// Both, for a suite that runs once per backend.
    pub const ALL: [Self; 2] = [Self::Redis, Self::Postgres];

    /// `redis` or `postgres` (as `--pubsub-backend` names them).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }

    /// The URL of this kind of backend at `addr`: `redis://ADDR` or
    /// `postgres://postgres@ADDR/postgres`.
    #[must_use]
    pub fn url_for(self, addr: SocketAddr) -> String {
        match self {
            Self::Redis => format!("redis://{addr}"),
            Self::Postgres => format!("postgres://postgres@{addr}/postgres"),
        }
    }

    /// The arguments that make a node share topics through this kind of backend at `url`
    /// (add them to the node's own): the backend named explicitly, so the caller's
    /// environment cannot change it, and an empty channel prefix. The same as
    /// [`redis::bridged_args`](crate::redis::bridged_args) (which takes a port, not a URL)
    /// plus the prefix, and [`postgres::bridged_args`].
    #[must_use]
    pub fn node_args(self, url: &str) -> Vec<String> {
        match self {
            Self::Redis => [
                "--pubsub-backend",
                "redis",
                "--redis-url",
                url,
                "--channel-prefix",
                "",
            ]
            .map(str::to_owned)
            .to_vec(),
            Self::Postgres => postgres::bridged_args(url),
        }
    }

    /// Whether the backend at `url` answers a fresh connection's `PING` (Redis) or
    /// `SELECT 1` (PostgreSQL) within `timeout`: false when it is down, frozen or cut off.
    pub async fn ping(self, url: &str, timeout: Duration) -> bool {
        match self {
            Self::Redis => ping_redis(url, timeout).await,
            Self::Postgres => ping_postgres(url, timeout).await,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `PING` with the blocking client, on a blocking thread: connecting, the client's setup
/// and the reply each have `timeout`, and the whole has `timeout`.
async fn ping_redis(url: &str, timeout: Duration) -> bool {
    let url = url.to_owned();
    let ping = tokio::task::spawn_blocking(move || -> redis::RedisResult<String> {
        let client = redis::Client::open(url)?;
        let mut connection = client.get_connection_with_timeout(timeout)?;
        connection.set_read_timeout(Some(timeout))?;
        connection.set_write_timeout(Some(timeout))?;
        redis::cmd("PING").query(&mut connection)
    });
    // On timeout the blocking thread ends by its own timeouts.
    matches!(
        tokio::time::timeout(timeout, ping).await,
        Ok(Ok(Ok(pong))) if pong == "PONG"
    )
}

/// `SELECT 1` on a fresh connection, driven here (nothing is left running after).
async fn ping_postgres(url: &str, timeout: Duration) -> bool {
    let attempt = async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.ok()?;
        tokio::select! {
            answered = client.simple_query("SELECT 1") => answered.ok().map(drop),
            _ = connection => None,
        }
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(())))
}

/// The server behind a [`BackendServer`].
#[derive(Debug)]
enum Server {
    Redis(RedisServer),
    Postgres(PostgresServer),
}

/// A private Redis or PostgreSQL server on a free loopback port. Killed (Redis) or stopped
/// and deleted (PostgreSQL) on drop, thawed first if frozen.
#[derive(Debug)]
pub struct BackendServer {
    server: Server,
}

impl BackendServer {
    /// Starts a server of `kind` on a free port and waits until it answers.
    ///
    /// # Panics
    /// When the server is not installed or does not start (see [`RedisServer::start`] and
    /// [`PostgresServer::start`]).
    #[must_use]
    pub fn start(kind: BackendKind) -> Self {
        let server = match kind {
            BackendKind::Redis => Server::Redis(RedisServer::start()),
            BackendKind::Postgres => Server::Postgres(PostgresServer::start()),
        };
        Self { server }
    }

    /// Starts a server of `kind` on `port` (for a test that pointed a node at the port
    /// first).
    ///
    /// # Panics
    /// When it does not start.
    #[must_use]
    pub fn start_on(kind: BackendKind, port: u16) -> Self {
        let server = match kind {
            BackendKind::Redis => Server::Redis(RedisServer::start_on(port)),
            BackendKind::Postgres => Server::Postgres(PostgresServer::start_on(port)),
        };
        Self { server }
    }

    /// Which backend it is.
    #[must_use]
    pub const fn kind(&self) -> BackendKind {
        match self.server {
            Server::Redis(_) => BackendKind::Redis,
            Server::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// The port it listens on.
    #[must_use]
    pub const fn port(&self) -> u16 {
        match &self.server {
            Server::Redis(server) => server.port(),
            Server::Postgres(server) => server.port(),
        }
    }

    /// Its address, 127.0.0.1 and [`port`](Self::port).
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    /// Its URL (`redis://127.0.0.1:P` or `postgres://postgres@127.0.0.1:P/postgres`).
    #[must_use]
    pub fn url(&self) -> String {
        self.kind().url_for(self.addr())
    }

    /// Its URL as reached through `addr` instead, e.g. a
    /// [`FaultProxy`](crate::proxy::FaultProxy) in front of it.
    #[must_use]
    pub fn url_via(&self, addr: SocketAddr) -> String {
        self.kind().url_for(addr)
    }

    /// [`BackendKind::node_args`] for this server's kind.
    #[must_use]
    pub fn node_args(&self, url: &str) -> Vec<String> {
        self.kind().node_args(url)
    }

    /// [`BackendKind::ping`] of its own URL.
    pub async fn ping(&self, timeout: Duration) -> bool {
        self.kind().ping(&self.url(), timeout).await
    }

    /// Crashes it: SIGKILL for Redis, `pg_ctl stop -m immediate` for PostgreSQL (every
    /// backend process killed at once; a frozen cluster is thawed first). Clients see their
    /// connections drop or reset; nothing listens on the port until
    /// [`restart`](Self::restart).
    pub fn kill9(&mut self) {
        match &mut self.server {
            Server::Redis(server) => server.kill9(),
            Server::Postgres(server) => server.stop_immediate(),
        }
    }

    /// Starts it again on the same port (crashing it first if it runs) and returns once it
    /// answers. Redis starts empty; PostgreSQL recovers its data directory.
    ///
    /// # Panics
    /// When it does not come back.
    pub fn restart(&mut self) {
        match &mut self.server {
            Server::Redis(server) => server.restart(),
            Server::Postgres(server) => server.restart(),
        }
    }

    /// Stops its processes (SIGSTOP; for PostgreSQL the postmaster and every process under
    /// it): connections stay established and nothing answers until [`thaw`](Self::thaw).
    ///
    /// # Panics
    /// When it does not run.
    pub fn freeze(&mut self) {
        match &mut self.server {
            Server::Redis(server) => server.freeze(),
            Server::Postgres(server) => server.freeze(),
        }
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&mut self) {
        match &mut self.server {
            Server::Redis(server) => server.thaw(),
            Server::Postgres(server) => server.thaw(),
        }
    }

    /// Whether it is frozen.
    #[must_use]
    pub fn is_frozen(&self) -> bool {
        match &self.server {
            Server::Redis(server) => server.is_frozen(),
            Server::Postgres(server) => server.is_frozen(),
        }
    }

    /// The last `n` lines of its log.
    #[must_use]
    pub fn log_tail(&self, n: usize) -> String {
        match &self.server {
            Server::Redis(server) => server.log_tail(n),
            Server::Postgres(server) => server.log_tail(n),
        }
    }

    /// The Redis server, when it is one (for Redis-only helpers such as `PUBLISH`).
    #[must_use]
    pub const fn redis(&self) -> Option<&RedisServer> {
        match &self.server {
            Server::Redis(server) => Some(server),
            Server::Postgres(_) => None,
        }
    }

    /// The PostgreSQL server, when it is one (for `pg_notify`, LISTEN and the like).
    #[must_use]
    pub const fn postgres(&self) -> Option<&PostgresServer> {
        match &self.server {
            Server::Redis(_) => None,
            Server::Postgres(server) => Some(server),
        }
    }
}
