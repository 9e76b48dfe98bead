"""A scripted Phoenix V2 server implementing the history/recovery contract the node does not
implement yet, so the client's side of it is tested now:

- every broadcast of a topic carries its position ``"<offset>:<epoch>"`` in the ref slot;
- a join may carry ``{"since": "<offset>:<epoch>"}``; the ok response is
  ``{"position": "<current>", "recovered": true|false}``; on ``recovered: true`` the missed
  publications follow the reply, in order, before any live one.

It keeps the last ``keep`` publications per topic; a ``since`` older than that, or of another
epoch, is not recoverable. Knobs let a test misbehave: ``answer_heartbeats``,
``replay_duplicates`` (also resend the publication at ``since``), ``history`` (off: answers
like today's node, without positions), presence frames on join (``presence_on_join``: the
``presence_state`` after each join's reply, with the join's ``join_ref`` as the node sends it;
``presence_diff_first``: a diff sent between the reply and the state; ``presence_stale_state``:
a state naming another join, sent before the real one).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response


@dataclass
class Publication:
    offset: int
    event: str
    payload: Any


@dataclass
class FakeNode:
    keep: int = 100
    epoch: str = "e1"
    history: bool = True
    answer_heartbeats: bool = True
    replay_duplicates: bool = False
    presence_on_join: dict[str, Any] | None = None
    presence_diff_first: dict[str, Any] | None = None
    presence_stale_state: dict[str, Any] | None = None
    joins: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    heartbeats: int = 0
    logs: dict[str, list[Publication]] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    members: dict[ServerConnection, dict[str, str]] = field(default_factory=dict)
    paused: bool = False
    server: Server | None = None
    url: str = ""

    async def start(self) -> FakeNode:
        self.server = await serve(self._handle, "127.0.0.1", 0, process_request=self._gate)
        port = next(iter(self.server.sockets)).getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _gate(self, connection: ServerConnection, request: Request) -> Response | None:
        # While paused the node is "down": upgrades get 503 and clients keep retrying.
        return connection.respond(503, "paused\n") if self.paused else None

    async def outage(self) -> None:
        """Drops every socket and refuses new ones until ``paused`` is set to False."""
        self.paused = True
        await self.drop_connections()

    async def drop_connections(self) -> None:
        """Closes every client socket (1001, as a node shutting down)."""
        for ws in list(self.members):
            await ws.close(1001, "going away")
        self.members.clear()

    def position(self, topic: str) -> str:
        return f"{self.offsets.get(topic, 0)}:{self.epoch}"

    async def publish(self, topic: str, payload: Any, event: str = "message") -> str:
        """Appends to the topic's history (if on) and broadcasts to joined sockets."""
        offset = self.offsets.get(topic, 0) + 1
        self.offsets[topic] = offset
        log = self.logs.setdefault(topic, [])
        log.append(Publication(offset, event, payload))
        del log[: max(0, len(log) - self.keep)]
        ref = f"{offset}:{self.epoch}" if self.history else None
        for ws, topics in list(self.members.items()):
            if topic in topics:
                await _send(ws, [None, ref, topic, event, payload])
        return f"{offset}:{self.epoch}"

    async def send_to_members(self, topic: str, event: str, payload: Any) -> None:
        for ws, topics in list(self.members.items()):
            if topic in topics:
                await _send(ws, [None, None, topic, event, payload])

    async def _handle(self, ws: ServerConnection) -> None:
        self.members[ws] = {}
        try:
            async for text in ws:
                join_ref, ref, topic, event, payload = json.loads(text)
                if topic == "phoenix" and event == "heartbeat":
                    self.heartbeats += 1
                    if self.answer_heartbeats:
                        await _reply(ws, None, ref, topic, "ok", {})
                elif event == "phx_join":
                    await self._join(ws, join_ref, ref, topic, payload)
                elif event == "phx_leave":
                    self.members.get(ws, {}).pop(topic, None)
                    await _reply(ws, join_ref, ref, topic, "ok", {})
                    await _send(ws, [join_ref, join_ref, topic, "phx_close", {}])
                elif topic in self.members.get(ws, {}):
                    await self.publish(topic, payload, event)
                    if ref is not None:
                        await _reply(ws, join_ref, ref, topic, "ok", {})
                else:
                    await _reply(ws, None, ref, topic, "error", {"reason": "unmatched topic"})
        except Exception:
            pass
        finally:
            self.members.pop(ws, None)

    async def _join(self, ws: ServerConnection, join_ref: str, ref: str, topic: str, payload: dict[str, Any]) -> None:
        self.joins.append((topic, payload))
        if not self.history:
            self.members[ws][topic] = join_ref
            await _reply(ws, join_ref, ref, topic, "ok", {})
            await self._presence(ws, join_ref, topic)
            return
        since = payload.get("since")
        replay: list[Publication] | None = None
        response: dict[str, Any] = {"position": self.position(topic)}
        if isinstance(since, str):
            offset_text, _, epoch = since.partition(":")
            offset = int(offset_text)
            log = self.logs.get(topic, [])
            first = log[0].offset if log else self.offsets.get(topic, 0) + 1
            if epoch == self.epoch and offset + 1 >= first:
                replay = [p for p in log if p.offset > offset]
                if self.replay_duplicates:
                    replay = [p for p in log if p.offset >= offset]
            response["recovered"] = replay is not None
        self.members[ws][topic] = join_ref
        await _reply(ws, join_ref, ref, topic, "ok", response)
        for p in replay or []:
            await _send(ws, [None, f"{p.offset}:{self.epoch}", topic, p.event, p.payload])
        await self._presence(ws, join_ref, topic)

    async def _presence(self, ws: ServerConnection, join_ref: str, topic: str) -> None:
        if self.presence_diff_first is not None:
            await _send(ws, [None, None, topic, "presence_diff", self.presence_diff_first])
        if self.presence_stale_state is not None:
            await _send(ws, [f"not-{join_ref}", None, topic, "presence_state", self.presence_stale_state])
        if self.presence_on_join is not None:
            await _send(ws, [join_ref, None, topic, "presence_state", self.presence_on_join])


async def _send(ws: ServerConnection, frame: list[Any]) -> None:
    try:
        await ws.send(json.dumps(frame))
    except Exception:
        pass


async def _reply(ws: ServerConnection, join_ref: str | None, ref: str, topic: str, status: str, response: dict[str, Any]) -> None:
    await _send(ws, [join_ref, ref, topic, "phx_reply", {"status": status, "response": response}])


async def until(check: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)
