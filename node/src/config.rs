//! Configuration: flags, the same names as environment variables, and an optional TOML file.
//!
//! Precedence: a flag beats the environment, which beats the file, which beats the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;
use switchboard_core::{Rule, MAX_TOPIC_BYTES};

use crate::token::TokenSecret;

/// A Phoenix Channels compatible pub/sub node.
///
/// Browsers connect with the official `phoenix` client to ws://<bind>/socket and join topics;
/// producers publish with POST /api/publish. Every option can also be set by the environment
/// variable shown, or in the TOML file given with --config (same names, `-` or `_`).
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard", version, about, long_about)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (the node prints the one it bound).
    #[arg(long, env = "BIND", default_value = "127.0.0.1:4000")]
    pub bind: SocketAddr,

    /// TOML file with any of these options (keys as the flag names).
    #[arg(long, env = "CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Largest WebSocket message accepted from a client, in bytes; a larger one closes the
    /// socket with code 1009.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 64 * 1024, value_name = "BYTES")]
    pub max_frame_bytes: usize,

    /// Topics one socket may join at once; one more gets the error reply
    /// "too many channels joined".
    #[arg(
        long,
        env = "MAX_TOPICS_PER_SOCKET",
        default_value_t = 100,
        value_name = "N"
    )]
    pub max_topics_per_socket: usize,

    /// Close a socket that sends no frame for this long (code 1000, "idle timeout").
    /// phoenix.js sends a heartbeat every 30s.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// Unsent data one socket may have queued, in bytes; past it the socket is closed with
    /// code 3008 ("slow consumer") and gets nothing more.
    #[arg(long, env = "SEND_BUFFER_BYTES", default_value_t = 1024 * 1024, value_name = "BYTES")]
    pub send_buffer_bytes: usize,

    /// Largest POST /api/publish body, in bytes; a larger one gets 413.
    #[arg(long, env = "MAX_PUBLISH_BYTES", default_value_t = 64 * 1024, value_name = "BYTES")]
    pub max_publish_bytes: usize,

    /// On Ctrl-C or SIGTERM, how long to wait for sockets to close before exiting.
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
    /// publishing over HTTP is open.
    #[arg(long, env = "API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,

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

    /// Longest topic a socket may join, in bytes (at most 255).
    #[arg(
        long,
        env = "MAX_TOPIC_BYTES",
        default_value_t = 255,
        value_name = "BYTES"
    )]
    pub max_topic_bytes: usize,

    /// Pushes per second one socket may make (a token bucket); a push over the rate gets the
    /// error reply "rate limit exceeded" and is not published.
    #[arg(
        long,
        env = "PUSH_RATE",
        default_value_t = 100,
        value_name = "PER_SECOND"
    )]
    pub push_rate: u32,

    /// Pushes one socket may make at once above the rate (the bucket's size).
    #[arg(long, env = "PUSH_BURST", default_value_t = 200, value_name = "N")]
    pub push_burst: u32,

    /// Join and push rules per namespace, from the config file's `[channels.<namespace>]`
    /// tables (`"*"` for namespaces not listed).
    #[arg(skip)]
    pub channels: Vec<(String, ChannelAccess)>,

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
    #[arg(long, env = "REDIS_URL", value_name = "URL")]
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
    },
}

/// One `[channels.<namespace>]` table: who may join and who may push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelAccess {
    /// Who may join (`anyone`, `authenticated`, `owner`, `nobody`).
    #[serde(deserialize_with = "rule")]
    pub join: Rule,
    /// Who may push.
    #[serde(deserialize_with = "rule")]
    pub push: Rule,
}

fn rule<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Rule, D::Error> {
    let name = String::deserialize(deserializer)?;
    name.parse().map_err(serde::de::Error::custom)
}

