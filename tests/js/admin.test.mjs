// The inspector page (/admin) in a real headless Chromium, driven over the Chrome DevTools
// Protocol (a small client on the `ws` package; no Puppeteer, no browser download: Debian's
// `chromium`, or $CHROMIUM_BIN). Against a node with an API key, presence on `room:*` and
// history on `feed:*`:
//   - a wrong key is refused (the page says so; every JSON endpoint answers 401 without it),
//   - the right key, typed and submitted from the keyboard, opens the page,
//   - topics that phoenix.js clients joined are listed with their counts, and filtered,
//   - a topic opened from the keyboard shows presence and history; its live tail shows
//     messages published meanwhile, and is neither a presence member nor a connection,
//   - the publish form checks its JSON inline, then publishes; a phoenix.js client gets it,
//   - the layout fits a phone's width,
//   - on a node without an API key the page opens without asking and says the node is open,
//   - nothing reaches the console: no error, no CSP violation, no exception.
// It writes docs/admin.png (the screenshot README shows) and prints the page's weight.
// A separate test (no browser) shows a tail that stops reading is evicted as a slow consumer.
//
// Run with `node --test` in tests/js after `cargo build -p switchboard-node`.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";

import { Socket } from "phoenix";
import WebSocket from "ws";

import { Node, WORKSPACE, stopAll, track, within as withinMs } from "./harness.mjs";

const SCREENSHOT = path.join(WORKSPACE, "docs", "admin.png");
const KEY = "inspector-test-key";
const PATIENCE_MS = 15_000;
const PAGE_WEIGHT_BUDGET = 64 * 1024;
const CONFIG = `
[channels.room]
presence = true

[channels.feed]
history = 50
`;

const scratch = mkdtempSync(path.join(os.tmpdir(), "switchboard-admin-"));

/** Starts a node with `args` on a free port; resolves to the started Node (`addr`, `child`). */
function startNode(args) {
  return new Node("node", args, { env: { RUST_LOG: "warn" } }).start();
}

/** Resolves once `check()` returns a truthy value (which it resolves with). */
async function until(what, check, ms = PATIENCE_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last?.stack ?? JSON.stringify(last)})`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

// ---- Chromium over the DevTools protocol ----------------------------------------------------

/** Starts headless Chromium; resolves to { child, port }. */
function startChromium() {
  const bin = process.env.CHROMIUM_BIN || "chromium";
  const profile = mkdtempSync(path.join(scratch, "profile-"));
  const child = spawn(
    bin,
    [
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--no-first-run",
      "--no-default-browser-check",
      "--disable-extensions",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--mute-audio",
      "--hide-scrollbars",
      "--remote-debugging-address=127.0.0.1",
      "--remote-debugging-port=0",
      `--user-data-dir=${profile}`,
      "--window-size=1280,900",
      "about:blank",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  track(child);
  const stderr = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`chromium did not start within 30 s:\n${stderr.join("\n")}`)), 30_000);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${bin} (${error.message}): install Debian's chromium (apt-get install chromium) or set CHROMIUM_BIN`));
    });
    readline.createInterface({ input: child.stderr }).on("line", (line) => {
      stderr.push(line);
      const match = /DevTools listening on ws:\/\/[^:]+:(\d+)\//.exec(line);
      if (match) {
        clearTimeout(timer);
        resolve({ child, port: Number(match[1]) });
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`chromium exited (${code}):\n${stderr.join("\n")}`));
    });
  });
}

/** A DevTools session with one page. */
class Page {
  static async open(port) {
    const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
    const target = targets.find((t) => t.type === "page");
    const socket = new WebSocket(target.webSocketDebuggerUrl, { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 });
    await new Promise((resolve, reject) => {
      socket.once("open", resolve);
      socket.once("error", reject);
    });
    return new Page(socket);
  }

  constructor(socket) {
    this.socket = socket;
    this.next = 1;
    this.pending = new Map();
    this.listeners = new Map();
    socket.on("message", (data) => {
      const message = JSON.parse(data.toString());
      if (message.id && this.pending.has(message.id)) {
        const { resolve, reject, method } = this.pending.get(message.id);
        this.pending.delete(message.id);
        if (message.error) reject(new Error(`${method}: ${message.error.message}`));
        else resolve(message.result);
      } else if (message.method) {
        for (const listener of this.listeners.get(message.method) ?? []) listener(message.params);
      }
    });
  }

  send(method, params = {}) {
    const id = this.next++;
    this.socket.send(JSON.stringify({ id, method, params }));
    return new Promise((resolve, reject) => this.pending.set(id, { resolve, reject, method }));
  }

