//! `RecordingPubSub`: a `PubSub` that also records every call it accepted, for assertions in
//! tests (seed 002's `TestPubSub`). It still delivers.

use wasm_bindgen::prelude::*;

use crate::delivery;
use crate::errors;
use crate::js::{Array, Object};
use crate::options::PubSubOptions;
use crate::pubsub::PubSub;

#[wasm_bindgen(typescript_custom_section)]
const RECORDS_TS: &str = r#"
/** One subscription change a `RecordingPubSub` accepted, in call order. */
export type RecordedSubscription =
  | { action: "subscribe"; sessionId: string; topic: string }
  | { action: "unsubscribe"; sessionId: string; topic: string }
  | { action: "unsubscribeAll"; sessionId: string }
  | { action: "disconnect"; sessionId: string };

/** One broadcast a `RecordingPubSub` accepted, in call order. */
export interface RecordedBroadcast<T = any> {
  topic: string;
  /** A copy of the message as the handlers received it (after the JSON round trip). */
  message: T;
  /** How many handlers it was delivered to. */
  delivered: number;
}
"#;

/// A `PubSub` that records what it is asked to do: `subscriptions` lists every accepted
/// `subscribe` / `unsubscribe` / `unsubscribeAll` / `disconnect` call, `broadcasts` every
/// accepted `broadcast` (with a copy of its message and how many handlers received it).
/// It delivers exactly as `PubSub` does, with the same errors; a call that throws before
/// doing anything (invalid topic, limit, bad argument) is not recorded, while a broadcast
/// whose handlers threw is (it was delivered).
///
/// ```js
/// const pubsub = new RecordingPubSub();
/// pubsub.subscribe("s1", "room:1", () => {});
/// pubsub.broadcast("room:1", { n: 1 });
/// pubsub.subscriptions; // [{ action: "subscribe", sessionId: "s1", topic: "room:1" }]
/// pubsub.broadcasts;    // [{ topic: "room:1", message: { n: 1 }, delivered: 1 }]
/// ```
#[wasm_bindgen]
#[derive(Debug)]
pub struct RecordingPubSub {
    inner: PubSub,
    subscriptions: Array,
    broadcasts: Array,
}

/// A plain object with `fields`.
fn record(fields: &[(&str, &JsValue)]) -> JsValue {
    let object: JsValue = Object::new().into();
    for (key, value) in fields {
        errors::set(&object, key, value);
    }
    object
}

impl RecordingPubSub {
    fn record_subscription(&self, action: &str, session_id: &str, topic: Option<&str>) {
        let action = JsValue::from_str(action);
        let session_id = JsValue::from_str(session_id);
        let entry = match topic {
            Some(topic) => record(&[
                ("action", &action),
                ("sessionId", &session_id),
                ("topic", &JsValue::from_str(topic)),
            ]),
            None => record(&[("action", &action), ("sessionId", &session_id)]),
        };
        self.subscriptions.push(&entry);
    }
}

#[wasm_bindgen]
impl RecordingPubSub {
    /// A new, empty recording pub/sub; takes the same options as `PubSub`.
    ///
    /// @throws Error with code `invalid_argument` for invalid options.
    #[wasm_bindgen(constructor)]
    pub fn new(options: Option<PubSubOptions>) -> Result<Self, JsValue> {
        Ok(Self {
            inner: PubSub::new(options)?,
            subscriptions: Array::new(),
            broadcasts: Array::new(),
        })
    }

    /// As `PubSub.subscribe`, and records `{ action: "subscribe", sessionId, topic }`.
    ///
    /// @returns `true` for a new subscription, `false` when the session already held the topic.
    /// @throws as `PubSub.subscribe` (and then records nothing).
    pub fn subscribe(
        &self,
        #[wasm_bindgen(js_name = "sessionId")] session_id: &str,
        topic: &str,
        #[wasm_bindgen(unchecked_param_type = "Handler")] handler: JsValue,
    ) -> Result<bool, JsValue> {
        let subscribed = self.inner.subscribe(session_id, topic, handler)?;
        self.record_subscription("subscribe", session_id, Some(topic));
        Ok(subscribed)
    }

