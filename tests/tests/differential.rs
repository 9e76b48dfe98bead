//! The real node and the core's in-memory `LocalServer` (the engine of the WebAssembly fake
//! server) must answer the same client sessions with the same frames, closes, refusals and
//! publish counts, in the same order.
//!
//! Sessions come from the committed corpus in `tests/differential/*.json` (its README describes
//! the format) and from a seeded generator ([`Rng`]). Every step is played on both servers; its
//! outcome is read in full before the next step starts: from the `LocalServer`, the items it
//! returns; from the node, as many messages per client as the `LocalServer` produced for that
//! client (a missing one times out, an extra one shows up in a later step or in the heartbeat
//! that ends every session). Frames are compared as JSON values, with each server's history
//! epochs and presence `phx_ref`s renamed in the order they appear ([`Names`]). After a socket
//! closes, the test waits until the node counts as many open sockets as the `LocalServer`
//! before it goes on, so a publish never races a disconnect; on a node with presence every
//! step waits out the batching window first.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use switchboard_core::connection::Limits;
use switchboard_core::history::{HistoryRules, Retention};
use switchboard_core::local::{Handshake, LocalServer, Outgoing};
use switchboard_core::presence::PresenceRules;
use switchboard_core::token::TokenSecret;
use switchboard_core::{Access, ChannelRules, Payload, Rule, SessionId, Time};
use switchboard_e2e::{http, Client, Incoming, Node, Rng};
use tokio_tungstenite::tungstenite;

const SECRET: &str = "differential-test-secret-0123456789abcdef";
const API_KEY: &str = "differential-test-api-key";
/// How long a frame the `LocalServer` produced may take to arrive from the node.
const WAIT: Duration = Duration::from_secs(5);
/// The pause before each step on a node with presence: longer than the batching window.
const PRESENCE_PAUSE: Duration = Duration::from_millis(300);
/// Generated sessions and their length.
const GENERATED_SESSIONS: u64 = 40;
const GENERATED_STEPS: usize = 40;

/// What a corpus file configures.
#[derive(Debug, Default)]
struct Config {
    token_secret: bool,
    channels: Vec<(String, Channel)>,
    max_topics_per_socket: Option<usize>,
    max_topic_bytes: Option<usize>,
    max_frame_bytes: Option<usize>,
}

/// One `[channels.<namespace>]` table: every key optional, as on the node.
#[derive(Debug, Default, Clone, Copy)]
struct Channel {
    join: Option<Rule>,
    push: Option<Rule>,
    presence: Option<bool>,
    /// Publications kept.
    history: Option<u32>,
    /// In seconds.
    history_ttl: Option<u64>,
}

impl Config {
    /// Whether any namespace tracks presence: steps then wait out the batching window.
    fn presence(&self) -> bool {
        self.channels
            .iter()
            .any(|(_, channel)| channel.presence == Some(true))
    }
}

#[derive(Debug, Clone)]
enum Token {
    Sub { sub: String, expired: bool },
    Raw(String),
}

#[derive(Debug, Clone)]
enum Step {
    Connect {
        client: String,
        token: Option<Token>,
        vsn: Option<String>,
        /// The `user` connect parameter (an open node's presence key).
        user: Option<String>,
    },
    Send {
        client: String,
        texts: Vec<String>,
    },
    Binary {
        client: String,
    },
    Close {
        client: String,
    },
    Publish {
        topic: String,
        event: Option<String>,
        payload: Value,
    },
}

impl Step {
    fn heartbeat(client: &str) -> Self {
        Self::Send {
            client: client.to_owned(),
            texts: vec![r#"[null,"end","phoenix","heartbeat",{}]"#.to_owned()],
        }
    }
}

#[derive(Debug)]
struct Session {
    name: String,
    steps: Vec<Step>,
}

/// How many sessions, frames sent and outcomes compared.
#[derive(Debug, Default)]
struct Tally {
    sessions: usize,
    frames: usize,
    compared: usize,
}

// ---- the corpus -----------------------------------------------------------------------------

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("differential")
}