  on(method, listener) {
    if (!this.listeners.has(method)) this.listeners.set(method, []);
    this.listeners.get(method).push(listener);
  }

  /** The value of a JavaScript expression in the page (promises awaited). */
  async eval(expression) {
    const { result, exceptionDetails } = await this.send("Runtime.evaluate", {
      expression,
      awaitPromise: true,
      returnByValue: true,
    });
    if (exceptionDetails) throw new Error(`${expression}: ${exceptionDetails.exception?.description ?? exceptionDetails.text}`);
    return result.value;
  }

  waitFor(what, expression, ms) {
    return until(what, () => this.eval(expression), ms);
  }

  async navigate(url) {
    const loaded = new Promise((resolve) => this.on("Page.loadEventFired", resolve));
    await this.send("Page.navigate", { url });
    await loaded;
  }

  /** Types `text` where the keyboard focus is, as a user would (input events included). */
  type(text) {
    return this.send("Input.insertText", { text });
  }

  async press(key) {
    const keys = {
      Enter: { code: "Enter", windowsVirtualKeyCode: 13, text: "\r" },
      Escape: { code: "Escape", windowsVirtualKeyCode: 27 },
      Tab: { code: "Tab", windowsVirtualKeyCode: 9 },
    };
    const { text, ...rest } = keys[key];
    await this.send("Input.dispatchKeyEvent", { type: "keyDown", key, ...rest, text });
    await this.send("Input.dispatchKeyEvent", { type: "keyUp", key, ...rest });
  }

  async viewport(width, height, mobile = false) {
    await this.send("Emulation.setDeviceMetricsOverride", {
      width,
      height,
      deviceScaleFactor: 1,
      mobile,
    });
  }
}

// ---- phoenix.js clients -------------------------------------------------------------------

function within(what, register) {
  return withinMs(what, register, PATIENCE_MS);
}

async function phoenixClient(addr, user) {
  const socket = new Socket(`ws://${addr}/socket`, {
    transport: WebSocket,
    params: user ? { user } : {},
    reconnectAfterMs: () => 60_000,
  });
  const opened = within("socket open", (resolve) => socket.onOpen(resolve));
  socket.connect();
  await opened;
  sockets.push(socket);
  return socket;
}

function join(socket, topic) {
  const channel = socket.channel(topic, {});
  return within(`join ${topic}`, (resolve, reject) => {
    channel
      .join()
      .receive("ok", () => resolve(channel))
      .receive("error", (e) => reject(new Error(`join ${topic}: ${JSON.stringify(e)}`)))
      .receive("timeout", () => reject(new Error(`join ${topic}: timeout`)));
  });
}

// ---- the scenario ---------------------------------------------------------------------------

const sockets = [];
let node;
let base;
let page;
const problems = [];
const weight = { requests: [], bytes: 0 };

function api(pathname, { key = KEY, method = "GET", body } = {}) {
  return fetch(`${base}${pathname}`, {
    method,
    headers: {
      ...(key ? { authorization: `Bearer ${key}` } : {}),
      ...(body ? { "content-type": "application/json" } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
}

async function publish(topic, event, payload) {
  const response = await api("/api/publish", { method: "POST", body: { topic, event, payload } });
  assert.equal(response.status, 200);
  return response.json();
}

const text = (selector) => `(document.querySelector(${JSON.stringify(selector)})?.textContent ?? "")`;
const visible = (selector) => `(() => { const e = document.querySelector(${JSON.stringify(selector)}); return !!e && !e.closest("[hidden]"); })()`;

before(async () => {
  const config = path.join(scratch, "node.toml");
  writeFileSync(config, CONFIG);
  node = await startNode(["--api-key", KEY, "--config", config]);
  base = `http://${node.addr}`;
  const chromium = await startChromium();
  page = await Page.open(chromium.port);
  page.on("Runtime.exceptionThrown", ({ exceptionDetails }) =>
    problems.push(`exception: ${exceptionDetails.exception?.description ?? exceptionDetails.text}`),
  );
  page.on("Runtime.consoleAPICalled", ({ type, args }) => {
    if (type === "error" || type === "warning" || type === "assert") {
      problems.push(`console.${type}: ${args.map((a) => a.value ?? a.description).join(" ")}`);
    }
  });
  page.on("Log.entryAdded", ({ entry }) => {
    if (entry.level === "error" || entry.level === "warning") problems.push(`${entry.source} ${entry.level}: ${entry.text} ${entry.url ?? ""}`);
  });
  const urls = new Map();
  page.on("Network.requestWillBeSent", ({ requestId, request }) => urls.set(requestId, request.url));
  page.on("Network.loadingFinished", ({ requestId, encodedDataLength }) => {
    const url = urls.get(requestId);
    // The page shows its icon twice: with the cache disabled Chromium fetches it twice, where a
    // first visit fetches it once.
    if (weight.done || weight.requests.some((request) => request.url === url)) return;
    weight.requests.push({ url, bytes: encodedDataLength });
    weight.bytes += encodedDataLength;
  });
  for (const domain of ["Page", "Runtime", "Log", "Network"]) await page.send(`${domain}.enable`);
  await page.send("Network.setCacheDisabled", { cacheDisabled: true });
  await page.viewport(1280, 900);
});

after(async () => {
  for (const socket of sockets) socket.disconnect();
  if (page) {
    // Closing the browser from inside ends its helper processes too, which a kill of the main
    // process does not: they could still be writing into the profile while it is removed.
    const closed = new Promise((resolve) => page.socket.once("close", resolve));
    page.send("Browser.close").catch(() => {});
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 5_000))]);
    page.socket.close();
  }
  await stopAll();
  rmSync(scratch, { recursive: true, force: true, maxRetries: 5 });
});

