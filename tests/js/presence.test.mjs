// Presence with the official phoenix.js `Presence` class, against two real switchboard nodes
// sharing a private backend: the same suite runs over Redis and over PostgreSQL
// (`presenceSuite(backend)` below, once per backend). Every node runs with --presence-ttl 3s and
// --presence-max-members 2000. Clients give each socket's meta a `sock` label, so every list is
// compared exactly: which sockets, once each, with which meta, and the same phx_ref everywhere.
//
// 1. Lists agree: clients on A and B (phoenix.js Socket + Channel + Presence) join as different
//    users and every client's `presence.list()` converges to the same keys, metas and phx_refs,
//    the same as GET /api/presence on both nodes (and the presence gauges); one user with a
//    socket on each node is one key with two metas, and closing one socket leaves the other
//    meta, phx_ref unchanged.
// 2. Leave: channel.leave() on A and on B removes the member from every other list; a rejoin on
//    the same socket comes back with a new phx_ref.
// 3. Meta update: presence_update changes the meta on every client in ONE presence_diff that
//    joins the new meta (phx_ref_prev = the old phx_ref, also seen by phoenix.js' onJoin) and
//    leaves the old one; then twenty updates in a row, then ten members on both nodes pushing
//    forty each at once: the last meta wins everywhere and no client ever lists a socket twice.
// 4. SIGKILL of node A: its members leave every list on B within TTL + 3 s (measured, and not
//    before the backend's own liveness deadline for A, read just before the kill) while B's own
//    members never flicker; A restarts on its port, its phoenix.js clients reconnect and rejoin
//    by themselves, and the lists end exact, with no phx_ref of the killed incarnation anywhere.
//    Then a kill with an immediate restart: the killed incarnation's metas (zombies next to the
//    rejoined ones) still leave B's lists within TTL + 3 s.
// 5. Observers (sockets without `user`) get the list and are not in it; malformed presence
//    params (array, string, number, phx_ fields, over the size bound) are refused and leave no
//    trace; forged presence_diff/presence_state pushes (by members and observers) and publishes
//    are refused and never reach anyone; bad presence_updates are refused.
// 6. 200 clients join one topic within ~1 s and 2,000 bare sockets fill another to the member
//    limit: every list ends exact, nobody who stayed is ever announced leaving, at most one
//    presence_diff per 250 ms; one more member is refused ("too many members") on either node
//    while a member's update and observers' joins still work. Measured and printed: the time for
//    a change on one node to reach a client on the other; presence_diff frames per client in
//    the storm; the time to receive presence_state of 2,000 members; the bytes the members got.
//
// Run with `node --test` in tests/js after `cargo build -p switchboard-node --bin switchboard`.
// The binary is $SWITCHBOARD_BIN, else $CARGO_TARGET_DIR/debug/switchboard, else
// <workspace>/target/debug/switchboard (see harness.mjs). `redis-server` must be on the PATH;
// PostgreSQL is taken from $PG_BIN, else the newest /usr/lib/postgresql/*/bin, else `initdb` on
// the PATH (as root, its commands run as the `postgres` user through runuser, as
// tests/src/postgres.rs does).
// Everything started here (nodes, redis-server, the PostgreSQL cluster) is stopped when the
// suite ends, fails, or the process exits.

import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

import { Presence, Socket } from "phoenix";
import WebSocket from "ws";

import {
  Condition, Node, PATIENCE_MS, freePort, killAll, sleep, startRedis as startRedisServer, waitGone, within,
} from "./harness.mjs";

/** The nodes' --presence-ttl. */
const TTL_MS = 3_000;
/** The nodes' --presence-max-members: exactly the members test 6 puts on one topic. */
const MAX_MEMBERS = 2000;
/** What a node's death may take beyond the TTL to reach other nodes' clients. */
const TTL_SLACK_MS = 3_000;
const CONFIG = `[channels.room]
presence = true
`;

// ---------------------------------------------------------------------------------------------
// Small tools

/**
 * How often the suite's `world` condition (a harness.mjs Condition) runs its checks at most: a
 * storm of frames costs a few checks, not one per frame. They also run every WORLD_POLL_MS, for
 * a condition that turns true without a frame (a socket closing).
 */
const CHECK_EVERY_MS = 10;
const WORLD_POLL_MS = 250;

/** Polls `probe()` (async, returning "" when satisfied, else what is wrong) until it holds. */
async function eventually(what, probe, ms = PATIENCE_MS) {
  const deadline = Date.now() + ms;
  let last = "";
  for (;;) {
    try {
      last = await probe();
    } catch (error) {
      last = `${error.message}`;
    }
    if (last === "") return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}: ${last}`);
    await sleep(100);
  }
}

/** JSON with sorted object keys, to compare metas by value. */
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

function stats(values) {
  if (values.length === 0) return "no samples";
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length;
  const f = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));
  return `n=${sorted.length} min ${f(sorted[0])} median ${f(at(0.5))} p90 ${f(at(0.9))} max ${f(sorted.at(-1))} mean ${f(mean)}`;
}

// ---------------------------------------------------------------------------------------------
// Processes: every child is killed, and every PostgreSQL cluster stopped, when the tests end,
// whatever happened.

/** Temporary directories to remove on the way out. */
const tmpDirs = new Set();
/** PostgreSQL clusters still running: { dir, data }. pg_ctl daemonizes, so they are no children. */
const clusters = new Set();

function stopClustersSync() {
  for (const cluster of [...clusters]) {
    try {
      asPostgresSync(path.join(pgBinDir(), "pg_ctl"), ["-D", cluster.data, "-m", "immediate", "-w", "stop"]);
    } catch {
      // going anyway
    }
    rmSync(cluster.dir, { recursive: true, force: true });
    clusters.delete(cluster);
  }
}

function removeTmpDirs() {
  for (const dir of tmpDirs) rmSync(dir, { recursive: true, force: true });
  tmpDirs.clear();
}

// harness.mjs kills every child on exit (first: it was imported first).
process.on("exit", () => {
  stopClustersSync();
  removeTmpDirs();
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    killAll();
    stopClustersSync();
    removeTmpDirs();
    process.exit(128 + (signal === "SIGINT" ? 2 : 15));
  });
}

// ---------------------------------------------------------------------------------------------
// Backends. Each start function resolves to { name, args (for the node), stop(), logTail() }.

/** One command over a fresh connection: its reply (arrays, bulk strings, integers). */
function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    let data = Buffer.alloc(0);
    socket.setTimeout(5000, () => {
      socket.destroy();
      reject(new Error(`redis ${args[0]}: no reply`));
    });
    socket.on("error", reject);
    socket.on("connect", () => {
      socket.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join("")}`);
    });
    socket.on("data", (chunk) => {
      data = Buffer.concat([data, chunk]);
      const parsed = parseResp(data, 0);
      if (parsed) {
        socket.destroy();
        if (parsed.value instanceof Error) reject(parsed.value);
        else resolve(parsed.value);
      }
    });
  });
}

/** A RESP reply at `at` in `data`: { value, next }, or null when incomplete. */
function parseResp(data, at) {
  const end = data.indexOf("\r\n", at);
  if (end < 0) return null;
  const line = data.toString("utf8", at + 1, end);
  const next = end + 2;
  switch (String.fromCharCode(data[at])) {
    case "+":
      return { value: line, next };
    case "-":
      return { value: new Error(line), next };
    case ":":
      return { value: Number(line), next };
    case "$": {
      const length = Number(line);
      if (length < 0) return { value: null, next };
      if (data.length < next + length + 2) return null;
      return { value: data.toString("utf8", next, next + length), next: next + length + 2 };
    }
    case "*": {
      const count = Number(line);
      const items = [];
      let cursor = next;
      for (let i = 0; i < count; i++) {
        const item = parseResp(data, cursor);
        if (!item) return null;
        items.push(item.value);
        cursor = item.next;
      }
      return { value: items, next: cursor };
    }
    default:
      return { value: new Error(`unexpected RESP ${line}`), next };
  }
}

async function startRedis() {
  const port = await freePort();
  const { child, output } = await startRedisServer(port);
  return {
    name: "redis",
    args: ["--pubsub-backend", "redis", "--redis-url", `redis://127.0.0.1:${port}`],
    async stop() {
      child.kill("SIGKILL");
      await waitGone(child);
    },
    logTail: () => `redis-server output (last 20 lines):\n${output.slice(-20).join("\n")}`,
    /** Each node's liveness on the backend: node id -> ms left before it lapses. */
    async liveness() {
      const [time, nodes] = await Promise.all([
        redisCommand(port, "TIME"),
        redisCommand(port, "ZRANGE", "switchboard:presence:nodes", "0", "-1", "WITHSCORES"),
      ]);
      const now = Number(time[0]) * 1000 + Math.floor(Number(time[1]) / 1000);
      const left = new Map();
      for (let i = 0; i + 1 < nodes.length; i += 2) left.set(nodes[i], Number(nodes[i + 1]) - now);
      return left;
    },
  };
}

