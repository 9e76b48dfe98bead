//! `FakeServerEngine`: the core's [`LocalServer`] for the JavaScript `FakeServer`.
//!
//! Every protocol decision is the core's: this file converts JavaScript numbers and strings to
//! the core's types and the [`Outgoing`] items back to arrays. The `WebSocket` emulation
//! (events, ready states, asynchronous delivery, the clock and the idle timer) and the checks
//! of `FakeServer`'s options are the package's JavaScript (`js/fake-server.js`), the only user
//! of this class: it is not part of the package's API and has no TypeScript declaration.
//! (Checking options in JavaScript keeps their messages out of the size-budgeted module.)
//!
//! Outputs reach JavaScript as an array of items in order, each `[socket, frameText]` or
//! `[socket, closeCode, closeReason]`. Methods that say more (`tick`, `broadcast`) put it
//! before the items.

use std::time::Duration;

use switchboard_core::connection::Limits;
use switchboard_core::history::Retention;
use switchboard_core::local::{Handshake, LocalServer, Outgoing};
use switchboard_core::presence::{Meta, PresenceRules};
use switchboard_core::token::TokenSecret;
use switchboard_core::{Access, ChannelRules, Payload, Rule, SessionId, Time, Topic};
use wasm_bindgen::prelude::*;

use crate::errors;
use crate::js::Array;

/// A Switchboard server in memory, driven by the JavaScript `FakeServer`. Times are
/// milliseconds on the JavaScript side's clock; sockets are numbers.
#[wasm_bindgen(js_name = FakeServerEngine, skip_typescript)]
#[derive(Debug)]
pub struct Engine {
    server: LocalServer,
}

