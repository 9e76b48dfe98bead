// The official phoenix client runs one script (scenario.mjs) against FakeServer, from the
// ES module and the CommonJS entry points, and against a real switchboard node; all three must
// observe the same. The node is $SWITCHBOARD_BIN, else <workspace>/target/debug/switchboard
// (`cargo build -p switchboard-node --bin switchboard`); it listens behind a TCP proxy here, so
// the script can drop its connections as FakeServer's `disconnect(…, 1006)` drops them.
//
// With $OBSERVATIONS_FILE set, the FakeServer observations are written there (wasm/test.sh
// compares them with the browser run).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

import { Presence, Socket } from "phoenix";
import WebSocket from "ws";
import { FakeServer } from "switchboard-wasm";

import { CHANNELS, CHANNELS_TOML, SECRET, scenario } from "./scenario.mjs";

const require = createRequire(import.meta.url);
const WORKSPACE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const API_KEY = "scenario-api-key";

/** The scenario's target for a FakeServer class. */
function fakeTarget(FakeServerClass) {
  const server = new FakeServerClass({ tokenSecret: SECRET, channels: CHANNELS });
  return {
    Socket,
    Presence,
    url: "ws://localhost/socket",
    transport: server.WebSocket,
    token: (sub) => server.token(sub),
    broadcast: async (topic, event, payload) => server.broadcast(topic, event, payload),
    drop: async () => {
      server.disconnect(undefined, 1006);
    },
  };
}