let pgBin = null;
/** The directory holding initdb and pg_ctl (as tests/src/postgres.rs finds it). */
function pgBinDir() {
  if (pgBin) return pgBin;
  if (process.env.PG_BIN) return (pgBin = process.env.PG_BIN);
  let versions = [];
  try {
    versions = readdirSync("/usr/lib/postgresql")
      .map((name) => ({ version: Number(name), bin: path.join("/usr/lib/postgresql", name, "bin") }))
      .filter(({ version, bin }) => Number.isInteger(version) && existsSync(path.join(bin, "initdb")))
      .sort((a, b) => a.version - b.version);
  } catch {
    // no /usr/lib/postgresql
  }
  if (versions.length) return (pgBin = versions.at(-1).bin);
  const which = spawnSync("sh", ["-c", "command -v initdb"], { encoding: "utf8" });
  if (which.status === 0 && which.stdout.trim()) return (pgBin = path.dirname(which.stdout.trim()));
  throw new Error(
    "PostgreSQL was not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): the " +
      "PostgreSQL half of this suite needs a real server. Install it with `apt-get install " +
      "postgresql` (tests/run does) or point PG_BIN at the directory holding initdb and pg_ctl",
  );
}

const IS_ROOT = process.getuid?.() === 0;

/** `program args` as the `postgres` user when we are root (PostgreSQL refuses root), sync. */
function asPostgresSync(program, args) {
  const [cmd, argv] = IS_ROOT ? ["runuser", ["-u", "postgres", "--", program, ...args]] : [program, args];
  return spawnSync(cmd, argv, { cwd: "/", encoding: "utf8", timeout: 60_000 });
}

/** The same, without blocking the event loop: resolves to { status, stdout, stderr }. */
function asPostgres(program, args) {
  const [cmd, argv] = IS_ROOT ? ["runuser", ["-u", "postgres", "--", program, ...args]] : [program, args];
  return new Promise((resolve) => {
    execFile(cmd, argv, { cwd: "/", encoding: "utf8", timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ status: error ? (error.code ?? 1) : 0, stdout, stderr });
    });
  });
}

