// What the suites in tests/js share: finding and starting the switchboard binary, waiting with
// a deadline, and the processes they start (nodes, redis-server), which are killed whatever
// happens. It is a module the test files import, not a test: its name must match none of the
// patterns `node --test` runs (such as *.test.mjs).
//
// The binary is $SWITCHBOARD_BIN, else $CARGO_TARGET_DIR/debug/switchboard (relative to the
// workspace if relative), else <workspace>/target/debug/switchboard; build it with
// `cargo build -p switchboard-node --bin switchboard`. Every node starts with the environment
// variables it reads its options from (NODE_ENV_VARS) removed, so only the flags a test passes
// configure it.
//
// What it offers:
//   - WORKSPACE, binaryPath(), NODE_ENV_VARS;
//   - PATIENCE_MS, the default deadline of one step (a process start, a join, a reconnect);
//   - within(what, register, ms): a promise settled by a callback, or rejected after `ms`;
//   - Condition: a check re-run on notify(), awaited with until(what, check, ms, describe);
//   - freePort(), sleep(ms);
//   - track(child), killAll(), waitGone(child), stopAll(): every tracked child is SIGKILLed
//     when the process exits, whatever happened;
//   - tail(stream, keep): the last lines a process wrote;
//   - redisPing(port), startRedis(port): a private redis-server;
//   - Node: a switchboard node (on a fixed port, or on one the OS picks) that can be killed
//     and started again, with its /readyz and the tail of its stderr.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository's root. */
export const WORKSPACE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

/** How long any single step (a process start, a join, a reconnect) may take, by default. */
export const PATIENCE_MS = 20_000;

/** Every environment variable the node reads its options from: the tests set them by flag. */
export const NODE_ENV_VARS = [
  "BIND", "CONFIG", "MAX_FRAME_BYTES", "MAX_TOPICS_PER_SOCKET", "IDLE_TIMEOUT",
  "SEND_BUFFER_BYTES", "WRITE_TIMEOUT", "MAX_PUBLISH_BYTES", "SHUTDOWN_TIMEOUT", "TOKEN_SECRET",
  "API_KEY", "OPEN_PUBLISH", "ALLOWED_ORIGINS", "MAX_CONNECTIONS", "MAX_CONNECTIONS_PER_USER",
  "MAX_CONNECTIONS_PER_ADDRESS", "CLIENT_IP_HEADER", "MAX_TOPIC_BYTES", "PUSH_RATE", "PUSH_BURST",
  "JOIN_RATE", "JOIN_BURST", "PRESENCE_TTL", "PRESENCE_MAX_MEMBERS", "PRESENCE_MAX_META_BYTES",
  "PUBSUB_BACKEND", "REDIS_URL", "CHANNEL_PREFIX", "DATABASE_URL", "ENVELOPE",
  "SUBSCRIBE_TIMEOUT", "BACKEND_TIMEOUT", "UNSUBSCRIBE_LINGER", "BRIDGE_QUEUE_MESSAGES",
  "BRIDGE_QUEUE_BYTES",
];

/** Where the switchboard binary is expected (see the top of this file). */
export function binaryPath() {
  if (process.env.SWITCHBOARD_BIN) return process.env.SWITCHBOARD_BIN;
  const target = process.env.CARGO_TARGET_DIR
    ? path.resolve(WORKSPACE, process.env.CARGO_TARGET_DIR)
    : path.join(WORKSPACE, "target");
  return path.join(target, "debug", "switchboard");
}

// ---------------------------------------------------------------------------------------------
// Waiting