/** An HS256 token signed here (not by the code under test). */
function sign(sub) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const input = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${input}.${createHmac("sha256", SECRET).update(input).digest("base64url")}`;
}

/** Starts the node with the scenario's secret and rules; resolves to { child, addr }. */
function startNode() {
  const bin = process.env.SWITCHBOARD_BIN || path.join(WORKSPACE, "target", "debug", "switchboard");
  if (!existsSync(bin)) {
    throw new Error(`no switchboard binary at ${bin}: run \`cargo build -p switchboard-node --bin switchboard\` (or set SWITCHBOARD_BIN)`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), "switchboard-scenario-"));
  const config = path.join(dir, "switchboard.toml");
  writeFileSync(config, CHANNELS_TOML);
  // Only what the node needs from the environment: its configuration variables must not leak in.
  const env = { PATH: process.env.PATH ?? "", RUST_LOG: "warn" };
  const args = ["--bind", "127.0.0.1:0", "--token-secret", SECRET, "--api-key", API_KEY, "--config", config];
  const child = spawn(bin, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  const stderr = [];
  readline.createInterface({ input: child.stderr }).on("line", (line) => stderr.push(line));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`no listening line within 20 s:\n${stderr.join("\n")}`));
    }, 20_000);
    let first = true;
    readline.createInterface({ input: child.stdout }).on("line", (line) => {
      if (!first) return;
      first = false;
      clearTimeout(timer);
      const match = /^switchboard listening on http:\/\/(\S+)$/.exec(line);
      if (match) {
        resolve({ child, addr: match[1], stop: () => (child.kill("SIGKILL"), rmSync(dir, { recursive: true, force: true })) });
      } else {
        child.kill("SIGKILL");
        reject(new Error(`unexpected first line ${JSON.stringify(line)}:\n${stderr.join("\n")}`));
      }
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the node exited (${code ?? signal}) before listening:\n${stderr.join("\n")}`));
    });
  });
}

/** A TCP proxy to `addr` whose `drop()` cuts every connection through it. */
function startProxy(addr) {
  const [host, port] = [addr.slice(0, addr.lastIndexOf(":")), Number(addr.slice(addr.lastIndexOf(":") + 1))];
  const open = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, host);
    const pair = [client, upstream];
    open.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      open.delete(pair);
    };
    for (const socket of pair) socket.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({
        addr: `127.0.0.1:${server.address().port}`,
        drop: async () => {
          for (const [client, upstream] of open) {
            client.destroy();
            upstream.destroy();
          }
          open.clear();
        },
        close: () => server.close(),
      });
    });
  });
}

const observations = {};

test("phoenix against FakeServer (ES module)", async () => {
  observations.esm = await scenario(fakeTarget(FakeServer));
  if (process.env.OBSERVATIONS_FILE) {
    writeFileSync(process.env.OBSERVATIONS_FILE, `${JSON.stringify(observations.esm, null, 1)}\n`);
  }
  // What the script sees, spelled out once: the other runs must see the same.
  const expected = [
    ["alice open"],
    ["alice joins room:lobby", { status: "ok", response: {} }],
    ["alice joins admin:panel", { status: "error", response: { reason: "unauthorized" } }],
    ["alice joins auditlog:alice", { status: "ok", response: {} }],
    ["alice pushes to auditlog:alice", { status: "error", response: { reason: "unauthorized" } }],
    ["alice joins auditlog:bob", { status: "error", response: { reason: "unauthorized" } }],
    ["bob joins room:lobby", { status: "ok", response: {} }],
    ["alice pushes new_msg", { status: "ok", response: {} }],
    ["alice receives", { body: "hi" }],
    ["bob receives", { body: "hi" }],
    ["server broadcast reaches", 2],
    ["alice receives", { n: 1 }],
    ["bob receives", { n: 1 }],
    ["bob leaves room:lobby", { status: "ok", response: {} }],
    ["server broadcast reaches", 1],
    ["alice receives", { n: 2 }],
    ["alice's heartbeat answered"],
    ["mallory error"],
    ["mallory close", 1006],
    ["alice close", 1006],
    ["alice reopened"],
    ["alice channels", ["joined", "joined", "closed", "closed"]],
    ["server broadcast reaches", 1],
    ["alice receives", { n: 3 }],
    ["alice pushes new_msg", { status: "ok", response: {} }],
    ["alice receives", { body: "again" }],
    ["carol joins chat:lobby", { status: "ok", response: {} }],
    ["carol sees", [["carol", [{ status: "online" }]]]],
    ["dave joins chat:lobby", { status: "ok", response: {} }],
    ["dave sees", [["carol", [{ status: "online" }]], ["dave", [{ status: "away" }]]]],
    ["carol sees", [["carol", [{ status: "online" }]], ["dave", [{ status: "away" }]]]],
    ["carol updates", { status: "ok", response: {} }],
    ["dave sees", [["carol", [{ status: "typing" }]], ["dave", [{ status: "away" }]]]],
    ["carol pushes presence_diff", { status: "error", response: { reason: "presence_state and presence_diff are sent by the server only" } }],
    ["dave leaves chat:lobby", { status: "ok", response: {} }],
    ["carol sees", [["carol", [{ status: "typing" }]]]],
    ["erin joins feed:news", { status: "ok", response: { position: 0 } }],
    ["server broadcast reaches", 1],
    ["server broadcast reaches", 1],
    ["erin leaves feed:news", { status: "ok", response: {} }],
    ["server broadcast reaches", 0],
    ["server broadcast reaches", 0],
    ["erin rejoins feed:news since 2", { status: "ok", response: { position: 4, recovered: true } }],
    ["server broadcast reaches", 1],
    ["erin heard", [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]],
    ["erin leaves feed:news", { status: "ok", response: {} }],
    ["erin joins feed:news since another epoch", { status: "ok", response: { position: 5, recovered: false } }],
  ];
  assert.deepEqual(observations.esm, expected);
});

test("phoenix against FakeServer (CommonJS) observes the same", async () => {
  const { FakeServer: CommonJsFakeServer } = require("switchboard-wasm");
  assert.notEqual(CommonJsFakeServer, undefined);
  observations.cjs = await scenario(fakeTarget(CommonJsFakeServer));
  assert.deepEqual(observations.cjs, observations.esm);
});

test("phoenix against a real node observes the same", async () => {
  const node = await startNode();
  const proxy = await startProxy(node.addr);
  after(() => {
    proxy.close();
    node.stop();
  });
  observations.node = await scenario({
    Socket,
    Presence,
    url: `ws://${proxy.addr}/socket`,
    transport: WebSocket,
    token: sign,
    broadcast: async (topic, event, payload) => {
      const response = await fetch(`http://${node.addr}/api/publish`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${API_KEY}` },
        body: JSON.stringify({ topic, event, payload }),
      });
      const body = await response.json();
      assert.equal(response.status, 200, JSON.stringify(body));
      return body.recipients;
    },
    drop: proxy.drop,
  });
  assert.deepEqual(observations.node, observations.esm);
});
