#!/usr/bin/env python3
"""A PyView instance, running seed 004's own pub/sub backend unchanged, next to a Switchboard node
started with `--envelope pyview --channel-prefix <the PyView prefix>`.

    python interop.py --backend redis --backend-url redis://127.0.0.1:6379 \
        --node-url http://127.0.0.1:4000 --channel-prefix pyview:
    python interop.py --backend postgres --backend-url postgres://postgres@127.0.0.1:5432/postgres \
        --node-url http://127.0.0.1:4000 --channel-prefix pyview_

It plays both sides on one backend the node also uses:

- PyView: `RedisPubSub` or `PostgresPubSub` from seed_pubsub.py (verbatim from the seed), with
  handlers for three sessions: s1 and s2 on topic T, s3 on topic T2.
- Browsers: two Phoenix Channels V2 WebSocket clients, A and B, joined to T on the node.

and checks, each message counted on every observer (no more, no fewer, in order):

- pyview_to_node: what PyView broadcasts on T reaches A and B once each, as event "message"
  with the message as payload; PyView's own handlers get it once each (their own echo, as
  PyView does without a node), not a second time relayed by the node.
- node_http_to_pyview / node_push_to_pyview: what is published on the node on T
  (POST /api/publish, then a socket push from A) reaches s1 and s2 once each as the message
  object itself, and A and B once each (the node drops its own echo from the backend).
- node_http_to_pyview_other_topic: a publish on T2 reaches s3 only.
- finally, after a quiet second, nobody got anything more.

Seed code that does not work, and what this script does about it (see also seed_pubsub.py):

- RedisPubSub.start() creates the listener task before any subscription; redis-py's
  PubSub.listen() loops `while self.subscribed`, so on a PubSub without subscriptions it
  returns at once and the task ends: such an instance never receives anything. As
  /work/shared/TOOLCHAIN.md item 13 says, the script starts `_listen()` again after the first
  subscribe_topic (only if the first task has ended), without touching the class.
- PostgresPubSub.broadcast() runs `await self._conn.execute(f"NOTIFY {channel}, $1", payload)`.
  That can never work: asyncpg sends a statement with arguments through the extended protocol
  (Parse/Bind), and NOTIFY's grammar takes its payload as a string literal only, so
  PostgreSQL answers `syntax error at or near "$1"` for every topic. Before even getting
  there, the channel is pasted in unquoted, so a channel that is not a plain SQL identifier
  (e.g. `pyview_room:1`, with ':') is `syntax error at or near ":"`, and one with upper-case
  letters would be folded to lower case. So with the seed's PostgresPubSub nothing PyView
  broadcasts ever leaves the process, whatever the node does. The script calls it anyway
  (on T, and on `counter` whose channel is a plain identifier), records the errors under
  "seed_defects" and checks that nothing was delivered; it then sends what a working
  broadcast would (the same channel and payload, with `SELECT pg_notify($1, $2)` on its own
  connection; check pyview_wire_format_to_node, not seed code) to show the node reads it.
  The other direction works with the seed unchanged: add_listener() quotes the channel, so
  topics with ':' and upper case are heard. Not tested because they cannot work either way:
  a prefixed channel over 63 bytes (PostgreSQL truncates the name PyView LISTENs to, asyncpg
  then finds no listener for the truncated name; the node maps long names differently).

On success it prints a JSON summary on stdout and exits 0; on any failure it prints the summary
with "ok": false and "failure", says what went wrong on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import platform
import sys
import time
import traceback
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import asyncpg
import redis.asyncio as aioredis
import websockets
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_pubsub import PostgresPubSub, RedisPubSub  # noqa: E402

# How long anything that should happen promptly may take (a debug node on a busy 2-core box).
PATIENCE = 10.0
# How long to wait after the expected deliveries for anything extra (a duplicate, an echo).
QUIET = 0.5
# Marker key of the probes that tell the node listens (ignored everywhere else).
PROBE_KEY = "__interop_probe"


class Failure(Exception):
    """A check failed; the message says what was expected and what arrived."""


def canon(value: Any) -> str:
    """A strict comparison key: 1, 1.0 and True differ, object key order does not matter."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def is_probe(payload: Any) -> bool:
    return isinstance(payload, dict) and PROBE_KEY in payload


