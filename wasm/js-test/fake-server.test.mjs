// FakeServer and its WebSocket class, driven by hand: the browser WebSocket's behaviour, the
// handshake refusals, the frames the node answers, server-side broadcasts and disconnects,
// idle timeouts on an injected clock, presence lists and diffs, history positions and
// recovery, the records, and the options.
import { test } from "node:test";
import assert from "node:assert/strict";
import { FakeServer } from "switchboard-wasm";

const SECRET = "0123456789abcdef0123456789abcdef";
const URL = "ws://localhost/socket/websocket?vsn=2.0.0";

/** Resolves with the next `type` event of `socket`. */
const event = (socket, type) => new Promise((resolve) => socket.addEventListener(type, resolve, { once: true }));

/** A socket that has opened, and the text frames it receives (parsed), in order. */
async function connect(server, url = URL) {
  const socket = new server.WebSocket(url);
  const received = [];
  socket.addEventListener("message", (message) => received.push(JSON.parse(message.data)));
  await event(socket, "open");
  return { socket, received };
}

/** Waits until `received` holds `count` frames. */
async function frames(received, count) {
  for (let i = 0; i < 200 && received.length < count; i++) await new Promise((r) => setTimeout(r, 1));
  assert.equal(received.length, count, JSON.stringify(received));
  return received.splice(0, count);
}

const ok = (joinRef, ref, topic) => [joinRef, ref, topic, "phx_reply", { status: "ok", response: {} }];
const error = (joinRef, ref, topic, reason) => [joinRef, ref, topic, "phx_reply", { status: "error", response: { reason } }];

test("the WebSocket opens asynchronously and has the browser's shape", async () => {
  const server = new FakeServer();
  const { WebSocket } = server;
  assert.deepEqual([WebSocket.CONNECTING, WebSocket.OPEN, WebSocket.CLOSING, WebSocket.CLOSED], [0, 1, 2, 3]);
  assert.equal(WebSocket.name, "WebSocket");
  const socket = new WebSocket("http://localhost/socket/websocket?vsn=2.0.0#frag");
  assert.equal(socket.url, "ws://localhost/socket/websocket?vsn=2.0.0");
  assert.equal(socket.readyState, WebSocket.CONNECTING);
  assert.equal(socket.OPEN, 1);
  assert.equal(socket.binaryType, "blob");
  socket.binaryType = "arraybuffer";
  socket.binaryType = "nonsense";
  assert.equal(socket.binaryType, "arraybuffer");
  assert.equal(socket.bufferedAmount, 0);
  assert.throws(() => socket.send("x"), { name: "InvalidStateError" });
  const seen = [];
  socket.onopen = (e) => seen.push(["onopen", e.type, e.target === socket]);
  socket.addEventListener("open", () => seen.push(["listener"]));
  socket.onopen = (e) => seen.push(["onopen replaced", e.type]); // keeps its place, first
  assert.deepEqual(seen, [], "nothing happens synchronously");
  await event(socket, "open");
  assert.equal(socket.readyState, WebSocket.OPEN);
  assert.deepEqual(seen, [["onopen replaced", "open"], ["listener"]]);
  assert.throws(() => new WebSocket("ftp://localhost/socket/websocket"), { name: "SyntaxError" });
  assert.throws(() => new WebSocket("not a url"), { name: "SyntaxError" });
  assert.throws(() => socket.close(1001), { name: "InvalidAccessError" });
  assert.throws(() => socket.close(1000, "x".repeat(124)), { name: "SyntaxError" });
  const closed = event(socket, "close");
  socket.close();
  assert.equal(socket.readyState, WebSocket.CLOSING);
  const close = await closed;
  assert.deepEqual([close.code, close.reason, close.wasClean, socket.readyState], [1005, "", true, WebSocket.CLOSED]);
  socket.send("dropped once closed");
  assert.equal(server.frames.length, 0);
});

