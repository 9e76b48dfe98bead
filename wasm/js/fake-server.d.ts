/** Who a channel rule admits (the values of the node's `[channels.<namespace>]` tables). */
export type ChannelRule = "anyone" | "authenticated" | "owner" | "nobody";

/** Who may join a namespace's topics and who may push to them. */
export interface ChannelAccess {
  join: ChannelRule;
  push: ChannelRule;
}

/**
 * One namespace's table, as the node's `[channels.<namespace>]` (camelCased): every key is
 * optional.
 */
export interface ChannelConfig {
  /** Who may join (default: the `"*"` table's rule, else `owner`). */
  join?: ChannelRule;
  /** Who may push (default: the `"*"` table's rule, else `nobody`). */
  push?: ChannelRule;
  /** Whether the namespace's topics track who is on them (phoenix.js `Presence`); default:
   *  the `"*"` table's, else off. */
  presence?: boolean;
  /** Publications each topic keeps for recovery (1 to 100000; none: no history). */
  history?: number;
  /** How long a topic's history is kept after its last publication, in milliseconds
   *  (default 600000, ten minutes; needs `history`). */
  historyTtl?: number;
}

/** One member's meta as phoenix.js' `Presence` holds it: `phx_ref` and the member's fields. */
export interface PresenceMeta {
  phx_ref: string;
  /** On a diff's join that replaces a meta (`presence_update`): the `phx_ref` it replaces. */
  phx_ref_prev?: string;
  [field: string]: unknown;
}

/** A topic's presence list: one key per user, one meta per socket. */
export type PresenceState = Record<string, { metas: PresenceMeta[] }>;

/** What `FakeServer.publish` answers, as the node's `POST /api/publish`. */
export interface PublishResult {
  /** How many sockets it goes to. */
  recipients: number;
  /** Its place in the topic's stream (`"<offset>:<epoch>"`), on a topic with history. */
  position?: string;
}

/**
 * Options of `new FakeServer(options)`: the node's configuration, with the same names in
 * camelCase, defaults and limits. Unknown options throw (`code: "invalid_argument"`).
 */
export interface FakeServerOptions {
  /**
   * Join and push rules, presence and history per namespace (the part of a topic before its
   * first `:`), as the node's `[channels]` tables; `"*"` is every namespace not listed
   * (default: join `owner`, push `nobody`, no presence, no history). Rules are enforced only
   * with a `tokenSecret`, as on the node.
   */
  channels?: Record<string, ChannelConfig>;
  /** The HS256 secret of connect tokens (at least 32 bytes). With it, a socket needs a valid
   *  `token` query parameter; without it the server is open. */
  tokenSecret?: string | null;
  /** Largest text frame accepted, in bytes (default 65536); a larger one closes with 1009. */
  maxFrameBytes?: number;
  /** Topics one socket may join at once (default 100). */
  maxTopicsPerSocket?: number;
  /** Longest topic a socket may join, in bytes (default and at most 255). */
  maxTopicBytes?: number;
  /** Pushes per second per socket (default 100). */
  pushRate?: number;
  /** Pushes at once above the rate (default 200). */
  pushBurst?: number;
  /** Joins and leaves per second per socket (default 20). */
  joinRate?: number;
  /** Joins and leaves at once above the rate (default 200). */
  joinBurst?: number;
  /** Most presence members one topic may have (default 10000); a join past it gets the error
   *  reply "too many members: ...". */
  presenceMaxMembers?: number;
  /** Largest presence meta (the token's `info` merged with the join's `presence`), in bytes
   *  of JSON (default 1024, 2 to 4096). */
  presenceMaxMetaBytes?: number;
  /** Milliseconds without a frame after which a socket is closed with 1000 (default 60000). */
  idleTimeout?: number;
  /** The clock of idle timeouts, rate limits, presence batching, history TTLs and token
   *  lifetimes, in milliseconds (default `performance.now()`); call `tick()` after moving an
   *  injected one. Whether a token is valid when a socket opens is checked against
   *  `Date.now()`. */
  now?: () => number;
  /** Runs a callback later: how deliveries are made asynchronous (default
   *  `setTimeout(callback, 0)`; `queueMicrotask` keeps them flowing under fake timers). */
  schedule?: (callback: () => void) => void;
}