async def wait_until(
    condition: Callable[[], bool], what: str, state: Callable[[], Any], timeout: float = PATIENCE
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise Failure(f"after {timeout:.0f}s still waiting for {what}; state: {state()}")
        await asyncio.sleep(0.01)


class PhxClient:
    """A Phoenix Channels V2 JSON client (refs as phoenix.js keeps them) that records frames."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.frames: list[list[Any]] = []
        self.closed: str | None = None
        self._ref = 0
        self._join_refs: dict[str, str] = {}
        self._tasks: list[asyncio.Task] = []

    async def open(self) -> None:
        self.ws = await connect(self.url, max_size=None, open_timeout=PATIENCE)
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._heartbeat())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.ws.close()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
        except websockets.ConnectionClosed as e:
            self.closed = repr(e)
            return
        self.closed = "closed by the node"

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(20)
            await self.ws.send(json.dumps([None, self._next_ref(), "phoenix", "heartbeat", {}]))

    def _next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    async def _request(self, join_ref: str | None, topic: str, event: str, payload: Any) -> Any:
        ref = self._next_ref()
        await self.ws.send(json.dumps([join_ref, ref, topic, event, payload]))

        def reply() -> list[Any] | None:
            return next((f for f in self.frames if f[1] == ref and f[3] == "phx_reply"), None)

        await wait_until(
            lambda: reply() is not None or self.closed is not None,
            f"{self.name}: the reply to {event} on {topic}",
            lambda: self.frames[-5:],
        )
        frame = reply()
        if frame is None:
            raise Failure(f"{self.name}: the node closed the socket ({self.closed}) before replying to {event}")
        if frame[4].get("status") != "ok":
            raise Failure(f"{self.name}: {event} on {topic} answered {frame}")
        return frame[4]

    async def join(self, topic: str) -> None:
        ref = str(self._ref + 1)
        await self._request(ref, topic, "phx_join", {})
        self._join_refs[topic] = ref

    async def push(self, topic: str, event: str, payload: dict[str, Any]) -> None:
        await self._request(self._join_refs[topic], topic, event, payload)

    def broadcasts(self) -> list[tuple[str, str, str]]:
        """Every broadcast received, probes left out, as (topic, event, canonical payload)."""
        return [
            (f[2], f[3], canon(f[4]))
            for f in self.frames
            if f[0] is None and f[1] is None and not is_probe(f[4])
        ]


class Sessions:
    """PyView sessions: handlers that record what they get, as (topic, canonical message)."""

    def __init__(self) -> None:
        self.received: dict[str, list[tuple[str, str]]] = {}

    def handler(self, session_id: str) -> Callable[[str, Any], Awaitable[None]]:
        self.received.setdefault(session_id, [])

        async def handle(topic: str, message: Any) -> None:
            self.received[session_id].append((topic, canon(message)))

        return handle


class Interop:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.backend: str = args.backend
        self.prefix: str = args.channel_prefix
        self.node_url: str = args.node_url.rstrip("/")
        self.ws_url = self.node_url.replace("http://", "ws://", 1) + "/socket/websocket?vsn=2.0.0"
        nonce = uuid.uuid4().hex[:8]
        self.nonce = nonce
        # ':' and upper case: fine on Redis, and on PostgreSQL for LISTEN (asyncpg quotes it).
        self.topic = f"room:Lobby-{nonce}"
        self.topic2 = f"room:Other-{nonce}"
        self.sessions = Sessions()
        self.clients: list[PhxClient] = []
        self.pubsub: RedisPubSub | PostgresPubSub | None = None
        self.side: Any = None  # a plain backend connection (probes, NUMSUB, pg_notify)
        self.expected: dict[str, int] = {}
        self.summary: dict[str, Any] = {
            "ok": False,
            "backend": self.backend,
            "node_url": self.node_url,
            "channel_prefix": self.prefix,
            "topics": {"T": self.topic, "T2": self.topic2},
            "versions": {
                "python": platform.python_version(),
                **{p: importlib.metadata.version(p) for p in ("redis", "asyncpg", "websockets")},
            },
            "seed_workarounds": [],
            "seed_defects": [],
            "checks": {},
        }

    # --- observers -------------------------------------------------------------------------

    def observed(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {f"phoenix:{c.name}": c.broadcasts() for c in self.clients}
        out.update({f"pyview:{s}": list(r) for s, r in self.sessions.received.items()})
        return out

    async def expect(
        self, check: str, action: Callable[[], Awaitable[None]], expected: dict[str, list[Any]]
    ) -> dict[str, Any]:
        """Runs `action`, then waits until every observer got what `expected` lists for it
        (observers not listed expect nothing), waits QUIET more, and compares exactly."""
        before = {k: len(v) for k, v in self.observed().items()}
        started = time.monotonic()
        await action()

        def new() -> dict[str, list[Any]]:
            return {k: v[before[k]:] for k, v in self.observed().items()}

        await wait_until(
            lambda: all(len(new()[k]) >= len(v) for k, v in expected.items()),
            f"{check}: the expected deliveries",
            lambda: {"expected": expected, "got": new()},
        )
        latency = time.monotonic() - started
        await asyncio.sleep(QUIET)
        got = new()
        problems = [
            describe_mismatch(key, expected.get(key, []), deliveries)
            for key, deliveries in got.items()
            if deliveries != expected.get(key, [])
        ]
        if problems:
            self.summary["failure_details"] = {"check": check, "expected": expected, "got": got}
            raise Failure(f"{check}: " + "; ".join(problems))
        for key, want in expected.items():
            self.expected[key] = self.expected.get(key, 0) + len(want)
        result = {
            "ok": True,
            "seconds": round(latency, 3),
            "deliveries": {k: len(v) for k, v in got.items()},
        }
        self.summary["checks"][check] = result
        return result

    # --- backends ----------------------------------------------------------------------------

    async def connect_backend(self) -> None:
        if self.backend == "redis":
            self.pubsub = RedisPubSub(self.args.backend_url, channel_prefix=self.prefix)
            self.side = aioredis.from_url(self.args.backend_url)
        else:
            self.pubsub = PostgresPubSub(self.args.backend_url, channel_prefix=self.prefix)
            self.side = await asyncpg.connect(self.args.backend_url)

    async def side_publish(self, topic: str, message: Any) -> None:
        """What PyView's backend puts on the wire for `message` on `topic`, sent from a plain
        connection of ours (probes, and the PostgreSQL wire-format check)."""
        channel = self.prefix + topic
        if self.backend == "redis":
            await self.side.publish(channel, json.dumps({"topic": topic, "message": message}))
        else:
            await self.side.execute("SELECT pg_notify($1, $2)", channel, json.dumps(message))

    async def numsub(self, channel: str) -> int:
        return int((await self.side.pubsub_numsub(channel))[0][1])

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> None:
        t, t2 = self.topic, self.topic2
        await self.connect_backend()

        # Browsers on the node.
        self.clients = [PhxClient("A", self.ws_url), PhxClient("B", self.ws_url)]
        for client in self.clients:
            await client.open()
            await client.join(t)

        # The node listens to T once a message in PyView's format sent on T's channel reaches
        # both clients (PostgreSQL shows no one else's LISTENs; this works on both backends).
        # PyView is not subscribed yet, so it never sees the probes.
        await self.wait_node_listens(t)

        # PyView: start, then sessions subscribe as LiveViews do in mount().
        assert self.pubsub is not None
        await self.pubsub.start()
        await self.pubsub.subscribe_topic("s1", t, self.sessions.handler("s1"))
        if self.backend == "redis":
            await self.restart_redis_listener_if_ended()
        await self.pubsub.subscribe_topic("s2", t, self.sessions.handler("s2"))
        await self.pubsub.subscribe_topic("s3", t2, self.sessions.handler("s3"))
        if self.backend == "redis":
            # redis-py's subscribe() sends SUBSCRIBE without waiting for the answer.
            for channel, count in ((self.prefix + t, 2), (self.prefix + t2, 1)):
                await wait_until_async(
                    lambda c=channel, n=count: self.numsub_is(c, n),
                    f"PUBSUB NUMSUB {channel} == {count} (the node and PyView)",
                )
        # (PostgresPubSub: add_listener() returns after LISTEN has run.)

        await self.pyview_to_node()
        await self.node_to_pyview()

        # Nothing late, nothing twice.
        await asyncio.sleep(1.0)
        totals = {k: len(v) for k, v in self.observed().items()}
        want = {k: self.expected.get(k, 0) for k in totals}
        if totals != want:
            raise Failure(f"late or duplicate deliveries after the checks: expected {want}, got {totals}; {self.observed()}")
        for client in self.clients:
            if client.closed is not None:
                raise Failure(f"client {client.name} was disconnected: {client.closed}")
        self.summary["totals"] = totals
        self.summary["ok"] = True

    async def numsub_is(self, channel: str, count: int) -> bool:
        return await self.numsub(channel) == count

    async def wait_node_listens(self, topic: str) -> None:
        deadline = time.monotonic() + PATIENCE
        seq = 0

        def seen() -> bool:
            return all(
                any(f[0] is None and f[2] == topic and is_probe(f[4]) for f in c.frames)
                for c in self.clients
            )

        while not seen():
            if time.monotonic() > deadline:
                raise Failure(
                    f"probes sent in PyView's format on channel {self.prefix + topic!r} never reached "
                    f"the node's clients of {topic!r} within {PATIENCE:.0f}s: is the node running with "
                    f"--envelope pyview --channel-prefix {self.prefix!r} on this {self.backend}?"
                )
            seq += 1
            await self.side_publish(topic, {PROBE_KEY: seq})
            await asyncio.sleep(0.1)

    async def restart_redis_listener_if_ended(self) -> None:
        """TOOLCHAIN item 13: the seed's listener task may have ended before the first
        subscription existed; start `_listen()` again (the class stays unchanged)."""
        assert isinstance(self.pubsub, RedisPubSub)
        await asyncio.sleep(0.05)  # let the first task run if it has not yet
        task = self.pubsub._listener_task
        ended = task is not None and task.done()
        if ended:
            self.pubsub._listener_task = asyncio.create_task(self.pubsub._listen())
        self.summary["seed_workarounds"].append(
            {
                "what": "RedisPubSub: listener task started again after the first subscribe_topic",
                "first_task_had_ended": ended,
                "why": "redis-py PubSub.listen() returns at once while there is no subscription, "
                "and RedisPubSub.start() starts it before any",
            }
        )

    def messages(self, tag: str, count: int, objects_only: bool = False) -> list[Any]:
        """Distinct JSON values of several kinds (PyView broadcasts any JSON value; a socket
        push carries an object)."""
        out: list[Any] = []
        for i in range(count):
            obj = {
                "tag": tag,
                "n": i,
                "run": self.nonce,
                "text": 'héllo ✓ "quoted" \\ \n',
                "nested": {"list": [1, 2.5, None, True], "empty": {}},
            }
            if objects_only:
                out.append(obj)
                continue
            kind = i % 5
            out.append(
                [obj, 1000 + i, f"{tag}-{i}-{self.nonce}", [tag, i, {"k": None}], i + 0.25][kind]
            )
        return out

    async def pyview_to_node(self) -> None:
        t = self.topic
        msgs = self.messages("pyview", 6)
        node_side = [(t, "message", canon(m)) for m in msgs]
        pyview_side = [(t, canon(m)) for m in msgs]
        # PyView's handlers on T get PyView's own broadcasts once (through the backend, as
        # without a node); the node must not relay them back.
        expected = {
            "phoenix:A": node_side,
            "phoenix:B": node_side,
            "pyview:s1": pyview_side,
            "pyview:s2": pyview_side,
        }
        assert self.pubsub is not None
        if self.backend == "redis":

            async def broadcast() -> None:
                for m in msgs:
                    await self.pubsub.broadcast(t, m)

            await self.expect("pyview_to_node", broadcast, expected)
            return

        # PostgreSQL: the seed's broadcast, as written, for T and for a plain-identifier topic.
        failures: list[dict[str, Any]] = []

        async def seed_broadcast() -> None:
            for topic in (t, "counter"):
                try:
                    await self.pubsub.broadcast(topic, msgs[0])
                except asyncpg.PostgresSyntaxError as e:
                    failures.append(
                        {
                            "what": "PostgresPubSub.broadcast raises; the message is sent nowhere",
                            "topic": topic,
                            "statement": f"NOTIFY {self.prefix}{topic}, $1",
                            "error": f"{type(e).__name__}: {e}",
                        }
                    )

        # If it ever worked, T's observers would get msgs[0] once each.
        await self.expect("pyview_to_node_seed_broadcast", seed_broadcast, {})
        if len(failures) != 2:
            raise Failure(
                "PostgresPubSub.broadcast was expected to fail with a syntax error (NOTIFY with "
                f"a bind parameter); it did not, so test its deliveries: {failures}"
            )
        self.summary["seed_defects"].extend(failures)
        self.summary["checks"]["pyview_to_node_seed_broadcast"]["note"] = (
            "the seed's broadcast cannot send anything (see seed_defects); nothing was delivered"
        )

        async def wire_format() -> None:
            for m in msgs:
                await self.side_publish(t, m)

        result = await self.expect("pyview_wire_format_to_node", wire_format, expected)
        result["note"] = (
            "not seed code: SELECT pg_notify(prefix+topic, json.dumps(message)), the channel and "
            "payload a working PostgresPubSub.broadcast would send"
        )

    async def node_to_pyview(self) -> None:
        t, t2 = self.topic, self.topic2

        msgs = self.messages("http", 6)
        expected = {
            "phoenix:A": [(t, "update", canon(m)) for m in msgs],
            "phoenix:B": [(t, "update", canon(m)) for m in msgs],
            "pyview:s1": [(t, canon(m)) for m in msgs],
            "pyview:s2": [(t, canon(m)) for m in msgs],
        }

        async def publish_http() -> None:
            for m in msgs:
                await self.http_publish(t, "update", m)

        await self.expect("node_http_to_pyview", publish_http, expected)

        msgs = self.messages("push", 5, objects_only=True)
        expected = {
            "phoenix:A": [(t, "chat", canon(m)) for m in msgs],  # the sender included
            "phoenix:B": [(t, "chat", canon(m)) for m in msgs],
            "pyview:s1": [(t, canon(m)) for m in msgs],
            "pyview:s2": [(t, canon(m)) for m in msgs],
        }

        async def push() -> None:
            for m in msgs:
                await self.clients[0].push(t, "chat", m)

        await self.expect("node_push_to_pyview", push, expected)

        msgs = self.messages("other", 3)

        async def publish_other() -> None:
            for m in msgs:
                await self.http_publish(t2, "update", m)

        await self.expect(
            "node_http_to_pyview_other_topic",
            publish_other,
            {"pyview:s3": [(t2, canon(m)) for m in msgs]},
        )

    async def http_publish(self, topic: str, event: str, payload: Any) -> None:
        body = json.dumps({"topic": topic, "event": event, "payload": payload}).encode()
        request = urllib.request.Request(
            self.node_url + "/api/publish",
            data=body,
            headers={"content-type": "application/json"},
            method="POST",
        )

        def send() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(request, timeout=PATIENCE) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        status, text = await asyncio.to_thread(send)
        if status != 200:
            raise Failure(f"POST /api/publish on {topic} answered {status}: {text}")

    async def close(self) -> None:
        for client in self.clients:
            try:
                await client.close()
            except Exception:
                pass
        if self.pubsub is not None:
            try:
                for session in ("s1", "s2", "s3"):
                    await self.pubsub.unsubscribe_all(session)
                await self.pubsub.stop()
            except Exception:
                pass
        if self.side is not None:
            try:
                if self.backend == "redis":
                    await self.side.aclose()
                else:
                    await self.side.close()
            except Exception:
                pass


def describe_mismatch(observer: str, want: list[Any], got: list[Any]) -> str:
    """What is wrong with one observer's deliveries, briefly (full lists: failure_details)."""

    def short(item: Any) -> str:
        text = repr(item)
        return text if len(text) <= 90 else text[:87] + "..."

    missing = list(want)
    extra = []
    for item in got:
        if item in missing:
            missing.remove(item)
        else:
            extra.append(item)
    parts = [f"{observer}: expected {len(want)} deliveries, got {len(got)}"]
    if missing:
        parts.append(f"missing {len(missing)}: " + ", ".join(short(m) for m in missing[:3]))
    if extra:
        kind = "duplicates" if all(e in want for e in extra) else "unexpected"
        parts.append(f"{kind} {len(extra)}: " + ", ".join(short(e) for e in extra[:3]))
    if not missing and not extra:
        parts.append("out of order: " + ", ".join(short(g) for g in got[:6]))
    head, rest = parts[0], parts[1:]
    return head + (f" ({'; '.join(rest)})" if rest else "")


async def wait_until_async(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not await condition():
        if time.monotonic() > deadline:
            raise Failure(f"after {PATIENCE:.0f}s still waiting for {what}")
        await asyncio.sleep(0.02)


async def main_async(args: argparse.Namespace) -> int:
    interop = Interop(args)
    started = time.monotonic()
    failure = None
    try:
        await asyncio.wait_for(interop.run(), timeout=120)
    except Failure as e:
        failure = str(e)
    except asyncio.TimeoutError:
        failure = "the whole run took over 120 s"
    except Exception:
        failure = "unexpected error:\n" + traceback.format_exc()
    finally:
        await interop.close()
    summary = interop.summary
    summary["seconds"] = round(time.monotonic() - started, 3)
    if failure is not None:
        summary["ok"] = False
        summary["failure"] = failure
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    if failure is not None:
        print(f"interop.py ({args.backend}): FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("redis", "postgres"), required=True)
    parser.add_argument("--backend-url", required=True, help="redis://... or postgres://...")
    parser.add_argument("--node-url", required=True, help="the node's base URL, http://HOST:PORT")
    parser.add_argument(
        "--channel-prefix",
        help="the PyView app's prefix, also the node's --channel-prefix "
        "(default: the seed's, pyview: for Redis, pyview_ for PostgreSQL)",
    )
    args = parser.parse_args()
    if args.channel_prefix is None:
        args.channel_prefix = "pyview:" if args.backend == "redis" else "pyview_"
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
