"""One Phoenix V2 WebSocket to a node, shared by everything a client object does.

The :class:`Connection` is the only place that touches the network (apart from the stdlib
HTTP publish in ``_http``). It

- connects lazily on first use, to ``ws[s]://<base>/socket/websocket?vsn=2.0.0&token=...``,
- sends a Phoenix heartbeat every ``heartbeat_interval`` (30 s, as phoenix.js; the node closes
  sockets that are silent for 60 s) and reconnects when one goes unanswered,
- reconnects with exponential backoff and full jitter (50 ms doubling to 5 s) for as long as
  the client is open, and rejoins every topic it had, with ``{"since": position}`` when the
  node keeps history for the topic,
- multiplexes: however many local subscribers a topic has, the socket joins it once; each
  incoming broadcast is handed to every local :class:`Listener` of its topic,
- tells listeners about gaps: a rejoin that the node could not recover (or a node without
  history, where nothing can be recovered) is reported in the stream as a :class:`Gap`,
- keeps each topic's presence list in sync (``presence_state`` / ``presence_diff``, as
  phoenix.js' ``Presence``), joins with the socket's presence meta (also at every rejoin) and
  updates it (``presence_update``).

Listeners are called synchronously from the reader task, in frame order, and must not block.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import _http
from ._phoenix import (
    MAX_FRAME_BYTES,
    MAX_TOPIC_BYTES,
    PRESENCE_EVENTS,
    Frame,
    Meta,
    Position,
    PresenceChange,
    PresenceMap,
    PresenceState,
    decode_frame,
    dumps,
    encode_frame,
    sync_state,
    validate_event,
    validate_topic,
)
from .errors import (
    ClosedError,
    ConnectError,
    InvalidPresenceError,
    JoinError,
    MessageTooLargeError,
    NoPresenceError,
    PresenceError,
    PublishError,
    TooManyMembersError,
)
from .types import Gap, Message

log = logging.getLogger("switchboard_client")

PublishVia = Literal["socket", "http"]
Token = str | Callable[[], str] | None

_UPSTREAM_UNAVAILABLE = "upstream unavailable"
_RATE_LIMITED = "rate limit exceeded"
_STALE_JOIN_REF = "stale join_ref"
_UNMATCHED_TOPIC = "unmatched topic"
_UPDATE_IN_PROGRESS = "a presence update is in progress"
MAX_PRESENCE_KEY_BYTES = 256
"""The node's bound on a presence key (the ``user`` connect parameter or a token's ``sub``)."""


class Listener(Protocol):
    """A local consumer of one topic's broadcasts."""

    def on_message(self, message: Message) -> None: ...

    def on_gap(self, gap: Gap) -> None: ...


@dataclass
class Options:
    """Tuning shared by every client class (all keyword arguments of their constructors)."""

    heartbeat_interval: float = 30.0
    """Seconds between Phoenix heartbeats; an unanswered one makes the client reconnect."""
    connect_timeout: float = 10.0
    """How long an operation waits for the socket to be (re)connected before it fails."""
    reply_timeout: float = 10.0
    """How long a join waits for the node's answer (the node's own subscribe timeout is 5 s)."""
    publish_timeout: float = 5.0
    """How long a publish may take in total, waiting for a reconnect included."""
    reconnect_min: float = 0.05
    reconnect_max: float = 5.0
    max_frame_bytes: int = MAX_FRAME_BYTES
    """Largest frame sent; keep it at or below the node's ``--max-frame-bytes``."""
    max_topic_bytes: int = MAX_TOPIC_BYTES
    publish_linger: float = 10.0
    """A topic joined only to publish on it over the socket is left after this long idle."""


class _Lost(Exception):
    """The socket closed before the node answered a request."""


@dataclass
class _Pending:
    future: asyncio.Future[tuple[str, dict[str, Any]]]
    on_reply: Callable[[str, dict[str, Any]], None] | None = None


