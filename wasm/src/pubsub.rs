//! `PubSub`: the JavaScript class over the session table (`Hub`), with the node's routing and
//! validation.

use std::cell::RefCell;

use switchboard_core::Subscribed;
use wasm_bindgen::prelude::*;

use crate::delivery::{self, Message};
use crate::errors;
use crate::hub::Hub;
use crate::js::Function;
use crate::options::{self, PubSubOptions};

#[wasm_bindgen(typescript_custom_section)]
const HANDLER_TS: &str = r#"
/**
 * A subscriber. Called with the topic and the session's own copy of the message: the message
 * went through `JSON.stringify` once and each handler gets a fresh `JSON.parse` of that text,
 * so a handler may mutate what it receives without any other handler (or the broadcaster)
 * seeing it. The return value is ignored; a returned promise is not awaited.
 */
export type Handler<T = any> = (topic: string, message: T) => unknown;
"#;

/// In-memory pub/sub with exactly the Switchboard node's routing rules: the node's own
/// registry (`switchboard-core`) decides who receives what, and the same topic rules and
/// per-session limit apply, with the same error codes.
///
/// Sessions are named by your own strings (as a server names its sockets). A session comes
/// into being on its first `subscribe` and is forgotten by `unsubscribeAll` / `disconnect`.
///
/// Errors are `Error`s with a stable `code` property: `topic_empty`, `topic_too_long`,
/// `topic_control_character`, `too_many_topics`, `invalid_argument`, `not_serializable`,
/// and, from `broadcast`, `handler_failed`.
///
/// ```js
/// const pubsub = new PubSub();
/// pubsub.subscribe("socket-1", "room:lobby", (topic, message) => console.log(topic, message));
/// pubsub.broadcast("room:lobby", { body: "hi" }); // 1
/// ```
#[wasm_bindgen]
#[derive(Debug)]
pub struct PubSub {
    hub: RefCell<Hub<Function>>,
}

impl PubSub {
    /// Runs `f` on the hub.
    ///
    /// `f` must not call JavaScript: a handler, a getter or a `toJSON` could call back into
    /// this object while it is borrowed. Every method therefore reads and serialises its
    /// arguments before and calls handlers after, which is why the borrow cannot already be
    /// held here.
    fn with_hub<R>(&self, f: impl FnOnce(&mut Hub<Function>) -> R) -> R {
        // borrow_mut cannot panic: no JavaScript runs while the hub is borrowed (see above).
        f(&mut self.hub.borrow_mut())
    }

    /// Validates and serialises a broadcast and snapshots its receivers, without calling any
    /// of them (shared with `RecordingPubSub`, which records between the two steps).
    pub(crate) fn prepare_broadcast(
        &self,
        topic: &str,
        message: &JsValue,
    ) -> Result<(Message, Vec<Function>), JsValue> {
        switchboard_core::topic::validate(topic).map_err(|err| errors::to_js(&err))?;
        let message = Message::serialize(message, "message")?;
        let handlers = self
            .with_hub(|hub| hub.route(topic))
            .map_err(|err| errors::to_js(&err))?;
        Ok((message, handlers))
    }
}

#[wasm_bindgen]
impl PubSub {
    /// A new, empty pub/sub.
    ///
    /// @param options - `{ maxTopicsPerSession }` (default 100).
    /// @throws Error with code `invalid_argument` for options that are not an object, an
    /// unknown option, or a limit that is not a non-negative integer.
    #[wasm_bindgen(constructor)]
    pub fn new(options: Option<PubSubOptions>) -> Result<Self, JsValue> {
        let limit = options::max_topics_per_session(options.as_ref())?;
        Ok(Self {
            hub: RefCell::new(Hub::new(limit)),
        })
    }