test("a wrong key is refused, by the page and by every endpoint behind it", async () => {
  for (const endpoint of ["/admin/api/status", "/admin/api/topics", "/admin/api/topic?topic=room:lobby", "/admin/api/tail?topic=room:lobby"]) {
    for (const key of [null, "wrong"]) {
      const response = await api(endpoint, { key });
      assert.equal(response.status, 401, `${endpoint} with key ${key}`);
      await response.body?.cancel();
    }
  }
  assert.deepEqual(await (await api("/admin/api/auth", { key: "wrong" })).json(), { required: true, accepted: false });

  await page.navigate(`${base}/admin`);
  await page.waitFor("the key prompt", visible("#login-form"));
  weight.done = true; // the first load is over: the page, its files and the auth check
  assert.equal(await page.eval(visible("#app")), false, "nothing is shown before the key");
  assert.equal(await page.eval("document.activeElement.id"), "key", "the key field has the focus");
  await page.type("not-the-key");
  await page.press("Enter");
  await page.waitFor("the refusal", `${text("#login-error")}.includes("refused")`);
  assert.equal(await page.eval(visible("#app")), false);
  assert.equal(await page.eval(`document.querySelector("#key").getAttribute("aria-invalid")`), "true");
});

test("the key, typed and submitted from the keyboard, opens the page", async () => {
  // The wrong key is selected after the refusal: typing replaces it.
  await page.type(KEY);
  await page.press("Enter");
  await page.waitFor("the page", visible("#app"));
  await page.waitFor("the node's status", `${text("#f-backend")} === "memory"`);
  assert.match(await page.eval(text("#f-version")), /^\d+\.\d+\.\d+/);
  assert.equal(await page.eval(text("#f-ready")), "ready");
  assert.equal(await page.eval(text("#f-publish")), "API key");
  assert.equal(await page.eval(visible("#open-banner")), false, "the node has a key: not open");
  assert.equal(await page.eval(`sessionStorage.getItem("switchboard.inspector.key")`), KEY);
});

let alice;
let lobby;

test("topics that phoenix.js clients joined are listed with their counts, and filtered", async () => {
  alice = await phoenixClient(node.addr, "alice");
  const bob = await phoenixClient(node.addr, "bob");
  const carol = await phoenixClient(node.addr);
  lobby = await join(alice, "room:lobby");
  await join(bob, "room:lobby");
  await join(carol, "room:quiet");
  await join(carol, "feed:news");
  await publish("feed:news", "headline", { title: "first" });
  await publish("feed:news", "headline", { title: "second" });

  const rows = `[...document.querySelectorAll("#topic-rows tr:not([hidden])")].map((tr) => tr.innerText.replace(/\\s+/g, " ").trim())`;
  const listed = await page.waitFor("three topics", `(() => { const r = ${rows}; return r.length === 3 && r; })()`);
  assert.deepEqual(listed, ["room:lobby 2", "feed:news 1", "room:quiet 1"], "most subscribers first, then by name");
  await page.waitFor("the connection count", `document.querySelector("#cards .value")?.firstChild?.textContent === "3"`);

  await page.eval(`document.querySelector("#filter").focus()`);
  await page.type("quiet");
  await page.waitFor("the filtered list", `(() => { const r = ${rows}; return r.length === 1 && r[0] === "room:quiet 1"; })()`);
  assert.match(await page.eval(text("#topics-count")), /^1 of 3$/);
  await page.eval(`(() => { const f = document.querySelector("#filter"); f.value = ""; f.dispatchEvent(new Event("input")); })()`);
  await page.waitFor("the whole list again", `${rows}.length === 3`);
});