test("frames are answered by the node's engine, deliveries one task at a time", async () => {
  const server = new FakeServer();
  const a = await connect(server);
  const b = await connect(server);
  a.socket.send('["1","1","room:1","phx_join",{}]');
  b.socket.send('["1","1","room:1","phx_join",{}]');
  assert.deepEqual(a.received, [], "delivery is asynchronous");
  assert.deepEqual(await frames(a.received, 1), [ok("1", "1", "room:1")]);
  await frames(b.received, 1);
  assert.deepEqual(server.subscribers("room:1").map((s) => s.id), [1, 2]);

  b.socket.send('["1","2","room:1","new_msg",{"body":"hi"}]');
  const broadcast = [null, null, "room:1", "new_msg", { body: "hi" }];
  assert.deepEqual(await frames(a.received, 1), [broadcast]);
  assert.deepEqual(await frames(b.received, 2), [broadcast, ok("1", "2", "room:1")]);

  // A second join replaces the membership (phx_close, then ok); a push under the old one is stale.
  a.socket.send('["3","3","room:1","phx_join",{}]');
  a.socket.send('["1","4","room:1","new_msg",{}]');
  assert.deepEqual(await frames(a.received, 3), [
    ["1", "1", "room:1", "phx_close", {}],
    ok("3", "3", "room:1"),
    error(null, "4", "room:1", "stale join_ref: the topic was joined again since"),
  ]);
  a.socket.send('["3","5","room:1","phx_leave",{}]');
  a.socket.send('[null,"6","phoenix","heartbeat",{}]');
  a.socket.send('[null,"7","room:2","new_msg",{}]');
  a.socket.send('["1","8","room:2","phx_join",[]]');
  assert.deepEqual(await frames(a.received, 5), [
    ok("3", "5", "room:1"),
    ["3", "3", "room:1", "phx_close", {}],
    ok(null, "6", "phoenix"),
    error(null, "7", "room:2", "unmatched topic"),
    error("1", "8", "room:2", "payload must be a JSON object"),
  ]);
  assert.deepEqual(server.subscribers("room:1").map((s) => s.id), [2]);

  // What is not a frame closes the socket with 1007, as on the node.
  const closed = event(a.socket, "close");
  a.socket.send("not json");
  const close = await closed;
  assert.equal(close.code, 1007);
  assert.match(close.reason, /^frame is not valid JSON/);
  assert.equal(close.wasClean, true);
  assert.deepEqual(server.sockets.map((s) => s.id), [2]);

  // Records: every frame sent, decoded; refused ones with their error.
  const records = server.frames;
  assert.equal(records.length, 10);
  assert.deepEqual(records[0], { socket: 1, joinRef: "1", ref: "1", topic: "room:1", event: "phx_join", payload: {}, kind: "join" });
  assert.equal(records.at(-1).kind, "invalid");
  assert.equal(records.at(-1).error.code, "not_json");
  assert.equal(records.at(-1).text, "not json");
  server.clear();
  assert.deepEqual(server.frames, []);

  // Binary frames are refused with 1003, oversized ones with 1009.
  const c = await connect(server);
  const binaryClose = event(c.socket, "close");
  c.socket.send(new Uint8Array([1, 2]));
  assert.equal((await binaryClose).code, 1003);
  assert.deepEqual(server.frames, [{ socket: 3, kind: "binary" }]);
});

test("server.broadcast delivers as the node's HTTP publish and checks like it", async () => {
  const server = new FakeServer();
  const a = await connect(server);
  a.socket.send('["1","1","room:1","phx_join",{}]');
  await frames(a.received, 1);
  assert.equal(server.broadcast("room:1", "new_msg", { when: new Date(0) }), 1);
  assert.equal(server.broadcast("room:1", undefined, [1, 2]), 1);
  assert.equal(server.broadcast("nobody:here", "e", {}), 0);
  assert.deepEqual(await frames(a.received, 2), [
    [null, null, "room:1", "new_msg", { when: "1970-01-01T00:00:00.000Z" }],
    [null, null, "room:1", "message", [1, 2]],
  ]);
  assert.throws(() => server.broadcast("", "e", {}), { code: "invalid_topic" });
  assert.throws(() => server.broadcast("t", "", {}), { code: "invalid_event" });
  assert.throws(() => server.broadcast("t", "phx_reply", {}), { code: "invalid_event" });
  assert.throws(() => server.broadcast("t", "e", undefined), { code: "not_serializable" });
  const cycle = {};
  cycle.self = cycle;
  assert.throws(() => server.broadcast("t", "e", cycle), { code: "not_serializable" });
});

