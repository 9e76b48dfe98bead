import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeFrame, encodeFrame } from "switchboard-wasm";

test("decodeFrame reads client frames as the node does", () => {
  assert.deepEqual(decodeFrame('["3","3","room:lobby","phx_join",{"token":"t"}]'), {
    joinRef: "3",
    ref: "3",
    topic: "room:lobby",
    event: "phx_join",
    payload: { token: "t" },
    kind: "join",
  });
  assert.equal(decodeFrame('[null,"6","phoenix","heartbeat",{}]').kind, "heartbeat");
  assert.equal(decodeFrame('["3","4","room:lobby","new_msg",{"body":"hi"}]').kind, "push");
  assert.throws(() => decodeFrame("not json"), { code: "not_json" });
  assert.throws(() => decodeFrame('[null,null,"","e",{}]'), { code: "invalid_topic" });
  assert.throws(() => decodeFrame('[null,"1","t","phx_reply",{}]'), { code: "reserved_event" });
  assert.throws(() => decodeFrame('[null,null,"t","e",[1]]'), { code: "payload_not_object" });
});

test("encodeFrame writes frames as the node does", () => {
  assert.equal(
    encodeFrame({ topic: "room:lobby", event: "new_msg", payload: { body: "hi" } }),
    '[null,null,"room:lobby","new_msg",{"body":"hi"}]',
  );
  assert.equal(
    encodeFrame({ joinRef: "3", ref: "3", topic: "room:lobby", event: "phx_reply", payload: { status: "ok", response: {} } }),
    '["3","3","room:lobby","phx_reply",{"status":"ok","response":{}}]',
  );
  const text = '["1","2","room:1","new_msg",{"n":[1,2.5]}]';
  assert.equal(encodeFrame(decodeFrame(text)), text);
  assert.throws(() => encodeFrame({ topic: "", event: "e" }), { code: "invalid_topic" });
  assert.throws(() => encodeFrame({ topic: "t", event: "" }), { code: "empty_event" });
  assert.throws(() => encodeFrame({ topic: "t", event: "e", payload: 1n }), { code: "not_serializable" });
});