fn string(value: &Value, what: &str) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} must be a string: {value}"))
        .to_owned()
}

fn parse_config(value: &Value) -> Config {
    let count = |key: &str| {
        value.get(key).map(|n| {
            let n = n
                .as_u64()
                .unwrap_or_else(|| panic!("{key} must be a number"));
            usize::try_from(n).unwrap_or(usize::MAX)
        })
    };
    let rule = |table: &Value, key: &str| -> Option<Rule> {
        table
            .get(key)
            .map(|name| string(name, key).parse().unwrap_or_else(|e| panic!("{e}")))
    };
    let channels = value
        .get("channels")
        .and_then(Value::as_object)
        .map(|channels| {
            channels
                .iter()
                .map(|(namespace, table)| {
                    let number = |key: &str| table.get(key).and_then(Value::as_u64);
                    let channel = Channel {
                        join: rule(table, "join"),
                        push: rule(table, "push"),
                        presence: table.get("presence").and_then(Value::as_bool),
                        history: number("history").map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
                        history_ttl: number("history_ttl"),
                    };
                    (namespace.clone(), channel)
                })
                .collect()
        })
        .unwrap_or_default();
    Config {
        token_secret: value
            .get("token_secret")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        channels,
        max_topics_per_socket: count("max_topics_per_socket"),
        max_topic_bytes: count("max_topic_bytes"),
        max_frame_bytes: count("max_frame_bytes"),
    }
}

/// A push of exactly `bytes` bytes to `topic`.
fn padded(topic: &str, bytes: usize) -> String {
    let base = json!([null, "pad", topic, "pad", {"pad": ""}]).to_string();
    let fill = bytes.saturating_sub(base.len());
    json!([null, "pad", topic, "pad", {"pad": "x".repeat(fill)}]).to_string()
}

fn parse_step(step: &Value) -> Step {
    if let Some(client) = step.get("connect") {
        let token = match step.get("token") {
            None | Some(Value::Null) => None,
            Some(Value::String(raw)) => Some(Token::Raw(raw.clone())),
            Some(spec) => Some(Token::Sub {
                sub: string(&spec["sub"], "token.sub"),
                expired: spec.get("expired").and_then(Value::as_bool) == Some(true),
            }),
        };
        let vsn = match step.get("vsn") {
            None => Some("2.0.0".to_owned()),
            Some(Value::Null) => None,
            Some(vsn) => Some(string(vsn, "vsn")),
        };
        return Step::Connect {
            client: string(client, "connect"),
            token,
            vsn,
            user: step.get("user").map(|user| string(user, "user")),
        };
    }
    if let Some(client) = step.get("send") {
        let client = string(client, "send");
        if step.get("binary").is_some() {
            return Step::Binary { client };
        }
        let texts = if let Some(frame) = step.get("frame") {
            vec![frame.to_string()]
        } else if let Some(frames) = step.get("frames").and_then(Value::as_array) {
            frames.iter().map(Value::to_string).collect()
        } else if let Some(text) = step.get("text") {
            vec![string(text, "text")]
        } else if let Some(bytes) = step.get("padded").and_then(Value::as_u64) {
            let topic = step
                .get("topic")
                .map_or("pad".to_owned(), |t| string(t, "topic"));
            vec![padded(&topic, usize::try_from(bytes).unwrap_or(usize::MAX))]
        } else {
            panic!("a send step needs frame, frames, text, padded or binary: {step}")
        };
        return Step::Send { client, texts };
    }
    if let Some(client) = step.get("close") {
        return Step::Close {
            client: string(client, "close"),
        };
    }
    if let Some(publish) = step.get("publish") {
        return Step::Publish {
            topic: string(&publish["topic"], "publish.topic"),
            event: publish.get("event").map(|e| string(e, "publish.event")),
            payload: publish.get("payload").cloned().unwrap_or(Value::Null),
        };
    }
    panic!("unknown step {step}")
}

