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

test("encodeFrame writes either direction and checks with the node's decoder", () => {
  assert.equal(encodeFrame({ topic: "t", event: "e" }), '[null,null,"t","e",{}]');
  assert.equal(
    encodeFrame({ topic: "room:lobby", event: "new_msg", payload: [1, "two"] }),
    '[null,null,"room:lobby","new_msg",[1,"two"]]',
  );
  assert.equal(encodeFrame({ joinRef: "1", ref: "1", topic: "t", event: "phx_close" }), '["1","1","t","phx_close",{}]');
  // Strings are escaped as the node escapes them (JSON.stringify does the same).
  const text = '["1","2","room:é","new_msg\\t",{"body":"a\\"b\\n\\u0001"}]';
  assert.equal(encodeFrame(decodeFrame(text)), text);
  const cases = [
    [{ topic: "t" }, "wrong_type"],
    [{ joinRef: 3, topic: "t", event: "e" }, "wrong_type"],
    [{ ref: "x".repeat(65), topic: "t", event: "e" }, "ref_too_long"],
    [{ topic: "bad\u0000", event: "e" }, "invalid_topic"],
    [{ topic: "t\ud800", event: "e" }, "invalid_string"],
    [{ topic: "t", event: "e", payload: () => 1 }, "not_serializable"],
    [null, "invalid_argument"],
    ["text", "invalid_argument"],
  ];
  for (const [frame, code] of cases) {
    assert.throws(() => encodeFrame(frame), { code }, JSON.stringify(frame));
  }
  assert.throws(() => encodeFrame({ joinRef: 3, topic: "t", event: "e" }), { message: "join_ref must be a string or null" });
});