fn time(ms: f64) -> Time {
    // `as` saturates: a negative or NaN time is the epoch.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let micros = (ms * 1000.0) as u64;
    Time::from_since_epoch(Duration::from_micros(micros))
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn session(id: f64) -> SessionId {
    SessionId::from_raw(id as u64)
}

#[allow(clippy::cast_precision_loss)]
fn number(id: SessionId) -> JsValue {
    JsValue::from_f64(id.get() as f64)
}

/// The `[channels]` tables from lines `JPXsize/ttl/namespace`: `J` and `P` are the join and
/// push rules' digits (0 anyone, 1 authenticated, 2 owner, 3 nobody), `X` turns presence off
/// (0), on (1) or leaves it to `*` (2), `size` is the number of publications kept (0: no
/// history) and `ttl` how long, in milliseconds; namespace `*` is every namespace not listed.
fn channels<'a>(
    lines: &'a str,
    presence: &mut PresenceRules,
) -> (ChannelRules, Vec<(&'a str, Retention)>) {
    let rule = |digit: u8| match digit {
        b'0' => Rule::Anyone,
        b'1' => Rule::Authenticated,
        b'2' => Rule::Owner,
        _ => Rule::Nobody,
    };
    let mut fallback = Access::SECURE_DEFAULT;
    let mut listed = Vec::new();
    let mut history = Vec::new();
    // `split_once` rather than `split`: the module links it already, `split` would add its
    // own searcher.
    let mut rest = lines;
    while !rest.is_empty() {
        let (line, next) = rest.split_once('\n').unwrap_or((rest, ""));
        rest = next;
        let mut digits = line.bytes();
        let (Some(join), Some(push), Some(tracked), Some(fields)) =
            (digits.next(), digits.next(), digits.next(), line.get(3..))
        else {
            continue;
        };
        let Some((size, fields)) = fields.split_once('/') else {
            continue;
        };
        let Some((ttl, namespace)) = fields.split_once('/') else {
            continue;
        };
        let number = |text: &str| text.parse::<u64>().unwrap_or_default();
        let size = u32::try_from(number(size)).unwrap_or(u32::MAX);
        if size > 0 {
            let ttl = Duration::from_millis(number(ttl));
            history.push((namespace, Retention { size, ttl }));
        }
        if tracked != b'2' {
            presence.set(namespace, tracked == b'1');
        }
        let access = Access {
            join: rule(join),
            push: rule(push),
        };
        if namespace == "*" {
            fallback = access;
        } else {
            listed.push((namespace, access));
        }
    }
    let mut rules = ChannelRules::new(fallback);
    for (namespace, access) in listed {
        rules.set(namespace, access);
    }
    (rules, history)
}

/// The outputs as `[socket, text]` / `[socket, code, reason]` items.
fn items(outgoing: Vec<Outgoing>) -> Array {
    let array = Array::new();
    for item in outgoing {
        let entry = match item {
            Outgoing::Frame { to, text } => Array::of2(&number(to), &text.into()),
            Outgoing::Close { to, code, reason } => {
                Array::of3(&number(to), &code.into(), &reason.into())
            }
            // An output the core learns later: nothing this shell knows how to perform.
            _ => continue,
        };
        array.push(&entry);
    }
    array
}

#[wasm_bindgen(js_class = FakeServerEngine)]
impl Engine {
    /// A server with options the JavaScript side has checked: `channels` is one line per
    /// namespace (see `channels`); `limits` is `[maxFrameBytes, maxTopicsPerSocket,
    /// maxTopicBytes, pushRate, pushBurst, joinRate, joinBurst, presenceMaxMembers,
    /// presenceMaxMetaBytes]`; `seed` names the server (its epochs and `phx_ref`s).
    ///
    /// @throws Error with code `invalid_argument` for a token secret under 32 bytes (or
    /// options the JavaScript side should have refused).
    #[wasm_bindgen(constructor)]
    pub fn new(
        channels_lines: &str,
        token_secret: Option<String>,
        limits: &[u32],
        idle_timeout_ms: f64,
        seed: f64,
    ) -> Result<Self, JsValue> {
        let secret = token_secret
            .map(|secret| TokenSecret::new(&secret))
            .transpose()
            .map_err(|message| errors::invalid_argument(&format!("tokenSecret: {message}")))?;
        let &[max_frame_bytes, max_topics, max_topic_bytes, push_rate, push_burst, join_rate, join_burst, max_members, max_meta_bytes] =
            limits
        else {
            return Err(errors::invalid_argument("limits must hold 9 numbers"));
        };
        let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        let limits = Limits {
            max_frame_bytes: count(max_frame_bytes),
            max_topic_bytes: count(max_topic_bytes),
            max_topics: count(max_topics),
            idle_timeout: time(idle_timeout_ms).since_epoch(),
            push_rate,
            push_burst,
            join_rate,
            join_burst,
        };
        let mut presence = PresenceRules::none();
        presence.max_members = count(max_members);
        presence.max_meta_bytes = count(max_meta_bytes);
        let (rules, history) = channels(channels_lines, &mut presence);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let seed = seed as u64;
        let server = history.into_iter().fold(
            LocalServer::new(limits, rules, secret)
                .with_presence(presence)
                .with_seed(seed),
            |server, (namespace, retention)| server.with_namespace_history(namespace, retention),
        );
        Ok(Self { server })
    }

    /// Opens a socket whose URL has these `vsn`, `token` and `user` query parameters; returns
    /// its number.
    ///
    /// @throws Error with the node's `code` (`missing_vsn`, `unsupported_vsn`,
    /// `unauthorized`), its message, and `status` (400 or 401).
    pub fn open(
        &mut self,
        vsn: Option<String>,
        token: Option<String>,
        user: Option<String>,
        now: f64,
        unix_seconds: f64,
    ) -> Result<f64, JsValue> {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let unix_seconds = unix_seconds as u64;
        let handshake = Handshake {
            vsn: vsn.as_deref(),
            token: token.as_deref(),
            user: user.as_deref(),
        };
        match self.server.open(handshake, time(now), unix_seconds) {
            Ok(id) => Ok(number(id).as_f64().unwrap_or_default()),
            Err(refusal) => {
                let error = errors::coded(&refusal.to_string(), refusal.code());
                errors::set(&error, "status", &refusal.status().into());
                Err(error)
            }
        }
    }

    /// A message from socket `id`: text, or binary when `text` is `undefined`.
    pub fn receive(&mut self, id: f64, text: Option<String>, now: f64) -> JsValue {
        let (id, now) = (session(id), time(now));
        let outgoing = match text {
            Some(text) => self.server.handle_text(id, &text, now),
            None => self.server.handle_binary(id, now),
        };
        items(outgoing).into()
    }

    /// Socket `id`'s client closed it (or its connection dropped): what that sends the
    /// others (presence diffs).
    #[wasm_bindgen(js_name = clientClose)]
    pub fn client_close(&mut self, id: f64, now: f64) -> JsValue {
        items(self.server.handle_client_close(session(id), time(now))).into()
    }

    /// The server closes socket `id`.
    pub fn disconnect(&mut self, id: f64, code: u16, reason: &str, now: f64) -> JsValue {
        items(self.server.disconnect(session(id), code, reason, time(now))).into()
    }

    /// Publishes `payload` (JSON text) as `event` (default `message`) to `topic`'s
    /// subscribers: its position (`undefined` without history), then the items.
    ///
    /// @throws Error with the node's code (`invalid_topic`, `invalid_event`) and message.
    pub fn broadcast(
        &mut self,
        topic: &str,
        event: Option<String>,
        payload: &str,
        now: f64,
    ) -> Result<JsValue, JsValue> {
        let payload =
            Payload::from_json(payload).map_err(|_| errors::not_serializable("payload"))?;
        let published = self
            .server
            .broadcast(topic, event.as_deref(), &payload, time(now))
            .map_err(|err| errors::coded(&err.to_string(), err.code()))?;
        let array = items(published.outgoing);
        let position = published
            .position
            .map_or(JsValue::UNDEFINED, |position| position.to_string().into());
        array.unshift(&position);
        Ok(array.into())
    }

    /// Time passed: idle sockets and sockets whose token expired close, held presence diffs
    /// go out. Returns when to tick next (milliseconds; `undefined` when nothing is pending)
    /// and whether a presence diff is due then, followed by the items.
    pub fn tick(&mut self, now: f64) -> JsValue {
        let outgoing = self.server.tick(time(now));
        let next = self.server.next_timeout();
        let diff = next.is_some() && next == self.server.next_presence_diff();
        let array = items(outgoing);
        array.unshift(&diff.into());
        array.unshift(&next.map_or(JsValue::UNDEFINED, |at| {
            JsValue::from_f64(at.since_epoch().as_secs_f64() * 1000.0)
        }));
        array.into()
    }

    /// `topic`'s members as `presence_state` JSON text; `undefined` for a topic without
    /// presence.
    pub fn presence(&mut self, topic: &str) -> Option<String> {
        self.server
            .presence(topic)
            .map(|state| state.get().to_owned())
    }

    /// Socket `id`'s user (its token's `sub`, `""` for none) followed by the topics it has
    /// joined, sorted; empty for a socket that is not open.
    pub fn socket(&self, id: f64) -> Vec<String> {
        let Some(connection) = self.server.connection(session(id)) else {
            return Vec::new();
        };
        let mut topics: Vec<Topic> = connection.joined().cloned().collect();
        topics.sort_unstable();
        let user = connection.user().unwrap_or_default().to_owned();
        std::iter::once(user)
            .chain(topics.iter().map(Topic::to_string))
            .collect()
    }

    /// Signs a token for `sub` expiring at `exp` (seconds since the Unix epoch), with `info`
    /// (JSON text) as its `info` claim.
    ///
    /// @throws Error with code `no_token_secret` when the server has no token secret,
    /// `invalid_argument` for an `info` that is not an object without `phx_` fields.
    pub fn token(&self, sub: &str, exp: f64, info: Option<String>) -> Result<String, JsValue> {
        let secret = self.server.secret().ok_or_else(|| {
            errors::coded(
                "this FakeServer has no tokenSecret: sockets need no token",
                errors::NO_TOKEN_SECRET,
            )
        })?;
        let info = info
            .map(|info| Meta::parse(&info, "the info claim"))
            .transpose()
            .map_err(|err| errors::invalid_argument(&err.to_string()))?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(secret.sign_with_info(sub, exp as u64, info.as_ref()))
    }
}