test("handshakes are checked as the node checks them", async () => {
  const server = new FakeServer({ tokenSecret: SECRET });
  const refused = async (url) => {
    const socket = new server.WebSocket(url);
    const seen = [];
    socket.onerror = () => seen.push("error");
    const close = await new Promise((resolve) => (socket.onclose = resolve));
    seen.push(close.code, close.wasClean, socket.readyState);
    return seen;
  };
  assert.deepEqual(await refused("ws://localhost/socket/websocket"), ["error", 1006, false, 3]);
  assert.deepEqual(await refused(`${URL}&token=junk`), ["error", 1006, false, 3]);
  assert.deepEqual(await refused(`ws://localhost/live/websocket?vsn=2.0.0&token=${server.token("u")}`), ["error", 1006, false, 3]);
  assert.deepEqual(
    server.refusals.map(({ status, code }) => [status, code]),
    [
      [400, "missing_vsn"],
      [401, "unauthorized"],
      [404, "not_found"],
    ],
  );
  const { socket } = await connect(server, `${URL}&token=${encodeURIComponent(server.token("alice"))}&extra=1&extra=2`);
  assert.deepEqual(server.sockets, [
    { id: 1, url: socket.url, params: { vsn: "2.0.0", token: server.token("alice"), extra: "1" }, user: "alice", topics: [] },
  ]);
  // An expired token (past exp by more than the 30 s clock-skew leeway).
  assert.deepEqual(await refused(`${URL}&token=${server.token("bob", -120)}`), ["error", 1006, false, 3]);
  assert.throws(() => new FakeServer().token("u"), { code: "no_token_secret" });

  // Closing a socket that is still connecting fails it; the server never sees it.
  const early = new server.WebSocket(`${URL}&token=${server.token("carol")}`);
  const seen = [];
  early.onerror = () => seen.push("error");
  early.onopen = () => seen.push("open");
  early.close();
  const close = await event(early, "close");
  assert.deepEqual([...seen, close.code], ["error", 1006]);
  assert.deepEqual(server.sockets.map((s) => s.user), ["alice"]);
});

test("channel rules apply with a token secret, as on the node", async () => {
  const server = new FakeServer({
    tokenSecret: SECRET,
    channels: { room: { join: "authenticated", push: "nobody" }, auditlog: { join: "owner", push: "nobody" }, "*": { join: "nobody", push: "nobody" } },
  });
  const a = await connect(server, `${URL}&token=${server.token("42")}`);
  a.socket.send('["1","1","room:1","phx_join",{}]');
  a.socket.send('["1","2","room:1","e",{}]');
  a.socket.send('["3","3","auditlog:42","phx_join",{}]');
  a.socket.send('["4","4","auditlog:43","phx_join",{}]');
  a.socket.send('["5","5","other:1","phx_join",{}]');
  assert.deepEqual(await frames(a.received, 5), [
    ok("1", "1", "room:1"),
    error("1", "2", "room:1", "unauthorized"),
    ok("3", "3", "auditlog:42"),
    error("4", "4", "auditlog:43", "unauthorized"),
    error("5", "5", "other:1", "unauthorized"),
  ]);
  assert.deepEqual(server.sockets[0].topics, ["auditlog:42", "room:1"]);
});

test("server.disconnect closes matching sockets with a code, or drops them", async () => {
  const server = new FakeServer({ tokenSecret: SECRET });
  const alice = await connect(server, `${URL}&token=${server.token("alice")}`);
  const bob = await connect(server, `${URL}&token=${server.token("bob")}`);
  alice.socket.send('["1","1","room:1","phx_join",{}]');
  await frames(alice.received, 1);
  const aliceClosed = event(alice.socket, "close");
  assert.equal(server.disconnect((socket) => socket.user === "alice", 3008, "slow consumer"), 1);
  const close = await aliceClosed;
  assert.deepEqual([close.code, close.reason, close.wasClean], [3008, "slow consumer", true]);
  assert.deepEqual(server.subscribers("room:1"), []);
  const bobClosed = event(bob.socket, "close");
  assert.equal(server.disconnect(undefined, 1006), 1);
  const drop = await bobClosed;
  assert.deepEqual([drop.code, drop.reason, drop.wasClean], [1006, "", false]);
  assert.equal(server.disconnect(), 0);
  assert.throws(() => server.disconnect(undefined, 1005), { code: "invalid_argument" });
  assert.throws(() => server.disconnect("alice"), { code: "invalid_argument" });
});

test("idle sockets close after idleTimeout on an injected clock; rates use it too", async () => {
  let now = 0;
  const server = new FakeServer({ idleTimeout: 1000, pushRate: 1, pushBurst: 1, now: () => now });
  const a = await connect(server);
  const b = await connect(server);
  a.socket.send('["1","1","t","phx_join",{}]');
  a.socket.send('["1","2","t","e",{}]');
  a.socket.send('["1","3","t","e",{}]');
  const [, , pushed, limited] = await frames(a.received, 4);
  assert.deepEqual(pushed, ok("1", "2", "t"));
  assert.deepEqual(limited, error("1", "3", "t", "rate limit exceeded"));
  now = 600;
  b.socket.send('[null,"1","phoenix","heartbeat",{}]');
  now = 1000;
  const closed = event(a.socket, "close");
  server.tick();
  const close = await closed;
  assert.deepEqual([close.code, close.reason], [1000, "idle timeout"]);
  assert.deepEqual(server.sockets.map((s) => s.id), [2]);
  now = 1500;
  a.socket.send("ignored: closed");
  server.tick();
  assert.equal(server.sockets.length, 1);
});

