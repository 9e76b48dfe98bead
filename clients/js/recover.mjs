// Recovery for phoenix.js channels on a Switchboard topic with history.
//
// Copy this file into your app (it has no dependencies) and join through it:
//
//   import { Socket } from "phoenix";
//   import { joinRecoverable } from "./recover.mjs";
//
//   const socket = new Socket("wss://rt.example.com/socket", { params: { token } });
//   socket.connect();
//   const feed = joinRecoverable(socket, "feed:42", {
//     onReload: () => refetchEverything(), // the history no longer reaches back: reload
//   });
//   feed.channel.on("new_msg", (payload) => render(payload));
//
// The channel remembers the position of the last message it received (Switchboard puts it
// in every broadcast's ref slot) and, because phoenix.js evaluates a channel's params again
// on every rejoin, asks for what it missed each time it rejoins after a reconnect
// ({since: position}). The node answers either with every missed message, in order, before
// any new one (recovered: true), or with recovered: false when its history no longer
// reaches back (or the stream was lost): then `onReload` runs and the app reloads its state
// from its own source.

/** Whether `ref` is a stream position ("<offset>:<epoch>"), not a reply's plain number. */
function isPosition(ref) {
  return typeof ref === "string" && /^\d+:[A-Za-z0-9]+$/.test(ref);
}

/**
 * Joins `topic` on `socket` so that every rejoin recovers what was missed.
 * @param {import("phoenix").Socket} socket
 * @param {string} topic
 * @param {{ params?: object, onReload?: (response: object) => void }} [options]
 * @returns {{ channel: import("phoenix").Channel, join: import("phoenix").Push, position: () => string | null }}
 */
export function joinRecoverable(socket, topic, { params = {}, onReload } = {}) {
  let last = null;
  const channel = socket.channel(topic, () => (last ? { ...params, since: last } : { ...params }));
  const onMessage = channel.onMessage.bind(channel);
  channel.onMessage = (event, payload, ref, joinRef) => {
    if (isPosition(ref)) last = ref;
    return onMessage(event, payload, ref, joinRef);
  };
  const join = channel.join().receive("ok", (response) => {
    if (!response || !isPosition(response.position)) return;
    if (response.recovered === false) {
      // What was missed cannot be sent: start again from the stream as it stands.
      last = response.position;
      if (onReload) onReload(response);
    } else if (response.recovered !== true) {
      // A first join: everything after this position will arrive.
      last = response.position;
    }
    // recovered: true: the missed messages follow the reply and move `last` themselves.
  });
  return { channel, join, position: () => last };
}
