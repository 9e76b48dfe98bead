//! Configuration: every option is declared once, on [`Config`], and can be given three ways.
//!
//! Each option is a flag (`--max-frame-bytes`), the environment variable named on it
//! (`MAX_FRAME_BYTES`), and a key of the TOML file given with `--config` (`max-frame-bytes` or
//! `max_frame_bytes`). One rule layers them: a flag beats the environment, which beats the
//! file, which beats the default. The file is read after a first parse (which finds
//! `--config`), each of its keys is checked with the option's own parser, and the keys that no
//! flag or variable set are handed to a second parse as if they had been flags, so the file
//! has no separate list of options that could drift from the flags. Only the `[channels]`
//! tables, which have no flag, are read from the file alone.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;
use switchboard_core::bridge::BridgeConfig;
use switchboard_core::connection::Limits;
use switchboard_core::history::retention::DEFAULT_TTL;
use switchboard_core::history::{HistoryRules, Retention};
use switchboard_core::presence::{self, Meta, PresenceRules};
use switchboard_core::{Rule, MAX_TOPIC_BYTES};

use crate::security::token::TokenSecret;

/// A Phoenix Channels compatible pub/sub node.
///
/// Browsers connect with the official `phoenix` client to ws://<bind>/socket and join topics;
/// producers publish with POST /api/publish. Every option can also be set by the environment
/// variable shown, or in the TOML file given with --config (same names, `-` or `_`). A flag
/// beats the environment, which beats the file.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "switchboard",
    version,
    about,
    long_about,
    args_override_self = true
)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (the node prints the one it bound).
    #[arg(long, env = "BIND", default_value = "127.0.0.1:4000")]
    pub bind: SocketAddr,

    /// TOML file with any of these options (keys as the flag names) and the `[channels]`
    /// tables.
    #[arg(long, env = "CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Largest WebSocket message accepted from a client, in bytes; a larger one closes the
    /// socket with code 1009.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 64 * 1024, value_name = "BYTES", value_parser = at_least_one)]
    pub max_frame_bytes: usize,

    /// Topics one socket may join at once; one more gets the error reply
    /// "too many channels joined".
    #[arg(long, env = "MAX_TOPICS_PER_SOCKET", default_value_t = 100, value_name = "N", value_parser = at_least_one)]
    pub max_topics_per_socket: usize,

    /// Close a socket that sends no frame for this long (code 1000, "idle timeout").
    /// phoenix.js sends a heartbeat every 30s.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "60s", value_parser = positive_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// Unsent data one socket may have queued, in bytes; past it the socket is closed with
    /// code 3008 ("slow consumer") and gets nothing more.
    #[arg(long, env = "SEND_BUFFER_BYTES", default_value_t = 1024 * 1024, value_name = "BYTES", value_parser = at_least_one)]
    pub send_buffer_bytes: usize,

    /// A client connection that takes no data for this long while the node has data for it
    /// (a client that stopped reading) is closed by the node.
    #[arg(long, env = "WRITE_TIMEOUT", default_value = "10s", value_parser = positive_duration, value_name = "DURATION")]
    pub write_timeout: Duration,

    /// Largest POST /api/publish body, in bytes; a larger one gets 413.
    #[arg(long, env = "MAX_PUBLISH_BYTES", default_value_t = 64 * 1024, value_name = "BYTES", value_parser = at_least_one)]
    pub max_publish_bytes: usize,

    /// On Ctrl-C or SIGTERM, how long to wait for sockets to close and for accepted messages
    /// to reach the backend before exiting.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,

    /// Secret (at least 32 bytes) that connect tokens are signed with: HS256 JWTs with `sub`
    /// (the user id) and `exp`, passed as the `token` query parameter (phoenix.js:
    /// `new Socket(url, {params: {token}})`). Without a secret the node runs open, for
    /// development, and says so.
    #[arg(
        long,
        env = "TOKEN_SECRET",
        global = true,
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub token_secret: Option<String>,

    /// Key that POST /api/publish requires as `Authorization: Bearer <key>`. Without one,
    /// publishing over HTTP is open; a node with --token-secret refuses to start without one
    /// unless --open-publish says so on purpose.
    #[arg(long, env = "API_KEY", hide_env_values = true, value_name = "KEY", value_parser = not_empty)]
    pub api_key: Option<String>,

    /// Leave POST /api/publish open to anyone on a node with --token-secret (whoever can reach
    /// the node can then publish to any topic, around the channel rules). /readyz and the
    /// start-up log say which mode the node is in.
    #[arg(long, env = "OPEN_PUBLISH")]
    pub open_publish: bool,

    /// Origins allowed to open a WebSocket, comma-separated (e.g. https://app.example.com).
    /// Default: any. Clients that send no Origin header (servers, scripts) are not browsers and
    /// are always allowed.
    #[arg(
        long,
        env = "ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGINS"
    )]
    pub allowed_origins: Vec<String>,

    /// Most WebSocket connections at once; more are refused with 503. 0: as many as the
    /// open-file limit allows (the node raises its soft limit to the hard limit at start).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 0, value_name = "N")]
    pub max_connections: usize,

    /// Most WebSocket connections one user (a token's `sub`) holds at once; one more is
    /// refused with 429. 0: no limit.
    #[arg(
        long,
        env = "MAX_CONNECTIONS_PER_USER",
        default_value_t = 100,
        value_name = "N"
    )]
    pub max_connections_per_user: usize,

    /// Most WebSocket connections from one client address at once; one more is refused with
    /// 429. 0 (the default): no limit — behind a proxy every client shares its address unless
    /// --client-ip-header is set.
    #[arg(
        long,
        env = "MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 0,
        value_name = "N"
    )]
    pub max_connections_per_address: usize,

    /// Header that the trusted proxy in front of the node sets to the client's address (e.g.
    /// X-Forwarded-For; the last address in it counts). Only set it when every request comes
    /// through that proxy: clients can send the header too. Without it, the peer's address.
    #[arg(long, env = "CLIENT_IP_HEADER", value_name = "HEADER")]
    pub client_ip_header: Option<String>,

    /// Longest topic a socket may join, in bytes (at most 255).
    #[arg(long, env = "MAX_TOPIC_BYTES", default_value_t = 255, value_name = "BYTES", value_parser = topic_bytes)]
    pub max_topic_bytes: usize,

    /// Pushes per second one socket may make (a token bucket); a push over the rate gets the
    /// error reply "rate limit exceeded" and is not published.
    #[arg(long, env = "PUSH_RATE", default_value_t = 100, value_name = "PER_SECOND", value_parser = clap::value_parser!(u32).range(1..))]
    pub push_rate: u32,

    /// Pushes one socket may make at once above the rate (the bucket's size).
    #[arg(long, env = "PUSH_BURST", default_value_t = 200, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub push_burst: u32,

    /// Joins (and leaves) per second one socket may make; a join over the rate gets the error
    /// reply "join rate limit exceeded". Bounds how fast one socket can make the node
    /// subscribe and unsubscribe upstream.
    #[arg(long, env = "JOIN_RATE", default_value_t = 20, value_name = "PER_SECOND", value_parser = clap::value_parser!(u32).range(1..))]
    pub join_rate: u32,

    /// Joins one socket may make at once above the join rate (phoenix.js rejoins every topic
    /// at once after a reconnect).
    #[arg(long, env = "JOIN_BURST", default_value_t = 200, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub join_burst: u32,

    /// How long the members of a node that stopped refreshing them (killed, frozen, cut off)
    /// stay listed on the other nodes: each node refreshes its members on the backend every
    /// fifth of it, and a node silent for most of it is gone, its members announced as leaves.
    #[arg(long, env = "PRESENCE_TTL", default_value = "30s", value_parser = presence_ttl, value_name = "DURATION")]
    pub presence_ttl: Duration,

    /// Most presence members one topic may have, across every node; a join past it gets the
    /// error reply "too many members: ...".
    #[arg(long, env = "PRESENCE_MAX_MEMBERS", default_value_t = presence::DEFAULT_MAX_MEMBERS, value_name = "N", value_parser = at_least_one)]
    pub presence_max_members: usize,

    /// Largest presence meta (the token's `info` claim merged with the join's `presence`
    /// parameter), in bytes of JSON; a larger one gets an error reply.
    #[arg(long, env = "PRESENCE_MAX_META_BYTES", default_value_t = presence::DEFAULT_MAX_META_BYTES, value_name = "BYTES", value_parser = meta_bytes)]
    pub presence_max_meta_bytes: usize,

    /// Join and push rules and history per namespace, from the config file's
    /// `[channels.<namespace>]` tables (`"*"` for namespaces not listed).
    #[arg(skip)]
    pub channels: Vec<(String, ChannelConfig)>,

    /// A command instead of running the node.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Which backend joins nodes into one system: `memory` (this node alone), `redis` or
    /// `postgres`. Default: `redis` when only --redis-url is set, `postgres` when only
    /// --database-url is set, else `memory`; with both URLs it must be given. Never falls back
    /// silently.
    #[arg(long, env = "PUBSUB_BACKEND", value_enum, value_name = "BACKEND")]
    pub pubsub_backend: Option<BackendKind>,

    /// Redis to share topics through, e.g. redis://127.0.0.1:6379. Every node given the same
    /// Redis (and prefix) delivers every message to every subscriber.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_name = "URL")]
    pub redis_url: Option<String>,

    /// Prefix of the Redis or PostgreSQL channel of each topic (channel = prefix + topic).
    /// Empty by default, so topic `auditlog:42` is channel `auditlog:42`.
    #[arg(
        long,
        env = "CHANNEL_PREFIX",
        default_value = "",
        value_name = "PREFIX"
    )]
    pub channel_prefix: String,

    /// PostgreSQL to share topics through with LISTEN/NOTIFY, as a URL
    /// (postgres://user:password@host:5432/db) or a libpq key=value string. Every node given
    /// the same database (and prefix) delivers every message to every subscriber.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// How messages look on the backend's channels: `switchboard` (an envelope that keeps the
    /// event name) or `pyview` (what PyView's RedisPubSub and PostgresPubSub send and read, to
    /// share topics with PyView apps; use it with --channel-prefix set to theirs).
    #[arg(
        long,
        env = "ENVELOPE",
        value_enum,
        default_value = "switchboard",
        value_name = "FORMAT"
    )]
    pub envelope: EnvelopeFormat,

    /// How long a join waits for the backend to confirm its topic's subscription before it is
    /// answered with an error (phoenix.js then rejoins with backoff).
    #[arg(long, env = "SUBSCRIBE_TIMEOUT", default_value = "5s", value_parser = positive_duration, value_name = "DURATION")]
    pub subscribe_timeout: Duration,

    /// A backend that answers nothing for this long (a stopped process, a network black
    /// hole) is declared gone: readiness turns 503 and the bridge reconnects. Requests may take
    /// half of it; a quiet link is pinged every half of it.
    #[arg(long, env = "BACKEND_TIMEOUT", default_value = "10s", value_parser = positive_duration, value_name = "DURATION")]
    pub backend_timeout: Duration,

    /// How long a topic stays subscribed upstream after its last local subscriber left, so a
    /// quick rejoin costs nothing (0s: unsubscribe at once).
    #[arg(long, env = "UNSUBSCRIBE_LINGER", default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub unsubscribe_linger: Duration,

    /// Most messages waiting to be sent to the backend; past it a publish is delivered on this
    /// node only and its publisher is told so.
    #[arg(long, env = "BRIDGE_QUEUE_MESSAGES", default_value_t = 10_000, value_name = "N", value_parser = at_least_one)]
    pub bridge_queue_messages: usize,

    /// Most bytes of messages waiting to be sent to the backend (as above).
    #[arg(long, env = "BRIDGE_QUEUE_BYTES", default_value_t = 16 * 1024 * 1024, value_name = "BYTES", value_parser = at_least_one)]
    pub bridge_queue_bytes: usize,
}

