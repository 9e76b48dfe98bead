//! `GET /admin/api/tail?topic=..`: a topic's messages as they are delivered, as Server-Sent
//! Events (`text/event-stream`).
//!
//! A tail is a hub client registered exactly like a WebSocket session: [`Connect`] with an
//! [`Outbox`] over its own bounded [`FrameQueue`] (the socket's `--send-buffer-bytes`), then
//! [`Subscribe`] with no presence and no recovery. So it gets what every socket of the topic
//! gets, from every node (the join waits for the backend's subscription like any other), it is
//! never a presence member, and it has no way to push. A small actor ([`TailActor`]) takes the
//! hub's `Flush` wake-ups and close orders and hands them to the response stream, which drains
//! the queue whenever the HTTP connection can take more. A browser that stops reading stops
//! the stream, the queue fills, and the hub evicts the tail as a slow consumer (counted in
//! `switchboard_slow_consumer_disconnects_total`, like a socket): a tail never grows memory.
//!
//! A tail counts where a socket would (it is one more subscriber): in
//! `switchboard_sessions`, `switchboard_topics`, `switchboard_subscriptions`,
//! `switchboard_frames_out_total` and in a publish's `recipients`. It is not a connection
//! (`switchboard_connections` counts WebSockets), and [`Tails`] counts tails on their own, for
//! the page and `GET /admin/api/status`. At most [`MAX_TAILS`] are open at once.
//!
//! The events: `subscribed` (first: the topic, how far the subscription reaches, the stream's
//! position on a topic with history), `message` (`{"event", "position", "payload"}`), `closed`
//! (the node ended the tail: `{"reason": ..}`), and a `: keepalive` comment every
//! [`KEEPALIVE`]. The keepalive is also how a tail learns that its browser went away: the HTTP
//! server keeps streaming to a connection its client has closed until a write fails, so a
//! tail nobody reads any more leaves the hub within two keepalives (at once when messages
//! flow).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use actix_web::http::{header, StatusCode};
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::IgnoredAny;
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_core::connection::{JoinAnswer, Reach};
use switchboard_core::{SessionId, Topic};
use tokio::sync::Notify;

use super::api::{bad, topic_param};
use super::{error, secured};
use crate::http::AppState;
use crate::hub::outbox::{Delivery, FrameQueue, Outbox};
use crate::hub::{Connect, Disconnect, Hub, Subscribe};
use crate::messages::{CloseSession, Flush};

/// Tails open at once on one node; one more gets `429`.
pub const MAX_TAILS: usize = 16;

/// How often an idle tail sends a comment line.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// The tails open now, in all and per topic.
#[derive(Debug, Default)]
pub struct Tails {
    open: AtomicUsize,
    topics: Mutex<HashMap<Topic, usize>>,
}

impl Tails {
    /// Tails open now.
    #[must_use]
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Tails of `topic` open now.
    #[must_use]
    pub fn on(&self, topic: &Topic) -> usize {
        self.lock().get(topic).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, usize>> {
        // Every update is a single insert or remove: a poisoned map is still consistent.
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more tail of `topic`, unless [`MAX_TAILS`] are open.
    fn open(self: &Arc<Self>, topic: &Topic) -> Option<TailSlot> {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < MAX_TAILS).then_some(open + 1)
            })
            .ok()?;
        *self.lock().entry(topic.clone()).or_default() += 1;
        Some(TailSlot {
            tails: self.clone(),
            topic: topic.clone(),
        })
    }
}

/// One open tail's place in [`Tails`], given back when dropped.
#[derive(Debug)]
struct TailSlot {
    tails: Arc<Tails>,
    topic: Topic,
}

