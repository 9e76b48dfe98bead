// Type-checked by `tsc -p tsconfig.json` in wasm/test.sh (not run): the declarations must
// accept what the README shows and refuse what the package refuses.
import {
  FakeServer,
  decodeFrame,
  type FakeServerOptions,
  type FakeSocketInfo,
  type FakeWebSocket,
  type PresenceState,
  type PublishResult,
} from "switchboard-wasm";
import init, { FakeServer as WebFakeServer, initSync } from "switchboard-wasm/web";

const options: FakeServerOptions = {
  tokenSecret: "0123456789abcdef0123456789abcdef",
  channels: {
    room: { join: "authenticated", push: "authenticated", presence: true },
    feed: { join: "anyone", history: 100, historyTtl: 600_000 },
    "*": { join: "nobody", push: "nobody" },
  },
  presenceMaxMembers: 10_000,
  presenceMaxMetaBytes: 1024,
  maxFrameBytes: 65536,
  maxTopicsPerSocket: 100,
  maxTopicBytes: 255,
  pushRate: 100,
  pushBurst: 200,
  joinRate: 20,
  joinBurst: 200,
  idleTimeout: 60_000,
  now: () => performance.now(),
  schedule: (callback) => queueMicrotask(callback),
};
const server = new FakeServer(options);
const socket: FakeWebSocket = new server.WebSocket("ws://localhost/socket/websocket?vsn=2.0.0", ["phoenix"]);
const state: number = socket.readyState;
const open: 1 = server.WebSocket.OPEN;
socket.onmessage = (event) => {
  const text: string = event.data;
  void text;
};
socket.onclose = (event) => {
  const clean: boolean = event.wasClean && event.code === 1000 && event.reason === "";
  void clean;
};
socket.addEventListener("close", (event) => void event.code, { once: true });
socket.send("[]");
socket.close(1000, "bye");
const recipients: number = server.broadcast("room:lobby", "new_msg", { body: "hi" });
const subscribers: FakeSocketInfo[] = server.subscribers("room:lobby");
const users: (string | null)[] = server.sockets.map((s) => s.user);
const closed: number = server.disconnect((s) => s.topics.includes("room:lobby"), 1006);
const token: string = server.token("alice", 60, { name: "Alice" });
const published: PublishResult = server.publish("feed:1", "news", { n: 1 });
const position: string | undefined = published.position;
const members: PresenceState | undefined = server.presence("room:lobby");
const firstRef: string | undefined = members?.alice?.metas[0]?.phx_ref;
for (const frame of server.frames) {
  if (frame.kind === "push") {
    const event: string = frame.event;
    void event;
  } else if (frame.kind === "invalid") {
    const code: string = frame.error.code;
    void code;
  }
}
server.clear();
server.tick();
const kind: "join" | "leave" | "heartbeat" | "push" = decodeFrame("[]").kind;
void [state, open, recipients, subscribers, users, closed, token, position, firstRef, kind, WebFakeServer, init, initSync];

// @ts-expect-error unknown option
new FakeServer({ idleTimeOut: 5 });
// @ts-expect-error a rule that does not exist
new FakeServer({ channels: { room: { join: "everyone", push: "nobody" } } });
// @ts-expect-error the topic is a string
server.broadcast(42, "e", {});
// @ts-expect-error presence is on or off
new FakeServer({ channels: { room: { presence: "yes" } } });
// @ts-expect-error readyState is read-only
socket.readyState = 3;