/// Commands besides running the node.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Print a connect token for a user, signed with the configured --token-secret (for
    /// development and tests; production tokens come from your application).
    Token {
        /// The user id (the token's `sub`; the owner of topics `<namespace>:<sub>`).
        #[arg(long)]
        sub: String,
        /// How long the token is valid.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// The token's `info` claim: a JSON object presence shows as part of the user's meta
        /// (e.g. '{"name":"Ada"}').
        #[arg(long, value_name = "JSON", value_parser = info_claim)]
        info: Option<Meta>,
    },
}

/// One `[channels.<namespace>]` table: who may join and push, and what the namespace's
/// topics keep. Every key is optional; rules not given are those of `"*"` (or the secure
/// default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Who may join (`anyone`, `authenticated`, `owner`, `nobody`).
    #[serde(default, deserialize_with = "rule")]
    pub join: Option<Rule>,
    /// Who may push.
    #[serde(default, deserialize_with = "rule")]
    pub push: Option<Rule>,
    /// Publications each topic keeps, for recovery (none: no history).
    #[serde(default)]
    pub history: Option<u32>,
    /// How long a topic's history is kept after its last publication (`"10m"`).
    #[serde(default, deserialize_with = "duration")]
    pub history_ttl: Option<Duration>,
    /// Whether the namespace's topics track who is on them (phoenix.js `Presence`).
    #[serde(default)]
    pub presence: Option<bool>,
}