test("schedule: deliveries can run as microtasks", async () => {
  const server = new FakeServer({ schedule: queueMicrotask });
  const socket = new server.WebSocket(URL);
  let opened = false;
  socket.onopen = () => (opened = true);
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(opened, true);
  socket.close(1000);
});

test("options are checked as the node checks its configuration", () => {
  const invalid = (options, pattern) =>
    assert.throws(() => new FakeServer(options), (error) => error.code === "invalid_argument" && pattern.test(error.message));
  invalid(42, /options must be an object/);
  invalid({ idleTimeOut: 1 }, /unknown option "idleTimeOut"/);
  invalid({ tokenSecret: "short" }, /tokenSecret: the token secret must be at least 32 bytes/);
  invalid({ maxTopicBytes: 256 }, /maxTopicBytes must be a whole number from 1 to 255/);
  invalid({ pushRate: 0 }, /pushRate must be a whole number/);
  invalid({ maxFrameBytes: 1.5 }, /maxFrameBytes/);
  invalid({ idleTimeout: -1 }, /idleTimeout must be a positive number of milliseconds/);
  invalid({ channels: { "room:1": { join: "anyone", push: "anyone" } } }, /channels.room:1: a namespace is/);
  invalid({ channels: { room: { join: "everyone", push: "anyone" } } }, /channels.room.join: unknown rule "everyone"/);
  invalid({ channels: { room: { join: "anyone", size: 1 } } }, /channels.room must be an object with any of join, push/);
  invalid({ channels: { room: "anyone" } }, /channels.room must be an object/);
  invalid({ channels: { room: { presence: "yes" } } }, /channels.room.presence must be true or false/);
  invalid({ channels: { feed: { history: 0 } } }, /channels.feed.history: history is the number of publications kept, 1 to 100000/);
  invalid({ channels: { feed: { historyTtl: 1000 } } }, /channels.feed.historyTtl: historyTtl needs history/);
  invalid({ channels: { feed: { history: 5, historyTtl: 0 } } }, /historyTtl must be a whole, positive number/);
  invalid({ presenceMaxMetaBytes: 4097 }, /presenceMaxMetaBytes must be a whole number from 2 to 4096/);
  invalid({ now: 5 }, /now must be a function/);
  const warnings = [];
  const warn = console.warn;
  console.warn = (message) => warnings.push(message);
  try {
    new FakeServer({ channels: { room: { join: "nobody", push: "nobody" } } });
  } finally {
    console.warn = warn;
  }
  assert.match(warnings[0], /not enforced without tokenSecret/);
  new FakeServer({ tokenSecret: null, maxTopicsPerSocket: 1, joinRate: 1, joinBurst: 1, pushBurst: 1, maxFrameBytes: 10 });
});

test("presence: the list after the join, then diffs batched per window, on an injected clock", async () => {
  let now = 0;
  const server = new FakeServer({ channels: { room: { presence: true } }, now: () => now });
  const ada = await connect(server, `${URL}&user=ada`);
  const bob = await connect(server, `${URL}&user=bob`);
  ada.socket.send('["1","1","room:1","phx_join",{"presence":{"s":1}}]');
  const [reply, state, diff] = await frames(ada.received, 3);
  assert.deepEqual(reply, ok("1", "1", "room:1"));
  const adaMeta = { phx_ref: state[4].ada.metas[0].phx_ref, s: 1 };
  assert.deepEqual(state, ["1", null, "room:1", "presence_state", { ada: { metas: [adaMeta] } }]);
  assert.deepEqual(diff, [null, null, "room:1", "presence_diff", { joins: { ada: { metas: [adaMeta] } }, leaves: {} }]);

  // Within the batching window (250 ms) the next change waits for the clock.
  now = 100;
  bob.socket.send('["1","1","room:1","phx_join",{}]');
  const [, bobState] = await frames(bob.received, 2);
  const bobMeta = { phx_ref: bobState[4].bob.metas[0].phx_ref };
  assert.deepEqual(bobState[4], { ada: { metas: [adaMeta] }, bob: { metas: [bobMeta] } });
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.deepEqual(ada.received, [], "held within the window");
  now = 250;
  server.tick();
  const joined = [null, null, "room:1", "presence_diff", { joins: { bob: { metas: [bobMeta] } }, leaves: {} }];
  assert.deepEqual(await frames(ada.received, 1), [joined]);
  assert.deepEqual(await frames(bob.received, 1), [joined]);
  assert.deepEqual(server.presence("room:1"), { ada: { metas: [adaMeta] }, bob: { metas: [bobMeta] } });
  assert.equal(server.presence("other:1"), undefined);

  // A meta update: its reply, then one diff with the new meta and the old one.
  now = 600;
  ada.socket.send('["1","2","room:1","presence_update",{"s":2}]');
  const [updated, updateDiff] = await frames(ada.received, 2);
  assert.deepEqual(updated, ok("1", "2", "room:1"));
  const newMeta = updateDiff[4].joins.ada.metas[0];
  assert.deepEqual(newMeta, { phx_ref: newMeta.phx_ref, phx_ref_prev: adaMeta.phx_ref, s: 2 });
  assert.deepEqual(updateDiff[4].leaves, { ada: { metas: [adaMeta] } });
  await frames(bob.received, 1);

  // A socket that closes leaves.
  now = 1000;
  ada.socket.close();
  const [left] = await frames(bob.received, 1);
  assert.deepEqual(left[4], { joins: {}, leaves: { ada: { metas: [{ phx_ref: newMeta.phx_ref, s: 2 }] } } });
  assert.deepEqual(Object.keys(server.presence("room:1")), ["bob"]);
  assert.throws(() => server.broadcast("room:1", "presence_diff", {}), { code: "invalid_event" });
});

