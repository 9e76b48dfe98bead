// The official `phoenix` JavaScript client against a real switchboard node: join, push and
// receive, broadcasts between sockets, an HTTP publish, heartbeats, leave, and a join error.
//
// Run with `npm test` (or `node --test`) in tests/js after `cargo build -p switchboard-node`.
// The binary is $SWITCHBOARD_BIN, else $CARGO_TARGET_DIR/debug/switchboard, else
// <workspace>/target/debug/switchboard (see harness.mjs, which starts it). Node 20 has no global
// WebSocket, so the `ws` package is passed as the transport.

import { test, after } from "node:test";
import assert from "node:assert/strict";

import { Socket } from "phoenix";
import WebSocket from "ws";

import { Node, within as withinMs } from "./harness.mjs";

const PATIENCE_MS = 10_000;

/** Resolves with the value `register(resolve, reject)` delivers, or rejects after PATIENCE_MS. */
function within(what, register) {
  return withinMs(what, register, PATIENCE_MS);
}

/** A push's outcome: resolves on "ok", rejects on "error" or "timeout". */
function reply(push, what) {
  return within(what, (resolve, reject) => {
    push
      .receive("ok", resolve)
      .receive("error", (resp) => reject(new Error(`${what}: error ${JSON.stringify(resp)}`)))
      .receive("timeout", () => reject(new Error(`${what}: timeout`)));
  });
}

/** The next `event` on `channel`. */
function next(channel, event) {
  return within(`${event} on ${channel.topic}`, (resolve) => {
    const ref = channel.on(event, (payload) => {
      channel.off(event, ref);
      resolve(payload);
    });
  });
}

function connect(addr, opts = {}) {
  const socket = new Socket(`ws://${addr}/socket`, {
    transport: WebSocket,
    reconnectAfterMs: () => 60_000,
    ...opts,
  });
  const opened = within("socket open", (resolve) => socket.onOpen(resolve));
  socket.connect();
  return opened.then(() => socket);
}

const node = await new Node("node", []).start();
const sockets = [];

after(async () => {
  for (const socket of sockets) socket.disconnect();
  await node.kill();
});

test("the phoenix client joins, pushes, receives broadcasts and leaves", async () => {
  const problems = [];
  const heartbeatReplies = [];
  const socket = await connect(node.addr, { heartbeatIntervalMs: 200 });
  sockets.push(socket);
  socket.onError((error) => problems.push(`error: ${error?.message ?? error}`));
  socket.onClose((event) => problems.push(`close: ${event?.code}`));
  socket.onMessage((msg) => {
    if (msg.topic === "phoenix" && msg.event === "phx_reply") heartbeatReplies.push(msg);
  });

  // Two topics on one socket.
  const lobby = socket.channel("room:lobby", { user: "alice" });
  const side = socket.channel("room:side", {});
  await reply(lobby.join(), "join room:lobby");
  await reply(side.join(), "join room:side");
  assert.equal(lobby.state, "joined");
  assert.equal(side.state, "joined");

  // A push comes back to the sender as a broadcast, and gets its ok reply.
  const own = next(lobby, "new_msg");
  await reply(lobby.push("new_msg", { body: "hi" }), "push new_msg");
  assert.deepEqual(await own, { body: "hi" });

  // A broadcast from a second socket arrives.
  const other = await connect(node.addr);
  sockets.push(other);
  const otherSide = other.channel("room:side", {});
  await reply(otherSide.join(), "second socket joins room:side");
  const shout = next(side, "shout");
  await reply(otherSide.push("shout", { from: "bob" }), "push shout");
  assert.deepEqual(await shout, { from: "bob" });

  // An HTTP publish arrives too.
  const published = next(lobby, "from_http");
  const response = await fetch(`http://${node.addr}/api/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic: "room:lobby", event: "from_http", payload: { n: 1 } }),
  });
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), { ok: true, recipients: 1 });
  assert.deepEqual(await published, { n: 1 });

  // Heartbeats every 200 ms are answered, and the socket never drops or reconnects.
  await within("three heartbeat replies", (resolve) => {
    const poll = setInterval(() => {
      if (heartbeatReplies.length >= 3) {
        clearInterval(poll);
        resolve();
      }
    }, 50);
  });
  for (const hb of heartbeatReplies) assert.equal(hb.payload.status, "ok");
  assert.ok(socket.isConnected());
  assert.deepEqual(problems, []);

  // Leaving closes the channel, and the node stops delivering to it.
  const closed = within("room:lobby channel close", (resolve) => lobby.onClose(resolve));
  await reply(lobby.leave(), "leave room:lobby");
  await closed;
  assert.equal(lobby.state, "closed");
  const afterLeave = await fetch(`http://${node.addr}/api/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic: "room:lobby", payload: {} }),
  });
  assert.deepEqual(await afterLeave.json(), { ok: true, recipients: 0 });

  // The other channel is unaffected.
  const still = next(side, "still");
  await reply(otherSide.push("still", {}), "push still");
  assert.deepEqual(await still, {});
  assert.deepEqual(problems, []);
});

test("a join with an invalid topic surfaces through receive('error')", async () => {
  const socket = await connect(node.addr);
  sockets.push(socket);
  const bad = socket.channel("x".repeat(300), {});
  const response = await within("join error", (resolve, reject) => {
    bad
      .join()
      .receive("ok", () => reject(new Error("an invalid topic was joined")))
      .receive("error", resolve)
      .receive("timeout", () => reject(new Error("join timed out")));
  });
  assert.match(response.reason, /^invalid topic/);
  bad.leave();

  // The socket stays usable.
  const good = socket.channel("room:fine", {});
  await reply(good.join(), "join room:fine after the error");
});