/// The most publications a topic's history may keep.
pub const MAX_HISTORY: u32 = 100_000;

fn rule<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Rule>, D::Error> {
    let name = String::deserialize(deserializer)?;
    name.parse().map(Some).map_err(serde::de::Error::custom)
}

fn duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    positive_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// The backends a node can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// This node alone, in memory.
    Memory,
    /// Several nodes as one, through Redis pub/sub.
    Redis,
    /// Several nodes as one, through PostgreSQL LISTEN/NOTIFY.
    Postgres,
}

/// How messages look on the backend's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EnvelopeFormat {
    /// `{"switchboard":{"event":..,"origin":..},"payload":..}`: keeps the event name.
    Switchboard,
    /// PyView's own: `{"topic":..,"message":..}` on Redis, the message itself on PostgreSQL.
    Pyview,
}

/// The backend the configuration resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// In memory, this node alone.
    Memory,
    /// Redis pub/sub.
    Redis {
        /// The Redis URL.
        url: String,
    },
    /// PostgreSQL LISTEN/NOTIFY.
    Postgres {
        /// The database URL or connection string.
        url: String,
    },
}

impl Backend {
    /// The name `/readyz` reports: `memory`, `redis`, `postgres`.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis { .. } => "redis",
            Self::Postgres { .. } => "postgres",
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The flags or environment variables are wrong (clap's own message).
    #[error("{0}")]
    Arguments(#[from] clap::Error),
    /// The file named by `--config` could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a bad value.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Options that are valid alone but not together.
    #[error("invalid value for {key}: {message}")]
    Value {
        /// The option.
        key: String,
        /// Why.
        message: String,
    },
}

impl ConfigError {
    /// Prints the error the way a command-line tool does and exits (2 for usage errors,
    /// 0 for `--help` and `--version`).
    pub fn exit(&self) -> ! {
        match self {
            Self::Arguments(err) => err.exit(),
            other => {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!("error: {other}\n").as_bytes(),
                );
                std::process::exit(2)
            }
        }
    }
}

/// Parses a duration: `60s`, `500ms`, `2m`, or a plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text).map_err(|err| format!("{err} (write e.g. 60s, 500ms, 2m)"))
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(duration)
}