impl Drop for TailSlot {
    fn drop(&mut self) {
        let mut topics = self.tails.lock();
        if let Some(count) = topics.get_mut(&self.topic) {
            *count -= 1;
            if *count == 0 {
                topics.remove(&self.topic);
            }
        }
        drop(topics);
        self.tails.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the tail's actor tells its response stream.
#[derive(Debug, Default)]
struct Signal {
    /// Frames are queued (one permit is kept when the stream is not waiting).
    wake: Notify,
    /// Why the hub closed the tail, once it has.
    closed: Mutex<Option<&'static str>>,
}

impl Signal {
    fn close(&self, reason: &'static str) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        self.wake.notify_one();
    }

    fn closed(&self) -> Option<&'static str> {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The tail's end of the hub: takes `Flush` and `CloseSession` as a socket's session would,
/// and wakes the response stream.
#[derive(Debug)]
pub struct TailActor {
    signal: Arc<Signal>,
}

impl Actor for TailActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Deliveries wait in the queue; the mailbox holds only wake-ups and the close.
        ctx.set_mailbox_capacity(16);
    }
}

impl Handler<Flush> for TailActor {
    type Result = ();

    fn handle(&mut self, _: Flush, _: &mut Self::Context) {
        self.signal.wake.notify_one();
    }
}

impl Handler<CloseSession> for TailActor {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        self.signal.close(msg.reason);
        ctx.stop();
    }
}

/// The response stream has ended (the browser went away, or the tail was closed).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Stop;

impl Handler<Stop> for TailActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Held by the response stream: when it is dropped the tail leaves the hub, its actor stops
/// and its slot is given back.
#[derive(Debug)]
struct Registration {
    hub: Addr<Hub>,
    session: Option<SessionId>,
    actor: Addr<TailActor>,
    _slot: TailSlot,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(session) = self.session {
            self.hub.do_send(Disconnect { session });
        }
        self.actor.do_send(Stop);
    }
}

/// `GET /admin/api/tail?topic=..`: see the module doc.
pub(in crate::http) async fn tail(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refused) = super::refused(&req, &state) {
        return refused;
    }
    let topic = match topic_param(&req) {
        Ok(topic) => topic,
        Err((code, message)) => return bad(code, message),
    };
    let Some(slot) = state.inspector.tails().open(&topic) else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_tails",
            format!("{MAX_TAILS} tails are open on this node; close one first"),
        );
    };
    let signal = Arc::new(Signal::default());
    let queue = Arc::new(FrameQueue::new(state.send_buffer_bytes));
    let actor = TailActor {
        signal: signal.clone(),
    }
    .start();
    let mut registration = Registration {
        hub: state.hub.clone(),
        session: None,
        actor: actor.clone(),
        _slot: slot,
    };
    let connect = Connect {
        outbox: Outbox::new(queue.clone(), actor.clone().recipient()),
        close: actor.recipient(),
    };
    let Ok(session) = state.hub.send(connect).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the hub is not running",
        );
    };
    registration.session = Some(session);
    let subscribe = Subscribe {
        session,
        topic: topic.clone(),
        since: None,
        presence: None,
    };
    let Ok(joined) = state.hub.send(subscribe).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the hub is not running",
        );
    };
    let (reach, position) = match joined.answer {
        JoinAnswer::Joined(Reach::LocalOnly) => ("local_only", None),
        JoinAnswer::JoinedAt { position, .. } => ("everywhere", Some(position.to_string())),
        JoinAnswer::Refused(refusal) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "tail_refused", refusal);
        }
        _ => ("everywhere", None),
    };
    let subscribed = event(
        "subscribed",
        &json!({"topic": topic.as_str(), "reach": reach, "position": position}).to_string(),
    );
    // The hub holds the queue of a join with history until the reply is out; this stream
    // sends `subscribed` before anything it drains.
    if joined.held {
        let _ = queue.release();
    }
    let stream = TailStream {
        queue,
        signal,
        first: Some(subscribed),
        done: false,
        _registration: registration,
    };
    let body = futures_util::stream::unfold(stream, TailStream::next);
    secured(HttpResponse::Ok())
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        // Proxies that buffer responses (nginx) must pass each event on at once.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}

/// The response body of one tail.
#[derive(Debug)]
struct TailStream {
    queue: Arc<FrameQueue>,
    signal: Arc<Signal>,
    /// The `subscribed` event, until it is sent.
    first: Option<Bytes>,
    /// The `closed` event has been sent.
    done: bool,
    _registration: Registration,
}

