"""Seeds 002/004: a ``PubSubProvider`` for PyView on Switchboard.

::

    app = PyView(pubsub=SwitchboardPubSub("http://127.0.0.1:4000", token=token))

Every session of the process shares one WebSocket: the first local subscriber of a topic
joins it on the node, the last one to leave leaves it. Handlers stay in this process; only
messages cross the network. Each handler runs in its own task, so one that raises (it is
logged) or is slow does not stop the others.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ._connection import Connection, Options, PublishVia, Token
from ._phoenix import PresenceMap, validate_topic
from .presence import PresenceSnapshot
from .errors import ConnectError, PublishError
from .types import Gap, Message

__all__ = ["GapHandler", "SwitchboardPubSub", "TopicHandler"]

log = logging.getLogger("switchboard_client")

TopicHandler = Callable[[str, Any], Coroutine[Any, Any, None]]
"""PyView's handler type: ``async def handler(topic, message)``."""

GapHandler = Callable[[Gap], Awaitable[None] | None]
"""Called (sync or async) with each :class:`~switchboard_client.Gap` of a subscribed topic."""


class _Topic:
    """A subscribed topic: its local sessions' handlers (the connection's listener)."""

    def __init__(self, owner: SwitchboardPubSub, topic: str) -> None:
        self.owner = owner
        self.topic = topic
        self.handlers: dict[str, TopicHandler] = {}
        self.ready = asyncio.Event()
        self.error: BaseException | None = None

    def on_message(self, message: Message) -> None:
        self.owner._deliver(self.topic, message, list(self.handlers.values()))

    def on_gap(self, gap: Gap) -> None:
        self.owner._gap(gap)


