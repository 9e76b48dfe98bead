// The installed npm package, used as a frontend test would use it. wasm/test.sh packs
// wasm/pkg, installs the tarball into a scratch project and runs `node --test` there.
import { test } from "node:test";
import assert from "node:assert/strict";
import { PubSub } from "switchboard-wasm";

const codeOf = (fn) => {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof Error, "throws an Error");
    return error.code;
  }
  assert.fail("did not throw");
};

test("subscribe, broadcast and unsubscribe route like the node", () => {
  const pubsub = new PubSub();
  const seen = [];
  assert.equal(pubsub.subscribe("b", "room:lobby", (topic, message) => seen.push(["b", topic, message])), true);
  assert.equal(pubsub.subscribe("a", "room:lobby", (topic, message) => seen.push(["a", topic, message])), true);
  pubsub.subscribe("c", "room:other", () => seen.push(["c"]));

  assert.equal(pubsub.broadcast("room:lobby", { body: "hi" }), 2);
  assert.deepEqual(seen, [
    ["b", "room:lobby", { body: "hi" }],
    ["a", "room:lobby", { body: "hi" }],
  ]);
  assert.deepEqual(pubsub.topics, ["room:lobby", "room:other"]);
  assert.deepEqual(pubsub.subscribers("room:lobby"), ["b", "a"]);
  assert.equal(pubsub.sessionCount, 3);
  assert.equal(pubsub.subscriptionCount, 3);

  assert.equal(pubsub.unsubscribe("b", "room:lobby"), true);
  assert.equal(pubsub.unsubscribe("b", "room:lobby"), false);
  assert.equal(pubsub.broadcast("room:lobby", 1), 1);
  assert.equal(pubsub.unsubscribeAll("a"), 1);
  assert.equal(pubsub.broadcast("room:lobby", 2), 0);
  assert.deepEqual(pubsub.topics, ["room:other"]);
  assert.equal(pubsub.disconnect("c"), 1);
  assert.equal(pubsub.sessionCount, 1, "b left its topic but is still a session");
  pubsub.free();
});

test("every handler gets its own copy of the message", () => {
  const pubsub = new PubSub();
  const seen = [];
  const vandal = (topic, message) => {
    seen.push(structuredClone(message));
    message.list.push("vandal");
    message.n = -1;
  };
  pubsub.subscribe("1", "t", vandal);
  pubsub.subscribe("2", "t", vandal);
  const original = { n: 1, list: [1], at: new Date(0) };
  pubsub.broadcast("t", original);
  const expected = { n: 1, list: [1], at: "1970-01-01T00:00:00.000Z" };
  assert.deepEqual(seen, [expected, expected]);
  assert.deepEqual(original.list, [1], "the broadcaster's value is untouched");
});

test("a throwing handler does not stop delivery and is reported after it", () => {
  const pubsub = new PubSub();
  const calls = [];
  pubsub.subscribe("1", "t", () => calls.push(1));
  pubsub.subscribe("2", "t", () => {
    throw new Error("handler 2 broke");
  });
  pubsub.subscribe("3", "t", () => calls.push(3));

  let thrown;
  try {
    pubsub.broadcast("t", {});
  } catch (error) {
    thrown = error;
  }
  assert.deepEqual(calls, [1, 3]);
  assert.ok(thrown instanceof AggregateError);
  assert.equal(thrown.code, "handler_failed");
  assert.equal(thrown.delivered, 3);
  assert.equal(thrown.topic, "t");
  assert.deepEqual(thrown.errors.map((error) => error.message), ["handler 2 broke"]);
});

test("invalid topics throw with the node's codes", () => {
  const pubsub = new PubSub();
  const handler = () => {};
  assert.equal(codeOf(() => pubsub.subscribe("s", "", handler)), "topic_empty");
  assert.equal(codeOf(() => pubsub.subscribe("s", "x".repeat(256), handler)), "topic_too_long");
  assert.equal(codeOf(() => pubsub.broadcast("room\u0000", {})), "topic_control_character");
  try {
    pubsub.subscribe("s", "", handler);
  } catch (error) {
    assert.equal(error.message, "topic is empty");
  }
  assert.equal(pubsub.sessionCount, 0, "a refused call changes nothing");
  assert.equal(codeOf(() => pubsub.subscribe("s", "t", "not a function")), "invalid_argument");
  assert.equal(codeOf(() => pubsub.broadcast("t", 10n)), "not_serializable");
  assert.equal(codeOf(() => pubsub.broadcast("t", undefined)), "not_serializable");
});

test("the per-session limit is enforced", () => {
  assert.equal(new PubSub().maxTopicsPerSession, 100);
  const pubsub = new PubSub({ maxTopicsPerSession: 2 });
  pubsub.subscribe("s", "1", () => {});
  pubsub.subscribe("s", "2", () => {});
  assert.equal(codeOf(() => pubsub.subscribe("s", "3", () => {})), "too_many_topics");
  assert.equal(pubsub.subscribe("s", "2", () => {}), false, "re-subscribing is fine");
  assert.equal(pubsub.subscribe("other", "3", () => {}), true, "the limit is per session");
  assert.equal(codeOf(() => new PubSub({ maxTopicsPerSession: -1 })), "invalid_argument");
  assert.equal(codeOf(() => new PubSub({ maxTopicPerSession: 3 })), "invalid_argument");
});