impl TailStream {
    /// The next chunk of the body: what is queued, the close, or a keepalive.
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if let Some(first) = self.first.take() {
            return Some((Ok(first), self));
        }
        if self.done {
            return None;
        }
        loop {
            let drained = self.queue.drain();
            if !drained.is_empty() {
                let chunk = messages(drained);
                if !chunk.is_empty() {
                    return Some((Ok(chunk), self));
                }
            }
            if let Some(reason) = self.signal.closed() {
                self.done = true;
                let closed = event("closed", &json!({ "reason": reason }).to_string());
                return Some((Ok(closed), self));
            }
            tokio::select! {
                () = self.signal.wake.notified() => {}
                () = tokio::time::sleep(KEEPALIVE) => {
                    return Some((Ok(Bytes::from_static(b": keepalive\n\n")), self));
                }
            }
        }
    }
}

/// One Server-Sent Event. `data` may hold line breaks (a payload keeps the whitespace its
/// publisher gave it): each line becomes a `data:` line, which the reader joins back with
/// `\n`, so the JSON is unchanged.
fn event(name: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + name.len() + 16);
    push_event(&mut out, name, data);
    Bytes::from(out)
}

fn push_event(out: &mut String, name: &str, data: &str) {
    out.push_str("event: ");
    out.push_str(name);
    out.push('\n');
    for line in data.split(['\n', '\r']) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
}

/// A `message` event's data.
#[derive(Debug, Serialize)]
struct Message<'a> {
    event: Cow<'a, str>,
    position: Option<Cow<'a, str>>,
    payload: &'a RawValue,
}

/// The `message` events of what the hub queued: each broadcast frame
/// `[null, position, topic, event, payload]` as `{"event", "position", "payload"}`.
fn messages(drained: VecDeque<Delivery>) -> Bytes {
    type Parts<'a> = (
        IgnoredAny,
        Option<Cow<'a, str>>,
        IgnoredAny,
        Cow<'a, str>,
        &'a RawValue,
    );
    let mut out = String::new();
    for delivery in &drained {
        let Delivery::Frame(frame) = delivery else {
            continue;
        };
        // The hub encoded the frame; one it did not would be skipped rather than mangled.
        let Ok((_, position, _, event, payload)) = serde_json::from_str::<Parts<'_>>(frame) else {
            continue;
        };
        let message = Message {
            event,
            position,
            payload,
        };
        if let Ok(data) = serde_json::to_string(&message) {
            push_event(&mut out, "message", &data);
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use bytestring::ByteString;

    use super::*;

    #[test]
    fn frames_become_message_events_with_multiline_payloads_kept_whole() {
        let mut drained = VecDeque::new();
        drained.push_back(Delivery::Frame(ByteString::from(
            r#"[null,"3:ab","feed:1","new",{"a":1}]"#,
        )));
        drained.push_back(Delivery::Left(Topic::new("feed:1").unwrap()));
        drained.push_back(Delivery::Frame(ByteString::from(
            "[null,null,\"feed:1\",\"e\\\"q\",{\n\"b\": [1,\r\n2]}]",
        )));
        let out = messages(drained);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "event: message\ndata: {\"event\":\"new\",\"position\":\"3:ab\",\"payload\":{\"a\":1}}\n\n\
             event: message\ndata: {\"event\":\"e\\\"q\",\"position\":null,\"payload\":{\n\
             data: \"b\": [1,\ndata: \ndata: 2]}}\n\n"
        );
    }

    #[test]
    fn tails_are_bounded_and_counted_per_topic() {
        let tails = Arc::new(Tails::default());
        let a = Topic::new("a:1").unwrap();
        let b = Topic::new("b:1").unwrap();
        let mut slots: Vec<TailSlot> = (0..MAX_TAILS - 1)
            .map(|_| tails.open(&a).unwrap())
            .collect();
        slots.push(tails.open(&b).unwrap());
        assert!(tails.open(&b).is_none(), "past the bound");
        assert_eq!(
            (tails.count(), tails.on(&a), tails.on(&b)),
            (MAX_TAILS, MAX_TAILS - 1, 1)
        );
        drop(slots.pop());
        assert_eq!((tails.count(), tails.on(&b)), (MAX_TAILS - 1, 0));
        slots.clear();
        assert_eq!(tails.count(), 0);
        assert!(tails.lock().is_empty(), "no entry is left behind");
    }
}
