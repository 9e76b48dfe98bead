// One script of the official phoenix client against a Switchboard server, recording what the
// application sees: joins, a refused join, pushes with replies, broadcasts from the server,
// a leave, a refused socket, heartbeats, a dropped connection with reconnect and automatic
// rejoin, the members phoenix's `Presence` lists as they join, update and leave, and a
// history topic's positions and recovery with `since`. phoenix.test.mjs runs it against FakeServer (ES module and CommonJS builds) and
// against a real node, the browser page against FakeServer in Chromium; the recorded
// observations must be equal.
//
// The script never records what depends on timing (refs, round-trip times, retry counts) or
// on the server's own randomness (`phx_ref`s, a position's epoch: only offsets are noted),
// and waits for the server to have handled a frame before it depends on it (a ping round trip
// after a leave, the reply to a rejoin, a presence list phoenix has synced).

/** The token secret and channel tables every target runs with. */
export const SECRET = "switchboard-wasm-scenario-secret-0123456789";
export const CHANNELS = {
  room: { join: "authenticated", push: "authenticated" },
  auditlog: { join: "owner", push: "nobody" },
  chat: { join: "authenticated", push: "authenticated", presence: true },
  feed: { join: "authenticated", push: "nobody", history: 10 },
  "*": { join: "nobody", push: "nobody" },
};
/** The same tables as the node's TOML (`historyTtl` is not used here). */
export const CHANNELS_TOML = Object.entries(CHANNELS)
  .map(([namespace, { join, push, presence, history }]) =>
    [
      `[channels.${JSON.stringify(namespace)}]`,
      `join = "${join}"`,
      `push = "${push}"`,
      ...(presence === undefined ? [] : [`presence = ${presence}`]),
      ...(history === undefined ? [] : [`history = ${history}`]),
      "",
    ].join("\n"),
  )
  .join("\n");

const PATIENCE_MS = 10_000;

/** Resolves with what `register(resolve, reject)` delivers, or rejects after PATIENCE_MS. */
function within(what, register) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), PATIENCE_MS);
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

/** A push's reply as `{ status, response }` (a timeout rejects). */
function outcome(push, what) {
  return within(what, (resolve, reject) => {
    push
      .receive("ok", (response) => resolve({ status: "ok", response }))
      .receive("error", (response) => resolve({ status: "error", response }))
      .receive("timeout", () => reject(new Error(`${what}: timeout`)));
  });
}

/** The next `event` on `channel`. */
function next(channel, event) {
  return within(`${event} on ${channel.topic}`, (resolve) => {
    const ref = channel.on(event, (payload) => {
      channel.off(event, ref);
      resolve(payload);
    });
  });
}

/** A position's offset (`"17:k3Jd9"` -> 17): epochs are each server's own. */
function offset(position) {
  const match = /^(\d+):[A-Za-z0-9]+$/.exec(position ?? "");
  return match ? Number(match[1]) : `not a position: ${position}`;
}

/** A join reply's response with its position's offset only. */
function joined(result) {
  const { position, ...rest } = result.response;
  return { ...result, response: position === undefined ? rest : { ...rest, position: offset(position) } };
}

