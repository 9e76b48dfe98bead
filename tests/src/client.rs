//! An async Phoenix Channels V2 JSON client over tokio-tungstenite, built for tests.
//!
//! It keeps refs the way phoenix.js does: every push gets the next ref, a join's `join_ref`
//! is the ref of the join push, and later pushes on that topic carry it. Received frames are
//! JSON values; frames read while waiting for a particular one are kept, in order, for the
//! next [`Client::recv_json`], so waiting for a reply never loses a broadcast.
//!
//! Raw access ([`Client::send_text`], [`Client::send_binary`], [`Client::stream`]) lets tests
//! send what no well-behaved client would.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::frame::PhxFrame;
use crate::PATIENCE;

/// The WebSocket stream under a [`Client`].
pub type WsStream = WebSocketStream<TcpStream>;

/// Something the server sent, or the end of the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A text message, parsed as JSON (text that is not JSON arrives as
    /// `{"not_json": text}`, so a test sees it rather than a parse panic).
    Frame(Value),
    /// A binary message.
    Binary(Vec<u8>),
    /// A close frame: its code and reason (`None` for a close frame without a code).
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame (EOF, reset, or another I/O error).
    Ended(String),
}

/// How a connection ended, for tests that accept more than one way (see
/// [`Client::wait_end`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The server sent a close frame with this code and reason.
    Close(u16, String),
    /// The server sent a close frame without a status code.
    CloseWithoutCode,
    /// The connection ended without a close frame.
    Ended(String),
}

impl fmt::Display for CloseOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Close(code, reason) => write!(f, "close {code} {reason:?}"),
            Self::CloseWithoutCode => f.write_str("close without a code"),
            Self::Ended(how) => write!(f, "connection ended without close frame: {how}"),
        }
    }
}

/// A test WebSocket client speaking Phoenix V2 JSON.
#[derive(Debug)]
pub struct Client {
    ws: WsStream,
    next_ref: u64,
    joins: HashMap<String, String>,
    pending: VecDeque<Value>,
    timeout: Duration,
    ended: Option<String>,
}