/// Every corpus file, sorted by name: its name, configuration and sessions.
fn corpus() -> Vec<(String, Config, Vec<Session>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/differential exists")
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no corpus files in {}",
        corpus_dir().display()
    );
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("readable corpus file");
            let file: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let sessions = file["sessions"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: no sessions", path.display()))
                .iter()
                .map(|session| Session {
                    name: string(&session["name"], "name"),
                    steps: session["steps"]
                        .as_array()
                        .expect("steps")
                        .iter()
                        .map(parse_step)
                        .collect(),
                })
                .collect();
            let name = path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            (name, parse_config(&file["config"]), sessions)
        })
        .collect()
}

// ---- generated sessions ---------------------------------------------------------------------

/// What the generator remembers about one client.
#[derive(Debug, Default)]
struct Generated {
    open: bool,
    next_ref: u64,
    /// Every join_ref used per topic, the current one last.
    joins: BTreeMap<String, Vec<String>>,
}

impl Generated {
    fn next(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }
}

/// A random session on a node with 3 topics per socket and topics of at most 24 bytes: joins,
/// duplicate joins, leaves, pushes with current, stale, missing and wrong join_refs, with and
/// without refs, heartbeats, publishes, bad frames and reconnects, by three clients.
fn generate(seed: u64) -> Session {
    let mut rng = Rng::new(seed);
    let names = ["a", "b", "c"];
    let topics: Vec<String> = (0..5)
        .map(|i| format!("g{seed}:t{i}"))
        .chain(std::iter::once(format!("g{seed}:{}", "long".repeat(6))))
        .collect();
    let mut clients: Vec<Generated> = names.iter().map(|_| Generated::default()).collect();
    let mut steps = Vec::new();
    for (name, state) in names.iter().zip(&mut clients) {
        steps.push(Step::Connect {
            client: (*name).to_owned(),
            token: None,
            vsn: Some("2.0.0".to_owned()),
            user: None,
        });
        state.open = true;
    }
    for i in 0..GENERATED_STEPS {
        let who = rng.below(names.len());
        let client = names[who].to_owned();
        let state = &mut clients[who];
        if !state.open {
            *state = Generated {
                open: true,
                ..Generated::default()
            };
            steps.push(Step::Connect {
                client,
                token: None,
                vsn: Some("2.0.0".to_owned()),
                user: None,
            });
            continue;
        }
        // Mostly the short topics; now and then the one over the limit.
        let topic = topics[if rng.chance(1, 12) { 5 } else { rng.below(5) }].clone();
        let current = state
            .joins
            .get(&topic)
            .and_then(|refs| refs.last())
            .cloned();
        let stale = state
            .joins
            .get(&topic)
            .filter(|refs| refs.len() > 1)
            .map(|refs| refs[rng.below(refs.len() - 1)].clone());
        let join_ref = match rng.below(10) {
            0..=5 => current.clone(),
            6 => stale.clone().or_else(|| current.clone()),
            7 => Some("x".to_owned()),
            _ => None,
        };
        let roll = rng.below(100);
        let frame = match roll {
            0..=24 => {
                let r = state.next();
                state
                    .joins
                    .entry(topic.clone())
                    .or_default()
                    .push(r.clone());
                json!([r, r, topic, "phx_join", {"i": i}])
            }
            25..=34 => json!([join_ref, state.next(), topic, "phx_leave", {}]),
            35..=59 => {
                json!([join_ref, state.next(), topic, format!("ev{}", rng.below(3)), {"i": i}])
            }
            60..=69 => json!([join_ref, null, topic, "ev", {"i": i, "no_ref": true}]),
            70..=76 => json!([null, state.next(), "phoenix", "heartbeat", {}]),
            77..=84 => {
                steps.push(Step::Publish {
                    topic,
                    event: Some("srv".to_owned()),
                    payload: json!({"i": i}),
                });
                continue;
            }
            85..=89 => {
                // Frames about one topic sent together: a join and a push behind it.
                let r = state.next();
                state
                    .joins
                    .entry(topic.clone())
                    .or_default()
                    .push(r.clone());
                let push = json!([r, state.next(), topic, "ev", {"i": i, "behind": "join"}]);
                let join = json!([r, r, topic, "phx_join", {}]);
                steps.push(Step::Send {
                    client,
                    texts: vec![join.to_string(), push.to_string()],
                });
                continue;
            }
            90..=95 => {
                let r = state.next();
                match rng.below(5) {
                    0 => json!([r, r, topic, "phx_reply", {}]),
                    1 => json!([r, r, topic, "phx_join", [i]]),
                    2 => json!([r, r, topic, "", {}]),
                    3 => json!([r, "r".repeat(70), topic, "ev", {}]),
                    _ => json!([r, r, format!("{topic}\u{7}"), "phx_join", {}]),
                }
            }
            96..=97 => {
                // Not a frame: the node closes the socket with 1007.
                state.open = false;
                steps.push(Step::Send {
                    client,
                    texts: vec!["[\"unterminated".to_owned()],
                });
                continue;
            }
            _ => {
                state.open = false;
                steps.push(Step::Close { client });
                continue;
            }
        };
        steps.push(Step::Send {
            client,
            texts: vec![frame.to_string()],
        });
    }
    Session {
        name: format!("generated, seed {seed}"),
        steps,
    }
}