function run(cmd, args) {
  const result = spawnSync(cmd, args, { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed: ${result.stderr}${result.error ?? ""}`);
}

/** Makes `dir` (recursively) owned by postgres when we are root. */
function giveToPostgres(dir) {
  if (IS_ROOT) run("chown", ["-R", "postgres:postgres", dir]);
}

/**
 * A data directory made by initdb once per machine and version (trust authentication), the
 * same one the Rust harness shares: /tmp/switchboard-e2e-pgdata-<version>.
 */
async function pgTemplate() {
  const bin = pgBinDir();
  const version = path.basename(path.dirname(bin)) || "pg";
  const shared = path.join(os.tmpdir(), `switchboard-e2e-pgdata-${version}`);
  if (existsSync(path.join(shared, "PG_VERSION")) && existsSync(path.join(shared, "postgresql.conf"))) return shared;
  const work = path.join(os.tmpdir(), `switchboard-e2e-pgdata-${version}.js${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  run("mkdir", ["-p", work]);
  giveToPostgres(work);
  const data = path.join(work, "data");
  const result = await asPostgres(path.join(bin, "initdb"), [
    "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync",
  ]);
  if (result.status !== 0) throw new Error(`initdb failed: ${result.stdout}${result.stderr}`);
  try {
    renameSync(data, shared);
  } catch (error) {
    // Another process may have won the race; either copy is a complete cluster.
    if (!existsSync(path.join(shared, "PG_VERSION"))) throw error;
  }
  rmSync(work, { recursive: true, force: true });
  return shared;
}

async function startPostgres() {
  const template = await pgTemplate();
  const bin = pgBinDir();
  let last = "";
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const dir = mkdtempSync(path.join(os.tmpdir(), "switchboard-presence-pg-"));
    const data = path.join(dir, "data");
    run("cp", ["-a", template, data]);
    giveToPostgres(dir);
    const log = path.join(dir, "server.log");
    const cluster = { dir, data };
    clusters.add(cluster);
    const result = await asPostgres(path.join(bin, "pg_ctl"), [
      "-D", data, "-l", log, "-o", `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`, "-w", "-t", "30", "start",
    ]);
    const logTail = (n = 20) => {
      try {
        return readFileSync(log, "utf8").split("\n").slice(-n).join("\n");
      } catch {
        return "(no log)";
      }
    };
    if (result.status === 0) {
      return {
        name: "postgres",
        args: ["--pubsub-backend", "postgres", "--database-url", `postgres://postgres@127.0.0.1:${port}/postgres`],
        async stop() {
          await asPostgres(path.join(bin, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"]);
          rmSync(dir, { recursive: true, force: true });
          clusters.delete(cluster);
        },
        logTail: () => `postgres log (last 20 lines):\n${logTail()}`,
        /** Each node's liveness on the backend: node id -> ms left before it lapses. */
        async liveness() {
          const sql = "SELECT node, round(extract(epoch FROM expires - clock_timestamp()) * 1000) FROM switchboard_presence_nodes";
          const out = await new Promise((resolve, reject) => {
            execFile(
              path.join(bin, "psql"),
              ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-d", "postgres", "-XAtq", "-F", " ", "-c", sql],
              { encoding: "utf8", timeout: 10_000 },
              (error, stdout, stderr) => (error ? reject(new Error(`psql: ${error.message} ${stderr}`)) : resolve(stdout)),
            );
          });
          const left = new Map();
          for (const line of out.split("\n").filter(Boolean)) {
            const [node, ms] = line.split(" ");
            left.set(node, Number(ms));
          }
          return left;
        },
      };
    }
    last = `pg_ctl start failed: ${result.stdout}${result.stderr}\nlog:\n${logTail()}`;
    await asPostgres(path.join(bin, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"]);
    rmSync(dir, { recursive: true, force: true });
    clusters.delete(cluster);
  }
  throw new Error(`postgres did not start after 5 attempts: ${last}`);
}

// ---------------------------------------------------------------------------------------------
// Nodes

/**
 * A node of the suite on a fixed port (see harness.mjs: `start()` again after `kill()` restarts
 * it there), with the presence flags, its presence API and its metrics.
 */
class PresenceNode extends Node {
  constructor(name, port, backendArgs, configFile) {
    super(name, [
      "--config", configFile,
      "--presence-ttl", `${TTL_MS / 1000}s`,
      "--presence-max-members", String(MAX_MEMBERS),
      ...backendArgs,
    ], { port });
  }

  /** GET /api/presence?topic=..: the parsed answer (asserts 200). */
  async presence(topic) {
    const response = await fetch(`http://${this.addr}/api/presence?topic=${encodeURIComponent(topic)}`);
    const text = await response.text();
    assert.equal(response.status, 200, `${this.name} GET /api/presence?topic=${topic}: ${response.status} ${text}`);
    return JSON.parse(text);
  }

  /** Every unlabelled sample of /metrics, name -> value. */
  async metrics() {
    const response = await fetch(`http://${this.addr}/metrics`);
    const text = await response.text();
    const values = new Map();
    for (const line of text.split("\n")) {
      const match = /^([a-z_]+)\s+(\S+)$/.exec(line);
      if (match) values.set(match[1], Number(match[2]));
    }
    return values;
  }
}

// ---------------------------------------------------------------------------------------------
// Clients

/**
 * A phoenix.js socket on one node, as one user (or an observer: `user` undefined). Its channels
 * each get a phoenix.js `Presence`; every presence frame is also recorded raw, with the time it
 * arrived, and every frame (and socket open/close) notifies the suite's `world` condition and
 * runs its invariants.
 */
class Client {
  constructor(sys, node, { user, label }) {
    this.sys = sys;
    this.node = node;
    this.user = user;
    this.label = label ?? user ?? "observer";
    this.started = performance.now();
    this.opens = [];
    this.closes = 0;
    this.closed = false;
    this.log = [];
    /** topic -> record (see `join`). */
    this.records = new Map();
    this.socket = new Socket(`ws://${node.addr}/socket`, {
      transport: WebSocket,
      params: user === undefined ? {} : { user },
      reconnectAfterMs: () => 200,
      rejoinAfterMs: () => 300,
      timeout: PATIENCE_MS,
    });
    this.socket.onOpen(() => {
      this.opens.push(performance.now());
      this.note("socket open");
      sys.world.notify();
    });
    this.socket.onClose((event) => {
      this.closes += 1;
      this.note(`socket close ${event?.code ?? ""}`);
      sys.world.notify();
    });
    this.socket.onError((error) => this.note(`socket error ${error?.message ?? error?.type ?? ""}`));
    // Runs after the channel (and its Presence) handled the frame.
    this.socket.onMessage(({ topic, event, payload, join_ref: joinRef }) => {
      const record = this.records.get(topic);
      if (!record) return;
      const at = performance.now();
      if (event === "presence_diff") {
        record.diffs.push({ at, payload });
      } else if (event === "presence_state") {
        record.states.push({ at, payload, joinRef });
      } else {
        return;
      }
      record.frames.push(`${(at - this.started).toFixed(1)} ms ${event} ${JSON.stringify(payload)}`);
      if (record.frames.length > 200) record.frames.shift();
      for (const invariant of sys.invariants) invariant(this, record, event, payload);
      sys.world.notify();
    });
    sys.clients.add(this);
  }

  note(line) {
    this.log.push(`${(performance.now() - this.started).toFixed(1).padStart(8)} ms  ${this.label}: ${line}`);
    if (this.log.length > 500) this.log.shift();
  }

  connect() {
    const opened = this.sys.world.until(`${this.label}'s socket to open`, () => this.opens.length > 0);
    this.socket.connect();
    return opened;
  }

  /**
   * Joins `topic` with `params`; resolves with the record on the first ok reply, rejects on an
   * error reply. The record: { channel, presence, joinOks, joinErrors, states, diffs, frames,
   * joins/leaves (Presence onJoin/onLeave calls), left }.
   */
  join(topic, params = {}) {
    const channel = this.socket.channel(topic, params);
    const presence = new Presence(channel);
    const record = {
      topic,
      channel,
      presence,
      joinOks: [],
      joinErrors: [],
      states: [],
      diffs: [],
      frames: [],
      joins: [],
      leaves: [],
      left: false,
      joinSentAt: performance.now(),
    };
    this.records.set(topic, record);
    presence.onJoin((key, current, newPres) => record.joins.push({ key, current, newPres, at: performance.now() }));
    presence.onLeave((key, current, leftPres) => record.leaves.push({ key, current, leftPres, at: performance.now() }));
    return within(`${this.label} to join ${topic}`, (resolve, reject) => {
      channel
        .join()
        .receive("ok", (response) => {
          record.joinOks.push({ at: performance.now(), response });
          this.note(`${topic} join ok`);
          this.sys.world.notify();
          resolve(record);
        })
        .receive("error", (response) => {
          record.joinErrors.push(response);
          this.note(`${topic} join error ${JSON.stringify(response)}`);
          reject(Object.assign(new Error(`${this.label}: join ${topic} refused: ${JSON.stringify(response)}`), { response }));
        })
        .receive("timeout", () => this.note(`${topic} join timeout`));
    });
  }

  /** A join that must be refused: resolves with the error response; the channel is left. */
  async joinRefused(topic, params) {
    const channel = this.socket.channel(topic, params);
    try {
      return await within(`${this.label}'s join of ${topic} to be answered`, (resolve, reject) => {
        channel
          .join()
          .receive("ok", () => reject(new Error(`${this.label}: join ${topic} ${JSON.stringify(params)} was accepted`)))
          .receive("error", resolve)
          .receive("timeout", () => reject(new Error(`${this.label}: join ${topic} timed out`)));
      });
    } finally {
      // Stops phoenix.js from retrying the refused join.
      channel.leave();
    }
  }

  /** Leaves `topic`: resolves on the leave's reply. */
  leave(topic) {
    const record = this.records.get(topic);
    record.left = true;
    return pushReply(record.channel.leave(), `${this.label} leaves ${topic}`);
  }

  /** A push on `topic`: resolves with { status, response }. */
  push(topic, event, payload) {
    const record = this.records.get(topic);
    return within(`${this.label}'s ${event} on ${topic} to be answered`, (resolve, reject) => {
      record.channel
        .push(event, payload)
        .receive("ok", (response) => resolve({ status: "ok", response }))
        .receive("error", (response) => resolve({ status: "error", response }))
        .receive("timeout", () => reject(new Error(`${this.label}: ${event} on ${topic} timed out`)));
    });
  }

  /** Whether `topic`'s presence reflects the current join (its presence_state arrived). */
  synced(topic) {
    const record = this.records.get(topic);
    return Boolean(record) && !record.left && record.channel.state === "joined" && !record.presence.inPendingSyncState();
  }

  /** `topic`'s list as members: [{ key, sock, ref, prev, meta (without phx_ fields) }]. */
  members(topic) {
    const record = this.records.get(topic);
    return record ? membersOf(record.presence.state) : [];
  }

  close() {
    this.closed = true;
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, 2000);
      this.socket.disconnect(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/** A phoenix presence state ({key: {metas}}) as members, sorted by (key, sock, ref). */
function membersOf(state) {
  const members = [];
  for (const [key, { metas }] of Object.entries(state)) {
    for (const meta of metas) {
      const own = Object.fromEntries(Object.entries(meta).filter(([field]) => !field.startsWith("phx_")));
      members.push({ key, sock: meta.sock, ref: meta.phx_ref, prev: meta.phx_ref_prev, meta: own });
    }
  }
  return members.sort((a, b) =>
    a.key < b.key ? -1 : a.key > b.key ? 1 : String(a.sock) < String(b.sock) ? -1 : String(a.sock) > String(b.sock) ? 1 : a.ref < b.ref ? -1 : 1,
  );
}

function pushReply(push, what) {
  return within(what, (resolve, reject) => {
    push
      .receive("ok", resolve)
      .receive("error", (response) => reject(new Error(`${what}: error ${JSON.stringify(response)}`)))
      .receive("timeout", () => reject(new Error(`${what}: timeout`)));
  });
}

/** One expected member: user `key`, socket label `sock`, meta `{sock, ...extra}`. */
const member = (key, sock, extra = {}) => ({ key, sock, meta: { sock, ...extra } });

function describeMembers(members) {
  return members.map((m) => `${m.key}/${m.sock}${m.ref ? `@${m.ref}` : ""} ${canonical(m.meta)}`).join(", ");
}

// ---------------------------------------------------------------------------------------------
// The suite, once per backend

const BACKENDS = [
  { name: "Redis", start: startRedis },
  { name: "PostgreSQL", start: startPostgres },
];

for (const backend of BACKENDS) {
  describe(`presence over ${backend.name}, two nodes`, () => presenceSuite(backend));
}

function presenceSuite(backendKind) {
  /** What the tests share: the backend, both nodes, every client, the `world` condition. */
  const sys = {
    backend: null,
    nodeA: null,
    nodeB: null,
    clients: new Set(),
    world: new Condition({ batchMs: CHECK_EVERY_MS, pollMs: WORLD_POLL_MS }),
    /** (client, record, event, payload) => void, run on every presence frame. */
    invariants: new Set(),
    /** Samples of every node's liveness on the backend: { at, left: Map(node id -> ms) }. */
    liveness: [],
  };
  let sampler = null;
  let tmp;

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), "switchboard-presence-"));
    tmpDirs.add(tmp);
    const configFile = path.join(tmp, "switchboard.toml");
    writeFileSync(configFile, CONFIG);
    sys.backend = await backendKind.start();
    sys.nodeA = new PresenceNode("node A", await freePort(), sys.backend.args, configFile);
    sys.nodeB = new PresenceNode("node B", await freePort(), sys.backend.args, configFile);
    await Promise.all([sys.nodeA.start(), sys.nodeB.start()]);
    await Promise.all([sys.nodeA.ready(), sys.nodeB.ready()]);
    // How much liveness each node has left on the backend, sampled all along: a live node
    // refreshes it every TTL/5, so it should never get far below 4/5 of the TTL.
    let busy = false;
    sampler = setInterval(async () => {
      if (busy) return;
      busy = true;
      const at = performance.now();
      try {
        sys.liveness.push({ at, left: await sys.backend.liveness() });
      } catch {
        // the backend is busy or going: skip this sample
      } finally {
        busy = false;
      }
    }, 250);
  });

  after(async () => {
    clearInterval(sampler);
    await Promise.all([...sys.clients].map((client) => client.close()));
    for (const node of [sys.nodeA, sys.nodeB]) if (node) await node.kill();
    if (sys.backend) await sys.backend.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  const nodes = () => [sys.nodeA, sys.nodeB];

  /** The clients' logs and frames on `topic`, both nodes' stderr and the backend's log. */
  function diagnostics(topic, clients = [...sys.clients]) {
    const parts = [];
    for (const client of clients.slice(0, 12)) {
      const record = client.records.get(topic);
      parts.push(`--- ${client.label} on ${client.node.name}: ${client.log.slice(-8).join(" | ")}`);
      if (record) parts.push(`    frames: \n      ${record.frames.slice(-8).join("\n      ")}`);
    }
    parts.push(sys.nodeA.stderrTail(25), sys.nodeB.stderrTail(25), sys.backend.logTail());
    return parts.join("\n");
  }

  /**
   * What differs between `clients`' lists of `topic` and `expected` (members: {key, sock,
   * meta}), "" when nothing: every client must have its presence_state, list exactly the
   * expected sockets once each with exactly their metas, agree on every phx_ref, and list no
   * ref in `banned`.
   */
  function mismatch(topic, clients, expected, banned = new Set()) {
    const want = expected.map((m) => `${m.key}|${m.sock}|${canonical(m.meta)}`).sort();
    const refs = new Map();
    const problems = [];
    for (const client of clients) {
      if (client.closed) continue;
      const label = `${client.label} on ${client.node.name}`;
      if (!client.synced(topic)) {
        problems.push(`${label}: not synced (channel ${client.records.get(topic)?.channel.state})`);
        continue;
      }
      const members = client.members(topic);
      const got = members.map((m) => `${m.key}|${m.sock}|${canonical(m.meta)}`).sort();
      if (got.join("\n") !== want.join("\n")) {
        problems.push(`${label} lists ${describeMembers(members)}`);
        continue;
      }
      for (const m of members) {
        if (banned.has(m.ref)) problems.push(`${label} lists a banned ref: ${m.key}/${m.sock}@${m.ref}`);
        const seen = refs.get(m.sock);
        if (seen === undefined) refs.set(m.sock, { ref: m.ref, by: label });
        else if (seen.ref !== m.ref) problems.push(`${m.sock} is ${seen.ref} on ${seen.by} but ${m.ref} on ${label}`);
      }
    }
    if (problems.length) {
      problems.push(`expected: ${expected.map((m) => `${m.key}/${m.sock} ${canonical(m.meta)}`).join(", ")}`);
    }
    return problems.join("\n");
  }

  /** Waits until `clients` all list exactly `expected` (see `mismatch`); resolves with the time. */
  function converge(what, topic, clients, expected, { banned, ms = PATIENCE_MS } = {}) {
    return sys.world.until(
      what,
      () => clients.every((c) => c.closed || c.synced(topic)) && mismatch(topic, clients, expected, banned) === "",
      ms,
      () => `${mismatch(topic, clients, expected, banned)}\n${diagnostics(topic, clients)}`,
    );
  }

  /** GET /api/presence on both nodes lists exactly the members `client` lists, phx_refs included. */
  async function apiAgrees(topic, client, on = nodes()) {
    const want = client.members(topic).map((m) => `${m.key}|${m.ref}|${canonical(m.meta)}`).join("\n");
    const keys = new Set(client.members(topic).map((m) => m.key)).size;
    const count = client.members(topic).length;
    for (const node of on) {
      await eventually(`${node.name}'s /api/presence of ${topic} to match ${client.label}'s list`, async () => {
        const answer = await node.presence(topic);
        const got = membersOf(answer.presences).map((m) => `${m.key}|${m.ref}|${canonical(m.meta)}`).join("\n");
        if (answer.topic !== topic || answer.keys !== keys || answer.members !== count || got !== want) {
          return `answered ${JSON.stringify(answer)}; ${client.label} lists ${describeMembers(client.members(topic))}`;
        }
        return "";
      });
    }
  }

  /** Installs `invariant` for the rest of the test; returns the violations it records. */
  function watch(t, invariant) {
    const violations = [];
    const hook = (client, record, event, payload) => {
      const problem = invariant(client, record, event, payload);
      if (problem) violations.push(problem);
    };
    sys.invariants.add(hook);
    t.after(() => sys.invariants.delete(hook));
    return violations;
  }

  /** No client ever lists one socket twice on `topic` (a duplicate, a zombie, a torn update). */
  function noDuplicateSockets(t, topic) {
    return watch(t, (client, record) => {
      if (record.topic !== topic || record.left) return null;
      const socks = membersOf(record.presence.state).map((m) => m.sock);
      const twice = socks.filter((sock, i) => socks.indexOf(sock) !== i);
      return twice.length ? `${client.label} listed ${twice.join(", ")} twice: ${describeMembers(membersOf(record.presence.state))}` : null;
    });
  }

  /** The smallest liveness left seen for node `id` between `from` and `to` (performance.now()). */
  function minLiveness(id, from = 0, to = Infinity) {
    let min = Infinity;
    let samples = 0;
    for (const { at, left } of sys.liveness) {
      if (at < from || at > to || !left.has(id)) continue;
      samples += 1;
      min = Math.min(min, left.get(id));
    }
    return { min, samples };
  }

  /** Node `client`'s node id on the backend: the prefix of the phx_ref of its member on `topic`. */
  function nodeIdOf(client, topic) {
    const own = client.members(topic).find((m) => m.sock === client.label);
    return own.ref.slice(0, own.ref.lastIndexOf("."));
  }

  /** Clients made by one test, closed when it ends. */
  function clientsOf(t) {
    const made = [];
    t.after(async () => {
      await Promise.all(made.map((client) => client.close()));
    });
    return (node, user, label) => {
      const client = new Client(sys, node, { user, label });
      made.push(client);
      return client;
    };
  }

  // -------------------------------------------------------------------------------------------

  test("1. lists agree on both nodes; one user with a socket on each node is one key with two metas", async (t) => {
    const topic = "room:1";
    const make = clientsOf(t);
    const duplicates = noDuplicateSockets(t, topic);
    const adaA = make(sys.nodeA, "ada", "ada@A");
    const cyA = make(sys.nodeA, "cy", "cy@A");
    const bobB = make(sys.nodeB, "bob", "bob@B");
    const deeB = make(sys.nodeB, "dee", "dee@B");
    const adaB = make(sys.nodeB, "ada", "ada@B");
    const all = [adaA, cyA, bobB, deeB, adaB];
    await Promise.all(all.map((c) => c.connect()));
    await Promise.all(all.map((c) => c.join(topic, { presence: { sock: c.label } })));

    let expected = [
      member("ada", "ada@A"), member("ada", "ada@B"), member("bob", "bob@B"), member("cy", "cy@A"), member("dee", "dee@B"),
    ];
    await converge("every list to hold the five members", topic, all, expected);
    for (const client of all) {
      const record = client.records.get(topic);
      assert.equal(record.states.length, 1, `${client.label} got ${record.states.length} presence_state frames`);
      const ada = client.members(topic).filter((m) => m.key === "ada");
      assert.equal(ada.length, 2, `${client.label}: ada is one key with two metas: ${describeMembers(ada)}`);
    }
    await apiAgrees(topic, bobB);

    // The nodes' gauges: entries are this node's members, members every node's on its topics.
    await eventually("the presence gauges", async () => {
      const [a, b] = await Promise.all([sys.nodeA.metrics(), sys.nodeB.metrics()]);
      const got = [a, b].map((m) => [m.get("switchboard_presence_entries"), m.get("switchboard_presence_members")]);
      return JSON.stringify(got) === JSON.stringify([[2, 5], [3, 5]]) ? "" : `[entries, members] on A, B: ${JSON.stringify(got)}`;
    });

    // Closing ada's socket on B leaves her meta from A, its phx_ref unchanged.
    const adaAref = adaA.members(topic).find((m) => m.sock === "ada@A").ref;
    await adaB.close();
    expected = expected.filter((m) => m.sock !== "ada@B");
    const rest = all.filter((c) => c !== adaB);
    await converge("ada@B's meta to go from every list", topic, rest, expected);
    for (const client of rest) {
      const ada = client.members(topic).filter((m) => m.key === "ada");
      assert.deepEqual(ada.map((m) => m.ref), [adaAref], `${client.label}: ada keeps exactly her A meta`);
    }
    await apiAgrees(topic, cyA);
    assert.deepEqual(duplicates, []);
  });

  test("2. channel.leave() on either node removes the member from every other list; a rejoin gets a new phx_ref", async (t) => {
    const topic = "room:2";
    const make = clientsOf(t);
    const duplicates = noDuplicateSockets(t, topic);
    const eveA = make(sys.nodeA, "eve", "eve@A");
    const gilA = make(sys.nodeA, "gil", "gil@A");
    const fayB = make(sys.nodeB, "fay", "fay@B");
    const halB = make(sys.nodeB, "hal", "hal@B");
    const all = [eveA, gilA, fayB, halB];
    await Promise.all(all.map((c) => c.connect()));
    await Promise.all(all.map((c) => c.join(topic, { presence: { sock: c.label } })));
    let expected = all.map((c) => member(c.user, c.label));
    await converge("every list to hold the four members", topic, all, expected);
    const gilRef = eveA.members(topic).find((m) => m.sock === "gil@A").ref;

    await gilA.leave(topic);
    assert.equal(gilA.records.get(topic).channel.state, "closed");
    expected = expected.filter((m) => m.key !== "gil");
    await converge("gil (left on A) to go from every list", topic, [eveA, fayB, halB], expected);
    await apiAgrees(topic, fayB);

    await halB.leave(topic);
    expected = expected.filter((m) => m.key !== "hal");
    await converge("hal (left on B) to go from every list", topic, [eveA, fayB], expected);
    await apiAgrees(topic, eveA);

    // gil's socket joins again: listed again, as a new member.
    await gilA.join(topic, { presence: { sock: "gil@A" } });
    expected.push(member("gil", "gil@A"));
    await converge("gil's rejoin to reach every list", topic, [eveA, fayB, gilA], expected);
    const again = fayB.members(topic).find((m) => m.sock === "gil@A").ref;
    assert.notEqual(again, gilRef, "a rejoin is a new member with a new phx_ref");
    await apiAgrees(topic, gilA);
    assert.deepEqual(duplicates, []);
  });

  test("3. presence_update: one diff with the new meta (phx_ref_prev) and the old one's leave, everywhere", async (t) => {
    const topic = "room:3";
    const make = clientsOf(t);
    const duplicates = noDuplicateSockets(t, topic);
    const ivyA = make(sys.nodeA, "ivy", "ivy@A");
    const kimA = make(sys.nodeA, "kim", "kim@A");
    const jonB = make(sys.nodeB, "jon", "jon@B");
    const obsB = make(sys.nodeB, undefined, "observer@B");
    const all = [ivyA, kimA, jonB, obsB];
    await Promise.all(all.map((c) => c.connect()));
    await Promise.all(all.map((c) => c.join(topic, c.user ? { presence: { sock: c.label } } : {})));
    const expected = [member("ivy", "ivy@A"), member("jon", "jon@B"), member("kim", "kim@A")];
    await converge("every list to hold the three members", topic, all, expected);

    /** `who` updates its meta to `extra`; every client must see it as one diff. */
    const update = async (who, extra) => {
      const old = who.members(topic).find((m) => m.sock === who.label).ref;
      const marks = new Map(all.map((c) => [c, { diffs: c.records.get(topic).diffs.length, joins: c.records.get(topic).joins.length }]));
      const answer = await who.push(topic, "presence_update", { sock: who.label, ...extra });
      assert.equal(answer.status, "ok", `${who.label}'s presence_update: ${JSON.stringify(answer)}`);
      const entry = expected.find((m) => m.sock === who.label);
      entry.meta = { sock: who.label, ...extra };
      await converge(`${who.label}'s new meta ${JSON.stringify(extra)} to reach every list`, topic, all, expected);
      const fresh = who.members(topic).find((m) => m.sock === who.label).ref;
      assert.notEqual(fresh, old, "an update is a new phx_ref");
      for (const client of all) {
        const record = client.records.get(topic);
        const since = record.diffs.slice(marks.get(client).diffs);
        // The update's diff joins `fresh` and leaves `old`. (A diff flushed after the mark may
        // still repeat `old`'s own join, which this client's presence_state already showed: the
        // node documents such repeats, and phoenix.js applies them without effect.)
        const touching = since.filter(
          ({ payload }) => JSON.stringify(payload).includes(fresh) || JSON.stringify(payload.leaves ?? {}).includes(old),
        );
        const frames = touching.map(({ payload }) => JSON.stringify(payload)).join("\n  ");
        assert.equal(touching.length, 1, `${client.label}: the update must come as ONE presence_diff, got:\n  ${frames}`);
        const { joins, leaves } = touching[0].payload;
        const joined = joins?.[who.user]?.metas ?? [];
        const left = leaves?.[who.user]?.metas ?? [];
        assert.ok(
          joined.some((m) => m.phx_ref === fresh && m.phx_ref_prev === old && m.status === extra.status),
          `${client.label}: the diff joins ${fresh} with phx_ref_prev ${old}: ${frames}`,
        );
        assert.ok(left.some((m) => m.phx_ref === old), `${client.label}: the diff leaves ${old}: ${frames}`);
        // What phoenix.js' onJoin callback saw.
        const calls = record.joins.slice(marks.get(client).joins).filter((call) => call.key === who.user);
        assert.ok(
          calls.some((call) => call.newPres.metas.some((m) => m.phx_ref === fresh && m.phx_ref_prev === old)),
          `${client.label}: onJoin(${who.user}) got newPres with phx_ref_prev: ${JSON.stringify(calls.map((c) => c.newPres))}`,
        );
        assert.equal(client.members(topic).filter((m) => m.sock === who.label).length, 1);
      }
    };

    await update(ivyA, { status: "typing" });
    await update(jonB, { status: "away" });
    await apiAgrees(topic, kimA);

    // Twenty updates in a row (each after the previous reply): the last wins, nobody ever lists
    // ivy twice (checked on every frame by `duplicates`). The backend's announcement of an
    // update may reach ivy's own node after its reply (and after the next update): it must not
    // bring back a meta that was replaced meanwhile.
    const BURST = 20;
    for (let i = 1; i <= BURST; i++) {
      const answer = await ivyA.push(topic, "presence_update", { sock: "ivy@A", status: `burst ${i}` });
      assert.equal(answer.status, "ok", JSON.stringify(answer));
    }
    expected.find((m) => m.sock === "ivy@A").meta = { sock: "ivy@A", status: `burst ${BURST}` };
    await converge("ivy's last update to reach every list", topic, all, expected);
    await apiAgrees(topic, jonB);

    // Ten more members, five per node, each pushing forty updates back-to-back, all at once:
    // replies and the backend's announcements interleave in every order.
    const busy = [];
    for (let i = 0; i < 10; i++) {
      const node = i % 2 === 0 ? sys.nodeA : sys.nodeB;
      busy.push(make(node, `busy${i}`, `busy${i}@${node === sys.nodeA ? "A" : "B"}`));
    }
    await Promise.all(busy.map((c) => c.connect()));
    await Promise.all(busy.map((c) => c.join(topic, { presence: { sock: c.label } })));
    const everyone = [...all, ...busy];
    for (const c of busy) expected.push(member(c.user, c.label));
    await converge("the ten busy members on every list", topic, everyone, expected);
    await Promise.all(busy.map(async (c) => {
      for (let i = 1; i <= 2 * BURST; i++) {
        const answer = await c.push(topic, "presence_update", { sock: c.label, status: `burst ${i}` });
        assert.equal(answer.status, "ok", `${c.label}: ${JSON.stringify(answer)}`);
      }
    }));
    for (const c of busy) expected.find((m) => m.sock === c.label).meta = { sock: c.label, status: `burst ${2 * BURST}` };
    await converge("every busy member's last update on every list", topic, everyone, expected);
    await apiAgrees(topic, jonB);
    assert.deepEqual(duplicates, [], "a socket was listed twice at some point");
  });

  test("4. SIGKILL of node A: its members leave B's lists within the TTL; after a restart the lists are exact", async (t) => {
    const topic = "room:4";
    const make = clientsOf(t);
    const leeA = make(sys.nodeA, "lee", "lee@A");
    const miaA = make(sys.nodeA, "mia", "mia@A");
    const adaA = make(sys.nodeA, "ada", "ada@A");
    const obsA = make(sys.nodeA, undefined, "observer@A");
    const nedB = make(sys.nodeB, "ned", "ned@B");
    const adaB = make(sys.nodeB, "ada", "ada@B");
    const obsB = make(sys.nodeB, undefined, "observer@B");
    const onA = [leeA, miaA, adaA, obsA];
    const onB = [nedB, adaB, obsB];
    const all = [...onA, ...onB];
    await Promise.all(all.map((c) => c.connect()));
    await Promise.all(all.map((c) => c.join(topic, c.user ? { presence: { sock: c.label } } : {})));
    const expected = all.filter((c) => c.user).map((c) => member(c.user, c.label));
    const fromB = expected.filter((m) => m.sock.endsWith("@B"));
    await converge("every list to hold the five members", topic, all, expected);
    await apiAgrees(topic, nedB);
    // Whatever happens here, the next tests get a running node A.
    t.after(async () => {
      if (sys.nodeA.child?.exitCode === null && sys.nodeA.child?.signalCode === null) return;
      await sys.nodeA.start();
      await sys.nodeA.ready();
    });
    const refsOfA = () => new Set(nedB.members(topic).filter((m) => m.sock.endsWith("@A")).map((m) => m.ref));

    // B's own members must never leave B's lists meanwhile.
    const flickers = watch(t, (client, record) => {
      if (record.topic !== topic || client.node !== sys.nodeB) return null;
      const socks = new Set(membersOf(record.presence.state).map((m) => m.sock));
      const missing = fromB.filter((m) => !socks.has(m.sock));
      return missing.length ? `${client.label} lost ${missing.map((m) => m.sock).join(", ")}` : null;
    });

    // Phase 1: kill, wait for A's members to leave B's lists, restart.
    const first = refsOfA();
    const idA = nodeIdOf(leeA, topic);
    const probedAt = performance.now();
    const leftAtKill = (await sys.backend.liveness()).get(idA);
    const killedAt = performance.now();
    await sys.nodeA.kill();
    const goneAt = await converge(
      "node A's members to leave every list on B",
      topic,
      onB,
      fromB,
      { banned: first, ms: TTL_MS + TTL_SLACK_MS + PATIENCE_MS },
    );
    const leaveMs = goneAt - killedAt;
    const live = minLiveness(idA, 0, probedAt);
    console.log(
      `[${sys.backend.name}] SIGKILL of node A -> its 3 members gone from every list on B after ${leaveMs.toFixed(0)} ms ` +
        `(TTL ${TTL_MS} ms; A's liveness on the backend had ${leftAtKill} ms left just before the kill, ` +
        `and never less than ${live.min} ms over ${live.samples} samples while it ran)`,
    );
    t.diagnostic(`kill to leave on B: ${leaveMs.toFixed(0)} ms`);
    // Not before the backend's own deadline for A: an earlier leave would be a reap of a node
    // whose liveness had not lapsed (the liveness was read before the kill, so a refresh in
    // between only moves the deadline later).
    assert.ok(leftAtKill !== undefined, `node A (${idA}) has no liveness on the backend`);
    assert.ok(
      goneAt >= probedAt + leftAtKill - 50,
      `node A's members left B's lists ${(goneAt - probedAt).toFixed(0)} ms after A's liveness was read with ${leftAtKill} ms left`,
    );
    assert.ok(
      leaveMs <= TTL_MS + TTL_SLACK_MS,
      `node A's members left B's lists ${leaveMs.toFixed(0)} ms after the kill; the TTL is ${TTL_MS} ms (+${TTL_SLACK_MS} ms slack)`,
    );
    await apiAgrees(topic, nedB, [sys.nodeB]);

    const restartAt = performance.now();
    await sys.nodeA.start();
    await sys.nodeA.ready();
    const rejoinedAt = await converge(
      "A's clients to reconnect and every list to be exact again",
      topic,
      all,
      expected,
      { banned: first },
    );
    console.log(`[${sys.backend.name}] node A restarted: lists exact on every client ${(rejoinedAt - restartAt).toFixed(0)} ms after the restart began`);
    for (const client of onA) {
      const record = client.records.get(topic);
      assert.ok(record.joinOks.length >= 2, `${client.label} rejoined (${record.joinOks.length} join oks)`);
      const state = JSON.stringify(record.states.at(-1).payload);
      for (const ref of first) assert.ok(!state.includes(ref), `${client.label}'s presence_state after the restart holds ${ref}: ${state}`);
    }
    await apiAgrees(topic, adaA);

    // Phase 2: kill and restart at once: A's clients rejoin as new members while the killed
    // incarnation's metas are still on the backend; those zombies must go within the TTL.
    const second = refsOfA();
    const killedAgainAt = performance.now();
    await sys.nodeA.kill();
    await sys.nodeA.start();
    await sys.nodeA.ready();
    const zombieFreeAt = await sys.world.until(
      "the killed incarnation's metas to leave every list on B",
      () => onB.every((c) => c.synced(topic) && !c.members(topic).some((m) => second.has(m.ref))),
      TTL_MS + TTL_SLACK_MS + PATIENCE_MS,
      () => diagnostics(topic, all),
    );
    const exactAt = await converge("every list to be exact after the quick restart", topic, all, expected, { banned: second });
    const zombieMs = zombieFreeAt - killedAgainAt;
    console.log(
      `[${sys.backend.name}] SIGKILL + immediate restart of node A: zombies gone from B's lists after ${zombieMs.toFixed(0)} ms, ` +
        `every list exact after ${(exactAt - killedAgainAt).toFixed(0)} ms`,
    );
    assert.ok(
      zombieMs <= TTL_MS + TTL_SLACK_MS,
      `the killed incarnation's metas stayed on B's lists ${zombieMs.toFixed(0)} ms; the TTL is ${TTL_MS} ms (+${TTL_SLACK_MS} ms slack)`,
    );
    for (const client of all) {
      const members = client.members(topic);
      assert.equal(new Set(members.map((m) => m.sock)).size, members.length, `${client.label}: ${describeMembers(members)}`);
      for (const ref of [...first, ...second]) assert.ok(!members.some((m) => m.ref === ref), `${client.label} lists zombie ${ref}`);
    }
    await apiAgrees(topic, obsB);
    assert.deepEqual(flickers, [], "B's own members left a list on B while node A was killed");
  });

  test("5. observers watch without being listed; bad presence params and forged presence events are refused", async (t) => {
    const topic = "room:5";
    const make = clientsOf(t);
    const oliA = make(sys.nodeA, "oli", "oli@A");
    const pamB = make(sys.nodeB, "pam", "pam@B");
    const qedA = make(sys.nodeA, "qed", "qed@A");
    const obsA = make(sys.nodeA, undefined, "observer@A");
    const obsB = make(sys.nodeB, undefined, "observer@B");
    const members = [oliA, pamB];
    await Promise.all([...members, qedA, obsA, obsB].map((c) => c.connect()));
    await Promise.all(members.map((c) => c.join(topic, { presence: { sock: c.label } })));
    const expected = [member("oli", "oli@A"), member("pam", "pam@B")];
    await converge("both members on both lists", topic, members, expected);
    // Nothing may ever list mallory (the forged member), or any member without a sock.
    const forged = watch(t, (client, record, event, payload) => {
      if (record.topic !== topic) return null;
      const text = JSON.stringify(payload);
      return /mallory|forged/.test(text) || membersOf(record.presence.state).some((m) => !m.sock)
        ? `${client.label} got ${event} ${text}`
        : null;
    });

    // Observers: the list, and they are not in it.
    await obsA.join(topic, {});
    await obsB.join(topic, {});
    const watchers = [...members, obsA, obsB];
    await converge("the observers to get the list", topic, watchers, expected);
    // An observer that says something about itself has no key to be listed under: the node
    // may refuse the join or take it as an observer's, but never lists it.
    const obsC = make(sys.nodeB, undefined, "observer-with-meta@B");
    await obsC.connect();
    try {
      await obsC.join(topic, { presence: { sock: "observer-with-meta@B" } });
      watchers.push(obsC);
      await converge("the observer with a presence param to get the list", topic, watchers, expected);
    } catch (error) {
      assert.match(String(error.response?.reason), /^invalid presence/, error.message);
      obsC.records.get(topic).channel.leave();
      await obsC.close();
    }
    for (const observer of [obsA, obsB]) {
      assert.equal(observer.records.get(topic).states.length, 1, `${observer.label} got its presence_state`);
    }
    await apiAgrees(topic, obsA);

    // Malformed presence params: refused, listed nowhere.
    const bad = [
      [{ presence: [1, 2] }, /^invalid presence/],
      [{ presence: "busy" }, /^invalid presence/],
      [{ presence: 42 }, /^invalid presence/],
      [{ presence: { sock: "qed@A", phx_ref: "mine" } }, /^invalid presence.*reserved/],
      [{ presence: { sock: "qed@A", phx_ref_prev: "x" } }, /^invalid presence.*reserved/],
      [{ presence: { sock: "qed@A", blob: "x".repeat(2000) } }, /^invalid presence.*limit/],
    ];
    for (const [params, reason] of bad) {
      const response = await qedA.joinRefused(topic, params);
      assert.match(String(response?.reason), reason, `join with ${JSON.stringify(params).slice(0, 80)}: ${JSON.stringify(response)}`);
    }
    // qed's socket still works; its valid join lists it.
    await qedA.join(topic, { presence: { sock: "qed@A" } });
    expected.push(member("qed", "qed@A"));
    const everyone = [...watchers, qedA];
    await converge("qed's valid join after the refused ones", topic, everyone, expected);

    // Forged server events: refused for a member, an observer, and a publisher.
    const forgedDiff = { joins: { mallory: { metas: [{ phx_ref: "forged", sock: "mallory" }] } }, leaves: {} };
    const forgedState = { mallory: { metas: [{ phx_ref: "forged", sock: "mallory" }] } };
    for (const [who, event, payload] of [
      [oliA, "presence_diff", forgedDiff],
      [pamB, "presence_diff", { joins: {}, leaves: { oli: { metas: [{ phx_ref: oliA.members(topic)[0]?.ref }] } } }],
      [oliA, "presence_state", forgedState],
      [obsB, "presence_diff", forgedDiff],
      [obsA, "presence_state", forgedState],
    ]) {
      const answer = await who.push(topic, event, payload);
      assert.equal(answer.status, "error", `${who.label}'s ${event} push: ${JSON.stringify(answer)}`);
    }
    for (const node of nodes()) {
      for (const event of ["presence_diff", "presence_state"]) {
        const response = await fetch(`http://${node.addr}/api/publish`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ topic, event, payload: event === "presence_diff" ? forgedDiff : forgedState }),
        });
        const text = await response.text();
        assert.ok(response.status >= 400, `a publish of ${event} to ${node.name}: ${response.status} ${text}`);
      }
    }
    // presence_update from an observer, and with a bad meta: refused.
    for (const [who, payload, reason] of [
      [obsA, { sock: "observer@A" }, /not a presence member|no presence key/],
      [oliA, [1, 2], /invalid presence|must be a JSON object/],
      [oliA, { sock: "oli@A", phx_ref: "x" }, /invalid presence/],
      [pamB, { sock: "pam@B", blob: "x".repeat(2000) }, /invalid presence/],
    ]) {
      const answer = await who.push(topic, "presence_update", payload);
      assert.equal(answer.status, "error", `${who.label}'s presence_update ${JSON.stringify(payload).slice(0, 60)}: ${JSON.stringify(answer)}`);
      assert.match(String(answer.response?.reason), reason, JSON.stringify(answer));
    }

    // A barrier: a legitimate change after all that reaches everyone, and nothing else did.
    const answer = await pamB.push(topic, "presence_update", { sock: "pam@B", status: "after" });
    assert.equal(answer.status, "ok", JSON.stringify(answer));
    expected.find((m) => m.sock === "pam@B").meta.status = "after";
    await converge("the barrier update to reach every list", topic, everyone, expected);
    await apiAgrees(topic, obsB);
    assert.deepEqual(forged, [], "a forged member reached a client");
  });

  test("6. a 200-client storm and a 2,000-member topic: nobody flaps, lists exact; measured: latency, diffs, presence_state time", async (t) => {
    const make = clientsOf(t);
    const name = sys.backend.name;
    // Members that never leave must never be announced as leaving (a leave and a join again is
    // a flap every client's onLeave/onJoin sees). Collected here, asserted after every
    // measurement is printed.
    const flaps = [];

    // (a) A change on one node reaching clients on the other: from the push to the first
    // client there listing the new meta.
    {
      const topic = "room:latency";
      const rayA = make(sys.nodeA, "ray", "ray@A");
      const sueB = make(sys.nodeB, "sue", "sue@B");
      const obsA = make(sys.nodeA, undefined, "observer@A");
      const obsB = make(sys.nodeB, undefined, "observer@B");
      const all = [rayA, sueB, obsA, obsB];
      await Promise.all(all.map((c) => c.connect()));
      await Promise.all(all.map((c) => c.join(topic, c.user ? { presence: { sock: c.label } } : {})));
      const expected = [member("ray", "ray@A"), member("sue", "sue@B")];
      await converge("both members listed", topic, all, expected);
      const samples = { "A->B": [], "B->A": [] };
      for (let i = 1; i <= 8; i++) {
        for (const [who, there, dir] of [[rayA, obsB, "A->B"], [sueB, obsA, "B->A"]]) {
          // Past the batch window since the last diff, so the sample is one change's path.
          await sleep(300);
          const sentAt = performance.now();
          const answer = await who.push(topic, "presence_update", { sock: who.label, seq: i });
          assert.equal(answer.status, "ok", JSON.stringify(answer));
          const seenAt = await sys.world.until(
            `${who.label}'s update ${i} on ${there.label}`,
            () => there.members(topic).some((m) => m.sock === who.label && m.meta.seq === i),
            PATIENCE_MS,
            () => diagnostics(topic, all),
          );
          samples[dir].push(seenAt - sentAt);
          expected.find((m) => m.sock === who.label).meta = { sock: who.label, seq: i };
        }
      }
      await converge("the last updates on every list", topic, all, expected);
      for (const [dir, values] of Object.entries(samples)) {
        console.log(`[${name}] presence_update ${dir} (push -> list change on the other node's client), ms: ${stats(values)}`);
      }
      await Promise.all(all.map((c) => c.close()));
    }

    // (b) 200 clients (100 per node) join one topic within ~1 s: presence_diff frames each.
    {
      const topic = "room:storm";
      const N = 200;
      const storm = [];
      for (let i = 0; i < N; i++) {
        const node = i % 2 === 0 ? sys.nodeA : sys.nodeB;
        storm.push(make(node, `s${String(i).padStart(3, "0")}`, `s${String(i).padStart(3, "0")}@${node === sys.nodeA ? "A" : "B"}`));
      }
      await Promise.all(storm.map((c) => c.connect()));
      const startedAt = performance.now();
      const joins = [];
      for (let i = 0; i < N; i++) {
        // 20 joins every 100 ms: all 200 within ~1 s.
        if (i > 0 && i % 20 === 0) await sleep(100);
        joins.push(storm[i].join(topic, { presence: { sock: storm[i].label } }));
      }
      await Promise.all(joins);
      const joinedAt = performance.now();
      // Every client lists all 200 (counted cheaply first, compared exactly after).
      const full = await sys.world.until(
        "every storm client to list all 200",
        () => storm.every((c) => c.synced(topic) && Object.keys(c.records.get(topic).presence.state).length === N),
        PATIENCE_MS * 2,
        () => storm.slice(0, 10).map((c) => `${c.label}: ${Object.keys(c.records.get(topic).presence.state).length}`).join(", "),
      );
      const expected = storm.map((c) => member(c.user, c.label));
      assert.equal(mismatch(topic, storm, expected), "", "the storm's lists are exact and agree on every phx_ref");
      // Frames still on their way would make the counts low: settle, then count.
      await sleep(600);
      const endedAt = performance.now();
      // Nobody left during the storm: no diff may carry a leave.
      const leaving = storm
        .map((c) => ({ c, diffs: c.records.get(topic).diffs.filter(({ payload }) => Object.keys(payload.leaves ?? {}).length > 0) }))
        .filter(({ diffs }) => diffs.length > 0);
      if (leaving.length) {
        const entries = leaving.reduce((a, { diffs }) => a + diffs.reduce((b, { payload }) => b + Object.keys(payload.leaves).length, 0), 0);
        const { c, diffs } = leaving[0];
        flaps.push(
          `storm: ${leaving.length} of ${N} clients got presence_diff leaves (${entries} leave entries in all) although nobody left; ` +
            `e.g. ${c.label} at +${(diffs[0].at - startedAt).toFixed(0)} ms: ${JSON.stringify(diffs[0].payload).slice(0, 400)}`,
        );
      }
      const diffCounts = storm.map((c) => c.records.get(topic).diffs.length);
      const stateCounts = storm.map((c) => c.records.get(topic).states.length);
      const perNode = (node) => diffCounts.filter((_, i) => storm[i].node === node);
      console.log(
        `[${name}] storm: ${N} clients joined ${topic} in ${(joinedAt - startedAt).toFixed(0)} ms (join calls to last ok); ` +
          `every list complete ${(full - startedAt).toFixed(0)} ms after the first join`,
      );
      console.log(`[${name}] storm: presence_diff frames per client on A: ${stats(perNode(sys.nodeA))}`);
      console.log(`[${name}] storm: presence_diff frames per client on B: ${stats(perNode(sys.nodeB))}`);
      console.log(`[${name}] storm: presence_diff frames in all: ${diffCounts.reduce((a, b) => a + b, 0)} (one per join per client would be ~${(N * (N - 1)) / 2})`);
      // Sanity: one presence_state per join; at most one diff per 250 ms per topic. A client's
      // diffs were all sent between the first join and the last count, so their number is
      // bounded by that window whatever the client's own delays.
      const window = endedAt - startedAt;
      for (const [i, client] of storm.entries()) {
        assert.equal(stateCounts[i], 1, `${client.label} got ${stateCounts[i]} presence_state frames`);
        assert.ok(
          diffCounts[i] <= Math.floor(window / 250) + 2,
          `${client.label} got ${diffCounts[i]} presence_diff frames in ${window.toFixed(0)} ms (batching promises at most one per 250 ms)`,
        );
      }
      await Promise.all(storm.map((c) => c.close()));
    }

    // (c) presence_state of a topic with 2,000 members (1,000 bare WebSockets per node), read
    // by fresh phoenix.js observers on each node.
    {
      const topic = "room:big";
      const N = MAX_MEMBERS;
      const bulk = [];
      t.after(() => {
        for (const m of bulk) m.ws.terminate();
      });
      const startedAt = performance.now();
      // At most 100 joins in flight at once. A loaded node may time a WebSocket handshake out
      // (HTTP 408): the member connects again, as any client would.
      let next = 0;
      const retries = [];
      const worker = async () => {
        while (next < N) {
          const j = next++;
          const user = `big${String(j).padStart(4, "0")}`;
          for (let attempt = 1; ; attempt++) {
            try {
              await rawMember(j % 2 === 0 ? sys.nodeA : sys.nodeB, user, topic, bulk, j % 50 === 1);
              break;
            } catch (error) {
              if (attempt >= 5 || !error.beforeOpen) throw error;
              retries.push(`${user}: ${error.message}`);
              await sleep(200 * attempt);
            }
          }
        }
      };
      await Promise.all(Array.from({ length: 100 }, worker));
      if (retries.length) console.log(`[${name}] big: ${retries.length} handshakes failed and were retried, e.g. ${retries[0]}`);
      const joinedAt = performance.now();
      await eventually("both nodes to list 2,000 members of room:big", async () => {
        const answers = await Promise.all(nodes().map((node) => node.presence(topic)));
        return answers.every((a) => a.keys === N && a.members === N)
          ? ""
          : answers.map((a) => `${a.keys} keys, ${a.members} members`).join("; ");
      }, PATIENCE_MS * 2);
      const listedAt = performance.now();
      console.log(
        `[${name}] big: ${N} bare sockets joined ${topic} in ${(joinedAt - startedAt).toFixed(0)} ms; ` +
          `both nodes' /api/presence list all ${N} after ${(listedAt - startedAt).toFixed(0)} ms`,
      );

      // The topic is full (--presence-max-members, across both nodes): one more member is
      // refused on either node, a member in it may still change its meta, observers still join
      // (below).
      for (const node of nodes()) {
        const extra = make(node, "overflow", `overflow@${node === sys.nodeA ? "A" : "B"}`);
        await extra.connect();
        const response = await extra.joinRefused(topic, { presence: { sock: extra.label } });
        assert.match(String(response?.reason), /^too many members/, `a member past the limit on ${node.name}: ${JSON.stringify(response)}`);
        await extra.close();
      }
      const updater = bulk.find((m) => m.joined);
      const updated = await updater.push(topic, "presence_update", { sock: updater.user, status: "full" });
      assert.equal(updated.status, "ok", `${updater.user}'s presence_update in a full topic: ${JSON.stringify(updated)}`);
      for (const node of nodes()) {
        await eventually(`${node.name} to list ${updater.user}'s new meta`, async () => {
          const answer = await node.presence(topic);
          const metas = answer.presences[updater.user]?.metas ?? [];
          return answer.members === N && metas.length === 1 && metas[0].status === "full"
            ? ""
            : `${answer.members} members; ${updater.user}: ${JSON.stringify(metas)}`;
        });
      }

      const samples = { A: [], B: [] };
      let bytes = 0;
      for (let round = 1; round <= 3; round++) {
        for (const [label, node] of [["A", sys.nodeA], ["B", sys.nodeB]]) {
          const observer = make(node, undefined, `big-observer${round}@${label}`);
          await observer.connect();
          const record = await observer.join(topic, {});
          const at = await sys.world.until(
            `${observer.label}'s presence_state of ${topic}`,
            () => record.states.length > 0 && Object.keys(record.presence.state).length === N,
            PATIENCE_MS,
            () => `${record.states.length} states, ${Object.keys(record.presence.state).length} keys listed`,
          );
          const state = record.states[0];
          bytes = JSON.stringify(state.payload).length;
          assert.equal(Object.keys(state.payload).length, N, `${observer.label}'s presence_state has every member`);
          assert.ok(
            Object.values(state.payload).every((p) => p.metas.length === 1),
            "each bare socket is one meta",
          );
          samples[label].push(state.at - record.joinSentAt);
          await observer.close();
        }
      }
      console.log(`[${name}] big: presence_state of ${N} members (${bytes} bytes), join sent -> state received, ms, on A: ${stats(samples.A)}`);
      console.log(`[${name}] big: same on B: ${stats(samples.B)}`);
      const received = bulk.reduce((a, m) => a + m.bytes, 0);
      console.log(`[${name}] big: the ${N} bare members received ${(received / 1e6).toFixed(1)} MB of presence frames while joining`);
      const inspected = bulk.filter((m) => m.inspect);
      const sum = (f) => inspected.reduce((a, m) => a + f(m), 0);
      console.log(
        `[${name}] big: ${inspected.length} inspected members (every 50th) got ${sum((m) => m.diffs)} diffs with ` +
          `${sum((m) => m.joinEntries)} join entries, ${sum((m) => m.repeated)} of them for a member already known, ` +
          `and ${sum((m) => m.leaveEntries)} leave entries; ${(sum((m) => m.bytes) / 1e6).toFixed(1)} MB`,
      );
      // Each inspected member's list, as phoenix.js builds it from the frames, is all 2,000,
      // and nobody was announced leaving.
      for (const m of inspected) {
        const listed = Object.keys(m.state).length;
        if (listed !== N) flaps.push(`big: ${m.user}'s list (phoenix.js syncState/syncDiff of its frames) has ${listed} keys, not ${N}`);
      }
      const leaving = inspected.filter((m) => m.leaveEntries > 0);
      if (leaving.length) {
        flaps.push(
          `big: ${leaving.length} of ${inspected.length} inspected members got leave entries although nobody left ` +
            `(${sum((m) => m.leaveEntries)} in all; ${sum((m) => m.sameDiff)} left in the very diff that joined them); ` +
            `first of ${leaving[0].user}: ${leaving[0].firstLeave}`,
        );
      }
      for (const m of bulk) m.ws.terminate();
    }

    // Every socket of every test is gone: no member may stay listed or held anywhere.
    await Promise.all([...sys.clients].map((c) => c.close()));
    const closedAt = performance.now();
    await eventually("both nodes to hold and list no member once every socket closed", async () => {
      const got = [];
      for (const node of nodes()) {
        const m = await node.metrics();
        const big = await node.presence("room:big");
        got.push(`${node.name}: entries ${m.get("switchboard_presence_entries")}, members ${m.get("switchboard_presence_members")}, room:big lists ${big.members}`);
        if (m.get("switchboard_presence_entries") !== 0 || m.get("switchboard_presence_members") !== 0 || big.members !== 0) continue;
        got.pop();
      }
      return got.join("; ");
    }, PATIENCE_MS * 2);
    console.log(`[${name}] every member gone from both nodes ${(performance.now() - closedAt).toFixed(0)} ms after the last sockets closed`);

    // The metrics and the nodes' warnings, for the record.
    for (const node of nodes()) {
      const warnings = node.stderr.filter((line) => /\bWARN\b/.test(line));
      const kinds = new Map();
      for (const line of warnings) {
        const kind = line.replace(/^.*?WARN\s*/, "").replace(/\x1b\[[0-9;]*m/g, "").slice(0, 120);
        kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
      }
      console.log(`[${name}] ${node.name} logged ${warnings.length} warnings${[...kinds].slice(0, 5).map(([k, n]) => `\n    ${n} x ${k}`).join("")}`);
    }
    for (const node of nodes()) {
      const m = await node.metrics();
      const names = [
        "switchboard_bridge_dropped_total", "switchboard_slow_consumer_disconnects_total",
        "switchboard_presence_entries", "switchboard_presence_members", "switchboard_presence_diffs_total",
        "switchboard_presence_states_total", "switchboard_presence_errors_total",
      ];
      console.log(`[${name}] ${node.name} metrics: ${names.map((n) => `${n.replace("switchboard_presence_", "")}=${m.get(n)}`).join(" ")}`);
      assert.ok(m.get("switchboard_presence_states_total") > 0 && m.get("switchboard_presence_diffs_total") > 0, `${node.name} counts states and diffs`);
    }
    assert.deepEqual(flaps, [], "members that never left were announced leaving");
  });
}

/**
 * A bare WebSocket (no phoenix.js) joined to `topic` as `user`: pushed onto `into`, resolves
 * once the join is answered ok. It only counts what it receives afterwards.
 */
function rawMember(node, user, topic, into, inspect = false) {
  return within(`${user} to join ${topic} on ${node.name}`, (resolve, reject) => {
    // Hundreds of MB of diffs reach these sockets while the topic fills up: receiving them
    // must not make this process the bottleneck.
    const ws = new WebSocket(`ws://${node.addr}/socket/websocket?vsn=2.0.0&user=${encodeURIComponent(user)}`, {
      perMessageDeflate: false,
      skipUTF8Validation: true,
    });
    // An inspected member parses every frame: how many diffs, how many join entries, and how
    // many of those named a member it already had (in its state or an earlier diff).
    const m = {
      ws, user, bytes: 0, joined: false, opened: false, inspect,
      /** ref -> resolve, for `push`. */
      replies: new Map(),
      nextRef: 2,
      /** A push on `topic`: resolves with the reply's payload ({status, response}). */
      push(topicOf, event, body) {
        const ref = String(m.nextRef++);
        return within(`${user}'s ${event} reply`, (done) => {
          m.replies.set(ref, done);
          ws.send(JSON.stringify(["1", ref, topicOf, event, body]));
        });
      },
      diffs: 0, joinEntries: 0, repeated: 0, leaveEntries: 0, sameDiff: 0, firstLeave: null, known: new Set(),
      /** The list as phoenix.js' Presence would hold it. */
      state: {},
    };
    ws.on("error", (error) => {
      if (!m.joined) reject(Object.assign(new Error(`${user}: ${error.message}`), { beforeOpen: !m.opened }));
    });
    ws.on("open", () => {
      m.opened = true;
      into.push(m);
    });
    ws.on("open", () => ws.send(JSON.stringify(["1", "1", topic, "phx_join", { presence: { sock: user } }])));
    ws.on("message", (data) => {
      m.bytes += data.length;
      if (m.joined && !m.inspect && m.replies.size === 0) return;
      const [, ref, , event, payload] = JSON.parse(data.toString());
      if (event === "phx_reply" && m.replies.has(ref)) {
        m.replies.get(ref)(payload);
        m.replies.delete(ref);
      }
      if (event === "presence_state") {
        for (const { metas } of Object.values(payload)) for (const meta of metas) m.known.add(meta.phx_ref);
        m.state = Presence.syncState(m.state, payload);
      } else if (event === "presence_diff") {
        m.diffs += 1;
        const joined = new Set();
        // Metas an update in this diff replaces (phx_ref_prev): their leave is the update's.
        const replaced = new Set();
        for (const { metas } of Object.values(payload.joins ?? {})) {
          for (const meta of metas) {
            m.joinEntries += 1;
            if (m.known.has(meta.phx_ref)) m.repeated += 1;
            m.known.add(meta.phx_ref);
            joined.add(meta.phx_ref);
            if (meta.phx_ref_prev) replaced.add(meta.phx_ref_prev);
          }
        }
        for (const [key, { metas }] of Object.entries(payload.leaves ?? {})) {
          const left = metas.filter((meta) => !replaced.has(meta.phx_ref));
          m.leaveEntries += left.length;
          for (const meta of left) {
            if (joined.has(meta.phx_ref)) m.sameDiff += 1;
            m.firstLeave ??= `${key}/${meta.phx_ref} in a diff of ${joined.size} joins and ${Object.keys(payload.leaves).length} leaves`;
          }
        }
        m.state = Presence.syncDiff(m.state, payload);
      }
      if (m.joined) return;
      if (event === "phx_reply" && ref === "1") {
        if (payload.status === "ok") {
          m.joined = true;
          resolve(m);
        } else {
          reject(new Error(`${user}: join refused ${JSON.stringify(payload)}`));
        }
      }
    });
  });
}