/// A token's `info` claim: a JSON object without `phx_` fields.
fn info_claim(text: &str) -> Result<Meta, String> {
    Meta::parse(text, "the info claim").map_err(|err| err.to_string())
}

/// A presence TTL: long enough for a fifth of it to be a sensible heartbeat.
fn presence_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl < Duration::from_secs(1) {
        return Err(
            "the presence TTL is at least 1s (nodes refresh their members every fifth of it)"
                .into(),
        );
    }
    Ok(ttl)
}

/// A meta bound: room for a small object, and no more than the backends carry.
fn meta_bytes(text: &str) -> Result<usize, String> {
    let bytes: usize = text.parse().map_err(|err| format!("{err}"))?;
    if !(2..=MAX_META_BYTES).contains(&bytes) {
        return Err(format!("between 2 and {MAX_META_BYTES} bytes (a PostgreSQL notification carries at most 8000 bytes)"));
    }
    Ok(bytes)
}

/// The largest presence meta the node allows: a member's announcement (meta, key, refs) must
/// fit in one PostgreSQL notification.
pub const MAX_META_BYTES: usize = 4096;

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(value) => Ok(value),
        Err(err) => Err(err.to_string()),
    }
}

fn topic_bytes(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(value) if (1..=MAX_TOPIC_BYTES).contains(&value) => Ok(value),
        Ok(_) => Err(format!("must be between 1 and {MAX_TOPIC_BYTES}")),
        Err(err) => Err(err.to_string()),
    }
}