impl Client {
    /// Connects to a `ws://host:port/...` URL.
    ///
    /// # Panics
    /// When the connection or the handshake fails.
    pub async fn connect(url: &str) -> Self {
        Self::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url} failed: {e}"))
    }

    /// Connects to a `ws://host:port/...` URL, returning the handshake error (for example the
    /// server's HTTP response when it refuses the upgrade).
    ///
    /// # Errors
    /// When the URL is not `ws://`, the connection fails or the handshake is refused.
    pub async fn try_connect(url: &str) -> Result<Self, tungstenite::Error> {
        let stream = TcpStream::connect(socket_addr(url)?).await?;
        Self::handshake(url, stream).await
    }

    /// Connects with the socket's receive buffer set to `recv_buffer_bytes` before the
    /// handshake, so that a client that stops reading makes the server's writes block soon
    /// (the kernel's loopback buffers would otherwise absorb megabytes).
    ///
    /// # Panics
    /// When the connection or the handshake fails.
    pub async fn connect_with_recv_buffer(url: &str, recv_buffer_bytes: u32) -> Self {
        let connect = async {
            let addr = socket_addr(url)?;
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_recv_buffer_size(recv_buffer_bytes)?;
            let stream = socket.connect(addr).await?;
            Self::handshake(url, stream).await
        };
        connect.await.unwrap_or_else(|e: tungstenite::Error| {
            panic!("WebSocket connect to {url} failed: {e}")
        })
    }

    /// Connects sending extra handshake headers (e.g. `Origin`), returning the handshake
    /// error (for example the server's HTTP response when it refuses the upgrade).
    ///
    /// # Errors
    /// When the URL or a header is invalid, the connection fails or the handshake is refused.
    pub async fn try_connect_with_headers(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, tungstenite::Error> {
        use tungstenite::client::IntoClientRequest as _;
        use tungstenite::http::{HeaderName, HeaderValue};
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
            request.headers_mut().insert(name, value);
        }
        let stream = TcpStream::connect(socket_addr(url)?).await?;
        Self::handshake(request, stream).await
    }

    async fn handshake(
        request: impl tungstenite::client::IntoClientRequest + Unpin,
        stream: TcpStream,
    ) -> Result<Self, tungstenite::Error> {
        stream.set_nodelay(true)?;
        let (ws, _response) = tokio_tungstenite::client_async(request, stream).await?;
        Ok(Self {
            ws,
            next_ref: 0,
            joins: HashMap::new(),
            pending: VecDeque::new(),
            timeout: PATIENCE,
            ended: None,
        })
    }

    /// Sets how long receive helpers wait before panicking (default [`PATIENCE`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The underlying stream, for raw WebSocket operations.
    pub fn stream(&mut self) -> &mut WsStream {
        &mut self.ws
    }

    /// The next ref, as phoenix.js makes them: `"1"`, `"2"`, ...
    pub fn make_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// The join ref of `topic` if this client believes it is joined.
    #[must_use]
    pub fn join_ref(&self, topic: &str) -> Option<&str> {
        self.joins.get(topic).map(String::as_str)
    }

    // ---- sending -------------------------------------------------------------------------

    /// Sends a text message as is.
    ///
    /// # Panics
    /// When the send fails.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.ws
            .send(Message::text(text))
            .await
            .unwrap_or_else(|e| panic!("sending a text message failed: {e}"));
    }

    /// Sends a text message, returning the error instead of panicking (the server may have
    /// closed already).
    ///
    /// # Errors
    /// When the send fails.
    pub async fn try_send_text(
        &mut self,
        text: impl Into<String>,
    ) -> Result<(), tungstenite::Error> {
        let text: String = text.into();
        self.ws.send(Message::text(text)).await
    }

    /// Sends a binary message.
    ///
    /// # Panics
    /// When the send fails.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::binary(bytes))
            .await
            .unwrap_or_else(|e| panic!("sending a binary message failed: {e}"));
    }

    /// Sends `[join_ref, ref, topic, event, payload]`.
    ///
    /// # Panics
    /// When the send fails.
    pub async fn send_frame(
        &mut self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) {
        let frame = json!([join_ref, msg_ref, topic, event, payload]);
        self.send_text(frame.to_string()).await;
    }

    /// Sends a join for `topic` with `payload` and records its ref as the topic's join ref,
    /// without waiting: the ref.
    ///
    /// # Panics
    /// When the send fails.
    pub async fn send_join(&mut self, topic: &str, payload: Value) -> String {
        let msg_ref = self.make_ref();
        self.send_frame(Some(&msg_ref), Some(&msg_ref), topic, "phx_join", payload)
            .await;
        self.joins.insert(topic.to_owned(), msg_ref.clone());
        msg_ref
    }

    /// Joins `topic` with an empty payload and returns the reply frame (ok or error). Frames
    /// that arrive first stay queued for [`Client::recv_json`].
    ///
    /// # Panics
    /// When no reply arrives in time.
    pub async fn join(&mut self, topic: &str) -> Value {
        self.join_with(topic, json!({})).await
    }

    /// Joins `topic` with `payload`; see [`Client::join`].
    ///
    /// # Panics
    /// When no reply arrives in time.
    pub async fn join_with(&mut self, topic: &str, payload: Value) -> Value {
        let msg_ref = self.send_join(topic, payload).await;
        let reply = self.reply_to(&msg_ref).await;
        if reply.status() != "ok" && self.joins.get(topic) == Some(&msg_ref) {
            self.joins.remove(topic);
        }
        reply
    }

    /// Joins `topic` and asserts the reply is ok.
    ///
    /// # Panics
    /// When the reply is not ok.
    pub async fn join_ok(&mut self, topic: &str) {
        let reply = self.join(topic).await;
        assert_eq!(reply.status(), "ok", "join {topic:?} was refused: {reply}");
    }

    /// Leaves `topic` (with its join ref, `null` if not joined) and returns the reply. The
    /// `phx_close` that follows an ok reply stays queued.
    ///
    /// # Panics
    /// When no reply arrives in time.
    pub async fn leave(&mut self, topic: &str) -> Value {
        let join_ref = self.joins.remove(topic);
        let msg_ref = self.make_ref();
        self.send_frame(
            join_ref.as_deref(),
            Some(&msg_ref),
            topic,
            "phx_leave",
            json!({}),
        )
        .await;
        self.reply_to(&msg_ref).await
    }

    /// Pushes `event` with `payload` on `topic` (with its join ref) and a fresh ref, without
    /// waiting: the ref.
    ///
    /// # Panics
    /// When the send fails.
    pub async fn push(&mut self, topic: &str, event: &str, payload: Value) -> String {
        let msg_ref = self.make_ref();
        let join_ref = self.joins.get(topic).cloned();
        self.send_frame(join_ref.as_deref(), Some(&msg_ref), topic, event, payload)
            .await;
        msg_ref
    }

    /// Pushes with a `null` ref (no reply expected).
    ///
    /// # Panics
    /// When the send fails.
    pub async fn push_no_ref(&mut self, topic: &str, event: &str, payload: Value) {
        let join_ref = self.joins.get(topic).cloned();
        self.send_frame(join_ref.as_deref(), None, topic, event, payload)
            .await;
    }

    /// Sends a heartbeat and returns its reply.
    ///
    /// # Panics
    /// When no reply arrives in time.
    pub async fn heartbeat(&mut self) -> Value {
        let msg_ref = self.make_ref();
        self.send_frame(None, Some(&msg_ref), "phoenix", "heartbeat", json!({}))
            .await;
        self.reply_to(&msg_ref).await
    }

    /// Starts a normal close handshake (1000).
    ///
    /// # Panics
    /// When the close cannot be sent.
    pub async fn close(&mut self) {
        self.ws
            .close(None)
            .await
            .unwrap_or_else(|e| panic!("sending close failed: {e}"));
    }

    // ---- receiving -----------------------------------------------------------------------

    /// The next thing from the server within `timeout`, skipping pings and pongs (which the
    /// library answers itself): `None` on timeout. Queued frames come first.
    pub async fn next_incoming(&mut self, timeout: Duration) -> Option<Incoming> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(Incoming::Frame(frame));
        }
        self.read_incoming(timeout).await
    }

    async fn read_incoming(&mut self, timeout: Duration) -> Option<Incoming> {
        if let Some(how) = &self.ended {
            return Some(Incoming::Ended(how.clone()));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return None;
            };
            let incoming = match next {
                None => Incoming::Ended("end of stream".to_owned()),
                Some(Err(e)) => Incoming::Ended(e.to_string()),
                Some(Ok(Message::Text(text))) => Incoming::Frame(
                    serde_json::from_str(text.as_str())
                        .unwrap_or_else(|_| json!({ "not_json": text.as_str() })),
                ),
                Some(Ok(Message::Binary(bytes))) => Incoming::Binary(bytes.to_vec()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => Incoming::Close(
                    frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                ),
            };
            match &incoming {
                Incoming::Ended(how) => self.ended = Some(how.clone()),
                Incoming::Close(_) => self.ended = Some(format!("closed: {incoming:?}")),
                _ => {}
            }
            return Some(incoming);
        }
    }

    /// The next frame.
    ///
    /// # Panics
    /// On timeout, a close, the end of the connection or a binary message.
    pub async fn recv_json(&mut self) -> Value {
        let timeout = self.timeout;
        match self.next_incoming(timeout).await {
            Some(Incoming::Frame(frame)) => frame,
            Some(other) => panic!("expected a frame, got {other:?}"),
            None => panic!("no frame within {timeout:?}"),
        }
    }

    /// The next frame within `timeout`, or `None`.
    ///
    /// # Panics
    /// On a close, the end of the connection or a binary message.
    pub async fn recv_json_within(&mut self, timeout: Duration) -> Option<Value> {
        match self.next_incoming(timeout).await {
            Some(Incoming::Frame(frame)) => Some(frame),
            Some(other) => panic!("expected a frame, got {other:?}"),
            None => None,
        }
    }

    /// The first frame (queued or new) for which `accept` holds; frames read before it stay
    /// queued in order.
    ///
    /// # Panics
    /// When none arrives in time (the message lists what did), or the connection ends.
    pub async fn recv_until(&mut self, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&accept) {
            if let Some(frame) = self.pending.remove(i) {
                return frame;
            }
        }
        let timeout = self.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_incoming(left).await {
                Some(Incoming::Frame(frame)) if accept(&frame) => return frame,
                Some(Incoming::Frame(frame)) => self.pending.push_back(frame),
                Some(other) => panic!(
                    "waiting for {what}, got {other:?}; frames before it: {:?}",
                    self.pending
                ),
                None => panic!(
                    "no {what} within {timeout:?}; frames that did arrive: {:?}",
                    self.pending
                ),
            }
        }
    }

    /// The `phx_reply` whose ref is `msg_ref`.
    ///
    /// # Panics
    /// When none arrives in time.
    pub async fn reply_to(&mut self, msg_ref: &str) -> Value {
        self.recv_until(&format!("phx_reply to ref {msg_ref}"), |f| {
            f.is_reply_to(msg_ref)
        })
        .await
    }

    /// The first broadcast on `topic` with `event`.
    ///
    /// # Panics
    /// When none arrives in time.
    pub async fn broadcast(&mut self, topic: &str, event: &str) -> Value {
        self.recv_until(&format!("broadcast {event} on {topic}"), |f| {
            f.is_broadcast() && f.topic() == topic && f.event() == event
        })
        .await
    }

    /// Frames already queued (read while waiting for another), oldest first, removed.
    pub fn take_pending(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    /// Asserts nothing arrives for `quiet` (and nothing is queued).
    ///
    /// # Panics
    /// When something arrives.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(incoming) = self.next_incoming(quiet).await {
            panic!("expected nothing for {quiet:?}, got {incoming:?}");
        }
    }

    /// Reads until the connection ends, discarding frames: how it ended. Queued frames are
    /// dropped.
    ///
    /// # Panics
    /// When it has not ended within `timeout`.
    pub async fn wait_end(&mut self, timeout: Duration) -> CloseOutcome {
        self.pending.clear();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_incoming(left).await {
                Some(Incoming::Frame(_) | Incoming::Binary(_)) => {}
                Some(Incoming::Close(Some((code, reason)))) => {
                    return CloseOutcome::Close(code, reason)
                }
                Some(Incoming::Close(None)) => return CloseOutcome::CloseWithoutCode,
                Some(Incoming::Ended(how)) => return CloseOutcome::Ended(how),
                None => panic!("the connection did not end within {timeout:?}"),
            }
        }
    }

    /// Waits for a close frame (skipping frames before it): its code and reason.
    ///
    /// # Panics
    /// When the connection ends without a close frame or does not end in time.
    pub async fn expect_close(&mut self) -> (u16, String) {
        match self.wait_end(self.timeout).await {
            CloseOutcome::Close(code, reason) => (code, reason),
            other => panic!("expected a close frame, got {other}"),
        }
    }

    /// The next message must be a close frame with `code` and `reason`.
    ///
    /// # Panics
    /// Otherwise.
    pub async fn expect_close_with(&mut self, code: u16, reason: &str) {
        let timeout = self.timeout;
        match self.next_incoming(timeout).await {
            Some(Incoming::Close(Some((c, r)))) if c == code && r == reason => {}
            other => panic!("expected close {code} {reason:?}, got {other:?}"),
        }
    }
}

/// The `host:port` of a `ws://` URL as a socket address.
fn socket_addr(url: &str) -> Result<SocketAddr, tungstenite::Error> {
    let rest = url.strip_prefix("ws://").ok_or(tungstenite::Error::Url(
        tungstenite::error::UrlError::UnsupportedUrlScheme,
    ))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority
        .parse()
        .map_err(|_| tungstenite::Error::Url(tungstenite::error::UrlError::NoHostName))
}
