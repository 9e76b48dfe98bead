// FakeServer: a Switchboard server in memory for frontend tests, and the browser-like
// WebSocket class phoenix.js connects to it with.
//
// Shared by the package's two builds: scripts/package-js.mjs wraps this file into
// node/index.js (CommonJS) and web/index.js (ES module), each handing `createFakeServer` its
// wasm-bindgen build. Every protocol decision (replies, their order, error reasons, close
// codes, limits, channel rules, tokens, presence lists and diffs, history positions and
// recovery) is the wasm engine's: the core's LocalServer, which drives the same Connection
// state machine as the node's sessions. What lives here is the WebSocket emulation (ready
// states, events, asynchronous delivery), the clock and timer, the checks of the options, and
// the records tests assert on.

/* eslint-disable no-unused-vars */
function createFakeServer({ FakeServerEngine, decodeFrame, isReady }) {
  const CONNECTING = 0;
  const OPEN = 1;
  const CLOSING = 2;
  const CLOSED = 3;
  // The only path the node serves WebSockets on.
  const ENDPOINT = "/socket/websocket";
  const RULES = ["anyone", "authenticated", "owner", "nobody"];
  // The node's secure default for namespaces without rules: join owner, push nobody.
  const SECURE_DEFAULT = { join: "owner", push: "nobody" };
  // The node's bounds of a `[channels]` table's history (docs/history.md).
  const MAX_HISTORY = 100000;
  const DEFAULT_HISTORY_TTL = 600000;
  const CHANNEL_KEYS = ["join", "push", "presence", "history", "historyTtl"];
  // The node's defaults and bounds (docs/node.md, docs/presence.md), in the order the engine
  // takes them: [name, default, max, min].
  const LIMITS = [
    ["maxFrameBytes", 65536, 4294967295],
    ["maxTopicsPerSocket", 100, 4294967295],
    ["maxTopicBytes", 255, 255],
    ["pushRate", 100, 4294967295],
    ["pushBurst", 200, 4294967295],
    ["joinRate", 20, 4294967295],
    ["joinBurst", 200, 4294967295],
    ["presenceMaxMembers", 10000, 4294967295],
    ["presenceMaxMetaBytes", 1024, 4096, 2],
  ];
  // Each server's seed: its history epochs and presence refs differ from every other
  // server's in this process, and are the same from run to run.
  let servers = 0;
  const OPTIONS = ["channels", "tokenSecret", ...LIMITS.map(([name]) => name), "idleTimeout", "now", "schedule"];

  const coded = (message, code, fields) => Object.assign(new Error(message), { code }, fields);
  const invalid = (message) => coded(message, "invalid_argument");

  const domException = (message, name) =>
    typeof DOMException === "function" ? new DOMException(message, name) : Object.assign(new Error(message), { name });

  // An exception thrown by an event listener is reported, as browsers report it, without
  // stopping the other listeners or the delivery of later events.
  const report = (error) => {
    if (typeof globalThis.reportError === "function") {
      globalThis.reportError(error);
    } else {
      queueMicrotask(() => {
        throw error;
      });
    }
  };

  const utf8Length = (text) => new TextEncoder().encode(text).length;

  /** Checks `options` as the node checks its configuration; returns what the engine needs. */
  function readOptions(options) {
    if (options === undefined || options === null) options = {};
    if (typeof options !== "object" || Array.isArray(options)) {
      throw invalid("options must be an object such as { tokenSecret, channels, idleTimeout: 60000 }");
    }
    for (const key of Object.keys(options)) {
      if (!OPTIONS.includes(key)) {
        throw invalid(`unknown option ${JSON.stringify(key)}; the options are ${OPTIONS.join(", ")}`);
      }
    }
    const limits = LIMITS.map(([name, fallback, max, min = 1]) => {
      const value = options[name];
      if (value === undefined) return fallback;
      if (!Number.isInteger(value) || value < min || value > max) {
        throw invalid(`${name} must be a whole number from ${min} to ${max}`);
      }
      return value;
    });
    let idleTimeout = options.idleTimeout ?? 60000;
    if (typeof idleTimeout !== "number" || !(idleTimeout > 0) || idleTimeout > 1e12) {
      throw invalid("idleTimeout must be a positive number of milliseconds");
    }
    const tokenSecret = options.tokenSecret ?? undefined;
    if (tokenSecret !== undefined && typeof tokenSecret !== "string") {
      throw invalid("tokenSecret must be a string");
    }
    const { lines: channels, rules } = readChannels(options.channels);
    if (rules && tokenSecret === undefined) {
      console.warn(
        "switchboard-wasm: channel rules are not enforced without tokenSecret (as on a node without --token-secret): every socket may join and push everywhere",
      );
    }
    const now = options.now ?? defaultClock();
    if (typeof now !== "function") throw invalid("now must be a function returning milliseconds");
    const schedule = options.schedule ?? ((callback) => setTimeout(callback, 0));
    if (typeof schedule !== "function") throw invalid("schedule must be a function taking a callback");
    return { channels, tokenSecret, limits, idleTimeout, now, clock: options.now === undefined, schedule };
  }

  /**
   * `{ namespace: { join, push, presence, history, historyTtl } }` (the node's `[channels]`
   * tables) as the engine's `JPXsize/ttl/namespace` lines (see wasm/src/server.rs); `rules`
   * says whether any table names a join or push rule.
   */
  function readChannels(channels) {
    if (channels === undefined || channels === null) return { lines: "", rules: false };
    if (typeof channels !== "object" || Array.isArray(channels)) {
      throw invalid('channels must be an object such as { room: { join: "authenticated", push: "authenticated", presence: true } }');
    }
    const shape = (namespace) =>
      invalid(
        `channels.${namespace} must be an object with any of join, push (anyone, authenticated, owner or nobody), presence (true or false), history (publications kept) and historyTtl (milliseconds)`,
      );
    const tables = Object.entries(channels).map(([namespace, table]) => {
      // A namespace is what comes before a topic's first ':' (topics have no control
      // characters, so a namespace with one would never match).
      if (namespace !== "*" && (namespace === "" || namespace.includes(":") || /[\u0000-\u001f\u007f]/.test(namespace))) {
        throw invalid(`channels.${namespace}: a namespace is the part of a topic before the first ':' (or "*")`);
      }
      if (typeof table !== "object" || table === null || Array.isArray(table)) throw shape(namespace);
      for (const key of Object.keys(table)) if (!CHANNEL_KEYS.includes(key)) throw shape(namespace);
      for (const field of ["join", "push"]) {
        const name = table[field];
        if (name === undefined) continue;
        if (typeof name !== "string") throw shape(namespace);
        if (!RULES.includes(name)) {
          throw invalid(
            `channels.${namespace}.${field}: unknown rule ${JSON.stringify(name)}: expected anyone, authenticated, owner or nobody`,
          );
        }
      }
      if (table.presence !== undefined && typeof table.presence !== "boolean") {
        throw invalid(`channels.${namespace}.presence must be true or false`);
      }
      const { history, historyTtl } = table;
      if (history !== undefined && (!Number.isInteger(history) || history < 1 || history > MAX_HISTORY)) {
        throw invalid(`channels.${namespace}.history: history is the number of publications kept, 1 to ${MAX_HISTORY}`);
      }
      if (historyTtl !== undefined) {
        if (history === undefined) {
          throw invalid(`channels.${namespace}.historyTtl: historyTtl needs history (the number of publications kept)`);
        }
        if (!Number.isInteger(historyTtl) || historyTtl < 1 || historyTtl > 1e12) {
          throw invalid(`channels.${namespace}.historyTtl must be a whole, positive number of milliseconds`);
        }
      }
      return [namespace, table];
    });
    // Rules not given are those of "*" (or the secure default), as on the node.
    const any = tables.find(([namespace]) => namespace === "*")?.[1] ?? {};
    const fallback = { join: any.join ?? SECURE_DEFAULT.join, push: any.push ?? SECURE_DEFAULT.push };
    const lines = tables.map(([namespace, table]) => {
      const digit = (field) => String(RULES.indexOf(table[field] ?? fallback[field]));
      const presence = table.presence === undefined ? "2" : table.presence ? "1" : "0";
      const ttl = table.historyTtl ?? DEFAULT_HISTORY_TTL;
      return `${digit("join")}${digit("push")}${presence}${table.history ?? 0}/${ttl}/${namespace}`;
    });
    const rules = tables.some(([, table]) => table.join !== undefined || table.push !== undefined);
    return { lines: lines.join("\n"), rules };
  }

  function defaultClock() {
    const performance = globalThis.performance;
    return performance && typeof performance.now === "function" ? () => performance.now() : () => Date.now();
  }

  /** The first value of each query parameter, as the node reads them. */
  function queryParams(url) {
    const params = {};
    for (const [key, value] of url.searchParams) if (!(key in params)) params[key] = value;
    return params;
  }

  /** A plain event object with the fields browsers give WebSocket events. */
  class FakeEvent {
    constructor(type, target, fields) {
      this.type = type;
      this.target = target;
      this.currentTarget = target;
      this.srcElement = target;
      this.timeStamp = Date.now();
      this.bubbles = false;
      this.cancelable = false;
      this.composed = false;
      this.defaultPrevented = false;
      this.isTrusted = false;
      this.eventPhase = 2;
      this.returnValue = true;
      this.cancelBubble = false;
      Object.assign(this, fields);
    }
    composedPath() {
      return [this.target];
    }
    preventDefault() {}
    stopPropagation() {
      this.cancelBubble = true;
    }
    stopImmediatePropagation() {
      this.cancelBubble = true;
      this[STOPPED] = true;
    }
  }

  const STOPPED = Symbol("stopped");
  // Internal entry points of a socket, called by its server.
  const ACCEPT = Symbol("accept");
  const RECEIVE = Symbol("receive");
  const CLOSED_BY_SERVER = Symbol("closedByServer");

  /** The WebSocket every FakeServer's `WebSocket` class extends. */
  class FakeWebSocket {
    static CONNECTING = CONNECTING;
    static OPEN = OPEN;
    static CLOSING = CLOSING;
    static CLOSED = CLOSED;

    #hub;
    #url;
    #readyState = CONNECTING;
    #binaryType = "blob";
    #listeners = new Map();
    #handlers = new Map();
    #id = undefined;

    constructor(hub, url, protocols) {
      let parsed;
      try {
        parsed = new URL(String(url));
      } catch {
        throw domException(`Failed to construct 'WebSocket': The URL '${url}' is invalid.`, "SyntaxError");
      }
      if (parsed.protocol === "http:") parsed.protocol = "ws:";
      if (parsed.protocol === "https:") parsed.protocol = "wss:";
      if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
        throw domException(
          `Failed to construct 'WebSocket': The URL's scheme must be either 'http', 'https', 'ws', or 'wss'. '${parsed.protocol.slice(0, -1)}' is not allowed.`,
          "SyntaxError",
        );
      }
      parsed.hash = "";
      if (protocols !== undefined && typeof protocols !== "string" && !Array.isArray(protocols)) {
        throw domException("Failed to construct 'WebSocket': The subprotocol is invalid.", "SyntaxError");
      }
      this.#hub = hub;
      this.#url = parsed;
      hub.connect(this, parsed);
    }

    get url() {
      return this.#url.href;
    }
    get readyState() {
      return this.#readyState;
    }
    get bufferedAmount() {
      return 0;
    }
    get extensions() {
      return "";
    }
    get protocol() {
      return "";
    }
    get binaryType() {
      return this.#binaryType;
    }
    set binaryType(value) {
      if (value === "blob" || value === "arraybuffer") this.#binaryType = value;
    }
    get CONNECTING() {
      return CONNECTING;
    }
    get OPEN() {
      return OPEN;
    }
    get CLOSING() {
      return CLOSING;
    }
    get CLOSED() {
      return CLOSED;
    }

    /** Sends a text frame (anything else is a binary frame, which the node refuses). */
    send(data) {
      if (this.#readyState === CONNECTING) {
        throw domException("Failed to execute 'send' on 'WebSocket': Still in CONNECTING state.", "InvalidStateError");
      }
      // Like a browser, a socket that is closing or closed drops what it is given.
      if (this.#readyState !== OPEN) return;
      this.#hub.send(this.#id, data);
    }

    /** Starts the closing handshake (`code` 1000 or 3000–4999, `reason` at most 123 bytes). */
    close(code, reason) {
      if (code !== undefined && (!Number.isInteger(code) || (code !== 1000 && (code < 3000 || code > 4999)))) {
        throw domException(
          `Failed to execute 'close' on 'WebSocket': The close code must be either 1000, or between 3000 and 4999. ${code} is neither.`,
          "InvalidAccessError",
        );
      }
      if (reason !== undefined && utf8Length(String(reason)) > 123) {
        throw domException(
          "Failed to execute 'close' on 'WebSocket': The close reason must not be greater than 123 UTF-8 bytes.",
          "SyntaxError",
        );
      }
      if (this.#readyState === CLOSING || this.#readyState === CLOSED) return;
      const connecting = this.#readyState === CONNECTING;
      this.#readyState = CLOSING;
      if (connecting) {
        // Closing a socket that is not open yet fails its connection: the server never sees it.
        this.#hub.later(() => this.#fail());
        return;
      }
      this.#hub.clientClosed(this.#id);
      this.#hub.later(() => {
        this.#readyState = CLOSED;
        this.#dispatch("close", { code: code ?? 1005, reason: reason === undefined ? "" : String(reason), wasClean: true });
      });
    }

    addEventListener(type, listener, options) {
      if (typeof listener !== "function" && (typeof listener !== "object" || listener === null)) return;
      const once = typeof options === "object" && options !== null && Boolean(options.once);
      const list = this.#listeners.get(type) ?? [];
      if (list.some((entry) => entry.listener === listener)) return;
      list.push({ listener, once });
      this.#listeners.set(type, list);
    }

    removeEventListener(type, listener) {
      const list = this.#listeners.get(type);
      if (list) {
        this.#listeners.set(
          type,
          list.filter((entry) => entry.listener !== listener),
        );
      }
    }

    dispatchEvent(event) {
      const list = [...(this.#listeners.get(event.type) ?? [])];
      for (const entry of list) {
        if (entry.once) this.removeEventListener(event.type, entry.listener);
        try {
          if (typeof entry.listener === "function") entry.listener.call(this, event);
          else entry.listener.handleEvent(event);
        } catch (error) {
          report(error);
        }
        if (event[STOPPED]) break;
      }
      return true;
    }

    // The server accepted the handshake: the socket is open as `id`.
    [ACCEPT](id) {
      if (this.#readyState !== CONNECTING) return false;
      this.#id = id;
      this.#readyState = OPEN;
      this.#dispatch("open", {});
      return true;
    }

    // A text frame from the server.
    [RECEIVE](text) {
      // Browsers drop what arrives once close() was called.
      if (this.#readyState !== OPEN) return;
      this.#dispatch("message", { data: text, origin: this.#url.origin, lastEventId: "", source: null, ports: [] });
    }

    // The server closed the socket, refused its handshake (`code` undefined) or dropped it
    // (1006).
    [CLOSED_BY_SERVER](code, reason) {
      if (this.#readyState === CLOSED) return;
      if (code === undefined) {
        this.#fail();
        return;
      }
      if (this.#readyState === CLOSING) return;
      this.#readyState = CLOSED;
      this.#dispatch("close", { code, reason: code === 1006 ? "" : reason, wasClean: code !== 1006 });
    }

    // The connection failed: `error`, then `close` with 1006.
    #fail() {
      this.#readyState = CLOSED;
      this.#dispatch("error", {});
      this.#dispatch("close", { code: 1006, reason: "", wasClean: false });
    }

    #dispatch(type, fields) {
      this.dispatchEvent(new FakeEvent(type, this, fields));
    }

    static {
      // `onopen`, `onmessage`, `onerror`, `onclose`: each an event listener that keeps the
      // place where it was first set, as in browsers.
      for (const type of ["open", "message", "error", "close"]) {
        Object.defineProperty(this.prototype, `on${type}`, {
          configurable: true,
          enumerable: true,
          get() {
            return this.#handlers.get(type)?.handler ?? null;
          },
          set(handler) {
            const slot = this.#handlers.get(type);
            if (typeof handler !== "function") {
              if (slot) {
                this.removeEventListener(type, slot.listener);
                this.#handlers.delete(type);
              }
              return;
            }
            if (slot) {
              slot.handler = handler;
              return;
            }
            const entry = { handler, listener: (event) => entry.handler.call(this, event) };
            this.#handlers.set(type, entry);
            this.addEventListener(type, entry.listener);
          },
        });
      }
    }
  }

  /**
   * What a FakeServer shares with its sockets: the engine, the open sockets, the records, the
   * delivery queue and the idle timer.
   */
  class Hub {
    constructor(engine, now, clock, schedule) {
      this.engine = engine;
      this.now = now;
      // Whether `now` is the real clock: only then may a timer for a held presence diff keep
      // Node.js running (an injected clock moves when the test says, with `tick()`).
      this.clock = clock;
      this.schedule = schedule;
      this.sockets = new Map(); // id -> { socket, url, params }
      this.frames = [];
      this.refusals = [];
      this.queue = [];
      this.timer = undefined;
    }

    /** Runs `task` later, after every task queued before it, one task per callback. */
    later(task) {
      this.queue.push(task);
      this.schedule(() => {
        const next = this.queue.shift();
        if (next) next();
      });
    }

    connect(socket, url) {
      this.later(() => {
        if (socket.readyState !== CONNECTING) return;
        const params = queryParams(url);
        let id;
        try {
          if (url.pathname !== ENDPOINT) {
            throw coded(`the node serves WebSockets at ${ENDPOINT}, not ${url.pathname}`, "not_found", { status: 404 });
          }
          id = this.engine.open(params.vsn, params.token, params.user, this.now(), Math.floor(Date.now() / 1000));
        } catch (error) {
          this.refusals.push({ url: url.href, status: error.status, code: error.code, message: error.message });
          socket[CLOSED_BY_SERVER](undefined);
          return;
        }
        this.sockets.set(id, { socket, url: url.href, params });
        this.tick();
        socket[ACCEPT](id);
      });
    }

    send(id, data) {
      const text = typeof data === "string" ? data : undefined;
      this.frames.push(record(id, text));
      this.perform(this.engine.receive(id, text, this.now()));
      this.tick();
    }

    clientClosed(id) {
      this.sockets.delete(id);
      this.perform(this.engine.clientClose(id, this.now()));
      this.tick();
    }

    /** Delivers the engine's items (`[socket, text]` and `[socket, code, reason]`) in order. */
    perform(items) {
      let count = 0;
      for (const [id, second, reason] of items) {
        const entry = this.sockets.get(id);
        if (!entry) continue;
        if (typeof second === "string") {
          count += 1;
          this.later(() => entry.socket[RECEIVE](second));
        } else {
          // The engine has forgotten the socket already.
          this.sockets.delete(id);
          this.later(() => entry.socket[CLOSED_BY_SERVER](second, reason));
        }
      }
      return count;
    }

    /** Runs the engine's timed work (idle sockets and expired tokens close, held presence
     *  diffs go out) and sets the timer for its next deadline. Called after every change too,
     *  so the timer always stands at the earliest deadline. The timer never keeps Node.js
     *  running, except for a presence diff on the real clock: a test may be waiting for it. */
    tick() {
      const [next, diff, ...items] = this.engine.tick(this.now());
      this.perform(items);
      if (this.timer !== undefined) clearTimeout(this.timer);
      this.timer = undefined;
      if (next === undefined) return;
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.tick();
      }, Math.max(0, next - this.now()));
      if (!(diff && this.clock)) this.timer?.unref?.();
    }

    info(id) {
      const entry = this.sockets.get(id);
      const [user = "", ...topics] = this.engine.socket(id);
      return { id, url: entry.url, params: { ...entry.params }, user: user || null, topics };
    }
  }

  /** What `server.frames` holds for one frame a client sent. */
  function record(socket, text) {
    if (text === undefined) return { socket, kind: "binary" };
    try {
      return { socket, ...decodeFrame(text) };
    } catch (error) {
      return { socket, kind: "invalid", text, error: { code: error.code, message: error.message } };
    }
  }

  /** A Switchboard server in memory, for testing code that uses the `phoenix` client. */
  class FakeServer {
    #hub;
    #engine;

    constructor(options) {
      if (!isReady()) {
        throw coded(
          "the WebAssembly module is not initialised: `await init()` (or `initSync({ module })`) first, or import the Node.js build",
          "not_initialized",
        );
      }
      const config = readOptions(options);
      servers += 1;
      this.#engine = new FakeServerEngine(config.channels, config.tokenSecret, config.limits, config.idleTimeout, servers);
      const hub = new Hub(this.#engine, config.now, config.clock, config.schedule);
      this.#hub = hub;
      /** A WebSocket class whose sockets connect to this server (phoenix.js's `transport`). */
      this.WebSocket = class WebSocket extends FakeWebSocket {
        constructor(url, protocols) {
          super(hub, url, protocols);
        }
      };
    }

    /** Publishes `payload` as `event` to every socket joined to `topic`, as the node's
     *  `POST /api/publish` does; returns how many sockets it goes to. */
    broadcast(topic, event, payload) {
      return this.publish(topic, event, payload).recipients;
    }

    /** `broadcast`, answered as the node's `POST /api/publish` answers: `{ recipients }`, and
     *  `position` on a topic with history. */
    publish(topic, event, payload) {
      if (typeof topic !== "string") throw invalid("topic must be a string");
      if (event !== undefined && event !== null && typeof event !== "string") throw invalid("event must be a string");
      let json;
      try {
        json = JSON.stringify(payload);
      } catch (error) {
        throw coded(`payload is not JSON-serialisable: ${error.message}`, "not_serializable");
      }
      if (typeof json !== "string") throw coded("payload is not JSON-serialisable", "not_serializable");
      const [position, ...items] = this.#engine.broadcast(topic, event ?? undefined, json, this.#hub.now());
      const recipients = this.#hub.perform(items);
      // A stream that had expired restarts: its timer may move.
      this.#hub.tick();
      return position === undefined ? { recipients } : { recipients, position };
    }

    /** `topic`'s presence list, `{ key: { metas: [...] } }` as phoenix.js' `Presence` holds
     *  it (what the node's `GET /api/presence` lists); `undefined` for a topic without
     *  presence. */
    presence(topic) {
      if (typeof topic !== "string") throw invalid("topic must be a string");
      const state = this.#engine.presence(topic);
      return state === undefined ? undefined : JSON.parse(state);
    }

    /** Every frame clients sent, decoded, oldest first (a new array on each read). */
    get frames() {
      return this.#hub.frames.map((frame) => ({ ...frame }));
    }

    /** Every connection refused at its handshake, oldest first. */
    get refusals() {
      return this.#hub.refusals.map((refusal) => ({ ...refusal }));
    }

    /** The open sockets, in the order they opened. */
    get sockets() {
      return [...this.#hub.sockets.keys()].map((id) => this.#hub.info(id));
    }

    /** The sockets joined to `topic`, in the order they opened. */
    subscribers(topic) {
      return this.sockets.filter((socket) => socket.topics.includes(topic));
    }

    /** Closes the open sockets for which `predicate(socket)` holds (all without one) with
     *  `code` (default 1000; 1006 drops the connection without a close frame); returns how many. */
    disconnect(predicate, code = 1000, reason = "") {
      if (predicate !== undefined && predicate !== null && typeof predicate !== "function") {
        throw invalid("predicate must be a function of a socket");
      }
      if (!Number.isInteger(code) || code < 1000 || code > 4999 || code === 1005 || code === 1015) {
        throw invalid("code must be a WebSocket close code from 1000 to 4999 (not 1005 or 1015)");
      }
      if (typeof reason !== "string" || utf8Length(reason) > 123) {
        throw invalid("reason must be a string of at most 123 UTF-8 bytes");
      }
      let closed = 0;
      for (const socket of this.sockets) {
        if (predicate && !predicate(socket)) continue;
        const entry = this.#hub.sockets.get(socket.id);
        if (!entry) continue;
        closed += 1;
        if (code === 1006) {
          this.#hub.clientClosed(socket.id);
          this.#hub.later(() => entry.socket[CLOSED_BY_SERVER](1006, ""));
        } else {
          this.#hub.perform(this.#engine.disconnect(socket.id, code, reason, this.#hub.now()));
        }
      }
      this.#hub.tick();
      return closed;
    }

    /** Forgets the recorded frames and refusals (not the sockets). */
    clear() {
      this.#hub.frames.length = 0;
      this.#hub.refusals.length = 0;
    }

    /**
     * Signs a connect token for `sub`, valid for `ttlSeconds` (default one hour; a negative
     * number makes a token that expired that long ago, for tests), with `info` as its `info`
     * claim.
     */
    token(sub, ttlSeconds = 3600, info = undefined) {
      if (typeof sub !== "string" || sub === "") throw invalid("sub must be a non-empty string");
      if (!Number.isInteger(ttlSeconds)) throw invalid("ttlSeconds must be a whole number of seconds");
      if (info !== undefined && (typeof info !== "object" || info === null || Array.isArray(info))) {
        throw invalid("info must be an object");
      }
      const claim = info === undefined ? undefined : JSON.stringify(info);
      return this.#engine.token(sub, Math.floor(Date.now() / 1000) + ttlSeconds, claim);
    }

    /** Runs the timed work now: idle sockets and expired tokens close, held presence diffs go
     *  out (with an injected clock, call it after moving the clock). */
    tick() {
      this.#hub.tick();
    }
  }

  // Events only the server sends; a client frame may not carry them.
  const SERVER_EVENTS = ["phx_reply", "phx_close", "phx_error"];

  /**
   * Writes `[joinRef, ref, topic, event, payload]` as the node writes it, in either direction
   * (replies, phx_close and broadcasts too; the payload may be any JSON value). The node's
   * encoder escapes strings exactly as JSON.stringify does, and the refs, topic and event are
   * checked by the node's own decoder, with its error codes.
   */
  function encodeFrame(frame) {
    if (typeof frame !== "object" || frame === null) {
      throw invalid("frame must be an object { joinRef, ref, topic, event, payload }");
    }
    const field = (name) => (frame[name] === undefined ? null : frame[name]);
    const payload = frame.payload === undefined ? {} : frame.payload;
    // Inside an array JSON.stringify would quietly write these as null.
    if (typeof payload === "function" || typeof payload === "symbol") {
      throw coded("payload is not JSON-serialisable", "not_serializable");
    }
    let text;
    try {
      text = JSON.stringify([field("joinRef"), field("ref"), field("topic"), field("event"), payload]);
    } catch (error) {
      throw coded(`frame is not JSON-serialisable: ${error.message}`, "not_serializable");
    }
    const [joinRef, ref, topic, event] = JSON.parse(text);
    // A client frame with the same refs, topic and event (any event: the server's own stand in
    // for themselves) is what the decoder checks.
    decodeFrame(JSON.stringify([joinRef, ref, topic, SERVER_EVENTS.includes(event) ? "e" : event, {}]));
    return text;
  }

  return { FakeServer, encodeFrame };
}