/** Resolves with what `register(resolve, reject)` delivers, or rejects after `ms`. */
export function within(what, register, ms = PATIENCE_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    register(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

/**
 * A condition re-checked whenever `notify()` is called; `until(what, check)` awaits it and
 * resolves with the time (performance.now()) the check first held.
 *
 * By default every `notify()` runs the waiting checks at once. With `batchMs`, checks run at
 * most every `batchMs` (a storm of notifications costs a few checks, not one each); with
 * `pollMs`, each waiting check also runs every `pollMs`, for a condition that may turn true
 * without a notification.
 */
export class Condition {
  #waiters = new Set();
  #scheduled = null;
  #batchMs;
  #pollMs;

  constructor({ batchMs = 0, pollMs = 0 } = {}) {
    this.#batchMs = batchMs;
    this.#pollMs = pollMs;
  }

  notify() {
    if (!this.#batchMs) {
      for (const waiter of [...this.#waiters]) waiter();
      return;
    }
    if (this.#scheduled || this.#waiters.size === 0) return;
    this.#scheduled = setTimeout(() => {
      this.#scheduled = null;
      for (const waiter of [...this.#waiters]) waiter();
    }, this.#batchMs);
  }

  /** Resolves once `check()` holds; on a timeout the error carries what `describe()` says. */
  until(what, check, ms = PATIENCE_MS, describe = () => "") {
    if (check()) return Promise.resolve(performance.now());
    let waiter;
    let poll;
    return within(what, (resolve) => {
      waiter = () => {
        if (check()) resolve(performance.now());
      };
      this.#waiters.add(waiter);
      if (this.#pollMs) poll = setInterval(waiter, this.#pollMs);
    }, ms)
      .catch((error) => {
        const detail = describe();
        throw detail ? new Error(`${error.message}\n${detail}`) : error;
      })
      .finally(() => {
        clearInterval(poll);
        this.#waiters.delete(waiter);
      });
  }
}

/** A port nothing listens on right now (the OS's pick). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// Processes: every tracked child is killed when the process exits, whatever happened.

/** The tracked children still running. */
export const children = new Set();

/** Tracks `child` (until it exits); returns it. */
export function track(child) {
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

/** SIGKILLs every tracked child still running. */
export function killAll() {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}
process.on("exit", killAll);

/** Resolves once `child` has exited. */
export async function waitGone(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await new Promise((resolve) => child.once("exit", resolve));
}

/** SIGKILLs every tracked child; resolves once they are all gone. */
export async function stopAll() {
  const running = [...children];
  killAll();
  await Promise.all(running.map(waitGone));
}

/** Lines a process wrote on a stream, the last `keep` of them. */
export function tail(stream, keep = 400) {
  const lines = [];
  readline.createInterface({ input: stream }).on("line", (line) => {
    lines.push(line);
    if (lines.length > keep) lines.shift();
  });
  return lines;
}

// ---------------------------------------------------------------------------------------------
// redis-server

/** Answers `PING` over a fresh TCP connection: whether Redis serves yet. */
export function redisPing(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    let data = "";
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.on("error", () => done(false));
    socket.on("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk) => {
      data += chunk;
      if (data.includes("\r\n")) done(data.startsWith("+PONG"));
    });
  });
}

/**
 * A tracked redis-server on `port` (no persistence), once it answers PING; resolves to
 * { child, output } (output: the last 50 lines of its stdout).
 */
export async function startRedis(port) {
  const child = track(
    spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
  const output = tail(child.stdout, 50);
  tail(child.stderr, 50);
  let exited = null;
  child.on("exit", (code, signal) => (exited = code ?? signal));
  child.on("error", (error) => (exited = error.message));
  const deadline = Date.now() + PATIENCE_MS;
  while (!(await redisPing(port))) {
    if (exited !== null) throw new Error(`redis-server exited (${exited}):\n${output.join("\n")}`);
    if (Date.now() > deadline) throw new Error(`redis-server did not answer PING within ${PATIENCE_MS} ms`);
    await sleep(25);
  }
  return { child, output };
}

// ---------------------------------------------------------------------------------------------
// Nodes

/**
 * A switchboard node, tracked. `args` are its flags besides --bind. On a fixed `port`,
 * `start()` again after `kill()` restarts it there; on port 0 (the default) it binds a port the
 * OS picks, and `addr` is what its listening line says. `env` adds to (or overrides) the
 * environment it gets, from which NODE_ENV_VARS are removed.
 */
export class Node {
  constructor(name, args, { port = 0, env = {} } = {}) {
    this.name = name;
    this.port = port;
    this.addr = port ? `127.0.0.1:${port}` : null;
    this.args = args;
    this.env = env;
    this.child = null;
    /** stderr of every run of this node, runs separated by a marker line. */
    this.stderr = [];
    this.runs = 0;
  }

  /** Starts the node; resolves (to the node) once it printed its listening line. */
  async start() {
    const bin = binaryPath();
    if (!existsSync(bin)) {
      throw new Error(
        `the switchboard binary was not found at ${bin}: run \`cargo build -p switchboard-node --bin switchboard\` first (or set SWITCHBOARD_BIN)`,
      );
    }
    const env = { ...process.env };
    for (const name of NODE_ENV_VARS) delete env[name];
    Object.assign(env, this.env);
    // A restart right after a SIGKILL may find the port still held for a moment: retry.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#spawn(bin, env);
        return this;
      } catch (error) {
        if (attempt >= 5 || !/address already in use|Address in use|AddrInUse/i.test(error.message)) throw error;
        await sleep(200 * attempt);
      }
    }
  }

  #spawn(bin, env) {
    this.runs += 1;
    this.stderr.push(`----- ${this.name} run ${this.runs} -----`);
    const bind = this.port ? this.addr : "127.0.0.1:0";
    const child = track(spawn(bin, ["--bind", bind, ...this.args], { env, stdio: ["ignore", "pipe", "pipe"] }));
    this.child = child;
    readline.createInterface({ input: child.stderr }).on("line", (line) => {
      this.stderr.push(line);
      if (this.stderr.length > 2000) this.stderr.shift();
    });
    const stdout = readline.createInterface({ input: child.stdout });
    return new Promise((resolve, reject) => {
      let first = true;
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`${this.name}: no listening line within ${PATIENCE_MS} ms\n${this.stderrTail()}`));
      }, PATIENCE_MS);
      stdout.on("line", (line) => {
        // Keep reading so the pipe never fills; only the first line matters.
        if (!first) return;
        first = false;
        clearTimeout(timer);
        const match = /^switchboard listening on http:\/\/(\S+)$/.exec(line);
        if (match && (!this.port || match[1] === this.addr)) {
          this.addr = match[1];
          resolve();
        } else {
          child.kill("SIGKILL");
          reject(new Error(`${this.name}: unexpected first stdout line ${JSON.stringify(line)}`));
        }
      });
      child.on("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`${this.name} exited (${code ?? signal}) before listening\n${this.stderrTail()}`));
      });
    });
  }

  /** Resolves once /readyz answers 200 (the node's link to its backend is up). */
  async ready() {
    const deadline = Date.now() + PATIENCE_MS;
    for (;;) {
      try {
        const response = await fetch(`http://${this.addr}/readyz`);
        await response.arrayBuffer();
        if (response.status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`${this.name} not ready within ${PATIENCE_MS} ms\n${this.stderrTail()}`);
      await sleep(25);
    }
  }

  /** SIGKILLs the node; resolves once it is gone. */
  kill() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    const gone = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    return gone;
  }

  stderrTail(lines = 40) {
    return `${this.name} stderr (last ${lines} lines):\n${this.stderr.slice(-lines).join("\n")}`;
  }
}