@dataclass(eq=False)
class _Channel:
    topic: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    listeners: list[Listener] = field(default_factory=list)
    published_at: float | None = None
    join_ref: str | None = None
    joined_gen: int = -1
    joined_once: bool = False
    history: bool = False
    position: Position | None = None
    upstream_available: bool = True
    presence: PresenceState = field(default_factory=PresenceState)
    presence_param: Meta | None = None
    """The join's ``presence`` parameter (``None``: none is sent), at every (re)join."""
    presence_synced: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the list is in sync with the current join (its ``presence_state`` came)."""
    update_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """The node takes one ``presence_update`` at a time per socket and topic."""

    def wanted(self, now: float, linger: float) -> bool:
        if self.listeners:
            return True
        return self.published_at is not None and now - self.published_at < linger


def base_url(url: str) -> str:
    """The node's HTTP base URL (``http://host:port[/prefix]``) from what the caller gave."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url must be the node's base URL, like http://127.0.0.1:4000, not {url!r}")
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class Connection:
    """The shared socket; see the module doc. Create it anywhere, use it from one event loop."""

    def __init__(
        self,
        url: str,
        *,
        token: Token = None,
        api_key: str | None = None,
        publish_via: PublishVia | None = None,
        options: Options | None = None,
        user: str | None = None,
    ) -> None:
        self.base_url = base_url(url)
        self._token = token
        self.user = check_user(user)
        """The ``user`` connect parameter: the socket's presence key on an open node."""
        self.api_key = api_key
        if publish_via not in (None, "socket", "http"):
            raise ValueError(f"publish_via must be 'socket' or 'http', not {publish_via!r}")
        self.publish_via: PublishVia = publish_via or ("http" if api_key is not None else "socket")
        self.options = options or Options()
        self.reconnects = 0
        """How many times the socket was re-established after being lost."""
        self._channels: dict[str, _Channel] = {}
        self._pending: dict[str, _Pending] = {}
        self._ws: ClientConnection | None = None
        self._gen = 0
        self._ref = 0
        self._hb_ref: str | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closed = False
        self._ever_connected = False
        self._last_error: ConnectError | None = None
        self._refused: ConnectError | None = None
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- public surface used by the client classes ---------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def ws_url(self) -> str:
        parts = urllib.parse.urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        query = [("vsn", "2.0.0")]
        token = self._token() if callable(self._token) else self._token
        if token is not None:
            query.append(("token", token))
        if self.user is not None:
            query.append(("user", self.user))
        return urllib.parse.urlunsplit(
            (scheme, parts.netloc, parts.path + "/socket/websocket", urllib.parse.urlencode(query), "")
        )

    async def connect(self, timeout: float | None = None) -> None:
        """Waits until the socket is open; :class:`ConnectError` after ``timeout``."""
        await self._wait_connected(self.options.connect_timeout if timeout is None else timeout)

    async def subscribe(self, topic: str, listener: Listener) -> None:
        """Adds ``listener`` to ``topic``, joining it on the node if this is its first.

        Returns once the node answered ok: from then on, everything published on the topic
        anywhere reaches the listener. Raises :class:`JoinError` when the node refuses.
        """
        topic = validate_topic(topic, self.options.max_topic_bytes)
        self._check_open()
        while True:
            ch = self._channel(topic)
            async with ch.lock:
                if self._channels.get(topic) is not ch:
                    continue  # left while we waited for the lock
                ch.listeners.append(listener)
                if ch.joined_gen == self._gen and self._ws is not None:
                    return
                try:
                    await self._join_locked(ch, self.options.reply_timeout)
                except BaseException:
                    ch.listeners.remove(listener)
                    if not self._wanted(ch):
                        self._channels.pop(topic, None)
                    raise
                return

    async def unsubscribe(self, topic: str, listener: Listener) -> None:
        """Removes ``listener``; leaves the topic on the node when it was the last one."""
        ch = self._channels.get(topic)
        if ch is None:
            return
        async with ch.lock:
            for index, existing in enumerate(ch.listeners):
                if existing is listener:
                    del ch.listeners[index]
                    break
            if not ch.listeners:
                # Unsubscribing means leaving now, even if the topic was also published on.
                ch.published_at = None
            if self._channels.get(topic) is ch and not self._wanted(ch):
                await self._leave_locked(ch)

    async def publish(
        self,
        topic: str,
        message: Any,
        *,
        event: str = "message",
        via: PublishVia | None = None,
        timeout: float | None = None,
    ) -> int | None:
        """Publishes ``message`` on ``topic``; returns once the node accepted it.

        Over the socket (a JSON object only: the Phoenix protocol pushes objects) the result
        is ``None``; over HTTP it is the number of the node's sockets it was queued for.
        Anything that is not a JSON object goes over HTTP whatever ``via`` says.
        Raises :class:`PublishError` when the node did not accept it in ``timeout``.
        """
        topic = validate_topic(topic, self.options.max_topic_bytes)
        event = validate_event(event)
        self._check_open()
        timeout = self.options.publish_timeout if timeout is None else timeout
        via = via or self.publish_via
        if via == "socket" and isinstance(message, dict):
            await self._push(topic, event, dumps(message), timeout)
            return None
        dumps(message)  # fail on the caller's input here, not in a worker thread
        return await asyncio.to_thread(
            _http.publish,
            self.base_url,
            topic,
            event,
            message,
            api_key=self.api_key,
            timeout=timeout,
        )

    def joined(self, topic: str) -> bool:
        """True while the socket is open and the node confirmed the topic's membership."""
        ch = self._channels.get(topic)
        return ch is not None and self._ws is not None and ch.joined_gen == self._gen

    def presence(self, topic: str) -> PresenceMap | None:
        """``{key: [meta, ...]}`` for a joined topic, ``None`` when the node sent no presence."""
        ch = self._channels.get(topic)
        return ch.presence.snapshot() if ch is not None else None

    @property
    def has_presence_key(self) -> bool:
        """Whether the socket presumably has a presence key: a token (its ``sub``) or ``user``."""
        return self._token is not None or self.user is not None

    def presence_state(self, topic: str) -> PresenceState | None:
        """The topic's live list (``None`` when this connection is not on the topic)."""
        ch = self._channels.get(topic)
        return ch.presence if ch is not None else None

    def presence_synced(self, topic: str) -> bool:
        """True while the topic is joined and its list is in sync with that join."""
        ch = self._channels.get(topic)
        return (
            ch is not None
            and self._ws is not None
            and ch.joined_gen == self._gen
            and ch.presence.synced(ch.join_ref)
        )

    def presence_meta(self, topic: str) -> Meta | None:
        """The presence meta this socket joins ``topic`` with (``None``: none)."""
        ch = self._channels.get(topic)
        return ch.presence_param if ch is not None else None

    async def join_presence(
        self, topic: str, listener: Listener, meta: Meta | None, timeout: float | None = None
    ) -> None:
        """Adds ``listener`` to a presence topic; returns once the list is in sync.

        The socket joins with ``{"presence": meta}`` (``{}`` without a meta when it has a
        presence key, nothing when it is an observer), or, when the topic is already joined,
        sends ``meta`` as a ``presence_update``. Raises the :class:`PresenceError` the
        node's refusal means (:class:`InvalidPresenceError`, :class:`NoPresenceError`,
        :class:`TooManyMembersError`), :class:`JoinError` for other refusals, and
        :class:`NoPresenceError` when the join succeeded but no ``presence_state`` came
        within ``timeout`` (``reply_timeout`` by default).
        """
        topic = validate_topic(topic, self.options.max_topic_bytes)
        if meta is not None:
            meta = check_meta(topic, meta)
        self._check_open()
        timeout = self.options.reply_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent = False
        while True:
            ch = self._channel(topic)
            async with ch.lock:
                if self._channels.get(topic) is not ch:
                    continue  # left while we waited for the lock
                ch.listeners.append(listener)
                if ch.presence.known:
                    # The list is here already: the newcomer hears of everyone on it as a
                    # phoenix.js Presence created now would (every later change is relative
                    # to it). Nothing can come in between: there is no await since append.
                    intro: list[PresenceChange] = []
                    sync_state({}, ch.presence.state, intro)
                    self._tell_presence(ch, listener, intro)
                try:
                    if ch.joined_gen != self._gen or self._ws is None:
                        sent = await self._join_presence_locked(ch, meta, deadline)
                except BaseException:
                    ch.listeners.remove(listener)
                    if not self._wanted(ch) and self._channels.get(topic) is ch:
                        self._channels.pop(topic, None)
                    raise
            break
        try:
            await self._wait_presence_state(ch, deadline, timeout)
            if meta is not None and not sent and meta != ch.presence_param:
                await self.update_presence(topic, meta, max(0.0, deadline - loop.time()))
        except BaseException:
            await self.unsubscribe(topic, listener)
            raise

    async def update_presence(self, topic: str, meta: Meta, timeout: float | None = None) -> None:
        """Replaces the socket's presence meta on ``topic`` (``presence_update``).

        Returns once the node recorded it; rides out a reconnect (the update is sent again
        on the rejoined topic) and the node's push rate limit within ``timeout``
        (``publish_timeout`` by default). Raises :class:`InvalidPresenceError` for a meta the
        node refuses, :class:`TooManyMembersError` when the topic is full, and
        :class:`PresenceError` otherwise (``not_member``, ``no_key``, ``timeout``).
        """
        meta = check_meta(topic, meta)
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.options.publish_timeout if timeout is None else timeout)
        ch = self._channels.get(topic)
        if ch is None or not ch.listeners:
            raise PresenceError(topic, "not_member", "this client has not joined the topic")
        async with ch.update_lock:
            delay = 0.01
            while True:
                ws = await self._wait_joined(ch, deadline)
                ref = self._next_ref()
                text = encode_frame(
                    ch.join_ref, ref, topic, "presence_update", meta, self.options.max_frame_bytes
                )
                try:
                    status, response = await self._request(
                        ws, ref, text, max(0.0, deadline - loop.time())
                    )
                except asyncio.TimeoutError:
                    raise PresenceError(
                        topic, "timeout", "the node did not answer the presence update in time"
                    ) from None
                except _Lost:
                    continue  # sent again once the topic is joined again (or time runs out)
                if status == "ok":
                    ch.presence_param = meta
                    return
                reason = str(response.get("reason", json.dumps(response)))
                if reason.startswith(_UPSTREAM_UNAVAILABLE):
                    # Recorded on this node; the node writes it to its backend once it is back.
                    log.warning("%s: presence updated on this node only: %s", topic, reason)
                    ch.presence_param = meta
                    return
                retry = (_RATE_LIMITED, _UPDATE_IN_PROGRESS, _STALE_JOIN_REF, _UNMATCHED_TOPIC)
                if reason.startswith(retry) and loop.time() + delay < deadline:
                    await asyncio.sleep(delay)  # refused, so not recorded: sending again is safe
                    delay = min(0.5, delay * 2)
                    continue
                raise presence_error(topic, reason) or PresenceError(
                    topic, reason.replace(" ", "_"), reason
                )

    async def list_presence(self, topic: str, timeout: float | None = None) -> dict[str, Any]:
        """``GET /api/presence?topic=...`` with the API key: the node's answer as a dict."""
        topic = validate_topic(topic, self.options.max_topic_bytes)
        self._check_open()
        return await asyncio.to_thread(
            _http.list_presence,
            self.base_url,
            topic,
            api_key=self.api_key,
            timeout=self.options.publish_timeout if timeout is None else timeout,
        )

    def position(self, topic: str) -> str | None:
        ch = self._channels.get(topic)
        return str(ch.position) if ch is not None and ch.position is not None else None

    def upstream_available(self, topic: str) -> bool:
        ch = self._channels.get(topic)
        return ch.upstream_available if ch is not None else True

    async def close(self) -> None:
        """Closes the socket for good; pending operations fail with :class:`ClosedError`."""
        if self._closed:
            return
        self._closed = True
        self._notify()
        ws = self._ws
        if ws is not None:
            try:
                await ws.close()
            except Exception:  # pragma: no cover - closing a broken socket
                pass
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            try:
                await runner
            except (asyncio.CancelledError, Exception):
                pass
        for task in list(self._tasks):
            task.cancel()
        self._fail_pending(ClosedError("the client was closed"))

    # --- connecting ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the client was closed")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _wait_connected(self, timeout: float) -> ClientConnection:
        self._check_open()
        if self._ws is not None:
            return self._ws
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._check_open()
            if self._ws is not None:
                return self._ws
            if self._refused is not None:
                raise self._refused
            remaining = deadline - loop.time()
            if remaining <= 0:
                why = f": {self._last_error}" if self._last_error is not None else ""
                raise ConnectError(f"could not connect to {self.base_url} within {timeout}s{why}")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                ws = await connect(
                    self.ws_url(),
                    open_timeout=self.options.connect_timeout,
                    ping_interval=None,  # Phoenix heartbeats instead, as phoenix.js
                    close_timeout=2,
                    compression=None,
                    max_size=None,
                    max_queue=64,
                )
            except asyncio.CancelledError:
                raise
            except InvalidStatus as exc:
                status = exc.response.status_code
                detail = _error_message(exc.response.body)
                error = ConnectError(
                    f"the node at {self.base_url} refused the WebSocket: HTTP {status}"
                    + (f" ({detail})" if detail else ""),
                    status=status,
                )
                self._last_error = error
                self._refused = error if status in (400, 401, 403, 404) else None
                log.log(logging.WARNING if attempt == 0 else logging.DEBUG, "%s", error)
            except Exception as exc:
                self._last_error = ConnectError(f"cannot connect to {self.base_url}: {exc}")
                self._refused = None
                log.log(
                    logging.WARNING if attempt == 0 and self._ever_connected else logging.DEBUG,
                    "%s",
                    self._last_error,
                )
            else:
                if self._closed:
                    await ws.close()
                    break
                if attempt > 0:
                    log.info("connected to %s again after %d attempt(s)", self.base_url, attempt)
                attempt = 0
                self._refused = None
                self._last_error = None
                await self._session(ws)
                if self._closed:
                    break
            self._notify()
            attempt += 1
            ceiling = min(self.options.reconnect_max, self.options.reconnect_min * 2 ** (attempt - 1))
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    async def _session(self, ws: ClientConnection) -> None:
        self._gen += 1
        gen = self._gen
        self._ws = ws
        self._hb_ref = None
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self._notify()
        heartbeat = self._spawn(self._heartbeat(ws))
        rejoin = self._spawn(self._rejoin_all(gen))
        try:
            async for text in ws:
                frame = decode_frame(text)
                if frame is None:
                    log.warning("ignored a message from the node that is not a V2 frame: %.200r", text)
                    continue
                try:
                    self._dispatch(frame)
                except Exception:  # a bug here must not cost the connection
                    log.exception("handling %.200r failed", text)
        except ConnectionClosed:
            pass
        finally:
            self._ws = None
            heartbeat.cancel()
            rejoin.cancel()
            self._fail_pending(_Lost())
            # Presence lists stay as they were (phoenix.js keeps them too); each rejoin's
            # presence_state syncs them, members gone meanwhile leaving.
            if not self._closed:
                log.warning(
                    "lost the connection to %s (close %s %r); reconnecting",
                    self.base_url,
                    ws.close_code,
                    ws.close_reason,
                )

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(error)
                entry.future.exception()  # mark retrieved: nobody may be waiting any more

    async def _heartbeat(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        interval = self.options.heartbeat_interval
        tick = min(1.0, interval)
        due = loop.time() + interval
        try:
            while True:
                await asyncio.sleep(tick)
                now = loop.time()
                self._expire_publish_channels(now)
                if now < due:
                    continue
                if self._hb_ref is not None:
                    log.warning(
                        "no heartbeat reply from %s within %ss; reconnecting", self.base_url, interval
                    )
                    await ws.close(1000, "heartbeat timeout")
                    return
                self._hb_ref = self._next_ref()
                await ws.send(dumps([None, self._hb_ref, "phoenix", "heartbeat", {}]))
                due = now + interval
        except ConnectionClosed:
            pass

    # --- joining and leaving ---------------------------------------------------------------

    def _channel(self, topic: str) -> _Channel:
        ch = self._channels.get(topic)
        if ch is None:
            ch = self._channels[topic] = _Channel(topic)
        return ch

    def _wanted(self, ch: _Channel) -> bool:
        return ch.wanted(asyncio.get_running_loop().time(), self.options.publish_linger)

    def _next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    async def _request(
        self,
        ws: ClientConnection,
        ref: str,
        text: str,
        timeout: float,
        on_reply: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        future: asyncio.Future[tuple[str, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = _Pending(future, on_reply)
        try:
            try:
                await ws.send(text)
            except ConnectionClosed:
                raise _Lost() from None
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(ref, None)

    async def _join_locked(self, ch: _Channel, timeout: float) -> None:
        for attempt in range(3):
            ws = await self._wait_connected(self.options.connect_timeout)
            gen = self._gen
            ref = self._next_ref()
            since = ch.position if ch.history and ch.joined_once else None
            payload: dict[str, Any] = {"since": str(since)} if since is not None else {}
            if ch.presence_param is not None:
                payload["presence"] = ch.presence_param
            ch.join_ref = ref
            ch.presence_synced.clear()  # diffs now wait for this join's presence_state
            text = dumps([ref, ref, ch.topic, "phx_join", payload])
            on_reply = functools.partial(self._on_join_reply, ch, gen, ref, since)
            try:
                status, response = await self._request(ws, ref, text, timeout, on_reply)
            except asyncio.TimeoutError:
                raise JoinError(ch.topic, f"no answer within {timeout}s") from None
            except _Lost:
                if attempt < 2 and not self._closed:
                    continue  # the socket died under the join: join again on the next one
                raise JoinError(ch.topic, "the connection was lost before the node answered") from None
            if status != "ok":
                reason = response.get("reason")
                raise JoinError(ch.topic, str(reason) if reason is not None else json.dumps(response))
            return

    def _on_join_reply(
        self,
        ch: _Channel,
        gen: int,
        join_ref: str,
        since: Position | None,
        status: str,
        response: dict[str, Any],
    ) -> None:
        # Runs in the reader, before any frame that follows the reply (recovered
        # publications, then live ones), so a gap lands at its place in the stream.
        if status != "ok" or ch.join_ref != join_ref or gen != self._gen:
            return
        resuming = ch.joined_once
        ch.joined_gen = gen
        ch.joined_once = True
        self._notify()
        upstream = response.get("upstream") != "unavailable"
        if not upstream:
            log.warning(
                "%s: joined, but the node's Redis/PostgreSQL bridge is down: messages from "
                "other nodes arrive only once it is back",
                ch.topic,
            )
        ch.upstream_available = upstream
        position = Position.parse(response.get("position"))
        gap: Gap | None = None
        if position is None:
            ch.history = False
            ch.position = None
            if resuming:
                gap = Gap(ch.topic, "no_history")
        else:
            ch.history = True
            if not resuming:
                ch.position = position
            elif since is not None and response.get("recovered") is True:
                pass  # the missed publications follow this reply and advance the position
            else:
                gap = Gap(ch.topic, "not_recovered", str(since) if since else None, str(position))
                ch.position = position
        if gap is not None:
            if not ch.listeners or any(getattr(x, "reads_messages", True) for x in ch.listeners):
                log.warning("%s", gap.describe())  # not for a topic only followed for presence
            for listener in list(ch.listeners):
                try:
                    listener.on_gap(gap)
                except Exception:
                    log.exception("a listener of %s failed on a gap", ch.topic)

    async def _join_presence_locked(self, ch: _Channel, meta: Meta | None, deadline: float) -> bool:
        """Joins ``ch`` with the presence parameter; True when ``meta`` went with the join."""
        loop = asyncio.get_running_loop()
        previous = ch.presence_param
        if meta is not None:
            ch.presence_param = meta
        elif previous is None and self.has_presence_key:
            # {} means "no meta" to the node, and makes it refuse the join at once when the
            # topic has no presence (nothing tells an observer's join that).
            ch.presence_param = {}
        try:
            await self._join_locked(ch, max(0.0, deadline - loop.time()))
            return meta is not None
        except JoinError as exc:
            ch.presence_param = previous
            error = presence_error(ch.topic, exc.reason)
            if error is None:
                raise
            if meta is None and error.code == "no_key" and previous is None:
                # No key after all (a token without sub?): join as an observer.
                await self._join_locked(ch, max(0.0, deadline - loop.time()))
                return False
            raise error from None

    async def _wait_presence_state(self, ch: _Channel, deadline: float, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        while not (self._channels.get(ch.topic) is ch and self.presence_synced(ch.topic)):
            self._check_open()
            remaining = deadline - loop.time()
            if remaining <= 0:
                if self.joined(ch.topic):
                    raise NoPresenceError(
                        ch.topic,
                        f"joined, but the node sent no presence_state within {timeout}s: the "
                        "topic tracks no presence (presence = true in its namespace turns it on)",
                    )
                raise PresenceError(
                    ch.topic, "timeout", f"the topic was not joined within {timeout}s"
                )
            waiting = asyncio.ensure_future(ch.presence_synced.wait())
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait(
                    (waiting, changed), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiting.cancel()
                changed.cancel()

    async def _wait_joined(self, ch: _Channel, deadline: float) -> ClientConnection:
        """The socket once ``ch`` is joined on it, waiting for a reconnect and rejoin."""
        loop = asyncio.get_running_loop()
        while True:
            self._check_open()
            if self._channels.get(ch.topic) is not ch:
                raise PresenceError(ch.topic, "not_member", "this client left the topic")
            ws = self._ws
            if ws is not None and ch.joined_gen == self._gen:
                return ws
            if self._runner is None or self._runner.done():
                self._runner = loop.create_task(self._run())
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PresenceError(
                    ch.topic, "timeout", "the topic was not joined again in time for the update"
                )
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def _rejoin_all(self, gen: int) -> None:
        channels = [ch for ch in self._channels.values() if self._wanted(ch)]
        for ch in list(self._channels.values()):
            if not self._wanted(ch):
                self._channels.pop(ch.topic, None)
        if channels:
            await asyncio.gather(*(self._rejoin(ch, gen) for ch in channels))

    async def _rejoin(self, ch: _Channel, gen: int) -> None:
        attempt = 0
        while gen == self._gen and self._channels.get(ch.topic) is ch:
            async with ch.lock:
                if ch.joined_gen == gen or self._channels.get(ch.topic) is not ch:
                    return
                if not self._wanted(ch):
                    self._channels.pop(ch.topic, None)
                    return
                try:
                    await self._join_locked(ch, self.options.reply_timeout)
                    return
                except JoinError as exc:
                    if gen != self._gen:
                        return
                    error = presence_error(ch.topic, exc.reason)
                    if ch.presence_param is not None and isinstance(
                        error, (InvalidPresenceError, NoPresenceError)
                    ):
                        # The node's configuration changed (presence off, a smaller meta
                        # bound): stay on the topic without the meta rather than not at all.
                        log.warning("%s; rejoining without the presence meta", error)
                        ch.presence_param = None
                        if isinstance(error, NoPresenceError):
                            ch.presence.reset()
                        continue
                    log.warning("rejoining failed, will retry: %s", exc)
            attempt += 1
            ceiling = min(self.options.reconnect_max, 0.1 * 2 ** (attempt - 1))
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    async def _leave_locked(self, ch: _Channel) -> None:
        ws = self._ws
        joined = ws is not None and ch.joined_gen == self._gen
        ch.joined_gen = -1
        if not joined or ws is None:
            self._channels.pop(ch.topic, None)
            return
        ref = self._next_ref()
        text = dumps([ch.join_ref, ref, ch.topic, "phx_leave", {}])
        future: asyncio.Future[tuple[str, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = _Pending(future)
        try:
            await ws.send(text)
            # From here on nothing more is delivered for this membership.
            self._channels.pop(ch.topic, None)
            # The answer only confirms; do not hold a closing subscription long for it.
            await asyncio.wait_for(future, min(self.options.reply_timeout, 2.0))
        except (ConnectionClosed, _Lost, asyncio.TimeoutError):
            pass  # the node unsubscribes a closed socket from everything anyway
        finally:
            self._pending.pop(ref, None)
            if self._channels.get(ch.topic) is ch:
                del self._channels[ch.topic]

    def _expire_publish_channels(self, now: float) -> None:
        for ch in list(self._channels.values()):
            if not ch.listeners and not ch.wanted(now, self.options.publish_linger):
                self._spawn(self._leave_if_idle(ch))

    async def _leave_if_idle(self, ch: _Channel) -> None:
        async with ch.lock:
            if self._channels.get(ch.topic) is ch and not self._wanted(ch):
                await self._leave_locked(ch)

    # --- publishing over the socket --------------------------------------------------------

    async def _push(self, topic: str, event: str, payload_text: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        size = len(payload_text.encode("utf-8")) + len(topic.encode("utf-8")) + len(event) + 48
        if size > self.options.max_frame_bytes:
            raise MessageTooLargeError(
                f"a message of {size} bytes on {topic!r} is over the node's frame limit of "
                f"{self.options.max_frame_bytes} (a larger frame makes the node close the socket)",
                size=size,
                limit=self.options.max_frame_bytes,
            )
        retries = 0  # a lost socket or a stale join_ref: the push was not published, resend
        throttled = 0  # the node's per-socket push rate limit: wait, then resend
        while True:
            remaining = deadline - loop.time()
            try:
                ch = await self._publish_channel(topic, remaining)
                ws = self._ws
                if ws is None or ch.joined_gen != self._gen:
                    raise _Lost()
                ref = self._next_ref()
                text = f"[{dumps(ch.join_ref)},{dumps(ref)},{dumps(topic)},{dumps(event)},{payload_text}]"
                status, response = await self._request(
                    ws, ref, text, max(0.0, deadline - loop.time())
                )
            except ConnectError as exc:
                raise PublishError(topic, "unreachable", str(exc)) from None
            except JoinError as exc:
                raise PublishError(topic, "join_refused", exc.reason) from None
            except asyncio.TimeoutError:
                raise PublishError(
                    topic, "timeout", f"the node did not answer within {timeout}s"
                ) from None
            except _Lost:
                retries += 1
                if loop.time() < deadline and retries < 3:
                    continue  # not sent, or sent on a socket that died: the node answers per socket
                raise PublishError(
                    topic,
                    "connection_lost",
                    "the connection was lost before the node answered; the message may or may "
                    "not have been published",
                ) from None
            if status == "ok":
                return
            reason = str(response.get("reason", json.dumps(response)))
            if reason.startswith("stale join_ref") and retries < 2:
                retries += 1
                continue
            if reason == _RATE_LIMITED:
                # Refused pushes are not published, so resending cannot duplicate. One socket
                # carries every session of the process; the node's --push-rate is per socket.
                delay = min(0.5, 0.01 * 2**throttled)
                throttled += 1
                if loop.time() + delay < deadline:
                    await asyncio.sleep(delay)
                    continue
            if reason.startswith(_UPSTREAM_UNAVAILABLE):
                raise PublishError(topic, "upstream_unavailable", reason, delivered_locally=True)
            raise PublishError(topic, reason.replace(" ", "_"), reason)

    async def _publish_channel(self, topic: str, timeout: float) -> _Channel:
        now = asyncio.get_running_loop().time()
        ch = self._channels.get(topic)
        if ch is not None and ch.joined_gen == self._gen and self._ws is not None:
            ch.published_at = now
            return ch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._wait_connected(timeout)
        while True:
            ch = self._channel(topic)
            ch.published_at = now
            async with ch.lock:
                if self._channels.get(topic) is not ch:
                    continue
                if ch.joined_gen != self._gen or self._ws is None:
                    try:
                        await self._join_locked(ch, max(0.0, deadline - loop.time()))
                    except BaseException:
                        if not ch.listeners and self._channels.get(topic) is ch:
                            del self._channels[topic]  # not joined: nothing to linger or rejoin
                        raise
                return ch

    # --- reading ---------------------------------------------------------------------------

    def _on_presence(self, ch: _Channel, frame: Frame) -> None:
        if frame.join_ref is not None and frame.join_ref != ch.join_ref:
            return  # about an earlier membership of the topic (phoenix.js drops those too)
        changes: list[PresenceChange] | None
        if frame.event == "presence_state":
            changes = ch.presence.on_state(frame.payload, ch.join_ref)
            ch.presence_synced.set()
        else:
            changes = ch.presence.on_diff(frame.payload, ch.join_ref)
        if changes is None:
            return  # held until this join's presence_state
        for listener in list(ch.listeners):
            self._tell_presence(ch, listener, changes)

    def _tell_presence(self, ch: _Channel, listener: Listener, changes: list[PresenceChange]) -> None:
        """Listeners with an ``on_presence(changes)`` method (:class:`Presence`) are told of
        each sync of the list; the others are not."""
        hook = getattr(listener, "on_presence", None)
        if hook is None:
            return
        try:
            hook(changes)
        except Exception:
            log.exception("a presence listener of %s failed", ch.topic)

    def _dispatch(self, frame: Frame) -> None:
        event = frame.event
        if event == "phx_reply":
            if frame.ref is not None and frame.ref == self._hb_ref:
                self._hb_ref = None
                return
            entry = self._pending.pop(frame.ref, None) if frame.ref is not None else None
            if entry is None:
                return
            payload = frame.payload if isinstance(frame.payload, dict) else {}
            status = str(payload.get("status"))
            response = payload.get("response")
            response = response if isinstance(response, dict) else {}
            if entry.on_reply is not None:
                entry.on_reply(status, response)
            if not entry.future.done():
                entry.future.set_result((status, response))
            return
        ch = self._channels.get(frame.topic)
        if ch is None:
            return
        if event in ("phx_close", "phx_error"):
            if frame.join_ref is not None and frame.join_ref == ch.join_ref and ch.joined_gen == self._gen:
                log.warning("the node closed %s (%s); rejoining", frame.topic, event)
                ch.joined_gen = -1
                self._spawn(self._rejoin(ch, self._gen))
            return
        if event in PRESENCE_EVENTS:
            self._on_presence(ch, frame)
            return
        position_text = frame.ref
        if position_text is not None:
            position = Position.parse(position_text)
            if position is not None:
                if not position.is_after(ch.position):
                    return  # already delivered (a replay overlapping what we saw)
                ch.position = position
            else:
                position_text = None
        message = Message(frame.topic, event, frame.payload, position_text)
        for listener in ch.listeners:
            try:
                listener.on_message(message)
            except Exception:
                log.exception("a listener of %s failed", frame.topic)


def check_user(user: object) -> str | None:
    """``user`` if the node takes it as a presence key, else :class:`ValueError`."""
    if user is None:
        return None
    if not isinstance(user, str):
        raise ValueError(f"user must be a str, not {type(user).__name__}")
    if not user:
        raise ValueError("user must not be empty (leave it out to join presence topics as an observer)")
    size = len(user.encode("utf-8"))
    if size > MAX_PRESENCE_KEY_BYTES:
        raise ValueError(
            f"user is {size} bytes; the node's limit for a presence key is {MAX_PRESENCE_KEY_BYTES}"
        )
    return user


def check_meta(topic: str, meta: object) -> Meta:
    """A copy of ``meta`` as the node will read it, or :class:`InvalidPresenceError`."""
    if not isinstance(meta, dict):
        raise InvalidPresenceError(
            topic, f"a presence meta is a dict (a JSON object), not {type(meta).__name__}"
        )
    for field_name in meta:
        if not isinstance(field_name, str):
            raise InvalidPresenceError(topic, f"the meta's field names are str, not {field_name!r}")
        if field_name.startswith("phx_"):
            raise InvalidPresenceError(
                topic, f"the field {field_name!r} is reserved (phx_ fields belong to the protocol)"
            )
    try:
        copied: Meta = json.loads(dumps(meta))
    except Exception as exc:  # InvalidMessageError
        raise InvalidPresenceError(topic, str(exc)) from None
    return copied


def presence_error(topic: str, reason: str) -> PresenceError | None:
    """The exception a presence-related refusal means (``None`` for any other reason)."""
    if reason.startswith("invalid presence: this topic tracks no presence"):
        return NoPresenceError(topic, reason)
    if reason.startswith("invalid presence: this socket has no presence key"):
        return PresenceError(topic, "no_key", reason)
    if reason.startswith("invalid presence") or reason == "payload must be a JSON object":
        return InvalidPresenceError(topic, reason)
    if reason.startswith("too many members"):
        match = re.search(r"limit of (\d+)", reason)
        return TooManyMembersError(topic, reason, limit=int(match.group(1)) if match else None)
    if reason == "the topic is full":
        return TooManyMembersError(topic, reason)
    if reason.startswith("presence unavailable"):
        return PresenceError(topic, "unavailable", reason)
    if reason in ("not a presence member of this topic", "left the topic"):
        return PresenceError(topic, "not_member", reason)
    return None


def _error_message(body: bytes | bytearray | None) -> str:
    if not body:
        return ""
    try:
        value = json.loads(body)
    except ValueError:
        return bytes(body[:200]).decode("utf-8", "replace")
    error = value.get("error") if isinstance(value, dict) else None
    if isinstance(error, dict):
        return f"{error.get('code')}: {error.get('message')}"
    return str(value)[:200]
