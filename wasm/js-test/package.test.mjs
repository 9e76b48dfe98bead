// The package's shape: both builds, CommonJS and ESM entry points, TypeScript declarations.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";

const require = createRequire(import.meta.url);

test("require() gets the ready-to-use Node build", async () => {
  const { FakeServer, decodeFrame, encodeFrame } = require("switchboard-wasm");
  assert.equal(typeof decodeFrame, "function");
  assert.equal(typeof encodeFrame, "function");
  const server = new FakeServer();
  const socket = new server.WebSocket("ws://localhost/socket/websocket?vsn=2.0.0");
  await new Promise((resolve) => (socket.onopen = resolve));
  assert.equal(server.sockets.length, 1);
  socket.close();
});

test("the ES module and CommonJS entry points share one build", async () => {
  const esm = await import("switchboard-wasm");
  assert.equal(esm.FakeServer, require("switchboard-wasm").FakeServer);
  assert.deepEqual(Object.keys(esm).sort(), ["FakeServer", "decodeFrame", "default", "encodeFrame"]);
  assert.equal(require("switchboard-wasm").FakeServerEngine, undefined, "the engine stays internal");
});

test("the web build initialises from the module bytes", async () => {
  const web = await import("switchboard-wasm/web");
  assert.throws(() => new web.FakeServer(), { code: "not_initialized" });
  const bytes = readFileSync(require.resolve("switchboard-wasm/web/switchboard_wasm_bg.wasm"));
  web.initSync({ module: bytes });
  const server = new web.FakeServer();
  const socket = new server.WebSocket("ws://localhost/socket/websocket?vsn=2.0.0");
  await new Promise((resolve) => (socket.onopen = resolve));
  socket.send('[null,"1","phoenix","heartbeat",{}]');
  const reply = await new Promise((resolve) => (socket.onmessage = (event) => resolve(JSON.parse(event.data))));
  assert.deepEqual(reply, [null, "1", "phoenix", "phx_reply", { status: "ok", response: {} }]);
  assert.deepEqual(web.decodeFrame('[null,"1","phoenix","heartbeat",{}]').kind, "heartbeat");
});

test("TypeScript declarations ship with both builds", () => {
  const root = dirname(require.resolve("switchboard-wasm/package.json"));
  const pkg = require("switchboard-wasm/package.json");
  for (const types of [pkg.types, pkg.exports["."].node.types, pkg.exports["."].browser.types]) {
    const text = readFileSync(join(root, types), "utf8");
    for (const name of [
      "export declare class FakeServer",
      "export interface FakeServerOptions",
      "export interface FakeWebSocketConstructor",
      "export interface FakeSocketInfo",
      'export * from "./switchboard_wasm.js"',
    ]) {
      assert.ok(text.includes(name), `${types} declares ${name}`);
    }
    assert.ok(!text.includes("FakeServerEngine"), `${types} keeps the engine internal`);
  }
});