/** An open socket of a `FakeServer`, as its methods describe it. */
export interface FakeSocketInfo {
  /** The server's number for the socket (`socket` in `frames`). */
  id: number;
  /** The URL it connected to. */
  url: string;
  /** Its URL's query parameters (the first of each). */
  params: Record<string, string>;
  /** Its token's `sub`, or `null` without one (on an open server the presence key is
   *  `params.user`). */
  user: string | null;
  /** The topics it has joined, sorted. */
  topics: string[];
}

/** A frame a client sent, as `FakeServer.frames` records it. */
export type ClientFrameRecord =
  | ({ socket: number } & DecodedFrame)
  | {
      socket: number;
      /** A text frame the node refuses (answered with an error reply or close 1007). */
      kind: "invalid";
      text: string;
      error: { code: string; message: string };
    }
  | { socket: number; kind: "binary" };

/** A socket the server refused at its handshake, as the node refuses the upgrade request. */
export interface FakeServerRefusal {
  url: string;
  /** The node's HTTP status: 400 (`vsn`), 401 (token) or 404 (path). */
  status: number;
  /** `missing_vsn`, `unsupported_vsn`, `unauthorized` or `not_found`. */
  code: string;
  message: string;
}

/** An event of a `FakeWebSocket` (`open` and `error` carry nothing more). */
export interface FakeEvent {
  readonly type: string;
  readonly target: FakeWebSocket;
  readonly currentTarget: FakeWebSocket;
  readonly timeStamp: number;
  preventDefault(): void;
  stopPropagation(): void;
  stopImmediatePropagation(): void;
}

/** A text frame from the server. */
export interface FakeMessageEvent extends FakeEvent {
  readonly data: string;
  readonly origin: string;
}

/** The end of a socket. */
export interface FakeCloseEvent extends FakeEvent {
  /** The close code: the server's, the one `close()` was given (1005 without one), or 1006
   *  when the connection failed or dropped. */
  readonly code: number;
  readonly reason: string;
  /** `false` when the connection failed or dropped (1006). */
  readonly wasClean: boolean;
}

/** The events of a `FakeWebSocket` by name. */
export interface FakeWebSocketEventMap {
  open: FakeEvent;
  message: FakeMessageEvent;
  error: FakeEvent;
  close: FakeCloseEvent;
}

type Listener<E> = ((this: FakeWebSocket, event: E) => unknown) | { handleEvent(event: E): unknown };

/** A socket of a `FakeServer`, with the browser `WebSocket`'s interface. */
export interface FakeWebSocket {
  readonly url: string;
  /** `CONNECTING` (0), `OPEN` (1), `CLOSING` (2) or `CLOSED` (3). */
  readonly readyState: number;
  /** Always 0: frames reach the server at once. */
  readonly bufferedAmount: number;
  readonly extensions: string;
  readonly protocol: string;
  binaryType: "blob" | "arraybuffer";
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;
  onopen: ((this: FakeWebSocket, event: FakeEvent) => unknown) | null;
  onmessage: ((this: FakeWebSocket, event: FakeMessageEvent) => unknown) | null;
  onerror: ((this: FakeWebSocket, event: FakeEvent) => unknown) | null;
  onclose: ((this: FakeWebSocket, event: FakeCloseEvent) => unknown) | null;
  /** Sends a frame: text is answered as the node answers it; anything else is a binary
   *  frame, which the node refuses (close 1003). Throws `InvalidStateError` while connecting. */
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
  /** Closes the socket (`code` 1000 or 3000–4999, `reason` at most 123 UTF-8 bytes). */
  close(code?: number, reason?: string): void;
  addEventListener<K extends keyof FakeWebSocketEventMap>(
    type: K,
    listener: Listener<FakeWebSocketEventMap[K]>,
    options?: boolean | { once?: boolean },
  ): void;
  removeEventListener<K extends keyof FakeWebSocketEventMap>(
    type: K,
    listener: Listener<FakeWebSocketEventMap[K]>,
    options?: boolean | { capture?: boolean },
  ): void;
  dispatchEvent(event: FakeEvent): boolean;
}

/** `server.WebSocket`: a class with the browser `WebSocket`'s constructor and constants. */
export interface FakeWebSocketConstructor {
  /** Connects, asynchronously, to the server: `url` must be
   *  `ws://<any host>/socket/websocket?vsn=2.0.0[&token=…]` as the node expects (phoenix.js
   *  builds it from `new Socket("ws://localhost/socket", { params: { token } })`). Throws a
   *  `SyntaxError` for a URL that is not `ws:`, `wss:`, `http:` or `https:`. */
  new (url: string | { toString(): string }, protocols?: string | string[]): FakeWebSocket;
  readonly prototype: FakeWebSocket;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;
}

