use super::*;

fn load(args: &[&str]) -> Result<Config, ConfigError> {
    Config::load_from(std::iter::once("switchboard").chain(args.iter().copied()))
}

/// A config file in a fresh directory; removed on drop.
struct File {
    dir: PathBuf,
    path: PathBuf,
}

impl File {
    fn new(name: &str, text: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("switchboard-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, text).unwrap();
        Self { dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
    assert_eq!(config.subscribe_timeout, Duration::from_secs(5));
    assert_eq!(config.backend_timeout, Duration::from_secs(10));
    assert_eq!(config.unsubscribe_linger, Duration::from_secs(1));
    assert_eq!(config.bridge_queue_messages, 10_000);
    assert_eq!(config.bridge_queue_bytes, 16 << 20);
    assert_eq!(config.envelope, EnvelopeFormat::Switchboard);
    assert_eq!((config.join_rate, config.join_burst), (20, 200));
    let bridge = config.bridge(1);
    assert_eq!(bridge.connect_timeout, Duration::from_secs(1));
    assert_eq!(bridge.request_timeout(), Duration::from_secs(5));
}

#[test]
fn file_fills_what_flags_leave_at_default() {
    let file = File::new(
        "layers",
        "max-topics-per-socket = 7\nidle_timeout = \"5s\"\nmax-frame-bytes = 1000\n\
         subscribe-timeout = 2\nallowed-origins = [\"https://a.example\", \"https://b.example\"]\n",
    );
    let config = load(&["--config", file.arg(), "--max-frame-bytes", "2000"]).unwrap();
    assert_eq!(config.max_topics_per_socket, 7);
    assert_eq!(config.idle_timeout, Duration::from_secs(5));
    assert_eq!(config.max_frame_bytes, 2000, "a flag beats the file");
    assert_eq!(
        config.subscribe_timeout,
        Duration::from_secs(2),
        "a bare number is seconds"
    );
    assert_eq!(
        config.allowed_origins,
        vec![
            "https://a.example".to_owned(),
            "https://b.example".to_owned()
        ]
    );
}

#[test]
fn unknown_and_bad_file_keys_are_errors_that_name_the_key() {
    let file = File::new("unknown", "max-topic = 7\n");
    let err = load(&["--config", file.arg()]).unwrap_err();
    assert!(err.to_string().contains("unknown key `max-topic`"), "{err}");
    let file = File::new("bad", "max_frame_bytes = \"lots\"\n");
    let err = load(&["--config", file.arg()]).unwrap_err().to_string();
    assert!(err.starts_with("invalid config file"), "{err}");
    assert!(err.contains("key `max_frame_bytes`"), "{err}");
    let file = File::new("zero", "max-topics-per-socket = 0\n");
    let err = load(&["--config", file.arg()]).unwrap_err().to_string();
    assert!(err.contains("must be at least 1"), "{err}");
    let file = File::new("config", "config = \"other.toml\"\n");
    assert!(
        load(&["--config", file.arg()]).is_err(),
        "a file cannot name another"
    );
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
        }
    );
    assert_eq!(redis.channel_prefix, "sb:");
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
    let file = File::new(
        "rules",
        "[channels.room]\njoin = \"authenticated\"\npush = \"authenticated\"\n[channels.\"*\"]\njoin = \"nobody\"\npush = \"nobody\"\n",
    );
    let config = load(&["--config", file.arg()]).unwrap();
    assert_eq!(config.channels.len(), 2);
    let file = File::new(
        "bad-rules",
        "[channels.room]\njoin = \"everyone\"\npush = \"nobody\"\n",
    );
    let err = load(&["--config", file.arg()]).unwrap_err();
    assert!(
        err.to_string().contains("unknown rule \"everyone\""),
        "{err}"
    );
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
    let expected = Backend::Postgres { url: url.into() };
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
    let err = load(&["--max-topics-per-socket", "0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be at least 1"), "{err}");
    let err = load(&["--idle-timeout", "0s"]).unwrap_err().to_string();
    assert!(err.contains("must be longer than 0s"), "{err}");
}

#[test]
fn the_envelope_is_an_option_like_any_other() {
    let config = load(&["--envelope", "pyview"]).unwrap();
    assert_eq!(config.envelope, EnvelopeFormat::Pyview);
    let file = File::new("envelope", "envelope = \"pyview\"\n");
    assert_eq!(
        load(&["--config", file.arg()]).unwrap().envelope,
        EnvelopeFormat::Pyview
    );
    assert!(load(&["--envelope", "json"]).is_err());
}

#[test]
fn a_token_secret_without_an_api_key_needs_open_publish() {
    let secret = "0123456789abcdef0123456789abcdef";
    let err = load(&["--token-secret", secret]).unwrap_err().to_string();
    assert!(err.contains("needs --api-key too"), "{err}");
    assert!(load(&["--token-secret", secret, "--api-key", "k"]).is_ok());
    assert!(load(&["--token-secret", secret, "--open-publish"]).is_ok());
    let file = File::new("open", "open-publish = true\n");
    let config = load(&["--token-secret", secret, "--config", file.arg()]).unwrap();
    assert!(config.open_publish);
    // The token command needs no API key.
    assert!(load(&["--token-secret", secret, "token", "--sub", "1"]).is_ok());
}