fn not_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(text.to_owned())
}

/// The `[channels]` part of the file (everything else is options).
#[derive(Debug, Default, Deserialize)]
struct FileChannels {
    #[serde(default)]
    channels: BTreeMap<String, ChannelConfig>,
}

impl Config {
    /// Parses the process arguments and environment, then the file named by `--config`.
    /// Exits with a usage message on bad flags, like any command-line tool.
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read or holds bad values.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// Like [`Config::load`] with explicit arguments (the first is the program name).
    ///
    /// # Errors
    /// [`ConfigError`] for bad flags, environment variables or file contents (`--help` and
    /// `--version` come back as [`ConfigError::Arguments`] too; [`ConfigError::exit`] prints
    /// them).
    pub fn load_from<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = Self::command();
        let first = command.clone().try_get_matches_from(&args)?;
        let Some(path) = first.get_one::<PathBuf>("config").cloned() else {
            return Self::finish(&first, Vec::new());
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.clone(),
            message: err.to_string(),
        })?;
        let file_args =
            file_args(&command, &first, &table).map_err(|message| ConfigError::Parse {
                path: path.clone(),
                message,
            })?;
        let channels: FileChannels = table
            .get("channels")
            .map(|channels| {
                let mut only = toml::Table::new();
                only.insert("channels".into(), channels.clone());
                toml::Value::Table(only).try_into()
            })
            .transpose()
            .map_err(|err: toml::de::Error| ConfigError::Parse {
                path: path.clone(),
                message: err.to_string(),
            })?
            .unwrap_or_default();
        // The file's options go first, so the command line's own occurrences win.
        let mut layered = vec![args
            .first()
            .cloned()
            .unwrap_or_else(|| "switchboard".into())];
        layered.extend(file_args);
        layered.extend(args.iter().skip(1).cloned());
        let matches = command.try_get_matches_from(&layered)?;
        Self::finish(&matches, channels.channels.into_iter().collect())
    }

    fn finish(
        matches: &ArgMatches,
        channels: Vec<(String, ChannelConfig)>,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::from_arg_matches(matches)?;
        config.channels = channels;
        config.validate()?;
        Ok(config)
    }

    /// The backend chosen, explicitly or by the one URL given (`--redis-url` or
    /// `--database-url`).
    ///
    /// # Errors
    /// A backend without its URL, or both URLs and no backend named.
    pub fn backend(&self) -> Result<Backend, ConfigError> {
        let redis = self.redis_url.clone();
        let postgres = self.database_url.clone();
        let missing = |message: &str| ConfigError::Value {
            key: "pubsub-backend".into(),
            message: message.into(),
        };
        match (self.pubsub_backend, redis, postgres) {
            (Some(BackendKind::Memory), _, _) | (None, None, None) => Ok(Backend::Memory),
            (Some(BackendKind::Redis), Some(url), _) | (None, Some(url), None) => {
                Ok(Backend::Redis { url })
            }
            (Some(BackendKind::Postgres), _, Some(url)) | (None, None, Some(url)) => {
                Ok(Backend::Postgres { url })
            }
            (Some(BackendKind::Redis), None, _) => {
                Err(missing("redis needs --redis-url (or REDIS_URL)"))
            }
            (Some(BackendKind::Postgres), _, None) => {
                Err(missing("postgres needs --database-url (or DATABASE_URL)"))
            }
            (None, Some(_), Some(_)) => Err(missing(
                "both --redis-url and --database-url are set: choose one with --pubsub-backend \
                 redis|postgres (or PUBSUB_BACKEND)",
            )),
        }
    }

    /// Which topics keep history, and how much.
    #[must_use]
    pub fn history_rules(&self) -> HistoryRules {
        let mut rules = HistoryRules::none();
        for (namespace, channel) in &self.channels {
            if let Some(size) = channel.history {
                let ttl = channel.history_ttl.unwrap_or(DEFAULT_TTL);
                rules.set(namespace, Retention { size, ttl });
            }
        }
        rules
    }

    /// Which topics track presence, and its bounds.
    #[must_use]
    pub fn presence_rules(&self) -> PresenceRules {
        let mut rules = PresenceRules::none();
        rules.max_members = self.presence_max_members;
        rules.max_meta_bytes = self.presence_max_meta_bytes;
        for (namespace, channel) in &self.channels {
            if let Some(on) = channel.presence {
                rules.set(namespace, on);
            }
        }
        rules
    }

    /// The limits every connection applies.
    #[must_use]
    pub fn connection_limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_topic_bytes: self.max_topic_bytes,
            max_topics: self.max_topics_per_socket,
            idle_timeout: self.idle_timeout,
            push_rate: self.push_rate,
            push_burst: self.push_burst,
            join_rate: self.join_rate,
            join_burst: self.join_burst,
        }
    }

    /// How the bridge to the backend bounds and paces itself; `jitter_seed` varies the
    /// reconnect delays between nodes.
    #[must_use]
    pub fn bridge(&self, jitter_seed: u64) -> BridgeConfig {
        BridgeConfig {
            subscribe_timeout: self.subscribe_timeout,
            backend_timeout: self.backend_timeout,
            connect_timeout: (self.backend_timeout / 10)
                .clamp(Duration::from_millis(500), Duration::from_secs(5)),
            unsubscribe_linger: self.unsubscribe_linger,
            max_queued_messages: self.bridge_queue_messages,
            max_queued_bytes: self.bridge_queue_bytes,
            jitter_seed,
            ..BridgeConfig::default()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.token_secret {
            TokenSecret::new(secret).map_err(|message| ConfigError::Value {
                key: "token-secret".into(),
                message,
            })?;
        }
        if self.command.is_none()
            && self.token_secret.is_some()
            && self.api_key.is_none()
            && !self.open_publish
        {
            return Err(ConfigError::Value {
                key: "api-key".into(),
                message: "a node with --token-secret needs --api-key too: without it anyone who \
                          can reach the node could publish to any topic over HTTP, around the \
                          channel rules (set --open-publish to leave publishing open on purpose)"
                    .into(),
            });
        }
        for (namespace, channel) in &self.channels {
            let invalid = |message: &str| ConfigError::Value {
                key: format!("channels.{namespace}"),
                message: message.into(),
            };
            if namespace != "*" && (namespace.is_empty() || namespace.contains(':')) {
                return Err(invalid(
                    "a namespace is the part of a topic before the first ':' (or \"*\")",
                ));
            }
            if channel
                .history
                .is_some_and(|size| !(1..=MAX_HISTORY).contains(&size))
            {
                return Err(invalid(&format!(
                    "history is the number of publications kept, 1 to {MAX_HISTORY}"
                )));
            }
            if channel.history_ttl.is_some() && channel.history.is_none() {
                return Err(invalid(
                    "history_ttl needs history (the number of publications kept)",
                ));
            }
        }
        if !self.history_rules().is_empty()
            && self.envelope == EnvelopeFormat::Pyview
            && matches!(self.backend(), Ok(Backend::Postgres { .. }))
        {
            return Err(ConfigError::Value {
                key: "envelope".into(),
                message: "history on PostgreSQL needs the switchboard envelope: PyView's \
                          PostgreSQL format is the message alone, with no room for a position"
                    .into(),
            });
        }
        if let Some(name) = &self.client_ip_header {
            actix_web::http::header::HeaderName::try_from(name.as_str()).map_err(|err| {
                ConfigError::Value {
                    key: "client-ip-header".into(),
                    message: err.to_string(),
                }
            })?;
        }
        self.backend()?;
        if let Some(url) = &self.redis_url {
            redis::Client::open(url.as_str()).map_err(|err| ConfigError::Value {
                key: "redis-url".into(),
                message: err.to_string(),
            })?;
        }
        if let Some(url) = &self.database_url {
            url.parse::<tokio_postgres::Config>()
                .map_err(|err| ConfigError::Value {
                    key: "database-url".into(),
                    message: err.to_string(),
                })?;
        }
        Ok(())
    }
}

