import { test } from "node:test";
import assert from "node:assert/strict";
import { RecordingPubSub } from "switchboard-wasm";

test("RecordingPubSub records every accepted call and still delivers", () => {
  const pubsub = new RecordingPubSub({ maxTopicsPerSession: 1 });
  const seen = [];
  pubsub.subscribe("user-1", "room:lobby", (topic, message) => seen.push(message));
  assert.throws(() => pubsub.subscribe("user-1", "room:2", () => {}), { code: "too_many_topics" });
  assert.equal(pubsub.broadcast("room:lobby", { body: "hi" }), 1);
  pubsub.unsubscribe("user-1", "room:lobby");
  pubsub.unsubscribeAll("user-1");

  assert.deepEqual(seen, [{ body: "hi" }]);
  assert.deepEqual(pubsub.subscriptions, [
    { action: "subscribe", sessionId: "user-1", topic: "room:lobby" },
    { action: "unsubscribe", sessionId: "user-1", topic: "room:lobby" },
    { action: "unsubscribeAll", sessionId: "user-1" },
  ]);
  assert.deepEqual(pubsub.broadcasts, [{ topic: "room:lobby", message: { body: "hi" }, delivered: 1 }]);

  pubsub.clear();
  assert.deepEqual(pubsub.subscriptions, []);
  assert.deepEqual(pubsub.broadcasts, []);
});
