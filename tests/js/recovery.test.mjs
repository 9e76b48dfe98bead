// Recovery after reconnects, with the official `phoenix` client and clients/js/recover.mjs,
// against two real switchboard nodes sharing a private redis-server (topics and history).
//
// The client talks to node A through a small TCP proxy (Node's `net`) so the test can drop its
// connection at will; node B takes the HTTP publishes and stays up throughout.
//
// 1. 1,000 publications round-robin over feed:1..feed:5 (history 1000) while the proxy cuts
//    the client's connection (~300) and node A is SIGKILLed and restarted on its port (~600):
//    every channel gets every message exactly once, in order, with consecutive positions of one
//    epoch; every rejoin says recovered: true and onReload never runs.
// 2. A topic keeping 5 publications (short:1): the client is kept away while 20 are
//    published; its rejoin gets recovered: false, onReload runs once, none of the 20 arrive,
//    and later ones do.
// 3. Node C reaches Redis through a second proxy, which drops its connections and refuses new
//    ones while 100 of 300 publications on feed:6 are made on node B: node C ends the channel
//    with phx_error the moment its link goes, phoenix.js rejoins (refused while the link is
//    down), and once it is back the rejoin recovers every publication node C never received:
//    each exactly once, in order, without onReload.
//
// Run with `node --test` in tests/js after `cargo build -p switchboard-node --bin switchboard`.
// The binary is $SWITCHBOARD_BIN, else $CARGO_TARGET_DIR/debug/switchboard, else
// <workspace>/target/debug/switchboard (see harness.mjs); `redis-server` must be on the PATH.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

import { Socket } from "phoenix";
import WebSocket from "ws";

import { joinRecoverable } from "../../clients/js/recover.mjs";
import { Condition, Node, PATIENCE_MS, freePort, sleep, startRedis, stopAll, within } from "./harness.mjs";

/** How long the client may take to receive everything after the last publication. */
const DELIVERY_MS = 20_000;
const POSITION = /^(\d+):([A-Za-z0-9]+)$/;
// Every node sharing a Redis must have the same history rules (the last to connect loads the
// Redis function library with its own), so both nodes get this one file.
const CONFIG = `[channels.feed]
history = 1000
history_ttl = "10m"

[channels.short]
history = 5
`;

// ---------------------------------------------------------------------------------------------
// Small tools

/** A node of this suite on `port`: `configFile`, and the Redis at `redisPort` for pub/sub. */
function redisNode(name, port, redisPort, configFile) {
  return new Node(name, [
    "--config", configFile,
    "--pubsub-backend", "redis",
    "--redis-url", `redis://127.0.0.1:${redisPort}`,
  ], { port });
}

/**
 * A TCP proxy in front of `targetPort`. `cut()` destroys every connection (both sockets), as a
 * network failure would; `refuse()` makes it drop new connections at once until `admit()`.
 */
class Proxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.refusing = false;
    this.refused = 0;
    this.accepted = 0;
    this.changed = new Condition();
    this.server = net.createServer((client) => this.#accept(client));
  }

  listen() {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(0, "127.0.0.1", () => {
        this.port = this.server.address().port;
        resolve();
      });
    });
  }

  #accept(client) {
    client.on("error", () => {});
    if (this.refusing) {
      this.refused += 1;
      client.resetAndDestroy();
      this.changed.notify();
      return;
    }
    this.accepted += 1;
    const upstream = net.connect(this.targetPort, "127.0.0.1");
    upstream.on("error", () => {});
    const pair = { client, upstream };
    this.pairs.add(pair);
    const close = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on("close", close);
    upstream.on("close", close);
    client.pipe(upstream);
    upstream.pipe(client);
    this.changed.notify();
  }

  /** Drops every connection through the proxy. */
  cut() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  refuse() {
    this.refusing = true;
  }

  admit() {
    this.refusing = false;
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** POST /api/publish on `node`: asserts 200 with a position, and returns the answer. */
async function publish(node, topic, payload, event = "msg") {
  const response = await fetch(`http://${node.addr}/api/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ topic, event, payload }),
  });
  const text = await response.text();
  assert.equal(response.status, 200, `publish ${JSON.stringify(payload)} to ${topic}: ${response.status} ${text}`);
  const body = JSON.parse(text);
  assert.equal(body.ok, true, text);
  assert.match(String(body.position), POSITION, `publish to ${topic} answered without a position: ${text}`);
  return body;
}

function parsePosition(position) {
  const match = POSITION.exec(position);
  assert.ok(match, `not a position: ${JSON.stringify(position)}`);
  return { offset: Number(match[1]), epoch: match[2] };
}

/**
 * A phoenix.js socket (through the proxy) whose channels join through `joinRecoverable` and
 * record everything: messages, join replies, onReload calls, socket opens and closes.
 */
class Client {
  constructor(url) {
    this.started = performance.now();
    this.log = [];
    this.opens = [];
    this.closes = 0;
    this.changed = new Condition();
    this.topics = new Map();
    this.socket = new Socket(url, {
      transport: WebSocket,
      reconnectAfterMs: () => 100,
      rejoinAfterMs: () => 200,
    });
    this.socket.onOpen(() => {
      this.opens.push(performance.now());
      this.note("socket open");
      this.changed.notify();
    });
    this.socket.onClose((event) => {
      this.closes += 1;
      this.note(`socket close ${event?.code ?? ""}`);
      this.changed.notify();
    });
    this.socket.onError((error) => this.note(`socket error ${error?.message ?? error?.type ?? ""}`));
    // Every frame of a joined topic as it came off the wire, to show what the node sent when a
    // check fails.
    this.frames = new Map();
    /** Broadcasts of an event the test never publishes. */
    this.unexpected = [];
    this.socket.onMessage(({ join_ref: joinRef, ref, topic, event, payload }) => {
      const frames = this.frames.get(topic);
      if (!frames) return;
      if (event !== "msg" && !event.startsWith("phx_")) this.unexpected.push({ topic, event, ref, payload });
      const at = (performance.now() - this.started).toFixed(1);
      frames.push(`${at} ms ${JSON.stringify([joinRef, ref, topic, event, payload])}`);
    });
  }

  /** The frames of `topic` around its `index`-th message (0-based) and its join replies. */
  framesAround(topic, index, context = 8) {
    const frames = this.frames.get(topic) ?? [];
    let seen = -1;
    const at = frames.findIndex((frame) => frame.includes('"msg"') && ++seen === index);
    if (at < 0) return `${topic}: message ${index} not found among ${frames.length} frames`;
    const window = frames.slice(Math.max(0, at - context), at + context + 1);
    return `${topic}: frames around message ${index + 1} (join_ref, ref, topic, event, payload):\n  ${window.join("\n  ")}`;
  }

  note(line) {
    this.log.push(`${(performance.now() - this.started).toFixed(1).padStart(8)} ms  ${line}`);
    if (this.log.length > 5000) this.log.shift();
  }

  connect() {
    const opened = this.changed.until("the socket to open", () => this.opens.length > 0);
    this.socket.connect();
    return opened;
  }

  /** Joins `topic` through joinRecoverable and records it; resolves on the first ok. */
  join(topic) {
    const record = {
      topic,
      messages: [], // { event, payload, seq, ref, at }: every "msg" broadcast
      joinOks: [], // the ok responses, in order
      joinErrors: [],
      joinTimeouts: 0,
      reloads: [],
    };
    this.topics.set(topic, record);
    this.frames.set(topic, []);
    const { channel, join } = joinRecoverable(this.socket, topic, {
      onReload: (response) => {
        record.reloads.push(response);
        this.note(`${topic} onReload ${JSON.stringify(response)}`);
        this.changed.notify();
      },
    });
    record.channel = channel;
    join
      .receive("ok", (response) => {
        record.joinOks.push(response);
        this.note(`${topic} join ok ${JSON.stringify(response)}`);
        this.changed.notify();
      })
      .receive("error", (response) => {
        record.joinErrors.push(response);
        this.note(`${topic} join error ${JSON.stringify(response)}`);
      })
      .receive("timeout", () => {
        record.joinTimeouts += 1;
        this.note(`${topic} join timeout`);
      });
    channel.onError((reason) => this.note(`${topic} channel error ${JSON.stringify(reason) ?? ""}`));
    channel.on("msg", (payload, ref) => {
      record.messages.push({ event: "msg", payload, seq: payload?.seq, ref, at: performance.now() });
      this.changed.notify();
    });
    return this.changed.until(`the first join of ${topic}`, () => record.joinOks.length > 0);
  }

  /**
   * A barrier behind everything node A sent the socket so far: joins a fresh topic, publishes
   * to it and waits for that message (anything late, such as a duplicate, would come first).
   */
  async barrier(node, topic) {
    await this.join(topic);
    await publish(node, topic, { seq: 0 });
    const record = this.topics.get(topic);
    await this.changed.until(`the barrier message on ${topic}`, () => record.messages.length > 0);
  }

  disconnect() {
    return new Promise((resolve) => this.socket.disconnect(resolve));
  }
}

// ---------------------------------------------------------------------------------------------
// The system under test, shared by both tests.

let tmp;
let configFile;
let redisPort;
let nodeA;
let nodeB;
let proxy;
const clients = [];

before(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), "switchboard-recovery-"));
  configFile = path.join(tmp, "switchboard.toml");
  writeFileSync(configFile, CONFIG);
  redisPort = await freePort();
  await startRedis(redisPort);
  nodeA = redisNode("node A", await freePort(), redisPort, configFile);
  nodeB = redisNode("node B", await freePort(), redisPort, configFile);
  await Promise.all([nodeA.start(), nodeB.start()]);
  await Promise.all([nodeA.ready(), nodeB.ready()]);
  proxy = new Proxy(nodeA.port);
  await proxy.listen();
});

after(async () => {
  for (const client of clients) {
    try {
      await within("a socket to disconnect", (resolve) => {
        client.socket.disconnect(resolve);
      }, 2000);
    } catch {
      // going anyway
    }
  }
  if (proxy) await proxy.close();
  await stopAll();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** What to print when an assertion fails: the client's log and both nodes' stderr. */
function diagnostics(client) {
  return [
    `client log (last 60):\n${client.log.slice(-60).join("\n")}`,
    nodeA.stderrTail(),
    nodeB.stderrTail(),
  ].join("\n");
}

// ---------------------------------------------------------------------------------------------

test("1,000 publications survive a network cut and a SIGKILLed node: each exactly once, in order", async (t) => {
  const TOTAL = 1000;
  const TOPICS = ["feed:1", "feed:2", "feed:3", "feed:4", "feed:5"];
  const CUT_AT = 300;
  const KILL_AT = 600;

  const client = new Client(`ws://127.0.0.1:${proxy.port}/socket`);
  clients.push(client);
  await client.connect();
  await Promise.all(TOPICS.map((topic) => client.join(topic)));
  for (const topic of TOPICS) {
    const first = client.topics.get(topic).joinOks[0];
    assert.match(String(first.position), POSITION, `first join of ${topic}: ${JSON.stringify(first)}`);
    assert.equal(first.recovered, undefined, `a first join (no since) says nothing of recovery: ${JSON.stringify(first)}`);
  }

  const topicOf = (seq) => TOPICS[(seq - 1) % TOPICS.length];
  const positions = new Map(); // seq -> position the publish answered
  let published = 0;
  // The reconnects: when the socket opened again, and how many publications were answered by
  // then (those it had to recover).
  const reconnects = [];
  client.socket.onOpen(() => reconnects.push({ at: performance.now(), publishedBefore: published }));
  const rejoinedAll = (oks) =>
    TOPICS.every((topic) => client.topics.get(topic).joinOks.length >= oks);

  // After the cut, phoenix.js reconnects through the proxy by itself.
  let cutAt = null;
  // After the kill, node A comes back on its port while publishing goes on.
  let restart = null;
  let killedAt = null;
  let restartedAt = null;
  const started = performance.now();
  for (let seq = 1; seq <= TOTAL; seq++) {
    const answer = await publish(nodeB, topicOf(seq), { seq });
    positions.set(seq, answer.position);
    published = seq;
    client.changed.notify();
    if (seq === CUT_AT) {
      cutAt = performance.now();
      client.note(`proxy cut after ${seq}`);
      proxy.cut();
    }
    if (seq === KILL_AT) {
      // The rejoin after the cut normally happened long ago; wait for it if this machine is
      // slow, so the kill always hits an established session (publishing goes on at once).
      await client.changed.until(
        "every channel to rejoin after the cut",
        () => rejoinedAll(2),
        PATIENCE_MS,
        () => diagnostics(client),
      );
      killedAt = performance.now();
      client.note(`SIGKILL node A after ${seq}`);
      restart = nodeA.kill().then(async () => {
        client.note("node A gone; restarting");
        await nodeA.start();
        restartedAt = performance.now();
        client.note("node A listening again");
      });
      // Surface a failed restart at the end, not as an unhandled rejection.
      restart.catch(() => {});
    }
  }
  const publishMs = performance.now() - started;
  await restart;

  const expected = new Map(TOPICS.map((topic) => [topic, []]));
  for (let seq = 1; seq <= TOTAL; seq++) expected.get(topicOf(seq)).push(seq);
  const complete = () =>
    TOPICS.every((topic) => client.topics.get(topic).messages.length >= expected.get(topic).length);
  await client.changed.until(
    "every topic to receive all its messages",
    complete,
    DELIVERY_MS,
    () =>
      `${TOPICS.map((topic) => `${topic}: ${client.topics.get(topic).messages.length}/${expected.get(topic).length}`).join(", ")}\n${diagnostics(client)}`,
  );
  await client.barrier(nodeB, "feed:barrier");

  const problems = [];
  for (const topic of TOPICS) {
    const record = client.topics.get(topic);
    const seqs = record.messages.map((m) => m.seq);
    const want = expected.get(topic);
    if (JSON.stringify(seqs) !== JSON.stringify(want)) {
      const seen = new Map();
      for (const seq of seqs) seen.set(seq, (seen.get(seq) ?? 0) + 1);
      const duplicates = [...seen].filter(([, n]) => n > 1).map(([seq]) => seq);
      const missing = want.filter((seq) => !seen.has(seq));
      const disorder = seqs.filter((seq, i) => i > 0 && seq <= seqs[i - 1]);
      problems.push(
        `${topic}: ${seqs.length} messages for ${want.length}; duplicates ${JSON.stringify(duplicates)}, ` +
          `missing ${JSON.stringify(missing)}, out of order at ${JSON.stringify(disorder)}`,
      );
      const wrong = seqs.findIndex((seq, i) => seq !== want[i]);
      if (wrong >= 0) problems.push(client.framesAround(topic, wrong));
    }
    const epochs = new Set();
    const wrongOffsets = [];
    const wrongPositions = [];
    record.messages.forEach((message, i) => {
      const { offset, epoch } = parsePosition(message.ref);
      epochs.add(epoch);
      if (offset !== i + 1) wrongOffsets.push(`message ${i + 1} (seq ${message.seq}) at offset ${offset}`);
      if (positions.get(message.seq) !== message.ref) {
        wrongPositions.push(`seq ${message.seq} arrived at ${message.ref}, published at ${positions.get(message.seq)}`);
      }
    });
    if (wrongOffsets.length) {
      problems.push(`${topic}: ${wrongOffsets.length} messages not at consecutive offsets from 1, first: ${wrongOffsets.slice(0, 3).join("; ")}`);
    }
    if (wrongPositions.length) {
      problems.push(`${topic}: ${wrongPositions.length} positions differ from the publish answers, first: ${wrongPositions.slice(0, 3).join("; ")}`);
    }
    if (epochs.size !== 1) problems.push(`${topic}: epochs ${JSON.stringify([...epochs])}`);
    if (record.reloads.length) problems.push(`${topic}: onReload called ${JSON.stringify(record.reloads)}`);
    const rejoins = record.joinOks.slice(1);
    if (rejoins.length < 2) problems.push(`${topic}: ${rejoins.length} rejoins, expected at least 2`);
    for (const ok of rejoins) {
      if (ok.recovered !== true) problems.push(`${topic}: a rejoin answered ${JSON.stringify(ok)}`);
    }
  }
  if (client.unexpected.length) problems.push(`unexpected events: ${JSON.stringify(client.unexpected.slice(0, 5))}`);
  if (problems.length) {
    assert.fail(`${problems.slice(0, 40).join("\n")}\n${diagnostics(client)}`);
  }

  // Recovery time: from the socket opening again to the last message published before then
  // (the ones it had to recover) having arrived.
  const firstArrival = new Map();
  for (const record of client.topics.values()) {
    for (const message of record.messages) if (!firstArrival.has(message.seq)) firstArrival.set(message.seq, message.at);
  }
  const recoveries = reconnects.map(({ at, publishedBefore }) => {
    let last = at;
    for (let seq = 1; seq <= publishedBefore; seq++) last = Math.max(last, firstArrival.get(seq));
    let missed = 0;
    for (let seq = 1; seq <= publishedBefore; seq++) if (firstArrival.get(seq) > at) missed += 1;
    return { ms: last - at, missed, publishedBefore };
  });
  const errors = TOPICS.map((topic) => client.topics.get(topic).joinErrors.length).reduce((a, b) => a + b, 0);
  console.log(
    `recovery test: ${TOTAL} publications in ${publishMs.toFixed(0)} ms; ` +
      `cut at ${CUT_AT} (${(cutAt - started).toFixed(0)} ms), SIGKILL at ${KILL_AT} ` +
      `(${(killedAt - started).toFixed(0)} ms), node A listening again after ${(restartedAt - killedAt).toFixed(0)} ms`,
  );
  for (const [i, r] of recoveries.entries()) {
    console.log(
      `recovery after ${i === 0 ? "the proxy cut" : i === 1 ? "the SIGKILL and restart" : `reconnect ${i + 1}`}: ` +
        `${r.ms.toFixed(1)} ms from reconnect to the last missed message (${r.missed} of ${r.publishedBefore} published arrived after the reconnect)`,
    );
  }
  console.log(`join errors while node A was coming back (rejoined after): ${errors}`);
  t.diagnostic(`recoveries: ${recoveries.map((r) => `${r.ms.toFixed(1)} ms (${r.missed} missed)`).join(", ")}`);
  assert.ok(reconnects.length >= 2, `reconnects: ${reconnects.length}`);

  await client.disconnect();
});

test("a topic whose history no longer reaches back: onReload once, the missed ones never arrive", async () => {
  const TOPIC = "short:1";
  const client = new Client(`ws://127.0.0.1:${proxy.port}/socket`);
  clients.push(client);
  await client.connect();
  await client.join(TOPIC);
  const record = client.topics.get(TOPIC);
  const { epoch } = parsePosition(record.joinOks[0].position);
  const arrived = (seq) => client.changed.until(
    `seq ${seq} on ${TOPIC}`,
    () => record.messages.some((m) => m.seq === seq),
    PATIENCE_MS,
    () => diagnostics(client),
  );

  // Two that arrive.
  for (const seq of [1, 2]) await publish(nodeB, TOPIC, { seq });
  await arrived(2);

  // The client is kept away: its connection is cut and reconnects are refused until at least
  // one attempt was turned away after the 20 publications.
  proxy.refuse();
  const closesBefore = client.closes;
  proxy.cut();
  await client.changed.until("the socket to close", () => client.closes > closesBefore);
  const openedBefore = client.opens.length;
  for (let seq = 3; seq <= 22; seq++) await publish(nodeB, TOPIC, { seq });
  const refusedBefore = proxy.refused;
  await proxy.changed.until("a reconnect to be refused", () => proxy.refused > refusedBefore);
  assert.equal(client.opens.length, openedBefore, "the socket stayed away while refused");
  proxy.admit();

  await client.changed.until(
    "the rejoin and onReload",
    () => record.joinOks.length >= 2 && record.reloads.length >= 1,
    PATIENCE_MS,
    () => diagnostics(client),
  );
  for (const seq of [23, 24, 25]) await publish(nodeB, TOPIC, { seq });
  await arrived(25);
  await client.barrier(nodeB, "short:barrier");

  assert.deepEqual(record.messages.map((m) => m.seq), [1, 2, 23, 24, 25], diagnostics(client));
  assert.deepEqual(
    record.messages.map((m) => m.ref),
    [1, 2, 23, 24, 25].map((offset) => `${offset}:${epoch}`),
    diagnostics(client),
  );
  assert.equal(record.reloads.length, 1, `onReload calls: ${JSON.stringify(record.reloads)}\n${diagnostics(client)}`);
  assert.equal(record.reloads[0].recovered, false);
  assert.equal(record.reloads[0].position, `22:${epoch}`);
  assert.equal(record.joinOks.length, 2, `join oks: ${JSON.stringify(record.joinOks)}`);
  assert.deepEqual(record.joinOks[1], record.reloads[0]);

  await client.disconnect();
});

test("a node that loses its backend link ends its channels, and phoenix.js recovers what the node missed", async () => {
  const TOPIC = "feed:6";
  const TOTAL = 300;
  const LOSE_AT = 100;
  const BACK_AT = 200;
  const redisProxy = new Proxy(redisPort);
  await redisProxy.listen();
  const nodeC = redisNode("node C", await freePort(), redisProxy.port, configFile);
  await nodeC.start();
  await nodeC.ready();
  const client = new Client(`ws://${nodeC.addr}/socket`);
  clients.push(client);
  try {
    await client.connect();
    await client.join(TOPIC);
    const record = client.topics.get(TOPIC);
    let lostAt = null;
    for (let seq = 1; seq <= TOTAL; seq++) {
      await publish(nodeB, TOPIC, { seq });
      client.changed.notify();
      if (seq === LOSE_AT) {
        client.note(`node C's link to Redis cut after ${seq}`);
        redisProxy.refuse();
        redisProxy.cut();
        lostAt = performance.now();
      }
      // The outage lasts at least half a second, whatever the publishing pace.
      if (seq > LOSE_AT && seq < BACK_AT) await sleep(5);
      if (seq === BACK_AT) {
        client.note(`node C's link admitted again after ${seq}`);
        redisProxy.admit();
      }
    }
    await client.changed.until(
      "the channel to receive every message",
      () => record.messages.length >= TOTAL,
      DELIVERY_MS,
      () => `${record.messages.length}/${TOTAL}\n${diagnostics(client)}\n${nodeC.stderrTail()}`,
    );
    await client.barrier(nodeB, "feed:barrier-c");
    const seqs = record.messages.map((m) => m.seq);
    const want = Array.from({ length: TOTAL }, (_, i) => i + 1);
    assert.deepEqual(seqs, want, `each message once, in order\n${diagnostics(client)}`);
    assert.deepEqual(record.reloads, [], "the history reached back: no reload");
    const rejoins = record.joinOks.slice(1);
    assert.ok(rejoins.length >= 1, `the channel rejoined after the link loss: ${JSON.stringify(record.joinOks)}`);
    for (const ok of rejoins) assert.equal(ok.recovered, true, JSON.stringify(ok));
    const errored = client.frames.get(TOPIC).some((frame) => frame.includes('"phx_error"'));
    assert.ok(errored, "node C said phx_error on the channel");
    console.log(
      `link loss: ${record.joinErrors.length} rejoins refused while node C's link was down, ` +
        `${rejoins.length} recovered; all ${TOTAL} arrived ${(performance.now() - lostAt).toFixed(0)} ms after the cut`,
    );
  } finally {
    await client.disconnect();
    await nodeC.kill();
    await redisProxy.close();
  }
});