/// The backends a node can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// This node alone, in memory.
    Memory,
    /// Several nodes as one, through Redis pub/sub.
    Redis,
    /// Several nodes as one, through PostgreSQL LISTEN/NOTIFY.
    Postgres,
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
        /// The channel prefix.
        prefix: String,
    },
    /// PostgreSQL LISTEN/NOTIFY.
    Postgres {
        /// The database URL or connection string.
        url: String,
        /// The channel prefix.
        prefix: String,
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

/// The same options as they may appear in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    #[serde(alias = "bind")]
    bind: Option<SocketAddr>,
    #[serde(alias = "max_frame_bytes")]
    max_frame_bytes: Option<usize>,
    #[serde(alias = "max_topics_per_socket")]
    max_topics_per_socket: Option<usize>,
    #[serde(alias = "idle_timeout")]
    idle_timeout: Option<DurationValue>,
    #[serde(alias = "send_buffer_bytes")]
    send_buffer_bytes: Option<usize>,
    #[serde(alias = "max_publish_bytes")]
    max_publish_bytes: Option<usize>,
    #[serde(alias = "shutdown_timeout")]
    shutdown_timeout: Option<DurationValue>,
    #[serde(alias = "token_secret")]
    token_secret: Option<String>,
    #[serde(alias = "api_key")]
    api_key: Option<String>,
    #[serde(alias = "allowed_origins")]
    allowed_origins: Option<Vec<String>>,
    #[serde(alias = "max_connections")]
    max_connections: Option<usize>,
    #[serde(alias = "max_topic_bytes")]
    max_topic_bytes: Option<usize>,
    #[serde(alias = "push_rate")]
    push_rate: Option<u32>,
    #[serde(alias = "push_burst")]
    push_burst: Option<u32>,
    channels: Option<std::collections::BTreeMap<String, ChannelAccess>>,
    #[serde(alias = "pubsub_backend")]
    pubsub_backend: Option<BackendKind>,
    #[serde(alias = "redis_url")]
    redis_url: Option<String>,
    #[serde(alias = "channel_prefix")]
    channel_prefix: Option<String>,
    #[serde(alias = "database_url")]
    database_url: Option<String>,
}

/// A duration in the file: `"60s"` or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Text(String),
    Seconds(u64),
}

impl DurationValue {
    fn resolve(self, key: &str) -> Result<Duration, ConfigError> {
        match self {
            Self::Seconds(seconds) => Ok(Duration::from_secs(seconds)),
            Self::Text(text) => parse_duration(&text).map_err(|message| ConfigError::Value {
                key: key.to_owned(),
                message,
            }),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file named by `--config` could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a mistyped value.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid value for {key}: {message}")]
    Value {
        /// The option.
        key: String,
        /// Why.
        message: String,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("{err} (write e.g. 60s, 500ms, 2m)"))
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
    /// [`ConfigError`] when the file cannot be read or holds bad values.
    pub fn load_from<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().get_matches_from(args);
        Self::from_matches(&matches)
    }

    /// Builds the configuration from parsed matches (used by subcommands that embed it).
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read or holds bad values.
    pub fn from_matches(matches: &ArgMatches) -> Result<Self, ConfigError> {
        let mut config = Self::from_arg_matches(matches).map_err(|err| ConfigError::Value {
            key: "arguments".into(),
            message: err.to_string(),
        })?;
        if let Some(path) = config.config.clone() {
            config.apply_file(&path, matches)?;
        }
        config.validate()?;
        Ok(config)
    }

    fn apply_file(&mut self, path: &Path, matches: &ArgMatches) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: FileConfig = toml::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
        let from_default = |id: &str| matches.value_source(id) == Some(ValueSource::DefaultValue);
        if let (Some(value), true) = (file.bind, from_default("bind")) {
            self.bind = value;
        }
        if let (Some(value), true) = (file.max_frame_bytes, from_default("max_frame_bytes")) {
            self.max_frame_bytes = value;
        }
        if let (Some(value), true) = (
            file.max_topics_per_socket,
            from_default("max_topics_per_socket"),
        ) {
            self.max_topics_per_socket = value;
        }
        if let (Some(value), true) = (file.idle_timeout, from_default("idle_timeout")) {
            self.idle_timeout = value.resolve("idle-timeout")?;
        }
        if let (Some(value), true) = (file.send_buffer_bytes, from_default("send_buffer_bytes")) {
            self.send_buffer_bytes = value;
        }
        if let (Some(value), true) = (file.max_publish_bytes, from_default("max_publish_bytes")) {
            self.max_publish_bytes = value;
        }
        if let (Some(value), true) = (file.shutdown_timeout, from_default("shutdown_timeout")) {
            self.shutdown_timeout = value.resolve("shutdown-timeout")?;
        }
        if self.token_secret.is_none() {
            self.token_secret = file.token_secret;
        }
        if self.api_key.is_none() {
            self.api_key = file.api_key;
        }
        if let (Some(value), None) = (
            file.allowed_origins,
            matches.value_source("allowed_origins"),
        ) {
            self.allowed_origins = value;
        }
        if let (Some(value), true) = (file.max_connections, from_default("max_connections")) {
            self.max_connections = value;
        }
        if let (Some(value), true) = (file.max_topic_bytes, from_default("max_topic_bytes")) {
            self.max_topic_bytes = value;
        }
        if let (Some(value), true) = (file.push_rate, from_default("push_rate")) {
            self.push_rate = value;
        }
        if let (Some(value), true) = (file.push_burst, from_default("push_burst")) {
            self.push_burst = value;
        }
        self.channels = file.channels.unwrap_or_default().into_iter().collect();
        if self.pubsub_backend.is_none() {
            self.pubsub_backend = file.pubsub_backend;
        }
        if self.redis_url.is_none() {
            self.redis_url = file.redis_url;
        }
        if let (Some(value), true) = (file.channel_prefix, from_default("channel_prefix")) {
            self.channel_prefix = value;
        }
        if self.database_url.is_none() {
            self.database_url = file.database_url;
        }
        Ok(())
    }