// ---- running a session on both servers ------------------------------------------------------

/// The node started for a corpus file's configuration, and the `LocalServer` of the same.
struct Servers {
    node: Node,
    config: Config,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Servers {
    fn start(name: &str, config: Config) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-differential-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut args: Vec<String> = vec!["--api-key".into(), API_KEY.into()];
        if config.token_secret {
            args.extend(["--token-secret".into(), SECRET.into()]);
        }
        if !config.channels.is_empty() {
            let mut toml = String::new();
            for (namespace, channel) in &config.channels {
                let _ = writeln!(toml, "[channels.{namespace:?}]");
                for (key, rule) in [("join", channel.join), ("push", channel.push)] {
                    if let Some(rule) = rule {
                        let _ = writeln!(toml, "{key} = {:?}", rule.name());
                    }
                }
                if let Some(presence) = channel.presence {
                    let _ = writeln!(toml, "presence = {presence}");
                }
                if let Some(history) = channel.history {
                    let _ = writeln!(toml, "history = {history}");
                }
                if let Some(ttl) = channel.history_ttl {
                    let _ = writeln!(toml, "history_ttl = \"{ttl}s\"");
                }
                toml.push('\n');
            }
            let path = dir.join("switchboard.toml");
            std::fs::write(&path, toml).expect("writable config file");
            args.extend(["--config".into(), path.display().to_string()]);
        }
        for (flag, value) in [
            ("--max-topics-per-socket", config.max_topics_per_socket),
            ("--max-topic-bytes", config.max_topic_bytes),
            ("--max-frame-bytes", config.max_frame_bytes),
        ] {
            if let Some(value) = value {
                args.extend([flag.into(), value.to_string()]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self {
            node: Node::start(&args),
            config,
            _dir: TempDir(dir),
        }
    }

    fn local(&self) -> LocalServer {
        let defaults = Limits::default();
        let limits = Limits {
            max_topics: self
                .config
                .max_topics_per_socket
                .unwrap_or(defaults.max_topics),
            max_topic_bytes: self
                .config
                .max_topic_bytes
                .unwrap_or(defaults.max_topic_bytes),
            max_frame_bytes: self
                .config
                .max_frame_bytes
                .unwrap_or(defaults.max_frame_bytes),
            ..defaults
        };
        // The node's reading of the tables: "*" for every namespace not listed, and for the
        // rules a table does not give.
        let any = self
            .config
            .channels
            .iter()
            .find(|(namespace, _)| namespace == "*")
            .map(|(_, channel)| *channel)
            .unwrap_or_default();
        let access = |channel: &Channel| Access {
            join: channel
                .join
                .or(any.join)
                .unwrap_or(Access::SECURE_DEFAULT.join),
            push: channel
                .push
                .or(any.push)
                .unwrap_or(Access::SECURE_DEFAULT.push),
        };
        let mut rules = ChannelRules::new(access(&any));
        let mut presence = PresenceRules::none();
        let mut history = HistoryRules::none();
        for (namespace, channel) in &self.config.channels {
            if namespace != "*" {
                rules.set(namespace.clone(), access(channel));
            }
            if let Some(on) = channel.presence {
                presence.set(namespace, on);
            }
            if let Some(size) = channel.history {
                let ttl = Duration::from_secs(channel.history_ttl.unwrap_or(600));
                history.set(namespace, Retention { size, ttl });
            }
        }
        let secret = self
            .config
            .token_secret
            .then(|| TokenSecret::new(SECRET).expect("a long enough secret"));
        LocalServer::new(limits, rules, secret)
            .with_presence(presence)
            .with_history(&history)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// One session on both servers.
struct Run<'a> {
    node: &'a Node,
    local: LocalServer,
    start: Instant,
    /// Clients open on both servers: the node's socket and the `LocalServer`'s id.
    clients: BTreeMap<String, (Client, SessionId)>,
    /// The names of each server's epochs and `phx_ref`s.
    node_names: Names,
    local_names: Names,
}

/// Names one server's history epochs (`E1`, `E2`, ...) and presence `phx_ref`s (`R1`, ...) in
/// the order they first appear, so two servers that draw different ones compare alike as long
/// as they use them alike. In a frame a script sends, `@E1` stands for the server's epoch
/// named `E1` (to join with `{"since": "2:@E1"}`).
#[derive(Debug, Default)]
struct Names {
    epochs: Vec<String>,
    refs: Vec<String>,
}

impl Names {
    fn name(seen: &mut Vec<String>, prefix: &str, real: &str) -> String {
        let index = seen.iter().position(|s| s == real).unwrap_or_else(|| {
            seen.push(real.to_owned());
            seen.len() - 1
        });
        format!("{prefix}{}", index + 1)
    }

    /// `"<offset>:<epoch>"` with the epoch named, if `text` is a position.
    fn position(&mut self, text: &str) -> Option<String> {
        let (offset, epoch) = text.split_once(':')?;
        let digits = !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_digit());
        let alphanumeric = !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
        (digits && alphanumeric)
            .then(|| format!("{offset}:{}", Self::name(&mut self.epochs, "E", epoch)))
    }

    /// Names the positions (a frame's ref slot, `"position"` fields) and `phx_ref`s in `value`.
    fn apply(&mut self, value: &mut Value) {
        match value {
            Value::Array(items) => {
                if let [_, Value::String(slot), _, _, _] = items.as_mut_slice() {
                    if let Some(named) = self.position(slot) {
                        *slot = named;
                    }
                }
                for item in items {
                    self.apply(item);
                }
            }
            Value::Object(fields) => {
                for (key, item) in fields.iter_mut() {
                    match (key.as_str(), &mut *item) {
                        ("position", Value::String(text)) => {
                            if let Some(named) = self.position(text) {
                                *text = named;
                            }
                        }
                        ("phx_ref" | "phx_ref_prev", Value::String(text)) => {
                            *text = Self::name(&mut self.refs, "R", text);
                        }
                        _ => self.apply(item),
                    }
                }
            }
            _ => {}
        }
    }

    /// `text` with each `@E<n>` replaced by the epoch named `E<n>`.
    fn substitute(&self, text: &str) -> String {
        self.epochs
            .iter()
            .enumerate()
            .rev()
            .fold(text.to_owned(), |text, (index, epoch)| {
                text.replace(&format!("@E{}", index + 1), epoch)
            })
    }
}

/// What a step produced: server-level outcomes and each client's messages, in order.
type Outcome = BTreeMap<String, Vec<Value>>;

impl Run<'_> {
    fn now(&self) -> Time {
        Time::from_since_epoch(self.start.elapsed())
    }

    fn client_of(&self, id: SessionId) -> String {
        self.clients
            .iter()
            .find(|(_, (_, local))| *local == id)
            .map_or_else(|| format!("<{id}>"), |(name, _)| name.clone())
    }

    /// Sorts the `LocalServer`'s items into per-client messages.
    fn local_outcome(&self, outgoing: Vec<Outgoing>, outcome: &mut Outcome) {
        for item in outgoing {
            let name = self.client_of(item.to());
            let seen = match item {
                Outgoing::Frame { text, .. } => {
                    serde_json::from_str(&text).unwrap_or_else(|_| json!({ "not_json": text }))
                }
                Outgoing::Close { code, reason, .. } => json!({"close": [code, reason]}),
                other => json!({ "unknown": format!("{other:?}") }),
            };
            outcome.entry(name).or_default().push(seen);
        }
    }

    fn token(spec: &Token) -> String {
        match spec {
            Token::Raw(raw) => raw.clone(),
            Token::Sub { sub, expired } => {
                let secret = TokenSecret::new(SECRET).expect("a long enough secret");
                let exp = if *expired {
                    // Past exp by more than the clock-skew leeway.
                    unix_now().saturating_sub(2 * switchboard_core::token::LEEWAY_SECONDS)
                } else {
                    unix_now() + 3600
                };
                secret.sign(sub, exp)
            }
        }
    }

    /// Plays `step`; returns what the `LocalServer` and the node produced.
    async fn play(&mut self, step: &Step, tally: &mut Tally) -> (Outcome, Outcome) {
        let mut local = Outcome::new();
        let mut node = Outcome::new();
        match step {
            Step::Connect {
                client,
                token,
                vsn,
                user,
            } => {
                assert!(
                    !self.clients.contains_key(client),
                    "step {step:?}: client {client} is open already (close it first)"
                );
                let token = token.as_ref().map(Self::token);
                let at = format!("connect {client}");
                let handshake = Handshake {
                    vsn: vsn.as_deref(),
                    token: token.as_deref(),
                    user: user.as_deref(),
                };
                let opened = self.local.open(handshake, self.now(), unix_now());
                local.insert(
                    at.clone(),
                    vec![match &opened {
                        Ok(_) => json!("open"),
                        Err(refused) => json!({"refused": refused.status()}),
                    }],
                );
                let mut query = String::new();
                if let Some(vsn) = vsn {
                    let _ = write!(query, "vsn={vsn}");
                }
                if let Some(token) = &token {
                    let _ = write!(query, "&token={}", percent_encode(token));
                }
                if let Some(user) = user {
                    let _ = write!(query, "&user={}", percent_encode(user));
                }
                let url = format!("ws://{}/socket/websocket?{query}", self.node.addr());
                let seen = match (Client::try_connect(&url).await, opened) {
                    (Ok(ws), Ok(id)) => {
                        self.clients.insert(client.clone(), (ws, id));
                        json!("open")
                    }
                    (Ok(mut ws), Err(_)) => {
                        ws.close().await;
                        json!("open")
                    }
                    (Err(e), opened) => {
                        if let Ok(id) = opened {
                            let outgoing = self.local.handle_client_close(id, self.now());
                            self.local_outcome(outgoing, &mut local);
                        }
                        refusal(&e)
                    }
                };
                node.insert(at, vec![seen]);
            }
            Step::Send { client, texts } => {
                let Some((ws, id)) = self.clients.get_mut(client) else {
                    panic!("step {step:?}: client {client} is not open");
                };
                let id = *id;
                for text in texts {
                    tally.frames += 1;
                    let _ = ws.try_send_text(self.node_names.substitute(text)).await;
                }
                let mut outgoing = Vec::new();
                for text in texts {
                    let now = self.now();
                    let text = self.local_names.substitute(text);
                    outgoing.extend(self.local.handle_text(id, &text, now));
                }
                self.local_outcome(outgoing, &mut local);
            }
            Step::Binary { client } => {
                let Some((ws, id)) = self.clients.get_mut(client) else {
                    panic!("step {step:?}: client {client} is not open");
                };
                let id = *id;
                tally.frames += 1;
                ws.send_binary(vec![1, 2, 3]).await;
                let now = self.now();
                let outgoing = self.local.handle_binary(id, now);
                self.local_outcome(outgoing, &mut local);
            }
            Step::Close { client } => {
                let Some((mut ws, id)) = self.clients.remove(client) else {
                    panic!("step {step:?}: client {client} is not open");
                };
                ws.close().await;
                let outgoing = self.local.handle_client_close(id, self.now());
                self.local_outcome(outgoing, &mut local);
            }
            Step::Publish {
                topic,
                event,
                payload,
            } => {
                let at = format!("publish {topic}");
                let text = payload.to_string();
                let payload_raw = Payload::from_json(&text).expect("a JSON payload");
                let now = self.now();
                match self
                    .local
                    .broadcast(topic, event.as_deref(), &payload_raw, now)
                {
                    Ok(published) => {
                        let mut answer = json!({"recipients": published.recipients()});
                        if let Some(position) = published.position {
                            answer["position"] = json!(position.to_string());
                        }
                        local.insert(at.clone(), vec![answer]);
                        self.local_outcome(published.outgoing, &mut local);
                    }
                    Err(e) => {
                        local.insert(at.clone(), vec![json!({"error": e.code()})]);
                    }
                }
                let mut body = json!({"topic": topic, "payload": payload});
                if let Some(event) = event {
                    body["event"] = json!(event);
                }
                let response = http::request(
                    self.node.addr(),
                    "POST",
                    "/api/publish",
                    &[
                        ("Content-Type", "application/json"),
                        ("Authorization", &format!("Bearer {API_KEY}")),
                    ],
                    body.to_string().as_bytes(),
                )
                .await
                .unwrap_or_else(|e| panic!("POST /api/publish failed: {e}"));
                let answer = response.json();
                let seen = if response.status == 200 {
                    let mut seen = json!({"recipients": answer["recipients"]});
                    if let Some(position) = answer.get("position") {
                        seen["position"] = position.clone();
                    }
                    seen
                } else {
                    json!({"error": answer["error"]["code"]})
                };
                node.insert(at, vec![seen]);
            }
        }
        // Read from the node as many messages per client as the LocalServer produced.
        for (name, expected) in &local {
            let Some((ws, _)) = self.clients.get_mut(name) else {
                continue;
            };
            let mut seen = Vec::new();
            for _ in 0..expected.len() {
                match ws.next_incoming(WAIT).await {
                    Some(Incoming::Frame(frame)) => seen.push(frame),
                    Some(Incoming::Close(Some((code, reason)))) => {
                        seen.push(json!({"close": [code, reason]}));
                    }
                    Some(Incoming::Close(None)) => seen.push(json!({"close": null})),
                    Some(Incoming::Binary(bytes)) => seen.push(json!({"binary": bytes.len()})),
                    Some(Incoming::Ended(how)) => {
                        seen.push(json!({"ended": how}));
                        break;
                    }
                    None => {
                        seen.push(json!({"missing": format!("nothing within {WAIT:?}")}));
                        break;
                    }
                }
            }
            node.insert(name.clone(), seen);
        }
        // Sockets the LocalServer closed are gone on both sides.
        let closed: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, (_, id))| self.local.connection(*id).is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in closed {
            self.clients.remove(&name);
        }
        if matches!(step, Step::Close { .. })
            || local.values().flatten().any(|v| v.get("close").is_some())
        {
            self.node
                .wait_metric_eq(
                    "switchboard_connections",
                    count(self.local.connections().len()),
                )
                .await;
        }
        tally.compared += local.values().map(Vec::len).sum::<usize>();
        for seen in local.values_mut().flatten() {
            self.local_names.apply(seen);
        }
        for seen in node.values_mut().flatten() {
            self.node_names.apply(seen);
        }
        (local, node)
    }
}

#[allow(clippy::cast_precision_loss)]
fn count(n: usize) -> f64 {
    n as f64
}

/// How the node refused a handshake: its HTTP status.
fn refusal(error: &tungstenite::Error) -> Value {
    match error {
        tungstenite::Error::Http(response) => json!({"refused": response.status().as_u16()}),
        other => json!({"error": other.to_string()}),
    }
}

/// Percent-encodes what a token may hold outside the unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes().fold(String::new(), |mut out, byte| {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
        out
    })
}