class SwitchboardPubSub:
    """A drop-in ``PubSubProvider`` (``subscribe_topic``, ``unsubscribe_topic``,
    ``unsubscribe_all``, ``broadcast``, ``start``, ``stop``) over one connection to a node.

    ``broadcast(topic, message)`` sends a JSON object over the socket (or over HTTP with
    ``publish_via="http"`` / an ``api_key``); anything else JSON-serialisable (PyView's counter
    example broadcasts an int) goes over ``POST /api/publish``, since a Phoenix push carries
    only objects; on a node with an API key that needs ``api_key``. A message that is not
    JSON-serialisable raises :class:`~switchboard_client.InvalidMessageError`; an outage is
    logged and does not raise (use :meth:`publish` to know).

    Handlers receive the payload of every broadcast on the topic (PyView has no event names;
    presence and protocol events are not messages). ``on_gap`` is told when messages of a
    subscribed topic were lost (see :class:`~switchboard_client.Gap`); by default gaps are
    logged.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Token = None,
        api_key: str | None = None,
        publish_via: PublishVia | None = None,
        on_gap: GapHandler | None = None,
        heartbeat_interval: float = 30.0,
        connect_timeout: float = 10.0,
        publish_timeout: float = 5.0,
        max_frame_bytes: int = 65536,
        user: str | None = None,
    ) -> None:
        self._connection = Connection(
            url,
            token=token,
            api_key=api_key,
            publish_via=publish_via,
            user=user,
            options=Options(
                heartbeat_interval=heartbeat_interval,
                connect_timeout=connect_timeout,
                publish_timeout=publish_timeout,
                max_frame_bytes=max_frame_bytes,
            ),
        )
        self._on_gap = on_gap
        self._topics: dict[str, _Topic] = {}
        self._session_topics: dict[str, set[str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.handler_errors = 0
        """How many handler calls raised (each is logged)."""

    @property
    def connection(self) -> Connection:
        return self._connection

    async def start(self) -> None:
        """Connects; :class:`~switchboard_client.ConnectError` if the node cannot be reached
        within ``connect_timeout`` or refuses the token (PyView calls this at startup)."""
        await self._connection.connect()

    async def stop(self) -> None:
        """Closes the connection and cancels handler calls still running."""
        await self._connection.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._topics.clear()
        self._session_topics.clear()

    async def subscribe_topic(self, session_id: str, topic: str, handler: TopicHandler) -> None:
        """Subscribes ``session_id`` to ``topic`` with ``handler`` (replacing an earlier one).

        Returns once the node confirmed the subscription (the first local subscriber of a
        topic joins it; later ones wait for that join); raises
        :class:`~switchboard_client.JoinError` if the node refused.
        """
        validate_topic(topic, self._connection.options.max_topic_bytes)
        while True:
            entry = self._topics.get(topic)
            first = entry is None
            if entry is None:
                entry = self._topics[topic] = _Topic(self, topic)
            entry.handlers[session_id] = handler
            self._session_topics.setdefault(session_id, set()).add(topic)
            if not first:
                await entry.ready.wait()
                if entry.error is None:
                    return
                if isinstance(entry.error, asyncio.CancelledError):
                    continue  # whoever joined first gave up; join again ourselves
                raise entry.error
            try:
                await self._connection.subscribe(topic, entry)
            except BaseException as exc:
                if self._topics.get(topic) is entry:
                    del self._topics[topic]
                for waiting in list(entry.handlers):
                    self._forget(waiting, topic)
                entry.handlers.clear()
                entry.error = exc
                entry.ready.set()
                raise
            entry.ready.set()
            return

    async def unsubscribe_topic(self, session_id: str, topic: str) -> None:
        await self._remove(session_id, topic)

    async def unsubscribe_all(self, session_id: str) -> None:
        for topic in list(self._session_topics.get(session_id, ())):
            await self._remove(session_id, topic)

    async def broadcast(self, topic: str, message: Any) -> None:
        """Publishes ``message`` to every subscriber of ``topic`` on every node (this
        process's handlers get it back from the node, once)."""
        try:
            await self._connection.publish(topic, message)
        except (PublishError, ConnectError) as exc:
            log.error("broadcast to %s failed: %s", topic, exc)

    # --- beyond PubSubProvider --------------------------------------------------------------

    async def publish(self, topic: str, message: Any, *, event: str = "message") -> int | None:
        """Like :meth:`broadcast`, but raises :class:`~switchboard_client.PublishError` when the
        node did not accept the message, and takes an event name."""
        return await self._connection.publish(topic, message, event=event)

    def presence(self, topic: str) -> PresenceMap | None:
        """Who is present on a subscribed topic, or None while the node sends no presence."""
        return self._connection.presence(topic)

    async def fetch_presence(self, topic: str, *, timeout: float | None = None) -> PresenceSnapshot:
        """Who is on ``topic`` on every node (``GET /api/presence`` with ``api_key``); see
        :meth:`SwitchboardGateway.fetch_presence
        <switchboard_client.SwitchboardGateway.fetch_presence>`."""
        answer = await self._connection.list_presence(topic, timeout)
        return PresenceSnapshot.from_answer(topic, answer)

    def subscribers(self, topic: str) -> list[str]:
        """The local sessions subscribed to ``topic``."""
        entry = self._topics.get(topic)
        return list(entry.handlers) if entry is not None else []

    # --- internals ----------------------------------------------------------------------------

    def _forget(self, session_id: str, topic: str) -> None:
        topics = self._session_topics.get(session_id)
        if topics is not None:
            topics.discard(topic)
            if not topics:
                del self._session_topics[session_id]

    async def _remove(self, session_id: str, topic: str) -> None:
        self._forget(session_id, topic)
        entry = self._topics.get(topic)
        if entry is None:
            return
        entry.handlers.pop(session_id, None)
        if not entry.handlers and self._topics.get(topic) is entry:
            del self._topics[topic]
            await self._connection.unsubscribe(topic, entry)

    def _deliver(self, topic: str, message: Message, handlers: list[TopicHandler]) -> None:
        for handler in handlers:
            task = asyncio.get_running_loop().create_task(self._call(handler, topic, message.payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, handler: TopicHandler, topic: str, payload: Any) -> None:
        try:
            await handler(topic, payload)
        except Exception:
            self.handler_errors += 1
            log.exception("a handler of %s raised; the other handlers still run", topic)

    def _gap(self, gap: Gap) -> None:
        if self._on_gap is None:
            return
        try:
            result = self._on_gap(gap)
        except Exception:
            log.exception("on_gap raised for %s", gap.topic)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