    /// The backend chosen, explicitly or by the one URL given (`--redis-url` or
    /// `--database-url`).
    ///
    /// # Errors
    /// A backend without its URL, or both URLs and no backend named.
    pub fn backend(&self) -> Result<Backend, ConfigError> {
        let prefix = self.channel_prefix.clone();
        let redis = self.redis_url.clone();
        let postgres = self.database_url.clone();
        let missing = |message: &str| ConfigError::Value {
            key: "pubsub-backend".into(),
            message: message.into(),
        };
        match (self.pubsub_backend, redis, postgres) {
            (Some(BackendKind::Memory), _, _) | (None, None, None) => Ok(Backend::Memory),
            (Some(BackendKind::Redis), Some(url), _) | (None, Some(url), None) => {
                Ok(Backend::Redis { url, prefix })
            }
            (Some(BackendKind::Postgres), _, Some(url)) | (None, None, Some(url)) => {
                Ok(Backend::Postgres { url, prefix })
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

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.token_secret {
            TokenSecret::new(secret).map_err(|message| ConfigError::Value {
                key: "token-secret".into(),
                message,
            })?;
        }
        if self.api_key.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::Value {
                key: "api-key".into(),
                message: "must not be empty".into(),
            });
        }
        if !(1..=MAX_TOPIC_BYTES).contains(&self.max_topic_bytes) {
            return Err(ConfigError::Value {
                key: "max-topic-bytes".into(),
                message: format!("must be between 1 and {MAX_TOPIC_BYTES}"),
            });
        }
        if self.push_rate == 0 || self.push_burst == 0 {
            return Err(ConfigError::Value {
                key: "push-rate".into(),
                message: "push-rate and push-burst must be at least 1".into(),
            });
        }
        for (namespace, _) in &self.channels {
            if namespace != "*" && (namespace.is_empty() || namespace.contains(':')) {
                return Err(ConfigError::Value {
                    key: format!("channels.{namespace}"),
                    message: "a namespace is the part of a topic before the first ':' (or \"*\")"
                        .into(),
                });
            }
        }
        self.backend()?;
        if let Some(url) = &self.redis_url {
            redis::Client::open(url.as_str()).map_err(|err| ConfigError::Value {
                key: "redis-url".into(),
                message: err.to_string(),
            })?;
        }
        if let Some(url) = &self.database_url {
            crate::postgres_bridge::parse_url(url).map_err(|err| ConfigError::Value {
                key: "database-url".into(),
                message: err.to_string(),
            })?;
        }
        let positive = [
            ("max-frame-bytes", self.max_frame_bytes),
            ("max-topics-per-socket", self.max_topics_per_socket),
            ("send-buffer-bytes", self.send_buffer_bytes),
            ("max-publish-bytes", self.max_publish_bytes),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Value {
                    key: key.into(),
                    message: "must be at least 1".into(),
                });
            }
        }
        if self.idle_timeout.is_zero() {
            return Err(ConfigError::Value {
                key: "idle-timeout".into(),
                message: "must be longer than 0s".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        Config::load_from(std::iter::once("switchboard").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_documentation() {
        let config = load(&[]).unwrap();
        assert_eq!(config.bind, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(config.max_frame_bytes, 65536);
        assert_eq!(config.max_topics_per_socket, 100);
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.send_buffer_bytes, 1 << 20);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(5));
    }

    #[test]
    fn file_fills_what_flags_leave_at_default() {
        let dir = std::env::temp_dir().join(format!("switchboard-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "max-topics-per-socket = 7\nidle_timeout = \"5s\"\nmax-frame-bytes = 1000\n",
        )
        .unwrap();
        let config = load(&[
            "--config",
            path.to_str().unwrap(),
            "--max-frame-bytes",
            "2000",
        ])
        .unwrap();
        assert_eq!(config.max_topics_per_socket, 7);
        assert_eq!(config.idle_timeout, Duration::from_secs(5));
        assert_eq!(config.max_frame_bytes, 2000, "a flag beats the file");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir =
            std::env::temp_dir().join(format!("switchboard-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, "max-topic = 7\n").unwrap();
        let err = load(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `max-topic`"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn backend_is_chosen_explicitly_or_by_the_url() {
        assert_eq!(load(&[]).unwrap().backend().unwrap(), Backend::Memory);
        let redis = load(&[
            "--redis-url",
            "redis://127.0.0.1:1",
            "--channel-prefix",
            "sb:",
        ])
        .unwrap();
        assert_eq!(
            redis.backend().unwrap(),
            Backend::Redis {
                url: "redis://127.0.0.1:1".into(),
                prefix: "sb:".into()
            }
        );
        let memory = load(&["--pubsub-backend", "memory", "--redis-url", "redis://x"]).unwrap();
        assert_eq!(memory.backend().unwrap(), Backend::Memory);
        let err = load(&["--pubsub-backend", "redis"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for pubsub-backend: redis needs --redis-url (or REDIS_URL)"
        );
        assert!(load(&["--redis-url", "http://nope"]).is_err());
    }

    #[test]
    fn channel_rules_come_from_the_file() {
        let dir =
            std::env::temp_dir().join(format!("switchboard-config-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "[channels.room]\njoin = \"authenticated\"\npush = \"authenticated\"\n[channels.\"*\"]\njoin = \"nobody\"\npush = \"nobody\"\n",
        )
        .unwrap();
        let config = load(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(config.channels.len(), 2);
        std::fs::write(
            &path,
            "[channels.room]\njoin = \"everyone\"\npush = \"nobody\"\n",
        )
        .unwrap();
        let err = load(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(
            err.to_string().contains("unknown rule \"everyone\""),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn short_token_secrets_are_refused() {
        let err = load(&["--token-secret", "short"]).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "invalid value for token-secret: the token secret must be at least 32 bytes"
            ),
            "{err}"
        );
    }

    #[test]
    fn postgres_is_chosen_by_name_or_by_its_url_alone() {
        let url = "postgres://sb@127.0.0.1:5432/app";
        let expected = Backend::Postgres {
            url: url.into(),
            prefix: String::new(),
        };
        let explicit = load(&["--pubsub-backend", "postgres", "--database-url", url]).unwrap();
        assert_eq!(explicit.backend().unwrap(), expected);
        assert_eq!(
            load(&["--database-url", url]).unwrap().backend().unwrap(),
            expected
        );
        let redis = load(&[
            "--pubsub-backend",
            "redis",
            "--redis-url",
            "redis://x",
            "--database-url",
            url,
        ]);
        assert!(matches!(
            redis.unwrap().backend().unwrap(),
            Backend::Redis { .. }
        ));
        let err = load(&["--pubsub-backend", "postgres"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for pubsub-backend: postgres needs --database-url (or DATABASE_URL)"
        );
        let err = load(&["--redis-url", "redis://x", "--database-url", url]).unwrap_err();
        assert!(
            err.to_string().contains("choose one with --pubsub-backend"),
            "{err}"
        );
        let err = load(&["--database-url", "postgres://[nope"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid value for database-url"),
            "{err}"
        );
    }

    #[test]
    fn zero_limits_are_refused() {
        let err = load(&["--max-topics-per-socket", "0"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for max-topics-per-socket: must be at least 1"
        );
    }
}