/// The file's option keys as flags for the second parse: every key must name an option (or
/// be `channels`), its value must pass the option's parser, and keys whose option was given
/// on the command line or in the environment are left out (those win).
fn file_args(
    command: &clap::Command,
    first: &ArgMatches,
    table: &toml::Table,
) -> Result<Vec<OsString>, String> {
    let mut args = Vec::new();
    for (key, value) in table {
        if key == "channels" {
            continue;
        }
        let long = key.replace('_', "-");
        let Some(arg) = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long.as_str()) && long != "config")
        else {
            return Err(format!(
                "unknown key `{key}` (see `switchboard --help` for the options)"
            ));
        };
        let id = arg.get_id().as_str();
        if matches!(
            first.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        if !arg.get_action().takes_values() {
            match value {
                toml::Value::Boolean(true) => args.push(OsString::from(format!("--{long}"))),
                toml::Value::Boolean(false) => {}
                _ => return Err(format!("key `{key}`: expected true or false")),
            }
            continue;
        }
        for text in file_values(arg, value).map_err(|message| format!("key `{key}`: {message}"))? {
            check_value(arg, &long, &text).map_err(|message| format!("key `{key}`: {message}"))?;
            args.push(OsString::from(format!("--{long}")));
            args.push(OsString::from(text));
        }
    }
    Ok(args)
}

/// The text(s) a TOML value stands for, as the option would read them from a flag.
fn file_values(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Float(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(flag.to_string()),
        _ => Err("expected a string, number or boolean".to_owned()),
    };
    match value {
        toml::Value::Array(items) if arg.get_value_delimiter().is_some() => {
            items.iter().map(scalar).collect()
        }
        toml::Value::Array(_) => Err("expected a single value, not a list".into()),
        value => scalar(value).map(|text| vec![text]),
    }
}

/// Runs the option's own parser on `text`, for an error that names the file's key.
fn check_value(arg: &Arg, long: &str, text: &str) -> Result<(), String> {
    // A command with only this option, its environment variable ignored.
    let check = clap::Command::new("check")
        .no_binary_name(true)
        .arg(arg.clone().env(None::<&str>).global(false));
    check
        .try_get_matches_from([format!("--{long}"), text.to_owned()])
        .map(|_| ())
        .map_err(|err| {
            let message = err.to_string();
            let first = message.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_owned()
        })
}

#[cfg(test)]
mod tests;