test("a topic with history opens with its recent publications; the form publishes with a position", async () => {
  await page.eval(`[...document.querySelectorAll("#topic-rows button")].find((b) => b.textContent === "feed:news").click()`);
  await page.waitFor("the topic view", `${text("#topic-name")} === "feed:news"`);
  await page.waitFor("the history", `document.querySelectorAll("#history-list li").length === 2`);
  assert.match(await page.eval(text("#history-list li:first-child")), /headline.*2:.*"title":"second"/s, "newest first");
  assert.equal(await page.eval(visible("#presence-box")), false, "feed:* tracks no presence");
  assert.equal(await page.eval(`document.querySelector("#p-topic").value`), "feed:news", "the form follows the topic");

  await page.eval(`document.querySelector("#p-event").value = "headline"`);
  await page.eval(`document.querySelector("#p-payload").value = '{"title": "third"}'`);
  await page.eval(`document.querySelector("#p-send").click()`);
  await page.waitFor("the publish result", `${text("#p-result")}.includes("position 3:")`);
  assert.match(await page.eval(text("#p-result")), /delivered to 1 subscriber on this node/);
  await page.waitFor("the new publication in the history", `document.querySelectorAll("#history-list li").length === 3`, 10_000);
});

test("a topic opened from the keyboard shows presence; its live tail shows what is published", async () => {
  await page.eval(`[...document.querySelectorAll("#topic-rows button")].find((b) => b.textContent === "room:lobby").focus()`);
  await page.press("Enter");
  await page.waitFor("the topic view", `${text("#topic-name")} === "room:lobby"`);
  assert.equal(await page.eval("document.activeElement.id"), "topic-title", "the focus moves to the topic");
  await page.waitFor("the presence list", `${text("#presence-count")} === "2 keys, 2 members"`);
  assert.match(await page.eval(text("#presence-list")), /alice.*bob/s);
  assert.equal(await page.eval(visible("#history-box")), false, "room:* keeps no history");

  await page.eval(`document.querySelector("#tail-toggle").click()`);
  await page.waitFor("the tail", `${text("#tail-status")}.startsWith("Tailing room:lobby")`);
  await page.waitFor("the tail among the subscribers", `${text("#t-subscribers")} === "3 (1 inspector tail)"`);
  const status = await (await api("/admin/api/status")).json();
  assert.equal(status.gauges.tails, 1);
  assert.equal(status.gauges.connections, 3, "a tail is no connection");
  assert.equal(status.gauges.sessions, 4, "but it is a session of the hub");
  const presence = await (await api("/api/presence?topic=room:lobby")).json();
  assert.equal(presence.members, 2, "a tail is no presence member");

  for (let n = 1; n <= 3; n++) {
    const published = await publish("room:lobby", "tick", { n });
    assert.equal(published.recipients, 3, "two sockets and the tail");
  }
  await page.waitFor("three ticks in the tail", `document.querySelectorAll("#tail-list li").length === 3`);
  assert.match(await page.eval(text("#tail-list li:first-child")), /tick.*\{"n":3\}/s, "newest first");
  assert.equal(await page.eval(text("#tail-count")), "3 messages");
});

test("the publish form checks the JSON inline, then publishes to a phoenix.js client", async () => {
  await page.eval(`document.querySelector("#p-event").value = "from_admin"`);
  await page.eval(`document.querySelector("#p-payload").value = '{"hello": "world"'`);
  await page.eval(`document.querySelector("#p-send").click()`);
  await page.waitFor("the inline error", `${text("#p-payload-error")}.startsWith("Not valid JSON")`);
  assert.equal(await page.eval(`document.querySelector("#p-payload").getAttribute("aria-invalid")`), "true");
  assert.equal(await page.eval("document.activeElement.id"), "p-payload", "the focus goes to the field to fix");
  assert.equal(await page.eval(text("#p-result")), "", "nothing was sent");

  const received = within("from_admin on the phoenix client", (resolve) => lobby.on("from_admin", resolve));
  await page.eval(`document.querySelector("#p-payload").value = '{"hello": "world"}'`);
  await page.eval(`document.querySelector("#p-send").click()`);
  assert.deepEqual(await received, { hello: "world" });
  await page.waitFor("the publish result", `${text("#p-result")}.includes("delivered to 3 subscribers on this node")`);
  assert.equal(await page.eval(text("#p-payload-error")), "");
  await page.waitFor("the message in the tail", `${text("#tail-list li:first-child")}.includes("from_admin")`);
});