    /// As `PubSub.unsubscribe`, and records `{ action: "unsubscribe", sessionId, topic }`
    /// (also when the session was not subscribed).
    ///
    /// @returns `true` when the session was subscribed.
    /// @throws as `PubSub.unsubscribe` (and then records nothing).
    pub fn unsubscribe(
        &self,
        #[wasm_bindgen(js_name = "sessionId")] session_id: &str,
        topic: &str,
    ) -> Result<bool, JsValue> {
        let was_subscribed = self.inner.unsubscribe(session_id, topic)?;
        self.record_subscription("unsubscribe", session_id, Some(topic));
        Ok(was_subscribed)
    }

    /// As `PubSub.unsubscribeAll`, and records `{ action: "unsubscribeAll", sessionId }`.
    ///
    /// @returns how many subscriptions the session held.
    #[wasm_bindgen(js_name = unsubscribeAll)]
    pub fn unsubscribe_all(
        &self,
        #[wasm_bindgen(js_name = "sessionId")] session_id: &str,
    ) -> usize {
        let left = self.inner.unsubscribe_all(session_id);
        self.record_subscription("unsubscribeAll", session_id, None);
        left
    }

    /// As `PubSub.disconnect`, and records `{ action: "disconnect", sessionId }`.
    ///
    /// @returns how many subscriptions the session held.
    pub fn disconnect(&self, #[wasm_bindgen(js_name = "sessionId")] session_id: &str) -> usize {
        let left = self.inner.disconnect(session_id);
        self.record_subscription("disconnect", session_id, None);
        left
    }

    /// As `PubSub.broadcast`, and records `{ topic, message, delivered }` before delivering
    /// (so a broadcast made by a handler is recorded after the one that triggered it).
    ///
    /// @returns how many handlers were called.
    /// @throws as `PubSub.broadcast`; a `handler_failed` broadcast is recorded.
    pub fn broadcast(
        &self,
        topic: &str,
        #[wasm_bindgen(unchecked_param_type = "unknown")] message: JsValue,
    ) -> Result<usize, JsValue> {
        let (message, handlers) = self.inner.prepare_broadcast(topic, &message)?;
        self.broadcasts.push(&record(&[
            ("topic", &JsValue::from_str(topic)),
            ("message", &message.copy()?),
            ("delivered", &JsValue::from(handlers.len())),
        ]));
        delivery::deliver(topic, &message, &handlers)
    }

    /// Every accepted subscription change so far, oldest first (a new array on each read).
    #[wasm_bindgen(getter, unchecked_return_type = "RecordedSubscription[]")]
    pub fn subscriptions(&self) -> JsValue {
        self.subscriptions.slice().into()
    }

    /// Every accepted broadcast so far, oldest first (a new array on each read).
    #[wasm_bindgen(getter, unchecked_return_type = "RecordedBroadcast[]")]
    pub fn broadcasts(&self) -> JsValue {
        self.broadcasts.slice().into()
    }

    /// Forgets the records (not the subscriptions).
    pub fn clear(&self) {
        self.subscriptions.set_length(0);
        self.broadcasts.set_length(0);
    }

    /// As `PubSub.subscribers`.
    ///
    /// @throws Error with the topic error's code for an invalid topic.
    pub fn subscribers(&self, topic: &str) -> Result<Vec<String>, JsValue> {
        self.inner.subscribers(topic)
    }

    /// As `PubSub.topics`.
    #[wasm_bindgen(getter)]
    pub fn topics(&self) -> Vec<String> {
        self.inner.topics()
    }

    /// As `PubSub.sessionCount`.
    #[wasm_bindgen(getter, js_name = sessionCount)]
    pub fn session_count(&self) -> usize {
        self.inner.session_count()
    }

    /// As `PubSub.subscriptionCount`.
    #[wasm_bindgen(getter, js_name = subscriptionCount)]
    pub fn subscription_count(&self) -> usize {
        self.inner.subscription_count()
    }

    /// As `PubSub.maxTopicsPerSession`.
    #[wasm_bindgen(getter, js_name = maxTopicsPerSession)]
    pub fn max_topics_per_session(&self) -> usize {
        self.inner.max_topics_per_session()
    }
}