/**
 * A Switchboard server in memory, for testing frontend code that uses the official `phoenix`
 * client. Every frame is answered by the node's own protocol engine, compiled to WebAssembly,
 * so replies, their order, error reasons, close codes, limits, channel rules and tokens are
 * the node's. Deliveries are asynchronous, one per task, in order, as over a network.
 *
 * ```js
 * const server = new FakeServer();
 * const socket = new Socket("ws://localhost/socket", { transport: server.WebSocket });
 * ```
 *
 * @throws Error with code `invalid_argument` for bad options, `not_initialized` when the web
 * build's module was not initialised.
 */
export declare class FakeServer {
  constructor(options?: FakeServerOptions);
  /** The WebSocket class whose sockets connect to this server: phoenix.js's `transport`. */
  readonly WebSocket: FakeWebSocketConstructor;
  /**
   * Publishes `payload` (any JSON value) as `event` (`null`/`undefined`: `"message"`) to every
   * socket joined to `topic`, as the node's `POST /api/publish` does; returns how many sockets
   * it goes to. Delivery is asynchronous.
   * @throws Error with code `invalid_topic`, `invalid_event` or `not_serializable`.
   */
  broadcast(topic: string, event: string | null | undefined, payload: unknown): number;
  /**
   * `broadcast`, answered as the node's `POST /api/publish` answers: how many sockets it goes
   * to and, on a topic with history, its position (carried in the broadcast's ref slot).
   * @throws as `broadcast`.
   */
  publish(topic: string, event: string | null | undefined, payload: unknown): PublishResult;
  /** `topic`'s presence list as phoenix.js' `Presence` holds it (the node's
   *  `GET /api/presence`); `undefined` for a topic without presence. */
  presence(topic: string): PresenceState | undefined;
  /** Every frame clients sent, decoded, oldest first (a new array on each read). */
  readonly frames: ClientFrameRecord[];
  /** Every socket refused at its handshake, oldest first. */
  readonly refusals: FakeServerRefusal[];
  /** The open sockets, in the order they opened. */
  readonly sockets: FakeSocketInfo[];
  /** The open sockets joined to `topic`, in the order they opened. */
  subscribers(topic: string): FakeSocketInfo[];
  /**
   * Closes the open sockets for which `predicate` holds (every one without it) with `code`
   * (default 1000) and `reason`, as the node closes a socket; 1006 drops the connection
   * without a close frame instead (`wasClean: false`). phoenix.js reconnects and rejoins
   * after either. Returns how many sockets it closes.
   */
  disconnect(predicate?: ((socket: FakeSocketInfo) => boolean) | null, code?: number, reason?: string): number;
  /** Forgets `frames` and `refusals` (not the sockets). */
  clear(): void;
  /**
   * A connect token for `sub`, valid for `ttlSeconds` (default 3600; negative: expired that
   * long ago), signed with `tokenSecret` exactly as `switchboard token` signs it, with `info`
   * as its `info` claim (part of every presence meta of the socket). Tokens are accepted until
   * 30 s past `exp` (clock-skew leeway); a socket closes with 3005 "token expired" then.
   * @throws Error with code `no_token_secret` without a `tokenSecret`, `invalid_argument`
   * for an `info` that is not an object without `phx_` fields.
   */
  token(sub: string, ttlSeconds?: number, info?: Record<string, unknown>): string;
  /** Runs the timed work now (the server also does it on a timer): sockets idle for
   *  `idleTimeout` or whose token expired close, held presence diffs go out. With an
   *  injected `now`, call it after moving the clock. */
  tick(): void;
}

/**
 * Encodes `[joinRef, ref, topic, event, payload]` as the node writes it, in either direction
 * (replies, `phx_close` and broadcasts too; the payload may be any JSON value).
 *
 * @throws Error with code `invalid_argument` when `frame` is not an object, `not_serializable`
 * for a payload JSON cannot carry, or the node decoder's code for the refs, topic and event
 * (`wrong_type`, `ref_too_long`, `invalid_string`, `invalid_topic`, `empty_event`).
 */
export declare function encodeFrame(frame: FrameInput): string;
