// The package's shape: both builds, CommonJS and ESM entry points, TypeScript declarations.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";

const require = createRequire(import.meta.url);

test("require() gets the ready-to-use Node build", () => {
  const { PubSub } = require("switchboard-wasm");
  const pubsub = new PubSub();
  let got;
  pubsub.subscribe("s", "t", (topic, message) => (got = message));
  pubsub.broadcast("t", [1, 2]);
  assert.deepEqual(got, [1, 2]);
});

test("the web build initialises from the module bytes", async () => {
  const web = await import("switchboard-wasm/web");
  const bytes = readFileSync(require.resolve("switchboard-wasm/web/switchboard_wasm_bg.wasm"));
  web.initSync({ module: bytes });
  const pubsub = new web.PubSub();
  pubsub.subscribe("s", "t", () => {});
  assert.equal(pubsub.broadcast("t", {}), 1);
});

test("TypeScript declarations ship with both builds", () => {
  const root = dirname(require.resolve("switchboard-wasm/package.json"));
  const pkg = require("switchboard-wasm/package.json");
  for (const types of [pkg.types, pkg.exports["."].node.types, pkg.exports["."].browser.types]) {
    const text = readFileSync(join(root, types), "utf8");
    for (const name of ["export class PubSub", "export class RecordingPubSub", "export function decodeFrame", "export function encodeFrame", "export interface PubSubOptions", "export type Handler"]) {
      assert.ok(text.includes(name), `${types} declares ${name}`);
    }
  }
});