test("the page is captured at 1280 px and fits a phone", async () => {
  // Some traffic for the charts and the tail, then the whole page.
  for (let n = 4; n <= 18; n++) {
    await publish("room:lobby", "tick", { n });
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  await page.eval("document.activeElement.blur()");
  const height = await page.eval("Math.ceil(document.documentElement.scrollHeight)");
  await page.viewport(1280, height);
  await new Promise((resolve) => setTimeout(resolve, 1200));
  const { data } = await page.send("Page.captureScreenshot", { format: "png" });
  writeFileSync(SCREENSHOT, Buffer.from(data, "base64"));

  await page.viewport(390, 844, true);
  await new Promise((resolve) => setTimeout(resolve, 500));
  const overflow = await page.eval("document.documentElement.scrollWidth - window.innerWidth");
  assert.ok(overflow <= 0, `the page is ${overflow} px wider than a phone`);
  await page.viewport(1280, 900);
});

test("stopping the tail lets the topic go back to its sockets", async () => {
  await page.eval(`document.querySelector("#tail-toggle").click()`);
  assert.equal(await page.eval(text("#tail-toggle")), "Start tail");
  // The node notices a closed tail at its next keepalive write (every 5 s).
  await page.waitFor("the tail gone", `${text("#t-subscribers")} === "2"`, 20_000);
  const status = await (await api("/admin/api/status")).json();
  assert.equal(status.gauges.tails, 0);
  assert.equal(status.gauges.sessions, 3);
});

test("on a node without an API key the page opens at once and says the node is open", async () => {
  const open = await startNode([]);
  await page.navigate(`http://${open.addr}/admin`);
  await page.waitFor("the page", visible("#app"));
  assert.equal(await page.eval(visible("#login")), false, "no key is asked for");
  assert.equal(await page.eval(visible("#open-banner")), true);
  assert.match(await page.eval(text("#open-banner")), /This node is open/);
  assert.equal(await page.eval(visible("#sign-out")), false);
  await page.waitFor("the node's status", `${text("#f-publish")} === "open"`);
  open.child.kill("SIGTERM");
});

test("nothing reached the console, and the first load is light", async () => {
  assert.deepEqual(problems, []);
  const files = weight.requests.map(({ url, bytes }) => `${new URL(url).pathname} ${bytes} B`);
  console.log(`inspector first load: ${weight.bytes} bytes transferred in ${weight.requests.length} requests (${files.join(", ")})`);
  assert.ok(weight.bytes > 0 && weight.bytes < PAGE_WEIGHT_BUDGET, `${weight.bytes} bytes`);
});

test("a tail that stops reading is evicted as a slow consumer and never grows the node", async () => {
  const small = await startNode(["--api-key", KEY, "--send-buffer-bytes", "65536", "--write-timeout", "2s"]);
  const at = (p) => fetch(`http://${small.addr}${p}`, { headers: { authorization: `Bearer ${KEY}` } }).then((r) => r.json());
  const [host, port] = small.addr.split(":");
  const reader = net.connect({ host, port: Number(port) });
  await new Promise((resolve) => reader.once("connect", resolve));
  reader.write(`GET /admin/api/tail?topic=flood:1 HTTP/1.1\r\nHost: ${small.addr}\r\nAuthorization: Bearer ${KEY}\r\n\r\n`);
  const head = await new Promise((resolve) => reader.once("data", (chunk) => resolve(chunk.toString())));
  assert.match(head, /^HTTP\/1.1 200/);
  reader.pause(); // and never reads again

  const payload = { blob: "x".repeat(32 * 1024) };
  for (let i = 0; i < 400; i++) {
    const answer = await fetch(`http://${small.addr}/api/publish`, {
      method: "POST",
      headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ topic: "flood:1", payload }),
    }).then((r) => r.json());
    if (answer.recipients === 0) break; // evicted
  }
  await until("the eviction", async () => (await at("/admin/api/status")).counters.slow_consumer_disconnects === 1);
  const topic = await at("/admin/api/topic?topic=flood:1");
  assert.equal(topic.subscribers, 0, "unsubscribed at once");
  // The node drops the connection that takes no data (--write-timeout) and the tail is gone.
  await until("the tail gone", async () => {
    const status = await at("/admin/api/status");
    return status.gauges.tails === 0 && status.gauges.sessions === 0;
  });
  reader.destroy();
});