/** Who `presence` lists, sorted: `[key, [meta without phx_ref, ...]]`. */
function members(presence) {
  return presence
    .list((key, { metas }) => [key, metas.map(({ phx_ref, phx_ref_prev, ...meta }) => meta)])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Resolves to `presence`'s list once phoenix has synced one that `wanted` accepts. */
function synced(presence, what, wanted) {
  return within(what, (resolve) => {
    const check = () => {
      const list = members(presence);
      if (wanted(list)) resolve(list);
    };
    presence.onSync(check);
    check();
  });
}

/** Resolves once `condition()` holds. */
function until(what, condition) {
  return within(what, (resolve) => {
    const poll = () => (condition() ? resolve() : setTimeout(poll, 5));
    poll();
  });
}

/**
 * Runs the script; resolves to the observations.
 *
 * @param target.Socket the phoenix `Socket` class
 * @param target.Presence the phoenix `Presence` class
 * @param target.url the socket URL (`ws://host/socket`)
 * @param target.transport the WebSocket class phoenix uses
 * @param target.token `(sub) => token` signed with SECRET
 * @param target.broadcast `(topic, event, payload) => Promise<recipients>`, as the node's HTTP publish
 * @param target.drop `() => Promise<void>`: drops every connection without a close frame
 */
export async function scenario({ Socket, Presence, url, transport, token, broadcast, drop }) {
  const seen = [];
  const note = (what, value) => seen.push(value === undefined ? [what] : [what, value]);
  const sockets = [];
  const connect = (params, opts = {}) => {
    const socket = new Socket(url, {
      transport,
      params,
      reconnectAfterMs: () => 10,
      rejoinAfterMs: () => 10,
      ...opts,
    });
    sockets.push(socket);
    return socket;
  };
  const open = (socket) => {
    const opened = within("socket open", (resolve) => socket.onOpen(resolve));
    socket.connect();
    return opened;
  };
  try {
    // A socket with a token: joins, a refused join, a push the rules refuse.
    const alice = connect({ token: token("alice") });
    await open(alice);
    note("alice open");
    const lobby = alice.channel("room:lobby", { user: "alice" });
    note("alice joins room:lobby", await outcome(lobby.join(), "join room:lobby"));
    const admin = alice.channel("admin:panel", {});
    note("alice joins admin:panel", await outcome(admin.join(), "join admin:panel"));
    // A refused join would be retried: leaving stops it (and sends nothing).
    admin.leave();
    const audit = alice.channel("auditlog:alice", {});
    note("alice joins auditlog:alice", await outcome(audit.join(), "join auditlog:alice"));
    note("alice pushes to auditlog:alice", await outcome(audit.push("note", { x: 1 }), "push to auditlog"));
    const other = alice.channel("auditlog:bob", {});
    note("alice joins auditlog:bob", await outcome(other.join(), "join auditlog:bob"));
    other.leave();

    // A second socket on the same topic: a push reaches both, with its reply to the sender.
    const bob = connect({ token: token("bob") });
    await open(bob);
    const bobLobby = bob.channel("room:lobby", {});
    note("bob joins room:lobby", await outcome(bobLobby.join(), "bob joins room:lobby"));
    let aliceGets = next(lobby, "new_msg");
    let bobGets = next(bobLobby, "new_msg");
    note("alice pushes new_msg", await outcome(lobby.push("new_msg", { body: "hi" }), "push new_msg"));
    note("alice receives", await aliceGets);
    note("bob receives", await bobGets);

    // Broadcasts from the server.
    aliceGets = next(lobby, "announce");
    bobGets = next(bobLobby, "announce");
    note("server broadcast reaches", await broadcast("room:lobby", "announce", { n: 1 }));
    note("alice receives", await aliceGets);
    note("bob receives", await bobGets);

    // A leave: once the server has handled it (a ping behind it), bob gets nothing more.
    note("bob leaves room:lobby", await outcome(bobLobby.leave(), "bob leaves"));
    await within("bob's ping", (resolve) => bob.ping(resolve));
    aliceGets = next(lobby, "announce");
    note("server broadcast reaches", await broadcast("room:lobby", "announce", { n: 2 }));
    note("alice receives", await aliceGets);
    await within("alice's ping", (resolve) => alice.ping(resolve));
    note("alice's heartbeat answered");

    // A socket with a bad token never opens: error, then close (1006).
    const mallory = connect({ token: "not-a-token" }, { reconnectAfterMs: () => 60_000 });
    const refused = within("mallory's close", (resolve) => {
      mallory.onError(() => note("mallory error"));
      mallory.onClose((event) => resolve(event.code));
    });
    mallory.connect();
    note("mallory close", await refused);
    mallory.disconnect();

    // The connections drop: phoenix reconnects and rejoins alice's channels by itself.
    const closed = within("alice's close", (resolve) => alice.onClose((event) => resolve(event.code)));
    const reopened = within("alice reopens", (resolve) => alice.onOpen(resolve));
    await drop();
    note("alice close", await closed);
    await reopened;
    note("alice reopened");
    await until("alice rejoins", () => lobby.state === "joined" && audit.state === "joined");
    note("alice channels", [lobby.state, audit.state, admin.state, other.state]);
    aliceGets = next(lobby, "announce");
    note("server broadcast reaches", await broadcast("room:lobby", "announce", { n: 3 }));
    note("alice receives", await aliceGets);
    aliceGets = next(lobby, "new_msg");
    note("alice pushes new_msg", await outcome(lobby.push("new_msg", { body: "again" }), "push after rejoin"));
    note("alice receives", await aliceGets);

    // Presence: carol and dave on chat:lobby, as phoenix's Presence class follows them.
    const carol = connect({ token: token("carol") });
    await open(carol);
    const carolChat = carol.channel("chat:lobby", { presence: { status: "online" } });
    const carolSees = new Presence(carolChat);
    note("carol joins chat:lobby", await outcome(carolChat.join(), "carol joins chat:lobby"));
    note("carol sees", await synced(carolSees, "carol listed", (list) => list.length === 1));
    const dave = connect({ token: token("dave") });
    await open(dave);
    const daveChat = dave.channel("chat:lobby", { presence: { status: "away" } });
    const daveSees = new Presence(daveChat);
    note("dave joins chat:lobby", await outcome(daveChat.join(), "dave joins chat:lobby"));
    note("dave sees", await synced(daveSees, "dave's list", (list) => list.length === 2));
    note("carol sees", await synced(carolSees, "dave joined", (list) => list.length === 2));
    const typing = (list) => list.some(([key, metas]) => key === "carol" && metas[0]?.status === "typing");
    note("carol updates", await outcome(carolChat.push("presence_update", { status: "typing" }), "presence_update"));
    note("dave sees", await synced(daveSees, "carol typing", typing));
    note("carol pushes presence_diff", await outcome(carolChat.push("presence_diff", {}), "forged diff"));
    note("dave leaves chat:lobby", await outcome(daveChat.leave(), "dave leaves"));
    note("carol sees", await synced(carolSees, "dave left", (list) => list.length === 1));

    // History: feed:news keeps its publications; a join with `since` recovers the missed ones.
    const erin = connect({ token: token("erin") });
    await open(erin);
    // Each broadcast carries its position in the ref slot: what was heard, and the epoch of
    // the last position, which a real app remembers to recover from.
    const heard = [];
    let epoch = "";
    const listen = (channel) =>
      channel.on("news", (payload, ref) => {
        heard.push([payload.n, offset(ref)]);
        epoch = ref.split(":")[1];
      });
    const first = erin.channel("feed:news", {});
    listen(first);
    note("erin joins feed:news", joined(await outcome(first.join(), "erin joins feed:news")));
    note("server broadcast reaches", await broadcast("feed:news", "news", { n: 1 }));
    note("server broadcast reaches", await broadcast("feed:news", "news", { n: 2 }));
    await until("erin hears 2", () => heard.length === 2);
    note("erin leaves feed:news", await outcome(first.leave(), "erin leaves"));
    await within("erin's ping", (resolve) => erin.ping(resolve));
    note("server broadcast reaches", await broadcast("feed:news", "news", { n: 3 }));
    note("server broadcast reaches", await broadcast("feed:news", "news", { n: 4 }));
    // Params as a function, as clients/js/recover.mjs does: phoenix evaluates them again on
    // every rejoin.
    const again = erin.channel("feed:news", () => ({ since: `${heard.length}:${epoch}` }));
    listen(again);
    note("erin rejoins feed:news since 2", joined(await outcome(again.join(), "erin rejoins feed:news")));
    note("server broadcast reaches", await broadcast("feed:news", "news", { n: 5 }));
    await until("erin hears 5", () => heard.length === 5);
    note("erin heard", heard);
    note("erin leaves feed:news", await outcome(again.leave(), "erin leaves again"));
    const stale = erin.channel("feed:news", { since: "1:otherepoch" });
    note("erin joins feed:news since another epoch", joined(await outcome(stale.join(), "stale since")));
    return seen;
  } finally {
    for (const socket of sockets) socket.disconnect();
  }
}