test("history: positions in the ref slot, recovery with since, a new epoch after the TTL", async () => {
  let now = 0;
  const server = new FakeServer({ channels: { feed: { history: 2, historyTtl: 1000 } }, now: () => now });
  const first = server.publish("feed:1", "m", { n: 1 });
  assert.equal(first.recipients, 0);
  assert.match(first.position, /^1:[A-Za-z0-9]+$/);
  const epoch = first.position.split(":")[1];
  assert.deepEqual(server.publish("feed:1", "m", { n: 2 }), { recipients: 0, position: `2:${epoch}` });
  assert.deepEqual(server.publish("room:1", "m", {}), { recipients: 0 }, "no position without history");
  server.publish("feed:1", "m", { n: 3 });

  const a = await connect(server);
  a.socket.send(`["1","1","feed:1","phx_join",{"since":"1:${epoch}"}]`);
  assert.deepEqual(await frames(a.received, 3), [
    ["1", "1", "feed:1", "phx_reply", { status: "ok", response: { position: `3:${epoch}`, recovered: true } }],
    [null, `2:${epoch}`, "feed:1", "m", { n: 2 }],
    [null, `3:${epoch}`, "feed:1", "m", { n: 3 }],
  ]);
  assert.equal(server.broadcast("feed:1", "m", { n: 4 }), 1);
  assert.deepEqual(await frames(a.received, 1), [[null, `4:${epoch}`, "feed:1", "m", { n: 4 }]]);
  // The history keeps 2: from offset 1 it no longer reaches back.
  a.socket.send(`["2","2","feed:1","phx_join",{"since":"1:${epoch}"}]`);
  const [, rejoined] = await frames(a.received, 2);
  assert.deepEqual(rejoined[4].response, { position: `4:${epoch}`, recovered: false });

  // Quiet for historyTtl: the stream is gone and the next one has another epoch.
  now = 1000;
  server.tick();
  const fresh = server.publish("feed:1", "m", { n: 5 });
  assert.match(fresh.position, /^1:/);
  assert.notEqual(fresh.position.split(":")[1], epoch);
  await frames(a.received, 1);
  // Another server never shares an epoch.
  assert.notEqual(new FakeServer({ channels: { feed: { history: 1 } } }).publish("feed:1", "m", {}).position, first.position);
});

test("limits apply as on the node", async () => {
  const server = new FakeServer({ maxTopicsPerSocket: 1, maxTopicBytes: 8, maxFrameBytes: 64 });
  const a = await connect(server);
  a.socket.send('["1","1","t:123456789","phx_join",{}]');
  a.socket.send('["2","2","t:1","phx_join",{}]');
  a.socket.send('["3","3","t:2","phx_join",{}]');
  assert.deepEqual(await frames(a.received, 3), [
    error("1", "1", "t:123456789", "invalid topic: topic is 11 bytes long; the limit is 8 bytes"),
    ok("2", "2", "t:1"),
    error("3", "3", "t:2", "too many channels joined"),
  ]);
  const closed = event(a.socket, "close");
  a.socket.send(`[null,"4","t:1","e",{"pad":"${"x".repeat(64)}"}]`);
  assert.deepEqual([(await closed).code, (await closed).reason], [1009, "frame too large"]);
});
