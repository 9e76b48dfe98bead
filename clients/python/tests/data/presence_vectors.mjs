// Records what phoenix.js' own `Presence` does with random presence_state / presence_diff
// sequences, for tests/test_presence_vectors.py to replay against the Python port.
//
//   node clients/python/tests/data/presence_vectors.mjs > clients/python/tests/data/presence_vectors.json
//
// The `phoenix` package is tests/js's (cd tests/js && npm ci). The sequences come from a
// seeded generator, so the output only changes with phoenix.js or this script.
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const phoenix = path.resolve(here, "../../../../tests/js/node_modules/phoenix/priv/static/phoenix.mjs");
const { Presence } = await import(pathToFileURL(phoenix).href);

let seed = 17;
function random() {
  // mulberry32
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (items) => items[Math.floor(random() * items.length)];
const KEYS = ["ada", "bob", "cy", "dee", "eve"];
let counter = 0;
const meta = (ref) => ({ phx_ref: ref ?? `r${++counter}`, n: Math.floor(random() * 3) });
const someRef = () => `r${1 + Math.floor(random() * Math.max(1, counter))}`;

function presences(maxKeys, reuse) {
  const out = {};
  const count = Math.floor(random() * (maxKeys + 1));
  for (let i = 0; i < count; i++) {
    const metas = [];
    const n = 1 + Math.floor(random() * 3);
    for (let j = 0; j < n; j++) metas.push(meta(reuse && random() < 0.4 ? someRef() : undefined));
    out[pick(KEYS)] = { metas };
  }
  return out;
}

class FakeChannel {
  constructor() { this.ref = "1"; this.handlers = {}; }
  joinRef() { return this.ref; }
  on(event, callback) { this.handlers[event] = callback; }
}

const sequences = [];
for (let s = 0; s < 40; s++) {
  const channel = new FakeChannel();
  const presence = new Presence(channel);
  let calls = [];
  presence.onJoin((key, current, joined) =>
    calls.push(JSON.parse(JSON.stringify(["join", key, current ? current.metas : null, joined.metas]))));
  presence.onLeave((key, current, left) =>
    calls.push(JSON.parse(JSON.stringify(["leave", key, current.metas, left.metas]))));
  presence.onSync(() => calls.push(["sync"]));
  const steps = [];
  const length = 4 + Math.floor(random() * 10);
  for (let i = 0; i < length; i++) {
    const r = random();
    let step;
    if (r < 0.2) {
      step = { op: "state", payload: presences(4, true) };
    } else if (r < 0.3) {
      channel.ref = String(Number(channel.ref) + 1);
      step = { op: "rejoin", join_ref: channel.ref };
    } else {
      const leaves = {};
      for (const key of Object.keys(presences(3, false))) {
        const metas = [];
        const n = 1 + Math.floor(random() * 2);
        for (let j = 0; j < n; j++) metas.push({ phx_ref: someRef() });
        leaves[key] = { metas };
      }
      step = { op: "diff", payload: { joins: presences(2, true), leaves } };
    }
    calls = [];
    if (step.op !== "rejoin") {
      channel.handlers[step.op === "state" ? "presence_state" : "presence_diff"](
        JSON.parse(JSON.stringify(step.payload)));
    }
    step.calls = calls;
    step.list = presence.list((key, { metas }) => [key, metas]);
    step.pending = presence.inPendingSyncState();
    steps.push(step);
  }
  sequences.push(steps);
}
const packageJson = path.resolve(path.dirname(phoenix), "../../package.json");
const { version } = JSON.parse(await readFile(packageJson, "utf8"));
process.stdout.write(JSON.stringify({ phoenix: version, sequences }) + "\n");