    /// Subscribes session `sessionId` to `topic`: from now on every `broadcast` to `topic`
    /// calls `handler(topic, message)`.
    ///
    /// Subscribing a session again to a topic it holds replaces its handler (the node treats a
    /// second join the same way): it is still called once per broadcast.
    ///
    /// @returns `true` for a new subscription, `false` when the session already held the topic.
    /// @throws Error with the topic error's code (`topic_empty`, `topic_too_long`,
    /// `topic_control_character`), `too_many_topics` when the session already holds
    /// `maxTopicsPerSession` topics, or `invalid_argument` when `handler` is not a function.
    /// A call that throws changes nothing.
    pub fn subscribe(
        &self,
        #[wasm_bindgen(js_name = "sessionId")] session_id: &str,
        topic: &str,
        #[wasm_bindgen(unchecked_param_type = "Handler")] handler: JsValue,
    ) -> Result<bool, JsValue> {
        let handler = handler
            .dyn_into::<Function>()
            .map_err(|_| errors::invalid_argument("handler must be a function"))?;
        let outcome = self
            .with_hub(|hub| hub.subscribe(session_id, topic, handler))
            .map_err(|err| errors::to_js(&err))?;
        Ok(outcome != Subscribed::Already)
    }

    /// Unsubscribes session `sessionId` from `topic`.
    ///
    /// @returns `true` when the session was subscribed.
    /// @throws Error with the topic error's code for an invalid topic.
    pub fn unsubscribe(
        &self,
        #[wasm_bindgen(js_name = "sessionId")] session_id: &str,
        topic: &str,
    ) -> Result<bool, JsValue> {
        self.with_hub(|hub| hub.unsubscribe(session_id, topic))
            .map_err(|err| errors::to_js(&err))
    }

    /// Unsubscribes session `sessionId` from every topic and forgets the session (what the
    /// node does when a socket closes). Using the same id later starts a new session.
    ///
    /// @returns how many subscriptions the session held (0 for an unknown session).
    #[wasm_bindgen(js_name = unsubscribeAll)]
    pub fn unsubscribe_all(
        &self,
        #[wasm_bindgen(js_name = "sessionId")] session_id: &str,
    ) -> usize {
        self.with_hub(|hub| hub.disconnect(session_id))
    }

    /// The same as `unsubscribeAll`, named after the socket event it stands for.
    pub fn disconnect(&self, #[wasm_bindgen(js_name = "sessionId")] session_id: &str) -> usize {
        self.unsubscribe_all(session_id)
    }

    /// Delivers `message` to every subscriber of `topic`, synchronously, in the order the
    /// sessions were first used.
    ///
    /// The message is serialised once with `JSON.stringify`, and each handler receives its own
    /// fresh `JSON.parse` copy (so `Date`s arrive as strings, as over a socket). The receivers
    /// are fixed when the call starts: a handler that subscribes or unsubscribes affects the
    /// next broadcast, not this one. A handler that throws does not stop the others.
    ///
    /// @returns how many handlers were called (0 when nobody subscribes).
    /// @throws Error with the topic error's code for an invalid topic, or `not_serializable`
    /// for a message JSON cannot carry (then no handler is called). After calling every
    /// handler, when any of them threw: an `AggregateError` with code `handler_failed`,
    /// `errors` (what each failing handler threw, in order), `topic` and `delivered`.
    pub fn broadcast(
        &self,
        topic: &str,
        #[wasm_bindgen(unchecked_param_type = "unknown")] message: JsValue,
    ) -> Result<usize, JsValue> {
        let (message, handlers) = self.prepare_broadcast(topic, &message)?;
        delivery::deliver(topic, &message, &handlers)
    }

    /// The session ids subscribed to `topic`, in delivery order.
    ///
    /// @throws Error with the topic error's code for an invalid topic.
    pub fn subscribers(&self, topic: &str) -> Result<Vec<String>, JsValue> {
        self.with_hub(|hub| hub.subscribers(topic))
            .map_err(|err| errors::to_js(&err))
    }

    /// Every topic with at least one subscriber, sorted.
    #[wasm_bindgen(getter)]
    pub fn topics(&self) -> Vec<String> {
        self.with_hub(|hub| hub.topics())
    }

    /// How many sessions are in use (subscribed at least once and not disconnected since).
    #[wasm_bindgen(getter, js_name = sessionCount)]
    pub fn session_count(&self) -> usize {
        self.with_hub(|hub| hub.session_count())
    }

    /// How many (session, topic) subscriptions there are.
    #[wasm_bindgen(getter, js_name = subscriptionCount)]
    pub fn subscription_count(&self) -> usize {
        self.with_hub(|hub| hub.subscription_count())
    }

    /// The per-session topic limit in force.
    #[wasm_bindgen(getter, js_name = maxTopicsPerSession)]
    pub fn max_topics_per_session(&self) -> usize {
        self.with_hub(|hub| hub.max_topics_per_session())
    }
}