/// Plays `session` on `node` and a fresh `LocalServer`; panics at the first step whose
/// outcomes differ, with both.
async fn run_session(servers: &Servers, file: &str, session: &Session, tally: &mut Tally) {
    let mut run = Run {
        node: &servers.node,
        local: servers.local(),
        start: Instant::now(),
        clients: BTreeMap::new(),
        node_names: Names::default(),
        local_names: Names::default(),
    };
    let mut steps = session.steps.clone();
    let mut index = 0;
    let mut ended = false;
    loop {
        if index == steps.len() {
            if ended {
                break;
            }
            // Every open client ends with a heartbeat, then closes.
            ended = true;
            let open: Vec<String> = run.clients.keys().cloned().collect();
            steps.extend(open.iter().map(|client| Step::heartbeat(client)));
            steps.extend(open.into_iter().map(|client| Step::Close { client }));
            continue;
        }
        let step = &steps[index];
        if servers.config.presence() {
            // Every presence change is then alone in its batching window on both servers, so
            // each goes out at once (the node's within its flush tick).
            tokio::time::sleep(PRESENCE_PAUSE).await;
        }
        let (local, node) = run.play(step, tally).await;
        assert_eq!(
            node,
            local,
            "{file}, session {:?}, step {index} ({step:?}): the node (left) and the LocalServer \
             (right) differ\n{}",
            session.name,
            servers.node.log_tail(20)
        );
        index += 1;
    }
    tally.sessions += 1;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_and_the_local_server_answer_every_session_alike() {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut committed = 0;
    for (file, config, sessions) in corpus() {
        let servers = Servers::start(file.trim_end_matches(".json"), config);
        for session in &sessions {
            run_session(&servers, &file, session, &mut tally).await;
            committed += 1;
        }
    }
    let committed_frames = tally.frames;
    let servers = Servers::start(
        "generated",
        Config {
            max_topics_per_socket: Some(3),
            max_topic_bytes: Some(24),
            ..Config::default()
        },
    );
    for seed in 1..=GENERATED_SESSIONS {
        run_session(&servers, "generated", &generate(seed), &mut tally).await;
    }
    // The corpus size, for the record (`cargo test -- --nocapture` shows it).
    #[allow(clippy::print_stdout)]
    {
        println!(
            "differential corpus: {} sessions ({committed} committed, {GENERATED_SESSIONS} \
             generated), {} client frames ({committed_frames} committed), {} outcomes compared, \
             in {:.1?}",
            tally.sessions,
            tally.frames,
            tally.compared,
            started.elapsed()
        );
    }
}
